"""The same script under ``torchrun``: process group, DDP, per-rank loaders, exact figures.

This package owns: noticing a torchrun launch (its environment variables), initialising the
process group when the user has not, picking each rank's device, wrapping the
net in ``DistributedDataParallel`` for training, re-creating loaders with a
``DistributedSampler``, the reducer that metric ``sync`` calls (sum and
gather across ranks), keeping the samples the sampler pads out of the epoch
figures, agreeing on stops, and gathering ``predict`` outputs back into
dataset order. It leaves the batch loop to ``loop`` (there is no second loop
here), the metric maths to ``metrics`` and communication itself to
``torch.distributed``: nothing here talks to other processes except through
its collectives.

In a single process (no torchrun environment, no process group) nothing in
this package runs: ``strategy()`` returns ``None`` and the call keeps its
single-process defaults.

Modules: ``launch`` (the environment and the process group), ``comm`` (the
collectives, also the metrics' reducer), ``sharding`` (each rank's loader),
``figures`` (exact epoch figures over shards), ``ddp`` (the strategy that
fit, evaluate and predict ask for pieces), ``fsdp`` (the fully sharded
strategy beside it, ``compile(strategy="fsdp")``), ``notebook``
(``fit(num_processes=N)``: workers started from a notebook or script) and
``checkpoints`` (sharded ``torch.distributed.checkpoint`` directories).

How a fit runs under ``torchrun --nproc_per_node=N script.py``::

    compile(device=None)     -> cuda:LOCAL_RANK on a GPU machine, else cpu
    fit / evaluate / predict -> init_process_group (nccl on CUDA, gloo on CPU) once
    each rank: DataLoader(dataset, batch_size=b, sampler=DistributedSampler(...))
    training:  DDP(model.net) averages gradients; sampler.set_epoch(epoch) each epoch
    figures:   each rank counts its own samples (padding excluded), then sum / gather
    printing:  rank_zero_only callbacks (printer, writers) run on rank 0 only
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from .comm import DistributedContext, context
from .ddp import DataParallel, FitPlan
from .figures import ShardTracker
from .checkpoints import load_sharded, save_sharded
from .fsdp import FSDP, FullySharded, check_strategy
from .launch import (DEFAULT_TIMEOUT, LaunchInfo, init_process_group, is_main_process, launch_info,
                     local_device, rank, world_size)
from .notebook import WorkerError, launch_fit
from .sharding import real_samples, shard

__all__ = [
    "DEFAULT_TIMEOUT",
    "DataParallel",
    "DistributedContext",
    "FSDP",
    "FitPlan",
    "FullySharded",
    "LaunchInfo",
    "ShardTracker",
    "WorkerError",
    "check_strategy",
    "context",
    "init_process_group",
    "is_main_process",
    "launch_fit",
    "launch_info",
    "load_sharded",
    "local_device",
    "rank",
    "real_samples",
    "save_sharded",
    "shard",
    "strategy",
    "world_size",
]


def strategy(device: torch.device, choice: Union[None, str, FSDP] = None) -> Optional[DataParallel]:
    """The multi-process strategy of a fit/evaluate/predict on ``device``, or ``None`` in one process.

    ``choice`` is what ``compile(strategy=...)`` stored: ``None``/``"ddp"`` for
    DDP, an ``FSDP`` (``"fsdp"``) for fully sharded training.

    >>> strategy(torch.device("cpu")) is None   # a plain `python script.py`
    True
    """
    ctx = context(device)
    if ctx is None:
        return None
    if isinstance(choice, FSDP):
        return FullySharded(ctx, choice)
    return DataParallel(ctx)
