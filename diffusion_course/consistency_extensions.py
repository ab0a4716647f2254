"""Variants of consistency distillation that the project screened on top of the paper's loss (chapter 7 and
``docs/results.md`` tell what each bought): none changes the ideal consistency function, each changes how the
student is pushed towards it.

* a **Heun teacher step** (second order, two teacher calls) instead of DDIM's Euler step: :func:`teacher_step`
  with ``solver="heun"``; the chain of teacher steps a student distils (its quality cap): :func:`teacher_chain`,
  :func:`teacher_ode_sample`;
* **multi-hop targets**: k teacher steps per pair, so an error reaches the top of the grid through fewer learned
  links (LCM's skipping step, Luo et al. 2023): :func:`multi_hop_loss` with ``hops``;
* **sampler-aligned pairs**: part of each batch starts exactly at the few-step sampler's timesteps (phased
  consistency models' phase edges, Wang et al. 2024): :func:`draw_pairs`.

:class:`ExtendedDistillConfig` adds their settings to :class:`~diffusion_course.consistency.DistillConfig`, and
:func:`distill` runs :func:`consistency.distill` with the loss they define. With every option off it draws and
computes exactly the paper's loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch

from . import consistency, forward, sampling
from .consistency import Model, Timesteps
from .schedules import NoiseSchedule

SOLVERS = ("ddim", "heun")


@torch.no_grad()
def teacher_step(teacher: Model, x_t: torch.Tensor, t: Timesteps, t_prev: Timesteps, schedule: NoiseSchedule, cond: torch.Tensor | None = None,
                 clip_denoised: bool = False, solver: str = "ddim") -> torch.Tensor:
    """One deterministic step of the teacher's PF-ODE, x_t → x_{t_prev}.

    * ``"ddim"``: ``sampling.ddim_step`` (η = 0) with the teacher's ε̂ — an Euler step in the VE coordinates
      y = x/√ᾱ, dy/dσ = ε̂ (Song et al. 2021, Eq. 13); one teacher call.
    * ``"heun"``: Heun's predictor-corrector (two teacher calls) in the exponential-integrator form the DDIM step
      already has. With λ = −log σ, h = λ' − λ and the denoiser D = y − σ·ε̂, the DDIM step is
      y' = e^{−h}·y + (1 − e^{−h})·D₁ — exact when D is constant along the step. Evaluating D₂ again at that end
      point and integrating the straight line between D₁ and D₂ in λ exactly gives the second-order step
      y' = e^{−h}·y + (1 − e^{−h})·D₁ + (1 − (1 − e^{−h})/h)·(D₂ − D₁)
      (the trapezoidal rule of DEIS, Zhang & Chen 2023, and DPM-Solver++'s data-prediction form, Lu et al. 2022).
      Plain Heun in σ (Karras et al. 2022, Alg. 1) fails on this grid: its top step spans σ ≈ 2·10⁴ → 3, where
      averaging two slopes is far worse than Euler. The consistency model learns the map its targets come from,
      so a more accurate step moves the end point it converges to towards the true ODE's.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "ddim":
        return consistency.teacher_step(teacher, x_t, t, t_prev, schedule, cond, clip_denoised)
    t, t_prev = sampling._as_t(t, x_t), sampling._as_t(t_prev, x_t)
    eps, x0 = sampling.predict_eps_x0(teacher, x_t, t, schedule, cond, clip_denoised)
    x_euler = sampling.ddim_step(x_t, eps, t, t_prev, schedule, eta=0.0, x0=x0)
    _, x0_2 = sampling.predict_eps_x0(teacher, x_euler, t_prev, schedule, cond, clip_denoised)
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    ab = schedule.alpha_bar_at(t).to(x_t.device, torch.float64).reshape(shape)
    ab_prev = schedule.alpha_bar_at(t_prev).to(x_t.device, torch.float64).reshape(shape)
    sigma, sigma_prev = ((1 - ab) / ab).sqrt(), ((1 - ab_prev) / ab_prev).sqrt()
    h = (sigma / sigma_prev).log()                      # λ' − λ > 0 (down the noise levels)
    ratio = torch.exp(-h)                               # e^{−h} = σ'/σ
    correction = (1 - (1 - ratio) / h).to(x_t.dtype)    # → h/2 for small steps, → 1 for huge ones
    # in VP coordinates (x = √ᾱ·y) the Euler end point is x_euler; add the correction's share
    return x_euler + ab_prev.sqrt().to(x_t.dtype) * correction * (x0_2 - x0)


@torch.no_grad()
def teacher_chain(teacher: Model, x_t: torch.Tensor, schedule: NoiseSchedule, grid: torch.Tensor,
                  cond: torch.Tensor | None = None, solver: str = "ddim", clip_denoised: bool = True) -> torch.Tensor:
    """The chain of :func:`teacher_step` s from x_t at t = grid[-1] down ``grid`` (ascending timesteps) to y at
    t_0 = grid[0]: the value a perfect consistency model distilled on that grid with that solver gives f(x_t, t) —
    the student's training target, followed to its end."""
    grid = torch.as_tensor(grid)
    if grid.ndim != 1 or grid.numel() < 2 or grid.dtype.is_floating_point or bool((grid[1:] <= grid[:-1]).any()) \
            or int(grid[0]) < 0 or int(grid[-1]) >= schedule.T:
        raise ValueError(f"grid must be a 1-D integer tensor of at least 2 ascending timesteps in [0, {schedule.T - 1}]")
    grid = grid.long()
    x = x_t
    for hi, lo in zip(grid.flip(0)[:-1].tolist(), grid.flip(0)[1:].tolist()):
        x = teacher_step(teacher, x, hi, lo, schedule, cond, clip_denoised, solver)
    y = x / math.sqrt(float(schedule.alpha_bar[int(grid[0])]))
    return y.clamp(-1, 1) if clip_denoised else y


@torch.no_grad()
def teacher_ode_sample(teacher: Model, x_T: torch.Tensor, schedule: NoiseSchedule, grid: torch.Tensor,
                       cond: torch.Tensor | None = None, solver: str = "ddim", clip_denoised: bool = True) -> torch.Tensor:
    """Solve the teacher's PF-ODE down ``grid`` (ascending timesteps, as :func:`make_grid`) with :func:`teacher_step`
    from standard normal x_T (taken as x_{t_N} = √(1−ᾱ) x_T, as :func:`sample` does) to y at t_0 = grid[0]: the end
    point a consistency model distilled on this grid with this solver is trained to reproduce — its quality ceiling."""
    top = torch.as_tensor(grid).reshape(-1)[-1]
    if top.dtype.is_floating_point or not 0 <= int(top) < schedule.T:
        raise ValueError(f"grid must be a 1-D integer tensor of at least 2 ascending timesteps in [0, {schedule.T - 1}]")
    ab_top = float(schedule.alpha_bar[int(top)])
    return teacher_chain(teacher, math.sqrt(1 - ab_top) * x_T, schedule, grid, cond, solver, clip_denoised)


@dataclass
class ConsistencyLossDetails:
    loss: torch.Tensor       # scalar to backpropagate
    n: torch.Tensor          # (B,) grid interval of each sample (t_{n+1} → t_n)
    per_sample: torch.Tensor


def check_hops(hops: Sequence[int], grid_size: int) -> tuple[int, ...]:
    """Validate the multi-hop choices of :func:`consistency_loss`: distinct ints in [1, N], returned sorted."""
    h = tuple(hops) if isinstance(hops, (tuple, list)) else None
    if not h or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= grid_size for v in h) \
            or len(set(h)) != len(h):
        raise ValueError(f"hops must be distinct ints in [1, N={grid_size}], e.g. (1,) or (1, 2, 4); got {hops!r}")
    return tuple(sorted(h))


