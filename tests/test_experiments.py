"""torchfit.cross_validate: k folds equal k hand-written fits; stratified, grouped, any data; summary and plot."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import StratifiedKFold
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import torchfit
from torchfit.experiments import fold_indices
from torchfit.testing import data


def make_net():
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))


def build():
    net = make_net()
    return torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1),
                                       ["accuracy"], device="cpu")


def test_cross_validate_equals_k_hand_written_loops_on_the_same_folds():
    ds = data.classification(90)
    x, y = ds.tensors
    state = torch.get_rng_state()
    cv = torchfit.cross_validate(build, ds, folds=3, epochs=3, batch_size=16, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left alone
    splits = list(StratifiedKFold(3, shuffle=True, random_state=5).split(np.zeros((90, 1)), y.numpy()))
    assert len(cv.folds) == 3
    for fold, (train_rows, val_rows) in enumerate(splits):
        assert np.array_equal(cv.folds[fold][0], train_rows) and np.array_equal(cv.folds[fold][1], val_rows)
        # the loop a user writes by hand, as the module docstring describes one fold
        torch.manual_seed(5 + fold)
        net = make_net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        tr, va = TensorDataset(x[train_rows], y[train_rows]), TensorDataset(x[val_rows], y[val_rows])
        dl = DataLoader(tr, 16, shuffle=True, generator=torch.Generator().manual_seed(5 + fold))
        rows = []
        for epoch in range(1, 4):
            net.train()
            total, seen = 0.0, 0
            for xb, yb in dl:
                opt.zero_grad()
                loss = nn.functional.cross_entropy(net(xb), yb)
                loss.backward()
                opt.step()
                total, seen = total + loss.item() * len(yb), seen + len(yb)
            net.eval()
            val_total, hits = 0.0, 0
            with torch.no_grad():
                for xb, yb in DataLoader(va, 16):  # iterating a DataLoader draws its base seed from torch's RNG
                    logits = net(xb)
                    val_total += nn.functional.cross_entropy(logits, yb).item() * len(yb)
                    hits += int((logits.argmax(1) == yb).sum())
            rows.append({"loss": total / seen, "val_loss": val_total / len(va), "val_accuracy": hits / len(va)})
        trained = cv.models[fold].net.state_dict()
        for key, value in net.state_dict().items():
            assert torch.equal(value, trained[key]), (fold, key)
        mine = cv.history[cv.history["fold"] == fold + 1]
        assert list(mine["epoch"]) == [1, 2, 3]
        expected = pd.DataFrame(rows)
        for column in expected:
            np.testing.assert_allclose(mine[column].to_numpy(), expected[column].to_numpy(), rtol=1e-5,
                                       err_msg=f"fold {fold + 1} {column}")


def test_history_per_fold_and_summary():
    cv = torchfit.cross_validate(build, data.classification(60), folds=3, epochs=4)
    assert list(cv.history.columns) == ["fold", "epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert list(cv.history["fold"]) == [1] * 4 + [2] * 4 + [3] * 4
    for fold in (1, 2, 3):
        mine = cv.history[cv.history["fold"] == fold]
        best = mine.loc[mine["val_loss"].idxmin()]
        row = cv.per_fold[cv.per_fold["fold"] == fold].iloc[0]
        assert row["epoch"] == best["epoch"] and row["val_accuracy"] == best["val_accuracy"]
    assert list(cv.summary.index) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    figures = cv.per_fold["val_accuracy"]
    assert cv.summary.loc["val_accuracy", "mean"] == pytest.approx(figures.mean())
    assert cv.summary.loc["val_accuracy", "std"] == pytest.approx(figures.std(ddof=1))
    assert cv.summary.loc["val_accuracy", "max"] == figures.max()
    assert "3 folds, figures at the best epoch by val_loss" in repr(cv)
    last = torchfit.cross_validate(build, data.classification(60), folds=3, epochs=4, summary_at="last")
    assert list(last.per_fold["epoch"]) == [4, 4, 4]
    by_acc = torchfit.cross_validate(build, data.classification(60), folds=3, epochs=4, monitor="val_accuracy")
    for fold in (1, 2, 3):
        mine = by_acc.history[by_acc.history["fold"] == fold]
        assert by_acc.per_fold.loc[fold - 1, "val_accuracy"] == mine["val_accuracy"].max()  # "max" for accuracy


def test_folds_are_stratified_for_classes_and_plain_for_regression():
    y = np.array([0] * 40 + [1] * 20)
    for train, val in fold_indices(60, 4, labels=y):
        assert np.bincount(y[val]).tolist() == [10, 5]
        assert len(set(train) | set(val)) == 60 and not set(train) & set(val)
    counts = [np.bincount(y[val], minlength=2).tolist() for _, val in fold_indices(60, 4, labels=y, stratify=False)]
    assert counts != [[10, 5]] * 4  # a plain shuffle does not keep the proportions
    with pytest.raises(ValueError, match="smallest class has 2"):
        fold_indices(10, 3, labels=np.array([0] * 8 + [1] * 2))
    with pytest.raises(ValueError, match="stratify=True needs class labels"):
        fold_indices(10, 2, labels=np.linspace(0, 1, 10) + 0.5, stratify=True)


def test_groups_never_straddle_train_and_validation():
    ds = data.classification(60)
    groups = np.arange(60) // 6  # 10 patients of 6 rows
    cv = torchfit.cross_validate(build, ds, folds=5, groups=groups, epochs=1)
    for train, val in cv.folds:
        assert not set(groups[train]) & set(groups[val])
    assert sorted(np.concatenate([val for _, val in cv.folds]).tolist()) == list(range(60))


class Rows(Dataset):
    """A map-style Dataset that is not a TensorDataset (cross_validate takes Subsets of it)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return x, int(y)


