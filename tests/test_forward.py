"""The forward process: closed form vs the Markov chain, the posterior, conversions, the ideal denoiser."""
import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_course import forward
from diffusion_course.schedules import NoiseSchedule

S = NoiseSchedule.cosine(1000)


def test_q_sample_matches_diffusers_add_noise():
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    assert torch.allclose(forward.q_sample(x0, t, S, noise), ref.add_noise(x0, noise, t), atol=1e-5)


def test_q_sample_moments():
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((200_000, 1), 0.7)
    for t in [50, 400, 900]:
        x = forward.q_sample(x0, torch.full((x0.shape[0],), t), S, generator=g)
        ab = S.alpha_bar[t].item()
        # standard errors: sd/√n ≈ 0.0022 for the mean
        assert x.mean().item() == pytest.approx(ab**0.5 * 0.7, abs=0.01)
        assert x.var().item() == pytest.approx(1 - ab, rel=0.02)


def test_markov_chain_agrees_with_closed_form():
    """Running q(x_t|x_{t-1}) step by step gives the same distribution as the one-jump formula."""
    s = NoiseSchedule.linear(200, 1e-4, 0.05)
    g = torch.Generator().manual_seed(2)
    x0 = torch.tensor([[1.5, -0.5]]).repeat(50_000, 1)
    x = x0.clone()
    for t in range(120):
        x = forward.q_step(x, torch.full((x.shape[0],), t), s, generator=g)
    jump = forward.q_sample(x0, torch.full((x0.shape[0],), 119), s, generator=g)
    assert torch.allclose(x.mean(0), jump.mean(0), atol=0.03)
    assert torch.allclose(x.var(0), jump.var(0), rtol=0.04)
    ab = s.alpha_bar[119].item()
    assert torch.allclose(x.mean(0), ab**0.5 * x0[0].double().float(), atol=0.03)


def test_q_posterior_matches_bayes_and_diffusers():
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="fixed_small")
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x_t = torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 20, 600, 999])
    mean, var = forward.q_posterior(x0, x_t, t, S)
    # Bayes for Gaussians: precision-weighted combination of q(x_t|x_{t-1}) and q(x_{t-1}|x0).
    ab_prev, beta = S.alpha_bar_prev[t][:, None], S.betas[t][:, None]
    prec = (1 - beta) / beta + 1 / (1 - ab_prev)
    expected_mean = ((1 - beta).sqrt() / beta * x_t + ab_prev.sqrt() / (1 - ab_prev) * x0) / prec
    assert torch.allclose(mean, expected_mean, atol=1e-9)
    assert torch.allclose(var[:, 0], 1 / prec[:, 0], rtol=1e-9)
    # diffusers' DDPM step with x0-prediction is "posterior mean + √β̃ · z"; we redraw its z.
    ref_pred = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                             clip_sample=False, variance_type="fixed_small")
    ref_pred.set_timesteps(1000)
    # The same ᾱ as diffusers (its float32 cumprod), so only the formulas are compared, to 1e-5.
    ab32 = ref_pred.alphas_cumprod.double()
    same = NoiseSchedule.from_betas(1 - ab32 / torch.cat([torch.ones(1, dtype=torch.float64), ab32[:-1]]))
    mean32, var32 = forward.q_posterior(x0, x_t, t, same)
    for i, ti in enumerate(t.tolist()):
        step = ref_pred.step(x0[i:i + 1].float(), ti, x_t[i:i + 1].float(),
                             generator=torch.Generator().manual_seed(i)).prev_sample
        z = torch.randn((1, 3), generator=torch.Generator().manual_seed(i))
        recovered_mean = step.double() - var32[i, 0].sqrt() * z.double()
        # At t = 1 diffusers forms 1 − ᾱ ≈ 4e-5 in float32 (cancellation: ~1e-3 relative error).
        assert torch.allclose(recovered_mean, mean32[i:i + 1], atol=1e-5 if ti >= 10 else 1e-3)
    assert torch.allclose(mean32, mean, atol=1e-3)  # float32 rounding of β is all that separates them
    assert var[0, 0].item() == pytest.approx(float(ref._get_variance(1)), abs=1e-7)


def test_conversions_roundtrip():
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(5, 1, 3, 3, generator=g), torch.randn(5, 1, 3, 3, generator=g)
    t = torch.tensor([0, 10, 300, 700, 999])
    x_t = forward.q_sample(x0, t, S, eps)
    assert torch.allclose(forward.eps_to_x0(x_t, eps, t, S), x0, atol=2e-3)  # t=999: 1/√ᾱ amplifies rounding
    assert torch.allclose(forward.x0_to_eps(x_t, x0, t, S), eps, atol=1e-3)
    v = forward.v_target(x0, eps, t, S)
    assert torch.allclose(forward.v_to_x0(x_t, v, t, S), x0, atol=1e-5)
    assert torch.allclose(forward.v_to_eps(x_t, v, t, S), eps, atol=1e-5)
    score = forward.eps_to_score(eps, t, S)
    assert torch.allclose(forward.score_to_eps(score, t, S), eps, atol=1e-5)


