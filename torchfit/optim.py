"""The optimizer: choosing one by name, and the one owner of the optimizer step.

Owns ``compile``'s optimizer argument (a name with Keras' default learning
rate, an instance, or a factory) and ``OptimizerStep``: everything between a
loss and updated weights during a training call. That is the backward pass
with the grad scaler, the gradient-accumulation window (exact for any batch
sizes), unscaling, the ``on_backward_end`` hook, clipping, the optimizer step,
``zero_grad`` and the flush of a window left open at the end of a loader.
``Model.backward`` and ``Model.optimizer_step``, the documented override
points, delegate here.

An overridden ``train_step`` is right by construction: it runs under the fit's
autocast, and inside it ``model.optimizer`` is a ``WindowedOptimizer`` whose
``zero_grad`` / ``step`` (and ``model.zero_grad()``) follow the accumulation window
and take the same path as ``optimizer_step()`` (unscale, gradients averaged across
processes where the strategy asks, clipping, the step). What cannot be made exact,
a direct ``loss.backward()`` where the loss must be scaled (fp16) or weighed
(accumulation), is refused before the first optimizer step, with the fix.
*Which* batches exist is the loop's business; *how* autocast and the scaler are
configured is ``precision``'s.

The grad scaler is always there: ``GradScaler(enabled=False)`` outside fp16
passes losses and steps straight through, so no step has a branch for it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, List, Optional, Sequence

import torch
from torch import nn

from .batch import batch_size_of
from .errors import StepError

# name: (class, default lr), Keras' defaults
OPTIMIZERS = {
    "adam": (torch.optim.Adam, 1e-3),
    "adamw": (torch.optim.AdamW, 1e-3),
    "sgd": (torch.optim.SGD, 1e-2),
    "rmsprop": (torch.optim.RMSprop, 1e-3),
    "adagrad": (torch.optim.Adagrad, 1e-2),
}


def resolve_optimizer(optimizer: Any, net: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``compile(optimizer=...)`` asks for, over ``net``'s trainable parameters.

    ``None`` means ``Adam(lr=1e-3)``; a name from ``OPTIMIZERS``; an optimizer
    instance (it must hold only ``net``'s parameters); or a factory called with
    the parameters.

    >>> resolve_optimizer("sgd", nn.Linear(2, 1)).defaults["lr"]
    0.01
    """
    params = [p for p in net.parameters() if p.requires_grad]
    if optimizer is None or isinstance(optimizer, str):
        name = (optimizer or "adam").lower()
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; known names: {sorted(OPTIMIZERS)}, "
                             "or pass a torch.optim optimizer instance")
        if not params:
            if optimizer is None:
                return NoParamsOptimizer()
            raise ValueError("the net has no trainable parameters, so there is nothing to optimize")
        cls, lr = OPTIMIZERS[name]
        return cls(params, lr=lr)
    if not isinstance(optimizer, torch.optim.Optimizer) and callable(optimizer):
        optimizer = optimizer(params)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, a name like 'adam', or a factory; got {type(optimizer).__name__}"
        )
    own = {id(p) for p in net.parameters()}
    foreign = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in own]
    if foreign:
        raise ForeignOptimizerError(
            f"the optimizer holds {len(foreign)} parameter tensor(s) that are not this net's "
            f"(shapes {[tuple(p.shape) for p in foreign[:3]]}...). It was probably built on another module "
            "or a copy of the net; build it on this one: torch.optim.Adam(model.parameters(), lr=1e-3)",
            optimizer,
        )
    return optimizer


class ForeignOptimizerError(ValueError):
    """An optimizer built on parameters that are not the net's (``.optimizer`` is that optimizer)."""

    def __init__(self, message: str, optimizer: torch.optim.Optimizer):
        super().__init__(message)
        self.optimizer = optimizer


class NoParamsOptimizer(torch.optim.Optimizer):
    """Stand-in for nets without trainable parameters (evaluate/predict-only use)."""

    def __init__(self) -> None:  # no super().__init__: torch refuses an empty parameter list
        self.param_groups = []
        self.state = {}
        self.defaults = {}

    def step(self, closure: Any = None) -> None:
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None


