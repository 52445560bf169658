"""Fully sharded data parallel: ``compile(strategy="fsdp")``, for nets that do not fit one device.

Owns the FSDP2 strategy (``torch.distributed.fsdp.fully_shard``) beside
``ddp.DataParallel``: sharding the net in place once (its parameters become
DTensors holding each rank's part; the sharding unit is choosable), pointing
the optimizer at the sharded parameters (its state sharded the same way),
FSDP's own ``MixedPrecisionPolicy``, skipping the gradient reduction inside an
accumulation window, and whole-tensor ``state_dict``s for checkpoints and for
handing weights to one process, loading them back, and resharding after a
forward that no backward follows. Loaders, exact figures and ``predict``'s
gathering are ``multiprocess.MultiProcess``'s (the data is split as under DDP);
the batch loop is ``torchfit.loop``'s; the file format is ``torchfit.checkpoint``'s,
which asks this strategy for whole tensors. Nothing outside this file knows FSDP:
it is chosen through the registry in ``distributed/__init__.py``.

What a sharded net is afterwards: ``model.net`` stays the same object (its
class becomes FSDP's ``FSDP<Name>``), sharded until the process ends, so
``evaluate``/``predict`` (every rank calls them: each forward gathers the
parameters) and later fits reuse the shards. ``model.net.state_dict()`` gives
DTensors; ``model.save_checkpoint(path)`` (called on every rank) gathers them
into one file that loads in a single process, and
``torchfit.distributed.save_sharded`` writes a ``torch.distributed.checkpoint``
directory, each rank its own part.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Type, Union

import torch
from torch import nn

from ..callbacks import Callback
from .base import FitPlan, FitRequest
from .comm import DistributedContext
from .multiprocess import MultiProcess

#: Which submodules get their own ``fully_shard`` call (besides the root, always sharded).
ShardUnit = Union[None, Type[nn.Module], Tuple[Type[nn.Module], ...], Callable[[str, nn.Module], bool]]



@dataclasses.dataclass(frozen=True)
class FSDP:
    """The FSDP2 strategy's options: ``compile(..., strategy=FSDP(...))`` (``strategy="fsdp"`` is ``FSDP()``).

    ``shard``: the sharding unit: submodules of these classes (e.g. your
    transformer block), or ``shard(name, module) -> bool``, each get their own
    ``fully_shard`` call, so only one unit's parameters are gathered at a time;
    ``None`` shards the whole net as one unit. ``mixed_precision``: a
    ``torch.distributed.fsdp.MixedPrecisionPolicy``, or ``"bf16"`` / ``"16"``
    for parameters and computation in that dtype with float32 gradient
    reduction (the sharded parameters, optimizer and checkpoints stay float32).
    ``reshard_after_forward``: FSDP's own option; ``None`` (its default)
    reshards every unit but the root after forward, ``True`` all of them (least
    memory), ``False`` none (fewest all-gathers).

    >>> FSDP(shard=nn.TransformerEncoderLayer, mixed_precision="bf16")  # doctest: +ELLIPSIS
    FSDP(shard=<class '...TransformerEncoderLayer'>, mixed_precision='bf16', reshard_after_forward=None)
    """

    shard: ShardUnit = None
    mixed_precision: Any = None
    reshard_after_forward: Optional[bool] = None

    def __post_init__(self) -> None:
        s = self.shard
        classes = s if isinstance(s, tuple) else (s,)
        if not (s is None or all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes)
                or (callable(s) and not isinstance(s, type))):
            raise TypeError(f"FSDP(shard=...) takes nn.Module classes or a function (name, module) -> bool; "
                            f"got {s!r}")
        self.policy()  # a wrong mixed_precision is an error at compile, not at the first fit

    def policy(self) -> Any:
        """The ``MixedPrecisionPolicy`` to hand ``fully_shard``."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        mp = self.mixed_precision
        if mp is None or isinstance(mp, MixedPrecisionPolicy):
            return mp if mp is not None else MixedPrecisionPolicy()
        dtypes = {"bf16": torch.bfloat16, "16": torch.float16, "32": None}
        if mp not in dtypes:
            raise ValueError(f"FSDP(mixed_precision={mp!r}): use 'bf16', '16', '32' or a "
                             "torch.distributed.fsdp.MixedPrecisionPolicy")
        return MixedPrecisionPolicy(param_dtype=dtypes[mp], reduce_dtype=torch.float32 if dtypes[mp] else None)

    def wants_unit(self, name: str, module: nn.Module) -> bool:
        s = self.shard
        if s is None:
            return False
        if isinstance(s, type) or isinstance(s, tuple):
            return isinstance(module, s)
        return bool(s(name, module))


