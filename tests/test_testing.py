"""torchfit.testing: each helper fails deliberately broken models, naming the culprit, and passes good ones."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit
from torchfit.testing import (HostSyncAudit, assert_batch_independent, assert_can_overfit, assert_deterministic,
                              assert_gradients_flow, assert_loss_decreases, data)
from conftest import assert_same_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp(n_in=4, n_out=3, hidden=16):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def compiled(net, lr=0.05, metrics=None):
    return torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr),
                                       metrics, device="cpu")


def batch(n=16):
    return data.classification(n).tensors


# ------------------------------------------------------------------ the net learns
def test_loss_decreases_passes_a_good_net_and_leaves_the_model_unchanged():
    model = compiled(mlp())
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    figures = assert_loss_decreases(model, batch(), steps=30, factor=3)
    assert figures["after"] * 3 <= figures["before"]
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.epoch == 0 and model.history.empty and model.optimizer.state == {}


def test_loss_decreases_fails_a_learning_rate_far_too_small():
    net = mlp()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=1e-7),
                                        device="cpu")
    with pytest.raises(AssertionError, match=r"the net does not learn: in 10 steps on one batch the loss went from "
                                             r"\d\.\d+ to \d\.\d+ \(x1 lower; wanted x2\).*the learning rate"):
        assert_loss_decreases(model, batch(), steps=10)


def test_loss_decreases_fails_probabilities_fed_to_cross_entropy():
    # softmax before CrossEntropyLoss: the loss barely moves in a few steps
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3), nn.Softmax(dim=1))
    with pytest.raises(AssertionError, match="does not learn.*logits"), \
            pytest.warns(UserWarning, match="look like probabilities"):  # torchfit's own first-batch check
        assert_loss_decreases(compiled(net, lr=0.01), batch(), steps=10, factor=2)


def test_can_overfit_passes_a_good_net_and_stops_when_reached():
    model = compiled(mlp(hidden=32), lr=0.02, metrics=["accuracy"])
    figures = assert_can_overfit(model, batch(16))
    assert figures["val_accuracy"] == 1.0 and figures["epochs"] < 200
    assert model.epoch == 0


def test_can_overfit_fails_a_net_too_narrow_to_memorise():
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(32) % 3  # random labels: only memorising fits them
    net = nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 3))  # a bottleneck of width 1
    with pytest.raises(AssertionError, match=r"cannot overfit 32 samples: after 40 epochs it reached loss .*"
                                             r"accuracy 0\.\d+ \(wanted accuracy 1\)"):
        assert_can_overfit(compiled(net, metrics=["accuracy"]), (x, y), epochs=40)


def test_can_overfit_regression_by_loss_and_needs_a_target():
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    model = torchfit.Model(net).compile(nn.MSELoss(), torch.optim.Adam(net.parameters(), 0.03), device="cpu")
    assert assert_can_overfit(model, data.regression(16, noise=0.0), accuracy=None, loss=1e-3)["val_loss"] <= 1e-3
    with pytest.raises(ValueError, match="compile with metrics=\\['accuracy'\\]"):
        assert_can_overfit(model, data.regression(16))
    with pytest.raises(TypeError, match="compiled torchfit.Model"):
        assert_can_overfit(net, data.regression(16), accuracy=None, loss=0.1)


# ------------------------------------------------------------------ gradients
class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 8)
        self.side = nn.Linear(4, 8)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.cat([self.encoder(x), self.side(x).detach()], dim=1))


def test_gradients_flow_passes_a_good_net_with_norms():
    norms = assert_gradients_flow(compiled(mlp()), batch())
    assert set(norms) == {"0.weight", "0.bias", "2.weight", "2.bias"} and min(norms.values()) > 0


def test_gradients_flow_names_a_detached_branch():
    with pytest.raises(AssertionError) as info:
        assert_gradients_flow(Detached(), batch(), loss_fn=nn.CrossEntropyLoss())
    message = str(info.value)
    assert "side.weight in side (Linear): no gradient" in message and "side.bias" in message
    assert "encoder" not in message and "head" not in message


def test_gradients_flow_names_a_dead_relu_layer():
    net = mlp()
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # every unit of the first layer is dead: ReLU passes no gradient back
    with pytest.raises(AssertionError, match=r"0\.weight in 0 \(Linear\): zero gradient \(a dead ReLU"):
        assert_gradients_flow(compiled(net), batch())


def test_gradients_flow_names_a_frozen_layer_unless_allowed():
    net = mlp()
    net[0].requires_grad_(False)
    with pytest.raises(AssertionError, match=r"0\.weight in 0 \(Linear\): frozen .*frozen=\('0',\)"):
        assert_gradients_flow(compiled(net), batch())
    assert set(assert_gradients_flow(compiled(net), batch(), frozen=("0",))) == {"2.weight", "2.bias"}


def test_gradients_flow_names_a_non_finite_gradient_and_leaves_batchnorm_alone():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    stats = net[1].running_mean.clone()
    assert_gradients_flow(net, batch(), loss_fn=nn.CrossEntropyLoss())
    assert torch.equal(net[1].running_mean, stats) and net[1].num_batches_tracked == 0

    class Sqrt(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x) * torch.sqrt(torch.zeros(()) * self.fc.bias.sum())  # d sqrt(0) = inf

    with pytest.raises(AssertionError, match="fc.bias in fc \\(Linear\\): non-finite gradient"):
        assert_gradients_flow(Sqrt(), batch(), loss_fn=nn.CrossEntropyLoss())


# ------------------------------------------------------------------ samples stay apart
class Mixer(nn.Module):
    """Flattens with reshape(-1, N): the classic wrong reshape that mixes samples."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):  # x (N, 2, 3)
        h = self.conv(x)
        h = h.transpose(0, 1).reshape(h.shape[0], -1)  # wrong: brings other samples' channels into each row
        return self.fc(h)


