"""The batch loop: one ``run_epoch`` for training and evaluation, and the predict loop.

Owns: iterating a loader, moving batches to the device, calling the step,
feeding metric states, deciding logging points and firing batch hooks. It does
not know autograd (that is the step's job, in ``Model.train_step``), how
figures are printed (callbacks) or how processes talk (``distributed``).

Per step the loop does no host sync: metric states update on the device and
are read back (``compute``) only at logging points and at the end of the loader.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional

import torch

from .device import to_device
from .errors import MetricError, StepError
from .metrics import Mean, Metric

EMPTY: Mapping[str, float] = {}


class StepResult(NamedTuple):
    """What a step returns to the loop.

    ``loss``: detached 0-d tensor (batch mean); ``preds``/``targets``: what the
    metrics are fed (``None`` to skip metrics); ``batch_size``: samples in the
    batch, the weight of this batch in epoch means; ``logs``: extra 0-d tensors
    averaged like the loss (e.g. ``{"d_loss": ..., "g_loss": ...}`` for a GAN).
    """

    loss: Optional[torch.Tensor]
    preds: Any
    targets: Any
    batch_size: int
    logs: Optional[Mapping[str, torch.Tensor]] = None


class Tracker:
    """The running epoch figures of one phase: the loss mean plus each metric."""

    def __init__(self, metrics: Mapping[str, Metric], prefix: str = ""):
        self.prefix = prefix
        self.loss = Mean()
        self.metrics: Dict[str, Metric] = dict(metrics)
        self.extra: Dict[str, Mean] = {}
        self.loss_seen = False  # steps may return loss=None (custom train_step)

    def reset(self) -> None:
        self.loss_seen = False
        self.loss.reset()
        for m in self.metrics.values():
            m.reset()
        for m in self.extra.values():
            m.reset()

    def update(self, out: StepResult) -> None:
        n = out.batch_size
        if out.loss is not None:
            self.loss_seen = True
            self.loss.update(out.loss, n)
        if out.logs:
            for name, value in out.logs.items():
                mean = self.extra.get(name)
                if mean is None:
                    mean = self.extra[name] = Mean()
                mean.update(value.detach() if isinstance(value, torch.Tensor) else value, n)
        if out.preds is None or not self.metrics:
            return
        for name, metric in self.metrics.items():
            try:
                metric.update(out.preds, out.targets)
            except Exception as exc:
                raise MetricError(
                    f"metric {self.prefix + name!r} raised {type(exc).__name__}: {exc}. "
                    "Check that it accepts (preds, targets) in the shapes the net produces "
                    f"(preds {_shape(out.preds)}, targets {_shape(out.targets)})"
                ) from exc

    def sync(self, reducer: Any) -> None:
        """Merge states across processes (torchrun) before computing epoch figures."""
        self.loss.sync(reducer)
        for m in list(self.metrics.values()) + list(self.extra.values()):
            if hasattr(m, "sync"):
                m.sync(reducer)

    def compute(self) -> Dict[str, float]:
        p = self.prefix
        logs: Dict[str, float] = {}
        if self.loss_seen:
            logs[p + "loss"] = self.loss.compute()
        for name, metric in self.metrics.items():
            try:
                logs[p + name] = _to_float(metric.compute())
            except Exception as exc:
                raise MetricError(f"metric {p + name!r} raised {type(exc).__name__} in compute(): {exc}") from exc
        for name, mean in self.extra.items():
            logs[p + name] = mean.compute()
        return logs


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"compute() returned a tensor of shape {tuple(value.shape)}; a metric must give one number")
        return float(value)
    return float(value)


def _shape(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return list(obj.shape)
    if isinstance(obj, (list, tuple)):
        return [_shape(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    return type(obj).__name__


@dataclasses.dataclass
class Run:
    """Per-call state shared by the loop and the steps (one fit, evaluate or predict)."""

    device: torch.device
    precision: Any
    callbacks: Any
    epoch: int = 0
    n_batches: Optional[int] = None
    batch_idx: int = 0
    log_every: Optional[int] = None
    # gradient accumulation window
    accum_steps: int = 1
    micro: int = 0
    window_samples: int = 0
    is_boundary: bool = True
    sum_reduction: bool = False
    clip_norm: Optional[float] = None
    clip_value: Optional[float] = None
    train_net: Optional[torch.nn.Module] = None  # the net the train step calls (DDP / compiled wrapper)
    preflight: bool = False  # check metrics on the first batch before weights change
    train_metrics: Optional[Mapping[str, Metric]] = None
    move: Callable[[Any], Any] = lambda b: b
    iterate: Callable[[Iterable], Iterator] = iter
    reducer: Any = None  # set under torch.distributed
    is_main_process: bool = True
    grad_sync: Optional[Callable[[bool], Any]] = None  # context factory: DDP no_sync between boundaries
    stopped_reason: Optional[str] = None
    epoch_complete: bool = False  # the last run_epoch went through the whole loader
    params: List[torch.nn.Parameter] = dataclasses.field(default_factory=list)  # what clipping sees
    loaders: Dict[str, Any] = dataclasses.field(default_factory=dict)  # fit's loaders by argument name (checkpoints)
    last_result: Optional[StepResult] = None  # the latest step's output (TerminateOnNaN reads its loss)


def batch_mover(device: torch.device, non_blocking: bool) -> Callable[[Any], Any]:
    if device.type == "cpu":
        # Loaders yield CPU tensors: moving to CPU would only cost calls.
        return lambda batch: batch
    return lambda batch: to_device(batch, device, non_blocking)


def loader_length(loader: Iterable) -> Optional[int]:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def run_epoch(model: Any, loader: Iterable, run: Run, tracker: Tracker, training: bool) -> Dict[str, float]:
    """One pass over ``loader``: train steps when ``training``, else eval steps under no_grad.

    Returns the epoch figures (keys prefixed by the tracker's prefix). At logging
    points (every ``run.log_every`` training steps) the running figures are read
    back once and handed to ``on_train_batch_end``; a non-finite running loss
    stops training there.
    """
    cbs = run.callbacks
    tracker.reset()
    if training:
        step_fn = model.train_step
        begin, end, phase = cbs.on_train_batch_begin, cbs.on_train_batch_end, "train"
        log_every = run.log_every
        model.net.train()
    else:
        step_fn = model.eval_step
        begin, end, phase = cbs.on_test_batch_begin, cbs.on_test_batch_end, "validation"
        log_every = None
        model.net.eval()
    n_batches = run.n_batches = loader_length(loader)
    accum = run.accum_steps
    run.micro = 0
    run.window_samples = 0
    move = run.move
    grad_sync = run.grad_sync if training else None
    step = 0
    completed = False
    with torch.enable_grad() if training else torch.no_grad():
        for step, batch in enumerate(run.iterate(loader), 1):
            run.batch_idx = step
            begin(step, EMPTY)
            batch = move(batch)
            if training:
                run.is_boundary = run.micro + 1 == accum or step == n_batches
            try:
                if grad_sync is None:
                    out = step_fn(batch)
                else:
                    with grad_sync(run.is_boundary):
                        out = step_fn(batch)
            except (StepError, MetricError, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise StepError(
                    f"{phase} step failed at epoch {run.epoch}, batch {step}"
                    f"{f' of {n_batches}' if n_batches else ''} (batch {_describe(batch)}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            run.last_result = out
            tracker.update(out)
            if log_every is not None and step % log_every == 0:
                logs = {"step": step, **tracker.compute()}
                end(step, logs)
                if not math.isfinite(logs.get("loss", 0.0)):
                    run.stopped_reason = f"non-finite loss ({logs['loss']}) at epoch {run.epoch}, step {step}"
                    model.stop_training = True
            else:
                end(step, EMPTY)
            if training and model.stop_training:
                break
        else:
            completed = True
            if training and run.micro > 0:
                # A loader without len() ended inside an accumulation window.
                model._apply_gradients()
    if step == 0:
        raise ValueError(
            f"the {phase} loader yielded no batches; check that its dataset is not empty "
            "and that drop_last=True does not drop the only batch"
        )
    run.epoch_complete = completed
    if run.reducer is not None:
        tracker.sync(run.reducer)
    return tracker.compute()


def _describe(batch: Any) -> str:
    shapes = _shape(batch)
    return f"shapes {shapes}"


def predict_loop(model: Any, loader: Iterable, run: Run) -> Any:
    """Outputs of ``predict_step`` over the whole loader, moved to CPU batch by batch, concatenated."""
    cbs = run.callbacks
    outputs: List[Any] = []
    model.net.eval()
    with torch.no_grad():
        for step, batch in enumerate(run.iterate(loader), 1):
            run.batch_idx = step
            cbs.on_predict_batch_begin(step, EMPTY)
            batch = run.move(batch)
            try:
                out = model.predict_step(batch)
            except Exception as exc:
                raise StepError(f"predict step failed at batch {step} (batch {_describe(batch)}): "
                                f"{type(exc).__name__}: {exc}") from exc
            outputs.append(to_device(out, torch.device("cpu")))
            cbs.on_predict_batch_end(step, EMPTY)
    if not outputs:
        raise ValueError("the predict loader yielded no batches; check that its dataset is not empty")
    return concat(outputs)


def concat(chunks: List[Any]) -> Any:
    """Concatenate per-batch outputs along dim 0, keeping tuple/list/dict structure."""
    first = chunks[0]
    if isinstance(first, torch.Tensor):
        if first.dim() == 0:
            return torch.stack(chunks)
        return torch.cat(chunks)
    if isinstance(first, dict):
        return type(first)((k, concat([c[k] for c in chunks])) for k in first)
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(concat([c[i] for c in chunks]) for i in range(len(first))))
    if isinstance(first, (list, tuple)):
        return type(first)(concat([c[i] for c in chunks]) for i in range(len(first)))
    raise TypeError(
        f"predict_step returned {type(first).__name__}; expected a tensor or a tuple/list/dict of tensors"
    )
