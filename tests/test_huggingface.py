"""Hugging Face transformers, peft LoRA, datasets (map-style and streaming) and timm with the real
packages: tiny models built from configs (no hub), in one process and on 2 ranks under torchrun.
The builders live in tests/dist_scripts/hf_models.py, which torchrun also runs."""
from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import torchfit
from torchfit.finetuning import Unfreeze, freeze

pytest.importorskip("transformers")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "dist_scripts", "hf_models.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
import hf_models as hf  # noqa: E402

pytestmark = pytest.mark.slow  # importing transformers alone takes seconds


def assert_same(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def epoch_means(net, batches, data_n):
    """The sample-weighted mean of the model's own loss over ``batches`` (what an epoch figure is)."""
    with torch.no_grad():
        return sum(float(net(**b).loss) * len(b["input_ids"]) for b in batches) / data_n


@pytest.mark.parametrize("build,make", [(hf.bert, hf.classification_samples), (hf.gpt2, hf.lm_samples)],
                         ids=["bert", "gpt2"])
def test_tiny_models_train_on_dict_batches_as_a_hand_written_loop(build, make):
    data = make(24, 1)
    model = torchfit.Model(build(0)).compile(optimizer=hf.sgd(0.5))
    history = model.fit(2, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8), verbose=0)
    batches = list(DataLoader(data, batch_size=8))
    ref = hf.hand_loop(build(0), batches, lr=0.5, epochs=2)
    assert_same(model.net.state_dict(), ref.state_dict())
    assert history["val_loss"].iloc[-1] == pytest.approx(epoch_means(ref.eval(), batches, 24), rel=1e-5)


def test_batch_encoding_from_the_collator_with_accuracy_and_predict_on_new_text():
    from transformers import DataCollatorWithPadding

    tok = hf.tokenizer()
    texts, labels = hf.sentences(64, 5)
    rows = [{**tok(t), "labels": y} for t, y in zip(texts, labels)]  # unpadded, as a tokenized dataset
    dl = DataLoader(rows, batch_size=8, collate_fn=DataCollatorWithPadding(tok))
    assert type(next(iter(dl))).__name__ == "BatchEncoding"
    model = torchfit.Model(hf.bert(0)).compile(optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), metrics=["accuracy"])
    history = model.fit(10, dl, dl, verbose=0)
    assert history["val_accuracy"].iloc[-1] > 0.9
    new = tok(["the film was superb", "the plot was awful"], padding=True, return_tensors="pt")
    probs = model.predict(DataLoader([dict(zip(new, v)) for v in zip(*new.values())], batch_size=2)).softmax(1)
    assert probs.shape == (2, 2) and probs[0, 1] > 0.5 > probs[1, 1]


def test_lora_trains_only_the_adapters_and_its_checkpoint_resumes_exactly(tmp_path):
    peft = pytest.importorskip("peft")
    dl = DataLoader(hf.classification_samples(24, 2), batch_size=8)

    def lora_model():
        config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
        net = peft.get_peft_model(hf.bert(0), config)
        return torchfit.Model(net).compile(optimizer="adam", metrics=["accuracy"])

    model = lora_model()
    trains = {n for n, p in model.net.named_parameters() if p.requires_grad}
    assert trains and all("lora_" in n or "classifier" in n for n in trains)
    assert {id(p) for g in model.optimizer.param_groups for p in g["params"]} == \
        {id(p) for n, p in model.net.named_parameters() if n in trains}
    sample = next(iter(dl))
    rows = model.summary(input_data={k: v for k, v in sample.items() if k != "labels"}, print_fn=None)
    assert 0 < rows.attrs["trainable_params"] < rows.attrs["non_trainable_params"]
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    model.fit(2, dl, verbose=0)
    after = model.net.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and changed <= {k for k in after if "lora_" in k or "classifier" in k}
    path = tmp_path / "adapters.pt"
    model.save_checkpoint(path, trainable_only=True)
    saved = torch.load(path, weights_only=True)["net"]
    assert set(saved) <= {k for k in after if "lora_" in k or "classifier" in k} | {
        k for k, _ in model.net.named_buffers()}
    assert sum(v.numel() for v in saved.values()) < 0.5 * sum(v.numel() for v in after.values())
    straight = lora_model()
    straight.fit(4, dl, verbose=0)
    resumed = lora_model()  # the same base (seeded), fresh adapters
    resumed.fit(4, dl, verbose=0, resume_from=path)
    assert_same(resumed.net.state_dict(), straight.net.state_dict())
    assert resumed.history.equals(straight.history)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_from_compile_trains_the_same(lora):
    peft = pytest.importorskip("peft")
    data = hf.classification_samples(16, 3)

    def net():
        base = hf.bert(0)
        if not lora:
            return base
        return peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))

    plain = torchfit.Model(net()).compile(optimizer=hf.sgd(0.5))
    plain.fit(3, DataLoader(data, batch_size=8), verbose=0)
    model = torchfit.Model(net()).compile(optimizer=hf.sgd(0.5), gradient_checkpointing=True)
    assert getattr(model.net, "is_activation_checkpointing", None) or model.net.is_gradient_checkpointing
    model.fit(3, DataLoader(data, batch_size=8), verbose=0)
    assert_same(model.net.state_dict(), plain.net.state_dict(), exact=False)
    changed = [k for k, v in model.net.state_dict().items() if not torch.equal(v, net().state_dict()[k])]
    assert changed and (not lora or all("lora_" in k or "classifier" in k for k in changed))


