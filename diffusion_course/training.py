"""The training loop: AdamW with warm-up, gradient clipping, EMA, AMP on CUDA, checkpoints, resume,
and an optional wall-clock budget (``TrainConfig.max_minutes``).

Everything random in the loop (batch indices, t, ε, label dropout) comes from one seeded
``torch.Generator`` whose state is saved in every checkpoint, so a run that is interrupted and
resumed on the CPU produces exactly the weights an uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import checkpoints, distributed, validate
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
        for name in ("steps", "batch_size", "buckets"):
            validate.positive_int(name, getattr(self, name))
        for name in ("warmup", "checkpoint_every"):  # 0 = no warm-up / save only at the end
            validate.non_negative_int(name, getattr(self, name))
        validate.seed("seed", self.seed)
        validate.real("lr", self.lr, low=0.0, low_open=True)
        validate.real("weight_decay", self.weight_decay, low=0.0)
        if self.grad_clip is not None:  # None or 0 = no clipping
            validate.real("grad_clip", self.grad_clip, low=0.0)
        validate.probability("p_uncond", self.p_uncond)
        validate.real("ema_decay", self.ema_decay, low=0.0)
        validate.real("restart_lr_scale", self.restart_lr_scale)
        validate.real("logsnr_mean", self.logsnr_mean)
        validate.real("logsnr_std", self.logsnr_std, allow_inf=False)
        if self.min_snr_gamma is not None:
            validate.real("min_snr_gamma", self.min_snr_gamma, low=0.0, low_open=True)
        if self.max_minutes is not None:
            validate.real("max_minutes", self.max_minutes, low=0.0, low_open=True)
        for name in ("amp", "compile", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.objective, str) or self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {self.t_sampling!r}")
        if not self.logsnr_std > 0:
            raise ValueError(f"logsnr_std must be positive, got {self.logsnr_std}")
        if self.lr_decay not in {"cosine", "constant"}:
            raise ValueError(f"lr_decay must be 'cosine' or 'constant', got {self.lr_decay!r}")
        self.lr_cycle_ends = tuple(validate.positive_int("lr_cycle_ends", s) for s in self.lr_cycle_ends)
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


def _state(model, ema, opt, gen, step, history, cfg, scaler=None) -> dict:
    state = {
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
        "history": asdict(history), "config": asdict(cfg),
    }
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return state


# Fields that may change between a run and its resumption: where and how often it saves, and speed paths.
_RESUME_FREE = {"checkpoint_path", "checkpoint_every", "amp", "compile", "channels_last"}


# Fields that shape the learning-rate schedule beyond the steps already trained: they may change on resumption
# exactly when the learning rate of every trained step stays the same.
_SCHEDULE_SHAPE = ("steps", "lr_cycle_ends", "restart_lr_scale")


def _norm(v):
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def config_differences(saved: dict, cfg: TrainConfig, saved_step: int) -> list[str]:
    """What makes a saved run and ``cfg`` different recipes (empty: resuming continues the same run).

    ``steps``, ``lr_cycle_ends`` and ``restart_lr_scale`` may change when the learning rate of every step already
    trained stays the same (e.g. a one-cycle recipe extended by a warm-restart cycle); every other recipe field
    must be equal.
    """
    defaults = asdict(TrainConfig())
    now = asdict(cfg)
    out = []
    for key, value in now.items():
        if key in _RESUME_FREE or key in _SCHEDULE_SHAPE:
            continue
        before = saved.get(key, defaults[key])
        if _norm(before) != _norm(value):
            out.append(f"{key} (saved {before!r}, now {value!r})")
    if any(_norm(saved.get(key, defaults[key])) != _norm(now[key]) for key in _SCHEDULE_SHAPE):
        try:
            old = TrainConfig(**{k: v for k, v in saved.items() if k in defaults})
            same_lr = all(lr_at(s, old) == lr_at(s, cfg) for s in range(saved_step))
        except (TypeError, ValueError):
            same_lr = False
        if not same_lr:
            for key in _SCHEDULE_SHAPE:
                if _norm(saved.get(key, defaults[key])) != _norm(now[key]):
                    out.append(f"{key} (saved {saved.get(key, defaults[key])!r}, now {now[key]!r}: the learning "
                               f"rate of the {saved_step} steps already trained would differ)")
    return out


# A test seam: ``_fault_hook(point, step)`` is called at each point of a step ("batch", "before_opt_step",
# "after_opt_step", "after_ema", "after_count") so tests can inject a KeyboardInterrupt exactly there.
_fault_hook = None


def _hook(point: str, step: int) -> None:
    if _fault_hook is not None:
        _fault_hook(point, step)


class _SigintDeferred:
    """Hold back Ctrl-C (SIGINT) while the weights are being updated; deliver it right after.

    Only possible in the main thread; elsewhere it does nothing. ``stop_only`` keeps it deferred for good
    and just records it (``.pending``): data-parallel ranks all stop at the same step boundary instead.
    """

    def __init__(self, stop_only: bool = False, signals=(signal.SIGINT,)):
        self.stop_only, self.signals, self.pending, self._old = stop_only, signals, False, {}

    def _handler(self, signum, frame):
        self.pending = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                try:
                    self._old[sig] = signal.signal(sig, self._handler)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, exc_type, exc, tb):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        if self.pending and not self.stop_only and exc_type is None:
            self.pending = False
            old = signal.getsignal(signal.SIGINT)
            if callable(old):
                old(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
            elif old != signal.SIG_IGN:
                raise KeyboardInterrupt
        return False


def train(model: nn.Module, schedule: NoiseSchedule, images: torch.Tensor, labels: torch.Tensor | None = None,
          config: TrainConfig | None = None, resume: bool | str = True, progress: bool = True,
          device: torch.device | str | None = None) -> TrainResult:
    """Train ``model`` with the diffusion loss on an in-memory dataset.

    Args:
        images: (N, C, H, W) float in [−1, 1] (or (N, d) points).
        labels: optional int64 (N,) class labels or (N, L) caption token ids; with them the model
            learns p(x|y) and, through condition dropout (``config.p_uncond``), p(x).
        resume: if ``config.checkpoint_path`` exists, continue from it — exactly: the weights equal those
            of an uninterrupted run wherever the interruption landed. The saved configuration must be the
            same recipe (differences are named in the error); ``resume="force"`` continues anyway,
            ``resume=False`` starts over (and overwrites the file at the next save).
    Returns a :class:`TrainResult` with the raw model, its EMA copy (use it to sample) and the history.
    Ctrl-C / "interrupt kernel" saves a checkpoint (when a path is set) and returns what was trained.

    Under ``torchrun`` (``distributed.setup()`` called first) it trains with DistributedDataParallel: every
    rank draws the global batch and uses its slice, so the run matches a single process at the same
    ``batch_size``; rank 0 saves and shows progress.
    """
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    if resume not in (True, False, "force"):
        raise ValueError(f"resume must be True, False or 'force', got {resume!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    dev = torch.device(device) if device is not None else get_device()
    validate.float_tensor("images", images, min_ndim=2)
    if images.shape[0] == 0:
        raise ValueError("images is empty (N = 0)")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.ndim < 1
                               or labels.shape[0] != images.shape[0] or labels.dtype != torch.long):
        raise ValueError(f"labels must be an int64 tensor of shape ({images.shape[0]},) — or "
                         f"({images.shape[0]}, L) token ids for a text model")
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({world})")
    progress = progress and main
    cuda = dev.type == "cuda"
    model = model.to(dev)
    if cfg.channels_last and images.ndim == 4:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = History(bucket_sum=[0.0] * cfg.buckets, bucket_count=[0] * cfg.buckets)
    step = 0
    use_amp = cfg.amp and cuda
    # bf16 needs compute capability 8 (A100, H100, RTX 30xx+); Colab's T4 gets fp16 with loss scaling.
    amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported(including_emulation=False)) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    ckpt = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None
    distributed.barrier()  # data-parallel: no rank looks for the state file while rank 0 may still write it
    if resume and ckpt is not None and ckpt.exists():
        state = checkpoints.load(ckpt, map_location=dev, verify=False)
        saved_step = int(state["step"])
        if saved_step > cfg.steps:
            raise ValueError(f"{ckpt} holds a run already at step {saved_step}, but steps={cfg.steps} was asked for: "
                             f"training cannot be undone. Ask for steps >= {saved_step}, or start over "
                             "(resume=False, or delete the file).")
        differences = config_differences(state.get("config", {}), cfg, saved_step)
        if differences and resume != "force":
            raise ValueError(f"{ckpt} was saved by a different training configuration: " + "; ".join(differences)
                             + ". Resuming would mix two recipes. Start over (resume=False, or delete the file; "
                               "CLI: --fresh), write elsewhere, or pass resume='force' to continue anyway.")
        if differences and progress:
            print("resuming despite differences (resume='force'): " + "; ".join(differences))
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and cuda:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu())
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        step = saved_step
        history = History(**state["history"])
        if progress:
            print(f"resumed from {ckpt} at step {step}")
    else:
        torch.manual_seed(cfg.seed)  # dropout, if any, is reproducible too
    net = distributed.wrap(model, dev)  # after loading: DDP starts from rank 0's (identical) weights
    if cfg.compile and cuda:
        net = torch.compile(net) if world == 1 else distributed._Wrapped(torch.compile(net._ddp), model)
    images_dev = images.to(dev)
    labels_dev = labels.to(dev) if labels is not None else None

    def save_checkpoint():
        if ckpt is not None and main:
            checkpoints.save(_state(model, ema, opt, gen, step, history, cfg, scaler), ckpt)

    model.train()
    budget_s = 60 * cfg.max_minutes if cfg.max_minutes is not None else math.inf
    desc = "training" if cfg.max_minutes is None else f"training ({cfg.max_minutes:g} min budget)"
    bar = tqdm(total=cfg.steps if budget_s == math.inf else None, initial=step, desc=desc,
               disable=not progress, mininterval=0.5)
    interrupted = False
    # The phase of the current step decides what an interruption means:
    #   "compute" (batch, forward, backward): nothing was changed yet: the step is rolled back (its RNG draws too)
    #   "update"  (inside opt.step): a real Ctrl-C cannot land here (it is deferred to the end of the update)
    #   "stepped", "ema": the weights moved: the rest of the step is completed, so it counts exactly once
    #   "counted", "saving": the step is complete
    phase = "counted"
    step_start_rng = (gen.get_state(), torch.get_rng_state())
    start = time.perf_counter() - history.wall_time
    pending = {}

    def finish_step():
        """Everything after opt.step, resumable from wherever it was cut off (phase says how far it got)."""
        nonlocal phase, step
        if phase == "stepped":
            ema_update(ema, model, ema_decay_at(step, cfg.ema_decay))
            phase = "ema"
            _hook("after_ema", step)
        if phase == "ema":
            history.loss.append(pending["loss"])
            for b, v in zip(pending["buckets"], pending["per_sample"]):
                history.bucket_sum[b] += v
                history.bucket_count[b] += 1
            step += 1
            history.wall_time = time.perf_counter() - start
            phase = "counted"

    # Data-parallel ranks never raise on Ctrl-C/SIGTERM: the signal is recorded and all ranks stop together
    # after the same step (agreed by an all-reduce), so their states stay identical and collectives never hang.
    stop_signal = _SigintDeferred(stop_only=True, signals=(signal.SIGINT, signal.SIGTERM)) if world > 1 else None
    try:
        if stop_signal is not None:
            stop_signal.__enter__()
        while step < cfg.steps and history.wall_time < budget_s:
            phase = "compute"
            # RNG states at the start of the step: an interrupted step is rolled back to here.
            step_start_rng = (gen.get_state(), torch.get_rng_state())
            idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen).to(dev)
            x0 = images_dev[idx]
            if cfg.channels_last and x0.ndim == 4:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            y = labels_dev[idx] if labels_dev is not None else None
            _hook("batch", step)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg, history.wall_time)
            with torch.autocast("cuda", dtype=amp_dtype, enabled=use_amp):
                out = diffusion_loss(net, x0, schedule, cfg.objective, cond=y,
                                     p_uncond=cfg.p_uncond if y is not None else 0.0,
                                     min_snr_gamma=cfg.min_snr_gamma, generator=gen, return_details=True,
                                     t_sampling=cfg.t_sampling, logsnr_mean=cfg.logsnr_mean, logsnr_std=cfg.logsnr_std,
                                     shard=(rank, world) if world > 1 else None)
            loss_t, per_sample, t_drawn = out.loss.detach(), out.per_sample, out.t
            if world > 1:  # the global batch's numbers, identical on every rank
                loss_t = distributed.all_reduce_mean(loss_t.float())
                per_sample, t_drawn = distributed.all_gather_cat(per_sample), distributed.all_gather_cat(t_drawn)
            loss_value = loss_t.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"the loss became {loss_value} at step {step}; the weights were not updated. "
                    f"Lower the learning rate (lr={cfg.lr}) or check the data for NaNs.")
            opt.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            pending = {"loss": loss_value, "buckets": (t_drawn.cpu() * cfg.buckets // schedule.T).tolist(),
                       "per_sample": per_sample.cpu().tolist()}
            _hook("before_opt_step", step)
            # (data-parallel ranks already defer every signal to the step boundary: no inner deferral there)
            with _SigintDeferred() if world == 1 else contextlib.nullcontext():
                phase = "update"
                scaler.step(opt)
                scaler.update()
                phase = "stepped"
                _hook("after_opt_step", step)
                finish_step()
            _hook("after_count", step - 1)  # the index of the step just completed
            bar.update(1)
            if step % 20 == 0 or step == cfg.steps:
                bar.set_postfix(loss=f"{sum(history.loss[-50:]) / len(history.loss[-50:]):.4f}")
            if ckpt is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                phase = "saving"
                save_checkpoint()
                phase = "counted"
            if stop_signal is not None:
                flag = torch.tensor([1.0 if stop_signal.pending else 0.0], device=dev)
                if distributed.all_reduce_max(flag).item() > 0:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
        _finish_interrupted(phase, finish_step, gen, torch, step_start_rng)
        save_checkpoint()
        where = f"; checkpoint saved to {ckpt}" if ckpt is not None else ""
        if progress:
            print(f"interrupted at step {step}{where}. Returning the model trained so far.")
    finally:
        if stop_signal is not None:
            stop_signal.__exit__(None, None, None)
        bar.close()
    if not interrupted:
        save_checkpoint()
        if progress and step < cfg.steps:
            print(f"stopped at step {step}: the {cfg.max_minutes:g}-minute budget is spent.")
    distributed.barrier()  # the final state is on disk before any rank moves on (e.g. to resume from it)
    model.eval()
    return TrainResult(model=model, ema=ema, history=history, step=step, interrupted=interrupted)


def _finish_interrupted(phase: str, finish_step, gen, torch_mod, step_start_rng) -> None:
    """Bring an interrupted step to a clean boundary: roll it back if nothing changed yet, else complete it."""
    import warnings

    if phase == "compute":
        gen.set_state(step_start_rng[0])
        torch_mod.set_rng_state(step_start_rng[1])
    elif phase in ("stepped", "ema"):
        global _fault_hook
        hook, _fault_hook = _fault_hook, None  # no second injected fault while completing the step
        try:
            finish_step()
        finally:
            _fault_hook = hook
    elif phase == "update":
        warnings.warn("the interruption landed inside optimizer.step() (raised by code, not Ctrl-C, which is "
                      "deferred there): the weights may be partly updated, so resuming is not exact", RuntimeWarning)
