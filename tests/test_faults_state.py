"""Fault injection on state that outlives a call (issue 22, second pass): EMA across a checkpoint
written after fit, an EMA state refused before a resume changes anything, an EMA reused on
another net, lr_find's restore of reassigned buffers and its run over a generator, SWA's
BatchNorm pass failing, and a scikit-learn refit that fails. The harness is tests/test_faults.py's.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import torchfit
from torchfit.callbacks import Callback
from torchfit.callbacks.averaging import EMA, SWA
from torchfit.checkpoint.saving import digest
from torchfit.errors import CheckpointError
from torchfit.losses import TargetError
from torchfit.lr_finder import lr_find
from torchfit.sklearn import TorchfitClassifier, TorchfitRegressor
from conftest import assert_same_weights, blobs
from test_faults import Snapshot, attack, bn_net, data, trained, trains_normally


def compiled(seed: int = 0) -> torchfit.Model:
    net = bn_net(seed)
    return torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=1e-2),
                                       ["accuracy"], device="cpu")


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# ------------------------------------------------- EMA: save after fit, load, fit on
@pytest.mark.parametrize("same_callback", [False, True], ids=["new EMA", "the same EMA"])
def test_ema_saved_after_fit_continues_as_training_straight_through(tmp_path, same_callback):
    straight = compiled()
    straight.fit(3, data(), data(seed=1), callbacks=[EMA(decay=0.9)], verbose=0)

    first = compiled()
    ema = EMA(decay=0.9)
    first.fit(2, data(), data(seed=1), callbacks=[ema], verbose=0)
    averaged = ema.averaged_state_dict()
    first.save_checkpoint(tmp_path / "after_fit.pt")
    saved = torch.load(tmp_path / "after_fit.pt", weights_only=True)
    assert_same_state(saved["net"], averaged)  # the file's net is the average, as the net was

    second = compiled(seed=5)  # other weights: the file must supply them
    second.load_checkpoint(tmp_path / "after_fit.pt")
    second.fit(1, data(), data(seed=1), callbacks=[ema if same_callback else EMA(decay=0.9)], verbose=0)

    pd.testing.assert_frame_equal(second.history, straight.history, check_exact=True)
    assert_same_weights(second.net, straight.net)  # the averages, left in the nets, bit for bit


def test_ema_resume_from_a_checkpoint_saved_after_fit(tmp_path):
    straight = compiled()
    ema_s = EMA(decay=0.9)
    straight.fit(3, data(), callbacks=[ema_s], verbose=0)
    first = compiled()
    first.fit(2, data(), callbacks=[EMA(decay=0.9)], verbose=0)
    first.save_checkpoint(tmp_path / "c.pt")
    resumed = compiled(seed=3)
    ema_r = EMA(decay=0.9)
    resumed.fit(3, data(), callbacks=[ema_r], verbose=0, resume_from=tmp_path / "c.pt")
    pd.testing.assert_frame_equal(resumed.history, straight.history, check_exact=True)
    assert_same_weights(resumed.net, straight.net)
    assert_same_state(ema_r.raw_state_dict(), ema_s.raw_state_dict())
    assert ema_r.optimizer_steps == ema_s.optimizer_steps == 12


# ------------------------------------------------- EMA: a state refused before a resume applies anything
def _ema_checkpoint(tmp_path, mutate):
    model = compiled(seed=7)
    model.fit(2, data(seed=7), callbacks=[EMA(decay=0.9)], verbose=0)
    model.save_checkpoint(tmp_path / "good.pt")
    ck = torch.load(tmp_path / "good.pt", weights_only=True)
    mutate(ck["callbacks"]["EMA"])
    ck["digest"] = digest(ck)  # a consistent file: only the EMA state is wrong
    bad = tmp_path / "bad" / "ema.pt"
    bad.parent.mkdir()
    torch.save(ck, bad)
    return bad


def _swap_first_two(state):
    for key in ("names", "average", "raw"):
        if state.get(key) is not None:
            state[key][0], state[key][1] = state[key][1], state[key][0]


EMA_STATES = {
    # (matched loosely first, so that a refusal after the weights were replaced fails on the snapshot)
    "parameters in another order": (_swap_first_two, r"callback EMA.*(another order|other parameters)",
                                    "another order (position 0: '0.bias', this net has '0.weight' there)"),
    "an average short of a tensor": (lambda st: st["average"].pop(), r"callback EMA.*'average' holds 5 tensors for 6"),
    "another net's names": (lambda st: st["names"].__setitem__(0, "encoder.weight"),
                            r"callback EMA.*other parameters.*'encoder.weight'"),
    "updates a str": (lambda st: st.__setitem__("updates", "3"), r"callback EMA.*'updates' should be an int"),
    "a raw weight of another shape": (lambda st: st["raw"].__setitem__(0, torch.zeros(2, 2)),
                                      r"callback EMA.*'raw' for 0.weight has shape \(2, 2\)"),
}


@pytest.mark.parametrize("case", list(EMA_STATES))
def test_resume_from_an_ema_state_this_net_cannot_take_changes_nothing(tmp_path, case):
    mutate, match, *detail = EMA_STATES[case]
    bad = _ema_checkpoint(tmp_path, mutate)
    model = trained(seed=0, epochs=1)
    info = attack(model, lambda: model.fit(3, data(), callbacks=[EMA(decay=0.9)], verbose=0, resume_from=bad),
                  CheckpointError, match, tmp_path, same_fit_state=True)
    assert all(d in str(info.value) for d in detail), str(info.value)


class Picky(Callback):
    """A callback with state that refuses a state it cannot take (the general mechanism)."""

    def __init__(self):
        self.count = 0

    def state_dict(self):
        return {"count": self.count}

    def check_state_dict(self, state):
        if state["count"] > 100:
            raise ValueError(f"count {state['count']} is beyond what Picky can continue from")

    def load_state_dict(self, state):
        self.count = state["count"]


def test_a_callbacks_check_state_dict_is_asked_before_a_resume_applies_anything(tmp_path):
    saver = compiled(seed=7)
    saver.fit(1, data(seed=7), callbacks=[Picky()], verbose=0)
    saver.save_checkpoint(tmp_path / "c.pt")
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    ck["callbacks"]["Picky"]["count"] = 1000
    torch.save(ck, tmp_path / "c.pt")
    model = trained()
    attack(model, lambda: model.fit(3, data(), callbacks=[Picky()], verbose=0, resume_from=tmp_path / "c.pt"),
           CheckpointError, r"callback Picky does not fit it: count 1000 is beyond", tmp_path, same_fit_state=True)


# ------------------------------------------------- EMA: one object, another net
def test_an_ema_given_to_another_net_starts_a_new_average():
    ema = EMA(decay=0.9)
    compiled(seed=1).fit(1, data(), callbacks=[ema], verbose=0)
    reused = compiled(seed=2)
    reused.fit(1, data(), callbacks=[ema], verbose=0)
    fresh = compiled(seed=2)
    ema_fresh = EMA(decay=0.9)
    fresh.fit(1, data(), callbacks=[ema_fresh], verbose=0)
    assert_same_weights(reused.net, fresh.net)
    assert ema.optimizer_steps == ema_fresh.optimizer_steps == 4 and ema.updates == ema_fresh.updates


def test_evaluate_with_the_ema_of_another_net_is_refused_and_changes_nothing():
    ema = EMA(decay=0.9)
    compiled(seed=1).fit(1, data(), callbacks=[ema], verbose=0)
    other = trained()
    attack(other, lambda: other.evaluate(data(), callbacks=[ema]), ValueError, r"EMA holds the average of another net")


def _blobs_xy(n=96):
    ds = blobs(n)
    return ds.tensors[0].numpy(), ds.tensors[1].numpy()


def test_two_seeded_classifier_fits_with_an_ema_agree_exactly():
    X, y = _blobs_xy()
    ema = EMA(decay=0.9)
    clf = TorchfitClassifier(lr=0.05, epochs=2, seed=0, callbacks=[ema])
    first = clf.fit(X, y).predict_proba(X)
    second = clf.fit(X, y).predict_proba(X)
    other = TorchfitClassifier(lr=0.05, epochs=2, seed=0, callbacks=[ema]).fit(X, y).predict_proba(X)
    assert np.array_equal(first, second) and np.array_equal(first, other)
    assert ema.model is None and ema.optimizer_steps == 0  # the caller's callback was copied, not trained
    assert isinstance(clf.callbacks_[0], EMA) and clf.callbacks_[0].optimizer_steps == 6


def test_classifier_copies_share_what_a_callback_reports_to():
    optuna = pytest.importorskip("optuna")
    from torchfit.callbacks import OptunaPruning

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    X, y = _blobs_xy()
    TorchfitClassifier(epochs=2, seed=0, callbacks=[OptunaPruning(trial, monitor="loss")]).fit(X, y)
    assert sorted(study.trials[0].intermediate_values) == [1, 2]


# ------------------------------------------------- lr_find
class Counting(nn.Module):
    """A net whose forward reassigns a buffer (a new tensor under the old name)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        self.seen = self.seen + x.shape[0]
        return self.lin(x)


