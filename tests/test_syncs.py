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
                run = calls.model._run if calls.model is not None else None
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
    assert sum(1 for _, e, b, _ in sync_log if (e, b) == (1, 1)) <= 4 * len(metrics)
    assert batches <= allowed, sorted(batches - allowed)
    per_point = len(sync_log) / len(batches)
    assert per_point <= 2 * (1 + len(metrics)) + 2  # a handful per logging point, never per step
