"""Metrics: one protocol, exact epoch figures, no host sync per step.

This package owns how predictions become numbers: the ``Metric`` protocol
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
from .base import BatchMetric, Mean, Metric, MetricList, Reducer
from .classification import AUC, F1, Accuracy, Precision, Recall
from .regression import MAE, MSE, R2
from .registry import KNOWN_METRICS, UnknownMetricError, get_metric, resolve_metrics
from .tracker import Tracker, copy_metrics

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
    "MetricList",
    "Precision",
    "R2",
    "Recall",
    "Reducer",
    "Tracker",
    "copy_metrics",
    "UnknownMetricError",
    "get_metric",
    "resolve_metrics",
]
