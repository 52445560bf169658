"""Metrics: one protocol, exact epoch figures, no host sync per step.

This module owns how predictions become numbers: the ``Metric`` protocol
(``reset`` / ``update`` / ``compute``, plus ``sync`` for multi-process runs),
the running ``Mean`` the loop tracks the loss with, the named metrics users ask
for by string, the wrapping of plain functions and of torchmetrics-style
objects, and turning the user's ``metrics=`` argument into an ordered
``{name: Metric}`` dict. It leaves to others *when* metrics are updated and
read (the loop), *where* tensors live (the device helpers) and *how* processes
talk (the distributed module hands ``sync`` a reducer).

How the loop drives a metric::

    metrics = resolve_metrics(["accuracy", "auc"], from_logits=True)
    for m in metrics.values():
        m.reset()
    for x, y in loader:
        preds = net(x)
        for m in metrics.values():
            m.update(preds.detach(), y)      # on the device, never a host sync
    for m in metrics.values():
        m.sync(reducer)                      # only under torch.distributed
    logs = {name: m.compute() for name, m in metrics.items()}   # floats

``update`` only queues device work: it never calls ``.item()``, never branches
on tensor values and never uses ops that sync (``bincount``, ``unique``,
``nonzero``, boolean masks). ``compute`` may sync; the loop calls it only where
it logs. State lives on the device of the first update; sums accumulate in
float64 (float32 on MPS, which has no float64) and counts as int64 tensors or
Python ints. A metric that has seen no data computes ``nan``.

Classification
--------------
* ``preds`` of shape ``(N,)`` or ``(N, 1)`` are **binary** scores. Targets are
  ``(N,)`` or ``(N, 1)`` of 0/1 (int, float or bool; a target counts as
  positive when it is >= 0.5). A prediction is positive when its probability is
  >= ``threshold`` (0.5), or, with ``from_logits=True``, when its logit is >=
  ``log(threshold / (1 - threshold))`` (0 for the default threshold).
  ``from_logits=None`` means probabilities.
* ``preds`` of shape ``(N, C)`` with ``C >= 2`` are **multi-class** scores: the
  predicted class is the argmax over dim 1, the same for logits and
  probabilities. Targets are class indices ``(N,)`` or one-hot / probability
  rows ``(N, C)`` (their argmax is taken).
* ``Accuracy`` counts correct predictions: exact over the epoch.
* ``F1``, ``Precision`` and ``Recall`` accumulate a confusion matrix (2x2 for
  binary, CxC for multi-class) and equal scikit-learn's ``f1_score`` /
  ``precision_score`` / ``recall_score`` on the epoch's predictions with
  ``zero_division=0`` (a 0/0 score is 0.0, without a warning). Binary preds
  default to ``average="binary"`` (positive class 1), multi-class preds to
  ``average="macro"``; ``"micro"`` and ``"weighted"`` are accepted too. As in
  scikit-learn, macro and weighted averages run over the classes that occur in
  the targets or the predictions, not over all ``C`` columns.
* ``AUC`` keeps the epoch's scores and computes scikit-learn's
  ``roc_auc_score``. Binary: the single column is the score (probabilities and
  logits give the same AUC). Multi-class: rows that are not already
  non-negative and summing to 1 are treated as logits and softmaxed, then
  one-vs-rest AUC is macro-averaged. While the targets seen so far miss a class
  (only one class for binary, any of the ``C`` classes for multi-class) the
  AUC is undefined and ``compute()`` returns ``nan`` instead of raising, so
  early step logs do not crash.

Regression
----------
``MSE``, ``MAE`` and ``R2`` equal scikit-learn's ``mean_squared_error``,
``mean_absolute_error`` and ``r2_score`` on the epoch's data; multi-output
``(N, K)`` targets are averaged uniformly over outputs. When ``preds`` and
``targets`` differ only by size-1 dimensions (``(N, 1)`` against ``(N,)``),
``preds`` is reshaped to the targets' shape; nothing is ever broadcast to
``(N, N)``. ``R2`` merges per-batch means and squared deviations (Chan et al.)
rather than keeping a raw sum of ``y**2``, so targets with a large offset keep
their precision.

Multiple processes
------------------
Under ``torch.distributed`` the loop calls ``metric.sync(reducer)`` before
``compute()``. Afterwards ``compute()`` returns the value over all processes.
``sync`` leaves the local state alone: calling it twice gives the same result,
and an ``update`` after it drops the synced view, so ``compute()`` is local
again until the next ``sync``.
"""

