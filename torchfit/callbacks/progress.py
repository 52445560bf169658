"""A live progress bar per epoch (``tqdm.auto``: text in terminals, a widget in Jupyter).

Owns the bar and the decision whether fit shows one by default. Reading the
running figures costs a host sync, so the bar's figures (its postfix) change
only at logging points, where fit reads them anyway; between them the bar only
counts steps.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

from .base import Callback
from .printing import round_figure


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


def wants_bar(progress_bar: Optional[bool], verbose: int) -> bool:
    """fit's choice: ``None`` means a bar when ``verbose == 1`` and the output is interactive."""
    if progress_bar is None:
        return verbose == 1 and output_is_interactive()
    if not isinstance(progress_bar, bool):
        raise TypeError(f"progress_bar must be True, False or None (automatic); got {progress_bar!r}")
    if progress_bar and verbose != 1:
        raise ValueError(
            f"progress_bar=True needs verbose=1 (verbose={verbose} prints {'nothing' if verbose == 0 else 'tables only'})"
        )
    return progress_bar


def make_bar(**kwargs: Any) -> Any:
    from tqdm.auto import tqdm  # imported when a bar is shown: tqdm.auto probes for Jupyter

    return tqdm(**kwargs)


class ProgressBar(Callback):
    """One bar per epoch over the training batches, with the running figures at logging points.

    fit adds it (instead of the step dicts) when ``verbose=1`` and stdout is a
    terminal or a notebook, or when asked with ``fit(..., progress_bar=True)``;
    ``progress_bar=False`` keeps the step dicts. The bar replaces the step dicts,
    the start line and the time bars; the epoch tables still print (the printer
    then works as with ``verbose=2``).

    >>> # model.fit(10, dl_train, dl_val, progress_bar=True)
    """

    rank_zero_only = True

    def __init__(self, file: Any = None):
        self.file = file
        self._bar: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        self._close()
        last = self.params.get("epochs")
        self._bar = make_bar(total=self.params.get("steps"), desc=f"Epoch {epoch}" + (f"/{last}" if last else ""),
                             file=self.file if self.file is not None else sys.stdout,
                             unit="step", dynamic_ncols=True, leave=True)

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        bar = self._bar
        if bar is None:
            return
        bar.update(1)
        if logs:
            bar.set_postfix({k: round_figure(v) for k, v in logs.items() if k != "step"}, refresh=True)
        if batch == self.params.get("steps"):
            self._close()  # before validation and the epoch table print

    def on_test_begin(self, logs: dict) -> None:
        self._close()

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._close()

    def on_train_end(self, logs: dict) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
