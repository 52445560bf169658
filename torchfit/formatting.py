"""How torchfit writes a figure for a person to read: one formatter for every number it shows.

Owns the text of figures (step dicts, epoch tables in text and HTML, the progress bar,
the figures ``evaluate`` returns). It never changes a stored value: history, logs and
CSV files keep exact floats; only their display goes through ``format_figure``.

The rule:

- losses and metrics: fixed decimals (3, as torchkeras), trailing zeros kept, so that
  figures of consecutive epochs have the same width and read down a column:
  ``2.100``, ``0.805``;
- rates (``lr``, ``lr_*``, ``*_lr``): significant digits, never fixed decimals, since a
  learning rate of 0.0025 printed as ``0.003`` would be a figure that is not true:
  ``0.0025``, ``1e-07``;
- a nonzero figure that 3 decimals would show as ``0.000`` gets 3 significant digits
  (``2.35e-05``); huge ones too (``1.235e+09``);
- counts (``epoch``, ``step``, ints) as integers; nan and inf as ``nan``, ``inf``.

In a table (``Columns``) each column keeps one layout for the whole run: the decimal
point stays in one place and the width is decided before the first row, with room for
the digits the column's kind may need later (a loss that falls to ``4.89e-04``, a rate
of ``9.877e-05``), so a figure that needs more digits gets them without moving the
others. Only a figure the room was not made for (a loss above 9.999, a 3-digit epoch)
widens its column, once.
"""
from __future__ import annotations

import html
import math
import numbers
from typing import Any, Dict, Iterable, List, Mapping, Optional

__all__ = ["format_figure", "is_rate", "Figures", "figure_widths", "ColumnFormat", "Columns", "count_of"]

PLACES = 3
# Keys that count things: shown as integers even when they arrive as floats.
COUNT_KEYS = frozenset({"epoch", "step", "global_step", "batch", "steps"})
# The widest text of a rate with 4 significant digits: 0.0009877, 9.877e-05.
RATE_WIDTH = 9
# Figures that stay between 0 and 1 in practice: their columns make room for 3 decimals only.
BOUNDED = ("accuracy", "acc", "auc", "f1", "precision", "recall", "r2")


def is_rate(key: Optional[str]) -> bool:
    """Whether ``key`` names a learning rate (``lr``, ``lr_0``, ``lr_head``, ``head_lr``,
    ``val_lr``): its figures get significant digits, not fixed decimals.

    >>> is_rate("lr"), is_rate("lr_1"), is_rate("loss"), is_rate("val_lr")
    (True, True, False, True)
    """
    if not key:
        return False
    name = key[4:] if key.startswith("val_") else key
    return name == "lr" or name.startswith("lr_") or name.endswith("_lr")


def format_figure(value: Any, key: Optional[str] = None, places: int = PLACES) -> str:
    """The text of one figure, by the rule in this module's docstring.

    ``key`` (the log key) decides rates and counts; ``places`` the fixed decimals.

    >>> format_figure(2.1), format_figure(0.80512), format_figure(0.0025, "lr")
    ('2.100', '0.805', '0.0025')
    >>> format_figure(1e-7, "lr"), format_figure(2.3456e-05), format_figure(3.0, "epoch")
    ('1e-07', '2.35e-05', '3')
    >>> format_figure(float("nan")), format_figure(-float("inf")), format_figure(None)
    ('nan', '-inf', '')
    """
    if value is None:
        return ""
    kind = type(value)
    if kind is float:  # the common case (every logged figure is one): no ABC checks, ~3x faster
        pass
    elif kind is int:
        return str(value)
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        item = getattr(value, "item", None)  # a 0-d tensor or numpy scalar handed in by a user
        if callable(item) and getattr(value, "ndim", 1) == 0 and not isinstance(value, bool):
            return format_figure(item(), key, places)
        return str(value)
    elif isinstance(value, numbers.Integral):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0.0:
        value = 0.0  # -0.0 (a negated zero loss term) reads as 0.000, not -0.000
    if key in COUNT_KEYS and value.is_integer():
        return str(int(value))
    if is_rate(key):
        return f"{value:.4g}"  # 4 digits: a schedule's 0.0009877 is not worth less than its 0.001
    if value != 0.0 and (abs(value) < 0.5 * 10 ** -places or abs(value) >= 1e9):
        # 3 decimals would print 0.000 for a nonzero figure (or a wall of digits): significant digits instead
        return f"{value:.{places - 1}e}"
    return f"{value:.{places}f}"


