"""The learning-rate range test: ``lr_find`` and ``plot_lr_find``.

Owns one thing: a short training run whose learning rate grows step by step,
recorded as a DataFrame, with a suggested rate; and putting the model back
exactly as it was afterwards (``preserved_training_state``). The training steps
are torchfit's own: ``lr_find`` runs ``model.fit`` with one recording callback,
so precision, ``train_step`` overrides, the device and the fast path are those a
real fit uses (gradient accumulation and clipping are off).

What the model gets back, bit for bit, also when the range test raises or is
interrupted: parameters (and their ``.grad``), buffers (BatchNorm statistics,
``num_batches_tracked``), optimizer state and every parameter-group setting,
the grad scaler, the RNG states (torch CPU, CUDA when initialised, numpy,
Python ``random``), the loader's generators, ``epoch``, ``global_step``,
``history``, ``step_history``, ``stop_training`` and the state fit keeps for
checkpoints (``model.training_state``, copied whole and restored). A range test that changed
any of these would change the training that follows it (fastai #3013,
Lightning #6675).
"""
from __future__ import annotations

import collections.abc
import contextlib
import copy
import itertools
import math
import numbers
import warnings
from typing import Any, Iterable, Iterator, List, Optional

import numpy as np
import pandas as pd
import torch

from .callbacks.base import Callback
from .checkpoint import preserved_rng

__all__ = ["lr_find", "plot_lr_find", "preserved_training_state"]

_MODES = ("exponential", "linear")


# --------------------------------------------------------------- the one accessor of fit internals
def _last_step_loss(model: Any) -> Optional[torch.Tensor]:
    """The loss the latest training step returned: a detached 0-d tensor, or None.

    The only place this module reads fit's internals (the run's last step result);
    if they move, only this function changes.
    """
    run = getattr(model, "_run", None)
    result = getattr(run, "last_result", None)
    return None if result is None else result.loss


