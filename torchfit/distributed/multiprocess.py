"""What every multi-process strategy shares: each rank's loaders, exact figures, gathered outputs.

Owns ``MultiProcess``, the base of the strategies that split the data across ranks
(``ddp.DataParallel``, ``fsdp.FullySharded``): each rank's loaders (``sharding``),
trackers whose figures cover the whole dataset once (``figures``), ``predict``
outputs gathered back into dataset order, and ``RankSync``, the infrastructure
callback that keeps the ranks in step during a fit. How the *net* is trained and
saved across ranks is each subclass's business.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Tuple

import torch

from ..batch import map_tensors
from ..callbacks import Callback
from ..callbacks.base import is_logging_point
from .base import Recompute, SingleProcess
from .comm import DistributedContext
from .figures import ShardTracker
from .sharding import RankShard, real_samples, shard


class MultiProcess(SingleProcess):
    """A call on one rank of several (``ctx`` is its ``DistributedContext``)."""

    def __init__(self, ctx: DistributedContext):
        self.ctx = ctx
        self.reducer = ctx
        self.is_main = ctx.is_main

    @property
    def rank(self) -> int:  # type: ignore[override]
        return self.ctx.rank

    @property
    def world_size(self) -> int:  # type: ignore[override]
        return self.ctx.world_size

    def gather_positions(self, position: Any) -> List[Any]:
        gathered: List[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, position)
        return gathered

    def fit_loaders(self, dl_train: Iterable, dl_val: Optional[Iterable]) -> Tuple[Any, Any]:
        """This rank's training and validation loaders (asked first, so that everything fit derives
        from them, the default ``log_step_freq`` and the step count callbacks see, is per rank)."""
        dl_train = shard(self.ctx, dl_train, "dl_train", "train")
        if dl_val is not None:
            dl_val = shard(self.ctx, dl_val, "dl_val", "eval")
        return dl_train, dl_val

    def evaluate_loader(self, dl: Iterable, tracker: Any, recompute: Recompute) -> Tuple[Any, Any]:
        dl = shard(self.ctx, dl, "dl", "eval")
        return dl, self.tracker(tracker, dl, recompute)

    def predict(self, dl: Iterable, predict_loop: Callable[[Any], Any]) -> Any:
        """Predict this rank's shard with ``predict_loop(loader)``, then gather: every rank
        returns the whole dataset's outputs in dataset order."""
        dl = shard(self.ctx, dl, "dl", "predict")
        out = predict_loop(dl)
        if isinstance(dl.dataset, RankShard):  # a stream: its length is known now that it has ended
            n, per_rank = dl.dataset.total, dl.dataset.per_rank
        else:
            n, per_rank = len(dl.sampler.dataset), dl.sampler.num_samples
        world = self.ctx.world_size

        def in_order(t: torch.Tensor) -> torch.Tensor:
            if t.dim() == 0 or t.shape[0] != per_rank:
                raise ValueError(
                    f"predict under torchrun needs outputs with one row per sample ({per_rank} on this rank); "
                    f"predict_step gave a tensor of shape {tuple(t.shape)}"
                )
            every = self.ctx.gather(t).to("cpu")
            # rank r's i-th sample is dataset item r + i * world (DistributedSampler without shuffle)
            rest = tuple(every.shape[1:])
            return every.reshape((world, per_rank) + rest).transpose(0, 1).reshape((world * per_rank,) + rest)[:n]

        return map_tensors(in_order, out)

    # ------------------------------------------------------------ for subclasses
    def tracker(self, tracker: Any, loader: Any, recompute: Recompute) -> ShardTracker:
        """``tracker`` made shard-aware: padding rows left out, figures summed over ranks."""
        stream = getattr(loader, "dataset", None)
        if isinstance(stream, RankShard):
            real: Any = stream.live_real()
        else:
            real = real_samples(getattr(loader, "sampler", None))
        return ShardTracker.from_tracker(tracker, self.ctx, real, recompute)

    def trackers(self, request: Any) -> Tuple[ShardTracker, Any]:
        train = self.tracker(request.train_tracker, request.dl_train, request.recompute_train)
        val = (self.tracker(request.val_tracker, request.dl_val, request.recompute_eval)
               if request.dl_val is not None else request.val_tracker)
        return train, val

    def rank_sync(self, request: Any) -> "RankSync":
        samplers = [getattr(dl, "sampler", None) for dl in (request.dl_train, request.dl_val)]
        return RankSync(self.ctx, [s for s in samplers if hasattr(s, "set_epoch")])

    def average_grads(self, grads: List[torch.Tensor]) -> None:
        """Average gradients over the ranks in place, as DDP does (divide by the world size, then sum):
        one flat all-reduce per dtype."""
        world = self.ctx.world_size
        by_dtype: dict = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for same in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in same]).to(self.ctx.comm_device)
            flat.div_(world)
            self.ctx.dist.all_reduce(flat)
            parts = flat.to(same[0].device).split([g.numel() for g in same])
            torch._foreach_copy_(same, [t.view_as(g) for t, g in zip(parts, same)])


class RankSync(Callback):
    """Keeps the ranks in step during a fit; always the last callback, on every rank.

    * ``on_epoch_begin``: ``set_epoch`` on the samplers, so shuffling differs per
      epoch and agrees across ranks.
    * at logging points and epoch ends: ``model.stop_training`` becomes true on
      every rank if it is true on any (a rank-0-only callback may have set it),
      so no rank leaves the loop alone and hangs the others.
    * ``on_test_begin`` / ``on_train_end``: rank 0's buffers (BatchNorm running
      statistics, which each rank updated with its last batch) go to every rank,
      so validation and saved weights agree.
    * ``on_train_end``: a barrier, so that fit returns on no rank before rank 0
      finished what it writes at epoch ends.
    """

    def __init__(self, ctx: DistributedContext, samplers: Iterable[Any]):
        self.ctx = ctx
        self.samplers = list(samplers)

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        for sampler in self.samplers:
            sampler.set_epoch(epoch + 1)  # the 1-based epoch number, as before hooks counted from 0

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        if is_logging_point(logs):  # every rank is here at the same step
            self._agree_on_stop()

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._agree_on_stop()

    def on_test_begin(self, logs: dict) -> None:
        self.ctx.broadcast_buffers(self.model.net)

    def on_train_end(self, logs: dict) -> None:
        self.ctx.broadcast_buffers(self.model.net)
        # When fit returns, rank 0's files (checkpoints written at epoch ends) are complete on
        # every rank, so the script after fit may load them anywhere.
        self.ctx.barrier()

    def _agree_on_stop(self) -> None:
        self.model.stop_training = self.ctx.any(self.model.stop_training)
