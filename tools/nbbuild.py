"""Build the chapter notebooks from their percent-format sources, optionally executing them.

    python tools/nbbuild.py                 # notebooks/src/*.py -> notebooks/*.ipynb (no outputs)
    python tools/nbbuild.py --execute 01    # ... and run chapter 01 for real (full mode) to store outputs

Sources are plain Python with ``# %%`` code cells and ``# %% [markdown]`` cells (each markdown
line prefixed by ``# ``), so diffs are readable. The shared header (Colab badge + set-up cell,
with the repository URL kept here, in one place) is inserted after the first markdown cell.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SRC, OUT = ROOT / "notebooks" / "src", ROOT / "notebooks"
# The one place the repository's address is written. The Colab badge and the set-up cell work once the
# course is published there (a public GitHub repository holding this tree, branch ``main``).
REPO_SLUG = "diffusion-course/diffusion-course"
REPO_URL = f"https://github.com/{REPO_SLUG}"
COLAB_URL = f"https://colab.research.google.com/github/{REPO_SLUG}/blob/main/notebooks/{{name}}"

SETUP_CELL = f'''# Set-up. In Colab this installs the course package (with its small checkpoints) and turns on
# widgets; anywhere else it does nothing: follow the README's two commands instead.
import sys
if "google.colab" in sys.modules:
    import subprocess

    def _run(cmd, what):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"Set-up failed while {{what}}:\\n{{(done.stderr or done.stdout).strip()[-800:]}}\\n\\n"
                "The course must be reachable at {REPO_URL} for this cell to work. Instead you can "
                "upload the course folder to /content/diffusion-course (or mount Drive and copy it there) "
                "and run this cell again, or run the course locally: see the README.") from None

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
    cells, kind, lines = [], None, []

    def flush():
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(re.sub(r"^# ?", "", ln) for ln in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(body))
        elif body.strip():
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("chapters", nargs="*", help="chapter prefixes to build (default: all)")
    ap.add_argument("--execute", action="store_true", help="run the notebook and store its outputs")
    args = ap.parse_args()
    for src in sorted(SRC.glob("*.py")):
        if args.chapters and not any(src.stem.startswith(c) for c in args.chapters):
            continue
        nb = build(src)
        if args.execute:
            secs = execute(nb)
            print(f"{src.stem}: executed in {secs:.0f} s")
        nbformat.write(nb, OUT / f"{src.stem}.ipynb")
        print(f"wrote notebooks/{src.stem}.ipynb")


if __name__ == "__main__":
    sys.exit(main())
