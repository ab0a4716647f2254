"""Chapter 6's continuous-time machinery, checked against closed forms and exact Gaussian-mixture scores."""
import math

import pytest
import torch

from diffusion_course import gmm, schedules, sde
from diffusion_course.nn import MLPDenoiser

torch.set_num_threads(1)

RING = gmm.GaussianMixture.ring(k=4, radius=2.0, std=0.25, weights=torch.tensor([0.4, 0.1, 0.3, 0.2]))
COSINE = schedules.NoiseSchedule.cosine(1000)


def _sdes():
    return {"vp": sde.VPSDE(), "ve": sde.VESDE(sigma_min=0.01, sigma_max=20.0), "discrete": sde.DiscreteVPSDE(COSINE)}


def _g(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- marginals
def test_vp_marginal_matches_integral_of_beta():
    vp = sde.VPSDE(0.1, 20.0)
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    grid = torch.linspace(0, 1, 200001, dtype=torch.float64)
    x0 = torch.ones(4, 3, dtype=torch.float64)
    mean, std = vp.marginal(x0, t)
    for j, tj in enumerate(t.tolist()):
        g = grid[grid <= tj]
        integral = torch.trapezoid(vp.beta(g), g)               # ∫β, independent of the closed form
        assert mean[j, 0].item() == pytest.approx(math.exp(-0.5 * integral.item()), rel=1e-6)
        assert std[j, 0].item() ** 2 == pytest.approx(1 - math.exp(-integral.item()), rel=1e-5)
    assert std.shape == (4, 1)


def test_ve_marginal_closed_form():
    ve = sde.VESDE(0.01, 50.0)
    t = torch.tensor([0.25, 1.0], dtype=torch.float64)
    mean, std = ve.marginal(torch.full((2, 2), 3.0, dtype=torch.float64), t)
    assert torch.equal(mean, torch.full((2, 2), 3.0, dtype=torch.float64))
    expected = (0.01**2 * ((50 / 0.01) ** (2 * t) - 1)).sqrt()  # ∫ g² = σ(t)² − σ_min²
    torch.testing.assert_close(std.squeeze(1), expected)


def test_discrete_vp_passes_through_the_schedule():
    d = sde.DiscreteVPSDE(COSINE)
    i = torch.tensor([0, 1, 10, 500, 998, 999])
    t = (i + 1).double() / 1000
    a, s = d.alpha_sigma(t)
    torch.testing.assert_close(a**2, COSINE.alpha_bar[i], rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(s**2, 1 - COSINE.alpha_bar[i], rtol=1e-9, atol=1e-15)
    # β(t) integrates to −log ᾱ: α(t) = exp(−½ ∫β) off the grid too
    tq = torch.tensor([0.3337], dtype=torch.float64)
    grid = torch.linspace(1e-9, 0.3337, 400001, dtype=torch.float64)
    integral = torch.trapezoid(d.beta(grid), grid)
    assert d.alpha_sigma(tq)[0].item() == pytest.approx(math.exp(-0.5 * integral.item()), rel=1e-3)
    assert d.t_min == pytest.approx(1e-3)


@pytest.mark.parametrize("name", ["vp", "ve", "discrete"])
def test_marginals_match_simulated_forward_paths(name):
    s = _sdes()[name]
    n, steps = 4000, 2000
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    x, g = x0.clone(), _g(0)
    ts = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    # the cosine schedule's last 2 % of t has β(t) ≳ 100 (β_999 capped at 0.999 gives β(t) ≈ 6900): explicit
    # Euler–Maruyama needs β·dt ≪ 1, so the discrete process is checked at t = 0.5 and 0.98
    checks = {1000, 1960} if name == "discrete" else {1000, 2000}
    for k in range(steps):
        tt = torch.full((n,), max(ts[k].item(), 1e-9), dtype=torch.float64)
        dt = (ts[k + 1] - ts[k]).item()
        x = x + s.drift(x, tt) * dt + s.diffusion(tt)[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=g,
                                                                                             dtype=torch.float64)
        if k + 1 in checks:
            mean, std = s.marginal(x0[:1], ts[k + 1].reshape(1))
            scale = std.item()
            assert x.mean().item() == pytest.approx(mean.item(), abs=4 * scale / math.sqrt(n) + 0.01 * scale)
            assert x.std().item() == pytest.approx(scale, rel=0.05)


def test_prior_logp_is_the_normal_density():
    for s in _sdes().values():
        z = s.prior_sample((5, 3), generator=_g(1), dtype=torch.float64)
        ref = torch.distributions.Normal(0.0, s.prior_std()).log_prob(z).sum(1)
        torch.testing.assert_close(s.prior_logp(z), ref)


# --------------------------------------------------------------------------- score_from_eps
def test_score_from_eps_matches_the_discrete_schedule():
    oracle = RING.oracle_model(COSINE)
    score = sde.score_from_eps(oracle, COSINE, time="nearest")
    x = torch.randn(6, 2, generator=_g(2), dtype=torch.float64)
    i = torch.tensor([0, 3, 100, 500, 900, 999])
    t = (i + 1).double() / 1000
    got = score(x, t)
    torch.testing.assert_close(got, RING.score_t(x, i, COSINE))                 # the discrete-time exact score
    torch.testing.assert_close(got, RING.sde_score(score.sde)(x, t))             # = the SDE's exact score
    torch.testing.assert_close(got, -oracle(x, i) / (1 - COSINE.alpha_bar[i]).sqrt()[:, None])
    # off the grid the score is the exact one of the interpolated process within the rounding of t
    toff = torch.full((6,), 0.4004, dtype=torch.float64)
    torch.testing.assert_close(score(x, toff), RING.sde_score(score.sde)(x, toff), rtol=2e-2, atol=2e-2)


def test_score_from_eps_fractional_time_feeds_the_network_real_indices():
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, hidden=16, depth=2).double()
    score = sde.score_from_eps(net, COSINE)
    x = torch.randn(3, 2, generator=_g(3), dtype=torch.float64)
    i = torch.tensor([0, 499, 999])
    with torch.no_grad():
        torch.testing.assert_close(score(x, (i + 1).double() / 1000),
                                   -net(x, i) / (1 - COSINE.alpha_bar[i]).sqrt()[:, None])
        t = torch.tensor([0.2505, 0.2505, 0.2505], dtype=torch.float64)
        _, sig = score.sde.alpha_sigma(t)
        torch.testing.assert_close(score(x, t), -net(x, t * 1000 - 1) / sig[:, None])
    assert score.nfe == 2


# --------------------------------------------------------------------------- samplers on the exact score
def _reproduces_mixture(samples, n):
    samples = samples.double()
    assert torch.isfinite(samples).all()
    resp = RING.responsibilities(samples)
    w = resp.mean(0)
    se = (RING.weights * (1 - RING.weights) / n).sqrt()
    assert ((w - RING.weights).abs() < 4 * se + 0.01).all(), (w, RING.weights)
    truth, _ = RING.sample(20000, generator=_g(99))
    spread = samples.std(0) / truth.std(0)
    assert ((spread - 1).abs() < 0.10).all(), spread
    # within-component spread: distance to the assigned mean vs the component std
    k = resp.argmax(1)
    within = (samples - RING.means[k]).pow(2).mean().sqrt() / RING.stds[k].mean()
    assert 0.85 < within < 1.15, within


@pytest.mark.parametrize("name", ["vp", "ve", "discrete"])
def test_samplers_with_the_exact_score_reproduce_the_mixture(name):
    s = _sdes()[name]
    score = RING.sde_score(s)
    n = 2000
    x_T = s.prior_sample((n, 2), generator=_g(4), dtype=torch.float64)
    _reproduces_mixture(sde.euler_maruyama(score, x_T, s, 250, generator=_g(5)), n)
    _reproduces_mixture(sde.predictor_corrector(score, x_T, s, 100, generator=_g(6)), n)
    x0, nfe = sde.probability_flow(score, x_T, s, method="rk45", rtol=1e-5, atol=1e-5)
    _reproduces_mixture(x0, n)
    assert 20 < nfe < 2000
    x0h, nfe_h = sde.probability_flow(score, x_T, s, method="heun", steps=100)
    assert nfe_h == 200
    _reproduces_mixture(x0h, n)
    # same ODE, same start: the same samples (a few start on a separatrix between modes, hence the median)
    assert (x0h - x0).norm(dim=1).median() < 0.01


def test_annealed_langevin_reproduces_the_mixture_but_plain_langevin_does_not_mix():
    ve = sde.VESDE(sigma_min=0.01, sigma_max=5.0)
    score = RING.sde_score(ve)
    n = 2000
    x = ve.prior_sample((n, 2), generator=_g(7), dtype=torch.float64)
    _reproduces_mixture(sde.annealed_langevin(score, x, ve, levels=10, steps_per_level=100, eps=2e-5,
                                              generator=_g(8)), n)
    # plain Langevin on the clean density, started in one mode, stays there: the weights come out wrong
    start = RING.means[1].repeat(n, 1) + 0.1 * torch.randn(n, 2, generator=_g(9), dtype=torch.float64)
    out = sde.langevin(RING.score, start, step_size=0.01, steps=300, generator=_g(10))
    w = RING.responsibilities(out).mean(0)
    assert w[1] > 0.9 and RING.weights[1] == pytest.approx(0.1)


def test_langevin_samples_a_gaussian():
    g = gmm.GaussianMixture(torch.zeros(1, 2), torch.tensor([1.0]))
    x = torch.zeros(4000, 2, dtype=torch.float64)
    out = sde.langevin(g.score, x, step_size=0.01, steps=500, generator=_g(11))
    assert out.var(0).tolist() == pytest.approx([1.0, 1.0], abs=0.08)


# --------------------------------------------------------------------------- ODE solver and likelihood
def test_adaptive_solver_on_an_ode_with_known_solution():
    x0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)

    def v(x, t):                                   # dx/dt = cos(t)·x → x(t) = x0 exp(sin t − sin t0)
        return torch.cos(t)[:, None] * x

    exact = x0 * math.exp(math.sin(2.0) - math.sin(0.0))
    x, nfe = sde.solve_ode(v, x0, 0.0, 2.0, method="rk45", rtol=1e-8, atol=1e-8)
    assert (x - exact).abs().max() < 1e-6 and nfe > 6
    back, _ = sde.solve_ode(v, exact, 2.0, 0.0, method="rk45", rtol=1e-8, atol=1e-8)
    assert (back - x0).abs().max() < 1e-6
    errs = {m: [(sde.solve_ode(v, x0, 0.0, 2.0, method=m, steps=k)[0] - exact).abs().max().item() for k in (20, 40)]
            for m in ("euler", "heun")}
    assert 1.7 < errs["euler"][0] / errs["euler"][1] < 2.3     # first order
    assert 3.4 < errs["heun"][0] / errs["heun"][1] < 4.6       # second order


