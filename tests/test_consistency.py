"""Consistency models: the parameterisation, the losses against an exact oracle, the samplers, bad input.

The independent reference is a Gaussian mixture whose PF-ODE is integrated accurately
(``ExactConsistencyFunction``): its map x_t ↦ x_{σ_min} *is* the perfect consistency function, so the
distillation loss must vanish on it (up to the teacher DDIM step's own discretisation error) and not on
a perturbed one. The integrator itself is checked against many-step DDIM on the exact ε.
"""
import copy
import math

import pytest
import torch

from diffusion_course import consistency as C
from diffusion_course import forward, metrics, sampling
from diffusion_course.gmm import GaussianMixture
from diffusion_course.nn import MLPDenoiser, UNet
from diffusion_course.schedules import NoiseSchedule
from diffusion_course.training import ema_update

S = NoiseSchedule.cosine(1000)
GMM = GaussianMixture.ring(k=8, radius=2.0, std=0.25)
SIGMA_DATA_2D = 1.4   # the ring's per-coordinate std: √(2 + 0.25²) ≈ 1.43


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _tiny_unet(seed=0, num_classes=10):
    torch.manual_seed(seed)
    net = UNet(in_channels=1, channels=(8, 16), attention_levels=(), num_classes=num_classes, patch=2)
    with torch.no_grad():   # the output conv is zero-initialised: make the network's output non-trivial
        net.out[-1].weight.normal_(0, 0.3, generator=_gen(seed + 1))
        net.class_embed.weight.normal_(0, 0.3, generator=_gen(seed + 2)) if num_classes else None
    return net.eval()


# --------------------------------------------------------------------------- parameterisation
def test_c_skip_c_out_limits_and_unit_variance():
    sd, sm = 0.5, 0.0064
    assert C.c_skip(torch.tensor(sm), sd, sm) == 1 and C.c_out(torch.tensor(sm), sd, sm) == 0
    big = torch.tensor(1e6, dtype=torch.float64)
    assert C.c_skip(big, sd, sm) < 1e-12 and abs(C.c_out(big, sd, sm) - sd) < 1e-6
    # EDM's reason for c_out (Karras et al. 2022, App. B.6), σ_min = 0: the residual x0 − c_skip·y of
    # y = x0 + σn (Var x0 = σ_d²) has std c_out, so F's target has unit variance. Monte Carlo check:
    g = _gen(0)
    x0, n = sd * torch.randn(200_000, generator=g, dtype=torch.float64), torch.randn(200_000, generator=g, dtype=torch.float64)
    for sigma in (0.1, 0.5, 2.0, 30.0):
        resid = x0 - C.c_skip(sigma, sd) * (x0 + sigma * n)
        assert abs(resid.std().item() / C.c_out(sigma, sd) - 1) < 0.01


@pytest.mark.parametrize("head", ["eps", "raw"])
def test_boundary_condition_is_exact(head):
    net = _tiny_unet()
    cm = C.ConsistencyModel(net, S, grid_size=20, head=head)
    x = torch.randn(4, 1, 28, 28, generator=_gen(3))
    t0 = torch.zeros(4, dtype=torch.long)
    out = cm(x, t0, torch.tensor([0, 3, 9, 10]))
    assert torch.equal(out, cm.to_ve(x, t0))                        # bit for bit: c_out·F contributes exactly 0
    assert torch.allclose(out.double(), x.double() / S.alpha_bar[0].sqrt(), rtol=1e-6, atol=0)
    assert cm.sigma_min == pytest.approx(float(S.sigma[0])) and int(cm.grid[0]) == 0
    # ...and away from the boundary the network does contribute
    assert not torch.allclose(cm(x, torch.full((4,), 400)), cm.to_ve(x, torch.full((4,), 400)))


