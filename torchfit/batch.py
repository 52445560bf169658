"""What a batch is: nested tensors, their sample count, and the ``(x, y)`` split.

Owns the one walk over nested containers (``map_tensors``: a tensor, or a
dict, list, tuple or namedtuple of them, to any depth) and everything built on
it: moving, detaching, describing, cutting rows and concatenating batches, and
counting a batch's samples. It also owns how a batch is split into inputs and
targets and how the inputs are handed to the net. *When* batches are moved or
cut is the loop's and the distributed module's business; this module only
knows their shape.

>>> batch = {"x": torch.ones(4, 3), "lengths": [torch.arange(4)]}
>>> describe(batch)
{'x': [4, 3], 'lengths': [[4]]}
>>> batch_size_of(batch)
4
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch

from .errors import BatchFormatError


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def map_tensors(fn: Callable[..., Any], obj: Any, *others: Any) -> Any:
    """Apply ``fn`` to every tensor in ``obj``, keeping its containers; anything else is kept as is.

    With ``others`` (objects of the same structure) ``fn`` gets the tensors found
    at the same place in each: ``map_tensors(torch.add, a, b)``.

    >>> map_tensors(lambda t: t * 2, (torch.tensor(1), {"k": torch.tensor(2)}, "tag"))
    (tensor(2), {'k': tensor(4)}, 'tag')
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj, *others)
    if isinstance(obj, dict):
        return type(obj)((k, map_tensors(fn, v, *(o[k] for o in others))) for k, v in obj.items())
    if _is_namedtuple(obj):  # a namedtuple takes its fields as arguments, not an iterable
        return type(obj)(*(map_tensors(fn, v, *(o[i] for o in others)) for i, v in enumerate(obj)))
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(fn, v, *(o[i] for o in others)) for i, v in enumerate(obj))
    if isinstance(obj, Mapping):  # a BatchEncoding, a UserDict: a plain dict of the same items
        return {k: map_tensors(fn, v, *(o[k] for o in others)) for k, v in obj.items()}
    return obj


def tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``obj``, depth first, in container order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from tensors(value)
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from tensors(value)


def first_tensor(obj: Any) -> Optional[torch.Tensor]:
    """The first tensor found in a nested batch, or None."""
    if isinstance(obj, torch.Tensor):  # the usual case, per step: no generator set up for it
        return obj
    return next(tensors(obj), None)


def batch_size_of(*objs: Any) -> int:
    """Number of samples in a batch: the first dim of the first tensor found (1 for a 0-d tensor)."""
    for obj in objs:
        t = first_tensor(obj)
        if t is not None:
            return int(t.shape[0]) if t.dim() > 0 else 1
    raise ValueError("could not find a tensor in the batch to count its samples")


