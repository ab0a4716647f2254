"""Samplers against diffusers' schedulers (independent implementations) and against an exact oracle.

Two kinds of reference:
* diffusers' DDPMScheduler / DDIMScheduler / DPMSolverMultistepScheduler, fed the same model outputs and
  the same noise. diffusers keeps ᾱ in float32; to compare *formulas* we hand it our float64 ᾱ
  (``_f64``) and ask for agreement to ~1e-10; with its own float32 ᾱ we ask for float32-level agreement.
* a Gaussian mixture whose noised score is known exactly (``diffusion_course.gmm``): a sampler driven by
  the oracle has no model error, so it must reproduce the mixture up to its own discretisation error.
"""
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from diffusion_course import forward, metrics, sampling
from diffusion_course.gmm import GaussianMixture
from diffusion_course.schedules import NoiseSchedule

T = 1000
SCHEDULES = {"linear": (NoiseSchedule.linear(T), "linear"),
             "cosine": (NoiseSchedule.cosine(T), "squaredcos_cap_v2")}
# A 2-D mixture with unequal weights: well-separated modes (radius 2, std 0.25).
GMM = GaussianMixture.ring(k=5, radius=2.0, std=0.25, weights=[0.1, 0.15, 0.2, 0.25, 0.3])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _f64(sched, ours: NoiseSchedule):
    """Give a diffusers scheduler our float64 ᾱ, so only the update formulas are compared."""
    sched.alphas_cumprod = ours.alpha_bar.clone()
    sched.final_alpha_cumprod = sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched


def _native_atol(t: int) -> float:
    """Tolerance against diffusers' *own* float32 ᾱ (the formulas themselves are checked to 1e-10 with ``_f64``).

    Its float32 ᾱ differs from ours by ~1e-7 relative (cumprod rounding), and its step works in float32 where
    its scalars are: 1e-5 in the bulk (≤ 7e-6 observed). Two ends are ill-conditioned in float32: near t = 0,
    1 − ᾱ ≈ 1e-4 loses ~3 digits to cancellation (1.3e-4 observed at t = 1), and at t = 999 the cosine
    schedule's ᾱ ≈ 2.4e-9 (after β capped at float32(0.999), itself 6e-5 off) is divided into x, so x̂₀ and
    the output get large and carry ~4e-5 relative error. There we allow 1e-3 absolute plus 1e-4 relative.
    """
    return dict(atol=1e-5, rtol=0) if 10 < t < T - 1 else dict(atol=1e-3, rtol=1e-4)


