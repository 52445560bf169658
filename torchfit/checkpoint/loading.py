"""Reading checkpoints: read, check every entry against the model, then apply (or roll back);
``Resume`` splits that in two for ``fit(resume_from=...)``."""
from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional

import torch

from ..errors import DISTRIBUTION, CheckpointError
from .saving import _PLAIN_SCALARS, MARKER, VERSION, PathLike, _tensors, _top, tensor_sha256
from .state import rng_state, set_rng_state


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
            # A writer raises the version only for a change an older reader would get wrong.
            newer = type(ckpt[MARKER]) is int and ckpt[MARKER] > VERSION
            why = (f"It was written by a newer torchfit, whose format this version would read wrongly: upgrade "
                   f"torchfit (pip install -U {DISTRIBUTION}) to load it" if newer
                   else "No torchfit writes that version: the file is damaged; use another copy")
            raise CheckpointError(f"{path!r} is a torchfit checkpoint of format version {ckpt[MARKER]!r}; this "
                                  f"torchfit reads version {VERSION}. {why}")
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


def read_checked(model: Any, path: PathLike) -> Dict[str, Any]:
    """The checkpoint at ``path``, read and checked against ``model`` (``check``); nothing is applied.

    With ``apply`` this splits ``load`` in two, so that a caller (``fit(resume_from=...)``) can
    run its own checks (callbacks' paths and states) between reading and applying.
    """
    ckpt = read(path)
    check(ckpt, model, path)
    return ckpt


def apply(model: Any, ckpt: Mapping[str, Any], path: PathLike, strategy: Any, stacklevel: int = 3) -> None:
    """Put a checkpoint from ``read_checked`` into ``model``; roll everything back if that fails."""
    undo = _Undo(model, strategy)
    net_state = ckpt["net"]
    if ckpt.get("trainable_only"):  # what trains, onto the base the net already has
        net_state = {**model.net.state_dict(), **net_state}
    try:
        strategy.load_full_state(model.net, model.optimizer, net_state, ckpt["optimizer"])
        apply_training_state(model, ckpt)
    except BaseException as exc:
        undo.restore()
        if isinstance(exc, Exception) and not isinstance(exc, CheckpointError):
            raise CheckpointError(
                f"{os.fspath(path)!r} passed every check but applying it failed ({type(exc).__name__}: {exc}); "
                "the model was rolled back and nothing was changed"
            ) from exc
        raise
    if ckpt["mid_epoch"] is not None and "positions" not in ckpt["mid_epoch"]:
        warnings.warn(
            f"{os.fspath(path)!r} was written during epoch {ckpt['mid_epoch']['epoch']}, which had not finished: "
            f"the weights are part-way through it, but training continues with epoch {model.epoch + 1} from its "
            "first batch, so the result will differ from an uninterrupted run. Exact resume needs a checkpoint "
            "written at an epoch end or by a callback that saves mid-epoch (ModelCheckpoint(save_freq=N), "
            "BackupAndRestore, fit's preemption handler; a callback of your own sets saves_mid_epoch = True)",
            RuntimeWarning, stacklevel=stacklevel,
        )


def apply_training_state(model: Any, ckpt: Mapping[str, Any]) -> None:
    """What a checkpoint holds besides the net and the optimizer, put back: counters, history, RNG, state
    for the next fit's loaders and callbacks."""
    scaler = model.precision.scaler if model.precision is not None else None
    if scaler is not None and ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    model.stop_training = bool(ckpt["stop_training"])
    model.training_state.load_checkpoint_entries(ckpt)
    set_rng_state(ckpt["rng"])


class _Undo:
    """What applying a checkpoint changes, kept aside (the net's tensors as CPU copies) to be put back
    if it fails."""

    def __init__(self, model: Any, strategy: Any):
        self.model = model
        self.net = strategy.copy_aside(model.net)  # None where the strategy cannot (a sharded net)
        opt = model.optimizer
        # load_state_dict builds new state and groups: the old objects, held here, stay as they were
        # (the state dict copied: DCP's get_state_dict fills an empty one in place).
        self.opt = (copy.copy(opt.state), opt.param_groups) if opt is not None else None
        scaler = model.precision.scaler if model.precision is not None else None
        self.scaler = scaler.state_dict() if scaler is not None else None
        self.stop_training = model.stop_training
        self.state = model.training_state.copy()
        self.rng = rng_state()

    def restore(self) -> None:
        model = self.model
        if self.net is not None:
            model.net.load_state_dict(self.net)
        if self.opt is not None:
            model.optimizer.__setstate__({"state": self.opt[0], "param_groups": self.opt[1]})
        if self.scaler:
            model.precision.scaler.load_state_dict(self.scaler)
        model.stop_training = self.stop_training
        model.training_state.restore(self.state)
        set_rng_state(self.rng)


