"""A live plot of the history: one figure redrawn at every epoch end.

Owns when and where the history figure is shown during a fit; the figure itself is
``torchfit.plot.plot_history`` (a panel per quantity, training and validation in one
panel). In Jupyter it is one output updated in place (a single display id), so the
stored notebook keeps one static figure, not one per epoch; elsewhere (a terminal, a
script, a CI job) it is a PNG file rewritten atomically each epoch, which an image
viewer or an editor tab shows live. Nothing happens per training step.
"""
from __future__ import annotations

import base64
import io
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Union

from .base import Callback
from .printing import NotebookDisplay, choose_display

__all__ = ["LivePlot", "DEFAULT_PATH"]

DEFAULT_PATH = "torchfit_history.png"


class LivePlot(Callback):
    """Redraw the history (loss and each metric, train and validation) at every epoch end.

    In Jupyter (``notebook=None`` detects it, ``True`` forces it, a ``NotebookDisplay``
    is used as given) one figure below the epoch table is updated in place. Elsewhere,
    or whenever ``path`` is given, the figure is written to ``path`` (default
    ``torchfit_history.png`` in the working directory), replaced atomically each epoch so
    a viewer never reads half a file. ``metrics``: the quantities to draw, as in
    ``torchfit.plot_history`` (default: loss, then every metric). ``columns``: panels per
    row. ``dpi``: the PNG's resolution. ``self.figure`` is the last figure drawn.

    Needs matplotlib (``pip install "torchfit-keras[plot]"``); without it, fit fails before the
    first step, naming the fix.

    >>> # model.fit(20, dl_train, dl_val, callbacks=[LivePlot()])            # Jupyter: a live figure
    >>> # model.fit(20, dl_train, dl_val, callbacks=[LivePlot("runs/h.png")])  # a file, rewritten per epoch
    """

    rank_zero_only = True

    def __init__(self, path: Union[str, os.PathLike, None] = None, metrics: Optional[Sequence[str]] = None, *,
                 notebook: Union[bool, None, NotebookDisplay] = None, columns: int = 3, dpi: int = 100):
        if not isinstance(columns, int) or isinstance(columns, bool) or columns < 1:
            raise ValueError(f"LivePlot(columns=...) must be an int >= 1; got {columns!r}")
        if not isinstance(dpi, int) or isinstance(dpi, bool) or dpi < 10:
            raise ValueError(f"LivePlot(dpi=...) must be an int >= 10; got {dpi!r}")
        self.path = path
        self.metrics = [metrics] if isinstance(metrics, str) else metrics
        self.notebook = notebook
        self.columns = columns
        self.dpi = dpi
        self.figure: Any = None
        self._display: Optional[NotebookDisplay] = None
        self._file: Optional[str] = None
        self._rows: List[Dict[str, Any]] = []

    def set_params(self, params: dict) -> None:
        """Checks everything before training starts (fit calls this first): matplotlib, the panels, the folder."""
        super().set_params(params)
        from ..plot import _import_matplotlib

        _import_matplotlib()  # missing matplotlib fails here, naming the fix, before any weight changes
        keys = params.get("log_keys")
        if self.metrics is not None and keys is not None:  # a typo fails now, not at epoch 1's end
            unknown = [m for m in self.metrics if m not in keys and "val_" + m not in keys]
            if unknown:
                quantities = [k for k in keys if k != "epoch" and not k.startswith("val_")]
                raise ValueError(f"LivePlot(metrics=...): {unknown} not logged by this fit; it logs {quantities} "
                                 "(name quantities without the val_ prefix)")
        if self.path is not None:
            folder = os.path.dirname(os.path.abspath(os.fspath(self.path)))
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"LivePlot(path={os.fspath(self.path)!r}): the folder {folder} does not "
                                        "exist; create it or pass another path")

    def on_train_begin(self, logs: dict) -> None:
        self._display = choose_display(self.notebook, default_output=self.path is None)
        self._file = None
        if self._display is None:
            self._file = os.path.abspath(os.fspath(self.path if self.path is not None else DEFAULT_PATH))
            if self.params.get("verbose"):
                print(f"LivePlot: the history plot is rewritten at each epoch end in {self._file}")
        # earlier fits of the same model continue the curves, as their epochs continue
        history = getattr(self.model, "history", None)
        self._rows = history.to_dict("records") if history is not None and len(history) else []

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._rows.append(dict(logs))
        png = self._draw()
        if self._display is not None:
            self._display.show_bundle("plot", {"image/png": base64.b64encode(png).decode("ascii"),
                                               "text/plain": f"<torchfit history plot, epoch {epoch + 1}>"})
        else:
            self._write(png)

    def _draw(self) -> bytes:
        import pandas as pd

        from ..plot import plot_history

        frame = pd.DataFrame(self._rows)
        metrics = self.metrics
        if metrics is not None:  # a quantity this run never logs is left out rather than failing mid-fit
            metrics = [m for m in metrics if m in frame.columns or "val_" + m in frame.columns] or None
        self.figure = plot_history(frame, metrics, columns=self.columns)
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=self.dpi)
        return buf.getvalue()

    def _write(self, png: bytes) -> None:
        assert self._file is not None
        folder, name = os.path.split(self._file)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(png)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the plot unreadable to others sharing the folder
            os.replace(tmp, self._file)  # a viewer sees the old figure or the new one, never half a file
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
