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
from torchfit.callbacks import ProgressPrinter
from torchfit.callbacks.printing import NotebookDisplay, epoch_table, in_notebook
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
    assert len(step) == 6  # 2 logging points x 3 epochs, shown once then updated in place
    assert step[-1]["text/plain"].startswith("epoch 3 {'step': 10, 'loss': ")
    assert len(table) == 3
    rows = model.history.to_dict("records")
    for n, bundle in enumerate(table, 1):  # after epoch n the table holds epochs 1..n
        assert bundle["text/plain"] == epoch_table(rows[:n])
        assert bundle["text/html"].count("<tr>") == n + 1
    assert "<th>val_accuracy</th>" in table[-1]["text/html"]
    assert f"<td>{round(rows[-1]['loss'], 3)}</td>" in table[-1]["text/html"]


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


# ------------------------------------------------------------------ the runner and the notebooks
def test_committed_notebooks_carry_their_outputs():
    assert [p.name for p in NOTEBOOKS][:4] == ["01_quick_start.ipynb", "02_tabular_binary.ipynb",
                                               "03_raw_loop_vs_torchfit.ipynb", "04_torchvision_pipeline.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in code), f"{path.name}: run `make notebooks`"
        assert not any(o.output_type == "error" for c in code for o in c.outputs), path.name
        assert nb.metadata.kernelspec.name == "python3"


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
    # each plotting cell shows its figure exactly once
    plotting = sum("plot_history(" in c.source or "plt.show()" in c.source for c in code)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == plotting

@pytest.mark.parametrize("doc", ["docs/notebooks.md", "docs/api.md"])
def test_the_python_examples_in_the_docs_run(doc, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", Path(ROOT, doc).read_text(), re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # examples may write files (history.png)
    namespace: dict = {"__name__": "docs_example"}
    for n, block in enumerate(blocks, 1):
        exec(compile(block, f"{doc} block {n}", "exec"), namespace)
