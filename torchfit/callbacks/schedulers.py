"""Learning-rate schedules as callbacks: ``LearningRateScheduler`` (any torch scheduler,
per epoch or per optimizer step) and ``ReduceLROnPlateau`` (driven by a monitored figure),
plus what a schedule over the whole run needs: ``run_total_steps(params)`` and the
``warmup_cosine`` factory.

Owns when a scheduler steps and what goes into checkpoints (the scheduler's
``state_dict``); the schedules themselves are torch's. Both set ``changes_lr``,
so fit adds the learning rate to every epoch's logs as ``lr`` (and ``lr_1``,
``lr_2``... for further parameter groups): the rate the epoch's last optimizer
step trained with (``epoch_learning_rates``). For a per-epoch schedule that is the
epoch's one rate; for a per-step one (``interval="step"``, one-cycle, warm-up) the
last step's, not the rate the scheduler has already set for the next step.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from ..formatting import format_figure
from .base import Callback
from .monitor import check_monitor, check_nonnegative, is_improvement, main_process, resolve_mode

_Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau


def learning_rates(optimizer: torch.optim.Optimizer) -> Dict[str, float]:
    """``{"lr": group 0's rate, "lr_1": group 1's, ...}`` as floats.

    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> learning_rates(opt)
    {'lr': 0.1}
    """
    rates = {}
    for i, group in enumerate(optimizer.param_groups):
        rates["lr" if i == 0 else f"lr_{i}"] = float(group["lr"])
    return rates


def epoch_learning_rates(optimizer: torch.optim.Optimizer, callbacks: Iterable[Any]) -> Dict[str, float]:
    """The epoch's ``lr`` figures: the rates its last optimizer step trained with.

    A per-step ``LearningRateScheduler`` has already moved the optimizer to the next
    step's rate when the epoch ends; it kept the rates of the step before, and those are
    the ones shown. Otherwise the optimizer's rates are the epoch's (a per-epoch schedule
    steps after the epoch's figures are taken).

    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> epoch_learning_rates(opt, [])
    {'lr': 0.1}
    """
    for cb in callbacks:
        if isinstance(cb, LearningRateScheduler) and cb.last_step_rates is not None:
            return {("lr" if i == 0 else f"lr_{i}"): float(lr) for i, lr in enumerate(cb.last_step_rates)}
    return learning_rates(optimizer)


def lr_log_keys(optimizer: torch.optim.Optimizer) -> List[str]:
    return ["lr" if i == 0 else f"lr_{i}" for i in range(len(optimizer.param_groups))]


def run_steps_per_epoch(params: Mapping[str, Any]) -> int:
    """Optimizer steps per epoch of the fit ``params`` describes: ``ceil(steps / grad_accum_steps)``.

    >>> run_steps_per_epoch({"epochs": 3, "steps": 10, "grad_accum_steps": 3})
    4

    ``params`` is what fit hands ``set_params``: ``steps`` (batches per epoch, per
    process under torchrun, ``steps_per_epoch`` when given) and ``grad_accum_steps``
    (1 when absent). An epoch's last window closes at its last batch even when
    shorter, hence the ceiling.
    """
    steps = params.get("steps")
    if steps is None:
        raise ValueError(
            "the number of optimizer steps of this run is unknown: the training loader has no len(). "
            "Give it a __len__, or build the scheduler yourself with an explicit total_steps"
        )
    accum = params.get("grad_accum_steps") or 1
    return math.ceil(int(steps) / int(accum))


def run_total_steps(params: Mapping[str, Any]) -> int:
    """Optimizer steps of the whole run, epochs 1 to ``params["epochs"]`` (those before a resume included).

    >>> run_total_steps({"epochs": 3, "steps": 10, "grad_accum_steps": 3})
    12
    >>> # class MyCallback(Callback):
    >>> #     def set_params(self, params):
    >>> #         super().set_params(params); self.total = run_total_steps(params)

    This is the ``total_steps`` a one-cycle or warm-up/cosine schedule needs:
    ``epochs * ceil(steps / grad_accum_steps)``. A resumed fit gets the same
    number as the uninterrupted one, since ``params["epochs"]`` is the run's total.
    """
    return int(params["epochs"]) * run_steps_per_epoch(params)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` steps, then a cosine decay to ``min_lr_ratio`` x the base rate.

    >>> # LearningRateScheduler(lambda opt, total: warmup_cosine(opt, total, warmup_steps=100),
    >>> #                       interval="step")

    Step ``i`` (0-based) trains at ``base_lr * f(i)``: ``f(i) = (i + 1) / (warmup_steps + 1)``
    during the warm-up, then ``min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * t)) / 2``
    with ``t`` going from 0 at step ``warmup_steps`` to 1 at the last step
    ``total_steps - 1``, which therefore trains at exactly ``min_lr_ratio * base_lr``.
    The signature fits ``LearningRateScheduler``'s factory form as it is once
    ``warmup_steps`` is bound (``functools.partial`` or a lambda).
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"warmup_cosine: total_steps must be an int >= 1; got {total_steps!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_cosine: warmup_steps must be an int in [0, total_steps={total_steps}); "
                         f"got {warmup_steps!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"warmup_cosine: min_lr_ratio must lie in [0, 1]; got {min_lr_ratio!r}")
    decay_steps = max(1, total_steps - 1 - warmup_steps)

    def factor(i: int) -> float:
        if i < warmup_steps:
            return (i + 1) / (warmup_steps + 1)
        t = min(1.0, (i - warmup_steps) / decay_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _is_scheduler(obj: Any) -> bool:
    return not isinstance(obj, type) and callable(getattr(obj, "step", None)) and callable(getattr(obj, "state_dict", None))


class LearningRateScheduler(Callback):
    """Step a torch LR scheduler after every epoch (``interval="epoch"``) or every optimizer step (``"step"``).

    >>> # sched = torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=10, gamma=0.5)
    >>> # model.fit(30, dl_train, dl_val, callbacks=[LearningRateScheduler(sched)])
    >>> # per step, e.g. a one-cycle schedule over the whole run:
    >>> # sched = torch.optim.lr_scheduler.OneCycleLR(model.optimizer, max_lr=0.1, total_steps=30 * len(dl_train))
    >>> # model.fit(30, dl_train, callbacks=[LearningRateScheduler(sched, interval="step")])

    ``"epoch"``: ``scheduler.step()`` at the end of each finished epoch (after
    validation), the usual ``for epoch: train(); scheduler.step()``.
    ``"step"``: ``scheduler.step()`` after each optimizer step, counted by
    ``model.global_step``, so with ``grad_accum_steps=k`` it steps once per k
    batches. A torch ``ReduceLROnPlateau`` needs the figure it watches: pass
    ``monitor=`` (e.g. ``"val_loss"``), or use torchfit's ``ReduceLROnPlateau``.
    Build the scheduler on ``model.optimizer`` (after ``compile``).

    Schedules that need the run's length (one-cycle, warm-up then cosine): pass a
    *factory* ``f(optimizer, total)`` instead of a scheduler, and fit supplies
    ``total``, the number of times the scheduler will step over the whole run:

    >>> # LearningRateScheduler(lambda opt, total: torch.optim.lr_scheduler.OneCycleLR(
    >>> #     opt, max_lr=0.1, total_steps=total), interval="step")
    >>> # LearningRateScheduler(lambda opt, total: warmup_cosine(opt, total, warmup_steps=50), "step")

    With ``interval="step"`` ``total`` is ``run_total_steps(params)``: optimizer
    steps, ``epochs * ceil(steps / grad_accum_steps)``; with ``"epoch"`` it is
    ``params["epochs"]``. The factory is called at the start of every fit, on
    ``model.optimizer``, for the whole run (epochs 1 to ``params["epochs"]``)
    and the schedule is advanced to where this fit starts (``initial_epoch``
    epochs in). A resumed fit (``resume_from``, ``epochs`` the run's total) then
    also gets the scheduler's saved state and the optimizer's saved settings
    back, and ends exactly where an uninterrupted run does. A further ``fit(n)``
    call on a trained model gets a schedule over all ``initial_epoch + n`` epochs,
    entered at epoch ``initial_epoch + 1``.
    A callable that is not a scheduler (no ``step``/``state_dict``) is a factory.
    """

    changes_lr = True

    def __init__(self, scheduler: Any, interval: Any = "epoch", monitor: Optional[str] = None, verbose: int = 0,
                 sink: Callable[[str], None] = print):
        self.keras_schedule: Optional[Callable[..., Any]] = None
        self.verbose, self.sink = verbose, sink
        keras_possible = monitor is None and (interval == "epoch" or type(interval) is int)
        if keras_possible and not _is_scheduler(scheduler) and callable(scheduler) and not isinstance(scheduler, type):
            arity = _keras_schedule_arity(scheduler)
            if arity:  # Keras' schedule(epoch, lr) -> lr (or schedule(epoch)): set at each epoch's start
                if isinstance(interval, int) and not isinstance(interval, bool):
                    self.verbose, interval = interval, "epoch"  # Keras' LearningRateScheduler(schedule, verbose)
                if interval != "epoch" or monitor is not None:
                    raise ValueError("a Keras schedule(epoch, lr) sets the rate at each epoch's start: pass no "
                                     "interval or monitor")
                self.keras_schedule, self._arity = scheduler, arity
                self.scheduler, self.factory, self.interval, self.monitor = None, None, "epoch", None
                self._seen_step, self._groups_before_build, self.last_step_rates = 0, None, None
                return
        factory = None
        if not _is_scheduler(scheduler):
            if not callable(scheduler) or isinstance(scheduler, type):
                kind = f"the class {scheduler.__name__}" if isinstance(scheduler, type) else type(scheduler).__name__
                raise TypeError(
                    f"LearningRateScheduler needs a torch LR scheduler (with step() and state_dict()) or a factory "
                    f"f(optimizer, total_steps) returning one; got {kind}. E.g. "
                    "torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=10), or "
                    "lambda opt, total: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total)"
                )
            if monitor is not None:
                raise ValueError("monitor= goes with a ReduceLROnPlateau scheduler, which needs no run length: "
                                 "pass the scheduler itself, not a factory")
            factory, scheduler = scheduler, None
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval must be 'epoch' or 'step'; got {interval!r}")
        if isinstance(scheduler, _Plateau):
            if monitor is None:
                raise ValueError(
                    "torch's ReduceLROnPlateau steps on a figure: pass monitor=, e.g. "
                    "LearningRateScheduler(scheduler, monitor='val_loss'), or use "
                    "torchfit.callbacks.ReduceLROnPlateau(monitor='val_loss', factor=0.1, patience=10)"
                )
            if interval != "epoch":
                raise ValueError("a ReduceLROnPlateau scheduler steps on epoch figures: use interval='epoch'")
        elif monitor is not None:
            raise ValueError(f"monitor= is only for plateau schedulers; {type(scheduler).__name__} steps on its own")
        self.scheduler = scheduler
        self.factory: Optional[Callable[[torch.optim.Optimizer, int], Any]] = factory
        self.interval = interval
        self.monitor = monitor
        self._seen_step = 0
        self._groups_before_build: Optional[List[dict]] = None
        # interval="step": the rates the last optimizer step trained with, before the scheduler
        # moved them (the epoch's lr figures, epoch_learning_rates); None before the first step
        self.last_step_rates: Optional[List[Any]] = None

    def implements(self, hook: str) -> bool:
        # Only the hook of the chosen interval runs (no per-batch call for per-epoch schedules).
        if self.keras_schedule is not None:
            return hook == "on_epoch_begin"
        if hook == "on_epoch_begin":
            return False
        if hook == "on_train_batch_end":
            return self.interval == "step"
        if hook == "on_epoch_end":
            return self.interval == "epoch"
        return super().implements(hook)

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        """Keras' form: the rate of the epoch about to run (``epoch`` counts from 0, across fits)."""
        groups = self.model.optimizer.param_groups
        lr = float(groups[0]["lr"])
        value = self.keras_schedule(epoch, lr) if self._arity == 2 else self.keras_schedule(epoch)
        new = _as_rate(value)
        if new is None:
            raise ValueError(f"the LearningRateScheduler schedule returned {value!r} for epoch {epoch}; it must "
                             "return a finite learning rate (a float)")
        for g in groups:
            g["lr"] = new
        if self.verbose and main_process(self.model):
            self.sink(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {new:.6g}.")

    def set_params(self, params: dict) -> None:
        super().set_params(params)
        if self.keras_schedule is not None:
            return
        if self.factory is not None:
            self._run_length(params)  # a loader without len(): fail before training
        else:
            _check_optimizer(self.scheduler, self.model)
        if self.monitor is not None:
            check_monitor("LearningRateScheduler", self.monitor, params)

    def _run_length(self, params: Mapping[str, Any]) -> Tuple[int, int]:
        """(scheduler steps over the whole run, those taken before this fit)."""
        if self.interval == "epoch":
            return int(params["epochs"]), int(params["initial_epoch"])
        try:
            per_epoch = run_steps_per_epoch(params)
        except ValueError as exc:
            raise ValueError(f"LearningRateScheduler(factory, interval='step'): {exc}") from None
        return per_epoch * int(params["epochs"]), per_epoch * int(params["initial_epoch"])

    def _build(self) -> None:
        opt = self.model.optimizer
        # What a resumed fit's optimizer holds (the saved run's rates): load_state_dict puts it back.
        self._groups_before_build = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        total, done = self._run_length(self.params)
        for group in opt.param_groups:
            # A schedule built before (an earlier fit) left its base rate in 'initial_lr'; chainable
            # schedulers start from group["lr"], so the rebuilt one starts where the run started.
            if "initial_lr" in group:
                group["lr"] = group["initial_lr"]
        scheduler = self.factory(opt, total)
        if not _is_scheduler(scheduler):
            raise TypeError(f"the LearningRateScheduler factory returned {type(scheduler).__name__}, not an LR "
                            "scheduler; it must return e.g. OneCycleLR(optimizer, max_lr=..., total_steps=total)")
        if isinstance(scheduler, _Plateau):
            raise TypeError("the LearningRateScheduler factory returned a ReduceLROnPlateau; pass that scheduler "
                            "itself with monitor=, or use torchfit.callbacks.ReduceLROnPlateau")
        _check_optimizer(scheduler, self.model)
        with warnings.catch_warnings():
            # Advancing to where this fit starts steps the scheduler before any optimizer step, on purpose.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            for _ in range(done):
                scheduler.step()
        self.scheduler = scheduler

    def on_train_begin(self, logs: dict) -> None:
        if self.factory is not None:
            self._build()
        self._seen_step = self.model.global_step
        self.last_step_rates = None

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        if self._seen_step < self.model.global_step:
            # as stored (a float, or a tensor read only at the epoch's end): no host sync per step
            self.last_step_rates = [lr.clone() if isinstance(lr, torch.Tensor) else lr  # a tensor rate moves in place
                                    for lr in (group["lr"] for group in self.model.optimizer.param_groups)]
        while self._seen_step < self.model.global_step:
            self.scheduler.step()
            self._seen_step += 1

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.monitor is not None:
            if logs.get(self.monitor) is None:
                return  # an epoch without validation (fit(validation_freq=...))
            self.scheduler.step(logs[self.monitor])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        if self.keras_schedule is not None or self.scheduler is None:  # nothing built (yet): nothing to keep
            return {}
        state = {"scheduler": self.scheduler.state_dict()}
        if self.interval == "step":  # the epoch's lr figure, for a checkpoint written after its last step
            state["last_step_rates"] = self.last_step_rates
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.keras_schedule is not None or "scheduler" not in state:
            return  # a function of the epoch, or saved before a factory built its scheduler: nothing to restore
        self.scheduler.load_state_dict(state["scheduler"])
        rates = state.get("last_step_rates")  # absent from files of earlier versions
        self.last_step_rates = list(rates) if rates is not None else None
        if self.factory is not None and self._groups_before_build is not None:
            # Building the scheduler reset the optimizer's rate (and momentum, for one-cycle)
            # to the schedule's start; the checkpoint's optimizer had the saved run's.
            for group, saved in zip(self.model.optimizer.param_groups, self._groups_before_build):
                group.update(saved)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has stopped improving (Keras' callback and rule).

    >>> rlrop = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)
    >>> # model.fit(50, dl_train, dl_val, callbacks=[rlrop])

    Keras' rule, epoch by epoch: an improvement (by more than ``min_delta``,
    absolute) resets the wait; otherwise, outside a cooldown, the wait grows, and
    when it reaches ``patience`` every parameter group's rate is multiplied by
    ``factor`` (not below ``min_lr``), the wait restarts and ``cooldown`` epochs
    pass before counting again. So ``patience=2`` reduces after the second epoch
    without improvement (torch's own scheduler waits for a third). Counters restart
    with each fit call, as in Keras, and continue from full checkpoints.
    """

    changes_lr = True

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        sink: Callable[[str], None] = print,
    ):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must lie strictly between 0 and 1 (the rate is multiplied by it); got {factor!r}")
        check_nonnegative("patience", patience, integral=True)
        check_nonnegative("cooldown", cooldown, integral=True)
        check_nonnegative("min_delta", min_delta)
        check_nonnegative("min_lr", min_lr)
        self.monitor = monitor
        self.mode = resolve_mode(mode, monitor)
        self.factor, self.patience, self.min_delta = float(factor), int(patience), float(min_delta)
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)
        self.verbose, self.sink = verbose, sink
        self._reset()

    def _reset(self) -> None:
        self.best: Optional[float] = None
        self.wait = 0
        self.cooldown_counter = 0

    def set_params(self, params: dict) -> None:
        super().set_params(params)
        check_monitor("ReduceLROnPlateau", self.monitor, params)

    def on_train_begin(self, logs: dict) -> None:
        self._reset()

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        current = logs.get(self.monitor)
        if current is None:
            return  # an epoch without validation (fit(validation_freq=...)): nothing to judge
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if is_improvement(current, self.best, self.mode, self.min_delta):
            self.best, self.wait = float(current), 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        groups = self.model.optimizer.param_groups
        before = [g["lr"] for g in groups]
        for g in groups:
            if g["lr"] > self.min_lr:
                g["lr"] = max(g["lr"] * self.factor, self.min_lr)
        after = [g["lr"] for g in groups]
        if after == before:
            return  # already at min_lr: Keras keeps counting
        self.cooldown_counter, self.wait = self.cooldown, 0
        if self.verbose and main_process(self.model):
            self.sink(f"Epoch {epoch + 1}: ReduceLROnPlateau reduced the learning rate to "
                      f"{', '.join(format_figure(lr, 'lr') for lr in after)} ({self.monitor} has not improved).")

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.cooldown_counter = state["best"], state["wait"], state["cooldown_counter"]


def _as_rate(value: Any) -> Optional[float]:
    """A schedule's result as a float rate, or None when it is not one finite number."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        return None
    return float(value)


def _keras_schedule_arity(fn: Callable[..., Any]) -> int:
    """2 or 1 when ``fn`` is Keras' ``schedule(epoch, lr)`` (or ``schedule(epoch)``), 0 otherwise.

    Decided by calling it once as Keras would, at epoch 0 with a rate of 0.001: a Keras
    schedule returns a number. torchfit's factory form ``f(optimizer, total_steps)`` cannot
    build a scheduler on the number 0 (it raises or returns something else), so it is never
    taken for a schedule. Only per-epoch callbacks are probed: with ``interval="step"`` or a
    ``monitor`` the callable is torchfit's factory.

    >>> _keras_schedule_arity(lambda epoch, lr: lr * 0.5), _keras_schedule_arity(lambda epoch: 0.1)
    (2, 1)
    >>> _keras_schedule_arity(lambda opt, total: torch.optim.lr_scheduler.StepLR(opt, 10))
    0
    """
    for arity, args in ((2, (0, 0.001)), (1, (0,))):
        try:
            value = fn(*args)
        except Exception:
            continue
        return arity if _as_rate(value) is not None else 0
    return 0


def _check_optimizer(scheduler: Any, model: Any) -> None:
    opt = getattr(scheduler, "optimizer", None)
    if opt is not None and opt is not model.optimizer:
        raise ValueError(
            "the LR scheduler was built on another optimizer than model.optimizer, so stepping it would not "
            "change training. Build it after compile: torch.optim.lr_scheduler.StepLR(model.optimizer, ...)"
        )


def from_fit_argument(lr_scheduler: Any, has_val: bool, optimizer: Any = None) -> Callback:
    """The callback behind ``fit(lr_scheduler=...)``: a scheduler stepped per epoch.

    A torch ``ReduceLROnPlateau`` watches ``val_loss`` (``loss`` without a validation loader).
    Anything but a scheduler instance on ``optimizer`` (the model's) is refused before training.
    """
    if isinstance(lr_scheduler, Callback):
        raise TypeError(
            f"fit(lr_scheduler=...) takes a torch LR scheduler; {type(lr_scheduler).__name__} is a callback: "
            "pass it in callbacks=[...]"
        )
    example = "e.g. fit(..., lr_scheduler=torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=10))"
    if isinstance(lr_scheduler, type):
        raise TypeError(f"fit(lr_scheduler=...) got the class {lr_scheduler.__name__}; pass an instance built on "
                        f"model.optimizer, {example}")
    if isinstance(lr_scheduler, torch.optim.Optimizer):
        raise TypeError(f"fit(lr_scheduler=...) got an optimizer ({type(lr_scheduler).__name__}), not a scheduler; "
                        f"it would take an extra optimizer step every epoch. Pass a scheduler, {example}")
    if not isinstance(lr_scheduler, (torch.optim.lr_scheduler.LRScheduler, _Plateau)):
        raise TypeError(f"fit(lr_scheduler=...) takes a torch LR scheduler; got {type(lr_scheduler).__name__}. "
                        f"Pass one, {example}, or a LearningRateScheduler callback in callbacks=[...]")
    if optimizer is not None and getattr(lr_scheduler, "optimizer", None) is not optimizer:
        raise ValueError(f"fit(lr_scheduler=...): the {type(lr_scheduler).__name__} was built on another optimizer "
                         "than model.optimizer, so it would change nothing this fit trains with. Build it on "
                         f"model.optimizer, {example}")
    if isinstance(lr_scheduler, _Plateau):
        return LearningRateScheduler(lr_scheduler, monitor="val_loss" if has_val else "loss")
    return LearningRateScheduler(lr_scheduler)
