"""Datasets: Fashion-MNIST and MNIST as tensors in [−1, 1], out-of-distribution digits, and 2-D toy distributions.

Fashion-MNIST is found, in order: :data:`DATA_DIR` (the clone's ``data/`` folder, or a per-user folder after a
regular install; ``$DIFFUSION_COURSE_DATA`` overrides both, see :func:`default_data_dir`), the Debian/Ubuntu package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), then downloaded into :data:`DATA_DIR` when
online. Nothing here is committed to the repository.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import shutil
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATA_DIR", "default_data_dir", "dataset_folder", "FASHION_CLASSES", "load_fashion_mnist", "load_mnist", "load_ood_digits", "OOD_DIGIT_SOURCES",
    "toy_2d", "TOY_2D_NAMES", "DatasetNotFound", "DatasetCorrupt",
]



def default_data_dir(package_dir: Path | None = None, environ: dict | None = None) -> Path:
    """Where datasets are looked for first and downloaded to: ``$DIFFUSION_COURSE_DATA`` when set; else the clone's
    ``data/`` folder when the package runs from a source checkout (a clone or an editable install); else a per-user
    folder (``$XDG_DATA_HOME/diffusion-course``, ``~/.local/share/diffusion-course``; ``%LOCALAPPDATA%`` on
    Windows) — never inside ``site-packages``, where a regular ``pip install .`` puts the package."""
    environ = os.environ if environ is None else environ
    if environ.get("DIFFUSION_COURSE_DATA"):
        return Path(environ["DIFFUSION_COURSE_DATA"]).expanduser()
    root = (package_dir or Path(__file__).resolve().parent).parent
    if (root / "pyproject.toml").is_file() and (root / "data").is_dir():
        return root / "data"
    base = environ.get("XDG_DATA_HOME") or environ.get("LOCALAPPDATA") or Path.home() / ".local" / "share"
    return Path(base) / "diffusion-course"


DATA_DIR = default_data_dir()
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


class DatasetCorrupt(ValueError):
    """Raised when a data file is truncated, damaged or not the official one; the message says how to fix it."""


# MD5 of the official .gz files (Fashion-MNIST's README; torchvision's MNIST table) and SHA-256 of the
# decompressed IDX bytes (computed from Debian's dataset-fashion-mnist, which re-gzips the same content):
# the content check accepts any honest copy (re-compressed or un-gzipped), the .gz check any download.
_GZ_MD5 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
}
_IDX_SHA256 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    "mnist": {},
}
_COUNTS = {"train": 60000, "test": 10000}


def _fix_hint(path: Path, name: str) -> str:
    path = Path(path)
    try:
        ours = path.resolve().is_relative_to(DATA_DIR.resolve())
    except OSError:
        ours = False
    if ours:
        return f"Delete it (rm {path}) and call the loader again to download a fresh, verified copy."
    if name == "fashion-mnist" and str(path).startswith("/usr/share/datasets/"):
        return "Reinstall the package: sudo apt-get install --reinstall dataset-fashion-mnist"
    return f"Replace it with the official file (or delete it to let the loader download one into {DATA_DIR / name}/)."


def _read_raw(path: Path, name: str) -> bytes:
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"  # by content, not by name (downloads are *.part files)
    except OSError as err:
        raise DatasetCorrupt(f"{path} cannot be read ({err}). {_fix_hint(path, name)}") from None
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except EOFError:
        raise DatasetCorrupt(f"{path} is truncated (the gzip stream ends early). {_fix_hint(path, name)}") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as err:
        raise DatasetCorrupt(f"{path} is corrupt ({type(err).__name__}: {err}). {_fix_hint(path, name)}") from None


def _read_idx(path: Path, name: str = "") -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array, checked: header, length, and the official checksum if known."""
    path = Path(path)
    raw = _read_raw(path, name)
    if len(raw) < 4:
        raise DatasetCorrupt(f"{path} is truncated: {len(raw)} bytes, not even an IDX header. {_fix_hint(path, name)}")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise DatasetCorrupt(f"{path} is not an unsigned-byte IDX file (header {raw[:4].hex()}). "
                             f"{_fix_hint(path, name)}")
    if len(raw) < 4 + 4 * ndim:
        raise DatasetCorrupt(f"{path} is truncated inside its IDX header. {_fix_hint(path, name)}")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    expected = 4 + 4 * ndim + math.prod(dims)
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DatasetCorrupt(f"{path} is {what}: {len(raw)} bytes where the IDX header {dims} needs {expected}. "
                             f"{_fix_hint(path, name)}")
    key = path.name[:-3] if path.name.endswith(".gz") else path.name
    known = _IDX_SHA256.get(name, {}).get(key)
    if known is not None and hashlib.sha256(raw).hexdigest() != known:
        raise DatasetCorrupt(f"{path} is not the official {name} file {key} (its content's sha256 differs). "
                             f"{_fix_hint(path, name)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(name: str, split: str) -> tuple[Path, Path] | None:
    img, lab = _FILES[split]
    for folder in [DATA_DIR / name, *_SOURCES[name]["system"]]:
        a, b = folder / img, folder / lab
        if a.exists() and b.exists():
            return a, b
        # Some mirrors ship the files un-gzipped.
        a2, b2 = folder / img[:-3], folder / lab[:-3]
        if a2.exists() and b2.exists():
            return a2, b2
    return None


def dataset_folder(name: str = "fashion-mnist", split: str = "train") -> Path | None:
    """The folder a split of ``name`` ("fashion-mnist" or "mnist") is read from — the data folder or a system one —
    or None when it is on disk in neither."""
    if name not in _SOURCES:
        raise ValueError(f"name must be one of {sorted(_SOURCES)}, got {name!r}")
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    found = _find(name, split)
    return found[0].parent if found else None


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(path: Path, name: str, fname: str) -> bool:
    """True if ``path`` is the official ``fname``: its .gz MD5, or else its decompressed content's SHA-256."""
    if _GZ_MD5[name].get(fname) == _md5(path):
        return True
    known = _IDX_SHA256.get(name, {}).get(fname[:-3])
    if known is None:
        return False
    try:
        return hashlib.sha256(_read_raw(path, name)).hexdigest() == known
    except DatasetCorrupt:
        return False


def _fetch(url: str, target: Path, name: str, fname: str) -> None:
    """Download ``url`` to ``target`` through a ``.part`` file; only a complete, verified file is kept."""
    from tqdm.auto import tqdm

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=fname + ".", suffix=".part")
    tmp = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=20) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            got = 0
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=f"download {fname}") as bar:
                while chunk := resp.read(1 << 16):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if total and got != total:
            raise OSError(f"the server closed the connection after {got} of {total} bytes of {fname}")
        if not _verified(tmp, name, fname):
            raise OSError(f"{fname} from {url} failed its checksum ({got} bytes, md5 {_md5(tmp)}, expected "
                          f"{_GZ_MD5[name][fname]}): truncated or not the official file; nothing was kept")
        os.replace(tmp, target)  # atomic: only a verified file ever carries the final name
    except http.client.HTTPException as err:  # IncompleteRead and friends are not OSErrors
        raise OSError(f"download of {fname} failed ({type(err).__name__}: {err})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _download(name: str, split: str) -> tuple[Path, Path]:
    folder = DATA_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for base in _SOURCES[name]["urls"]:
        try:
            out = []
            for fname in _FILES[split]:
                target = folder / fname
                if target.exists() and not _verified(target, name, fname):
                    target.unlink()  # ours, from an earlier download, and not the official file: fetch again
                if not target.exists():
                    _fetch(base + fname, target, name, fname)
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
        img_arr, lab_arr = _read_idx(paths[0], name), _read_idx(paths[1], name)
        if img_arr.ndim != 3 or lab_arr.ndim != 1:
            raise DatasetCorrupt(f"{paths[0]} must hold images (N, H, W) and {paths[1]} labels (N,); got shapes "
                                 f"{img_arr.shape} and {lab_arr.shape} (are the two files swapped?)")
        if img_arr.shape[0] != lab_arr.shape[0] or img_arr.shape[0] != _COUNTS[split]:
            raise DatasetCorrupt(f"{name} {split}: {img_arr.shape[0]} images in {paths[0]} and {lab_arr.shape[0]} "
                                 f"labels in {paths[1]}; the official split has {_COUNTS[split]} of each. "
                                 f"{_fix_hint(paths[0], name)}")
        if lab_arr.size and int(lab_arr.max()) > 9:
            raise DatasetCorrupt(f"{paths[1]} holds labels up to {int(lab_arr.max())}; classes are 0..9. "
                                 f"{_fix_hint(paths[1], name)}")
        images = torch.from_numpy(img_arr.copy())
        labels = torch.from_numpy(lab_arr.astype(np.int64))
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


# --------------------------------------------------------------------------- out-of-distribution digits
OOD_DIGIT_SOURCES = ("MNIST", "scikit-learn digits (8×8 → 28×28)")


def _sklearn_digits_28() -> torch.Tensor:
    """scikit-learn's 1,797 8×8 digits (values 0…16, ink high) as MNIST-like 28×28 images in [−1, 1]: each upsampled
    bilinearly to 20×20 and centred on a black 28×28 canvas (MNIST puts its digits in a 20×20 box), then rounded to
    the 8-bit grid like every other image here."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetNotFound(
            "MNIST was not found and could not be downloaded, and the offline stand-in needs scikit-learn, which is "
            f"not installed. Either put MNIST's t10k IDX files in {DATA_DIR / 'mnist'}/, connect to the internet, or "
            "pip install scikit-learn (its 8×8 digits ship inside the package).") from None
    import torch.nn.functional as F

    small = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0).unsqueeze(1)   # (1797, 1, 8, 8) in [0, 1]
    big = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    canvas = F.pad(big, (4, 4, 4, 4))                                                         # (1797, 1, 28, 28)
    return (canvas * 255).round() / 127.5 - 1


def load_ood_digits(n: int, seed: int = 0, download: bool = True) -> tuple[torch.Tensor, str]:
    """``n`` handwritten digits to test a Fashion-MNIST model out of distribution: ``(images, source)``, images
    float (n, 1, 28, 28) in [−1, 1] on the 8-bit grid (a seeded random subset), ``source`` one of
    :data:`OOD_DIGIT_SOURCES`, naming which set ran.

    MNIST's test split (LeCun et al. 1998) when it is on disk (``DATA_DIR/mnist`` or ``/usr/share/datasets/mnist``,
    IDX files like Fashion-MNIST's) or, with ``download``, can be fetched: Fashion-MNIST → MNIST is the classic pair
    of Nalisnick et al. 2019. Offline, the 8×8 digits shipped inside scikit-learn (``sklearn.datasets.load_digits``,
    1,797 images) upsampled to MNIST's layout: an honest stand-in, but smoother than real MNIST strokes.
    """
    from . import validate

    n = validate.positive_int("n", n)
    seed = validate.non_negative_int("seed", seed)
    try:
        images, source = _load("mnist", "test", download)[0], OOD_DIGIT_SOURCES[0]
    except DatasetNotFound:
        images, source = _sklearn_digits_28(), OOD_DIGIT_SOURCES[1]
    if n > images.shape[0]:
        raise ValueError(f"n must be at most {images.shape[0]} (the size of {source}), got {n}")
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx].clone(), source


# --------------------------------------------------------------------------- 2-D toy sets
TOY_2D_NAMES = ("moons", "swiss_roll", "gaussian_ring", "checkerboard")


def toy_2d(name: str, n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """``n`` points from a 2-D toy distribution, roughly standardised to [−2, 2]², as (n, 2) float32.

    ``name``: ``"moons"``, ``"swiss_roll"``, ``"gaussian_ring"`` (8 Gaussians on a circle) or
    ``"checkerboard"``.
    """
    if name not in TOY_2D_NAMES:
        raise ValueError(f"unknown toy set {name!r}; choose one of {TOY_2D_NAMES}")
    from . import validate

    validate.positive_int("n", n)
    noise = validate.real("noise", noise, low=0.0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
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
