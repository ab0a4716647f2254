"""Run-time configuration: which device, quick mode, per-device budgets, seeding.

Quick mode (``DIFFUSION_COURSE_QUICK=1``) shrinks every training and sampling budget so the
whole course executes in minutes on two CPU cores; the test suite turns it on for nbval.
"""
from __future__ import annotations

import os
import random
import re
from typing import TypeVar

import numpy as np
import torch

from . import validate

T_ = TypeVar("T_")

_DEVICE_ENV = "DIFFUSION_COURSE_DEVICE"
_QUICK_ENV = "DIFFUSION_COURSE_QUICK"


def get_device(prefer: str | None = None) -> torch.device:
    """The device to use: ``prefer``, else ``$DIFFUSION_COURSE_DEVICE``, else cuda > mps > cpu."""
    if isinstance(prefer, torch.device):
        prefer = str(prefer)
    if prefer is not None and not isinstance(prefer, str):
        raise TypeError(f"device must be a str ('cpu', 'cuda', 'cuda:N', 'mps') or torch.device, got {prefer!r}")
    choice = prefer or os.environ.get(_DEVICE_ENV)
    if choice:
        source = "device" if prefer else f"${_DEVICE_ENV}"
        choice = choice.strip().lower()
        if choice not in {"cpu", "cuda", "mps"} and not re.fullmatch(r"cuda:\d+", choice):
            raise ValueError(f"{source} must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {choice!r}")
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def is_quick() -> bool:
    """True when ``DIFFUSION_COURSE_QUICK`` is set to a truthy value (1, true, yes)."""
    return os.environ.get(_QUICK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def budget(*, quick: T_, cpu: T_, gpu: T_, device: torch.device | str | None = None) -> T_:
    """Pick a number (steps, samples, ...) for the current mode and device.

    Quick mode wins; otherwise the value for the device: ``gpu`` on cuda/mps, ``cpu`` on cpu.
    """
    if is_quick():
        return quick
    dev = torch.device(device) if device is not None else get_device()
    return cpu if dev.type == "cpu" else gpu


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU ``torch.Generator`` seeded the same way."""
    seed = validate.seed("seed", seed)  # torch accepts 0 <= seed < 2**64; a bool or 2**70 is an error here
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def describe() -> str:
    """One line for the top of every notebook: device, quick mode, torch version."""
    dev = get_device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return (f"device: {name} | quick mode: {is_quick()} | torch {torch.__version__} | "
            f"CPU threads: {torch.get_num_threads()}")
