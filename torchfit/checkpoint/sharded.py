"""Sharded checkpoints: a ``torch.distributed.checkpoint`` (DCP) directory, each rank writing its part.

Owns the directory format: the net's and the optimizer's state go through DCP
(``get_state_dict`` / ``set_state_dict``, so a sharded net writes only its shards
and never gathers a whole tensor on one rank), and the rest of a torchfit
checkpoint (epoch, history, callbacks, loaders, RNG: small) goes to
``torchfit.pt`` inside the directory, written by the strategy's writing rank,
with the sha256 and size of every file DCP wrote (``shards``) and a digest of its
own tensors. A directory loads into any world size, sharded or not, including a
single process (DCP reshards on load). The strategy of the call
(``torchfit.distributed``) says which rank writes and prepares the optimizer
before a load; this module never asks which strategy it is.

Check, then apply, as for one file (``loading``): ``read_checked`` finds every
file DCP's ``.metadata`` names, compares each with its size and digest, compares
every tensor's shape and dtype in the metadata with the model's, and checks the
small file's entries, all before anything changes; ``load`` then reads the
tensors into new memory (the model untouched if that fails) and applies them,
rolling back what was applied if applying fails.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..errors import CheckpointError
from .loading import _Undo, apply_training_state, check, read
from .saving import atomic_save, build_extra, digest

PathLike = Union[str, "os.PathLike[str]"]
EXTRA = "torchfit.pt"
METADATA = ".metadata"
_CHUNK = 1 << 22


def is_sharded_checkpoint(path: PathLike) -> bool:
    return os.path.isdir(path)


def save(model: Any, directory: PathLike, strategy: Any) -> None:
    """Write ``model``'s training state to ``directory`` (every rank calls it, each writes its shards).

    After DCP has written every rank's files, the writing rank records the size and sha256 of
    each (and of ``.metadata``) in ``torchfit.pt``, so that a load finds a missing, cut or
    damaged file before it reads a tensor.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    directory = os.fspath(directory)
    net_state, optim_state = get_state_dict(model.net, _optimizers(model))
    dcp.save({"net": net_state, "optimizer": optim_state}, checkpoint_id=directory)
    if strategy.writes_files:
        extra = build_extra(model)
        opt = model.optimizer
        extra["optimizer_class"] = type(opt).__name__ if opt is not None and opt.param_groups else None
        extra["shards"] = {name: _file_digest(os.path.join(directory, name))
                           for name in [METADATA] + _data_files(_metadata(directory))}
        extra["digest"] = digest(extra)
        atomic_save(extra, os.path.join(directory, EXTRA))
    _barrier()  # the directory is complete on every rank when this returns


def read_extra(directory: PathLike) -> dict:
    """The small file of counters and state inside a sharded directory, read and checked for its format."""
    directory = os.fspath(directory)
    extra_path = os.path.join(directory, EXTRA)
    if not os.path.exists(os.path.join(directory, METADATA)) or not os.path.exists(extra_path):
        raise CheckpointError(
            f"{directory!r} is a directory but not a sharded torchfit checkpoint (it needs DCP's .metadata and "
            f"{EXTRA}): write one with torchfit.distributed.save_sharded(model, directory)")
    return read(extra_path)


def read_checked(model: Any, directory: PathLike) -> Dict[str, Any]:
    """The small file of a sharded directory, after every check against ``model``; nothing is changed.

    Checked: the small file's entries (as for one file, with its tensor digest); every file
    DCP's ``.metadata`` names is there, as long as the data it holds needs, and matches the
    sha256 written with it (directories of earlier torchfit versions have no digests: size
    only); the net's keys, shapes and kinds of dtype; the optimizer's class and the shapes of
    its state. Every rank runs it on the same files, so all ranks agree.

    >>> # extra = read_checked(model, "ckpt/epoch2")   # raises CheckpointError naming the culprit
    """
    directory = os.fspath(directory)
    extra = read_extra(directory)
    check(extra, model, os.path.join(directory, EXTRA), tensors=False)
    shards = extra.get("shards")
    if shards is not None and not (isinstance(shards, Mapping) and all(
            isinstance(k, str) and isinstance(v, Mapping) for k, v in shards.items())):
        _fail(directory, f"{EXTRA}'s entry 'shards' is not a dict of file digests", _DAMAGED)
    if shards is not None and METADATA in shards:
        _check_file(directory, METADATA, shards[METADATA], 0)
    metadata = _metadata(directory)
    needed = _bytes_needed(metadata)
    for name in _data_files(metadata):
        _check_file(directory, name, None if shards is None else shards.get(name), needed.get(name, 0))
    _check_tensors(directory, model, metadata, extra)
    return extra


