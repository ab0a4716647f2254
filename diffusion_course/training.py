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
from typing import Callable, Iterable, Protocol

import torch
from torch import nn

from . import checkpoints, distributed, validate
from .config import get_device
from .losses import OBJECTIVES, T_SAMPLINGS, diffusion_loss, draw_timesteps
from .schedules import NoiseSchedule


class TrainingSettings(Protocol):
    """What the skeleton reads from any of the course's training configs (a dataclass: ``TrainConfig``,
    ``flow.FlowTrainConfig``, ``consistency.DistillConfig``, ``latent.AutoencoderConfig``); the optional fields
    (``lr_decay``, ``lr_cycle_ends``, ``restart_lr_scale``, ``max_minutes``, ``grad_clip``) default when absent."""
    steps: int
    lr: float
    warmup: int
    seed: int
    checkpoint_every: int


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
    # How training timesteps are drawn (losses.draw_timesteps): "uniform" is DDPM's Algorithm 1;
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
    # one entry per run of the loop (a resume starts another): steps, seconds, threads, device — a run's cost
    segments: list[dict] = field(default_factory=list)

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


def lr_at(step: int, cfg: TrainingSettings, elapsed_seconds: float = 0.0) -> float:
    """The learning rate at ``step`` — the course's one schedule, used by every training loop: linear warm-up,
    then constant or cosine decay to 10 % of the peak (per cycle, with warm restarts at ``lr_cycle_ends``).
    With ``cfg.max_minutes`` the decay follows whichever is further along: the steps or the wall-clock budget
    (``elapsed_seconds`` of it spent). ``cfg`` is any config with ``lr``, ``warmup`` and ``steps``; the other
    fields (``lr_decay``, ``lr_cycle_ends``, ``restart_lr_scale``, ``max_minutes``) default to one cosine cycle."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if getattr(cfg, "lr_decay", "cosine") == "constant":
        return cfg.lr
    cycle_ends = tuple(getattr(cfg, "lr_cycle_ends", ()))
    starts = [cfg.warmup, *cycle_ends]
    ends = [*cycle_ends, cfg.steps]
    cycle = sum(step >= e for e in cycle_ends)
    peak = cfg.lr * getattr(cfg, "restart_lr_scale", 1.0) ** min(cycle, 1)
    progress = (step - starts[cycle]) / max(1, ends[cycle] - starts[cycle])
    max_minutes = getattr(cfg, "max_minutes", None)
    if max_minutes is not None:
        progress = max(progress, elapsed_seconds / (60 * max_minutes))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# --------------------------------------------------------------------------- the one training skeleton
# Fields that may change between a run and its resumption: where and how often it saves, speed paths, the budget.
RESUME_FREE = {"checkpoint_path", "checkpoint_every", "amp", "compile", "channels_last", "max_minutes"}
# Fields that shape the learning-rate schedule beyond the steps already trained: they may change on resumption
# exactly when the learning rate of every trained step stays the same.
_SCHEDULE_SHAPE = ("steps", "lr_cycle_ends", "restart_lr_scale")


def _norm(v):
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def config_differences(saved: dict, cfg: TrainingSettings, saved_step: int) -> list[str]:
    """What makes a saved run and ``cfg`` (any of the course's training configs) different recipes — empty when
    resuming continues the same run. The one resume check of every loop.

    ``steps``, ``lr_cycle_ends`` and ``restart_lr_scale`` may change when the learning rate of every step already
    trained stays the same (e.g. a one-cycle recipe extended by a warm-restart cycle); the fields in
    :data:`RESUME_FREE` may change freely; every other field must be equal.
    """
    kind = type(cfg)
    defaults = asdict(kind())
    now = asdict(cfg)
    out = []
    for key, value in now.items():
        if key in RESUME_FREE or key in _SCHEDULE_SHAPE:
            continue
        before = saved.get(key, defaults[key])
        if _norm(before) != _norm(value):
            out.append(f"{key} (saved {before!r}, now {value!r})")
    shape = [key for key in _SCHEDULE_SHAPE if key in now]
    if any(_norm(saved.get(key, defaults[key])) != _norm(now[key]) for key in shape):
        try:
            old = kind(**{k: v for k, v in saved.items() if k in defaults})
            same_lr = all(lr_at(s, old) == lr_at(s, cfg) for s in range(min(saved_step, cfg.steps)))
        except (TypeError, ValueError):
            same_lr = False
        if not same_lr:
            for key in shape:
                if _norm(saved.get(key, defaults[key])) != _norm(now[key]):
                    out.append(f"{key} (saved {saved.get(key, defaults[key])!r}, now {now[key]!r}: the learning "
                               f"rate of the {saved_step} steps already trained would differ; to train longer, "
                               f"extend the recipe with lr_cycle_ends=({saved_step},))")
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


@dataclass
class StepOutput:
    """What one step's computation hands the skeleton: the loss to backpropagate, its value for the history (e.g.
    averaged over data-parallel ranks) and anything the loop records after the update (``record``)."""
    loss: torch.Tensor
    value: float
    record: dict = field(default_factory=dict)


class Loop:
    """The one training skeleton every loop of the course runs on (the diffusion trainer, consistency distillation,
    progressive distillation's rounds, the autoencoder, flow matching).

    It owns what every loop shares: the seeded generator that draws all of a step's randomness, the learning rate
    (:func:`lr_at`), gradient clipping, the progress bar, the wall-clock budget, checkpoints of the whole state
    (``modules``, optimiser, generator, RNG, step, history, config) and resuming from them (:func:`config_differences`),
    and one interrupt contract: a Ctrl-C leaves the last consistent state — a step that had not updated the weights
    is rolled back (its random draws too), one that had is completed — saves it, and :meth:`run` returns
    ``interrupted=True``; running again resumes bit-exactly. The loop supplies ``compute(step) -> StepOutput`` (draw
    a batch from ``loop.gen``, return the loss) and ``after_update(out)`` (EMA, target network, history extras).
    """

    def __init__(self, cfg: TrainingSettings, modules: dict[str, nn.Module | None], opt: torch.optim.Optimizer,
                 history: object, *, params: Iterable[nn.Parameter] | None = None, desc: str = "training",
                 progress: bool = True, scaler: torch.amp.GradScaler | None = None,
                 extra_state: dict | None = None, main: bool = True, defer_sigint: bool = True):
        self.cfg, self.modules, self.opt, self.history = cfg, modules, opt, history
        self.params = list(params) if params is not None else [p for g in opt.param_groups for p in g["params"]]
        self.desc, self.progress, self.main, self.defer_sigint = desc, progress and main, main, defer_sigint
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler("cuda", enabled=False)
        self.extra_state = extra_state or {}
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        path = getattr(cfg, "checkpoint_path", None)
        self.ckpt = Path(path) if path else None

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        state = {name: m.state_dict() if m is not None else None for name, m in self.modules.items()}
        state.update({"optimizer": self.opt.state_dict(), "generator": self.gen.get_state(),
                      "torch_rng": torch.get_rng_state(), "step": self.step, "history": asdict(self.history),
                      "config": asdict(self.cfg), **self.extra_state})
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return state

    def save(self) -> None:
        if self.ckpt is not None and self.main:
            checkpoints.save(self.state(), self.ckpt)

    def resume(self, device: torch.device | str, resume: bool | str = True,
               check: Callable[[dict], None] | None = None) -> bool:
        """Continue from ``cfg.checkpoint_path`` if it exists (``resume=False`` starts over; ``"force"`` resumes
        despite configuration differences). ``check(state)`` may refuse a state for a loop's own reasons (e.g. a
        different teacher). Returns whether it resumed."""
        if resume not in (True, False, "force"):
            raise ValueError(f"resume must be True, False or 'force', got {resume!r}")
        if not (resume and self.ckpt is not None and self.ckpt.exists()):
            torch.manual_seed(self.cfg.seed)  # dropout, if any, is reproducible too
            return False
        state = checkpoints.load(self.ckpt, map_location=device, verify=False)
        saved_step = int(state["step"])
        if saved_step > self.cfg.steps:
            raise ValueError(f"{self.ckpt} holds a run already at step {saved_step}, but steps={self.cfg.steps} was "
                             f"asked for: training cannot be undone. Ask for steps >= {saved_step}, or start over "
                             "(resume=False, or delete the file).")
        differences = config_differences(state.get("config", {}), self.cfg, saved_step)
        if differences and resume != "force":
            raise ValueError(f"{self.ckpt} was saved by a different training configuration: " + "; ".join(differences)
                             + ". Resuming would mix two recipes. Start over (resume=False, or delete the file; "
                               "CLI: --fresh), write elsewhere, or pass resume='force' to continue anyway.")
        if differences and self.progress:
            print("resuming despite differences (resume='force'): " + "; ".join(differences))
        if check is not None:
            check(state)
        for name, module in self.modules.items():
            if module is not None and state.get(name) is not None:
                module.load_state_dict(state[name])
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"].cpu())
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step = saved_step
        self.history = type(self.history)(**state["history"])
        if self.progress:
            print(f"resumed from {self.ckpt} at step {self.step}")
        return True

    # ------------------------------------------------------------------ the loop
    def run(self, compute: Callable[[int], StepOutput], after_update: Callable[[StepOutput], None] | None = None,
            until: int | None = None, should_stop: Callable[[], bool] | None = None) -> bool:
        """Train from ``self.step`` to ``cfg.steps`` (or ``until``, or the end of the wall-clock budget); returns
        whether a Ctrl-C (or ``should_stop()`` after a step) interrupted it. The state is saved every
        ``cfg.checkpoint_every`` steps, on interruption and at the end."""
        from tqdm.auto import tqdm

        cfg, history = self.cfg, self.history
        max_minutes = getattr(cfg, "max_minutes", None)
        budget_s = 60 * max_minutes if max_minutes is not None else math.inf
        last = cfg.steps if until is None else min(cfg.steps, until)
        bar = tqdm(total=cfg.steps if budget_s == math.inf else None, initial=self.step, disable=not self.progress,
                   desc=self.desc if max_minutes is None else f"{self.desc} ({max_minutes:g} min budget)",
                   mininterval=0.5)
        segments = getattr(history, "segments", None)
        if segments is not None:
            segments.append({"from_step": self.step, "to_step": self.step, "seconds": 0.0,
                             "threads": torch.get_num_threads(), "device": str(next(iter(self.params)).device)})
        t_segment = time.perf_counter()
        start = time.perf_counter() - history.wall_time
        # The phase of the current step decides what an interruption means:
        #   "compute" (batch, forward, backward): nothing changed yet: the step is rolled back (its RNG draws too);
        #   "update" (inside opt.step): a real Ctrl-C cannot land here (it is deferred to the end of the update);
        #   "stepped", "updated": the weights moved: the rest of the step is completed, so it counts exactly once;
        #   "counted": the step is complete.
        phase, out, rng = "counted", None, None

        def finish_step():
            nonlocal phase
            if phase == "stepped":
                if after_update is not None:
                    after_update(out)
                phase = "updated"
                _hook("after_ema", self.step)
            if phase == "updated":
                history.loss.append(out.value)
                self.step += 1
                history.wall_time = time.perf_counter() - start
                if segments is not None:
                    segments[-1].update(to_step=self.step, seconds=time.perf_counter() - t_segment)
                phase = "counted"

        interrupted = False
        try:
            while self.step < last and history.wall_time < budget_s:
                phase = "compute"
                rng = (self.gen.get_state(), torch.get_rng_state())
                for group in self.opt.param_groups:
                    group["lr"] = lr_at(self.step, cfg, history.wall_time)
                out = compute(self.step)
                if not math.isfinite(out.value):
                    self._rollback(rng)
                    raise FloatingPointError(f"the loss became {out.value} at step {self.step}; the weights were not "
                                             f"updated. Lower the learning rate (lr={cfg.lr}) or check the data for NaNs.")
                self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(out.loss).backward()
                if getattr(cfg, "grad_clip", None):
                    self.scaler.unscale_(self.opt)
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                _hook("before_opt_step", self.step)
                with _SigintDeferred() if self.defer_sigint else contextlib.nullcontext():
                    phase = "update"
                    self.scaler.step(self.opt)
                    self.scaler.update()
                    phase = "stepped"
                    _hook("after_opt_step", self.step)
                    finish_step()
                _hook("after_count", self.step - 1)  # the index of the step just completed
                bar.update(1)
                if self.step % 20 == 0 or self.step == cfg.steps:
                    bar.set_postfix(loss=f"{sum(history.loss[-50:]) / len(history.loss[-50:]):.4g}")
                if self.ckpt is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
                if should_stop is not None and should_stop():
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            interrupted = True
            self._finish_interrupted(phase, finish_step, rng)
            self.save()
            if self.progress:
                where = (f"; the state is saved in {self.ckpt}: run the same call again to resume"
                         if self.ckpt is not None else " (no checkpoint_path: nothing saved)")
                print(f"interrupted at step {self.step}{where}. Returning the model trained so far.")
        finally:
            bar.close()
        if not interrupted:
            self.save()
            if self.progress and self.step < last:
                print(f"stopped at step {self.step}: the {max_minutes:g}-minute budget is spent.")
        return interrupted

    def _rollback(self, rng) -> None:
        self.gen.set_state(rng[0])
        torch.set_rng_state(rng[1])

    def _finish_interrupted(self, phase: str, finish_step, rng) -> None:
        """Bring an interrupted step to a clean boundary: roll it back if nothing changed yet, else complete it."""
        import warnings

        if phase == "compute":
            self._rollback(rng)
        elif phase in ("stepped", "updated"):
            global _fault_hook
            hook, _fault_hook = _fault_hook, None  # no second injected fault while completing the step
            try:
                finish_step()
            finally:
                _fault_hook = hook
        elif phase == "update":
            warnings.warn("the interruption landed inside optimizer.step() (raised by code, not Ctrl-C, which is "
                          "deferred there): the weights may be partly updated, so resuming is not exact",
                          RuntimeWarning)


def train(model: nn.Module, schedule: NoiseSchedule, images: torch.Tensor, labels: torch.Tensor | None = None,
          config: TrainConfig | None = None, resume: bool | str = True, progress: bool = True,
          device: torch.device | str | None = None) -> TrainResult:
    """Train ``model`` with the diffusion loss (DDPM's Algorithm 1 and its options) on an in-memory dataset.

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
    cfg = config or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(cfg).__name__}")
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
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({world})")
    cuda = dev.type == "cuda"
    model = model.to(dev)
    if cfg.channels_last and images.ndim == 4:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and cuda
    # bf16 needs compute capability 8 (A100, H100, RTX 30xx+); Colab's T4 gets fp16 with loss scaling.
    amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported(including_emulation=False)) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    history = History(bucket_sum=[0.0] * cfg.buckets, bucket_count=[0] * cfg.buckets)
    loop = Loop(cfg, {"model": model, "ema": ema}, opt, history, params=model.parameters(), desc="training",
                progress=progress, scaler=scaler, main=rank == 0, defer_sigint=world == 1)
    distributed.barrier()  # data-parallel: no rank looks for the state file while rank 0 may still write it
    loop.resume(dev, resume)
    net = distributed.wrap(model, dev)  # after loading: DDP starts from rank 0's (identical) weights
    if cfg.compile and cuda:
        net = torch.compile(net) if world == 1 else distributed._Wrapped(torch.compile(net._ddp), model)
    images_dev = images.to(dev)
    labels_dev = labels.to(dev) if labels is not None else None
    model.train()

    def compute(step: int) -> StepOutput:
        gen = loop.gen
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen).to(dev)
        x0 = images_dev[idx]
        if cfg.channels_last and x0.ndim == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        y = labels_dev[idx] if labels_dev is not None else None
        _hook("batch", step)
        # every rank draws the whole global batch's t and ε from the same generator, then keeps its slice
        t = draw_timesteps(cfg.batch_size, schedule, cfg.t_sampling, cfg.logsnr_mean, cfg.logsnr_std, gen)
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32)
        drop = torch.rand(cfg.batch_size, generator=gen) < (cfg.p_uncond if y is not None else 0.0)
        if world > 1:
            part = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
            x0, t, noise, drop = x0[part], t[part], noise[part], drop[part]
            y = y[part] if y is not None else None
        with torch.autocast("cuda", dtype=amp_dtype, enabled=use_amp):
            out = diffusion_loss(net, x0, schedule, cfg.objective, cond=y, min_snr_gamma=cfg.min_snr_gamma,
                                 p_uncond=cfg.p_uncond if y is not None else 0.0, t=t.to(dev),
                                 noise=noise.to(dev, x0.dtype), drop=drop.to(dev), return_details=True)
        loss_t, per_sample, t_drawn = out.loss.detach(), out.per_sample, out.t
        if world > 1:  # the global batch's numbers, identical on every rank
            loss_t = distributed.all_reduce_mean(loss_t.float())
            per_sample, t_drawn = distributed.all_gather_cat(per_sample), distributed.all_gather_cat(t_drawn)
        return StepOutput(out.loss, loss_t.item(), {"buckets": (t_drawn.cpu() * cfg.buckets // schedule.T).tolist(),
                                                    "per_sample": per_sample.cpu().tolist()})

    def after_update(out: StepOutput) -> None:
        ema_update(ema, model, ema_decay_at(loop.step, cfg.ema_decay))
        for b, v in zip(out.record["buckets"], out.record["per_sample"]):
            loop.history.bucket_sum[b] += v
            loop.history.bucket_count[b] += 1

    # Data-parallel ranks never raise on Ctrl-C/SIGTERM: the signal is recorded and all ranks stop together
    # after the same step (agreed by an all-reduce), so their states stay identical and collectives never hang.
    stop_signal = _SigintDeferred(stop_only=True, signals=(signal.SIGINT, signal.SIGTERM)) if world > 1 else None

    def should_stop() -> bool:
        flag = torch.tensor([1.0 if stop_signal.pending else 0.0], device=dev)
        return distributed.all_reduce_max(flag).item() > 0

    try:
        if stop_signal is not None:
            stop_signal.__enter__()
        interrupted = loop.run(compute, after_update, should_stop=should_stop if stop_signal is not None else None)
    finally:
        if stop_signal is not None:
            stop_signal.__exit__(None, None, None)
    distributed.barrier()  # the final state is on disk before any rank moves on (e.g. to resume from it)
    model.eval()
    return TrainResult(model=model, ema=ema, history=loop.history, step=loop.step, interrupted=interrupted)
