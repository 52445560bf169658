"""Fault injection, continued (issue 22): torchrun, the launcher's argument checks, heads, class weights.

Each case is an attack in tests/test_faults.py's sense: the error names the culprit and the fix, and
nothing changed (``attack`` / ``Snapshot``: weights, BatchNorm statistics, optimizer state, epoch,
history, files). The torchrun cases launch tests/dist_scripts/faults_dist.py on 2 processes (gloo, CPU).
"""
from __future__ import annotations

import math
import re
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import torchfit
from torchfit.arguments import FitArgs
from torchfit.callbacks import EarlyStopping
from torchfit.errors import CheckpointError, StepError
from test_faults import Snapshot, attack, data, trained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "dist_scripts", "faults_dist.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
import faults_dist as fd  # noqa: E402  (the builders the launched script uses)
import conftest  # noqa: E402


def torchrun(mode: str, out_dir, timeout: float = 180) -> subprocess.CompletedProcess:
    return conftest.torchrun(SCRIPT, mode, out_dir, timeout=timeout)


def launched(mode: str, out_dir) -> list:
    proc = torchrun(mode, out_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


# ------------------------------------------------- torchrun: ranks with different numbers of batches
UNEQUAL = {  # attempt: what the message must say (both ranks' counts, or the datasets' sizes)
    "fit": r"^dl_train differs between the ranks.*rank 0: 4 batches of 32 samples from a dataset of 64, "
           r"rank 1: 3 batches of 20 samples from a dataset of 40",
    "fit own sampler": r"^dl_train differs.*rank 0: 4 batches.*rank 1: 3 batches",
    "fit dl_val": r"^dl_val differs.*rank 0: 4 batches.*rank 1: 3 batches",
    "evaluate": r"^dl differs.*rank 0: 4 batches.*rank 1: 3 batches",
    "predict": r"^dl differs.*rank 0: 2 batches of 15 samples from a dataset of 30, rank 1: 2 batches of 15 "
               r"samples from a dataset of 29.*dataset order",
}


class OtherRank:
    """Rank 0 of 2 for ``shard``, without a process group: the gather hands back this rank's counts and
    the other rank's ``(batches, samples, dataset size)``."""

    rank, world_size = 0, 2

    def __init__(self, other):
        self.other, self.gathers = other, 0

    def gather(self, t):
        self.gathers += 1
        return torch.cat([t, torch.tensor(self.other)])


@pytest.mark.parametrize("purpose, other, match", [
    ("train", [3, 20, 40], r"rank 0: 4 batches of 32 samples from a dataset of 64, rank 1: 3 batches of 20"),
    ("eval", [5, 33, 65], r"rank 1: 5 batches of 33 samples from a dataset of 65"),
    ("predict", [4, 32, 63], r"rank 1: 4 batches of 32 samples from a dataset of 63.*dataset order"),
])
def test_the_ranks_batch_counts_are_compared_in_one_gather(purpose, other, match):
    from torchfit.distributed.sharding import shard

    dl = DataLoader(fd.data(64, 0), batch_size=8)
    ctx = OtherRank(other)
    with pytest.raises(ValueError, match=r"^dl_train differs between the ranks under torchrun .*" + match):
        shard(ctx, dl, "dl_train", purpose)
    assert ctx.gathers == 1
    same = OtherRank([4, 32, 64] if purpose == "predict" else [4, 32, 63])  # training: the batches count
    assert len(shard(same, dl, "dl_train", purpose)) == 4 and same.gathers == 1


@pytest.mark.slow
def test_ranks_with_different_numbers_of_batches_are_refused_before_the_first_step(tmp_path):
    """A dataset sharded by the user (each rank its own size) crashed inside gloo ("Received data size
    doesn't match expected size") or hung; now every rank refuses it with the counts and the fix."""
    ranks = launched("unequal", tmp_path)
    for res in ranks:
        for attempt, match in UNEQUAL.items():
            got = res[attempt]
            assert got is not None, f"{attempt}: no error"
            assert got["unchanged"], f"{attempt}: the model changed"
            assert re.search(match, got["message"]), (attempt, got["message"])
            assert "DistributedSampler(dataset, drop_last=True)" in got["message"]
            assert "whole dataset on every rank" in got["message"]
        # the model and the process group still work afterwards
        assert res["after"]["epochs"] == 1 and math.isfinite(res["after"]["loss"])
    assert ranks[0]["fit"]["message"] == ranks[1]["fit"]["message"]  # every rank says the same


# ----------------------------------------- torchrun: sample weights of a padded last batch
@pytest.mark.slow
def test_sample_weights_survive_the_padded_last_batch_under_torchrun(tmp_path):
    """13 weighted samples, 4 per rank and batch: rank 1's last batch is padded, and its loss is
    recomputed on the real rows; with their weights, the figures are one process's (batch 8)."""
    ranks = launched("weighted", tmp_path)
    model = fd.compiled(seed=3, lr=0.0, batchnorm=False)
    train, val = fd.data(13, seed=1, weights=True), fd.data(11, seed=2, weights=True)
    history = model.fit(1, DataLoader(train, batch_size=8), DataLoader(val, batch_size=8), verbose=0)
    ref = history.to_dict("records")[0]
    evaluated = model.evaluate(DataLoader(val, batch_size=8), verbose=0, return_dict=True)
    # the weighted figure is what it claims: sum(w * loss) / N over the dataset (the net never changed)
    with torch.no_grad():
        x, y, w = train.tensors
        by_hand = (nn.functional.cross_entropy(model.net(x), y, reduction="none") * w).sum() / len(y)
    assert ref["loss"] == pytest.approx(float(by_hand), rel=1e-6)
    for res in ranks:
        got = res["history"][0]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-7), key
        for key, value in evaluated.items():
            assert res["evaluate"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


# ------------------------------------- fit(num_processes=N): arguments checked before any worker starts
@pytest.fixture
def no_workers(monkeypatch):
    """Starting a worker fails the test: the refusal must come first."""
    import torch.multiprocessing as mp

    def refuse(*args, **kwargs):
        raise AssertionError("a worker process was about to start")

    monkeypatch.setattr(mp, "get_context", refuse)


def test_a_numpy_integer_is_a_number_of_processes():
    ref = trained(epochs=0)
    ref_history = ref.fit(1, data(), verbose=0)
    model = trained(epochs=0)
    history = model.fit(1, data(), verbose=0, num_processes=np.int64(1))  # one process: a plain fit
    assert history.to_dict("records") == ref_history.to_dict("records")
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, ref.net.state_dict()[k]), k
    assert torchfit.distributed.notebook.check_can_launch(np.int64(2), None) == 2
    assert type(torchfit.distributed.notebook.check_can_launch(np.int32(3), None)) is int