def _mean_over_processes(loss: torch.Tensor) -> torch.Tensor:
    """Under torchrun, the mean of the ranks' losses: every rank then decides to stop at the same step."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return loss
    total = loss.detach().clone().float()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def _in_fit(model: Any) -> bool:
    return getattr(model, "_run", None) is not None


# --------------------------------------------------------------- snapshot and restore
def _clone(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


@contextlib.contextmanager
def preserved_training_state(model: Any, loaders: Iterable[Any] = ()) -> Iterator[None]:
    """Run the body, then put ``model`` (and ``loaders``' generators) back exactly as they were.

    >>> # with preserved_training_state(model, [dl_train]):
    >>> #     model.fit(1, dl_train, verbose=0)      # a throwaway run
    >>> # model is as before: weights, optimizer, RNG, epoch, history...

    Restores on any exit, an exception or a KeyboardInterrupt included; the
    exception then goes on unchanged. Tensors are copied (one copy of the
    weights, gradients, buffers and optimizer state), and put back in place, so
    the optimizer keeps pointing at the same parameter objects.
    """
    net = model.net
    opt = model.optimizer
    params = list(net.parameters())
    saved_params = [p.detach().clone() for p in params]
    saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    # By name, per module: a forward that reassigns a buffer (``self.seen = self.seen + n``) registers a
    # new tensor under the old name; the original object goes back under it, with its value.
    buffers = [(m, dict(m._buffers)) for m in net.modules()]
    saved_buffers = [{k: b.detach().clone() for k, b in named.items() if b is not None} for _, named in buffers]
    saved_opt_state = {p: {k: _clone(v) for k, v in s.items()} for p, s in opt.state.items()}
    saved_groups = [{k: _clone(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]
    precision = getattr(model, "precision", None)
    scaler = getattr(precision, "scaler", None)
    saved_scaler = copy.deepcopy(scaler.__dict__) if scaler is not None else None
    stop_training = model.stop_training
    state = model.training_state.copy()
    modes = [(m, m.training) for m in net.modules()]
    try:
        with preserved_rng(loaders):
            yield
    finally:
        with torch.no_grad():
            for p, v, g in zip(params, saved_params, saved_grads):
                p.copy_(v)
                p.grad = g
            for (module, named), values in zip(buffers, saved_buffers):
                module._buffers.clear()
                module._buffers.update(named)
                for k, v in values.items():
                    named[k].copy_(v)
        opt.state.clear()
        opt.state.update(saved_opt_state)
        for group, saved in zip(opt.param_groups, saved_groups):
            for key in [k for k in group if k != "params" and k not in saved]:
                del group[key]  # e.g. "initial_lr" that a scheduler built meanwhile added
            group.update(saved)
        if scaler is not None:
            scaler.__dict__.clear()
            scaler.__dict__.update(saved_scaler)
        for m, training in modes:
            m.training = training
        model.stop_training = stop_training
        model.training_state.restore(state)


# --------------------------------------------------------------- the range test
class _RangeRecorder(Callback):
    """Sets each step's learning rate before the step and records its loss after it."""

    def __init__(self, lrs: List[float], smooth: float, diverge_threshold: float):
        self.lrs = lrs
        self.smooth = smooth
        self.diverge_threshold = diverge_threshold
        self.losses: List[float] = []
        self.smoothed: List[float] = []
        self.stop_reason = "interrupted"
        self._avg = 0.0
        self._best = math.inf

    def on_train_batch_begin(self, batch: int, logs: dict) -> None:
        lr = self.lrs[len(self.losses)]
        for group in self.model.optimizer.param_groups:
            group["lr"] = lr

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        loss = _last_step_loss(self.model)
        if loss is None:
            raise ValueError(
                "lr_find needs the training loss of each step, but train_step returned loss=None. "
                "Return StepResult(loss.detach(), ...) from your train_step"
            )
        # One host sync per step: the divergence test needs the value now (this is not the hot path).
        value = float(_mean_over_processes(loss))
        i = len(self.losses)
        self.losses.append(value)
        # Bias-corrected exponential mean (as in Adam), so the first steps are not pulled to 0.
        self._avg = self.smooth * self._avg + (1.0 - self.smooth) * value
        smoothed = self._avg / (1.0 - self.smooth ** (i + 1))
        self.smoothed.append(smoothed)
        if not math.isfinite(smoothed):
            self.stop_reason = "diverged"
        else:
            self._best = min(self._best, smoothed)
            if self._best > 0 and smoothed > self.diverge_threshold * self._best:
                self.stop_reason = "diverged"
        if self.stop_reason != "diverged" and len(self.losses) == len(self.lrs):
            self.stop_reason = "completed"
        if self.stop_reason != "interrupted":
            self.model.stop_training = True


class _Steps:
    """At most ``n`` batches of a one-pass iterator (a generator, maybe endless), as one epoch of lr_find.

    fit would need ``steps_per_epoch`` for a generator; lr_find's own count is ``num_steps``.
    Exactly the batches trained on are taken from the iterator; ``exhausted`` tells that it
    ran out first.
    """

    def __init__(self, batches: Iterator[Any], n: int):
        self.batches, self.n, self.exhausted = batches, n, False

    def __iter__(self) -> Iterator[Any]:
        taken = 0
        for batch in itertools.islice(self.batches, self.n):
            taken += 1
            yield batch
        self.exhausted = taken < self.n


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"lr_find: {name} must be a finite number > 0; got {value!r}")
    return float(value)


def _check_arguments(start_lr: Any, end_lr: Any, num_steps: Any, mode: Any, smooth: Any,
                     diverge_threshold: Any) -> None:
    start_lr = _check_positive("start_lr", start_lr)
    end_lr = _check_positive("end_lr", end_lr)
    if start_lr >= end_lr:
        raise ValueError(f"lr_find: start_lr ({start_lr!r}) must be smaller than end_lr ({end_lr!r})")
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 2:
        raise ValueError(f"lr_find: num_steps must be an int >= 2 (one step per learning rate); got {num_steps!r}")
    if mode not in _MODES:
        raise ValueError(f"lr_find: mode must be one of {list(_MODES)}; got {mode!r}")
    if isinstance(smooth, bool) or not isinstance(smooth, numbers.Real) or not 0.0 <= smooth < 1.0:
        raise ValueError(f"lr_find: smooth must lie in [0, 1) (0 means no smoothing); got {smooth!r}")
    threshold = _check_positive("diverge_threshold", diverge_threshold)
    if threshold <= 1.0:
        raise ValueError(f"lr_find: diverge_threshold must be > 1 (a multiple of the lowest loss); "
                         f"got {diverge_threshold!r}")


