"""``torchfit.Model``: the thin front users call.

Owns checking what a user passes (once per call, before any weight changes:
``compiling``, ``arguments``), running a call through the pieces below, the
training state (``state.TrainingState``, ``model.training_state``), and the step
functions ``train_step`` / ``eval_step`` / ``predict_step``: the one seam a
subclass overrides for custom training. An overridden ``train_step`` is right by
construction (``optim``: it runs under the fit's autocast, and
``self.optimizer`` inside it follows the accumulation window and the
strategy's gradient averaging). The epoch and batch loops live in ``loop``,
assembling a call in ``runs``, the default steps' loss in ``steps``, the
optimizer step in ``optim``, metric maths in ``metrics``, printing and history
in ``callbacks``, batches in ``batch``, multi-process strategies in
``distributed``, files in ``checkpoint``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Union

import pandas as pd
import torch
from torch import nn

from . import checkpoint, compiling, distributed, inputs, loop, resuming, runs, steps
from .arguments import (FitArgs, announcer, check_compiled, check_fit, check_launch, check_loader, check_net,
                        evaluate_args)
from .batch import as_tensors, to_device
from .callbacks import Callback
from .callbacks.history import frame as history_frame
from .diagnose import user_traceback
from .formatting import Figures
from .metrics import Mean, MetricList
from .loop import Run, StepResult
from .precision import PrecisionPolicy
from .model_tools import ModelTools
from .state import TrainingState, state_field


class Model(ModelTools, nn.Module):
    """Wrap any ``nn.Module`` to get ``compile`` / ``fit`` / ``evaluate`` / ``predict`` / ``summary``.

    >>> model = Model(nn.Linear(4, 2))
    >>> model.compile(loss=nn.CrossEntropyLoss(), metrics=["accuracy"], device="cpu")  # doctest: +ELLIPSIS
    torchfit.Model(...)

    ``model(x)`` calls the net, ``model.parameters()`` are the net's and ``model.net`` is the net
    itself. A subclass with its own layers and ``forward`` is its own net (torchkeras 1.x):

    >>> class Net(Model):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         return self.fc(x)
    >>> list(Net().net.state_dict())
    ['fc.weight', 'fc.bias']
    """

    def __init__(self, net: Optional[nn.Module] = None):
        super().__init__()
        # A subclass with its own forward is its own net; one with its own train_step (Keras' GAN) may have none.
        if check_net(net, own_forward=type(self).forward is not Model.forward or not self._default_step("train_step")):
            self.net = net
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self.compiled_metrics: Dict[str, Any] = {}  # compile's metrics by name; model.metrics lists them
        self._loss_tracker = Mean(name="loss")  # Keras' model.metrics starts with a loss tracker
        self.device: Optional[torch.device] = None
        self.precision: Optional[PrecisionPolicy] = None
        self.strategy: Any = None  # compile(strategy=...): None/"ddp" or a strategy's options (FSDP(...))
        self._setup: Optional[compiling.Compiled] = None  # what compile resolved (None before compile)
        object.__setattr__(self, "loss_fn", None)  # not registered as a submodule: state_dict stays the net's
        self.training_state = TrainingState()  # epochs, steps, histories, what the next save/fit continues from
        self.stop_training = False
        self._run: Optional[Run] = None
        self.jit_compile: Union[bool, Mapping[str, Any]] = False
        self.profiler: Any = None  # fit(profile=True)'s Profiler: model.profiler.frame(), .plot()

    # ------------------------------------------------------------------ basics
    @property
    def net(self) -> nn.Module:
        """The module trained: the wrapped net, or the model itself for a subclass with its own forward."""
        net = self._modules.get("net")
        return self if net is None else net

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._modules["net"](*args, **kwargs)

    def __call__(self, *args: Any, training: Optional[bool] = None, **kwargs: Any) -> Any:
        # Keras' self(x, training=True): the modes are the loop's (train in fit, eval in evaluate), as in Keras' fit
        if self._run is None and self.device is not None:
            # A user's own call (Keras' model(x)): numpy arrays and tensors on another device are
            # brought to the model. Steps (self._run is set) call the net directly and pay nothing.
            args, kwargs = to_device(as_tensors((args, kwargs)), self.device)
        return super().__call__(*args, **kwargs)

    def __repr__(self) -> str:
        if self.net is self:
            return "torchfit.Model:" + nn.Module.__repr__(self)
        inner = repr(self.net).replace("\n", "\n  ")
        return f"torchfit.Model(\n  {inner}\n)"

    @property
    def optimizer(self) -> Optional[torch.optim.Optimizer]:
        """The compiled optimizer; inside an overridden ``train_step``, a view of it whose ``zero_grad``
        and ``step`` follow the accumulation window (``optim.WindowedOptimizer``)."""
        run = self.__dict__["_run"]
        if run is not None and run.config.optim is not None and run.config.optim.in_user_step:
            return run.config.optim.gate
        return self.__dict__["_optimizer"]

    @optimizer.setter
    def optimizer(self, value: Optional[torch.optim.Optimizer]) -> None:
        self.__dict__["_optimizer"] = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``nn.Module.zero_grad``; inside an overridden ``train_step`` (Keras' recipe calls
        ``self.zero_grad()``) it clears the gradients at the start of an accumulation window only."""
        if self.optimizer is not self._optimizer:
            self.optimizer.zero_grad()
        else:
            super().zero_grad(set_to_none)

    @property
    def metrics(self) -> MetricList:
        """The compiled metrics as objects (Keras: ``for m in self.metrics: m.update_state(y, y_pred)``).
        A subclass may define its own ``metrics`` property, as in Keras; fit resets them each epoch."""
        return MetricList([self._loss_tracker, *self.compiled_metrics.values()])

    @metrics.setter
    def metrics(self, value: Any) -> None:
        pairs = value.items() if hasattr(value, "items") else [(m.name, m) for m in value]
        self.compiled_metrics = {k: m for k, m in pairs if m is not self._loss_tracker}

    @property
    def run(self) -> Optional[Run]:
        """The fit, evaluate or predict call in progress (``None`` outside one); callbacks read its
        ``epoch``, ``batch_idx``, ``last_result`` and ``config``."""
        return self._run

    epoch = state_field("epoch", "Epochs finished so far, across fit calls.")
    global_step = state_field("global_step", "Optimizer steps taken so far, across fit calls.")

    @property
    def history(self) -> pd.DataFrame:
        """Every finished epoch so far: ``epoch``, ``loss``, metrics, ``val_`` figures."""
        return history_frame(self.training_state.history, ["epoch"])

    @property
    def step_history(self) -> pd.DataFrame:
        """One row per training logging point: ``epoch``, ``step``, ``global_step``, ``lr``, ``loss``, metrics
        (running means since the epoch's start, as printed). ``model.step_history.plot(x="global_step", y="loss")``
        """
        return history_frame(self.training_state.step_history, ["epoch", "step", "global_step"])

    # ----------------------------------------------------------------- compile
    def compile(self, loss: Optional[Callable] = None,
                optimizer: Union[torch.optim.Optimizer, str, Callable, None] = None,
                metrics: Union[Mapping[str, Any], Sequence[Any], None] = None,
                device: Union[str, torch.device, None] = None, *, loss_func: Optional[Callable] = None,
                metrics_dict: Optional[Mapping[str, Any]] = None,
                loss_weights: Union[Mapping[str, float], Sequence[float], None] = None, precision: str = "32",
                jit_compile: Union[bool, Mapping[str, Any]] = False, strategy: Any = None, target_key: Any = "labels",
                output_key: Optional[str] = "logits", gradient_checkpointing: bool = False) -> "Model":
        """Set the loss, optimizer, metrics, device and precision; returns the model.

        >>> model = Model(nn.Linear(4, 1)).compile(nn.MSELoss(), "sgd", ["mae"], device="cpu")

        ``optimizer``: an optimizer over ``model.parameters()``, a name (``"adam"``, ``"sgd"``...) or a
        factory called with the parameters; default ``Adam(lr=1e-3)`` (one built on another model's
        parameters serves evaluate/predict, and fit refuses it). ``loss_func`` / ``metrics_dict``:
        torchkeras 1.x's names. ``loss``: a callable or a Keras name (``torchfit.losses``); for a net
        with several outputs a dict (list) of losses with ``loss_weights`` (history: ``loss``,
        ``<output>_loss``; ``metrics={"a": ["accuracy"]}`` gives ``a_accuracy``). ``precision``: ``"32"``,
        ``"bf16"`` or ``"16-mixed"`` (CUDA). ``jit_compile``: True or ``torch.compile`` options for the
        training forward. ``strategy``: ``"ddp"`` (the default under torchrun), ``"fsdp"`` or ``FSDP(...)``.
        ``loss=None``: the net computes its own loss (``output.loss``, Hugging Face). Mapping batches keep their
        targets under ``target_key``; metrics and predict get an output object's ``output_key`` field
        (``torchfit.outputs``). ``gradient_checkpointing``: the net's ``gradient_checkpointing_enable()``.
        """
        c = compiling.resolve(self.net, loss, optimizer, metrics, device, loss_func=loss_func,
                              metrics_dict=metrics_dict, loss_weights=loss_weights, precision=precision,
                              jit_compile=jit_compile, strategy=strategy, target_key=target_key,
                              output_key=output_key, gradient_checkpointing=gradient_checkpointing)
        c = compiling.keep_loss(c, self.loss_fn)  # Keras: compile(optimizer=...) keeps a subclass's loss_fn
        c.move_to_device(self.net)
        object.__setattr__(self, "loss_fn", c.loss)
        self.optimizer, self.compiled_metrics, self.device, self.precision = c.optimizer, c.metrics, c.device, c.precision
        self.jit_compile, self.strategy, self._setup = c.jit_compile, c.strategy, c
        return self

    def _training_net(self) -> Callable:
        """The callable the train step runs: the net, or its torch.compile wrapper (built once)."""
        return self._setup.training_net(self.net)

    def _require_compiled(self, verb: str) -> None:
        check_compiled(self, verb, self._setup)

    def _check_launch(self, fit_args: Any) -> None:
        """fit's arguments checked before ``fit(num_processes=N)`` starts its workers (the launcher asks)."""
        check_launch(self, fit_args)

    def _default_step(self, name: str) -> bool:
        """Whether ``train_step``/``eval_step`` is torchfit's own (not overridden by a subclass; for
        ``eval_step``, neither is Keras' ``test_step``)."""
        names = ("eval_step", "test_step") if name == "eval_step" else (name,)
        return all(getattr(type(self), n) is getattr(Model, n) for n in names)

    def _strategy(self) -> Any:
        """The strategy a call outside fit (saving, loading) runs under: SingleProcess in one process."""
        return distributed.strategy(self.device, self.strategy)

    # --------------------------------------------------------------------- fit
    @user_traceback
    def fit(self, *data: Any, epochs: int = 1, dl_train: Optional[Iterable] = None, dl_val: Optional[Iterable] = None,
            log_step_freq: Optional[int] = None, callbacks: Optional[Sequence[Callback]] = None,
            verbose: Union[int, str] = 1, initial_epoch: Optional[int] = None,
            steps_per_epoch: Optional[int] = None, validation_steps: Optional[int] = None, validation_freq: int = 1,
            overfit_batches: Optional[int] = None, class_weight: Optional[Mapping[int, float]] = None,
            sample_weight: Any = None, plot: bool = False, profile: bool = False, grad_accum_steps: int = 1,
            grad_clip_norm: Optional[float] = None, grad_clip_value: Optional[float] = None, lr_scheduler: Any = None,
            resume_from: Union[str, "os.PathLike[str]", None] = None, progress_bar: Optional[bool] = None,
            x: Any = None, y: Any = None, target: Union[str, Sequence[str], None] = None,
            batch_size: Optional[int] = None, validation_split: Optional[float] = None, validation_data: Any = None,
            shuffle: Optional[bool] = None, seed: int = 0, fast_path: bool = True,
            num_processes: Optional[int] = None, train_data: Any = None, val_data: Any = None) -> pd.DataFrame:
        """Train for ``epochs`` more epochs; returns the history as a DataFrame.

        >>> # history = model.fit(10, dl_train, dl_val, log_step_freq=100)
        >>> # history = model.fit(10, x=X, y=Y, batch_size=32, validation_split=0.2)

        What runs, in order (callbacks' hooks in brackets; ``torchfit.loop``)::

            resume_from: load the checkpoint if the file exists
            [set_params(params)]                       # monitors are checked here
            [on_train_begin]; callbacks get their state back when resuming
            for epoch in epochs:                       # numbered from model.epoch + 1
                [on_epoch_begin]; net.train()
                for batch in dl_train:                 # moved to the device
                    [on_train_batch_begin]
                    train_step(batch): zero_grad (at the start of an accumulation window);
                        preds = net(x); loss = loss_fn(preds, y)   # under autocast if asked
                        loss.backward(); at a window's end: [on_backward_end]; clip; optimizer.step()
                    update loss mean and metrics on the device (no host sync)
                    every log_step_freq steps: read figures back, [on_train_batch_end(logs)]
                net.eval(); no_grad: the same loop over dl_val with eval_step  [on_test_*]
                record epoch figures (+ lr with a scheduler)  [on_epoch_end]: history, table, ...
                stop if model.stop_training
            [on_train_end]

        Positional arguments are read in the order the caller's library writes them:
        torchkeras 1.x's ``fit(10, dl_train, dl_val)``, torchkeras 4's ``fit(dl_train, dl_val, 10)``
        (also ``train_data=``/``val_data=``), or Keras' ``fit(x, y, batch_size, epochs, ...)``;
        ``fit(dl, epochs=5)`` works too. Data: loaders, or ``x``/``y`` (arrays, tensors, a Dataset, a
        DataFrame with ``target`` columns) batched by ``batch_size`` and shuffled with a generator seeded
        by ``seed``. Keras' words mean what they mean there (``initial_epoch``, ``steps_per_epoch``,
        ``validation_freq``, ``class_weight``, ``sample_weight``...). ``grad_accum_steps=k`` steps every k
        batches on the window's sample-weighted mean gradient; ``resume_from``: a checkpoint, ``epochs``
        being the run's total; ``plot=True`` adds a ``LivePlot``; ``profile=True`` a ``Profiler``
        (``model.profiler.frame()``); ``num_processes=N`` trains on N processes started here. Ctrl-C
        stops cleanly and returns the finished epochs. docs/api.md has a line per argument.
        """
        args = FitArgs.from_call(
            data, epochs=epochs, dl_train=dl_train, dl_val=dl_val, log_step_freq=log_step_freq, callbacks=callbacks,
            verbose=verbose, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
            validation_steps=validation_steps, validation_freq=validation_freq, overfit_batches=overfit_batches,
            class_weight=class_weight, sample_weight=sample_weight, plot=plot, profile=profile,
            grad_accum_steps=grad_accum_steps, grad_clip_norm=grad_clip_norm, grad_clip_value=grad_clip_value,
            lr_scheduler=lr_scheduler, resume_from=resume_from, progress_bar=progress_bar, x=x, y=y, target=target,
            batch_size=batch_size, validation_split=validation_split, validation_data=validation_data,
            shuffle=shuffle, seed=seed, fast_path=fast_path, num_processes=num_processes, train_data=train_data,
            val_data=val_data)
        if args.num_processes is not None:
            return distributed.launch_fit(self, args.num_processes, args)
        self._require_compiled("fit")
        checked = check_fit(self, args)
        run, (dl_train, dl_val), trackers, params = runs.fit_run(self, checked)
        if dl_val is not None and checked.epochs:
            loop.check_first_batch(self, dl_val, run)  # a validation loader that cannot work fails now
        say = announcer(run.config.callbacks)
        if checked.resume is not None:  # the last thing checked; now things change
            if checked.resume.ckpt is not None:  # its position must fit this fit's loader and net
                resuming.check(checked.resume.ckpt, run, dl_train, trackers[0])
            checked.resume.apply(self, list(run.config.callbacks), run.config.strategy)
            if checked.resume.message:
                say(checked.resume.message)
        pending = self.training_state.pending_resume  # from load_checkpoint or resume_from: checked, then taken
        if pending is not None:
            resuming.prepare(run, pending, dl_train, trackers[0])
        resume_state = self.training_state.take_pending_resume()
        if resume_state is not None:
            checkpoint.restore_loaders(resume_state, run.config.loaders)
        start = checked.start
        self._run = run
        try:
            loop.fit_loop(self, run, range(start + 1, start + checked.epochs + 1), dl_train, dl_val, trackers,
                          params, resume_state, say)
        except BaseException as exc:  # what the next save_checkpoint writes; never replaces the error
            self.training_state.last_fit = loop.call_quietly(checkpoint.run_state, exc, self, run)
            raise
        else:
            self.training_state.last_fit = checkpoint.run_state(self, run)
        finally:
            self._run = None
        return self.history

    # ------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: Union[str, "os.PathLike[str]"], trainable_only: bool = False) -> None:
        """Write everything needed to continue training exactly to ``path`` (atomically).

        >>> # model.save_checkpoint("ckpt.pt"); later: model.load_checkpoint("ckpt.pt"); model.fit(2, dl)

        The net, optimizer, grad scaler, ``training_state``, callbacks' state, RNG states and the
        loaders' generators, as of the end of the last fit; ``torch.load(weights_only=True)`` reads it.
        Under a sharded strategy every rank calls it (the net is gathered) and rank 0 writes.
        ``trainable_only=True`` keeps of the net only what trains (LoRA adapters, a new head) and its buffers;
        ``load_checkpoint`` puts them back onto the same base net.
        """
        self._require_compiled("save_checkpoint")
        strategy = self._run.config.strategy if self._run is not None else self._strategy()
        checkpoint.save(self, path, strategy, trainable_only=trainable_only)

    def load_checkpoint(self, path: Union[str, "os.PathLike[str]"]) -> "Model":
        """Restore a checkpoint written by ``save_checkpoint`` / ``ModelCheckpoint``; returns the model.

        Compile first (same net and optimizer setup). RNG states come back at once; the next ``fit``
        hands the loaders and callbacks their saved state. A file that does not fit this model raises
        ``CheckpointError`` and changes nothing; GPU checkpoints load anywhere.
        """
        self._require_compiled("load_checkpoint")
        checkpoint.load(self, path, self._strategy())
        return self

    # ------------------------------------------------------- evaluate, predict
    @user_traceback
    def evaluate(self, *data: Any, dl: Any = None, callbacks: Optional[Sequence[Callback]] = None, x: Any = None,
                 y: Any = None, target: Union[str, Sequence[str], None] = None, batch_size: Optional[int] = None,
                 verbose: Union[int, str] = 0, return_dict: bool = True, quiet: Optional[bool] = None,
                 fast_path: bool = True) -> Any:
        """Loss and metrics over the whole loader, in eval mode under no_grad: ``{"val_loss": ..., ...}``.

        >>> # model.evaluate(dl_test)  or  model.evaluate(x_test, y_test, batch_size=128)   (Keras' order)

        ``verbose=1`` (or torchkeras 4's ``quiet=False``) prints the figures; ``return_dict=False``
        gives Keras' list ``[loss, *metrics]`` (the loss alone without metrics).
        """
        self._require_compiled("evaluate")
        named = evaluate_args(data, dl=dl, callbacks=callbacks, x=x, y=y, batch_size=batch_size, verbose=verbose)
        dl = inputs.eval_loader(named["dl"], x=named["x"], y=named["y"], target=target,
                                batch_size=named["batch_size"], loss_fn=self.loss_fn)
        check_loader("dl", dl)
        run = runs.eval_run(self, named["callbacks"], fast_path)
        dl, tracker = runs.evaluate_parts(self, dl, run)  # under torchrun: this rank's part, whole-dataset figures
        with self._calling(run):
            figures = Figures(loop.validate(self, dl, run, tracker))
        return runs.evaluate_result(figures, named["verbose"] if quiet is None else int(not quiet), return_dict,
                                    run.config.is_main_process)

    @user_traceback
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
        check_loader("dl", dl)
        run = runs.eval_run(self, callbacks, fast_path)
        cbs = run.config.callbacks
        with self._calling(run):
            cbs.on_predict_begin({})
            # under torchrun every rank predicts its part and gets the whole dataset's outputs back
            out = run.config.strategy.predict(dl, lambda shard: loop.predict(self, shard, run))
            cbs.on_predict_end({})
            return out

    @contextlib.contextmanager
    def _calling(self, run: Run) -> Iterator[None]:
        """``self.run`` is ``run`` inside; the net's modes and an enclosing fit's run come back after."""
        modes = loop.save_modes(self.net)
        previous, self._run = self._run, run  # called from a callback inside fit: give fit its run back
        try:
            yield
        finally:
            loop.restore_modes(modes)
            self._run = previous

    # ------------------------------------------------------------------- steps
    def train_step(self, batch: Any) -> StepResult:
        """One training step on a batch already on the device. Override for custom training.

        The default (``steps.train_step``): split ``(x, y)`` (a mapping: ``labels`` and keyword inputs); zero
        the gradients at a window's start; forward and loss under autocast; ``self.backward``; ``self.optimizer_step()``; return a ``StepResult`` (detached loss,
        preds, targets, batch size). An override runs under the fit's autocast, and the recipes people
        know (``self.optimizer.zero_grad(); loss.backward(); self.optimizer.step()``, Keras'
        ``self.zero_grad()``, torchkeras' step-then-zero order) train as this step does, also under
        torchrun and with clipping. With ``grad_accum_steps`` or fp16 call ``self.backward(loss)``, not
        ``loss.backward()`` (refused with that fix before the first optimizer step).
        """
        return steps.train_step(self, batch)

    def eval_step(self, batch: Any) -> StepResult:
        """One validation step (eval mode, no_grad already set by the loop)."""
        return steps.eval_step(self, batch)

    def predict_step(self, batch: Any) -> Any:
        """The net's output for one batch (``(x, y)``, ``x`` or a mapping); an output object's ``logits``."""
        return steps.predict_step(self, batch)

    def compute_loss(self, preds: Any = None, targets: Any = None, *, x: Any = None, y: Any = None,
                     y_pred: Any = None, sample_weight: Any = None, training: bool = True) -> torch.Tensor:
        """``loss_fn(preds, targets)``, checked to be a scalar; Keras' ``compute_loss(x=, y=, y_pred=,
        sample_weight=)`` too (per-sample weights as fit weighs them)."""
        if sample_weight is None and y_pred is None and y is None:  # the default steps' call: one layer
            return steps.compute_loss(self.loss_fn, preds, targets)
        return steps.keras_loss(self, y_pred if y_pred is not None else preds, y if y is not None else targets,
                                sample_weight, training)

    def test_step(self, batch: Any) -> StepResult:
        """Keras' name for the validation step: override either; the loop calls this one."""
        return self.eval_step(batch)

    def backward(self, loss: torch.Tensor, batch_size: Optional[int] = None) -> None:
        """``loss.backward()`` with the grad scaler and accumulation weighting applied (``optim.OptimizerStep``);
        ``batch_size`` defaults to the rows of the step's batch."""
        self._run.config.optim.backward(loss, batch_size)

    def optimizer_step(self) -> bool:
        """Step the optimizer if this batch closes an accumulation window; returns whether it did."""
        return self._run.config.optim.step()
