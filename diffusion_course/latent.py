"""Latent diffusion (Rombach et al. 2022): train an autoencoder once, then run diffusion on its small latents.

    vae = pretrained.load("fmnist-vae")                 # nn.autoencoder.Autoencoder, 1×28×28 ↔ 4×7×7
    ldm = pretrained.load("fmnist-ldm")                 # LatentDiffusion: .vae .model .schedule .scale_factor
    z = ldm.encode(x); x = ldm.decode(z)                # scaled posterior mean; decode clamps to [-1, 1]
    x = ldm.sample(16, cond=torch.arange(16) % 10, steps=50, guidance_scale=2.0)

Three pieces, each a function here:
1. ``vae_loss`` — reconstruction (L1 or L2) + β·KL with a tiny β (why tiny: see its docstring);
   ``train_autoencoder`` — on the course's training skeleton (AdamW, checkpoints, exact resume, progress bar).
2. ``fit_scale_factor`` — 1/std of the latents over the **whole** training set, so the diffusion model sees
   unit-variance data as it would in pixel space (Stable Diffusion's 0.18215 is this number for its VAE).
   ``encode_dataset`` encodes a set once (with a progress bar) and caches it, so latent training never re-encodes;
   ``encode_training_set`` does it for Fashion-MNIST's training set (chapters 5 and 8, the latent recipes).
3. ``LatentDiffusion`` — encode / decode / sample, reusing chapter 3's DDIM loop and chapter 4's guidance wrapper.
"""
from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import checkpoints, guidance, sampling, training, validate
from .nn.autoencoder import Autoencoder, kl_to_standard_normal
from .schedules import NoiseSchedule

RECONSTRUCTIONS = ("l1", "l2")


