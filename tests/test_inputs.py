"""Keras-style inputs: arrays, tensors, Datasets and DataFrames in fit / evaluate / predict."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import torchfit
from torchfit.inputs import fit_loaders, split_indices
from conftest import assert_same_weights, blobs, loader, mlp


def arrays(n=120, seed=0):
    X, y = blobs(n, seed=seed).tensors
    return X.numpy().astype(np.float64), y.numpy()  # what sklearn hands out: float64 and int64


def compiled(net=None, loss=None, metrics=("accuracy",), opt="sgd"):
    net = net if net is not None else mlp()
    return torchfit.Model(net).compile(loss or nn.CrossEntropyLoss(), opt, list(metrics), device="cpu")


def frame(n=120):
    X, y = arrays(n)
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    df["label"] = y
    return df


# ------------------------------------------------------------------ the split
def test_split_indices_is_seeded_disjoint_and_covers_every_row():
    train, val = split_indices(103, 0.2, seed=7)
    assert len(val) == 20 and len(train) == 83  # int(103 * 0.2), rounded down as in Keras
    assert sorted(torch.cat([train, val]).tolist()) == list(range(103))
    assert val.tolist() == sorted(val.tolist())
    expected = torch.randperm(103, generator=torch.Generator().manual_seed(7))[:20].sort().values
    assert torch.equal(val, expected)  # the documented recipe
    assert torch.equal(split_indices(103, 0.2, seed=7)[1], val)
    assert not torch.equal(split_indices(103, 0.2, seed=8)[1], val)
    for bad in (0, 1, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="validation_split must be a fraction"):
            split_indices(10, bad)
    with pytest.raises(ValueError, match="leaves no validation rows"):
        split_indices(4, 0.2)


def test_validation_split_validates_on_exactly_the_documented_rows():
    X, y = arrays()
    model = compiled()
    h = model.fit(1, x=X, y=y, validation_split=0.25, seed=3, verbose=0)
    _, val_rows = split_indices(len(X), 0.25, seed=3)
    res = model.evaluate(x=X[val_rows.numpy()], y=y[val_rows.numpy()])
    assert h.loc[0, "val_loss"] == pytest.approx(res["val_loss"], abs=1e-12)
    assert h.loc[0, "val_accuracy"] == pytest.approx(res["val_accuracy"], abs=1e-12)
    # and trains on the other rows only: the same weights as a hand-built loader over them
    train_rows, _ = split_indices(len(X), 0.25, seed=3)
    ds = TensorDataset(torch.tensor(X[train_rows.numpy()], dtype=torch.float32), torch.tensor(y[train_rows.numpy()]))
    by_hand = compiled()
    by_hand.fit(1, DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(3)), verbose=0)
    assert_same_weights(model.net, by_hand.net)


# ------------------------------------------------------------------ arrays and tensors
def test_arrays_train_exactly_like_the_equivalent_dataloader():
    X, y = arrays()
    model = compiled()
    h = model.fit(2, x=X, y=y, batch_size=16, seed=5, verbose=0)
    ds = TensorDataset(torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.long))
    by_hand = compiled()
    h2 = by_hand.fit(2, DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(5)),
                     verbose=0)
    assert_same_weights(model.net, by_hand.net)
    pd.testing.assert_frame_equal(h, h2)


def test_runs_are_reproducible_and_the_seed_matters():
    X, y = arrays()
    a, b, c = compiled(), compiled(), compiled()
    for m, seed in ((a, 1), (b, 1), (c, 2)):
        m.fit(1, x=torch.tensor(X, dtype=torch.float32), y=torch.tensor(y), seed=seed, verbose=0)
    assert_same_weights(a.net, b.net)
    assert any(not torch.equal(p, q) for p, q in zip(a.net.parameters(), c.net.parameters()))


def test_built_loaders_are_dataloaders_over_tensordatasets():
    X, y = arrays()
    train, val = fit_loaders(None, None, x=X, y=y, validation_split=0.2, batch_size=8)
    assert isinstance(train, DataLoader) and isinstance(train.dataset, TensorDataset)
    assert isinstance(val, DataLoader) and isinstance(val.dataset, TensorDataset)
    assert train.batch_size == 8 and len(train.dataset) == 96 and len(val.dataset) == 24
    xb, yb = train.dataset.tensors
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    # a later fit call (epoch > 0) shuffles in a fresh order; the same call repeats its order
    first = lambda dl: next(iter(dl))[1].tolist()  # noqa: E731
    assert first(fit_loaders(None, None, x=X, y=y)[0]) == first(fit_loaders(None, None, x=X, y=y)[0])
    assert first(fit_loaders(None, None, x=X, y=y, epoch=3)[0]) != first(fit_loaders(None, None, x=X, y=y)[0])
    unshuffled = fit_loaders(None, None, x=X, y=y, shuffle=False)[0]
    assert first(unshuffled) == y[:32].tolist()


def test_validation_data_as_arrays_and_predict_evaluate_accept_arrays():
    X, y = arrays()
    Xv, yv = arrays(40, seed=1)
    model = compiled()
    h = model.fit(1, x=X, y=y, validation_data=(Xv, yv), verbose=0)
    res = model.evaluate(x=Xv, y=yv)
    assert h.loc[0, "val_loss"] == pytest.approx(res["val_loss"], abs=1e-12)
    assert res == model.evaluate(loader(TensorDataset(torch.tensor(Xv, dtype=torch.float32), torch.tensor(yv)), 32))
    other_batches = model.evaluate(x=Xv, y=yv, batch_size=7)  # exact up to float32 summation order
    assert other_batches["val_loss"] == pytest.approx(res["val_loss"], rel=1e-6)
    assert other_batches["val_accuracy"] == res["val_accuracy"]
    expected = model.predict(loader(TensorDataset(torch.tensor(Xv, dtype=torch.float32)), 32))
    assert torch.equal(model.predict(Xv), expected)
    torch.testing.assert_close(model.predict(x=torch.tensor(Xv, dtype=torch.float32), batch_size=3), expected)


def test_a_dataset_is_batched_and_shuffled_like_arrays():
    X, y = arrays()
    ds = TensorDataset(torch.tensor(X, dtype=torch.float32), torch.tensor(y))
    a, b = compiled(), compiled()
    a.fit(1, ds, batch_size=10, seed=4, verbose=0)
    b.fit(1, x=X, y=y, batch_size=10, seed=4, verbose=0)
    assert_same_weights(a.net, b.net)
    assert a.evaluate(ds) == b.evaluate(x=X, y=y)
    # a non-tensor dataset is split with a Subset of the documented rows
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]

    train, val = fit_loaders(Pairs(), None, validation_split=0.5, seed=1)
    assert isinstance(val.dataset, Subset) and val.dataset.indices == split_indices(len(ds), 0.5, 1)[1].tolist()


# ------------------------------------------------------------------ DataFrames
def test_dataframe_with_target_column():
    df = frame()
    model = compiled()
    h = model.fit(2, df, target="label", validation_split=0.2, verbose=0)
    by_arrays = compiled()
    h2 = by_arrays.fit(2, x=df[["a", "b", "c", "d"]].to_numpy(), y=df["label"].to_numpy(), validation_split=0.2,
                       verbose=0)
    pd.testing.assert_frame_equal(h, h2)
    assert model.evaluate(df, target="label") == by_arrays.evaluate(x=df.drop(columns="label").to_numpy(),
                                                                    y=df["label"].to_numpy())
    # predict drops the target column when it is there, and takes feature-only frames too
    assert torch.equal(model.predict(df, target="label"), model.predict(df.drop(columns="label")))
    # validation_data as a frame uses the same target
    h3 = compiled().fit(1, df, target="label", validation_data=frame(40), verbose=0)
    assert "val_loss" in h3


def test_target_list_gives_a_column_and_bce_gets_float_targets():
    df = frame()
    df["label"] = (df["label"] == 1).astype(int)  # binary, int64 as sklearn gives it
    train, _ = fit_loaders(df, None, target=["label"], loss_fn=nn.BCELoss())
    y = train.dataset.tensors[1]
    assert y.shape == (120, 1) and y.dtype == torch.float32
    train, _ = fit_loaders(df, None, target="label")
    assert train.dataset.tensors[1].shape == (120,) and train.dataset.tensors[1].dtype == torch.int64
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
    h = compiled(net, nn.BCELoss(), ["accuracy", "auc"]).fit(2, df, target=["label"], verbose=0)
    assert h["loss"].notna().all() and 0.0 <= h.loc[1, "auc"] <= 1.0


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(x="X", y="y_short"), ValueError, "x has 120 rows but y has 10"),
    (dict(x="X"), TypeError, "without targets: pass y="),
    (dict(y="y"), TypeError, "needs training data"),
    (dict(x="df", target="lable"), ValueError, r"target 'lable' is not a column.*did you mean 'label'"),
    (dict(x="df"), TypeError, r"without its target.*target='label'"),
    (dict(x="X", y="y", target="label"), TypeError, "target= names a DataFrame column"),
    (dict(x="X", y="y", validation_split=0.2, validation_data="pair"), TypeError, "either validation_split"),
    (dict(x="X", y="y", validation_split=2), ValueError, "strictly between 0 and 1"),
    (dict(x="X", y="y", batch_size=0), ValueError, "batch_size must be an int >= 1"),
    (dict(x="X", y="y", seed=1.5), TypeError, "seed must be an int"),
    (dict(x="X", y="y", validation_data=("X",)), TypeError, r"must be \(X_val, Y_val\)"),
    (dict(x="pair", y="y"), TypeError, r"several inputs.*\(\(x1, x2\), y\)"),
    (dict(x="X_nan", y="y"), ValueError, r"NaN or inf in 1 row;"),
    (dict(x="df_text", target="label"), TypeError, r"\['city'\] are not numeric.*get_dummies"),
    (dict(x="dl", batch_size=8), TypeError, "batch_size= with a loader"),
    (dict(x="dl", validation_split=0.2), TypeError, "validation_split= with a loader.*dl_val"),
])
def test_bad_inputs_raise_clear_errors_before_training(kwargs, exc, match):
    X, y = arrays()
    df = frame()
    X_nan = X.copy()
    X_nan[5, 2] = np.nan
    values = {"X": X, "y": y, "y_short": y[:10], "df": df, "pair": (X, X), "X_nan": X_nan,
              "df_text": df.assign(city="Paris"), "dl": loader(blobs(40), 10)}
    kwargs = {k: (values[v] if isinstance(v, str) and v in values
                  else tuple(values[i] for i in v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    if kwargs.get("validation_data") is not None and not isinstance(kwargs["validation_data"], tuple):
        kwargs["validation_data"] = (X, y)
    model = compiled()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    data = kwargs.pop("x", None)
    positional = (data,) if data is not None and not isinstance(data, (np.ndarray, tuple)) else ()
    if not positional and data is not None:
        kwargs["x"] = data
    with pytest.raises(exc, match=match):
        model.fit(1, *positional, verbose=0, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())
    assert model.epoch == 0 and model.history.empty


def test_positional_arrays_and_misplaced_options():
    X, y = arrays()
    with pytest.raises(TypeError, match=r"reads Y as dl_val.*x=X, y=Y"):
        compiled().fit(1, X, y)
    with pytest.raises(TypeError, match="got data twice"):
        compiled().fit(1, loader(blobs(20)), x=X, y=y)
    with pytest.raises(TypeError, match="both dl_val and validation_data"):
        compiled().fit(1, x=X, y=y, dl_val=loader(blobs(20)), validation_data=(X, y))
    with pytest.raises(TypeError, match="a Dataset yields"):
        compiled().fit(1, blobs(20), y=y)
    with pytest.raises(TypeError, match="evaluate got x as a ndarray without targets"):  # Keras' evaluate(x, y)
        compiled().evaluate(X)
    with pytest.raises(TypeError, match="predict needs data"):
        compiled().predict()


def test_positional_loaders_and_torchkeras_keywords_unchanged():
    # a plain list of batches is still a loader, and dl_train=/dl_val= keywords still work
    ds = blobs(40)
    batches = [(ds.tensors[0][i:i + 10], ds.tensors[1][i:i + 10]) for i in range(0, 40, 10)]
    a, b = compiled(), compiled()
    a.fit(2, batches, batches, verbose=0)
    b.fit(2, dl_train=loader(ds, 10), dl_val=loader(ds, 10), verbose=0)
    assert_same_weights(a.net, b.net)
    pd.testing.assert_frame_equal(a.history, b.history)
