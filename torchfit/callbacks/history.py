"""Records each finished epoch's figures into ``model.history`` (and logging points into ``step_history``)."""
from __future__ import annotations

import functools
from typing import Any, List, Mapping, Sequence, Tuple

from .base import Callback, is_logging_point


def frame(rows: Sequence[Mapping[str, Any]], first: Sequence[str]) -> Any:
    """The rows as a pandas DataFrame: ``first`` columns, then every other key in order of appearance.

    >>> list(frame([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4, "lr": 0.1}], ["epoch"]).columns)
    ['epoch', 'loss', 'lr']
    """
    import pandas as pd

    columns: List[str] = list(first)
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    arrays = _number_columns(rows, columns)
    if arrays is None:  # missing values, other types: pandas works the dtypes out
        return pd.DataFrame(list(rows), columns=columns)
    # The common case (every row has every key, each column all floats or all ints) skips most of the
    # constructor and rebuilding the column labels' string array: together ~0.45 ms a call once a fit
    # has evicted pandas from the CPU caches (issue 24: fit on toy data runs hundreds of times in a suite).
    # DataFrame._from_arrays is pandas' own constructor of a frame from finished columns (pandas >= 1.0);
    # tests/test_tiny_fit.py holds the result equal to the general path's.
    labels = _labels(tuple(columns)).copy()  # a copy: a user may set its name
    try:
        return pd.DataFrame._from_arrays(arrays, columns=labels, index=pd.RangeIndex(len(rows)),
                                         verify_integrity=False)
    except (AttributeError, TypeError):  # a pandas without it: the public constructor, a little slower
        df = pd.DataFrame(dict(enumerate(arrays)), copy=False)
        df.columns = labels
        return df


def _number_columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Any:
    """One numpy array per column when every row has every column and each column holds only Python
    floats or only Python ints (the dtypes pandas would infer); else None."""
    import numpy as np

    if not rows:
        return None
    arrays = []
    for key in columns:
        try:
            values = [row[key] for row in rows]
        except KeyError:
            return None
        kind = type(values[0])
        if kind is float:
            if any(type(v) is not float for v in values):
                return None
            arrays.append(np.array(values, dtype=np.float64))
        elif kind is int:
            if any(type(v) is not int for v in values):
                return None
            array = np.array(values)
            if array.dtype != np.int64:
                return None
            arrays.append(array)
        else:
            return None
    return arrays


@functools.lru_cache(maxsize=64)
def _labels(columns: Tuple[str, ...]) -> Any:
    import pandas as pd

    return pd.Index(list(columns))


class History(Callback):
    """Appends the epoch logs (a dict of floats) to the model's history rows.

    Always first in fit's callback list, so callbacks after it (checkpoints) see
    the epoch already recorded.
    """

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self.model.training_state.record_epoch(logs)


class StepHistory(Callback):
    """Appends a row to ``model.step_history`` at each logging point of training.

    A row holds ``epoch``, ``step`` (batch within the epoch), ``global_step``
    (optimizer steps so far, across fit calls), ``lr`` (the first parameter
    group's) and the running figures the loop hands to ``on_train_batch_end``:
    ``loss`` and each metric, sample-weighted means since the start of the epoch.
    Between logging points the loop passes empty logs and nothing is recorded, so
    this adds no host sync (the figures are floats already).
    """

    def __init__(self) -> None:
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        self._epoch = epoch + 1  # the history's 1-based number

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        if not is_logging_point(logs):
            return
        model = self.model
        row = {"epoch": self._epoch, "step": logs.get("step", batch), "global_step": model.global_step}
        groups = getattr(model.optimizer, "param_groups", None)
        if groups:
            row["lr"] = float(groups[0]["lr"])
        for key, value in logs.items():  # a loop, not a generator: this runs at every logging point
            if key != "step":
                row[key] = value
        model.training_state.record_step(row)
