"""profiling: FLOP counts that include attention (checked against hand counts, so dropping attention fails), and the
reading of loss-against-compute curves (crossings)."""
import pytest
import torch

from diffusion_course import profiling
from diffusion_course.nn.dit import DIT_CONFIGS, Attention, DiT
from diffusion_course.nn.unet import SelfAttention


def _attention_layer_hand_count(B, N, D):
    qkv = 2 * B * N * D * (3 * D)           # one (B·N × D) @ (D × 3D) product
    proj = 2 * B * N * D * D
    attn = 2 * B * N * N * D * 2            # QKᵀ and weights·V over all heads: 2·B·heads·N²·(D/heads), twice
    return qkv + proj, attn


def test_attention_flops_formula():
    # (B=2, heads=3, L_q=5, d=4) against (L_k=7, d_v=6): 2·6·5·7·4 + 2·6·5·7·6
    assert profiling.attention_flops((2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 7, 6)) == 2 * 6 * 5 * 7 * 4 + 2 * 6 * 5 * 7 * 6
    with pytest.raises(ValueError, match="do not fit"):
        profiling.attention_flops((2, 3, 5, 4), (2, 3, 7, 5), (2, 3, 7, 6))


def test_count_flops_includes_sdpa_on_a_tiny_attention_layer():
    B, N, D = 2, 9, 32
    layer = Attention(D, heads=4).eval()
    x = torch.randn(B, N, D)
    linear, attn = _attention_layer_hand_count(B, N, D)
    with torch.no_grad():
        assert profiling.count_flops(lambda: layer(x)) == linear + attn
        assert profiling.count_flops(lambda: layer(x), attention=False) == linear       # torch's counter alone
        layer.keep_weights = True                   # the explicit softmax path: plain matmuls, which torch counts
        assert profiling.count_flops(lambda: layer(x)) == linear + attn


def test_backward_through_sdpa_counts_twice_the_forward_like_the_explicit_matmuls():
    q, k, v = (torch.randn(2, 4, 9, 8, requires_grad=True) for _ in range(3))

    def fused():
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()

    def explicit():
        w = torch.softmax(q @ k.transpose(-2, -1) / 8 ** 0.5, dim=-1)
        (w @ v).sum().backward()

    fwd = profiling.attention_flops(q.shape, k.shape, v.shape)
    assert profiling.count_flops(fused) == 3 * fwd
    assert profiling.count_flops(explicit) == 3 * fwd


