"""Checkpoints: everything needed to continue training exactly, in a file that
``torch.load(..., weights_only=True)`` reads.

Owns the checkpoint's contents and format, the atomic write (temporary file,
fsync, ``os.replace``), checking a file before anything is changed on load, and
collecting / restoring the state that lives outside the net and the optimizer:
RNG states, the generators of the loaders a fit used, and the callbacks'
``state_dict``s. *When* to write is ``ModelCheckpoint``'s business; *when* to
load is the user's, or ``fit(resume_from=...)``'s through ``resume``.

What a full checkpoint holds (plain containers and tensors only, no pickled
objects)::

    {"torchfit_checkpoint": 1, "epoch": 2, "global_step": 14, "stop_training": False,
     "net": net.state_dict(), "optimizer": optimizer.state_dict(),
     "scaler": GradScaler.state_dict() or None, "precision": "32",
     "history": [{"epoch": 1, "loss": 0.9, ...}, ...], "step_history": [{...}, ...],
     "callbacks": {"EarlyStopping": {...}, "LearningRateScheduler": {...}},
     "loaders": {"dl_train": [generator states], "dl_val": [...]},
     "rng": {"torch": ..., "cuda": [...], "numpy": {...}, "python": {...}},
     "mid_epoch": None or {"epoch": 3}}

A net sharded by ``compile(strategy="fsdp")`` is gathered into whole tensors
first (every rank calls ``save``; rank 0 writes the file), so the file loads in a
single process; ``torchfit.distributed.save_sharded`` writes a
``torch.distributed.checkpoint`` directory instead, which ``load`` (and
``fit(resume_from=...)``) also reads.

The training state is taken as of the moment of saving during a fit (at an
epoch end that is after every callback's ``on_epoch_end``: ``ModelCheckpoint``
runs last), and as of the end of the last fit when saving outside one.
"""
from __future__ import annotations

import os
import random
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .errors import CheckpointError

PathLike = Union[str, "os.PathLike[str]"]
VERSION = 1
MARKER = "torchfit_checkpoint"


# ------------------------------------------------------------------ writing
def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash (even SIGKILL or power loss after the fsync) mid-write leaves the
    previous file intact, never a torn one.

    >>> # atomic_save({"w": torch.ones(2)}, "ckpt/last.pt")
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save(model: Any, path: PathLike, weights_only: bool = False) -> None:
    """Write ``model``'s full training state (or the net's ``state_dict`` alone) to ``path``.

    A sharded (FSDP) net is gathered first: every rank must call this, and rank 0 writes.
    """
    from .distributed import fsdp

    state = full_state(model)[0] if weights_only else build(model)
    if fsdp.is_sharded(model.net) and _rank() != 0:
        return
    atomic_save(state, path)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def full_state(model: Any) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, Any]]]:
    """The net's and the optimizer's ``state_dict`` with whole tensors, as one process holds them.

    A net sharded by ``compile(strategy="fsdp")`` is gathered first: a collective,
    so every rank must call this (only rank 0 gets the tensors; the others get
    empty dicts). Anywhere else these are ``model.net.state_dict()`` and
    ``model.optimizer.state_dict()``.

    >>> # net_state, optimizer_state = full_state(model)
    """
    from .distributed import fsdp

    if fsdp.is_sharded(model.net):
        return fsdp.full_state(model.net, model.optimizer)
    opt = model.optimizer
    return model.net.state_dict(), opt.state_dict() if opt is not None and opt.param_groups else None


def build(model: Any) -> Dict[str, Any]:
    """The checkpoint dict for ``model``: see the module docstring."""
    net, optimizer = full_state(model)
    return {**build_extra(model), "net": net, "optimizer": optimizer}


def build_extra(model: Any) -> Dict[str, Any]:
    """The checkpoint dict without the net and the optimizer: counters, history, callbacks, loaders, RNG."""
    run = model._run
    if run is not None and run.config.loaders:
        extra = training_state(model, run)  # inside a fit: live
    elif model._fit_state is not None:
        extra = model._fit_state  # the state at the end of the last fit (or the one loaded)
    else:
        extra = {"callbacks": {}, "loaders": {}, "rng": rng_state(), "mid_epoch": None}
    precision = model.precision
    scaler = precision.scaler if precision is not None else None
    return {
        MARKER: VERSION,
        "epoch": int(model.epoch),
        "global_step": int(model.global_step),
        # Set by a callback (early stopping) at this epoch's end: the run is over, resume_from trains no more.
        "stop_training": bool(model.stop_training),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "precision": precision.name if precision is not None else None,
        "history": [dict(row) for row in model._history_rows],
        "step_history": [dict(row) for row in model._step_rows],
        **extra,
    }


