"""Where a fit's time goes: each epoch's wall time split into the parts of a training step.

Owns the ``Profiler`` callback: a timeline of markers laid on the hooks a fit
already has (the callback hooks around each batch, the net's forward hooks, the
optimizer's step hooks, ``on_backward_end``) and, from it, one row per epoch.
It edits no loop: it wraps the run's hook dispatchers while a fit runs and
takes every wrapper and hook away when the fit ends, by error too.

The markers cut the epoch into consecutive stretches, each charged to one part,
so the parts add up to the epoch's wall time (``other`` holds the few stretches
no marker names). In one training batch, in the order the loop runs it::

    data       next(loader): waiting for the batch (and, for the first batch, starting the loader)
    callbacks  on_train_batch_begin
    copy       the move to the device and the start of the step (split, zero_grad)
    forward    net(x)                                    (the net's forward hooks)
    backward   the loss and loss.backward()              (until on_backward_end)
    callbacks  on_backward_end
    optimizer  clipping and optimizer.step()             (the optimizer's step hooks)
    metrics    the step's return and the metrics' update on the device
    sync       instead of metrics at a logging point: the running figures read back (the host sync)
    callbacks  on_train_batch_end

After the last batch the end of the loader and the epoch's figures count as
``sync``; the validation pass (``on_test_begin`` to ``on_test_end``) as
``validation``; ``on_epoch_begin`` / ``on_epoch_end`` as ``callbacks``.

On the CPU the markers read ``time.perf_counter``. On a GPU each marker records a
CUDA event on the current stream (no host sync); the events are read once, at the
epoch's end, so the parts split the GPU's timeline: a stretch in which the GPU
waited for the host (for data, for a callback) is charged to what the host was
doing, and work the GPU ran while the host was ahead is charged to the part that
queued it.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import pandas as pd
import torch

from .base import Callback, is_logging_point

__all__ = ["Profiler", "PARTS"]

PARTS = ("data", "copy", "forward", "backward", "optimizer", "metrics", "sync", "callbacks", "validation", "other")
_DATA, _COPY, _FORWARD, _BACKWARD, _OPTIMIZER, _METRICS, _SYNC, _CALLBACKS, _VALIDATION, _OTHER = range(len(PARTS))

# the run's hooks whose dispatchers are wrapped, and the part each opens on entry and on exit
_WRAPPED = {
    "on_epoch_begin": (_CALLBACKS, _DATA),
    "on_train_batch_begin": (_CALLBACKS, _COPY),
    "on_train_batch_end": (_CALLBACKS, _DATA),
    "on_test_begin": (_VALIDATION, _VALIDATION),
    "on_test_end": (_VALIDATION, _OTHER),
    "on_epoch_end": (_CALLBACKS, None),  # None: the epoch ends after the last epoch-end callback
}


class _Clock:
    """Consecutive stretches of one epoch, each charged to a part; host clock or CUDA events."""

    def __init__(self, device: Optional[torch.device]):
        self.cuda = device is not None and device.type == "cuda"
        self.device = device
        self.part = _OTHER
        self.totals = [0.0] * len(PARTS)
        self.last = 0.0
        self.events: List[Any] = []  # CUDA: one event per marker, reused across epochs
        self.parts: List[int] = []  # CUDA: the part each marker closes
        self.used = 0

    def start(self, part: int) -> None:
        self.totals = [0.0] * len(PARTS)
        self.part = part
        self.used = 0
        self.parts.clear()
        if self.cuda:
            self._record()
        else:
            self.last = time.perf_counter()

    def mark(self, part: int) -> None:
        """Close the running stretch (charged to the part it was opened for) and open ``part``."""
        if self.cuda:
            self.parts.append(self.part)
            self._record()
        else:
            now = time.perf_counter()
            self.totals[self.part] += now - self.last
            self.last = now
        self.part = part

    def relabel(self, part: int) -> None:
        """Charge the running stretch to ``part`` instead (a logging point turns metrics into sync)."""
        self.part = part

    def finish(self) -> List[float]:
        """The epoch's seconds per part; on CUDA the one host sync of the profiler, per epoch."""
        self.mark(_OTHER)
        if self.cuda:
            self.events[self.used - 1].synchronize()
            for i, part in enumerate(self.parts):
                self.totals[part] += self.events[i].elapsed_time(self.events[i + 1]) / 1000.0
        return self.totals

    def _record(self) -> None:
        if self.used == len(self.events):
            self.events.append(torch.cuda.Event(enable_timing=True))
        self.events[self.used].record(torch.cuda.current_stream(self.device))  # the model's device's stream
        self.used += 1


