"""Automatic checks for the exercises: run the learner's function against the package's.

    def my_q_sample(x0, t, schedule, noise): ...
    dc.exercises.check(my_q_sample, "q_sample")      # prints ✅ or what differs, returns True/False

Each check feeds both implementations the same seeded inputs (several batch sizes, timesteps at
both ends of the schedule) and compares the outputs to a tolerance.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import forward, sampling
from .schedules import NoiseSchedule


def _cases_forward(seed: int):
    g = torch.Generator().manual_seed(seed)
    for schedule in (NoiseSchedule.cosine(1000), NoiseSchedule.linear(1000)):
        for B in (1, 4):
            x0 = torch.rand(B, 1, 8, 8, generator=g) * 2 - 1
            t = torch.randint(0, 1000, (B,), generator=g)
            t[0] = 0 if B == 1 else 999
            noise = torch.randn(x0.shape, generator=g)
            yield dict(x0=x0, t=t, schedule=schedule, noise=noise)


def _cases_step(seed: int):
    g = torch.Generator().manual_seed(seed)
    s = NoiseSchedule.cosine(1000)
    for t, t_prev in ((999, 979), (500, 480), (20, -1), (1, 0)):
        x_t = torch.randn(3, 1, 8, 8, generator=g)
        eps = torch.randn(3, 1, 8, 8, generator=g)
        yield dict(x_t=x_t, eps=eps, t=torch.full((3,), t), t_prev=torch.full((3,), t_prev), schedule=s)


def _cases_cfg(seed: int):
    g = torch.Generator().manual_seed(seed)
    for scale in (0.0, 1.0, 3.0, 7.5):
        yield dict(eps_uncond=torch.randn(2, 1, 4, 4, generator=g), eps_cond=torch.randn(2, 1, 4, 4, generator=g),
                   scale=scale)


def _cfg_reference(eps_uncond, eps_cond, scale):
    from .guidance import cfg_combine

    return cfg_combine(eps_uncond, eps_cond, scale)


# name -> (reference, case generator, description of the expected signature)
CHECKS: dict[str, tuple[Callable, Callable, str]] = {
    "q_sample": (lambda x0, t, schedule, noise: forward.q_sample(x0, t, schedule, noise), _cases_forward,
                 "q_sample(x0, t, schedule, noise) -> x_t"),
    "ddim_step": (lambda x_t, eps, t, t_prev, schedule: sampling.ddim_step(x_t, eps, t, t_prev, schedule),
                  _cases_step, "ddim_step(x_t, eps, t, t_prev, schedule) -> x_prev   (eta = 0; t_prev = -1 means ᾱ = 1)"),
    "v_target": (lambda x0, t, schedule, noise: forward.v_target(x0, noise, t, schedule), _cases_forward,
                 "v_target(x0, t, schedule, noise) -> v = √ᾱ·noise − √(1−ᾱ)·x0"),
    "cfg": (_cfg_reference, _cases_cfg, "cfg(eps_uncond, eps_cond, scale) -> guided eps"),
}


def check(fn: Callable, name: str, atol: float = 1e-4, seed: int = 0, verbose: bool = True) -> bool:
    """Compare ``fn`` with the package's implementation of ``name`` on seeded inputs."""
    if name not in CHECKS:
        raise ValueError(f"unknown exercise {name!r}; available: {sorted(CHECKS)}")
    reference, cases, signature = CHECKS[name]
    for i, kwargs in enumerate(cases(seed)):
        expected = reference(**kwargs)
        try:
            got = fn(**kwargs)
        except Exception as e:  # the learner's code: report, don't crash the notebook
            if verbose:
                print(f"❌ {name}: your function raised {type(e).__name__}: {e}\n   expected signature: {signature}")
            return False
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            if verbose:
                print(f"❌ {name}: expected a tensor of shape {tuple(expected.shape)}, got "
                      f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__} (case {i})")
            return False
        err = (got.double() - expected.double()).abs().max().item()
        if not err <= atol:
            if verbose:
                where = {k: (v.tolist() if isinstance(v, torch.Tensor) and v.numel() <= 4 else
                             (v.name if isinstance(v, NoiseSchedule) else v if not isinstance(v, torch.Tensor) else
                              f"tensor{tuple(v.shape)}")) for k, v in kwargs.items()}
                print(f"❌ {name}: max abs difference {err:.3g} > {atol:g} on case {i} with inputs {where}")
            return False
    if verbose:
        print(f"✅ {name}: matches the reference on all cases")
    return True