def load(model: Any, directory: PathLike, strategy: Any, extra: Optional[Mapping[str, Any]] = None) -> None:
    """Load a sharded directory into a compiled ``model`` (sharded or not, any world size).

    ``extra``: the result of ``read_checked`` when the caller already ran it; else it runs
    here. Nothing changes until every check passed; the tensors are read into new memory
    first, so a read that still fails (an I/O error) leaves the model as it was, and a
    failure while applying (Ctrl-C) rolls back what was applied where the strategy can
    (a net sharded across ranks is not copied aside).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    directory = os.fspath(directory)
    if extra is None:
        extra = read_checked(model, directory)
    # A sharded net's optimizer is pointed at its shards first (what every fit does too); then what the load
    # changes is set aside: before get_state_dict, which gives an optimizer without state its state.
    strategy.prepare_load(model.net, model.optimizer)
    undo = _Undo(model, strategy)
    try:
        optimizers = _optimizers(model)
        net_state, optim_state = get_state_dict(model.net, optimizers)
        state = _fresh({"net": net_state, "optimizer": optim_state})
        with warnings.catch_warnings():  # loading into one process is what this function is for
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(state, checkpoint_id=directory)
        set_state_dict(model.net, optimizers, model_state_dict=state["net"], optim_state_dict=state["optimizer"])
        apply_training_state(model, extra)
    except BaseException as exc:
        undo.restore()
        cause = _cause(exc)
        if isinstance(exc, CheckpointError):
            raise
        if isinstance(cause, (KeyboardInterrupt, SystemExit)):
            if cause is exc:
                raise
            raise cause from exc  # Ctrl-C inside DCP, which wraps it in its CheckpointException
        raise CheckpointError(
            f"{directory!r} passed every check but loading it failed ({type(cause).__name__}: "
            f"{_first_line(cause)}); the model was rolled back and nothing was changed. If it fails again, "
            "the directory is damaged in a way its digests do not cover: use another copy") from exc


# ------------------------------------------------------------- checking the files
_DAMAGED = ("The directory is damaged or incomplete (a full disk, an interrupted copy): use another copy of the "
            "checkpoint (e.g. the previous epoch's)")


def _fail(directory: str, problem: str, fix: str) -> None:
    raise CheckpointError(f"{directory!r}: {problem}. {fix} (nothing was changed)")


def _metadata(directory: str) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    try:
        return FileSystemReader(directory).read_metadata()
    except Exception as exc:
        raise CheckpointError(
            f"{directory!r}: DCP's {METADATA} could not be read ({type(exc).__name__}: {_first_line(exc)}). "
            f"{_DAMAGED} (nothing was changed)") from exc


def _data_files(metadata: Any) -> List[str]:
    """The files DCP's metadata says hold data, in name order."""
    return sorted({info.relative_path for info in metadata.storage_data.values()})


def _bytes_needed(metadata: Any) -> Dict[str, int]:
    """For each data file, where its last item ends (a shorter file was cut)."""
    ends: Dict[str, int] = {}
    for info in metadata.storage_data.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    return ends


