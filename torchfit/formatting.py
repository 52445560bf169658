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
"""
from __future__ import annotations

import html
import math
import numbers
from typing import Any, Dict, Iterable, List, Mapping, Optional

__all__ = ["format_figure", "is_rate", "Figures", "figure_widths"]

PLACES = 3
# Keys that count things: shown as integers even when they arrive as floats.
COUNT_KEYS = frozenset({"epoch", "step", "global_step", "batch", "steps"})
# The widest text of a rate with 4 significant digits: 0.0009877, 9.877e-05.
RATE_WIDTH = 9


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
