"""The shortcuts that keep a unit-test-sized fit cheap (issue 24) give what the general paths give.

The costs themselves are measured by benchmarks/tiny_fit.py (no test here times anything).
"""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from torchfit import losses
from torchfit.callbacks.history import frame


def pandas_frame(rows, first):
    """What ``frame`` gave before its shortcut: pandas reading the list of dicts."""
    columns = list(first)
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return pd.DataFrame(list(rows), columns=columns)


@pytest.mark.parametrize("rows", [
    [{"epoch": 1, "loss": 0.5, "accuracy": 0.25}, {"epoch": 2, "loss": 0.4, "accuracy": 0.75}],
    [{"epoch": 1, "step": 8, "global_step": 8, "lr": 1e-2, "loss": float("nan")}],
    [{"epoch": 1, "loss": float("inf")}, {"epoch": 2, "loss": -0.0}],
    [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4, "lr": 0.1}],  # a key missing from a row
    [{"epoch": 1, "loss": 1}, {"epoch": 2, "loss": 0.5}],  # ints and floats in one column
    [{"epoch": 1, "stopped": True}, {"epoch": 2, "stopped": False}],  # bools are not ints here
    [{"epoch": 1, "loss": np.float64(0.5)}, {"epoch": 2, "loss": 0.5}],  # a numpy scalar
    [{"epoch": 1, "note": "warm-up"}],
    [{"epoch": 1, "big": 2 ** 63}, {"epoch": 2, "big": 2 ** 70}],  # past int64
    [{"epoch": 1, "loss": None}],
    [],
])
def test_history_frame_equals_what_pandas_builds_from_the_rows(rows):
    got, expected = frame(rows, ["epoch"]), pandas_frame(rows, ["epoch"])
    pd.testing.assert_frame_equal(got, expected, check_exact=True, check_column_type=True, check_index_type=True)
    assert got.columns.dtype == expected.columns.dtype and list(got.dtypes) == list(expected.dtypes)


def test_history_frames_are_independent_of_each_other_and_of_the_rows():
    rows = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    first = frame(rows, ["epoch"])
    first.columns.name = "figure"  # the column labels are cached: a frame must not share them
    first.loc[0, "loss"] = 9.0
    second = frame(rows, ["epoch"])
    assert second.columns.name is None and second.loc[0, "loss"] == 0.5 and rows[0]["loss"] == 0.5


LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0], [1.0, 1.0, 1.0], [-2.0, 4.0, 0.0]])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_check_targets_reads_integer_labels_in_one_go_and_still_names_bad_ones(dtype):
    losses.check_targets(nn.CrossEntropyLoss(), LOGITS, torch.tensor([0, 1, 2, 2]).to(dtype))
    with pytest.raises(ValueError, match=r"include 3 \(outside 0\.\.2\)"):
        losses.check_targets(nn.CrossEntropyLoss(), LOGITS, torch.tensor([0, 1, 3, 2]).to(dtype))


def test_check_targets_shortcut_keeps_ignore_index_and_empty_batches():
    losses.check_targets(nn.CrossEntropyLoss(), LOGITS, torch.tensor([0, -100, 2, 1]))
    losses.check_targets(nn.CrossEntropyLoss(ignore_index=7), LOGITS, torch.tensor([0, 7, 2, 1]))
    with pytest.raises(ValueError, match=r"include -1 \(outside 0\.\.2\)"):
        losses.check_targets(nn.CrossEntropyLoss(), LOGITS, torch.tensor([0, -1, 2, 1]))
    losses.check_targets(nn.NLLLoss(), LOGITS[:0], torch.tensor([], dtype=torch.long))


def test_probability_outputs_still_warn_and_logits_or_nan_do_not():
    probs = LOGITS.softmax(1)
    with pytest.warns(UserWarning, match="look like probabilities"):
        losses.check_targets(nn.CrossEntropyLoss(), probs, torch.tensor([0, 1, 2, 2]))
    with pytest.raises(ValueError, match="takes probabilities"):
        losses.check_targets(losses.get("sparse_categorical_crossentropy"), torch.full((4, 3), float("nan")),
                             torch.tensor([0, 1, 2, 2]))
    losses.check_targets(losses.get("sparse_categorical_crossentropy"), probs, torch.tensor([0, 1, 2, 2]))


def test_history_frame_without_pandas_shortcut_is_the_same(monkeypatch):
    rows = [{"epoch": 1, "loss": 0.5, "accuracy": 0.25}, {"epoch": 2, "loss": 0.4, "accuracy": 0.75}]
    monkeypatch.delattr(pd.DataFrame, "_from_arrays")  # a pandas that lacks it takes the public constructor
    pd.testing.assert_frame_equal(frame(rows, ["epoch"]), pandas_frame(rows, ["epoch"]), check_exact=True)


def test_checks_without_aminmax_take_the_full_path(monkeypatch):
    def unsupported(*args, **kwargs):
        raise NotImplementedError("aminmax is not implemented for this dtype on this device")

    monkeypatch.setattr(torch, "aminmax", unsupported)  # as on a device without it
    losses.check_targets(nn.CrossEntropyLoss(), LOGITS, torch.tensor([0, 1, 2, 2]))
    with pytest.raises(ValueError, match=r"include 3 \(outside 0\.\.2\)"):
        losses.check_targets(nn.CrossEntropyLoss(), LOGITS, torch.tensor([0, 1, 3, 2]))
    with pytest.warns(UserWarning, match="look like probabilities"):
        losses.check_targets(nn.CrossEntropyLoss(), LOGITS.softmax(1), torch.tensor([0, 1, 2, 2]))


def test_an_empty_batch_of_logits_is_not_taken_for_probabilities():
    """all() of an empty tensor is True: an empty batch used to warn that the logits look like probabilities."""
    import warnings

    from torch import nn

    from torchfit.losses import check_targets

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_targets(nn.CrossEntropyLoss(), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
