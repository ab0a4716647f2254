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
* multistep consistency sampling (Alg. 1): :func:`sample`;
* the exact consistency function of a Gaussian mixture (:class:`ExactConsistencyFunction`), the oracle
  the tests and chapter 7 score students against.

Progressive distillation (a different paper) is :mod:`diffusion_course.progressive`; the variants the project
screened on top of the paper's loss (Heun teacher steps, multi-hop targets, sampler-aligned pairs) are
:mod:`diffusion_course.consistency_extensions`.

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
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import forward, sampling, training
from .gmm import GaussianMixture
from .schedules import NoiseSchedule

Model = Callable[..., torch.Tensor]          # model(x_t, t[, cond]) -> prediction
Timesteps = int | torch.Tensor               # an integer timestep, or one per sample (B,)
Sigma = float | torch.Tensor

__all__ = ["DISTANCES", "HEADS", "MODES", "c_skip", "c_out", "make_grid", "Denoiser", "ConsistencyModel",
           "teacher_step", "distance", "consistency_loss", "ct_grid_size", "target_update", "DistillConfig",
           "DistillResult", "distill", "multistep_timesteps", "renoise", "sample", "ExactConsistencyFunction"]

DISTANCES = ("l2", "pseudo-huber")
HEADS = ("eps", "raw")
MODES = ("cd", "ct")

# --------------------------------------------------------------------------- the parameterisation
def c_skip(sigma: Sigma, sigma_data: float = 0.5, sigma_min: float = 0.0) -> Sigma:
    """c_skip(σ) = σ_d² / ((σ − σ_min)² + σ_d²)   (Song et al. 2023, App. C): 1 at σ_min, → 0 as σ → ∞."""
    return sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)


def c_out(sigma: Sigma, sigma_data: float = 0.5, sigma_min: float = 0.0) -> Sigma:
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

    def forward(self, x: torch.Tensor, t: Timesteps, cond: torch.Tensor | None = None) -> torch.Tensor:
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
    def from_teacher(cls, teacher: nn.Module, schedule: NoiseSchedule, **kwargs: float | int | str) -> "Denoiser":
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

    def to_ve(self, x: torch.Tensor, t: Timesteps) -> torch.Tensor:
        """y = x_t/√ᾱ_t = √(1+σ_t²)·x_t, computed as the model's skip path is (so f(x, t_min) equals it bit for bit)."""
        t = sampling._as_t(t, x)
        scale = (1 + self.sigma_at(t) ** 2).sqrt()
        return scale.to(x.device, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)) * x


# --------------------------------------------------------------------------- the teacher's ODE step
@torch.no_grad()
def teacher_step(teacher: Model, x_t: torch.Tensor, t: Timesteps, t_prev: Timesteps, schedule: NoiseSchedule, cond: torch.Tensor | None = None,
                 clip_denoised: bool = False) -> torch.Tensor:
    """One deterministic step of the teacher's PF-ODE, x_t → x_{t_prev}: ``sampling.ddim_step`` (η = 0) with the
    teacher's ε̂ — an Euler step in the VE coordinates y = x/√ᾱ, dy/dσ = ε̂ (Song et al. 2021, Eq. 13)."""
    t, t_prev = sampling._as_t(t, x_t), sampling._as_t(t_prev, x_t)
    eps, x0 = sampling.predict_eps_x0(teacher, x_t, t, schedule, cond, clip_denoised)
    return sampling.ddim_step(x_t, eps, t, t_prev, schedule, eta=0.0, x0=x0)


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


