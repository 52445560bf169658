"""Resume anywhere: a run resumed from a checkpoint written after any training batch ends equal to
the run that was never stopped (weights, optimizer state, history, step figures, what it prints).

Each case trains once straight through with ``ModelCheckpoint(save_freq=N)`` writing a file every
N batches (inside accumulation windows, at epochs' last batches), then resumes fresh models (built
with other seeds, so nothing is shared by accident) from several of those files.
"""
from __future__ import annotations

import contextlib
import glob
import io
import os
import random
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit
from torchfit.callbacks import EMA, LearningRateScheduler, ModelCheckpoint
from torchfit.errors import CheckpointError

from resume_script import Noisy  # blobs with augmentation noise from torch, numpy and Python's random


def tensors(n: int, seed: int) -> TensorDataset:
    ds = Noisy(n, seed)
    return TensorDataset(ds.x, ds.y)


class KerasStep(torchfit.Model):
    """A train_step written the Keras way (self(x), compute_loss, backward, optimizer.step)."""

    def train_step(self, data):
        x, y = data
        self.optimizer.zero_grad()
        y_pred = self(x)
        loss = self.compute_loss(y=y, y_pred=y_pred)
        self.backward(loss)
        self.optimizer.step()
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


def setup(case: str, seed: int):
    """(model, dl_train, dl_val, callbacks, fit kwargs) for ``case``; ``seed`` seeds the net's init."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    net = nn.Sequential(nn.Linear(4, 24), nn.ReLU(), nn.Dropout(0.3), nn.Linear(24, 3))
    cls = KerasStep if case == "keras_step" else torchfit.Model
    model = cls(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=1e-2),
                             ["accuracy", "auc"], device="cpu")
    gen = torch.Generator().manual_seed(11)
    kwargs, callbacks = {}, []
    if case in ("augmented", "workers"):
        dl_train = DataLoader(Noisy(90, 0), batch_size=8, shuffle=True, generator=gen,
                              num_workers=2 if case == "workers" else 0)
    else:
        dl_train = DataLoader(tensors(90, 0), batch_size=8, shuffle=True, generator=gen)
    dl_val = DataLoader(tensors(30, 1), batch_size=10)
    if case == "steps_per_epoch":  # 12 batches in the loader, 5 an epoch: Keras 3 carries on across epochs
        kwargs["steps_per_epoch"] = 5
    if case == "no_fast_path":
        kwargs["fast_path"] = False
    if case == "accumulation":
        kwargs["grad_accum_steps"] = 3
    if case == "ema":
        callbacks.append(EMA(decay=0.9))
    if case == "one_cycle":
        callbacks.append(LearningRateScheduler(
            lambda opt, total: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=total),
            interval="step"))
        kwargs["grad_accum_steps"] = 2
    return model, dl_train, dl_val, callbacks, kwargs


def straight(case: str, tmp_path, epochs: int = 3, every: int = 4):
    """The uninterrupted run, writing a checkpoint every ``every`` batches; (model, printed text, files)."""
    model, dl_train, dl_val, callbacks, kwargs = setup(case, seed=0)
    saver = ModelCheckpoint(str(tmp_path / "ckpt" / "e{epoch}-b{batch:02d}.pt"), save_freq=every)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.fit(epochs, dl_train, dl_val, callbacks=callbacks + [saver], verbose=1, progress_bar=False, log_step_freq=3, **kwargs)
    files = sorted(glob.glob(str(tmp_path / "ckpt" / "*.pt")), key=os.path.getmtime)
    return model, out.getvalue(), files


def resumed(case: str, path: str, tmp_path, epochs: int = 3, every: int = 4):
    model, dl_train, dl_val, callbacks, kwargs = setup(case, seed=5)
    saver = ModelCheckpoint(str(tmp_path / "again" / "e{epoch}-b{batch:02d}.pt"), save_freq=every)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.fit(epochs, dl_train, dl_val, callbacks=callbacks + [saver], verbose=1, progress_bar=False, log_step_freq=3,
                  resume_from=path, **kwargs)
    return model, out.getvalue()


def assert_same_run(a: torchfit.Model, b: torchfit.Model) -> None:
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k]), f"weights {k} differ"
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for i in sa:
        for key in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][key]), torch.as_tensor(sb[i][key])), f"optimizer {i}.{key}"
    assert a.history.equals(b.history), f"{a.history}\n{b.history}"
    assert a.step_history.equals(b.step_history)
    assert a.global_step == b.global_step


def figure_lines(text: str) -> list:
    """The printed lines that carry figures (step dicts, epoch tables): not the time bars or notices."""
    return [line for line in text.splitlines()
            if line.strip() and not line.startswith(("=", "Resuming", "Start Training"))]


def last_table(text: str) -> str:
    """The last epoch's printed table (the figures of every finished epoch)."""
    tables = re.findall(r"(\+[-+]+\+\n(?:[|+].*\n)+)", text)
    assert tables, text
    return tables[-1]


