"""EMA and SWA: the averages against ones computed by hand over the same training, validation on
the averaged weights, raw weights recoverable, optimizer steps counted as taken (accumulation,
skipped fp16 steps), exact resume from checkpoints, and BatchNorm recomputed for SWA."""
from __future__ import annotations

import copy

import pandas as pd
import pytest
import types

import torch
from torch import nn

import torchfit
from torchfit.callbacks import LambdaCallback, ModelCheckpoint
from torchfit.callbacks.averaging import EMA, SWA
from conftest import SmallCNN, assert_same_weights, digits, loader


def setup(seed=0):
    torch.manual_seed(seed)
    net = SmallCNN()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9),
                                       ["accuracy"], device="cpu")
    return model, loader(digits(160), 32, shuffle=True, seed=4), loader(digits(64), 32)


def params_of(state, net):
    names = {n for n, _ in net.named_parameters()}
    return {k: v for k, v in state.items() if k in names}


def assert_equal_dicts(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def hand_written_ema(net, opt, dl, dl_val, epochs, decay, every, start):
    """The training loop a user writes, with the EMA kept by hand after each optimizer step."""
    ema = [p.detach().clone() for p in net.parameters()]
    steps = 0
    for _ in range(epochs):
        net.train()
        for x, y in dl:
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            steps += 1
            for e, p in zip(ema, net.parameters()):
                if steps <= start:
                    e.copy_(p.detach())
                elif (steps - start) % every == 0:
                    e.lerp_(p.detach(), 1 - decay)
        net.eval()
        with torch.no_grad():
            for x, y in dl_val:
                net(x)
    return {n: e for (n, _), e in zip(net.named_parameters(), ema)}


def test_ema_equals_the_hand_written_average_and_is_left_in_the_net():
    model, dl, dl_val = setup()
    ref_net, ref_dl = copy.deepcopy(model.net), loader(digits(160), 32, shuffle=True, seed=4)
    ref_opt = torch.optim.SGD(ref_net.parameters(), lr=0.05, momentum=0.9)

    torch.manual_seed(1)
    ema = EMA(decay=0.9, every_n_steps=2, start_step=3)
    model.fit(2, dl, dl_val, callbacks=[ema], verbose=0)
    torch.manual_seed(1)
    expected = hand_written_ema(ref_net, ref_opt, ref_dl, dl_val, 2, decay=0.9, every=2, start=3)

    assert ema.optimizer_steps == model.global_step == 10 and ema.updates == 3  # steps 5, 7, 9
    assert_equal_dicts(params_of(ema.averaged_state_dict(), ref_net), expected)
    assert_equal_dicts(ema.raw_state_dict(), ref_net.state_dict())  # training itself was not touched
    assert_equal_dicts(model.net.state_dict(), ema.averaged_state_dict())  # the average is in the net
    assert not torch.equal(expected["conv1.weight"], ref_net.conv1.weight)
    ema.restore_raw()
    assert_same_weights(model.net, ref_net)


def test_validation_figures_are_those_of_the_averaged_weights():
    model, dl, dl_val = setup()
    ema = EMA(decay=0.8)
    seen = []
    record = LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(ema.averaged_state_dict()))
    history = model.fit(2, dl, dl_val, callbacks=[ema, record], verbose=0)
    for epoch, state in enumerate(seen):
        probe = torchfit.Model(SmallCNN()).compile(nn.CrossEntropyLoss(), metrics=["accuracy"], device="cpu")
        probe.net.load_state_dict(state)
        figures = probe.evaluate(dl_val)
        assert figures["val_loss"] == history["val_loss"][epoch]
        assert figures["val_accuracy"] == history["val_accuracy"][epoch]
    raw = ema.raw_state_dict()
    assert model.evaluate(dl_val, callbacks=[ema])["val_loss"] == history["val_loss"].iloc[-1]
    assert_equal_dicts(ema.raw_state_dict(), raw)  # evaluating with the average in the net lost nothing
    ema.restore_raw()
    assert model.evaluate(dl_val)["val_loss"] != history["val_loss"].iloc[-1]  # the raw weights score otherwise


