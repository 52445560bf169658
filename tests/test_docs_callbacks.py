"""The examples in docs/callbacks.md run as written (one namespace, in order)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # trains a few dozen tiny epochs; about 15 s on 2 cores
def test_the_examples_in_docs_callbacks_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "callbacks.md").read_text(), re.S)
    assert len(blocks) >= 10
    monkeypatch.chdir(tmp_path)  # the examples write ckpt/, logs/ and runs/
    namespace: dict = {"__name__": "docs_example"}
    for n, block in enumerate(blocks, 1):
        if "jit_compile=True" in block:
            continue  # torch.compile takes tens of seconds cold; tests/test_training_controls.py covers it
        exec(compile(block, f"docs/callbacks.md block {n}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "will not have 'val_loss'" in out and "[0.01, 0.005, 0.0025]" in out and "True" in out
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "logs", "runs"]