def is_sharded(net: Any) -> bool:
    """Whether ``net`` was sharded by ``fully_shard`` (its parameters are DTensors)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a build without torch.distributed
        return False
    return isinstance(net, FSDPModule)


class FullySharded(MultiProcess):
    """The FSDP2 strategy of one call on one rank: a sharded net, the data split as under DDP."""

    name = "fsdp"
    options_type = FSDP
    saves_collectively = True  # a sharded net is gathered (or written in parts) by every rank together
    grads_in_params = False  # inside a window FSDP keeps unsharded gradients of its own: resume at windows' ends

    def __init__(self, ctx: DistributedContext, options: FSDP):
        super().__init__(ctx)
        self.options = options

    def prepare_fit(self, request: FitRequest) -> FitPlan:
        """Shard ``net`` in place (once), then the shared loaders, trackers and sync callback.

        An overridden step calling ``model.net`` trains through the shards too: the net
        itself is sharded, so there is nothing to bypass.
        """
        net = request.net
        if request.train_net is not net:
            raise ValueError("compile(jit_compile=...) with strategy='fsdp' is not supported yet: compile with "
                             "jit_compile=False, or use the DDP strategy")
        if isinstance(net, nn.parallel.DistributedDataParallel):
            raise TypeError("model.net is a DistributedDataParallel; pass the plain module to torchfit.Model(net)")
        if not any(p.requires_grad for p in net.parameters()):
            raise ValueError("strategy='fsdp' needs a net with trainable parameters; this one has none")
        if not is_sharded(net):
            self.ctx.broadcast_state(net)  # every rank shards rank 0's weights (DDP's constructor does the same)
            names = {id(p): name for name, p in net.named_parameters()}
            shard(net, self.options)
            if request.optimizer is not None:  # built over the parameters fully_shard has just replaced
                retarget_optimizer(net, request.optimizer, names)
        no_sync = _no_gradient_sync(net) if request.accum_steps > 1 else None
        train_tracker, val_tracker = self.trackers(request)
        fit = _ShardedFit(self.options.reshard_after_forward is None)
        return FitPlan(train_net=net, train_tracker=train_tracker, val_tracker=val_tracker, no_sync=no_sync,
                       callbacks=[fit, self.rank_sync(request)])

    def settle(self, net: nn.Module) -> None:
        if is_sharded(net):  # the root keeps its gathered weights after a forward: training needs the shards
            net.reshard()

    # ------------------------------------------------------------------ state
    def full_state(self, net: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> Tuple[Dict[str, Any], Any]:
        """Whole tensors gathered on rank 0 (a collective: every rank calls it; the others get ``({}, None)``)."""
        if not is_sharded(net):
            return super().full_state(net, optimizer)
        return full_state(net, optimizer)

    def load_full_state(self, net: nn.Module, optimizer: Optional[torch.optim.Optimizer], net_state: Dict[str, Any],
                        optimizer_state: Optional[Dict[str, Any]]) -> None:
        if not is_sharded(net):
            return super().load_full_state(net, optimizer, net_state, optimizer_state)
        load_full_state(net, optimizer, net_state, optimizer_state)

    def copy_aside(self, net: nn.Module) -> Optional[Dict[str, torch.Tensor]]:
        # A sharded net is not copied aside (its shards live on every rank): a failed apply there is
        # not rolled back for the weights, only for everything else.
        return None if is_sharded(net) else super().copy_aside(net)

    def prepare_load(self, net: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> None:
        if is_sharded(net) and optimizer is not None:
            retarget_optimizer(net, optimizer)


def shard(net: nn.Module, options: FSDP) -> nn.Module:
    """``fully_shard`` each chosen unit (innermost first), then the whole net; in place, returns ``net``.

    A collective: every rank calls it, on identical weights (each keeps its own rows).
    """
    from torch.distributed.fsdp import fully_shard

    kwargs = {"mp_policy": options.policy(), "reshard_after_forward": options.reshard_after_forward}
    units = [m for name, m in net.named_modules() if m is not net and options.wants_unit(name, m)]
    for module in reversed(units):  # named_modules lists parents first; fully_shard wants children first
        fully_shard(module, **kwargs)
    fully_shard(net, **kwargs)
    return net


@contextlib.contextmanager
def _no_gradient_sync_ctx(net: Any) -> Iterator[None]:
    net.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        net.set_requires_gradient_sync(True)


def _no_gradient_sync(net: Any) -> Callable[[], Any]:
    return lambda: _no_gradient_sync_ctx(net)


class _ShardedFit(Callback):
    """What a fit over a sharded net needs besides DDP's sync callback.

    * with FSDP's default ``reshard_after_forward``, the root unit keeps its
      gathered parameters from a training forward to its backward (which
      reshards them), but reshards after every forward of validation,
      ``evaluate`` and ``predict``, which have no backward: nothing stays
      gathered after a call.
    """

    def __init__(self, keep_root_for_backward: bool):
        self.keep_root_for_backward = keep_root_for_backward

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        if self.keep_root_for_backward:
            self.model.net.set_reshard_after_forward(False, recurse=False)

    def on_test_begin(self, logs: dict) -> None:
        self.model.net.set_reshard_after_forward(True, recurse=False)

    def on_train_end(self, logs: dict) -> None:
        self.model.net.set_reshard_after_forward(True, recurse=False)


def retarget_optimizer(net: nn.Module, optimizer: torch.optim.Optimizer, names: Optional[Dict[int, str]] = None) -> None:
    """Swap ``optimizer``'s unsharded parameters for ``net``'s sharded ones, sharding their state.

    ``fully_shard`` replaces every parameter with a new DTensor parameter, and the optimizer was
    built over the old ones: each is swapped for its successor (matched by name through ``names``,
    ``id(old parameter) -> name``, taken before sharding), and its state (momentum, Adam's moments)
    is sharded the same way, so a resumed or continued run goes on exactly. Parameters that are
    already the net's stay."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    current = dict(net.named_parameters())
    live = {id(p) for p in current.values()}
    names = names or {}
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            if id(p) in live:
                params.append(p)
                continue
            name = names.get(id(p))
            if name is None or name not in current:
                raise RuntimeError("model.optimizer holds a parameter that is not one of model.net's: compile the "
                                   "model with an optimizer over model.net.parameters()")
            new = current[name]
            state = optimizer.state.pop(p, None)
            if state:
                optimizer.state[new] = {
                    k: distribute_tensor(v.to(new.device), new.device_mesh, new.placements)
                    if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.shape == new.shape else v
                    for k, v in state.items()}
            params.append(new)
        group["params"] = params


# ------------------------------------------------------------------ whole tensors


def full_state(net: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> Tuple[Dict[str, Any], Any]:
    """Gather a sharded net's and optimizer's state into whole CPU tensors on rank 0 (collective).

    The optimizer's comes in ``torch.optim``'s own layout (parameters numbered
    in ``param_groups`` order), so ``optimizer.load_state_dict`` of the same
    model in one process takes it. Ranks other than 0 get ``({}, None)``.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    net_state = get_model_state_dict(net, options=options)
    if optimizer is None or not optimizer.param_groups:
        return net_state, None
    by_name = get_optimizer_state_dict(net, optimizer, options=options)
    if not by_name:
        return net_state, None
    return net_state, _numbered(by_name)


def _numbered(by_name: Dict[str, Any]) -> Dict[str, Any]:
    order: Dict[str, int] = {}
    groups = []
    for group in by_name["param_groups"]:
        ids = [order.setdefault(name, len(order)) for name in group["params"]]
        groups.append({**group, "params": ids})
    return {"state": {order[name]: s for name, s in by_name["state"].items()}, "param_groups": groups}


def _named(net: nn.Module, optimizer: torch.optim.Optimizer, numbered: Dict[str, Any]) -> Dict[str, Any]:
    names = {id(p): name for name, p in net.named_parameters()}
    flat = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    groups = []
    for group, saved in zip(optimizer.param_groups, numbered["param_groups"]):
        groups.append({**saved, "params": [names[id(p)] for p in group["params"]]})
    return {"state": {flat[int(i)]: s for i, s in numbered["state"].items()}, "param_groups": groups}


def load_full_state(net: nn.Module, optimizer: Optional[torch.optim.Optimizer], net_state: Dict[str, Any],
                    optimizer_state: Optional[Dict[str, Any]]) -> None:
    """Load whole-tensor state (a single-file checkpoint) into a sharded net and its optimizer.

    Every rank calls this with the same dicts; each keeps its own shards.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(net, net_state, options=options)
    if optimizer is not None and optimizer_state is not None and optimizer.param_groups:
        retarget_optimizer(net, optimizer)
        set_optimizer_state_dict(net, optimizer, _named(net, optimizer, optimizer_state), options=options)
