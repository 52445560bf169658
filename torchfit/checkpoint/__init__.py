"""Checkpoints: everything needed to continue training exactly, in a file that
``torch.load(..., weights_only=True)`` reads.

Owns the checkpoint's contents and format, the atomic write (temporary file,
fsync, ``os.replace``), checking a file before anything is changed on load, and
collecting / restoring the state that lives outside the net and the optimizer:
RNG states, the generators of the loaders a fit used, and the callbacks'
``state_dict``s. *When* to write is ``ModelCheckpoint``'s business; *when* to
load is the user's, or ``fit(resume_from=...)``'s through ``resume``.

What a full checkpoint holds (plain containers and tensors only, no pickled
objects)::

    {"torchfit_checkpoint": 1, "epoch": 2, "global_step": 14, "stop_training": False,
     "net": net.state_dict(), "optimizer": optimizer.state_dict(),
     "scaler": GradScaler.state_dict() or None, "precision": "32",
     "history": [{"epoch": 1, "loss": 0.9, ...}, ...], "step_history": [{...}, ...],
     "callbacks": {"EarlyStopping": {...}, "LearningRateScheduler": {...}},
     "loaders": {"dl_train": [generator states], "dl_val": [...]},
     "rng": {"torch": ..., "cuda": [...], "numpy": {...}, "python": {...}},
     "mid_epoch": None or {"epoch": 3, "positions": [per rank: batches done, RNG and loader origin,
                                                     running figures, accumulation window]},
     "train_stream": None or {"origin": ..., "drawn": 7},  # steps_per_epoch's carried iterator
     "optimizer_class": "Adam", "digest": {"net['0.weight']": "<sha256 hex>", ...}}

Check, then apply: ``load`` reads the file (``weights_only``, on the CPU),
checks every entry against this model (``check``: types, the net's keys,
shapes and dtypes, the optimizer's class and groups, RNG and loader states,
history rows) and every tensor against the digest written with it, and only
then changes anything; if applying still fails (Ctrl-C, a device out of
memory) everything applied so far is rolled back. ``save`` checks the path
and turns callbacks' state and the history into plain values (``to_plain``)
before the first byte is written, then replaces the file atomically.

The training state is taken as of the moment of saving during a fit (at an
epoch end that is after every callback's ``on_epoch_end``: ``ModelCheckpoint``
runs last), and as of the end of the last fit when saving outside one.

This package knows the format only: the model's counters and histories come from its
``TrainingState``, whole tensors from the call's strategy (``torchfit.distributed``: a
sharded net is gathered there), and ``sharded`` is the directory format for nets too
large to gather.
"""
from ..errors import CheckpointError
from .loading import apply, apply_training_state, check, read, read_checked
from .resume import Resume, load
from .saving import (MARKER, VERSION, atomic_save, build, build_extra, digest, full_state, run_state, save,
                     tensor_sha256, to_plain)
from .state import (callback_keys, callbacks_state, check_callbacks_state, preserved_rng, restore_callbacks,
                    restore_loaders, rng_state, set_rng_state)

__all__ = [
    "MARKER", "VERSION", "CheckpointError", "Resume", "apply", "apply_training_state", "atomic_save", "build",
    "build_extra", "callback_keys", "callbacks_state", "full_state",
    "check", "check_callbacks_state", "digest", "load", "preserved_rng", "read", "read_checked",
    "restore_callbacks", "restore_loaders", "rng_state", "run_state", "save", "set_rng_state", "tensor_sha256",
    "to_plain",
]
