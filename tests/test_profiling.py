"""The Profiler: each epoch's time split into parts that add up to the wall time, each slow part in
its own column, hooks taken away after the fit, a torch.profiler trace of chosen batches."""
from __future__ import annotations

import inspect
import json
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import torchfit
from torchfit.callbacks import Callback
from torchfit.callbacks.profiling import PARTS, Profiler
from conftest import blobs, loader, mlp

DATA_SLEEP, FORWARD_SLEEP, CALLBACK_SLEEP, BACKWARD_END_SLEEP = 0.012, 0.006, 0.004, 0.002


class SlowDataset(Dataset):
    """A batch of 8 costs DATA_SLEEP to load."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.X, self.y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        if i % 8 == 0:
            time.sleep(DATA_SLEEP)
        return self.X[i], self.y[i]


class SlowNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        time.sleep(FORWARD_SLEEP)
        return self.fc(x)


class SlowCallback(Callback):
    def on_train_batch_end(self, batch, logs):
        time.sleep(CALLBACK_SLEEP)

    def on_backward_end(self, batch):
        time.sleep(BACKWARD_END_SLEEP)


def test_slow_loader_forward_and_callback_each_land_in_their_own_column():
    prof = Profiler()
    model = torchfit.Model(SlowNet()).compile(nn.CrossEntropyLoss(), "sgd", device="cpu")
    steps = 16
    start = time.perf_counter()
    model.fit(2, DataLoader(SlowDataset(8 * steps), batch_size=8), DataLoader(SlowDataset(16), batch_size=8),
              callbacks=[prof, SlowCallback()], verbose=0, log_step_freq=4)
    elapsed = time.perf_counter() - start
    df = prof.frame()
    assert list(df.columns) == ["epoch", "wall", "steps", *PARTS]
    assert df["epoch"].tolist() == [1, 2] and df["steps"].tolist() == [steps, steps]
    for _, row in df.iterrows():
        parts = row[list(PARTS)]
        assert abs(parts.sum() - row["wall"]) <= 0.03 * row["wall"]  # the parts tile the epoch
        # each sleep where it belongs: at least the time slept (the parts tile the epoch, so a sleep
        # charged elsewhere would leave its own column short), and not far more (a loaded machine adds some)
        assert steps * DATA_SLEEP <= row["data"] <= steps * DATA_SLEEP * 2.5
        assert steps * FORWARD_SLEEP <= row["forward"] <= steps * FORWARD_SLEEP * 2.5
        callbacks_slept = steps * (CALLBACK_SLEEP + BACKWARD_END_SLEEP)
        assert callbacks_slept <= row["callbacks"] <= callbacks_slept * 2.5
        # validation: 2 batches, each with a data and a forward sleep
        assert 2 * (DATA_SLEEP + FORWARD_SLEEP) <= row["validation"] <= 2 * (DATA_SLEEP + FORWARD_SLEEP) * 3
        for quick in ("copy", "backward", "optimizer", "metrics", "sync", "other"):
            assert row[quick] < 0.5 * steps * FORWARD_SLEEP, (quick, row[quick])
        assert row["sync"] > 0  # logging points and the epoch's end
    # an independent clock: the epochs are (almost) all of the fit
    assert 0.85 * elapsed <= df["wall"].sum() <= elapsed


def test_hooks_and_wrappers_are_taken_away_after_fit_and_after_an_error():
    net = mlp()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1),
                                       device="cpu")
    prof = Profiler()
    model.fit(1, loader(blobs(64), 16), callbacks=[prof], verbose=0)
    assert not net._forward_hooks and not net._forward_pre_hooks
    assert not model.optimizer._optimizer_step_pre_hooks and not model.optimizer._optimizer_step_post_hooks

    class Boom(Callback):
        def on_train_batch_end(self, batch, logs):
            if batch == 2:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.fit(1, loader(blobs(64), 16), callbacks=[prof, Boom()], verbose=0)
    assert not net._forward_hooks and not net._forward_pre_hooks
    assert not model.optimizer._optimizer_step_pre_hooks and not model.optimizer._optimizer_step_post_hooks
    assert len(prof.frame()) == 1  # the failed epoch is not a row
    model.fit(1, loader(blobs(64), 16), callbacks=[prof], verbose=0)  # the same instance again: rows continue
    assert prof.frame()["epoch"].tolist() == [1, 2]


def test_accumulation_and_a_loader_without_len():
    class NoLen(torch.utils.data.IterableDataset):
        def __iter__(self):
            ds = blobs(48)
            return iter([ds[i] for i in range(len(ds))])

    net = mlp()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1),
                                       device="cpu")
    prof = Profiler()
    model.fit(2, DataLoader(NoLen(), batch_size=8), callbacks=[prof], verbose=0, grad_accum_steps=2)
    df = prof.frame()
    assert df["steps"].tolist() == [6, 6]
    assert ((df[list(PARTS)].sum(axis=1) - df["wall"]).abs() <= 0.03 * df["wall"]).all()
    assert (df[["data", "forward", "backward", "optimizer"]] > 0).all().all()


def test_trace_of_chosen_batches_and_the_plot(tmp_path):
    pytest.importorskip("matplotlib")
    net = mlp()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1),
                                       device="cpu")
    prof = Profiler(trace=(2, 3), trace_dir=tmp_path / "trace")
    model.fit(1, loader(blobs(64), 16), callbacks=[prof], verbose=0)
    assert prof.trace_path is not None and prof.trace_path.endswith(".pt.trace.json")
    with open(prof.trace_path) as f:
        events = json.load(f)["traceEvents"]
    assert any("addmm" in e.get("name", "") for e in events)  # the Linear layers' work was traced
    fig = prof.plot()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "forward" in labels and "data" in labels
    assert prof.plot(share=True).axes[0].get_ylabel() == "share of the epoch"


def test_bad_arguments_and_use_outside_fit():
    with pytest.raises(ValueError, match=r"trace=\(10, 20\)"):
        Profiler(trace=(3, 1))
    with pytest.raises(ValueError, match="no epoch has been profiled"):
        Profiler().plot()


@pytest.mark.skipif("profile" not in inspect.signature(torchfit.Model.fit).parameters,
                    reason="fit(profile=True) is wired in model.py by the lead")
def test_fit_profile_true_keeps_one_profiler_on_the_model():
    net = mlp()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "sgd", device="cpu")
    model.fit(1, loader(blobs(64), 16), verbose=0, profile=True)
    model.fit(1, loader(blobs(64), 16), verbose=0, profile=True)
    assert model.profiler.frame()["epoch"].tolist() == [1, 2]


def test_attach_keeps_one_profiler_per_model():
    from torchfit.callbacks.profiling import attach

    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), "sgd", device="cpu")
    first = attach(model)
    assert model.profiler is first and attach(model) is first
    model.fit(1, loader(blobs(64), 16), verbose=0, callbacks=[attach(model)])
    model.fit(1, loader(blobs(64), 16), verbose=0, callbacks=[attach(model)])
    assert model.profiler.frame()["epoch"].tolist() == [1, 2]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_parts_split_the_gpu_timeline_and_a_slow_forward_lands_in_forward():
    prof = Profiler()
    model = torchfit.Model(SlowNet()).compile(nn.CrossEntropyLoss(), "sgd", device="cuda")
    steps = 16
    model.fit(2, DataLoader(SlowDataset(8 * steps), batch_size=8), callbacks=[prof, SlowCallback()], verbose=0,
              log_step_freq=4)
    for _, row in prof.frame().iterrows():
        assert abs(row[list(PARTS)].sum() - row["wall"]) <= 0.05 * row["wall"]  # events span the host's epoch
        assert steps * DATA_SLEEP <= row["data"] * 1.05
        assert steps * FORWARD_SLEEP <= row["forward"] * 1.05
        assert steps * (CALLBACK_SLEEP + BACKWARD_END_SLEEP) <= row["callbacks"] * 1.05


def test_the_cuda_clock_charges_each_stretch_between_events_to_its_part(monkeypatch):
    # CUDA events stood in for by host timestamps: the bookkeeping (which stretch goes to which part,
    # one read per epoch) is what is checked here; the GPU test above checks real events.
    from torchfit.callbacks import profiling

    class FakeEvent:
        reads = 0

        def __init__(self, enable_timing):
            assert enable_timing

        def record(self, stream):
            self.t = time.perf_counter()

        def synchronize(self):
            FakeEvent.reads += 1

        def elapsed_time(self, other):
            return (other.t - self.t) * 1000.0

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: None)
    clock = profiling._Clock(torch.device("cuda"))
    assert clock.cuda
    for epoch in range(2):  # events are reused by the second epoch
        clock.start(profiling._CALLBACKS)
        clock.mark(profiling._DATA)
        time.sleep(0.02)
        clock.mark(profiling._FORWARD)
        time.sleep(0.01)
        clock.mark(profiling._METRICS)
        clock.relabel(profiling._SYNC)
        time.sleep(0.005)
        totals = dict(zip(PARTS, clock.finish()))
        assert 0.02 <= totals["data"] < 0.03 and 0.01 <= totals["forward"] < 0.02
        assert 0.005 <= totals["sync"] < 0.015 and totals["metrics"] == 0.0
    assert FakeEvent.reads == 2 and len(clock.events) == 5
