"""Keras-style inputs: arrays, tensors, Datasets and DataFrames turned into DataLoaders.

Owns: the keyword arguments ``x``, ``y``, ``target``, ``batch_size``,
``validation_split``, ``validation_data``, ``shuffle`` and ``seed`` of
``fit`` / ``evaluate`` / ``predict``; checking them before anything trains;
converting numpy / pandas data to tensors; the seeded validation split. What
comes out is always a plain ``DataLoader`` (over a ``TensorDataset`` when the data
were arrays), so the loop sees nothing new. Loaders the user built are passed
through untouched; the loop, the steps and the devices are other modules' job.

Conversion rules (numpy arrays, lists, pandas objects; torch tensors are used as
they are): floating -> float32, integer -> int64, bool -> float32; a DataFrame of
features becomes one float32 tensor (N, n_features) in column order. With a
binary cross-entropy loss (``nn.BCELoss``, ``nn.BCEWithLogitsLoss``) integer
targets become float32, since those losses reject integers.

The split: ``validation_split=f`` sends ``int(N * f)`` rows to validation, the
rows ``torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:int(N * f)]``
(see ``split_indices``); the same N and seed give the same rows, on every call.
"""
from __future__ import annotations

import difflib
import numbers
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from .formatting import count_of

__all__ = ["DEFAULT_BATCH_SIZE", "split_indices", "fit_loaders", "eval_loader", "predict_loader"]

DEFAULT_BATCH_SIZE = 32
Target = Union[str, Sequence[str], None]
_BCE = (nn.BCELoss, nn.BCEWithLogitsLoss)
_BCE_FUNCTIONS = (nn.functional.binary_cross_entropy, nn.functional.binary_cross_entropy_with_logits)


def split_indices(n: int, validation_split: float, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """The rows ``fit(..., validation_split=f, seed=s)`` trains and validates on.

    Returns ``(train_rows, val_rows)``, each sorted ascending: ``int(n * f)`` rows
    (rounded down, as in Keras) drawn by a seeded permutation go to validation. A random
    draw rather than Keras' last rows, because datasets often come sorted by class.

    >>> train_rows, val_rows = split_indices(10, 0.2, seed=0)
    >>> len(train_rows), len(val_rows)
    (8, 2)
    """
    if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
            or not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split must be a fraction strictly between 0 and 1 (e.g. 0.2); "
                         f"got {validation_split!r}")
    _check_seed(seed)
    n_val = int(n * validation_split)
    if n_val == 0 or n_val == n:
        raise ValueError(f"validation_split={validation_split} of {n} rows leaves "
                         f"{'no validation rows' if n_val == 0 else 'no training rows'}; "
                         "use a fraction that gives each side at least one row")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


# ------------------------------------------------------------------ entry points
def fit_loaders(
    dl_train: Any,
    dl_val: Any,
    *,
    x: Any = None,
    y: Any = None,
    target: Target = None,
    batch_size: Optional[int] = None,
    validation_split: Optional[float] = None,
    validation_data: Any = None,
    shuffle: Optional[bool] = None,
    seed: int = 0,
    loss_fn: Any = None,
    epoch: int = 0,
    sample_weight: Any = None,
) -> Tuple[Iterable, Optional[Iterable]]:
    """Resolve fit's data arguments into ``(train_loader, val_loader_or_None)``.

    Loaders pass through untouched. Arrays, tensors, DataFrames and Datasets become
    ``DataLoader``s with ``batch_size`` (default 32); training batches are shuffled
    (``shuffle=True`` by default) by a generator seeded with ``seed + epoch``, so a run
    is reproducible and each further fit call draws fresh orders.

    >>> # train, val = fit_loaders(None, None, x=X, y=Y, validation_split=0.2)
    """
    _check_seed(seed)
    batch_size = _check_batch_size(batch_size)
    if shuffle is not None and not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be True or False; got {shuffle!r}")
    data = _pick_data("fit", dl_train, x, "dl_train")
    if data is None:
        raise TypeError("fit needs training data: a training loader, model.fit(epochs, dl_train, dl_val), "
                        "or arrays, model.fit(epochs, x=X, y=Y, batch_size=32, validation_split=0.2)")
    if _is_array(dl_val) and y is None and _is_array(data):
        raise TypeError("fit(epochs, X, Y) reads Y as dl_val; pass arrays by keyword: "
                        "model.fit(epochs, x=X, y=Y)")
    if validation_data is not None and dl_val is not None:
        raise TypeError("fit got both dl_val and validation_data; they are the same thing, pass one")
    val_source = validation_data if validation_data is not None else dl_val
    if validation_split is not None and val_source is not None:
        raise TypeError("fit got validation_split and validation data; pass either "
                        "validation_split=0.2 (split off the training data) or validation_data=(Xv, Yv)")

    if x is None and is_loader(data):
        _reject_loader_options("fit", batch_size=batch_size, shuffle=shuffle, y=y, target=target,
                               validation_split=validation_split, sample_weight=sample_weight)
        train: Iterable = data
        train_ds = None
    else:
        train_ds = _dataset("fit", data, y, target, loss_fn, "x" if x is not None else "dl_train")
        if sample_weight is not None:
            train_ds = _with_weights(train_ds, sample_weight)
        train = None

    val: Optional[Iterable] = None
    if validation_split is not None:
        train_ds, val_ds = _split(train_ds, validation_split, seed)
        val = _loader(val_ds, batch_size, shuffle=False)
    elif val_source is not None:
        val = _val_loader(val_source, target, batch_size, loss_fn,
                          "validation_data" if validation_data is not None else "dl_val")
    if train is None:
        iterable = isinstance(train_ds, IterableDataset)
        if iterable and shuffle:
            raise TypeError("shuffle=True needs a map-style Dataset (with __getitem__ and __len__); "
                            "an IterableDataset sets its own order: pass shuffle=False or leave it out")
        do_shuffle = not iterable and (True if shuffle is None else shuffle)
        train = _loader(train_ds, batch_size, shuffle=do_shuffle, seed=seed + epoch)
    return train, val


