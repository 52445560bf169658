"""Assertions for unit tests of nets and training code: plain ``AssertionError``s whose message names the fix.

Owns the checks a test of a model makes again and again: the net learns (the loss on one
batch falls; it can overfit a few samples), every trainable parameter gets a finite,
non-zero gradient, the samples of a batch do not leak into each other, and training is
deterministic under ``seed_everything``. Each works on a copy, so the model under test
comes back unchanged (weights, BatchNorm statistics, optimizer state, history, modes).
Training goes through ``torchfit.Model.fit``; the forward and backward passes of the
gradient checks call the net directly.
"""
from __future__ import annotations

import copy
import os
import random
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..batch import call_net, describe, to_device
from ..callbacks import LambdaCallback
from ..inputs import eval_loader
from ..losses import adapt_targets
from ..model import Model
from ..seeding import seed_everything

__all__ = ["assert_loss_decreases", "assert_can_overfit", "assert_gradients_flow", "assert_batch_independent",
           "assert_deterministic"]


def _check_model(model: Any, helper: str) -> None:
    if not isinstance(model, Model) or model.device is None:
        got = type(model).__name__ if not isinstance(model, Model) else "a Model that is not compiled"
        raise TypeError(f"{helper} needs a compiled torchfit.Model; got {got}. Wrap and compile the net first: "
                        f"torchfit.Model(net).compile(loss=nn.CrossEntropyLoss(), optimizer='adam')")


def _copy(model: Any, helper: str) -> Any:
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise TypeError(f"{helper} trains a copy of the model (copy.deepcopy), and copying failed: "
                        f"{type(exc).__name__}: {exc}. Keep unpicklable objects (open files, locks) out of the "
                        "net and its optimizer") from exc


def _pair(batch: Any, helper: str) -> Tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"{helper} needs one batch as a pair (x, y) of tensors; got {describe(batch)}. Take one "
                        "from a loader: batch = next(iter(dl_train))")
    return batch[0], batch[1]


def _loss_value(model: Any, batch: Any) -> float:
    return float(model.evaluate([batch])["val_loss"])


# ------------------------------------------------------------------------- learning
def assert_loss_decreases(model: Any, batch: Any, steps: int = 20, factor: float = 2.0) -> Dict[str, float]:
    """Train a copy of ``model`` for ``steps`` optimizer steps on one batch; the loss must fall by ``factor``.

    The loss is measured in eval mode (no dropout) before and after, on the same batch.
    Returns ``{"before": ..., "after": ...}``; ``model`` itself is not changed.

    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> model = Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), 0.05), device="cpu")
    >>> x, y = torch.randn(16, 4), torch.arange(16) % 3
    >>> figures = assert_loss_decreases(model, (x, y), steps=30, factor=3)
    """
    helper = "assert_loss_decreases"
    _check_model(model, helper)
    _pair(batch, helper)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1; got {steps!r}")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor > 1:
        raise ValueError(f"factor must be a number > 1 (the loss must fall to 1/factor of its start); got {factor!r}")
    trial = _copy(model, helper)
    before = _loss_value(trial, batch)
    trial.fit(steps, [batch], verbose=0)  # one batch per epoch: `steps` optimizer steps
    after = _loss_value(trial, batch)
    figures = {"before": before, "after": after}
    if not after * factor <= before:
        ratio = before / after if after > 0 else float("inf")
        raise AssertionError(
            f"the net does not learn: in {steps} steps on one batch the loss went from {before:.4g} to {after:.4g} "
            f"(x{ratio:.3g} lower; wanted x{factor:g}). Check that the optimizer holds the net's parameters "
            "(compile builds it from model.parameters() when given a name), the learning rate (try 1e-2 on one "
            "batch), that the loss gets what it expects (logits for CrossEntropyLoss/BCEWithLogitsLoss, not "
            "probabilities) and that every layer gets a gradient (assert_gradients_flow names those that do not)")
    return figures


