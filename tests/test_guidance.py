"""Classifier-free guidance: the formula and its limits, one batched forward per step, the options,
and — on the shipped class-conditional model — that guidance really buys class fidelity."""
import pytest
import torch

from diffusion_course import exercises, guidance, metrics, pretrained, sampling
from diffusion_course.nn import UNet
from diffusion_course.schedules import NoiseSchedule


class CountingModel(torch.nn.Module):
    """A small conditional U-Net that records the batch size of every call."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():  # seeded weights without touching the global RNG of other tests
            torch.manual_seed(0)
            self.net = UNet(in_channels=1, channels=(16, 32), attention_levels=(), num_classes=4)
            for p in self.net.parameters():  # break the zero-init so the output depends on the label
                torch.nn.init.normal_(p, std=0.05)
        self.num_classes, self.objective, self.calls = 4, "eps", []

    def forward(self, x, t, cond=None):
        self.calls.append(x.shape[0])
        return self.net(x, t, cond)


@pytest.fixture
def model():
    return CountingModel().eval()


def _inputs(B=3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 1, 8, 8, generator=g), torch.tensor([900, 500, 10][:B]), torch.tensor([0, 2, 3][:B])


@torch.no_grad()
@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5, 7.5])
def test_formula_matches_separate_passes(model, scale):
    x, t, y = _inputs()
    eps_u = model(x, t, torch.full_like(y, 4))
    eps_c = model(x, t, y)
    expected = eps_u + scale * (eps_c - eps_u)
    torch.testing.assert_close(guidance.classifier_free(model, y, scale)(x, t), expected, atol=1e-5, rtol=1e-5)
    # the same through the batched path (an all-covering interval disables the s = 0 / 1 shortcuts)
    torch.testing.assert_close(guidance.classifier_free(model, y, scale, interval=(0, 999))(x, t), expected,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(guidance.cfg_combine(eps_u, eps_c, scale), expected)
    assert not torch.allclose(eps_u, eps_c)  # the test would be vacuous otherwise


@torch.no_grad()
def test_limits_scale_0_is_unconditional_and_1_is_conditional(model):
    x, t, y = _inputs()
    for shortcut in (None, (0, 999)):  # the one-pass shortcut and the batched two-pass path
        torch.testing.assert_close(guidance.classifier_free(model, y, 0.0, interval=shortcut)(x, t), model(x, t, None),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(guidance.classifier_free(model, y, 1.0, interval=shortcut)(x, t), model(x, t, y),
                                   atol=1e-5, rtol=1e-5)
    model.calls.clear()
    guidance.classifier_free(model, y, 0.0, interval=(0, 999))(x, t)
    assert model.calls == [2 * x.shape[0]]


@torch.no_grad()
def test_one_batched_forward_per_sampler_step(model):
    x, _, y = _inputs()
    guided = guidance.classifier_free(model, y, 3.0)
    model.calls.clear()
    sampling.ddim_sample(guided, x, NoiseSchedule.cosine(1000), steps=7, progress=False)
    assert model.calls == [2 * x.shape[0]] * 7
    model.calls.clear()
    sampling.dpm_solver_2m_sample(guided, x, NoiseSchedule.cosine(1000), steps=5, progress=False)
    assert model.calls == [2 * x.shape[0]] * 5


class ScaledByLabel(torch.nn.Module):
    """ε̂ = x·(1 + label): conditional and unconditional outputs differ a lot (null label = 4)."""
    num_classes, objective = 4, "eps"

    def forward(self, x, t, cond=None):
        return x * (1 + cond.float().reshape(-1, 1, 1, 1))


@torch.no_grad()
def test_rescale_restores_the_conditional_std():
    model = ScaledByLabel()
    x, t, y = _inputs()
    y = torch.tensor([0, 1, 2])
    eps_c = model(x, t, y)
    plain = guidance.classifier_free(model, y, 7.5)(x, t)
    full = guidance.classifier_free(model, y, 7.5, rescale=1.0)(x, t)
    half = guidance.classifier_free(model, y, 7.5, rescale=0.5)(x, t)
    torch.testing.assert_close(full.flatten(1).std(1), eps_c.flatten(1).std(1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(half, 0.5 * (full + plain), rtol=1e-4, atol=1e-5)
    assert (plain.flatten(1).std(1) > 1.5 * eps_c.flatten(1).std(1)).all()  # rescale had work to do


@torch.no_grad()
def test_interval_guides_only_inside(model):
    x, t, y = _inputs()  # t = 900, 500, 10
    got = guidance.classifier_free(model, y, 5.0, interval=(100, 600))(x, t)
    full = guidance.classifier_free(model, y, 5.0)(x, t)
    cond = model(x, t, y)
    torch.testing.assert_close(got[1], full[1])
    torch.testing.assert_close(got[[0, 2]], cond[[0, 2]])


def test_keeps_objective_and_bad_input(model):
    _, _, y = _inputs()
    model.objective = "v"
    assert guidance.classifier_free(model, y, 2.0).objective == "v"
    with pytest.raises(ValueError, match="null"):
        guidance.classifier_free(lambda x, t, c: x, y, 2.0)
    with pytest.raises(ValueError, match="rescale"):
        guidance.classifier_free(model, y, 2.0, rescale=1.5)
    with pytest.raises(ValueError, match="interval"):
        guidance.classifier_free(model, y, 2.0, interval=(500, 100))
    guided = guidance.classifier_free(model, y, 2.0)
    with pytest.raises(ValueError, match="batch size"):
        guided(torch.randn(2, 1, 8, 8), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="bound"):
        guided(torch.randn(3, 1, 8, 8), torch.tensor([5, 5, 5]), y)


def test_exercise_reference_is_the_module_formula():
    assert exercises.check(guidance.cfg_combine, "cfg", verbose=False)
    assert not exercises.check(lambda eps_uncond, eps_cond, scale: eps_cond + scale * (eps_cond - eps_uncond), "cfg",
                               verbose=False)


@pytest.mark.skipif(not pretrained.path_for("fmnist-ddpm").exists(), reason="fmnist-ddpm not shipped")
@torch.no_grad()
def test_guidance_raises_class_accuracy_on_the_pretrained_model():
    model = pretrained.load("fmnist-ddpm", device="cpu")
    schedule = model.schedule
    clf = pretrained.load("fmnist-classifier", device="cpu")
    labels = torch.arange(50) % 10
    x_T = torch.randn((50, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    acc = {}
    for scale in (0.0, 3.0):
        xs = sampling.ddim_sample(guidance.classifier_free(model, labels, scale), x_T, schedule, steps=15,
                                  progress=False, clip_denoised=True)
        acc[scale] = metrics.class_accuracy(clf, xs, labels)
    # unconditional samples match a random label ~10 % of the time; guided ones nearly always
    assert acc[0.0] < 0.3 and acc[3.0] > 0.85, acc
