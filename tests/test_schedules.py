"""Schedules against diffusers' DDPMScheduler (an independent implementation) and closed forms."""
import math

import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_course.schedules import NoiseSchedule, get_schedule


@pytest.mark.parametrize("T", [1000, 250])
def test_linear_matches_diffusers(T):
    ours = NoiseSchedule.linear(T, 1e-4, 0.02)
    ref = DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    # diffusers builds its betas in float32: agreement to float32 precision.
    assert torch.allclose(ours.betas, ref.betas.double(), atol=1e-7, rtol=0)
    assert torch.allclose(ours.alpha_bar, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("T", [1000, 100])
def test_cosine_matches_diffusers_squaredcos_cap_v2(T):
    ours = NoiseSchedule.cosine(T)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(ours.betas, ref.betas.double(), atol=1e-6, rtol=0)
    assert torch.allclose(ours.alpha_bar, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)
    assert ours.betas.max() <= 0.999


@pytest.mark.parametrize("make,name", [(NoiseSchedule.linear, "linear"), (NoiseSchedule.cosine, "squaredcos_cap_v2")])
def test_posterior_variance_matches_diffusers(make, name):
    ours = make(1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, variance_type="fixed_small")
    for t in [1, 2, 10, 500, 998, 999]:
        expected = float(ref._get_variance(t))
        assert ours.posterior_variance[t].item() == pytest.approx(expected, abs=1e-6)


def test_derived_quantities():
    s = NoiseSchedule.linear(1000)
    assert torch.allclose(s.alpha_bar, torch.cumprod(1 - s.betas, 0))
    assert torch.allclose(s.snr, s.alpha_bar / (1 - s.alpha_bar))
    assert torch.allclose(s.log_snr, torch.log(s.snr))
    assert torch.allclose(s.sigma, torch.sqrt(1 / s.snr))
    assert (s.alpha_bar[1:] < s.alpha_bar[:-1]).all()  # monotone: noise only grows
    assert s.alpha_bar_prev[0] == 1 and s.alpha_bar_prev[5] == s.alpha_bar[4]
    # the well-known terminal value of the DDPM linear schedule
    assert s.alpha_bar[-1].item() == pytest.approx(4.04e-5, rel=0.01)
    assert s.alpha_bar_at(torch.tensor([-1, 0])).tolist() == [1.0, s.alpha_bar[0].item()]


def test_cosine_closed_form():
    s = NoiseSchedule.cosine(1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in [0, 10, 500, 900]:
        assert s.alpha_bar[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)


def test_zero_terminal_snr():
    s = NoiseSchedule.linear(1000)
    z = s.rescale_zero_terminal_snr()
    assert z.alpha_bar[-1].item() == 0.0
    assert z.alpha_bar[0].item() == pytest.approx(s.alpha_bar[0].item(), rel=1e-9)
    assert (z.alpha_bar[1:] <= z.alpha_bar[:-1]).all()
    # Lin et al.: √ᾱ is an affine map of the original √ᾱ
    a, b = s.alpha_bar.sqrt(), z.alpha_bar.sqrt()
    slope = (b[0] - b[500]) / (a[0] - a[500])
    assert torch.allclose(b, (a - a[-1]) * slope, atol=1e-9)
    assert get_schedule("linear+zsnr").alpha_bar[-1].item() == 0.0


def test_to_device_keeps_values():
    s = NoiseSchedule.cosine(50).to("cpu")
    assert s.betas.dtype == torch.float64 and s.T == 50


@pytest.mark.parametrize("bad", [
    lambda: NoiseSchedule.linear(0), lambda: NoiseSchedule.linear(10, 0.1, 0.01),
    lambda: NoiseSchedule.linear(10.5), lambda: NoiseSchedule.from_betas([0.1, float("nan")]),
    lambda: NoiseSchedule.from_betas([0.1, -0.1]), lambda: NoiseSchedule.from_betas(torch.ones(2, 2) * 0.1),
    lambda: get_schedule("sigmoid"), lambda: get_schedule("cosine+foo"),
])
def test_bad_input(bad):
    with pytest.raises(ValueError):
        bad()
