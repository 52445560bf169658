"""OptunaPruning: reports to a real optuna trial, stops pruned trials cleanly, the history says why."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import torchfit
from torchfit.callbacks import CSVLogger, OptunaPruning
from torchfit.testing import data

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def fit(trial, epochs=4, lr=0.05, hidden=16, **kw):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr), ["accuracy"],
                                        device="cpu")
    ds = data.classification(96)
    callbacks = kw.pop("callbacks", [])
    pruning = OptunaPruning(trial, **kw)
    model.fit(epochs, DataLoader(ds, 32, shuffle=True), DataLoader(ds, 96), callbacks=[pruning, *callbacks],
              verbose=0)
    return model, pruning


def test_a_pruned_trial_stops_after_its_epoch_the_history_says_why_and_the_study_records_it(tmp_path):
    models, lines = [], []

    def objective(trial):
        torch.manual_seed(0)
        net = nn.Linear(4, 3)
        model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "sgd", device="cpu")
        models.append(model)
        ds = data.classification(64)
        model.fit(5, DataLoader(ds, 32), DataLoader(ds, 64), verbose=0,
                  callbacks=[OptunaPruning(trial, verbose=True, sink=lines.append), CSVLogger(str(tmp_path / "log.csv"))])
        return model.history["val_loss"].iloc[-1]

    # prunes from epoch 2 on whenever val_loss is above 0 (always): a deterministic pruner
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=2))
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    model = models[0]
    history = model.history
    assert list(history["epoch"]) == [1, 2] and model.epoch == 2
    assert trial.intermediate_values == {1: history["val_loss"][0], 2: history["val_loss"][1]}
    assert history["pruned"].isna()[0]
    reason = history["pruned"][1]
    assert reason.startswith("Optuna pruned trial 0 at epoch 2: val_loss=") and lines == [reason + "."]
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 3  # the logger saw both epochs and closed


def test_an_unpruned_trial_reports_every_epoch_and_returns():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=100.0))
    trial = study.ask()
    model, pruning = fit(trial, epochs=3)
    assert not pruning.pruned and "pruned" not in model.history.columns
    assert sorted(trial.storage.get_trial(trial._trial_id).intermediate_values) == [1, 2, 3]


def test_raise_pruned_false_returns_and_leaves_the_decision_to_the_caller():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    model, pruning = fit(study.ask(), epochs=4, raise_pruned=False, monitor="val_accuracy", verbose=False)
    assert pruning.pruned and pruning.pruned_epoch == 1 and len(model.history) == 1
    assert "val_accuracy=" in pruning.reason


def test_a_monitor_the_run_never_logs_fails_before_training():
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(ValueError, match="val_los"):
        fit(trial, monitor="val_los")
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {}
    with pytest.raises(TypeError, match="the optuna trial your objective receives"):
        OptunaPruning(study)


@pytest.mark.slow  # a real study: 8 short trials
def test_a_study_tunes_lr_and_width_with_median_pruning():
    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        hidden = trial.suggest_int("hidden", 4, 32, log=True)
        model, _ = fit(trial, epochs=6, lr=lr, hidden=hidden)
        return model.history["val_loss"].min()

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    study.optimize(objective, n_trials=8)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 2
    assert optuna.trial.TrialState.PRUNED in states
    assert study.best_value < 0.5 and set(study.best_params) == {"lr", "hidden"}