# ------------------------------------------------------------- checking
_REQUIRED = ("epoch", "global_step", "stop_training", "net", "optimizer", "scaler", "precision", "history",
             "callbacks", "loaders", "rng", "mid_epoch")
_OPTIONAL = ("step_history", "optimizer_class", "digest",  # absent from files of earlier torchfit versions
             "trainable_only",  # save_checkpoint(trainable_only=True): the net's trainable part alone
             "train_stream",  # steps_per_epoch's iterator carried across epochs
             "shards")  # a sharded directory's small file: each DCP file's size and sha256 (``sharded``)
_TENSOR_ENTRIES = ("net", "optimizer")  # what a sharded directory keeps in DCP's files, not in its small file
_CPU_STATE_BYTES = torch.get_rng_state().numel()


class _Checker:
    def __init__(self, path: PathLike):
        self.path = os.fspath(path)

    def fail(self, entry: str, problem: str, fix: str = "") -> None:
        fix = fix or ("The file is damaged or was not written by torchfit's save_checkpoint / ModelCheckpoint: "
                      "use another copy (e.g. the previous epoch's file)")
        raise CheckpointError(f"{self.path!r}: entry {entry} {problem}. {fix} (nothing was changed)")

    def kind(self, entry: str, value: Any, expected: str, ok: bool) -> None:
        if not ok:
            self.fail(entry, f"should be {expected} but is {_shown(value)}")

    def count(self, entry: str, value: Any) -> None:
        self.kind(entry, value, "an int >= 0", type(value) is int and value >= 0)

    def rows(self, entry: str, rows: Any) -> None:
        self.kind(entry, rows, "a list of dicts (one per epoch)", isinstance(rows, list))
        for i, row in enumerate(rows):
            self.kind(f"{entry}[{i}]", row, "a dict of figures", isinstance(row, Mapping))
            for k, v in row.items():
                self.kind(f"{entry}[{i}] (a key)", k, "a str", isinstance(k, str))
                self.kind(f"{entry}[{i}][{k!r}]", v, "a number (or str, bool, None)", type(v) in _PLAIN_SCALARS)


