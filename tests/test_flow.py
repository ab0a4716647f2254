"""Flow matching / rectified flow (diffusion_course.flow): exact answers first, then training, then bad input."""
import itertools
import math
from functools import partial

import pytest
import torch
from torch import nn

from diffusion_course import flow, gmm, guidance, sampling, schedules
from diffusion_course.nn.unet import UNet


@pytest.fixture(scope="module")
def schedule():
    return schedules.NoiseSchedule.linear(1000)


def _gaussian(mu=(0.7, -1.2), s=0.5):
    return gmm.GaussianMixture(torch.tensor([mu], dtype=torch.float64), [s])


class TinyVelocity(nn.Module):
    """[x, t] → v: enough for a 2-D flow."""

    def __init__(self, dim=2, hidden=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x, t, cond=None):
        return self.net(torch.cat([x, t[:, None]], dim=1))


# --------------------------------------------------------------------------- the path
def test_path_endpoints_and_velocity():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    assert torch.equal(flow.interpolate(x0, eps, 0.0), x0)
    assert torch.allclose(flow.interpolate(x0, eps, 1.0), eps)
    t = torch.tensor([0.1, 0.4, 0.5, 0.9])
    h = 1e-3
    fd = (flow.interpolate(x0, eps, t + h) - flow.interpolate(x0, eps, t - h)) / (2 * h)
    assert torch.allclose(fd, flow.target_velocity(x0, eps), atol=1e-3)


def test_sample_t_kinds():
    g = torch.Generator().manual_seed(0)
    u = flow.sample_t(20000, "uniform", generator=g)
    assert u.dtype == torch.float32 and u.shape == (20000,) and 0 <= float(u.min()) and float(u.max()) < 1
    ln = flow.sample_t(20000, "logit-normal", generator=g, mean=0.5, std=0.8)
    logit = torch.log(ln) - torch.log1p(-ln)
    assert abs(float(logit.mean()) - 0.5) < 0.03 and abs(float(logit.std()) - 0.8) < 0.03
    a = flow.sample_t(5, "logit-normal", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, flow.sample_t(5, "logit-normal", generator=torch.Generator().manual_seed(3)))


# --------------------------------------------------------------------------- 1. exact velocity
def test_exact_velocity_single_gaussian_closed_form():
    mu, s = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.5
    m = _gaussian(tuple(mu.tolist()), s)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in (0.0, 0.2, 0.5, 0.9, 1.0):
        V = (1 - t) ** 2 * s**2 + t**2
        # v = E[ε − x0 | x]: linear in x, slope (t − (1−t)s²)/V, passing through −μ at x = (1−t)μ
        expected = (t - (1 - t) * s**2) / V * (x - (1 - t) * mu) - mu
        got = flow.exact_velocity(m, x, t)
        assert got.dtype == torch.float64
        assert torch.allclose(got, expected, atol=1e-12), t


def test_exact_velocity_solves_continuity_equation():
    # ∂_t log p_t + ∇·v + v·∇log p_t = 0 for the straight path's marginals, checked with gmm's own densities
    m = gmm.GaussianMixture.ring(4, radius=2.0, std=0.3, weights=[0.1, 0.2, 0.3, 0.4])
    x = 1.5 * torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for t in (0.3, 0.7):
        def logp(tau):
            tt = torch.full((x.shape[0],), tau, dtype=torch.float64)
            return m.log_prob_at(x, 1 - tt, tt)
        h = 1e-5
        dlogp_dt = (logp(t + h) - logp(t - h)) / (2 * h)
        tt = torch.full((x.shape[0],), t, dtype=torch.float64)
        xr = x.clone().requires_grad_(True)
        v = flow.exact_velocity(m, xr, tt)
        div = sum(torch.autograd.grad(v[:, i].sum(), xr, retain_graph=True)[0][:, i] for i in range(2))
        score = m.score_at(x, 1 - tt, tt)
        residual = dlogp_dt + div.detach() + (v.detach() * score).sum(1)
        assert residual.abs().max() < 1e-6, residual


