"""DiT: a diffusion transformer over image (or latent) patches (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers"), in one readable file.

    model = DiT(input_size=7, patch=1, in_channels=4, **DIT_CONFIGS["mini-S"], num_classes=10)  # 49 tokens of a 4×7×7 latent
    eps = model(z_t, t, cond)                                                              # same shape as z_t

The pipeline, each step a small piece below:
1. **Patchify** (Sec. 3.2): a conv with kernel = stride = p cuts the C×H×W input into (H/p)·(W/p) patches and maps each
   to a ``dim``-vector — one token per patch (ViT, Dosovitskiy et al. 2021).
2. **Positional embeddings**: fixed 2-D sin–cos (no parameters): attention itself is order-blind, so each token is told
   where its patch sits.
3. **DiT blocks with adaLN-Zero** (Sec. 3.2, Fig. 3): the timestep and class embeddings are summed into one vector c,
   which regresses a shift, scale and gate for the attention and MLP branches of every block:
       x = x + gate₁ · Attn(LN(x)·(1 + scale₁) + shift₁),   x = x + gate₂ · MLP(LN(x)·(1 + scale₂) + shift₂).
   The regression layer is zero-initialised, so every gate starts at 0 and each block starts as the identity.
4. **Final layer**: adaLN (shift and scale only) → linear to p·p·C values per token, also zero-initialised, so a fresh
   DiT predicts exactly 0; then **unpatchify** back to C×H×W.
Classifier-free guidance needs a "no label" input: index ``num_classes`` is the null label (``cond=None`` uses it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate
from .embeddings import TimestepEmbedding

# The course's sizes, sized for a CPU. "mini-" because they are not the paper's: DiT-S (Peebles & Xie 2023, Table 1)
# is dim 384, depth 12, 6 heads, 33 M parameters; mini-S has 1.87 M.
DIT_CONFIGS: dict[str, dict] = {
    "mini-XS": dict(dim=64, depth=4, heads=4),
    "mini-S": dict(dim=128, depth=6, heads=4),
    "mini-M": dict(dim=192, depth=8, heads=4),
}


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin–cos positional embeddings, (grid_h·grid_w, dim): half the channels encode the row, half the
    column, each with Transformer sinusoids (Vaswani et al. 2017, Sec. 3.5), as in MAE and DiT."""
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 for 2-D sin-cos embeddings, got {dim}")

    def one_axis(positions: torch.Tensor, d: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d // 2))
        angles = positions.double()[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([one_axis(rows.flatten(), dim // 2), one_axis(cols.flatten(), dim // 2)], dim=1)
    return emb.float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: LN(x)·(1 + scale) + shift, with one (shift, scale) per sample broadcast over its tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention over tokens; keeps its attention weights when ``keep_weights`` is set."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.keep_weights = False
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if self.keep_weights:         # the explicit softmax, so the maps can be drawn (chapter 8)
            w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // self.heads), dim=-1)
            self.weights = w.detach()
            out = w @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """LN → modulate → attention → gate, LN → modulate → MLP → gate; six modulation vectors from c (adaLN-Zero)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)       # adaLN-Zero: all gates 0 → the block is the identity
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) → linear to p·p·C numbers per token; zero-initialised, so a fresh DiT outputs 0."""

    def __init__(self, dim: int, patch: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        for layer in (self.adaLN_modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) → (B, (H/p)(W/p), p·p·C): the raw patches, row-major (what the conv embedding sees)."""
    patch = validate.positive_int("patch", patch)
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a tensor (B, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    B, C, H, W = x.shape
    if H % patch or W % patch:
        raise ValueError(f"image size {H}×{W} is not divisible by the patch size {patch}")
    x = x.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)


def unpatchify(tokens: torch.Tensor, patch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, N, p·p·C) → (B, C, H, W)."""
    B, N, D = tokens.shape
    gh, gw = height // patch, width // patch
    if N != gh * gw or D != patch * patch * channels:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not tile a {channels}×{height}×{width} image "
                         f"with patch {patch}")
    x = tokens.reshape(B, gh, gw, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, height, width)


class DiT(nn.Module):
    """A class-conditional diffusion transformer ``model(x, t, cond=None)`` (Peebles & Xie 2023).

    Args:
        input_size: H (= W) of the input, e.g. 7 for a 4×7×7 latent or 28 for pixels (a pair (H, W) also works).
        patch: p; the number of tokens is (H/p)·(W/p).
        in_channels: C of the input (4 for chapter 5's latents, 1 for Fashion-MNIST pixels).
        dim, depth, heads, mlp_ratio: the transformer's width, number of blocks, heads and MLP expansion.
        num_classes: labels 0..num_classes−1, plus the null label ``num_classes`` (0 = unconditional only).
        objective: what the output means ("eps", "x0" or "v"), read by the samplers.
    """

    def __init__(self, input_size: int | tuple[int, int] = 7, patch: int = 1, in_channels: int = 4, dim: int = 128,
                 depth: int = 6, heads: int = 4, mlp_ratio: float = 4.0, num_classes: int = 10, objective: str = "eps"):
        super().__init__()
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        h, w = validate.positive_int("input_size", h), validate.positive_int("input_size", w)
        if objective not in {"eps", "x0", "v"}:
            raise ValueError(f"objective must be 'eps', 'x0' or 'v', got {objective!r}")
        for name, value in (("patch", patch), ("in_channels", in_channels), ("depth", depth), ("heads", heads)):
            validate.positive_int(name, value)
        validate.integer("dim", dim, low=4)
        validate.non_negative_int("num_classes", num_classes)   # 0 = unconditional only
        validate.real("mlp_ratio", mlp_ratio, low=0.0, low_open=True)
        if h % patch or w % patch:
            raise ValueError(f"input size {h}×{w} must be divisible by the patch size {patch}")
        self.config = dict(input_size=input_size, patch=patch, in_channels=in_channels, dim=dim, depth=depth,
                           heads=heads, mlp_ratio=mlp_ratio, num_classes=num_classes, objective=objective)
        self.input_size, self.patch, self.in_channels = (h, w), patch, in_channels
        self.num_classes, self.objective = num_classes, objective
        self.x_embedder = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.register_buffer("pos_embed", sincos_2d(dim, h // patch, w // patch)[None], persistent=False)
        self.t_embedder = TimestepEmbedding(dim, freq_dim=256)
        self.y_embedder = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None
        self.blocks = nn.ModuleList([DiTBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.final = FinalLayer(dim, patch, in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT's initialisation: Xavier for linear layers, the patch embedding like a linear layer, N(0, 0.02) for
        # the label table and the timestep MLP; the adaLN and output layers stay zero (set in their classes).
        for block in self.blocks:
            for layer in (block.attn.qkv, block.attn.proj, block.mlp[0], block.mlp[2]):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        for layer in self.t_embedder.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)

    @property
    def num_tokens(self) -> int:
        return (self.input_size[0] // self.patch) * (self.input_size[1] // self.patch)

    def _check_inputs(self, x, t, cond) -> torch.Tensor:
        """``x`` in the weights' dtype (a float64/float16 input is converted; uint8 refused) after the checks."""
        want = (self.in_channels, *self.input_size)
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, want))}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not isinstance(t, torch.Tensor) or t.shape != (x.shape[0],):
            raise ValueError(f"t must be a tensor of shape ({x.shape[0]},)")
        if cond is not None:
            if self.y_embedder is None:
                raise ValueError("this DiT is unconditional (num_classes=0); pass cond=None")
            if not isinstance(cond, torch.Tensor) or cond.shape != (x.shape[0],) or cond.is_floating_point():
                raise ValueError(f"cond must be an integer label tensor of shape ({x.shape[0]},)")
            if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) > self.num_classes):
                raise ValueError(f"labels must be in [0, {self.num_classes}] ({self.num_classes} = null label), "
                                 f"got range [{int(cond.min())}, {int(cond.max())}]")
        return validate.float_tensor("x", x, check_finite=False, dtype=self.x_embedder.weight.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self._check_inputs(x, t, cond)
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed      # (B, N, dim): patchify + position
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            if cond is None:
                cond = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            c = c + self.y_embedder(cond)
        for block in self.blocks:
            h = block(h, c)
        return unpatchify(self.final(h, c), self.patch, self.in_channels, *self.input_size)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights of every block for one forward pass: (depth, B, heads, N, N); row i is what token i
        attends to."""
        for block in self.blocks:
            block.attn.keep_weights = True
        try:
            self(x, t, cond)
            maps = torch.stack([block.attn.weights for block in self.blocks])
        finally:
            for block in self.blocks:
                block.attn.keep_weights, block.attn.weights = False, None
        return maps
