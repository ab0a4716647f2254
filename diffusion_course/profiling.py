"""Measuring cost: seconds per training step, seconds per sample, FLOPs per forward pass, and held-out loss against
training compute (:func:`loss_vs_compute`, chapter 8's scaling sweep).

Chapters 5 and 8 compare models by what they cost, so the numbers must be like for like: the same batch, the same
threads, medians over repeats after a warm-up call, and FLOPs counted by ``torch.utils.flop_counter`` plus attention.

**The counting convention.** Matrix multiplications and convolutions count 2 FLOPs per multiply–add; element-wise ops
(activations, norms, the softmax, the 1/√d scale) are not counted. ``torch.utils.flop_counter`` knows the matmuls and
convolutions, but on a CPU ``F.scaled_dot_product_attention`` usually runs as one fused kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``) that it has no formula for, so it counts that attention as
free; only where SDPA falls back to plain matmuls (3-D inputs, some strided layouts such as the U-Net's) does it see
them. :func:`count_flops` registers a formula for the fused kernels (:func:`attention_flops`): QKᵀ is an
(L_q × d)·(d × L_k) product per batch element and head, 2·L_q·L_k·d FLOPs, and the weights times V another
2·L_q·L_k·d_v — the convention of the linear layers around it. ``attention=False`` counts the fused kernels as 0,
which is what ``torch.utils.flop_counter`` alone reports (and what the course's earlier numbers, and the sizing of the
shipped latent DiT, used).
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

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


def attention_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int]) -> int:
    """FLOPs of softmax(QKᵀ/√d)·V for tensors of these shapes, (…, L_q, d), (…, L_k, d) and (…, L_k, d_v):
    2·n·L_q·L_k·d for QKᵀ plus 2·n·L_q·L_k·d_v for the weights times V, n = the product of the leading (batch,
    head) sizes of the query. The scale and the softmax are element-wise and, as everywhere here, not counted."""
    *lead, l_q, d = (int(v) for v in query_shape)
    l_k, d_k = int(key_shape[-2]), int(key_shape[-1])
    l_v, d_v = int(value_shape[-2]), int(value_shape[-1])
    if d_k != d or l_v != l_k:
        raise ValueError(f"query/key/value shapes do not fit together: {tuple(query_shape)}, {tuple(key_shape)}, "
                         f"{tuple(value_shape)} (need q (…, L_q, d), k (…, L_k, d), v (…, L_k, d_v))")
    n = math.prod(lead)
    return 2 * n * l_q * l_k * d + 2 * n * l_q * l_k * d_v


# The fused attention kernels. torch's flop counter has formulas for the GPU ones; on a CPU, SDPA dispatches to the
# "_for_cpu" kernel, which it lacks. A backward pass is four such products (dQ, dK, dV and the weights' gradient):
# twice the forward.
_SDPA_KERNELS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                 "_scaled_dot_product_fused_attention_overrideable")


def _sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return attention_flops(query_shape, key_shape, value_shape)


def _sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * attention_flops(query_shape, key_shape, value_shape)


def _no_flops(*args, out_shape=None, **kwargs) -> int:
    return 0


def _attention_formulas(attention: bool) -> dict[Any, Callable[..., int]]:
    """FlopCounterMode's ``custom_mapping``: a formula for each fused attention kernel this torch has and its
    counter lacks (with ``attention=False``: 0 FLOPs for every fused attention kernel)."""
    from torch.utils.flop_counter import flop_registry

    mapping: dict[Any, Callable[..., int]] = {}
    for name in _SDPA_KERNELS:
        for op_name, formula in ((name, _sdpa_forward), (name + "_backward", _sdpa_backward)):
            op = getattr(torch.ops.aten, op_name, None)
            if op is None:
                continue
            if not attention:
                mapping[op] = _no_flops
            elif op not in flop_registry:      # keep torch's own formula (GPU kernels, nested tensors) where it has one
                mapping[op] = formula
    return mapping


def count_flops(fn: Callable[[], object], attention: bool = True) -> int:
    """FLOPs of calling ``fn()`` (its forward and, if it runs one, its backward), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` with attention added (the module's docstring has the convention);
    ``attention=False`` counts the fused attention kernels as 0."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_attention_formulas(attention)) as counter:
        fn()
    return int(counter.get_total_flops())


def flops_per_forward(model: nn.Module, shape: tuple[int, ...], batch: int = 1, attention: bool = True) -> int:
    """FLOPs of one forward pass on ``batch`` inputs of ``shape`` (:func:`count_flops`; ``attention=False`` leaves
    the fused attention kernels out, as ``torch.utils.flop_counter`` alone does on a CPU)."""
    _check_timing(batch)
    g = torch.Generator().manual_seed(0)
    x, t, cond = _inputs(model, shape, batch, getattr(model, "num_classes", 0), g)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return count_flops(lambda: model(x, t, cond), attention=attention)
    finally:
        model.train(was_training)


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
    """A fresh network of chapter 8's comparison: "unet" and "dit" (the shipped latent pair's architectures) or a size
    of ``nn.dit.DIT_CONFIGS`` ("mini-XS", "mini-S", "mini-M"), on the 4×7×7 latents or, with ``space="pixel"``,
    on 28×28 images cut into ``patch``×``patch`` patches (DiT sizes only)."""
    from .nn.dit import DIT_CONFIGS, DiT
    from .recipes import RECIPES, build_denoiser

    if space not in ("latent", "pixel"):
        raise ValueError(f"space must be 'latent' or 'pixel', got {space!r}")
    if kind not in ("unet", "dit", *DIT_CONFIGS):
        raise ValueError(f"kind must be 'unet', 'dit' or one of {sorted(DIT_CONFIGS)}, got {kind!r}")
    if space == "pixel":
        if kind not in DIT_CONFIGS:
            raise ValueError(f"space='pixel' builds a DiT of DIT_CONFIGS ({sorted(DIT_CONFIGS)}), got kind={kind!r}")
        return DiT(input_size=28, patch=patch, in_channels=1, num_classes=10, **DIT_CONFIGS[kind])
    if kind == "unet":
        return build_denoiser("unet", RECIPES["fmnist-ldm"].model)
    if kind == "dit":   # the shipped fmnist-ldm-dit's DiT, sized to the U-Net's FLOPs (counted without attention)
        return build_denoiser("dit", RECIPES["fmnist-ldm-dit"].model)
    return DiT(input_size=7, patch=1, in_channels=4, num_classes=10, **DIT_CONFIGS[kind])


def loss_vs_compute(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor | None, held_x: torch.Tensor,
                    held_y: torch.Tensor | None, schedule: NoiseSchedule, steps: int, batch: int, lr: float,
                    evals: int = 6, seed: int = 0, progress: bool = True,
                    desc: str | None = None) -> tuple[nn.Module, list[list[float]], int, float]:
    """Train ``steps`` steps in ``evals`` pieces (resumed exactly from a temporary checkpoint, constant lr after the
    warm-up so the pieces are one run), recording [step, training FLOPs, held-out loss of the EMA] after each.
    Returns (the EMA model, the curve, FLOPs per forward, seconds). Training FLOPs = 3 × forward × batch × steps
    (forward FLOPs by :func:`flops_per_forward`, attention included). The progress bar (``desc``, default the model's
    class) counts steps and stays on screen when done."""
    import os
    import tempfile

    from tqdm.auto import tqdm

    from . import training

    validate.positive_int("steps", steps)
    validate.positive_int("evals", evals)
    fwd_flops = flops_per_forward(model, tuple(train_x.shape[1:]))
    path = tempfile.mktemp(suffix=".pt")
    curve, t0 = [], time.perf_counter()
    bar = tqdm(total=steps, desc=desc or type(model).__name__, unit="step", disable=not progress)
    try:
        for k in range(1, evals + 1):
            cfg = training.TrainConfig(steps=steps * k // evals, batch_size=batch, lr=lr, warmup=100,
                                       lr_decay="constant", ema_decay=0.999, p_uncond=0.2, t_sampling="logsnr-normal",
                                       seed=seed, channels_last=False, checkpoint_path=path, checkpoint_every=10**9)
            result = training.train(model, schedule, train_x, train_y, cfg, progress=False, device="cpu")
            curve.append([result.step, 3 * fwd_flops * batch * result.step,
                          held_out_loss(result.ema, held_x, held_y, schedule)])
            bar.update(result.step - bar.n)
            bar.set_postfix(loss=f"{curve[-1][2]:.4f}")
    finally:
        bar.close()
        if os.path.exists(path):
            os.remove(path)
    return result.ema.eval(), curve, fwd_flops, time.perf_counter() - t0


def _loss_at(curve: Sequence[Sequence[float]], flops: float) -> float | None:
    """The held-out loss of a :func:`loss_vs_compute` curve at ``flops`` training FLOPs: linear interpolation in
    log FLOPs (a straight line between points on a log axis); None outside the measured range."""
    xs = [math.log(float(p[1])) for p in curve]
    ys = [float(p[2]) for p in curve]
    x = math.log(flops)
    if not xs or x < xs[0] - 1e-12 or x > xs[-1] + 1e-12:
        return None
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 - 1e-12 <= x <= x1 + 1e-12:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (min(max(x, x0), x1) - x0) / (x1 - x0)
    return ys[0]


def curve_crossings(curves: dict[str, Sequence[Sequence[float]]]) -> list[dict[str, Any]]:
    """Do loss-against-compute curves cross? For every pair of :func:`loss_vs_compute` curves (each a list of [step,
    training FLOPs, held-out loss], FLOPs increasing), one dict:

    * ``a``, ``b``: the two names; ``overlap``: the (low, high) FLOPs both curves cover, or None;
    * with an overlap: both curves are compared at every recorded FLOPs value inside it (interpolated as
      :func:`_loss_at` does); ``crosses`` is True when each is lower somewhere, ``lower`` names the one that is lower
      at every point (None if they cross), ``at`` is the first compared FLOPs value where the order flips (or None);
    * without an overlap the question "do they cross" has no measured answer: ``crosses`` is None and ``lower`` names
      the model whose whole curve lies at less compute *and* ends below the other's first point (it needs less
      compute for a lower loss), or None when the dearer one reaches a lower loss (the trade a bigger model offers).
    """
    out = []
    names = list(curves)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ca, cb = curves[a], curves[b]
            lo, hi = max(ca[0][1], cb[0][1]), min(ca[-1][1], cb[-1][1])
            row: dict[str, Any] = {"a": a, "b": b, "overlap": (lo, hi) if lo <= hi else None, "crosses": None,
                                   "lower": None, "at": None}
            if lo <= hi:
                xs = sorted({float(p[1]) for p in (*ca, *cb) if lo <= p[1] <= hi})
                signs = []
                for x in xs:
                    la, lb = _loss_at(ca, x), _loss_at(cb, x)
                    if la is not None and lb is not None and la != lb:
                        signs.append((x, la < lb))
                flips = [x for (x, s), (_, s_prev) in zip(signs[1:], signs) if s != s_prev]
                row["crosses"] = bool(flips)
                row["at"] = flips[0] if flips else None
                if signs and not flips:
                    row["lower"] = a if signs[0][1] else b
            else:
                cheap, dear = (ca, cb) if ca[-1][1] < cb[0][1] else (cb, ca)
                if cheap[-1][2] < dear[0][2]:
                    row["lower"] = a if cheap is ca else b
            out.append(row)
    return out
