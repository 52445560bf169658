"""The examples of docs/workflow.md's sections on torchfit.testing, cross_validate and Optuna run as written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("Unit tests of models: `torchfit.testing`", "Cross-validation: `torchfit.cross_validate`",
            "Tuning with Optuna: `OptunaPruning`")


def blocks_of(text: str, heading: str) -> list:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end != -1 else None], re.S)


@pytest.mark.slow  # a 5-fold cross-validation and a 12-trial study: ~10 s on 2 cores
def test_the_examples_run_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("optuna")
    pytest.importorskip("matplotlib")
    text = (ROOT / "docs" / "workflow.md").read_text()
    blocks = [b for heading in SECTIONS for b in blocks_of(text, heading)]
    assert len(blocks) == 5
    monkeypatch.chdir(tmp_path)  # folds.png
    namespace: dict = {"__name__": "docs_example"}
    for n, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/workflow.md experiments block {n}", "exec"), namespace)
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["True", "1.0", "['0.bias', '0.weight', '2.bias', '2.weight']"]
    assert out[3].startswith("samples leak into each other (eval mode): the output for sample 0 depends on")
    assert out[4] == "['fold', 'epoch', 'loss', 'accuracy', 'val_loss', 'val_accuracy']"
    assert out[5:] == ["True", "['hidden', 'lr'] True", "True"]
    assert (tmp_path / "folds.png").stat().st_size > 10_000

    # the plugin example is a test function: it passes with the fixture's audit and fails a syncing step
    from torchfit.testing import HostSyncAudit, data

    audit = HostSyncAudit()
    with audit:
        namespace["test_training_step_never_syncs"](audit, data.classification(128))
    audit.check()
    torchfit = namespace["torchfit"]

    class Syncing(torchfit.Model):
        def train_step(self, batch):
            out = super().train_step(batch)
            float(out.loss)
            return out

    namespace["torchfit"] = type("shim", (), {"Model": Syncing})
    audit = HostSyncAudit()
    with audit:
        namespace["test_training_step_never_syncs"](audit, data.classification(128))
    with pytest.raises(AssertionError, match=r"^11 host sync\(s\) inside training/validation steps.*\(first:\s+train "
                                             r"step at epoch 1, batch 2\)"):
        audit.check()
