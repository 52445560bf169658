import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchfit import losses

torch.manual_seed(0)
LOGITS = torch.randn(6, 4)
PROBS = LOGITS.softmax(dim=1)
LABELS = torch.tensor([0, 3, 1, 2, 2, 0])
ONE_HOT = F.one_hot(LABELS, 4).float()
REG_PREDS = torch.randn(6, 2)
REG_TARGETS = torch.randn(6, 2)
BIN_LOGITS = torch.randn(6, 1)
BIN_TARGETS = torch.tensor([[0.0], [1.0], [1.0], [0.0], [1.0], [0.0]])


# ------------------------------------------------------------------ get: names -> torch losses
@pytest.mark.parametrize("name", ["sparse_categorical_crossentropy", "SparseCategoricalCrossentropy", "cross_entropy"])
def test_sparse_categorical_from_logits_is_cross_entropy(name):
    kwargs = {} if name == "cross_entropy" else {"from_logits": True}
    loss = losses.get(name, **kwargs)
    assert isinstance(loss, nn.CrossEntropyLoss)
    assert torch.equal(loss(LOGITS, LABELS), nn.CrossEntropyLoss()(LOGITS, LABELS))


def test_categorical_from_logits_takes_one_hot_rows():
    loss = losses.get("categorical_crossentropy", from_logits=True)
    assert torch.equal(loss(LOGITS, ONE_HOT), nn.CrossEntropyLoss()(LOGITS, ONE_HOT))
    assert torch.allclose(loss(LOGITS, ONE_HOT), nn.CrossEntropyLoss()(LOGITS, LABELS))


def test_cross_entropy_from_probabilities_equals_nll_of_log_probs():
    expected = F.nll_loss(PROBS.log(), LABELS)
    for loss in (losses.get("sparse_categorical_crossentropy"), losses.SparseCategoricalCrossentropy()):
        assert isinstance(loss, losses.CrossEntropyFromProbabilities)
        assert torch.allclose(loss(PROBS, LABELS), expected, atol=1e-6)
    assert torch.allclose(losses.get("categorical_crossentropy")(PROBS, ONE_HOT), expected, atol=1e-6)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mse", nn.MSELoss()), ("mean_squared_error", nn.MSELoss()), ("MeanSquaredError", nn.MSELoss()),
        ("mae", nn.L1Loss()), ("mean_absolute_error", nn.L1Loss()), ("l1", nn.L1Loss()),
        ("huber", nn.HuberLoss(delta=1.0)), ("smooth_l1", nn.SmoothL1Loss()),
    ],
)
def test_regression_names_equal_torch_losses_exactly(name, expected):
    loss = losses.get(name)
    assert type(loss) is type(expected)
    assert torch.equal(loss(REG_PREDS, REG_TARGETS), expected(REG_PREDS, REG_TARGETS))


def test_binary_names():
    logit_loss = losses.get("binary_crossentropy", from_logits=True)
    assert torch.equal(logit_loss(BIN_LOGITS, BIN_TARGETS), nn.BCEWithLogitsLoss()(BIN_LOGITS, BIN_TARGETS))
    prob_loss = losses.get("binary_crossentropy")
    assert isinstance(prob_loss, nn.BCELoss)  # metrics and input conversion see a BCELoss
    p = BIN_LOGITS.sigmoid()
    assert torch.equal(prob_loss(p, BIN_TARGETS), nn.BCELoss()(p, BIN_TARGETS))
    # Keras clips probabilities to [1e-7, 1 - 1e-7]; BCELoss alone would give 100 here.
    assert prob_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(-math.log(1e-7), rel=1e-3)
    assert isinstance(losses.get("bce_with_logits"), nn.BCEWithLogitsLoss)


def test_options_reach_the_loss():
    assert losses.get("huber", delta=2.5).delta == 2.5
    assert losses.get("sparse_categorical_crossentropy", from_logits=True, ignore_class=0).ignore_index == 0
    assert losses.get("categorical_crossentropy", from_logits=True, label_smoothing=0.1).label_smoothing == 0.1
    assert losses.get("mse", reduction="sum").reduction == "sum"
    assert losses.get("mse", reduction="sum_over_batch_size").reduction == "mean"


