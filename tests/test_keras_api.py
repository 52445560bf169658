"""Keras 3's words on a torchfit model, checked against what Keras does (or a hand computation):
batch logs that are running means at every batch and cost nothing unread, the weights verbs,
ModelCheckpoint's Keras arguments, fit's and evaluate's positional orders, and custom steps
written the Keras way (dict results, metric objects, a metrics property, test_step, the GAN
pattern). The published guides themselves are ported in tests/compat/."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import torchfit
from torchfit.callbacks import Callback, ModelCheckpoint
from torchfit.metrics import MAE, Mean
from conftest import blobs, loader, mlp


def compiled(net=None, **kw):
    net = net or mlp()
    return torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1),
                                       ["accuracy"], device="cpu", **kw)


# ------------------------------------------------------------------ batch logs
class ReadsLoss(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, batch, logs):
        self.seen.append((batch, logs["loss"], logs["accuracy"]))


def test_a_callback_reading_logs_every_batch_gets_the_running_means():
    reader = ReadsLoss()
    model = compiled()
    ds = blobs(40)
    model.fit(1, loader(ds, 8), callbacks=[reader], verbose=0, log_step_freq=100)
    assert [b for b, _, _ in reader.seen] == [0, 1, 2, 3, 4]
    # the running, sample-weighted means: the last equals the epoch's figure
    assert reader.seen[-1][1] == pytest.approx(model.history["loss"].iloc[-1], rel=1e-6)
    assert reader.seen[-1][2] == model.history["accuracy"].iloc[-1]


def test_unread_logs_cost_no_host_sync(monkeypatch):
    calls = []
    original = torchfit.metrics.Tracker.compute

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(torchfit.metrics.Tracker, "compute", counting)
    model = compiled()
    model.fit(1, loader(blobs(40), 8), verbose=0, log_step_freq=100)  # 5 batches, no logging point
    unread = len(calls)  # the epoch's figures and the once-per-fit metric check: no batch log was read
    assert unread <= 2
    calls.clear()
    model.fit(1, loader(blobs(40), 8), verbose=0, log_step_freq=100, callbacks=[ReadsLoss()])
    assert len(calls) == unread + 5  # one read per batch, as in Keras


def test_keras_keys_in_test_hooks_and_the_last_logs_at_train_end():
    got = {}

    class Keys(Callback):
        def on_test_batch_end(self, batch, logs):
            got.setdefault("batch", sorted(logs))

        def on_test_end(self, logs):
            got["test_end"] = sorted(logs)

        def on_train_end(self, logs):
            got["train_end"] = dict(logs)

    model = compiled()
    h = model.fit(2, loader(blobs(16), 8), loader(blobs(16), 8), callbacks=[Keys()], verbose=0)
    assert got["batch"] == ["accuracy", "loss", "step"] and got["test_end"] == ["accuracy", "loss"]
    assert got["train_end"] == h.iloc[-1].to_dict()


# --------------------------------------------------------------------- weights
def test_get_set_save_load_weights_round_trip(tmp_path):
    a, b = compiled(mlp(seed=0)), compiled(mlp(seed=1))
    b.set_weights(a.get_weights())
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
    with pytest.raises(ValueError, match="set_weights got 1 arrays"):
        b.set_weights(a.get_weights()[:1])
    with pytest.raises(ValueError, match="has shape"):
        b.set_weights([w.T for w in a.get_weights()])
    a.fit(1, loader(blobs(16), 8), verbose=0)
    a.save_weights(tmp_path / "m.weights.h5")
    assert torch.load(tmp_path / "m.weights.h5", weights_only=True).keys() == a.net.state_dict().keys()
    c = compiled(mlp(seed=2)).load_weights(tmp_path / "m.weights.h5")
    assert all(torch.equal(v, a.net.state_dict()[k]) for k, v in c.net.state_dict().items())
    with pytest.raises(FileExistsError):
        a.save_weights(tmp_path / "m.weights.h5", overwrite=False)
    wider = compiled(mlp(n_out=5))
    before = wider.get_weights()
    with pytest.raises(torchfit.errors.CheckpointError, match="other shapes"):
        wider.load_weights(tmp_path / "m.weights.h5")
    assert all(np.array_equal(x, y) for x, y in zip(before, wider.get_weights()))


# -------------------------------------------------------------- ModelCheckpoint
def test_model_checkpoint_keras_arguments_and_save_freq(tmp_path):
    model = compiled()
    ckpt = ModelCheckpoint(filepath=str(tmp_path / "w-{epoch}-{batch}.pt"), save_weights_only=True, save_freq=3)
    model.fit(2, loader(blobs(40), 8), callbacks=[ckpt], verbose=0)  # 10 batches: saves after 3, 6, 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w-1-3.pt", "w-2-1.pt", "w-2-4.pt"]
    state = torch.load(tmp_path / "w-2-4.pt", weights_only=True)
    assert state.keys() == model.net.state_dict().keys()  # weights only
    with pytest.raises(ValueError, match="save_freq"):
        ModelCheckpoint("x.pt", save_freq=0)
    best = ModelCheckpoint(filepath=str(tmp_path / "best.pt"), monitor="loss", save_best_only=True,
                           initial_value_threshold=-1.0)
    model.fit(1, loader(blobs(40), 8), callbacks=[best], verbose=0)
    assert not (tmp_path / "best.pt").exists()  # the loss never beat the threshold


# ------------------------------------------------------------ argument orders
def test_fit_reads_keras_torchkeras_and_torchkeras4_orders():
    X, y = blobs(32).tensors
    model = compiled()
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)  # Keras
    assert model.epoch == 2 and model.global_step == 8
    model.fit(loader(blobs(16), 8), epochs=1, verbose=0)  # Keras with a loader
    assert model.epoch == 3
    model.fit(2, loader(blobs(16), 8), verbose=0)  # torchkeras 1.x
    assert model.epoch == 5
    h = model.fit(loader(blobs(16), 8), loader(blobs(16), 8), 1, verbose=0)  # torchkeras 4
    assert "val_loss" in h.columns
    h = model.fit(train_data=loader(blobs(16), 8), val_data=loader(blobs(16), 8), epochs=1, verbose=0)
    assert "val_loss" in h.columns and model.epoch == 7
    with pytest.raises(TypeError, match="fit got epochs twice"):
        model.fit(2, loader(blobs(16), 8), epochs=3, verbose=0)
    assert model.epoch == 7


def test_evaluate_keras_order_verbose_and_return_dict(capsys):
    X, y = blobs(32).tensors
    model = compiled()
    figures = model.evaluate(X, y, 8)
    assert set(figures) == {"val_loss", "val_accuracy"}
    assert model.evaluate(X, y, batch_size=8, return_dict=False) == [figures["val_loss"], figures["val_accuracy"]]
    capsys.readouterr()
    model.evaluate(loader(blobs(32), 8), verbose=1)
    assert capsys.readouterr().out.startswith("val_loss: ")
    model.evaluate(loader(blobs(32), 8), quiet=False)  # torchkeras 4
    assert "val_accuracy: " in capsys.readouterr().out


# -------------------------------------------------------- custom steps, Keras' way
class KerasStyle(torchfit.Model):
    """keras.io's "lower-level" CustomModel: its own trackers, a metrics property, a dict result."""

    def __init__(self, net):
        super().__init__(net)
        self.loss_tracker = Mean(name="loss")
        self.mae_metric = MAE()
        self.loss_fn = nn.MSELoss()

    def train_step(self, data):
        x, y = data
        self.zero_grad()
        y_pred = self(x, training=True)
        loss = self.loss_fn(y_pred, y)
        loss.backward()
        self.optimizer.step()
        self.loss_tracker.update_state(loss)
        self.mae_metric.update_state(y, y_pred)
        return {"loss": self.loss_tracker.result(), "mae": self.mae_metric.result()}

    def test_step(self, data):
        x, y = data
        y_pred = self(x, training=False)
        self.loss_tracker.update_state(self.loss_fn(y_pred, y))
        self.mae_metric.update_state(y, y_pred)
        return {"loss": self.loss_tracker.result(), "mae": self.mae_metric.result()}

    @property
    def metrics(self):
        return [self.loss_tracker, self.mae_metric]


