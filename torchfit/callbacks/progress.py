"""A live progress bar per epoch: text in terminals, a widget in Jupyter.

Owns the bar and the decision whether fit shows one by default. Reading the
running figures costs a host sync, so the bar's figures (its postfix) change
only at logging points, where fit reads them anyway; between them the bar only
counts steps.

In Jupyter one widget serves the whole fit, above the epoch table, and is
removed when training ends: a stored notebook keeps no stale bar text, since
code hosts render no widgets and show a widget's text as it was when first
displayed (``0%| 0/45``). See docs/notebooks.md.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Callable, Optional, Union

from .. import formatting
from .base import Callback, is_logging_point
from .printing import NotebookDisplay, choose_display, in_notebook


def output_is_interactive(stream: Any = None) -> bool:
    """Whether ``stream`` (``sys.stdout``) is a terminal or a Jupyter kernel's output.

    False for files, pipes and CI logs, where a bar would only leave ``\\r`` debris, and
    for a terminal without a size.
    """
    stream = sys.stdout if stream is None else stream
    if type(stream).__module__.startswith("ipykernel"):
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        if not (isatty and isatty()):
            return False
    except ValueError:  # a closed stream
        return False
    try:
        # A pseudo-terminal without a size (`script`, some CI runners) shows no bar (tqdm draws nothing there).
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):  # a terminal-like object without a file descriptor
        return True


def widgets_available() -> bool:
    """Whether ``ipywidgets`` is installed (looked up, not imported): Jupyter bars are widgets."""
    return importlib.util.find_spec("ipywidgets") is not None


def wants_bar(progress_bar: Optional[bool], verbose: int) -> bool:
    """fit's choice: ``None`` means a bar when ``verbose == 1`` and the output is interactive.

    In a Jupyter kernel without ``ipywidgets`` the automatic choice is no bar (the
    printer's step line, updated in place, shows the progress), and
    ``progress_bar=True`` is an error naming the fix.
    """
    if progress_bar is None:
        return verbose == 1 and output_is_interactive() and (widgets_available() or not in_notebook())
    if not isinstance(progress_bar, bool):
        raise TypeError(f"progress_bar must be True, False or None (automatic); got {progress_bar!r}")
    if progress_bar and verbose != 1:
        raise ValueError(
            f"progress_bar=True needs verbose=1 (verbose={verbose} prints {'nothing' if verbose == 0 else 'tables only'})"
        )
    if progress_bar and in_notebook() and not widgets_available():
        raise ImportError("progress_bar=True in Jupyter draws a widget and needs ipywidgets: pip install ipywidgets "
                          "(or leave progress_bar=None: the step line then shows the progress)")
    return progress_bar


# The bar itself never gets narrower than this; figures that would squeeze it are left out.
MIN_BAR = 10
# tqdm's default line without the rate (``12.3step/s``), the first thing to go when space is short.
NO_RATE_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def fitted_meter(format_meter: Callable[..., str], n: Any, total: Any, elapsed: float,
                 ncols: Optional[int] = None, postfix: Optional[str] = None, **kwargs: Any) -> str:
    """tqdm's line, laid out for ``ncols`` columns without ever cutting a figure.

    ``postfix`` holds the figures as tqdm joins them (``loss=2.100, accuracy=0.805``).
    In order, until the line fits with a bar of at least ``MIN_BAR`` characters: the
    rate is left out, then the figures from the last one, each dropped whole. Without
    ``ncols`` (a file, a pipe) the line is tqdm's own.
    """
    if not ncols:
        return format_meter(n, total, elapsed, ncols=ncols, postfix=postfix, **kwargs)
    from tqdm.utils import disp_len

    figures = postfix.split(", ") if postfix else []
    layouts = [kwargs.get("bar_format")]
    if total and kwargs.get("bar_format") is None:
        layouts.append(NO_RATE_FORMAT)
    for bar_format in layouts:
        fitting = list(figures)
        while True:
            # ncols=None draws a bar of exactly MIN_BAR (tqdm's 10): the line fits if this one does
            trial = format_meter(n, total, elapsed, ncols=None, postfix=", ".join(fitting) or None,
                                 **{**kwargs, "bar_format": bar_format})
            if disp_len(trial) <= ncols or not fitting:
                break
            fitting.pop()
        if fitting == figures or bar_format is layouts[-1]:
            break
    return format_meter(n, total, elapsed, ncols=ncols, postfix=", ".join(fitting) or None,
                        **{**kwargs, "bar_format": bar_format})


def make_bar(**kwargs: Any) -> Any:
    """A text bar (``tqdm.std``) whose line fits the terminal: figures whole or not at all."""
    from tqdm.std import tqdm  # imported when a bar is shown

    class FittedBar(tqdm):
        @staticmethod
        def format_meter(*args: Any, **kw: Any) -> str:
            return fitted_meter(tqdm.format_meter, *args, **kw)

    return FittedBar(**kwargs)


def make_widget_bar(**kwargs: Any) -> Any:
    """A ``tqdm.notebook`` bar that is not displayed yet (the caller displays it with a handle)."""
    from tqdm.notebook import tqdm  # needs ipywidgets

    return tqdm(display=False, **kwargs)


class ProgressBar(Callback):
    """A bar over the training batches of each epoch, with the running figures at logging points.

    fit adds it (instead of the step dicts) when ``verbose=1`` and stdout is a
    terminal or a notebook, or when asked with ``fit(..., progress_bar=True)``;
    ``progress_bar=False`` keeps the step dicts. The bar replaces the step dicts,
    the start line and the time bars; the epoch tables still print (the printer
    then works as with ``verbose=2``).

    In a terminal (or with ``file``) each epoch leaves its text bar. In Jupyter
    (``notebook=None`` detects it, ``True`` forces it) one widget above the epoch
    table serves every epoch and is removed when training ends, so only the table
    remains, live and in the stored notebook; a fit stopped mid-epoch (Ctrl-C)
    leaves the bar where it stopped, as text.

    In a terminal the line fits the terminal's width: the bar keeps at least
    ``MIN_BAR`` characters, and when space is short the rate goes first, then the
    figures from the last one, each dropped whole (never cut mid-number); figures
    are formatted by ``torchfit.formatting`` like the tables. On Ctrl-C or an error
    (``on_exception``) the bar closes where it stopped and ends its line, so fit's
    message starts a line of its own.

    The bar redraws at most once every ``mininterval`` seconds (tqdm's rate limit),
    however short the steps and however often fit logs: new figures show at the
    next redraw, and each epoch's last figures when its bar closes. Pass your own
    ``ProgressBar(...)`` in ``callbacks`` to set it; fit then adds no other bar.

    >>> # model.fit(10, dl_train, dl_val, progress_bar=True)
    >>> # model.fit(10, dl_train, callbacks=[ProgressBar(mininterval=1.0)])
    """

    rank_zero_only = True

    def __init__(self, file: Any = None, notebook: Union[bool, None, NotebookDisplay] = None,
                 mininterval: float = 0.1):
        self.file = file
        self.notebook = notebook
        self.mininterval = mininterval
        self._bar: Any = None
        self._display: Optional[NotebookDisplay] = None

    def on_train_begin(self, logs: dict) -> None:
        self._display = choose_display(self.notebook, default_output=self.file is None)

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        last = self.params.get("epochs")
        desc = f"Epoch {epoch + 1}" + (f"/{last}" if last else "")
        total = self.params.get("steps")
        if self._display is None:
            self._close()
            self._bar = make_bar(total=total, desc=desc, file=self.file if self.file is not None else sys.stdout,
                                 unit="step", dynamic_ncols=True, leave=True, mininterval=self.mininterval)
        elif self._bar is None:
            self._bar = make_widget_bar(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=False,
                                        mininterval=self.mininterval)
            self._display.show_bundle("bar", self._bar.container._repr_mimebundle_())
        else:  # the same widget, in place, for the next epoch
            self._bar.set_description(desc, refresh=False)
            self._bar.set_postfix_str("", refresh=False)
            self._bar.reset(total=total)

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        bar = self._bar
        if bar is None:
            return
        if is_logging_point(logs):  # drawn by the update below when tqdm's rate limit allows: no redraw per step
            bar.set_postfix({k: formatting.format_figure(v, k) for k, v in logs.items() if k != "step"},
                            refresh=False)
        bar.update(1)
        if batch + 1 == self.params.get("steps"):
            self._finish_epoch()

    def _finish_epoch(self) -> None:
        if self._display is None:
            self._close()  # before validation and the epoch table print; closing draws the final state
        elif self._bar is not None:
            self._bar.refresh()  # the widget stays for the next epoch: show it full, with the last figures

    def on_test_begin(self, logs: dict) -> None:
        if self._display is None:
            self._close()

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._finish_epoch()  # also for a loader without len(), whose last batch is not known in advance

    def on_exception(self, exc: BaseException) -> None:
        """Close the bar where it stopped, ending its line, so what fit prints next starts a line of its own."""
        self.on_train_end({})

    def on_train_end(self, logs: dict) -> None:
        bar = self._bar
        if self._display is not None and bar is not None:
            self._bar = None
            if not bar.total or bar.n >= bar.total:
                bar.close()  # leave=False: the widget closes; an empty text replaces it, live and stored
                self._display.show_bundle("bar", {"text/plain": ""})
            else:  # stopped mid-epoch: the (red) widget stays, and its stored text says where it stopped
                view = bar.container._repr_mimebundle_()
                self._display.show_bundle("bar", {**view, "text/plain": str(bar)})
                bar.close()
            return
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