def test_boundary_holds_even_for_a_non_finite_network():
    class Bad(torch.nn.Module):
        num_classes = 0

        def forward(self, x, t):
            return torch.full_like(x, float("inf"))

    cm = C.ConsistencyModel(Bad(), S, grid_size=10, head="raw")
    x = torch.randn(3, 2)
    assert torch.equal(cm(x, 0), cm.to_ve(x, 0))


def test_warm_start_is_the_teachers_denoiser_below_the_cap():
    """From an ε-teacher, f = y − σ·ε̂ (its denoiser) for σ ≤ σ_cap: exactly with σ_min = 0 (Denoiser), within
    O(σ_min/σ_d) for the consistency model; above the cap f stays bounded where the teacher's x̂₀ explodes."""
    teacher = _tiny_unet()
    x = torch.randn(6, 1, 28, 28, generator=_gen(4))
    den = C.Denoiser.from_teacher(teacher, S, sigma_cap=2.0)
    cm = C.ConsistencyModel.from_teacher(teacher, S, grid_size=20, sigma_cap=2.0)
    for t_int in (50, 300, 600):
        t = torch.full((6,), t_int)
        _, x0_teacher = sampling.predict_eps_x0(teacher, x, t, S)
        assert torch.allclose(den(x, t), x0_teacher, atol=1e-4, rtol=1e-5), t_int
        assert (cm(x, t) - x0_teacher).abs().max() < 0.03 * x0_teacher.abs().max() + 1e-3, t_int
    t = torch.full((6,), 999)
    _, x0_teacher = sampling.predict_eps_x0(teacher, x, t, S)
    assert x0_teacher.abs().max() > 1e4 and cm(x, t).abs().max() < 1e-3 * x0_teacher.abs().max()


def test_make_grid_is_the_teachers_ddim_list_plus_zero():
    g = C.make_grid(S, 20)
    assert g.tolist() == [0] + sampling.timesteps(1000, 20, "trailing").flip(0).tolist()
    assert g[0] == 0 and g[-1] == 999 and g.numel() == 21 and bool((g[1:] > g[:-1]).all())
    assert C.make_grid(S, 999).tolist() == list(range(1000))
    for bad in (0, 1000, 2.5, True):
        with pytest.raises(ValueError, match="grid size"):
            C.make_grid(S, bad)


# --------------------------------------------------------------------------- the teacher step and the losses
def test_teacher_step_equals_the_chapter3_ddim_step():
    teacher = _tiny_unet()
    x = torch.randn(5, 1, 28, 28, generator=_gen(5))
    cond = torch.tensor([0, 1, 2, 10, 4])
    t, t_prev = torch.tensor([999, 700, 400, 49, 49]), torch.tensor([949, 650, 350, 0, -1])
    ref = sampling.ddim_step(x, teacher(x, t, cond), t, t_prev, S)
    assert torch.equal(C.teacher_step(teacher, x, t, t_prev, S, cond), ref)
    # with clipping it is exactly the update chapter 3's loop makes (DDIM-1 from t = 999 to the clean end)
    one = sampling.ddim_sample(teacher, x, S, steps=1, cond=cond, clip_denoised=True, progress=False)
    assert torch.equal(C.teacher_step(teacher, x, 999, -1, S, cond, clip_denoised=True), one)


def test_ct_lower_point_is_a_ddim_step_with_the_true_noise():
    x0 = torch.randn(7, 2, generator=_gen(6), dtype=torch.float64)
    z = torch.randn(7, 2, generator=_gen(7), dtype=torch.float64)
    t_hi, t_lo = torch.tensor([999, 800, 500, 100, 5, 1, 30]), torch.tensor([949, 750, 450, 50, 0, 0, 29])
    x_hi = forward.q_sample(x0, t_hi, S, z)
    assert torch.allclose(sampling.ddim_step(x_hi, z, t_hi, t_lo, S), forward.q_sample(x0, t_lo, S, z), atol=1e-9)


