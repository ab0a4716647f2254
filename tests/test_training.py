"""Loss, trainer, EMA, checkpoints: the loss falls, resume is exact, nothing is lost on interruption."""
import json
import os

import pytest
import torch

from diffusion_course import checkpoints, data, losses
from diffusion_course.nn import MLPDenoiser, UNet
from diffusion_course.schedules import NoiseSchedule
from diffusion_course.training import TrainConfig, ema_update, train

S = NoiseSchedule.cosine(100)


def _toy(n=2048):
    return data.toy_2d("moons", n, generator=torch.Generator().manual_seed(0))


def test_loss_decreases_on_toy_data():
    torch.manual_seed(0)
    pts = _toy()
    model = MLPDenoiser(hidden=64, depth=3)
    cfg = TrainConfig(steps=400, batch_size=256, lr=3e-3, warmup=20, ema_decay=0.99, channels_last=False, seed=0)
    res = train(model, S, pts, config=cfg, progress=False, device="cpu")
    first, last = sum(res.history.loss[:30]) / 30, sum(res.history.loss[-30:]) / 30
    assert last < 0.75 * first, (first, last)
    # every bucket was visited and the loss is largest at small t for ε-prediction (hard to see tiny noise)
    means = res.history.bucket_means()
    assert all(c > 0 for c in res.history.bucket_count) and means[0] > means[-1]


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_diffusion_loss_targets(objective):
    """A model that returns the exact target has zero loss; the target depends on the objective."""
    from diffusion_course import forward
    x0 = torch.randn(8, 2)

    class Oracle(torch.nn.Module):
        def forward(self, x_t, t):
            # recover (x0, eps) from the known x0 batch
            eps = forward.x0_to_eps(x_t, x0, t, S)
            return {"eps": eps, "x0": x0, "v": forward.v_target(x0, eps, t, S)}[objective]

    out = losses.diffusion_loss(Oracle(), x0, S, objective, generator=torch.Generator().manual_seed(0))
    assert out.item() < 1e-8
    wrong = losses.diffusion_loss(Oracle(), x0, S, "eps" if objective != "eps" else "x0",
                                  generator=torch.Generator().manual_seed(0))
    assert wrong.item() > 1e-3


def test_min_snr_weights():
    snr = torch.tensor([0.1, 1.0, 5.0, 50.0])
    assert torch.allclose(losses.min_snr_weight(snr, 5.0, "eps"), torch.tensor([1.0, 1.0, 1.0, 0.1]))
    assert torch.allclose(losses.min_snr_weight(snr, 5.0, "x0"), torch.tensor([0.1, 1.0, 5.0, 5.0]))
    assert torch.allclose(losses.min_snr_weight(snr, 5.0, "v"), torch.tensor([0.1 / 1.1, 0.5, 5 / 6, 5 / 51]))
    assert losses.min_snr_weight(torch.tensor([0.0]), 5.0, "eps").item() == 1.0  # zero terminal SNR: no NaN


