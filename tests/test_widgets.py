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