def test_batch_independent_passes_good_nets_including_batchnorm_in_eval():
    assert_batch_independent(mlp(), torch.randn(6, 4))
    bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    assert_batch_independent(bn, torch.randn(6, 4), sample=3)
    assert bn.training  # the net's mode comes back


def test_batch_independent_names_the_module_after_a_wrong_reshape():
    with pytest.raises(AssertionError, match=r"output for sample 0 depends on .*first module whose output leaks is "
                                             r"fc \(Linear\).*reshape"):
        assert_batch_independent(Mixer(), torch.randn(4, 2, 3))


def test_batch_independent_names_batchnorm_in_train_mode():
    bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(AssertionError, match=r"train mode.*leaks is 1 \(BatchNorm1d\).*LayerNorm"):
        assert_batch_independent(bn, torch.randn(6, 4), mode="train")


def test_batch_independent_names_a_mean_over_the_batch_in_forward():
    class Centered(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x - x.mean(dim=0))

    with pytest.raises(AssertionError, match=r"depends on the input of sample\(s\) \[1, 2, 3\].*fc \(Linear\)"):
        assert_batch_independent(torchfit.Model(Centered()), torch.randn(4, 4))
    with pytest.raises(TypeError, match="N >= 2"):
        assert_batch_independent(mlp(), torch.randn(1, 4))


# ------------------------------------------------------------------ determinism
def _train(shuffle_seeded=True, dropout=0.2):
    def train():
        net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))
        model = compiled(net)
        ds = data.classification(64)
        dl = DataLoader(ds, batch_size=16, shuffle=True)  # draws from torch's global generator: seeded
        model.fit(2, dl, verbose=0)
        return model
    return train


def test_deterministic_passes_a_seeded_fit_and_restores_the_callers_rng():
    state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    model = assert_deterministic(_train())
    assert model.epoch == 2
    assert torch.equal(torch.get_rng_state(), state) and (np.random.get_state()[1] == np_state).all()


def test_deterministic_fails_a_fit_with_an_unseeded_generator():
    source = torch.Generator().manual_seed(123)

    def train():  # a generator outside seed_everything's reach, drawn on by every run
        net = mlp()
        model = compiled(net)
        x, y = data.classification(64).tensors
        dl = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=source)
        model.fit(1, dl, verbose=0)
        return model

    with pytest.raises(AssertionError, match=r"not deterministic: after seed_everything\(0\), run 2 gives 0\.weight "
                                             r"different .*generator=torch.Generator"):
        assert_deterministic(train)


# ------------------------------------------------------------------ host syncs
class SyncingStep(torchfit.Model):
    def train_step(self, batch):
        result = super().train_step(batch)
        self.last_loss = result.loss.item()  # the bug: a host sync every step
        return result


def _fit(model_class, audit, epochs=2):
    net = mlp()
    model = model_class(net).compile(nn.CrossEntropyLoss(), "adam", ["accuracy", "auc"], device="cpu")
    ds = data.classification(128)
    model.fit(epochs, DataLoader(ds, 16, shuffle=True), DataLoader(ds, 32), log_step_freq=4, verbose=0,
              callbacks=[audit])
    return model


def test_host_sync_audit_passes_torchfit_own_fit():
    audit = HostSyncAudit()
    with audit:
        _fit(torchfit.Model, audit)
    assert audit.ops > 1000 and audit.fits == 1
    audit.check()


