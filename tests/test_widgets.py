"""The forward-process explorer, built headless: slider moves change the panels; buttons play."""
import pytest
import torch

from diffusion_course import schedules, widgets
from diffusion_course.widgets import ForwardExplorer


@pytest.fixture
def explorer():
    g = torch.Generator().manual_seed(0)
    data = torch.rand(200, 1, 28, 28, generator=g) * 2 - 1
    images = {"a": data[3].clone(), "b": torch.rand(1, 28, 28, generator=g) * 2 - 1}
    return ForwardExplorer(images, data, {"cosine": schedules.NoiseSchedule.cosine(),
                                          "linear": schedules.NoiseSchedule.linear()}, frames=10)


def test_slider_changes_panels_and_equation(explorer):
    before = [bytes(p.value) for p in explorer.panels]
    explorer.t_slider.value = 999
    after = [bytes(p.value) for p in explorer.panels]
    assert before[0] == after[0]            # x0 panel unchanged
    assert before[1] != after[1]            # x_t changed
    assert before[2] != after[2]            # the perfect denoiser's guess changed
    explorer.t_slider.value = 600
    st = explorer.state()
    ab = schedules.NoiseSchedule.cosine().alpha_bar[600].item()
    assert st["alpha_bar"] == pytest.approx(ab)
    assert f"{ab ** 0.5:.3f}" in explorer.equation.value and "t = 600" in explorer.equation.value


def test_perfect_denoiser_snaps_to_training_image_at_small_t(explorer):
    explorer.image_menu.value = "a"  # a training image
    explorer.t_slider.value = 5
    st = explorer.state()
    assert st["top_index"] == 3 and st["top_weight"] > 0.99 and st["mse"] < 1e-4
    explorer.t_slider.value = 999   # no information left: close to the data mean, far from x0
    assert explorer.state()["top_weight"] < 0.2


def test_schedule_menu(explorer):
    explorer.t_slider.value = 300
    cos = explorer.state()["alpha_bar"]
    explorer.schedule_menu.value = "linear"
    assert explorer.state()["alpha_bar"] == pytest.approx(schedules.NoiseSchedule.linear().alpha_bar[300].item())
    assert explorer.state()["alpha_bar"] != cos


def test_forward_and_reverse_buttons(explorer):
    explorer.forward_button.click()
    assert widgets.is_playing(explorer.clock) and explorer.direction == 1
    for tick in range(1, 30):  # the front end advances the Play widget; we do it by hand
        explorer.clock.value = tick
    assert explorer.t_slider.value == 999 and not widgets.is_playing(explorer.clock)
    explorer.reverse_button.click()
    explorer.clock.value = 1
    assert explorer.t_slider.value == 999 - explorer.delta
    for tick in range(2, 30):
        explorer.clock.value = tick
    assert explorer.t_slider.value == 0


def test_static_strip(explorer):
    fig = explorer.strip(ts=(0, 500, 999))
    assert len(fig.axes) == 9
    assert explorer.t_slider.value == 0  # restored