def test_exact_consistency_function_matches_many_step_ddim_on_the_exact_eps():
    """An independent check of the integrator: DDIM (Euler in σ) on the exact ε converges to it."""
    ex = C.ExactConsistencyFunction(GMM, S, rk_steps=200)
    x_T = torch.randn(200, 2, generator=_gen(8), dtype=torch.float64)
    ref = ex(x_T, 999)
    errs = [(sampling.ddim_sample(GMM.oracle_model(S), x_T, S, steps=k, progress=False) - ref).norm(dim=1).mean().item()
            for k in (25, 100)]
    assert errs[1] < 0.02 and errs[1] < errs[0] / 2.5, errs       # first order: ≈ 4× smaller for 4× the steps
    # rk_steps is enough: doubling it changes nothing that matters
    assert (C.ExactConsistencyFunction(GMM, S, rk_steps=400)(x_T[:50], 999) - ref[:50]).abs().max() < 1e-5
    # trajectories collapse: points of one trajectory map to one end point
    traj = sampling.ddim_sample(GMM.oracle_model(S), x_T[:50], S, steps=200, progress=False, return_trajectory=True)[1]
    rows = [0, 60, 120, 180]                           # states at t = 999, ≈699, ≈399, ≈99 of the same paths
    ends = torch.stack([ex(traj["x_t"][i], int(traj["t"][i])) for i in rows])
    assert (ends - ends[0]).norm(dim=-1).mean() < 0.02


def test_cd_loss_vanishes_on_the_exact_consistency_function_and_not_on_perturbed_ones():
    ex = C.ExactConsistencyFunction(GMM, S, rk_steps=200)
    oracle = GMM.oracle_model(S)
    x0 = GMM.sample(256, generator=_gen(9))[0]

    def loss(f, N):
        return C.consistency_loss(f, f, x0, S, C.make_grid(S, N), teacher=oracle, generator=_gen(10)).item()

    def perturbed(x, t, cond=None):     # boundary condition kept, consistency broken
        sig = S.sigma[t.cpu()].double()[:, None]
        return ex(x, t) + 0.2 * C.c_out(sig, 1.0, float(S.sigma[0])) * torch.sin(3 * x)

    def denoiser(x, t, cond=None):      # the posterior mean E[x0 | x_t] — the natural wrong answer
        return GMM.posterior_mean_x0(x, t, S)

    exact_fine, exact_coarse = loss(ex, 999), loss(ex, 50)
    assert exact_fine < 1e-10, exact_fine
    assert exact_fine < exact_coarse < 1e-5         # what remains is the DDIM step's error: it shrinks with N
    assert loss(perturbed, 999) > 1e4 * exact_fine and loss(perturbed, 50) > 10 * exact_coarse
    assert loss(denoiser, 50) > 1e-3


def test_distances():
    a, b = torch.zeros(3, 1, 28, 28), torch.zeros(3, 1, 28, 28)
    b[0, 0, 0, 0], b[1] = 1e-4, 1.0
    l2, ph = C.distance(a, b, "l2"), C.distance(a, b, "pseudo-huber")
    assert torch.allclose(l2, (a - b).pow(2).flatten(1).mean(1)) and abs(ph[2]) < 1e-8 and l2[2] == 0
    c = 0.00054 * 28
    assert ph[0] == pytest.approx(1e-8 / (2 * c), rel=1e-2)      # quadratic for small differences
    assert ph[1] == pytest.approx(28 - c, rel=1e-4)               # ≈ ‖a − b‖ for large ones
    for bad in ("l1", "lpips", None):
        with pytest.raises(ValueError, match="distance"):
            C.distance(a, b, bad)
    with pytest.raises(ValueError, match="distance"):
        C.DistillConfig(distance="L2")


def test_ct_grid_size_grows_by_doubling():
    sizes = [C.ct_grid_size(k, 600, 10, 80) for k in range(600)]
    assert sizes[0] == 10 and sizes[-1] == 80 and sorted(set(sizes)) == [10, 20, 40, 80]
    assert all(b >= a for a, b in zip(sizes, sizes[1:]))
    with pytest.raises(ValueError):
        C.ct_grid_size(0, 100, 20, 10)


