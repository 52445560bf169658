"""Where a fit is inside an epoch, and going back there: exact mid-epoch resume.

Owns the *position* of a training epoch as a checkpoint keeps it, and continuing from one:

- at the start of each training pass, when some callback may write a checkpoint mid-epoch
  (``Callback.saves_mid_epoch``: ``ModelCheckpoint(save_freq=N)``, ``BackupAndRestore``, the
  preemption handler), the RNG states and the train loader's generators are taken as they are
  just before the loader is iterated: the *origin* of the epoch's batches;
- after each training batch the position is the number of batches done; ``position_state``
  turns it, with the epoch's running figures (``Tracker.state_dict``), the accumulation
  window (and its gradients, inside a window) and the origin, into the checkpoint's
  ``mid_epoch`` entry;
- a fit resumed from it (``start_stream``) puts the origin back, iterates the loader again
  and draws the batches already done without training on them (the same shuffle, the same
  worker seeds, a map-style dataset's random augmentations drawn in the same order), then
  puts back the RNG states of the moment of saving and the running figures, and trains on
  from the next batch.

So a resumed run ends with the weights, optimizer state, history and printed figures of an
uninterrupted one. The batches done are fetched again (not trained on): the cost of a resume
is one pass of the data loading up to the position. Under torchrun every rank keeps its own
position (``MultiProcess`` gathers them into the checkpoint, each rank takes its own back).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import torch

from .batch import to_device
from .checkpoint.state import loader_generators, rng_state, set_rng_state
from .errors import CheckpointError
from .loaders import draw, loader_length
from .metrics.state import load_metric_state, metric_state

_CPU = torch.device("cpu")

Position = Dict[str, Any]


def origin(loader: Iterable) -> Dict[str, Any]:
    """The RNG states and ``loader``'s generators as they are now: where its batches start."""
    return {"rng": rng_state(), "loaders": [g.get_state() for g in loader_generators(_source(loader))]}


def position_state(run: Any) -> Optional[Position]:
    """This process's position in the training pass (None where it cannot resume exactly: outside
    a training batch's end, or in a fit that took no origin)."""
    if not resumable_here(run):
        return None
    optim = run.config.optim
    window = optim.window_state() if optim is not None else None
    stream = run.config.stream  # steps_per_epoch: the iterator carried across epochs has its own origin
    origin_, drawn = (stream.origin, stream.drawn) if stream is not None else (run.origin, run.position)
    state = {"batch": int(run.position), "origin": origin_, "drawn": int(drawn), "rng": rng_state(),
             "tracker": run.tracker.state_dict(), "window": window,
             # a step of the user's own keeps its figures in the model's metric objects (Keras' way)
             "model_metrics": [metric_state(m, getattr(m, "name", str(i))) for i, m in enumerate(run.own_metrics)]}
    return to_device(state, _CPU)  # plain CPU values: gathered across ranks, written, read anywhere


def position_for(mid: Optional[Mapping[str, Any]], run: Any, loader: Iterable, tracker: Any) -> Optional[Position]:
    """This rank's position from a checkpoint's ``mid_epoch`` entry, checked against this fit before
    anything changes; None for a checkpoint written at an epoch's end (or without positions)."""
    if mid is None or "positions" not in mid:
        return None
    strategy = run.config.strategy
    positions = mid["positions"]
    if len(positions) != strategy.world_size:
        raise CheckpointError(
            f"the checkpoint was written mid-epoch by {len(positions)} process(es), and this fit runs on "
            f"{strategy.world_size}: each process continues its own part of the epoch, so resume on "
            f"{len(positions)} process(es) (or from a checkpoint written at an epoch's end); nothing was changed")
    pos = positions[strategy.rank]
    n = loader_length(loader)
    if n is not None and pos["batch"] > n:
        raise CheckpointError(
            f"the checkpoint was written after batch {pos['batch']} of epoch {mid['epoch']}, but this fit's "
            f"training loader has {n} batches: resume with the same training data and batch size; nothing was changed")
    _check_generators(pos["origin"], loader)
    if set(pos["tracker"]["metrics"]) != set(tracker.metrics):
        raise CheckpointError(
            f"the checkpoint's running figures are for metrics {sorted(pos['tracker']['metrics'])}, and this fit "
            f"has {sorted(tracker.metrics)}: compile the same metrics as the saved run; nothing was changed")
    optim, window = run.config.optim, pos["window"]
    if optim is not None and window is not None and window["micro"] and window.get("accum_steps") != optim.accum_steps:
        raise CheckpointError(
            f"the checkpoint was written inside an accumulation window of grad_accum_steps="
            f"{window.get('accum_steps')} ({window['micro']} batch(es) in), and this fit has grad_accum_steps="
            f"{optim.accum_steps}: resume with the same grad_accum_steps; nothing was changed")
    if optim is not None and window is not None and window["grads"] is not None \
            and len(window["grads"]) != len(optim.params):
        raise CheckpointError(
            f"the checkpoint was written inside an accumulation window with gradients of {len(window['grads'])} "
            f"parameters, and this net trains {len(optim.params)}: resume with the same net; nothing was changed")
    return pos


