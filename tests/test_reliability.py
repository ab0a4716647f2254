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
    monkeypatch.setattr(checkpoints, "CHECKPOINT_DIR", folder)
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


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
                    reason="SIGINT is ignored in this process (started in the background by a non-interactive shell)")
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


def test_a_one_cycle_run_extended_by_a_restart_at_a_new_peak_resumes_without_force(tmp_path):
    # How fmnist-ddpm grew from fmnist-ddpm-v2: a one-cycle run (restart_lr_scale never used) gets a second cycle
    # at half the peak; the trained steps' lr is unchanged, so it resumes, and matches the run made in one go.
    path = tmp_path / "run.pt"
    _run(path, steps=10)
    resumed = _run(path, steps=18, lr_cycle_ends=(10,), restart_lr_scale=0.5)
    _assert_same_run(resumed, _run(tmp_path / "b.pt", steps=18, lr_cycle_ends=(10,), restart_lr_scale=0.5))
    # changing the restart peak of a cycle already under way changes trained steps' lr: refused, and named
    with pytest.raises(ValueError, match="restart_lr_scale"):
        _run(path, steps=18, lr_cycle_ends=(10,), restart_lr_scale=0.25)


# --------------------------------------------------------------------------- 4. nothing non-finite passes silently
import numpy as np  # noqa: E402

from diffusion_course import config, forward, guidance, sampling, schedules, validate  # noqa: E402
from diffusion_course.tokenizer import WordTokenizer  # noqa: E402

COS = schedules.NoiseSchedule.cosine(50)
ZSNR = schedules.get_schedule("cosine+zsnr", 50)
X = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
T = torch.full((4,), 10)
NAN = float("nan")


class _Eps(torch.nn.Module):
    """A stand-in ε-model: a fixed fraction of x, or NaN from its ``bad_call``-th call on."""

    def __init__(self, bad_call=None, objective="eps"):
        super().__init__()
        self.calls, self.bad_call, self.objective = 0, bad_call, objective

    def forward(self, x, t, cond=None):
        self.calls += 1
        out = 0.5 * x
        return out * NAN if self.bad_call is not None and self.calls >= self.bad_call else out


def _with_nan(x):
    x = x.clone()
    x.view(-1)[3] = NAN
    return x


def test_samplers_name_the_step_where_the_model_went_non_finite():
    with pytest.raises(validate.NonFiniteError, match=r"the model's prediction contains NaN .* at step 3 of 10 "
                                                      r"\(t=\d+\)"):
        sampling.ddim_sample(_Eps(bad_call=3), X, COS, steps=10, progress=False)
    with pytest.raises(FloatingPointError, match="at step 5 of 50"):  # also a FloatingPointError
        sampling.ddpm_sample(_Eps(bad_call=5), X, COS, generator=torch.Generator().manual_seed(0), progress=False)
    with pytest.raises(ValueError, match="at step 2 of 5"):  # and a ValueError
        sampling.dpm_solver_2m_sample(_Eps(bad_call=2), X, COS, steps=5, progress=False)

    class Huge(_Eps):  # finite predictions whose update overflows
        def forward(self, x, t, cond=None):
            return torch.full_like(x, 3e38) if int(t[0]) < 40 else 0.5 * x

    with pytest.raises(validate.NonFiniteError, match=r"the sample contains inf .*after step \d+ of 10"):
        sampling.ddim_sample(Huge(), X, COS, steps=10, progress=False)


