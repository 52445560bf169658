"""Small seeded datasets for unit tests: classification, regression, sequences and images.

Owns making toy data that a correct net learns in a few epochs and that is the same on
every machine and every run (each function seeds its own generator and leaves the global
ones alone). Each returns a ``TensorDataset`` of float inputs and targets in the layout
torchfit's default losses expect: class indices (int64) for ``CrossEntropyLoss``, float
columns ``(N, 1)`` for ``MSELoss``. The pytest fixtures in ``torchfit.testing.plugin``
hand these out.
"""
from __future__ import annotations

import numbers

import torch
from torch.utils.data import TensorDataset

__all__ = ["classification", "regression", "sequences", "images"]


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(_count("seed", seed, 0))


def classification(n: int = 128, n_features: int = 4, n_classes: int = 3, seed: int = 0) -> TensorDataset:
    """Gaussian blobs: ``x`` ``(n, n_features)`` float32, ``y`` ``(n,)`` int64 class indices, classes balanced.

    >>> x, y = classification(6, n_features=2, n_classes=3).tensors
    >>> x.shape, y.tolist()
    (torch.Size([6, 2]), [0, 1, 2, 0, 1, 2])
    """
    n, n_features, n_classes = _count("n", n, 1), _count("n_features", n_features, 1), _count("n_classes", n_classes, 2)
    g = _generator(seed)
    centers = torch.randn(n_classes, n_features, generator=g) * 3.0
    y = torch.arange(n) % n_classes
    x = centers[y] + torch.randn(n, n_features, generator=g)
    return TensorDataset(x, y)


def regression(n: int = 128, n_features: int = 4, noise: float = 0.1, seed: int = 0) -> TensorDataset:
    """A linear target with a little noise: ``x`` ``(n, n_features)``, ``y`` ``(n, 1)`` float32, unit scale.

    >>> x, y = regression(10).tensors
    >>> x.shape, y.shape
    (torch.Size([10, 4]), torch.Size([10, 1]))
    """
    n, n_features = _count("n", n, 1), _count("n_features", n_features, 1)
    g = _generator(seed)
    x = torch.randn(n, n_features, generator=g)
    w = torch.randn(n_features, 1, generator=g) / n_features ** 0.5
    y = x @ w + noise * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def sequences(n: int = 128, length: int = 12, n_features: int = 3, seed: int = 0) -> TensorDataset:
    """Sequences ``(n, length, n_features)`` (batch first, as ``nn.LSTM(batch_first=True)`` reads them) and a
    binary label ``(n,)`` int64: whether a marked step (feature 0 set to 1) comes in the first half.
    A net must read the order of the steps to learn it, as a sequence model should.

    >>> x, y = sequences(4, length=6).tensors
    >>> x.shape, y.dtype
    (torch.Size([4, 6, 3]), torch.int64)
    """
    n, length, n_features = _count("n", n, 1), _count("length", length, 2), _count("n_features", n_features, 1)
    g = _generator(seed)
    x = 0.1 * torch.randn(n, length, n_features, generator=g)
    y = torch.arange(n) % 2
    half = length // 2
    position = torch.randint(0, half, (n,), generator=g) + (1 - y) * half  # label 1: in the first half
    x[torch.arange(n), position, 0] = 1.0
    return TensorDataset(x, y)


def images(n: int = 128, channels: int = 1, size: int = 8, n_classes: int = 4, seed: int = 0) -> TensorDataset:
    """Images ``(n, channels, size, size)`` float32 in ``[0, 1]`` and labels ``(n,)`` int64: each class is a bright
    bar in another place and direction (horizontal or vertical; top/bottom or left/right), under noise.

    >>> x, y = images(8).tensors
    >>> x.shape, sorted(set(y.tolist()))
    (torch.Size([8, 1, 8, 8]), [0, 1, 2, 3])
    """
    n, channels, size = _count("n", n, 1), _count("channels", channels, 1), _count("size", size, 4)
    n_classes = _count("n_classes", n_classes, 2)
    if n_classes > 2 * size:
        raise ValueError(f"images(size={size}) can draw at most {2 * size} classes (a bar per row and column); "
                         f"got n_classes={n_classes}")
    g = _generator(seed)
    y = torch.arange(n) % n_classes
    x = 0.3 * torch.rand(n, channels, size, size, generator=g)
    # class k: a horizontal bar (even k) or a vertical one (odd k), at evenly spread positions
    per_kind = (n_classes + 1) // 2
    for k in range(n_classes):
        where = (k // 2) * size // per_kind + size // (2 * per_kind)
        rows = y == k
        if k % 2 == 0:
            x[rows, :, where, :] = 0.7 + 0.3 * torch.rand(int(rows.sum()), channels, size, generator=g)
        else:
            x[rows, :, :, where] = 0.7 + 0.3 * torch.rand(int(rows.sum()), channels, size, generator=g)
    return TensorDataset(x, y)
