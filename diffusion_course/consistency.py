"""Consistency models and distillation: from 50 network calls to one or two.

A consistency function maps *every* point of a probability-flow-ODE trajectory to the trajectory's
end point (Song et al. 2023, "Consistency Models", Def. 1): f(x_σ, σ) = x_{σ_min} for all σ on one path.
Learn it and one network call turns noise into an image; a few calls with re-noising in between
(Alg. 1) trade time for quality. This module holds

* the parameterisation f(y, σ) = c_skip(σ)·y + c_out(σ)·F(y, σ) with the boundary condition
  f(y, σ_min) = y built in (Eq. 7 and App. C): :func:`c_skip`, :func:`c_out`, :class:`ConsistencyModel`;
* **consistency distillation** (CD, Alg. 2): the target is the student's own value one teacher
  ODE step (DDIM, :func:`teacher_step`) further down the grid — :func:`consistency_loss`, :func:`distill`;
* **consistency training** (CT, Alg. 3, with iCT's growing-N schedule, Song & Dhariwal 2024): no teacher,
  the lower point shares the upper point's noise — the same loss with ``teacher=None``;
* **progressive distillation** (Salimans & Ho 2022, Alg. 2): halve a DDIM sampler's steps per round
  with the x₀ target that makes one student step land where two teacher steps land —
  :func:`progressive_distillation`;
* multistep consistency sampling (Alg. 1): :func:`sample`;
* the exact consistency function of a Gaussian mixture (:class:`ExactConsistencyFunction`), the oracle
  the tests and chapter 7 score students against.

**The parameterisation, and why.** The course's teacher is a discrete VP ε-model on the cosine schedule
(T = 1000): x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε. Divide by √ᾱ_t and it is a variance-exploding process,
y = x_t/√ᾱ_t = x₀ + σ_t ε with σ_t = √((1−ᾱ_t)/ᾱ_t) (Karras et al. 2022, Sec. 4), in which the
PF-ODE is dy/dσ = ε(y, σ) = −σ ∇log p_σ(y), and one DDIM step is exactly one Euler step of it
(Song et al. 2021, Eq. 13). So we work

* **in VE coordinates y with Song et al.'s c_skip/c_out** (σ_data = 0.5, as theirs; Fashion-MNIST's pixel
  std in [−1, 1] is 0.71 — the coefficients only need its order of magnitude), because there the boundary
  condition is the plain f(y, σ_min) = y and c_out·F stays bounded at every noise level;
* **on the teacher's own discrete timesteps**: the grid is the teacher's DDIM-N list (trailing spacing)
  plus t = 0, so σ_min = σ_0 = 0.0064 (the smallest noise level the teacher was trained at — Song et al.
  use 0.002), σ_max = σ_999 ≈ 2·10⁴, the network sees exactly the (x_t, t) inputs the teacher was trained
  on, and each teacher step between adjacent grid points is the chapter-3 DDIM step;
* **with a warm start from the teacher's weights** (as ECT, Geng et al. 2024): for an ε-network U the raw
  output is F = a(σ̃)·x_t + b(σ̃)·U with a, b chosen so that c_skip·y + c_out·F = y − σ·U, the teacher's
  own denoiser D(y, σ) = E[x₀ | y] (exact with σ_min → 0; within O(σ_min/σ_data) ≈ 1 % otherwise).
  σ̃ = min(σ, σ_cap): the ε-coefficient of D grows like σ (at t = 999 an ε-error of 10⁻⁴ is an x₀-error
  of 2), which no network can be trained through, so above σ_cap the coefficients stop growing and the
  student learns its own head there (it must anyway: at SNR 2·10⁻⁹ the teacher's D is a guess of the mean).
  σ_cap = 2 (t ≈ 700 on the cosine schedule) keeps the warm start exact over the lower 70 % of the grid
  while no noise level's gradient is amplified more than ≈ 4× (σ_cap/σ_d), so none dominates Adam's scale.

The wrapped model is called like every model in the course, ``cm(x_t, t, cond=None)`` with x_t in the
teacher's VP coordinates and integer t, and returns f (an x₀ prediction; ``objective = "x0"``), so the
chapter-3 samplers accept it too.

**Target network.** θ⁻ = stopgrad(θ) by default (``target_decay = 0``, the iCT/ECT choice): Song & Dhariwal
(2024, Sec. 3.2) show that an EMA target (μ > 0, the original CD) makes the objective's optimum depend on μ
and slows it, and it saves holding a third copy of the network; μ > 0 is available for comparison. A
separate slow EMA of θ (``ema_decay``) is what we sample from, as both papers do.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import checkpoints, forward, sampling
from .schedules import NoiseSchedule

__all__ = ["DISTANCES", "HEADS", "MODES", "SOLVERS", "c_skip", "c_out", "make_grid", "Denoiser", "ConsistencyModel",
           "teacher_step", "teacher_ode_sample", "distance", "draw_pairs", "consistency_loss", "ct_grid_size", "target_update", "DistillConfig",
           "DistillResult", "distill", "FMNIST_CD_RECIPE", "build_student", "distill_recipe", "progressive_target", "progressive_loss", "progressive_distillation",
           "sample_timesteps", "renoise", "sample", "check_exercise", "ExactConsistencyFunction", "evaluate", "seconds_per_image",
           "interleaved_seconds_per_image"]

DISTANCES = ("l2", "pseudo-huber")
HEADS = ("eps", "raw")
MODES = ("cd", "ct")
SOLVERS = ("ddim", "heun")


# --------------------------------------------------------------------------- the parameterisation
def c_skip(sigma, sigma_data: float = 0.5, sigma_min: float = 0.0):
    """c_skip(σ) = σ_d² / ((σ − σ_min)² + σ_d²)   (Song et al. 2023, App. C): 1 at σ_min, → 0 as σ → ∞."""
    return sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)


def c_out(sigma, sigma_data: float = 0.5, sigma_min: float = 0.0):
    """c_out(σ) = σ_d (σ − σ_min) / √(σ_d² + σ²)   (Song et al. 2023, App. C): 0 at σ_min, → σ_d as σ → ∞."""
    return sigma_data * (sigma - sigma_min) / (sigma_data**2 + sigma**2) ** 0.5


def make_grid(schedule: NoiseSchedule, n: int) -> torch.Tensor:
    """The N + 1 grid timesteps t_0 = 0 < t_1 < … < t_N = T−1 (ascending, int64): the teacher's DDIM-N
    list (``sampling.timesteps(T, N, "trailing")``) with t = 0, the smallest noise level, as the boundary."""
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n < schedule.T:
        raise ValueError(f"the grid size N must be an int with 1 <= N <= T-1={schedule.T - 1}, got {n!r}")
    ts = sampling.timesteps(schedule.T, n, "trailing").flip(0)
    grid = torch.unique(torch.cat([torch.zeros(1, dtype=torch.long), ts]))
    if grid.numel() != n + 1:   # trailing spacing with N close to T reaches t = 0 itself
        grid = torch.linspace(0, schedule.T - 1, n + 1, dtype=torch.float64).round().long()
    return grid


def _schedules_match(a: NoiseSchedule, b: NoiseSchedule) -> bool:
    return a.T == b.T and torch.allclose(a.alpha_bar.cpu().double(), b.alpha_bar.cpu().double(), rtol=1e-6, atol=1e-12)


def _check_schedule(name: str, theirs, ours: NoiseSchedule) -> None:
    if theirs is not None and not _schedules_match(theirs, ours):
        raise ValueError(f"{name}'s noise schedule ({theirs!r}) does not match the student's ({ours!r}): a consistency "
                         "model is tied to its teacher's PF-ODE, so both must use the same schedule and T")


class Denoiser(nn.Module):
    """An x₀-predicting wrapper ``model(x_t, t, cond=None) -> x̂₀`` in EDM form (Karras et al. 2022, Eq. 7),
    f = c_skip(σ)·y + c_out(σ)·F, y = x_t/√ᾱ_t, with σ_min = 0 (no boundary condition).

    Args:
        net: ``net(x_t, t[, cond])`` of the data's shape.
        schedule: the discrete VP schedule whose σ_t = √((1−ᾱ_t)/ᾱ_t) the model lives on.
        sigma_data: σ_d of c_skip/c_out (0.5 as Song et al.).
        head: ``"eps"`` — ``net`` is an ε-network (the teacher's weights): F is built so that f is the teacher's
            denoiser y − σ·net(x_t, t) for σ ≤ ``sigma_cap`` (warm start); ``"raw"`` — F = net(x_t, t) directly
            (a network trained from scratch, e.g. consistency training).
        sigma_cap: above it the ε-head's coefficients stop growing (see the module docstring).

    Progressive distillation's students are Denoisers; :class:`ConsistencyModel` adds the boundary condition.
    """

    objective = "x0"

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, sigma_data: float = 0.5, head: str = "eps",
                 sigma_cap: float = 2.0, sigma_min: float = 0.0):
        super().__init__()
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if not sigma_data > 0 or not sigma_cap > 0:
            raise ValueError(f"sigma_data and sigma_cap must be positive, got {sigma_data}, {sigma_cap}")
        self.net, self.schedule, self.head = net, schedule, head
        self.sigma_data, self.sigma_cap, self.sigma_min = float(sigma_data), float(sigma_cap), float(sigma_min)
        self.num_classes = getattr(net, "num_classes", 0)
        # σ_t and 1/√ᾱ_t = √(1+σ_t²) for every integer t, float64 on the CPU (looked up per call).
        self._sigma = schedule.sigma.detach().cpu().double()
        self.config = dict(sigma_data=self.sigma_data, head=head, sigma_cap=self.sigma_cap)

    def sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """σ_t for integer timesteps (float64, CPU)."""
        return self._sigma[t.detach().cpu().long()]

    def coefficients(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample float64 coefficients at timesteps t: f = skip·x_t + out·F (skip = c_skip/√ᾱ), and the
        ε-head's F = a·x_t + b·U."""
        sigma = self.sigma_at(t)
        sd, sm = self.sigma_data, self.sigma_min
        cs, co = c_skip(sigma, sd, sm), c_out(sigma, sd, sm)
        # At σ_min exactly, c_out = 0 and c_skip = 1 (to the last bit): the boundary condition holds exactly.
        co = torch.where(sigma <= sm, torch.zeros_like(co), co)
        cs = torch.where(sigma <= sm, torch.ones_like(cs), cs)
        s = sigma.clamp(max=self.sigma_cap)
        a = s * (1 + s**2).sqrt() / (sd * (s**2 + sd**2).sqrt())
        b = -(s**2 + sd**2).sqrt() / sd
        return {"sigma": sigma, "skip": cs * (1 + sigma**2).sqrt(), "out": co, "a": a, "b": b}

    def forward(self, x: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            raise ValueError(f"x must be a batched tensor (B, ...), got {getattr(x, 'shape', type(x).__name__)}")
        t = sampling._as_t(t, x)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.schedule.T):
            raise ValueError(f"t must be in [0, {self.schedule.T - 1}]")
        k = self.coefficients(t)
        shape = (-1,) + (1,) * (x.ndim - 1)

        def cast(v):
            return v.to(x.device, x.dtype).reshape(shape)

        u = self.net(x, t, cond) if cond is not None else self.net(x, t)
        F = cast(k["a"]) * x + cast(k["b"]) * u if self.head == "eps" else u
        out = cast(k["out"])
        return cast(k["skip"]) * x + torch.where(out == 0, torch.zeros_like(F), out * F)

    @classmethod
    def from_teacher(cls, teacher: nn.Module, schedule: NoiseSchedule, **kwargs) -> "Denoiser":
        """A copy of an ε-teacher's network wrapped with the ε-head: at σ ≤ σ_cap it starts as the teacher's denoiser."""
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"a warm start needs the teacher's network (an nn.Module), got {type(teacher).__name__}")
        if getattr(teacher, "objective", "eps") != "eps":
            raise ValueError(f"a warm start needs an ε-prediction teacher, got objective={teacher.objective!r}")
        _check_schedule("the teacher", getattr(teacher, "schedule", None), schedule)
        net = copy.deepcopy(teacher).train().requires_grad_(True)
        return cls(net, schedule, head="eps", **kwargs)  # ConsistencyModel takes grid_size= too


