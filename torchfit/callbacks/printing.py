"""torchkeras-style printing of a fit: step dicts, per-epoch tables, time bars.

The figures arrive as data (dicts of floats); this module only renders them and
hands the text to ``sink`` (``print`` by default), which tests swap for a list.
In a Jupyter kernel the same data renders as two outputs updated in place (the
latest step line and one table growing by a row per epoch), see ``NotebookDisplay``.
The text of each figure is ``torchfit.formatting``'s (3 fixed decimals, significant
digits for rates); this module lays the figures out.
"""
from __future__ import annotations

import html
import math
import shutil
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

from .. import formatting
from .base import Callback, is_logging_point


def round_figure(value: float, places: int = 3) -> float:
    """Round for display (kept for callers of torchfit < 0.x; printing uses ``torchfit.formatting``).

    >>> round_figure(0.97612), round_figure(2.345e-05)
    (0.976, 2.35e-05)
    """
    if not isinstance(value, float) or not math.isfinite(value) or value == 0.0:
        return value
    if abs(value) >= 10 ** -places:
        return round(value, places)
    return float(f"{value:.{places - 1}e}")


def format_step(logs: Mapping[str, float]) -> str:
    """``{'step': 100, 'loss': 0.976, 'accuracy': 0.660}``: figures by ``torchfit.formatting``."""
    return formatting.format_step(logs)


def table_width(widths: Iterable[int]) -> int:
    """Characters in a line of a table whose columns have these widths (``| x | y |``)."""
    return 1 + sum(w + 3 for w in widths)


def column_groups(columns: List[str], widths: Mapping[str, int], max_width: Optional[int]) -> List[List[str]]:
    """``columns`` cut into tables no wider than ``max_width``, each led by the first column (the epoch).

    >>> column_groups(["epoch", "loss", "val_loss"], {"epoch": 5, "loss": 8, "val_loss": 8}, 30)
    [['epoch', 'loss'], ['epoch', 'val_loss']]
    """
    if not columns:
        return []
    lead, groups = columns[0], [[columns[0]]]
    for column in columns[1:]:
        group = groups[-1]
        if max_width is None or len(group) == 1 or table_width(widths[c] for c in group + [column]) <= max_width:
            group.append(column)
        else:
            groups.append([lead, column])
    return groups


def render_table(names: List[str], widths: List[int], rows: List[List[str]]) -> str:
    """A prettytable-style text table of cells already padded to ``widths``."""
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    head = "|" + "|".join(f" {n.center(w)} " for n, w in zip(names, widths)) + "|"
    body = ["|" + "|".join(f" {cell} " for cell in row) + "|" for row in rows]
    return "\n".join([border, head, border, *body, border])


def epoch_table(rows: Iterable[Mapping[str, float]], layout: Optional[formatting.Columns] = None,
                width: Optional[int] = None) -> str:
    """One prettytable-style table with a row per epoch dict, or several stacked ones.

    ``layout`` (a ``formatting.Columns``) places each figure: a printer passes the one it
    keeps for the whole run, so that the columns of every epoch's table line up; without it
    the layout is made from ``rows``. ``width`` is the most characters a line may have:
    columns that do not fit go to further tables below, each led by the ``epoch`` column.

    >>> print(epoch_table([{"epoch": 1, "loss": 2.1, "val_loss": 1.5}], width=30))
    +-------+----------+
    | epoch |   loss   |
    +-------+----------+
    |   1   | 2.100    |
    +-------+----------+
    +-------+----------+
    | epoch | val_loss |
    +-------+----------+
    |   1   | 1.500    |
    +-------+----------+
    """
    rows = list(rows)
    layout = layout if layout is not None else formatting.Columns()
    for row in rows:
        layout.observe(row)
    columns = layout.names  # a column the rows lack (no validation this epoch) stays, blank
    widths = layout.widths()
    tables = []
    for group in column_groups(columns, widths, width):
        cells = [layout.cells(row, group) for row in rows]
        tables.append(render_table(group, [widths[c] for c in group], cells))
    return "\n".join(tables)


