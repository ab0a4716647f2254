"""Samplers: pure step functions, and one loop that drives them.

* ``ddpm_step`` — ancestral sampling from p(x_{t'}|x_t) = q(x_{t'}|x_t, x̂₀)  (DDPM Algorithm 2, Eqs. 6–7)
* ``ddim_step`` — the non-Markovian DDIM update with stochasticity η  (Song et al. 2021, Eq. 12)

A model is any callable ``model(x, t) -> prediction`` (or ``model(x, t, cond)``) with t an integer
tensor (B,). Its output is ε unless it has an ``objective`` attribute of "x0" or "v".
Timestep index ``-1`` means the clean end, ᾱ = 1 (diffusers' ``set_alpha_to_one=True``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import forward
from .schedules import NoiseSchedule

SPACINGS = ("leading", "trailing", "linspace")


# --------------------------------------------------------------------------- timesteps
def timesteps(T: int, steps: int, spacing: str = "trailing") -> torch.Tensor:
    """``steps`` descending integer timesteps in [0, T−1] (the spacings of Lin et al. 2023, Table 2).

    * ``"leading"``: 0, k, 2k, … with k = T // steps — never starts at T−1 (the noisiest step)
    * ``"trailing"``: T−1, T−1−k, … — always starts at T−1
    * ``"linspace"``: round(linspace(0, T−1, steps))
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int with 1 <= steps <= T={T}, got {steps!r}")
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
        return t.reshape(-1).expand(x.shape[0]).to(x.device) if t.numel() == 1 else t.to(x.device)
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


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Drawn on the CPU, so the same generator gives the same noise on every device.
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)