def test_unknown_names_and_misuse_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown loss name 'sparse_categorical_crossentropi'.*Did you mean "
                                         r"'sparse_categorical_crossentropy'.*Known names: .*mse"):
        losses.get("sparse_categorical_crossentropi")
    with pytest.raises(TypeError, match="from_logits applies to Keras' cross-entropy names"):
        losses.get("mse", from_logits=True)
    with pytest.raises(TypeError, match="always take logits"):
        losses.get("cross_entropy", from_logits=True)
    with pytest.raises(TypeError, match=r"pass an instance: CrossEntropyLoss\(\)"):
        losses.get(nn.CrossEntropyLoss)
    with pytest.raises(TypeError, match="already built"):
        losses.get(nn.CrossEntropyLoss(), from_logits=True)
    with pytest.raises(ValueError, match="reduction must be"):
        losses.get("mse", reduction="avg")
    loss = nn.MSELoss()
    assert losses.get(loss) is loss


# --------------------------------------------- Keras' documented numbers (keras.io loss pages)
Y2 = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
P2 = torch.tensor([[0.6, 0.4], [0.4, 0.6]])


@pytest.mark.parametrize(
    "name, preds, targets, expected",
    [
        ("binary_crossentropy", P2, Y2, 0.815),
        ("mse", torch.tensor([[1.0, 1.0], [1.0, 0.0]]), Y2, 0.5),
        ("mae", torch.tensor([[1.0, 1.0], [1.0, 0.0]]), Y2, 0.5),
        ("huber", P2, Y2, 0.155),
        ("log_cosh", torch.tensor([[1.0, 1.0], [0.0, 0.0]]), Y2, 0.108),
        ("kld", P2, Y2, 0.458),
        ("poisson", torch.tensor([[1.0, 1.0], [0.0, 0.0]]), Y2, 0.5),
        ("hinge", P2, Y2, 1.3),
        ("squared_hinge", P2, Y2, 1.86),
        ("categorical_hinge", P2, Y2, 1.4),
        ("cosine_similarity", torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]]), -0.5),
        ("mape", torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.tensor([[2.0, 1.0], [2.0, 3.0]]), 50.0),
        ("msle", torch.tensor([[1.0, 1.0], [1.0, 0.0]]), Y2, 0.240),
    ],
)
def test_keras_documented_values(name, preds, targets, expected):
    assert losses.get(name)(preds, targets).item() == pytest.approx(expected, abs=1e-3)


