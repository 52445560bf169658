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

BAR = re.compile(r"^={80}\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


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
    assert " +-------+" in out  # the table follows "\n " like torchkeras' print("\n", table)
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
    assert "| epoch |  loss | val_loss |" in table and "0.371" in table


def test_notebook_step_line_shows_step_total_and_eta_or_what_is_known():
    printer = ProgressPrinter()
    printer.on_epoch_begin(2, {})
    printer.set_params({"epochs": 5, "steps": 40})
    logs = {"step": 10, "loss": 2.1, "accuracy": 0.5, "lr": 0.0025}
    # 10 of 40 steps in 30 s: 90 s to go
    assert printer.step_line(10, logs, 30.0) == "Epoch 2/5  step 10/40  [00:30<01:30]  loss=2.100, accuracy=0.500, lr=0.0025"
    printer.set_params({"epochs": 5, "steps": None})  # a loader without len(): no total, no ETA
    assert printer.step_line(10, logs, 3725.0) == "Epoch 2/5  step 10  [1:02:05]  loss=2.100, accuracy=0.500, lr=0.0025"
    assert printer.step_line(10, logs, None) == "Epoch 2/5  step 10  loss=2.100, accuracy=0.500, lr=0.0025"


def test_epoch_table_draws_exactly_what_prettytable_draws():
    # epoch_table lays the table out itself (a tenth of prettytable's time); the text is the same
    import random

    from torchfit import formatting
    from torchfit.callbacks.printing import _pretty_table

    rng = random.Random(0)
    names = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "a", "f1", "a_really_long_metric_name"]
    for _ in range(300):
        keys = rng.sample(names, rng.randint(1, len(names)))
        rows = [{k: (n + 1 if k == "epoch" else rng.choice([rng.random() * 10 ** rng.randint(-8, 10), float("nan"),
                                                            -rng.random(), 0.0])) for k in keys if n == 0 or rng.random() > 0.2}
                for n in range(rng.randint(1, 4))]
        widths = {k: rng.randint(0, 14) for k in keys if rng.random() < 0.5} if rng.random() < 0.6 else None
        columns = formatting.columns_of(rows)
        cells = [[formatting.format_figure(row.get(c), c) for c in columns] for row in rows]
        assert epoch_table(rows, widths) == _pretty_table(columns, cells, widths)
    wide = [{"epoch": 1, "Genauigkeit_ü": 0.5}]  # non-ASCII: measured by prettytable itself
    assert epoch_table(wide) == _pretty_table(["epoch", "Genauigkeit_ü"], [["1", "0.500"]], None)