def training_state(model: Any, run: Any) -> Dict[str, Any]:
    """What a resumed fit needs besides the model's own state: callbacks, loaders, RNG."""
    return {
        "callbacks": callbacks_state(run.config.callbacks),
        "loaders": {name: [g.get_state() for g in _generators(dl)] for name, dl in run.config.loaders.items()
                    if dl is not None},
        "rng": rng_state(),
        # A fit working on an epoch it has not finished: the weights are mid-epoch.
        "mid_epoch": {"epoch": int(run.epoch)} if run.epoch > model.epoch else None,
    }


def callback_keys(callbacks: Iterable[Any]) -> List[Tuple[str, Any]]:
    """``(key, callback)`` pairs: the class name, numbered from the second of a class on (``Name_1``)."""
    seen: Dict[str, int] = {}
    pairs = []
    for cb in callbacks:
        name = type(cb).__name__
        n = seen.get(name, 0)
        seen[name] = n + 1
        pairs.append((name if n == 0 else f"{name}_{n}", cb))
    return pairs


def callbacks_state(callbacks: Iterable[Any]) -> Dict[str, dict]:
    states = {}
    for key, cb in callback_keys(callbacks):
        state = cb.state_dict()
        if state:
            states[key] = state
    return states


def _generators(loader: Any) -> List[torch.Generator]:
    """The distinct torch Generators a DataLoader draws from (its own, its sampler's, its batch sampler's)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    holders = (loader, getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None))
    found: List[torch.Generator] = []
    for holder in holders:
        g = getattr(holder, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def rng_state() -> Dict[str, Any]:
    """torch, CUDA (when present), numpy and Python ``random`` states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    cuda = state.get("cuda")
    # A CUDA checkpoint on a CPU-only machine: there is no CUDA generator to restore.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------ reading