def test_keras_documented_sparse_and_categorical_values_with_sample_weight():
    probs = torch.tensor([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    labels = torch.tensor([1, 2])
    scce = losses.get("sparse_categorical_crossentropy")
    assert scce(probs, labels).item() == pytest.approx(1.177, abs=1e-3)
    per = losses.per_sample(scce)(probs, labels)
    assert per.tolist() == pytest.approx([0.0513, 2.303], abs=1e-3)
    assert losses.weighted_mean(per, torch.tensor([0.3, 0.7])).item() == pytest.approx(0.814, abs=1e-3)
    cce = losses.get("categorical_crossentropy")
    assert cce(probs, F.one_hot(labels, 3).float()).item() == pytest.approx(1.177, abs=1e-3)
    logits = losses.get("binary_crossentropy", from_logits=True)
    keras_logits = torch.tensor([[-18.6, 0.51], [2.94, -12.8]])
    assert logits(keras_logits, Y2).item() == pytest.approx(0.865, abs=1e-3)


def test_keras_documented_mse_sample_weight():
    preds = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    per = losses.per_sample(nn.MSELoss())(preds, Y2)
    assert per.tolist() == [0.5, 0.5]
    assert losses.weighted_mean(per, torch.tensor([0.7, 0.3])).item() == pytest.approx(0.25)
    assert losses.per_sample(losses.get("binary_crossentropy"))(P2, Y2).tolist() == pytest.approx([0.916, 0.714], abs=1e-3)
    assert losses.weighted_mean(losses.per_sample(losses.get("binary_crossentropy"))(P2, Y2),
                                torch.tensor([1.0, 0.0])).item() == pytest.approx(0.458, abs=1e-3)


# ------------------------------------------------------------------ adapt_targets
def test_adapt_whole_number_float_labels_for_cross_entropy():
    float_labels = LABELS.float()
    for loss in (nn.CrossEntropyLoss(), nn.NLLLoss(), losses.get("sparse_categorical_crossentropy")):
        for targets in (float_labels, float_labels[:, None], LABELS.int(), LABELS.to(torch.uint8)[:, None]):
            adapted = losses.adapt_targets(loss, LOGITS, targets)
            assert adapted.dtype == torch.long and torch.equal(adapted, LABELS)
    assert torch.equal(
        nn.CrossEntropyLoss()(LOGITS, losses.adapt_targets(nn.CrossEntropyLoss(), LOGITS, float_labels[:, None])),
        nn.CrossEntropyLoss()(LOGITS, LABELS),
    )


def test_adapt_one_hot_rows():
    assert losses.adapt_targets(nn.CrossEntropyLoss(), LOGITS, ONE_HOT) is ONE_HOT
    assert losses.adapt_targets(nn.CrossEntropyLoss(), LOGITS, ONE_HOT.long()).dtype == torch.float32
    assert torch.equal(losses.adapt_targets(nn.NLLLoss(), LOGITS, ONE_HOT), LABELS)


def test_adapt_sequence_labels():
    preds = torch.randn(2, 5, 7)  # (N, C, L)
    targets = torch.randint(0, 5, (2, 7)).float()
    assert losses.adapt_targets(nn.CrossEntropyLoss(), preds, targets).dtype == torch.long
    assert losses.adapt_targets(nn.CrossEntropyLoss(), preds, targets[:, None]).shape == (2, 7)


@pytest.mark.parametrize("loss", [nn.BCEWithLogitsLoss(), nn.BCELoss(), F.binary_cross_entropy_with_logits])
def test_adapt_binary_shapes_and_dtypes(loss):
    col = torch.tensor([[0], [1], [1]])
    assert losses.adapt_targets(loss, torch.zeros(3), col).tolist() == [0.0, 1.0, 1.0]
    assert losses.adapt_targets(loss, torch.zeros(3), col).dtype == torch.float32
    assert losses.adapt_targets(loss, torch.zeros(3, 1), torch.tensor([0, 1, 1])).shape == (3, 1)
    assert losses.adapt_targets(loss, torch.zeros(3, 1), torch.tensor([True, False, True])).dtype == torch.float32


def test_adapt_regression_never_broadcasts():
    preds = torch.zeros(4, 1)
    targets = torch.arange(4.0, dtype=torch.float64)
    adapted = losses.adapt_targets(nn.MSELoss(), preds, targets)
    assert adapted.shape == (4, 1) and adapted.dtype == torch.float32
    assert nn.MSELoss()(preds, adapted).item() == pytest.approx((0 + 1 + 4 + 9) / 4)
    assert losses.adapt_targets(nn.L1Loss(), torch.zeros(4), targets[:, None]).shape == (4,)
    assert losses.adapt_targets(losses.get("log_cosh"), torch.zeros(4, 1), targets).shape == (4, 1)


def test_adapt_leaves_unknown_losses_and_non_tensors_alone():
    def my_loss(p, y):
        return (p - y).abs().mean()

    t = torch.tensor([1.0, 2.0])
    assert losses.adapt_targets(my_loss, torch.zeros(2, 1), t) is t
    assert losses.adapt_targets(nn.CrossEntropyLoss(), LOGITS, [1, 2]) == [1, 2]
    assert losses.adapt_targets(nn.CrossEntropyLoss(), LOGITS, LABELS) is LABELS  # nothing to do, no copy


def test_adapt_does_not_read_values():
    # A meta tensor has no values: any host read would raise.
    preds = torch.empty(5, 3, device="meta")
    targets = torch.empty(5, 1, device="meta")
    assert losses.adapt_targets(nn.CrossEntropyLoss(), preds, targets).shape == (5,)
    assert losses.adapt_targets(nn.MSELoss(), torch.empty(5, device="meta"), targets).shape == (5,)


# ------------------------------------------------------------------ check_targets
def test_check_accepts_good_labels():
    for targets in (LABELS, LABELS.float(), LABELS.float()[:, None], ONE_HOT):
        losses.check_targets(nn.CrossEntropyLoss(), LOGITS, targets)
    losses.check_targets(nn.BCEWithLogitsLoss(), BIN_LOGITS, BIN_TARGETS.squeeze(1))
    losses.check_targets(nn.MSELoss(), REG_PREDS, REG_TARGETS)
    losses.check_targets(losses.get("sparse_categorical_crossentropy"), PROBS, LABELS)
    ignored = LABELS.clone()
    ignored[0] = -100
    losses.check_targets(nn.CrossEntropyLoss(), LOGITS, ignored)


@pytest.mark.parametrize(
    "targets, what, shown",
    [
        (torch.tensor([0.0, 0.5, 1.0, 2.0, 1.5, 0.0]), "not whole numbers", "0.5, 1.5"),
        (torch.tensor([0, 1, 2, 3, 4, 7]), r"outside 0\.\.3", "4, 7"),
        (torch.tensor([-1, 1, 2, 3, 0, 0]), r"outside 0\.\.3", "-1"),
        (torch.tensor([0.0, float("nan"), 1.0, 2.0, 1.0, 0.0]), "NaN", "nan"),
    ],
)
def test_check_refuses_labels_that_are_not_class_ids(targets, what, shown):
    for loss in (nn.CrossEntropyLoss(), nn.NLLLoss(), losses.get("sparse_categorical_crossentropy", from_logits=True)):
        with pytest.raises(ValueError, match=rf"CrossEntropyLoss|NLLLoss") as info:
            losses.check_targets(loss, LOGITS, targets)
        message = str(info.value)
        assert "needs class indices 0..3" in message and "4 classes" in message
        assert f"include {shown}" in message
        assert re.search(what, message)
        assert "Fix:" in message


def test_check_one_based_labels_suggest_remapping():
    with pytest.raises(ValueError, match=r"include 4 \(outside 0\.\.3\).*y - y.min\(\)"):
        losses.check_targets(nn.CrossEntropyLoss(), LOGITS, LABELS + 1)


def test_check_shapes_and_binary_values():
    with pytest.raises(ValueError, match=r"targets of shape \(6, 2\) do not fit outputs of shape \(6, 4\)"):
        losses.check_targets(nn.CrossEntropyLoss(), LOGITS, torch.zeros(6, 2))
    with pytest.raises(ValueError, match=r"needs targets in \[0, 1\].*include 2, 3.*sparse_categorical"):
        losses.check_targets(nn.BCEWithLogitsLoss(), BIN_LOGITS, torch.tensor([0.0, 1, 2, 3, 0, 1]))
    with pytest.raises(ValueError, match=r"targets of shape \(6, 3\) do not match the net's outputs of shape \(6, 1\)"):
        losses.check_targets(nn.BCEWithLogitsLoss(), BIN_LOGITS, torch.zeros(6, 3))
    with pytest.raises(ValueError, match=r"takes probabilities.*nn.Sigmoid\(\)"):
        losses.check_targets(nn.BCELoss(), BIN_LOGITS * 10, BIN_TARGETS)
    with pytest.raises(ValueError, match=r"MSELoss\(\): targets of shape \(6, 3\).*broadcast"):
        losses.check_targets(nn.MSELoss(), REG_PREDS, torch.zeros(6, 3))
    with pytest.raises(ValueError, match="NaN"):
        losses.check_targets(nn.MSELoss(), REG_PREDS, torch.full((6, 2), float("nan")))


def test_check_logits_against_from_logits():
    with pytest.raises(ValueError, match=r"takes probabilities \(from_logits=False.*from_logits=True"):
        losses.check_targets(losses.get("sparse_categorical_crossentropy"), LOGITS, LABELS)
    with pytest.warns(UserWarning, match="look like probabilities"):
        losses.check_targets(nn.CrossEntropyLoss(), PROBS, LABELS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses.check_targets(nn.CrossEntropyLoss(), LOGITS, LABELS)


def test_check_nll_one_hot_rows_must_be_one_hot():
    losses.check_targets(nn.NLLLoss(), LOGITS, ONE_HOT)
    with pytest.raises(ValueError, match="only one-hot"):
        losses.check_targets(nn.NLLLoss(), LOGITS, torch.full((6, 4), 0.25))


# ------------------------------------------------------------------ per-sample and weights
def test_per_sample_of_torch_modules_and_functions_matches_a_hand_computation():
    ce = losses.per_sample(nn.CrossEntropyLoss())(LOGITS, LABELS)
    hand = -LOGITS.log_softmax(1)[torch.arange(6), LABELS]
    assert ce.shape == (6,) and torch.allclose(ce, hand)
    assert torch.allclose(losses.per_sample(F.cross_entropy)(LOGITS, LABELS), hand)
    mse = losses.per_sample(nn.MSELoss())(REG_PREDS, REG_TARGETS)
    assert torch.allclose(mse, ((REG_PREDS - REG_TARGETS) ** 2).mean(1))
    bce = losses.per_sample(nn.BCEWithLogitsLoss())(BIN_LOGITS, BIN_TARGETS)
    assert bce.shape == (6,)
    # the mean of the per-sample losses is the loss itself
    assert torch.allclose(bce.mean(), nn.BCEWithLogitsLoss()(BIN_LOGITS, BIN_TARGETS))


def test_per_sample_leaves_the_loss_unchanged_and_shares_its_weight():
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0])
    loss = nn.CrossEntropyLoss(weight=weight)
    per = losses.per_sample(loss)(LOGITS, LABELS)
    assert loss.reduction == "mean"
    hand = -LOGITS.log_softmax(1)[torch.arange(6), LABELS] * weight[LABELS]
    assert torch.allclose(per, hand)


def test_per_sample_refuses_plain_functions():
    def my_loss(p, y):
        return ((p - y) ** 2).mean()

    with pytest.raises(TypeError, match=r"the loss .*my_loss has no 'reduction'.*nn.Module with a reduction"):
        losses.per_sample(my_loss)


def test_per_sample_refuses_a_module_that_ignores_reduction():
    class Stubborn(nn.Module):
        reduction = "mean"

        def forward(self, p, y):
            return ((p - y) ** 2).mean()

    with pytest.raises(TypeError, match="honour reduction='none'"):
        losses.per_sample(Stubborn())(REG_PREDS, REG_TARGETS)


def test_weighted_mean_is_sum_of_weighted_losses_over_n():
    per = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([0.0, 1.0, 0.5, 2.0])
    assert losses.weighted_mean(per, w).item() == pytest.approx((0 + 2 + 1.5 + 8) / 4)
    assert losses.weighted_mean(per, w[:, None]).item() == pytest.approx((0 + 2 + 1.5 + 8) / 4)
    assert losses.weighted_mean(per, None).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match=r"sample weights of shape \(3,\) do not match the 4"):
        losses.weighted_mean(per, torch.ones(3))


