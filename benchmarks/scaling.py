"""How torchfit's throughput scales from 1 to N processes under torchrun (CPU), and on one GPU.

    python benchmarks/scaling.py                  # CPU: 1 process, then torchrun with 2
    python benchmarks/scaling.py --nproc 1 2 4    # more rank counts (one core each)
    python benchmarks/scaling.py --json out.json  # also write the figures
    python benchmarks/scaling.py --quick          # a smaller version of everything (a few minutes on 2 cores)

Each run trains the same workload with the same script (the worker below, which
knows nothing about ranks) and the same per-rank batch size, so N processes
share each epoch's samples N ways (weak scaling per step, strong per epoch). Every
process gets one thread (``OMP_NUM_THREADS=1``, as torchrun sets), so N processes
use N cores. The figure is samples per second over an epoch (the median of the
timed epochs, after one warm-up epoch), for the whole job. When CUDA is
available the script also measures one process on one GPU.

Workloads:
  W1  MLP 20-64-64-2, 32,768 rows, batch 64 per rank (overhead-bound: small steps)
  W2  2-conv CNN, 4,096 1x28x28 images, batch 128 per rank (compute-bound)

Strategies (each against its hand-written torch equivalent, measured in the same run):
  ddp       torchfit under torchrun          vs  DDP + DistributedSampler under torchrun
  fsdp      compile(strategy="fsdp")         vs  fully_shard(net) + DistributedSampler under torchrun
  notebook  fit(num_processes=N), called     vs  torch.multiprocessing.start_processes(fork) + the DDP
            from one plain process               loop, rank 0's weights loaded back by the caller
For ``notebook`` the figure is samples per second over the whole call (starting the
workers, every epoch, handing the weights back): what a notebook user waits for.

No assertion here: the benchmark prints, people judge. The machine it ran on
matters as much as the numbers; the driver prints it with them. Each setting
also runs a hand-written loop (DDP + DistributedSampler under torchrun), so the
table separates what DDP itself costs from what torchfit adds.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ------------------------------------------------------------------ worker


def workload(name: str, scale: float = 1.0):
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    if name == "W1":
        x = torch.randn(int(32768 * scale), 20, generator=g)
        y = (x[:, :5].sum(dim=1) > 0).long()
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
        return TensorDataset(x, y), net, 64
    if name == "W2":
        x = torch.randn(int(4096 * scale), 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (int(4096 * scale),), generator=g)
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 5 * 5, 10),
        )
        return TensorDataset(x, y), net, 128
    raise ValueError(name)


def worker(name: str, epochs: int, device: str, out: str, scale: float = 1.0, strategy: str = "ddp") -> None:
    """The user's script: nothing in it knows how many processes run it."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    import torchfit

    ds, net, batch = workload(name, scale)
    times = []
    clock = {}

    def begin(epoch, logs):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        clock["t"] = time.perf_counter()

    def end(epoch, logs):  # after the epoch's figures were reduced: a sync point on every rank
        times.append(time.perf_counter() - clock["t"])

    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.01),
                                        ["accuracy"], device=None if device == "auto" else device,
                                        strategy=strategy)
    model.fit(epochs, DataLoader(ds, batch_size=batch, shuffle=True), verbose=0,
              callbacks=[torchfit.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)])
    if torchfit.distributed.is_main_process():
        timed = times[1:] or times
        seconds = statistics.median(timed)
        with open(out, "w") as f:
            json.dump({"workload": name, "device": str(model.device), "processes": torchfit.distributed.world_size(),
                       "samples": len(ds), "batch_per_rank": batch, "epoch_s": seconds,
                       "samples_per_s": len(ds) / seconds, "epochs_timed": len(timed)}, f)