@pytest.mark.parametrize("bad", [np.int64(0), 2.0, "2", True])
def test_a_number_of_processes_that_is_not_one_is_refused(bad, no_workers):
    model = trained()
    attack(model, lambda: model.fit(1, data(), verbose=0, num_processes=bad), ValueError,
           r"num_processes must be a whole number >= 1")


LAUNCH_FAULTS = {
    "epochs a str": ({"epochs": "2"}, ValueError, r"epochs must be an int >= 0; got '2'"),
    "verbose 5": ({"verbose": 5}, ValueError, r"verbose must be 0"),
    "grad_accum_steps 0": ({"grad_accum_steps": 0}, ValueError, r"grad_accum_steps must be an int >= 1"),
    "overfit_batches 0": ({"overfit_batches": 0}, ValueError, r"overfit_batches must be an int >= 1"),
    "a callback class": ({"callbacks": [EarlyStopping]}, TypeError, r"pass an instance: EarlyStopping"),
    "a negative class weight": ({"class_weight": {0: -1.0}}, ValueError, r"class_weight\[0\] is -1.0"),
    "initial_epoch after epochs": ({"initial_epoch": 5}, ValueError, r"initial_epoch=5 is after epochs=2"),
}


@pytest.mark.parametrize("case", sorted(LAUNCH_FAULTS))
def test_a_bad_fit_argument_is_refused_before_the_workers_start(case, no_workers):
    """fit(num_processes=2, epochs="2") failed inside the workers (WorkerError); it is the error a
    one-process fit gives, raised here."""
    kwargs, error, match = LAUNCH_FAULTS[case]
    kwargs = {"epochs": 2, "verbose": 0, **kwargs}
    model = trained()
    with pytest.raises(error, match=match):  # the one-process fit's error ...
        trained().fit(data(), **kwargs)
    attack(model, lambda: model.fit(data(), num_processes=2, **kwargs), error, match)  # ... in the parent


