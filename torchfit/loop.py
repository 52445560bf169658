"""The loops: ``fit_loop`` over epochs, and one batch loop for training, evaluation and prediction.

Owns: iterating a loader, moving batches to the device, calling the step,
feeding the tracker (or collecting predictions), deciding logging points,
firing the batch and epoch hooks, and what a call shares while it runs
(``RunConfig``, fixed for the call, and ``Run``, its few counters). It does not
know autograd or the optimizer (the step's job, in ``Model.train_step``, with
``optim.OptimizerStep``), how figures are printed (callbacks) or how processes
talk (``distributed`` hands it a reducer and a net to train through).

Per step the loop does no host sync: metric states update on the device and
are read back (``compute``) only at logging points and at the end of the loader.

One fit, as ``fit_loop`` runs it::

    [on_train_begin]
    for epoch in epochs:
        [on_epoch_begin]
        run_epoch(dl_train, training)     # the batch loop with model.train_step
        stop here on a non-finite loss or a stop inside the epoch
        run_epoch(dl_val, evaluation)     # the batch loop with model.eval_step, no_grad
        [on_epoch_end({"epoch", "loss", ..., "val_loss", ...})]
        stop if model.stop_training
    [on_train_end]
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import nn

from .batch import describe, to_device
from .callbacks.base import RunningLogs
from .checkpoint import preserved_rng
from .diagnose import LossError, step_failure
from .metrics import Tracker, copy_metrics
from .errors import MetricError, StepError
from .losses import TargetError
from .fast_path import iter_batches
from .loaders import RanOut, loader_length
from .resuming import position_state, resumable_here, start_stream, stream_state

EMPTY: Mapping[str, float] = {}
_CPU = torch.device("cpu")


class StepResult(NamedTuple):
    """What a step returns to the loop.

    ``loss``: detached 0-d tensor (batch mean); ``preds``/``targets``: what the
    metrics are fed (``None`` to skip metrics); ``batch_size``: samples in the
    batch, the weight of this batch in epoch means; ``logs``: extra 0-d tensors
    averaged like the loss (e.g. ``{"d_loss": ..., "g_loss": ...}`` for a GAN); ``weights``: the
    batch's sample weights (an ``(x, y, w)`` batch's ``w``), which a loss recomputed on some of its
    rows needs (a padded last batch under torchrun); ``None`` when the batch has none.
    """

    loss: Optional[torch.Tensor]
    preds: Any
    targets: Any
    batch_size: int
    logs: Optional[Mapping[str, torch.Tensor]] = None
    weights: Any = None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What one fit, evaluate or predict call decided before its first batch; fixed for the call."""

    device: torch.device
    precision: Any  # precision.PrecisionPolicy: autocast and the grad scaler
    callbacks: Any  # callbacks.CallbackList
    move: Callable[[Any], Any] = lambda b: b
    iterate: Callable[[Iterable], Iterator] = iter_batches  # the tensor fast path; `iter` with fast_path=False
    reducer: Any = None  # merges figures across processes (torchrun), None in one process
    is_main_process: bool = True
    log_every: Optional[int] = None  # training logging points
    train_net: Optional[Callable] = None  # what the train step calls: the net, DDP or compiled wrapper
    optim: Any = None  # optim.OptimizerStep of a fit
    loaders: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # fit's loaders by argument name
    validation_freq: int = 1  # validate every n-th epoch
    weighting: Any = None  # losses.SampleWeighting: Keras' sample_weight / class_weight
    strategy: Any = None  # distributed's strategy of the call (SingleProcess in one process)
    train_step: Optional[Callable[[Any], Any]] = None  # an overridden train_step, windowed (optim.OptimizerStep.around)
    stream: Any = None  # loaders.StepLimit of steps_per_epoch: one iterator carried across epochs