HOSTILE = {
    # samplers and steps
    "x_T with NaN": (lambda: sampling.ddim_sample(_Eps(), _with_nan(X), COS, steps=5, progress=False),
                     ValueError, "x_T contains NaN"),
    "uint8 x_T": (lambda: sampling.ddim_sample(_Eps(), (X > 0).to(torch.uint8), COS, steps=5, progress=False),
                  TypeError, "x_T must be a floating-point tensor"),
    "eta NaN": (lambda: sampling.ddim_sample(_Eps(), X, COS, steps=5, eta=NAN, progress=False), ValueError,
                "eta must be a finite number"),
    "eta > 1": (lambda: sampling.ddim_sample(_Eps(), X, COS, steps=5, eta=1.5, progress=False), ValueError,
                r"eta must satisfy 0.0 <= eta <= 1.0"),
    "eta str": (lambda: sampling.ddim_step(X, X, 10, 5, COS, eta="0.5"), TypeError, "eta must be a real number"),
    "ddim_step eta > 1": (lambda: sampling.ddim_step(X, X, 10, 5, COS, eta=2.0), ValueError, "eta must satisfy"),
    "noise with NaN": (lambda: sampling.ddpm_step(X, X, 10, 9, COS, noise=_with_nan(X)), ValueError,
                       "noise contains NaN"),
    "noise wrong shape": (lambda: sampling.ddim_step(X, X, 10, 9, COS, eta=1.0, noise=X[:2]), ValueError,
                          "noise has shape"),
    "eps with inf": (lambda: sampling.ddim_step(X, X / 0, 10, 9, COS), ValueError, "eps contains"),
    "ddpm_sample steps=0": (lambda: sampling.ddpm_sample(_Eps(), X, COS, steps=0, progress=False), ValueError,
                            "steps must satisfy 1 <= steps"),
    "ddpm_sample steps=-3": (lambda: sampling.ddpm_sample(_Eps(), X, COS, steps=-3, progress=False), ValueError,
                             "steps must satisfy 1 <= steps"),
    "ddim_sample steps=0": (lambda: sampling.ddim_sample(_Eps(), X, COS, steps=0, progress=False), ValueError,
                            "steps must be an int with 1 <= steps"),
    "ddim_sample steps=2.5": (lambda: sampling.ddim_sample(_Eps(), X, COS, steps=2.5, progress=False), ValueError,
                              "steps must be an int"),
    "timesteps T=True": (lambda: sampling.timesteps(True, 1), ValueError, "T must be a positive int"),
    "zero terminal SNR, eps-model": (lambda: sampling.ddim_sample(_Eps(), X, ZSNR, steps=5, progress=False),
                                     ValueError, r"ᾱ_t = 0 .*objective='v'"),
    "zero terminal SNR, ddpm": (lambda: sampling.ddpm_sample(_Eps(), X, ZSNR, progress=False), ValueError,
                                "zero-terminal-SNR"),
    "zero terminal SNR, step": (lambda: sampling.ddim_step(X, X, 49, 40, ZSNR), ValueError, "zero-terminal-SNR"),
    "model returns a list": (lambda: sampling.ddim_sample(lambda x, t: [x], X, COS, steps=2, progress=False),
                             TypeError, "the model must return a tensor"),
    # guidance
    "guidance scale inf": (lambda: guidance.classifier_free(_Eps(), torch.zeros(4, dtype=torch.long), float("inf"),
                                                            null_cond=torch.ones(4, dtype=torch.long)),
                           ValueError, "scale must be a finite number"),
    "guidance scale NaN": (lambda: guidance.cfg_combine(X, X, NAN), ValueError, "scale must be a finite number"),
    "guidance scale str": (lambda: guidance.cfg_combine(X, X, "3"), TypeError, "scale must be a real number"),
    "guidance rescale NaN": (lambda: guidance.classifier_free(_Eps(), torch.zeros(4, dtype=torch.long), 2.0,
                                                              null_cond=torch.ones(4, dtype=torch.long), rescale=NAN),
                             ValueError, "rescale must be a finite number"),
    "guidance interval floats": (lambda: guidance.classifier_free(_Eps(), torch.zeros(4, dtype=torch.long), 2.0,
                                                                  null_cond=torch.ones(4, dtype=torch.long),
                                                                  interval=(0.5, 10)),
                                 TypeError, r"interval\[0\] must be an int"),
    # forward process
    "uint8 images in q_sample": (lambda: forward.q_sample(torch.full((2, 1, 4, 4), 200, dtype=torch.uint8),
                                                          torch.tensor([5, 5]), COS),
                                 TypeError, r"x0 must be a floating-point tensor, got dtype torch.uint8 .*127.5"),
    "NaN noise in q_sample": (lambda: forward.q_sample(X, T, COS, _with_nan(X)), ValueError, "noise contains NaN"),
    "int noise in q_sample": (lambda: forward.q_sample(X, T, COS, torch.zeros(4, 1, 4, 4, dtype=torch.long)),
                              TypeError, "noise must be a floating-point"),
    "eps_to_x0 t=-1": (lambda: forward.eps_to_x0(X, X, torch.full((4,), -1), COS), ValueError,
                       r"0 <= t < T=50.*clean end"),
    "v_to_x0 t=T": (lambda: forward.v_to_x0(X, X, torch.full((4,), 50), COS), ValueError, "0 <= t < T=50"),
    "eps_to_x0 at zero SNR": (lambda: forward.eps_to_x0(X, X, torch.full((4,), 49), ZSNR), ValueError, "ᾱ_t = 0"),
    "eps_to_x0 float t": (lambda: forward.eps_to_x0(X, X, torch.full((4,), 3.0), COS), TypeError,
                          "t must be an integer tensor"),
    "q_sample schedule str": (lambda: forward.q_sample(X, T, "cosine"), TypeError, "schedule must be a NoiseSchedule"),
    "ideal_denoiser NaN row": (lambda: forward.ideal_denoiser(X[:1], torch.tensor([5]), _with_nan(X), COS),
                               ValueError, r"data contains NaN or inf .* in 1 of its 4 rows, e.g. row 0"),
    "ideal_denoiser chunk 0": (lambda: forward.ideal_denoiser(X[:1], torch.tensor([5]), X, COS, chunk_size=0),
                               ValueError, "chunk_size must satisfy 1 <= chunk_size"),
    "ideal_denoiser chunk -1": (lambda: forward.ideal_denoiser(X[:1], torch.tensor([5]), X, COS, chunk_size=-1),
                                ValueError, "chunk_size"),
    "ideal_denoiser uint8 data": (lambda: forward.ideal_denoiser(X[:1], torch.tensor([5]), X.to(torch.uint8), COS),
                                  TypeError, "data must be a floating-point tensor"),
    # training configuration
    "grad_clip < 0": (lambda: TrainConfig(grad_clip=-1.0), ValueError, "grad_clip must satisfy 0.0 <= grad_clip"),
    "checkpoint_every < 0": (lambda: TrainConfig(checkpoint_every=-5), ValueError, "checkpoint_every must satisfy"),
    "warmup < 0": (lambda: TrainConfig(warmup=-1), ValueError, "warmup must satisfy 0 <= warmup"),
    "steps=True": (lambda: TrainConfig(steps=True), TypeError, "steps must be an int, got bool"),
    "steps=1e3": (lambda: TrainConfig(steps=1e3), TypeError, "steps must be an int, got float"),
    "lr NaN": (lambda: TrainConfig(lr=NAN), ValueError, "lr must be a finite number"),
    "lr 0": (lambda: TrainConfig(lr=0.0), ValueError, "lr must satisfy 0.0 < lr"),
    "p_uncond 2": (lambda: TrainConfig(p_uncond=2.0), ValueError, "p_uncond must satisfy"),
    "ema_decay 1": (lambda: TrainConfig(ema_decay=1.0), ValueError, r"ema_decay must be in \[0, 1\)"),
    "seed 2**70": (lambda: TrainConfig(seed=2**70), ValueError, "seed must satisfy"),
    "min_snr_gamma 0": (lambda: TrainConfig(min_snr_gamma=0.0), ValueError, "min_snr_gamma must satisfy"),
    "amp 'yes'": (lambda: TrainConfig(amp="yes"), TypeError, "amp must be True or False"),
    "NaN in the training images": (lambda: train(MLPDenoiser(hidden=8), S100, _with_nan(PTS),
                                                 config=TrainConfig(steps=2, batch_size=4, channels_last=False),
                                                 progress=False, device="cpu"),
                                   ValueError, "images contains NaN"),
    "uint8 training images": (lambda: train(MLPDenoiser(hidden=8), S100, (PTS > 0).to(torch.uint8),
                                            config=TrainConfig(steps=2, batch_size=4), progress=False, device="cpu"),
                              TypeError, "images must be a floating-point tensor"),
    "config is a dict": (lambda: train(MLPDenoiser(hidden=8), S100, PTS, config={"steps": 2}, progress=False,
                                       device="cpu"), TypeError, "config must be a TrainConfig"),
    # schedules
    "get_schedule(None)": (lambda: schedules.get_schedule(None), TypeError, "schedule name must be a str"),
    "get_schedule('cosin')": (lambda: schedules.get_schedule("cosin"), ValueError, "unknown schedule 'cosin'"),
    "string betas": (lambda: schedules.NoiseSchedule("0.1 0.2"), TypeError, "betas must be a 1-D sequence"),
    "list of string betas": (lambda: schedules.NoiseSchedule(["0.1", "0.2"]), TypeError, "betas must be"),
    "complex betas": (lambda: schedules.NoiseSchedule.from_betas(torch.tensor([0.1 + 0.5j, 0.2])), TypeError,
                      "betas must be real, got complex"),
    "complex numpy betas": (lambda: schedules.NoiseSchedule(np.array([0.1, 0.2], dtype=complex)), TypeError,
                            "complex"),
    "bool betas": (lambda: schedules.NoiseSchedule([True, True]), TypeError, "betas must be real numbers"),
    "ragged betas": (lambda: schedules.NoiseSchedule([[0.1], [0.2, 0.3]]), TypeError, "betas must be"),
    "betas > 1": (lambda: schedules.NoiseSchedule([0.5, 1.5]), ValueError, r"betas must lie in \(0, 1\]"),
    "cosine(s=-1)": (lambda: schedules.NoiseSchedule.cosine(100, s=-1), ValueError, "s must satisfy 0.0 <= s"),
    "cosine(s=NaN)": (lambda: schedules.NoiseSchedule.cosine(100, s=NAN), ValueError, "s must be a finite"),
    "cosine(T=100.0)": (lambda: schedules.NoiseSchedule.cosine(100.0), ValueError, "T must be a positive int"),
    "linear beta_end str": (lambda: schedules.NoiseSchedule.linear(10, beta_end="0.02"), TypeError,
                            "beta_end must be a real number"),
    "zsnr of T=1": (lambda: schedules.NoiseSchedule([0.5]).rescale_zero_terminal_snr(), ValueError, "T >= 2"),
    # config and seeding
    "seed_everything(2**70)": (lambda: config.seed_everything(2**70), ValueError, "seed must satisfy 0 <= seed"),
    "seed_everything(-1)": (lambda: config.seed_everything(-1), ValueError, "seed must satisfy 0 <= seed"),
    "seed_everything(1.5)": (lambda: config.seed_everything(1.5), TypeError, "seed must be an int"),
    "seed_everything(True)": (lambda: config.seed_everything(True), TypeError, "got bool"),
    "get_device('banana')": (lambda: config.get_device("banana"), ValueError, "device must be 'cpu', 'cuda'"),
    "get_device('cuda:x')": (lambda: config.get_device("cuda:x"), ValueError, "'cuda:N'"),
    "get_device(0)": (lambda: config.get_device(0), TypeError, "device must be a str"),
    # tokenizer
    "tokenizer(None)": (lambda: _tok()(None), TypeError, "prompts must be a str or a list of str, got NoneType"),
    "tokenizer(bytes)": (lambda: _tok()(b"a red circle"), TypeError, "got bytes: decode"),
    "tokenizer([str, None])": (lambda: _tok()(["a red circle", None]), TypeError, r"prompts\[1\] must be a str"),
    "tokenizer.encode(bytes)": (lambda: _tok().encode(b"a red circle"), TypeError, "got bytes"),
    "tokenizer.decode(list)": (lambda: _tok().decode([1, 2]), TypeError, "ids must be an integer tensor"),
    "tokenizer.decode(floats)": (lambda: _tok().decode(torch.tensor([1.0, 2.0])), TypeError, "dtype torch.float32"),
    "tokenizer vocab str": (lambda: WordTokenizer("red circle"), TypeError, "vocab must be a list of words"),
    "tokenizer max_length 3.5": (lambda: WordTokenizer(["red"], max_length=3.5), TypeError, "max_length must be an int"),
    "tokenizer unknown char": (lambda: _tok()("a red circle!"), ValueError, "characters the tokeniser does not know"),
    # data
    "data split 'Train'": (lambda: data.load_fashion_mnist("Train"), ValueError, "split must be 'train' or 'test'"),
    "toy_2d n=True": (lambda: data.toy_2d("moons", True), TypeError, "n must be an int, got bool"),
    "toy_2d n=0": (lambda: data.toy_2d("moons", 0), ValueError, "n must satisfy 1 <= n"),
    "toy_2d noise NaN": (lambda: data.toy_2d("moons", 5, noise=NAN), ValueError, "noise must be a finite number"),
    "toy_2d generator seed": (lambda: data.toy_2d("moons", 5, generator=0), TypeError, "generator must be"),
}