def learning_rates(start_lr: float, end_lr: float, num_steps: int, mode: str = "exponential") -> List[float]:
    """The rates ``lr_find`` tries, one per step, from ``start_lr`` to ``end_lr`` inclusive.

    >>> [round(lr, 6) for lr in learning_rates(1e-3, 1e-1, 3)]
    [0.001, 0.01, 0.1]
    """
    last = num_steps - 1
    if mode == "linear":
        return [start_lr + (end_lr - start_lr) * i / last for i in range(num_steps)]
    ratio = end_lr / start_lr
    rates = [start_lr * ratio ** (i / last) for i in range(num_steps)]
    rates[-1] = float(end_lr)  # no rounding drift at the end the user asked for
    return rates


def suggest_lr(lrs: Any, smoothed: Any) -> Optional[float]:
    """The rate where the smoothed loss falls fastest (per unit of log10 lr), before its minimum,
    ignoring the first tenth of the steps.

    The steepest descent is where training makes the most progress per step and
    is still well below the rates that diverge; ``min/10`` would instead depend on
    exactly where the divergence starts and on the smoothing's lag. Returns None
    when fewer than 2 points lie between those and the minimum.

    >>> suggest_lr([1e-3, 1e-2, 1e-1, 1.0], [1.0, 0.9, 0.3, 2.0])
    0.01
    """
    lrs = np.asarray(lrs, dtype=float)
    smoothed = np.asarray(smoothed, dtype=float)
    finite = np.isfinite(smoothed)
    if finite.sum() < 3:
        return None
    lowest = int(np.nanargmin(np.where(finite, smoothed, np.nan)))
    # The first tenth of the steps is skipped: there the smoothed loss is still mostly one
    # batch's loss, and batch-to-batch noise would pass for a steep descent.
    skip = len(lrs) // 10
    if lowest - skip < 2:
        return None
    x, y = np.log10(lrs[skip: lowest + 1]), smoothed[skip: lowest + 1]
    # Forward differences: the rate that starts the steepest segment. (Central ones would
    # give the minimum itself a one-sided slope and often pick it.)
    slopes = np.diff(y) / np.diff(x)
    return float(lrs[skip + int(np.argmin(slopes))])


