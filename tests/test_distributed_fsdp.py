"""compile(strategy="fsdp"): FSDP2 under 2 CPU processes (gloo) trains as DDP does, keeps exact
figures, predicts the whole dataset in order, and writes checkpoints (one gathered file or a
sharded DCP directory) that resume exactly in a fresh launch and load in a single process."""
from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import torchfit
from torchfit import distributed
from torchfit.distributed import FSDP, check_strategy
from torchfit.distributed import fsdp as fsdp_mod
from torchfit.errors import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "dist_scripts"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import fsdp_scenarios as fs  # noqa: E402
import scenarios as sc  # noqa: E402
from conftest import torchrun  # noqa: E402
from test_distributed import assert_same_state as assert_close_state  # noqa: E402

SCRIPT = os.path.join(ROOT, "tests", "dist_scripts", "fsdp_scenarios.py")


def launch(mode, out, timeout=240):
    return torchrun(SCRIPT, mode, out, timeout=timeout)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Two torchrun launches: every FSDP scenario, then a fresh launch that resumes its checkpoints."""
    out = tmp_path_factory.mktemp("fsdp")
    results = {}
    for mode in ("main", "resume"):
        proc = launch(mode, out)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        results[mode] = [torch.load(out / f"{mode}-rank{r}.pt", weights_only=True) for r in range(2)]
    return {**results, "dir": out}


def assert_same_history(a, b, rel=1e-5):
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=rel, abs=1e-7), k


# --------------------------------------------------------------- launched


@pytest.mark.slow
def test_fsdp_trains_like_ddp_with_the_same_exact_figures(launched):
    r0 = launched["main"][0]
    assert_same_history(r0["ddp_history"], r0["fsdp_history"])
    assert_close_state(r0["ddp_state"]["net"], r0["fsdp_state"]["net"])
    # Adam's moments, gathered into torch.optim's own layout, match DDP's
    ddp_opt, fsdp_opt = r0["ddp_state"]["optimizer"], r0["fsdp_state"]["optimizer"]
    assert fsdp_opt["param_groups"][0]["params"] == ddp_opt["param_groups"][0]["params"]
    for i, s in ddp_opt["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fsdp_opt["state"][i][key], s[key], rtol=1e-5, atol=1e-7)
    assert launched["main"][1]["fsdp_history"] == r0["fsdp_history"]  # every rank returns the same history


@pytest.mark.slow
def test_the_net_stays_sharded_after_fit_and_a_second_fit_continues(launched):
    r0, r1 = launched["main"]
    assert r0["sharded"] and r0["state_dict_types"] == ["DTensor"]
    assert r0["local_rows"] == r1["local_rows"] == 8  # each rank holds half of the first layer's 16 rows
    assert r1["fsdp_state"] == {"net": {}, "optimizer": None}  # gathered on rank 0 only
    assert r0["fsdp_epoch_after_second_fit"] == 3
    # the root unit (the whole net here) is not left gathered by validation or predict
    assert r0["param_types_after_fit"] == r0["param_types_after_predict"] == ["DTensor"]


@pytest.mark.slow
def test_every_rank_starts_from_rank_zeros_weights(launched):
    r0 = launched["main"][0]
    assert_close_state(r0["rank_seeded"]["net"], r0["straight"]["net"], exact=True)


@pytest.mark.slow
def test_evaluate_and_predict_cover_the_whole_dataset_in_order(launched):
    r0, r1 = launched["main"]
    assert r0["fsdp_eval"] == pytest.approx(r0["ddp_eval"], rel=1e-5)
    assert r1["fsdp_eval"] == r0["fsdp_eval"]
    net = sc.mlp(seed=0)
    net.load_state_dict(r0["fsdp_state"]["net"])
    x = fs.loaders()[1].dataset.tensors[0]
    with torch.no_grad():
        expected = net(x)
    for r in (r0, r1):
        assert r["fsdp_predict"].shape == (30, 3)
        torch.testing.assert_close(r["fsdp_predict"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_accumulation_under_fsdp_equals_ddp(launched):
    r0 = launched["main"][0]
    assert_close_state(r0["acc_ddp"], r0["acc_fsdp"])


@pytest.mark.slow
def test_mixed_precision_goes_through_fsdps_policy(launched):
    r0 = launched["main"][0]
    assert r0["bf16_seen"] == ["torch.bfloat16"]  # the layer computed with bf16 weights and inputs
    assert r0["bf16_param_dtype"] == "torch.float32"  # while the sharded parameters stay float32
    assert r0["bf16_history"][0]["loss"] == pytest.approx(r0["fsdp_history"][0]["loss"], abs=0.02)
    assert r0["bf16_history"][0]["loss"] != r0["fsdp_history"][0]["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "dcp"])
def test_resume_in_a_fresh_launch_is_exact(launched, kind):
    r0 = launched["main"][0]
    resumed = launched["resume"][0]
    assert resumed[f"{kind}_epoch"] == 2
    assert_close_state(resumed[kind]["net"], r0["straight"]["net"], exact=True)
    assert_same_history(resumed[f"{kind}_history"], r0["fsdp_history"], rel=0)


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_under_fsdp_resumes_exactly_at_a_windows_end(launched):
    r0, resumed = launched["main"][0], launched["resume"][0]
    assert_close_state(resumed["mid"]["net"], r0["acc_fsdp"], exact=True)
    assert_same_history(resumed["mid_history"], r0["acc_fsdp_history"], rel=0)
    at_end = torch.load(launched["dir"] / "mid-e1-b4.pt", weights_only=True)["mid_epoch"]
    assert [p["batch"] for p in at_end["positions"]] == [4, 4]  # both ranks' positions, in one file
    inside = torch.load(launched["dir"] / "mid-e2-b1.pt", weights_only=True)["mid_epoch"]
    assert inside == {"epoch": 2}  # inside a window: no position (loading it warns)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "dcp"])
def test_a_checkpoint_loaded_into_a_sharded_net_continues_exactly(launched, kind):
    r0 = launched["main"][0]
    assert_close_state(r0[f"reload_{kind}"]["net"], r0["straight"]["net"], exact=True)
    for i, s in r0["straight"]["optimizer"]["state"].items():
        assert torch.equal(r0[f"reload_{kind}"]["optimizer"]["state"][i]["exp_avg"], s["exp_avg"])


@pytest.mark.slow
def test_a_gathered_checkpoint_loads_in_one_process(launched):
    r0 = launched["main"][0]
    model = fs.model(seed=3).load_checkpoint(launched["dir"] / "fsdp.pt")
    assert_close_state(model.net.state_dict(), r0["fsdp_state"]["net"], exact=True)
    assert model.epoch == 2 and len(model.history) == 2
    assert model.evaluate(fs.loaders()[1]) == pytest.approx(r0["fsdp_eval"], rel=1e-5)
    ids = model.optimizer.state_dict()["state"].keys()
    assert sorted(ids) == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_sharded_checkpoint_loads_in_one_process(launched):
    r0 = launched["main"][0]
    model = fs.model(seed=3).load_checkpoint(launched["dir"] / "one_dcp")
    assert_close_state(model.net.state_dict(), r0["one_state"]["net"], exact=True)
    opt = model.optimizer.state_dict()["state"]
    for i, s in r0["one_state"]["optimizer"]["state"].items():
        assert torch.equal(opt[i]["exp_avg"], s["exp_avg"])
    assert model.epoch == 1 and len(model.history) == 1


# --------------------------------------------------------------- in one process


def test_strategy_names_and_options_are_checked_at_compile():
    assert check_strategy(None) is None and check_strategy("ddp") == "ddp"
    assert check_strategy("fsdp") == FSDP()
    with pytest.raises(ValueError, match=r"strategy='deepspeed'.*'ddp'.*'fsdp'"):
        torchfit.Model(nn.Linear(2, 2)).compile(nn.MSELoss(), device="cpu", strategy="deepspeed")
    with pytest.raises(TypeError, match="FSDP\\(shard=...\\) takes nn.Module classes"):
        FSDP(shard="Linear")
    with pytest.raises(ValueError, match="mixed_precision='fp8'"):
        FSDP(mixed_precision="fp8")


def test_the_sharding_unit_is_chosen_by_class_or_function():
    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    picked = [n for n, m in net.named_modules() if FSDP(shard=nn.Linear).wants_unit(n, m)]
    assert picked == ["0", "1.0"]
    by_name = FSDP(shard=lambda name, m: name == "1")
    assert [n for n, m in net.named_modules() if by_name.wants_unit(n, m)] == ["1"]
    assert not any(FSDP().wants_unit(n, m) for n, m in net.named_modules())
    from torch.distributed.fsdp import MixedPrecisionPolicy

    assert FSDP(mixed_precision="bf16").policy() == MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                                       reduce_dtype=torch.float32)


def test_in_one_process_fsdp_is_a_plain_fit():
    a, b = fs.model("fsdp"), fs.model(None)
    a.fit(1, *fs.loaders(), verbose=0)
    b.fit(1, *fs.loaders(), verbose=0)
    assert not fsdp_mod.is_sharded(a.net)
    for k, v in b.net.state_dict().items():
        assert torch.equal(a.net.state_dict()[k], v)


def test_jit_compile_with_fsdp_is_refused_before_sharding():
    strategy = fsdp_mod.FullySharded(types.SimpleNamespace(is_main=True), FSDP())
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="jit_compile.*strategy='fsdp'"):
        # with jit_compile the model hands the strategy torch.compile's wrapper, not the net itself
        strategy.prepare_fit(distributed.FitRequest(net, lambda x: net(x), torch.device("cpu"), 1, None, None, None,
                                                    None))
    assert not fsdp_mod.is_sharded(net)


def test_optimizer_state_renumbering_round_trips():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 2)).sum().backward()
    opt.step()
    numbered = opt.state_dict()
    named = fsdp_mod._named(net, opt, numbered)
    assert list(named["state"]) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    back = fsdp_mod._numbered(named)
    assert back["param_groups"][0]["params"] == [0, 1, 2, 3]
    for i, s in numbered["state"].items():
        assert torch.equal(back["state"][i]["exp_avg"], s["exp_avg"])


def test_a_directory_that_is_not_a_sharded_checkpoint_is_a_clear_error(tmp_path):
    model = fs.model(None)
    with pytest.raises(CheckpointError, match="not a sharded torchfit checkpoint.*save_sharded"):
        model.load_checkpoint(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux")
def test_num_processes_with_fsdp_hands_back_whole_weights():
    model, ref = fs.model("fsdp"), fs.model(None)
    ds, dv = sc.data(64, 1), sc.data(32, 2)
    history = model.fit(2, DataLoader(ds, batch_size=8), DataLoader(dv, batch_size=8), verbose=0, num_processes=2)
    ref_history = ref.fit(2, DataLoader(ds, batch_size=16), DataLoader(dv, batch_size=16), verbose=0)
    assert not fsdp_mod.is_sharded(model.net)  # this process's net was never sharded
    assert_close_state(model.net.state_dict(), ref.net.state_dict())
    assert list(history["loss"]) == pytest.approx(list(ref_history["loss"]), rel=1e-5)
    assert distributed.world_size() == 1


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux")
def test_model_checkpoint_under_fsdp_gathers_on_every_rank_and_rank_0_writes(tmp_path):
    """The strategy saves collectively, so ModelCheckpoint runs on every rank (no isinstance of it
    anywhere): the file holds whole tensors and loads in one process, equal to the gathered net."""
    from torchfit.callbacks import ModelCheckpoint

    model = fs.model("fsdp")
    history = model.fit(2, *fs.loaders(), verbose=0, num_processes=2,
                        callbacks=[ModelCheckpoint(str(tmp_path / "e{epoch}.pt"))])
    assert sorted(os.listdir(tmp_path)) == ["e1.pt", "e2.pt"]
    one = fs.model(None)
    one.load_checkpoint(tmp_path / "e2.pt")
    assert one.epoch == 2 and list(one.history["loss"]) == list(history["loss"])
    assert_close_state(one.net.state_dict(), model.net.state_dict())


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux")
def test_clipping_schedules_and_restored_best_weights_work_on_shards_as_under_ddp():
    from torchfit.callbacks import EarlyStopping

    results = []
    for strategy in (FSDP(shard=nn.Linear), None):
        model = fs.model(strategy)
        stopper = EarlyStopping(monitor="val_loss", patience=1, min_delta=0.05, restore_best_weights=True)
        history = model.fit(6, *fs.loaders(), verbose=0, grad_clip_norm=0.05, num_processes=2, callbacks=[stopper],
                            lr_scheduler=torch.optim.lr_scheduler.StepLR(model.optimizer, 1, 0.5))
        results.append((model, history))
    (fsdp_model, fsdp_history), (ddp_model, ddp_history) = results
    assert len(fsdp_history) == len(ddp_history) < 6  # early stopping fired at the same epoch
    assert list(fsdp_history["val_loss"]) == pytest.approx(list(ddp_history["val_loss"]), rel=1e-5)
    assert_close_state(fsdp_model.net.state_dict(), ddp_model.net.state_dict())
