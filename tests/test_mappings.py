"""Mapping batches, nets that compute their own loss, output objects, trainable-only checkpoints and
streams split across ranks, with plain torch (the Hugging Face versions: test_huggingface.py).

The nets here behave as a Hugging Face model does (keyword inputs, ``labels=`` makes them compute
their loss, a dataclass output with ``loss`` and ``logits``) without the package."""
from __future__ import annotations

import collections
import dataclasses
from typing import Optional

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

import torchfit
from torchfit.batch import split_batch, to_device
from torchfit.distributed.sharding import LiveCount, RankShard, shard
from torchfit.errors import BatchFormatError, CheckpointError, MetricError, StepError
from torchfit.outputs import OutputFormat, OwnLoss


@dataclasses.dataclass
class Output:
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    hidden: Optional[torch.Tensor] = None


class KeywordNet(nn.Module):
    """``net(features=..., mask=..., labels=None) -> Output``: cross-entropy when given labels."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, features, mask, labels=None):
        hidden = torch.relu(self.body(features * mask))
        logits = self.head(hidden)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return Output(loss=loss, logits=logits, hidden=hidden)


class Encoding(collections.UserDict):
    """A mapping that is not a dict, as transformers' BatchEncoding."""


def samples(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return [{"features": x[i], "mask": torch.ones(4), "labels": y[i]} for i in range(n)]


def encoding_collate(items):
    return Encoding(torch.utils.data.default_collate(items))


def hand_loop(net, batches, lr=0.1, epochs=2):
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(epochs):
        for b in batches:
            opt.zero_grad()
            net(**b).loss.backward()
            opt.step()
    return net


def test_own_loss_on_mapping_batches_equals_a_hand_written_loop():
    data = samples()
    dl = DataLoader(data, batch_size=8, collate_fn=encoding_collate)
    model = torchfit.Model(KeywordNet()).compile(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), metrics=["accuracy"])
    history = model.fit(2, dl, dl, verbose=0)
    ref = hand_loop(KeywordNet(), list(DataLoader(data, batch_size=8)))
    for k, v in ref.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v), k
    # the epoch figures: the sample-weighted mean of the net's own loss, accuracy of its logits
    with torch.no_grad():
        full = {k: torch.stack([d[k] for d in data]) for k in data[0]}
        out = ref(**full)
    assert history["val_loss"].iloc[-1] == pytest.approx(float(out.loss), rel=1e-5)
    assert history["val_accuracy"].iloc[-1] == pytest.approx(float((out.logits.argmax(1) == full["labels"])
                                                                  .float().mean()), rel=1e-6)
    assert model.evaluate(dl)["val_loss"] == pytest.approx(float(out.loss), rel=1e-5)


def test_mapping_batches_with_a_loss_of_torchfits_take_the_logits():
    data = samples()
    dl = DataLoader(data, batch_size=8)
    model = torchfit.Model(KeywordNet()).compile(nn.CrossEntropyLoss(), lambda p: torch.optim.SGD(p, lr=0.1))
    model.fit(2, dl, verbose=0)
    ref = KeywordNet()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        for b in DataLoader(data, batch_size=8):
            opt.zero_grad()
            y = b.pop("labels")
            nn.functional.cross_entropy(ref(**b).logits, y).backward()  # the net never sees the labels
            opt.step()
    for k, v in ref.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v), k


def test_target_key_names_another_key_and_weights_come_by_key():
    data = [{"features": d["features"], "mask": d["mask"], "y": d["labels"], "sample_weight": torch.tensor(2.0)}
            for d in samples(16)]
    model = torchfit.Model(KeywordNet()).compile(nn.CrossEntropyLoss(), "sgd", target_key="y")
    x, y, w = split_batch(next(iter(DataLoader(data, batch_size=4))), "fit", "y")
    assert sorted(x) == ["features", "mask"] and y.shape == (4,) and w.tolist() == [2.0] * 4
    model.fit(1, DataLoader(data, batch_size=4), verbose=0)
    # weighted with equal weights: the loss equals the unweighted one
    assert model.evaluate(DataLoader(data, batch_size=4))["val_loss"] > 0


