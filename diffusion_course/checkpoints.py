"""Checkpoints: a ``state_dict`` file plus a small JSON manifest, written atomically.

Atomic = write to a temporary file in the same folder, then ``os.replace``: an interrupted run
leaves either the old checkpoint or the new one, never half of one. Loading uses
``torch.load(weights_only=True)`` so a checkpoint cannot run code.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(obj: Any, path: str | os.PathLike, manifest: dict | None = None) -> str:
    """Save ``obj`` (tensors, dicts, lists, numbers) atomically; write ``<path>.json`` if ``manifest``.

    Returns the sha256 of the written file (also stored in the manifest).
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    _atomic_write_bytes(path, payload)
    digest = hashlib.sha256(payload).hexdigest()
    if manifest is not None:
        manifest = {**manifest, "file": path.name, "sha256": digest, "bytes": len(payload)}
        _atomic_write_bytes(manifest_path(path), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return digest


def manifest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix(".json")


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", verify: bool = True) -> Any:
    """Load with ``weights_only=True``; if a manifest exists and ``verify``, check its sha256 first."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    mpath = manifest_path(path)
    if verify and mpath.exists():
        expected = json.loads(mpath.read_text()).get("sha256")
        if expected and sha256_file(path) != expected:
            raise ValueError(f"{path} does not match the sha256 in {mpath.name}: the file is corrupt or was "
                             "replaced. Delete it to retrain, or restore it from the repository.")
    return torch.load(path, map_location=map_location, weights_only=True)


def update_manifest(path: str | os.PathLike, **fields) -> dict:
    """Merge ``fields`` into an existing manifest (atomically); the checksum is recomputed from the file."""
    path = Path(path)
    manifest = {**read_manifest(path), **fields, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    _atomic_write_bytes(manifest_path(path), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    mpath = manifest_path(path)
    return json.loads(mpath.read_text()) if mpath.exists() else {}
