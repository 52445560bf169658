"""The optimizer: choosing one by name, and the one owner of the optimizer step.

Owns ``compile``'s optimizer argument (a name with Keras' default learning
rate, an instance, or a factory) and ``OptimizerStep``: everything between a
loss and updated weights during a training call. That is the backward pass
with the grad scaler, the gradient-accumulation window (exact for any batch
sizes), unscaling, the ``on_backward_end`` hook, clipping, the optimizer step,
``zero_grad`` and the flush of a window left open at the end of a loader.
``Model.backward`` and ``Model.optimizer_step``, the documented override
points, delegate here. *Which* batches exist is the loop's business; *how*
autocast and the scaler are configured is ``precision``'s.

The grad scaler is always there: ``GradScaler(enabled=False)`` outside fp16
passes losses and steps straight through, so no step has a branch for it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, List, Optional, Sequence

import torch
from torch import nn

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
    ``on_backward_end(batch_index)`` runs once per window, after unscaling and
    before clipping; ``on_step()`` after each optimizer step. ``no_sync``, when
    given (DDP), is entered around the batches that do not close a window.
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

    # --- driven by the step
    def zero_grad(self) -> None:
        """``zero_grad`` at the start of a window (every batch without accumulation)."""
        if self.micro == 0:
            self.optimizer.zero_grad()

    def backward(self, loss: torch.Tensor, batch_size: Optional[int] = None) -> None:
        if self.weigh_by_samples:
            if batch_size is None:
                raise TypeError("with grad_accum_steps > 1, backward(loss, batch_size) needs the batch size "
                                "to weigh the window's gradients exactly")
            self.window_samples += batch_size
            loss = loss * batch_size
        self.scaler.scale(loss).backward()

    def step(self) -> bool:
        """Count the batch; step the optimizer if it closes the window. Returns whether it stepped."""
        self.micro += 1
        if not self.closes_window:
            return False
        self._apply()
        return True

    def _apply(self) -> None:
        opt, scaler = self.optimizer, self.scaler
        scaler.unscale_(opt)
        if self.window_samples:
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads:
                torch._foreach_div_(grads, float(self.window_samples))
        self.on_backward_end(self.batch_index)
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
