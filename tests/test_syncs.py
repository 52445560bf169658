"""No host sync per training step: torchfit reads device values back only at
logging points and epoch ends. Every tensor->host conversion made from torchfit's
own code is recorded with the batch it happened in."""
from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

import torchfit
from conftest import blobs, loader, mlp

TORCHFIT_DIR = os.path.dirname(torchfit.__file__)
SYNCING = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


class SyncLog(list):
    model = None


@pytest.fixture
def sync_log(monkeypatch):
    calls = SyncLog()
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, __original=original, __name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(TORCHFIT_DIR):
                run = calls.model.run if calls.model is not None else None
                calls.append((__name, run.epoch if run else None, run.batch_idx if run else None, caller))
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return calls



@pytest.mark.parametrize("metrics", [["accuracy"], ["accuracy", "f1", "auc"], []])
def test_syncs_happen_only_at_logging_points_and_epoch_ends(sync_log, metrics):
    ds = blobs(200)  # 25 batches of 8 per epoch
    net = mlp()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1),
                                       metrics, device="cpu")
    sync_log.model = model
    model.fit(2, loader(ds, 8, shuffle=True), loader(blobs(30), 8), log_step_freq=10, verbose=1)
    assert sync_log, "the recorder saw nothing: the test would not catch a sync"
    batches = {(epoch, batch) for _, epoch, batch, _ in sync_log}
    # training logging points (10, 20), the training epoch end (25) and the validation end (4 batches)
    allowed = {(e, b) for e in (1, 2) for b in (10, 20, 25, 4)}
    # plus, once per fit, the metric preflight on the first batch (before any weight changes)
    allowed.add((1, 1))
    allowed.add((0, 0))  # before training: the check of dl_val's first batch (once per fit, like the preflight)
    # the first batch: the metrics' preflight (<= 4 reads each) and the labels' check against the loss
    preflight = [f for _, e, b, f in sync_log if (e, b) == (1, 1) and os.sep + "losses" + os.sep not in f]
    assert len(preflight) <= 4 * len(metrics)
    assert batches <= allowed, sorted(batches - allowed)
    per_point = len(sync_log) / len(batches)
    assert per_point <= 2 * (1 + len(metrics)) + 2  # a handful per logging point, never per step


# ------------------------------------------------------------------ aten level
# The check above sees only the tensor methods torchfit's own code calls. A sync can
# also hide inside a torch function (bincount, a boolean mask, clip_grad_norm_'s
# error_if_nonfinite...). On CUDA each of these aten ops blocks the host (each calls
# c10::cuda::warn_or_error_on_sync, which torch.cuda.set_sync_debug_mode turns into an
# error); a dispatch mode records them wherever they come from while fit runs on CPU.
from torchfit.testing.syncs import SyncRecorder  # noqa: E402

from conftest import SmallCNN, binary, digits  # noqa: E402


class DeviceSyncAudit(SyncRecorder):
    """Records (op, epoch, batch) for each aten op that would block the host on CUDA."""

    def __init__(self, model):
        super().__init__(self._seen)
        self.model = model
        self.seen = []

    def _seen(self, name, where):
        run = self.model.run
        self.seen.append((name, run.epoch if run else None, run.batch_idx if run else None))


def _fit_and_audit(model, train, val, epochs=2, **fit_kwargs):
    audit = DeviceSyncAudit(model)
    with audit:
        model.fit(epochs, train, val, log_step_freq=10, verbose=1, **fit_kwargs)
    assert audit.ops > 1000, "the dispatch mode saw too few ops: the check would not catch a sync"
    n_train, n_val = len(train), len(val)
    # (0, 0): before training, the check of the first validation batch (once per fit, like the preflight)
    allowed = {(e, b) for e in range(1, epochs + 1) for b in (10, 20, n_train, n_val)} | {(1, 1), (0, 0)}
    bad = sorted({(op, e, b) for op, e, b in audit.seen if (e, b) not in allowed})
    assert not bad, f"device syncs between logging points (op, epoch, batch): {bad}"
    return audit


def test_no_device_sync_between_logging_points_classification(capsys):
    net = mlp()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "adam",
                                        ["accuracy", "f1", "precision", "recall", "auc"],
                                        device="cpu", precision="bf16")
    sched = torch.optim.lr_scheduler.OneCycleLR(model.optimizer, max_lr=0.05, total_steps=100)
    audit = _fit_and_audit(
        model, loader(blobs(200), 8, shuffle=True), loader(blobs(30), 8), epochs=2,
        grad_accum_steps=3, grad_clip_norm=1.0, grad_clip_value=0.5,
        callbacks=[torchfit.callbacks.LearningRateScheduler(sched, interval="step"),
                   torchfit.callbacks.EarlyStopping(monitor="val_loss", patience=5),
                   torchfit.callbacks.ProgressBar()],
    )
    assert audit.seen, "no sync at all: the logging points should read figures back"


def test_no_device_sync_between_logging_points_binary_and_batchnorm():
    net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    model = torchfit.Model(net).compile(nn.BCEWithLogitsLoss(), "sgd", ["accuracy", "auc", "f1"], device="cpu")
    _fit_and_audit(model, loader(binary(240), 8, shuffle=True, drop_last=True), loader(binary(40), 8),
                   grad_clip_norm=1.0)


def test_no_device_sync_between_logging_points_regression_cnn():
    ds = digits(200)
    target = torch.tensor([float(y) for _, y in ds])
    reg = torch.utils.data.TensorDataset(ds.tensors[0], target.unsqueeze(1))
    net = SmallCNN()
    net.head[-1] = nn.Linear(16, 1)
    model = torchfit.Model(net).compile(nn.MSELoss(), "adamw", ["mse", "mae", "r2"], device="cpu")
    _fit_and_audit(model, loader(reg, 8, shuffle=True), loader(reg, 50), fast_path=False)


def test_no_device_sync_between_logging_points_with_profiler_and_gradient_stats():
    from torchfit.callbacks.gradients import GradientStats
    from torchfit.callbacks.profiling import Profiler

    net = mlp()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "adam", ["accuracy"], device="cpu")
    stats, prof = GradientStats(activations=["1"]), Profiler()
    _fit_and_audit(model, loader(blobs(200), 8, shuffle=True), loader(blobs(30), 8), epochs=2,
                   grad_accum_steps=3, callbacks=[stats, prof])
    # both recorded: the audit saw a fit that measured something
    assert set(stats.frame()["step"]) == {12, 21}  # logging points 10 and 20, at the windows closing after them
    assert len(prof.frame()) == 2
