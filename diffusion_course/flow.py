"""Flow matching and rectified flow: learn a velocity field that carries noise straight to data.

Conventions (SD3 / minRF): t = 0 is data, t = 1 is noise, and the path is a straight line

    x_t = (1 − t)·x₀ + t·ε,        d x_t/dt = ε − x₀                    (Liu et al. 2023, Eq. 1)

A network v(x_t, t) regressed on ε − x₀ learns the *marginal* velocity E[ε − x₀ | x_t] (Lipman et al. 2023,
"Flow Matching for Generative Modeling", Eq. 9, conditional FM; Thm. 2), and integrating dx/dt = v from t = 1
(x₁ ~ N(0, I)) down to t = 0 gives samples. Here: the loss (:func:`flow_matching_loss`) with uniform or logit-normal t
(Esser et al. 2024, SD3, Eq. 19) and independent or minibatch-OT couplings (Tong et al. 2023, OT-CFM); Euler/Heun
:func:`sample` with classifier-free guidance; reflow (:func:`reflow_pairs`, :func:`reflow_loss`) and
:func:`straightness` (Liu et al. 2023, Alg. 1 and Eq. 6); the exact velocity of a Gaussian mixture; a chapter-2
ε-model as a velocity (:func:`velocity_from_eps`); and exact log-likelihoods through ``sde``'s ODE machinery.

A velocity model is any callable ``v(x, t)`` or ``v(x, t, cond)`` with t a float tensor (B,) in [0, 1]. Models
carry ``objective = "flow"`` so that ``sampling``'s ε/x₀/v samplers refuse them instead of misreading them.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from . import validate
from .losses import LossDetails
from .schedules import NoiseSchedule

if TYPE_CHECKING:
    from .gmm import GaussianMixture

__all__ = ["interpolate", "target_velocity", "sample_t", "minibatch_ot", "flow_matching_loss", "reflow_loss",
           "FlowUNet", "FlowMLP", "VelocityFromEps", "velocity_from_eps", "sample", "straightness", "reflow_pairs",
           "exact_velocity", "log_likelihood"]

T_SAMPLINGS = ("uniform", "logit-normal")
COUPLINGS = ("independent", "ot")
SOLVERS = ("euler", "heun")
Velocity = Callable[..., torch.Tensor]   # v(x, t) or v(x, t, cond), t a float tensor (B,) in [0, 1]


# --------------------------------------------------------------------------- checks and small helpers
def _check_batch(name: str, x) -> torch.Tensor:
    return validate.float_tensor(name, x, min_ndim=2)


def _check_pair(x0, noise) -> None:
    _check_batch("x0", x0)
    _check_batch("noise", noise)
    if noise.shape != x0.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but x0 has {tuple(x0.shape)}")


def _check_time(t, batch: int, name: str = "t") -> torch.Tensor:
    """t as a float tensor (B,) in [0, 1]; a Python number or a 0-d / 1-element tensor is broadcast."""
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        t = torch.full((batch,), float(t))
    if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor of shape (B,) with values in [0, 1] (0 = data, 1 = noise), "
                        f"got {t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    t = t.reshape(1).expand(batch) if t.numel() == 1 else t
    if t.shape != (batch,):
        raise ValueError(f"{name} must have shape (B,)=({batch},), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or bool((t > 1).any()):
        raise ValueError(f"{name} must lie in [0, 1] (0 = data, 1 = noise), got range "
                         f"[{float(t.min()):.4g}, {float(t.max()):.4g}]")
    return t


def _bshape(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, …, 1) in ``like``'s dtype and device, to broadcast against it."""
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _call(model, x: torch.Tensor, t: torch.Tensor, cond=None, name: str = "the model") -> torch.Tensor:
    out = model(x, t) if cond is None else model(x, t, cond)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"{name} returned {tuple(getattr(out, 'shape', ())) or type(out).__name__} for x of shape "
                         f"{tuple(x.shape)}; a velocity model must return a tensor of x's shape")
    return out.to(x.dtype)


