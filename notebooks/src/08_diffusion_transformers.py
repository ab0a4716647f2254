# %% [markdown]
# # Chapter 8 — Diffusion transformers: patches, adaLN-Zero, and a DiT against the U-Net
#
# **Learning goals.** By the end of this chapter you can
# 1. turn an image (or a latent) into tokens and back — patchify, positional embeddings, unpatchify;
# 2. read a DiT block and explain **adaLN-Zero** conditioning, and check that a fresh DiT is the identity;
# 3. use a DiT in latent space (chapter 5's 4×7×7 latents), look at what its tokens attend to, and measure it;
# 4. count a transformer's FLOPs with its attention, compare a DiT with the course U-Net saying what is matched and what
#    is not, and read a loss-against-compute sweep.
#
# Time: under 5 minutes measured on one thread of this project's 2-core machine (one short live sweep; the long runs behind the shipped models are
# `benchmarks/dit_vs_unet.py`); a GPU is much faster.

# %%
import matplotlib.pyplot as plt
import torch

import diffusion_course as dc
from diffusion_course import latent, metrics, pretrained, profiling
from diffusion_course.nn import count_parameters
from diffusion_course.nn.dit import DIT_CONFIGS, DiT, DiTBlock, sincos_2d

print(dc.config.describe())
device = dc.config.get_device()
x_test, y_test = dc.data.load_fashion_mnist("test")

# %% [markdown]
# ## 1. From an image to tokens
#
# A transformer reads a sequence of vectors. DiT (Peebles & Xie 2023) cuts the input into $p\times p$ patches — exactly ViT's
# recipe (Dosovitskiy et al. 2021) — and maps each to a `dim`-vector with one linear layer, written as a convolution with
# kernel = stride = $p$. An $H\times W$ image with $C$ channels gives $(H/p)(W/p)$ tokens of $p\cdot p\cdot C$ numbers each;
# chapter 5's 4×7×7 latent with $p = 1$ gives one token of 4 numbers per latent position:

# %%
img = x_test[0:1]
fig, axes = plt.subplots(1, 3, figsize=(10, 3.9))
for ax, p in zip(axes, (7, 4, 2)):
    n_tokens, per_token = (28 // p) ** 2, p * p * img.shape[1]
    ax.imshow(dc.viz.to_numpy_image(img[0]), cmap="gray", vmin=0, vmax=1)
    for k in range(0, 29, p):
        ax.axhline(k - 0.5, color="tab:red", lw=0.6)
        ax.axvline(k - 0.5, color="tab:red", lw=0.6)
    ax.set_title(f"p = {p}\n{n_tokens} tokens × {per_token} numbers", fontsize=10)
    ax.set_axis_off()
fig.tight_layout()
plt.show()

# %% [markdown]
# Writing the cut itself — `patchify`, (B, C, H, W) → (B, tokens, p·p·C) — is exercise E1 at the end.
#
# **Why positional embeddings.** Self-attention treats its input as a *set*: permute the tokens and the outputs permute the
# same way. Without a position signal the model could not tell the collar from the hem. DiT adds fixed 2-D sin–cos
# embeddings (half the channels encode the row, half the column, Transformer sinusoids for each). Cosine similarity of every
# position's embedding to that of position (2, 3) on the 7×7 grid, on a 0-to-1 scale (left) and on its own scale (right):

# %%
emb = sincos_2d(128, 7, 7)
sim = torch.nn.functional.cosine_similarity(emb, emb[2 * 7 + 3][None], dim=1).reshape(7, 7)
all_pairs = torch.nn.functional.cosine_similarity(emb[:, None], emb[None], dim=-1)
fig, axes = plt.subplots(1, 2, figsize=(7, 3))
for ax, (lo, hi), title in zip(axes, ((0, 1), (None, None)), ("scale 0 to 1", "own scale")):
    im = ax.imshow(sim, cmap="viridis", vmin=lo, vmax=hi)
    ax.plot(3, 2, "x", color="red", ms=8, mew=2)
    ax.set_title(f"cos-similarity to (2, 3): {title}", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
fig.tight_layout()
plt.show()
print(f"similarity to (2, 3): min {float(sim.min()):.2f} (at the far corner), next to it "
      f"{float(sim[2, 2]):.2f}; over every pair of positions the minimum is {float(all_pairs.min()):.2f}")

# %% [markdown]
# Similarity falls steadily with distance from (2, 3) in every direction — but only down to the minimum printed above: on
# the 0-to-1 scale every position looks alike. Most of the 128 channels are slow sinusoids that hardly change over seven
# positions; position is carried by the few fast ones, as small differences that the layers after it can amplify. Nearby
# positions get more similar codes than distant ones, no two are dissimilar, and nothing here is learned.
#
# ## 2. The DiT block and adaLN-Zero
#
# The timestep embedding and the class embedding are added into one vector $c$. Every block regresses six vectors from $c$ —
# a shift, a scale and a **gate** for each of its two branches:
#
# $$h \leftarrow h + g_1\odot\mathrm{Attn}\big(\mathrm{LN}(h)(1+s_1) + b_1\big),\qquad
#   h \leftarrow h + g_2\odot\mathrm{MLP}\big(\mathrm{LN}(h)(1+s_2) + b_2\big).$$
#
# The layer that produces them is initialised to **zero**, so every gate starts at 0 and each block starts as the identity
# ("-Zero"); the final layer is zero too, so a fresh DiT predicts exactly 0. The package's block:

# %%
dc.viz.show_source(DiTBlock)

# %% [markdown]
# The course's DiT sizes are called `mini-XS`, `mini-S` and `mini-M`: far smaller than the paper's DiT-S (33 M parameters,
# Peebles & Xie 2023). A freshly built mini-S:

# %%
torch.manual_seed(0)
fresh = DiT(input_size=7, patch=1, in_channels=4, num_classes=10, **DIT_CONFIGS["mini-S"])
z = torch.randn(4, 4, 7, 7)
t = torch.tensor([0, 250, 500, 999])
h = torch.randn(4, fresh.num_tokens, DIT_CONFIGS["mini-S"]["dim"])
c = torch.randn(4, DIT_CONFIGS["mini-S"]["dim"])
with torch.no_grad():
    out = fresh(z, t, torch.tensor([0, 3, 7, 10]))
    identity = all(torch.equal(block(h, c), h) for block in fresh.blocks)
print(f"fresh mini-S ({count_parameters(fresh) / 1e6:.2f} M parameters): max |output| = {float(out.abs().max())}")
print("each block is the identity at init:", identity)

# %% [markdown]
# Why this conditioning? DiT's paper compared four ways to feed $t$ and the class (the FID of DiT-XL/2 after 400k steps
# on ImageNet 256 in Peebles & Xie 2023, Figure 5): **in-context** (append $t$ and $y$ as two extra tokens),
# **cross-attention** (tokens attend to a sequence holding $t$ and $y$ — chapter 4's mechanism for text), **adaLN**
# (regress the LayerNorm's scale and shift from $c$) and **adaLN-Zero** (also the gates, initialised to zero).
# adaLN-Zero was best and the cheapest in FLOPs; starting each residual block at the identity is the same trick as
# zero-initialising the last conv of a U-Net block (chapter 2). What it does to the first training step is exercise E2.
# Text models (SD3, Flux) keep adaLN for $t$ and let image and text tokens attend jointly (§5).
#
# ## 3. DiT in latent space
#
# Chapter 5's latents are 4×7×7; with $p = 1$ every latent position is a token: 49 tokens, no padding needed (the U-Net had
# to pad to 8×8). The shipped `fmnist-ldm-dit` is chapter 5's `LatentDiffusion` with a DiT denoiser — dim 64, depth 6,
# 4 heads: mini-S at half the width — sized to cost about what chapter 5's U-Net costs per forward, and trained by the
# project on `fmnist-ldm`'s recipe (§4 lists every way the two differ):

# %%
ldm_dit = pretrained.load("fmnist-ldm-dit", device=device)
dit_manifest = pretrained.manifest("fmnist-ldm-dit")
print(f"fmnist-ldm-dit: DiT {count_parameters(ldm_dit.model) / 1e6:.2f} M parameters, {dit_manifest.get('steps')} steps, "
      f"{dit_manifest.get('metrics', {}).get('train_wall_seconds', float('nan')) / 60:.0f} min of training")
per_class = 8
samples = ldm_dit.sample(10 * per_class, cond=torch.arange(10).repeat_interleave(per_class), steps=50,
                         generator=torch.Generator().manual_seed(0))
fig, ax = plt.subplots(figsize=(per_class * 0.75 + 1.4, 7.8))
dc.viz.show_images(samples.cpu(), nrow=per_class, ax=ax, title=f"fmnist-ldm-dit: {per_class} samples per class")
for k, name in enumerate(dc.data.FASHION_CLASSES):
    ax.text(-2, (k + 0.5) * 29, name, ha="right", va="center", fontsize=9)
plt.show()

# %% [markdown]
# **What does a token attend to?** `DiT.attention_maps` returns every block's attention weights. For three query tokens
# (marked ×), the attention of the last block, averaged over heads, drawn on the 7×7 grid beside the decoded sample:

# %%
def show_attention(model, x, t, cond, grid, image, queries, title):
    maps = model.attention_maps(x, t, cond)[-1, 0].mean(0)          # last block, first sample, mean over heads
    fig, axes = plt.subplots(1, len(queries) + 1, figsize=(2.2 * (len(queries) + 1), 2.4))
    axes[0].imshow(dc.viz.to_numpy_image(image), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("sample")
    for ax, (r, col) in zip(axes[1:], queries):
        ax.imshow(maps[r * grid + col].reshape(grid, grid).cpu(), cmap="magma")
        ax.plot(col, r, "x", color="cyan", ms=8, mew=2)
        ax.set_title(f"token ({r}, {col})")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    plt.show()


imgs, z0 = ldm_dit.sample(1, cond=torch.tensor([0]), steps=30, generator=torch.Generator().manual_seed(4), progress=False,
                          return_latents=True)
t_mid = torch.tensor([300], device=device)
z_t = dc.forward.q_sample(z0, t_mid, ldm_dit.schedule, torch.randn_like(z0))
show_attention(ldm_dit.model, z_t, t_mid, torch.tensor([0], device=device), 7, imgs[0].cpu(), [(1, 3), (3, 3), (5, 1)],
               "latent DiT, last block, t = 300")

# %% [markdown]
# Each query's brightest cells sit on and around it. One sample and one block can mislead, so measure it: over test
# latents noised to three levels, for every block, the mean attention weight a token gives to the tokens at (Chebyshev)
# distance $d$ on the grid — $d = 0$ is itself, $d = 1$ its 8 neighbours — divided by the uniform weight 1/49 (above 1:
# more than uniform attention would give). The control is a freshly built DiT of the same shape: what it shows comes from
# the sin–cos codes alone, not from training. If attention were not local the two would look alike.

# %%
rows, cols = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
cells = torch.stack([rows.flatten(), cols.flatten()], 1)
dist = (cells[:, None] - cells[None]).abs().amax(-1)                  # (49, 49) Chebyshev distance between tokens
n_att = dc.config.budget(quick=8, cpu=64, gpu=256)
z_att = ldm_dit.encode(x_test[:n_att].to(device))
torch.manual_seed(0)
fresh_dit = pretrained.build_denoiser("dit", pretrained.RECIPES["fmnist-ldm-dit"].model).to(device)


def attention_by_distance(model, t_value):
    """Per block: mean attention weight × 49 at each distance 0..6, and the share of attention within distance 1."""
    t = torch.full((n_att,), t_value, device=device)
    noise = torch.randn(z_att.shape, generator=torch.Generator().manual_seed(t_value)).to(device)
    maps = model.attention_maps(dc.forward.q_sample(z_att, t, ldm_dit.schedule, noise), t,
                                y_test[:n_att].to(device)).mean((1, 2)).cpu()     # (depth, 49, 49): mean over samples, heads
    by_distance = torch.stack([maps[:, dist == d].mean(-1) for d in range(7)], 1) * 49
    return by_distance, (maps * (dist <= 1)).sum(-1).mean(-1)


uniform_near = float((dist <= 1).sum(1).float().mean() / 49)
print(f"share of attention on the 3×3 neighbourhood, per block (uniform attention gives {uniform_near:.3f}):")
near = {}
for t_value in (100, 500, 900):
    profile, near["trained", t_value] = attention_by_distance(ldm_dit.model, t_value)
    fresh_profile, near["fresh", t_value] = attention_by_distance(fresh_dit, t_value)
    if t_value == 500:
        profiles = (profile, fresh_profile)
    print(f"  t = {t_value}: trained " + " ".join(f"{v:.2f}" for v in near["trained", t_value].tolist())
          + f" (mean {float(near['trained', t_value].mean()):.2f}); fresh mean {float(near['fresh', t_value].mean()):.3f}")
trained_x = float(torch.stack([near["trained", t] for t in (100, 500, 900)]).mean()) / uniform_near
fresh_x = float(torch.stack([near["fresh", t] for t in (100, 500, 900)]).mean()) / uniform_near
print(f"mean over blocks and noise levels: trained {trained_x:.2f}× uniform, fresh {fresh_x:.2f}× →",
      "the trained DiT attends locally, and it learned to" if trained_x > 1.5 * fresh_x
      else "no locality beyond what a fresh network shows")
fig, ax = plt.subplots(figsize=(5.5, 3.2))
for b in range(profiles[0].shape[0]):
    ax.plot(range(7), profiles[0][b], "o-", label=f"block {b + 1}")
ax.plot(range(7), profiles[1].mean(0), "k--", label="fresh DiT (mean of blocks)")
ax.axhline(1, color="gray", lw=0.8)
ax.set_yscale("log")
ax.set_yticks([0.25, 0.5, 1, 2, 4, 8], ["1/4", "1/2", "1", "2", "4", "8"])
ax.minorticks_off()
ax.set_xlabel("distance d on the 7×7 grid (Chebyshev)")
ax.set_ylabel("attention ÷ uniform")
ax.set_title("trained latent DiT at t = 500", fontsize=10)
ax.legend(fontsize=7, ncol=2)
plt.show()

# %% [markdown]
# The trained DiT gives a token's own 3×3 neighbourhood more than the uniform share of its attention in every block (the
# per-block shares are printed above), while the fresh network stays at the uniform level: the locality is learned. It
# is strongest at low noise, where what is left to fix is local detail, and weakens towards t = 900, where tokens look
# further. In the plot, the weight is highest at short distances — a token's own cell and its neighbours get more than the
# uniform weight, middle distances less — and rises again for some blocks at the largest distances (the grid's far
# corners, few tokens); the fresh DiT's line is flat at 1. The transformer has
# learned from data the prior a convolution starts with; that learning is part of the cost in §4.
#
# **Try it.** Pick a garment, a query token (its row and column on the 7×7 grid), a block and $t$. The first panel frames
# the query token in cyan on the garment, the second decodes $z_t$ (what the DiT sees at that noise level), the third
# draws the token's attention over all the tokens as a heat map over the garment (brighter is more, scaled to the map's
# own largest weight; the garment is blended underneath, so dark background cells are partly the underlay); the line
# below prints its share on the 3×3 neighbourhood next to what uniform attention would give. A new $t$ (or garment)
# costs one forward pass, which gives every block's maps at once and is kept: moving the token, the block or the head
# redraws from it.

# %%
attention_explorer = dc.widgets.AttentionExplorer(ldm_dit, x_test, y_test, dc.data.FASHION_CLASSES, index=1, t=300,
                                                  row=2, col=3)
attention_explorer

# %% [markdown]
# For readers on GitHub (where widgets do not run), the explorer at a few settings: one token of a pullover at low and
# high noise, in the first and the last block. Each panel is scaled to its own maximum, so compare the titles' shares on
# the 3×3 neighbourhood, not the colours — and against uniform attention, which puts 9 of the 49 tokens' worth there for
# a token away from the edge. Read which block narrows as the noise falls, and which stays broad at both noise levels:
# compare with the per-block averages over all tokens printed above.

# %%
last_block = len(ldm_dit.model.blocks)
attention_explorer.figure([{"t": 100, "block": 1}, {"block": last_block}, {"t": 900, "block": 1},
                           {"block": last_block}])
plt.show()

# %% [markdown]
# ## 4. DiT vs U-Net: matched compute, and what is not matched
#
# "Transformers scale better" is a claim about compute, so compare at equal **training FLOPs** (a training step ≈ 3
# forwards). The course counts FLOPs with `profiling.flops_per_forward`: matrix multiplications and convolutions, 2 FLOPs
# per multiply–add. `torch.utils.flop_counter` alone has a blind spot: on a CPU, `scaled_dot_product_attention` runs as one
# fused kernel it has no formula for, so the DiT's attention counted as free. `profiling` adds it —
# $2\cdot B\cdot\text{heads}\cdot L^2\cdot d$ for $QK^\top$ and as much again for the weights times $V$:

# %%
dc.viz.show_source(profiling.attention_flops)

# %%
unet = pretrained.build_denoiser("unet", pretrained.RECIPES["fmnist-ldm"].model)
nets = {"U-Net (fmnist-ldm)": unet,
        "DiT (fmnist-ldm-dit)": pretrained.build_denoiser("dit", pretrained.RECIPES["fmnist-ldm-dit"].model)}
nets.update({name: profiling.scaling_model(name) for name in DIT_CONFIGS})
flops, flops_torch = {}, {}
print(f"{'MFLOPs per forward':>21} {'torch alone':>12} {'with attention':>15} {'parameters':>11}")
for name, net in nets.items():
    flops_torch[name] = profiling.flops_per_forward(net, (4, 7, 7), attention=False)
    flops[name] = profiling.flops_per_forward(net, (4, 7, 7))
    print(f"{name:>21} {flops_torch[name] / 1e6:12.1f} {flops[name] / 1e6:15.1f} {count_parameters(net) / 1e6:9.2f} M")
U, D = "U-Net (fmnist-ldm)", "DiT (fmnist-ldm-dit)"
print(f"the shipped DiT per forward, relative to the U-Net: {flops_torch[D] / flops_torch[U]:.2f}× on torch's count alone "
      f"(what it was sized by), {flops[D] / flops[U]:.2f}× with attention")
pixel = {}
for p in (4, 2):
    net = profiling.scaling_model("mini-XS", space="pixel", patch=p)
    pixel[p] = (profiling.flops_per_forward(net, (1, 28, 28)), profiling.flops_per_forward(net, (1, 28, 28), attention=False))
    print(f"pixel-space mini-XS, patch {p} ({net.num_tokens} tokens): {pixel[p][0] / 1e6:.1f} MFLOPs with attention, "
          f"{pixel[p][1] / 1e6:.1f} without")
print(f"halving the patch (4× the tokens): attention ×{(pixel[2][0] - pixel[2][1]) / (pixel[4][0] - pixel[4][1]):.1f}, "
      f"everything else ×{pixel[2][1] / pixel[4][1]:.1f}, total ×{pixel[2][0] / pixel[4][0]:.1f}")

# %% [markdown]
# The U-Net's two counts agree: its few attention layers sit at the 2×2 bottleneck and their inputs are strided views, so
# SDPA falls back to plain matrix multiplications, which torch counts. The DiT's do not: the shipped latent DiT was sized
# to the U-Net on torch's count alone, and with attention it costs *more* per forward than the U-Net (the two ratios
# printed above). Attention grows with the square of the tokens — 4× the tokens, 16× the attention — which is why DiT
# works on latents and why the patch size is its main cost knob.
#
# **What is matched and what is not.** The shipped pair were trained on the same latents with the same steps, batch,
# label dropout and timestep sampling. Every difference, from the recipes (`dc.recipes.RECIPES`) and the checkpoints'
# manifests:

# %%
recipe_u, recipe_d = pretrained.RECIPES["fmnist-ldm"], pretrained.RECIPES["fmnist-ldm-dit"]
unet_manifest = pretrained.manifest("fmnist-ldm")
um, dm = unet_manifest.get("metrics", {}), dit_manifest.get("metrics", {})
ldm_unet = pretrained.load("fmnist-ldm", device=device)
nan = float("nan")
table = [("parameters", f"{count_parameters(ldm_unet.model) / 1e6:.2f} M", f"{count_parameters(ldm_dit.model) / 1e6:.2f} M"),
         ("MFLOPs per forward, torch alone", f"{flops_torch[U] / 1e6:.1f}", f"{flops_torch[D] / 1e6:.1f}"),
         ("MFLOPs per forward, with attention", f"{flops[U] / 1e6:.1f}", f"{flops[D] / 1e6:.1f}")]
table += [(f"recipe: {key}", str(recipe_u.train[key]), str(recipe_d.train.get(key)))
          for key in sorted(recipe_u.train) if recipe_u.train[key] != recipe_d.train.get(key)]
table += [("architecture", "width screened (research/latent_unet_width.py)", "one configuration, untuned"),
          ("training wall time, 1 thread", f"{um.get('train_wall_seconds', nan):.0f} s", f"{dm.get('train_wall_seconds', nan):.0f} s"),
          ("seconds per 1,000 samples (DDIM-50)", f"{um.get('sample_seconds_cond', nan) * 1000 / um.get('n', nan):.0f}",
           f"{dm.get('sample_seconds_cond', nan) * 1000 / dm.get('n', nan):.0f}")]
print(f"{'':>36}   {'U-Net (fmnist-ldm)':<46} DiT (fmnist-ldm-dit)")
for row_name, a, b in table:
    print(f"{row_name:>36}   {a:<46} {b}")
print("the same in both recipes:", ", ".join(f"{k}={v}" for k, v in sorted(recipe_u.train.items())
                                             if recipe_d.train.get(k) == v and k in ("steps", "batch_size", "warmup",
                                                                                      "lr_decay", "ema_decay", "p_uncond",
                                                                                      "t_sampling")))

# %% [markdown]
# So this is not "a DiT against a U-Net" but **an untuned DiT** — fewer parameters, half the learning rate, one
# configuration — against a U-Net whose width was chosen by a screen, at about the same FLOPs per step. Their FIDs
# (n = 1000, class-balanced, DDIM-50, from the manifests), a live check at a small n, and the training compute:

# %%
for name, m, steps in (("U-Net", um, unet_manifest.get("steps")), ("DiT", dm, dit_manifest.get("steps"))):
    print(f"{name}: FID cond {m.get('fid_cond', nan):.2f} (balanced floor {m.get('floor_balanced', nan):.2f}), "
          f"uncond {m.get('fid_uncond', nan):.2f} (floor {m.get('floor', nan):.2f}), {steps} steps")
clf = pretrained.load("fmnist-classifier", device=device)
n_fid = dc.config.budget(quick=20, cpu=200, gpu=1000)
ref = metrics.reference_images(n_fid, class_balanced=True)
labels = torch.arange(n_fid) % 10
for name, model in (("U-Net", ldm_unet), ("DiT", ldm_dit)):
    xs = model.sample(n_fid, cond=labels, steps=50, generator=torch.Generator().manual_seed(0), progress=False)
    print(f"live, n = {n_fid}: {name} FID {metrics.fid(clf, xs.cpu(), ref):.1f} "
          f"(balanced floor {metrics.fid_floor(clf, n_fid, class_balanced=True):.1f})")
batch, steps_u, steps_d = recipe_u.train["batch_size"], unet_manifest.get("steps", 0), dit_manifest.get("steps", 0)
print(f"training compute (3 × forward × batch × steps): U-Net {3 * flops[U] * batch * steps_u / 1e12:.1f} TFLOPs, "
      f"DiT {3 * flops[D] * batch * steps_d / 1e12:.1f} with attention ({3 * flops_torch[D] * batch * steps_d / 1e12:.1f} "
      f"on torch's count alone)")
ratio = dm.get("fid_cond", nan) / um.get("fid_cond", nan)
print(f"the DiT's FID is {ratio:.2f}× the U-Net's, with {flops[D] * steps_d / (flops[U] * steps_u):.2f}× its training "
      "compute →",
      "the U-Net has the lower FID" if ratio > 1 else "the DiT has the lower FID")

# %% [markdown]
# At this compute — tens of TFLOPs, a quarter of a CPU-hour — the U-Net is clearly ahead of an untuned DiT, and counting
# attention only strengthens that: the DiT had slightly *more* training compute than the U-Net, not less. The U-Net's
# locality and multi-scale structure are priors that a transformer has to learn from data (§3 watched it learn one). What this does
# not show is that U-Nets beat transformers: making the fight fair would take a DiT screen the size of the U-Net's
# (widths and learning rates on the same recipe) — hours on this CPU, a job for `benchmarks/`, not a chapter. The DiT is
# also slower, to train and per sample, at about the same FLOPs (the table), so on this CPU it gets fewer FLOPs done per
# second than the U-Net's convolutions do — FLOPs are not seconds.
#
# **Loss against FLOPs: a small sweep.** The live version of `benchmarks/dit_vs_unet.py`: the U-Net, the shipped DiT's
# architecture (`dit`) and the three mini DiTs trained from scratch, each with its recipe's learning rate, for the **same
# number of steps** — equal steps, not matched compute: a bigger model spends more FLOPs per step, so its curve ends
# further right. Held-out loss is ε-MSE on test latents with fixed t and noise, the same draw for every model; the FLOPs
# axis is logarithmic because the costs differ by more than ten times.

# %%
schedule = pretrained.schedule_for("fmnist-ldm")
z_train, y_lat = latent.encode_training_set(ldm_unet.vae, device=device)
scale = ldm_unet.scale_factor
n_held = dc.config.budget(quick=200, cpu=1000, gpu=2000)
z_held = latent.encode_dataset(ldm_unet.vae, x_test[:n_held].to(device), progress=False) * scale
sweep_steps = dc.config.budget(quick=4, cpu=300, gpu=3000)
curves = {}
for kind in ("unet", "dit", "mini-XS", "mini-S"):     # mini-M (365 MFLOPs) would double the sweep: see docs/results.md
    lr = (recipe_u if kind == "unet" else recipe_d).train["lr"]
    torch.manual_seed(0)
    _, curve, fwd, seconds = profiling.loss_vs_compute(profiling.scaling_model(kind), z_train * scale, y_lat, z_held,
                                                       y_test[:n_held], schedule, sweep_steps, 32, lr, evals=4,
                                                       desc=f"{kind}, lr {lr:g}")
    curves[kind] = curve
    print(f"{kind:>7}: {fwd / 1e6:5.1f} MFLOPs/forward, held-out loss {curve[-1][2]:.4f} after "
          f"{curve[-1][1] / 1e12:.3f} training TFLOPs ({seconds:.0f} s)")
fig, ax = plt.subplots(figsize=(6, 3.8))
for kind, curve in curves.items():
    ax.plot([c[1] for c in curve], [c[2] for c in curve], "o-", label=kind)
ax.set_xscale("log")
ax.set_xlabel("training compute (FLOPs, log scale)")
ax.set_ylabel("held-out ε-MSE")
ax.set_title(f"{sweep_steps} steps each at batch 32", fontsize=10)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The question the plot asks is whether the curves cross: does a model that is worse at small compute become better at
# larger compute? `profiling.curve_crossings` compares every pair on the compute range both were measured on. Pairs whose
# ranges do not overlap are not compared: every run's first point is taken at a quarter of its steps, still inside the
# 100-step warm-up, so the cheap model's end against the dear model's start says nothing.

# %%
crossing_rows = profiling.curve_crossings(curves)
for row in crossing_rows:
    if row["overlap"] is None:
        what = "no common range: not compared"
    else:
        what = (f"CROSS near {row['at'] / 1e12:.3f} TFLOPs" if row["crosses"]
                else f"no crossing on {row['overlap'][0] / 1e12:.3f}–{row['overlap'][1] / 1e12:.3f} TFLOPs, "
                     f"{row['lower']} lower")
    print(f"{row['a']:>7} vs {row['b']:<7}: {what}")
crossed = [f"{r['a']}/{r['b']}" for r in crossing_rows if r["crosses"]]
print("pairs that cross:", ", ".join(crossed) or "none")
vs_unet = [r for r in crossing_rows if "unet" in (r["a"], r["b"]) and r["overlap"] is not None]
other = {r["a"] if r["b"] == "unet" else r["b"]: r for r in vs_unet}
for name, r in other.items():
    print(f"U-Net vs {name}: " + ("the curves cross — the DiT is lower at the small-compute end, the U-Net after "
                                  f"{r['at'] / 1e12:.3f} TFLOPs" if r["crosses"] else f"{r['lower']} lower throughout"))
by_steps = sorted([k for k in curves if k.startswith("mini")], key=lambda k: curves[k][-1][2])
print("the mini DiTs at equal steps, lowest final loss first:", ", ".join(by_steps))
ratios = {name: 2 * g * 1e9 / profiling.flops_per_forward(profiling.scaling_model("mini-S"), (4, 7, 7))
          for name, g in (("DiT-S/2", 6.06), ("DiT-XL/2", 118.6))}   # the paper's Gflops count multiply–adds
print("the paper's forward passes against our mini-S: " + ", ".join(f"{k} {v:.0f}×" for k, v in ratios.items()))

# %% [markdown]
# How to read it. The printout says, pair by pair, which curve is lower where both were measured and whether they cross,
# and which mini DiT ends lowest at equal *steps* (more FLOPs per step buy a better model — the scaling claim — but they
# pay for it). A crossing at the small-compute end means the cheaper network learns faster in its first steps and the
# U-Net overtakes it; what matters for "which to train" is which curve is lower at the compute you can afford. The
# benchmark's longer runs are in `docs/results.md`. At this scale the convolution's priors buy more per FLOP than a
# transformer's linear layers and attention.
#
# Peebles & Xie (2023) report, in their table of FID-50K against Gflops after 400k training steps on ImageNet 256×256,
# DiT-S/2 (6.06 Gflops per forward) 68.4, DiT-B/2 (23.0) 43.5, DiT-L/2 (80.7) 23.3 and DiT-XL/2 (118.6) 19.5: FID falls
# steadily with Gflops. Those models' forward passes cost the multiples of our mini-S printed above (their Gflops count
# multiply–adds, two FLOPs each in our convention) and train for 400k steps at batch 256 (XL/2 for 7M steps in their
# final runs, Sec. 5). DiT's advantage over U-Nets is a property of scale and long training; at a CPU's budget
# the convolution's priors are worth more than the transformer's flexibility. E3 asks you to read a plot like this one.
#
# ## 5. What we dropped, and where DiTs went next
#
# > **What we dropped.**
# > * **A learned variance.** DiT predicts Σ as well as ε — its output has 2C channels, the second half interpolating
# >   (in log space) between $\beta_t$ and chapter 3's $\tilde\beta_t$ (improved DDPM, Nichol & Dhariwal 2021) —
# >   trained with $L_{\text{simple}}$ plus $L_{\text{vlb}}$. Ours outputs C channels, a fixed variance and the ε-MSE
# >   only; DDIM does not need Σ.
# > * **The headline number.** DiT-XL/2's FID 2.27 on ImageNet 256×256 (Peebles & Xie 2023) uses classifier-free guidance
# >   at scale 1.5 and 250 DDPM sampling steps, after 7M training steps; our FIDs are in our own classifier's features on
# >   Fashion-MNIST and cannot be compared with it.
# > * **What later DiTs changed.** SD3's **MM-DiT** (Esser et al. 2024) gives text and image tokens their own weights and
# >   lets them attend jointly; Flux (Black Forest Labs 2024) replaces the added sin–cos codes by **RoPE**, rotary position
# >   embeddings that rotate queries and keys by their position (Su et al. 2021), so attention sees relative offsets;
# >   **QK-norm** normalises queries and keys before their dot product (Dehghani et al. 2023, used in SD3) so the attention
# >   logits cannot grow without bound — a fix for training instability at large scale.
#
# * **MM-DiT** (Stable Diffusion 3, Esser et al. 2024; Flux): text tokens and image tokens are concatenated into one
#   sequence and attend *jointly* (each modality with its own weights), instead of chapter 4's one-way cross-attention;
#   the timestep (and a pooled text vector) still enters through adaLN, exactly as in the block above.
# * **Rectified-flow training** (SD3): the same transformer trained to predict a velocity along straight noise-to-data
#   paths, with logit-normal timesteps — a close relative of chapter 2's v-objective and its log-SNR-normal timesteps.
# * **Spacetime patches** (Sora): a video latent cut into $p_t\times p\times p$ patches becomes one long token sequence; the
#   patchify above with a third axis.
#
# ## 6. Exercises (checked automatically)
#
# **E1. Patchify.** Write `my_patchify(x, p)`: (B, C, H, W) → (B, (H/p)(W/p), p·p·C), row-major over patches, each patch
# flattened as (row, column, channel). The placeholder fails on purpose; `dc.exercises.solution("patchify")` shows one.

# %%
def my_patchify(x, p):
    # TODO: your code here
    return x.flatten(1)[:, None]


dc.exercises.check(my_patchify, "patchify");

# %% [markdown]
# The package's `patchify` and its inverse `unpatchify` (imported only now, after E1) round-trip exactly:

# %%
from diffusion_course.nn.dit import patchify, unpatchify

print("unpatchify(patchify(x)) == x for p = 1, 2, 4, 7, 14:",
      all(torch.equal(unpatchify(patchify(img, p), p, 1, 28, 28), img) for p in (1, 2, 4, 7, 14)))

# %% [markdown]
# **E2. adaLN-Zero at the first step.** A fresh DiT outputs exactly 0 and each of its blocks is the identity (§2). Give it
# one training step: a loss on a batch, then `backward()`. Which parameters get a non-zero gradient?
#
# (a) all of them — zero initialisation does not stop gradients;
# (b) only the adaLN modulation layers — the gates must open first;
# (c) only the final linear layer;
# (d) none — a network whose output is exactly 0 passes no gradient back.
#
# Reason it out first (follow a gradient back from the loss: which weights does it cross, and what are they at
# initialisation?), then, if you like, check it on `fresh` with `p.grad` for `fresh.named_parameters()`. Then ask
# yourself what would go wrong if the gates started random instead. `dc.exercises.solution("adaln_zero")` discusses both.

# %%
my_answer = "?"   # TODO: "a", "b", "c" or "d"
dc.exercises.check(my_answer, "adaln_zero");

# %% [markdown]
# **E3. Reading a scaling plot.** A loss-against-compute plot answers one question: *at a given compute budget, which
# model should I have trained?* Write `my_best_at(curves, flops)`: `curves` maps a model's name to its curve from
# `profiling.loss_vs_compute` (a list of [step, training FLOPs, held-out loss], FLOPs increasing, like `curves` above);
# return the name of the model with the lowest loss at `flops` training FLOPs, reading each curve as the plot draws it
# (straight lines between its points on the log-FLOPs axis) and counting only the models whose curve covers that budget;
# None if none does. The model whose curve *ends* lowest is not the answer: the curves end at different compute. If your
# function passes, it is run on this chapter's sweep at each model's final budget.

# %%
def my_best_at(curves, flops):
    # TODO: your code here
    return None


if dc.exercises.check(my_best_at, "best_at"):
    for budget in sorted(curve[-1][1] for curve in curves.values()):
        print(f"at {budget / 1e12:.3f} TFLOPs train: {my_best_at(curves, budget)}")

# %% [markdown]
# ## Summary
#
# * DiT = patchify → sin–cos positions → transformer blocks conditioned by adaLN-Zero → final adaLN → unpatchify.
# * adaLN-Zero makes every block the identity at init and a fresh DiT predicts 0 — measured above; E2 follows what that
#   does to the first gradient.
# * Tokens cost: halving the patch size quadruples the tokens, roughly quadruples the linear work and multiplies attention
#   by 16 — counted above, attention included (`torch.utils.flop_counter` alone skips the fused attention kernel on a CPU).
# * The trained latent DiT attends locally, and a fresh one does not: it learned the prior a convolution is born with.
# * At this compute a U-Net beats an untuned DiT of about the same FLOPs per step (FID), and the sweep shows where each
#   curve is lower per FLOP; the paper's DiT advantage comes with scale and long training. Say what is matched and what is not — parameters,
#   learning rate, tuning, seconds — before you call a comparison fair.
#
# **References.**
# * W. Peebles, S. Xie. *Scalable Diffusion Models with Transformers.* ICCV 2023 (Sec. 3, Table 1, Fig. 3, Fig. 5, Sec. 5).
# * A. Vaswani et al. *Attention Is All You Need.* NeurIPS 2017.
# * A. Dosovitskiy et al. *An Image is Worth 16x16 Words.* ICLR 2021 (ViT).
# * A. Nichol, P. Dhariwal. *Improved Denoising Diffusion Probabilistic Models.* ICML 2021 (learned Σ, $L_{\text{vlb}}$).
# * P. Esser et al. *Scaling Rectified Flow Transformers for High-Resolution Image Synthesis.* ICML 2024 (SD3, MM-DiT,
#   QK-norm).
# * J. Su et al. *RoFormer: Enhanced Transformer with Rotary Position Embedding.* 2021 (RoPE).
# * M. Dehghani et al. *Scaling Vision Transformers to 22 Billion Parameters.* ICML 2023 (QK-norm).