# --------------------------------------------------------------------------- 2. Euler on an ε-model = DDIM
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_euler_on_oracle_velocity_is_ddim(schedule, steps, spacing):
    oracle = gmm.GaussianMixture.ring(8).oracle_model(schedule)
    x_T = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(steps))
    ddim = sampling.ddim_sample(oracle, x_T, schedule, steps=steps, eta=0.0, spacing=spacing, progress=False)
    v = flow.velocity_from_eps(oracle, schedule)
    x1, times = v.ddim_equivalent(x_T, steps, spacing)
    ts = sampling.timesteps(schedule.T, steps, spacing)
    ab = schedule.alpha_bar[ts]
    assert times[-1] == 0.0 and times[:-1] == pytest.approx(((1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt())).tolist())
    assert times[0] < 1 and torch.allclose(x1 * (ab[0].sqrt() + (1 - ab[0]).sqrt()), x_T)
    assert torch.allclose(flow.sample(v, x1, times=times), ddim, atol=1e-12, rtol=0)


def test_euler_on_unet_velocity_is_ddim_float32(schedule):
    torch.manual_seed(0)
    unet = UNet(1, channels=(8, 16), attention_levels=(), num_classes=0).eval()
    nn.init.normal_(unet.out[-1].weight, std=0.05)   # the output layer starts at zero: make ε̂ non-trivial
    x_T = torch.randn(3, 1, 8, 8)
    v = flow.velocity_from_eps(unet, schedule)
    for steps in (1, 5):
        with torch.no_grad():
            ddim = sampling.ddim_sample(unet, x_T, schedule, steps=steps, progress=False)
        x1, times = v.ddim_equivalent(x_T, steps)
        out = flow.sample(v, x1, times=times)
        assert out.dtype == torch.float32
        assert float((out - ddim).norm() / ddim.norm()) < 1e-4


def test_guided_velocity_is_guided_ddim(schedule):
    # CFG is linear and the ε → v map is affine with a cond-free slope: guiding v = guiding ε
    m = gmm.GaussianMixture.ring(3, radius=2.0, std=0.3)
    oracle = gmm.class_conditional_oracle(m, schedule)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    x_T = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ddim = sampling.ddim_sample(guidance.classifier_free(oracle, labels, 2.5), x_T, schedule, steps=6, progress=False)
    v = flow.velocity_from_eps(oracle, schedule)
    x1, times = v.ddim_equivalent(x_T, 6)
    out = flow.sample(v, x1, times=times, cond=labels, guidance_scale=2.5)
    assert torch.allclose(out, ddim, atol=1e-12, rtol=0)


def test_velocity_from_eps_on_uniform_grid_samples_the_ring(schedule):
    m = gmm.GaussianMixture.ring(4, radius=2.0, std=0.1)
    v = flow.velocity_from_eps(m.oracle_model(schedule), schedule, time="nearest")
    x1 = torch.randn(400, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = flow.sample(v, x1, steps=20, solver="heun")       # starts at t = 1 > t_max: handled, finite
    assert float(x.norm(dim=1).sub(2.0).abs().median()) < 0.15
    # on the ε-model's exact velocity the same ODE is the mixture's: compare with exact_velocity
    t = torch.full((400,), 0.5, dtype=torch.float64)
    assert torch.allclose(v(x1, t), flow.exact_velocity(m, x1, t), atol=0.05)


# --------------------------------------------------------------------------- 3. training reproduces mode weights
def test_trained_flow_reproduces_mixture_weights():
    torch.manual_seed(0)
    m = gmm.GaussianMixture.bimodal(separation=4.0, std=0.4, weight=0.3, dim=2)
    model = TinyVelocity()
    steps = 600
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x0, _ = m.sample(256, generator=g)
        loss = flow.flow_matching_loss(model, x0.float(), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
    x1 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1))
    x = flow.sample(model, x1, steps=16, solver="heun")
    share = float((torch.cdist(x.double(), m.means).argmin(1) == 0).float().mean())
    # 10 training seeds gave 0.296-0.320; the exact flow from the same x1 gives 0.289 (sampling spread ±0.007)
    assert abs(share - 0.3) < 0.035


