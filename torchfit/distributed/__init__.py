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
this package runs: ``strategy()`` returns ``SingleProcess()``, whose every method
is what one process does (``base``: the strategy interface).

Modules: ``launch`` (the environment and the process group), ``comm`` (the
collectives, also the metrics' reducer), ``sharding`` (each rank's loader),
``figures`` (exact epoch figures over shards), ``base`` (the strategy
interface and ``SingleProcess``), ``multiprocess`` (what the multi-process
strategies share), ``ddp`` and ``fsdp`` (the strategies, chosen through
``STRATEGIES`` below) and ``notebook`` (``fit(num_processes=N)``: workers
started from a notebook or script). Sharded checkpoint directories are
``torchfit.checkpoint.sharded``'s format; the strategy supplies the tensors.

How a fit runs under ``torchrun --nproc_per_node=N script.py``::

    compile(device=None)     -> cuda:LOCAL_RANK on a GPU machine, else cpu
    fit / evaluate / predict -> init_process_group (nccl on CUDA, gloo on CPU) once
    each rank: DataLoader(dataset, batch_size=b, sampler=DistributedSampler(...))
    training:  DDP(model.net) averages gradients; sampler.set_epoch(epoch) each epoch
    figures:   each rank counts its own samples (padding excluded), then sum / gather
    printing:  rank_zero_only callbacks (printer, writers) run on rank 0 only
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch

from .base import FitPlan, FitRequest, SingleProcess
from .comm import DistributedContext, context
from .ddp import DataParallel
from .figures import ShardTracker
from .fsdp import FSDP, FullySharded
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
    "FitRequest",
    "FullySharded",
    "LaunchInfo",
    "STRATEGIES",
    "ShardTracker",
    "SingleProcess",
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

#: The registry: ``compile(strategy=name)`` -> (the strategy class, its default options).
#: A new strategy is a file beside ddp.py and fsdp.py plus one line here; an options object
#: (like ``FSDP(...)``) is matched by the class's ``options_type``.
STRATEGIES: Dict[str, Tuple[type, Callable[[], Any]]] = {
    "ddp": (DataParallel, lambda: "ddp"),
    "fsdp": (FullySharded, FSDP),
}


def check_strategy(value: Any) -> Any:
    """``compile(strategy=...)`` checked: ``None`` (DDP under torchrun), a registered name, or an options object.

    >>> check_strategy("fsdp")
    FSDP(shard=None, mixed_precision=None, reshard_after_forward=None)
    """
    if value is None:
        return None
    if isinstance(value, str) and value in STRATEGIES:
        return STRATEGIES[value][1]()
    if any(isinstance(value, getattr(cls, "options_type", ())) for cls, _ in STRATEGIES.values()):
        return value
    raise ValueError(f"compile(strategy={value!r}): use one of {sorted(STRATEGIES)} ('ddp' is the default under "
                     "torchrun), or an options object such as torchfit.distributed.FSDP(shard=..., mixed_precision=...)")


def strategy(device: torch.device, choice: Any = None) -> SingleProcess:
    """The strategy of a fit/evaluate/predict on ``device``: ``SingleProcess()`` in one process.

    ``choice`` is what ``compile(strategy=...)`` stored (``check_strategy``).

    >>> type(strategy(torch.device("cpu"))).__name__   # a plain `python script.py`
    'SingleProcess'
    """
    ctx = context(device)
    if ctx is None:
        return SingleProcess()
    for cls, _ in STRATEGIES.values():
        options_type = getattr(cls, "options_type", None)
        if options_type is not None and isinstance(choice, options_type):
            return cls(ctx, choice)
    return STRATEGIES["ddp" if choice is None else choice][0](ctx)


def save_sharded(model: Any, directory: Any) -> None:
    """Write ``model``'s training state to ``directory`` with ``torch.distributed.checkpoint``, each rank its part.

    Under several processes every rank must call it. The directory loads with
    ``model.load_checkpoint(directory)`` or ``fit(resume_from=directory)``, in any
    number of processes; ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``
    turns it into one file of plain tensors.

    >>> # model.fit(2, dl_train)                       # compile(strategy="fsdp") under torchrun
    >>> # torchfit.distributed.save_sharded(model, "ckpt/epoch2")
    >>> # later: model.fit(4, dl_train, resume_from="ckpt/epoch2")
    """
    from ..checkpoint import sharded

    model._require_compiled("save_checkpoint")
    sharded.save(model, directory, strategy(model.device, model.strategy))


def load_sharded(model: Any, directory: Any) -> None:
    """Load a ``save_sharded`` directory into a compiled ``model``: ``model.load_checkpoint(directory)``."""
    model._require_compiled("load_checkpoint")
    model.load_checkpoint(directory)
