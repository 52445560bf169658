"""Numeric precision of training: autocast and the fp16 gradient scaler.

Owns the mapping from ``compile(precision=...)`` to an autocast context and an
optional ``GradScaler``. For full precision both are no-ops, so the step has no
branch for them.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

# Reusable and reentrant: one instance spares a construction per step.
_NO_AUTOCAST = contextlib.nullcontext()

_ALIASES = {
    "32": "32", "32-true": "32", "fp32": "32", "float32": "32",
    "bf16": "bf16", "bf16-mixed": "bf16", "bfloat16": "bf16",
    "16-mixed": "16-mixed", "16": "16-mixed", "fp16": "16-mixed", "float16": "16-mixed",
}


class PrecisionPolicy:
    """Autocast context and grad scaler for one precision setting on one device.

    >>> p = PrecisionPolicy("bf16", torch.device("cpu"))
    >>> with p.autocast():
    ...     pass
    """

    def __init__(self, precision: str | int = "32", device: torch.device = torch.device("cpu")):
        key = _ALIASES.get(str(precision))
        if key is None:
            raise ValueError(
                f"precision={precision!r} is not supported; use '32', 'bf16' or '16-mixed'"
            )
        if key == "16-mixed" and device.type != "cuda":
            raise ValueError(
                "precision='16-mixed' (float16 autocast with a gradient scaler) needs a CUDA device; "
                f"the model is on {device}. Use precision='bf16' on CPU, or compile(device='cuda')"
            )
        if key == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this CUDA device does not support bfloat16; use precision='16-mixed'")
        self.name = key
        self.device = device
        self.dtype: Optional[torch.dtype] = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}[key]
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(device.type) if key == "16-mixed" else None
        )

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return _NO_AUTOCAST
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def __repr__(self) -> str:
        return f"PrecisionPolicy({self.name!r})"
