"""The core promises of fit/evaluate/predict: parity with a hand-written loop, exact
epoch figures, modes, ordering, and repeated fits."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit
from conftest import SmallCNN, assert_same_weights, binary, blobs, digits, loader, mlp


def raw_loop(net, opt, loss_fn, dl_train, epochs, dl_val=None):
    """The loop a careful user writes by hand."""
    for _ in range(epochs):
        net.train()
        for x, y in dl_train:
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
        if dl_val is not None:
            net.eval()
            with torch.no_grad():
                for x, y in dl_val:
                    loss_fn(net(x), y)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("with_val", [False, True])
def test_fit_matches_hand_written_loop_bit_for_bit(opt_name, with_val):
    ds, ds_val = digits(250), digits(60)
    make_opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                "adam": lambda p: torch.optim.Adam(p, lr=1e-2)}[opt_name]

    torch.manual_seed(1)
    net_a = SmallCNN()
    net_b = copy.deepcopy(net_a)

    torch.manual_seed(2)
    raw_loop(net_a, make_opt(net_a.parameters()), nn.CrossEntropyLoss(),
             loader(ds, 32, shuffle=True, seed=3), 3, loader(ds_val, 16) if with_val else None)
    rng_raw = torch.get_rng_state()

    torch.manual_seed(2)
    model = torchfit.Model(net_b)
    model.compile(nn.CrossEntropyLoss(), make_opt(net_b.parameters()), ["accuracy"], device="cpu")
    model.fit(3, loader(ds, 32, shuffle=True, seed=3), loader(ds_val, 16) if with_val else None, verbose=0)

    assert_same_weights(net_a, net_b)  # BatchNorm running stats included
    # fit drew exactly the same random numbers (dropout) as the raw loop, no more
    assert torch.equal(torch.get_rng_state(), rng_raw)


def test_two_fits_equal_one_longer_fit():
    ds = blobs(150)

    def train(splits):
        torch.manual_seed(5)
        net = mlp(dropout=0.2, seed=1)
        model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), 1e-2),
                                           ["accuracy"], device="cpu")
        dl = loader(ds, 16, shuffle=True, seed=9)
        for n in splits:
            history = model.fit(n, dl, loader(ds, 50), verbose=0)
        return model, history

    m4, h4 = train([4])
    m22, h22 = train([2, 2])
    assert_same_weights(m4.net, m22.net)
    assert list(h22["epoch"]) == [1, 2, 3, 4]
    assert h4.equals(h22)
    assert m22.epoch == 4 and len(m22.history) == 4


def test_history_columns_and_epoch_numbering():
    ds = blobs(100)
    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), metrics=["accuracy", "f1"], device="cpu")
    h = model.fit(2, loader(ds, 32), loader(ds, 32), verbose=0)
    assert list(h.columns) == ["epoch", "loss", "accuracy", "f1", "val_loss", "val_accuracy", "val_f1"]
    assert list(h["epoch"]) == [1, 2]
    h_no_val = model.fit(1, loader(ds, 32), verbose=0)
    assert list(h_no_val["epoch"]) == [1, 2, 3]
    assert h_no_val["val_loss"].isna().tolist() == [False, False, True]
    fresh = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), metrics={"acc": "accuracy"}, device="cpu")
    assert list(fresh.fit(1, loader(ds, 32), verbose=0).columns) == ["epoch", "loss", "acc"]


def test_epoch_loss_is_sample_weighted_over_uneven_batches():
    # lr=0: the weights never move, so the epoch loss must equal the loss over the whole dataset.
    ds = blobs(70)  # batches of 32, 32, 6: the mean of batch means would be wrong
    net = mlp()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.0),
                                       ["accuracy"], device="cpu")
    h = model.fit(1, loader(ds, 32), loader(ds, 32), verbose=0)
    X, y = ds.tensors
    with torch.no_grad():
        logits = net(X)
        true_loss = nn.functional.cross_entropy(logits, y).item()
        true_acc = (logits.argmax(1) == y).double().mean().item()
        batch_means = [nn.functional.cross_entropy(net(X[i:i + 32]), y[i:i + 32]).item() for i in range(0, 70, 32)]
    assert abs(np.mean(batch_means) - true_loss) > 1e-4  # the case really distinguishes the two
    assert h.loc[0, "loss"] == pytest.approx(true_loss, abs=1e-6)
    assert h.loc[0, "val_loss"] == pytest.approx(true_loss, abs=1e-6)
    assert h.loc[0, "accuracy"] == pytest.approx(true_acc, abs=1e-12)


def test_whole_epoch_metrics_equal_sklearn():
    ds = binary(203)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    model = torchfit.Model(net).compile(nn.BCEWithLogitsLoss(), metrics=["auc", "f1", "accuracy"], device="cpu")
    model.fit(2, loader(ds, 16, shuffle=True), verbose=0)
    res = model.evaluate(loader(ds, 16))
    logits = model.predict(loader(ds, 16)).squeeze(1).numpy()
    y = ds.tensors[1].squeeze(1).numpy()
    assert res["val_auc"] == pytest.approx(roc_auc_score(y, logits), abs=1e-12)
    assert res["val_f1"] == pytest.approx(f1_score(y, logits >= 0), abs=1e-12)  # BCEWithLogits: threshold 0
    assert res["val_accuracy"] == pytest.approx(np.mean((logits >= 0) == y), abs=1e-12)


class ModeRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(4)
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.lin(self.bn(x))


def test_train_mode_for_training_eval_and_no_grad_for_validation():
    ds = blobs(64)
    net = ModeRecorder()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), device="cpu")
    net.eval()  # fit must still train in train mode, and hand the net back in eval mode
    model.fit(1, loader(ds, 32), loader(ds, 16), verbose=0)
    # dl_val's first batch is checked in eval mode before training, then 2 training and 4 validation steps
    assert net.calls == [(False, False)] + [(True, True)] * 2 + [(False, False)] * 4
    assert not net.training and not net.bn.training


@pytest.mark.parametrize("verb", ["evaluate", "predict"])
@pytest.mark.parametrize("start_mode", ["train", "eval", "mixed"])
def test_evaluate_and_predict_leave_the_net_exactly_as_found(verb, start_mode):
    ds = blobs(64)
    net = ModeRecorder()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), device="cpu")
    model.fit(1, loader(ds, 8), verbose=0)
    net.train(start_mode != "eval")
    if start_mode == "mixed":
        net.bn.eval()  # frozen BatchNorm while fine-tuning: must survive
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    net.calls.clear()
    getattr(model, verb)(loader(ds, 16))
    assert all(call == (False, False) for call in net.calls)
    assert [m.training for m in net.modules()] == modes
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_predict_returns_every_row_in_dataset_order(batch_size):
    X = torch.arange(50, dtype=torch.float32).unsqueeze(1)
    net = nn.Linear(1, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.zero_()
    model = torchfit.Model(net).compile(nn.MSELoss(), device="cpu")
    out_xy = model.predict(DataLoader(TensorDataset(X, X), batch_size=batch_size))
    out_x = model.predict(DataLoader(TensorDataset(X), batch_size=batch_size))
    out_plain = model.predict(DataLoader(X, batch_size=batch_size))  # a loader yielding bare tensors
    for out in (out_xy, out_x, out_plain):
        assert out.device.type == "cpu" and out.shape == (50, 1)
        assert torch.equal(out, X)


def test_predict_keeps_tuple_and_dict_outputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, a, b):
            return {"sum": self.lin(a + b), "parts": (a, b)}

    a, b = torch.randn(10, 3), torch.randn(10, 3)
    model = torchfit.Model(Two()).compile(device="cpu")
    out = model.predict(DataLoader(TensorDataset(a, b), batch_size=4, collate_fn=lambda rows: (
        (torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])), None)))
    assert set(out) == {"sum", "parts"} and out["sum"].shape == (10, 2)
    assert torch.equal(out["parts"][0], a) and torch.equal(out["parts"][1], b)


def test_dict_and_tuple_inputs_reach_the_net():
    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 3), nn.Linear(2, 3)

        def forward(self, left, right):
            return self.a(left) + self.b(right)

    left, right, y = torch.randn(40, 2), torch.randn(40, 2), torch.randint(0, 3, (40,))
    tuple_batches = [((left[i:i + 8], right[i:i + 8]), y[i:i + 8]) for i in range(0, 40, 8)]
    dict_batches = [({"left": left[i:i + 8], "right": right[i:i + 8]}, y[i:i + 8]) for i in range(0, 40, 8)]
    for batches in (tuple_batches, dict_batches):
        model = torchfit.Model(TwoIn()).compile(nn.CrossEntropyLoss(), metrics=["accuracy"], device="cpu")
        h = model.fit(2, batches, batches, verbose=0)
        assert len(h) == 2 and h["loss"].notna().all()
        assert model.evaluate(batches)["val_loss"] == pytest.approx(h["val_loss"].iloc[-1])


def test_model_is_a_thin_wrapper_of_the_net():
    net = mlp()
    model = torchfit.Model(net)
    x = torch.randn(5, 4)
    assert torch.equal(model(x), net(x))
    assert [id(p) for p in model.parameters()] == [id(p) for p in net.parameters()]
    assert model.net is net
    assert list(model.net.state_dict()) == list(net.state_dict())
    assert "Linear(in_features=4" in repr(model)
    model.compile(nn.CrossEntropyLoss(weight=torch.ones(3)), device="cpu")
    assert list(model.state_dict()) == ["net." + k for k in net.state_dict()]  # the loss is not a submodule


def test_custom_train_step_is_the_one_seam():
    class HalfLoss(torchfit.Model):
        def train_step(self, batch):
            x, y = batch
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.net(x), y) * 0.5
            self.backward(loss, len(y))
            self.optimizer_step()
            return torchfit.StepResult(loss.detach(), None, None, len(y), {"half": loss.detach()})

    ds = blobs(64)
    model = HalfLoss(mlp()).compile(nn.CrossEntropyLoss(), device="cpu")
    h = model.fit(2, loader(ds, 16), loader(ds, 16), verbose=0)
    assert list(h.columns) == ["epoch", "loss", "half", "val_loss"]
    assert h["half"].tolist() == h["loss"].tolist()
    # the default eval_step is untouched: val_loss is the full (not halved) loss
    assert h["val_loss"].iloc[-1] == pytest.approx(model.evaluate(loader(ds, 64))["val_loss"])
    assert h["val_loss"].iloc[-1] > 1.5 * h["loss"].iloc[-1]
    assert model.global_step == 8


def test_default_optimizer_is_adam_with_keras_lr():
    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), device="cpu")
    assert isinstance(model.optimizer, torch.optim.Adam)
    assert model.optimizer.param_groups[0]["lr"] == 1e-3
    sgd = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), "sgd", device="cpu").optimizer
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.01


def test_torchkeras_1x_call_style_runs_unchanged():
    from sklearn.metrics import accuracy_score

    def accuracy(y_pred, y_true):
        y_pred_cls = torch.argmax(nn.Softmax(dim=1)(y_pred), dim=1).data
        return accuracy_score(y_true.numpy(), y_pred_cls.numpy())

    ds = blobs(90)
    net = mlp()
    model = torchfit.Model(net)
    model.compile(loss_func=nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(model.parameters(), lr=0.02),
                  metrics_dict={"accuracy": accuracy})
    dfhistory = model.fit(3, dl_train=loader(ds, 32, shuffle=True), dl_val=loader(ds, 32), log_step_freq=1)
    assert list(dfhistory.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    # the plain sklearn function is sample-weighted over the epoch, like the built-in one
    named = torchfit.Model(net).compile(nn.CrossEntropyLoss(), metrics=["accuracy"]).evaluate(loader(ds, 32))
    assert model.evaluate(loader(ds, 32))["val_accuracy"] == pytest.approx(named["val_accuracy"], abs=1e-12)


def test_fit_arguments_are_one_value_that_matches_the_signature():
    """``FitArgs`` holds exactly fit's parameters, so the launcher hands workers every argument."""
    import dataclasses
    import inspect

    from torchfit.arguments import FitArgs

    # positional data are placed by name (FitArgs.from_call), torchkeras 4's aliases folded into dl_train/dl_val
    aliases = ("self", "data", "train_data", "val_data")
    params = [p for p in inspect.signature(torchfit.Model.fit).parameters if p not in aliases]
    fields = [f.name for f in dataclasses.fields(FitArgs)]
    assert fields == params
    defaults = {p.name: p.default for p in inspect.signature(torchfit.Model.fit).parameters.values()
                if p.name not in aliases}
    assert {f.name: f.default for f in dataclasses.fields(FitArgs)} == defaults
    assert "num_processes" not in FitArgs(epochs=3).kwargs() and FitArgs(epochs=3).kwargs(seed=4)["seed"] == 4
