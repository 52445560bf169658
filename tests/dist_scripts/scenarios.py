"""Scenarios that tests/test_distributed.py runs under torchrun (2 processes, gloo, CPU).

Usage: python -m torch.distributed.run --nproc_per_node=2 scenarios.py OUT_DIR
Every rank runs every scenario (the same script as in one process: no rank checks
except where a scenario is about rank-0-only behaviour) and saves what it saw to
OUT_DIR/rank<r>.pt; rank 0 also saves a checkpoint of the net. The builders
(``data``, ``mlp``, ``compiled``) are imported by the test to compute the
single-process references.
"""
from __future__ import annotations

import gc
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

import torchfit
from torchfit import Callback
from torchfit.callbacks import EarlyStopping, ModelCheckpoint, TerminateOnNaN

METRICS = ["accuracy", "auc", "f1"]


def data(n: int, seed: int) -> TensorDataset:
    """Three noisy linearly separable classes in 4 features."""
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x @ w + 0.5 * torch.randn(n, 3, generator=g)).argmax(dim=1)
    return TensorDataset(x, y)


def mlp(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    norm = [nn.BatchNorm1d(16)] if batchnorm else []
    return nn.Sequential(nn.Linear(4, 16), *norm, nn.ReLU(), nn.Linear(16, 3))


class SubclassNet(torchfit.Model):
    """mlp()'s layers, written as a torchfit.Model subclass (its state_dict keys are mlp()'s)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.layers(x)


def compiled(net: nn.Module, metrics=METRICS, lr: float = 0.1) -> torchfit.Model:
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    return torchfit.Model(net).compile(nn.CrossEntropyLoss(), opt, list(metrics), device="cpu")


def records(history) -> list:
    return history.to_dict("records")


def step_recorder(steps: list) -> Callback:
    """Keeps the running figures handed to on_train_batch_end at logging points."""
    return torchfit.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(dict(logs)) if logs.at_logging_point else None)


class Indexed(Dataset):
    """A dataset that records which indices this process fetched."""

    def __init__(self, base):
        self.base, self.seen = base, []

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.seen.append(int(i))
        return self.base[i]


class StopAt(Callback):
    """Stops at the end of ``epoch`` (or at a logging point of it when ``mid_epoch``)."""

    def __init__(self, epoch: int, mid_epoch: bool = False, rank_zero_only: bool = False):
        self.epoch, self.mid_epoch, self.rank_zero_only = epoch, mid_epoch, rank_zero_only
        self.current = 0

    def on_epoch_begin(self, epoch, logs):
        self.current = epoch + 1  # hooks count from 0; StopAt names the history's 1-based epoch

    def on_train_batch_end(self, batch, logs):
        if self.mid_epoch and logs.at_logging_point and self.current == self.epoch:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs):
        if not self.mid_epoch and epoch + 1 == self.epoch:
            self.model.stop_training = True


class NoImprovement(Callback):
    """Early stopping by reduced logs: stop when ``monitor`` did not improve by ``min_delta``."""

    def __init__(self, monitor: str, min_delta: float):
        self.monitor, self.min_delta, self.best = monitor, min_delta, float("inf")

    def on_epoch_end(self, epoch, logs):
        if logs[self.monitor] < self.best - self.min_delta:
            self.best = logs[self.monitor]
        else:
            self.model.stop_training = True


def main(out_dir: str) -> None:
    rank = torchfit.distributed.rank()
    res = {}

    # 1. per-rank batch 8 here == batch 16 in one process; a single-process checkpoint loads under DDP
    net = mlp(seed=123)
    net.load_state_dict(torch.load(os.path.join(out_dir, "init.pt"), weights_only=True))
    model = compiled(net)
    model.summary(input_shape=(4,))  # printed by rank 0 only
    steps = []
    ckpt = ModelCheckpoint(os.path.join(out_dir, "ckpt", "epoch{epoch}.pt"), save_last=True)  # rank 0 writes
    h = model.fit(3, DataLoader(data(64, 1), batch_size=8), DataLoader(data(30, 2), batch_size=5),
                  log_step_freq=2, verbose=1, callbacks=[step_recorder(steps), ckpt])
    res["parity"] = {"history": records(h), "state": net.state_dict(), "steps": steps}
    if torchfit.distributed.is_main_process():
        torch.save(model.net.state_dict(), os.path.join(out_dir, "net.pt"))  # checkpoint written under DDP

    # 2. gradient accumulation: no_sync between boundaries
    net = mlp(seed=5)
    model = compiled(net)
    h = model.fit(2, DataLoader(data(64, 1), batch_size=4), verbose=0, grad_accum_steps=2)
    res["accum"] = {"history": records(h), "state": net.state_dict()}

    # 2b. torch.compile around DDP (aot_eager: no C++ build, the same graph capture)
    net = mlp(seed=6)
    model = compiled(net)
    model.compile(model.loss_fn, model.optimizer, METRICS, device="cpu", jit_compile={"backend": "aot_eager"})
    h = model.fit(2, DataLoader(data(64, 1), batch_size=8), verbose=0)
    res["jit"] = {"history": records(h), "state": net.state_dict()}

    # 3. uneven sizes: DistributedSampler pads 37 -> 38 and 23 -> 24
    net = mlp(seed=7)
    model = compiled(net)
    h = model.fit(1, DataLoader(data(37, 3), batch_size=4), DataLoader(data(23, 4), batch_size=4), verbose=0)
    res["uneven"] = {
        "history": records(h),
        "state": net.state_dict(),
        "evaluate": dict(model.evaluate(DataLoader(data(23, 4), batch_size=5))),
        "predict": model.predict(DataLoader(data(23, 4), batch_size=5)),
        "predict_x": model.predict(DataLoader(TensorDataset(data(23, 4).tensors[0]), batch_size=3)),
    }

    # 4. a dataset smaller than the world: rank 1's only sample is padding
    net = mlp(seed=8)
    model = compiled(net)
    h = model.fit(2, DataLoader(data(1, 5), batch_size=4), DataLoader(data(1, 6), batch_size=4), verbose=0)
    reg = nn.Linear(4, 1)
    torch.manual_seed(0)
    nn.init.normal_(reg.weight)
    regression = torchfit.Model(reg).compile(nn.MSELoss(), torch.optim.SGD(reg.parameters(), lr=0.1),
                                            ["mae", "r2"], device="cpu")
    xr, yr = data(1, 5).tensors[0], torch.ones(1, 1)
    hr = regression.fit(1, DataLoader(TensorDataset(xr, yr), batch_size=2),
                        DataLoader(TensorDataset(xr, yr), batch_size=2), verbose=0)
    res["tiny"] = {"history": records(h), "state": net.state_dict(),
                   "predict": model.predict(DataLoader(data(1, 6), batch_size=4)),
                   "regression": records(hr), "regression_state": reg.state_dict()}

    # 5. stops: a rank-0-only callback at an epoch end and at a logging point, early stopping by
    #    reduced logs; BatchNorm buffers must agree across ranks afterwards
    stops = {}
    for name, cb in {"epoch_end": StopAt(2, rank_zero_only=True),
                     "mid_epoch": StopAt(2, mid_epoch=True, rank_zero_only=True),
                     "no_improvement": NoImprovement("val_loss", min_delta=10.0),
                     "early_stopping": EarlyStopping("val_loss", min_delta=10.0, patience=1,
                                                     restore_best_weights=True)}.items():
        net = mlp(seed=9, batchnorm=True)
        model = compiled(net)
        h = model.fit(5, DataLoader(data(40, 7), batch_size=4), DataLoader(data(20, 8), batch_size=4),
                      log_step_freq=2, verbose=0, callbacks=[cb])
        stops[name] = {"history": records(h), "epoch": model.epoch, "state": net.state_dict()}
    res["stops"] = stops

    # 5b. a non-finite loss on one rank's shard only: every rank stops at the same logging point
    x, y = data(40, 12).tensors
    x[13] = float("inf")  # sample 13 is in rank 1's second batch of 4
    model = compiled(mlp(seed=12), metrics=["accuracy"])  # AUC would raise on NaN scores
    h = model.fit(2, DataLoader(TensorDataset(x, y), batch_size=4), log_step_freq=2, verbose=2)
    res["nan"] = {"history": records(h), "epoch": model.epoch}
    # ... and with TerminateOnNaN, which reads each batch's own loss between logging points
    batches = []
    model = compiled(mlp(seed=12), metrics=["accuracy"])
    model.fit(2, DataLoader(TensorDataset(x, y), batch_size=4), log_step_freq=100, verbose=2,
              callbacks=[TerminateOnNaN(), torchfit.LambdaCallback(on_train_batch_end=lambda b, logs: batches.append(b))])
    res["terminate_on_nan"] = {"batches": batches, "epoch": model.epoch}

    # 6. shuffling: per-epoch shards that differ per epoch, agree across ranks and follow the seed;
    #    also with no generator and a different global seed on each rank
    shuffles = {}
    for name, generator in {"seeded": torch.Generator().manual_seed(7), "global": None}.items():
        torch.manual_seed(100 + rank)
        ds = Indexed(data(40, 9))
        epochs = []
        recorder = torchfit.LambdaCallback(on_epoch_end=lambda epoch, logs: (epochs.append(list(ds.seen)),
                                                                             ds.seen.clear()))
        model = compiled(mlp(seed=10))
        model.fit(2, DataLoader(ds, batch_size=5, shuffle=True, generator=generator), verbose=0,
                  callbacks=[recorder])
        shuffles[name] = epochs
    res["shuffle"] = shuffles

    # 7. a loader the user already sharded is used as it is
    ds = Indexed(data(20, 11))
    model = compiled(mlp(seed=11))
    model.fit(1, DataLoader(ds, batch_size=5, sampler=DistributedSampler(ds, shuffle=False)), verbose=0)
    res["user_sampler"] = list(ds.seen)

    # 8. resume under torchrun: 2 epochs, then a fresh model resuming from rank 0's last.pt for a
    #    3-epoch run, equals 3 epochs straight (shuffled: set_epoch continues from the checkpoint's epoch)
    def resumable() -> tuple:
        net = mlp(seed=13)
        dl = DataLoader(data(48, 13), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
        return net, compiled(net), dl

    net, model, dl = resumable()
    straight = records(model.fit(3, dl, verbose=0))
    res["resume"] = {"straight": straight, "straight_state": net.state_dict()}
    path = os.path.join(out_dir, "resume", "e{epoch}.pt")
    net, model, dl = resumable()
    model.fit(2, dl, verbose=0, callbacks=[ModelCheckpoint(path, save_last=True)])
    torch.manual_seed(1000 + rank)  # a fresh process: nothing carried over but the file
    net, model, dl = resumable()
    resumed = records(model.fit(3, dl, verbose=0, callbacks=[ModelCheckpoint(path, save_last=True)],
                                resume_from=os.path.join(out_dir, "resume", "last.pt")))
    res["resume"].update(resumed=resumed, resumed_state=net.state_dict())

    # 9. a torchfit.Model subclass with its own layers (torchkeras 1.x style) is its own net under DDP too
    model = SubclassNet(seed=17)
    model.compile(nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), list(METRICS),
                  device="cpu")
    h = model.fit(2, DataLoader(data(64, 1), batch_size=8), DataLoader(data(30, 2), batch_size=5), verbose=0)
    res["subclass"] = {"history": records(h), "state": model.state_dict(),
                       "predict": model.predict(DataLoader(data(30, 2), batch_size=5))}

    # the DDP wrappers lived as long as their fit (no gc needed: nothing holds them)
    res["ddp_alive"] = sum(type(o) is nn.parallel.DistributedDataParallel for o in gc.get_objects())
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))


def fail(out_dir: str) -> None:
    """Rank 1 raises in epoch 2 while rank 0 goes on into a DDP step."""
    rank = torchfit.distributed.rank()

    class Boom(Callback):
        def on_epoch_begin(self, epoch, logs):
            if epoch == 1 and rank == 1:  # the second epoch (hooks count from 0)
                raise RuntimeError("rank 1 failed on purpose")

    model = compiled(mlp())
    model.fit(3, DataLoader(data(64, 1), batch_size=8), verbose=0, callbacks=[Boom()])


def stall(out_dir: str) -> None:
    """Rank 1 stalls (alive, not crashed) in epoch 2; the group's timeout turns it into an error on rank 0."""
    import datetime
    import time

    torchfit.distributed.init_process_group("cpu", timeout=datetime.timedelta(seconds=5))
    rank = torchfit.distributed.rank()

    class Stall(Callback):
        def on_epoch_begin(self, epoch, logs):
            if epoch == 1 and rank == 1:  # the second epoch (hooks count from 0)
                time.sleep(300)

    model = compiled(mlp())
    model.fit(3, DataLoader(data(64, 1), batch_size=8), verbose=0, callbacks=[Stall()])


if __name__ == "__main__":
    {"main": main, "fail": fail, "stall": stall}[sys.argv[1]](sys.argv[2])