def _shown(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    text = repr(value)
    return f"a {type(value).__name__} ({text[:60] + '...' if len(text) > 60 else text})"


def check(ckpt: Mapping[str, Any], model: Any, path: PathLike, tensors: bool = True) -> None:
    """Raise CheckpointError naming the first entry of ``ckpt`` that ``model`` cannot take; change nothing.

    Checked: every entry is present with the right type; the net's keys, shapes
    and kinds of dtype; the optimizer's class, parameter groups and state shapes;
    the grad scaler's state; RNG and loader generator states; history rows; the
    callbacks' state is a dict per callback; and every tensor matches the digest
    written with it (flipped bytes name the tensor). ``tensors=False``: a sharded
    directory's small file, without the net and the optimizer (``sharded`` checks those).
    """
    c = _Checker(path)
    missing = [k for k in _REQUIRED if k not in ckpt and (tensors or k not in _TENSOR_ENTRIES)]
    if missing:
        c.fail(", ".join(repr(k) for k in missing), "is missing" if len(missing) == 1 else "are missing")
    _warn_unknown(c, "entries", [repr(k) for k in ckpt if k not in _REQUIRED + _OPTIONAL + (MARKER,)])
    c.count("'epoch'", ckpt["epoch"])
    c.count("'global_step'", ckpt["global_step"])
    c.kind("'stop_training'", ckpt["stop_training"], "True or False", type(ckpt["stop_training"]) is bool)
    partial = ckpt.get("trainable_only", False)
    c.kind("'trainable_only'", partial, "True or False", type(partial) is bool)
    if tensors:
        _check_net(c, model.net, ckpt["net"], partial)
        _check_optimizer(c, model.optimizer, ckpt)
    scaler = ckpt["scaler"]
    c.kind("'scaler'", scaler, "None or a GradScaler state dict", scaler is None or isinstance(scaler, Mapping))
    for k, v in (scaler or {}).items():
        c.kind(f"'scaler'[{k!r}]", v, "a number", type(v) in (int, float, bool)
               or (isinstance(v, torch.Tensor) and v.numel() == 1))
    c.kind("'precision'", ckpt["precision"], "None or a str such as '32'",
           ckpt["precision"] is None or isinstance(ckpt["precision"], str))
    c.rows("'history'", ckpt["history"])
    if "step_history" in ckpt:
        c.rows("'step_history'", ckpt["step_history"])
    callbacks = ckpt["callbacks"]
    c.kind("'callbacks'", callbacks, "a dict of callback states", isinstance(callbacks, Mapping))
    for key, state in callbacks.items():
        c.kind(f"'callbacks'[{key!r}]", state, "a dict (the callback's state_dict)",
               isinstance(key, str) and isinstance(state, Mapping))
    loaders = ckpt["loaders"]
    c.kind("'loaders'", loaders, "a dict of generator-state lists", isinstance(loaders, Mapping))
    for name, states in loaders.items():
        c.kind(f"'loaders'[{name!r}]", states, "a list of generator states", isinstance(states, list))
        for i, s in enumerate(states):
            c.kind(f"'loaders'[{name!r}][{i}]", s,
                   f"a uint8 tensor of {_CPU_STATE_BYTES} bytes (a torch.Generator state)",
                   isinstance(s, torch.Tensor) and s.dtype == torch.uint8 and s.shape == (_CPU_STATE_BYTES,))
    _check_rng(c, ckpt["rng"])
    _check_mid_epoch(c, ckpt["mid_epoch"])
    stream = ckpt.get("train_stream")
    c.kind("'train_stream'", stream, "None or a dict with origin and drawn", stream is None or (
        isinstance(stream, Mapping) and {"origin", "drawn"} <= set(stream) and isinstance(stream["origin"], Mapping)))
    if stream is not None:
        c.count("'train_stream'['drawn']", stream["drawn"])
        _check_origin(c, stream["origin"], "'train_stream'['origin']")
    _check_digest(c, ckpt)


def _check_net(c: _Checker, net: torch.nn.Module, saved: Any, partial: bool = False) -> None:
    c.kind("'net'", saved, "the net's state_dict (a dict of tensors)", isinstance(saved, Mapping))
    for k, v in saved.items():
        c.kind(f"'net'[{k!r}]", v, "a tensor", isinstance(k, str) and isinstance(v, torch.Tensor))
    own = net.state_dict()
    if partial:  # a trainable-only file: it must hold every parameter that trains here
        trains = {name for name, p in net.named_parameters(remove_duplicate=False) if p.requires_grad}
        missing = sorted(k for k in trains if k in own and k not in saved)
        if missing:
            shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
            raise CheckpointError(
                f"{c.path!r} holds the trainable part of a net (save_checkpoint(trainable_only=True)) without "
                f"{shown}, which train here. Freeze and wrap the base as in the saved run (the same LoRA config, "
                "the same layers frozen) before loading (nothing was changed)")
        own = {k: v for k, v in own.items() if k in saved or k in trains}
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [f"{k}: checkpoint {tuple(saved[k].shape)} vs net {tuple(own[k].shape)}"
              for k in own if k in saved and saved[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing from the checkpoint", missing), ("only in the checkpoint", unexpected),
                             ("with other shapes", shapes)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(
            f"{c.path!r} was saved from a different net; keys {'; '.join(parts)}. Build the same "
            "architecture before loading (nothing was changed)"
        )
    for k, mine in own.items():
        theirs = saved[k].dtype
        if (theirs.is_floating_point, theirs.is_complex, theirs == torch.bool) != (
                mine.dtype.is_floating_point, mine.dtype.is_complex, mine.dtype == torch.bool):
            c.fail(f"'net'[{k!r}]", f"is a {theirs} tensor where the net has {mine.dtype}",
                   "Build the same net (same dtypes) before loading")


def _check_optimizer(c: _Checker, opt: Optional[torch.optim.Optimizer], ckpt: Mapping[str, Any]) -> None:
    saved, saved_class = ckpt["optimizer"], ckpt.get("optimizer_class")
    c.kind("'optimizer_class'", saved_class, "None or the optimizer's class name",
           saved_class is None or isinstance(saved_class, str))
    if saved is None:
        return
    c.kind("'optimizer'", saved, "None or an optimizer state_dict ({'state': ..., 'param_groups': [...]})",
           isinstance(saved, Mapping) and set(saved) >= {"state", "param_groups"})
    groups, state = saved["param_groups"], saved["state"]
    c.kind("'optimizer'['param_groups']", groups, "a list of dicts", isinstance(groups, list)
           and all(isinstance(g, Mapping) for g in groups))
    c.kind("'optimizer'['state']", state, "a dict", isinstance(state, Mapping))
    ids = []
    for i, g in enumerate(groups):
        params = g.get("params")
        c.kind(f"'optimizer'['param_groups'][{i}]['params']", params, "a list of parameter indices",
               isinstance(params, list) and all(type(p) is int for p in params))
        lr = g.get("lr")
        c.kind(f"'optimizer'['param_groups'][{i}]['lr']", lr, "a number >= 0", (
            type(lr) in (int, float) and lr >= 0) or (isinstance(lr, torch.Tensor) and lr.numel() == 1))
        ids += params
    if opt is None or not opt.param_groups:
        return
    if saved_class is not None and saved_class != type(opt).__name__:
        c.fail("'optimizer'", f"holds the state of a {saved_class} optimizer; this model's optimizer is "
                              f"{type(opt).__name__}",
               f"Compile with the same kind of optimizer as the saved run (optimizer={saved_class}(...)) before "
               "loading")
    ours = [len(g["params"]) for g in opt.param_groups]
    theirs = [len(g["params"]) for g in groups]
    if ours != theirs:
        raise CheckpointError(
            f"{c.path!r} holds an optimizer with parameter groups of sizes {theirs}; this model's "
            f"optimizer has {ours}. Compile with the same optimizer setup before loading (nothing was changed)"
        )
    if sorted(ids) != list(range(len(ids))):
        c.fail("'optimizer'['param_groups']", f"numbers its parameters {ids}, not 0..{len(ids) - 1} once each")
    params = [p for g in opt.param_groups for p in g["params"]]
    by_id = dict(zip(ids, params))
    factored = type(opt).__name__ in ("Adafactor",)  # keeps row/column statistics of other shapes
    for key, per_param in state.items():
        where = f"'optimizer'['state'][{key!r}]"
        c.kind(where, per_param, "a dict for one of the optimizer's parameters",
               key in by_id and isinstance(per_param, Mapping))
        for name, value in per_param.items():
            if (isinstance(value, torch.Tensor) and value.dim() > 0 and not factored
                    and value.shape != by_id[key].shape):
                c.fail(f"{where}[{name!r}]", f"has shape {tuple(value.shape)} but its parameter has "
                                             f"{tuple(by_id[key].shape)}",
                       "Compile with the same net and optimizer setup as the saved run before loading")


def _warn_unknown(c: _Checker, what: str, names: List[str], stacklevel: int = 6) -> None:
    """Entries a newer torchfit wrote that this one does not know: ignored, with a warning naming them.

    Ignoring them is safe by the format's rule: a writer whose new entries would change what an
    older reader does raises the format version instead (refused in ``read``).
    """
    if names:
        warnings.warn(
            f"{c.path!r} holds {what} this torchfit does not know: {', '.join(sorted(names))} (written by a newer "
            "torchfit?); they were ignored and the rest was loaded. Upgrade torchfit to use them",
            RuntimeWarning, stacklevel=stacklevel)  # the caller of load_checkpoint


_RNG_KEYS = ("torch", "numpy", "python", "cuda")
_MID_EPOCH_KEYS = ("epoch", "positions")


def _check_mid_epoch(c: _Checker, mid: Any) -> None:
    """None at an epoch's end; else the epoch in progress and, for an exact resume, each rank's position
    (``torchfit.resuming``: batches done, RNG and loader origin, running figures, accumulation window)."""
    c.kind("'mid_epoch'", mid, "None or {'epoch': int, 'positions': [...]}", mid is None or (
        isinstance(mid, Mapping) and "epoch" in mid and type(mid["epoch"]) is int))
    if mid is not None:  # more: a newer torchfit's record of the position
        _warn_unknown(c, "parts of the mid-epoch position", [f"'mid_epoch'[{k!r}]" for k in mid
                                                            if k not in _MID_EPOCH_KEYS], 7)
    if mid is None or "positions" not in mid:
        return
    positions = mid["positions"]
    c.kind("'mid_epoch'['positions']", positions, "a list with one position per rank",
           isinstance(positions, list) and len(positions) > 0)
    for r, pos in enumerate(positions):
        at = f"'mid_epoch'['positions'][{r}]"
        c.kind(at, pos, "a dict with batch, origin, rng, tracker, window", isinstance(pos, Mapping)
               and {"batch", "origin", "rng", "tracker", "window"} <= set(pos))
        c.count(f"{at}['batch']", pos["batch"])
        c.count(f"{at}['drawn']", pos.get("drawn"))
        _check_origin(c, pos["origin"], f"{at}['origin']")
        _check_rng(c, pos["rng"], f"{at}['rng']")
        c.kind(f"{at}['tracker']", pos["tracker"], "a dict of running figures", isinstance(pos["tracker"], Mapping)
               and {"loss", "metrics", "extra"} <= set(pos["tracker"]))
        window = pos["window"]
        c.kind(f"{at}['window']", window, "None or a dict with micro, window_samples, grads", window is None or (
            isinstance(window, Mapping) and {"micro", "window_samples", "grads"} <= set(window)))


def _check_origin(c: _Checker, origin: Any, at: str) -> None:
    c.kind(at, origin, "a dict with rng and loaders", isinstance(origin, Mapping)
           and {"rng", "loaders"} <= set(origin) and isinstance(origin["loaders"], list))
    for i, g in enumerate(origin["loaders"]):
        c.kind(f"{at}['loaders'][{i}]", g, f"a uint8 tensor of {_CPU_STATE_BYTES} bytes",
               isinstance(g, torch.Tensor) and g.dtype == torch.uint8 and g.shape == (_CPU_STATE_BYTES,))
    _check_rng(c, origin["rng"], f"{at}['rng']")


def _check_rng(c: _Checker, rng: Any, where: str = "'rng'") -> None:
    c.kind(where, rng, "a dict of random states ('torch', 'numpy', 'python')",
           isinstance(rng, Mapping) and {"torch", "numpy", "python"} <= set(rng))
    _warn_unknown(c, "random states", [f"{where}[{k!r}]" for k in rng if k not in _RNG_KEYS], 7)
    c.kind(f"{where}['torch']", rng["torch"], f"a uint8 tensor of {_CPU_STATE_BYTES} bytes",
           isinstance(rng["torch"], torch.Tensor) and rng["torch"].dtype == torch.uint8
           and rng["torch"].shape == (_CPU_STATE_BYTES,))
    npst = rng["numpy"]
    c.kind(f"{where}['numpy']", npst, "a dict with kind, keys (624 int64), pos, has_gauss, cached_gaussian",
           isinstance(npst, Mapping) and {"kind", "keys", "pos", "has_gauss", "cached_gaussian"} <= set(npst)
           and npst["kind"] == "MT19937" and isinstance(npst["keys"], torch.Tensor)
           and npst["keys"].shape == (624,) and type(npst["pos"]) is int and 0 <= npst["pos"] <= 624
           and type(npst["has_gauss"]) is int and type(npst["cached_gaussian"]) is float)
    py = rng["python"]
    c.kind(f"{where}['python']", py, "a dict with version, state (625 ints), gauss_next",
           isinstance(py, Mapping) and {"version", "state", "gauss_next"} <= set(py)
           and type(py["version"]) is int and isinstance(py["state"], list) and len(py["state"]) == 625
           and all(type(v) is int for v in py["state"]) and (py["gauss_next"] is None
                                                            or type(py["gauss_next"]) is float))
    cuda = rng.get("cuda")
    c.kind(f"{where}['cuda']", cuda, "a list of uint8 tensors", cuda is None or (
        isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)))
    # The exact test is to set them: do so, and put this process's states back at once.
    now = rng_state()
    try:
        set_rng_state(rng)
    except Exception as exc:
        set_rng_state(now)
        c.fail(where, f"cannot be restored ({type(exc).__name__}: {exc})")
    set_rng_state(now)


def _check_digest(c: _Checker, ckpt: Mapping[str, Any]) -> None:
    if "digest" not in ckpt:  # a file from before digests: nothing to compare with
        return
    saved = ckpt["digest"]
    c.kind("'digest'", saved, "a dict of sha256 hex strings", isinstance(saved, Mapping)
           and all(isinstance(k, str) and isinstance(v, str) for k, v in saved.items()))
    seen = set()
    for top, value in _top(ckpt):
        for rest, t in _tensors(value, ""):
            name = f"{top}{rest}"
            seen.add(name)
            if name not in saved:
                c.fail(repr(top) + rest, "is a tensor the digest does not list")
            if tensor_sha256(t) != saved[name]:
                c.fail(repr(top) + rest, "does not match the digest written with it: its bytes changed after "
                                         "saving (a damaged disk or copy)")
    extra = sorted(set(saved) - seen)
    if extra:
        c.fail("'digest'", f"lists tensors the file does not hold: {extra[:5]}")
