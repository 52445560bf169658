"""What fit prints: torchkeras-style step dicts, epoch tables, bars; verbose levels."""
from __future__ import annotations

import ast
import re

import pytest
from torch import nn

import torchfit
from torchfit.callbacks import ProgressPrinter
from torchfit.callbacks.printing import epoch_table, format_step, round_figure
from conftest import blobs, loader, mlp

BAR = re.compile(r"^={10,}\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")  # as wide as the output (99 at most, as torchkeras)


def fit_output(capsys, verbose, epochs=2, **kw):
    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), metrics=["accuracy"], device="cpu")
    model.fit(epochs, loader(blobs(100), 10), loader(blobs(40), 10), verbose=verbose, **kw)
    return capsys.readouterr().out


def test_verbose_1_prints_like_torchkeras(capsys):
    out = fit_output(capsys, 1, log_step_freq=5)
    lines = out.splitlines()
    assert lines[0] == "Start Training ..."
    assert BAR.match(lines[2])
    steps = [ast.literal_eval(line) for line in lines if line.startswith("{'step'")]
    assert [s["step"] for s in steps] == [5, 10, 5, 10]  # steps count within each epoch
    assert all(list(s) == ["step", "loss", "accuracy"] for s in steps)
    assert all(len(repr(s["loss"]).split(".")[1]) <= 3 for s in steps)  # rounded to 3 places
    header = [line for line in lines if line.startswith("| epoch")]
    assert len(header) == 2
    assert [c.strip() for c in header[0].strip("|").split("|")] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    # every border starts in the first column (torchkeras' print("\n", table) indents the top one)
    borders = [line for line in lines if "+-------+" in line]
    assert len(borders) == 6 and all(line.startswith("+-------+") for line in borders)
    assert sum(bool(BAR.match(line)) for line in lines) == 3
    assert lines[-1] == "Finished Training..."


def test_default_log_step_freq_gives_about_ten_lines_per_epoch(capsys):
    out = fit_output(capsys, 1, epochs=1)
    assert sum(line.startswith("{'step'") for line in out.splitlines()) == 10


def test_verbose_2_prints_only_tables(capsys):
    out = fit_output(capsys, 2)
    assert "{'step'" not in out and "Start Training" not in out and "=====" not in out
    assert out.count("| epoch |") == 2


def test_verbose_0_prints_nothing(capsys):
    assert fit_output(capsys, 0) == ""


def test_printer_sink_receives_the_text():
    lines = []
    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), device="cpu")
    model.fit(1, loader(blobs(40), 10), verbose=0, callbacks=[ProgressPrinter(verbose=2, sink=lines.append)])
    assert len(lines) == 1 and "| epoch |" in lines[0]


def test_figures_rendering():
    # fixed decimals, trailing zeros kept: still a Python literal, as torchkeras' dicts are
    assert format_step({"step": 3, "loss": 0.97612, "acc": 1.0}) == "{'step': 3, 'loss': 0.976, 'acc': 1.000}"
    assert ast.literal_eval(format_step({"step": 3, "loss": 2.1})) == {"step": 3, "loss": 2.1}
    assert round_figure(0.000023456) == pytest.approx(2.35e-05)  # the old helper keeps working for callers
    table = epoch_table([{"epoch": 1, "loss": 0.37123, "val_loss": 0.08}])
    assert "| epoch |   loss   | val_loss |" in table and "| 0.371    | 0.080    |" in table


def test_notebook_step_line_shows_step_total_and_eta_or_what_is_known():
    printer = ProgressPrinter()
    printer.on_epoch_begin(1, {})  # Keras' 0-based epoch: the second
    printer.set_params({"epochs": 5, "steps": 40})
    logs = {"step": 10, "loss": 2.1, "accuracy": 0.5, "lr": 0.0025}
    # 10 of 40 steps in 30 s: 90 s to go
    assert printer.step_line(10, logs, 30.0) == "Epoch 2/5  step 10/40  [00:30<01:30]  loss=2.100, accuracy=0.500, lr=0.0025"
    printer.set_params({"epochs": 5, "steps": None})  # a loader without len(): no total, no ETA
    assert printer.step_line(10, logs, 3725.0) == "Epoch 2/5  step 10  [1:02:05]  loss=2.100, accuracy=0.500, lr=0.0025"
    assert printer.step_line(10, logs, None) == "Epoch 2/5  step 10  loss=2.100, accuracy=0.500, lr=0.0025"


def test_an_epoch_without_validation_keeps_the_columns_of_the_others(capsys):
    # validation_freq=2: epoch 1 has no val_ figures; its table still has their (blank) columns
    fit_output(capsys, 2, epochs=2, validation_freq=2)
    out = fit_output(capsys, 2, epochs=3, validation_freq=2)
    tables = [t for t in out.split("\n\n") if "| epoch |" in t]
    assert len(tables) == 3
    borders = {t.strip().splitlines()[0] for t in tables}
    heads = {t.strip().splitlines()[1] for t in tables}
    assert len(borders) == 1 and len(heads) == 1 and "val_accuracy" in heads.pop()
    row1 = tables[0].strip().splitlines()[3]
    assert row1.split("|")[4].strip() == "" and row1.split("|")[2].strip()  # no val_loss, a loss
