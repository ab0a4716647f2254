"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models"):
halve a DDIM sampler's steps per round. A student starts as a copy of its teacher and learns to make one DDIM step
land where two of the teacher's land (Alg. 2); it becomes the next round's teacher, until one or two steps remain.

The students are x₀-predicting :class:`~diffusion_course.consistency.Denoiser` s (without the boundary condition a
consistency model adds), warm-started from an ε-teacher, and sampled with ``sampling.ddim_sample``.
"""
from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from . import forward, sampling, training
from .consistency import (Denoiser, DistillConfig, DistillHistory, Model, Timesteps, _check_schedule, check_data,
                          drop_labels, teacher_step)
from .schedules import NoiseSchedule

__all__ = ["progressive_target", "progressive_loss", "progressive_distillation"]


def progressive_target(x_t: torch.Tensor, x_tpp: torch.Tensor, t: Timesteps, t_pp: Timesteps,
                       schedule: NoiseSchedule) -> torch.Tensor:
    """The x₀ that makes one DDIM step t → t'' land on x_{t''} (Salimans & Ho 2022, Alg. 2):

        x̃ = (x_{t''} − (σ_{t''}/σ_t)·x_t) / (α_{t''} − (σ_{t''}/σ_t)·α_t),   α = √ᾱ, σ = √(1−ᾱ);
    at the clean end (t'' = −1: α = 1, σ = 0) it is x_{t''} itself.
    """
    t, t_pp = sampling._as_t(t, x_t), sampling._as_t(t_pp, x_t)
    ab, ab_pp = sampling._alpha_bars(schedule, t, t_pp, x_t)
    ratio = (1 - ab_pp).sqrt() / (1 - ab).sqrt()
    return (x_tpp - ratio * x_t) / (ab_pp.sqrt() - ratio * ab.sqrt())


def progressive_loss(student: Model, teacher: Model, x0: torch.Tensor, schedule: NoiseSchedule, student_steps: int,
                     cond: torch.Tensor | None = None, clip_denoised: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """One progressive-distillation loss: the student's single DDIM step must match two of the teacher's.

    Student steps are ``sampling.timesteps(T, K, "trailing")``; the teacher's 2K-step list interleaves them
    (trailing lists nest: every other entry of the 2K list is the K list). Weighted by the truncated SNR
    max(SNR_t, 1) on the x₀ error (Salimans & Ho 2022, Sec. 4) — v-prediction's weighting, bounded at t = T−1.
    """
    T = schedule.T
    ts_s = sampling.timesteps(T, student_steps, "trailing")
    ts_t = sampling.timesteps(T, 2 * student_steps, "trailing")
    if not torch.equal(ts_t[::2], ts_s):
        raise ValueError(f"the trailing {2 * student_steps}-step list does not contain the {student_steps}-step one")
    B = x0.shape[0]
    j = torch.randint(0, student_steps, (B,), generator=generator)
    t = ts_s[j].to(x0.device)
    t_mid = ts_t[2 * j + 1].to(x0.device)
    t_next = torch.cat([ts_s[1:], ts_s.new_full((1,), -1)])[j].to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
    x_t = forward.q_sample(x0, t, schedule, noise)
    with torch.no_grad():
        x_mid = teacher_step(teacher, x_t, t, t_mid, schedule, cond, clip_denoised)
        x_next = teacher_step(teacher, x_mid, t_mid, t_next, schedule, cond, clip_denoised)
        target = progressive_target(x_t, x_next, t, t_next, schedule)
    _, x0_hat = sampling.predict_eps_x0(student, x_t, t, schedule, cond)
    snr = schedule.snr.to(x0.device)[t].to(x0.dtype)
    weight = snr.clamp(min=1.0)
    return (weight * (x0_hat - target).pow(2).flatten(1).mean(1)).mean()


def progressive_distillation(teacher: Model, schedule: NoiseSchedule, images: torch.Tensor,
                             labels: torch.Tensor | None = None, start_steps: int = 8, end_steps: int = 1,
                             config: DistillConfig | None = None, student: nn.Module | None = None,
                             progress: bool = True, device: torch.device | str | None = None) -> list[dict]:
    """Progressive distillation (Salimans & Ho 2022, Alg. 2): a student of ``start_steps``/2 DDIM steps learns
    to match the teacher's ``start_steps``; it becomes the teacher of the next round, until ``end_steps``.

    The first student is ``student`` (an x₀-predicting :class:`Denoiser`), else a copy of the teacher if it is a
    Denoiser, else the ε-teacher warm-started (:meth:`Denoiser.from_teacher`); each later one starts from its
    teacher. ``config.steps`` optimiser steps per round, each round on the course's training skeleton
    (:class:`~diffusion_course.training.Loop`). Returns one dict per round: ``{"steps": K, "model": student (eval),
    "loss": [...], "seconds": s}``; sample a round's student with ``sampling.ddim_sample(model, x_T, schedule, steps=K)``.
    """
    from .config import get_device

    cfg = config or DistillConfig()
    check_data(images, labels)
    for name, v in (("start_steps", start_steps), ("end_steps", end_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    rounds = math.log2(start_steps / end_steps) if start_steps > end_steps else 0
    if rounds < 1 or rounds != int(rounds):
        raise ValueError(f"start_steps must be end_steps·2^r with r >= 1 (each round halves), got {start_steps}, {end_steps}")
    _check_schedule("the teacher", getattr(teacher, "schedule", None), schedule)
    dev = torch.device(device) if device is not None else get_device()
    if student is None:   # PD's students start from their teacher
        student = (copy.deepcopy(teacher) if isinstance(teacher, Denoiser) else
                   Denoiser.from_teacher(teacher, schedule, sigma_data=cfg.sigma_data, sigma_cap=cfg.sigma_cap))
    _check_schedule("the student", getattr(student, "schedule", None), schedule)
    if isinstance(teacher, nn.Module):
        teacher = teacher.to(dev).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed)     # one stream of randomness through all rounds
    images_dev = images.to(dev)
    labels_dev = labels.to(dev) if labels is not None else None
    out, k = [], start_steps // 2
    while k >= end_steps:
        student = student.to(dev).train().requires_grad_(True)
        opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
        loop = training.Loop(cfg, {"student": student}, opt, DistillHistory(), progress=progress,
                             desc=f"progressive distillation {2 * k} → {k} steps")
        loop.gen, loop.ckpt = gen, None     # rounds share the stream; a round is short and not checkpointed

        def compute(step: int, k=k, student=student, teacher=teacher) -> training.StepOutput:
            idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen).to(dev)
            y = drop_labels(labels_dev[idx] if labels_dev is not None else None, cfg.p_uncond,
                            getattr(student, "num_classes", 0), gen)
            loss = progressive_loss(student, teacher, images_dev[idx], schedule, k, y, cfg.clip_denoised, gen)
            return training.StepOutput(loss, loss.item())

        t0 = time.perf_counter()
        interrupted = loop.run(compute)
        student.eval().requires_grad_(False)
        out.append({"steps": k, "model": student, "loss": loop.history.loss, "seconds": time.perf_counter() - t0,
                    "interrupted": interrupted})
        if interrupted:   # Ctrl-C: return the rounds so far, the last one marked
            break
        teacher, student = student, copy.deepcopy(student)
        k //= 2
    return out
