"""Measured records the chapters read: small JSON files that ship with the package (so a regular ``pip install .``
has them), each written by the script that ``benchmarks/README.md`` or ``research/README.md`` names for it.

    rec = records.load("consistency_nfe")      # the dict stored in diffusion_course/records/consistency_nfe.json

A script writes one only when told to in so many words (``--json diffusion_course/records/NAME.json``).
"""
from __future__ import annotations

import json
from pathlib import Path

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
