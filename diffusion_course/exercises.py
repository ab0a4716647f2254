"""Automatic checks for the exercises: run the learner's function against the package's.

    def my_q_sample(x0, t, schedule, noise): ...
    dc.exercises.check(my_q_sample, "q_sample")      # prints ✅ or what differs, returns True/False

Each check feeds both implementations the same seeded inputs (several batch sizes, timesteps at
both ends of the schedule) and compares the outputs to a tolerance. The solutions are not in the
notebooks: ``dc.exercises.solution("q_sample")`` prints one when you want it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import forward, sampling
from .schedules import NoiseSchedule


def _cases_forward(seed: int):
    g = torch.Generator().manual_seed(seed)
    for schedule in (NoiseSchedule.cosine(1000), NoiseSchedule.linear(1000)):
        for B in (1, 4):
            x0 = torch.rand(B, 1, 8, 8, generator=g) * 2 - 1
            t = torch.randint(0, 1000, (B,), generator=g)
            t[0] = 0 if B == 1 else 999
            noise = torch.randn(x0.shape, generator=g)
            yield dict(x0=x0, t=t, schedule=schedule, noise=noise)


def _cases_step(seed: int):
    g = torch.Generator().manual_seed(seed)
    s = NoiseSchedule.cosine(1000)
    for t, t_prev in ((999, 979), (500, 480), (20, -1), (1, 0)):
        x_t = torch.randn(3, 1, 8, 8, generator=g)
        eps = torch.randn(3, 1, 8, 8, generator=g)
        yield dict(x_t=x_t, eps=eps, t=torch.full((3,), t), t_prev=torch.full((3,), t_prev), schedule=s)


def _cases_cfg(seed: int):
    g = torch.Generator().manual_seed(seed)
    for scale in (0.0, 1.0, 3.0, 7.5):
        yield dict(eps_uncond=torch.randn(2, 1, 4, 4, generator=g), eps_cond=torch.randn(2, 1, 4, 4, generator=g),
                   scale=scale)


def _cases_sde_step(seed: int):
    g = torch.Generator().manual_seed(seed)
    for B, dt in ((1, -0.01), (4, -0.1), (3, -1e-3)):
        yield dict(x=torch.randn(B, 2, generator=g), score=torch.randn(B, 2, generator=g),
                   drift=torch.randn(B, 2, generator=g), g=torch.rand(B, 1, generator=g) * 3, dt=dt,
                   noise=torch.randn(B, 2, generator=g))


def _sde_step_reference(x, score, drift, g, dt, noise):
    # reverse-time SDE, Euler–Maruyama (Song et al. 2021, Eq. 6); dt < 0 runs time backwards
    return x + (drift - g**2 * score) * dt + g * (-dt) ** 0.5 * noise


def _cfg_reference(eps_uncond, eps_cond, scale):
    from .guidance import cfg_combine

    return cfg_combine(eps_uncond, eps_cond, scale)


class _FixedOutputs(torch.nn.Module):
    """A stand-in 'network' whose doubled-batch call returns given (unconditional, conditional) outputs."""
    num_classes = 2

    def __init__(self, eps_uncond, eps_cond):
        super().__init__()
        self.out = torch.cat([eps_uncond, eps_cond])

    def forward(self, x, t, cond=None):
        return self.out


def _rescale_reference(eps_uncond, eps_cond, scale, phi):
    """The package's guidance rescale (``guidance.classifier_free(..., rescale=phi)``) on fixed outputs."""
    from .guidance import classifier_free

    B = eps_cond.shape[0]
    guided = classifier_free(_FixedOutputs(eps_uncond, eps_cond), torch.zeros(B, dtype=torch.long), scale,
                             rescale=phi)
    return guided(torch.zeros_like(eps_cond), torch.zeros(B, dtype=torch.long))


def _cases_rescale(seed: int):
    g = torch.Generator().manual_seed(seed)
    for scale, phi in ((3.0, 0.7), (7.5, 1.0), (7.5, 0.3), (1.5, 0.7)):
        # different spreads per sample, so a std over the whole batch (instead of per sample) is caught
        spread = torch.tensor([0.5, 2.0, 1.0]).reshape(3, 1, 1, 1)
        yield dict(eps_uncond=torch.randn(3, 1, 4, 4, generator=g) * spread,
                   eps_cond=torch.randn(3, 1, 4, 4, generator=g) * spread, scale=scale, phi=phi)


def _toy_eps_model(x, t):
    """A fixed, smooth stand-in for a trained ε-network (any deterministic function of x and t would do)."""
    return torch.tanh(0.8 * x + 0.3) * (0.5 + t.to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)) / 2000)


def _cases_loss(seed: int):
    g = torch.Generator().manual_seed(seed)
    for schedule in (NoiseSchedule.cosine(1000), NoiseSchedule.linear(1000)):
        for B in (2, 5):
            x0 = torch.rand(B, 1, 6, 6, generator=g) * 2 - 1
            t = torch.randint(0, 1000, (B,), generator=g)
            t[0] = 999 if B == 2 else 0
            yield dict(model=_toy_eps_model, x0=x0, t=t, noise=torch.randn(x0.shape, generator=g), schedule=schedule)


def _loss_reference(model, x0, t, noise, schedule):
    x_t = forward.q_sample(x0, t, schedule, noise)
    return (noise - model(x_t, t)).pow(2).mean()


