"""Schedules that know the run: LearningRateScheduler's factory form, run_total_steps and
warmup_cosine. The total is optimizer steps (gradient accumulation, uneven last windows), the
schedule ends exactly at the run's last step, and a resumed run ends where an uninterrupted one does."""
from __future__ import annotations

import functools
import math
import warnings

import pandas as pd
import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR

import torchfit
from torchfit.callbacks import Callback, LearningRateScheduler, ModelCheckpoint
from torchfit.callbacks.schedulers import run_steps_per_epoch, run_total_steps, warmup_cosine
from conftest import assert_same_weights, blobs, loader, mlp


class AccumInParams(Callback):
    """Puts fit's grad_accum_steps into params where fit does not yet (a no-op once it does)."""

    def __init__(self, k):
        self.k = k

    def set_params(self, params):
        super().set_params(params)
        params.setdefault("grad_accum_steps", self.k)


class RatesOfSteps(Callback):
    """The learning rate each optimizer step used (on_backward_end runs just before the step)."""

    def __init__(self):
        self.lrs = []

    def on_backward_end(self, batch):
        self.lrs.append(self.model.optimizer.param_groups[0]["lr"])


def setup(seed=0, opt="sgd"):
    torch.manual_seed(seed)
    net = mlp(dropout=0.2, seed=seed)
    optimizer = (torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9) if opt == "sgd"
                 else torch.optim.Adam(net.parameters(), lr=1e-2))
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), optimizer, ["accuracy"], device="cpu")
    # 80 samples in batches of 8: 10 batches; with windows of 3 the last one is a single batch
    return model, loader(blobs(80), 8, shuffle=True, seed=3), loader(blobs(40, seed=1), 20)


def one_cycle(opt, total):
    return OneCycleLR(opt, max_lr=0.1, total_steps=total)


def test_run_total_steps_counts_optimizer_steps():
    assert run_total_steps({"epochs": 2, "steps": 10, "grad_accum_steps": 3}) == 8
    assert run_total_steps({"epochs": 2, "steps": 10}) == 20  # fit without the key: no accumulation
    assert run_total_steps({"epochs": 5, "initial_epoch": 3, "steps": 9, "grad_accum_steps": 1}) == 45
    assert run_steps_per_epoch({"epochs": 1, "steps": 9, "grad_accum_steps": 9}) == 1
    with pytest.raises(ValueError, match="no len"):
        run_total_steps({"epochs": 2, "steps": None})


def test_one_cycle_ends_exactly_at_the_last_optimizer_step_with_accumulation():
    model, dl, _ = setup()
    rates = RatesOfSteps()
    sched_cb = LearningRateScheduler(one_cycle, interval="step")
    model.fit(2, dl, callbacks=[AccumInParams(3), sched_cb, rates], verbose=0, grad_accum_steps=3)

    assert model.global_step == 8 and sched_cb.scheduler.total_steps == 8
    assert len(rates.lrs) == 8
    group = model.optimizer.param_groups[0]
    assert rates.lrs[0] == pytest.approx(group["initial_lr"]) and group["initial_lr"] == 0.1 / 25
    assert rates.lrs[-1] == group["min_lr"]  # the schedule's final rate, at the run's last step
    # the same as the schedule stepped by hand once per optimizer step
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05, momentum=0.9)
    ref = OneCycleLR(ref_opt, max_lr=0.1, total_steps=8)
    expected = []
    for _ in range(8):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert rates.lrs == expected


@pytest.mark.parametrize("factory, opt", [
    (one_cycle, "adam"),  # one-cycle also cycles Adam's beta1: the optimizer's settings must come back too
    (functools.partial(warmup_cosine, warmup_steps=5, min_lr_ratio=0.1), "sgd"),
])
def test_resume_ends_exactly_where_the_uninterrupted_run_does(tmp_path, factory, opt):
    straight, dl, dl_val = setup(opt=opt)
    rates_a = RatesOfSteps()
    straight.fit(3, dl, dl_val, verbose=0, callbacks=[LearningRateScheduler(factory, interval="step"), rates_a,
                                                      ModelCheckpoint(tmp_path / "a" / "ep{epoch}.pt")])

    resumed, dl, dl_val = setup(seed=4, opt=opt)
    rates_b = RatesOfSteps()
    resumed.fit(3, dl, dl_val, verbose=0, resume_from=tmp_path / "a" / "ep1.pt",
                callbacks=[LearningRateScheduler(factory, interval="step"), rates_b,
                           ModelCheckpoint(tmp_path / "b" / "ep{epoch}.pt")])

    assert rates_b.lrs == rates_a.lrs[10:]  # the 20 steps after the checkpoint, at the same rates
    assert_same_weights(straight.net, resumed.net)
    pd.testing.assert_frame_equal(straight.history, resumed.history, check_exact=True)
    for ga, gb in zip(straight.optimizer.param_groups, resumed.optimizer.param_groups):
        assert {k: v for k, v in ga.items() if k != "params"} == {k: v for k, v in gb.items() if k != "params"}


