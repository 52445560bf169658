"""Fault injection on files a fit reads and writes (issue 22, item 3): checkpoints written by a newer
torchfit, sharded (torch.distributed.checkpoint) directories that are damaged or of another net,
MLflow's default store, and a CSV log across two fits.

The harness is tests/test_faults.py's: ``attack`` snapshots everything a refused call must leave as
it was, checks the error and its message, compares the snapshot and trains once more.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import sys
import warnings

import pytest
import torch
from torch import nn

import torchfit
from torchfit.callbacks import Callback, CSVLogger
from torchfit.checkpoint import digest
from torchfit.errors import CheckpointError
from test_faults import Snapshot, attack, data, flip_byte_inside, trained, trains_normally

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------ a checkpoint written by a newer torchfit
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of a 2-epoch run (another seed than the models it is loaded into) and its dict."""
    path = tmp_path_factory.mktemp("saved") / "good.pt"
    trained(seed=7, epochs=2).save_checkpoint(path)
    return path, torch.load(path, weights_only=True)


def _newer(good: dict, **entries) -> dict:
    """``good`` with ``entries`` added the way a newer torchfit writes them: in the digest too."""
    ck = copy.deepcopy(good)
    ck.update(entries)
    ck["digest"] = digest(ck)
    return ck


def _same_state(a: torchfit.Model, b: torchfit.Model) -> None:
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k]), k
    assert (a.epoch, a.global_step) == (b.epoch, b.global_step)
    assert a.training_state.history == b.training_state.history


def test_an_unknown_entry_from_a_newer_torchfit_is_ignored_with_a_warning(saved, tmp_path):
    path, good = saved
    torch.save(_newer(good, ema_v2={"shadow": torch.ones(3)}, notes="from the future"), tmp_path / "newer.pt")
    model, reference = trained(), trained()
    reference.load_checkpoint(path)
    with pytest.warns(RuntimeWarning, match=r"'ema_v2', 'notes'.*newer torchfit.*ignored") as record:
        model.load_checkpoint(tmp_path / "newer.pt")
    assert "newer.pt" in str(record[0].message)
    _same_state(model, reference)
    trains_normally(model)


def test_an_unknown_entry_still_has_its_bytes_checked(saved, tmp_path):
    # ignored is not unchecked: a damaged tensor in an entry this version skips still names the file damaged
    path, good = saved
    ck = _newer(good, ema_v2={"shadow": torch.arange(64, dtype=torch.float32)})
    torch.save(ck, tmp_path / "newer.pt")
    flip_byte_inside(tmp_path / "newer.pt", ck["ema_v2"]["shadow"])
    model = trained()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        attack(model, lambda: model.load_checkpoint(tmp_path / "newer.pt"), CheckpointError,
               r"'ema_v2'\['shadow'\] does not match the digest", tmp_path, same_fit_state=True)


def test_unknown_keys_inside_known_entries_load(saved, tmp_path):
    # a newer torchfit's richer mid-epoch record and an RNG it keeps (e.g. another device's) load;
    # the RNG state this version cannot restore is named
    path, good = saved
    rng = dict(good["rng"], mps=torch.zeros(8, dtype=torch.uint8))
    torch.save(_newer(good, rng=rng, mid_epoch={"epoch": 3, "batches_done": 2, "tracker": {"loss": 0.5}}),
               tmp_path / "newer.pt")
    model = trained()
    with pytest.warns(RuntimeWarning) as record:
        model.load_checkpoint(tmp_path / "newer.pt")
    shown = " | ".join(str(w.message) for w in record)
    assert "'rng'['mps']" in shown and "newer torchfit" in shown
    assert "during epoch 3" in shown  # the mid-epoch warning still says what a part-way epoch means
    assert model.epoch == 2
    trains_normally(model)


def test_a_newer_format_version_is_still_refused_and_says_what_to_do(saved, tmp_path):
    # the version marker is how a writer says "reading this as version 1 would change behaviour"
    ck = copy.deepcopy(saved[1])
    ck["torchfit_checkpoint"] = 2
    torch.save(ck, tmp_path / "v2.pt")
    model = trained()
    attack(model, lambda: model.load_checkpoint(tmp_path / "v2.pt"), CheckpointError,
           r"format version 2.*newer torchfit.*upgrade", tmp_path, same_fit_state=True)


# ------------------------------------------------ CSVLogger across two fits
class _Note(Callback):
    """Adds a figure of its own to the epoch logs (as a user's callback may)."""

    def on_epoch_end(self, epoch, logs):
        logs["note"] = 10.0 * (epoch + 1)


