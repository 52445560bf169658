"""Preemption and BackupAndRestore: stop a run anywhere (Ctrl-C, SIGTERM, SIGKILL, on 1 or 2 ranks), run
the same fit again, and it ends with the weights and history of the run that was never stopped."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from torchfit.callbacks import BackupAndRestore, Callback, ModelCheckpoint

from conftest import child_env, torchrun_cmd
from test_resume_anywhere import assert_same_run, setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "dist_scripts", "preempt.py")


class At(Callback):
    """Does ``action()`` after training batch ``batch`` (1-based) of epoch ``epoch`` (1-based)."""

    def __init__(self, epoch, batch, action):
        self.at, self.action = (epoch, batch), action

    def on_train_batch_end(self, batch, logs):
        if (self.model.run.epoch, batch + 1) == self.at:
            self.action()


def interrupt():
    raise KeyboardInterrupt


def fit_with_backup(case, tmp_path, seed, *extra, save_freq="epoch", **kwargs):
    model, dl_train, dl_val, callbacks, fit_kwargs = setup(case, seed=seed)
    backup = BackupAndRestore(tmp_path / "backup", save_freq=save_freq, **kwargs)
    model.fit(3, dl_train, dl_val, callbacks=callbacks + list(extra) + [backup], verbose=0, log_step_freq=3,
              **fit_kwargs)
    return model


@pytest.fixture(scope="module")
def straight_runs():
    """The uninterrupted runs the resumed ones must equal, by case."""
    runs = {}

    def get(case):
        if case not in runs:
            model, dl_train, dl_val, callbacks, kwargs = setup(case, seed=0)
            model.fit(3, dl_train, dl_val, callbacks=callbacks, verbose=0, log_step_freq=3, **kwargs)
            runs[case] = model
        return runs[case]

    return get


@pytest.mark.parametrize("save_freq", ["epoch", 5])
def test_ctrl_c_then_the_same_fit_again_continues_from_the_backup(save_freq, tmp_path, straight_runs):
    first = fit_with_backup("accumulation", tmp_path, 0, At(2, 7, interrupt), save_freq=save_freq)
    assert first.epoch == 1  # Ctrl-C in epoch 2: fit returned with epoch 1 done
    path = tmp_path / "backup" / "backup.pt"
    saved = torch.load(path, weights_only=True)
    # every 5 batches: the last backup is after batch 5 of epoch 2 (the 17th batch); else epoch 1's end
    assert saved["mid_epoch"] == (None if save_freq == "epoch" else {"epoch": 2, "positions": saved["mid_epoch"]["positions"]})
    again = fit_with_backup("accumulation", tmp_path, 7, save_freq=save_freq)
    assert_same_run(straight_runs("accumulation"), again)
    assert not path.exists()  # the run finished: the backup is gone


def test_sigterm_finishes_the_step_saves_there_and_exits_143(tmp_path, straight_runs, capsys):
    with pytest.raises(SystemExit) as info:
        fit_with_backup("ema", tmp_path, 0, At(2, 5, lambda: signal.raise_signal(signal.SIGTERM)))
    assert info.value.code == 143
    assert "Preempted (SIGTERM) after batch 5 of epoch 2" in capsys.readouterr().out
    saved = torch.load(tmp_path / "backup" / "backup.pt", weights_only=True)
    assert saved["mid_epoch"]["positions"][0]["batch"] == 5 and saved["stop_training"] is False
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the fit
    again = fit_with_backup("ema", tmp_path, 3)
    assert_same_run(straight_runs("ema"), again)
    assert not (tmp_path / "backup" / "backup.pt").exists()


def test_a_signal_the_user_names_and_exit_code_none(tmp_path, straight_runs):
    model = fit_with_backup("plain", tmp_path, 0, At(1, 4, lambda: signal.raise_signal(signal.SIGUSR1)),
                            signals=[signal.SIGUSR1], exit_code=None)
    assert model.epoch == 0 and model.stop_training  # returned from fit, stopped after batch 4
    again = fit_with_backup("plain", tmp_path, 3, signals=[signal.SIGUSR1])
    assert_same_run(straight_runs("plain"), again)


def test_a_finished_run_keeps_the_backup_with_delete_checkpoint_false(tmp_path):
    fit_with_backup("plain", tmp_path, 0, delete_checkpoint=False)
    assert torch.load(tmp_path / "backup" / "backup.pt", weights_only=True)["epoch"] == 3
    model = fit_with_backup("plain", tmp_path, 0, delete_checkpoint=False)  # nothing left to train
    assert model.epoch == 3 and len(model.history) == 3


@pytest.mark.parametrize("bad, match", [
    (dict(save_freq=0), "save_freq must be"),
    (dict(signals=["TERM"]), "signal numbers"),
    (dict(exit_code="1"), "exit_code must be"),
])
def test_bad_arguments_are_named(bad, match, tmp_path):
    with pytest.raises((ValueError, TypeError), match=match):
        BackupAndRestore(tmp_path, **bad)


def test_resume_from_and_a_backup_together_are_refused(tmp_path):
    model, dl_train, _, _, _ = setup("plain", seed=0)
    with pytest.raises(ValueError, match="resume_from= and a BackupAndRestore"):
        model.fit(1, dl_train, verbose=0, callbacks=[BackupAndRestore(tmp_path)], resume_from=tmp_path / "x.pt")
    assert model.epoch == 0 and model.global_step == 0


# ------------------------------------------------------------------ real processes, real signals
def launch(out_dir, *args, torchrun=False, slow=0.0):
    script_args = [str(out_dir), "--slow", str(slow), *args]
    cmd = torchrun_cmd(SCRIPT, *script_args) if torchrun else [sys.executable, SCRIPT, *script_args]
    return subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_at(proc, epoch, batch, sig, timeout=120.0):
    """Read the child's progress until it reports ``batch epoch batch``, then send it ``sig``."""
    deadline, seen = time.monotonic() + timeout, []
    for line in proc.stdout:
        seen.append(line)
        if line.strip() == f"batch {epoch} {batch}":
            proc.send_signal(sig)
            break
        assert time.monotonic() < deadline, "".join(seen[-20:])
    else:
        raise AssertionError("the run ended before the batch to stop at:\n" + "".join(seen[-20:]))
    rest = proc.communicate(timeout=timeout)[0]
    return "".join(seen) + rest


