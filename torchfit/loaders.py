"""Loader helpers: how long a loader is, Keras' step limits, and the first batches of a loader.

Owns what fit needs to know about a loader before and while training without
training on it: its length (``None`` for a generator), a loader cut or extended
to ``steps`` batches per pass (``steps_per_epoch`` / ``validation_steps``) and
the first ``n`` batches drawn once (``overfit_batches``). Argument checks and run
assembly use these without reaching into the loop.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Iterator, List, Optional


def loader_length(loader: Iterable) -> Optional[int]:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None



class RanOut(Exception):
    """A one-shot source (a generator) ran out before the first batch of a pass that needed one."""


class StepLimit:
    """``steps`` batches of ``loader`` per pass (Keras' ``steps_per_epoch`` / ``validation_steps``).

    >>> sl = StepLimit([1, 2, 3, 4, 5], 3, iter, name="dl_train")
    >>> list(sl), list(sl)            # training carries on where the last pass stopped (Keras 3)
    ([1, 2, 3], [4, 5, 1])
    >>> list(StepLimit([1, 2, 3, 4, 5], 3, iter, name="dl_val", carry_on=False))
    [1, 2, 3]

    With ``carry_on`` (training) one iterator of the source is carried across passes, so
    every batch is trained on in turn; when it ends, a source that can be iterated again
    starts again (a new shuffle), and a one-shot source (a generator) ends the pass early
    (``ran_out``; fit stops after that epoch, as Keras does) or, with nothing left for a
    pass, raises ``RanOut``. Without ``carry_on`` (validation) every pass starts the source
    again and a one-shot source that runs short gives what it has, with a warning.

    For exact resume the carried iterator's *origin* (``snapshot()`` taken as it starts:
    RNG states and the loader's generators) and the batches ``drawn`` from it are kept;
    ``resume_stream`` starts it again from a saved origin and draws as many.
    """

    def __init__(self, loader: Iterable, steps: int, iterate: Callable[[Iterable], Iterator], name: str,
                 carry_on: bool = True, snapshot: Optional[Callable[[Iterable], Any]] = None):
        self.loader, self.steps, self.iterate, self.name = loader, steps, iterate, name
        self.carry_on, self.snapshot = carry_on, snapshot
        self.one_shot = isinstance(loader, Iterator)
        self.ran_out = False
        self.origin: Any = None
        self.drawn = 0
        self._source: Optional[Iterator] = None
        self._given = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Any]:
        if not self.carry_on:
            self._source = None
        given, self._given = self._given, 0  # a resumed pass: the batches its first part gave
        while given < self.steps:
            fresh = self._source is None
            if fresh:
                self._start()
            batch = next(self._source, _END)  # type: ignore[arg-type]
            if batch is _END:
                self._source = None
                if self.one_shot:  # a generator cannot start again
                    self._ran_out(given)
                    return
                if fresh:
                    raise ValueError(f"{self.name} yielded no batches; steps_per_epoch/validation_steps need at "
                                     "least one")
                continue
            self.drawn += 1
            given += 1
            yield batch

    def _start(self) -> None:
        if self.snapshot is not None and self.carry_on:
            self.origin = self.snapshot(self.loader)
        self._source = iter(self.iterate(self.loader))
        self.drawn = 0

    def _ran_out(self, given: int) -> None:
        steps = "steps_per_epoch" if self.carry_on else "validation_steps"
        if self.carry_on:
            self.ran_out = True
            if given == 0:
                raise RanOut(f"{self.name} (a generator) ran out of data: it gave {self.drawn} batch(es) in all, "
                             f"and {steps}={self.steps} asks for more each epoch")
            return
        warnings.warn(f"{self.name} (a generator) ran out after {given} of {steps}={self.steps} batches; the "
                      f"figures are over those {given}. Pass a loader that can be iterated again, or {steps}="
                      f"{given}", RuntimeWarning, stacklevel=3)

    # exact resume (torchfit.resuming)
    def stream_state(self) -> Optional[dict]:
        """Where the carried iterator is: its origin and the batches drawn from it (None: not started)."""
        if not self.carry_on or self._source is None or self.origin is None:
            return None
        return {"origin": self.origin, "drawn": self.drawn}

    def resume_stream(self, state: dict, put_origin: Callable[[Any, Iterable], None], given: int = 0) -> None:
        """Start the carried iterator again from a saved origin and draw the batches it had given;
        the next pass gives the rest of one whose first ``given`` batches were trained before."""
        self._given = given
        put_origin(state["origin"], self.loader)
        self.origin = state["origin"]
        self._source = iter(self.iterate(self.loader))
        self.drawn = draw(self._source, state["drawn"])
        if self.drawn < state["drawn"]:
            raise ValueError(f"{self.name} gives fewer batches than the saved run had drawn "
                             f"({state['drawn']}): resume with the same training data")


_END = object()


def draw(batches: Iterator[Any], n: int) -> int:
    """Take up to ``n`` batches from ``batches`` and drop them (a resumed run's batches already done);
    returns how many there were.

    >>> it = iter([1, 2, 3]); draw(it, 2), next(it)
    (2, 3)
    """
    for done in range(n):
        if next(batches, _END) is _END:
            return done
    return n


def limit_steps(loader: Iterable, steps: Optional[int], iterate: Callable[[Iterable], Iterator], name: str,
                carry_on: bool = True, snapshot: Optional[Callable[[Iterable], Any]] = None) -> Iterable:
    """``loader`` limited to ``steps`` batches per pass (``StepLimit``); as is for None."""
    return loader if steps is None else StepLimit(loader, steps, iterate, name, carry_on, snapshot)


def first_batches(loader: Iterable, n: int) -> List[Any]:
    """The first ``n`` batches of ``loader``, drawn once (``fit(overfit_batches=n)``)."""
    batches: List[Any] = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            break
    return batches