def test_flow_matching_loss_details_dropout_and_determinism():
    seen = {}

    class Probe(nn.Module):
        num_classes = 5

        def forward(self, x, t, cond=None):
            seen["cond"] = cond
            return torch.zeros_like(x)

    x0 = torch.randn(8, 2)
    labels = torch.arange(8) % 5
    out = flow.flow_matching_loss(Probe(), x0, labels, p_uncond=1.0, generator=torch.Generator().manual_seed(0),
                                  return_details=True)
    assert torch.equal(seen["cond"], torch.full((8,), 5))            # all dropped to the null label
    assert out.per_sample.shape == (8,) and out.t.shape == (8,) and out.t.dtype == torch.float32
    assert torch.allclose(out.loss, out.per_sample.mean())
    flow.flow_matching_loss(Probe(), x0, labels, p_uncond=0.0)
    assert torch.equal(seen["cond"], labels)
    net = TinyVelocity()
    for p in net.parameters():
        nn.init.zeros_(p)                     # v = 0: the reflow loss is E‖ε − x0‖² on the given pairs
    noise = torch.randn(8, 2)
    assert torch.allclose(flow.reflow_loss(net, noise, x0), (noise - x0).pow(2).mean())
    pytest.importorskip("scipy")              # coupling="ot" solves the assignment with SciPy
    # with v = 0 the loss is the pairs' mean squared distance: OT pairs are never farther apart than independent ones
    indep, ot = (flow.flow_matching_loss(net, x0, coupling=c, generator=torch.Generator().manual_seed(1))
                 for c in ("independent", "ot"))
    assert float(ot.detach()) < float(indep.detach())
    a, b = (flow.flow_matching_loss(net, x0, coupling="ot", t_sampling="logit-normal",
                                    generator=torch.Generator().manual_seed(1)) for _ in range(2))
    assert torch.equal(a, b)


def test_flow_unet_wraps_unet_and_is_not_an_eps_model():
    torch.manual_seed(0)
    fu = flow.FlowUNet(in_channels=1, channels=(8, 16), attention_levels=(), num_classes=3)
    nn.init.normal_(fu.unet.out[-1].weight, std=0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.25, 1.0])
    cond = torch.tensor([0, 3])
    assert torch.allclose(fu(x, t, cond), fu.unet(x, t * 999, cond))
    assert fu.num_classes == 3 and not sampling.objective_is_eps(fu)
    with pytest.raises(TypeError, match="flow.sample"):
        sampling.ddim_sample(fu, x, schedules.NoiseSchedule.linear(10), steps=2, progress=False)
    out = flow.sample(fu, x, steps=2, cond=cond, guidance_scale=2.0, clip_denoised=True)
    assert out.shape == x.shape and float(out.abs().max()) <= 1 + 1e-6


# --------------------------------------------------------------------------- 4. minibatch OT
def test_minibatch_ot_is_optimal_and_respects_classes():
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)

    def cost(p):
        return float((x0 - eps[p]).pow(2).sum())

    perm = flow.minibatch_ot(x0, eps)
    assert perm.dtype == torch.int64 and sorted(perm.tolist()) == list(range(6))
    best = min(cost(torch.tensor(p)) for p in itertools.permutations(range(6)))
    assert cost(perm) == pytest.approx(best)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        x0, eps = torch.randn(64, 2, 4, 4, generator=g), torch.randn(64, 2, 4, 4, generator=g)
        labels = torch.randint(0, 3, (64,), generator=g)
        cost_id = float((x0 - eps).pow(2).sum())
        p = flow.minibatch_ot(x0, eps)
        pl = flow.minibatch_ot(x0, eps, labels)
        assert float((x0 - eps[p]).pow(2).sum()) <= cost_id + 1e-9
        assert float((x0 - eps[pl]).pow(2).sum()) <= cost_id + 1e-9
        assert torch.equal(labels[pl], labels) and sorted(pl.tolist()) == list(range(64))


# --------------------------------------------------------------------------- 5. reflow pairs
def test_reflow_pairs_deterministic_and_resumable(tmp_path):
    m = gmm.GaussianMixture.ring(4)
    v = partial(flow.exact_velocity, m)
    kw = dict(shape=(2,), steps=4, batch_size=4, seed=7)
    noise, x = flow.reflow_pairs(v, 10, **kw)
    noise2, x2 = flow.reflow_pairs(v, 10, **kw)
    assert torch.equal(noise, noise2) and torch.equal(x, x2) and x.shape == (10, 2)
    assert torch.equal(noise, torch.randn(10, 2, generator=torch.Generator().manual_seed(7)))
    assert torch.allclose(x, flow.sample(v, noise, steps=4))

    calls = {"n": 0}

    def dies_after_one_batch(x_, t_):
        calls["n"] += 1
        if calls["n"] > 4:                   # the second batch's first call
            raise KeyboardInterrupt
        return v(x_, t_)

    cache = tmp_path / "pairs.pt"
    with pytest.raises(KeyboardInterrupt):
        flow.reflow_pairs(dies_after_one_batch, 10, cache=cache, **kw)
    calls["n"] = -100
    noise3, x3 = flow.reflow_pairs(dies_after_one_batch, 10, cache=cache, **kw)
    assert calls["n"] == -100 + 2 * 4        # only the two missing batches were integrated
    assert torch.equal(noise3, noise) and torch.equal(x3, x)
    with pytest.raises(ValueError, match="cache"):
        flow.reflow_pairs(v, 10, cache=cache, **{**kw, "seed": 8})