def test_accumulation_updates_once_per_window_including_the_uneven_last():
    model, dl, _ = setup()  # 5 batches, windows of 2: 3 optimizer steps per epoch
    ema = EMA(decay=0.5)
    model.fit(2, dl, callbacks=[ema], verbose=0, grad_accum_steps=2)
    assert model.global_step == 6 and ema.optimizer_steps == 6 and ema.updates == 6


def test_a_step_the_grad_scaler_skips_does_not_count():
    model, dl, _ = setup()
    ema = EMA(decay=0.5)
    ema.set_model(model)
    model._run = run = types.SimpleNamespace(config=types.SimpleNamespace(optim=None))  # a fit in progress, to the callback
    ema.on_train_begin({})
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    opt = model.optimizer
    x, y = next(iter(dl))
    before = [t.clone() for t in ema._average]
    for poison in (True, False):
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model.net(x), y)).backward()
        if poison:
            model.net.conv1.weight.grad[0] = float("inf")  # as an fp16 overflow would
        scaler.step(opt)
        scaler.update()
        assert ema.optimizer_steps == (0 if poison else 1)
        if poison:
            assert all(torch.equal(a, b) for a, b in zip(ema._average, before))
    model._run = None
    assert model.run is not run
    ema.on_train_end({})
    opt.step()
    assert ema.optimizer_steps == 1  # the hook went away with the fit


def test_after_a_failed_fit_the_hook_stops_following_the_optimizer():
    model, dl, _ = setup()
    ema = EMA(decay=0.5)
    calls = {"n": 0}

    def failing_loss(preds, y):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("bad batch")
        return nn.functional.cross_entropy(preds, y)

    object.__setattr__(model, "loss_fn", failing_loss)
    with pytest.raises(torchfit.errors.StepError, match="bad batch"):
        model.fit(1, dl, callbacks=[ema], verbose=0)
    assert ema.optimizer_steps == 2
    model.optimizer.step()  # a step outside any fit
    assert ema.optimizer_steps == 2 and ema._handle is None


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
    straight, dl, dl_val = setup()
    ema_a = EMA(decay=0.9)
    torch.manual_seed(5)
    straight.fit(3, dl, dl_val, callbacks=[ema_a, ModelCheckpoint(tmp_path / "ep{epoch}.pt")], verbose=0)

    resumed, dl, dl_val = setup(seed=2)  # other weights: the file must supply them
    ema_b = EMA(decay=0.9)
    resumed.fit(3, dl, dl_val, callbacks=[ema_b, ModelCheckpoint(tmp_path / "b" / "ep{epoch}.pt")], verbose=0,
                resume_from=tmp_path / "ep1.pt")

    assert_equal_dicts(resumed.net.state_dict(), straight.net.state_dict())  # the averages, left in the nets
    assert_equal_dicts(ema_b.raw_state_dict(), ema_a.raw_state_dict())
    pd.testing.assert_frame_equal(resumed.history, straight.history, check_exact=True)
    assert ema_b.optimizer_steps == ema_a.optimizer_steps == 15


def test_two_fits_equal_one_and_restore_raw_makes_save_checkpoint_resumable(tmp_path):
    one, dl, dl_val = setup()
    ema_one = EMA(decay=0.9)
    one.fit(2, dl, dl_val, callbacks=[ema_one], verbose=0)

    two, dl, dl_val = setup()
    ema_two = EMA(decay=0.9)
    two.fit(1, dl, dl_val, callbacks=[ema_two], verbose=0)
    ema_two.restore_raw()
    two.save_checkpoint(tmp_path / "c.pt")
    two.fit(1, dl, dl_val, callbacks=[ema_two], verbose=0)  # same callback: continues from the raw weights
    assert_equal_dicts(two.net.state_dict(), one.net.state_dict())
    pd.testing.assert_frame_equal(two.history, one.history, check_exact=True)

    three, dl, dl_val = setup(seed=9)
    three.load_checkpoint(tmp_path / "c.pt")
    ema_three = EMA(decay=0.9)
    three.fit(1, dl, dl_val, callbacks=[ema_three], verbose=0)
    assert_equal_dicts(three.net.state_dict(), one.net.state_dict())


