"""The README's first screen stays true: its complete example runs as pasted, and shows what it says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def first_python_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "README.md has no ```python block"
    return blocks[0]


def test_the_first_example_is_complete():
    code = first_python_block()
    # it defines everything it uses: data, net, the three steps (no `net` or `dl_train` from nowhere)
    for defined in ("net = ", "dl_train = ", "dl_val = ", "torchfit.Model(net)", ".compile(", ".fit("):
        assert defined in code, defined
    assert README.index(code) < README.index("## Two commands")  # on the first screen, before the set-up


@pytest.mark.slow  # trains 5 small epochs; a few seconds on a busy machine
def test_the_first_example_runs_as_pasted_and_prints_what_the_readme_shows(tmp_path, monkeypatch, capsys):
    import torch

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(first_python_block(), "README.md example", "exec"), namespace)
    model, history = namespace["model"], namespace["history"]
    assert len(history) == 5 and history["val_accuracy"].iloc[-1] > 0.85
    assert set(namespace["scores"]) == {"val_loss", "val_accuracy"}
    assert namespace["preds"].shape == (297,)
    # the tables the README pastes are the ones this run prints (same seed, same figures on a CPU)
    out = capsys.readouterr().out
    if next(model.parameters()).device.type != "cpu":
        return  # compile() picked a GPU: other kernels, other last digits
    pasted = [line for line in README.split("## Two commands")[0].splitlines()
              if re.match(r"\|\s+\d+\s+\|", line)]
    assert len(pasted) >= 2
    printed = [line for line in out.splitlines() if re.match(r"\|\s+\d+\s+\|", line)]
    for line in pasted:
        assert line in printed, f"README shows {line!r}; the example printed {printed}"