@pytest.mark.parametrize("name", ["vp", "discrete"])
def test_ode_likelihood_of_the_mixture_equals_its_log_density(name):
    s = _sdes()[name]
    score = RING.sde_score(s)
    x, _ = RING.sample(64, generator=_g(12))
    logp = sde.log_likelihood(score, x, s, exact_trace=True, rtol=1e-5, atol=1e-5)
    # tolerance: 0.01 nats mean, 0.05 worst case (against the clean density; the t_min blur is far below that)
    err = (logp - RING.log_prob(x)).abs()
    assert err.mean() < 0.01 and err.max() < 0.05, err


def test_hutchinson_is_unbiased():
    A = torch.randn(5, 5, generator=_g(13), dtype=torch.float64)

    def f(x):                                   # ∇·f = tr(A) + Σ 3x²  (nonlinear, known)
        return x @ A.T + x.pow(3)

    x = torch.randn(3, 5, generator=_g(14), dtype=torch.float64)
    exact = torch.diagonal(A).sum() + 3 * x.pow(2).sum(1)
    _, div = sde.divergence(f, x)
    torch.testing.assert_close(div, exact)
    for probe in sde.PROBES:
        probes = sde.draw_probes(x.shape, 3000, probe, _g(15), x)
        _, est = sde.hutchinson_divergence(f, x, probes)
        spread = (A + A.T).pow(2).sum().sqrt()     # bounds the per-probe standard deviation (for J = A + diag)
        assert (est - exact).abs().max() < 4 * spread / math.sqrt(3000) * 2, (probe, est, exact)
        _, one = sde.hutchinson_divergence(f, x, probes[:1])
        assert not torch.allclose(one, exact)      # one probe is an estimate, not the trace


