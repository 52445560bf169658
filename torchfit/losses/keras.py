"""Keras' losses by name: torch loss modules for each, with Keras' semantics (``from_logits``,
the epsilon clip) where torch has no equal; ``get`` turns a name into one (the table is in
``torchfit.losses``' docstring)."""
from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn


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


