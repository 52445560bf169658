"""Classification metrics: accuracy, precision / recall / F1 from a confusion matrix, AUC.

How predictions are read (binary scores, multi-class rows, logits or
probabilities) is described in ``torchfit.metrics``' docstring; the shared
decoding is ``_decode_classes`` below.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..formatting import count_of
from .base import (
    ArrayLike, Metric, Reducer, _SumOverCount, _as_tensor, _no_data_sync_error, _shape, _shape_error,
)

_AVERAGES = (None, "binary", "macro", "micro", "weighted")


def _cut_point(threshold: float, from_logits: Optional[bool]) -> float:
    """The value a binary score is compared with (``score >= cut``)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
    if from_logits:
        # Comparing logits with the threshold's logit avoids sigmoid, whose
        # float32 result rounds tiny negative logits up to exactly 0.5.
        return math.log(threshold / (1.0 - threshold))
    return float(threshold)


def _decode_classes(
    metric: str, preds: ArrayLike, targets: ArrayLike, cut: float
) -> tuple[Tensor, Tensor, int, bool]:
    """Predicted and true class indices, the number of classes, and whether the
    preds were binary scores."""
    # Per step: skip the conversions (a detach, a move) that the loop's own tensors do not need.
    p = preds if type(preds) is Tensor and not preds.requires_grad else _as_tensor(preds)
    t = targets if type(targets) is Tensor else _as_tensor(targets)
    if t.device != p.device:
        t = t.to(p.device)
    n = p.shape[0] if p.ndim else -1
    if p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1):
        if _shape(t) not in ((n,), (n, 1)):
            raise _shape_error(metric, p, t, "binary preds (N,) or (N, 1) need targets (N,) or (N, 1)")
        t = t.reshape(-1)
        true = t.long() if t.dtype == torch.bool else (t >= 0.5).long()
        return (p.reshape(-1) >= cut).long(), true, 2, True
    if p.ndim == 2:
        c = p.shape[1]
        if t.ndim == 1 and t.shape[0] == n:
            true = t if t.dtype == torch.int64 else t.long()
        elif _shape(t) == (n, 1):
            true = t.reshape(-1).long()
        elif _shape(t) == (n, c):
            true = t.argmax(dim=1)
        else:
            raise _shape_error(
                metric, p, t, f"multi-class preds (N, {c}) need targets (N,) of class indices or (N, {c})"
            )
        return p.argmax(dim=1), true, c, False
    raise _shape_error(metric, p, t, "preds must be (N,), (N, 1) or (N, C)")



class Accuracy(_SumOverCount):
    """Fraction of correct predictions, exact over the epoch.

    Binary preds ``(N,)``/``(N, 1)`` are thresholded (see the module docstring);
    multi-class preds ``(N, C)`` use their argmax.

    >>> m = Accuracy(from_logits=True)
    >>> m.update(torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1, 0, 0]))
    >>> round(m.compute(), 4)
    0.6667
    """

    def __init__(self, threshold: float = 0.5, from_logits: Optional[bool] = None) -> None:
        self.threshold = threshold
        self.from_logits = from_logits
        self._cut = _cut_point(threshold, from_logits)
        self.reset()

    def update(self, preds: Tensor, targets: Tensor) -> None:
        pred, true, _, _ = _decode_classes("accuracy", preds, targets, self._cut)
        self._add(pred.eq(true).sum(), pred.shape[0])


