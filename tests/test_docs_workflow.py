"""The examples in docs/workflow.md run as written (one namespace, in order)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a grid search, a few fits and a new MLflow database: about 15 s on 2 cores
def test_the_examples_in_docs_workflow_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    text = (ROOT / "docs" / "workflow.md").read_text()
    text = text[:text.index("\n## Training tools")]  # the sections after it: test_docs_workflow_training.py
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 7
    monkeypatch.chdir(tmp_path)  # the examples write confusion.png, mlflow.db, mlruns/ and wandb-runs/
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)  # seed_everything sets it; put back afterwards
    monkeypatch.setenv("WANDB_SILENT", "true")  # restored afterwards; the example sets it too
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    namespace: dict = {"__name__": "docs_example"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: more threads only contend on a loaded machine (28 s instead of 1 s)
    try:
        for n, block in enumerate(blocks, 1):
            exec(compile(block, f"docs/workflow.md block {n}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "True\nFalse\n" in out  # same seed, same weights; another seed, other weights
    assert "[1. 1.]" in out and "Adam\nTrue\n['checkpoint.pt']" in out and "['offline-run-" in out
    assert {"confusion.png", "mlflow.db", "mlruns", "wandb-runs"} <= set(os.listdir(tmp_path))  # MLflow's default store
