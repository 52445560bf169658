#!/usr/bin/env python
"""Framework overhead of ``torchfit.Model.fit`` against a hand-written loop (and peers).

Workloads (all synthetic, generated in memory, no downloads):
  W1   MLP 20-64-64-2, 50,000 rows, batch 64, CPU: overhead-bound
  W2   2-conv CNN, 10,000 x 1x28x28, batch 128, CPU: compute-bound
  GPU  ResNet-18 (CIFAR stem), 25,600 x 3x32x32, batch 256, bf16 autocast, CUDA only

Every runner trains one epoch per call; runners take turns (interleaved repeats,
the order rotating each round) after one warm-up epoch each, so drifts in machine
load hit them all alike. Reported: median s/epoch, its ratio to the hand-written
DataLoader loop, the median of the per-round ratios, and the extra µs per step.
A second pass runs W2's fit in fresh processes to compare peak RSS. On W1's data,
`evaluate` and `predict` (fast_path=False) are timed against hand-written no_grad loops.

    python benchmarks/overhead.py            # full run: results/overhead-<cpu|cuda>.{json,md}
    python benchmarks/overhead.py --quick    # a short run: results/overhead-<...>-quick.{json,md}

Peer runners (poutyne, torchkeras, Lightning, Keras 3 on torch) run when their
package imports; install them from requirements-peers.txt (see README.md).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, ROOT)
# torchfit (and so pandas) is imported only where it is used: the peak-RSS child
# process of the hand-written loop must not carry torchfit's imports.


# ------------------------------------------------------------------ workloads
@dataclass
class Workload:
    name: str
    description: str
    n: int
    batch_size: int
    device: str
    make_net: Callable[[], nn.Module]
    make_data: Callable[[int], TensorDataset]
    precision: str = "32"  # torchfit's name; the hand loop uses the matching autocast
    pin_memory: bool = False

    @property
    def steps(self) -> int:
        return -(-self.n // self.batch_size)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


def tabular(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 20, generator=g)
    y = (X[:, :5].sum(1) + 0.5 * torch.randn(n, generator=g) > 0).long()
    return TensorDataset(X, y)


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


def images(n: int, shape=(1, 28, 28), classes: int = 10) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


def resnet18(classes: int = 10) -> nn.Module:
    """ResNet-18 with the usual 3x3 stem for 32x32 inputs (11.2M parameters)."""
    layers: List[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


WORKLOADS: Dict[str, Workload] = {
    "W1": Workload("W1", "MLP 20-64-64-2, 50,000 rows, batch 64", 50_000, 64, "cpu", mlp, tabular),
    "W2": Workload("W2", "2-conv CNN (16, 32 channels), 10,000 x 1x28x28, batch 128", 10_000, 128, "cpu", cnn, images),
    "GPU": Workload("GPU", "ResNet-18, 25,600 x 3x32x32, batch 256, bf16 autocast", 25_600, 256, "cuda",
                    resnet18, lambda n: images(n, (3, 32, 32)), precision="bf16", pin_memory=True),
}


def make_loader(w: Workload, ds: TensorDataset) -> DataLoader:
    # Every runner gets the same shuffled order (its own generator, same seed).
    return DataLoader(ds, batch_size=w.batch_size, shuffle=True, pin_memory=w.pin_memory,
                      generator=torch.Generator().manual_seed(1))


def make_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(w: Workload):
    if w.precision == "bf16":
        return torch.autocast(device_type=w.device, dtype=torch.bfloat16)
    return torch.autocast(device_type=w.device, enabled=False)


# -------------------------------------------------------------------- runners
# A runner takes (workload, dataset, net) and returns a function that trains one
# epoch and returns that epoch's mean loss as a float (timed around the call), or
# (loss, (wall seconds, CPU seconds)) when it timed the epoch itself (the peers, see
# EpochClock); or None when it does not run that workload.

def hand_written(w: Workload, ds: TensorDataset, net: nn.Module):
    """The loop a careful user writes: DataLoader, zero_grad/forward/backward/step,
    the epoch loss summed on the device as loss.detach() * n and read once per epoch."""
    dl = make_loader(w, ds)
    net = net.to(w.device)
    opt = make_optimizer(net.parameters())
    loss_fn = nn.CrossEntropyLoss()
    on_cuda = w.device == "cuda"

    def epoch() -> float:
        net.train()
        total = torch.zeros((), device=w.device)
        seen = 0
        for x, y in dl:
            if on_cuda:
                x, y = x.to(w.device, non_blocking=True), y.to(w.device, non_blocking=True)
            opt.zero_grad()
            with autocast(w):
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            total += loss.detach() * len(y)
            seen += len(y)
        return total.item() / seen

    return epoch


def hand_indexed(w: Workload, ds: TensorDataset, net: nn.Module):
    """The same loop without a DataLoader: shuffle once per epoch, slice the tensors."""
    X, Y = ds.tensors
    net = net.to(w.device)
    opt = make_optimizer(net.parameters())
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)

    def epoch() -> float:
        net.train()
        total = torch.zeros((), device=w.device)
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), w.batch_size):
            idx = perm[i:i + w.batch_size]
            x, y = X[idx].to(w.device, non_blocking=True), Y[idx].to(w.device, non_blocking=True)
            opt.zero_grad()
            with autocast(w):
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            total += loss.detach() * len(y)
        return total.item() / len(X)

    return epoch


def torchfit_runner(fast_path: bool):
    def runner(w: Workload, ds: TensorDataset, net: nn.Module):
        import torchfit

        dl = make_loader(w, ds)
        model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), make_optimizer(net.parameters()),
                                           device=w.device, precision=w.precision)

        def epoch() -> float:
            return float(model.fit(1, dl, verbose=0, fast_path=fast_path)["loss"].iloc[-1])

        return epoch
    return runner


# ------------------------------------------------- evaluate and predict (no_grad)
# On W1's data with fast_path=False, so the loaders match: what torchfit's one
# batch loop costs around a step that does no backward pass.

def hand_evaluate(w: Workload, ds: TensorDataset, net: nn.Module):
    """A careful no_grad loop: loss and correct predictions summed on the device per batch, read once."""
    dl = make_loader(w, ds)
    net = net.to(w.device)
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> float:
        net.eval()
        total = torch.zeros((), dtype=torch.float64, device=w.device)
        correct = torch.zeros((), dtype=torch.int64, device=w.device)
        seen = 0
        with torch.no_grad():
            for x, y in dl:
                preds = net(x)
                total += loss_fn(preds, y) * len(y)
                correct += (preds.argmax(dim=1) == y).sum()
                seen += len(y)
        return total.item() / seen + 0 * correct.item()

    return epoch


def torchfit_evaluate(w: Workload, ds: TensorDataset, net: nn.Module):
    import torchfit

    dl = make_loader(w, ds)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), make_optimizer(net.parameters()),
                                       metrics=["accuracy"], device=w.device)

    def epoch() -> float:
        return model.evaluate(dl, fast_path=False)["val_loss"]

    return epoch


def hand_predict(w: Workload, ds: TensorDataset, net: nn.Module):
    """no_grad forward over every batch, outputs concatenated on the CPU."""
    dl = make_loader(w, ds)
    net = net.to(w.device)

    def epoch() -> float:
        net.eval()
        with torch.no_grad():
            out = torch.cat([net(x).cpu() for x, _ in dl])
        return float(out[0, 0])

    return epoch


def torchfit_predict(w: Workload, ds: TensorDataset, net: nn.Module):
    import torchfit

    dl = make_loader(w, ds)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), make_optimizer(net.parameters()), device=w.device)

    def epoch() -> float:
        return float(model.predict(dl, fast_path=False)[0, 0])

    return epoch


INFERENCE: Dict[str, Dict[str, Callable]] = {
    "evaluate": {"hand-written": hand_evaluate, "torchfit": torchfit_evaluate},
    "predict": {"hand-written": hand_predict, "torchfit": torchfit_predict},
}


class EpochClock:
    """Times a peer's epoch from inside its own fit (its epoch-begin to epoch-end hooks),
    leaving out the per-call set-up a multi-epoch fit would pay once. That favours the
    peers: torchfit and the hand-written loop are timed around the whole call."""

    def __init__(self, device: str):
        self.device = device
        self.start = self.elapsed = None

    def begin(self, *args, **kwargs) -> None:
        sync(self.device)
        self.start = (time.perf_counter(), time.process_time())

    def end(self, *args, **kwargs) -> None:
        sync(self.device)
        self.elapsed = (time.perf_counter() - self.start[0], time.process_time() - self.start[1])


def poutyne_runner(w: Workload, ds: TensorDataset, net: nn.Module):
    import poutyne

    if w.precision != "32":
        return None  # poutyne has no bf16 autocast switch of its own: not compared
    clock = EpochClock(w.device)

    class Clock(poutyne.Callback):
        def on_epoch_begin(self, epoch, logs):
            clock.begin()

        def on_epoch_end(self, epoch, logs):
            clock.end()

    model = poutyne.Model(net, make_optimizer(net.parameters()), nn.CrossEntropyLoss(), device=w.device)
    dl = make_loader(w, ds)

    def epoch():
        logs = model.fit_generator(dl, epochs=1, verbose=False, callbacks=[Clock()])
        return float(logs[-1]["loss"]), clock.elapsed

    return epoch


def torchkeras_runner(w: Workload, ds: TensorDataset, net: nn.Module):
    import tempfile

    from torchkeras import KerasModel

    if w.device != "cpu":
        return None  # torchkeras picks its device through accelerate; compared on CPU only
    clock = EpochClock(w.device)

    class Clock:  # torchkeras calls hooks by name; it has no epoch-begin hook, fit-start is next to it
        def on_fit_start(self, model):
            clock.begin()

        def on_train_epoch_end(self, model):
            clock.end()

    model = KerasModel(net, loss_fn=nn.CrossEntropyLoss(), optimizer=make_optimizer(net.parameters()))
    dl = make_loader(w, ds)
    ckpt = os.path.join(tempfile.mkdtemp(prefix="torchkeras-bench-"), "ckpt.pt")

    def epoch():
        # from_scratch=True: otherwise every fit after the first runs an extra,
        # evaluation-only epoch 0. Its progress bar's text is discarded.
        model.from_scratch = True
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            h = model.fit(train_data=dl, epochs=1, ckpt_path=ckpt, patience=10**9, monitor="train_loss",
                          mode="min", plot=False, cpu=True, callbacks=[Clock()])
        return float(h["train_loss"].iloc[-1]), clock.elapsed

    return epoch


def lightning_runner(barebones: bool):
    def runner(w: Workload, ds: TensorDataset, net: nn.Module):
        import logging

        import lightning as L

        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)  # "GPU available: ..." on every Trainer
        clock = EpochClock(w.device)

        class Module(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = net
                self.loss_fn = nn.CrossEntropyLoss()

            def training_step(self, batch, batch_idx):
                x, y = batch
                loss = self.loss_fn(self.net(x), y)
                if not barebones:  # barebones forbids self.log
                    self.log("loss", loss, on_step=False, on_epoch=True)  # epoch mean, read once per epoch
                return loss

            def configure_optimizers(self):
                return make_optimizer(self.parameters())

            def on_train_epoch_start(self):
                clock.begin()

            def on_train_epoch_end(self):
                clock.end()

        module = Module()
        dl = make_loader(w, ds)
        precision = "bf16-mixed" if w.precision == "bf16" else "32-true"

        def epoch():
            # A Trainer per call: a finished Lightning fit cannot be extended in place.
            kw = dict(barebones=True) if barebones else dict(logger=False, enable_checkpointing=False,
                                                              enable_progress_bar=False, enable_model_summary=False)
            trainer = L.Trainer(max_epochs=1, accelerator="gpu" if w.device == "cuda" else "cpu", devices=1,
                                precision=precision, num_sanity_val_steps=0, **kw)
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                trainer.fit(module, dl)
            return float(trainer.callback_metrics.get("loss", float("nan"))), clock.elapsed

        return epoch
    return runner


def keras_runner(w: Workload, ds: TensorDataset, net: nn.Module):
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")  # read once, when keras is first imported
    import keras

    if keras.backend.backend() != "torch" or w.precision != "32":
        return None
    clock = EpochClock(w.device)

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            clock.begin()

        def on_epoch_end(self, epoch, logs=None):
            clock.end()

    model = keras.Sequential([keras.layers.Input(ds.tensors[0].shape[1:]), keras.layers.TorchModuleWrapper(net)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dl = make_loader(w, ds)

    def epoch():
        h = model.fit(dl, epochs=1, verbose=0, callbacks=[Clock()])
        return float(h.history["loss"][-1]), clock.elapsed

    return epoch


RUNNERS: Dict[str, Callable] = {
    "hand-written": hand_written,
    "torchfit": torchfit_runner(fast_path=True),
    "torchfit (fast_path=False)": torchfit_runner(fast_path=False),
    "hand-written, indexed": hand_indexed,
}
PEERS: Dict[str, Callable] = {
    "poutyne": poutyne_runner,
    "torchkeras": torchkeras_runner,
    "Lightning": lightning_runner(barebones=False),
    "Lightning barebones": lightning_runner(barebones=True),
    "Keras 3 (torch)": keras_runner,
}
PEER_PACKAGES = {"poutyne": "poutyne", "torchkeras": "torchkeras", "Lightning": "lightning",
                 "Lightning barebones": "lightning", "Keras 3 (torch)": "keras"}


# -------------------------------------------------------------------- timing
def time_workload(w: Workload, runners: Dict[str, Callable], repeats: int, log) -> dict:
    ds = w.make_data(w.n)
    torch.manual_seed(0)
    init = w.make_net()
    epochs: Dict[str, Callable[[], float]] = {}
    skipped: Dict[str, str] = {}
    for name, make in runners.items():
        net = w.make_net()
        net.load_state_dict(init.state_dict())
        try:
            fn = make(w, ds, net)
        except ImportError as exc:
            skipped[name] = f"not installed ({exc.name})"
            continue
        if fn is None:
            skipped[name] = "not run on this workload"
            continue
        fn()  # warm-up epoch: allocator, autotuning, lazy imports
        epochs[name] = fn
    clocks = ("wall", "cpu")
    times: Dict[str, Dict[str, List[float]]] = {name: {c: [] for c in clocks} for name in epochs}
    names = list(epochs)
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            gc.collect()
            sync(w.device)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            out = epochs[name]()
            sync(w.device)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            if isinstance(out, tuple):  # a peer timed its epoch from its own hooks
                wall, cpu = out[1]
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
        log(f"  {w.name} round {r + 1}/{repeats}: " + ", ".join(
            f"{n} {times[n]['wall'][-1]:.3f}s ({times[n]['cpu'][-1]:.3f}s CPU)" for n in names))
    rows = {}
    for name, ts in times.items():
        row = {}
        for c in clocks:
            base = times["hand-written"][c]
            med, base_median = statistics.median(ts[c]), statistics.median(base)
            row[c] = {
                "median_s_per_epoch": med,
                "ratio": med / base_median,
                "paired_ratio": statistics.median(t / b for t, b in zip(ts[c], base)),
                "extra_us_per_step": (med - base_median) / w.steps * 1e6,
                "times_s": ts[c],
            }
        rows[name] = row
    return {"workload": w.name, "description": w.description, "steps_per_epoch": w.steps,
            "repeats": repeats, "runners": rows, "skipped": skipped}


# ------------------------------------------------------- sync-free check (CUDA)
def check_no_hidden_syncs(w: Workload) -> dict:
    import torchfit

    class SyncDebug(torchfit.Callback):
        """Turns ``torch.cuda.set_sync_debug_mode("error")`` on for every step that is
        not a logging point or the last of its loader: a host sync there raises."""

        def __init__(self, log_every: int, n_train: int, n_val: int):
            self.log_every, self.n_train, self.n_val = log_every, n_train, n_val

        def on_train_batch_begin(self, batch, logs):
            # Step 1 also runs the metric preflight (once per fit, allowed to sync).
            quiet = batch == 1 or batch % self.log_every == 0 or batch == self.n_train
            torch.cuda.set_sync_debug_mode("default" if quiet else "error")

        def on_train_batch_end(self, batch, logs):
            # Covers fetching and moving the next batch; the epoch's figures are read after the last.
            torch.cuda.set_sync_debug_mode("default" if batch == self.n_train else "error")

        def on_test_batch_begin(self, batch, logs):
            torch.cuda.set_sync_debug_mode("default" if batch == self.n_val else "error")

        def on_test_batch_end(self, batch, logs):
            torch.cuda.set_sync_debug_mode("default" if batch == self.n_val else "error")

        def on_epoch_end(self, epoch, logs):
            torch.cuda.set_sync_debug_mode("default")

        on_train_end = on_epoch_end

    ds = w.make_data(w.n // 4)
    dl = make_loader(w, ds)
    dl_val = DataLoader(w.make_data(w.n // 20), batch_size=w.batch_size, pin_memory=w.pin_memory)
    torch.manual_seed(0)
    net = w.make_net()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), make_optimizer(net.parameters()), ["accuracy"],
                                        device=w.device, precision=w.precision)
    log_every = 10
    result = {"fit": "ok"}
    try:
        model.fit(2, dl, dl_val, log_step_freq=log_every, verbose=0,
                  callbacks=[SyncDebug(log_every, len(dl), len(dl_val))])
    except Exception as exc:  # reported, not hidden: the figure says what tripped
        result["fit"] = f"tripped: {type(exc).__name__}: {exc}"[:500]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return result


# ---------------------------------------------------------------- peak memory
def peak_rss_mb() -> float:
    """This process's peak resident set size. On Linux, VmHWM: getrusage's ru_maxrss keeps
    the peak of the process that forked us across exec, so it would report the parent's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS


def rss_child(workload: str, runner: str, epochs: int) -> None:
    """Runs in a fresh process: one runner, ``epochs`` epochs; prints peak RSS as JSON."""
    torch.set_num_threads(1)
    w = WORKLOADS[workload]
    ds = w.make_data(w.n)
    torch.manual_seed(0)
    fn = RUNNERS[runner](w, ds, w.make_net())
    before = peak_rss_mb()
    for _ in range(epochs):
        fn()
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "peak_rss_before_fit_mb": before}))


def measure_rss(workload: str, runners: List[str], epochs: int, rounds: int, log) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    samples: Dict[str, List[dict]] = {r: [] for r in runners}
    for i in range(rounds):
        for runner in runners:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-child", workload, runner,
                                  str(epochs)], capture_output=True, text=True, env=env, check=True)
            samples[runner].append(json.loads(out.stdout.strip().splitlines()[-1]))
        log(f"  peak RSS round {i + 1}/{rounds}: " + ", ".join(
            f"{r} {samples[r][-1]['peak_rss_mb']:.0f} MB" for r in runners))
    base = statistics.median(s["peak_rss_mb"] for s in samples["hand-written"])
    rows = {}
    for runner, ss in samples.items():
        peak = statistics.median(s["peak_rss_mb"] for s in ss)
        growth = statistics.median(s["peak_rss_mb"] - s["peak_rss_before_fit_mb"] for s in ss)
        rows[runner] = {"peak_rss_mb": peak, "ratio": peak / base, "growth_during_fit_mb": growth}
    return {"workload": workload, "epochs": epochs, "rounds": rounds, "runners": rows}