def test_warmup_cosine_shape():
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=3, min_lr_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[-1] == 0.2
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))
    assert lrs[6] == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(opt, total_steps=10, warmup_steps=10)


def test_epoch_interval_factory_gets_the_number_of_epochs_and_a_later_fit_continues():
    model, dl, _ = setup()
    totals = []

    def factory(opt, total):
        scheduler = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.1, total_iters=total - 1)
        totals.append(total)  # after building: telling it from a Keras schedule(epoch, lr) calls it with (0, 0.001)
        return scheduler

    cb = LearningRateScheduler(factory)
    model.fit(2, dl, callbacks=[cb], verbose=0)
    model.fit(2, dl, callbacks=[cb], verbose=0)  # epochs 3 and 4 of a 4-epoch schedule
    assert totals == [2, 4]
    # the rate each epoch trained with: a 2-epoch schedule, then epochs 3-4 of a 4-epoch one
    assert model.history["lr"].tolist() == pytest.approx([0.05, 0.005, 0.02, 0.005], rel=1e-12)


def test_factory_errors_name_the_fix():
    model, dl, _ = setup()
    with pytest.raises(TypeError, match="the class OneCycleLR"):
        LearningRateScheduler(OneCycleLR)
    with pytest.raises(ValueError, match="monitor="):
        LearningRateScheduler(one_cycle, monitor="val_loss")
    with pytest.raises(TypeError, match="returned float"):
        model.fit(1, dl, callbacks=[LearningRateScheduler(lambda opt, total: 0.1, interval="step")], verbose=0)

    class NoLen:
        def __iter__(self):
            return iter(dl)

    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    with pytest.raises(ValueError, match="no len"):
        model.fit(1, NoLen(), callbacks=[LearningRateScheduler(one_cycle, interval="step")], verbose=0)
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in before.items())
    assert model.global_step == 0


def test_resume_keeps_what_another_callback_did_to_the_rate(tmp_path):
    """A chainable schedule continues from the optimizer's saved rate, not from a replay of itself."""
    def make_cbs(model, where):
        halver = torchfit.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: [
            g.__setitem__("lr", g["lr"] * 0.5) for g in model.optimizer.param_groups])
        return [LearningRateScheduler(lambda opt, total: torch.optim.lr_scheduler.ExponentialLR(opt, 0.97),
                                      interval="step"), halver, ModelCheckpoint(tmp_path / where / "ep{epoch}.pt")]

    straight, dl, dl_val = setup()
    straight.fit(3, dl, dl_val, verbose=0, callbacks=make_cbs(straight, "a"))
    resumed, dl, dl_val = setup(seed=4)
    resumed.fit(3, dl, dl_val, verbose=0, resume_from=tmp_path / "a" / "ep1.pt", callbacks=make_cbs(resumed, "b"))
    assert_same_weights(straight.net, resumed.net)
    assert straight.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("accum", [1, 3])
def test_the_lr_column_shows_the_rate_of_the_epochs_last_step(accum):
    # a per-step one-cycle schedule: when the epoch ends the optimizer already holds the next
    # step's rate (0.000559 where the last step trained at 4e-07); the column shows the last step's
    model, dl_train, dl_val = setup()
    rates = RatesOfSteps()
    history = model.fit(3, dl_train, dl_val, verbose=0, grad_accum_steps=accum,
                        callbacks=[AccumInParams(accum), rates, LearningRateScheduler(one_cycle, interval="step")])
    per_epoch = len(rates.lrs) // 3  # on_backward_end runs once per batch
    last_of_each_epoch = [rates.lrs[(e + 1) * per_epoch - 1] for e in range(3)]
    assert history["lr"].tolist() == last_of_each_epoch
    assert history["lr"].iloc[-1] == pytest.approx(0.1 / 25 / 1e4)  # one-cycle's final rate, the run's last step


def test_a_per_epoch_schedule_shows_each_epochs_own_rate():
    model, dl_train, dl_val = setup()
    history = model.fit(3, dl_train, dl_val, verbose=0, callbacks=[
        LearningRateScheduler(torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=1, gamma=0.5))])
    assert history["lr"].tolist() == [0.05, 0.025, 0.0125]


def test_a_factory_that_fails_gives_its_error_and_no_false_warning():
    # fit's cleanup takes every callback's state; an unbuilt scheduler has none, which is no error
    model, dl, _ = setup()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match="returned float"):
            model.fit(1, dl, callbacks=[LearningRateScheduler(lambda opt, total: 0.1, interval="step")], verbose=0)
    assert not [w for w in caught if "while fit was stopping" in str(w.message)], [str(w.message) for w in caught]
