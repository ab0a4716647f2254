"""Evaluation, in one place: draw n samples with each sampler from the same noise, and report FID (with its
floor), class accuracy and wall time (chapter 3, ``benchmarks/fid_vs_nfe.py``); what each shipped model's manifest
records (:func:`evaluate_diffusion`, :func:`evaluate_text_model`, :func:`evaluate_latent`,
:func:`evaluate_autoencoder`, :func:`evaluate_consistency`); guidance sweeps and text composition (chapter 4), with
:func:`paired_proportion_difference` for two settings scored on the same prompts and noise;
wall time per image, interleaved so that a drifting CPU does not bias a ratio (:func:`interleaved_seconds_per_image`).

Also the two yardsticks chapter 3's verdicts rest on: :func:`paired_fid_difference` (a paired bootstrap
of the FID gap between two samplers that shared their noise) and :func:`ode_reference` (the exact
probability-flow ODE solution for a Gaussian mixture, to float64 accuracy, with its own error estimate).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from . import consistency, consistency_extensions, guidance, metrics, pretrained, sampling, shapes
from .data import load_fashion_mnist
from .gmm import GaussianMixture
from .schedules import NoiseSchedule

Model = Callable[..., torch.Tensor]   # model(x_t, t[, cond]) -> prediction


@dataclass
class SamplerSpec:
    """A named sampler: ``run(model, x_T, schedule, cond, generator) -> x0``, and its model calls (NFE)."""
    name: str
    nfe: int
    run: Callable = field(repr=False)


def standard_specs(ddim_steps: Sequence[int] = (10, 20, 50, 100), dpm_steps: Sequence[int] = (10, 20),
                   etas: Sequence[float] = (0.0, 1.0), ddpm: bool = True,
                   clip_denoised: bool = True) -> list[SamplerSpec]:
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
def compare_samplers(model: Model, schedule: NoiseSchedule, specs: list[SamplerSpec], n: int, classifier: nn.Module,
                     batch_size: int = 250,
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
def paired_fid_difference(classifier: nn.Module, samples_a: torch.Tensor, samples_b: torch.Tensor, reference: torch.Tensor,
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
    fa, fb, fr = (metrics.extract_features(classifier, x) for x in (samples_a, samples_b, reference))
    return paired_frechet_difference(fa, fb, fr, n_boot=n_boot, seed=seed, level=level)


def paired_frechet_difference(features_a: torch.Tensor, features_b: torch.Tensor, features_ref: torch.Tensor,
                              n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """The bootstrap of :func:`paired_fid_difference` on features already extracted (row i of ``features_a`` and of
    ``features_b`` come from the same noise): extract once, then test as many pairs and subsets as you like."""
    if features_a.ndim != 2 or features_a.shape != features_b.shape or features_ref.ndim != 2 \
            or features_ref.shape[1] != features_a.shape[1]:
        raise ValueError(f"features_a and features_b must be paired (n, d) matrices and features_ref (m, d), got "
                         f"{tuple(features_a.shape)}, {tuple(features_b.shape)}, {tuple(features_ref.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}")
    fa, fb, fr = features_a.double(), features_b.double(), features_ref.double()

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
def ode_reference(mixture: GaussianMixture, x_T: torch.Tensor, schedule: NoiseSchedule, t_start: int | None = None, t_end: int = -1,
                  steps: int = 2000, progress: bool = False) -> tuple[torch.Tensor, float]:
    """The probability-flow ODE solution for Gaussian-mixture data, from ``t_start`` (default T−1) to
    ``t_end`` (−1: the clean end, ᾱ = 1), far more accurately than any sampler it is used to score.

    With α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ) and u = x/α the ODE is du/dλ = −e^{−λ} ε*(αu, λ) (the
    ε-form behind DDIM and DPM-Solver, Lu et al. 2022, Eq. 3.4), where ε* is the mixture's exact noise
    prediction at *any* noise level (``mixture.noised``), not only the schedule's integer t. Classic
    RK4 in float64 with ``steps`` uniform λ-steps; towards the clean end λ stops at 20 (σ/α = 2·10⁻⁹,
    where the rest of the path is one exact Tweedie jump to E[x₀|x]). Run twice (steps and 2·steps), the
    second is returned with its error estimate max‖x_2N − x_N‖/15 (Richardson, fourth order).
    ``progress`` shows a bar over the 3·``steps`` RK4 steps.
    """
    from tqdm.auto import tqdm

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

    bar = tqdm(total=3 * steps, desc="RK4 λ-steps", disable=not progress)

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
            bar.update(1)
        alpha, sigma = math.sqrt(1 / (1 + math.exp(-2 * lam))), math.sqrt(1 / (1 + math.exp(2 * lam)))
        x = alpha * u
        if ab_end >= 1:   # the last, negligible stretch to σ = 0 in one exact step: x₀ = (x − σ ε*) / α
            x = (x - sigma * eps(x, lam)) / alpha
        return x

    coarse, fine = solve(steps), solve(2 * steps)
    bar.close()
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
def guidance_sweep(model: Model, schedule: NoiseSchedule, scales: Sequence[float], n: int, classifier: nn.Module,
                   steps: int = 20, num_classes: int = 10,
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
    prompts (same generator) as :func:`evaluate_text_model` scores for the shipped checkpoint's manifest."""
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
    sc = shapes.parse_caption(caption)
    if sc.second is None:
        raise ValueError(f"reversed_order needs a two-object caption, got {caption!r}")
    return shapes.Scene(sc.second, sc.relation, sc.first).caption()