def as_tensors(obj: Any) -> Any:
    """Numpy arrays inside ``obj`` as tensors (floating ones in torch's default dtype, as Keras casts
    to floatx); everything else as is.

    >>> as_tensors({"x": np.zeros(2)})["x"].dtype
    torch.float32
    """
    if isinstance(obj, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(obj))
        return t.to(torch.get_default_dtype()) if t.is_floating_point() else t
    if isinstance(obj, dict):
        return type(obj)((k, as_tensors(v)) for k, v in obj.items())
    if _is_namedtuple(obj):
        return type(obj)(*(as_tensors(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_tensors(v) for v in obj)
    if isinstance(obj, Mapping):
        return {k: as_tensors(v) for k, v in obj.items()}
    return obj


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor inside ``obj`` to ``device``.

    >>> to_device({"x": torch.ones(2)}, torch.device("cpu"))["x"].device
    device(type='cpu')
    """
    return map_tensors(lambda t: t.to(device, non_blocking=non_blocking), obj)


def detach(obj: Any) -> Any:
    """Every tensor in ``obj`` detached from autograd (no copy)."""
    return obj.detach() if isinstance(obj, torch.Tensor) else map_tensors(torch.Tensor.detach, obj)


def describe(obj: Any) -> Any:
    """Shapes for messages: a tensor's shape as a list, containers kept, anything else by type name."""
    if isinstance(obj, torch.Tensor):
        return list(obj.shape)
    if isinstance(obj, Mapping):
        return {k: describe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    return type(obj).__name__


def take_rows(obj: Any, keep: int, n: int) -> Any:
    """The first ``keep`` rows of every tensor in ``obj`` whose first dimension is the batch (``n``)."""
    return map_tensors(lambda t: t[:keep] if t.dim() > 0 and t.shape[0] == n else t, obj)


def concat(chunks: Sequence[Any]) -> Any:
    """Concatenate per-batch outputs along dim 0, keeping their tuple/list/dict structure.

    >>> concat([(torch.zeros(2), torch.ones(2, 1)), (torch.zeros(1), torch.ones(1, 1))])[1].shape
    torch.Size([3, 1])
    """
    first = chunks[0]
    if first_tensor(first) is None:
        raise TypeError(
            f"predict_step returned {type(first).__name__}; expected a tensor or a tuple/list/dict of tensors"
        )
    return map_tensors(lambda *ts: torch.stack(ts) if ts[0].dim() == 0 else torch.cat(ts), first, *chunks[1:])


# ------------------------------------------------------------ (x, y) batches
WEIGHT_KEY = "sample_weight"


def split_batch(batch: Any, verb: str, target_key: Any = None, keep_target: bool = False) -> tuple:
    """``(x, y, sample_weight)`` from a batch ``(x, y)`` (weight None) or ``(x, y, w)`` (Keras' layout,
    one weight per sample), or from a mapping with ``target_key`` (``split_mapping``); anything else is
    a ``BatchFormatError`` naming the fix."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1], None
        if len(batch) == 3:
            x, y, w = batch
            n = batch_size_of(y, x)
            if not isinstance(w, torch.Tensor) or w.dim() > 2 or w.numel() != n or (w.dim() and w.shape[0] != n):
                raise BatchFormatError(
                    f"{verb} read a batch of 3 as (x, y, sample_weight), Keras' layout, but its third item is "
                    f"{describe(w)}, not one weight per sample ({n}). Yield (x, y) pairs, or weights of shape "
                    "(N,); for several inputs yield ((x1, x2), y)"
                )
            return x, y, w
    elif target_key is not None and isinstance(batch, Mapping):
        return split_mapping(batch, verb, target_key, keep_target)
    what = f"a {type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list, dict)) else "")
    raise BatchFormatError(
        f"{verb} expects each batch as a pair (x, y) or (x, y, sample_weight); the loader yielded {what}. Make the "
        "dataset return (inputs, target), e.g. TensorDataset(X, y), or override train_step/eval_step for other layouts"
    )


def split_mapping(batch: Mapping, verb: str, target_key: Any, keep_target: bool = False) -> tuple:
    """``(inputs, targets, sample_weight)`` of a mapping batch (a dict, a Hugging Face ``BatchEncoding``):
    the targets under ``target_key`` (a tuple of keys: a dict of targets, e.g. a question-answering
    model's ``("start_positions", "end_positions")``), the weights (if any) under ``"sample_weight"``,
    every other key an input the net gets as a keyword argument; ``keep_target``: the net gets the
    targets too (a net that computes its own loss from ``labels=``).

    >>> x, y, w = split_mapping({"input_ids": torch.ones(2, 3), "labels": torch.tensor([0, 1])}, "fit", "labels")
    >>> list(x), y.tolist(), w
    (['input_ids'], [0, 1], None)
    """
    keys = (target_key,) if isinstance(target_key, str) else tuple(target_key)
    for key in keys:
        if key not in batch:
            close = difflib.get_close_matches(key, [str(k) for k in batch], n=1)
            fix = f"compile(target_key={close[0]!r})" if close else "compile(target_key='<the key of the targets>')"
            raise BatchFormatError(
                f"{verb} got a batch that is a {type(batch).__name__} with the keys {list(batch)} and no {key!r}, "
                f"where a mapping batch keeps its targets. Name their key once: {fix}, or put them under "
                f"{key!r} (a Hugging Face collator does that with a 'labels' column)")
    x = {k: v for k, v in batch.items() if k != WEIGHT_KEY and (keep_target or k not in keys)}
    y = batch[target_key] if isinstance(target_key, str) else {k: batch[k] for k in keys}
    w = batch.get(WEIGHT_KEY)
    if w is not None:
        n = batch_size_of(y, x)
        if not isinstance(w, torch.Tensor) or w.dim() > 2 or w.numel() != n or (w.dim() and w.shape[0] != n):
            raise BatchFormatError(f"{verb} read the batch's {WEIGHT_KEY!r} as one weight per sample ({n}), Keras' "
                                   f"sample weights, but it is {describe(w)}; give each sample one number")
    return x, y, w


def predict_inputs(batch: Any, target_key: Any = None) -> Any:
    """The inputs of a predict batch: ``x`` alone, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``;
    a mapping without its ``target_key`` and ``"sample_weight"`` entries (a plain dict)."""
    if isinstance(batch, (tuple, list)):
        if len(batch) in (1, 2, 3):
            return batch[0]
        raise BatchFormatError(
            f"predict expects batches as x, (x, y) or (x, y, w); the loader yielded a {type(batch).__name__} of length "
            f"{len(batch)}. For a net with several inputs yield ((x1, x2), y), or override predict_step"
        )
    if isinstance(batch, Mapping):
        keys = (target_key,) if target_key is None or isinstance(target_key, str) else tuple(target_key)
        return {k: v for k, v in batch.items() if k not in keys and k != WEIGHT_KEY}
    return batch


def call_net(net: Callable, x: Any) -> Any:
    """``net(x)``, ``net(*x)`` for a tuple/list, ``net(**x)`` for a dict."""
    if isinstance(x, torch.Tensor):
        return net(x)
    if isinstance(x, Mapping):
        return net(**x)
    if isinstance(x, (tuple, list)):
        return net(*x)
    return net(x)


__all__: List[str] = [
    "as_tensors", "batch_size_of", "call_net", "concat", "describe", "detach", "first_tensor", "map_tensors",
    "predict_inputs", "split_batch", "split_mapping", "take_rows", "tensors", "to_device",
]
