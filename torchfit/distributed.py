"""The same script under ``torchrun``: process group, DDP, per-rank loaders, exact figures.

Owns: noticing a torchrun launch (its environment variables), initialising the
process group when the user has not, picking each rank's device, wrapping the
net in ``DistributedDataParallel`` for training, re-creating loaders with a
``DistributedSampler``, the reducer that metric ``sync`` calls (sum and
gather across ranks), keeping the samples the sampler pads out of the epoch
figures, agreeing on stops, and gathering ``predict`` outputs back into
dataset order. It leaves the batch loop to ``loop`` (there is no second loop
here), the metric maths to ``metrics`` and communication itself to
``torch.distributed``: nothing here talks to other processes except through
its collectives.

In a single process (no torchrun environment, no process group) nothing in
this module runs: ``context()`` returns ``None`` and the ``Run`` keeps its
single-process defaults.

How a fit runs under ``torchrun --nproc_per_node=N script.py``::

    compile(device=None)     -> cuda:LOCAL_RANK on a GPU machine, else cpu
    fit / evaluate / predict -> init_process_group (nccl on CUDA, gloo on CPU) once
    each rank: DataLoader(dataset, batch_size=b, sampler=DistributedSampler(...))
    training:  DDP(model.net) averages gradients; sampler.set_epoch(epoch) each epoch
    figures:   each rank counts its own samples (padding excluded), then sum / gather
    printing:  rank_zero_only callbacks (printer, writers) run on rank 0 only
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import os
import sys
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch import nn

from .callbacks import Callback, CallbackList
from .loop import StepResult, Tracker

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedContext",
    "LaunchInfo",
    "ShardTracker",
    "context",
    "init_process_group",
    "is_main_process",
    "launch_info",
    "local_device",
    "real_samples",
    "rank",
    "world_size",
]

#: How long a collective waits for the other ranks before it raises (instead of hanging).
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _initialized() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


# ------------------------------------------------------------------ the launch


@dataclasses.dataclass(frozen=True)
class LaunchInfo:
    """What torchrun (or any launcher using its variables) told this process."""

    rank: int
    world_size: int
    local_rank: Optional[int]
    local_world_size: Optional[int]
    master_addr: Optional[str]
    master_port: Optional[str]


def launch_info(environ: Optional[Mapping[str, str]] = None) -> Optional[LaunchInfo]:
    """The torchrun launch this process belongs to, or ``None`` for a plain ``python script.py``.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
    ``MASTER_ADDR`` and ``MASTER_PORT``. A half-set environment (``RANK``
    without ``WORLD_SIZE``, a non-number) is an error, not a silent single run.

    >>> launch_info({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
    ...              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}).rank
    1
    >>> launch_info({}) is None
    True
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    missing = [k for k in ("RANK", "WORLD_SIZE") if k not in env]
    if missing:
        raise RuntimeError(
            f"the environment sets {'WORLD_SIZE' if 'RANK' in missing else 'RANK'} but not {missing[0]}: "
            "launch the script with torchrun (python -m torch.distributed.run --nproc_per_node=N script.py), "
            "which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, or unset it for a single process"
        )

    def number(key: str) -> Optional[int]:
        if key not in env:
            return None
        try:
            value = int(env[key])
        except ValueError:
            raise RuntimeError(f"environment variable {key}={env[key]!r} is not an integer; torchrun sets it "
                               "to the process's number") from None
        if value < 0:
            raise RuntimeError(f"environment variable {key}={value} must be >= 0")
        return value

    world = number("WORLD_SIZE")
    rank_ = number("RANK")
    assert world is not None and rank_ is not None
    if world < 1 or rank_ >= world:
        raise RuntimeError(f"RANK={rank_} and WORLD_SIZE={world} do not fit together (0 <= RANK < WORLD_SIZE)")
    return LaunchInfo(rank_, world, number("LOCAL_RANK"), number("LOCAL_WORLD_SIZE"),
                      env.get("MASTER_ADDR"), env.get("MASTER_PORT"))


