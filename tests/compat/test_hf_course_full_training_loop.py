"""Port of the Hugging Face LLM course, chapter 3, "A full training loop" (huggingface.co/learn/llm-course/chapter3/4).

The course's code is kept as published, in its order; what differs is marked ``# CHANGED:``:
the data (GLUE MRPC is a download: ``raw_datasets`` is an offline DatasetDict of the same columns),
the checkpoint (no hub: a tokenizer trained here and a tiny BERT built from a config, the course's
``AutoTokenizer`` / ``AutoModelForSequenceClassification`` calls shown beside), the ``evaluate``
metric (not installed: scikit-learn's accuracy and F1, what ``glue/mrpc`` reports) and the wrapper
calls: torchfit's ``compile`` / ``fit`` / ``evaluate`` / ``predict`` where the course writes its loops.
The course's own loop then runs too, from the same start, and both must end with the same weights.
"""
from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dist_scripts"))

pytestmark = pytest.mark.slow


def raw_mrpc(n_train: int = 48, n_val: int = 16):
    """GLUE MRPC's columns (sentence1, sentence2, label, idx): label 1 when both sentences share a mood."""
    import datasets
    import hf_models

    def split(n, seed):
        a, la = hf_models.sentences(n, seed)
        b, lb = hf_models.sentences(n, seed + 100)
        return datasets.Dataset.from_dict({"sentence1": a, "sentence2": b, "label": [int(x == y) for x, y in zip(la, lb)],
                                           "idx": list(range(n))})

    return datasets.DatasetDict(train=split(n_train, 0), validation=split(n_val, 1))


def course_model(num_labels=2):
    import hf_models

    return hf_models.bert(seed=42, num_labels=num_labels)


def test_a_full_training_loop_as_published():
    # ---- "Prepare for training" (course code)
    import hf_models  # CHANGED: offline tokenizer and model builders
    from transformers import DataCollatorWithPadding

    raw_datasets = raw_mrpc()  # CHANGED: was load_dataset("glue", "mrpc")
    checkpoint = "bert-base-uncased"  # noqa: F841  (the course's; nothing is downloaded)
    tokenizer = hf_models.tokenizer()  # CHANGED: was AutoTokenizer.from_pretrained(checkpoint)

    def tokenize_function(example):
        return tokenizer(example["sentence1"], example["sentence2"], truncation=True)

    tokenized_datasets = raw_datasets.map(tokenize_function, batched=True)
    data_collator = DataCollatorWithPadding(tokenizer=tokenizer)

    tokenized_datasets = tokenized_datasets.remove_columns(["sentence1", "sentence2", "idx"])
    tokenized_datasets = tokenized_datasets.rename_column("label", "labels")
    tokenized_datasets.set_format("torch")
    assert tokenized_datasets["train"].column_names == ["labels", "input_ids", "token_type_ids", "attention_mask"] \
        or set(tokenized_datasets["train"].column_names) >= {"labels", "input_ids", "attention_mask"}

    from torch.utils.data import DataLoader

    import torch

    torch.manual_seed(0)  # CHANGED: seeded, so that the course's loop below gets the same batches
    train_dataloader = DataLoader(
        tokenized_datasets["train"], shuffle=True, batch_size=8, collate_fn=data_collator
    )
    eval_dataloader = DataLoader(
        tokenized_datasets["validation"], batch_size=8, collate_fn=data_collator
    )

    for batch in train_dataloader:
        break
    shapes = {k: v.shape for k, v in batch.items()}
    assert shapes["input_ids"][0] == 8

    model = course_model()  # CHANGED: was AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)

    outputs = model(**batch)
    print(outputs.loss, outputs.logits.shape)

    from torch.optim import AdamW

    optimizer = AdamW(model.parameters(), lr=5e-5 * 20)  # CHANGED: a larger rate for a tiny model and 3 epochs

    from transformers import get_scheduler

    num_epochs = 3
    num_training_steps = num_epochs * len(train_dataloader)
    lr_scheduler = get_scheduler(
        "linear",
        optimizer=optimizer,
        num_warmup_steps=0,
        num_training_steps=num_training_steps,
    )
    print(num_training_steps)

    # ---- "The training loop"
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device("cpu")  # CHANGED: the comparison below runs on the CPU
    initial = {k: v.clone() for k, v in model.state_dict().items()}  # CHANGED: for the course's own loop below

    # CHANGED: the course's loop (model.to(device); model.train(); for epoch: for batch: ... progress_bar)
    # becomes the wrapper's calls; the model computes its own loss from batch["labels"].
    import torchfit
    from torchfit.callbacks import LearningRateScheduler

    wrapped = torchfit.Model(model).compile(optimizer=optimizer, metrics=["accuracy", "f1"], device=device)
    torch.manual_seed(1)  # CHANGED: the shuffle's seed, for the comparison
    history = wrapped.fit(num_epochs, train_dataloader,
                          callbacks=[LearningRateScheduler(lr_scheduler, interval="step")], verbose=0)
    assert list(history["epoch"]) == [1, 2, 3]

    # ---- "The evaluation loop"
    # CHANGED: was evaluate.load("glue", "mrpc") and the loop of metric.add_batch(predictions, references)
    from sklearn.metrics import accuracy_score, f1_score

    model.eval()
    predictions = wrapped.predict(eval_dataloader).argmax(dim=-1)
    references = torch.cat([b["labels"] for b in eval_dataloader])
    metric = {"accuracy": accuracy_score(references, predictions), "f1": f1_score(references, predictions)}
    figures = wrapped.evaluate(eval_dataloader)
    assert figures["val_accuracy"] == pytest.approx(metric["accuracy"])
    # torchfit's "f1" is the macro F1 over the classes (GLUE's is the positive class's)
    assert figures["val_f1"] == pytest.approx(f1_score(references, predictions, average="macro"))

    # CHANGED: the course's training loop, run as published from the same start and batches
    reference = course_model()
    reference.load_state_dict(initial)
    optimizer = AdamW(reference.parameters(), lr=5e-5 * 20)
    lr_scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=num_training_steps)
    torch.manual_seed(1)
    model = reference
    model.to(device)
    model.train()
    for epoch in range(num_epochs):
        for batch in train_dataloader:
            batch = {k: v.to(device) for k, v in batch.items()}
            outputs = model(**batch)
            loss = outputs.loss
            loss.backward()

            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
    for k, v in reference.state_dict().items():
        assert torch.equal(wrapped.net.state_dict()[k], v), (k, float((wrapped.net.state_dict()[k] - v).abs().max()))
