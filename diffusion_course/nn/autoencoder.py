"""A small KL autoencoder — the "first stage" of latent diffusion (Rombach et al. 2022, Sec. 3; App. G).

    vae = Autoencoder(latent_channels=4)              # 1×28×28 → 4×7×7 (f = 4: two stride-2 convolutions)
    mean, logvar = vae.encode(x)                      # the Gaussian posterior q(z|x) = N(mean, diag(exp(logvar)))
    z = vae.sample(mean, logvar, generator)           # reparameterised draw: mean + exp(logvar/2)·ε
    x_rec = vae.decode(z)                             # back to 1×28×28 (not clamped: training sees the raw output)

Encoder and decoder are residual conv stacks with GroupNorm and SiLU (Stable Diffusion's VAE, Esser et al. 2021,
scaled down to 28×28 greyscale): conv → [ResBlock → stride-2 conv] per down level → ResBlock → GN → SiLU → conv
to 2·c channels (mean and log-variance). The decoder mirrors it with nearest-neighbour up-sampling. The KL weight
is tiny (``latent.vae_loss``), so this is an autoencoder with a *little* noise, not a generative VAE: decoding
z ~ N(0, I) gives garbage, which is why a diffusion model is trained on the latents afterwards.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate


def _groups(ch: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if ch % g == 0 and ch // g >= 2:
            return g
    return 1


class AEResBlock(nn.Module):
    """GN → SiLU → conv → GN → SiLU → conv, plus a (1×1-projected) skip. No time input."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(_groups(c_in), c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  nn.GroupNorm(_groups(c_out), c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Autoencoder(nn.Module):
    """KL-regularised conv autoencoder: (B, in_channels, H, W) ↔ (B, latent_channels, H/f, W/f), f = 2^(levels−1).

    Args:
        in_channels: image channels (1 for Fashion-MNIST).
        latent_channels: c of the c×h×w latent (4 as in Stable Diffusion).
        channels: width per level; ``len(channels) − 1`` stride-2 down-samplings (two → f = 4: 28 → 7).
        image_size: the (square) input size the model is used at; checked on every call.
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 4, channels: tuple[int, ...] = (32, 64, 64),
                 image_size: int = 28):
        super().__init__()
        if isinstance(channels, (str, bytes)) or not isinstance(channels, (tuple, list)) or not channels:
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {channels!r}")
        channels = tuple(validate.positive_int(f"channels[{i}]", c) for i, c in enumerate(channels))
        in_channels = validate.positive_int("in_channels", in_channels)
        latent_channels = validate.positive_int("latent_channels", latent_channels)
        image_size = validate.positive_int("image_size", image_size)
        self.factor = 2 ** (len(channels) - 1)
        if image_size % self.factor:
            raise ValueError(f"image_size {image_size} must be divisible by the down-sampling factor {self.factor}")
        self.config = dict(in_channels=in_channels, latent_channels=latent_channels, channels=tuple(channels),
                           image_size=image_size)
        self.in_channels, self.latent_channels, self.image_size = in_channels, latent_channels, image_size
        self.latent_size = image_size // self.factor

        enc: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        ch = channels[0]
        for i, width in enumerate(channels):
            enc.append(AEResBlock(ch, width))
            ch = width
            if i < len(channels) - 1:
                enc.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        enc += [AEResBlock(ch, ch), nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(latent_channels, ch, 3, padding=1), AEResBlock(ch, ch)]
        for i, width in reversed(list(enumerate(channels))):
            dec.append(AEResBlock(ch, width))
            ch = width
            if i > 0:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]
        dec += [nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    def _check_images(self, x) -> torch.Tensor:
        """Images (B, C, H, W) in [−1, 1] (``validate.images``: finite, range, dtype), in the weights' dtype."""
        want = (self.in_channels, self.image_size, self.image_size)
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"images must have shape (B, {', '.join(map(str, want))}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return validate.images("images", x, dtype=validate.model_dtype(self))

    def _check_latents(self, z) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents must have shape (B, {', '.join(map(str, self.latent_shape))}), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        # dtype only: NaN latents mid-training are left to the training loop's own check (it rolls the step back)
        return validate.float_tensor("latents", z, check_finite=False, dtype=validate.model_dtype(self))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x): the posterior's mean and log-variance, each (B, c, h, w). The log-variance is clamped to
        [−30, 20] (as in Stable Diffusion's ``DiagonalGaussianDistribution``) so exp() stays finite."""
        mean, logvar = self.encoder(self._check_images(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The reparameterisation trick (Kingma & Welling 2014, Eq. 10): z = μ + σ·ε, ε ~ N(0, I)."""
        eps = torch.randn(mean.shape, generator=generator).to(mean)
        return mean + (0.5 * logvar).exp() * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self._check_latents(z))

    def forward(self, x: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, draw z, decode: returns (reconstruction, mean, logvar)."""
        mean, logvar = self.encode(x)
        return self.decode(self.sample(mean, logvar, generator)), mean, logvar


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per sample, summed over latent dimensions (Kingma & Welling 2014, App. B):
    ½ Σ (μ² + σ² − 1 − log σ²)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
