"""Text conditioning: tokeniser, text encoder, cross-attention (shapes and padding masks), the
captioned-shapes dataset and its rule-based checker, and the text-to-image U-Net."""
import pytest
import torch

from diffusion_course import guidance, losses, sampling, shapes
from diffusion_course.nn import CrossAttention, TextEncoder, TextToImageUNet
from diffusion_course.schedules import NoiseSchedule
from diffusion_course.tokenizer import WordTokenizer

TOK = WordTokenizer(shapes.VOCAB, max_length=10)


# --------------------------------------------------------------------------- tokeniser
def test_round_trip_on_every_kind_of_caption():
    _, captions = shapes.make_dataset(200, seed=3, allow_held_out=True)
    ids = TOK(captions)
    assert ids.shape == (200, 10) and ids.dtype == torch.long
    assert (ids[:, 0] == TOK.start_id).all()
    assert TOK.decode(ids) == captions


def test_normalisation_and_padding():
    ids = TOK.encode("  A Red   circle. ")
    assert TOK.decode(ids) == "a red circle"
    assert ids.tolist() == [1, TOK.stoi["a"], TOK.stoi["red"], TOK.stoi["circle"]] + [0] * 6
    assert TOK.tokens(ids)[:5] == ["<start>", "a", "red", "circle", "<pad>"]


def test_empty_prompt_is_the_null_caption():
    assert TOK.encode("").tolist() == [1] + [0] * 9
    torch.testing.assert_close(TOK.null(3), TOK(["", "", ""]))


@pytest.mark.parametrize("prompt, message", [
    ("a red circle!", "characters"),
    ("a crimson circle", "unknown word 'crimson'"),
    ("a red circel", "did you mean circle"),
    ("a red circle above a blue square above a red", "at most 9"),
])
def test_bad_prompts_get_clear_errors(prompt, message):
    with pytest.raises(ValueError, match=message):
        TOK(prompt)


def test_bad_construction_and_decode():
    with pytest.raises(ValueError):
        WordTokenizer(["Red"])
    with pytest.raises(ValueError):
        WordTokenizer(["red"], max_length=1)
    with pytest.raises(TypeError):
        TOK.encode(3)
    with pytest.raises(ValueError, match="token ids"):
        TOK.decode(torch.tensor([1, 99]))
    with pytest.raises(ValueError, match="no prompts"):
        TOK([])


# --------------------------------------------------------------------------- cross-attention
def _perturbed(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)  # break zero-inits so the layer does something
    return module


def test_cross_attention_shapes_and_weights():
    layer = _perturbed(CrossAttention(32, context_dim=16, heads=4))
    x, ctx = torch.randn(2, 32, 4, 4), torch.randn(2, 5, 16)
    mask = torch.tensor([[True, True, True, False, False], [True, True, True, True, True]])
    layer.store_attention = True
    out = layer(x, ctx, mask)
    assert out.shape == x.shape and not torch.allclose(out, x)
    w = layer.last_attention
    assert w.shape == (2, 16, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 16))
    assert (w[0, :, 3:] == 0).all() and (w[1] > 0).all()
    layer.store_attention = False
    torch.testing.assert_close(layer(x, ctx, mask), out, atol=1e-5, rtol=1e-5)  # fused path = explicit path


def test_padding_tokens_cannot_leak_into_the_image():
    layer = _perturbed(CrossAttention(32, context_dim=16, heads=4)).eval()
    x, ctx = torch.randn(1, 32, 4, 4), torch.randn(1, 5, 16)
    mask = torch.tensor([[True, True, False, False, False]])
    ctx2 = ctx.clone()
    ctx2[:, 2:] = torch.randn(1, 3, 16) * 10
    torch.testing.assert_close(layer(x, ctx, mask), layer(x, ctx2, mask))
    assert not torch.allclose(layer(x, ctx, None), layer(x, ctx2, None))


def test_cross_attention_rejects_bad_masks():
    layer = CrossAttention(32, context_dim=16)
    x, ctx = torch.randn(2, 32, 4, 4), torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="bool"):
        layer(x, ctx, torch.ones(2, 3))
    with pytest.raises(ValueError, match="at least one"):
        layer(x, ctx, torch.tensor([[True, False, False], [False, False, False]]))


def test_cross_attention_starts_as_identity():
    layer = CrossAttention(32, context_dim=16)
    x = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(layer(x, torch.randn(2, 3, 16)), x)


def test_text_encoder_ignores_padding_length_and_checks_input():
    enc = TextEncoder(TOK.vocab_size, max_length=12, dim=32, layers=2).eval()
    short = WordTokenizer(shapes.VOCAB, max_length=8)("a red circle above a blue square")
    long = TOK("a red circle above a blue square")
    (c1, m1), (c2, m2) = enc(short), enc(long)
    assert c1.shape == (1, 8, 32) and m1.sum() == 8 and m2.sum() == 8
    torch.testing.assert_close(c1[m1], c2[m2], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="int64"):
        enc(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="token ids"):
        enc(torch.tensor([[1, 500]]))