# -------------------------------------------------------------------- report
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchfit": __import__("torchfit").__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        # Other work on the machine shows up here (the timings are interleaved, so it
        # hits every runner alike, but a busy machine widens the spread).
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        info["torchfit_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                 capture_output=True, text=True).stdout.strip() or None
    except OSError:
        info["torchfit_commit"] = None
    from importlib import metadata
    for pkg in sorted(set(PEER_PACKAGES.values())):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return info


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "n/a"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# torchfit overhead benchmark ({results['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"; {m['platform']}", "",
             f"Load average (1/5/15 min) at start {_load(m.get('load_average_at_start'))}, "
             f"at end {_load(m.get('load_average_at_end'))}", "",
             "Versions: " + ", ".join(f"{k} {m[k]}" for k in ("python", "torch", "torchfit", "torchfit_commit",
                                                                *sorted(set(PEER_PACKAGES.values()))) if m.get(k)),
             "", f"Command: `{results['command']}`", ""]
    for wl in results["workloads"]:
        lines += [f"## {wl['workload']}: {wl['description']} ({wl['steps_per_epoch']} steps/epoch, "
                  f"{wl['repeats']} interleaved repeats)", "",
                  "| runner | wall s/epoch | ratio (wall) | CPU s/epoch | ratio (CPU) | paired ratio (CPU) "
                  "| extra CPU µs/step |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in wl["runners"].items():
            wall, cpu = r["wall"], r["cpu"]
            lines.append(f"| {name} | {wall['median_s_per_epoch']:.4f} | {wall['ratio']:.3f} "
                         f"| {cpu['median_s_per_epoch']:.4f} | {cpu['ratio']:.3f} | {cpu['paired_ratio']:.3f} "
                         f"| {cpu['extra_us_per_step']:+.1f} |")
        for name, why in wl.get("skipped", {}).items():
            lines.append(f"| {name} | – | – | – | – | – | {why} |")
        if "sync_check" in wl:
            lines += ["", f"`fit` under `torch.cuda.set_sync_debug_mode(\"error\")` between logging points: "
                          f"{wl['sync_check']['fit']}"]
        lines.append("")
    if results.get("memory"):
        mem = results["memory"]
        lines += [f"## Peak memory: {mem['workload']}, {mem['epochs']} epochs, fresh process per run "
                  f"(median of {mem['rounds']})", "",
                  "| runner | peak RSS MB | ratio to hand-written | growth during training MB |", "|---|---|---|---|"]
        for name, r in mem["runners"].items():
            lines.append(f"| {name} | {r['peak_rss_mb']:.0f} | {r['ratio']:.3f} | {r['growth_during_fit_mb']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few repeats, smaller workloads: a smoke run")
    p.add_argument("--repeats", type=int, help="interleaved timed epochs per runner (default 15, quick 3)")
    p.add_argument("--workloads", default=None, help="comma-separated subset of W1,W2,GPU")
    p.add_argument("--no-peers", action="store_true", help="skip poutyne/torchkeras/Lightning/Keras")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS processes")
    p.add_argument("--no-inference", action="store_true", help="skip W1's evaluate and predict timings")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--rss-child", nargs=3, metavar=("WORKLOAD", "RUNNER", "EPOCHS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1], int(args.rss_child[2]))
        return 0

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    names = args.workloads.split(",") if args.workloads else ["W1", "W2"] + (["GPU"] if cuda else [])
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    if "GPU" in names and not cuda:
        p.error("the GPU workload needs CUDA, which this machine does not have")
    repeats = args.repeats or (3 if args.quick else 15)
    runners = dict(RUNNERS)
    if not args.no_peers:
        runners.update(PEERS)

    def log(msg: str) -> None:
        print(msg, flush=True)

    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
               "command": " ".join(["python", "benchmarks/overhead.py"] + (argv if argv is not None else sys.argv[1:])),
               "workloads": []}
    log(f"machine: {results['machine']}")
    for name in names:
        w = WORKLOADS[name]
        if args.quick:
            w = Workload(**{**w.__dict__, "n": w.n // 5,
                            "description": w.description.replace(f"{w.n:,}", f"{w.n // 5:,}")})
        log(f"{w.name}: {w.description}")
        wl = time_workload(w, runners, repeats, log)
        if w.device == "cuda":
            wl["sync_check"] = check_no_hidden_syncs(w)
            log(f"  sync check: {wl['sync_check']}")
        results["workloads"].append(wl)
        if name == "W1" and not args.no_inference:
            for verb, pair in INFERENCE.items():
                log(f"{w.name} {verb}: fast_path=False")
                wl = time_workload(w, pair, repeats, log)
                wl["workload"], wl["description"] = f"{w.name} {verb}", f"{w.description}, fast_path=False"
                results["workloads"].append(wl)
    if not args.no_memory and "W2" in names:
        log("peak memory, W2, fresh processes")
        results["memory"] = measure_rss("W2", ["hand-written", "torchfit"], epochs=1 if args.quick else 3,
                                        rounds=1 if args.quick else 3, log=log)

    results["machine"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "overhead-" + ("cuda" if cuda else "cpu") + ("-quick" if args.quick else ""))
    with open(stem + ".json", "w") as f:
        json.dump(results, f, indent=2)
    text = markdown(results)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print("\n" + text)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