def _tok():
    from diffusion_course import shapes
    return WordTokenizer(shapes.VOCAB, 10)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_gets_a_clear_error(case):
    fn, exc, pattern = HOSTILE[case]
    with pytest.raises(exc, match=pattern):
        fn()


def test_ideal_denoiser_never_answers_for_stale_data():
    data_ = torch.randn(6, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    x_t = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3, 3])
    first = forward.ideal_denoiser(x_t, t, data_, COS)
    # a transposed view: same storage, same shape, different images
    view = data_.transpose(2, 3)
    assert torch.allclose(forward.ideal_denoiser(x_t, t, view, COS), forward.ideal_denoiser(x_t, t, view.clone(), COS))
    assert not torch.allclose(forward.ideal_denoiser(x_t, t, view, COS), first)
    # edited in place behind torch's back (through a NumPy view: the version counter does not move)
    data_.numpy()[:] = data_.numpy()[::-1] * 0.5
    assert torch.allclose(forward.ideal_denoiser(x_t, t, data_, COS), forward.ideal_denoiser(x_t, t, data_.clone(), COS))
    assert not torch.allclose(forward.ideal_denoiser(x_t, t, data_, COS), first)


def test_explorer_refuses_uint8_images():
    from diffusion_course import widgets
    imgs = {"a": torch.zeros(1, 4, 4, dtype=torch.uint8)}
    with pytest.raises(TypeError, match=r"images\['a'\] must be a floating-point tensor.*127.5"):
        widgets.ForwardExplorer(imgs, torch.zeros(5, 1, 4, 4), {"cosine": COS})
    with pytest.raises(TypeError, match="data must be a floating-point tensor"):
        widgets.ForwardExplorer({"a": torch.zeros(1, 4, 4)}, torch.zeros(5, 1, 4, 4, dtype=torch.uint8),
                                {"cosine": COS})