def _fake_model_output(shape, seed):
    return torch.randn(shape, generator=_gen(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- timesteps
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("T_, steps", [(1000, 50), (1000, 30), (1000, 7), (1000, 1), (1000, 999),
                                       (100, 100), (10, 3), (250, 17)])
def test_timesteps_match_diffusers(spacing, T_, steps):
    ref = DDIMScheduler(num_train_timesteps=T_, timestep_spacing=spacing, steps_offset=0)
    ref.set_timesteps(steps)
    ts = sampling.timesteps(T_, steps, spacing)
    assert ts.dtype == torch.long
    assert ts.tolist() == ref.timesteps.tolist()
    assert len(ts) == steps and len(set(ts.tolist())) == steps
    assert (ts[:-1] > ts[1:]).all() and 0 <= int(ts.min()) and int(ts.max()) <= T_ - 1
    if spacing == "trailing":
        assert int(ts[0]) == T_ - 1  # the noisiest step is always visited
    # DDPMScheduler shares the same spacings (and, unlike DDIMScheduler, steps to the list's previous entry).
    ddpm = DDPMScheduler(num_train_timesteps=T_, timestep_spacing=spacing, steps_offset=0)
    ddpm.set_timesteps(steps)
    assert ts.tolist() == ddpm.timesteps.tolist()


@pytest.mark.parametrize("kwargs", [dict(T=1000, steps=1001), dict(T=1000, steps=0), dict(T=1000, steps=2.0),
                                    dict(T=1000, steps=True), dict(T=0, steps=1), dict(T=10, steps=3, spacing="log")])
def test_timesteps_bad_input(kwargs):
    with pytest.raises(ValueError):
        sampling.timesteps(**kwargs)


# --------------------------------------------------------------------------- step functions vs diffusers
@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("variance, variance_type", [("beta_tilde", "fixed_small"), ("beta", "fixed_large")])
def test_ddpm_step_matches_diffusers(name, variance, variance_type):
    ours, beta_schedule = SCHEDULES[name]
    shape = (3, 2, 4)
    # (t, t_prev, number of inference steps): every step of the 1000-step chain we try, and strided ones.
    cases = [(999, 998, None), (500, 499, None), (1, 0, None), (0, -1, None), (900, 800, 10), (100, 0, 10),
             (0, -1, 10)]
    for native in (False, True):
        for i, (t, t_prev, steps) in enumerate(cases):
            ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=beta_schedule, variance_type=variance_type,
                                clip_sample=False)
            if not native:
                _f64(ref, ours)
            if steps:
                ref.set_timesteps(steps)  # diffusers then steps to the previous entry of its list, like us
            x, eps = _fake_model_output(shape, 2 * i), _fake_model_output(shape, 2 * i + 1)
            expected = ref.step(eps, t, x, generator=_gen(100 + i)).prev_sample
            # diffusers drew its z with randn(shape, generator, dtype=float64) from this seed (only if t > 0).
            z = torch.randn(shape, generator=_gen(100 + i), dtype=torch.float64)
            got = sampling.ddpm_step(x, eps, t, t_prev, ours, noise=z, variance=variance)
            mean = sampling.ddpm_step(x, eps, t, t_prev, ours, noise=torch.zeros(shape, dtype=torch.float64),
                                      variance=variance)
            if t_prev >= 0:
                assert not torch.allclose(got, mean)  # the noise term really is compared
            # float64 ᾱ on both sides: identical formulas up to rounding. At t = 0 (→ clean) neither adds noise.
            tol = dict(atol=1e-10, rtol=0) if not native else _native_atol(t)
            assert torch.allclose(got, expected, **tol), (native, t, t_prev, (got - expected).abs().max())


def _ddim_reference(beta_schedule, spacing, steps, ours=None):
    """diffusers' DDIMScheduler in our convention (ᾱ_{-1} = 1); given ``ours``, on our float64 ᾱ."""
    ref = DDIMScheduler(num_train_timesteps=T, beta_schedule=beta_schedule, set_alpha_to_one=True,
                        steps_offset=0, timestep_spacing=spacing, clip_sample=False)
    if ours is not None:
        _f64(ref, ours)
    ref.set_timesteps(steps)
    return ref


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_step_matches_diffusers(name, eta, spacing):
    ours, beta_schedule = SCHEDULES[name]
    steps, shape = 30, (2, 3, 2, 2)
    for native in (False, True):
        ref = _ddim_reference(beta_schedule, spacing, steps, ours if not native else None)
        for i, t in enumerate(ref.timesteps.tolist()[::3] + [int(ref.timesteps[-1])]):
            # diffusers' DDIMScheduler always steps to t − T//steps (a fixed stride), whatever the spacing;
            # the step *function* is compared at exactly that pair. (Whole loops: see below.)
            t_prev = max(t - T // steps, -1)
            x, eps = _fake_model_output(shape, 2 * i), _fake_model_output(shape, 2 * i + 1)
            z = _fake_model_output(shape, 1000 + i)
            expected = ref.step(eps, t, x, eta=eta, variance_noise=z if eta > 0 else None).prev_sample
            got = sampling.ddim_step(x, eps, t, t_prev, ours, eta=eta, noise=z)
            tol = dict(atol=1e-10, rtol=0) if not native else _native_atol(t)
            assert torch.allclose(got, expected, **tol), (native, t, (got - expected).abs().max())


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("spacing, steps", [("leading", 50), ("leading", 30), ("trailing", 50), ("trailing", 8)])
def test_ddim_sample_matches_diffusers_loop(name, spacing, steps):
    """Whole DDIM trajectories, for the spacings diffusers implements correctly.

    DDIMScheduler steps from t to t − T//steps. That is the list's previous entry for "leading" and for
    "trailing" when steps divides T — but not for "linspace" or e.g. trailing with 30 steps (it then
    visits levels that are not in its own list), so those loops are not comparable (ours uses the list).
    """
    ours, beta_schedule = SCHEDULES[name]
    model = GMM.oracle_model(ours)
    x_T = torch.randn(64, 2, generator=_gen(1), dtype=torch.float64)
    got = sampling.ddim_sample(model, x_T, ours, steps=steps, spacing=spacing, progress=False)
    for native in (False, True):
        ref = _ddim_reference(beta_schedule, spacing, steps, ours if not native else None)
        x = x_T.clone()
        for t in ref.timesteps.tolist():
            x = ref.step(model(x, torch.full((x.shape[0],), t)), t, x).prev_sample
        # With diffusers' float32 ᾱ: ≤ 2e-6 observed over a whole loop, 7e-5 when it starts at cosine's
        # ill-conditioned t = 999 (see _native_atol).
        atol = 1e-10 if not native else 1e-4
        assert torch.allclose(got, x, atol=atol, rtol=0), (native, (got - x).abs().max())


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_strided_ddpm_sample_matches_diffusers_loop(name):
    """10 strided ancestral steps with the same generator: both draw float32 N(0, I) noise in the same order."""
    ours, beta_schedule = SCHEDULES[name]
    model = GMM.oracle_model(ours)
    x_T = torch.randn(64, 2, generator=_gen(1))
    # diffusers adds noise at every t > 0, so on a "trailing" list its last step differs from
    # Algorithm 2's; on "leading" (ending at t = 0) both agree.
    got = sampling.ddpm_sample(model, x_T, ours, generator=_gen(5), steps=10, spacing="leading", progress=False)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=beta_schedule, clip_sample=False)
    ref.set_timesteps(10)  # "leading": 900, 800, ..., 0 — what ddpm_sample(steps=10) uses
    x, g = x_T.clone(), _gen(5)
    for t in ref.timesteps.tolist():
        x = ref.step(model(x, torch.full((x.shape[0],), t)), t, x, generator=g).prev_sample
    assert got.dtype == torch.float32
    # float32 samples on both sides; ~5e-6 observed.
    assert torch.allclose(got, x, atol=5e-5, rtol=0), (got - x).abs().max()
    other = sampling.ddpm_sample(model, x_T, ours, generator=_gen(6), steps=10, spacing="leading", progress=False)
    assert not torch.allclose(other, x, atol=1e-2)


# --------------------------------------------------------------------------- DPM-Solver++(2M)
def test_dpm_solver_first_and_last_steps():
    s = SCHEDULES["cosine"][0]
    x, x0, x0_last = (_fake_model_output((4, 3), i) for i in range(3))
    eps = forward.x0_to_eps(x, x0, torch.full((4,), 700), s)
    # First order in λ is exactly DDIM (η = 0) ...
    first = sampling.dpm_solver_2m_step(x, x0, 700, 650, s)
    assert torch.allclose(first, sampling.ddim_step(x, eps, 700, 650, s), atol=1e-12)
    # ... the second-order correction changes it ...
    second = sampling.dpm_solver_2m_step(x, x0, 700, 650, s, x0_pred_last=x0_last, t_last=750)
    assert not torch.allclose(second, first, atol=1e-3)
    # ... and equals D = (1 + 1/2r) x̂₀ − 1/(2r) x̂₀_last in the first-order formula (Lu et al., Alg. 2).
    lam = 0.5 * (torch.log(s.alpha_bar) - torch.log1p(-s.alpha_bar))
    r = (lam[700] - lam[750]) / (lam[650] - lam[700])
    d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_last
    assert torch.allclose(second, sampling.dpm_solver_2m_step(x, d, 700, 650, s), atol=1e-12)
    # The step to the clean end (σ = 0) returns x̂₀ whatever the history.
    assert torch.allclose(sampling.dpm_solver_2m_step(x, x0, 40, -1, s, x0_last, 90), x0, atol=1e-12)
    # A multistep memory is valid only from a noisier step.
    with pytest.raises(ValueError):
        sampling.dpm_solver_2m_step(x, x0, 700, 650, s, x0_pred_last=x0_last, t_last=650)
    with pytest.raises(ValueError):
        sampling.dpm_solver_2m_step(x, x0, 700, 650, s, x0_pred_last=x0_last)
    with pytest.raises(ValueError):
        sampling.dpm_solver_2m_step(x, x0[:2], 700, 650, s)


@pytest.mark.parametrize("name, spacing, steps", [
    ("linear", "trailing", 20), ("linear", "trailing", 10), ("linear", "linspace", 20), ("linear", "leading", 10),
    ("cosine", "leading", 20), ("cosine", "leading", 7)])
def test_dpm_solver_matches_diffusers(name, spacing, steps):
    """Whole trajectories against DPMSolverMultistepScheduler on the same (custom) timesteps.

    diffusers' own "linspace" for this scheduler is linspace(0, T−1, steps+1) without its last entry (a
    different list from DDIM's), so we pass our list as custom ``timesteps``. It downcasts the sample to
    float32 inside ``step`` and keeps σ in float32: agreement to float32 precision amplified by 1/α at the
    first step (α_999 ≈ 6e-3 for linear): 1e-4 (~3e-5 observed). Cosine is tested on "leading" lists, which
    avoid t = 999: there α ≈ 4e-5 and diffusers' float32 x̂₀ = (x − σε)/α loses ~1e-3 to cancellation.
    """
    ours, beta_schedule = SCHEDULES[name]
    model = GMM.oracle_model(ours)
    x_T = torch.randn(64, 2, generator=_gen(1), dtype=torch.float64)
    got = sampling.dpm_solver_2m_sample(model, x_T, ours, steps=steps, spacing=spacing, progress=False)
    ref = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule=beta_schedule,
                                      algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
                                      final_sigmas_type="zero", prediction_type="epsilon")
    ref.set_timesteps(timesteps=sampling.timesteps(T, steps, spacing).tolist())
    x = x_T.clone()
    for t in ref.timesteps.tolist():
        x = ref.step(model(x, torch.full((x.shape[0],), t)), t, x).prev_sample
    assert torch.allclose(got, x.double(), atol=1e-4, rtol=0), (got - x).abs().max()
    # ... and it is not simply DDIM on the same steps (the second-order terms matter).
    ddim = sampling.ddim_sample(model, x_T, ours, steps=steps, spacing=spacing, progress=False)
    assert (ddim - got).abs().max() > 1e-2


