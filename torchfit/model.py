"""``torchfit.Model``: the thin front users call.

Owns argument checking (once per call, before any weight changes) and the
step functions ``train_step`` / ``eval_step`` / ``predict_step`` — the one seam
a subclass overrides for custom training. Iteration lives in ``loop``, metric
maths in ``metrics``, printing and history in ``callbacks``, devices in
``device``, autocast and the grad scaler in ``precision``.
"""
from __future__ import annotations

import copy
import numbers
import os
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import pandas as pd
import torch
from torch import nn

from . import checkpoint, distributed, inputs, loop
from .callbacks import Callback, CallbackList, History, ProgressPrinter
from .callbacks.history import StepHistory
from .callbacks.progress import ProgressBar, wants_bar
from .callbacks.schedulers import from_fit_argument, learning_rates, lr_log_keys
from .device import batch_size_of, resolve_device
from .errors import BatchFormatError, NotCompiledError
from .loop import Run, StepResult, Tracker
from .metrics import resolve_metrics
from .precision import Precision

_OPTIMIZERS = {
    # name: (class, default lr) — Keras' defaults
    "adam": (torch.optim.Adam, 1e-3),
    "adamw": (torch.optim.AdamW, 1e-3),
    "sgd": (torch.optim.SGD, 1e-2),
    "rmsprop": (torch.optim.RMSprop, 1e-3),
    "adagrad": (torch.optim.Adagrad, 1e-2),
}