def assert_can_overfit(model: Any, data: Any, accuracy: Optional[float] = 1.0, loss: Optional[float] = None,
                       epochs: int = 200, batch_size: Optional[int] = None) -> Dict[str, float]:
    """Train a copy of ``model`` on a few samples until it fits them: ``accuracy`` reached, or the loss at most ``loss``.

    ``data``: a Dataset or a pair ``(x, y)`` of a few samples (8-64: a net that cannot learn
    them will not learn more). The figures are measured in eval mode after each epoch; training
    stops as soon as they are reached. ``accuracy`` needs ``"accuracy"`` among the compiled
    metrics; pass ``accuracy=None, loss=0.01`` for a regression. Returns the last figures
    (``{"epochs": ..., "val_loss": ..., "val_accuracy": ...}``); ``model`` is not changed.

    >>> net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
    >>> model = Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), 0.02),
    ...                                     ["accuracy"], device="cpu")
    >>> figures = assert_can_overfit(model, (torch.randn(16, 4), torch.arange(16) % 3))
    """
    helper = "assert_can_overfit"
    _check_model(model, helper)
    if accuracy is None and loss is None:
        raise ValueError("assert_can_overfit needs a target: accuracy=1.0 (classification) or loss=0.01")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1; got {epochs!r}")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        data = torch.utils.data.TensorDataset(*data)
    n = len(data)
    dl = eval_loader(data, batch_size=batch_size or n, loss_fn=model.loss_fn)
    trial = _copy(model, helper)
    figures: Dict[str, float] = dict(trial.evaluate(dl))  # on the copy: the figures evaluate gives, before training
    if accuracy is not None and "val_accuracy" not in figures:
        raise ValueError(f"assert_can_overfit(accuracy={accuracy}) reads the 'accuracy' metric, and the model's "
                         f"figures are {sorted(figures)}: compile with metrics=['accuracy'], or pass accuracy=None, "
                         "loss=0.01")

    def reached() -> bool:
        ok_acc = accuracy is None or figures["val_accuracy"] >= accuracy
        ok_loss = loss is None or figures["val_loss"] <= loss
        return ok_acc and ok_loss

    def measure(epoch: int, logs: dict) -> None:
        figures.update(trial.evaluate(dl), epochs=epoch)
        if reached():
            trial.stop_training = True

    trial.fit(epochs, dl, verbose=0, callbacks=[LambdaCallback(on_epoch_end=measure)], fast_path=False)
    if not reached():
        wanted = " and ".join(w for w in (accuracy is not None and f"accuracy {accuracy:g}",
                                          loss is not None and f"loss {loss:g}") if w)
        got = ", ".join(f"{k[4:]} {v:.4g}" for k, v in figures.items() if k.startswith("val_"))
        raise AssertionError(
            f"the net cannot overfit {n} samples: after {epochs} epochs it reached {got} (wanted {wanted}). A net "
            "that cannot memorise a handful of samples has a bug: check that outputs and targets line up (shapes, "
            "class indices), the learning rate, that no layer is frozen or dead (assert_gradients_flow), and that "
            "the net is large enough for the task")
    return figures


# ------------------------------------------------------------------------ gradients
def _loss_for(target: Any, loss_fn: Optional[Callable], helper: str) -> Tuple[nn.Module, Callable, Any]:
    if isinstance(target, Model):
        if loss_fn is None:
            if target.loss_fn is None:
                raise TypeError(f"{helper}: the model has no loss; compile it with loss=... or pass loss_fn=")
            loss_fn = target.loss_fn
        return target.net, loss_fn, target.device
    if not isinstance(target, nn.Module):
        raise TypeError(f"{helper} needs a torchfit.Model or an nn.Module; got {type(target).__name__}")
    if loss_fn is None:
        raise TypeError(f"{helper} got a plain nn.Module: pass its loss too, loss_fn=nn.CrossEntropyLoss() (or a "
                        "compiled torchfit.Model)")
    device = next((p.device for p in target.parameters()), torch.device("cpu"))
    return target, loss_fn, device


def _owner(name: str, modules: Dict[str, nn.Module]) -> str:
    path = name.rsplit(".", 1)[0] if "." in name else ""
    module = modules.get(path)
    kind = type(module).__name__ if module is not None else "?"
    return f"{path or '(the net itself)'} ({kind})"


