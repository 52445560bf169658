"""Checking what users pass to ``fit`` and the other verbs, once, before anything changes.

Owns the argument checks that do not need the model's state: counts, clipping
thresholds, verbosity, loaders, and ``FitOptions`` (fit's settings that shape
a run, checked together). Each error names the argument and the fix. The
checks that need the model (its net, optimizer, loss) stay in ``Model``.
"""
from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Iterator
from typing import Any, Callable, Optional

import torch

from . import distributed
from .callbacks import CallbackList, ProgressPrinter
from .heads import MultiLoss
from .loop import loader_length
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
        raise TypeError("class_weight / sample_weight act in the default train_step; your overridden "
                        "train_step gets (x, y, w) batches and weighs them itself")
    return SampleWeighting(loss_fn, class_weight)  # a loss without per-sample values fails here