def test_target_and_ema_update_math():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    C.target_update(target, online, 0.9)
    for pt, p0, po in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(pt, 0.9 * p0 + 0.1 * po)
    C.target_update(target, online, 0.0)                             # iCT: θ⁻ = stopgrad(θ)
    assert all(torch.equal(pt, po) for pt, po in zip(target.parameters(), online.parameters()))
    ema = torch.nn.Linear(3, 2)
    e0 = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, online, 0.99)
    assert all(torch.allclose(pe, 0.99 * a + 0.01 * po) for pe, a, po in zip(ema.parameters(), e0, online.parameters()))
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="target_decay"):
            C.target_update(target, online, bad)


def _student_2d(N=20, seed=0):
    torch.manual_seed(seed)
    return C.ConsistencyModel(MLPDenoiser(dim=2, hidden=64, depth=3), S, grid_size=N, head="raw", sigma_data=SIGMA_DATA_2D)


def test_distillation_on_2d_moves_towards_the_exact_map_and_resumes_exactly(tmp_path):
    data = GMM.sample(4096, generator=_gen(11))[0].float()
    oracle, ex = GMM.oracle_model(S), C.ExactConsistencyFunction(GMM, S, rk_steps=100)
    x_T = torch.randn(300, 2, generator=_gen(12))
    f_star = ex(x_T, 999).float()
    cfg = C.DistillConfig(steps=240, batch_size=256, lr=2e-3, warmup=20, lr_decay="constant", grid_size=20,
                          distance="l2", p_uncond=0.0, clip_denoised=False, ema_decay=0.99, sigma_data=SIGMA_DATA_2D)
    student = _student_2d()
    err0 = (C.sample(student, x_T, steps=1, clip_denoised=False) - f_star).norm(dim=1).mean()
    res = C.distill(oracle, S, data, None, cfg, student=student, progress=False, device="cpu")
    err = (C.sample(res.ema, x_T, steps=1, clip_denoised=False) - f_star).norm(dim=1).mean()
    assert err < 0.5 * err0 and err < 1.0, (err0, err)
    # stopped at 120 and resumed = uninterrupted (all randomness comes from the saved generator)
    path = tmp_path / "cd.train.pt"
    C.distill(oracle, S, data, None, C.DistillConfig(**{**cfg.__dict__, "steps": 120, "checkpoint_path": str(path)}),
              student=_student_2d(), progress=False, device="cpu")
    resumed = C.distill(oracle, S, data, None, C.DistillConfig(**{**cfg.__dict__, "checkpoint_path": str(path)}),
                        student=_student_2d(), progress=False, device="cpu")
    assert resumed.step == 240 and len(resumed.history.loss) == 240
    for a, b in zip(list(resumed.student.parameters()) + list(resumed.ema.parameters()),
                    list(res.student.parameters()) + list(res.ema.parameters())):
        assert torch.equal(a, b)


