"""Small shared validators: each rule about bad input is decided once, here, and reused.

Every check raises a ``ValueError`` / ``TypeError`` that names the argument and what is accepted, so a
mistake surfaces where it was made and not as NaN ten cells later or as a shape error deep inside torch.
They are cheap: one ``isfinite`` reduction per tensor, no per-element Python loops.
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch

__all__ = [
    "NonFiniteError", "finite", "float_tensor", "images", "model_dtype", "integer", "positive_int", "non_negative_int",
    "real", "probability", "seed", "names",
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


def float_tensor(name: str, x: object, *, min_ndim: int = 0, check_finite: bool = True,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """A floating-point ``torch.Tensor`` (images are float in [−1, 1]); uint8/int images get a hint how to convert.
    With ``dtype`` (a model's, see :func:`model_dtype`) a float64/float16 tensor is converted to it."""
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
    return x if dtype is None else x.to(dtype)


def images(name: str, x: object, *, dtype: torch.dtype | None = None, tol: float = 1e-3) -> torch.Tensor:
    """Images as the course keeps them: a finite float tensor in [−1, 1] (± ``tol``), converted to ``dtype`` if given.

    Values outside the range are an error; a batch with no negative value at all (torchvision's ``ToTensor``
    gives [0, 1]) is warned about, since real [−1, 1] images almost always have some."""
    x = float_tensor(name, x, dtype=dtype)
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < -1 - tol or hi > 1 + tol:
            raise ValueError(f"{name} must lie in [-1, 1] (the course's image range), got values in [{lo:.4g}, "
                             f"{hi:.4g}] (8-bit pixels k map to k / 127.5 - 1, [0, 1] images to x * 2 - 1)")
        if lo >= 0 and hi > 0:
            warnings.warn(f"{name} has no negative values (range [{lo:.3g}, {hi:.3g}]): images must be in [-1, 1]; "
                          f"if these are [0, 1] images (torchvision's ToTensor), map them with x * 2 - 1",
                          stacklevel=3)
    return x


def model_dtype(model: object) -> torch.dtype | None:
    """The dtype of ``model``'s floating-point parameters (what its inputs must have), or None if it has none."""
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            if p.is_floating_point():
                return p.dtype
    return None


def names(name: str, value: object) -> list[str]:
    """A non-empty list of distinct, non-empty strings (class names for a picker)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must be a non-empty list of str, got an empty one")
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{name}[{i}] must be a non-empty str, got {v!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{name} must be distinct, got repeats: {sorted({v for v in value if value.count(v) > 1})}")
    return list(value)


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
