"""Tiny Hugging Face models and data built offline (no hub), for tests/test_huggingface.py and the
torchrun scenarios below it.

Usage: python -m torch.distributed.run --nproc_per_node=2 hf_models.py OUT_DIR
Every rank trains a BERT-like and a GPT-2-like model on dict batches with the model's own loss,
trains on a Hugging Face stream split across the ranks, and saves what it saw to OUT_DIR/rank<r>.pt.
The builders are imported by the test for the single-process references.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader

import torchfit

GOOD = ["great", "fine", "good", "lovely", "superb", "nice"]
BAD = ["awful", "bad", "poor", "dull", "boring", "weak"]
FILLER = ["the", "movie", "film", "was", "plot", "acting", "very", "really", "a"]
LENGTH = 8


def sentences(n: int, seed: int = 0):
    """``n`` short reviews and their labels (1: positive), seeded."""
    g = torch.Generator().manual_seed(seed)
    texts, labels = [], []
    for _ in range(n):
        label = int(torch.randint(0, 2, (1,), generator=g))
        words = [FILLER[int(i)] for i in torch.randint(0, len(FILLER), (4,), generator=g)]
        mood = (GOOD if label else BAD)[int(torch.randint(0, 6, (1,), generator=g))]
        words.insert(int(torch.randint(0, 5, (1,), generator=g)), mood)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def tokenizer():
    """A word-level tokenizer trained on the vocabulary above, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(GOOD + BAD + FILLER)],
                            trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")


def bert(seed: int = 0, num_labels: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=num_labels,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=32, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def classification_samples(n: int, seed: int = 0):
    """Dicts of input_ids, attention_mask, labels, padded to LENGTH (what a tokenized HF dataset yields)."""
    texts, labels = sentences(n, seed)
    enc = tokenizer()(texts, padding="max_length", max_length=LENGTH, truncation=True, return_tensors="pt")
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": torch.tensor(labels[i])} for i in range(n)]


def lm_samples(n: int, seed: int = 0):
    """Causal-LM samples: the labels are the input ids (the model shifts them)."""
    return [{"input_ids": s["input_ids"], "attention_mask": s["attention_mask"], "labels": s["input_ids"]}
            for s in classification_samples(n, seed)]


def stream(n: int, seed: int = 0, num_shards: int = 1):
    """A Hugging Face IterableDataset (what load_dataset(..., streaming=True) gives) of the samples."""
    import datasets

    rows = classification_samples(n, seed)
    table = {k: [r[k].tolist() for r in rows] for k in rows[0]}
    table["idx"] = list(range(n))
    return datasets.Dataset.from_dict(table).to_iterable_dataset(num_shards=num_shards).with_format("torch")


def lora_bert(seed: int = 0):
    """``bert(seed)`` with LoRA adapters (peft) on the attention's query and value."""
    import peft

    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
    return peft.get_peft_model(bert(seed), config)


class Recorder(nn.Module):
    """Wraps a net and records the ``idx`` of every sample it is called on (then drops the key)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.seen = []

    def forward(self, idx, **inputs):
        self.seen += idx.tolist()
        return self.net(**inputs)


def hand_loop(net, batches, lr: float, epochs: int):
    """The loop the HF course writes: zero_grad; outputs = model(**batch); outputs.loss.backward(); step."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(epochs):
        for batch in batches:
            opt.zero_grad()
            net(**batch).loss.backward()
            opt.step()
    return net


def sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr)


def main(out_dir: str) -> None:
    rank = int(os.environ["RANK"])
    result = {}
    for name, build, data in (("bert", bert, classification_samples(16, 1)), ("gpt2", gpt2, lm_samples(16, 2))):
        model = torchfit.Model(build(0)).compile(optimizer=sgd(0.5), metrics=["accuracy"] if name == "bert" else None)
        history = model.fit(2, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4), verbose=0)
        result[name] = {"state": {k: v.clone() for k, v in model.net.state_dict().items()},
                        "history": history.to_dict("records")}
        if name == "bert":
            every = model.compile(optimizer=sgd(0.5), output_key=None).predict(DataLoader(data[:7], batch_size=2))
            result["bert_predict"] = every
            # 15 dict samples on 2 ranks: rank 1's last is padding, left out of the figures
            model.compile(nn.CrossEntropyLoss(), sgd(0.5), ["accuracy", "f1"])
            result["bert_padded"] = dict(model.evaluate(DataLoader(classification_samples(15, 6), batch_size=4)))
    # LoRA adapters on 2 ranks, saved alone (every rank calls save_checkpoint, rank 0 writes)
    model = torchfit.Model(lora_bert()).compile(optimizer=sgd(0.5))
    model.fit(2, DataLoader(classification_samples(16, 1), batch_size=4), verbose=0)
    model.save_checkpoint(os.path.join(out_dir, "adapters.pt"), trainable_only=True)
    result["lora"] = {k: v.clone() for k, v in model.net.state_dict().items()}
    # a Hugging Face stream of 11 samples split across the ranks: each seen once per epoch
    net = Recorder(bert(3))
    model = torchfit.Model(net).compile(nn.CrossEntropyLoss(), sgd(0.5), ["accuracy"])
    history = model.fit(2, DataLoader(stream(11, 4), batch_size=2), verbose=0)
    result["stream"] = {"seen": list(net.seen), "history": history.to_dict("records"),
                        "state": {k: v.clone() for k, v in net.net.state_dict().items()},
                        "evaluate": dict(model.evaluate(DataLoader(stream(11, 4), batch_size=2))),
                        "predict": model.predict(DataLoader(stream(11, 4), batch_size=3))}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
