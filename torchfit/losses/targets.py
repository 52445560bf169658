"""Targets as Keras reads them: ``adapt_targets`` (shapes and dtypes, every step, no sync) and
``check_targets`` (the first batch's values, once, before any weight changes)."""
from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..formatting import count_of
from .keras import CrossEntropyFromProbabilities, TargetError

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
    torchfit.losses.keras.TargetError: CrossEntropyLoss() needs class indices 0..2 as targets (the net outputs 3 classes), but the first batch's labels include 0.5 (not whole numbers). ...
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
    values = targets.detach()
    if values.numel() and not (values.is_floating_point() or values.is_complex() or values.dtype == torch.bool):
        if _within(values, 0, classes - 1):  # one read: most first batches are fine
            return
    values = values.double()
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
    if out_of_range.numel() and classes == 1:
        raise TargetError(
            f"{name} needs one output per class, but the net has 1 output, so every label but 0 is out of range "
            f"(the first batch's labels include {_examples(out_of_range)}). Fix: for a binary problem keep the "
            "one output and use nn.BCEWithLogitsLoss() ('binary_crossentropy', from_logits=True) with 0/1 labels; "
            "for C classes give the last layer C outputs"
        )
    if out_of_range.numel():
        problems.append((
            f"outside 0..{classes - 1}", out_of_range,
            f"the net outputs {count_of(classes, 'class', 'classes')}, so labels must be 0..{classes - 1}: map the "
            "labels to "
            "0..C-1 (sklearn.preprocessing.LabelEncoder, or y - y.min() for 1-based labels) or give the "
            "last layer as many outputs as there are classes",
        ))
    if problems:
        what, bad, fix = problems[0]
        raise TargetError(
            f"{name} needs class indices 0..{classes - 1} as targets (the net outputs "
            f"{count_of(classes, 'class', 'classes')}), but "
            f"the first batch's labels include {_examples(bad)} ({what}). Fix: {fix}"
        )


def _within(values: torch.Tensor, low: float, high: float) -> Optional[bool]:
    """Whether every value lies in ``[low, high]`` (NaN does not), read back once; None when the
    device cannot take ``aminmax`` of this dtype (the caller's full check decides then)."""
    try:
        least, most = torch.stack(torch.aminmax(values)).tolist()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return least >= low and most <= high


def _looks_like_probabilities(preds: torch.Tensor) -> bool:
    p = preds.detach().double()
    if p.shape[1] < 2:
        return False
    if p.numel() and _within(p, 0, 1) is False:  # one read settles the usual case: logits outside [0, 1]
        return False
    return bool(((p >= 0) & (p <= 1)).all() and ((p.sum(dim=1) - 1).abs() < 1e-3).all())


def _check_class_outputs(loss_fn: Any, name: str, preds: torch.Tensor) -> None:
    if preds.numel() == 0:  # an empty batch says nothing about what the net outputs
        return
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


