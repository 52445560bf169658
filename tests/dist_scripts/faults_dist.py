"""Fault injection under torchrun, for tests/test_faults_dist.py (2 processes, gloo, CPU).

Usage: python -m torch.distributed.run --nproc_per_node=2 faults_dist.py MODE OUT_DIR
Each rank saves what it saw to OUT_DIR/rank<r>.pt. Modes:

* ``unequal``: every rank is given a dataset of its own size (a dataset sharded by the user),
  through a plain DataLoader and through the user's own DistributedSampler, to fit, evaluate
  and predict. Each call must fail on every rank, before the first step, with the counts; the
  model must be as it was; an ordinary fit afterwards must work. The group's timeout is short,
  so that a rank left waiting in a collective fails instead of hanging the test.
* ``weighted``: ``(x, y, w)`` batches of 13 samples, 4 per rank and batch, so that rank 1's last
  batch is padded by the sampler; fit with lr=0 (the weights never change, so the figures are
  those of the initial net) and evaluate. The test compares them with one process.
"""
from __future__ import annotations

import datetime
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import torchfit

torch.set_num_threads(1)


def data(n: int, seed: int, weights: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    if weights:
        return TensorDataset(x, y, 2 * torch.rand(n, generator=g))
    return TensorDataset(x, y)


def compiled(seed: int = 0, lr: float = 0.1, batchnorm: bool = True) -> torchfit.Model:
    """BatchNorm (state a failure must not touch) for ``unequal``; none for ``weighted``, whose training
    figures must not depend on how the batches are split between the ranks."""
    torch.manual_seed(seed)
    norm = [nn.BatchNorm1d(16)] if batchnorm else []
    net = nn.Sequential(nn.Linear(4, 16), *norm, nn.ReLU(), nn.Linear(16, 3))
    return torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9),
                                       ["accuracy"], device="cpu")


def state(model: torchfit.Model) -> dict:
    return {"net": {k: v.clone() for k, v in model.net.state_dict().items()}, "rng": torch.get_rng_state()}


def unchanged(model: torchfit.Model, before: dict) -> bool:
    """Weights, BatchNorm statistics, optimizer state, counters, history and torch's RNG as they were."""
    return (all(torch.equal(v, before["net"][k]) for k, v in model.net.state_dict().items())
            and model.epoch == 0 and model.global_step == 0 and not model.optimizer.state
            and not model.training_state.history and torch.equal(torch.get_rng_state(), before["rng"]))


def unequal(out_dir: str) -> None:
    torchfit.distributed.init_process_group("cpu", timeout=datetime.timedelta(seconds=20))
    rank = torchfit.distributed.rank()
    mine = data(64 if rank == 0 else 40, seed=rank)  # this rank's own shard, of its own size
    own_sampler = DataLoader(mine, batch_size=8, sampler=DistributedSampler(mine))
    attempts = {
        "fit": lambda m: m.fit(2, DataLoader(mine, batch_size=8, shuffle=True), verbose=0),
        "fit own sampler": lambda m: m.fit(2, own_sampler, verbose=0),
        "fit dl_val": lambda m: m.fit(2, DataLoader(data(64, 9), batch_size=8), DataLoader(mine, batch_size=8),
                                      verbose=0),
        "evaluate": lambda m: m.evaluate(DataLoader(mine, batch_size=8)),
        # 30 and 29 samples: 15 per rank, both 2 batches, but predict needs the same dataset everywhere
        "predict": lambda m: m.predict(DataLoader(data(30 if rank == 0 else 29, seed=rank), batch_size=8)),
    }
    res: dict = {}
    model = compiled()
    for name, attempt in attempts.items():
        before = state(model)
        try:
            attempt(model)
            res[name] = None
        except ValueError as exc:  # anything else (gloo's RuntimeError) ends the script: the test fails
            res[name] = {"message": str(exc), "unchanged": unchanged(model, before)}
    # the model and the process group still work: an ordinary fit over the whole dataset
    history = model.fit(1, DataLoader(data(64, 5), batch_size=8), verbose=0)
    res["after"] = {"epochs": len(history), "loss": float(history["loss"].iloc[-1])}
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))


def weighted(out_dir: str) -> None:
    rank = torchfit.distributed.rank()
    res: dict = {}
    model = compiled(seed=3, lr=0.0, batchnorm=False)
    train, val = data(13, seed=1, weights=True), data(11, seed=2, weights=True)
    history = model.fit(1, DataLoader(train, batch_size=4), DataLoader(val, batch_size=4), verbose=0)
    res["history"] = history.to_dict("records")
    figures = model.evaluate(DataLoader(val, batch_size=4), verbose=0, return_dict=True)
    res["evaluate"] = {k: float(v) for k, v in figures.items()}
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    {"unequal": unequal, "weighted": weighted}[sys.argv[1]](sys.argv[2])
