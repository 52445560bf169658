"""Keras' and torchkeras 1.x's conventions in torchfit: Model subclasses are their own net, fit's
Keras arguments (initial_epoch, steps_per_epoch, validation_steps, validation_freq, verbose="auto"),
overfit_batches, model(x) on numpy arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit
from torchfit.callbacks import Callback, EarlyStopping
from conftest import assert_same_weights, blobs, loader, mlp


class Net(torchfit.Model):
    """torchkeras 1.x style: the model subclass defines its layers and forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(4, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(4, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def compile_(model):
    return model.compile(loss_func=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         metrics_dict={"acc": "accuracy"}, device="cpu")


def test_a_model_subclass_is_its_own_net_in_every_verb(tmp_path, capsys):
    net = Net()
    assert net.net is net and list(net.state_dict()) == list(Plain().state_dict())
    rows = net.summary(input_shape=(4,))
    assert "Linear" in capsys.readouterr().out and len(rows) >= 3
    compile_(net)
    wrapped = compile_(torchfit.Model(Plain()))
    ds = blobs(64)
    h = net.fit(2, loader(ds, 16, shuffle=True, seed=1), loader(ds, 32), verbose=0)
    h2 = wrapped.fit(2, loader(ds, 16, shuffle=True, seed=1), loader(ds, 32), verbose=0)
    assert_same_weights(net, wrapped.net)  # the same training as the wrapped module, bit for bit
    assert h.equals(h2) and list(h.columns) == ["epoch", "loss", "acc", "val_loss", "val_acc"]
    assert net.evaluate(loader(ds, 32)) == wrapped.evaluate(loader(ds, 32))
    assert torch.equal(net.predict(loader(ds, 32)), wrapped.predict(loader(ds, 32)))
    net.save_checkpoint(tmp_path / "ck.pt")
    saved = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert list(saved["net"]) == list(Plain().state_dict())  # the user's own key names
    again = compile_(Net()).load_checkpoint(tmp_path / "ck.pt")
    assert_same_weights(again, net) and again.epoch == 2
    again.fit(1, loader(ds, 16, shuffle=True, seed=1), verbose=0)
    assert again.epoch == 3


def test_model_without_a_net_or_a_forward_is_a_clear_error():
    with pytest.raises(TypeError, match="needs the torch.nn.Module to train.*or subclass torchfit.Model"):
        torchfit.Model()


def test_model_called_on_numpy_and_on_the_cpu_works_like_keras():
    model = compile_(torchfit.Model(mlp()))
    x = np.random.RandomState(0).randn(5, 4)  # float64, as numpy makes it
    out = model(x)
    assert out.shape == (5, 3) and out.dtype == torch.float32
    assert torch.equal(out, model(torch.tensor(x, dtype=torch.float32)))


class Batches(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_begin(self, batch, logs):
        self.seen.append((self.model.run.epoch, batch))


def test_initial_epoch_numbers_epochs_as_keras_does():
    model = compile_(torchfit.Model(mlp()))
    h = model.fit(5, loader(blobs(16), 8), initial_epoch=3, verbose=0)
    assert h["epoch"].tolist() == [4, 5] and model.epoch == 5
    for bad, match in ((6, "after epochs=5"), (-1, "initial_epoch must be an int >= 0")):
        with pytest.raises(ValueError, match=match):
            model.fit(5, loader(blobs(16), 8), initial_epoch=bad, verbose=0)
    assert model.epoch == 5 and len(model.history) == 2


def test_steps_per_epoch_cuts_and_restarts_the_loader():
    rec = Batches()
    model = compile_(torchfit.Model(mlp()))
    model.fit(2, loader(blobs(40), 8), steps_per_epoch=3, callbacks=[rec], verbose=0)  # 5 batches available
    assert rec.seen == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)] and model.global_step == 6
    rec.seen.clear()
    model.fit(1, loader(blobs(16), 8), steps_per_epoch=5, callbacks=[rec], verbose=0)  # 2 batches: 2.5 passes
    assert [b for _, b in rec.seen] == [0, 1, 2, 3, 4] and model.global_step == 11


def test_steps_per_epoch_gives_a_loader_without_len_its_epochs():
    ds = blobs(40)

    def endless():
        while True:
            yield from loader(ds, 8)

    model = compile_(torchfit.Model(mlp()))
    h = model.fit(3, endless(), steps_per_epoch=4, verbose=0)
    assert len(h) == 3 and model.global_step == 12


def test_validation_steps_validates_on_that_many_batches():
    ds = blobs(32)
    model = compile_(torchfit.Model(mlp()))
    h = model.fit(1, loader(ds, 8), loader(ds, 8), validation_steps=1, verbose=0)
    first = DataLoader(TensorDataset(*ds[:8]), batch_size=8)
    assert h["val_loss"].iloc[0] == model.evaluate(first)["val_loss"]


def test_validation_freq_validates_every_nth_epoch_and_monitors_wait():
    model = compile_(torchfit.Model(mlp()))
    stop = EarlyStopping(monitor="val_loss", patience=1)
    h = model.fit(4, loader(blobs(32), 8), loader(blobs(16), 8), validation_freq=2, callbacks=[stop], verbose=0)
    assert h["val_loss"].isna().tolist() == [True, False, True, False]
    assert stop.best_epoch in (1, 3)  # judged only on the epochs that validated (0-based: epochs 2 and 4)


def test_verbose_auto_prints_like_verbose_1(capsys):
    model = compile_(torchfit.Model(mlp()))
    model.fit(1, loader(blobs(16), 8), verbose="auto", progress_bar=False)
    out = capsys.readouterr().out
    assert "Start Training" in out and "'step': 1" in out
    with pytest.raises(ValueError, match="verbose must be"):
        model.fit(1, loader(blobs(16), 8), verbose="loud")


def test_overfit_batches_drives_the_loss_to_near_zero():
    torch.manual_seed(0)
    X, y = torch.randn(256, 4), torch.randint(0, 3, (256,))  # random labels: only memorising fits them
    net = mlp()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=0.02),
                                        ["accuracy"], device="cpu")
    h = model.fit(150, DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True), overfit_batches=2,
                  verbose=0)
    assert h["loss"].iloc[-1] < 0.05 and h["val_accuracy"].iloc[-1] == 1.0
    assert model.global_step == 300  # two batches per epoch
    with pytest.raises(ValueError, match="overfit_batches must be an int >= 1"):
        model.fit(1, DataLoader(TensorDataset(X, y), batch_size=16), overfit_batches=0, verbose=0)