def test_valid_edge_inputs_still_work():
    """The validators do not reject what is legitimate."""
    assert sampling.ddim_sample(_Eps(), X, COS, steps=1, eta=1.0, generator=torch.Generator().manual_seed(0),
                                progress=False).shape == X.shape
    assert sampling.ddpm_sample(_Eps(), X, COS, steps=None, generator=torch.Generator().manual_seed(0),
                                progress=False).shape == X.shape
    assert torch.isfinite(sampling.ddim_sample(_Eps(objective="v"), X, ZSNR, steps=5, progress=False)).all()
    assert guidance.cfg_combine(X, X, np.float32(2.0)).shape == X.shape
    assert schedules.NoiseSchedule(np.array([0.1, 0.2], dtype=np.float32)).T == 2
    assert schedules.NoiseSchedule.cosine(10, s=0.0).T == 10
    assert config.seed_everything(np.int64(3)).initial_seed() == 3
    assert config.seed_everything(2**64 - 1).initial_seed() == 2**64 - 1
    assert TrainConfig(warmup=0, checkpoint_every=0, grad_clip=0.0).warmup == 0
    assert _tok()(("a red circle", "a blue square")).shape == (2, 10)


def test_a_recipe_trained_twice_with_its_seed_gives_the_same_weights(tmp_path):
    """The network is initialised from the recipe's seed, so two runs of one recipe write the same bytes."""
    from diffusion_course import checkpoints as ck
    from diffusion_course import train as train_cli

    for out in ("a", "b"):
        train_cli.run_recipe("fmnist-vae", steps=2, device="cpu", evaluate=False, out=tmp_path / out)
    a, b = (ck.sha256_file(tmp_path / out / "fmnist-vae.pt") for out in ("a", "b"))
    assert a == b


