"""Open the course in JupyterLab:  ``python -m diffusion_course.lab``.

Starts JupyterLab on the course's ``notebooks/`` folder (the source tree's, or ``--notebooks DIR``). As root — in a
container or on many cloud machines — JupyterLab refuses to start unless told ``--allow-root``; the launcher adds it
only then, so the same command works for everyone. Any further arguments are passed to JupyterLab unchanged.

First it makes sure Fashion-MNIST is there: found on disk, or downloaded (with a progress bar) into the course's
data folder when online; offline it says what to do and opens the course anyway (``--no-download`` skips the step).
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


def ensure_data(download: bool = True) -> bool:
    """Fashion-MNIST on disk (downloading it when ``download`` and online); prints where it is, or what to do
    offline. Returns whether both splits are available."""
    from . import data

    try:
        for split in ("train", "test"):
            data.load_fashion_mnist(split, download=download)
    except (data.DatasetNotFound, data.DatasetCorrupt) as err:
        print(f"Fashion-MNIST is not available yet, so chapters that train or measure will stop at their first data "
              f"cell.\n{err}\nThe course opens anyway.", file=sys.stderr, flush=True)
        return False
    print(f"Fashion-MNIST: ready (in {data.dataset_folder('fashion-mnist', 'train')}).", flush=True)   # flushed before JupyterLab writes
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", default=None, help="the folder to open (default: the course's notebooks/)")
    parser.add_argument("--no-download", action="store_true", help="do not download Fashion-MNIST if it is missing")
    args, extra = parser.parse_known_args(argv)
    folder = Path(args.notebooks) if args.notebooks else notebooks_dir()
    if not folder.is_dir():
        parser.error(f"no notebooks folder at {folder}: run this from a clone of the course (or pass --notebooks DIR)")
    ensure_data(download=not args.no_download)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    return subprocess.call(lab_command(folder, extra, is_root))


if __name__ == "__main__":
    raise SystemExit(main())
