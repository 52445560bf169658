"""scikit-learn estimators around torchfit: ``TorchfitClassifier`` and ``TorchfitRegressor``.

Owns the translation between scikit-learn's conventions and torchfit's: constructor
parameters stored as given (so ``get_params`` / ``set_params`` / ``clone`` /
``GridSearchCV`` work), a fresh net and ``torchfit.Model`` built by every ``fit``,
label encoding for classifiers, and the shapes scikit-learn expects back from
``predict`` / ``predict_proba``. Training itself is ``torchfit.Model.fit(x=X, y=y)``
unchanged: no hidden validation split, no extra loop.

The net comes from a *factory* (``module=MyNet`` or any function returning an
``nn.Module``), called with the ``module__<name>`` parameters, as in skorch, so a
search can vary a layer width::

    est = TorchfitClassifier(MLP, module__n_in=4, module__hidden=16, module__n_out=3, epochs=20)
    GridSearchCV(est, {"module__hidden": [8, 32], "lr": [1e-3, 1e-2]}, cv=3).fit(X, y)

``optimizer__<name>`` parameters (``optimizer__weight_decay=1e-4``) go to the
optimizer's constructor the same way.

Sizes the net can only know from the data are asked for by name: a ``module__`` parameter
set to ``FromData("n_features_in")`` (or ``"n_classes"``, ``"n_outputs"``, ``"input_shape"``)
is replaced, at each ``fit``, by that figure of the data being fitted::

    TorchfitClassifier(MLP, module__n_in=FromData("n_features_in"), module__n_out=FromData("n_classes"))

Without ``module`` the estimator trains ``mlp``, a one-hidden-layer net sized that way.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y
from torch import nn

__all__ = ["TorchfitClassifier", "TorchfitRegressor", "FromData", "mlp"]

# Parameters whose names start with these are routed to the net factory / the optimizer.
_ROUTED = ("module__", "optimizer__")
_BCE = (nn.BCEWithLogitsLoss, nn.BCELoss)


class FromData:
    """A net factory's argument that ``fit`` fills in from the data: ``module__n_in=FromData("n_features_in")``.

    ``name``: ``"n_features_in"`` (features per row; for rows of several dimensions, their
    product), ``"input_shape"`` (the shape of one row, a tuple), ``"n_classes"`` (classifiers:
    the number of classes in ``y``) or ``"n_outputs"`` (the width the loss needs: the number
    of classes for ``CrossEntropyLoss``, 1 for a binary ``BCEWithLogitsLoss``, the number of
    target columns for a regressor). The figure is the one the estimator keeps after ``fit``
    (``n_features_in_``, ``n_classes_``...), so ``clone`` and searches fit new sizes to new data.

    >>> FromData("n_classes")
    FromData('n_classes')
    """

    NAMES = ("n_features_in", "input_shape", "n_classes", "n_outputs")

    def __init__(self, name: str):
        if name not in self.NAMES:
            raise ValueError(f"FromData({name!r}): the figures fit knows are {list(self.NAMES)}")
        self.name = name

    def __repr__(self) -> str:
        return f"FromData({self.name!r})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, FromData) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("FromData", self.name))


def mlp(n_features_in: int, n_outputs: int, hidden: int = 64) -> nn.Module:
    """The default net: ``Flatten``, ``Linear(n_features_in, hidden)``, ``ReLU``, ``Linear(hidden, n_outputs)``.

    The estimators build it when ``module`` is None, with ``n_features_in`` and ``n_outputs``
    from the data; ``module__hidden=...`` sets its width.

    >>> mlp(4, 3, hidden=8)
    Sequential(
      (0): Flatten(start_dim=1, end_dim=-1)
      (1): Linear(in_features=4, out_features=8, bias=True)
      (2): ReLU()
      (3): Linear(in_features=8, out_features=3, bias=True)
    )
    """
    return nn.Sequential(nn.Flatten(), nn.Linear(n_features_in, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))


def _optimizer_classes() -> Dict[str, type]:
    return {
        name.lower(): obj for name, obj in vars(torch.optim).items()
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer
    }


def _tensor(array: np.ndarray) -> torch.Tensor:
    # scikit-learn may hand over read-only arrays (memory maps in searches); torch wants writable memory
    return torch.from_numpy(array if array.flags.writeable else array.copy())


class _TorchfitEstimator(BaseEstimator):
    """What the classifier and the regressor share; not used on its own."""

    def __init__(
        self,
        module: Optional[Callable[..., nn.Module]] = None,
        *,
        loss: Any = None,
        optimizer: Union[str, type] = "adam",
        lr: Optional[float] = None,
        epochs: int = 10,
        batch_size: int = 32,
        metrics: Any = None,
        device: Union[str, torch.device, None] = None,
        seed: Optional[int] = None,
        verbose: int = 0,
        callbacks: Optional[Sequence[Any]] = None,
        **routed: Any,
    ):
        self.module = module
        self.loss = loss
        self.optimizer = optimizer
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.metrics = metrics
        self.device = device
        self.seed = seed
        self.verbose = verbose
        self.callbacks = callbacks
        # The routed parameters live in one private dict (scikit-learn's checks allow no public
        # attribute that __init__'s signature does not name) and read as attributes.
        # Names are checked by fit, as scikit-learn asks (__init__ and set_params only store).
        self._routed_params: Dict[str, Any] = dict(routed)

    def __getattr__(self, name: str) -> Any:
        routed = self.__dict__.get("_routed_params")  # absent while unpickling: no recursion
        if routed is not None and name in routed:
            return routed[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # sklearn finds parameters from __init__'s signature; the routed ones are added here.
    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        params = super().get_params(deep=deep)
        params.update(self._routed_params)
        return params

    def set_params(self, **params: Any) -> "_TorchfitEstimator":
        own = self._get_param_names()
        for name in [k for k in params if k not in own]:
            self._routed_params[name] = params.pop(name)
        return super().set_params(**params)

    def _check_routed(self) -> None:
        for name in self._routed_params:
            if not name.startswith(_ROUTED):
                raise TypeError(
                    f"{type(self).__name__} got an unexpected parameter {name!r}; parameters for the net "
                    f"start with 'module__' (module__{name}=...), for the optimizer with 'optimizer__'"
                )

    def _routed(self, prefix: str) -> Dict[str, Any]:
        return {k[len(prefix):]: v for k, v in self._routed_params.items() if k.startswith(prefix)}

    # ------------------------------------------------------------------ building
    def _build_net(self, figures: Dict[str, Any]) -> nn.Module:
        kwargs = self._routed("module__")
        factory = self.module
        if factory is None:
            factory = mlp
            kwargs = {"n_features_in": FromData("n_features_in"), "n_outputs": FromData("n_outputs"), **kwargs}
        if isinstance(factory, nn.Module) or not callable(factory):
            raise TypeError(
                f"module must be a factory that returns an nn.Module (a class or a function); got "
                f"{type(factory).__name__}. Pass the class and its arguments: module=MyNet, module__hidden=32"
            )
        for name, value in kwargs.items():
            if isinstance(value, FromData):
                if value.name not in figures:
                    raise ValueError(f"module__{name}={value!r}: {type(self).__name__} does not know "
                                     f"{value.name}; it knows {sorted(figures)}")
                kwargs[name] = figures[value.name]
        net = factory(**kwargs)
        if not isinstance(net, nn.Module):
            raise TypeError(f"module(...) must return an nn.Module; {self.module!r} returned {type(net).__name__}")
        return net

    def _build_optimizer(self) -> Any:
        kwargs = self._routed("optimizer__")
        if self.lr is not None:
            kwargs["lr"] = self.lr
        if isinstance(self.optimizer, str):
            if not kwargs:
                return self.optimizer  # compile picks the class and its Keras default lr
            classes = _optimizer_classes()
            cls = classes.get(self.optimizer.lower())
            if cls is None:
                raise ValueError(f"optimizer={self.optimizer!r} is not a torch.optim optimizer; known names: "
                                 f"{sorted(classes)}, or pass the class (optimizer=torch.optim.AdamW)")
        elif isinstance(self.optimizer, type) and issubclass(self.optimizer, torch.optim.Optimizer):
            cls = self.optimizer
        else:
            raise TypeError(f"optimizer must be a name such as 'adam' or a torch.optim.Optimizer class; got "
                            f"{self.optimizer!r}")
        return lambda params: cls(params, **kwargs)

    def _loss(self) -> Any:
        loss = self._default_loss() if self.loss is None else self.loss
        return loss() if isinstance(loss, type) else loss  # a class is built fresh for every fit

    def _default_loss(self) -> nn.Module:
        raise NotImplementedError

    def _fresh_callbacks(self) -> Any:
        """This fit's own copies of ``callbacks`` (``copy.deepcopy``, as ``sklearn.base.clone`` copies
        parameters), so that no state (an EMA's average, a counter) passes from one fit to the next.

        Attributes a callback's class names in ``shared_on_copy`` (``OptunaPruning``'s trial) are
        shared, not copied: what is reported to them must reach the caller's object. A callback
        attached to a model by an earlier fit is copied without it.
        """
        if not isinstance(self.callbacks, (list, tuple)):
            return self.callbacks  # None, or something Model.fit refuses with its own words
        copies = []
        for i, cb in enumerate(self.callbacks):
            memo: Dict[int, Any] = {}
            if getattr(cb, "model", None) is not None:
                memo[id(cb.model)] = None
            for name in getattr(type(cb), "shared_on_copy", ()):
                value = getattr(cb, name, None)
                memo[id(value)] = value
            try:
                copies.append(copy.deepcopy(cb, memo))
            except Exception as exc:
                raise TypeError(
                    f"callbacks[{i}] ({type(cb).__name__}) cannot be copied ({type(exc).__name__}: {exc}). "
                    f"{type(self).__name__} trains every fit with its own copies of the callbacks (as "
                    "sklearn.base.clone copies parameters); name the attributes to share instead in the "
                    "callback class's shared_on_copy = (\"name\", ...)"
                ) from exc
        return copies

    def _fit_model(self, X: np.ndarray, y: np.ndarray, figures: Dict[str, Any],
                   fitted: Dict[str, Any]) -> "_TorchfitEstimator":
        """Build and train a new net; only then take ``fitted`` (the attributes this fit found in the
        data: classes, sizes) with the model, so that a fit that fails leaves the last one whole."""
        from . import Model  # lazily, from the public name: the core modules may move

        callbacks = self._fresh_callbacks()

        def train() -> Any:
            net = self._build_net({"n_features_in": fitted["n_features_in_"], "input_shape": fitted["_x_shape"],
                                   **figures})
            model = Model(net).compile(loss=self._loss(), optimizer=self._build_optimizer(),
                                       metrics=self.metrics, device=self.device)
            # Without a seed, the shuffling seed comes from torch's global generator, so that
            # repeated fits differ as an unseeded net's initialisation does.
            shuffle_seed = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
            model.fit(self.epochs, x=_tensor(X), y=_tensor(y), batch_size=self.batch_size,
                      verbose=self.verbose, callbacks=callbacks, seed=shuffle_seed)
            return model

        if self.seed is None:
            model = train()
        else:
            # The seed fixes the init, dropout and shuffling without touching the caller's generators.
            devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                model = train()
        for name, value in fitted.items():
            setattr(self, name, value)
        self.model_ = model
        self.history_: pd.DataFrame = model.history
        self.callbacks_ = callbacks
        return self

    def _outputs(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "model_")
        X = check_array(X, allow_nd=True, dtype=np.float32)
        if X.shape[1:] != self._x_shape:
            if X.ndim == 2 and len(self._x_shape) == 1:  # scikit-learn's own wording for tables
                raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                                 f"{self.n_features_in_} features as input")
            raise ValueError(f"X has rows of shape {X.shape[1:]}, but {type(self).__name__} was fitted on rows "
                             f"of shape {self._x_shape}")
        out = self.model_.predict(_tensor(X), batch_size=self.batch_size)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the net must return one tensor for {type(self).__name__}; it returned "
                            f"{type(out).__name__}")
        return out

    def _check_x(self, X: Any, y: Any, **kw: Any) -> tuple:
        """``X``, ``y`` as arrays and the attributes they give (set only once the fit succeeds)."""
        X, y = check_X_y(X, y, allow_nd=True, dtype=np.float32, **kw)
        fitted = {"n_features_in_": X.shape[1] if X.ndim == 2 else int(np.prod(X.shape[1:])), "_x_shape": X.shape[1:]}
        return X, y, fitted


class TorchfitClassifier(ClassifierMixin, _TorchfitEstimator):
    """A scikit-learn classifier that trains a torch net with ``torchfit.Model.fit``.

    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> make = lambda hidden: nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
    >>> clf = TorchfitClassifier(make, module__hidden=16, lr=0.05, epochs=3, seed=0).fit(X, y)
    >>> clf.predict(X[:2]), clf.predict_proba(X[:2]).shape
    (array([0, 0]), (2, 3))

    ``module``: the net factory, called with the ``module__*`` parameters (a
    ``FromData("n_features_in")``, ``FromData("n_classes")``... among them is replaced by that
    figure of the data at each ``fit``); None trains ``mlp`` sized from the data. The net
    returns logits ``(N, C)`` (one column per class, ``C >= 2``) for the default
    ``loss=nn.CrossEntropyLoss()``, or ``(N, 1)`` for a binary problem with
    ``loss=nn.BCEWithLogitsLoss()`` (logits) or ``nn.BCELoss()`` (probabilities).
    ``loss`` may be an instance or a class (built fresh each fit). ``optimizer``:
    a name (``"adam"``, ``"sgd"``, any ``torch.optim`` class name) or a
    ``torch.optim`` class, built with ``lr`` (None: Keras' default for named
    optimizers, the class's own default otherwise) and the ``optimizer__*``
    parameters. ``epochs``, ``batch_size``, ``metrics``, ``device`` and ``verbose``
    go to ``compile`` / ``fit`` as they are; ``callbacks`` are copied for every fit
    (``copy.deepcopy``, as ``clone`` copies them: no state passes from one fit to the next;
    the copies the last fit used are ``callbacks_``). ``seed``: an int
    fixes the net's initialisation, dropout and the shuffling (the caller's
    random generators are left as they were); None draws from torch's global
    generator. Every ``fit`` trains a new net on all of ``X`` (no validation split).

    After ``fit``: ``classes_`` (the original labels, sorted), ``n_classes_``, ``model_`` (the
    ``torchfit.Model``), ``history_`` (its history DataFrame), ``n_features_in_``, ``callbacks_``.
    They are set together once the new net has trained: a ``fit`` that raises (a net factory
    that fails, a training error) leaves those of the previous fit.
    ``predict_proba`` is the softmax of the outputs, or ``[1 - p, p]`` with ``p``
    the sigmoid of a single output (the output itself with ``nn.BCELoss``).
    """

    def _default_loss(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def fit(self, X: Any, y: Any) -> "TorchfitClassifier":
        """Encode the labels, build a new net and train it on all of ``X``; returns ``self``."""
        self._check_routed()
        X, y, fitted = self._check_x(X, y)
        check_classification_targets(y)  # a continuous y is a mistake here, not 10**6 classes
        encoder = LabelEncoder().fit(y)
        classes = encoder.classes_
        if len(classes) < 2:
            raise ValueError(f"y has one class only ({classes[0]!r}): a classifier needs at least two "
                             "classes to train on")
        codes = encoder.transform(y)
        loss = self._loss()
        single_output = isinstance(loss, _BCE)
        if single_output:
            if len(classes) > 2:
                raise ValueError(f"loss={self.loss!r} is binary, but y has {len(classes)} classes; use "
                                 "nn.CrossEntropyLoss() with one output per class")
            target = codes.astype(np.float32).reshape(-1, 1)
        else:
            target = codes.astype(np.int64)
        # Set together with the new model, after it trained: predict never pairs old outputs with new labels.
        fitted.update(_encoder=encoder, classes_=classes, n_classes_=len(classes), _single_output=single_output,
                      _outputs_are_probabilities=isinstance(loss, nn.BCELoss))
        figures = {"n_classes": len(classes), "n_outputs": 1 if single_output else len(classes)}
        return self._fit_model(X, target, figures, fitted)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)``, columns in ``classes_`` order; rows sum to 1."""
        out = self._outputs(X).double()  # float64 so that rows sum to 1 to the last bits
        if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
            p = out.reshape(-1)
            if not self._outputs_are_probabilities:
                p = torch.sigmoid(p)
            return torch.stack([1.0 - p, p], dim=1).numpy()
        if out.ndim != 2 or out.shape[1] != len(self.classes_):
            raise ValueError(f"the net returned outputs of shape {tuple(out.shape)}, but y has "
                             f"{len(self.classes_)} classes: the net needs one output per class (N, "
                             f"{len(self.classes_)}) for CrossEntropyLoss")
        return torch.softmax(out, dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, as the original labels (``classes_``)."""
        proba = self.predict_proba(X)
        if proba.shape[1] == 2 and self._single_output:
            codes = (proba[:, 1] >= 0.5).astype(np.int64)  # as torchfit's accuracy thresholds
        else:
            codes = proba.argmax(axis=1)
        return self.classes_[codes]


class TorchfitRegressor(RegressorMixin, _TorchfitEstimator):
    """A scikit-learn regressor that trains a torch net with ``torchfit.Model.fit``.

    >>> from sklearn.datasets import make_regression
    >>> X, y = make_regression(n_samples=64, n_features=3, noise=0.1, random_state=0)
    >>> reg = TorchfitRegressor(nn.Linear, module__in_features=3, module__out_features=1,
    ...                         optimizer="sgd", lr=0.05, epochs=3, seed=0).fit(X, y)
    >>> reg.predict(X[:3]).shape
    (3,)

    Parameters as for ``TorchfitClassifier``; the default loss is ``nn.MSELoss()``;
    ``FromData("n_outputs")`` is the number of target columns (``n_outputs_`` after ``fit``).
    A 1-d ``y`` is trained as a column ``(N, 1)`` and ``predict`` returns 1-d
    values; a 2-d ``y`` ``(N, K)`` needs a net with ``K`` outputs.
    """

    def _default_loss(self) -> nn.Module:
        return nn.MSELoss()

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # a 2-d y (N, K) trains a net with K outputs
        return tags

    def fit(self, X: Any, y: Any) -> "TorchfitRegressor":
        """Build a new net and train it on all of ``X``; returns ``self``."""
        self._check_routed()
        X, y, fitted = self._check_x(X, y, multi_output=True, y_numeric=True)
        target = y.astype(np.float32).reshape(-1, 1) if y.ndim == 1 else y.astype(np.float32)
        fitted.update(_y_1d=y.ndim == 1, n_outputs_=target.shape[1])
        return self._fit_model(X, target, {"n_outputs": target.shape[1]}, fitted)

    def predict(self, X: Any) -> np.ndarray:
        """The net's outputs as a numpy array: 1-d when ``fit`` got a 1-d ``y``."""
        out = self._outputs(X).double().numpy()
        if self._y_1d:
            if out.ndim == 2 and out.shape[1] != 1:
                raise ValueError(f"y was 1-d but the net returns {out.shape[1]} outputs per row; give it one")
            return out.reshape(-1)
        return out
