"""Losses by Keras name, targets as Keras reads them, and per-sample weighting.

This module owns four things, each usable on its own:

* :func:`get` turns a Keras loss name (``"sparse_categorical_crossentropy"``, ``"mse"``...)
  or its class-style alias (``"SparseCategoricalCrossentropy"``) into a torch loss module;
  the same aliases are callable here (``losses.SparseCategoricalCrossentropy(from_logits=True)``);
* :func:`adapt_targets` reshapes and casts targets the way Keras would, from shapes and dtypes
  only (no host sync), so it can run on every step;
* :func:`check_targets` looks at the first batch's values once, before any weight changes, and
  refuses labels the loss cannot mean (fractions as class ids, ids out of range, NaN...);
* :func:`per_sample`, :func:`weighted_mean` and :func:`class_weight_to_sample_weight` give
  Keras' ``sample_weight`` / ``class_weight`` semantics for any loss with a ``reduction``.

It leaves to others *when* these run (the train and eval steps), where batches come from and
how figures are logged.

Names (case, ``_`` and ``-`` are ignored, so ``"MeanSquaredError"`` = ``"mean_squared_error"``):

=====================================================  =========================================
Keras name / alias                                     torch loss returned
=====================================================  =========================================
``sparse_categorical_crossentropy``                    ``nn.CrossEntropyLoss()`` (logits) or
                                                       ``CrossEntropyFromProbabilities()``
``categorical_crossentropy``                           the same, with one-hot / soft (N, C) targets
``binary_crossentropy``                                ``nn.BCEWithLogitsLoss()`` (logits) or
                                                       ``BCEFromProbabilities()`` (an ``nn.BCELoss``)
``mean_squared_error``, ``mse``                        ``nn.MSELoss()``
``mean_absolute_error``, ``mae``                       ``nn.L1Loss()``
``huber`` (``delta=1.0``)                              ``nn.HuberLoss(delta=1.0)``
``poisson``                                            ``nn.PoissonNLLLoss(log_input=False, eps=1e-7)``
``mean_absolute_percentage_error``, ``mape``           ``MeanAbsolutePercentageError()``
``mean_squared_logarithmic_error``, ``msle``           ``MeanSquaredLogarithmicError()``
``log_cosh``, ``logcosh``                              ``LogCosh()``
``kl_divergence``, ``kld``, ``kullback_leibler_...``   ``KLDivergence()``
``hinge``, ``squared_hinge``, ``categorical_hinge``    ``Hinge()``, ``SquaredHinge()``, ``CategoricalHinge()``
``cosine_similarity``                                  ``CosineSimilarity()``
torch's own: ``cross_entropy``, ``nll``,               ``nn.CrossEntropyLoss()``, ``nn.NLLLoss()``,
``bce``, ``bce_with_logits``, ``l1``, ``smooth_l1``    ``nn.BCELoss()``, ``nn.BCEWithLogitsLoss()``, ...
=====================================================  =========================================

``from_logits``: as in Keras, the cross-entropy names and aliases take **probabilities** unless
``from_logits=True`` (Keras' guide code ends its nets with a softmax and runs unchanged); a
torch net that ends in a ``Linear`` layer outputs logits and needs ``from_logits=True`` (or
``nn.CrossEntropyLoss()`` itself). :func:`check_targets` turns the mismatch into an error on the
first batch: outputs that are not probabilities given to a probability loss are refused with
this fix, and probabilities given to a logits loss draw a warning, as Keras does.

Class axis: dim 1, as in torch (``(N, C)`` or ``(N, C, d1, ...)``); Keras puts it last, which
is the same for the usual ``(N, C)``. Cross-entropy from probabilities follows Keras exactly:
rows are divided by their sum, clipped to ``[1e-7, 1 - 1e-7]``, then logged.
"""
from __future__ import annotations

import copy
import difflib
import functools
import math
import numbers
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TargetError", "get", "names", "adapt_targets", "check_targets", "per_sample", "weighted_mean",
    "class_weight_to_sample_weight",
    "CrossEntropyFromProbabilities", "BCEFromProbabilities", "MeanAbsolutePercentageError",
    "MeanSquaredLogarithmicError", "LogCosh", "KLDivergence", "Hinge", "SquaredHinge",
    "CategoricalHinge", "CosineSimilarity",
    "SparseCategoricalCrossentropy", "CategoricalCrossentropy", "BinaryCrossentropy",
    "MeanSquaredError", "MeanAbsoluteError", "Huber", "Poisson",
]