from __future__ import annotations

import math
import operator
import re
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "KNOWN_METRICS",
    "AUC",
    "Accuracy",
    "BatchMetric",
    "F1",
    "MAE",
    "MSE",
    "Mean",
    "Metric",
    "Precision",
    "R2",
    "Recall",
    "Reducer",
    "UnknownMetricError",
    "get_metric",
    "resolve_metrics",
]

KNOWN_METRICS: tuple[str, ...] = (
    "accuracy",
    "acc",
    "auc",
    "f1",
    "precision",
    "recall",
    "mse",
    "mae",
    "r2",
)

# History and step logs already use these keys; a metric named like them would
# overwrite them or be taken for a validation column.
_RESERVED_NAMES = ("loss", "epoch", "step")

_AVERAGES = (None, "binary", "macro", "micro", "weighted")

ArrayLike = Union[Tensor, np.ndarray, Sequence[Any]]


class UnknownMetricError(ValueError):
    """A metric was asked for by a name torchfit does not know.

    >>> get_metric("acuracy")
    Traceback (most recent call last):
    ...
    torchfit.metrics.UnknownMetricError: unknown metric 'acuracy'; known names: accuracy, acc, ...
    """


class Reducer(Protocol):
    """What ``Metric.sync`` needs from the distributed layer.

    Tensors arrive on the metric's device (CPU for a metric that holds only
    Python numbers); a reducer moves them where its backend needs them and may
    return the result on any device.
    """

    def sum(self, tensor: Tensor) -> Tensor:
        """All-reduce ``tensor`` by sum and return the result."""
        ...

    def gather(self, tensor: Tensor) -> Tensor:
        """All-gather tensors whose first dimension may differ between
        processes; return them concatenated in rank order."""
        ...


# ----------------------------------------------------------------- helpers


def _sum_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; float32 is the best sum it can hold.
    return torch.float32 if device.type == "mps" else torch.float64


def _as_tensor(x: ArrayLike) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x))


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


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
    p = _as_tensor(preds)
    t = _as_tensor(targets).to(p.device)
    n = p.shape[0] if p.ndim else -1
    if p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1):
        if _shape(t) not in ((n,), (n, 1)):
            raise _shape_error(metric, p, t, "binary preds (N,) or (N, 1) need targets (N,) or (N, 1)")
        t = t.reshape(-1)
        true = t.long() if t.dtype == torch.bool else (t >= 0.5).long()
        return (p.reshape(-1) >= cut).long(), true, 2, True
    if p.ndim == 2:
        c = p.shape[1]
        if _shape(t) in ((n,), (n, 1)):
            true = t.reshape(-1).long()
        elif _shape(t) == (n, c):
            true = t.argmax(dim=1)
        else:
            raise _shape_error(
                metric, p, t, f"multi-class preds (N, {c}) need targets (N,) of class indices or (N, {c})"
            )
        return p.argmax(dim=1), true, c, False
    raise _shape_error(metric, p, t, "preds must be (N,), (N, 1) or (N, C)")


def _shape_error(metric: str, preds: Tensor, targets: Tensor, hint: str) -> ValueError:
    return ValueError(
        f"{metric}: preds of shape {_shape(preds)} and targets of shape {_shape(targets)} "
        f"do not fit together; {hint}"
    )


def _align(metric: str, preds: ArrayLike, targets: ArrayLike) -> tuple[Tensor, Tensor]:
    """Give regression preds the targets' shape without ever broadcasting."""
    p = _as_tensor(preds)
    t = _as_tensor(targets).to(p.device)
    if p.shape != t.shape:
        # Only size-1 dimensions may differ: (N, 1) vs (N,) is the usual case,
        # while (N, 2) vs (2, N) has the same numel but is a real mistake.
        if [d for d in p.shape if d != 1] != [d for d in t.shape if d != 1]:
            raise _shape_error(metric, p, t, "they must match up to size-1 dimensions")
        p = p.reshape(t.shape)
    return p, t


