"""The training state: how far a model has trained, and what continuing needs.

Owns ``TrainingState``: the epochs finished and optimizer steps taken (across fit
calls), the epoch and step histories, the state the last fit left outside the
model (RNG, loaders' generators, callbacks' counters: what the next checkpoint
writes) and a checkpoint's state waiting for the next fit. It has one owner,
``Model.training_state``; everything else asks it through its methods:
the history callbacks ``record_epoch`` / ``record_step``, checkpoints
``checkpoint_entries`` / ``load_checkpoint_entries``, and whoever must put a model
back as it was (``lr_find``, a failed checkpoint load, the notebook launcher
handing rank 0's state back) takes a ``copy()`` and ``restore``s it whole.

It knows nothing of nets, optimizers or files: those belong to the model, the
strategy and ``checkpoint``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional

Row = Dict[str, Any]


@dataclasses.dataclass
class TrainingState:
    """How far training has come; ``model.training_state`` (``model.epoch`` and friends read it).

    >>> state = TrainingState()
    >>> state.record_epoch({"epoch": 1, "loss": 0.5}); state.epoch = 1
    >>> saved = state.copy()
    >>> state.record_epoch({"epoch": 2, "loss": 0.4}); state.epoch = 2
    >>> state.restore(saved); (state.epoch, len(state.history))
    (1, 1)
    """

    epoch: int = 0  # epochs finished, across fit calls
    global_step: int = 0  # optimizer steps taken, across fit calls
    history: List[Row] = dataclasses.field(default_factory=list)  # one row per finished epoch
    step_history: List[Row] = dataclasses.field(default_factory=list)  # one row per logging point
    # RNG, loaders' generators and callbacks' state as the last fit left them (or as a checkpoint
    # loaded them): what save_checkpoint writes outside a fit.
    last_fit: Optional[Dict[str, Any]] = None
    # A loaded checkpoint's loader and callback state, handed to the next fit (once).
    pending_resume: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------ recording
    def record_epoch(self, logs: Mapping[str, Any]) -> None:
        """The epoch's logs as its history row. fit hands a fresh dict per epoch and the row is
        that dict, so keys later callbacks add in ``on_epoch_end`` reach the history (Keras' History
        runs after the user's callbacks)."""
        self.history.append(logs if type(logs) is dict else dict(logs))

    def record_step(self, row: Mapping[str, Any]) -> None:
        self.step_history.append(dict(row))

    def count_step(self) -> None:
        self.global_step += 1

    def take_pending_resume(self) -> Optional[Dict[str, Any]]:
        """The loaded checkpoint's state for this fit, handed out once."""
        pending, self.pending_resume = self.pending_resume, None
        return pending

    # ------------------------------------------------------------- copies
    def copy(self) -> "TrainingState":
        """A copy that later training does not change (rows copied; the fit states are never mutated)."""
        return TrainingState(self.epoch, self.global_step, [dict(r) for r in self.history],
                             [dict(r) for r in self.step_history], self.last_fit, self.pending_resume)

    def restore(self, saved: "TrainingState") -> None:
        """Become ``saved`` (in place: whoever holds this object sees the change)."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(saved.copy(), field.name))

    # --------------------------------------------------------- checkpoints
    def checkpoint_entries(self) -> Dict[str, Any]:
        """The counters and histories as a checkpoint keeps them (rows still to be made plain)."""
        return {"epoch": int(self.epoch), "global_step": int(self.global_step),
                "history": self.history, "step_history": self.step_history}

    def load_checkpoint_entries(self, ckpt: Mapping[str, Any]) -> None:
        """Take a checked checkpoint's counters, histories and fit state; the next fit resumes from it."""
        self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.history = [dict(row) for row in ckpt["history"]]
        self.step_history = [dict(row) for row in ckpt.get("step_history", [])]
        state = {"callbacks": ckpt["callbacks"], "loaders": ckpt["loaders"], "rng": ckpt["rng"],
                 "mid_epoch": ckpt["mid_epoch"], "train_stream": ckpt.get("train_stream")}
        self.last_fit = state  # saving again before the next fit writes the same state
        self.pending_resume = state  # the next fit hands loaders and callbacks their part


def state_field(name: str, doc: str) -> property:
    """A ``Model`` attribute that reads and writes ``model.training_state.<name>`` (``model.epoch``...)."""

    def get(model: Any) -> int:
        return getattr(model.training_state, name)

    def set_(model: Any, value: int) -> None:
        setattr(model.training_state, name, int(value))

    return property(get, set_, doc=doc)
