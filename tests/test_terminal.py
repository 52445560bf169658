"""What a terminal shows: a real fit in a child process on a pseudo-terminal, rendered by pyte.

The child's stdout is a pty of 80 (or 120) columns; its bytes go through pyte's screen, and
the tests read the screen lines as a person would see them: the bar keeps a bar, every figure
on it is whole and equals the epoch table's, and an interrupt leaves its message on a line of
its own below a closed bar.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

pyte = pytest.importorskip("pyte")
if sys.platform == "win32":  # pragma: no cover
    pytest.skip("needs POSIX pseudo-terminals", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from torch import nn
    import torchfit
    from torchfit.callbacks import LambdaCallback
    from conftest import binary, loader, mlp

    torch.manual_seed(0)
    model = torchfit.Model(mlp(6, 1)).compile(nn.BCEWithLogitsLoss(), metrics=["accuracy", "auc"], device="cpu")
    stop_at = {stop_at!r}

    def stop(batch, logs):
        if stop_at == (model.epoch + 1, batch):
            raise KeyboardInterrupt

    model.fit(2, loader(binary(240), 20), loader(binary(60, seed=1), 20), log_step_freq=4,
              progress_bar=True, callbacks=[LambdaCallback(on_train_batch_end=stop)])
    print("DONE", flush=True)
""")


