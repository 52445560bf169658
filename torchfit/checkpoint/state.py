"""The state a checkpoint keeps beside the model's own: RNG states, loaders' generators, callbacks.

Collecting it (``rng_state``, ``callbacks_state``), putting it back (``set_rng_state``,
``restore_loaders``, ``restore_callbacks``, after ``check_callbacks_state``), and
``preserved_rng``, which runs a body that draws random numbers and leaves every generator as
it found it (the check of the first validation batch, ``lr_find``, SWA's BatchNorm pass).
"""
from __future__ import annotations

import contextlib
import random
import warnings
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from ..errors import CheckpointError


def callback_keys(callbacks: Iterable[Any]) -> List[Tuple[str, Any]]:
    """``(key, callback)`` pairs: the class name, numbered from the second of a class on (``Name_1``)."""
    seen: Dict[str, int] = {}
    pairs = []
    for cb in callbacks:
        name = type(cb).__name__
        n = seen.get(name, 0)
        seen[name] = n + 1
        pairs.append((name if n == 0 else f"{name}_{n}", cb))
    return pairs


def callbacks_state(callbacks: Iterable[Any]) -> Dict[str, dict]:
    states = {}
    for key, cb in callback_keys(callbacks):
        state = cb.state_dict()
        if state:
            states[key] = state
    return states


def loader_generators(loader: Any) -> List[torch.Generator]:
    """The distinct torch Generators a DataLoader draws from (its own, its sampler's, its batch sampler's)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    holders = (loader, getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None))
    found: List[torch.Generator] = []
    for holder in holders:
        g = getattr(holder, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def rng_state() -> Dict[str, Any]:
    """torch, CUDA (when present), numpy and Python ``random`` states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    cuda = state.get("cuda")
    # A CUDA checkpoint on a CPU-only machine: there is no CUDA generator to restore.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def preserved_rng(loaders: Iterable[Any] = ()) -> Iterator[None]:
    """Run the body, then put the RNG states and ``loaders``' generators back as they were.

    >>> # with preserved_rng([dl_train]):
    >>> #     torch.optim.swa_utils.update_bn(dl_train, net)   # draws shuffles, yet changes no RNG

    Covers torch's CPU generator, CUDA's (when initialised), numpy's global and
    Python's ``random``, and each loader's own generators (``DataLoader(generator=...)``
    and its sampler's).
    """
    gens = [g for dl in loaders if dl is not None for g in loader_generators(dl)]
    saved_gens = [g.get_state() for g in gens]
    rng = _rng_snapshot()
    try:
        yield
    finally:
        for g, s in zip(gens, saved_gens):
            g.set_state(s)
        _rng_restore(rng)


def _rng_snapshot() -> Dict[str, Any]:
    state: Dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    # Reading CUDA's generators would initialise CUDA: only when something already did.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rng_restore(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])



def restore_loaders(state: Mapping[str, Any], loaders: Mapping[str, Any]) -> None:
    """Put the saved generator states back into the loaders a resumed fit got."""
    for name, saved in state.get("loaders", {}).items():
        loader = loaders.get(name)
        if loader is None:
            continue
        gens = loader_generators(loader)
        if len(gens) != len(saved):
            warnings.warn(
                f"the checkpoint holds {len(saved)} random generator state(s) for {name} but this {name} has "
                f"{len(gens)}: its shuffling will not continue exactly. Build {name} as in the saved run "
                "(e.g. DataLoader(..., shuffle=True, generator=torch.Generator().manual_seed(0)))",
                RuntimeWarning, stacklevel=4,
            )
            continue
        for g, s in zip(gens, saved):
            g.set_state(s)


def check_callbacks_state(state: Mapping[str, Any], callbacks: Sequence[Any]) -> None:
    """Raise CheckpointError if a saved callback state does not fit the callback it would go to.

    >>> check_callbacks_state({"callbacks": {}}, [])

    A callback whose ``state_dict()`` is not empty now must get a saved state
    with the same keys (e.g. an EarlyStopping state for an EarlyStopping); a callback
    with a ``check_state_dict(state)`` method (``EMA``, ``SWA``) is asked too: it raises
    on a state it cannot take.
    ``restore_callbacks`` runs this before handing any state out; fit may run it
    earlier, before anything changes.
    """
    saved = state.get("callbacks", {})
    for key, cb in callback_keys(callbacks):
        if key not in saved:
            continue
        try:
            current = cb.state_dict()
        except Exception:  # e.g. a scheduler built only at on_train_begin: nothing to compare yet
            continue
        # fewer keys than the callback keeps now: an earlier version of it (its load_state_dict takes that)
        if current and not (saved[key] and set(saved[key]) <= set(current)):
            raise CheckpointError(
                f"the checkpoint's state for callback {key} has keys {sorted(saved[key])}, but this fit's {key} "
                f"keeps {sorted(current)}: it was saved by another kind or version of the callback. Pass the "
                "same callbacks as the saved run (nothing was changed)"
            )
        check = getattr(cb, "check_state_dict", None)  # a callback that can tell a state it cannot take
        if check is not None:
            try:
                check(saved[key])
            except Exception as exc:
                raise CheckpointError(f"the checkpoint's state for callback {key} does not fit it: {exc} "
                                      "(nothing was changed)") from exc


def restore_callbacks(state: Mapping[str, Any], callbacks: Sequence[Any]) -> None:
    """Hand each callback its saved state (matched by class name and order); warn about leftovers.

    Every state is checked (``check_callbacks_state``) before the first is handed out; a
    callback's ``load_state_dict`` that still fails is named in a CheckpointError.
    """
    check_callbacks_state(state, callbacks)
    saved = dict(state.get("callbacks", {}))
    for key, cb in callback_keys(callbacks):
        if key in saved:
            try:
                cb.load_state_dict(saved.pop(key))
            except Exception as exc:
                raise CheckpointError(
                    f"callback {key} could not take its state from the checkpoint ({type(exc).__name__}: {exc}). "
                    "Pass the same callbacks, built the same way, as the saved run"
                ) from exc
    if saved:
        warnings.warn(
            f"the checkpoint holds state for callback(s) {sorted(saved)} that this fit does not have; it was "
            "ignored. Pass the same callbacks as the saved run to continue their counters",
            RuntimeWarning, stacklevel=4,
        )