class _ConfusionMetric(Metric):
    """Shared state of precision, recall and F1: a confusion matrix on device."""

    _score = ""  # "precision", "recall" or "f1"

    def __init__(
        self,
        average: Optional[str] = None,
        threshold: float = 0.5,
        from_logits: Optional[bool] = None,
    ) -> None:
        if average not in _AVERAGES:
            raise ValueError(f"{self._score}: average must be one of {_AVERAGES}, got {average!r}")
        self.average = average
        self.threshold = threshold
        self.from_logits = from_logits
        self._cut = _cut_point(threshold, from_logits)
        self.reset()

    def reset(self) -> None:
        # Flat C*C int64 counts, row = true class, column = predicted class.
        self._cm: Optional[Tensor] = None
        self._classes = 0
        self._binary = False
        self._global: Optional[Tensor] = None

    def update(self, preds: Tensor, targets: Tensor) -> None:
        pred, true, c, binary = _decode_classes(self._score, preds, targets, self._cut)
        if self._cm is None:
            if self.average == "binary" and c > 2:
                raise ValueError(f"{self._score}: average='binary' needs binary preds, "
                                 f"got {count_of(c, 'class', 'classes')}")
            self._cm = torch.zeros(c * c, dtype=torch.int64, device=pred.device)
            self._classes, self._binary = c, binary
        elif (c, binary) != (self._classes, self._binary):
            raise ValueError(
                f"{self._score}: preds of shape {_shape(_as_tensor(preds))} do not match the "
                f"{count_of(self._classes, 'class', 'classes')} of earlier batches"
            )
        cm = self._cm
        # index_add_ counts (true, pred) pairs without a sync, unlike bincount on CUDA.
        idx = (true * c + pred).to(cm.device)
        cm.index_add_(0, idx, torch.ones_like(idx))
        self._global = None

    def compute(self) -> float:
        cm = self._global if self._global is not None else self._cm
        if cm is None:
            return float("nan")
        counts = cm.cpu().numpy().reshape(self._classes, self._classes)
        if counts.sum() == 0:
            return float("nan")
        average = self.average or ("binary" if self._binary else "macro")
        return _score_from_confusion(counts, average, self._score)

    def sync(self, reducer: Reducer) -> None:
        if self._cm is None:
            raise _no_data_sync_error(self)
        self._global = reducer.sum(self._cm.clone())


def _score_from_confusion(counts: np.ndarray, average: str, score: str) -> float:
    """scikit-learn's precision/recall/F1 with zero_division=0, from a confusion matrix."""
    tp = np.diag(counts).astype(np.float64)
    predicted = counts.sum(axis=0).astype(np.float64)
    actual = counts.sum(axis=1).astype(np.float64)
    if average == "binary":
        tp, predicted, actual = tp[1:], predicted[1:], actual[1:]
    elif average == "micro":
        tp, predicted, actual = tp.sum(keepdims=True), predicted.sum(keepdims=True), actual.sum(keepdims=True)
    else:
        # scikit-learn averages over the labels present in y_true or y_pred; a
        # column no sample ever touched would otherwise drag the mean to 0.
        present = (predicted + actual) > 0
        tp, predicted, actual = tp[present], predicted[present], actual[present]
    if score == "precision":
        num, den = tp, predicted
    elif score == "recall":
        num, den = tp, actual
    else:
        num, den = 2.0 * tp, predicted + actual
    per_class = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    if average == "weighted":
        return float(np.average(per_class, weights=actual)) if actual.sum() > 0 else 0.0
    return float(per_class.mean())


class Precision(_ConfusionMetric):
    """Precision, equal to scikit-learn's ``precision_score(..., zero_division=0)``.

    ``average=None`` means ``"binary"`` for binary preds and ``"macro"`` for
    multi-class preds; ``"micro"`` and ``"weighted"`` are also accepted.

    >>> m = Precision()
    >>> m.update(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 0, 0]))
    >>> m.compute()
    0.5
    """

    _score = "precision"


class Recall(_ConfusionMetric):
    """Recall, equal to scikit-learn's ``recall_score(..., zero_division=0)``.

    >>> m = Recall(average="macro")   # classes 0, 1, 2 occur: recalls 1, 0, 0
    >>> m.update(torch.tensor([[2.0, 0.1, 0.0], [0.0, 1.0, 3.0]]), torch.tensor([0, 1]))
    >>> round(m.compute(), 4)
    0.3333
    """

    _score = "recall"


class F1(_ConfusionMetric):
    """F1 score, equal to scikit-learn's ``f1_score(..., zero_division=0)``.

    >>> m = F1(from_logits=True)
    >>> m.update(torch.tensor([1.5, -0.3, 0.2, -2.0]), torch.tensor([1, 1, 0, 0]))
    >>> m.compute()
    0.5
    """

    _score = "f1"