def test_class_weight_to_sample_weight():
    cw = {0: 1.0, 1: 2.0, 3: 0.5}
    assert losses.class_weight_to_sample_weight(cw, LABELS).tolist() == [1.0, 0.5, 2.0, 1.0, 1.0, 1.0]
    assert losses.class_weight_to_sample_weight(cw, LABELS.float()[:, None]).tolist() == [1.0, 0.5, 2.0, 1.0, 1.0, 1.0]
    assert losses.class_weight_to_sample_weight(cw, ONE_HOT).tolist() == [1.0, 0.5, 2.0, 1.0, 1.0, 1.0]
    binary = losses.class_weight_to_sample_weight({0: 1.0, 1: 5.0}, BIN_TARGETS)
    assert binary.tolist() == [1.0, 5.0, 5.0, 1.0, 5.0, 1.0]
    # The whole Keras chain: class weights -> sample weights -> weighted per-sample mean.
    per = losses.per_sample(nn.CrossEntropyLoss())(LOGITS, LABELS)
    w = losses.class_weight_to_sample_weight(cw, LABELS)
    assert losses.weighted_mean(per, w).item() == pytest.approx(float((per * w).sum() / 6))
    with pytest.raises(ValueError, match=r"the entry 'a': 1.0"):
        losses.class_weight_to_sample_weight({"a": 1.0}, LABELS)
    with pytest.raises(TypeError, match="non-empty dict"):
        losses.class_weight_to_sample_weight([1.0, 2.0], LABELS)


