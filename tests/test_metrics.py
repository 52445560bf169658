import copy
import threading
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.datasets import load_iris, make_classification

from torchfit.metrics import (
    AUC,
    F1,
    KNOWN_METRICS,
    MAE,
    MSE,
    R2,
    Accuracy,
    BatchMetric,
    Mean,
    Metric,
    Precision,
    Recall,
    UnknownMetricError,
    get_metric,
    resolve_metrics,
)
from torchfit.metrics.base import _sum_dtype

N = 263  # 8 batches of 32 and a last batch of 7


def batches(*tensors, size=32):
    """Split aligned tensors into batches; the last one is short."""
    n = tensors[0].shape[0]
    for start in range(0, n, size):
        yield tuple(t[start : start + size] for t in tensors)


def feed(metric, preds, targets, size=32):
    for p, t in batches(preds, targets, size=size):
        metric.update(p, t)
    return metric.compute()


def binary_data(seed=0):
    """Scores correlated with 0/1 targets: (probabilities, logits, targets)."""
    x, y = make_classification(n_samples=N, n_features=5, n_informative=3, random_state=seed)
    w = np.random.default_rng(seed).normal(size=5)
    logits = torch.tensor(x @ w, dtype=torch.float64)
    return torch.sigmoid(logits), logits, torch.tensor(y)


def multiclass_data(seed=0, classes=4):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (N,), generator=g)
    logits = torch.randn(N, classes, generator=g, dtype=torch.float64) + 1.2 * torch.nn.functional.one_hot(y, classes)
    return logits, y


