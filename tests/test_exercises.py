"""The exercise checker: every hidden solution passes its check, typical mistakes fail it, and the
Heun reference is a genuine second-order solver (checked against a float64 RK4 reference)."""
import math

import pytest
import torch

from diffusion_course import evaluation, exercises, gmm, schedules


def _solution_fn(name):
    namespace = {"torch": torch, "math": math}
    exec(exercises.SOLUTIONS[name], namespace)
    fns = [v for k, v in namespace.items() if k.startswith("my_")]
    assert fns
    return fns[0] if len(fns) == 1 else tuple(fns)   # e.g. "boundary" takes (my_c_skip, my_c_out)


@pytest.mark.parametrize("name", sorted(exercises.SOLUTIONS))
def test_every_solution_passes_its_check(name, capsys):
    assert exercises.check(_solution_fn(name), name)
    assert "✅" in capsys.readouterr().out


def test_every_check_has_a_solution_and_solution_prints(capsys):
    assert set(exercises.SOLUTIONS) == set(exercises.CHECKS) | set(exercises.PROPERTY_CHECKS)
    exercises.solution("ddim_step")
    assert "def my_ddim_step" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown exercise"):
        exercises.solution("nope")
    with pytest.raises(ValueError, match="available"):
        exercises.check(lambda: None, "nope")


def _wrong_answers():
    """Mistakes a learner makes, one or more per exercise; each must fail."""
    return {
        "q_sample": [lambda x0, t, schedule, noise: x0,
                     lambda x0, t, schedule, noise: schedule.alpha_bar[t].float().reshape(-1, 1, 1, 1) * x0
                     + (1 - schedule.alpha_bar[t].float()).reshape(-1, 1, 1, 1) * noise],   # no square roots
        "loss": [lambda model, x0, t, noise, schedule: (noise - model(x0, t)).pow(2).mean(),    # forgot to noise
                 lambda model, x0, t, noise, schedule: (noise - model(
                     exercises.forward.q_sample(x0, t, schedule, noise), t)).pow(2).sum()],      # sum, not mean
        "perfect_denoiser": [
            # forgot the √ᾱ in front of the training images
            lambda x_t, t, data, schedule: (torch.softmax(
                -torch.cdist(x_t.flatten(1), data.flatten(1)) ** 2
                / (2 * (1 - schedule.alpha_bar[t].float()[:, None])), 1) @ data.flatten(1)).reshape(x_t.shape),
            lambda x_t, t, data, schedule: data[:x_t.shape[0]],
        ],
        "v_target": [lambda x0, t, schedule, noise: noise],
        "ddim_step": [lambda x_t, eps, t, t_prev, schedule: x_t],
        "heun_step": [
            # Euler only (that is DDIM): wrong wherever the second evaluation matters
            lambda model, x_t, t, t_prev, schedule: exercises.sampling.ddim_step(
                x_t, model(x_t, torch.full((x_t.shape[0],), t)), t, t_prev, schedule),
        ],
        "cfg": [lambda eps_uncond, eps_cond, scale: eps_cond],
        "rescale": [
            # std over the whole batch instead of per sample
            lambda eps_uncond, eps_cond, scale, phi: (lambda g: phi * g * eps_cond.std() / g.std() + (1 - phi) * g)(
                eps_uncond + scale * (eps_cond - eps_uncond)),
            lambda eps_uncond, eps_cond, scale, phi: eps_uncond + scale * (eps_cond - eps_uncond),
        ],
        "kl": [lambda mean, logvar: 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).flatten(1).mean(1),   # mean, not sum
               lambda mean, logvar: 0.5 * (mean ** 2 + logvar - 1 - logvar.exp()).flatten(1).sum(1)],  # σ² and log σ² swapped
        "scale_factor": [lambda latents: 1 / latents[:16].std(),                 # one batch, not the whole set
                         lambda latents: latents.std()],                         # std, not 1/std
        "patchify": [lambda x, p: x.reshape(x.shape[0], -1, p * p * x.shape[1]),  # raw reshape mixes patches
                     lambda x, p: x.unfold(2, p, p).unfold(3, p, p).reshape(x.shape[0], -1, p * p * x.shape[1])],
        "reverse_sde_step": [lambda x, score, drift, g, dt, noise: x + (drift + g ** 2 * score) * dt + g * (-dt) ** 0.5 * noise,
                             lambda x, score, drift, g, dt, noise: x + (drift - g ** 2 * score) * dt],   # no noise
    }


@pytest.mark.parametrize("name", sorted(exercises.CHECKS))
def test_typical_mistakes_fail(name, capsys):
    for wrong in _wrong_answers()[name]:
        assert not exercises.check(wrong, name)
        out = capsys.readouterr().out
        assert "❌" in out and "solution(" in out