def local_device(device: Any = None, environ: Optional[Mapping[str, str]] = None) -> Any:
    """The device ``compile(device=...)`` should use on this rank.

    Under torchrun on a CUDA machine, ``None`` and ``"cuda"`` (no index) mean
    ``cuda:LOCAL_RANK``: one GPU per process. Anything else, and every
    single-process call, is returned unchanged for ``resolve_device`` to check.

    >>> local_device("cpu")
    'cpu'
    """
    info = launch_info(environ)
    if info is None or info.world_size == 1 or not torch.cuda.is_available():
        return device
    if device is None:
        pass
    elif isinstance(device, (str, torch.device)):
        try:
            asked = torch.device(device)
        except (RuntimeError, TypeError):
            return device  # resolve_device names the problem
        if asked.type != "cuda" or asked.index is not None:
            return device
    else:
        return device
    if info.local_rank is None:
        raise RuntimeError(
            "launched with RANK/WORLD_SIZE but without LOCAL_RANK, so torchfit cannot tell which GPU is this "
            "process's: launch with torchrun, or pass compile(device='cuda:<index>') explicitly"
        )
    if info.local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK={info.local_rank} but this machine has {torch.cuda.device_count()} CUDA device(s): "
            "start at most one process per GPU (torchrun --nproc_per_node=<number of GPUs>)"
        )
    return torch.device("cuda", info.local_rank)


def init_process_group(
    device: Any = None,
    backend: Optional[str] = None,
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> bool:
    """Join the torchrun job's process group unless one is already up; returns whether one is up.

    ``fit``, ``evaluate`` and ``predict`` call this for you; call it yourself
    (or ``torch.distributed.init_process_group``) first to choose another
    backend or timeout. ``backend=None`` picks NCCL when ``device`` is CUDA and
    gloo otherwise. ``timeout`` bounds every collective, so a rank that dies or
    stops early turns into an error on the others instead of a hang. A group
    torchfit created is destroyed when the process exits cleanly.

    >>> # torchfit.distributed.init_process_group("cuda:0", timeout=datetime.timedelta(minutes=30))
    """
    if _initialized():
        return True
    info = launch_info()
    if info is None:
        return False
    dist = _dist()
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed, so it cannot run under torchrun")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"launched with RANK/WORLD_SIZE but {' and '.join(missing)} not set: launch with "
                           "torchrun, which sets them, or set them to rank 0's address and a free port")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs: Dict[str, Any] = {}
    if backend == "nccl":
        if dev.type != "cuda":
            raise ValueError(f"backend='nccl' needs the model on a CUDA device; it is on {dev}. Use backend='gloo'")
        if dev.index is not None:
            # NCCL binds one communicator per GPU: tell it which is this rank's up front.
            torch.cuda.set_device(dev)
            kwargs["device_id"] = dev
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout,
                            rank=info.rank, world_size=info.world_size, **kwargs)
    # Torn down explicitly on a normal exit: NCCL asks for it (and warns otherwise), and a gloo
    # group left to the interpreter's finalisation can abort the process ("terminate called
    # without an active exception") after the script succeeded.
    atexit.register(_destroy_after_clean_exit)
    return True


def _destroy_after_clean_exit() -> None:
    # Only on a clean exit: after an unhandled exception (sys.last_value is set) a collective
    # may still be pending, and tearing the group down under it could bury the real error.
    if _initialized() and getattr(sys, "last_value", None) is None:
        _dist().destroy_process_group()


def rank() -> int:
    """This process's rank: from the process group, else torchrun's ``RANK``, else 0."""
    if _initialized():
        return _dist().get_rank()
    info = launch_info()
    return info.rank if info is not None else 0


def world_size() -> int:
    """Number of processes: from the process group, else torchrun's ``WORLD_SIZE``, else 1."""
    if _initialized():
        return _dist().get_world_size()
    info = launch_info()
    return info.world_size if info is not None else 1


