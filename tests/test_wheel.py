"""torchfit installs without the Makefile: the wheel built from the sources holds every
package and module, carries the distribution name and the runtime requirements, and
runs the README's first example in a new virtual environment.

The new venv gets the wheel with ``--no-deps``; its dependencies (torch, pandas...) are
not downloaded again but seen from this test's own environment through a ``.pth`` file
in the new venv's site-packages holding that environment's site-packages directory. A
path line in a ``.pth`` file only extends ``sys.path``; the ``.pth`` files inside the
directory it names are not run, so an editable torchfit installed there (a ``.pth`` hook)
stays invisible, and the only torchfit the new venv can import is the wheel's (the test
checks where it was imported from). That keeps the test offline and a few seconds long.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from torchfit.errors import DISTRIBUTION

ROOT = Path(__file__).resolve().parent.parent


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_the_distribution_name_is_the_one_the_hints_name():
    assert setup_cfg()["metadata"]["name"] == DISTRIBUTION == "torchfit-keras"
    readme = (ROOT / "README.md").read_text()
    assert f'pip install "{DISTRIBUTION}' in readme.split("```python")[0]  # on the first screen
    # no document tells a user to install the index's unrelated "torchfit"
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "torchfit").rglob("*.py"))]:
        text = path.read_text()
        assert not re.search(r"pip install \"?torchfit(\[|\"|\s|$)", text), path


def source_modules() -> set:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "torchfit").rglob("*.py")}


@pytest.mark.slow  # builds a wheel and a venv, runs the README example in it: about 20 s
def test_the_wheel_installs_into_a_new_venv_and_runs_the_readme_example(tmp_path):
    # build from a copy of what a source distribution holds, so the checkout stays clean
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "torchfit", src / "torchfit", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(src)], check=True, cwd=tmp_path, timeout=240)
    (wheel,) = dist.glob("*.whl")
    assert wheel.name.startswith("torchfit_keras-")

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = zf.read(metadata).decode()
    assert source_modules() <= names, sorted(source_modules() - names)
    assert not any(n.startswith("tests/") for n in names)
    assert re.search(r"^Name: torchfit-keras$", meta, re.M)
    requires = set(re.findall(r"^Requires-Dist: ([A-Za-z0-9_-]+)[^;\n]*$", meta, re.M))
    assert requires == {"torch", "numpy", "pandas", "scikit-learn", "tqdm"}
    assert 'extra == "plot"' in meta

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    # this environment's packages (torch, pandas...), never its editable torchfit (see the docstring)
    ours = {os.path.realpath(p) for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]]}
    (purelib / "shared-dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, timeout=240)

    example = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    run_dir = tmp_path / "run"  # not the checkout: its torchfit/ must not be importable
    run_dir.mkdir()
    (run_dir / "example.py").write_text(
        "import torch; torch.set_num_threads(1)\n" + example
        + "\nimport torchfit\nprint('imported from', torchfit.__file__)\nprint('scores', dict(scores))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(python), "example.py"], cwd=run_dir, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    where = re.search(r"^imported from (.*)$", done.stdout, re.M).group(1)
    assert Path(where).resolve().is_relative_to(purelib.resolve()), where
    assert re.search(r"^\|\s+5\s+\|", done.stdout, re.M)  # the fifth epoch's table row
    scores = re.search(r"^scores (.*)$", done.stdout, re.M).group(1)
    assert "val_accuracy" in scores