def test_hutchinson_likelihood_agrees_with_exact_on_average():
    s = sde.VPSDE()
    score = RING.sde_score(s)
    x, _ = RING.sample(16, generator=_g(16))
    exact = sde.log_likelihood(score, x, s, exact_trace=True, rtol=1e-5, atol=1e-5)
    for probe in sde.PROBES:
        diff = sde.log_likelihood(score, x, s, probes=8, probe=probe, generator=_g(17), rtol=1e-5, atol=1e-5) - exact
        assert diff.abs().max() > 1e-4                                # an estimate ...
        assert diff.mean().abs() < 3 * diff.std() / 4 + 1e-3          # ... without bias (16 samples)
        assert diff.std() < 2.0                                       # 8 probes: spread ≈ 0.7 nats


def _gaussian_score(std):
    """Data N(0, std² I): the exact score at every t is −x/(α² std² + σ²)."""
    def score(x, t, s):
        a, sig = s.alpha_sigma(t)
        var = (a**2 * std**2 + sig**2).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return -x / var
    return score


def test_bits_per_dim_of_a_gaussian_model_is_closed_form():
    s = sde.VPSDE()
    std = 0.5
    score = _gaussian_score(std)
    x = (torch.randn(4, 1, 4, 4, generator=_g(18), dtype=torch.float64) * std).clamp(-1, 1)
    x = ((x + 1) * 127.5).round() / 127.5 - 1                       # 8-bit values
    bpd = sde.bits_per_dim(lambda y, t: score(y, t, s), x, s, exact_trace=True, generator=_g(19), rtol=1e-6,
                           atol=1e-6)
    xt = sde.dequantize(x, _g(19))                                  # the same dequantisation noise
    a, sig = s.alpha_sigma(torch.tensor([s.t_min], dtype=torch.float64))
    var = (a**2 * std**2 + sig**2).item()
    logp = torch.distributions.Normal(0.0, math.sqrt(var)).log_prob(xt).flatten(1).sum(1)
    expected = -logp / (16 * math.log(2)) + math.log2(127.5)
    torch.testing.assert_close(bpd, expected, rtol=0, atol=1e-4)
    # the "[0, 255] offset": log2(127.5) bits per dimension are the Jacobian of x ∈ [-1, 1] → y ∈ [0, 255]
    assert sde.nats_to_bits_per_dim(torch.zeros(1), 16).item() == pytest.approx(math.log2(127.5))