class AUC(Metric):
    """Area under the ROC curve over the epoch, via scikit-learn's ``roc_auc_score``.

    Keeps the epoch's scores and targets on the device and hands them to
    scikit-learn in ``compute``. Multi-class scores that are not probability
    rows are softmaxed; the AUC is one-vs-rest, macro-averaged. Returns
    ``nan`` while a class is still missing from the targets.

    >>> m = AUC()
    >>> m.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    >>> m.compute()
    0.75
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._scores: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._columns = 0
        self._global: Optional[tuple[Tensor, Tensor]] = None

    def update(self, preds: Tensor, targets: Tensor) -> None:
        p = _as_tensor(preds)
        t = _as_tensor(targets).to(p.device)
        n = p.shape[0] if p.ndim else -1
        if p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1):
            if _shape(t) not in ((n,), (n, 1)):
                raise _shape_error("auc", p, t, "binary preds (N,) or (N, 1) need targets (N,) or (N, 1)")
            scores, true, columns = p.reshape(-1), t.reshape(-1), 1
        elif p.ndim == 2:
            columns = p.shape[1]
            if _shape(t) in ((n,), (n, 1)):
                true = t.reshape(-1)
            elif _shape(t) == (n, columns):
                true = t.argmax(dim=1)
            else:
                raise _shape_error(
                    "auc", p, t, f"multi-class preds (N, {columns}) need targets (N,) or (N, {columns})"
                )
            scores = p
        else:
            raise _shape_error("auc", p, t, "preds must be (N,), (N, 1) or (N, C)")
        if self._columns and columns != self._columns:
            raise ValueError(f"auc: preds of shape {_shape(p)} do not match earlier batches' {self._columns} columns")
        self._columns = columns
        # Clone: a caller may reuse its buffers, and we hold these until compute.
        self._scores.append(scores.clone())
        self._targets.append(true.clone())
        self._global = None

    def _local(self) -> tuple[Tensor, Tensor]:
        if len(self._scores) > 1:
            # Keep the concatenation: later computes only join what came since.
            self._scores = [torch.cat(self._scores)]
            self._targets = [torch.cat(self._targets)]
        return self._scores[0], self._targets[0]

    def compute(self) -> float:
        if self._global is None and not self._scores:
            return float("nan")
        scores_t, targets_t = self._global if self._global is not None else self._local()
        # float64 after leaving the device: MPS cannot hold it.
        scores = scores_t.cpu().double().numpy()
        targets = targets_t.cpu().double().numpy()
        if not np.isfinite(scores).all():
            # A ranking of NaN/inf scores is undefined: report nan and let the
            # loop's non-finite-loss stop explain what happened.
            return float("nan")
        # Imported here: scikit-learn takes a while to import and only AUC needs it.
        from sklearn.metrics import roc_auc_score

        if scores.ndim == 1:
            y = (targets >= 0.5).astype(np.int64)
            if np.unique(y).size < 2:
                return float("nan")
            return float(roc_auc_score(y, scores))
        classes = scores.shape[1]
        y = targets.astype(np.int64)
        if np.setdiff1d(np.arange(classes), y).size:
            return float("nan")
        probs = _as_probabilities(scores)
        if classes == 2:
            # One-vs-rest over two classes is the binary AUC of column 1 (and
            # scikit-learn rejects a two-column score for binary targets).
            return float(roc_auc_score(y, probs[:, 1]))
        return float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=np.arange(classes)))

    def sync(self, reducer: Reducer) -> None:
        if not self._scores:
            raise _no_data_sync_error(self)
        scores, targets = self._local()
        self._global = (reducer.gather(scores), reducer.gather(targets))


def _as_probabilities(scores: np.ndarray) -> np.ndarray:
    sums = scores.sum(axis=1)
    # A loose test decides "probabilities" so float16 softmax output qualifies...
    if (scores >= 0).all() and np.allclose(sums, 1.0, rtol=0.0, atol=1e-3):
        # ...but scikit-learn checks the row sums strictly, so renormalise if needed.
        return scores if np.allclose(sums, 1.0) else scores / sums[:, None]
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


