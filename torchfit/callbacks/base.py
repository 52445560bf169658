"""The callback protocol (Keras hook names) and the list that dispatches hooks.

Owns: which hooks exist and the order callbacks run in. Callbacks are
infrastructure (history, printing, checkpoints, early stopping); the training
behaviour itself lives in the step functions of ``torchfit.Model``.

``logs`` handed to hooks are plain Python floats. Batch-end hooks get the
running epoch figures only at logging points (every ``log_step_freq`` steps)
and an empty dict in between: computing them every step would cost a host
sync per step.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, ItemsView, Iterable, Iterator, KeysView, List, Mapping, Optional, ValuesView

HOOKS = (
    "on_train_begin", "on_train_end",
    "on_epoch_begin", "on_epoch_end",
    "on_train_batch_begin", "on_train_batch_end",
    "on_backward_end",
    "on_test_begin", "on_test_end",
    "on_test_batch_begin", "on_test_batch_end",
    "on_predict_begin", "on_predict_end",
    "on_predict_batch_begin", "on_predict_batch_end",
    "on_exception",
)


class Callback:
    """Base class: override the hooks you need; ``self.model`` is the torchfit Model.

    Stop training from any hook with ``self.model.stop_training = True``.

    >>> class PrintLoss(Callback):
    ...     def on_epoch_end(self, epoch, logs):
    ...         print(epoch, logs["loss"])

    Set ``rank_zero_only = True`` on callbacks that write or print, so that under
    torchrun only the process of rank 0 runs them. Set ``runs_last = True`` on
    callbacks that save the training state (checkpoints): they run after all the
    others at every hook, so what they save includes what the others did at that
    point (a scheduler's step, early stopping's counter). Set ``saves_checkpoints = True``
    on a rank-zero-only callback that saves through ``torchfit.checkpoint``: where the
    strategy saves collectively (a sharded net is gathered by every rank) it then runs
    on every rank, and only the writing rank writes. Set ``saves_mid_epoch = True`` on a
    callback that may save a checkpoint at the end of a training batch: fit then keeps what
    resuming exactly from that batch needs (see ``torchfit.resuming``), and under torchrun
    the callback runs on every rank (each rank's position goes into the checkpoint). Set ``changes_lr = True``
    on callbacks that change the learning rate: fit then records the optimizer's
    rate in an ``lr`` column.
    """

    rank_zero_only: bool = False
    saves_checkpoints: bool = False
    saves_mid_epoch: bool = False
    runs_last: bool = False
    changes_lr: bool = False
    model: Any = None
    params: dict = {}

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        """Called by fit before ``on_train_begin`` with what the run will be (Keras' name).

        ``params``: ``epochs`` (the number of the last epoch this fit runs),
        ``initial_epoch`` (epochs finished before it), ``steps`` (training batches
        per epoch, None for a loader without ``len``), ``verbose`` and ``log_keys``
        (the keys every epoch's logs will have; None while unknown because
        ``train_step``/``eval_step`` is overridden: fit then calls ``set_params``
        again at the end of the first epoch, before ``on_epoch_end``). A callback
        with a ``monitor`` checks it here, so a typo fails before training.
        Callbacks that add keys to the epoch logs append them to
        ``params["log_keys"]`` here so that callbacks after them may monitor them.
        """
        self.params = params

    def implements(self, hook: str) -> bool:
        """Whether this callback does anything on ``hook`` (lets the loop skip no-op calls)."""
        return getattr(type(self), hook) is not getattr(Callback, hook)

    # State saved inside full checkpoints (best score, patience counter...).
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def on_train_begin(self, logs: dict) -> None: ...
    def on_train_end(self, logs: dict) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...
    def on_train_batch_begin(self, batch: int, logs: dict) -> None: ...
    def on_train_batch_end(self, batch: int, logs: dict) -> None: ...
    def on_backward_end(self, batch: int) -> None: ...
    def on_test_begin(self, logs: dict) -> None: ...
    def on_test_end(self, logs: dict) -> None: ...
    def on_test_batch_begin(self, batch: int, logs: dict) -> None: ...
    def on_test_batch_end(self, batch: int, logs: dict) -> None: ...
    def on_predict_begin(self, logs: dict) -> None: ...
    def on_predict_end(self, logs: dict) -> None: ...
    def on_predict_batch_begin(self, batch: int, logs: dict) -> None: ...
    def on_predict_batch_end(self, batch: int, logs: dict) -> None: ...
    def on_exception(self, exception: BaseException) -> None:
        """fit calls this for any exception or KeyboardInterrupt leaving the epoch loop, before it
        prints "Training interrupted" or re-raises (Lightning's name): close bars, flush files."""


class RunningLogs(Mapping[str, float]):
    """Keras' batch logs: the running figures of the epoch so far, computed when first read.

    A callback that reads ``logs["loss"]`` in ``on_train_batch_end`` gets the running
    (sample-weighted) mean as Keras gives it, and pays one host sync for that batch; no
    reader, no sync. At logging points the figures are already computed
    (``at_logging_point``), and ``step`` is the 1-based batch number the step dicts print.
    """

    __slots__ = ("_tracker", "_strip", "_values", "step", "at_logging_point")

    def __init__(self, tracker: Any, step: int, strip: str = "", values: Optional[Dict[str, float]] = None):
        self._tracker, self._strip, self.step = tracker, strip, step
        self._values = values
        self.at_logging_point = values is not None

    def _figures(self) -> Dict[str, float]:
        if self._values is None:
            n = len(self._strip)
            figures = self._tracker.compute() if self._tracker is not None else {}
            self._values = {"step": self.step, **{(k[n:] if n and k.startswith(self._strip) else k): v
                                                  for k, v in figures.items()}}
        return self._values

    def __getitem__(self, key: str) -> float:
        return self._figures()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._figures())

    def __len__(self) -> int:
        return len(self._figures())

    # the dict's own views and lookups, not Mapping's generic ones: the printer and the step history
    # read them at every logging point
    def items(self) -> ItemsView[str, float]:
        return self._figures().items()

    def keys(self) -> KeysView[str]:
        return self._figures().keys()

    def values(self) -> ValuesView[float]:
        return self._figures().values()

    def get(self, key: str, default: Any = None) -> Any:
        return self._figures().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._figures()

    def __repr__(self) -> str:
        return repr(self._figures())


def is_logging_point(logs: Mapping[str, Any]) -> bool:
    """Whether batch ``logs`` come from a logging point (figures already read back): torchfit's own
    callbacks record and print only there. A plain dict counts when it is not empty."""
    flag = getattr(logs, "at_logging_point", None)
    return bool(logs) if flag is None else flag


class LambdaCallback(Callback):
    """A callback from plain functions, for one-off hooks.

    >>> cb = LambdaCallback(on_epoch_end=lambda epoch, logs: print(epoch, logs["loss"]))
    """

    def __init__(self, **hooks: Callable):
        unknown = sorted(set(hooks) - set(HOOKS))
        if unknown:
            raise TypeError(f"LambdaCallback got unknown hook(s) {unknown}; known hooks: {list(HOOKS)}")
        for name, fn in hooks.items():
            if not callable(fn):
                raise TypeError(f"LambdaCallback({name}=...) must be callable, got {type(fn).__name__}")
            setattr(self, name, fn)
        self._hooks = frozenset(hooks)

    def implements(self, hook: str) -> bool:
        return hook in self._hooks


def _noop(*args: Any) -> None:
    return None


def _dispatcher(methods: List[Callable]) -> Callable:
    # The per-step hooks are called on every batch: with no implementer they cost
    # one call to a no-op, with one they are the bound method itself.
    if not methods:
        return _noop
    if len(methods) == 1:
        return methods[0]

    def dispatch(*args: Any) -> None:
        for method in methods:
            method(*args)

    return dispatch


def check_callbacks(callbacks: Any) -> List[Callback]:
    """The user's ``callbacks=`` argument as a new list, every item checked to be a ``Callback``.

    >>> check_callbacks(None)
    []
    """
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        raise TypeError(
            f"callbacks must be a list of callbacks; got a single {type(callbacks).__name__}. "
            f"Wrap it in a list: callbacks=[{type(callbacks).__name__}(...)]"
        )
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be a list of torchfit Callback instances; got {type(callbacks).__name__}")
    callbacks = list(callbacks)
    for cb in callbacks:
        if isinstance(cb, type) and issubclass(cb, Callback):
            raise TypeError(f"callbacks holds the class {cb.__name__}; pass an instance: {cb.__name__}(...)")
        if not isinstance(cb, Callback):
            raise TypeError(
                f"callbacks must be torchfit.callbacks.Callback instances; got {type(cb).__name__}. "
                "Subclass Callback, or wrap functions in LambdaCallback(on_epoch_end=...)"
            )
    return callbacks


class CallbackList:
    """Runs hooks on callbacks in list order (``runs_last`` ones after the rest); hooks are
    attributes named like ``Callback``'s."""

    def __init__(self, callbacks: Iterable[Callback], model: Any, is_main_process: bool = True,
                 collective_saves: bool = False):
        callbacks = list(callbacks)
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"callbacks must be torchfit.callbacks.Callback instances; got {type(cb).__name__}. "
                    "Subclass Callback, or wrap functions in LambdaCallback(on_epoch_end=...)"
                )
        kept = [cb for cb in callbacks if is_main_process or not cb.rank_zero_only
                or (cb.saves_checkpoints and (collective_saves or cb.saves_mid_epoch))]
        # a checkpoint may be written after a training batch: fit keeps the position (``resuming``)
        self.saves_mid_epoch = any(cb.saves_mid_epoch for cb in kept)
        # Stable: list order, except that state-saving callbacks go after the rest.
        self.callbacks = sorted(kept, key=lambda cb: cb.runs_last)
        for cb in self.callbacks:
            cb.set_model(model)
        self.implemented = set()  # hooks some callback implements (the loop builds batch logs only for those)
        for hook in HOOKS:
            methods = [getattr(cb, hook) for cb in self.callbacks if cb.implements(hook)]
            if methods:
                self.implemented.add(hook)
            setattr(self, hook, _dispatcher(methods))

    def __iter__(self):
        return iter(self.callbacks)

    def set_params(self, params: dict) -> None:
        for cb in self.callbacks:
            cb.set_params(params)

    def find(self, kind: type) -> Optional[Callback]:
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)
