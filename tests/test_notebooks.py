"""The notebooks run through a real Jupyter kernel; fit renders for Jupyter there and as text elsewhere."""
from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import nbformat
import pytest
from torch import nn

import torchfit
from torchfit.callbacks import LambdaCallback, ProgressBar, ProgressPrinter, progress
from torchfit.callbacks.printing import NotebookDisplay, epoch_table, in_notebook
from torchfit.formatting import format_figure
from conftest import blobs, loader, mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import run_notebooks  # noqa: E402

NOTEBOOKS = run_notebooks.notebook_paths()


# ------------------------------------------------------------------ rendering, no kernel needed
class FakeDisplay:
    """Records IPython.display.display(bundle, raw=True, display_id=True) and handle updates."""

    def __init__(self):
        self.outputs = []  # one list of bundles per display id, first shown then updated

    def __call__(self, bundle, raw, display_id):
        assert raw is True and display_id is True
        history = [bundle]
        self.outputs.append(history)
        return types.SimpleNamespace(update=lambda b, raw: history.append(b))


def fit_in_notebook(verbose, epochs=3):
    fake, lines = FakeDisplay(), []
    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), metrics=["accuracy"], device="cpu")
    printer = ProgressPrinter(verbose, sink=lines.append, notebook=NotebookDisplay(fake))
    model.fit(epochs, loader(blobs(100), 10), loader(blobs(40), 10), log_step_freq=5, verbose=0, callbacks=[printer])
    return model, fake.outputs, lines


def test_notebook_mode_updates_one_step_line_and_one_growing_table():
    model, outputs, lines = fit_in_notebook(verbose=1)
    assert lines == ["Start Training ...", "Finished Training..."]  # no time bars, no per-epoch tables
    step, table = outputs
    assert len(step) == 7  # 2 logging points x 3 epochs, shown once then updated in place; + the final line
    # like a bar's text: where the epoch is, its total and an ETA, even without ipywidgets
    assert re.fullmatch(r"Epoch 3/3  step 10/10  \[\d\d:\d\d<00:00\]  loss=\d\.\d{3}, accuracy=\d\.\d{3}",
                        step[-2]["text/plain"]), step[-2]["text/plain"]
    # once training ends the times go (a re-executed notebook with the same figures stays the same)
    assert step[-1]["text/plain"] == re.sub(r"  \[.*?\]", "", step[-2]["text/plain"])
    assert re.match(r"Epoch 1/3  step 5/10  \[\d\d:\d\d<\d\d:\d\d\]  ", step[0]["text/plain"])
    assert len(table) == 3
    rows = model.history.to_dict("records")
    for n, bundle in enumerate(table, 1):  # after epoch n the table holds epochs 1..n
        assert bundle["text/plain"] == epoch_table(rows[:n])
        assert bundle["text/html"].count("<tr>") == n + 1
    assert "<th>val_accuracy</th>" in table[-1]["text/html"]
    # the figures placed as in the text table (padded, a fixed-width font: decimal points line up)
    assert re.search(rf"<td> *{re.escape(format_figure(rows[-1]['loss']))} *</td>", table[-1]["text/html"])
    assert "font-family:monospace;white-space:pre" in table[-1]["text/html"]


def test_notebook_mode_verbose_2_shows_only_the_table():
    _, outputs, lines = fit_in_notebook(verbose=2, epochs=2)
    assert lines == [] and len(outputs) == 1 and len(outputs[0]) == 2


def test_jupyter_detection_reads_sys_modules_only(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not in_notebook()
    terminal = types.SimpleNamespace()
    kernel = types.SimpleNamespace(kernel=object())
    for shell, expected in ((None, False), (terminal, False), (kernel, True)):
        monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda s=shell: s))
        assert in_notebook() is expected


def test_printer_picks_the_notebook_display_automatically_in_a_kernel(monkeypatch):
    fake = FakeDisplay()
    kernel = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    monkeypatch.setitem(sys.modules, "IPython.display", types.SimpleNamespace(display=fake))
    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), device="cpu")
    model.fit(2, loader(blobs(40), 10), verbose=2)  # the default printer, sink=print
    assert len(fake.outputs) == 1 and len(fake.outputs[0]) == 2
    # a custom sink or notebook=False keeps text even in a kernel
    lines = []
    model.fit(1, loader(blobs(40), 10), verbose=0, callbacks=[ProgressPrinter(2, sink=lines.append)])
    model.fit(1, loader(blobs(40), 10), verbose=0, callbacks=[ProgressPrinter(2, notebook=False)])
    assert len(fake.outputs) == 1 and len(lines) == 1 and "| epoch |" in lines[0]