def run_on_pty(columns: int, stop_at=None, rows: int = 24) -> list:
    """Run the child fit on a ``columns`` x ``rows`` pty; return the screen's lines (a tall screen: no scrolling)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONIOENCODING": "utf-8", "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "COLUMNS": str(columns), "LINES": str(rows)}
    code = CHILD.format(tests=os.path.join(ROOT, "tests"), stop_at=stop_at)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave,
                             env=env, cwd=ROOT, close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        child.wait(timeout=120)
    screen = pyte.Screen(columns, 400)  # as wide as the terminal, tall enough that nothing scrolls away
    stream = pyte.ByteStream(screen)
    stream.feed(b"".join(chunks).replace(b"\n", b"\r\n"))  # the pty's onlcr, which pyte does not apply
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


BAR_LINE = re.compile(r"^Epoch (\d)/2: +(\d+)%\|(.*)\| (\d+)/(\d+) \[([^\]]*)\]$")
FIGURE = re.compile(r"(\w+)=(\S+)")


def bars(lines):
    return [(line, BAR_LINE.match(line)) for line in lines if line.startswith("Epoch ")]


def table_figures(lines, epoch):
    """{column: text} of the epoch table row for ``epoch``."""
    header = next(line for line in lines if line.startswith("| epoch"))
    names = [c.strip() for c in header.strip("|").split("|")]
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.strip().startswith("|") and cells[0] == str(epoch):
            return dict(zip(names, cells))
    raise AssertionError(f"no table row for epoch {epoch}:\n" + "\n".join(lines))


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 120])
def test_the_bar_fits_the_terminal_and_never_cuts_a_figure(columns):
    lines = run_on_pty(columns)
    screen = "\n".join(lines)
    assert lines[-1] == "DONE", screen
    found = bars(lines)
    assert [m is not None for _, m in found] == [True, True], screen  # one closed bar per epoch, whole
    for line, match in found:
        epoch, percent, bar, n, total, inside = match.groups()
        assert len(line) <= columns
        assert (percent, n, total) == ("100", "12", "12")
        assert len(bar) >= 10, line  # the bar never collapses to one character
        times, *figures = inside.split(", ")
        assert re.fullmatch(r"\d\d:\d\d<\d\d:\d\d", times), line
        shown = dict(FIGURE.fullmatch(f).groups() for f in figures if "=" in f)
        assert list(shown) == ["loss", "accuracy", "auc"][:len(shown)], line  # dropped from the end, whole
        assert len(shown) >= 2, line
        row = table_figures(lines, int(epoch))
        for name, text in shown.items():
            assert re.fullmatch(r"-?\d+\.\d{3}", text), f"{name}={text} cut or unformatted in {line!r}"
            assert text == row[name], f"bar {name}={text}, table {row[name]}"
    if columns == 120:  # room for all: every figure, and the rate
        assert all(len(FIGURE.findall(line)) == 3 and "step/s" in line for line, _ in found), screen


def fit_calls_on_exception() -> bool:
    """Whether this fit calls the ``on_exception`` hook (wired by the lead; see tests below)."""
    import torch
    from torch import nn

    import torchfit
    from torchfit.callbacks import Callback
    from conftest import blobs, loader, mlp

    class Probe(Callback):
        called = False

        def on_train_batch_end(self, batch, logs):
            raise KeyboardInterrupt

        def on_exception(self, exc):
            Probe.called = isinstance(exc, KeyboardInterrupt)

    torch.manual_seed(0)
    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), device="cpu")
    model.fit(1, loader(blobs(20), 10), verbose=0, callbacks=[Probe()])
    return Probe.called


@pytest.mark.slow
def test_ctrl_c_leaves_a_closed_bar_and_its_message_on_a_line_of_its_own():
    if not fit_calls_on_exception():
        pytest.xfail("fit does not call Callback.on_exception yet: the bar is closed only after the message")
    lines = run_on_pty(80, stop_at=(2, 5))
    screen = "\n".join(lines)
    interrupted = [i for i, line in enumerate(lines) if "Training interrupted" in line]
    assert len(interrupted) == 1, screen
    i = interrupted[0]
    assert lines[i].startswith("Training interrupted (KeyboardInterrupt) in epoch 2"), screen
    match = BAR_LINE.match(lines[i - 1])  # the bar just above, closed where it stopped: 5 of 12
    assert match and match.group(1) == "2" and match.group(4) == "5", screen
    assert not any(line.startswith("Epoch 2/2") for line in lines[i + 1:]), screen  # not redrawn below
    assert lines[-1] == "DONE"


# ------------------------------------------------------------------ the hook itself, no pty needed
def test_on_exception_closes_the_text_bar_on_a_line_of_its_own():
    import io

    from torchfit.callbacks import Callback, ProgressBar

    assert "on_exception" in __import__("torchfit.callbacks", fromlist=["HOOKS"]).HOOKS
    assert Callback().on_exception(KeyboardInterrupt()) is None  # the base class: a no-op
    out = io.StringIO()
    bar = ProgressBar(file=out, mininterval=0.0)
    bar.set_params({"epochs": 3, "steps": 10})
    bar.on_train_begin({})
    bar.on_epoch_begin(1, {})  # hooks count from 0 (Keras): the second epoch
    for step in range(1, 5):
        bar.on_train_batch_end(step - 1, {"step": step, "loss": 0.5} if step == 4 else {})
    bar.on_exception(KeyboardInterrupt())
    text = out.getvalue()
    assert bar._bar is None and text.endswith("\n")  # closed, the cursor on a fresh line
    last = text.rstrip("\n").split("\r")[-1]
    assert last.startswith("Epoch 2/3:  40%") and "4/10" in last and "loss=0.500" in last
    bar.on_train_end({})  # fit's later on_train_end draws nothing more
    assert out.getvalue() == text


def test_on_exception_leaves_the_jupyter_widget_where_it_stopped():
    import types

    from torchfit.callbacks import ProgressBar
    from torchfit.callbacks.printing import NotebookDisplay

    outputs = []

    def display(bundle, raw, display_id):
        history = [bundle]
        outputs.append(history)
        return types.SimpleNamespace(update=lambda b, raw: history.append(b))

    bar = ProgressBar(notebook=NotebookDisplay(display))
    bar.set_params({"epochs": 2, "steps": 10})
    bar.on_train_begin({})
    bar.on_epoch_begin(0, {})
    for step in range(1, 4):
        bar.on_train_batch_end(step - 1, {})
    bar.on_exception(RuntimeError("boom"))
    assert bar._bar is None and len(outputs) == 1
    assert outputs[0][-1]["text/plain"].startswith("Epoch 1/2:  30%")  # not 0%, not a live bar left open