def _cases_denoiser(seed: int):
    g = torch.Generator().manual_seed(seed)
    s = NoiseSchedule.cosine(1000)
    data = torch.rand(64, 1, 5, 5, generator=g) * 2 - 1
    for t_vals in ((999, 600), (300, 100, 20), (5,)):
        t = torch.tensor(t_vals)
        x0 = data[torch.randint(0, 64, (len(t_vals),), generator=g)]
        x_t = forward.q_sample(x0, t, s, torch.randn(x0.shape, generator=g))
        yield dict(x_t=x_t, t=t, data=data, schedule=s)


def _denoiser_reference(x_t, t, data, schedule):
    return forward.ideal_denoiser(x_t, t, data, schedule)


def _cases_heun(seed: int):
    from .gmm import GaussianMixture

    s = NoiseSchedule.cosine(1000)
    mix = GaussianMixture.ring(k=4, radius=1.5, std=0.2)
    oracle = mix.oracle_model(s)
    g = torch.Generator().manual_seed(seed)
    for t, t_prev in ((999, 900), (600, 500), (300, 250), (40, 0), (20, -1)):
        yield dict(model=oracle, x_t=torch.randn(6, 2, generator=g, dtype=torch.float64), t=t, t_prev=t_prev,
                   schedule=s)


def heun_step(model: Callable[..., torch.Tensor], x_t: torch.Tensor, t: int, t_prev: int,
              schedule: NoiseSchedule) -> torch.Tensor:
    """One Heun (second-order) step of the probability-flow ODE, x_t → x_{t_prev}  (Karras et al. 2022, Alg. 1).

    In the variables y = x/√ᾱ and ρ = √((1−ᾱ)/ᾱ) the ODE is dy/dρ = ε̂(x, t), so
        d₁ = ε̂(x_t, t),  ỹ = y + (ρ' − ρ) d₁                         (Euler — exactly DDIM's η = 0 step)
        d₂ = ε̂(√ᾱ' ỹ, t'),  y' = y + (ρ' − ρ)(d₁ + d₂)/2              (the trapezoid correction)
    and x_{t'} = √ᾱ' y'. The step to the clean end (t' = −1, ρ' = 0) stays Euler: ε̂ is undefined there.
    """
    B = x_t.shape[0]
    ab, ab_prev = (float(v) for v in schedule.alpha_bar_at(torch.tensor([t, t_prev])))
    rho, rho_prev = ((1 - ab) / ab) ** 0.5, ((1 - ab_prev) / ab_prev) ** 0.5
    y = x_t / ab ** 0.5
    d1 = model(x_t, torch.full((B,), t, dtype=torch.long))
    y_euler = y + (rho_prev - rho) * d1
    if t_prev < 0:
        return y_euler
    d2 = model(ab_prev ** 0.5 * y_euler, torch.full((B,), t_prev, dtype=torch.long))
    return ab_prev ** 0.5 * (y + (rho_prev - rho) * (d1 + d2) / 2)


# name -> (reference, case generator, description of the expected signature)
CHECKS: dict[str, tuple[Callable, Callable, str]] = {
    "q_sample": (lambda x0, t, schedule, noise: forward.q_sample(x0, t, schedule, noise), _cases_forward,
                 "q_sample(x0, t, schedule, noise) -> x_t"),
    "ddim_step": (lambda x_t, eps, t, t_prev, schedule: sampling.ddim_step(x_t, eps, t, t_prev, schedule),
                  _cases_step, "ddim_step(x_t, eps, t, t_prev, schedule) -> x_prev   (eta = 0; t_prev = -1 means ᾱ = 1)"),
    "v_target": (lambda x0, t, schedule, noise: forward.v_target(x0, noise, t, schedule), _cases_forward,
                 "v_target(x0, t, schedule, noise) -> v = √ᾱ·noise − √(1−ᾱ)·x0"),
    "cfg": (_cfg_reference, _cases_cfg, "cfg(eps_uncond, eps_cond, scale) -> guided eps"),
    "reverse_sde_step": (_sde_step_reference, _cases_sde_step,
                         "reverse_sde_step(x, score, drift, g, dt, noise) -> x after one Euler–Maruyama step (dt < 0)"),
    "rescale": (_rescale_reference, _cases_rescale,
                "rescale(eps_uncond, eps_cond, scale, phi) -> guided eps with its per-sample std pulled back"),
    "loss": (_loss_reference, _cases_loss, "loss(model, x0, t, noise, schedule) -> scalar mean ε-MSE"),
    "perfect_denoiser": (_denoiser_reference, _cases_denoiser,
                         "perfect_denoiser(x_t, t, data, schedule) -> E[x0 | x_t] over the rows of data"),
    "heun_step": (heun_step, _cases_heun, "heun_step(model, x_t, t, t_prev, schedule) -> x_prev   (ints t, t_prev; "
                  "t_prev = -1 means ᾱ = 1)"),
}

