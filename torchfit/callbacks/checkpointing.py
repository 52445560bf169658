"""``ModelCheckpoint``: write checkpoints at epoch ends.

Owns which files are written when (every epoch, only improvements, a ``last``
copy) and their names. What goes into a file, and the atomic write, belong to
``torchfit.checkpoint``.
"""
from __future__ import annotations

import numbers
import os
import string
from typing import Callable, List, Optional, Union

from .. import checkpoint
from ..files import check_writable
from ..formatting import format_figure
from .base import Callback
from .monitor import check_monitor, is_improvement, resolve_mode

PathLike = Union[str, "os.PathLike[str]"]


class ModelCheckpoint(Callback):
    """Save the training state at the end of epochs; resume from the files with ``fit(resume_from=...)``.

    >>> ckpt = ModelCheckpoint("ckpt/best.pt", monitor="val_loss", save_best_only=True, save_last=True)
    >>> # model.fit(20, dl_train, dl_val, callbacks=[ckpt], resume_from=ckpt.last_path)

    ``path`` may hold format fields filled from the epoch logs, e.g.
    ``"ckpt/epoch{epoch:02d}-{val_loss:.3f}.pt"``. Without ``save_best_only`` a
    file is written every epoch; with it only when ``monitor`` improves on the
    best so far (kept across fit calls and in checkpoints). ``save_last=True``
    also writes ``last.pt`` (with ``path``'s extension) beside ``path`` every
    epoch; a string names that file instead. Files are full, resumable
    checkpoints (``model.load_checkpoint``); ``weights_only=True`` writes the
    net's ``state_dict`` alone (``net.load_state_dict(torch.load(path))``).

    Keras' words work too: ``ModelCheckpoint(filepath=..., save_weights_only=True,
    save_freq=N, initial_value_threshold=x)``; ``save_freq=N`` writes every N training
    batches (``{batch}`` in the name) instead of at epoch ends: a checkpoint taken mid-epoch
    that resumes exactly from the batch after (``torchfit.resuming``; under torchrun every rank
    takes part in each such save).

    Each write goes to a temporary file that is then renamed over the target,
    so a crash mid-write never leaves a torn file. The callback runs after all
    the others (``runs_last``), so a checkpoint includes what they did at that
    epoch's end (a scheduler's step, early stopping's counter), and only on the
    main process under torchrun.
    """

    rank_zero_only = True
    saves_checkpoints = True  # under a sharded strategy every rank takes part in each save
    runs_last = True

    def __init__(
        self,
        filepath: Optional[PathLike] = None,
        monitor: str = "val_loss",
        mode: str = "auto",
        save_best_only: bool = False,
        save_last: Union[bool, PathLike] = False,
        weights_only: bool = False,
        verbose: int = 0,
        sink: Callable[[str], None] = print,
        *,
        path: Optional[PathLike] = None,
        save_weights_only: Optional[bool] = None,
        save_freq: Union[str, int] = "epoch",
        initial_value_threshold: Optional[float] = None,
    ):
        if (filepath is None) == (path is None):
            raise TypeError("ModelCheckpoint needs the file to write: ModelCheckpoint('ckpt/best.pt') "
                            "(Keras' filepath=, or path=; not both)")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, numbers.Integral)
                                     or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch' or a number of batches >= 1 (Keras); got {save_freq!r}")
        if save_weights_only is not None:  # Keras' name
            weights_only = save_weights_only
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)  # numpy ints too
        self._batches_since_save = 0
        self.path = os.fspath(filepath if filepath is not None else path)
        self.fields = _format_fields(self.path)
        self.monitor = monitor
        self.mode = resolve_mode(mode, monitor)
        self.save_best_only = bool(save_best_only)
        if isinstance(save_last, bool) or save_last is None:
            stem_ext = os.path.splitext(self.path)[1] or ".pt"
            self.last_path: Optional[str] = (
                os.path.join(os.path.dirname(self.path), "last" + stem_ext) if save_last else None
            )
        else:
            self.last_path = os.fspath(save_last)
        self.weights_only = bool(weights_only)
        self.verbose, self.sink = verbose, sink
        self.best: Optional[float] = initial_value_threshold  # Keras: a file only once this is beaten
        self.best_epoch: Optional[int] = None

    def set_params(self, params: dict) -> None:
        """Check the monitor, that the epoch logs can fill ``path``'s fields, and that both files can be
        written, before the first step (nothing is created on disk)."""
        super().set_params(params)
        if self.save_best_only:
            check_monitor("ModelCheckpoint", self.monitor, params)
        keys = params.get("log_keys")
        if keys is not None and self.save_freq != "epoch":
            keys = [*keys, "batch"]  # Keras fills {batch} in files written every save_freq batches
        unknown = [f for f in self.fields if keys is not None and f not in keys]
        if unknown:
            raise ValueError(
                f"ModelCheckpoint path {self.path!r} names {unknown}, which this fit's epoch logs will not have; "
                f"they will have {list(keys)}"
            )
        sample = self.path
        if keys is not None:  # overridden steps: checked again once the first epoch's keys are known
            sample = _fill(self.path, keys)
        owner = f"ModelCheckpoint({self.path!r})"
        check_writable(owner, sample)
        if self.last_path is not None:
            check_writable(owner + " (save_last)", self.last_path)

    @property
    def saves_mid_epoch(self) -> bool:  # type: ignore[override]
        return self.save_freq != "epoch"

    def implements(self, hook: str) -> bool:
        # Keras' save_freq: every N batches instead of at epoch ends (no per-batch call otherwise)
        if hook == "on_train_batch_end":
            return self.save_freq != "epoch"
        if hook == "on_epoch_end":
            return self.save_freq == "epoch"
        return super().implements(hook)

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        self._batches_since_save += 1
        if self._batches_since_save < self.save_freq:
            return
        self._batches_since_save = 0
        epoch = self.model.run.epoch  # the 1-based epoch in progress
        figures = {**dict(logs), "epoch": epoch, "batch": batch + 1}  # reads the running figures once
        self._save(figures)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._save(logs)

    def _save(self, logs: dict) -> None:
        if self.save_best_only:
            current = logs.get(self.monitor)  # None on an epoch without validation: no improvement
            if is_improvement(current, self.best, self.mode):
                self.best, self.best_epoch = current, logs["epoch"]
                self._write(self.path.format(**logs), f" ({self.monitor} improved to {format_figure(current, self.monitor)})")
        elif all(f in logs for f in self.fields):  # an epoch without validation (validation_freq) cannot
            self._write(self.path.format(**logs), "")  # fill "{val_loss}": it keeps only the last file
        if self.last_path is not None:
            self._write(self.last_path, "")

    def _write(self, path: str, why: str) -> None:
        strategy = self.model.run.config.strategy
        checkpoint.save(self.model, path, strategy, weights_only=self.weights_only,
                        owner=f"ModelCheckpoint({self.path!r})")
        if self.verbose and strategy.writes_files:
            self.sink(f"Epoch {self.model.run.epoch if self.model.run is not None else self.model.epoch}: saved {'weights' if self.weights_only else 'checkpoint'} "
                      f"to {path}{why}")

    def state_dict(self) -> dict:
        state = {"best": self.best, "best_epoch": self.best_epoch}
        if self.save_freq != "epoch":  # the next file comes after as many batches as in the saved run
            state["batches_since_save"] = self._batches_since_save
        return state

    def on_train_begin(self, logs: dict) -> None:
        self._batches_since_save = 0

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self._batches_since_save = int(state.get("batches_since_save", 0))


def _fill(path: str, keys: List[str]) -> str:
    """``path`` filled with stand-in figures (1 for ``epoch``, 0.5 for the rest): a format spec the
    real figures cannot take (``{val_loss:02d}``) fails here, before training."""
    values = {k: 1 if k in ("epoch", "batch") else 0.5 for k in keys}
    try:
        return path.format(**values)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(
            f"ModelCheckpoint path {path!r} cannot be filled from the epoch logs ({type(exc).__name__}: {exc}); "
            "epoch and batch are ints and every other figure a float: use e.g. {epoch:02d} and {val_loss:.3f}"
        ) from exc


def _format_fields(path: str) -> List[str]:
    try:
        parsed = list(string.Formatter().parse(path))
    except ValueError as exc:
        raise ValueError(f"ModelCheckpoint path {path!r} is not a valid format string: {exc}") from exc
    fields = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        name = field.split(".")[0].split("[")[0]
        if not name:
            raise ValueError(f"ModelCheckpoint path {path!r}: name the fields, e.g. {{epoch:02d}}, not {{}}")
        fields.append(name)
    return fields
