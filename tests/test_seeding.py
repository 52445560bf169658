"""torchfit.seed_everything: reproducible fits, every generator seeded, bad seeds refused."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

import torchfit
from torchfit.seeding import seed_everything

from conftest import blobs



@pytest.fixture(autouse=True)
def _restore_hashseed(monkeypatch):
    # seed_everything sets PYTHONHASHSEED; monkeypatch puts the original back afterwards
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)


def _fit_after_seed(seed: int) -> dict:
    seed_everything(seed)
    # Everything random comes from the global generators: the init, dropout, and a shuffling
    # DataLoader without its own generator.
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    dl = torch.utils.data.DataLoader(blobs(96), batch_size=16, shuffle=True)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "adam", device="cpu")
    model.fit(2, dl, verbose=0, fast_path=False)
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_same_seed_gives_bit_identical_weights():
    a, b = _fit_after_seed(7), _fit_after_seed(7)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_different_seeds_give_different_weights():
    a, b = _fit_after_seed(7), _fit_after_seed(8)
    assert not torch.equal(a["0.weight"], b["0.weight"])


def test_every_generator_is_seeded():
    assert seed_everything(123) == 123
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(123)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws
    assert os.environ["PYTHONHASHSEED"] == "123"


def test_largest_seed_is_accepted():
    assert seed_everything(2**32 - 1) == 2**32 - 1
    assert seed_everything(np.int64(5)) == 5


@pytest.mark.parametrize("bad", [True, 1.0, 2**70, -1, 2**32, "7", None])
def test_bad_seeds_raise_naming_the_argument_and_range(bad):
    with pytest.raises(ValueError, match=r"seed_everything\(seed=\.\.\.\).*\[0, 2\*\*32 - 1\]"):
        seed_everything(bad)


@pytest.fixture
def restore_determinism(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    was = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(was[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = was[1], was[2]


def test_deterministic_turns_the_switches_on(restore_determinism):
    assert not torch.are_deterministic_algorithms_enabled()
    seed_everything(1, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_deterministic_keeps_a_user_cublas_setting(restore_determinism, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    seed_everything(1, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_deterministic_must_be_a_bool():
    with pytest.raises(TypeError, match="deterministic"):
        seed_everything(1, deterministic="yes")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_generators_and_a_deterministic_gpu_fit(restore_determinism):
    def run() -> dict:
        seed_everything(3, deterministic=True)
        draws = [torch.rand(4, device=f"cuda:{i}") for i in range(torch.cuda.device_count())]
        net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 3))
        model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "adam", device="cuda")
        model.fit(2, torch.utils.data.DataLoader(blobs(128), batch_size=32, shuffle=True), verbose=0)
        return {"draws": [d.cpu() for d in draws], **{k: v.cpu() for k, v in net.state_dict().items()}}

    a, b = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(a.pop("draws"), b.pop("draws")))
    for k in a:
        assert torch.equal(a[k], b[k]), k
