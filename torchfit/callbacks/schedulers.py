"""Learning-rate schedules as callbacks: ``LearningRateScheduler`` (any torch scheduler,
per epoch or per optimizer step) and ``ReduceLROnPlateau`` (driven by a monitored figure).

Owns when a scheduler steps and what goes into checkpoints (the scheduler's
``state_dict``); the schedules themselves are torch's. Both set ``changes_lr``,
so fit adds the optimizer's learning rate to every epoch's logs as ``lr`` (and
``lr_1``, ``lr_2``... for further parameter groups), read when the epoch's
training pass ends: the rate the epoch trained with for per-epoch schedules,
the rate of the next step for per-step ones.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch

from .base import Callback
from .monitor import check_monitor, check_nonnegative, main_process, resolve_mode

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


def lr_log_keys(optimizer: torch.optim.Optimizer) -> List[str]:
    return ["lr" if i == 0 else f"lr_{i}" for i in range(len(optimizer.param_groups))]


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
    """

    changes_lr = True

    def __init__(self, scheduler: Any, interval: str = "epoch", monitor: Optional[str] = None):
        if not (callable(getattr(scheduler, "step", None)) and callable(getattr(scheduler, "state_dict", None))):
            raise TypeError(
                f"LearningRateScheduler needs a torch LR scheduler (with step() and state_dict()); got "
                f"{type(scheduler).__name__}, e.g. torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=10)"
            )
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
        self.interval = interval
        self.monitor = monitor
        self._seen_step = 0

    def implements(self, hook: str) -> bool:
        # Only the hook of the chosen interval runs (no per-batch call for per-epoch schedules).
        if hook == "on_train_batch_end":
            return self.interval == "step"
        if hook == "on_epoch_end":
            return self.interval == "epoch"
        return super().implements(hook)

    def set_params(self, params: dict) -> None:
        super().set_params(params)
        _check_optimizer(self.scheduler, self.model)
        if self.monitor is not None:
            check_monitor("LearningRateScheduler", self.monitor, params)

    def on_train_begin(self, logs: dict) -> None:
        self._seen_step = self.model.global_step

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        while self._seen_step < self.model.global_step:
            self.scheduler.step()
            self._seen_step += 1

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.monitor is not None:
            self.scheduler.step(logs[self.monitor])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has stopped improving (Keras' callback).

    >>> rlrop = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)
    >>> # model.fit(50, dl_train, dl_val, callbacks=[rlrop])

    After ``patience`` epochs in a row without an improvement larger than
    ``min_delta`` (absolute), every parameter group's rate is multiplied by
    ``factor`` (not below ``min_lr``); then ``cooldown`` epochs pass before
    counting again. Built on torch's ``ReduceLROnPlateau`` over
    ``model.optimizer`` at the start of each fit (so counters restart with each
    fit call, as in Keras, and continue from full checkpoints).
    """

    changes_lr = True

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        factor: float = 0.1,
        patience: int = 10,
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        verbose: int = 0,
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
        self.scheduler: Optional[_Plateau] = None

    def set_params(self, params: dict) -> None:
        super().set_params(params)
        check_monitor("ReduceLROnPlateau", self.monitor, params)

    def on_train_begin(self, logs: dict) -> None:
        self.scheduler = _Plateau(
            self.model.optimizer, mode=self.mode, factor=self.factor, patience=self.patience,
            threshold=self.min_delta, threshold_mode="abs", cooldown=self.cooldown, min_lr=self.min_lr,
        )

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        before = [g["lr"] for g in self.model.optimizer.param_groups]
        self.scheduler.step(logs[self.monitor])
        after = [g["lr"] for g in self.model.optimizer.param_groups]
        if after != before and self.verbose and main_process(self.model):
            self.sink(f"Epoch {epoch}: ReduceLROnPlateau reduced the learning rate to "
                      f"{', '.join(f'{lr:.6g}' for lr in after)} ({self.monitor} has not improved).")

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict()} if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])


def _check_optimizer(scheduler: Any, model: Any) -> None:
    opt = getattr(scheduler, "optimizer", None)
    if opt is not None and opt is not model.optimizer:
        raise ValueError(
            "the LR scheduler was built on another optimizer than model.optimizer, so stepping it would not "
            "change training. Build it after compile: torch.optim.lr_scheduler.StepLR(model.optimizer, ...)"
        )


def from_fit_argument(lr_scheduler: Any, has_val: bool) -> Callback:
    """The callback behind ``fit(lr_scheduler=...)``: a scheduler stepped per epoch.

    A torch ``ReduceLROnPlateau`` watches ``val_loss`` (``loss`` without a validation loader).
    """
    if isinstance(lr_scheduler, Callback):
        raise TypeError(
            f"fit(lr_scheduler=...) takes a torch LR scheduler; {type(lr_scheduler).__name__} is a callback: "
            "pass it in callbacks=[...]"
        )
    if isinstance(lr_scheduler, _Plateau):
        return LearningRateScheduler(lr_scheduler, monitor="val_loss" if has_val else "loss")
    return LearningRateScheduler(lr_scheduler)
