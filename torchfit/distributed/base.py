"""The strategy interface: how one fit, evaluate or predict call runs across processes.

A strategy owns what a multi-process call adds to a single-process one, and how
the model's state is gathered, saved and loaded under it. Everything that runs a
call (``runs``, ``loop``, ``Model``) and everything that writes files
(``checkpoint``) asks the strategy and never looks at which one it is: there is no
``if strategy is None`` and no ``isinstance`` of a strategy outside its own file.

``SingleProcess`` is the default and the reference: every method is what one
process does. ``distributed.strategy(device, choice)`` picks the strategy of a call
from the registry in ``distributed/__init__.py``; a new strategy is one file
beside ``ddp.py`` and ``fsdp.py`` plus one line in that registry.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

#: ``recompute(preds, targets, weights)``: the batch loss of trimmed rows (the default steps' loss, with
#: those rows' sample weights), or None.
Recompute = Optional[Callable[[Any, Any, Any], Any]]


@dataclasses.dataclass(frozen=True)
class FitRequest:
    """What a fit hands its strategy: the net, what the train step would call in one process,
    the loaders of this rank, the trackers, and whether the train step is the user's own."""

    net: nn.Module
    train_net: Callable
    device: torch.device
    accum_steps: int
    dl_train: Any
    dl_val: Any
    train_tracker: Any
    val_tracker: Any
    recompute_train: Recompute = None
    recompute_eval: Recompute = None
    custom_step: bool = False  # an overridden train_step: it may call model.net, not the wrapper
    optimizer: Any = None  # the compiled optimizer (a strategy that replaces parameters points it at the new ones)


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """What the strategy adds to one fit.

    ``train_net``: what the default train step calls (the net, or a wrapper such as DDP);
    ``no_sync``: entered around the batches inside an accumulation window; ``sync_grads``:
    averages the window's gradients across processes before the optimizer step, for steps
    that do not train through a wrapper that does it; ``callbacks``: infrastructure callbacks
    appended after the user's; the trackers whose figures cover the whole dataset once.
    """

    train_net: Callable
    train_tracker: Any
    val_tracker: Any
    no_sync: Optional[Callable[[], ContextManager]] = None
    sync_grads: Optional[Callable[[List[torch.Tensor]], None]] = None
    callbacks: Sequence[Any] = ()


class SingleProcess:
    """One process: every method is the identity or the plain torch call.

    >>> s = SingleProcess()
    >>> s.is_main, s.reducer, s.fit_loaders([1], None)
    (True, None, ([1], None))
    """

    is_main = True
    rank = 0
    world_size = 1
    reducer: Any = None
    #: Whether every process takes part in saving (a sharded net is gathered by all of them):
    #: callbacks that save (``Callback.saves_checkpoints``) then run on every rank.
    saves_collectively = False
    #: Whether a gradient-accumulation window's gradients live in the parameters' ``.grad`` between
    #: batches, so that a mid-epoch checkpoint inside a window can keep them (``resuming``).
    grads_in_params = True

    # ---------------------------------------------------------------- calls
    def fit_loaders(self, dl_train: Iterable, dl_val: Optional[Iterable]) -> Tuple[Any, Any]:
        """This process's training and validation loaders."""
        return dl_train, dl_val

    def prepare_fit(self, request: FitRequest) -> FitPlan:
        return FitPlan(train_net=request.train_net, train_tracker=request.train_tracker,
                       val_tracker=request.val_tracker)

    def evaluate_loader(self, dl: Iterable, tracker: Any, recompute: Recompute) -> Tuple[Any, Any]:
        """This process's evaluate loader, and a tracker whose figures cover the whole dataset."""
        return dl, tracker

    def predict(self, dl: Iterable, predict_loop: Callable[[Any], Any]) -> Any:
        """The whole dataset's outputs, in dataset order."""
        return predict_loop(dl)

    def settle(self, net: nn.Module) -> None:
        """Called after a forward that no backward follows outside a run (the check of dl_val's
        first batch): leave the net as training expects it."""

    # ---------------------------------------------------------------- state
    def gather_positions(self, position: Any) -> List[Any]:
        """Every rank's position in the training pass (``resuming``), in rank order: a collective
        under torchrun, where each rank saves its own and takes its own back."""
        return [position]

    @property
    def writes_files(self) -> bool:
        """Whether this process writes the files a save produces."""
        return self.is_main

    def full_state(self, net: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> Tuple[Dict[str, Any], Any]:
        """The net's and the optimizer's state with whole tensors, as one process holds them."""
        has_opt = optimizer is not None and bool(optimizer.param_groups)
        return net.state_dict(), optimizer.state_dict() if has_opt else None

    def load_full_state(self, net: nn.Module, optimizer: Optional[torch.optim.Optimizer], net_state: Dict[str, Any],
                        optimizer_state: Optional[Dict[str, Any]]) -> None:
        """Load whole-tensor state (a checkpoint file) into the net and the optimizer."""
        net.load_state_dict(net_state)
        if optimizer_state is not None and optimizer is not None and optimizer.param_groups:
            optimizer.load_state_dict(optimizer_state)  # moves the state to the parameters' device

    def copy_aside(self, net: nn.Module) -> Optional[Dict[str, torch.Tensor]]:
        """CPU copies of the net's tensors to roll a failed load back to, or None where it cannot be."""
        return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}

    def prepare_load(self, net: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> None:
        """Before a ``torch.distributed.checkpoint`` load: point the optimizer at the live parameters."""
