"""Measure samplers: draw n samples with each sampler from the same noise, and report FID (with its
floor), class accuracy and wall time. Used by chapter 3 and ``benchmarks/fid_vs_nfe.py``.

Also the two yardsticks chapter 3's verdicts rest on: :func:`paired_fid_difference` (a paired bootstrap
of the FID gap between two samplers that shared their noise) and :func:`ode_reference` (the exact
probability-flow ODE solution for a Gaussian mixture, to float64 accuracy, with its own error estimate).
"""
from __future__ import annotations

import math
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


class _CountCalls:
    """Wrap a model so that every forward call advances a progress bar (attributes pass through)."""

    def __init__(self, model, bar):
        self._model, self._bar = model, bar

    def __call__(self, *args, **kwargs):
        out = self._model(*args, **kwargs)
        self._bar.update(1)
        return out

    def __getattr__(self, name):
        return getattr(self._model, name)


@torch.no_grad()
def compare_samplers(model, schedule, specs: list[SamplerSpec], n: int, classifier, batch_size: int = 250,
                     seed: int = 0, conditional: bool = True, progress: bool = True,
                     class_balanced: bool | None = None, keep_samples: bool = False) -> list[dict]:
    """One row per sampler: FID vs ``n`` real test images, the floor at n, class accuracy, seconds.

    Every sampler starts from the same x_T (and, for stochastic ones, the same generator seed), so
    differences are the samplers' own. Conditional samples use exactly balanced labels, so by default
    (``class_balanced=None``) their reference set and floor are class-balanced too — a random real set
    carries class-mix noise the samples do not, which would put the floor above every sampler.
    With ``keep_samples`` each row also holds its images under "samples" (for paired comparisons).
    The progress bar counts model calls, so even DDPM-1000 shows it is moving.
    """
    from tqdm.auto import tqdm

    tensors = [*model.parameters(), *model.buffers()] if isinstance(model, torch.nn.Module) else []
    device = tensors[0].device if tensors else torch.device("cpu")
    balanced = conditional if class_balanced is None else class_balanced
    ref = metrics.reference_images(n, class_balanced=balanced)
    floor = metrics.fid_floor(classifier, n, class_balanced=balanced)
    x_T = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(n) % 10
    batches = -(-n // batch_size)
    bar = tqdm(total=sum(spec.nfe for spec in specs) * batches, desc="model calls", disable=not progress)
    counted = _CountCalls(model, bar)
    rows = []
    for spec in specs:
        bar.set_postfix_str(spec.name)
        g = torch.Generator().manual_seed(seed + 1)
        start = time.perf_counter()
        out = []
        for i in range(0, n, batch_size):
            cond = labels[i:i + batch_size].to(device) if conditional else None
            out.append(spec.run(counted, x_T[i:i + batch_size].to(device), schedule, cond, g).float().cpu())
        xs = torch.cat(out).clamp(-1, 1)
        secs = time.perf_counter() - start
        row = {"sampler": spec.name, "nfe": spec.nfe, "fid": metrics.fid(classifier, xs, ref), "floor": floor,
               "seconds": secs, "n": n, "class_balanced_floor": balanced}
        if conditional:
            row["class_accuracy"] = metrics.class_accuracy(classifier, xs, labels)
        if keep_samples:
            row["samples"] = xs
        rows.append(row)
    bar.close()
    return rows


@torch.no_grad()
def paired_fid_difference(classifier, samples_a: torch.Tensor, samples_b: torch.Tensor, reference: torch.Tensor,
                          n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """FID(a) − FID(b) with a paired bootstrap interval, for two sample sets drawn from the *same* noise.

    Sample i of ``a`` and of ``b`` started from the same x_T (and label), so each bootstrap replicate
    resamples the same indices in both (and, independently, the reference set): what varies together
    cancels, and the interval measures only how differently the two samplers treat the same noise
    (Efron & Tibshirani 1993, ch. 6 and 14). Features are extracted once; replicates reuse them.

    Returns {"delta", "lo", "hi", "sd", "n_boot", "level"}; the interval excludes 0 when the gap is
    larger than this n can explain by chance.
    """
    if samples_a.shape != samples_b.shape:
        raise ValueError(f"samples_a and samples_b must have the same shape (paired), got "
                         f"{tuple(samples_a.shape)} and {tuple(samples_b.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}")
    fa, fb, fr = (metrics.extract_features(classifier, x).double() for x in (samples_a, samples_b, reference))

    def gap(ia, ir):
        stats_r = metrics.feature_stats(fr[ir])
        return (metrics.frechet_distance(*metrics.feature_stats(fa[ia]), *stats_r)
                - metrics.frechet_distance(*metrics.feature_stats(fb[ia]), *stats_r))

    n, m = fa.shape[0], fr.shape[0]
    delta = gap(torch.arange(n), torch.arange(m))
    g = torch.Generator().manual_seed(seed)
    reps = torch.tensor([gap(torch.randint(0, n, (n,), generator=g), torch.randint(0, m, (m,), generator=g))
                         for _ in range(n_boot)], dtype=torch.float64)
    lo, hi = torch.quantile(reps, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return {"delta": delta, "lo": lo, "hi": hi, "sd": float(reps.std()), "n_boot": n_boot, "level": level}


@torch.no_grad()
def ode_reference(mixture, x_T: torch.Tensor, schedule, t_start: int | None = None, t_end: int = -1,
                  steps: int = 2000) -> tuple[torch.Tensor, float]:
    """The probability-flow ODE solution for Gaussian-mixture data, from ``t_start`` (default T−1) to
    ``t_end`` (−1: the clean end, ᾱ = 1), far more accurately than any sampler it is used to score.

    With α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ) and u = x/α the ODE is du/dλ = −e^{−λ} ε*(αu, λ) (the
    ε-form behind DDIM and DPM-Solver, Lu et al. 2022, Eq. 3.4), where ε* is the mixture's exact noise
    prediction at *any* noise level (``mixture.noised``), not only the schedule's integer t. Classic
    RK4 in float64 with ``steps`` uniform λ-steps; towards the clean end λ stops at 20 (σ/α = 2·10⁻⁹,
    where the rest of the path is one exact Tweedie jump to E[x₀|x]). Run twice (steps and 2·steps), the
    second is returned with its error estimate max‖x_2N − x_N‖/15 (Richardson, fourth order).
    """
    if t_start is None:
        t_start = schedule.T - 1
    if not (-1 <= t_end < t_start < schedule.T):
        raise ValueError(f"need -1 <= t_end < t_start <= T-1={schedule.T - 1}, got t_start={t_start}, t_end={t_end}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ab_start, ab_end = (float(v) for v in schedule.alpha_bar_at(torch.tensor([t_start, t_end])))
    lam_start = 0.5 * math.log(ab_start / (1 - ab_start))
    lam_end = 20.0 if ab_end >= 1 else 0.5 * math.log(ab_end / (1 - ab_end))
    lam_end = max(lam_end, lam_start) if ab_end < 1 else max(lam_end, lam_start + 1.0)

    def eps(x, lam):
        ab = 1 / (1 + math.exp(-2 * lam))          # ᾱ = sigmoid(2λ)
        return -math.sqrt(1 - ab) * mixture.noised(ab).score(x)

    def rhs(u, lam):
        alpha = math.sqrt(1 / (1 + math.exp(-2 * lam)))
        return -math.exp(-lam) * eps(alpha * u, lam)

    def solve(n):
        h = (lam_end - lam_start) / n
        u = x_T.to(torch.float64) / math.sqrt(ab_start)
        lam = lam_start
        for _ in range(n):
            k1 = rhs(u, lam)
            k2 = rhs(u + h / 2 * k1, lam + h / 2)
            k3 = rhs(u + h / 2 * k2, lam + h / 2)
            k4 = rhs(u + h * k3, lam + h)
            u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            lam = lam + h
        alpha, sigma = math.sqrt(1 / (1 + math.exp(-2 * lam))), math.sqrt(1 / (1 + math.exp(2 * lam)))
        x = alpha * u
        if ab_end >= 1:   # the last, negligible stretch to σ = 0 in one exact step: x₀ = (x − σ ε*) / α
            x = (x - sigma * eps(x, lam)) / alpha
        return x

    coarse, fine = solve(steps), solve(2 * steps)
    return fine, float((fine - coarse).norm(dim=-1).max()) / 15


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
                   keep: int = 0, class_balanced: bool = True, keep_samples: bool = False,
                   interval: tuple[int, int] | None = None) -> list[dict]:
    """Classifier-free guidance's trade-off, measured: one row per scale s with FID (and the floor
    at n), class accuracy, within-class diversity, the share of saturated (near-white, x > 0.95)
    pixels beside the real test images' share, and seconds. Every scale starts from the same x_T and labels (DDIM-``steps``, clipped x̂₀).
    With ``keep`` > 0 each row also holds its first ``keep`` samples under "samples" (``keep_samples``: all
    of them, for paired comparisons). The labels are exactly balanced, so the reference set and floor are
    class-balanced too (``class_balanced``). ``interval`` guides only for t in that range (Kynkäänniemi et al.
    2024); the row records it.
    """
    from tqdm.auto import tqdm

    from . import guidance

    device = next(model.parameters()).device
    ref = metrics.reference_images(n, class_balanced=class_balanced)
    floor = metrics.fid_floor(classifier, n, class_balanced=class_balanced)
    saturated_real = float((ref > 0.95).float().mean())
    x_T = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(n) % num_classes
    rows = []
    scales = list(scales)
    bar = tqdm(total=len(scales) * steps * -(-n // batch_size), desc="model calls", disable=not progress)
    counted = _CountCalls(model, bar)
    for s in scales:
        bar.set_postfix_str(f"s = {s:g}")
        start = time.perf_counter()
        out = []
        for i in range(0, n, batch_size):
            y = labels[i:i + batch_size].to(device)
            guided = guidance.classifier_free(counted, y, float(s), rescale=rescale, interval=interval)
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
               "seconds": secs, "n": n, "steps": steps, "interval": interval}
        if keep_samples:
            row["samples"] = xs
        elif keep:
            row["samples"] = xs[:keep]
        rows.append(row)
    bar.close()
    return rows


def format_guidance_table(rows: list[dict]) -> str:
    head = (f"{'scale s':>7} {'rescale':>7} {'FID':>7} {'floor':>6} {'class acc':>9} {'diversity':>9} "
            f"{'saturated':>9} {'seconds':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['scale']:7.2g} {r['rescale']:7.2g} {r['fid']:7.2f} {r['floor']:6.2f} "
                     f"{r['class_accuracy']:9.1%} {r['diversity']:9.3f} {r['saturated']:9.1%} {r['seconds']:7.1f}")
    return "\n".join(lines)


def text_prompts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` two-object prompts of pairings seen in training and ``n`` of the held-out pairings — the same
    prompts (same generator) as ``train.evaluate_text_model`` scores for the shipped checkpoint's manifest."""
    import random

    from . import shapes

    rng = random.Random(10_000 + seed)
    seen = [shapes.random_scene(rng, p_single=0.0).caption() for _ in range(n)]
    unseen = []
    while len(unseen) < n:
        scene = shapes.random_scene(rng, p_single=0.0, allow_held_out=True)
        if scene.is_held_out():
            unseen.append(scene.caption())
    return seen, unseen


def reversed_order(caption: str) -> str:
    """The same words in the other order: "a red circle above a blue square" → "a blue square above a red
    circle" — the opposite scene. As a negative prompt it pushes only on what word order says."""
    from . import shapes

    sc = shapes.parse_caption(caption)
    if sc.second is None:
        raise ValueError(f"reversed_order needs a two-object caption, got {caption!r}")
    return shapes.Scene(sc.second, sc.relation, sc.first).caption()


@torch.no_grad()
def text_composition(model, schedule, prompts: list[str], scale: float = 3.0, steps: int = 25, seed: int = 0,
                     negative: list[str] | None = None, interval: tuple[int, int] | None = None,
                     batch_size: int = 100, progress: bool = True, desc: str = "model calls") -> dict:
    """Sample one image per prompt (DDIM-``steps``, same x_T for every call with the same seed) and score it:
    ``rates`` (``shapes.match_rates``), ``counts`` (``shapes.composition_counts``: axis / order / swapped) and
    the ``samples``. ``negative``: one negative prompt per prompt, used in place of the empty caption as
    CFG's unconditional input; ``interval``: guide only for t in that range."""
    from tqdm.auto import tqdm

    from . import guidance, shapes

    if negative is not None and len(negative) != len(prompts):
        raise ValueError(f"negative must have one prompt per prompt ({len(prompts)}), got {len(negative)}")
    device = next(model.parameters()).device
    tok = model.tokenizer
    x_T = torch.randn((len(prompts), 3, 32, 32), generator=torch.Generator().manual_seed(seed))
    bar = tqdm(total=steps * -(-len(prompts) // batch_size), desc=desc, disable=not progress, leave=False)
    counted = _CountCalls(model, bar)
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = tok(prompts[i:i + batch_size]).to(device)
        null = tok(negative[i:i + batch_size]).to(device) if negative is not None else None
        guided = guidance.classifier_free(counted, ids, float(scale), null_cond=null, interval=interval)
        out.append(sampling.ddim_sample(guided, x_T[i:i + batch_size].to(device), schedule, steps=steps,
                                        progress=False, clip_denoised=True).float().cpu())
    bar.close()
    xs = torch.cat(out)
    return {"rates": shapes.match_rates(xs, prompts), "counts": shapes.composition_counts(xs, prompts),
            "samples": xs, "scale": scale, "steps": steps, "negative": negative is not None, "interval": interval}
