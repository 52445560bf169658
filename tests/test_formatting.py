"""One formatter for every figure shown: fixed decimals, significant digits for rates, exact values stored."""
from __future__ import annotations

import ast
import copy
import pickle
import re

import numpy as np
import pytest
import torch
from torch import nn

import torchfit
from torchfit.callbacks import LearningRateScheduler, ProgressPrinter
from torchfit.callbacks.printing import epoch_table, epoch_table_html
from torchfit.formatting import ColumnFormat, Figures, figure_widths, format_figure, format_step, is_rate
from conftest import blobs, loader, mlp


@pytest.mark.parametrize("value, key, text", [
    (2.1, "loss", "2.100"),              # trailing zeros kept: columns keep their width
    (0.8, "accuracy", "0.800"),
    (0.80549, None, "0.805"),
    (0.0, "loss", "0.000"),
    (-0.0, "loss", "0.000"),
    (1.0, "auc", "1.000"),
    (-0.25, "r2", "-0.250"),
    (12.3456, "loss", "12.346"),
    (0.0004, "loss", "4.00e-04"),        # 3 decimals would print 0.000 for a nonzero figure
    (-2.3456e-05, "loss", "-2.35e-05"),
    (0.0005, "loss", "0.001"),           # the last value 3 decimals still show truthfully
    (3.2e12, "loss", "3.20e+12"),
    (0.0025, "lr", "0.0025"),            # a rate is never rounded to 0.003
    (1e-7, "lr", "1e-07"),
    (3e-4, "lr_0", "0.0003"),
    (0.000987654, "lr_head", "0.0009877"),
    (0.1, "val_lr", "0.1"),
    (3, "epoch", "3"),
    (3.0, "epoch", "3"),                 # a count that arrived as a float
    (120, "step", "120"),
    (7, "loss", "7"),                    # an int figure stays an int
    (float("nan"), "loss", "nan"),
    (float("inf"), "loss", "inf"),
    (float("-inf"), "lr", "-inf"),
    (None, "loss", ""),
    (True, "flag", "True"),
    ("sgd", "optimizer", "sgd"),
    (np.float32(0.5), "loss", "0.500"),
    (torch.tensor(0.25), "loss", "0.250"),
])
def test_format_figure_on_edge_values(value, key, text):
    assert format_figure(value, key) == text


def test_no_figure_is_rounded_into_a_wrong_value():
    rng = np.random.default_rng(0)
    values = np.concatenate([10.0 ** rng.uniform(-9, 3, 500), -(10.0 ** rng.uniform(-9, 3, 500))])
    for v in values.tolist():
        text = format_figure(v, "loss")
        assert float(text) != 0.0 and np.sign(float(text)) == np.sign(v)
        assert abs(float(text) - v) <= 0.0005 + 0.005 * abs(v)  # 3 decimals or 3 significant digits
        rate = format_figure(abs(v), "lr")
        assert abs(float(rate) - abs(v)) <= 5e-4 * abs(v)  # 4 significant digits, whatever the size


def test_rate_keys():
    assert [is_rate(k) for k in ("lr", "lr_0", "lr_head", "head_lr", "val_lr", "loss", "lrx", "clr_loss", None)] == [
        True, True, True, True, True, False, False, False, False]


def test_step_dict_stays_a_python_literal_with_exact_figures_underneath():
    logs = {"step": 20, "loss": 2.1, "accuracy": 0.80549, "lr": 0.0025}
    text = format_step(logs)
    assert text == "{'step': 20, 'loss': 2.100, 'accuracy': 0.805, 'lr': 0.0025}"
    assert ast.literal_eval(text) == {"step": 20, "loss": 2.1, "accuracy": 0.805, "lr": 0.0025}
    assert logs["accuracy"] == 0.80549  # formatting never touches the data