class Run:
    """One call's config plus the counters the loop advances while it runs.

    ``model.run`` during a call: steps read ``config`` (precision, the net to
    call, the optimizer step); callbacks may read ``epoch``, ``batch_idx`` and
    ``last_result`` and end training with ``stop(reason)``.
    """

    def __init__(self, config: RunConfig, preflight: bool = False, check_targets: bool = False):
        self.config = config
        self.epoch = 0
        self.batch_idx = 0
        self.n_batches: Optional[int] = None
        self.last_result: Optional[StepResult] = None  # the latest step's output (TerminateOnNaN reads its loss)
        self.epoch_complete = False  # the last run_epoch went through the whole loader
        self.stopped_reason: Optional[str] = None
        self.preflight = preflight  # check metrics on the first batch before weights change
        self.check_targets = check_targets  # check the first batch's labels against the loss, likewise
        # exact mid-epoch resume (``resuming``): whether a callback may save mid-epoch, where the epoch's
        # batches started, training batches done at a point a checkpoint can resume from, a
        # checkpoint's position to continue from (used once), the training pass's tracker
        self.keeps_position = bool(config.callbacks is not None and config.callbacks.saves_mid_epoch)
        self.origin: Optional[Dict[str, Any]] = None
        self.position: Optional[int] = None
        self.resume_at: Optional[Mapping[str, Any]] = None
        self.tracker: Any = None
        self.own_metrics: Sequence[Any] = ()  # model.metrics, where the user's train_step updates them
        self.exit_code: Optional[int] = None  # set by a preempted run: fit raises SystemExit with it at the end

    def resumable_here(self) -> bool:
        """Whether a checkpoint written now resumes exactly from this batch (``resuming``)."""
        return resumable_here(self)

    def position_state(self) -> Optional[Dict[str, Any]]:
        """This process's position in the training pass for a mid-epoch checkpoint (``resuming``)."""
        return position_state(self)

    def stream_state(self) -> Optional[Dict[str, Any]]:
        """Where the ``steps_per_epoch`` iterator carried across epochs is (``resuming``), or None."""
        return stream_state(self)

    def stop(self, reason: str, model: Any) -> None:
        """End training at the next check, recording why (printed when fit ends)."""
        if self.stopped_reason is None:
            self.stopped_reason = reason
        model.stop_training = True


def nonfinite_loss(value: Optional[float], where: str) -> Optional[str]:
    """The reason to stop when a loss figure is NaN or infinite, else None (the one check of it)."""
    if value is None or math.isfinite(value):
        return None
    return f"non-finite loss ({value}) {where}"


class _Phase(NamedTuple):
    name: str
    step: str  # the Model method
    begin: str  # the CallbackList hooks around each batch
    end: str
    grad: bool


TRAIN = _Phase("train", "train_step", "on_train_batch_begin", "on_train_batch_end", True)
EVAL = _Phase("validation", "test_step", "on_test_batch_begin", "on_test_batch_end", False)  # -> eval_step
PREDICT = _Phase("predict", "predict_step", "on_predict_batch_begin", "on_predict_batch_end", False)


def run_batches(model: Any, loader: Iterable, run: Run, phase: _Phase, consume: Callable[[Any], Any],
                tracker: Any = None) -> None:
    """The batch loop: every batch of ``loader`` through ``phase``'s step, its output to ``consume``.

    Training logs at every ``run.config.log_every``-th step: ``tracker``'s
    running figures are read back once and handed to ``on_train_batch_end``; a
    non-finite running loss stops training there. Sets ``run.epoch_complete``.
    """
    config = run.config
    cbs = config.callbacks
    begin, end = getattr(cbs, phase.begin), getattr(cbs, phase.end)
    step_fn = config.train_step if phase is TRAIN and config.train_step is not None else getattr(model, phase.step)
    n_batches = run.n_batches = loader_length(loader)
    training = phase is TRAIN
    optim = config.optim if training else None
    log_every = config.log_every if training else None
    grad_sync = optim.grad_sync if optim is not None and optim.needs_grad_sync else None
    if optim is not None:
        optim.start_epoch(n_batches)
    move = config.move
    run.epoch_complete = False
    strip = tracker.prefix if tracker is not None else ""
    wants_logs = phase.end in cbs.implemented  # no reader of this phase's batch logs: no object per step
    if training:
        run.tracker = tracker
        batches, step = start_stream(run, loader, tracker)  # from a checkpoint's position, when resuming
    else:
        batches, step = config.iterate(loader), 0
    keeps_position = training and run.keeps_position
    with torch.enable_grad() if phase.grad else torch.no_grad():
        for step, batch in enumerate(batches, step + 1):
            run.batch_idx = step
            begin(step - 1, EMPTY)  # Keras' 0-based batch index
            batch = move(batch)
            if type(batch) is list:  # a DataLoader's collated list: steps get a tuple, as Keras hands them
                batch = tuple(batch)
            if optim is not None:
                optim.start_batch(step)
            try:
                if grad_sync is None:
                    out = step_fn(batch)
                else:
                    with grad_sync():
                        out = step_fn(batch)
            except (StepError, MetricError, TargetError, KeyboardInterrupt):
                raise
            except Exception as exc:
                where = (f"{phase.name} step failed at " + (f"epoch {run.epoch}, " if phase is not PREDICT else "")
                         + f"batch {step}{f' of {n_batches}' if n_batches else ''}")
                # the loss's own error stays the cause: LossError only carries the diagnosis
                cause = exc.__cause__ if isinstance(exc, LossError) and exc.__cause__ is not None else exc
                raise StepError(f"{where}: {step_failure(model, exc)} (batch shapes {describe(batch)})") from cause
            run.last_result = out
            consume(out)
            if keeps_position:
                run.position = step  # a checkpoint written from here resumes with the next batch
            if phase is PREDICT:
                end(step - 1, {"outputs": out})
            elif log_every is not None and step % log_every == 0:
                logs = {"step": step, **tracker.compute()}
                end(step - 1, RunningLogs(tracker, step, values=logs))
                loss = logs.get("loss")
                if loss is not None and not math.isfinite(loss):  # the message only when it is needed
                    run.stop(nonfinite_loss(loss, f"at epoch {run.epoch}, step {step}"), model)
            else:  # a phase whose batch logs nobody reads gets no logs object per step
                end(step - 1, RunningLogs(tracker, step, strip) if wants_logs else EMPTY)
            if training and model.stop_training:
                break
            if keeps_position:
                run.position = None  # the next batch is being fetched
        else:
            run.epoch_complete = True
            if optim is not None:
                optim.flush()  # a loader without len() ended inside an accumulation window
    run.position = None
    if step == 0:
        raise ValueError(
            f"the {phase.name} loader yielded no batches; check that its dataset is not empty "
            "and that drop_last=True does not drop the only batch"
        )