def test_csv_logger_keeps_a_callbacks_column_for_earlier_fits(tmp_path):
    path = tmp_path / "log.csv"
    model = trained(epochs=0)
    model.fit(2, data(), callbacks=[_Note(), CSVLogger(path)], verbose=0)
    first = CSVLogger.read(path)
    assert list(first["note"]) == [10.0, 20.0]
    model.fit(1, data(), callbacks=[CSVLogger(path)], verbose=0)
    log = CSVLogger.read(path)
    assert list(log["epoch"]) == [1, 2, 3]
    assert list(log["note"][:2]) == [10.0, 20.0] and log["note"].isna().iloc[2]
    assert list(log["loss"]) == list(model.history["loss"])


def test_csv_logger_does_not_take_columns_from_another_runs_file(tmp_path):
    # the rows kept are this run's only: a stale file with other figures for the same epochs lends nothing
    path = tmp_path / "log.csv"
    trained(seed=5, epochs=0).fit(2, data(), callbacks=[_Note(), CSVLogger(path)], verbose=0)
    model = trained(epochs=0)
    model.fit(2, data(seed=1), verbose=0)
    model.fit(1, data(), callbacks=[CSVLogger(path)], verbose=0)
    log = CSVLogger.read(path)
    assert "note" not in log.columns and list(log["loss"]) == list(model.history["loss"])



def test_csv_logger_over_a_file_that_is_not_a_log_rewrites_it(tmp_path):
    # reading the old file to keep its columns is best effort: bytes that are no CSV are replaced, as before
    path = tmp_path / "log.csv"
    path.write_bytes(bytes(range(256)) * 4)
    model = trained(epochs=1)
    model.fit(1, data(), callbacks=[CSVLogger(path)], verbose=0)
    assert list(CSVLogger.read(path)["loss"]) == list(model.history["loss"])

class _SaveNow(Callback):
    """Writes a checkpoint at each epoch end, before the callbacks after it run."""

    def __init__(self, path):
        self.path = path

    def on_epoch_end(self, epoch, logs):
        self.model.save_checkpoint(self.path)


def test_csv_logger_keeps_a_column_the_resumed_history_lacks(tmp_path):
    # the last checkpoint was taken before _Note added epoch 2's figure: the history it restores lacks
    # it, the CSV file has it, and the next fit's rewrite must not erase it
    path, ckpt = tmp_path / "log.csv", tmp_path / "c.pt"
    trained(epochs=0).fit(2, data(), callbacks=[_SaveNow(ckpt), _Note(), CSVLogger(path)], verbose=0)
    model = trained(epochs=0)
    model.load_checkpoint(ckpt)
    assert model.history["note"].isna().iloc[1]  # epoch 2's row was saved before _Note ran
    model.fit(1, data(), callbacks=[CSVLogger(path)], verbose=0)
    log = CSVLogger.read(path)
    assert list(log["epoch"]) == [1, 2, 3] and list(log["note"][:2]) == [10.0, 20.0]
    assert list(log["loss"]) == list(model.history["loss"])


# ------------------------------------------------ MLflowLogger's default store
def _mlflow_fit(logger) -> torchfit.Model:
    model = trained(epochs=0)
    model.fit(1, data(), callbacks=[logger], verbose=0)
    return model