def test_resume_from_a_file_that_is_no_checkpoint_is_refused_before_the_workers_start(tmp_path, no_workers):
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError) as one_process:
        trained().fit(3, data(), verbose=0, resume_from=path)
    model = trained()
    info = attack(model, lambda: model.fit(3, data(), verbose=0, num_processes=2, resume_from=path),
                  CheckpointError, r"notes\.txt", tmp_path)
    assert str(info.value) == str(one_process.value)


def test_launch_fit_with_a_dict_checks_it_too(no_workers):
    model = trained()
    attack(model, lambda: torchfit.distributed.launch_fit(model, 2, {"epochs": "2", "dl_train": data()}),
           ValueError, r"epochs must be an int")
    attack(model, lambda: torchfit.distributed.launch_fit(model, 2, {"epochs": 2, "dl_train": data(), "epoch": 3}),
           TypeError, r"launch_fit got \['epoch'\], which fit has no argument for")


def test_checking_before_the_launch_changes_nothing():
    """The parent's check draws no random number, attaches no profiler and draws no batch: that is
    the workers' fit's to do, so they start from the state a torchrun run would."""
    from torchfit.arguments import check_launch

    model = trained()
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    snap = Snapshot(model)
    rng = torch.get_rng_state()
    dl = data()
    check_launch(model, FitArgs(epochs=2, x=x, y=y, validation_split=0.25, profile=True))
    check_launch(model, {"epochs": 2, "dl_train": dl, "overfit_batches": 1})
    assert torch.equal(torch.get_rng_state(), rng)
    assert not hasattr(model, "profiler") or model.profiler is None
    snap.assert_same()


# ----------------------------------------------------------- a head that returns a short batch
class TwoHeads(nn.Module):
    """Output 'a' (3 classes) and 'b' (a regression); 'b' drops a row on call ``short_on``."""

    def __init__(self, short_on: int, as_tuple: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.a, self.b = nn.Linear(8, 3), nn.Linear(8, 1)
        self.short_on, self.as_tuple, self.calls = short_on, as_tuple, 0

    def forward(self, x):
        self.calls += 1
        h = self.body(x)
        b = self.b(h)
        if self.calls == self.short_on:
            b = b[:-1]
        return (self.a(h), b) if self.as_tuple else {"a": self.a(h), "b": b}


class HeadData(Dataset):
    def __init__(self, n: int, as_tuple: bool = False):
        g = torch.Generator().manual_seed(1)
        self.x, self.ya, self.yb = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g), \
            torch.randn(n, 1, generator=g)
        self.as_tuple = as_tuple

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        y = (self.ya[i], self.yb[i]) if self.as_tuple else {"a": self.ya[i], "b": self.yb[i]}
        return self.x[i], y


def two_heads(short_on: int, as_tuple: bool = False) -> torchfit.Model:
    net = TwoHeads(short_on, as_tuple)
    losses = [nn.CrossEntropyLoss(), nn.MSELoss()] if as_tuple else {"a": nn.CrossEntropyLoss(), "b": nn.MSELoss()}
    metrics = {0: ["accuracy"]} if as_tuple else {"a": ["accuracy"]}
    return torchfit.Model(net).compile(losses, torch.optim.Adam(net.parameters(), lr=1e-2), metrics, device="cpu")


