"""The examples of docs/workflow.md's sections on lr_find, weight averaging and run-length
schedules run as written (the setup block, then those sections' blocks, in one namespace)."""
from __future__ import annotations

import re
from pathlib import Path

from torchfit.callbacks import Callback

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("Finding a learning rate", "Weight averaging (EMA, SWA)", "Schedules that know the run",
            "Short and debug runs that tests can assert on", "Several outputs, several losses")


def blocks_of(text: str, heading: str) -> list:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end != -1 else None], re.S)


class _Params(Callback):
    def set_params(self, params):
        super().set_params(params)
        self.seen = dict(params)


def test_the_examples_in_docs_workflow_run(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "workflow.md").read_text()
    setup = blocks_of(text, "Training tools: the set-up of the examples below")[0]
    assert "import torchfit" in setup
    monkeypatch.chdir(tmp_path)  # the examples write lr_find.png and ckpt/
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(setup, "docs/workflow.md setup", "exec"), namespace)
    for heading in SECTIONS:
        blocks = blocks_of(text, heading)
        assert blocks, heading
        for n, block in enumerate(blocks, 1):
            exec(compile(block, f"docs/workflow.md {heading!r} block {n}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "suggested_lr" in out and "True" in out and (tmp_path / "lr_find.png").exists()
    assert "\n6\n" in out and "True 1.0" in out  # steps_per_epoch, overfit_batches
    assert "'kind_loss', 'size_loss', 'val_loss'" in out
    probe = _Params()
    namespace["new_model"]().fit(1, namespace["dl_train"], callbacks=[probe], grad_accum_steps=3, verbose=0)
    assert probe.seen["grad_accum_steps"] == 3
    assert "16 16" in out