def test_predict_returns_the_logits_or_every_field_in_dataset_order():
    data = samples(20)
    dl = DataLoader(data, batch_size=6)
    model = torchfit.Model(KeywordNet()).compile()
    logits = model.predict(dl)
    full = {k: torch.stack([d[k] for d in data]) for k in ("features", "mask")}
    with torch.no_grad():
        out = model.net(**full)
    torch.testing.assert_close(logits, out.logits)
    every = model.compile(output_key=None).predict(dl)  # every field but the batch loss
    assert sorted(every) == ["hidden", "logits"]
    torch.testing.assert_close(every["hidden"], out.hidden)


def test_mapping_without_the_target_key_names_the_fix():
    data = [{"features": d["features"], "mask": d["mask"], "label": d["labels"]} for d in samples(8)]
    model = torchfit.Model(KeywordNet()).compile()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    with pytest.raises(StepError) as info:
        model.fit(1, DataLoader(data, batch_size=4), verbose=0)
    assert isinstance(info.value.__cause__, BatchFormatError)
    assert "no 'labels'" in str(info.value) and "compile(target_key='label')" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.net.state_dict().items())


def test_own_loss_with_a_net_that_returns_no_loss_names_the_fix():
    net = nn.Sequential(nn.Linear(4, 3))
    dl = DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=4)
    model = torchfit.Model(net).compile()  # no loss: the net would have to compute it
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(StepError, match=r"compile\(loss=None\) trains on the loss the net computes itself.*"
                                        r"returned a Tensor of shape \(4, 3\).*compile\(loss=nn.CrossEntropyLoss"):
        model.fit(1, dl, verbose=0)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    # an output object without a loss (a net that ignores its labels)

    class NoLoss(KeywordNet):
        def forward(self, features, mask, labels=None):
            return super().forward(features, mask)

    model = torchfit.Model(NoLoss()).compile()
    with pytest.raises(StepError, match=r"returned a Output with the fields \['logits', 'hidden'\]"):
        model.fit(1, DataLoader(samples(8), batch_size=4), verbose=0)


def test_an_output_metrics_cannot_read_names_the_fields():
    model = torchfit.Model(KeywordNet()).compile(metrics=["accuracy"], output_key="scores")
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    with pytest.raises(MetricError, match=r"field 'scores'.*fields \['loss', 'logits', 'hidden'\].*"
                                          r"compile\(output_key="):
        model.fit(1, DataLoader(samples(8), batch_size=4), verbose=0)
    assert all(torch.equal(v, before[k]) for k, v in model.net.state_dict().items())


def test_compile_checks_its_new_arguments():
    with pytest.raises(TypeError, match="target_key"):
        torchfit.Model(KeywordNet()).compile(target_key=3)
    with pytest.raises(TypeError, match=r"gradient_checkpointing_enable\(\), which KeywordNet does not have"):
        torchfit.Model(KeywordNet()).compile(gradient_checkpointing=True)
    enabled = []
    net = KeywordNet()
    net.gradient_checkpointing_enable = lambda: enabled.append(True)
    torchfit.Model(net).compile(gradient_checkpointing=True)
    assert enabled == [True]
    assert isinstance(torchfit.Model(KeywordNet()).compile().loss_fn, OwnLoss)


def test_mappings_that_are_not_dicts_move_and_split():
    batch = Encoding(features=torch.ones(2, 4), labels=torch.tensor([0, 1]))
    moved = to_device(batch, torch.device("cpu"))
    assert isinstance(moved, dict) and torch.equal(moved["labels"], batch["labels"])
    fmt = OutputFormat(own_loss=True)
    x, y, w = split_batch(batch, "fit", fmt.target_key, fmt.own_loss)
    assert sorted(x) == ["features", "labels"] and w is None  # the net computes its loss from labels=