# ------------------------------------------------------------------ the progress bar in Jupyter
WIDGET_VIEW = run_notebooks.WIDGET_VIEW


def fit_with_widget_bar(epochs=3, stop_at=None):
    """A fit with the Jupyter bar and table, displayed into a fake; returns the outputs and the bar's states."""
    fake = FakeDisplay()
    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), metrics=["accuracy"], device="cpu")
    bar = ProgressBar(notebook=NotebookDisplay(fake))
    seen = []  # (description, value, max, model id) of the live widget at each epoch's end

    def look(epoch, logs):
        label, progress_widget, _ = bar._bar.container.children
        seen.append((label.value, progress_widget.value, progress_widget.max, bar._bar.container.model_id))

    def stop(batch, logs):
        if stop_at == (model.epoch + 1, batch + 1):  # hooks count batches from 0
            model.stop_training = True

    callbacks = [bar, ProgressPrinter(2, notebook=NotebookDisplay(fake)),
                 LambdaCallback(on_epoch_end=look, on_train_batch_end=stop)]
    model.fit(epochs, loader(blobs(100), 10), loader(blobs(40), 10), log_step_freq=5, verbose=0, callbacks=callbacks)
    return fake.outputs, seen, bar


def test_jupyter_bar_is_one_widget_above_the_table_and_is_removed_when_training_ends():
    (bar_output, table_output), seen, bar = fit_with_widget_bar(epochs=3)
    first = bar_output[0]
    assert WIDGET_VIEW in first and first["text/plain"].startswith("Epoch 1/3:   0%")
    # the same widget served every epoch, in place, and was full at each epoch's end
    assert [(label.replace("\u2007", " "), value, top) for label, value, top, _ in seen] == [
        (f"Epoch {e}/3: 100%", 10, 10) for e in (1, 2, 3)]
    assert len({s[3] for s in seen}) == 1 and seen[0][3] == first[WIDGET_VIEW]["model_id"]
    # at the end: no widget, no stale "0%" text, nothing to render; the table stays below
    assert bar_output[-1] == {"text/plain": ""} and bar._bar is None
    assert "torchfit-epochs" in table_output[-1]["text/html"] and len(table_output) == 3


def test_jupyter_bar_of_a_fit_stopped_mid_epoch_stays_where_it_stopped():
    (bar_output, _), _, _ = fit_with_widget_bar(epochs=3, stop_at=(2, 4))
    last = bar_output[-1]
    assert WIDGET_VIEW in last  # the (red) widget stays live
    assert last["text/plain"].startswith("Epoch 2/3:  40%") and "4/10" in last["text/plain"]


def test_fit_in_a_kernel_picks_the_widget_bar(monkeypatch):
    fake = FakeDisplay()
    kernel = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    monkeypatch.setitem(sys.modules, "IPython.display", types.SimpleNamespace(display=fake))
    monkeypatch.setattr(progress, "output_is_interactive", lambda stream=None: True)
    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), device="cpu")
    model.fit(2, loader(blobs(40), 10), loader(blobs(20), 10))  # verbose=1, progress_bar=None
    bar_output, table_output = fake.outputs
    assert WIDGET_VIEW in bar_output[0] and bar_output[-1] == {"text/plain": ""}
    assert len(table_output) == 2 and "<th>val_loss</th>" in table_output[-1]["text/html"]


def test_in_a_kernel_without_ipywidgets_the_step_line_shows_progress(monkeypatch):
    monkeypatch.setattr(progress, "output_is_interactive", lambda stream=None: True)
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    assert progress.wants_bar(None, 1) is True
    monkeypatch.setattr(progress, "widgets_available", lambda: False)
    assert progress.wants_bar(None, 1) is False
    with pytest.raises(ImportError, match="needs ipywidgets: pip install ipywidgets"):
        progress.wants_bar(True, 1)
    monkeypatch.setattr(progress, "in_notebook", lambda: False)  # a terminal needs no widgets
    assert progress.wants_bar(None, 1) is True


