"""The training loop: AdamW with warm-up, gradient clipping, EMA, AMP on CUDA, checkpoints, resume,
and an optional wall-clock budget (``TrainConfig.max_minutes``).

Everything random in the loop (batch indices, t, ε, label dropout) comes from one seeded
``torch.Generator`` whose state is saved in every checkpoint, so a run that is interrupted and
resumed on the CPU produces exactly the weights an uninterrupted run would have.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import checkpoints
from .config import get_device
from .losses import OBJECTIVES, T_SAMPLINGS, diffusion_loss
from .schedules import NoiseSchedule


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    lr_decay: str = "cosine"          # "cosine" (to 10% at the end) or "constant"
    # Warm restarts (SGDR, Loshchilov & Hutter 2017): each listed step ends a cosine cycle; every later
    # cycle starts at lr·restart_lr_scale and decays to 10% of that by its own end (cosine decay only). This lets a recipe
    # be extended ("train longer") while its first cycles stay bit-identical to the shorter run.
    lr_cycle_ends: tuple[int, ...] = ()
    restart_lr_scale: float = 1.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    objective: str = "eps"
    p_uncond: float = 0.1             # label dropout for classifier-free guidance (conditional data only)
    min_snr_gamma: float | None = None
    # How training timesteps are drawn (losses.sample_timesteps): "uniform" is DDPM's Algorithm 1;
    # "logsnr-normal" spends them at middle noise levels, which short CPU runs learn fastest from.
    t_sampling: str = "uniform"
    logsnr_mean: float = 0.0
    logsnr_std: float = 2.0
    seed: int = 0
    checkpoint_path: str | None = None
    checkpoint_every: int = 500
    amp: bool = True                  # CUDA only: bf16 autocast where supported (Ampere+), else fp16 + GradScaler
    compile: bool = False             # torch.compile, CUDA only
    channels_last: bool = True
    buckets: int = 10                 # timestep buckets for the loss-per-t history
    # A wall-clock budget ("train for 5 minutes"): training stops at ``steps`` or when the budget is spent,
    # whichever comes first; with lr_decay="cosine" the decay follows the spent fraction of the budget (or of
    # the steps, if further along), so the run ends annealed however fast the machine is. Time-based, so not
    # bit-reproducible (step-based runs are).
    max_minutes: float | None = None

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {self.t_sampling!r}")
        if not self.logsnr_std > 0:
            raise ValueError(f"logsnr_std must be positive, got {self.logsnr_std}")
        if self.lr_decay not in {"cosine", "constant"}:
            raise ValueError(f"lr_decay must be 'cosine' or 'constant', got {self.lr_decay!r}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.lr_cycle_ends = tuple(int(s) for s in self.lr_cycle_ends)
        if list(self.lr_cycle_ends) != sorted(set(self.lr_cycle_ends)) or any(
                not self.warmup < s < self.steps for s in self.lr_cycle_ends):
            raise ValueError("lr_cycle_ends must be increasing steps between warmup and steps, "
                             f"got {self.lr_cycle_ends}")
        if self.restart_lr_scale <= 0:
            raise ValueError(f"restart_lr_scale must be positive, got {self.restart_lr_scale}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive (or None), got {self.max_minutes}")
        if self.max_minutes is not None and self.lr_cycle_ends:
            raise ValueError("max_minutes cannot be combined with lr_cycle_ends (warm restarts are step-based)")


@dataclass
class History:
    loss: list[float] = field(default_factory=list)            # one value per step
    bucket_sum: list[float] = field(default_factory=list)      # per timestep bucket
    bucket_count: list[int] = field(default_factory=list)
    wall_time: float = 0.0

    def bucket_means(self) -> list[float]:
        return [s / c if c else float("nan") for s, c in zip(self.bucket_sum, self.bucket_count)]

    def smoothed(self, window: int = 50) -> list[float]:
        out, acc = [], 0.0
        for i, v in enumerate(self.loss):
            acc += v - (self.loss[i - window] if i >= window else 0.0)
            out.append(acc / min(i + 1, window))
        return out


@dataclass
class TrainResult:
    model: nn.Module
    ema: nn.Module
    history: History
    step: int
    interrupted: bool = False


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ (Polyak averaging); buffers are copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def ema_decay_at(step: int, decay: float) -> float:
    """A warm-up for EMA: average fast at first, ``decay`` later (as in many DDPM codebases)."""
    return min(decay, (1 + step) / (10 + step))


def lr_at(step: int, cfg: TrainConfig, elapsed_seconds: float = 0.0) -> float:
    """The learning rate at ``step``: linear warm-up, then constant or cosine decay to 10 % of the peak
    (per cycle, with warm restarts). With ``cfg.max_minutes`` the decay follows whichever is further
    along: the steps or the wall-clock budget (``elapsed_seconds`` of it spent)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_decay == "constant":
        return cfg.lr
    starts = [cfg.warmup, *cfg.lr_cycle_ends]
    ends = [*cfg.lr_cycle_ends, cfg.steps]
    cycle = sum(step >= e for e in cfg.lr_cycle_ends)
    peak = cfg.lr * cfg.restart_lr_scale ** min(cycle, 1)
    progress = (step - starts[cycle]) / max(1, ends[cycle] - starts[cycle])
    if cfg.max_minutes is not None:
        progress = max(progress, elapsed_seconds / (60 * cfg.max_minutes))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _state(model, ema, opt, gen, step, history, cfg) -> dict:
    return {
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
        "history": asdict(history), "config": asdict(cfg),
    }


