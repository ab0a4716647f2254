"""A small MLP denoiser for 2-D toy data: ``model(x, t, cond=None) -> ε̂``."""
from __future__ import annotations

import torch
from torch import nn

from .embeddings import timestep_embedding


class MLPDenoiser(nn.Module):
    """x (B, d) and t (B,) → ε̂ (B, d). Time enters as sinusoids concatenated to the input."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, t_dim: int = 32, objective: str = "eps"):
        super().__init__()
        self.dim, self.t_dim, self.objective = dim, t_dim, objective
        self.config = dict(dim=dim, hidden=hidden, depth=depth, t_dim=t_dim, objective=objective)
        layers: list[nn.Module] = [nn.Linear(dim + t_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        return self.net(torch.cat([x, timestep_embedding(t, self.t_dim)], dim=1))
