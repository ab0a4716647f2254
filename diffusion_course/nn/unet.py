"""A small, CPU-friendly U-Net for diffusion on 28×28 / 32×32 images.

DDPM's architecture (Ho et al. 2020, App. B; itself PixelCNN++'s) trimmed for speed:
residual blocks with the time embedding injected as a per-channel scale and shift (FiLM, as in
improved DDPM / ADM, Dhariwal & Nichol 2021, "AdaGN"), GroupNorm, stride-2 down-sampling, nearest
up-sampling with skip connections, and self-attention only at the lowest resolution where it is
cheap. An optional ``patch`` stem folds p×p pixel blocks into channels (pixel-unshuffle) so the
expensive full-resolution convolutions run on 4× fewer positions — the largest single speed-up
on a CPU — and unfolds them at the end.

Class conditioning: an embedding with one extra **null label** (index ``num_classes``) added to
the time embedding; ``cond=None`` (or the null label) means "unconditional", so one network serves
both, which classifier-free guidance needs (Ho & Salimans 2022).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import TimestepEmbedding


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GN → SiLU → conv → FiLM(t) → GN … → conv, plus a (1×1-projected) skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions, with a residual connection."""

    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        if ch % heads:
            raise ValueError(f"channels ({ch}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class CrossAttention(nn.Module):
    """Image positions attend to text tokens (Rombach et al. 2022, Sec. 3.3; Stable Diffusion's
    "attn2"): Q from the image features, K and V from the text encoder's output, so each pixel
    mixes in the words relevant to it. ``softmax(QKᵀ/√d)`` over tokens, padding masked out.

    With ``store_attention = True`` the last call's attention weights are kept in
    ``last_attention`` as (B, H·W, L), averaged over heads — the per-word maps of chapter 4.
    """

    def __init__(self, ch: int, context_dim: int, heads: int = 4):
        super().__init__()
        if ch % heads:
            raise ValueError(f"channels ({ch}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.q = nn.Linear(ch, ch)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.proj = nn.Linear(ch, ch)
        nn.init.zeros_(self.proj.weight)  # starts as the identity, like the other residual branches
        nn.init.zeros_(self.proj.bias)
        self.store_attention = False
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W); context (B, L, D); mask (B, L) True where a token is real (not padding)."""
        B, C, H, W = x.shape
        h = self.heads
        q = self.q(self.norm(x).flatten(2).transpose(1, 2))                      # (B, HW, C)
        k, v = self.kv(context).chunk(2, dim=-1)                                 # (B, L, C)
        q, k, v = (z.reshape(B, z.shape[1], h, C // h).transpose(1, 2) for z in (q, k, v))
        bias = None
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape != context.shape[:2]:
                raise ValueError(f"mask must be a bool tensor of shape {tuple(context.shape[:2])} (True = real token)")
            if not bool(mask.any(1).all()):
                raise ValueError("every caption needs at least one unmasked token (e.g. a start token); "
                                 "a row of only padding has nothing to attend to")
            bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
            bias = bias[:, None, None, :]                                       # (B, 1, 1, L)
        if self.store_attention:
            logits = q @ k.transpose(-1, -2) / (C // h) ** 0.5
            weights = (logits + bias if bias is not None else logits).softmax(-1)
            self.last_attention = weights.mean(1).detach()
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(B, H * W, C)
        return x + self.proj(out).transpose(1, 2).reshape(B, C, H, W)


class UNet(nn.Module):
    """ε-, x₀- or v-prediction network ``model(x, t, cond=None)``.

    Args:
        in_channels: image channels (1 for Fashion-MNIST).
        channels: width at each resolution level, e.g. (64, 128, 128).
        blocks: residual blocks per level on the way down (the way up has one more, DDPM-style).
        attention_levels: indices of levels that get self-attention after each block
            (the middle always has one when any is set).
        num_classes: number of class labels (0 = unconditional only). Index ``num_classes`` is
            the null label.
        patch: pixel-unshuffle factor of the stem (1 = none, 2 = 28×28 → 14×14×4).
        objective: what the output means ("eps", "x0" or "v"); recorded for samplers.
        context_dim: width of a text encoder's output; > 0 adds :class:`CrossAttention` after each
            block of ``cross_attention_levels`` and in the middle. Call with ``context=``/``context_mask=``.
        pad_input: zero-pad inputs whose size is not a multiple of ``patch·2^(levels−1)`` on the bottom/right
            and crop the output back (e.g. a 7×7 latent runs as 8×8), instead of refusing them.
    """

    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = (64, 128, 128), blocks: int = 1,
                 attention_levels: tuple[int, ...] = (2,), num_classes: int = 0, patch: int = 1,
                 dropout: float = 0.0, heads: int = 4, objective: str = "eps", context_dim: int = 0,
                 cross_attention_levels: tuple[int, ...] = (), pad_input: bool = False):
        super().__init__()
        if objective not in {"eps", "x0", "v"}:
            raise ValueError(f"objective must be 'eps', 'x0' or 'v', got {objective!r}")
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {channels}")
        if any(not 0 <= a < len(channels) for a in attention_levels):
            raise ValueError(f"attention_levels {attention_levels} must index channels (0..{len(channels) - 1})")
        if any(not 0 <= a < len(channels) for a in cross_attention_levels) or (cross_attention_levels and not context_dim):
            raise ValueError(f"cross_attention_levels {cross_attention_levels} must index channels and need context_dim > 0")
        self.config = dict(in_channels=in_channels, channels=tuple(channels), blocks=blocks,
                           attention_levels=tuple(attention_levels), num_classes=num_classes, patch=patch,
                           dropout=dropout, heads=heads, objective=objective)
        if context_dim:
            self.config.update(context_dim=context_dim, cross_attention_levels=tuple(cross_attention_levels))
        if pad_input:
            self.config.update(pad_input=True)
        self.pad_input = pad_input
        self.context_dim = context_dim
        self.in_channels, self.num_classes, self.patch, self.objective = in_channels, num_classes, patch, objective
        self.levels = len(channels)
        emb_dim = 4 * channels[0]
        self.time_embed = TimestepEmbedding(emb_dim, freq_dim=channels[0])
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        if self.class_embed is not None:
            nn.init.zeros_(self.class_embed.weight)  # training starts from the unconditional model

        self.stem = nn.Conv2d(in_channels * patch * patch, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        skip_ch = [channels[0]]
        ch = channels[0]
        for lvl, width in enumerate(channels):
            for _ in range(blocks):
                self.down.append(ResBlock(ch, width, emb_dim, dropout))
                ch = width
                if lvl in attention_levels:
                    self.down.append(SelfAttention(ch, heads))
                if lvl in cross_attention_levels:
                    self.down.append(CrossAttention(ch, context_dim, heads))
                skip_ch.append(ch)
            if lvl < self.levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_ch.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout)])
        if attention_levels:
            self.mid.append(SelfAttention(ch, heads))
        if context_dim:
            self.mid.append(CrossAttention(ch, context_dim, heads))
        self.mid.append(ResBlock(ch, ch, emb_dim, dropout))
        self.up = nn.ModuleList()
        for lvl in reversed(range(self.levels)):
            width = channels[lvl]
            for _ in range(blocks + 1):
                self.up.append(ResBlock(ch + skip_ch.pop(), width, emb_dim, dropout))
                ch = width
                if lvl in attention_levels:
                    self.up.append(SelfAttention(ch, heads))
                if lvl in cross_attention_levels:
                    self.up.append(CrossAttention(ch, context_dim, heads))
            if lvl > 0:
                self.up.append(_Upsample(ch))
        self.out = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(),
                                 nn.Conv2d(ch, in_channels * patch * patch, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def min_size_multiple(self) -> int:
        return self.patch * 2 ** (self.levels - 1)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, cond) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels but the model expects in_channels={self.in_channels}")
        m = self.min_size_multiple
        if not self.pad_input and (x.shape[2] % m or x.shape[3] % m):
            raise ValueError(f"height and width must be divisible by {m} (patch={self.patch}, "
                             f"{self.levels} levels), got {tuple(x.shape[2:])}")
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must be a tensor of shape (B,) = ({x.shape[0]},), got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
        if cond is not None:
            if self.class_embed is None:
                raise ValueError("this model is unconditional (num_classes=0); pass cond=None")
            if not isinstance(cond, torch.Tensor) or cond.shape != (x.shape[0],) or cond.dtype.is_floating_point:
                raise ValueError(f"cond must be an integer label tensor of shape ({x.shape[0]},)")
            if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) > self.num_classes):
                raise ValueError(f"labels must be in [0, {self.num_classes}] ({self.num_classes} = null label), "
                                 f"got range [{int(cond.min())}, {int(cond.max())}]")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(x, t, cond)
        if not self.context_dim and context is not None:
            raise ValueError("this U-Net has no cross-attention (context_dim=0); pass context=None")
        if self.context_dim and (context is None or context.ndim != 3 or context.shape[0] != x.shape[0]
                                 or context.shape[2] != self.context_dim):
            raise ValueError(f"this U-Net has cross-attention: pass context of shape (B, L, {self.context_dim})")
        emb = self.time_embed(t)
        if self.class_embed is not None:
            if cond is None:
                cond = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_embed(cond)

        def apply(layer, h):
            if isinstance(layer, ResBlock):
                return layer(h, emb)
            if isinstance(layer, CrossAttention):
                return layer(h, context, context_mask)
            return layer(h)

        size = x.shape[-2:]
        if self.pad_input:
            m = self.min_size_multiple
            x = F.pad(x, (0, -size[1] % m, 0, -size[0] % m))
        h = F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x
        h = self.stem(h)
        skips = [h]
        for layer in self.down:
            h = apply(layer, h)
            if isinstance(layer, (SelfAttention, CrossAttention)):
                skips[-1] = h      # attention refines the block output that is kept as the skip
            else:
                skips.append(h)
        for layer in self.mid:
            h = apply(layer, h)
        for layer in self.up:
            h = apply(layer, torch.cat([h, skips.pop()], dim=1) if isinstance(layer, ResBlock) else h)
        h = self.out(h)
        h = F.pixel_shuffle(h, self.patch) if self.patch > 1 else h
        return h[..., :size[0], :size[1]] if self.pad_input else h


class _Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