def eval_loader(dl: Any, *, x: Any = None, y: Any = None, target: Target = None,
                batch_size: Optional[int] = None, loss_fn: Any = None) -> Iterable:
    """Resolve evaluate's data arguments into one loader (never shuffled).

    >>> # model.evaluate(x=X_test, y=y_test)  or  model.evaluate(df_test, target="label")
    """
    batch_size = _check_batch_size(batch_size)
    data = _pick_data("evaluate", dl, x, "dl")
    if data is None:
        raise TypeError("evaluate needs data: model.evaluate(dl) with a DataLoader, or model.evaluate(x=X, y=Y)")
    if x is None and is_loader(data):
        _reject_loader_options("evaluate", batch_size=batch_size, y=y, target=target)
        return data
    return _loader(_dataset("evaluate", data, y, target, loss_fn, "x" if x is not None else "dl"),
                   batch_size, shuffle=False)


def predict_loader(dl: Any, *, x: Any = None, target: Target = None, batch_size: Optional[int] = None) -> Iterable:
    """Resolve predict's data arguments into one loader (never shuffled, dataset order).

    A DataFrame's ``target`` column(s), when present, are dropped, so the frame used
    for evaluate can be passed as it is; every other column is a feature.

    >>> # model.predict(X_test)  or  model.predict(df_test, target="label")
    """
    batch_size = _check_batch_size(batch_size)
    data = _pick_data("predict", dl, x, "dl")
    if data is None:
        raise TypeError("predict needs data: model.predict(dl) with a DataLoader, or model.predict(x=X)")
    if x is None and is_loader(data):
        _reject_loader_options("predict", batch_size=batch_size, target=target)
        return data
    if isinstance(data, Dataset):
        if target is not None:
            raise TypeError("target= names a DataFrame column; predict got a Dataset, which yields (x, y) itself")
        return _loader(data, batch_size, shuffle=False)
    if isinstance(data, pd.DataFrame):
        names = _target_names(target)
        data = data.drop(columns=[n for n in names if n in data.columns])
    elif target is not None:
        raise TypeError(f"target= names a DataFrame column; predict got {type(data).__name__}")
    return _loader(TensorDataset(_tensor(data, "x", features=True)), batch_size, shuffle=False)


# ------------------------------------------------------------------ helpers
def _pick_data(verb: str, positional: Any, x: Any, positional_name: str) -> Any:
    if x is not None and positional is not None:
        raise TypeError(f"{verb} got data twice: {positional_name} (positional) and x=; pass one")
    return x if x is not None else positional


def _is_array(obj: Any) -> bool:
    return isinstance(obj, (torch.Tensor, np.ndarray, pd.DataFrame, pd.Series))


