"""Keras' ``sample_weight`` and ``class_weight``: per-sample losses, their weighted mean, and
``SampleWeighting``, what one fit uses."""
from __future__ import annotations

import copy
import functools
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, Optional

import torch
from torch import nn

from .targets import _BINARY_FUNCTIONS, _INDEX_FUNCTIONS, _REGRESSION_FUNCTIONS, _loss_name

_FUNCTIONAL_LOSSES = _INDEX_FUNCTIONS + _BINARY_FUNCTIONS + _REGRESSION_FUNCTIONS


def per_sample(loss_fn: Any) -> Callable[[Any, Any], torch.Tensor]:
    """A callable giving ``loss_fn``'s per-sample losses, shape ``(N,)``, for sample weights.

    A loss module with a ``reduction`` attribute (every torch loss, torchfit's own) is copied
    with ``reduction='none'``; torch's functional losses (``F.cross_entropy``...) get
    ``reduction='none'``. Element-wise results ``(N, ...)`` are averaged over all but the batch
    dim, as Keras does. ``loss_fn`` itself is not changed. A plain function has no per-sample
    form: ``TypeError`` with the fix. Note: ``nn.CrossEntropyLoss(weight=w)`` gives
    ``w[y_i] * l_i`` per sample, so its class weights multiply with the sample weights.

    >>> per = per_sample(nn.MSELoss())
    >>> per(torch.tensor([[1.0, 3.0], [0.0, 0.0]]), torch.zeros(2, 2))
    tensor([5., 0.])
    """
    if isinstance(loss_fn, nn.Module) and isinstance(getattr(loss_fn, "reduction", None), str):
        unreduced: Callable = copy.copy(loss_fn)  # shares parameters and buffers, own reduction
        unreduced.reduction = "none"
    elif any(loss_fn is f for f in _FUNCTIONAL_LOSSES):
        unreduced = functools.partial(loss_fn, reduction="none")
    else:
        raise TypeError(
            f"sample_weight / class_weight need per-sample losses, and the loss {_loss_name(loss_fn)} has no "
            "'reduction' to ask it for them. Use a torch loss (nn.CrossEntropyLoss(), nn.MSELoss()...) or a "
            "name ('sparse_categorical_crossentropy'), or write the loss as an nn.Module with a reduction "
            "attribute that returns one value per sample when reduction == 'none'"
        )
    name = _loss_name(loss_fn)

    def losses(preds: Any, targets: Any) -> torch.Tensor:
        out = unreduced(preds, targets)
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            raise TypeError(
                f"{name} with reduction='none' returned {'a scalar' if isinstance(out, torch.Tensor) else type(out).__name__}, "
                "not one loss per sample; make it honour reduction='none'"
            )
        return out.reshape(out.shape[0], -1).mean(dim=1) if out.dim() > 1 else out

    return losses


