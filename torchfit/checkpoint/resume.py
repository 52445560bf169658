"""Loading as a user asks for it: a file or a sharded directory (``load``), and
``fit(resume_from=...)`` in two steps (``Resume``: read and check first, apply after fit's own checks)."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

from . import sharded
from .loading import apply, read_checked
from .saving import PathLike
from .state import check_callbacks_state


def load(model: Any, path: PathLike, strategy: Any) -> None:
    """Restore everything ``save`` wrote into a compiled ``model``; the next ``fit`` continues from it.

    Every entry is checked against this model, and every tensor against the
    file's digest, before anything changes (``check``); a failure while applying
    (Ctrl-C, out of memory) rolls back what was applied. Either way a failed
    load leaves the model as it was. A directory is a sharded checkpoint
    (``torchfit.distributed.save_sharded``), checked and loaded by ``torch.distributed.checkpoint``.
    """
    if os.path.isdir(path):
        sharded.load(model, path, strategy)
        return
    apply(model, read_checked(model, path), path, strategy, stacklevel=4)



class Resume:
    """``fit(resume_from=path)`` in two steps (Keras' BackupAndRestore): ``plan`` reads and checks
    the file (nothing applied), fit checks its callbacks and paths, then ``apply`` loads it."""

    def __init__(self, path: PathLike, ckpt: Optional[Dict[str, Any]], epochs_left: int, message: Optional[str]):
        self.path, self.ckpt, self.epochs_left, self.message = path, ckpt, epochs_left, message

    @property
    def start(self) -> Optional[int]:
        """The epoch the resumed run continues after, or None for a fresh start."""
        return None if self.ckpt is None else int(self.ckpt["epoch"])

    @classmethod
    def plan(cls, model: Any, path: PathLike, epochs: int) -> "Resume":
        """``epochs`` is the run's total; a missing file means a fresh start of all of them."""
        if not os.path.exists(path):
            return cls(path, None, epochs, None)
        if os.path.isdir(path):  # a sharded directory: every file and tensor checked against the model now
            ckpt = sharded.read_checked(model, path)
        else:
            ckpt = read_checked(model, path)
        done = int(ckpt["epoch"])
        message = f"Resuming from {os.fspath(path)}: {done} of {epochs} epoch(s) done."
        mid = ckpt["mid_epoch"]
        if mid is not None and mid.get("positions"):
            message += f" Epoch {mid['epoch']} continues after batch {mid['positions'][0]['batch']}."
        if bool(ckpt["stop_training"]):  # e.g. early stopping ended the saved run: it is finished
            epochs = done
            message += " Training had been stopped (model.stop_training) at that epoch: nothing to resume."
        return cls(path, ckpt, max(0, epochs - done), message)

    def apply(self, model: Any, callbacks: Sequence[Any], strategy: Any) -> None:
        """Check the callbacks' saved states against this fit's callbacks, then load everything."""
        if self.ckpt is not None:
            check_callbacks_state(self.ckpt, callbacks)
            if os.path.isdir(self.path):
                sharded.load(model, self.path, strategy, extra=self.ckpt)  # checked in plan
            else:
                apply(model, self.ckpt, self.path, strategy, stacklevel=5)


