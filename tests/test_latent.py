"""Chapter 5: the KL autoencoder, the latent scale factor, the latent cache and the LatentDiffusion pipeline."""
import math

import pytest
import torch

from diffusion_course import evaluation, latent, pretrained, schedules
from diffusion_course.nn import UNet
from diffusion_course.nn.autoencoder import Autoencoder, kl_to_standard_normal

vae_shipped = pretrained.path_for("fmnist-vae").exists()
ldm_shipped = pretrained.path_for("fmnist-ldm").exists()


@pytest.mark.parametrize("latent_channels,channels,image_size,latent_hw", [
    (4, (8, 16, 16), 28, 7), (2, (8, 16), 28, 14), (8, (8, 16, 16), 32, 8), (3, (8, 8, 8, 8), 32, 4)])
def test_autoencoder_shapes(latent_channels, channels, image_size, latent_hw):
    vae = Autoencoder(latent_channels=latent_channels, channels=channels, image_size=image_size)
    x = torch.rand(3, 1, image_size, image_size) * 2 - 1
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (3, latent_channels, latent_hw, latent_hw)
    assert vae.latent_shape == (latent_channels, latent_hw, latent_hw)
    assert vae.decode(mean).shape == x.shape
    rec, m, lv = vae(x, torch.Generator().manual_seed(0))
    assert rec.shape == x.shape and torch.equal(m, mean)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(5, 4, 7, 7, generator=g), torch.randn(5, 4, 7, 7, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(kl_to_standard_normal(mean, logvar), expected, rtol=1e-5, atol=1e-4)
    assert float(kl_to_standard_normal(torch.zeros(1, 4), torch.zeros(1, 4))) == 0.0


def test_reparameterised_sample_has_the_posterior_moments():
    mean, logvar = torch.full((20000, 1), 1.5), torch.full((20000, 1), math.log(0.25))
    z = Autoencoder.sample(mean, logvar, torch.Generator().manual_seed(0))
    assert abs(float(z.mean()) - 1.5) < 0.01 and abs(float(z.std()) - 0.5) < 0.01


def test_vae_loss_parts_and_validation():
    vae = Autoencoder(channels=(8, 16, 16))
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    loss, parts = latent.vae_loss(vae, x, beta=0.0, generator=torch.Generator().manual_seed(0), return_parts=True)
    assert abs(loss.item() - parts["reconstruction"]) < 1e-5 and parts["kl"] > 0
    loss_b = latent.vae_loss(vae, x, beta=1.0, generator=torch.Generator().manual_seed(0))
    assert loss_b.item() > loss.item()
    with pytest.raises(ValueError, match="reconstruction"):
        latent.vae_loss(vae, x, reconstruction="l3")
    with pytest.raises(ValueError, match="beta"):
        latent.vae_loss(vae, x, beta=float("nan"))


def test_autoencoder_rejects_bad_input():
    vae = Autoencoder(channels=(8, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        vae.encode(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        vae.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(TypeError, match="uint8"):
        vae.encode(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"latents must have shape \(B, 4, 7, 7\)"):
        vae.decode(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="divisible"):
        Autoencoder(channels=(8, 16, 16, 16), image_size=28)


def test_training_learns_and_resumes_exactly_after_ctrl_c(tmp_path, monkeypatch):
    x = (torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.5).float() * 2 - 1
    path = tmp_path / "ae.train.pt"
    cfg = latent.AutoencoderConfig(steps=12, batch_size=8, lr=2e-3, warmup=2, checkpoint_every=4, seed=3)
    torch.manual_seed(0)
    full = Autoencoder(channels=(8, 16, 16))
    start = {k: v.clone() for k, v in full.state_dict().items()}
    hist = latent.train_autoencoder(full, x, cfg, progress=False, device="cpu").history
    assert hist.reconstruction[-1] < hist.reconstruction[0]

    calls = {"n": 0}
    real_loss = latent.vae_loss

    def interrupting_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:          # Ctrl-C in the middle of step 7's forward pass
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    resumed = Autoencoder(channels=(8, 16, 16))
    resumed.load_state_dict(start)
    ckpt_cfg = latent.AutoencoderConfig(**{**cfg.__dict__, "checkpoint_path": str(path)})
    monkeypatch.setattr(latent, "vae_loss", interrupting_loss)
    first = latent.train_autoencoder(resumed, x, ckpt_cfg, progress=False, device="cpu")
    assert first.interrupted and first.step == 6     # the trainer's contract: the last consistent state, returned
    monkeypatch.setattr(latent, "vae_loss", real_loss)
    again = Autoencoder(channels=(8, 16, 16))
    hist2 = latent.train_autoencoder(again, x, ckpt_cfg, progress=False, device="cpu").history
    assert len(hist2.loss) == 12
    # the run's cost survives the interruption: one segment per run, contiguous steps, all timed
    assert [(seg["from_step"], seg["to_step"]) for seg in hist2.segments] == [(0, 6), (6, 12)]
    assert all(seg["seconds"] > 0 and seg["threads"] >= 1 for seg in hist2.segments)
    assert [(seg["from_step"], seg["to_step"]) for seg in hist.segments] == [(0, 12)]
    for k, v in full.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0)
    # the state moved to another folder (and saved more often) resumes as the same run: nothing left to train
    moved = tmp_path / "elsewhere" / "vae.train.pt"
    moved.parent.mkdir()
    moved.write_bytes(path.read_bytes())
    hist3 = latent.train_autoencoder(Autoencoder(channels=(8, 16, 16)), x,
                                     latent.AutoencoderConfig(**{**ckpt_cfg.__dict__, "checkpoint_path": str(moved),
                                                                 "checkpoint_every": 1}),
                                     progress=False, device="cpu").history
    assert hist3.loss == hist2.loss
    # a resume with a different configuration is refused, naming the field
    with pytest.raises(ValueError, match="lr"):
        latent.train_autoencoder(Autoencoder(channels=(8, 16, 16)), x,
                                 latent.AutoencoderConfig(**{**ckpt_cfg.__dict__, "lr": 1e-3}), progress=False,
                                 device="cpu")


def test_scale_factor_gives_unit_std():
    z = torch.randn(1000, 4, 7, 7, generator=torch.Generator().manual_seed(0)) * 3.7 + 0.2
    s = latent.fit_scale_factor(z)
    assert abs(float((z * s).std()) - 1.0) < 1e-6
    with pytest.raises(ValueError, match="NaN"):
        latent.fit_scale_factor(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="zero variance"):
        latent.fit_scale_factor(torch.ones(10))


def test_latent_cache_is_keyed_by_the_weights(tmp_path):
    vae = Autoencoder(channels=(8, 16, 16)).eval()
    x = torch.rand(10, 1, 28, 28) * 2 - 1
    cache = tmp_path / "lat.pt"
    a = latent.encode_dataset(vae, x, batch_size=4, progress=False, cache=cache)
    assert cache.exists() and a.shape == (10, 4, 7, 7)
    b = latent.encode_dataset(vae, x, batch_size=4, progress=False, cache=cache)
    assert torch.equal(a, b)
    with torch.no_grad():
        vae.encoder[0].weight.add_(0.1)      # a different autoencoder must not get the stale latents
    c = latent.encode_dataset(vae, x, batch_size=4, progress=False, cache=cache)
    assert not torch.allclose(a, c, atol=1e-3)
    torch.testing.assert_close(c, vae.encode(x)[0].detach(), atol=2e-3, rtol=2e-3)   # fp16 cache


def _tiny_ldm(num_classes=3):
    torch.manual_seed(0)
    vae = Autoencoder(channels=(8, 16, 16))
    model = UNet(in_channels=4, channels=(16, 32), attention_levels=(), num_classes=num_classes, pad_input=True)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return latent.LatentDiffusion(vae, model, schedules.NoiseSchedule.cosine(100), 0.5)


def test_pipeline_end_to_end():
    ldm = _tiny_ldm()
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    x = ldm.sample(5, steps=4, generator=g(), progress=False)
    assert x.shape == (5, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, ldm.sample(5, steps=4, generator=g(), progress=False))     # same seed, same images
    guided = ldm.sample(5, cond=torch.tensor([0, 1, 2, 0, 1]), steps=4, guidance_scale=3.0, generator=g(), progress=False)
    plain = ldm.sample(5, cond=torch.tensor([0, 1, 2, 0, 1]), steps=4, generator=g(), progress=False)
    assert guided.shape == x.shape and not torch.equal(guided, plain)
    assert ldm.sample(2, cond=1, steps=2, progress=False).shape == (2, 1, 28, 28)
    z = ldm.encode(torch.zeros(2, 1, 28, 28))
    assert z.shape == (2, 4, 7, 7)
    torch.testing.assert_close(z, ldm.vae.encode(torch.zeros(2, 1, 28, 28))[0] * 0.5)
    assert ldm.decode(z).shape == (2, 1, 28, 28)


def test_pipeline_rejects_bad_input():
    ldm = _tiny_ldm()
    with pytest.raises(ValueError, match="latents must have shape"):
        ldm.decode(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        ldm.sample(0)
    with pytest.raises(ValueError, match="cond"):
        ldm.sample(3, cond=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be in"):
        ldm.sample(2, cond=torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="needs cond"):
        ldm.sample(2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="scale_factor"):
        latent.LatentDiffusion(ldm.vae, ldm.model, ldm.schedule, 0.0)
    wrong = UNet(in_channels=3, channels=(16, 32), attention_levels=(), pad_input=True)
    with pytest.raises(ValueError, match="3-channel"):
        latent.LatentDiffusion(ldm.vae, wrong, ldm.schedule, 1.0)


@pytest.mark.skipif(not vae_shipped, reason="fmnist-vae checkpoint not trained yet")
def test_shipped_autoencoder_reconstructs_real_test_images():
    from diffusion_course.data import load_fashion_mnist

    vae = pretrained.load("fmnist-vae", device="cpu")
    x, _ = load_fashion_mnist("test")
    x = x[:256]
    with torch.no_grad():
        rec = vae.decode(vae.encode(x)[0]).clamp(-1, 1)
    mse = float((rec - x).pow(2).mean())
    # measured on the shipped checkpoint (see its manifest: test_mse over all 10,000 test images)
    assert mse < 1.5 * pretrained.manifest("fmnist-vae")["metrics"]["test_mse"] + 1e-3
    assert mse < 0.02


@pytest.mark.skipif(not (ldm_shipped and vae_shipped), reason="fmnist-ldm / fmnist-vae not trained yet")
@pytest.mark.parametrize("name", ["fmnist-ldm", "fmnist-ldm-dit"])
def test_shipped_latent_models_were_trained_on_the_shipped_autoencoder(name):
    # chapters 5 and 8 read fmnist-vae's reconstruction FID as the cap of these models: that only holds when the
    # autoencoder bundled in each latent checkpoint is the shipped one (a retrained VAE must ship with retrained models)
    if not pretrained.path_for(name).exists():
        pytest.skip(f"{name} not trained yet")
    vae_sha = pretrained.manifest("fmnist-vae")["sha256"]
    assert pretrained.manifest(name)["metrics"]["vae_sha256"] == vae_sha
    bundled = pretrained.load(name, device="cpu").vae.state_dict()
    shipped = pretrained.load("fmnist-vae", device="cpu").state_dict()
    assert bundled.keys() == shipped.keys()
    assert all(torch.equal(bundled[k], shipped[k]) for k in shipped)


@pytest.mark.skipif(not ldm_shipped, reason="fmnist-ldm checkpoint not trained yet")
def test_shipped_latent_model_loads_and_samples():
    ldm = pretrained.load("fmnist-ldm", device="cpu")
    man = pretrained.manifest("fmnist-ldm")
    assert isinstance(ldm, latent.LatentDiffusion) and ldm.num_classes == 10
    assert abs(ldm.scale_factor - man["metrics"]["scale_factor"]) < 1e-3
    x = ldm.sample(4, cond=torch.tensor([0, 1, 2, 3]), steps=5, generator=torch.Generator().manual_seed(0),
                   progress=False)
    assert x.shape == (4, 1, 28, 28) and torch.isfinite(x).all()


class _IdentityAutoencoder(torch.nn.Module):
    """encode→decode returns the image itself: its reconstruction FID must equal the floor on the same sets."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        return x, torch.zeros_like(x)

    def decode(self, z):
        return z


def test_reconstruction_fid_of_a_perfect_decoder_is_the_floor_on_the_same_sets_random_and_balanced():
    from diffusion_course import metrics, train

    m = evaluation.evaluate_autoencoder(_IdentityAutoencoder(), n=200)
    assert m["test_mse"] == 0.0
    assert m["fid_reconstruction"] == pytest.approx(m["floor"], abs=1e-6)
    assert m["fid_reconstruction_balanced"] == pytest.approx(m["floor_balanced"], abs=1e-6)
    clf = pretrained.load("fmnist-classifier", device="cpu")
    assert m["floor_balanced"] == pytest.approx(metrics.fid_floor(clf, 200, class_balanced=True), abs=1e-6)
    assert m["floor"] == pytest.approx(metrics.fid_floor(clf, 200), abs=1e-6)
    assert m["test_psnr_db"] == math.inf
    a, b = metrics.balanced_disjoint_indices(torch.arange(1000) % 10, 50)
    assert len(set(a.tolist()) & set(b.tolist())) == 0 and torch.bincount(torch.arange(1000)[a] % 10).tolist() == [5] * 10