def test_dpm_solver_is_more_accurate_than_ddim():
    """Same ODE, same 40 steps: the second-order solver lands much closer to a fine (1000-step) solution."""
    s = SCHEDULES["cosine"][0]
    model = GMM.oracle_model(s)
    x_T = torch.randn(300, 2, generator=_gen(2), dtype=torch.float64)
    ref = sampling.dpm_solver_2m_sample(model, x_T, s, steps=T, progress=False)
    ref_ddim = sampling.ddim_sample(model, x_T, s, steps=T, progress=False)
    assert (ref - ref_ddim).norm(dim=1).mean() < 0.005  # the two fine solutions agree: a trustworthy reference
    err_dpm = (sampling.dpm_solver_2m_sample(model, x_T, s, steps=40, progress=False) - ref).norm(dim=1).mean()
    err_ddim = (sampling.ddim_sample(model, x_T, s, steps=40, progress=False) - ref).norm(dim=1).mean()
    # observed 0.004 vs 0.031
    assert err_dpm < 0.3 * err_ddim, (err_dpm, err_ddim)


# --------------------------------------------------------------------------- the exact oracle
N_MIX, N_MMD = 3000, 1500  # points per sampler; the MMD (O(N²)) uses the first 1500 of them


def _mmd(a: torch.Tensor, b: torch.Tensor) -> float:
    return metrics.mmd_rbf(a[:N_MMD], b[:N_MMD])