def test_ddpm_elbo_bounds_the_exact_discrete_likelihood():
    std = 0.5

    def eps_model(x, t):                      # the exact ε* for data N(0, std²): √(1−ᾱ) x / (ᾱ std² + 1 − ᾱ)
        ab = COSINE.alpha_bar[t].reshape(-1, 1, 1, 1).to(x.dtype)
        return (1 - ab).sqrt() * x / (ab * std**2 + 1 - ab)

    n = torch.distributions.Normal(0.0, std)
    # 8-bit data drawn from the discretised Gaussian itself, so its entropy is the exact NLL below
    x = ((torch.randn(64, 1, 4, 4, generator=_g(20)) * std).clamp(-1, 1) + 1) * 127.5
    x = x.round() / 127.5 - 1
    full = sde.ddpm_elbo_bpd(eps_model, x, COSINE, timesteps=None, generator=_g(21))
    up = torch.where(x > 0.999, torch.ones_like(x), n.cdf(x + 1 / 255))
    lo = torch.where(x < -0.999, torch.zeros_like(x), n.cdf(x - 1 / 255))
    exact = -(up - lo).log().flatten(1).sum(1) / (16 * math.log(2))
    gap = full - exact
    se = gap.std() / 8
    assert gap.mean() > -3 * se                         # a bound on average (cross-entropy ≥ entropy) ...
    # ... and not a vacuous one for the exact model (measured ≈ 0.75 bits: the fixed β̃ variances and the
    # decoder's √β̃_1 = 0.005 against the bin half-width 0.004 cost that much even with the exact ε*)
    assert gap.mean() < 1.0
    # the stratified estimate of the sum is unbiased: its mean over draws matches the full sum
    est = torch.stack([sde.ddpm_elbo_bpd(eps_model, x, COSINE, timesteps=20, generator=_g(30 + k)) for k in range(4)])
    d = est.mean(0) - full
    assert d.mean().abs() < 3 * d.std() / 8 + 1e-3