def test_bad_input():
    data = torch.zeros(5, 1, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        ForwardExplorer({"x": torch.zeros(1, 5, 5)}, data, {"c": schedules.NoiseSchedule.cosine(10)})
    with pytest.raises(ValueError, match="same T"):
        ForwardExplorer({"x": torch.zeros(1, 4, 4)}, data,
                        {"a": schedules.NoiseSchedule.cosine(10), "b": schedules.NoiseSchedule.cosine(20)})
    with pytest.raises(ValueError):
        ForwardExplorer({}, data, {"c": schedules.NoiseSchedule.cosine(10)})


def test_sampler_explorer_resamples_on_every_control():
    from diffusion_course import gmm
    from diffusion_course.widgets import SamplerExplorer

    s = schedules.NoiseSchedule.cosine(100)

    class Net(torch.nn.Module):  # an exact oracle for images drawn around two grey levels
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            means = torch.stack([torch.full((16,), -0.5), torch.full((16,), 0.5)])
            self.oracle = gmm.GaussianMixture(means, torch.tensor([0.1, 0.1])).oracle_model(s)

        def forward(self, x, t, cond=None):
            return self.oracle(x.flatten(1), t).reshape(x.shape).float()

    ex = SamplerExplorer(Net(), s, n=4, class_names=["a", "b"], image_shape=(1, 4, 4), max_steps=50)
    first = ex.last.clone()
    ex.seed.value = 1
    assert not torch.equal(first, ex.last)
    ex.seed.value = 0
    assert torch.equal(first, ex.last)  # η = 0: same seed, same images
    ex.eta.value = 1.0
    assert not torch.equal(first, ex.last)
    ex.spacing.value = "leading"
    assert "leading" in ex.info.value and "steps" in ex.info.value
    ex.steps.value = 5
    assert "5 steps" in ex.info.value
    with pytest.raises(ValueError):
        SamplerExplorer(Net(), s, n=0)


def test_guidance_explorer_class_and_text_modes():
    from diffusion_course import gmm, shapes
    from diffusion_course.nn import TextToImageUNet
    from diffusion_course.tokenizer import WordTokenizer
    from diffusion_course.widgets import GuidanceExplorer

    s = schedules.NoiseSchedule.cosine(100)
    means = torch.stack([torch.full((16,), -0.5), torch.full((16,), 0.5)])
    oracle = gmm.class_conditional_oracle(gmm.GaussianMixture(means, torch.tensor([0.2, 0.2])), s)

    class Net(torch.nn.Module):  # the exact class-conditional oracle, as a module with parameters
        num_classes, objective = 2, "eps"

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t, cond=None):
            return oracle(x.flatten(1).double(), t, cond).reshape(x.shape).float()

    ex = GuidanceExplorer(Net(), s, class_names=["dark", "light"], n=4, image_shape=(1, 4, 4), steps=10,
                          initial_scale=1.0)
    dark = ex.last.mean().item()
    ex.condition.value = "light"
    light = ex.last.mean().item()
    assert dark < -0.3 and light > 0.3
    ex.scale.value = 4.0
    assert ex.last.mean().item() > light and "guided" in ex.info.value  # pushed away from the other class
    ex.scale.value = 0.0
    assert "unconditional" in ex.info.value

    tok = WordTokenizer(shapes.VOCAB, 10)
    torch.manual_seed(0)
    text_model = TextToImageUNet(tok.vocab_size, 10, text_dim=16, in_channels=3, channels=(16, 32),
                                 attention_levels=(), cross_attention_levels=(1,), patch=2)
    tx = GuidanceExplorer(text_model, s, tokenizer=tok, n=2, image_shape=(3, 8, 8), steps=2)
    assert tx.last.shape == (2, 3, 8, 8)
    before = tx.last
    tx.condition.value = "a purple circle"
    assert "unknown word" in tx.info.value and tx.last is before
    with pytest.raises(ValueError, match="exactly one"):
        GuidanceExplorer(Net(), s)