def test_timestep_sampling():
    s = NoiseSchedule.cosine(1000)
    logsnr = s.snr.double().log()
    u = losses.draw_timesteps(20000, s, generator=torch.Generator().manual_seed(0))
    assert u.dtype == torch.long and u.min() >= 0 and u.max() == 999 and abs(u.double().mean() - 499.5) < 10
    t = losses.draw_timesteps(20000, s, "logsnr-normal", -1.0, 2.0, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and 0 <= t.min() and t.max() < 1000
    lam = logsnr[t]
    assert abs(lam.mean() + 1) < 0.05 and abs(lam.std() - 2) < 0.05
    assert (t >= 500).double().mean() > 0.6  # a negative mean log-SNR: most samples at high noise
    # each t is the one whose log-SNR is nearest to the drawn λ (brute force over the whole table)
    drawn = -1.0 + 2.0 * torch.randn(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(t, (logsnr[None] - drawn[:, None]).abs().argmin(1))
    assert losses.draw_timesteps(5, NoiseSchedule.from_betas([0.5]), "logsnr-normal").eq(0).all()  # T = 1
    with pytest.raises(ValueError, match="t_sampling"):
        losses.draw_timesteps(4, s, "lognormal")
    with pytest.raises(ValueError, match="logsnr_std"):
        losses.draw_timesteps(4, s, "logsnr-normal", 0.0, 0.0)


def test_trainer_draws_timesteps_as_configured():
    pts = _toy(256)
    counts = {}
    for kind in ("uniform", "logsnr-normal"):
        cfg = TrainConfig(steps=20, batch_size=64, warmup=2, channels_last=False, t_sampling=kind)
        counts[kind] = train(MLPDenoiser(hidden=16, depth=2), S, pts, config=cfg, progress=False,
                             device="cpu").history.bucket_count
    # the default log-SNR-normal draw (mean 0, std 2) spends fewer samples at the two extremes, more in the middle
    for bucket in (0, 9):
        assert counts["uniform"][bucket] > 2 * counts["logsnr-normal"][bucket]
    assert sum(counts["logsnr-normal"][3:7]) > 1.15 * sum(counts["uniform"][3:7])


def test_label_dropout():
    seen = []

    class Spy(torch.nn.Module):
        num_classes = 10

        def forward(self, x, t, cond):
            seen.append(cond.clone())
            return torch.zeros_like(x)

    y = torch.zeros(10_000, dtype=torch.long)
    losses.diffusion_loss(Spy(), torch.zeros(10_000, 2), S, cond=y, p_uncond=0.2,
                          generator=torch.Generator().manual_seed(0))
    frac = (seen[0] == 10).float().mean().item()
    assert abs(frac - 0.2) < 0.015 and set(seen[0].unique().tolist()) == {0, 10}


def test_loss_bad_input():
    with pytest.raises(ValueError, match="objective"):
        losses.diffusion_loss(lambda x, t: x, torch.zeros(2, 2), S, "score")
    with pytest.raises(ValueError, match="p_uncond"):
        losses.diffusion_loss(lambda x, t: x, torch.zeros(2, 2), S, p_uncond=1.5)


def test_ema_update_math():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    ema_update(a, b, decay=0.9)
    assert torch.allclose(a.weight, 0.9 * wa + 0.1 * wb)


def _small_cfg(tmp_path, steps, **kw):
    return TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup=5, checkpoint_path=str(tmp_path / "run.pt"),
                       checkpoint_every=5, channels_last=False, seed=3, **kw)


class _InterruptAt(MLPDenoiser):
    """Raises KeyboardInterrupt (like "interrupt kernel") on its n-th forward call."""

    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.n, self.calls = n, 0

    def forward(self, *a, **k):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return super().forward(*a, **k)


def test_resume_is_exact(tmp_path):
    pts = _toy()
    torch.manual_seed(0)
    straight = train(MLPDenoiser(hidden=32), S, pts, config=_small_cfg(tmp_path / "a", 20), progress=False,
                     device="cpu")
    torch.manual_seed(0)
    # interrupted mid-step 13 (after its batch was drawn): the checkpoint must hold the state after step 12
    first = train(_InterruptAt(13, hidden=32), S, pts, config=_small_cfg(tmp_path, 20), progress=False, device="cpu")
    assert first.interrupted and first.step == 12
    # a fresh process rebuilds the model and continues from the file
    resumed = train(MLPDenoiser(hidden=32), S, pts, config=_small_cfg(tmp_path, 20), progress=False, device="cpu")
    assert resumed.step == 20 and not resumed.interrupted
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(straight.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(p, q)
    assert straight.history.loss == resumed.history.loss


def test_conditional_unet_trains_and_interrupt_saves(tmp_path):
    x = torch.rand(64, 1, 28, 28) * 2 - 1
    y = torch.randint(0, 10, (64,))
    calls = {"n": 0}
    model = UNet(channels=(8, 16), attention_levels=(1,), patch=2, num_classes=10)
    original = model.forward

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(*a, **k)

    model.forward = flaky
    res = train(model, S, x, y, config=_small_cfg(tmp_path, 50), progress=False, device="cpu")
    assert res.interrupted and res.step == 7
    state = checkpoints.load(tmp_path / "run.pt")
    assert state["step"] == 7


def test_non_finite_loss_names_the_step(tmp_path):
    class Exploding(MLPDenoiser):
        def forward(self, x, t, cond=None):
            out = super().forward(x, t)
            return out * float("nan") if self._n >= 3 else out

    m = Exploding(hidden=8)
    m._n = 0
    orig = m.forward

    def counting(*a, **k):
        out = orig(*a, **k)
        m._n += 1
        return out

    m.forward = counting
    with pytest.raises(FloatingPointError, match="at step 3"):
        train(m, S, _toy(), config=TrainConfig(steps=10, batch_size=16, channels_last=False), progress=False,
              device="cpu")


def test_checkpoint_atomic_and_verified(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    digest = checkpoints.save({"w": torch.ones(3)}, path, manifest={"recipe": "x"})
    man = json.loads((tmp_path / "model.json").read_text())
    assert man["sha256"] == digest == checkpoints.sha256_file(path)
    assert torch.equal(checkpoints.load(path)["w"], torch.ones(3))

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        checkpoints.save({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(checkpoints.load(path)["w"], torch.ones(3))  # the old file survived intact
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []  # no debris
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.raises(ValueError, match="sha256"):
        checkpoints.load(path)


def test_train_config_validation():
    with pytest.raises(ValueError):
        TrainConfig(objective="score")
    with pytest.raises(ValueError):
        TrainConfig(steps=0)
    with pytest.raises(ValueError):
        TrainConfig(lr_decay="linear")
    with pytest.raises(ValueError, match="t_sampling"):
        TrainConfig(t_sampling="lognormal")
    with pytest.raises(ValueError, match="logsnr_std"):
        TrainConfig(t_sampling="logsnr-normal", logsnr_std=-1)
    with pytest.raises(ValueError):
        TrainConfig(steps=100, warmup=10, lr_cycle_ends=(50, 40))
    with pytest.raises(ValueError):
        TrainConfig(steps=100, warmup=10, lr_cycle_ends=(100,))


def test_warm_restart_extends_a_recipe_without_changing_its_first_cycle():
    from diffusion_course.training import lr_at

    short = TrainConfig(steps=300, warmup=20, lr=1e-3)
    longer = TrainConfig(steps=500, warmup=20, lr=1e-3, lr_cycle_ends=(300,), restart_lr_scale=0.5)
    assert [lr_at(s, short) for s in range(300)] == [lr_at(s, longer) for s in range(300)]
    assert lr_at(299, longer) == pytest.approx(1e-4, rel=1e-3)      # first cycle decays to 10 %
    assert lr_at(300, longer) == pytest.approx(5e-4)                # restart at half the peak
    assert lr_at(499, longer) == pytest.approx(5e-5, rel=1e-2)      # and decays to 10 % of that
    second = [lr_at(s, longer) for s in range(300, 500)]
    assert all(a >= b for a, b in zip(second, second[1:]))


def test_time_budget_stops_training_and_anneals_the_lr_over_it():
    from diffusion_course.training import lr_at

    cfg = TrainConfig(steps=10**6, warmup=10, lr=1e-3, max_minutes=2.0)
    assert lr_at(50, cfg, elapsed_seconds=0.0) == pytest.approx(1e-3, rel=1e-4)   # step-wise: barely started
    assert lr_at(50, cfg, elapsed_seconds=60.0) == pytest.approx(0.55e-3)          # half the budget: cosine midpoint
    assert lr_at(50, cfg, elapsed_seconds=120.0) == pytest.approx(1e-4)            # budget spent: 10 % of the peak
    assert lr_at(5, cfg, elapsed_seconds=60.0) == pytest.approx(6e-4)              # warm-up is step-based
    # a 0.2-second budget stops a 10**6-step run long before its steps, cleanly (not "interrupted")
    res = train(MLPDenoiser(hidden=32, depth=2), S, _toy(512),
                config=TrainConfig(steps=10**6, batch_size=64, warmup=5, max_minutes=0.2 / 60, channels_last=False),
                progress=False, device="cpu")
    assert 0 < res.step < 10**6 and not res.interrupted
    assert res.history.wall_time >= 0.2 and len(res.history.loss) == res.step
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(max_minutes=0)
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(steps=100, warmup=10, lr_cycle_ends=(50,), max_minutes=1.0)


@pytest.mark.gpu
def test_cuda_path_amp_channels_last():
    x = torch.rand(64, 1, 28, 28) * 2 - 1
    y = torch.randint(0, 10, (64,))
    res = train(UNet(channels=(16, 32), attention_levels=(1,), patch=2, num_classes=10), S, x, y,
                config=TrainConfig(steps=5, batch_size=16, amp=True, channels_last=True), progress=False,
                device="cuda")
    assert next(res.ema.parameters()).is_cuda and all(v == v for v in res.history.loss)


def test_update_manifest_keeps_checksum_true(tmp_path):
    path = tmp_path / "m.pt"
    checkpoints.save({"w": torch.ones(2)}, path, manifest={"metrics": {"a": 1}})
    man = checkpoints.update_manifest(path, metrics={"a": 1, "fid": 3.5})
    assert man["metrics"]["fid"] == 3.5 and man["sha256"] == checkpoints.sha256_file(path)
    assert checkpoints.load(path)["w"].sum() == 2  # still verifies
