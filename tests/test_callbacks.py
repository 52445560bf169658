"""Each shipped callback's behaviour on toy data: EarlyStopping, TerminateOnNaN, CSVLogger,
TensorBoard (event files read back), LR schedules and the lr column, the progress bar."""
from __future__ import annotations

import csv
import os
import sys

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import torchfit
from torchfit.formatting import format_figure
from torchfit.callbacks import (Callback, CSVLogger, EarlyStopping, LambdaCallback, LearningRateScheduler,
                                ModelCheckpoint, ProgressBar, ReduceLROnPlateau, TensorBoard, TerminateOnNaN)
from torchfit.callbacks import progress
from torchfit.callbacks.monitor import is_improvement, resolve_mode
from conftest import Scripted, blobs, loader, mlp


def compiled(net=None, lr=0.1, **kw):
    net = net or mlp()
    return torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=lr),
                                      ["accuracy"], device="cpu", **kw)


def weights(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


# ------------------------------------------------------------ EarlyStopping
def test_early_stopping_waits_patience_epochs_and_says_why():
    said = []
    es = EarlyStopping(monitor="score", mode="min", patience=2, sink=said.append)
    model = compiled()
    h = model.fit(10, loader(blobs(16), 8), callbacks=[Scripted([5.0, 4.0, 4.5, 4.2, 1.0]), es], verbose=0)
    assert len(h) == 4 and model.epoch == 4 and es.stopped_epoch == 3
    # figures as the epoch table shows them (format_figure), counts with their noun
    assert said == ["Early stopping at epoch 4: score has not improved on 4.000 (epoch 2) by more than 0.000 "
                    "for 2 epochs (patience 2, mode min)."]


def test_early_stopping_min_delta_mode_max_and_baseline():
    es = EarlyStopping(monitor="score", mode="max", patience=1, min_delta=0.1, verbose=0)
    model = compiled()
    model.fit(10, loader(blobs(16), 8), callbacks=[Scripted([0.5, 0.55, 0.9]), es], verbose=0)
    assert model.epoch == 2  # +0.05 is within min_delta: no improvement

    said = []
    es = EarlyStopping(monitor="score", mode="min", patience=2, baseline=0.4, sink=said.append)
    model = compiled()
    # Keras' rule: an improving epoch never stops training; only beating the baseline restarts the wait
    model.fit(10, loader(blobs(16), 8), callbacks=[Scripted([0.5, 0.5, 0.6]), es], verbose=0)
    assert model.epoch == 2 and "has not beaten the baseline 0.400 in 2 epochs" in said[0]


def test_early_stopping_restores_the_best_weights_and_restarts_with_each_fit():
    snapshots = {}
    net = mlp()
    model = compiled(net)
    said = []
    es = EarlyStopping(monitor="score", mode="min", patience=2, restore_best_weights=True, sink=said.append)
    keep = LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.__setitem__(epoch + 1, weights(net)))
    model.fit(10, loader(blobs(16), 8), callbacks=[Scripted([3.0, 1.0, 2.0, 2.5]), es, keep], verbose=0)
    assert model.epoch == 4
    assert not all(torch.equal(v, snapshots[4][k]) for k, v in snapshots[2].items())
    assert all(torch.equal(v, snapshots[2][k]) for k, v in net.state_dict().items())
    assert said[-1] == "EarlyStopping restored the weights of epoch 2 (score=1.000)."
    # a new fit starts counting afresh (Keras): the old best does not carry over
    model.fit(2, loader(blobs(16), 8), callbacks=[Scripted([9.0] * 5 + [8.0]), es], verbose=0)
    assert es.best == 8.0 and es.best_epoch == 5 and model.epoch == 6


def test_mode_auto_and_improvement_rules():
    assert resolve_mode("auto", "val_accuracy") == "max"
    assert resolve_mode("auto", "val_auc") == "max" and resolve_mode("auto", "macro_f1") == "max"
    assert resolve_mode("auto", "loss") == "min" and resolve_mode("auto", "val_mae") == "min"
    assert not is_improvement(float("nan"), 1.0, "min") and is_improvement(1.0, None, "max")
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        EarlyStopping(mode="lowest")
    with pytest.raises(ValueError, match="patience must be a non-negative int"):
        EarlyStopping(patience=-1)


