"""The optimizer step (torchfit.optim): gradient accumulation and clipping against the
hand-written equivalent, and OptimizerStep's window on its own."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchfit
from conftest import assert_same_weights, blobs, loader, mlp


class NoLen:
    """An iterable of batches without __len__: the window boundary is found only when it ends."""

    def __init__(self, dl):
        self.dl = dl

    def __iter__(self):
        return iter(self.dl)


def make_opt(kind, params, scale=1.0):
    return {"sgd": lambda: torch.optim.SGD(params, lr=0.1 * scale, momentum=0.9),
            "adam": lambda: torch.optim.Adam(params, lr=1e-2)}[kind]()


# ------------------------------------------------------------- accumulation
@pytest.mark.parametrize("opt_kind", ["sgd", "adam"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("sized", [True, False])
def test_accumulation_equals_k_times_larger_batches(opt_kind, reduction, sized):
    ds = blobs(80)  # batches of 8, k=3: windows of 3, 3, 3 and a last partial one of 1 batch (8 samples)
    k = 3
    net_a = mlp(seed=4)
    net_b = copy.deepcopy(net_a)

    scale = 1.0 if reduction == "mean" else 1 / 24  # a summed loss: keep SGD's steps the same size
    opt_a = make_opt(opt_kind, net_a.parameters(), scale)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    big_batches = loader(ds, 8 * k, shuffle=True, seed=3)  # the same permutations as batches of 8
    for _ in range(2):
        for x, y in big_batches:  # sizes 24, 24, 24, 8
            opt_a.zero_grad()
            loss_fn(net_a(x), y).backward()
            opt_a.step()

    model = torchfit.Model(net_b).compile(loss_fn, make_opt(opt_kind, net_b.parameters(), scale), device="cpu")
    dl = loader(ds, 8, shuffle=True, seed=3)
    model.fit(2, dl if sized else NoLen(dl), verbose=0, grad_accum_steps=k)

    assert model.global_step == 8
    for (name, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    # and the case is not vacuous: stepping per small batch ends elsewhere
    net_c = mlp(seed=4)
    torchfit.Model(net_c).compile(loss_fn, make_opt(opt_kind, net_c.parameters(), scale), device="cpu").fit(
        2, loader(ds, 8, shuffle=True, seed=3), verbose=0)
    assert not torch.allclose(net_c[0].weight, net_a[0].weight, atol=1e-4)


# ----------------------------------------------------------------- clipping
@pytest.mark.parametrize("clip", [{"grad_clip_norm": 0.5}, {"grad_clip_value": 0.02},
                                  {"grad_clip_norm": 0.5, "grad_clip_value": 0.02}])
def test_clipping_matches_torch_utilities_in_a_raw_loop_bit_for_bit(clip):
    ds = blobs(96)
    net_a = mlp(seed=2, dropout=0.1)
    net_b = copy.deepcopy(net_a)

    torch.manual_seed(7)
    opt_a = torch.optim.SGD(net_a.parameters(), lr=0.5, momentum=0.9)
    clipped = False
    dl = loader(ds, 16, shuffle=True, seed=1)
    for _ in range(2):
        net_a.train()
        for x, y in dl:
            opt_a.zero_grad()
            nn.functional.cross_entropy(net_a(x), y).backward()
            if "grad_clip_norm" in clip:
                clipped |= bool(nn.utils.clip_grad_norm_(net_a.parameters(), clip["grad_clip_norm"]) > 0.5)
            if "grad_clip_value" in clip:
                clipped |= any(bool(p.grad.abs().max() > 0.02) for p in net_a.parameters())
                nn.utils.clip_grad_value_(net_a.parameters(), clip["grad_clip_value"])
            opt_a.step()
    assert clipped  # the limits really bite on this data

    torch.manual_seed(7)
    model = torchfit.Model(net_b).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net_b.parameters(), lr=0.5,
                                                                                 momentum=0.9), device="cpu")
    model.fit(2, loader(ds, 16, shuffle=True, seed=1), verbose=0, **clip)
    assert_same_weights(net_a, net_b)


# ------------------------------------------------------------ OptimizerStep
def drive(step, n_batches, batch_size=4, net=None):
    """Run OptimizerStep over n_batches as the loop and the default train step do; returns when it stepped."""
    stepped = []
    step.start_epoch(n_batches)
    for i in range(1, n_batches + 1):
        step.start_batch(i)
        step.zero_grad()
        step.backward(net(torch.ones(batch_size, 2)).sum() / batch_size, batch_size)
        stepped.append(step.step())
    return stepped


@pytest.mark.parametrize("accum, n, expected", [(1, 3, [True] * 3), (2, 5, [False, True, False, True, True]),
                                                (3, 3, [False, False, True])])
def test_the_window_closes_every_k_batches_and_at_the_last(accum, n, expected):
    net = nn.Linear(2, 1)
    calls = []
    step = torchfit.optim.OptimizerStep(torch.optim.SGD(net.parameters(), lr=0.1), list(net.parameters()),
                                        accum_steps=accum, on_backward_end=calls.append)
    assert drive(step, n, net=net) == expected
    assert step.steps_taken == expected.count(True)
    assert calls == [i for i, s in enumerate(expected) if s]  # on_backward_end once per window, its 0-based batch


def test_flush_steps_a_window_a_loader_without_len_left_open():
    net = nn.Linear(2, 1)
    counted = []
    step = torchfit.optim.OptimizerStep(torch.optim.SGD(net.parameters(), lr=0.1), list(net.parameters()),
                                        accum_steps=4, on_step=lambda: counted.append(1))
    step.start_epoch(None)
    for i in (1, 2, 3):
        step.start_batch(i)
        step.zero_grad()
        step.backward(net(torch.ones(4, 2)).mean(), 4)
        assert not step.step()
    before = net.weight.detach().clone()
    assert step.flush() and step.steps_taken == 1 and counted == [1]
    assert not torch.equal(before, net.weight)
    assert not step.flush()  # nothing left open


def test_the_window_weighs_batches_by_their_samples():
    # batches of 3 and 1 samples, accumulated: the step uses the mean gradient over the 4 samples
    torch.manual_seed(0)
    net_a = nn.Linear(2, 1)
    net_b = copy.deepcopy(net_a)
    xs = [torch.randn(3, 2), torch.randn(1, 2)]
    step = torchfit.optim.OptimizerStep(torch.optim.SGD(net_a.parameters(), lr=0.1), list(net_a.parameters()),
                                        accum_steps=2)
    step.start_epoch(2)
    for i, x in enumerate(xs, 1):
        step.start_batch(i)
        step.zero_grad()
        step.backward(net_a(x).mean(), len(x))
        step.step()
    opt_b = torch.optim.SGD(net_b.parameters(), lr=0.1)
    net_b(torch.cat(xs)).mean().backward()
    opt_b.step()
    torch.testing.assert_close(net_a.weight, net_b.weight, rtol=0, atol=1e-7)


def test_accumulation_needs_the_batch_size():
    net = nn.Linear(2, 1)
    step = torchfit.optim.OptimizerStep(torch.optim.SGD(net.parameters(), lr=0.1), list(net.parameters()),
                                        accum_steps=2)
    step.start_epoch(2)
    step.start_batch(1)
    with pytest.raises(TypeError, match="batch_size"):
        step.backward(net(torch.ones(1, 2)).mean())


def test_grad_sync_is_no_sync_inside_a_window_only():
    entered = []

    class NoSync:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    net = nn.Linear(2, 1)
    step = torchfit.optim.OptimizerStep(torch.optim.SGD(net.parameters(), lr=0.1), list(net.parameters()),
                                        accum_steps=2, no_sync=NoSync)
    step.start_epoch(3)
    seen = []
    for i in (1, 2, 3):  # batch 1 opens a window, 2 closes it, 3 (the last) is a window of its own
        step.start_batch(i)
        n = len(entered)
        with step.grad_sync():
            step.zero_grad()
            step.backward(net(torch.ones(2, 2)).mean(), 2)
        seen.append(len(entered) > n)
        step.step()
    assert seen == [True, False, False] and step.steps_taken == 2


def test_optimizers_by_name_get_keras_default_rates():
    net = nn.Linear(2, 1)
    for name, (cls, lr) in torchfit.optim.OPTIMIZERS.items():
        opt = torchfit.optim.resolve_optimizer(name, net)
        assert type(opt) is cls and opt.defaults["lr"] == lr
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'.*known names"):
        torchfit.optim.resolve_optimizer("adamm", net)
