"""Giving each rank its own part of the data.

Owns re-creating a ``DataLoader`` around a seeded ``DistributedSampler`` (every
setting kept, or a clear error when one cannot be), or, for an
``IterableDataset`` (torch's, or a Hugging Face stream), around ``RankShard``;
and knowing which of a rank's samples are padding. ``ctx`` is the run's
``DistributedContext`` (rank, world size, a broadcast for the shuffle seed).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

import torch
from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler,
                              SequentialSampler)


def shard(ctx: Any, loader: Iterable, name: str, purpose: str = "train") -> Any:
    """This rank's loader: ``loader`` re-created around a ``DistributedSampler``.

    Keeps the batch size (per rank), shuffling, ``drop_last``, workers,
    collate function, pin_memory, worker init and generator. A loader that
    already has a ``DistributedSampler`` is used as it is. ``purpose`` is
    ``"train"``, ``"eval"`` or ``"predict"`` (predict never shuffles and
    never drops).
    """
    if isinstance(loader, DataLoader) and isinstance(loader.dataset, IterableDataset):
        return _shard_stream(ctx, loader, name)
    if _has_own_sampler(ctx, loader, name, purpose):
        check_equal_steps(ctx, loader, len(loader.dataset), name, purpose)  # type: ignore[arg-type]
        return loader
    mine = _resampled(ctx, loader, name, purpose)
    check_equal_steps(ctx, mine, len(loader.dataset), name, purpose)  # type: ignore[arg-type]
    if mine.sampler.shuffle:  # drawn once the check passed: a refused call leaves torch's RNG as it was
        mine.sampler.seed = _shuffle_seed(ctx, loader)
    return mine


def _resampled(ctx: Any, loader: DataLoader, name: str, purpose: str) -> DataLoader:
    """``loader`` re-created around this rank's ``DistributedSampler`` (its shuffle seed set by ``shard``),
    every other setting kept."""
    shuffle, drop_last = _sampling(ctx, loader, name, purpose)
    sampler = DistributedSampler(loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                 shuffle=shuffle, seed=0, drop_last=drop_last)
    kwargs: Dict[str, Any] = dict(
        batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        drop_last=drop_last if loader.batch_size is not None else False, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator, persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        kwargs["in_order"] = loader.in_order
    return DataLoader(loader.dataset, **kwargs)


def check_equal_steps(ctx: Any, loader: DataLoader, dataset_size: int, name: str, purpose: str = "train") -> None:
    """Every rank's ``loader`` gives the same number of batches, or an error naming each rank's counts.

    One small all-gather, before the first step: DDP averages every step's gradients across the
    ranks, so a rank that runs out of batches first leaves the others waiting in a collective of
    another size (gloo: "Received data size doesn't match expected size"; NCCL: a hang). Ranks
    differ when each one was given a dataset of its own size (a dataset sharded by the user);
    ``dataset_size``, the size of the dataset this rank was given, is shown in the error. For
    ``predict``, which puts the ranks' rows back in dataset order, the samples must agree too.
    """
    mine = torch.tensor([len(loader), len(loader.sampler), dataset_size], dtype=torch.int64)  # type: ignore[arg-type]
    every = [tuple(row) for row in ctx.gather(mine).reshape(ctx.world_size, 3).tolist()]
    if len({row if purpose == "predict" else row[0] for row in every}) == 1:
        return
    counts = ", ".join(f"rank {r}: {b} batches of {n} samples from a dataset of {d}"
                       for r, (b, n, d) in enumerate(every))
    why = ("every rank must take the same number of steps, or the rank that runs out first leaves the others waiting "
           "in a collective (under DDP, gloo fails with 'Received data size doesn't match expected size')"
           if purpose != "predict" else "predict puts the ranks' rows back in dataset order, which needs the same "
           "dataset on every rank")
    raise ValueError(
        f"{name} differs between the ranks under torchrun ({counts}): {why}. Pass the same, whole dataset on every "
        "rank: torchfit splits it into equal shards itself (a loader over a shard of this rank's own would be "
        "split again), or build the loader over that whole dataset with sampler=DistributedSampler(dataset, "
        "drop_last=True) (drop_last=False pads the last shard instead)"
    )


_FIX = ("shard it yourself: build the DataLoader with sampler=DistributedSampler(dataset) and "
        "torchfit uses it as it is")


def _has_own_sampler(ctx: Any, loader: Any, name: str, purpose: str) -> bool:
    """Whether ``loader`` is already sharded (checked against this rank); errors for loaders that cannot be."""
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"{name} is a {type(loader).__name__}; under torchrun torchfit needs a torch DataLoader over a "
            "map-style Dataset so that it can give each rank its own part of the data (every rank would "
            "otherwise train on, and count, the whole dataset). Wrap it: DataLoader(dataset, batch_size=...)"
        )
    sampler = loader.sampler
    if not isinstance(sampler, DistributedSampler):
        return False
    if sampler.num_replicas != ctx.world_size or sampler.rank != ctx.rank:
        raise ValueError(
            f"{name}'s DistributedSampler has num_replicas={sampler.num_replicas}, rank={sampler.rank} but "
            f"this process is rank {ctx.rank} of {ctx.world_size}; build it with DistributedSampler(dataset)"
        )
    if purpose == "predict" and (sampler.shuffle or sampler.drop_last):
        raise ValueError(f"{name}'s DistributedSampler shuffles or drops samples; predict needs "
                         "shuffle=False, drop_last=False to return every sample in dataset order")
    return True


def _sampling(ctx: Any, loader: Any, name: str, purpose: str) -> Tuple[bool, bool]:
    """``(shuffle, drop_last)`` of the DistributedSampler that stands in for ``loader``'s sampler."""
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        raise ValueError(
            f"{name} uses a custom batch_sampler ({type(loader.batch_sampler).__name__}), which torchfit cannot "
            f"split across ranks without changing it; {_FIX}"
        )
    sampler = loader.sampler
    if isinstance(sampler, RandomSampler):
        if sampler.replacement or sampler._num_samples is not None:
            raise ValueError(f"{name} samples with replacement or a fixed num_samples, which DistributedSampler "
                             f"cannot reproduce; {_FIX}")
        shuffle = True
    elif isinstance(sampler, SequentialSampler):
        shuffle = False
    else:
        raise ValueError(
            f"{name} uses a custom sampler ({type(sampler).__name__}); under torchrun torchfit splits the data "
            f"with DistributedSampler, which would replace it; {_FIX}"
        )
    drop_last = bool(loader.drop_last)
    if purpose == "predict":
        if drop_last:
            raise ValueError(f"{name} has drop_last=True; predict returns every sample, so pass drop_last=False")
        shuffle = False
    n = len(loader.dataset)  # type: ignore[arg-type]
    if drop_last and n < ctx.world_size:
        raise ValueError(
            f"{name} has {n} sample(s), fewer than the {ctx.world_size} processes, and drop_last=True: every "
            "rank would get no data. Use drop_last=False or fewer processes"
        )
    return shuffle, drop_last


