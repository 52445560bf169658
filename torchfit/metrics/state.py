"""A metric's running state as plain values: what a checkpoint written mid-epoch keeps of the epoch
figures so far, so that a resumed run prints the figures an uninterrupted one would.

Owns ``metric_state`` / ``load_metric_state``: by default a metric's state is its attributes
that are tensors or plain Python values (numbers, strings, None, and lists, tuples and dicts of
them), with nested metrics taken the same way; callables and modules are configuration and are
left out. A metric that keeps something else (a numpy array, an object) is named in the error,
with the fix: give it ``state_dict()`` / ``load_state_dict(state)``, which are used first.
torchmetrics objects are read through their ``metric_state``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from torch import nn

from ..batch import to_device
from ..errors import CheckpointError

_SCALARS = (bool, int, float, str, type(None))


def metric_state(metric: Any, name: str) -> Dict[str, Any]:
    """``metric``'s running state (tensors cloned: later updates in place do not reach it).

    >>> from torchfit.metrics import Mean
    >>> m = Mean(); m.update(torch.tensor(2.0), 3)
    >>> s = metric_state(m, "loss"); m.update(torch.tensor(9.0), 1)
    >>> n = Mean(); load_metric_state(n, s, "loss"); n.compute()
    2.0
    """
    own = getattr(type(metric), "state_dict", None)
    if own is not None and not isinstance(metric, nn.Module):
        return {"state_dict": _plain(metric.state_dict(), name, "state_dict()")}
    tm_state = getattr(metric, "metric_state", None)  # torchmetrics
    if isinstance(metric, nn.Module) and isinstance(tm_state, Mapping):
        return {"attrs": {k: _plain(v, name, k) for k, v in tm_state.items()}}
    attrs = {}
    for key, value in vars(metric).items():
        if callable(value) and not isinstance(value, (torch.Tensor, nn.Module)) or isinstance(value, type):
            continue  # configuration: a function, a class
        if isinstance(value, nn.Module) or _is_metric(value):
            attrs[key] = {"metric": metric_state(value, f"{name}.{key}")}
            continue
        attrs[key] = {"value": _plain(value, name, key)}
    return {"attrs": attrs}


def load_metric_state(metric: Any, state: Mapping[str, Any], name: str,
                      device: torch.device = torch.device("cpu")) -> None:
    """Put ``metric_state``'s result back into ``metric`` (tensors onto ``device``)."""
    if "state_dict" in state:
        metric.load_state_dict(to_device(state["state_dict"], device))
        return
    attrs = state["attrs"]
    if isinstance(metric, nn.Module) and isinstance(getattr(metric, "metric_state", None), Mapping):
        for key, value in attrs.items():
            setattr(metric, key, to_device(value, device))
        return
    for key, entry in attrs.items():
        if "metric" in entry:
            load_metric_state(getattr(metric, key), entry["metric"], f"{name}.{key}", device)
        else:
            setattr(metric, key, to_device(entry["value"], device))


def _is_metric(value: Any) -> bool:
    return all(callable(getattr(value, m, None)) for m in ("reset", "update", "compute")) and not isinstance(
        value, (torch.Tensor, type))


def _plain(value: Any, name: str, where: str) -> Any:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        items = [_plain(v, name, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, torch.Size):
        return value
    if isinstance(value, dict):
        return {k: _plain(v, name, f"{where}[{k!r}]") for k, v in value.items()}
    try:
        import numpy as np

        if isinstance(value, np.generic) and np.ndim(value) == 0:
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    raise CheckpointError(
        f"metric {name!r} keeps {where} = a {type(value).__module__}.{type(value).__qualname__}, which a "
        "mid-epoch checkpoint cannot hold (tensors, numbers, str, None, lists, tuples and dicts only). Keep the "
        "metric's running state in tensors, or give the metric state_dict() and load_state_dict(state); "
        "nothing was written")
