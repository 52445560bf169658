"""Experiments around ``fit``: k-fold cross-validation.

Owns splitting data into folds (stratified for class labels, by groups when given, or as
the caller's scikit-learn splitter decides), training a fresh model per fold through
``Model.fit`` with loaders it builds the documented way, and gathering the folds' histories
into one DataFrame with a ``fold`` column and a summary per metric. Training is ``fit``
unchanged; drawing the folds is ``torchfit.plot.plot_history`` (per-fold curves, their mean
and a band).

What one fold runs, so that a hand-written loop can reproduce it exactly::

    train_idx, val_idx = the fold's rows (sorted)
    with torch.random.fork_rng():                 # the caller's generators are left alone
        torch.manual_seed(seed + fold)            # fold is 0-based
        model = build()
        model.fit(epochs, DataLoader(train_part, batch_size, shuffle=True,
                                     generator=torch.Generator().manual_seed(seed + fold)),
                  DataLoader(val_part, batch_size), verbose=verbose, **fit_kwargs)
"""
from __future__ import annotations

import dataclasses
import numbers
import pickle
import signal
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from . import inputs
from .callbacks import Callback
from .callbacks.monitor import check_monitor
from .model import Model

__all__ = ["cross_validate", "CrossValidation", "fold_indices", "FoldError"]

Folds = Union[int, Any, Sequence[Tuple[Sequence[int], Sequence[int]]]]


@dataclasses.dataclass
class CrossValidation:
    """What ``cross_validate`` returns.

    ``history``: every fold's epochs in one DataFrame (``fold`` first, 1-based, then the
    history's own columns); ``per_fold``: one row per fold, the figures at the epoch the
    summary reads (``summary_at``: ``"best"`` epoch by ``monitor``, or ``"last"``);
    ``summary``: ``mean``, ``std`` (ddof 1), ``min``, ``max`` of each figure over the folds;
    ``folds``: each fold's ``(train_rows, val_rows)``; ``models``: the trained models.
    ``plot()`` draws the per-fold curves with their mean and a band of one standard deviation.
    """

    history: pd.DataFrame
    per_fold: pd.DataFrame
    summary: pd.DataFrame
    folds: List[Tuple[np.ndarray, np.ndarray]]
    models: List[Model]
    monitor: str
    summary_at: str

    def plot(self, metrics: Optional[Sequence[str]] = None, **kwargs: Any) -> Any:
        """``torchfit.plot_history(self.history, metrics)``: a panel per quantity, a line per fold, mean and band."""
        from .plot import plot_history

        return plot_history(self.history, metrics, **kwargs)

    def __repr__(self) -> str:
        return (f"CrossValidation({len(self.folds)} folds, figures at the {self.summary_at} epoch"
                f"{' by ' + self.monitor if self.summary_at == 'best' else ''}):\n{self.summary.to_string()}")


# --------------------------------------------------------------------------- folds
def _labels(ds: Dataset) -> Optional[np.ndarray]:
    """The targets of every row as a 1-d array, or None when they are not one value per row."""
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        y = ds.tensors[1]
    else:
        try:
            y = torch.stack([torch.as_tensor(ds[i][1]) for i in range(len(ds))])
        except Exception:
            return None
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    return y.numpy() if y.dim() == 1 else None


def _are_classes(y: Optional[np.ndarray]) -> bool:
    """Class labels: integers, or floats that are all 0 or 1 (binary cross-entropy's targets)."""
    if y is None:
        return False
    if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        return True
    return bool(np.issubdtype(y.dtype, np.floating) and np.isin(y, (0.0, 1.0)).all())