def test_lr_find_restores_a_buffer_the_forward_reassigned():
    net = Counting()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1), device="cpu")
    model.fit(1, data(), verbose=0)
    original = net.seen
    assert original.item() == 64
    snap = Snapshot(model, same_fit_state=True)
    df = lr_find(model, data(), num_steps=6)
    assert len(df) == 6
    snap.assert_same()
    assert net.seen is original and net.seen.item() == 64 and dict(net.named_buffers())["seen"] is original


def test_lr_find_over_an_endless_generator_takes_num_steps_batches():
    model = trained()
    dl = data()
    taken = []

    def endless():
        while True:
            for batch in dl:
                taken.append(1)
                yield batch

    snap = Snapshot(model, same_fit_state=True)
    df = lr_find(model, endless(), num_steps=7, end_lr=1.0)
    snap.assert_same()
    assert len(df) == 7 and df.attrs["stop_reason"] == "completed" and len(taken) == 7

    short = lr_find(model, iter(list(dl)), num_steps=7, end_lr=1.0)  # a one-pass iterator of 4 batches
    snap.assert_same()
    assert len(short) == 4 and short.attrs["stop_reason"] == "exhausted"
    trains_normally(model)


# ------------------------------------------------- SWA's BatchNorm pass
class FailingLoader:
    """Batches of ``data()``, then an I/O error (a file that went away)."""

    def __init__(self, after: int):
        self.after = after

    def __iter__(self):
        for i, (x, y) in enumerate(data()):
            if i == self.after:
                raise OSError("stale file handle")
            yield x, y