def move_optimizer_state(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """Move an optimizer's state tensors to ``device`` (Adam's scalar ``step`` stays on CPU by design)."""
    for state in opt.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and not (key == "step" and value.dim() == 0):
                state[key] = value.to(device)


def _noop(*args: Any) -> None:
    return None


class OptimizerStep:
    """Backward, the accumulation window and the optimizer step of one training call.

    >>> net = nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> step = OptimizerStep(opt, list(net.parameters()), accum_steps=2)
    >>> step.start_epoch(n_batches=3)
    >>> for i in range(1, 4):
    ...     step.start_batch(i)
    ...     step.zero_grad()
    ...     step.backward(net(torch.ones(4, 2)).mean(), batch_size=4)
    ...     _ = step.step()
    >>> step.steps_taken  # batches 1-2 make one window, batch 3 (the last) another
    2

    ``accum_steps=k``: the optimizer steps every ``k`` batches and at the last
    batch of the loader, on the sample-weighted mean gradient of the window (it
    accumulates ``n_i * grad_i`` and divides by the window's samples; a loss
    with ``reduction='sum'`` is already a sum and is left alone).
    ``on_backward_end(batch)`` (0-based, as every hook) runs once per window, after unscaling and
    before clipping; ``on_step()`` after each optimizer step. ``no_sync``, when
    given (DDP), is entered around the batches that do not close a window;
    ``sync_grads(grads)``, when given, averages the window's gradients across
    processes before they are unscaled (an overridden step under DDP).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Sequence[nn.Parameter],
        *,
        accum_steps: int = 1,
        sum_reduction: bool = False,
        clip_norm: Optional[float] = None,
        clip_value: Optional[float] = None,
        scaler: Optional[torch.amp.GradScaler] = None,
        on_backward_end: Callable[[int], Any] = _noop,
        on_step: Callable[[], Any] = _noop,
        no_sync: Optional[Callable[[], ContextManager]] = None,
        sync_grads: Optional[Callable[[List[torch.Tensor]], None]] = None,
    ):
        self.optimizer = optimizer
        self.params: List[nn.Parameter] = list(params)
        self.accum_steps = accum_steps
        self.weigh_by_samples = accum_steps > 1 and not sum_reduction
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cpu", enabled=False)
        self.on_backward_end = on_backward_end
        self.on_step = on_step
        self._no_sync = no_sync
        self._sync_grads = sync_grads
        self.gate = WindowedOptimizer(self)
        self.in_user_step = False  # an overridden train_step is running: model.optimizer is the gate
        self._batch: Any = None  # the batch of the user's step (its size, when backward is given none)
        self._backwards = 0  # backward() calls since the last step(): a direct loss.backward() makes none
        self.steps_taken = 0
        self.micro = 0  # batches in the open window
        self.window_samples = 0
        self.batch_index = 0
        self.closes_window = True
        self._n_batches: Optional[int] = None

    # --- driven by the loop
    def start_epoch(self, n_batches: Optional[int]) -> None:
        self._n_batches = n_batches
        self.micro = 0
        self.window_samples = 0

    def start_batch(self, index: int) -> None:
        self.batch_index = index
        self.closes_window = self.micro + 1 == self.accum_steps or index == self._n_batches

    def grad_sync(self) -> ContextManager:
        """DDP's ``no_sync()`` inside a window, a no-op on the batch that closes it."""
        if self._no_sync is None or self.closes_window:
            return contextlib.nullcontext()
        return self._no_sync()

    @property
    def needs_grad_sync(self) -> bool:
        return self._no_sync is not None

    def flush(self) -> bool:
        """Step on a window a loader without ``len()`` left open; returns whether it stepped."""
        if self.micro == 0:
            return False
        self._apply()
        return True

    def window_state(self) -> dict:
        """Where the accumulation window stands after a batch: its batches and samples so far and,
        inside a window, the gradients gathered (a mid-epoch checkpoint keeps them)."""
        grads = None
        if self.micro:
            grads = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        return {"micro": self.micro, "window_samples": self.window_samples, "grads": grads}

    def load_window_state(self, state: dict) -> None:
        """Continue a window from ``window_state()`` (the same parameters, in the same order)."""
        grads = state["grads"]
        if grads is not None and len(grads) != len(self.params):
            raise ValueError(f"the saved accumulation window holds gradients for {len(grads)} parameters, "
                             f"this net trains {len(self.params)}: resume with the same net")
        self.micro, self.window_samples = int(state["micro"]), state["window_samples"]
        if grads is not None:
            with torch.no_grad():
                for p, g in zip(self.params, grads):
                    p.grad = None if g is None else g.to(p.device, p.dtype).clone()

    # --- driven by the step
    def zero_grad(self) -> None:
        """``zero_grad`` at the start of a window (every batch without accumulation)."""
        if self.micro == 0:
            self.optimizer.zero_grad()

    def backward(self, loss: torch.Tensor, batch_size: Optional[int] = None) -> None:
        if self.weigh_by_samples:
            if batch_size is None:
                if self._batch is None:
                    raise TypeError("with grad_accum_steps > 1, backward(loss, batch_size) needs the batch size "
                                    "to weigh the window's gradients exactly")
                batch_size = batch_size_of(self._batch)  # the user's step did not say: its batch's rows
            self.window_samples += batch_size
            loss = loss * batch_size
        self._backwards += 1
        self.scaler.scale(loss).backward()

    def step(self) -> bool:
        """Count the batch; step the optimizer if it closes the window. Returns whether it stepped."""
        if self._backwards == 0 and self.in_user_step:
            self._check_direct_backward()
        self._backwards = 0
        self.micro += 1
        if not self.closes_window:
            return False
        self._apply()
        return True

    # --- an overridden train_step
    def around(self, step: Callable[[Any], Any], autocast: Callable[[], ContextManager]) -> Callable[[Any], Any]:
        """``step`` (a user's ``train_step``) as the loop calls it: under the fit's autocast, with
        ``model.optimizer`` reading this window's ``gate`` while it runs."""

        def windowed_step(batch: Any) -> Any:
            self.in_user_step, self._batch = True, batch
            try:
                with autocast():
                    return step(batch)
            finally:
                self.in_user_step, self._batch = False, None

        return windowed_step

    def _check_direct_backward(self) -> None:
        """A step that called ``loss.backward()`` itself: exact unless the loss needed scaling or weighing."""
        if not any(p.grad is not None for p in self.params):
            return  # no backward at all this batch: a step that only counts
        if self.weigh_by_samples:
            why = (f"with grad_accum_steps={self.accum_steps} each batch's gradient is weighed by its samples "
                   "(the window's mean is exact for any batch sizes)")
        elif self.scaler.is_enabled():
            why = "with precision='16-mixed' the loss is scaled before backward so that fp16 gradients do not underflow"
        else:
            return
        raise StepError(
            f"train_step called loss.backward() directly, but {why}. Call self.backward(loss) (optionally "
            "self.backward(loss, batch_size)) instead of loss.backward() in your train_step; nothing was trained")

    def _apply(self) -> None:
        opt, scaler = self.optimizer, self.scaler
        if self._sync_grads is not None:
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads:
                self._sync_grads(grads)
        scaler.unscale_(opt)
        if self.window_samples:
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads:
                torch._foreach_div_(grads, float(self.window_samples))
        self.on_backward_end(self.batch_index - 1)  # Keras-style 0-based batch index, as every hook
        if self.clip_norm is not None:
            nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        if self.clip_value is not None:
            nn.utils.clip_grad_value_(self.params, self.clip_value)
        scaler.step(opt)
        scaler.update()
        self.micro = 0
        self.window_samples = 0
        self.steps_taken += 1
        self.on_step()


class WindowedOptimizer(torch.optim.Optimizer):
    """``model.optimizer`` inside an overridden ``train_step``: the compiled optimizer, whose
    ``zero_grad`` and ``step`` follow the fit's accumulation window.

    ``zero_grad()`` clears the gradients at the start of a window only; ``step()`` counts
    the batch and, at the window's end, does what ``model.optimizer_step()`` does
    (average across processes where needed, unscale, ``on_backward_end``, clip, step).
    So the recipes people write (``opt.zero_grad(); loss.backward(); opt.step()``, or
    ``step`` then ``zero_grad`` as torchkeras does) train as the default step. Every
    other attribute (``param_groups``, ``state``, ``defaults``, ``state_dict``...) is the
    optimizer's own.
    """

    def __init__(self, owner: OptimizerStep):  # no super().__init__: this holds no parameters of its own
        self.__dict__["_owner"] = owner

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._owner.optimizer

    @property
    def param_groups(self) -> List[dict]:  # type: ignore[override]
        return self._owner.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self._owner.optimizer.state

    @property
    def defaults(self) -> Any:  # type: ignore[override]
        return self._owner.optimizer.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._owner.zero_grad()

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise TypeError("model.optimizer.step(closure) is not supported inside a train_step: the step is "
                            "taken at the end of the accumulation window. Use an optimizer without a closure")
        self._owner.step()

    def state_dict(self) -> Any:
        return self._owner.optimizer.state_dict()

    def load_state_dict(self, state_dict: Any) -> None:
        self._owner.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict) -> None:
        self._owner.optimizer.add_param_group(param_group)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_owner"].optimizer, name)

    def __repr__(self) -> str:
        return f"WindowedOptimizer({self._owner.optimizer!r})"
