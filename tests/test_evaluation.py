"""torchfit.evaluation: confusion matrix, its figure and the classification report match scikit-learn."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sklearn.metrics
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit
from torchfit.evaluation import classification_report, confusion_matrix, plot_confusion_matrix, predicted_classes

from conftest import binary, blobs, loader, mlp



@pytest.fixture(scope="module")
def multiclass():
    torch.manual_seed(0)
    model = torchfit.Model(mlp(4, 3)).compile(nn.CrossEntropyLoss(), "adam", ["accuracy"], device="cpu")
    model.fit(3, loader(blobs(150), shuffle=True), verbose=0)
    dl = loader(blobs(90, seed=1), batch_size=16)
    return model, dl


def _binary_model(loss):
    net = nn.Sequential(mlp(6, 1), nn.Sigmoid()) if isinstance(loss, nn.BCELoss) else mlp(6, 1)
    model = torchfit.Model(net).compile(loss, "adam", ["accuracy"], device="cpu")
    model.fit(2, loader(binary(120), shuffle=True), verbose=0)
    return model


def test_multiclass_equals_sklearn(multiclass):
    model, dl = multiclass
    preds = model.predict(dl).argmax(dim=1).numpy()
    targets = torch.cat([y for _, y in dl]).numpy()
    cm = confusion_matrix(model, dl)
    expected = sklearn.metrics.confusion_matrix(targets, preds, labels=[0, 1, 2])
    np.testing.assert_array_equal(cm.to_numpy(), expected)
    assert cm.index.name == "true" and cm.columns.name == "predicted"
    assert list(cm.index) == [0, 1, 2] and cm.to_numpy().sum() == 90
    # the diagonal agrees with torchfit's own accuracy metric
    assert np.trace(cm.to_numpy()) / 90 == pytest.approx(model.evaluate(dl)["val_accuracy"])


def test_normalize_labels_and_names(multiclass):
    model, dl = multiclass
    y_true, y_pred, n = predicted_classes(model, dl)
    assert n == 3
    cm = confusion_matrix(model, dl, labels=[2, 0], normalize="true", target_names=["c", "a"])
    expected = sklearn.metrics.confusion_matrix(y_true, y_pred, labels=[2, 0], normalize="true")
    np.testing.assert_allclose(cm.to_numpy(), expected)
    assert list(cm.columns) == ["c", "a"]
    with pytest.raises(ValueError, match="normalize"):
        confusion_matrix(model, dl, normalize="rows")
    with pytest.raises(ValueError, match="target_names has 2 names for 3 classes"):
        confusion_matrix(model, dl, target_names=["a", "b"])


@pytest.mark.parametrize("loss", [nn.BCEWithLogitsLoss(), nn.BCELoss()], ids=["logits", "probabilities"])
def test_binary_thresholds_like_accuracy(loss):
    model = _binary_model(loss)
    dl = loader(binary(100, seed=3), batch_size=32)
    out = model.predict(dl).reshape(-1)
    cut = 0.0 if isinstance(loss, nn.BCEWithLogitsLoss) else 0.5
    preds = (out >= cut).long().numpy()
    targets = torch.cat([y for _, y in dl]).reshape(-1).long().numpy()
    cm = confusion_matrix(model, dl)
    np.testing.assert_array_equal(cm.to_numpy(), sklearn.metrics.confusion_matrix(targets, preds, labels=[0, 1]))
    assert np.trace(cm.to_numpy()) / 100 == pytest.approx(model.evaluate(dl)["val_accuracy"])


def test_from_logits_override_changes_the_cut():
    model = torchfit.Model(nn.Linear(1, 1)).compile(nn.MSELoss(), device="cpu")  # not a BCE loss: probabilities
    with torch.no_grad():
        model.net.weight.fill_(1.0), model.net.bias.zero_()
    x = torch.tensor([[-0.2], [0.2], [0.7]])
    dl = DataLoader(TensorDataset(x, torch.tensor([0.0, 1.0, 1.0])), batch_size=2)
    assert list(predicted_classes(model, dl)[1]) == [0, 0, 1]  # 0.2 < 0.5 as a probability
    assert list(predicted_classes(model, dl, from_logits=True)[1]) == [0, 1, 1]  # 0.2 >= 0 as a logit


def test_one_hot_targets(multiclass):
    model, dl = multiclass
    x = torch.cat([x for x, _ in dl])
    y = torch.cat([y for _, y in dl])
    onehot = DataLoader(TensorDataset(x, nn.functional.one_hot(y, 3).float()), batch_size=16)
    pd.testing.assert_frame_equal(confusion_matrix(model, onehot), confusion_matrix(model, dl))


def test_shuffling_loader_is_refused(multiclass):
    model, _ = multiclass
    with pytest.raises(ValueError, match="dl shuffles.*shuffle=False"):
        confusion_matrix(model, DataLoader(blobs(40), batch_size=8, shuffle=True))


def test_loader_without_targets_is_refused(multiclass):
    model, _ = multiclass
    with pytest.raises(ValueError, match=r"\(x, y\) batches"):
        confusion_matrix(model, DataLoader(torch.randn(10, 4), batch_size=5))


def test_classification_report_equals_sklearn(multiclass):
    model, dl = multiclass
    y_true, y_pred, _ = predicted_classes(model, dl)
    got = classification_report(model, dl, target_names=["a", "b", "c"], output_dict=True)
    assert got == sklearn.metrics.classification_report(y_true, y_pred, target_names=["a", "b", "c"],
                                                        output_dict=True, zero_division=0)
    text = classification_report(model, dl, target_names=["a", "b", "c"])
    assert isinstance(text, str) and "precision" in text and "\n           a " in text


def test_plot_annotates_every_cell(multiclass):
    from matplotlib.figure import Figure

    model, dl = multiclass
    cm = confusion_matrix(model, dl)
    fig = plot_confusion_matrix(cm)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 9
    assert texts == [str(v) for v in cm.to_numpy().ravel()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    fractions = plot_confusion_matrix(confusion_matrix(model, dl, normalize="all"))
    assert all("." in t.get_text() for t in fractions.axes[0].texts)
    assert fig._repr_png_()[:4] == b"\x89PNG"


def test_plot_binary_has_four_cells():
    model = _binary_model(nn.BCEWithLogitsLoss())
    fig = plot_confusion_matrix(confusion_matrix(model, loader(binary(60))))
    assert len(fig.axes[0].texts) == 4


def test_plot_rejects_what_is_not_a_confusion_matrix():
    with pytest.raises(TypeError, match="square DataFrame"):
        plot_confusion_matrix(np.eye(2))