# ----------------------------------------------------------- TerminateOnNaN
def nan_data():
    ds = blobs(64)
    X = ds.tensors[0].clone()
    X[37, 0] = float("nan")  # sample 37 is in batch 5 (batches of 8)
    return TensorDataset(X, ds.tensors[1])


@pytest.mark.parametrize("terminate", [False, True])
def test_terminate_on_nan_stops_at_the_batch(terminate):
    seen = []
    counter = LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))
    cbs = [counter] + ([TerminateOnNaN()] if terminate else [])
    model = compiled()
    with pytest.warns(RuntimeWarning, match="Stopped training: " + ("TerminateOnNaN: the loss is nan at epoch 1, "
                                                                    "batch 5" if terminate else "non-finite loss")):
        h = model.fit(3, loader(nan_data(), 8), callbacks=cbs, verbose=0, log_step_freq=100)
    # without it fit notices only at the epoch's end (no logging point in between)
    assert seen == ([0, 1, 2, 3, 4] if terminate else list(range(8)))  # Keras' 0-based batch indices
    assert len(h) == 0 and model.epoch == 0


# ---------------------------------------------------------------- CSVLogger
def test_csv_logger_writes_each_epoch_and_mirrors_the_history(tmp_path):
    path = tmp_path / "logs" / "history.csv"
    rows_at_epoch_end = []

    def count_rows(epoch, logs):
        with open(path) as f:
            rows_at_epoch_end.append(len(f.readlines()) - 1)

    model = compiled()
    model.fit(3, loader(blobs(40), 8, shuffle=True), loader(blobs(16), 8),
              callbacks=[CSVLogger(path), LambdaCallback(on_epoch_end=count_rows)], verbose=0)
    assert rows_at_epoch_end == [1, 2, 3]  # on disk at each epoch's end
    pd.testing.assert_frame_equal(CSVLogger.read(path), model.history, check_exact=True)

    # append=False: a later fit rewrites the file with every epoch so far, once each
    model.fit(2, loader(blobs(40), 8), loader(blobs(16), 8), callbacks=[CSVLogger(path)], verbose=0)
    pd.testing.assert_frame_equal(CSVLogger.read(path), model.history, check_exact=True)
    assert list(pd.read_csv(path)["epoch"]) == [1, 2, 3, 4, 5]


def test_csv_logger_append_and_a_widening_header(tmp_path):
    path = tmp_path / "h.csv"
    model = compiled()
    model.fit(1, loader(blobs(40), 8), callbacks=[CSVLogger(path, append=True)], verbose=0)
    model.fit(1, loader(blobs(40), 8), loader(blobs(16), 8), callbacks=[CSVLogger(path, append=True)], verbose=0)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]  # widened once, not repeated
    assert [r[0] for r in rows[1:]] == ["1", "2"] and rows[1][3] == "" and rows[2][3] != ""
    model.fit(1, loader(blobs(40), 8), loader(blobs(16), 8), callbacks=[CSVLogger(path, append=True)], verbose=0)
    assert list(pd.read_csv(path)["epoch"]) == [1, 2, 3]
    assert float(CSVLogger.read(path)["val_loss"].iloc[-1]) == model.history["val_loss"].iloc[-1]


def test_csv_logger_read_gives_the_figures_back_exactly_on_any_pandas(tmp_path):
    # figures pandas' default parser before 3.1 reads one ulp off (seen with 1.5.3, 2.3.3, 3.0.6)
    rows = [{"epoch": 1, "loss": 1.0590504288673401, "lr": 0.009000000000000001},
            {"epoch": 2, "loss": float("inf"), "lr": 0.006561000000000002, "val_loss": 0.30000000000000004}]
    model = compiled()
    model.training_state.history = rows
    path = tmp_path / "h.csv"
    logger = CSVLogger(path)
    logger.set_model(model)
    logger.on_train_begin({})
    back = CSVLogger.read(path)
    pd.testing.assert_frame_equal(back, model.history, check_exact=True)
    assert back["epoch"].dtype == "int64" and back["val_loss"].isna().tolist() == [True, False]
    assert list(back["lr"]) == [0.009000000000000001, 0.006561000000000002]
    open(path, "w").close()
    assert CSVLogger.read(path).empty  # no epoch finished yet