def draw_pairs(batch_size: int, grid_size: int, hops: Sequence[int] = (1,), generator: torch.Generator | None = None,
               aligned_hop: int = 0, aligned_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid intervals (n, k) of a batch of consistency pairs t_{n+k} → t_n: k ~ U(``hops``), n ~ U{0..N−k}.

    With ``aligned_hop`` = K > 0, the last round(``aligned_fraction``·B) pairs are *sampler-aligned* instead: k = K
    and n ∈ {0, K, 2K, …}, so t_{n+k} is exactly a timestep of the (N/K)-step sampler (:func:`consistency.multistep_timesteps`)
    and its target sits at the next one down — at n = 0, t_min, where f is the identity, so the target is the
    teacher's K-step chain itself. It spends training where few-step sampling evaluates f, as phased consistency
    models do with their phase edges (Wang et al. 2024); the ideal f is unchanged.
    """
    N = grid_size
    hops = check_hops(hops, N)
    m = _aligned_count(batch_size, N, aligned_hop, aligned_fraction)
    B = batch_size - m
    if hops == (1,):                    # the paper's loss, drawing exactly what it always drew
        n = torch.randint(0, N, (B,), generator=generator)
        k = torch.ones_like(n)
    else:
        k = torch.tensor(hops)[torch.randint(0, len(hops), (B,), generator=generator)]
        n = (torch.rand(B, generator=generator) * (N - k + 1)).long().clamp(max=N - k)
    if m:
        n = torch.cat([n, aligned_hop * torch.randint(0, N // aligned_hop, (m,), generator=generator)])
        k = torch.cat([k, torch.full((m,), aligned_hop, dtype=k.dtype)])
    return n, k


def _aligned_count(batch_size: int, grid_size: int, aligned_hop: int, aligned_fraction: float) -> int:
    if isinstance(aligned_hop, bool) or not isinstance(aligned_hop, int) or aligned_hop < 0:
        raise ValueError(f"aligned_hop must be an int >= 0 (0 = off), got {aligned_hop!r}")
    if isinstance(aligned_fraction, bool) or not isinstance(aligned_fraction, (int, float)) \
            or not 0 <= aligned_fraction <= 1:
        raise ValueError(f"aligned_fraction must be a number in [0, 1], got {aligned_fraction!r}")
    if aligned_hop == 0:
        if aligned_fraction:
            raise ValueError("aligned_fraction needs aligned_hop > 0 (the sampler's grid spacing, N / steps)")
        return 0
    if aligned_hop > grid_size or grid_size % aligned_hop:
        raise ValueError(f"aligned_hop must divide the grid size N={grid_size} (N / steps of the sampler to align "
                         f"with, e.g. {grid_size // 2} for 2 steps), got {aligned_hop}")
    m = round(aligned_fraction * batch_size)
    if m == 0 and aligned_fraction > 0:
        raise ValueError(f"aligned_fraction={aligned_fraction} of a batch of {batch_size} is no pair at all; "
                         f"use at least {1 / batch_size:.3g}")
    return m


def multi_hop_loss(student: Model, target: Model, x0: torch.Tensor, schedule: NoiseSchedule, grid: torch.Tensor,
                   teacher: Model | None = None, cond: torch.Tensor | None = None, kind: str = "l2",
                   clip_denoised: bool = False, generator: torch.Generator | None = None, n: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None, return_details: bool = False, solver: str = "ddim",
                   hops: Sequence[int] = (1,),
                   k: torch.Tensor | None = None) -> torch.Tensor | ConsistencyLossDetails:
    """:func:`consistency.consistency_loss` generalised: E[d(f_θ(x_{t_{n+k}}, t_{n+k}), f_θ⁻(x̂_{t_n}, t_n))],
    k ~ U(``hops``), n ~ U{0..N−k}, x̂_{t_n} k teacher steps (``solver``) down the grid from x_{t_{n+k}}. With
    ``hops=(1,)`` and ``solver="ddim"`` it draws and computes exactly the paper's loss.

    Multi-hop targets (``hops`` such as (1, 2, 4)) leave the ideal f unchanged — the end point of the same chain of
    teacher steps — but tie f at t_{n+k} to f at t_n directly, k intervals apart, so a fitting error reaches the
    top of the grid through fewer learned links (N/k rather than N; LCM's "skipping step", Luo et al. 2023, Sec. 4.3,
    takes k teacher intervals in one solver step instead). ``n`` and ``k`` (both (B,)) may be given, e.g. in tests.
    """
    if not isinstance(grid, torch.Tensor) or grid.ndim != 1 or grid.numel() < 2:
        raise ValueError("grid must be a 1-D tensor of at least 2 ascending timesteps")
    B = x0.shape[0]
    grid = grid.to(x0.device)
    N = grid.numel() - 1
    hops = check_hops(hops, N)
    if n is None:
        n, k = draw_pairs(B, N, hops, generator)
    if k is None:
        k = torch.ones_like(n)
    n, k = n.to(x0.device), k.to(x0.device)
    if bool((k < 1).any()) or bool((n < 0).any()) or bool((n + k > N).any()):
        raise ValueError(f"need k >= 1 and 0 <= n <= N - k (N = {N})")
    t_hi, t_lo = grid[n + k], grid[n]
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
    x_hi = forward.q_sample(x0, t_hi, schedule, noise)
    with torch.no_grad():
        if teacher is None:
            x_lo = forward.q_sample(x0, t_lo, schedule, noise)
        elif bool((k == 1).all()):
            x_lo = teacher_step(teacher, x_hi, t_hi, t_lo, schedule, cond, clip_denoised, solver)
        else:
            x_lo = x_hi.clone()
            for j in range(int(k.max())):   # step j moves every sample still above its t_n one interval down
                idx = (k > j).nonzero().squeeze(1)
                top = n[idx] + k[idx] - j
                x_lo[idx] = teacher_step(teacher, x_lo[idx], grid[top], grid[top - 1], schedule,
                                         None if cond is None else cond[idx], clip_denoised, solver)
        f_target = target(x_lo, t_lo, cond)
    f_online = student(x_hi, t_hi, cond)
    per = consistency.distance(f_online, f_target.to(f_online.dtype), kind)
    loss = per.mean()
    if return_details:
        return ConsistencyLossDetails(loss=loss, n=n, per_sample=per.detach())
    return loss


# --------------------------------------------------------------------------- settings and the loop
@dataclass
class ExtendedDistillConfig(consistency.DistillConfig):
    """:class:`consistency.DistillConfig` plus the screened variants (all off by default)."""
    teacher_solver: str = "ddim"      # the teacher's ODE step: "ddim" (Euler, 1 call) or "heun" (2nd order, 2 calls)
    teacher_hops: tuple[int, ...] = (1,)  # k of the multi-hop target: k teacher steps per pair
    aligned_hop: int = 0              # > 0: sampler-aligned pairs (draw_pairs), e.g. N/2 for the 2-step sampler
    aligned_fraction: float = 0.0     # the share of each batch they take (consistency distillation only)

    def __post_init__(self):
        super().__post_init__()
        if self.teacher_solver not in SOLVERS:
            raise ValueError(f"teacher_solver must be one of {SOLVERS}, got {self.teacher_solver!r}")
        self.teacher_hops = check_hops(self.teacher_hops, self.grid_size)
        if self.mode == "ct" and self.aligned_hop:
            raise ValueError("aligned_hop is for distillation on a fixed grid (mode='cd'); CT's grid grows")
        _aligned_count(self.batch_size, self.grid_size, self.aligned_hop, self.aligned_fraction)


EXTENDED_FIELDS = ("teacher_solver", "teacher_hops", "aligned_hop", "aligned_fraction")


def config_from_dict(fields: dict) -> consistency.DistillConfig:
    """The plain :class:`DistillConfig` for a recipe that uses none of the variants, else the extended one."""
    if any(k in fields for k in EXTENDED_FIELDS):
        return ExtendedDistillConfig(**fields)
    return consistency.DistillConfig(**fields)


def _extended_loss(student, target, x0, schedule, grid, teacher=None, cond=None, kind="l2", clip_denoised=False,
                   generator=None, cfg: ExtendedDistillConfig | None = None):
    n, k = (draw_pairs(x0.shape[0], grid.numel() - 1, cfg.teacher_hops, generator, cfg.aligned_hop,
                       cfg.aligned_fraction) if cfg.aligned_hop else (None, None))
    return multi_hop_loss(student, target, x0, schedule, grid, teacher, cond=cond, kind=kind,
                          clip_denoised=clip_denoised, generator=generator, solver=cfg.teacher_solver,
                          hops=cfg.teacher_hops, n=n, k=k)


def distill(teacher: Model | None, schedule: NoiseSchedule, images: torch.Tensor, labels: torch.Tensor | None = None,
            config: consistency.DistillConfig | None = None, **kwargs: object) -> consistency.DistillResult:
    """:func:`consistency.distill` with the variants of an :class:`ExtendedDistillConfig` (a plain
    ``DistillConfig`` runs the paper's loss)."""
    cfg = config or consistency.DistillConfig()
    loss_fn = partial(_extended_loss, cfg=cfg) if isinstance(cfg, ExtendedDistillConfig) else None
    return consistency.distill(teacher, schedule, images, labels, cfg, loss_fn=loss_fn, **kwargs)
