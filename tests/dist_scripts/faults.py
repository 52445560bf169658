"""Ranks that die, for tests/test_faults.py (2 processes, gloo, CPU).

Usage: python -m torch.distributed.run --nproc_per_node=2 faults.py MODE OUT_DIR
Both ranks train with ModelCheckpoint(OUT_DIR/last.pt) (written by rank 0 at each epoch end).
In epoch 2, after its first optimizer step (so rank 0 has finished epoch 1's checkpoint),
rank 1 raises (MODE ``raise``) or sends itself SIGKILL (MODE ``kill``).
"""
from __future__ import annotations

import os
import signal
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit
from torchfit import Callback
from torchfit.callbacks import ModelCheckpoint

torch.set_num_threads(1)


def main(mode: str, out_dir: str) -> None:
    rank = torchfit.distributed.rank()

    class Die(Callback):
        def on_train_batch_end(self, batch, logs):
            if rank == 1 and self.model.run.epoch == 2 and batch == 0:  # its first batch (hooks count from 0)
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("rank 1 failed on purpose")

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
                                        device="cpu")
    model.fit(3, DataLoader(TensorDataset(x, y), batch_size=8), verbose=0,
              callbacks=[Die(), ModelCheckpoint(os.path.join(out_dir, "last.pt"))])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
