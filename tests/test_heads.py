"""Several outputs, several losses (torchfit.heads): weighted totals, per-output losses and metrics,
exact epoch figures, the same weights as a hand-written loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import torchfit
from conftest import assert_same_weights


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.cls = nn.Linear(16, 3)
        self.reg = nn.Linear(16, 1)

    def forward(self, x):
        h = self.body(x)
        return {"a": self.cls(h), "b": self.reg(h)}


class Pairs(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.ya = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0).long()
        self.yb = self.x[:, 2:3] * 2 + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], {"a": self.ya[i], "b": self.yb[i]}


WEIGHTS = {"a": 1.0, "b": 0.5}


def compiled(net):
    return torchfit.Model(net).compile(
        loss={"a": nn.CrossEntropyLoss(), "b": nn.MSELoss()}, loss_weights=WEIGHTS,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.05), metrics={"a": ["accuracy"], "b": ["mae"]},
        device="cpu")


def test_history_has_the_total_each_outputs_loss_and_metrics():
    model = compiled(TwoHeads())
    h = model.fit(2, DataLoader(Pairs(70, 0), batch_size=16), DataLoader(Pairs(30, 1), batch_size=8), verbose=0)
    assert list(h.columns) == ["epoch", "loss", "a_accuracy", "b_mae", "a_loss", "b_loss",
                               "val_loss", "val_a_accuracy", "val_b_mae", "val_a_loss", "val_b_loss"]
    for p in ("", "val_"):  # means are linear: the total is the weighted sum of the parts (each batch total is float32)
        np.testing.assert_allclose(h[p + "loss"], h[p + "a_loss"] + 0.5 * h[p + "b_loss"], rtol=1e-6)


def test_validation_figures_are_exact_over_the_dataset():
    model = compiled(TwoHeads())
    val = Pairs(30, 1)
    h = model.fit(1, DataLoader(Pairs(70, 0), batch_size=16), DataLoader(val, batch_size=8), verbose=0)
    with torch.no_grad():
        out = model.net(val.x)
    a = nn.functional.cross_entropy(out["a"].double(), val.ya).item()
    b = nn.functional.mse_loss(out["b"].double(), val.yb.double()).item()
    assert h["val_a_loss"].iloc[-1] == pytest.approx(a, rel=1e-6)
    assert h["val_b_loss"].iloc[-1] == pytest.approx(b, rel=1e-6)
    assert h["val_b_mae"].iloc[-1] == pytest.approx((out["b"] - val.yb).abs().mean().item(), rel=1e-6)
    acc = (out["a"].argmax(1) == val.ya).double().mean().item()
    assert h["val_a_accuracy"].iloc[-1] == acc
    figures = model.evaluate(DataLoader(val, batch_size=8))
    assert figures["val_a_loss"] == h["val_a_loss"].iloc[-1]


def test_the_same_weights_as_a_hand_written_loop():
    net_a, net_b = TwoHeads(), TwoHeads()
    ds = Pairs(64, 0)
    compiled(net_a).fit(2, DataLoader(ds, batch_size=16), verbose=0)
    opt = torch.optim.SGD(net_b.parameters(), lr=0.05)
    for _ in range(2):
        for x, y in DataLoader(ds, batch_size=16):
            opt.zero_grad()
            out = net_b(x)
            loss = nn.functional.cross_entropy(out["a"], y["a"]) * 1.0 + nn.functional.mse_loss(out["b"], y["b"]) * 0.5
            loss.backward()
            opt.step()
    assert_same_weights(net_a, net_b)


def test_keras_names_work_per_output_and_tuples_are_matched_by_position():
    class Tuple(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = TwoHeads()

        def forward(self, x):
            out = self.net(x)
            return out["a"], out["b"]

    class TupleData(Pairs):
        def __getitem__(self, i):
            return self.x[i], (self.ya[i], self.yb[i])

    net = Tuple()
    model = torchfit.Model(net).compile(loss=[nn.CrossEntropyLoss(), "mse"], loss_weights=[1.0, 2.0],
                                        metrics={0: ["accuracy"]}, device="cpu")
    h = model.fit(1, DataLoader(TupleData(32, 0), batch_size=8), verbose=0)
    assert {"output_0_loss", "output_1_loss", "output_0_accuracy"} <= set(h.columns)


def test_mistakes_are_named_before_training():
    net = TwoHeads()
    with pytest.raises(ValueError, match=r"loss_weights names \['c'\]"):
        torchfit.Model(net).compile(loss={"a": nn.CrossEntropyLoss(), "b": nn.MSELoss()}, loss_weights={"c": 1.0})
    with pytest.raises(ValueError, match=r"metrics names outputs \['c'\]"):
        torchfit.Model(net).compile(loss={"a": nn.CrossEntropyLoss()}, metrics={"a": ["accuracy"], "c": ["mae"]})
    with pytest.raises(TypeError, match="loss_weights goes with several losses"):
        torchfit.Model(net).compile(loss=nn.MSELoss(), loss_weights={"a": 1.0})
    with pytest.raises(ValueError, match=r"loss_weights\['b'\] must be a finite number >= 0"):
        torchfit.Model(net).compile(loss={"a": nn.CrossEntropyLoss(), "b": nn.MSELoss()},
                                    loss_weights={"b": float("nan")})
    model = torchfit.Model(nn.Linear(4, 3)).compile(loss={"a": nn.CrossEntropyLoss()}, device="cpu")
    before = model.net.weight.clone()
    with pytest.raises(torchfit.errors.StepError, match="the net must return a dict"):
        model.fit(1, DataLoader(Pairs(16, 0), batch_size=8), verbose=0)
    assert torch.equal(before, model.net.weight)
