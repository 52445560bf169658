"""Fault injection (SQLite's "How SQLite Is Tested"): for each promise, the attacks that would break it.

Every case runs through ``attack``: it snapshots everything a failure must not touch (weights,
BatchNorm statistics, optimizer state, ``epoch``, ``global_step``, ``history``, the step rows,
what the next fit resumes from, and every file under the test's directory), runs the attack,
checks the error type and that its message names the culprit, compares the snapshot, and
trains one more epoch to show the model still works. Cases that need the lead's model/loop
side are ``xfail(strict=True)`` with the reason starting "lead:", so they show up when fixed.
See docs/reliability.md for the promises and which test proves which.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit
from torchfit.losses import TargetError
from torchfit.callbacks import Callback, CSVLogger, EarlyStopping, LambdaCallback, ModelCheckpoint, TensorBoard
from torchfit.errors import CheckpointError, MetricError, StepError
from torchfit.metrics.base import Metric
import conftest
from conftest import blobs, loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_RUN = object()  # attack(): the action is not a fit, so nothing trains afterwards by itself


# ----------------------------------------------------------------- the harness
def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def data(n: int = 64, seed: int = 0):
    return loader(blobs(n, seed=seed), 16, shuffle=True, seed=seed)


def trained(seed: int = 0, epochs: int = 1, optimizer: str = "adam", metrics=("accuracy",)) -> torchfit.Model:
    """A model with state everywhere: BatchNorm statistics, optimizer moments, history."""
    net = bn_net(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2) if optimizer == "adam" else \
        torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), opt, list(metrics), device="cpu")
    if epochs:
        model.fit(epochs, data(seed=seed), verbose=0)
    return model


def files_under(*dirs) -> dict:
    found = {}
    for d in dirs:
        for root, _, names in os.walk(d):
            for name in names:
                p = os.path.join(root, name)
                with open(p, "rb") as f:
                    found[p] = hashlib.sha256(f.read()).hexdigest()
    return found


class Snapshot:
    """Everything a refused call must leave as it was; ``assert_same`` names what changed."""

    def __init__(self, model: torchfit.Model, *dirs, same_fit_state: bool = False):
        self.model, self.dirs, self.same_fit_state = model, dirs, same_fit_state
        self.net = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
        self.opt = copy.deepcopy(model.optimizer.state_dict())
        self.counters = (model.epoch, model.global_step, model.stop_training)
        self.history = [dict(row) for row in model.training_state.history]
        self.steps = [dict(row) for row in model.training_state.step_history]
        self.resume = (model.training_state.last_fit, model.training_state.pending_resume)
        self.files = files_under(*dirs)

    def assert_same(self) -> None:
        model = self.model
        for k, v in model.net.state_dict().items():
            assert torch.equal(v, self.net[k]), f"net {k} changed"
        now = model.optimizer.state_dict()
        assert now["param_groups"] == self.opt["param_groups"], "optimizer param_groups changed"
        assert now["state"].keys() == self.opt["state"].keys(), "optimizer state keys changed"
        for i, per in now["state"].items():
            for name, value in per.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(self.opt["state"][i][name])), \
                    f"optimizer state {i}.{name} changed"
        assert (model.epoch, model.global_step, model.stop_training) == self.counters, "epoch/global_step changed"
        assert model.training_state.history == self.history, "history changed"
        assert model.training_state.step_history == self.steps, "step history changed"
        assert model.training_state.pending_resume is self.resume[1], "what the next fit resumes from changed"
        if self.same_fit_state:  # a failed fit may record its RNG/loader state; a failed load or save may not
            assert model.training_state.last_fit is self.resume[0], "the state the next save writes changed"
        assert files_under(*self.dirs) == self.files, "files on disk changed"


def trains_normally(model: torchfit.Model) -> None:
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    epoch = model.epoch
    history = model.fit(1, data(), verbose=0)
    assert model.epoch == epoch + 1 and len(history) == epoch + 1
    assert math.isfinite(history["loss"].iloc[-1])
    assert any(not torch.equal(v, before[k]) for k, v in model.net.state_dict().items())


def attack(model: torchfit.Model, action, error, match: str, *dirs, same_fit_state: bool = False,
           repair=None) -> pytest.ExceptionInfo:
    """``action()`` raises ``error`` matching ``match``, changes nothing, and the model trains afterwards
    (after ``repair()``, which takes the culprit away where it is part of the model, e.g. a metric)."""
    snap = Snapshot(model, *dirs, same_fit_state=same_fit_state)
    with pytest.raises(error, match=match) as info:
        action()
    snap.assert_same()
    if repair is not None:
        repair()
    trains_normally(model)
    return info


# ------------------------------------------------------- files: load_checkpoint
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of a 2-epoch run (another seed than the models it is loaded into) and its dict."""
    path = tmp_path_factory.mktemp("saved") / "good.pt"
    trained(seed=7, epochs=2).save_checkpoint(path)
    return path, torch.load(path, weights_only=True)


def _set(path, value):
    def mutate(ck):
        *parents, last = path
        target = ck
        for p in parents:
            target = target[p]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value(target[last]) if callable(value) else value
    return mutate