def run_epoch(model: Any, loader: Iterable, run: Run, tracker: Any, training: bool) -> Dict[str, float]:
    """One pass over ``loader``: train steps when ``training``, else eval steps under no_grad.

    Returns the epoch figures (keys prefixed by the tracker's prefix).
    """
    tracker.reset()
    if not (model._default_step("train_step") and model._default_step("eval_step")):
        for metric in model.metrics:  # Keras resets the model's own metric objects (a custom step's) each pass
            (getattr(metric, "reset_state", None) or metric.reset)()
        run.own_metrics = model.metrics
    model.net.train(training)
    run_batches(model, loader, run, TRAIN if training else EVAL, tracker.update, tracker)
    if run.config.reducer is not None:
        tracker.sync(run.config.reducer)
    return tracker.compute()


def validate(model: Any, loader: Iterable, run: Run, tracker: Any) -> Dict[str, float]:
    """``run_epoch`` over a validation loader between ``on_test_begin`` and ``on_test_end``."""
    cbs = run.config.callbacks
    cbs.on_test_begin({})
    logs = run_epoch(model, loader, run, tracker, training=False)
    n = len(tracker.prefix)
    cbs.on_test_end({k[n:] if k.startswith(tracker.prefix) else k: v for k, v in logs.items()})  # Keras' keys
    return logs


def predict(model: Any, loader: Iterable, run: Run) -> Any:
    """Outputs of ``predict_step`` over the whole loader, moved to CPU batch by batch, concatenated."""
    from .batch import concat

    outputs: List[Any] = []
    model.net.eval()
    run_batches(model, loader, run, PREDICT, lambda out: outputs.append(to_device(out, _CPU)))
    return concat(outputs)


def check_first_batch(model: Any, dl_val: Iterable, run: Run) -> None:
    """``eval_step`` and the metrics on ``dl_val``'s first batch, before training: weights, BatchNorm
    statistics, train/eval modes and every RNG (loaders' generators included) are left as found.
    Only loaders that can be iterated again are checked (a DataLoader without workers, a list)."""
    source = getattr(dl_val, "loader", dl_val)  # through a validation_steps limit
    if not (isinstance(source, (list, tuple)) or (isinstance(source, torch.utils.data.DataLoader)
                                                  and source.num_workers == 0)):
        return
    with preserved_rng([source]), model._calling(run), torch.no_grad():
        model.net.eval()
        batch = next(iter(run.config.iterate(source)), None)
        if batch is None:
            return  # an empty loader is reported where it is iterated
        batch = run.config.move(batch)
        try:
            out = model.test_step(batch)  # eval_step, or a Keras test_step
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, LossError) and exc.__cause__ is not None else exc
            raise StepError(f"validation step failed on dl_val's first batch, checked before training (nothing "
                            f"has changed): {step_failure(model, exc)} (batch shapes {describe(batch)})") from cause
        probe = Tracker(copy_metrics(model.compiled_metrics), prefix="val_")
        probe.reset()
        probe.update(out)
        probe.compute()
        run.config.strategy.settle(model.net)  # e.g. a sharded net's root gathered by this forward