def test_cli_refuses_an_out_that_is_a_file_before_training(tmp_path):
    from diffusion_course import train as train_cli

    target = tmp_path / "file.txt"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file"):
        train_cli.run_recipe("fmnist-vae", steps=2, device="cpu", evaluate=False, out=target)


def test_an_interrupted_recipe_says_where_its_state_is_and_how_to_resume(tmp_path, monkeypatch):
    from diffusion_course import train as train_cli

    def fault(p, step):
        if p == "batch" and step == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_fault_hook", fault)
    with pytest.raises(KeyboardInterrupt, match=r"step 1; its state is saved in .*fmnist-vae.train.pt: run the same"):
        train_cli.run_recipe("fmnist-vae", steps=3, device="cpu", evaluate=False, out=tmp_path)


# --------------------------------------------------------------------------- 5. no NaN passes silently (issue 38)
from diffusion_course import consistency, exercises, latent, profiling, sde  # noqa: E402
from diffusion_course.nn.autoencoder import Autoencoder  # noqa: E402
from diffusion_course.nn.dit import DiT, patchify  # noqa: E402

P2 = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
SHIPPED_DIR = checkpoints.CHECKPOINT_DIR   # before any fixture moves it
VP, VE = sde.VPSDE(), sde.VESDE()


def _nan_below(t_switch):
    """A score that is fine above t_switch and NaN below it (a network that breaks at low noise)."""
    return lambda x, t: -x if float(t[0]) > t_switch else x * NAN


def _inf_score(x, t):
    return torch.full_like(x, float("inf"))


SDE_NON_FINITE = {
    "Euler–Maruyama": (lambda: sde.euler_maruyama(_nan_below(0.5), P2, VP, 10), r"the score contains NaN .* at t=0\.4"),
    "predictor–corrector": (lambda: sde.predictor_corrector(_nan_below(0.5), P2, VP, 10,
                                                            generator=torch.Generator().manual_seed(0)),
                            r"the score contains NaN .* at t=0\.4"),
    "predictor–corrector snr=inf": (lambda: sde.predictor_corrector(lambda x, t: -x, P2, VP, 10, snr=float("inf")),
                                    "snr must be a positive finite number, got inf"),
    "PF-ODE Euler": (lambda: sde.probability_flow(_nan_below(0.5), P2, VP, method="euler", steps=10),
                     r"the score contains NaN .* at t=0\.4"),
    "PF-ODE Heun": (lambda: sde.probability_flow(_nan_below(0.5), P2, VP, method="heun", steps=10),
                    r"the score contains NaN .* at t=0\.4"),
    "PF-ODE overflow": (lambda: sde.solve_ode(lambda x, t: torch.full_like(x, 3e38), P2 + 1e38, 0.0, 1.0,
                                              method="euler", steps=2),       # finite velocity, overflowing update
                        r"the sample contains inf .*after euler step 2 of 2 \(t=0\.5 -> 1\)"),
    "adaptive ODE, NaN score": (lambda: sde.probability_flow(lambda x, t: x * NAN, P2, VP),
                                r"the score contains NaN .* at t=1$"),
    "adaptive ODE, inf score": (lambda: sde.probability_flow(_inf_score, P2, VP), r"the score contains inf .* at t=1$"),
    "adaptive ODE, NaN mid-way": (lambda: sde.probability_flow(_nan_below(0.5), P2, VP),
                                  r"the score contains NaN .* at t=0\.\d+$"),
    "Langevin, NaN gradient": (lambda: sde.langevin(lambda x: x * NAN, P2, 0.1, 5),
                               "the sample contains NaN .* after Langevin step 1 of 5"),
    "Langevin, overflow": (lambda: sde.langevin(lambda x: x**3, P2, 1.0, 50),
                           r"the sample contains inf .* after Langevin step \d+ of 50"),
    "Langevin step_size=inf": (lambda: sde.langevin(lambda x: -x, P2, float("inf"), 5),
                               "step_size must be a positive finite number, got inf"),
    "annealed Langevin step=inf": (lambda: sde.annealed_langevin(lambda x, t: -x, P2, VE, levels=2, steps_per_level=2,
                                                                 eps=float("inf")),
                                   "eps must be a positive finite number, got inf"),
    "annealed Langevin, NaN score": (lambda: sde.annealed_langevin(_nan_below(0.5), P2, VE, levels=4,
                                                                   steps_per_level=2),
                                     r"the score contains NaN .* at t=0\.\d+"),
    "annealed Langevin, overflow": (lambda: sde.annealed_langevin(lambda x, t: -x, P2 * 1e30, VE, levels=2,
                                                                  steps_per_level=3, eps=1e10),
                                    r"the sample contains inf .* after step \d of 3 at noise level 1 of 2"),
    "x_T with NaN": (lambda: sde.euler_maruyama(lambda x, t: -x, _with_nan(P2), VP, 3), "x_T contains NaN"),
    "log-likelihood, inf score": (lambda: sde.log_likelihood(_inf_score, P2, VP), r"the score contains inf .* at t="),
    "flow log-likelihood, NaN velocity": (lambda: sde.flow_log_likelihood(lambda x, t: x * NAN, P2, 0.0, 1.0,
                                                                          VP.prior_logp),
                                          r"the velocity contains NaN .* at t=0$"),
    "DDPM ELBO, NaN model": (lambda: sde.ddpm_elbo_bpd(lambda x, t: x * NAN, torch.zeros(2, 1, 2, 2) - 0.5, COS,
                                                       timesteps=3, generator=torch.Generator().manual_seed(0)),
                             r"the model's ε prediction contains NaN .* at timesteps t in \[\d+, \d+\]"),
    "pixel bpd, NaN images": (lambda: sde.independent_pixel_bpd(_with_nan(X).clamp(-1, 1), X.clamp(-1, 1)),
                              "train_images contains NaN"),
    "pixel bpd, pseudo_count=inf": (lambda: sde.independent_pixel_bpd(X.clamp(-1, 1), X.clamp(-1, 1),
                                                                      pseudo_count=float("inf")),
                                    "pseudo_count must be a positive finite number, got inf"),
}