def _no_data_sync_error(metric: Metric) -> RuntimeError:
    # The reduced tensors' shapes come from the data (classes, outputs); a
    # process without any would send a mismatched shape and hang the others.
    return RuntimeError(
        f"{type(metric).__name__}.sync() was called before any update; every process "
        "must see at least one batch (DistributedSampler guarantees this)"
    )


def _snake_case(name: str) -> str:
    # BinaryAccuracy -> binary_accuracy, MulticlassF1Score -> multiclass_f1_score,
    # AUROC -> auroc, BinaryAUROC -> binary_auroc.
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


# ------------------------------------------------------------------ protocol


class Metric:
    """Base of every torchfit metric: ``reset`` / ``update`` / ``compute`` / ``sync``.

    Subclasses keep their state on the device of the first update and must not
    sync the host in ``update``. ``compute`` returns a Python float.

    >>> class Largest(Metric):
    ...     def reset(self):
    ...         self.top = None
    ...     def update(self, preds, targets):
    ...         m = preds.max()
    ...         self.top = m if self.top is None else torch.maximum(self.top, m)
    ...     def compute(self):
    ...         return float("nan") if self.top is None else self.top.item()
    >>> m = Largest(); m.reset(); m.update(torch.tensor([1.0, 3.0]), None); m.compute()
    3.0
    """

    def reset(self) -> None:
        """Forget everything seen so far (the loop calls this at each epoch start)."""
        raise NotImplementedError

    def update(self, preds: Tensor, targets: Tensor) -> None:
        """Accumulate one batch; must not sync the host."""
        raise NotImplementedError

    def compute(self) -> float:
        """The value over everything seen since ``reset``; may sync."""
        raise NotImplementedError

    def sync(self, reducer: Reducer) -> None:
        """Make ``compute`` return the value over all processes."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement sync(reducer), so its value cannot be "
            "combined across processes; implement it to use this metric under torch.distributed"
        )


class Mean(Metric):
    """Sample-weighted running mean of scalars, e.g. the batch-mean loss.

    ``update(value, weight)`` adds ``value * weight``; ``compute()`` returns
    ``sum(value * weight) / sum(weight)``. Tensor values accumulate on their
    device without a sync; Python and numpy numbers in a Python float.

    >>> m = Mean()
    >>> m.update(torch.tensor(2.0), weight=32)
    >>> m.update(4.0, weight=8)
    >>> m.compute()
    2.4
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._tensor_total: Optional[Tensor] = None
        self._float_total = 0.0
        # The weight is the batch size, known on the host: a Python int costs
        # no device work and needs no sync to read back.
        self._count = 0
        self._global: Optional[tuple[float, int]] = None

    def update(self, value: Union[Tensor, float, np.number], weight: int = 1) -> None:  # type: ignore[override]
        total = self._tensor_total
        if (total is not None and type(weight) is int and weight >= 0 and type(value) is Tensor
                and value.dim() == 0 and not value.requires_grad and value.device == total.device):
            # The loop's case, once per step (a detached 0-d loss): one op. value * weight
            # is exact in float64 for float32/bf16 values, so this equals `total += v64 * weight`.
            total.add_(value, alpha=weight)
            self._count += weight
            self._global = None
            return
        if type(weight) is not int:
            if isinstance(weight, Tensor):
                raise TypeError("Mean.update: pass weight as a Python int; a tensor weight would need a host sync")
            weight = operator.index(weight)
        if weight < 0:
            raise ValueError(f"Mean.update: weight must be >= 0, got {weight}")
        self._global = None
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"Mean.update expects a scalar, got a tensor of shape {_shape(value)}")
            v = value.detach().reshape(())
            if total is None:
                self._tensor_total = v.to(_sum_dtype(v.device)) * weight
            else:
                total += v.to(total.device, total.dtype) * weight
        else:
            self._float_total += float(value) * weight
        self._count += weight

    def _local(self) -> tuple[float, int]:
        total = self._float_total
        if self._tensor_total is not None:
            total += self._tensor_total.item()
        return total, self._count

    def compute(self) -> float:
        total, count = self._global if self._global is not None else self._local()
        return total / count if count else float("nan")

    def sync(self, reducer: Reducer) -> None:
        device = self._tensor_total.device if self._tensor_total is not None else torch.device("cpu")
        packed = torch.tensor([self._float_total, float(self._count)], dtype=_sum_dtype(device), device=device)
        if self._tensor_total is not None:
            packed[0] += self._tensor_total
        total, count = reducer.sum(packed).tolist()
        self._global = (total, int(round(count)))


