"""torchfit.device: resolving the device argument (never a silent fallback) and moving batches."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torchfit
from torchfit.device import batch_mover, resolve_device
from conftest import mlp


def test_none_means_cuda_when_present():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))


@pytest.mark.parametrize("device, match", [
    ("gpu0", "not a device torch understands"),
    ("meta", "holds no values"),
])
def test_devices_that_cannot_train_are_refused(device, match):
    with pytest.raises(ValueError, match=match):
        resolve_device(device)


def test_missing_device_is_an_error_not_a_fallback():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        torchfit.Model(mlp()).compile(nn.MSELoss(), device="cuda")


def test_the_meta_device_is_refused_before_the_net_moves():
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="holds no values"):
        torchfit.Model(net).compile(nn.MSELoss(), device="meta")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_batch_mover_is_the_identity_on_cpu():
    batch = (torch.ones(2), {"m": torch.zeros(2)})
    assert batch_mover(torch.device("cpu"), non_blocking=False)(batch) is batch
    moved = batch_mover(torch.device("meta"), non_blocking=False)(batch)
    assert moved[0].device.type == "meta" and moved[1]["m"].device.type == "meta"