def test_a_saved_distillation_resumes_only_as_the_same_run_same_settings_and_same_teacher(tmp_path):
    data = GMM.sample(1024, generator=_gen(31))[0].float()
    torch.manual_seed(0)
    teacher, other = MLPDenoiser(dim=2, hidden=32, depth=2), MLPDenoiser(dim=2, hidden=32, depth=2)
    assert C.teacher_fingerprint(teacher) == C.teacher_fingerprint(copy.deepcopy(teacher))
    assert C.teacher_fingerprint(teacher) != C.teacher_fingerprint(other)
    assert C.teacher_fingerprint(GMM.oracle_model(S)) is None
    path = tmp_path / "cd.train.pt"
    cfg = C.DistillConfig(steps=4, batch_size=64, warmup=1, grid_size=10, distance="l2", p_uncond=0.0,
                          clip_denoised=False, sigma_data=SIGMA_DATA_2D, checkpoint_path=str(path), checkpoint_every=2)
    C.distill(teacher, S, data, None, cfg, student=_student_2d(10), progress=False, device="cpu")
    assert torch.load(path, weights_only=False)["teacher_fingerprint"] == C.teacher_fingerprint(teacher)
    for change, name in ((dict(grid_size=20), "grid_size"), (dict(distance="pseudo-huber"), "distance"),
                         (dict(seed=1), "seed"), (dict(batch_size=32), "batch_size")):
        with pytest.raises(ValueError, match=name):
            C.distill(teacher, S, data, None, C.DistillConfig(**{**cfg.__dict__, **change}),
                      student=_student_2d(10), progress=False, device="cpu")
    with pytest.raises(ValueError, match="different teacher"):
        C.distill(other, S, data, None, cfg, student=_student_2d(10), progress=False, device="cpu")
    # the state moved elsewhere, saved more often, with a time budget: the same run, nothing left to train
    moved = tmp_path / "moved.train.pt"
    moved.write_bytes(path.read_bytes())
    res = C.distill(teacher, S, data, None, C.DistillConfig(**{**cfg.__dict__, "checkpoint_path": str(moved),
                                                                "checkpoint_every": 1, "max_minutes": 5.0}),
                    student=_student_2d(10), progress=False, device="cpu")
    assert res.step == 4 and len(res.history.loss) == 4


def test_a_recipe_extended_by_a_warm_restart_resumes_exactly_and_a_changed_schedule_is_refused(tmp_path):
    """How fmnist-cd was lengthened: a second cosine cycle (lr_cycle_ends) leaves the first cycle's steps as they
    were, so resuming the shorter run's state equals running the longer recipe from scratch."""
    data = GMM.sample(2048, generator=_gen(21))[0].float()
    oracle = GMM.oracle_model(S)
    base = dict(batch_size=128, lr=2e-3, warmup=10, lr_decay="cosine", grid_size=10, distance="l2", p_uncond=0.0,
                clip_denoised=False, ema_decay=0.9, sigma_data=SIGMA_DATA_2D)
    short = C.DistillConfig(steps=60, **base)
    longer = C.DistillConfig(steps=120, lr_cycle_ends=(60,), restart_lr_scale=0.5, **base)
    whole = C.distill(oracle, S, data, None, longer, student=_student_2d(), progress=False, device="cpu")
    path = tmp_path / "cd.train.pt"
    C.distill(oracle, S, data, None, C.DistillConfig(**{**short.__dict__, "checkpoint_path": str(path)}),
              student=_student_2d(), progress=False, device="cpu")
    resumed = C.distill(oracle, S, data, None, C.DistillConfig(**{**longer.__dict__, "checkpoint_path": str(path)}),
                        student=_student_2d(), progress=False, device="cpu")
    assert resumed.step == 120
    for a, b in zip(resumed.ema.parameters(), whole.ema.parameters()):
        assert torch.equal(a, b)
    # the restart really restarts: the rate after step 60 jumps back up to half the peak
    assert __import__('diffusion_course').training.lr_at(59, longer, 0.0) < 0.2 * base["lr"] and __import__('diffusion_course').training.lr_at(60, longer, 0.0) == pytest.approx(0.5 * base["lr"])
    # resuming the 60-step state under a plain 120-step cosine would change the lr of its 60 steps: refused
    plain = C.DistillConfig(**{**short.__dict__, "steps": 120, "checkpoint_path": str(tmp_path / "b.train.pt")})
    C.distill(oracle, S, data, None, C.DistillConfig(**{**short.__dict__, "checkpoint_path": plain.checkpoint_path}),
              student=_student_2d(), progress=False, device="cpu")
    with pytest.raises(ValueError, match="lr_cycle_ends"):
        C.distill(oracle, S, data, None, plain, student=_student_2d(), progress=False, device="cpu")
    for bad in [dict(lr_cycle_ends=(5,)), dict(lr_cycle_ends=(80, 70)), dict(lr_cycle_ends=(130,)),
                dict(lr_cycle_ends=(60,), restart_lr_scale=0.0), dict(lr_cycle_ends=(60,), max_minutes=1.0)]:
        with pytest.raises(ValueError):
            C.DistillConfig(**{**base, "steps": 120, **bad})


