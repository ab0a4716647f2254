"""Datasets: Fashion-MNIST and MNIST as tensors in [−1, 1], and 2-D toy distributions.

Fashion-MNIST is found, in order: the project's ``data/`` folder, the Debian/Ubuntu package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), then downloaded into ``data/``
when online. Nothing here is committed to the repository.
"""
from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATA_DIR", "FASHION_CLASSES", "load_fashion_mnist", "load_mnist", "toy_2d", "TOY_2D_NAMES",
    "DatasetNotFound",
]

DATA_DIR = Path(os.environ.get("DIFFUSION_COURSE_DATA", Path(__file__).resolve().parent.parent / "data"))
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_SOURCES = {
    "fashion-mnist": {
        "system": [Path("/usr/share/datasets/fashion-mnist")],
        "urls": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    },
    "mnist": {
        "system": [Path("/usr/share/datasets/mnist")],
        "urls": ["https://ossci-datasets.s3.amazonaws.com/mnist/"],
    },
}


class DatasetNotFound(FileNotFoundError):
    """Raised when a dataset is in none of the places we look and cannot be downloaded."""


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(name: str, split: str) -> tuple[Path, Path] | None:
    img, lab = _FILES[split]
    for folder in [DATA_DIR / name, *_SOURCES[name]["system"]]:
        for suffix in ("", ):
            a, b = folder / (img + suffix), folder / (lab + suffix)
            if a.exists() and b.exists():
                return a, b
            # Some mirrors ship the files un-gzipped.
            a2, b2 = folder / img[:-3], folder / lab[:-3]
            if a2.exists() and b2.exists():
                return a2, b2
    return None


def _download(name: str, split: str) -> tuple[Path, Path]:
    from tqdm.auto import tqdm

    folder = DATA_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for base in _SOURCES[name]["urls"]:
        try:
            out = []
            for fname in _FILES[split]:
                target = folder / fname
                if not target.exists():
                    with urllib.request.urlopen(base + fname, timeout=20) as resp:
                        total = int(resp.headers.get("Content-Length") or 0)
                        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
                        with os.fdopen(fd, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                                             desc=f"download {fname}") as bar:
                            while chunk := resp.read(1 << 16):
                                f.write(chunk)
                                bar.update(len(chunk))
                        os.replace(tmp, target)  # atomic: an interrupted download leaves no half file
                out.append(target)
            return out[0], out[1]
        except OSError as e:  # URLError is an OSError
            errors.append(f"{base}: {e}")
    raise DatasetNotFound(_not_found_message(name, errors))


def _not_found_message(name: str, errors: list[str]) -> str:
    pkg = "dataset-fashion-mnist" if name == "fashion-mnist" else None
    lines = [f"{name} was not found, and could not be downloaded.", "Provide it in one of these ways:",
             f"  1. put the four IDX files ({', '.join(_FILES['train'] + _FILES['test'])}) in {DATA_DIR / name}/"]
    if pkg:
        lines.append(f"  2. on Debian/Ubuntu: sudo apt-get install {pkg}   (files land in /usr/share/datasets/{name})")
    lines.append(f"  {3 if pkg else 2}. connect to the internet and call this function again: it downloads into {DATA_DIR / name}/")
    if errors:
        lines.append("Download errors: " + "; ".join(errors))
    return "\n".join(lines)


_cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _load(name: str, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    key = (name, split)
    if key not in _cache:
        paths = _find(name, split)
        if paths is None:
            if not download:
                raise DatasetNotFound(_not_found_message(name, []))
            paths = _download(name, split)
        images = torch.from_numpy(_read_idx(paths[0]).copy())
        labels = torch.from_numpy(_read_idx(paths[1]).astype(np.int64))
        x = images.float().div_(127.5).sub_(1.0).unsqueeze(1)  # (N, 1, 28, 28) in [-1, 1]
        _cache[key] = (x, labels)
    x, y = _cache[key]
    return x, y


def load_fashion_mnist(split: str = "train", download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST (Xiao et al. 2017) as ``(images, labels)``: float (N, 1, 28, 28) in [−1, 1], int64 (N,).

    The tensors are cached in memory and shared between calls: clone before modifying them.
    """
    return _load("fashion-mnist", split, download)


def load_mnist(split: str = "train", download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST digits, same format as :func:`load_fashion_mnist` (downloaded when not found)."""
    return _load("mnist", split, download)


# --------------------------------------------------------------------------- 2-D toy sets
TOY_2D_NAMES = ("moons", "swiss_roll", "gaussian_ring", "checkerboard")


def toy_2d(name: str, n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """``n`` points from a 2-D toy distribution, roughly standardised to [−2, 2]², as (n, 2) float32.

    ``name``: ``"moons"``, ``"swiss_roll"``, ``"gaussian_ring"`` (8 Gaussians on a circle) or
    ``"checkerboard"``.
    """
    if name not in TOY_2D_NAMES:
        raise ValueError(f"unknown toy set {name!r}; choose one of {TOY_2D_NAMES}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    g = generator
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    z = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if name == "moons":
        upper = u(n) < 0.5
        a = u(n) * math.pi
        x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
        y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
        pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.6 + noise * 2 * z(n, 2)
    elif name == "swiss_roll":
        a = 1.5 * math.pi * (1 + 2 * u(n))
        pts = torch.stack([a * torch.cos(a), a * torch.sin(a)], 1) / 7.0 + noise * 2 * z(n, 2)
    elif name == "gaussian_ring":
        k = torch.randint(0, 8, (n,), generator=g)
        ang = k.float() * (2 * math.pi / 8)
        pts = 1.5 * torch.stack([torch.cos(ang), torch.sin(ang)], 1) + 0.1 * z(n, 2)
    else:  # checkerboard: 4x4 board on [-2, 2]², the 8 "black" squares
        cell = torch.randint(0, 8, (n,), generator=g)
        row = cell // 2
        col = 2 * (cell % 2) + (row % 2)
        pts = torch.stack([col.float(), row.float()], 1) + u(n, 2) - 2.0
    return pts.float()
