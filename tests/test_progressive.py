"""Progressive distillation: the x₀ target lands one DDIM step on two of the teacher's; each round halves the steps."""
import copy
import math

import pytest
import torch

from diffusion_course import consistency as C
from diffusion_course import progressive as PD
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


def test_progressive_target_makes_one_ddim_step_land_on_the_teachers_point():
    x_t = torch.randn(6, 2, generator=_gen(16), dtype=torch.float64)
    x_tpp = torch.randn(6, 2, generator=_gen(17), dtype=torch.float64)
    t, t_pp = torch.tensor([999, 800, 500, 200, 50, 49]), torch.tensor([499, 600, 250, 100, 0, -1])
    x0 = PD.progressive_target(x_t, x_tpp, t, t_pp, S)
    ab = S.alpha_bar_at(t)[:, None]
    eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
    assert torch.allclose(sampling.ddim_step(x_t, eps, t, t_pp, S, x0=x0), x_tpp, atol=1e-8)
    assert torch.allclose(x0[-1], x_tpp[-1])                         # to the clean end: the point itself


def test_progressive_distillation_halves_steps_and_matches_its_teacher():
    """Rounds 8 → 4 → 2 from DDIM-8 on the exact ε. Each student is tied to its teacher (the previous round): the
    2-step student lands within 0.1 of where its 4-step teacher does from the same noise (mean distance; the ring
    has radius 2), while that teacher run with 2 steps itself is off by more than 3× as much. The first round
    starts from scratch and is only checked to improve."""
    oracle = GMM.oracle_model(S)
    data = GMM.sample(4096, generator=_gen(18))[0].float()
    torch.manual_seed(0)
    student = C.Denoiser(MLPDenoiser(dim=2, hidden=64, depth=3), S, sigma_data=SIGMA_DATA_2D, head="raw")
    x_T = torch.randn(500, 2, generator=_gen(19))
    before = sampling.ddim_sample(student, x_T, S, steps=4, progress=False)
    cfg = C.DistillConfig(steps=200, batch_size=256, lr=3e-3, warmup=20, p_uncond=0.0, clip_denoised=False, seed=0)
    rounds = PD.progressive_distillation(oracle, S, data, None, start_steps=8, end_steps=2, config=cfg,
                                        student=student, progress=False, device="cpu")
    assert [r["steps"] for r in rounds] == [4, 2]
    teacher8 = sampling.ddim_sample(oracle, x_T.double(), S, steps=8, progress=False).float()
    four = sampling.ddim_sample(rounds[0]["model"], x_T, S, steps=4, progress=False)
    assert (four - teacher8).norm(dim=1).mean() < 0.9 * (before - teacher8).norm(dim=1).mean()
    two = sampling.ddim_sample(rounds[1]["model"], x_T, S, steps=2, progress=False)
    naive = sampling.ddim_sample(rounds[0]["model"], x_T, S, steps=2, progress=False)
    err, err_naive = (two - four).norm(dim=1).mean(), (naive - four).norm(dim=1).mean()
    assert err < 0.1 and err_naive > 3 * err, (err, err_naive)



def test_bad_input_gets_clear_errors():
    data = GMM.sample(64, generator=_gen(20))[0].float()
    linear_teacher = GMM.oracle_model(NoiseSchedule.linear(1000))
    with pytest.raises(ValueError, match="schedule"):
        PD.progressive_distillation(linear_teacher, S, data, start_steps=4, end_steps=2,
                                    student=C.Denoiser(MLPDenoiser(), S, head="raw"), progress=False)
    with pytest.raises(ValueError, match="end_steps"):
        PD.progressive_distillation(GMM.oracle_model(S), S, data, start_steps=6, end_steps=4,
                                    student=C.Denoiser(MLPDenoiser(), S, head="raw"), progress=False)
