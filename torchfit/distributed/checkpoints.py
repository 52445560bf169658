"""Sharded checkpoints: a ``torch.distributed.checkpoint`` (DCP) directory, each rank writing its part.

Owns ``save_sharded`` / ``load_sharded``: the net's and the optimizer's state
go through DCP (``get_state_dict`` / ``set_state_dict``, so a sharded net writes
only its shards and never gathers a whole tensor on one rank), and the rest of
a torchfit checkpoint (epoch, history, callbacks, loaders, RNG: small) goes to
``torchfit.pt`` inside the directory, written by rank 0. A directory loads into
any world size, sharded or not, including a single process (DCP reshards on
load); ``model.load_checkpoint(directory)`` and ``fit(resume_from=directory)``
read it. The checkpoint format itself is ``torchfit.checkpoint``'s.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Union

PathLike = Union[str, "os.PathLike[str]"]
EXTRA = "torchfit.pt"


def save_sharded(model: Any, directory: PathLike) -> None:
    """Write ``model``'s training state to ``directory`` with ``torch.distributed.checkpoint``.

    Under several processes every rank must call it (each writes its shards).
    The directory loads with ``model.load_checkpoint(directory)``, in any number
    of processes; ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``
    turns it into one file of plain tensors.

    >>> # model.fit(2, dl_train)                       # compile(strategy="fsdp") under torchrun
    >>> # torchfit.distributed.save_sharded(model, "ckpt/epoch2")
    >>> # later: model.fit(4, dl_train, resume_from="ckpt/epoch2")
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from .. import checkpoint
    from .launch import rank

    model._require_compiled("save_checkpoint")
    directory = os.fspath(directory)
    net_state, optim_state = get_state_dict(model.net, _optimizers(model))
    dcp.save({"net": net_state, "optimizer": optim_state}, checkpoint_id=directory)
    if rank() == 0:
        extra = checkpoint.build_extra(model)
        checkpoint.atomic_save(extra, os.path.join(directory, EXTRA))
    _barrier()  # the directory is complete on every rank when this returns


def load_sharded(model: Any, directory: PathLike) -> None:
    """Load a ``save_sharded`` directory into a compiled ``model`` (sharded or not, any world size).

    >>> # model.load_checkpoint("ckpt/epoch2")   # the same, through the model
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from .. import checkpoint
    from . import fsdp

    directory = os.fspath(directory)
    extra_path = os.path.join(directory, EXTRA)
    if not os.path.exists(os.path.join(directory, ".metadata")) or not os.path.exists(extra_path):
        raise checkpoint.CheckpointError(
            f"{directory!r} is a directory but not a sharded torchfit checkpoint (it needs DCP's .metadata and "
            f"{EXTRA}): write one with torchfit.distributed.save_sharded(model, directory)")
    extra = checkpoint.read(extra_path)
    if fsdp.is_sharded(model.net):
        fsdp.retarget_optimizer(model.net, model.optimizer)
    optimizers = _optimizers(model)
    net_state, optim_state = get_state_dict(model.net, optimizers)
    state = {"net": net_state, "optimizer": optim_state}
    try:
        with warnings.catch_warnings():  # loading into one process is what this function is for
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(state, checkpoint_id=directory)
    except Exception as exc:
        raise checkpoint.CheckpointError(
            f"{directory!r} does not fit this model ({type(exc).__name__}: {str(exc).strip().splitlines()[0]}); "
            "build the same net and optimizer before loading") from exc
    set_state_dict(model.net, optimizers, model_state_dict=state["net"], optim_state_dict=state["optimizer"])
    checkpoint.apply_training_state(model, extra, directory)


def _optimizers(model: Any) -> tuple:
    opt = model.optimizer
    return (opt,) if opt is not None and opt.param_groups else ()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
