"""torchfit.diagnose: a failed step's first line names the culprit and the fix; short tracebacks."""
from __future__ import annotations

import traceback

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit
from torchfit.errors import StepError
from torchfit.losses import TargetError


def fit_fails(net, X, y, loss=None):
    model = torchfit.Model(net).compile(loss or nn.CrossEntropyLoss(), device="cpu")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(StepError) as info:
        model.fit(1, DataLoader(TensorDataset(X, y), batch_size=5), verbose=0)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing trained
    return info.value


def test_a_linear_of_the_wrong_width_is_named_with_the_fix():
    net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(100, 3))
    err = fit_fails(net, torch.randn(20, 4), torch.randint(0, 3, (20,)))
    first = str(err).splitlines()[0]
    assert first.startswith("train step failed at epoch 1, batch 1 of 4: layer '2' (Linear(in_features=100")
    assert "got an input of shape [5, 64]" in first and "Fix: nn.Linear(64, 3)" in first
    assert "mat1 and mat2" in str(err.__cause__)  # torch's own error stays chained


def fit_refuses_labels(net, X, y, loss=None):
    model = torchfit.Model(net).compile(loss or nn.CrossEntropyLoss(), device="cpu")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(TargetError) as info:  # the labels are checked on the first batch, before any step
        model.fit(1, DataLoader(TensorDataset(X, y), batch_size=5), verbose=0)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    return str(info.value)


def test_fractional_labels_for_cross_entropy():
    msg = fit_refuses_labels(nn.Linear(4, 3), torch.randn(20, 4), torch.rand(20, 1))
    assert "needs class indices 0..2" in msg and "not whole numbers" in msg


def test_one_hot_targets_of_the_wrong_width():
    y = torch.eye(5)[torch.randint(0, 5, (20,))]
    msg = fit_refuses_labels(nn.Linear(4, 3), torch.randn(20, 4), y)
    assert "targets of shape (5, 5) do not fit outputs of shape (5, 3)" in msg


def test_class_indices_out_of_range():
    msg = fit_refuses_labels(nn.Linear(4, 3), torch.randn(20, 4), torch.arange(20) % 5)
    assert "outside 0..2" in msg and "LabelEncoder" in msg


def test_a_loss_function_that_fails_is_shown_what_it_got():
    def my_loss(preds, targets):
        return nn.functional.cross_entropy(preds, targets)

    err = fit_fails(nn.Linear(4, 3), torch.randn(20, 4), torch.rand(20, 1), my_loss)
    first = str(err).splitlines()[0]
    assert "the loss my_loss failed on the net's output [5, 3] float32 and the targets [5, 1] float32" in first
    assert isinstance(err.__cause__, RuntimeError)  # torch's own error stays chained


def test_cross_entropy_module_subclass_gets_the_hint():
    class Smoothed(nn.CrossEntropyLoss):
        pass

    loss = Smoothed()
    msg = torchfit.diagnose.loss_failure(loss, torch.zeros(5, 3), torch.zeros(5, 1), RuntimeError("x"))
    assert "y.squeeze(1).long()" in msg


def test_images_without_a_channel_dimension():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 3))
    err = fit_fails(net, torch.randn(20, 8, 8), torch.randint(0, 3, (20,)))
    assert "layer '0'" in str(err) and "x.unsqueeze(1)" in str(err)


def test_token_ids_beyond_the_embedding():
    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.emb(x).mean(1))

    err = fit_fails(Text(), torch.randint(0, 30, (20, 6)), torch.randint(0, 2, (20,)))
    assert "layer 'emb'" in str(err) and "num_embeddings=10" in str(err) and "nn.Embedding(" in str(err)


def test_bce_with_1d_targets_is_read_as_keras_reads_it():
    # (N,) float targets against (N, 1) outputs: Keras matches the shapes, torch would broadcast to (N, N)
    torch.manual_seed(0)
    X, y = torch.randn(20, 4), torch.randint(0, 2, (20,)).float()
    weights = []
    for targets in (y, y.unsqueeze(1)):
        torch.manual_seed(1)
        net = nn.Linear(4, 1)
        model = torchfit.Model(net).compile(nn.BCEWithLogitsLoss(), "sgd", device="cpu")
        model.fit(1, DataLoader(TensorDataset(X, targets), batch_size=5), verbose=0)
        weights.append(net.weight.detach().clone())
    assert torch.equal(*weights)


def test_the_traceback_leaves_out_torch_plumbing_and_torchfit_loop():
    net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(100, 3))
    err = fit_fails(net, torch.randn(20, 4), torch.randint(0, 3, (20,)))
    text = "".join(traceback.format_exception(err))
    assert "torch/nn/modules/module.py" not in text and "_call_impl" not in text
    assert "fit_loop" not in text and "run_epoch" not in text
    assert "F.linear(input" in text  # the line that raised is kept
    assert len(text.splitlines()) < 25
