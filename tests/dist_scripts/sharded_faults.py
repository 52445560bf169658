"""Damaged sharded checkpoints under torchrun, for tests/test_faults_files.py (2 processes, gloo, CPU).

Usage: python -m torch.distributed.run --nproc_per_node=2 sharded_faults.py OUT_DIR
Both ranks fit an FSDP model for one epoch and write a sharded directory (each rank its shard).
Rank 0 then damages a copy in three ways (rank 1's shard missing, cut short, a byte flipped);
every rank loads each copy into its own sharded model and records the error and whether its
shard of the weights and the optimizer state stayed as they were. A rank that went on into DCP's
collectives while the other refused would hang: the test's timeout catches that. Each rank saves
what it saw to OUT_DIR/rank<r>.pt.
"""
from __future__ import annotations

import os
import shutil
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fsdp_scenarios as fs  # noqa: E402

from torchfit import distributed  # noqa: E402
from torchfit.distributed import FSDP  # noqa: E402
from torchfit.errors import CheckpointError  # noqa: E402


def local(model) -> dict:
    """This rank's rows of every weight and of the optimizer's state, copied."""
    net = {k: v.to_local().clone() for k, v in model.net.state_dict().items()}
    params = [p for g in model.optimizer.param_groups for p in g["params"]]
    opt = {(i, k): v.to_local().clone() if hasattr(v, "to_local") else v.clone()
           for i, p in enumerate(params) for k, v in model.optimizer.state.get(p, {}).items()}
    return {"net": net, "opt": opt}


def same(a: dict, b: dict) -> bool:
    return (a["net"].keys() == b["net"].keys() and all(torch.equal(a["net"][k], b["net"][k]) for k in a["net"])
            and a["opt"].keys() == b["opt"].keys() and all(torch.equal(a["opt"][k], b["opt"][k]) for k in a["opt"]))


def damage(directory: str, how: str) -> None:
    shard = os.path.join(directory, "__1_0.distcp")
    if how == "missing":
        os.remove(shard)
        return
    raw = bytearray(open(shard, "rb").read())
    if how == "cut":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 3] ^= 0x10
    open(shard, "wb").write(bytes(raw))


def main(out: str) -> dict:
    rank = distributed.rank()
    source = fs.model(FSDP())
    source.fit(1, *fs.loaders(), verbose=0)
    good = os.path.join(out, "good")
    distributed.save_sharded(source, good)
    seen = {}
    for how in ("missing", "cut", "flipped"):
        target = os.path.join(out, how)
        if rank == 0:
            shutil.copytree(good, target)
            damage(target, how)
        dist.barrier()
        model = fs.model(FSDP(), seed=7)
        model.fit(1, *fs.loaders(), verbose=0)  # sharded, with optimizer state of its own
        before = local(model)
        try:
            model.load_checkpoint(target)
            seen[how] = {"error": None}
        except CheckpointError as exc:
            seen[how] = {"error": str(exc)}
        seen[how]["unchanged"] = same(before, local(model))
        dist.barrier()
    model = fs.model(FSDP(), seed=7)
    model.fit(1, *fs.loaders(), verbose=0)
    model.load_checkpoint(good)
    seen["good_equal"] = same(local(source), local(model))
    return seen


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = main(sys.argv[1])
    torch.save(result, os.path.join(sys.argv[1], f"rank{distributed.rank()}.pt"))
