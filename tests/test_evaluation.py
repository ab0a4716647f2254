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
