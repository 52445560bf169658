"""``fit(..., num_processes=N)``: several training processes started from a notebook or a script.

Owns starting N worker processes with torch's multiprocessing (``fork`` where
that is safe, ``spawn`` elsewhere), giving each the environment torchrun would
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) so
that each one runs torchfit's ordinary multi-process ``fit`` (DDP, or the
strategy compiled in), and handing rank 0's results back to the calling
process: the trained weights, the optimizer and grad-scaler state, the history,
``model.epoch`` / ``global_step``, the callbacks' state, the RNG state and what
``save_checkpoint`` needs, so that the kernel's ``model`` is the model a
torchrun run would have left. It also owns the ways such a call ends: CUDA
already initialised (refused before anything starts), a worker that fails (every
other worker is stopped and the call raises that worker's error), Ctrl-C (the
first stops training on every rank at the next logging point and hands back
the finished epochs, as a single-process ``fit`` does; a second stops the
workers at once) and a parent that dies (the workers die with it).

It leaves training to ``Model.fit`` (each worker calls it) and never imports
``torchfit.model``: the model is handled through its public verbs and the few
attributes a checkpoint reads.
"""
from __future__ import annotations

import multiprocessing.connection
import numbers
import os
import signal
import socket
import sys
import tempfile
import traceback
from typing import Any, Dict, List, Mapping, Optional

import torch

from ..state import TrainingState
from .launch import _ENV, _dist, _initialized, launch_info

#: How long stopped workers get to exit after SIGTERM before they are killed.
_TERMINATE_GRACE_S = 5.0
_RESULT = "result.pt"


class WorkerError(RuntimeError):
    """A worker process of ``fit(num_processes=N)`` failed; the message holds its traceback."""


def start_method() -> str:
    """``"fork"`` where it is safe and available (Linux), else ``"spawn"``.

    Fork starts at once and needs nothing picklable (a notebook's classes and
    loaders work as they are); macOS's system libraries are not fork-safe and
    Windows has no fork.

    >>> start_method() in ("fork", "spawn")
    True
    """
    import torch.multiprocessing as mp

    if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        return "fork"
    return "spawn"


def check_can_launch(num_processes: Any, device: Optional[torch.device]) -> int:
    """The checks made before any worker starts; returns ``num_processes`` as an int."""
    # numbers.Integral: numpy's integers too (np.int64 from a config or an array), as fit's other counts
    if isinstance(num_processes, bool) or not isinstance(num_processes, numbers.Integral) or num_processes < 1:
        raise ValueError(f"num_processes must be a whole number >= 1 (the worker processes to train on); "
                         f"got {num_processes!r}")
    if launch_info() is not None or _initialized():
        raise RuntimeError(
            "fit(num_processes=...) starts its own processes, but this process is already one of a distributed "
            "job (torchrun's RANK/WORLD_SIZE are set or a process group is initialised): drop num_processes, "
            "the fit already runs on every process of the job"
        )
    if torch.cuda.is_initialized() or (device is not None and device.type == "cuda"):
        raise RuntimeError(
            "fit(num_processes=...) cannot start its workers: CUDA was already initialised in this process"
            + (f" (the model is on {device})" if device is not None and device.type == "cuda" else "")
            + ", and a CUDA context does not survive into forked processes. Restart the kernel and, before "
            "anything touches CUDA, compile with device='cpu' (no .cuda(), no torch.cuda calls): with CUDA "
            "available, worker r trains on cuda:r; nothing of the model is on the GPU in this process"
        )
    return int(num_processes)


