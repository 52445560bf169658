"""Exact epoch figures over a sharded loader: padding trimmed, states merged across ranks."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from ..batch import take_rows
from ..errors import MetricError
from ..loop import StepResult
from ..metrics import BatchMetric, Mean, Tracker
from .base import Recompute


class ShardTracker(Tracker):
    """A ``Tracker`` for one rank's shard of a ``DistributedSampler``.

    Two differences from the single-process tracker:

    * Samples past the rank's ``real`` count are the sampler's padding: they
      still go through the step (so every rank takes the same number of DDP
      steps) but are trimmed from the figures. The last batch's preds and
      targets are cut to the real rows; its loss is recomputed on them (with
      their sample weights, an ``(x, y, w)`` batch's) when the default step made it (a custom step's
      loss and ``logs`` are weighted by the real rows instead). A rank whose
      shard is all padding (a dataset smaller than the world) updates its
      metrics with empty tensors so that their states still have a shape to
      sync.
    * ``compute`` first syncs across ranks, so the figures at logging points
      are the global running figures and every rank sees the same numbers
      (and takes the same decisions, e.g. stopping on a non-finite loss).
      ``compute`` is therefore a collective: every rank calls it at the same
      points, as the loop does.
    """

    _reducer: Any
    _real: Optional[int]
    _recompute: Recompute
    _seen: int
    _synced: bool

    @classmethod
    def from_tracker(cls, tracker: Tracker, reducer: Any, real: Optional[int],
                     recompute: Recompute = None) -> "ShardTracker":
        new = cls.__new__(cls)
        new.__dict__.update(tracker.__dict__)  # whatever the Tracker holds, kept as is
        new._attach(reducer, real, recompute)
        return new

    def _attach(self, reducer: Any, real: Optional[int], recompute: Recompute) -> None:
        self._reducer, self._real, self._recompute = reducer, real, recompute
        self._seen = 0
        self._synced = False

    def reset(self) -> None:
        super().reset()
        self._seen = 0
        self._synced = False

    def state_dict(self) -> Dict[str, Any]:
        """The running figures plus the samples this rank has seen (where its padding starts)."""
        return {**super().state_dict(), "seen": self._seen}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device = torch.device("cpu")) -> None:
        super().load_state_dict(state, device)
        self._seen, self._synced = int(state["seen"]), False

    def update(self, out: StepResult) -> None:
        self._synced = False
        if isinstance(out, Mapping):  # a Keras-style step's own figures (this rank's)
            super().update(out)
            return
        n = out.batch_size
        if self._real is None:
            super().update(out)
            return
        keep = max(0, min(n, self._real - self._seen))
        self._seen += n
        if keep == n:
            super().update(out)
        elif keep > 0:
            preds, targets = take_rows(out.preds, keep, n), take_rows(out.targets, keep, n)
            weights = take_rows(out.weights, keep, n)  # an (x, y, w) batch's weights of the real rows
            loss = out.loss
            logs = out.logs
            if loss is not None and self._recompute is not None and out.preds is not None:
                loss, recomputed = self._recompute(preds, targets, weights)
                logs = recomputed if recomputed is not None else logs
            super().update(out._replace(loss=loss, preds=preds, targets=targets, batch_size=keep, logs=logs,
                                        weights=weights))
        else:
            self._update_nothing(out, n)

    def _update_nothing(self, out: StepResult, n: int) -> None:
        # Give every state the shape the other ranks' states have, with zero weight.
        if out.loss is not None:
            self.loss_seen = True
        for name in out.logs or ():
            self.extra.setdefault(name, Mean())
        if out.preds is None or not self.metrics:
            return
        preds, targets = take_rows(out.preds, 0, n), take_rows(out.targets, 0, n)
        for name, metric in self.metrics.items():
            if isinstance(metric, BatchMetric):
                continue  # a plain function of an empty batch is undefined; its weight would be 0
            try:
                metric.update(preds, targets)
            except Exception as exc:
                raise MetricError(
                    f"metric {self.prefix + name!r} raised {type(exc).__name__} on an empty batch: {exc}. Under "
                    "torchrun a rank whose shard is only padding (a dataset smaller than the number of "
                    "processes) updates its metrics with zero rows; make the metric accept them"
                ) from exc

    def sync(self, reducer: Any) -> None:
        if not self._synced:
            super().sync(reducer)
            self._synced = True

    def compute(self) -> Dict[str, float]:
        self.sync(self._reducer)
        return super().compute()