def regression_data(seed=0, outputs=None, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    shape = (N,) if outputs is None else (N, outputs)
    y = torch.randn(shape, generator=g, dtype=torch.float64) + offset
    p = y + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    return p, y


def thresholded(scores, cut):
    return (scores >= cut).long().numpy()


# ----------------------------------------------------------------- accuracy


@pytest.mark.parametrize("shape", ["flat", "column"])
def test_accuracy_binary_matches_sklearn_for_probs_and_logits(shape):
    probs, logits, y = binary_data()
    expected = skm.accuracy_score(y.numpy(), thresholded(probs, 0.5))
    if shape == "column":
        probs, logits, y_in = probs[:, None], logits[:, None], y[:, None].float()
    else:
        y_in = y
    assert feed(Accuracy(), probs, y_in) == pytest.approx(expected, abs=1e-15)
    assert feed(Accuracy(from_logits=True), logits, y_in) == pytest.approx(expected, abs=1e-15)
    assert 0.55 < expected < 0.99  # the data is neither trivial nor random


def test_accuracy_multiclass_indices_and_one_hot_targets():
    logits, y = multiclass_data()
    expected = skm.accuracy_score(y.numpy(), logits.argmax(1).numpy())
    assert feed(Accuracy(), logits, y) == pytest.approx(expected, abs=1e-15)
    one_hot = torch.nn.functional.one_hot(y, 4).float()
    assert feed(Accuracy(), torch.softmax(logits, 1), one_hot) == pytest.approx(expected, abs=1e-15)


def test_threshold_for_probabilities_logits_and_custom_cut():
    preds = torch.tensor([0.2, 0.0, -0.0, -1e-9, 0.6, 0.8])
    targets = torch.tensor([1, 1, 1, 1, 1, 1])
    # As probabilities only 0.6 and 0.8 reach 0.5.
    assert feed(Accuracy(), preds, targets) == pytest.approx(2 / 6)
    # As logits 0.2, 0.0, -0.0, 0.6, 0.8 are >= 0; -1e-9 is not (sigmoid in float32 would say 0.5).
    assert feed(Accuracy(from_logits=True), preds, targets) == pytest.approx(5 / 6)
    # threshold=0.7 on logits means logit >= log(0.7 / 0.3) = 0.847.
    assert feed(Accuracy(threshold=0.7, from_logits=True), torch.tensor([0.8, 0.9]), torch.tensor([1, 1])) == 0.5
    assert feed(Accuracy(threshold=0.7), torch.tensor([0.69, 0.7]), torch.tensor([1, 1])) == 0.5
    with pytest.raises(ValueError, match="threshold"):
        Accuracy(threshold=1.0)


def test_binary_targets_count_as_positive_from_one_half():
    preds = torch.tensor([0.9, 0.1, 0.8, 0.3])
    # Smoothed labels, floats and bools all read the same way.
    for targets in (torch.tensor([0.9, 0.1, 0.95, 0.05]), torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([True, False, True, False])):
        assert feed(Accuracy(), preds, targets) == 1.0
        assert feed(F1(), preds, targets) == 1.0


def test_classification_shape_errors_name_metric_and_shapes():
    with pytest.raises(ValueError, match=r"accuracy.*\(8, 3\).*\(8, 5\)"):
        Accuracy().update(torch.randn(8, 3), torch.randn(8, 5))
    with pytest.raises(ValueError, match=r"f1.*\(8,\).*\(7,\)"):
        F1().update(torch.rand(8), torch.ones(7))
    with pytest.raises(ValueError, match=r"auc.*\(8, 3\).*\(8, 2\)"):
        AUC().update(torch.randn(8, 3), torch.randn(8, 2))


# ------------------------------------------------------ precision/recall/F1

PRF = [(F1, skm.f1_score), (Precision, skm.precision_score), (Recall, skm.recall_score)]


@pytest.mark.parametrize("metric_cls, sk_fn", PRF)
def test_prf_binary_matches_sklearn(metric_cls, sk_fn):
    probs, logits, y = binary_data(seed=1)
    expected = sk_fn(y.numpy(), thresholded(probs, 0.5))
    assert feed(metric_cls(), probs, y) == pytest.approx(expected, abs=1e-12)
    assert feed(metric_cls(from_logits=True), logits, y.float()) == pytest.approx(expected, abs=1e-12)
    # The binary score is the positive class's, not an average over both.
    macro = sk_fn(y.numpy(), thresholded(probs, 0.5), average="macro")
    assert abs(expected - macro) > 1e-3
    assert feed(metric_cls(average="macro"), probs, y) == pytest.approx(macro, abs=1e-12)


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
@pytest.mark.parametrize("metric_cls, sk_fn", PRF)
def test_prf_multiclass_matches_sklearn(metric_cls, sk_fn, average):
    logits, y = multiclass_data(seed=2, classes=6)
    # Class 5 never occurs and is never predicted (sklearn leaves it out of the
    # average); class 4 occurs but is never predicted (a zero-division case).
    y = y.clamp(max=4)
    logits[:, 5] = -100.0
    logits[:, 4] = -50.0
    pred = logits.argmax(1).numpy()
    expected = sk_fn(y.numpy(), pred, average=average, zero_division=0)
    default = {} if average == "macro" else {"average": average}
    assert feed(metric_cls(**default), logits, y) == pytest.approx(expected, abs=1e-12)


def test_prf_zero_division_is_zero_without_warnings():
    preds = torch.zeros(10)  # nothing predicted positive
    targets = torch.tensor([0, 1] * 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert feed(Precision(), preds, targets) == 0.0
        assert feed(F1(), preds, targets) == 0.0
        assert feed(Recall(), preds, targets) == 0.0
    assert skm.precision_score(targets.numpy(), preds.long().numpy(), zero_division=0) == 0.0


# ---------------------------------------------------------------------- AUC


def test_auc_binary_matches_sklearn_and_ignores_logit_scale():
    probs, logits, y = binary_data(seed=3)
    expected = skm.roc_auc_score(y.numpy(), probs.numpy())
    assert feed(AUC(), probs, y) == pytest.approx(expected, abs=1e-12)
    assert feed(AUC(), logits[:, None], y[:, None]) == pytest.approx(expected, abs=1e-12)


def test_auc_multiclass_ovr_on_logits_and_probabilities():
    x, y = load_iris(return_X_y=True)
    w = np.random.default_rng(0).normal(size=(4, 3))
    logits = torch.tensor(x @ w)
    probs = torch.softmax(logits, 1)
    expected = skm.roc_auc_score(y, probs.numpy(), multi_class="ovr")
    targets = torch.tensor(y)
    assert feed(AUC(), logits, targets) == pytest.approx(expected, abs=1e-12)
    assert feed(AUC(), probs, targets) == pytest.approx(expected, abs=1e-12)
    assert feed(AUC(), probs.float(), torch.nn.functional.one_hot(targets, 3)) == pytest.approx(expected, abs=1e-6)
    # Softmax matters: AUC of the raw logits columns differs.
    raw = np.mean([skm.roc_auc_score(y == k, logits[:, k].numpy()) for k in range(3)])
    assert abs(raw - expected) > 1e-3


def test_auc_accepts_half_precision_probabilities():
    logits, y = multiclass_data(seed=3)
    half = torch.softmax(logits, 1).half()
    rows = half.double().numpy()
    # float16 rows miss 1 by more than sklearn's own check allows...
    assert not np.allclose(rows.sum(1), 1.0)
    # ...so they are renormalised, not mistaken for logits and softmaxed again.
    expected = skm.roc_auc_score(y.numpy(), rows / rows.sum(1, keepdims=True), multi_class="ovr")
    assert feed(AUC(), half, y) == pytest.approx(expected, abs=1e-12)


def test_auc_two_column_multiclass_is_binary_auc_of_column_one():
    probs, _, y = binary_data(seed=4)
    two = torch.stack([1 - probs, probs], dim=1)
    assert feed(AUC(), two, y) == pytest.approx(skm.roc_auc_score(y.numpy(), probs.numpy()), abs=1e-12)


@pytest.mark.filterwarnings("error")  # quietly: step logs hit this early in every epoch
def test_auc_is_nan_until_every_class_occurs():
    m = AUC()
    assert np.isnan(m.compute())
    m.update(torch.tensor([0.2, 0.9]), torch.tensor([1, 1]))
    assert np.isnan(m.compute())
    m.update(torch.tensor([0.1]), torch.tensor([0]))
    assert m.compute() == 1.0
    mc = AUC()
    mc.update(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    assert np.isnan(mc.compute())
    mc.update(torch.randn(1, 3), torch.tensor([2]))
    assert not np.isnan(mc.compute())


# --------------------------------------------------------------- regression

REGRESSION = [(MSE, skm.mean_squared_error), (MAE, skm.mean_absolute_error), (R2, skm.r2_score)]


@pytest.mark.parametrize("outputs", [None, 3])
@pytest.mark.parametrize("metric_cls, sk_fn", REGRESSION)
def test_regression_matches_sklearn(metric_cls, sk_fn, outputs):
    p, y = regression_data(seed=5, outputs=outputs, offset=3.0)
    if outputs is not None:
        p[:, 1] *= 3.0  # outputs of different quality, so the averaging matters
    expected = sk_fn(y.numpy(), p.numpy())
    preds = p[:, None] if outputs is None else p  # (N, 1) preds against (N,) targets
    assert feed(metric_cls(), preds, y) == pytest.approx(expected, rel=1e-12)


def test_r2_keeps_precision_with_a_large_offset():
    # sum(y**2) - sum(y)**2 / n would lose every digit here (y ~ 1e8, std 1).
    p, y = regression_data(seed=6, offset=1e8)
    expected = skm.r2_score(y.numpy(), p.numpy())
    assert 0.5 < expected < 0.95
    assert feed(R2(), p, y) == pytest.approx(expected, abs=1e-6)


def test_r2_edge_cases_follow_sklearn():
    const = torch.full((5,), 2.0)
    assert feed(R2(), const, const) == skm.r2_score(const.numpy(), const.numpy()) == 1.0
    assert feed(R2(), const + 1, const) == skm.r2_score(const.numpy(), const.numpy() + 1) == 0.0
    one = R2()
    one.update(torch.tensor([1.0]), torch.tensor([2.0]))
    assert np.isnan(one.compute())


def test_regression_never_broadcasts_and_reports_bad_shapes():
    y = torch.arange(6, dtype=torch.float64)
    p = (y + 1.0)[:, None]
    # Broadcasting (6, 1) against (6,) would average a 6x6 matrix of errors.
    assert feed(MSE(), p, y) == 1.0
    with pytest.raises(ValueError, match=r"mse.*\(6, 2\).*\(6, 3\)"):
        MSE().update(torch.zeros(6, 2), torch.zeros(6, 3))
    with pytest.raises(ValueError, match=r"mae.*\(2, 3\).*\(3, 2\)"):
        MAE().update(torch.zeros(2, 3), torch.zeros(3, 2))


# ---------------------------------------------------------- Mean and batch


def test_mean_is_sample_weighted_over_tensor_python_and_numpy_values():
    m = Mean()
    m.update(torch.tensor(1.0), weight=32)
    m.update(2.5, weight=4)
    m.update(np.float64(4.0), weight=3)
    assert m.compute() == pytest.approx((32 * 1.0 + 4 * 2.5 + 3 * 4.0) / 39, abs=1e-15)
    with pytest.raises(TypeError, match="int"):
        m.update(1.0, weight=torch.tensor(3))
    assert np.isnan(Mean().compute())


def _sk_accuracy(p, y):
    # np.float64 on purpose: the type sklearn-style metric functions return.
    return np.float64(skm.accuracy_score(y.numpy(), (p >= 0.5).long().numpy()))


def _torch_abs_error(p, y):
    return (p - y).abs().mean()


def test_batch_metric_is_sample_weighted_not_mean_of_batch_means():
    probs, _, y = binary_data(seed=7)
    # The short last batch is all wrong; a plain mean of batch means would give
    # its 7 samples the weight of a full batch.
    probs[-7:] = 1.0 - y[-7:].double()
    sizes = [len(t) for _, t in batches(probs, y)]
    assert sizes[-1] == 7
    batch_means = [_sk_accuracy(p, t) for p, t in batches(probs, y)]
    assert isinstance(batch_means[0], np.floating)
    exact = skm.accuracy_score(y.numpy(), thresholded(probs, 0.5))
    assert abs(np.mean(batch_means) - exact) > 1e-2

    assert feed(BatchMetric(_sk_accuracy), probs, y) == pytest.approx(exact, abs=1e-12)
    assert feed(BatchMetric(_torch_abs_error), probs, y.double()) == pytest.approx(
        skm.mean_absolute_error(y.numpy(), probs.numpy()), abs=1e-12
    )


def test_batch_metric_rejects_per_sample_output_naming_the_metric():
    metric = resolve_metrics({"abs_err": lambda p, y: (p - y).abs()})["abs_err"]
    with pytest.raises(ValueError, match="abs_err.*one number per batch"):
        metric.update(torch.zeros(3), torch.ones(3))


# ------------------------------------------------ reset, copies, resolution


def data_for(name):
    """(preds, targets) that suit the named metric, and a second, different set."""
    if name in ("mse", "mae", "r2"):
        return regression_data(seed=8), regression_data(seed=9)
    probs, _, y = binary_data(seed=10)
    other, _, y2 = binary_data(seed=11)
    return (probs, y), (other, y2)


@pytest.mark.parametrize("name", KNOWN_METRICS + ("batch_tensor", "batch_numpy"))
def test_reset_clears_state(name):
    spec = {"batch_tensor": _torch_abs_error, "batch_numpy": _sk_accuracy}.get(name, name)
    (p1, y1), (p2, y2) = data_for(name)
    _, fresh = get_metric(spec)
    expected = feed(fresh, p2, y2)
    _, m = get_metric(spec)
    first = feed(m, p1, y1)
    m.reset()
    assert feed(m, p2, y2) == pytest.approx(expected, abs=1e-12)
    assert abs(first - expected) > 1e-6  # otherwise this test could not tell


@pytest.mark.parametrize("name", KNOWN_METRICS)
def test_deepcopy_gives_independent_state(name):
    (p1, y1), (p2, y2) = data_for(name)
    metrics = resolve_metrics([name])
    feed(metrics[name], p1, y1)
    copied = copy.deepcopy(metrics)
    feed(copied[name], p2, y2)
    _, only_first = get_metric(name)
    _, both = get_metric(name)
    feed(both, torch.cat([p1, p2]), torch.cat([y1, y2]))
    assert metrics[name].compute() == pytest.approx(feed(only_first, p1, y1), abs=1e-12)
    assert copied[name].compute() == pytest.approx(both.compute(), abs=1e-12)


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownMetricError) as info:
        resolve_metrics(["accuracy", "acuracy"])
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'acuracy'" in message
    assert all(name in message for name in KNOWN_METRICS)


def test_resolve_names_order_and_from_logits():
    assert resolve_metrics(None) == {}
    metrics = resolve_metrics(["r2", "ACC", "auc", _sk_accuracy], from_logits=True)
    assert list(metrics) == ["r2", "ACC", "auc", "_sk_accuracy"]
    assert isinstance(metrics["ACC"], Accuracy) and metrics["ACC"].from_logits is True
    assert isinstance(metrics["_sk_accuracy"], BatchMetric)
    named = resolve_metrics({"l1": lambda p, y: (p - y).abs().mean(), "f": F1(average="micro")})
    assert list(named) == ["l1", "f"] and named["f"].average == "micro"
    assert list(resolve_metrics((Accuracy(), R2(), BatchMetric(_torch_abs_error)))) == [
        "accuracy",
        "r2",
        "_torch_abs_error",
    ]


def test_resolve_rejects_bad_specs_with_clear_errors():
    with pytest.raises(ValueError, match="name"):
        resolve_metrics([lambda p, y: 0.0])
    with pytest.raises(ValueError, match="'acc'"):
        resolve_metrics(["acc", "acc"])
    with pytest.raises(ValueError, match="same object"):
        m = Accuracy()
        resolve_metrics({"a": m, "b": m})
    for reserved in ("loss", "val_accuracy"):
        with pytest.raises(ValueError, match="reserved"):
            resolve_metrics({reserved: "accuracy"})
    with pytest.raises(TypeError, match=r"42.*int.*callable"):
        resolve_metrics([42])
    with pytest.raises(TypeError, match=r"instance.*Accuracy\(\)"):
        resolve_metrics([Accuracy])
    with pytest.raises(TypeError, match=r"\['accuracy'\]"):
        resolve_metrics("accuracy")


class BinaryAccuracy:
    """Looks like a torchmetrics metric: update/compute/reset, tensor result."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.correct = torch.tensor(0)
        self.total = 0

    def update(self, preds, targets):
        self.correct = self.correct + ((preds >= 0.5).long() == targets).sum()
        self.total += len(targets)

    def compute(self):
        return self.correct / self.total


class MulticlassF1Score(BinaryAccuracy):
    pass


class AUROC(BinaryAccuracy):
    pass


def test_update_compute_reset_objects_are_adapted_and_named_in_snake_case():
    metrics = resolve_metrics([BinaryAccuracy(), MulticlassF1Score(), AUROC()])
    assert list(metrics) == ["binary_accuracy", "multiclass_f1_score", "auroc"]
    probs, _, y = binary_data(seed=12)
    value = feed(metrics["binary_accuracy"], probs, y)
    assert type(value) is float
    assert value == pytest.approx(skm.accuracy_score(y.numpy(), thresholded(probs, 0.5)))
    clone = copy.deepcopy(metrics["binary_accuracy"])
    clone.reset()
    assert metrics["binary_accuracy"].compute() == value
    with pytest.raises(NotImplementedError, match="sync"):
        metrics["auroc"].sync(None)


def test_sums_are_float64_except_on_mps():
    assert _sum_dtype(torch.device("mps")) == torch.float32
    assert _sum_dtype(torch.device("cpu")) == torch.float64
    # 2**24 + 1 is the first integer float32 cannot hold: a float32 sum drops the 1.
    big, one = torch.tensor(2.0**24, dtype=torch.float32), torch.tensor(1.0, dtype=torch.float32)
    mean = Mean()
    mean.update(big)
    mean.update(one)
    assert mean.compute() == (2**24 + 1) / 2
    mse = MSE()
    mse.update(big.sqrt().reshape(1), torch.zeros(1))
    mse.update(one.reshape(1), torch.zeros(1))
    assert mse.compute() == (2**24 + 1) / 2


# ----------------------------------------------------------------- no sync


def _forbidden(name):
    def raise_(*args, **kwargs):
        raise AssertionError(f"host sync in update: Tensor.{name}")

    return raise_


@pytest.fixture
def no_host_sync(monkeypatch):
    """Make every host-syncing tensor operation raise, as CUDA's sync debug mode would."""
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, _forbidden(name))
    for name in ("bincount", "unique", "nonzero"):
        monkeypatch.setattr(torch, name, _forbidden(name))
    getitem = torch.Tensor.__getitem__

    def no_mask(self, index):
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            raise AssertionError("host sync in update: boolean mask indexing")
        return getitem(self, index)

    monkeypatch.setattr(torch.Tensor, "__getitem__", no_mask)
    yield monkeypatch
    monkeypatch.undo()


def test_updates_never_sync_the_host(no_host_sync):
    probs, _, y = binary_data(seed=13)
    mc_logits, mc_y = multiclass_data(seed=13)
    rp, ry = regression_data(seed=13, outputs=2)
    cases = []
    for name in KNOWN_METRICS:
        if name == "auc":  # keeps tensors in update, syncs only in compute
            continue
        if name in ("mse", "mae", "r2", "mean_squared_error", "mean_absolute_error"):
            cases.append((name, rp, ry))
        else:
            cases += [(name, probs, y), (name, mc_logits, mc_y)]
    cases.append((_torch_abs_error, probs, y.double()))
    updated = []
    for spec, p, t in cases:
        _, metric = get_metric(spec)
        for pb, tb in batches(p, t):
            metric.update(pb, tb)
        updated.append((spec, metric, p, t))
    loss = Mean()
    for pb, tb in batches(probs, y):
        loss.update((pb - tb).abs().mean(), weight=len(tb))

    with pytest.raises(AssertionError, match="host sync"):
        torch.tensor([1.0]).item()  # the guard was live during the updates
    no_host_sync.undo()

    for spec, metric, p, t in updated:
        _, reference = get_metric(spec)
        assert metric.compute() == pytest.approx(feed(reference, p, t), abs=1e-12)
    assert loss.compute() == pytest.approx(skm.mean_absolute_error(y.numpy(), probs.numpy()), abs=1e-12)


# --------------------------------------------------------- multi-process


class ThreadReducer:
    """An in-process stand-in for torch.distributed: one thread per rank."""

    def __init__(self, rank, slots, barrier):
        self.rank, self.slots, self.barrier = rank, slots, barrier

    def _exchange(self, tensor):
        self.slots[self.rank] = tensor.clone()
        self.barrier.wait()
        parts = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return parts

    def sum(self, tensor):
        return torch.stack(self._exchange(tensor)).sum(dim=0)

    def gather(self, tensor):
        return torch.cat(self._exchange(tensor))


def sync_all(metrics):
    barrier = threading.Barrier(len(metrics))
    slots = [None] * len(metrics)
    errors = []

    def run(rank):
        try:
            metrics[rank].sync(ThreadReducer(rank, slots, barrier))
        except BaseException as exc:  # surface failures from the worker thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(len(metrics))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    if errors:
        raise errors[0]


def sync_cases():
    probs, logits, y = binary_data(seed=14)
    mc_logits, mc_y = multiclass_data(seed=14)
    rp, ry = regression_data(seed=14, outputs=2, offset=5.0)
    rp1, ry1 = regression_data(seed=15, offset=-2.0)
    return [
        ("accuracy", lambda: Accuracy(), mc_logits, mc_y),
        ("f1", lambda: F1(), probs, y),
        ("precision_macro", lambda: Precision(), mc_logits, mc_y),
        ("recall_weighted", lambda: Recall(average="weighted"), mc_logits, mc_y),
        ("auc", lambda: AUC(), probs, y),
        ("auc_multiclass", lambda: AUC(), mc_logits, mc_y),
        ("mse", lambda: MSE(), rp, ry),
        ("mae", lambda: MAE(), rp, ry),
        ("r2", lambda: R2(), rp1, ry1),
        ("r2_multi", lambda: R2(), rp, ry),
        ("batch_tensor", lambda: BatchMetric(_torch_abs_error), probs, y.double()),
        ("batch_numpy", lambda: BatchMetric(_sk_accuracy), probs, y),
    ]


@pytest.mark.parametrize("case", sync_cases(), ids=lambda c: c[0])
def test_sync_two_ranks_equals_one_metric_on_all_data(case):
    _, make, p, t = case
    split = 100  # uneven halves, so gather must handle different lengths
    whole = feed(make(), p, t)
    ranks = [make(), make()]
    feed(ranks[0], p[:split], t[:split])
    feed(ranks[1], p[split:], t[split:])
    local = ranks[0].compute()
    assert abs(local - whole) > 1e-9  # otherwise the test could not tell
    sync_all(ranks)
    assert ranks[0].compute() == pytest.approx(whole, abs=1e-12)
    assert ranks[1].compute() == pytest.approx(whole, abs=1e-12)
    sync_all(ranks)  # syncing again must not count anything twice
    assert ranks[0].compute() == pytest.approx(whole, abs=1e-12)
    # An update after sync continues from the local state.
    extra = slice(split, split + 40)
    ranks[0].update(p[extra], t[extra])
    reference = make()
    feed(reference, p[: split + 40], t[: split + 40])
    assert ranks[0].compute() == pytest.approx(reference.compute(), abs=1e-12)


def test_mean_sync_mixes_tensor_and_python_values():
    a, b = Mean(), Mean()
    a.update(torch.tensor(1.0), weight=3)
    a.update(2.0, weight=1)
    b.update(np.float64(5.0), weight=4)
    sync_all([a, b])
    assert a.compute() == b.compute() == pytest.approx((3 + 2 + 20) / 8)


def test_sync_before_any_update_is_a_clear_error():
    with pytest.raises(RuntimeError, match="before any update"):
        sync_all([F1(), F1()])


def test_custom_metric_without_sync_says_so():
    class Last(Metric):
        def reset(self):
            self.value = None

        def update(self, preds, targets):
            self.value = preds

        def compute(self):
            return float(self.value[-1])

    with pytest.raises(NotImplementedError, match="Last.*sync"):
        Last().sync(None)


# -------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_updates_do_not_sync_and_match_cpu():
    probs, _, y = binary_data(seed=16)
    mc_logits, mc_y = multiclass_data(seed=16)
    rp, ry = regression_data(seed=16, outputs=2)
    cases = [(n, mc_logits, mc_y) for n in ("accuracy", "f1", "precision", "recall", "auc")]
    cases += [(n, probs, y) for n in ("accuracy", "f1", "auc")]
    cases += [(n, rp, ry) for n in ("mse", "mae", "r2")]
    cuda_metrics = []
    for name, p, t in cases:
        _, metric = get_metric(name)
        pc, tc = p.cuda(), t.cuda()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for pb, tb in batches(pc, tc):
                metric.update(pb, tb)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        cuda_metrics.append((name, metric, p, t))
    loss, value = Mean(), torch.tensor(2.0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss.update(value, weight=5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.compute() == 2.0
    for name, metric, p, t in cuda_metrics:
        _, cpu_metric = get_metric(name)
        assert metric.compute() == pytest.approx(feed(cpu_metric, p, t), abs=1e-12), name