def test_tables_in_text_and_html_use_the_formatter():
    rows = [{"epoch": 1, "loss": 2.1, "lr": 0.0025}]
    text = epoch_table(rows)
    assert "| 2.100    |" in text and "| 0.0025    |" in text and "0.003" not in text
    html = epoch_table_html(rows)
    assert "<td>2.100   </td>" in html and "<td>0.0025   </td>" in html and "<td>  1  </td>" in html


def test_figure_widths_only_grow():
    widths = figure_widths([{"epoch": 1, "loss": 12.5}])
    assert widths == {"epoch": 5, "loss": 6}
    assert figure_widths([{"epoch": 2, "loss": 0.5}], widths) == {"epoch": 5, "loss": 6}


def column_widths(table: str):
    border = table.strip().splitlines()[0]
    assert re.fullmatch(r"\+(-+\+)+", border), border
    return [len(cell) for cell in border.strip("+").split("+")]


def test_consecutive_epoch_tables_line_up_column_by_column():
    # a loss that falls below 10 and an lr schedule over orders of magnitude: the widths would change
    lines = []
    printer = ProgressPrinter(2, sink=lines.append)
    rows = [{"epoch": 1, "loss": 12.25, "accuracy": 0.5, "lr": 0.1},
            {"epoch": 2, "loss": 2.1, "accuracy": 0.75, "lr": 0.0025},
            {"epoch": 3, "loss": 0.5, "accuracy": 1.0, "lr": 1e-7},
            {"epoch": 10, "loss": 0.25, "accuracy": 0.875, "lr": 0.01}]
    printer.on_train_begin({})
    for row in rows:
        printer.on_epoch_end(row["epoch"], row)
    widths = [column_widths(table) for table in lines]
    assert len(widths) == 4 and all(w == widths[0] for w in widths), widths
    # and each figure's column starts where the header's does
    bodies = [table.strip().splitlines()[3] for table in lines]
    assert len({tuple(m.start() for m in re.finditer(r"\|", body)) for body in bodies}) == 1


def test_consecutive_tables_of_a_real_fit_line_up_and_show_the_lr_truthfully(capsys):
    net = mlp()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.01),
                                        metrics=["accuracy"], device="cpu")
    schedule = LearningRateScheduler(torch.optim.lr_scheduler.ExponentialLR(model.optimizer, gamma=0.25))
    model.fit(3, loader(blobs(60), 20), loader(blobs(20), 20), verbose=2, callbacks=[schedule])
    out = capsys.readouterr().out
    tables = re.findall(r"(\+[-+]+\+\n\|.*?\n\+[-+]+\+\n\|.*?\n\+[-+]+\+)", out)
    assert len(tables) == 3
    assert len({tuple(column_widths(t)) for t in tables}) == 1
    lr = model.history["lr"].tolist()
    for table, rate in zip(tables, lr):
        assert f" {format_figure(rate, 'lr')} " in table
    assert any(format_figure(r, "lr") != f"{r:.3f}" for r in lr)  # the schedule made a rate 3 decimals would hide


def test_figures_display_formatted_but_hold_exact_floats():
    exact = {"val_loss": 0.31234567891, "val_accuracy": 0.9, "val_lr": 0.0025}
    figures = Figures(exact)
    assert figures == exact and isinstance(figures, dict)
    assert figures["val_loss"] == 0.31234567891
    assert repr(figures) == "{'val_loss': 0.312, 'val_accuracy': 0.900, 'val_lr': 0.0025}" == str(figures)
    html = figures._repr_html_()
    assert "<td>0.312</td>" in html and "<th>val_accuracy</th>" in html and "0.31234" not in html
    again = pickle.loads(pickle.dumps(figures))
    assert type(again) is Figures and again == exact and again["val_loss"] == 0.31234567891
    assert copy.deepcopy(figures) == exact and dict(figures) == exact

    class Printer:  # IPython's pretty printer protocol
        def __init__(self):
            self.out = ""

        def text(self, s):
            self.out += s

    p = Printer()
    figures._repr_pretty_(p, False)
    assert p.out == repr(figures)


