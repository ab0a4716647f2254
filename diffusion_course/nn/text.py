"""Text conditioning: a tiny Transformer text encoder and the text-to-image U-Net built on it.

Stable Diffusion's recipe in miniature (Rombach et al. 2022, Sec. 3.3): a text encoder turns the
prompt's tokens into one vector per token (CLIP ViT-L/14, 77 × 768 there; max_length × 64 here, trained
jointly with the U-Net instead of frozen), and cross-attention layers in the U-Net let every image
position read from those vectors.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from .unet import CrossAttention, UNet


class TextEncoder(nn.Module):
    """Token ids (B, L) → (context (B, L, dim), mask (B, L)); pre-norm Transformer encoder
    (Vaswani et al. 2017) with learned positions; padding (id 0) is masked out of self-attention."""

    def __init__(self, vocab_size: int, max_length: int, dim: int = 64, layers: int = 2, heads: int = 4,
                 pad_id: int = 0):
        super().__init__()
        self.pad_id, self.max_length = pad_id, max_length
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.ndim != 2 or ids.dtype != torch.long:
            raise ValueError(f"token ids must be an int64 tensor (B, L), got {tuple(ids.shape)} {ids.dtype}")
        if ids.shape[1] > self.max_length:
            raise ValueError(f"at most {self.max_length} tokens, got {ids.shape[1]}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.token.num_embeddings):
            raise ValueError(f"token ids must be in [0, {self.token.num_embeddings - 1}]")
        mask = ids != self.pad_id
        h = self.token(ids) + self.position[: ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=~mask)
        return self.norm(h), mask


class TextToImageUNet(nn.Module):
    """``model(x, t, cond=token_ids) -> ε̂``: a :class:`TextEncoder` feeding a :class:`UNet` with
    cross-attention. ``null_cond`` gives the empty caption (for caption dropout and guidance)."""

    def __init__(self, vocab_size: int, max_length: int, text_dim: int = 64, text_layers: int = 2,
                 start_id: int = 1, pad_id: int = 0, **unet_kwargs: Any):
        super().__init__()
        unet_kwargs.setdefault("cross_attention_levels", tuple(range(len(unet_kwargs.get("channels", (64, 128, 128))))))
        self.text = TextEncoder(vocab_size, max_length, text_dim, text_layers, pad_id=pad_id)
        self.unet = UNet(context_dim=text_dim, **unet_kwargs)
        self.start_id, self.pad_id, self.max_length = start_id, pad_id, max_length
        self.objective = self.unet.objective

    def null_cond(self, cond: torch.Tensor) -> torch.Tensor:
        """The empty caption, shaped like ``cond`` (B, L): ``<start>`` then padding."""
        null = torch.full_like(cond, self.pad_id)
        null[:, 0] = self.start_id
        return null

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            cond = self.null_cond(torch.zeros((x.shape[0], self.max_length), dtype=torch.long, device=x.device))
        if cond.ndim != 2 or cond.shape[0] != x.shape[0]:
            raise ValueError(f"cond must be token ids of shape (B, L) with B = {x.shape[0]}, got {tuple(cond.shape)}")
        context, mask = self.text(cond)
        return self.unet(x, t, context=context, context_mask=mask)

    def cross_attention_layers(self) -> list[tuple[str, CrossAttention]]:
        return [(name, m) for name, m in self.unet.named_modules() if isinstance(m, CrossAttention)]

    @contextmanager
    def record_attention(self) -> Iterator[list[CrossAttention]]:
        """Within the block every cross-attention layer keeps its last weights (``last_attention``)."""
        layers = [m for _, m in self.cross_attention_layers()]
        for m in layers:
            m.store_attention = True
        try:
            yield layers
        finally:
            for m in layers:
                m.store_attention = False
