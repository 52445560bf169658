"""Several outputs, several losses: a net that returns a dict (or tuple) of outputs, one loss each.

Owns ``compile(loss={"a": ..., "b": ...}, loss_weights={...}, metrics={"a": [...], "b": [...]})``:
``MultiLoss`` (the weighted total and each output's own loss, so that the history has ``loss``
and ``a_loss``, ``b_loss``) and ``HeadMetric`` (a metric fed one output and its targets, logged as
``a_accuracy``). The step and the tracker treat the per-output losses like any extra step log:
sample-weighted over the epoch, exact like every other figure.

>>> loss = MultiLoss({"a": nn.CrossEntropyLoss(), "b": nn.MSELoss()}, {"a": 1.0, "b": 0.5})
>>> preds = {"a": torch.tensor([[2.0, 0.0]]), "b": torch.tensor([[1.0]])}
>>> targets = {"a": torch.tensor([0]), "b": torch.tensor([[3.0]])}
>>> total, parts = loss.parts(preds, targets)
>>> sorted(parts), round(float(total), 4)
(['a_loss', 'b_loss'], 2.1269)
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .losses import adapt_targets, check_targets
from .losses import get as get_loss
from .metrics.base import Metric, Reducer

Key = Union[str, int]


def head_names(keys: Sequence[Key]) -> List[str]:
    """Log names of outputs: dict keys as they are, tuple positions as ``output_0``, ``output_1``..."""
    return [k if isinstance(k, str) else f"output_{k}" for k in keys]


def head(obj: Any, key: Key, what: str) -> Any:
    """``obj[key]`` for a dict or tuple of outputs or targets, or an error naming what is missing."""
    if isinstance(obj, Mapping):
        if key not in obj:
            raise KeyError(f"{what} has no {key!r}; it has {list(obj)}. The losses of compile(loss={{...}}) are "
                           "matched to the net's outputs and to the targets by key")
        return obj[key]
    if isinstance(obj, (list, tuple)) and isinstance(key, int):
        if key >= len(obj):
            raise IndexError(f"{what} has {len(obj)} parts; compile(loss=[...]) has a loss for part {key}")
        return obj[key]
    raise TypeError(f"{what} is a {type(obj).__name__}; with several losses the net must return a dict (or tuple) "
                    "of outputs and the loader must yield targets of the same structure: (x, {'a': ya, 'b': yb})")


def check_rows(name: str, preds: Any, targets: Any) -> None:
    """One output's rows against its targets' rows: a head that returns more or fewer rows than the
    batch has samples is named (a loss would broadcast, or fail without saying which output).

    >>> check_rows("b", torch.zeros(15, 1), torch.zeros(16, 1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: output 'b' has 15 rows but the batch has 16 targets for it ...
    """
    if not (isinstance(preds, torch.Tensor) and isinstance(targets, torch.Tensor) and preds.dim() and targets.dim()):
        return
    if preds.shape[0] != targets.shape[0]:
        raise ValueError(
            f"output {name!r} has {preds.shape[0]} rows but the batch has {targets.shape[0]} targets for it "
            f"(output shape {tuple(preds.shape)}, targets {tuple(targets.shape)}): each output must give one row "
            f"per sample. Check where the net's forward computes {name!r}: a view or reshape with a hard-coded batch "
            "size, or a slice that drops or adds rows (often seen on the last, shorter batch)"
        )


class MultiLoss:
    """The weighted sum of one loss per output: ``sum(weight_k * loss_k(preds[k], targets[k]))``.

    ``losses``: a dict ``{output key: loss}`` (or a list/tuple, matched by position);
    ``weights``: the same keys to numbers (missing ones weigh 1.0), as Keras' ``loss_weights``.
    """

    def __init__(self, losses: Union[Mapping[Key, Callable], Sequence[Callable]],
                 weights: Union[Mapping[Key, float], Sequence[float], None] = None):
        pairs = list(losses.items()) if isinstance(losses, Mapping) else list(enumerate(losses))
        if not pairs:
            raise ValueError("compile(loss=...) got an empty dict/list of losses; give one loss per output")
        for key, fn in pairs:
            if isinstance(fn, type) or not callable(fn):
                what = f"the class {fn.__name__}; pass an instance" if isinstance(fn, type) else type(fn).__name__
                raise TypeError(f"compile(loss=...): the loss for output {key!r} must be callable; got {what}")
        self.losses: Dict[Key, Callable] = dict(pairs)
        self.keys: List[Key] = [k for k, _ in pairs]
        self.names = head_names(self.keys)
        self.weights = self._check_weights(weights)

    def _check_weights(self, weights: Any) -> Dict[Key, float]:
        if weights is None:
            return {k: 1.0 for k in self.keys}
        given = dict(weights.items()) if isinstance(weights, Mapping) else dict(enumerate(weights))
        unknown = [k for k in given if k not in self.losses]
        if unknown:
            raise ValueError(f"loss_weights names {unknown}, which compile(loss=...) has no loss for; "
                             f"the losses are for {self.keys}")
        for key, w in given.items():
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
                raise ValueError(f"loss_weights[{key!r}] must be a finite number >= 0; got {w!r}")
        return {k: float(given.get(k, 1.0)) for k in self.keys}

    def parts(self, preds: Any, targets: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The weighted total and each output's loss (``{"a_loss": ..., ...}``, unweighted, detached)."""
        total = None
        parts: Dict[str, torch.Tensor] = {}
        for key, name in zip(self.keys, self.names):
            fn, p = self.losses[key], head(preds, key, "the net's output")
            t = head(targets, key, "the targets")
            check_rows(name, p, t)
            value = fn(p, adapt_targets(fn, p, t))
            weighted = value * self.weights[key]
            total = weighted if total is None else total + weighted
            parts[f"{name}_loss"] = value.detach()
        return total, parts

    def __call__(self, preds: Any, targets: Any) -> torch.Tensor:
        return self.parts(preds, targets)[0]

    def check_targets(self, preds: Any, targets: Any) -> None:
        """``losses.check_targets`` for each output: labels that cannot mean what its loss reads."""
        for key, name in zip(self.keys, self.names):
            p, t = head(preds, key, "the net's output"), head(targets, key, "the targets")
            check_rows(name, p, t)
            check_targets(self.losses[key], p, t)

    def to(self, device: torch.device) -> "MultiLoss":
        for fn in self.losses.values():
            if isinstance(fn, nn.Module):
                fn.to(device)
        return self

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {type(fn).__name__} x {self.weights[k]:g}" for k, fn in self.losses.items())
        return f"MultiLoss({{{inner}}})"


class HeadMetric(Metric):
    """A metric fed one output of the net and its targets (``metrics={"a": ["accuracy"]}``)."""

    def __init__(self, metric: Metric, key: Key):
        self.metric = metric
        self.key = key

    def reset(self) -> None:
        self.metric.reset()

    def update(self, preds: Any, targets: Any) -> None:
        self.metric.update(head(preds, self.key, "the net's output"), head(targets, self.key, "the targets"))

    def compute(self) -> float:
        return self.metric.compute()

    def sync(self, reducer: Reducer) -> None:
        self.metric.sync(reducer)


def head_metrics(metrics: Mapping[Key, Any], loss: MultiLoss,
                 resolve: Callable[..., Dict[str, Metric]]) -> Dict[str, Metric]:
    """``{"a_accuracy": HeadMetric(...), ...}`` from ``{"a": ["accuracy"], ...}`` (each output's
    metrics resolved with ``resolve``, knowing whether that output's loss takes logits)."""
    unknown = [k for k in metrics if k not in loss.losses]
    if unknown:
        raise ValueError(f"metrics names outputs {unknown} that compile(loss=...) has no loss for; "
                         f"the outputs are {loss.keys}")
    out: Dict[str, Metric] = {}
    for key, name in zip(loss.keys, loss.names):
        specs = metrics.get(key)
        if specs is None:
            continue
        if isinstance(specs, (str, Metric)) or callable(specs):
            specs = [specs]
        fn = loss.losses[key]
        from_logits: Optional[bool] = True if isinstance(fn, nn.BCEWithLogitsLoss) else None
        for metric_name, metric in resolve(specs, from_logits=from_logits).items():
            out[f"{name}_{metric_name}"] = HeadMetric(metric, key)
    return out


def is_per_output(metrics: Any, loss: Any) -> bool:
    """Whether ``metrics`` is keyed by output (``{"a": [...], "b": [...]}``) for this ``MultiLoss``."""
    return (isinstance(loss, MultiLoss) and isinstance(metrics, Mapping) and bool(metrics)
            and (any(k in loss.losses for k in metrics)
                 or all(isinstance(v, (list, tuple)) for v in metrics.values())))


def resolve_loss(loss: Any, loss_weights: Any) -> Any:
    """compile's ``loss``: a Keras name looked up, a dict/list of losses (several outputs) combined."""
    if isinstance(loss, str):
        return get_loss(loss)
    if isinstance(loss, (Mapping, list, tuple)):
        named = loss.items() if isinstance(loss, Mapping) else enumerate(loss)
        parts = {k: get_loss(v) if isinstance(v, str) else v for k, v in named}
        return MultiLoss(parts if isinstance(loss, Mapping) else list(parts.values()), loss_weights)
    if loss_weights is not None:
        raise TypeError("loss_weights goes with several losses, one per output: "
                        "compile(loss={'a': ..., 'b': ...}, loss_weights={'a': 1.0, 'b': 0.5})")
    return loss