def assert_gradients_flow(model: Any, batch: Any, loss_fn: Optional[Callable] = None,
                          frozen: Sequence[str] = ()) -> Dict[str, float]:
    """One forward and backward pass on a copy: every trainable parameter must get a finite, non-zero gradient.

    Fails naming the module of each parameter with no gradient (a detached branch, an unused
    layer, ``.detach()`` or ``torch.no_grad()`` in ``forward``), a zero gradient (a dead ReLU
    layer, an output multiplied by zero) or a non-finite one. Parameters with
    ``requires_grad=False`` fail too (a frozen layer that should train) unless their module
    path starts with one of ``frozen`` (``frozen=("backbone",)``). ``model``: a compiled
    ``torchfit.Model``, or an ``nn.Module`` with ``loss_fn``. The pass runs in training mode.
    Returns each parameter's gradient norm; ``model`` is not changed.

    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> norms = assert_gradients_flow(net, (torch.randn(8, 4), torch.arange(8) % 3), loss_fn=nn.CrossEntropyLoss())
    >>> sorted(norms)
    ['0.bias', '0.weight', '2.bias', '2.weight']
    """
    helper = "assert_gradients_flow"
    net, loss_fn, device = _loss_for(model, loss_fn, helper)
    x, y = _pair(batch, helper)
    if isinstance(frozen, str):
        frozen = (frozen,)
    net = _copy(net, helper)
    net.train()
    x, y = to_device((x, y), device)
    modules = dict(net.named_modules())
    trainable = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
    problems: List[str] = []
    for name, p in net.named_parameters():
        if not p.requires_grad and not any(name == f or name.startswith(f + ".") for f in frozen):
            problems.append(f"{name} in {_owner(name, modules)}: frozen (requires_grad=False); pass "
                            f"frozen=({name.rsplit('.', 1)[0]!r},) if it should not train")
    if not trainable:
        raise AssertionError("no parameter of the net has requires_grad=True: nothing can train")
    preds = call_net(net, x)
    loss = loss_fn(preds, adapt_targets(loss_fn, preds, y))
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise TypeError(f"the loss must return a scalar tensor; got {describe(loss)}")
    if not loss.requires_grad:
        raise AssertionError("the loss does not depend on any trainable parameter (no grad_fn): the output is "
                             "computed under torch.no_grad(), detached, or from frozen layers only")
    grads = torch.autograd.grad(loss, [p for _, p in trainable], allow_unused=True)
    norms: Dict[str, float] = {}
    for (name, _), g in zip(trainable, grads):
        where = f"{name} in {_owner(name, modules)}"
        if g is None:
            problems.append(f"{where}: no gradient (not on the loss's graph: an unused layer, a detached branch, "
                            ".detach()/.data/torch.no_grad() in forward)")
            continue
        norm = float(g.detach().double().norm())
        norms[name] = norm
        if not torch.isfinite(g).all():
            problems.append(f"{where}: non-finite gradient (NaN/inf: a log of 0, a division by 0, an overflow)")
        elif norm == 0.0:
            problems.append(f"{where}: zero gradient (a dead ReLU layer, an output multiplied by 0, a clamp that "
                            "always saturates)")
    if problems:
        raise AssertionError(f"{len(problems)} parameter(s) would not train, on a batch {describe(x)}:\n  "
                             + "\n  ".join(problems))
    return norms


def assert_batch_independent(net: Any, x: torch.Tensor, sample: int = 0, mode: str = "eval") -> None:
    """The output for sample ``sample`` must not depend on the other samples of the batch.

    Takes the gradient of sample ``sample``'s output (a random projection of it) with
    respect to the whole input batch ``x`` (floating, ``(N, ...)``, ``N >= 2``): any
    non-zero gradient on another row is a leak. Leaks come from a ``view``/``reshape``/
    ``transpose`` over the batch dimension, a mean or softmax over ``dim=0``, or BatchNorm in
    training mode (``mode="train"``; in ``"eval"``, the default, it uses its running
    statistics). The message names the first module whose output leaks. ``net``: an
    ``nn.Module`` or a ``torchfit.Model``; it is not changed.

    >>> assert_batch_independent(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(5, 4))
    """
    if isinstance(net, Model):
        net = net.net
    if not isinstance(net, nn.Module):
        raise TypeError(f"assert_batch_independent needs an nn.Module or a torchfit.Model; got {type(net).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1 or x.shape[0] < 2:
        raise TypeError(f"x must be a floating tensor batch (N, ...) with N >= 2; got {describe(x)}. For token ids, "
                        "check the net after its embedding: assert_batch_independent(net.body, embeddings)")
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train'; got {mode!r}")
    n = x.shape[0]
    if not 0 <= sample < n:
        raise ValueError(f"sample must be a row of x, in [0, {n - 1}]; got {sample!r}")
    net = _copy(net, "assert_batch_independent")
    net.train(mode == "train")
    device = next((p.device for p in net.parameters()), x.device)
    x = x.detach().to(device).requires_grad_(True)
    outputs: List[Tuple[str, torch.Tensor]] = []

    def keep(name: str) -> Callable:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.dim() >= 1 and out.shape[0] == n and out.requires_grad:
                outputs.append((name, out))
        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in net.named_modules() if name]
    try:
        out = net(x)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[0] != n:
        raise AssertionError(f"the net's output for a batch of {n} is {describe(out)}, not (N={n}, ...): it mixes "
                             "or drops the batch dimension (a reshape/flatten over dim 0?)")
    generator = torch.Generator().manual_seed(0)

    def leaked(t: torch.Tensor) -> List[int]:
        weights = torch.rand(t[sample].shape, generator=generator, dtype=torch.float64).to(t.device, t.dtype) + 0.5
        (g,) = torch.autograd.grad((t[sample] * weights).sum(), x, retain_graph=True, allow_unused=True)
        if g is None:
            return []
        per_row = g.detach().reshape(n, -1).abs().sum(dim=1)
        return [j for j in range(n) if j != sample and per_row[j] != 0]

    rows = leaked(out)
    if not rows:
        return
    culprit = next(((name, type(dict(net.named_modules())[name]).__name__) for name, t in outputs if leaked(t)), None)
    at = (f"the first module whose output leaks is {culprit[0]} ({culprit[1]}): the mixing happens in it or in "
          f"forward just before it" if culprit else "no submodule's output leaks: the mixing happens in forward")
    hint = (" BatchNorm in training mode normalises over the batch by design: check in mode='eval', or use "
            "LayerNorm/GroupNorm" if culprit and "BatchNorm" in culprit[1] else "")
    shown = rows[:8] + (["..."] if len(rows) > 8 else [])
    raise AssertionError(
        f"samples leak into each other ({mode} mode): the output for sample {sample} depends on the input of sample(s) "
        f"{shown}; {at}. Look for a view/reshape/transpose over the batch dimension (reshape(-1, N) instead of "
        f"reshape(N, -1), x.t() on a batch) or a reduction over dim=0 (mean, softmax, sum).{hint}")