def test_host_sync_audit_names_a_sync_in_the_training_step():
    audit = HostSyncAudit()
    with audit:
        _fit(SyncingStep, audit)
    with pytest.raises(AssertionError) as info:
        audit.check()
    message = str(info.value)
    # 8 steps an epoch, logging points at 4 and 8, the first step of the fit excused: 5 + 6 per 2 epochs
    assert message.startswith("11 host sync(s) inside training/validation steps")
    assert "first: train step at epoch 1, batch 2" in message
    assert f"_local_scalar_dense at {__file__}:" in message and "in train_step" in message
    assert {(s.epoch, s.batch) for s in audit.found} == {(e, b) for e in (1, 2) for b in (1, 2, 3, 5, 6, 7)} - {(1, 1)}


def test_host_sync_audit_must_see_a_fit_and_run_inside_its_with():
    audit = HostSyncAudit()
    with pytest.raises(AssertionError, match="saw no fit: pass it to fit"):
        audit.check()
    with pytest.raises(RuntimeError, match="inside `with audit:`"):
        _fit(torchfit.Model, audit, epochs=1)


# ------------------------------------------------------------------ data
def test_datasets_are_seeded_and_learnable():
    for make in (data.classification, data.regression, data.sequences, data.images):
        a, b, c = make(32), make(32), make(32, seed=1)
        assert all(torch.equal(s, t) for s, t in zip(a.tensors, b.tensors))
        assert not torch.equal(a.tensors[0], c.tensors[0])
    x, y = data.images(64, n_classes=6).tensors
    assert x.shape == (64, 1, 8, 8) and sorted(set(y.tolist())) == list(range(6)) and 0 <= x.min() and x.max() <= 1
    x, y = data.sequences(64).tensors
    first_half = (x[:, :6, 0] == 1).any(dim=1)
    assert torch.equal(first_half.long(), y)  # the label is where the mark is
    with pytest.raises(ValueError, match="n_classes must be an int >= 2"):
        data.classification(10, n_classes=1)


# ------------------------------------------------------------------ the plugin, from a fresh project
PLUGIN_TESTS = '''
import torch, torchfit
from torch import nn
from torch.utils.data import DataLoader


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


class Leaky(torchfit.Model):
    def train_step(self, batch):
        out = super().train_step(batch)
        print("loss", float(out.loss))
        return out


def fit(cls, audit, ds):
    model = cls(net()).compile(nn.CrossEntropyLoss(), "adam", ["accuracy"], device="cpu")
    model.fit(2, DataLoader(ds, 16), DataLoader(ds, 64), log_step_freq=4, verbose=0, callbacks=[audit])


def test_clean(no_host_sync, classification_data):
    fit(torchfit.Model, no_host_sync, classification_data)


def test_leaky(no_host_sync, classification_data):
    fit(Leaky, no_host_sync, classification_data)


def test_forgot_the_callback(no_host_sync):
    pass


def test_data(regression_data, sequence_data, image_data, seeded):
    assert regression_data.tensors[1].shape == (128, 1)
    assert sequence_data.tensors[0].shape == (128, 12, 3)
    assert image_data.tensors[0].shape == (128, 1, 8, 8)
    assert seeded == 0
'''


@pytest.mark.slow  # builds and installs torchfit (pip, no network) and runs pytest: ~15 s
def test_installing_torchfit_installs_the_plugin(tmp_path):
    # torchfit installed (not on PYTHONPATH as a checkout): pytest finds the plugin through the
    # pytest11 entry point, with no -p and no conftest; -p no:... turns it off
    import shutil

    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "torchfit"), src / "torchfit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, timeout=240, capture_output=True)
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_model.py").write_text(textwrap.dedent(PLUGIN_TESTS))
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(project), str(project)]
    probe = subprocess.run([sys.executable, "-c", "import torchfit; print(torchfit.__file__)"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.startswith(str(site)), probe.stdout + probe.stderr  # the installed copy, not the checkout
    done = subprocess.run(run, cwd=project, env=env, capture_output=True, text=True, timeout=240)
    assert "2 failed, 2 passed" in done.stdout, done.stdout + done.stderr
    assert "FAILED test_model.py::test_leaky - AssertionError: 11 host sync(s)" in done.stdout
    assert "test_model.py:15 in train_step" in done.stdout  # the line of float(out.loss)
    assert "FAILED test_model.py::test_forgot_the_callback - AssertionError: HostSyncAudit saw no fit" in done.stdout
    off = subprocess.run(run + ["-p", "no:torchfit.testing.plugin"], cwd=project, env=env, capture_output=True,
                         text=True, timeout=240)
    assert "fixture 'no_host_sync' not found" in off.stdout, off.stdout


def test_the_entry_point_names_the_plugin_module():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    points = [line.strip() for line in cfg["options.entry_points"]["pytest11"].strip().splitlines()]
    # the entry point's name is the module's, so `-p torchfit.testing.plugin` and the installed
    # entry point are one plugin, never registered twice
    assert points == ["torchfit.testing.plugin = torchfit.testing.plugin"]