def regression(n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))


def test_a_keras_style_step_with_its_own_trackers_matches_a_hand_computation():
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    ref = nn.Linear(4, 1)
    ref.load_state_dict(net.state_dict())
    model = KerasStyle(net)
    model.compile(optimizer=lambda params: torch.optim.SGD(params, lr=0.05), device="cpu")
    assert isinstance(model.loss_fn, nn.MSELoss)  # compile(optimizer=...) kept the subclass's loss
    ds = regression()
    h = model.fit(2, loader(ds, 8), loader(ds, 8), verbose=0)
    # by hand: the same steps; the epoch's figures are the trackers' results at its last batch
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for _ in range(2):
        losses, errors = [], []
        for x, y in loader(ds, 8):
            opt.zero_grad()
            loss = nn.functional.mse_loss(ref(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            errors.append((ref(x) - y).abs())
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), ref.parameters()))
    assert h["loss"].iloc[-1] == pytest.approx(np.mean(losses), rel=1e-5)
    with torch.no_grad():
        val = [(nn.functional.mse_loss(ref(x), y).item(), (ref(x) - y).abs().mean().item()) for x, y in loader(ds, 8)]
    assert h["val_loss"].iloc[-1] == pytest.approx(np.mean([v[0] for v in val]), rel=1e-5)
    assert h["val_mae"].iloc[-1] == pytest.approx(np.mean([v[1] for v in val]), rel=1e-5)
    assert list(h.columns) == ["epoch", "loss", "mae", "val_loss", "val_mae"]


