"""Gaussian mixtures: densities, scores and the exactly-noised mixture, against independent computations."""
import math

import pytest
import torch

from diffusion_course import forward, gmm
from diffusion_course.gmm import GaussianMixture, OracleModel
from diffusion_course.schedules import NoiseSchedule

LIN, COS = NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _diag_mixture():
    """Three anisotropic (diagonal) 2-D components with unequal weights."""
    return GaussianMixture(means=[[-2.0, 0.5], [1.0, 1.5], [0.5, -2.0]],
                           stds=[[0.3, 0.8], [0.6, 0.4], [1.0, 0.5]], weights=[0.5, 0.3, 0.2])


def _trapezoid(y: torch.Tensor, dx: float, dim: int = -1) -> torch.Tensor:
    return torch.trapezoid(y, dx=dx, dim=dim)


# --------------------------------------------------------------------------- density
def test_log_prob_normalises():
    g1 = GaussianMixture.bimodal(separation=3.0, std=0.7, weight=0.3)
    x = torch.linspace(-20, 20, 40001, dtype=torch.float64)
    assert _trapezoid(g1.log_prob(x[:, None]).exp(), dx=float(x[1] - x[0])).item() == pytest.approx(1, abs=1e-9)
    # a 2-D diagonal mixture on a grid
    g2 = _diag_mixture()
    u = torch.linspace(-9, 9, 721, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), dim=-1).reshape(-1, 2)
    dens = g2.log_prob(grid).exp().reshape(721, 721)
    du = float(u[1] - u[0])
    assert _trapezoid(_trapezoid(dens, du), du).item() == pytest.approx(1, abs=1e-6)


def test_log_prob_matches_torch_distributions():
    g = _diag_mixture()
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=g.weights),
        torch.distributions.Independent(torch.distributions.Normal(g.means, g.stds), 1))
    x = torch.randn(200, 2, generator=_gen(0), dtype=torch.float64) * 3
    assert torch.allclose(g.log_prob(x), ref.log_prob(x), atol=1e-10)
    # isotropic stds given as (K,) are broadcast over dimensions
    iso = GaussianMixture([[0.0, 0.0], [3.0, 1.0]], [0.5, 1.5], [0.4, 0.6])
    ref_iso = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=iso.weights),
        torch.distributions.Independent(torch.distributions.Normal(iso.means, torch.tensor([[0.5], [1.5]])), 1))
    assert torch.allclose(iso.log_prob(x), ref_iso.log_prob(x.double()), atol=1e-10)


def test_score_is_the_gradient_of_log_prob():
    g = _diag_mixture()
    x = (torch.randn(100, 2, generator=_gen(1), dtype=torch.float64) * 3).requires_grad_(True)
    (grad,) = torch.autograd.grad(g.log_prob(x).sum(), x)
    assert torch.allclose(g.score(x.detach()), grad, atol=1e-10)


def test_far_from_every_mode_stays_finite():
    """log-sum-exp keeps responsibilities and scores finite where every density underflows to 0."""
    g = _diag_mixture()
    x = torch.tensor([[1e3, 0.0], [-500.0, 800.0]], dtype=torch.float64)
    assert torch.isfinite(g.log_prob(x)).all() and (g.log_prob(x) < -1e5).all()
    r = g.responsibilities(x)
    assert torch.isfinite(r).all() and torch.allclose(r.sum(1), torch.ones(2, dtype=torch.float64))
    score = g.score(x)
    k = r.argmax(1)
    # so far out, one component dominates and the score is its Gaussian score −(x − μ_k)/σ_k²
    assert torch.allclose(score, -(x - g.means[k]) / g.variances[k], rtol=1e-6)


