"""Loggers that write a fit's figures to files: ``CSVLogger`` and ``TensorBoard``.

Owns the file formats and when they are flushed (every epoch, so a crash loses
at most the epoch in progress). The figures come from the epoch logs (plain
floats); nothing here reads tensors.
"""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from ..errors import install_hint
from ..files import check_writable, replace_atomically
from .base import Callback, is_logging_point

PathLike = Union[str, "os.PathLike[str]"]


class StepLogger(Callback):
    """A logger whose per-step figures are optional (``log_steps``): without them its
    ``on_train_batch_end`` is not called at all (no cost per step)."""

    log_steps: bool = False

    def implements(self, hook: str) -> bool:
        if hook == "on_train_batch_end":
            return self.log_steps
        return super().implements(hook)


class CSVLogger(Callback):
    """One CSV row per finished epoch, flushed to disk at each epoch end.

    >>> # model.fit(10, dl_train, dl_val, callbacks=[CSVLogger("logs/history.csv")])
    >>> # CSVLogger.read("logs/history.csv") then equals model.history

    ``append=False`` (default): the file mirrors ``model.history``. It is
    rewritten at the start of each fit with the epochs finished before it, so
    repeated fit calls and runs resumed from a checkpoint give one file with
    every epoch exactly once. ``append=True``: rows are added to whatever the
    file already holds (a header is written only into an empty file). Columns
    are the history's, plus any the file held for those epochs that the history
    lacks (a callback's figure added after a checkpoint it was resumed from was
    written: a file row counts as this run's when it agrees with the history on
    every figure both have); a column that appears later (e.g. validation from
    the second fit on) rewrites the file with the wider header. Figures are written
    with full precision (``repr``); ``CSVLogger.read`` gives them back exactly.
    """

    rank_zero_only = True

    def __init__(self, path: PathLike, append: bool = False, separator: str = ","):
        self.path = os.fspath(path)
        self.append = bool(append)
        self.separator = separator
        self._columns: Optional[List[str]] = None

    @staticmethod
    def read(path: PathLike, separator: str = ",") -> "pandas.DataFrame":
        """The history DataFrame a CSVLogger file holds, every figure exactly as written.

        >>> # CSVLogger.read("logs/history.csv").equals(model.history)  -> True

        Each cell goes through Python's ``int`` / ``float`` (correctly rounded):
        ``pandas.read_csv``'s default parser before pandas 3.1 lands one unit in the
        last place off on many 17-digit figures (e.g. ``1.0590504288673401``).
        Empty cells (a column that appeared later) read as NaN.
        """
        import pandas  # imported where a file is read: writing needs only the csv module

        with open(path, newline="") as f:
            header = next(csv.reader(f, delimiter=separator), None)
        if header is None:  # an empty file: no epoch finished yet
            return pandas.DataFrame()
        return pandas.read_csv(path, sep=separator, converters={c: _number for c in header})

    def set_params(self, params: dict) -> None:
        """Check, before the first step, that the file can be written (nothing is created yet)."""
        super().set_params(params)
        check_writable(f"CSVLogger({self.path!r})", self.path)

    def on_train_begin(self, logs: dict) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if self.append and os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, newline="") as f:
                self._columns = next(csv.reader(f, delimiter=self.separator), None)
            return
        rows = [] if self.append else self._kept_rows(self.model.training_state.history)
        self._columns = _columns(rows) if rows else None
        self._rewrite(rows)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        row = dict(logs)
        if self._columns is None or any(k not in self._columns for k in row):
            self._columns = _columns([{c: None for c in self._columns or []}, row])
            self._rewrite(self._read_rows() + [row])
            return
        with open(self.path, "a", newline="") as f:
            csv.writer(f, delimiter=self.separator).writerow([_cell(row.get(c)) for c in self._columns])

    def _kept_rows(self, history: List[Mapping[str, Any]]) -> List[Dict[str, Any]]:
        """The history's rows, each with the columns this file held for it that the history lacks.

        A figure a callback added after the history was taken (a checkpoint written before the
        callback ran, then loaded) is in the file only; rewriting from the history alone would erase
        it. A file row is this run's when it agrees with the history row of the same epoch on every
        column both have (figures are written exactly), so another run's file lends nothing.
        """
        try:
            rows = self._read_rows()
        except (OSError, UnicodeDecodeError, csv.Error):  # not a log this logger can read: rewritten, as always
            rows = []
        on_file: Dict[Any, Dict[str, str]] = {}
        for row in rows:
            on_file.setdefault(row.get("epoch"), row)
        kept = []
        for row in history:
            found = on_file.get(_cell(row.get("epoch")))
            if found is not None and all(_cell(v) == found[k] for k, v in row.items() if k in found):
                extra = {k: _number(v) for k, v in found.items() if k not in row and k is not None and v != ""}
                row = {**row, **extra}
            kept.append(row)
        return kept

    def _read_rows(self) -> List[Dict[str, str]]:
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f, delimiter=self.separator))

    def _rewrite(self, rows: List[Mapping[str, Any]]) -> None:
        # A new file renamed over the old one: a crash mid-rewrite leaves the previous log whole.
        with replace_atomically(self.path, "w", newline="") as f:
            if self._columns is None:
                return
            writer = csv.writer(f, delimiter=self.separator)
            writer.writerow(self._columns)
            for row in rows:
                writer.writerow([_cell(row.get(c)) for c in self._columns])


