"""The forward (noising) process and the conversions between what a network can predict.

q(x_t | x₀) = N(√ᾱ_t x₀, (1−ᾱ_t) I)                              (DDPM, Ho et al. 2020, Eq. 4)
q(x_{t−1} | x_t, x₀) = N(μ̃_t, β̃_t I)                              (DDPM, Eqs. 6–7)
v = √ᾱ ε − √(1−ᾱ) x₀                                             (Salimans & Ho 2022, Sec. 4)
∇ log q(x_t | x₀) = −ε / √(1−ᾱ)                                  (score = scaled noise)
"""
from __future__ import annotations

import torch

from . import validate
from .schedules import NoiseSchedule

__all__ = [
    "q_sample", "q_step", "q_posterior", "eps_to_x0", "x0_to_eps", "v_target", "v_to_x0",
    "v_to_eps", "eps_to_score", "score_to_eps", "ideal_denoiser",
]


def _check_schedule(schedule) -> None:
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")


def _check_t(t: torch.Tensor, x: torch.Tensor, schedule: NoiseSchedule, allow_clean: bool = False) -> torch.Tensor:
    _check_schedule(schedule)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be an integer tensor of shape (B,), got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"t must be an integer tensor, got dtype {t.dtype}")
    if t.ndim == 0 or (t.ndim == 1 and t.numel() == 1):
        t = t.reshape(()).expand(x.shape[0])  # one timestep for the whole batch
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
    low = -1 if allow_clean else 0
    if t.numel() and (int(t.min()) < low or int(t.max()) >= schedule.T):
        hint = " (t = -1, the clean end, has no noise to convert)" if not allow_clean and int(t.min()) == -1 else ""
        raise ValueError(f"t must satisfy {low} <= t < T={schedule.T}, got range "
                         f"[{int(t.min())}, {int(t.max())}]{hint}")
    return t


def _check_x(name: str, x: torch.Tensor) -> None:
    # float (uint8 pixels would be cast silently and ᾱ with them), batched, finite
    validate.float_tensor(name, x, min_ndim=2)


def _same_shape(**tensors: torch.Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
             noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x₀) in one jump: x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε  (DDPM Eq. 4)."""
    _check_x("x0", x0)
    t = _check_t(t, x0, schedule)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    else:
        _check_x("noise", noise)
    _same_shape(x0=x0, noise=noise)
    ab = schedule.gather(schedule.alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def q_step(x_prev: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
           noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Markov step q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, β_t I)  (DDPM Eq. 2)."""
    _check_x("x_prev", x_prev)
    t = _check_t(t, x_prev, schedule)
    if noise is None:
        noise = torch.randn(x_prev.shape, generator=generator, dtype=x_prev.dtype).to(x_prev.device)
    else:
        _check_x("noise", noise)
    _same_shape(x_prev=x_prev, noise=noise)
    beta = schedule.gather(schedule.betas, t, x_prev)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise


def q_posterior(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                schedule: NoiseSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t−1} | x_t, x₀)  (DDPM Eqs. 6–7).

    μ̃ = √ᾱ_{t−1} β_t/(1−ᾱ_t) · x₀ + √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) · x_t,   β̃ = (1−ᾱ_{t−1})/(1−ᾱ_t) · β_t.
    The variance is returned broadcastable against x (shape (B, 1, ...)). At t = 0 it is 0.
    """
    _check_x("x0", x0)
    _check_x("x_t", x_t)
    _same_shape(x0=x0, x_t=x_t)
    t = _check_t(t, x_t, schedule)
    ab = schedule.gather(schedule.alpha_bar, t, x_t)
    ab_prev = schedule.gather(schedule.alpha_bar_prev, t, x_t)
    beta = schedule.gather(schedule.betas, t, x_t)
    alpha = 1 - beta
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    var = (1 - ab_prev) / (1 - ab) * beta
    return mean, var


# --------------------------------------------------------------------------- conversions
def _ab(t, schedule, like):
    """ᾱ_t for the conversions: t must be a noise level 0 <= t < T (-1 would silently index the noisiest ᾱ)."""
    if not isinstance(like, torch.Tensor) or not like.is_floating_point():
        raise TypeError(f"the tensors must be floating point, got {getattr(like, 'dtype', type(like).__name__)}")
    t = _check_t(t, like, schedule)
    return schedule.gather(schedule.alpha_bar, t, like)


def _zero_snr_error(what: str) -> ValueError:
    return ValueError(f"{what} at a timestep with ᾱ_t = 0 (a zero-terminal-SNR schedule's last step): x_t is pure "
                      "noise there, so x₀ cannot be recovered from ε (it would divide by √ᾱ = 0). Use a model that "
                      "predicts v or x₀ (objective='v' / 'x0'), or a schedule without '+zsnr'.")


def eps_to_x0(x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """x̂₀ = (x_t − √(1−ᾱ) ε) / √ᾱ   (DDPM Eq. 15). Undefined where ᾱ = 0 (zero terminal SNR): an error."""
    ab = _ab(t, schedule, x_t)
    if bool((ab == 0).any()):
        raise _zero_snr_error("eps_to_x0 was asked for x̂₀ from an ε-prediction")
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def x0_to_eps(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """ε̂ = (x_t − √ᾱ x₀) / √(1−ᾱ)."""
    ab = _ab(t, schedule, x_t)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def v_target(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """v = √ᾱ ε − √(1−ᾱ) x₀  (progressive distillation, Salimans & Ho 2022, Sec. 4)."""
    ab = _ab(t, schedule, x0)
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def v_to_x0(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """x₀ = √ᾱ x_t − √(1−ᾱ) v."""
    ab = _ab(t, schedule, x_t)
    return ab.sqrt() * x_t - (1 - ab).sqrt() * v


def v_to_eps(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """ε = √(1−ᾱ) x_t + √ᾱ v."""
    ab = _ab(t, schedule, x_t)
    return (1 - ab).sqrt() * x_t + ab.sqrt() * v


def eps_to_score(eps: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """∇_x log q_t(x) ≈ −ε̂ / √(1−ᾱ_t)  (denoising score matching, Vincent 2011; Song et al. 2021)."""
    return -eps / (1 - _ab(t, schedule, eps)).sqrt()


def score_to_eps(score: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """ε = −√(1−ᾱ_t) · score."""
    return -score * (1 - _ab(t, schedule, score)).sqrt()


# --------------------------------------------------------------------------- ideal denoiser
class _Bank:
    """A dataset flattened, with its squared norms (a view of ``data`` when it is already contiguous float32)."""

    def __init__(self, data: torch.Tensor):
        self.flat = data.reshape(data.shape[0], -1).float().contiguous()
        self.sqnorm = torch.linalg.vector_norm(self.flat, dim=1).square()


@torch.no_grad()
def ideal_denoiser(x_t: torch.Tensor, t: torch.Tensor, data: torch.Tensor, schedule: NoiseSchedule,
                   chunk_size: int = 16384,
                   return_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact posterior mean E[x₀ | x_t] when x₀ is uniform over the rows of ``data``.

    With x₀ ∈ {x_1..x_N} equally likely, Bayes' rule gives weights
    w_i ∝ exp(−‖x_t − √ᾱ x_i‖² / (2(1−ᾱ))) and E[x₀|x_t] = Σ w_i x_i: a softmax over the training set.
    This is the best possible denoiser in mean-squared error *for x₀ drawn from this training set* — and it can
    only reproduce training images (on unseen images a network can do better). Computed in float32 chunks with a
    running log-sum-exp, so memory stays O(chunk).

    Args:
        x_t: noisy images (B, *data.shape[1:]).
        t: integer timesteps (B,) (a scalar tensor is broadcast), 0 <= t < T.
        data: the training set (N, ...).
        return_weights: also return the top-5 (weight, index) per query.
    """
    _check_x("x_t", x_t)
    if not isinstance(data, torch.Tensor) or data.ndim < 2 or data.shape[0] == 0:
        raise ValueError("data must be a non-empty tensor of shape (N, ...)")
    validate.float_tensor("data", data, check_finite=False)  # finiteness: checked below, for free
    if tuple(data.shape[1:]) != tuple(x_t.shape[1:]):
        raise ValueError(f"x_t items have shape {tuple(x_t.shape[1:])} but data items have "
                         f"shape {tuple(data.shape[1:])}")
    validate.positive_int("chunk_size", chunk_size)
    t = _check_t(t, x_t, schedule)
    # No cache of the flattened set: a cache keyed on the tensor cannot see edits made through NumPy views or
    # .data, nor tell some views apart, and would answer for the old data. Recomputing the squared norms is one
    # pass over the data (~40 ms for the 60,000 Fashion-MNIST images on one thread), and doubles as the NaN check.
    bank = _Bank(data)
    dev = bank.flat.device
    q = x_t.reshape(x_t.shape[0], -1).float().to(dev)
    ab = schedule.alpha_bar[t.to(schedule.device)].to(dev)
    sa = ab.sqrt().float()[:, None]
    inv2var = (1.0 / (2.0 * (1.0 - ab))).float()[:, None]

    B, N = q.shape[0], bank.flat.shape[0]
    if not bool(torch.isfinite(bank.sqnorm).all()):
        bad = (~torch.isfinite(bank.sqnorm)).nonzero().flatten()
        raise validate.NonFiniteError(f"data contains NaN or inf (or values too large to square) in "
                                      f"{bad.numel()} of its {N} rows, e.g. row {int(bad[0])}")
    run_max = torch.full((B, 1), -float("inf"), device=dev)
    run_sum = torch.zeros(B, 1, device=dev)
    acc = torch.zeros_like(q)
    top_w, top_i = [], []
    # ‖x_t − √ᾱ x_i‖² = ‖x_t‖² − 2√ᾱ x_t·x_i + ᾱ‖x_i‖²; the ‖x_t‖² term cancels in the softmax.
    for start in range(0, N, chunk_size):
        rows = bank.flat[start:start + chunk_size]
        logits = (2 * sa * (q @ rows.T) - (sa * sa) * bank.sqnorm[start:start + chunk_size]) * inv2var
        new_max = torch.maximum(run_max, logits.max(1, keepdim=True).values)
        scale = torch.exp(run_max - new_max)
        p = torch.exp(logits - new_max)
        run_sum = run_sum * scale + p.sum(1, keepdim=True)
        acc = acc * scale + p @ rows
        run_max = new_max
        if return_weights:
            k = min(5, rows.shape[0])
            lw, li = logits.topk(k, dim=1)
            top_w.append(lw)
            top_i.append(li + start)
    mean = (acc / run_sum).reshape(x_t.shape).to(x_t.dtype).to(x_t.device)
    if not return_weights:
        return mean
    lw, li = torch.cat(top_w, 1), torch.cat(top_i, 1)
    lw, order = lw.topk(min(5, lw.shape[1]), dim=1)
    li = li.gather(1, order)
    weights = torch.exp(lw - run_max - torch.log(run_sum))
    return mean, weights, li