def test_guidance_explorer_static_figures_wrap_titles_and_restore_without_resampling():
    """Chapter 4's static stand-ins: the class explorer's figure, and the text explorer's with long prompts as titles
    that must not run into each other; the grid the widget showed comes back without sampling it again."""
    from diffusion_course import shapes
    from diffusion_course.nn import TextToImageUNet
    from diffusion_course.tokenizer import WordTokenizer
    from diffusion_course.widgets import GuidanceExplorer

    s = schedules.NoiseSchedule.cosine(100)
    calls = []

    class Net(torch.nn.Module):  # counts its calls; the class shifts the prediction
        num_classes, objective = 2, "eps"

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t, cond=None):
            calls.append(x.shape[0])
            shift = torch.zeros(x.shape[0]) if cond is None else (cond.float() - 0.5) * (cond < 2)
            return 0.1 * x + shift[:, None, None, None]

    ex = GuidanceExplorer(Net(), s, class_names=["dark", "light"], n=4, image_shape=(1, 4, 4), steps=3)
    shown, info, png = ex.last.clone(), ex.info.value, ex.image.value
    calls.clear()
    fig = ex.figure([{"class": "light", "scale": 0.0}, {"class": "light", "scale": 3.0}], progress=False)
    assert [a.get_title() for a in fig.axes] == ["class = light, scale = 0.0", "class = light, scale = 3.0"]
    assert len(calls) == 3 + 3                          # two panels of 3 steps each, nothing re-sampled afterwards
    assert torch.equal(ex.last, shown) and ex.info.value == info and ex.image.value == png
    assert ex.condition.value == "dark" and ex.scale.value == 3.0

    tok = WordTokenizer(shapes.VOCAB, 10)
    torch.manual_seed(0)
    text_model = TextToImageUNet(tok.vocab_size, 10, text_dim=16, in_channels=3, channels=(16, 32),
                                 attention_levels=(), cross_attention_levels=(1,), patch=2)
    tx = GuidanceExplorer(text_model, s, tokenizer=tok, n=2, image_shape=(3, 8, 8), steps=2)
    long = "a yellow triangle right of a green square"
    fig = tx.figure([{"prompt": long, "scale": 1.0}, {"prompt": long, "scale": 3.0}, {"scale": 5.0}], size=2.0,
                    progress=False)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles[0].replace("\n", " ") == f"“{long}” scale = 1.0" and titles[2] == "scale = 5.0"
    # every title line fits its panel: no line longer than the width the panel allows (13 characters per inch)
    assert all(len(line) <= 26 for t in titles for line in t.split("\n")), titles
    assert tx.condition.value == "a red circle above a blue square"        # restored


def test_network_panel_beside_the_perfect_denoiser():
    from diffusion_course import gmm

    s = schedules.NoiseSchedule.cosine(1000)
    g = torch.Generator().manual_seed(0)
    data = torch.rand(50, 1, 4, 4, generator=g) * 2 - 1

    class Oracle(torch.nn.Module):  # an exact ε-model of a one-Gaussian "data set" around 0.3
        objective = "eps"

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.o = gmm.GaussianMixture(torch.full((1, 16), 0.3), torch.tensor([0.05])).oracle_model(s)

        def forward(self, x, t, cond=None):
            return self.o(x.flatten(1), t).reshape(x.shape).float()

    ex = ForwardExplorer({"a": data[0]}, data, {"cosine": s, "linear": schedules.NoiseSchedule.linear()},
                         model=Oracle(), model_schedule=s)
    assert len(ex.panels) == 4
    ex.t_slider.value = 999
    st = ex.state()
    assert st["x0_net"].shape == data[0].shape
    assert (st["x0_net"] - 0.3).abs().max() < 0.2    # from pure noise the network says "the data mean"
    assert "network" in ex.captions[3].value and f"{st['mse_net']:.3f}" in ex.captions[3].value
    before = bytes(ex.panels[3].value)
    ex.t_slider.value = 10
    assert bytes(ex.panels[3].value) != before
    ex.schedule_menu.value = "linear"      # the network is given its own schedule's nearest-ᾱ timestep
    assert ex.state()["x0_net"].shape == data[0].shape
    fig = ex.strip(ts=(0, 999))
    assert len(fig.axes) == 8
    with pytest.raises(ValueError, match="together"):
        ForwardExplorer({"a": data[0]}, data, {"cosine": s}, model=Oracle())


def _oracle_image_model(s):
    from diffusion_course import gmm

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            means = torch.stack([torch.full((16,), -0.5), torch.full((16,), 0.5)])
            self.oracle = gmm.GaussianMixture(means, torch.tensor([0.1, 0.1])).oracle_model(s)

        def forward(self, x, t, cond=None):
            return self.oracle(x.flatten(1), t).reshape(x.shape).float()

    return Net()


def test_grid_explorers_are_sized_and_have_a_static_figure():
    from diffusion_course.widgets import SamplerExplorer

    s = schedules.NoiseSchedule.cosine(100)
    ex = SamplerExplorer(_oracle_image_model(s), s, n=4, image_shape=(1, 4, 4), max_steps=50, scale=3)
    # 2×2 grid of 4×4 images with 1-pixel padding = 11 pixels wide, shown at 3× its size — not stretched
    assert ex.image.layout.width == "33px" and ex.image.layout.max_width == "100%"
    first = ex.last.clone()
    fig = ex.figure([{"steps": 2}, {"steps": 20, "seed": 3}, {"eta": 1.0}])
    assert len(fig.axes) == 3 and fig.axes[1].get_title() == "steps = 20, seed = 3"
    assert torch.equal(ex.last, first) and ex.steps.value == 20 and ex.seed.value == 0   # restored
    with pytest.raises(ValueError, match="unknown control"):
        ex.figure([{"stepz": 3}])