def epoch_table_html(rows: Iterable[Mapping[str, float]]) -> str:
    """The same table as ``epoch_table`` as an HTML ``<table>`` (figures formatted and placed alike).

    A browser scrolls a wide table, so it stays one table; its cells keep the text
    table's padding in a fixed-width font, so decimal points line up down a column.
    """
    rows = list(rows)
    layout = formatting.Columns()
    for row in rows:
        layout.observe(row)
    columns = layout.names
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in layout.cells(row, columns)) + "</tr>"
        for row in rows
    )
    style = "font-family:monospace;white-space:pre;text-align:center"
    return (f'<table class="torchfit-epochs" style="{style}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def output_width(width: Optional[int] = None, stdout: bool = True) -> int:
    """The line width tables are fitted to: ``width`` if given; for stdout the terminal's
    (``COLUMNS`` first, as ``shutil.get_terminal_size`` reads it), else 80 (a file, a pipe,
    a CI log, or a sink of your own).

    >>> output_width(100), output_width(stdout=False)
    (100, 80)
    """
    if width is not None:
        return width
    if not stdout:
        return 80
    return shutil.get_terminal_size((80, 24)).columns or 80


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (notebook, lab, VS Code, Colab).

    Looks at ``sys.modules`` only: a process that never imported IPython is not a
    kernel, and torchfit never imports IPython itself to find out. Terminal IPython
    has no ``kernel`` attribute and counts as a terminal.
    """
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return getattr(shell, "kernel", None) is not None


class NotebookDisplay:
    """Outputs that update in place in a notebook, one per key (IPython display handles).

    Each output carries ``text/plain`` and ``text/html``; the frontend shows the richest
    it can (a console shows the text). ``display_fn`` defaults to IPython's ``display``
    and is swapped in tests.

    >>> # NotebookDisplay().show("table", text, html)   # first call displays, later calls update
    """

    def __init__(self, display_fn: Optional[Callable[..., Any]] = None):
        if display_fn is None:
            from IPython.display import display as display_fn  # only ever imported inside a kernel
        self._display = display_fn
        self._handles: Dict[str, Any] = {}

    def show(self, key: str, text: str, html_text: str) -> None:
        self.show_bundle(key, {"text/plain": text, "text/html": html_text})

    def show_bundle(self, key: str, bundle: Dict[str, Any]) -> None:
        """Display ``bundle`` (mime type -> data) as the output ``key``, or update it in place."""
        handle = self._handles.get(key)
        if handle is None:
            self._handles[key] = self._display(bundle, raw=True, display_id=True)
        else:
            handle.update(bundle, raw=True)


def choose_display(notebook: Union[bool, None, NotebookDisplay], default_output: bool) -> Optional[NotebookDisplay]:
    """Where a printer or bar draws: the display given, a new one in Jupyter, or None for text.

    ``notebook=None`` detects Jupyter, but only for output headed to the default place
    (stdout): a file or a custom sink always gets text. ``True`` forces a display.
    """
    if isinstance(notebook, NotebookDisplay):
        return notebook
    if notebook or (notebook is None and default_output and in_notebook()):
        return NotebookDisplay()
    return None


def clock(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` past an hour), as tqdm writes elapsed time and ETA.

    >>> clock(75.4), clock(3725)
    ('01:15', '1:02:05')
    """
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def time_bar(width: int = 99) -> str:
    """torchkeras' rule and clock line, ``width`` characters long (99 as torchkeras prints it)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")  # local time, as datetime.now() gives it, for less code per line
    return "\n" + "=" * max(width - len(stamp), 10) + stamp


class ProgressPrinter(Callback):
    """Prints a fit the way torchkeras does.

    verbose=1: start line, time bars, a step dict every ``log_step_freq`` steps
    and an epoch table; verbose=2: only the epoch tables.

    ``notebook``: ``None`` (default) renders for Jupyter when running in a kernel
    with the default ``sink=print``; ``False`` always prints text; ``True`` forces
    the notebook rendering; a ``NotebookDisplay`` is used as given. In a notebook
    the step dict (with its epoch) and one table of all epochs so far are each a
    single output updated in place, instead of a new table per epoch; the step line
    then reads like a bar's text (``Epoch 2/5  step 30/45  [00:03<00:01]  loss=0.512``),
    so that a kernel without ipywidgets still shows how far the epoch is and an ETA.

    Figures go through ``torchfit.formatting`` (3 fixed decimals, significant digits for
    learning rates), laid out by one ``formatting.Columns`` for the whole fit: each
    column keeps its width and its decimal point's place from the first epoch to the
    last. ``width`` is the most characters a line may have (default: with ``sink=print``
    the terminal's width or ``COLUMNS`` when the fit begins, 80 in a file or CI log; 80 for
    another sink): a table wider than that is cut into stacked tables, each led by the
    ``epoch`` column.

    >>> # model.fit(5, dl_train, callbacks=[ProgressPrinter(2, sink=my_log.write)], verbose=0)
    """

    rank_zero_only = True

    def __init__(self, verbose: int = 1, sink: Callable[[str], None] = print,
                 notebook: Union[bool, None, NotebookDisplay] = None, width: Optional[int] = None):
        if width is not None and (not isinstance(width, int) or width < 20):
            raise ValueError(f"ProgressPrinter(width=...) is the line width in characters, at least 20; got {width!r}")
        self.verbose = verbose
        self.width = width
        self.sink = sink
        self.notebook = notebook
        self._display: Optional[NotebookDisplay] = None
        self._rows: List[Mapping[str, float]] = []
        self._layout = formatting.Columns()
        self._epoch = 0
        self._epoch_start = 0.0
        self._last_step: Optional[tuple] = None
        self._width: Optional[int] = None  # the line width of this fit's tables, read once when it begins

    def on_train_begin(self, logs: dict) -> None:
        self._rows = []
        self._layout = formatting.Columns()
        for key in self.params.get("log_keys") or ():  # every epoch's tables get every column, in order
            self._layout.add(key)
        self._last_step = None
        self._display = choose_display(self.notebook, default_output=self.sink is print)
        if self._display is None:  # once a fit, not once an epoch: asking the terminal costs more than a table
            self._width = output_width(self.width, self.sink is print)
        if self.verbose == 1:
            self.sink("Start Training ...")
            if self._display is None:
                self.sink(time_bar(min(99, self._width)))

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        self._epoch = epoch + 1  # the table's 1-based number
        self._epoch_start = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        if self.verbose == 1 and is_logging_point(logs):
            if self._display is None:
                self.sink(format_step(logs))
            else:
                self._last_step = (batch, dict(logs))
                self._show_step(time.monotonic() - self._epoch_start)

    def _show_step(self, elapsed: Optional[float]) -> None:
        assert self._display is not None and self._last_step is not None
        line = self.step_line(*self._last_step, elapsed)
        self._display.show("step", line, f"<pre>{html.escape(line)}</pre>")

    def step_line(self, batch: int, logs: Mapping[str, float], elapsed: Optional[float]) -> str:
        """``Epoch 2/5  step 30/45  [00:03<00:01]  loss=0.512, accuracy=0.800`` (notebook step line).

        ``elapsed=None`` leaves the times out (the line a finished fit leaves in a stored notebook).
        """
        last = self.params.get("epochs")
        total = self.params.get("steps")
        step = int(logs.get("step", batch))
        head = f"Epoch {self._epoch}" + (f"/{last}" if last else "")
        if elapsed is None:
            where = f"step {step}/{total}" if total else f"step {step}"
        elif total:
            eta = elapsed / step * (total - step) if step else 0.0
            where = f"step {step}/{total}  [{clock(elapsed)}<{clock(eta)}]"
        else:  # a loader without len(): no total, no ETA
            where = f"step {step}  [{clock(elapsed)}]"
        figures = ", ".join(f"{k}={formatting.format_figure(v, k)}" for k, v in logs.items() if k != "step")
        return f"{head}  {where}  {figures}"

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self._display is not None:
            self._rows.append(dict(logs))
            self._display.show("epochs", epoch_table(self._rows), epoch_table_html(self._rows))
            return
        width = self._width if self._width is not None else output_width(self.width, self.sink is print)
        self.sink("\n" + epoch_table([logs], self._layout, width))
        if self.verbose == 1:
            self.sink(time_bar(min(99, width)))

    def on_train_end(self, logs: dict) -> None:
        if self._display is not None and self._last_step is not None:
            # the times go once training ends: they differ on every run, and a stored notebook
            # re-executed with the same figures should not change
            self._show_step(None)
        if self.verbose == 1:
            self.sink("Finished Training...")