def test_arrays_datasets_and_regression_all_work_and_agree():
    ds = data.classification(45)
    x, y = ds.tensors
    a = torchfit.cross_validate(build, ds, folds=3, epochs=2)
    b = torchfit.cross_validate(build, (x.numpy(), y.numpy()), folds=3, epochs=2)
    c = torchfit.cross_validate(build, Rows(ds), folds=3, epochs=2, fast_path=False)
    pd.testing.assert_frame_equal(a.history, b.history)
    pd.testing.assert_frame_equal(a.history, c.history)

    def regressor():
        net = nn.Linear(4, 1)
        return torchfit.Model(net).compile(nn.MSELoss(), "adam", ["mae"], device="cpu")

    reg = torchfit.cross_validate(regressor, data.regression(40), folds=4, epochs=2, summary_at="last")
    assert list(reg.summary.index) == ["loss", "mae", "val_loss", "val_mae"]
    assert sorted(np.concatenate([val for _, val in reg.folds]).tolist()) == list(range(40))


def test_bad_arguments_fail_before_any_training():
    calls = []

    def counting():
        calls.append(1)
        return build()

    ds = data.classification(30)
    with pytest.raises(TypeError, match=r"build\(\) must return a new compiled torchfit.Model \(fold 1\)"):
        torchfit.cross_validate(lambda: make_net(), ds, folds=3)
    with pytest.raises(ValueError, match="folds=40 is more than the 30 rows"):
        torchfit.cross_validate(counting, ds, folds=40)
    with pytest.raises(TypeError, match="does not take dl_val="):
        torchfit.cross_validate(counting, ds, folds=3, dl_val=ds)
    with pytest.raises(ValueError, match="summary_at must be 'best'"):
        torchfit.cross_validate(counting, ds, summary_at="first")
    assert len(calls) == 1  # only the folds check ran a build (to read its loss), no fit
    built = []

    def remembered():
        built.append(build())
        return built[-1]

    with pytest.raises(ValueError, match=r"cross_validate\(monitor='val_f1'\): this fit's epoch logs will not have"):
        torchfit.cross_validate(remembered, ds, folds=2, epochs=1, monitor="val_f1")
    assert len(built) == 1 and built[0].epoch == 0 and built[0].history.empty  # failed before fold 1 trained


