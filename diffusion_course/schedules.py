"""Noise schedules for the discrete-time forward process (DDPM, Ho et al. 2020, Sec. 2).

A schedule is the list of per-step variances β_t; everything else follows:
α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s, SNR_t = ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021, Eq. 8).
Indices are 0-based: ``alpha_bar[0]`` is the first noising step, ``alpha_bar[T-1]`` the last.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from . import validate

__all__ = ["NoiseSchedule", "get_schedule"]


class NoiseSchedule:
    """β_t and the quantities derived from them, stored in float64 for exactness.

    Build with :meth:`linear`, :meth:`cosine` or :meth:`from_betas`.
    """

    def __init__(self, betas: torch.Tensor, name: str = "custom"):
        betas = _as_betas(betas)
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not torch.isfinite(betas).all():
            raise ValueError("betas must be finite")
        if (betas <= 0).any() or (betas > 1).any():
            raise ValueError("betas must lie in (0, 1]")
        self.name = name
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        # ᾱ_{t-1}, with ᾱ_{-1} = 1 (the clean end).
        self.alpha_bar_prev = torch.cat([betas.new_ones(1), self.alpha_bar[:-1]])

    # ----------------------------------------------------------------- constructors
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """β linear from ``beta_start`` to ``beta_end`` (DDPM, Sec. 4)."""
        _check_T(T)
        beta_start, beta_end = validate.real("beta_start", beta_start), validate.real("beta_end", beta_end)
        if not (0 < beta_start <= beta_end < 1):
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), name="linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021, Eq. 17), β capped at ``max_beta``.

        ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s) · π/2);  β_t = 1 − ᾱ(t+1)/ᾱ(t).
        """
        _check_T(T)
        max_beta = validate.real("max_beta", max_beta, low=0.0, high=1.0, low_open=True)
        # s >= 0: the offset that keeps β_0 from being tiny; s <= -1 divides by zero, -1 < s < 0 makes ᾱ > 1
        s = validate.real("s", s, low=0.0)

        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
        return cls(torch.tensor(betas, dtype=torch.float64), name="cosine")

    @classmethod
    def from_betas(cls, betas: torch.Tensor | np.ndarray | Sequence[float], name: str = "custom") -> "NoiseSchedule":
        return cls(betas, name=name)

    # ----------------------------------------------------------------- derived views
    @property
    def T(self) -> int:
        return int(self.betas.numel())

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ/(1−ᾱ); infinite nowhere, zero where ᾱ_T = 0."""
        return self.alpha_bar / (1 - self.alpha_bar)

    @property
    def log_snr(self) -> torch.Tensor:
        return torch.log(self.alpha_bar) - torch.log1p(-self.alpha_bar)

    @property
    def sigma(self) -> torch.Tensor:
        """The equivalent variance-exploding noise level σ = √((1−ᾱ)/ᾱ) (Karras et al. 2022)."""
        return torch.sqrt((1 - self.alpha_bar) / self.alpha_bar)

    @property
    def posterior_variance(self) -> torch.Tensor:
        """β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t) · β_t, the variance of q(x_{t−1}|x_t,x₀) (DDPM Eq. 7)."""
        return (1 - self.alpha_bar_prev) / (1 - self.alpha_bar) * self.betas

    def rescale_zero_terminal_snr(self) -> "NoiseSchedule":
        """Shift and scale √ᾱ so that ᾱ_T = 0 exactly (Lin et al. 2023, Algorithm 1).

        With zero terminal SNR the last step is pure noise: no low-frequency signal leaks into
        x_T. Use v- or x₀-prediction with it; ε-prediction is undefined at ᾱ = 0.
        """
        sqrt_ab = torch.sqrt(self.alpha_bar)
        first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
        if self.T < 2 or not first > last:
            raise ValueError(f"rescale_zero_terminal_snr needs T >= 2 and a decreasing ᾱ (got T={self.T}): with "
                             "one step the rescaled schedule would be all noise")
        sqrt_ab = (sqrt_ab - last) * first / (first - last)
        alpha_bar = sqrt_ab**2
        alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
        return NoiseSchedule(1 - alphas, name=f"{self.name}+zsnr")

    def to(self, device: str | torch.device) -> "NoiseSchedule":
        """A copy whose tensors live on ``device`` (still float64; MPS gets float32)."""
        dev = torch.device(device)
        dtype = torch.float32 if dev.type == "mps" else torch.float64
        new = NoiseSchedule.__new__(NoiseSchedule)
        new.name = self.name
        for key in ("betas", "alphas", "alpha_bar", "alpha_bar_prev"):
            setattr(new, key, getattr(self, key).to(device=dev, dtype=dtype))
        return new

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def gather(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``values[t]`` reshaped to broadcast against ``like`` (B, ...), cast to its dtype.

        ``t = -1`` is the clean end and gives ᾱ = 1 for ``alpha_bar`` (use :meth:`alpha_bar_at`).
        """
        out = values.to(like.device)[t.to(values.device).long()]
        return out.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def alpha_bar_at(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t for integer t in [−1, T−1], with ᾱ_{−1} = 1; float64, same device as the schedule."""
        t = t.to(self.device).long()
        padded = torch.cat([self.alpha_bar.new_ones(1), self.alpha_bar])
        return padded[t + 1]

    def __repr__(self) -> str:
        return (f"NoiseSchedule({self.name}, T={self.T}, alpha_bar[0]={self.alpha_bar[0].item():.6f}, "
                f"alpha_bar[T-1]={self.alpha_bar[-1].item():.3e})")


def _as_betas(betas) -> torch.Tensor:
    """β as a float64 tensor; complex, boolean, string or ragged input is an error, never silently cast."""
    if isinstance(betas, (str, bytes)):
        raise TypeError(f"betas must be a 1-D sequence or tensor of numbers, got a {type(betas).__name__}: {betas!r:.40}")
    try:
        raw = betas if isinstance(betas, torch.Tensor) else torch.as_tensor(np.asarray(betas))
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"betas must be a 1-D sequence or tensor of real numbers, got {type(betas).__name__} "
                        f"({err})") from None
    if raw.is_complex():
        raise TypeError(f"betas must be real, got complex dtype {raw.dtype} (the imaginary part would be dropped)")
    if raw.dtype == torch.bool or not (raw.is_floating_point() or raw.dtype in
                                       (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"betas must be real numbers, got dtype {raw.dtype}")
    return raw.to(torch.float64)


def _check_T(T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")


def get_schedule(name: str, T: int = 1000) -> NoiseSchedule:
    """A schedule by name: ``"linear"`` or ``"cosine"`` (optionally with ``"+zsnr"``)."""
    if not isinstance(name, str):
        raise TypeError(f"schedule name must be a str: 'linear' or 'cosine' (optionally '+zsnr'), got {name!r}")
    base, _, suffix = name.partition("+")
    makers = {"linear": NoiseSchedule.linear, "cosine": NoiseSchedule.cosine}
    if base not in makers or suffix not in {"", "zsnr"}:
        raise ValueError(f"unknown schedule {name!r}; choose 'linear' or 'cosine' (optionally '+zsnr')")
    s = makers[base](T)
    return s.rescale_zero_terminal_snr() if suffix else s
