"""Trains one fixed setup in a fresh process, for tests/test_checkpoint.py's resume promises.

The setup draws on every random source a resume must restore: shuffling (a
loader generator), dropout (torch's global RNG), augmentation noise from numpy
and Python's ``random``; its callbacks carry state (early stopping, a per-step
LR schedule, a plateau schedule, a CSV log).

    python resume_script.py straight OUT [CKPT]      # 4 epochs in one go; with CKPT, then (afresh)
                                                     # 2 epochs and model.save_checkpoint(CKPT)
    python resume_script.py second CKPT OUT          # other seeds; load_checkpoint(CKPT); 2 more epochs
    python resume_script.py crashable DIR OUT [--kill-at EPOCH BATCH]
        fit(4, ..., ModelCheckpoint(DIR/epoch{epoch}.pt, save_last=True), resume_from=DIR/last.pt);
        --kill-at sends SIGKILL to this process at the end of that batch

OUT receives {"weights": net.state_dict(), "history": rows, "step_history": rows, "global_step": n}.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import torchfit
from torchfit.callbacks import (Callback, CSVLogger, EarlyStopping, LearningRateScheduler, ModelCheckpoint,
                                ReduceLROnPlateau)

torch.set_num_threads(1)  # the same kernels' summation order in every process


class Noisy(Dataset):
    """Blobs plus augmentation noise drawn from torch, numpy and Python's random at each access (shared with
    test_resume_anywhere.py and dist_scripts/preempt.py)."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.x = torch.randn(n, 4, generator=g) + 2.0 * self.y.unsqueeze(1).float()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        jitter = float(np.random.normal(0, 0.05)) + random.uniform(-0.05, 0.05) + float(torch.rand(()) * 0.05)
        return self.x[i] + jitter, self.y[i]


class Killer(Callback):
    def __init__(self, epoch, batch):
        self.at = (epoch, batch)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs):
        self.epoch = epoch + 1  # hooks count from 0; --kill-at names 1-based epochs and batches

    def on_train_batch_end(self, batch, logs):
        if (self.epoch, batch + 1) == self.at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def build(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    dl_train = DataLoader(Noisy(120, 0), batch_size=16, shuffle=True,
                          generator=torch.Generator().manual_seed(100 + seed))
    dl_val = DataLoader(Noisy(40, 1), batch_size=20)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=1e-2),
                                        ["accuracy"], device="cpu")
    step_sched = torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=5, gamma=0.9)
    callbacks = [EarlyStopping(monitor="val_loss", patience=10, verbose=0),
                 LearningRateScheduler(step_sched, interval="step"),
                 ReduceLROnPlateau(monitor="val_accuracy", patience=0, factor=0.8)]
    return model, dl_train, dl_val, callbacks


def dump(model, path):
    torch.save({"weights": model.net.state_dict(), "history": model.training_state.history,
                "step_history": model.training_state.step_history, "global_step": model.global_step}, path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["straight", "second", "crashable"])
    p.add_argument("paths", nargs="+")
    p.add_argument("--kill-at", nargs=2, type=int)
    args = p.parse_args()
    if args.mode == "straight":
        model, dl_train, dl_val, cbs = build(0)
        model.fit(4, dl_train, dl_val, callbacks=cbs, verbose=0)
        dump(model, args.paths[0])
        if len(args.paths) > 1:  # build() reseeds everything: as good as a new process, one start saved
            model, dl_train, dl_val, cbs = build(0)
            model.fit(2, dl_train, dl_val, callbacks=cbs, verbose=0)
            model.save_checkpoint(args.paths[1])
    elif args.mode == "second":
        model, dl_train, dl_val, cbs = build(1)  # other seeds: everything that matters must come from the file
        model.load_checkpoint(args.paths[0])
        model.fit(2, dl_train, dl_val, callbacks=cbs, verbose=0)
        dump(model, args.paths[1])
    else:
        directory, out = args.paths
        model, dl_train, dl_val, cbs = build(0)
        cbs += [ModelCheckpoint(os.path.join(directory, "epoch{epoch}.pt"), save_last=True),
                CSVLogger(os.path.join(directory, "log.csv"))]
        if args.kill_at:
            cbs.append(Killer(*args.kill_at))
        model.fit(4, dl_train, dl_val, callbacks=cbs, verbose=1, resume_from=os.path.join(directory, "last.pt"))
        dump(model, out)


if __name__ == "__main__":
    main()