@pytest.mark.parametrize("case", list(SDE_NON_FINITE))
def test_sde_samplers_and_likelihoods_name_where_values_went_non_finite(case):
    fn, pattern = SDE_NON_FINITE[case]
    with pytest.raises(ValueError, match=pattern):   # a NonFiniteError is a ValueError (and a FloatingPointError)
        fn()


class _DuckCM:
    """Just what consistency.sample reads; returns NaN from its ``bad_call``-th call on."""

    def __init__(self, bad_call):
        self.schedule, self.grid, self.t_min, self.sigma_min = COS, torch.arange(0, 50, 5), 0, 0.01
        self.calls, self.bad_call = 0, bad_call

    def __call__(self, x, t, cond=None):
        self.calls += 1
        return 0.5 * x * (NAN if self.calls >= self.bad_call else 1.0)


def test_consistency_sampling_names_the_step_and_renoise_checks_t():
    with pytest.raises(validate.NonFiniteError, match=r"the model's x̂₀ contains NaN .* at step 2 of 3 \(t=\d+\)"):
        consistency.sample(_DuckCM(bad_call=2), X, steps=3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(validate.NonFiniteError, match="x_T contains NaN"):
        consistency.sample(_DuckCM(bad_call=99), _with_nan(X), steps=2)
    with pytest.raises(TypeError, match=r"x_T must be a floating-point tensor, got dtype torch.uint8 .*127.5 - 1"):
        consistency.sample(_DuckCM(bad_call=99), X.to(torch.uint8), steps=2)
    for t in (-1, 50, 1000):
        with pytest.raises(ValueError, match=rf"t must satisfy 0 <= t <= 49, got {t}"):
            consistency.renoise(X, t, X, COS, 0.01)
    with pytest.raises(TypeError, match="t must be an int"):
        consistency.renoise(X, 2.5, X, COS, 0.01)
    assert torch.equal(consistency.renoise(X, torch.tensor(7), X, COS, 0.01), consistency.renoise(X, 7, X, COS, 0.01))


def test_consistency_sample_converts_float64_and_float16_to_the_models_dtype():
    from diffusion_course.nn import MLPDenoiser
    torch.manual_seed(0)
    cm = consistency.ConsistencyModel(MLPDenoiser(dim=2, hidden=16, depth=2), COS, grid_size=10, head="raw").eval()
    ref = consistency.sample(cm, P2, steps=2, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float64, torch.float16):
        out = consistency.sample(cm, P2.to(dtype), steps=2, generator=torch.Generator().manual_seed(1))
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=5e-3 if dtype == torch.float16 else 1e-6, rtol=0)


# --------------------------------------------------------------------------- 6. inputs checked at the boundaries (38)
def _tiny_vae():
    torch.manual_seed(0)
    return Autoencoder(channels=(8, 8), image_size=4).eval()


IMG = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(4)) * 2 - 1)


def test_autoencoder_refuses_images_outside_the_range_and_converts_float_dtypes():
    vae = _tiny_vae()
    with pytest.raises(ValueError, match=r"images must lie in \[-1, 1\].*got values in \[.*k / 127\.5 - 1"):
        vae.encode((IMG + 1) * 127.5)
    with pytest.raises(validate.NonFiniteError, match="images contains NaN"):
        vae.encode(_with_nan(IMG))
    with pytest.raises(TypeError, match=r"images must be a floating-point tensor, got dtype torch.uint8 .*127\.5 - 1"):
        vae.encode(((IMG + 1) * 127.5).to(torch.uint8))
    with pytest.warns(UserWarning, match=r"no negative values .*\[0, 1\] images .*x \* 2 - 1"):
        vae.encode((IMG + 1) / 2)   # torchvision's ToTensor range: warned, not refused
    ref = vae.encode(IMG)[0]
    torch.testing.assert_close(vae.encode(IMG.double())[0], ref)          # float64: converted, same answer
    torch.testing.assert_close(vae.encode(IMG.half())[0], ref, atol=1e-2, rtol=0)
    assert vae.decode(ref.double()).dtype == torch.float32
    with pytest.raises(TypeError, match="latents must be a floating-point tensor"):
        vae.decode(ref.to(torch.uint8))
    # the loss (training) goes through the same check
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        latent.vae_loss(vae, IMG * 3)