def fold_indices(n: int, folds: Folds = 5, labels: Optional[np.ndarray] = None, groups: Any = None,
                 stratify: Optional[bool] = None, seed: int = 0) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Each fold's ``(train_rows, val_rows)``, sorted, as ``cross_validate`` splits ``n`` rows.

    ``folds``: a number k (scikit-learn's ``StratifiedKFold`` for class labels,
    ``StratifiedGroupKFold`` / ``GroupKFold`` with ``groups``, ``KFold`` otherwise; shuffled
    with ``seed``), a scikit-learn splitter (anything with ``split(X, y, groups)``) or a list
    of ``(train_rows, val_rows)``. ``stratify``: None stratifies when ``labels`` are classes
    (integers, or 0/1 floats), True insists, False never does.

    >>> [val.tolist() for _, val in fold_indices(6, 3, labels=np.array([0, 0, 0, 1, 1, 1]))]
    [[2, 4], [1, 5], [0, 3]]
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if stratify not in (None, True, False):
        raise TypeError(f"stratify must be None (when the targets are classes), True or False; got {stratify!r}")
    classes = _are_classes(labels)
    if stratify and not classes:
        raise ValueError("stratify=True needs class labels (one integer, or 0/1 float, target per row); these "
                         "targets are not: pass stratify=None or False")
    stratified = classes if stratify is None else stratify
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape[:1] != (n,):
            raise ValueError(f"groups must hold one group per row ({n}); got shape {groups.shape}")
    if isinstance(folds, numbers.Integral) and not isinstance(folds, bool):
        k = int(folds)
        if k < 2:
            raise ValueError(f"folds must be >= 2 (each row is validated once, in one of k folds); got {folds}")
        if k > n:
            raise ValueError(f"folds={k} is more than the {n} rows; use at most {n} folds")
        if groups is not None:
            splitter = (StratifiedGroupKFold(k, shuffle=True, random_state=seed) if stratified
                        else GroupKFold(k, shuffle=True, random_state=seed))
        elif stratified:
            counts = np.unique(labels, return_counts=True)[1]
            if counts.min() < k:
                raise ValueError(f"folds={k} stratified needs at least {k} rows of every class; the smallest class "
                                 f"has {counts.min()}. Use fewer folds, or stratify=False")
            splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
        else:
            splitter = KFold(k, shuffle=True, random_state=seed)
        pairs: Iterable = splitter.split(np.zeros((n, 1)), labels if stratified else None, groups)
    elif hasattr(folds, "split") and not isinstance(folds, (str, bytes)):
        pairs = folds.split(np.zeros((n, 1)), labels, groups)
    elif isinstance(folds, (list, tuple)):
        pairs = folds
    else:
        raise TypeError(f"folds must be a number of folds, a scikit-learn splitter (KFold(5), GroupKFold(3)...) or "
                        f"a list of (train_rows, val_rows); got {type(folds).__name__}")
    result = []
    for i, pair in enumerate(pairs):
        try:
            train, val = (np.sort(np.asarray(rows, dtype=np.int64).reshape(-1)) for rows in pair)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"fold {i} is not a pair (train_rows, val_rows) of integer arrays") from exc
        if len(train) == 0 or len(val) == 0:
            raise ValueError(f"fold {i} has {len(train)} training and {len(val)} validation rows; each needs one")
        if train.min() < 0 or max(train.max(), val.max()) >= n or val.min() < 0:
            raise ValueError(f"fold {i} names rows outside [0, {n - 1}]")
        result.append((train, val))
    if len(result) < 2:
        raise ValueError(f"cross-validation needs at least 2 folds; got {len(result)}")
    return result


def _part(ds: Dataset, rows: np.ndarray) -> Dataset:
    if isinstance(ds, TensorDataset):  # stays a TensorDataset: fit's fast path indexes it
        index = torch.from_numpy(rows)
        return TensorDataset(*(t[index] for t in ds.tensors))
    return Subset(ds, rows.tolist())


# ---------------------------------------------------------------------- the verb
def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def _built(build: Callable[[], Any], fold: int) -> Model:
    model = build()
    if not isinstance(model, Model) or model.device is None:
        got = "a Model that is not compiled" if isinstance(model, Model) else type(model).__name__
        raise TypeError(f"build() must return a new compiled torchfit.Model (fold {fold + 1}); it returned {got}. "
                        "e.g. build = lambda: torchfit.Model(make_net()).compile(loss=..., optimizer='adam')")
    return model


class _MonitorCheck(Callback):
    """Fails fold 1's fit before training when its epoch logs will not have the summary's monitor."""

    def __init__(self, monitor: str):
        self.monitor = monitor

    def set_params(self, params: dict) -> None:
        super().set_params(params)
        check_monitor("cross_validate", self.monitor, params)


@dataclasses.dataclass
class _FoldJob:
    """Everything one fold's training needs; ``train(fold)`` runs it, here or in a worker process."""

    build: Callable[[], Model]
    ds: Dataset
    splits: List[Tuple[np.ndarray, np.ndarray]]
    first: Model  # fold 0's model, built before the folds (its loss decided how targets are read)
    after_build: tuple  # the RNG state right after building it
    seed: int
    epochs: int
    batch_size: int
    verbose: Any
    callbacks: List[Callback]
    fit_kwargs: Dict[str, Any]

    def train(self, fold: int) -> Model:
        train_rows, val_rows = self.splits[fold]
        with torch.random.fork_rng():
            if fold == 0:  # as if built here: the generators continue from where its build left them
                _set_rng_state(self.after_build)
                model = self.first
            else:
                torch.manual_seed(self.seed + fold)
                model = _built(self.build, fold)
            generator = torch.Generator().manual_seed(self.seed + fold)
            dl_train = DataLoader(_part(self.ds, train_rows), self.batch_size, shuffle=True, generator=generator)
            dl_val = DataLoader(_part(self.ds, val_rows), self.batch_size)
            model.fit(self.epochs, dl_train, dl_val, verbose=self.verbose, callbacks=self.callbacks,
                      **self.fit_kwargs)
        return model