# ------------------------------------------------------------------ the runner and the notebooks
def stale_bar_outputs(nb):
    """Outputs a code host would show as a progress bar's text, or as a widget it cannot render."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return [o for o in outputs if WIDGET_VIEW in o.get("data", {})
            or re.search(r"\d+%\|", o.get("text", "") + o.get("data", {}).get("text/plain", ""))]


def test_committed_notebooks_carry_their_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01_quick_start.ipynb", "02_tabular_binary.ipynb",
                                           "03_raw_loop_vs_torchfit.ipynb", "04_torchvision_pipeline.ipynb",
                                           "05_callbacks_tour.ipynb", "06_workflow.ipynb", "07_experiments.ipynb",
                                           "08_inspect.ipynb", "09_huggingface.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in code), f"{path.name}: run `make notebooks`"
        assert not any(o.output_type == "error" for c in code for o in c.outputs), path.name
        assert nb.metadata.kernelspec.name == "python3"
        assert not stale_bar_outputs(nb) and "widgets" not in nb.metadata, f"{path.name}: run `make notebooks`"


def test_runner_keeps_only_the_widget_state_outputs_still_show():
    def model(refs=()):
        return {"state": {"children": [f"IPY_MODEL_{r}" for r in refs]}}

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("w")]
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", {WIDGET_VIEW: {"model_id": "aa"}})]
    state = {"aa": model(["bb"]), "bb": model(["cc"]), "cc": model(), "dd": model(["ee"]), "ee": model()}
    nb.metadata["widgets"] = {run_notebooks.WIDGET_STATE: {"state": dict(state)}}
    run_notebooks.prune_widget_state(nb)
    assert sorted(nb.metadata.widgets[run_notebooks.WIDGET_STATE]["state"]) == ["aa", "bb", "cc"]
    nb.cells[0].outputs = []  # nothing shows a widget any more: no widget metadata at all
    run_notebooks.prune_widget_state(nb)
    assert "widgets" not in nb.metadata


def test_runner_joins_adjacent_prints_and_keeps_their_order_with_other_outputs():
    out = nbformat.v4.new_output
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [out("stream", name="stdout", text="a\n"), out("stream", name="stdout", text="b\n"),
                    out("display_data", {"text/plain": "table"}), out("stream", name="stdout", text="c\n"),
                    out("stream", name="stderr", text="warning\n"), out("stream", name="stdout", text="d\n")]
    nb = nbformat.v4.new_notebook(cells=[cell])
    run_notebooks.merge_adjacent_streams(nb)
    assert [o.get("text", o.get("data")) for o in nb.cells[0].outputs] == [
        "a\nb\n", {"text/plain": "table"}, "c\n", "warning\n", "d\n"]


PROBE = "import sys, torchfit\nprint(sys.executable)\nprint(torchfit.__file__)"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_a_venv_kernel_without_errors(path, tmp_path, capsys):
    # A copy with one probe cell appended, run by the runner as `make notebooks` does:
    # every cell must succeed (a failure names the cell), and the probe shows which
    # interpreter and which torchfit the kernel used.
    nb = nbformat.read(str(path), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    copy = tmp_path / path.name
    nbformat.write(nb, str(copy))
    assert run_notebooks.main([str(copy), "--write"]) == 0, capsys.readouterr().err
    assert f"ok   {path.name}" in capsys.readouterr().out
    done = nbformat.read(str(copy), as_version=4)
    code = [c for c in done.cells if c.cell_type == "code"]
    assert code[-1].outputs[0].text.splitlines() == [sys.executable, os.path.join(ROOT, "torchfit", "__init__.py")]
    outputs = [o for c in code for o in c.outputs]
    # fit rendered for Jupyter: epoch tables are HTML outputs updated in place, never printed text
    tables = [o for o in outputs if 'class="torchfit-epochs"' in o.get("data", {}).get("text/html", "")]
    assert tables and not any("| epoch |" in o.get("text", "") for o in outputs)
    # progress bars were live widgets; the stored notebook keeps neither them nor their text
    assert not stale_bar_outputs(done) and "widgets" not in done.metadata
    # each plotting cell shows its figure exactly once (a live plot too: one display updated in place)
    plotting = sum(any(p in c.source for p in ("plot_history(", "plt.show()", "LivePlot(", "plot=True", "plot_lr_find(",
                                               "plot_confusion_matrix(", "profiler.plot(", "grads.plot(")) for c in code)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == plotting

@pytest.mark.parametrize("doc", ["docs/notebooks.md", "docs/api.md"])
def test_the_python_examples_in_the_docs_run(doc, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", Path(ROOT, doc).read_text(), re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # examples may write files (history.png)
    namespace: dict = {"__name__": "docs_example"}
    for n, block in enumerate(blocks, 1):
        exec(compile(block, f"{doc} block {n}", "exec"), namespace)