def test_latent_diffusion_encode_decode_check_dtype_range_and_nan():
    vae = _tiny_vae()
    den = DiT(input_size=2, patch=1, in_channels=4, dim=8, depth=1, heads=2, num_classes=0)
    ldm = latent.LatentDiffusion(vae, den, COS, 0.5)
    z = ldm.encode(IMG)
    torch.testing.assert_close(ldm.encode(IMG.double()), z)
    torch.testing.assert_close(ldm.decode(z.double()), ldm.decode(z))
    with pytest.raises(TypeError, match=r"dtype torch.uint8 .*127\.5 - 1"):
        ldm.encode(((IMG + 1) * 127.5).to(torch.uint8))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        ldm.encode(IMG * 255)
    with pytest.raises(validate.NonFiniteError, match="images contains NaN"):
        ldm.encode(_with_nan(IMG))
    with pytest.raises(TypeError, match="z must be a floating-point tensor"):
        ldm.decode(z.to(torch.uint8))
    with pytest.raises(validate.NonFiniteError, match="z contains NaN"):
        ldm.decode(_with_nan(z))


def test_dit_converts_float_inputs_and_refuses_uint8():
    dit = DiT(input_size=4, patch=2, in_channels=1, dim=8, depth=1, heads=2, num_classes=3)
    t = torch.tensor([1, 2])
    ref = dit(IMG, t)
    assert torch.equal(dit(IMG.double(), t), ref) and dit(IMG.half(), t).dtype == torch.float32
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor, got dtype torch.uint8 .*127\.5 - 1"):
        dit(IMG.to(torch.uint8), t)


def test_encode_dataset_cache_keys_on_every_pixel(tmp_path):
    vae = _tiny_vae()
    a = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1
    b = a.clone()
    b[17] = -b[17]                               # one image of the set swapped for another
    cache = tmp_path / "latents.pt"
    la = latent.encode_dataset(vae, a, batch_size=8, progress=False, cache=cache)
    lb = latent.encode_dataset(vae, b, batch_size=8, progress=False, cache=cache)
    fresh = latent.encode_dataset(vae, b, batch_size=8, progress=False, cache=tmp_path / "fresh.pt")
    assert torch.equal(lb, fresh)                 # b's own latents, not the stale ones of a
    assert not torch.equal(la[17], lb[17]) and torch.equal(la[:17], lb[:17])
    big = torch.rand(2000, 1, 16, 16, generator=torch.Generator().manual_seed(6))  # large enough for a strided sample
    edited = big.clone()
    edited.view(-1)[123] += 1e-3                 # a single pixel
    assert latent._cache_key(vae, edited) != latent._cache_key(vae, big)


BOUNDARY = {
    "DiT(num_classes=-1)": (lambda: DiT(num_classes=-1), ValueError, "num_classes must satisfy 0 <= num_classes"),
    "DiT(patch=2.5)": (lambda: DiT(patch=2.5), TypeError, "patch must be an int, got float 2.5"),
    "DiT(heads=0)": (lambda: DiT(heads=0), ValueError, "heads must satisfy 1 <= heads, got 0"),
    "DiT(depth=0)": (lambda: DiT(depth=0), ValueError, "depth must satisfy 1 <= depth"),
    "DiT(mlp_ratio=0)": (lambda: DiT(mlp_ratio=0), ValueError, "mlp_ratio must satisfy"),
    "patchify(p=0)": (lambda: patchify(IMG, 0), ValueError, "patch must satisfy 1 <= patch, got 0"),
    "patchify(p=2.0)": (lambda: patchify(IMG, 2.0), TypeError, "patch must be an int"),
    "Autoencoder(channels=(8, 8.5))": (lambda: Autoencoder(channels=(8, 8.5)), TypeError,
                                       r"channels\[1\] must be an int, got float 8.5"),
    "Autoencoder(channels=(8, 0))": (lambda: Autoencoder(channels=(8, 0)), ValueError, r"channels\[1\] must satisfy"),
    "Autoencoder(channels='88')": (lambda: Autoencoder(channels="88"), ValueError, "channels must be a non-empty"),
    "encode_dataset(batch_size=2.5)": (lambda: latent.encode_dataset(_tiny_vae(), IMG, batch_size=2.5, progress=False),
                                       TypeError, "batch_size must be an int, got float 2.5"),
    "forward_seconds(batch=0)": (lambda: profiling.forward_seconds(DiT(input_size=4, patch=2, in_channels=1, dim=8,
                                                                       depth=1, heads=2), (1, 4, 4), batch=0),
                                 ValueError, "batch must satisfy 1 <= batch, got 0"),
    "forward_seconds(repeats=0)": (lambda: profiling.forward_seconds(DiT(input_size=4, patch=2, in_channels=1, dim=8,
                                                                         depth=1, heads=2), (1, 4, 4), repeats=0),
                                   ValueError, "repeats must satisfy 1 <= repeats, got 0"),
    "train_step_seconds(repeats=0)": (lambda: profiling.train_step_seconds(torch.nn.Linear(1, 1), (1,), repeats=0),
                                      ValueError, "repeats must satisfy 1 <= repeats"),
    "flops_per_forward(batch=0)": (lambda: profiling.flops_per_forward(torch.nn.Linear(1, 1), (1,), batch=0),
                                   ValueError, "batch must satisfy 1 <= batch"),
}