# -------------------------------------------------------------- TensorBoard
def test_tensorboard_writes_event_files_tensorboard_reads_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = compiled()
    sched = torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=1, gamma=0.5)
    h = model.fit(2, loader(blobs(48), 8), loader(blobs(16), 8), lr_scheduler=sched, log_step_freq=3,
                  callbacks=[TensorBoard(tmp_path / "tb", log_steps=True)], verbose=0)
    train = EventAccumulator(str(tmp_path / "tb" / "train")).Reload()
    val = EventAccumulator(str(tmp_path / "tb" / "validation")).Reload()
    assert set(train.Tags()["scalars"]) == {"epoch_loss", "epoch_accuracy", "epoch_lr", "batch_loss",
                                            "batch_accuracy"}
    assert set(val.Tags()["scalars"]) == {"epoch_loss", "epoch_accuracy"}
    for acc, prefix in ((train, ""), (val, "val_")):
        for name in ("loss", "accuracy"):
            events = acc.Scalars("epoch_" + name)
            assert [e.step for e in events] == [1, 2]
            assert [e.value for e in events] == pytest.approx(list(h[prefix + name]), rel=1e-6)
    assert [e.value for e in train.Scalars("epoch_lr")] == pytest.approx([0.1, 0.05])  # float32 in the file
    # per-step figures at the logging points (steps 3 and 6 of each 6-step epoch), x = global step
    assert [e.step for e in train.Scalars("batch_loss")] == [3, 6, 9, 12]
    assert train.Scalars("batch_loss")[1].value == pytest.approx(h["loss"].iloc[0], rel=1e-6)


# ------------------------------------------------------------ LR schedules
def test_lr_scheduler_shortcut_steps_per_epoch_and_fills_the_lr_column():
    model = compiled()
    sched = torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=1, gamma=0.5)
    h = model.fit(3, loader(blobs(16), 8), loader(blobs(16), 8), lr_scheduler=sched, verbose=0)
    assert list(h.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    assert list(h["lr"]) == [0.1, 0.05, 0.025]  # the rate each epoch trained with
    assert model.optimizer.param_groups[0]["lr"] == 0.0125
    # without a scheduler the columns are exactly the core's
    h2 = compiled().fit(1, loader(blobs(16), 8), loader(blobs(16), 8), verbose=0)
    assert list(h2.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]


def test_step_interval_steps_once_per_optimizer_step():
    model = compiled()
    sched = torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=1, gamma=0.9)
    lrs = []
    record = LambdaCallback(on_backward_end=lambda batch: lrs.append(model.optimizer.param_groups[0]["lr"]))
    # 5 batches per epoch, windows of 2: 3 optimizer steps per epoch
    model.fit(2, loader(blobs(40), 8), grad_accum_steps=2, verbose=0,
              callbacks=[record, LearningRateScheduler(sched, interval="step")])
    assert model.global_step == 6 and sched.last_epoch == 6
    assert lrs == pytest.approx([0.1 * 0.9 ** i for i in range(6)])


def test_reduce_lr_on_plateau_follows_its_monitor():
    said = []
    model = compiled()
    rl = ReduceLROnPlateau(monitor="score", factor=0.5, patience=1, verbose=1, sink=said.append)
    h = model.fit(5, loader(blobs(16), 8), callbacks=[Scripted([1.0, 1.0, 1.0, 0.5, 0.5]), rl], verbose=0)
    # Keras' rule: the wait reaches patience=1 at the first epoch without improvement (torch waits one more)
    assert list(h["lr"]) == [0.1, 0.1, 0.05, 0.025, 0.025]
    assert said == [f"Epoch {e}: ReduceLROnPlateau reduced the learning rate to {lr} (score has not improved)."
                    for e, lr in ((2, 0.05), (3, 0.025), (5, 0.0125))]


def test_torch_plateau_scheduler_through_the_shortcut_watches_val_loss():
    model = compiled()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(model.optimizer, factor=0.5, patience=0)
    h = model.fit(3, loader(blobs(16), 8), loader(blobs(16), 8), lr_scheduler=sched, verbose=0)
    assert "lr" in h.columns and sched.last_epoch == 3
    assert sched.best == min(h["val_loss"]) and sched.best != min(h["loss"])