# --------------------------------------------------------------------------- the path
def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·x₀ + t·ε, the straight path (Liu et al. 2023, Eq. 1; Lipman et al. 2023, Eq. 23 with σ_min = 0)."""
    _check_pair(x0, noise)
    t = _bshape(_check_time(t, x0.shape[0]), x0)
    return (1 - t) * x0 + t * noise


def target_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t/dt = ε − x₀: the regression target, the same at every t of the straight path."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but x0 has {tuple(x0.shape)}")
    return noise - x0


def sample_t(batch: int, kind: str = "uniform", generator: torch.Generator | None = None, mean: float = 0.0,
             std: float = 1.0) -> torch.Tensor:
    """Training times (B,) float32: ``"uniform"`` t ~ U[0, 1), or ``"logit-normal"`` t = sigmoid(u), u ~ N(mean, std²)
    (Esser et al. 2024, Eq. 19), which spends the samples on the middle of the path where the velocity is hardest."""
    batch = validate.positive_int("batch", batch)
    if kind not in T_SAMPLINGS:
        raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {kind!r}")
    if kind == "uniform":
        return torch.rand(batch, generator=generator)
    mean, std = validate.real("mean", mean), validate.real("std", std, low=0.0, low_open=True)
    return torch.sigmoid(mean + std * torch.randn(batch, generator=generator))


def minibatch_ot(x0: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The permutation (B,) int64 pairing x0[i] with noise[perm[i]] that minimises Σ_i ‖x0[i] − noise[perm[i]]‖²:
    the exact optimal transport plan between the two empirical batches (Tong et al. 2023, OT-CFM; Pooladian et al.
    2023). Pairs stay close, so the learned paths cross less and are straighter. With ``labels`` (B,) pairs are made
    within each class only, so a class-conditional model still sees noise independent of its label."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as err:
        raise ImportError("minibatch_ot needs SciPy for the exact assignment: pip install scipy") from err
    _check_pair(x0, noise)
    B = x0.shape[0]
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (B,)
                               or labels.dtype.is_floating_point):
        raise ValueError(f"labels must be an integer tensor of shape ({B},), got {getattr(labels, 'shape', labels)}")
    cost = (torch.cdist(x0.detach().flatten(1).double(), noise.detach().flatten(1).double()) ** 2).cpu().numpy()
    groups = [np.arange(B)] if labels is None else [np.flatnonzero(labels.cpu().numpy() == c)
                                                    for c in np.unique(labels.cpu().numpy())]
    perm = np.arange(B)
    for rows in groups:
        _, cols = linear_sum_assignment(cost[np.ix_(rows, rows)])
        perm[rows] = rows[cols]
    return torch.from_numpy(perm).to(x0.device)


# --------------------------------------------------------------------------- training objectives
def _regress(model, x0, noise, t, cond, p_uncond, num_classes, generator, return_details) -> torch.Tensor | LossDetails:
    """MSE between model(x_t, t, cond) and ε − x₀, with condition dropout as in ``losses.diffusion_loss``."""
    p_uncond = validate.probability("p_uncond", p_uncond)
    B = x0.shape[0]
    drop = torch.rand(B, generator=generator).to(x0.device) < p_uncond
    if cond is not None and p_uncond > 0:
        if num_classes is None and hasattr(model, "null_cond"):
            null = model.null_cond(cond)
        else:
            label = num_classes if num_classes is not None else getattr(model, "num_classes", None)
            if label is None:
                raise ValueError("p_uncond > 0 needs num_classes= (the null label) or a model with num_classes")
            null = torch.full_like(cond, label)
        cond = torch.where(drop.reshape((B,) + (1,) * (cond.ndim - 1)), null, cond)
    pred = _call(model, interpolate(x0, noise, t), t, cond)
    per_sample = (pred.float() - target_velocity(x0, noise).float()).pow(2).flatten(1).mean(1)
    loss = per_sample.mean()
    return LossDetails(loss, t, per_sample.detach()) if return_details else loss


def flow_matching_loss(model: Velocity, x0: torch.Tensor, cond: torch.Tensor | None = None, *,
                       t_sampling: str = "uniform", coupling: str = "independent", p_uncond: float = 0.0,
                       num_classes: int | None = None, generator: torch.Generator | None = None,
                       return_details: bool = False,
                       logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor | LossDetails:
    """One Monte-Carlo estimate of the (conditional) flow-matching loss E‖v_θ(x_t, t) − (ε − x₀)‖²
    (Lipman et al. 2023, Eq. 9 / 23; Liu et al. 2023, Eq. 1). t, ε and the dropout mask come from ``generator``
    (on the CPU, in that order). ``coupling="ot"`` re-pairs ε with x₀ by :func:`minibatch_ot` (within classes when
    ``cond`` holds labels). ``p_uncond``: each label becomes the null label ``num_classes`` (default
    ``model.num_classes``) with that probability, for classifier-free guidance. ``return_details`` gives
    ``losses.LossDetails(loss, t, per_sample)``, so a trainer can plot the loss per t."""
    x0 = _check_batch("x0", x0)
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    t = sample_t(x0.shape[0], t_sampling, generator, logit_mean, logit_std).to(x0.device, x0.dtype)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    if coupling == "ot":
        labels = cond if isinstance(cond, torch.Tensor) and cond.ndim == 1 else None
        noise = noise[minibatch_ot(x0, noise, labels)]
    return _regress(model, x0, noise, t, cond, p_uncond, num_classes, generator, return_details)


def reflow_loss(model: Velocity, noise: torch.Tensor, x0: torch.Tensor, cond: torch.Tensor | None = None, *,
                t_sampling: str = "uniform", p_uncond: float = 0.0, num_classes: int | None = None,
                generator: torch.Generator | None = None, return_details: bool = False,
                logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor | LossDetails:
    """The flow-matching loss on *fixed* pairs (ε, x₀ = the flow's own sample from ε): one reflow round retrains on
    the deterministic coupling of the previous flow, whose paths no longer cross (Liu et al. 2023, Alg. 1)."""
    _check_pair(x0, noise)
    t = sample_t(x0.shape[0], t_sampling, generator, logit_mean, logit_std).to(x0.device, x0.dtype)
    return _regress(model, x0, noise.to(x0.device, x0.dtype), t, cond, p_uncond, num_classes, generator,
                    return_details)


# --------------------------------------------------------------------------- models
class FlowUNet(nn.Module):
    """A course ``nn.unet.UNet`` as a velocity model ``v(x, t, cond=None)`` with t ∈ [0, 1] real.

    The U-Net's sinusoidal embedding takes real timesteps; it is fed t·(T − 1), T = 1000, so its frequencies
    cover [0, 1] as they cover the ε-models' 0…999. Pass a ``unet`` or the UNet's keyword arguments.
    """

    objective = "flow"   # not "eps"/"x0"/"v": sampling's VP samplers refuse it rather than misread it

    def __init__(self, unet: nn.Module | None = None, T: int = 1000, **unet_kwargs: object):
        super().__init__()
        from .nn.unet import UNet

        if unet is not None and unet_kwargs:
            raise ValueError("pass either unet= or the UNet's keyword arguments, not both")
        self.unet = unet if unet is not None else UNet(**unet_kwargs)
        self.T = validate.integer("T", T, low=2)
        self.num_classes = getattr(self.unet, "num_classes", 0)
        self.config = {**getattr(self.unet, "config", {}), "T": self.T}

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(t, torch.Tensor) and not t.dtype.is_floating_point:
            raise TypeError(f"FlowUNet is a velocity model with float t in [0, 1], got {t.dtype} timesteps: sample "
                            "it with flow.sample, not with sampling's ε-model samplers")
        t = _check_time(t, x.shape[0])
        return self.unet(x, t * (self.T - 1), cond)


class FlowMLP(nn.Module):
    """A small MLP velocity model for 2-D toys: ``v(x, t, cond=None)``, x (B, d), t (B,) in [0, 1].

    Time enters as the course's sinusoidal embedding of t·(T − 1) (as in :class:`FlowUNet`); with ``num_classes`` a
    one-hot label is appended too, and label ``num_classes`` (or ``cond=None``) is the null label of classifier-free
    guidance.
    """

    objective = "flow"

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, t_dim: int = 32, num_classes: int = 0,
                 T: int = 1000):
        super().__init__()
        self.dim, self.t_dim, self.T = (validate.positive_int(k, v) for k, v in (("dim", dim), ("t_dim", t_dim),
                                                                                ("T", T)))
        self.num_classes = validate.non_negative_int("num_classes", num_classes)
        hidden, depth = validate.positive_int("hidden", hidden), validate.positive_int("depth", depth)
        self.config = dict(dim=dim, hidden=hidden, depth=depth, t_dim=t_dim, num_classes=num_classes, T=T)
        width = dim + t_dim + (num_classes + 1 if num_classes else 0)
        layers: list[nn.Module] = [nn.Linear(width, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        from .nn.embeddings import timestep_embedding

        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        t = _check_time(t, x.shape[0])
        parts = [x, timestep_embedding(t * (self.T - 1), self.t_dim).to(x.dtype)]
        if self.num_classes:
            label = torch.full((x.shape[0],), self.num_classes, device=x.device) if cond is None else cond
            if label.shape != (x.shape[0],) or int(label.min()) < 0 or int(label.max()) > self.num_classes:
                raise ValueError(f"cond must hold labels 0…{self.num_classes} (the last is the null label), shape "
                                 f"({x.shape[0]},)")
            parts.append(nn.functional.one_hot(label.long(), self.num_classes + 1).to(x.dtype))
        elif cond is not None:
            raise ValueError("this FlowMLP is unconditional (num_classes=0) but got cond")
        return self.net(torch.cat(parts, dim=1))


class VelocityFromEps:
    """A discrete VP ε-model as a velocity on the straight path; see :func:`velocity_from_eps`."""

    objective = "flow"

    def __init__(self, eps_model: Callable[..., torch.Tensor], schedule: NoiseSchedule, time: str = "fractional"):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if time not in ("fractional", "nearest"):
            raise ValueError(f"time must be 'fractional' or 'nearest', got {time!r}")
        if getattr(eps_model, "objective", "eps") != "eps":
            raise ValueError(f"velocity_from_eps needs an ε-model, got objective={eps_model.objective!r}")
        ab = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alpha_bar.detach().double().cpu()])
        self.alpha, self.sigma = ab.sqrt(), (1 - ab).sqrt()            # index 0 ↔ VP step −1 (clean)
        self.grid = self.sigma / (self.alpha + self.sigma)              # t_rf of VP steps −1 … T−1
        if float(self.alpha[-1]) == 0 or not bool((self.grid.diff() > 0).all()):
            raise ValueError("the schedule needs ᾱ strictly decreasing with ᾱ_{T−1} > 0 (not zero terminal SNR)")
        self.model, self.schedule, self.time = eps_model, schedule, time
        self.t_max = float(self.grid[-1])
        self.num_classes = getattr(eps_model, "num_classes", 0)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = _check_time(t, x.shape[0])
        te = t.detach().double().cpu().clamp(max=self.t_max)
        u = torch.from_numpy(np.interp(te.numpy(), self.grid.numpy(), np.arange(-1.0, self.schedule.T)))
        k = u.round().long()                                            # nearest VP step, −1 … T−1
        on_grid = self.grid[k + 1].to(t.dtype) == te.to(t.dtype)        # t is (the rounding of) a DDIM time
        norm = ((1 - te) ** 2 + te**2).sqrt()                           # α = (1−t)/norm, σ = t/norm, α²+σ² = 1
        alpha = torch.where(on_grid, self.alpha[k + 1], (1 - te) / norm)
        sigma = torch.where(on_grid, self.sigma[k + 1], te / norm)
        exact = on_grid.all() or self.time == "nearest"
        model_t = (k if exact else torch.where(on_grid, k.double(), u).to(x.dtype)).clamp(min=0).to(x.device)
        a, s = _bshape(alpha, x), _bshape(sigma, x)
        x_vp = (a + s) * x                                              # x_vp = α x₀ + σ ε = (α + σ) x_rf
        eps = _call(self.model, x_vp, model_t, cond, "the ε-model")
        x0 = (x_vp - s * eps) / a
        tb = _bshape(t, x)
        # beyond the model's noisiest step (t_max < t <= 1): keep its x̂₀ and use v = (x − x̂₀)/t
        return torch.where(tb > self.t_max, (x - x0) / tb.clamp(min=1e-12), eps - x0)

    def ddim_equivalent(self, x_T: torch.Tensor, steps: int,
                        spacing: str = "trailing") -> tuple[torch.Tensor, list[float]]:
        """(x1, times) with ``sample(self, x1, times=times) == sampling.ddim_sample(model, x_T, schedule, steps,
        eta=0, spacing=spacing)``: times are t_rf of DDIM's integer steps, then 0; x1 = x_T/(α + σ) at the first."""
        from .sampling import timesteps

        ts = timesteps(self.schedule.T, steps, spacing)
        times = [float(self.grid[k + 1]) for k in ts.tolist()] + [0.0]
        return x_T / float(self.alpha[ts[0] + 1] + self.sigma[ts[0] + 1]), times


def velocity_from_eps(eps_model: Callable[..., torch.Tensor], schedule: NoiseSchedule,
                      time: str = "fractional") -> VelocityFromEps:
    """A chapter-2 ε-model (integer t ∈ [0, T)) as a velocity v(x, t, cond=None), t ∈ [0, 1] real.

    Dividing x_vp = α x₀ + σ ε (α = √ᾱ, σ = √(1−ᾱ)) by α + σ gives (1 − t) x₀ + t ε with t = σ/(α + σ): the VP
    path *is* the straight path, rescaled and re-timed (Kingma & Gao 2023; Lipman et al. 2023, Sec. 4.1). So
    x_vp = (α+σ) x, ε̂ = eps_model(x_vp, step), x̂₀ = (x_vp − σ ε̂)/α, v = ε̂ − x̂₀, and Euler on v from DDIM's
    times *is* DDIM (η = 0) exactly (see :meth:`VelocityFromEps.ddim_equivalent`). The time map: α, σ come from t
    exactly (α = (1−t)/n, σ = t/n, n = √((1−t)² + t²)); the network's step is the index whose t_rf equals t, by
    linear interpolation of the index against t_rf on the schedule's grid (t_rf rises strictly with the step).
    A t that is (the dtype's rounding of) a grid time uses that integer step and the schedule's own ᾱ;
    between grid points ``time="fractional"`` passes the real index (U-Nets accept it), ``"nearest"`` the nearest
    integer (for models such as ``gmm.OracleModel`` that take only integers). Above t_max = t_rf(T − 1) < 1 the
    model is called at step T − 1 as if x were there, and v = (x − x̂₀)/t.
    """
    return VelocityFromEps(eps_model, schedule, time)


# --------------------------------------------------------------------------- sampling
def _times(steps, times) -> list[float]:
    if times is None:
        return torch.linspace(1.0, 0.0, validate.positive_int("steps", steps) + 1, dtype=torch.float64).tolist()
    times = [validate.real("times", s) for s in times]
    if len(times) < 2 or any(a <= b for a, b in zip(times, times[1:])) or times[0] > 1 or times[-1] < 0:
        raise ValueError(f"times must be a strictly descending list of >= 2 values in [0, 1], got {times}")
    return times


@torch.no_grad()
def sample(model: Velocity, x1: torch.Tensor, *, steps: int = 8, cond: torch.Tensor | None = None,
           guidance_scale: float = 1.0, solver: str = "euler", times: list[float] | None = None,
           generator: torch.Generator | None = None, clip_denoised: bool | float = False, progress: bool = False,
           return_trajectory: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict]:
    """Integrate dx/dt = v(x, t) from x1 (t = 1, or ``times[0]``) down to t = 0 (Liu et al. 2023, Eq. 2).

    ``solver``: "euler" (NFE = steps) or "heun" (Karras et al. 2022, Alg. 1: 2 evaluations per step, Euler on the
    last step to t = 0, NFE = 2·steps − 1). ``times``: an explicit descending grid instead of ``steps`` equal steps.
    With ``cond`` and ``guidance_scale`` s ≠ 1: v = v_u + s(v_c − v_u) in one batched call (``guidance``'s CFG; the
    null label is ``model.num_classes``). ``clip_denoised`` clamps x̂₀ = x − t·v to [−1, 1] (or [−c, c]).
    ``generator`` is accepted for the course's common sampler signature; both solvers are deterministic.
    ``return_trajectory`` adds ``{"t": (S+1,), "x": (S+1, B, …), "v": (S, B, …)}`` (Euler's first velocities).
    """
    from .guidance import classifier_free

    x = _check_batch("x1", x1)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    grid = _times(steps, times)
    scale = validate.real("guidance_scale", guidance_scale)
    if cond is not None and scale != 1.0:
        model, cond = classifier_free(model, cond, scale), None   # one batched call on [x, x] per step
    elif scale != 1.0:
        raise ValueError("guidance_scale != 1 needs cond (the labels to guide towards)")
    bound = None if clip_denoised is False else (1.0 if clip_denoised is True else float(clip_denoised))

    def vel(x_, t_value, where):
        t = torch.full((x_.shape[0],), t_value, dtype=x_.dtype, device=x_.device)
        v = validate.finite("the model's velocity", _call(model, x_, t, cond), where)
        if bound is not None and t_value > 0:
            v = (x_ - (x_ - t_value * v).clamp(-bound, bound)) / t_value
        return v

    pairs = list(zip(grid[:-1], grid[1:]))
    if progress:
        from tqdm.auto import tqdm
        pairs = tqdm(pairs, desc=f"flow-{solver}", leave=False)
    traj = {"t": torch.tensor(grid), "x": [x], "v": []}
    for i, (t0, t1) in enumerate(pairs):
        where = f"at step {i + 1} of {len(grid) - 1} (t={t0:.4g} -> {t1:.4g})"
        d = vel(x, t0, where)
        x_next = x + (t1 - t0) * d
        if solver == "heun" and t1 > 0:
            x_next = x + (t1 - t0) * 0.5 * (d + vel(x_next, t1, where))
        x = validate.finite("the sample", x_next, where)
        if return_trajectory:
            traj["x"].append(x)
            traj["v"].append(d)
    if return_trajectory:
        return x, {"t": traj["t"], "x": torch.stack(traj["x"]), "v": torch.stack(traj["v"])}
    return x


def straightness(model: Velocity, x1: torch.Tensor, *, steps: int = 32,
                 cond: torch.Tensor | None = None) -> torch.Tensor:
    """Liu et al. 2023's straightness S = ∫₀¹ E‖(x₁ − x₀) − v(x_t, t)‖² dt (Eq. 6, our time direction), per sample
    (B,): along the Euler path of ``steps`` equal steps from x1, the step-weighted mean over steps of the per-element
    mean squared difference between each velocity and the average velocity x1 − x0_end. 0 iff the path is a straight
    line travelled at constant speed (then one Euler step is exact)."""
    x1 = _check_batch("x1", x1)
    x0, traj = sample(model, x1, steps=steps, cond=cond, return_trajectory=True)
    h = -traj["t"].diff().to(x1.device, x1.dtype)                               # step lengths, sum 1
    dev = (traj["v"] - (x1 - x0)[None]).pow(2).flatten(2).mean(2)               # (S, B)
    return (h[:, None] * dev).sum(0)


def reflow_pairs(model: Velocity, n: int, *, shape: tuple[int, ...], steps: int, batch_size: int = 250,
                 labels: torch.Tensor | None = None, seed: int = 0, solver: str = "euler",
                 guidance_scale: float = 1.0, cache: str | Path | None = None, device: torch.device | str | None = None,
                 progress: bool = False) -> tuple[torch.Tensor, ...]:
    """(noise, samples[, labels]): n noises drawn from ``seed`` (all at once on the CPU, so batching does not change
    them) and the flow's samples from them — the deterministic coupling a reflow round trains on (Liu et al.
    2023, Alg. 1). With ``cache`` (a path) the samples so far are saved atomically after every batch
    (``checkpoints.save``) and a rerun resumes there: an interruption loses at most one batch. The cache is keyed
    by n, shape, steps, seed, solver and labels; delete it after changing the model."""
    from . import checkpoints

    n, steps, batch_size = (validate.positive_int(k, v) for k, v in (("n", n), ("steps", steps),
                                                                       ("batch_size", batch_size)))
    shape = (shape,) if isinstance(shape, int) else shape
    seed, shape = validate.seed("seed", seed), tuple(validate.positive_int("shape", s) for s in shape)
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (n,)):
        raise ValueError(f"labels must be a tensor of shape (n,)=({n},), got {getattr(labels, 'shape', labels)}")
    if device is None:
        params = list(model.parameters()) if isinstance(model, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    meta = {"kind": "reflow_pairs", "n": n, "shape": list(shape), "steps": steps, "seed": seed, "solver": solver,
            "guidance_scale": float(guidance_scale)}
    samples = torch.empty(0, *shape)
    if cache is not None and Path(cache).exists():
        saved = checkpoints.load(cache)
        same_labels = (saved["labels"] is None) == (labels is None) and (labels is None or torch.equal(
            saved["labels"], labels.cpu()))
        if saved.get("meta") != meta or not same_labels:
            raise ValueError(f"the cache {cache} holds pairs for {saved.get('meta')} (or other labels), not {meta}; "
                             "delete it or pass another cache path")
        samples = saved["samples"]
    starts = range(len(samples), n, batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="reflow pairs", leave=False)
    for start in starts:
        rows = slice(start, min(start + batch_size, n))
        cond = labels[rows].to(device) if labels is not None else None
        out = sample(model, noise[rows].to(device), steps=steps, cond=cond, solver=solver,
                     guidance_scale=guidance_scale).cpu()
        samples = torch.cat([samples, out.to(samples.dtype)])
        if cache is not None:
            checkpoints.save({"meta": meta, "samples": samples, "labels": None if labels is None else labels.cpu()},
                             cache, manifest=meta)
    return (noise, samples) if labels is None else (noise, samples, labels)


# --------------------------------------------------------------------------- exact answers (Gaussian mixtures)
def exact_velocity(mixture: GaussianMixture, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """The exact marginal velocity E[ε − x₀ | x_t = x] of a ``gmm.GaussianMixture`` on the straight path, float64.

    Given component k, x_t ~ N((1−t) μ_k, V_k) with V_k = (1−t)² σ_k² + t² (per dimension), and Gaussian
    conditioning gives E[ε | x_t, k] = t/V_k · d and E[x₀ | x_t, k] = μ_k + (1−t) σ_k²/V_k · d, d = x − (1−t) μ_k;
    so v = Σ_k p(k | x_t) [(t − (1−t) σ_k²)/V_k · d − μ_k] with responsibilities under the noised mixture. This
    ε-form has no 1/t: it holds at t = 0 too (v = −x: x₀ is known, E[ε] = 0). Differentiable in x.
    """
    x = _check_batch("x", x)
    flat = x.reshape(x.shape[0], -1).double().cpu()
    if flat.shape[1] != mixture.dim:
        raise ValueError(f"x items have {flat.shape[1]} elements but the mixture has d={mixture.dim}")
    t = _check_time(t, x.shape[0]).detach().double().cpu().reshape(-1, 1, 1)
    var = (1 - t) ** 2 * mixture.variances[None] + t**2                    # V_k, (B, K, d)
    d = flat[:, None, :] - (1 - t) * mixture.means[None]                     # x − (1−t) μ_k
    log_joint = mixture.log_weights - 0.5 * (d**2 / var + var.log() + math.log(2 * math.pi)).sum(-1)
    per_comp = (t - (1 - t) * mixture.variances[None]) / var * d - mixture.means[None]
    v = (torch.softmax(log_joint, dim=1)[..., None] * per_comp).sum(1)     # Σ_k p(k | x_t) v_k
    return v.reshape(x.shape).to(x.device)


def log_likelihood(v: Velocity, x: torch.Tensor, *, cond: torch.Tensor | None = None, exact_trace: bool = False,
                   probes: int = 1, probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                   generator: torch.Generator | None = None,
                   return_info: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict]:
    """log p₀(x) in nats (B,) under the flow: log p₀(x) = log N(x(1); 0, I) + ∫₀¹ ∇·v(x(t), t) dt, integrating x
    from t = 0 up to the noise end (instantaneous change of variables, Chen et al. 2018; Lipman et al. 2023,
    Sec. 5). Reuses ``sde.flow_log_likelihood`` (adaptive dopri5; exact or Hutchinson divergence)."""
    from .sde import flow_log_likelihood

    x = _check_batch("x", x)

    def prior_logp(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * z.pow(2).flatten(1).sum(1) - 0.5 * z[0].numel() * math.log(2 * math.pi)

    def velocity(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _call(v, y, t, cond)

    return flow_log_likelihood(velocity, x, 0.0, 1.0, prior_logp, exact_trace, probes, probe, rtol, atol,
                               generator, return_info)


# --------------------------------------------------------------------------- training (on the course skeleton)
@dataclass
class FlowTrainConfig:
    """Settings of :func:`train_flow`: the trainer's optimiser, schedule and checkpoint fields, plus how flow
    matching draws t (``"uniform"`` or SD3's ``"logit-normal"``) and pairs noise with data (``coupling``)."""
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    lr_decay: str = "cosine"
    lr_cycle_ends: tuple[int, ...] = ()
    restart_lr_scale: float = 1.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    p_uncond: float = 0.1
    t_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    coupling: str = "independent"     # "independent" (I-CFM) or "ot" (minibatch OT, Tong et al. 2023)
    seed: int = 0
    checkpoint_path: str | None = None
    checkpoint_every: int = 500
    buckets: int = 10
    max_minutes: float | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "buckets"):
            validate.positive_int(name, getattr(self, name))
        for name in ("warmup", "checkpoint_every"):
            validate.non_negative_int(name, getattr(self, name))
        validate.seed("seed", self.seed)
        validate.real("lr", self.lr, low=0.0, low_open=True)
        validate.real("grad_clip", self.grad_clip, low=0.0)
        validate.probability("p_uncond", self.p_uncond)
        validate.real("logit_std", self.logit_std, low=0.0, low_open=True, allow_inf=False)
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {self.t_sampling!r}")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {self.coupling!r}")
        if self.lr_decay not in {"cosine", "constant"}:
            raise ValueError(f"lr_decay must be 'cosine' or 'constant', got {self.lr_decay!r}")
        self.lr_cycle_ends = tuple(validate.positive_int("lr_cycle_ends", s) for s in self.lr_cycle_ends)
        if list(self.lr_cycle_ends) != sorted(set(self.lr_cycle_ends)) or any(
                not self.warmup < s < self.steps for s in self.lr_cycle_ends):
            raise ValueError(f"lr_cycle_ends must be increasing steps between warmup and steps, got {self.lr_cycle_ends}")
        if self.max_minutes is not None:
            validate.real("max_minutes", self.max_minutes, low=0.0, low_open=True)


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
               config: FlowTrainConfig | None = None, noise: torch.Tensor | None = None, resume: bool | str = True,
               progress: bool = True, device: torch.device | str | None = None) -> TrainResult:
    """Train a velocity model ``model(x_t, t, cond)`` with :func:`flow_matching_loss` on an in-memory dataset, on the
    course's training skeleton (``training.Loop``: EMA, exact resume, Ctrl-C returns what was trained).

    With ``noise`` (one tensor per image) it trains on those fixed pairs instead — reflow (:func:`reflow_loss`):
    ``images`` are the previous flow's samples from ``noise``. The history buckets the loss by t in [0, 1].
    """
    from . import training
    from .config import get_device
    from .training import History, Loop, StepOutput, TrainResult, ema_decay_at, ema_update

    cfg = config or FlowTrainConfig()
    if not isinstance(cfg, FlowTrainConfig):
        raise TypeError(f"config must be a FlowTrainConfig, got {type(cfg).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    validate.float_tensor("images", images, min_ndim=2)
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],)
                               or labels.dtype != torch.long):
        raise ValueError(f"labels must be an int64 tensor of shape ({images.shape[0]},) or None")
    if noise is not None and (not isinstance(noise, torch.Tensor) or noise.shape != images.shape):
        raise ValueError(f"noise must have the images' shape {tuple(images.shape)} (one noise per image), "
                         f"got {tuple(getattr(noise, 'shape', ()))}")
    dev = torch.device(device) if device is not None else get_device()
    model = model.to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = History(bucket_sum=[0.0] * cfg.buckets, bucket_count=[0] * cfg.buckets)
    what = "reflow" if noise is not None else "flow matching"
    loop = Loop(cfg, {"model": model, "ema": ema}, opt, history, params=model.parameters(), desc=what,
                progress=progress)
    loop.resume(dev, resume)
    images_dev = images.to(dev)
    labels_dev = labels.to(dev) if labels is not None else None
    noise_dev = noise.to(dev) if noise is not None else None
    model.train()

    def compute(step: int) -> StepOutput:
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=loop.gen).to(dev)
        y = labels_dev[idx] if labels_dev is not None else None
        training._hook("batch", step)
        common = dict(t_sampling=cfg.t_sampling, p_uncond=cfg.p_uncond if y is not None else 0.0,
                      generator=loop.gen, return_details=True, logit_mean=cfg.logit_mean, logit_std=cfg.logit_std)
        if noise_dev is None:
            out = flow_matching_loss(model, images_dev[idx], y, coupling=cfg.coupling, **common)
        else:
            out = reflow_loss(model, noise_dev[idx], images_dev[idx], y, **common)
        buckets = (out.t.detach().float().cpu() * cfg.buckets).long().clamp(max=cfg.buckets - 1).tolist()
        return StepOutput(out.loss, out.loss.item(), {"buckets": buckets, "per_sample": out.per_sample.cpu().tolist()})

    def after_update(out: StepOutput) -> None:
        ema_update(ema, model, ema_decay_at(loop.step, cfg.ema_decay))
        for b, v in zip(out.record["buckets"], out.record["per_sample"]):
            loop.history.bucket_sum[b] += v
            loop.history.bucket_count[b] += 1

    interrupted = loop.run(compute, after_update)
    model.eval()
    return TrainResult(model=model, ema=ema, history=loop.history, step=loop.step, interrupted=interrupted)
