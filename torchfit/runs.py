"""Assembling a call's run: what one fit, evaluate or predict shares while it runs.

Owns building the ``RunConfig`` and ``Run`` of a call from the model and the checked arguments:
the multi-process strategy's pieces (this rank's loaders, the net to train through, trackers and
callbacks), fit's own callbacks, the ``OptimizerStep``, Keras' step limits and the params handed
to ``set_params``. It runs nothing: ``loop`` runs what this builds, and ``Model`` checks the
arguments before asking for it.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import torch

from . import distributed, resuming, steps
from .arguments import CheckedFit, FitOptions
from .callbacks import Callback, CallbackList, History, ProgressPrinter
from .callbacks.base import check_callbacks
from .callbacks.history import StepHistory
from .callbacks.progress import ProgressBar, wants_bar
from .callbacks.schedulers import epoch_learning_rates, lr_log_keys
from .device import batch_mover
from .fast_path import iter_batches
from .formatting import format_figure
from .heads import MultiLoss
from .distributed import FitRequest
from .loaders import StepLimit, limit_steps, loader_length
from .loop import Run, RunConfig
from .metrics import Tracker, copy_metrics
from .optim import OptimizerStep


def fit_run(model: Any, checked: CheckedFit) -> tuple:
    """The run of one fit: this rank's loaders, callbacks, trackers, the optimizer step, the params."""
    options, start, epochs, user_callbacks = checked.options, checked.start, checked.epochs, checked.callbacks
    dl_train, dl_val = checked.dl_train, checked.dl_val
    strategy = distributed.strategy(model.device, model.strategy)
    dl_train, dl_val = strategy.fit_loaders(dl_train, dl_val)  # this rank's part under torchrun
    custom_step = not model._default_step("train_step")
    plan = strategy.prepare_fit(FitRequest(
        net=model.net, train_net=model._training_net(), device=model.device, accum_steps=options.grad_accum_steps,
        dl_train=dl_train, dl_val=dl_val, train_tracker=Tracker(copy_metrics(model.compiled_metrics)),
        val_tracker=Tracker(copy_metrics(model.compiled_metrics), prefix="val_"),
        recompute_train=recompute_for(model, "train_step"), recompute_eval=recompute_for(model, "eval_step"),
        custom_step=custom_step, optimizer=model.optimizer))
    callbacks = default_callbacks(options, user_callbacks) + user_callbacks + list(plan.callbacks)
    cbs = CallbackList(callbacks, model, is_main_process=strategy.is_main,
                       collective_saves=strategy.saves_collectively)
    optim = OptimizerStep(
        model.optimizer, [p for p in model.net.parameters() if p.requires_grad],
        accum_steps=options.grad_accum_steps, sum_reduction=getattr(model.loss_fn, "reduction", "mean") == "sum",
        clip_norm=options.grad_clip_norm, clip_value=options.grad_clip_value, scaler=model.precision.scaler,
        on_backward_end=cbs.on_backward_end, on_step=model.training_state.count_step, no_sync=plan.no_sync,
        sync_grads=plan.sync_grads)
    loaders = {"dl_train": dl_train, "dl_val": dl_val}  # as given: their generators go into checkpoints
    iterate = iter_batches if options.fast_path else iter
    dl_train = limit_steps(dl_train, options.steps_per_epoch, iterate, "dl_train", snapshot=resuming.origin)
    if dl_val is not None:
        dl_val = limit_steps(dl_val, options.validation_steps, iterate, "dl_val", carry_on=False)
    n_train = loader_length(dl_train)
    config = run_config(model, cbs, strategy, options.fast_path, log_every=options.log_every(n_train),
                        train_net=plan.train_net, optim=optim, loaders=loaders,
                        validation_freq=options.validation_freq, weighting=checked.weighting,
                        stream=dl_train if isinstance(dl_train, StepLimit) else None,
                        train_step=optim.around(model.train_step, model.precision.autocast) if custom_step else None)
    log_lr = any(cb.changes_lr for cb in cbs)
    batch_size = getattr(dl_train, "batch_size", None)
    params = {"epochs": start + epochs, "initial_epoch": start, "steps": n_train,
              "verbose": options.verbose, "log_keys": epoch_log_keys(model, dl_val is not None, log_lr),
              "grad_accum_steps": options.grad_accum_steps,
              "batch_size": batch_size if isinstance(batch_size, int) else None}
    cbs.set_params(params)  # a callback monitoring a key this run never produces raises here
    params = {**params, "log_lr": (lambda: epoch_learning_rates(model.optimizer, cbs.callbacks)) if log_lr else None}
    run = Run(config, preflight=bool(model.compiled_metrics), check_targets=model.loss_fn is not None)
    return run, (dl_train, dl_val), (plan.train_tracker, plan.val_tracker), params


