"""The callback protocol as an executable spec: which hooks fire, in what order, with
what arguments; callback list order; set_params and the monitor-key check."""
from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import nn

import torchfit
from torchfit.callbacks import Callback, EarlyStopping, LambdaCallback, ModelCheckpoint, ReduceLROnPlateau
from conftest import blobs, loader, mlp


class Recorder(Callback):
    """Records every hook with its arguments (logs as their key lists)."""

    def __init__(self):
        self.calls = []

    def set_params(self, params):
        super().set_params(params)
        self.calls.append(("set_params", params["log_keys"]))

    def _rec(self, name, *args):
        self.calls.append((name,) + tuple(sorted(a) if isinstance(a, Mapping) else a for a in args))

    def on_train_begin(self, logs): self._rec("on_train_begin", logs)
    def on_train_end(self, logs): self._rec("on_train_end", logs)
    def on_epoch_begin(self, epoch, logs): self._rec("on_epoch_begin", epoch, logs)
    def on_epoch_end(self, epoch, logs): self._rec("on_epoch_end", epoch, logs)
    def on_train_batch_begin(self, batch, logs): self._rec("on_train_batch_begin", batch, logs)
    def on_train_batch_end(self, batch, logs): self._rec("on_train_batch_end", batch, logs)
    def on_backward_end(self, batch): self._rec("on_backward_end", batch)
    def on_test_begin(self, logs): self._rec("on_test_begin", logs)
    def on_test_end(self, logs): self._rec("on_test_end", logs)
    def on_test_batch_begin(self, batch, logs): self._rec("on_test_batch_begin", batch, logs)
    def on_test_batch_end(self, batch, logs): self._rec("on_test_batch_end", batch, logs)
    def on_predict_begin(self, logs): self._rec("on_predict_begin", logs)
    def on_predict_end(self, logs): self._rec("on_predict_end", logs)
    def on_predict_batch_begin(self, batch, logs): self._rec("on_predict_batch_begin", batch, logs)
    def on_predict_batch_end(self, batch, logs): self._rec("on_predict_batch_end", batch, logs)


TRAIN_KEYS = sorted(["step", "loss", "accuracy"])  # running figures at every batch, as Keras gives them
VAL_KEYS = sorted(["loss", "accuracy"])  # Keras' keys in on_test_*: no val_ prefix
EPOCH_KEYS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]


def expected_fit(epochs, n_train, n_val, step_at):
    """Keras' numbering: epochs and batches count from 0 in every hook."""
    calls = [("set_params", EPOCH_KEYS), ("on_train_begin", [])]
    for e in range(epochs):
        calls.append(("on_epoch_begin", e, []))
        for b in range(n_train):
            calls.append(("on_train_batch_begin", b, []))
            if b + 1 in step_at:
                calls.append(("on_backward_end", b))
            calls.append(("on_train_batch_end", b, TRAIN_KEYS))
        calls.append(("on_test_begin", []))
        for b in range(n_val):
            calls += [("on_test_batch_begin", b, []), ("on_test_batch_end", b, sorted(VAL_KEYS + ["step"]))]
        calls.append(("on_test_end", VAL_KEYS))
        calls.append(("on_epoch_end", e, sorted(EPOCH_KEYS)))
    calls.append(("on_train_end", sorted(EPOCH_KEYS)))  # Keras: the last epoch's logs
    return calls


def compiled(net=None, **kw):
    net = net or mlp()
    return torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1),
                                      ["accuracy"], device="cpu", **kw)


def test_hook_order_for_fit_evaluate_predict():
    rec = Recorder()
    model = compiled()
    # 6 samples in batches of 2: 3 training batches; 4 validation samples: 2 batches
    model.fit(2, loader(blobs(6), 2), loader(blobs(4), 2), log_step_freq=2, callbacks=[rec], verbose=0)
    assert rec.calls == expected_fit(2, 3, 2, step_at={1, 2, 3})

    rec.calls.clear()
    model.evaluate(loader(blobs(4), 2), callbacks=[rec])
    val_batch = sorted(VAL_KEYS + ["step"])
    assert rec.calls == [("on_test_begin", []),
                         ("on_test_batch_begin", 0, []), ("on_test_batch_end", 0, val_batch),
                         ("on_test_batch_begin", 1, []), ("on_test_batch_end", 1, val_batch),
                         ("on_test_end", VAL_KEYS)]

    rec.calls.clear()
    model.predict(loader(blobs(6), 4), callbacks=[rec])
    assert rec.calls == [("on_predict_begin", []),
                         ("on_predict_batch_begin", 0, []), ("on_predict_batch_end", 0, ["outputs"]),
                         ("on_predict_batch_begin", 1, []), ("on_predict_batch_end", 1, ["outputs"]),
                         ("on_predict_end", [])]


def test_on_backward_end_fires_at_optimizer_steps_only_with_accumulation():
    rec = Recorder()
    model = compiled()
    # 5 batches, windows of 2: steps after batches 2, 4 and (the partial window) 5
    model.fit(1, loader(blobs(10), 2), loader(blobs(4), 2), log_step_freq=5, callbacks=[rec], verbose=0,
              grad_accum_steps=2)
    assert rec.calls == expected_fit(1, 5, 2, step_at={2, 4, 5})
    assert model.global_step == 3