def test_scheduler_errors_are_clear_and_early():
    model = compiled()
    other = torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="built on another optimizer"):
        model.fit(1, loader(blobs(16), 8), lr_scheduler=torch.optim.lr_scheduler.StepLR(other, 1), verbose=0)
    assert model.global_step == 0
    with pytest.raises(ValueError, match="pass monitor="):
        LearningRateScheduler(torch.optim.lr_scheduler.ReduceLROnPlateau(model.optimizer))
    with pytest.raises(ValueError, match="interval must be 'epoch' or 'step'"):
        LearningRateScheduler(torch.optim.lr_scheduler.StepLR(model.optimizer, 1), interval="batch")
    with pytest.raises(TypeError, match="is a callback: pass it in callbacks"):
        model.fit(1, loader(blobs(16), 8), lr_scheduler=EarlyStopping(), verbose=0)


def test_lr_columns_for_several_parameter_groups():
    net = mlp()
    opt = torch.optim.SGD([{"params": net[0].parameters()}, {"params": net[3].parameters(), "lr": 0.01}], lr=0.1)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), opt, device="cpu")
    h = model.fit(2, loader(blobs(16), 8), lr_scheduler=torch.optim.lr_scheduler.StepLR(opt, 1, 0.1), verbose=0)
    assert list(h.columns) == ["epoch", "loss", "lr", "lr_1"]
    assert list(h["lr_1"]) == pytest.approx([0.01, 0.001])


# ------------------------------------------------------------- progress bar
class FakeBar:
    made = []

    def __init__(self, **kw):
        self.kw, self.updates, self.postfixes = kw, 0, []
        FakeBar.made.append(self)

    def update(self, n):
        self.updates += n

    def set_postfix(self, figures, refresh=True):
        self.postfixes.append(dict(figures))

    def close(self):
        print("BAR CLOSED")


def test_progress_bar_replaces_step_dicts_and_sets_figures_only_at_logging_points(monkeypatch, capsys):
    FakeBar.made = []
    monkeypatch.setattr(progress, "make_bar", FakeBar)
    monkeypatch.setattr(progress, "output_is_interactive", lambda stream=None: True)  # "a terminal"
    model = compiled()
    model.fit(2, loader(blobs(40), 8), loader(blobs(16), 8), log_step_freq=2, verbose=1)
    out = capsys.readouterr().out
    assert [b.kw["desc"] for b in FakeBar.made] == ["Epoch 1/2", "Epoch 2/2"]
    assert all(b.kw["total"] == 5 and b.updates == 5 for b in FakeBar.made)
    assert [list(p) for p in FakeBar.made[0].postfixes] == [["loss", "accuracy"]] * 2  # steps 2 and 4 only
    assert "{'step'" not in out  # the bar replaces the step dicts
    assert out.count("| epoch |") == 2 and "Start Training" not in out  # the printer as with verbose=2
    # each bar is closed before its epoch's table prints
    first_close, first_table = out.index("BAR CLOSED"), out.index("| epoch |")
    assert first_close < first_table < out.index("BAR CLOSED", first_table)


def test_no_bar_when_output_is_not_interactive_or_not_verbose_1(monkeypatch, capsys):
    assert not progress.output_is_interactive()  # pytest captures stdout: not a terminal
    assert progress.wants_bar(None, 1) is False
    monkeypatch.setattr(progress, "output_is_interactive", lambda stream=None: True)
    assert progress.wants_bar(None, 1) and not progress.wants_bar(None, 2) and not progress.wants_bar(None, 0)
    assert progress.wants_bar(False, 1) is False
    with pytest.raises(ValueError, match="progress_bar=True needs verbose=1"):
        compiled().fit(1, loader(blobs(16), 8), verbose=2, progress_bar=True)

    class Tty:
        def isatty(self):
            return True

    class KernelStream:  # what ipykernel installs as sys.stdout
        pass

    KernelStream.__module__ = "ipykernel.iostream"
    assert progress.output_is_interactive(Tty()) and progress.output_is_interactive(KernelStream())


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX pseudo-terminals")
def test_a_terminal_needs_a_size_to_count_as_interactive():
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()  # a fresh pseudo-terminal has no size (0 x 0), like `script`'s
    with os.fdopen(slave, "w") as stream:
        try:
            assert stream.isatty() and not progress.output_is_interactive(stream)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
            assert progress.output_is_interactive(stream)
        finally:
            os.close(master)


