"""Data-parallel training under torchrun: the DDP strategy (``compile(strategy="ddp")``, the default).

Owns how a net trains across ranks with every rank holding the whole net: the
``DistributedDataParallel`` wrapper of the default train step for one fit,
``no_sync`` between accumulation boundaries, and, for an overridden
``train_step`` (which may call ``model.net`` itself, not the wrapper), the
gradients averaged once per optimizer step instead, so that any step trains as
the default one does. Loaders, exact figures, gathered ``predict`` outputs and
keeping the ranks in step are ``multiprocess.MultiProcess``'s. Saving is the
single-process one on rank 0: every rank holds the same weights.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .base import FitPlan, FitRequest
from .multiprocess import MultiProcess


class DataParallel(MultiProcess):
    """The DDP strategy of one call on one rank."""

    name = "ddp"

    def prepare_fit(self, request: FitRequest) -> FitPlan:
        """DDP over the sharded loaders (or, for an overridden step, gradients averaged at each
        optimizer step), shard-aware trackers and the sync callback.

        ``request.train_net`` is what the train step would call in one process (the net,
        or its ``torch.compile`` wrapper with ``jit_compile``): DDP wraps that.
        """
        net = request.net
        if isinstance(net, nn.parallel.DistributedDataParallel):
            raise TypeError("model.net is already a DistributedDataParallel; pass the plain module to "
                            "torchfit.Model(net): torchfit wraps it in DDP itself under torchrun")
        train_net, no_sync, sync_grads = request.train_net, None, None
        trainable = any(p.requires_grad for p in net.parameters())
        if request.custom_step or not trainable:
            # The user's step may call model.net directly: a DDP wrapper would be bypassed and no
            # gradient averaged. Averaging at the optimizer step works whatever the step calls.
            self.ctx.broadcast_state(net)  # every rank starts from rank 0's weights (DDP's constructor does it)
            sync_grads = self.average_grads if trainable else None
        else:
            ddp = _ddp(train_net, request.device)
            train_net = ddp
            if request.accum_steps > 1:
                no_sync = ddp.no_sync
        train_tracker, val_tracker = self.trackers(request)
        return FitPlan(train_net=train_net, train_tracker=train_tracker, val_tracker=val_tracker, no_sync=no_sync,
                       sync_grads=sync_grads, callbacks=[self.rank_sync(request)])


def _ddp(train_net: Callable, device: torch.device) -> nn.Module:
    """A DDP wrapper of ``train_net`` for one fit, referenced only by that fit's run.

    It lives as long as the fit: its autograd hooks on the parameters go with
    it, so the next fit's wrapper is the only one reducing gradients, and none
    is left for the interpreter's exit to tear down after the process group (a
    gloo job can abort there). With jit_compile, DDP wraps the model's cached
    torch.compile wrapper (compiled once, reused by every fit):
    torch.compile(DDP(net)) would overlap the all-reduce with the backward pass,
    but the compiled code would keep each fit's DDP (and its buckets) alive.
    """
    ids: Optional[list] = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(train_net, device_ids=ids)
