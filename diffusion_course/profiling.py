"""Measuring cost: seconds per training step, seconds per sample, FLOPs per forward pass, and held-out loss against
training compute (:func:`loss_vs_compute`, chapter 8's scaling sweep).

Chapters 5 and 8 compare models by what they cost, so the numbers must be like for like: the same batch, the same
threads, medians over repeats after a warm-up call, and FLOPs counted by ``torch.utils.flop_counter`` (which
counts matrix multiplications and convolutions: 2 FLOPs per multiply–add; element-wise ops are not counted).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import validate

if TYPE_CHECKING:
    from .schedules import NoiseSchedule


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def _check_timing(batch: int, repeats: int = 1) -> None:
    validate.positive_int("batch", batch)
    validate.positive_int("repeats", repeats)   # 0 repeats would time nothing: the median of no runs


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
    _check_timing(batch, repeats)
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
    _check_timing(batch, repeats)
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

    _check_timing(batch)
    g = torch.Generator().manual_seed(0)
    x, t, cond = _inputs(model, shape, batch, getattr(model, "num_classes", 0), g)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, cond)
    model.train(was_training)
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- loss against training compute (chapter 8)
def held_out_loss(model: nn.Module, x0: torch.Tensor, y: torch.Tensor | None, schedule: NoiseSchedule,
                  seed: int = 0) -> float:
    """ε-MSE on fixed held-out data with fixed t and noise (the same draw for every model and every call)."""
    from . import losses

    model.eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        total = 0.0
        for i in range(0, x0.shape[0], 500):
            total += float(losses.diffusion_loss(model, x0[i:i + 500], schedule, cond=y[i:i + 500], generator=g)) * \
                     x0[i:i + 500].shape[0]
    model.train()
    return total / x0.shape[0]


def scaling_model(kind: str, space: str = "latent", patch: int = 1) -> nn.Module:
    """A fresh network of chapter 8's comparison: "unet" and "dit" (the shipped latent pair's architectures) or
    "dit-XS/S/M" (``nn.dit.DIT_CONFIGS``), on the 4×7×7 latents or, with ``space="pixel"``, on 28×28 images."""
    from .nn.dit import DIT_CONFIGS, DiT
    from .recipes import RECIPES, build_denoiser

    if kind == "unet":
        return build_denoiser("unet", RECIPES["fmnist-ldm"].model)
    if kind == "dit":   # the shipped fmnist-ldm-dit's DiT, sized to the U-Net's FLOPs
        return build_denoiser("dit", RECIPES["fmnist-ldm-dit"].model)
    size = kind.split("-")[1]
    if space == "latent":
        return DiT(input_size=7, patch=1, in_channels=4, num_classes=10, **DIT_CONFIGS[size])
    return DiT(input_size=28, patch=patch, in_channels=1, num_classes=10, **DIT_CONFIGS[size])


def loss_vs_compute(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor | None, held_x: torch.Tensor,
                    held_y: torch.Tensor | None, schedule: NoiseSchedule, steps: int, batch: int, lr: float,
                    evals: int = 6, seed: int = 0,
                    progress: bool = True) -> tuple[nn.Module, list[list[float]], int, float]:
    """Train ``steps`` steps in ``evals`` pieces (resumed exactly from a temporary checkpoint, constant lr after the
    warm-up so the pieces are one run), recording [step, training FLOPs, held-out loss of the EMA] after each.
    Returns (the EMA model, the curve, FLOPs per forward, seconds). Training FLOPs = 3 × forward × batch × steps."""
    import os
    import tempfile

    from tqdm.auto import tqdm

    from . import training

    fwd_flops = flops_per_forward(model, tuple(train_x.shape[1:]))
    path = tempfile.mktemp(suffix=".pt")
    curve, t0 = [], time.perf_counter()
    for k in tqdm(range(1, evals + 1), desc=f"{type(model).__name__}: {steps} steps", disable=not progress, leave=False):
        cfg = training.TrainConfig(steps=steps * k // evals, batch_size=batch, lr=lr, warmup=100, lr_decay="constant",
                                   ema_decay=0.999, p_uncond=0.2, t_sampling="logsnr-normal", seed=seed,
                                   channels_last=False, checkpoint_path=path, checkpoint_every=10**9)
        result = training.train(model, schedule, train_x, train_y, cfg, progress=False, device="cpu")
        curve.append([result.step, 3 * fwd_flops * batch * result.step,
                      held_out_loss(result.ema, held_x, held_y, schedule)])
    os.remove(path)
    return result.ema.eval(), curve, fwd_flops, time.perf_counter() - t0