def test_two_step_explorer_moves_the_second_call_and_has_a_static_figure():
    """Chapter 7's explorer: the intermediate time of the 2-step consistency sampler, on a tiny consistency model."""
    import pytest
    import torch

    from diffusion_course import consistency as C
    from diffusion_course.nn import UNet
    from diffusion_course.schedules import NoiseSchedule
    from diffusion_course.widgets import TwoStepExplorer

    s = NoiseSchedule.cosine(1000)
    torch.manual_seed(0)
    net = UNet(in_channels=1, channels=(8, 16), attention_levels=(), num_classes=2, patch=2)
    with torch.no_grad():   # make the output depend on the input (the last conv starts at zero)
        net.out[-1].weight.normal_(0, 0.3)
    cm = C.ConsistencyModel(net, s, grid_size=20, head="raw").eval()
    ex = TwoStepExplorer(cm, n=4, class_names=["a", "b"])
    assert ex.t_mid.value == 499 and 999 not in ex.t_mid.options and 0 not in ex.t_mid.options
    first = ex.last.clone()
    ex.t_mid.value = 249
    assert not torch.equal(first, ex.last) and "t = 249" in ex.info.value
    # the same setting gives the same picture (seeded), a new seed another one
    ex.t_mid.value = 499
    assert torch.equal(first, ex.last)
    ex.seed.value = 3
    assert not torch.equal(first, ex.last)
    fig = ex.figure([{"t_mid": 249}, {"t_mid": 749}])
    assert [a.get_title() for a in fig.axes if a.get_title()] == ["t_mid = 249", "t_mid = 749"]
    with pytest.raises(ValueError, match="grid times"):
        TwoStepExplorer(cm, initial_t=500)
    with pytest.raises(TypeError, match="consistency model"):
        TwoStepExplorer(net)


def test_velocity_field_explorer_redraws_and_measures_the_error():
    """Chapter 9's explorer: exact and learned velocity arrows at a chosen t, with the learned field's error."""
    import pytest
    import torch

    from diffusion_course import flow, gmm
    from diffusion_course.widgets import VelocityFieldExplorer

    mix = gmm.GaussianMixture.ring(4, radius=2.0, std=0.3)
    data = mix.sample(500, generator=torch.Generator().manual_seed(0))[0].float()

    def exact(x, t):
        return flow.exact_velocity(mix, x, t).float()

    ex = VelocityFieldExplorer(exact, exact, data, t=0.5)
    assert ex.relative_error(0.5) == 0.0 and ex.relative_error(0.05) == 0.0
    first = ex.image.value
    ex.t.value = 0.2
    assert ex.image.value != first and "Δt" in ex.info.value
    # a field off by a constant is off by exactly that, relative to the exact field's mean norm
    shifted = VelocityFieldExplorer(lambda x, t: exact(x, t) + torch.tensor([0.5, 0.0]), exact, data)
    x_t = 0.5 * shifted.data + 0.5 * shifted.noise
    expected = 0.5 / float(exact(x_t, torch.full((len(x_t),), 0.5)).norm(dim=1).mean())
    assert shifted.relative_error(0.5) == pytest.approx(expected, rel=1e-5)
    # arrows are clipped: none longer than max_length
    long = shifted._arrows(torch.tensor([[100.0, 0.0], [0.1, 0.0]]))
    assert float(long.norm(dim=1).max()) <= shifted.max_length + 1e-6 and float(long[1, 0]) < 0
    fig = ex.figure((0.9, 0.1))
    assert [a.get_title().split(":")[0] for a in fig.axes] == ["t = 0.90", "t = 0.10"]
    with pytest.raises(ValueError, match="data"):
        VelocityFieldExplorer(exact, exact, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="t"):
        VelocityFieldExplorer(exact, exact, data, t=1.5)
    with pytest.raises(ValueError, match="learned field returned non-finite"):
        VelocityFieldExplorer(lambda x, t: exact(x, t) / 0.0, exact, data)


