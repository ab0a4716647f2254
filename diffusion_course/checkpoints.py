"""Checkpoints: a ``state_dict`` file plus a small JSON manifest, written atomically and kept consistent.

Atomic = write to a temporary file in the same folder, then ``os.replace``: an interrupted run
leaves either the old checkpoint or the new one, never half of one. Loading uses
``torch.load(weights_only=True)`` so a checkpoint cannot run code.

The pair ``<name>.pt`` + ``<name>.json`` is kept consistent by a small journal. A save
1. writes the new bytes to ``<name>.pt.<pid>.<random>.tmp`` (flushed to disk),
2. writes the manifest with the *new* sha256 (and the sha256 of the file it replaces as
   ``previous_sha256``),
3. renames the temporary file over ``<name>.pt``.
A kill between 2 and 3 leaves a manifest that vouches for bytes still sitting in the ``.tmp`` file:
:func:`load` finds them, checks them against the manifest and completes the save. Any other
disagreement is reported as what it is (truncated file, a different file, the previous version,
an unreadable manifest or archive), naming the file and the fix. ``.tmp`` files of processes that
no longer run are removed.

Checkpoints under :data:`CHECKPOINT_DIR` (the shipped ones) must have a manifest with a sha256. The weights of
earlier versions of a shipped model (its lineage, e.g. ``fmnist-cd-v4``) live in :data:`LINEAGE_DIR`, which a
regular install does not copy: nothing a learner runs loads them; they are what a recipe with ``init_from``
continues from.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch


def _find_checkpoint_dir() -> Path:
    """$DIFFUSION_COURSE_CHECKPOINTS; else the source tree's data/checkpoints (a clone, or ``pip install -e .``);
    else the copy a regular ``pip install .`` / ``pip install git+…`` puts under <prefix>/share/diffusion-course/
    (pyproject's data-files); else the source-tree path."""
    import site
    import sys

    if os.environ.get("DIFFUSION_COURSE_CHECKPOINTS"):
        return Path(os.environ["DIFFUSION_COURSE_CHECKPOINTS"])
    source = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
    if source.is_dir():
        return source
    for prefix in (sys.prefix, sys.base_prefix, getattr(site, "USER_BASE", None) or ""):
        installed = Path(prefix) / "share" / "diffusion-course" / "checkpoints"
        if prefix and installed.is_dir():
            return installed
    return source


# The shipped checkpoints (what the chapters load), and the earlier versions they were trained from (source tree only).
CHECKPOINT_DIR = _find_checkpoint_dir()
LINEAGE_DIR = CHECKPOINT_DIR.parent / "lineage"

_TMP_SUFFIX = ".tmp"
_ORPHAN_AGE_S = 3600  # a .tmp file without a recognisable writer pid is an orphan once it is this old


# --------------------------------------------------------------------------- low-level writing
def _tmp_prefix(path: Path) -> str:
    return f"{path.name}.{os.getpid()}."


def _write_tmp(path: Path, payload: bytes) -> Path:
    """``payload`` in a fresh temporary file next to ``path`` (flushed and fsynced); returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared
    except BaseException:
        _unlink_quietly(Path(tmp))
        raise
    return Path(tmp)


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    tmp = _write_tmp(path, payload)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process (or a platform where we cannot tell): leave its files alone
    return True


def _temp_files(path: Path) -> list[Path]:
    """Temporary files of saves to ``path`` (ours: ``<name>.<pid>.<random>.tmp``)."""
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.glob(f"{path.name}.*{_TMP_SUFFIX}") if p.is_file())


def _is_orphan(tmp: Path, path: Path) -> bool:
    middle = tmp.name[len(path.name) + 1:-len(_TMP_SUFFIX)]
    pid_text = middle.split(".", 1)[0]
    if pid_text.isdigit():
        return not _pid_alive(int(pid_text))
    try:  # an older naming scheme: judge by age
        return time.time() - tmp.stat().st_mtime > _ORPHAN_AGE_S
    except OSError:
        return False


def cleanup_orphans(path: str | os.PathLike) -> list[Path]:
    """Remove ``.tmp`` files left next to ``path`` (and its manifest) by saves that were killed.

    Only files whose writing process no longer runs are removed. Returns the removed paths.
    """
    path = Path(path)
    removed = []
    for target in (path, manifest_path(path)):
        for tmp in _temp_files(target):
            if _is_orphan(tmp, target):
                _unlink_quietly(tmp)
                removed.append(tmp)
    return removed


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


# --------------------------------------------------------------------------- save
def save(obj: Any, path: str | os.PathLike, manifest: dict | None = None) -> str:
    """Save ``obj`` (tensors, dicts, lists, numbers) atomically; write ``<path>.json`` if ``manifest``.

    The manifest is written *before* the new file is moved into place, holding the new sha256, so the
    pair is never silently inconsistent (see the module docstring). Without ``manifest``, an existing
    manifest of ``path`` is kept and its checksum updated. Returns the sha256 of the written file.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    cleanup_orphans(path)
    mpath = manifest_path(path)
    if manifest is None and mpath.exists():
        try:
            manifest = {k: v for k, v in json.loads(mpath.read_text()).items()
                        if k not in {"sha256", "bytes", "previous_sha256"}}
        except (ValueError, OSError):
            manifest = {}
    tmp = _write_tmp(path, payload)
    try:
        if manifest is not None:
            previous = sha256_file(path) if path.exists() else None
            record = {**manifest, "file": path.name, "sha256": digest, "bytes": len(payload)}
            if previous is not None and previous != digest:
                record["previous_sha256"] = previous
            else:
                record.pop("previous_sha256", None)
            _atomic_write_bytes(mpath, _manifest_bytes(record))
        os.replace(tmp, path)
    except BaseException:
        # Killed between the manifest and the rename (an exception, not SIGKILL): the .tmp holds exactly the
        # bytes the manifest now names, so keep it for load() to complete the save; otherwise remove it.
        if manifest is None or not mpath.exists() or _manifest_sha(mpath) != digest:
            _unlink_quietly(tmp)
        raise
    return digest


def _manifest_sha(mpath: Path) -> str | None:
    try:
        return json.loads(mpath.read_text()).get("sha256")
    except (ValueError, OSError):
        return None


def manifest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix(".json")


# --------------------------------------------------------------------------- load
def _is_shipped(path: Path) -> bool:
    try:
        return path.resolve().parent in (CHECKPOINT_DIR.resolve(), LINEAGE_DIR.resolve()) \
            and not path.name.endswith(".train.pt")
    except OSError:
        return False


def _fix_hint(path: Path) -> str:
    stem = path.name[:-3] if path.name.endswith(".pt") else path.stem
    if _is_shipped(path):
        return (f"Restore the shipped files with `git checkout data/{path.parent.name}/{stem}.*` (or "
                f"`git lfs pull` if they are LFS pointers), or retrain with "
                f"`python -m diffusion_course.train {stem} --out DIR`.")
    return "Re-create it (re-run the training or save that wrote it), or delete both files to start over."


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of checkpoint ``path`` (``{}`` if there is none); a clear error if it is unreadable."""
    path = Path(path)
    mpath = manifest_path(path)
    if not mpath.exists():
        return {}
    text = mpath.read_text(errors="replace")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        stripped = text.strip()
        what = "is empty" if not stripped else ("is truncated" if stripped.startswith("{")
                                                and not stripped.endswith("}") else "is not valid JSON")
        raise ValueError(f"the manifest {mpath} {what} ({err.msg}: line {err.lineno}, column {err.colno}); "
                         f"it was cut off or edited. {_fix_hint(path)}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"the manifest {mpath} holds a {type(manifest).__name__}, not a JSON object. "
                         f"{_fix_hint(path)}")
    return manifest


def _complete_interrupted_save(path: Path, expected: str, size: int | None) -> bool:
    """A kill between manifest and rename left the new bytes in a .tmp: verify them and finish the rename."""
    for tmp in reversed(_temp_files(path)):
        try:
            if size is not None and tmp.stat().st_size != size:
                continue
            if sha256_file(tmp) == expected:
                os.replace(tmp, path)
                return True
        except OSError:
            continue
    return False


def verify(path: str | os.PathLike, require_manifest: bool | None = None) -> dict:
    """Check ``path`` against the sha256 in its manifest; returns the manifest.

    ``require_manifest`` (default: only for shipped checkpoints under ``CHECKPOINT_DIR``) makes a
    missing manifest or checksum an error. A save that was killed between writing the manifest and moving
    the new file into place is completed here. Every mismatch is worded by what happened.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if require_manifest is None:
        require_manifest = _is_shipped(path)
    mpath = manifest_path(path)
    manifest = read_manifest(path)
    expected = manifest.get("sha256")
    if not expected:
        if require_manifest:
            what = f"its manifest {mpath.name} is missing" if not mpath.exists() else \
                f"its manifest {mpath.name} has no sha256"
            raise ValueError(f"{path} is a shipped checkpoint but {what}, so its integrity cannot be checked. "
                             f"{_fix_hint(path)}")
        return manifest
    actual = sha256_file(path)
    if actual == expected:
        return manifest
    size = manifest.get("bytes")
    if _complete_interrupted_save(path, expected, size):
        print(f"{path.name}: completed a save that was interrupted after its manifest was written")
        return manifest
    have = path.stat().st_size
    if actual == manifest.get("previous_sha256"):
        raise ValueError(f"the last save of {path} was interrupted after writing its manifest: {path.name} is still "
                         f"the previous version (intact, sha256 {actual[:12]}…), and the new file is gone, so the "
                         f"manifest describes a checkpoint that does not exist. {_fix_hint(path)}")
    if size is not None and have < size:
        raise ValueError(f"{path} is truncated: {have} of the {size} bytes recorded in {mpath.name} "
                         f"(an interrupted copy or download?). {_fix_hint(path)}")
    if size is not None and have != size:
        raise ValueError(f"{path} has {have} bytes but {mpath.name} records {size}: it was replaced by a different "
                         f"file. {_fix_hint(path)}")
    raise ValueError(f"{path} does not match the sha256 in {mpath.name} (same size, different content): the file "
                     f"is corrupt or was modified. {_fix_hint(path)}")


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", verify: bool = True,
         require_manifest: bool | None = None) -> Any:
    """Load with ``weights_only=True``; with ``verify``, check the sha256 in the manifest first.

    Shipped checkpoints (under ``CHECKPOINT_DIR``) must have a manifest (``require_manifest``
    overrides that rule either way). A file that is not a readable checkpoint gets an error naming it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if verify:
        _verify(path, require_manifest)
    try:
        out = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if zipfile.is_zipfile(path):
            raise  # weights_only refused something that could run code: torch's own message says what
        raise ValueError(f"{path} is not a readable torch checkpoint (not a zip archive, which every torch.save "
                         f"file is: truncated, damaged or a different kind of file). {_fix_hint(path)}") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as err:
        raise ValueError(f"{path} is not a readable torch checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'broken archive'}): the file is truncated "
                         f"or damaged. {_fix_hint(path)}") from err
    cleanup_orphans(path)
    return out


_verify = verify


def update_manifest(path: str | os.PathLike, **fields: Any) -> dict:
    """Merge ``fields`` into an existing manifest (atomically); the checksum is recomputed from the file."""
    path = Path(path)
    _verify(path)  # never bless a file that no longer matches its checksum
    manifest = {**read_manifest(path), **fields, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest.pop("previous_sha256", None)
    _atomic_write_bytes(manifest_path(path), _manifest_bytes(manifest))
    return manifest
