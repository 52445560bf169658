"""Fault injection on files a fit reads and writes (issue 22, item 3): checkpoints written by a newer
torchfit, sharded (torch.distributed.checkpoint) directories that are damaged or of another net,
MLflow's default store, and a CSV log across two fits.

The harness is tests/test_faults.py's: ``attack`` snapshots everything a refused call must leave as
it was, checks the error and its message, compares the snapshot and trains once more.
"""
from __future__ import annotations

import copy
import os
import shutil
import warnings

import pytest
import torch
from torch import nn

import torchfit
from torchfit.callbacks import Callback, CSVLogger
from torchfit.checkpoint import digest
from torchfit.errors import CheckpointError
from test_faults import Snapshot, attack, data, flip_byte_inside, trained, trains_normally


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