def test_reflow_pairs_with_labels(tmp_path):
    m = gmm.GaussianMixture.ring(3)
    oracle = gmm.class_conditional_oracle(m, schedules.NoiseSchedule.linear(1000))
    v = flow.velocity_from_eps(oracle, schedules.NoiseSchedule.linear(1000), time="nearest")
    labels = torch.tensor([0, 1, 2, 1])
    noise, x, lab = flow.reflow_pairs(v, 4, shape=(2,), steps=3, batch_size=3, labels=labels, cache=tmp_path / "c.pt")
    assert torch.equal(lab, labels) and x.shape == (4, 2)


# --------------------------------------------------------------------------- 6. likelihood
def test_log_likelihood_single_gaussian_closed_form():
    pytest.importorskip("torchdiffeq")
    m = _gaussian()
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    logp = flow.log_likelihood(partial(flow.exact_velocity, m), x, exact_trace=True, rtol=1e-8, atol=1e-8)
    assert torch.allclose(logp, m.log_prob(x), atol=1e-4)


def test_log_likelihood_mixture_exact():
    pytest.importorskip("torchdiffeq")
    m = gmm.GaussianMixture.ring(3, radius=1.5, std=0.4, weights=[0.2, 0.3, 0.5])
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    logp = flow.log_likelihood(partial(flow.exact_velocity, m), x, exact_trace=True, rtol=1e-8, atol=1e-8)
    assert torch.allclose(logp, m.log_prob(x), atol=1e-4)


# --------------------------------------------------------------------------- solvers
def test_euler_first_order_heun_second_order():
    # for N(μ, s²I) the exact flow maps x1 to μ + s·x1 (a Gaussian flows to a Gaussian along rays)
    mu, s = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.5
    v = partial(flow.exact_velocity, _gaussian(tuple(mu.tolist()), s))
    x1 = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for solver, order in (("euler", 1), ("heun", 2)):
        errs = [float((flow.sample(v, x1, steps=n, solver=solver) - (mu + s * x1)).abs().max()) for n in (8, 16, 32)]
        for coarse, fine in zip(errs, errs[1:]):
            assert 2**order * 0.85 < coarse / fine < 2**order * 1.25, (solver, errs)


