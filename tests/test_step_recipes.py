"""Every documented way to write a custom ``train_step`` trains exactly as the default step.

The recipes (tests/dist_scripts/recipes.py) are the docs' own, torchkeras', Keras' and Lightning's
manual-optimization one, kept as published. Each is compared with the default step (same net,
loss, optimizer and batches): bit-equal weights and history in one process, with gradient
clipping and bf16 autocast, and with ``grad_accum_steps=2`` where the recipe goes through
``self.backward``; a recipe calling ``loss.backward()`` itself is refused under accumulation
before any weight changes, with the fix. On 2 ranks under torchrun (DDP and FSDP) the same
comparisons run in one launch (``test_recipes_under_torchrun``).
"""
from __future__ import annotations

import os
import sys

import pandas as pd
import pytest
import torch

import torchfit
from torchfit.errors import StepError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "dist_scripts", "recipes.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
import recipes as rc  # noqa: E402

SETTINGS = {"plain": ({}, "32"), "clip": ({"grad_clip_norm": 0.5}, "32"), "bf16": ({}, "bf16"),
            "accum": ({"grad_accum_steps": 2}, "32"), "accum_bf16_clip": ({"grad_accum_steps": 3,
                                                                            "grad_clip_norm": 0.5}, "bf16")}


def assert_equal_runs(a, b):
    state_a, hist_a = a
    state_b, hist_b = b
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k
    pd.testing.assert_frame_equal(hist_a, hist_b, check_exact=True)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("recipe", list(rc.RECIPES))
def test_each_recipe_trains_as_the_default_step(recipe, setting):
    fit_kwargs, precision = SETTINGS[setting]
    accumulating = fit_kwargs.get("grad_accum_steps", 1) > 1
    if accumulating and recipe in rc.DIRECT_BACKWARD:
        model = rc.build(recipe, precision=precision)
        before = {k: v.clone() for k, v in model.net.state_dict().items()}
        with pytest.raises(StepError, match=r"loss\.backward\(\) directly.*grad_accum_steps.*self\.backward\(loss\)"):
            model.fit(2, *rc.loaders(), verbose=0, **fit_kwargs)
        assert all(torch.equal(v, before[k]) for k, v in model.net.state_dict().items())
        assert model.global_step == 0 and len(model.history) == 0
        return
    ours = rc.train(recipe, precision=precision, **fit_kwargs)
    reference = rc.train(rc.baseline(recipe), precision=precision, **fit_kwargs)
    if recipe == "manual":  # returns no predictions: no accuracy column
        reference = (reference[0], reference[1].drop(columns=["accuracy", "val_accuracy"]))
    assert_equal_runs(ours, reference)


def test_the_optimizer_a_step_sees_follows_the_window_and_is_the_optimizer_outside():
    seen = []

    class Peek(rc.DocsRecipe):
        def train_step(self, batch):
            seen.append((type(self.optimizer).__name__, self.optimizer.param_groups is opt.param_groups))
            return super().train_step(batch)

    model = Peek(rc.net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.compile(torch.nn.CrossEntropyLoss(), opt, device="cpu")
    model.fit(1, *rc.loaders(), verbose=0)
    assert seen and all(s == ("WindowedOptimizer", True) for s in seen)
    assert model.optimizer is opt  # outside a step: the compiled optimizer itself
    assert isinstance(seen and model.optimizer, torch.optim.Optimizer)


def test_a_closure_step_is_refused_with_the_reason():
    class Closure(torchfit.Model):
        def train_step(self, batch):
            x, y = batch
            self.optimizer.step(lambda: self.compute_loss(self.net(x), y))

    model = Closure(rc.net()).compile(torch.nn.CrossEntropyLoss(), "sgd", device="cpu")
    with pytest.raises(StepError, match="closure"):
        model.fit(1, *rc.loaders(), verbose=0)


@pytest.mark.slow
def test_recipes_under_torchrun(tmp_path):
    """On 2 ranks (gloo), DDP and FSDP: each recipe equals the default step, plain and accumulating;
    the direct-backward recipes are refused under accumulation on every rank."""
    from conftest import torchrun

    proc = torchrun(SCRIPT, tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for strategy in ("ddp", "fsdp"):
        for setting in ("plain", "accum"):
            for recipe in rc.RECIPES:
                key = f"{strategy}|{setting}|{recipe}"
                if setting == "accum" and recipe in rc.DIRECT_BACKWARD:
                    assert all("self.backward(loss)" in r[key]["refused"] for r in ranks), key
                    continue
                ref = ranks[0][f"{strategy}|{setting}|{rc.baseline(recipe)}"]
                got = ranks[0][key]
                for k in ref["state"]:
                    assert torch.equal(got["state"][k], ref["state"][k]), (key, k)
                for col, values in got["history"].items():
                    assert values == ref["history"][col], (key, col)
                if strategy == "ddp":  # the ranks hold the same weights (FSDP: gathered on rank 0 only)
                    for k in got["state"]:
                        assert torch.equal(ranks[1][key]["state"][k], got["state"][k]), (key, k)