def test_sampling_and_responsibilities():
    g = GaussianMixture.ring(k=6, radius=3.0, std=0.3, weights=[0.05, 0.1, 0.15, 0.2, 0.2, 0.3])
    n = 20_000
    x, k = g.sample(n, _gen(2))
    assert x.shape == (n, 2) and x.dtype == torch.float64 and k.shape == (n,) and k.dtype == torch.long
    freq = torch.bincount(k, minlength=6).double() / n
    se = (g.weights * (1 - g.weights) / n).sqrt()
    assert ((freq - g.weights).abs() < 4 * se).all()
    # each point sits around its own component: mean μ_k, std σ_k
    for j in range(6):
        pts = x[k == j]
        assert torch.allclose(pts.mean(0), g.means[j], atol=5 * 0.3 / math.sqrt(len(pts)))
        assert pts.std(0).tolist() == pytest.approx([0.3, 0.3], rel=0.1)
    r = g.responsibilities(x)
    assert torch.allclose(r.sum(1), torch.ones(n, dtype=torch.float64))
    assert (r.argmax(1) == k).double().mean() > 0.999  # well-separated modes: Bayes recovers the label
    assert ((r.mean(0) - g.weights).abs() < 4 * se).all()  # E[p(k|x)] = w_k
    # the same generator gives the same sample; another gives another
    assert torch.equal(g.sample(10, _gen(3))[0], g.sample(10, _gen(3))[0])
    assert not torch.equal(g.sample(10, _gen(3))[0], g.sample(10, _gen(4))[0])
    assert g.sample(0)[0].shape == (0, 2)


