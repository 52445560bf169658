"""Print the requirement of a CPU-only torch build for ``make demo``, or nothing.

Used by the Makefile on a machine without an NVIDIA GPU: torch's default build from the
registry carries about 4 GB of CUDA libraries that such a machine never uses. A CPU build
(a ``torch-X+cpu`` wheel) is taken only where pip can already see one, in a local folder
of pip's find-links (``PIP_FIND_LINKS`` or ``pip config``); otherwise this prints nothing
and the demo installs the pinned build. Run it with the venv's python, whose tags the
wheel must match:

    .venv/bin/python tools/cpu_torch.py     # e.g. torch==2.13.0+cpu

``--any-gpu`` skips the GPU check (tests use it).
"""
from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Iterable, List, Optional, Tuple

LOWEST = (2, 3)  # setup.cfg's torch>=2.3
WHEEL = re.compile(r"^torch-(?P<version>(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+))\+cpu-"
                   r"(?P<python>cp\d+)-(?P<abi>[^-]+)-(?P<platform>[^-]+)\.whl$")


def find_links() -> List[str]:
    """The local folders in pip's find-links: the environment first, then ``pip config``."""
    entries = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                                text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            entries.extend(value.strip("'\"").split())
    folders = []
    for entry in entries:
        path = entry[len("file://"):] if entry.startswith("file://") else entry
        if "://" not in path and os.path.isdir(path) and path not in folders:
            folders.append(path)
    return folders


def cpu_wheel(folders: Iterable[str]) -> Optional[str]:
    """The newest ``torch-X+cpu`` wheel in ``folders`` this interpreter can install, as ``torch==X+cpu``."""
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    machine = platform.machine()
    best: Optional[Tuple[Tuple[int, int, int], str]] = None
    for folder in folders:
        for path in glob.glob(os.path.join(folder, "torch-*+cpu-*.whl")):
            match = WHEEL.match(os.path.basename(path))
            if not match or match["python"] != python or not match["platform"].endswith(machine):
                continue
            if not sys.platform.startswith("linux") and "linux" in match["platform"]:
                continue
            version = (int(match["major"]), int(match["minor"]), int(match["patch"]))
            if version[:2] >= LOWEST and (best is None or version > best[0]):
                best = (version, f"torch=={match['version']}+cpu")
    return best[1] if best else None


def main(argv: List[str]) -> int:
    if "--any-gpu" not in argv and shutil.which("nvidia-smi"):
        return 0  # a GPU machine keeps the CUDA build
    requirement = cpu_wheel(find_links())
    if requirement:
        print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
