"""``OptunaPruning``: report a figure to an Optuna trial each epoch and stop the fit when the study prunes it.

Owns the exchange with the trial (``trial.report(value, epoch)``, ``trial.should_prune()``)
and ending a pruned fit cleanly: the epoch finishes (every callback sees it, checkpoints are
written), training stops, the history's last row says why (a ``pruned`` column), and, once
``fit`` has closed its output, ``optuna.TrialPruned`` is raised so that the study records
the trial as pruned. Optuna is an optional dependency (``pip install torchfit-keras[optuna]``),
imported when a trial is pruned, never at ``import torchfit``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

from .base import Callback
from .monitor import check_monitor, main_process


class OptunaPruning(Callback):
    """Report ``monitor`` to ``trial`` after each epoch; stop training when the trial should be pruned.

    >>> # def objective(trial):
    >>> #     lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    >>> #     model = torchfit.Model(make_net()).compile(nn.CrossEntropyLoss(), torch.optim.Adam(..., lr=lr))
    >>> #     history = model.fit(20, dl_train, dl_val, callbacks=[OptunaPruning(trial, monitor="val_loss")])
    >>> #     return history["val_loss"].min()

    The value is reported with the epoch number as the step. When the study's pruner says
    so, the epoch ends as usual, training stops, the history's last row gets
    ``pruned = "<why>"`` (the column is empty on other rows), a line is printed (``verbose``:
    None prints when fit's ``verbose`` does; True/False always/never), and after fit's last output ``optuna.TrialPruned`` is raised: the objective
    above needs no code of its own and the study records the trial as pruned.
    ``raise_pruned=False`` returns from ``fit`` instead; read ``pruned`` / ``reason`` and raise
    yourself. Epochs without ``monitor`` (``fit(validation_freq=...)``) report nothing.
    """

    # After every other callback, so that loggers and printers have closed before on_train_end raises.
    runs_last = True
    # Copies (TorchfitClassifier copies its callbacks for every fit) report to the caller's trial.
    shared_on_copy = ("trial", "sink")

    def __init__(self, trial: Any, monitor: str = "val_loss", raise_pruned: bool = True, verbose: Optional[bool] = None,
                 sink: Callable[[str], None] = print):
        if not (callable(getattr(trial, "report", None)) and callable(getattr(trial, "should_prune", None))):
            raise TypeError(f"OptunaPruning needs the optuna trial your objective receives (with report() and "
                            f"should_prune()); got {type(trial).__name__}")
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be the name of an epoch figure such as 'val_loss'; got {monitor!r}")
        self.trial = trial
        self.monitor = monitor
        self.raise_pruned = bool(raise_pruned)
        self.verbose = verbose
        self.sink = sink
        self.pruned = False
        self.pruned_epoch: Optional[int] = None
        self.reason: Optional[str] = None

    def set_params(self, params: dict) -> None:
        super().set_params(params)
        check_monitor("OptunaPruning", self.monitor, params)

    def on_train_begin(self, logs: dict) -> None:
        self.pruned, self.pruned_epoch, self.reason = False, None, None

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        value = logs.get(self.monitor)
        if value is None:
            return
        epoch = int(logs.get("epoch", self.model.epoch))  # the history's 1-based number, as the trial's step
        if isinstance(value, float) and math.isnan(value):
            value = float("nan")  # optuna accepts NaN and prunes on it with its default pruners
        self.trial.report(value, epoch)
        if not self.trial.should_prune():
            return
        number = getattr(self.trial, "number", "?")
        self.pruned, self.pruned_epoch = True, epoch
        self.reason = (f"Optuna pruned trial {number} at epoch {epoch}: {self.monitor}={value:.6g} is behind the "
                       "study's other trials at this epoch")
        rows = self.model.training_state.history  # History recorded this epoch first: its row says why
        if rows and rows[-1].get("epoch") == epoch:
            rows[-1]["pruned"] = self.reason
        self.model.stop_training = True
        verbose = self.params.get("verbose", 0) if self.verbose is None else self.verbose
        if verbose and main_process(self.model):
            self.sink(self.reason + ".")

    def on_train_end(self, logs: dict) -> None:
        if self.pruned and self.raise_pruned:
            import optuna

            raise optuna.TrialPruned(self.reason)
