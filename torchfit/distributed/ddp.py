"""Data-parallel training under torchrun: the DDP strategy of fit, evaluate and predict.

Owns what a multi-process call adds to a single-process one, and nothing else:
each rank's loaders (``sharding``), the ``DistributedDataParallel`` wrapper of
the net for one fit, ``no_sync`` between accumulation boundaries, trackers whose
figures cover the whole dataset once (``figures``), one infrastructure callback
that keeps the ranks in step, and ``predict`` outputs gathered back into dataset
order. The batch loop stays ``torchfit.loop``'s: the model hands this module
the pieces it needs (the net, the net its train step calls, the loss to
recompute on trimmed batches) and gets pieces back; this module never imports
``torchfit.model``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ContextManager, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..batch import map_tensors
from ..callbacks import Callback
from ..metrics import Tracker
from .comm import DistributedContext
from .figures import ShardTracker
from .sharding import real_samples, shard

#: ``recompute(preds, targets)``: the batch loss of trimmed rows (the default steps' loss), or None.
Recompute = Optional[Callable[[Any, Any], torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """What the strategy adds to one fit: the net to train through, the trackers and callbacks."""

    train_net: Callable
    no_sync: Optional[Callable[[], ContextManager]]
    callbacks: List[Callback]
    train_tracker: Tracker
    val_tracker: Tracker


class DataParallel:
    """The DDP strategy of one call on one rank (``ctx`` is its ``DistributedContext``)."""

    def __init__(self, ctx: DistributedContext):
        self.ctx = ctx
        self.reducer = ctx
        self.is_main = ctx.is_main

    def fit_loaders(self, dl_train: Iterable, dl_val: Optional[Iterable]) -> Tuple[Any, Any]:
        """This rank's training and validation loaders (``Model.fit`` asks first, so that
        everything fit derives from them, the default ``log_step_freq`` and the step count
        callbacks see, is per rank)."""
        dl_train = shard(self.ctx, dl_train, "dl_train", "train")
        if dl_val is not None:
            dl_val = shard(self.ctx, dl_val, "dl_val", "eval")
        return dl_train, dl_val

    def prepare_fit(self, net: nn.Module, train_net: Callable, device: torch.device, accum_steps: int,
                    dl_train: Any, dl_val: Any, train_tracker: Tracker, val_tracker: Tracker,
                    recompute_train: Recompute, recompute_eval: Recompute) -> FitPlan:
        """DDP over the sharded loaders: the wrapped net, shard-aware trackers, the sync callback.

        ``train_net`` is what the train step would call in one process (the net,
        or its ``torch.compile`` wrapper with ``jit_compile``): DDP wraps that.
        """
        if isinstance(net, nn.parallel.DistributedDataParallel):
            raise TypeError("model.net is already a DistributedDataParallel; pass the plain module to "
                            "torchfit.Model(net): torchfit wraps it in DDP itself under torchrun")
        ddp = _ddp(net, train_net, device)
        no_sync = None
        if ddp is None:
            self.ctx.broadcast_state(net)  # every rank starts from rank 0's weights (DDP's constructor does it)
        else:
            train_net = ddp
            if accum_steps > 1:
                no_sync = ddp.no_sync
        samplers = [getattr(dl, "sampler", None) for dl in (dl_train, dl_val)]
        sync = _DistributedSync(self.ctx, [s for s in samplers if hasattr(s, "set_epoch")])
        return FitPlan(
            train_net=train_net, no_sync=no_sync, callbacks=[sync],
            train_tracker=self._tracker(train_tracker, dl_train, recompute_train),
            val_tracker=self._tracker(val_tracker, dl_val, recompute_eval) if dl_val is not None else val_tracker,
        )

    def evaluate_loader(self, dl: Iterable, tracker: Tracker, recompute: Recompute) -> Tuple[Any, Tracker]:
        """This rank's evaluate loader and a tracker whose figures cover the whole dataset once."""
        dl = shard(self.ctx, dl, "dl", "eval")
        return dl, self._tracker(tracker, dl, recompute)

    def predict(self, dl: Iterable, predict_loop: Callable[[Any], Any]) -> Any:
        """Predict this rank's shard with ``predict_loop(loader)``, then gather: every rank
        returns the whole dataset's outputs in dataset order."""
        dl = shard(self.ctx, dl, "dl", "predict")
        out = predict_loop(dl)
        sampler = dl.sampler
        n, per_rank = len(sampler.dataset), sampler.num_samples
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

    def _tracker(self, tracker: Tracker, loader: Any, recompute: Recompute) -> Tracker:
        real = real_samples(getattr(loader, "sampler", None))
        return ShardTracker.from_tracker(tracker, self.ctx, real, recompute)


def _ddp(net: nn.Module, train_net: Callable, device: torch.device) -> Optional[nn.Module]:
    """A DDP wrapper of ``train_net`` for one fit, referenced only by that fit's run.

    It lives as long as the fit: its autograd hooks on the parameters go with
    it, so the next fit's wrapper is the only one reducing gradients, and none
    is left for the interpreter's exit to tear down after the process group (a
    gloo job can abort there). With jit_compile, DDP wraps the model's cached
    torch.compile wrapper (compiled once, reused by every fit):
    torch.compile(DDP(net)) would overlap the all-reduce with the backward pass,
    but the compiled code would keep each fit's DDP (and its buckets) alive.
    """
    if not any(p.requires_grad for p in net.parameters()):
        return None  # DDP refuses modules with nothing to train; there are no gradients to average
    return nn.parallel.DistributedDataParallel(train_net, device_ids=[device.index] if device.type == "cuda" else None)


class _DistributedSync(Callback):
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
            sampler.set_epoch(epoch)

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        if logs:  # a logging point: every rank is here at the same step
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