# --------------------------------------------------------------------------- sampling
def test_multistep_sampling_shapes_range_determinism():
    cm = C.ConsistencyModel(_tiny_unet(), S, grid_size=20).eval()
    x_T = torch.randn(3, 1, 28, 28, generator=_gen(13))
    for steps in (1, 2, 4):
        a = C.sample(cm, x_T, steps=steps, cond=torch.tensor([1, 2, 10]), generator=_gen(0), clip_denoised=True)
        b = C.sample(cm, x_T, steps=steps, cond=torch.tensor([1, 2, 10]), generator=_gen(0), clip_denoised=True)
        assert a.shape == x_T.shape and a.min() >= -1 and a.max() <= 1 and torch.equal(a, b)
        c = C.sample(cm, x_T, steps=steps, cond=None, generator=_gen(1))    # cond=None: the null label
        assert c.shape == x_T.shape and torch.isfinite(c).all()
        if steps > 1:
            assert not torch.equal(c, C.sample(cm, x_T, steps=steps, generator=_gen(2)))   # re-noising uses the generator
    assert torch.equal(C.sample(cm, x_T, steps=1, generator=_gen(5)), C.sample(cm, x_T, steps=1, generator=_gen(6)))
    unclipped = C.sample(cm, 30 * x_T, steps=1, clip_denoised=False)
    assert unclipped.abs().max() > 1
    assert C.multistep_timesteps(cm, 1).tolist() == [999]
    assert C.multistep_timesteps(cm, 2).tolist() == [999, 499]
    assert C.multistep_timesteps(cm, 4).tolist() == [999, 749, 499, 249]
    assert C.multistep_timesteps(cm, 20).tolist() == cm.grid[1:].flip(0).tolist()


def test_multistep_renoising_follows_algorithm_1():
    """With f = the exact map, one step from x_T and the re-noising to τ give x_τ = √ᾱ_τ(x̂₀ + √(σ_τ² − σ_min²) z)."""
    seen = []

    class Recorder(C.ExactConsistencyFunction):
        def __call__(self, x, t, cond=None):
            seen.append((x.clone(), int(t[0])))
            return super().__call__(x, t, cond)

    ex = Recorder(GMM, S, rk_steps=50)
    x_T = torch.randn(10, 2, generator=_gen(14), dtype=torch.float64)
    out = C.sample(ex, x_T, steps=2, generator=_gen(15), timesteps=torch.tensor([999, 300]), clip_denoised=False)
    (x1, t1), (x2, t2) = seen
    assert (t1, t2) == (999, 300)
    assert torch.allclose(x1, math.sqrt(1 - float(S.alpha_bar[999])) * x_T)
    z = torch.randn(x_T.shape, generator=_gen(15), dtype=torch.float32).double()
    x0_1 = C.ExactConsistencyFunction(GMM, S, rk_steps=50)(x1, torch.full((10,), 999))
    sig, ab = float(S.sigma[300]), float(S.alpha_bar[300])
    expected = math.sqrt(ab) * (x0_1 + math.sqrt(sig**2 - float(S.sigma[0]) ** 2) * z)
    assert torch.allclose(x2, expected, atol=1e-6) and out.shape == x_T.shape


