"""Plots of a fit's history: one matplotlib figure, a panel per quantity.

Owns turning a history DataFrame (``model.history`` or ``model.step_history``)
into a figure. It never touches ``matplotlib.pyplot``: the figure is a plain
``matplotlib.figure.Figure`` (so nothing piles up in pyplot's global figure list,
any backend or none works, and a script can ``savefig`` without a display), and
it shows itself inline in Jupyter and IPython through ``_repr_png_``.
matplotlib is an optional dependency (``pip install "torchfit-keras[plot]"``), imported
when a plot is drawn, never at ``import torchfit``.
"""
from __future__ import annotations

import functools
import io
import math
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

import pandas as pd

from .errors import install_hint

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_history"]

# Columns that say where a row is, not what was measured.
_POSITION_COLUMNS = ("epoch", "step", "global_step", "fold")


def _import_matplotlib() -> Any:
    try:
        import matplotlib.figure
    except ImportError as exc:
        raise ImportError(
            "torchfit.plot_history needs matplotlib, which is an optional extra: "
            f"{install_hint('plot')}  (or: pip install matplotlib)"
        ) from exc
    return matplotlib.figure


@functools.lru_cache(maxsize=None)
def _figure_class(figure_module: Any) -> type:
    class HistoryFigure(figure_module.Figure):
        """A ``matplotlib.figure.Figure`` that IPython can show inline without pyplot."""

        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png", bbox_inches="tight")
            return buf.getvalue()

    HistoryFigure.__qualname__ = "HistoryFigure"
    return HistoryFigure


def quantities(history: pd.DataFrame) -> List[str]:
    """The plottable quantities of a history, in panel order: loss, the metrics, lr last.

    ``val_x`` belongs to quantity ``x``; position columns (epoch, step, global_step) and
    non-numeric columns are not quantities.

    >>> quantities(pd.DataFrame({"epoch": [1], "loss": [0.5], "acc": [0.8], "val_loss": [0.6], "lr": [0.1]}))
    ['loss', 'acc', 'lr']
    """
    found: List[str] = []
    for column in history.columns:
        if column in _POSITION_COLUMNS or not pd.api.types.is_numeric_dtype(history[column]):
            continue
        name = column[4:] if column.startswith("val_") else column
        if name not in found:
            found.append(name)
    return sorted(found, key=lambda q: (q != "loss", q == "lr"))


def plot_history(history: Any, metrics: Optional[Sequence[str]] = None, *,
                 fig: Optional["Figure"] = None, columns: int = 3) -> "Figure":
    """One figure with a panel per quantity; training and validation share a panel.

    ``history``: ``model.history`` (x axis: epoch), ``model.step_history`` (x axis:
    optimizer step) or anything ``pandas.DataFrame`` accepts with the same columns. A
    ``fold`` column (``torchfit.cross_validate``'s history) draws each fold as a thin line
    and, over them, their mean with a band of one standard deviation.
    ``metrics``: the quantities to draw, by name without ``val_`` (default: ``loss``,
    then each metric, then ``lr`` when present and not constant). ``fig``: draw into this figure (for
    instance ``plt.figure()`` to use pyplot's windows); by default a new figure.
    ``columns``: panels per row. Returns the figure: ``fig.savefig("history.png")``.

    >>> # fig = torchfit.plot_history(model.history)            # shows inline in Jupyter
    >>> # fig = torchfit.plot_history(history, ["loss", "accuracy"]); fig.savefig("h.png")
    """
    figure_module = _import_matplotlib()
    frame = history if isinstance(history, pd.DataFrame) else pd.DataFrame(history)
    if frame.empty:
        raise ValueError("the history is empty: nothing has been recorded yet; run model.fit(...) first")
    available = quantities(frame)
    if metrics is None:
        # a constant learning rate is one flat line: only a schedule earns a panel
        wanted = [q for q in available if q != "lr" or frame["lr"].nunique(dropna=True) > 1]
    else:
        if isinstance(metrics, str):
            metrics = [metrics]
        wanted = list(metrics)
        unknown = [m for m in wanted if m not in available]
        if unknown:
            raise ValueError(f"plot_history: {unknown} not in the history; it has {available} "
                             "(name quantities without the val_ prefix)")
    if not wanted:
        raise ValueError(f"plot_history: the history has no numeric columns to plot; its columns are {list(frame.columns)}")
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be an int >= 1; got {columns!r}")

    x_name = "global_step" if "global_step" in frame.columns else "epoch" if "epoch" in frame.columns else None
    x = frame[x_name] if x_name is not None else pd.Series(range(1, len(frame) + 1))
    x_label = {"global_step": "optimizer step", "epoch": "epoch", None: "row"}[x_name]
    n_cols = min(columns, len(wanted))
    n_rows = math.ceil(len(wanted) / n_cols)
    if fig is None:
        fig = _figure_class(figure_module)(figsize=(4.2 * n_cols, 3.2 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    folds = "fold" in frame.columns and x_name is not None
    marker = "o" if len(frame) <= 30 and not folds else None  # dots help read a few epochs, clutter long runs
    for ax, name in zip(axes, wanted):
        for n, (column, label, style) in enumerate(((name, "train", "-"), ("val_" + name, "validation", "--"))):
            if column in frame.columns and frame[column].notna().any():
                if folds:
                    _plot_folds(ax, frame, x_name, column, label if name != "lr" else column, style, f"C{n}")
                else:
                    ax.plot(x, frame[column], style, marker=marker, markersize=4,
                            label=label if name != "lr" else column)
        ax.set_title(name)
        ax.set_xlabel(x_label)
        if x_name == "epoch":
            ax.xaxis.get_major_locator().set_params(integer=True)
        if name == "lr":
            lr = frame[name].dropna()
            if len(lr) and lr.min() > 0 and lr.max() / lr.min() > 10:
                ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend()
    for ax in axes[len(wanted):]:
        ax.set_visible(False)
    return fig


def _plot_folds(ax: Any, frame: pd.DataFrame, x_name: str, column: str, label: str, style: str, color: str) -> None:
    """Each fold's curve, thin; their mean, thick, with a band of one standard deviation (ddof 1)."""
    table = frame.pivot_table(index=x_name, columns="fold", values=column, aggfunc="mean")
    for fold in table.columns:
        ax.plot(table.index, table[fold], style, color=color, alpha=0.35, linewidth=0.8)
    mean, std = table.mean(axis=1), table.std(axis=1, ddof=1).fillna(0.0)
    ax.plot(table.index, mean, style, color=color, linewidth=2.0, label=f"{label} (mean of {table.shape[1]} folds)")
    ax.fill_between(table.index, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
