"""Checking what users pass to ``fit`` and the other verbs, once, before anything changes.

Owns the argument checks that do not need the model's state: counts, clipping
thresholds, verbosity, loaders, and ``FitOptions`` (fit's settings that shape
a run, checked together). Each error names the argument and the fix. The
checks that need the model (its net, optimizer, loss) stay in ``Model``.

``FitArgs`` is fit's arguments as one value (the notebook launcher hands it to
its workers whole), and ``check_fit`` turns it into a ``CheckedFit``: everything
fit decided before the run is assembled, with the checkpoint of ``resume_from``
read and checked but not applied.
"""
from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Iterator
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from . import checkpoint, distributed, inputs
from .callbacks import Callback, CallbackList, ProgressPrinter
from .callbacks.base import check_callbacks
from .callbacks import profiling
from .callbacks.liveplot import LivePlot
from .callbacks.schedulers import from_fit_argument
from .errors import NotCompiledError
from .heads import MultiLoss
from .loaders import first_batches, loader_length
from .losses import SampleWeighting


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """fit's settings that shape the run, checked once (``check``) before anything changes."""

    verbose: int
    log_step_freq: Optional[int]
    grad_accum_steps: int
    grad_clip_norm: Optional[float]
    grad_clip_value: Optional[float]
    progress_bar: Optional[bool]
    fast_path: bool
    steps_per_epoch: Optional[int] = None
    validation_steps: Optional[int] = None
    validation_freq: int = 1

    @classmethod
    def check(cls, verbose: Any, log_step_freq: Any, grad_accum_steps: Any, grad_clip_norm: Any,
              grad_clip_value: Any, progress_bar: Any, fast_path: Any, steps_per_epoch: Any = None,
              validation_steps: Any = None, validation_freq: Any = 1) -> "FitOptions":
        if verbose == "auto":  # Keras' default: step output and tables
            verbose = 1
        if verbose not in (0, 1, 2) or isinstance(verbose, bool):
            raise ValueError(f"verbose must be 0 (silent), 1 (step dicts and tables), 2 (tables only) or 'auto' "
                             f"(1); got {verbose!r}")
        if steps_per_epoch is not None:
            steps_per_epoch = check_count("steps_per_epoch", steps_per_epoch, minimum=1)
        if validation_steps is not None:
            validation_steps = check_count("validation_steps", validation_steps, minimum=1)
        validation_freq = check_count("validation_freq", validation_freq, minimum=1)
        if log_step_freq is not None:
            log_step_freq = check_count("log_step_freq", log_step_freq, minimum=1)
        grad_accum_steps = check_count("grad_accum_steps", grad_accum_steps, minimum=1)
        for name, value in (("grad_clip_norm", grad_clip_norm), ("grad_clip_value", grad_clip_value)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                      or not value > 0 or value == float("inf")):
                raise ValueError(f"{name} must be a positive finite number or None; got {value!r}")
        return cls(int(verbose), log_step_freq, grad_accum_steps, grad_clip_norm, grad_clip_value, progress_bar,
                   bool(fast_path), steps_per_epoch, validation_steps, validation_freq)

    def log_every(self, n_batches: Optional[int]) -> int:
        """Steps between logging points: ``log_step_freq``, or about ten per epoch."""
        if self.log_step_freq is not None:
            return self.log_step_freq
        return max(1, -(-n_batches // 10)) if n_batches else 100  # ceil: at most ten logging points


@dataclasses.dataclass(frozen=True)
class FitArgs:
    """``Model.fit``'s arguments as given, one field per parameter (a test keeps them equal to the
    signature). ``kwargs()`` calls ``fit`` again with them (the launcher's workers do)."""

    epochs: Any = 1
    dl_train: Any = None
    dl_val: Any = None
    log_step_freq: Any = None
    callbacks: Any = None
    verbose: Any = 1
    initial_epoch: Any = None
    steps_per_epoch: Any = None
    validation_steps: Any = None
    validation_freq: Any = 1
    overfit_batches: Any = None
    class_weight: Any = None
    sample_weight: Any = None
    plot: Any = False
    profile: Any = False
    grad_accum_steps: Any = 1
    grad_clip_norm: Any = None
    grad_clip_value: Any = None
    lr_scheduler: Any = None
    resume_from: Any = None
    progress_bar: Any = None
    x: Any = None
    y: Any = None
    target: Any = None
    batch_size: Any = None
    validation_split: Any = None
    validation_data: Any = None
    shuffle: Any = None
    seed: Any = 0
    fast_path: Any = True
    num_processes: Any = None

    @classmethod
    def from_call(cls, data: tuple, **named: Any) -> "FitArgs":
        """fit's arguments with the positional ones placed by the order the caller wrote (``fit_order``)
        and torchkeras 4's ``train_data`` / ``val_data`` folded into ``dl_train`` / ``dl_val``."""
        for alias, name in (("train_data", "dl_train"), ("val_data", "dl_val")):
            value = named.pop(alias, None)
            if value is not None:
                if named.get(name) is not None:
                    raise TypeError(f"fit got both {alias}= (torchkeras 4) and {name}=; pass one")
                named[name] = value
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, value in zip(fit_order(data), data):
            if named.get(name, defaults[name]) is not defaults[name]:  # also given by name
                raise TypeError(f"fit got {name} twice: as positional argument {fit_order(data).index(name) + 1} "
                                f"and as {name}=; pass it once")
            named[name] = value
        return cls(**named)

    def kwargs(self, **changes: Any) -> Dict[str, Any]:
        """The keyword arguments of ``fit`` for these values (``num_processes`` left out), with ``changes``."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "num_processes"}
        values.update(changes)
        return values


#: The positional orders fit reads, chosen by what comes first.
TORCHKERAS_ORDER = ("epochs", "dl_train", "dl_val", "log_step_freq", "callbacks", "verbose")
LOADER_ORDER = ("dl_train", "dl_val", "epochs")  # torchkeras 4's fit(train_data, val_data, epochs)
KERAS_ORDER = ("x", "y", "batch_size", "epochs", "verbose", "callbacks", "validation_split", "validation_data",
               "shuffle", "class_weight", "sample_weight", "initial_epoch", "steps_per_epoch", "validation_steps")


def fit_order(data: tuple) -> tuple:
    """Which names fit's positional arguments have: torchkeras 1.x's ``fit(epochs, dl_train, dl_val, ...)``
    when the first is a number; torchkeras 4's ``fit(train_data, val_data, epochs)`` when it is a loader
    (anything iterable over batches but not an array); else Keras' ``fit(x, y, batch_size, epochs, ...)``.

    >>> fit_order((10, [(1, 2)]))[:2], fit_order(([(1, 2)],))[:1], fit_order((torch.zeros(3), torch.zeros(3)))[:2]
    (('epochs', 'dl_train'), ('dl_train',), ('x', 'y'))
    """
    if not data:
        return ()
    first = data[0]
    if first is None or isinstance(first, (numbers.Number, str)):  # an epoch count (checked as one later)
        order = TORCHKERAS_ORDER
    elif inputs.is_loader(first):
        order = LOADER_ORDER
    else:
        order = KERAS_ORDER
    if len(data) > len(order):
        raise TypeError(f"fit got {len(data)} positional arguments; in this order ({', '.join(order)}) it takes "
                        f"at most {len(order)}: pass the others by name")
    return order[: len(data)]


@dataclasses.dataclass(frozen=True)
class CheckedFit:
    """What ``check_fit`` decided: the run's settings, epochs, loaders, callbacks and the resume to apply."""

    options: FitOptions
    start: int  # epochs finished before this fit
    epochs: int  # epochs this fit runs
    dl_train: Any
    dl_val: Any
    callbacks: List[Callback]
    weighting: Optional[SampleWeighting]
    resume: Optional[checkpoint.Resume]


def check_net(net: Any, own_forward: bool) -> Any:
    """``Model(net)``'s argument: a module, or None for a subclass with its own ``forward``; returns ``net``."""
    if net is None and not own_forward:
        raise TypeError("torchfit.Model(net) needs the torch.nn.Module to train, e.g. Model(nn.Sequential(...)); "
                        "or subclass torchfit.Model, define your layers in __init__ and a forward method")
    if net is not None and not isinstance(net, torch.nn.Module):
        raise TypeError(f"torchfit.Model(net) needs a torch.nn.Module; got {type(net).__name__}. "
                        "Define your network as an nn.Module subclass (or nn.Sequential) and pass that")
    return net


def check_compiled(model: Any, verb: str, setup: Any) -> None:
    """``model.<verb>`` can run: compiled (``setup`` is what compile resolved), with a loss unless the
    step is the user's own; ``fit`` also needs something to train and no call in progress."""
    if setup is None:
        raise NotCompiledError(f"call model.compile(loss=..., optimizer=..., metrics=...) before model.{verb}(...)")
    overridden = {"fit": "train_step", "evaluate": "eval_step"}.get(verb)
    if model.loss_fn is None and overridden and model._default_step(overridden):
        raise NotCompiledError(
            f"model.{verb} needs a loss: call model.compile(loss=nn.CrossEntropyLoss(), ...) "
            f"(or override {overridden} to compute your own)"
        )
    if verb != "fit":
        return
    if model._default_step("train_step") and not any(p.requires_grad for p in model.net.parameters()):
        raise ValueError(
            "fit has nothing to train: every parameter of the net has requires_grad=False (frozen). "
            "Unfreeze what should learn, e.g. for p in model.net.head.parameters(): p.requires_grad_(True), "
            "then compile again; evaluate and predict work on a frozen net as it is"
        )
    if setup.foreign_optimizer is not None:
        raise ValueError(f"fit cannot train with the compiled optimizer: {setup.foreign_optimizer}")
    if model.run is not None:
        raise RuntimeError(
            "model.fit was called while this model is already in a fit, evaluate or predict call "
            "(from a callback?). Finish that call first: set model.stop_training = True in the "
            "callback and call fit again after it returns"
        )


def check_fit(model: Any, args: FitArgs) -> CheckedFit:
    """Every argument of ``fit`` checked against ``model`` before anything changes; ``resume_from``'s
    checkpoint is read and checked, not applied."""
    epochs = check_count("epochs", args.epochs, minimum=0)
    options = FitOptions.check(args.verbose, args.log_step_freq, args.grad_accum_steps, args.grad_clip_norm,
                               args.grad_clip_value, args.progress_bar, args.fast_path, args.steps_per_epoch,
                               args.validation_steps, args.validation_freq)
    first_epoch = check_initial_epoch(args.initial_epoch, epochs, args.resume_from)
    dl_train, dl_val = inputs.fit_loaders(
        args.dl_train, args.dl_val, x=args.x, y=args.y, target=args.target, batch_size=args.batch_size,
        validation_split=args.validation_split, validation_data=args.validation_data, shuffle=args.shuffle,
        seed=args.seed, loss_fn=model.loss_fn, epoch=model.epoch, sample_weight=args.sample_weight)
    if dl_train is None:
        raise TypeError("fit needs a training loader: model.fit(epochs, dl_train, dl_val=None)")
    weighting = weighting_for(model.loss_fn, args.class_weight, args.sample_weight, model._default_step("train_step"))
    check_loader("dl_train", dl_train)
    if dl_val is not None:
        check_loader("dl_val", dl_val)
    callbacks = check_callbacks(args.callbacks)
    if args.plot:
        callbacks.append(LivePlot())
    if args.profile:  # one Profiler per model (model.profiler), its rows continuing across fits
        callbacks.append(profiling.attach(model))
    if args.lr_scheduler is not None:
        callbacks.append(from_fit_argument(args.lr_scheduler, dl_val is not None, model.optimizer))
    if args.overfit_batches is not None:  # the same first n batches for training and validation, every epoch
        dl_train = dl_val = first_batches(dl_train, check_count("overfit_batches", args.overfit_batches, 1))
    resume, resume_from = None, backup_to_resume(callbacks, args.resume_from, first_epoch)
    if first_epoch is not None:  # Keras' initial_epoch: epochs is the number of the last epoch
        epochs -= first_epoch
    elif resume_from is not None:  # read and checked now, applied once fit's own checks pass
        resume = checkpoint.Resume.plan(model, resume_from, epochs)
        epochs, first_epoch = resume.epochs_left, resume.start
    start = model.epoch if first_epoch is None else first_epoch
    check_reiterable(epochs, dl_train, dl_val, options.steps_per_epoch)
    return CheckedFit(options, start, epochs, dl_train, dl_val, callbacks, weighting, resume)


def check_launch(model: Any, fit_args: Any) -> None:
    """``fit(num_processes=N)``'s arguments checked in the calling process, before any worker starts.

    ``fit_args``: a ``FitArgs`` or a dict of fit's keyword arguments (``launch_fit``'s). Every check
    ``check_fit`` makes runs here, ``resume_from``'s file read and checked included, so that a bad
    argument is the error a one-process fit gives, not a worker's traceback; nothing is changed. Two
    arguments are checked without their work, which is the workers': ``profile`` (it attaches
    ``model.profiler``) and ``overfit_batches`` (its batches are drawn from the loader).

    >>> # model.fit(3, dl, num_processes=2, epochs="3")  # ValueError here, no worker started
    """
    if isinstance(fit_args, FitArgs):
        args = fit_args
    else:
        known = {f.name for f in dataclasses.fields(FitArgs)} | {"train_data", "val_data"}
        unknown = sorted(set(fit_args) - known)
        if unknown:
            raise TypeError(f"launch_fit got {unknown}, which fit has no argument for; pass fit's keyword arguments, "
                            "e.g. {'epochs': 3, 'dl_train': dl}")
        args = FitArgs.from_call((), **fit_args)
    if args.overfit_batches is not None:
        check_count("overfit_batches", args.overfit_batches, minimum=1)
    check_fit(model, dataclasses.replace(args, profile=False, overfit_batches=None))


def announcer(cbs: CallbackList) -> Callable[..., None]:
    """``say(text, warn=False)``: a line through the printer's sink (all fit prints go there);
    without a printer (verbose=0), lines marked ``warn`` become a RuntimeWarning on rank 0."""
    printer = cbs.find(ProgressPrinter)  # present on rank 0 only (rank_zero_only)

    def say(text: str, warn: bool = False) -> None:
        if printer is not None:
            printer.sink(text)
        elif warn and distributed.is_main_process():
            warnings.warn(text, RuntimeWarning, stacklevel=4)

    return say


def check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def check_reiterable(epochs: int, dl_train: Any, dl_val: Any, steps_per_epoch: Optional[int]) -> None:
    """Refuse one-shot iterators (generators) that a fit would need to iterate again."""
    if epochs > 1 and steps_per_epoch is None and isinstance(dl_train, Iterator):
        raise ValueError(
            f"dl_train is an iterator ({type(dl_train).__name__}), which runs out after one pass: epoch 2 would "
            "find it empty. Pass something that can be iterated again (a DataLoader, a list of batches), or an "
            "endless generator with steps_per_epoch=N"
        )
    if epochs > 1 and isinstance(dl_val, Iterator):
        raise ValueError(
            f"dl_val is an iterator ({type(dl_val).__name__}), which runs out after one pass, and validation runs "
            "every epoch. Pass a DataLoader or a list of batches"
        )


def check_loader(name: str, loader: Any) -> None:
    if isinstance(loader, (torch.Tensor, str, bytes)) or not hasattr(loader, "__iter__"):
        raise TypeError(
            f"{name} must be an iterable of batches such as a torch DataLoader; got {type(loader).__name__}. "
            "Wrap tensors as DataLoader(TensorDataset(X, y), batch_size=32)"
        )
    n = loader_length(loader)
    if n == 0:
        raise ValueError(
            f"{name} is empty (len 0): check its dataset, and that drop_last=True with a batch size larger "
            "than the dataset does not drop every sample"
        )


def backup_to_resume(callbacks: Sequence[Any], resume_from: Any, initial_epoch: Optional[int]) -> Any:
    """``resume_from``, or the backup a callback such as ``BackupAndRestore`` holds (``resume_path()``)."""
    backups = [cb for cb in callbacks if callable(getattr(cb, "resume_path", None))]
    if len(backups) > 1:
        raise ValueError(f"fit got {len(backups)} callbacks that restore a backup ({[type(cb).__name__ for cb in backups]}); "
                         "pass one")
    if not backups:
        return resume_from
    if resume_from is not None:
        raise ValueError(f"fit got resume_from= and a {type(backups[0]).__name__}, which resumes from its own backup; "
                         "pass one of them")
    path = backups[0].resume_path()
    if path is not None and initial_epoch is not None:
        raise ValueError(f"fit got initial_epoch= and a {type(backups[0]).__name__} holding a backup ({path}); "
                         "the backup says where the run continues, so leave initial_epoch out")
    return path


def check_initial_epoch(initial_epoch: Any, epochs: int, resume_from: Any) -> Optional[int]:
    """Keras' ``initial_epoch``: epochs are numbered from it and ``epochs`` is the number of the last."""
    if initial_epoch is None:
        return None
    initial_epoch = check_count("initial_epoch", initial_epoch, minimum=0)
    if resume_from is not None:
        raise ValueError("fit got both initial_epoch= and resume_from=; a resumed run continues from the "
                         "checkpoint's epoch, so pass only resume_from")
    if initial_epoch > epochs:
        raise ValueError(f"initial_epoch={initial_epoch} is after epochs={epochs}: with initial_epoch, epochs is "
                         "the number of the last epoch (Keras), e.g. fit(10, dl, initial_epoch=5) runs 6-10")
    return initial_epoch


def weighting_for(loss_fn: Any, class_weight: Any, sample_weight: Any, default_step: bool) -> Optional[SampleWeighting]:
    """fit's ``class_weight`` / ``sample_weight``: how samples are weighed, checked before training."""
    if class_weight is None and sample_weight is None:
        return None
    if class_weight is not None and sample_weight is not None:
        raise ValueError("fit got both class_weight and sample_weight; as in Keras, pass one (fold the class "
                         "weights into sample_weight: w = sample_weight * class_weight_of(y))")
    if isinstance(loss_fn, MultiLoss):
        raise TypeError("sample_weight / class_weight with several losses is not supported; weigh inside "
                        "your losses, or train one output at a time")
    if not default_step:
        if class_weight is not None:
            raise TypeError("class_weight acts in the default train_step; your overridden train_step weighs its "
                            "own batches: pass sample_weight (it gets (x, y, w) batches, as in Keras)")
        return None  # Keras: an overridden train_step gets (x, y, sample_weight) batches and weighs them
    return SampleWeighting(loss_fn, class_weight)  # a loss without per-sample values fails here


#: Keras' positional order of evaluate(x, y, batch_size, verbose); torchfit's is evaluate(dl, callbacks).
KERAS_EVALUATE_ORDER = ("x", "y", "batch_size", "verbose")


def evaluate_args(data: tuple, **named: Any) -> Dict[str, Any]:
    """evaluate's arguments with the positional ones named: ``evaluate(dl, callbacks)`` when the first
    is a loader, Keras' ``evaluate(x, y, batch_size, verbose)`` otherwise.

    >>> evaluate_args((torch.zeros(2), torch.zeros(2)), dl=None, callbacks=None, x=None, y=None, batch_size=None,
    ...               verbose=0)["y"].shape
    torch.Size([2])
    """
    order = ("dl", "callbacks") if data and inputs.is_loader(data[0]) else KERAS_EVALUATE_ORDER
    if len(data) > len(order):
        raise TypeError(f"evaluate got {len(data)} positional arguments; in this order ({', '.join(order)}) it "
                        f"takes at most {len(order)}: pass the others by name")
    for name, value in zip(order, data):
        if named[name] is not None and named[name] is not (0 if name == "verbose" else None):
            raise TypeError(f"evaluate got {name} twice, by position and as {name}=; pass it once")
        named[name] = value
    return named