# --------------------------------------------------------------------- determinism
def _rng_states() -> tuple:
    return (random.getstate(), np.random.get_state(), torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None, os.environ.get("PYTHONHASHSEED"))


def _restore_rng(states: tuple) -> None:
    py, npy, cpu, cuda, hashseed = states
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    if hashseed is None:
        os.environ.pop("PYTHONHASHSEED", None)
    else:
        os.environ["PYTHONHASHSEED"] = hashseed


def assert_deterministic(train: Callable[[], Any], seed: int = 0, runs: int = 2) -> Any:
    """Call ``train()`` ``runs`` times, each after ``seed_everything(seed)``: the results must be equal, bit for bit.

    ``train`` builds and trains a model and returns it: a ``torchfit.Model`` (its net's
    ``state_dict`` and its history are compared) or an ``nn.Module`` (its ``state_dict``).
    Fails naming the first parameter or history column that differs. The caller's random
    states (Python, numpy, torch) come back as they were. Returns the first run's model.

    >>> def train():
    ...     net = nn.Linear(4, 2)
    ...     model = Model(net).compile(nn.CrossEntropyLoss(), "sgd", device="cpu")
    ...     model.fit(2, x=torch.randn(32, 4), y=torch.arange(32) % 2, verbose=0)
    ...     return model
    >>> model = assert_deterministic(train)
    """
    if not callable(train):
        raise TypeError(f"train must be a function that builds, trains and returns a model; got {type(train).__name__}")
    if not isinstance(runs, int) or runs < 2:
        raise ValueError(f"runs must be an int >= 2; got {runs!r}")
    saved = _rng_states()
    results = []
    try:
        for _ in range(runs):
            seed_everything(seed)
            results.append(train())
    finally:
        _restore_rng(saved)
    first = results[0]
    if not isinstance(first, nn.Module):
        raise TypeError(f"train() must return the trained model (a torchfit.Model or an nn.Module); it returned "
                        f"{type(first).__name__}")
    net_of = (lambda m: m.net) if isinstance(first, Model) else (lambda m: m)
    reference = net_of(first).state_dict()
    for run, other in enumerate(results[1:], 2):
        state = net_of(other).state_dict()
        if state.keys() != reference.keys():
            raise AssertionError(f"run {run} built a different net: its parameters {sorted(set(state) ^ set(reference))} "
                                 "differ from run 1's. train() must build the same net every time")
        for key, value in reference.items():
            if not torch.equal(value, state[key]):
                diff = (value.double() - state[key].double()).abs().max() if value.is_floating_point() else "?"
                raise AssertionError(
                    f"training is not deterministic: after seed_everything({seed}), run {run} gives {key} different "
                    f"from run 1 (largest difference {float(diff) if diff != '?' else diff:.3g}). Seed inside train() "
                    "nothing but what seed_everything does not cover: a DataLoader's own generator "
                    "(generator=torch.Generator().manual_seed(0)), numpy Generators; with DataLoader workers pass "
                    "worker_init_fn; on a GPU call seed_everything(seed, deterministic=True)")
        if isinstance(first, Model):
            a, b = first.history, other.history
            if list(a.columns) != list(b.columns) or len(a) != len(b):
                raise AssertionError(f"run {run}'s history has columns {list(b.columns)} and {len(b)} rows; run 1's "
                                     f"{list(a.columns)} and {len(a)}")
            for column in a.columns:
                if not a[column].equals(b[column]):
                    raise AssertionError(f"training is not deterministic: the history's {column!r} differs between "
                                         f"run 1 {a[column].tolist()} and run {run} {b[column].tolist()}")
    return first