@pytest.mark.parametrize("case", list(BOUNDARY))
def test_constructors_and_timers_name_the_bad_argument(case):
    fn, exc, pattern = BOUNDARY[case]
    with pytest.raises(exc, match=pattern):
        fn()


class _Half(torch.nn.Module):
    """ε̂ = w·x with one parameter (the explorers read the device from it)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, cond=None):
        return self.w * x


def test_explorers_refuse_what_they_would_silently_change():
    from diffusion_course.widgets import ForwardExplorer, GuidanceExplorer, SamplerExplorer
    with pytest.raises(ValueError, match="frames must satisfy 1 <= frames, got 0"):
        ForwardExplorer({"a": X[0]}, X, {"cosine": COS}, frames=0)
    with pytest.raises(ValueError, match="max_steps must satisfy 1 <= max_steps, got 0"):
        SamplerExplorer(_Half(), COS, n=4, image_shape=(1, 4, 4), max_steps=0)
    for bad, pattern in (([], "class_names must be a non-empty list"), (["a", ""], r"class_names\[1\] must be a non-"),
                         (["a", "a"], "class_names must be distinct")):
        with pytest.raises(ValueError, match=pattern):
            SamplerExplorer(_Half(), COS, n=4, class_names=bad, image_shape=(1, 4, 4))
        with pytest.raises(ValueError, match=pattern):
            GuidanceExplorer(_Half(), COS, class_names=bad, n=4, image_shape=(1, 4, 4))
    with pytest.raises(ValueError, match=r"initial_scale must satisfy 0.0 <= initial_scale <= 10.0, got 20"):
        GuidanceExplorer(_Half(), COS, class_names=["a", "b"], n=4, image_shape=(1, 4, 4), initial_scale=20)
    ex = SamplerExplorer(_Half(), COS, n=4, image_shape=(1, 4, 4), max_steps=10)
    with pytest.raises(ValueError, match=r"steps=500 is outside this explorer's range \[1, 10\]"):
        ex.figure([{"steps": 500}])
    fig = ex.figure([{"steps": 3}, {"steps": 10}])
    assert [ax.get_title() for ax in fig.axes[:2]] == ["steps = 3", "steps = 10"]
    assert ex.steps.value == 10                  # the control is restored afterwards


def test_exercise_check_fails_complex_and_meta_answers_with_a_message(capsys):
    from diffusion_course.nn.autoencoder import kl_to_standard_normal
    complex_answer = lambda mean, logvar: kl_to_standard_normal(mean, logvar).to(torch.complex64) + 1j  # noqa: E731
    assert exercises.check(complex_answer, "kl") is False
    assert "complex" in capsys.readouterr().out
    assert exercises.check(lambda mean, logvar: torch.empty(mean.shape[0], device="meta"), "kl") is False
    assert "meta" in capsys.readouterr().out
    meta_renoise = lambda x0, t, z, schedule, sigma_min: torch.empty_like(x0, device="meta")  # noqa: E731
    assert exercises.check(meta_renoise, "renoise") is False
    assert "could not be compared" in capsys.readouterr().out
    assert exercises.check(kl_to_standard_normal, "kl") is True      # a right answer still passes


def test_pretrained_load_checks_whose_file_it_is(shipped):
    lineage = checkpoints.LINEAGE_DIR
    if (lineage / "fmnist-cd-v4.pt").exists():   # the case: an earlier version copied in under the name
        for ext in (".pt", ".json"):
            (shipped / f"fmnist-cd{ext}").write_bytes((lineage / f"fmnist-cd-v4{ext}").read_bytes())
        with pytest.raises(ValueError, match=r"fmnist-cd\.pt is the checkpoint of 'fmnist-cd-v4' .*not of 'fmnist-cd'"):
            pretrained.load("fmnist-cd", device="cpu")
    path = shipped / "fmnist-vae.pt"
    checkpoints.save([torch.ones(2)], path, manifest={"name": "fmnist-vae"})
    with pytest.raises(ValueError, match=r"fmnist-vae\.pt holds a list, not the state_dict of 'fmnist-vae' "
                                         r"\(a Autoencoder\)"):
        pretrained.load("fmnist-vae", device="cpu")
    checkpoints.save({"model": {"w": torch.ones(2)}, "step": 3}, path, manifest={"name": "fmnist-vae"})
    with pytest.raises(ValueError, match=r"holds a dict whose values are not all tensors .*'model', 'step'"):
        pretrained.load("fmnist-vae", device="cpu")
    other = DiT(input_size=4, patch=2, in_channels=1, dim=8, depth=1, heads=2).state_dict()
    checkpoints.save(other, path, manifest={"name": "fmnist-vae"})
    with pytest.raises(ValueError, match=r"fmnist-vae\.pt holds a state_dict of another model, not the state_dict of "
                                         r"'fmnist-vae' .*tensors missing"):
        pretrained.load("fmnist-vae", device="cpu")
    for ext in (".pt", ".json"):                  # the real pair still loads, unchanged
        (shipped / f"fmnist-vae{ext}").write_bytes((SHIPPED_DIR / f"fmnist-vae{ext}").read_bytes())
    assert isinstance(pretrained.load("fmnist-vae", device="cpu"), Autoencoder)