# ------------------------------------------------------------ trainable-only checkpoints
def frozen_base(seed: int = 0) -> nn.Module:
    net = KeywordNet(seed)
    net.body.requires_grad_(False)  # the base; only the head trains
    return net


def test_trainable_only_checkpoint_holds_the_head_and_resumes_exactly(tmp_path):
    dl = DataLoader(samples(), batch_size=8)

    def fresh():
        return torchfit.Model(frozen_base()).compile(optimizer="adam", metrics=["accuracy"])

    straight = fresh()
    straight.fit(4, dl, verbose=0)
    first = fresh()
    first.fit(2, dl, verbose=0)
    path = tmp_path / "head.pt"
    first.save_checkpoint(path, trainable_only=True)
    saved = torch.load(path, weights_only=True)
    assert sorted(saved["net"]) == ["head.bias", "head.weight"] and saved["trainable_only"] is True
    resumed = fresh().load_checkpoint(path)
    resumed.fit(4, dl, verbose=0, resume_from=path)
    for k, v in straight.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[k], v), k
    assert resumed.history.equals(straight.history)
    # onto a net where more trains than the file holds: refused, nothing changed
    other = torchfit.Model(KeywordNet()).compile(optimizer="adam")
    before = {k: v.clone() for k, v in other.net.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"without body.weight, body.bias|without body.bias, body.weight"):
        other.load_checkpoint(path)
    assert all(torch.equal(v, before[k]) for k, v in other.net.state_dict().items())


# ------------------------------------------------------------ streams across ranks
class Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        for i in range(self.n):
            yield {"features": torch.full((4,), float(i)), "mask": torch.ones(4), "labels": torch.tensor(i % 3)}


class Ctx:
    def __init__(self, rank, world):
        self.rank, self.world_size = rank, world


@pytest.mark.parametrize("n", [10, 11, 1])
def test_rank_shards_see_each_sample_once(n):
    world = 3
    seen, lengths = [], []
    for rank in range(world):
        dl = shard(Ctx(rank, world), DataLoader(Stream(n), batch_size=2), "dl_train")
        items = [int(v) for b in dl for v in b["features"][:, 0]]
        real = dl.dataset.real
        seen += items[:real]
        lengths.append(len(items))
        assert LiveCount(dl.dataset) - 0 == real
    assert sorted(seen) == list(range(n))  # each sample once
    assert len(set(lengths)) == 1  # every rank takes the same number of steps


def test_streams_that_cannot_be_split_exactly_are_refused():
    with pytest.raises(ValueError, match="num_workers=2.*could not be exact"):
        shard(Ctx(0, 2), DataLoader(Stream(4), batch_size=2, num_workers=2), "dl_train")
    with pytest.raises(ValueError, match="batch_size=None"):
        shard(Ctx(0, 2), DataLoader(Stream(4), batch_size=None), "dl_train")


def test_a_stream_trains_in_one_process():
    model = torchfit.Model(KeywordNet()).compile(metrics=["accuracy"])
    history = model.fit(2, DataLoader(Stream(12), batch_size=4), validation_data=Stream(6), verbose=0)
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert model.predict(DataLoader(Stream(5), batch_size=2)).shape == (5, 3)