class ConsistencyModel(Denoiser):
    """The consistency function f(x_t, t) = c_skip(σ_t)·y + c_out(σ_t)·F(x_t, t), y = x_t/√ᾱ_t, with
    σ_min = σ at the grid's first timestep, so that f(x, t_0) = x/√ᾱ_{t_0} = y exactly (Song et al. 2023, Eq. 7).

    ``grid`` holds the N + 1 ascending grid timesteps (:func:`make_grid`) the model is made consistent on;
    ``sample`` chooses its steps from it. Arguments as :class:`Denoiser`, plus ``grid_size`` = N.
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, grid_size: int = 20, sigma_data: float = 0.5,
                 head: str = "eps", sigma_cap: float = 2.0):
        grid = make_grid(schedule, grid_size)
        super().__init__(net, schedule, sigma_data, head, sigma_cap,
                         sigma_min=float(schedule.sigma[int(grid[0])]))
        self.grid = grid
        self.t_min = int(grid[0])
        self.config["grid_size"] = grid_size

    def to_ve(self, x: torch.Tensor, t) -> torch.Tensor:
        """y = x_t/√ᾱ_t = √(1+σ_t²)·x_t, computed as the model's skip path is (so f(x, t_min) equals it bit for bit)."""
        t = sampling._as_t(t, x)
        scale = (1 + self.sigma_at(t) ** 2).sqrt()
        return scale.to(x.device, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)) * x


