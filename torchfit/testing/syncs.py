"""Finding host syncs: the aten ops that would block the host on a GPU, recorded while code runs on the CPU.

Owns the list of syncing ops, the recorder (a ``TorchDispatchMode``: it sees every op,
whoever calls it, so a ``.item()`` hidden inside a library function is caught too) and
``HostSyncAudit``, the recorder plus a callback that knows where in a fit each op ran.
A sync inside a training or validation step, outside a logging point, is a defect: it
stalls a GPU once per step. What a fit does at its logging points (reading running
figures back) and once per fit (the first batch's checks) is allowed.

It runs on the CPU, so tests find syncs without a GPU: the same ops block the host on
CUDA (each calls ``c10::cuda::warn_or_error_on_sync``, which
``torch.cuda.set_sync_debug_mode`` turns into an error there).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..callbacks.base import Callback, is_logging_point

__all__ = ["DEVICE_SYNCING_OPS", "SyncRecorder", "HostSyncAudit", "HostSync", "is_device_sync"]

# Ops whose result the host must wait for: a value read back, or an output whose shape
# depends on values (nonzero, masked_select, unique...).
DEVICE_SYNCING_OPS = frozenset({
    "_local_scalar_dense",  # .item(), float(t), bool(t), int(t), .tolist() of a 0-d tensor
    "is_nonzero", "equal", "nonzero", "masked_select", "bincount", "histc", "histogram",
    "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive",
    "repeat_interleave",
})
# Indexing with a boolean mask runs nonzero inside the kernel.
MASK_INDEXING_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
# torch code that reads CPU-only tensors: the optimizers' step counters (on the CPU even for
# CUDA parameters, with capturable=False, the default) and the DataLoader's base seed.
# Neither touches a device.
_TORCH_DIR = os.path.dirname(torch.__file__)
CPU_ONLY_READERS = tuple(os.path.join(_TORCH_DIR, *parts) + os.sep for parts in (("optim",), ("utils", "data")))
_NOT_THE_CULPRIT = (_TORCH_DIR + os.sep, os.path.dirname(__file__) + os.sep)


def _is_mask(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.dtype in (torch.bool, torch.uint8)
    if isinstance(obj, (list, tuple)):
        return any(_is_mask(o) for o in obj)
    return False


def is_device_sync(name: str, args: tuple) -> bool:
    """Whether the aten op ``name`` called with ``args`` makes the host wait for the device."""
    return name in DEVICE_SYNCING_OPS or (name in MASK_INDEXING_OPS and _is_mask(args[1:]))


def _caller(frame: Any) -> Tuple[bool, str]:
    """(from a CPU-only reader, 'file:line in function' of the first frame outside torch and this package)."""
    where = ""
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(CPU_ONLY_READERS):
            return True, ""
        if not where and not filename.startswith(_NOT_THE_CULPRIT):
            where = f"{filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return False, where


class SyncRecorder(TorchDispatchMode):
    """A dispatch mode that calls ``on_sync(op_name, where)`` for each op that would sync on a GPU.

    ``where`` is ``"file:line in function"`` of the innermost caller outside torch. Reads of
    CPU-only tensors by torch itself (optimizer step counters, the DataLoader's seed) are
    skipped. ``ops`` counts every op seen (a recorder that saw few ops proves nothing).

    >>> seen = []
    >>> with SyncRecorder(lambda op, where: seen.append(op)):
    ...     _ = torch.ones(3).sum().item()
    >>> seen
    ['_local_scalar_dense']
    """

    def __init__(self, on_sync: Callable[[str, str], None]):
        super().__init__()
        self.on_sync = on_sync
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        self.ops += 1
        name = func.overloadpacket.__name__
        if is_device_sync(name, args):
            from_reader, where = _caller(sys._getframe(1))
            if not from_reader:
                self.on_sync(name, where)
        return func(*args, **(kwargs or {}))


class HostSync(NamedTuple):
    """One sync found inside a step: the op, the phase (``train``/``validation``), epoch, batch and the caller."""

    op: str
    phase: str
    epoch: int
    batch: int
    where: str

    def __str__(self) -> str:
        return f"{self.op} in {self.phase} step (epoch {self.epoch}, batch {self.batch}) at {self.where}"


class HostSyncAudit(Callback):
    """Fails a fit that reads device values back inside its steps, outside the logging points.

    Pass it to ``fit`` as a callback and run the fit inside it; ``check()`` then raises an
    ``AssertionError`` naming each op, the step and the line that made it::

        audit = HostSyncAudit()
        with audit:
            model.fit(2, dl_train, dl_val, callbacks=[audit])
        audit.check()

    The pytest fixture ``no_host_sync`` (``torchfit.testing.plugin``) does the ``with`` and the
    ``check`` for a whole test. Allowed: the logging points of a training epoch (every
    ``log_step_freq`` steps the running figures are read back), everything between steps
    (epoch ends, the checks before training) and the first training step of each fit (where
    torchfit checks the labels and the metrics once). A fit of a single step therefore proves
    nothing: give it two batches or more.
    """

    def __init__(self) -> None:
        self.found: List[HostSync] = []
        self.fits = 0
        self._window: Optional[Tuple[str, int, int]] = None  # (phase, epoch, batch) while a step runs
        self._pending: List[HostSync] = []
        self._first_train_step = False
        self._epoch = self._batch = self._val_batch = 0
        self._recorder = SyncRecorder(self._record)
        self._active = False

    # ---------------------------------------------------------------- recording
    def __enter__(self) -> "HostSyncAudit":
        self._recorder.__enter__()
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._active = False
        self._recorder.__exit__(*exc)

    @property
    def ops(self) -> int:
        """Ops the recorder saw (every op, syncing or not)."""
        return self._recorder.ops

    def _record(self, op: str, where: str) -> None:
        if self._window is not None:
            phase, epoch, batch = self._window
            self._pending.append(HostSync(op, phase, epoch, batch, where))

    # ------------------------------------------------------------------- hooks
    def on_train_begin(self, logs: dict) -> None:
        if not self._active:
            raise RuntimeError("HostSyncAudit is a fit callback that records only inside `with audit:`; run the "
                               "fit in it (or use the no_host_sync fixture, which does)")
        self.fits += 1
        self._first_train_step = True

    # Epochs and batches are numbered here, 1-based as the history numbers epochs, whatever base
    # the hooks' arguments use (Keras passes 0-based ones).
    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        self._epoch = self.model.epoch + 1
        self._batch = 0

    def on_train_batch_begin(self, batch: int, logs: dict) -> None:
        self._batch += 1
        self._open("train", self._batch)

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        # figures are read back at logging points: that is the design, not a stray sync
        self._close(excused=is_logging_point(logs) or self._first_train_step)
        self._first_train_step = False

    def on_test_begin(self, logs: dict) -> None:
        self._val_batch = 0

    def on_test_batch_begin(self, batch: int, logs: dict) -> None:
        self._val_batch += 1
        self._open("validation", self._val_batch)

    def on_test_batch_end(self, batch: int, logs: dict) -> None:
        self._close(excused=False)

    def on_exception(self, exception: BaseException) -> None:
        self._window, self._pending = None, []

    def _open(self, phase: str, batch: int) -> None:
        self._window = (phase, self._epoch, batch)
        self._pending = []

    def _close(self, excused: bool) -> None:
        if not excused:
            self.found.extend(self._pending)
        self._window, self._pending = None, []

    # ------------------------------------------------------------------- verdict
    def check(self) -> None:
        """Raise ``AssertionError`` naming every sync found inside a step (at most ten, then a count)."""
        if self.fits == 0:
            raise AssertionError("HostSyncAudit saw no fit: pass it to fit, model.fit(..., callbacks=[audit]) "
                                 "(with the no_host_sync fixture: callbacks=[no_host_sync])")
        if not self.found:
            return
        distinct = list(dict.fromkeys((s.op, s.where) for s in self.found))
        lines = [f"  {op} at {where}" for op, where in distinct[:10]]
        if len(distinct) > 10:
            lines.append(f"  ... and {len(distinct) - 10} more")
        first = self.found[0]
        raise AssertionError(
            f"{len(self.found)} host sync(s) inside training/validation steps, outside the logging points (first: "
            f"{first.phase} step at epoch {first.epoch}, batch {first.batch}); each one stalls a GPU every step:\n"
            + "\n".join(lines)
            + "\nKeep figures on the device (loss.detach(), running sums as tensors) and read them back at the "
              "logging points (torchfit's metrics do: return the tensors in StepResult), or move the read to a "
              "callback's on_epoch_end"
        )