class Model(nn.Module):
    """Wrap any ``nn.Module`` to get ``compile`` / ``fit`` / ``evaluate`` / ``predict`` / ``summary``.

    >>> model = Model(nn.Linear(4, 2))
    >>> model.compile(loss=nn.CrossEntropyLoss(), metrics=["accuracy"], device="cpu")  # doctest: +ELLIPSIS
    torchfit.Model(...)
    >>> # history = model.fit(5, dl_train, dl_val)

    ``model(x)`` calls the net, ``model.parameters()`` are the net's and
    ``model.net`` is the net itself (its ``state_dict`` keeps its own key names).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"torchfit.Model(net) needs a torch.nn.Module; got {type(net).__name__}. "
                "Define your network as an nn.Module subclass (or nn.Sequential) and pass that"
            )
        self.net = net
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.metrics: Dict[str, Any] = {}
        self.device: Optional[torch.device] = None
        self.precision: Optional[Precision] = None
        self._compiled = False
        object.__setattr__(self, "loss_fn", None)  # not registered as a submodule: state_dict stays the net's
        self._history_rows: List[Dict[str, float]] = []
        self._step_rows: List[Dict[str, float]] = []  # logging points, across fit calls (StepHistory)
        self.epoch = 0  # epochs finished so far, across fit calls
        self.global_step = 0  # optimizer steps taken so far
        self.stop_training = False
        self._run: Optional[Run] = None
        self.jit_compile: Union[bool, Mapping[str, Any]] = False
        object.__setattr__(self, "_jit_net", None)  # torch.compile's wrapper; not a submodule either
        self._fit_state: Optional[dict] = None  # RNG/loaders/callbacks as the last fit left them (checkpoints)
        self._resume_state: Optional[dict] = None  # loaded from a checkpoint, for the next fit

    # ------------------------------------------------------------------ basics
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)

    def __repr__(self) -> str:
        inner = repr(self.net).replace("\n", "\n  ")
        return f"torchfit.Model(\n  {inner}\n)"

    @property
    def history(self) -> pd.DataFrame:
        """Every finished epoch so far: ``epoch``, ``loss``, metrics, ``val_`` figures."""
        columns: List[str] = ["epoch"]
        for row in self._history_rows:
            columns.extend(k for k in row if k not in columns)
        return pd.DataFrame(self._history_rows, columns=columns)

    @property
    def step_history(self) -> pd.DataFrame:
        """One row per training logging point: ``epoch``, ``step``, ``global_step``, ``lr``, ``loss``, metrics.

        The figures are running means since the start of the epoch, as printed in the step
        dicts; rows are recorded only at logging points (``log_step_freq``), so no extra sync.

        >>> # model.step_history.plot(x="global_step", y="loss")
        """
        columns: List[str] = ["epoch", "step", "global_step"]
        for row in self._step_rows:
            columns.extend(k for k in row if k not in columns)
        return pd.DataFrame(self._step_rows, columns=columns)

    def plot_history(self, metrics: Optional[Sequence[str]] = None, **kwargs: Any) -> Any:
        """``torchfit.plot_history(model.history, metrics)``: a matplotlib Figure, a panel per quantity.

        >>> # fig = model.plot_history(); fig.savefig("history.png")
        """
        from .plot import plot_history

        return plot_history(self.history, metrics, **kwargs)

    # ----------------------------------------------------------------- compile
    def compile(
        self,
        loss: Optional[Callable] = None,
        optimizer: Union[torch.optim.Optimizer, str, Callable, None] = None,
        metrics: Union[Mapping[str, Any], Sequence[Any], None] = None,
        device: Union[str, torch.device, None] = None,
        *,
        loss_func: Optional[Callable] = None,
        metrics_dict: Optional[Mapping[str, Any]] = None,
        precision: str = "32",
        jit_compile: Union[bool, Mapping[str, Any]] = False,
    ) -> "Model":
        """Set the loss, optimizer, metrics, device and precision; returns the model.

        >>> model = Model(nn.Linear(4, 1)).compile(nn.MSELoss(), "sgd", ["mae"], device="cpu")

        ``optimizer``: an optimizer over ``model.parameters()``, a name (``"adam"``,
        ``"sgd"``...) or a factory called with the parameters; default
        ``Adam(lr=1e-3)``. ``loss_func`` / ``metrics_dict`` are torchkeras 1.x's names.
        ``precision``: ``"32"``, ``"bf16"`` (CPU or CUDA) or ``"16-mixed"`` (CUDA).
        ``jit_compile=True`` (Keras' name) runs the training forward through
        ``torch.compile(net)``; a dict is passed to ``torch.compile`` as options,
        e.g. ``{"mode": "max-autotune"}``. evaluate/predict stay eager.
        """
        if loss is not None and loss_func is not None:
            raise TypeError("compile got both loss= and loss_func= (its torchkeras alias); pass only one")
        if metrics is not None and metrics_dict is not None:
            raise TypeError("compile got both metrics= and metrics_dict= (its torchkeras alias); pass only one")
        loss = loss if loss is not None else loss_func
        metrics = metrics if metrics is not None else metrics_dict
        if loss is not None and not callable(loss):
            raise TypeError(
                f"loss must be callable as loss(preds, targets) -> scalar tensor; got {type(loss).__name__}. "
                "Pass e.g. nn.CrossEntropyLoss() (an instance, not the class)"
            )
        if isinstance(loss, type):
            raise TypeError(f"loss is the class {loss.__name__}; pass an instance: {loss.__name__}()")
        dev = resolve_device(distributed.local_device(device))  # under torchrun: cuda:LOCAL_RANK
        prec = Precision(precision, dev)
        if not isinstance(jit_compile, (bool, Mapping)):
            raise TypeError(f"jit_compile must be True, False or a dict of torch.compile options; got {jit_compile!r}")
        from_logits = True if isinstance(loss, nn.BCEWithLogitsLoss) or loss is nn.functional.binary_cross_entropy_with_logits else None
        resolved_metrics = resolve_metrics(metrics, from_logits=from_logits)
        opt = self._resolve_optimizer(optimizer)
        self.net.to(dev)
        if isinstance(loss, nn.Module):
            loss.to(dev)
        _move_optimizer_state(opt, dev)
        for m in resolved_metrics.values():
            if isinstance(m, nn.Module):
                m.to(dev)
        object.__setattr__(self, "loss_fn", loss)
        self.optimizer = opt
        self.metrics = resolved_metrics
        self.device = dev
        self.precision = prec
        self.jit_compile = jit_compile if isinstance(jit_compile, bool) else dict(jit_compile)
        object.__setattr__(self, "_jit_net", None)
        self._compiled = True
        return self

    def _training_net(self) -> Callable:
        """The callable the train step runs: the net, or its torch.compile wrapper (built once)."""
        if not self.jit_compile:
            return self.net
        if self._jit_net is None:
            options = self.jit_compile if isinstance(self.jit_compile, dict) else {}
            object.__setattr__(self, "_jit_net", torch.compile(self.net, **options))
        return self._jit_net

    def _resolve_optimizer(self, optimizer: Any) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        if optimizer is None or isinstance(optimizer, str):
            name = (optimizer or "adam").lower()
            if name not in _OPTIMIZERS:
                raise ValueError(f"unknown optimizer {optimizer!r}; known names: {sorted(_OPTIMIZERS)}, "
                                 "or pass a torch.optim optimizer instance")
            if not params:
                if optimizer is None:
                    return _NoParamsOptimizer()
                raise ValueError("the net has no trainable parameters, so there is nothing to optimize")
            cls, lr = _OPTIMIZERS[name]
            return cls(params, lr=lr)
        if not isinstance(optimizer, torch.optim.Optimizer) and callable(optimizer):
            optimizer = optimizer(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, a name like 'adam', or a factory; got {type(optimizer).__name__}"
            )
        own = {id(p) for p in self.net.parameters()}
        foreign = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in own]
        if foreign:
            raise ValueError(
                f"the optimizer holds {len(foreign)} parameter tensor(s) that are not this net's "
                f"(shapes {[tuple(p.shape) for p in foreign[:3]]}...). It was probably built on another module "
                "or a copy of the net; build it on this one: torch.optim.Adam(model.parameters(), lr=1e-3)"
            )
        return optimizer

    def _require_compiled(self, verb: str) -> None:
        if not self._compiled:
            raise NotCompiledError(
                f"call model.compile(loss=..., optimizer=..., metrics=...) before model.{verb}(...)"
            )
        overridden = {"fit": "train_step", "evaluate": "eval_step"}.get(verb)
        if self.loss_fn is None and overridden and getattr(type(self), overridden) is getattr(Model, overridden):
            raise NotCompiledError(
                f"model.{verb} needs a loss: call model.compile(loss=nn.CrossEntropyLoss(), ...) "
                f"(or override {overridden} to compute your own)"
            )

    # --------------------------------------------------------------------- fit
    def fit(
        self,
        epochs: int = 1,
        dl_train: Optional[Iterable] = None,
        dl_val: Optional[Iterable] = None,
        log_step_freq: Optional[int] = None,
        callbacks: Optional[Sequence[Callback]] = None,
        verbose: int = 1,
        *,
        grad_accum_steps: int = 1,
        grad_clip_norm: Optional[float] = None,
        grad_clip_value: Optional[float] = None,
        lr_scheduler: Any = None,
        resume_from: Union[str, "os.PathLike[str]", None] = None,
        progress_bar: Optional[bool] = None,
        x: Any = None,
        y: Any = None,
        target: Union[str, Sequence[str], None] = None,
        batch_size: Optional[int] = None,
        validation_split: Optional[float] = None,
        validation_data: Any = None,
        shuffle: Optional[bool] = None,
        seed: int = 0,
        fast_path: bool = True,
    ) -> pd.DataFrame:
        """Train for ``epochs`` more epochs; returns the history as a DataFrame.

        >>> # history = model.fit(10, dl_train, dl_val, log_step_freq=100)
        >>> # history = model.fit(10, x=X, y=Y, batch_size=32, validation_split=0.2)
        >>> # history = model.fit(10, df, target="label", validation_data=df_val)

        Data: loaders (``dl_train``, ``dl_val``), or Keras-style ``x``/``y`` arrays or
        tensors, a ``Dataset``, or a DataFrame with ``target`` column(s), batched by
        ``batch_size`` (32) and shuffled (``shuffle=True``) with a generator seeded by
        ``seed``; ``validation_split=0.2`` validates on a seeded draw of rows
        (``torchfit.inputs.split_indices``) or ``validation_data=(Xv, Yv)``.

        What runs, in order (callbacks' hooks in brackets)::

            resume_from: load the checkpoint if the file exists
            [set_params(params)]                       # monitors are checked here
            [on_train_begin]; callbacks get their state back when resuming
            for epoch in epochs:                       # numbered from model.epoch + 1
                [on_epoch_begin]
                net.train()
                for batch in dl_train:                 # moved to the device
                    [on_train_batch_begin]
                    zero_grad (at the start of an accumulation window)
                    preds = net(x); loss = loss_fn(preds, y)   # under autocast if asked
                    loss.backward()
                    at a window boundary: [on_backward_end]; clip; optimizer.step()
                    update loss mean and metrics on the device (no host sync)
                    every log_step_freq steps: read figures back, [on_train_batch_end(logs)]
                net.eval(); no_grad: the same loop over dl_val with eval_step  [on_test_*]
                record epoch figures (+ lr with a scheduler)  [on_epoch_end]: history, table, ...
                stop if model.stop_training
            [on_train_end]

        verbose: 0 silent, 1 step dicts (or a progress bar) and tables, 2 tables
        only. ``log_step_freq`` defaults to about ten logging points per epoch.
        ``grad_accum_steps=k`` steps the optimizer every k batches (and at the end
        of the epoch) on the sample-weighted mean gradient of the window;
        ``grad_clip_norm`` / ``grad_clip_value`` clip before each optimizer step
        (off by default). ``lr_scheduler``: a torch LR scheduler on
        ``model.optimizer``, stepped after each epoch (a ``ReduceLROnPlateau``
        watches ``val_loss``, or ``loss`` without ``dl_val``); for per-step
        schedules use the ``LearningRateScheduler`` callback. ``resume_from``: a
        checkpoint path; ``epochs`` is then the run's total (Keras'
        BackupAndRestore): an existing file is loaded and only the remaining
        epochs run, a missing one means a fresh start. ``progress_bar``: None
        shows a tqdm bar instead of the step dicts when ``verbose=1`` and stdout
        is a terminal or notebook; True/False force it on/off. ``fast_path``
        fetches batches of a DataLoader over a TensorDataset by indexing its
        tensors: the same batches, several times faster (see ``torchfit.data``);
        ``fast_path=False`` iterates every loader as it is. Ctrl-C stops
        cleanly and returns the finished epochs.
        """
        self._require_compiled("fit")
        epochs = _check_count("epochs", epochs, minimum=0)
        dl_train, dl_val = inputs.fit_loaders(
            dl_train, dl_val, x=x, y=y, target=target, batch_size=batch_size, validation_split=validation_split,
            validation_data=validation_data, shuffle=shuffle, seed=seed, loss_fn=self.loss_fn, epoch=self.epoch)
        if dl_train is None:
            raise TypeError("fit needs a training loader: model.fit(epochs, dl_train, dl_val=None)")
        _check_loader("dl_train", dl_train)
        if dl_val is not None:
            _check_loader("dl_val", dl_val)
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0 (silent), 1 (step dicts and tables) or 2 (tables only); got {verbose!r}")
        if log_step_freq is not None:
            log_step_freq = _check_count("log_step_freq", log_step_freq, minimum=1)
        grad_accum_steps = _check_count("grad_accum_steps", grad_accum_steps, minimum=1)
        for name, value in (("grad_clip_norm", grad_clip_norm), ("grad_clip_value", grad_clip_value)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or value <= 0):
                raise ValueError(f"{name} must be a positive number or None; got {value!r}")
        user_cbs = list(callbacks or [])
        own_bar = any(isinstance(cb, ProgressBar) for cb in user_cbs)  # as Keras does with its ProgbarLogger
        bar = own_bar or wants_bar(progress_bar, verbose)
        if lr_scheduler is not None:
            user_cbs.append(from_fit_argument(lr_scheduler, dl_val is not None))
        resumed = None
        if resume_from is not None:
            total = epochs
            if os.path.exists(resume_from):
                self.load_checkpoint(resume_from)
                resumed = f"Resuming from {os.fspath(resume_from)}: {self.epoch} of {total} epoch(s) done."
                if self.stop_training:  # e.g. early stopping ended the saved run: it is finished
                    total = self.epoch
                    resumed += " Training had been stopped (model.stop_training) at that epoch: nothing to resume."
            epochs = max(0, total - self.epoch)

        default_cbs: List[Callback] = [History(), StepHistory()]
        if verbose:
            if bar and not own_bar:  # the bar shows the steps; the printer the epoch tables (as with verbose=2)
                default_cbs.append(ProgressBar())
            default_cbs.append(ProgressPrinter(2 if bar else verbose))
        run = self._new_run(default_cbs + user_cbs)
        if not fast_path:
            run.iterate = iter
        if run.reducer is not None:  # under torchrun: this rank's loaders (torchfit.distributed)
            dl_train, dl_val = run.reducer.shard_fit_loaders(dl_train, dl_val)
        if resumed and verbose and run.is_main_process:
            print(resumed)
        n_train = loop.loader_length(dl_train)
        run.log_every = log_step_freq or (max(1, n_train // 10) if n_train else 100)
        run.accum_steps = grad_accum_steps
        run.sum_reduction = getattr(self.loss_fn, "reduction", "mean") == "sum"
        run.clip_norm = grad_clip_norm
        run.clip_value = grad_clip_value
        run.train_net = self._training_net()
        run.loaders = {"dl_train": dl_train, "dl_val": dl_val}
        run.params = [p for p in self.net.parameters() if p.requires_grad]
        run.train_metrics = self.metrics
        run.preflight = bool(self.metrics)
        train_tracker = Tracker(copy.deepcopy(self.metrics))
        val_tracker = Tracker(copy.deepcopy(self.metrics), prefix="val_")
        if run.reducer is not None:  # under torchrun: DDP, exact figures (torchfit.distributed)
            train_tracker, val_tracker = run.reducer.prepare_fit(self, run, dl_train, dl_val, train_tracker, val_tracker)

        cbs = run.callbacks
        log_lr = any(cb.changes_lr for cb in cbs)
        params = {"epochs": self.epoch + epochs, "initial_epoch": self.epoch, "steps": n_train,
                  "verbose": verbose, "log_keys": self._epoch_log_keys(dl_val is not None, log_lr)}
        cbs.set_params(params)  # a callback monitoring a key this run never produces raises here
        resume_state, self._resume_state = self._resume_state, None
        if resume_state is not None:
            checkpoint.restore_loaders(resume_state, run.loaders)
        modes = _save_modes(self.net)
        buffers = _snapshot_buffers(self.net)
        first_step = self.global_step
        self.stop_training = False
        self._run = run
        cbs.on_train_begin({})
        if resume_state is not None:
            checkpoint.restore_callbacks(resume_state, list(cbs))  # after on_train_begin, which resets them
        try:
            for epoch in range(self.epoch + 1, self.epoch + epochs + 1):
                run.epoch = epoch
                cbs.on_epoch_begin(epoch, {})
                logs = loop.run_epoch(self, dl_train, run, train_tracker, training=True)
                if run.stopped_reason is None and not _finite(logs.get("loss")):
                    run.stopped_reason = f"non-finite loss ({logs['loss']}) over epoch {epoch}"
                if run.stopped_reason is not None or not run.epoch_complete:
                    break  # a stop inside the epoch: it is not a finished epoch
                if dl_val is not None:
                    logs.update(self._validate(dl_val, run, val_tracker))
                if log_lr:
                    logs.update(learning_rates(self.optimizer))
                self.epoch = epoch
                if params["log_keys"] is None:  # overridden steps: the keys are known now
                    params = {**params, "log_keys": ["epoch", *logs]}
                    cbs.set_params(params)
                cbs.on_epoch_end(epoch, {"epoch": epoch, **logs})
                if self.stop_training:
                    break
        except KeyboardInterrupt:
            if verbose and run.is_main_process:
                print(f"Training interrupted (KeyboardInterrupt) in epoch {run.epoch}; model.history holds "
                      f"the {len(self._history_rows)} finished epoch(s) and the model is usable.")
        except BaseException:
            if self.global_step == first_step:
                _restore_buffers(self.net, buffers)  # nothing was trained: leave the net as found
            raise
        finally:
            _restore_modes(modes)
            self._fit_state = checkpoint.training_state(self, run)
            self._run = None
        if run.stopped_reason is not None and run.is_main_process:
            message = (f"Stopped training: {run.stopped_reason}. model.history holds the "
                       f"{len(self._history_rows)} finished epoch(s). Lower the learning rate, "
                       "clip gradients (grad_clip_norm=1.0) or check the data for NaN/inf")
            print(message) if verbose else warnings.warn(message, RuntimeWarning, stacklevel=2)
        cbs.on_train_end({})
        return self.history

    def _epoch_log_keys(self, has_val: bool, log_lr: bool) -> Optional[List[str]]:
        """The keys every epoch's logs will have, or None when an overridden step decides them."""
        if type(self).train_step is not Model.train_step or (has_val and type(self).eval_step is not Model.eval_step):
            return None
        names = list(self.metrics)
        keys = ["epoch", "loss", *names]
        if has_val:
            keys += ["val_loss", *("val_" + n for n in names)]
        if log_lr:
            keys += lr_log_keys(self.optimizer)
        return keys

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write everything needed to continue training exactly to ``path`` (atomically).

        >>> # model.fit(2, dl_train, dl_val); model.save_checkpoint("ckpt.pt")
        >>> # later, in a new process:  model.load_checkpoint("ckpt.pt"); model.fit(2, dl_train, dl_val)

        Holds the net, optimizer, grad scaler, epoch, global step, history, the
        callbacks' state (schedulers, early stopping...), the RNG states (torch,
        CUDA, numpy, Python) and the loaders' generators, as of the end of the
        last fit. Loads with ``torch.load(path, weights_only=True)``.
        """
        self._require_compiled("save_checkpoint")
        checkpoint.save(self, path)

    def load_checkpoint(self, path: Union[str, "os.PathLike[str]"]) -> "Model":
        """Restore a checkpoint written by ``save_checkpoint`` / ``ModelCheckpoint``; returns the model.

        >>> # model.load_checkpoint("ckpt.pt").fit(2, dl_train, dl_val)   # 2 more epochs

        Compile first (same net and optimizer setup). RNG states are restored at
        once; the next ``fit`` hands the loaders and callbacks their saved state
        (match them to the saved run's). A file that is not a torchfit checkpoint,
        or one from a different net, raises ``CheckpointError`` and changes nothing.
        Tensors are read onto the CPU first, so GPU checkpoints load anywhere.
        """
        self._require_compiled("load_checkpoint")
        checkpoint.load(self, path)
        return self

    def _new_run(self, callbacks: Sequence[Callback]) -> Run:
        ddp = distributed.context(self.device)  # None in a single process
        main = ddp is None or ddp.is_main
        return Run(
            device=self.device,
            precision=self.precision,
            callbacks=CallbackList(callbacks, self, is_main_process=main),
            move=loop.batch_mover(self.device, non_blocking=self.device.type == "cuda"),
            reducer=ddp,
            is_main_process=main,
        )

    def _validate(self, loader: Iterable, run: Run, tracker: Tracker) -> Dict[str, float]:
        run.callbacks.on_test_begin({})
        logs = loop.run_epoch(self, loader, run, tracker, training=False)
        run.callbacks.on_test_end(logs)
        return logs

    # ---------------------------------------------------------------- evaluate
    def evaluate(self, dl: Any = None, callbacks: Optional[Sequence[Callback]] = None, *, x: Any = None,
                 y: Any = None, target: Union[str, Sequence[str], None] = None,
                 batch_size: Optional[int] = None, fast_path: bool = True) -> Dict[str, float]:
        """Loss and metrics over the whole loader, in eval mode under no_grad.

        >>> # model.evaluate(dl_test)  ->  {'val_loss': 0.31, 'val_accuracy': 0.91}
        >>> # model.evaluate(x=X_test, y=y_test)  or  model.evaluate(df_test, target="label")
        """
        self._require_compiled("evaluate")
        dl = inputs.eval_loader(dl, x=x, y=y, target=target, batch_size=batch_size, loss_fn=self.loss_fn)
        _check_loader("dl", dl)
        run = self._new_run(list(callbacks or []))
        if not fast_path:
            run.iterate = iter
        tracker = Tracker(copy.deepcopy(self.metrics), prefix="val_")
        if run.reducer is not None:  # under torchrun: this rank's part, figures over the whole dataset
            dl, tracker = run.reducer.prepare_evaluate(self, run, dl, tracker)
        modes = _save_modes(self.net)
        previous, self._run = self._run, run  # called from a callback inside fit: give fit its run back
        try:
            return self._validate(dl, run, tracker)
        finally:
            _restore_modes(modes)
            self._run = previous

    # ----------------------------------------------------------------- predict
    def predict(self, dl: Any = None, callbacks: Optional[Sequence[Callback]] = None, *, x: Any = None,
                target: Union[str, Sequence[str], None] = None, batch_size: Optional[int] = None,
                fast_path: bool = True) -> Any:
        """The net's outputs over the loader, on CPU, in dataset order.

        Batches may be ``(x, y)`` or ``x`` alone; tuple/dict outputs stay tuple/dict.
        ``dl`` may also be a tensor, a numpy array, a Dataset or a DataFrame (its
        ``target`` column(s) dropped), batched by ``batch_size`` (32).

        >>> # probs = model.predict(dl_test).softmax(dim=1)
        >>> # probs = model.predict(X_test)
        """
        self._require_compiled("predict")
        dl = inputs.predict_loader(dl, x=x, target=target, batch_size=batch_size)
        _check_loader("dl", dl)
        run = self._new_run(list(callbacks or []))
        if not fast_path:
            run.iterate = iter
        modes = _save_modes(self.net)
        previous, self._run = self._run, run  # called from a callback inside fit: give fit its run back
        try:
            run.callbacks.on_predict_begin({})
            # under torchrun every rank predicts its part and gets the whole dataset's outputs back
            out = loop.predict_loop(self, dl, run) if run.reducer is None else run.reducer.predict(self, dl, run)
            run.callbacks.on_predict_end({})
            return out
        finally:
            _restore_modes(modes)
            self._run = previous

    # ----------------------------------------------------------------- summary
    def summary(self, input_shape: Any = None, **kwargs: Any) -> pd.DataFrame:
        """Print the layer table and return its rows; see ``torchfit.summary``.

        >>> # model.summary(input_shape=(1, 28, 28))
        """
        from .summary import summary

        if not distributed.is_main_process():  # under torchrun only rank 0 prints
            kwargs.setdefault("print_fn", None)
        return summary(self.net, input_shape, **kwargs)

    # ------------------------------------------------------------------- steps
    def train_step(self, batch: Any) -> StepResult:
        """One training step on a batch already on the device. Override for custom training.

        The default: split ``(x, y)``; zero the gradients at the start of an
        accumulation window; forward and loss under autocast; ``self.backward``;
        ``self.optimizer_step()``. Return a ``StepResult`` (detached loss, preds,
        targets, batch size); the loop updates the metrics from it.
        """
        run = self._run
        x, y = split_batch(batch, "fit")
        if run.micro == 0:
            self.optimizer.zero_grad()
        with run.precision.autocast():
            preds = call_net(run.train_net, x)
            loss = self.compute_loss(preds, y)
        n = batch_size_of(y, x)
        self.backward(loss, n)
        preds = detach(preds)
        if run.preflight:
            self._preflight_metrics(preds, y, n)
        self.optimizer_step()
        return StepResult(loss.detach(), preds, y, n)

    def eval_step(self, batch: Any) -> StepResult:
        """One validation step (eval mode, no_grad already set by the loop)."""
        x, y = split_batch(batch, "evaluate")
        with self._run.precision.autocast():
            preds = call_net(self.net, x)
            loss = self.compute_loss(preds, y)
        return StepResult(loss, preds, y, batch_size_of(y, x))

    def predict_step(self, batch: Any) -> Any:
        """The net's output for one batch (``(x, y)`` or ``x``)."""
        with self._run.precision.autocast():
            return call_net(self.net, predict_inputs(batch))

    def compute_loss(self, preds: Any, targets: Any) -> torch.Tensor:
        loss = self.loss_fn(preds, targets)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"the loss must return a scalar (0-d) tensor; it returned {got}. Use a mean-reduced loss "
                "(e.g. nn.CrossEntropyLoss() with reduction='mean') or end your loss function with .mean()"
            )
        return loss

    def backward(self, loss: torch.Tensor, batch_size: Optional[int] = None) -> None:
        """``loss.backward()`` with the grad scaler and accumulation weighting applied."""
        run = self._run
        if run.accum_steps > 1 and not run.sum_reduction:
            # Exact for any batch sizes: accumulate n_i * grad_i, divide by the window's samples at the step.
            run.window_samples += batch_size
            loss = loss * batch_size
        scaler = run.precision.scaler
        if scaler is not None:
            loss = scaler.scale(loss)
        loss.backward()

    def optimizer_step(self) -> bool:
        """Step the optimizer if this batch closes an accumulation window; returns whether it did."""
        run = self._run
        run.micro += 1
        if not run.is_boundary:
            return False
        self._apply_gradients()
        return True

    def _apply_gradients(self) -> None:
        run = self._run
        opt = self.optimizer
        scaler = run.precision.scaler
        if scaler is not None:
            scaler.unscale_(opt)
        if run.window_samples:
            grads = [p.grad for p in run.params if p.grad is not None]
            if grads:
                torch._foreach_div_(grads, float(run.window_samples))
        run.callbacks.on_backward_end(run.batch_idx)
        if run.clip_norm is not None:
            nn.utils.clip_grad_norm_(run.params, run.clip_norm)
        if run.clip_value is not None:
            nn.utils.clip_grad_value_(run.params, run.clip_value)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        run.micro = 0
        run.window_samples = 0
        self.__dict__["global_step"] += 1  # nn.Module.__setattr__ would cost a few µs per step

    def _preflight_metrics(self, preds: Any, targets: Any, n: int) -> None:
        # Runs once per fit, before the first optimizer step, on throwaway copies:
        # a metric that cannot handle the net's outputs fails before weights change.
        self._run.preflight = False
        probe = Tracker(copy.deepcopy(self._run.train_metrics))
        probe.update(StepResult(None, preds, targets, n))
        probe.compute()


