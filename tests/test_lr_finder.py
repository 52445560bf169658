"""lr_find: the range test's rows and suggestion, and the promise that the model comes back
bit for bit (weights, BatchNorm, optimizer, RNG, loaders, counters, history, checkpoint state),
also after an error or a Ctrl-C, so the training after it is the one without it."""
from __future__ import annotations

import copy
import math
import random

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import torchfit
from torchfit.errors import StepError
from torchfit.lr_finder import learning_rates, lr_find, plot_lr_find, suggest_lr
from conftest import SmallCNN, assert_same_weights, blobs, digits, loader, mlp


def setup(seed=0, lr=0.05):
    torch.manual_seed(seed)
    net = SmallCNN()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9),
                                       ["accuracy"], device="cpu")
    return model, loader(digits(160), 32, shuffle=True, seed=4), loader(digits(64), 32)


def same(a, b, path="state"):
    """Deep, exact equality of nested containers of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"


def everything(model, dl):
    """Every piece of state lr_find promises to leave alone, copied."""
    net = model.net
    return {
        "net": {k: v.clone() for k, v in net.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        "opt": copy.deepcopy(model.optimizer.state_dict()),  # its tensors are the live ones: copy
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in model.optimizer.param_groups],
        "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
        "loader_gen": dl.generator.get_state(),
        "epoch": model.epoch, "global_step": model.global_step, "stop_training": model.stop_training,
        "history": model.training_state.history and [dict(r) for r in model.training_state.history],
        "step_history": [dict(r) for r in model.training_state.step_history],
        "fit_state": model.training_state.last_fit, "resume_state": model.training_state.pending_resume,
        "modes": [m.training for m in net.modules()],
    }


def assert_unchanged(before, model, dl):
    after = everything(model, dl)
    same(before["opt"], after["opt"], "optimizer.state_dict()")
    for key in before:
        same(before[key], after[key], key)


def test_model_comes_back_bit_identical_and_the_next_fit_is_unchanged():
    a, dl_a, val_a = setup()
    b, dl_b, val_b = setup()
    # Optimizer state, history, step rows, _fit_state and a scheduler-set 'initial_lr' all non-trivial.
    for m, dl, val in ((a, dl_a, val_a), (b, dl_b, val_b)):
        torch.manual_seed(1)
        sched = torch.optim.lr_scheduler.StepLR(m.optimizer, step_size=1, gamma=0.5)
        m.fit(1, dl, val, verbose=0, log_step_freq=2, callbacks=[torchfit.callbacks.LearningRateScheduler(sched)])
    np.random.seed(7), random.seed(7), torch.manual_seed(2)
    before = everything(a, dl_a)
    assert before["opt"]["state"] and before["history"] and before["step_history"] and before["fit_state"]
    assert "initial_lr" in before["groups"][0]

    df = lr_find(a, dl_a, start_lr=1e-4, end_lr=1.0, num_steps=12)
    assert len(df) == 12  # more steps than the loader's 5 batches: it cycled
    assert_unchanged(before, a, dl_a)

    a.fit(2, dl_a, val_a, verbose=0, log_step_freq=2)
    torch.manual_seed(2)  # b sees the RNG a saw: the one before lr_find
    b.fit(2, dl_b, val_b, verbose=0, log_step_freq=2)
    assert_same_weights(a.net, b.net)  # BatchNorm statistics and num_batches_tracked included
    pd.testing.assert_frame_equal(a.history, b.history, check_exact=True)
    pd.testing.assert_frame_equal(a.step_history, b.step_history, check_exact=True)
    same(torch.optim.Optimizer.state_dict(a.optimizer), torch.optim.Optimizer.state_dict(b.optimizer))


def test_a_pending_checkpoint_still_resumes_exactly_after_lr_find(tmp_path):
    straight, dl, _ = setup()
    straight.fit(2, dl, verbose=0)
    first, dl, _ = setup()
    first.fit(1, dl, verbose=0)
    first.save_checkpoint(tmp_path / "c.pt")

    resumed, dl, _ = setup(seed=3)
    resumed.load_checkpoint(tmp_path / "c.pt")
    pending = resumed.training_state.pending_resume
    lr_find(resumed, dl, num_steps=6)
    assert resumed.training_state.pending_resume is pending  # lr_find's own fit did not consume it
    resumed.fit(1, dl, verbose=0)
    assert_same_weights(straight.net, resumed.net)
    pd.testing.assert_frame_equal(straight.history, resumed.history, check_exact=True)


def test_rows_rates_and_smoothing():
    model, dl, _ = setup()
    df = lr_find(model, dl, start_lr=1e-5, end_lr=1e-1, num_steps=9, smooth=0.5, diverge_threshold=1e9)
    assert list(df.columns) == ["lr", "loss", "smoothed_loss"]
    assert df.attrs["stop_reason"] == "completed"
    assert np.allclose(df["lr"], np.logspace(-5, -1, 9), rtol=1e-12)
    assert df["lr"].iloc[0] == 1e-5 and df["lr"].iloc[-1] == 1e-1
    avg, expected = 0.0, []
    for i, loss in enumerate(df["loss"]):
        avg = 0.5 * avg + 0.5 * loss
        expected.append(avg / (1 - 0.5 ** (i + 1)))
    assert df["smoothed_loss"].tolist() == pytest.approx(expected, rel=1e-12)
    lin = learning_rates(0.1, 1.0, 4, "linear")
    assert lin == pytest.approx([0.1, 0.4, 0.7, 1.0])


def test_each_row_is_the_loss_of_a_step_trained_at_that_rate():
    """Replay by hand: the same batches, the rate set before each step, the loss of that batch."""
    model, dl, _ = setup()
    ref, _, _ = setup()
    rng = torch.get_rng_state()
    df = lr_find(model, dl, start_lr=1e-3, end_lr=1.0, num_steps=7, diverge_threshold=1e9)
    net, opt = ref.net, ref.optimizer
    torch.set_rng_state(rng)  # the dropout draws lr_find's steps made
    net.train()
    losses, batches = [], [b for _ in range(2) for b in dl]
    for lr, (x, y) in zip(df["lr"], batches):
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert df["loss"].tolist() == losses


def test_divergence_stops_early_and_the_suggestion_is_sane():
    torch.manual_seed(0)
    net = mlp(seed=0)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.01), device="cpu")
    dl = loader(blobs(400), 20, shuffle=True, seed=1)
    df = lr_find(model, dl, start_lr=1e-4, end_lr=1e4, num_steps=100, smooth=0.9)
    assert df.attrs["stop_reason"] == "diverged" and len(df) < 100
    last = df["smoothed_loss"].iloc[-1]
    assert not math.isfinite(last) or last > 4.0 * df["smoothed_loss"].iloc[:-1].min()
    assert (df["smoothed_loss"].iloc[:-1] <= 4.0 * df["smoothed_loss"].min()).all()  # it stopped at the first
    # Plain SGD on this MLP trains well for rates of about 0.01 to 1 (checked by hand).
    assert 1e-3 <= df.attrs["suggested_lr"] <= 2.0
    assert df.attrs["min_loss_lr"] > df.attrs["suggested_lr"]


@pytest.mark.parametrize("kwargs, culprit", [
    ({"start_lr": 1.0, "end_lr": 1.0}, "start_lr"),
    ({"start_lr": 0.0}, "start_lr"),
    ({"start_lr": -1e-3}, "start_lr"),
    ({"start_lr": float("nan")}, "start_lr"),
    ({"end_lr": float("inf")}, "end_lr"),
    ({"end_lr": float("nan")}, "end_lr"),
    ({"num_steps": 1}, "num_steps"),
    ({"num_steps": 10.0}, "num_steps"),
    ({"num_steps": True}, "num_steps"),
    ({"mode": "cosine"}, "mode"),
    ({"smooth": 1.0}, "smooth"),
    ({"smooth": float("nan")}, "smooth"),
    ({"diverge_threshold": 1.0}, "diverge_threshold"),
    ({"diverge_threshold": float("nan")}, "diverge_threshold"),
])
def test_bad_arguments_raise_before_anything_changes(kwargs, culprit):
    model, dl, _ = setup()
    before = everything(model, dl)
    with pytest.raises(ValueError, match=culprit):
        lr_find(model, dl, **kwargs)
    assert_unchanged(before, model, dl)


class Boom:
    """A loss that fails (or is interrupted) at its n-th call."""

    def __init__(self, n, exc):
        self.n, self.exc, self.calls = n, exc, 0

    def __call__(self, preds, y):
        self.calls += 1
        if self.calls == self.n:
            raise self.exc
        return nn.functional.cross_entropy(preds, y)


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_an_error_or_interrupt_mid_run_leaves_the_model_as_it_was(exc):
    model, dl, val = setup()
    model.fit(1, dl, val, verbose=0)
    object.__setattr__(model, "loss_fn", Boom(4, exc))  # the 4th training step of the range test fails
    before = everything(model, dl)
    if isinstance(exc, KeyboardInterrupt):
        df = lr_find(model, dl, num_steps=10)  # like fit: Ctrl-C returns what was done
        assert df.attrs["stop_reason"] == "interrupted" and len(df) == 3
    else:
        with pytest.raises(StepError, match="disk on fire"):
            lr_find(model, dl, num_steps=10)
    assert_unchanged(before, model, dl)


def test_plot_is_a_headless_figure_with_log_x_and_the_suggestion_marked():
    model, dl, _ = setup()
    df = lr_find(model, dl, start_lr=1e-4, end_lr=1.0, num_steps=30, smooth=0.8, diverge_threshold=1e9)
    fig = plot_lr_find(df)
    assert isinstance(fig, matplotlib.figure.Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    marker = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(marker) == 1 and marker[0].get_xdata()[0] == df.attrs["suggested_lr"]
    fig._repr_png_()
    with pytest.raises(ValueError, match="smoothed_loss"):
        plot_lr_find(pd.DataFrame({"lr": [1.0], "loss": [1.0]}))


def test_suggest_lr_picks_the_steepest_descent_before_the_minimum():
    lrs = np.logspace(-4, 0, 20)
    loss = np.r_[np.full(8, 2.0), [1.9, 1.5, 0.8, 0.6, 0.5, 0.45, 0.4], np.linspace(1, 5, 5)]
    assert suggest_lr(lrs, loss) == lrs[9]
    assert suggest_lr(lrs[:3], [1.0, 0.5, 2.0]) is None


def test_a_fresh_optimizer_stays_empty_and_trains_as_if_untouched():
    def build():
        torch.manual_seed(0)
        net = mlp(seed=0)
        return torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=1e-2),
                                           device="cpu")

    a, b = build(), build()
    dl_a, dl_b = loader(blobs(96), 16, shuffle=True, seed=2), loader(blobs(96), 16, shuffle=True, seed=2)
    lr_find(a, dl_a, num_steps=8)
    assert len(a.optimizer.state) == 0 and a.history.empty and a.step_history.empty
    assert a.training_state.last_fit is None and a.global_step == 0 and a.epoch == 0
    assert all(p.grad is None for p in a.parameters())
    a.fit(2, dl_a, verbose=0)
    b.fit(2, dl_b, verbose=0)
    assert_same_weights(a.net, b.net)
    pd.testing.assert_frame_equal(a.history, b.history, check_exact=True)