def test_real_tqdm_bar_end_to_end(capsys):
    model = compiled()
    model.fit(1, loader(blobs(40), 8), verbose=1, progress_bar=True, log_step_freq=5)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "5/5" in out and "loss=" in out
    assert "{'step'" not in out and "| epoch |" in out


def test_bar_redraws_are_rate_limited_not_per_step_and_show_the_last_figures():
    import io

    def draws(mininterval):
        out = io.StringIO()
        model = compiled()
        # log every step: the figures change each step, the bar still redraws only as tqdm allows
        model.fit(1, loader(blobs(200), 8), verbose=1, log_step_freq=1,
                  callbacks=[ProgressBar(file=out, mininterval=mininterval)])
        frames = [f for f in out.getvalue().split("\r") if "Epoch 1/1" in f]
        return frames, model

    frames, model = draws(0.0)  # no rate limit: a redraw per step, so the count below can fail
    assert len(frames) >= 25
    frames, model = draws(1e9)
    assert len(frames) <= 3  # opened, closed (and tqdm's own first draw)
    last = frames[-1]
    assert "25/25" in last and f"loss={format_figure(model.step_history['loss'].iloc[-1])}" in last


def test_a_progress_bar_passed_in_callbacks_is_the_only_bar(monkeypatch, capsys):
    FakeBar.made = []
    monkeypatch.setattr(progress, "make_bar", FakeBar)
    monkeypatch.setattr(progress, "output_is_interactive", lambda stream=None: True)
    compiled().fit(2, loader(blobs(40), 8), verbose=1, callbacks=[ProgressBar(mininterval=0.5)])
    out = capsys.readouterr().out
    assert len(FakeBar.made) == 2 and all(b.kw["mininterval"] == 0.5 for b in FakeBar.made)
    assert "{'step'" not in out and out.count("| epoch |") == 2


# -------------------------------------------------------------- host syncs
from test_syncs import sync_log  # noqa: E402,F401  (the fixture that records tensor->host reads)


def test_shipped_callbacks_add_no_per_step_host_sync(sync_log, tmp_path, monkeypatch):
    FakeBar.made = []
    monkeypatch.setattr(progress, "make_bar", FakeBar)
    model = compiled()
    sync_log.model = model
    sched = torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=3, gamma=0.9)
    cbs = [EarlyStopping(patience=5, restore_best_weights=True, verbose=0),
           ModelCheckpoint(tmp_path / "c.pt", save_best_only=True, save_last=True),
           CSVLogger(tmp_path / "h.csv"), TensorBoard(tmp_path / "tb", log_steps=True),
           LearningRateScheduler(sched, interval="step"), ReduceLROnPlateau(patience=1)]
    model.fit(2, loader(blobs(200), 8, shuffle=True), loader(blobs(30), 8), log_step_freq=10,
              callbacks=cbs, verbose=1, progress_bar=True)
    assert sync_log, "the recorder saw nothing: the test would not catch a sync"
    batches = {(epoch, batch) for _, epoch, batch, _ in sync_log}
    # logging points (10, 20), the training epoch end (25), the validation end (4), the preflight (1, 1)
    allowed = {(e, b) for e in (1, 2) for b in (10, 20, 25, 4)} | {(1, 1), (0, 0)}  # (0, 0): dl_val's check
    assert batches <= allowed, sorted(batches - allowed)


def test_early_stopping_prints_figures_as_the_table_does():
    # 0.00806672 was printed with 6 significant digits; the table shows 0.008
    said = []
    es = EarlyStopping(monitor="score", patience=1, restore_best_weights=True, sink=said.append)
    model = compiled()
    model.fit(10, loader(blobs(16), 8), callbacks=[Scripted([0.00806672, 0.009, 0.0004123]), es], verbose=0)
    assert said == ["Early stopping at epoch 2: score has not improved on 0.008 (epoch 1) by more than 0.000 "
                    "for 1 epoch (patience 1, mode min).",
                    "EarlyStopping restored the weights of epoch 1 (score=0.008)."]
