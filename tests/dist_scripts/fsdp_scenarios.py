"""FSDP scenarios that tests/test_distributed_fsdp.py runs under torchrun (2 processes, gloo, CPU).

Usage: python -m torch.distributed.run --nproc_per_node=2 fsdp_scenarios.py MODE OUT_DIR
``main``: the same fits under DDP and FSDP, accumulation, predict/evaluate, a single-file and a
sharded checkpoint after one epoch, mixed precision. ``resume``: a fresh launch that resumes both
checkpoints to epoch 2. Each rank saves what it saw to OUT_DIR/<mode>-rank<r>.pt.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenarios as sc  # noqa: E402

import torchfit  # noqa: E402
from torchfit import checkpoint, distributed  # noqa: E402
from torchfit.distributed import FSDP  # noqa: E402

METRICS = ["accuracy", "auc"]


def loaders():
    dl_train = DataLoader(sc.data(70, 1), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    return dl_train, DataLoader(sc.data(30, 2), batch_size=8)


def model(strategy=None, seed: int = 0) -> torchfit.Model:
    net = sc.mlp(seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    return torchfit.Model(net).compile(nn.CrossEntropyLoss(), opt, METRICS, device="cpu", strategy=strategy)


def fitted(strategy, epochs: int = 2, **kwargs):
    m = model(strategy)
    history = m.fit(epochs, *loaders(), verbose=0, **kwargs)
    return m, history.to_dict("records")


def whole(m):
    net, opt = checkpoint.full_state(m, m._strategy())  # a collective under FSDP
    return {"net": net, "optimizer": opt}


def main(out: str) -> dict:
    r = {}
    ddp, r["ddp_history"] = fitted(None)
    r["ddp_state"] = whole(ddp)
    fsdp_options = FSDP(shard=nn.Linear)
    fsdp, r["fsdp_history"] = fitted(fsdp_options)
    r["fsdp_state"] = whole(fsdp)
    r["sharded"] = distributed.fsdp.is_sharded(fsdp.net)
    r["state_dict_types"] = sorted({type(v).__name__ for v in fsdp.net.state_dict().values()})
    r["local_rows"] = fsdp.net[0].weight.to_local().shape[0]
    dl_val = loaders()[1]
    r["ddp_eval"], r["fsdp_eval"] = dict(ddp.evaluate(dl_val)), dict(fsdp.evaluate(dl_val))
    r["ddp_predict"], r["fsdp_predict"] = ddp.predict(dl_val), fsdp.predict(dl_val)
    fsdp.save_checkpoint(os.path.join(out, "fsdp.pt"))  # every rank calls it; rank 0 writes
    # a second fit on the sharded net continues (the optimizer already holds the shards)
    fsdp.fit(1, *loaders(), verbose=0)
    r["fsdp_epoch_after_second_fit"] = fsdp.epoch

    acc_ddp, _ = fitted(None, grad_accum_steps=2)
    acc_fsdp, r["acc_fsdp_history"] = fitted("fsdp", grad_accum_steps=2)
    r["acc_ddp"], r["acc_fsdp"] = whole(acc_ddp)["net"], whole(acc_fsdp)["net"]
    # mid-epoch checkpoints every 2 batches (5 an epoch on each rank, windows of 2): at windows' ends they
    # keep every rank's position; inside a window (e2-b1) FSDP holds the gradients: no position
    fitted("fsdp", grad_accum_steps=2, callbacks=[mid_epoch_saver(out, "mid")])

    one, _ = fitted("fsdp", epochs=1)
    r["param_types_after_fit"] = sorted({type(p).__name__ for p in one.net.parameters()})
    one.predict(loaders()[1])
    r["param_types_after_predict"] = sorted({type(p).__name__ for p in one.net.parameters()})
    one.save_checkpoint(os.path.join(out, "one.pt"))
    distributed.save_sharded(one, os.path.join(out, "one_dcp"))
    r["one_state"] = whole(one)
    straight, _ = fitted("fsdp", epochs=2)
    r["straight"] = whole(straight)
    # each rank built its net with another seed: rank 0's weights are the ones sharded and trained
    seeded = model("fsdp", seed=distributed.rank())
    seeded.fit(2, *loaders(), verbose=0)
    r["rank_seeded"] = whole(seeded)
    for name, path in (("reload_file", "one.pt"), ("reload_dcp", "one_dcp")):  # into a net already sharded
        straight.load_checkpoint(os.path.join(out, path))
        straight.fit(1, *loaders(), verbose=0)
        r[name] = whole(straight)

    seen = []
    mp = model(FSDP(mixed_precision="bf16"))
    mp.net[0].register_forward_pre_hook(lambda mod, args: seen.append((mod.weight.dtype, args[0].dtype)))
    r["bf16_history"] = mp.fit(1, *loaders(), verbose=0).to_dict("records")
    r["bf16_seen"] = sorted({str(d) for pair in seen for d in pair})
    r["bf16_param_dtype"] = str(mp.net[0].weight.dtype)
    return r


def mid_epoch_saver(out: str, stem: str):
    from torchfit.callbacks import ModelCheckpoint

    return ModelCheckpoint(os.path.join(out, stem + "-e{epoch}-b{batch}.pt"), save_freq=2)


def resume(out: str) -> dict:
    r = {}
    m = model("fsdp", seed=7)
    r["mid_history"] = m.fit(2, *loaders(), verbose=0, grad_accum_steps=2, callbacks=[mid_epoch_saver(out, "again")],
                             resume_from=os.path.join(out, "mid-e1-b4.pt")).to_dict("records")
    r["mid"] = whole(m)
    for name, path in (("file", "one.pt"), ("dcp", "one_dcp")):
        m = model("fsdp", seed=7)  # other initial weights: everything must come from the checkpoint
        r[f"{name}_history"] = m.fit(2, *loaders(), verbose=0,
                                     resume_from=os.path.join(out, path)).to_dict("records")
        r[name] = whole(m)
        r[f"{name}_epoch"] = m.epoch
    return r


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out = sys.argv[1], sys.argv[2]
    results = {"main": main, "resume": resume}[mode](out)
    torch.save(results, os.path.join(out, f"{mode}-rank{distributed.rank()}.pt"))
