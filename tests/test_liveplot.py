"""LivePlot: one history figure per fit, redrawn at each epoch end, in a notebook or a PNG file."""
from __future__ import annotations

import base64
import os
import types

import pytest
from torch import nn

import torchfit
from torchfit.callbacks import Callback
from torchfit.callbacks.liveplot import DEFAULT_PATH, LivePlot
from torchfit.callbacks.printing import NotebookDisplay
from conftest import blobs, loader, mlp

matplotlib = pytest.importorskip("matplotlib")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def compiled():
    return torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), metrics=["accuracy"], device="cpu")


class EpochLog(Callback):
    """Records whether the plot file exists at each epoch end (after LivePlot's hook)."""

    def __init__(self, path):
        self.path, self.seen = path, []

    def on_epoch_end(self, epoch, logs):
        with open(self.path, "rb") as f:
            self.seen.append(f.read(8))


def visible_axes(fig):
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def test_in_a_script_the_plot_is_a_png_rewritten_atomically_each_epoch(tmp_path, monkeypatch, capsys):
    import matplotlib.image

    path = tmp_path / "plots" / "history.png"
    path.parent.mkdir()
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b))[1])
    plot = LivePlot(path=path)
    log = EpochLog(path)
    model = compiled()
    model.fit(3, loader(blobs(60), 20), loader(blobs(20), 20), verbose=0, callbacks=[plot, log])
    assert log.seen == [PNG_MAGIC] * 3  # written by each epoch's end, not only at the end
    assert len(replaced) == 3 and all(b == str(path) and os.path.dirname(a) == str(path.parent) for a, b in replaced)
    assert sorted(os.listdir(path.parent)) == ["history.png"]  # no temporary file left behind
    image = matplotlib.image.imread(str(path))
    width, height = plot.figure.get_size_inches() * plot.dpi
    assert image.shape[:2] == (round(height), round(width))
    assert visible_axes(plot.figure) == ["loss", "accuracy"]  # a panel per quantity
    loss_panel = plot.figure.axes[0]
    assert [line.get_label() for line in loss_panel.get_lines()] == ["train", "validation"]
    assert list(loss_panel.get_lines()[0].get_ydata()) == model.history["loss"].tolist()  # exact figures
    assert capsys.readouterr().out == ""  # verbose=0: silent


def test_default_path_is_in_the_working_directory_and_said_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = compiled()
    model.fit(1, loader(blobs(40), 20), verbose=2, callbacks=[LivePlot()])
    assert (tmp_path / DEFAULT_PATH).read_bytes().startswith(PNG_MAGIC)
    out = capsys.readouterr().out
    assert out.count(str(tmp_path / DEFAULT_PATH)) == 1


def test_a_second_fit_continues_the_curves(tmp_path):
    model = compiled()
    plot = LivePlot(path=tmp_path / "h.png")
    model.fit(2, loader(blobs(40), 20), verbose=0, callbacks=[plot])
    model.fit(1, loader(blobs(40), 20), verbose=0, callbacks=[plot])
    assert list(plot.figure.axes[0].get_lines()[0].get_xdata()) == [1, 2, 3]


class FakeDisplay:
    def __init__(self):
        self.outputs = []

    def __call__(self, bundle, raw, display_id):
        assert raw is True and display_id is True
        history = [bundle]
        self.outputs.append(history)
        return types.SimpleNamespace(update=lambda b, raw: history.append(b))


def test_in_a_notebook_one_figure_is_updated_in_place_each_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = FakeDisplay()
    model = compiled()
    model.fit(3, loader(blobs(60), 20), loader(blobs(20), 20), verbose=0,
              callbacks=[LivePlot(notebook=NotebookDisplay(fake), metrics=["accuracy"])])
    assert len(fake.outputs) == 1  # one display id: the stored notebook keeps one figure
    updates = fake.outputs[0]
    assert len(updates) == 3  # shown at epoch 1, updated at epochs 2 and 3, nothing per step
    for epoch, bundle in enumerate(updates, 1):
        assert base64.b64decode(bundle["image/png"]).startswith(PNG_MAGIC)
        assert bundle["text/plain"] == f"<torchfit history plot, epoch {epoch}>"
    assert os.listdir(tmp_path) == []  # no file in a notebook


def test_a_kernel_is_detected_and_a_path_given_still_writes_the_file(tmp_path, monkeypatch):
    import sys

    fake = FakeDisplay()
    kernel = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    monkeypatch.setitem(sys.modules, "IPython.display", types.SimpleNamespace(display=fake))
    model = compiled()
    model.fit(1, loader(blobs(40), 20), verbose=0, callbacks=[LivePlot()])
    assert len(fake.outputs) == 1 and "image/png" in fake.outputs[0][0]
    model.fit(1, loader(blobs(40), 20), verbose=0, callbacks=[LivePlot(path=tmp_path / "h.png")])
    assert len(fake.outputs) == 1 and (tmp_path / "h.png").exists()


def test_bad_arguments_fail_before_training(tmp_path):
    model = compiled()
    with pytest.raises(ValueError, match=r"LivePlot\(metrics=...\): \['acc'\] not logged"):
        model.fit(1, loader(blobs(40), 20), verbose=0, callbacks=[LivePlot(tmp_path / "h.png", metrics=["acc"])])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.fit(1, loader(blobs(40), 20), verbose=0, callbacks=[LivePlot(tmp_path / "missing" / "h.png")])
    assert model.epoch == 0 and len(model.history) == 0
    with pytest.raises(ValueError, match="columns"):
        LivePlot(columns=0)


def test_without_matplotlib_fit_fails_before_training_naming_the_fix(tmp_path, monkeypatch):
    import torchfit.plot

    def missing():
        raise ImportError("torchfit.plot_history needs matplotlib, which is an optional extra: "
                          'pip install "torchfit-keras[plot]"')

    monkeypatch.setattr(torchfit.plot, "_import_matplotlib", missing)
    model = compiled()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ImportError, match=r'pip install "torchfit-keras\[plot\]"'):
        model.fit(1, loader(blobs(40), 20), verbose=0, callbacks=[LivePlot(tmp_path / "h.png")])
    assert model.global_step == 0 and all(p.equal(b) for p, b in zip(model.parameters(), before))
    assert os.listdir(tmp_path) == []


def test_only_rank_zero_draws():
    assert LivePlot.rank_zero_only is True
    hooks = [h for h in ("on_train_batch_end", "on_train_batch_begin", "on_test_batch_end") if LivePlot().implements(h)]
    assert hooks == []  # nothing per step