# --------------------------------------------------------------------------- progressive distillation
# --------------------------------------------------------------------------- bad input
def test_bad_input_gets_clear_errors():
    cm = C.ConsistencyModel(_tiny_unet(), S, grid_size=20)
    x_T = torch.randn(2, 1, 28, 28)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            C.sample(cm, x_T, steps=bad)
    with pytest.raises(ValueError, match="grid size"):
        C.sample(cm, x_T, steps=21)
    with pytest.raises(TypeError, match="ConsistencyModel"):
        C.sample(_tiny_unet(), x_T, steps=1)
    with pytest.raises(ValueError, match="cond"):
        C.sample(cm, x_T, steps=1, cond=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="timesteps"):
        C.sample(cm, x_T, steps=2, timesteps=torch.tensor([300, 999]))
    with pytest.raises(ValueError, match="head"):
        C.ConsistencyModel(_tiny_unet(), S, head="v")
    with pytest.raises(ValueError, match="mode"):
        C.DistillConfig(mode="pd")
    with pytest.raises(TypeError, match="teacher_solver"):
        C.DistillConfig(teacher_solver="heun")     # a variant: consistency_extensions.ExtendedDistillConfig
    for bad in (dict(grad_clip=-1), dict(grid_size=0), dict(lr=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            C.DistillConfig(**bad)
    data = GMM.sample(64, generator=_gen(20))[0].float()
    # a teacher whose schedule does not match the student's
    linear_teacher = GMM.oracle_model(NoiseSchedule.linear(1000))
    with pytest.raises(ValueError, match="schedule"):
        C.distill(linear_teacher, S, data, None, C.DistillConfig(steps=1), student=_student_2d(), progress=False)
    with pytest.raises(ValueError, match="schedule"):
        C.distill(GMM.oracle_model(S), NoiseSchedule.linear(1000), data, None, C.DistillConfig(steps=1),
                  student=_student_2d(), progress=False)
    with pytest.raises(ValueError, match="teacher"):
        C.distill(None, S, data, None, C.DistillConfig(steps=1), student=_student_2d(), progress=False)
    with pytest.raises(ValueError, match="ε-prediction"):
        C.ConsistencyModel.from_teacher(MLPDenoiser(objective="x0"), S)
    with pytest.raises(ValueError, match="labels"):
        C.distill(GMM.oracle_model(S), S, data, torch.zeros(3, dtype=torch.long), C.DistillConfig(steps=1),
                  student=_student_2d(), progress=False)


def test_fmnist_cd_recipe_trains_on_demand_in_quick_mode_and_the_cli_refuses_a_missing_teacher(tmp_path, monkeypatch):
    from diffusion_course import checkpoints, pretrained, train

    recipe = pretrained.RECIPES["fmnist-cd"]
    assert recipe.teacher == "fmnist-ddpm" and recipe.distill["mode"] == "cd"
    cm = train.run_recipe("fmnist-cd", steps=2, save=False, device="cpu", evaluate=False)
    assert isinstance(cm, C.ConsistencyModel) and cm.schedule.T == 1000
    # the exported EMA loads into the recipe's architecture (what pretrained.load does with the shipped file)
    fresh = pretrained.build("fmnist-cd")
    fresh.load_state_dict(cm.state_dict())
    x = C.sample(fresh, torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)), steps=2, clip_denoised=True,
                           cond=torch.tensor([3, 7]), generator=torch.Generator().manual_seed(1))
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all()
    # outside quick mode a missing teacher is a clear error, not a silently untrained one
    monkeypatch.setattr(checkpoints, "CHECKPOINT_DIR", tmp_path)
    monkeypatch.setenv("DIFFUSION_COURSE_QUICK", "0")
    with pytest.raises(FileNotFoundError, match="train it first"):
        train.run_recipe("fmnist-cd", out=tmp_path, device="cpu")


@pytest.mark.skipif(not __import__("diffusion_course").pretrained.path_for("fmnist-cd-v4").exists(),
                    reason="fmnist-cd-v4 (lineage) is only in the source tree")