def test_plot_draws_each_fold_their_mean_and_a_band():
    pytest.importorskip("matplotlib")
    cv = torchfit.cross_validate(build, data.classification(60), folds=3, epochs=3)
    fig = cv.plot()
    loss_ax, acc_ax = fig.axes[:2]
    assert loss_ax.get_title() == "loss" and acc_ax.get_title() == "accuracy"
    lines = loss_ax.get_lines()
    assert len(lines) == 8  # 3 folds + their mean, for train and for validation
    means = [line for line in lines if line.get_label().endswith("(mean of 3 folds)")]
    table = cv.history.pivot_table(index="epoch", columns="fold", values="val_loss")
    np.testing.assert_allclose(means[1].get_ydata(), table.mean(axis=1).to_numpy())
    assert len(loss_ax.collections) == 2  # a band each
    assert {t.get_text() for t in loss_ax.get_legend().get_texts()} == {"train (mean of 3 folds)",
                                                                       "validation (mean of 3 folds)"}
    assert torchfit.plot.quantities(cv.history) == ["loss", "accuracy"]  # fold is not a quantity


def test_a_dataframe_with_target_a_splitter_and_explicit_folds():
    from sklearn.model_selection import KFold

    x, y = data.classification(40).tensors
    df = pd.DataFrame(x.numpy(), columns=list("abcd")).assign(label=y.numpy())
    by_frame = torchfit.cross_validate(build, df, target="label", folds=KFold(4), epochs=1)
    assert [val.tolist() for _, val in by_frame.folds] == [list(range(i, i + 10)) for i in (0, 10, 20, 30)]
    explicit = torchfit.cross_validate(build, (x, y), folds=by_frame.folds, epochs=1)
    pd.testing.assert_frame_equal(by_frame.history, explicit.history)
    with pytest.raises(ValueError, match=r"fold 1 names rows outside \[0, 39\]"):
        fold_indices(40, [(np.arange(10), np.arange(10, 20)), (np.arange(30), np.array([40]))])
    with pytest.raises(TypeError, match="folds must be a number of folds, a scikit-learn splitter"):
        fold_indices(40, "five")


@pytest.mark.slow  # worker processes
def test_folds_in_worker_processes_equal_folds_one_after_another():
    ds = data.classification(60)
    one = torchfit.cross_validate(build, ds, folds=3, epochs=2, seed=3)
    state = torch.get_rng_state()
    many = torchfit.cross_validate(build, ds, folds=3, epochs=2, seed=3, n_jobs=2)
    assert torch.equal(torch.get_rng_state(), state)
    pd.testing.assert_frame_equal(one.history, many.history)
    pd.testing.assert_frame_equal(one.summary, many.summary)
    for a, b in zip(one.models, many.models):
        for key, value in a.net.state_dict().items():
            assert torch.equal(value, b.net.state_dict()[key]), key
        # the whole model came back: its optimizer still steps the net's own parameters
        assert b.epoch == 2 and b.optimizer.param_groups[0]["params"][0] is next(b.net.parameters())
        assert b.predict(ds.tensors[0][:4]).shape == (4, 3)


@pytest.mark.slow  # worker processes
def test_a_failing_fold_in_a_worker_names_the_fold_and_its_error():
    calls = []

    def counted():
        calls.append(1)
        return build()

    def breaks_in_fold_2():
        model = build()
        if torch.initial_seed() == 1:  # fold 2 (0-based 1) builds under seed + 1
            model.net[0].weight.data = model.net[0].weight.data[:, :3]  # a wrong shape: its fit fails
        return model

    with pytest.raises(torchfit.experiments.FoldError, match=r"fold 2 failed in its worker process: StepError"):
        torchfit.cross_validate(breaks_in_fold_2, data.classification(30), folds=3, epochs=1, n_jobs=2)
    with pytest.raises(ValueError, match="n_jobs must be an int >= 1"):
        torchfit.cross_validate(counted, data.classification(30), folds=3, n_jobs=0)
    assert calls == []  # checked before anything was built
