"""The running figures of one phase of a call: the loss mean, each metric, extra step logs.

Owns turning step results into epoch figures (``update`` on the device per
step, ``compute`` to Python floats where the loop logs) and naming metrics in
errors. *When* it is updated or read is the loop's business; merging across
processes is the reducer's (``sync``).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping

import torch

from ..batch import describe
from ..errors import MetricError
from .base import Mean, Metric
from .state import load_metric_state, metric_state


class Tracker:
    """The running epoch figures of one phase: the loss mean plus each metric.

    >>> from torchfit.loop import StepResult
    >>> t = Tracker({}, prefix="val_")
    >>> t.update(StepResult(torch.tensor(0.5), None, None, 4))
    >>> t.compute()
    {'val_loss': 0.5}
    """

    def __init__(self, metrics: Mapping[str, Metric], prefix: str = ""):
        self.prefix = prefix
        self.loss = Mean()
        self.metrics: Dict[str, Metric] = dict(metrics)
        self.extra: Dict[str, Mean] = {}
        self.loss_seen = False  # steps may return loss=None (custom train_step)
        self.reported: Dict[str, Any] = {}  # a Keras-style step's returned {name: running value}

    def reset(self) -> None:
        self.loss_seen = False
        self.reported = {}
        self.loss.reset()
        for name, m in self.metrics.items():
            try:
                m.reset()
            except Exception as exc:
                raise MetricError(f"metric {self.prefix + name!r} raised {type(exc).__name__} in reset(): {exc}. "
                                  "reset() must clear the metric's state without arguments") from exc
        for m in self.extra.values():
            m.reset()

    def update(self, out: Any) -> None:
        """Add one step's result (a ``StepResult``): weighted by its batch size, on the device. A
        mapping (a train_step written the Keras way returns ``{name: metric.result()}``) holds the
        step's own running figures: the last one is the epoch's, as in Keras."""
        if isinstance(out, Mapping):
            self.reported = dict(out)
            return
        n = out.batch_size
        if out.loss is not None:
            self.loss_seen = True
            self.loss.update(out.loss, n)
        if out.logs:
            for name, value in out.logs.items():
                mean = self.extra.get(name)
                if mean is None:
                    mean = self.extra[name] = Mean()
                mean.update(value.detach() if isinstance(value, torch.Tensor) else value, n)
        if out.preds is None or not self.metrics:
            return
        for name, metric in self.metrics.items():
            try:
                metric.update(out.preds, out.targets)
            except Exception as exc:
                raise MetricError(
                    f"metric {self.prefix + name!r} raised {type(exc).__name__}: {exc}. "
                    "Check that it accepts (preds, targets) in the shapes the net produces "
                    f"(preds {describe(out.preds)}, targets {describe(out.targets)})"
                ) from exc

    def sync(self, reducer: Any) -> None:
        """Merge states across processes (torchrun) before computing epoch figures."""
        self.loss.sync(reducer)
        for m in list(self.metrics.values()) + list(self.extra.values()):
            if hasattr(m, "sync"):
                m.sync(reducer)

    def state_dict(self) -> Dict[str, Any]:
        """The running figures so far, as plain values and cloned tensors (a checkpoint written
        mid-epoch keeps them; ``load_state_dict`` continues the epoch's figures exactly)."""
        p = self.prefix
        return {"loss": metric_state(self.loss, p + "loss"), "loss_seen": self.loss_seen,
                "metrics": {name: metric_state(m, p + name) for name, m in self.metrics.items()},
                "extra": {name: metric_state(m, p + name) for name, m in self.extra.items()},
                "reported": metric_state_value(self.reported, p)}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device = torch.device("cpu")) -> None:
        """Continue from ``state_dict()``'s figures (the metrics must be the same, by name)."""
        p = self.prefix
        if set(state["metrics"]) != set(self.metrics):
            raise MetricError(f"the saved running figures are for metrics {sorted(state['metrics'])}, but this "
                              f"fit has {sorted(self.metrics)}: compile the same metrics as the saved run")
        load_metric_state(self.loss, state["loss"], p + "loss", device)
        self.loss_seen = bool(state["loss_seen"])
        for name, m in self.metrics.items():
            load_metric_state(m, state["metrics"][name], p + name, device)
        self.extra = {}
        for name, s in state["extra"].items():
            mean = self.extra[name] = Mean()
            load_metric_state(mean, s, p + name, device)
        self.reported = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state["reported"].items()}

    def compute(self) -> Dict[str, float]:
        p = self.prefix
        if self.reported:  # a Keras-style step: its returned figures are the logs, in its order
            return {p + name: _to_float(value) for name, value in self.reported.items()}
        logs: Dict[str, float] = {}
        if self.loss_seen:
            logs[p + "loss"] = self.loss.compute()
        for name, metric in self.metrics.items():
            try:
                logs[p + name] = _to_float(metric.compute())
            except Exception as exc:
                raise MetricError(f"metric {p + name!r} raised {type(exc).__name__} in compute(): {exc}") from exc
        for name, mean in self.extra.items():
            logs[p + name] = mean.compute()
        return logs


def copy_metrics(metrics: Mapping[str, Metric]) -> Dict[str, Metric]:
    """Independent copies of ``metrics`` (each phase keeps its own state); a metric that cannot be
    copied is named.

    >>> from torchfit.metrics import Accuracy
    >>> copy_metrics({"acc": Accuracy()})["acc"] is not None
    True
    """
    copies: Dict[str, Metric] = {}
    for name, metric in metrics.items():
        try:
            copies[name] = copy.deepcopy(metric)
        except Exception as exc:
            raise MetricError(
                f"metric {name!r} ({type(metric).__name__}) cannot be copied with copy.deepcopy "
                f"({type(exc).__name__}: {exc}); torchfit keeps a copy per phase (training, validation). "
                "Keep the metric's state in tensors and plain Python values, or create resources in reset()"
            ) from exc
    return copies


def metric_state_value(reported: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    """A Keras-style step's last reported figures (tensors or numbers), as a checkpoint keeps them."""
    out: Dict[str, Any] = {}
    for name, value in reported.items():
        if isinstance(value, torch.Tensor):
            out[name] = value.detach().clone()
        else:
            out[name] = float(value)
    return out


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"compute() returned a tensor of shape {tuple(value.shape)}; a metric must give one number")
        return float(value)
    return float(value)
