"""Timestep embeddings (Transformer sinusoids, Vaswani et al. 2017, Sec. 3.5; used by DDPM)."""
from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of integer (or real) timesteps: (B,) -> (B, dim).

    emb[:, i] = cos(t · ω_i), emb[:, i + dim/2] = sin(t · ω_i), with ω_i = max_period^(−i/(dim/2)).
    Low i give fast-varying features that separate neighbouring t; high i vary slowly.
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class TimestepEmbedding(nn.Module):
    """Sinusoids followed by a 2-layer MLP, as in DDPM's U-Net."""

    def __init__(self, dim: int, hidden: int | None = None, freq_dim: int | None = None):
        super().__init__()
        self.freq_dim = freq_dim or dim
        self.mlp = nn.Sequential(nn.Linear(self.freq_dim, hidden or dim), nn.SiLU(), nn.Linear(hidden or dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))
