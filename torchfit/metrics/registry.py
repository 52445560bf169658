"""Metric names: turning the user's ``metrics=`` argument into ``{name: Metric}``.

Owns the names users may ask for (``KNOWN_METRICS``), the log name each metric
gets, and the checks on names (unique, not clashing with ``loss``/``val_*``).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence, Union


from .base import BatchMetric, Metric, _ObjectMetric
from .classification import AUC, F1, Accuracy, Precision, Recall
from .regression import MAE, MSE, R2

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
    # Keras' names for the same metrics
    "sparse_categorical_accuracy",
    "categorical_accuracy",
    "binary_accuracy",
    "mean_squared_error",
    "mean_absolute_error",
)

# History and step logs already use these keys; a metric named like them would
# overwrite them or be taken for a validation column.
_RESERVED_NAMES = ("loss", "epoch", "step")


class UnknownMetricError(ValueError):
    """A metric was asked for by a name torchfit does not know.

    >>> get_metric("acuracy")
    Traceback (most recent call last):
    ...
    torchfit.metrics.registry.UnknownMetricError: unknown metric 'acuracy'; known names: accuracy, acc, ...
    """



def _snake_case(name: str) -> str:
    # BinaryAccuracy -> binary_accuracy, MulticlassF1Score -> multiclass_f1_score,
    # AUROC -> auroc, BinaryAUROC -> binary_auroc.
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()



# ---------------------------------------------------------------- resolution


def _named_metric(spec: str, from_logits: Optional[bool]) -> Metric:
    key = spec.lower()
    if key in ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy"):
        return Accuracy(from_logits=from_logits)
    if key == "auc":
        return AUC()  # rank-based: logits and probabilities give the same AUC
    if key == "f1":
        return F1(from_logits=from_logits)
    if key == "precision":
        return Precision(from_logits=from_logits)
    if key == "recall":
        return Recall(from_logits=from_logits)
    if key in ("mse", "mean_squared_error"):
        return MSE()
    if key in ("mae", "mean_absolute_error"):
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
        if isinstance(metric, Metric):
            metric.name = key  # Keras code reads metric.name
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
