"""What ``monitor=`` means for EarlyStopping, ModelCheckpoint and ReduceLROnPlateau.

Owns: turning ``mode="auto"`` into ``"min"`` or ``"max"``, deciding whether a new
value beats the best so far, and checking at the start of ``fit`` (from the keys
fit passes to ``set_params``) that the monitored key will exist at all. Reading
the value out of the epoch logs is each callback's business.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Optional

# Figures where higher is better; auto mode minimises everything else (losses, errors).
_HIGHER_IS_BETTER = {"auc", "f1", "precision", "recall", "r2"}


def resolve_mode(mode: str, monitor: str) -> str:
    """``"min"`` or ``"max"``; ``"auto"`` picks ``"max"`` for accuracy/AUC/F1/precision/recall/R2-like names.

    >>> resolve_mode("auto", "val_accuracy"), resolve_mode("auto", "val_loss")
    ('max', 'min')
    """
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max'; got {mode!r}")
    if not isinstance(monitor, str) or not monitor:
        raise TypeError(f"monitor must be the name of an epoch figure such as 'val_loss'; got {monitor!r}")
    if mode != "auto":
        return mode
    name = monitor[4:] if monitor.startswith("val_") else monitor
    last = name.rsplit("_", 1)[-1]
    return "max" if "acc" in name or name in _HIGHER_IS_BETTER or last in _HIGHER_IS_BETTER else "min"


def is_improvement(current: Optional[float], best: Optional[float], mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``current`` beats ``best`` by more than ``min_delta`` (a NaN never does; any number beats None).

    >>> is_improvement(0.5, 0.6, "min"), is_improvement(0.5, 0.6, "max"), is_improvement(0.55, 0.6, "min", 0.1)
    (True, False, False)
    """
    if current is None or not isinstance(current, numbers.Real) or math.isnan(current):
        return False
    if best is None:
        return True
    if mode == "min":
        return current < best - min_delta
    return current > best + min_delta


def check_monitor(owner: str, monitor: str, params: Mapping[str, Any]) -> None:
    """Raise if the run's epoch logs will not have ``monitor``, listing the keys they will have.

    ``params["log_keys"]`` is None when a step is overridden (keys unknown until
    the first epoch ends); fit then calls ``set_params`` again with the real keys.
    """
    keys = params.get("log_keys")
    if keys is None or monitor in keys:
        return
    hint = ""
    if monitor.startswith("val_") and not any(k.startswith("val_") for k in keys):
        hint = " val_ figures exist only when fit gets a validation loader: model.fit(epochs, dl_train, dl_val)."
    elif monitor == "lr" or monitor.startswith("lr_"):
        hint = " An lr column exists only with a scheduler: fit(lr_scheduler=...) or a LearningRateScheduler callback."
    raise ValueError(
        f"{owner}(monitor={monitor!r}): this fit's epoch logs will not have {monitor!r}; "
        f"they will have {list(keys)}.{hint} Pick one of those keys."
    )


def check_nonnegative(name: str, value: Any, integral: bool = False) -> None:
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or value < 0:
        raise ValueError(f"{name} must be a {'non-negative int' if integral else 'non-negative number'}; got {value!r}")


def main_process(model: Any) -> bool:
    """Whether this process prints (rank 0 under torchrun; always outside a fit)."""
    run = getattr(model, "_run", None)
    return True if run is None else run.config.is_main_process