def test_the_gan_pattern_trains_with_two_optimizers_and_no_net():
    class GAN(torchfit.Model):
        def __init__(self, discriminator, generator, latent_dim):
            super().__init__()
            self.discriminator, self.generator, self.latent_dim = discriminator, generator, latent_dim
            self.d_loss_tracker, self.g_loss_tracker = Mean(name="d_loss"), Mean(name="g_loss")

        @property
        def metrics(self):
            return [self.d_loss_tracker, self.g_loss_tracker]

        def compile(self, d_optimizer, g_optimizer, loss_fn):
            super().compile(device="cpu")
            self.d_optimizer, self.g_optimizer, self.loss_fn = d_optimizer, g_optimizer, loss_fn

        def train_step(self, real):
            n = real.shape[0]
            fake = self.generator(torch.randn(n, self.latent_dim)).detach()
            labels = torch.cat([torch.ones(n, 1), torch.zeros(n, 1)])
            self.zero_grad()
            d_loss = self.loss_fn(self.discriminator(torch.cat([fake, real])), labels)
            d_loss.backward()
            self.d_optimizer.step()
            self.zero_grad()
            g_loss = self.loss_fn(self.discriminator(self.generator(torch.randn(n, self.latent_dim))),
                                  torch.zeros(n, 1))
            g_loss.backward()
            self.g_optimizer.step()
            self.d_loss_tracker.update_state(d_loss)
            self.g_loss_tracker.update_state(g_loss)
            return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}

    torch.manual_seed(0)
    d, g = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)), nn.Linear(2, 4)
    gan = GAN(d, g, latent_dim=2)
    gan.compile(torch.optim.Adam(d.parameters(), 1e-3), torch.optim.Adam(g.parameters(), 1e-3),
                nn.BCEWithLogitsLoss())
    before = [p.clone() for p in gan.parameters()]
    h = gan.fit(2, [torch.randn(8, 4) for _ in range(3)], verbose=0)
    assert list(h.columns) == ["epoch", "d_loss", "g_loss"] and len(h) == 2
    assert all(not torch.equal(a, b) for a, b in zip(before, gan.parameters()))


def test_keras_learning_rate_schedule_sets_each_epochs_rate_from_its_0_based_number():
    said = []

    def schedule(epoch, lr):  # keras.io's example: keep the rate for 2 epochs, then decay it
        return lr if epoch < 2 else lr * 0.5

    model = compiled()
    cb = torchfit.callbacks.LearningRateScheduler(schedule, 1, sink=said.append)  # Keras' (schedule, verbose)
    h = model.fit(4, loader(blobs(16), 8), callbacks=[cb], verbose=0)
    assert h["lr"].tolist() == [0.1, 0.1, 0.05, 0.025]
    assert said[2] == "Epoch 3: LearningRateScheduler setting learning rate to 0.05."
    one_arg = torchfit.callbacks.LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1))
    assert compiled().fit(2, loader(blobs(16), 8), callbacks=[one_arg], verbose=0)["lr"].tolist() == [0.01, 0.02]


def test_sample_weight_reaches_an_overridden_step_as_keras_triples():
    seen = []

    class Weighted(torchfit.Model):
        def train_step(self, data):
            x, y, w = data
            seen.append(w.clone())
            self.optimizer.zero_grad()
            loss = self.compute_loss(y=y, y_pred=self(x), sample_weight=w)
            loss.backward()
            self.optimizer.step()
            return {"loss": loss.detach()}

    X, y = blobs(16).tensors
    w = torch.arange(16, dtype=torch.float32)
    model = Weighted(mlp()).compile(nn.CrossEntropyLoss(), "sgd", device="cpu")
    model.fit(x=X, y=y, sample_weight=w, batch_size=8, shuffle=False, epochs=1, verbose=0)
    assert torch.equal(torch.cat(seen), w)
    with pytest.raises(TypeError, match="class_weight acts in the default train_step"):
        model.fit(x=X, y=y, class_weight={0: 2.0}, epochs=1, verbose=0)