def lr_find(model: Any, dl_train: Iterable, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
            mode: str = "exponential", smooth: float = 0.98, diverge_threshold: float = 4.0) -> pd.DataFrame:
    """Train ``num_steps`` steps with a growing learning rate; the model is left exactly as it was.

    >>> # df = torchfit.lr_find(model, dl_train)            # or model.lr_find(dl_train)
    >>> # lr = df.attrs["suggested_lr"]; plot_lr_find(df).savefig("lr.png")
    >>> # model.optimizer.param_groups[0]["lr"] = lr;  model.fit(10, dl_train, dl_val)

    Step ``i`` trains with rate ``start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))``
    (``mode="linear"``: evenly spaced), set on every parameter group. The steps
    are ``model.fit``'s own (same ``train_step``, device and precision; no
    accumulation or clipping), cycling through ``dl_train`` when ``num_steps``
    exceeds its length. A generator (endless or not) gives ``num_steps`` batches, taken
    from it as they are trained on. The run stops early when the smoothed loss exceeds
    ``diverge_threshold`` times its lowest value so far, or is not finite.

    Returns a DataFrame with one row per step: ``lr``, ``loss`` (that step's batch
    loss) and ``smoothed_loss`` (exponential mean with factor ``smooth``, bias
    corrected). ``df.attrs``: ``suggested_lr`` (the steepest descent of the
    smoothed loss before its minimum, see ``suggest_lr``; None when too few
    points), ``min_loss_lr`` (the rate at the lowest smoothed loss) and
    ``stop_reason`` (``"completed"``, ``"diverged"``, ``"exhausted"`` when a generator
    ran out before ``num_steps``, or ``"interrupted"`` for a Ctrl-C; the last two return
    the steps done so far).

    Each step's loss is read back to the host right after the step (one sync per
    step) because the divergence test needs it. Afterwards the weights,
    optimizer, RNG states, the loader's generator, epoch, history and
    checkpoint state are bit-identical to before (see ``preserved_training_state``),
    also when it raises.
    """
    _check_arguments(start_lr, end_lr, num_steps, mode, smooth, diverge_threshold)
    model._require_compiled("lr_find")
    if _in_fit(model):
        raise RuntimeError("lr_find cannot run inside fit (from a callback); call it before or after fit")
    if not model.optimizer.param_groups:
        raise ValueError("lr_find: the optimizer has no parameter groups (the net has no trainable parameters)")
    lrs = learning_rates(float(start_lr), float(end_lr), int(num_steps), mode)
    recorder = _RangeRecorder(lrs, float(smooth), float(diverge_threshold))
    source: Any = dl_train
    if isinstance(dl_train, collections.abc.Iterator):  # a generator: one pass, maybe endless
        source = _Steps(dl_train, int(num_steps))
        epochs = 1
    else:
        try:
            n = len(dl_train)  # type: ignore[arg-type]
        except TypeError:
            n = None
        epochs = math.ceil(num_steps / n) if n else num_steps
    with preserved_training_state(model, [dl_train]):
        model.training_state.take_pending_resume()  # a loaded checkpoint is for the user's next fit, not this one
        with warnings.catch_warnings():
            # A diverging range test ends in a non-finite loss by design: not worth fit's warning.
            warnings.filterwarnings("ignore", message="Stopped training: non-finite loss", category=RuntimeWarning)
            # log_step_freq beyond the run: no running figures computed, no logging syncs.
            model.fit(epochs, source, verbose=0, log_step_freq=num_steps + 1, callbacks=[recorder])
    if recorder.stop_reason == "interrupted" and isinstance(source, _Steps) and source.exhausted:
        recorder.stop_reason = "exhausted"
    steps = len(recorder.losses)
    df = pd.DataFrame({"lr": lrs[:steps], "loss": recorder.losses, "smoothed_loss": recorder.smoothed})
    finite = df["smoothed_loss"].replace([np.inf, -np.inf], np.nan)
    df.attrs["suggested_lr"] = suggest_lr(df["lr"], df["smoothed_loss"])
    df.attrs["min_loss_lr"] = float(df["lr"][finite.idxmin()]) if finite.notna().any() else None
    df.attrs["stop_reason"] = recorder.stop_reason
    return df


def plot_lr_find(df: pd.DataFrame, ax: Any = None) -> Any:
    """The range test as a matplotlib Figure: loss and smoothed loss against lr (log x), the suggestion marked.

    >>> # fig = plot_lr_find(model.lr_find(dl_train)); fig.savefig("lr_find.png")

    Headless (no pyplot); pass ``ax`` to draw into an existing axes (its figure is returned).
    """
    missing = {"lr", "loss", "smoothed_loss"} - set(df.columns)
    if missing:
        raise ValueError(f"plot_lr_find needs the DataFrame lr_find returns; columns {sorted(missing)} are missing")
    from .plot import _figure_class, _import_matplotlib

    if ax is None:
        fig = _figure_class(_import_matplotlib())(figsize=(6, 4))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    ax.plot(df["lr"], df["loss"], color="0.75", linewidth=1, label="loss")
    ax.plot(df["lr"], df["smoothed_loss"], color="C0", linewidth=2, label="smoothed loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    smoothed = df["smoothed_loss"].replace([np.inf, -np.inf], np.nan)
    if smoothed.notna().sum() >= 2:
        # Frame the descent: the divergence's spikes would squash it into a flat line at the bottom.
        lowest = smoothed.idxmin()
        lo, hi = smoothed.min(), smoothed[: lowest + 1].max()
        span = (hi - lo) or abs(hi) or 1.0
        ax.set_ylim(lo - 0.1 * span, hi + 0.5 * span)
    suggested = df.attrs.get("suggested_lr")
    if suggested is not None:
        y = float(np.interp(np.log10(suggested), np.log10(df["lr"]), df["smoothed_loss"]))
        ax.plot([suggested], [y], marker="o", color="C3", markersize=8, linestyle="none",
                label=f"suggested lr {suggested:.3g}")
    ax.legend()
    return fig