def test_score_of_gaussian_data_is_exact():
    """For x0 ~ N(0, I), x_t ~ N(0, I) too, so the true score is −x and ε* = √(1−ᾱ)·x."""
    t = torch.tensor([100, 500])
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(5))
    eps_star = (1 - S.alpha_bar[t])[:, None].sqrt().float() * x
    assert torch.allclose(forward.eps_to_score(eps_star, t, S), -x, atol=1e-6)


# ------------------------------------------------------------------ ideal denoiser
def _brute_force(x_t, t, data, s):
    ab = s.alpha_bar[t].double()
    out = []
    for i in range(x_t.shape[0]):
        d2 = ((x_t[i].double().flatten() - ab[i].sqrt() * data.double().flatten(1)) ** 2).sum(1)
        w = torch.softmax(-d2 / (2 * (1 - ab[i])), 0)
        out.append((w[:, None] * data.double().flatten(1)).sum(0).reshape(x_t.shape[1:]))
    return torch.stack(out)


def test_ideal_denoiser_matches_brute_force_across_chunks():
    g = torch.Generator().manual_seed(6)
    data = torch.rand(300, 1, 5, 5, generator=g) * 2 - 1
    x_t = torch.randn(4, 1, 5, 5, generator=g)
    t = torch.tensor([5, 200, 600, 990])
    fast = forward.ideal_denoiser(x_t, t, data, S, chunk_size=64)  # several chunks
    assert torch.allclose(fast.double(), _brute_force(x_t, t, data, S), atol=1e-5)


def test_ideal_denoiser_limits():
    g = torch.Generator().manual_seed(7)
    data = torch.rand(50, 1, 4, 4, generator=g) * 2 - 1
    # t → 0: x_t ≈ x_i, the denoiser returns that training point exactly
    i = 17
    x_t = forward.q_sample(data[i:i + 1], torch.tensor([0]), S, generator=g)
    assert torch.allclose(forward.ideal_denoiser(x_t, torch.tensor([0]), data, S), data[i:i + 1], atol=1e-4)
    # t → T: x_t carries no information, the denoiser returns the data mean
    x_t = torch.randn(3, 1, 4, 4, generator=g)
    out = forward.ideal_denoiser(x_t, torch.tensor([999] * 3), data, S)
    assert torch.allclose(out, data.mean(0, keepdim=True).expand(3, -1, -1, -1), atol=1e-3)


def test_ideal_denoiser_weights():
    data = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 1.0]])
    mean, w, idx = forward.ideal_denoiser(torch.tensor([[0.9, 0.95]]), torch.tensor([10]), data, S,
                                          return_weights=True)
    assert idx[0, 0].item() == 1 and w[0].sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("call,err", [
    (lambda: forward.q_sample(torch.zeros(2, 3), torch.tensor([0, 1000]), S), ValueError),   # t out of range
    (lambda: forward.q_sample(torch.zeros(2, 3), torch.tensor([-1, 0]), S), ValueError),
    (lambda: forward.q_sample(torch.zeros(2, 3), torch.tensor([0.5, 1.0]), S), TypeError),   # float t
    (lambda: forward.q_sample(torch.zeros(2, 3), torch.tensor([1, 2, 3]), S), ValueError),   # wrong batch
    (lambda: forward.q_sample(torch.zeros(2, 3), torch.tensor([1, 2]), S, torch.zeros(2, 4)), ValueError),
    (lambda: forward.q_sample(torch.tensor([[float("nan")]]), torch.tensor([1]), S), ValueError),
    (lambda: forward.q_sample(torch.zeros(3), torch.tensor([1, 2, 3]), S), ValueError),      # unbatched
    (lambda: forward.q_sample([[0.0]], torch.tensor([1]), S), TypeError),
    (lambda: forward.ideal_denoiser(torch.zeros(1, 4), torch.tensor([1]), torch.zeros(10, 5), S), ValueError),
    (lambda: forward.ideal_denoiser(torch.zeros(1, 4), torch.tensor([1]), torch.zeros(0, 4), S), ValueError),
    (lambda: forward.q_posterior(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([1, 2]), S), ValueError),
])
def test_bad_input(call, err):
    with pytest.raises(err):
        call()