def test_independent_pixel_baseline():
    train = torch.full((10, 1, 2, 2), -1.0)
    train[5:] = 1.0
    bpd = sde.independent_pixel_bpd(train, train[:1], pseudo_count=1e-9)
    assert bpd.item() == pytest.approx(1.0, abs=1e-6)   # each pixel: two equally likely values → 1 bit


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    vp = sde.VPSDE()
    x = torch.zeros(2, 2)
    score = RING.sde_score(vp)
    with pytest.raises(ValueError, match=r"t must lie in \(0, 1\]"):
        vp.marginal(x, torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match=r"t must lie in \(0, 1\]"):
        vp.marginal(x, torch.tensor([0.5, 1.5]))
    with pytest.raises(TypeError, match="t must be a float tensor"):
        vp.marginal(x, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)=\(2,\)"):
        vp.marginal(x, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="method must be one of"):
        sde.probability_flow(score, x, vp, method="rk4")
    with pytest.raises(ValueError, match="steps must be None"):
        sde.probability_flow(score, x, vp, method="rk45", steps=10)
    with pytest.raises(ValueError, match="needs steps"):
        sde.probability_flow(score, x, vp, method="heun")
    with pytest.raises(ValueError, match="rtol must be a positive"):
        sde.probability_flow(score, x, vp, rtol=0)
    with pytest.raises(ValueError, match="atol must be a positive"):
        sde.log_likelihood(score, x, vp, atol=-1e-3)
    with pytest.raises(ValueError, match="probe must be one of"):
        sde.log_likelihood(score, x, vp, probe="sphere")
    with pytest.raises(ValueError, match="probes must be a positive int"):
        sde.log_likelihood(score, x, vp, probes=0)
    with pytest.raises(ValueError, match=r"images in \[-1, 1\]"):
        sde.bits_per_dim(score, torch.full((1, 1, 2, 2), 2.0), vp)
    with pytest.raises(ValueError, match=r"images in \[-1, 1\]"):
        sde.ddpm_elbo_bpd(RING.oracle_model(COSINE), torch.full((1, 1, 2, 2), 255.0), COSINE)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        sde.euler_maruyama(score, x, vp, 0)
    with pytest.raises(ValueError, match="snr must be a positive"):
        sde.predictor_corrector(score, x, vp, 10, snr=0)
    with pytest.raises(TypeError, match="sde must be"):
        sde.euler_maruyama(score, x, "vp", 10)
    with pytest.raises(TypeError, match="runs on a VESDE"):
        sde.annealed_langevin(score, x, vp)
    with pytest.raises(ValueError, match="beta_min"):
        sde.VPSDE(beta_min=-1)
    with pytest.raises(ValueError, match="sigma_min"):
        sde.VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="time must be 'fractional' or 'nearest'"):
        sde.score_from_eps(RING.oracle_model(COSINE), COSINE, time="round")
    with pytest.raises(ValueError, match="t_max must be in"):
        sde.log_likelihood(score, x, vp, t_max=1.5)


