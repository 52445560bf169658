"""Looking at a trained classifier: confusion matrix, its figure, scikit-learn's classification report.

Owns turning ``model.predict`` outputs and a loader's targets into class labels, by
the same rules torchfit's ``accuracy`` metric uses (see ``torchfit.metrics``):

* outputs ``(N, C)``, ``C >= 2``: the predicted class is the argmax over dim 1;
* outputs ``(N,)`` or ``(N, 1)``: binary scores, positive when the score is >=
  ``threshold`` (0.5) as a probability or, for logits, >= ``log(t / (1 - t))``
  (0 for the default). The outputs count as logits when the model was compiled
  with ``nn.BCEWithLogitsLoss`` (as ``compile`` tells its metrics), as
  probabilities otherwise; ``from_logits=`` overrides;
* targets: class indices ``(N,)`` / ``(N, 1)``, or one-hot / probability rows
  ``(N, C)`` (argmax); binary targets are positive when >= 0.5.

The counting itself is scikit-learn's. Drawing is matplotlib's, on a plain
``matplotlib.figure.Figure`` (no pyplot), like ``torchfit.plot``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from torch import nn

from .formatting import count_of

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["predicted_classes", "confusion_matrix", "plot_confusion_matrix", "classification_report"]


def _targets(dl: Iterable) -> torch.Tensor:
    parts = []
    for i, batch in enumerate(dl):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor)):
            raise ValueError(
                f"dl must yield (x, y) batches with a tensor y to compare predictions with; batch {i} is a "
                f"{type(batch).__name__}. Pass a loader over labelled data, e.g. DataLoader(TensorDataset(X, y))"
            )
        parts.append(batch[1].detach().cpu())
    return torch.cat(parts) if parts else torch.empty(0)


def _check_order(dl: Any) -> None:
    # predict and the target pass each iterate the loader once: both must see the same order.
    sampler = getattr(dl, "sampler", None)
    if isinstance(sampler, torch.utils.data.RandomSampler):
        raise ValueError(
            "dl shuffles (DataLoader(shuffle=True)), so the predictions and the targets would come in different "
            "orders; pass a loader with shuffle=False, e.g. DataLoader(dataset, batch_size=64)"
        )


def _logits_by_default(model: Any) -> bool:
    loss = getattr(model, "loss_fn", None)
    return isinstance(loss, nn.BCEWithLogitsLoss) or loss is nn.functional.binary_cross_entropy_with_logits


def predicted_classes(model: Any, dl: Iterable, *, threshold: float = 0.5,
                      from_logits: Optional[bool] = None) -> Tuple[np.ndarray, np.ndarray, int]:
    """``(y_true, y_pred, n_classes)``: class indices over ``dl`` in loader order, as ``accuracy`` decides them.

    >>> # y_true, y_pred, n = predicted_classes(model, dl_test)

    ``from_logits``: None follows the model's loss (logits with ``BCEWithLogitsLoss``).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1; got {threshold!r}")
    _check_order(dl)
    preds = model.predict(dl)
    if not isinstance(preds, torch.Tensor):
        raise TypeError(f"the net must return one tensor of class scores to count classes; it returned "
                        f"{type(preds).__name__}")
    targets = _targets(dl)
    n = preds.shape[0] if preds.ndim else -1
    if preds.ndim == 1 or (preds.ndim == 2 and preds.shape[1] == 1):
        if tuple(targets.shape) not in ((n,), (n, 1)):
            raise ValueError(f"binary outputs of shape {tuple(preds.shape)} need targets (N,) or (N, 1); the "
                             f"loader's targets have shape {tuple(targets.shape)}")
        logits = _logits_by_default(model) if from_logits is None else from_logits
        cut = math.log(threshold / (1.0 - threshold)) if logits else threshold
        y_pred = (preds.reshape(-1) >= cut).long()
        t = targets.reshape(-1)
        y_true = t.long() if t.dtype == torch.bool else (t >= 0.5).long()
        return y_true.numpy(), y_pred.numpy(), 2
    if preds.ndim == 2:
        c = preds.shape[1]
        if tuple(targets.shape) in ((n,), (n, 1)):
            y_true = targets.reshape(-1).long()
        elif tuple(targets.shape) == (n, c):
            y_true = targets.argmax(dim=1)
        else:
            raise ValueError(f"outputs of shape {tuple(preds.shape)} need targets (N,) of class indices or "
                             f"(N, {c}); the loader's targets have shape {tuple(targets.shape)}")
        return y_true.numpy(), preds.argmax(dim=1).numpy(), c
    raise ValueError(f"outputs must be (N,), (N, 1) or (N, C) class scores; got shape {tuple(preds.shape)}")


def _labels(labels: Optional[Sequence[int]], n_classes: int) -> List[int]:
    return list(range(n_classes)) if labels is None else [int(v) for v in labels]