CASES = ["plain", "no_fast_path", "augmented", "accumulation", "ema", "one_cycle", "keras_step", "steps_per_epoch"]


@pytest.mark.parametrize("case", CASES)
def test_a_run_resumed_after_any_batch_ends_as_the_uninterrupted_one(case, tmp_path):
    model, printed, files = straight(case, tmp_path)
    batches = 5 if case == "steps_per_epoch" else 12
    assert len(files) == 3 * batches // 4  # a file every 4 batches, across epoch ends
    # the first file, one inside an accumulation window or a logging interval, one at an epoch's last
    # batch (e1-b12), one in the last epoch
    picks = [files[0], files[2], files[-1]] if case == "steps_per_epoch" else [files[0], files[2], files[4], files[-1]]
    for path in picks:
        again, text = resumed(case, path, tmp_path)
        assert_same_run(model, again)
        assert last_table(text) == last_table(printed)
        # every figure the resumed run prints is the one the straight run printed at that point
        resumed_lines = figure_lines(text)
        assert resumed_lines == figure_lines(printed)[-len(resumed_lines):]
        assert "continues after batch" in text or path.endswith(f"b{batches}.pt")


@pytest.mark.slow
def test_loader_workers_resume_exactly(tmp_path):
    model, printed, files = straight("workers", tmp_path, epochs=2, every=5)
    again, text = resumed("workers", files[1], tmp_path, epochs=2, every=5)
    assert_same_run(model, again)
    assert last_table(text) == last_table(printed)


def test_load_checkpoint_then_fit_finishes_the_epoch_in_progress(tmp_path):
    model, _, files = straight("plain", tmp_path)
    again, dl_train, dl_val, callbacks, kwargs = setup("plain", seed=5)
    again.load_checkpoint(files[1])  # e1-b08
    assert again.epoch == 0
    again.fit(3, dl_train, dl_val, callbacks=[ModelCheckpoint(str(tmp_path / "x{batch}.pt"), save_freq=4)],
              verbose=0, log_step_freq=3)  # fit(n) after a load: n epochs, the one in progress first
    assert_same_run(model, again)


