"""Measure samplers: draw n samples with each sampler from the same noise, and report FID (with its
floor), class accuracy and wall time. Used by chapter 3 and ``benchmarks/fid_vs_nfe.py``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import metrics, sampling


@dataclass
class SamplerSpec:
    """A named sampler: ``run(model, x_T, schedule, cond, generator) -> x0``, and its model calls (NFE)."""
    name: str
    nfe: int
    run: Callable = field(repr=False)


def standard_specs(ddim_steps=(10, 20, 50, 100), dpm_steps=(10, 20), etas=(0.0, 1.0), ddpm: bool = True,
                   clip_denoised: bool = True):
    """DDPM-1000, DDIM at several step counts and η, DPM-Solver++(2M): the chapter-3 line-up.

    ``clip_denoised`` (default on, as for any model of images in [−1, 1]) clamps x̂₀ at every step.
    """
    clip = clip_denoised
    specs = []
    if ddpm:
        specs.append(SamplerSpec("DDPM-1000", 1000, lambda m, x, s, c, g: sampling.ddpm_sample(
            m, x, s, generator=g, cond=c, progress=False, clip_denoised=clip)))
    for eta in etas:
        for k in ddim_steps:
            specs.append(SamplerSpec(f"DDIM-{k} (η={eta:g})", k, lambda m, x, s, c, g, k=k, eta=eta: sampling.ddim_sample(
                m, x, s, steps=k, eta=eta, generator=g, cond=c, progress=False, clip_denoised=clip)))
    for k in dpm_steps:
        specs.append(SamplerSpec(f"DPM-Solver++(2M)-{k}", k, lambda m, x, s, c, g, k=k: sampling.dpm_solver_2m_sample(
            m, x, s, steps=k, cond=c, progress=False, clip_denoised=clip)))
    return specs


@torch.no_grad()
def compare_samplers(model, schedule, specs: list[SamplerSpec], n: int, classifier, batch_size: int = 250,
                     seed: int = 0, conditional: bool = True, progress: bool = True) -> list[dict]:
    """One row per sampler: FID vs ``n`` real test images, the floor at n, class accuracy, seconds.

    Every sampler starts from the same x_T (and, for stochastic ones, the same generator seed), so
    differences are the samplers' own.
    """
    from tqdm.auto import tqdm

    tensors = [*model.parameters(), *model.buffers()] if isinstance(model, torch.nn.Module) else []
    device = tensors[0].device if tensors else torch.device("cpu")
    ref = metrics.reference_images(n)
    floor = metrics.fid_floor(classifier, n)
    x_T = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(n) % 10
    rows = []
    for spec in tqdm(specs, desc="samplers", disable=not progress):
        g = torch.Generator().manual_seed(seed + 1)
        start = time.perf_counter()
        out = []
        for i in range(0, n, batch_size):
            cond = labels[i:i + batch_size].to(device) if conditional else None
            out.append(spec.run(model, x_T[i:i + batch_size].to(device), schedule, cond, g).float().cpu())
        xs = torch.cat(out).clamp(-1, 1)
        secs = time.perf_counter() - start
        row = {"sampler": spec.name, "nfe": spec.nfe, "fid": metrics.fid(classifier, xs, ref), "floor": floor,
               "seconds": secs, "n": n}
        if conditional:
            row["class_accuracy"] = metrics.class_accuracy(classifier, xs, labels)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'sampler':<24} {'NFE':>5} {'FID':>8} {'floor':>7} {'FID/floor':>9} {'class acc':>9} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = f"{r['class_accuracy']:.1%}" if "class_accuracy" in r else "—"
        lines.append(f"{r['sampler']:<24} {r['nfe']:>5} {r['fid']:8.2f} {r['floor']:7.2f} {r['fid'] / r['floor']:9.2f} "
                     f"{acc:>9} {r['seconds']:8.1f}")
    return "\n".join(lines)


@torch.no_grad()
def guidance_sweep(model, schedule, scales, n: int, classifier, steps: int = 20, num_classes: int = 10,
                   batch_size: int = 250, seed: int = 0, rescale: float = 0.0, progress: bool = True,
                   keep: int = 0) -> list[dict]:
    """Classifier-free guidance's trade-off, measured: one row per scale s with FID (and the floor
    at n), class accuracy, within-class diversity, the share of saturated (near-white, x > 0.95)
    pixels beside the real test images' share, and seconds. Every scale starts from the same x_T and labels (DDIM-``steps``, clipped x̂₀).
    With ``keep`` > 0 each row also holds its first ``keep`` samples under "samples".
    """
    from tqdm.auto import tqdm

    from . import guidance

    device = next(model.parameters()).device
    ref = metrics.reference_images(n)
    floor = metrics.fid_floor(classifier, n)
    saturated_real = float((ref > 0.95).float().mean())
    x_T = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(n) % num_classes
    rows = []
    for s in tqdm(list(scales), desc="guidance scales", disable=not progress):
        start = time.perf_counter()
        out = []
        for i in range(0, n, batch_size):
            y = labels[i:i + batch_size].to(device)
            guided = guidance.classifier_free(model, y, float(s), rescale=rescale)
            out.append(sampling.ddim_sample(guided, x_T[i:i + batch_size].to(device), schedule, steps=steps,
                                            progress=False, clip_denoised=True).float().cpu())
        xs = torch.cat(out).clamp(-1, 1)
        secs = time.perf_counter() - start
        per_class = [metrics.diversity(classifier, xs[labels == c]) for c in range(num_classes)
                     if int((labels == c).sum()) >= 2]
        row = {"scale": float(s), "rescale": rescale, "fid": metrics.fid(classifier, xs, ref), "floor": floor,
               "class_accuracy": metrics.class_accuracy(classifier, xs, labels),
               "diversity": sum(per_class) / len(per_class) if per_class else float("nan"), "saturated": float((xs > 0.95).float().mean()),
               "saturated_real": saturated_real,
               "seconds": secs, "n": n, "steps": steps}
        if keep:
            row["samples"] = xs[:keep]
        rows.append(row)
    return rows


def format_guidance_table(rows: list[dict]) -> str:
    head = (f"{'scale s':>7} {'rescale':>7} {'FID':>7} {'floor':>6} {'class acc':>9} {'diversity':>9} "
            f"{'saturated':>9} {'seconds':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['scale']:7.2g} {r['rescale']:7.2g} {r['fid']:7.2f} {r['floor']:6.2f} "
                     f"{r['class_accuracy']:9.1%} {r['diversity']:9.3f} {r['saturated']:9.1%} {r['seconds']:7.1f}")
    return "\n".join(lines)
