"""The sampler line-up used by chapter 3 and benchmarks/fid_vs_nfe.py."""
import pytest
import torch

from diffusion_course import evaluation, pretrained


class _Tiny(torch.nn.Module):
    """A stand-in image model: predicts x₀ = the mean of two real garments, whatever the input."""

    objective = "x0"

    def __init__(self, target):
        super().__init__()
        self.register_buffer("target", target)

    def forward(self, x, t, cond=None):
        return self.target.expand_as(x)


def test_compare_samplers_rows_and_shared_noise():
    from diffusion_course.data import load_fashion_mnist

    x, _ = load_fashion_mnist("test")
    clf = pretrained.load("fmnist-classifier", device="cpu")
    model = _Tiny(x[:2].mean(0, keepdim=True))
    s = pretrained.schedule_for("fmnist-ddpm")
    specs = evaluation.standard_specs(ddim_steps=(2,), dpm_steps=(2,), etas=(0.0,), ddpm=False)
    specs.append(specs[0])  # the same deterministic sampler twice must score identically
    rows = evaluation.compare_samplers(model, s, specs, n=20, classifier=clf, batch_size=8, progress=False)
    assert [r["sampler"] for r in rows] == ["DDIM-2 (η=0)", "DPM-Solver++(2M)-2", "DDIM-2 (η=0)"]
    assert rows[0]["fid"] == rows[2]["fid"] and len({r["floor"] for r in rows}) == 1
    assert all(r["fid"] > r["floor"] and 0 <= r["class_accuracy"] <= 1 and r["nfe"] == 2 for r in rows)
    table = evaluation.format_table(rows)
    assert "DPM-Solver++(2M)-2" in table and "FID/floor" in table
    names = [sp.name for sp in evaluation.standard_specs()]
    assert names[0] == "DDPM-1000" and "DDIM-50 (η=0)" in names and "DPM-Solver++(2M)-20" in names


def test_interleaved_timing_alternates_the_samplers_and_divides_by_the_batch(monkeypatch):
    calls, clock = [], iter(range(1000))
    monkeypatch.setattr(evaluation.time, "perf_counter", lambda: float(next(clock)))   # each reading 1 s after the last

    def fn(name):
        return lambda x: calls.append(name)

    x = torch.zeros(4, 1, 2, 2)
    out = evaluation.interleaved_seconds_per_image({"a": fn("a"), "b": fn("b")}, x, rounds=3)
    # one warm-up each, then a b | b a | a b: no sampler is timed in a block of its own
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert out == {"a": [0.25] * 3, "b": [0.25] * 3}     # 1 s per call / batch of 4
    with pytest.raises(ValueError, match="rounds"):
        evaluation.interleaved_seconds_per_image({"a": fn("a")}, x, rounds=0)
    with pytest.raises(ValueError, match="at least one"):
        evaluation.interleaved_seconds_per_image({}, x)


def test_paired_proportion_difference_counts_discordant_pairs_and_matches_the_exact_binomial_test():
    from scipy.stats import binomtest

    a = [True] * 30 + [False] * 70
    b = [True] * 20 + [False] * 10 + [True] * 25 + [False] * 45      # 10 right only in a, 25 only in b
    r = evaluation.paired_proportion_difference(a, b, n_boot=500)
    assert (r["n"], r["only_a"], r["only_b"]) == (100, 10, 25)
    assert r["rate_a"] == 0.30 and r["rate_b"] == 0.45 and abs(r["delta"] - 0.15) < 1e-12
    assert abs(r["p_value"] - binomtest(25, 35, 0.5).pvalue) < 1e-12 and r["p_value"] < 0.05
    assert r["lo"] < r["delta"] < r["hi"] and r["lo"] > 0                        # the paired interval excludes 0
    assert evaluation.paired_proportion_difference(a, b, n_boot=500) == r           # seeded
    same = evaluation.paired_proportion_difference(a, a, n_boot=100)
    assert same["delta"] == same["lo"] == same["hi"] == 0 and same["p_value"] == 1.0
    # the same two rates on unpaired-looking data (many discordant pairs both ways) is not significant
    c = [False] * 30 + [True] * 45 + [False] * 25                      # 30 right only in a, 45 only in c
    loose = evaluation.paired_proportion_difference(a, c, n_boot=500)
    assert loose["rate_b"] == 0.45 and loose["p_value"] > 0.05 and loose["lo"] < 0
    with pytest.raises(ValueError, match="paired"):
        evaluation.paired_proportion_difference(a, b[:10])
    with pytest.raises(ValueError, match="empty"):
        evaluation.paired_proportion_difference([], [])
    with pytest.raises(ValueError, match="level"):
        evaluation.paired_proportion_difference(a, b, level=1.0)


def test_text_composition_keeps_each_samples_verdict():
    from diffusion_course import schedules, shapes
    from diffusion_course.nn import TextToImageUNet
    from diffusion_course.tokenizer import WordTokenizer

    seen, _ = evaluation.text_prompts(4)
    s = schedules.NoiseSchedule.cosine(100)
    tok = WordTokenizer(shapes.VOCAB, 10)
    torch.manual_seed(0)
    net = TextToImageUNet(tok.vocab_size, 10, text_dim=16, in_channels=3, channels=(16, 32), attention_levels=(),
                          cross_attention_levels=(1,), patch=2)
    net.tokenizer = tok
    out = evaluation.text_composition(net, s, seen, scale=3.0, steps=2, progress=False)
    assert out["matches"] == [shapes.caption_match(x, p) for x, p in zip(out["samples"], seen)]
    assert out["rates"]["all"] == sum(m["all"] for m in out["matches"]) / len(seen)
