"""The Makefile's set-up: `make demo` installs the runtime set only and, without a GPU, a CPU-only
torch where pip can see one (tools/cpu_torch.py); `make test` adds the dev set."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_torch(find_links: str) -> str:
    env = {**os.environ, "PIP_FIND_LINKS": find_links, "PIP_CONFIG_FILE": os.devnull}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "cpu_torch.py"), "--any-gpu"], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip()


def test_the_demo_takes_the_newest_cpu_torch_this_python_can_install(tmp_path):
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    plat = f"manylinux_2_28_{platform.machine()}"
    for name in [f"torch-2.13.0+cpu-{py}-{py}-{plat}.whl",          # the one
                 f"torch-2.12.1+cpu-{py}-{py}-{plat}.whl",          # older
                 f"torch-2.15.0+cpu-cp37-cp37m-{plat}.whl",         # another Python
                 f"torch-2.2.0+cpu-{py}-{py}-{plat}.whl",           # below setup.cfg's torch>=2.3
                 f"torch-2.14.1-{py}-{py}-{plat}.whl"]:             # not a CPU-only build
        (tmp_path / name).write_bytes(b"")
    expected = "torch==2.13.0+cpu" if sys.platform.startswith("linux") else ""
    assert cpu_torch(str(tmp_path)) == expected
    assert cpu_torch(f"file://{tmp_path}") == expected  # find-links as a file URL
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cpu_torch(str(empty)) == ""  # nothing to take: the demo installs the pinned build


def test_demo_installs_the_runtime_set_and_test_the_dev_set():
    dry = subprocess.run(["make", "-n", "demo", "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    installs = [line for line in dry.splitlines() if " -m pip install " in line and "--upgrade pip" not in line]
    assert any('-e ".[plot]"' in line for line in installs), dry
    assert not any("[dev]" in line for line in installs), dry
    dry = subprocess.run(["make", "-n", "test", "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert re.search(r'pip install -c constraints\.txt -e "\.\[dev\]"', dry), dry
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 /nonexistent-venv/bin/python -m pytest" in dry