def consistency_loss(student: Model, target: Model, x0: torch.Tensor, schedule: NoiseSchedule, grid: torch.Tensor,
                     teacher: Model | None = None,
                     cond: torch.Tensor | None = None, kind: str = "l2", clip_denoised: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The consistency loss E_n[d(f_θ(x_{t_{n+1}}, t_{n+1}), f_θ⁻(x̂_{t_n}, t_n))], n ~ U{0..N−1}.

    With a ``teacher`` (distillation, Song et al. 2023, Alg. 2): x̂_{t_n} is one teacher ODE step down from
    x_{t_{n+1}} = q_sample(x₀, t_{n+1}, z). Without (consistency training, Alg. 3): x̂_{t_n} = q_sample(x₀, t_n, z)
    with the *same* z — the DDIM step taken with the true noise z in place of ε̂, an unbiased one-sample estimate
    of the teacher's (Thm. 2). ``target`` is θ⁻, called without grad.
    """
    if not isinstance(grid, torch.Tensor) or grid.ndim != 1 or grid.numel() < 2:
        raise ValueError("grid must be a 1-D tensor of at least 2 ascending timesteps")
    grid = grid.to(x0.device)
    n = torch.randint(0, grid.numel() - 1, (x0.shape[0],), generator=generator).to(x0.device)
    t_hi, t_lo = grid[n + 1], grid[n]
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
    x_hi = forward.q_sample(x0, t_hi, schedule, noise)
    with torch.no_grad():
        if teacher is None:
            x_lo = forward.q_sample(x0, t_lo, schedule, noise)
        else:
            x_lo = teacher_step(teacher, x_hi, t_hi, t_lo, schedule, cond, clip_denoised)
        f_target = target(x_lo, t_lo, cond)
    f_online = student(x_hi, t_hi, cond)
    return distance(f_online, f_target.to(f_online.dtype), kind).mean()


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
    """Settings of :func:`distill` (consistency distillation or training) and of progressive distillation."""
    steps: int = 2000                 # optimiser steps (per round for progressive distillation)
    batch_size: int = 32
    lr: float = 2e-4                  # a fine-tuning rate: the student starts from the teacher
    warmup: int = 50
    lr_decay: str = "cosine"          # "cosine" (to 10 %) or "constant" (training.lr_at, the course's one schedule)
    lr_cycle_ends: tuple[int, ...] = ()   # warm restarts, as in training.TrainConfig
    restart_lr_scale: float = 1.0
    grad_clip: float = 1.0
    mode: str = "cd"                  # "cd" (with a teacher) or "ct" (consistency training, no teacher)
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
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.lr_decay not in {"cosine", "constant"}:
            raise ValueError(f"lr_decay must be 'cosine' or 'constant', got {self.lr_decay!r}")
        for name in ("steps", "batch_size", "grid_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("lr", "sigma_data", "sigma_cap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, (int, float)) or not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be a number >= 0 (0 = no clipping), got {self.grad_clip!r}")
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
    segments: list[dict] = field(default_factory=list)


@dataclass
class DistillResult:
    student: nn.Module       # the online network θ
    ema: nn.Module           # its EMA: sample from this one
    history: DistillHistory
    step: int
    interrupted: bool = False


def teacher_fingerprint(teacher: object) -> str | None:
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


def drop_labels(y: torch.Tensor | None, p: float, num_classes: int, gen: torch.Generator) -> torch.Tensor | None:
    """Replace each label by the null label ``num_classes`` with probability ``p`` (classifier-free dropout)."""
    if y is None or p <= 0:
        return y
    if not num_classes:
        raise ValueError("label dropout needs a class-conditional network (num_classes > 0)")
    drop = (torch.rand(y.shape[0], generator=gen) < p).to(y.device)
    return torch.where(drop, torch.full_like(y, num_classes), y)


def check_data(images: object, labels: object) -> None:
    """Refuse training data that is not (N, ...) images with optional int64 (N,) labels."""
    if not isinstance(images, torch.Tensor) or images.ndim < 2:
        raise ValueError("images must be a tensor of shape (N, ...)")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],)
                               or labels.dtype != torch.long):
        raise ValueError(f"labels must be an int64 tensor of shape ({images.shape[0]},) or None")


def distill(teacher: Model | None, schedule: NoiseSchedule, images: torch.Tensor, labels: torch.Tensor | None = None,
            config: DistillConfig | None = None, student: nn.Module | None = None, resume: bool = True,
            progress: bool = True, device: torch.device | str | None = None, until: int | None = None,
            loss_fn: Callable | None = None) -> DistillResult:
    """Consistency distillation (``config.mode = "cd"``, Song et al. 2023, Alg. 2) or consistency training
    (``"ct"``, Alg. 3 with iCT's growing N), on an in-memory dataset, on the course's training skeleton
    (:class:`~diffusion_course.training.Loop`: exact resume, Ctrl-C returns what was trained).

    Args:
        teacher: the ε-model whose PF-ODE is distilled, ``teacher(x_t, t[, cond])`` (ignored for CT).
        schedule: the teacher's noise schedule; it must match the student's.
        images, labels: (N, ...) data in [−1, 1] and optional int64 class labels (dropped to the null label
            with probability ``p_uncond``, so the student also generates unconditionally).
        student: a :class:`ConsistencyModel`; default: the teacher's network warm-started (CD only).
        resume: continue from ``config.checkpoint_path`` if it exists.
        until: stop after this step (a resumable part of the run); the learning rate still follows ``config.steps``.
        loss_fn: replaces :func:`consistency_loss` (same arguments; the variants in ``consistency_extensions``).
    """
    from .config import get_device

    cfg = config or DistillConfig()
    check_data(images, labels)
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
    fingerprint = teacher_fingerprint(teacher) if cfg.checkpoint_path else None
    what = "consistency distillation" if cfg.mode == "cd" else "consistency training"
    loop = training.Loop(cfg, {"student": student, "ema": ema, "target": None if target is student else target},
                         opt, DistillHistory(), desc=what, progress=progress,
                         extra_state={"teacher_fingerprint": fingerprint})

    def same_teacher(state: dict) -> None:
        saved = state.get("teacher_fingerprint")
        if saved is not None and saved != teacher_fingerprint(teacher):
            raise ValueError(f"the training state {loop.ckpt} was distilled from a different teacher: resuming would "
                             "mix two teachers. Start fresh (delete it, or train with --fresh)")

    loop.resume(dev, resume, check=same_teacher)
    images_dev = images.to(dev)
    labels_dev = labels.to(dev) if labels is not None else None
    grids: dict[int, torch.Tensor] = {}
    loss_fn = loss_fn or consistency_loss

    def compute(step: int) -> training.StepOutput:
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=loop.gen).to(dev)
        x0 = images_dev[idx]
        y = drop_labels(labels_dev[idx] if labels_dev is not None else None, cfg.p_uncond, student.num_classes,
                        loop.gen)
        if cfg.mode == "cd":
            grid = student.grid                 # the student's own grid (cfg.grid_size built it by default)
        else:
            n = ct_grid_size(step, cfg.steps, cfg.ct_n_start, cfg.ct_n_end)
            grid = grids.setdefault(n, make_grid(schedule, n))
        training._hook("batch", step)
        loss = loss_fn(student, target, x0, schedule, grid, teacher if cfg.mode == "cd" else None, cond=y,
                       kind=cfg.distance, clip_denoised=cfg.clip_denoised, generator=loop.gen)
        return training.StepOutput(loss, loss.item(), {"grid_size": grid.numel() - 1})

    def after_update(out: training.StepOutput) -> None:
        if target is not student:
            target_update(target, student, cfg.target_decay)
        training.ema_update(ema, student, training.ema_decay_at(loop.step, cfg.ema_decay))
        loop.history.grid_size.append(out.record["grid_size"])

    interrupted = loop.run(compute, after_update, until=until)
    student.eval()
    return DistillResult(student=student, ema=ema, history=loop.history, step=loop.step, interrupted=interrupted)


# --------------------------------------------------------------------------- sampling (Alg. 1)
def multistep_timesteps(model: ConsistencyModel, steps: int) -> torch.Tensor:
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
    (x̂₀ sits at σ_min, so only the missing variance is added). ``t`` is an integer timestep in [0, T − 1]."""
    from . import validate

    t = t.item() if isinstance(t, torch.Tensor) and t.numel() == 1 and not t.is_floating_point() else t
    ab = float(schedule.alpha_bar[validate.integer("t", t, low=0, high=schedule.T - 1)])
    sigma2 = (1 - ab) / ab
    return math.sqrt(ab) * (x0 + math.sqrt(max(sigma2 - sigma_min**2, 0.0)) * z)


@torch.no_grad()
def sample(model: ConsistencyModel, x_T: torch.Tensor, *, steps: int = 1, timesteps: torch.Tensor | None = None,
           cond: torch.Tensor | None = None, generator: torch.Generator | None = None,
           clip_denoised: bool = False) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1) with ``steps`` network calls.

    x_T is standard normal noise of the data's shape. At the top of the grid (ᾱ ≈ 2·10⁻⁹) it is taken as
    x_{t_1} = √(1−ᾱ) x_T, then x̂₀ = f(x_{t_1}, t_1); each further step re-noises x̂₀ to the next level,
    y = x̂₀ + √(σ_τ² − σ_min²)·z, x_τ = √ᾱ_τ·y, and applies f again. ``timesteps`` (descending ints) overrides
    :func:`multistep_timesteps`. ``clip_denoised`` clamps each x̂₀ to [−1, 1] (images: pass True; off by default,
    as in every sampler of the course, so 2-D data is not clipped). The model carries its schedule (no ``schedule``
    argument). A float64/float16 x_T is converted to the model's dtype; a non-finite x̂₀ is an error naming its step.
    """
    from . import validate

    if not isinstance(model, ConsistencyModel) and not (hasattr(model, "grid") and hasattr(model, "schedule")):
        raise TypeError(f"model must be a ConsistencyModel (with .grid and .schedule), got {type(model).__name__}")
    x_T = validate.float_tensor("x_T", x_T, min_ndim=2, dtype=validate.model_dtype(model))
    if cond is not None and (not isinstance(cond, torch.Tensor) or cond.shape != (x_T.shape[0],)
                             or cond.dtype.is_floating_point):
        raise ValueError(f"cond must be an integer label tensor of shape ({x_T.shape[0]},) or None")
    if timesteps is None:
        ts = multistep_timesteps(model, steps)
    else:
        ts = torch.as_tensor(timesteps).long().reshape(-1)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if ts.numel() != steps or bool((ts[1:] >= ts[:-1]).any()) or int(ts.min()) <= model.t_min \
                or int(ts.max()) >= model.schedule.T:
            raise ValueError(f"timesteps must be {steps} strictly descending ints in ({model.t_min}, {model.schedule.T - 1}]")
    schedule, sigma_min = model.schedule, model.sigma_min
    def f(x, t_int, i):  # x̂₀ = f(x_t, t), the i-th of len(ts) network calls
        x0 = model(x, torch.full((x_T.shape[0],), int(t_int), dtype=torch.long, device=x_T.device), cond)
        validate.finite("the model's x̂₀", x0, f"at step {i} of {len(ts)} (t={int(t_int)})")
        return x0.clamp(-1, 1) if clip_denoised else x0

    ab = float(schedule.alpha_bar[int(ts[0])])
    x0 = f(math.sqrt(1 - ab) * x_T, ts[0], 1)
    for i, tau in enumerate(ts[1:].tolist(), 2):
        z = torch.randn(x_T.shape, generator=generator, dtype=torch.float32).to(x_T.device, x_T.dtype)
        x0 = f(renoise(x0, tau, z, schedule, sigma_min), tau, i)
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

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, t_min: int = 0, rk_steps: int = 400):
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

    def __call__(self, x: torch.Tensor, t: Timesteps, cond: torch.Tensor | None = None) -> torch.Tensor:
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
