"""Classifier-free guidance (Ho & Salimans 2022): steer a conditional model without a classifier.

One network trained with condition dropout models both p(x|y) and p(x). By Bayes' rule
∇log p(y|x_t) = ∇log p(x_t|y) − ∇log p(x_t), and since ε̂ = −√(1−ᾱ_t)·score,

    ε̃ = ε_u + s·(ε_c − ε_u)          (s = guidance scale)

follows the score of p(x_t|y)·p(y|x_t)^(s−1) at every t — approximately sampling from the data
distribution tilted by an implicit classifier raised to the power s − 1 (approximately, because the
tilted distributions at different t are not one diffusion's marginals).

Conventions in the literature (same thing, different numbers):
* **s** (this module; diffusers' ``guidance_scale``, Stable Diffusion's "CFG scale 7.5" and Imagen's
  w give the same numbers for s > 1): s = 0 is unconditional, s = 1 plain conditional, s > 1 guided.
  (diffusers' pipelines switch guidance off for ``guidance_scale <= 1`` and run the conditional model.)
* **w** (Ho & Salimans 2022, Eq. 6: ε̃ = (1+w)·ε_c − w·ε_u): w = s − 1, so w = 0 is plain
  conditional and "w = 3" in the paper is s = 4 here.
* Dhariwal & Nichol's *classifier* guidance scale multiplies ∇log p(y|x_t): on top of a conditional
  model it matches s − 1, on top of an unconditional one it matches s.

Extras: ``rescale`` (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
Eqs. 15–16) pulls the guided prediction's per-sample std back to the conditional one's, which tames
over-saturation at large s; ``interval`` applies guidance only for t inside a range (Kynkäänniemi et
al. 2024, "Applying Guidance in a Limited Interval"), plain conditional elsewhere.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from . import validate


def null_condition(model: Callable[..., torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
    """The "no condition" input matching ``cond``: the null label for class models
    (index ``num_classes``), the empty caption for text models (``model.null_cond``)."""
    if hasattr(model, "null_cond"):
        return model.null_cond(cond)
    num_classes = getattr(model, "num_classes", 0)
    if not num_classes:
        raise ValueError("the model has no null condition: it needs `num_classes` > 0 (class labels, index "
                         "num_classes = null) or a `null_cond(cond)` method; pass null_cond= explicitly")
    return torch.full_like(cond, num_classes)


class ClassifierFreeGuidance:
    """A model wrapper ``m(x, t) -> prediction`` with the condition bound and guidance applied.

    Unconditional and conditional passes run as **one** forward call on a doubled batch. It keeps
    the wrapped model's ``objective``, so every sampler of chapter 3 accepts it; guidance is applied
    to the model's raw output (ε, x₀ or v — the combination is linear, so it is the same guidance).
    """

    def __init__(self, model: Callable[..., torch.Tensor], cond: torch.Tensor, scale: float,
                 null_cond: torch.Tensor | None = None, rescale: float = 0.0, interval: tuple[int, int] | None = None):
        if not isinstance(cond, torch.Tensor) or cond.ndim < 1:
            raise ValueError("cond must be a tensor with a batch dimension (labels (B,) or token ids (B, L))")
        scale = validate.real("scale", scale)  # finite: s = inf or NaN would turn every sample into NaN
        rescale = validate.probability("rescale", rescale)
        if interval is not None:
            if not isinstance(interval, (tuple, list)) or len(interval) != 2:
                raise ValueError(f"interval must be (t_low, t_high) with t_low <= t_high, got {interval!r}")
            interval = (validate.integer("interval[0]", interval[0]), validate.integer("interval[1]", interval[1]))
            if interval[0] > interval[1]:
                raise ValueError(f"interval must be (t_low, t_high) with t_low <= t_high, got {interval}")
        if null_cond is not None and not isinstance(null_cond, torch.Tensor):
            raise TypeError(f"null_cond must be a tensor like cond, got {type(null_cond).__name__}")
        self.model, self.cond, self.scale = model, cond, float(scale)
        self.null = null_condition(model, cond) if null_cond is None else null_cond.expand_as(cond)
        self.rescale, self.interval = rescale, interval
        self.objective = getattr(model, "objective", "eps")

    def parameters(self) -> Iterator[torch.nn.Parameter]:  # so helpers that look up a model's device find it
        return self.model.parameters() if hasattr(self.model, "parameters") else iter(())

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is not None:
            raise ValueError("the condition is bound when the guided model is built; call it as m(x, t)")
        B = x.shape[0]
        if self.cond.shape[0] != B:
            raise ValueError(f"cond has batch size {self.cond.shape[0]} but x has {B}")
        cond, null = self.cond.to(x.device), self.null.to(x.device)
        # plain conditional: one pass suffices. At s = 1, ε_u + 1·(ε_c − ε_u) = ε_c whatever ε_u is, so a negative
        # prompt or a guidance interval has nothing to change
        if self.scale == 1.0 and not self.rescale:
            return self.model(x, t, cond)
        if self.scale == 0.0 and self.interval is None and not self.rescale:   # unconditional
            return self.model(x, t, null)
        out_u, out_c = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([null, cond])).chunk(2)
        scale = torch.full((B,), self.scale, device=x.device, dtype=out_c.dtype)
        if self.interval is not None:
            inside = (t >= self.interval[0]) & (t <= self.interval[1])
            scale = torch.where(inside, scale, torch.ones_like(scale))
        scale = scale.reshape((B,) + (1,) * (x.ndim - 1))
        guided = out_u + scale * (out_c - out_u)
        if self.rescale:
            dims = tuple(range(1, x.ndim))
            ratio = out_c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
            guided = self.rescale * guided * ratio + (1 - self.rescale) * guided
        return guided


def classifier_free(model: Callable[..., torch.Tensor], cond: torch.Tensor, scale: float,
                    null_cond: torch.Tensor | None = None, rescale: float = 0.0,
                    interval: tuple[int, int] | None = None) -> ClassifierFreeGuidance:
    """Guided model ``m(x, t)`` returning ε_u + s·(ε_c − ε_u), both passes batched into one call.

    Args:
        model: a conditional denoiser ``model(x, t, cond)`` trained with condition dropout.
        cond: labels (B,) or token ids (B, L), one per sample.
        scale: s; 0 = unconditional, 1 = conditional, > 1 guided (see the module docstring for w = s − 1).
        null_cond: the unconditional input; default: the model's null label / empty caption.
        rescale: φ of guidance rescale (0 = off; Lin et al. suggest 0.7).
        interval: (t_low, t_high): guide only for t in this range; plain conditional outside.

    Example::

        guided = classifier_free(model, labels, scale=3.0)
        x0 = sampling.ddim_sample(guided, x_T, schedule, steps=50, clip_denoised=True)
    """
    return ClassifierFreeGuidance(model, cond, scale, null_cond, rescale, interval)


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """The bare combination ε_u + s·(ε_c − ε_u) (what the chapter's exercise asks you to write)."""
    scale = validate.real("scale", scale)
    if eps_uncond.shape != eps_cond.shape:
        raise ValueError(f"eps_uncond has shape {tuple(eps_uncond.shape)} but eps_cond has {tuple(eps_cond.shape)}")
    return eps_uncond + scale * (eps_cond - eps_uncond)
