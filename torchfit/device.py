"""Device resolution and moving (nested) batches to a device.

Owns: turning the user's ``device`` argument into a ``torch.device`` (never a
silent fallback) and the function the loop moves batches with. The walk over
nested batches is ``torchfit.batch``'s; the loop decides *when* to move.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import torch

from .batch import to_device
from .formatting import count_of

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
    if dev.type == "meta":
        raise ValueError(
            f"device={device!r} holds no values: moving the net there would discard its weights. "
            "Train on 'cpu' or 'cuda'"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was asked for but CUDA is not available on this machine; "
                "pass device='cpu' (or device=None to pick CUDA only when present)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} does not exist: this machine has "
                f"{count_of(torch.cuda.device_count(), 'CUDA device')}"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device={device!r} was asked for but MPS is not available; pass device='cpu'")
    return dev


def batch_mover(device: torch.device, non_blocking: bool) -> Callable[[Any], Any]:
    """The function the loop moves each batch with: the identity on CPU, ``to_device`` elsewhere."""
    if device.type == "cpu":
        # Loaders yield CPU tensors: moving to CPU would only cost calls.
        return lambda batch: batch
    return lambda batch: to_device(batch, device, non_blocking)