@pytest.mark.parametrize("as_tuple", [False, True], ids=["dict", "tuple"])
def test_a_head_that_returns_a_short_batch_is_named(as_tuple):
    """Batch 37 of 40: output 'b' gives 15 rows for 16 samples. The error names the head, both sizes
    and where to look; batch 37 trains nothing (the loss fails before backward; its forward did update
    the BatchNorm statistics, as any failing training forward does mid-epoch)."""
    name = "output_1" if as_tuple else "b"
    model = two_heads(short_on=37, as_tuple=as_tuple)
    seen = {}

    class Before37(torchfit.Callback):
        def on_train_batch_end(self, batch, logs):
            if batch == 35:  # hooks count from 0: batch 36 has just trained
                seen["params"] = {k: p.detach().clone() for k, p in model.net.named_parameters()}
                state = model.optimizer.state_dict()["state"]
                seen["opt"] = {i: {k: v.clone() for k, v in s.items()} for i, s in state.items()}
                seen["step"] = model.global_step

    with pytest.raises(StepError, match=rf"batch 37 of 40.*output '{name}' has 15 rows but the batch has 16 "
                                        rf"targets for it.*\(15, 1\).*\(16, 1\).*forward computes '{name}'"):
        model.fit(1, DataLoader(HeadData(640, as_tuple), batch_size=16), verbose=0, callbacks=[Before37()])
    assert model.global_step == seen["step"] == 36
    for k, p in model.net.named_parameters():
        assert torch.equal(p, seen["params"][k]), k
    for i, s in model.optimizer.state_dict()["state"].items():
        for k, v in s.items():
            assert torch.equal(v, seen["opt"][i][k]), (i, k)


def test_a_short_head_on_the_first_batch_changes_nothing():
    model = two_heads(short_on=1)
    snap = Snapshot(model)
    with pytest.raises(StepError, match=r"batch 1 of 4.*output 'b' has 15 rows"):
        model.fit(1, DataLoader(HeadData(64), batch_size=16), verbose=0)
    snap.assert_same()
    history = model.fit(1, DataLoader(HeadData(64), batch_size=16), verbose=0)  # trains afterwards
    assert math.isfinite(history["loss"].iloc[-1]) and "b_loss" in history


def test_a_short_head_in_validation_is_named_before_training():
    model = two_heads(short_on=1)  # the first forward is the check of dl_val's first batch
    attack_free = Snapshot(model)
    with pytest.raises(StepError, match=r"validation.*output 'b' has 15 rows"):
        model.fit(1, DataLoader(HeadData(64), batch_size=16), DataLoader(HeadData(32), batch_size=16), verbose=0)
    attack_free.assert_same()
    history = model.fit(1, DataLoader(HeadData(64), batch_size=16), verbose=0)  # trains afterwards
    assert math.isfinite(history["loss"].iloc[-1]) and "b_loss" in history


# ------------------------------------------------------------------------- class weights
@pytest.mark.parametrize("weights, match", [
    ({0: -1.0}, r"class_weight\[0\] is -1.0, a negative weight.*use 0 to leave class 0 out"),
    ({0: 1.0, 2: -0.5}, r"class_weight\[2\] is -0.5"),
    ({1: np.float64(-2.0)}, r"class_weight\[1\] is -2.0"),
    ({0: float("nan")}, r"finite numbers >= 0.*0: nan"),
    ({0: float("inf")}, r"finite numbers >= 0.*0: inf"),
])
def test_a_negative_or_non_finite_class_weight_is_refused(weights, match):
    model = trained()
    attack(model, lambda: model.fit(1, data(), verbose=0, class_weight=weights), ValueError, match)


def test_a_zero_class_weight_still_leaves_the_class_out():
    model = trained()
    history = model.fit(1, data(), verbose=0, class_weight={0: 0.0, 1: 1.0, 2: 1.0})
    assert math.isfinite(history["loss"].iloc[-1])