def is_main_process() -> bool:
    """Whether this is rank 0 (always true in a single process): guard your own prints and writes.

    >>> if is_main_process():
    ...     pass  # torch.save(model.net.state_dict(), "net.pt")
    """
    return rank() == 0


def context(device: torch.device) -> Optional["DistributedContext"]:
    """The distributed state of a fit/evaluate/predict on ``device``, or ``None`` in a single process.

    Called by ``Model._new_run``. One process (no torchrun variables, no group,
    or a world of 1) gets ``None`` and runs exactly as without this module.
    """
    if _initialized():
        if _dist().get_world_size() == 1:
            return None
    else:
        info = launch_info()
        if info is None or info.world_size == 1:
            return None
        init_process_group(device)
    return DistributedContext(device)


# ------------------------------------------------------------- the reducer


class DistributedContext:
    """One rank's view of a multi-process run; also the ``reducer`` metric ``sync`` calls.

    ``sum`` all-reduces a tensor; ``gather`` all-gathers tensors whose first
    dimension may differ between ranks and concatenates them in rank order.
    Collectives run on the model's CUDA device under NCCL, on CPU otherwise.
    """

    def __init__(self, device: torch.device):
        dist = _dist()
        self.dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        self.backend = str(dist.get_backend())
        self.device = device
        if device.type == "cuda" and "nccl" in self.backend:
            self.comm_device = device
        elif "nccl" in self.backend and "gloo" not in self.backend:
            raise RuntimeError(
                f"the process group uses {self.backend}, which moves CUDA tensors only, but the model is on {device}: "
                "compile(device='cuda') or initialise the group with backend='gloo'"
            )
        else:
            self.comm_device = torch.device("cpu")  # gloo (and mpi) move CPU tensors everywhere

    # Reducer protocol (torchfit.metrics.Reducer)
    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.detach().to(self.comm_device, copy=True)
        self.dist.all_reduce(out, op=self.dist.ReduceOp.SUM)
        return out

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        x = tensor.detach().to(self.comm_device)
        is_bool = x.dtype == torch.bool
        if is_bool:  # not every backend moves bool tensors
            x = x.to(torch.uint8)
        x = x.contiguous()
        lengths = torch.tensor([x.shape[0] if x.dim() else 1], dtype=torch.int64, device=self.comm_device)
        all_lengths = [torch.zeros_like(lengths) for _ in range(self.world_size)]
        self.dist.all_gather(all_lengths, lengths)
        sizes = [int(n) for n in torch.cat(all_lengths).tolist()]
        if x.dim() == 0:
            x = x.reshape(1)
        longest = max(sizes)
        if x.shape[0] < longest:
            pad = torch.zeros((longest - x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
            x = torch.cat([x, pad])
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        self.dist.all_gather(parts, x)
        out = torch.cat([part[:n] for part, n in zip(parts, sizes)])
        return out.bool() if is_bool else out

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
        return bool(self.sum(torch.tensor([int(bool(flag))], dtype=torch.int64)).item())

    def barrier(self) -> None:
        """Wait until every rank got here (a one-element all-reduce, on any backend)."""
        self.sum(torch.zeros(1, dtype=torch.int64))

    def broadcast_state(self, net: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        for t in list(net.parameters()) + list(net.buffers()):
            self._broadcast(t)

    def broadcast_buffers(self, net: nn.Module) -> None:
        for t in net.buffers():
            self._broadcast(t)

    def _broadcast(self, t: torch.Tensor) -> None:
        with torch.no_grad():
            if t.device == self.comm_device:
                self.dist.broadcast(t.data, src=0)
            else:
                x = t.data.to(self.comm_device)
                self.dist.broadcast(x, src=0)
                t.data.copy_(x)

    def broadcast_int(self, value: int) -> int:
        x = torch.tensor([value], dtype=torch.int64, device=self.comm_device)
        self.dist.broadcast(x, src=0)
        return int(x.item())

    # ----------------------------------------------------------- loaders
    def shard(self, loader: Iterable, name: str, purpose: str = "train") -> Any:
        """This rank's loader: ``loader`` re-created around a ``DistributedSampler``.

        Keeps the batch size (per rank), shuffling, ``drop_last``, workers,
        collate function, pin_memory, worker init and generator. A loader that
        already has a ``DistributedSampler`` is used as it is. ``purpose`` is
        ``"train"``, ``"eval"`` or ``"predict"`` (predict never shuffles and
        never drops).
        """
        from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, IterableDataset,
                                      RandomSampler, SequentialSampler)

        fix = ("shard it yourself: build the DataLoader with sampler=DistributedSampler(dataset) and "
               "torchfit uses it as it is")
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f"{name} is a {type(loader).__name__}; under torchrun torchfit needs a torch DataLoader over a "
                "map-style Dataset so that it can give each rank its own part of the data (every rank would "
                "otherwise train on, and count, the whole dataset). Wrap it: DataLoader(dataset, batch_size=...)"
            )
        if isinstance(loader.dataset, IterableDataset):
            raise TypeError(
                f"{name} iterates an IterableDataset, which a DistributedSampler cannot split across ranks; "
                "use a map-style Dataset (with __len__ and __getitem__)"
            )
        sampler = loader.sampler
        if isinstance(sampler, DistributedSampler):
            if sampler.num_replicas != self.world_size or sampler.rank != self.rank:
                raise ValueError(
                    f"{name}'s DistributedSampler has num_replicas={sampler.num_replicas}, rank={sampler.rank} but "
                    f"this process is rank {self.rank} of {self.world_size}; build it with DistributedSampler(dataset)"
                )
            if purpose == "predict" and (sampler.shuffle or sampler.drop_last):
                raise ValueError(f"{name}'s DistributedSampler shuffles or drops samples; predict needs "
                                 "shuffle=False, drop_last=False to return every sample in dataset order")
            return loader
        if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
            raise ValueError(
                f"{name} uses a custom batch_sampler ({type(loader.batch_sampler).__name__}), which torchfit cannot "
                f"split across ranks without changing it; {fix}"
            )
        if isinstance(sampler, RandomSampler):
            if sampler.replacement or sampler._num_samples is not None:
                raise ValueError(f"{name} samples with replacement or a fixed num_samples, which DistributedSampler "
                                 f"cannot reproduce; {fix}")
            shuffle = True
        elif isinstance(sampler, SequentialSampler):
            shuffle = False
        else:
            raise ValueError(
                f"{name} uses a custom sampler ({type(sampler).__name__}); under torchrun torchfit splits the data "
                f"with DistributedSampler, which would replace it; {fix}"
            )
        drop_last = bool(loader.drop_last)
        if purpose == "predict":
            if drop_last:
                raise ValueError(f"{name} has drop_last=True; predict returns every sample, so pass drop_last=False")
            shuffle = False
        n = len(loader.dataset)  # type: ignore[arg-type]
        if drop_last and n < self.world_size:
            raise ValueError(
                f"{name} has {n} sample(s), fewer than the {self.world_size} processes, and drop_last=True: every "
                "rank would get no data. Use drop_last=False or fewer processes"
            )
        seed = 0
        if shuffle:
            generator = sampler.generator if sampler.generator is not None else loader.generator
            if generator is not None:
                seed = generator.initial_seed()
            else:
                # As a single process draws its shuffle from torch's global RNG, so do we, once per
                # fit; rank 0's draw is used everywhere so that the shards fit together.
                seed = int(torch.empty((), dtype=torch.int64).random_().item())
            seed = self.broadcast_int(seed % (2 ** 62))
        dist_sampler = DistributedSampler(loader.dataset, num_replicas=self.world_size, rank=self.rank,
                                          shuffle=shuffle, seed=seed, drop_last=drop_last)
        kwargs: Dict[str, Any] = dict(
            batch_size=loader.batch_size, sampler=dist_sampler, num_workers=loader.num_workers,
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

    # ---------------------------------------------------------- the verbs
    def shard_fit_loaders(self, dl_train: Iterable, dl_val: Optional[Iterable]) -> Tuple[Any, Any]:
        """This rank's training and validation loaders (``Model.fit`` calls this first, so that
        everything fit derives from them, the default ``log_step_freq`` and the step count
        callbacks see, is per rank)."""
        dl_train = self.shard(dl_train, "dl_train", "train")
        if dl_val is not None:
            dl_val = self.shard(dl_val, "dl_val", "eval")
        return dl_train, dl_val

    def prepare_fit(self, model: Any, run: Any, dl_train: Any, dl_val: Any,
                    train_tracker: Tracker, val_tracker: Tracker) -> Tuple[Tracker, Tracker]:
        """Set up ``run`` for DDP training over the sharded loaders; returns the trackers to use.

        Called by ``Model.fit`` once it built the run, so it only adds: the
        DDP-wrapped net as ``run.train_net`` (wrapping the ``torch.compile``d net
        when ``compile(jit_compile=...)`` asked for it), ``no_sync`` between
        accumulation boundaries, shard-aware trackers and one infrastructure
        callback (``set_epoch``, buffer broadcast, stop agreement) at the end of
        the list.
        """
        net = model.net
        if isinstance(net, nn.parallel.DistributedDataParallel):
            raise TypeError("model.net is already a DistributedDataParallel; pass the plain module to "
                            "torchfit.Model(net): torchfit wraps it in DDP itself under torchrun")
        # Every rank starts from rank 0's weights: DDP's constructor copies them, else we do.
        ddp = self._ddp(model)
        if ddp is None:
            self.broadcast_state(net)
        else:
            run.train_net = ddp
            if run.accum_steps > 1:
                run.grad_sync = lambda is_boundary: contextlib.nullcontext() if is_boundary else ddp.no_sync()
        samplers = [getattr(dl, "sampler", None) for dl in (dl_train, dl_val)]
        extra = _DistributedSync(self, [s for s in samplers if hasattr(s, "set_epoch")])
        run.callbacks = CallbackList(list(run.callbacks) + [extra], model, is_main_process=self.is_main)
        return (self.tracker(model, run, train_tracker, dl_train, training=True),
                self.tracker(model, run, val_tracker, dl_val, training=False) if dl_val is not None else val_tracker)

    def prepare_evaluate(self, model: Any, run: Any, dl: Iterable, tracker: Tracker) -> Tuple[Any, Tracker]:
        """This rank's evaluate loader and a tracker whose figures cover the whole dataset once."""
        dl = self.shard(dl, "dl", "eval")
        return dl, self.tracker(model, run, tracker, dl, training=False)

    def predict(self, model: Any, dl: Iterable, run: Any) -> Any:
        """Predict this rank's shard, then gather: every rank returns the whole dataset's outputs in order."""
        from .loop import predict_loop

        dl = self.shard(dl, "dl", "predict")
        out = predict_loop(model, dl, run)
        sampler = dl.sampler
        n, per_rank = len(sampler.dataset), sampler.num_samples
        world = self.world_size

        def in_order(t: torch.Tensor) -> torch.Tensor:
            if t.dim() == 0 or t.shape[0] != per_rank:
                raise ValueError(
                    f"predict under torchrun needs outputs with one row per sample ({per_rank} on this rank); "
                    f"predict_step gave a tensor of shape {tuple(t.shape)}"
                )
            every = self.gather(t).to("cpu")
            # rank r's i-th sample is dataset item r + i * world (DistributedSampler without shuffle)
            rest = tuple(every.shape[1:])
            return every.reshape((world, per_rank) + rest).transpose(0, 1).reshape((world * per_rank,) + rest)[:n]

        return _map_tensors(in_order, out)

    def tracker(self, model: Any, run: Any, tracker: Tracker, loader: Any, training: bool) -> Tracker:
        """``tracker`` turned into a ``ShardTracker`` for this rank's part of ``loader``."""
        from .model import Model

        real = real_samples(getattr(loader, "sampler", None))
        default = type(model).train_step is Model.train_step if training else type(model).eval_step is Model.eval_step
        recompute: Optional[Callable[[Any, Any], torch.Tensor]] = None
        if default:
            def recompute(preds: Any, targets: Any) -> torch.Tensor:
                with torch.no_grad(), run.precision.autocast():
                    return model.compute_loss(preds, targets).detach()
        return ShardTracker.from_tracker(tracker, self, real, recompute)

    def _ddp(self, model: Any) -> Optional[nn.Module]:
        """A DDP wrapper of ``model.net`` for one fit, referenced only by that fit's ``Run``.

        It lives as long as the fit: its autograd hooks on the parameters go
        with it, so the next fit's wrapper is the only one reducing gradients,
        and none is left for the interpreter's exit to tear down after the
        process group (a gloo job can abort there).
        """
        net = model.net
        if not any(p.requires_grad for p in net.parameters()):
            return None  # DDP refuses modules with nothing to train; there are no gradients to average
        # With jit_compile, DDP wraps the model's cached torch.compile wrapper (compiled once,
        # reused by every fit). torch.compile(DDP(net)) would overlap the all-reduce with the
        # backward pass, but the compiled code would keep each fit's DDP (and its buckets) alive.
        module = model._training_net() if hasattr(model, "_training_net") else net
        dev = model.device
        return nn.parallel.DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)


def real_samples(sampler: Any) -> Optional[int]:
    """How many of this rank's samples are real (not padding), or ``None`` when nothing is padded.

    ``DistributedSampler(drop_last=False)`` pads the index list to a multiple of
    the world size by repeating its start; the padding lands at the end of the
    list, so a rank's last ``num_samples - real`` samples are repeats.

    >>> from torch.utils.data import DistributedSampler
    >>> real_samples(DistributedSampler(range(5), num_replicas=2, rank=1, shuffle=False))
    2
    """
    from torch.utils.data import DistributedSampler

    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    n = len(sampler.dataset)  # type: ignore[arg-type]
    return len(range(sampler.rank, n, sampler.num_replicas))


# ------------------------------------------------------- exact epoch figures


class ShardTracker(Tracker):
    """A ``Tracker`` for one rank's shard of a ``DistributedSampler``.

    Two differences from the single-process tracker:

    * Samples past the rank's ``real`` count are the sampler's padding: they
      still go through the step (so every rank takes the same number of DDP
      steps) but are trimmed from the figures. The last batch's preds and
      targets are cut to the real rows; its loss is recomputed on them with
      ``model.compute_loss`` when the default step made it (a custom step's
      loss and ``logs`` are weighted by the real rows instead). A rank whose
      shard is all padding (a dataset smaller than the world) updates its
      metrics with empty tensors so that their states still have a shape to
      sync.
    * ``compute`` first syncs across ranks, so the figures at logging points
      are the global running figures and every rank sees the same numbers
      (and takes the same decisions, e.g. stopping on a non-finite loss).
      ``compute`` is therefore a collective: every rank calls it at the same
      points, as the loop does.
    """

    _reducer: Any
    _real: Optional[int]
    _recompute: Optional[Callable[[Any, Any], torch.Tensor]]
    _seen: int
    _synced: bool

    @classmethod
    def from_tracker(cls, tracker: Tracker, reducer: Any, real: Optional[int],
                     recompute: Optional[Callable[[Any, Any], torch.Tensor]] = None) -> "ShardTracker":
        new = cls.__new__(cls)
        new.__dict__.update(tracker.__dict__)  # whatever the Tracker holds, kept as is
        new._reducer = reducer
        new._real = real
        new._recompute = recompute
        new._seen = 0
        new._synced = False
        return new

    def reset(self) -> None:
        super().reset()
        self._seen = 0
        self._synced = False

    def update(self, out: StepResult) -> None:
        self._synced = False
        n = out.batch_size
        if self._real is None:
            super().update(out)
            return
        keep = max(0, min(n, self._real - self._seen))
        self._seen += n
        if keep == n:
            super().update(out)
        elif keep > 0:
            preds, targets = _take(out.preds, keep, n), _take(out.targets, keep, n)
            loss = out.loss
            if loss is not None and self._recompute is not None and out.preds is not None:
                loss = self._recompute(preds, targets)
            super().update(out._replace(loss=loss, preds=preds, targets=targets, batch_size=keep))
        else:
            self._update_nothing(out, n)

    def _update_nothing(self, out: StepResult, n: int) -> None:
        # Give every state the shape the other ranks' states have, with zero weight.
        from .errors import MetricError
        from .metrics import BatchMetric, Mean

        if out.loss is not None:
            self.loss_seen = True
        for name in out.logs or ():
            self.extra.setdefault(name, Mean())
        if out.preds is None or not self.metrics:
            return
        preds, targets = _take(out.preds, 0, n), _take(out.targets, 0, n)
        for name, metric in self.metrics.items():
            if isinstance(metric, BatchMetric):
                continue  # a plain function of an empty batch is undefined; its weight would be 0
            try:
                metric.update(preds, targets)
            except Exception as exc:
                raise MetricError(
                    f"metric {self.prefix + name!r} raised {type(exc).__name__} on an empty batch: {exc}. Under "
                    "torchrun a rank whose shard is only padding (a dataset smaller than the number of "
                    "processes) updates its metrics with zero rows; make the metric accept them"
                ) from exc

    def sync(self, reducer: Any) -> None:
        if not self._synced:
            super().sync(reducer)
            self._synced = True

    def compute(self) -> Dict[str, float]:
        self.sync(self._reducer)
        return super().compute()


def _take(obj: Any, keep: int, n: int) -> Any:
    """The first ``keep`` rows of every tensor in ``obj`` whose first dimension is the batch (``n``)."""
    if isinstance(obj, torch.Tensor):
        return obj[:keep] if obj.dim() > 0 and obj.shape[0] == n else obj
    if isinstance(obj, dict):
        return type(obj)((k, _take(v, keep, n)) for k, v in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_take(v, keep, n) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_take(v, keep, n) for v in obj)
    return obj


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _map_tensors(fn, v)) for k, v in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_map_tensors(fn, v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(fn, v) for v in obj)
    return obj