def default_callbacks(options: FitOptions, user_callbacks: Sequence[Callback]) -> List[Callback]:
    """History, step history and, with verbose, the printer (and a bar): fit's own callbacks."""
    callbacks: List[Callback] = [History(), StepHistory()]
    if options.verbose:
        own_bar = any(isinstance(cb, ProgressBar) for cb in user_callbacks)  # as Keras does with its Progbar
        bar = own_bar or wants_bar(options.progress_bar, options.verbose)
        if bar and not own_bar:  # the bar shows the steps; the printer the epoch tables (as with verbose=2)
            callbacks.append(ProgressBar())
        callbacks.append(ProgressPrinter(2 if bar else options.verbose))
    return callbacks


def run_config(model: Any, cbs: CallbackList, strategy: Any, fast_path: bool, **fit_parts: Any) -> RunConfig:
    """The frozen part of a call's run: device, precision, callbacks, batch moves and iteration, reducer."""
    return RunConfig(
        device=model.device, precision=model.precision, callbacks=cbs,
        move=batch_mover(model.device, non_blocking=model.device.type == "cuda"),
        iterate=iter_batches if fast_path else iter,
        reducer=strategy.reducer, is_main_process=strategy.is_main, strategy=strategy, **fit_parts)


def recompute_for(model: Any, step: str) -> Optional[Callable[[Any, Any, Any], tuple]]:
    """The batch loss (and per-output losses) on given rows, for trimming padded batches under
    torchrun (default steps only)."""
    if not model._default_step(step) or model._setup.outputs.own_loss:  # a net's own loss: no recompute
        return None

    training = step == "train_step"

    def recompute(preds: Any, targets: Any, weights: Any = None) -> tuple:
        with torch.no_grad(), model.precision.autocast():  # weights: the rows' sample weights (StepResult.weights)
            loss, logs = steps.loss_and_logs(model, preds, targets, weights, training)
            return loss.detach(), logs

    return recompute


def epoch_log_keys(model: Any, has_val: bool, log_lr: bool) -> Optional[List[str]]:
    """The keys every epoch's logs will have, or None when an overridden step decides them."""
    if not model._default_step("train_step") or (has_val and not model._default_step("eval_step")):
        return None
    names = list(model.compiled_metrics)
    if isinstance(model.loss_fn, MultiLoss):  # each output's loss, logged like an extra step figure
        names += [f"{name}_loss" for name in model.loss_fn.names]
    keys = ["epoch", "loss", *names]
    if has_val:
        keys += ["val_loss", *("val_" + n for n in names)]
    if log_lr:
        keys += lr_log_keys(model.optimizer)
    return keys


def eval_run(model: Any, callbacks: Optional[Sequence[Callback]], fast_path: bool) -> Run:
    """The run of an evaluate or predict call (its strategy is ``run.config.strategy``)."""
    strategy = distributed.strategy(model.device, model.strategy)
    cbs = CallbackList(check_callbacks(callbacks), model, is_main_process=strategy.is_main)
    return Run(run_config(model, cbs, strategy, fast_path))


def evaluate_parts(model: Any, dl: Any, run: Run) -> tuple:
    """The loader and tracker of an evaluate call: this rank's part and figures over the whole dataset."""
    tracker = Tracker(copy_metrics(model.compiled_metrics), prefix="val_")
    return run.config.strategy.evaluate_loader(dl, tracker, recompute_for(model, "eval_step"))


def evaluate_result(figures: Any, verbose: Any, return_dict: bool, is_main: bool) -> Any:
    """What evaluate returns: the figures (a dict), or Keras' list ``[loss, *metrics]`` (the loss alone
    when there are no metrics); ``verbose`` prints them on one line first, through the formatter."""
    if verbose not in (0, None, False) and is_main:
        print(" - ".join(f"{k}: {format_figure(v, k)}" for k, v in figures.items()))
    if return_dict:
        return figures
    values = list(figures.values())
    return values[0] if len(values) == 1 else values
