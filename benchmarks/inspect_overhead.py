#!/usr/bin/env python
"""What the inspection callbacks cost: W1 of overhead.py (MLP 20-64-64-2, 50,000 rows, batch 64, CPU),
one epoch per fit, plain vs ``Profiler()`` vs ``GradientStats()`` (default logging points), interleaved
rounds after a warm-up; prints the median and the best CPU seconds per epoch of each (process time, steadier than wall
time on a shared machine; run with OMP_NUM_THREADS=1), against the plain fit.

    python benchmarks/inspect_overhead.py [--rounds 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import torchfit  # noqa: E402
from overhead import WORKLOADS  # noqa: E402
from torchfit.callbacks import GradientStats, Profiler  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    w = WORKLOADS["W1"]
    ds = w.make_data(w.n)
    loader = torch.utils.data.DataLoader(ds, batch_size=w.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = w.make_net()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.01),
                                        device="cpu")
    runners = {"plain": lambda: [], "Profiler": lambda: [Profiler()], "GradientStats": lambda: [GradientStats()]}
    times = {name: [] for name in runners}
    for name, callbacks in runners.items():  # warm-up
        model.fit(1, loader, verbose=0, callbacks=callbacks())
    for r in range(rounds):
        names = list(runners)[r % 3:] + list(runners)[:r % 3]
        for name in names:
            start = time.process_time()  # CPU time of this process: steadier than wall time on a shared machine
            model.fit(1, loader, verbose=0, callbacks=runners[name]())
            times[name].append(time.process_time() - start)
    base = statistics.median(times["plain"])
    print(f"W1, {w.steps} steps per epoch, torch {torch.__version__}, {rounds} rounds")
    best = min(times["plain"])
    for name, ts in times.items():
        med, low = statistics.median(ts), min(ts)
        print(f"{name:14s} median {med:.3f} CPU s/epoch {100 * (med / base - 1):+5.1f}% "
              f"({1e6 * (med - base) / w.steps:+6.1f} µs/step); best {low:.3f} s {100 * (low / best - 1):+5.1f}%")


def markers() -> None:
    """The Profiler's own cost per step, timed apart from the noise of whole epochs: its two forward
    hooks on W1's net, one wrapped hook call (4 per step) and one marker."""
    import timeit

    from torchfit.callbacks.profiling import _Clock

    torch.set_num_threads(1)
    net = WORKLOADS["W1"].make_net()
    x = torch.randn(64, 20)
    clock = _Clock(None)
    clock.start(0)
    prof = Profiler()
    prof._clock, prof._in_train = clock, True

    class Owner:
        @staticmethod
        def hook(*args):
            return None

    owner = Owner()
    prof._wrap(owner, "hook", lambda *a: clock.mark(1), lambda *a: clock.mark(2))

    def best(fn, n=5000):
        return timeit.timeit(fn, number=n) / n * 1e6

    plain, hooked = [], []
    with torch.no_grad():
        for _ in range(10):  # interleaved, best of each: the machine's load hits both alike
            plain.append(best(lambda: net(x)))
            handles = [net.register_forward_pre_hook(lambda m, a: clock.mark(3) if prof._training_marker() else None),
                       net.register_forward_hook(lambda m, a, o: clock.mark(4) if prof._training_marker() else None)]
            hooked.append(best(lambda: net(x)))
            for h in handles:
                h.remove()
    plain, hooked = min(plain), min(hooked)
    wrapped = best(lambda: owner.hook(1, {}))
    mark = best(lambda: clock.mark(1))
    print(f"forward {plain:.1f} µs, with the Profiler's hooks {hooked:.1f} µs (+{hooked - plain:.1f}); "
          f"a wrapped hook call {wrapped:.2f} µs; a marker {mark:.2f} µs")


if __name__ == "__main__":
    markers()
    main()