def launch_fit(model: Any, num_processes: int, fit_args: Any, *,
               device: Optional[str] = None, method: Optional[str] = None) -> Any:
    """Run ``model.fit`` with ``fit_args`` on ``num_processes`` processes; returns rank 0's history.

    ``fit_args``: fit's arguments as one value (``torchfit.arguments.FitArgs``, what
    ``fit(..., num_processes=N)`` hands over) or a dict of fit's keyword arguments.

    ``Model.fit(..., num_processes=N)`` calls this. Worker ``r`` runs on
    ``cuda:r`` when CUDA is available (``device=None``, as torchrun's
    ``compile(device=None)`` would), otherwise on the model's device; pass
    ``device="cpu"`` to keep the workers off the GPUs. On CPU the workers talk
    through gloo. Afterwards ``model`` holds rank 0's weights, optimizer state,
    history, ``epoch`` and ``global_step``, as after the same fit under torchrun.

    >>> # history = model.fit(3, dl_train, dl_val, num_processes=2)
    >>> # torchfit.distributed.launch_fit(model, 2, {"epochs": 3, "dl_train": dl_train}, device="cpu")
    """
    n = check_can_launch(num_processes, getattr(model, "device", None))
    model._require_compiled("fit")
    fit_kwargs = dict(fit_args) if isinstance(fit_args, Mapping) else fit_args.kwargs()
    if n == 1:
        return model.fit(**fit_kwargs)  # one process is a plain fit, as under torchrun --nproc_per_node=1
    # Every argument is checked here, as a one-process fit checks it, before any worker starts: a bad one
    # is its own error, not a worker's traceback (the workers check them again, as every fit does).
    model._check_launch(fit_args)
    worker_device = _worker_device(model, device, n)
    import torch.multiprocessing as mp

    method = method or start_method()
    ctx = mp.get_context(method)
    stop = ctx.Event()
    # Forked workers get copies of everything; spawned ones would get the parameters through torch's
    # shared-memory pickler, all training the same storage as this process: send them plain bytes.
    job: Any = (model, fit_kwargs) if method == "fork" else _to_bytes(model, fit_kwargs)
    threads = max(1, torch.get_num_threads() // n)  # the workers share this machine's cores
    # In a kernel, rank 0's tables and step line are drawn here: a forked process cannot send
    # rich outputs to the notebook itself.
    screen = _Screen(ctx) if method == "fork" and _in_kernel() else None
    with tempfile.TemporaryDirectory(prefix="torchfit-launch-") as out_dir:
        port = _free_port()
        procs = [ctx.Process(target=_worker, name=f"torchfit-rank{r}",
                             args=(r, n, port, job, out_dir, worker_device, threads, stop, os.getpid(),
                                   screen.sender if screen is not None and r == 0 else None))
                 for r in range(n)]
        try:
            for p in procs:
                p.start()
            interrupted = _wait(procs, stop, out_dir, screen)
        except BaseException:
            _stop_all(procs)
            raise
        result = torch.load(os.path.join(out_dir, _RESULT), map_location="cpu", weights_only=True)
    _hand_back(model, result, fit_kwargs.get("callbacks"))
    if interrupted and model.history is not None:
        print(f"Training interrupted (KeyboardInterrupt): the {n} workers stopped together; model.history holds "
              f"the {len(model.history)} finished epoch(s) and the model is usable.", file=sys.stderr)
    return model.history


# ------------------------------------------------------------------ the calling process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_device(model: Any, device: Optional[str], n: int) -> Optional[str]:
    """The device type workers train on: ``"cuda"`` (one GPU per rank) or ``None`` (the model's own)."""
    if device is None:
        # torch.cuda.is_available() does not create a context, so it is safe before forking.
        use_cuda = torch.cuda.is_available()
    else:
        kind = torch.device(device).type
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"launch_fit(device={device!r}): the workers run on 'cpu' or 'cuda'")
        use_cuda = kind == "cuda"
        if use_cuda and not torch.cuda.is_available():
            raise ValueError(f"launch_fit(device={device!r}) but CUDA is not available on this machine; "
                             "pass device='cpu'")
    if not use_cuda:
        return None
    if torch.cuda.device_count() < n:
        raise ValueError(f"num_processes={n} but this machine has {torch.cuda.device_count()} CUDA device(s): "
                         "start at most one worker per GPU, or pass device='cpu'")
    return "cuda"


def _in_kernel() -> bool:
    from ..callbacks.printing import in_notebook

    return in_notebook()


class _Screen:
    """Draws, in the calling kernel, what rank 0's printer displays (tables, the step line).

    The worker's ``IPython.display.display`` is replaced by one that sends each
    bundle down a pipe; here each arrives as a display or an in-place update.
    """

    def __init__(self, ctx: Any):
        self.receiver, self.sender = ctx.Pipe(duplex=False)
        self.handles: Dict[int, Any] = {}

    def drain(self) -> None:
        from IPython.display import display

        while self.receiver.poll():
            try:
                kind, key, bundle = self.receiver.recv()
            except EOFError:
                return
            if kind == "display":
                self.handles[key] = display(bundle, raw=True, display_id=True)
            elif key in self.handles:
                self.handles[key].update(bundle, raw=True)


