"""Samplers: pure step functions, and one loop that drives them.

* ``ddpm_step`` — ancestral sampling from p(x_{t'}|x_t) = q(x_{t'}|x_t, x̂₀)  (DDPM Algorithm 2, Eqs. 6–7)
* ``ddim_step`` — the non-Markovian DDIM update with stochasticity η  (Song et al. 2021, Eq. 12)
* ``dpm_solver_2m_step`` — DPM-Solver++(2M), a second-order multistep solver of the probability-flow
  ODE in data-prediction form  (Lu et al. 2022, "DPM-Solver++", Algorithm 2)
* ``ddim_invert_step`` — deterministic DDIM run backwards, image → noise  (Song et al. 2021, Sec. 4.3)
* ``slerp`` — spherical interpolation between noise tensors, for latent interpolation

A model is any callable ``model(x, t) -> prediction`` (or ``model(x, t, cond)``) with t an integer
tensor (B,). Its output is ε unless it has an ``objective`` attribute of "x0" or "v".
Timestep index ``-1`` means the clean end, ᾱ = 1 (diffusers' ``set_alpha_to_one=True``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import forward, validate
from .schedules import NoiseSchedule

SPACINGS = ("leading", "trailing", "linspace")


# --------------------------------------------------------------------------- timesteps
def timesteps(T: int, steps: int, spacing: str = "trailing") -> torch.Tensor:
    """``steps`` descending integer timesteps in [0, T−1] (the spacings of Lin et al. 2023, Table 2).

    * ``"leading"``: 0, k, 2k, … with k = T // steps — never starts at T−1 (the noisiest step)
    * ``"trailing"``: T−1, T−1−k, … — always starts at T−1
    * ``"linspace"``: round(linspace(0, T−1, steps))
    """
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    T = int(T)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int with 1 <= steps <= T={T}, got {steps!r}")
    steps = int(steps)
    if spacing == "leading":
        ts = np.arange(0, steps) * (T // steps)
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64)[:steps] - 1
        ts = ts[::-1]
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round().astype(np.int64)
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return torch.from_numpy(np.ascontiguousarray(np.sort(ts)[::-1]).astype(np.int64))


# --------------------------------------------------------------------------- helpers
def _as_t(t, x: torch.Tensor) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        if t.dtype.is_floating_point:
            raise TypeError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.numel() == 1:
            return t.reshape(-1).expand(x.shape[0]).to(x.device)
        if t.shape != (x.shape[0],):
            raise ValueError(f"timesteps must be a scalar or have shape (B,)=({x.shape[0]},), got {tuple(t.shape)}")
        return t.to(x.device)
    if isinstance(t, (int, np.integer)):
        return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
    raise TypeError(f"timesteps must be an int or an integer tensor, got {type(t).__name__}")


def _alpha_bars(schedule: NoiseSchedule, t: torch.Tensor, t_prev: torch.Tensor, x: torch.Tensor):
    if int(t.min()) < 0 or int(t.max()) >= schedule.T:
        raise ValueError(f"t must be in [0, {schedule.T - 1}]")
    if int(t_prev.min()) < -1 or bool((t_prev >= t).any()):
        raise ValueError("t_prev must satisfy -1 <= t_prev < t")
    shape = (-1,) + (1,) * (x.ndim - 1)
    ab = schedule.alpha_bar_at(t).to(x.device, x.dtype).reshape(shape)
    ab_prev = schedule.alpha_bar_at(t_prev).to(x.device, x.dtype).reshape(shape)
    return ab, ab_prev


def _check_eta(eta) -> float:
    """η in [0, 1]: 0 is deterministic DDIM, 1 matches DDPM's variance; above 1 σ² would exceed 1 − ᾱ_{t'}."""
    return validate.real("eta", eta, low=0.0, high=1.0)


def _check_inputs(x_t, eps, noise=None, eps_name="eps") -> None:
    validate.float_tensor("x_t", x_t, min_ndim=1)
    if not isinstance(eps, torch.Tensor):
        raise TypeError(f"{eps_name} must be a torch.Tensor, got {type(eps).__name__}")
    if eps.shape != x_t.shape:
        raise ValueError(f"{eps_name} has shape {tuple(eps.shape)} but x_t has {tuple(x_t.shape)}")
    validate.finite(eps_name, eps)
    if noise is not None:
        validate.float_tensor("noise", noise)
        if noise.shape != x_t.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but x_t has {tuple(x_t.shape)}")


def _x0_from_eps(x_t, eps, ab):
    if bool((ab == 0).any()):
        raise forward._zero_snr_error("the sampler needs x̂₀ from an ε-prediction")
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Drawn on the CPU, so the same generator gives the same noise on every device.
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)


def predict_eps_x0(model: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
                   cond: torch.Tensor | None = None, clip_denoised: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the model and return (ε̂, x̂₀) whatever it predicts (its ``objective``: eps, x0 or v).

    With ``clip_denoised`` x̂₀ is clamped to [−1, 1] (or to [−c, c] when it is a number c) and ε̂ recomputed to match.
    """
    out = model(x, t, cond) if cond is not None else model(x, t)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"the model returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
    objective = getattr(model, "objective", "eps")
    out = out.to(x.dtype)
    if objective == "eps":
        eps, x0 = out, forward.eps_to_x0(x, out, t, schedule)
    elif objective == "x0":
        x0, eps = out, forward.x0_to_eps(x, out, t, schedule)
    elif objective == "v":
        x0, eps = forward.v_to_x0(x, out, t, schedule), forward.v_to_eps(x, out, t, schedule)
    else:
        raise ValueError(f"model.objective must be 'eps', 'x0' or 'v', got {objective!r}")
    if clip_denoised:
        # True clamps to the image range [−1, 1]; a number c clamps to [−c, c] (e.g. the range of scaled latents)
        bound = 1.0 if clip_denoised is True else float(clip_denoised)
        x0 = x0.clamp(-bound, bound)
        eps = forward.x0_to_eps(x, x0, t, schedule)
    return eps, x0


