"""What went wrong in a step, said the way a person fixes it, and tracebacks without the plumbing.

Owns turning an exception raised inside a step into a first line that names the culprit and the
fix: the layer whose input did not fit (found in the traceback: the innermost ``forward`` of a
submodule of the net, with the input it got), or the loss with the net's output and the targets
(shapes and dtypes, what that loss expects, the usual one-line fix). It also trims tracebacks of
the frames that are torch's module-call machinery and torchfit's loop, so a user's own code and
the failing line come first. It runs only after an exception: nothing here costs a step anything.
"""
from __future__ import annotations

import functools
import os
import types
from typing import Any, Callable, List, Optional

import torch
from torch import nn

from .batch import describe
from .errors import MetricError, StepError
from .formatting import count_of

_TORCHFIT_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_MODULE_CALL = os.path.join("torch", "nn", "modules", "module.py")
# torchfit's own plumbing between the user's call and the user's net or loss (kept: user-facing code)
_PLUMBING = ("loop.py", "model.py", "batch.py", "optim.py", "fast_path.py", "diagnose.py")


class LossError(RuntimeError):
    """The loss function raised; the message says what it got and what it expects."""


def step_failure(model: Any, exc: BaseException) -> str:
    """The first line of a failed step's error: the loss's or the layer's diagnosis, else torch's message."""
    if isinstance(exc, LossError):
        return str(exc)
    return net_failure(model.net, exc) or f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ the loss
def loss_failure(loss_fn: Any, preds: Any, targets: Any, exc: BaseException) -> str:
    """One paragraph on why ``loss_fn(preds, targets)`` failed: what came, what it expects, the fix."""
    name = type(loss_fn).__name__ if isinstance(loss_fn, nn.Module) else getattr(loss_fn, "__name__", "the loss")
    got = f"the net's output {_tensor_text(preds)} and the targets {_tensor_text(targets)}"
    hint = _loss_hint(loss_fn, preds, targets)
    first = f"the loss {name} failed on {got}"
    return f"{first}: {hint}" if hint else f"{first}. {type(exc).__name__}: {_first_line(exc)}"


def _loss_hint(loss_fn: Any, preds: Any, targets: Any) -> Optional[str]:
    if not (isinstance(preds, torch.Tensor) and isinstance(targets, torch.Tensor)):
        return None
    p, t = preds, targets
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)) or loss_fn in (
            nn.functional.cross_entropy, nn.functional.nll_loss):
        if p.dim() < 2:
            return (f"it expects scores of shape (N, C), one column per class, and got {list(p.shape)}. For a binary "
                    "problem with one output use nn.BCEWithLogitsLoss(); otherwise give the last layer C outputs")
        c = p.shape[1]
        if t.is_floating_point() and t.shape == p.shape:
            return None  # probabilities per class: valid, the error is elsewhere
        if t.dim() == 2 and t.shape[1] == 1:
            return ("it expects class indices of shape (N,) (int64), and the targets are a column (N, 1). "
                    "Fix: y.squeeze(1).long() (or make the dataset return 1-d labels)")
        if t.dim() == 2 and t.shape[1] != c:
            return (f"the targets have {count_of(t.shape[1], 'column')} (one-hot?) but the net outputs "
                    f"{count_of(c, 'class', 'classes')}. Fix: make the last layer output "
                    f"{count_of(t.shape[1], 'class', 'classes')}, or one-hot encode with "
                    f"{count_of(c, 'class', 'classes')}")
        if t.is_floating_point():
            return ("it expects class indices as int64 (or per-class probabilities of the output's shape), and the "
                    f"targets are {str(t.dtype).replace('torch.', '')}. Fix: y.long() (labels must be whole "
                    f"numbers in [0, {c}))")
        if t.dim() == 1 and t.numel():
            lo, hi = int(t.min()), int(t.max())  # a sync, after the failure only
            if lo < 0 or hi >= c:
                return (f"the targets hold class indices from {lo} to {hi}, but the net outputs "
                        f"{count_of(c, 'class', 'classes')} "
                        f"(indices 0 to {c - 1}). Fix: give the last layer {hi + 1} outputs, or relabel the classes "
                        "from 0")
        return None
    if isinstance(loss_fn, (nn.BCELoss, nn.BCEWithLogitsLoss)) or loss_fn in (
            nn.functional.binary_cross_entropy, nn.functional.binary_cross_entropy_with_logits):
        if p.shape != t.shape:
            fix = ("y.float().unsqueeze(1)" if t.dim() == 1 and p.dim() == 2 and p.shape[1] == 1
                   else "preds.squeeze(1)" if p.dim() == 2 and p.shape[1] == 1 and t.dim() == 1 else
                   "make the net output one column per target")
            return f"it expects the output and the targets of the same shape. Fix: {fix}"
        if not t.is_floating_point():
            return "it expects float targets (0.0 / 1.0). Fix: y.float()"
        return None
    if isinstance(loss_fn, (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)):
        if not t.is_floating_point():
            return "it expects float targets. Fix: y.float()"
        if p.shape != t.shape:
            return (f"the output {list(p.shape)} and the targets {list(t.shape)} differ in shape. Fix: make them "
                    "equal, e.g. y.view_as(preds) or preds.squeeze(1)")
    return None