# --------------------------------------------------------------------------- the teacher's ODE step
@torch.no_grad()
def teacher_step(teacher, x_t: torch.Tensor, t, t_prev, schedule: NoiseSchedule, cond: torch.Tensor | None = None,
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
    t, t_prev = sampling._as_t(t, x_t), sampling._as_t(t_prev, x_t)
    eps, x0 = sampling.predict_eps_x0(teacher, x_t, t, schedule, cond, clip_denoised)
    x_euler = sampling.ddim_step(x_t, eps, t, t_prev, schedule, eta=0.0, x0=x0)
    if solver == "ddim":
        return x_euler
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
def teacher_chain(teacher, x_t: torch.Tensor, schedule: NoiseSchedule, grid: torch.Tensor,
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
def teacher_ode_sample(teacher, x_T: torch.Tensor, schedule: NoiseSchedule, grid: torch.Tensor,
                       cond: torch.Tensor | None = None, solver: str = "ddim", clip_denoised: bool = True) -> torch.Tensor:
    """Solve the teacher's PF-ODE down ``grid`` (ascending timesteps, as :func:`make_grid`) with :func:`teacher_step`
    from standard normal x_T (taken as x_{t_N} = √(1−ᾱ) x_T, as :func:`sample` does) to y at t_0 = grid[0]: the end
    point a consistency model distilled on this grid with this solver is trained to reproduce — its quality ceiling."""
    top = torch.as_tensor(grid).reshape(-1)[-1]
    if top.dtype.is_floating_point or not 0 <= int(top) < schedule.T:
        raise ValueError(f"grid must be a 1-D integer tensor of at least 2 ascending timesteps in [0, {schedule.T - 1}]")
    ab_top = float(schedule.alpha_bar[int(top)])
    return teacher_chain(teacher, math.sqrt(1 - ab_top) * x_T, schedule, grid, cond, solver, clip_denoised)


# --------------------------------------------------------------------------- losses
def distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l2", c: float | None = None) -> torch.Tensor:
    """Per-sample distance (B,) between two batches.

    * ``"l2"``: ‖a − b‖²/d, the squared L2 norm per element (Song et al. 2023, Sec. 5);
    * ``"pseudo-huber"``: √(‖a − b‖² + c²) − c with c = 0.00054·√d (Song & Dhariwal 2024, Sec. 3.3): L2 for
      small differences, L1-like for large ones, so outlier pairs do not dominate the gradient.
    """
    if kind not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {kind!r}")
    if a.shape != b.shape:
        raise ValueError(f"distance needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    diff = (a - b).flatten(1)
    if kind == "l2":
        return diff.pow(2).mean(1)
    c = 0.00054 * math.sqrt(diff.shape[1]) if c is None else c
    return (diff.pow(2).sum(1) + c * c).sqrt() - c


@dataclass
class ConsistencyLossDetails:
    loss: torch.Tensor       # scalar to backpropagate
    n: torch.Tensor          # (B,) grid interval of each sample (t_{n+1} → t_n)
    per_sample: torch.Tensor


def check_hops(hops, grid_size: int) -> tuple[int, ...]:
    """Validate the multi-hop choices of :func:`consistency_loss`: distinct ints in [1, N], returned sorted."""
    h = tuple(hops) if isinstance(hops, (tuple, list)) else None
    if not h or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= grid_size for v in h) \
            or len(set(h)) != len(h):
        raise ValueError(f"hops must be distinct ints in [1, N={grid_size}], e.g. (1,) or (1, 2, 4); got {hops!r}")
    return tuple(sorted(h))


def draw_pairs(batch_size: int, grid_size: int, hops=(1,), generator: torch.Generator | None = None,
               aligned_hop: int = 0, aligned_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid intervals (n, k) of a batch of consistency pairs t_{n+k} → t_n: k ~ U(``hops``), n ~ U{0..N−k}.

    With ``aligned_hop`` = K > 0, the last round(``aligned_fraction``·B) pairs are *sampler-aligned* instead: k = K
    and n ∈ {0, K, 2K, …}, so t_{n+k} is exactly a timestep of the (N/K)-step sampler (:func:`sample_timesteps`)
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


def consistency_loss(student, target, x0: torch.Tensor, schedule: NoiseSchedule, grid: torch.Tensor, teacher=None,
                     cond: torch.Tensor | None = None, kind: str = "l2", clip_denoised: bool = False,
                     generator: torch.Generator | None = None, n: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, return_details: bool = False, solver: str = "ddim",
                     hops=(1,), k: torch.Tensor | None = None):
    """The consistency loss E[d(f_θ(x_{t_{n+k}}, t_{n+k}), f_θ⁻(x̂_{t_n}, t_n))], k ~ U(``hops``), n ~ U{0..N−k}.

    With a ``teacher`` (distillation, Song et al. 2023, Alg. 2): x̂_{t_n} is k teacher ODE steps down the grid from
    x_{t_{n+k}} = q_sample(x₀, t_{n+k}, z); k = 1 is the paper's loss. Without (consistency training, Alg. 3):
    x̂_{t_n} = q_sample(x₀, t_n, z) with the *same* z — which is the DDIM step taken with the true noise z in place
    of ε̂, an unbiased one-sample estimate of the teacher's (Song et al. 2023, Thm. 2). ``target`` is θ⁻ (called
    without grad).

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
    per = distance(f_online, f_target.to(f_online.dtype), kind)
    loss = per.mean()
    if return_details:
        return ConsistencyLossDetails(loss=loss, n=n, per_sample=per.detach())
    return loss


def ct_grid_size(step: int, total_steps: int, n_start: int = 10, n_end: int = 320) -> int:
    """iCT's growing discretisation (Song & Dhariwal 2024, Eq. 8): N(k) = min(s₀·2^⌊k/K'⌋, s₁) intervals,
    K' = ⌊K / (⌊log₂⌊s₁/s₀⌋⌋ + 1)⌋ — coarse (large, low-variance steps) first, fine (small bias) at the end."""
    if not 1 <= n_start <= n_end:
        raise ValueError(f"need 1 <= n_start <= n_end, got {n_start}, {n_end}")
    k_prime = max(1, total_steps // (int(math.log2(n_end // n_start)) + 1))
    return int(min(n_start * 2 ** (step // k_prime), n_end))


@torch.no_grad()
def target_update(target: nn.Module, online: nn.Module, mu: float) -> None:
    """θ⁻ ← μ·θ⁻ + (1 − μ)·stopgrad(θ) (Song et al. 2023, Alg. 2); μ = 0 copies θ (iCT)."""
    if not 0 <= mu < 1:
        raise ValueError(f"target_decay mu must be in [0, 1), got {mu}")
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.lerp_(po.detach(), 1 - mu)
    for bt, bo in zip(target.buffers(), online.buffers()):
        bt.copy_(bo)


# --------------------------------------------------------------------------- the distillation loop
@dataclass
class DistillConfig:
    """Settings of :func:`distill` (consistency distillation or training) and :func:`progressive_distillation`."""
    steps: int = 2000                 # optimiser steps (per round for progressive distillation)
    batch_size: int = 32
    lr: float = 2e-4                  # a fine-tuning rate: the student starts from the teacher
    warmup: int = 50
    lr_decay: str = "cosine"          # "cosine" (to 10 %) or "constant"
    # Warm restarts, as in training.TrainConfig: each listed step ends a cosine cycle and the next starts at
    # lr·restart_lr_scale, so a recipe can be extended while its first cycle stays bit-identical (resumable).
    lr_cycle_ends: tuple[int, ...] = ()
    restart_lr_scale: float = 1.0
    grad_clip: float = 1.0
    mode: str = "cd"                  # "cd" (with a teacher) or "ct" (consistency training, no teacher)
    teacher_solver: str = "ddim"      # CD's teacher ODE step: "ddim" (Euler, 1 call) or "heun" (2nd order, 2 calls)
    teacher_hops: tuple[int, ...] = (1,)  # k of the multi-hop target (consistency_loss): k teacher steps per pair
    aligned_hop: int = 0              # > 0: sampler-aligned pairs (draw_pairs), e.g. N/2 for the 2-step sampler
    aligned_fraction: float = 0.0     # the share of each batch they take (consistency distillation only)
    grid_size: int = 20               # N: the teacher's DDIM-N grid (CD)
    ct_n_start: int = 10              # CT's growing N: s₀ … s₁ (iCT uses 10 … 1280 on a continuous σ)
    ct_n_end: int = 320
    distance: str = "pseudo-huber"
    target_decay: float = 0.0         # μ of the target network; 0 = stopgrad(θ) (iCT)
    ema_decay: float = 0.999          # the EMA we sample from (with a warm-up, training.ema_decay_at)
    p_uncond: float = 0.1             # label dropout, so the student keeps the null label (cond=None)
    clip_denoised: bool = True        # clamp the teacher's x̂₀ to [−1, 1] in its DDIM step (images)
    sigma_data: float = 0.5
    sigma_cap: float = 2.0
    seed: int = 0
    checkpoint_path: str | None = None
    checkpoint_every: int = 200
    max_minutes: float | None = None  # a wall-clock budget (stops cleanly)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.teacher_solver not in SOLVERS:
            raise ValueError(f"teacher_solver must be one of {SOLVERS}, got {self.teacher_solver!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.lr_decay not in {"cosine", "constant"}:
            raise ValueError(f"lr_decay must be 'cosine' or 'constant', got {self.lr_decay!r}")
        self.teacher_hops = check_hops(self.teacher_hops, self.grid_size if isinstance(self.grid_size, int) else 1)
        for name in ("steps", "batch_size", "grid_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.mode == "ct" and self.aligned_hop:
            raise ValueError("aligned_hop is for distillation on a fixed grid (mode='cd'); CT's grid grows")
        _aligned_count(self.batch_size, self.grid_size, self.aligned_hop, self.aligned_fraction)
        if not 0 <= self.target_decay < 1 or not 0 <= self.ema_decay < 1:
            raise ValueError("target_decay and ema_decay must be in [0, 1)")
        if not 0 <= self.p_uncond <= 1:
            raise ValueError(f"p_uncond must be in [0, 1], got {self.p_uncond}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive (or None), got {self.max_minutes}")
        ends = tuple(self.lr_cycle_ends)
        if any(isinstance(e, bool) or not isinstance(e, int) for e in ends) or list(ends) != sorted(set(ends)) \
                or any(not self.warmup < e < self.steps for e in ends):
            raise ValueError(f"lr_cycle_ends must be increasing int steps between warmup and steps, got {ends}")
        self.lr_cycle_ends = ends
        if not self.restart_lr_scale > 0:
            raise ValueError(f"restart_lr_scale must be positive, got {self.restart_lr_scale}")
        if self.max_minutes is not None and ends:
            raise ValueError("max_minutes cannot be combined with lr_cycle_ends (warm restarts are step-based)")


@dataclass
class DistillHistory:
    loss: list[float] = field(default_factory=list)
    grid_size: list[int] = field(default_factory=list)
    wall_time: float = 0.0


@dataclass
class DistillResult:
    student: nn.Module       # the online network θ
    ema: nn.Module           # its EMA: sample from this one
    history: DistillHistory
    step: int
    interrupted: bool = False


def _lr(step: int, cfg: DistillConfig, elapsed: float) -> float:
    from .training import lr_at  # one learning-rate schedule for the course (warm-up, cosine, warm restarts)

    return lr_at(step, cfg, elapsed)


# Fields a resumed run may change without changing what it computes: where and how often the state is written, and
# the wall-clock budget. The schedule's length (steps, lr_cycle_ends, restart_lr_scale) may change when the learning
# rate of every trained step stays the same (_check_resume_lr); every other field must be the saved run's.
_DISTILL_RESUME_FREE = {"checkpoint_path", "checkpoint_every", "max_minutes", "steps", "lr_cycle_ends",
                        "restart_lr_scale"}


def teacher_fingerprint(teacher) -> str | None:
    """sha256 of a teacher network's weights (names, dtypes, values), or None for a teacher without weights (an
    exact oracle) — what a distillation state records so that resuming it with another teacher is refused."""
    if not isinstance(teacher, nn.Module):
        return None
    import hashlib

    h = hashlib.sha256()
    for name, t in teacher.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()


def _check_resume(state: dict, cfg: DistillConfig, teacher, path) -> None:
    """A saved distillation resumes only as the same run: same settings (``_DISTILL_RESUME_FREE`` aside), same
    learning rate on its trained steps, same teacher. States saved before the teacher was recorded skip that check."""
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    now = asdict(cfg)
    diff = [f"{k} (saved {saved[k]!r}, now {now[k]!r})" for k in now
            if k not in _DISTILL_RESUME_FREE and k in saved
            and (tuple(saved[k]) if isinstance(saved[k], list) else saved[k]) != now[k]]
    if diff:
        raise ValueError(f"the training state {path} was saved with different settings: {'; '.join(diff)}. Resume "
                         "with the same settings, or start fresh (delete it, or train with --fresh)")
    if saved:
        _check_resume_lr(saved, cfg, int(state["step"]), path)
    saved_teacher, now_teacher = state.get("teacher_fingerprint"), teacher_fingerprint(teacher)
    if saved_teacher is not None and saved_teacher != now_teacher:
        raise ValueError(f"the training state {path} was distilled from a different teacher (weights sha256 "
                         f"{saved_teacher[:12]}…, now {str(now_teacher)[:12]}…): resuming would mix two teachers. "
                         "Start fresh (delete it, or train with --fresh)")


def _check_resume_lr(saved: dict, cfg: DistillConfig, saved_step: int, path) -> None:
    """Resuming must not change the learning rate of the steps already trained (a longer recipe is only a
    continuation when it adds a cycle with ``lr_cycle_ends``); otherwise the result is no recipe's output."""
    fields = {k: v for k, v in saved.items() if k in DistillConfig.__dataclass_fields__}
    fields["lr_cycle_ends"] = tuple(fields.get("lr_cycle_ends", ()))
    try:
        old = DistillConfig(**fields)
        same = all(_lr(s, old, 0.0) == _lr(s, cfg, 0.0) for s in range(min(saved_step, cfg.steps)))
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(f"the training state {path} was saved with a different learning-rate schedule "
                         f"(steps {saved.get('steps')}, lr_cycle_ends {saved.get('lr_cycle_ends', ())}); its "
                         f"{saved_step} steps would not be this recipe's. Start fresh (delete it, or train with "
                         "--fresh), or extend the recipe with lr_cycle_ends=(old steps,)")


def _drop_labels(y, p: float, num_classes: int, gen: torch.Generator):
    if y is None or p <= 0:
        return y
    if not num_classes:
        raise ValueError("label dropout needs a class-conditional network (num_classes > 0)")
    drop = (torch.rand(y.shape[0], generator=gen) < p).to(y.device)
    return torch.where(drop, torch.full_like(y, num_classes), y)


def _check_data(images, labels):
    if not isinstance(images, torch.Tensor) or images.ndim < 2:
        raise ValueError("images must be a tensor of shape (N, ...)")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],)
                               or labels.dtype != torch.long):
        raise ValueError(f"labels must be an int64 tensor of shape ({images.shape[0]},) or None")


def distill(teacher, schedule: NoiseSchedule, images: torch.Tensor, labels: torch.Tensor | None = None,
            config: DistillConfig | None = None, student: nn.Module | None = None, resume: bool = True,
            progress: bool = True, device: torch.device | str | None = None, until: int | None = None) -> DistillResult:
    """Consistency distillation (``config.mode = "cd"``, Song et al. 2023, Alg. 2) or consistency training
    (``"ct"``, Alg. 3 with iCT's growing N), on an in-memory dataset.

    Args:
        teacher: the ε-model whose PF-ODE is distilled, ``teacher(x_t, t[, cond])`` (ignored for CT).
        schedule: the teacher's noise schedule; it must match the student's.
        images, labels: (N, ...) data in [−1, 1] and optional int64 class labels (dropped to the null label
            with probability ``p_uncond``, so the student also generates unconditionally).
        student: a :class:`ConsistencyModel`; default: the teacher's network warm-started (CD only).
        resume: continue from ``config.checkpoint_path`` if it exists.
        until: stop after this step (a resumable part of the run, e.g. to measure along the way); the learning-rate
            schedule still follows ``config.steps``.
    Returns the online student, its EMA (sample from it), the loss history and the step reached. Ctrl-C saves a
    checkpoint (when a path is set) and returns what was trained.
    """
    from tqdm.auto import tqdm

    from .config import get_device
    from .training import ema_decay_at, ema_update

    cfg = config or DistillConfig()
    _check_data(images, labels)
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if cfg.mode == "cd" and teacher is None:
        raise ValueError("consistency distillation (mode='cd') needs a teacher; use mode='ct' to train without one")
    if cfg.mode == "cd":
        _check_schedule("the teacher", getattr(teacher, "schedule", None), schedule)
    if student is None:
        if cfg.mode == "ct" or not isinstance(teacher, nn.Module):
            raise ValueError("pass a student ConsistencyModel (a warm start needs the teacher's network, mode 'cd')")
        student = ConsistencyModel.from_teacher(teacher, schedule, grid_size=cfg.grid_size,
                                                sigma_data=cfg.sigma_data, sigma_cap=cfg.sigma_cap)
    if not isinstance(student, ConsistencyModel):
        raise TypeError(f"student must be a ConsistencyModel, got {type(student).__name__}")
    _check_schedule("the given schedule", schedule, student.schedule)
    dev = torch.device(device) if device is not None else get_device()
    student = student.to(dev).train()
    if isinstance(teacher, nn.Module) and cfg.mode == "cd":
        teacher = teacher.to(dev).eval().requires_grad_(False)
    target = student if cfg.target_decay == 0 else copy.deepcopy(student).requires_grad_(False)
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    history, step = DistillHistory(), 0
    ckpt = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None
    fingerprint = teacher_fingerprint(teacher) if ckpt is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state = checkpoints.load(ckpt, map_location=dev, verify=False)
        _check_resume(state, cfg, teacher, ckpt)
        student.load_state_dict(state["student"])
        ema.load_state_dict(state["ema"])
        if state.get("target") is not None and target is not student:
            target.load_state_dict(state["target"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        step, history = int(state["step"]), DistillHistory(**state["history"])
        if progress:
            print(f"resumed from {ckpt} at step {step}")

    def save_checkpoint():
        if ckpt is not None:
            checkpoints.save({"student": student.state_dict(), "ema": ema.state_dict(),
                              "target": None if target is student else target.state_dict(),
                              "optimizer": opt.state_dict(), "generator": gen.get_state(),
                              "torch_rng": torch.get_rng_state(), "step": step, "history": asdict(history),
                              "config": asdict(cfg), "teacher_fingerprint": fingerprint}, ckpt)

    images_dev = images.to(dev)
    labels_dev = labels.to(dev) if labels is not None else None
    grids: dict[int, torch.Tensor] = {}
    budget_s = 60 * cfg.max_minutes if cfg.max_minutes is not None else math.inf
    what = "consistency distillation" if cfg.mode == "cd" else "consistency training"
    bar = tqdm(total=cfg.steps, initial=step, desc=what, disable=not progress, mininterval=0.5)
    start = time.perf_counter() - history.wall_time
    interrupted = False
    try:
        last = cfg.steps if until is None else min(cfg.steps, until)
        while step < last and history.wall_time < budget_s:
            idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen).to(dev)
            x0 = images_dev[idx]
            y = _drop_labels(labels_dev[idx] if labels_dev is not None else None, cfg.p_uncond,
                             student.num_classes, gen)
            if cfg.mode == "cd":
                grid = student.grid                 # the student's own grid (cfg.grid_size built it by default)
                n_grid = grid.numel() - 1
            else:
                n_grid = ct_grid_size(step, cfg.steps, cfg.ct_n_start, cfg.ct_n_end)
                grid = grids.setdefault(n_grid, make_grid(schedule, n_grid))
            for group in opt.param_groups:
                group["lr"] = _lr(step, cfg, history.wall_time)
            n, k = (draw_pairs(x0.shape[0], n_grid, cfg.teacher_hops, gen, cfg.aligned_hop, cfg.aligned_fraction)
                    if cfg.aligned_hop else (None, None))
            loss = consistency_loss(student, target, x0, schedule, grid, teacher if cfg.mode == "cd" else None,
                                    cond=y, kind=cfg.distance, clip_denoised=cfg.clip_denoised, generator=gen,
                                    solver=cfg.teacher_solver, hops=cfg.teacher_hops, n=n, k=k)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"the consistency loss became {value} at step {step}; lower lr={cfg.lr}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
            opt.step()
            if target is not student:
                target_update(target, student, cfg.target_decay)
            ema_update(ema, student, ema_decay_at(step, cfg.ema_decay))
            history.loss.append(value)
            history.grid_size.append(n_grid)
            step += 1
            history.wall_time = time.perf_counter() - start
            bar.update(1)
            if step % 20 == 0 or step == cfg.steps:
                bar.set_postfix(loss=f"{sum(history.loss[-50:]) / len(history.loss[-50:]):.4g}", N=n_grid)
            if ckpt is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_checkpoint()
    except KeyboardInterrupt:
        interrupted = True
        save_checkpoint()
        print(f"interrupted at step {step}" + (f"; checkpoint saved to {ckpt}" if ckpt is not None else ""))
    finally:
        bar.close()
    if not interrupted:
        save_checkpoint()
    student.eval()
    return DistillResult(student=student, ema=ema, history=history, step=step, interrupted=interrupted)


# The recipe of ``fmnist-cd-v1`` (the base every later stage of ``fmnist-cd`` overrides in pretrained.RECIPES;
# ``python -m diffusion_course.train`` runs them through :func:`distill_recipe`): the live demo's settings, longer,
# with a lower, decaying rate. Batch 32 × 3000 steps is what one CPU thread does in about an hour (0.9–1.4 s a step; batch 64 costs 3× per step here, not 2×: cache effects).
# The loss was still falling at step 3000 (0.54 → 0.45 over the last half), so the recipe was extended by a second
# cosine cycle of 3000 steps at half the peak rate, resumed from the saved state at step 3000 (which it leaves as is).
FMNIST_CD_RECIPE = dict(steps=6000, lr_cycle_ends=(3000,), restart_lr_scale=0.5,
                        batch_size=32, lr=1e-4, warmup=200, lr_decay="cosine", grad_clip=1.0, mode="cd",
                        grid_size=20, distance="pseudo-huber", target_decay=0.0, ema_decay=0.999, p_uncond=0.1,
                        clip_denoised=True, sigma_data=0.5, sigma_cap=2.0, seed=0, checkpoint_every=200)


def build_student(teacher_net: nn.Module, schedule: NoiseSchedule, distill_config: dict | DistillConfig) -> ConsistencyModel:
    """The student architecture of a recipe: the teacher's network (a fresh copy of its weights) with the ε-head."""
    cfg = distill_config if isinstance(distill_config, DistillConfig) else DistillConfig(**distill_config)
    return ConsistencyModel.from_teacher(teacher_net, schedule, grid_size=cfg.grid_size, sigma_data=cfg.sigma_data,
                                         sigma_cap=cfg.sigma_cap)


def distill_recipe(teacher_name: str, distill_config: dict, state_path: str | Path | None = None,
                   steps: int | None = None, device=None, progress: bool = True, until: int | None = None,
                   init_from: str | None = None) -> DistillResult:
    """Run a distillation recipe from a shipped teacher on Fashion-MNIST (what ``train.py`` calls for ``fmnist-cd``).

    Loads ``pretrained.load(teacher_name)`` and the training set, builds the warm-started student, and runs
    :func:`distill` with the recipe's :class:`DistillConfig` (``steps`` overrides its length), saving and resuming
    the training state at ``state_path``. ``init_from`` names a shipped consistency checkpoint whose weights the
    student starts from instead of the teacher's (a further cycle; quick mode falls back to the teacher's weights
    when it is missing). Export ``result.ema`` (its ``state_dict`` loads into
    :func:`build_student`'s model) and score it with :func:`evaluate`.
    """
    from . import pretrained
    from .config import is_quick
    from .data import load_fashion_mnist

    # quick mode (CI, a fresh clone without checkpoints): a few-step teacher is trained on the spot, not saved
    teacher, schedule = pretrained.load(teacher_name, device=device, train_if_missing=is_quick())
    fields = {**distill_config, "checkpoint_path": str(state_path) if state_path is not None else None}
    if steps is not None:
        fields["steps"] = steps
        fields["lr_cycle_ends"] = tuple(e for e in fields.get("lr_cycle_ends", ()) if e < steps)
    cfg = DistillConfig(**fields)
    x, y = load_fashion_mnist("train")
    student = build_student(teacher, schedule, cfg)
    if init_from is not None:
        if pretrained.path_for(init_from).exists():
            start = pretrained.load(init_from, device="cpu", train_if_missing=False)
            if start.schedule.T != schedule.T or start.config["grid_size"] != student.config["grid_size"]:
                raise ValueError(f"{init_from!r} (T={start.schedule.T}, grid {start.config['grid_size']}) does not "
                                 f"match the recipe's student (T={schedule.T}, grid {student.config['grid_size']})")
            # a further cycle must continue a student of this very teacher (its manifest records the teacher's sha256)
            start_teacher = pretrained.manifest(init_from).get("metrics", {}).get("teacher_sha256")
            shipped_teacher = pretrained.path_for(teacher_name).exists()
            teacher_sha = pretrained.manifest(teacher_name).get("sha256") if shipped_teacher else None
            if start_teacher and teacher_sha and start_teacher != teacher_sha:
                raise ValueError(f"{init_from!r} was distilled from another {teacher_name!r} (sha256 "
                                 f"{start_teacher[:12]}…, the shipped one is {teacher_sha[:12]}…): re-distil it first")
            student.load_state_dict(start.state_dict())
        elif is_quick():
            print(f"{init_from!r} (the student's starting point) is missing: quick mode starts from the teacher")
        else:
            raise FileNotFoundError(f"the student starts from {init_from!r}, whose checkpoint "
                                    f"{pretrained.path_for(init_from)} is missing; train it first: "
                                    f"python -m diffusion_course.train {init_from}")
    return distill(teacher, schedule, x, y, cfg, student=student, progress=progress, device=device, until=until)


# --------------------------------------------------------------------------- progressive distillation
def progressive_target(x_t: torch.Tensor, x_tpp: torch.Tensor, t, t_pp, schedule: NoiseSchedule) -> torch.Tensor:
    """The x₀ that makes one DDIM step t → t'' land on x_{t''} (Salimans & Ho 2022, Alg. 2):

        x̃ = (x_{t''} − (σ_{t''}/σ_t)·x_t) / (α_{t''} − (σ_{t''}/σ_t)·α_t),   α = √ᾱ, σ = √(1−ᾱ);
    at the clean end (t'' = −1: α = 1, σ = 0) it is x_{t''} itself.
    """
    t, t_pp = sampling._as_t(t, x_t), sampling._as_t(t_pp, x_t)
    ab, ab_pp = sampling._alpha_bars(schedule, t, t_pp, x_t)
    ratio = (1 - ab_pp).sqrt() / (1 - ab).sqrt()
    return (x_tpp - ratio * x_t) / (ab_pp.sqrt() - ratio * ab.sqrt())


def progressive_loss(student, teacher, x0: torch.Tensor, schedule: NoiseSchedule, student_steps: int,
                     cond: torch.Tensor | None = None, clip_denoised: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """One progressive-distillation loss: the student's single DDIM step must match two of the teacher's.

    Student steps are ``sampling.timesteps(T, K, "trailing")``; the teacher's 2K-step list interleaves them
    (trailing lists nest: every other entry of the 2K list is the K list). Weighted by the truncated SNR
    max(SNR_t, 1) on the x₀ error (Salimans & Ho 2022, Sec. 4) — v-prediction's weighting, bounded at t = T−1.
    """
    T = schedule.T
    ts_s = sampling.timesteps(T, student_steps, "trailing")
    ts_t = sampling.timesteps(T, 2 * student_steps, "trailing")
    if not torch.equal(ts_t[::2], ts_s):
        raise ValueError(f"the trailing {2 * student_steps}-step list does not contain the {student_steps}-step one")
    B = x0.shape[0]
    j = torch.randint(0, student_steps, (B,), generator=generator)
    t = ts_s[j].to(x0.device)
    t_mid = ts_t[2 * j + 1].to(x0.device)
    t_next = torch.cat([ts_s[1:], ts_s.new_full((1,), -1)])[j].to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
    x_t = forward.q_sample(x0, t, schedule, noise)
    with torch.no_grad():
        x_mid = teacher_step(teacher, x_t, t, t_mid, schedule, cond, clip_denoised)
        x_next = teacher_step(teacher, x_mid, t_mid, t_next, schedule, cond, clip_denoised)
        target = progressive_target(x_t, x_next, t, t_next, schedule)
    _, x0_hat = sampling.predict_eps_x0(student, x_t, t, schedule, cond)
    snr = schedule.snr.to(x0.device)[t].to(x0.dtype)
    weight = snr.clamp(min=1.0)
    return (weight * (x0_hat - target).pow(2).flatten(1).mean(1)).mean()


def progressive_distillation(teacher, schedule: NoiseSchedule, images: torch.Tensor,
                             labels: torch.Tensor | None = None, start_steps: int = 8, end_steps: int = 1,
                             config: DistillConfig | None = None, student: nn.Module | None = None,
                             progress: bool = True, device: torch.device | str | None = None) -> list[dict]:
    """Progressive distillation (Salimans & Ho 2022, Alg. 2): a student of ``start_steps``/2 DDIM steps learns
    to match the teacher's ``start_steps``; it becomes the teacher of the next round, until ``end_steps``.

    The first student is ``student`` (an x₀-predicting :class:`Denoiser`), else a copy of the teacher if it is a
    Denoiser, else the ε-teacher warm-started (:meth:`Denoiser.from_teacher`); each later one starts from its teacher. ``config.steps`` optimiser steps per
    round. Returns one dict per round: ``{"steps": K, "model": student (eval), "loss": [...], "seconds": s}``;
    sample a round's student with ``sampling.ddim_sample(model, x_T, schedule, steps=K)``.
    """
    from tqdm.auto import tqdm

    from .config import get_device

    cfg = config or DistillConfig()
    _check_data(images, labels)
    for name, v in (("start_steps", start_steps), ("end_steps", end_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    rounds = math.log2(start_steps / end_steps) if start_steps > end_steps else 0
    if rounds < 1 or rounds != int(rounds):
        raise ValueError(f"start_steps must be end_steps·2^r with r >= 1 (each round halves), got {start_steps}, {end_steps}")
    _check_schedule("the teacher", getattr(teacher, "schedule", None), schedule)
    dev = torch.device(device) if device is not None else get_device()
    if student is None:   # PD's students start from their teacher
        student = (copy.deepcopy(teacher) if isinstance(teacher, Denoiser) else
                   Denoiser.from_teacher(teacher, schedule, sigma_data=cfg.sigma_data, sigma_cap=cfg.sigma_cap))
    _check_schedule("the student", getattr(student, "schedule", None), schedule)
    if isinstance(teacher, nn.Module):
        teacher = teacher.to(dev).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed)
    images_dev = images.to(dev)
    labels_dev = labels.to(dev) if labels is not None else None
    out, k = [], start_steps // 2
    while k >= end_steps:
        student = student.to(dev).train().requires_grad_(True)
        opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
        losses, t0 = [], time.perf_counter()
        for step in tqdm(range(cfg.steps), desc=f"progressive distillation {2 * k} → {k} steps",
                         disable=not progress, leave=False):
            idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen).to(dev)
            y = _drop_labels(labels_dev[idx] if labels_dev is not None else None, cfg.p_uncond,
                             getattr(student, "num_classes", 0), gen)
            for group in opt.param_groups:
                group["lr"] = _lr(step, cfg, 0.0)
            loss = progressive_loss(student, teacher, images_dev[idx], schedule, k, y, cfg.clip_denoised, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
        student.eval().requires_grad_(False)
        out.append({"steps": k, "model": student, "loss": losses, "seconds": time.perf_counter() - t0})
        teacher, student = student, copy.deepcopy(student)
        k //= 2
    return out


# --------------------------------------------------------------------------- sampling (Alg. 1)
def sample_timesteps(model, steps: int) -> torch.Tensor:
    """The ``steps`` descending timesteps multistep sampling evaluates f at: trailing spacing on the model's grid
    (grid indices N, N − N/k, …), so 1 step is t = T−1, 2 steps are T−1 and ≈T/2 on the DDIM-N grid."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    grid = model.grid
    N = grid.numel() - 1
    if steps > N:
        raise ValueError(f"steps must be at most the grid size N={N}, got {steps}")
    idx = [N - round(j * N / steps) for j in range(steps)]
    return grid[torch.tensor(idx)]


def renoise(x0: torch.Tensor, t: int, z: torch.Tensor, schedule: NoiseSchedule, sigma_min: float) -> torch.Tensor:
    """Alg. 1's re-noising, in the teacher's VP coordinates: y = x̂₀ + √(σ_t² − σ_min²)·z, x_t = √ᾱ_t·y
    (x̂₀ sits at σ_min, so only the missing variance is added)."""
    ab = float(schedule.alpha_bar[int(t)])
    sigma2 = (1 - ab) / ab
    return math.sqrt(ab) * (x0 + math.sqrt(max(sigma2 - sigma_min**2, 0.0)) * z)


@torch.no_grad()
def sample(model, x_T: torch.Tensor, steps: int = 1, cond: torch.Tensor | None = None,
           generator: torch.Generator | None = None, timesteps: torch.Tensor | None = None,
           clip_denoised: bool = True) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1) with ``steps`` network calls.

    x_T is standard normal noise of the data's shape. At the top of the grid (ᾱ ≈ 2·10⁻⁹) it is taken as
    x_{t_1} = √(1−ᾱ) x_T, then x̂₀ = f(x_{t_1}, t_1); each further step re-noises x̂₀ to the next level,
    y = x̂₀ + √(σ_τ² − σ_min²)·z, x_τ = √ᾱ_τ·y, and applies f again. ``timesteps`` (descending ints) overrides
    :func:`sample_timesteps`. ``clip_denoised`` clamps each x̂₀ to [−1, 1] (images; pass False for other data).
    """
    if not isinstance(model, ConsistencyModel) and not (hasattr(model, "grid") and hasattr(model, "schedule")):
        raise TypeError(f"model must be a ConsistencyModel (with .grid and .schedule), got {type(model).__name__}")
    if not isinstance(x_T, torch.Tensor) or x_T.ndim < 2:
        raise ValueError(f"x_T must be a batched tensor (B, ...), got {getattr(x_T, 'shape', type(x_T).__name__)}")
    if cond is not None and (not isinstance(cond, torch.Tensor) or cond.shape != (x_T.shape[0],)
                             or cond.dtype.is_floating_point):
        raise ValueError(f"cond must be an integer label tensor of shape ({x_T.shape[0]},) or None")
    if timesteps is None:
        ts = sample_timesteps(model, steps)
    else:
        ts = torch.as_tensor(timesteps).long().reshape(-1)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if ts.numel() != steps or bool((ts[1:] >= ts[:-1]).any()) or int(ts.min()) <= model.t_min \
                or int(ts.max()) >= model.schedule.T:
            raise ValueError(f"timesteps must be {steps} strictly descending ints in ({model.t_min}, {model.schedule.T - 1}]")
    schedule, sigma_min = model.schedule, model.sigma_min
    def full(t_int):
        return torch.full((x_T.shape[0],), int(t_int), dtype=torch.long, device=x_T.device)

    ab = float(schedule.alpha_bar[int(ts[0])])
    x = math.sqrt(1 - ab) * x_T
    x0 = model(x, full(ts[0]), cond)
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
    for tau in ts[1:].tolist():
        z = torch.randn(x_T.shape, generator=generator, dtype=torch.float32).to(x_T.device, x_T.dtype)
        x = renoise(x0, tau, z, schedule, sigma_min)
        x0 = model(x, full(tau), cond)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
    return x0


# --------------------------------------------------------------------------- the exact consistency function
class ExactConsistencyFunction:
    """The perfect consistency function of a :class:`~diffusion_course.gmm.GaussianMixture`: (x_t, t) ↦ the point
    at σ_min = σ_{t_min} of the exact PF-ODE trajectory through x_t.

    In VE coordinates the mixture's noised density is Σ_k w_k N(y; μ_k, diag(σ_k² + σ²)) exactly, so the ODE
    dy/d ln σ = −σ² ∇_y log p_σ(y) (Karras et al. 2022, Eq. 1, in ln σ) is integrated with ``rk_steps`` classical
    Runge–Kutta steps per trajectory (error ≲ 1e-7 with the default). Called like a model: ``f(x_t, t, cond=None)``
    returns (B, d) float64; it has ``schedule`` and ``grid`` (every timestep) so :func:`sample` accepts it.
    """

    objective = "x0"

    def __init__(self, mixture, schedule: NoiseSchedule, t_min: int = 0, rk_steps: int = 400):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.mixture, self.schedule, self.t_min, self.rk_steps = mixture, schedule, int(t_min), int(rk_steps)
        self.sigma_min = float(schedule.sigma[self.t_min])
        self.grid = torch.arange(self.t_min, schedule.T, dtype=torch.long)
        self._sigma = schedule.sigma.detach().cpu().double()

    def score_ve(self, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """∇_y log p_σ(y) for the mixture blurred by N(0, σ²I), y (B, d), σ (B,), float64."""
        m = self.mixture
        var = m.variances[None] + sigma.reshape(-1, 1, 1) ** 2                    # (B, K, d)
        diff = y[:, None, :] - m.means[None]
        log_comp = -0.5 * (diff.pow(2) / var + torch.log(var)).sum(-1) + m.log_weights
        resp = torch.softmax(log_comp, dim=1)
        return -(resp[..., None] * diff / var).sum(1)

    def ode_map(self, y: torch.Tensor, sigma_from: torch.Tensor, sigma_to: float | torch.Tensor) -> torch.Tensor:
        """Integrate the PF-ODE from σ_from (B,) to σ_to in VE coordinates; y (B, d) float64."""
        u0 = torch.log(sigma_from)
        u1 = torch.log(torch.as_tensor(sigma_to, dtype=torch.float64)).expand_as(u0)
        h = ((u1 - u0) / self.rk_steps)[:, None]

        def rhs(yy, u):
            s = torch.exp(u)
            return -(s**2)[:, None] * self.score_ve(yy, s)

        u = u0.clone()
        for _ in range(self.rk_steps):
            k1 = rhs(y, u)
            k2 = rhs(y + 0.5 * h * k1, u + 0.5 * h[:, 0])
            k3 = rhs(y + 0.5 * h * k2, u + 0.5 * h[:, 0])
            k4 = rhs(y + h * k3, u + h[:, 0])
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            u = u + h[:, 0]
        return y

    def __call__(self, x: torch.Tensor, t, cond=None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.mixture.dim:
            raise ValueError(f"x must have shape (B, {self.mixture.dim})")
        t = sampling._as_t(t, x).cpu()
        if int(t.min()) < self.t_min:
            raise ValueError(f"t must be >= t_min={self.t_min}")
        sigma = self._sigma[t]
        y = x.detach().cpu().double() * (1 + sigma**2).sqrt()[:, None]
        at_min = t == self.t_min
        out = self.ode_map(y, sigma, self.sigma_min)
        out[at_min] = y[at_min]            # the boundary condition, exactly
        return out.to(device=x.device) if x.dtype == torch.float64 else out.to(device=x.device, dtype=x.dtype)


# --------------------------------------------------------------------------- measuring
def seconds_per_image(fn: Callable[[torch.Tensor], torch.Tensor], x_T: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time of ``fn(x_T)`` divided by the batch size (one warm-up call first)."""
    fn(x_T)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x_T)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] / x_T.shape[0]


def interleaved_seconds_per_image(fns: dict[str, Callable[[torch.Tensor], torch.Tensor]], x_T: torch.Tensor,
                                  rounds: int = 5) -> dict[str, list[float]]:
    """Wall time per image of each ``fns[name](x_T)``, timed in ``rounds`` interleaved rounds (every sampler once
    per round, the order reversed on alternate rounds), after one warm-up call each.

    A CPU's speed drifts over seconds (turbo, other processes), so timing one sampler in its own block and the next
    after it folds that drift into their ratio; within a round the samplers see the same machine. Ratios should be
    taken round by round (``a[i] / b[i]``) and summarised by their median and range."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if not fns:
        raise ValueError("fns must name at least one sampler")
    for fn in fns.values():
        fn(x_T)
    out: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[name](x_T)
            out[name].append((time.perf_counter() - t0) / x_T.shape[0])
    return out


@torch.no_grad()
def evaluate(cm, n: int = 1000, steps=(1, 2, 4), seed: int = 0, teacher=None, teacher_schedule=None,
             ddim_steps=(1, 2, 4, 50), dpm_steps=(), batch_size: int = 250, device=None, classifier=None,
             progress: bool = False, ode_solvers=()) -> dict:
    """Class-conditional FID of ``cm``'s k-step samples (k in ``steps``) and, with a ``teacher``, of its DDIM-k
    (``ddim_steps``) and DPM-Solver++(2M)-k (``dpm_steps``) samples — all from the same noise and the same exactly
    class-balanced labels, against a class-balanced real set of n, next to the class-balanced floor (two disjoint
    real sets of n). Also class accuracy and the sampling seconds (at ``batch_size``). ``cm=None`` measures the
    teacher only. ``ode_solvers`` (e.g. ``("ddim", "heun")``) also scores the teacher's PF-ODE solved down the
    student's grid with that :func:`teacher_step` (:func:`teacher_ode_sample`): the end points a student distilled
    with that solver is trained to reproduce, its ceiling. Keys: ``fid_cm1``, ``fid_ddim50``, ``fid_dpm10``,
    ``fid_ode_heun``, ``class_accuracy_…``, ``seconds_…``, ``floor_balanced``, ``n``."""
    from tqdm.auto import tqdm

    from . import metrics, pretrained

    if cm is None and teacher is None:
        raise ValueError("evaluate needs a consistency model, a teacher, or both")
    some = cm if cm is not None else teacher
    dev = torch.device(device) if device is not None else next(some.parameters()).device
    clf = classifier if classifier is not None else pretrained.load("fmnist-classifier", device=dev)
    labels = torch.arange(n) % 10
    x_T = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    ref = metrics.reference_images(n, class_balanced=True)
    out = {"n": n, "floor_balanced": metrics.fid_floor(clf, n, class_balanced=True)}
    jobs = []
    if cm is not None:
        jobs += [(f"cm{k}", lambda xb, yb, g, k=k: sample(cm, xb, k, cond=yb, generator=g)) for k in steps]
    if teacher is not None:
        if teacher_schedule is None:
            raise ValueError("pass teacher_schedule with the teacher")
        jobs += [(f"ddim{k}", lambda xb, yb, g, k=k: sampling.ddim_sample(
            teacher, xb, teacher_schedule, steps=k, cond=yb, progress=False, clip_denoised=True)) for k in ddim_steps]
        jobs += [(f"dpm{k}", lambda xb, yb, g, k=k: sampling.dpm_solver_2m_sample(
            teacher, xb, teacher_schedule, steps=k, cond=yb, progress=False, clip_denoised=True)) for k in dpm_steps]
        ode_grid = cm.grid if cm is not None else make_grid(teacher_schedule, 20)
        jobs += [(f"ode_{solver}", lambda xb, yb, g, solver=solver: teacher_ode_sample(
            teacher, xb, teacher_schedule, ode_grid, yb, solver)) for solver in ode_solvers]
    elif ode_solvers:
        raise ValueError("ode_solvers needs the teacher")
    for name, fn in tqdm(jobs, desc="FID", disable=not progress):
        g = torch.Generator().manual_seed(seed + 1)
        t0 = time.perf_counter()
        xs = torch.cat([fn(x_T[i:i + batch_size].to(dev), labels[i:i + batch_size].to(dev), g).clamp(-1, 1).cpu()
                        for i in range(0, n, batch_size)])
        out[f"seconds_{name}"] = time.perf_counter() - t0
        out[f"fid_{name}"] = metrics.fid(clf, xs, ref)
        out[f"class_accuracy_{name}"] = metrics.class_accuracy(clf, xs, labels)
    return out


# --------------------------------------------------------------------------- exercises
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
    from .schedules import NoiseSchedule as _NS

    s = _NS.cosine(1000)
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


def check_exercise(fn, name: str, verbose: bool = True) -> bool:
    """Chapter 7's automatic checks: ``"boundary"`` takes ``(c_skip_fn, c_out_fn)``, each ``(sigma, sigma_data,
    sigma_min) -> tensor``, and checks the *properties* (boundary condition, bounded at high noise) — any design
    that has them passes; ``"renoise"`` compares ``fn(x0, t, z, schedule, sigma_min)`` with :func:`renoise`."""
    if name == "boundary":
        return _check_boundary(fn, verbose)
    if name == "renoise":
        return _check_renoise(fn, verbose)
    raise ValueError(f"unknown exercise {name!r}; available: ['boundary', 'renoise']")
