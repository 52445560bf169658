"""Experiment trackers: ``MLflowLogger`` and ``WandbLogger``.

Owns what a fit reports to a tracker and when: the run's parameters when
training begins (the fit's and the compile settings, plus the user's), the
epoch figures at each epoch end (step = epoch), optionally the running figures
at logging points, and the final checkpoint as an artifact when training ends.
Each logger starts and ends its own run, unless the user already has one active:
then it logs into that run and leaves it open. The figures are the epoch logs'
Python floats, sent as they are; nothing here reads tensors. mlflow and wandb
are optional extras, imported when a logger is built.
"""
from __future__ import annotations

import contextlib
import importlib.util
import numbers
import os
import tempfile
import time
import warnings
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

from ..errors import install_hint
from ..files import check_writable
from .base import is_logging_point
from .loggers import StepLogger

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["MLflowLogger", "WandbLogger", "fit_params"]


def fit_params(model: Any, params: Mapping[str, Any]) -> Dict[str, Any]:
    """The run's settings a tracker records: epochs, steps, batch size, optimizer, lr, loss, metrics.

    >>> # fit_params(model, callback.params) -> {'epochs': 10, 'optimizer': 'Adam', 'lr': 0.001, ...}

    ``params`` is what ``fit`` hands callbacks in ``set_params``. Unknown settings are
    left out rather than recorded as None.
    """
    opt = getattr(model, "optimizer", None)
    groups = getattr(opt, "param_groups", None) or []
    loss = getattr(model, "loss_fn", None)
    found = {
        "epochs": params.get("epochs"),
        "initial_epoch": params.get("initial_epoch"),
        "steps_per_epoch": params.get("steps"),
        "batch_size": _batch_size(params),
        "optimizer": type(opt).__name__ if opt is not None else None,
        "lr": float(groups[0]["lr"]) if groups and groups[0].get("lr") is not None else None,  # a tensor lr too
        "loss": None if loss is None else getattr(loss, "__name__", None) or type(loss).__name__,
        "metrics": ", ".join(model.compiled_metrics) or None,
    }
    return {k: v for k, v in found.items() if v is not None}


def _batch_size(params: Mapping[str, Any]) -> Optional[int]:
    size = params.get("batch_size")
    return size if isinstance(size, int) else None