# --------------------------------------------------------------------------- step functions
def ddpm_step(x_t: torch.Tensor, eps: torch.Tensor, t: int | torch.Tensor, t_prev: int | torch.Tensor,
              schedule: NoiseSchedule, noise: torch.Tensor | None = None, variance: str = "beta_tilde",
              clip_denoised: bool = False, generator: torch.Generator | None = None,
              x0: torch.Tensor | None = None) -> torch.Tensor:
    """One ancestral step x_t → x_{t_prev} (DDPM Algorithm 2, generalised to any t_prev < t).

    With β' = 1 − ᾱ_t/ᾱ_{t'} (β_t when t' = t−1):
        x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t
        μ = √ᾱ_{t'} β'/(1−ᾱ_t) · x̂₀ + √(ᾱ_t/ᾱ_{t'}) (1−ᾱ_{t'})/(1−ᾱ_t) · x_t
        x_{t'} = μ + σ z,  σ² = β̃ = (1−ᾱ_{t'})/(1−ᾱ_t) β' ("beta_tilde") or β' ("beta");
    no noise is added on the last step (t' = −1). Pass the model's ``x0`` when it predicts x₀ or v:
    at ᾱ_t = 0 (zero terminal SNR) x̂₀ cannot be recovered from ε̂.
    """
    if variance not in {"beta_tilde", "beta"}:
        raise ValueError(f"variance must be 'beta_tilde' or 'beta', got {variance!r}")
    _check_inputs(x_t, eps, noise)
    t, t_prev = _as_t(t, x_t), _as_t(t_prev, x_t)
    ab, ab_prev = _alpha_bars(schedule, t, t_prev, x_t)
    beta = 1 - ab / ab_prev
    if x0 is None:
        x0 = _x0_from_eps(x_t, eps, ab)
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    var = (1 - ab_prev) / (1 - ab) * beta if variance == "beta_tilde" else beta
    if noise is None:
        noise = _noise_like(x_t, generator)
    last = (t_prev < 0).to(x_t.dtype).reshape(mean.shape[:1] + (1,) * (x_t.ndim - 1))
    return mean + (1 - last) * var.clamp(min=0).sqrt() * noise


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, t: int | torch.Tensor, t_prev: int | torch.Tensor,
              schedule: NoiseSchedule, eta: float = 0.0, noise: torch.Tensor | None = None, clip_denoised: bool = False,
              generator: torch.Generator | None = None, x0: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM step x_t → x_{t_prev} (Song et al. 2021, Eqs. 12 and 16).

        x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t
        σ = η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'})
        x_{t'} = √ᾱ_{t'} x̂₀ + √(1−ᾱ_{t'}−σ²) ε̂ + σ z
    η = 0 is deterministic (the same x_T always gives the same image); η = 1 matches DDPM's β̃.
    Pass the model's ``x0`` when it predicts x₀ or v: at ᾱ_t = 0 (zero terminal SNR) x̂₀ cannot be
    recovered from ε̂, while ε̂ = (x_t − √ᾱ x̂₀)/√(1−ᾱ) stays well defined.
    """
    eta = _check_eta(eta)
    _check_inputs(x_t, eps, noise)
    t, t_prev = _as_t(t, x_t), _as_t(t_prev, x_t)
    ab, ab_prev = _alpha_bars(schedule, t, t_prev, x_t)
    if x0 is None:
        x0 = _x0_from_eps(x_t, eps, ab)
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
    x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            noise = _noise_like(x_t, generator)
        x_prev = x_prev + sigma * noise
    return x_prev


# --------------------------------------------------------------------------- the loop
def objective_is_eps(model: object) -> bool:
    return getattr(model, "objective", "eps") == "eps"


Update = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
Trajectory = dict[str, torch.Tensor]  # {"t", "x_t", "x0_pred"}: what return_trajectory adds


@torch.no_grad()
def sample_loop(model: Callable[..., torch.Tensor], x_T: torch.Tensor, schedule: NoiseSchedule, ts: torch.Tensor,
                update: Update, cond: torch.Tensor | None = None, clip_denoised: bool = False, progress: bool = True,
                return_trajectory: bool = False,
                desc: str = "sampling") -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Run ``update(x, eps, x0_pred, t, t_prev, i) -> x_prev`` over the descending timesteps ``ts``.

    The last step goes to ``t_prev = -1`` (clean). With ``return_trajectory`` also returns a dict of
    CPU tensors ``{"t": (S,), "x_t": (S, B, ...), "x0_pred": (S, B, ...)}`` (the state before each step).
    """
    from tqdm.auto import tqdm

    if not isinstance(x_T, torch.Tensor) or x_T.ndim < 2:
        raise ValueError("x_T must be a batched tensor (B, ...)")
    validate.float_tensor("x_T", x_T)
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if cond is not None and (not isinstance(cond, torch.Tensor) or cond.shape[0] != x_T.shape[0]):
        raise ValueError(f"cond must be a tensor with batch size {x_T.shape[0]}")
    schedule_ts = ts.tolist()
    n_steps = len(schedule_ts)
    x = x_T
    traj = {"t": [], "x_t": [], "x0_pred": []}
    for i, t_int in enumerate(tqdm(schedule_ts, desc=desc, disable=not progress, leave=False)):
        t_prev_int = schedule_ts[i + 1] if i + 1 < len(schedule_ts) else -1
        t = torch.full((x.shape[0],), t_int, dtype=torch.long, device=x.device)
        t_prev = torch.full_like(t, t_prev_int)
        where = f"at step {i + 1} of {n_steps} (t={t_int})"
        eps, x0 = predict_eps_x0(model, x, t, schedule, cond, clip_denoised)
        validate.finite("the model's prediction", eps if objective_is_eps(model) else x0, where)
        if return_trajectory:
            traj["t"].append(t_int)
            traj["x_t"].append(x.detach().float().cpu())
            traj["x0_pred"].append(x0.detach().float().cpu())
        x = update(x, eps, x0, t, t_prev, i)
        validate.finite("the sample", x, f"after step {i + 1} of {n_steps} (t={t_int} -> {t_prev_int})")
    if return_trajectory:
        return x, {"t": torch.tensor(traj["t"]), "x_t": torch.stack(traj["x_t"]),
                   "x0_pred": torch.stack(traj["x0_pred"])}
    return x


def ddpm_sample(model: Callable[..., torch.Tensor], x_T: torch.Tensor, schedule: NoiseSchedule, *,
                steps: int | None = None, variance: str = "beta_tilde", spacing: str = "trailing",
                cond: torch.Tensor | None = None, generator: torch.Generator | None = None,
                clip_denoised: bool = False, progress: bool = True,
                return_trajectory: bool = False) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Ancestral DDPM sampling (Algorithm 2) from x_T, over all T steps (or ``steps`` strided ones)."""
    if steps is not None:
        validate.positive_int("steps", steps)  # 0 is an error, not "all T steps"
    ts = timesteps(schedule.T, schedule.T if steps is None else steps, spacing)

    def update(x, eps, x0, t, t_prev, i):
        return ddpm_step(x, eps, t, t_prev, schedule, _noise_like(x, generator), variance, clip_denoised, x0=x0)

    return sample_loop(model, x_T, schedule, ts, update, cond, clip_denoised, progress, return_trajectory,
                       desc="DDPM")


def ddim_sample(model: Callable[..., torch.Tensor], x_T: torch.Tensor, schedule: NoiseSchedule, *, steps: int = 50,
                eta: float = 0.0, spacing: str = "trailing", cond: torch.Tensor | None = None,
                generator: torch.Generator | None = None, clip_denoised: bool = False, progress: bool = True,
                return_trajectory: bool = False) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """DDIM sampling (Song et al. 2021) with ``steps`` model calls; deterministic when ``eta == 0``."""
    eta = _check_eta(eta)
    ts = timesteps(schedule.T, steps, spacing)

    def update(x, eps, x0, t, t_prev, i):
        noise = _noise_like(x, generator) if eta > 0 else None
        return ddim_step(x, eps, t, t_prev, schedule, eta, noise, clip_denoised, x0=x0)

    return sample_loop(model, x_T, schedule, ts, update, cond, clip_denoised, progress, return_trajectory,
                       desc=f"DDIM-{steps}")


# --------------------------------------------------------------------------- DPM-Solver++(2M)
def _alpha_sigma_lambda(schedule: NoiseSchedule, t: torch.Tensor):
    """α = √ᾱ_t, σ = √(1−ᾱ_t) and the half-log-SNR λ = log(α/σ) (+∞ at the clean end t = −1), shape (B,)."""
    ab = schedule.alpha_bar_at(t)
    alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
    return alpha, sigma, torch.log(alpha) - torch.log(sigma)


def dpm_solver_2m_step(x_t: torch.Tensor, x0_pred: torch.Tensor, t: int | torch.Tensor, t_prev: int | torch.Tensor,
                       schedule: NoiseSchedule, x0_pred_last: torch.Tensor | None = None,
                       t_last: int | torch.Tensor | None = None) -> torch.Tensor:
    """One DPM-Solver++(2M) step x_t → x_{t_prev}  (Lu et al. 2022, "DPM-Solver++", Algorithm 2).

    In λ = log(α/σ), α = √ᾱ, σ = √(1−ᾱ), with h = λ_{t'} − λ_t and x̂₀ the model's data prediction:
        first order (= DDIM):  x_{t'} = (σ_{t'}/σ_t) x_t − α_{t'} (e^{−h} − 1) x̂₀(x_t)
        second order:          the same with x̂₀ replaced by
                               D = (1 + 1/(2r)) x̂₀(x_t) − 1/(2r) x̂₀(x_{t_last}),  r = (λ_t − λ_{t_last}) / h,
    where ``t_last`` > t is the previous (noisier) step and ``x0_pred_last`` its prediction.
    Without them the step is first order. The step to the clean end (t' = −1: σ = 0, h = ∞) is always
    first order and returns x̂₀ exactly (diffusers' ``final_sigmas_type="zero"``).
    """
    _check_inputs(x_t, x0_pred, eps_name="x0_pred")
    if (x0_pred_last is None) != (t_last is None):
        raise ValueError("pass both x0_pred_last and t_last for a second-order step, or neither")
    t, t_prev = _as_t(t, x_t), _as_t(t_prev, x_t)
    _alpha_bars(schedule, t, t_prev, x_t)  # validates the range and order of t, t_prev
    alpha_s, sigma_s, lam_s = _alpha_sigma_lambda(schedule, t)
    alpha_t, sigma_t, lam_t = _alpha_sigma_lambda(schedule, t_prev)
    h = lam_t - lam_s
    shape = (-1,) + (1,) * (x_t.ndim - 1)

    def cast(v):
        return v.to(x_t.device, x_t.dtype).reshape(shape)

    d = x0_pred
    if x0_pred_last is not None:
        if x0_pred_last.shape != x_t.shape:
            raise ValueError(f"x0_pred_last has shape {tuple(x0_pred_last.shape)} but x_t has {tuple(x_t.shape)}")
        t_last = _as_t(t_last, x_t)
        if int(t_last.max()) >= schedule.T or bool((t_last <= t).any()):
            raise ValueError(f"t_last must satisfy t < t_last < T={schedule.T}")
        _, _, lam_last = _alpha_sigma_lambda(schedule, t_last)
        r = (lam_s - lam_last) / h
        # 1/(2r) where the step is second order; 0 (first order) on the step to the clean end.
        half_inv_r = torch.where(t_prev.to(r.device) >= 0, 0.5 / r, torch.zeros_like(r))
        d = x0_pred + cast(half_inv_r) * (x0_pred - x0_pred_last)
    return cast(sigma_t / sigma_s) * x_t - cast(alpha_t * torch.expm1(-h)) * d


def dpm_solver_2m_sample(model: Callable[..., torch.Tensor], x_T: torch.Tensor, schedule: NoiseSchedule, *,
                         steps: int = 20, spacing: str = "trailing", cond: torch.Tensor | None = None,
                         generator: torch.Generator | None = None, clip_denoised: bool = False,
                         progress: bool = True,
                         return_trajectory: bool = False) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Deterministic DPM-Solver++(2M) sampling with ``steps`` model calls (Lu et al. 2022, Algorithm 2).
    (``generator`` is accepted for the samplers' one signature; this sampler draws nothing.)

    First order on the first step (no previous prediction yet) and on the last (to the clean end);
    second order in between. Equivalent to diffusers' ``DPMSolverMultistepScheduler(algorithm_type=
    "dpmsolver++", solver_order=2, final_sigmas_type="zero")`` run on the same timesteps (its own default
    "linspace" list differs from ours: pass ``timesteps=`` to compare).

    Keep the default ``"trailing"`` spacing. "leading"/"linspace" lists end at t = 0, and the step into
    t = 0 spans a λ-interval several times the previous one (r = h_prev/h ≪ 1), so the 1/(2r)
    extrapolation amplifies errors: with an exact Gaussian-mixture model and 10 steps the error against
    the exact ODE solution is 4–5× that of "trailing" (diffusers behaves identically).
    """
    ts = timesteps(schedule.T, steps, spacing)
    last = {"x0": None, "t": None}  # the previous step's x̂₀ and timestep: the "multistep" memory

    def update(x, eps, x0, t, t_prev, i):
        x_prev = dpm_solver_2m_step(x, x0, t, t_prev, schedule, last["x0"], last["t"])
        last["x0"], last["t"] = x0, t
        return x_prev

    return sample_loop(model, x_T, schedule, ts, update, cond, clip_denoised, progress, return_trajectory,
                       desc=f"DPM-Solver++(2M)-{steps}")


# --------------------------------------------------------------------------- DDIM inversion
def ddim_invert_step(x_t: torch.Tensor, eps: torch.Tensor, t: int | torch.Tensor, t_next: int | torch.Tensor,
                     schedule: NoiseSchedule) -> torch.Tensor:
    """One deterministic DDIM step *up* the noise levels, x_t → x_{t_next} with t_next > t (t = −1: clean).

        x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t,   x_{t_next} = √ᾱ_{t_next} x̂₀ + √(1−ᾱ_{t_next}) ε̂
    — the η = 0 DDIM update (Song et al. 2021, Eq. 12) with the roles of the two levels swapped.
    """
    _check_inputs(x_t, eps)
    t, t_next = _as_t(t, x_t), _as_t(t_next, x_t)
    if int(t.min()) < -1 or int(t_next.max()) >= schedule.T or bool((t_next <= t).any()):
        raise ValueError(f"need -1 <= t < t_next <= T-1={schedule.T - 1} (inversion goes up the noise levels)")
    ab_next, ab = _alpha_bars(schedule, t_next, t, x_t)
    x0 = _x0_from_eps(x_t, eps, ab)
    return ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps


def ddim_invert(model: Callable[..., torch.Tensor], x0: torch.Tensor, schedule: NoiseSchedule, *, steps: int = 50,
                spacing: str = "trailing", cond: torch.Tensor | None = None, progress: bool = True,
                return_trajectory: bool = False) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
    """Map clean data to the noise that deterministic DDIM (η = 0) would turn back into it.

    Visits ``timesteps(T, steps, spacing)`` in ascending order, −1 → t₁ → … → t_S, so that
    ``ddim_sample(model, ddim_invert(model, x0, s, n), s, n)`` (same steps and spacing) ≈ x0.

    The approximation: sampling goes x_{t_{k+1}} → x_{t_k} with ε̂(x_{t_{k+1}}, t_{k+1}); inverting it
    exactly needs ε̂ at the point we are solving for. Like everyone (and diffusers'
    ``DDIMInverseScheduler``) we use ε̂(x_{t_k}, t_{k+1}) — the current point, the next level's
    timestep — so each step errs by O(‖x_{t_{k+1}} − x_{t_k}‖ · ‖∂ε̂/∂x‖). The error shrinks with more
    steps and grows where ε̂ varies fast (sharp data, strong guidance).

    With ``return_trajectory`` also returns ``{"t", "x_t", "x0_pred"}`` of the states before each step
    (``t[0] = −1`` is the input; x0_pred is x̂₀ of each step).
    """
    if not isinstance(x0, torch.Tensor) or x0.ndim < 2:
        raise ValueError(f"x0 must be a batched tensor (B, ...), got {getattr(x0, 'shape', type(x0).__name__)}")
    ts = timesteps(schedule.T, steps, spacing).flip(0)  # ascending
    sources = [-1] + ts[:-1].tolist()                   # the level each step starts from
    traj = {"t": [], "x_t": [], "x0_pred": []}

    def update(x, eps, x0_unused, t, t_prev_unused, i):
        t_src = torch.full_like(t, sources[i])
        if return_trajectory:
            ab = schedule.alpha_bar_at(t_src).to(x.device, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
            traj["t"].append(sources[i])
            traj["x_t"].append(x.detach().float().cpu())
            traj["x0_pred"].append(((x - (1 - ab).sqrt() * eps) / ab.sqrt()).detach().float().cpu())
        return ddim_invert_step(x, eps, t_src, t, schedule)

    # sample_loop calls the model at each ts[i] (the level we move *to*) on the current x: exactly the
    # approximation above. Its own t_prev (the next entry of the ascending list) is not used.
    x_T = sample_loop(model, x0, schedule, ts, update, cond, False, progress, False, desc=f"DDIM-invert-{steps}")
    if return_trajectory:
        return x_T, {"t": torch.tensor(traj["t"]), "x_t": torch.stack(traj["x_t"]),
                     "x0_pred": torch.stack(traj["x0_pred"])}
    return x_T


# --------------------------------------------------------------------------- interpolation
def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float | torch.Tensor, per_item: bool = True) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985) between noise tensors ``a`` and ``b``.

        θ = arccos(⟨a, b⟩ / (‖a‖‖b‖)),   slerp = sin((1−α)θ)/sin θ · a + sin(αθ)/sin θ · b
    Gaussian noise in high dimension lives near the sphere of radius √d; a straight line between two
    such points cuts through the low-norm interior (x_T no sampler has seen), slerp stays on it: for
    ‖a‖ = ‖b‖ the norm is preserved exactly. With ``per_item`` each batch item (dim 0) is its own
    vector and ``alpha`` may be a float or a (B,) tensor; otherwise the whole tensor is one vector.
    Nearly parallel (or antiparallel) inputs, where sin θ ≈ 0, fall back to linear interpolation.
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError("a and b must be torch.Tensors")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if per_item and a.ndim < 1:
        raise ValueError("per_item=True needs a batched tensor (B, ...)")
    if not a.dtype.is_floating_point:
        raise TypeError(f"a and b must be floating point, got {a.dtype}")
    n = a.shape[0] if per_item else 1
    fa, fb = a.reshape(n, -1).double(), b.reshape(n, -1).to(a.device).double()
    alpha_t = torch.as_tensor(alpha, dtype=torch.float64, device=a.device)
    if alpha_t.ndim == 0:
        alpha_t = alpha_t.expand(n)
    if alpha_t.shape != (n,):
        raise ValueError(f"alpha must be a number or a tensor of shape ({n},), got {tuple(alpha_t.shape)}")
    if not torch.isfinite(alpha_t).all() or (alpha_t < 0).any() or (alpha_t > 1).any():
        raise ValueError("alpha must lie in [0, 1]")
    na, nb = fa.norm(dim=1), fb.norm(dim=1)
    if (na == 0).any() or (nb == 0).any():
        raise ValueError("slerp needs non-zero a and b")
    cos = ((fa * fb).sum(1) / (na * nb)).clamp(-1, 1)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    near = sin < 1e-6
    safe_sin = torch.where(near, torch.ones_like(sin), sin)
    wa = torch.where(near, 1 - alpha_t, torch.sin((1 - alpha_t) * theta) / safe_sin)
    wb = torch.where(near, alpha_t, torch.sin(alpha_t * theta) / safe_sin)
    out = wa[:, None] * fa + wb[:, None] * fb
    return out.reshape(a.shape).to(a.dtype)
