"""torchfit under torchrun: the same script on 2 processes (gloo, CPU) gives the numbers one
process gives. The multi-process tests launch tests/dist_scripts/scenarios.py with
``python -m torch.distributed.run`` (two launches in all); the rest test the pieces in-process."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from torchfit import distributed, runs
from torchfit.loop import StepResult
from torchfit.metrics import Tracker
from torchfit.metrics import resolve_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "dist_scripts", "scenarios.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
import scenarios as sc  # noqa: E402  (the builders the launched script uses)
import conftest  # noqa: E402


def torchrun(mode: str, out_dir, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    return conftest.torchrun(SCRIPT, mode, out_dir, nproc=nproc, timeout=timeout)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One torchrun launch of every scenario; each rank's results plus the captured output."""
    out = tmp_path_factory.mktemp("ddp")
    torch.save(sc.mlp(seed=0).state_dict(), out / "init.pt")  # written by one process, loaded under DDP
    proc = torchrun("main", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return {"ranks": ranks, "stdout": proc.stdout, "dir": out}


def assert_same_state(a, b, exact=False):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def assert_same_logs(a, b, keys=None):
    keys = keys if keys is not None else a.keys()
    assert set(keys) <= set(b), (sorted(keys), sorted(b))
    for k in keys:
        if isinstance(a[k], float) and math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k


# --------------------------------------------------------------- launched


@pytest.mark.slow
def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b(launched):
    r0, r1 = launched["ranks"]
    net = sc.mlp(seed=0)
    model = sc.compiled(net)
    steps = []
    history = model.fit(3, DataLoader(sc.data(64, 1), batch_size=16), DataLoader(sc.data(30, 2), batch_size=10),
                        verbose=0, log_step_freq=2, callbacks=[sc.step_recorder(steps)])
    assert_same_state(net.state_dict(), r0["parity"]["state"])
    ref = history.to_dict("records")
    assert len(r0["parity"]["history"]) == 3
    for mine, theirs in zip(ref, r0["parity"]["history"]):
        assert_same_logs(mine, theirs)  # train and validation figures, AUC and F1 included
    # the running figures at logging points are global too (the printed step dicts)
    assert len(steps) == len(r0["parity"]["steps"]) == 6
    for mine, theirs in zip(steps, r0["parity"]["steps"]):
        assert_same_logs(mine, theirs)
    assert r0["parity"]["steps"] == r1["parity"]["steps"]
    # every rank got the same history and the same weights
    assert r0["parity"]["history"] == r1["parity"]["history"]
    assert_same_state(r0["parity"]["state"], r1["parity"]["state"], exact=True)


@pytest.mark.slow
def test_a_model_subclass_trains_under_torchrun_like_one_process(launched):
    r0, r1 = launched["ranks"]
    model = sc.SubclassNet(seed=17)
    model.compile(nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                  list(sc.METRICS), device="cpu")
    history = model.fit(2, DataLoader(sc.data(64, 1), batch_size=16), DataLoader(sc.data(30, 2), batch_size=10),
                        verbose=0)
    assert list(r0["subclass"]["state"]) == list(model.state_dict())  # the user's own key names
    assert_same_state(model.state_dict(), r0["subclass"]["state"])
    for mine, theirs in zip(history.to_dict("records"), r0["subclass"]["history"]):
        assert_same_logs(mine, theirs)
    assert torch.equal(r0["subclass"]["predict"], r1["subclass"]["predict"])  # every rank: the whole dataset
    assert r0["subclass"]["predict"].shape == (30, 3)


@pytest.mark.slow
def test_gradient_accumulation_under_ddp_equals_one_process(launched):
    net = sc.mlp(seed=5)
    sc.compiled(net).fit(2, DataLoader(sc.data(64, 1), batch_size=8), verbose=0, grad_accum_steps=2)
    assert_same_state(net.state_dict(), launched["ranks"][0]["accum"]["state"])


@pytest.mark.slow
def test_jit_compile_around_ddp_trains_like_one_process(launched):
    net = sc.mlp(seed=6)
    sc.compiled(net).fit(2, DataLoader(sc.data(64, 1), batch_size=16), verbose=0)
    assert_same_state(net.state_dict(), launched["ranks"][0]["jit"]["state"])


@pytest.mark.slow
def test_only_rank_zero_prints_the_epoch_table(launched):
    out = launched["stdout"]
    assert out.count("Start Training ...") == 1
    # the parity fit's three epochs (every other fit is verbose=0), each as 1-3 stacked tables at 80 columns
    assert out.count("| epoch |") in (3, 6, 9)
    assert out.count("Finished Training...") == 1
    steps = [line for line in out.splitlines() if line.startswith("{'step'")]
    assert len(steps) == 3 * 2  # 4 steps per rank and epoch, a step dict every 2, printed once
    assert out.count("Layer (type)") == 1  # model.summary
    assert out.count("Stopped training: non-finite loss") == 1


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank(launched):
    r0, r1 = launched["ranks"]
    # the running figures at the logging point are reduced, so both ranks see the inf and stop there
    assert r0["nan"] == r1["nan"] == {"history": [], "epoch": 0}
    assert "non-finite loss (nan) at epoch 1, step 2" in launched["stdout"]
    # TerminateOnNaN stops every rank at the offending batch, between logging points
    assert r0["terminate_on_nan"] == r1["terminate_on_nan"] == {"batches": [0, 1], "epoch": 0}  # 0-based batches
    assert launched["stdout"].count("TerminateOnNaN: the loss is not finite on another process at epoch 1, "
                                    "batch 2") == 1  # rank 0's own batch was fine; printed once


@pytest.mark.slow
def test_padding_samples_are_not_counted(launched):
    r0, r1 = launched["ranks"]
    u = r0["uneven"]
    # training figures of the one epoch: those of one process over the same 37 samples (the padded
    # repeat went through the last DDP step but is not counted)
    net = sc.mlp(seed=7)
    ref = sc.compiled(net).fit(1, DataLoader(sc.data(37, 3), batch_size=8), verbose=0).to_dict("records")[0]
    assert_same_logs(ref, u["history"][0], ["loss", "accuracy", "auc", "f1"])
    # validation, evaluate and predict with the DDP-trained weights: those of one process on 23 samples
    net = sc.mlp(seed=7)
    net.load_state_dict(u["state"])
    model = sc.compiled(net)
    val = model.evaluate(DataLoader(sc.data(23, 4), batch_size=7))
    assert_same_logs(val, u["history"][0], list(val))
    assert_same_logs(val, u["evaluate"])
    expected = net(sc.data(23, 4).tensors[0]).detach()
    for key in ("predict", "predict_x"):
        assert u[key].shape == (23, 3)
        torch.testing.assert_close(u[key], expected)  # all 23 rows in dataset order, no padding
        torch.testing.assert_close(r1["uneven"][key], u[key])  # and on every rank
    assert r0["uneven"]["evaluate"] == r1["uneven"]["evaluate"]


@pytest.mark.slow
def test_dataset_smaller_than_the_world(launched):
    r0, r1 = launched["ranks"]
    t = r0["tiny"]
    net = sc.mlp(seed=8)
    model = sc.compiled(net)
    ref = model.fit(2, DataLoader(sc.data(1, 5), batch_size=4), DataLoader(sc.data(1, 6), batch_size=4),
                    verbose=0).to_dict("records")
    for mine, theirs in zip(ref, t["history"]):
        assert_same_logs(mine, theirs)  # loss, accuracy, F1; AUC is nan with one class, as in one process
    # rank 1 trained on the padded repeat of the same sample, so the averaged gradient is the same
    assert_same_state(net.state_dict(), t["state"])
    assert t["predict"].shape == (1, 3)
    for a, b in zip(t["history"], r1["tiny"]["history"]):
        assert_same_logs(a, b)  # the same on every rank (nan included)
    # a regression net: R2 and MAE states from a rank holding only padding still sync
    reg = nn.Linear(4, 1)
    torch.manual_seed(0)
    nn.init.normal_(reg.weight)
    with torch.no_grad():
        pred = reg(sc.data(1, 5).tensors[0])
    row = t["regression"][0]
    assert row["mae"] == pytest.approx(abs(pred.item() - 1.0), rel=1e-5)
    assert row["loss"] == pytest.approx((pred.item() - 1.0) ** 2, rel=1e-5)
    assert math.isnan(row["r2"])  # one sample: undefined, as in one process


@pytest.mark.slow
def test_stops_agree_across_ranks(launched):
    r0, r1 = launched["ranks"]
    s0, s1 = r0["stops"], r1["stops"]
    # a rank-0-only callback stopping at the end of epoch 2: rank 1 stops too (else it would hang)
    assert s0["epoch_end"]["epoch"] == s1["epoch_end"]["epoch"] == 2
    # ... and inside epoch 2 at a logging point: epoch 2 is unfinished on both ranks
    assert s0["mid_epoch"]["epoch"] == s1["mid_epoch"]["epoch"] == 1
    assert len(s0["mid_epoch"]["history"]) == len(s1["mid_epoch"]["history"]) == 1
    # early stopping from the reduced logs
    assert s0["no_improvement"]["epoch"] == s1["no_improvement"]["epoch"] == 2
    # EarlyStopping (patience 1): epoch 2 does not improve by 10; the epoch-1 weights come back on every rank
    assert s0["early_stopping"]["epoch"] == s1["early_stopping"]["epoch"] == 2
    for name in s0:
        assert s0[name]["history"] == s1[name]["history"]
        # BatchNorm running statistics agree, so validation and checkpoints do too
        assert_same_state(s0[name]["state"], s1[name]["state"], exact=True)


@pytest.mark.slow
def test_ddp_wrappers_do_not_outlive_their_fit(launched):
    # a wrapper left to the interpreter's exit can abort a finished gloo job; and a stale one's
    # hooks would reduce gradients twice in the next fit
    assert [r["ddp_alive"] for r in launched["ranks"]] == [0, 0]


@pytest.mark.slow
def test_checkpoint_saved_under_ddp_loads_in_one_process(launched):
    state = torch.load(launched["dir"] / "net.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    net = sc.mlp(seed=99)
    net.load_state_dict(state, strict=True)
    parity = launched["ranks"][0]["parity"]
    assert_same_state(net.state_dict(), parity["state"], exact=True)
    # ModelCheckpoint ran on rank 0 only (one file per epoch, no clash) and its full checkpoint resumes
    # in a plain process with the DDP run's history
    ckpt = launched["dir"] / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch1.pt", "epoch2.pt", "epoch3.pt", "last.pt"]
    model = sc.compiled(sc.mlp(seed=98)).load_checkpoint(ckpt / "last.pt")
    assert model.epoch == 3
    assert_same_state(model.net.state_dict(), parity["state"], exact=True)
    assert model.history.to_dict("records") == parity["history"]
    with pytest.warns(RuntimeWarning, match="ModelCheckpoint"):  # its state is in the file, unused here
        model.fit(1, DataLoader(sc.data(64, 1), batch_size=16), verbose=0)  # and trains on
    assert model.epoch == 4


@pytest.mark.slow
def test_resume_under_torchrun_equals_training_straight(launched):
    for r in launched["ranks"]:
        res = r["resume"]
        assert len(res["resumed"]) == 3 and res["resumed"] == res["straight"]
        assert_same_state(res["resumed_state"], res["straight_state"], exact=True)


@pytest.mark.slow
def test_shuffling_differs_per_epoch_and_agrees_across_ranks(launched):
    r0, r1 = launched["ranks"]
    for name in ("seeded", "global"):
        e0, e1 = r0["shuffle"][name], r1["shuffle"][name]
        assert len(e0) == len(e1) == 2
        for a, b in zip(e0, e1):
            assert len(a) == len(b) == 20
            assert sorted(a + b) == list(range(40))  # the two shards split the dataset
        assert e0[0] != e0[1]  # set_epoch: a new order each epoch
    # the user's generator seeds the DistributedSampler, epoch by epoch
    for epoch, seen in enumerate(r0["shuffle"]["seeded"], 1):
        sampler = DistributedSampler(range(40), num_replicas=2, rank=0, shuffle=True,
                                     seed=torch.Generator().manual_seed(7).initial_seed())
        sampler.set_epoch(epoch)
        assert seen == list(sampler)


@pytest.mark.slow
def test_a_loader_with_its_own_distributed_sampler_is_kept(launched):
    r0, r1 = launched["ranks"]
    assert r0["user_sampler"] == list(range(0, 20, 2))
    assert r1["user_sampler"] == list(range(1, 20, 2))


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    # rank 1 raises while rank 0 waits in a DDP all-reduce: torchrun ends the job
    proc = torchrun("fail", tmp_path, timeout=180)  # a hang would run into the timeout
    assert proc.returncode != 0
    assert "rank 1 failed on purpose" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_stalled_rank_is_a_timeout_error_not_a_hang(tmp_path):
    # rank 1 sleeps 300 s in epoch 2; the group's 5 s timeout fails rank 0's next collective instead
    proc = torchrun("stall", tmp_path, timeout=150)
    assert proc.returncode != 0
    assert "timed out" in (proc.stdout + proc.stderr).lower()


# ------------------------------------------------------------- in-process


def test_launch_is_read_from_torchruns_environment():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    info = distributed.launch_info(env)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (3, 4, 1, 2)
    assert distributed.launch_info({"PATH": "/bin"}) is None
    with pytest.raises(RuntimeError, match="WORLD_SIZE"):
        distributed.launch_info({"RANK": "0"})
    with pytest.raises(RuntimeError, match="not an integer"):
        distributed.launch_info({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(RuntimeError, match="do not fit"):
        distributed.launch_info({"RANK": "2", "WORLD_SIZE": "2"})


def test_a_single_process_gets_no_distributed_context(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.context(torch.device("cpu")) is None
    assert distributed.is_main_process() and distributed.world_size() == 1
    model = sc.compiled(sc.mlp())
    run = runs.eval_run(model, None, fast_path=True)
    assert isinstance(run.config.strategy, distributed.SingleProcess)
    assert run.config.reducer is None and run.config.is_main_process
    # torchrun with one process is a single process too
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.context(torch.device("cpu")) is None
    assert distributed.local_device(None) is None


def fake_context(rank=0, world=2):
    """A DistributedContext for the checks that need no collective but the gather of the ranks' batch
    counts (``sharding.check_equal_steps``): every rank is this one."""
    ctx = distributed.DistributedContext.__new__(distributed.DistributedContext)
    ctx.rank, ctx.world_size, ctx.is_main = rank, world, rank == 0
    ctx.device = ctx.comm_device = torch.device("cpu")
    ctx.gather = lambda t: torch.cat([t.reshape(-1)] * world)
    return ctx


def test_shard_keeps_the_loaders_settings():
    ds = sc.data(10, 0)

    def collate(batch):
        return torch.utils.data.default_collate(batch)

    dl = DataLoader(ds, batch_size=3, drop_last=True, collate_fn=collate, pin_memory=False)
    sharded = distributed.shard(fake_context(rank=1), dl, "dl_train")
    assert isinstance(sharded.sampler, DistributedSampler)
    assert (sharded.batch_size, sharded.drop_last, sharded.collate_fn) == (3, True, collate)
    assert (sharded.sampler.rank, sharded.sampler.num_replicas) == (1, 2)
    assert not sharded.sampler.shuffle and sharded.sampler.drop_last
    assert list(sharded.sampler) == [1, 3, 5, 7, 9] and len(sharded) == 1


@pytest.mark.parametrize("make, match", [
    (lambda ds: [ds[0]], "torch DataLoader"),
    (lambda ds: DataLoader(ds, sampler=WeightedRandomSampler([1.0] * len(ds), len(ds))), "custom sampler"),
    (lambda ds: DataLoader(ds, batch_sampler=[[0, 1], [2]]), "custom batch_sampler"),
    (lambda ds: DataLoader(ds, sampler=DistributedSampler(ds, num_replicas=3, rank=0)), "num_replicas=3"),
])
def test_loaders_torchfit_cannot_shard_are_clear_errors(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        distributed.shard(fake_context(), make(sc.data(6, 0)), "dl_train")


def test_predict_needs_every_sample():
    with pytest.raises(ValueError, match="drop_last=False"):
        distributed.shard(fake_context(), DataLoader(sc.data(6, 0), batch_size=4, drop_last=True), "dl", "predict")
    with pytest.raises(ValueError, match="fewer than the 2 processes"):
        distributed.shard(fake_context(), DataLoader(sc.data(1, 0), drop_last=True), "dl_train")


def test_real_samples_counts_what_the_sampler_did_not_pad():
    for n in (1, 5, 6, 7):
        for world in (2, 3, 4):
            counts = [distributed.real_samples(DistributedSampler(range(n), world, r, shuffle=False))
                      for r in range(world)]
            assert sum(counts) == n
            for r, count in enumerate(counts):
                shard = list(DistributedSampler(range(n), world, r, shuffle=False))
                # the real samples come first: every index before `count` is this rank's own
                assert shard[:count] == list(range(r, n, world))
    assert distributed.real_samples(DistributedSampler(range(5), 2, 0, drop_last=True)) is None


class IdentityReducer:
    def sum(self, t):
        return t.clone()

    def gather(self, t):
        return t.clone()


def test_shard_tracker_trims_the_padding_from_the_figures():
    """Rank 1 of 2 over 5 samples: real [1, 3], then a repeat of sample 0, in batches of 2."""
    torch.manual_seed(0)
    preds, targets = torch.randn(3, 3), torch.tensor([0, 2, 1])
    loss_fn = nn.CrossEntropyLoss()
    metrics = resolve_metrics(["accuracy", "f1"])
    recompute_calls = []

    def recompute(p, y, w=None):
        recompute_calls.append(len(y))
        return loss_fn(p, y), None  # (batch loss, per-output losses)

    tracker = distributed.ShardTracker.from_tracker(Tracker(metrics), IdentityReducer(), real=2, recompute=recompute)
    tracker.reset()
    tracker.update(StepResult(loss_fn(preds[:2], targets[:2]), preds[:2], targets[:2], 2))
    tracker.update(StepResult(loss_fn(preds[2:], targets[2:]), preds[2:], targets[2:], 1))  # all padding
    logs = tracker.compute()
    assert logs["loss"] == pytest.approx(loss_fn(preds[:2], targets[:2]).item())
    assert logs["accuracy"] == pytest.approx((preds[:2].argmax(1) == targets[:2]).float().mean().item())
    assert recompute_calls == []  # whole-batch padding needs no loss at all

    # a batch that is half real: the loss is recomputed on the real row only
    tracker.reset()
    tracker.update(StepResult(loss_fn(preds[:1], targets[:1]), preds[:1], targets[:1], 1))
    tracker.update(StepResult(loss_fn(preds[1:], targets[1:]), preds[1:], targets[1:], 2))
    logs = tracker.compute()
    assert recompute_calls == [1]
    assert logs["loss"] == pytest.approx(loss_fn(preds[:2], targets[:2]).item())
    assert logs["f1"] == pytest.approx(f1_score(targets[:2], preds[:2].argmax(1), average="macro", zero_division=0))


def test_shard_tracker_of_an_all_padding_shard_still_has_shaped_states():
    metrics = resolve_metrics(["accuracy", "auc", "f1"])
    tracker = distributed.ShardTracker.from_tracker(Tracker(metrics), IdentityReducer(), real=0)
    tracker.reset()
    p, y = torch.randn(1, 3), torch.tensor([2])
    tracker.update(StepResult(torch.tensor(1.0), p, y, 1, {"extra": torch.tensor(2.0)}))
    # the states exist (with zero samples), so sync sends the same shapes as the other ranks'
    tracker.sync(IdentityReducer())
    logs = tracker.compute()
    assert set(logs) == {"loss", "accuracy", "auc", "f1", "extra"}
    assert all(math.isnan(v) for v in logs.values())
    assert tracker.metrics["f1"]._cm is not None and tracker.metrics["auc"]._scores


TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only choice")
def test_under_torchrun_without_cuda_the_device_is_left_to_compile():
    assert distributed.local_device(None, TORCHRUN_ENV) is None
    assert distributed.local_device("cpu", TORCHRUN_ENV) == "cpu"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_under_torchrun_on_cuda_each_rank_takes_its_local_gpu():
    assert distributed.local_device(None, TORCHRUN_ENV) == torch.device("cuda", 0)
    assert distributed.local_device("cuda", TORCHRUN_ENV) == torch.device("cuda", 0)
    assert distributed.local_device("cuda:0", TORCHRUN_ENV) == "cuda:0"  # an explicit index is kept
    too_far = dict(TORCHRUN_ENV, LOCAL_RANK=str(torch.cuda.device_count()))
    with pytest.raises(RuntimeError, match="at most one process per GPU"):
        distributed.local_device(None, too_far)
