"""Keras' weight verbs: ``get_weights`` / ``set_weights`` (numpy arrays) and ``save_weights`` /
``load_weights`` (a file of the net's tensors alone).

Owns the net's weights as Keras hands them around: every tensor of ``net.state_dict()`` in its
order (parameters and buffers, Keras' trainable and non-trainable variables), checked as a whole
before any is written. A full training checkpoint (optimizer, RNG, history) is ``checkpoint``'s.
"""
from __future__ import annotations

import os
from typing import Any, List, Sequence, Union

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError
from .files import check_writable, replace_atomically

PathLike = Union[str, "os.PathLike[str]"]


def get_weights(net: nn.Module) -> List[np.ndarray]:
    """Every tensor of ``net.state_dict()``, in order, as numpy arrays (copies).

    >>> [w.shape for w in get_weights(nn.Linear(3, 2))]
    [(2, 3), (2,)]
    """
    return [t.detach().to("cpu", copy=True).numpy() for t in net.state_dict().values()]


def set_weights(net: nn.Module, weights: Sequence[Any]) -> None:
    """Put ``weights`` (arrays or tensors, in ``get_weights``' order) into ``net``; all are checked
    (count, shapes) before any is copied.

    >>> net = nn.Linear(3, 2); set_weights(net, [np.zeros((2, 3)), np.ones(2)]); net.bias.tolist()
    [1.0, 1.0]
    """
    own = net.state_dict()
    weights = list(weights)
    if len(weights) != len(own):
        raise ValueError(f"set_weights got {len(weights)} arrays but the net has {len(own)} tensors "
                         f"({', '.join(list(own)[:6])}...); pass model.get_weights()'s list, in its order")
    tensors = {}
    for (name, mine), w in zip(own.items(), weights):
        t = torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w)
        if tuple(t.shape) != tuple(mine.shape):
            raise ValueError(f"set_weights: {name} has shape {tuple(mine.shape)} but the array given for it has "
                             f"{tuple(t.shape)}; nothing was changed")
        tensors[name] = t.to(dtype=mine.dtype)
    net.load_state_dict(tensors)


def save_weights(net: nn.Module, filepath: PathLike, overwrite: bool = True) -> None:
    """Write the net's ``state_dict`` to ``filepath`` atomically (a torch file, whatever its suffix:
    ``model.weights.h5`` works as a name); ``torch.load(weights_only=True)`` reads it."""
    path = os.fspath(filepath)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"save_weights: {path!r} exists and overwrite=False; choose another path")
    check_writable("save_weights", path)
    state = {k: v.detach().to("cpu") for k, v in net.state_dict().items()}
    with replace_atomically(path, "wb") as f:
        torch.save(state, f)


def load_weights(net: nn.Module, filepath: PathLike) -> None:
    """Load weights written by ``save_weights`` (or a ``state_dict`` file, or a full torchfit
    checkpoint's net) into ``net``; keys and shapes are checked before anything changes."""
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_weights: no file at {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"load_weights: {path!r} is not a weights file torch.load(weights_only=True) can "
                              f"read ({type(exc).__name__}); write it with model.save_weights(path)") from exc
    if isinstance(state, dict) and "torchfit_checkpoint" in state:
        state = state["net"]
    own = net.state_dict()
    if not isinstance(state, dict) or set(state) != set(own):
        missing = sorted(set(own) - set(state)) if isinstance(state, dict) else list(own)
        extra = sorted(set(state) - set(own)) if isinstance(state, dict) else []
        raise CheckpointError(f"load_weights: {path!r} was saved from another net (missing {missing[:5]}, "
                              f"unexpected {extra[:5]}); build the same architecture. Nothing was changed")
    wrong = [f"{k}: file {tuple(state[k].shape)} vs net {tuple(v.shape)}" for k, v in own.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"load_weights: {path!r} has other shapes ({'; '.join(wrong[:4])}); nothing was changed")
    net.load_state_dict(state)