def test_own_losses_reduce_like_torch_losses():
    loss = losses.get("log_cosh")
    per = losses.per_sample(loss)(REG_PREDS, REG_TARGETS)
    assert per.shape == (6,)
    assert torch.allclose(loss(REG_PREDS, REG_TARGETS), per.mean())
    assert loss.reduction == "mean"
    assert torch.allclose(losses.get("log_cosh", reduction="sum")(REG_PREDS, REG_TARGETS), per.sum())
    big = torch.tensor([[100.0]])
    assert losses.get("log_cosh")(big, torch.zeros(1, 1)).item() == pytest.approx(100 - math.log(2))


# ------------------------------------------------- end to end, through the default steps
def wired_model(net):
    """torchfit.Model: its train step checks the first batch's labels once and adapts every batch."""
    import torchfit

    return torchfit.Model(net)


def _digits_like(labels):
    torch.manual_seed(0)
    x = torch.randn(len(labels), 4) + labels.reshape(len(labels), -1)[:, :1].float()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=16)


def test_keras_float_labels_train_like_integer_labels():
    labels = torch.randint(0, 3, (64,))
    results = []
    for targets in (labels, labels.float(), labels.float()[:, None]):
        torch.manual_seed(1)
        model = wired_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
        model.compile(loss=losses.get("sparse_categorical_crossentropy", from_logits=True), device="cpu")
        model.fit(2, _digits_like(targets), verbose=0)
        results.append(model.net.state_dict())
    for other in results[1:]:
        for key in results[0]:
            assert torch.equal(results[0][key], other[key]), key