def test_a_further_stage_starts_from_its_previous_one_and_a_missing_or_mismatched_start_is_a_clear_error(monkeypatch):
    """Each stage of the student continues the one before (fmnist-cd-v5 ← v4 ← v3 ← v2 ← v1); the shipped fmnist-cd is
    v2's recipe (continuing v1) — its student starts from the previous stage's weights, not the teacher's."""
    from dataclasses import replace

    from diffusion_course import pretrained, train

    monkeypatch.setenv("DIFFUSION_COURSE_QUICK", "0")
    chain = [pretrained.RECIPES[name].init_from for name in ("fmnist-cd-v5", "fmnist-cd-v4", "fmnist-cd-v3",
                                                              "fmnist-cd-v2", "fmnist-cd")]
    assert chain == ["fmnist-cd-v4", "fmnist-cd-v3", "fmnist-cd-v2", "fmnist-cd-v1", "fmnist-cd-v1"]
    assert pretrained.RECIPES["fmnist-cd"].distill == pretrained.RECIPES["fmnist-cd-v2"].distill
    assert len({pretrained.RECIPES[name].teacher for name in ("fmnist-cd", "fmnist-cd-v5", "fmnist-cd-v4", "fmnist-cd-v3",
                                                              "fmnist-cd-v2", "fmnist-cd-v1")}) == 1
    # the shipped fmnist-cd is fmnist-cd-v2's bytes
    assert pretrained.manifest("fmnist-cd")["sha256"] == pretrained.manifest("fmnist-cd-v2")["sha256"]
    _, start = train.consistency_start("fmnist-cd-v5", device="cpu")
    previous = pretrained.load("fmnist-cd-v4", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), previous.state_dict().values()))
    _, teacher_start = train.consistency_start("fmnist-cd-v1", device="cpu")   # no init_from: the teacher's weights
    assert not all(torch.equal(a, b) for a, b in zip(teacher_start.state_dict().values(), previous.state_dict().values()))
    recipe = pretrained.RECIPES["fmnist-cd-v5"]
    monkeypatch.setitem(pretrained.RECIPES, "fmnist-cd-v5", replace(recipe, init_from="fmnist-cd-v9"))
    monkeypatch.setitem(pretrained.RECIPES, "fmnist-cd-v9", pretrained.RECIPES["fmnist-cd-v4"])
    with pytest.raises(FileNotFoundError, match="fmnist-cd-v9.*train it first"):
        train.consistency_start("fmnist-cd-v5", device="cpu")
    monkeypatch.setitem(pretrained.RECIPES, "fmnist-cd-v5", replace(recipe, init_from="fmnist-cd-v2"))
    with pytest.raises(ValueError, match="grid 20.*grid 10"):
        train.consistency_start("fmnist-cd-v5", device="cpu", distill={**recipe.distill, "grid_size": 10})
    # a starting student of another teacher (its manifest names that teacher's sha256) is refused
    real_manifest = pretrained.manifest
    monkeypatch.setattr(pretrained, "manifest", lambda name: {**real_manifest(name), "metrics": {
        **real_manifest(name).get("metrics", {}), "teacher_sha256": "0" * 64}} if name == "fmnist-cd-v2" else real_manifest(name))
    with pytest.raises(ValueError, match="distilled from another"):
        train.consistency_start("fmnist-cd-v5", device="cpu")


@pytest.mark.skipif(not __import__("diffusion_course").pretrained.path_for("fmnist-cd").exists(),
                    reason="fmnist-cd checkpoint not distilled yet")
def test_shipped_fmnist_cd_loads_samples_and_records_fid_at_1_2_4_steps():
    from diffusion_course import pretrained

    cm = pretrained.load("fmnist-cd", device="cpu")
    man = pretrained.manifest("fmnist-cd")
    assert isinstance(cm, C.ConsistencyModel) and man["recipe"]["teacher"] == pretrained.RECIPES["fmnist-cd"].teacher
    m = man["metrics"]
    assert all(m[f"fid_cm{k}"] > m["floor_balanced"] for k in (1, 2, 4))
    x = C.sample(cm, torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)), steps=1, cond=torch.tensor([0, 5, 9]), clip_denoised=True)
    assert x.shape == (3, 1, 28, 28) and torch.isfinite(x).all() and x.abs().max() <= 1

