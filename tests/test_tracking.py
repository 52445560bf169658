"""MLflowLogger and WandbLogger: what a real fit logs, read back with each tracker's own format."""
from __future__ import annotations

import glob
import json
import os
import struct
import time

import pytest
from torch import nn

import torchfit
from torchfit.callbacks.tracking import MLflowLogger, WandbLogger, fit_params

from conftest import assert_same_weights, blobs, loader, mlp

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")



def _model(seed: int = 0) -> torchfit.Model:
    return torchfit.Model(mlp(seed=seed)).compile(nn.CrossEntropyLoss(), "adam", ["accuracy"], device="cpu")


def _fit(model: torchfit.Model, callback, epochs: int = 3):
    dl_train = loader(blobs(96), batch_size=16, shuffle=True)
    dl_val = loader(blobs(48, seed=1), batch_size=16)
    return model.fit(epochs, dl_train, dl_val, callbacks=[callback], verbose=0, log_step_freq=3)


def test_fit_params_names_the_settings():
    model = _model()
    got = fit_params(model, {"epochs": 5, "initial_epoch": 0, "steps": 4, "verbose": 0})
    assert got == {"epochs": 5, "initial_epoch": 0, "steps_per_epoch": 4, "optimizer": "Adam", "lr": 0.001,
                   "loss": "CrossEntropyLoss", "metrics": "accuracy"}
    model.loss_fn = nn.functional.mse_loss
    assert fit_params(model, {})["loss"] == "mse_loss"


# ------------------------------------------------------------------------------------------------ MLflow
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # One SQLite store for the module: creating its tables takes seconds.
    return str(tmp_path_factory.mktemp("mlruns"))