@pytest.mark.slow
def test_torchfit_imports_no_hugging_face_package():
    import subprocess
    import sys

    code = ("import sys, torchfit, torchfit.outputs, torchfit.finetuning; "
            "print([m for m in ('transformers', 'peft', 'datasets', 'timm') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_confusion_matrix_reads_the_labels_of_mapping_batches():
    data = samples(30)
    dl = DataLoader(data, batch_size=8, collate_fn=encoding_collate)
    model = torchfit.Model(KeywordNet()).compile(metrics=["accuracy"])
    model.fit(2, dl, verbose=0)
    counts = model.confusion_matrix(dl)
    preds = model.predict(dl).argmax(1)
    labels = torch.stack([d["labels"] for d in data])
    assert int(counts.to_numpy().trace()) == int((preds == labels).sum())
    assert int(counts.to_numpy().sum()) == 30


def test_sample_weights_by_key_weigh_the_loss_and_are_checked():
    data = samples(16)
    weighted = [{**d, "sample_weight": torch.tensor(3.0 if i < 8 else 1.0)} for i, d in enumerate(data)]
    model = torchfit.Model(KeywordNet()).compile(nn.CrossEntropyLoss(), "sgd")
    got = model.evaluate(DataLoader(weighted, batch_size=16))["val_loss"]
    with torch.no_grad():
        full = {k: torch.stack([d[k] for d in data]) for k in data[0]}
        per = nn.functional.cross_entropy(model.net(full["features"], full["mask"]).logits, full["labels"],
                                          reduction="none")
    w = torch.tensor([3.0] * 8 + [1.0] * 8)
    assert got == pytest.approx(float((per * w).sum() / 16), rel=1e-5)  # Keras: sum(w_i * loss_i) / N
    bad = [{**d, "sample_weight": torch.ones(2)} for d in data]
    with pytest.raises(StepError, match="'sample_weight' as one weight per sample"):
        model.fit(1, DataLoader(bad, batch_size=4), verbose=0)


@dataclasses.dataclass
class TwoHeads:
    logits: torch.Tensor
    aux: torch.Tensor


class TwoHeadNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 8)
        self.a, self.b = nn.Linear(8, 3), nn.Linear(8, 1)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return TwoHeads(logits=self.a(h), aux=self.b(h))


def test_an_output_object_with_one_loss_per_field():
    g = torch.Generator().manual_seed(0)
    x, y, z = torch.randn(24, 4, generator=g), torch.randint(0, 3, (24,), generator=g), torch.randn(24, 1, generator=g)
    ds = [(x[i], {"logits": y[i], "aux": z[i]}) for i in range(24)]
    model = torchfit.Model(TwoHeadNet()).compile({"logits": nn.CrossEntropyLoss(), "aux": nn.MSELoss()}, "sgd",
                                                 {"logits": ["accuracy"]}, loss_weights={"aux": 0.5})
    history = model.fit(1, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8), verbose=0)
    assert {"loss", "logits_loss", "aux_loss", "logits_accuracy", "val_aux_loss"} <= set(history.columns)
    with torch.no_grad():
        out = model.net(x)
    want = nn.functional.cross_entropy(out.logits, y) + 0.5 * nn.functional.mse_loss(out.aux, z)
    assert history["val_loss"].iloc[-1] == pytest.approx(float(want), rel=1e-5)
    every = model.predict(DataLoader(ds, batch_size=8))
    assert sorted(every) == ["aux", "logits"] and every["aux"].shape == (24, 1)


class SpanNet(nn.Module):
    """A question-answering shape: two targets (start_positions, end_positions), its own loss."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(4, 2)

    def forward(self, features, start_positions=None, end_positions=None):
        start, end = self.proj(features).unbind(-1)  # (N, L) each
        loss = None
        if start_positions is not None:
            loss = (nn.functional.cross_entropy(start, start_positions)
                    + nn.functional.cross_entropy(end, end_positions)) / 2
        return {"loss": loss, "start_logits": start, "end_logits": end}


def test_several_target_keys_reach_a_net_with_its_own_loss():
    g = torch.Generator().manual_seed(0)
    data = [{"features": torch.randn(6, 4, generator=g), "start_positions": torch.tensor(i % 6),
             "end_positions": torch.tensor((i + 2) % 6)} for i in range(12)]
    model = torchfit.Model(SpanNet()).compile(target_key=("start_positions", "end_positions"), output_key=None)
    history = model.fit(2, DataLoader(data, batch_size=4), verbose=0)
    assert history["loss"].notna().all()
    x, y, _ = split_batch(next(iter(DataLoader(data, batch_size=4))), "fit", ("start_positions", "end_positions"))
    assert list(x) == ["features"] and sorted(y) == ["end_positions", "start_positions"]
    spans = model.predict(DataLoader(data, batch_size=5))
    assert sorted(spans) == ["end_logits", "start_logits"] and spans["start_logits"].shape == (12, 6)
