"""What a model offers around training: its table, plots, weights the Keras way, export, evaluation
reports and the LR range test.

Owns ``ModelTools``, the base ``torchfit.Model`` takes these methods from: each is a thin door to
the module that does the work (``summary``, ``plot``, ``weights``, ``export``, ``evaluation``,
``lr_finder``), with nothing of training in it. ``model.py`` keeps the front itself (compile, fit,
evaluate, predict, checkpoints, the step seam and the training state); Keras' ``Model`` is built
the same way from a ``Trainer`` and a ``Layer``.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import pandas as pd

from . import distributed, weights


class ModelTools:
    """Methods of ``torchfit.Model`` around training (the model provides ``net`` and ``history``)."""

    def plot_history(self, metrics: Optional[Sequence[str]] = None, **kwargs: Any) -> Any:
        """``torchfit.plot_history(model.history, metrics)``: a matplotlib Figure, a panel per quantity."""
        from .plot import plot_history

        return plot_history(self.history, metrics, **kwargs)


    def summary(self, input_shape: Any = None, **kwargs: Any) -> pd.DataFrame:
        """Print the layer table and return its rows (``torchfit.summary``): ``model.summary(input_shape=(1, 28, 28))``"""
        from .summary import summary

        if not distributed.is_main_process():  # under torchrun only rank 0 prints
            kwargs.setdefault("print_fn", None)
        return summary(self.net, input_shape, **kwargs)

    # ------------------------------------------------------- Keras' weights
    def get_weights(self) -> list:
        """Every tensor of ``net.state_dict()`` as numpy arrays (Keras)."""
        return weights.get_weights(self.net)

    def set_weights(self, values: Sequence[Any]) -> None:
        """Put ``get_weights``' arrays back (all checked first)."""
        weights.set_weights(self.net, values)

    def save_weights(self, filepath: Union[str, "os.PathLike[str]"], overwrite: bool = True) -> None:
        """The net's ``state_dict`` to a file, atomically (any suffix: a torch file)."""
        weights.save_weights(self.net, filepath, overwrite)

    def load_weights(self, filepath: Union[str, "os.PathLike[str]"]) -> "ModelTools":
        """Weights from ``save_weights`` (or a state_dict or checkpoint file), checked first."""
        weights.load_weights(self.net, filepath)
        return self

    # ---------------------------------------------------------- around fit
    def lr_find(self, dl_train: Any, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
                **kwargs: Any) -> pd.DataFrame:
        """A learning-rate range test (``torchfit.lr_finder``); the model comes back bit for bit.
        ``df = model.lr_find(dl_train); df.attrs["suggested_lr"]; torchfit.plot_lr_find(df)``"""
        from .lr_finder import lr_find

        return lr_find(self, dl_train, start_lr, end_lr, num_steps, **kwargs)

    def export(self, path: Union[str, "os.PathLike[str]"], example_batch: Any, format: Optional[str] = None,
               **kwargs: Any) -> Any:
        """The net to ``.pt2`` or ``.onnx``, checked against the eager net (``torchfit.export.export``)."""
        from .export import export

        return export(self, path, example_batch, format, **kwargs)

    def confusion_matrix(self, dl: Any, labels: Any = None, normalize: Optional[str] = None,
                         **kwargs: Any) -> pd.DataFrame:
        """Counts of true (rows) against predicted (columns) classes over ``dl`` (``torchfit.evaluation``)."""
        from .evaluation import confusion_matrix

        return confusion_matrix(self, dl, labels, normalize, **kwargs)

    def classification_report(self, dl: Any, target_names: Any = None, output_dict: bool = False,
                              **kwargs: Any) -> Any:
        """scikit-learn's classification report over ``self.predict(dl)`` and the loader's targets."""
        from .evaluation import classification_report

        return classification_report(self, dl, target_names, output_dict, **kwargs)
