"""Draw the README's pictures from real runs (run from the repository root, or anywhere):

    python docs/images/make_images.py

- ``history.png``: ``torchfit.plot_history`` of the README's first example, run as printed there.
- ``notebook.png``: the fit cell of ``notebooks/01_quick_start.ipynb`` as stored (its code, the
  epoch table and the live plot it left), laid out the way Jupyter shows a cell. It is drawn from
  the notebook's stored outputs with matplotlib, not captured from a browser: re-run
  ``make notebooks`` first for fresh outputs.
"""
from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))


def readme_example() -> str:
    """The README's first python code block: the complete example."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return blocks[0]


def run_readme_example() -> dict:
    namespace: dict = {"__name__": "readme_example"}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
        os.chdir(scratch)
        try:
            exec(compile(readme_example(), "README.md example", "exec"), namespace)
        finally:
            os.chdir(cwd)
    return namespace


def history_png(path: Path) -> None:
    import torchfit

    model = run_readme_example()["model"]
    torchfit.plot_history(model.history).savefig(path, dpi=100)


def notebook_png(path: Path) -> None:
    import matplotlib.image
    import nbformat
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    nb = nbformat.read(str(ROOT / "notebooks" / "01_quick_start.ipynb"), as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "LivePlot(" in c.source)
    table = next(o["data"]["text/plain"] for o in cell.outputs if "text/html" in o.get("data", {}))
    png = next(o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {}))
    plot = matplotlib.image.imread(io.BytesIO(base64.b64decode(png)), format="png")

    code_lines = cell.source.splitlines()
    table_lines = table.splitlines()
    plot_h, plot_w = plot.shape[:2]
    width_in = 8.8
    line_in = 0.19
    plot_in = width_in * 0.86 * plot_h / plot_w
    code_in = line_in * len(code_lines) + 0.25
    table_in = 0.24 * (sum(line.startswith("|") for line in table_lines)) + 0.25
    height_in = code_in + table_in + plot_in + 0.45
    fig = Figure(figsize=(width_in, height_in), dpi=100, facecolor="white")

    def y(inches_from_top: float) -> float:
        return 1 - inches_from_top / height_in

    top = 0.15
    fig.text(0.01, y(top + 0.17), f"[{cell.execution_count}]:", family="DejaVu Sans Mono", fontsize=9, color="#307fc1")
    fig.patches.append(FancyBboxPatch((0.1, y(top + code_in)), 0.88, code_in / height_in,
                                      boxstyle="square,pad=0", transform=fig.transFigure,
                                      facecolor="#f5f5f5", edgecolor="#e0e0e0"))
    for n, line in enumerate(code_lines):
        fig.text(0.115, y(top + 0.2 + n * line_in), line, family="DejaVu Sans Mono", fontsize=8.5, color="#202020")
    top += code_in + 0.15
    # the epoch table as Jupyter renders its HTML: a plain grid, header in bold, figures as printed
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table_lines if line.startswith("|")]
    header, body = rows[0], rows[1:]
    table_ax = fig.add_axes([0.11, y(top + table_in - 0.1), 0.6, (table_in - 0.1) / height_in])
    table_ax.axis("off")
    grid = table_ax.table(cellText=body, colLabels=header, loc="upper left", cellLoc="right", colLoc="right",
                          bbox=[0, 0, 1, 1])
    grid.auto_set_font_size(False)
    for (r, _), cell in grid.get_celld().items():
        cell.set_fontsize(9)
        cell.set_edgecolor("white")
        cell.set_facecolor("#f5f5f5" if r % 2 else "white")
        if r == 0:
            cell.set_text_props(fontweight="bold")
            cell.visible_edges = "B"
            cell.set_edgecolor("#bdbdbd")
    top += table_in
    ax = fig.add_axes([0.11, y(top + plot_in), 0.86, plot_in / height_in])
    ax.imshow(plot)
    ax.axis("off")
    fig.savefig(path, dpi=100, facecolor="white")


def main() -> None:
    history_png(HERE / "history.png")
    notebook_png(HERE / "notebook.png")
    print("wrote", HERE / "history.png", "and", HERE / "notebook.png")


if __name__ == "__main__":
    main()