@contextlib.contextmanager
def _checkpoint_file(model: Any) -> Iterator[str]:
    """The model's full checkpoint in a temporary file, for a tracker to copy as an artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "checkpoint.pt")
        model.save_checkpoint(path)
        yield path


def _mlflow_default_uri() -> str:
    """The tracking URI ``mlflow.start_run()`` would use here: ``mlflow.set_tracking_uri``'s, else
    ``MLFLOW_TRACKING_URI``, else MLflow's default store in the working directory (MLflow 3:
    ``sqlite:///mlflow.db``, or ``./mlruns`` where an older plain-file store already holds runs),
    which is also what ``mlflow ui`` started in that directory reads."""
    import mlflow

    return mlflow.get_tracking_uri()


def _require(package: str, user: str) -> None:
    # Checked when the callback is built, so a missing package fails before training, not after it.
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"{user} needs the {package} package: pip install {package} "
                          f"(or {install_hint(package)})")


def _numbers(logs: Mapping[str, Any], skip: Tuple[str, ...] = ("epoch",)) -> Dict[str, float]:
    return {k: float(v) for k, v in logs.items() if k not in skip and isinstance(v, numbers.Real)}


class MLflowLogger(StepLogger):
    """Log a fit to MLflow: parameters, per-epoch figures, and the final checkpoint as an artifact.

    >>> # model.fit(10, dl_train, dl_val, callbacks=[MLflowLogger(experiment_name="mnist")])
    >>> # then, in the same directory: mlflow ui

    ``tracking_uri``: None uses what MLflow itself would here (``mlflow.get_tracking_uri()``):
    ``MLFLOW_TRACKING_URI`` when set, else MLflow's default local store, ``./mlflow.db``
    (SQLite) with the artifacts in ``./mlruns``, which ``mlflow ui`` started in the same
    directory shows. A directory path gives a store there (an SQLite database
    ``<dir>/mlflow.db`` and artifacts in ``<dir>/artifacts``: browse it with ``mlflow ui
    --backend-store-uri sqlite:///<dir>/mlflow.db``); a URI (``sqlite:///...``,
    ``http://...``, ``file:...``) is used as it is. The global tracking URI is never changed.

    When training begins, a run named ``run_name`` is started in experiment
    ``experiment_name`` (created if missing) and these params are logged: epochs,
    initial_epoch, steps_per_epoch, batch_size (when known), optimizer (class
    name), lr, loss (class or function name), metrics, then ``params`` (yours; they
    win on equal keys). If an MLflow run is already active (``mlflow.start_run()``)
    the logger logs into it and leaves it open; params it already holds with the
    same value are not logged again, a changed value is skipped with a warning
    (MLflow params are immutable).

    At each epoch end every figure except ``epoch`` is logged with ``step=epoch``
    (``loss``, ``val_loss``, metrics, ``lr``), exactly as in ``model.history``.
    ``log_steps=True`` also logs the running figures at logging points
    (``log_step_freq``) as ``batch_<name>`` with ``step=model.global_step``.
    ``log_checkpoint=True`` (default) saves ``model.save_checkpoint`` to a
    temporary file when training ends and logs it as the artifact
    ``checkpoint.pt``; then the run it started is ended (status FINISHED).
    ``run_id`` holds the last run's id. Runs on the main process only.
    """

    rank_zero_only = True

    def __init__(
        self,
        experiment_name: str = "torchfit",
        run_name: Optional[str] = None,
        tracking_uri: Optional[PathLike] = None,
        params: Optional[Mapping[str, Any]] = None,
        tags: Optional[Mapping[str, str]] = None,
        log_steps: bool = False,
        log_checkpoint: bool = True,
    ):
        _require("mlflow", "MLflowLogger")
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tracking_uri = None if tracking_uri is None else os.fspath(tracking_uri)
        self.user_params = dict(params or {})
        self.tags = dict(tags or {})
        self.log_steps = bool(log_steps)
        self.log_checkpoint = bool(log_checkpoint)
        self.run_id: Optional[str] = None
        self._client: Any = None
        self._owns_run = False


    def set_params(self, params: dict) -> None:
        """Check, before the first step, that a local tracking store can be written."""
        super().set_params(params)
        uri = self.tracking_uri if self.tracking_uri is not None else _mlflow_default_uri()
        owner = f"MLflowLogger(tracking_uri={self.tracking_uri!r})"
        if uri.startswith("sqlite:///"):
            check_writable(owner, uri[len("sqlite:///"):])
        elif uri.startswith("file:"):
            check_writable(owner, uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):],
                           directory=True)
        elif "://" not in uri:
            check_writable(owner, uri, directory=True)

    def resolved_tracking_uri(self) -> Tuple[str, Optional[str]]:
        """``(tracking URI, artifact location for a new experiment or None)`` this logger writes to.

        ``tracking_uri=None``: MLflow's own choice, as ``mlflow.get_tracking_uri()`` makes it here
        (``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory, the store
        ``mlflow ui`` run in the same directory shows), with MLflow's default artifact location.
        """
        if self.tracking_uri is None:
            return _mlflow_default_uri(), None
        uri = self.tracking_uri
        if "://" in uri or uri.startswith("file:"):
            return uri, None
        root = os.path.abspath(uri)
        os.makedirs(root, exist_ok=True)
        return "sqlite:///" + os.path.join(root, "mlflow.db"), os.path.join(root, "artifacts")

    def on_train_begin(self, logs: dict) -> None:
        import mlflow
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        active = mlflow.active_run()
        if active is not None:
            self._client = MlflowClient()  # the tracking URI the active run lives at
            self.run_id, self._owns_run = active.info.run_id, False
        else:
            uri, artifacts = self.resolved_tracking_uri()
            self._client = MlflowClient(tracking_uri=uri)
            experiment = self._client.get_experiment_by_name(self.experiment_name)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else self._client.create_experiment(self.experiment_name, artifact_location=artifacts))
            run = self._client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
            self.run_id, self._owns_run = run.info.run_id, True
        wanted = {k: str(v) for k, v in {**fit_params(self.model, self.params), **self.user_params}.items()}
        held = self._client.get_run(self.run_id).data.params
        changed = sorted(k for k in wanted if k in held and held[k] != wanted[k])
        if changed:
            warnings.warn(f"MLflowLogger: the active run already has params {changed} with other values; MLflow "
                          "params cannot change, so those are not logged again", RuntimeWarning, stacklevel=2)
        new = [Param(k, v) for k, v in wanted.items() if k not in held]
        if new:
            self._client.log_batch(self.run_id, params=new)

    def _log(self, figures: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in figures.items()]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        if is_logging_point(logs):  # figures are read back only at logging points
            self._log({"batch_" + k: v for k, v in _numbers(logs, skip=("step",)).items()}, self.model.global_step)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._log(_numbers(logs), epoch + 1)

    def on_train_end(self, logs: dict) -> None:
        try:
            if self.log_checkpoint:
                with _checkpoint_file(self.model) as path:
                    self._client.log_artifact(self.run_id, path)
        finally:  # the run ends even if the artifact could not be written
            if self._owns_run:
                self._client.set_terminated(self.run_id, "FINISHED")
                self._owns_run = False

    def on_exception(self, exception: BaseException) -> None:
        # After Ctrl-C fit returns normally and on_train_end follows; after an error it does not.
        if self._owns_run and not isinstance(exception, KeyboardInterrupt):
            self._client.set_terminated(self.run_id, "FAILED")
            self._owns_run = False


class WandbLogger(StepLogger):
    """Log a fit to Weights & Biases: config, per-epoch figures, and the final checkpoint as an artifact.

    >>> # model.fit(10, dl_train, dl_val, callbacks=[WandbLogger(project="mnist")])
    >>> # offline, synced later with `wandb sync`: WandbLogger(project="mnist", mode="offline")

    When training begins a run is started with ``wandb.init(project=, name=, dir=,
    mode=, **init_kwargs)`` (``mode``: None follows ``WANDB_MODE``, or ``"online"``,
    ``"offline"``, ``"disabled"``), unless ``wandb.run`` is already active: then the
    logger logs into it and leaves it open. The run's config gets the fit settings
    (as ``MLflowLogger`` logs them) and ``config`` (yours, winning on equal keys).
    At each epoch end the epoch logs (``epoch``, ``loss``, ``val_loss``, metrics,
    ``lr``) are logged with ``run.log``, so the run's summary holds the last epoch's
    figures. ``log_steps=True`` also logs the running figures at logging points as
    ``batch/<name>`` with ``global_step``. ``log_checkpoint=True`` (default) logs
    ``model.save_checkpoint`` as the artifact ``checkpoint-<run id>`` (type
    ``model``, file ``checkpoint.pt``) when training ends; then the run it started
    is finished. Runs on the main process only.
    """

    rank_zero_only = True

    def __init__(
        self,
        project: Optional[str] = None,
        name: Optional[str] = None,
        dir: Optional[PathLike] = None,
        mode: Optional[str] = None,
        config: Optional[Mapping[str, Any]] = None,
        log_steps: bool = False,
        log_checkpoint: bool = True,
        init_kwargs: Optional[Mapping[str, Any]] = None,
    ):
        _require("wandb", "WandbLogger")
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"WandbLogger(mode=...) must be None, 'online', 'offline' or 'disabled'; got {mode!r}")
        self.project = project
        self.name = name
        self.dir = None if dir is None else os.fspath(dir)
        self.mode = mode
        self.config = dict(config or {})
        self.log_steps = bool(log_steps)
        self.log_checkpoint = bool(log_checkpoint)
        self.init_kwargs = dict(init_kwargs or {})
        self.run: Any = None
        self._owns_run = False


    def set_params(self, params: dict) -> None:
        """Check, before the first step, that ``dir`` (when given) can be written."""
        super().set_params(params)
        if self.dir is not None:
            check_writable(f"WandbLogger(dir={self.dir!r})", self.dir, directory=True)

    def on_train_begin(self, logs: dict) -> None:
        import wandb

        if wandb.run is not None:
            self.run, self._owns_run = wandb.run, False
        else:
            if self.dir is not None:
                os.makedirs(self.dir, exist_ok=True)  # wandb.init wants an existing directory
            self.run = wandb.init(project=self.project, name=self.name, dir=self.dir, mode=self.mode,
                                  **self.init_kwargs)
            self._owns_run = True
        self.run.config.update({**fit_params(self.model, self.params), **self.config}, allow_val_change=True)

    def on_train_batch_end(self, batch: int, logs: dict) -> None:
        if is_logging_point(logs):
            figures = {"batch/" + k: v for k, v in _numbers(logs, skip=("step",)).items()}
            self.run.log({**figures, "global_step": self.model.global_step})

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self.run.log({"epoch": epoch + 1, **_numbers(logs)})

    def on_train_end(self, logs: dict) -> None:
        import wandb

        try:
            if self.log_checkpoint:
                with _checkpoint_file(self.model) as path:
                    artifact = wandb.Artifact(f"checkpoint-{self.run.id}", type="model")
                    artifact.add_file(path, name="checkpoint.pt")  # copied into wandb's staging area now
                    self.run.log_artifact(artifact)
        finally:
            if self._owns_run:
                self.run.finish()
                self._owns_run = False

    def on_exception(self, exception: BaseException) -> None:
        # After Ctrl-C fit returns normally and on_train_end follows; after an error it does not.
        if self._owns_run and not isinstance(exception, KeyboardInterrupt):
            self.run.finish(exit_code=1)
            self._owns_run = False