def test_grid_explorers_say_they_are_busy_before_sampling():
    """A change shows a busy message at once; the grid replaces it when it is done (issue 39: explorers that answer)."""
    import torch

    from diffusion_course.nn import UNet
    from diffusion_course.schedules import NoiseSchedule
    from diffusion_course.widgets import SamplerExplorer

    torch.manual_seed(0)
    net = UNet(in_channels=1, channels=(8, 16), attention_levels=(), num_classes=0).eval()
    seen, holder = [], []

    class Spy(torch.nn.Module):
        """The network, noting what the explorer's info line says while it is called."""

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t, cond=None):
            if holder:
                seen.append(holder[0].info.value)
            return self.net(x, t)

    ex = SamplerExplorer(Spy(), NoiseSchedule.cosine(1000), n=2, image_shape=(1, 8, 8))
    holder.append(ex)
    ex.steps.value = 3
    assert seen and all("sampling" in v for v in seen)        # while the model ran, the info said so
    assert "sampling" not in ex.info.value and "3 steps" in ex.info.value


def test_in_a_kernel_a_change_previews_at_once_and_draws_the_full_grid_when_the_controls_rest(monkeypatch):
    """Inside a kernel the draws go on its event loop: a cheap preview first, then the full grid; a newer change
    supersedes the older one's draws (issue 39: an answer while the slider moves, the full grid on release)."""
    import torch

    from diffusion_course import widgets
    from diffusion_course.nn import UNet
    from diffusion_course.schedules import NoiseSchedule

    torch.manual_seed(0)
    net = UNet(in_channels=1, channels=(8, 16), attention_levels=(), num_classes=0).eval()
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t, cond=None):
            calls.append(1)
            return self.net(x, t)

    ex = widgets.SamplerExplorer(Counting(), NoiseSchedule.cosine(1000), n=2, image_shape=(1, 8, 8))

    loop = _fake_kernel_loop(monkeypatch)
    calls.clear()
    ex.steps.value = 7
    assert "⏳" in ex.info.value and not calls                # nothing computed inside the change handler
    ex.steps.value = 9                                       # a second change before the loop ran
    loop.pending.sort(key=lambda p: p[0])
    first_preview = loop.pending[0]
    first_preview[1](*first_preview[2])                      # the first change's preview: superseded, skipped
    assert not calls
    loop.pending.pop(0)
    previews = [p for p in loop.pending if p[2][2]]      # args: (generation, fn, preview)
    previews[-1][1](*previews[-1][2])                        # the newest preview: 2 of the 9 steps
    assert len(calls) == ex.preview_steps and "preview" in ex.info.value and "9 steps follow" in ex.info.value
    grid_before = ex.last
    calls.clear()
    fulls = [p for p in loop.pending if not p[2][2]]
    fulls[-1][1](*fulls[-1][2])                              # the controls rested: the full grid
    assert len(calls) == 9 and "9 steps" in ex.info.value and "preview" not in ex.info.value
    assert ex.last is not grid_before and torch.isfinite(ex.last).all()


def _first_test_garments(n: int = 20):
    from diffusion_course import data

    x, y = data.load_fashion_mnist("test")
    return x[:n], y[:n]


