"""One rank's view of a multi-process run: the collectives torchfit uses.

Owns ``DistributedContext`` (sum, gather of ragged tensors, any, barrier,
broadcasts), which is also the ``Reducer`` metric ``sync`` is handed, and
``context(device)``: ``None`` in a single process, so nothing distributed runs
there. Collectives run on the model's CUDA device under NCCL, on CPU otherwise.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .launch import _dist, _initialized, init_process_group, launch_info

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