# ------------------------------------------------------------------- fit
def fit_loop(model: Any, run: Run, epochs: range, dl_train: Iterable, dl_val: Optional[Iterable],
             trackers: tuple, params: Dict[str, Any], resume_state: Optional[Mapping[str, Any]],
             say: Callable[[str], None]) -> None:
    """The epochs of one fit (see the module docstring), leaving the model usable on every exit.

    An error or interrupt before the first optimizer step restores the net's
    buffers (BatchNorm statistics); every submodule's train/eval mode is
    restored; Ctrl-C returns normally with the finished epochs in the history.
    ``say`` prints a line through the printer (or nowhere with verbose=0).
    """
    from .checkpoint import restore_callbacks

    cbs = run.config.callbacks
    train_tracker, val_tracker = trackers
    params = dict(params)
    log_lr = params.pop("log_lr")
    modes = save_modes(model.net)
    buffers = {name: b.detach().clone() for name, b in model.net.named_buffers()}
    first_step = model.global_step
    model.stop_training = False
    last_logs: Dict[str, Any] = {}
    try:
        cbs.on_train_begin({})
        if resume_state is not None:
            restore_callbacks(resume_state, list(cbs))  # after on_train_begin, which resets them
        for epoch in epochs:
            run.epoch = epoch
            cbs.on_epoch_begin(epoch - 1, {})  # hooks get Keras' 0-based epoch; the history's column is 1-based
            logs = run_epoch(model, dl_train, run, train_tracker, training=True)
            reason = nonfinite_loss(logs.get("loss"), f"over epoch {epoch}")
            if reason:
                run.stop(reason, model)
            if run.stopped_reason is not None or not run.epoch_complete:
                break  # a stop inside the epoch: it is not a finished epoch
            if dl_val is not None and epoch % run.config.validation_freq == 0:
                logs.update(validate(model, dl_val, run, val_tracker))
            if log_lr:
                logs.update(log_lr())
            model.epoch = epoch
            if params["log_keys"] is None:  # overridden steps: the keys are known now
                params = {**params, "log_keys": ["epoch", *logs]}
                cbs.set_params(params)
            last_logs = {"epoch": epoch, **logs}
            cbs.on_epoch_end(epoch - 1, last_logs)
            if model.stop_training:
                break
            if run.config.stream is not None and run.config.stream.ran_out:  # a generator ran out (Keras)
                raise RanOut(f"dl_train (a generator) ran out of data during epoch {epoch}, which trained on what "
                             "it had")
    except RanOut as exc:  # Keras: "Your input ran out of data; interrupting training"
        say(f"Stopped training: {exc}. model.history holds the {len(model.history)} finished epoch(s). Make sure "
            "the generator can give steps_per_epoch * epochs batches, or pass a loader that can be iterated again",
            warn=True)
    except KeyboardInterrupt as exc:
        if model.global_step == first_step:
            _restore_buffers(model.net, buffers)  # nothing was trained: leave the net as found
        call_quietly(cbs.on_exception, exc, exc)
        say(f"Training interrupted (KeyboardInterrupt) in epoch {run.epoch}; model.history holds "
            f"the {len(model.history)} finished epoch(s) and the model is usable.")
    except BaseException as exc:
        if model.global_step == first_step:
            _restore_buffers(model.net, buffers)  # nothing was trained: leave the net as found
        call_quietly(cbs.on_exception, exc, exc)
        raise
    finally:
        restore_modes(modes)
    cbs.on_train_end(dict(last_logs))  # Keras: the last epoch's logs. Bars close here: the line below must not land on one
    if run.stopped_reason is not None and run.config.is_main_process:
        say(f"Stopped training: {run.stopped_reason}. model.history holds the {len(model.history)} finished "
            "epoch(s). Lower the learning rate, clip gradients (grad_clip_norm=1.0) or check the data for NaN/inf",
            warn=True)
    if run.exit_code is not None:  # preempted (BackupAndRestore): the process ends, its state saved
        raise SystemExit(run.exit_code)


def call_quietly(fn: Callable[..., Any], exc: BaseException, *args: Any) -> Any:
    """``fn(*args)`` while ``exc`` is ending a fit: cleanup never replaces the error that stopped
    the run, so a failure here becomes a warning (and None)."""
    try:
        return fn(*args)
    except Exception as cleanup_error:
        warnings.warn(f"{getattr(fn, '__qualname__', fn)} raised {type(cleanup_error).__name__}: {cleanup_error} "
                      f"while fit was stopping on {type(exc).__name__}; the original error follows",
                      RuntimeWarning, stacklevel=3)
        return None


def save_modes(net: nn.Module) -> list:
    return [(m, m.training) for m in net.modules()]


def restore_modes(modes: list) -> None:
    for module, training in modes:
        module.training = training


def _restore_buffers(net: nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, b in net.named_buffers():
            if name in saved and saved[name].shape == b.shape:
                b.copy_(saved[name])
