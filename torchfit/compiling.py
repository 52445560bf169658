"""``Model.compile``'s arguments resolved: the loss, optimizer, metrics, device, precision, strategy.

Owns turning what a user passes to ``compile`` (names, instances, factories,
torchkeras' aliases) into the objects a run uses, checking all of them before the
net or any state moves. ``Model.compile`` then applies the result in one place.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from torch import nn

from . import distributed
from .device import resolve_device
from .heads import MultiLoss, head_metrics, is_per_output, resolve_loss
from .metrics import resolve_metrics
from .optim import ForeignOptimizerError, move_optimizer_state, resolve_optimizer
from .precision import PrecisionPolicy


@dataclasses.dataclass
class Compiled:
    """What ``compile`` decided, checked; ``move_to_device`` is the one step that changes anything.
    It also keeps ``torch.compile``'s wrapper of the net (``jit_compile``), built at the first fit."""

    loss: Optional[Callable]
    optimizer: torch.optim.Optimizer
    foreign_optimizer: Optional[str]  # why fit must refuse the optimizer (built on another net's parameters)
    metrics: Dict[str, Any]
    device: torch.device
    precision: PrecisionPolicy
    jit_compile: Union[bool, Dict[str, Any]]
    strategy: Any
    _jit_net: Any = dataclasses.field(default=None, init=False, repr=False)

    def training_net(self, net: nn.Module) -> Callable:
        """What the default train step calls: the net, or its ``torch.compile`` wrapper (built once)."""
        if not self.jit_compile:
            return net
        if self._jit_net is None:
            options = self.jit_compile if isinstance(self.jit_compile, dict) else {}
            self._jit_net = torch.compile(net, **options)
        return self._jit_net

    def move_to_device(self, net: nn.Module) -> None:
        dev = self.device
        net.to(dev)
        if isinstance(self.loss, (nn.Module, MultiLoss)):
            self.loss.to(dev)
        if self.foreign_optimizer is None:
            move_optimizer_state(self.optimizer, dev)
        for m in self.metrics.values():
            if isinstance(m, nn.Module):
                m.to(dev)


def resolve(net: nn.Module, loss: Any, optimizer: Any, metrics: Any, device: Any, *, loss_func: Any = None,
            metrics_dict: Optional[Mapping[str, Any]] = None, loss_weights: Any = None, precision: str = "32",
            jit_compile: Any = False, strategy: Any = None) -> Compiled:
    """Every ``compile`` argument checked and resolved; nothing is moved or changed."""
    if loss is not None and loss_func is not None:
        raise TypeError("compile got both loss= and loss_func= (its torchkeras alias); pass only one")
    if metrics is not None and metrics_dict is not None:
        raise TypeError("compile got both metrics= and metrics_dict= (its torchkeras alias); pass only one")
    loss = loss if loss is not None else loss_func
    metrics = metrics if metrics is not None else metrics_dict
    loss = resolve_loss(loss, loss_weights)
    if loss is not None and not callable(loss):
        raise TypeError(
            f"loss must be callable as loss(preds, targets) -> scalar tensor; got {type(loss).__name__}. "
            "Pass e.g. nn.CrossEntropyLoss() (an instance, not the class)"
        )
    if isinstance(loss, type):
        raise TypeError(f"loss is the class {loss.__name__}; pass an instance: {loss.__name__}()")
    dev = resolve_device(distributed.local_device(device))  # under torchrun: cuda:LOCAL_RANK
    prec = PrecisionPolicy(precision, dev)
    parallel = distributed.check_strategy(strategy)
    if not isinstance(jit_compile, (bool, Mapping)):
        raise TypeError(f"jit_compile must be True, False or a dict of torch.compile options; got {jit_compile!r}")
    logits = isinstance(loss, nn.BCEWithLogitsLoss) or loss is nn.functional.binary_cross_entropy_with_logits
    if is_per_output(metrics, loss):  # {"a": ["accuracy"], "b": ["mae"]}: a_accuracy, b_mae
        resolved_metrics = head_metrics(metrics, loss, resolve_metrics)
    else:
        resolved_metrics = resolve_metrics(metrics, from_logits=True if logits else None)
    try:
        opt, foreign = resolve_optimizer(optimizer, net), None
    except ForeignOptimizerError as exc:
        opt, foreign = exc.optimizer, str(exc)
    return Compiled(loss, opt, foreign, resolved_metrics, dev, prec,
                    jit_compile if isinstance(jit_compile, bool) else dict(jit_compile), parallel)
