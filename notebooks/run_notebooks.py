"""Execute the example notebooks through a real Jupyter kernel (nbclient + ipykernel).

The kernel runs this interpreter (``sys.executable``: the project's venv), never a
system-wide ``python3`` kernel, with ``PYTHONPATH`` set to this checkout so the
notebooks import the torchfit being tested. The kernel spec lives in a temporary
directory for the duration of the run; nothing is registered globally.

    python notebooks/run_notebooks.py            # execute all, report, keep files as they are
    python notebooks/run_notebooks.py --write    # execute all and store the outputs (make notebooks)
    python notebooks/run_notebooks.py 01_quick_start.ipynb

Exit status 1 if any notebook raised.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, List, Optional

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = NOTEBOOKS_DIR.parent
KERNEL_NAME = "torchfit-venv"
# What committed notebooks say about their kernel: a generic Python 3 kernel, so they
# open anywhere; the runner always executes them with this venv's interpreter.
PUBLIC_KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def notebook_paths(names: Iterable[str] = ()) -> List[Path]:
    """The notebooks to run: the given names (relative to notebooks/) or every ``*.ipynb`` in order."""
    names = list(names)
    if names:
        return [p if p.is_absolute() else (Path.cwd() / p if p.exists() else NOTEBOOKS_DIR / p)
                for p in map(Path, names)]
    return sorted(NOTEBOOKS_DIR.glob("[0-9]*.ipynb"))


def _write_kernelspec(root: Path) -> KernelSpecManager:
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        # The notebooks' models are small: one thread is as fast on an idle machine and
        # many times faster on a busy one, where idle threads spin for a core.
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "torchfit venv",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(root / "kernels")])


def prune_widget_state(nb: nbformat.NotebookNode) -> None:
    """Keep in ``nb.metadata.widgets`` only the widgets an output still shows, and those they refer to.

    nbclient stores the state of every widget the kernel ever created, closed ones
    included: progress bars removed when their fit ended would otherwise leave
    their state (kilobytes each) in the committed file.
    """
    widgets = nb.metadata.get("widgets", {}).get(WIDGET_STATE)
    if widgets is None:
        return
    state = widgets.get("state", {})
    todo = [o["data"][WIDGET_VIEW]["model_id"] for cell in nb.cells if cell.cell_type == "code"
            for o in cell.get("outputs", []) if WIDGET_VIEW in o.get("data", {})]
    keep = set()
    while todo:
        model_id = todo.pop()
        if model_id in keep or model_id not in state:
            continue
        keep.add(model_id)
        todo.extend(re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(state[model_id])))
    if keep:
        widgets["state"] = {k: v for k, v in state.items() if k in keep}
    else:
        del nb.metadata["widgets"]


def merge_adjacent_streams(nb: nbformat.NotebookNode) -> None:
    """Join consecutive stream outputs of the same name (stdout, stderr) into one, as Jupyter does.

    How a cell's prints are split into messages depends on when the kernel flushed
    them; merged, re-running a notebook stores the same outputs for the same prints.
    Only neighbours are joined, so prints stay in order with tables and figures.
    """
    for cell in nb.cells:
        merged: list = []
        for output in cell.get("outputs", []):
            last = merged[-1] if merged else None
            if (output.output_type == "stream" and last is not None and last.output_type == "stream"
                    and last.name == output.name):
                last.text += output.text
            else:
                merged.append(output)
        if "outputs" in cell:
            cell.outputs = merged


def execute(path: Path, timeout: int = 120) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` in a fresh kernel; returns the executed notebook.

    Raises ``nbclient.exceptions.CellExecutionError`` (with the cell and traceback) if a cell fails.

    >>> # nb = execute(Path("notebooks/01_quick_start.ipynb"))
    """
    nb = nbformat.read(str(path), as_version=4)
    with tempfile.TemporaryDirectory(prefix="torchfit-kernel-") as tmp:
        km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=_write_kernelspec(Path(tmp)))
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            record_timing=False,  # no per-cell timestamps: committed notebooks diff cleanly
            resources={"metadata": {"path": str(path.parent)}},
        )
        try:
            client.execute()
        finally:
            # nbclient leaves a kernel manager it was handed to its owner
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    nb.metadata["kernelspec"] = dict(PUBLIC_KERNELSPEC)
    prune_widget_state(nb)
    merge_adjacent_streams(nb)
    return nb


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebook files (default: every notebooks/NN_*.ipynb)")
    parser.add_argument("--write", action="store_true", help="store the executed notebooks with their outputs")
    parser.add_argument("--timeout", type=int, default=120, help="seconds allowed per cell")
    args = parser.parse_args(argv)

    failed = []
    for path in notebook_paths(args.notebooks):
        start = time.perf_counter()
        try:
            nb = execute(path, timeout=args.timeout)
        except Exception as exc:  # report every notebook, then fail
            failed.append(path.name)
            print(f"FAIL {path.name} ({time.perf_counter() - start:.1f} s)\n{exc}", file=sys.stderr)
            continue
        if args.write:
            nbformat.write(nb, str(path))
        print(f"ok   {path.name} ({time.perf_counter() - start:.1f} s){' written' if args.write else ''}")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