def confusion_matrix(model: Any, dl: Iterable, labels: Optional[Sequence[int]] = None,
                     normalize: Optional[str] = None, *, target_names: Optional[Sequence[str]] = None,
                     threshold: float = 0.5, from_logits: Optional[bool] = None) -> pd.DataFrame:
    """Counts of (true class, predicted class) over ``dl``: rows true, columns predicted.

    >>> # confusion_matrix(model, dl_test)                   # counts
    >>> # confusion_matrix(model, dl_test, normalize="true") # each row sums to 1

    ``labels``: the class indices to show, in order (default every class the outputs
    have: ``range(C)``, or ``[0, 1]`` for binary outputs). ``normalize``: None,
    ``"true"`` (rows), ``"pred"`` (columns) or ``"all"``, as in
    ``sklearn.metrics.confusion_matrix``. ``target_names`` rename the rows and
    columns. ``dl`` must yield ``(x, y)`` in a fixed order (no shuffling): it is
    read once by ``model.predict`` and once for the targets.
    """
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    if normalize not in (None, "true", "pred", "all"):
        raise ValueError(f"normalize must be None, 'true', 'pred' or 'all'; got {normalize!r}")
    y_true, y_pred, n_classes = predicted_classes(model, dl, threshold=threshold, from_logits=from_logits)
    shown = _labels(labels, n_classes)
    names = _names(target_names, shown)
    counts = sk_confusion_matrix(y_true, y_pred, labels=shown, normalize=normalize)
    cm = pd.DataFrame(counts, index=pd.Index(names, name="true"), columns=pd.Index(names, name="predicted"))
    cm.attrs["normalize"] = normalize  # tells plot_confusion_matrix to print fractions
    return cm


def _names(target_names: Optional[Sequence[str]], shown: List[int]) -> List[Any]:
    if target_names is None:
        return shown
    if len(target_names) != len(shown):
        raise ValueError(f"target_names has {count_of(len(target_names), 'name')} for "
                         f"{count_of(len(shown), 'class', 'classes')} {shown}; give one "
                         "name per class")
    return list(target_names)


def classification_report(model: Any, dl: Iterable, target_names: Optional[Sequence[str]] = None,
                          output_dict: bool = False, *, labels: Optional[Sequence[int]] = None, digits: int = 3,
                          threshold: float = 0.5, from_logits: Optional[bool] = None) -> Union[str, dict]:
    """``sklearn.metrics.classification_report`` over the model's predictions on ``dl``.

    >>> # print(classification_report(model, dl_test, target_names=["cat", "dog"]))

    Precision, recall, F1 and support per class, and their averages; a 0/0 score is 0
    (``zero_division=0``, as torchfit's metrics). ``labels`` default to every class the
    outputs have. ``output_dict=True`` returns the figures as a dict.
    """
    from sklearn.metrics import classification_report as sk_report

    y_true, y_pred, n_classes = predicted_classes(model, dl, threshold=threshold, from_logits=from_logits)
    shown = _labels(labels, n_classes)
    names = None if target_names is None else [str(n) for n in _names(target_names, shown)]
    return sk_report(y_true, y_pred, labels=shown, target_names=names, output_dict=output_dict,
                     digits=digits, zero_division=0)


def plot_confusion_matrix(cm: pd.DataFrame, *, fig: Optional["Figure"] = None, cmap: str = "Blues",
                          title: Optional[str] = None) -> "Figure":
    """A heat map of ``confusion_matrix(...)``'s DataFrame, each cell annotated with its value.

    >>> # fig = plot_confusion_matrix(confusion_matrix(model, dl_test)); fig.savefig("cm.png")

    Counts print as integers, normalised matrices with two decimals. Returns a plain
    ``matplotlib.figure.Figure`` (shown inline in Jupyter); ``fig`` draws into yours.
    """
    from .plot import _figure_class, _import_matplotlib  # matplotlib only when drawing

    if not isinstance(cm, pd.DataFrame) or cm.shape[0] != cm.shape[1] or cm.empty:
        raise TypeError("plot_confusion_matrix(cm) needs the square DataFrame confusion_matrix(model, dl) returns; "
                        f"got {type(cm).__name__}" + (f" of shape {cm.shape}" if hasattr(cm, "shape") else ""))
    figure_module = _import_matplotlib()
    n = cm.shape[0]
    if fig is None:
        side = max(3.0, 0.6 * n + 2.0)
        fig = _figure_class(figure_module)(figsize=(side + 1.0, side))
    ax = fig.add_subplot(1, 1, 1)
    values = cm.to_numpy(dtype=float)
    image = ax.imshow(values, cmap=cmap, interpolation="nearest")
    fig.colorbar(image, ax=ax)
    integral = cm.attrs.get("normalize") is None and bool(np.all(values == np.round(values)))
    middle = (np.nanmax(values) + np.nanmin(values)) / 2.0
    for i in range(n):
        for j in range(n):
            text = f"{int(values[i, j])}" if integral else f"{values[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", color="white" if values[i, j] > middle else "black")
    ax.set_xticks(range(n), [str(c) for c in cm.columns])
    ax.set_yticks(range(n), [str(c) for c in cm.index])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    return fig
