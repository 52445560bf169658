"""Bad input gets a clear error naming the problem and the fix, before weights change;
faults (NaN, Ctrl-C, failing steps) lose nothing."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit
from torchfit.errors import BatchFormatError, MetricError, NotCompiledError, StepError
from conftest import SmallCNN, blobs, digits, loader, mlp


def compiled(net=None, **kw):
    kw.setdefault("device", "cpu")
    return torchfit.Model(net or mlp()).compile(nn.CrossEntropyLoss(), **kw)


def weights(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_unchanged(net, before):
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


@pytest.mark.parametrize("verb", ["fit", "evaluate", "predict"])
def test_verbs_before_compile(verb):
    model = torchfit.Model(mlp())
    args = (1, loader(blobs(10))) if verb == "fit" else (loader(blobs(10)),)
    with pytest.raises(NotCompiledError, match=r"model.compile\(loss=.*before model." + verb):
        getattr(model, verb)(*args)


def test_net_must_be_a_module():
    with pytest.raises(TypeError, match="needs a torch.nn.Module; got function"):
        torchfit.Model(lambda x: x)


def test_optimizer_over_another_nets_parameters():
    # compile accepts it (torchkeras tutorials compile an evaluation-only clone that way); fit refuses it
    other = mlp()
    net = mlp()
    before = weights(net)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(other.parameters(), lr=0.1))
    ds = blobs(16)
    assert set(model.evaluate(loader(ds, 8))) == {"val_loss"}
    with pytest.raises(ValueError, match=r"not this net's.*model.parameters\(\)"):
        model.fit(1, loader(ds, 8), verbose=0)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items()) and model.epoch == 0


def test_loss_that_is_not_a_scalar_leaves_weights_untouched():
    net = SmallCNN()
    before = weights(net)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(reduction="none"), device="cpu")
    with pytest.raises(StepError, match="scalar") as info:
        model.fit(1, loader(digits(64), 16), verbose=0)
    assert "reduction='mean'" in str(info.value.__cause__)
    assert_unchanged(net, before)  # BatchNorm running stats included
    assert model.epoch == 0 and len(model.history) == 0


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"'acuracy'.*accuracy.*auc"):
        compiled(metrics=["acuracy"])


def test_metric_that_raises_is_named_and_nothing_trained():
    def broken(preds, targets):
        raise ZeroDivisionError("boom")

    net = mlp()
    before = weights(net)
    model = compiled(net, metrics={"mine": broken})
    with pytest.raises(MetricError, match="'mine' raised ZeroDivisionError: boom"):
        model.fit(1, loader(blobs(64), 16), verbose=0)
    assert_unchanged(net, before)


def test_batch_that_is_not_a_pair():
    X = torch.randn(20, 4)
    model = compiled()
    quadruples = DataLoader(TensorDataset(X, X, X, X), batch_size=5)
    with pytest.raises(StepError, match=r"pair \(x, y\).*tuple of length 4|list of length 4") as info:
        model.fit(1, quadruples, verbose=0)
    assert isinstance(info.value.__cause__, BatchFormatError)
    triples = DataLoader(TensorDataset(X, X, X), batch_size=5)  # read as (x, y, sample_weight), as Keras does
    with pytest.raises(StepError, match=r"\(x, y, sample_weight\), Keras' layout, but its third item is \[5, 4\]"):
        model.fit(1, triples, verbose=0)


def test_shape_mismatch_names_step_and_batch_and_chains():
    X = torch.randn(20, 5)  # the net wants 4 features
    model = compiled()
    with pytest.raises(StepError, match=r"train step failed at epoch 1, batch 1 of 4: layer '0' .*\[5, 5\]") as info:
        model.fit(1, DataLoader(TensorDataset(X, torch.zeros(20, dtype=torch.long)), batch_size=5), verbose=0)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "mat1 and mat2" in str(info.value.__cause__)


def test_empty_loader():
    empty = DataLoader(TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="dl_train is empty"):
        compiled().fit(1, empty)
    with pytest.raises(ValueError, match="yielded no batches"):
        compiled().fit(1, iter([]), verbose=0)


@pytest.mark.parametrize("epochs", [-1, 1.5, "3", True, None])
def test_epochs_must_be_a_non_negative_int(epochs):
    with pytest.raises(ValueError, match=r"epochs must be an int >= 0"):
        compiled().fit(epochs, loader(blobs(10)))


def test_zero_epochs_is_a_no_op():
    model = compiled()
    assert len(model.fit(0, loader(blobs(10)), verbose=0)) == 0


def test_both_spellings_of_loss_and_metrics():
    with pytest.raises(TypeError, match="both loss= and loss_func="):
        torchfit.Model(mlp()).compile(loss=nn.MSELoss(), loss_func=nn.MSELoss())
    with pytest.raises(TypeError, match="both metrics= and metrics_dict="):
        torchfit.Model(mlp()).compile(nn.MSELoss(), metrics=["mae"], metrics_dict={"mae": "mae"})


def test_loss_class_instead_of_instance():
    with pytest.raises(TypeError, match=r"pass an instance: CrossEntropyLoss\(\)"):
        torchfit.Model(mlp()).compile(nn.CrossEntropyLoss)


def test_fp16_on_cpu_is_an_error():
    with pytest.raises(ValueError, match="16-mixed.*needs a CUDA device.*bf16"):
        torchfit.Model(mlp()).compile(nn.MSELoss(), device="cpu", precision="16-mixed")


def test_bad_fit_arguments():
    dl = loader(blobs(10))
    with pytest.raises(ValueError, match="verbose must be 0"):
        compiled().fit(1, dl, verbose=3)
    with pytest.raises(ValueError, match="log_step_freq must be an int >= 1"):
        compiled().fit(1, dl, log_step_freq=0)
    with pytest.raises(TypeError, match="DataLoader"):
        compiled().fit(1, torch.randn(10, 4))
    with pytest.raises(TypeError, match="training loader"):
        compiled().fit(1)


class NaNAfter(nn.Module):
    """CrossEntropy that turns NaN from a given call on."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, preds, y):
        self.calls += 1
        loss = nn.functional.cross_entropy(preds, y)
        return loss * float("nan") if self.calls > self.after else loss