def test_moments_and_constructors():
    g = _diag_mixture()
    x, _ = g.sample(200_000, _gen(5))
    assert torch.allclose(x.mean(0), g.mean(), atol=0.02)  # SE ≈ 0.004
    assert torch.allclose(torch.cov(x.T), g.covariance(), atol=0.05)  # SE ≈ 0.01
    ring = GaussianMixture.ring(k=8, radius=2.5, std=0.1)
    assert torch.allclose(ring.means.norm(dim=1), torch.full((8,), 2.5, dtype=torch.float64))
    assert torch.allclose(ring.weights, torch.full((8,), 1 / 8, dtype=torch.float64))
    assert torch.allclose(ring.mean(), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    bi = GaussianMixture.bimodal(separation=4.0, std=0.5, weight=0.25, dim=3)
    assert bi.dim == 3 and bi.K == 2 and bi.means[:, 0].tolist() == [-2.0, 2.0]
    assert bi.weights.tolist() == [0.25, 0.75] and bi.mean().tolist() == [1.0, 0.0, 0.0]


# --------------------------------------------------------------------------- the noised mixture
def test_noised_density_is_the_convolution():
    """Eq. (1) against brute force: q_t(y) = ∫ p(x) N(y; √ᾱ x, 1−ᾱ) dx on a 1-D grid."""
    g = GaussianMixture.bimodal(separation=3.0, std=0.4, weight=0.3)
    x = torch.linspace(-12, 12, 12001, dtype=torch.float64)
    p = g.log_prob(x[:, None]).exp()
    y = torch.linspace(-5, 5, 41, dtype=torch.float64)
    for ab in (0.9, 0.3, 0.02):
        var = 1 - ab
        kernel = torch.exp(-(y[:, None] - math.sqrt(ab) * x[None]) ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)
        brute = _trapezoid(kernel * p[None], dx=float(x[1] - x[0]))
        assert torch.allclose(g.noised(ab).log_prob(y[:, None]).exp(), brute, atol=1e-9)
    assert torch.allclose(g.noised(1.0).log_prob(y[:, None]), g.log_prob(y[:, None]))
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(y).double()
    assert torch.allclose(g.noised(0.0).log_prob(y[:, None]), standard, atol=1e-6)


@pytest.mark.parametrize("schedule", [LIN, COS], ids=["linear", "cosine"])
def test_noised_mixture_matches_monte_carlo_q_sample(schedule):
    g = _diag_mixture()
    n = 100_000
    x0, k = g.sample(n, _gen(6))
    for t in (50, 300, 700):
        x_t = forward.q_sample(x0, torch.full((n,), t), schedule, generator=_gen(7 + t))
        ab = schedule.alpha_bar[t].item()
        q = g.noised(ab)
        # closed forms: E[x_t] = √ᾱ E[x₀], Cov[x_t] = ᾱ Cov[x₀] + (1−ᾱ) I
        assert torch.allclose(q.mean(), math.sqrt(ab) * g.mean(), atol=1e-12)
        assert torch.allclose(q.covariance(), ab * g.covariance() + (1 - ab) * torch.eye(2, dtype=torch.float64),
                              atol=1e-12)
        # Monte Carlo: standard errors ≤ 0.006 (mean) and ≤ 0.015 (covariance entries) at n = 1e5
        assert torch.allclose(x_t.mean(0), q.mean(), atol=0.03)
        assert torch.allclose(torch.cov(x_t.T), q.covariance(), atol=0.06)
        for j in range(g.K):  # component by component: means √ᾱ μ_k, variances ᾱσ_k² + 1 − ᾱ
            pts = x_t[k == j]
            assert torch.allclose(pts.mean(0), q.means[j], atol=0.03)
            assert torch.allclose(pts.var(0), q.variances[j], rtol=0.05)
        # and the whole density: mean responsibilities under q_t equal the weights (within 4 SE)
        se = (g.weights * (1 - g.weights) / n).sqrt()
        assert ((q.responsibilities(x_t).mean(0) - g.weights).abs() < 4 * se).all()
        assert q.log_prob(x_t).mean() > g.noised(min(1.0, ab * 4 + 0.1)).log_prob(x_t).mean()


@pytest.mark.parametrize("schedule", [LIN, COS], ids=["linear", "cosine"])
def test_score_t_eps_t_and_posterior_mean_agree(schedule):
    g = _diag_mixture()
    x = torch.randn(7, 2, generator=_gen(8), dtype=torch.float64) * 2
    t = torch.tensor([-1, 0, 10, 200, 500, 900, 999])
    score = g.score_t(x, t, schedule)
    for i, ti in enumerate(t.tolist()):  # row by row against the noised mixture object
        ab = schedule.alpha_bar_at(torch.tensor([ti])).item()
        assert torch.allclose(score[i], g.noised(ab).score(x[i:i + 1])[0], atol=1e-10)
    assert torch.allclose(score[0], g.score(x[:1])[0])  # t = −1 is the clean mixture
    eps = g.eps_t(x, t, schedule)
    ab = schedule.alpha_bar_at(t)[:, None]
    assert torch.allclose(eps, -(1 - ab).sqrt() * score, atol=1e-12)
    assert torch.allclose(forward.score_to_eps(score[1:], t[1:], schedule), eps[1:], atol=1e-12)
    # Tweedie (x̂₀ from ε*) equals the component-wise posterior mean, computed without the score.
    tt, xx = t[1:], x[1:]
    tweedie = forward.eps_to_x0(xx, g.eps_t(xx, tt, schedule), tt, schedule)
    assert torch.allclose(tweedie, g.posterior_mean_x0(xx, tt, schedule), atol=1e-8, rtol=1e-8)
    assert torch.allclose(g.posterior_mean_x0(x[:1], -1, schedule), x[:1])  # clean: E[x₀|x₀] = x₀
    # an int t is broadcast over the batch
    assert torch.allclose(g.eps_t(x, 300, schedule), g.eps_t(x, torch.full((7,), 300), schedule))


def test_posterior_mean_matches_the_empirical_ideal_denoiser():
    """E[x₀|x_t] of the mixture ≈ the exact posterior mean over a large sample of it (forward.ideal_denoiser)."""
    g = GaussianMixture.ring(k=4, radius=2.0, std=0.5, weights=[0.4, 0.3, 0.2, 0.1])
    data, _ = g.sample(100_000, _gen(9))
    x_t = torch.randn(20, 2, generator=_gen(10), dtype=torch.float64) * 1.5
    for t in (150, 400):
        tt = torch.full((20,), t)
        exact = g.posterior_mean_x0(x_t, tt, LIN)
        empirical = forward.ideal_denoiser(x_t.float(), tt, data.float(), LIN).double()
        # Monte-Carlo error of a self-normalised average over 1e5 samples (float32 inside): observed ≤ 0.016;
        # the posterior mean for t + 50 instead is ≥ 0.22 away
        assert (empirical - exact).norm(dim=1).max() < 0.03
    # the posterior mean shrinks towards the modes: a noisy point is pulled in, not left where it is
    assert (g.posterior_mean_x0(x_t, torch.full((20,), 400), LIN) - x_t).norm(dim=1).mean() > 0.3


# --------------------------------------------------------------------------- the oracle model
def test_oracle_model():
    g = _diag_mixture()
    model = g.oracle_model(COS)
    assert isinstance(model, OracleModel) and model.objective == "eps"
    x = torch.randn(6, 2, generator=_gen(11))
    t = torch.tensor([0, 5, 100, 100, 600, 999])
    out = model(x, t)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.allclose(out.double(), g.eps_t(x.double(), t, COS), atol=1e-6)
    # image-shaped items, an unused cond, a scalar t
    out2 = model(x.reshape(6, 1, 1, 2), torch.tensor(100), torch.zeros(6, dtype=torch.long))
    assert out2.shape == (6, 1, 1, 2)
    assert torch.allclose(out2.reshape(6, 2), model(x, torch.full((6,), 100)))
    with pytest.raises(ValueError, match="d=2"):
        model(torch.randn(6, 3), t)
    with pytest.raises(TypeError):
        model(x, t.float())
    with pytest.raises(ValueError):
        model(x, torch.tensor([0, 1000, 0, 0, 0, 0]))


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(means=[[0.0], [1.0]], stds=[1.0, 1.0], weights=[0.5, 0.6]), "sum to 1"),
    (dict(means=[[0.0], [1.0]], stds=[1.0, 1.0], weights=[1.5, -0.5]), "non-negative"),
    (dict(means=[[0.0], [1.0]], stds=[1.0, -1.0]), "positive"),
    (dict(means=[[0.0], [1.0]], stds=[1.0, 0.0]), "positive"),
    (dict(means=[0.0, 1.0], stds=[1.0, 1.0]), r"\(K, d\)"),
    (dict(means=[[0.0, 0.0], [1.0, 1.0]], stds=[[1.0, 1.0, 1.0]] * 2), "stds"),
    (dict(means=[[0.0, 0.0], [1.0, 1.0]], stds=[1.0, 1.0, 1.0]), "stds"),
    (dict(means=[[0.0, 0.0], [1.0, 1.0]], stds=[1.0, 1.0], weights=[1.0]), "weights"),
    (dict(means=[[0.0, float("nan")]], stds=[1.0]), "finite"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_method_errors():
    g = _diag_mixture()
    with pytest.raises(ValueError, match="d=2"):
        g.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="d=2"):
        g.score(torch.zeros(2))
    with pytest.raises(TypeError):
        g.log_prob([[0.0, 0.0]])
    with pytest.raises(ValueError, match="alpha_bar"):
        g.noised(1.5)
    with pytest.raises(TypeError):
        g.score_t(torch.zeros(3, 2), torch.tensor([1.0, 2.0, 3.0]), LIN)
    with pytest.raises(ValueError, match="shape"):
        g.score_t(torch.zeros(3, 2), torch.tensor([1, 2]), LIN)
    with pytest.raises(ValueError, match="T=1000"):
        g.eps_t(torch.zeros(3, 2), torch.tensor([1, 2, 1000]), LIN)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        g.oracle_model("linear")
    with pytest.raises(ValueError):
        g.sample(-1)
    with pytest.raises(ValueError):
        GaussianMixture.ring(k=0)
    with pytest.raises(ValueError):
        GaussianMixture.bimodal(weight=1.2)