def test_logsnr_time_grid_takes_equal_log_snr_steps_and_rescues_euler_maruyama_on_the_cosine_schedule():
    s = sde.DiscreteVPSDE(schedules.NoiseSchedule.cosine(1000))
    uniform = sde.time_grid(s, 30)
    assert uniform[0] == 1.0 and uniform[-1] == s.t_min and len(uniform) == 31
    grid = sde.time_grid(s, 30, spacing="logsnr")
    assert grid[0] == 1.0 and grid[-1] == s.t_min and all(a > b for a, b in zip(grid, grid[1:]))
    alpha, sigma = s.alpha_sigma(torch.tensor(grid, dtype=torch.float64))
    lam = 2 * (alpha.log() - sigma.log())
    steps = lam.diff()
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-3)      # equal steps in λ
    assert grid[1] > 0.999                                                      # short steps where β(t) is huge
    # the sampler that uses it: EM's first of 30 equal t-steps spans the last segment, where β(t) ≈ 7000, and throws
    # the state ~100× out (the drift factor 1 − βΔt/2 < 0); an exact score recovers, a learned ε-model on images does
    # not (chapter 6 shows it). Equal log-SNR steps keep every state of the same size as the data's noise.
    score, n = RING.sde_score(s), 2000
    x_T = s.prior_sample((n, 2), generator=_g(40), dtype=torch.float64)
    _, bad = sde.euler_maruyama(score, x_T, s, 30, generator=_g(41), return_trajectory=True)
    good, traj = sde.euler_maruyama(score, x_T, s, 30, generator=_g(41), spacing="logsnr", return_trajectory=True)
    assert bad[1].abs().max() > 50 * x_T.abs().max()
    assert traj.abs().max() < 2 * x_T.abs().max()
    truth, _ = RING.sample(20000, generator=_g(42))
    assert ((good.std(0) / truth.std(0) - 1).abs() < 0.1).all()
    heun, nfe = sde.probability_flow(score, x_T, s, method="heun", steps=20, spacing="logsnr")
    assert nfe == 40 and ((heun.std(0) / truth.std(0) - 1).abs() < 0.1).all()
    with pytest.raises(ValueError, match="spacing"):
        sde.time_grid(s, 10, spacing="karras")
    with pytest.raises(ValueError, match="steps"):
        sde.time_grid(s, 0, spacing="logsnr")