def test_datasets_map_style_and_streaming_as_training_and_validation_data():
    datasets = pytest.importorskip("datasets")
    rows = hf.classification_samples(20, 4)
    table = datasets.Dataset.from_dict({k: [r[k].tolist() for r in rows] for k in rows[0]}).with_format("torch")
    model = torchfit.Model(hf.bert(0)).compile(optimizer=hf.sgd(0.5), metrics=["accuracy"])
    history = model.fit(2, table, validation_data=table, batch_size=5, shuffle=False, verbose=0)
    ref = hf.hand_loop(hf.bert(0), list(DataLoader(rows, batch_size=5)), lr=0.5, epochs=2)
    assert_same(model.net.state_dict(), ref.state_dict())
    assert model.evaluate(table, batch_size=5)["val_loss"] == pytest.approx(history["val_loss"].iloc[-1])
    assert model.predict(table, batch_size=7).shape == (20, 2)
    # a stream: the same samples in the same order give the same weights
    streamed = torchfit.Model(hf.bert(0)).compile(optimizer=hf.sgd(0.5), metrics=["accuracy"])
    stream = hf.stream(20, 4)
    streamed.fit(2, DataLoader(stream.remove_columns("idx"), batch_size=5),
                 validation_data=stream.remove_columns("idx"), verbose=0)
    assert_same(streamed.net.state_dict(), ref.state_dict())


def test_torchvision_backbone_frozen_then_unfrozen_at_a_lower_rate():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=1000)
    net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, 3)  # the new head
    freeze(net.features)
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), lr=1e-3))
    assert len(model.optimizer.param_groups) == 1
    x, y = torch.randn(12, 3, 32, 32), torch.randint(0, 3, (12,))
    dl = DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6)
    first = {k: v.clone() for k, v in net.features.named_parameters()}
    model.fit(1, dl, callbacks=[Unfreeze(net.features, epoch=1, lr=1e-5)], verbose=0)
    assert all(torch.equal(p, first[k]) for k, p in net.features.named_parameters())  # frozen in epoch 1
    model.fit(2, dl, callbacks=[Unfreeze(net.features, epoch=1, lr=1e-5)], verbose=0)
    assert [g["lr"] for g in model.optimizer.param_groups] == [1e-3, 1e-5]
    assert any(not torch.equal(p, first[k]) for k, p in net.features.named_parameters())


def test_timm_backbone_with_a_new_head():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=3)
    freeze(net)
    net.reset_classifier(3)  # a fresh head that trains
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "adam", ["accuracy"])
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    history = model.fit(1, DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4), verbose=0)
    assert {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad} == {"fc"}
    assert history["loss"].notna().all()


