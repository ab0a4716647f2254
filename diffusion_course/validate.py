"""Small shared validators: each rule about bad input is decided once, here, and reused.

Every check raises a ``ValueError`` / ``TypeError`` that names the argument and what is accepted, so a
mistake surfaces where it was made and not as NaN ten cells later or as a shape error deep inside torch.
They are cheap: one ``isfinite`` reduction per tensor, no per-element Python loops.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = [
    "NonFiniteError", "finite", "float_tensor", "integer", "positive_int", "non_negative_int", "real",
    "probability", "seed",
]


class NonFiniteError(FloatingPointError, ValueError):
    """A tensor holds NaN or ±inf where only finite numbers make sense.

    A ``ValueError`` (bad input) and a ``FloatingPointError`` (numerics went wrong) at once, so either
    ``except`` catches it.
    """


def finite(name: str, x: torch.Tensor, where: str = "") -> torch.Tensor:
    """``x`` unchanged if every value is finite; else a :class:`NonFiniteError` naming ``name`` (and ``where``)."""
    if x.is_floating_point() or x.is_complex():
        ok = torch.isfinite(x)
        if not bool(ok.all()):
            n_bad = int((~ok).sum())
            kinds = [k for k, m in (("NaN", torch.isnan(x)), ("inf", torch.isinf(x))) if bool(m.any())]
            raise NonFiniteError(f"{name} contains {' and '.join(kinds)} ({n_bad} of {x.numel()} values)"
                                 + (f" {where}" if where else ""))
    return x


def float_tensor(name: str, x: object, *, min_ndim: int = 0, check_finite: bool = True) -> torch.Tensor:
    """A floating-point ``torch.Tensor`` (images are float in [−1, 1]); uint8/int images get a hint how to convert."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        hint = (" (uint8 pixels? convert with x.float() / 127.5 - 1 to get [-1, 1])" if x.dtype == torch.uint8
                else " (convert with .float())")
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}{hint}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions (B, ...), got shape {tuple(x.shape)}")
    if check_finite:
        finite(name, x)
    return x


def integer(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """A Python/NumPy integer (not a bool, not a float like 10.0) with ``low <= value <= high``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "" if low is None else f"{low} <= "
        hi = "" if high is None else f" <= {high}"
        raise ValueError(f"{name} must satisfy {lo}{name}{hi}, got {value}")
    return value


def positive_int(name: str, value: object) -> int:
    """An int >= 1 (0 and negatives are errors — never "0 means the default")."""
    return integer(name, value, low=1)


def non_negative_int(name: str, value: object) -> int:
    return integer(name, value, low=0)


def real(name: str, value: object, *, low: float | None = None, high: float | None = None, low_open: bool = False,
         high_open: bool = False, allow_inf: bool = False) -> float:
    """A finite real number (not a bool, str or complex) in the given range; returned as float."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "complex" if isinstance(value, numbers.Complex) else type(value).__name__
        raise TypeError(f"{name} must be a real number, got {kind} {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value}")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
        hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
        raise ValueError(f"{name} must satisfy {lo}{name}{hi}, got {value}")
    return value


def probability(name: str, value: object) -> float:
    """A number in [0, 1]."""
    return real(name, value, low=0.0, high=1.0)


def seed(name: str, value: object) -> int:
    """A seed torch accepts: an int in [0, 2**64)."""
    return integer(name, value, low=0, high=2**64 - 1)