def weighted_mean(losses: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Keras' weighted loss: ``sum(w_i * l_i) / N``, N the number of samples (not ``sum(w)``).

    Keras 3's default reduction, ``"sum_over_batch_size"`` (``reduce_weighted_values``),
    multiplies each per-sample loss by its weight and divides the sum by the number of
    losses, so weights of 0 still count in N and weights of 2 double a sample's pull.
    ``weights`` of shape ``(N,)`` or ``(N, 1)``; ``None`` is the plain mean.

    >>> weighted_mean(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 0.0, 2.0, 0.0]))
    tensor(1.7500)
    """
    if weights is None:
        return losses.mean()
    if not isinstance(weights, torch.Tensor):
        weights = torch.as_tensor(weights)
    if weights.numel() != losses.numel() or (weights.dim() and weights.shape[0] != losses.shape[0]):
        raise ValueError(
            f"sample weights of shape {tuple(weights.shape)} do not match the {losses.shape[0]} per-sample losses "
            "of this batch: give one weight per sample, shape (N,)"
        )
    weights = weights.reshape(losses.shape).to(device=losses.device, dtype=losses.dtype)
    return (losses * weights).sum() / losses.numel()


def class_weight_to_sample_weight(class_weight: Mapping[Any, float], targets: torch.Tensor) -> torch.Tensor:
    """Per-sample weights ``(N,)`` from Keras' ``class_weight={class_id: weight}``.

    Targets are class ids ``(N,)`` or ``(N, 1)`` (ints or whole-number floats, rounded as
    Keras does; binary 0/1 labels too) or one-hot rows ``(N, C)`` (their argmax). As in
    Keras 3, a class missing from the dict weighs 1.0. Runs on the targets' device without
    reading their values (no host sync).

    >>> class_weight_to_sample_weight({0: 1.0, 1: 5.0}, torch.tensor([0.0, 1.0, 1.0]))
    tensor([1., 5., 5.])
    """
    if not isinstance(class_weight, Mapping) or not class_weight:
        raise TypeError(f"class_weight must be a non-empty dict {{class_id: weight}}, e.g. {{0: 1.0, 1: 5.0}}; "
                        f"got {class_weight!r}")
    table: dict[int, float] = {}
    for key, weight in class_weight.items():
        ok_key = isinstance(key, numbers.Integral) and not isinstance(key, bool) and int(key) >= 0
        ok_weight = isinstance(weight, numbers.Real) and not isinstance(weight, bool) and math.isfinite(weight)
        if not (ok_key and ok_weight):
            raise ValueError(
                f"class_weight maps class ids 0, 1, 2... to finite numbers >= 0, e.g. {{0: 1.0, 1: 5.0}}; "
                f"the entry {key!r}: {weight!r} is not one"
            )
        if weight < 0:  # a negative weight turns that class's loss into a reward: training would push it up
            cls = int(key)
            raise ValueError(
                f"class_weight[{cls}] is {float(weight)!r}, a negative weight: it would reward the loss of class {cls} "
                "instead of penalising it (sample_weight refuses negative weights too). Class weights must be "
                f">= 0: use 0 to leave class {cls} out of the loss, or a weight between 0 and 1 to weigh it less"
            )
        table[int(key)] = float(weight)
    if targets.dim() > 1 and targets.shape[-1] != 1:
        ids = targets.argmax(dim=-1)
    else:
        ids = targets.reshape(targets.shape[0]) if targets.dim() > 1 else targets
    ids = (ids.round() if ids.is_floating_point() else ids).long()
    size = max(table) + 1
    lookup = torch.ones(size, dtype=torch.get_default_dtype(), device=targets.device)
    lookup[list(table)] = torch.tensor(list(table.values()), dtype=lookup.dtype, device=targets.device)
    inside = (ids >= 0) & (ids < size)
    return torch.where(inside, lookup[ids.clamp(0, size - 1)], torch.ones_like(lookup[:1]))


class SampleWeighting:
    """How one fit weighs its samples: Keras' ``sample_weight`` (a third item in each batch, or
    ``fit(sample_weight=...)``) and ``class_weight`` (training only), over ``loss_fn``'s per-sample
    losses. The per-sample form is made at the first weighted batch (or at once with
    ``class_weight``, so a loss without one fails before training).

    >>> w = SampleWeighting(nn.MSELoss())
    >>> w.loss(torch.tensor([[1.0], [3.0]]), torch.zeros(2, 1), torch.tensor([1.0, 0.0]), training=True)
    tensor(0.5000)
    """

    def __init__(self, loss_fn: Any, class_weight: Optional[Mapping[Any, float]] = None):
        self.loss_fn = loss_fn
        self.class_weight = class_weight
        self._per_sample: Optional[Callable[[Any, Any], torch.Tensor]] = None
        if class_weight is not None:
            class_weight_to_sample_weight(class_weight, torch.zeros(0, dtype=torch.long))  # checks the dict
            self._per_sample = per_sample(loss_fn)

    def applies(self, weights: Any, training: bool) -> bool:
        """Whether a batch is weighted: it carries weights, or class weights apply (training)."""
        return weights is not None or (training and self.class_weight is not None)

    def loss(self, preds: Any, targets: Any, weights: Any, training: bool) -> torch.Tensor:
        if self._per_sample is None:
            self._per_sample = per_sample(self.loss_fn)
        if training and self.class_weight is not None:
            by_class = class_weight_to_sample_weight(self.class_weight, targets)
            weights = by_class if weights is None else by_class * weights.reshape(by_class.shape).to(by_class)
        return weighted_mean(self._per_sample(preds, targets), weights)

