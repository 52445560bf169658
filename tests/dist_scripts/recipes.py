"""The ways people write a custom ``train_step``, kept as they publish them (only the class they
subclass and the returned value are torchfit's), and the default step each must equal.

Used in one process by tests/test_step_recipes.py and on 2 ranks under torchrun by running this
file (``python -m torch.distributed.run --nproc_per_node=2 recipes.py OUT_DIR``).
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit


class DocsRecipe(torchfit.Model):
    """docs/api.md's ``TwoLosses``, as written there."""

    def train_step(self, batch):
        x, t = batch
        self.optimizer.zero_grad()
        preds = self.net(x)
        loss = self.compute_loss(preds, t) + 1e-4 * sum(p.pow(2).sum() for p in self.net.parameters())
        self.backward(loss, len(t))
        self.optimizer_step()
        return torchfit.StepResult(loss.detach(), preds.detach(), t, len(t))


class TorchkerasRecipe(torchfit.Model):
    """torchkeras' StepRunner: forward, loss, ``loss.backward()``, ``optimizer.step()``, then ``zero_grad()``."""

    def train_step(self, batch):
        features, labels = batch
        preds = self.net(features)
        loss = self.loss_fn(preds, labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return torchfit.StepResult(loss.detach(), preds.detach(), labels, labels.shape[0])


class KerasRecipe(torchfit.Model):
    """keras.io, "Customizing what happens in fit() with PyTorch": ``self.zero_grad()``, ``self(x)``,
    ``compute_loss``, ``loss.backward()``, the optimizer's step (changed: a torch optimizer's ``step()``
    for Keras' ``self.optimizer.apply(gradients, trainable_weights)``)."""

    def train_step(self, data):
        x, y = data
        self.zero_grad()
        y_pred = self(x)
        loss = self.compute_loss(y_pred, y)
        loss.backward()
        self.optimizer.step()
        return torchfit.StepResult(loss.detach(), y_pred.detach(), y, len(y))


class ManualRecipe(torchfit.Model):
    """Lightning's manual optimization: ``opt = self.optimizers(); opt.zero_grad();
    self.manual_backward(loss); opt.step()`` (changed: ``self.optimizer`` and ``self.backward``)."""

    def train_step(self, batch):
        x, y = batch
        opt = self.optimizer
        opt.zero_grad()
        loss = self.compute_loss(self.net(x), y)
        self.backward(loss)
        opt.step()
        return torchfit.StepResult(loss.detach(), None, None, len(y))


RECIPES = {"docs": DocsRecipe, "torchkeras": TorchkerasRecipe, "keras": KerasRecipe, "manual": ManualRecipe}
#: The recipes that call loss.backward() themselves: exact without accumulation or fp16, refused with them.
DIRECT_BACKWARD = {"torchkeras", "keras"}


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def loaders(n: int = 96, batch_size: int = 12) -> tuple:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(2))
    val = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=batch_size)
    return train, val


def build(recipe: str, strategy=None, precision: str = "32") -> torchfit.Model:
    """A recipe's model, or the default step's (``recipe="default"``/``"default_l2"``) with the same loss."""
    module = net()
    ce = nn.CrossEntropyLoss()
    if recipe == "default_l2":  # the default step with the docs recipe's loss (its L2 term trains only)
        def loss(preds, t):
            if not module.training:
                return ce(preds, t)
            return ce(preds, t) + 1e-4 * sum(p.pow(2).sum() for p in module.parameters())
        model = torchfit.Model(module)
    else:
        loss = ce
        model = RECIPES[recipe](module) if recipe in RECIPES else torchfit.Model(module)
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    metrics = [] if recipe == "manual" else ["accuracy"]
    return model.compile(loss, opt, metrics, device="cpu", precision=precision, strategy=strategy)


def baseline(recipe: str) -> str:
    return "default_l2" if recipe == "docs" else "default"


def train(recipe: str, strategy=None, precision: str = "32", epochs: int = 2, **fit_kwargs) -> tuple:
    model = build(recipe, strategy, precision)
    history = model.fit(epochs, *loaders(), verbose=0, **fit_kwargs)
    state = {k: v.detach().clone() for k, v in _whole(model).items()}
    return state, history


def _whole(model: torchfit.Model) -> dict:
    net_state, _ = torchfit.checkpoint.full_state(model, model._strategy())  # gathered under FSDP
    return net_state


SETTINGS = {"plain": {}, "accum": {"grad_accum_steps": 2}, "clip": {"grad_clip_norm": 0.5}}


def main(out_dir: str) -> None:
    """Every recipe against the default step, under DDP and FSDP, plain and with accumulation."""
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    results = {}
    for strategy in ("ddp", "fsdp"):
        for setting in ("plain", "accum"):
            for recipe in ["default", "default_l2", *RECIPES]:
                if setting == "accum" and recipe in DIRECT_BACKWARD:
                    try:
                        train(recipe, strategy, **SETTINGS[setting])
                    except torchfit.errors.StepError as exc:
                        results[(strategy, setting, recipe)] = {"refused": str(exc)}
                    continue
                state, history = train(recipe, strategy, **SETTINGS[setting])
                results[(strategy, setting, recipe)] = {"state": state, "history": history.to_dict("list")}
    torch.save({"|".join(k): v for k, v in results.items()}, os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
