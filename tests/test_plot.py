"""plot_history and model.step_history: what the figure holds, the optional extra, headless use."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import torchfit
from torchfit.plot import quantities
from conftest import blobs, loader, mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trained(epochs=3, val=True, **fit_kw):
    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), metrics=["accuracy"], device="cpu")
    model.fit(epochs, loader(blobs(100), 10), loader(blobs(40, seed=1), 10) if val else None, verbose=0, **fit_kw)
    return model


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_a_panel_per_quantity_with_train_and_validation_on_the_same_axes():
    model = trained()
    fig = torchfit.plot_history(model.history)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["loss", "accuracy"]
    h = model.history
    for ax, name in zip(axes, ["loss", "accuracy"]):
        lines = lines_by_label(ax)
        assert set(lines) == {"train", "validation"}
        np.testing.assert_array_equal(lines["train"].get_xdata(), h["epoch"])
        np.testing.assert_allclose(lines["train"].get_ydata(), h[name])
        np.testing.assert_allclose(lines["validation"].get_ydata(), h["val_" + name])
        assert ax.get_xlabel() == "epoch"


def test_model_plot_history_and_metric_selection():
    model = trained(val=False)
    fig = model.plot_history(["accuracy"])
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    assert ax.get_title() == "accuracy" and set(lines_by_label(ax)) == {"train"}
    with pytest.raises(ValueError, match=r"\['auc'\] not in the history; it has \['loss', 'accuracy'\]"):
        model.plot_history(["auc"])
    with pytest.raises(ValueError, match="history is empty.*fit"):
        torchfit.Model(mlp()).plot_history()


def test_lr_panel_last_log_scale_for_a_schedule_and_left_out_when_constant():
    h = pd.DataFrame({"epoch": [1, 2, 3], "lr": [1.0, 0.1, 0.001], "loss": [3.0, 2.0, 1.0], "val_loss": [3, 2, 2],
                      "acc": [0.1, 0.5, 0.7]})
    assert quantities(h) == ["loss", "acc", "lr"]
    fig = torchfit.plot_history(h)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["loss", "acc", "lr"]
    assert axes[2].get_yscale() == "log"
    flat = h.assign(lr=0.1)
    assert [ax.get_title() for ax in torchfit.plot_history(flat).axes if ax.get_visible()] == ["loss", "acc"]
    assert [ax.get_title() for ax in torchfit.plot_history(flat, ["lr"]).axes if ax.get_visible()] == ["lr"]


def test_draws_into_a_given_figure_and_saves_png(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    assert torchfit.plot_history(trained(1).history, fig=fig) is fig
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_names_the_extra(monkeypatch):
    model = trained(1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "torchfit-keras\[plot\]"'):
        model.plot_history()


@pytest.mark.slow
def test_headless_without_pyplot_and_inline_png(tmp_path):
    # A fresh process with the Agg backend asked for: importing torchfit loads no matplotlib,
    # plotting never touches pyplot, and the figure renders itself as PNG for IPython.
    code = (
        "import sys, torchfit, pandas as pd\n"
        "assert 'matplotlib' not in sys.modules\n"
        "fig = torchfit.plot_history(pd.DataFrame({'epoch': [1, 2], 'loss': [1.0, 0.5], 'val_loss': [1.1, 0.7]}))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "png = fig._repr_png_()\n"
        "assert png[:8] == b'\\x89PNG\\r\\n\\x1a\\n', png[:8]\n"
        "fig.savefig(sys.argv[1])\n"
    )
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": ROOT}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "h.png")], env=env, check=True, timeout=120)
    assert (tmp_path / "h.png").stat().st_size > 1000


# ---------------------------------------------------------------- step history
def test_step_history_rows_at_logging_points_only_across_fit_calls():
    ds = blobs(100)  # 10 batches of 10
    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), "sgd", ["accuracy"], device="cpu")
    printed = []
    model.fit(2, loader(ds, 10), log_step_freq=4, verbose=0,
              callbacks=[torchfit.LambdaCallback(on_train_batch_end=lambda b, logs: logs.at_logging_point
                                                 and printed.append(dict(logs)))])
    model.fit(1, loader(ds, 10), log_step_freq=5, verbose=0)
    sh = model.step_history
    assert list(sh.columns) == ["epoch", "step", "global_step", "lr", "loss", "accuracy"]
    assert sh[["epoch", "step"]].values.tolist() == [[1, 4], [1, 8], [2, 4], [2, 8], [3, 5], [3, 10]]
    assert sh["global_step"].tolist() == [4, 8, 14, 18, 25, 30]
    assert (sh["lr"] == 0.01).all()
    # the same running figures the printer gets at those points
    assert sh["loss"].tolist()[:4] == [p["loss"] for p in printed]
    assert sh["accuracy"].tolist()[:4] == [p["accuracy"] for p in printed]


def test_step_history_follows_a_changing_lr():
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    halve = torchfit.LambdaCallback(on_epoch_end=lambda e, logs: [g.update(lr=g["lr"] / 2) for g in opt.param_groups])
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), opt, device="cpu")
    model.fit(3, loader(blobs(40), 10), log_step_freq=2, verbose=0, callbacks=[halve])
    assert model.step_history.groupby("epoch")["lr"].first().tolist() == [0.1, 0.05, 0.025]
    fig = torchfit.plot_history(model.step_history)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["loss", "lr"]
    assert axes[0].get_xlabel() == "optimizer step"
    np.testing.assert_array_equal(axes[0].get_lines()[0].get_xdata(), model.step_history["global_step"])
