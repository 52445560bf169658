"""Checkpoints and exact resume: ModelCheckpoint's files, save/load_checkpoint, resume_from,
clear errors, GPU-written files on CPU, and the promises in fresh processes (including SIGKILL)."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
import torch.serialization
from torch import nn

import torchfit
from torchfit.callbacks import Callback, CSVLogger, EarlyStopping, LearningRateScheduler, ModelCheckpoint
from torchfit.errors import CheckpointError
from conftest import Scripted, assert_same_weights, blobs, loader, mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "resume_script.py")


def setup(seed=0):
    """Shuffling, dropout, a per-epoch scheduler and early stopping: state everywhere."""
    torch.manual_seed(seed)
    net = mlp(dropout=0.3, seed=seed)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=1e-2),
                                       ["accuracy"], device="cpu")
    sched = torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=1, gamma=0.8)
    cbs = [EarlyStopping(patience=5, verbose=0), LearningRateScheduler(sched)]
    dl = loader(blobs(96), 16, shuffle=True, seed=10 + seed)
    return model, dl, loader(blobs(32, seed=1), 16), cbs


def plain_leaves(obj, path="ckpt"):
    """Every leaf is a tensor or a plain Python value (no pickled objects)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), f"{path}: key {k!r}"
            yield from plain_leaves(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from plain_leaves(v, f"{path}[{i}]")
    else:
        assert obj is None or isinstance(obj, (torch.Tensor, int, float, str, bool)), f"{path}: {type(obj)}"
        yield obj


# ------------------------------------------------------- in-process resume
def test_save_load_and_continue_equals_training_straight(tmp_path):
    straight, dl, dl_val, cbs = setup()
    straight.fit(4, dl, dl_val, callbacks=cbs, verbose=0)

    first, dl, dl_val, cbs = setup()
    first.fit(2, dl, dl_val, callbacks=cbs, verbose=0)
    first.save_checkpoint(tmp_path / "ckpt.pt")

    second, dl, dl_val, cbs = setup(seed=3)  # other init, other shuffling seed: the file must supply them
    torch.manual_seed(123)
    second.load_checkpoint(tmp_path / "ckpt.pt")
    assert second.epoch == 2 and len(second.history) == 2
    second.fit(2, dl, dl_val, callbacks=cbs, verbose=0)

    assert_same_weights(straight.net, second.net)
    pd.testing.assert_frame_equal(straight.history, second.history, check_exact=True)
    pd.testing.assert_frame_equal(straight.step_history, second.step_history, check_exact=True)
    assert straight.optimizer.param_groups[0]["lr"] == second.optimizer.param_groups[0]["lr"]
    assert second.global_step == straight.global_step
    assert cbs[0].best == straight.history["val_loss"].min()  # early stopping's best came from the file


def test_checkpoint_is_plain_data_that_loads_with_weights_only(tmp_path):
    model, dl, dl_val, cbs = setup()
    model.fit(1, dl, dl_val, callbacks=cbs, verbose=0)
    model.save_checkpoint(tmp_path / "c.pt")
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    list(plain_leaves(ckpt))
    assert ckpt["epoch"] == 1 and ckpt["history"] == model.training_state.history
    assert set(ckpt["callbacks"]) == {"EarlyStopping", "LearningRateScheduler"}
    assert len(ckpt["loaders"]["dl_train"]) == 1 and ckpt["loaders"]["dl_val"] == []
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python"}


def test_callback_state_continues_after_load(tmp_path):
    model, dl, dl_val, _ = setup()
    es = EarlyStopping(monitor="loss", mode="max", patience=3, verbose=0)  # loss falls: never "improves"
    model.fit(2, dl, callbacks=[es], verbose=0)
    assert es.wait == 1
    model.save_checkpoint(tmp_path / "c.pt")
    fresh, dl, _, _ = setup()
    es2 = EarlyStopping(monitor="loss", mode="max", patience=3, verbose=0)
    fresh.load_checkpoint(tmp_path / "c.pt")
    fresh.fit(5, dl, callbacks=[es2], verbose=0)
    assert fresh.epoch == 4 and es2.stopped_epoch == 3  # 0-based, as Keras'  # waited 3 epochs in all, counting the saved one

    fresh.load_checkpoint(tmp_path / "c.pt")
    with pytest.warns(RuntimeWarning, match=r"state for callback\(s\) \['EarlyStopping'\].*ignored"):
        fresh.fit(1, dl, verbose=0)


def test_loader_built_differently_warns(tmp_path):
    model, dl, _, _ = setup()
    model.fit(1, dl, verbose=0)
    model.save_checkpoint(tmp_path / "c.pt")
    model.load_checkpoint(tmp_path / "c.pt")
    with pytest.warns(RuntimeWarning, match="1 random generator state.*this dl_train has 0"):
        model.fit(1, loader(blobs(96), 16), verbose=0)


def test_resume_from_treats_epochs_as_the_total(tmp_path, capsys):
    path = tmp_path / "ck" / "last.pt"
    model, dl, _, _ = setup()
    model.fit(3, dl, verbose=0, resume_from=path)  # no file yet: a fresh start
    assert model.epoch == 3 and not path.exists()
    model.save_checkpoint(path)

    again, dl, _, _ = setup()
    again.fit(5, dl, verbose=2, resume_from=path)
    assert again.epoch == 5 and list(again.history["epoch"]) == [1, 2, 3, 4, 5]
    assert capsys.readouterr().out.startswith(f"Resuming from {path}: 3 of 5 epoch(s) done.\n")

    done, dl, _, _ = setup()
    done.fit(3, dl, verbose=0, resume_from=path)  # all 3 were done: nothing to train
    assert done.epoch == 3 and done.global_step == model.global_step


def test_mid_epoch_checkpoint_warns_on_load(tmp_path):
    model, dl, _, _ = setup()

    class SaveMidEpoch(Callback):
        def on_train_batch_end(self, batch, logs):
            if self.model.epoch == 1 and batch == 2:
                self.model.save_checkpoint(tmp_path / "mid.pt")

    model.fit(2, dl, callbacks=[SaveMidEpoch()], verbose=0)
    assert torch.load(tmp_path / "mid.pt", weights_only=True)["mid_epoch"] == {"epoch": 2}
    with pytest.warns(RuntimeWarning, match="written during epoch 2, which had not finished"):
        setup()[0].load_checkpoint(tmp_path / "mid.pt")


# ------------------------------------------------------------------ errors
def test_files_that_are_not_torchfit_checkpoints(tmp_path):
    model, dl, _, _ = setup()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    (tmp_path / "notes.txt").write_text("hello")
    torch.save(model.net.state_dict(), tmp_path / "weights.pt")
    torch.save({"model": model.net.state_dict(), "epoch": 3}, tmp_path / "other.pt")
    torch.save({"opt": torch.optim.SGD}, tmp_path / "pickled.pt")  # needs pickle of a class: refused
    cases = {"notes.txt": "could not read it", "weights.pt": r"plain state_dict.*model.net.load_state_dict",
             "other.pt": "without the 'torchfit_checkpoint' marker", "pickled.pt": "could not read it"}
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as info:
            model.load_checkpoint(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        model.load_checkpoint(tmp_path / "missing.pt")
    assert all(torch.equal(v, before[k]) for k, v in model.net.state_dict().items())


def test_checkpoint_of_a_different_net_names_the_keys_and_changes_nothing(tmp_path):
    model, dl, _, _ = setup()
    model.fit(1, dl, verbose=0)
    model.save_checkpoint(tmp_path / "c.pt")
    wider = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    other = torchfit.Model(wider).compile(nn.CrossEntropyLoss(), device="cpu")
    with pytest.raises(CheckpointError, match=r"different net.*other shapes: 0.weight: checkpoint \(16, 4\) "
                                              r"vs net \(32, 4\)"):
        other.load_checkpoint(tmp_path / "c.pt")
    renamed = nn.Sequential()
    renamed.add_module("hidden", nn.Linear(4, 16))
    renamed.add_module("out", nn.Linear(16, 3))
    third = torchfit.Model(renamed).compile(nn.CrossEntropyLoss(), device="cpu")
    before = {k: v.clone() for k, v in renamed.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: hidden.weight, hidden.bias, out.weight, "
                                              r"out.bias; only in the checkpoint: 0.weight, 0.bias, 3.weight, 3.bias"):
        third.load_checkpoint(tmp_path / "c.pt")
    assert third.epoch == 0 and all(torch.equal(v, before[k]) for k, v in renamed.state_dict().items())


def test_checkpoint_written_on_cuda_loads_on_cpu(tmp_path, monkeypatch):
    """Tag every saved tensor as a cuda:0 tensor, as a GPU run writes them, then load on this CPU."""
    model, dl, _, _ = setup()
    model.fit(1, dl, verbose=0)
    monkeypatch.setattr(torch.serialization, "_package_registry", list(torch.serialization._package_registry))
    torch.serialization.register_package(0, lambda obj: "cuda:0" if obj.device.type == "cpu" else None,
                                         lambda obj, location: None)
    model.save_checkpoint(tmp_path / "gpu.pt")
    monkeypatch.undo()
    if not torch.cuda.is_available():  # the file really needs the mapping here
        # torch < 2.4 (or so) wraps the RuntimeError in weights_only's UnpicklingError
        with pytest.raises((RuntimeError, pickle.UnpicklingError), match="CUDA"):
            torch.load(tmp_path / "gpu.pt", weights_only=True)
    fresh, _, _, _ = setup(seed=5)
    fresh.load_checkpoint(tmp_path / "gpu.pt")
    assert_same_weights(model.net, fresh.net)
    for a, b in zip(model.optimizer.state.values(), fresh.optimizer.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
        assert b["exp_avg"].device.type == "cpu"


@pytest.mark.slow
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_checkpoint_loads_in_a_cpu_only_process(tmp_path):
    net = mlp()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "adam", device="cuda", precision="16-mixed")
    model.fit(1, loader(blobs(64), 16), verbose=0)
    model.save_checkpoint(tmp_path / "gpu.pt")
    code = textwrap.dedent(f"""
        import sys, torch, torchfit
        from torch import nn
        sys.path.insert(0, "tests")
        from conftest import mlp
        assert not torch.cuda.is_available()
        m = torchfit.Model(mlp()).compile(nn.CrossEntropyLoss(), "adam", device="cpu")
        m.load_checkpoint({str(tmp_path / "gpu.pt")!r})
        first = m.optimizer.param_groups[0]["params"][0]
        print(m.epoch, m.optimizer.state[first]["exp_avg"].device)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "cpu"]


# --------------------------------------------------------- ModelCheckpoint
def test_model_checkpoint_every_epoch_best_only_and_last(tmp_path):
    model, dl, _, _ = setup()
    every = ModelCheckpoint(tmp_path / "all" / "e{epoch:02d}-{loss:.2f}.pt")
    best = ModelCheckpoint(tmp_path / "best.pt", monitor="score", save_best_only=True, save_last=True)
    model.fit(4, dl, callbacks=[Scripted([3.0, 1.0, 2.0, 0.5]), every, best], verbose=0)
    names = sorted(os.listdir(tmp_path / "all"))
    assert [n[:4] for n in names] == ["e01-", "e02-", "e03-", "e04-"]
    assert names[0] == f"e01-{model.history['loss'][0]:.2f}.pt"
    assert best.last_path == str(tmp_path / "last.pt")
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 4
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 4 and best.best == 0.5

    model.fit(2, dl, callbacks=[Scripted([0] * 4 + [0.7, 0.6]), best], verbose=0)  # the best survives fit calls
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 4
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 6


def test_model_checkpoint_weights_only_writes_a_plain_state_dict(tmp_path):
    model, dl, _, _ = setup()
    model.fit(2, dl, callbacks=[ModelCheckpoint(tmp_path / "w.pt", weights_only=True)], verbose=0)
    net = mlp(dropout=0.3, seed=9)
    net.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    assert_same_weights(net, model.net)


def test_a_crash_mid_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    model, dl, _, _ = setup()
    ckpt = ModelCheckpoint(tmp_path / "last.pt")
    model.fit(1, dl, callbacks=[ckpt], verbose=0)
    real_save = torch.save

    def torn_save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        f.seek(0)
        f.truncate(100)  # half a file...
        raise OSError("disk full")  # ...and the writer dies

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        model.fit(1, dl, callbacks=[ckpt], verbose=0)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1  # the previous, whole file


def test_checkpoint_includes_what_later_callbacks_did_at_the_epoch_end(tmp_path):
    # ModelCheckpoint listed first still saves after the scheduler and early stopping ran (runs_last)
    model, dl, dl_val, _ = setup()
    sched = torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=1, gamma=0.5)
    es = EarlyStopping(monitor="val_loss", mode="max", patience=5, verbose=0)
    model.fit(2, dl, dl_val, callbacks=[ModelCheckpoint(tmp_path / "c.pt"), LearningRateScheduler(sched), es],
              verbose=0)
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    assert saved["callbacks"]["LearningRateScheduler"]["scheduler"]["last_epoch"] == 2
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.25)
    assert saved["callbacks"]["EarlyStopping"]["wait"] == es.wait


# ------------------------------------------- the promises, in fresh processes
def run_script(*args, check=True):
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=240)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("straight")
    run_script("straight", directory / "straight.pt", directory / "two_epochs.pt")
    return torch.load(directory / "straight.pt", weights_only=True), directory / "two_epochs.pt"


def assert_same_run(a, b):
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), f"{k} differs"
    assert a["history"] == b["history"] and a["global_step"] == b["global_step"]
    assert a["step_history"] == b["step_history"] and len(a["step_history"]) > 4


@pytest.mark.slow
def test_two_epochs_then_two_more_in_a_new_process_equal_four_straight(straight_run, tmp_path):
    straight, two_epochs = straight_run
    run_script("second", two_epochs, tmp_path / "resumed.pt")
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert len(resumed["history"]) == 4 and [r["epoch"] for r in resumed["history"]] == [1, 2, 3, 4]
    assert_same_run(straight, resumed)  # bit for bit, history included


@pytest.mark.slow
def test_killed_mid_epoch_then_rerun_reaches_the_same_weights(straight_run, tmp_path):
    directory, out = tmp_path / "ck", tmp_path / "out.pt"
    killed = run_script("crashable", directory, out, "--kill-at", 3, 4, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not out.exists() and not (directory / "epoch3.pt").exists()
    assert torch.load(directory / "last.pt", weights_only=True)["epoch"] == 2  # the last completed epoch
    assert len(pd.read_csv(directory / "log.csv")) == 2

    rerun = run_script("crashable", directory, out)  # the same command line, run again
    assert "Resuming from" in rerun.stdout and "2 of 4 epoch(s) done" in rerun.stdout
    resumed = torch.load(out, weights_only=True)
    assert_same_run(straight_run[0], resumed)
    log = CSVLogger.read(directory / "log.csv")  # every epoch exactly once, as in the history
    pd.testing.assert_frame_equal(log, pd.DataFrame(resumed["history"]), check_exact=True)


def test_resume_from_a_run_that_early_stopping_ended_trains_no_more(tmp_path, capsys):
    model, dl, _, _ = setup()
    ckpt = ModelCheckpoint(tmp_path / "e{epoch}.pt", save_last=True)
    es = EarlyStopping(monitor="score", mode="min", patience=1, verbose=0)
    model.fit(10, dl, callbacks=[Scripted([1.0, 2.0, 0.0]), es, ckpt], verbose=0, resume_from=ckpt.last_path)
    assert model.epoch == 2 and torch.load(tmp_path / "e1.pt", weights_only=True)["stop_training"] is False

    rerun, dl, _, _ = setup()  # the same script, run again
    ckpt = ModelCheckpoint(tmp_path / "e{epoch}.pt", save_last=True)
    es = EarlyStopping(monitor="score", mode="min", patience=1, verbose=0)
    rerun.fit(10, dl, callbacks=[Scripted([1.0, 2.0, 0.0]), es, ckpt], verbose=1, resume_from=ckpt.last_path)
    assert rerun.epoch == 2 and rerun.global_step == model.global_step
    assert "Training had been stopped (model.stop_training) at that epoch" in capsys.readouterr().out
    rerun.fit(1, dl, verbose=0)  # an explicit fit still trains
    assert rerun.epoch == 3