class FoldError(RuntimeError):
    """A fold trained in a worker process (``cross_validate(n_jobs=k)``) failed; the message holds its traceback."""


def _fold_worker(job: _FoldJob, fold: int, threads: int, conn: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    torch.set_num_threads(threads)
    try:
        model = job.train(fold)
        conn.send(("ok", pickle.dumps(model)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"))
    finally:
        conn.close()


def _in_processes(job: _FoldJob, n_jobs: int) -> List[Model]:
    """Each fold's trained model, ``n_jobs`` folds at a time in worker processes, in fold order."""
    import multiprocessing.connection

    import torch.multiprocessing as mp

    from .distributed.notebook import start_method  # how the notebook launcher starts its workers

    if torch.cuda.is_initialized():
        raise RuntimeError("cross_validate(n_jobs=...) cannot start worker processes: CUDA is already initialised "
                           "in this process and a CUDA context does not survive a fork. Use n_jobs=1, or start "
                           "a fresh process and build the models on the CPU")
    method = start_method()
    ctx = mp.get_context(method)
    if method != "fork":
        try:
            pickle.dumps(job)
        except Exception as exc:
            raise TypeError(f"cross_validate(n_jobs=...) starts its workers with 'spawn' here, which needs build and "
                            f"the data to be picklable, and one is not ({type(exc).__name__}: {exc}). Define build "
                            "in a module (not a lambda or a notebook cell), or use n_jobs=1") from exc
    threads = max(1, torch.get_num_threads() // n_jobs)
    todo = list(range(len(job.splits)))
    running: Dict[Any, Tuple[int, Any]] = {}  # the receiving end of a fold's pipe -> (fold, process)
    results: Dict[int, Model] = {}
    try:
        while todo or running:
            while todo and len(running) < n_jobs:
                fold = todo.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_fold_worker, args=(job, fold, threads, send),
                                      name=f"torchfit-fold{fold + 1}", daemon=True)
                process.start()
                send.close()
                running[receive] = (fold, process)
            for receive in multiprocessing.connection.wait(list(running)):
                fold, process = running.pop(receive)
                try:
                    status, payload = receive.recv()
                except EOFError:
                    process.join()
                    status, payload = "error", f"its process ended with exit code {process.exitcode} and no result"
                receive.close()
                process.join()
                if status != "ok":
                    raise FoldError(f"fold {fold + 1} failed in its worker process: {payload}")
                results[fold] = pickle.loads(payload)
    except BaseException:
        for _, process in running.values():  # the other folds stop with it
            process.terminate()
        for _, process in running.values():
            process.join()
        raise
    return [results[fold] for fold in range(len(job.splits))]


def _rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def _pick_epoch(history: pd.DataFrame, monitor: str, mode: str, summary_at: str) -> pd.Series:
    if summary_at == "last":
        return history.iloc[-1]
    values = history[monitor]
    if values.notna().sum() == 0:
        return history.iloc[-1]
    return history.loc[values.idxmin() if mode == "min" else values.idxmax()]


def cross_validate(build: Callable[[], Model], data: Any, folds: Folds = 5, *, y: Any = None,
                   target: Union[str, Sequence[str], None] = None, epochs: int = 10, batch_size: int = 32,
                   groups: Any = None, stratify: Optional[bool] = None, seed: int = 0,
                   monitor: str = "val_loss", mode: Optional[str] = None, summary_at: str = "best",
                   verbose: Union[int, str] = 0, n_jobs: int = 1, **fit_kwargs: Any) -> CrossValidation:
    """Train a fresh model per fold and gather the histories: ``fold`` column, per-fold figures, a summary.

    >>> from torch import nn
    >>> from torchfit.testing import data
    >>> build = lambda: Model(nn.Linear(4, 3)).compile(nn.CrossEntropyLoss(), "adam", ["accuracy"], device="cpu")
    >>> cv = cross_validate(build, data.classification(60), folds=3, epochs=2)
    >>> list(cv.history.columns[:3]), len(cv.history), list(cv.summary.columns)
    (['fold', 'epoch', 'loss'], 6, ['mean', 'std', 'min', 'max'])

    ``build()``: returns a new compiled ``torchfit.Model`` for each fold (called under a
    generator seeded with ``seed + fold``, so folds are reproducible in any order and the
    caller's random state is left alone). ``data``: a Dataset, a pair ``(x, y)`` or ``x``
    with ``y=`` (tensors or arrays), or a DataFrame with ``target=``. ``folds``: k, a
    scikit-learn splitter or a list of ``(train_rows, val_rows)`` (see ``fold_indices``: k
    folds are stratified for class labels, by ``groups`` when given). Each fold trains
    ``epochs`` epochs on shuffled batches of ``batch_size`` (a generator seeded with
    ``seed + fold``) and validates on its held-out rows; ``fit_kwargs`` and ``verbose`` go to
    ``fit`` (``callbacks=[...]`` serve every fold: each fit starts them afresh at ``on_train_begin``). The summary reads each fold at its best epoch by ``monitor`` (``mode`` "min" or
    "max"; None: "max" for accuracy-like names, "min" otherwise) with ``summary_at="best"``,
    or at its last epoch with ``"last"``. ``n_jobs=k`` trains k folds at a time in worker
    processes (forked on Linux, spawned elsewhere, where ``build`` and the data must be
    picklable), each with ``torch.get_num_threads() // k`` threads and the same figures as one
    after another; the models come back whole (weights, optimizer, history).
    """
    epochs = _check_count("epochs", epochs, 1)
    batch_size = _check_count("batch_size", batch_size, 1)
    seed = _check_count("seed", seed, 0)
    n_jobs = _check_count("n_jobs", n_jobs, 1)
    if summary_at not in ("best", "last"):
        raise ValueError(f"summary_at must be 'best' (each fold's best epoch by monitor) or 'last'; got {summary_at!r}")
    if mode is None:
        mode = "max" if any(w in monitor for w in ("acc", "auc", "f1", "precision", "recall", "r2")) else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or None; got {mode!r}")
    for taken in ("dl_train", "dl_val", "x", "validation_split", "validation_data", "callbacks_per_fold"):
        if taken in fit_kwargs:
            raise TypeError(f"cross_validate makes each fold's loaders itself; it does not take {taken}=")
    if not callable(build):
        raise TypeError(f"build must be a function returning a new compiled torchfit.Model; got {type(build).__name__}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and y is None and target is None:
        data, y = data
    with torch.random.fork_rng():  # fold 0's model, built first: its loss decides how targets are read
        torch.manual_seed(seed)
        first = _built(build, 0)
        after_build = _rng_state()
    ds = inputs._dataset("cross_validate", data, y, target, first.loss_fn, "data")
    try:
        n = len(ds)
    except TypeError as exc:
        raise TypeError("cross_validate needs data with a length (arrays, a DataFrame or a map-style Dataset); "
                        f"got {type(ds).__name__}") from exc
    splits = fold_indices(n, folds, _labels(ds), groups, stratify, seed)

    callbacks = list(fit_kwargs.pop("callbacks", None) or [])
    if summary_at == "best":  # a monitor the folds never log fails before fold 1 trains
        callbacks.append(_MonitorCheck(monitor))
    job = _FoldJob(build, ds, splits, first, after_build, seed, epochs, batch_size, verbose, callbacks, fit_kwargs)
    if n_jobs > 1:
        trained = _in_processes(job, min(n_jobs, len(splits)))
    else:
        trained = [job.train(fold) for fold in range(len(splits))]
    histories, rows, models = [], [], []
    for fold, model in enumerate(trained):
        history = model.history
        if summary_at == "best" and monitor not in history.columns:
            raise ValueError(f"monitor={monitor!r} is not in the history; it has {list(history.columns)}")
        history = history.copy()
        history.insert(0, "fold", fold + 1)
        histories.append(history)
        picked = _pick_epoch(history, monitor, mode, summary_at)
        rows.append(picked)
        models.append(model)
    history = pd.concat(histories, ignore_index=True)
    per_fold = pd.DataFrame(rows).reset_index(drop=True).infer_objects()
    per_fold[["fold", "epoch"]] = per_fold[["fold", "epoch"]].astype(int)
    figures = per_fold.drop(columns=["fold", "epoch"]).select_dtypes("number")  # not OptunaPruning's text
    summary = pd.DataFrame({"mean": figures.mean(), "std": figures.std(ddof=1), "min": figures.min(),
                            "max": figures.max()})
    return CrossValidation(history, per_fold, summary, splits, models, monitor, summary_at)