def _columns(rows: Iterable[Mapping[str, Any]]) -> List[str]:
    columns: List[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return columns


def _number(cell: str) -> Any:
    if cell == "":
        return float("nan")
    for kind in (int, float):  # repr of a float never parses as an int, so ints stay ints
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


class TensorBoard(StepLogger):
    """Write the epoch figures (and optionally the step figures) as TensorBoard event files.

    >>> # model.fit(10, dl_train, dl_val, callbacks=[TensorBoard("runs/exp1")])
    >>> # then: tensorboard --logdir runs

    Layout as in Keras, so TensorBoard overlays training and validation curves:
    ``log_dir/train`` gets ``epoch_loss``, ``epoch_<metric>`` and ``epoch_lr``
    (when a scheduler is in use); ``log_dir/validation`` gets ``epoch_loss`` and
    ``epoch_<metric>`` from the ``val_`` figures. The x axis is the epoch.
    ``log_steps=True`` also writes ``batch_loss`` / ``batch_<metric>`` to
    ``train`` at each logging point (every ``log_step_freq`` steps), with
    ``model.global_step`` as x: the running figures since the epoch began, the
    same numbers the step dicts print (logging points are where figures are
    read from the device anyway, so this adds no host sync). Files are flushed
    at each epoch end and closed when training ends. Needs the ``tensorboard``
    package (``pip install "torchfit-keras[tensorboard]"``).
    """

    rank_zero_only = True

    def __init__(self, log_dir: PathLike = "runs", log_steps: bool = False):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # the package is an optional extra
            raise ImportError(
                "the TensorBoard callback needs the tensorboard package: pip install tensorboard "
                f"(or {install_hint('tensorboard')})"
            ) from exc
        self._writer_class = SummaryWriter
        self.log_dir = os.fspath(log_dir)
        self.log_steps = bool(log_steps)
        self._writers: Dict[str, Any] = {}


    def set_params(self, params: dict) -> None:
        """Check, before the first step, that ``log_dir`` can be written (nothing is created yet)."""
        super().set_params(params)
        check_writable(f"TensorBoard({self.log_dir!r})", self.log_dir, directory=True)

    def _writer(self, name: str) -> Any:
        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = self._writer_class(os.path.join(self.log_dir, name))
        return writer

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        if not is_logging_point(logs):  # figures are read back only at logging points
            return
        writer = self._writer("train")
        for key, value in logs.items():
            if key != "step":
                writer.add_scalar(f"batch_{key}", value, self.model.global_step)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        for key, value in logs.items():
            if key == "epoch":
                continue
            if key.startswith("val_"):
                self._writer("validation").add_scalar("epoch_" + key[4:], value, epoch + 1)
            else:
                self._writer("train").add_scalar("epoch_" + key, value, epoch + 1)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs: dict) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
