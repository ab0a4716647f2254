"""Score-based diffusion in continuous time: SDEs, their samplers, and exact likelihoods.

Song et al. 2021 ("Score-based generative modeling through stochastic differential equations", ICLR) write the
forward process as an SDE on t ∈ [0, 1]

    dx = f(x, t) dt + g(t) dw                                                                 (Eq. 5)

whose reverse-time SDE and probability-flow ODE need only the score s(x, t) = ∇ₓ log p_t(x):

    dx = [f(x, t) − g(t)² s(x, t)] dt + g(t) dw̄        (reverse SDE, Eq. 6)
    dx/dt = f(x, t) − ½ g(t)² s(x, t)                   (probability-flow ODE, Eq. 13)

The ODE moves samples with the same marginals p_t as the SDE, deterministically, so it is a normalising flow and
gives exact log-likelihoods through the instantaneous change of variables (Chen et al. 2018; Grathwohl et al.
2019, FFJORD): d log p(x(t))/dt = −∇·f̃(x(t), t).

Here:

* :class:`VPSDE` (DDPM's continuous limit), :class:`VESDE` (NCSN / SMLD) and :class:`DiscreteVPSDE`, the VP process
  whose ᾱ(t) passes exactly through a discrete schedule's ᾱ_i — the SDE a chapter-2 ε-model belongs to;
* :func:`score_from_eps`: an ε-model as a continuous-time score, s = −ε̂/σ(t);
* samplers: :func:`euler_maruyama`, :func:`predictor_corrector`, :func:`probability_flow` (Euler, Heun, or an
  adaptive Dormand–Prince "rk45" through torchdiffeq), :func:`langevin`, :func:`annealed_langevin`;
* likelihoods: :func:`log_likelihood` (PF-ODE, exact or Hutchinson divergence), :func:`bits_per_dim` (8-bit images,
  uniform dequantisation), :func:`ddpm_elbo_bpd` (DDPM's variational bound of the same ε-model),
  :func:`independent_pixel_bpd`, a per-pixel baseline for scale, and :func:`compressed_bpd`, a PNG/zlib code length
  (the input-complexity correction for out-of-distribution scores).

A score is any callable ``score_fn(x, t)`` with t a float tensor (B,) in (0, 1]. :func:`solve_ode` and
:func:`flow_log_likelihood` take any velocity field ``v(x, t)``, not only a score (flow matching reuses them).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import validate
from .schedules import NoiseSchedule

__all__ = ["SDE", "VPSDE", "VESDE", "DiscreteVPSDE", "score_from_eps", "ScoreFromEps", "euler_maruyama",
           "predictor_corrector", "probability_flow", "pf_ode_velocity", "solve_ode", "time_grid", "langevin",
           "annealed_langevin", "divergence", "hutchinson_divergence", "log_likelihood", "flow_log_likelihood",
           "dequantize", "bits_per_dim", "nats_to_bits_per_dim", "ddpm_elbo_bpd", "independent_pixel_bpd",
           "compressed_bpd"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_LOG_2PI = math.log(2 * math.pi)
ODE_METHODS = ("rk45", "euler", "heun")
PROBES = ("rademacher", "gaussian")


# =========================================================================== input checks
def _check_batch(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a batch (B, ...) with B >= 1, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def _check_t(t, batch: int | None = None, name: str = "t") -> torch.Tensor:
    """t must be a float tensor (B,) with every entry in (0, 1]."""
    if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor of shape (B,) with values in (0, 1], got "
                        f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    if t.ndim != 1 or (batch is not None and t.shape[0] != batch):
        raise ValueError(f"{name} must have shape (B,)" + (f"=({batch},)" if batch is not None else "")
                         + f", got {tuple(t.shape)}")
    if not torch.isfinite(t).all() or bool((t <= 0).any()) or bool((t > 1).any()):
        raise ValueError(f"{name} must lie in (0, 1] (continuous time; t -> 0 is the data end), got range "
                         f"[{float(t.min()):.4g}, {float(t.max()):.4g}]")
    return t


def _check_steps(steps, name: str = "steps") -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{name} must be a positive int, got {steps!r}")
    return steps


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _finite_at(t: float, **tensors: torch.Tensor) -> None:
    """Each tensor finite, else a :class:`validate.NonFiniteError` naming it and the time t where it went wrong."""
    for name, value in tensors.items():
        validate.finite(f"the {name}", value, f"at t={t:.4g}")


def _check_tol(rtol: float, atol: float) -> None:
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or not math.isfinite(v):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")


def _bshape(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, …, 1) so it broadcasts against ``like`` (B, …)."""
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _randn(shape, generator, like: torch.Tensor) -> torch.Tensor:
    # Drawn on the CPU so the same generator gives the same noise on every device.
    return torch.randn(shape, generator=generator, dtype=torch.float64 if like.dtype == torch.float64
                       else torch.float32).to(like.device, like.dtype)


def _full_t(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), float(value), dtype=like.dtype, device=like.device)