def _file_digest(path: str) -> Dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return {"bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def _check_file(directory: str, name: str, written: Optional[Mapping[str, Any]], needed: int) -> None:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        _fail(directory, f"file {name!r}, which DCP's {METADATA} lists, is missing", _DAMAGED)
    size = os.path.getsize(path)
    if written is not None and size != written.get("bytes"):
        _fail(directory, f"file {name!r} has {size} bytes but had {written.get('bytes')} when it was written",
              _DAMAGED)
    if size < needed:
        _fail(directory, f"file {name!r} has {size} bytes but its data ends at byte {needed}: it was cut short",
              _DAMAGED)
    if written is not None and _file_digest(path)["sha256"] != written.get("sha256"):
        _fail(directory, f"file {name!r} does not match the sha256 written with it: its bytes changed after saving",
              _DAMAGED)


def _check_tensors(directory: str, model: Any, metadata: Any, extra: Mapping[str, Any]) -> None:
    """The metadata's tensors against the model's: the net's keys, shapes and dtypes, the optimizer's
    class and state shapes."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    saved = {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
    own = get_model_state_dict(model.net)  # the keys DCP writes (wrappers' prefixes taken off)
    ours = {k: v for k, v in own.items() if isinstance(v, torch.Tensor)}
    theirs = {k[len("net."):]: v for k, v in saved.items() if k.startswith("net.")}
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [f"{k}: checkpoint {tuple(theirs[k].size)} vs net {tuple(ours[k].shape)}"
              for k in ours if k in theirs and tuple(theirs[k].size) != tuple(ours[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing from the checkpoint", missing), ("only in the checkpoint", unexpected),
                             ("with other shapes", shapes)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label}: {shown}")
        _fail(directory, f"was saved from a different net; keys {'; '.join(parts)}",
              "Build the same architecture before loading")
    for k, mine in ours.items():
        dtype = theirs[k].properties.dtype
        if _kind(dtype) != _kind(mine.dtype):
            _fail(directory, f"the net's {k!r} is a {dtype} tensor where the net has {mine.dtype}",
                  "Build the same net (same dtypes) before loading")
    opt = model.optimizer
    if opt is None or not opt.param_groups:
        return
    saved_class = extra.get("optimizer_class")
    if isinstance(saved_class, str) and saved_class != type(opt).__name__:
        _fail(directory, f"holds the state of a {saved_class} optimizer; this model's optimizer is "
                         f"{type(opt).__name__}",
              f"Compile with the same kind of optimizer as the saved run (optimizer={saved_class}(...)) before loading")
    groups = {k.split(".")[2] for k in metadata.state_dict_metadata if k.startswith("optimizer.param_groups.")}
    if groups and len(groups) != len(opt.param_groups):
        _fail(directory, f"holds an optimizer with {len(groups)} parameter group(s); this model's optimizer has "
                         f"{len(opt.param_groups)}", "Compile with the same optimizer setup before loading")
    if type(opt).__name__ in ("Adafactor",):  # keeps row/column statistics of other shapes
        return
    names = sorted(ours, key=len, reverse=True)  # the longest parameter name that prefixes a state key
    for key, meta in saved.items():
        if not key.startswith("optimizer.state."):
            continue
        rest = key[len("optimizer.state."):]
        param = next((n for n in names if rest.startswith(n + ".")), None)
        if param is None:
            _fail(directory, f"holds optimizer state {rest!r} for a parameter this net does not have",
                  "Compile with the same net and optimizer setup as the saved run before loading")
        size = tuple(meta.size)
        if len(size) > 0 and size != tuple(ours[param].shape):
            _fail(directory, f"the optimizer's state {rest!r} has shape {size} but its parameter has "
                             f"{tuple(ours[param].shape)}",
                  "Compile with the same net and optimizer setup as the saved run before loading")


def _kind(dtype: torch.dtype) -> Tuple[bool, bool, bool]:
    return dtype.is_floating_point, dtype.is_complex, dtype == torch.bool


# ------------------------------------------------------------- loading
def _fresh(obj: Any) -> Any:
    """``obj`` with every container copied and every tensor replaced by new memory, for DCP to read
    into while the model stays as it is: a DTensor by one of the same placement (this rank's shard
    again, on its device), a plain tensor by one in host memory (``set_state_dict`` then copies it
    to the device, as loading one file does), so a net on a GPU needs no second copy there."""
    if isinstance(obj, torch.Tensor):
        if hasattr(obj, "device_mesh"):  # a DTensor: DCP reads this rank's part of it
            return torch.empty_like(obj)
        return torch.empty(obj.shape, dtype=obj.dtype, device="cpu")
    if isinstance(obj, Mapping):
        return {k: _fresh(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fresh(v) for v in obj]
    return obj


def _cause(exc: BaseException) -> BaseException:
    """The first rank's underlying exception of DCP's CheckpointException (a BaseException), else ``exc``."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, Mapping) and failures:
        first = next(iter(failures.values()))
        inner = first[0] if isinstance(first, tuple) else first
        if isinstance(inner, BaseException):
            return inner
    return exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _optimizers(model: Any) -> tuple:
    opt = model.optimizer
    return (opt,) if opt is not None and opt.param_groups else ()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