def finish(out_dir, **kwargs):
    proc = launch(out_dir, **kwargs)
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, out[-3000:]
    return out


def result(out_dir, rank=0):
    return torch.load(os.path.join(out_dir, f"result-{rank}.pt"), weights_only=True)


def assert_same_result(a, b):
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert a["history"] == b["history"]
    assert a["step_history"] == b["step_history"]
    assert a["global_step"] == b["global_step"]


@pytest.fixture(scope="module")
def straight_script(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    finish(out)
    return result(out)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_random_batches_then_the_same_command_again_equals_the_straight_run(seed, tmp_path,
                                                                                     straight_script):
    """Killed three times at random batches (each run resuming the last one's backup), then run to the end."""
    rng = random.Random(seed)
    points = sorted(rng.sample([(e, b) for e in (1, 2, 3) for b in range(1, 13)], 3))
    for epoch, batch in points:
        out = stop_at(launch(tmp_path, slow=0.01), epoch, batch, signal.SIGKILL)
        if (epoch, batch) > (1, 3):  # a backup every 3 batches (written after the progress line)
            assert os.path.exists(tmp_path / "backup" / "backup.pt"), out[-2000:]
    finish(tmp_path)
    assert_same_result(straight_script, result(tmp_path))
    assert not os.path.exists(tmp_path / "backup" / "backup.pt")


@pytest.mark.slow
def test_sigterm_to_a_real_process_mid_epoch(tmp_path, straight_script):
    proc = launch(tmp_path, slow=0.02)
    out = stop_at(proc, 2, 4, signal.SIGTERM)
    assert proc.returncode == 143, out[-3000:]
    assert "Preempted (SIGTERM) after batch" in out
    saved = torch.load(tmp_path / "backup" / "backup.pt", weights_only=True)
    assert saved["mid_epoch"]["epoch"] == 2
    finish(tmp_path)
    assert_same_result(straight_script, result(tmp_path))


@pytest.mark.slow
def test_sigterm_on_two_ranks_under_torchrun(tmp_path):
    straight_dir, stopped_dir = tmp_path / "straight", tmp_path / "stopped"
    straight = launch(straight_dir, torchrun=True)  # the reference runs beside the one that is stopped
    proc = launch(stopped_dir, torchrun=True, slow=0.02)
    out = stop_at(proc, 2, 3, signal.SIGTERM, timeout=180)
    reference = straight.communicate(timeout=240)[0]
    assert straight.returncode == 0, reference[-3000:]
    assert proc.returncode != 0, out[-3000:]  # torchrun reports the workers' status 143
    saved = torch.load(stopped_dir / "backup" / "backup.pt", weights_only=True)
    positions = saved["mid_epoch"]["positions"]
    assert len(positions) == 2 and positions[0]["batch"] == positions[1]["batch"]  # the ranks agreed on the step
    assert positions[0]["batch"] % 3 == 0  # ... at a logging point (log_step_freq=3)
    if positions[0]["batch"] % 2:  # inside an accumulation window (grad_accum_steps=2): each rank's gradients
        assert all(p["window"]["grads"] is not None for p in positions)
    finish(stopped_dir, torchrun=True)
    for rank in (0, 1):
        assert_same_result(result(straight_dir, rank), result(stopped_dir, rank))


def test_numpy_integers_are_batch_counts(tmp_path):
    """save_freq=np.int64(3) (a count from numpy arithmetic) is a number of batches, as int 3 is."""
    import numpy as np

    assert ModelCheckpoint(str(tmp_path / "x{batch}.pt"), save_freq=np.int64(3)).save_freq == 3
    assert BackupAndRestore(tmp_path, save_freq=np.int32(2)).save_freq == 2
    for bad in (True, 0, 2.5):
        with pytest.raises(ValueError, match="save_freq must be"):
            BackupAndRestore(tmp_path, save_freq=bad)