# =========================================================================== the SDEs
class SDE:
    """A linear forward SDE dx = f(t) x dt + g(t) dw on t ∈ [0, 1] with Gaussian kernels
    p(x_t | x₀) = N(α(t) x₀, σ(t)² I).

    Subclasses give :meth:`alpha_sigma`, :meth:`drift` and :meth:`diffusion`. ``t_min`` is where samplers stop
    and likelihoods start (t = 0 itself has σ = 0, where a score is infinite); ``kind`` is "VP" or "VE".
    """

    kind = "VP"
    t_min = 1e-3

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def marginal(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of p(x_t | x₀): mean α(t)·x₀ with x₀'s shape; std σ(t) shaped (B, 1, …) to broadcast."""
        x0 = _check_batch("x0", x0)
        alpha, sigma = self.alpha_sigma(_check_t(t, x0.shape[0]))
        return _bshape(alpha, x0) * x0, _bshape(sigma, x0)

    def sample_marginal(self, x0: torch.Tensor, t: torch.Tensor,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t = α(t) x₀ + σ(t) ε; returns (x_t, ε)."""
        mean, std = self.marginal(x0, t)
        eps = _randn(x0.shape, generator, x0)
        return mean + std * eps, eps

    def prior_std(self) -> float:
        return 1.0

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32, device: str | torch.device | None = None) -> torch.Tensor:
        """x_T ~ N(0, prior_std² I): where samplers start (drawn on the CPU for reproducibility)."""
        shape = tuple(shape)
        if len(shape) < 2 or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"shape must be a tuple of positive ints (B, ...), got {shape!r}")
        z = torch.randn(shape, generator=generator, dtype=dtype)
        return (self.prior_std() * z).to(device) if device is not None else self.prior_std() * z

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std² I) summed over all but the batch dimension, (B,)."""
        z = _check_batch("z", z)
        s = self.prior_std()
        d = z[0].numel()
        return -0.5 * z.pow(2).flatten(1).sum(1) / s**2 - d * (math.log(s) + 0.5 * _LOG_2PI)

    def _check_x_t(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_batch("x", x)
        return _check_t(t, x.shape[0])


class VPSDE(SDE):
    """Variance-preserving SDE, DDPM's continuous limit (Song et al. 2021, Eq. 11; App. B):

        dx = −½ β(t) x dt + √β(t) dw,   β(t) = β_min + t (β_max − β_min)
        α(t) = exp(−¼ t² (β_max − β_min) − ½ t β_min),   σ(t)² = 1 − α(t)²          (Eq. 29)

    With β_i = β(i/N)/N, DDPM's chain x_i = √(1−β_i) x_{i−1} + √β_i z is the Euler–Maruyama discretisation.
    Prior N(0, I).
    """

    kind = "VP"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-5):
        if not (0 < beta_min <= beta_max) or not math.isfinite(beta_max):
            raise ValueError(f"need 0 < beta_min <= beta_max < inf, got beta_min={beta_min}, beta_max={beta_max}")
        if not 0 < t_min < 1:
            raise ValueError(f"t_min must be in (0, 1), got {t_min}")
        self.beta_min, self.beta_max, self.t_min = float(beta_min), float(beta_max), float(t_min)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_alpha = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        return log_alpha.exp(), (-torch.expm1(2 * log_alpha)).sqrt()

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = self._check_x_t(x, t)
        return -0.5 * _bshape(self.beta(t), x) * x

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta(_check_t(t)).sqrt()

    def __repr__(self):
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max})"


class VESDE(SDE):
    """Variance-exploding SDE, NCSN's continuous limit (Song et al. 2021, Eq. 9; App. B):

        σ(t) = σ_min (σ_max/σ_min)^t,   dx = σ(t) √(2 log(σ_max/σ_min)) dw,   f = 0.

    The exact kernel from x(0) = x₀ is N(x₀, (σ(t)² − σ_min²) I): that is what :meth:`marginal` returns (Song et
    al.'s code uses σ(t) itself, i.e. treats the data as already blurred by σ_min; the two differ by σ_min² in
    variance). Prior N(0, σ_max² I).
    """

    kind = "VE"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5):
        if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        if not 0 < t_min < 1:
            raise ValueError(f"t_min must be in (0, 1), got {t_min}")
        self.sigma_min, self.sigma_max, self.t_min = float(sigma_min), float(sigma_max), float(t_min)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        var = self.sigma(t) ** 2 - self.sigma_min**2
        return torch.ones_like(t), var.clamp(min=0).sqrt()

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._check_x_t(x, t)
        return torch.zeros_like(x)

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(_check_t(t)) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def prior_std(self) -> float:
        return self.sigma_max

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class DiscreteVPSDE(SDE):
    """The VP SDE that passes *exactly* through a discrete schedule's ᾱ_i (DDPM / cosine, T steps).

    Continuous time t ↔ discrete index i by t = (i + 1)/T: t = 1/T is the first noising step (i = 0),
    t = 1 the last (i = T − 1), t = 0 the clean data (i = −1, ᾱ = 1). Between grid points log ᾱ is linear in
    t, so β(t) = −d log ᾱ/dt is piecewise constant, β = −T log(1 − β_i) ≈ T β_i on ((i)/T, (i+1)/T]; at every
    grid point α(t)² = ᾱ_i and σ(t)² = 1 − ᾱ_i, the kernel the ε-model was trained on. (The cosine schedule's
    last β_i is capped at 0.999, so β(t) is large on the last segment: solvers take a few short steps there.)
    ``t_min`` defaults to 1/T, the least noisy level the network ever saw.
    """

    kind = "VP"

    def __init__(self, schedule: NoiseSchedule, t_min: float | None = None):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if float(schedule.alpha_bar[-1]) <= 0:
            raise ValueError("schedule has ᾱ_T = 0 (zero terminal SNR): σ(1)/α(1) is infinite and an ε-model's "
                             "score is undefined there; use v-prediction with a different time map")
        self.schedule = schedule
        self.T = schedule.T
        self.t_min = 1.0 / self.T if t_min is None else float(t_min)
        if not 0 < self.t_min < 1:
            raise ValueError(f"t_min must be in (0, 1), got {t_min}")
        # log ᾱ at t = 0, 1/T, …, 1 (index −1 … T−1), float64 on the CPU
        self._log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), schedule.alpha_bar.cpu().double().log()])
        self._betas = -torch.diff(self._log_ab) * self.T      # β(t) on each segment

    def index(self, t: torch.Tensor) -> torch.Tensor:
        """The (fractional) discrete index i = tT − 1 that continuous time t corresponds to."""
        return t * self.T - 1

    def _segment(self, t: torch.Tensor):
        u = t.detach().double().cpu() * self.T                # position on the grid 0 … T
        k = u.floor().clamp(0, self.T - 1).long()             # segment index: (k/T, (k+1)/T]
        k = torch.where((u == k.double()) & (k > 0), k - 1, k)  # right-closed segments
        return u, k

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        u, k = self._segment(t)
        lab = self._log_ab[k] + (u - k.double()) * (self._log_ab[k + 1] - self._log_ab[k])
        return lab.to(t.device, t.dtype if t.dtype == torch.float64 else torch.float32)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        _, k = self._segment(t)
        return self._betas[k].to(t.device, t.dtype)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, k = self._segment(t)
        lab = self._log_ab[k] + (u - k.double()) * (self._log_ab[k + 1] - self._log_ab[k])
        alpha, sigma = (0.5 * lab).exp(), (-torch.expm1(lab)).sqrt()
        return alpha.to(t.device, t.dtype), sigma.to(t.device, t.dtype)

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = self._check_x_t(x, t)
        return -0.5 * _bshape(self.beta(t), x) * x

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta(_check_t(t)).sqrt()

    def __repr__(self):
        return f"DiscreteVPSDE({self.schedule!r})"


