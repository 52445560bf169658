"""torchfit.batch: the one walk over nested tensors and what is built on it."""
from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from torchfit.batch import (batch_size_of, call_net, concat, describe, detach, first_tensor, map_tensors,
                            predict_inputs, split_batch, take_rows, tensors, to_device)
from torchfit.errors import BatchFormatError

Pair = namedtuple("Pair", "a b")


def nested(n=4):
    return {"x": torch.arange(n * 2.0).reshape(n, 2), "extra": [Pair(torch.ones(n), "tag"), (torch.zeros(n, 1),)],
            "count": 3}


def test_map_tensors_keeps_every_container_and_leaves_the_rest():
    out = map_tensors(lambda t: t + 1, nested())
    assert isinstance(out["extra"][0], Pair) and out["extra"][0].b == "tag" and out["count"] == 3
    assert isinstance(out["extra"][1], tuple) and isinstance(out["extra"], list)
    assert torch.equal(out["extra"][0].a, torch.full((4,), 2.0))
    assert torch.equal(out["x"], nested()["x"] + 1)


def test_map_tensors_zips_several_objects_of_one_structure():
    a, b = nested(), nested()
    out = map_tensors(torch.add, a, b)
    assert torch.equal(out["x"], a["x"] * 2) and torch.equal(out["extra"][1][0], torch.zeros(4, 1))


def test_tensors_and_first_tensor_walk_in_container_order():
    found = list(tensors(nested()))
    assert [tuple(t.shape) for t in found] == [(4, 2), (4,), (4, 1)]
    assert first_tensor(nested()) is not None and first_tensor(["a", 1]) is None
    t = torch.ones(2)
    assert first_tensor(t) is t


def test_batch_size_of_counts_the_first_tensor_rows():
    assert batch_size_of(nested(5)) == 5
    assert batch_size_of(None, (torch.tensor(2.0),)) == 1
    with pytest.raises(ValueError, match="could not find a tensor"):
        batch_size_of({"a": 1})


def test_detach_reaches_namedtuples():
    w = torch.ones(3, requires_grad=True)
    out = detach(Pair(w * 2, {"k": [w * 3]}))
    assert isinstance(out, Pair) and not out.a.requires_grad and not out.b["k"][0].requires_grad


def test_to_device_moves_every_tensor():
    out = to_device(nested(), torch.device("meta"))
    assert all(t.device.type == "meta" for t in tensors(out)) and out["extra"][0].b == "tag"


def test_describe_and_take_rows():
    assert describe(nested(2)) == {"x": [2, 2], "extra": [[[2], "str"], [[2, 1]]], "count": "int"}
    cut = take_rows({"p": torch.arange(6).reshape(3, 2), "scalar": torch.tensor(1.0), "other": torch.ones(5)}, 2, 3)
    assert cut["p"].shape == (2, 2) and cut["scalar"].dim() == 0 and cut["other"].shape == (5,)


def test_concat_keeps_structure_and_stacks_scalars():
    chunks = [{"y": torch.ones(2, 3), "t": Pair(torch.zeros(2), torch.tensor(1.0))},
              {"y": torch.ones(1, 3), "t": Pair(torch.zeros(1), torch.tensor(2.0))}]
    out = concat(chunks)
    assert out["y"].shape == (3, 3) and isinstance(out["t"], Pair) and torch.equal(out["t"].b, torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="predict_step returned str"):
        concat(["a", "b"])


def test_split_batch_and_predict_inputs():
    x, y = torch.ones(2), torch.zeros(2)
    assert split_batch((x, y), "fit") == (x, y, None)
    w = torch.tensor([1.0, 2.0])
    assert split_batch((x, y, w), "fit")[2] is w  # Keras' (x, y, sample_weight)
    with pytest.raises(BatchFormatError, match=r"third item is \[2, 2\], not one weight per sample \(2\)"):
        split_batch((x, y, torch.ones(2, 2)), "fit")
    with pytest.raises(BatchFormatError, match=r"fit expects each batch as a pair \(x, y\) or \(x, y, "
                                               r"sample_weight\); the loader yielded a tuple of length 4"):
        split_batch((x, y, y, y), "fit")
    assert predict_inputs((x, y)) is x and predict_inputs([x]) is x and predict_inputs(x) is x
    assert predict_inputs((x, y, w)) is x
    with pytest.raises(BatchFormatError, match="predict expects batches as x, "):
        predict_inputs((x, y, y, y))


def test_call_net_spreads_tuples_and_dicts():
    def net(*args, **kwargs):
        return args, kwargs

    x = torch.ones(1)
    assert call_net(net, x) == ((x,), {})
    assert call_net(net, (x, x)) == ((x, x), {})
    assert call_net(net, {"a": x}) == ((), {"a": x})
