"""Weight averaging as callbacks: ``EMA`` (an exponential moving average updated after every
optimizer step) and ``SWA`` (an equal-weight average of the weights at epoch ends).

Owns the averaged copies of the net's floating-point parameters, when they are
updated, swapping them into the net (for validation, and at the end of fit) and
back, and their place in checkpoints (``state_dict``, with the raw weights while
the average is in the net; ``check_state_dict`` refuses a state for another net
before a resume changes anything). The training itself is untouched: the
optimizer always steps the raw weights. An average belongs to one net (by the
identity of its parameters): bound to another, the callback starts afresh.

Buffers are not averaged: the net's own buffers (BatchNorm's running statistics,
themselves running averages) are used with the averaged weights. ``SWA``
recomputes BatchNorm statistics for its averaged weights at the end of fit.
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, Iterable, List, Mapping, Optional

import torch

from .base import Callback

__all__ = ["EMA", "SWA"]


def _current_run(model: Any) -> Any:
    """The run of the fit in progress (None outside one): the one place this module reads fit internals."""
    return model.run


def _fit_train_loader(model: Any) -> Any:
    run = _current_run(model)
    return run.config.loaders.get("dl_train") if run is not None else None


class _WeightAverage(Callback):
    """Shared mechanics: the averaged tensors, swapping them in and out, raw weights, checkpoints."""

    def __init__(self) -> None:
        self._names: List[str] = []
        self._params: List[torch.nn.Parameter] = []
        self._live: List[torch.Tensor] = []  # detached views of the net's parameters (same storage)
        self._average: Optional[List[torch.Tensor]] = None
        self._backup: Optional[List[torch.Tensor]] = None  # raw weights while the average is swapped in
        self._swapped = False
        self._left_in_net = False  # fit ended with the average in the net; _backup holds the raw weights
        self.updates = 0  # how many times the average took in the weights
        self._pending: Optional[dict] = None  # a state loaded before the callback was bound to a model

    # -------------------------------------------------------------- the tensors
    def _bind(self) -> None:
        """Follow this model's net; a net other than the one averaged so far starts a new average."""
        named = _averaged(self.model.net)
        params = [p for _, p in named]
        if not self._follows(params):
            self._forget()
        self._names = [n for n, _ in named]
        self._params = params
        self._live = [p.detach() for p in self._params]
        if self._pending is not None:  # a state handed over before this callback knew its model
            state, self._pending = self._pending, None
            self.load_state_dict(state)

    def _follows(self, params: List[torch.nn.Parameter]) -> bool:
        """Whether ``params`` are the parameters averaged so far. By identity: a new net of the same
        architecture (a new model, an estimator's refit) has other parameter objects and must not
        inherit the old average (held here, those objects are never freed, so never reused)."""
        return len(params) == len(self._params) and all(a is b for a, b in zip(params, self._params))

    def _forget(self) -> None:
        """Drop the average and everything counted with it (the net it belonged to keeps what it holds)."""
        self._average = None
        self._backup = None
        self._swapped = self._left_in_net = False
        self.updates = 0

    def _net_holds_average(self) -> bool:
        return self._swapped or self._left_in_net

    def _swap_in(self) -> None:
        if self._average is None or self._swapped or self._left_in_net:
            return  # (after fit the average is in the net already, and _backup holds the raw weights)
        if self._backup is None:
            self._backup = [t.clone() for t in self._live]
        else:
            torch._foreach_copy_(self._backup, self._live)
        torch._foreach_copy_(self._live, self._average)
        self._swapped = True

    def _swap_out(self) -> None:
        if self._swapped:
            torch._foreach_copy_(self._live, self._backup)
            self._swapped = False

    def _take_back_raw(self) -> None:
        """If the last fit left the average in the net and nobody changed it since, put the raw weights back.

        So two fits with the same callback train like one longer fit. Weights changed
        in between (``load_state_dict``, ``load_checkpoint``) are left alone.
        """
        if self._left_in_net and self._backup is not None:
            if all(torch.equal(p, a) for p, a in zip(self._live, self._average)):
                torch._foreach_copy_(self._live, self._backup)
        self._left_in_net = False
        self._swapped = False

    def _state_dict_with(self, tensors: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        # By identity: a parameter shared by two modules appears under both keys.
        index = {id(p): i for i, p in enumerate(self._params)}
        out = {}
        for key, value in self.model.net.state_dict(keep_vars=True).items():
            i = index.get(id(value))
            out[key] = (tensors[i] if i is not None else value).detach().clone()
        return out

    # -------------------------------------------------------------- public
    def averaged_state_dict(self) -> Dict[str, torch.Tensor]:
        """The net's ``state_dict`` with the averaged parameters (copies; buffers are the net's).

        >>> # torch.save(ema.averaged_state_dict(), "ema.pt")
        """
        self._require_average("averaged_state_dict")
        return self._state_dict_with(self._average)

    def raw_state_dict(self) -> Dict[str, torch.Tensor]:
        """The net's ``state_dict`` with the raw (trained, not averaged) parameters (copies).

        >>> # model.fit(10, dl, callbacks=[ema])      # the net now holds the average
        >>> # raw = ema.raw_state_dict()
        """
        self._require_average("raw_state_dict")
        raw = self._backup if self._net_holds_average() else self._live
        return self._state_dict_with(raw)

    def restore_raw(self) -> None:
        """Put the raw weights back into the net (after fit left the average there).

        >>> # ema.restore_raw(); model.evaluate(dl_val)   # the trained weights' own figures
        """
        if self._net_holds_average():
            torch._foreach_copy_(self._live, self._backup)
        self._swapped = self._left_in_net = False

    def _require_average(self, what: str) -> None:
        if self._average is None:
            raise RuntimeError(f"{type(self).__name__}.{what}(): there is no average yet; run fit with this callback")

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """The average, its counters and, while the average is in the net (after fit), the raw weights.

        A checkpoint written after fit holds the average in its ``net`` (what the net is then)
        and the raw weights here, so a fit that continues from it trains the raw weights, as
        one fit straight through would.
        """
        if self._average is None:
            return {}
        raw = self._backup if self._net_holds_average() else None
        return {"names": list(self._names), "average": [t.detach().clone() for t in self._average],
                "updates": int(self.updates),
                "raw": None if raw is None else [t.detach().clone() for t in raw]}

    def check_state_dict(self, state: Mapping[str, Any]) -> None:
        """Raise ValueError if ``state`` cannot be loaded into this callback for this model's net; changes nothing.

        >>> EMA().check_state_dict({})   # an empty state (nothing averaged yet) always fits

        Checked: the entries and their types, the parameter names in this net's order,
        and every tensor's shape. ``fit(resume_from=...)`` runs it (through
        ``checkpoint.check_callbacks_state``) before the checkpoint changes anything.
        """
        if not state:
            return
        who = type(self).__name__
        for key in self._state_keys():
            if key not in state:
                raise ValueError(f"the {who} state has no {key!r} entry; it was saved by another version of {who}")
        names, average, raw = state["names"], state["average"], state.get("raw")
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"the {who} state's 'names' should be a list of parameter names; "
                             f"got {type(names).__name__}")
        for key, tensors in (("average", average), ("raw", raw)):
            if key == "raw" and tensors is None:
                continue
            if not isinstance(tensors, (list, tuple)) or not all(
                    isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors):
                raise ValueError(f"the {who} state's {key!r} should be a list of floating-point tensors")
            if len(tensors) != len(names):
                raise ValueError(f"the {who} state's {key!r} holds {len(tensors)} tensors for {len(names)} "
                                 "parameter names")
        for key in self._state_keys()[2:]:
            value = state[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"the {who} state's {key!r} should be an int >= 0; got {value!r}")
        if self.model is None:
            return  # not attached to a model yet: the net is compared when it is (at the next fit)
        named = _averaged(self.model.net)
        mine = [n for n, _ in named]
        if list(names) != mine:
            if sorted(names) == sorted(mine):
                i = next(i for i, (a, b) in enumerate(zip(names, mine)) if a != b)
                raise ValueError(
                    f"the {who} state lists this net's parameters in another order (position {i}: {names[i]!r}, "
                    f"this net has {mine[i]!r} there): it was saved from another definition of the net. "
                    "Resume with the net built as in the saved run"
                )
            missing, extra = sorted(set(mine) - set(names)), sorted(set(names) - set(mine))
            raise ValueError(
                f"the {who} state averages other parameters than this net's ({len(names)} tensors, this net "
                f"{len(mine)}; not in the state: {missing[:3]}, not in this net: {extra[:3]}). "
                "Resume with the same net"
            )
        for key, tensors in (("average", average), ("raw", raw)):
            for name, (_, p), t in zip(names, named, tensors or ()):
                if t.shape != p.shape:
                    raise ValueError(f"the {who} state's {key!r} for {name} has shape {tuple(t.shape)}, this net's "
                                     f"parameter {tuple(p.shape)}. Resume with the same net")

    def _state_keys(self) -> tuple:
        return ("names", "average", "updates")

    def load_state_dict(self, state: dict) -> None:
        """Take a saved state (checked first: ``check_state_dict``; a refused one changes nothing).

        A state with raw weights (saved while the average was in the net) puts them back into
        the net when it is loaded inside a fit, so that training continues from them;
        outside a fit it is kept as fit's end keeps it (``restore_raw()``, or the next fit).
        """
        if not state:
            return
        self.check_state_dict(state)
        if self.model is None:
            self._pending = dict(state)  # applied when a fit binds this callback to its model
            return
        if not self._follows([p for _, p in _averaged(self.model.net)]):
            self._bind()
        self._swap_out()  # (only mid-validation would the average be swapped in now)
        if self._average is None:
            self._average = [t.clone() for t in self._live]
        with torch.no_grad():
            for mine, saved in zip(self._average, state["average"]):
                mine.copy_(saved)  # onto the parameters' device
        self.updates = int(state["updates"])
        raw = state.get("raw")  # absent in checkpoints of earlier versions: the net held the raw weights
        self._swapped = False
        self._left_in_net = raw is not None
        if raw is not None:
            self._backup = [t.clone() for t in self._live]
            with torch.no_grad():
                for mine, saved in zip(self._backup, raw):
                    mine.copy_(saved)
            if _current_run(self.model) is not None:  # resuming inside fit: train on from the raw weights
                self._take_back_raw()

    # -------------------------------------------------------------- hooks
    def on_train_begin(self, logs: dict) -> None:
        self._bind()
        self._take_back_raw()
        if self._average is None:
            self._average = [t.clone() for t in self._live]

    def on_train_end(self, logs: dict) -> None:
        self._swap_out()
        self._swap_in()  # the average stays in the net; raw_state_dict() / restore_raw() give the raw weights
        self._swapped = False
        self._left_in_net = True


