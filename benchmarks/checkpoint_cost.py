#!/usr/bin/env python
"""What exact mid-epoch checkpoints cost: W1's MLP (20-64-64-2, 50,000 rows, batch 64, 782 steps an
epoch, CPU) trained one epoch per call, runners taking turns after a warm-up, median of the repeats.

    fit               no checkpoint callback (the reference; also no per-epoch RNG snapshot)
    save_freq=N       ModelCheckpoint(path, save_freq=N): a file every N batches, position included
    backup N          BackupAndRestore(dir, save_freq=N), SIGTERM handled
    resume            fit resumed from a checkpoint written after batch 700 (the 700 batches are drawn
                      again, not trained): the time until the epoch ends

Reported: s/epoch, the ratio to ``fit``, and milliseconds per checkpoint ((runner - fit) / files).

    python benchmarks/checkpoint_cost.py [--repeats 5] [--every 100]   # results/checkpoint-cost-cpu.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torchfit  # noqa: E402
from torchfit.callbacks import BackupAndRestore, ModelCheckpoint  # noqa: E402


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, 20, generator=g)
    y = (x[:, :5].sum(1) > 0).long()
    return TensorDataset(x, y)


def model() -> torchfit.Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    return torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), 1e-3),
                                       ["accuracy"], device="cpu")


def loader(ds: TensorDataset) -> DataLoader:
    return DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--out", default=os.path.join(HERE, "results", "checkpoint-cost-cpu.md"),
                   help="where the table is written ('' for nowhere)")
    args = p.parse_args()
    torch.set_num_threads(1)
    ds = data()
    tmp = tempfile.mkdtemp(prefix="torchfit-ckpt-bench-")
    resume_file = os.path.join(tmp, "at700.pt")
    m = model()
    m.fit(1, loader(ds), verbose=0, callbacks=[ModelCheckpoint(resume_file, save_freq=700)])
    n_files = len(ds) // 64 // args.every

    def fit_plain():
        model().fit(1, loader(ds), verbose=0)

    def fit_ckpt():
        model().fit(1, loader(ds), verbose=0, callbacks=[ModelCheckpoint(os.path.join(tmp, "c.pt"),
                                                                         save_freq=args.every)])

    def fit_backup():
        model().fit(1, loader(ds), verbose=0, callbacks=[BackupAndRestore(os.path.join(tmp, "b"),
                                                                          save_freq=args.every)])

    def fit_resume():
        model().fit(1, loader(ds), verbose=0, resume_from=resume_file,
                    callbacks=[ModelCheckpoint(os.path.join(tmp, "r.pt"), save_freq=700)])

    runners = {"fit": fit_plain, f"save_freq={args.every}": fit_ckpt, f"backup {args.every}": fit_backup,
               "resume after 700": fit_resume}
    times = {name: [] for name in runners}
    for fn in runners.values():  # warm-up
        fn()
    names = list(runners)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["fit"])
    lines = [f"W1 MLP, one epoch of 782 steps, median of {args.repeats} (torch {torch.__version__}, 1 thread, "
             f"{datetime.date.today()})", "",
             "| runner | s/epoch | ratio | ms/checkpoint |", "|---|---|---|---|"]
    for name in names:
        med = statistics.median(times[name])
        per = f"{(med - base) / n_files * 1e3:.2f}" if name.startswith(("save", "backup")) else ""
        lines.append(f"| {name} | {med:.3f} | {med / base:.3f} | {per} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write("# What exact mid-epoch checkpoints cost (`python benchmarks/checkpoint_cost.py`)\n\n" + text)


if __name__ == "__main__":
    main()
