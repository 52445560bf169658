"""Noticing a torchrun launch and joining its process group.

Owns reading torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), picking each rank's device, initialising the
process group when the user has not (and tearing down one torchfit made), and
the ``rank`` / ``world_size`` / ``is_main_process`` questions. It knows nothing
about models, loaders or figures.
"""
from __future__ import annotations

import atexit
import dataclasses
import datetime
import os
import sys
from typing import Any, Dict, Mapping, Optional

import torch


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
        _check_not_a_bare_slurm_task(env)
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


def _check_not_a_bare_slurm_task(env: Mapping[str, str]) -> None:
    """One of several Slurm tasks without torchrun's variables would train alone on the whole data,
    as many times as there are tasks: refuse, with the recipe."""
    tasks, procid = env.get("SLURM_NTASKS", ""), env.get("SLURM_PROCID")
    if procid is None or not tasks.isdigit() or int(tasks) <= 1:
        return
    raise RuntimeError(
        f"this process is Slurm task {procid} of SLURM_NTASKS={tasks}, but torchrun's RANK/WORLD_SIZE are not set, "
        f"so each of the {tasks} tasks would train alone on all the data. Start one torchrun per node: "
        "srun --ntasks-per-node=1 torchrun --nnodes=$SLURM_NNODES --nproc_per_node=<GPUs per node> "
        "--rdzv-backend=c10d --rdzv-endpoint=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1):29500 "
        "--rdzv-id=$SLURM_JOB_ID train.py (see docs/distributed.md, 'Slurm'); for independent single-process runs, "
        "launch each with srun --ntasks=1"
    )


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

