"""Gaussian mixtures: a data distribution whose noised densities and scores are known exactly.

A mixture p(x) = Σ_k w_k N(x; μ_k, diag(σ_k²)) stays a mixture under the forward process. If
x₀ ~ p and x_t = √ᾱ x₀ + √(1−ᾱ) ε with ε ~ N(0, I) independent, then (a linear map of a Gaussian
plus an independent Gaussian is Gaussian, component by component)

    q_t(x) = Σ_k w_k N(x; √ᾱ μ_k, diag(ᾱ σ_k² + (1−ᾱ)))                                 (1)

so the score ∇ log q_t, the ideal noise prediction ε*(x, t) = −√(1−ᾱ) ∇ log q_t(x) and the
posterior mean E[x₀ | x_t] (Tweedie's formula, Efron 2011; Song et al. 2021, Eq. 11 / DDPM Eq. 15)

    E[x₀ | x_t = x] = (x + (1−ᾱ) ∇ log q_t(x)) / √ᾱ                                       (2)

are all available in closed form. A sampler driven by this *oracle* model has no model error, so
whatever gap remains between its samples and the mixture is the sampler's own (discretisation)
error — the point of chapter 6 and of the sampler tests.

Everything is computed in float64 with log-sum-exp over components, so responsibilities and scores
stay finite even far from every component.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch

from .schedules import NoiseSchedule

if TYPE_CHECKING:
    from typing import Protocol

    class _HasAlphaSigma(Protocol):  # an SDE of diffusion_course.sde, or anything shaped like one
        def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

__all__ = ["GaussianMixture", "OracleModel", "SDEScore"]

_LOG_2PI = math.log(2 * math.pi)


def _as_f64(name: str, value) -> torch.Tensor:
    try:
        out = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a tensor or array of numbers, got {type(value).__name__}") from err
    if not torch.isfinite(out).all():
        raise ValueError(f"{name} must be finite")
    return out.detach().cpu()


class GaussianMixture:
    """p(x) = Σ_k w_k N(x; μ_k, diag(σ_k²)) in d dimensions, with exact noised quantities.

    Args:
        means: (K, d) component means μ_k.
        stds: (K,) isotropic standard deviations, or (K, d) per-dimension (diagonal) ones; all > 0.
        weights: (K,) non-negative mixture weights summing to 1 (default: uniform).

    Attributes (float64, CPU): ``means`` (K, d), ``variances`` (K, d), ``weights`` (K,).
    """

    def __init__(self, means: torch.Tensor | Sequence, stds: torch.Tensor | Sequence,
                 weights: torch.Tensor | Sequence[float] | None = None):
        means = _as_f64("means", means)
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"means must have shape (K, d) with K, d >= 1, got {tuple(means.shape)}; "
                             "for a 1-D mixture pass means[:, None]")
        K, d = means.shape
        stds = _as_f64("stds", stds)
        if stds.ndim == 0:
            raise ValueError(f"stds must have shape (K,)=({K},) or (K, d)=({K}, {d}), got a scalar")
        if stds.ndim == 1 and stds.shape[0] == K:
            stds = stds[:, None].expand(K, d)
        elif tuple(stds.shape) != (K, d):
            raise ValueError(f"stds must have shape (K,)=({K},) or (K, d)=({K}, {d}), got {tuple(stds.shape)}")
        if (stds <= 0).any():
            raise ValueError("stds must be positive")
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
        weights = _as_f64("weights", weights)
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape (K,)=({K},), got {tuple(weights.shape)}")
        if (weights < 0).any():
            raise ValueError("weights must be non-negative")
        if abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got sum {float(weights.sum()):.6g}")
        self.means = means.clone()
        self.variances = (stds**2).contiguous()
        self.weights = weights / weights.sum()
        self.log_weights = torch.log(self.weights)  # -inf for empty components, harmless in logsumexp

    # ----------------------------------------------------------------- constructors
    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.2,
             weights: torch.Tensor | Sequence[float] | None = None, phase: float = 0.0) -> "GaussianMixture":
        """``k`` isotropic 2-D Gaussians evenly spaced on a circle of ``radius`` (the classic toy)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        angles = phase + 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
        means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return cls(means, torch.full((k,), float(std), dtype=torch.float64), weights)

    @classmethod
    def bimodal(cls, separation: float = 4.0, std: float = 0.5, weight: float = 0.5,
                dim: int = 1) -> "GaussianMixture":
        """Two isotropic Gaussians at ±separation/2 along the first axis of R^dim, weights (w, 1−w)."""
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not 0 <= weight <= 1:
            raise ValueError(f"weight must be in [0, 1], got {weight}")
        means = torch.zeros(2, dim, dtype=torch.float64)
        means[0, 0], means[1, 0] = -separation / 2, separation / 2
        return cls(means, torch.full((2,), float(std), dtype=torch.float64), [weight, 1.0 - weight])

    # ----------------------------------------------------------------- basic properties
    @property
    def K(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def stds(self) -> torch.Tensor:
        return self.variances.sqrt()

    def mean(self) -> torch.Tensor:
        """E[x] = Σ_k w_k μ_k, shape (d,)."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Cov[x] = Σ_k w_k (diag(σ_k²) + μ_k μ_kᵀ) − E[x] E[x]ᵀ (law of total covariance), (d, d)."""
        m = self.mean()
        second = torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        return torch.diag(self.weights @ self.variances) + second - torch.outer(m, m)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, d={self.dim}, weights={[round(w, 4) for w in self.weights.tolist()]})"

    # ----------------------------------------------------------------- sampling and density
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` points: k ~ Categorical(w), x = μ_k + σ_k ⊙ z.  Returns (x (n, d) float64, k (n,) int64)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if n == 0:
            return torch.zeros(0, self.dim, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[idx] + self.stds[idx] * z, idx

    def _check_x(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, d) with d={self.dim}, got {tuple(x.shape)}")
        return x.to(torch.float64)

    def _log_joint(self, x: torch.Tensor, alpha_bar: torch.Tensor | None = None):
        """log w_k + log N(x; √ᾱ μ_k, ᾱσ_k² + 1−ᾱ) for every row and component, with (x − mean), var.

        ``alpha_bar`` is None (the clean mixture) or a (N,) tensor, one ᾱ per row (Eq. 1).
        Returns log_joint (N, K), diff (N, K, d), var (1 or N, K, d).
        """
        if alpha_bar is None:
            mu, var = self.means[None], self.variances[None]
        else:
            ab = alpha_bar.to(torch.float64).reshape(-1, 1, 1)
            mu = ab.sqrt() * self.means[None]
            var = ab * self.variances[None] + (1 - ab)
        diff = x[:, None, :] - mu
        log_comp = -0.5 * (diff.pow(2) / var + torch.log(var) + _LOG_2PI).sum(-1)
        return log_comp + self.log_weights, diff, var

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = logsumexp_k [log w_k + log N(x; μ_k, diag σ_k²)], shape (N,), float64."""
        log_joint, _, _ = self._log_joint(self._check_x(x))
        return torch.logsumexp(log_joint, dim=1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities p(k | x) = w_k N_k(x) / p(x), shape (N, K) (Bayes' rule).

        For x ~ p, E[p(k|x)] = w_k exactly — handy for checking a sampler's mode weights.
        """
        log_joint, _, _ = self._log_joint(self._check_x(x))
        return torch.softmax(log_joint, dim=1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """∇_x log p(x) = Σ_k p(k|x) · (−(x − μ_k)/σ_k²), shape (N, d), float64."""
        return self._score(self._check_x(x), None)

    def _score(self, x: torch.Tensor, alpha_bar: torch.Tensor | None) -> torch.Tensor:
        log_joint, diff, var = self._log_joint(x, alpha_bar)
        resp = torch.softmax(log_joint, dim=1)
        return -(resp[..., None] * diff / var).sum(1)

    # ----------------------------------------------------------------- noised mixture (Eq. 1)
    def noised(self, alpha_bar: float | torch.Tensor) -> "GaussianMixture":
        """The law of x_t = √ᾱ x₀ + √(1−ᾱ) ε for x₀ ~ self: means √ᾱ μ_k, variances ᾱσ_k² + (1−ᾱ)."""
        ab = float(alpha_bar)
        if not 0 <= ab <= 1:
            raise ValueError(f"alpha_bar must be in [0, 1], got {ab}")
        stds = (ab * self.variances + (1 - ab)).sqrt()
        return GaussianMixture(math.sqrt(ab) * self.means, stds, self.weights)

    def _alpha_bar(self, x: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if isinstance(t, int) and not isinstance(t, bool):
            t = torch.full((x.shape[0],), t, dtype=torch.long)
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"t must be an int or an integer tensor of shape (N,), got {t!r:.60}")
        if t.ndim == 0 or t.numel() == 1:
            t = t.reshape(1).expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape (N,)=({x.shape[0]},), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < -1 or int(t.max()) >= schedule.T):
            raise ValueError(f"t must satisfy -1 <= t < T={schedule.T}")
        return schedule.alpha_bar_at(t.cpu()).to(torch.float64).cpu()

    def score_t(self, x: torch.Tensor, t: int | torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
        """∇ log q_t(x) of the noised mixture (Eq. 1) at integer timesteps t (N,); t = −1 is clean."""
        x = self._check_x(x)
        return self._score(x, self._alpha_bar(x, t, schedule))

    def eps_t(self, x: torch.Tensor, t: int | torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
        """The ideal noise prediction E[ε | x_t = x] = −√(1−ᾱ_t) ∇ log q_t(x), shape (N, d)."""
        x = self._check_x(x)
        ab = self._alpha_bar(x, t, schedule)
        return -(1 - ab)[:, None].sqrt() * self._score(x, ab)

    def posterior_mean_x0(self, x: torch.Tensor, t: int | torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
        """E[x₀ | x_t = x], computed component-wise (not through Tweedie, so tests can compare the two).

        Given component k, x₀ and x_t are jointly Gaussian, so (per dimension)
            E[x₀ | x_t, k] = μ_k + σ_k² √ᾱ / (ᾱσ_k² + 1−ᾱ) · (x_t − √ᾱ μ_k),
        and E[x₀ | x_t] = Σ_k p(k | x_t) E[x₀ | x_t, k] with responsibilities under q_t.
        """
        x = self._check_x(x)
        ab = self._alpha_bar(x, t, schedule)
        log_joint, diff, var = self._log_joint(x, ab)
        resp = torch.softmax(log_joint, dim=1)
        gain = self.variances[None] * ab.sqrt().reshape(-1, 1, 1) / var
        per_comp = self.means[None] + gain * diff
        return (resp[..., None] * per_comp).sum(1)

    # ----------------------------------------------------------------- continuous time (chapter 6)
    def _log_joint_scaled(self, x: torch.Tensor, scale: torch.Tensor, std: torch.Tensor):
        """Like :meth:`_log_joint` for x_t = a·x₀ + s·ε with per-row a = ``scale``, s = ``std`` (N,):
        component k becomes N(a μ_k, a² σ_k² + s²) — VP (a² + s² = 1) and VE (a = 1) alike."""
        a = scale.to(torch.float64).cpu().reshape(-1, 1, 1)
        s = std.to(torch.float64).cpu().reshape(-1, 1, 1)
        mu = a * self.means[None]
        var = a**2 * self.variances[None] + s**2
        diff = x[:, None, :] - mu
        log_comp = -0.5 * (diff.pow(2) / var + torch.log(var) + _LOG_2PI).sum(-1)
        return log_comp + self.log_weights, diff, var

    def log_prob_at(self, x: torch.Tensor, scale: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """log p_t(x) of the perturbed mixture x_t = a x₀ + s ε (``scale`` a, ``std`` s: (N,) each), (N,) float64."""
        x = self._check_x(x).cpu()
        log_joint, _, _ = self._log_joint_scaled(x, scale, std)
        return torch.logsumexp(log_joint, dim=1)

    def score_at(self, x: torch.Tensor, scale: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """∇ log p_t(x) of the perturbed mixture x_t = a x₀ + s ε, (N, d) float64."""
        x = self._check_x(x).cpu()
        log_joint, diff, var = self._log_joint_scaled(x, scale, std)
        resp = torch.softmax(log_joint, dim=1)
        return -(resp[..., None] * diff / var).sum(1)

    def sde_score(self, sde: _HasAlphaSigma) -> "SDEScore":
        """The exact continuous-time score ``score_fn(x, t)`` of this mixture under a forward SDE of
        ``diffusion_course.sde`` (anything with ``alpha_sigma(t) -> (a, s)``): the oracle for chapter 6."""
        if not hasattr(sde, "alpha_sigma"):
            raise TypeError(f"sde must be an SDE from diffusion_course.sde, got {type(sde).__name__}")
        return SDEScore(self, sde)

    def oracle_model(self, schedule: NoiseSchedule) -> "OracleModel":
        """A perfect ε-prediction model ``model(x, t) -> ε*(x, t)`` for every sampler in ``sampling``."""
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        return OracleModel(self, schedule)


class OracleModel:
    """``model(x, t, cond=None) -> ε*`` for a :class:`GaussianMixture`: the exact E[ε | x_t].

    x may be (B, d) or (B, ...) with d elements per item; the output has x's shape, dtype and device.
    ``cond`` is accepted and ignored (the mixture is unconditional). ``objective = "eps"``.
    """

    objective = "eps"

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        self.mixture = mixture
        self.schedule = schedule

    def __call__(self, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            raise ValueError(f"x must be a batched tensor (B, ...), got {getattr(x, 'shape', type(x).__name__)}")
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.mixture.dim:
            raise ValueError(f"x items have {flat.shape[1]} elements but the mixture has d={self.mixture.dim}")
        eps = self.mixture.eps_t(flat.detach().cpu(), t.cpu() if isinstance(t, torch.Tensor) else t, self.schedule)
        return eps.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def __repr__(self) -> str:
        return f"OracleModel({self.mixture!r}, {self.schedule!r})"


class ClassConditionalOracle:
    """Exact class-conditional ε* for a mixture whose components are the classes:
    ``model(x, t, cond)`` with label k → component k alone (p(x|y=k)), label K (the null label) →
    the whole mixture (p(x)). The perfect model for studying classifier-free guidance: any error
    in guided samples is guidance's own, not the network's.
    """

    objective = "eps"

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        self.mixture, self.schedule = mixture, schedule
        self.num_classes = mixture.K
        self._oracles = [GaussianMixture(mixture.means[k:k + 1], mixture.stds[k:k + 1]).oracle_model(schedule)
                         for k in range(mixture.K)] + [mixture.oracle_model(schedule)]

    def __call__(self, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        B = x.shape[0]
        t = torch.as_tensor(t).reshape(-1)
        t = t.expand(B) if t.numel() == 1 else t
        cond = torch.full((B,), self.num_classes, dtype=torch.long) if cond is None else cond.cpu()
        if cond.shape != (B,) or int(cond.min()) < 0 or int(cond.max()) > self.num_classes:
            raise ValueError(f"cond must be (B,) labels in [0, {self.num_classes}] ({self.num_classes} = null)")
        out = torch.empty_like(x)
        for k in cond.unique().tolist():
            rows = (cond == k).to(x.device)
            out[rows] = self._oracles[k](x[rows], t[rows.cpu()])
        return out


def class_conditional_oracle(mixture: GaussianMixture, schedule: NoiseSchedule) -> ClassConditionalOracle:
    """See :class:`ClassConditionalOracle`."""
    return ClassConditionalOracle(mixture, schedule)


class SDEScore:
    """``score_fn(x, t) -> ∇ log p_t(x)`` of a :class:`GaussianMixture` under a continuous-time SDE, t a float
    tensor (B,) in (0, 1]; x (B, d) or (B, ...) with d elements per item. Output in x's shape, dtype and device.
    ``log_prob(x, t)`` gives the exact log p_t(x) — the true density the PF-ODE likelihood is checked against."""

    def __init__(self, mixture: GaussianMixture, sde: _HasAlphaSigma):
        self.mixture, self.sde = mixture, sde

    def _scale_std(self, x: torch.Tensor, t: torch.Tensor):
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point or t.shape != (x.shape[0],):
            raise ValueError(f"t must be a float tensor of shape (B,)=({x.shape[0]},), got {t!r:.60}")
        a, s = self.sde.alpha_sigma(t.detach().to(torch.float64).cpu())
        return a, s

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        a, s = self._scale_std(x, t)
        out = self.mixture.score_at(flat.cpu(), a, s)   # differentiable in x (exact divergences)
        return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self._scale_std(x, t)
        return self.mixture.log_prob_at(x.reshape(x.shape[0], -1).cpu(), a, s)

    def __repr__(self) -> str:
        return f"SDEScore({self.mixture!r}, {self.sde!r})"