def test_fractional_labels_are_refused_before_any_weight_changes():
    labels = torch.tensor([0.0, 0.5, 1.0, 2.0] * 16)
    torch.manual_seed(1)
    model = wired_model(nn.Sequential(nn.Linear(4, 3)))
    model.compile(loss=nn.CrossEntropyLoss(), device="cpu")
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    with pytest.raises(Exception) as info:
        model.fit(1, _digits_like(labels), verbose=0)
    chain = [info.value, info.value.__cause__]
    assert any(isinstance(e, losses.TargetError) and "not whole numbers" in str(e) for e in chain)
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())


def test_weighting_helpers_do_not_read_values():
    # Meta tensors have no values: any host read (a sync on CUDA) would raise.
    targets = torch.empty(8, device="meta")
    w = losses.class_weight_to_sample_weight({0: 1.0, 1: 4.0}, targets)
    assert w.shape == (8,) and w.device.type == "meta"
    per = losses.per_sample(nn.CrossEntropyLoss())(torch.empty(8, 3, device="meta"),
                                                   torch.empty(8, dtype=torch.long, device="meta"))
    assert losses.weighted_mean(per, w).shape == ()


def test_class_weight_wiring_matches_a_hand_written_keras_loop():
    """The class-weight wiring the lead adds to the step, here through compute_loss, trains
    exactly like a hand-written loop using Keras' sum(w * l) / N."""
    import torchfit

    class_weight = {0: 1.0, 1: 3.0, 2: 0.0}
    loss_fn = nn.CrossEntropyLoss()
    per = losses.per_sample(loss_fn)

    class Weighted(torchfit.Model):
        def compute_loss(self, preds, targets):
            w = losses.class_weight_to_sample_weight(class_weight, targets)
            return losses.weighted_mean(per(preds, targets), w)

    torch.manual_seed(0)
    x, y = torch.randn(48, 4), torch.randint(0, 3, (48,))
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)

    torch.manual_seed(1)
    model = Weighted(nn.Linear(4, 3))
    model.compile(loss=loss_fn, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")
    model.fit(2, dl, verbose=0)

    torch.manual_seed(1)
    net = nn.Linear(4, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    table = torch.tensor([1.0, 3.0, 0.0])
    for _ in range(2):
        for xb, yb in dl:
            opt.zero_grad()
            losses_b = nn.functional.cross_entropy(net(xb), yb, reduction="none")
            ((losses_b * table[yb]).sum() / len(yb)).backward()
            opt.step()
    for key, value in net.state_dict().items():
        assert torch.allclose(model.net.state_dict()[key], value, atol=1e-7), key


def test_one_output_with_cross_entropy_names_the_binary_fix_and_counts_in_words():
    import torchfit
    from conftest import binary, loader, mlp

    model = torchfit.Model(mlp(6, 1)).compile(nn.CrossEntropyLoss(), device="cpu")
    before = [p.detach().clone() for p in model.parameters()]
    ds = binary(40)
    labels = torch.utils.data.TensorDataset(ds.tensors[0], ds.tensors[1].squeeze(1).long())  # 0/1 class ids
    with pytest.raises(losses.TargetError) as caught:
        model.fit(1, loader(labels, 20), verbose=0)
    message = str(caught.value)
    assert "1 output" in message and "nn.BCEWithLogitsLoss()" in message
    assert not re.search(r"\b1 classes\b", message)
    assert all(p.equal(b) for p, b in zip(model.parameters(), before))  # refused before any step


def test_counts_in_messages_agree_with_their_number():
    from torchfit.diagnose import _loss_hint  # the words of a failed step's first line
    from torchfit.formatting import count_of

    assert count_of(1, "class", "classes") == "1 class" and count_of(2, "class", "classes") == "2 classes"
    with pytest.raises(losses.TargetError, match=r"the net outputs 2 classes\)"):
        losses.targets.check_targets(nn.CrossEntropyLoss(), torch.zeros(2, 2), torch.tensor([0, 5]))
    hint = _loss_hint(nn.CrossEntropyLoss(), torch.zeros(4, 1), torch.tensor([0, 1, 1, 0]))
    assert "the net outputs 1 class (indices 0 to 0)" in hint
