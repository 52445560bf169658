"""torchkeras-style printing of a fit: step dicts, per-epoch tables, time bars.

The figures arrive as data (dicts of floats); this module only renders them and
hands the text to ``sink`` (``print`` by default), which tests swap for a list.
"""
from __future__ import annotations

import datetime
import math
from typing import Callable, Dict, Iterable, List, Mapping

from prettytable import PrettyTable

from .base import Callback


def round_figure(value: float, places: int = 3) -> float:
    """Round for display: ``places`` decimals, but keep 3 significant digits for tiny values.

    A loss of 0.00002 should not read as 0.0.

    >>> round_figure(0.97612), round_figure(2.345e-05)
    (0.976, 2.35e-05)
    """
    if not isinstance(value, float) or not math.isfinite(value) or value == 0.0:
        return value
    if abs(value) >= 10 ** -places:
        return round(value, places)
    return float(f"{value:.{places - 1}e}")


def format_step(logs: Mapping[str, float]) -> str:
    """``{'step': 100, 'loss': 0.976, 'accuracy': 0.664}``"""
    return str({k: round_figure(v) for k, v in logs.items()})


def epoch_table(rows: Iterable[Mapping[str, float]]) -> str:
    """A prettytable with one row per epoch dict; columns in the first row's key order."""
    rows = list(rows)
    columns: List[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    table = PrettyTable(columns)
    for row in rows:
        table.add_row([_cell(row.get(c)) for c in columns])
    return table.get_string()


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return round_figure(value)
    return value


def time_bar() -> str:
    return "\n" + "=" * 80 + datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


class ProgressPrinter(Callback):
    """Prints a fit the way torchkeras does.

    verbose=1: start line, time bars, a step dict every ``log_step_freq`` steps
    and an epoch table; verbose=2: only the epoch tables.
    """

    rank_zero_only = True

    def __init__(self, verbose: int = 1, sink: Callable[[str], None] = print):
        self.verbose = verbose
        self.sink = sink

    def on_train_begin(self, logs: dict) -> None:
        if self.verbose == 1:
            self.sink("Start Training ...")
            self.sink(time_bar())

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        if logs and self.verbose == 1:
            self.sink(format_step(logs))

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self.sink("\n " + epoch_table([logs]))
        if self.verbose == 1:
            self.sink(time_bar())

    def on_train_end(self, logs: dict) -> None:
        if self.verbose == 1:
            self.sink("Finished Training...")
