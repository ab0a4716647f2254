"""Networks: timestep embeddings, the U-Net (with optional cross-attention), a text encoder and the
text-to-image U-Net, and a 2-D MLP denoiser."""
from __future__ import annotations

from .embeddings import TimestepEmbedding, timestep_embedding
from .mlp import MLPDenoiser
from .text import TextEncoder, TextToImageUNet
from .unet import CrossAttention, ResBlock, SelfAttention, UNet, count_parameters

__all__ = ["TimestepEmbedding", "timestep_embedding", "MLPDenoiser", "UNet", "ResBlock", "SelfAttention",
           "CrossAttention", "TextEncoder", "TextToImageUNet", "count_parameters"]
