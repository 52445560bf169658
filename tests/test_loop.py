"""torchfit.loop: the one batch loop (train, eval, predict), fit_loop's exits, the run's counters."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torchfit
from torchfit.callbacks import Callback
from torchfit.loop import nonfinite_loss
from conftest import SmallCNN, blobs, digits, loader, mlp


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_predict_batch_begin(self, batch, logs):
        self.calls.append(("begin", batch, self.model.run.batch_idx))

    def on_predict_batch_end(self, batch, logs):
        self.calls.append(("end", batch))

    def on_exception(self, exception):
        self.calls.append(("exception", type(exception).__name__))


def compiled(net=None, **kw):
    net = net if net is not None else mlp()
    return torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1),
                                       device="cpu", **kw)


def test_predict_runs_the_same_batch_loop_with_its_hooks():
    rec = Recorder()
    model = compiled()
    out = model.predict(loader(blobs(10), 4), callbacks=[rec])
    assert out.shape == (10, 3)
    # the hooks get Keras' 0-based batch index; run.batch_idx counts batches done
    assert rec.calls == [("begin", 0, 1), ("end", 0), ("begin", 1, 2), ("end", 1), ("begin", 2, 3), ("end", 2)]


def test_a_failing_predict_step_names_the_batch():
    model = compiled(nn.Linear(5, 3))
    with pytest.raises(torchfit.errors.StepError, match=r"predict step failed at batch 1 of 3: layer 'Linear'.*in_features=5"):
        model.predict(loader(blobs(10), 4))


def test_nonfinite_loss_is_the_one_check():
    assert nonfinite_loss(0.5, "x") is None and nonfinite_loss(None, "x") is None
    assert nonfinite_loss(float("nan"), "at epoch 2, step 3") == "non-finite loss (nan) at epoch 2, step 3"
    assert nonfinite_loss(float("-inf"), "over epoch 1").startswith("non-finite loss (-inf)")


class Boom(Callback):
    def __init__(self, exc, at=(1, 1)):
        self.exc, self.at = exc, at

    def on_train_batch_begin(self, batch, logs):
        if (self.model.run.epoch, batch) == self.at:
            raise self.exc


def test_on_exception_sees_an_error_then_it_propagates():
    rec = Recorder()
    model = compiled()
    with pytest.raises(RuntimeError, match="disk full"):
        model.fit(2, loader(blobs(16), 4), callbacks=[Boom(RuntimeError("disk full"), at=(2, 1)), rec], verbose=0)
    assert rec.calls == [("exception", "RuntimeError")] and model.epoch == 1 and len(model.history) == 1


def test_a_failing_on_exception_does_not_replace_the_error():
    class BadCleanup(Callback):
        def on_exception(self, exception):
            raise ValueError("cleanup failed")

    model = compiled()
    with pytest.warns(RuntimeWarning, match="cleanup failed"):
        with pytest.raises(RuntimeError, match="the real error"):
            model.fit(1, loader(blobs(16), 4), callbacks=[Boom(RuntimeError("the real error")), BadCleanup()],
                      verbose=0)


def test_ctrl_c_closes_with_on_exception_before_the_message(capsys):
    rec = Recorder()

    class Marker(Callback):
        def on_exception(self, exception):
            print("BAR CLOSED")

    model = compiled()
    model.fit(3, loader(blobs(16), 4), callbacks=[Boom(KeyboardInterrupt(), at=(2, 2)), rec, Marker()], verbose=2)
    out = capsys.readouterr().out
    assert rec.calls == [("exception", "KeyboardInterrupt")]
    assert out.index("BAR CLOSED") < out.index("Training interrupted (KeyboardInterrupt) in epoch 2")


def test_ctrl_c_before_the_first_optimizer_step_leaves_batchnorm_statistics_as_found():
    class InterruptInForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.cnn = SmallCNN()

        def forward(self, x):
            out = self.cnn(x)  # BatchNorm's running statistics are updated here
            raise KeyboardInterrupt

    net = InterruptInForward()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = compiled(net)
    model.fit(1, loader(digits(32), 8), verbose=0)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert model.epoch == 0 and model.global_step == 0


def test_fit_from_inside_a_callback_is_a_clear_error():
    class Refit(Callback):
        def on_epoch_end(self, epoch, logs):
            self.model.fit(1, loader(blobs(8), 4), verbose=0)

    model = compiled()
    with pytest.raises(RuntimeError, match="already in a fit.*from a callback"):
        model.fit(1, loader(blobs(8), 4), callbacks=[Refit()], verbose=0)
    assert model.fit(1, loader(blobs(8), 4), verbose=0)["epoch"].tolist() == [1, 2]  # usable afterwards


def test_the_run_is_gone_after_each_call():
    model = compiled(metrics=["accuracy"])
    model.fit(1, loader(blobs(8), 4), loader(blobs(8), 4), verbose=0)
    model.evaluate(loader(blobs(8), 4))
    model.predict(loader(blobs(8), 4))
    assert model.run is None