def read(path: PathLike) -> Dict[str, Any]:
    """Load and check a torchfit checkpoint (on CPU, weights_only); raise CheckpointError if it is not one."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        # map_location: a checkpoint written on a GPU loads on a CPU-only machine;
        # load_state_dict then moves each tensor to where the model lives.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path!r} is not a torchfit checkpoint: torch.load(weights_only=True) could not read it "
            f"({type(exc).__name__}: {first_line}). Write checkpoints with model.save_checkpoint(path) or "
            "ModelCheckpoint"
        ) from exc
    if isinstance(ckpt, dict) and MARKER in ckpt:
        if ckpt[MARKER] != VERSION:
            raise CheckpointError(f"{path!r} is a torchfit checkpoint of format version {ckpt[MARKER]!r}; "
                                  f"this torchfit reads version {VERSION}")
        return ckpt
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(
            f"{path!r} holds a plain state_dict (the net's weights alone, e.g. ModelCheckpoint(weights_only=True)), "
            "not a full torchfit checkpoint. Load it with model.net.load_state_dict(torch.load(path))"
        )
    raise CheckpointError(
        f"{path!r} is not a torchfit checkpoint (a {type(ckpt).__name__} without the {MARKER!r} marker). "
        "Write checkpoints with model.save_checkpoint(path) or ModelCheckpoint"
    )


def load(model: Any, path: PathLike) -> None:
    """Restore everything ``save`` wrote into a compiled ``model``; the next ``fit`` continues from it.

    Everything is checked before anything changes: a mismatch leaves the model as it was.
    A directory is a sharded checkpoint (``torchfit.distributed.save_sharded``).
    """
    from .distributed import fsdp

    if os.path.isdir(path):
        from .distributed.checkpoints import load_sharded

        load_sharded(model, path)
        return
    ckpt = read(path)
    _check_net(model.net, ckpt["net"], path)
    opt = model.optimizer
    if ckpt["optimizer"] is not None and opt is not None:
        _check_optimizer(opt, ckpt["optimizer"], path)

    if fsdp.is_sharded(model.net):  # every rank loads the whole file and keeps its own shards
        fsdp.load_full_state(model.net, opt, ckpt["net"], ckpt["optimizer"])
    else:
        model.net.load_state_dict(ckpt["net"])
        if ckpt["optimizer"] is not None and opt is not None and opt.param_groups:
            opt.load_state_dict(ckpt["optimizer"])  # moves the state to the parameters' device
    apply_training_state(model, ckpt, path)


def apply_training_state(model: Any, ckpt: Mapping[str, Any], path: PathLike) -> None:
    """Restore what a checkpoint holds besides the net and the optimizer (counters, history, RNG, ...)."""
    scaler = model.precision.scaler if model.precision is not None else None
    if scaler is not None and ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    model.epoch = int(ckpt["epoch"])
    model.global_step = int(ckpt["global_step"])
    model.stop_training = bool(ckpt["stop_training"])
    model._history_rows = [dict(row) for row in ckpt["history"]]
    model._step_rows = [dict(row) for row in ckpt.get("step_history", [])]
    set_rng_state(ckpt["rng"])
    state = {"callbacks": ckpt["callbacks"], "loaders": ckpt["loaders"], "rng": ckpt["rng"],
             "mid_epoch": ckpt["mid_epoch"]}
    model._fit_state = state  # saving again before the next fit writes the same state
    model._resume_state = state  # the next fit hands loaders and callbacks their part
    if ckpt["mid_epoch"] is not None:
        warnings.warn(
            f"{os.fspath(path)!r} was written during epoch {ckpt['mid_epoch']['epoch']}, which had not finished: "
            f"the weights are part-way through it, but training continues with epoch {model.epoch + 1} from its "
            "first batch, so the result will differ from an uninterrupted run. Exact resume needs a checkpoint "
            "written at an epoch end (ModelCheckpoint writes only there)",
            RuntimeWarning, stacklevel=4,
        )


def _check_net(net: torch.nn.Module, saved: Mapping[str, torch.Tensor], path: PathLike) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [f"{k}: checkpoint {tuple(saved[k].shape)} vs net {tuple(own[k].shape)}"
              for k in own if k in saved and isinstance(saved[k], torch.Tensor) and saved[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing from the checkpoint", missing), ("only in the checkpoint", unexpected),
                         ("with other shapes", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            parts.append(f"{label}: {shown}")
    raise CheckpointError(
        f"{os.fspath(path)!r} was saved from a different net; keys {'; '.join(parts)}. Build the same "
        "architecture before loading (nothing was changed)"
    )


def _check_optimizer(opt: torch.optim.Optimizer, saved: Mapping[str, Any], path: PathLike) -> None:
    ours = [len(g["params"]) for g in opt.param_groups]
    theirs = [len(g["params"]) for g in saved.get("param_groups", [])]
    if ours != theirs:
        raise CheckpointError(
            f"{os.fspath(path)!r} holds an optimizer with parameter groups of sizes {theirs}; this model's "
            f"optimizer has {ours}. Compile with the same optimizer setup before loading (nothing was changed)"
        )


# --------------------------------------------------- handing state to a fit
def resume(model: Any, path: PathLike, epochs: int) -> Tuple[int, Optional[str]]:
    """``fit(resume_from=path)``: load ``path`` if it exists; returns the epochs left of the run's
    total (``epochs``) and the line to print, or ``(epochs, None)`` for a fresh start (Keras'
    BackupAndRestore)."""
    if not os.path.exists(path):
        return epochs, None
    model.load_checkpoint(path)
    message = f"Resuming from {os.fspath(path)}: {model.epoch} of {epochs} epoch(s) done."
    if model.stop_training:  # e.g. early stopping ended the saved run: it is finished
        epochs = model.epoch
        message += " Training had been stopped (model.stop_training) at that epoch: nothing to resume."
    return max(0, epochs - model.epoch), message


def restore_loaders(state: Mapping[str, Any], loaders: Mapping[str, Any]) -> None:
    """Put the saved generator states back into the loaders a resumed fit got."""
    for name, saved in state.get("loaders", {}).items():
        loader = loaders.get(name)
        if loader is None:
            continue
        gens = _generators(loader)
        if len(gens) != len(saved):
            warnings.warn(
                f"the checkpoint holds {len(saved)} random generator state(s) for {name} but this {name} has "
                f"{len(gens)}: its shuffling will not continue exactly. Build {name} as in the saved run "
                "(e.g. DataLoader(..., shuffle=True, generator=torch.Generator().manual_seed(0)))",
                RuntimeWarning, stacklevel=4,
            )
            continue
        for g, s in zip(gens, saved):
            g.set_state(s)


def restore_callbacks(state: Mapping[str, Any], callbacks: Sequence[Any]) -> None:
    """Hand each callback its saved state (matched by class name and order); warn about leftovers."""
    saved = dict(state.get("callbacks", {}))
    for key, cb in callback_keys(callbacks):
        if key in saved:
            cb.load_state_dict(saved.pop(key))
    if saved:
        warnings.warn(
            f"the checkpoint holds state for callback(s) {sorted(saved)} that this fit does not have; it was "
            "ignored. Pass the same callbacks as the saved run to continue their counters",
            RuntimeWarning, stacklevel=4,
        )