# --------------------------------------------------------------------------- the model
def _tiny_model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TextToImageUNet(TOK.vocab_size, TOK.max_length, text_dim=32, in_channels=3, channels=(16, 32),
                                attention_levels=(1,), cross_attention_levels=(0, 1), patch=2)
    return _perturbed(model)  # zero-initialised output layers would make every output 0


def test_text_unet_shapes_null_and_errors():
    model = _tiny_model()
    x = torch.randn(2, 3, 32, 32)
    ids = TOK(["a red circle", "a blue square left of a green triangle"])
    assert model(x, torch.tensor([3, 700]), ids).shape == x.shape
    null = model.null_cond(ids)
    torch.testing.assert_close(null, TOK.null(2))
    torch.testing.assert_close(model(x, torch.tensor([3, 700])), model(x, torch.tensor([3, 700]), null))
    assert not torch.allclose(model(x, torch.tensor([3, 700]), ids), model(x, torch.tensor([3, 700]), null))
    assert len(model.cross_attention_layers()) == 7  # per level: 1 down + 2 up, and 1 in the middle
    with pytest.raises(ValueError, match="token ids"):
        model(x, torch.tensor([3, 700]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="context"):
        model.unet(x, torch.tensor([3, 700]))


def test_caption_dropout_uses_the_empty_caption():
    seen = []

    class Spy(torch.nn.Module):
        def null_cond(self, cond):
            return TOK.null(cond.shape[0])

        def forward(self, x, t, cond):
            seen.append(cond.clone())
            return torch.zeros_like(x)

    ids = TOK(["a red circle"] * 400)
    losses.diffusion_loss(Spy(), torch.zeros(400, 3, 4, 4), NoiseSchedule.cosine(100), cond=ids, p_uncond=0.25,
                          generator=torch.Generator().manual_seed(0))
    dropped = (seen[0] == TOK.null(1)).all(1)
    kept = (seen[0] == ids[:1]).all(1)
    assert (dropped | kept).all() and 0.18 < dropped.float().mean() < 0.32


def test_guidance_and_attention_recording_work_with_the_text_model():
    model = _tiny_model().eval()
    ids = TOK(["a red circle above a blue square", "a yellow triangle"])
    guided = guidance.classifier_free(model, ids, 3.0)
    with torch.no_grad(), model.record_attention() as layers:
        x = sampling.ddim_sample(guided, torch.randn(2, 3, 32, 32), NoiseSchedule.cosine(1000), steps=3,
                                 progress=False, clip_denoised=True)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()
    # the last call saw the batched (null, cond) pair: 4 rows, each a distribution over 10 tokens
    w = layers[0].last_attention
    assert w.shape[0] == 4 and w.shape[-1] == 10
    torch.testing.assert_close(w[:2, :, 0], torch.ones_like(w[:2, :, 0]))   # null caption: all on <start>
    assert (w[2:, :, 1:4].sum(-1) > 0.01).all()                            # the prompt's words get attention
    assert all(not m.store_attention for m in layers)


# --------------------------------------------------------------------------- dataset and checker
def test_dataset_is_deterministic_and_holds_out_combinations():
    a, ca = shapes.make_dataset(300, seed=5)
    b, cb = shapes.make_dataset(300, seed=5)
    assert ca == cb and torch.equal(a, b)
    assert a.shape == (300, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert not any(shapes.parse_caption(c).is_held_out() for c in ca)
    assert shapes.parse_caption("a red circle above a blue triangle").is_held_out()
    assert 0.1 < sum(shapes.parse_caption(c).second is None for c in ca) / 300 < 0.3


def test_checker_reads_real_renders_correctly():
    x, captions = shapes.make_dataset(600, seed=11, allow_held_out=True)
    rates = shapes.match_rates(x, captions)
    assert rates["all"] >= 0.99, rates


def test_checker_rejects_wrong_captions():
    x, captions = shapes.make_dataset(200, seed=12, p_single=0.0)
    def swap_relation(c):
        for a, b in (("above", "below"), ("left of", "right of")):
            if a in c:
                return c.replace(a, b)
            if b in c:
                return c.replace(b, a)
    wrong_rel = [swap_relation(c) for c in captions]
    wrong_shape = [c.replace("circle", "TMP").replace("square", "circle").replace("TMP", "square") for c in captions]
    assert shapes.match_rates(x, wrong_rel)["relation"] < 0.02
    changed = [i for i, (c, w) in enumerate(zip(captions, wrong_shape)) if c != w]
    assert shapes.match_rates(x[changed], [wrong_shape[i] for i in changed])["shapes"] < 0.02
    assert shapes.match_rates(-torch.ones(3, 3, 32, 32), captions[:3])["all"] == 0.0  # a blank image


def test_checker_reads_generated_shapes_as_a_person_labelled_them():
    """96 samples of the shipped shapes-t2i (guidance 1–6, DDIM-25/30), every object's shape labelled by eye, blind
    and held out from the calibration of the reader's thresholds. Generated squares have soft corners: the earlier
    fill-ratio rule read 11 of 159 labelled objects wrong here (148/159, 93 %), mostly squares as circles."""
    from diffusion_course import records

    rec = records.load("shapes_checker_labelled")
    images = records.images("shapes_checker_labelled")["images"]
    assert images.shape == (96, 3, 32, 32) and len(rec["labels"]) == 96
    acc = shapes.shape_reading_accuracy(images, rec["labels"])
    assert acc["n"] >= 150 and acc["missed"] <= 2, acc
    assert acc["accuracy"] >= 0.98, acc            # measured 158 / 159
    assert min(acc[f"accuracy_{s}"] for s in shapes.SHAPES) >= 0.95, acc
    assert acc["correct"] == rec["measured"]["held_out_corner_rule"]["correct"], (acc, rec["measured"])


def test_shape_features_and_soft_edges():
    import random

    import torch.nn.functional as F

    rng = random.Random(0)
    blur = (torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16)[None, None]
    for shape in shapes.SHAPES:
        for color in shapes.COLORS:
            img = shapes.render(shapes.Scene(shapes.Item(color, shape)), rng)
            f = shapes.shape_features(shapes.color_masks(img)[color])
            assert set(f) == {"fill", "top_share", "corners"} and all(0 <= v <= 1 for v in f.values())
            if shape == "circle":
                assert f["corners"] < 0.35, f
            elif shape == "square":
                assert f["corners"] > 0.6 and f["fill"] > 0.9, f
            else:
                assert f["top_share"] < 0.36, f
            soft = F.conv2d(img[:, None], blur, padding=1)[:, 0]      # softened edges: still the same shape
            blobs = shapes.read_scene(soft)
            assert [(b.color, b.shape) for b in blobs] == [(color, shape)]
    # stray pixels of the same hue far away (a tinted edge of another object) do not change the reading
    img = shapes.render(shapes.Scene(shapes.Item("yellow", "circle")), random.Random(3))
    mask = shapes.color_masks(img)["yellow"].clone()
    mask[0, 0] = mask[31, 31] = True
    assert shapes.shape_features(mask) == shapes.shape_features(shapes.color_masks(img)["yellow"])
    with pytest.raises(ValueError, match="empty"):
        shapes.shape_features(torch.zeros(32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="label dicts"):
        shapes.shape_reading_accuracy(img[None], [])
    with pytest.raises(ValueError, match="unknown colours"):
        shapes.shape_reading_accuracy(img[None], [{"purple": "circle"}])
    assert shapes.shape_reading_accuracy(img[None], [{"yellow": "circle", "red": "?"}])["accuracy"] == 1.0


def test_parse_caption_errors():
    assert shapes.parse_caption("A green square right of a red circle.").relation == "right of"
    for bad in ("a purple circle", "two red circles", "a red circle above a red square"):
        with pytest.raises(ValueError):
            shapes.parse_caption(bad)
    with pytest.raises(ValueError, match="RGB"):
        shapes.read_scene(torch.zeros(1, 32, 32))


# --------------------------------------------------------------------------- the shipped model
# Measured on the shipped 15000-step checkpoint with exactly this test's prompts, noise and sampler
# (32 two-shape prompts, DDIM-15): s=3 gives colours 0.91, all attributes 0.34; s=0 gives 0.09 / 0.00.
MIN_RATES = {"colors": 0.6, "all": 0.15}

t2i_shipped = pytest.mark.skipif(not __import__("diffusion_course.pretrained").pretrained.path_for("shapes-t2i").exists(),
                                 reason="shapes-t2i not shipped")


@t2i_shipped
@torch.no_grad()
def test_shipped_text_model_draws_what_the_prompt_says():
    """Measured on the shipped checkpoint (manifest: see shapes-t2i.json); the bounds sit well below
    the measured rates so that only a real regression fails, yet far above what noise achieves."""
    import random

    from diffusion_course import pretrained

    model = pretrained.load("shapes-t2i", device="cpu")
    schedule = model.schedule
    assert pretrained.manifest("shapes-t2i")["reproduce"] == "python -m diffusion_course.train shapes-t2i"
    rng = random.Random(123)
    prompts = [shapes.random_scene(rng, p_single=0.0).caption() for _ in range(32)]
    x_T = torch.randn((32, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    out = {}
    for s in (0.0, 3.0):
        xs = sampling.ddim_sample(guidance.classifier_free(model, model.tokenizer(prompts), s), x_T, schedule,
                                  steps=15, progress=False, clip_denoised=True)
        out[s] = shapes.match_rates(xs, prompts)
    assert out[0.0]["all"] < 0.2, out           # unconditional samples rarely match a random prompt
    assert out[3.0]["colors"] >= MIN_RATES["colors"], out
    assert out[3.0]["all"] >= MIN_RATES["all"], out