# Solutions, shown only on request (``solution(name)``), so that the notebooks never show them beside the task.
SOLUTIONS: dict[str, str] = {
    "q_sample": """\
def my_q_sample(x0, t, schedule, noise):
    ab = schedule.alpha_bar[t].to(x0.dtype).reshape(-1, 1, 1, 1)   # (B,) -> (B, 1, 1, 1), float64 -> x0's dtype
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise""",
    "perfect_denoiser": """\
def my_perfect_denoiser(x_t, t, data, schedule):
    ab = schedule.alpha_bar[t].float()[:, None]                        # (B, 1)
    d2 = torch.cdist(x_t.flatten(1), ab.sqrt()[:, :, None] * 0 + data.flatten(1)[None] * ab.sqrt()[:, :, None]).squeeze(1) ** 2 \
        if False else ((x_t.flatten(1)[:, None, :] - ab.sqrt()[:, :, None] * data.flatten(1)[None]) ** 2).sum(-1)
    w = torch.softmax(-d2 / (2 * (1 - ab)), dim=1)                      # (B, N): Bayes' rule, uniform prior
    return (w @ data.flatten(1)).reshape(x_t.shape)""",
    "loss": """\
def my_loss(model, x0, t, noise, schedule):
    ab = schedule.alpha_bar[t].to(x0.dtype).reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise                     # one jump to x_t (chapter 1)
    return (noise - model(x_t, t)).pow(2).mean()                       # regress the noise""",
    "v_target": """\
def my_v_target(x0, t, schedule, noise):
    ab = schedule.alpha_bar[t].to(x0.dtype).reshape(-1, *[1] * (x0.ndim - 1))
    return ab.sqrt() * noise - (1 - ab).sqrt() * x0""",
    "ddim_step": """\
def my_ddim_step(x_t, eps, t, t_prev, schedule):
    ab = schedule.alpha_bar_at(t).to(x_t.dtype).reshape(-1, 1, 1, 1)
    ab_prev = schedule.alpha_bar_at(t_prev).to(x_t.dtype).reshape(-1, 1, 1, 1)
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()                     # the model's guess of the clean image
    return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps            # re-noise it to the previous level""",
    "heun_step": """\
def my_heun_step(model, x_t, t, t_prev, schedule):
    B = x_t.shape[0]
    ab, ab_prev = (float(v) for v in schedule.alpha_bar_at(torch.tensor([t, t_prev])))
    rho, rho_prev = ((1 - ab) / ab) ** 0.5, ((1 - ab_prev) / ab_prev) ** 0.5
    y = x_t / ab ** 0.5
    d1 = model(x_t, torch.full((B,), t))
    y_euler = y + (rho_prev - rho) * d1                                 # Euler = DDIM
    if t_prev < 0:
        return y_euler                                                  # no ε̂ at the clean end
    d2 = model(ab_prev ** 0.5 * y_euler, torch.full((B,), t_prev))
    return ab_prev ** 0.5 * (y + (rho_prev - rho) * (d1 + d2) / 2)""",
    "cfg": """\
def my_cfg(eps_uncond, eps_cond, scale):
    return eps_uncond + scale * (eps_cond - eps_uncond)""",
    "rescale": """\
def my_rescale(eps_uncond, eps_cond, scale, phi):
    guided = eps_uncond + scale * (eps_cond - eps_uncond)
    dims = tuple(range(1, guided.ndim))                                 # per sample, not over the batch
    ratio = eps_cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return phi * guided * ratio + (1 - phi) * guided""",
}


def solution(name: str) -> None:
    """Print a solution to exercise ``name`` (try it yourself first)."""
    if name not in SOLUTIONS:
        raise ValueError(f"unknown exercise {name!r}; available: {sorted(SOLUTIONS)}")
    print(SOLUTIONS[name])


def check(fn: Callable, name: str, atol: float = 1e-4, seed: int = 0, verbose: bool = True) -> bool:
    """Compare ``fn`` with the package's implementation of ``name`` on seeded inputs (or, for the exercises in
    ``PROPERTY_CHECKS``, check the properties any correct answer has)."""
    if name not in CHECKS and name not in PROPERTY_CHECKS:
        raise ValueError(f"unknown exercise {name!r}; available: {sorted([*CHECKS, *PROPERTY_CHECKS])}")
    try:
        ok = PROPERTY_CHECKS[name](fn, verbose) if name in PROPERTY_CHECKS else _check(fn, name, atol, seed, verbose)
    except Exception as e:  # an answer that cannot even be compared (a meta tensor, another device…) fails
        if verbose:
            print(f"❌ {name}: your answer could not be compared with the reference ({type(e).__name__}: {e})")
        ok = False
    if not ok and verbose and name in SOLUTIONS:
        print(f"   (stuck? dc.exercises.solution({name!r}) prints a solution)")
    return ok


def _check(fn: Callable, name: str, atol: float, seed: int, verbose: bool) -> bool:
    reference, cases, signature = CHECKS[name]
    for i, kwargs in enumerate(cases(seed)):
        expected = reference(**kwargs)
        try:
            got = fn(**kwargs)
        except Exception as e:  # the learner's code: report, don't crash the notebook
            if verbose:
                print(f"❌ {name}: your function raised {type(e).__name__}: {e}\n   expected signature: {signature}")
            return False
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            if verbose:
                print(f"❌ {name}: expected a tensor of shape {tuple(expected.shape)}, got "
                      f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__} (case {i})")
            return False
        if got.is_complex() or got.device.type == "meta":
            if verbose:
                kind = "complex" if got.is_complex() else "meta (value-less)"
                print(f"❌ {name}: expected real numbers, got a {kind} tensor of dtype {got.dtype} (case {i})")
            return False
        err = (got.double() - expected.double()).abs().max().item()
        if not err <= atol:
            if verbose:
                where = {k: (v.tolist() if isinstance(v, torch.Tensor) and v.numel() <= 4 else
                             (v.name if isinstance(v, NoiseSchedule) else v if not isinstance(v, torch.Tensor) else
                              f"tensor{tuple(v.shape)}")) for k, v in kwargs.items()}
                print(f"❌ {name}: max abs difference {err:.3g} > {atol:g} on case {i} with inputs {where}")
            return False
    if verbose:
        print(f"✅ {name}: matches the reference on all cases")
    return True