def format_step(logs: Mapping[str, Any]) -> str:
    """A torchkeras step dict with each figure formatted (still a valid Python literal).

    >>> format_step({"step": 10, "loss": 2.1, "accuracy": 0.8})
    "{'step': 10, 'loss': 2.100, 'accuracy': 0.800}"
    """
    return "{" + ", ".join(f"{k!r}: {format_figure(v, k)}" for k, v in logs.items()) + "}"


def figure_widths(rows: Iterable[Mapping[str, Any]], widths: Optional[Dict[str, int]] = None) -> Dict[str, int]:
    """Column widths (header or widest figure) over ``rows``, never narrower than ``widths``.

    A printer keeps the result between epochs so that each new table is at least as wide,
    column by column, as the ones before it: the columns line up down the screen.

    >>> figure_widths([{"epoch": 1, "loss": 12.5}], {"loss": 7}) == {"loss": 7, "epoch": 5}
    True
    """
    out = dict(widths or {})
    for row in rows:
        for key, value in row.items():
            # a schedule moves a rate across orders of magnitude: its column gets the widest 4 digits at once
            least = RATE_WIDTH if is_rate(key) else 0
            out[key] = max(out.get(key, 0), least, len(str(key)), len(format_figure(value, key)))
    return out


class Figures(dict):
    """A plain ``dict`` of exact floats that displays its figures formatted.

    ``evaluate()`` returns one: ``figures["val_loss"]`` is the exact float and the dict
    compares equal to a plain dict (``dict(figures)`` is one, e.g. for ``torch.save``); only its display (``repr``, IPython's
    pretty printer, Jupyter's HTML) goes through ``format_figure``.

    >>> f = Figures({"val_loss": 0.31234567, "val_accuracy": 0.9})
    >>> f
    {'val_loss': 0.312, 'val_accuracy': 0.900}
    >>> f == {"val_loss": 0.31234567, "val_accuracy": 0.9}, f["val_loss"]
    (True, 0.31234567)
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return format_step(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("{...}" if cycle else repr(self))

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(str(k))}</th>" for k in self)
        cells = "".join(f"<td>{html.escape(format_figure(v, k))}</td>" for k, v in self.items())
        return f'<table class="torchfit-figures"><thead><tr>{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table>'

    def __reduce__(self) -> Any:
        # A plain pickle of the class and the items, loadable wherever torchfit is importable.
        # torch.load(weights_only=True) refuses every class outside torch's allow-list: save
        # dict(figures) to a file that must load that way.
        return (Figures, (dict(self),))


def columns_of(rows: List[Mapping[str, Any]]) -> List[str]:
    """All keys of ``rows``, in first-seen order."""
    columns: List[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return columns


def count_of(n: int, noun: str, plural: Optional[str] = None) -> str:
    """``n`` and the noun, singular for one: what an error says about a count.

    >>> count_of(1, "class", "classes"), count_of(3, "class", "classes"), count_of(2, "column")
    ('1 class', '3 classes', '2 columns')
    """
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def is_bounded(key: Optional[str]) -> bool:
    """Whether ``key`` names a figure between 0 and 1 (accuracy, AUC, F1...), which never needs
    more than 3 decimals in practice (``val_accuracy``, ``digit_accuracy`` count too)."""
    name = (key or "").lower()
    return any(name == b or name.endswith("_" + b) for b in BOUNDED)


def _split(text: str) -> tuple:
    """``("12", ".500")``: the text before its decimal point (or exponent) and the rest."""
    for mark in (".", "e"):
        at = text.find(mark)
        if at > 0:
            return text[:at], text[at:]
    return text, ""


class ColumnFormat:
    """One column of a table, laid out the same way for a whole run.

    The figure's text is ``format_figure``'s; the column places it so that the decimal
    points (or, for ``1e-07``, the exponents) line up, and pads every figure to one
    width. The width is decided before the first figure, from the column's kind:

    - losses and other unbounded figures make room for ``4.89e-04`` (3 significant
      digits of a figure below 0.0005), so a loss falling from 2 to 1e-5 never moves;
    - figures between 0 and 1 (accuracy, AUC, F1...) for 3 decimals;
    - rates for 4 significant digits (``0.0009877``, ``9.877e-05``);
    - counts for their digits.

    >>> col = ColumnFormat("loss")
    >>> [col.text(v) for v in (2.1, 0.000489, 1e-05)]
    ['2.100   ', '4.89e-04', '1.00e-05']
    >>> col.width, ColumnFormat("accuracy").text(0.5), ColumnFormat("lr").text(1e-07)
    (8, ' 0.500  ', '1e-07    ')
    """

    def __init__(self, key: str, places: int = PLACES):
        self.key = key
        self.places = places
        self.head = 1  # characters before the decimal point
        if key in COUNT_KEYS:
            self.tail = 0
        elif is_rate(key):
            self.tail = RATE_WIDTH - 1  # ".0009877", ".877e-05"
        elif is_bounded(key):
            self.tail = 1 + places  # ".805"
        else:
            self.tail = places + 4  # "4.89e-04": ".89e-04" after the "4"
        self.width = max(len(str(key)), self.head + self.tail)

    def observe(self, value: Any) -> None:
        """Make room for ``value`` (a figure wider than planned widens the column, once)."""
        self._observe_text(format_figure(value, self.key, self.places))

    def _observe_text(self, text: str) -> None:
        if text in ("nan", "inf", "-inf", "") or not _split(text)[0].lstrip("-").isdigit():
            self.width = max(self.width, len(text))
            return
        head, tail = _split(text)
        self.head, self.tail = max(self.head, len(head)), max(self.tail, len(tail))
        self.width = max(self.width, self.head + self.tail)

    def text(self, value: Any) -> str:
        """``value``'s text padded to the column's width, its decimal point in the column's place."""
        text = format_figure(value, self.key, self.places)  # formatted once, observed and laid out
        self._observe_text(text)
        head, tail = _split(text)
        if not head.lstrip("-").isdigit():  # nan, inf, a string: centred
            return text.center(self.width)
        body = head.rjust(self.head) + tail.ljust(self.tail)
        return body.center(self.width)  # under a wider header, as prettytable centres it