def _dit_hand_count(B, size, patch, C, dim, depth, mlp_ratio, freq_dim=256):
    N = (size // patch) ** 2
    hidden = int(dim * mlp_ratio)
    embed = 2 * B * N * (C * patch * patch) * dim                      # the patchify conv
    t_mlp = 2 * B * (freq_dim * dim + dim * dim)                        # timestep MLP (the label table is a lookup)
    block = (2 * B * dim * 6 * dim                                      # adaLN: c → six modulation vectors
             + 2 * B * N * dim * 3 * dim + 2 * B * N * dim * dim        # qkv, output projection
             + 2 * B * N * dim * hidden * 2)                            # MLP
    attn = 2 * B * N * N * dim * 2                                      # QKᵀ and weights·V, all heads
    final = 2 * B * dim * 2 * dim + 2 * B * N * dim * patch * patch * C
    return embed + t_mlp + depth * block + final, depth * attn


@pytest.mark.parametrize("size,patch,C,dim,depth,heads", [(8, 2, 3, 16, 2, 2), (7, 1, 4, 32, 3, 4)])
def test_tiny_dit_count_matches_a_hand_count_with_and_without_attention(size, patch, C, dim, depth, heads):
    model = DiT(input_size=size, patch=patch, in_channels=C, dim=dim, depth=depth, heads=heads, mlp_ratio=2.0,
                num_classes=5)
    rest, attn = _dit_hand_count(3, size, patch, C, dim, depth, 2.0)
    assert profiling.flops_per_forward(model, (C, size, size), batch=3) == rest + attn
    assert profiling.flops_per_forward(model, (C, size, size), batch=3, attention=False) == rest


def test_unet_attention_runs_as_counted_matmuls(monkeypatch):
    """The U-Net's SDPA falls back to matmuls on a CPU (its q/k/v are strided views), so torch counted it already:
    both counts agree and include what attention_flops gives for its layers."""
    from diffusion_course.recipes import RECIPES, build_denoiser

    unet = build_denoiser("unet", RECIPES["fmnist-ldm"].model)
    shapes = []
    for m in unet.modules():
        if isinstance(m, SelfAttention):
            m.register_forward_hook(lambda mod, inp, out: shapes.append((mod.heads, inp[0].shape)))
    with_attn = profiling.flops_per_forward(unet, (4, 7, 7))
    attn = 0
    for heads, (B, ch, H, W) in shapes:
        q = (B, heads, H * W, ch // heads)
        attn += profiling.attention_flops(q, q, q)
    assert shapes and 0 < attn < with_attn
    assert with_attn == profiling.flops_per_forward(unet, (4, 7, 7), attention=False)
    # the same network with attention made free (V passed through): exactly the attention FLOPs fewer
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda q, k, v, **kw: v)
    assert profiling.flops_per_forward(unet, (4, 7, 7)) == with_attn - attn


def test_shipped_dit_was_sized_without_attention():
    """The numbers chapter 8 prints: the shipped latent DiT matched the U-Net on torch's count alone; with attention it
    costs more than the U-Net per forward."""
    unet, dit = profiling.scaling_model("unet"), profiling.scaling_model("dit")
    u = profiling.flops_per_forward(unet, (4, 7, 7))
    d_with, d_without = profiling.flops_per_forward(dit, (4, 7, 7)), profiling.flops_per_forward(dit, (4, 7, 7),
                                                                                                   attention=False)
    assert d_without < u < d_with
    assert d_with - d_without == 6 * profiling.attention_flops((1, 4, 49, 16), (1, 4, 49, 16), (1, 4, 49, 16))


def test_scaling_model_names_and_errors():
    assert set(DIT_CONFIGS) == {"mini-XS", "mini-S", "mini-M"}
    assert isinstance(profiling.scaling_model("mini-S"), DiT)
    assert profiling.scaling_model("mini-XS", space="pixel", patch=4).num_tokens == 49
    for bad, kw in (("dit-S", {}), ("S", {}), ("unet", {"space": "pixel"}), ("mini-S", {"space": "pixels"})):
        with pytest.raises(ValueError):
            profiling.scaling_model(bad, **kw)


def _curve(points):
    return [[i + 1, f, loss] for i, (f, loss) in enumerate(points)]


def test_curve_crossings():
    curves = {
        "cheap": _curve([(1e9, 0.40), (2e9, 0.30), (4e9, 0.25)]),
        "dear": _curve([(4e9, 0.35), (8e9, 0.22), (16e9, 0.18)]),      # touches cheap's range at 4e9 only
        "crossing": _curve([(1e9, 0.50), (4e9, 0.20)]),                 # above cheap at first, below at 4e9
        "far": _curve([(1e12, 0.5), (2e12, 0.45)]),                     # no overlap; worse than cheap at 250× compute
    }
    rows = {(r["a"], r["b"]): r for r in profiling.curve_crossings(curves)}
    assert rows[("cheap", "dear")]["overlap"] == (4e9, 4e9) and rows[("cheap", "dear")]["lower"] == "cheap"
    r = rows[("cheap", "crossing")]
    assert r["crosses"] is True and r["lower"] is None and r["at"] is not None
    r = rows[("cheap", "far")]
    assert r["overlap"] is None and r["crosses"] is None and r["lower"] == "cheap"
    r = rows[("dear", "far")]                                           # far ends lower than dear? no: 0.45 > 0.18
    assert r["lower"] == "dear"
    # a dearer model that reaches a lower loss does not "lose": no verdict without an overlap
    r = profiling.curve_crossings({"a": _curve([(1e9, 0.3)]), "b": _curve([(1e10, 0.2)])})[0]
    assert r["overlap"] is None and r["lower"] is None and r["crosses"] is None


def test_exercise_checks_of_chapter_8(capsys):
    from diffusion_course import exercises

    assert exercises.check("c", "adaln_zero") and exercises.check("(C)", "adaln_zero")
    for wrong in ("a", "b", "d", 3, None):
        assert not exercises.check(wrong, "adaln_zero")

    def lowest_final(curves, flops):                         # ignores the budget
        return min(curves, key=lambda k: curves[k][-1][2])

    def nearest_point(curves, flops):                        # no interpolation, no range check
        import math
        return min(curves, key=lambda k: min(curves[k], key=lambda p: abs(math.log(p[1] / flops)))[2])

    def no_range_check(curves, flops):                       # interpolates, but extrapolates flat outside a curve
        import math

        def at(c):
            xs = [math.log(p[1]) for p in c]
            x = min(max(math.log(flops), xs[0]), xs[-1])
            for (x0, p0), (x1, p1) in zip(zip(xs, c), zip(xs[1:], c[1:])):
                if x0 <= x <= x1:
                    return p0[2] + (p1[2] - p0[2]) * (x - x0) / (x1 - x0)
            return c[0][2]
        return min(curves, key=lambda k: at(curves[k]))

    for wrong in (lowest_final, nearest_point, no_range_check, lambda curves, flops: None):
        assert not exercises.check(wrong, "best_at")
    assert "❌" in capsys.readouterr().out