_DELETE = object()
FIRST = "0.weight"
# (mutation, the culprit the message must name)
MALFORMED = {
    "epoch missing": (_set(["epoch"], _DELETE), r"'epoch' is missing"),
    "epoch a str": (_set(["epoch"], "3"), r"'epoch' should be an int >= 0 but is a str"),
    "epoch a float": (_set(["epoch"], 2.5), r"'epoch' should be an int"),
    "epoch negative": (_set(["epoch"], -1), r"'epoch' should be an int >= 0"),
    "epoch a bool": (_set(["epoch"], True), r"'epoch' should be an int"),
    "global_step None": (_set(["global_step"], None), r"'global_step' should be an int"),
    "stop_training a str": (_set(["stop_training"], "no"), r"'stop_training' should be True or False"),
    "net missing": (_set(["net"], _DELETE), r"'net' is missing"),
    "net weight a list": (_set(["net", FIRST], lambda t: t.tolist()), r"'net'\['0.weight'\] should be a tensor"),
    "net weight of ints": (_set(["net", FIRST], lambda t: t.long()), r"'net'\['0.weight'\] is a torch.int64 tensor"),
    "net weight reshaped": (_set(["net", FIRST], lambda t: t.reshape(-1)), r"other shapes: 0.weight"),
    "net key missing": (_set(["net", "1.running_mean"], _DELETE), r"missing from the checkpoint: 1.running_mean"),
    "optimizer a list": (_set(["optimizer"], []), r"'optimizer' should be None or an optimizer state_dict"),
    "optimizer lr a str": (_set(["optimizer", "param_groups", 0, "lr"], "0.1"),
                           r"'optimizer'\['param_groups'\]\[0\]\['lr'\] should be a number"),
    "optimizer group sizes": (_set(["optimizer", "param_groups", 0, "params"], lambda p: p[:-1]),
                              r"parameter groups of sizes \[5\]; this model's optimizer has \[6\]"),
    "optimizer state shape": (_set(["optimizer", "state", 0, "exp_avg"], lambda t: t[:2]),
                              r"'optimizer'\['state'\]\[0\]\['exp_avg'\] has shape \(2, 4\)"),
    "optimizer state of no parameter": (_set(["optimizer", "state", 99], {"step": torch.tensor(1.0)}),
                                        r"'optimizer'\['state'\]\[99\] should be a dict for one of"),
    "optimizer class not a str": (_set(["optimizer_class"], 3), r"'optimizer_class' should be None or"),
    "scaler a list": (_set(["scaler"], [1.0]), r"'scaler' should be None or a GradScaler state"),
    "precision an int": (_set(["precision"], 32), r"'precision' should be None or a str"),
    "history a dict": (_set(["history"], {}), r"'history' should be a list of dicts"),
    "history row a list": (_set(["history", 0], [1, 2]), r"'history'\[0\] should be a dict of figures"),
    "history figure a list": (_set(["history", 1, "loss"], [0.5]), r"'history'\[1\]\['loss'\] should be a number"),
    "step_history figure a dict": (_set(["step_history", 0, "loss"], {}), r"'step_history'\[0\]\['loss'\]"),
    "callbacks a list": (_set(["callbacks"], []), r"'callbacks' should be a dict of callback states"),
    "callback state an int": (_set(["callbacks"], {"EarlyStopping": 3}), r"'callbacks'\['EarlyStopping'\]"),
    "loaders a list": (_set(["loaders"], []), r"'loaders' should be a dict"),
    "loader states a tensor": (_set(["loaders", "dl_train"], torch.zeros(3)), r"'loaders'\['dl_train'\] should be"),
    "loader state of floats": (_set(["loaders", "dl_train", 0], lambda t: t.float()),
                               r"'loaders'\['dl_train'\]\[0\] should be a uint8 tensor"),
    "rng missing": (_set(["rng"], _DELETE), r"'rng' is missing"),
    "rng without numpy": (_set(["rng", "numpy"], _DELETE), r"'rng' should be a dict of random states"),
    "rng torch cut short": (_set(["rng", "torch"], lambda t: t[:100]), r"'rng'\['torch'\] should be a uint8"),
    "rng python state short": (_set(["rng", "python", "state"], lambda s: s[:10]), r"'rng'\['python'\]"),
    "rng numpy pos out of range": (_set(["rng", "numpy", "pos"], 10_000), r"'rng'\['numpy'\]"),
    "mid_epoch a str": (_set(["mid_epoch"], "yes"), r"'mid_epoch' should be None or"),
    "digest of a changed weight": (_set(["net", FIRST], lambda t: t + 1),
                                   r"'net'\['0.weight'\] does not match the digest"),
    "digest entry altered": (_set(["digest", "rng['torch']"], "0" * 64), r"'rng'\['torch'\] does not match the digest"),
    "digest lists a ghost": (_set(["digest", "net['ghost']"], "0" * 64), r"'digest' lists tensors the file does not"),
    "digest a list": (_set(["digest"], []), r"'digest' should be a dict of sha256"),
    "a tensor the digest omits": (_set(["digest", "optimizer['state'][0]['exp_avg']"], _DELETE),
                                  r"'optimizer'\['state'\]\[0\]\['exp_avg'\] is a tensor the digest does not list"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_checkpoint_changes_nothing_and_names_the_entry(case, saved, tmp_path):
    path, good = saved
    ck = copy.deepcopy(good)
    mutate, match = MALFORMED[case]
    mutate(ck)
    torch.save(ck, tmp_path / "bad.pt")
    model = trained()
    info = attack(model, lambda: model.load_checkpoint(tmp_path / "bad.pt"), CheckpointError, match, tmp_path,
                  same_fit_state=True)
    assert "bad.pt" in str(info.value) and "nothing was changed" in str(info.value)


def test_a_good_checkpoint_still_loads_after_all_that(saved):
    model = trained()
    model.load_checkpoint(saved[0])
    assert model.epoch == 2 and len(model.history) == 2
    trains_normally(model)


def flip_byte_inside(path, tensor: torch.Tensor) -> None:
    """Flip one bit in the middle of ``tensor``'s bytes as stored in the file (a damaged disk)."""
    raw = bytearray(open(path, "rb").read())
    needle = tensor.contiguous().numpy().tobytes()
    at = raw.find(needle)
    assert at >= 0 and raw.find(needle, at + 1) < 0, "the tensor's bytes must be in the file once"
    raw[at + len(needle) // 2] ^= 0x10
    open(path, "wb").write(bytes(raw))


@pytest.mark.parametrize("entry", [("net", "3.weight"), ("optimizer", "exp_avg_sq")])
def test_flipped_bytes_on_disk_are_found_and_named(entry, tmp_path):
    source = trained(seed=3, epochs=2)
    source.save_checkpoint(tmp_path / "c.pt")
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    if entry[0] == "net":
        tensor, name = ck["net"][entry[1]], r"'net'\['3.weight'\]"
    else:
        tensor, name = ck["optimizer"]["state"][2]["exp_avg_sq"], r"'optimizer'\['state'\]\[2\]\['exp_avg_sq'\]"
    flip_byte_inside(tmp_path / "c.pt", tensor)
    assert torch.load(tmp_path / "c.pt", weights_only=True) is not None  # torch itself reads it silently
    model = trained()
    attack(model, lambda: model.load_checkpoint(tmp_path / "c.pt"), CheckpointError,
           name + r" does not match the digest.*damaged", tmp_path, same_fit_state=True)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "a directory"])
def test_unreadable_files_are_checkpoint_errors(damage, saved, tmp_path):
    target = tmp_path / "c.pt"
    raw = open(saved[0], "rb").read()
    if damage == "truncated":
        target.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "garbage":
        target.write_bytes(os.urandom(2000))
    else:
        target.mkdir()
    model = trained()
    # a directory is read as a sharded (torch.distributed.checkpoint) checkpoint, which this one is not
    match = r"c\.pt.*not a sharded torchfit checkpoint" if damage == "a directory" else r"c\.pt.*could not read it"
    attack(model, lambda: model.load_checkpoint(target), CheckpointError, match, tmp_path, same_fit_state=True)


def test_an_sgd_checkpoint_is_refused_by_an_adam_model(tmp_path):
    trained(seed=2, optimizer="sgd").save_checkpoint(tmp_path / "sgd.pt")
    model = trained()
    attack(model, lambda: model.load_checkpoint(tmp_path / "sgd.pt"), CheckpointError,
           r"state of a SGD optimizer; this model's optimizer is Adam.*optimizer=SGD", tmp_path, same_fit_state=True)


def test_a_newer_format_version_is_refused(saved, tmp_path):
    ck = copy.deepcopy(saved[1])
    ck["torchfit_checkpoint"] = 2
    torch.save(ck, tmp_path / "v2.pt")
    model = trained()
    attack(model, lambda: model.load_checkpoint(tmp_path / "v2.pt"), CheckpointError, "format version 2", tmp_path,
           same_fit_state=True)


@pytest.mark.parametrize("interrupt", [RuntimeError("device lost"), KeyboardInterrupt()])
def test_a_failure_while_applying_rolls_everything_back(interrupt, saved, tmp_path, monkeypatch):
    # the net is loaded first, the optimizer second: fail there, after weights were overwritten
    model = trained()

    def fail(*args, **kwargs):
        raise interrupt

    monkeypatch.setattr(model.optimizer, "load_state_dict", fail)
    expected = CheckpointError if isinstance(interrupt, Exception) else KeyboardInterrupt
    match = "rolled back" if expected is CheckpointError else None
    snap = Snapshot(model, tmp_path, same_fit_state=True)
    with pytest.raises(expected, match=match):
        model.load_checkpoint(saved[0])
    snap.assert_same()
    monkeypatch.undo()
    trains_normally(model)


def test_resume_from_a_malformed_file_changes_nothing(saved, tmp_path):
    ck = copy.deepcopy(saved[1])
    ck["epoch"] = "two"
    torch.save(ck, tmp_path / "last.pt")
    model = trained()
    attack(model, lambda: model.fit(4, data(), verbose=0, resume_from=tmp_path / "last.pt"), CheckpointError,
           r"'epoch' should be an int", tmp_path)


def test_a_callback_state_of_another_kind_is_named(saved, tmp_path):
    ck = copy.deepcopy(saved[1])
    ck["callbacks"] = {"EarlyStopping": {"patience_left": 2}}
    torch.save(ck, tmp_path / "c.pt")
    model = trained()
    model.load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"callback EarlyStopping has keys \['patience_left'\]"):
        model.fit(1, data(), callbacks=[EarlyStopping(monitor="loss", verbose=0)], verbose=0)