def _shuffle_seed(ctx: Any, loader: Any) -> int:
    """The DistributedSampler's seed: the loader's generator's, else one draw of torch's global RNG
    (as a single process draws its shuffle from it), rank 0's draw used everywhere so the shards fit."""
    generator = loader.sampler.generator if loader.sampler.generator is not None else loader.generator
    if generator is not None:
        seed = generator.initial_seed()
    else:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
    return ctx.broadcast_int(seed % (2 ** 62))


def real_samples(sampler: Any) -> Optional[int]:
    """How many of this rank's samples are real (not padding), or ``None`` when nothing is padded.

    ``DistributedSampler(drop_last=False)`` pads the index list to a multiple of
    the world size by repeating its start; the padding lands at the end of the
    list, so a rank's last ``num_samples - real`` samples are repeats.

    >>> from torch.utils.data import DistributedSampler
    >>> real_samples(DistributedSampler(range(5), num_replicas=2, rank=1, shuffle=False))
    2
    """
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    n = len(sampler.dataset)  # type: ignore[arg-type]
    return len(range(sampler.rank, n, sampler.num_replicas))



class RankShard(IterableDataset):
    """This rank's samples of an ``IterableDataset``: the stream's items ``rank``, ``rank + world``,
    ``rank + 2 * world``... (``DistributedSampler(shuffle=False)``'s split, for a stream).

    Every rank reads the whole stream and keeps its items, so each sample is seen once per epoch
    across the ranks and the ranks' batches together are one process's batches of ``world`` times
    the size. Where the stream's length is not a multiple of ``world``, the ranks short of an item
    get the last group's first item again, so that every rank takes the same number of steps;
    ``real`` then says how many of this rank's items are real (known once the stream has ended,
    which is before its last batch reaches the tracker), and the figures leave the repeat out.

    >>> shard = RankShard(range(5), rank=1, world=2)
    >>> list(shard), shard.real, shard.total
    ([1, 3, 4], 2, 5)
    """

    def __init__(self, dataset: Iterable, rank: int, world: int):
        self.dataset, self.rank, self.world = dataset, rank, world
        self.real: Optional[int] = None  # this rank's real items in the pass that ended, None while it runs
        self.total: Optional[int] = None  # the stream's items in that pass
        self.per_rank: Optional[int] = None  # items given to each rank, the repeat included

    def __iter__(self) -> Iterator[Any]:
        self.real = self.total = self.per_rank = None
        kept, n, group_first = 0, 0, None
        for n, item in enumerate(self.dataset, 1):
            position = (n - 1) % self.world
            if position == 0:
                group_first = item
            if position == self.rank:
                kept += 1
                yield item
        self.total, self.real = n, kept
        self.per_rank = -(-n // self.world)
        if kept < self.per_rank:  # the last group ended before this rank's item: repeat its first
            yield group_first

    def live_real(self) -> "LiveCount":
        return LiveCount(self)


class LiveCount:
    """``RankShard.real`` for ``ShardTracker``: unbounded while the stream runs, exact once it ended."""

    def __init__(self, shard: RankShard):
        self.shard = shard

    def __sub__(self, seen: int) -> int:
        real = self.shard.real
        return (real if real is not None else 2 ** 62) - seen


def _shard_stream(ctx: Any, loader: DataLoader, name: str) -> DataLoader:
    """``loader`` over ``RankShard`` of its IterableDataset, or an error where the split cannot be exact."""
    if loader.num_workers > 0:
        raise ValueError(
            f"{name} reads an IterableDataset with num_workers={loader.num_workers}; under torchrun torchfit splits "
            "the stream across ranks item by item, and with workers each worker would split its own part of "
            "it, so which rank has the last items (and the epoch figures) could not be exact. Use num_workers=0")
    if loader.batch_size is None:
        raise ValueError(
            f"{name} has batch_size=None: its IterableDataset yields whole batches, which torchfit cannot split "
            "across ranks sample by sample. Yield samples and let the DataLoader batch them (batch_size=...)")
    if isinstance(loader.dataset, RankShard):
        return loader
    if getattr(loader.dataset, "_distributed", None) is not None:  # datasets' mark of split_dataset_by_node
        raise ValueError(
            f"{name}'s stream is already split across ranks (datasets.distributed.split_dataset_by_node); torchfit "
            "splits a stream itself, item by item, so that every rank takes the same number of steps and sees "
            "each sample once: pass the whole stream")
    return DataLoader(RankShard(loader.dataset, ctx.rank, ctx.world_size), batch_size=loader.batch_size,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      timeout=loader.timeout, pin_memory_device=loader.pin_memory_device)
