"""The metric protocol and the pieces every metric is built from.

Owns ``Metric`` (``reset`` / ``update`` / ``compute`` / ``sync``), the running
``Mean`` the loop tracks the loss with, ``BatchMetric`` (a plain function of a
batch, averaged by batch size), the sum-over-count state that accuracy and the
mean errors share, the adapter for torchmetrics-style objects and the
``Reducer`` protocol that ``sync`` is handed under torch.distributed. The named
metrics live in ``classification`` and ``regression``; turning a user's
``metrics=`` argument into metrics is ``registry``'s job.
"""
from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Optional, Protocol, Sequence, Union

import numpy as np
import torch
from torch import Tensor

ArrayLike = Union[Tensor, np.ndarray, Sequence[Any]]


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


def _shape_error(metric: str, preds: Tensor, targets: Tensor, hint: str) -> ValueError:
    return ValueError(
        f"{metric}: preds of shape {_shape(preds)} and targets of shape {_shape(targets)} "
        f"do not fit together; {hint}"
    )



def _no_data_sync_error(metric: Metric) -> RuntimeError:
    # The reduced tensors' shapes come from the data (classes, outputs); a
    # process without any would send a mismatched shape and hang the others.
    return RuntimeError(
        f"{type(metric).__name__}.sync() was called before any update; every process "
        "must see at least one batch (DistributedSampler guarantees this)"
    )



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

    _takes_name = False  # a subclass whose own __init__ takes ``name`` sets this

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Keras' metrics take ``name=``: every subclass's constructor accepts it (e.g. ``MAE(name="mae")``).
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or cls.__dict__.get("_takes_name"):
            return

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, name: Optional[str] = None, **kw: Any) -> None:
            init(self, *args, **kw)
            if name is not None:
                self.name = name

        cls.__init__ = __init__  # type: ignore[misc]

    # Keras' names for the same protocol, for train_steps written the Keras way:
    # ``metric.update_state(y, y_pred)``, ``metric.result()``, ``metric.reset_state()``, ``metric.name``.
    @property
    def name(self) -> str:
        return self.__dict__.get("_name") or type(self).__name__.lower()

    @name.setter
    def name(self, value: Optional[str]) -> None:
        self.__dict__["_name"] = value

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Keras' ``update_state(y_true, y_pred)``: ``update(y_pred, y_true)``."""
        if sample_weight is not None:
            raise TypeError(f"{self.name}.update_state(..., sample_weight=...) is not supported: torchfit's "
                            "metrics weigh samples equally")
        self.update(y_pred, y_true)

    def result(self) -> Any:
        """Keras' ``result()``: ``compute()``."""
        return self.compute()

    def reset_state(self) -> None:
        """Keras' ``reset_state()``: ``reset()``."""
        self.reset()


class MetricList(list):
    """``model.metrics``: the compiled metric objects, in order. Keras code iterates them
    (``for m in self.metrics: m.update_state(y, y_pred)``; ``m.name``); ``metrics["acc"]``,
    ``keys()`` and ``items()`` look them up by name.

    >>> from torchfit.metrics import Accuracy
    >>> ms = MetricList([Accuracy()]); ms[0] is ms["accuracy"], ms.keys()
    (True, ['accuracy'])
    """

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            for metric in self:
                if metric.name == key:
                    return metric
            raise KeyError(f"no metric named {key!r}; the metrics are {self.keys()}")
        return super().__getitem__(key)

    def keys(self) -> list:
        return [m.name for m in self]

    def items(self) -> list:
        return [(m.name, m) for m in self]


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

    _takes_name = True

    def __init__(self, name: Optional[str] = None) -> None:
        self.name = name  # Keras' Mean(name="loss")
        self.reset()

    def update_state(self, values: Any, sample_weight: Any = None) -> None:  # type: ignore[override]
        """Keras' ``Mean.update_state(values)``: the mean of ``values`` (weighted by ``sample_weight``),
        counted as that many samples."""
        if isinstance(values, Tensor) and values.dim() > 0:
            values = values.detach().float()
            if sample_weight is not None:
                w = torch.as_tensor(sample_weight, dtype=values.dtype, device=values.device).expand_as(values)
                self.update((values * w).sum() / w.sum(), values.numel())
                return
            self.update(values.mean(), values.numel())
            return
        self.update(values.detach() if isinstance(values, Tensor) else values, 1)

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
                and value.dim() == 0 and not value.requires_grad):
            # The loop's case, once per step (a detached 0-d loss): one op. value * weight
            # is exact in float64 for float32/bf16 values, so this equals `total += v64 * weight`.
            # A value on another device fails in add_ (no device comparison per step), unless it is
            # a CPU scalar, which add_ reads as a number.
            try:
                total.add_(value, alpha=weight)
            except RuntimeError:
                total += value.to(total.device, total.dtype) * weight
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

    _takes_name = True

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



class _SumOverCount(Metric):
    """A sum kept on the device over a sample count kept on the host: ``compute`` is sum / count.

    Accuracy (an integer count of hits) and MSE/MAE (float error sums) share this
    state; an integer sum is reduced as int64 so counts stay exact across processes.
    """

    def reset(self) -> None:
        self._sum: Optional[Tensor] = None
        self._count = 0
        self._weights: Optional[Tensor] = None  # Keras' sample weights, when update_state was given them
        self._global: Optional[tuple[float, int]] = None

    def _add_weighted(self, weighted_sum: Tensor, weight_total: Tensor) -> None:
        """A sum of weighted values over a total weight kept on the device (Keras' ``sample_weight``)."""
        self._add(weighted_sum, 0)
        self._weights = weight_total if self._weights is None else self._weights + weight_total

    def _add(self, batch_sum: Tensor, count: int) -> None:
        total = self._sum
        if total is None:
            self._sum = batch_sum  # a fresh tensor each batch (a reduction's result): ours to add into
        elif total.dtype == batch_sum.dtype and total.device == batch_sum.device:
            total.add_(batch_sum)
        else:
            self._sum = total + batch_sum.to(total.device)
        self._count += count
        self._global = None

    def compute(self) -> float:
        if self._global is not None:
            total, count = self._global
        else:
            total = 0 if self._sum is None else self._sum.item()
            count = self._count + (0 if self._weights is None else self._weights.item())
        return total / count if count else float("nan")

    def sync(self, reducer: Reducer) -> None:
        device = self._sum.device if self._sum is not None else torch.device("cpu")
        exact = self._sum is None or not self._sum.is_floating_point()
        dtype = torch.int64 if exact else _sum_dtype(device)
        if self._weights is not None:  # weighted (Keras' sample_weight): float totals
            dtype = _sum_dtype(device)
        packed = torch.tensor([0, self._count], dtype=dtype, device=device)
        if self._sum is not None:
            packed[0] += self._sum
        if self._weights is not None:
            packed[1] += self._weights.to(device)
        total, count = reducer.sum(packed).tolist()
        self._global = (total, count if self._weights is not None else int(round(count)))



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