def predict_eps_x0(model, x: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, cond=None,
                   clip_denoised: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the model and return (ε̂, x̂₀) whatever it predicts (its ``objective``: eps, x0 or v).

    With ``clip_denoised`` x̂₀ is clamped to [−1, 1] and ε̂ recomputed to match it.
    """
    out = model(x, t, cond) if cond is not None else model(x, t)
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
        x0 = x0.clamp(-1, 1)
        eps = forward.x0_to_eps(x, x0, t, schedule)
    return eps, x0


# --------------------------------------------------------------------------- step functions
def ddpm_step(x_t: torch.Tensor, eps: torch.Tensor, t, t_prev, schedule: NoiseSchedule,
              noise: torch.Tensor | None = None, variance: str = "beta_tilde",
              clip_denoised: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """One ancestral step x_t → x_{t_prev} (DDPM Algorithm 2, generalised to any t_prev < t).

    With β' = 1 − ᾱ_t/ᾱ_{t'} (β_t when t' = t−1):
        x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t
        μ = √ᾱ_{t'} β'/(1−ᾱ_t) · x̂₀ + √(ᾱ_t/ᾱ_{t'}) (1−ᾱ_{t'})/(1−ᾱ_t) · x_t
        x_{t'} = μ + σ z,  σ² = β̃ = (1−ᾱ_{t'})/(1−ᾱ_t) β' ("beta_tilde") or β' ("beta");
    no noise is added on the last step (t' = −1).
    """
    if variance not in {"beta_tilde", "beta"}:
        raise ValueError(f"variance must be 'beta_tilde' or 'beta', got {variance!r}")
    if eps.shape != x_t.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)} but x_t has {tuple(x_t.shape)}")
    t, t_prev = _as_t(t, x_t), _as_t(t_prev, x_t)
    ab, ab_prev = _alpha_bars(schedule, t, t_prev, x_t)
    beta = 1 - ab / ab_prev
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    var = (1 - ab_prev) / (1 - ab) * beta if variance == "beta_tilde" else beta
    if noise is None:
        noise = _noise_like(x_t, generator)
    last = (t_prev < 0).to(x_t.dtype).reshape(mean.shape[:1] + (1,) * (x_t.ndim - 1))
    return mean + (1 - last) * var.clamp(min=0).sqrt() * noise


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, t, t_prev, schedule: NoiseSchedule, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip_denoised: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """One DDIM step x_t → x_{t_prev} (Song et al. 2021, Eqs. 12 and 16).

        x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t
        σ = η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'})
        x_{t'} = √ᾱ_{t'} x̂₀ + √(1−ᾱ_{t'}−σ²) ε̂ + σ z
    η = 0 is deterministic (the same x_T always gives the same image); η = 1 matches DDPM's β̃.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eps.shape != x_t.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)} but x_t has {tuple(x_t.shape)}")
    t, t_prev = _as_t(t, x_t), _as_t(t_prev, x_t)
    ab, ab_prev = _alpha_bars(schedule, t, t_prev, x_t)
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
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
Update = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def sample_loop(model, x_T: torch.Tensor, schedule: NoiseSchedule, ts: torch.Tensor, update: Update,
                cond: torch.Tensor | None = None, clip_denoised: bool = False, progress: bool = True,
                return_trajectory: bool = False, desc: str = "sampling"):
    """Run ``update(x, eps, x0_pred, t, t_prev, i) -> x_prev`` over the descending timesteps ``ts``.

    The last step goes to ``t_prev = -1`` (clean). With ``return_trajectory`` also returns a dict of
    CPU tensors ``{"t": (S,), "x_t": (S, B, ...), "x0_pred": (S, B, ...)}`` (the state before each step).
    """
    from tqdm.auto import tqdm

    if not isinstance(x_T, torch.Tensor) or x_T.ndim < 2:
        raise ValueError("x_T must be a batched tensor (B, ...)")
    if cond is not None and (not isinstance(cond, torch.Tensor) or cond.shape[0] != x_T.shape[0]):
        raise ValueError(f"cond must be a tensor with batch size {x_T.shape[0]}")
    schedule_ts = ts.tolist()
    x = x_T
    traj = {"t": [], "x_t": [], "x0_pred": []}
    for i, t_int in enumerate(tqdm(schedule_ts, desc=desc, disable=not progress, leave=False)):
        t_prev_int = schedule_ts[i + 1] if i + 1 < len(schedule_ts) else -1
        t = torch.full((x.shape[0],), t_int, dtype=torch.long, device=x.device)
        t_prev = torch.full_like(t, t_prev_int)
        eps, x0 = predict_eps_x0(model, x, t, schedule, cond, clip_denoised)
        if return_trajectory:
            traj["t"].append(t_int)
            traj["x_t"].append(x.detach().float().cpu())
            traj["x0_pred"].append(x0.detach().float().cpu())
        x = update(x, eps, x0, t, t_prev, i)
    if return_trajectory:
        return x, {"t": torch.tensor(traj["t"]), "x_t": torch.stack(traj["x_t"]),
                   "x0_pred": torch.stack(traj["x0_pred"])}
    return x


def ddpm_sample(model, x_T: torch.Tensor, schedule: NoiseSchedule, generator: torch.Generator | None = None,
                clip_denoised: bool = False, cond: torch.Tensor | None = None, steps: int | None = None,
                variance: str = "beta_tilde", progress: bool = True, return_trajectory: bool = False):
    """Ancestral DDPM sampling (Algorithm 2) from x_T, over all T steps (or ``steps`` strided ones)."""
    ts = timesteps(schedule.T, steps or schedule.T, "leading" if steps else "trailing")

    def update(x, eps, x0, t, t_prev, i):
        return ddpm_step(x, eps, t, t_prev, schedule, _noise_like(x, generator), variance, clip_denoised)

    return sample_loop(model, x_T, schedule, ts, update, cond, clip_denoised, progress, return_trajectory,
                       desc="DDPM")


def ddim_sample(model, x_T: torch.Tensor, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0,
                spacing: str = "trailing", generator: torch.Generator | None = None, clip_denoised: bool = False,
                cond: torch.Tensor | None = None, progress: bool = True, return_trajectory: bool = False):
    """DDIM sampling (Song et al. 2021) with ``steps`` model calls; deterministic when ``eta == 0``."""
    ts = timesteps(schedule.T, steps, spacing)

    def update(x, eps, x0, t, t_prev, i):
        noise = _noise_like(x, generator) if eta > 0 else None
        return ddim_step(x, eps, t, t_prev, schedule, eta, noise, clip_denoised)

    return sample_loop(model, x_T, schedule, ts, update, cond, clip_denoised, progress, return_trajectory,
                       desc=f"DDIM-{steps}")