class BatchMetric(Metric):
    """A plain function ``fn(preds, targets) -> batch mean``, averaged over the
    epoch with batch-size weights: ``sum(fn_i * n_i) / sum(n_i)``, where ``n_i``
    is ``len(targets)``. Averaging the batch means instead would over-weight a
    short last batch.

    ``fn`` may return a tensor (accumulated on its device, no sync), a Python
    float or a numpy scalar (accumulated in a Python float).

    >>> from sklearn.metrics import accuracy_score
    >>> def acc(p, y):
    ...     return accuracy_score(y.numpy(), (p > 0.5).long().numpy())
    >>> m = BatchMetric(acc)
    >>> m.update(torch.tensor([0.9, 0.2, 0.7]), torch.tensor([1, 0, 0]))
    >>> m.update(torch.tensor([0.6]), torch.tensor([1]))
    >>> m.compute()
    0.75
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Any], name: Optional[str] = None) -> None:
        if not callable(fn):
            raise TypeError(f"BatchMetric needs a callable fn(preds, targets), got {fn!r}")
        self.fn = fn
        self.name = name if name is not None else getattr(fn, "__name__", None)
        self._mean = Mean()

    def reset(self) -> None:
        self._mean.reset()

    def update(self, preds: Tensor, targets: Tensor) -> None:
        n = len(targets)
        value = self.fn(preds, targets)
        if isinstance(value, Tensor) and value.numel() != 1:
            raise ValueError(
                f"{self.name}: the function must return one number per batch (its mean), "
                f"got a tensor of shape {_shape(value)}"
            )
        self._mean.update(value, n)

    def compute(self) -> float:
        return self._mean.compute()

    def sync(self, reducer: Reducer) -> None:
        self._mean.sync(reducer)


# ------------------------------------------------------------ classification


class _SumOverCount(Metric):
    """A sum kept on the device over a sample count kept on the host: ``compute`` is sum / count.

    Accuracy (an integer count of hits) and MSE/MAE (float error sums) share this
    state; an integer sum is reduced as int64 so counts stay exact across processes.
    """

    def reset(self) -> None:
        self._sum: Optional[Tensor] = None
        self._count = 0
        self._global: Optional[tuple[float, int]] = None

    def _add(self, batch_sum: Tensor, count: int) -> None:
        self._sum = batch_sum if self._sum is None else self._sum + batch_sum.to(self._sum.device)
        self._count += count
        self._global = None

    def compute(self) -> float:
        if self._global is not None:
            total, count = self._global
        else:
            total = 0 if self._sum is None else self._sum.item()
            count = self._count
        return total / count if count else float("nan")

    def sync(self, reducer: Reducer) -> None:
        device = self._sum.device if self._sum is not None else torch.device("cpu")
        exact = self._sum is None or not self._sum.is_floating_point()
        dtype = torch.int64 if exact else _sum_dtype(device)
        packed = torch.tensor([0, self._count], dtype=dtype, device=device)
        if self._sum is not None:
            packed[0] += self._sum
        total, count = reducer.sum(packed).tolist()
        self._global = (total, int(round(count)))


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
                raise ValueError(f"{self._score}: average='binary' needs binary preds, got {c} classes")
            self._cm = torch.zeros(c * c, dtype=torch.int64, device=pred.device)
            self._classes, self._binary = c, binary
        elif (c, binary) != (self._classes, self._binary):
            raise ValueError(
                f"{self._score}: preds of shape {_shape(_as_tensor(preds))} do not match the "
                f"{self._classes} classes of earlier batches"
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


# ---------------------------------------------------------------- regression


class _MeanError(_SumOverCount):
    _label = ""

    def __init__(self) -> None:
        self.reset()

    def _error(self, diff: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, preds: Tensor, targets: Tensor) -> None:
        p, t = _align(self._label, preds, targets)
        dtype = _sum_dtype(p.device)
        # Every output has N samples, so the mean over all elements equals
        # scikit-learn's uniform average of per-output means.
        self._add(self._error(p.to(dtype) - t.to(dtype)).sum(), t.numel())


class MSE(_MeanError):
    """Mean squared error, equal to scikit-learn's ``mean_squared_error``.

    >>> m = MSE()
    >>> m.update(torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 4.0]))
    >>> m.compute()
    2.0
    """

    _label = "mse"

    def _error(self, diff: Tensor) -> Tensor:
        return diff.square()


class MAE(_MeanError):
    """Mean absolute error, equal to scikit-learn's ``mean_absolute_error``.

    >>> m = MAE()
    >>> m.update(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 4.0]))
    >>> m.compute()
    1.25
    """

    _label = "mae"

    def _error(self, diff: Tensor) -> Tensor:
        return diff.abs()


class R2(Metric):
    """Coefficient of determination ``1 - SS_res / SS_tot``, exact over the epoch.

    Equal to scikit-learn's ``r2_score`` on the concatenated data (uniform
    average over the columns of multi-output targets; a constant target scores
    1.0 if predicted exactly, else 0.0; fewer than two samples give ``nan``).

    >>> m = R2()
    >>> m.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))
    >>> m.update(torch.tensor([2.0]), torch.tensor([3.0]))
    >>> m.compute()
    0.5
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # Per output: sample count, mean, sum of squared deviations from the
        # mean, and sum of squared residuals.
        self._n = 0
        self._mean: Optional[Tensor] = None
        self._m2: Optional[Tensor] = None
        self._res: Optional[Tensor] = None
        self._global: Optional[tuple[int, Tensor, Tensor, Tensor]] = None

    def update(self, preds: Tensor, targets: Tensor) -> None:
        p, t = _align("r2", preds, targets)
        if t.ndim == 0:
            raise ValueError("r2: targets need a batch dimension, got a 0-d tensor")
        n = t.shape[0]
        if n == 0:
            if self._mean is None:
                # An empty batch still fixes the state's shape: under torchrun a rank whose shard is
                # only padding must sync zeros of the same shape as the others' states.
                k = math.prod(t.shape[1:])
                self._mean, self._m2, self._res = (torch.zeros(k, dtype=_sum_dtype(t.device), device=t.device)
                                                   for _ in range(3))
            return
        dtype = _sum_dtype(t.device)
        y = t.reshape(n, -1).to(dtype)
        residual = (y - p.reshape(n, -1).to(dtype)).square().sum(dim=0)
        mean = y.mean(dim=0)
        m2 = (y - mean).square().sum(dim=0)
        if self._mean is None or self._m2 is None or self._res is None:
            self._mean, self._m2, self._res = mean, m2, residual
        else:
            if mean.shape != self._mean.shape:
                raise ValueError(
                    f"r2: targets of shape {_shape(t)} do not match earlier batches' {self._mean.numel()} outputs"
                )
            # Chan et al.'s merge of (count, mean, M2): unlike sum(y**2) -
            # sum(y)**2 / n it does not cancel catastrophically when |mean| >> std.
            total = self._n + n
            delta = mean - self._mean
            self._mean = self._mean + delta * (n / total)
            self._m2 = self._m2 + m2 + delta.square() * (self._n * n / total)
            self._res = self._res + residual
        self._n += n
        self._global = None

    def compute(self) -> float:
        if self._global is not None:
            n, _, m2_t, res_t = self._global
        elif self._m2 is not None and self._res is not None:
            n, m2_t, res_t = self._n, self._m2, self._res
        else:
            return float("nan")
        if n < 2:
            return float("nan")
        m2 = m2_t.cpu().double().numpy()
        res = res_t.cpu().double().numpy()
        # scikit-learn's force_finite rule for constant targets.
        scores = np.where(res == 0, 1.0, 0.0)
        varying = m2 != 0
        scores[varying] = 1.0 - res[varying] / m2[varying]
        return float(scores.mean())

    def sync(self, reducer: Reducer) -> None:
        if self._mean is None or self._m2 is None or self._res is None:
            raise _no_data_sync_error(self)
        k = self._mean.numel()
        count = torch.full((1,), float(self._n), dtype=self._mean.dtype, device=self._mean.device)
        first = reducer.sum(torch.cat([count, self._mean * self._n, self._res]))
        n = first[0]
        mean = first[1 : 1 + k] / n
        residual = first[1 + k :]
        # The global M2 adds each process's spread around the *global* mean,
        # which is only known after the first reduction.
        local_mean = self._mean.to(mean.device)
        m2 = reducer.sum((self._m2.to(mean.device) + self._n * (local_mean - mean).square()))
        self._global = (int(round(n.item())), mean, m2, residual)