def test_figures_wraps_what_evaluate_returns():
    model = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), metrics=["accuracy"], device="cpu")
    result = model.evaluate(loader(blobs(40), 10))
    figures = Figures(result)
    assert figures == result
    assert re.fullmatch(r"\{'val_loss': \d+\.\d{3}, 'val_accuracy': \d\.\d{3}\}", repr(figures)), repr(figures)


def run_tables(width, epochs=30):
    """A printer's tables over a run whose loss falls from 2 to 1e-5, with 6 metrics and an lr column."""
    lines = []
    printer = ProgressPrinter(2, sink=lines.append, width=width)
    printer.on_train_begin({})
    for e in range(1, epochs + 1):
        loss = 2 * (5e-6) ** ((e - 1) / (epochs - 1))
        row = {"epoch": e, "loss": loss, "accuracy": 0.5 + e / 70, "auc": 0.7, "f1": 0.4 + e / 80,
               "precision": 0.6, "recall": 1.0, "mse": loss / 3, "val_loss": loss * 1.1, "val_accuracy": 0.5,
               "val_auc": 0.71, "val_f1": 0.4, "val_precision": 0.6, "val_recall": 0.61, "val_mse": loss * 40,
               "lr": 0.01 * 0.6 ** e}
        printer.on_epoch_end(e, row)
    return lines


@pytest.mark.parametrize("width", [60, 80, 120])
def test_tables_fit_the_width_and_keep_one_layout_for_the_run(width):
    outputs = run_tables(width)
    assert len(outputs) == 30
    per_epoch = [out.strip("\n").splitlines() for out in outputs]
    assert all(len(line) <= width for lines in per_epoch for line in lines)
    assert all(len(lines) == len(per_epoch[0]) for lines in per_epoch)  # the same tables every epoch
    # every line but the figure rows is the same in every epoch; each row keeps its bars in place
    for i, line in enumerate(per_epoch[0]):
        column = [lines[i] for lines in per_epoch]
        if line.startswith("+") or line.startswith("| epoch"):
            assert len(set(column)) == 1, column
        else:
            assert len({tuple(m.start() for m in re.finditer(r"\|", row)) for row in column}) == 1, column
    names = {c.strip() for lines in per_epoch[:1] for line in lines if line.startswith("| epoch")
             for c in line.strip("|").split("|")}
    assert len(names) == 16  # epoch, loss, 6 metrics, val_loss, 6 val_ metrics, lr: none left out
    tables = sum(line.startswith("| epoch") for line in per_epoch[0])
    assert tables == {60: 4, 80: 3, 120: 2}[width]


def test_a_column_keeps_its_decimal_point_as_the_loss_falls():
    outputs = run_tables(80)
    rows = [line for out in outputs for line in out.splitlines() if re.match(r"\|\s+\d+\s+\|", line)
            and line.count("|") == 9]  # the first table's rows: epoch, loss and 6 metrics
    losses = [row.split("|")[2] for row in rows]
    assert losses[0] == " 2.000    " and losses[-1] == " 1.00e-05 "
    assert len({cell.index(".") for cell in losses}) == 1 and len({len(c) for c in losses}) == 1


def test_a_figure_wider_than_planned_widens_its_column_once():
    col = ColumnFormat("loss")
    assert col.text(2.5) == "2.500   "
    assert col.text(12.25) == "12.250   " and col.width == 9  # two digits before the point: one more column
    assert col.text(0.5) == " 0.500   "  # and the points stay aligned afterwards
    assert ColumnFormat("val_accuracy").width == len("val_accuracy")
    assert ColumnFormat("epoch").text(7) == "  7  "
    assert ColumnFormat("loss").text(float("nan")).strip() == "nan"


def test_the_printer_width_is_checked_and_a_sink_of_ones_own_gets_80_columns(monkeypatch):
    with pytest.raises(ValueError, match=r"ProgressPrinter\(width=...\) is the line width in characters"):
        ProgressPrinter(width=5)
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: stdout's tables may use it, a sink's do not
    lines = run_tables(None, epochs=2)
    assert max(len(line) for out in lines for line in out.splitlines()) <= 80
