"""torchfit.diagnose: a failed step's first line names the culprit and the fix; short tracebacks."""
from __future__ import annotations

import traceback

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit
from torchfit.errors import StepError


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


def test_cross_entropy_with_a_column_of_float_targets():
    err = fit_fails(nn.Linear(4, 3), torch.randn(20, 4), torch.rand(20, 1))
    assert "the loss CrossEntropyLoss failed on the net's output [5, 3] float32 and the targets [5, 1] float32" in str(err)
    assert "y.squeeze(1).long()" in str(err)


def test_one_hot_targets_of_the_wrong_width():
    y = torch.eye(5)[torch.randint(0, 5, (20,))]
    err = fit_fails(nn.Linear(4, 3), torch.randn(20, 4), y)
    assert "the targets have 5 columns (one-hot?) but the net outputs 3 classes" in str(err)


def test_class_indices_out_of_range():
    err = fit_fails(nn.Linear(4, 3), torch.randn(20, 4), torch.arange(20) % 5)
    assert "class indices from 0 to 4, but the net outputs 3 classes" in str(err)


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


def test_bce_with_targets_of_another_shape():
    err = fit_fails(nn.Linear(4, 1), torch.randn(20, 4), torch.randint(0, 2, (20,)).float(), nn.BCEWithLogitsLoss())
    assert "same shape. Fix: y.float().unsqueeze(1)" in str(err)


def test_the_traceback_leaves_out_torch_plumbing_and_torchfit_loop():
    net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(100, 3))
    err = fit_fails(net, torch.randn(20, 4), torch.randint(0, 3, (20,)))
    text = "".join(traceback.format_exception(err))
    assert "torch/nn/modules/module.py" not in text and "_call_impl" not in text
    assert "fit_loop" not in text and "run_epoch" not in text
    assert "F.linear(input" in text  # the line that raised is kept
    assert len(text.splitlines()) < 25
