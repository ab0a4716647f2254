"""Data-parallel training (torchrun + DistributedDataParallel, gloo on CPU) matches one process.

Two CPU processes train a tiny recipe at the same global batch as a single process; the weights, the EMA
and the loss history agree to float tolerance, rank 0 alone writes the checkpoint, and an interrupted
two-process run resumes exactly where it stopped.
"""
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffusion_course import data
from diffusion_course.nn import MLPDenoiser, UNet
from diffusion_course.schedules import NoiseSchedule
from diffusion_course.training import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent

WORKER = textwrap.dedent('''
    import faulthandler, os, sys
    faulthandler.dump_traceback_later(float(os.environ.get("DDP_TEST_STACKS_AFTER", "1200")), exit=True)
    import torch
    torch.set_num_threads(1)
    from diffusion_course import data, distributed, training
    from diffusion_course.nn import MLPDenoiser, UNet
    from diffusion_course.schedules import NoiseSchedule
    from diffusion_course.training import TrainConfig, train

    out = sys.argv[1]
    dev = distributed.setup("cpu")
    assert distributed.world_size() == 2 and dev.type == "cpu"
    S = NoiseSchedule.cosine(100)
    for kind in ("mlp", "unet"):
      if kind == "mlp":
        x, y = data.toy_2d("moons", 512, generator=torch.Generator().manual_seed(0)), None
        make = lambda: MLPDenoiser(hidden=32, depth=2)
        kw = dict(batch_size=32, channels_last=False)
      else:  # a class-conditional U-Net with label dropout
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(64, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (64,), generator=g)
        make = lambda: UNet(channels=(8, 16), attention_levels=(1,), patch=2, num_classes=10)
        kw = dict(batch_size=8, channels_last=True, p_uncond=0.25)
      ckpt = os.path.join(out, f"state-{kind}.pt")
      cfg = lambda steps: TrainConfig(steps=steps, lr=2e-3, warmup=2, seed=3, checkpoint_path=ckpt,
                                      checkpoint_every=3, **kw)
      if kind == "mlp":
        # interrupted in the middle of step 5 by a Ctrl-C that reaches rank 1 only: rank 0 (which saves) must
        # stop at the same step boundary ...
        def fault(point, step):
            if point == "after_opt_step" and step == 5 and distributed.rank() == 1:
                os.kill(os.getpid(), __import__("signal").SIGINT)
        training._fault_hook = fault
        torch.manual_seed(0)
        first = train(make(), S, x, y, cfg(12), progress=False, device=dev)
        training._fault_hook = None
        assert first.interrupted and first.step == 6, (first.interrupted, first.step)
      # ... and resumed by a fresh model (for the U-Net: trained straight through)
      torch.manual_seed(0)
      model, seen = make(), set()
      model.register_forward_pre_hook(lambda m, args: seen.add(args[0].shape[0]))
      res = train(model, S, x, y, cfg(12), progress=False, device=dev)
      assert res.step == 12 and not res.interrupted
      assert seen == {kw["batch_size"] // 2}, seen  # each rank ran the network on its half of the batch only
      if distributed.is_main():
        torch.save({"model": res.model.state_dict(), "ema": res.ema.state_dict(), "loss": res.history.loss,
                    "bucket_count": res.history.bucket_count}, os.path.join(out, f"result-{kind}.pt"))
    distributed.cleanup()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """One torchrun launch (2 gloo processes) trains both tiny recipes; rank 0 saves what it got."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), str(tmp_path)]
    # ~15 s of CPU time for both processes; the generous limit is for a machine shared with long trainings,
    # where importing torch alone can take minutes. A real hang dumps every worker's stack (faulthandler).
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path


def _single(kind, tmp_path):
    S = NoiseSchedule.cosine(100)
    torch.manual_seed(0)  # the same initial weights as the workers'
    if kind == "mlp":
        x, y = data.toy_2d("moons", 512, generator=torch.Generator().manual_seed(0)), None
        model, kw = MLPDenoiser(hidden=32, depth=2), dict(batch_size=32, channels_last=False)
    else:
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(64, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (64,), generator=g)
        model = UNet(channels=(8, 16), attention_levels=(1,), patch=2, num_classes=10)
        kw = dict(batch_size=8, channels_last=True, p_uncond=0.25)
    return train(model, S, x, y, TrainConfig(steps=12, lr=2e-3, warmup=2, seed=3, checkpoint_every=3,
                                             checkpoint_path=str(tmp_path / "single.pt"), **kw),
                 progress=False, device="cpu")


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_two_gloo_processes_match_one_process(ddp_results, tmp_path, kind):
    ddp = torch.load(ddp_results / f"result-{kind}.pt", weights_only=True)
    one = _single(kind, tmp_path)
    assert ddp["bucket_count"] == one.history.bucket_count  # the same timesteps were drawn
    assert ddp["loss"] == pytest.approx(one.history.loss, rel=1e-4, abs=1e-6)
    if kind == "mlp":
        for key, value in one.model.state_dict().items():
            torch.testing.assert_close(ddp["model"][key], value, rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")
        for key, value in one.ema.state_dict().items():
            torch.testing.assert_close(ddp["ema"][key], value, rtol=1e-4, atol=1e-5, msg=lambda m: f"ema {key}: {m}")
    else:
        # Compare what the networks compute, not every weight: a conv bias right before a GroupNorm has an
        # exactly-zero gradient in exact arithmetic, so Adam moves it by ±lr on float noise alone — differently
        # in two processes — while the network's output does not depend on it at all.
        g = torch.Generator().manual_seed(1)
        x, t, y = torch.randn(6, 1, 28, 28, generator=g), torch.randint(0, 100, (6,), generator=g), torch.arange(6)
        for which in ("model", "ema"):
            net = UNet(channels=(8, 16), attention_levels=(1,), patch=2, num_classes=10).eval()
            net.load_state_dict(ddp[which])
            ref = getattr(one, which).eval()
            with torch.no_grad():
                torch.testing.assert_close(net(x, t, y), ref(x, t, y), rtol=1e-3, atol=1e-4, msg=lambda m: f"{which}: {m}")
    # rank 0 alone wrote the training state (no second writer's debris), and it holds the finished run
    names = sorted(p.name for p in ddp_results.iterdir() if p.name != "worker.py")
    assert names == ["result-mlp.pt", "result-unet.pt", "state-mlp.pt", "state-unet.pt"]
    assert torch.load(ddp_results / f"state-{kind}.pt", weights_only=True)["step"] == 12


def test_batch_must_split_evenly_across_ranks(monkeypatch):
    from diffusion_course import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match=r"batch_size=32 must be divisible by the number of processes \(3\)"):
        train(MLPDenoiser(hidden=8), NoiseSchedule.cosine(10), torch.randn(64, 2),
              config=TrainConfig(steps=1, batch_size=32, channels_last=False), progress=False, device="cpu")
