"""``BackupAndRestore``: run the same script again and training continues where it stopped.

Owns Keras' BackupAndRestore (a backup written at epoch ends or every N batches, taken up by the
next fit with the same callback, removed once a run finishes) and preemption: on SIGTERM (or
the signals named) the current step finishes, the backup is written at that batch, the
callbacks' ``on_train_end`` run, and fit exits with a documented status. Under torchrun the
ranks agree at the next logging point, so that all of them stop and save at the same step.
What goes into the file, and resuming from the exact batch, are ``torchfit.checkpoint``'s and
``torchfit.resuming``'s.
"""
from __future__ import annotations

import numbers
import os
import signal
import threading
import warnings
from typing import Any, Dict, Optional, Sequence, Union

from .. import checkpoint
from ..files import check_writable
from .base import Callback, is_logging_point

PathLike = Union[str, "os.PathLike[str]"]
BACKUP_NAME = "backup.pt"


def preempted_status(signum: int) -> int:
    """The exit status of a preempted fit: 128 + the signal's number, as a shell reports a process
    the signal ended (143 for SIGTERM), so schedulers and torchrun see that it did not finish.

    >>> preempted_status(signal.SIGTERM)
    143
    """
    return 128 + int(signum)


class BackupAndRestore(Callback):
    """Keras' BackupAndRestore: back up the whole training state, and restore it when the same fit runs again.

    >>> backup = BackupAndRestore("backup", save_freq=100)   # every 100 batches, and on SIGTERM
    >>> # model.fit(20, dl_train, dl_val, callbacks=[backup])   # killed? run the same line again

    A fit with this callback resumes from ``backup_dir/backup.pt`` when it exists (as
    ``resume_from=`` does: ``epochs`` is the run's total), exactly from the batch it was written
    after. ``save_freq="epoch"`` writes it at each epoch's end, an int every that many training
    batches; either way it is written atomically, so a crash mid-write keeps the previous one.
    A run that finishes (all epochs, or stopped by a callback) removes it
    (``delete_checkpoint=False`` keeps it); a run that fails or is interrupted keeps it.

    Preemption: while fit runs, ``signals`` (None: SIGTERM; add e.g. ``signal.SIGUSR1`` for
    Slurm's ``--signal``) no longer kill the process at once. The step in progress finishes, the
    backup is written after it, ``on_train_end`` runs, and fit raises ``SystemExit`` with status
    ``128 + signal`` (143 for SIGTERM; ``exit_code=`` sets another, ``None`` returns from fit
    instead). Under torchrun every rank gets the signal; the ranks agree at the next logging
    point (every ``log_step_freq`` batches) and all save and stop at that step. ``signals=()``
    leaves signals alone. Handlers are installed only from the main thread, and the previous
    ones are put back when fit ends.
    """

    rank_zero_only = True
    saves_checkpoints = True
    runs_last = True

    def __init__(self, backup_dir: PathLike, save_freq: Union[str, int] = "epoch", delete_checkpoint: bool = True,
                 signals: Optional[Sequence[int]] = None, exit_code: Any = "signal", verbose: int = 1):
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, numbers.Integral)
                                     or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch' or a number of batches >= 1 (Keras); got {save_freq!r}")
        signals = (signal.SIGTERM,) if signals is None else tuple(signals)
        for s in signals:
            if not isinstance(s, int) or isinstance(s, bool):
                raise TypeError(f"signals must be signal numbers such as signal.SIGTERM; got {s!r}")
        if exit_code not in ("signal", None) and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
            raise TypeError(f"exit_code must be an int, 'signal' (128 + the signal) or None; got {exit_code!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.path = os.path.join(self.backup_dir, BACKUP_NAME)
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)  # numpy ints too
        self.delete_checkpoint = bool(delete_checkpoint)
        self.signals = signals
        self.exit_code = exit_code
        self.verbose = verbose
        self._since_save = 0
        self._previous: Dict[int, Any] = {}
        self._signalled: Optional[int] = None
        self._preempted = False
        self._failed = False

    # what fit asks before it starts
    @property
    def saves_mid_epoch(self) -> bool:  # type: ignore[override]
        return self.save_freq != "epoch" or bool(self.signals)

    def resume_path(self) -> Optional[str]:
        """The backup the next fit resumes from, or None when there is none (a fresh start)."""
        return self.path if os.path.exists(self.path) else None

    def set_params(self, params: dict) -> None:
        super().set_params(params)
        check_writable(f"BackupAndRestore({self.backup_dir!r})", self.path)

    # the run
    def on_train_begin(self, logs: dict) -> None:
        self._since_save, self._signalled, self._preempted, self._failed = 0, None, False, False
        self._install()

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        if self.save_freq != "epoch":
            self._since_save += 1
            if self._since_save >= self.save_freq:
                self._since_save = 0
                self._save()
        if self.signals and not self._preempted and self._agreed_signal(logs) and self.model.run.resumable_here():
            self._preempt()  # (inside a window FSDP cannot keep: at the next batch that closes one)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.save_freq == "epoch":
            self._save()

    def on_exception(self, exception: BaseException) -> None:
        self._failed = True  # the backup stays for the next run
        self._uninstall()

    def on_train_end(self, logs: dict) -> None:
        self._uninstall()
        run = self.model.run
        if self._preempted:  # after the others' on_train_end, fit ends the process (a run that finished
            run.exit_code = self._exit_status(self._signalled)  # before the signal was acted on returns)
        if self._preempted or self._failed or not self.delete_checkpoint:
            return
        if run.config.strategy.writes_files and os.path.exists(self.path):
            os.remove(self.path)  # the run finished: the next one starts afresh

    def state_dict(self) -> dict:
        return {"since_save": self._since_save} if self.save_freq != "epoch" else {}

    def load_state_dict(self, state: dict) -> None:
        self._since_save = int(state.get("since_save", 0))

    # preemption
    def _install(self) -> None:
        self._previous = {}
        if not self.signals or threading.current_thread() is not threading.main_thread():
            return
        for s in self.signals:
            try:
                self._previous[s] = signal.signal(s, self._on_signal)
            except (ValueError, OSError) as exc:  # e.g. SIGKILL, or an embedded interpreter
                warnings.warn(f"BackupAndRestore cannot handle signal {s} ({exc}); it will end the process as before",
                              RuntimeWarning, stacklevel=2)

    def _uninstall(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signalled = signum  # acted on after the step in progress

    def _agreed_signal(self, logs: dict) -> bool:
        strategy = self.model.run.config.strategy
        if strategy.world_size == 1:
            return self._signalled is not None
        if not is_logging_point(logs):  # every rank is at the same step only here
            return False
        if strategy.reducer.any(self._signalled is not None):  # every rank stops at this same step
            if self._signalled is None:  # this rank's signal is still on its way
                self._signalled = self.signals[0]
            return True
        return False

    def _preempt(self) -> None:
        self._save()  # before stop_training: the backup continues the run, it does not end it
        self._preempted = True
        self.model.stop_training = True
        run = self.model.run
        if self.verbose and run.config.strategy.writes_files:
            name = signal.Signals(self._signalled).name if self._signalled in signal.Signals._value2member_map_ else self._signalled
            print(f"Preempted ({name}) after batch {run.position} of epoch {run.epoch}: the training state is in "
                  f"{self.path}; run the same fit again to continue from there.", flush=True)

    def _exit_status(self, signum: int) -> Optional[int]:
        if self.exit_code == "signal":
            return preempted_status(signum)
        return self.exit_code

    def _save(self) -> None:
        checkpoint.save(self.model, self.path, self.model.run.config.strategy,
                        owner=f"BackupAndRestore({self.backup_dir!r})")
