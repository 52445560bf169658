"""Losses by Keras name, targets as Keras reads them, and per-sample weighting.

This module owns four things, each usable on its own:

* :func:`get` turns a Keras loss name (``"sparse_categorical_crossentropy"``, ``"mse"``...)
  or its class-style alias (``"SparseCategoricalCrossentropy"``) into a torch loss module;
  the same aliases are callable here (``losses.SparseCategoricalCrossentropy(from_logits=True)``);
* :func:`adapt_targets` reshapes and casts targets the way Keras would, from shapes and dtypes
  only (no host sync), so it can run on every step;
* :func:`check_targets` looks at the first batch's values once, before any weight changes, and
  refuses labels the loss cannot mean (fractions as class ids, ids out of range, NaN...);
* :func:`per_sample`, :func:`weighted_mean` and :func:`class_weight_to_sample_weight` give
  Keras' ``sample_weight`` / ``class_weight`` semantics for any loss with a ``reduction``.

It leaves to others *when* these run (the train and eval steps), where batches come from and
how figures are logged.

Names (case, ``_`` and ``-`` are ignored, so ``"MeanSquaredError"`` = ``"mean_squared_error"``):

=====================================================  =========================================
Keras name / alias                                     torch loss returned
=====================================================  =========================================
``sparse_categorical_crossentropy``                    ``nn.CrossEntropyLoss()`` (logits) or
                                                       ``CrossEntropyFromProbabilities()``
``categorical_crossentropy``                           the same, with one-hot / soft (N, C) targets
``binary_crossentropy``                                ``nn.BCEWithLogitsLoss()`` (logits) or
                                                       ``BCEFromProbabilities()`` (an ``nn.BCELoss``)
``mean_squared_error``, ``mse``                        ``nn.MSELoss()``
``mean_absolute_error``, ``mae``                       ``nn.L1Loss()``
``huber`` (``delta=1.0``)                              ``nn.HuberLoss(delta=1.0)``
``poisson``                                            ``nn.PoissonNLLLoss(log_input=False, eps=1e-7)``
``mean_absolute_percentage_error``, ``mape``           ``MeanAbsolutePercentageError()``
``mean_squared_logarithmic_error``, ``msle``           ``MeanSquaredLogarithmicError()``
``log_cosh``, ``logcosh``                              ``LogCosh()``
``kl_divergence``, ``kld``, ``kullback_leibler_...``   ``KLDivergence()``
``hinge``, ``squared_hinge``, ``categorical_hinge``    ``Hinge()``, ``SquaredHinge()``, ``CategoricalHinge()``
``cosine_similarity``                                  ``CosineSimilarity()``
torch's own: ``cross_entropy``, ``nll``,               ``nn.CrossEntropyLoss()``, ``nn.NLLLoss()``,
``bce``, ``bce_with_logits``, ``l1``, ``smooth_l1``    ``nn.BCELoss()``, ``nn.BCEWithLogitsLoss()``, ...
=====================================================  =========================================

``from_logits``: as in Keras, the cross-entropy names and aliases take **probabilities** unless
``from_logits=True`` (Keras' guide code ends its nets with a softmax and runs unchanged); a
torch net that ends in a ``Linear`` layer outputs logits and needs ``from_logits=True`` (or
``nn.CrossEntropyLoss()`` itself). :func:`check_targets` turns the mismatch into an error on the
first batch: outputs that are not probabilities given to a probability loss are refused with
this fix, and probabilities given to a logits loss draw a warning, as Keras does.

Class axis: dim 1, as in torch (``(N, C)`` or ``(N, C, d1, ...)``); Keras puts it last, which
is the same for the usual ``(N, C)``. Cross-entropy from probabilities follows Keras exactly:
rows are divided by their sum, clipped to ``[1e-7, 1 - 1e-7]``, then logged.
"""
from .keras import (EPSILON, BCEFromProbabilities, BinaryCrossentropy, CategoricalCrossentropy, CategoricalHinge,
                    CosineSimilarity, CrossEntropyFromProbabilities, Hinge, Huber, KLDivergence, LogCosh,
                    MeanAbsoluteError, MeanAbsolutePercentageError, MeanSquaredError, MeanSquaredLogarithmicError,
                    Poisson, SparseCategoricalCrossentropy, SquaredHinge, TargetError, get, names)
from .targets import adapt_targets, check_targets
from .weighting import SampleWeighting, class_weight_to_sample_weight, per_sample, weighted_mean

__all__ = [
    "TargetError", "get", "names", "adapt_targets", "check_targets", "per_sample", "weighted_mean",
    "class_weight_to_sample_weight", "SampleWeighting", "EPSILON",
    "CrossEntropyFromProbabilities", "BCEFromProbabilities", "MeanAbsolutePercentageError",
    "MeanSquaredLogarithmicError", "LogCosh", "KLDivergence", "Hinge", "SquaredHinge",
    "CategoricalHinge", "CosineSimilarity",
    "SparseCategoricalCrossentropy", "CategoricalCrossentropy", "BinaryCrossentropy",
    "MeanSquaredError", "MeanAbsoluteError", "Huber", "Poisson",
]
