"""Loader helpers: how long a loader is, Keras' step limits, and the first batches of a loader.

Owns what fit needs to know about a loader before and while training without
training on it: its length (``None`` for a generator), a loader cut or extended
to ``steps`` batches per pass (``steps_per_epoch`` / ``validation_steps``) and
the first ``n`` batches drawn once (``overfit_batches``). Argument checks and run
assembly use these without reaching into the loop.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, List, Optional


def loader_length(loader: Iterable) -> Optional[int]:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None



class _StepLimit:
    """``steps`` batches of ``loader`` per pass, starting it again when it runs out (Keras' steps_per_epoch)."""

    def __init__(self, loader: Iterable, steps: int, iterate: Callable[[Iterable], Iterator]):
        self.loader, self.steps, self.iterate = loader, steps, iterate

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Any]:
        given = 0
        while given < self.steps:
            fresh = True
            for batch in self.iterate(self.loader):
                fresh = False
                yield batch
                given += 1
                if given == self.steps:
                    return
            if fresh:
                raise ValueError("the loader yielded no batches; steps_per_epoch/validation_steps need at least one")


def limit_steps(loader: Iterable, steps: Optional[int], iterate: Callable[[Iterable], Iterator]) -> Iterable:
    """``loader`` cut (or extended, by starting it again) to ``steps`` batches per pass; as is for None."""
    return loader if steps is None else _StepLimit(loader, steps, iterate)


def first_batches(loader: Iterable, n: int) -> List[Any]:
    """The first ``n`` batches of ``loader``, drawn once (``fit(overfit_batches=n)``)."""
    batches: List[Any] = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            break
    return batches
