"""Networks: shapes for several configurations, the null label, clear errors on bad input."""
import pytest
import torch

from diffusion_course.nn import MLPDenoiser, UNet, count_parameters, timestep_embedding


@pytest.mark.parametrize("cfg,size", [
    (dict(channels=(16, 32), attention_levels=(1,), patch=2), 28),
    (dict(channels=(16, 32, 32), attention_levels=(2,), patch=1), 28),
    (dict(channels=(16, 32, 32), attention_levels=(), patch=1, blocks=2), 32),
    (dict(channels=(8, 16, 16, 16), attention_levels=(3,), patch=2, in_channels=3), 32),
])
def test_unet_shapes(cfg, size):
    torch.manual_seed(0)
    model = UNet(num_classes=10, **cfg)
    c = cfg.get("in_channels", 1)
    x = torch.randn(3, c, size, size)
    out = model(x, torch.tensor([0, 10, 999]), torch.tensor([1, 2, 10]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unet_output_starts_at_zero_and_learns_a_signal():
    model = UNet(channels=(16, 32), attention_levels=(1,), patch=2)
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.tensor([1, 2])).abs().max() == 0  # zero-initialised output conv
    # a few gradient steps in, the output depends on t (the zero-initialised layers have opened up)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = (model(x, torch.tensor([1, 2])) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    a, b = model(x[:1], torch.tensor([5])), model(x[:1], torch.tensor([900]))
    assert not torch.allclose(a, b)


def test_null_label_is_unconditional():
    torch.manual_seed(0)
    model = UNet(channels=(16, 32), attention_levels=(1,), patch=2, num_classes=10)
    for p in model.parameters():  # break the zero inits so that labels matter
        p.data.normal_(0, 0.05)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([100, 500])
    assert torch.equal(model(x, t, None), model(x, t, torch.tensor([10, 10])))
    assert not torch.allclose(model(x, t, None), model(x, t, torch.tensor([3, 3])))


@pytest.mark.parametrize("call,match", [
    (lambda m: m(torch.randn(2, 3, 28, 28), torch.tensor([1, 2])), "channels"),
    (lambda m: m(torch.randn(2, 1, 30, 30), torch.tensor([1, 2])), "divisible by 4"),
    (lambda m: m(torch.randn(2, 1, 28, 28), torch.tensor([1, 2, 3])), "shape"),
    (lambda m: m(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([0, 11])), "labels must be in"),
    (lambda m: m(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([0.5, 1.0])), "integer label"),
    (lambda m: m(torch.randn(1, 28, 28), torch.tensor([1])), r"\(B, C, H, W\)"),
])
def test_unet_bad_input(call, match):
    model = UNet(channels=(16, 32), attention_levels=(1,), patch=2, num_classes=10)
    with pytest.raises(ValueError, match=match):
        call(model)


def test_unet_bad_config_and_unconditional_cond():
    with pytest.raises(ValueError, match="objective"):
        UNet(objective="score")
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(channels=(16, 32), attention_levels=(2,))
    m = UNet(channels=(16, 32), attention_levels=(), patch=2)
    with pytest.raises(ValueError, match="unconditional"):
        m(torch.randn(1, 1, 28, 28), torch.tensor([1]), torch.tensor([0]))


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0, 1, 500]), 64)
    assert e.shape == (3, 64)
    assert torch.allclose(e[0, :32], torch.ones(32)) and torch.allclose(e[0, 32:], torch.zeros(32))
    assert torch.allclose(e.pow(2).reshape(3, 2, 32).sum(1), torch.ones(3, 32), atol=1e-6)  # cos² + sin² = 1
    with pytest.raises(ValueError):
        timestep_embedding(torch.tensor([1]), 63)


def test_mlp_and_param_count():
    m = MLPDenoiser(dim=2, hidden=32, depth=2)
    assert m(torch.randn(5, 2), torch.arange(5)).shape == (5, 2)
    assert count_parameters(m) == sum(p.numel() for p in m.parameters()) > 0
    with pytest.raises(ValueError):
        m(torch.randn(5, 3), torch.arange(5))
