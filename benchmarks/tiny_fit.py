#!/usr/bin/env python
"""What a unit-test-sized ``fit`` costs against a hand-written loop: 128 rows, 3 epochs, validation.

A test suite runs such fits hundreds of times, so here the per-call cost of ``fit`` (checks,
callbacks, metric copies, the history DataFrame, printing) matters, not the per-step one
(``overhead.py``). Both sides build the same seeded net and optimizer and train it on the
same batches, tracking the same figures (loss and accuracy, train and validation, summed on
the device, read back once per epoch):

  hand-written      the loop below, silent
  hand-written, printing   the same, printing one line per epoch
  torchfit          Model(net).compile(loss, optimizer, ["accuracy"]).fit(3, dl, dl_val, verbose=0)
  torchfit, printing       the same with verbose=1 (step dicts and epoch tables)
  ..., fast_path=False     the same iterating the DataLoaders as they are: what fit itself costs,
                           without the fast path's cheaper batches (see docs/performance.md)

Printing goes to an in-memory stream (as under pytest's capture). Runners take turns (the
order rotating each round); each call is timed by CPU time (``process_time``: robust on a
shared machine) and wall clock. Reported: median ms per fit, the ratio to the matching
hand-written loop and the median of the per-round (paired) ratios.

    python benchmarks/tiny_fit.py               # 300 rounds: results/tiny-fit-cpu.{json,md}
    python benchmarks/tiny_fit.py --quick       # 60 rounds: results/tiny-fit-cpu-quick.{json,md}
    python benchmarks/tiny_fit.py --profile     # cProfile of 300 torchfit fits: results/tiny-fit-profile.txt
    python benchmarks/tiny_fit.py --breakdown   # CPU time of fit's parts per fit: results/tiny-fit-breakdown.md
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

import torch
from torch import nn
from torch.utils.data import DataLoader

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)

import torchfit  # noqa: E402
from torchfit.testing import data  # noqa: E402

EPOCHS, BATCH, VAL_BATCH, LR = 3, 16, 32, 1e-2
TRAIN, VAL = data.classification(128), data.classification(64, seed=1)
TARGETS = {"silent": 1.05, "printing": 1.15}


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))


def loaders() -> tuple:
    return (DataLoader(TRAIN, BATCH, shuffle=True, generator=torch.Generator().manual_seed(0)),
            DataLoader(VAL, VAL_BATCH))


def hand_epoch(net: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module, train: Any, val: Any) -> dict:
    """One epoch of the hand-written loop: train, validate, figures read back once (the reference)."""
    net.train()
    total, hits, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
    for x, y in train:
        opt.zero_grad()
        out = net(x)
        loss = loss_fn(out, y)
        loss.backward()
        opt.step()
        total += loss.detach() * len(y)
        hits += (out.detach().argmax(1) == y).sum()
        seen += len(y)
    net.eval()
    v_total, v_hits, v_seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
    with torch.no_grad():
        for x, y in val:
            out = net(x)
            v_total += loss_fn(out, y) * len(y)
            v_hits += (out.argmax(1) == y).sum()
            v_seen += len(y)
    return {"loss": total.item() / seen, "accuracy": hits.item() / seen,
            "val_loss": v_total.item() / v_seen, "val_accuracy": v_hits.item() / v_seen}


def hand_written(printing: bool) -> Callable[[], None]:
    def run() -> None:
        net = make_net()
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        loss_fn = nn.CrossEntropyLoss()
        dl, dl_val = loaders()
        for epoch in range(1, EPOCHS + 1):
            figures = {"epoch": epoch, **hand_epoch(net, opt, loss_fn, dl, dl_val)}
            if printing:
                print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    return run


def with_torchfit(printing: bool, fast_path: bool = True) -> Callable[[], None]:
    def run() -> None:
        net = make_net()
        model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=LR),
                                            ["accuracy"], device="cpu")
        dl, dl_val = loaders()
        model.fit(EPOCHS, dl, dl_val, verbose=1 if printing else 0, fast_path=fast_path)
    return run


RUNNERS: Dict[str, Callable[[], None]] = {
    "hand-written": hand_written(False),
    "torchfit": with_torchfit(False),
    "torchfit, fast_path=False": with_torchfit(False, fast_path=False),
    "hand-written, printing": hand_written(True),
    "torchfit, printing": with_torchfit(True),
    "torchfit, printing, fast_path=False": with_torchfit(True, fast_path=False),
}
BASELINE = {"torchfit": "hand-written", "torchfit, fast_path=False": "hand-written",
            "torchfit, printing": "hand-written, printing",
            "torchfit, printing, fast_path=False": "hand-written, printing"}


def check_parity() -> None:
    """The two sides train the same weights (the comparison would be meaningless otherwise)."""
    nets = []
    for kind in ("hand", "torchfit"):
        net = make_net()
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        dl, dl_val = loaders()
        if kind == "hand":
            for _ in range(EPOCHS):
                for x, y in dl:
                    opt.zero_grad()
                    nn.functional.cross_entropy(net(x), y).backward()
                    opt.step()
                for _ in dl_val:  # iterating draws the DataLoader's base seed, as torchfit's validation does
                    pass
        else:
            torchfit.Model(net).compile(nn.CrossEntropyLoss(), opt, ["accuracy"], device="cpu").fit(
                EPOCHS, dl, dl_val, verbose=0)
        nets.append(net.state_dict())
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0]), "torchfit and the loop trained different weights"


def measure(rounds: int) -> Dict[str, Dict[str, List[float]]]:
    names = list(RUNNERS)
    times: Dict[str, Dict[str, List[float]]] = {n: {"cpu": [], "wall": []} for n in names}
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        for name in names:  # warm-up
            for _ in range(5):
                RUNNERS[name]()
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                c0, w0 = time.process_time(), time.perf_counter()
                RUNNERS[name]()
                times[name]["cpu"].append(time.process_time() - c0)
                times[name]["wall"].append(time.perf_counter() - w0)
            sink.seek(0)
            sink.truncate()
    return times


def summarise(times: Dict[str, Dict[str, List[float]]]) -> List[dict]:
    rows = []
    for name, t in times.items():
        base = BASELINE.get(name, name)
        row = {"runner": name, "baseline": base}
        for clock in ("cpu", "wall"):
            med = statistics.median(t[clock])
            row[f"{clock}_ms"] = 1e3 * med
            row[f"{clock}_ratio"] = med / statistics.median(times[base][clock])
            row[f"{clock}_paired"] = statistics.median(a / b for a, b in zip(t[clock], times[base][clock]))
        rows.append(row)
    return rows


def profile(rounds: int, out: str) -> None:
    run = with_torchfit(False, fast_path=False)
    for _ in range(5):
        run()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(rounds):
        run()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs()
    buf.write(f"cProfile of {rounds} torchfit fits (128 rows, 3 epochs, validation, verbose=0, fast_path=False)\n")
    stats.sort_stats("cumulative").print_stats(60)
    stats.sort_stats("tottime").print_stats(40)
    with open(out, "w") as f:
        f.write(buf.getvalue())
    print(f"wrote {out}")


# The parts of a fit timed by --breakdown: (owner, attribute, label). Each is wrapped in a CPU-time
# counter; parts nest (fit_loop holds the steps), so they do not add up to the total.
PARTS = [
    ("torchfit.model:Model", "__init__", "Model(net)"),
    ("torchfit.model:Model", "compile", "Model.compile"),
    ("torchfit.model:Model", "fit", "Model.fit, the whole call"),
    ("torchfit.runs", "fit_run", "runs.fit_run: callbacks, trackers, OptimizerStep, params"),
    ("torchfit.loop", "check_first_batch", "loop.check_first_batch: dl_val's first batch before training"),
    ("torchfit.loop", "fit_loop", "loop.fit_loop: the epochs"),
    ("torchfit.loop", "run_epoch", "loop.run_epoch: train and validation passes"),
    ("torchfit.model:Model", "train_step", "Model.train_step (24 a fit)"),
    ("torchfit.steps", "check_first_targets", "steps.check_first_targets: the first batch's labels"),
    ("torchfit.steps", "preflight_metrics", "steps.preflight_metrics: metrics on the first batch"),
    ("torchfit.metrics.tracker:Tracker", "update", "Tracker.update (every step)"),
    ("torchfit.metrics.tracker:Tracker", "compute", "Tracker.compute (logging points, epoch ends)"),
    ("torchfit.callbacks.history:StepHistory", "on_train_batch_end", "StepHistory.on_train_batch_end"),
    ("torchfit.checkpoint", "run_state", "checkpoint.run_state at the end of fit (for save_checkpoint)"),
    ("torchfit.model", "history_frame", "the history DataFrame fit returns"),
    ("torchfit.callbacks.printing:ProgressPrinter", "on_train_batch_end", "ProgressPrinter: step dicts"),
    ("torchfit.callbacks.printing:ProgressPrinter", "on_epoch_end", "ProgressPrinter: epoch tables"),
]


def split_costs(rounds: int) -> List[str]:
    """fit's fixed cost per call and its cost per step, apart: both sides train on lists of batches
    (no DataLoader, so no fast path either) for 1 and for 6 epochs, logging once an epoch."""
    def as_list(ds: torch.utils.data.TensorDataset, size: int) -> list:
        x, y = ds.tensors
        return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]

    train, val = as_list(TRAIN, BATCH), as_list(VAL, VAL_BATCH)
    steps = len(train) + len(val)

    def hand(epochs: int) -> None:
        net = make_net()
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(epochs):
            hand_epoch(net, opt, loss_fn, train, val)

    def fit(epochs: int) -> None:
        net = make_net()
        model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=LR),
                                            ["accuracy"], device="cpu")
        model.fit(epochs, train, val, verbose=0, log_step_freq=len(train))

    times: Dict[tuple, List[float]] = {}
    for _ in range(3):
        for fn in (hand, fit):
            fn(1), fn(6)
    for _ in range(rounds):
        for name, fn in (("hand", hand), ("torchfit", fit)):
            for epochs in (1, 6):
                start = time.process_time()
                fn(epochs)
                times.setdefault((name, epochs), []).append(time.process_time() - start)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    per_epoch = {n: (med[(n, 6)] - med[(n, 1)]) / 5 for n in ("hand", "torchfit")}
    fixed = {n: med[(n, 1)] - per_epoch[n] for n in ("hand", "torchfit")}
    return ["## Fixed cost per call and cost per step, apart", "",
            f"Lists of batches ({len(train)} training and {len(val)} validation batches an epoch, no DataLoader), "
            f"1 and 6 epochs, one logging point an epoch, {rounds} interleaved rounds, medians:", "",
            "| | hand-written | torchfit | torchfit's extra |", "|---|---:|---:|---:|",
            f"| per call (net, optimizer, set-up, end), ms | {fixed['hand']:.3f} | {fixed['torchfit']:.3f} "
            f"| +{fixed['torchfit'] - fixed['hand']:.3f} |",
            f"| per step (train or validation), µs | {1e3 * per_epoch['hand'] / steps:.1f} "
            f"| {1e3 * per_epoch['torchfit'] / steps:.1f} | +{1e3 * (per_epoch['torchfit'] - per_epoch['hand']) / steps:.1f} |",
            ""]


def breakdown(rounds: int, out: str) -> None:
    import functools
    import importlib

    with contextlib.redirect_stdout(io.StringIO()):
        split = split_costs(rounds)  # before the parts are wrapped: the wrappers cost a little per call
    spent: Dict[str, float] = {}
    for owner, attribute, label in PARTS:
        module_name, _, class_name = owner.partition(":")
        target = importlib.import_module(module_name)
        target = getattr(target, class_name) if class_name else target
        original = getattr(target, attribute, None)
        if original is None:  # moved by a refactor: say so rather than fail the whole breakdown
            print(f"--breakdown: {owner}.{attribute} no longer exists; {label!r} is not timed", file=sys.stderr)
            continue

        def timed(*args, __original=original, __label=label, **kwargs):
            start = time.process_time()
            try:
                return __original(*args, **kwargs)
            finally:
                spent[__label] = spent.get(__label, 0.0) + time.process_time() - start

        setattr(target, attribute, functools.wraps(original)(timed))
    lines = [f"# Where a tiny fit's time goes ({rounds} fits each, CPU ms per fit)", "", *split,
             "## The parts of one fit", "", "Each part timed by a CPU-time counter around it (the counters add a few "
             "µs per call to torchfit's side); parts nest, so they do not add up.", ""]
    with contextlib.redirect_stdout(io.StringIO()):
        for printing in (False, True):
            for fast_path in (True, False):
                run, hand = with_torchfit(printing, fast_path), hand_written(printing)
                for _ in range(5):
                    run(), hand()
                spent.clear()
                totals = {"hand": 0.0, "torchfit": 0.0}
                for _ in range(rounds):  # interleaved, so that load drifts hit both alike
                    for name, fn in (("hand", hand), ("torchfit", run)):
                        start = time.process_time()
                        fn()
                        totals[name] += time.process_time() - start
                lines += [f"## verbose={int(printing)}, fast_path={fast_path}", "",
                          f"hand-written loop {1e3 * totals['hand'] / rounds:.3f} ms; torchfit (Model, compile, fit) "
                          f"{1e3 * totals['torchfit'] / rounds:.3f} ms: ratio "
                          f"{totals['torchfit'] / totals['hand']:.3f}", "",
                          "| part | CPU ms per fit |", "|---|---:|"]
                lines += [f"| {label} | {1e3 * spent.get(label, 0.0) / rounds:.3f} |" for _, _, label in PARTS
                          if label in spent]
                lines.append("")
    with open(out, "w") as f:
        f.write("\n".join(lines))
    sys.stdout.write("\n".join(lines) + f"\nwrote {out}\n")


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="60 rounds, results named *-quick")
    parser.add_argument("--profile", action="store_true", help="cProfile the torchfit runner instead")
    parser.add_argument("--breakdown", action="store_true", help="CPU time of fit's parts, per fit")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    rounds = 60 if args.quick else args.rounds
    if args.profile:
        profile(rounds, os.path.join(HERE, "results", "tiny-fit-profile.txt"))
        return 0
    if args.breakdown:
        breakdown(rounds, os.path.join(HERE, "results", "tiny-fit-breakdown.md"))
        return 0
    check_parity()
    load_start = os.getloadavg()
    times = measure(rounds)
    rows = summarise(times)
    stem = os.path.join(HERE, "results", "tiny-fit-cpu" + ("-quick" if args.quick else ""))
    commit = os.popen(f"git -C {ROOT} rev-parse --short HEAD 2>/dev/null").read().strip()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "torchfit_commit": commit, "rounds": rounds,
            "load_start": load_start, "load_end": os.getloadavg(),
            "command": "python benchmarks/tiny_fit.py" + (" --quick" if args.quick else "")}
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows, "times": times}, f, indent=1)
    lines = [f"# Tiny fit: 128 rows, batch {BATCH}, {EPOCHS} epochs, validation on 64 rows ({rounds} rounds)", "",
             f"{meta['date']}; {meta['machine']}, {meta['cpus']} CPUs, torch threads 1; torch {meta['torch']}, "
             f"python {meta['python']}, torchfit commit {commit}", "",
             "Load average at start {:.1f}/{:.1f}/{:.1f}, at end {:.1f}/{:.1f}/{:.1f}".format(*load_start,
                                                                                             *meta["load_end"]),
             "", f"Command: `{meta['command']}`", "",
             "| runner | CPU ms/fit | ratio (CPU) | paired ratio (CPU) | wall ms/fit | ratio (wall) | target |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        kind = "printing" if "printing" in row["runner"] else "silent"
        target = f"≤ {TARGETS[kind]:.2f}" if row["runner"] in BASELINE else ""
        lines.append(f"| {row['runner']} | {row['cpu_ms']:.2f} | {row['cpu_ratio']:.3f} | {row['cpu_paired']:.3f} "
                     f"| {row['wall_ms']:.2f} | {row['wall_ratio']:.3f} | {target} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