def test_latent_explorer_walks_the_shipped_autoencoders_latent():
    """Chapter 5's explorer on fmnist-vae: α = 0 decodes A's own latent, the pixel blend is the plain mix, a channel
    gain changes only the latent blend, and the static figure restores the controls."""
    import matplotlib.figure
    import matplotlib.pyplot as plt

    from diffusion_course import data, pretrained
    from diffusion_course.widgets import LatentExplorer

    x, y = _first_test_garments()
    vae = pretrained.load("fmnist-vae", device="cpu")
    ex = LatentExplorer(vae, x, y, data.FASHION_CLASSES, a=0, b=2, alpha=0.0)
    with torch.no_grad():
        rec_a = vae.decode(vae.encode(x[:1])[0]).clamp(-1, 1)[0]
    assert torch.allclose(ex.last["latent"], rec_a, atol=1e-5) and torch.equal(ex.last["pixel"], x[0])
    first, png = ex.last["latent"].clone(), ex.panels[2].value
    ex.alpha.value = 0.6
    assert all(torch.isfinite(v).all() for v in ex.last.values())
    assert not torch.equal(ex.last["latent"], first) and ex.panels[2].value != png
    assert torch.allclose(ex.last["pixel"], 0.4 * x[0] + 0.6 * x[2]) and "α = 0.60" in ex.info.value
    blend, pixel = ex.last["latent"].clone(), ex.last["pixel"].clone()
    assert ex.gain.disabled                          # no channel picked: the gain does nothing, and says so
    ex.channel.value = 1
    ex.gain.value = 0.0
    assert not torch.equal(ex.last["latent"], blend) and torch.equal(ex.last["pixel"], pixel)
    assert "channel 1" in ex.info.value and not ex.gain.disabled
    shown = ex.last["latent"].clone()
    fig = ex.figure([{"alpha": 0.0}, {"alpha": 1.0, "channel": -1}], size=1.0)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 4
    assert fig.axes[0].get_title() == "α = 0.00" and fig.axes[1].get_title() == "α = 1.00\nno channel scaled"
    assert ex.alpha.value == 0.6 and ex.channel.value == 1 and torch.equal(ex.last["latent"], shown)   # restored
    with pytest.raises(ValueError, match="alpha=1.5"):
        ex.figure([{"alpha": 1.5}])
    with pytest.raises(ValueError, match="unknown control"):
        ex.figure([{"beta": 0.5}])
    with pytest.raises(ValueError, match="alpha"):
        LatentExplorer(vae, x, alpha=1.5)
    with pytest.raises(ValueError, match="b=50"):
        LatentExplorer(vae, x, b=50)                 # only the 20 images given can be picked
    with pytest.raises(ValueError, match="labels"):
        LatentExplorer(vae, x, y[:5])
    plt.close("all")


def test_attention_explorer_shows_a_tokens_attention_with_one_forward_pass_per_t():
    """Chapter 8's explorer on fmnist-ldm-dit: the heat map is DiT.attention_maps' row for the query token; moving
    the block, the token or the head reuses the forward pass, a new t makes one."""
    import matplotlib.figure
    import matplotlib.pyplot as plt

    from diffusion_course import data, forward, pretrained
    from diffusion_course.widgets import AttentionExplorer

    x, y = _first_test_garments()
    ldm = pretrained.load("fmnist-ldm-dit", device="cpu")
    ex = AttentionExplorer(ldm, x, y, data.FASHION_CLASSES, t=300, row=3, col=3)
    z0 = ldm.encode(x[:1])
    tt = torch.tensor([300])
    z_t = forward.q_sample(z0, tt, ldm.schedule, torch.randn(z0.shape, generator=torch.Generator().manual_seed(0)))
    expected = ldm.model.attention_maps(z_t, tt, y[:1])[-1, 0].mean(0)[3 * 7 + 3].reshape(7, 7)
    assert ex.last.shape == (7, 7) and torch.isfinite(ex.last).all()
    assert torch.allclose(ex.last, expected, atol=1e-5) and float(ex.last.sum()) == pytest.approx(1.0, abs=1e-4)
    calls, net_forward = [], ldm.model.forward
    ldm.model.forward = lambda *a, **k: (calls.append(1), net_forward(*a, **k))[1]
    first, png = ex.last.clone(), ex.panels[2].value
    ex.block.value = 1
    ex.row.value = 0
    ex.head.value = 2
    assert not calls                                  # the same t: no new forward pass
    assert not torch.equal(ex.last, first) and ex.panels[2].value != png and "block 1" in ex.info.value
    ex.t.value = 900
    assert len(calls) == 1 and "t = 900" in ex.info.value and torch.isfinite(ex.last).all()
    ex.t.value = 300
    assert len(calls) == 1                            # seen before: kept
    fig = ex.figure([{"block": 6, "head": -1}, {"t": 900, "block": 6, "head": -1}])
    assert isinstance(fig, matplotlib.figure.Figure)
    assert [a.get_title().split("\n")[0] for a in fig.axes] == ["t = 300, block 6", "t = 900, block 6"]
    assert (ex.t.value, ex.block.value, ex.row.value, ex.head.value) == (300, 1, 0, 2)    # restored
    with pytest.raises(ValueError, match="t=1000"):
        ex.figure([{"t": 1000}])
    with pytest.raises(ValueError, match="block"):
        AttentionExplorer(ldm, x, block=7)
    with pytest.raises(ValueError, match="row"):
        AttentionExplorer(ldm, x, row=7)
    with pytest.raises(TypeError, match="DiT"):
        AttentionExplorer(pretrained.load("fmnist-vae", device="cpu"), x)
    plt.close("all")


