"""Writing checkpoints: what a full checkpoint holds, in plain values, with a digest, atomically."""
from __future__ import annotations

import hashlib
import numbers
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import check_writable, replace_atomically
from .state import loader_generators, callbacks_state, rng_state


PathLike = Union[str, "os.PathLike[str]"]
VERSION = 1
MARKER = "torchfit_checkpoint"


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash (even SIGKILL or power loss after the fsync) mid-write leaves the
    previous file intact, never a torn one.

    >>> # atomic_save({"w": torch.ones(2)}, "ckpt/last.pt")
    """
    with replace_atomically(path, "wb") as f:
        torch.save(obj, f)


def save(model: Any, path: PathLike, strategy: Any, weights_only: bool = False,
         owner: str = "save_checkpoint", trainable_only: bool = False) -> None:
    """Write ``model``'s full training state (or the net's ``state_dict`` alone) to ``path``.

    ``strategy`` (``torchfit.distributed``) supplies whole tensors and says whether this
    process writes. Everything is checked first (the path can be written, every value is
    one ``weights_only`` loading accepts); a refusal leaves any existing file as it was.
    ``trainable_only``: of the net, only the parameters that train and the buffers (``trainable_part``).
    """
    if not isinstance(trainable_only, bool):
        raise TypeError(f"trainable_only must be True or False; got {trainable_only!r}")
    writes = strategy.writes_files
    if writes:
        check_writable(owner, path)
    elif not strategy.saves_collectively:  # another rank writes; this one only hands in its position
        if model.run is not None and not weights_only:
            mid_epoch(model, model.run)
        return
    if weights_only:
        state = full_state(model, strategy)[0]
        state = trainable_part(model.net, state) if trainable_only and state is not None else state
    else:
        state = build(model, strategy, trainable_only)
    if writes:
        atomic_save(state, path)


def full_state(model: Any, strategy: Any) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, Any]]]:
    """The net's and the optimizer's ``state_dict`` with whole tensors, as one process holds them.

    The strategy gathers a sharded net first (a collective then: every rank calls this, and
    only the writing rank gets the tensors). In one process these are
    ``model.net.state_dict()`` and ``model.optimizer.state_dict()``.

    >>> # net_state, optimizer_state = full_state(model, strategy)
    """
    return strategy.full_state(model.net, model.optimizer)


def trainable_part(net: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The entries of ``net``'s ``state`` that a fit changes: parameters with ``requires_grad`` (LoRA
    adapters, a new head) and buffers (BatchNorm statistics); a frozen base is left out.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> _ = net[0].requires_grad_(False)
    >>> list(trainable_part(net, net.state_dict()))
    ['1.weight', '1.bias']
    """
    frozen = {name for name, p in net.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v for k, v in state.items() if k not in frozen}


def build(model: Any, strategy: Any, trainable_only: bool = False) -> Dict[str, Any]:
    """The checkpoint dict for ``model``: see the package docstring. ``trainable_only``: the net's
    ``trainable_part`` alone, marked ``"trainable_only": True`` (loaded back onto the same base)."""
    net, optimizer = full_state(model, strategy)
    opt = model.optimizer
    ckpt = build_extra(model)
    if trainable_only:
        net = trainable_part(model.net, net) if net is not None else None
        ckpt["trainable_only"] = True
    ckpt.update(net=net, optimizer=optimizer,
                optimizer_class=type(opt).__name__ if opt is not None and opt.param_groups else None)
    ckpt["digest"] = digest(ckpt)
    return ckpt


def build_extra(model: Any) -> Dict[str, Any]:
    """The checkpoint dict without the net and the optimizer: counters, history, callbacks, loaders, RNG
    (what a sharded ``torch.distributed.checkpoint`` directory keeps beside its tensors)."""
    state = model.training_state
    run = model.run
    if run is not None and run.config.loaders:
        extra = run_state(model, run)  # inside a fit: live
    elif state.last_fit is not None:
        extra = state.last_fit  # the state at the end of the last fit (or the one loaded)
    else:
        extra = {"callbacks": {}, "loaders": {}, "rng": rng_state(), "mid_epoch": None, "train_stream": None}
    precision = model.precision
    scaler = precision.scaler if precision is not None else None
    entries = state.checkpoint_entries()
    ckpt = {
        MARKER: VERSION,
        "epoch": entries["epoch"],
        "global_step": entries["global_step"],
        # Set by a callback (early stopping) at this epoch's end: the run is over, resume_from trains no more.
        "stop_training": bool(model.stop_training),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "precision": precision.name if precision is not None else None,
        "history": _plain_rows(entries["history"], "model.history", "history"),
        "step_history": _plain_rows(entries["step_history"], "model.step_history", "step_history"),
        **extra,
    }
    # Callbacks' state is the one part written by code torchfit does not own: the one boundary where
    # it becomes plain values (a numpy score an EarlyStopping kept would make the file unloadable).
    ckpt["callbacks"] = {key: to_plain(state, f"callback {key}", f"callbacks[{key!r}]")
                         for key, state in ckpt["callbacks"].items()}
    return ckpt