def test_on_backward_end_sees_unscaled_window_gradients_before_clipping():
    # The hook sees the window's mean gradient (as a k-times larger batch would give) before clipping.
    seen = []
    net = mlp()
    model = compiled(net)
    cb = LambdaCallback(on_backward_end=lambda batch: seen.append(
        torch.cat([p.grad.flatten() for p in net.parameters()]).clone()))
    ds = blobs(8)
    reference = mlp()  # same init (seeded)
    nn.functional.cross_entropy(reference(ds.tensors[0]), ds.tensors[1]).backward()
    full_grad = torch.cat([p.grad.flatten() for p in reference.parameters()])
    model.fit(1, loader(ds, 4), grad_accum_steps=2, grad_clip_norm=1e-3, callbacks=[cb], verbose=0)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], full_grad)
    assert full_grad.norm() > 1e-2  # so clipping to 1e-3 would have shown


def test_callback_list_order_history_printer_user_and_runs_last(capsys):
    order = []

    class Saver(Callback):
        runs_last = True

        def on_epoch_end(self, epoch, logs):
            order.append("saver")

    class User(Callback):
        def __init__(self, name):
            self.name = name

        def on_epoch_end(self, epoch, logs):
            # History runs first: this epoch is already recorded
            order.append((self.name, len(self.model.history)))
            print(f"USER {self.name}")

    model = compiled()
    model.fit(1, loader(blobs(8), 4), callbacks=[Saver(), User("a"), User("b")], verbose=2)
    assert order == [("a", 1), ("b", 1), "saver"]
    out = capsys.readouterr().out
    assert out.index("| epoch |") < out.index("USER a") < out.index("USER b")  # the printer before users


def test_set_params_tells_callbacks_about_the_run():
    rec = Recorder()
    model = compiled()
    model.fit(1, loader(blobs(8), 4), callbacks=[rec], verbose=0)
    model.fit(2, loader(blobs(10), 4), loader(blobs(4), 4), callbacks=[rec], verbose=0)
    assert rec.params == {"epochs": 3, "initial_epoch": 1, "steps": 3, "verbose": 0, "log_keys": EPOCH_KEYS,
                          "grad_accum_steps": 1, "batch_size": 4}


@pytest.mark.parametrize("make_cb, key", [
    (lambda: EarlyStopping(monitor="val_loss"), "val_loss"),
    (lambda: ModelCheckpoint("unused.pt", monitor="val_accuracy", save_best_only=True), "val_accuracy"),
    (lambda: ReduceLROnPlateau(monitor="acc"), "acc"),
    (lambda: ModelCheckpoint("ck-{val_loss:.2f}.pt"), "val_loss"),
])
def test_monitoring_a_key_the_run_never_produces_fails_before_training(make_cb, key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = compiled(net)
    with pytest.raises(ValueError, match=rf"{key!r}.*\['epoch', 'loss', 'accuracy'(, 'lr')?\]"):
        model.fit(3, loader(blobs(16), 4), callbacks=[make_cb()], verbose=0)
    assert model.global_step == 0 and model.epoch == 0
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert not list(tmp_path.iterdir())


def test_a_callback_may_announce_a_key_it_adds_to_the_logs():
    class AddsScore(Callback):
        def set_params(self, params):
            super().set_params(params)
            params["log_keys"].append("score")

        def on_epoch_end(self, epoch, logs):
            logs["score"] = float(epoch)

    es = EarlyStopping(monitor="score", mode="min", patience=0, verbose=0)
    model = compiled()
    model.fit(5, loader(blobs(8), 4), callbacks=[AddsScore(), es], verbose=0)
    assert model.epoch == 2 and es.stopped_epoch == 1  # epoch 2 (0-based 1): its score (2.0) did not improve on 1.0


def test_overridden_step_keys_are_checked_after_the_first_epoch():
    class Custom(torchfit.Model):
        def train_step(self, batch):
            x, y = batch
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.net(x), y)
            self.backward(loss, len(y))
            self.optimizer_step()
            return torchfit.StepResult(loss.detach(), None, None, len(y), {"half": loss.detach() / 2})

    ok = EarlyStopping(monitor="half", patience=5, verbose=0)
    model = Custom(mlp()).compile(nn.CrossEntropyLoss(), device="cpu")
    model.fit(2, loader(blobs(8), 4), callbacks=[ok], verbose=0)
    assert ok.best_epoch is not None and ok.params["log_keys"] == ["epoch", "loss", "half"]
    with pytest.raises(ValueError, match=r"'halve'.*\['epoch', 'loss', 'half'\]"):
        model.fit(3, loader(blobs(8), 4), callbacks=[EarlyStopping(monitor="halve")], verbose=0)
    assert model.epoch == 3  # one epoch ran: the keys of an overridden step exist only then


def test_hooks_of_callbacks_that_do_not_implement_them_are_not_called():
    class OnlyEpochs(Callback):
        def on_epoch_end(self, epoch, logs):
            pass

    model = compiled()
    model.fit(1, loader(blobs(8), 4), callbacks=[OnlyEpochs()], verbose=0)
    cbs = torchfit.callbacks.CallbackList([OnlyEpochs()], model)
    assert cbs.on_train_batch_end.__name__ == "_noop"
    assert cbs.on_epoch_end.__name__ == "on_epoch_end"


def test_evaluate_and_predict_from_a_callback_inside_fit():
    seen = []
    net = mlp()
    model = compiled(net)

    def probe(epoch, logs):
        seen.append((model.evaluate(loader(blobs(12), 4))["val_loss"], model.predict(loader(blobs(12), 4)).shape))

    model.fit(2, loader(blobs(16), 4), loader(blobs(8), 4), callbacks=[LambdaCallback(on_epoch_end=probe)],
              verbose=0)
    assert len(seen) == 2 and seen[0][1] == (12, 3) and model.epoch == 2
    plain = compiled(mlp())  # the same training without the probes ends with the same weights
    plain.fit(2, loader(blobs(16), 4), loader(blobs(8), 4), verbose=0)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), plain.net.state_dict().values()))
