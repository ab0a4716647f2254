"""Hostile inputs and faults (issue 13): nothing lost, nothing silent.

Each section injects the faults of one class — a killed save, a truncated download, a Ctrl-C at every
point of a training step, NaN/inf and nonsense arguments — and checks for a clear error or exact behaviour.
"""
import gzip
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from diffusion_course import checkpoints, pretrained

# --------------------------------------------------------------------------- 1. checkpoint integrity


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A temporary folder standing in for data/checkpoints (the shipped models)."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setattr(pretrained, "CHECKPOINT_DIR", folder)
    return folder


def test_manifest_required_for_shipped_checkpoints(shipped, tmp_path):
    checkpoints.save({"w": torch.ones(3)}, shipped / "m.pt")  # no manifest
    with pytest.raises(ValueError, match=r"shipped checkpoint but its manifest m\.json is missing.*git checkout "
                                         r"data/checkpoints/m\.\*.*--out DIR"):
        checkpoints.load(shipped / "m.pt")
    (shipped / "m.json").write_text(json.dumps({"steps": 3}))
    with pytest.raises(ValueError, match="has no sha256"):
        checkpoints.load(shipped / "m.pt")
    # elsewhere a bare state file (e.g. training state) still loads; verify=False skips the check
    checkpoints.save({"w": torch.ones(3)}, tmp_path / "free.pt")
    assert checkpoints.load(tmp_path / "free.pt")["w"].sum() == 3
    assert checkpoints.load(shipped / "m.pt", verify=False)["w"].sum() == 3


