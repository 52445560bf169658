"""Seeded toy data and models shared by the tests (all small enough for 2 CPU cores)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_blobs, make_classification
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchfit.callbacks import Callback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ launched processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    """The environment of a launched test process: torchrun's variables removed, one thread, this checkout
    importable, output unbuffered."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def torchrun_cmd(script: str, *args: str, nproc: int = 2) -> list:
    """``python -m torch.distributed.run`` of ``script`` on ``nproc`` local processes, on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", script, *map(str, args)]


def torchrun(script: str, *args: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``script`` under torchrun to its end; stdout and stderr captured."""
    return subprocess.run(torchrun_cmd(script, *args, nproc=nproc), env=child_env(), capture_output=True,
                          text=True, timeout=timeout)


def blobs(n: int = 200, centers: int = 3, seed: int = 0) -> TensorDataset:
    X, y = make_blobs(n_samples=n, centers=centers, n_features=4, random_state=seed, cluster_std=2.5)
    return TensorDataset(torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.long))


def binary(n: int = 200, seed: int = 0) -> TensorDataset:
    X, y = make_classification(n_samples=n, n_features=6, n_informative=4, random_state=seed)
    return TensorDataset(torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32).unsqueeze(1))


def digits(n: int = 300) -> TensorDataset:
    d = load_digits()
    X = torch.tensor(d.images[:n] / 16.0, dtype=torch.float32).unsqueeze(1)
    return TensorDataset(X, torch.tensor(d.target[:n], dtype=torch.long))


def mlp(n_in: int = 4, n_out: int = 3, seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, n_out))


class SmallCNN(nn.Module):
    """A two-conv CNN, sized for 8x8 digits; BatchNorm and dropout included on purpose."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(0.1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=2)
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d((1, 1)), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.conv1(x))))
        return self.head(torch.relu(self.conv2(self.dropout(x))))


def loader(ds, batch_size: int = 32, shuffle: bool = False, seed: int = 0, **kw) -> DataLoader:
    g = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, **kw)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny nets: a second intra-op thread only contends with other processes on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


class Scripted(Callback):
    """Puts scripted figures into the epoch logs as "score" (and announces the key)."""

    def __init__(self, values):
        self.values = values

    def set_params(self, params):
        super().set_params(params)
        params["log_keys"].append("score")

    def on_epoch_end(self, epoch, logs):
        logs["score"] = self.values[epoch]  # hooks count epochs from 0, as in Keras
