"""``seed_everything``: one call that seeds every random number generator a fit draws from.

Owns the global seeds (Python's ``random``, numpy's legacy global generator,
torch on the CPU and on every CUDA device) and, when asked, torch's
deterministic-algorithm switches. It changes process-wide state only when
called, never at import. Per-loader shuffling is not its business: a fit over
``x=``/``y=`` arrays shuffles with its own generator seeded by ``fit(seed=...)``,
and a ``DataLoader`` without a ``generator`` draws from torch's global one,
which this call seeds.
"""
from __future__ import annotations

import numbers
import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "MAX_SEED"]

# numpy's legacy global generator takes seeds in [0, 2**32 - 1]; the other generators take more,
# so this is the range that one seed can mean the same thing to all of them.
MAX_SEED = 2**32 - 1

# cuBLAS needs a fixed workspace to give the same results run to run (NVIDIA's cuBLAS docs,
# "Results reproducibility"); torch's deterministic mode raises without one on CUDA >= 10.2.
_CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int, deterministic: bool = False) -> int:
    """Seed Python's ``random``, numpy, and torch (CPU and all CUDA devices); returns ``seed``.

    >>> seed_everything(7)           # torchfit.seed_everything(7)
    7
    >>> a = torch.rand(2); _ = seed_everything(7); torch.equal(a, torch.rand(2))
    True

    Also sets the environment variable ``PYTHONHASHSEED`` to ``str(seed)``: it cannot
    change string hashing in the running interpreter, but child processes started after
    this call (DataLoader workers started with ``spawn``, subprocesses) hash alike.

    ``deterministic=True`` additionally turns on
    ``torch.use_deterministic_algorithms(True)`` (an op without a deterministic
    implementation then raises instead of running), sets
    ``torch.backends.cudnn.deterministic = True`` and ``cudnn.benchmark = False``, and
    sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when that variable is unset (a value you
    set yourself is kept), as cuBLAS needs for reproducible results. ``deterministic=False``
    leaves those switches as they are; turn them off with
    ``torch.use_deterministic_algorithms(False)``.

    ``seed`` must be an int in ``[0, 2**32 - 1]`` (numpy's range); ``bool`` is refused.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(
            f"seed_everything(seed=...) needs an int in [0, 2**32 - 1] ({MAX_SEED}); got {seed!r} "
            f"({type(seed).__name__}). Pass a plain int such as seed_everything(42)"
        )
    if not isinstance(deterministic, bool):
        raise TypeError(f"seed_everything(deterministic=...) must be True or False; got {deterministic!r}")
    seed = int(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too (lazily, if CUDA is not initialised yet)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return seed