# ---------------------------------------------------------------- helpers
class _NoParamsOptimizer(torch.optim.Optimizer):
    """Stand-in for nets without trainable parameters (evaluate/predict-only use)."""

    def __init__(self):
        self.param_groups = []
        self.state = {}
        self.defaults = {}

    def step(self, closure=None):
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None


def split_batch(batch: Any, verb: str) -> tuple:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    what = f"a {type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list, dict)) else "")
    raise BatchFormatError(
        f"{verb} expects each batch as a pair (x, y); the loader yielded {what}. Make the dataset return "
        "(inputs, target), e.g. TensorDataset(X, y), or override train_step/eval_step for other layouts"
    )


def predict_inputs(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)):
        if len(batch) in (1, 2):
            return batch[0]
        raise BatchFormatError(
            f"predict expects batches as x or (x, y); the loader yielded a {type(batch).__name__} of length "
            f"{len(batch)}. For a net with several inputs yield ((x1, x2), y), or override predict_step"
        )
    return batch


def call_net(net: Callable, x: Any) -> Any:
    """``net(x)``, ``net(*x)`` for a tuple/list, ``net(**x)`` for a dict."""
    if isinstance(x, torch.Tensor):
        return net(x)
    if isinstance(x, dict):
        return net(**x)
    if isinstance(x, (tuple, list)):
        return net(*x)
    return net(x)


def detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return type(obj)((k, detach(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(detach(v) for v in obj)
    return obj


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def _check_loader(name: str, loader: Any) -> None:
    if isinstance(loader, (torch.Tensor, str, bytes)) or not hasattr(loader, "__iter__"):
        raise TypeError(
            f"{name} must be an iterable of batches such as a torch DataLoader; got {type(loader).__name__}. "
            "Wrap tensors as DataLoader(TensorDataset(X, y), batch_size=32)"
        )
    n = loop.loader_length(loader)
    if n == 0:
        raise ValueError(
            f"{name} is empty (len 0): check its dataset, and that drop_last=True with a batch size larger "
            "than the dataset does not drop every sample"
        )


def _finite(value: Optional[float]) -> bool:
    return value is None or value == value and value not in (float("inf"), float("-inf"))


def _save_modes(net: nn.Module) -> list:
    return [(m, m.training) for m in net.modules()]


def _restore_modes(modes: list) -> None:
    for module, training in modes:
        module.training = training


def _snapshot_buffers(net: nn.Module) -> Dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in net.named_buffers()}


def _restore_buffers(net: nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, b in net.named_buffers():
            if name in saved and saved[name].shape == b.shape:
                b.copy_(saved[name])


def _move_optimizer_state(opt: torch.optim.Optimizer, device: torch.device) -> None:
    for state in opt.state.values():
        for key, value in state.items():
            # Adam's scalar 'step' stays on CPU by design.
            if isinstance(value, torch.Tensor) and not (key == "step" and value.dim() == 0):
                state[key] = value.to(device)