def test_non_finite_loss_stops_at_the_next_logging_point(capsys):
    ds = blobs(80)  # 10 batches of 8 a epoch
    model = torchfit.Model(mlp()).compile(NaNAfter(after=13), device="cpu")
    h = model.fit(5, loader(ds, 8), log_step_freq=2, verbose=1)
    out = capsys.readouterr().out
    assert "Stopped training: non-finite loss (nan) at epoch 2, step 4" in out
    assert len(h) == 1 and list(model.history["epoch"]) == [1]
    assert model.epoch == 1
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        torchfit.Model(mlp()).compile(NaNAfter(after=13), device="cpu").fit(5, loader(ds, 8), verbose=0)


def test_non_finite_loss_stop_is_not_masked_by_auc():
    # NaN weights give NaN scores: AUC reports nan and the clean non-finite stop still explains it.
    ds = blobs(80)
    model = torchfit.Model(mlp()).compile(NaNAfter(after=13), "sgd", ["auc"], device="cpu")
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        h = model.fit(5, loader(ds, 8), log_step_freq=2, verbose=0)
    assert list(h["epoch"]) == [1]
    from torchfit.metrics import AUC
    auc = AUC()
    auc.update(torch.tensor([[float("nan"), 0.0, 1.0]] * 4), torch.tensor([0, 1, 2, 0]))
    assert auc.compute() != auc.compute()  # nan, not an exception


class InterruptAt(torchfit.Callback):
    def __init__(self, epoch, batch):
        self.at = (epoch, batch)

    def on_train_batch_begin(self, batch, logs):
        if (self.model.run.epoch, batch) == self.at:
            raise KeyboardInterrupt


def test_ctrl_c_returns_finished_epochs_and_model_stays_usable(capsys):
    ds = blobs(64)
    model = compiled(metrics=["accuracy"])
    h = model.fit(5, loader(ds, 16), loader(ds, 16), callbacks=[InterruptAt(3, 2)])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "epoch 3" in lines[0] and "2 finished epoch(s)" in lines[0]
    assert list(h["epoch"]) == [1, 2] and model.epoch == 2
    assert model.net.training  # mode restored
    assert model.predict(loader(ds, 16)).shape == (64, 3)
    assert list(model.fit(1, loader(ds, 16), verbose=0)["epoch"]) == [1, 2, 3]


def test_error_mid_training_keeps_history_of_finished_epochs():
    class FailAt(torchfit.Callback):
        def on_epoch_begin(self, epoch, logs):
            if epoch == 2:  # the third epoch: hooks count from 0
                raise RuntimeError("disk full")

    model = compiled()
    with pytest.raises(RuntimeError, match="disk full"):
        model.fit(5, loader(blobs(32), 8), callbacks=[FailAt()], verbose=0)
    assert list(model.history["epoch"]) == [1, 2]
    assert len(model.fit(1, loader(blobs(32), 8), verbose=0)) == 3
