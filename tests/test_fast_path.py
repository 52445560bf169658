"""The tensor fast path (torchfit.fast_path): batches fetched by indexing a TensorDataset's
tensors must be exactly the DataLoader's batches — same values, dtypes, layout and
order, same random numbers drawn — and fit must train to the same weights bit for bit."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Subset, TensorDataset, random_split

import torchfit
from conftest import SmallCNN, assert_same_weights, digits
from torchfit.fast_path import iter_batches, uses_fast_path


def tensor_data(n: int = 103, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, 2, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    w = torch.rand(n, generator=g, dtype=torch.float64)
    return TensorDataset(X, y, w)


def epochs_of(make_loader, iterate, epochs: int = 2, seed: int = 7):
    """Batches of ``epochs`` passes and the RNG states afterwards (global and the loader's)."""
    torch.manual_seed(seed)
    dl = make_loader()
    out = [list(iterate(dl)) for _ in range(epochs)]
    gen_state = dl.generator.get_state() if dl.generator is not None else None
    return out, torch.get_rng_state(), gen_state


def assert_same_batches(a, b):
    assert len(a) == len(b) and len(a[0]) > 0
    for batch_a, batch_b in zip(a, b):
        assert type(batch_a) is type(batch_b) is list  # default_collate turns the sample tuples into a list
        assert len(batch_a) == len(batch_b)
        for ta, tb in zip(batch_a, batch_b):
            assert ta.dtype == tb.dtype and ta.shape == tb.shape
            assert ta.is_contiguous() and tb.is_contiguous()
            assert torch.equal(ta, tb)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("generator", [False, True], ids=["global-rng", "own-generator"])
@pytest.mark.parametrize("subset", [False, True], ids=["full", "random_split"])
def test_batches_and_rng_equal_the_dataloaders(shuffle, drop_last, generator, subset):
    ds = tensor_data()

    def make_loader():
        data = random_split(ds, [0.7, 0.3], generator=torch.Generator().manual_seed(1))[0] if subset else ds
        gen = torch.Generator().manual_seed(3) if generator else None
        dl = DataLoader(data, batch_size=16, shuffle=shuffle, drop_last=drop_last, generator=gen)
        assert uses_fast_path(dl)
        return dl

    plain, rng_plain, gen_plain = epochs_of(make_loader, iter)
    fast, rng_fast, gen_fast = epochs_of(make_loader, iter_batches)
    for epoch_plain, epoch_fast in zip(plain, fast):
        assert_same_batches(epoch_plain, epoch_fast)
    if shuffle:
        assert not all(torch.equal(a[1], b[1]) for a, b in zip(plain[0], plain[1])), "epochs should differ"
    assert torch.equal(rng_plain, rng_fast)
    if generator:
        assert torch.equal(gen_plain, gen_fast)


def test_rng_draws_happen_when_iteration_starts():
    # iter(DataLoader) draws the workers' base seed at once; the fast path must too,
    # or code that draws between iter() and the first batch would see other numbers.
    ds = tensor_data()
    for iterate in (iter, iter_batches):
        torch.manual_seed(0)
        iterate(DataLoader(ds, batch_size=8))
        if iterate is iter:
            expected = torch.rand(3)
        else:
            assert torch.equal(torch.rand(3), expected)


def test_nested_subset_and_a_custom_batch_sampler_with_negative_and_numpy_indices():
    ds = tensor_data(40)
    inner = Subset(ds, list(range(39, -1, -1)))  # reversed
    outer = Subset(inner, [5, -1, 0, 7, 3, 2, 9, 11])  # a negative index, as Python allows
    batches = [[0, 1, 2], np.array([3, 4]), [-1, 6], [7]]
    for data in (ds, outer):
        dl = DataLoader(data, batch_sampler=batches)
        assert uses_fast_path(dl)
        assert_same_batches(list(iter(dl)), list(iter_batches(dl)))


def test_indexing_errors_are_the_dataloaders():
    dl = DataLoader(tensor_data(10), batch_sampler=[[0, 1], [10, 2]])
    for iterate in (iter, iter_batches):
        with pytest.raises(IndexError, match="out of bounds"):
            list(iterate(dl))


class SpyDataset(TensorDataset):
    pass


class OwnIterLoader(DataLoader):
    def __iter__(self):
        return super().__iter__()


def test_which_loaders_take_the_fast_path():
    ds = tensor_data(20)
    X, y, _ = ds.tensors
    assert uses_fast_path(DataLoader(ds, batch_size=4, shuffle=True, pin_memory=False))
    assert uses_fast_path(DataLoader(Subset(Subset(ds, range(10)), [1, 2]), batch_size=4))
    not_fast = [
        DataLoader(ds, batch_size=4, num_workers=2),
        DataLoader(ds, batch_size=4, collate_fn=lambda b: b),
        DataLoader(ds, batch_size=None),  # no batching: samples one by one
        DataLoader(SpyDataset(X, y), batch_size=4),  # a subclass may fetch its own way
        DataLoader(TensorDataset(X[:, :, 0], y), batch_size=4),  # non-contiguous tensor
        DataLoader(TensorDataset(X.requires_grad_(), y), batch_size=4),
        OwnIterLoader(ds, batch_size=4),
        [(X, y)],
    ]
    for dl in not_fast:
        assert not uses_fast_path(dl)
    batches = [[X[:2], y[:2]]]
    assert list(iter_batches(batches)) == batches  # any iterable goes through as it is


def test_pin_memory_without_an_accelerator_warns_like_the_dataloader():
    if torch.cuda.is_available():
        pytest.skip("an accelerator is present")
    dl = DataLoader(tensor_data(), batch_size=16, pin_memory=True)
    with pytest.warns(UserWarning, match="pin_memory"):
        fast = list(iter_batches(dl))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same_batches(list(iter(dl)), fast)


# ------------------------------------------------------------------- fit parity
def hand_loop(net, opt, dl, epochs, dl_val):
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        net.train()
        for x, y in dl:
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            for x, y in dl_val:
                loss_fn(net(x), y)


@pytest.mark.parametrize("generator", [False, True], ids=["global-rng", "own-generator"])
def test_fit_trains_bit_identical_weights_with_and_without_the_fast_path(generator):
    # SmallCNN has dropout: any extra or missing random draw changes the weights.
    ds = digits(300)
    train, val = random_split(ds, [240, 60], generator=torch.Generator().manual_seed(0))

    def loaders():
        gen = torch.Generator().manual_seed(4) if generator else None
        return (DataLoader(train, batch_size=32, shuffle=True, drop_last=True, generator=gen),
                DataLoader(val, batch_size=25))

    torch.manual_seed(1)
    net0 = SmallCNN()
    results = {}
    for name in ("hand", "fast", "plain"):
        net = copy.deepcopy(net0)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        dl, dl_val = loaders()
        torch.manual_seed(2)
        if name == "hand":
            hand_loop(net, opt, dl, 3, dl_val)
            history = None
        else:
            model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), opt, ["accuracy"], device="cpu")
            history = model.fit(3, dl, dl_val, verbose=0, fast_path=name == "fast")
        results[name] = (net, history, torch.get_rng_state())
    for name in ("fast", "plain"):
        assert_same_weights(results["hand"][0], results[name][0])
        assert torch.equal(results["hand"][2], results[name][2])
    assert results["fast"][1].equals(results["plain"][1])