def raw_worker(name: str, epochs: int, device: str, out: str, scale: float = 1.0, strategy: str = "ddp",
               keep: dict = None, job: tuple = None) -> None:
    """The hand-written loop a careful user writes for the same job, DDP (or FSDP2) included when under torchrun."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader, DistributedSampler

    ds, net, batch = job if job is not None else workload(name, scale)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    dev = torch.device("cuda" if device.startswith("cuda") else "cpu")
    net.to(dev)
    if distributed:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        sampler = DistributedSampler(ds, shuffle=True)
        loader = DataLoader(ds, batch_size=batch, sampler=sampler)
        if strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            train_net = fully_shard(net)  # in place: the optimizer below is built on the sharded parameters
        else:
            train_net = nn.parallel.DistributedDataParallel(net)
    else:
        sampler = None
        loader = DataLoader(ds, batch_size=batch, shuffle=True)
        train_net = net
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        t = time.perf_counter()
        total = torch.zeros(2, dtype=torch.float64, device=dev)
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            opt.zero_grad()
            preds = train_net(x)
            loss = loss_fn(preds, y)
            loss.backward()
            opt.step()
            total += torch.stack([loss.detach().double() * len(y), (preds.argmax(1) == y).sum().double()])
        if distributed:
            dist.all_reduce(total)
        total.tolist()  # the epoch's figures, read back once
        times.append(time.perf_counter() - t)
    if out and (not distributed or dist.get_rank() == 0):
        timed = times[1:] or times
        seconds = statistics.median(timed)
        with open(out, "w") as f:
            json.dump({"samples_per_s": len(ds) / seconds, "epoch_s": seconds}, f)
    if keep is not None:
        keep["net"] = net.state_dict()
    if distributed:
        # the DDP wrapper first (the last output's graph holds it too): one left alive when the
        # group is torn down can abort a gloo job
        del train_net, preds, loss
        gc.collect()
        dist.destroy_process_group()


def notebook_worker(name: str, epochs: int, nproc: int, out: str, scale: float) -> None:
    """One plain process (a notebook's kernel) calling ``fit(num_processes=nproc)``, timed end to end."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    import torchfit

    ds, net, batch = workload(name, scale)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.01),
                                        ["accuracy"], device="cpu")
    _warm_imports()
    t = time.perf_counter()
    model.fit(epochs, DataLoader(ds, batch_size=batch, shuffle=True), verbose=0, num_processes=nproc)
    seconds = time.perf_counter() - t
    with open(out, "w") as f:
        json.dump({"samples_per_s": epochs * len(ds) / seconds, "call_s": seconds}, f)


_FORKED: dict = {}


def _warm_imports() -> None:
    """What both callers' kernels have imported before the timed call: torch's distributed modules and
    torch._dynamo (DDP's constructor imports it: seconds). Forked workers then inherit them instead of
    each importing them inside the timing."""
    import torch._dynamo  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401
    import torch.distributed.tensor  # noqa: F401
    from torch.nn.parallel import DistributedDataParallel  # noqa: F401


def _raw_notebook_rank(rank: int, nproc: int, port: int, name: str, epochs: int, scale: float, weights: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.init_process_group("gloo")
    state = {}
    raw_worker(name, epochs, "cpu", "", scale, keep=state, job=_FORKED["job"])  # the kernel's data and net
    if rank == 0:
        torch.save(state["net"], weights)


def raw_notebook_worker(name: str, epochs: int, nproc: int, out: str, scale: float) -> None:
    """The hand-written equivalent: torch's start_processes (fork), the DDP loop, rank 0's weights loaded back."""
    import torch
    import torch.multiprocessing as mp

    ds, net, batch = workload(name, scale)
    _FORKED["job"] = (ds, net, batch)  # what a notebook's function closes over; the forked ranks inherit it
    _warm_imports()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "net.pt")
        mp.start_processes(_raw_notebook_rank, args=(nproc, _free_port(), name, epochs, scale, weights),
                           nprocs=nproc, start_method="fork")
        net.load_state_dict(torch.load(weights, weights_only=True))
    seconds = time.perf_counter() - t
    with open(out, "w") as f:
        json.dump({"samples_per_s": epochs * len(ds) / seconds, "call_s": seconds}, f)


