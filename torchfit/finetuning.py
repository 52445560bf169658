"""Fine-tuning a pretrained backbone: freeze it, train a new head, then unfreeze it at a lower rate.

Owns ``freeze`` / ``unfreeze`` (a module's parameters' ``requires_grad``, Keras'
``layer.trainable = False``) and ``Unfreeze``, the callback that, after a number of
epochs, unfreezes a module and hands its parameters to the compiled optimizer as a
new parameter group with their own learning rate (Lightning's ``BackboneFinetuning``,
the torchvision/timm notebook recipe). What trains is always what ``requires_grad``
says: ``compile`` gives the optimizer only those parameters (``optim``), and
``save_checkpoint(path, trainable_only=True)`` keeps only them.

>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> _ = freeze(net[0])
>>> [p.requires_grad for p in net.parameters()]
[False, False, True, True]
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from .callbacks import Callback

__all__ = ["Unfreeze", "freeze", "unfreeze"]


def freeze(module: nn.Module) -> nn.Module:
    """Stop ``module``'s parameters from training (``requires_grad=False``); returns the module.
    Compile after freezing: the optimizer gets the parameters that train then."""
    return module.requires_grad_(False)


def unfreeze(module: nn.Module) -> nn.Module:
    """Let ``module``'s parameters train again (``requires_grad=True``); returns the module."""
    return module.requires_grad_(True)


class Unfreeze(Callback):
    """Unfreeze ``module`` once ``epoch`` epochs are trained, its parameters moving to a new group of
    the optimizer at learning rate ``lr`` (default: the first group's), out of any group that held them.

    >>> # backbone = net.features; freeze(backbone)
    >>> # model.compile(nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=1e-3))  # the head alone
    >>> # model.fit(6, dl, callbacks=[Unfreeze(backbone, epoch=2, lr=1e-5)])  # epochs 3..6 train it all

    ``epoch`` counts finished epochs (``model.epoch``), across fit calls. Gradient clipping
    (``grad_clip_norm``) covers the unfrozen parameters from then on. Under torchrun, DDP learns
    which parameters train when the fit starts: unfreeze between two fit calls there
    (``unfreeze(backbone); model.optimizer.add_param_group({"params": ..., "lr": ...}); model.fit(...)``);
    this callback refuses to do it mid-fit.
    """

    def __init__(self, module: nn.Module, epoch: int, lr: Optional[float] = None):
        if not isinstance(module, nn.Module):
            raise TypeError(f"Unfreeze needs the module to unfreeze (e.g. net.features); got {type(module).__name__}")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"Unfreeze(epoch=...) is the number of epochs trained before unfreezing, an int >= 0; "
                             f"got {epoch!r}")
        if lr is not None and not lr > 0:
            raise ValueError(f"Unfreeze(lr=...) must be > 0; got {lr!r}")
        self.module, self.epoch, self.lr = module, epoch, lr
        self.done = False

    def on_train_begin(self, logs: Any = None) -> None:
        run = self.model.run
        if run is not None and run.config.reducer is not None and self.model.epoch < self.epoch:
            raise ValueError(
                "Unfreeze cannot unfreeze mid-fit under torchrun: DDP learns which parameters train when the fit "
                "starts. Fit the head first, then unfreeze(module), add its parameters to model.optimizer "
                "(add_param_group) and call fit again")

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        if self.done or self.model.epoch < self.epoch:
            return
        self.done = True
        optimizer = self.model.optimizer
        moved = list(self.module.parameters())
        ids = {id(p) for p in moved}
        lr = self.lr if self.lr is not None else optimizer.param_groups[0]["lr"]
        for group in optimizer.param_groups:  # an optimizer built over every parameter holds them already
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        unfreeze(self.module)
        optimizer.add_param_group({"params": moved, "lr": lr})  # their own group, at their own rate
        run = self.model.run
        optim = run.config.optim if run is not None else None
        if optim is not None:  # clipping and the emptiness check cover what trains now
            known = {id(p) for p in optim.params}
            optim.params.extend(p for p in self.module.parameters() if id(p) not in known)