# --------------------------------------------------------------------------- 1. the autoencoder's loss and training
def vae_loss(vae: Autoencoder, x: torch.Tensor, beta: float = 1e-4, reconstruction: str = "l1",
             generator: torch.Generator | None = None,
             return_parts: bool = False) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
    """Per-sample negative ELBO-like loss: Σ_pixels |x − x̂| (or squared) + β·KL(q(z|x) ‖ N(0, I)), averaged
    over the batch and divided by the number of pixels (so it reads as a per-pixel error).

    Why β is tiny (1e-4 here, Stable Diffusion uses 1e-6 in the same units): with β = 1 the KL term would push
    q(z|x) towards N(0, I) and the latents would carry little information (blurry reconstructions, the classic VAE
    trade-off). Latent diffusion does not need the latents to *be* N(0, I) — the diffusion model learns their
    distribution — it only needs them to be compact, smooth and bounded in scale. A tiny β keeps the posterior
    from collapsing to a point (a little noise makes the decoder smooth around each latent) while leaving
    reconstructions almost as good as a plain autoencoder's. What follows: the latents are *not* standard
    normal, so decoding random N(0, I) latents gives garbage (chapter 5 shows it) and their scale must be fitted.
    """
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {reconstruction!r}")
    if not (isinstance(beta, numbers.Real) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    x_rec, mean, logvar = vae(x, generator)
    diff = x_rec - x
    rec = (diff.abs() if reconstruction == "l1" else diff.pow(2)).flatten(1).sum(1)
    kl = kl_to_standard_normal(mean, logvar)
    pixels = x[0].numel()
    loss = (rec + beta * kl).mean() / pixels
    if return_parts:
        return loss, {"reconstruction": float(rec.detach().mean() / pixels), "kl": float(kl.detach().mean())}
    return loss


@dataclass
class AutoencoderConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100                 # then cosine decay to 10 % (training.lr_at, the course's one schedule)
    beta: float = 1e-4
    reconstruction: str = "l1"
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_path: str | None = None
    checkpoint_every: int = 250

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {self.reconstruction!r}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip must be a finite number >= 0 (0 = no clipping), got {self.grad_clip!r}")


@dataclass
class AutoencoderHistory:
    loss: list[float] = field(default_factory=list)
    reconstruction: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    wall_time: float = 0.0
    segments: list[dict] = field(default_factory=list)   # steps, seconds and threads of each run (a resume adds one)


def train_autoencoder(vae: Autoencoder, images: torch.Tensor, config: AutoencoderConfig | None = None,
                      progress: bool = True, device: torch.device | str | None = None) -> training.TrainResult:
    """Train ``vae`` on ``images`` (N, C, H, W) in [−1, 1] with :func:`vae_loss`, on the course's training skeleton
    (:class:`~diffusion_course.training.Loop`): AdamW with warm-up then cosine decay, gradient clipping, atomic
    checkpoints at ``config.checkpoint_path``, exact resume. Returns a ``training.TrainResult`` (``ema`` is the model
    itself: an autoencoder is used as trained); a Ctrl-C returns what was trained with ``interrupted=True``.
    """
    from .config import get_device

    cfg = config or AutoencoderConfig()
    vae._check_images(images[:1])
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf")
    dev = torch.device(device) if device is not None else get_device()
    vae.to(dev).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    loop = training.Loop(cfg, {"model": vae}, opt, AutoencoderHistory(), desc="autoencoder", progress=progress)
    loop.resume(dev)
    data = images.to(dev)

    def compute(step: int) -> training.StepOutput:
        idx = torch.randint(0, data.shape[0], (cfg.batch_size,), generator=loop.gen).to(dev)
        training._hook("batch", step)
        loss, parts = vae_loss(vae, data[idx], cfg.beta, cfg.reconstruction, generator=loop.gen, return_parts=True)
        return training.StepOutput(loss, loss.item(), parts)

    def after_update(out: training.StepOutput) -> None:
        loop.history.reconstruction.append(out.record["reconstruction"])
        loop.history.kl.append(out.record["kl"])

    interrupted = loop.run(compute, after_update)
    vae.eval()
    return training.TrainResult(model=vae, ema=vae, history=loop.history, step=loop.step, interrupted=interrupted)


# --------------------------------------------------------------------------- 2. latents: encode once, fit the scale
@torch.no_grad()
def encode_dataset(vae: Autoencoder, images: torch.Tensor, batch_size: int = 500, progress: bool = True,
                   cache: str | Path | None = None) -> torch.Tensor:
    """Posterior means of ``images`` (N, c, h, w) on the CPU, computed once in batches (progress bar).

    With ``cache`` (a file path) the result is saved there, keyed by a hash of the autoencoder's weights and of
    the images, and reused when both match — a different VAE or data set recomputes it instead of serving stale
    latents."""
    from tqdm.auto import tqdm

    validate.positive_int("batch_size", batch_size)
    vae._check_images(images[:1])
    key = _cache_key(vae, images) if cache is not None else None
    if cache is not None and Path(cache).exists():
        stored = checkpoints.load(cache, verify=False)
        if stored.get("key") == key:
            return stored["latents"].float()
    dev = next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    out = [vae.encode(images[i:i + batch_size].to(dev))[0].float().cpu()
           for i in tqdm(range(0, images.shape[0], batch_size), desc="encoding", disable=not progress, leave=False)]
    vae.train(was_training)
    latents = torch.cat(out)
    if cache is not None:
        checkpoints.save({"key": key, "latents": latents.half()}, cache)
        latents = latents.half().float()  # what a cache hit returns, so both paths give the same numbers
    return latents


def _cache_key(vae: nn.Module, images: torch.Tensor) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    h.update(f"{tuple(images.shape)} {images.dtype}".encode())
    # every pixel: a different set of the same shape (even one image swapped) must not get the old latents
    h.update(images.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())   # ~0.3 s for 60k×784
    return h.hexdigest()


def fit_scale_factor(latents: torch.Tensor) -> float:
    """1 / std of **all** the latents given (flattened): multiply by it and the data has unit variance.

    Fit it on the whole training set's latents, not one batch: a batch's std is a noisy estimate, and the
    diffusion model's noise schedule assumes the data's scale (Rombach et al. 2022, Sec. 4.3.2 / App. G)."""
    if not isinstance(latents, torch.Tensor) or latents.numel() < 2:
        raise ValueError("latents must be a tensor with at least 2 elements")
    if not torch.isfinite(latents).all():
        raise ValueError("latents contain NaN or inf")
    std = float(latents.double().std())
    if std == 0:
        raise ValueError("latents have zero variance: the autoencoder is degenerate")
    return 1.0 / std


def encode_training_set(vae: Autoencoder, device: torch.device | str | None = None, cache_dir: Path | None = None,
                        limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Fashion-MNIST training set as posterior-mean latents and labels: encoded once, cached beside the
    checkpoints in ``cache/`` (keyed by the autoencoder's weights and the images, so a retrained one re-encodes).
    ``limit`` takes only the first that many images and skips the cache (quick mode uses 2,000: encoding all 60,000
    takes minutes on a CPU)."""
    from .config import is_quick
    from .data import load_fashion_mnist

    x, y = load_fashion_mnist("train")
    if limit is None and is_quick():
        limit = 2000
    vae = vae.to(device or "cpu").eval()
    if limit is not None:
        return encode_dataset(vae, x[:limit]), y[:limit]
    cache_dir = Path(cache_dir) if cache_dir is not None else checkpoints.CHECKPOINT_DIR.parent / "cache"
    return encode_dataset(vae, x, cache=cache_dir / "fmnist-train-latents.pt"), y


# --------------------------------------------------------------------------- 3. the pipeline
class LatentDiffusion(nn.Module):
    """A diffusion model on an autoencoder's latents (Rombach et al. 2022, Eq. 2).

    Args:
        vae: the (frozen) autoencoder; ``encode`` uses its posterior mean.
        model: a denoiser ``model(z, t, cond=None)`` on latents of ``vae.latent_shape`` (a U-Net or a DiT).
        schedule: the noise schedule it was trained with.
        scale_factor: latents are multiplied by it before diffusion (``fit_scale_factor``) and divided after.
    """

    def __init__(self, vae: Autoencoder, model: nn.Module, schedule: NoiseSchedule, scale_factor: float):
        super().__init__()
        if not (isinstance(scale_factor, numbers.Real) and math.isfinite(scale_factor) and scale_factor > 0):
            raise ValueError(f"scale_factor must be a positive finite number, got {scale_factor!r}")
        self.vae, self.model, self.schedule = vae.eval().requires_grad_(False), model, schedule
        self.register_buffer("_scale", torch.tensor(float(scale_factor)))
        self._check_model_matches()

    @property
    def scale_factor(self) -> float:
        return float(self._scale)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.vae.latent_shape

    @property
    def num_classes(self) -> int:
        return getattr(self.model, "num_classes", 0)

    def _check_model_matches(self) -> None:
        """A VAE and a denoiser whose latent shapes disagree are refused at construction, not mid-sampling."""
        c, h, w = self.latent_shape
        in_ch = getattr(self.model, "in_channels", c)
        if in_ch != c:
            raise ValueError(f"the denoiser takes {in_ch}-channel inputs but the autoencoder's latents have {c} "
                             f"channels ({c}×{h}×{w})")
        size = getattr(self.model, "input_size", None)
        if size is not None and tuple(size) != (h, w):
            raise ValueError(f"the denoiser is built for {tuple(size)} inputs but the latents are {h}×{w}")

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [−1, 1] → scaled posterior means (B, c, h, w)."""
        mean, _ = self.vae.encode(x.to(self._scale.device))
        return mean * self._scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images clamped to [−1, 1]."""
        validate.float_tensor("z", z)  # finite floats; the autoencoder converts float64/float16 to its dtype
        return self.vae.decode(z.to(self._scale.device) / self._scale).clamp(-1, 1)

    @torch.no_grad()
    def sample(self, n: int, cond: torch.Tensor | int | None = None, steps: int = 50, guidance_scale: float = 1.0,
               eta: float = 0.0, generator: torch.Generator | None = None, progress: bool = True,
               return_latents: bool = False, z_T: torch.Tensor | None = None,
               spacing: str = "leading") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``n`` images (n, C, H, W) in [−1, 1]: DDIM (chapter 3) in latent space, optional CFG (chapter 4), decode.

        ``cond``: None (unconditional), one label for all, or labels (n,). ``guidance_scale`` s: 1 = plain
        conditional, s > 1 guided (needs ``cond``). Noise is drawn on the CPU from ``generator`` (same seed →
        same images on any device), unless ``z_T`` (n, c, h, w) is given.

        ``spacing="leading"`` (Stable Diffusion's default in diffusers) starts at t = T − T/steps, not at T − 1: the
        cosine schedule's last step has ᾱ ≈ 0, where an ε-model's x̂₀ = (z − √(1−ᾱ)ε̂)/√ᾱ amplifies any error in ε̂
        by 1/√ᾱ. Pixel samplers survive it by clipping x̂₀ to [−1, 1]; latents have no such fixed range (chapter 5
        measures the difference)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if not (isinstance(guidance_scale, numbers.Real) and math.isfinite(guidance_scale)):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        dev = self._scale.device
        if cond is not None:
            if isinstance(cond, numbers.Integral):
                cond = torch.full((n,), int(cond), dtype=torch.long)
            if not isinstance(cond, torch.Tensor) or cond.shape != (n,) or cond.is_floating_point():
                raise ValueError(f"cond must be None, an int label or an integer tensor of shape ({n},)")
            if not self.num_classes:
                raise ValueError("this latent model is unconditional; pass cond=None")
            if int(cond.min()) < 0 or int(cond.max()) > self.num_classes:
                raise ValueError(f"labels must be in [0, {self.num_classes}] ({self.num_classes} = null label)")
            cond = cond.to(dev)
        elif guidance_scale != 1.0:
            raise ValueError("guidance_scale != 1 needs cond (the labels to guide towards)")
        if z_T is None:
            z_T = torch.randn((n, *self.latent_shape), generator=generator)
        elif not isinstance(z_T, torch.Tensor) or tuple(z_T.shape) != (n, *self.latent_shape):
            raise ValueError(f"z_T must have shape ({n}, {', '.join(map(str, self.latent_shape))})")
        elif not torch.isfinite(z_T).all():
            raise ValueError("z_T contains NaN or inf")
        z_T = z_T.to(dev)
        model, model_cond = self.model, cond
        if cond is not None and guidance_scale != 1.0:
            model, model_cond = guidance.classifier_free(self.model, cond, guidance_scale), None
        z0 = sampling.ddim_sample(model, z_T, self.schedule, steps=steps, eta=eta, spacing=spacing, generator=generator,
                                  cond=model_cond, progress=progress)
        if not torch.isfinite(z0).all():
            raise FloatingPointError("sampling produced NaN or inf latents")
        images = self.decode(z0)
        return (images, z0) if return_latents else images