def _resid_std(x: torch.Tensor) -> float:
    """Spread of the points around their nearest mode's mean (the true value is the mode std, 0.25)."""
    return (x - GMM.means[GMM.responsibilities(x).argmax(1)]).std().item()


@pytest.fixture(scope="module")
def mixture_reference():
    truth, _ = GMM.sample(N_MIX, _gen(10))
    truth2, _ = GMM.sample(N_MIX, _gen(11))
    x_T = torch.randn(N_MIX, 2, generator=_gen(12), dtype=torch.float64)
    # Deliberately wrong baselines: the data shifted by 0.1 (0.4 mode std), and DDIM-50 with an oracle for
    # the cosine schedule driven on the linear one (a schedule mismatch between model and sampler).
    wrong = sampling.ddim_sample(GMM.oracle_model(SCHEDULES["cosine"][0]), x_T, SCHEDULES["linear"][0], steps=50,
                                 progress=False)
    return {"truth": truth, "x_T": x_T, "floor": _mmd(truth, truth2), "wrong": wrong,
            "baselines": {"shifted": _mmd(truth2 + 0.1, truth), "wrong schedule": _mmd(wrong, truth)}}


def _weights_ok(x: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """Mean responsibilities vs the true weights, within 4 binomial standard errors.

    For x ~ mixture, E[p(k|x)] = w_k exactly and Var[p(k|x)] ≤ w_k(1−w_k), so the mean of N responsibilities
    has standard error ≤ √(w(1−w)/N) (≈ 0.0084 for w = 0.3, N = 3000); 4 SE leaves a false-alarm rate of
    ~1e-4 per component while a sampler that gets a mode weight wrong by ≥ 0.035 fails.
    """
    w_hat = GMM.responsibilities(x).mean(0)
    se = (GMM.weights * (1 - GMM.weights) / x.shape[0]).sqrt()
    return bool(((w_hat - GMM.weights).abs() < 4 * se).all()), w_hat


@pytest.mark.parametrize("sampler, name", [("ddpm-1000", "linear"), ("ddim-50", "linear"), ("ddim-50", "cosine"),
                                           ("dpm-solver++-20", "cosine")])
def test_oracle_samplers_reproduce_the_mixture(mixture_reference, sampler, name):
    s = SCHEDULES[name][0]
    model, x_T = GMM.oracle_model(s), mixture_reference["x_T"]
    if sampler == "ddpm-1000":
        x = sampling.ddpm_sample(model, x_T, s, generator=_gen(13), progress=False)
    elif sampler == "ddim-50":
        x = sampling.ddim_sample(model, x_T, s, steps=50, progress=False)
    else:
        x = sampling.dpm_solver_2m_sample(model, x_T, s, steps=20, progress=False)
    ok, w_hat = _weights_ok(x)
    assert ok, (w_hat, GMM.weights)  # observed: all within 2.3 SE
    mmd = _mmd(x, mixture_reference["truth"])
    # MMD² between two true samples of 1500 is ~±1e-3 (the "floor"); observed: DDPM 4e-5, DDIM-50 5e-4
    # (linear) / 2e-4 (cosine), DPM-Solver++-20 2e-4; the wrong baselines give 0.014 (shift) and 0.31.
    worst_allowed = 0.25 * min(mixture_reference["baselines"].values())
    assert mmd < worst_allowed, (mmd, mixture_reference["baselines"], mixture_reference["floor"])
    # The spread inside each mode is right too (SE ≈ 0.003). Few-step samplers end with a jump to x̂₀ from
    # t = T/steps − 1, which shrinks the modes a little (observed 0.233–0.249); the schedule-mismatched
    # baseline gives 0.41 and a sampler collapsing onto the means would give ~0.
    assert _resid_std(x) == pytest.approx(0.25, rel=0.1)


def test_the_mixture_checks_can_fail(mixture_reference):
    """The wrong baselines fail the checks above, so passing them means something."""
    wrong = mixture_reference["wrong"]
    assert mixture_reference["baselines"]["wrong schedule"] > 0.25 * mixture_reference["baselines"]["shifted"]
    assert _resid_std(wrong) > 1.1 * 0.25  # (its mode weights happen to be right: the weights alone would pass)
    x, k = GMM.sample(N_MIX, _gen(20))
    assert not _weights_ok(x[k != 0])[0]  # mode 0 missing: weights off by 0.1
    assert not _weights_ok(torch.cat([x, GMM.means[:1].repeat(N_MIX // 10, 1)]))[0]  # mode 0 over-weighted
    assert abs(mixture_reference["floor"]) < 0.25 * mixture_reference["baselines"]["shifted"]


# --------------------------------------------------------------------------- DDIM inversion
def test_ddim_inversion_reconstructs_with_the_oracle():
    s = SCHEDULES["linear"][0]
    model = GMM.oracle_model(s)
    x0, _ = GMM.sample(500, _gen(3))
    errors = {}
    for steps in (50, 200):
        z = sampling.ddim_invert(model, x0, s, steps=steps, progress=False)
        rec = sampling.ddim_sample(model, z, s, steps=steps, progress=False)
        errors[steps] = (rec - x0).norm(dim=1)
    # Tolerance: the ε̂(current point) approximation errs by O(step) — the median error is first order in
    # 1/steps (observed 0.039 at 50 steps, 0.011 at 200) and small against the mode std 0.25. A few points
    # on the boundary between modes (where the ODE map stretches space most) are not recovered — the
    # 99th percentile at 50 steps is ~0.18 — so we bound quantiles, not the maximum.
    assert errors[50].median() < 0.06 and torch.quantile(errors[50], 0.9) < 0.1
    assert errors[200].median() < 0.35 * errors[50].median()
    # Without the inversion (random noise) a reconstruction is as far away as two random samples.
    rand = sampling.ddim_sample(model, torch.randn(500, 2, generator=_gen(4), dtype=torch.float64), s, steps=50,
                                progress=False)
    assert (rand - x0).norm(dim=1).median() > 1.0


def test_ddim_inversion_maps_the_mixture_to_standard_normal():
    """The probability-flow ODE carries q_0 to q_T ≈ N(0, I): inverted mixture samples look Gaussian."""
    s = SCHEDULES["linear"][0]
    x0, _ = GMM.sample(1000, _gen(5))
    z, traj = sampling.ddim_invert(GMM.oracle_model(s), x0, s, steps=200, progress=False, return_trajectory=True)
    # SE of the mean 0.03, of the variance ≈ 0.045 at N = 1000; the data itself has variance ≈ 2.
    assert z.mean(0).abs().max() < 0.15
    assert ((z.var(0) - 1).abs() < 0.1).all(), z.var(0)
    assert traj["t"][0] == -1 and traj["t"].shape == (200,) and traj["x_t"].shape == (200, 1000, 2)
    assert torch.allclose(traj["x_t"][0], x0.float()) and (traj["t"][1:] > traj["t"][:-1]).all()
    assert torch.allclose(traj["x0_pred"][0], x0.float(), atol=1e-6)  # at the clean end x̂₀ = x


def test_ddim_invert_step_undoes_ddim_step_for_a_constant_eps():
    """With ε̂ independent of x the inversion approximation is exact: invert ∘ ddim_step = id."""
    s = SCHEDULES["cosine"][0]
    x, eps = _fake_model_output((3, 2, 2), 0), _fake_model_output((3, 2, 2), 1)
    up = sampling.ddim_invert_step(x, eps, 100, 400, s)
    assert torch.allclose(sampling.ddim_step(up, eps, 400, 100, s), x, atol=1e-10)
    assert torch.allclose(sampling.ddim_invert_step(x, eps, -1, 0, s),
                          s.alpha_bar[0].sqrt() * x + (1 - s.alpha_bar[0]).sqrt() * eps, atol=1e-12)
    with pytest.raises(ValueError):
        sampling.ddim_invert_step(x, eps, 400, 100, s)  # inversion goes up
    with pytest.raises(ValueError):
        sampling.ddim_invert_step(x, eps, 100, T, s)


# --------------------------------------------------------------------------- determinism
def test_determinism():
    s = SCHEDULES["linear"][0]
    model = GMM.oracle_model(s)
    x_T = torch.randn(100, 2, generator=_gen(0))
    a = sampling.ddpm_sample(model, x_T, s, generator=_gen(1), steps=50, progress=False)
    b = sampling.ddpm_sample(model, x_T, s, generator=_gen(1), steps=50, progress=False)
    c = sampling.ddpm_sample(model, x_T, s, generator=_gen(2), steps=50, progress=False)
    assert torch.equal(a, b)
    assert (a - c).norm(dim=1).mean() > 0.1  # a different generator gives different samples
    d0 = sampling.ddim_sample(model, x_T, s, steps=20, eta=0.0, generator=_gen(1), progress=False)
    d1 = sampling.ddim_sample(model, x_T, s, steps=20, eta=0.0, generator=_gen(2), progress=False)
    assert torch.equal(d0, d1)  # η = 0 ignores the generator: same noise → same image
    e1 = sampling.ddim_sample(model, x_T, s, steps=20, eta=1.0, generator=_gen(1), progress=False)
    e2 = sampling.ddim_sample(model, x_T, s, steps=20, eta=1.0, generator=_gen(1), progress=False)
    e3 = sampling.ddim_sample(model, x_T, s, steps=20, eta=1.0, generator=_gen(2), progress=False)
    assert torch.equal(e1, e2) and not torch.allclose(e1, e3)
    p1 = sampling.dpm_solver_2m_sample(model, x_T, s, steps=10, progress=False)
    assert torch.equal(p1, sampling.dpm_solver_2m_sample(model, x_T, s, steps=10, progress=False))


# --------------------------------------------------------------------------- objectives
class _Wrapped:
    """The oracle re-expressed as an x₀- or v-prediction model."""

    def __init__(self, oracle, schedule, objective):
        self.oracle, self.schedule, self.objective = oracle, schedule, objective

    def __call__(self, x, t):
        eps = self.oracle(x, t)
        x0 = forward.eps_to_x0(x, eps, t, self.schedule)
        return x0 if self.objective == "x0" else forward.v_target(x0, eps, t, self.schedule)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("objective", ["x0", "v"])
def test_objectives_give_the_same_samples(name, objective):
    s = SCHEDULES[name][0]
    oracle = GMM.oracle_model(s)
    model = _Wrapped(oracle, s, objective)
    x_T = torch.randn(50, 2, generator=_gen(0), dtype=torch.float64)
    # Exact conversions in float64: agreement to rounding (≤ 6e-13 observed, at cosine's t = 999 where
    # x̂₀ = (x − √(1−ᾱ) ε)/√ᾱ has √ᾱ ≈ 5e-5).
    for sample, steps in [(sampling.ddim_sample, 25), (sampling.dpm_solver_2m_sample, 10)]:
        ref = sample(oracle, x_T, s, steps=steps, progress=False)
        got = sample(model, x_T, s, steps=steps, progress=False)
        assert torch.allclose(got, ref, atol=1e-9, rtol=0), (got - ref).abs().max()
    model.objective = "score"
    with pytest.raises(ValueError, match="objective"):
        sampling.ddim_sample(model, x_T, s, steps=5, progress=False)


# --------------------------------------------------------------------------- slerp
def test_slerp():
    g = _gen(0)
    a, b = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    assert torch.allclose(sampling.slerp(a, b, 0.0), a, atol=1e-6)
    assert torch.allclose(sampling.slerp(a, b, 1.0), b, atol=1e-6)
    # equal norms → the norm is preserved all along the arc, unlike linear interpolation
    b_eq = b / b.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * a.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    for alpha in (0.25, 0.5, 0.9):
        mid = sampling.slerp(a, b_eq, alpha)
        assert torch.allclose(mid.flatten(1).norm(dim=1), a.flatten(1).norm(dim=1), rtol=1e-5)
    lerp = 0.5 * (a + b_eq)
    assert (lerp.flatten(1).norm(dim=1) < 0.8 * a.flatten(1).norm(dim=1)).all()  # lerp cuts inside the sphere
    # the angle to a grows linearly with alpha
    fa, fb, fm = a.flatten(1), b_eq.flatten(1), sampling.slerp(a, b_eq, 0.3).flatten(1)
    angle = lambda u, v: torch.arccos((u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1)))  # noqa: E731
    assert torch.allclose(angle(fa, fm), 0.3 * angle(fa, fb), atol=1e-4)
    # per-item alphas, and the whole tensor as one vector
    per = sampling.slerp(a, b, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert torch.allclose(per[0], a[0], atol=1e-6) and torch.allclose(per[1], b[1], atol=1e-6)
    whole = sampling.slerp(a, b_eq, 0.5, per_item=False)
    assert whole.shape == a.shape and not torch.allclose(whole, sampling.slerp(a, b_eq, 0.5), atol=1e-3)
    # (anti)parallel inputs fall back to linear interpolation instead of dividing by sin θ = 0
    assert torch.allclose(sampling.slerp(a, 2 * a, 0.5), 1.5 * a, atol=1e-5)
    assert torch.isfinite(sampling.slerp(a, -a, 0.3)).all()
    for bad in [dict(b=b[:2]), dict(alpha=1.5), dict(alpha=torch.tensor([0.1, 0.2]))]:
        with pytest.raises(ValueError):
            sampling.slerp(**{"a": a, "b": b, "alpha": 0.5, **bad})
    with pytest.raises(ValueError):
        sampling.slerp(torch.zeros_like(a), b, 0.5)
    with pytest.raises(TypeError):
        sampling.slerp(a.numpy(), b, 0.5)


# --------------------------------------------------------------------------- errors and trajectories
def test_bad_input_errors():
    s = SCHEDULES["linear"][0]
    model = GMM.oracle_model(s)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="steps"):
        sampling.ddim_sample(model, x, s, steps=T + 1, progress=False)
    with pytest.raises(ValueError, match="spacing"):
        sampling.ddim_sample(model, x, s, steps=10, spacing="uniform", progress=False)
    with pytest.raises(ValueError, match="eta"):
        sampling.ddim_sample(model, x, s, steps=10, eta=-0.5, progress=False)
    with pytest.raises(ValueError, match="cond"):
        sampling.ddim_sample(model, x, s, steps=10, cond=torch.zeros(3, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="steps"):
        sampling.dpm_solver_2m_sample(model, x, s, steps=0, progress=False)
    with pytest.raises(ValueError, match="spacing"):
        sampling.dpm_solver_2m_sample(model, x, s, spacing="karras", progress=False)
    with pytest.raises(ValueError, match="cond"):
        sampling.dpm_solver_2m_sample(model, x, s, cond=torch.zeros(5, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="steps"):
        sampling.ddim_invert(model, x, s, steps=T + 1, progress=False)
    with pytest.raises(ValueError, match="x0"):
        sampling.ddim_invert(model, torch.randn(2), s, progress=False)
    with pytest.raises(ValueError, match="shape"):
        sampling.ddim_step(x, torch.randn(4, 3), 10, 5, s)
    with pytest.raises(ValueError, match=r"\(B,\)"):  # a per-item t of the wrong batch size
        sampling.ddim_step(x, x, torch.tensor([10, 10, 10]), 5, s)
    with pytest.raises(TypeError):
        sampling.ddpm_step(x, x, 10.0, 5, s)
    with pytest.raises(ValueError, match="t_prev"):
        sampling.ddpm_step(x, x, 10, 10, s)


def test_dpm_solver_trajectory_and_cond():
    s = SCHEDULES["cosine"][0]
    model = GMM.oracle_model(s)
    x_T = torch.randn(8, 1, 1, 2, generator=_gen(0))  # image-shaped items work too
    x, traj = sampling.dpm_solver_2m_sample(model, x_T, s, steps=6, cond=torch.zeros(8, dtype=torch.long),
                                            progress=False, return_trajectory=True)
    assert x.shape == x_T.shape and x.dtype == torch.float32
    assert traj["t"].tolist() == sampling.timesteps(T, 6, "trailing").tolist()
    assert traj["x_t"].shape == (6, 8, 1, 1, 2) and traj["x0_pred"].shape == (6, 8, 1, 1, 2)
    assert torch.allclose(x, traj["x0_pred"][-1])  # the last step returns x̂₀
    # clip_denoised keeps every x̂₀ in [−1, 1] (the mixture's modes sit at radius 2)
    clipped = sampling.dpm_solver_2m_sample(model, x_T, s, steps=6, clip_denoised=True, progress=False)
    assert clipped.abs().max() <= 1 + 1e-6 and x.abs().max() > 1.2
    assert math.isfinite(float(clipped.sum()))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_zero_terminal_snr_with_v_prediction_is_finite(sampler):
    """At ᾱ_T = 0 x̂₀ cannot come from ε̂; the samplers must use the model's own x̂₀ (v-prediction)."""
    from diffusion_course.schedules import NoiseSchedule

    s = NoiseSchedule.cosine(1000).rescale_zero_terminal_snr()
    assert s.alpha_bar[-1].item() == 0.0
    mix = GMM

    class VModel:
        objective = "v"

        def __call__(self, x, t, cond=None):
            ab = s.alpha_bar[t].reshape(-1, 1)
            x0 = mix.posterior_mean_x0(x.double(), t, s)
            eps = mix.eps_t(x.double(), t, s) if ab.min() > 0 else torch.zeros_like(x0)
            eps = torch.where(ab > 0, eps, x.double())  # at ᾱ = 0, x_t is pure noise: ε = x_t
            return (ab.sqrt() * eps - (1 - ab).sqrt() * x0).to(x.dtype)

    x_T = torch.randn(2000, 2, generator=_gen(11), dtype=torch.float64)
    if sampler == "ddim":
        out = sampling.ddim_sample(VModel(), x_T, s, steps=50, progress=False)
    else:
        out = sampling.ddpm_sample(VModel(), x_T, s, steps=100, generator=_gen(12), progress=False)
    assert torch.isfinite(out).all()
    truth, _ = mix.sample(2000, generator=_gen(13))
    assert (out.mean(0) - truth.mean(0)).abs().max() < 0.15
