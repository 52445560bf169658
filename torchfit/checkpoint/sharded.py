"""Sharded checkpoints: a ``torch.distributed.checkpoint`` (DCP) directory, each rank writing its part.

Owns the directory format: the net's and the optimizer's state go through DCP
(``get_state_dict`` / ``set_state_dict``, so a sharded net writes only its shards
and never gathers a whole tensor on one rank), and the rest of a torchfit
checkpoint (epoch, history, callbacks, loaders, RNG: small) goes to
``torchfit.pt`` inside the directory, written by the strategy's writing rank. A
directory loads into any world size, sharded or not, including a single process
(DCP reshards on load). The strategy of the call (``torchfit.distributed``) says
which rank writes and prepares the optimizer before a load; this module never
asks which strategy it is.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Union

from ..errors import CheckpointError
from .loading import apply_training_state, read
from .saving import atomic_save, build_extra

PathLike = Union[str, "os.PathLike[str]"]
EXTRA = "torchfit.pt"


def is_sharded_checkpoint(path: PathLike) -> bool:
    return os.path.isdir(path)


def save(model: Any, directory: PathLike, strategy: Any) -> None:
    """Write ``model``'s training state to ``directory`` (every rank calls it, each writes its shards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    directory = os.fspath(directory)
    net_state, optim_state = get_state_dict(model.net, _optimizers(model))
    dcp.save({"net": net_state, "optimizer": optim_state}, checkpoint_id=directory)
    if strategy.writes_files:
        atomic_save(build_extra(model), os.path.join(directory, EXTRA))
    _barrier()  # the directory is complete on every rank when this returns


def read_extra(directory: PathLike) -> dict:
    """The small file of counters and state inside a sharded directory, read and checked for its format."""
    directory = os.fspath(directory)
    extra_path = os.path.join(directory, EXTRA)
    if not os.path.exists(os.path.join(directory, ".metadata")) or not os.path.exists(extra_path):
        raise CheckpointError(
            f"{directory!r} is a directory but not a sharded torchfit checkpoint (it needs DCP's .metadata and "
            f"{EXTRA}): write one with torchfit.distributed.save_sharded(model, directory)")
    return read(extra_path)


def load(model: Any, directory: PathLike, strategy: Any) -> None:
    """Load a sharded directory into a compiled ``model`` (sharded or not, any world size)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    directory = os.fspath(directory)
    extra = read_extra(directory)
    strategy.prepare_load(model.net, model.optimizer)
    optimizers = _optimizers(model)
    net_state, optim_state = get_state_dict(model.net, optimizers)
    state = {"net": net_state, "optimizer": optim_state}
    try:
        with warnings.catch_warnings():  # loading into one process is what this function is for
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(state, checkpoint_id=directory)
    except Exception as exc:
        raise CheckpointError(
            f"{directory!r} does not fit this model ({type(exc).__name__}: {str(exc).strip().splitlines()[0]}); "
            "build the same net and optimizer before loading") from exc
    set_state_dict(model.net, optimizers, model_state_dict=state["net"], optim_state_dict=state["optimizer"])
    apply_training_state(model, extra)


def _optimizers(model: Any) -> tuple:
    opt = model.optimizer
    return (opt,) if opt is not None and opt.param_groups else ()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