class EMA(_WeightAverage):
    """An exponential moving average of the weights, updated after every optimizer step.

    >>> ema = EMA(decay=0.999)
    >>> # model.fit(10, dl_train, dl_val, callbacks=[ema])   # val_ figures are the averaged weights'
    >>> # model.net now holds the average; ema.restore_raw() puts the trained weights back

    After each optimizer step that actually happened (``optimizer.register_step_post_hook``:
    with gradient accumulation once per window; a step the fp16 grad scaler skips
    does not count), every ``every_n_steps``-th step does
    ``average = decay * average + (1 - decay) * weights`` (``torch._foreach_lerp_`` on
    the device, no host sync). Until ``start_step`` steps are taken the average
    just follows the weights (copies them).

    - Validation in fit (and ``evaluate(..., callbacks=[ema])``) runs on the averaged
      weights: swapped in at ``on_test_begin``, back at ``on_test_end``.
    - When fit ends the average is left in the net. ``raw_state_dict()`` returns
      the raw weights, ``restore_raw()`` puts them back; the next fit with this
      callback puts them back itself (if the net was not changed meanwhile), so
      ``fit(1); fit(1)`` equals ``fit(2)``.
    - Checkpoints hold the average (``state_dict``) and continue exactly: a
      ``ModelCheckpoint`` file written during fit, and ``model.save_checkpoint`` *after*
      fit, whose ``net`` is the average (what the net holds then) while this callback's
      state keeps the raw weights; ``fit`` continuing from it (``load_checkpoint`` or
      ``resume_from``, with an ``EMA`` in its callbacks) trains on from the raw weights.
    - One ``EMA`` follows one net: given to the fit of another net (a new model of the
      same architecture) it starts a new average there.
    - Parameters only: buffers (BatchNorm statistics) are the net's own.
    - A fit that raises during validation leaves the average in the net:
      ``restore_raw()`` puts the trained weights back (the next fit with this
      callback does so itself).
    """

    def __init__(self, decay: float = 0.999, every_n_steps: int = 1, start_step: int = 0):
        super().__init__()
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must lie in [0, 1); got {decay!r}")
        for name, value, low in (("every_n_steps", every_n_steps, 1), ("start_step", start_step, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"EMA: {name} must be an int >= {low}; got {value!r}")
        self.decay = float(decay)
        self.every_n_steps = int(every_n_steps)
        self.start_step = int(start_step)
        self.optimizer_steps = 0  # steps taken with this callback in fits, across fits and checkpoints
        self._handle: Any = None
        self._run: Any = None

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if _current_run(self.model) is not self._run:
            # The fit that registered us ended without on_train_end (an exception): stop following.
            self._remove_hook()
            return
        self.optimizer_steps += 1
        with torch.no_grad():
            if self.optimizer_steps <= self.start_step:
                torch._foreach_copy_(self._average, self._live)
            elif (self.optimizer_steps - self.start_step) % self.every_n_steps == 0:
                torch._foreach_lerp_(self._average, self._live, 1.0 - self.decay)
                self.updates += 1

    def _remove_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def on_train_begin(self, logs: dict) -> None:
        self._remove_hook()  # left over from a fit that raised
        self._swap_out()  # likewise: an exception during validation left the average in
        super().on_train_begin(logs)
        self._run = _current_run(self.model)
        self._handle = self.model.optimizer.register_step_post_hook(self._after_step)

    def on_train_end(self, logs: dict) -> None:
        self._remove_hook()
        super().on_train_end(logs)

    def on_test_begin(self, logs: dict) -> None:
        if self._average is not None and not self._follows([p for _, p in _averaged(self.model.net)]):
            raise ValueError(
                "evaluate(callbacks=[ema]): this EMA holds the average of another net's weights; evaluate with "
                "the EMA of this model's fit, or without it (model.net holds the average after fit anyway)"
            )
        self._swap_in()

    def on_test_end(self, logs: dict) -> None:
        self._swap_out()

    def on_exception(self, exception: BaseException) -> None:
        # An error ends the fit without on_train_end: stop following the optimizer and leave the
        # raw weights in the net, as training left them (after Ctrl-C on_train_end still runs).
        if not isinstance(exception, KeyboardInterrupt):
            self._remove_hook()
            self._swap_out()

    def _forget(self) -> None:
        super()._forget()
        self.optimizer_steps = 0

    def _state_keys(self) -> tuple:
        return ("names", "average", "updates", "optimizer_steps")

    def state_dict(self) -> dict:
        state = super().state_dict()
        if state:
            state["optimizer_steps"] = int(self.optimizer_steps)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state:
            self.optimizer_steps = int(state["optimizer_steps"])


class SWA(_WeightAverage):
    """Stochastic weight averaging: the equal-weight mean of the weights at each epoch end from ``start_epoch`` on.

    >>> swa = SWA(start_epoch=8)
    >>> # model.fit(10, dl_train, dl_val, callbacks=[swa])   # net = mean of epochs 8, 9, 10's weights
    >>> # swa.restore_raw() puts the last trained weights back

    At the end of each epoch ``e >= start_epoch`` (after its validation, which runs
    on the raw weights: the average has no BatchNorm statistics of its own yet)
    ``average += (weights - average) / n``. When fit ends the average is put into
    the net and, if the net has BatchNorm layers, their statistics are recomputed
    over ``bn_loader`` (default: fit's training loader) with
    ``torch.optim.swa_utils.update_bn``; that pass leaves the RNG states and the
    loader's generator as it found them. Raw weights: ``raw_state_dict()`` /
    ``restore_raw()`` (the BatchNorm statistics stay the recomputed ones).
    Pair it with a constant or cyclic rate, e.g. ``torch.optim.swa_utils.SWALR``
    in ``LearningRateScheduler``. Checkpoints hold the average and its count.
    """

    def __init__(self, start_epoch: int, bn_loader: Optional[Iterable] = None):
        super().__init__()
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, numbers.Integral) or start_epoch < 1:
            raise ValueError(f"SWA: start_epoch must be an int >= 1 (epochs count from 1); got {start_epoch!r}")
        self.start_epoch = int(start_epoch)
        self.bn_loader = bn_loader
        self._loader: Any = None

    def on_train_begin(self, logs: dict) -> None:
        super().on_train_begin(logs)
        self._loader = self.bn_loader if self.bn_loader is not None else _fit_train_loader(self.model)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if epoch + 1 < self.start_epoch:  # hooks count epochs from 0; start_epoch from 1, as the history
            return
        self.updates += 1
        with torch.no_grad():
            torch._foreach_lerp_(self._average, self._live, 1.0 / self.updates)

    def on_train_end(self, logs: dict) -> None:
        if self.updates == 0:
            return  # start_epoch not reached: nothing to average, the net stays as trained
        super().on_train_end(logs)
        if self._loader is not None and _has_batchnorm(self.model.net):
            self._recompute_batchnorm(self._loader)

    def _recompute_batchnorm(self, loader: Iterable) -> None:
        """``update_bn`` over ``loader`` for the averaged weights; all or nothing.

        If the pass fails (a loader's I/O error, a batch the net refuses) the net gets back
        what training left: the raw weights, the BatchNorm statistics, momentum and modes.
        """
        from ..checkpoint import preserved_rng  # lazily: it owns RNG/generator snapshots

        net = self.model.net
        device = next(iter(net.parameters())).device
        norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        statistics = [{k: b.detach().clone() for k, b in m._buffers.items() if b is not None} for m in norms]
        modes = [(m, m.training) for m in net.modules()]
        try:
            with preserved_rng([loader]):
                torch.optim.swa_utils.update_bn(loader, net, device=device)
        except BaseException as exc:
            with torch.no_grad():
                for m, saved in zip(norms, statistics):
                    for k, v in saved.items():
                        m._buffers[k].copy_(v)
            self.restore_raw()
            if not isinstance(exc, Exception):
                raise  # Ctrl-C: as it came
            raise RuntimeError(
                f"SWA: recomputing BatchNorm statistics for the averaged weights over "
                f"{'bn_loader' if self.bn_loader is not None else 'the training loader'} failed "
                f"({type(exc).__name__}: {exc}). The net holds the weights and statistics training left. "
                "Fix the loader, then: model.net.load_state_dict(swa.averaged_state_dict()); "
                "torch.optim.swa_utils.update_bn(loader, model.net)"
            ) from exc
        finally:
            # update_bn sets momentum None for its pass and puts it back only when the pass ends normally
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            for m, training in modes:
                m.training = training


def _averaged(net: torch.nn.Module) -> List[Any]:
    """``(name, parameter)`` for the parameters an average keeps: the floating-point ones, in the net's order."""
    return [(n, p) for n, p in net.named_parameters() if p.is_floating_point()]


def _has_batchnorm(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