# ------------------------------------------------------------------- adapter


class _ObjectMetric(Metric):
    """Thin adapter for objects with ``update``/``compute``/``reset`` (torchmetrics)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._placed = False

    def reset(self) -> None:
        self.metric.reset()

    def update(self, preds: Tensor, targets: Tensor) -> None:
        if not self._placed:
            # torchmetrics keeps its state in an nn.Module; put it where the
            # data is, as torchfit's own metrics do.
            if isinstance(self.metric, torch.nn.Module) and isinstance(preds, Tensor):
                self.metric.to(preds.device)
            self._placed = True
        self.metric.update(preds, targets)

    def compute(self) -> float:
        value = self.metric.compute()
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise TypeError(
                    f"{type(self.metric).__name__}.compute() returned a tensor of shape "
                    f"{_shape(value)}; torchfit logs one number per metric"
                )
            return float(value.item())
        return float(value)

    def sync(self, reducer: Reducer) -> None:
        if type(self.metric).__module__.split(".")[0] == "torchmetrics":
            # torchmetrics all-gathers its own state inside compute() whenever
            # torch.distributed is initialised; reducing here would double it.
            return
        own_sync = getattr(self.metric, "sync", None)
        if callable(own_sync):
            own_sync(reducer)
            return
        raise NotImplementedError(
            f"{type(self.metric).__name__} has no sync(reducer) method, so its value cannot be "
            "combined across processes; add one or subclass torchfit.metrics.Metric"
        )


# ---------------------------------------------------------------- resolution


def _named_metric(spec: str, from_logits: Optional[bool]) -> Metric:
    key = spec.lower()
    if key in ("accuracy", "acc"):
        return Accuracy(from_logits=from_logits)
    if key == "auc":
        return AUC()  # rank-based: logits and probabilities give the same AUC
    if key == "f1":
        return F1(from_logits=from_logits)
    if key == "precision":
        return Precision(from_logits=from_logits)
    if key == "recall":
        return Recall(from_logits=from_logits)
    if key == "mse":
        return MSE()
    if key == "mae":
        return MAE()
    if key == "r2":
        return R2()
    raise UnknownMetricError(f"unknown metric {spec!r}; known names: {', '.join(KNOWN_METRICS)}")


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"metric names must be non-empty strings, got {name!r}")
    if name in _RESERVED_NAMES or name.startswith("val_"):
        raise ValueError(
            f"metric name {name!r} is reserved: {', '.join(map(repr, _RESERVED_NAMES))} and names "
            "starting with 'val_' are used by torchfit's logs"
        )
    return name


def _underlying(metric: Metric) -> Any:
    return metric.metric if isinstance(metric, _ObjectMetric) else metric


def get_metric(
    spec: Any, *, name: Optional[str] = None, from_logits: Optional[bool] = None
) -> tuple[str, Metric]:
    """Resolve one user metric spec into ``(log name, Metric)``.

    ``spec`` is a name from ``KNOWN_METRICS`` (matched case-insensitively,
    logged under the string as given), a ``Metric``, an object with ``update``/``compute``/``reset`` such
    as a torchmetrics metric (logged as the snake_case of its class name), or a
    callable ``f(preds, targets) -> batch mean`` (logged as its ``__name__``).
    ``name`` overrides the log name; lambdas need one. ``from_logits`` reaches
    the named metrics that threshold scores.

    >>> name, metric = get_metric("acc", from_logits=True)
    >>> name, type(metric).__name__, metric.from_logits
    ('acc', 'Accuracy', True)
    >>> get_metric(lambda p, y: (p - y).abs().mean(), name="l1")[0]
    'l1'
    """
    if isinstance(spec, str):
        metric: Metric = _named_metric(spec, from_logits)
        default = spec
    elif isinstance(spec, Metric):
        metric = spec
        default = spec.name if isinstance(spec, BatchMetric) else _snake_case(type(spec).__name__)
    elif isinstance(spec, type):
        raise TypeError(
            f"metric {spec.__name__} is a class; pass an instance, e.g. {spec.__name__}()"
        )
    elif all(callable(getattr(spec, m, None)) for m in ("update", "compute", "reset")):
        metric = _ObjectMetric(spec)
        default = _snake_case(type(spec).__name__)
    elif callable(spec):
        metric = BatchMetric(spec)
        default = metric.name
    else:
        raise TypeError(
            f"cannot use {spec!r} (of type {type(spec).__name__}) as a metric; pass a name from "
            f"{KNOWN_METRICS}, a torchfit Metric, an object with update/compute/reset methods "
            "(e.g. a torchmetrics metric) or a callable fn(preds, targets)"
        )
    key = name if name is not None else default
    if key is None or key == "<lambda>":
        raise ValueError(
            f"metric {spec!r} has no usable name; give it one with a dict, e.g. metrics={{'my_metric': fn}}"
        )
    if isinstance(metric, BatchMetric) and metric.name in (None, "<lambda>"):
        metric.name = key
    return _check_name(key), metric


def resolve_metrics(
    metrics: Union[None, Mapping[str, Any], Sequence[Any]], *, from_logits: Optional[bool] = None
) -> dict[str, Metric]:
    """Turn the user's ``metrics`` argument into an ordered ``{name: Metric}``.

    Accepts ``None`` (no metrics), a dict ``{name: spec}`` or a list/tuple of
    specs (see ``get_metric``). Names must be unique and must not clash with
    the loop's own keys (``loss``, ``val_*``, ...).

    >>> list(resolve_metrics(["acc", "auc"]))
    ['acc', 'auc']
    >>> list(resolve_metrics({"mae": "mae", "max_err": lambda p, y: (p - y).abs().max()}))
    ['mae', 'max_err']
    """
    if metrics is None:
        return {}
    if isinstance(metrics, str):
        raise TypeError(f"metrics must be a list or a dict; wrap the name in a list: metrics=[{metrics!r}]")
    if isinstance(metrics, Mapping):
        pairs = [get_metric(spec, name=key, from_logits=from_logits) for key, spec in metrics.items()]
    elif isinstance(metrics, (list, tuple)):
        pairs = [get_metric(spec, from_logits=from_logits) for spec in metrics]
    else:
        raise TypeError(
            f"metrics must be None, a list/tuple of metric specs or a dict {{name: spec}}, "
            f"got {type(metrics).__name__}"
        )
    resolved: dict[str, Metric] = {}
    for key, metric in pairs:
        if key in resolved:
            raise ValueError(f"two metrics are named {key!r}; give them distinct names with a dict")
        for other_key, other in resolved.items():
            if _underlying(other) is _underlying(metric):
                raise ValueError(
                    f"metrics {other_key!r} and {key!r} are the same object and would share their state; "
                    "pass separate instances"
                )
        resolved[key] = metric
    return resolved
