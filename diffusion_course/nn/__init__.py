"""Networks: timestep embeddings, the U-Net, and a 2-D MLP denoiser."""
from .embeddings import TimestepEmbedding, timestep_embedding
from .mlp import MLPDenoiser
from .unet import ResBlock, SelfAttention, UNet, count_parameters

__all__ = ["TimestepEmbedding", "timestep_embedding", "MLPDenoiser", "UNet", "ResBlock", "SelfAttention",
           "count_parameters"]