def run_state(model: Any, run: Any) -> Dict[str, Any]:
    """What a resumed fit needs besides the model's own state: callbacks, loaders, RNG."""
    return {
        "callbacks": callbacks_state(run.config.callbacks),
        "loaders": {name: [g.get_state() for g in loader_generators(dl)] for name, dl in run.config.loaders.items()
                    if dl is not None},
        "rng": rng_state(),
        # A fit working on an epoch it has not finished: the weights are mid-epoch.
        "mid_epoch": mid_epoch(model, run),
        # steps_per_epoch: the iterator fit carries across epochs (its origin, the batches it gave)
        "train_stream": run.stream_state(),
    }


def mid_epoch(model: Any, run: Any) -> Optional[Dict[str, Any]]:
    """None at an epoch's end; else the epoch in progress and, where the fit keeps positions
    (``torchfit.resuming``), every rank's: batches done, RNG and loader origin, running figures,
    accumulation window. Under torchrun this gathers (every rank saves mid-epoch together)."""
    if run.epoch <= model.epoch:
        return None
    mid: Dict[str, Any] = {"epoch": int(run.epoch)}
    if run.keeps_position:
        positions = run.config.strategy.gather_positions(run.position_state())
        if all(p is not None for p in positions):
            mid["positions"] = positions
    return mid


_PLAIN_SCALARS = (bool, int, float, str, type(None))


def to_plain(value: Any, owner: str, where: str) -> Any:
    """``value`` with every leaf a Python number, str, bool, None or tensor (numpy scalars become Python ones).

    >>> to_plain({"best": np.float64(0.5), "seen": [np.int64(3)]}, "callback EarlyStopping", "state")
    {'best': 0.5, 'seen': [3]}

    Anything else (an object, a numpy array, a function) raises CheckpointError
    naming ``owner`` and where in its value it sits: such a file would not load
    with ``torch.load(weights_only=True)``.
    """
    if type(value) in _PLAIN_SCALARS:
        return value
    if isinstance(value, torch.Tensor):
        return value.detach() if type(value) is not torch.Tensor else value
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        return to_plain(value.item(), owner, where)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            key = to_plain(k, owner, f"{where} (a key)")
            if isinstance(key, torch.Tensor):
                _refuse(k, owner, f"{where} (a key)")
            out[key] = to_plain(v, owner, f"{where}[{k!r}]")
        return out
    if isinstance(value, torch.Size):
        return value
    if isinstance(value, list):
        return [to_plain(v, owner, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):  # a namedtuple's class would need pickling: a plain tuple
        return tuple(to_plain(v, owner, f"{where}[{i}]") for i, v in enumerate(value))
    _refuse(value, owner, where)


def _plain_rows(rows: Sequence[Mapping[str, Any]], owner: str, where: str) -> List[Dict[str, Any]]:
    """History rows as dicts of Python scalars (what ``check`` accepts): a one-element tensor becomes
    its number; anything else that is not a scalar is refused."""
    out = []
    for i, row in enumerate(rows):
        plain = {}
        for k, v in row.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            v = to_plain(v, owner, f"{where}[{i}][{k!r}]")
            if type(v) not in _PLAIN_SCALARS:
                _refuse(v, owner, f"{where}[{i}][{k!r}]")
            plain[k] = v
        out.append(plain)
    return out


def _refuse(value: Any, owner: str, where: str) -> None:
    kind = type(value).__module__ + "." + type(value).__qualname__
    fix = ("x.tolist() or torch.tensor(x)" if isinstance(value, np.ndarray) else "float(x), int(x), str(x)")
    raise CheckpointError(
        f"{owner} holds {where} = a {kind}, which a checkpoint cannot hold: checkpoints keep only Python "
        "numbers, str, bool, None, lists, tuples, dicts and tensors, so that torch.load(weights_only=True) "
        f"reads them. Convert it where it is made ({fix}); nothing was written"
    )


def _tensors(obj: Any, where: str) -> Iterable[Tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor in ``obj``, named like ``net['0.weight']``."""
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{where}[{i}]")


def _top(ckpt: Mapping[str, Any]) -> Iterable[Tuple[str, Any]]:
    return ((k, v) for k, v in ckpt.items() if k != "digest")


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (computed on the CPU), as hex.

    >>> tensor_sha256(torch.zeros(2)) == tensor_sha256(torch.zeros(2)) != tensor_sha256(torch.zeros(3))
    True
    """
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_quantized:
        t = t.int_repr()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def digest(ckpt: Mapping[str, Any]) -> Dict[str, str]:
    """``{tensor name: sha256}`` for every tensor of the checkpoint (its ``digest`` entry aside)."""
    return {f"{name}{rest}": tensor_sha256(t) for name, value in _top(ckpt) for rest, t in _tensors(value, "")}


