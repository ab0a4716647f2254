"""Open the course in JupyterLab:  ``python -m diffusion_course.lab``.

Starts JupyterLab on the course's ``notebooks/`` folder (the source tree's, or ``--notebooks DIR``). As root — in a
container or on many cloud machines — JupyterLab refuses to start unless told ``--allow-root``; the launcher adds it
only then, so the same command works for everyone. Any further arguments are passed to JupyterLab unchanged.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def notebooks_dir() -> Path:
    """The course's notebooks folder in the source tree (a clone or an editable install)."""
    return Path(__file__).resolve().parent.parent / "notebooks"


def lab_command(notebooks: Path, extra: list[str], is_root: bool) -> list[str]:
    """The JupyterLab command line: the notebooks folder, ``--allow-root`` only for root, then ``extra``."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={notebooks}"]
    if is_root and "--allow-root" not in extra:
        cmd.append("--allow-root")
    return cmd + list(extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", default=None, help="the folder to open (default: the course's notebooks/)")
    args, extra = parser.parse_known_args(argv)
    folder = Path(args.notebooks) if args.notebooks else notebooks_dir()
    if not folder.is_dir():
        parser.error(f"no notebooks folder at {folder}: run this from a clone of the course (or pass --notebooks DIR)")
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    return subprocess.call(lab_command(folder, extra, is_root))


if __name__ == "__main__":
    raise SystemExit(main())
