"""Every loop that keeps a training state runs on the one skeleton (``training.Loop``) and honours its contract:
a Ctrl-C injected at any point of a step leaves the last consistent state, and resuming gives bit-for-bit the
weights of the uninterrupted run. Checked for the diffusion trainer's siblings — consistency distillation, the
autoencoder, flow matching and reflow (the diffusion trainer's own tests are in test_reliability.py)."""
import pytest
import torch

from diffusion_course import consistency as C
from diffusion_course import flow, latent, training
from diffusion_course.gmm import GaussianMixture
from diffusion_course.nn import MLPDenoiser
from diffusion_course.nn.autoencoder import Autoencoder
from diffusion_course.schedules import NoiseSchedule

POINTS = ["batch", "before_opt_step", "after_opt_step", "after_ema", "after_count"]
S = NoiseSchedule.cosine(1000)
GMM = GaussianMixture.ring(k=4, radius=2.0, std=0.25)
STEPS, AT = 6, 3


class TinyVelocity(torch.nn.Module):
    """A 2-D velocity model: an MLP on (x, t)."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.SiLU(), torch.nn.Linear(hidden, 2))

    def forward(self, x, t, cond=None):
        return self.net(torch.cat([x, t[:, None]], 1))


def _distill(path):
    torch.manual_seed(0)
    student = C.ConsistencyModel(MLPDenoiser(dim=2, hidden=32, depth=2), S, grid_size=10, head="raw", sigma_data=1.4)
    data = GMM.sample(256, generator=torch.Generator().manual_seed(1))[0].float()
    cfg = C.DistillConfig(steps=STEPS, batch_size=16, warmup=2, grid_size=10, distance="l2", p_uncond=0.0,
                          clip_denoised=False, sigma_data=1.4, checkpoint_path=path, checkpoint_every=2)
    r = C.distill(GMM.oracle_model(S), S, data, None, cfg, student=student, progress=False, device="cpu")
    return r, r.ema


def _autoencoder(path):
    torch.manual_seed(0)
    vae = Autoencoder(channels=(8, 16, 16))
    x = (torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.5).float() * 2 - 1
    cfg = latent.AutoencoderConfig(steps=STEPS, batch_size=4, warmup=2, checkpoint_every=2, seed=3,
                                   checkpoint_path=path)
    r = latent.train_autoencoder(vae, x, cfg, progress=False, device="cpu")
    return r, r.model


def _flow(path, reflow=False):
    torch.manual_seed(0)
    data = GMM.sample(256, generator=torch.Generator().manual_seed(1))[0].float()
    noise = torch.randn(data.shape, generator=torch.Generator().manual_seed(2)) if reflow else None
    cfg = flow.FlowTrainConfig(steps=STEPS, batch_size=16, warmup=2, p_uncond=0.0, checkpoint_every=2,
                                   t_sampling="logit-normal", checkpoint_path=path)
    r = flow.train(TinyVelocity(), data, None, cfg, noise=noise, progress=False, device="cpu")
    return r, r.ema


LOOPS = {"distill": _distill, "autoencoder": _autoencoder, "flow": _flow,
         "reflow": lambda path: _flow(path, reflow=True)}


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_ctrl_c_anywhere_in_a_step_resumes_exactly(tmp_path, monkeypatch, loop, point):
    _, straight = LOOPS[loop](None)

    def fault(p, step):
        if p == point and step == AT:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_fault_hook", fault)
    path = str(tmp_path / "state.pt")
    first, _ = LOOPS[loop](path)
    assert first.interrupted
    assert first.step == (AT if point in ("batch", "before_opt_step") else AT + 1)   # rolled back, or completed
    assert len(first.history.loss) == first.step
    monkeypatch.setattr(training, "_fault_hook", None)
    resumed, model = LOOPS[loop](path)
    assert resumed.step == STEPS and not resumed.interrupted
    assert _same(model, straight), f"{loop}: resumed after a Ctrl-C at {point!r} differs from the uninterrupted run"


def test_a_loop_without_a_checkpoint_path_still_returns_what_it_trained(monkeypatch):
    def fault(p, step):
        if p == "batch" and step == AT:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_fault_hook", fault)
    r, _ = _flow(None)
    assert r.interrupted and r.step == AT and len(r.history.loss) == AT


def test_the_flow_trainer_learns_and_buckets_the_loss_by_t():
    torch.manual_seed(0)
    data = GMM.sample(2048, generator=torch.Generator().manual_seed(1))[0].float()
    cfg = flow.FlowTrainConfig(steps=600, batch_size=256, lr=3e-3, warmup=10, p_uncond=0.0, ema_decay=0.9)
    untrained = TinyVelocity(128)
    r = flow.train(TinyVelocity(128), data, None, cfg, progress=False, device="cpu")
    held = GMM.sample(4096, generator=torch.Generator().manual_seed(5))[0].float()

    @torch.no_grad()
    def loss(v):   # the same t and ε for every model
        return float(flow.flow_matching_loss(v, held, generator=torch.Generator().manual_seed(6)))

    floor = loss(lambda x, t, cond=None: flow.exact_velocity(GMM, x.double(), t.double()).float())
    before, after = loss(untrained), loss(r.ema)
    # the irreducible loss is the exact velocity's; training closes most of the gap to it
    assert floor < after < floor + 0.5 * (before - floor), (before, after, floor)
    assert sum(r.history.bucket_count) == 600 * 256 and all(c > 0 for c in r.history.bucket_count)
    with pytest.raises(ValueError, match="t_sampling"):
        flow.FlowTrainConfig(t_sampling="logsnr-normal")
    with pytest.raises(ValueError, match="noise"):
        flow.train(TinyVelocity(), data, None, cfg, noise=torch.zeros(3, 2), progress=False, device="cpu")


def test_the_flow_recipes_train_export_and_sample_in_quick_mode(tmp_path, monkeypatch):
    """fmnist-rf and its reflow round fmnist-2rf through the CLI's code path, a few steps each: the exported weights
    load into the recipe's architecture and sample; the reflow pairs are a cache beside the run, never a checkpoint."""
    from diffusion_course import checkpoints, recipes
    from diffusion_course import train as train_cli

    monkeypatch.setenv("DIFFUSION_COURSE_QUICK", "1")
    for name in ("fmnist-rf", "fmnist-2rf"):
        train_cli.run_recipe(name, steps=2, device="cpu", evaluate=False, out=tmp_path)
        model = recipes.build(name)
        model.load_state_dict({k: v.float() for k, v in checkpoints.load(tmp_path / f"{name}.pt").items()})
        x = flow.sample(model.eval(), torch.randn(2, 1, 28, 28), steps=2, cond=torch.tensor([1, 2]))
        assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all()
    assert (tmp_path / "fmnist-2rf.pairs.pt").exists()