# ------------------------------------------------------------------ driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(name: str, nproc: int, epochs: int, device: str, loop: str, strategy: str = "ddp",
            scale: float = 1.0) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        args = [os.path.abspath(__file__), "--worker", name, "--loop", loop, "--epochs", str(epochs),
                "--device", device, "--out", out, "--strategy", strategy, "--scale", str(scale),
                "--worker-nproc", str(nproc)]
        if nproc == 1 or strategy == "notebook":  # the notebook launcher starts its own processes
            cmd = [sys.executable] + args  # a plain process: no torchrun, no process group
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   "--master_addr=127.0.0.1", f"--master_port={_free_port()}"] + args
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            if not os.path.exists(out):
                raise RuntimeError(f"{' '.join(cmd)} failed with exit status {proc.returncode}")
            # the figures were written; only the processes' teardown failed (a known gloo race)
            print(f"note: {name} {loop} on {nproc} process(es) exited with {proc.returncode} after writing "
                  "its figures; they are kept", file=sys.stderr)
        with open(out) as f:
            return json.load(f)


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    if hasattr(os, "getloadavg"):
        info["load_avg_1min_before"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="torchfit", help=argparse.SUPPRESS)
    parser.add_argument("--worker-nproc", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="ddp", help=argparse.SUPPRESS)
    parser.add_argument("--strategies", nargs="+", default=["ddp", "fsdp", "notebook"],
                        help="ddp, fsdp (2+ processes) and notebook (fit(num_processes=N), 2+ processes)")
    parser.add_argument("--quick", action="store_true",
                        help="a quarter of the data, 2 epochs, 1 run per setting: a few minutes on 2 cores")
    parser.add_argument("--workloads", nargs="+", default=["W1", "W2"])
    parser.add_argument("--nproc", nargs="+", type=int, default=[1, 2], help="process counts to run on CPU")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is not timed")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting, interleaved; the median is kept")
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()
    if args.worker:
        if args.strategy == "notebook":
            (notebook_worker if args.loop == "torchfit" else raw_notebook_worker)(
                args.worker, args.epochs, args.worker_nproc, args.out, args.scale)
        else:
            (worker if args.loop == "torchfit" else raw_worker)(args.worker, args.epochs, args.device, args.out,
                                                                  args.scale, args.strategy)
        return
    if args.quick:
        args.epochs, args.repeats, scale = 2, 1, 0.25
    else:
        scale = 1.0

    import torch

    info = machine()
    settings = [(w, "cpu", n, "ddp") for w in args.workloads for n in args.nproc if "ddp" in args.strategies]
    settings += [(w, "cpu", n, st) for st in ("fsdp", "notebook") if st in args.strategies
                 for w in args.workloads for n in args.nproc if n > 1]
    if torch.cuda.is_available():
        settings += [(w, "cuda", 1, "ddp") for w in args.workloads]
    loops = ["torchfit", "raw"]
    runs: dict = {(s, loop): [] for s in settings for loop in loops}
    for _ in range(args.repeats):  # interleaved, so that a busy moment hurts every setting alike
        for s in settings:
            for loop in loops:
                runs[(s, loop)].append(_launch(s[0], s[2], args.epochs, s[1], loop, s[3], scale)["samples_per_s"])
    rows = []
    for s in settings:
        w, dev, n, strategy = s
        thr = statistics.median(runs[(s, "torchfit")])
        raw = statistics.median(runs[(s, "raw")])
        first = (w, "cpu", args.nproc[0], "ddp")
        base = statistics.median(runs[(first, "torchfit")]) if (first, "torchfit") in runs else None
        rows.append({"workload": w, "device": dev, "processes": n, "strategy": strategy, "samples_per_s": round(thr),
                     "speedup_vs_first": round(thr / base, 2) if dev == "cpu" and base else None,
                     "raw_loop_samples_per_s": round(raw), "torchfit_vs_raw": round(thr / raw, 3),
                     "runs": [round(x) for x in runs[(s, "torchfit")]],
                     "raw_runs": [round(x) for x in runs[(s, "raw")]]})
    print(f"\nmachine: {info}")
    print("\n| workload | device | processes | strategy | torchfit samples/s | speedup | hand-written samples/s | "
          "torchfit / hand-written |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = "" if r["speedup_vs_first"] is None else f"{r['speedup_vs_first']:.2f}x"
        print(f"| {r['workload']} | {r['device']} | {r['processes']} | {r['strategy']} | {r['samples_per_s']:,} | "
              f"{speed} | {r['raw_loop_samples_per_s']:,} | {r['torchfit_vs_raw']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "quick": args.quick, "epochs": args.epochs, "data_scale": scale,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