# --------------------------------------------------------------------------- clipping, input complexity, OOD digits
def test_score_from_eps_clip_x0_is_ddpm_clip_denoised():
    from diffusion_course import sampling

    def eps_model(x, t):                      # an ε whose implied x̂₀ leaves [−1, 1] at every noise level
        return torch.sin(3 * x) - 0.5 * x + 1e-3 * t.to(x.dtype).reshape(-1, 1, 1, 1)

    x = 1.5 * torch.randn(4, 1, 6, 6, generator=_g(50), dtype=torch.float64)
    clipped = sde.score_from_eps(eps_model, COSINE, clip_x0=True)
    plain = sde.score_from_eps(eps_model, COSINE)
    for i in (0, 300, 800, 999):
        t = torch.full((4,), (i + 1) / 1000, dtype=torch.float64)      # exactly the discrete index i
        ti = torch.full((4,), i, dtype=torch.long)
        sigma = (1 - COSINE.alpha_bar[i]).sqrt().item()
        eps_ref, x0_ref = sampling.predict_eps_x0(eps_model, x, ti, COSINE, clip_denoised=True)
        _, x0_raw = sampling.predict_eps_x0(eps_model, x, ti, COSINE)
        assert x0_raw.abs().max() > 1.2                                 # so the clip really bites
        torch.testing.assert_close(-sigma * clipped(x, t), eps_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(-sigma * plain(x, t), eps_model(x, ti.double()), rtol=1e-9, atol=1e-9)
    # every sampler accepts the clipped score; the samples' denoised estimates stay in range
    out = sde.euler_maruyama(clipped, torch.randn(2, 1, 6, 6, generator=_g(51), dtype=torch.float64),
                             clipped.sde, 10, generator=_g(52), spacing="logsnr")
    assert out.shape == (2, 1, 6, 6) and torch.isfinite(out).all()
    with pytest.raises(TypeError, match="clip_x0"):
        sde.score_from_eps(eps_model, COSINE, clip_x0="yes")


def test_compressed_bpd_orders_images_by_complexity():
    g = _g(60)
    constant = torch.zeros(3, 1, 28, 28)
    smooth = torch.nn.functional.interpolate(torch.rand(3, 1, 4, 4, generator=g) * 2 - 1, size=(28, 28),
                                             mode="bilinear", align_corners=False)
    noise = torch.randint(0, 256, (3, 1, 28, 28), generator=g).float() / 127.5 - 1
    for codec in sde.CODECS:
        c, s_, n = (sde.compressed_bpd(v, codec) for v in (constant, smooth, noise))
        assert c.shape == (3,) and c.dtype == torch.float32
        assert (c < s_.min()).all() and (s_ < n.min()).all()
        assert (n > 7.5).all() and (c < 1.5).all()                  # noise is incompressible: about a byte a pixel
        assert torch.equal(sde.compressed_bpd(smooth, codec), s_)  # deterministic
    rgb = sde.compressed_bpd(torch.zeros(2, 3, 8, 8))
    assert rgb.shape == (2,) and (rgb > 0).all()
    with pytest.raises(ValueError, match="codec"):
        sde.compressed_bpd(constant, "jpeg")
    with pytest.raises(ValueError, match="channels"):
        sde.compressed_bpd(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        sde.compressed_bpd(torch.full((1, 1, 8, 8), 3.0))


def _no_mnist(monkeypatch, tmp_path):
    from diffusion_course import data

    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    monkeypatch.setitem(data._SOURCES, "mnist", {"system": [tmp_path / "nowhere"], "urls": []})
    monkeypatch.setattr(data, "_cache", {})      # restored afterwards: nothing fake stays cached
    return data


def test_load_ood_digits_falls_back_to_sklearn_digits_offline(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    data = _no_mnist(monkeypatch, tmp_path)
    x, source = data.load_ood_digits(40, seed=3)
    assert source == data.OOD_DIGIT_SOURCES[1] and "scikit-learn" in source
    assert x.shape == (40, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.max() > 0.5             # ink reaches near white
    k = (x + 1) * 127.5
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-4)          # on the 8-bit grid, like the loaders
    assert (x[..., :4, :] == -1).all() and (x[..., :, -4:] == -1).all()  # a black border, as in MNIST's layout
    again, _ = data.load_ood_digits(40, seed=3)
    other, _ = data.load_ood_digits(40, seed=4)
    assert torch.equal(x, again) and not torch.equal(x, other)
    with pytest.raises(ValueError, match="n must be at most 1797"):
        data.load_ood_digits(5000)
    with pytest.raises(ValueError, match="n"):
        data.load_ood_digits(0)


def test_load_ood_digits_prefers_mnist_when_on_disk(tmp_path, monkeypatch):
    import struct

    data = _no_mnist(monkeypatch, tmp_path)
    folder = tmp_path / "mnist"
    folder.mkdir()
    pixels = torch.randint(0, 256, (10000, 28, 28), generator=_g(70), dtype=torch.uint8)
    (folder / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", 10000, 28, 28)
                                                     + pixels.numpy().tobytes())
    (folder / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 10000)
                                                     + bytes(i % 10 for i in range(10000)))
    x, source = data.load_ood_digits(16, seed=0)
    assert source == "MNIST" == data.OOD_DIGIT_SOURCES[0]
    idx = torch.randperm(10000, generator=torch.Generator().manual_seed(0))[:16]
    torch.testing.assert_close(x[:, 0], pixels[idx].float() / 127.5 - 1)