# --------------------------------------------------------------------------- chapter 5: latent diffusion
def _cases_kl(seed: int):
    g = torch.Generator().manual_seed(seed)
    for shape in ((1, 4, 7, 7), (3, 4, 7, 7), (2, 2, 3, 3)):
        yield dict(mean=torch.randn(shape, generator=g) * 2, logvar=torch.randn(shape, generator=g) * 3 - 2)
    yield dict(mean=torch.zeros(2, 4, 7, 7), logvar=torch.zeros(2, 4, 7, 7))    # the prior itself: KL = 0


def _kl_reference(mean, logvar):
    from .nn.autoencoder import kl_to_standard_normal

    return kl_to_standard_normal(mean, logvar)


def _cases_scale(seed: int):
    g = torch.Generator().manual_seed(seed)
    for scale, shift in ((5.0, 0.0), (0.2, 1.0), (1.0, -3.0)):
        yield dict(latents=torch.randn(64, 4, 7, 7, generator=g) * scale + shift)


def _scale_reference(latents):
    from .latent import fit_scale_factor

    return torch.tensor(fit_scale_factor(latents))


CHECKS["kl"] = (_kl_reference, _cases_kl, "kl(mean, logvar) -> (B,) KL(N(mean, exp(logvar)) ‖ N(0, I)) summed per sample")
CHECKS["scale_factor"] = (_scale_reference, _cases_scale,
                          "scale_factor(latents) -> 0-d tensor s such that latents·s has unit std over the whole set")
SOLUTIONS["kl"] = """\
def my_kl(mean, logvar):
    # ½ Σ (μ² + σ² − 1 − log σ²) over every latent dimension of each sample
    return 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)"""
SOLUTIONS["scale_factor"] = """\
def my_scale_factor(latents):
    return 1 / latents.double().std()          # the std over ALL numbers of the whole set (not per channel or batch)"""


# --------------------------------------------------------------------------- chapter 8: diffusion transformers
def _cases_patchify(seed: int):
    g = torch.Generator().manual_seed(seed)
    for shape, p in (((1, 1, 28, 28), 4), ((2, 3, 8, 8), 2), ((2, 4, 7, 7), 1), ((1, 2, 12, 12), 6)):
        yield dict(x=torch.randn(shape, generator=g), p=p)


def _patchify_reference(x, p):
    from .nn.dit import patchify

    return patchify(x, p)


CHECKS["patchify"] = (_patchify_reference, _cases_patchify,
                      "patchify(x, p) -> (B, (H/p)·(W/p), p·p·C) tokens, patches row-major, each flattened (row, col, channel)")
SOLUTIONS["patchify"] = """\
def my_patchify(x, p):
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p)              # split each axis into (patch index, offset in the patch)
    x = x.permute(0, 2, 4, 3, 5, 1)                        # (B, rows, cols, p, p, C)
    return x.reshape(B, (H // p) * (W // p), p * p * C)"""

SOLUTIONS.setdefault("reverse_sde_step", """\
def my_reverse_sde_step(x, score, drift, g, dt, noise):
    # reverse-time SDE dx = [f(x, t) − g² ∇log p_t(x)] dt + g dw̄ (Song et al. 2021, Eq. 6), Euler–Maruyama with dt < 0
    return x + (drift - g ** 2 * score) * dt + g * (-dt) ** 0.5 * noise""")


# --------------------------------------------------------------------------- chapter 7: consistency models
def _check_boundary(fns, verbose: bool) -> bool:
    skip_fn, out_fn = fns
    problems = []
    for sd, sm in ((0.5, 0.0064), (1.4, 0.002), (0.5, 0.0)):
        sig = torch.cat([torch.tensor([sm]), torch.logspace(math.log10(max(sm, 1e-4)) + 0.01, 4.3, 60)]).double()
        try:
            cs = torch.as_tensor(skip_fn(sig, sd, sm), dtype=torch.float64)
            co = torch.as_tensor(out_fn(sig, sd, sm), dtype=torch.float64)
        except Exception as e:  # the learner's code: report, don't crash the notebook
            problems.append(f"your functions raised {type(e).__name__}: {e}")
            break
        if cs.shape != sig.shape or co.shape != sig.shape:
            problems.append(f"expected tensors of shape {tuple(sig.shape)} (one value per σ)")
            break
        if not (torch.isfinite(cs).all() and torch.isfinite(co).all()):
            problems.append(f"non-finite values (σ_data={sd}, σ_min={sm})")
        elif abs(cs[0] - 1) > 1e-9 or abs(co[0]) > 1e-9:
            problems.append(f"c_skip(σ_min)={cs[0]:.4g}, c_out(σ_min)={co[0]:.4g}; f(x, σ_min) = x needs 1 and 0")
        elif cs[-1].abs() > 0.01:
            problems.append(f"c_skip(2·10⁴)={cs[-1]:.3g}: at pure noise the input must not be passed through")
        elif co.abs().max() > 10 * sd or co[-1].abs() < 0.1 * sd:
            problems.append(f"c_out should stay of the order of σ_data={sd} at high noise (max |c_out| = {co.abs().max():.3g}, "
                            f"c_out(2·10⁴) = {co[-1]:.3g})")
    if verbose:
        print("✅ boundary: your c_skip/c_out satisfy f(x, σ_min) = x and stay bounded" if not problems
              else "❌ boundary: " + problems[0])
    return not problems