def test_a_mid_epoch_checkpoint_that_does_not_fit_this_fit_changes_nothing(tmp_path):
    from test_faults import Snapshot

    _, _, files = straight("plain", tmp_path)
    model, _, dl_val, _, _ = setup("plain", seed=5)
    short = DataLoader(tensors(40, 0), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    snap = Snapshot(model)
    with pytest.raises(CheckpointError, match="after batch 8 of epoch 2.*has 5 batches"):
        model.fit(3, short, dl_val, verbose=0, resume_from=files[4])  # e2-b08
    snap.assert_same()
    _, _, accumulated = straight("accumulation", tmp_path / "acc")
    inside = accumulated[1]  # e1-b08: 2 batches into a window of 3
    with pytest.raises(CheckpointError, match="grad_accum_steps=3 .2 batch.es. in.*grad_accum_steps=1"):
        model.fit(3, DataLoader(tensors(90, 0), batch_size=8, shuffle=True, generator=torch.Generator()), dl_val,
                  verbose=0, resume_from=inside)
    snap.assert_same()
    unseeded = DataLoader(tensors(90, 0), batch_size=8, shuffle=False)
    with pytest.raises(CheckpointError, match="random generator state"):
        model.fit(3, unseeded, dl_val, verbose=0, resume_from=files[4])
    snap.assert_same()


def test_a_mid_epoch_position_is_kept_only_where_a_callback_saves_mid_epoch(tmp_path):
    """Without such a callback, fit takes no RNG snapshot per epoch, and a checkpoint a callback writes
    mid-epoch says so when loaded (it resumes at the epoch's start, with a warning)."""
    from torchfit.callbacks import LambdaCallback

    model, dl_train, dl_val, _, _ = setup("plain", seed=0)
    path = str(tmp_path / "mid.pt")
    saver = LambdaCallback(on_train_batch_end=lambda b, logs: b == 3 and model.save_checkpoint(path))
    model.fit(1, dl_train, verbose=0, callbacks=[saver])
    assert torch.load(path, weights_only=True)["mid_epoch"] == {"epoch": 1}
    with pytest.warns(RuntimeWarning, match="which had not finished"):
        setup("plain", seed=1)[0].load_checkpoint(path)


def test_steps_per_epoch_resumes_exactly_from_an_epoch_end_too(tmp_path):
    """The carried iterator is in every checkpoint: one written at an epoch's end continues it."""
    model, dl_train, dl_val, _, kwargs = setup("steps_per_epoch", seed=0)
    model.fit(3, dl_train, dl_val, verbose=0, log_step_freq=3,
              callbacks=[ModelCheckpoint(str(tmp_path / "e{epoch}.pt"))], **kwargs)
    again, dl_train, dl_val, _, kwargs = setup("steps_per_epoch", seed=5)
    again.fit(3, dl_train, dl_val, verbose=0, log_step_freq=3, resume_from=str(tmp_path / "e1.pt"), **kwargs)
    assert_same_run(model, again)


class LargestSeen(torchfit.metrics.Metric):
    """A metric of the user's whose running state is a numpy array: no checkpoint can hold it."""

    def reset(self):
        self.top = np.zeros(1)

    def update(self, preds, targets):
        self.top = np.maximum(self.top, preds.max().detach().numpy())

    def compute(self):
        return float(self.top[0])


class LargestSeenWithState(LargestSeen):
    def state_dict(self):
        return {"top": float(self.top[0])}

    def load_state_dict(self, state):
        self.top = np.array([state["top"]])


def test_a_metric_state_no_checkpoint_can_hold_is_named_and_its_own_state_dict_is_used(tmp_path):
    def build(metric, seed):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(4, 3))
        return torchfit.Model(net).compile(nn.CrossEntropyLoss(), "adam", {"largest": metric}, device="cpu")

    dl = lambda: DataLoader(tensors(48, 0), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(2))
    saver = ModelCheckpoint(str(tmp_path / "m{batch}.pt"), save_freq=4)
    model = build(LargestSeen(), 0)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"metric 'largest' keeps top = a numpy.ndarray.*state_dict\(\)"):
        model.fit(1, dl(), verbose=0, callbacks=[saver])
    assert all(torch.equal(v, before[k]) for k, v in model.net.state_dict().items()) and model.global_step == 0
    straight = build(LargestSeenWithState(), 0)
    straight.fit(2, dl(), verbose=0, callbacks=[ModelCheckpoint(str(tmp_path / "s{batch}.pt"), save_freq=4)])
    again = build(LargestSeenWithState(), 3)
    again.fit(2, dl(), verbose=0, resume_from=str(tmp_path / "s4.pt"),
              callbacks=[ModelCheckpoint(str(tmp_path / "r{batch}.pt"), save_freq=4)])
    assert again.history.equals(straight.history)
