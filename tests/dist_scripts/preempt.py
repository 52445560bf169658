"""One fixed training run with BackupAndRestore, for tests/test_preemption.py: run it, stop it (SIGKILL,
SIGTERM), run it again, and it must end as the run that was never stopped.

    python preempt.py OUT_DIR [--save-freq N] [--slow SECONDS]     # one process
    torchrun --nproc_per_node 2 preempt.py OUT_DIR [...]           # the same on 2 ranks (gloo)

The setup draws on every random source a resume must restore: a shuffled loader with its own
generator, dropout, augmentation noise from torch, numpy and Python's random at each access, a
per-step LR schedule and gradient accumulation. Rank 0 prints "batch E B" after every training
batch (so a test knows where the run is) and, when fit returns, writes OUT_DIR/result-RANK.pt with
the weights, history, step history and global step. The backup lives in OUT_DIR/backup/.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import torchfit
from torchfit.callbacks import BackupAndRestore, Callback, LearningRateScheduler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from resume_script import Noisy  # noqa: E402  (tests/: blobs with augmentation noise from torch, numpy, random)

torch.set_num_threads(1)


class Progress(Callback):
    """Prints where the run is after each training batch; ``slow`` seconds of sleep make room for a signal."""

    def __init__(self, slow):
        self.slow = slow

    def on_train_batch_end(self, batch, logs):
        if os.environ.get("RANK", "0") == "0":  # one writer: two ranks' lines would interleave on one pipe
            print(f"batch {self.model.run.epoch} {batch + 1}", flush=True)
        if self.slow:
            time.sleep(self.slow)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--save-freq", default="3")
    parser.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args()
    save_freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    net = nn.Sequential(nn.Linear(4, 24), nn.ReLU(), nn.Dropout(0.3), nn.Linear(24, 3))
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=1e-2),
                                        ["accuracy", "auc"], device="cpu")
    dl_train = DataLoader(Noisy(96, 0), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))
    dl_val = DataLoader(Noisy(30, 1), batch_size=10)
    callbacks = [Progress(args.slow),
                 LearningRateScheduler(lambda opt, total: torch.optim.lr_scheduler.OneCycleLR(
                     opt, max_lr=0.05, total_steps=total), interval="step"),
                 BackupAndRestore(os.path.join(args.out, "backup"), save_freq=save_freq)]
    model.fit(3, dl_train, dl_val, callbacks=callbacks, verbose=0, grad_accum_steps=2, log_step_freq=3)
    rank = int(os.environ.get("RANK", "0"))
    torch.save({"weights": model.net.state_dict(), "history": model.history.to_dict("list"),
                "step_history": model.step_history.to_dict("list"), "global_step": model.global_step},
               os.path.join(args.out, f"result-{rank}.pt"))


if __name__ == "__main__":
    sys.exit(main())