# ------------------------------------------------------------------- the net
def net_failure(net: nn.Module, exc: BaseException) -> Optional[str]:
    """The layer that raised (the innermost ``forward`` of a submodule of ``net`` in the traceback),
    what it got and what it expects, or None when the error did not come from a layer's forward."""
    names = {id(m): name for name, m in net.named_modules()}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        module = frame.f_locals.get("self")
        if frame.f_code.co_name == "forward" and isinstance(module, nn.Module) and id(module) in names:
            found = (module, frame)
        tb = tb.tb_next
    if found is None:
        return None
    module, frame = found
    name = names[id(module)] or type(module).__name__
    got = _forward_input(frame)
    shape = list(got.shape) if isinstance(got, torch.Tensor) else None
    where = f"layer {name!r} ({module!r})" if len(repr(module)) <= 80 else f"layer {name!r} ({type(module).__name__})"
    hint = _layer_hint(module, got)
    if hint:
        return f"{where} got an input of shape {shape}: {hint}"
    detail = f" of shape {shape}" if shape is not None else ""
    return f"{where} raised on its input{detail}. {type(exc).__name__}: {_first_line(exc)}"


def _forward_input(frame: types.FrameType) -> Any:
    code = frame.f_code
    for var in code.co_varnames[1:code.co_argcount]:  # the forward's arguments after self
        value = frame.f_locals.get(var)
        if isinstance(value, torch.Tensor):
            return value
    return None


def _layer_hint(module: nn.Module, x: Any) -> Optional[str]:
    if not isinstance(x, torch.Tensor):
        return None
    if isinstance(module, nn.Linear) and x.shape[-1:] != (module.in_features,):
        return (f"its last dimension is {x.shape[-1]} but in_features={module.in_features}. Fix: "
                f"nn.Linear({x.shape[-1]}, {module.out_features}), or make the layer before it output "
                f"{module.in_features} features (flatten first for images)")
    if isinstance(module, nn.modules.conv._ConvNd):
        dims, kind = len(module.kernel_size), type(module).__name__
        if x.dim() == dims + 1 and x.shape[0] != module.in_channels:
            return (f"a {kind} takes (N, C, ...) input with {count_of(dims, 'spatial dimension')}; this one has no "
                    "channel dimension. Fix: x.unsqueeze(1) for single-channel data (N, 1, ...)")
        if x.dim() not in (dims + 1, dims + 2):
            return f"a {kind} takes {dims + 2}-d (N, C, ...) input, this is {x.dim()}-d. Fix: reshape it to (N, C, ...)"
        channels = x.shape[1] if x.dim() == dims + 2 else x.shape[0]
        if channels != module.in_channels:
            return (f"it has {channels} channels (dimension 1) but in_channels={module.in_channels}. Fix: "
                    f"{kind}({channels}, ...), or check the channel order (N, C, H, W)")
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and x.dim() > 1 and x.shape[1] != module.num_features:
        return (f"its dimension 1 is {x.shape[1]} but num_features={module.num_features}. Fix: "
                f"{type(module).__name__}({x.shape[1]})")
    if isinstance(module, nn.Embedding):
        if x.is_floating_point():
            return "an Embedding takes integer token ids, this is float. Fix: x.long()"
        if x.numel():
            hi = int(x.max())  # a sync, after the failure only
            if hi >= module.num_embeddings or int(x.min()) < 0:
                return (f"it holds token ids up to {hi}, but num_embeddings={module.num_embeddings}. Fix: "
                        f"nn.Embedding({hi + 1}, {module.embedding_dim}) (or check the vocabulary)")
    if isinstance(module, nn.RNNBase) and x.dim() >= 2 and x.shape[-1] != module.input_size:
        return (f"its last dimension is {x.shape[-1]} but input_size={module.input_size}. Fix: "
                f"{type(module).__name__}({x.shape[-1]}, ...); inputs are (N, T, features) with batch_first=True")
    return None


# --------------------------------------------------------------- tracebacks
def user_traceback(verb: Callable) -> Callable:
    """A failed step's traceback without torch's module-call frames and torchfit's loop: the user's
    call, their code (net, loss, overridden step) and the line that raised."""

    @functools.wraps(verb)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return verb(*args, **kwargs)
        except (StepError, MetricError) as exc:
            trim_traceback(exc)
            raise

    return call


def trim_traceback(exc: BaseException) -> None:
    """Drop torch's module-call frames and torchfit's own plumbing from ``exc``'s traceback and its
    causes' (in place), keeping the user's code and the innermost frame where the error was raised."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = _kept(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def _kept(tb: Optional[types.TracebackType]) -> Optional[types.TracebackType]:
    frames: List[types.TracebackType] = []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    if not frames:
        return None
    keep = [t for t in frames[:-1] if not _plumbing(t.tb_frame.f_code.co_filename)] + [frames[-1]]
    out = None
    for t in reversed(keep):
        out = types.TracebackType(out, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return out


def _plumbing(filename: str) -> bool:
    if filename.endswith(_MODULE_CALL):
        return True
    return filename.startswith(_TORCHFIT_DIR) and os.path.basename(filename) in _PLUMBING


def _tensor_text(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"{list(obj.shape)} {str(obj.dtype).replace('torch.', '')}"
    return str(describe(obj))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