@torch.no_grad()
def text_composition(model: Model, schedule: NoiseSchedule, prompts: list[str], scale: float = 3.0, steps: int = 25, seed: int = 0,
                     negative: list[str] | None = None, interval: tuple[int, int] | None = None,
                     batch_size: int = 100, progress: bool = True, desc: str = "model calls") -> dict:
    """Sample one image per prompt (DDIM-``steps``, same x_T for every call with the same seed) and score it:
    ``rates`` (``shapes.match_rates``), ``counts`` (``shapes.composition_counts``: axis / order / swapped) and
    the ``samples``. ``negative``: one negative prompt per prompt, used in place of the empty caption as
    CFG's unconditional input; ``interval``: guide only for t in that range."""
    from tqdm.auto import tqdm

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
            "matches": [shapes.caption_match(x, p) for x, p in zip(xs, prompts)],
            "samples": xs, "scale": scale, "steps": steps, "negative": negative is not None, "interval": interval}


def paired_proportion_difference(a: Sequence[bool], b: Sequence[bool], n_boot: int = 2000, seed: int = 0,
                                 level: float = 0.95) -> dict:
    """Rate(b) − rate(a) for two yes/no outcomes on the *same* items (e.g. "caption fully right" for sample i of two
    guidance settings that started from the same noise and prompt).

    Only the discordant items carry information: ``only_a`` (right in a, wrong in b) and ``only_b``. The exact
    McNemar test (a two-sided binomial test of ``only_b`` against ``only_a + only_b`` fair coin flips; McNemar 1947)
    gives ``p_value``; a paired bootstrap over the items (the same resampled indices in both) gives the interval
    [``lo``, ``hi``] at ``level``. Returns {"n", "rate_a", "rate_b", "delta", "lo", "hi", "only_a", "only_b",
    "p_value", "level"}.
    """
    xa = torch.as_tensor([bool(v) for v in a], dtype=torch.float64)
    xb = torch.as_tensor([bool(v) for v in b], dtype=torch.float64)
    if len(xa) != len(xb):
        raise ValueError(f"a and b must be paired (the same items), got {len(xa)} and {len(xb)} outcomes")
    if len(xa) == 0:
        raise ValueError("a and b are empty: nothing to compare")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}")
    only_a, only_b = int(((xa == 1) & (xb == 0)).sum()), int(((xa == 0) & (xb == 1)).sum())
    k, m = min(only_a, only_b), only_a + only_b
    # exact two-sided binomial test: twice the smaller tail of Binomial(m, 1/2), capped at 1
    p_value = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m) if m else 1.0
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(xa), (n_boot, len(xa)), generator=g)
    deltas = (xb[idx] - xa[idx]).mean(1)
    lo, hi = torch.quantile(deltas, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return {"n": len(xa), "rate_a": float(xa.mean()), "rate_b": float(xb.mean()), "delta": float((xb - xa).mean()),
            "lo": lo, "hi": hi, "only_a": only_a, "only_b": only_b, "p_value": p_value, "level": level}


# --------------------------------------------------------------------------- what a manifest records
@torch.no_grad()
def evaluate_diffusion(model: Model | None, schedule: NoiseSchedule | None, n: int = 1000, steps: int = 50,
                       seed: int = 0, device: torch.device | str | None = None,
                       sampler: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None, noise_shape: tuple[int, ...] = (1, 28, 28)) -> dict:
    """FID (DDIM-``steps``) of unconditional and class-conditional samples, each against its like-for-like floor.

    Conditional samples use exactly class-balanced labels, so they are compared with a class-balanced real set
    and a class-balanced floor (two disjoint balanced real sets of ``n``); unconditional samples with a random
    real subset and the random floor. Also the class mix of the unconditional samples (the classifier's
    counts and the largest relative deviation from uniform) and the class accuracy of the conditional ones.
    ``sampler(x_T, cond) -> images`` replaces DDIM (e.g. a latent model's own ``sample``, with ``noise_shape`` its
    latent shape).
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    clf = pretrained.load("fmnist-classifier", device=dev)
    g = torch.Generator().manual_seed(seed)
    out = {"n": n, "sampler": f"DDIM-{steps}, eta=0, trailing", "floor": metrics.fid_floor(clf, n),
           "floor_balanced": metrics.fid_floor(clf, n, class_balanced=True),
           "reference": "fid_uncond vs a random test subset (floor); fid_cond (class-balanced labels) vs a "
                        "class-balanced test subset (floor_balanced)"}
    labels = torch.arange(n) % 10
    if sampler is None:
        def sampler(x_T, cond):
            return sampling.ddim_sample(model, x_T, schedule, steps=steps, cond=cond, progress=False,
                                        clip_denoised=True)
    for name, cond in (("uncond", None), ("cond", labels.to(dev))):
        t0 = time.perf_counter()
        x_T = torch.randn((n, *noise_shape), generator=g).to(dev)
        xs = torch.cat([sampler(x_T[i:i + 500], None if cond is None else cond[i:i + 500])
                        for i in range(0, n, 500)]).clamp(-1, 1).cpu()
        ref = metrics.reference_images(n, class_balanced=cond is not None)
        out[f"fid_{name}"] = metrics.fid(clf, xs, ref)
        out[f"sample_seconds_{name}"] = time.perf_counter() - t0
        if cond is not None:
            out["class_accuracy_cond"] = metrics.class_accuracy(clf, xs, labels)
        else:
            counts = metrics.class_counts(clf, xs)
            out["uncond_class_counts"] = counts.tolist()
            out["uncond_class_max_deviation"] = metrics.max_class_deviation(counts)
            # the same measure on the real set the FID compares with: what a perfect model would score at this n
            out["uncond_class_max_deviation_real"] = metrics.max_class_deviation(metrics.class_counts(clf, ref))
    out["fid_cond_over_floor"] = out["fid_cond"] / out["floor_balanced"]
    out["fid_uncond_over_floor"] = out["fid_uncond"] / out["floor"]
    return out


@torch.no_grad()
def evaluate_text_model(model: nn.Module, schedule: NoiseSchedule, n: int = 200, steps: int = 50,
                        scales: Sequence[float] = (0.0, 1.0, 3.0), seed: int = 0,
                        device: torch.device | str | None = None) -> dict:
    """Caption-attribute match rates (colours, shapes, relation, all) of samples for ``n`` random
    two-object prompts of trained pairings ("seen") and ``n`` of the held-out pairings, at each guidance
    scale (DDIM-``steps``)."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    # Two-object prompts in both sets, so "seen" and "held-out" differ only in whether the pairing was trained on.
    seen, unseen = text_prompts(n, seed)
    out = {"n": n, "sampler": f"DDIM-{steps}, eta=0, trailing, clipped"}
    for label, prompts in (("seen", seen), ("held_out", unseen)):
        ids = model.tokenizer(prompts).to(dev)
        x_T = torch.randn((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)).to(dev)
        for s in scales:
            t0 = time.perf_counter()
            guided = guidance.classifier_free(model, ids, s)
            xs = sampling.ddim_sample(guided, x_T, schedule, steps=steps, progress=False, clip_denoised=True).cpu()
            for key, v in shapes.match_rates(xs, prompts).items():
                out[f"{label}_s{s:g}_{key}"] = v
            out[f"{label}_s{s:g}_seconds"] = time.perf_counter() - t0
    return out


@torch.no_grad()
def evaluate_latent(ldm: nn.Module, n: int = 1000, steps: int = 50, seed: int = 0) -> dict:
    """``evaluate_diffusion`` for a ``LatentDiffusion``: DDIM in latent space from latent-shaped noise, then decode."""
    out = evaluate_diffusion(ldm, ldm.schedule, n=n, steps=steps, seed=seed, noise_shape=ldm.latent_shape,
                             sampler=lambda z_T, cond: ldm.sample(z_T.shape[0], cond=cond, steps=steps, z_T=z_T,
                                                                  progress=False))
    out["sampler"] = f"DDIM-{steps} in latent space, eta=0, leading spacing; decoded"
    return out


@torch.no_grad()
def evaluate_autoencoder(vae: nn.Module, n: int = 1000, seed: int = 0, device: torch.device | str | None = None) -> dict:
    """Reconstruction quality on the test set: MSE and PSNR over all 10,000 images, and the **reconstruction
    FID** — ``n`` test images through encode→decode against ``n`` *other* test images, next to the floor of the
    same two real sets. It is the best FID any latent model built on this decoder can reach at ``n``. The
    ``_balanced`` pair does the same on the two class-balanced sets of ``metrics.fid_floor(class_balanced=True)``:
    the cap to read a latent model's class-conditional FID (balanced labels) against."""
    dev = torch.device(device) if device is not None else next(vae.parameters()).device
    x, y = load_fashion_mnist("test")
    vae = vae.to(dev).eval()
    rec = torch.cat([vae.decode(vae.encode(x[i:i + 500].to(dev))[0]).clamp(-1, 1).cpu()
                     for i in range(0, x.shape[0], 500)])
    mse = float((rec - x).pow(2).mean())
    clf = pretrained.load("fmnist-classifier", device=dev)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    a, b = perm[:n], perm[n:2 * n]
    ba, bb = metrics.balanced_disjoint_indices(y, n, seed)
    psnr = 10 * math.log10(4.0 / mse) if mse > 0 else math.inf  # a perfect reconstruction has no finite PSNR
    return {"test_mse": mse, "test_psnr_db": psnr, "test_l1": float((rec - x).abs().mean()),
            "n": n, "fid_reconstruction": metrics.fid(clf, rec[a], x[b]), "floor": metrics.fid(clf, x[a], x[b]),
            "fid_reconstruction_balanced": metrics.fid(clf, rec[ba], x[bb]),
            "floor_balanced": metrics.fid(clf, x[ba], x[bb])}


def evaluate_consistency(cm: nn.Module, n: int = 1000, steps: Sequence[int] = (1, 2, 4), seed: int = 0,
                         device: torch.device | str | None = None) -> dict:
    """FID of a consistency model's 1/2/4-step samples (class-balanced labels and real set, n) and seconds per image
    at batch 1 and 250 for one step — what a ``fmnist-cd`` manifest records (:func:`evaluate_consistency_samplers`)."""
    out = evaluate_consistency_samplers(cm, n=n, steps=steps, seed=seed, device=device)
    dev = next(cm.parameters()).device
    for batch in (1, 250):
        x_T = torch.randn((batch, 1, 28, 28), generator=torch.Generator().manual_seed(seed)).to(dev)
        out[f"seconds_per_image_cm1_batch{batch}"] = seconds_per_image(
            lambda x: consistency.sample(cm, x, steps=1, clip_denoised=True), x_T)
    return out


# --------------------------------------------------------------------------- consistency samplers and timing
@torch.no_grad()
def evaluate_consistency_samplers(cm: nn.Module | None, n: int = 1000, steps: Sequence[int] = (1, 2, 4), seed: int = 0,
                                  teacher: Model | None = None, teacher_schedule: NoiseSchedule | None = None,
                                  ddim_steps: Sequence[int] = (1, 2, 4, 50), dpm_steps: Sequence[int] = (),
                                  batch_size: int = 250, device: torch.device | str | None = None,
                                  classifier: nn.Module | None = None, progress: bool = False,
                                  ode_solvers: Sequence[str] = ()) -> dict:
    """Class-conditional FID of ``cm``'s k-step samples (k in ``steps``) and, with a ``teacher``, of its DDIM-k
    (``ddim_steps``) and DPM-Solver++(2M)-k (``dpm_steps``) samples — all from the same noise and the same exactly
    class-balanced labels, against a class-balanced real set of n, next to the class-balanced floor (two disjoint
    real sets of n). Also class accuracy and the sampling seconds (at ``batch_size``). ``cm=None`` measures the
    teacher only. ``ode_solvers`` (e.g. ``("ddim", "heun")``) also scores the teacher's PF-ODE solved down the
    student's grid with that ``consistency_extensions.teacher_step`` (``teacher_ode_sample``): the end points a student distilled
    with that solver is trained to reproduce, its ceiling. Keys: ``fid_cm1``, ``fid_ddim50``, ``fid_dpm10``,
    ``fid_ode_heun``, ``class_accuracy_…``, ``seconds_…``, ``floor_balanced``, ``n``."""
    from tqdm.auto import tqdm

    if cm is None and teacher is None:
        raise ValueError("evaluate needs a consistency model, a teacher, or both")
    some = cm if cm is not None else teacher
    dev = torch.device(device) if device is not None else next(some.parameters()).device
    clf = classifier if classifier is not None else pretrained.load("fmnist-classifier", device=dev)
    labels = torch.arange(n) % 10
    x_T = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    ref = metrics.reference_images(n, class_balanced=True)
    out = {"n": n, "floor_balanced": metrics.fid_floor(clf, n, class_balanced=True)}
    jobs = []
    if cm is not None:
        jobs += [(f"cm{k}", lambda xb, yb, g, k=k: consistency.sample(cm, xb, steps=k, cond=yb, generator=g, clip_denoised=True)) for k in steps]
    if teacher is not None:
        if teacher_schedule is None:
            raise ValueError("pass teacher_schedule with the teacher")
        jobs += [(f"ddim{k}", lambda xb, yb, g, k=k: sampling.ddim_sample(
            teacher, xb, teacher_schedule, steps=k, cond=yb, progress=False, clip_denoised=True)) for k in ddim_steps]
        jobs += [(f"dpm{k}", lambda xb, yb, g, k=k: sampling.dpm_solver_2m_sample(
            teacher, xb, teacher_schedule, steps=k, cond=yb, progress=False, clip_denoised=True)) for k in dpm_steps]
        ode_grid = cm.grid if cm is not None else consistency.make_grid(teacher_schedule, 20)
        jobs += [(f"ode_{solver}", lambda xb, yb, g, solver=solver: consistency_extensions.teacher_ode_sample(
            teacher, xb, teacher_schedule, ode_grid, yb, solver)) for solver in ode_solvers]
    elif ode_solvers:
        raise ValueError("ode_solvers needs the teacher")
    for name, fn in tqdm(jobs, desc="FID", disable=not progress):
        g = torch.Generator().manual_seed(seed + 1)
        t0 = time.perf_counter()
        xs = torch.cat([fn(x_T[i:i + batch_size].to(dev), labels[i:i + batch_size].to(dev), g).clamp(-1, 1).cpu()
                        for i in range(0, n, batch_size)])
        out[f"seconds_{name}"] = time.perf_counter() - t0
        out[f"fid_{name}"] = metrics.fid(clf, xs, ref)
        out[f"class_accuracy_{name}"] = metrics.class_accuracy(clf, xs, labels)
    return out


def seconds_per_image(fn: Callable[[torch.Tensor], torch.Tensor], x_T: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time of ``fn(x_T)`` divided by the batch size (one warm-up call first)."""
    fn(x_T)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x_T)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] / x_T.shape[0]


def interleaved_seconds_per_image(fns: dict[str, Callable[[torch.Tensor], torch.Tensor]], x_T: torch.Tensor,
                                  rounds: int = 5) -> dict[str, list[float]]:
    """Wall time per image of each ``fns[name](x_T)``, timed in ``rounds`` interleaved rounds (every sampler once
    per round, the order reversed on alternate rounds), after one warm-up call each.

    A CPU's speed drifts over seconds (turbo, other processes), so timing one sampler in its own block and the next
    after it folds that drift into their ratio; within a round the samplers see the same machine. Ratios should be
    taken round by round (``a[i] / b[i]``) and summarised by their median and range."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if not fns:
        raise ValueError("fns must name at least one sampler")
    for fn in fns.values():
        fn(x_T)
    out: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[name](x_T)
            out[name].append((time.perf_counter() - t0) / x_T.shape[0])
    return out


# --------------------------------------------------------------------------- flows (chapter 9)
@torch.no_grad()
def evaluate_flow(model: nn.Module, n: int = 1000, steps: Sequence[int] = (1, 2, 4, 8, 50), seed: int = 0,
                  solver: str = "euler", batch_size: int = 250, device: torch.device | str | None = None,
                  classifier: nn.Module | None = None, progress: bool = False) -> dict:
    """Class-conditional FID of a velocity model's samples at each number of ``steps`` (one noise draw and exactly
    class-balanced labels for all, against a class-balanced real set of n, next to the class-balanced floor), class
    accuracy, sampling seconds, and the straightness of its paths (``flow.straightness``, 32 Euler steps, 250
    samples). What a ``fmnist-rf`` manifest records."""
    from tqdm.auto import tqdm

    from . import flow

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    clf = classifier if classifier is not None else pretrained.load("fmnist-classifier", device=dev)
    labels = torch.arange(n) % 10
    x1 = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    ref = metrics.reference_images(n, class_balanced=True)
    out = {"n": n, "solver": solver, "floor_balanced": metrics.fid_floor(clf, n, class_balanced=True)}
    for k in tqdm(steps, desc="FID", disable=not progress):
        t0 = time.perf_counter()
        xs = torch.cat([flow.sample(model, x1[i:i + batch_size].to(dev), steps=k, cond=labels[i:i + batch_size].to(dev),
                                    solver=solver).clamp(-1, 1).cpu() for i in range(0, n, batch_size)])
        out[f"seconds_{solver}{k}"] = time.perf_counter() - t0
        out[f"fid_{solver}{k}"] = metrics.fid(clf, xs, ref)
        out[f"class_accuracy_{solver}{k}"] = metrics.class_accuracy(clf, xs, labels)
    m = min(n, 250)
    out["straightness"] = float(flow.straightness(model, x1[:m].to(dev), steps=32, cond=labels[:m].to(dev)).mean())
    return out
