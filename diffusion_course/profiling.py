"""Measuring cost: seconds per training step, seconds per sample, and FLOPs per forward pass.

Chapters 5 and 8 compare models by what they cost, so the numbers must be like for like: the same batch, the same
threads, medians over repeats after a warm-up call, and FLOPs counted by ``torch.utils.flop_counter`` (which
counts matrix multiplications and convolutions: 2 FLOPs per multiply–add; element-wise ops are not counted).
"""
from __future__ import annotations

import time

import torch
from torch import nn


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def _inputs(model: nn.Module, shape: tuple[int, ...], batch: int, num_classes: int, generator: torch.Generator):
    dev = next(model.parameters()).device
    x = torch.randn((batch, *shape), generator=generator).to(dev)
    t = torch.randint(0, 1000, (batch,), generator=generator).to(dev)
    cond = torch.randint(0, num_classes, (batch,), generator=generator).to(dev) if num_classes else None
    return x, t, cond


def train_step_seconds(model: nn.Module, shape: tuple[int, ...], batch: int = 32, repeats: int = 5,
                       seed: int = 0) -> float:
    """Median wall-clock seconds of one training step (forward, MSE backward, AdamW update) at ``batch``.

    ``shape`` is one input's (C, H, W). The model's weights are restored afterwards, so timing never trains it."""
    if batch < 1 or repeats < 1:
        raise ValueError(f"batch and repeats must be >= 1, got {batch}, {repeats}")
    g = torch.Generator().manual_seed(seed)
    x, t, cond = _inputs(model, shape, batch, getattr(model, "num_classes", 0), g)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    try:
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            loss = model(x, t, cond).float().pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            if i:                           # the first call warms up allocators and kernels
                times.append(time.perf_counter() - t0)
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    return _median(times)


@torch.no_grad()
def forward_seconds(model: nn.Module, shape: tuple[int, ...], batch: int = 32, repeats: int = 5, seed: int = 0) -> float:
    """Median wall-clock seconds of one inference forward pass at ``batch`` (what one sampler step costs)."""
    g = torch.Generator().manual_seed(seed)
    x, t, cond = _inputs(model, shape, batch, getattr(model, "num_classes", 0), g)
    was_training = model.training
    model.eval()
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        model(x, t, cond)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    model.train(was_training)
    return _median(times)


def flops_per_forward(model: nn.Module, shape: tuple[int, ...], batch: int = 1) -> int:
    """FLOPs of one forward pass on ``batch`` inputs of ``shape``, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(0)
    x, t, cond = _inputs(model, shape, batch, getattr(model, "num_classes", 0), g)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, cond)
    model.train(was_training)
    return int(counter.get_total_flops())
