"""The examples in docs/inspecting.md run as written (one namespace, in order)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # four short epochs on digits and two exports (ONNX takes a few seconds)
def test_the_examples_in_docs_inspecting_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "inspecting.md").read_text(), re.S)
    assert len(blocks) >= 10
    monkeypatch.chdir(tmp_path)  # the examples write the figures, the trace and the exported files
    namespace: dict = {"__name__": "docs_example"}
    for n, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/inspecting.md block {n}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "dead ReLU in features.1 (100% of units zero for the whole batch)" in out and "no gradient at all in features.0" in out
    assert "data-dependent control flow" in out and "x ['output']" in out
    assert {"profile.png", "gradients.png", "digits.pt2", "digits.onnx", "digits.safetensors", "traces"} <= set(
        os.listdir(tmp_path))
    assert not os.path.exists(tmp_path / "branchy.pt2")
