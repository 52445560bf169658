"""The default steps: their loss, per-output losses, sample weights, and the once-per-fit checks.

Owns the bodies of ``Model.train_step`` / ``eval_step`` / ``predict_step``
(``train_step``, ``eval_step``, ``predict_step`` here: batch split, forward,
loss, backward through the model's seam) and what they do between the net's
output and the loss: ``compute_loss`` (checked to be a scalar, a failure diagnosed),
several outputs' losses (``heads.MultiLoss``), Keras' sample and class weights
(``losses.SampleWeighting``), and the checks the first training batch gets
before any weight changes (its labels against the loss, the metrics against the
net's outputs). ``Model`` keeps the seam a user overrides; this module is what
the default seam calls.
"""
from __future__ import annotations

from typing import Any

import torch

from .batch import batch_size_of, call_net, detach, predict_inputs, split_batch
from .diagnose import LossError, loss_failure
from .heads import MultiLoss
from .losses import SampleWeighting, adapt_targets, check_targets
from .metrics import Tracker, copy_metrics
from .loop import StepResult


def train_step(model: Any, batch: Any) -> StepResult:
    """``Model.train_step``'s default body (see its docstring)."""
    run = model.run
    config = run.config
    fmt = model._setup.outputs
    x, y, w = split_batch(batch, "fit", fmt.target_key, fmt.own_loss)
    config.optim.zero_grad()
    with config.precision.autocast():
        out = call_net(config.train_net, x)
        if fmt.own_loss:
            loss, logs, preds = _own_loss(model, fmt, out, w, True), None, fmt.preds(out, bool(model.compiled_metrics))
        else:
            preds = out if type(out) is torch.Tensor else fmt.preds(out)
            if run.check_targets:  # once per fit, before any weight changes: labels the loss cannot mean
                run.check_targets = False
                check_first_targets(model.loss_fn, preds, y)
            y = adapt_targets(model.loss_fn, preds, y)  # Keras' reading of labels: shapes and dtypes only
            loss, logs = loss_and_logs(model, preds, y, w, training=True)
    n = batch_size_of(y, x)
    model.backward(loss, n)
    preds = detach(preds)
    if run.preflight:  # once per fit, before the first optimizer step, on throwaway copies
        run.preflight = False
        preflight_metrics(model.compiled_metrics, preds, y, n)
    model.optimizer_step()
    return StepResult(loss.detach(), preds, y, n, logs, w)


def eval_step(model: Any, batch: Any) -> StepResult:
    """``Model.eval_step``'s default body: the train step's loss without backward (eval mode, no_grad)."""
    fmt = model._setup.outputs
    x, y, w = split_batch(batch, "evaluate", fmt.target_key, fmt.own_loss)
    with model.run.config.precision.autocast():
        out = call_net(model.net, x)
        if fmt.own_loss:
            loss, logs, preds = _own_loss(model, fmt, out, w, False), None, fmt.preds(out, bool(model.compiled_metrics))
        else:
            preds = out if type(out) is torch.Tensor else fmt.preds(out)
            y = adapt_targets(model.loss_fn, preds, y)
            loss, logs = loss_and_logs(model, preds, y, w, training=False)
    return StepResult(loss, preds, y, batch_size_of(y, x), logs, w)


def predict_step(model: Any, batch: Any) -> Any:
    """``Model.predict_step``'s default body: the net's output for the batch's inputs; of an output
    object, the field ``compile(output_key=...)`` names (or every field)."""
    fmt = model._setup.outputs
    with model.run.config.precision.autocast():
        out = call_net(model.net, predict_inputs(batch, fmt.target_key))
    return out if type(out) is torch.Tensor else fmt.predicted(out)


def _own_loss(model: Any, fmt: Any, out: Any, weights: Any, training: bool) -> torch.Tensor:
    """The loss the net computed (``compile(loss=None)``); sample weights cannot reach it."""
    weighting = model.run.config.weighting
    if weights is not None or (weighting is not None and weighting.applies(None, training)):
        raise TypeError("sample_weight / class_weight weigh a loss torchfit computes; with compile(loss=None) the "
                        "net computes its own. Pass the loss to compile (e.g. nn.CrossEntropyLoss()) to weigh samples")
    return fmt.loss(out)


def compute_loss(loss_fn: Any, preds: Any, targets: Any) -> torch.Tensor:
    """``loss_fn(preds, targets)``, checked to be a scalar; a failing loss says what it got and expects."""
    try:
        loss = loss_fn(preds, targets)
    except Exception as exc:
        raise LossError(loss_failure(loss_fn, preds, targets, exc)) from exc
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"the loss must return a scalar (0-d) tensor; it returned {got}. Use a mean-reduced loss "
            "(e.g. nn.CrossEntropyLoss() with reduction='mean') or end your loss function with .mean()"
        )
    return loss


def loss_and_logs(model: Any, preds: Any, targets: Any, weights: Any, training: bool) -> tuple:
    """The batch loss and the per-output losses (several outputs), sample-weighted when asked."""
    loss_fn = model.loss_fn
    weighting = model.run.config.weighting
    if isinstance(loss_fn, MultiLoss):
        if weights is not None or (weighting is not None and weighting.applies(None, training)):
            raise TypeError("sample_weight / class_weight with several losses is not supported; weigh "
                            "inside your losses, or train one output at a time")
        try:
            return loss_fn.parts(preds, targets)
        except Exception as exc:
            raise LossError(f"{type(exc).__name__} in the loss of several outputs: {exc}") from exc
    if weighting is None or not weighting.applies(weights, training):
        if weights is None:
            return model.compute_loss(preds, targets), None
        weighting = SampleWeighting(loss_fn)  # weights in the batch, fit not told: Keras weighs them
    try:
        return weighting.loss(preds, targets, weights, training), None
    except TypeError:
        raise
    except Exception as exc:
        raise LossError(loss_failure(loss_fn, preds, targets, exc)) from exc


def check_first_targets(loss_fn: Any, preds: Any, targets: Any) -> None:
    """The first training batch's labels against the loss (once per fit, before any weight changes)."""
    if isinstance(loss_fn, MultiLoss):
        loss_fn.check_targets(preds, targets)
    elif loss_fn is not None:
        check_targets(loss_fn, preds, targets)


def preflight_metrics(metrics: Any, preds: Any, targets: Any, n: int) -> None:
    """The metrics on throwaway copies with the first batch's outputs, before the first optimizer
    step: a metric that cannot handle the net's outputs fails before weights change."""
    probe = Tracker(copy_metrics(metrics))
    probe.reset()  # a metric may set its state up in reset(), as the Metric docstring shows
    probe.update(StepResult(None, preds, targets, n))
    probe.compute()


def keras_loss(model: Any, preds: Any, targets: Any, sample_weight: Any, training: bool) -> torch.Tensor:
    """``Model.compute_loss``: the compiled loss of ``preds`` against ``targets``, weighted per sample
    as fit weighs ``sample_weight`` (Keras' ``compute_loss(y=, y_pred=, sample_weight=)``)."""
    if sample_weight is None:
        return compute_loss(model.loss_fn, preds, targets)
    try:
        return SampleWeighting(model.loss_fn).loss(preds, targets, sample_weight, training)
    except TypeError:
        raise
    except Exception as exc:
        raise LossError(loss_failure(model.loss_fn, preds, targets, exc)) from exc