def test_panel_explorers_say_they_are_busy_before_recomputing():
    """Chapters 5 and 8: a change shows a ⏳ line at once; the result replaces it when it is drawn."""
    from diffusion_course import pretrained
    from diffusion_course.widgets import AttentionExplorer, LatentExplorer

    x, y = _first_test_garments()
    vae = pretrained.load("fmnist-vae", device="cpu")
    ex = LatentExplorer(vae, x)
    seen, decode = [], vae.decode
    vae.decode = lambda z: (seen.append(ex.info.value), decode(z))[1]
    ex.alpha.value = 0.8
    assert seen and all("⏳" in v for v in seen) and "⏳" not in ex.info.value and "α = 0.80" in ex.info.value

    ldm = pretrained.load("fmnist-ldm-dit", device="cpu")
    ax = AttentionExplorer(ldm, x, y)
    seen.clear()
    net_forward = ldm.model.forward
    ldm.model.forward = lambda *a, **k: (seen.append(ax.info.value), net_forward(*a, **k))[1]
    ax.t.value = 700
    assert seen and all("⏳" in v for v in seen) and "⏳" not in ax.info.value and "t = 700" in ax.info.value


def test_score_field_explorer_draws_both_fields_in_units_of_the_exact_one():
    """Chapter 6's explorer: the error is exactly 0 for the exact score and exactly 1 for twice it; arrows are capped and
    counted; a change says it is busy before drawing; bad input is refused by name."""
    import pytest
    import torch

    from diffusion_course import gmm, sde, schedules
    from diffusion_course.widgets import ScoreFieldExplorer

    mix = gmm.GaussianMixture.ring(k=4, radius=2.0, std=0.2)
    S = sde.DiscreteVPSDE(schedules.NoiseSchedule.cosine(1000))
    exact = mix.sde_score(S)
    data = mix.sample(300, generator=torch.Generator().manual_seed(0))[0]
    ex = ScoreFieldExplorer(exact, exact, S, data, t=0.3, points=8)
    assert ex.relative_error(0.3) == 0.0
    u_e, u_l, capped = ex.arrows(0.3)
    assert capped == 0 and torch.allclose(u_e.norm(dim=1), torch.ones(64, dtype=u_e.dtype))
    double = ScoreFieldExplorer(lambda x, t: 2 * exact(x, t), exact, S, data, points=8)
    assert double.relative_error(0.1) == pytest.approx(1.0, rel=1e-9)     # ‖2s − s‖² / ‖s‖²
    terms = double.error_terms(0.1)      # in ε units both are σ²·E‖s‖²; an error proportional to s has no spread
    assert terms["eps_error"] == pytest.approx(terms["eps_target"]) and terms["se"] == pytest.approx(0.0, abs=1e-12)
    assert terms["eps_target"] == pytest.approx(double.sigma(0.1) ** 2 * terms["score_sq"])
    off = ScoreFieldExplorer(lambda x, t: exact(x, t) + 1.0, exact, S, data, points=8).error_terms(0.1)
    assert 0 < off["se"] < 0.2 * off["relative"]                            # a constant offset: spread over samples
    _, u_l, capped = double.arrows(0.1)
    assert capped == 64 and float(u_l.norm(dim=1).max()) == pytest.approx(1.5)
    seen, holder = [], []
    spy = ScoreFieldExplorer(lambda x, t: (holder and seen.append(holder[0].info.value), exact(x, t))[1], exact, S,
                             data, points=8)
    holder.append(spy)
    first = spy.image.value
    spy.t.value = 0.05
    assert seen and all("⏳" in v for v in seen) and "⏳" not in spy.info.value and "t = 0.050" in spy.info.value
    assert spy.image.value != first
    fig = spy.figure((0.6, 0.02))
    assert [a.get_title().split(",")[0] for a in fig.axes] == ["t = 0.600", "t = 0.020"]
    with pytest.raises(ValueError, match="data"):
        ScoreFieldExplorer(exact, exact, S, torch.zeros(10, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="t"):
        ScoreFieldExplorer(exact, exact, S, data, t=0.001)
    with pytest.raises(TypeError, match="sde"):
        ScoreFieldExplorer(exact, exact, object(), data)
    with pytest.raises(ValueError, match="learned field returned non-finite"):
        ScoreFieldExplorer(lambda x, t: exact(x, t) * float("nan"), exact, S, data, points=8)


def test_forward_explorer_says_it_is_busy_before_recomputing(explorer, monkeypatch):
    from diffusion_course import widgets

    seen, ideal = [], widgets.forward.ideal_denoiser
    monkeypatch.setattr(widgets.forward, "ideal_denoiser",
                        lambda *a, **k: (seen.append(explorer.equation.value), ideal(*a, **k))[1])
    explorer.t_slider.value = 300
    assert seen and all("⏳" in v for v in seen)
    assert "⏳" not in explorer.equation.value and "t = 300" in explorer.equation.value


def test_in_a_kernel_a_menu_change_draws_the_full_grid_without_a_preview(monkeypatch):
    import torch

    from diffusion_course import widgets
    from diffusion_course.nn import UNet
    from diffusion_course.schedules import NoiseSchedule

    torch.manual_seed(0)
    net = UNet(in_channels=1, channels=(8, 16), attention_levels=(), num_classes=0).eval()
    ex = widgets.SamplerExplorer(net, NoiseSchedule.cosine(1000), n=2, image_shape=(1, 8, 8))

    loop = _fake_kernel_loop(monkeypatch)
    ex.spacing.value = "leading"
    assert "⏳" in ex.info.value and [args[2] for _, _, args in loop.pending] == [False]    # one draw, the full one
    _, fn, args = loop.pending[0]
    fn(*args)
    assert "leading timesteps" in ex.info.value and "preview" not in ex.info.value


def test_in_a_kernel_a_dragged_field_slider_draws_only_its_newest_value(monkeypatch):
    """A burst of slider changes (a drag) shows the busy line at once and draws once, at the newest t."""
    import torch

    from diffusion_course import flow, gmm, widgets

    mix = gmm.GaussianMixture.ring(4, radius=2.0, std=0.3)
    data = mix.sample(200, generator=torch.Generator().manual_seed(0))[0].float()
    drawn = []

    def exact(x, t):
        drawn.append(float(t[0]))
        return flow.exact_velocity(mix, x, t).float()

    ex = widgets.VelocityFieldExplorer(exact, exact, data, t=0.5, points=5)

    loop = _fake_kernel_loop(monkeypatch)
    drawn.clear()
    for t in (0.4, 0.3, 0.2):
        ex.t.value = t
    assert "⏳" in ex.info.value and not drawn and len(loop.pending) == 3
    for _, fn, args in loop.pending:
        fn(*args)
    assert drawn and {round(t, 6) for t in drawn} == {0.2} and "t = 0.20" in ex.info.value and "⏳" not in ex.info.value


class _FakeLoop:
    """Stands in for the kernel's event loop: records the draws an explorer schedules, for the test to run."""

    def __init__(self):
        self.pending = []

    def call_later(self, delay, fn, *args):
        self.pending.append((delay, fn, args))


def _fake_kernel_loop(monkeypatch) -> _FakeLoop:
    from diffusion_course import widgets

    loop = _FakeLoop()
    monkeypatch.setattr(widgets, "_kernel_loop", lambda: loop)
    return loop