def test_each_mismatch_is_worded_by_what_happened(shipped):
    path = shipped / "m.pt"
    checkpoints.save({"w": torch.arange(1000.0)}, path, manifest={"steps": 1})
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"m\.pt is truncated: \d+ of the \d+ bytes recorded in m\.json"):
        checkpoints.load(path)
    path.write_bytes(good + b"extra")
    with pytest.raises(ValueError, match="replaced by a different file"):
        checkpoints.load(path)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="same size, different content"):
        checkpoints.load(path)
    path.write_bytes(good)
    manifest = (shipped / "m.json").read_text()
    (shipped / "m.json").write_text(manifest[: len(manifest) // 2])
    with pytest.raises(ValueError, match=r"the manifest .*m\.json is truncated .*git checkout data/checkpoints/m"):
        checkpoints.load(path)
    with pytest.raises(ValueError, match="is truncated"):
        pretrained.manifest("m")
    (shipped / "m.json").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        checkpoints.load(path)
    (shipped / "m.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        checkpoints.load(path)
    (shipped / "m.json").write_text(manifest)
    assert checkpoints.load(path)["w"].sum() == sum(range(1000))


def test_broken_zip_names_the_file(tmp_path):
    path = tmp_path / "broken.pt"
    checkpoints.save({"w": torch.ones(100)}, path)
    raw = path.read_bytes()
    path.write_bytes(raw[:40])  # no manifest to catch it: torch.load itself must fail clearly
    with pytest.raises(ValueError, match=r"broken\.pt is not a readable torch checkpoint"):
        checkpoints.load(path)
    path.write_bytes(b"not a zip at all" * 10)
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        checkpoints.load(path)


def test_kill_between_manifest_and_rename_is_completed_on_load(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    checkpoints.save({"w": torch.zeros(3)}, path, manifest={"steps": 1})
    real_replace = os.replace

    def killed_at_the_rename(src, dst):
        if str(dst).endswith(".pt"):
            raise KeyboardInterrupt  # the process dies right after the manifest was written
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_rename)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save({"w": torch.ones(3)}, path, manifest={"steps": 2})
    monkeypatch.undo()
    assert json.loads((tmp_path / "m.json").read_text())["steps"] == 2
    assert len(list(tmp_path.glob("m.pt.*.tmp"))) == 1       # the new bytes are kept ...
    assert torch.equal(checkpoints.load(path)["w"], torch.ones(3))  # ... and the save is completed, not "corrupt"
    assert list(tmp_path.glob("*.tmp")) == []
    # the same kill, but the new bytes were lost too: the message says the .pt is the intact previous version
    monkeypatch.setattr(os, "replace", killed_at_the_rename)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save({"w": torch.full((3,), 2.0)}, path, manifest={"steps": 3})
    monkeypatch.undo()
    for tmp in tmp_path.glob("m.pt.*.tmp"):
        tmp.unlink()
    with pytest.raises(ValueError, match="interrupted after writing its manifest.*still the previous version"):
        checkpoints.load(path)


def test_save_failing_before_the_manifest_leaves_the_old_pair(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    checkpoints.save({"w": torch.zeros(3)}, path, manifest={"steps": 1})

    def disk_full(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        checkpoints.save({"w": torch.ones(3)}, path, manifest={"steps": 2})
    monkeypatch.undo()
    assert list(tmp_path.glob("*.tmp")) == []
    assert json.loads((tmp_path / "m.json").read_text())["steps"] == 1
    assert checkpoints.load(path)["w"].sum() == 0


def test_orphaned_tmp_files_are_cleaned_up(tmp_path):
    path = tmp_path / "m.pt"
    checkpoints.save({"w": torch.zeros(3)}, path, manifest={"steps": 1})
    dead = _dead_pid()
    orphan = tmp_path / f"m.pt.{dead}.abc123.tmp"
    orphan_manifest = tmp_path / f"m.json.{dead}.xyz.tmp"
    live = tmp_path / f"m.pt.{os.getppid()}.live.tmp"  # a writer that still runs: never touched
    for p in (orphan, orphan_manifest, live):
        p.write_bytes(b"half a checkpoint")
    checkpoints.load(path)
    assert not orphan.exists() and not orphan_manifest.exists() and live.exists()
    orphan.write_bytes(b"again")
    checkpoints.save({"w": torch.ones(3)}, path, manifest={"steps": 2})
    assert not orphan.exists() and live.exists()


def test_saving_without_a_manifest_keeps_an_existing_one_true(tmp_path):
    path = tmp_path / "m.pt"
    checkpoints.save({"w": torch.zeros(3)}, path, manifest={"steps": 1, "metrics": {"fid": 3}})
    checkpoints.save({"w": torch.ones(3)}, path)
    man = checkpoints.read_manifest(path)
    assert man["sha256"] == checkpoints.sha256_file(path) and man["metrics"] == {"fid": 3}
    assert checkpoints.load(path)["w"].sum() == 3


def test_update_manifest_refuses_to_bless_a_corrupt_file(tmp_path):
    path = tmp_path / "m.pt"
    checkpoints.save({"w": torch.zeros(300)}, path, manifest={"steps": 1})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        checkpoints.update_manifest(path, metrics={"fid": 1.0})


def test_malicious_pickle_still_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        checkpoints.load(path)


def test_shipped_checkpoints_verify():
    """The real shipped files pass the (now mandatory) check, byte for byte as committed."""
    for name in ("fmnist-classifier", "fmnist-ddpm"):
        path = pretrained.path_for(name)
        if path.exists():
            man = checkpoints.verify(path)
            assert man["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- 2. downloads and data files
from diffusion_course import data  # noqa: E402

DEBIAN = data._SOURCES["fashion-mnist"]["system"][0]
needs_fmnist = pytest.mark.skipif(not (DEBIAN / "t10k-images-idx3-ubyte.gz").exists(),
                                  reason="needs the Debian dataset-fashion-mnist package")


class _FakeResponse:
    """What urlopen returns, serving ``body``; it may lie about its length, stop early or raise IncompleteRead."""

    def __init__(self, body: bytes, send: int | None = None, length: int | None = None, incomplete: bool = False):
        self.body, self.send, self.incomplete, self.pos = body, len(body) if send is None else send, incomplete, 0
        self.headers = {} if length is None else {"Content-Length": str(length)}

    def read(self, n):
        if self.pos >= self.send:
            if self.incomplete:
                import http.client
                raise http.client.IncompleteRead(b"", len(self.body) - self.pos)
            return b""
        chunk = self.body[self.pos:min(self.pos + n, self.send)]
        self.pos += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.fixture
def fake_net(tmp_path, monkeypatch):
    """An empty data folder, no system copy, and a fake server whose behaviour each test sets."""
    monkeypatch.setattr(data, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(data, "_cache", {})
    monkeypatch.setitem(data._SOURCES, "fashion-mnist", {"system": [], "urls": ["http://fake.invalid/"]})
    server = {"mode": "ok", "calls": []}

    def urlopen(url, timeout=None):
        fname = url.rsplit("/", 1)[1]
        server["calls"].append(fname)
        body = (DEBIAN / fname).read_bytes()
        mode = server["mode"]
        if mode == "ok":
            return _FakeResponse(body, length=len(body))
        if mode == "short":          # closes early but announced the full length
            return _FakeResponse(body, send=len(body) // 2, length=len(body))
        if mode == "short-unannounced":  # closes early and never said how long
            return _FakeResponse(body, send=len(body) // 2)
        if mode == "incomplete":     # http.client raises IncompleteRead mid-body
            return _FakeResponse(body, send=len(body) // 3, length=len(body), incomplete=True)
        if mode == "wrong":          # a different (but well-formed) file
            raw = gzip.decompress(body)
            other = gzip.compress(raw[:-1] + bytes([raw[-1] ^ 1]))
            return _FakeResponse(other, length=len(other))
        raise AssertionError(mode)

    monkeypatch.setattr(data.urllib.request, "urlopen", urlopen)
    return server


@needs_fmnist
@pytest.mark.parametrize("mode", ["short", "short-unannounced", "incomplete", "wrong"])
def test_bad_download_keeps_nothing_and_says_why(fake_net, mode):
    fake_net["mode"] = mode
    with pytest.raises(data.DatasetNotFound) as err:
        data.load_fashion_mnist("test")
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in msg
    assert {"short": "closed the connection", "short-unannounced": "failed its checksum",
            "incomplete": "IncompleteRead", "wrong": "failed its checksum"}[mode] in msg
    folder = data.DATA_DIR / "fashion-mnist"
    assert [p.name for p in folder.iterdir()] == []  # no .part, no unverified final file
    # the next call (server fixed) downloads, verifies and loads
    fake_net["mode"] = "ok"
    x, y = data.load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert sorted(p.name for p in folder.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@needs_fmnist
def test_unverified_leftover_in_the_download_folder_is_replaced(fake_net):
    folder = data.DATA_DIR / "fashion-mnist"
    folder.mkdir(parents=True)
    # an older version of the loader kept a truncated images file; the labels file is missing
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes((DEBIAN / "t10k-images-idx3-ubyte.gz").read_bytes()[:1000])
    x, _ = data.load_fashion_mnist("test")
    assert fake_net["calls"] == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert x.shape[0] == 10000


@needs_fmnist
def test_truncated_or_corrupt_local_files_name_the_file_and_the_fix(fake_net):
    folder = data.DATA_DIR / "fashion-mnist"
    folder.mkdir(parents=True)
    images, labels = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    raw_img = (DEBIAN / images.name).read_bytes()
    labels.write_bytes((DEBIAN / labels.name).read_bytes())
    cases = {
        "truncated .gz": (raw_img[: len(raw_img) // 2], r"t10k-images-idx3-ubyte\.gz is truncated \(the gzip"),
        "corrupt .gz": (raw_img[:5000] + bytes(200) + raw_img[5200:], r"t10k-images-idx3-ubyte\.gz is corrupt"),
        "truncated IDX": (gzip.compress(gzip.decompress(raw_img)[:-784]),
                          r"is truncated: \d+ bytes where the IDX header \(10000, 28, 28\) needs"),
        "not IDX": (gzip.compress(b"<html>404</html>"), "not an unsigned-byte IDX file"),
        "edited": (gzip.compress(gzip.decompress(raw_img)[:-1] + bytes([gzip.decompress(raw_img)[-1] ^ 1])),
                   "not the official fashion-mnist file"),
    }
    for label, (payload, pattern) in cases.items():
        images.write_bytes(payload)
        with pytest.raises(data.DatasetCorrupt, match=pattern) as err:
            data.load_fashion_mnist("test", download=False)
        assert f"rm {images}" in str(err.value), label
    images.write_bytes(raw_img)
    assert data.load_fashion_mnist("test", download=False)[0].shape[0] == 10000


def _idx(arr) -> bytes:
    import numpy as np
    import struct
    arr = np.asarray(arr, dtype=np.uint8)
    return struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def test_image_and_label_counts_are_compared(tmp_path, monkeypatch):
    import numpy as np
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    monkeypatch.setattr(data, "_cache", {})
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte").write_bytes(_idx(np.zeros((10000, 28, 28))))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(9999)))
    with pytest.raises(data.DatasetCorrupt, match="10000 images in .* and 9999 labels"):
        data.load_mnist("test", download=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros((10000, 28, 28))))
    with pytest.raises(data.DatasetCorrupt, match="swapped"):
        data.load_mnist("test", download=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.full(10000, 12)))
    with pytest.raises(data.DatasetCorrupt, match="labels up to 12"):
        data.load_mnist("test", download=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.arange(10000) % 10))
    x, y = data.load_mnist("test", download=False)
    assert x.shape == (10000, 1, 28, 28) and int(y[13]) == 3


# --------------------------------------------------------------------------- 3. exact resume
import signal  # noqa: E402

from diffusion_course import training  # noqa: E402
from diffusion_course.nn import MLPDenoiser  # noqa: E402
from diffusion_course.schedules import NoiseSchedule  # noqa: E402
from diffusion_course.training import TrainConfig, train  # noqa: E402

S100 = NoiseSchedule.cosine(100)
PTS = data.toy_2d("moons", 512, generator=torch.Generator().manual_seed(0))


def _cfg(path, steps=20, **kw):
    base = dict(steps=steps, batch_size=32, lr=2e-3, warmup=3, checkpoint_path=str(path), checkpoint_every=5,
                channels_last=False, seed=3)
    return TrainConfig(**{**base, **kw})


def _run(path, steps=20, resume=True, **kw):
    torch.manual_seed(0)
    return train(MLPDenoiser(hidden=32, depth=2), S100, PTS, config=_cfg(path, steps, **kw), progress=False,
                 device="cpu", resume=resume)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("straight") / "run.pt")


def _assert_same_run(a, b):
    assert a.step == b.step
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(a.ema.parameters(), b.ema.parameters()):
        assert torch.equal(p, q)
    assert a.history.loss == b.history.loss
    assert a.history.bucket_count == b.history.bucket_count


@pytest.mark.parametrize("point", ["batch", "before_opt_step", "after_opt_step", "after_ema", "after_count"])
@pytest.mark.parametrize("at_step", [7, 9])  # 9: the step after which a periodic save is due (step 10)
def test_ctrl_c_anywhere_in_a_step_resumes_exactly(tmp_path, monkeypatch, straight, point, at_step):
    def fault(p, step):
        if p == point and step == at_step:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_fault_hook", fault)
    first = _run(tmp_path / "run.pt")
    assert first.interrupted
    assert first.step == (at_step if point in ("batch", "before_opt_step") else at_step + 1)
    assert len(first.history.loss) == first.step
    monkeypatch.setattr(training, "_fault_hook", None)
    _assert_same_run(straight, _run(tmp_path / "run.pt"))


def test_ctrl_c_during_the_periodic_save_resumes_exactly(tmp_path, monkeypatch, straight):
    real = checkpoints._write_tmp
    calls = {"n": 0}

    def interrupted_write(path, payload):
        calls["n"] += 1
        if calls["n"] == 2:  # the second periodic save (step 10), half-way
            tmp = real(path, payload[: len(payload) // 2])
            raise KeyboardInterrupt
        return real(path, payload)

    monkeypatch.setattr(checkpoints, "_write_tmp", interrupted_write)
    first = _run(tmp_path / "run.pt")
    assert first.interrupted and first.step == 10
    monkeypatch.undo()
    _assert_same_run(straight, _run(tmp_path / "run.pt"))


def test_real_sigint_during_the_update_is_deferred_to_the_step_end(tmp_path, monkeypatch, straight):
    def ctrl_c(p, step):
        if p == "after_opt_step" and step == 6:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the weights are being updated

    monkeypatch.setattr(training, "_fault_hook", ctrl_c)
    first = _run(tmp_path / "run.pt")
    assert first.interrupted and first.step == 7  # the step was completed, then the interrupt delivered
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(training, "_fault_hook", None)
    _assert_same_run(straight, _run(tmp_path / "run.pt"))


def test_resume_refuses_a_different_recipe_and_names_the_fields(tmp_path):
    path = tmp_path / "run.pt"
    _run(path, steps=10)
    with pytest.raises(ValueError, match=r"lr \(saved 0.002, now 0.001\); objective \(saved 'eps', now 'v'\)"):
        _run(path, steps=10, objective="v", lr=1e-3)
    with pytest.raises(ValueError, match=r"steps \(saved 10, now 30: the learning rate"):
        _run(path, steps=30)  # cosine decay over 30 steps changes the lr of the 10 already trained
    with pytest.raises(ValueError, match="already at step 10, but steps=5"):
        _run(path, steps=5, resume="force")  # never "returns step 10 when asked for 5"
    # allowed: where it saves / how often; an extension that leaves the trained steps' lr unchanged
    assert _run(path, steps=10, checkpoint_every=2).step == 10
    res = _run(path, steps=30, resume="force")
    assert res.step == 30
    const = tmp_path / "const.pt"
    _run(const, steps=10, lr_decay="constant")
    assert _run(const, steps=15, lr_decay="constant").step == 15
    with pytest.raises(ValueError, match="resume must be"):
        _run(const, steps=15, resume="yes")


def test_extension_by_a_warm_restart_cycle_resumes_without_force(tmp_path):
    path = tmp_path / "run.pt"
    _run(path, steps=12, lr_cycle_ends=(8,))
    assert _run(path, steps=20, lr_cycle_ends=(8, 12)).step == 20
    straight = _run(tmp_path / "b.pt", steps=20, lr_cycle_ends=(8, 12))
    assert straight.history.loss[:12] == _run(tmp_path / "c.pt", steps=12, lr_cycle_ends=(8,)).history.loss
