"""Regression metrics: MSE, MAE and R2, equal to scikit-learn's on the epoch's data."""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .base import (
    ArrayLike, Metric, Reducer, _SumOverCount, _as_tensor, _no_data_sync_error, _shape, _shape_error, _sum_dtype,
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

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Keras' ``update_state(y_true, y_pred, sample_weight)``: with weights, each sample's mean
        error (over its outputs) counts ``w_i`` times, ``sum(w_i * e_i) / sum(w_i)``, as in Keras."""
        if sample_weight is None:
            return super().update_state(y_true, y_pred)
        p, t = _align(self._label, y_pred, y_true)
        dtype = _sum_dtype(p.device)
        per_sample = self._error(p.to(dtype) - t.to(dtype)).reshape(t.shape[0], -1).mean(1)
        w = torch.as_tensor(sample_weight, device=p.device).to(dtype).reshape(-1)
        self._add_weighted((w * per_sample).sum(), w.sum())


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


