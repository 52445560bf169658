"""Records each finished epoch's figures into ``model.history``."""
from __future__ import annotations

from .base import Callback


class History(Callback):
    """Appends the epoch logs (a dict of floats) to the model's history rows.

    Always first in fit's callback list, so callbacks after it (checkpoints) see
    the epoch already recorded.
    """

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self.model._history_rows.append(dict(logs))