def _check_renoise(fn, verbose: bool) -> bool:
    from .consistency import renoise

    s = NoiseSchedule.cosine(1000)
    g = torch.Generator().manual_seed(0)
    for t in (999, 499, 250, 1):
        x0, z = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1, torch.randn(3, 1, 8, 8, generator=g)
        expected = renoise(x0, t, z, s, float(s.sigma[0]))
        try:
            got = fn(x0, t, z, s, float(s.sigma[0]))
        except Exception as e:
            if verbose:
                print(f"❌ renoise: your function raised {type(e).__name__}: {e}\n   expected renoise(x0, t, z, schedule, sigma_min)")
            return False
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-5):
            if verbose:
                print(f"❌ renoise: wrong result at t={t}" + ("" if isinstance(got, torch.Tensor) and got.shape == expected.shape
                                                              else " (shape or type)"))
            return False
    if verbose:
        print("✅ renoise: matches Alg. 1's re-noising on all cases")
    return True


def _check_boundary_values(answer: object, verbose: bool) -> bool:
    try:
        c_skip, c_out = (float(v) for v in answer)
    except (TypeError, ValueError):
        if verbose:
            print("❌ boundary_values: answer with two numbers, (c_skip, c_out) at σ = σ_min")
        return False
    ok = abs(c_skip - 1) < 1e-6 and abs(c_out) < 1e-6
    if verbose:
        print("✅ boundary_values: at σ_min the model must return its input: f = 1·x + 0·F" if ok else
              "❌ boundary_values: not quite — what must f(x, σ_min) equal, whatever the network F outputs?")
    return ok


def _check_student_cap(answer: object, verbose: bool) -> bool:
    ok = isinstance(answer, str) and answer.strip().lower().strip("()") == "b"
    if verbose:
        print("✅ student_cap: the loss only asks f to agree with itself one teacher step down the grid, so a perfect "
              "student reproduces the chain of those steps" if ok else
              "❌ student_cap: not that one — what does the loss compare f with, and what does that imply at its optimum?")
    return ok


# name -> checker(fn, verbose): exercises whose answer is right when it has the properties, not one exact value
PROPERTY_CHECKS: dict[str, Callable] = {"boundary": _check_boundary, "renoise": _check_renoise,
                                        "boundary_values": _check_boundary_values, "student_cap": _check_student_cap}
SOLUTIONS["boundary"] = """\
def my_c_skip(sigma, sigma_data, sigma_min):
    # 1 at σ_min (f(x, σ_min) = x), falling to 0 at high noise (Song et al. 2023, App. C)
    return sigma_data ** 2 / ((sigma - sigma_min) ** 2 + sigma_data ** 2)

def my_c_out(sigma, sigma_data, sigma_min):
    # 0 at σ_min, bounded by σ_data at high noise
    return sigma_data * (sigma - sigma_min) / (sigma_data ** 2 + sigma ** 2) ** 0.5

# dc.exercises.check((my_c_skip, my_c_out), "boundary")"""
SOLUTIONS["renoise"] = """\
def my_renoise(x0, t, z, schedule, sigma_min):
    ab = float(schedule.alpha_bar[int(t)])
    sigma2 = (1 - ab) / ab                                  # σ_t² in the VE coordinates y = x/√ᾱ
    y = x0 + max(sigma2 - sigma_min ** 2, 0.0) ** 0.5 * z   # x̂₀ sits at σ_min: add only the missing variance
    return ab ** 0.5 * y                                    # back to the VP coordinates x_t = √ᾱ·y"""
SOLUTIONS["boundary_values"] = """\
my_prediction = (1.0, 0.0)   # f(x, σ_min) = c_skip·x + c_out·F must be x whatever F is: c_skip = 1, c_out = 0"""
SOLUTIONS["student_cap"] = """\
my_answer = "b"   # the loss ties f at t_{n+1} to f one DDIM step down; at its optimum f follows that chain of steps"""