class _ForwardedDisplay:
    """``IPython.display.display`` in a worker forked from a kernel: bundles go to the parent's ``_Screen``."""

    def __init__(self, sender: Any):
        self.sender = sender
        self.count = 0

    def __call__(self, bundle: Any, raw: bool = True, display_id: bool = True) -> Any:
        self.count += 1
        key = self.count
        self.sender.send(("display", key, bundle))
        sender = self.sender

        class Handle:
            def update(self, bundle: Any, raw: bool = True) -> None:
                sender.send(("update", key, bundle))

        return Handle()


def _wait(procs: List[Any], stop: Any, out_dir: str, screen: Optional[_Screen] = None) -> bool:
    """Wait for every worker; returns whether a Ctrl-C stopped training early.

    A worker that fails ends the call with its error after every other worker
    is stopped. The first Ctrl-C asks the workers to stop together (at the
    next logging point or epoch end); a second stops them at once.
    """
    interrupted = False
    pending = list(procs)
    while pending:
        try:
            waiting = [p.sentinel for p in pending] + ([screen.receiver] if screen is not None else [])
            ready = multiprocessing.connection.wait(waiting, timeout=1.0)
            if screen is not None:
                screen.drain()
        except KeyboardInterrupt:
            if interrupted:
                raise  # the second Ctrl-C: launch_fit stops every worker and re-raises
            interrupted = True
            stop.set()
            print("KeyboardInterrupt: stopping every worker at its next logging point (press again to stop "
                  "them at once; the model then stays as it was before fit)", file=sys.stderr)
            continue
        for p in [p for p in pending if p.sentinel in ready]:
            p.join()
            pending.remove(p)
            if p.exitcode != 0:
                rank_ = int(p.name.rsplit("rank", 1)[1])
                _stop_all(pending)
                raise WorkerError(_failure(rank_, p.exitcode, out_dir))
    if screen is not None:
        screen.drain()  # what rank 0 showed just before it exited
    if not os.path.exists(os.path.join(out_dir, _RESULT)):
        raise WorkerError("fit(num_processes=...): every worker exited cleanly but rank 0 handed back no result")
    return interrupted


def _failure(rank_: int, exitcode: int, out_dir: str) -> str:
    path = os.path.join(out_dir, f"error{rank_}.txt")
    if os.path.exists(path):
        with open(path) as f:
            return f"fit(num_processes=...): worker rank {rank_} failed; its traceback:\n{f.read()}"
    how = f"was killed by signal {-exitcode}" if exitcode < 0 else f"exited with status {exitcode}"
    return (f"fit(num_processes=...): worker rank {rank_} {how} without a Python error (out of memory? a crash "
            "in native code?); the other workers were stopped")


