"""Device resolution and moving (nested) batches to a device.

Owns: turning the user's ``device`` argument into a ``torch.device`` (never a
silent fallback) and the one helper that moves tensors inside tuples, lists
and dicts. The loop decides *when* to move; this module only knows *how*.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch

DeviceLike = Union[str, torch.device, int, None]


def resolve_device(device: DeviceLike = None) -> torch.device:
    """Return the device to train on: ``None`` means CUDA when available, else CPU.

    An explicit device that this machine does not have is an error.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a device torch understands; use 'cpu', 'cuda', "
            "'cuda:0' or a torch.device"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was asked for but CUDA is not available on this machine; "
                "pass device='cpu' (or device=None to pick CUDA only when present)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device={device!r} was asked for but MPS is not available; pass device='cpu'")
    return dev


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor inside ``obj`` (tensor, tuple, list, dict, namedtuple) to ``device``.

    >>> to_device({"x": torch.ones(2)}, torch.device("cpu"))["x"].device
    device(type='cpu')
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return type(obj)((k, to_device(v, device, non_blocking)) for k, v in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def first_tensor(obj: Any) -> Optional[torch.Tensor]:
    """The first tensor found in a nested batch, or None."""
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    for v in values:
        t = first_tensor(v)
        if t is not None:
            return t
    return None


def batch_size_of(*objs: Any) -> int:
    """Number of samples in a batch: the first dim of the first tensor found (1 for a 0-d tensor)."""
    for obj in objs:
        t = first_tensor(obj)
        if t is not None:
            return int(t.shape[0]) if t.dim() > 0 else 1
    raise ValueError("could not find a tensor in the batch to count its samples")