class Columns:
    """The columns of a run's epoch tables, in first-seen order, each a ``ColumnFormat``.

    A printer keeps one ``Columns`` for a whole fit: every epoch's table is laid out
    by it, so the tables line up down the screen.

    >>> cols = Columns()
    >>> cols.cells({"epoch": 1, "loss": 2.0}), cols.cells({"epoch": 2, "loss": 0.0004})
    (['  1  ', '2.000   '], ['  2  ', '4.00e-04'])
    """

    def __init__(self) -> None:
        self.formats: Dict[str, ColumnFormat] = {}

    def add(self, key: str) -> None:
        """Plan a column before its first figure (a printer knows a run's keys when it begins)."""
        self.formats.setdefault(key, ColumnFormat(key))

    def observe(self, row: Mapping[str, Any]) -> None:
        for key, value in row.items():
            column = self.formats.get(key)
            if column is None:  # not setdefault: it would build a ColumnFormat per figure to throw away
                column = self.formats[key] = ColumnFormat(key)
            column.observe(value)

    @property
    def names(self) -> List[str]:
        return list(self.formats)

    def widths(self) -> Dict[str, int]:
        return {key: f.width for key, f in self.formats.items()}

    def cells(self, row: Mapping[str, Any], columns: Optional[List[str]] = None) -> List[str]:
        self.observe(row)
        columns = self.names if columns is None else columns
        return [self.formats[c].text(row[c]) if c in row else " " * self.formats[c].width for c in columns]