def check(ckpt: Mapping[str, Any], run: Any, loader: Iterable, tracker: Any) -> Optional[Position]:
    """Everything a checkpoint (or a loaded one's pending state) needs from this fit to continue exactly,
    checked before anything changes: this rank's mid-epoch position (returned), or at an epoch's end the
    ``steps_per_epoch`` iterator's generators."""
    pos = position_for(ckpt["mid_epoch"], run, loader, tracker)
    stream = ckpt.get("train_stream")
    if pos is None and stream is not None and run.config.stream is not None:
        _check_generators(stream["origin"], loader)
    return pos


def _check_generators(origin_: Mapping[str, Any], loader: Iterable) -> None:
    gens, saved = loader_generators(_source(loader)), origin_["loaders"]
    if len(gens) != len(saved):
        raise CheckpointError(
            f"the checkpoint holds {len(saved)} random generator state(s) for the training loader, and this one has "
            f"{len(gens)}: build it as in the saved run (e.g. DataLoader(..., shuffle=True, "
            "generator=torch.Generator().manual_seed(0))); nothing was changed")


def resumable_here(run: Any) -> bool:
    """Whether a checkpoint written now resumes exactly: at a training batch's end, in a fit that keeps
    positions, and (where the strategy keeps a window's gradients out of reach) not inside a window."""
    if run.position is None or (run.origin is None and run.config.stream is None):
        return False
    optim = run.config.optim
    return optim is None or optim.micro == 0 or run.config.strategy.grads_in_params


def start_stream(run: Any, loader: Iterable, tracker: Any) -> Tuple[Iterator, int]:
    """The training pass's batches and the number already done: from the first batch, or from a
    checkpoint's position (``run.resume_at``, used once)."""
    iterate = run.config.iterate
    resume, run.resume_at = run.resume_at, None
    if resume is None:
        if run.keeps_position:
            if run.origin is None:  # the fit's first pass: running figures no checkpoint can hold fail now
                tracker.state_dict()
            run.origin = origin(loader)
        return iterate(loader), 0
    at = resume["batch"]
    if run.config.stream is not None:  # steps_per_epoch: the carried iterator, then the rest of this pass
        run.config.stream.resume_stream({"origin": resume["origin"], "drawn": resume["drawn"]}, _put_origin, at)
        batches = iterate(loader)
    else:
        _put_origin(resume["origin"], _source(loader))
        run.origin = resume["origin"]
        batches = iterate(loader)
        done = draw(batches, resume["drawn"])  # fetched again, not trained on: the same draws as the saved run
        if done < resume["drawn"]:
            raise ValueError(
                f"the checkpoint was written after batch {at} of epoch {run.epoch}, but the training loader "
                f"gives only {done} batch(es) now: resume with the same training data and batch size")
    set_rng_state(resume["rng"])
    tracker.load_state_dict(resume["tracker"], run.config.device)
    if run.config.optim is not None and resume["window"] is not None:
        run.config.optim.load_window_state(resume["window"])
    for i, (metric, state) in enumerate(zip(run.own_metrics, resume.get("model_metrics", ()))):
        load_metric_state(metric, state, getattr(metric, "name", str(i)), run.config.device)
    return batches, at


def prepare(run: Any, pending: Mapping[str, Any], loader: Iterable, tracker: Any) -> None:
    """A fit resumed from a checkpoint: the mid-epoch position to continue from (checked first), or at
    an epoch's end the ``steps_per_epoch`` iterator carried on as in the saved run."""
    run.resume_at = check(pending, run, loader, tracker)
    if run.resume_at is None:
        resume_train_stream(run, pending.get("train_stream"), pending["rng"])


def resume_train_stream(run: Any, state: Optional[Mapping[str, Any]], rng: Mapping[str, Any]) -> None:
    """At a resumed fit's start from an epoch's end: the ``steps_per_epoch`` iterator carried on as
    in the saved run (its origin, the batches it had given), then the RNG states of the checkpoint."""
    if state is None or run.config.stream is None:
        return
    run.config.stream.resume_stream(state, _put_origin)
    set_rng_state(rng)


def stream_state(run: Any) -> Optional[Dict[str, Any]]:
    """The carried ``steps_per_epoch`` iterator's origin and batches drawn, for any checkpoint (None without)."""
    stream = run.config.stream
    state = stream.stream_state() if stream is not None else None
    return to_device(state, _CPU) if state is not None else None


def _source(loader: Iterable) -> Iterable:
    """The loader whose generators draw the batches (through a ``steps_per_epoch`` limit)."""
    return getattr(loader, "loader", loader)


def _put_origin(saved: Mapping[str, Any], loader: Iterable) -> None:
    """The loader's generators and the RNG states as a saved origin holds them (``check`` compared the
    generators first)."""
    for g, s in zip(loader_generators(loader), saved["loaders"]):
        g.set_state(s)
    set_rng_state(saved["rng"])
