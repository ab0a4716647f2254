"""Build the chapter notebooks from their percent-format sources (read by jupytext), optionally executing them.

    python tools/nbbuild.py --execute 01    # notebooks/src/01_*.py -> notebooks/01_*.ipynb, run for real (full mode)
    python tools/nbbuild.py --update 03     # a prose edit: rebuild, keeping the stored outputs (no re-run)
    python tools/nbbuild.py 01              # rebuild without outputs

Sources are jupytext's percent format: ``# %%`` code cells and ``# %% [markdown]`` cells (each markdown line
prefixed by ``# ``), so diffs are readable. The shared header (Colab badge + set-up cell, with the repository URL
kept here, in one place) is inserted after the first markdown cell.

``--update`` keeps the outputs of the committed notebook (jupytext's ``--update``: outputs follow their cell by
content, then by position), and re-renders the cells that only show package source (``dc.viz.show_source``),
whose output is a function of the code alone. A markdown edit needs nothing more. A *code* edit keeps the old cell's outputs only by
position, which is right for an edit that cannot change them (a renamed function, a comment) and wrong otherwise:
the command lists every code cell it carried across an edit, so you can re-run the chapter (``--execute``) when an
output may differ.
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs

ROOT = Path(__file__).resolve().parent.parent
SRC, OUT = ROOT / "notebooks" / "src", ROOT / "notebooks"
# The one place the repository's address is written. The Colab badge and the set-up cell work once the
# course is published there (a public GitHub repository holding this tree, branch ``main``).
REPO_SLUG = "diffusion-course/diffusion-course"
REPO_URL = f"https://github.com/{REPO_SLUG}"
COLAB_URL = f"https://colab.research.google.com/github/{REPO_SLUG}/blob/main/notebooks/{{name}}"

SETUP_CELL = f'''# Set-up. In Colab this installs the course package (with its small checkpoints) and turns on
# widgets; anywhere else it does nothing: follow the README's "Get started" instead.
import sys
if "google.colab" in sys.modules:
    import subprocess

    def _run(cmd, what):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"Set-up failed while {{what}}:\\n{{(done.stderr or done.stdout).strip()[-800:]}}\\n\\n"
                "The course must be reachable at {REPO_URL} for this cell to work. Instead you can "
                "upload the course as a zip (Files pane), unpack it so that /content/diffusion-course holds it "
                "(!unzip -q <file>.zip -d /content, then rename the folder if needed) or copy it there from "
                "Drive, and run this cell again; or run the course locally: see the README.") from None

    import os
    if not os.path.isdir("/content/diffusion-course"):
        _run(["git", "clone", "--depth", "1", "{REPO_URL}", "/content/diffusion-course"],
             "downloading the course from {REPO_URL}")
    _run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/diffusion-course"],
         "installing the course package")
    sys.path.insert(0, "/content/diffusion-course")
    from google.colab import output
    output.enable_custom_widget_manager()'''


def parse(text: str) -> list:
    """The cells of a percent-format source, as jupytext reads them (without jupytext's layout hints)."""
    cells = jupytext.reads(text, fmt="py:percent").cells
    for cell in cells:
        cell.metadata.pop("lines_to_next_cell", None)
    return cells


def build(src: Path) -> nbformat.NotebookNode:
    cells = parse(src.read_text())
    name = src.stem + ".ipynb"
    badge = nbformat.v4.new_markdown_cell(
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL.format(name=name)})")
    cells[1:1] = [badge, nbformat.v4.new_code_cell(SETUP_CELL)]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 3600) -> float:
    from nbclient import NotebookClient

    env_quick = os.environ.get("DIFFUSION_COURSE_QUICK")
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(OUT)}}).execute()
    if env_quick:
        print("warning: executed with DIFFUSION_COURSE_QUICK set; stored outputs are quick-mode ones")
    return time.perf_counter() - t0


def update(nb: nbformat.NotebookNode, stored: nbformat.NotebookNode) -> list[int]:
    """Give ``nb`` the outputs of ``stored`` (jupytext's matching); return the indices of code cells whose outputs
    were carried over from a cell with a different source (matched by position)."""
    combined = combine_inputs_with_outputs(nb, stored)
    combined.metadata = {**nb.metadata, **stored.metadata}   # keep the stored run's widget state and kernel info
    for cell in combined.cells:
        cell.metadata.pop("lines_to_next_cell", None)
    sources = {c.source for c in stored.cells if c.cell_type == "code"}
    carried = [i for i, c in enumerate(combined.cells)
               if c.cell_type == "code" and c.get("outputs") and c.source not in sources]
    nb.cells, nb.metadata = combined.cells, combined.metadata
    return carried


SHOW_SOURCE = re.compile(r"^dc\.viz\.show_source\((.+)\)$")


def refresh_shown_sources(nb: nbformat.NotebookNode) -> list[int]:
    """Re-render the cells that only call ``dc.viz.show_source(...)``: their output is the package's source, a
    function of the code alone, so an edit to a shown function must show up without re-running the chapter.
    Returns the indices of cells whose output changed."""
    from IPython.core.formatters import format_display_data
    from IPython.display import Markdown

    namespace: dict = {}
    for cell in nb.cells:   # the chapter's imports, so the shown names resolve as in the notebook
        if cell.cell_type == "code":
            for line in cell.source.splitlines():
                if line.startswith(("import ", "from ")):
                    exec(line, namespace)
    changed = []
    for i, cell in enumerate(nb.cells):
        lines = [ln for ln in cell.source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")] \
            if cell.cell_type == "code" else []
        matches = [SHOW_SOURCE.match(ln) for ln in lines]
        if not lines or not all(matches):
            continue
        outputs = []
        for m in matches:
            source = inspect.getsource(eval(m.group(1), namespace))
            data, metadata = format_display_data(Markdown(f"```python\n{source}```"))
            outputs.append(nbformat.v4.new_output("display_data", data=data, metadata=metadata))
        if [o.get("data", {}).get("text/markdown") for o in cell.get("outputs", [])] != \
                [o["data"]["text/markdown"] for o in outputs]:
            cell.outputs = outputs
            changed.append(i)
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("chapters", nargs="*", help="chapter prefixes to build (default: all)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--execute", action="store_true", help="run the notebook and store its outputs")
    mode.add_argument("--update", action="store_true", help="keep the committed notebook's outputs (prose edits)")
    args = ap.parse_args()
    for src in sorted(SRC.glob("*.py")):
        if args.chapters and not any(src.stem.startswith(c) for c in args.chapters):
            continue
        nb, target = build(src), OUT / f"{src.stem}.ipynb"
        if args.execute:
            secs = execute(nb)
            print(f"{src.stem}: executed in {secs:.0f} s")
        elif args.update and target.exists():
            carried = update(nb, nbformat.read(target, as_version=4))
            for i in refresh_shown_sources(nb):
                print(f"  cell {i}: the package source it shows changed; re-rendered")
            for i in carried:
                print(f"  cell {i}: code changed, outputs kept from the old cell at its position — re-run the chapter "
                      f"(--execute) if they may differ:\n    {nb.cells[i].source.splitlines()[0][:100]}")
        nbformat.write(nb, target)
        print(f"wrote notebooks/{src.stem}.ipynb")


if __name__ == "__main__":
    sys.exit(main())
