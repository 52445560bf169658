"""Callbacks that end training: ``EarlyStopping`` (a figure stopped improving) and
``TerminateOnNaN`` (the loss became NaN or infinite).

They stop by setting ``model.stop_training``; the loop checks it after each
batch and after each epoch. They run on every process under torchrun (all
processes must stop together); only the main process prints.
"""
from __future__ import annotations

import math
from typing import Mapping, Any, Callable, Dict, Optional

import torch

from ..formatting import count_of, format_figure
from .base import Callback
from .monitor import check_monitor, check_nonnegative, is_improvement, main_process, resolve_mode


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs in a row (Keras' rule).

    >>> es = EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    >>> # model.fit(100, dl_train, dl_val, callbacks=[es])

    An epoch improves when its figure beats the best so far by more than
    ``abs(min_delta)`` (``mode``: ``"min"``, ``"max"``, or ``"auto"`` from the name);
    an improving epoch never stops training. With ``baseline`` an improvement resets
    the wait only if it also beats the baseline. Epochs before ``start_from_epoch``
    (0-based, as the hooks count) are not watched. When it stops it prints why
    (``sink``, ``print`` by default; ``verbose=0`` for silence: Keras' default).
    ``restore_best_weights=True`` keeps a copy of the net's state (parameters and
    buffers) from the best epoch (the first watched one if none improved) and puts it
    back when training ends; the optimizer state is not rewound (as in Keras).
    ``best_epoch`` and ``stopped_epoch`` are 0-based, as Keras' (the messages say the
    history's 1-based numbers). Patience and the best figure restart with each ``fit``
    call, and are saved in full checkpoints so a resumed run continues counting.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        verbose: int = 1,
        mode: str = "auto",
        baseline: Optional[float] = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
        sink: Callable[[str], None] = print,
    ):
        self.monitor = monitor
        self.mode = resolve_mode(mode, monitor)
        check_nonnegative("patience", patience, integral=True)
        check_nonnegative("start_from_epoch", start_from_epoch, integral=True)
        if not isinstance(min_delta, (int, float)) or isinstance(min_delta, bool) or not math.isfinite(min_delta):
            raise ValueError(f"min_delta must be a finite number; got {min_delta!r}")
        self.patience = int(patience)
        self.min_delta = abs(float(min_delta))  # Keras takes its absolute value
        self.restore_best_weights = bool(restore_best_weights)
        self.baseline = None if baseline is None else float(baseline)
        self.start_from_epoch = int(start_from_epoch)
        self.verbose = verbose
        self.sink = sink
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.best: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.stopped_epoch: Optional[int] = None
        self.best_weights: Optional[Dict[str, torch.Tensor]] = None

    def set_params(self, params: dict) -> None:
        super().set_params(params)
        check_monitor("EarlyStopping", self.monitor, params)

    def on_train_begin(self, logs: dict) -> None:
        self._reset()

    def _snapshot(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.net.state_dict().items()}

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        current = logs.get(self.monitor)
        if current is None or epoch < self.start_from_epoch:
            return  # an epoch without validation (fit(validation_freq=...)), or not watched yet: as in Keras
        if self.restore_best_weights and self.best_weights is None:  # the first watched epoch is the best so far
            self.best_weights, self.best_epoch = self._snapshot(), epoch
        self.wait += 1
        if is_improvement(current, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self._snapshot()
            if self.baseline is None or is_improvement(current, self.baseline, self.mode, self.min_delta):
                self.wait = 0  # only an improvement that also beats the baseline restarts the wait
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            self._say(self._why(epoch + 1, current))

    def _why(self, epoch: int, current: Any) -> str:
        if self.baseline is not None and not is_improvement(self.best, self.baseline, self.mode, self.min_delta):
            return (f"Early stopping at epoch {epoch}: {self.monitor} ({self._figure(current)}) has not beaten the "
                    f"baseline {self._figure(self.baseline)} in {count_of(self.wait, 'epoch')} "
                    f"(patience {self.patience}).")
        return (f"Early stopping at epoch {epoch}: {self.monitor} has not improved on {self._figure(self.best)} "
                f"(epoch {self.best_epoch + 1}) by more than {self._figure(self.min_delta)} for "
                f"{count_of(self.wait, 'epoch')} "
                f"(patience {self.patience}, mode {self.mode}).")

    def on_train_end(self, logs: dict) -> None:
        if not self.restore_best_weights or self.best_weights is None:
            return
        # Also when the best epoch is the last one: an interrupted epoch may have moved the weights since.
        self.model.net.load_state_dict(self.best_weights)
        if self.best_epoch + 1 != self.model.epoch:
            self._say(f"EarlyStopping restored the weights of epoch {self.best_epoch + 1} "
                      f"({self.monitor}={self._figure(self.best)}).")

    def _figure(self, value: Any) -> str:
        # the text the epoch table shows for this figure (the exact float stays in self.best)
        return format_figure(value, self.monitor)

    def _say(self, text: str) -> None:
        if self.verbose and main_process(self.model):
            self.sink(text)

    def state_dict(self) -> dict:
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict) -> None:
        self.wait = state["wait"]
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.stopped_epoch = state["stopped_epoch"]
        self.best_weights = state["best_weights"]


class TerminateOnNaN(Callback):
    """Stop at the first training batch whose loss is NaN or infinite.

    >>> # model.fit(10, dl_train, callbacks=[TerminateOnNaN()])

    fit on its own already stops at the next logging point (and at the epoch's
    end) when the running loss is not finite, without any per-step cost. This
    callback stops at once, at the end of the offending batch, and pays for it
    with one host sync per training step (it reads each batch's loss). The
    interrupted epoch is not recorded in the history.
    """

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        run = self.model.run
        out = run.last_result
        loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)  # a Keras-style dict too
        if loss is None:
            return
        loss = float(loss)
        bad = not math.isfinite(loss)
        reducer = run.config.reducer
        if reducer is not None:
            # Under torchrun each rank sees its own batch's loss: agree, so that every rank stops
            # at this batch (a rank leaving the loop alone would leave the others waiting).
            elsewhere = bool(reducer.sum(torch.tensor([float(bad)])).item())
            if elsewhere and not bad:
                bad, loss = True, "not finite on another process"
        if bad:
            run.stop(f"TerminateOnNaN: the loss is {loss} at epoch {run.epoch}, batch {batch + 1}", self.model)