def _check_sde(sde) -> SDE:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a VPSDE, VESDE or DiscreteVPSDE, got {type(sde).__name__}")
    return sde


# =========================================================================== ε-model → score
class ScoreFromEps:
    """``score_fn(x, t) = −ε̂(x, i(t)) / σ(t)`` for a discrete-time ε-model (see :func:`score_from_eps`)."""

    def __init__(self, model: Callable[..., torch.Tensor], schedule: NoiseSchedule, cond: torch.Tensor | None = None,
                 time: str = "fractional", clip_x0: bool = False):
        if time not in {"fractional", "nearest"}:
            raise ValueError(f"time must be 'fractional' or 'nearest', got {time!r}")
        if getattr(model, "objective", "eps") != "eps":
            raise ValueError(f"score_from_eps needs an ε-prediction model, got objective={model.objective!r}")
        if not isinstance(clip_x0, bool):
            raise TypeError(f"clip_x0 must be True or False, got {clip_x0!r}")
        self.model, self.schedule, self.cond, self.time, self.clip_x0 = model, schedule, cond, time, clip_x0
        self.sde = DiscreteVPSDE(schedule)
        self.nfe = 0  # network calls so far (samplers' cost)

    def eps(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = _check_t(t, x.shape[0])
        idx = self.sde.index(t)
        idx = idx.round().clamp(0, self.schedule.T - 1).long() if self.time == "nearest" else idx.to(x.dtype)
        cond = self.cond if cond is None else cond
        self.nfe += 1
        out = self.model(x, idx, cond) if cond is not None else self.model(x, idx)
        if out.shape != x.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        return out.to(x.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        eps = self.eps(x, t, cond)
        if self.time == "nearest":
            t = (self.sde.index(t).round().clamp(0, self.schedule.T - 1) + 1) / self.schedule.T
        alpha, sigma = self.sde.alpha_sigma(t.to(x.dtype))
        alpha, sigma = _bshape(alpha, x), _bshape(sigma, x)
        if self.clip_x0:   # DDPM's clip_denoised: x̂₀ = (x − σ ε̂)/α clamped to [−1, 1], ε̂ recomputed to match
            x0 = ((x - sigma * eps) / alpha).clamp(-1, 1)
            eps = (x - alpha * x0) / sigma
        return -eps / sigma


def score_from_eps(model: Callable[..., torch.Tensor], schedule: NoiseSchedule, cond: torch.Tensor | None = None,
                   time: str = "fractional", clip_x0: bool = False) -> ScoreFromEps:
    """A chapter-2 ε-model (discrete t = 0 … T−1) as a continuous-time score s(x, t) = −ε̂ / σ(t).

    The score belongs to ``DiscreteVPSDE(schedule)`` (available as ``score_fn.sde``): continuous t maps to the
    discrete index i = tT − 1, and σ(t)² = 1 − ᾱ(t) with ᾱ interpolated log-linearly between grid points, so at
    t = (i+1)/T the score is exactly −ε̂(x, i)/√(1 − ᾱ_i) (Song et al. 2021, App. B; ε-prediction is a scaled score,
    Vincent 2011). ``time="fractional"`` passes the real-valued index i(t) to the network (its sinusoidal time
    embedding accepts any real t); ``"nearest"`` rounds to the nearest integer index, for models that only take
    integer t (such as ``gmm.OracleModel``). ``cond`` is fixed class labels (B,) for a conditional model.
    ``clip_x0=True`` returns the score of the ε̂ implied by x̂₀ = (x − σε̂)/α clamped to [−1, 1] — DDPM's and DDIM's
    ``clip_denoised`` (Ho et al. 2020's sampler), so SDE and ODE samplers can be compared with them like for like.
    """
    return ScoreFromEps(model, schedule, cond, time, clip_x0)


# =========================================================================== samplers
SPACINGS = ("uniform", "logsnr")


def time_grid(sde: SDE, steps: int, t_start: float = 1.0, spacing: str = "uniform") -> list[float]:
    """The ``steps + 1`` descending times t_start = t_0 > … > t_N = ``sde.t_min`` of a fixed-step sampler.

    ``"uniform"``: equal steps in t (Song et al. 2021). ``"logsnr"``: equal steps in λ = log(α²/σ²) (the grid of
    DPM-Solver, Lu et al. 2022). For a discrete cosine schedule β(t) is huge near t = 1 (the last β_i is capped at
    0.999), so uniform steps there are far too long and Euler–Maruyama diverges; equal steps in λ are short exactly
    where the SNR changes fast. λ(t) is inverted by interpolation on a dense grid (λ is monotone in t)."""
    steps = _check_steps(steps)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if spacing == "uniform":
        return torch.linspace(t_start, sde.t_min, steps + 1, dtype=torch.float64).tolist()
    import numpy as np

    dense = torch.linspace(t_start, sde.t_min, 20001, dtype=torch.float64)
    alpha, sigma = sde.alpha_sigma(dense)
    lam = (2 * (alpha.double().log() - sigma.double().log())).numpy()      # increasing as t decreases
    if not np.all(np.diff(lam) > 0):
        raise ValueError("log-SNR is not strictly monotone on this SDE's time range; use spacing='uniform'")
    grid = np.interp(np.linspace(lam[0], lam[-1], steps + 1), lam, dense.numpy()).tolist()
    grid[0], grid[-1] = float(t_start), float(sde.t_min)
    return grid


def _time_grid(sde: SDE, steps: int, like: torch.Tensor, t_start: float = 1.0, spacing: str = "uniform") -> list[float]:
    return time_grid(sde, steps, t_start, spacing)


def _call_score(score_fn, x, t_value):
    out = score_fn(x, _full_t(t_value, x))
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"score_fn returned {getattr(out, 'shape', type(out).__name__)} for x of shape "
                         f"{tuple(x.shape)}; it must return a tensor of x's shape")
    _finite_at(t_value, score=out)
    return out


def em_step(score_fn: ScoreFn, x: torch.Tensor, t: float, t_next: float, sde: SDE,
            noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One Euler–Maruyama step of the reverse SDE (Eq. 6) from t to t_next < t, dt = t_next − t < 0:

        x' = x + [f(x, t) − g(t)² s(x, t)] dt + g(t) √|dt| z.

    Returns (x', mean) where mean is x' without the noise (used on the last step)."""
    tt = _full_t(t, x)
    g = _bshape(sde.diffusion(tt), x)
    mean = x + (sde.drift(x, tt) - g**2 * _call_score(score_fn, x, t)) * (t_next - t)
    if noise is None:
        return mean, mean
    return mean + g * math.sqrt(t - t_next) * noise, mean


def euler_maruyama(score_fn: ScoreFn, x_T: torch.Tensor, sde: SDE, steps: int,
                   generator: torch.Generator | None = None, return_trajectory: bool = False, progress: bool = False,
                   spacing: str = "uniform") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample the reverse SDE with ``steps`` Euler–Maruyama steps from t = 1 to ``sde.t_min`` (Song et al. 2021,
    Eq. 6; NFE = steps) on the :func:`time_grid` of ``spacing``. The last step returns its noise-free mean (Song
    et al.'s "denoise" step). With ``return_trajectory`` also returns the states (steps + 1, B, …)."""
    from tqdm.auto import tqdm

    _check_sde(sde)
    x = validate.finite("x_T", _check_batch("x_T", x_T))
    ts = _time_grid(sde, _check_steps(steps), x, spacing=spacing)
    traj = [x]
    with torch.no_grad():
        for i in tqdm(range(steps), desc="Euler–Maruyama", disable=not progress, leave=False):
            last = i == steps - 1
            x, mean = em_step(score_fn, x, ts[i], ts[i + 1], sde, None if last else _randn(x.shape, generator, x))
            x = mean if last else x
            validate.finite("the sample", x, f"after step {i + 1} of {steps} (t={ts[i]:.4g} -> {ts[i + 1]:.4g})")
            traj.append(x)
    return (x, torch.stack(traj)) if return_trajectory else x


def langevin_step_size(score: torch.Tensor, z: torch.Tensor, snr: float,
                       alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Song et al.'s corrector step ε = 2α (snr ‖z‖ / ‖s‖)² (Algorithms 4–5), with the norms averaged over the
    batch as in their code: a per-sample ‖s‖ vanishes at a mode's centre and would make that sample's step explode."""
    s_norm = score.flatten(1).norm(dim=1).mean()
    z_norm = z.flatten(1).norm(dim=1).mean()
    return 2 * alpha * (snr * z_norm / s_norm.clamp(min=1e-12)) ** 2


def predictor_corrector(score_fn: ScoreFn, x_T: torch.Tensor, sde: SDE, steps: int, snr: float = 0.16,
                        corrector_steps: int = 1, generator: torch.Generator | None = None,
                        return_trajectory: bool = False, progress: bool = False,
                        spacing: str = "uniform") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Predictor–corrector sampling (Song et al. 2021, Algorithm 1; the VE / VP forms are Algorithms 2–3).

    Predictor: one Euler–Maruyama step of the reverse SDE from t_i to t_{i+1}. Corrector: ``corrector_steps``
    Langevin steps at t_{i+1}, x ← x + ε s + √(2ε) z, with step ε = 2α (snr ‖z‖/‖s‖)² (α = 1 for VE,
    α = exp(−β(t)Δt) ≈ 1 − β_i for VP, as in Algorithms 4–5). No corrector after the final, noise-free predictor step.
    NFE = steps + corrector_steps · (steps − 1). ``spacing``: the predictor's :func:`time_grid`.
    """
    from tqdm.auto import tqdm

    _check_sde(sde)
    x = validate.finite("x_T", _check_batch("x_T", x_T))
    ts = _time_grid(sde, _check_steps(steps), x, spacing=spacing)
    _check_positive("snr", snr)
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be a non-negative int, got {corrector_steps!r}")
    traj = [x]
    with torch.no_grad():
        for i in tqdm(range(steps), desc="predictor–corrector", disable=not progress, leave=False):
            last = i == steps - 1
            x, mean = em_step(score_fn, x, ts[i], ts[i + 1], sde, None if last else _randn(x.shape, generator, x))
            if last:
                x = mean
            else:
                t = ts[i + 1]
                tt = _full_t(t, x)
                # α_i of the discretised chain: 1 for VE, exp(−β Δt) ≈ 1 − β_i for VP (stays in (0, 1] for any Δt)
                alpha = (torch.ones_like(tt) if sde.kind == "VE"
                         else torch.exp(-sde.diffusion(tt) ** 2 * (ts[i] - ts[i + 1])))
                for _ in range(corrector_steps):
                    s = _call_score(score_fn, x, t)
                    z = _randn(x.shape, generator, x)
                    eps = _bshape(langevin_step_size(s, z, snr, alpha), x)
                    x = x + eps * s + (2 * eps).sqrt() * z
            validate.finite("the sample", x, f"after step {i + 1} of {steps} (t={ts[i]:.4g} -> {ts[i + 1]:.4g})")
            traj.append(x)
    return (x, torch.stack(traj)) if return_trajectory else x


def langevin(grad_log_p: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, step_size: float, steps: int,
             generator: torch.Generator | None = None,
             return_trajectory: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Unadjusted Langevin dynamics x ← x + ε ∇log p(x) + √(2ε) z, whose stationary law is p as ε → 0
    (Roberts & Tweedie 1996; Song & Ermon 2019, Eq. 2 with ε there = 2 × ours). ``grad_log_p(x)`` is the score
    of one fixed density (no t). Mixes slowly between well-separated modes: that is why NCSN anneals the noise."""
    x = validate.finite("x", _check_batch("x", x))
    _check_positive("step_size", step_size)
    traj = [x]
    with torch.no_grad():
        for k in range(_check_steps(steps)):
            x = x + step_size * grad_log_p(x).to(x.dtype) + math.sqrt(2 * step_size) * _randn(x.shape, generator, x)
            validate.finite("the sample", x, f"after Langevin step {k + 1} of {steps}")
            traj.append(x)
    return (x, torch.stack(traj)) if return_trajectory else x


def annealed_langevin(score_fn: ScoreFn, x: torch.Tensor, sde: VESDE, levels: int = 10, steps_per_level: int = 100,
                      eps: float = 2e-5, generator: torch.Generator | None = None, final_denoise: bool = True,
                      progress: bool = False) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, NCSN, Algorithm 1): Langevin at ``levels`` noise levels
    σ_1 = σ_max > … > σ_L = σ_min, geometric as in NCSN, each for ``steps_per_level`` steps of size
    α_i = eps · σ_i²/σ_L² (x ← x + (α/2)·s + √α z, the paper's form). The score at level σ is ``score_fn(x, t)`` at
    the t where the VE kernel's std √(σ(t)² − σ_min²) equals σ. With ``final_denoise`` a last Tweedie step
    x + σ_L² s removes the remaining noise (Jolicoeur-Martineau et al. 2021). NFE = levels · steps_per_level (+1)."""
    from tqdm.auto import tqdm

    if not isinstance(sde, VESDE):
        raise TypeError(f"annealed_langevin runs on a VESDE's noise levels, got {type(sde).__name__}")
    x = validate.finite("x", _check_batch("x", x))
    _check_positive("eps", eps)
    L = _check_steps(levels, "levels")
    n_steps = _check_steps(steps_per_level, "steps_per_level")
    sigmas = torch.logspace(math.log10(sde.sigma_max), math.log10(sde.sigma_min), L, dtype=torch.float64)
    # invert std(t) = σ_min √((σ_max/σ_min)^{2t} − 1)
    ts = (torch.log(torch.sqrt(sigmas**2 + sde.sigma_min**2) / sde.sigma_min)
          / math.log(sde.sigma_max / sde.sigma_min)).clamp(max=1.0)
    with torch.no_grad():
        for level, (t, sig) in enumerate(tqdm(list(zip(ts.tolist(), sigmas.tolist())), desc="annealed Langevin",
                                              disable=not progress, leave=False), 1):
            a = eps * sig**2 / sde.sigma_min**2
            for k in range(n_steps):
                x = x + 0.5 * a * _call_score(score_fn, x, t) + math.sqrt(a) * _randn(x.shape, generator, x)
                validate.finite("the sample", x, f"after step {k + 1} of {n_steps} at noise level {level} of {L} "
                                                 f"(σ={sig:.4g}, t={t:.4g})")
        if final_denoise:
            x = x + sde.sigma_min**2 * _call_score(score_fn, x, float(ts[-1]))
            validate.finite("the sample", x, "after the final denoising step")
    return x


# =========================================================================== ODEs
def pf_ode_velocity(score_fn: ScoreFn, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The probability-flow velocity f̃(x, t) = f(x, t) − ½ g(t)² s(x, t) (Song et al. 2021, Eq. 13)."""
    _check_sde(sde)

    def velocity(x, t):
        g2 = _bshape(sde.diffusion(t), x) ** 2
        s = score_fn(x, t)
        if not isinstance(s, torch.Tensor) or s.shape != x.shape:
            raise ValueError(f"score_fn returned {getattr(s, 'shape', type(s).__name__)} for x of shape "
                             f"{tuple(x.shape)}; it must return a tensor of x's shape")
        _finite_at(float(t[0]), score=s)
        return sde.drift(x, t) - 0.5 * g2 * s.to(x.dtype)

    return velocity


def solve_ode(velocity: Callable, x: torch.Tensor, t_start: float, t_end: float, method: str = "rk45",
              steps: int | None = None, rtol: float = 1e-5, atol: float = 1e-5,
              grid: list[float] | None = None) -> tuple[torch.Tensor, int]:
    """Integrate dx/dt = velocity(x, t) from t_start to t_end (either direction); returns (x(t_end), NFE).
    The fixed-step methods step on ``grid`` (times from t_start to t_end, ``steps + 1`` of them) when given,
    else on equal steps.

    * ``"euler"``: x ← x + h v(x, t), ``steps`` steps, NFE = steps (first order).
    * ``"heun"``: the trapezoidal predictor–corrector x ← x + h/2 (v(x, t) + v(x + h v, t + h)), NFE = 2·steps
      (second order; Karras et al. 2022, Algorithm 1).
    * ``"rk45"``: adaptive Dormand–Prince 5(4) from torchdiffeq (``dopri5``), local error kept below
      atol + rtol·|x| (RMS over the whole batch); ``steps`` must be None.

    ``velocity(x, t)`` gets t as a tensor (B,) in x's dtype.
    """
    x = validate.finite("x", _check_batch("x", x), f"(the initial state, t={t_start:.4g})")
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
    _check_tol(rtol, atol)
    nfe = 0

    def v(x_, t_):
        nonlocal nfe
        nfe += 1
        _finite_at(t_, state=x_)   # the adaptive solver's trial states: blame the blow-up, not a NaN time
        out = velocity(x_, _full_t(t_, x_))
        _finite_at(t_, velocity=out)
        return out

    if method == "rk45":
        if steps is not None:
            raise ValueError("steps must be None for method='rk45' (the step size is adaptive); use 'euler' or "
                             "'heun' for a fixed number of steps")
        from torchdiffeq import odeint

        ts = torch.tensor([t_start, t_end], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
        lo, hi = min(t_start, t_end), max(t_start, t_end)
        # dopri5's initial step-size heuristic probes one point past the interval: clamp it back inside
        out = odeint(lambda t_, x_: v(x_, min(max(float(t_), lo), hi)), x, ts.to(x.device), method="dopri5",
                     rtol=rtol, atol=atol)
        return validate.finite("the ODE solution", out[-1], f"at t={t_end:.4g}"), nfe
    if steps is None:
        raise ValueError(f"method={method!r} needs steps (a positive int)")
    if grid is None:
        grid = torch.linspace(t_start, t_end, _check_steps(steps) + 1, dtype=torch.float64).tolist()
    elif len(grid) != _check_steps(steps) + 1 or abs(grid[0] - t_start) > 1e-12 or abs(grid[-1] - t_end) > 1e-12:
        raise ValueError(f"grid must hold steps + 1 = {steps + 1} times from t_start to t_end, got {len(grid)}")
    for k, (t0, t1) in enumerate(zip(grid[:-1], grid[1:])):
        h = t1 - t0
        d = v(x, t0)
        if method == "euler":
            x = x + h * d
        else:
            d2 = v(x + h * d, t1)
            x = x + 0.5 * h * (d + d2)
        validate.finite("the sample", x, f"after {method} step {k + 1} of {steps} (t={t0:.4g} -> {t1:.4g})")
    return x, nfe


def probability_flow(score_fn: ScoreFn, x_T: torch.Tensor, sde: SDE, method: str = "rk45", steps: int | None = None,
                     rtol: float = 1e-5, atol: float = 1e-5, spacing: str = "uniform") -> tuple[torch.Tensor, int]:
    """Sample by integrating the probability-flow ODE (Song et al. 2021, Eq. 13) from t = 1 down to
    ``sde.t_min``: ``method`` "rk45" (adaptive, torchdiffeq dopri5), "euler" or "heun" (``steps`` steps on the
    :func:`time_grid` of ``spacing``). Deterministic: the same x_T always gives the same x₀. Returns (x₀, NFE)."""
    _check_sde(sde)
    grid = time_grid(sde, steps, 1.0, spacing) if method != "rk45" and steps is not None else None
    with torch.no_grad():
        return solve_ode(pf_ode_velocity(score_fn, sde), x_T, 1.0, sde.t_min, method, steps, rtol, atol, grid=grid)


# =========================================================================== likelihood
def divergence(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ∇·f(x) per sample by autograd, one backward pass per dimension (cheap for 2-D, 784× for an image).
    Returns (f(x), div (B,))."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = f(x)
        flat = out.flatten(1)
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i in range(flat.shape[1]):
            grad, = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < flat.shape[1] - 1)
            div = div + grad.flatten(1)[:, i]
    return out.detach(), div.detach()


def hutchinson_divergence(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                          probes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hutchinson–Skilling estimate ∇·f(x) ≈ mean_k v_kᵀ (∂f/∂x) v_k (Hutchinson 1989; Skilling 1989), unbiased
    for probes with E[v vᵀ] = I (Rademacher ±1 or standard Gaussian). One vector–Jacobian product per probe.
    ``probes`` has shape (K, *x.shape). Returns (f(x), estimate (B,))."""
    if probes.ndim != x.ndim + 1 or tuple(probes.shape[1:]) != tuple(x.shape):
        raise ValueError(f"probes must have shape (K, *x.shape) = (K, {', '.join(map(str, x.shape))}), "
                         f"got {tuple(probes.shape)}")
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = f(x)
        est = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for k in range(probes.shape[0]):
            v = probes[k].to(x.dtype)
            vjp, = torch.autograd.grad(out, x, v, retain_graph=k < probes.shape[0] - 1)
            est = est + (vjp * v).flatten(1).sum(1)
    return out.detach(), (est / probes.shape[0]).detach()


def draw_probes(shape: tuple[int, ...], probes: int, probe: str, generator: torch.Generator | None,
                like: torch.Tensor) -> torch.Tensor:
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    if not isinstance(probes, int) or isinstance(probes, bool) or probes < 1:
        raise ValueError(f"probes must be a positive int, got {probes!r}")
    z = _randn((probes, *shape), generator, like)
    return z.sign() if probe == "rademacher" else z


def flow_log_likelihood(velocity: Callable, x: torch.Tensor, t_start: float, t_end: float,
                        prior_logp: Callable[[torch.Tensor], torch.Tensor], exact_trace: bool = False,
                        probes: int = 1, probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                        generator: torch.Generator | None = None,
                        return_info: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict]:
    """log p_{t_start}(x) for the flow dx/dt = velocity(x, t) whose law at t_end has log-density ``prior_logp``:
    integrate x and Δ = ∫ ∇·v dt from t_start to t_end with the adaptive solver (instantaneous change of variables,
    Chen et al. 2018, Thm. 1), then log p(x) = prior_logp(x(t_end)) + Δ. The divergence is exact (autograd) or a
    Hutchinson estimate with ``probes`` fixed probe vectors drawn once for the whole solve (FFJORD, Grathwohl et al.
    2019). Nats per sample, (B,); ``return_info`` adds a dict (nfe, prior_logp, delta, z)."""
    x = validate.finite("x", _check_batch("x", x))
    _check_tol(rtol, atol)
    eps = None if exact_trace else draw_probes(x.shape, probes, probe, generator, x)
    from torchdiffeq import odeint

    nfe = 0

    def rhs(t, state):
        nonlocal nfe
        nfe += 1
        xs = state[0]
        # dopri5's initial step-size heuristic probes one point past the interval: clamp it back inside
        tt = _full_t(min(max(float(t), min(t_start, t_end)), max(t_start, t_end)), xs)
        fn = lambda y: velocity(y, tt)  # noqa: E731
        out, div = divergence(fn, xs) if exact_trace else hutchinson_divergence(fn, xs, eps)
        _finite_at(float(tt[0]), velocity=out, divergence=div)
        return out, div

    ts = torch.tensor([t_start, t_end], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    state = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    with torch.no_grad():
        zs, deltas = odeint(rhs, state, ts.to(x.device), method="dopri5", rtol=rtol, atol=atol)
    z, delta = zs[-1], deltas[-1]
    prior = prior_logp(z)
    logp = prior + delta
    if return_info:
        return logp, {"nfe": nfe, "prior_logp": prior, "delta": delta, "z": z}
    return logp


def log_likelihood(score_fn: ScoreFn, x: torch.Tensor, sde: SDE, exact_trace: bool = False, probes: int = 1,
                   probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                   generator: torch.Generator | None = None, t_min: float | None = None, t_max: float = 1.0,
                   return_info: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict]:
    """log p_{t_min}(x) in nats per sample (B,) along the probability-flow ODE (Song et al. 2021, Eq. 39; App. D.2):

        log p_{t_min}(x(t_min)) = log p_1(x(1)) + ∫_{t_min}^1 ∇·f̃(x(t), t) dt,   f̃ = f − ½ g² s,

    with p_1 the SDE's prior. Integrated along the *ODE*, never along SDE samples (whose paths carry no density).
    ``exact_trace`` computes ∇·f̃ by autograd (D backward passes; for 2-D), otherwise a Hutchinson estimate with
    ``probes`` probes of kind ``probe`` ("rademacher" or "gaussian") — unbiased, not exact. ``t_min`` defaults to
    ``sde.t_min``: the density is that of the slightly noised data at t_min (a valid density on Rᴰ either way).
    ``t_max`` < 1 stops the integral early and uses the prior there: for ``DiscreteVPSDE(cosine)`` the last 1 % of
    t has ᾱ < 3·10⁻⁴ (the prior's error is < ½ᾱ·E[x₀²] nats per dimension) but a huge β(t) that costs an adaptive
    solver dozens of evaluations.
    """
    _check_sde(sde)
    start = sde.t_min if t_min is None else float(t_min)
    if not 0 < start < 1:
        raise ValueError(f"t_min must be in (0, 1), got {t_min}")
    if not isinstance(t_max, (int, float)) or not start < t_max <= 1:
        raise ValueError(f"t_max must be in (t_min, 1] = ({start:g}, 1], got {t_max!r}")
    return flow_log_likelihood(pf_ode_velocity(score_fn, sde), x, start, float(t_max), sde.prior_logp, exact_trace,
                               probes, probe, rtol, atol, generator, return_info)


# =========================================================================== bits per dimension
def _check_images(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    x = validate.finite(name, _check_batch(name, x))
    if x.ndim != 4:
        raise ValueError(f"{name} must be images (B, C, H, W), got shape {tuple(x.shape)}")
    if float(x.min()) < -1 - 1e-4 or float(x.max()) > 1 + 1e-4:
        raise ValueError(f"{name} must be images in [-1, 1] (the loaders' k/127.5 − 1 for 8-bit k), got range "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation of 8-bit images in [−1, 1]: k = round((x + 1)·127.5) ∈ {0…255} (the [0, 255] offset),
    y = k + u − ½ with u ~ U(0, 1), x̃ = y/127.5 − 1. Each pixel value is spread over its own cell of width 1/127.5
    centred on the value the model was trained on; log P(k) ≥ E_u[log p(x̃)] − D log 127.5 (Theis et al. 2016)."""
    x = _check_images(x)
    k = ((x.double() + 1) * 127.5).round().clamp(0, 255)
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
    return ((k + u - 0.5) / 127.5 - 1).to(x.dtype)


def nats_to_bits_per_dim(logp: torch.Tensor, dims: int) -> torch.Tensor:
    """Continuous log-density of x̃ ∈ [−1, 1]ᴰ (nats) → bits per dimension of the 8-bit data:
    bpd = −log p(x̃)/(D ln 2) + log₂ 127.5 (the Jacobian of y = 127.5 (x̃ + 1), from [−1, 1] to [0, 255] units)."""
    return -logp / (dims * math.log(2)) + math.log2(127.5)


def bits_per_dim(score_fn: ScoreFn, x: torch.Tensor, sde: SDE, exact_trace: bool = False, probes: int = 1,
                 probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                 generator: torch.Generator | None = None, t_min: float | None = None, t_max: float = 1.0,
                 return_info: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict]:
    """Bits per dimension (B,) of 8-bit images x ∈ [−1, 1] under the PF-ODE density: dequantise (:func:`dequantize`),
    take :func:`log_likelihood`, convert with :func:`nats_to_bits_per_dim`. An upper bound on −log₂ P(k)/D.

    The two classic pitfalls: without dequantisation a continuous density can pile onto the 256 values and the
    number goes negative / meaningless; and the integral must follow the ODE, not SDE sample paths."""
    x = _check_images(x)
    xt = dequantize(x, generator)
    out = log_likelihood(score_fn, xt, sde, exact_trace, probes, probe, rtol, atol, generator, t_min, t_max,
                         return_info)
    if return_info:
        return nats_to_bits_per_dim(out[0], x[0].numel()), out[1]
    return nats_to_bits_per_dim(out, x[0].numel())


def _discretized_gaussian_log_prob(x0: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log P(k) for 8-bit data under N(mean, std²) integrated over the pixel's bin of width 2/255 around
    x₀ = k/127.5 − 1, the edge bins extended to ±∞ (DDPM, Ho et al. 2020, Eq. 13). Summed per sample."""
    x0, mean, std = x0.double(), mean.double(), std.double()
    normal = torch.distributions.Normal(mean, std)
    upper = torch.where(x0 > 1 - 1e-3, torch.ones_like(x0), normal.cdf(x0 + 1 / 255))
    lower = torch.where(x0 < -1 + 1e-3, torch.zeros_like(x0), normal.cdf(x0 - 1 / 255))
    # far tails: use the log-cdf forms so probabilities never underflow to log 0
    log_p = torch.log((upper - lower).clamp(min=1e-12))
    return log_p.flatten(1).sum(1)


def ddpm_elbo_bpd(model: Callable[..., torch.Tensor], x: torch.Tensor, schedule: NoiseSchedule,
                  timesteps: int | None = None, cond: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, batch_size: int = 256, progress: bool = False,
                  return_terms: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict]:
    """DDPM's variational bound −ELBO of a discrete ε-model, in bits per dimension of 8-bit images (B,)
    (Ho et al. 2020, Eq. 5 with Eq. 13's discretised decoder; Nichol & Dhariwal 2021, Sec. 2):

        L = KL(q(x_{T−1}|x₀) ‖ N(0, I)) + Σ_{i=1}^{T−1} E_q KL(q(x_{i−1}|x_i, x₀) ‖ p_θ(x_{i−1}|x_i)) − E_q log p_θ(x₀|x_0)

    p_θ(x_{i−1}|x_i) = N(μ̃(x_i, x̂₀), β̃_i I) (DDPM's "fixed small" variance), so each KL is ‖μ̃ − μ_θ‖²/(2β̃_i); the
    decoder at index 0 is a discretised Gaussian around x̂₀ with variance β̃_1 (improved DDPM's clipped value, as
    β̃_0 = 0). The sum over i is estimated without bias from ``timesteps`` indices per image, one per stratum of
    equal width (``None`` = all T − 1 terms, exact up to the q-sampling noise). No dequantisation is needed: the
    decoder gives the probability of the 8-bit values themselves. ``return_terms`` adds a dict of the parts (nats).
    """
    from tqdm.auto import tqdm

    x = _check_images(x)
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    T = schedule.T
    K = T - 1 if timesteps is None else _check_steps(timesteps, "timesteps")
    if K > T - 1:
        raise ValueError(f"timesteps must be at most T − 1 = {T - 1}, got {K}")
    B, D = x.shape[0], x[0].numel()
    dev = x.device
    ab = schedule.alpha_bar.double().cpu()
    ab_prev = schedule.alpha_bar_prev.double().cpu()
    betas = schedule.betas.double().cpu()
    post_var = schedule.posterior_variance.double().cpu()
    x0 = x.double()
    # prior term, closed form: KL(N(√ᾱ x₀, 1−ᾱ) ‖ N(0, 1)) per dimension
    a_T = ab[-1]
    prior = 0.5 * ((a_T * x0.pow(2)) + (1 - a_T) - 1 - torch.log(1 - a_T)).flatten(1).sum(1).cpu()

    if cond is not None and (not isinstance(cond, torch.Tensor) or cond.shape != (B,)):
        raise ValueError(f"cond must be None or a label tensor of shape (B,)=({B},)")

    def eps_hat(xt, i, s):
        ti = torch.full((xt.shape[0],), i, dtype=torch.long, device=dev) if isinstance(i, int) else i.to(dev)
        c = None if cond is None else cond[s:s + xt.shape[0]].to(dev)
        out = model(xt.float(), ti, c) if c is not None else model(xt.float(), ti)
        return validate.finite("the model's ε prediction", out, f"at timesteps t in [{int(ti.min())}, {int(ti.max())}] "
                                                                f"(images {s}…{s + xt.shape[0] - 1})").double()

    # the per-image index draws: stratum j covers indices 1 + [j (T−1)/K, (j+1)(T−1)/K)
    edges = torch.linspace(0, T - 1, K + 1, dtype=torch.float64)
    u = torch.rand(B, K, generator=generator, dtype=torch.float64)
    idx = (1 + (edges[:-1] + u * (edges[1:] - edges[:-1])).floor().long()).clamp(1, T - 1)  # (B, K)
    width = (edges[1:] - edges[:-1])                                                         # terms per stratum
    kl_sum = torch.zeros(B, dtype=torch.float64)
    with torch.no_grad():
        for j in tqdm(range(K), desc="ELBO terms", disable=not progress, leave=False):
            i = idx[:, j]
            shp = (-1,) + (1,) * (x.ndim - 1)
            a, ap, b, v = (ab[i].reshape(shp).to(dev), ab_prev[i].reshape(shp).to(dev),
                           betas[i].reshape(shp).to(dev), post_var[i].reshape(shp).to(dev))
            eps = _randn(x.shape, generator, x0)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            e_hat = torch.cat([eps_hat(xt[s:s + batch_size], i[s:s + batch_size], s) for s in range(0, B, batch_size)])
            # μ̃ − μ_θ = √ᾱ_{i−1} β_i/(1−ᾱ_i) (x₀ − x̂₀),  x₀ − x̂₀ = √(1−ᾱ_i)/√ᾱ_i (ε̂ − ε)
            coef = ap.sqrt() * b / (1 - a) * (1 - a).sqrt() / a.sqrt()
            kl = (coef**2 * (e_hat - eps).pow(2) / (2 * v)).flatten(1).sum(1).cpu()
            kl_sum += width[j] * kl
        # decoder at index 0: x_0 ~ q(x_0|x₀), mean x̂₀, std √β̃_1
        a0 = ab[0].item()
        eps = _randn(x.shape, generator, x0)
        xt = math.sqrt(a0) * x0 + math.sqrt(1 - a0) * eps
        e_hat = torch.cat([eps_hat(xt[s:s + batch_size], 0, s) for s in range(0, B, batch_size)])
        x0_hat = (xt - math.sqrt(1 - a0) * e_hat) / math.sqrt(a0)
        decoder = -_discretized_gaussian_log_prob(x0, x0_hat, torch.full_like(x0, math.sqrt(post_var[1].item()))).cpu()
    total = prior + kl_sum + decoder
    bpd = (total / (D * math.log(2))).float()
    if return_terms:
        return bpd, {"prior": prior, "diffusion": kl_sum, "decoder": decoder, "nfe": K + 1}
    return bpd


def independent_pixel_bpd(train_images: torch.Tensor, test_images: torch.Tensor, pseudo_count: float = 1.0
                          ) -> torch.Tensor:
    """A baseline for scale: bits/dim (B,) of ``test_images`` under independent per-pixel categorical models over
    the 256 values, fitted by counting on ``train_images`` (add-``pseudo_count`` smoothing). Exact, no bound."""
    for name, imgs in (("train_images", train_images), ("test_images", test_images)):
        _check_images(imgs, name)
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(f"train and test images differ in shape: {tuple(train_images.shape[1:])} vs "
                         f"{tuple(test_images.shape[1:])}")
    _check_positive("pseudo_count", pseudo_count)
    k_tr = ((train_images.double() + 1) * 127.5).round().clamp(0, 255).long().flatten(1)   # (N, D)
    k_te = ((test_images.double() + 1) * 127.5).round().clamp(0, 255).long().flatten(1)
    D = k_tr.shape[1]
    counts = torch.full((D, 256), float(pseudo_count), dtype=torch.float64)
    counts.scatter_add_(1, k_tr.T.contiguous(), torch.ones(D, k_tr.shape[0], dtype=torch.float64))
    logp = (counts / counts.sum(1, keepdim=True)).log()                                    # (D, 256)
    ll = logp.gather(1, k_te.T.contiguous()).sum(0)                                       # (B,)
    return (-ll / (D * math.log(2))).float()


CODECS = ("png", "zlib")


def compressed_bpd(images: torch.Tensor, codec: str = "png") -> torch.Tensor:
    """Bits per dimension (B,) a general-purpose lossless compressor spends on each 8-bit image: the size of its PNG
    file (Pillow, compression level 9, header included) or of a level-9 zlib stream of its raw bytes, × 8 / D.

    An estimate of the image's *input complexity* L(x) (Serrà et al. 2020, ICLR, Eq. 2): the score
    S(x) = bpd_model(x) − L(x)/D asks how many more bits the model needs than a generic compressor, which corrects a
    likelihood for how simple an image is — the reason simple out-of-distribution images score high. PNG takes
    (B, 1, H, W) or (B, 3, H, W) images; zlib any channel count. A header is a constant offset per image size."""
    x = _check_images(images, "images")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    if codec == "png" and x.shape[1] not in (1, 3):
        raise ValueError(f"codec='png' needs 1 or 3 channels, got images of shape {tuple(x.shape)}; use codec='zlib'")
    import io
    import zlib

    k = ((x.detach().double().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    k = k.permute(0, 2, 3, 1).contiguous().numpy()                  # (B, H, W, C): the byte order of an image file
    bits = []
    for img in k:
        if codec == "zlib":
            bits.append(8 * len(zlib.compress(img.tobytes(), 9)))
            continue
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG", compress_level=9)
        bits.append(8 * len(buf.getvalue()))
    return torch.tensor(bits, dtype=torch.float32) / x[0].numel()