def train(model: nn.Module, schedule: NoiseSchedule, images: torch.Tensor, labels: torch.Tensor | None = None,
          config: TrainConfig | None = None, resume: bool = True, progress: bool = True,
          device: torch.device | str | None = None) -> TrainResult:
    """Train ``model`` with the diffusion loss on an in-memory dataset.

    Args:
        images: (N, C, H, W) in [−1, 1] (or (N, d) points).
        labels: optional int64 (N,) class labels or (N, L) caption token ids; with them the model
            learns p(x|y) and, through condition dropout (``config.p_uncond``), p(x).
        resume: if ``config.checkpoint_path`` exists, continue from it.
    Returns a :class:`TrainResult` with the raw model, its EMA copy (use it to sample) and the history.
    Ctrl-C / "interrupt kernel" saves a checkpoint (when a path is set) and returns what was trained.
    """
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    dev = torch.device(device) if device is not None else get_device()
    if not isinstance(images, torch.Tensor) or images.ndim < 2:
        raise ValueError("images must be a tensor of shape (N, ...)")
    if labels is not None and (labels.ndim < 1 or labels.shape[0] != images.shape[0] or labels.dtype != torch.long):
        raise ValueError(f"labels must be an int64 tensor of shape ({images.shape[0]},) — or "
                         f"({images.shape[0]}, L) token ids for a text model")
    cuda = dev.type == "cuda"
    model = model.to(dev)
    if cfg.channels_last and images.ndim == 4:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = History(bucket_sum=[0.0] * cfg.buckets, bucket_count=[0] * cfg.buckets)
    step = 0
    ckpt = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None
    if resume and ckpt is not None and ckpt.exists():
        state = checkpoints.load(ckpt, map_location=dev, verify=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        step = int(state["step"])
        history = History(**state["history"])
        if progress:
            print(f"resumed from {ckpt} at step {step}")
    else:
        torch.manual_seed(cfg.seed)  # dropout, if any, is reproducible too
    net = torch.compile(model) if (cfg.compile and cuda) else model
    images_dev = images.to(dev)
    labels_dev = labels.to(dev) if labels is not None else None
    use_amp = cfg.amp and cuda
    # bf16 needs compute capability 8 (A100, H100, RTX 30xx+); Colab's T4 gets fp16 with loss scaling.
    amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported(including_emulation=False)) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    def save_checkpoint():
        if ckpt is not None:
            checkpoints.save(_state(model, ema, opt, gen, step, history, cfg), ckpt)

    model.train()
    budget_s = 60 * cfg.max_minutes if cfg.max_minutes is not None else math.inf
    desc = "training" if cfg.max_minutes is None else f"training ({cfg.max_minutes:g} min budget)"
    bar = tqdm(total=cfg.steps if budget_s == math.inf else None, initial=step, desc=desc,
               disable=not progress, mininterval=0.5)
    interrupted = False
    step_start_rng = (gen.get_state(), torch.get_rng_state())
    start = time.perf_counter() - history.wall_time
    try:
        while step < cfg.steps and history.wall_time < budget_s:
            # RNG states at the start of the step: an interrupted step is rolled back to here.
            step_start_rng = (gen.get_state(), torch.get_rng_state())
            idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen).to(dev)
            x0 = images_dev[idx]
            if cfg.channels_last and x0.ndim == 4:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            y = labels_dev[idx] if labels_dev is not None else None
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg, history.wall_time)
            with torch.autocast("cuda", dtype=amp_dtype, enabled=use_amp):
                out = diffusion_loss(net, x0, schedule, cfg.objective, cond=y,
                                     p_uncond=cfg.p_uncond if y is not None else 0.0,
                                     min_snr_gamma=cfg.min_snr_gamma, generator=gen, return_details=True,
                                     t_sampling=cfg.t_sampling, logsnr_mean=cfg.logsnr_mean, logsnr_std=cfg.logsnr_std)
            loss_value = out.loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"the loss became {loss_value} at step {step}; the weights were not updated. "
                    f"Lower the learning rate (lr={cfg.lr}) or check the data for NaNs.")
            opt.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            ema_update(ema, model, ema_decay_at(step, cfg.ema_decay))
            history.loss.append(loss_value)
            buckets = (out.t.cpu() * cfg.buckets // schedule.T).tolist()
            for b, v in zip(buckets, out.per_sample.cpu().tolist()):
                history.bucket_sum[b] += v
                history.bucket_count[b] += 1
            step += 1
            history.wall_time = time.perf_counter() - start
            bar.update(1)
            if step % 20 == 0 or step == cfg.steps:
                bar.set_postfix(loss=f"{sum(history.loss[-50:]) / len(history.loss[-50:]):.4f}")
            if ckpt is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_checkpoint()
    except KeyboardInterrupt:
        interrupted = True
        if len(history.loss) == step:  # the weights were not touched by the unfinished step
            gen.set_state(step_start_rng[0])
            torch.set_rng_state(step_start_rng[1])
        save_checkpoint()
        where = f"; checkpoint saved to {ckpt}" if ckpt is not None else ""
        print(f"interrupted at step {step}{where}. Returning the model trained so far.")
    finally:
        bar.close()
    if not interrupted:
        save_checkpoint()
        if progress and step < cfg.steps:
            print(f"stopped at step {step}: the {cfg.max_minutes:g}-minute budget is spent.")
    model.eval()
    return TrainResult(model=model, ema=ema, history=history, step=step, interrupted=interrupted)
