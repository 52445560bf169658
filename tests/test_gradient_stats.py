"""GradientStats: figures equal to a hand computation at the same steps; the diagnosis names the
culprit in nets built to vanish, explode and die; nothing is recorded between logging points."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit
from torchfit.callbacks.gradients import GradientStats

torch.manual_seed(0)
X = torch.randn(96, 16)
Y = X[:, :4].sum(1, keepdim=True)


def regression_fit(net, optimizer, *, epochs=1, log_step_freq=2, activations=(), **fit_kwargs):
    stats = GradientStats(activations=activations)
    model = torchfit.Model(net).compile(nn.MSELoss(), optimizer, device="cpu")
    model.fit(epochs, DataLoader(TensorDataset(X, Y), batch_size=16), log_step_freq=log_step_freq, verbose=0,
              callbacks=[stats], **fit_kwargs)
    return stats


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))


def test_figures_equal_a_hand_computation_at_the_logging_points():
    net = small_net()
    hand = copy.deepcopy(net)
    stats = regression_fit(net, torch.optim.Adam(net.parameters(), lr=1e-2), epochs=2, activations=["1"])

    opt = torch.optim.Adam(hand.parameters(), lr=1e-2)
    expected = {}
    seen = {}
    hand[1].register_forward_hook(lambda m, a, out: seen.__setitem__("out", out.detach()))
    global_step = 0
    for epoch in (1, 2):
        for step, (x, y) in enumerate(DataLoader(TensorDataset(X, Y), batch_size=16), 1):
            opt.zero_grad()
            loss = nn.functional.mse_loss(hand(x), y)
            loss.backward()
            before = {layer: [p.detach().clone() for p in hand[int(layer)].parameters()] for layer in ("0", "2")}
            opt.step()
            global_step += 1
            if step % 2:
                continue
            for layer in ("0", "2"):
                params = list(hand[int(layer)].parameters())
                grad = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in params))
                weight = math.sqrt(sum(float(b.norm()) ** 2 for b in before[layer]))
                update = math.sqrt(sum(float((p.detach() - b).norm()) ** 2 for p, b in zip(params, before[layer])))
                for stat, value in (("grad_norm", grad), ("weight_norm", weight), ("update_norm", update),
                                    ("update_ratio", update / weight)):
                    expected[(epoch, step, global_step, layer, stat)] = value
            out = seen["out"]
            for stat, value in (("act_mean", float(out.mean())), ("act_std", float(out.std())),
                                ("act_zeros", float((out == 0).float().mean())),
                                ("act_dead", float((out == 0).all(0).float().mean()))):
                expected[(epoch, step, global_step, "1", stat)] = value

    df = stats.frame()
    got = {(r.epoch, r.step, r.global_step, r.layer, r.stat): r.value for r in df.itertuples()}
    assert got.keys() == expected.keys()  # logging points 2, 4, 6 of both epochs, nothing in between
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_accumulation_records_at_the_step_that_closes_the_window():
    net = small_net()
    stats = regression_fit(net, torch.optim.SGD(net.parameters(), lr=1e-2), log_step_freq=3, grad_accum_steps=2)
    df = stats.frame()
    # batches 3 and 6 are logging points; windows close at batches 2, 4, 6: recorded at 4 and 6
    assert sorted(df["step"].unique()) == [4, 6]
    assert sorted(df["global_step"].unique()) == [2, 3]
    assert (df[df["stat"] == "update_norm"]["value"] > 0).all()


def test_a_healthy_net_gets_no_diagnosis():
    net = small_net()
    stats = regression_fit(net, torch.optim.Adam(net.parameters(), lr=1e-3), epochs=2, activations=["1"])
    assert stats.diagnose() == []


def deep(activation, depth, std=None, seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        linear = nn.Linear(16, 16)
        if std is not None:
            nn.init.normal_(linear.weight, std=std)
        layers += [linear, activation()]
    return nn.Sequential(*layers, nn.Linear(16, 1))


def test_the_diagnosis_names_vanishing_layers():
    net = deep(nn.Sigmoid, 10)
    found = regression_fit(net, torch.optim.SGD(net.parameters(), lr=1e-2)).diagnose()
    assert len(found) == 1 and found[0].startswith("vanishing gradients in 0, 2, 4"), found
    assert "18" not in found[0].split(":")[0]  # the layers near the loss are fine


def test_the_diagnosis_names_exploding_layers():
    net = deep(nn.Identity, 8, std=0.6)  # each layer multiplies the signal by about 2.4
    found = regression_fit(net, torch.optim.SGD(net.parameters(), lr=1e-12)).diagnose()
    assert any(f.startswith("exploding gradients in 0, 2, 4") and "gradient norm / weight norm" in f
               for f in found), found
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        net = deep(nn.Identity, 8, std=0.6)
        found = regression_fit(net, torch.optim.SGD(net.parameters(), lr=1e-6)).diagnose()
    assert any(f.startswith("exploding gradients") and "non-finite" in f for f in found), found


def test_the_diagnosis_names_a_dead_relu_and_the_layer_before_it():
    net = small_net()
    with torch.no_grad():
        net[0].bias.fill_(-20.0)  # every unit below zero for every input: the ReLU never fires
    found = regression_fit(net, torch.optim.SGD(net.parameters(), lr=1e-2), activations=["1"]).diagnose()
    assert any(f.startswith("dead ReLU in 1 (100% of units zero") for f in found), found
    assert any(f.startswith("no gradient at all in 0") for f in found), found


@pytest.mark.parametrize("lr, word", [(1.0, "too high"), (1e-7, "too low")])
def test_the_diagnosis_names_a_learning_rate_too_high_or_too_low(lr, word):
    net = small_net()
    found = regression_fit(net, torch.optim.Adam(net.parameters(), lr=lr), epochs=2).diagnose()
    assert any(f.startswith(f"learning rate {word}") for f in found), found


def test_an_unknown_activation_name_fails_before_training():
    net = small_net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match=r"no such module in the net.*'0', '1', '2'"):
        regression_fit(net, torch.optim.SGD(net.parameters(), lr=1e-2), activations=["relu"])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_plot_has_a_row_per_group_and_a_panel_per_stat():
    pytest.importorskip("matplotlib")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            return self.head(self.encoder(x))

    torch.manual_seed(0)
    net = Net()
    stats = regression_fit(net, torch.optim.SGD(net.parameters(), lr=1e-2), activations=["encoder.1"])
    fig = stats.plot(["grad_norm", "update_ratio"])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["encoder: grad_norm", "encoder: update_ratio", "top level: grad_norm", "top level: update_ratio"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["encoder.0"]
    fig = stats.plot("act_zeros")
    assert [ax.get_title() for ax in fig.axes] == ["encoder: act_zeros"]
    with pytest.raises(ValueError, match="known stats"):
        stats.plot("grad")
