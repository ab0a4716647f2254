"""Measured records the chapters read: small JSON files that ship with the package (so a regular ``pip install .``
has them), each written by the script that ``benchmarks/README.md`` or ``research/README.md`` names for it.

    rec = records.load("consistency_nfe")      # the dict stored in diffusion_course/records/consistency_nfe.json

A script writes one only when told to in so many words (``--json diffusion_course/records/NAME.json``).
A record may keep images beside it (``NAME.npz``, uint8): :func:`images` reads them back as tensors in [−1, 1].
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

FOLDER = Path(__file__).resolve().parent


def names() -> list[str]:
    """The records that ship, by name."""
    return sorted(p.stem for p in FOLDER.glob("*.json"))


def path(name: str) -> Path:
    """Where the record ``name`` lives (in the installed package)."""
    return FOLDER / f"{name}.json"


def load(name: str) -> dict:
    """The record ``name``; a clear error listing the records that exist otherwise."""
    if not isinstance(name, str) or not path(name).exists():
        raise ValueError(f"no record {name!r}; available: {names()}")
    return json.loads(path(name).read_text())


def images(name: str) -> dict[str, torch.Tensor]:
    """The images stored beside record ``name`` (``NAME.npz``: uint8 arrays k), as float32 tensors x = k/127.5 − 1."""
    load(name)  # a clear error for an unknown name
    file = FOLDER / f"{name}.npz"
    if not file.exists():
        raise ValueError(f"record {name!r} keeps no images (no {file.name})")
    with np.load(file) as arrays:
        return {key: torch.from_numpy(arrays[key]).float() / 127.5 - 1 for key in arrays.files}