@pytest.mark.slow  # MLflow creates an SQLite store's tables on first use: seconds
def test_mlflow_logger_without_uri_writes_where_mlflow_ui_looks(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.utils import _get_default_tracking_uri
    from torchfit.callbacks.tracking import MLflowLogger

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    logger = MLflowLogger(experiment_name="here", log_checkpoint=False)
    model = _mlflow_fit(logger)
    # `mlflow ui` (and `mlflow server`) with no --backend-store-uri open _get_default_tracking_uri()
    ui = MlflowClient(_get_default_tracking_uri())
    runs = ui.search_runs([ui.get_experiment_by_name("here").experiment_id])
    assert [r.info.run_id for r in runs] == [logger.run_id]
    assert runs[0].data.metrics["loss"] == model.history["loss"].iloc[-1]
    assert (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns" / "mlflow.db").exists()


@pytest.mark.slow
def test_mlflow_logger_without_uri_follows_the_environment(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from torchfit.callbacks.tracking import MLflowLogger

    uri = "sqlite:///" + str(tmp_path / "team.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    logger = MLflowLogger(experiment_name="env", log_checkpoint=False)
    _mlflow_fit(logger)
    client = MlflowClient(uri)
    assert client.get_run(logger.run_id).info.status == "FINISHED"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


# ------------------------------------------------ sharded (torch.distributed.checkpoint) directories
# save_sharded works in one process (DCP writes one shard file); the same checks run on every rank.
def _save_sharded(model, directory) -> None:
    with warnings.catch_warnings():  # DCP: "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore", UserWarning)
        torchfit.distributed.save_sharded(model, directory)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A sharded directory of a 2-epoch run, and the model that wrote it."""
    source = trained(seed=7, epochs=2)
    directory = tmp_path_factory.mktemp("sharded") / "dcp"
    _save_sharded(source, directory)
    return directory, source


def _copy(directory, tmp_path):
    target = tmp_path / "dcp"
    shutil.copytree(directory, target)
    return target


def _shard(directory):
    names = [n for n in os.listdir(directory) if n.endswith(".distcp")]
    assert len(names) == 1
    return directory / names[0]


def _cut(path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _flip_shard(directory, source) -> None:
    flip_byte_inside(_shard(directory), source.net.state_dict()["3.weight"])


def _flip_extra(directory, source) -> None:
    ck = torch.load(directory / "torchfit.pt", weights_only=True)
    flip_byte_inside(directory / "torchfit.pt", ck["rng"]["torch"])


DAMAGED_DIRECTORIES = {
    "a shard missing": (lambda d, s: os.remove(_shard(d)), r"file '__0_0\.distcp', which DCP's \.metadata lists, "
                                                          r"is missing.*use another copy"),
    "a shard cut short": (lambda d, s: _cut(_shard(d)), r"'__0_0\.distcp' has \d+ bytes but had \d+ when it was"),
    "flipped bytes in a shard": (_flip_shard, r"'__0_0\.distcp' does not match the sha256 written with it"),
    "the metadata cut short": (lambda d, s: _cut(d / ".metadata"), r"'\.metadata' has \d+ bytes but had \d+"),
    "flipped bytes in the small file": (_flip_extra, r"'rng'\['torch'\] does not match the digest"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_DIRECTORIES))
@pytest.mark.parametrize("fresh", [False, True], ids=["trained", "fresh"])
def test_a_damaged_sharded_directory_changes_nothing_and_names_the_file(case, fresh, sharded, tmp_path):
    # fresh: an optimizer with no state yet, which DCP's get_state_dict would fill in
    damage, match = DAMAGED_DIRECTORIES[case]
    target = _copy(sharded[0], tmp_path)
    damage(target, sharded[1])
    model = trained(epochs=0 if fresh else 1)
    info = attack(model, lambda: model.load_checkpoint(target), CheckpointError, match, tmp_path,
                  same_fit_state=True)
    assert "dcp" in str(info.value) and "nothing was changed" in str(info.value)
    assert isinstance(info.value, Exception)  # not DCP's CheckpointException, a BaseException


def test_a_cut_shard_of_a_directory_without_digests_is_found_from_the_metadata(sharded, tmp_path):
    # directories written before digests: the sizes DCP's metadata records still show a cut file
    target = _copy(sharded[0], tmp_path)
    extra = torch.load(target / "torchfit.pt", weights_only=True)
    for entry in ("shards", "digest", "optimizer_class"):
        del extra[entry]
    torch.save(extra, target / "torchfit.pt")
    _cut(_shard(target))
    model = trained()
    attack(model, lambda: model.load_checkpoint(target), CheckpointError,
           r"'__0_0\.distcp' has \d+ bytes but its data ends at byte \d+: it was cut short", tmp_path,
           same_fit_state=True)


def _wide_model(width: int = 32) -> torchfit.Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 3))
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters()), device="cpu")
    model.fit(1, data(), verbose=0)
    return model


def test_a_sharded_directory_of_a_wider_net_is_refused_before_anything_changes(tmp_path):
    _save_sharded(_wide_model(), tmp_path / "wide")
    model = trained()
    attack(model, lambda: model.load_checkpoint(tmp_path / "wide"), CheckpointError,
           r"saved from a different net; keys with other shapes: 0\.weight: checkpoint \(32, 4\) vs net \(16, 4\)"
           r".*Build the same architecture", tmp_path, same_fit_state=True)


def test_a_sharded_sgd_directory_is_refused_by_an_adam_model(tmp_path):
    _save_sharded(trained(seed=2, optimizer="sgd"), tmp_path / "sgd")
    model = trained()
    attack(model, lambda: model.load_checkpoint(tmp_path / "sgd"), CheckpointError,
           r"state of a SGD optimizer; this model's optimizer is Adam.*optimizer=SGD", tmp_path, same_fit_state=True)


@pytest.mark.parametrize("fresh", [False, True], ids=["trained", "fresh"])
def test_a_read_failing_inside_dcp_is_a_checkpoint_error_and_changes_nothing(fresh, sharded, tmp_path,
                                                                             monkeypatch):
    # every check passes, then the disk fails while DCP reads: torch raises its CheckpointException
    # (a BaseException, which `except Exception` misses) unless torchfit turns it into its own error
    from torch.distributed.checkpoint import FileSystemReader

    def failing_read(self, plan, planner):
        raise OSError("Input/output error")

    monkeypatch.setattr(FileSystemReader, "read_data", failing_read)
    model = trained(epochs=0 if fresh else 1)
    snap = Snapshot(model, tmp_path, same_fit_state=True)
    with pytest.raises(CheckpointError, match=r"dcp.*loading it failed \(OSError: Input/output error\).*rolled back"):
        model.load_checkpoint(sharded[0])
    snap.assert_same()
    monkeypatch.undo()
    trains_normally(model)


@pytest.mark.parametrize("interrupt", [RuntimeError("device lost"), KeyboardInterrupt()])
def test_a_failure_while_applying_a_sharded_directory_rolls_everything_back(interrupt, sharded, tmp_path,
                                                                            monkeypatch):
    model = trained()

    def fail(*args, **kwargs):  # the net is loaded first, the optimizer second: fail there
        raise interrupt

    monkeypatch.setattr(model.optimizer, "load_state_dict", fail)
    expected = CheckpointError if isinstance(interrupt, Exception) else KeyboardInterrupt
    snap = Snapshot(model, tmp_path, same_fit_state=True)
    with pytest.raises(expected, match="rolled back" if expected is CheckpointError else None):
        model.load_checkpoint(sharded[0])
    snap.assert_same()
    monkeypatch.undo()
    trains_normally(model)


def test_a_good_sharded_directory_loads_exactly(sharded, tmp_path):
    directory, source = sharded
    model = trained(epochs=0)
    model.load_checkpoint(directory)
    _same_state(model, source)
    for i, per in source.optimizer.state_dict()["state"].items():
        for name, value in per.items():
            assert torch.equal(model.optimizer.state_dict()["state"][i][name], value), (i, name)
    trains_normally(model)


def test_resume_from_a_damaged_sharded_directory_changes_nothing(sharded, tmp_path):
    target = _copy(sharded[0], tmp_path)
    _flip_shard(target, sharded[1])
    model = trained()
    attack(model, lambda: model.fit(4, data(), resume_from=target, verbose=0), CheckpointError,
           r"'__0_0\.distcp' does not match the sha256", tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torchrun with gloo on CPU: tested on Linux")
def test_under_torchrun_every_rank_refuses_a_damaged_sharded_directory_and_none_hangs(tmp_path):
    from conftest import torchrun

    proc = torchrun(os.path.join(ROOT, "tests", "dist_scripts", "sharded_faults.py"), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    expected = {"missing": r"'__1_0\.distcp', which DCP's \.metadata lists, is missing",
                "cut": r"'__1_0\.distcp' has \d+ bytes but had \d+", "flipped": r"'__1_0\.distcp' does not match"}
    for r, seen in enumerate(ranks):
        for how, match in expected.items():
            assert seen[how]["error"] is not None and re.search(match, seen[how]["error"]), (r, how, seen[how])
            assert seen[how]["unchanged"], (r, how)
        assert seen["good_equal"], r


def test_ctrl_c_inside_dcp_is_a_keyboard_interrupt_and_changes_nothing(sharded, tmp_path, monkeypatch):
    # DCP wraps whatever a rank raised, Ctrl-C included, in its CheckpointException: the user pressed Ctrl-C
    from torch.distributed.checkpoint import FileSystemReader

    def interrupted_read(self, plan, planner):
        raise KeyboardInterrupt

    monkeypatch.setattr(FileSystemReader, "read_data", interrupted_read)
    model = trained()
    snap = Snapshot(model, tmp_path, same_fit_state=True)
    with pytest.raises(KeyboardInterrupt):
        model.load_checkpoint(sharded[0])
    snap.assert_same()
    monkeypatch.undo()
    trains_normally(model)
