"""Chapter 8's DiT: patchify/unpatchify, adaLN-Zero at init, shapes, conditioning, and the FLOP counter."""
import pytest
import torch

from diffusion_course import profiling, schedules
from diffusion_course.losses import diffusion_loss
from diffusion_course.nn.dit import DIT_CONFIGS, DiT, patchify, sincos_2d, unpatchify


@pytest.mark.parametrize("size,patch", [(28, 1), (28, 2), (28, 4), (28, 7), (28, 14), (7, 1), (8, 2), (32, 8)])
def test_patchify_unpatchify_are_exact_inverses(size, patch):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size + patch))
    tokens = patchify(x, patch)
    assert tokens.shape == (2, (size // patch) ** 2, patch * patch * 3)
    assert torch.equal(unpatchify(tokens, patch, 3, size, size), x)
    # the first token is the top-left patch
    assert torch.equal(tokens[0, 0].reshape(patch, patch, 3).permute(2, 0, 1), x[0, :, :patch, :patch])


def test_patchify_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.zeros(1, 1, 28, 28), 3)
    with pytest.raises(ValueError, match="divisible"):
        DiT(input_size=28, patch=3, in_channels=1)


def test_sincos_embeddings_are_distinct_and_bounded():
    emb = sincos_2d(64, 7, 7)
    assert emb.shape == (49, 64) and emb.abs().max() <= 1
    d = torch.cdist(emb, emb)
    assert (d + torch.eye(49) * 10).min() > 0.1          # every position gets its own code


@pytest.mark.parametrize("cfg", list(DIT_CONFIGS))
def test_fresh_dit_outputs_zero_and_blocks_are_identity(cfg):
    torch.manual_seed(0)
    model = DiT(input_size=7, patch=1, in_channels=4, num_classes=10, **DIT_CONFIGS[cfg])
    x = torch.randn(3, 4, 7, 7)
    t = torch.tensor([0, 400, 999])
    assert torch.equal(model(x, t, torch.tensor([1, 2, 10])), torch.zeros_like(x))     # adaLN-Zero final layer
    h = torch.randn(3, model.num_tokens, DIT_CONFIGS[cfg]["dim"])
    c = torch.randn(3, DIT_CONFIGS[cfg]["dim"])
    for block in model.blocks:
        assert torch.equal(block(h, c), h)                                          # gates start at 0


@pytest.mark.parametrize("size,patch,channels", [(7, 1, 4), (28, 4, 1), (28, 2, 1), (8, 2, 3)])
def test_shapes_across_sizes_and_patches(size, patch, channels):
    model = DiT(input_size=size, patch=patch, in_channels=channels, dim=32, depth=2, heads=4, num_classes=5)
    for p in model.final.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, channels, size, size)
    out = model(x, torch.tensor([3, 700]), torch.tensor([0, 4]))
    assert out.shape == x.shape and out.abs().sum() > 0
    maps = model.attention_maps(x, torch.tensor([3, 700]))
    n = (size // patch) ** 2
    assert maps.shape == (2, 2, 4, n, n)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 4, n))


def test_conditioning_changes_the_output_after_a_few_steps_and_null_label_is_cond_none():
    torch.manual_seed(0)
    model = DiT(input_size=7, patch=1, in_channels=4, dim=32, depth=2, heads=4, num_classes=3)
    s = schedules.NoiseSchedule.cosine(100)
    x0 = torch.randn(64, 4, 7, 7, generator=torch.Generator().manual_seed(1))
    x0[:32] += 1.0                                        # two "classes" that differ in mean
    y = torch.tensor([0] * 32 + [1] * 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(15):
        loss = diffusion_loss(model, x0, s, cond=y, p_uncond=0.2, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(2, 4, 7, 7)
    t = torch.tensor([50, 50])
    out0, out1 = model(x, t, torch.tensor([0, 0])), model(x, t, torch.tensor([1, 1]))
    assert (out0 - out1).abs().max() > 1e-3
    torch.testing.assert_close(model(x, t, None), model(x, t, torch.tensor([3, 3])))


def test_bad_input_is_named():
    model = DiT(input_size=7, patch=1, in_channels=4, dim=32, depth=1, heads=4, num_classes=10)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4, 7, 7\)"):
        model(torch.zeros(2, 3, 7, 7), t)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4, 7, 7\)"):
        model(torch.zeros(2, 4, 8, 8), t)
    with pytest.raises(ValueError, match="labels must be in"):
        model(torch.zeros(2, 4, 7, 7), t, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="integer label"):
        model(torch.zeros(2, 4, 7, 7), t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="divisible by heads"):
        DiT(dim=36, heads=8)


def test_flop_counter_matches_a_hand_count_for_one_linear_layer():
    class LinearDenoiser(torch.nn.Module):
        num_classes = 0

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(49 * 4, 49 * 4)

        def forward(self, x, t, cond=None):
            return self.lin(x.flatten(1)).reshape(x.shape)

    # one (B × 196) @ (196 × 196) product: 2 FLOPs per multiply–add
    assert profiling.flops_per_forward(LinearDenoiser(), (4, 7, 7), batch=3) == 2 * 3 * 196 * 196


def test_dit_flops_grow_with_size_and_tokens():
    f = {name: profiling.flops_per_forward(DiT(input_size=7, patch=1, in_channels=4, **cfg), (4, 7, 7))
         for name, cfg in DIT_CONFIGS.items()}
    assert f["mini-XS"] < f["mini-S"] < f["mini-M"]
    counts = {}
    for p in (4, 2):
        net = DiT(input_size=28, patch=p, in_channels=1, **DIT_CONFIGS["mini-XS"])
        counts[p] = (profiling.flops_per_forward(net, (1, 28, 28)),
                     profiling.flops_per_forward(net, (1, 28, 28), attention=False))
    assert counts[2][1] > 3.5 * counts[4][1]              # 196 tokens vs 49: ≈4× the linear work
    attention = {p: with_attn - without for p, (with_attn, without) in counts.items()}
    assert attention[2] == 16 * attention[4]              # 4× the tokens: 16× the attention (L² per head)


@pytest.mark.skipif(not __import__("diffusion_course").pretrained.path_for("fmnist-ldm-dit").exists(),
                    reason="fmnist-ldm-dit checkpoint not trained yet")
def test_shipped_latent_dit_loads_samples_and_records_its_fid():
    from diffusion_course import latent, pretrained

    ldm = pretrained.load("fmnist-ldm-dit", device="cpu")
    man = pretrained.manifest("fmnist-ldm-dit")
    assert isinstance(ldm, latent.LatentDiffusion) and isinstance(ldm.model, DiT) and ldm.model.num_tokens == 49
    assert man["steps"] == pretrained.RECIPES["fmnist-ldm-dit"].train["steps"]
    assert man["metrics"]["fid_cond"] > man["metrics"]["floor_balanced"] > 0
    x = ldm.sample(4, cond=torch.tensor([0, 1, 2, 3]), steps=5, generator=torch.Generator().manual_seed(0),
                   progress=False)
    assert x.shape == (4, 1, 28, 28) and torch.isfinite(x).all()
