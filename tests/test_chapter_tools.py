"""Chapter 3's yardsticks (the exact-ODE reference, the paired FID bootstrap) and chapter 4's split of
the text model's "relation" into axis and order."""
import math
import random

import pytest
import torch

from diffusion_course import evaluation, gmm, pretrained, sampling, schedules, shapes


def test_ode_reference_matches_the_closed_form_for_one_gaussian():
    # For N(μ, s²I) the probability-flow ODE moves quantiles linearly: x_t = αμ + √(α²s² + σ²)·z with z
    # constant along the path, so the clean end is μ + s·z — an exact answer to test the solver against.
    s = schedules.NoiseSchedule.cosine(1000)
    mu, std = torch.tensor([[0.7, -1.2]], dtype=torch.float64), 0.3
    mix = gmm.GaussianMixture(mu, torch.tensor([std], dtype=torch.float64))
    x_T = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ab = float(s.alpha_bar[-1])
    z = (x_T - math.sqrt(ab) * mu) / math.sqrt(ab * std ** 2 + 1 - ab)
    x, err = evaluation.ode_reference(mix, x_T, s, steps=250)
    exact = mu + std * z
    true_err = (x - exact).norm(dim=1).max().item()
    assert true_err < 2e-6 and 0.5 * err < true_err < 2 * err      # accurate, and it knows how accurate
    # to an intermediate level the same formula holds with that level's α, σ
    ab_mid = float(s.alpha_bar[300])
    x_mid, _ = evaluation.ode_reference(mix, x_T, s, t_end=300, steps=150)
    exact_mid = math.sqrt(ab_mid) * mu + math.sqrt(ab_mid * std ** 2 + 1 - ab_mid) * z
    assert (x_mid - exact_mid).abs().max().item() < 1e-6