def test_class_conditional_oracle_and_guidance_on_it():
    """Exact conditional scores: s = 1 samples one component, s = 0 the mixture, s > 1 sharpens away
    from the other classes — guidance's effect with no network error at all."""
    from diffusion_course import guidance, sampling

    s = NoiseSchedule.cosine(1000)
    mix = GaussianMixture.ring(k=3, radius=1.5, std=0.4)
    oracle = gmm.class_conditional_oracle(mix, s)
    x_T = torch.randn(3000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(3000, dtype=torch.long)
    out = {sc: sampling.ddim_sample(guidance.classifier_free(oracle, y, sc), x_T, s, steps=50, progress=False)
           for sc in (0.0, 1.0, 3.0)}
    share0 = mix.responsibilities(out[0.0]).argmax(1).eq(0).double().mean().item()
    assert abs(share0 - 1 / 3) < 4 * (2 / 9 / 3000) ** 0.5                     # the whole mixture
    torch.testing.assert_close(out[1.0].mean(0), mix.means[0], atol=0.05, rtol=0)  # exactly component 0
    assert abs(out[1.0].std(0).mean().item() - 0.4) < 0.03
    assert out[3.0][:, 0].mean() > 1.8 and out[3.0].std(0).mean() < 0.33        # pushed outwards, narrower
    with pytest.raises(ValueError, match="null"):
        oracle(x_T[:2], torch.tensor([5, 5]), torch.tensor([0, 7]))