def test_fit_evaluate_and_predict_use_the_fast_path_unless_told_not_to(monkeypatch):
    fetched = []
    original = TensorDataset.__getitem__
    monkeypatch.setattr(TensorDataset, "__getitem__", lambda self, i: fetched.append(i) or original(self, i))
    ds = tensor_data(64)
    X, y, _ = ds.tensors
    ds = TensorDataset(X.flatten(1), y)
    torch.manual_seed(0)
    model = torchfit.Model(nn.Linear(6, 4)).compile(nn.CrossEntropyLoss(), "sgd", device="cpu")
    dl = DataLoader(ds, batch_size=16, shuffle=True)
    calls = {
        "fit": lambda fast: model.fit(1, dl, dl, verbose=0, fast_path=fast),
        "evaluate": lambda fast: model.evaluate(DataLoader(ds, batch_size=16), fast_path=fast),
        "predict": lambda fast: model.predict(DataLoader(ds, batch_size=16), fast_path=fast),
    }
    outputs = {}
    for verb, call in calls.items():
        for fast in (True, False):
            fetched.clear()
            outputs[verb, fast] = call(fast)
            assert (len(fetched) == 0) == fast, (verb, fast, len(fetched))
    assert torch.equal(outputs["predict", True], outputs["predict", False])
    assert outputs["evaluate", True] == outputs["evaluate", False]
    # Keras-style tensors in, TensorDataset loaders inside: the fast path too.
    fetched.clear()
    model.fit(1, x=ds.tensors[0], y=ds.tensors[1], batch_size=16, validation_split=0.25, verbose=0)
    model.predict(ds.tensors[0])
    assert fetched == []