def test_ode_reference_error_estimate_is_honest_and_ddim_converges_to_it():
    s = schedules.NoiseSchedule.cosine(1000)
    mix = gmm.GaussianMixture.ring(k=8, radius=2.0, std=0.15)
    x_T = torch.randn(300, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fine, err_fine = evaluation.ode_reference(mix, x_T, s, steps=400)
    coarse, err_coarse = evaluation.ode_reference(mix, x_T, s, steps=30)
    true_coarse_err = (coarse - fine).norm(dim=1).max().item()
    assert err_fine < 1e-6 and err_coarse > err_fine
    assert 0.2 * err_coarse < true_coarse_err < 5 * err_coarse     # the estimate is the right size
    oracle = mix.oracle_model(s)
    e = [(sampling.ddim_sample(oracle, x_T, s, steps=k, progress=False) - fine).pow(2).sum(1).mean().item()
         for k in (50, 200)]
    assert e[1] < e[0] / 4     # first order: 4× the steps, far less error
    with pytest.raises(ValueError, match="t_end"):
        evaluation.ode_reference(mix, x_T, s, t_start=10, t_end=20)


def _paired_sets():
    from diffusion_course.data import load_fashion_mnist

    x, _ = load_fashion_mnist("test")
    real = x[:200]
    noisy = (real + 0.6 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    return x, real, noisy


def test_paired_fid_difference_detects_a_real_gap_and_not_a_fake_one():
    clf = pretrained.load("fmnist-classifier", device="cpu")
    x, real, noisy = _paired_sets()
    ref = x[5000:5200]
    big = evaluation.paired_fid_difference(clf, noisy, real, ref, n_boot=60)
    assert big["delta"] > 0 and big["lo"] > 0            # heavy noise is clearly worse
    slightly = (real + 1e-3 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    none = evaluation.paired_fid_difference(clf, slightly, real, ref, n_boot=60)
    assert none["lo"] < 0 < none["hi"] and abs(none["delta"]) < big["delta"] / 20
    with pytest.raises(ValueError, match="same shape"):
        evaluation.paired_fid_difference(clf, real[:10], real[:20], ref)


def test_paired_frechet_difference_on_extracted_features_is_the_same_test():
    from diffusion_course import metrics

    clf = pretrained.load("fmnist-classifier", device="cpu")
    x, real, noisy = _paired_sets()
    ref = x[5000:5200]
    whole = evaluation.paired_fid_difference(clf, noisy, real, ref, n_boot=40, seed=3)
    fa, fb, fr = (metrics.extract_features(clf, v) for v in (noisy, real, ref))
    assert evaluation.paired_frechet_difference(fa, fb, fr, n_boot=40, seed=3) == whole
    with pytest.raises(ValueError, match="paired"):
        evaluation.paired_frechet_difference(fa[:10], fb, fr)
    with pytest.raises(ValueError, match="n_boot"):
        evaluation.paired_frechet_difference(fa, fb, fr, n_boot=5)


def test_relation_parts_split_axis_order_and_swap():
    rng = random.Random(0)
    cap = "a red circle above a blue square"
    same_words = shapes.render(shapes.parse_caption("a blue square above a red circle"), rng)
    right = shapes.render(shapes.parse_caption(cap), rng)
    swapped = shapes.render(shapes.parse_caption("a red square above a blue circle"), rng)
    sideways = shapes.render(shapes.parse_caption("a red circle left of a blue square"), rng)
    assert shapes.relation_parts(right, cap) == {"axis": True, "order": True, "swapped": False}
    assert shapes.relation_parts(same_words, cap) == {"axis": True, "order": False, "swapped": False}
    assert shapes.relation_parts(swapped, cap)["swapped"] and shapes.relation_parts(swapped, cap)["order"]
    assert shapes.relation_parts(sideways, cap)["axis"] is False
    assert shapes.relation_parts(torch.full((3, 32, 32), -1.0), cap) is None   # nothing drawn
    with pytest.raises(ValueError, match="two-object"):
        shapes.relation_parts(right, "a red circle")


def test_composition_counts_on_real_renders():
    x, caps = shapes.make_dataset(300, seed=3, p_single=0.0)
    c = shapes.composition_counts(x, caps)
    assert c["n"] == 300 and c["both_colors"] >= 297
    assert c["axis"] == c["both_colors"] and c["order"] >= c["both_colors"] - 2 and c["swapped"] <= 2
    # the same images against the word-order-reversed captions: same words, order wrong
    flipped = []
    for cap in caps:
        sc = shapes.parse_caption(cap)
        flipped.append(shapes.Scene(sc.second, sc.relation, sc.first).caption())
    f = shapes.composition_counts(x, flipped)
    assert f["axis"] == f["both_colors"] and f["order"] <= 2


def test_text_prompts_reversed_order_and_text_composition():
    from diffusion_course.nn import TextToImageUNet
    from diffusion_course.tokenizer import WordTokenizer

    seen, held = evaluation.text_prompts(12)
    assert len(seen) == len(held) == 12
    assert not any(shapes.parse_caption(p).is_held_out() for p in seen)
    assert all(shapes.parse_caption(p).is_held_out() for p in held)
    assert evaluation.text_prompts(12) == (seen, held)                      # deterministic
    assert evaluation.reversed_order("a red circle above a blue square") == "a blue square above a red circle"
    with pytest.raises(ValueError, match="two-object"):
        evaluation.reversed_order("a red circle")

    s = schedules.NoiseSchedule.cosine(100)
    tok = WordTokenizer(shapes.VOCAB, 10)
    torch.manual_seed(0)
    net = TextToImageUNet(tok.vocab_size, 10, text_dim=16, in_channels=3, channels=(16, 32), attention_levels=(),
                          cross_attention_levels=(1,), patch=2)
    net.tokenizer = tok
    out = evaluation.text_composition(net, s, seen[:4], scale=3.0, steps=2, progress=False,
                                      negative=[evaluation.reversed_order(p) for p in seen[:4]])
    assert out["samples"].shape == (4, 3, 32, 32) and out["negative"]
    assert set(out["rates"]) == {"colors", "shapes", "relation", "all"} and out["counts"]["n"] == 4
    again = evaluation.text_composition(net, s, seen[:4], scale=3.0, steps=2, progress=False, interval=(50, 99))
    assert again["interval"] == (50, 99)
    with pytest.raises(ValueError, match="one prompt per prompt"):
        evaluation.text_composition(net, s, seen[:4], negative=seen[:2], progress=False)


def test_shipped_ddpm_reference_pairs_with_the_chapter_noise():
    """Chapter 3 reads DDPM-1000 samples instead of running it: they must load, and start from compare_samplers'
    noise (DDIM η = 0 is deterministic, so the shipped DDIM-10 must match a live one on the same x_T)."""
    from diffusion_course import records, sampling

    rec, images = records.load("ddpm_reference"), records.images("ddpm_reference")
    assert set(images) == {"ddpm-1000", "ddim-50", "ddim-10"} and rec["n"] >= 500
    for x in images.values():
        assert x.shape == (rec["n"], 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    model = pretrained.load("fmnist-ddpm", device="cpu")
    x_T = torch.randn((rec["n"], 1, 28, 28), generator=torch.Generator().manual_seed(rec["seed"]))[:4]
    live = sampling.ddim_sample(model, x_T, model.schedule, steps=10, cond=torch.arange(4), progress=False,
                                clip_denoised=True)
    assert (live - images["ddim-10"][:4]).abs().max() < 2 / 127.5
    with pytest.raises(ValueError, match="keeps no images"):
        records.images("consistency_nfe")
