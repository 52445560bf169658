"""The tensor fast path: batches of a ``TensorDataset`` loader by indexing, not row by row.

Owns how the loop gets batches out of a loader (``iter_batches``, what
``loop.Run.iterate`` is set to). It leaves moving batches to the device to
``device``/``loop`` and everything about steps to ``Model``.

A ``DataLoader`` fetches a map-style dataset one sample at a time: for a
``TensorDataset`` that is ``batch_size`` row lookups per tensor followed by
``default_collate`` stacking them back together, which is most of the cost of a
step for small models. When the loader is exactly that plain case — a
``DataLoader`` over a ``TensorDataset`` (or a ``Subset`` of one, as
``random_split`` makes), default collate function, ``num_workers=0`` — the
same batch is one ``index_select`` per tensor with the batch's index list.

The indices come from the loader's own batch sampler, and the random numbers
the DataLoader's iterator draws are drawn in the same order, so the batches,
the RNG streams and hence the trained weights are bit-identical to iterating
the loader. Every other loader (workers, a custom collate function or dataset,
an ``IterableDataset``, any iterable that is not a DataLoader) is iterated as
it is.
"""
from __future__ import annotations

import array
import warnings
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset, default_collate


def iter_batches(loader: Iterable) -> Iterator[Any]:
    """Iterate ``loader``'s batches, through the tensor fast path when it applies.

    Same batches, same order, same random numbers as ``iter(loader)``; see the
    module docstring for when the fast path applies (``uses_fast_path``).

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> dl = DataLoader(TensorDataset(torch.arange(10.0), torch.arange(10)), batch_size=4)
    >>> [x.tolist() for x, y in iter_batches(dl)]
    [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0]]
    """
    source = _tensor_source(loader)
    if source is None:
        return iter(loader)
    tensors, subset_chain = source
    try:
        rows = _compose(subset_chain)
    except (IndexError, TypeError, ValueError, RuntimeError, OverflowError):
        # Subset indices out of range or not integers: the DataLoader fails only if a
        # batch asks for one of them, so let it.
        return iter(loader)
    pin = loader.pin_memory and _can_pin()
    # The order of the DataLoader iterator's set-up: it calls iter() on the batch
    # sampler, then draws a base seed for its workers from the loader's generator
    # (the global RNG when there is none) — even with no workers. A shuffling
    # sampler draws its own seed at the first batch. Drawing the same number here
    # keeps every later random number (dropout, the next epoch's shuffle) in step.
    batches = iter(loader.batch_sampler)
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    return _gather(batches, tensors, rows, pin, loader.dataset)


def uses_fast_path(loader: Any) -> bool:
    """Whether ``iter_batches`` fetches ``loader``'s batches by indexing tensors.

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> ds = TensorDataset(torch.zeros(8, 2))
    >>> uses_fast_path(DataLoader(ds, batch_size=4)), uses_fast_path(DataLoader(ds, batch_size=4, collate_fn=list))
    (True, False)
    """
    return _tensor_source(loader) is not None


def _tensor_source(loader: Any) -> Optional[Tuple[Tuple[torch.Tensor, ...], List[Sequence[int]]]]:
    """The dataset's tensors and its chain of Subset indices (outermost first), or None."""
    if not isinstance(loader, DataLoader):
        return None
    cls = type(loader)
    if cls.__iter__ is not DataLoader.__iter__ or cls._get_iterator is not DataLoader._get_iterator:
        return None  # a subclass that fetches its own way
    if (loader.num_workers != 0 or loader.batch_sampler is None or loader.collate_fn is not default_collate
            or loader.timeout != 0):
        return None
    dataset = loader.dataset
    chain: List[Sequence[int]] = []
    while type(dataset) is Subset:  # exact types: a subclass may override __getitem__
        chain.append(dataset.indices)
        dataset = dataset.dataset
    if type(dataset) is not TensorDataset or not dataset.tensors:
        return None
    for t in dataset.tensors:
        # Only plain dense CPU tensors, where indexing and stacking rows give the same
        # values with the same (contiguous) layout.
        if (type(t) is not torch.Tensor or t.layout != torch.strided or t.device.type != "cpu"
                or t.requires_grad or not t.is_contiguous() or t.is_conj() or t.is_neg() or t.dim() == 0):
            return None
    return dataset.tensors, chain


def _can_pin() -> bool:
    """Whether the DataLoader would pin batches; it warns as the DataLoader does when not."""
    acc = getattr(torch, "accelerator", None)  # torch >= 2.6: the DataLoader asks it
    available = acc.is_available() if acc is not None else torch.cuda.is_available()
    if not available:
        warnings.warn("'pin_memory' argument is set as true but no accelerator is found, "
                      "then device pinned memory won't be used.", stacklevel=3)
        return False
    if acc is not None and acc.current_accelerator().type == "mps":
        warnings.warn("'pin_memory' argument is set as true but not supported on MPS now, "
                      "device pinned memory won't be used.", stacklevel=3)
        return False
    return True


def _index_tensor(indices: Any) -> torch.Tensor:
    # ~2 µs for 64 ints against ~10 µs for torch.as_tensor(list); raises TypeError
    # for anything that is not an integer and ValueError for an empty batch.
    return torch.frombuffer(array.array("q", indices), dtype=torch.int64)


def _compose(chain: List[Sequence[int]]) -> Optional[torch.Tensor]:
    """Row of the TensorDataset for each position of the outermost Subset (None: no Subset)."""
    rows: Optional[torch.Tensor] = None
    for indices in reversed(chain):  # innermost first
        try:
            step = _index_tensor(indices)
        except (TypeError, ValueError, OverflowError):
            step = torch.as_tensor(indices, dtype=torch.int64)
        rows = step if rows is None else rows[step]  # wraps negative indices like Subset does
    return rows


def _gather(batches: Iterator[Any], tensors: Tuple[torch.Tensor, ...], rows: Optional[torch.Tensor],
            pin: bool, dataset: Any) -> Iterator[List[torch.Tensor]]:
    for indices in batches:
        try:
            idx = _index_tensor(indices)
            if rows is not None:
                idx = rows.index_select(0, idx)
            if pin:
                # Gather straight into page-locked memory: one copy, not two.
                batch = [torch.index_select(t, 0, idx, out=torch.empty((len(idx),) + t.shape[1:], dtype=t.dtype,
                                                                       pin_memory=True)) for t in tensors]
            else:
                batch = [t.index_select(0, idx) for t in tensors]
        except (TypeError, ValueError, OverflowError, IndexError):
            # Negative or out-of-range indices, non-integer or empty batches: fetch
            # exactly as the DataLoader does, so results and errors are its own.
            batch = default_collate([dataset[i] for i in indices])
            if pin:
                batch = [t.pin_memory() for t in batch]
        yield batch