# ------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pinned_batches_and_cuda_fit_parity():
    ds = tensor_data()
    dl = DataLoader(ds, batch_size=16, shuffle=True, pin_memory=True, generator=torch.Generator().manual_seed(0))
    fast = list(iter_batches(dl))
    assert all(t.is_pinned() for batch in fast for t in batch)
    dl.generator.manual_seed(0)
    assert_same_batches(list(iter(dl)), fast)

    X, y, _ = ds.tensors
    flat = TensorDataset(X.flatten(1), y)
    nets = []
    for fast_path in (True, False):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))
        model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "adam", device="cuda")
        dl = DataLoader(flat, batch_size=16, shuffle=True, pin_memory=True, generator=torch.Generator().manual_seed(0))
        model.fit(2, dl, verbose=0, fast_path=fast_path)
        nets.append(net)
    assert_same_weights(*nets)


# ------------------------------------------------------------- the hot path's Mean
def test_mean_fast_update_is_the_exact_float64_weighted_sum():
    g = torch.Generator().manual_seed(0)
    values = torch.rand(500, generator=g) * 10
    weights = torch.randint(1, 300, (500,), generator=g).tolist()
    mean = torchfit.metrics.Mean()
    total = 0.0
    for v, w in zip(values, weights):
        mean.update(v, w)  # 0-d float32: the one-op path after the first update
        total += float(v) * w  # exact: a float32 times an int < 2**29 fits a float64
    assert mean.compute() == total / sum(weights)
    bf16 = torchfit.metrics.Mean()
    for v, w in zip(values.bfloat16(), weights):
        bf16.update(v, w)
    assert bf16.compute() == sum(float(v) * w for v, w in zip(values.bfloat16(), weights)) / sum(weights)


def test_mean_update_with_a_tensor_that_requires_grad_keeps_no_graph():
    mean = torchfit.metrics.Mean()
    w = torch.tensor(2.0, requires_grad=True)
    for _ in range(3):
        mean.update(w * 3, 4)
    assert not mean._tensor_total.requires_grad and mean._tensor_total.grad_fn is None
    assert mean.compute() == 6.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fit_makes_no_host_sync_between_logging_points():
    log_every, n_train = 5, 12

    class SyncDebug(torchfit.Callback):
        # "error" on every step that is not a logging point, the first step (the metric
        # preflight) or the last one (the epoch's figures); also while the next batch is
        # fetched, pinned and copied.
        def on_train_batch_begin(self, batch, logs):
            quiet = batch == 1 or batch % log_every == 0 or batch == n_train
            torch.cuda.set_sync_debug_mode("default" if quiet else "error")

        def on_train_batch_end(self, batch, logs):
            torch.cuda.set_sync_debug_mode("default" if batch == n_train else "error")

        def on_epoch_end(self, epoch, logs):
            torch.cuda.set_sync_debug_mode("default")

    X, y, _ = tensor_data(16 * n_train).tensors
    dl = DataLoader(TensorDataset(X.flatten(1), y), batch_size=16, shuffle=True, pin_memory=True)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "adam", ["accuracy"], device="cuda",
                                        precision="bf16")
    try:
        model.fit(2, dl, log_step_freq=log_every, verbose=0, callbacks=[SyncDebug()])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(model.history) == 2


def test_a_subset_index_out_of_range_that_no_batch_asks_for_is_no_error():
    ds = tensor_data(10)
    # Position 2 maps to the inner Subset's index 5, past its end, but drop_last never fetches it.
    dl = DataLoader(Subset(Subset(ds, [3, 4, 5]), [0, 1, 5]), batch_size=2, drop_last=True)
    assert_same_batches(list(iter(dl)), list(iter_batches(dl)))


def test_the_docs_example_runs_and_says_what_it_prints(capsys):
    import os
    import re

    path = os.path.join(os.path.dirname(__file__), "..", "docs", "performance.md")
    with open(path) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    example = next(b for b in blocks if "uses_fast_path" in b)
    exec(compile(example, "docs/performance.md", "exec"), {})
    assert capsys.readouterr().out.split() == ["True", "True", "False"]