def test_about_ten_logging_points_per_epoch(capsys):
    model = compile_(torchfit.Model(mlp()))
    model.fit(1, loader(blobs(15 * 4), 4), verbose=1, progress_bar=False)  # 15 batches
    steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{'step'")]
    assert 5 <= len(steps) <= 10


# ------------------------------------------------------- class and sample weights
def weighted_hand_loop(net, X, y, w, epochs, batch_size, lr):
    """Keras' weighting written by hand: sum(w_i * loss_i) / N per batch."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(epochs):
        for i in range(0, len(X), batch_size):
            opt.zero_grad()
            per = nn.functional.cross_entropy(net(X[i:i + batch_size]), y[i:i + batch_size], reduction="none")
            (per * w[i:i + batch_size]).sum().div(len(per)).backward()
            opt.step()


def test_sample_weight_and_class_weight_weigh_each_samples_loss_as_keras_does():
    torch.manual_seed(0)
    X, y = torch.randn(48, 4), torch.randint(0, 3, (48,))
    w = torch.rand(48)
    for kind in ("sample_weight", "class_weight", "loader"):
        net, ref = mlp(), mlp()
        model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1),
                                            device="cpu")
        if kind == "sample_weight":
            model.fit(2, x=X, y=y, sample_weight=w, batch_size=16, shuffle=False, verbose=0)
            weights = w
        elif kind == "class_weight":
            cw = {0: 1.0, 1: 3.0, 2: 0.5}
            model.fit(2, x=X, y=y, class_weight=cw, batch_size=16, shuffle=False, verbose=0)
            weights = torch.tensor([cw[int(c)] for c in y])
        else:  # a loader yielding (x, y, sample_weight)
            model.fit(2, DataLoader(TensorDataset(X, y, w), batch_size=16), verbose=0)
            weights = w
        weighted_hand_loop(ref, X, y, weights, 2, 16, 0.1)
        for a, b in zip(net.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{kind}: {m}")


def test_weights_that_cannot_work_are_refused_before_training():
    X, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = torchfit.Model(net).compile(lambda p, t: nn.functional.cross_entropy(p, t), device="cpu")
    with pytest.raises(TypeError, match="per-sample losses"):
        model.fit(1, x=X, y=y, class_weight={0: 2.0}, verbose=0)
    model = compile_(torchfit.Model(net))
    with pytest.raises(ValueError, match="both class_weight and sample_weight"):
        model.fit(1, x=X, y=y, class_weight={0: 2.0}, sample_weight=torch.ones(16), verbose=0)
    with pytest.raises(ValueError, match="one weight per row of x"):
        model.fit(1, x=X, y=y, sample_weight=torch.ones(15), verbose=0)
    with pytest.raises(TypeError, match="sample_weight= with a loader"):
        model.fit(1, loader(blobs(16), 8), sample_weight=torch.ones(16), verbose=0)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items()) and model.epoch == 0


def test_checkpoint_names_with_val_figures_are_written_on_the_epochs_that_validate(tmp_path):
    from torchfit.callbacks import ModelCheckpoint

    model = compile_(torchfit.Model(mlp()))
    ckpt = ModelCheckpoint(str(tmp_path / "e{epoch}-{val_loss:.3f}.pt"), save_last=True)
    model.fit(4, loader(blobs(16), 8), loader(blobs(8), 8), validation_freq=2, callbacks=[ckpt], verbose=0)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n.split("-")[0] for n in names if n.startswith("e")] == ["e2", "e4"] and "last.pt" in names
