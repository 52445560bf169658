"""fit(num_processes=N): workers started from the calling process (a notebook, a script) hand back
rank 0's weights, optimizer state, history and epoch; crashes and Ctrl-C end every worker."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import nbformat
import pytest
import torch
from torch.utils.data import DataLoader

from torchfit import distributed
from torchfit.callbacks import EarlyStopping, LambdaCallback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "dist_scripts"))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import scenarios as sc  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "tests"))


def children() -> list:
    """Live (not zombie) processes whose parent is this one, read from /proc."""
    me, found = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.append(int(pid))
    return found


def loaders(batch_size: int, n: int = 64):
    return (DataLoader(sc.data(n, 1), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(3)),
            DataLoader(sc.data(32, 2), batch_size=batch_size))


def weights(model):
    return {k: v.clone() for k, v in model.net.state_dict().items()}


needs_fork = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux")


# --------------------------------------------------------------- handing back


@pytest.mark.slow
@needs_fork
def test_two_workers_hand_back_weights_optimizer_history_epoch_and_callback_state():
    before = set(children())
    model = sc.compiled(sc.mlp(seed=0))
    stopper = EarlyStopping(monitor="val_loss", patience=5)
    history = model.fit(2, *loaders(8), verbose=0, callbacks=[stopper], num_processes=2)
    assert model.epoch == 2 and model.global_step == 2 * 4  # 64 samples / 2 ranks / batch 8
    assert list(history["epoch"]) == [1, 2] and history.equals(model.history)
    assert set(children()) <= before  # every worker reaped
    # the weights and the momentum buffers are rank 0's, i.e. trained: not the initial ones
    assert not torch.equal(model.net.state_dict()["0.weight"], sc.mlp(seed=0).state_dict()["0.weight"])
    state = model.optimizer.state_dict()["state"]
    assert len(state) == 4 and all("momentum_buffer" in s for s in state.values())
    # the user's callback objects in this process got rank 0's state back
    assert stopper.state_dict()["best"] == pytest.approx(model.history["val_loss"].min())


@pytest.mark.slow
@needs_fork
def test_launched_fit_equals_ddp_semantics_exactly_without_shuffling():
    # unshuffled: rank r takes samples r, r+2, ...; the gradient mean over both ranks' batches of 8 is
    # the mean over the interleaved batch of 16, so one process with batch 16 trains the same weights
    model = sc.compiled(sc.mlp(seed=0))
    ds, ds_val = sc.data(64, 1), sc.data(32, 2)
    history = model.fit(2, DataLoader(ds, batch_size=8), DataLoader(ds_val, batch_size=8), verbose=0,
                        num_processes=2)
    ref = sc.compiled(sc.mlp(seed=0))
    ref_history = ref.fit(2, DataLoader(ds, batch_size=16), DataLoader(ds_val, batch_size=16), verbose=0)
    for k, v in ref.net.state_dict().items():
        torch.testing.assert_close(model.net.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    ref_state = ref.optimizer.state_dict()["state"]
    for i, s in model.optimizer.state_dict()["state"].items():
        torch.testing.assert_close(s["momentum_buffer"], ref_state[i]["momentum_buffer"], rtol=1e-5, atol=1e-6)
    for col in ref_history:
        assert list(history[col]) == pytest.approx(list(ref_history[col]), rel=1e-5), col
    # and it continues in this process like any model
    assert model.evaluate(DataLoader(ds_val, batch_size=8))["val_loss"] == pytest.approx(
        ref.evaluate(DataLoader(ds_val, batch_size=8))["val_loss"], rel=1e-5)
    ref.fit(1, DataLoader(ds, batch_size=16), verbose=0)
    model.fit(1, DataLoader(ds, batch_size=16), verbose=0)
    assert model.epoch == 3 and list(model.history["epoch"]) == [1, 2, 3]


@pytest.mark.slow
@needs_fork
def test_a_checkpoint_saved_after_a_launched_fit_resumes_it(tmp_path):
    model = sc.compiled(sc.mlp(seed=0))
    model.fit(1, *loaders(8), verbose=0, num_processes=2)
    model.save_checkpoint(tmp_path / "c.pt")
    fresh = sc.compiled(sc.mlp(seed=5)).load_checkpoint(tmp_path / "c.pt")
    for k, v in model.net.state_dict().items():
        assert torch.equal(fresh.net.state_dict()[k], v), k
    assert fresh.epoch == 1 and len(fresh.history) == 1
    # resuming through the launcher continues the run, and the loaded state is not applied twice
    fresh.fit(2, *loaders(8), verbose=0, resume_from=tmp_path / "c.pt", num_processes=2)
    straight = sc.compiled(sc.mlp(seed=0))
    straight.fit(2, *loaders(8), verbose=0, num_processes=2)
    for k, v in straight.net.state_dict().items():
        assert torch.equal(fresh.net.state_dict()[k], v), k
    assert fresh.epoch == 2 and fresh.training_state.pending_resume is None


# --------------------------------------------------------------- refusals


def test_cuda_initialised_in_this_process_is_refused_before_anything_starts(monkeypatch):
    model = sc.compiled(sc.mlp(seed=0))
    before = weights(model)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="CUDA was already initialised.*Restart the kernel.*device='cpu'"):
        model.fit(1, *loaders(8), num_processes=2)
    assert model.epoch == 0 and not children()
    for k, v in before.items():
        assert torch.equal(model.net.state_dict()[k], v)


def test_num_processes_inside_a_torchrun_job_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = sc.compiled(sc.mlp(seed=0))
    with pytest.raises(RuntimeError, match="already one of a distributed job.*drop num_processes"):
        model.fit(1, *loaders(8), num_processes=2)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_num_processes_must_be_a_whole_number(bad):
    model = sc.compiled(sc.mlp(seed=0))
    with pytest.raises(ValueError, match="num_processes must be a whole number"):
        model.fit(1, *loaders(8), num_processes=bad)


def test_one_process_is_a_plain_fit():
    model, ref = sc.compiled(sc.mlp(seed=0)), sc.compiled(sc.mlp(seed=0))
    model.fit(1, *loaders(8), verbose=0, num_processes=1)
    ref.fit(1, *loaders(8), verbose=0)
    for k, v in ref.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v)


def test_fork_on_linux_spawn_elsewhere(monkeypatch):
    from torchfit.distributed import notebook

    assert notebook.start_method() == ("fork" if sys.platform.startswith("linux") else "spawn")
    monkeypatch.setattr(notebook.sys, "platform", "darwin")
    assert notebook.start_method() == "spawn"


# --------------------------------------------------------------- failures and Ctrl-C


def fail_on_rank_1(kind: str):
    def hook(batch, logs):
        if distributed.rank() == 1 and batch == 1:  # the second batch: hooks count from 0
            if kind == "raise":
                raise ValueError("rank one is broken")
            os.kill(os.getpid(), signal.SIGKILL)
    return LambdaCallback(on_train_batch_end=hook)


@pytest.mark.slow
@needs_fork
@pytest.mark.parametrize("kind", ["raise", "kill"])
def test_a_failing_worker_ends_the_call_with_its_error_and_stops_the_others(kind):
    model = sc.compiled(sc.mlp(seed=0))
    before = weights(model)
    t = time.monotonic()
    with pytest.raises(distributed.WorkerError) as info:
        model.fit(2, *loaders(8), verbose=0, callbacks=[fail_on_rank_1(kind)], num_processes=2)
    assert time.monotonic() - t < 60  # rank 0, blocked in an all-reduce, was stopped, not waited for
    if kind == "raise":
        assert "worker rank 1 failed" in str(info.value) and "ValueError: rank one is broken" in str(info.value)
    else:
        assert "worker rank 1 was killed by signal 9" in str(info.value)
    assert not children()
    assert model.epoch == 0 and model.history.empty
    for k, v in before.items():
        assert torch.equal(model.net.state_dict()[k], v)


def interrupt_when(path, times: int, gap: float):
    """SIGINT this process ``times`` times once ``path`` exists (a worker writes it), as a kernel interrupt does."""
    def run():
        while not os.path.exists(path):
            time.sleep(0.02)
        for _ in range(times):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(gap)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def slow_after_first_epoch(path, delay: float):
    def epoch_end(epoch, logs):
        if distributed.rank() == 0 and epoch == 0:  # the end of the first epoch (0-based)
            open(path, "w").close()

    return LambdaCallback(on_epoch_end=epoch_end, on_train_batch_end=lambda batch, logs: time.sleep(delay))


@pytest.mark.slow
@needs_fork
def test_ctrl_c_stops_every_worker_together_and_hands_back_the_finished_epochs(tmp_path, capsys):
    marker = tmp_path / "epoch1"
    model = sc.compiled(sc.mlp(seed=0))
    thread = interrupt_when(marker, times=1, gap=0)
    history = model.fit(100, *loaders(8), verbose=0, log_step_freq=1,
                        callbacks=[slow_after_first_epoch(marker, 0.05)], num_processes=2)
    thread.join()
    assert 1 <= len(history) < 100 and model.epoch == len(history)
    assert model.global_step > 4 * len(history) - 1  # trained: the weights are where the workers stopped
    assert "stopping every worker" in capsys.readouterr().err
    assert not children()


@pytest.mark.slow
@needs_fork
def test_a_second_ctrl_c_stops_the_workers_at_once_and_leaves_the_model_as_it_was(tmp_path):
    marker = tmp_path / "epoch1"
    model = sc.compiled(sc.mlp(seed=0))
    before = weights(model)
    thread = interrupt_when(marker, times=2, gap=0.3)
    t = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        # no logging point inside an epoch and slow batches: the first Ctrl-C cannot end training soon
        model.fit(100, *loaders(8), verbose=0, log_step_freq=1000,
                  callbacks=[slow_after_first_epoch(marker, 0.5)], num_processes=2)
    thread.join()
    assert time.monotonic() - t < 30
    assert not children()
    assert model.epoch == 0
    for k, v in before.items():
        assert torch.equal(model.net.state_dict()[k], v)


# --------------------------------------------------------------- a real Jupyter kernel

NOTEBOOK_CELLS = [
    """import sys, torch