def test_against_meta_flow_matching():
    """Meta's flow_matching (source x_0 = noise at s = 0, target x_1 = data at s = 1): our t is 1 − s."""
    pytest.importorskip("flow_matching")
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from flow_matching.solver import ODESolver

    path = AffineProbPath(CondOTScheduler())
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.3, 0.8, 1.0], dtype=torch.float64)
    ps = path.sample(x_0=eps, x_1=x0, t=1 - t)
    assert torch.allclose(ps.x_t, flow.interpolate(x0, eps, t))
    assert torch.allclose(ps.dx_t, -flow.target_velocity(x0, eps))
    # an ε-prediction is the same ε on both paths (x_vp = (α + σ) x_rf): their epsilon_to_velocity = our −v
    s = schedules.NoiseSchedule.linear(1000)
    oracle = gmm.GaussianMixture.ring(8).oracle_model(s)
    k = torch.tensor([0, 10, 500, 999])
    a, sg = s.alpha_bar[k].sqrt(), (1 - s.alpha_bar[k]).sqrt()
    tt = sg / (a + sg)
    x = torch.randn(4, 2, dtype=torch.float64, generator=g)
    eps_hat = oracle(x * (a + sg)[:, None], k)
    theirs = -path.epsilon_to_velocity(eps_hat, x, (1 - tt)[:, None])
    assert torch.allclose(flow.velocity_from_eps(oracle, s)(x, tt), theirs, atol=1e-12)
    # their torchdiffeq Euler, run from t = 1 down to 0, is our Euler
    v = partial(flow.exact_velocity, gmm.GaussianMixture.ring(4))
    x1 = torch.randn(16, 2, dtype=torch.float64, generator=g)
    solver = ODESolver(velocity_model=lambda x, t: v(x, t.expand(x.shape[0])))
    euler = solver.sample(x_init=x1, step_size=0.125, time_grid=torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(euler, flow.sample(v, x1, steps=8), atol=1e-12)


# --------------------------------------------------------------------------- 7. bad input
def test_bad_input_is_named():
    x = torch.randn(4, 2)
    zero = lambda x_, t_: torch.zeros_like(x_)  # noqa: E731
    with pytest.raises(ValueError, match="t must lie in"):
        flow.interpolate(x, x, 1.5)
    with pytest.raises(ValueError, match="t must lie in"):
        flow.exact_velocity(_gaussian(), x.double(), torch.full((4,), -0.1))
    for bad in (0, -3):
        with pytest.raises(ValueError, match="steps"):
            flow.sample(zero, x, steps=bad)
    with pytest.raises(TypeError, match="steps"):
        flow.sample(zero, x, steps=2.0)
    with pytest.raises(ValueError, match="solver"):
        flow.sample(zero, x, solver="rk9")
    with pytest.raises(ValueError, match="coupling"):
        flow.flow_matching_loss(zero, x, coupling="sinkhorn")
    with pytest.raises(ValueError, match="t_sampling"):
        flow.sample_t(4, "beta")
    with pytest.raises(ValueError, match="times"):
        flow.sample(zero, x, times=[0.2, 0.5, 0.0])
    with pytest.raises(ValueError, match="shape"):
        flow.sample(lambda x_, t_: x_[:, :1], x)
    with pytest.raises(ValueError, match="shape"):
        flow.flow_matching_loss(lambda x_, t_: x_[:, :1], x)
    with pytest.raises(ValueError, match="cond"):
        flow.sample(zero, x, guidance_scale=3.0)

    def nan_late(x_, t_):
        return torch.full_like(x_, float("nan")) if float(t_[0]) <= 0.5 else torch.zeros_like(x_)

    with pytest.raises(FloatingPointError, match="step 3 of 4"):
        flow.sample(nan_late, x, steps=4)


# --------------------------------------------------------------------------- 8. straightness
def test_straightness():
    x1 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    point_mass = lambda x_, t_: (x_ - mu) / t_[:, None]  # noqa: E731  (exact velocity of δ_μ for t > 0)
    constant = lambda x_, t_: torch.ones_like(x_)  # noqa: E731
    assert float(flow.straightness(point_mass, x1, steps=16).max()) < 1e-20
    assert float(flow.straightness(constant, x1, steps=16).max()) < 1e-20
    gaussian = flow.straightness(partial(flow.exact_velocity, _gaussian(s=0.3)), x1, steps=16)
    mixture = flow.straightness(partial(flow.exact_velocity, gmm.GaussianMixture.bimodal(dim=2)), x1, steps=16)
    assert gaussian.shape == (8,) and bool((gaussian > 1e-3).all()) and bool((mixture > 1e-3).all())
    # a single straight Euler step is exact exactly when S = 0
    assert torch.allclose(flow.sample(point_mass, x1, steps=1), mu.expand(8, 2))
    assert not math.isclose(float(gaussian.mean()), 0.0)


def test_flow_mlp_conditional_and_bad_input():
    torch.manual_seed(0)
    net = flow.FlowMLP(num_classes=3)
    x, t = torch.randn(4, 2), torch.rand(4)
    out = net(x, t, torch.tensor([0, 1, 2, 3]))            # 3 is the null label
    assert out.shape == (4, 2) and net.objective == "flow"
    assert torch.equal(net(x, t), net(x, t, torch.full((4,), 3)))   # cond=None is the null label
    assert not torch.allclose(net(x, t, torch.zeros(4, dtype=torch.long)), net(x, t, torch.ones(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="cond"):
        net(x, t, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        net(torch.randn(4, 3), t)
    with pytest.raises(ValueError, match="t"):
        net(x, torch.full((4,), 1.5))
    with pytest.raises(ValueError, match="unconditional"):
        flow.FlowMLP()(x, t, torch.zeros(4, dtype=torch.long))