def is_loader(obj: Any) -> bool:
    """Whether ``obj`` is a loader: anything iterable that is not data torchfit batches itself
    (a DataLoader, a generator, a list of batches...); the loop takes it as it is."""
    return not (_is_array(obj) or isinstance(obj, (Dataset, str, bytes, dict))) and hasattr(obj, "__iter__")


def _reject_loader_options(verb: str, **given: Any) -> None:
    used = [name for name, value in given.items() if value is not None]
    if used:
        raise TypeError(
            f"{verb} got {', '.join(f'{u}=' for u in used)} with a loader; the loader already batches, "
            "shuffles and pairs its data. Set these on your DataLoader, or pass the data itself "
            f"(x=X, y=Y, a Dataset or a DataFrame) to let {verb} build the loader"
            + ("; to validate, pass dl_val=" if "validation_split" in used else "")
        )


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int (it fixes the validation split and the shuffling); got {seed!r}")
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must lie in [0, 2**64 - 1] (what a torch.Generator takes); got {seed!r}")


def _check_batch_size(batch_size: Any) -> Optional[int]:
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    return int(batch_size)


def _loader(ds: Dataset, batch_size: Optional[int], shuffle: bool, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(ds, batch_size=batch_size or DEFAULT_BATCH_SIZE, shuffle=shuffle, generator=generator)


def _dataset(verb: str, data: Any, y: Any, target: Target, loss_fn: Any, name: str,
             y_label: str = "y") -> Dataset:
    """A Dataset of (x, y) pairs from a Dataset, a DataFrame (+ target) or arrays (+ y)."""
    if isinstance(data, Dataset):
        if y is not None or target is not None:
            raise TypeError(f"{verb} got a Dataset and {'y=' if y is not None else 'target='}; "
                            "a Dataset yields (x, y) pairs itself, so pass it alone")
        return data
    if isinstance(data, (list, tuple, dict)):
        raise TypeError(
            f"{verb}: {name} is a {type(data).__name__}; pass one array, tensor or DataFrame as x= with y=. "
            "For a net with several inputs, build a Dataset that yields ((x1, x2), y) and pass that"
        )
    if isinstance(data, pd.DataFrame) and y is None:
        if target is None:
            raise TypeError(f"{verb} got a DataFrame without its target: name the column(s) to predict, "
                            f"e.g. model.{verb}({'epochs, ' if verb == 'fit' else ''}df, target='label')")
        names = _target_names(target)
        _check_columns(data, names)
        y = data[names[0]] if isinstance(target, str) else data[names]
        data = data.drop(columns=names)
        y_name = f"target {target!r}"
    else:
        if target is not None:
            raise TypeError(f"target= names a DataFrame column; {verb} got {type(data).__name__} "
                            "(with arrays pass the targets as y=)")
        if y is None:
            raise TypeError(f"{verb} got {name} as a {type(data).__name__} without targets: pass y= (one "
                            f"target per row), or a loader such as DataLoader(TensorDataset(X, y), batch_size=32)")
        y_name = y_label
    if not _is_array(data):
        raise TypeError(f"{verb}: {name} must be a DataLoader, a Dataset, a DataFrame, a tensor or a numpy "
                        f"array; got {type(data).__name__}")
    X = _tensor(data, name, features=True)
    Y = _tensor(y, y_name, bce=_is_bce(loss_fn) and not isinstance(y, torch.Tensor))
    if len(X) != len(Y):
        raise ValueError(f"{verb}: {name} has {len(X)} rows but {y_name} has {len(Y)}; they need one target per "
                         "sample (same first dimension)")
    return TensorDataset(X, Y)


def _with_weights(ds: Dataset, sample_weight: Any) -> Dataset:
    """``ds``'s (x, y) pairs with one weight each: (x, y, w), Keras' layout."""
    if not isinstance(ds, TensorDataset) or len(ds.tensors) != 2:
        raise TypeError("sample_weight goes with array inputs (x=X, y=Y or a DataFrame); a Dataset yields "
                        "(x, y, w) triples itself when its samples carry weights")
    w = _tensor(sample_weight, "sample_weight", features=True)
    if w.dim() > 2 or w.numel() != len(ds) or (w.dim() == 2 and w.shape[1] != 1):
        raise ValueError(f"sample_weight must hold one weight per row of x ({len(ds)}); got shape {list(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("sample_weight must be finite and >= 0")
    return TensorDataset(*ds.tensors, w.reshape(len(ds)))


def _val_loader(source: Any, target: Target, batch_size: Optional[int], loss_fn: Any, name: str) -> Iterable:
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(_is_array(s) for s in source):
        return _loader(_dataset("fit", source[0], source[1], None, loss_fn, f"{name}[0]", y_label=f"{name}[1]"),
                       batch_size, shuffle=False)
    if name == "validation_data" and isinstance(source, tuple):
        raise TypeError(f"validation_data as a tuple must be (X_val, Y_val), two arrays or tensors; got a tuple "
                        f"of {len(source)} ({', '.join(type(v).__name__ for v in source)})")
    if is_loader(source):
        return source  # a loader (or a list of batches) as before
    return _loader(_dataset("fit", source, None, target, loss_fn, name), batch_size, shuffle=False)


def _split(ds: Dataset, validation_split: float, seed: int) -> Tuple[Dataset, Dataset]:
    if isinstance(ds, IterableDataset) or not hasattr(ds, "__len__"):
        raise TypeError("validation_split needs data with a length (arrays, a DataFrame or a map-style "
                        "Dataset); for an IterableDataset pass validation_data= instead")
    train_rows, val_rows = split_indices(len(ds), validation_split, seed)
    if isinstance(ds, TensorDataset):
        # stay a TensorDataset: whole-tensor indexing keeps batching cheap
        return (TensorDataset(*(t[train_rows] for t in ds.tensors)),
                TensorDataset(*(t[val_rows] for t in ds.tensors)))
    return Subset(ds, train_rows.tolist()), Subset(ds, val_rows.tolist())


def _target_names(target: Target) -> List[str]:
    if isinstance(target, str):
        return [target]
    if target is None:
        return []
    names = list(target)
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"target must be a column name or a list of column names; got {target!r}")
    return names


def _check_columns(df: pd.DataFrame, names: List[str]) -> None:
    columns = [str(c) for c in df.columns]
    for name in names:
        if name not in df.columns:
            close = difflib.get_close_matches(name, columns, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"target {name!r} is not a column of the DataFrame{hint}; its columns are "
                             f"{columns}. Pass target='<the label column>'")
    if len(names) == len(df.columns):
        raise ValueError("the DataFrame has no feature columns left once the target is taken out")


def _is_bce(loss_fn: Any) -> bool:
    return isinstance(loss_fn, _BCE) or loss_fn in _BCE_FUNCTIONS


def _tensor(data: Any, name: str, bce: bool = False, features: bool = False) -> torch.Tensor:
    """One tensor from a tensor, numpy array, list or pandas object, by the module's dtype rules."""
    if isinstance(data, torch.Tensor):
        t = data
    else:
        if isinstance(data, pd.DataFrame):
            bad = [str(c) for c, dt in data.dtypes.items()
                   if not (pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt))]
            if bad:
                raise TypeError(f"{name}: column(s) {bad} are not numeric; encode them as numbers first, e.g. "
                                f"pd.get_dummies(df, columns={bad}) or df[col].astype('category').cat.codes")
            array = data.to_numpy(dtype=np.float32) if features else data.to_numpy()
        elif isinstance(data, pd.Series):
            if not (pd.api.types.is_numeric_dtype(data.dtype) or pd.api.types.is_bool_dtype(data.dtype)):
                raise TypeError(f"{name} has dtype {data.dtype}, not numbers; encode it first, e.g. "
                                "series.astype('category').cat.codes")
            array = data.to_numpy()
        else:
            array = np.asarray(data)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise TypeError(f"{name} has dtype {array.dtype}, which is not numeric; convert it to numbers "
                            "(for class names: np.unique(labels, return_inverse=True)[1])")
        if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32, copy=False)
        elif np.issubdtype(array.dtype, np.integer):
            array = array.astype(np.float32 if bce else np.int64, copy=False)
        array = np.ascontiguousarray(array)
        # pandas hands out read-only views (copy-on-write); torch needs memory it may write
        t = torch.from_numpy(array if array.flags.writeable else array.copy())
    if t.dim() == 0:
        raise ValueError(f"{name} is a single number; it needs a first dimension with one entry per sample")
    if t.is_floating_point() and t.device.type == "cpu" and not bool(torch.isfinite(t).all()):
        bad_rows = int((~torch.isfinite(t.reshape(len(t), -1))).any(dim=1).sum())
        raise ValueError(f"{name} has NaN or inf in {count_of(bad_rows, 'row')}; drop or fill them first "
                         "(df.dropna() / df.fillna(...) / np.nan_to_num)")
    return t