def test_mlflow_default_store_is_mlflows_own(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    # MLflow's own default here (what `mlflow ui` in this directory shows), its default artifact location
    assert MLflowLogger().resolved_tracking_uri() == (mlflow.get_tracking_uri(), None)
    assert mlflow.get_tracking_uri() == "sqlite:///" + str(tmp_path / "mlflow.db")
    uri, artifacts = MLflowLogger(tracking_uri="store").resolved_tracking_uri()
    assert uri == "sqlite:///" + str(tmp_path / "store" / "mlflow.db")
    assert artifacts == str(tmp_path / "store" / "artifacts")
    assert MLflowLogger(tracking_uri="http://localhost:5000").resolved_tracking_uri() == ("http://localhost:5000", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert MLflowLogger().resolved_tracking_uri() == ("sqlite:///elsewhere.db", None)


@pytest.mark.slow
def test_mlflow_run_holds_params_epoch_figures_and_a_loadable_checkpoint(store, tmp_path):
    from mlflow.tracking import MlflowClient

    logger = MLflowLogger(experiment_name="toy", run_name="first", tracking_uri=store, params={"note": "blobs"},
                          log_steps=True)
    model = _model()
    history = _fit(model, logger)
    client = MlflowClient(logger.resolved_tracking_uri()[0])
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert client.get_experiment(run.info.experiment_id).name == "toy"
    assert run.data.params == {"epochs": "3", "initial_epoch": "0", "steps_per_epoch": "6", "batch_size": "16",
                               "optimizer": "Adam", "lr": "0.001", "loss": "CrossEntropyLoss",
                               "metrics": "accuracy", "note": "blobs"}
    columns = [c for c in history.columns if c != "epoch"]
    assert columns == ["loss", "accuracy", "val_loss", "val_accuracy"]
    for column in columns:
        logged = sorted(client.get_metric_history(logger.run_id, column), key=lambda m: m.step)
        assert [m.step for m in logged] == [1, 2, 3]
        assert [m.value for m in logged] == history[column].tolist(), column  # exactly
    steps = sorted(client.get_metric_history(logger.run_id, "batch_loss"), key=lambda m: m.step)
    assert [m.step for m in steps] == model.step_history["global_step"].tolist()
    assert [m.value for m in steps] == model.step_history["loss"].tolist()
    assert [a.path for a in client.list_artifacts(logger.run_id)] == ["checkpoint.pt"]
    path = client.download_artifacts(logger.run_id, "checkpoint.pt", str(tmp_path))
    restored = _model(seed=1).load_checkpoint(path)
    assert_same_weights(restored.net, model.net)
    assert restored.epoch == 3 and restored.history.equals(model.history)


@pytest.mark.slow
def test_mlflow_logs_into_an_active_run_and_leaves_it_open(store, monkeypatch):
    logger = MLflowLogger(tracking_uri=store, log_checkpoint=False)
    uri = logger.resolved_tracking_uri()[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where mlflow.start_run puts the user's run
    with mlflow.start_run(run_name="mine") as mine:
        mlflow.log_param("epochs", 99)  # a clash: logged before, not overwritten
        with pytest.warns(RuntimeWarning, match=r"already has params \['epochs'\]"):
            history = _fit(_model(), logger, epochs=2)
        assert logger.run_id == mine.info.run_id
        assert mlflow.active_run().info.run_id == mine.info.run_id
        client = mlflow.tracking.MlflowClient(uri)
        assert client.get_run(mine.info.run_id).info.status == "RUNNING"
    run = client.get_run(mine.info.run_id)
    assert run.data.params["epochs"] == "99" and run.data.params["optimizer"] == "Adam"
    assert run.data.metrics["val_loss"] == history["val_loss"].iloc[-1]
    assert client.list_artifacts(mine.info.run_id) == []


@pytest.mark.slow
def test_mlflow_run_ends_even_when_the_checkpoint_cannot_be_saved(store, monkeypatch):
    logger = MLflowLogger(tracking_uri=store)
    model = _model()

    def broken(path):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_checkpoint", broken)
    with pytest.raises(OSError, match="disk full"):
        _fit(model, logger, epochs=1)
    client = mlflow.tracking.MlflowClient(logger.resolved_tracking_uri()[0])
    assert client.get_run(logger.run_id).info.status == "FINISHED"


# ---------------------------------------------------------------------------------------------------- W&B
def _wandb_records(path: str):
    """The protobuf records of a ``.wandb`` file (a LevelDB-style log: 32 KiB blocks of CRC'd chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 or pos + 7 + length > len(data):  # zero padding, or a chunk still being written
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL, FIRST / MIDDLE, LAST
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


def _read_offline_run(root: str, run_id: str):
    files = glob.glob(os.path.join(root, "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb"))
    assert len(files) == 1, files
    # wandb's service process writes the file; run.finish() can return before it has written
    # the last records (seen on a loaded machine), so wait for the closing "exit" record.
    deadline = time.monotonic() + 30
    records = list(_wandb_records(files[0]))
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.1)
        records = list(_wandb_records(files[0]))
    config, history, summary, artifacts = {}, [], {}, []
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "artifact":
            artifacts.append(record.artifact)
    return config, history, summary, artifacts


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    yield str(tmp_path / "runs")
    if wandb.run is not None:  # a failed test must not leave a run for the next one
        wandb.run.finish()


def test_wandb_offline_run_holds_config_epoch_figures_and_a_loadable_checkpoint(offline_wandb):
    logger = WandbLogger(project="toy", name="first", dir=offline_wandb, mode="offline", config={"note": "blobs"})
    model = _model()
    history = _fit(model, logger)
    assert wandb.run is None  # the logger finished the run it started
    config, logged, summary, artifacts = _read_offline_run(offline_wandb, logger.run.id)
    assert {k: config[k] for k in ("epochs", "batch_size", "optimizer", "lr", "loss", "note")} == {
        "epochs": 3, "batch_size": 16, "optimizer": "Adam", "lr": 0.001, "loss": "CrossEntropyLoss", "note": "blobs"}
    rows = [{k: row[k] for k in history.columns} for row in logged]
    assert rows == history.to_dict("records")  # every epoch, every figure exactly
    last = history.iloc[-1].to_dict()
    assert {k: summary[k] for k in history.columns} == last
    assert len(artifacts) == 1
    artifact = artifacts[0]
    assert (artifact.name, artifact.type) == (f"checkpoint-{logger.run.id}", "model")
    (entry,) = artifact.manifest.contents
    assert entry.path == "checkpoint.pt"
    restored = _model(seed=1).load_checkpoint(entry.local_path)
    assert_same_weights(restored.net, model.net)
    assert restored.epoch == 3


def test_wandb_logs_into_an_active_run_and_leaves_it_open(offline_wandb):
    os.makedirs(offline_wandb, exist_ok=True)
    mine = wandb.init(project="toy", dir=offline_wandb, mode="offline")
    logger = WandbLogger(log_checkpoint=False, log_steps=True)
    model = _model()
    history = _fit(model, logger, epochs=2)
    assert wandb.run is mine and logger.run is mine
    mine.log({"after": 1.0})  # still open
    mine.finish()
    _, logged, summary, artifacts = _read_offline_run(offline_wandb, mine.id)
    assert summary["val_loss"] == history["val_loss"].iloc[-1] and summary["after"] == 1.0
    steps = [row for row in logged if "batch/loss" in row]
    assert [row["global_step"] for row in steps] == model.step_history["global_step"].tolist()
    assert [row["batch/loss"] for row in steps] == model.step_history["loss"].tolist()
    assert artifacts == []


def test_wandb_mode_is_checked():
    with pytest.raises(ValueError, match="mode"):
        WandbLogger(mode="offlne")


@pytest.mark.parametrize("cls, package", [(MLflowLogger, "mlflow"), (WandbLogger, "wandb")])
def test_a_missing_package_fails_when_the_logger_is_built(cls, package, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(ImportError, match=rf'pip install {package} \(or pip install "torchfit-keras\[{package}\]"\)'):
        cls()