def test_swa_batchnorm_pass_failing_leaves_the_net_as_training_left_it():
    plain = trained(epochs=0)
    plain.fit(2, data(), verbose=0)
    model = trained(epochs=0)
    swa = SWA(start_epoch=1, bn_loader=FailingLoader(after=2))
    with pytest.raises(RuntimeError, match=r"SWA: recomputing BatchNorm statistics .* over bn_loader failed "
                                           r"\(OSError: stale file handle\)") as info:
        model.fit(2, data(), callbacks=[swa], verbose=0)
    assert isinstance(info.value.__cause__, OSError)
    assert model.net[1].momentum == 0.1  # update_bn had set it to None for its pass
    assert all(m.training for m in model.net.modules())  # the modes fit leaves
    assert_same_weights(model.net, plain.net)  # raw weights and the statistics training left
    assert len(model.history) == 2
    trains_normally(model)


# ------------------------------------------------- scikit-learn refits
def _attributes(est):
    return {k: v for k, v in vars(est).items() if k.endswith("_") and not k.startswith("__")}


def test_a_classifier_refit_whose_net_factory_raises_keeps_the_last_fit_whole():
    X, y = _blobs_xy()
    calls = {"n": 0}

    def factory(n_in, n_out):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("factory broke")
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(n_in, 8), nn.ReLU(), nn.Linear(8, n_out))

    from torchfit.sklearn import FromData

    clf = TorchfitClassifier(factory, module__n_in=FromData("n_features_in"), module__n_out=FromData("n_classes"),
                             epochs=1, seed=0).fit(X, y)
    before = _attributes(clf)
    predicted = clf.predict(X)
    letters = np.array(["a", "b", "c", "d"])[np.arange(len(y)) % 4]
    with pytest.raises(RuntimeError, match="factory broke"):
        clf.fit(np.hstack([X, X]), letters)
    after = _attributes(clf)
    assert after.keys() == before.keys()
    for k in before:
        assert after[k] is before[k], f"{k} changed"
    assert np.array_equal(clf.predict(X), predicted) and set(clf.predict(X)) <= {0, 1, 2}


def test_a_regressor_refit_that_fails_keeps_the_last_fit_whole():
    X, _ = _blobs_xy()
    y = X.sum(axis=1)
    reg = TorchfitRegressor(nn.Linear, module__in_features=4, module__out_features=1, epochs=1, seed=0).fit(X, y)
    before = _attributes(reg)
    predicted = reg.predict(X)
    with pytest.raises(TargetError, match="targets of shape"):  # 2 targets for a net of one output
        reg.fit(X, np.stack([y, y], axis=1))
    after = _attributes(reg)
    for k in before:
        assert after[k] is before[k], f"{k} changed"
    assert reg.n_outputs_ == 1 and np.array_equal(reg.predict(X), predicted)


def test_an_ema_state_handed_over_before_the_ema_has_a_model_is_applied_at_its_next_fit():
    """As the notebook launcher (fit(num_processes=N)) hands rank 0's callback states back: the
    caller's EMA never ran there, yet a fit after it continues as training straight through."""
    from torchfit.checkpoint import callbacks_state, restore_callbacks

    straight = compiled()
    straight.fit(3, data(), callbacks=[EMA(decay=0.9)], verbose=0)
    worker = compiled()
    worker_ema = EMA(decay=0.9)
    dl = data()
    worker.fit(2, dl, callbacks=[worker_ema], verbose=0)

    caller = compiled(seed=4)
    caller.net.load_state_dict(worker.net.state_dict())  # the net rank 0 left: the average
    caller.optimizer.load_state_dict(worker.optimizer.state_dict())
    caller.training_state.restore(worker.training_state)
    ema = EMA(decay=0.9)
    restore_callbacks({"callbacks": callbacks_state([worker_ema])}, [ema])
    caller.fit(1, dl, callbacks=[ema], verbose=0)
    pd.testing.assert_frame_equal(caller.history, straight.history, check_exact=True)
    assert_same_weights(caller.net, straight.net)


@pytest.mark.slow
def test_an_ema_in_a_fit_on_two_processes_gets_rank_0s_state_back():
    """fit(num_processes=2) hands rank 0's callback states to the caller's callbacks, which never ran."""
    model = compiled()
    ema = EMA(decay=0.9)
    model.fit(1, data(), callbacks=[ema], verbose=0, num_processes=2)
    assert len(model.history) == 1
    model.fit(1, data(), callbacks=[ema], verbose=0)  # binds, takes the handed state, trains on the raw weights
    assert ema.optimizer_steps == model.global_step == 6