EPSILON = 1e-7  # Keras' backend.epsilon(): the clip for probabilities and divisors


class TargetError(ValueError):
    """Targets (labels) that the loss cannot mean, found by :func:`check_targets` before training."""

# Keras' reduction names -> torch's.
_REDUCTIONS = {"sum_over_batch_size": "mean", "mean": "mean", "sum": "sum", "none": "none", None: "none"}


def _reduction(reduction: Optional[str]) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"reduction must be 'sum_over_batch_size' (Keras' default, torch's 'mean'), 'sum' or 'none'; "
            f"got {reduction!r}"
        )
    return _REDUCTIONS[reduction]


# ------------------------------------------------------------------ own loss modules
class _PerSampleLoss(nn.Module):
    """Base of torchfit's own losses: ``values`` gives per-sample losses ``(N,)``; ``reduction``
    ('mean' | 'sum' | 'none') reduces them, like torch's losses."""

    target_kind = "regression"  # what adapt_targets / check_targets treat the targets as

    def __init__(self, reduction: Optional[str] = "mean") -> None:
        super().__init__()
        self.reduction = _reduction(reduction)

    def values(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = self.values(preds, targets)
        if out.dim() > 1:  # Keras averages whatever is left after its own axis reduction
            out = out.reshape(out.shape[0], -1).mean(1)
        if self.reduction == "mean":
            return out.mean()
        if self.reduction == "sum":
            return out.sum()
        return out

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class CrossEntropyFromProbabilities(_PerSampleLoss):
    """Cross-entropy of probability outputs (a softmax layer's), as Keras computes it.

    Targets are class indices ``(N,)`` (sparse) or one-hot / soft rows ``(N, C)`` (categorical).
    Each row of ``preds`` is divided by its sum and clipped to ``[eps, 1 - eps]`` before the log.

    >>> loss = CrossEntropyFromProbabilities()
    >>> round(float(loss(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]))), 4)
    0.1643
    """

    target_kind = "index"

    def __init__(self, reduction: Optional[str] = "mean", epsilon: float = EPSILON, label_smoothing: float = 0.0,
                 ignore_index: int = -100) -> None:
        super().__init__(reduction)
        self.epsilon = epsilon
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index

    def values(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probs = preds / preds.sum(dim=1, keepdim=True)
        log_probs = probs.clamp(self.epsilon, 1.0 - self.epsilon).log()
        classes = preds.shape[1]
        if targets.shape == preds.shape:  # one-hot or soft rows
            if self.label_smoothing:
                targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / classes
            return -(targets * log_probs).sum(dim=1)
        keep = targets != self.ignore_index
        safe = targets.where(keep, torch.zeros_like(targets))
        picked = -log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)
        if self.label_smoothing:
            picked = (1.0 - self.label_smoothing) * picked - self.label_smoothing * log_probs.mean(dim=1)
        return picked * keep


class BCEFromProbabilities(nn.BCELoss):
    """``nn.BCELoss`` on probabilities clipped to ``[eps, 1 - eps]``, as Keras' binary_crossentropy.

    A subclass of ``nn.BCELoss``, so metrics and input conversion treat it as one.

    >>> round(float(BCEFromProbabilities()(torch.tensor([0.8]), torch.tensor([1.0]))), 4)
    0.2231
    """

    def __init__(self, reduction: Optional[str] = "mean", epsilon: float = EPSILON) -> None:
        super().__init__(reduction=_reduction(reduction))
        self.epsilon = epsilon

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch's names)
        return super().forward(input.clamp(self.epsilon, 1.0 - self.epsilon), target)


class MeanAbsolutePercentageError(_PerSampleLoss):
    """``100 * mean(|y - p| / max(|y|, eps))`` over the last axis (Keras' ``mape``).

    >>> round(float(MeanAbsolutePercentageError()(torch.tensor([[1.1], [1.8]]), torch.tensor([[1.0], [2.0]]))), 4)
    10.0
    """

    def values(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 100.0 * ((targets - preds).abs() / targets.abs().clamp_min(EPSILON)).mean(dim=-1)


class MeanSquaredLogarithmicError(_PerSampleLoss):
    """``mean((log1p(max(p, 0)) - log1p(max(y, 0)))**2)`` over the last axis (Keras' ``msle``).

    >>> round(float(MeanSquaredLogarithmicError()(torch.tensor([[0.0]]), torch.tensor([[math.e - 1]]))), 4)
    1.0
    """

    def values(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (preds.clamp_min(0).log1p() - targets.clamp_min(0).log1p()).square().mean(dim=-1)


class LogCosh(_PerSampleLoss):
    """``mean(log(cosh(p - y)))`` over the last axis, computed without overflow (Keras' ``log_cosh``).

    >>> round(float(LogCosh()(torch.tensor([[1.0]]), torch.tensor([[0.0]]))), 4)
    0.4338
    """

    def values(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = preds - targets
        # log(cosh(x)) = x + softplus(-2x) - log(2): finite where cosh(x) itself overflows
        return (x + F.softplus(-2.0 * x) - math.log(2.0)).mean(dim=-1)


class KLDivergence(_PerSampleLoss):
    """``sum(y * log(y / p))`` over the last axis, both clipped to ``[eps, 1]`` (Keras' ``kld``).

    >>> round(float(KLDivergence()(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]]))), 4)
    0.3681
    """

    def values(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = targets.clamp(EPSILON, 1.0)
        p = preds.clamp(EPSILON, 1.0)
        return (y * (y / p).log()).sum(dim=-1)


class Hinge(_PerSampleLoss):
    """``mean(max(1 - y * p, 0))`` over the last axis; 0/1 labels become -1/1 (Keras' ``hinge``).

    >>> float(Hinge()(torch.tensor([[0.3], [-2.0]]), torch.tensor([[1.0], [0.0]])))
    0.3499999940395355
    """

    squared = False

    def values(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Keras converts {0, 1} labels to {-1, 1} and leaves -1/1 labels as they are.
        signs = torch.where(targets == 0, -torch.ones_like(targets), targets)
        margin = (1.0 - signs * preds).clamp_min(0)
        return (margin.square() if self.squared else margin).mean(dim=-1)


class SquaredHinge(Hinge):
    """``mean(max(1 - y * p, 0) ** 2)`` over the last axis (Keras' ``squared_hinge``).

    >>> float(SquaredHinge()(torch.tensor([[0.5]]), torch.tensor([[1.0]])))
    0.25
    """

    squared = True


class CategoricalHinge(_PerSampleLoss):
    """``max(0, 1 + max((1 - y) * p) - sum(y * p))`` with one-hot ``y`` (Keras' ``categorical_hinge``).

    >>> float(CategoricalHinge()(torch.tensor([[0.2, 0.9]]), torch.tensor([[1.0, 0.0]])))
    1.7000000476837158
    """

    def values(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = (targets * preds).sum(dim=-1)
        neg = ((1.0 - targets) * preds).amax(dim=-1)
        return (neg - pos + 1.0).clamp_min(0)


class CosineSimilarity(_PerSampleLoss):
    """``-sum(l2_normalize(y) * l2_normalize(p))`` over the last axis (Keras' ``cosine_similarity``).

    >>> float(CosineSimilarity()(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])))
    -1.0
    """

    def values(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Keras' l2_normalize divides by sqrt(max(sum(x**2), 1e-12))
        return -(F.normalize(targets, dim=-1, eps=1e-6) * F.normalize(preds, dim=-1, eps=1e-6)).sum(dim=-1)


# --------------------------------------------------------- Keras' class-style aliases
def SparseCategoricalCrossentropy(from_logits: bool = False, ignore_class: Optional[int] = None,
                                  reduction: Optional[str] = "sum_over_batch_size") -> nn.Module:
    """Keras' ``SparseCategoricalCrossentropy``: class-index targets ``(N,)`` (or ``(N, 1)``).

    ``from_logits=True`` gives ``nn.CrossEntropyLoss``; the default (probabilities, as in
    Keras) gives :class:`CrossEntropyFromProbabilities`. ``ignore_class`` is torch's
    ``ignore_index``.

    >>> SparseCategoricalCrossentropy(from_logits=True)
    CrossEntropyLoss()
    """
    ignore = -100 if ignore_class is None else int(ignore_class)
    if from_logits:
        return nn.CrossEntropyLoss(ignore_index=ignore, reduction=_reduction(reduction))
    return CrossEntropyFromProbabilities(reduction=reduction, ignore_index=ignore)


def CategoricalCrossentropy(from_logits: bool = False, label_smoothing: float = 0.0,
                            reduction: Optional[str] = "sum_over_batch_size") -> nn.Module:
    """Keras' ``CategoricalCrossentropy``: one-hot or soft targets ``(N, C)``.

    >>> CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    CrossEntropyLoss()
    """
    if from_logits:
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction=_reduction(reduction))
    return CrossEntropyFromProbabilities(reduction=reduction, label_smoothing=label_smoothing)


def BinaryCrossentropy(from_logits: bool = False, reduction: Optional[str] = "sum_over_batch_size") -> nn.Module:
    """Keras' ``BinaryCrossentropy``: 0/1 (or soft) targets of the outputs' shape.

    >>> BinaryCrossentropy(from_logits=True)
    BCEWithLogitsLoss()
    """
    if from_logits:
        return nn.BCEWithLogitsLoss(reduction=_reduction(reduction))
    return BCEFromProbabilities(reduction=reduction)


def MeanSquaredError(reduction: Optional[str] = "sum_over_batch_size") -> nn.Module:
    """Keras' ``MeanSquaredError``: ``nn.MSELoss``.

    >>> MeanSquaredError()
    MSELoss()
    """
    return nn.MSELoss(reduction=_reduction(reduction))


def MeanAbsoluteError(reduction: Optional[str] = "sum_over_batch_size") -> nn.Module:
    """Keras' ``MeanAbsoluteError``: ``nn.L1Loss``.

    >>> MeanAbsoluteError()
    L1Loss()
    """
    return nn.L1Loss(reduction=_reduction(reduction))


def Huber(delta: float = 1.0, reduction: Optional[str] = "sum_over_batch_size") -> nn.Module:
    """Keras' ``Huber``: ``nn.HuberLoss(delta)`` (the same formula: quadratic within ``delta``).

    >>> Huber(delta=2.0)
    HuberLoss()
    """
    return nn.HuberLoss(delta=delta, reduction=_reduction(reduction))


def Poisson(reduction: Optional[str] = "sum_over_batch_size") -> nn.Module:
    """Keras' ``Poisson``: ``mean(p - y * log(p + eps))``, as ``nn.PoissonNLLLoss(log_input=False)``.

    >>> Poisson().log_input
    False
    """
    return nn.PoissonNLLLoss(log_input=False, eps=EPSILON, reduction=_reduction(reduction))


# normalised name -> factory(**options); the three cross-entropies also take from_logits
_KERAS: dict[str, Callable[..., nn.Module]] = {}
_TAKES_LOGITS_FLAG = {"sparsecategoricalcrossentropy", "categoricalcrossentropy", "binarycrossentropy"}


def _register(names: str, factory: Callable[..., nn.Module]) -> None:
    for name in names.split():
        _KERAS[_normalise(name)] = factory


def _normalise(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


_register("sparse_categorical_crossentropy SparseCategoricalCrossentropy", SparseCategoricalCrossentropy)
_register("categorical_crossentropy CategoricalCrossentropy", CategoricalCrossentropy)
_register("binary_crossentropy BinaryCrossentropy", BinaryCrossentropy)
_register("mean_squared_error mse MeanSquaredError", MeanSquaredError)
_register("mean_absolute_error mae MeanAbsoluteError", MeanAbsoluteError)
_register("huber huber_loss Huber", Huber)
_register("poisson Poisson", Poisson)
_register("mean_absolute_percentage_error mape MeanAbsolutePercentageError", MeanAbsolutePercentageError)
_register("mean_squared_logarithmic_error msle MeanSquaredLogarithmicError", MeanSquaredLogarithmicError)
_register("log_cosh logcosh LogCosh", LogCosh)
_register("kl_divergence kld kullback_leibler_divergence KLDivergence", KLDivergence)
_register("hinge Hinge", Hinge)
_register("squared_hinge SquaredHinge", SquaredHinge)
_register("categorical_hinge CategoricalHinge", CategoricalHinge)
_register("cosine_similarity CosineSimilarity", CosineSimilarity)
# torch's own spellings, for users who think in torch (these never take from_logits)
_register("cross_entropy CrossEntropyLoss", nn.CrossEntropyLoss)
_register("nll nll_loss NLLLoss", nn.NLLLoss)
_register("bce BCELoss", nn.BCELoss)
_register("bce_with_logits BCEWithLogitsLoss", nn.BCEWithLogitsLoss)
_register("l1 l1_loss L1Loss", nn.L1Loss)
_register("smooth_l1 smooth_l1_loss SmoothL1Loss", nn.SmoothL1Loss)
_register("MSELoss", nn.MSELoss)
_register("HuberLoss", nn.HuberLoss)

# The names as users write them, for error messages and docs.
_SHOWN = (
    "sparse_categorical_crossentropy categorical_crossentropy binary_crossentropy mean_squared_error mse "
    "mean_absolute_error mae huber poisson mean_absolute_percentage_error mape mean_squared_logarithmic_error "
    "msle log_cosh kl_divergence kld hinge squared_hinge categorical_hinge cosine_similarity cross_entropy "
    "nll bce bce_with_logits l1 smooth_l1"
).split()


def names() -> list[str]:
    """The loss names :func:`get` knows, in snake case (class-style spellings work too).

    >>> "sparse_categorical_crossentropy" in names()
    True
    """
    return list(_SHOWN)


def get(loss: Any, *, from_logits: Optional[bool] = None, **options: Any) -> Callable:
    """A loss from a Keras name, a class-style alias, or a loss you already have.

    Strings are looked up in the table in this module's docstring, ignoring case, ``_`` and
    ``-``; ``options`` go to the loss (``delta=`` for huber, ``label_smoothing=``,
    ``ignore_class=``, ``reduction=``). ``from_logits`` applies to the three cross-entropy
    names and defaults to ``False`` (probabilities), as in Keras. Anything callable (a torch
    loss module, a function) is returned as it is.

    >>> get("sparse_categorical_crossentropy", from_logits=True)
    CrossEntropyLoss()
    >>> get("SparseCategoricalCrossentropy")
    CrossEntropyFromProbabilities(reduction='mean')
    >>> get("mse")
    MSELoss()
    """
    if isinstance(loss, str):
        key = _normalise(loss)
        factory = _KERAS.get(key)
        if factory is None:
            close = difflib.get_close_matches(loss.lower(), _SHOWN, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"unknown loss name {loss!r}.{hint} Known names: {', '.join(_SHOWN)} (or their Keras "
                "class names, e.g. 'SparseCategoricalCrossentropy'); or pass a loss object such as "
                "nn.CrossEntropyLoss()"
            )
        if key in _TAKES_LOGITS_FLAG:
            return factory(from_logits=bool(from_logits), **options)
        if from_logits is not None:
            raise TypeError(
                f"from_logits applies to Keras' cross-entropy names (sparse_categorical_crossentropy, "
                f"categorical_crossentropy, binary_crossentropy); {loss!r} takes the net's outputs as it is "
                "(torch's cross_entropy and bce_with_logits always take logits). Drop from_logits="
            )
        return factory(**options)
    if isinstance(loss, type):
        raise TypeError(f"loss is the class {loss.__name__}; pass an instance: {loss.__name__}()")
    if not callable(loss):
        raise TypeError(
            f"loss must be a name such as 'sparse_categorical_crossentropy' or callable as loss(preds, targets); "
            f"got {type(loss).__name__}"
        )
    if from_logits is not None or options:
        raise TypeError(
            f"from_logits= and loss options only apply to loss names; {type(loss).__name__} is already built: "
            "configure it where you create it"
        )
    return loss


# ------------------------------------------------------------------ targets
_INDEX_MODULES = (nn.CrossEntropyLoss, nn.NLLLoss, CrossEntropyFromProbabilities)
_INDEX_FUNCTIONS = (F.cross_entropy, F.nll_loss)
_BINARY_MODULES = (nn.BCELoss, nn.BCEWithLogitsLoss)
_BINARY_FUNCTIONS = (F.binary_cross_entropy, F.binary_cross_entropy_with_logits)
_REGRESSION_MODULES = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss, nn.PoissonNLLLoss)
_REGRESSION_FUNCTIONS = (F.mse_loss, F.l1_loss, F.huber_loss, F.smooth_l1_loss, F.poisson_nll_loss)


def _kind(loss_fn: Any) -> Optional[str]:
    """'index', 'binary', 'regression' or None (a loss whose targets we know nothing about)."""
    if isinstance(loss_fn, _INDEX_MODULES) or loss_fn in _INDEX_FUNCTIONS:
        return "index"
    if isinstance(loss_fn, _BINARY_MODULES) or loss_fn in _BINARY_FUNCTIONS:
        return "binary"
    if isinstance(loss_fn, _REGRESSION_MODULES) or loss_fn in _REGRESSION_FUNCTIONS:
        return "regression"
    kind = getattr(loss_fn, "target_kind", None)
    return kind if kind in ("index", "binary", "regression") else None


def _dense_only_index(loss_fn: Any) -> bool:
    # NLLLoss takes class indices only; CrossEntropyLoss also takes (N, C) probability rows.
    return isinstance(loss_fn, nn.NLLLoss) or loss_fn is F.nll_loss


def _same_rank(targets: torch.Tensor, preds: torch.Tensor) -> torch.Tensor:
    # Keras' squeeze_or_expand_to_same_rank: (N,) against (N, 1) either way round, never a broadcast.
    if targets.dim() == preds.dim() + 1 and targets.shape[-1] == 1 and targets.shape[:-1] == preds.shape:
        return targets.squeeze(-1)
    if preds.dim() == targets.dim() + 1 and preds.shape[-1] == 1 and preds.shape[:-1] == targets.shape:
        return targets.unsqueeze(-1)
    return targets


def adapt_targets(loss_fn: Any, preds: Any, targets: Any) -> Any:
    """Targets reshaped and cast the way Keras reads them for ``loss_fn``; shapes and dtypes only.

    Never reads a value (no host sync), so it can run on every step. For a cross-entropy kind
    of loss (``nn.CrossEntropyLoss``, ``nn.NLLLoss``, the probability variants) with outputs
    ``(N, C, ...)``: targets ``(N, 1, ...)`` lose the 1, and index targets of any dtype (float
    ``0.0, 1.0, 2.0`` as Keras users write them, int32, uint8) become int64; one-hot ``(N, C)``
    rows become float (``nn.NLLLoss``: their argmax). For binary cross-entropy and regression
    losses: ``(N,)`` against ``(N, 1)`` either way round takes the outputs' shape (torch would
    broadcast it to ``(N, N)``) and the outputs' dtype. Anything else passes through unchanged.
    Fractions truncate here; :func:`check_targets` on the first batch refuses them.

    >>> adapt_targets(nn.CrossEntropyLoss(), torch.zeros(3, 4), torch.tensor([[0.0], [2.0], [3.0]]))
    tensor([0, 2, 3])
    >>> adapt_targets(nn.MSELoss(), torch.zeros(3, 1), torch.tensor([1, 2, 3])).shape
    torch.Size([3, 1])
    """
    if not isinstance(targets, torch.Tensor) or not isinstance(preds, torch.Tensor):
        return targets
    kind = _kind(loss_fn)
    if kind == "index":
        if preds.dim() < 2:
            return targets
        if targets.shape == preds.shape:  # one-hot or soft rows
            if _dense_only_index(loss_fn):
                return targets.argmax(dim=1)
            return targets if targets.dtype == preds.dtype else targets.to(preds.dtype)
        if targets.dim() == preds.dim() and targets.shape[1] == 1:
            targets = targets.squeeze(1)
        if targets.dim() == preds.dim() - 1 and targets.dtype != torch.long:
            targets = targets.long()
        return targets
    if kind in ("binary", "regression"):
        targets = _same_rank(targets, preds)
        if preds.is_floating_point() and targets.dtype != preds.dtype:
            targets = targets.to(preds.dtype)
        return targets
    return targets


def _loss_name(loss_fn: Any) -> str:
    if isinstance(loss_fn, nn.Module):
        return f"{type(loss_fn).__name__}()"
    return getattr(loss_fn, "__qualname__", None) or type(loss_fn).__name__


def _examples(values: torch.Tensor, limit: int = 5) -> str:
    seen = torch.unique(values.detach().flatten().double().cpu())[:limit].tolist()
    return ", ".join(f"{v:g}" for v in seen)


def check_targets(loss_fn: Any, preds: Any, targets: Any) -> None:
    """Refuse targets ``loss_fn`` cannot mean, on one batch, before any weight changes.

    Reads values (it syncs), so run it once, on the first batch. For cross-entropy kinds:
    class ids must be whole numbers in ``0..C-1`` (``ignore_index`` aside) and not NaN; one-hot
    rows for ``nn.NLLLoss`` must be one-hot; a probability loss refuses outputs that are not
    probabilities, and a logits loss warns on outputs that look like probabilities. Binary
    cross-entropy: targets in ``[0, 1]`` of the outputs' shape (``nn.BCELoss``: outputs too).
    Regression: the targets' shape must equal the outputs' (no silent broadcast), no NaN.
    Raises :class:`TargetError` (a ``ValueError``) naming the loss, the problem, the values
    seen and the fix.

    >>> check_targets(nn.CrossEntropyLoss(), torch.zeros(2, 3), torch.tensor([0.0, 2.0]))
    >>> check_targets(nn.CrossEntropyLoss(), torch.zeros(2, 3), torch.tensor([0.5, 2.0]))
    Traceback (most recent call last):
    ...
    torchfit.losses.TargetError: CrossEntropyLoss() needs class indices 0..2 as targets (the net outputs 3 classes), but the first batch's labels include 0.5 (not whole numbers). ...
    """
    if not isinstance(targets, torch.Tensor) or not isinstance(preds, torch.Tensor):
        return
    kind = _kind(loss_fn)
    name = _loss_name(loss_fn)
    adapted = adapt_targets(loss_fn, preds, targets)
    if kind == "index" and preds.dim() >= 2:
        _check_index_targets(loss_fn, name, preds, targets, adapted)
        _check_class_outputs(loss_fn, name, preds)
    elif kind == "binary":
        _check_shapes(name, preds, targets, adapted,
                      "binary cross-entropy takes one 0/1 label per output: give the net 1 output per "
                      "label (nn.Linear(..., 1)) and labels of shape (N,) or (N, 1)")
        values = targets.detach().double()
        bad = values[~((values >= 0) & (values <= 1))]  # NaN fails both comparisons
        if bad.numel():
            raise TargetError(
                f"{name} needs targets in [0, 1] (0/1 labels or probabilities), but the first batch's labels "
                f"include {_examples(bad)}. For more than two classes give the net C outputs and use "
                "'sparse_categorical_crossentropy' (from_logits=True) or nn.CrossEntropyLoss(); NaN labels "
                "must be dropped or filled first"
            )
        if isinstance(loss_fn, nn.BCELoss) or loss_fn is F.binary_cross_entropy:
            out = preds.detach().double()
            outside = out[~((out >= 0) & (out <= 1))]
            if outside.numel():
                raise TargetError(
                    f"{name} takes probabilities, but the net's outputs include {_examples(outside)}: they look "
                    "like logits. End the net with nn.Sigmoid(), or use nn.BCEWithLogitsLoss() "
                    "(losses.get('binary_crossentropy', from_logits=True))"
                )
    elif kind == "regression":
        _check_shapes(name, preds, targets, adapted,
                      "give targets one value per output: (N,) or (N, 1) for one output, (N, K) for K outputs")
        values = targets.detach()
        if values.is_floating_point() and bool(torch.isnan(values).any()):
            raise TargetError(f"{name}: the first batch's targets contain NaN; drop or fill those rows before fit")


def _check_shapes(name: str, preds: torch.Tensor, targets: torch.Tensor, adapted: torch.Tensor, fix: str) -> None:
    if adapted.shape != preds.shape:
        raise TargetError(
            f"{name}: targets of shape {tuple(targets.shape)} do not match the net's outputs of shape "
            f"{tuple(preds.shape)} (torch would broadcast them and compute a wrong loss). Fix: {fix}"
        )


def _check_index_targets(loss_fn: Any, name: str, preds: torch.Tensor, targets: torch.Tensor,
                         adapted: torch.Tensor) -> None:
    classes = int(preds.shape[1])
    if targets.shape == preds.shape:  # one-hot / soft rows
        rows = targets.detach().double()
        if not bool(((rows >= 0) & (rows <= 1)).all()):
            raise TargetError(
                f"{name}: targets of the outputs' shape {tuple(preds.shape)} are read as one-hot or probability "
                f"rows, but they include {_examples(rows[~((rows >= 0) & (rows <= 1))])}. Pass class indices "
                "of shape (N,) instead, or rows of probabilities"
            )
        if _dense_only_index(loss_fn) and not bool(((rows == 0) | (rows == 1)).all() and (rows.sum(1) == 1).all()):
            raise TargetError(
                f"{name} takes class indices; (N, C) targets are accepted only one-hot. For soft labels use "
                "nn.CrossEntropyLoss() or 'categorical_crossentropy'"
            )
        return
    expected = (preds.shape[0], *preds.shape[2:])
    if tuple(adapted.shape) != tuple(expected):
        raise TargetError(
            f"{name}: targets of shape {tuple(targets.shape)} do not fit outputs of shape {tuple(preds.shape)}: "
            f"class-index targets have shape {tuple(expected)} (one id per sample), one-hot targets "
            f"{tuple(preds.shape)}. Fix the labels' shape, or the net's output layer"
        )
    values = targets.detach().double()
    ignore = getattr(loss_fn, "ignore_index", -100)
    values = values[values != ignore]
    problems = []
    nan = values[torch.isnan(values)]
    if nan.numel():
        problems.append(("NaN", nan, "drop or fill the rows whose label is NaN before fit"))
    values = values[~torch.isnan(values)]
    fractions = values[values != values.round()]
    if fractions.numel():
        problems.append((
            "not whole numbers", fractions,
            "class labels must be whole numbers 0, 1, 2... For probabilities or regression targets use "
            "'binary_crossentropy' (one output per label) or 'mse'; for soft labels pass (N, C) rows "
            "with 'categorical_crossentropy'",
        ))
    out_of_range = values[(values < 0) | (values >= classes)]
    out_of_range = out_of_range[out_of_range == out_of_range.round()]
    if out_of_range.numel():
        problems.append((
            f"outside 0..{classes - 1}", out_of_range,
            f"the net outputs {classes} classes, so labels must be 0..{classes - 1}: map the labels to "
            "0..C-1 (sklearn.preprocessing.LabelEncoder, or y - y.min() for 1-based labels) or give the "
            "last layer as many outputs as there are classes",
        ))
    if problems:
        what, bad, fix = problems[0]
        raise TargetError(
            f"{name} needs class indices 0..{classes - 1} as targets (the net outputs {classes} classes), but "
            f"the first batch's labels include {_examples(bad)} ({what}). Fix: {fix}"
        )


def _looks_like_probabilities(preds: torch.Tensor) -> bool:
    p = preds.detach().double()
    if p.shape[1] < 2:
        return False
    return bool(((p >= 0) & (p <= 1)).all() and ((p.sum(dim=1) - 1).abs() < 1e-3).all())


def _check_class_outputs(loss_fn: Any, name: str, preds: torch.Tensor) -> None:
    if isinstance(loss_fn, CrossEntropyFromProbabilities):
        if not _looks_like_probabilities(preds):
            raise TargetError(
                f"{name} takes probabilities (from_logits=False, Keras' default), but the net's outputs are not: "
                f"rows must be >= 0 and sum to 1, and the first batch has values {_examples(preds)}. A net "
                "ending in nn.Linear outputs logits: use from_logits=True, e.g. "
                "compile(loss=torchfit.losses.get('sparse_categorical_crossentropy', from_logits=True)) or "
                "nn.CrossEntropyLoss(); or end the net with nn.Softmax(dim=1)"
            )
    elif isinstance(loss_fn, nn.CrossEntropyLoss) and _looks_like_probabilities(preds):
        warnings.warn(
            f"{name} takes logits, but the net's outputs look like probabilities (every row >= 0 and sums to "
            "1): a softmax layer? Remove it, or use a probability loss: "
            "torchfit.losses.get('sparse_categorical_crossentropy') (from_logits=False)",
            UserWarning, stacklevel=3,
        )


# ------------------------------------------------------------------ per-sample weighting
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
                f"class_weight maps class ids 0, 1, 2... to finite numbers, e.g. {{0: 1.0, 1: 5.0}}; "
                f"the entry {key!r}: {weight!r} is not one"
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