# ------------------------------------------------------ the infrastructure


class _DistributedSync(Callback):
    """Keeps the ranks in step during a fit; always the last callback, on every rank.

    * ``on_epoch_begin``: ``set_epoch`` on the samplers, so shuffling differs per
      epoch and agrees across ranks.
    * at logging points and epoch ends: ``model.stop_training`` becomes true on
      every rank if it is true on any (a rank-0-only callback may have set it),
      so no rank leaves the loop alone and hangs the others.
    * ``on_test_begin`` / ``on_train_end``: rank 0's buffers (BatchNorm running
      statistics, which each rank updated with its last batch) go to every rank,
      so validation and saved weights agree.
    * ``on_train_end``: a barrier, so that fit returns on no rank before rank 0
      finished what it writes at epoch ends.
    """

    def __init__(self, ctx: DistributedContext, samplers: Iterable[Any]):
        self.ctx = ctx
        self.samplers = list(samplers)

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        if logs:  # a logging point: every rank is here at the same step
            self._agree_on_stop()

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._agree_on_stop()

    def on_test_begin(self, logs: dict) -> None:
        self.ctx.broadcast_buffers(self.model.net)

    def on_train_end(self, logs: dict) -> None:
        self.ctx.broadcast_buffers(self.model.net)
        # When fit returns, rank 0's files (checkpoints written at epoch ends) are complete on
        # every rank, so the script after fit may load them anywhere.
        self.ctx.barrier()

    def _agree_on_stop(self) -> None:
        self.model.stop_training = self.ctx.any(self.model.stop_training)