# --------------------------------------------------------------------------- chapter 8: adaLN-Zero, reading a scaling plot
def _first_step_gradients() -> str:
    """Which parameters of a freshly built DiT one loss gives a non-zero gradient, as the letter of chapter 8's E2:
    "a" all of them, "b" only adaLN modulation layers, "c" only the final linear layer, "d" none ("?" otherwise)."""
    from .nn.dit import DiT

    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():                       # building the model draws from the global RNG: leave it as it was
        model = DiT(input_size=4, patch=2, in_channels=2, dim=16, depth=2, heads=2, num_classes=3)
    x_t, noise = torch.randn(4, 2, 4, 4, generator=g), torch.randn(4, 2, 4, 4, generator=g)
    loss = (model(x_t, torch.tensor([10, 300, 600, 990]), torch.tensor([0, 1, 2, 3])) - noise).pow(2).mean()
    loss.backward()
    names = {n for n, _ in model.named_parameters()}
    moved = {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    if moved == names:
        return "a"
    if moved and all("adaLN_modulation" in n for n in moved):
        return "b"
    if moved == {"final.linear.weight", "final.linear.bias"}:
        return "c"
    return "d" if not moved else "?"


def _check_adaln_zero(answer: object, verbose: bool) -> bool:
    letter = answer.strip().lower().strip("()") if isinstance(answer, str) else None
    ok = letter is not None and letter == _first_step_gradients()    # the letter a real backward pass gives
    if verbose:
        print("✅ adaln_zero: every other gradient has to pass through a weight that is exactly 0 — the gates on the way "
              "into each block, the final layer on the way out — so only the final linear layer moves at step 1; "
              "from step 2 gradients reach the gates and the blocks open one residual branch at a time" if ok else
              "❌ adaln_zero: not that one — follow one gradient back from the loss: which weights does it cross, and "
              "what are they at initialisation? (answer with a letter, e.g. \"a\")")
    return ok


def _best_at_reference(curves: dict, flops: float) -> str | None:
    best, best_loss = None, math.inf
    for name, curve in curves.items():
        xs, ys = [math.log(p[1]) for p in curve], [p[2] for p in curve]
        x = math.log(flops)
        if x < xs[0] or x > xs[-1]:
            continue
        k = max(i for i in range(len(xs)) if xs[i] <= x)
        loss = ys[k] if k == len(xs) - 1 else ys[k] + (ys[k + 1] - ys[k]) * (x - xs[k]) / (xs[k + 1] - xs[k])
        if loss < best_loss:
            best, best_loss = name, loss
    return best


def _cases_best_at() -> list[tuple[dict, float]]:
    def curve(points):
        return [[100 * (i + 1), f, loss] for i, (f, loss) in enumerate(points)]

    sweep = {"small": curve([(1e9, 0.40), (2e9, 0.30), (4e9, 0.25)]),          # cheap, ends high
             "big": curve([(4e9, 0.35), (8e9, 0.22), (1.6e10, 0.18)])}         # dear, ends lowest
    crossing = {"fast-start": curve([(1e9, 0.30), (4e9, 0.28)]), "slow-start": curve([(1e9, 0.50), (4e9, 0.20)])}
    return [(sweep, 4e9),       # both measured: the small model is lower there, although "big" ends lower
            (sweep, 1.6e10),    # only "big" was trained this far
            (sweep, 3e9),       # between two points of "small"; "big" starts later
            (sweep, 1e8),       # nobody was measured at so little compute
            (crossing, 1.5e9),  # before the crossing
            (crossing, 2.5e9),  # between points: the nearest point says "slow-start", the lines say "fast-start"
            (crossing, 3.5e9),  # after the crossing
            (crossing, 2.9e9)]  # past the crossing on the log-FLOPs axis, before it on a linear one: read the plot's axis


def _check_best_at(fn: Callable, verbose: bool) -> bool:
    for i, (curves, flops) in enumerate(_cases_best_at()):
        expected = _best_at_reference(curves, flops)
        try:
            got = fn(curves, flops)
        except Exception as e:  # the learner's code: report, don't crash the notebook
            if verbose:
                print(f"❌ best_at: your function raised {type(e).__name__}: {e}\n   expected best_at(curves, flops) -> "
                      "a model's name, or None")
            return False
        if got != expected:
            if verbose:
                ranges = {k: f"{c[0][1]:.1e}–{c[-1][1]:.1e} FLOPs" for k, c in curves.items()}
                print(f"❌ best_at: at {flops:.1e} FLOPs with curves covering {ranges} the answer is {expected!r}, "
                      f"yours {got!r} (case {i})")
            return False
    if verbose:
        print("✅ best_at: you read each curve at the budget, only where it was measured")
    return True


PROPERTY_CHECKS["adaln_zero"] = _check_adaln_zero
PROPERTY_CHECKS["best_at"] = _check_best_at
SOLUTIONS["adaln_zero"] = """\
my_answer = "c"
# A fresh DiT's output is final.linear(...) with final.linear's weight = 0: the gradient reaching everything before it
# is that weight (transposed) times the output's gradient, i.e. 0. Inside the blocks the gates are 0 too. Only
# final.linear's own weight and bias see a non-zero gradient (the features feeding it are not 0). From step 2 on the
# output layer is non-zero, gradients reach the gates, and each block's branches open gradually from the identity.
# Without the zero init (plain adaLN, random gates) every block adds a random residual from step 0: the fresh network
# is a deep random function of its input, and the first updates are spent undoing it (DiT's Fig. 5: adaLN-Zero
# trained to a lower FID than adaLN with the same FLOPs).
# Check it: loss.backward() on a fresh DiT, then [n for n, p in model.named_parameters() if p.grad.abs().sum() > 0]"""
SOLUTIONS["best_at"] = """\
import math

def my_best_at(curves, flops):
    best, best_loss = None, math.inf
    for name, curve in curves.items():
        xs = [math.log(p[1]) for p in curve]               # the plot's log axis
        ys = [p[2] for p in curve]
        x = math.log(flops)
        if x < xs[0] or x > xs[-1]:
            continue                                       # this model was not measured at that budget
        k = max(i for i in range(len(xs)) if xs[i] <= x)   # the segment the budget falls in
        loss = ys[k] if k == len(xs) - 1 else ys[k] + (ys[k + 1] - ys[k]) * (x - xs[k]) / (xs[k + 1] - xs[k])
        if loss < best_loss:
            best, best_loss = name, loss
    return best"""


# --------------------------------------------------------------------------- chapter 9: flow matching
def _check_time_map(fn: Callable, verbose: bool) -> bool:
    """E1: (t, scale) with t = σ/(α + σ) and scale = 1/(α + σ), α = √ᾱ, σ = √(1 − ᾱ)."""
    g = torch.Generator().manual_seed(0)
    for i, ab in enumerate((torch.tensor([0.5]), torch.rand(6, generator=g, dtype=torch.float64) * 0.98 + 0.01,
                            torch.tensor([1.0 - 1e-6, 1e-6], dtype=torch.float64))):
        a, s = ab.sqrt(), (1 - ab).sqrt()
        want_t, want_scale = s / (a + s), 1 / (a + s)
        try:
            got_t, got_scale = fn(ab.clone())
            err = max(float((torch.as_tensor(got_t).double() - want_t).abs().max()),
                      float((torch.as_tensor(got_scale).double() - want_scale).abs().max()))
        except Exception as e:  # the learner's code: report, don't crash the notebook
            if verbose:
                print(f"❌ time_map: your function raised {type(e).__name__}: {e} (expected (t, scale) tensors)")
            return False
        if not err <= 1e-6:
            if verbose:
                print(f"❌ time_map: off by {err:.3g} on case {i} (ᾱ = {ab.tolist()[:3]}…); x_vp = α x₀ + σ ε — "
                      "divide by what to get (1 − t) x₀ + t ε?")
            return False
    if verbose:
        print("✅ time_map: t = σ/(α+σ) and x = x_vp/(α+σ); at ᾱ = 0.5 the two paths meet at t = 0.5")
    return True


def _check_one_step_exact(fn: Callable, verbose: bool) -> bool:
    """E2: one exact Euler step from t = 1 lands on x1 − v(x1, 1) = E[x₀], the data mean, for every x1."""
    from . import flow
    from .gmm import GaussianMixture

    g = torch.Generator().manual_seed(1)
    for i in range(3):
        K = 2 + i
        means = torch.randn(K, 2, generator=g, dtype=torch.float64) * 2 + torch.tensor([1.0, -0.5], dtype=torch.float64)
        w = torch.rand(K, generator=g, dtype=torch.float64) + 0.1
        mixture = GaussianMixture(means, torch.full((K,), 0.3, dtype=torch.float64), w / w.sum())
        x1 = torch.randn(5, 2, generator=g, dtype=torch.float64)
        want = x1 - flow.exact_velocity(mixture, x1, 1.0)
        try:
            got = torch.as_tensor(fn(x1.clone(), mixture)).double()
            err = float((got.expand_as(want) - want).abs().max())
        except Exception as e:  # the learner's code: report, don't crash the notebook
            if verbose:
                print(f"❌ one_step_exact: your function raised {type(e).__name__}: {e}")
            return False
        if not err <= 1e-6:
            if verbose:
                print(f"❌ one_step_exact: off by {err:.3g} on mixture {i}; at t = 1, x_t = ε — what does knowing ε "
                      "tell you about x₀?")
            return False
    if verbose:
        print("✅ one_step_exact: v(x, 1) = x − E[x₀], so one step sends every noise to the data mean Σ w_k μ_k — "
              "the blur of a one-step sample of a curved flow")
    return True


PROPERTY_CHECKS["time_map"] = _check_time_map
PROPERTY_CHECKS["one_step_exact"] = _check_one_step_exact
SOLUTIONS["time_map"] = """\
def my_time_map(alpha_bar):
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()   # x_vp = a x0 + s ε = (a + s) [(1 − t) x0 + t ε]
    return s / (a + s), 1 / (a + s)"""
SOLUTIONS["one_step_exact"] = """\
def my_one_step(x1, mixture):
    # at t = 1, x_t = ε exactly, so v(x1, 1) = E[ε − x0 | ε = x1] = x1 − E[x0]: one step lands on the data mean,
    # whatever the noise — the same blurry point for every sample
    mean = (mixture.weights[:, None] * mixture.means).sum(0)
    return mean.expand_as(x1).to(x1.dtype)"""


# --------------------------------------------------------------------------- predictions for chapters 1–6
# Each asks the learner to reason out a number (or a small function) before running anything; the check compares it
# with what the package computes, and the feedback names the idea, not the answer.
def _check_snr_half(answer: object, verbose: bool) -> bool:
    """Ch1: the first t of the cosine schedule (T = 1000) with ᾱ_t ≤ ½ — where signal and noise carry equal power."""
    want = int((NoiseSchedule.cosine(1000).alpha_bar <= 0.5).nonzero()[0])
    try:
        got = float(answer)
    except (TypeError, ValueError):
        got = math.nan
    ok = abs(got - want) <= 3
    if verbose:
        print(f"✅ snr_half: ᾱ_t = ½ where cos²(·) = ½·f(0) ≈ ½, i.e. (t/T + s)/(1 + s) ≈ ½: t = {want}" if ok else
              "❌ snr_half: not within 3 steps — ᾱ(t) = f(t)/f(0) with f = cos²(((t/T)+s)/(1+s)·π/2) and f(0) ≈ 1: "
              "for which angle is cos² = ½?")
    return ok


def _check_eps_from_x0_error(fn: Callable, verbose: bool) -> bool:
    """Ch2: an x₀-error e at noise level ᾱ is an ε-error of e·ᾱ/(1 − ᾱ) (ε̂ = (x_t − √ᾱ x̂₀)/√(1 − ᾱ))."""
    for ab, e in ((0.5, 0.01), (0.99, 0.02), (0.01, 0.3), (0.8, 0.0)):
        want = e * ab / (1 - ab)
        try:
            got = float(fn(e, ab))
        except Exception as err:  # the learner's code: report, don't crash the notebook
            if verbose:
                print(f"❌ eps_from_x0_error: your function raised {type(err).__name__}: {err}")
            return False
        if not abs(got - want) <= 1e-6 * max(1.0, abs(want)):
            if verbose:
                print(f"❌ eps_from_x0_error: for x₀-MSE {e} at ᾱ = {ab} you answered {got:.4g}; write ε̂ in terms of "
                      "x̂₀ and see what multiplies the x₀-error")
            return False
    if verbose:
        print("✅ eps_from_x0_error: MSE_ε = SNR(t)·MSE_x₀ with SNR = ᾱ/(1 − ᾱ) — the ε-loss is an SNR-weighted x₀-loss")
    return True


def _check_error_halving(answer: object, verbose: bool) -> bool:
    """Ch3: doubling the steps divides the squared error of an order-p solver by 2^(2p): DDIM 4, DPM-Solver++(2M) 16."""
    try:
        ddim, dpm = (float(v) for v in answer)
    except (TypeError, ValueError):
        if verbose:
            print("❌ error_halving: answer with two numbers, (DDIM's factor, DPM-Solver++(2M)'s factor)")
        return False
    ok = abs(ddim - 4) <= 0.5 and abs(dpm - 16) <= 2
    if verbose:
        print("✅ error_halving: order p means distance ∝ h^p, squared distance ∝ h^(2p): 2² = 4 and 2⁴ = 16" if ok else
              "❌ error_halving: not quite — an order-p solver's distance to the exact solution scales as (step size)^p; "
              "the plot shows the *squared* distance")
    return ok


def _check_negative_collapse(answer: object, verbose: bool) -> bool:
    """Ch4: ε = ε_neg + s(ε_c − ε_neg) with ε_neg = ε_c is ε_c, whatever s: plain conditional sampling, scale 1."""
    try:
        got = float(answer)
    except (TypeError, ValueError):
        got = math.nan
    ok = abs(got - 1) < 1e-9
    if verbose:
        print("✅ negative_collapse: ε_neg + s(ε_c − ε_neg) = ε_c when ε_neg = ε_c: guidance switches off (scale 1)" if ok
              else "❌ negative_collapse: substitute ε_neg = ε_c into the guided prediction — what is left of s?")
    return ok


def _check_log_snr_shift(fn: Callable, verbose: bool) -> bool:
    """Ch5: latents with standard deviation c instead of 1 multiply the signal by c: log-SNR rises by 2 ln c at every t."""
    for c in (1.0, 1.73, 0.5, 5.0):
        want = 2 * math.log(c)
        try:
            got = float(fn(c))
        except Exception as err:  # the learner's code: report, don't crash the notebook
            if verbose:
                print(f"❌ log_snr_shift: your function raised {type(err).__name__}: {err}")
            return False
        if not abs(got - want) <= 1e-6:
            if verbose:
                print(f"❌ log_snr_shift: for latent std {c} you answered {got:.4g}; SNR = ᾱ·Var(z₀)/(1 − ᾱ) — what does "
                      "Var(z₀) = c² do to its logarithm?")
            return False
    if verbose:
        print("✅ log_snr_shift: Δλ = ln c² = 2 ln c — with c = 1.73 every step sits 1.1 nats less noisy than the "
              "schedule intends")
    return True


def _check_bpd_offset(fn: Callable, verbose: bool) -> bool:
    """Ch6: nats per dimension of a density on x = k/127.5 − 1 → bits per dimension on the 8-bit grid:
    (nll + ln 127.5)/ln 2 (the change of variables x → k multiplies the density by 1/127.5 per dimension)."""
    for nll in (0.0, -2.5, 1.3, -4.0):
        want = (nll + math.log(127.5)) / math.log(2)
        try:
            got = float(fn(nll))
        except Exception as err:  # the learner's code: report, don't crash the notebook
            if verbose:
                print(f"❌ bpd_offset: your function raised {type(err).__name__}: {err}")
            return False
        if not abs(got - want) <= 1e-6:
            if verbose:
                print(f"❌ bpd_offset: for {nll} nats/dim you answered {got:.4g}; a pixel cell of width 1/127.5 in x is "
                      "width 1 in k — what does that do to the density, and to log₂?")
            return False
    if verbose:
        print(f"✅ bpd_offset: bits/dim = (nll + ln 127.5)/ln 2 — an offset of log₂ 127.5 = {math.log2(127.5):.2f} bits")
    return True


PROPERTY_CHECKS.update({"snr_half": _check_snr_half, "eps_from_x0_error": _check_eps_from_x0_error,
                        "error_halving": _check_error_halving, "negative_collapse": _check_negative_collapse,
                        "log_snr_shift": _check_log_snr_shift, "bpd_offset": _check_bpd_offset})
SOLUTIONS["snr_half"] = """\
# f(0) = cos²(s/(1+s)·π/2) ≈ 1, so ᾱ(t) ≈ ½ where the angle is π/4: (t/T + s)/(1 + s) = ½ → t/T = (1 − s)/2 ≈ 0.496
my_answer = 496"""
SOLUTIONS["eps_from_x0_error"] = """\
def my_eps_error(x0_mse, alpha_bar):
    # ε̂ = (x_t − √ᾱ x̂₀)/√(1 − ᾱ): an x₀-error δ becomes an ε-error −√ᾱ δ/√(1 − ᾱ)
    return x0_mse * alpha_bar / (1 - alpha_bar)"""
SOLUTIONS["error_halving"] = """\
my_answer = (4, 16)   # order 1 and order 2: squared distance ∝ (1/steps)^(2p)"""
SOLUTIONS["negative_collapse"] = """\
my_answer = 1   # ε_neg + s(ε_c − ε_neg) = ε_c: the guided sample is the plain conditional one"""
SOLUTIONS["log_snr_shift"] = """\
def my_log_snr_shift(latent_std):
    return 2 * math.log(latent_std)   # SNR = ᾱ c² / (1 − ᾱ): log-SNR + ln c²"""
SOLUTIONS["bpd_offset"] = """\
def my_bpd(nll_nats_per_dim):
    return (nll_nats_per_dim + math.log(127.5)) / math.log(2)"""