sys.path.insert(0, {scripts!r})
import scenarios as sc
from torch.utils.data import DataLoader
torch.set_num_threads(1)
ds, ds_val = sc.data(64, 1), sc.data(32, 2)
model = sc.compiled(sc.mlp(seed=0))""",
    "history = model.fit(2, DataLoader(ds, batch_size=8), DataLoader(ds_val, batch_size=8), num_processes=2)",
    """ref = sc.compiled(sc.mlp(seed=0))
ref.fit(2, DataLoader(ds, batch_size=16), DataLoader(ds_val, batch_size=16), verbose=0)
diff = max((a - b).abs().max().item() for a, b in zip(model.net.state_dict().values(), ref.net.state_dict().values()))
print("epoch", model.epoch, "rows", len(history), "close", diff < 1e-5)""",
]


@pytest.mark.slow
@needs_fork
def test_fit_with_num_processes_in_a_real_jupyter_kernel(tmp_path):
    import run_notebooks

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.format(scripts=os.path.join(ROOT, "tests", "dist_scripts")))
                for c in NOTEBOOK_CELLS]
    nb.metadata["kernelspec"] = run_notebooks.PUBLIC_KERNELSPEC
    path = tmp_path / "launch.ipynb"
    nbformat.write(nb, str(path))
    done = run_notebooks.execute(path, timeout=120)
    outputs = [o for c in done.cells for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in done.cells[2].outputs)
    assert "epoch 2 rows 2 close True" in text
    # rank 0's printer drew through the kernel: one HTML epoch table (updated in place, so the stored
    # notebook holds its final state with both epochs) and the step line, no text tables, no stderr noise
    fit_outputs = done.cells[1].outputs
    tables = [o for o in fit_outputs if 'class="torchfit-epochs"' in o.get("data", {}).get("text/html", "")]
    assert len(tables) == 1 and tables[0]["data"]["text/html"].count("<tr>") == 3  # header + 2 epochs
    assert not any("| epoch |" in o.get("text", "") for o in fit_outputs)
    assert not any(o.get("name") == "stderr" for o in fit_outputs), [o.get("text") for o in fit_outputs]


# --------------------------------------------------------------- Slurm


def test_a_slurm_task_without_torchrun_is_a_clear_error(monkeypatch):
    env = {"SLURM_NTASKS": "4", "SLURM_PROCID": "2"}
    with pytest.raises(RuntimeError, match=r"Slurm task 2 of SLURM_NTASKS=4.*srun --ntasks-per-node=1 torchrun"):
        distributed.launch_info(env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RuntimeError, match="Slurm task 2"):
        sc.compiled(sc.mlp(seed=0))  # refused before any weight moves


def test_slurm_single_tasks_and_torchrun_under_slurm_are_fine():
    assert distributed.launch_info({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert distributed.launch_info({"SLURM_NTASKS": "8"}) is None  # an allocation, not a task of a step
    under_torchrun = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                      "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    assert distributed.launch_info(under_torchrun).rank == 5


def sbatch_script() -> str:
    """The Slurm recipe as docs/distributed.md shows it (the bash block with #SBATCH lines)."""
    with open(os.path.join(ROOT, "docs", "distributed.md")) as f:
        blocks = f.read().split("```bash\n")[1:]
    return next(b.split("```")[0] for b in blocks if "#SBATCH" in b)


@pytest.mark.slow
def test_the_documented_slurm_recipe_trains_on_two_nodes(tmp_path):
    from conftest import free_port

    scripts = os.path.join(ROOT, "tests", "dist_scripts")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text(f"#!/bin/sh\nexec {sys.executable} {scripts}/fake_srun.py \"$@\"\n")
    (fake_bin / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\n")
    for tool in ("srun", "scontrol"):
        os.chmod(fake_bin / tool, 0o755)
    script = sbatch_script().replace("train.py", f"{scripts}/slurm_train.py {tmp_path}")
    script = script.replace(":29500", f":{free_port()}")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    env.update(PATH=os.pathsep.join([str(fake_bin), os.path.dirname(sys.executable), env.get("PATH", "")]),
               PYTHONPATH=ROOT, OMP_NUM_THREADS="1", SLURM_NNODES="2", GPUS_PER_NODE="1", SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST="node[1-2]")
    import subprocess

    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["world"] == r1["world"] == 2 and {r0["slurm_procid"], r1["slurm_procid"]} == {"0", "1"}
    ref = sc.compiled(sc.mlp(seed=0))
    ref.fit(1, DataLoader(sc.data(64, 1), batch_size=16), verbose=0)
    for k, v in ref.net.state_dict().items():
        torch.testing.assert_close(r0["net"][k], v, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- spawn (macOS, Windows)


@pytest.mark.slow
def test_spawn_start_method_hands_back_the_same_model():
    from torchfit.distributed import launch_fit

    model, ref = sc.compiled(sc.mlp(seed=0)), sc.compiled(sc.mlp(seed=0))
    ds = sc.data(64, 1)
    launch_fit(model, 2, {"epochs": 1, "dl_train": DataLoader(ds, batch_size=8), "verbose": 0}, method="spawn")
    ref.fit(1, DataLoader(ds, batch_size=16), verbose=0)
    for k, v in ref.net.state_dict().items():
        torch.testing.assert_close(model.net.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    assert model.epoch == 1


def test_spawn_with_something_unpicklable_is_refused_before_starting():
    from torchfit.callbacks import LambdaCallback
    from torchfit.distributed import launch_fit

    model = sc.compiled(sc.mlp(seed=0))
    with pytest.raises(TypeError, match="'spawn'.*picklable.*Define your classes and functions in a module"):
        launch_fit(model, 2, {"epochs": 1, "dl_train": loaders(8)[0],
                              "callbacks": [LambdaCallback(on_epoch_end=lambda e, logs: None)]}, method="spawn")
    assert model.epoch == 0


@pytest.mark.slow
@needs_fork
def test_workers_die_with_a_killed_kernel(tmp_path):
    import subprocess

    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    parent = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "dist_scripts", "killed_parent.py"),
                               str(tmp_path)], env=env)
    pid_files = [tmp_path / f"worker{r}.pid" for r in range(2)]
    deadline = time.monotonic() + 60
    while not all(p.exists() and p.read_text() for p in pid_files):
        assert parent.poll() is None and time.monotonic() < deadline, "the workers never started"
        time.sleep(0.1)
    workers = [int(p.read_text()) for p in pid_files]
    parent.kill()  # what a kernel restart does: no chance to clean up
    parent.wait()

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)]
