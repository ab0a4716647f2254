"""The diffusion training objective (DDPM Algorithm 1) with ε, x₀ and v targets.

L = E_{x₀, t ~ U{0..T−1}, ε ~ N(0, I)} [ w(t) ‖f_θ(x_t, t) − target‖² ]
with target ε (Ho et al. 2020, Eq. 14), x₀, or v = √ᾱ ε − √(1−ᾱ) x₀ (Salimans & Ho 2022), and
optional min-SNR-γ weights (Hang et al. 2023, Eq. 9) which stop easy low-noise steps dominating.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import forward
from .schedules import NoiseSchedule

OBJECTIVES = ("eps", "x0", "v")


@dataclass
class LossDetails:
    loss: torch.Tensor        # scalar, what to backpropagate
    t: torch.Tensor           # (B,) the timesteps drawn
    per_sample: torch.Tensor  # (B,) unweighted MSE per example (for loss-per-timestep plots)


def min_snr_weight(snr: torch.Tensor, gamma: float, objective: str) -> torch.Tensor:
    """min(SNR, γ) expressed for each target: /SNR for ε, ·1 for x₀, /(SNR+1) for v."""
    clipped = torch.clamp(snr, max=gamma)
    # for ε, min(SNR, γ)/SNR written as min(γ/SNR, 1) so that SNR = 0 (zero terminal SNR) gives 1, not NaN
    return {"eps": (gamma / snr).clamp(max=1.0), "x0": clipped, "v": clipped / (snr + 1)}[objective]


def diffusion_loss(model, x0: torch.Tensor, schedule: NoiseSchedule, objective: str = "eps",
                   cond: torch.Tensor | None = None, p_uncond: float = 0.0, min_snr_gamma: float | None = None,
                   generator: torch.Generator | None = None, null_label: int | None = None,
                   return_details: bool = False):
    """One Monte-Carlo estimate of the simple diffusion loss on the batch ``x0``.

    Args:
        model: ``model(x_t, t, cond) -> prediction`` (the target given by ``objective``).
        cond: optional integer labels (B,) or token ids (B, L). With ``p_uncond > 0`` each
            condition is replaced by the null one with that probability (``null_label``, default
            ``model.num_classes``; a model with ``null_cond(cond)``, like the text model, supplies
            its empty caption) — condition dropout, so one network learns p(x) and p(x|y)
            (classifier-free guidance).
        generator: a CPU generator for t, ε and the dropout mask (reproducible runs).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
    if min_snr_gamma is not None and min_snr_gamma <= 0:
        raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
    B, dev = x0.shape[0], x0.device
    t = torch.randint(0, schedule.T, (B,), generator=generator).to(dev)
    noise = torch.randn(x0.shape, generator=generator).to(device=dev, dtype=x0.dtype)
    drop = torch.rand(B, generator=generator).to(dev) < p_uncond
    if cond is not None and p_uncond > 0:
        drop_rows = drop.reshape((B,) + (1,) * (cond.ndim - 1))  # one decision per example, also for (B, L) ids
        if null_label is None and hasattr(model, "null_cond"):
            null = model.null_cond(cond)
        else:
            label = null_label if null_label is not None else getattr(model, "num_classes", None)
            if label is None:
                raise ValueError("p_uncond > 0 needs null_label= or a model with a num_classes attribute")
            null = torch.full_like(cond, label)
        cond = torch.where(drop_rows, null, cond)
    x_t = forward.q_sample(x0, t, schedule, noise)
    if objective == "eps":
        target = noise
    elif objective == "x0":
        target = x0
    else:
        target = forward.v_target(x0, noise, t, schedule)
    pred = model(x_t, t, cond) if cond is not None else model(x_t, t)
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    if min_snr_gamma is not None:
        snr = schedule.snr.to(dev)[t].float()
        weights = min_snr_weight(snr, min_snr_gamma, objective)
    else:
        weights = torch.ones_like(per_sample)
    loss = (weights * per_sample).mean()
    return LossDetails(loss, t, per_sample.detach()) if return_details else loss