def test_a_crashing_answer_is_reported_not_raised(capsys):
    def boom(x0, t, schedule, noise):
        raise RuntimeError("bad shapes")

    assert not exercises.check(boom, "q_sample")
    assert "RuntimeError: bad shapes" in capsys.readouterr().out


def test_heun_is_second_order_on_the_exact_ode():
    s = schedules.NoiseSchedule.cosine(1000)
    mix = gmm.GaussianMixture.ring(k=4, radius=1.5, std=0.3)
    oracle = mix.oracle_model(s)
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t_hi, t_lo = 500, 200
    ref, _ = evaluation.ode_reference(mix, x, s, t_start=t_hi, t_end=t_lo, steps=400)
    errs = {}
    for n in (4, 8):
        ts = torch.linspace(t_hi, t_lo, n + 1).round().long().tolist()
        heun, euler = x, x
        for a, b in zip(ts[:-1], ts[1:]):
            heun = exercises.heun_step(oracle, heun, a, b, s)
            euler = exercises.sampling.ddim_step(euler, oracle(euler, torch.full((200,), a)), a, b, s)
        errs[n] = ((heun - ref).norm(dim=1).mean().item(), (euler - ref).norm(dim=1).mean().item())
    # halving the step: Heun's error falls ≈4× (second order), Euler's ≈2× (first order)
    assert errs[4][0] / errs[8][0] > 3.0
    assert 1.5 < errs[4][1] / errs[8][1] < 2.7
    assert errs[8][0] < errs[8][1] / 5


def _interpolate_linearly_in_flops(curves, flops):
    """best_at read on a linear FLOPs axis (the plot's axis is logarithmic)."""
    best, best_loss = None, float("inf")
    for name, curve in curves.items():
        xs, ys = [p[1] for p in curve], [p[2] for p in curve]
        if not xs[0] <= flops <= xs[-1]:
            continue
        k = max(i for i in range(len(xs)) if xs[i] <= flops)
        loss = ys[k] if k == len(xs) - 1 else ys[k] + (ys[k + 1] - ys[k]) * (flops - xs[k]) / (xs[k + 1] - xs[k])
        if loss < best_loss:
            best, best_loss = name, loss
    return best


@pytest.mark.parametrize("name, wrong", [
    ("best_at", _interpolate_linearly_in_flops),
    ("best_at", lambda curves, flops: min(curves, key=lambda n: curves[n][-1][2])),      # the lowest end, at any budget
    ("time_map", lambda ab: (1 - ab.sqrt(), torch.ones_like(ab))),                      # t = 1 − α, no rescaling
    ("time_map", lambda ab: ((1 - ab).sqrt(), 1 / ab.sqrt())),                         # σ as time, 1/α as scale
    ("one_step_exact", lambda x1, mixture: torch.zeros_like(x1)),                       # the origin, not the data mean
    ("one_step_exact", lambda x1, mixture: mixture.means.mean(0).expand_as(x1)),        # unweighted mean of the modes
    ("snr_half", 500),                                                                  # forgets the offset s
    ("snr_half", "about half"),
    ("eps_from_x0_error", lambda e, ab: e * (1 - ab) / ab),                             # SNR upside down
    ("eps_from_x0_error", lambda e, ab: e * math.sqrt(ab / (1 - ab))),                  # √SNR: the error, not its square
    ("error_halving", (2, 4)),                                                          # the distance, not its square
    ("error_halving", 4),
    ("negative_collapse", 0),                                                           # "no guidance" is not scale 0
    ("log_snr_shift", lambda c: math.log(c)),                                           # forgets the square
    ("log_snr_shift", lambda c: c ** 2),
    ("bpd_offset", lambda nll: nll / math.log(2)),                                      # no change of variables
    ("bpd_offset", lambda nll: (nll - math.log(127.5)) / math.log(2)),                  # the sign of the Jacobian
])
def test_property_exercises_reject_typical_mistakes(name, wrong, capsys):
    assert not exercises.check(wrong, name)
    assert "❌" in capsys.readouterr().out


@pytest.mark.parametrize("name, right", [
    ("snr_half", 496), ("eps_from_x0_error", lambda e, ab: e * ab / (1 - ab)), ("error_halving", (4, 16)),
    ("negative_collapse", 1.0), ("log_snr_shift", lambda c: 2 * math.log(c)),
    ("bpd_offset", lambda nll: (nll + math.log(127.5)) / math.log(2)),
])
def test_prediction_exercises_accept_the_reasoned_answer(name, right, capsys):
    assert exercises.check(right, name)
    assert "✅" in capsys.readouterr().out