@pytest.mark.parametrize("culprit", ["callback state", "callback path"])
def test_resume_from_with_a_bad_callback_changes_nothing(culprit, saved, tmp_path):
    ck = copy.deepcopy(saved[1])
    if culprit == "callback state":
        ck["callbacks"] = {"EarlyStopping": {"patience_left": 2}}
        callbacks, error, match = [EarlyStopping(monitor="loss", verbose=0)], CheckpointError, "EarlyStopping"
    else:
        (tmp_path / "file").write_text("x")
        callbacks, error, match = [CSVLogger(tmp_path / "file" / "log.csv")], NotADirectoryError, "CSVLogger"
    torch.save(ck, tmp_path / "last.pt")
    model = trained()
    attack(model, lambda: model.fit(4, data(), callbacks=callbacks, verbose=0, resume_from=tmp_path / "last.pt"),
           error, match, tmp_path)


# ------------------------------------------------------- files: save_checkpoint
def unwritable_dir(tmp_path):
    """A directory no file can be created in (chmod for a normal user; a sysfs directory as root)."""
    if os.geteuid() != 0:
        d = tmp_path / "locked"
        d.mkdir()
        d.chmod(0o555)
        return d
    try:
        fd = os.open("/sys/.torchfit-probe", os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError:
        return "/sys"
    os.close(fd)
    os.remove("/sys/.torchfit-probe")
    pytest.skip("no unwritable directory on this machine")


@pytest.mark.parametrize("where", ["parent is a file", "path is a directory", "directory not writable"])
def test_save_checkpoint_to_a_path_it_cannot_write(where, tmp_path):
    model = trained()
    if where == "parent is a file":
        (tmp_path / "file").write_text("x")
        path, error, match = tmp_path / "file" / "c.pt", NotADirectoryError, r"save_checkpoint.*file\b.*is a file"
    elif where == "path is a directory":
        (tmp_path / "dir").mkdir()
        path, error, match = tmp_path / "dir", IsADirectoryError, r"save_checkpoint.*is a directory"
    else:
        path, error, match = os.path.join(unwritable_dir(tmp_path), "c.pt"), PermissionError, r"no file can be created"
    attack(model, lambda: model.save_checkpoint(path), error, match, tmp_path, same_fit_state=True)


class Holding(Callback):
    """Keeps whatever it is given in its checkpoint state."""

    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return {"kept": self.value}

    def load_state_dict(self, state):
        self.value = state["kept"]


@pytest.mark.parametrize("value", [object(), np.arange(3), lambda: 1, {1, 2}],
                         ids=["object", "ndarray", "lambda", "set"])
def test_callback_state_that_no_checkpoint_can_hold_is_refused_naming_the_callback(value, tmp_path):
    model = trained()
    model.save_checkpoint(tmp_path / "c.pt")
    model.fit(1, data(), callbacks=[Holding(value)], verbose=0)
    snap = Snapshot(model, tmp_path, same_fit_state=True)
    with pytest.raises(CheckpointError, match=r"callback Holding holds callbacks\['Holding'\]\['kept'\] = a .*"
                                              r"nothing was written"):
        model.save_checkpoint(tmp_path / "c.pt")
    snap.assert_same()  # the previous file whole
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epoch"] == 1


@pytest.mark.filterwarnings("ignore:the checkpoint holds state for callback")
def test_numpy_figures_become_python_numbers_and_every_checkpoint_loads(tmp_path):
    # the issue's case: a scikit-learn score (numpy.float64) in the logs that EarlyStopping monitors
    class SklearnScore(Callback):
        def set_params(self, params):
            super().set_params(params)
            params["log_keys"].append("score")

        def on_epoch_end(self, epoch, logs):
            logs["score"] = np.float64(1.0 / (epoch + 1))

    model = trained(epochs=0)
    es = EarlyStopping(monitor="score", mode="min", patience=5, verbose=0)
    ckpt = ModelCheckpoint(tmp_path / "e{epoch}.pt")
    model.fit(3, data(), callbacks=[SklearnScore(), es, ckpt], verbose=0)
    assert type(es.best) is np.float64
    for epoch in (1, 2, 3):
        ck = torch.load(tmp_path / f"e{epoch}.pt", weights_only=True)
        best = ck["callbacks"]["EarlyStopping"]["best"]
        assert type(best) is float and best == 1.0 / epoch
    model.training_state.history[-1]["score"] = np.float32(0.25)  # a figure that reached the history as numpy
    model.save_checkpoint(tmp_path / "e3.pt")
    assert type(torch.load(tmp_path / "e3.pt", weights_only=True)["history"][-1]["score"]) is float
    fresh = trained(seed=4)
    fresh.load_checkpoint(tmp_path / "e3.pt")
    assert fresh.epoch == 3
    trains_normally(fresh)


@pytest.mark.parametrize("value", [object(), [0.5], torch.zeros(2)], ids=["object", "list", "tensor"])
def test_a_history_figure_no_checkpoint_can_hold_is_refused(value, tmp_path):
    model = trained()
    model.training_state.history[-1]["note"] = value
    attack(model, lambda: model.save_checkpoint(tmp_path / "c.pt"), CheckpointError,
           r"model.history holds history\[0\]\['note'\] = a ", tmp_path, same_fit_state=True)


def test_what_save_writes_load_accepts_a_tensor_figure_becomes_a_number(tmp_path):
    model = trained()
    model.training_state.history[-1]["note"] = torch.tensor(0.25)
    model.training_state.step_history[-1]["note"] = np.int64(3)
    model.save_checkpoint(tmp_path / "c.pt")
    fresh = trained(seed=2)
    fresh.load_checkpoint(tmp_path / "c.pt")
    assert fresh.training_state.history[-1]["note"] == 0.25 and type(fresh.training_state.step_history[-1]["note"]) is int


def test_a_checkpoint_loads_with_plain_weights_only_and_carries_a_digest_of_every_tensor(tmp_path):
    model = trained(epochs=2)
    model.save_checkpoint(tmp_path / "c.pt")
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    from torchfit.checkpoint.saving import _tensors, tensor_sha256

    names = {f"{k}{rest}" for k, v in ck.items() if k != "digest" for rest, _ in _tensors(v, "")}
    assert set(ck["digest"]) == names and len(names) > 20
    assert ck["digest"]["net['0.weight']"] == tensor_sha256(model.net[0].weight)
    assert ck["optimizer_class"] == "Adam"


def test_ctrl_c_inside_a_checkpoint_write_leaves_the_previous_file(tmp_path, monkeypatch):
    model = trained()
    ckpt = ModelCheckpoint(tmp_path / "last.pt")
    model.fit(1, data(), callbacks=[ckpt], verbose=0)
    snap_file = files_under(tmp_path)
    real_save = torch.save

    def interrupted(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        f.truncate(50)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    model.fit(1, data(), callbacks=[ckpt], verbose=0)  # Ctrl-C ends fit cleanly
    monkeypatch.undo()
    assert files_under(tmp_path) == snap_file  # the epoch-2 write never replaced epoch 1's file; no temp file
    fresh = trained(seed=1)
    fresh.load_checkpoint(tmp_path / "last.pt")
    assert fresh.epoch == 2  # the checkpoint of epoch 2 (the one before this fit's)


# --------------------------------------------------- callbacks' paths, checked in set_params
def _bad_path(kind, tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    f = tmp_path / "file"
    return {
        "ModelCheckpoint parent is a file": (lambda: ModelCheckpoint(f / "c.pt"), NotADirectoryError,
                                             r"ModelCheckpoint\(.*is a file"),
        "ModelCheckpoint deep parent is a file": (lambda: ModelCheckpoint(f / "a" / "b" / "c.pt"),
                                                  NotADirectoryError, r"ModelCheckpoint"),
        "ModelCheckpoint path is a directory": (lambda: ModelCheckpoint(tmp_path / "dir"), IsADirectoryError,
                                                r"ModelCheckpoint.*is a directory"),
        "ModelCheckpoint save_last under a file": (lambda: ModelCheckpoint(tmp_path / "c.pt",
                                                                           save_last=str(f / "l.pt")),
                                                   NotADirectoryError, r"\(save_last\)"),
        "ModelCheckpoint unknown key": (lambda: ModelCheckpoint(tmp_path / "c-{val_acc:.2f}.pt"), ValueError,
                                        r"names \['val_acc'\], which this fit's epoch logs will not have"),
        "ModelCheckpoint int spec for a float": (lambda: ModelCheckpoint(tmp_path / "c-{loss:02d}.pt"), ValueError,
                                                 r"cannot be filled from the epoch logs.*Unknown format code 'd'"),
        "ModelCheckpoint index into a figure": (lambda: ModelCheckpoint(tmp_path / "c-{epoch[0]}.pt"), ValueError,
                                                r"cannot be filled from the epoch logs \(TypeError"),
        "ModelCheckpoint unwritable": (lambda: ModelCheckpoint(os.path.join(unwritable_dir(tmp_path), "c.pt")),
                                       PermissionError, r"ModelCheckpoint.*no file can be created"),
        "CSVLogger parent is a file": (lambda: CSVLogger(f / "log.csv"), NotADirectoryError, r"CSVLogger.*is a file"),
        "CSVLogger path is a directory": (lambda: CSVLogger(tmp_path / "dir"), IsADirectoryError,
                                          r"CSVLogger.*is a directory"),
        "CSVLogger unwritable": (lambda: CSVLogger(os.path.join(unwritable_dir(tmp_path), "l.csv")), PermissionError,
                                 r"CSVLogger"),
        "TensorBoard log_dir is a file": (lambda: TensorBoard(f), NotADirectoryError,
                                          r"TensorBoard.*should be a directory but is a file"),
        "TensorBoard log_dir under a file": (lambda: TensorBoard(f / "runs"), NotADirectoryError, r"TensorBoard"),
        "MLflowLogger tracking dir under a file": (lambda: _tracking("MLflowLogger", tracking_uri=f / "mlruns"),
                                                   NotADirectoryError, r"MLflowLogger\(tracking_uri="),
        "WandbLogger dir is a file": (lambda: _tracking("WandbLogger", dir=f, mode="offline"), NotADirectoryError,
                                      r"WandbLogger\(dir=.*should be a directory"),
    }[kind]


def _tracking(name, **kwargs):
    pytest.importorskip(name[:-6].lower())
    from torchfit.callbacks import tracking

    return getattr(tracking, name)(**kwargs)


@pytest.mark.parametrize("kind", [
    "ModelCheckpoint parent is a file", "ModelCheckpoint deep parent is a file", "ModelCheckpoint path is a directory",
    "ModelCheckpoint save_last under a file", "ModelCheckpoint unknown key", "ModelCheckpoint int spec for a float",
    "ModelCheckpoint index into a figure", "ModelCheckpoint unwritable", "CSVLogger parent is a file",
    "CSVLogger path is a directory", "CSVLogger unwritable", "TensorBoard log_dir is a file",
    "TensorBoard log_dir under a file", "MLflowLogger tracking dir under a file", "WandbLogger dir is a file"])
def test_a_callback_path_that_cannot_be_written_fails_before_the_first_step(kind, tmp_path):
    make, error, match = _bad_path(kind, tmp_path)
    model = trained()
    steps = []
    spy = LambdaCallback(on_train_batch_begin=lambda b, logs: steps.append(b))
    attack(model, lambda: model.fit(2, data(), callbacks=[spy, make()], verbose=0), error, match, tmp_path)
    assert steps == []  # the spy never saw a batch: the check came before the first step


def test_checking_paths_creates_nothing(tmp_path):
    # a later callback's check fails: the earlier ones' directories must not have been created
    model = trained()
    attack(model, lambda: model.fit(1, data(), verbose=0, callbacks=[
        ModelCheckpoint(tmp_path / "a" / "b" / "c.pt"), CSVLogger(tmp_path / "logs" / "h.csv"),
        EarlyStopping(monitor="val_los")]), ValueError, r"EarlyStopping\(monitor='val_los'\)", tmp_path)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ CSVLogger's atomic rewrite
def test_a_failure_mid_rewrite_leaves_the_previous_log(tmp_path, monkeypatch):
    model = trained(epochs=0)
    path = tmp_path / "log.csv"
    model.fit(3, data(), callbacks=[CSVLogger(path)], verbose=0)
    before = path.read_bytes()
    import csv

    real_writer = csv.writer

    class DyingWriter:
        def __init__(self, f, **kw):
            self.w, self.rows = real_writer(f, **kw), 0

        def writerow(self, row):
            self.rows += 1
            if self.rows == 3:
                raise OSError("disk full")
            return self.w.writerow(row)

    monkeypatch.setattr(csv, "writer", DyingWriter)
    with pytest.raises(OSError, match="disk full"):  # the rewrite at on_train_begin
        model.fit(1, data(), callbacks=[CSVLogger(path)], verbose=0)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["log.csv"]
    assert len(CSVLogger.read(path)) == 3


def run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    prelude = "import torch; torch.set_num_threads(1)\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


CHILD_SETUP = """
    import os, signal, sys
    sys.path.insert(0, "tests")
    import torchfit
    from torch import nn
    from torchfit.callbacks import CSVLogger
    from conftest import blobs, loader
    net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "adam", device="cpu")
    dl = loader(blobs(64), 16)
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_sigkill_mid_csv_rewrite_leaves_the_previous_log(tmp_path):
    path = tmp_path / "log.csv"
    child = run_child(CHILD_SETUP + f"""
    import csv
    model.fit(3, dl, callbacks=[CSVLogger({str(path)!r})], verbose=0)
    open({str(tmp_path / 'before')!r}, "wb").write(open({str(path)!r}, "rb").read())
    real = csv.writer
    class Dying:
        def __init__(self, f, **kw):
            self.f, self.w, self.n = f, real(f, **kw), 0
        def writerow(self, row):
            self.n += 1
            if self.n == 3:
                self.f.flush(); die()
            self.w.writerow(row)
    csv.writer = Dying
    model.fit(1, dl, callbacks=[CSVLogger({str(path)!r})], verbose=0)
    """)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert path.read_bytes() == (tmp_path / "before").read_bytes()
    assert len(CSVLogger.read(path)) == 3


@pytest.mark.slow
def test_sigkill_mid_checkpoint_write_leaves_a_whole_previous_file(tmp_path):
    path = tmp_path / "c.pt"
    child = run_child(CHILD_SETUP + f"""
    model.fit(1, dl, verbose=0)
    model.save_checkpoint({str(path)!r})
    model.fit(1, dl, verbose=0)
    real = torch.save
    def torn(obj, f, *a, **kw):
        real(obj, f, *a, **kw)
        f.truncate(500); f.flush(); die()
    torch.save = torn
    model.save_checkpoint({str(path)!r})
    """)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    model = trained()
    model.load_checkpoint(path)  # whole: every check and the digest pass
    assert model.epoch == 1
    trains_normally(model)


# ------------------------------------------------------------------ interrupts
class InterruptAt(Callback):
    def __init__(self, hook, epoch=1, batch=1):
        self.hook, self.at = hook, (epoch, batch)
        setattr(self, hook, self._maybe)

    def implements(self, hook):
        return hook == self.hook

    def _maybe(self, *args):
        run = self.model.run
        epoch = run.epoch if run is not None else 0
        batch = args[0] + 1 if self.hook.endswith("batch_begin") else 1  # hooks count batches from 0
        if (epoch, batch) == self.at or self.hook == "on_train_begin":
            raise KeyboardInterrupt


@pytest.mark.parametrize("hook", ["on_train_begin", "on_epoch_begin", "on_train_batch_begin"])
def test_ctrl_c_before_the_first_step_changes_nothing(hook, tmp_path):
    model = trained()
    snap = Snapshot(model, tmp_path)
    model.fit(2, data(), callbacks=[InterruptAt(hook, epoch=2)], verbose=0)  # epoch 1 was trained()
    snap.assert_same()
    trains_normally(model)


def test_ctrl_c_inside_the_first_forward_restores_batchnorm(tmp_path):
    model = trained()
    handle = model.net[1].register_forward_hook(lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    snap = Snapshot(model, tmp_path)
    model.fit(1, data(), verbose=0)  # BatchNorm updated its statistics, then Ctrl-C
    handle.remove()
    snap.assert_same()
    trains_normally(model)


@pytest.mark.parametrize("hook", ["on_train_batch_begin", "on_test_batch_begin"])
def test_ctrl_c_in_epoch_two_keeps_epoch_one_everywhere(hook, tmp_path):
    model = trained(epochs=0)
    ckpt = ModelCheckpoint(tmp_path / "last.pt")
    log = CSVLogger(tmp_path / "log.csv")
    model.fit(3, data(), data(32, seed=1), callbacks=[InterruptAt(hook, epoch=2, batch=2), log, ckpt], verbose=0)
    assert model.epoch == 1 and list(model.history["epoch"]) == [1]
    assert len(CSVLogger.read(tmp_path / "log.csv")) == 1
    fresh = trained(seed=5)
    fresh.load_checkpoint(tmp_path / "last.pt")
    assert fresh.epoch == 1 and fresh.training_state.history == model.training_state.history
    trains_normally(model)


# -------------------------------------------------------------------------- data
def _loader_of(x, y, batch_size=8):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


X, Y = blobs(32).tensors
DATA_FAULTS = {
    "too few features": (lambda: _loader_of(X[:, :3], Y), StepError,
                         r"train step failed at epoch \d+, batch 1.*\[8, 3\]"),
    # labels are checked against the loss on the first batch (losses.check_targets), before any step
    "a label out of range": (lambda: _loader_of(X, Y + 10), TargetError, r"outside 0\.\.2"),
    "fractional float labels": (lambda: _loader_of(X, Y.float()[:, None] + 0.5), TargetError, r"not whole numbers"),
    "a quadruple per batch": (lambda: DataLoader(TensorDataset(X, Y, Y, Y), batch_size=8), StepError,
                              r"pair \(x, y\)"),
    "weights that are not one per sample": (lambda: DataLoader(TensorDataset(X, Y, X), batch_size=8), StepError,
                                            r"\(x, y, sample_weight\), Keras' layout"),
    "one tensor per batch": (lambda: DataLoader(X, batch_size=8), StepError, r"pair \(x, y\)|batch 1"),
    "an empty dataset": (lambda: _loader_of(X[:0], Y[:0]), ValueError, r"dl_train is empty"),
    "an exhausted iterator": (lambda: iter([]), ValueError, r"train loader yielded no batches"),
}


@pytest.mark.parametrize("case", sorted(DATA_FAULTS))
def test_bad_training_data_fails_before_weights_change(case, tmp_path):
    make, error, match = DATA_FAULTS[case]
    model = trained()
    attack(model, lambda: model.fit(1, make(), verbose=0), error, match, tmp_path)


def test_x_and_y_of_different_lengths():
    model = trained()
    attack(model, lambda: model.fit(1, x=X, y=Y[:10], verbose=0), ValueError, r"x has 32 rows but y has 10")


def test_bad_validation_data_is_named():
    model = trained()
    attack(model, lambda: model.fit(1, x=X, y=Y, validation_data=(X[:10], Y[:7]), verbose=0), ValueError,
           r"validation_data")


@pytest.mark.parametrize("bad", ["wrong features", "triples"])
def test_a_validation_loader_that_cannot_work_fails_before_training(bad):
    dl_val = _loader_of(X[:, :3], Y) if bad == "wrong features" else DataLoader(TensorDataset(X, Y, X), batch_size=8)
    model = trained()
    attack(model, lambda: model.fit(1, data(), dl_val, verbose=0), StepError, r"validation")


def test_a_one_shot_generator_for_two_epochs_is_explained():
    model = trained()
    gen = ((x, y) for x, y in _loader_of(X, Y))
    attack(model, lambda: model.fit(2, gen, verbose=0), (ValueError, TypeError), r"(?i)generator|re-iterable|iterator")


# ------------------------------------------------------ step limits (Keras 3's rules)
def _numbered(n_batches, batch_size=8):
    """A loader whose rows carry their index in the first feature (and valid blob features after)."""
    x, y = blobs(n_batches * batch_size).tensors
    x = x.clone()
    x[:, 0] = torch.arange(len(x), dtype=x.dtype)
    return x, y


class SeesRows(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.rows = []

    def forward(self, x):
        if self.training:
            self.rows.append(int(x[0, 0]))
        return self.lin(x)


def test_steps_per_epoch_carries_on_through_the_loader_as_keras_3():
    """steps_per_epoch=3 over a 5-batch loader: epoch 2 trains batches 4, 5 and 1 (before: 1, 2, 3 again,
    so rows 24-39 were never trained)."""
    x, y = _numbered(5)
    net = SeesRows()
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "sgd", device="cpu")
    model.fit(2, _loader_of(x, y), steps_per_epoch=3, verbose=0)
    assert net.rows == [0, 8, 16, 24, 32, 0]


def test_a_generator_that_runs_out_ends_training_after_that_epoch_as_keras_3():
    """steps_per_epoch=4 over a 5-batch generator: epoch 2 trains on the batch left, is recorded, and
    training stops with the reason (before: "the loader yielded no batches" and no epoch 2)."""
    x, y = _numbered(5)
    model = trained(epochs=0)
    with pytest.warns(RuntimeWarning, match=r"ran out of data during epoch 2.*steps_per_epoch \* epochs"):
        history = model.fit(3, ((a, b) for a, b in _loader_of(x, y)), steps_per_epoch=4, verbose=0)
    assert history["epoch"].tolist() == [1, 2] and model.global_step == 5
    trains_normally(model)
    x, y = _numbered(8)  # 8 batches, 4 an epoch: epoch 3 finds nothing at all
    model = trained(epochs=0)
    with pytest.warns(RuntimeWarning, match=r"gave 8 batch\(es\) in all, and steps_per_epoch=4"):
        history = model.fit(3, iter(list(_loader_of(x, y))), steps_per_epoch=4, verbose=0)
    assert history["epoch"].tolist() == [1, 2] and model.global_step == 8


def test_validation_steps_beyond_a_short_generator_validates_on_what_it_has():
    """validation_steps=5 over a 2-batch one-shot generator: the epoch is trained, validated on the 2
    batches and recorded, with a warning (before: a whole epoch trained, then an error and no history)."""
    model = trained(epochs=0)
    val = list(_loader_of(X[:16], Y[:16]))
    with pytest.warns(RuntimeWarning, match=r"dl_val \(a generator\) ran out after 2 of validation_steps=5"):
        history = model.fit(1, data(), iter(val), validation_steps=5, verbose=0)
    assert len(history) == 1
    assert history["val_loss"].iloc[0] == pytest.approx(model.evaluate(val)["val_loss"])


# --------------------------------------------------------------------- arguments
ARGUMENT_FAULTS = {
    "epochs a str": ({"epochs": "2"}, ValueError, r"epochs must be an int"),
    "verbose 5": ({"verbose": 5}, ValueError, r"verbose must be 0"),
    "log_step_freq 0": ({"log_step_freq": 0}, ValueError, r"log_step_freq must be an int >= 1"),
    "grad_accum_steps 0": ({"grad_accum_steps": 0}, ValueError, r"grad_accum_steps must be an int >= 1"),
    "grad_clip_norm nan": ({"grad_clip_norm": float("nan")}, ValueError, r"grad_clip_norm must be a positive finite"),
    "grad_clip_norm inf": ({"grad_clip_norm": float("inf")}, ValueError, r"grad_clip_norm must be a positive finite"),
    "grad_clip_value -1": ({"grad_clip_value": -1.0}, ValueError, r"grad_clip_value must be a positive"),
    "a single callback": ({"callbacks": EarlyStopping(monitor="loss")}, TypeError, r"Wrap it in a list"),
    "a callback class": ({"callbacks": [EarlyStopping]}, TypeError, r"pass an instance: EarlyStopping\(...\)"),
    "a callback that is not one": ({"callbacks": [print]}, TypeError, r"Callback instances; got builtin_function"),
    "a monitor typo": ({"callbacks": [EarlyStopping(monitor="val_loss")]}, ValueError,
                       r"EarlyStopping\(monitor='val_loss'\).*val_ figures exist only"),
    "the StepLR class as lr_scheduler": ({"lr_scheduler": torch.optim.lr_scheduler.StepLR}, TypeError,
                                         r"got the class StepLR; pass an instance built on model.optimizer"),
}


@pytest.mark.parametrize("case", sorted(ARGUMENT_FAULTS))
def test_a_bad_fit_argument_changes_nothing(case):
    kwargs, error, match = ARGUMENT_FAULTS[case]
    kwargs = dict(kwargs)
    epochs = kwargs.pop("epochs", 1)
    model = trained()
    attack(model, lambda: model.fit(epochs, data(), verbose=kwargs.pop("verbose", 0), **kwargs), error, match)


def test_the_optimizer_as_lr_scheduler_is_refused():
    model = trained()
    attack(model, lambda: model.fit(1, data(), verbose=0, lr_scheduler=model.optimizer), TypeError,
           r"lr_scheduler.*optimizer")


def test_a_seed_out_of_range_is_named():
    model = trained()
    attack(model, lambda: model.fit(1, x=X, y=Y, verbose=0, seed=2 ** 70), ValueError, r"seed")


def test_a_fully_frozen_net_is_explained():
    model = trained()
    for p in model.net.parameters():
        p.requires_grad_(False)
    with pytest.raises((ValueError, RuntimeError), match=r"(?i)trainable|requires_grad"):
        model.fit(1, data(), verbose=0)


# ----------------------------------------------------------------------- metrics
def test_a_metric_that_raises_is_named_and_nothing_trained():
    def broken(preds, targets):
        raise ZeroDivisionError("boom")

    model = trained()
    model.metrics = {"mine": torchfit.metrics.resolve_metrics({"mine": broken})["mine"]}
    attack(model, lambda: model.fit(1, data(), verbose=0), MetricError, r"'mine' raised ZeroDivisionError",
           repair=lambda: setattr(model, "metrics", {}))


def test_a_metric_that_cannot_take_the_outputs_is_named():
    model = trained()
    model.metrics = torchfit.metrics.resolve_metrics(["mae"])  # (N, 3) logits against (N,) labels
    attack(model, lambda: model.fit(1, data(), verbose=0), MetricError, r"'mae'.*\(16, 3\).*\(16,\)",
           repair=lambda: setattr(model, "metrics", {}))


class Largest(Metric):
    """The Metric docstring's example: state made in reset()."""

    def reset(self):
        self.top = None

    def update(self, preds, targets):
        m = preds.max()
        self.top = m if self.top is None else torch.maximum(self.top, m)

    def compute(self):
        return float("nan") if self.top is None else self.top.item()


def test_the_metric_docstring_example_trains():
    model = trained()
    model.metrics = {"largest": Largest()}
    history = model.fit(1, data(), verbose=0)
    assert "largest" in history


class ResetRaises(Largest):
    def reset(self):
        raise RuntimeError("reset failed")


class NoCopy(Largest):
    def __deepcopy__(self, memo):
        raise TypeError("cannot be copied")


@pytest.mark.parametrize("metric", [ResetRaises, NoCopy])
def test_a_metric_whose_reset_or_copy_fails_is_named(metric):
    model = trained()
    model.metrics = {"special": metric()}
    snap = Snapshot(model)
    with pytest.raises(MetricError, match=r"'special'"):
        model.fit(1, data(), verbose=0)
    snap.assert_same()


# ---------------------------------------------------------------------- torchrun
def torchrun(mode: str, out_dir, timeout: float = 180) -> subprocess.CompletedProcess:
    return conftest.torchrun(os.path.join(ROOT, "tests", "dist_scripts", "faults.py"), mode, out_dir, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_a_rank_that_dies_leaves_the_last_checkpoint_whole(mode, tmp_path):
    proc = torchrun(mode, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    if mode == "raise":
        assert "rank 1 failed on purpose" in out
    else:
        assert "SIGKILL" in out or "Signals.SIGKILL" in out or "exitcode: -9" in out, out[-3000:]
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == ["last.pt"]
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1,
                                                                                momentum=0.9), device="cpu")
    model.load_checkpoint(tmp_path / "last.pt")  # every check and the digest pass
    assert model.epoch == 1 and len(model.history) == 1
    model.fit(1, loader(blobs(64), 16), verbose=0)
    assert model.epoch == 2