# ------------------------------------------------------------------ torchrun
def test_two_ranks_train_tiny_models_and_a_stream_as_one_process(tmp_path):
    from conftest import torchrun

    proc = torchrun(SCRIPT, tmp_path, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for name, build, data in (("bert", hf.bert, hf.classification_samples(16, 1)),
                              ("gpt2", hf.gpt2, hf.lm_samples(16, 2))):
        # 2 ranks of batch 4 = one process of batch 8, by hand and through torchfit
        ref = hf.hand_loop(build(0), list(DataLoader(data, batch_size=8)), lr=0.5, epochs=2)
        assert_same(r0[name]["state"], ref.state_dict(), exact=False)
        assert_same(r1[name]["state"], r0[name]["state"])
        one = torchfit.Model(build(0)).compile(optimizer=hf.sgd(0.5), metrics=["accuracy"] if name == "bert" else None)
        history = one.fit(2, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8), verbose=0)
        for got, want in zip(r0[name]["history"], history.to_dict("records")):
            assert got == pytest.approx(want, rel=1e-4)
    # predict of every field, gathered in dataset order
    bert = hf.bert(0)
    bert.load_state_dict(r0["bert"]["state"])
    local = torchfit.Model(bert).compile(output_key=None).predict(DataLoader(hf.classification_samples(16, 1)[:7],
                                                                             batch_size=2))
    assert sorted(r0["bert_predict"]) == ["logits"]
    padded = torchfit.Model(bert).compile(nn.CrossEntropyLoss(), "sgd", ["accuracy", "f1"])
    assert r0["bert_padded"] == pytest.approx(padded.evaluate(DataLoader(hf.classification_samples(15, 6),
                                                                        batch_size=4)), rel=1e-5)
    torch.testing.assert_close(r0["bert_predict"]["logits"], local["logits"])
    # LoRA on 2 ranks of batch 4 = one process of batch 8; its adapters-only file loads onto a fresh base
    one = torchfit.Model(hf.lora_bert()).compile(optimizer=hf.sgd(0.5))
    one.fit(2, DataLoader(hf.classification_samples(16, 1), batch_size=8), verbose=0)
    assert_same(r0["lora"], one.net.state_dict(), exact=False)
    fresh = torchfit.Model(hf.lora_bert()).compile(optimizer=hf.sgd(0.5)).load_checkpoint(tmp_path / "adapters.pt")
    assert_same(fresh.net.state_dict(), r0["lora"])
    assert all("lora_" in k or "classifier" in k
               for k in torch.load(tmp_path / "adapters.pt", weights_only=True)["net"])
    # the stream: 11 samples, each seen once per epoch across the ranks (rank 1 repeats one to keep step)
    s0, s1 = r0["stream"], r1["stream"]
    assert s0["seen"] == [0, 2, 4, 6, 8, 10] * 2 and s1["seen"] == [1, 3, 5, 7, 9, 10] * 2
    assert s0["history"] == s1["history"]
    net = hf.Recorder(hf.bert(3))
    net.net.load_state_dict(s0["state"])
    local = torchfit.Model(net).compile(nn.CrossEntropyLoss(), "sgd", ["accuracy"])
    figures = local.evaluate(DataLoader(hf.stream(11, 4), batch_size=2))
    assert s0["evaluate"] == pytest.approx(figures, rel=1e-5) and s1["evaluate"] == s0["evaluate"]
    torch.testing.assert_close(s0["predict"], local.predict(DataLoader(hf.stream(11, 4), batch_size=3)))


def test_the_python_examples_in_docs_models_run(tmp_path, monkeypatch):
    import re

    blocks = re.findall(r"```python\n(.*?)```", open(os.path.join(ROOT, "docs", "models.md")).read(), re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)  # the LoRA example writes adapters.pt
    namespace: dict = {"__name__": "docs_example"}
    for n, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/models.md block {n}", "exec"), namespace)
    assert [g["lr"] for g in namespace["model"].optimizer.param_groups] == [1e-3, 1e-5]
    assert set(torch.load(tmp_path / "adapters.pt", weights_only=True)["net"]) <= {
        k for k in namespace["lora"].state_dict() if "lora_" in k or "classifier" in k}


def test_a_dataset_dict_asks_for_one_split():
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict(train=datasets.Dataset.from_dict({"x": [[1.0]], "labels": [0]}))
    model = torchfit.Model(nn.Linear(1, 2)).compile(nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match=r"DatasetDict of splits \['train'\]; pass one split, e.g. dl_train=ds\['train'\]"):
        model.fit(1, splits, batch_size=2, verbose=0)


def test_a_stream_already_split_by_node_is_refused():
    pytest.importorskip("datasets")
    from datasets.distributed import split_dataset_by_node

    from torchfit.distributed.sharding import shard

    class Ctx:
        rank, world_size = 0, 2

    split = split_dataset_by_node(hf.stream(6), rank=0, world_size=2)
    with pytest.raises(ValueError, match="already split across ranks.*pass the whole stream"):
        shard(Ctx(), DataLoader(split, batch_size=2), "dl_train")