class Profiler(Callback):
    """Split each epoch's wall time into data, copy, forward, backward, optimizer, metrics, sync,
    callbacks, validation and other; ``frame()`` has one row per epoch, ``plot()`` stacks them.

    >>> # prof = Profiler()
    >>> # model.fit(3, dl_train, dl_val, callbacks=[prof])
    >>> # prof.frame()           # epoch, wall, steps, data, copy, forward, ... (seconds)
    >>> # prof.plot()            # a stacked bar per epoch
    >>> # Profiler(trace=(10, 20))  # also a torch.profiler trace of training batches 10..20

    The parts tile the epoch, so they add up to its wall time (``wall``, measured
    on the host: on a GPU the parts split the GPU's timeline and add up to it
    within the launch of the first and the wait for the last event). Measuring
    costs about 10 µs per training step on a CPU (docs/inspecting.md).
    ``trace=(a, b)``: a ``torch.profiler`` trace of training batches a to b
    (1-based, counted across the fit's epochs) is written to ``trace_dir`` as a
    ``*.pt.trace.json`` file that TensorBoard's profiler plugin and Perfetto
    open; ``trace_path`` names it. Those batches' timings include the tracer's
    own cost. The net's forward hooks mark the forward pass: a net compiled with
    ``jit_compile`` runs its forward and backward as compiled graphs, and the split
    between them is then approximate.
    """

    def __init__(self, trace: Optional[Tuple[int, int]] = None,
                 trace_dir: Union[str, "os.PathLike[str]"] = "torchfit_trace"):
        if trace is not None:
            if (not isinstance(trace, (tuple, list)) or len(trace) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in trace)
                    or not 1 <= trace[0] <= trace[1]):
                raise ValueError(f"Profiler(trace=...) takes (first, last) training batches, 1 <= first <= last; "
                                 f"got {trace!r}, e.g. trace=(10, 20)")
        self.trace = tuple(trace) if trace is not None else None
        self.trace_dir = os.fspath(trace_dir)
        self.trace_path: Optional[str] = None
        self.rows: List[Dict[str, float]] = []
        self._clock: Optional[_Clock] = None
        self._undo: List[Callable[[], None]] = []
        self._epoch_start = 0.0
        self._epoch_steps = 0
        self._batches = 0  # training batches of this fit, for the trace window
        self._tracer: Any = None
        self._in_train = False  # inside a training pass: the forward and step hooks mark only there

    # ------------------------------------------------------------ results
    def frame(self) -> pd.DataFrame:
        """One row per finished epoch: ``epoch``, ``wall`` and ``steps``, then seconds per part."""
        return pd.DataFrame(self.rows, columns=["epoch", "wall", "steps", *PARTS])

    def plot(self, ax: Any = None, share: bool = False) -> Any:
        """A stacked bar per epoch (seconds, or fractions of the wall time with ``share=True``);
        returns the matplotlib Figure."""
        from ..plot import _figure_class, _import_matplotlib

        figure_module = _import_matplotlib()
        df = self.frame()
        if df.empty:
            raise ValueError("Profiler.plot: no epoch has been profiled yet; fit with callbacks=[profiler] first")
        parts = [p for p in PARTS if (df[p] > 0).any()]
        values = df[parts].div(df["wall"], axis=0) if share else df[parts]
        if ax is None:
            fig = _figure_class(figure_module)(figsize=(7, 3.5), layout="constrained")
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        x = [str(e) for e in df["epoch"]]
        bottom = [0.0] * len(df)
        import matplotlib

        colors = matplotlib.colormaps["tab10"]
        for part in parts:
            heights = values[part].tolist()
            ax.bar(x, heights, bottom=bottom, width=0.8, label=part, color=colors(PARTS.index(part)))
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set_xlabel("epoch")
        ax.set_ylabel("share of the epoch" if share else "seconds")
        ax.set_title("Where each epoch's time goes")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
        return fig

    # ------------------------------------------------------------ hooks
    def on_train_begin(self, logs: dict) -> None:
        self._uninstall()
        run = self.model.run
        if run is None:
            raise RuntimeError("Profiler runs inside model.fit: pass it as fit(..., callbacks=[Profiler()])")
        self._clock = _Clock(self.model.device)
        self._batches = 0
        self._install(run)

    def on_train_end(self, logs: dict) -> None:
        self._uninstall()

    def on_exception(self, exception: BaseException) -> None:
        self._uninstall()

    # ------------------------------------------------------------ markers
    def _install(self, run: Any) -> None:
        clock = self._clock
        cbs = run.config.callbacks
        mark = clock.mark

        for hook, (enter, leave) in _WRAPPED.items():
            self._wrap(cbs, hook, self._entry(hook, enter), self._exit(hook, leave, run))
        optim = run.config.optim
        if optim is not None and hasattr(optim, "on_backward_end"):
            self._wrap(optim, "on_backward_end", lambda *a: mark(_CALLBACKS), lambda *a: mark(_OPTIMIZER))

        training = self._training_marker

        def forward_pre(module: Any, args: Any) -> None:
            if training():
                mark(_FORWARD)

        def forward_post(module: Any, args: Any, output: Any) -> None:
            if training():
                mark(_BACKWARD)

        net = self.model.net
        handles = [net.register_forward_pre_hook(forward_pre), net.register_forward_hook(forward_post)]
        optimizer = self.model.optimizer
        if optimizer is not None and hasattr(optimizer, "register_step_pre_hook") and optimizer.param_groups:
            def step_pre(*args: Any) -> None:  # returns None: a value would replace step()'s arguments
                if training():
                    mark(_OPTIMIZER)

            def step_post(*args: Any) -> None:
                if training():
                    mark(_METRICS)

            handles += [optimizer.register_step_pre_hook(step_pre), optimizer.register_step_post_hook(step_post)]
        self._undo.extend(h.remove for h in handles)

    def _training_marker(self) -> bool:
        return self._in_train

    def _wrap(self, owner: Any, name: str, before: Callable, after: Callable) -> None:
        original = getattr(owner, name)

        def wrapped(*args: Any) -> Any:
            before(*args)
            try:
                return original(*args)
            finally:
                after(*args)

        setattr(owner, name, wrapped)

        def undo(owner: Any = owner, name: str = name, original: Any = original) -> None:
            setattr(owner, name, original)

        self._undo.append(undo)

    def _entry(self, hook: str, part: int) -> Callable:
        clock = self._clock
        if hook == "on_epoch_begin":
            def enter(epoch: int, logs: Any) -> None:
                self._epoch_start = time.perf_counter()
                self._epoch_steps = 0
                self._in_train = True
                clock.start(part)
            return enter
        if hook == "on_train_batch_begin":
            def enter_batch(batch: int, logs: Any) -> None:
                self._epoch_steps += 1
                self._batches += 1
                if self.trace is not None and self._batches == self.trace[0]:
                    self._start_trace()
                clock.mark(part)
            return enter_batch
        if hook == "on_train_batch_end":
            def enter_batch_end(batch: int, logs: Any) -> None:
                if is_logging_point(logs) and clock.part == _METRICS:  # a logging point: the stretch held the read-back
                    clock.relabel(_SYNC)
                clock.mark(part)
            return enter_batch_end
        if hook == "on_test_begin":
            def enter_test(logs: Any) -> None:
                self._in_train = False
                clock.mark(part)
            return enter_test
        if hook == "on_epoch_end":
            def enter_epoch_end(epoch: int, logs: Any) -> None:
                self._in_train = False
                clock.mark(part)
            return enter_epoch_end
        return lambda *args: clock.mark(part)

    def _exit(self, hook: str, part: Optional[int], run: Any) -> Callable:
        clock = self._clock
        if hook == "on_epoch_end":
            def leave_epoch(epoch: int, logs: Any) -> None:
                wall = time.perf_counter() - self._epoch_start
                totals = clock.finish()
                self.rows.append({"epoch": epoch + 1, "wall": wall, "steps": self._epoch_steps,
                                  **dict(zip(PARTS, totals))})
            return leave_epoch
        if hook == "on_train_batch_end":
            def leave_batch(batch: int, logs: Any) -> None:
                if self._tracer is not None and self._batches == self.trace[1]:
                    self._stop_trace()
                # after the last batch: the loader's end and the epoch's figures
                clock.mark(_SYNC if batch + 1 == run.n_batches else part)
            return leave_batch
        return lambda *args: clock.mark(part)

    def _start_trace(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self._clock.cuda:
            activities.append(ProfilerActivity.CUDA)
        self._tracer = profile(activities=activities, record_shapes=True)
        self._tracer.start()

    def _stop_trace(self) -> None:
        from torch.profiler import tensorboard_trace_handler

        tracer, self._tracer = self._tracer, None
        tracer.stop()
        os.makedirs(self.trace_dir, exist_ok=True)
        before = set(os.listdir(self.trace_dir))
        tensorboard_trace_handler(self.trace_dir, worker_name="torchfit")(tracer)
        written = sorted(set(os.listdir(self.trace_dir)) - before)
        self.trace_path = os.path.join(self.trace_dir, written[-1]) if written else None

    def _uninstall(self) -> None:
        if self._tracer is not None:  # a fit that ended inside the trace window: keep what was traced
            self._stop_trace()
        undo, self._undo = self._undo, []
        for fn in reversed(undo):
            fn()
        self._in_train = False


def attach(model: Any) -> Profiler:
    """The Profiler ``fit(profile=True)`` adds: ``model.profiler`` when there is one (its rows continue
    across fits), else a new one stored there.

    >>> # model.fit(3, dl, profile=True); model.profiler.frame()
    """
    profiler = getattr(model, "profiler", None)
    if not isinstance(profiler, Profiler):
        profiler = Profiler()
        model.profiler = profiler
    return profiler