def _stop_all(procs: List[Any]) -> None:
    """SIGTERM every live worker, then SIGKILL those still alive after a grace period; reap them all."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(_TERMINATE_GRACE_S)
        if p.is_alive():
            p.kill()
            p.join()


def _hand_back(model: Any, result: Mapping[str, Any], callbacks: Any) -> None:
    """Put rank 0's end-of-fit state into the calling process's ``model``."""
    from .. import checkpoint

    model.net.load_state_dict(result["net"])
    if result["optimizer"] is not None:
        model.optimizer.load_state_dict(result["optimizer"])
    scaler = model.precision.scaler if model.precision is not None else None
    if scaler is not None and result["scaler"]:
        scaler.load_state_dict(result["scaler"])
    model.stop_training = result["stop_training"]
    # Rank 0's state, whole; a loaded checkpoint's loader and callback state went to the workers' fit.
    model.training_state.restore(TrainingState(
        epoch=result["epoch"], global_step=result["global_step"], history=result["history"],
        step_history=result["step_history"], last_fit=result["fit_state"], pending_resume=None))
    if callbacks:
        checkpoint.restore_callbacks({"callbacks": result["callbacks"]}, list(callbacks))
    if result["fit_state"] is not None:
        checkpoint.set_rng_state(result["fit_state"]["rng"])


# ------------------------------------------------------------------ a worker


def _to_bytes(model: Any, fit_kwargs: Mapping[str, Any]) -> bytes:
    import pickle

    try:
        return pickle.dumps((model, dict(fit_kwargs)))
    except Exception as exc:
        raise TypeError(
            f"fit(num_processes=...) starts its workers with 'spawn' on {sys.platform}, which needs the model, the "
            f"loaders and the callbacks to be picklable, and one is not ({type(exc).__name__}: {exc}). Define "
            "your classes and functions in a module (not in the notebook), or run on Linux, where workers are "
            "forked") from exc


def _worker(rank_: int, world: int, port: int, job: Any, out_dir: str,
            device: Optional[str], threads: int, stop: Any, parent: int, screen: Any = None) -> None:
    # Ctrl-C in a terminal reaches every process of the group: the parent decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    for key in _ENV:
        os.environ.pop(key, None)
    os.environ.update(RANK=str(rank_), WORLD_SIZE=str(world), LOCAL_RANK=str(rank_), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        if isinstance(job, bytes):
            import pickle

            job = pickle.loads(job)
        model, fit_kwargs = job
        if screen is not None:  # rank 0 of a kernel's launch: its displays are drawn by the parent
            import IPython.display

            IPython.display.display = _ForwardedDisplay(screen)
            fit_kwargs = {**fit_kwargs, "progress_bar": False}  # a widget's comm cannot be forwarded
        elif _leave_the_kernel():
            fit_kwargs = {**fit_kwargs, "progress_bar": False}
        if device == "cuda":
            _move(model, torch.device("cuda", rank_))
        from ..callbacks import Callback
        from ..callbacks.base import is_logging_point

        class _StopOnInterrupt(Callback):
            """Turns the parent's Ctrl-C into ``stop_training`` at a logging point or epoch end, where the
            ranks agree on stopping (the strategy's sync callback runs after this one)."""

            def on_train_batch_end(self, batch: int, logs: dict) -> None:
                if is_logging_point(logs) and stop.is_set():
                    self.model.stop_training = True

            def on_epoch_end(self, epoch: int, logs: dict) -> None:
                if stop.is_set():
                    self.model.stop_training = True

        user_callbacks = list(fit_kwargs.get("callbacks") or [])
        model.fit(**{**fit_kwargs, "callbacks": user_callbacks + [_StopOnInterrupt()]})
        result = _result(model, user_callbacks)  # collective under FSDP: every rank takes part
        if rank_ == 0:
            from ..checkpoint import atomic_save

            atomic_save(result, os.path.join(out_dir, _RESULT))
    except BaseException:
        with open(os.path.join(out_dir, f"error{rank_}.txt"), "w") as f:
            f.write(traceback.format_exc())
        os._exit(1)  # no teardown: the other ranks may be blocked in a collective; the parent stops them
    if _initialized():
        _dist().destroy_process_group()


def _result(model: Any, user_callbacks: List[Any]) -> Dict[str, Any]:
    from .. import checkpoint

    net, optimizer = checkpoint.full_state(model, model._strategy())
    scaler = model.precision.scaler if model.precision is not None else None
    state = model.training_state.copy()  # plain containers only: the file loads with weights_only
    return {
        "net": net, "optimizer": optimizer,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(state.epoch), "global_step": int(state.global_step),
        "stop_training": bool(model.stop_training),
        "history": state.history, "step_history": state.step_history,
        "fit_state": state.last_fit, "callbacks": checkpoint.callbacks_state(user_callbacks),
    }


def _move(model: Any, device: torch.device) -> None:
    """Compile the worker's copy again for its own GPU: same loss, optimizer, metrics and options."""
    fmt = model._setup.outputs
    model.compile(model.loss_fn, model.optimizer, model.compiled_metrics, device=device,
                  precision=model.precision.name, jit_compile=model.jit_compile, strategy=model.strategy,
                  target_key=fmt.target_key, output_key=fmt.output_key,
                  gradient_checkpointing=model._setup.gradient_checkpointing)


def _leave_the_kernel() -> bool:
    """In a worker forked from a Jupyter kernel that does not draw for the parent, print text.

    ipykernel refuses rich display messages from a forked process ("attempted to
    send message from fork") but forwards what it prints to the cell's output, so
    the worker's copy of the shell stops claiming a kernel (the parent's is untouched).
    Returns whether it was a kernel.
    """
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    if getattr(shell, "kernel", None) is None:
        return False
    try:
        shell.kernel = None
    except Exception:  # a traitlet that refuses None: hide the shell from torchfit's check instead
        object.__setattr__(shell, "kernel", None)
    return True


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when the process that started it dies (a killed kernel)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