def test_ema_arguments_are_checked():
    for kwargs, culprit in (({"decay": 1.0}, "decay"), ({"decay": -0.1}, "decay"),
                            ({"every_n_steps": 0}, "every_n_steps"), ({"start_step": -1}, "start_step")):
        with pytest.raises(ValueError, match=culprit):
            EMA(**kwargs)
    with pytest.raises(RuntimeError, match="no average yet"):
        EMA().raw_state_dict()


# ----------------------------------------------------------------------- SWA
def test_swa_is_the_mean_of_the_epoch_end_weights_with_batchnorm_recomputed():
    model, dl, dl_val = setup()
    snapshots = []
    record = LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(
        {n: p.detach().clone() for n, p in model.net.named_parameters()}))
    swa = SWA(start_epoch=2)
    model.fit(4, dl, dl_val, callbacks=[record, swa], verbose=0)
    gen_after = dl.generator.get_state()
    rng_after = torch.get_rng_state()

    assert swa.updates == 3
    for name, p in model.net.named_parameters():
        mean = torch.stack([s[name] for s in snapshots[1:]]).mean(0)
        torch.testing.assert_close(p.detach(), mean, rtol=1e-6, atol=1e-7)
    assert_equal_dicts(params_of(swa.raw_state_dict(), model.net), snapshots[-1])

    # BatchNorm statistics: a fresh pass over the training loader with the averaged weights.
    ref = copy.deepcopy(model.net)
    torch.optim.swa_utils.update_bn(dl, ref)
    assert torch.equal(model.net.bn.running_mean, ref.bn.running_mean)
    assert torch.equal(model.net.bn.running_var, ref.bn.running_var)
    # ...which drew no random numbers that the next fit would miss.
    assert torch.equal(gen_after, dl.generator.get_state()) is False  # update_bn above did draw
    plain, dl2, dl_val2 = setup()
    plain.fit(4, dl2, dl_val2, verbose=0)
    assert torch.equal(gen_after, dl2.generator.get_state())
    assert torch.equal(rng_after, torch.get_rng_state())


def test_swa_resume_exact(tmp_path):
    straight, dl, dl_val = setup()
    swa_a = SWA(start_epoch=1)
    straight.fit(3, dl, dl_val, callbacks=[swa_a, ModelCheckpoint(tmp_path / "ep{epoch}.pt")], verbose=0)
    resumed, dl, dl_val = setup(seed=2)
    swa_b = SWA(start_epoch=1)
    resumed.fit(3, dl, dl_val, callbacks=[swa_b, ModelCheckpoint(tmp_path / "b" / "ep{epoch}.pt")], verbose=0,
                resume_from=tmp_path / "ep2.pt")
    assert_equal_dicts(resumed.net.state_dict(), straight.net.state_dict())
    assert swa_b.updates == 3


def test_ema_updates_make_no_host_sync(monkeypatch):
    import sys

    import torchfit.callbacks.averaging as averaging

    calls = []
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__"):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, __original=original, __name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename == averaging.__file__:
                calls.append(__name)
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    model, dl, dl_val = setup()
    ema = EMA(decay=0.9)
    model.fit(2, dl, dl_val, callbacks=[ema], verbose=0)
    assert ema.updates == 10 and calls == []



def test_an_error_during_validation_leaves_the_raw_weights_recoverable():
    model, dl, dl_val = setup()
    ema = EMA(decay=0.5)

    calls = {"val": 0}

    def loss_failing_in_validation(preds, y):
        if not torch.is_grad_enabled():
            calls["val"] += 1
            if calls["val"] > 1:  # the check of dl_val's first batch before training passes
                raise RuntimeError("val batch broken")
        return nn.functional.cross_entropy(preds, y)

    object.__setattr__(model, "loss_fn", loss_failing_in_validation)
    with pytest.raises(torchfit.errors.StepError, match="val batch broken"):
        model.fit(1, dl, dl_val, callbacks=[ema], verbose=0)
    # on_exception swapped the average out again: the net holds the weights training left
    raw = ema.raw_state_dict()
    assert_equal_dicts(model.net.state_dict(), raw)
    assert not torch.equal(ema.averaged_state_dict()["conv1.weight"], model.net.conv1.weight)
    ema.restore_raw()
    assert_equal_dicts(model.net.state_dict(), raw)
    assert ema._handle is None  # no longer following the optimizer
