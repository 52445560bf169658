"""Draw docs/inspecting.md's pictures by running its examples as written (from anywhere):

    python docs/images/make_inspect_images.py

The examples run in a temporary folder; their ``profile.png`` and ``gradients.png`` are copied here
as ``inspect_profile.png`` and ``inspect_gradients.png``, and what they print goes to stdout (the
figures quoted on the page come from it).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "inspecting.md").read_text(), re.S)
    start = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            namespace: dict = {"__name__": "docs_example"}
            for n, block in enumerate(blocks, 1):
                exec(compile(block, f"docs/inspecting.md block {n}", "exec"), namespace)
            for name in ("profile", "gradients"):
                shutil.copy(f"{name}.png", HERE / f"inspect_{name}.png")
        finally:
            os.chdir(start)


if __name__ == "__main__":
    main()
