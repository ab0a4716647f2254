# %% [markdown]
# # Chapter 5 — Latent diffusion: compress first, then diffuse where it is cheap
#
# **Learning goals.** By the end of this chapter you can
# 1. say why pixel space is wasteful, and measure the rate–distortion trade-off of an autoencoder;
# 2. train a KL autoencoder and explain why its KL weight is tiny — and what follows: its latents are *not* N(0, I);
# 3. fit the latent **scale factor** on a whole data set (Stable Diffusion's 0.18215 is the same number for its VAE);
# 4. run diffusion in latent space with the samplers of chapter 3 and the guidance of chapter 4;
# 5. **measure** what it buys: training and sampling cost (time next to FLOPs), FID against the floor, and the decoder's
#    cap — and how the saving grows with resolution.
#
# Time: 8.4 minutes measured (506 s on one thread of a 2-core CPU beside another job: a closed-form PCA, a short autoencoder run, encoding the 60,000 training
# images once, a short latent training run and the measurements); a GPU is much faster.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

import diffusion_course as dc
from diffusion_course import latent, metrics, pretrained, profiling, sampling
from diffusion_course.nn import UNet, count_parameters
from diffusion_course.nn.autoencoder import Autoencoder

print(dc.config.describe())
device = dc.config.get_device()
CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
x_train, y_train = dc.data.load_fashion_mnist("train")
x_test, y_test = dc.data.load_fashion_mnist("test")

# %% [markdown]
# ## 1. Why pixel space is wasteful
#
# A 28×28 garment is 784 numbers, but most of them are predictable from their neighbours: edges are smooth, the
# background is flat, and the fine texture is nearly invisible. A diffusion model in pixel space spends its capacity —
# and every one of its sampling steps — on all 784. Rombach et al. (2022) split the job in two: an **autoencoder**
# learns once to throw away the imperceptible detail (*perceptual compression*), and the diffusion model then learns
# the distribution of the small latent codes (*semantic compression*).
#
# How small can the code be? Two measurements of reconstruction error against code size. First the best **linear** code
# of each size, in closed form: PCA keeps the top-$k$ eigenvectors of the training images' covariance, and no linear
# encoder–decoder pair of $k$ numbers has a lower mean squared error (Eckart–Young). Then a live nonlinear autoencoder
# ($c = 4$ channels at 7×7, 196 numbers) trained for a short budget, and the shipped one.

# %%
X = x_train.reshape(len(x_train), -1).double()
mean = X.mean(0)
cov = (X - mean).T @ (X - mean) / len(X)
eigvals, eigvecs = torch.linalg.eigh(cov)                  # ascending: flip to put the largest first
eigvecs = eigvecs.flip(1)
X_test = x_test.reshape(len(x_test), -1).double() - mean
pca = {}
for k in (49, 98, 196, 392):
    rec = ((X_test @ eigvecs[:, :k]) @ eigvecs[:, :k].T + mean).clamp(-1, 1)
    pca[k] = {"mse": float((rec - X_test - mean).pow(2).mean()), "rec": rec[:8].float().reshape(8, 1, 28, 28)}
    print(f"PCA, {k:>3} numbers ({784 / k:4.1f}× fewer than pixels): test MSE {pca[k]['mse']:.4f}")

# %% [markdown]
# A live autoencoder, $c = 4$ (the shipped shape), from scratch — the loss falls visibly within a minute or two:

# %%
rd_steps = dc.config.budget(quick=10, cpu=120, gpu=1500)
torch.manual_seed(0)
live_ae = Autoencoder(latent_channels=4, channels=(32, 64, 64))
t0 = time.perf_counter()
run = latent.train_autoencoder(live_ae, x_train, latent.AutoencoderConfig(steps=rd_steps, batch_size=32, warmup=20, seed=0),
                               device=device)
with torch.no_grad():
    live_rec = live_ae.decode(live_ae.encode(x_test[:500].to(device))[0]).clamp(-1, 1).cpu()
live_mse = float((live_rec - x_test[:500]).pow(2).mean())
print(f"{rd_steps} steps in {time.perf_counter() - t0:.0f} s → test MSE {live_mse:.4f} (first 500 test images)")
fig, ax = plt.subplots(figsize=(5, 2.6))
ax.plot(run.history.loss)
ax.set_xlabel("step")
ax.set_ylabel("L1 + β·KL")
ax.set_yscale("log")
ax.set_title("the live autoencoder learns")
plt.show()

# %%
vae = pretrained.load("fmnist-vae", device=device)
vae_manifest = pretrained.manifest("fmnist-vae")
vm = vae_manifest.get("metrics", {})
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(list(pca), [r["mse"] for r in pca.values()], "o-", label="PCA: best linear code (closed form)")
ax.plot([196], [live_mse], "s", ms=9, label=f"live autoencoder, {rd_steps} steps")
if "test_mse" in vm:
    ax.plot([196], [vm["test_mse"]], "*", ms=14, label=f"shipped fmnist-vae ({vae_manifest['steps']} steps)")
ax.set_xlabel("code size (numbers per image)")
ax.set_ylabel("test MSE (images in [−1, 1])")
ax.set_yscale("log")
ax.set_title("rate–distortion: fewer numbers, larger error")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))   # beside the axes: no point hides behind it
plt.show()

# %% [markdown]
# Fewer numbers, larger error: each halving of the linear code multiplies its error (compare the test MSEs printed
# above). A short autoencoder run is far above
# the linear optimum — it has not learned yet — while the shipped one, trained 9,000 steps (4.8 epochs), beats the best linear code of
# the same size: the nonlinearity earns its keep. The shipped shape is $c = 4$ at 7×7, Stable Diffusion's choice of 4
# channels at $f = 4$ here (their $f = 8$ at 512×512): 196 numbers, 4× fewer than the pixels. Reconstructions (top: test
# images; then PCA with 49 and 196 numbers; the live autoencoder):

# %%
dc.viz.show_images(torch.cat([x_test[:8], pca[49]["rec"], pca[196]["rec"], live_rec[:8]]), nrow=8,
                   title="test images; PCA-49; PCA-196; live autoencoder (196 numbers)", size=3.5)
plt.show()

# %% [markdown]
# ## 2. The autoencoder
#
# Encoder: a residual conv stack (GroupNorm, SiLU) with two stride-2 convolutions, 28 → 14 → 7, ending in $2c$ channels: the
# mean and log-variance of a Gaussian posterior $q(z\mid x) = \mathcal N(\mu(x), \operatorname{diag}\sigma^2(x))$. A sample is drawn with
# the **reparameterisation trick** $z = \mu + \sigma\odot\varepsilon$; the decoder mirrors the encoder. The loss is
#
# $$\mathcal L = \lVert x - D(z)\rVert_1 \;+\; \beta\,\mathrm{KL}\big(q(z\mid x)\,\Vert\,\mathcal N(0, I)\big),\qquad
# \mathrm{KL} = \tfrac12\textstyle\sum_j \big(\mu_j^2 + \sigma_j^2 - 1 - \log\sigma_j^2\big),$$
#
# with $\beta = 10^{-4}$ (per sample, both terms summed over dimensions). Here is the loss as the package computes it:

# %%
dc.viz.show_source(latent.vae_loss)

# %%
print(f"shipped fmnist-vae: {count_parameters(vae) / 1e6:.2f} M parameters, {vae_manifest.get('steps')} steps, "
      f"{vm.get('train_wall_seconds', float('nan')) / 60:.0f} min to train on {vae_manifest.get('device')}")
print(f"test set (10,000 images): MSE {vm.get('test_mse', float('nan')):.4f}, PSNR {vm.get('test_psnr_db', float('nan')):.1f} dB")
print(f"the decoder's cap (FID of decoded real images, n = {vm.get('n')}): {vm.get('fid_reconstruction', float('nan')):.2f} "
      f"vs floor {vm.get('floor', float('nan')):.2f} on random sets, {vm.get('fid_reconstruction_balanced', float('nan')):.2f} "
      f"vs {vm.get('floor_balanced', float('nan')):.2f} on class-balanced sets")
with torch.no_grad():
    mean, logvar = vae.encode(x_test[:500].to(device))
    rec = vae.decode(mean).clamp(-1, 1).cpu()
mse_live = float((rec - x_test[:500]).pow(2).mean())
print(f"re-measured now on 500 test images: MSE {mse_live:.4f}")
dc.viz.show_images(torch.cat([x_test[:10], rec[:10]]), nrow=10, title="test images (top) and their reconstructions", size=2.6)
plt.show()

# %% [markdown]
# **The decoder's cap** — the FID of decoded real images, printed above — is what this chapter compares every latent model
# with. Every sample of a latent model comes out of this decoder; a latent model that learned the distribution of the
# latents perfectly would produce decoded real images, and score the cap. It is a benchmark, not a theorem: nothing forbids a
# latent model's errors from happening to move its samples' features closer to the real ones, but a latent model scoring
# well below the cap would be a surprise to investigate. Like every FID here it is compared with the floor of two real sets
# of the same size.
#
# What do the four latent channels hold? Each is a 7×7 image:

# %%
fig, axes = plt.subplots(4, 6, figsize=(7, 4.8))
for col in range(6):
    axes[0, col].set_title(CLASSES[int(y_test[col])], fontsize=8)
    for ch in range(4):
        axes[ch, col].imshow(mean[col, ch].cpu(), cmap="RdBu_r")
        axes[ch, col].set_xticks([]); axes[ch, col].set_yticks([])
for ch in range(4):
    axes[ch, 0].set_ylabel(f"channel {ch}")
fig.suptitle("the latent: 4 channels × 7×7 (posterior means)")
plt.tight_layout()
plt.show()

# %% [markdown]
# The channels are blurry, spatially laid-out summaries of the garment — a latent that still "looks like" the image,
# which is why a convolutional U-Net (or a transformer over its 49 positions, chapter 8) suits it.
#
# **Interpolation.** Walking from one garment to another in latent space (decode each mix) vs in pixel space (mix the pixels):

# %%
a, b = x_test[0:1].to(device), x_test[2:3].to(device)
print(f"from test image 0 (a {CLASSES[int(y_test[0])]}) to test image 2 (a {CLASSES[int(y_test[2])]})")
alphas = torch.linspace(0, 1, 8)
with torch.no_grad():
    za, zb = vae.encode(a)[0], vae.encode(b)[0]
    lat_path = torch.cat([vae.decode((1 - s) * za + s * zb) for s in alphas]).clamp(-1, 1).cpu()
pix_path = torch.cat([(1 - s) * a.cpu() + s * b.cpu() for s in alphas])
dc.viz.show_images(torch.cat([lat_path, pix_path]), nrow=8, title="latent-space (top) vs pixel-space (bottom) interpolation",
                   size=2.6)
plt.show()

# %% [markdown]
# Pixel mixing cross-fades two pictures. The latent path does something else — compare its middle frames with the pixel
# blend's — but for garments as different as these it is more a sharper superposition than a new shape in between (the
# explorer below walks closer pairs). (This autoencoder was trained
# only to reconstruct, so its in-betweens are not guaranteed to be garments — making *every* latent decode to a garment
# is the diffusion model's job.)
#
# **Try it.** Pick two garments and drag α: the third panel decodes $(1-\alpha)\,z_A + \alpha\,z_B$, the fourth mixes the
# pixels $(1-\alpha)\,x_A + \alpha\,x_B$. The *channel* picker multiplies one of the four latent channels of the blend by
# the *gain*: 0 switches that channel off, above 1 exaggerates it — what does the decoder make of a latent without it?
# Decoding one 4×7×7 latent is cheap (the cell prints the time of one update), so the panels follow the slider as it moves.

# %%
latent_explorer = dc.widgets.LatentExplorer(vae, x_test, y_test, CLASSES, a=0, b=2)
start = time.perf_counter()
latent_explorer.alpha.value = 0.25
print(f"one update (decode one latent, draw four panels): {(time.perf_counter() - start) * 1e3:.0f} ms")
latent_explorer.alpha.value = 0.5
latent_explorer

# %% [markdown]
# For readers on GitHub (where widgets do not run), the explorer at a few settings: a T-shirt walked into a dress (top:
# decoded latent blend; bottom: pixel blend), then the half-way blend with each latent channel switched off in turn.
# Compare the columns: how much of the garment is left without each channel?

# %%
latent_explorer.figure([{"a": 19, "b": 13, "alpha": 0.0}, {"alpha": 0.25}, {"alpha": 0.5}, {"alpha": 0.75},
                        {"alpha": 1.0}])
plt.show()
latent_explorer.figure([{"a": 19, "b": 13, "alpha": 0.5, "channel": -1}]
                       + [{"channel": c, "gain": 0.0} for c in range(4)])
plt.show()

# %% [markdown]
# ## 3. The latents are not N(0, I) — and the scale factor
#
# Why is β so small? With β = 1 the KL term would pull every $q(z\mid x)$ to $\mathcal N(0, I)$: the codes would carry
# little information and reconstructions would blur (the classic VAE trade-off). Latent diffusion does not need
# the latents to *be* standard normal — the diffusion model learns their distribution — it needs them compact, smooth and of
# bounded scale. A tiny β keeps a little posterior noise (so the decoder is smooth around each code) and the scale in
# check, and costs almost nothing in reconstruction. What follows:

# %%
sigma = (0.5 * logvar).exp()
print(f"posterior means over 500 test images: mean {float(mean.mean()):+.3f}, std {float(mean.std()):.3f}; "
      f"per channel std {[round(float(s), 2) for s in mean.std(dim=(0, 2, 3))]}")
print(f"posterior std σ(x): median {float(sigma.median()):.4f} (N(0, I) would have 1)")
with torch.no_grad():
    garbage = vae.decode(torch.randn(10, 4, 7, 7, generator=torch.Generator().manual_seed(0)).to(device)).clamp(-1, 1).cpu()
dc.viz.show_images(garbage, nrow=10, title="decoding z ~ N(0, I): not garments", size=2.6)
plt.show()

# %% [markdown]
# Random normal latents decode to garbage: they are not where the encoder puts garments. Diffusion will learn where it does.
#
# The noise schedules of chapters 1–4 assume data of roughly unit variance: ᾱ decides how much signal is left only if the
# signal has the variance the schedule was designed for. Latents with standard deviation $c$ carry $c^2$ times the signal
# power, so at every $t$
#
# $$\mathrm{SNR}_t = \frac{\bar\alpha_t\,c^2}{1-\bar\alpha_t},\qquad \lambda_t = \log\mathrm{SNR}_t = \lambda_t^{\text{schedule}} + 2\ln c:$$
#
# the whole schedule is shifted by $2 \ln c$ in log-SNR — less noisy than designed everywhere, its last step included. The
# fix is to multiply the latents by a **scale factor** $s = 1/\operatorname{std}(z)$, fitted once. Stable Diffusion's famous
# `0.18215` is exactly this number for its VAE (Rombach et al. 2022, App. G / their `scale_factor`). Encoding the 60,000
# training images takes a few minutes on one CPU thread (the cell prints its time); it is done once and cached (`data/cache/`), so latent training never
# re-encodes. The cell then prints what the factor changes, and how well a single batch would have estimated it:

# %%
t0 = time.perf_counter()
z_train, y_lat = latent.encode_training_set(vae, device=device)
print(f"{z_train.shape[0]} latents in {time.perf_counter() - t0:.1f} s (cached for next time)")
scale = latent.fit_scale_factor(z_train)
latent_std = 1 / scale
shift = 2 * math.log(latent_std)                        # Δλ = 2 ln c
schedule = pretrained.schedule_for("fmnist-ldm")
lam = schedule.log_snr
t_even = int((lam <= 0).nonzero()[0])                   # first t with SNR ≤ 1, as designed
t_even_raw = int((lam + shift <= 0).nonzero()[0])       # ... for latents left unscaled
print(f"scale factor over the whole set: {scale:.4f}  (std of the raw latents {latent_std:.3f}; "
      f"of the scaled ones {float((z_train * scale).std()):.4f})")
print(f"left unscaled, every t would sit 2 ln {latent_std:.2f} = {shift:.2f} higher in log-SNR (SNR × {latent_std ** 2:.1f}): "
      f"signal and noise would be equal at t = {t_even_raw} instead of t = {t_even}, and the last step's SNR would be "
      f"{schedule.snr[-1].item() * latent_std ** 2:.1e} instead of {schedule.snr[-1].item():.1e}")
g = torch.Generator().manual_seed(0)
batch_scales = torch.tensor([latent.fit_scale_factor(z_train[torch.randint(0, z_train.shape[0], (16,), generator=g)])
                             for _ in range(200)])
class_scales = torch.tensor([latent.fit_scale_factor(z_train[y_lat == c][:16]) for c in range(10)])
print(f"from one random batch of 16: {float(batch_scales.mean()):.4f} ± {float(batch_scales.std()):.4f} over 200 batches, "
      f"a log-SNR error of ±{2 * float((batch_scales / scale).log().std()):.3f}")
print(f"from one batch of 16 of a single class (a class-sorted loader): {float(class_scales.min()):.3f} "
      f"({CLASSES[int(class_scales.argmin())]}) to {float(class_scales.max()):.3f} ({CLASSES[int(class_scales.argmax())]}), "
      f"log-SNR off by up to {2 * float((class_scales / scale).log().abs().max()):.2f}")

# %% [markdown]
# Read the two parts of that output separately. The factor itself matters: without it this autoencoder's latents would run
# the whole schedule at the printed log-SNR shift — every step at a different noise level from the one the schedule was
# designed (and its sampler settings tuned) for, signal and noise equal many steps later, and fewer of the steps spent at
# the high noise levels where the coarse layout of an image is decided. Getting it from the whole set, on the other hand,
# is cheap insurance rather than a rescue here: a random batch of 16 already lands within the small spread printed, a
# log-SNR error far below the shift it corrects. A biased batch — one class, as the first batch of a class-sorted loader
# would be — can be off by more (the printed maximum over the classes, against the random batches' standard deviation),
# still small against the shift itself.

# %% [markdown]
# ## 4. Diffusion in latent space
#
# `latent.LatentDiffusion` is the whole pipeline: `encode` (posterior mean × scale), `sample` (chapter 3's DDIM loop on
# latents, chapter 4's guidance wrapper when a scale is given) and `decode` (÷ scale → decoder → clamp). No second sampler:

# %%
dc.viz.show_source(latent.LatentDiffusion.sample)

# %% [markdown]
# The denoiser is the course U-Net with 4 input channels. A 7×7 latent cannot be halved evenly, so the U-Net zero-pads it to
# 8×8 inside (`UNet(pad_input=True)`) and crops its output back: two down-samplings (8 → 4 → 2) with attention at the bottom,
# where it is cheap. (Chapter 8 puts a transformer on the same 49 positions without any padding.) Its width, channels
# (32, 64, 64), was chosen by measurement (`research/latent_unet_width.py`, results in
# [docs/results.md](../docs/results.md)): with the same recipe and number of steps the (64, 128, 128) U-Net scored a
# better FID than the (32, 64, 64) one, but the narrow one's training step is more than twice as cheap, so twice the
# steps still cost less wall time — and with twice the steps it scores about as well as the wide one did (within the
# noise of FID at n = 1000, per the docs). That is the shipped
# model, whose parameter count, steps and FID are printed below. A latent of 196 numbers does not need the pixel
# model's width.
#
# **A short live run** from scratch on the cached latents, with the course's recipe (batch 32, log-SNR-normal timesteps,
# 20 % label dropout) — samples before and after:

# %%
live_minutes = dc.config.budget(quick=None, cpu=1.5, gpu=None)
live_steps = dc.config.budget(quick=5, cpu=100_000, gpu=2000)
schedule = pretrained.schedule_for("fmnist-ldm")
torch.manual_seed(0)
live_net = pretrained.build_denoiser("unet", pretrained.RECIPES["fmnist-ldm"].model)
cfg = dc.training.TrainConfig(steps=live_steps, max_minutes=live_minutes, batch_size=32, lr=1e-3, warmup=50,
                              lr_decay="constant", p_uncond=0.2, t_sampling="logsnr-normal", channels_last=False, seed=0)
live_ldm = latent.LatentDiffusion(vae, live_net, schedule, scale).to(device)
before = live_ldm.sample(10, cond=torch.arange(10), steps=20, generator=torch.Generator().manual_seed(1), progress=False)
result = dc.training.train(live_net, schedule, z_train * scale, y_lat, cfg, device=device)
live_ldm = latent.LatentDiffusion(vae, result.ema, schedule, scale).to(device)
after = live_ldm.sample(10, cond=torch.arange(10), steps=20, generator=torch.Generator().manual_seed(1), progress=False)
print(f"{result.step} steps in {result.history.wall_time:.0f} s")
dc.viz.show_images(torch.cat([before, after]), nrow=10, title="one sample per class: before (top) and after the live run",
                   size=2.6)
plt.show()

# %% [markdown]
# **The shipped model** (`pretrained.load("fmnist-ldm")`, trained by the project with the recipe in `pretrained.RECIPES`):
# eight samples per class (rows), class-conditional, DDIM-50.

# %%
ldm = pretrained.load("fmnist-ldm", device=device)
lm = pretrained.manifest("fmnist-ldm").get("metrics", {})
print(f"fmnist-ldm: denoiser {count_parameters(ldm.model) / 1e6:.2f} M parameters, scale factor {ldm.scale_factor:.4f}, "
      f"{pretrained.manifest('fmnist-ldm').get('steps')} steps ({lm.get('train_wall_seconds', float('nan')) / 60:.0f} min)")
labels = torch.arange(10).repeat_interleave(8)
t0 = time.perf_counter()
samples = ldm.sample(80, cond=labels, steps=50, generator=torch.Generator().manual_seed(0))
print(f"80 samples in {time.perf_counter() - t0:.1f} s")
dc.viz.show_images(samples, nrow=8, title="fmnist-ldm: 8 samples per class (rows: " + ", ".join(CLASSES) + ")", size=6)
plt.show()

# %% [markdown]
# **A pitfall that only shows in latent space.** The cosine schedule's last step has ᾱ ≈ 0, where an ε-model's
# $\hat z_0 = (z_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$ multiplies any error in $\hat\varepsilon$ by $1/\sqrt{\bar\alpha_t}$.
# Pixel samplers survive it because they clip $\hat x_0$ to [−1, 1] (chapter 2, §6); latents have no such range. DDIM with
# *trailing* spacing starts exactly there; *leading* spacing (Stable Diffusion's default in diffusers) starts at
# $t = T - T/\text{steps}$. Same model, same noise, class-balanced labels, FID against a class-balanced real set:

# %%
clf = pretrained.load("fmnist-classifier", device=device)
n_sp = dc.config.budget(quick=20, cpu=200, gpu=1000)
ref_sp = metrics.reference_images(n_sp, class_balanced=True)
lab_sp = torch.arange(n_sp) % 10
z_T = torch.randn(n_sp, *ldm.latent_shape, generator=torch.Generator().manual_seed(0))
for spacing in ("trailing", "leading"):
    xs = ldm.sample(n_sp, cond=lab_sp, steps=50, z_T=z_T, spacing=spacing).cpu()
    print(f"{spacing:>8}: FID {metrics.fid(clf, xs, ref_sp):6.1f}, class accuracy {metrics.class_accuracy(clf, xs, lab_sp):.0%}")
print(f"balanced floor at n = {n_sp}: {metrics.fid_floor(clf, n_sp, class_balanced=True):.1f}")

# %% [markdown]
# So `LatentDiffusion.sample` uses leading spacing by default. The other fix removes the division instead of avoiding it: a
# v- or x₀-predicting model (chapter 2, §6) never divides by $\sqrt{\bar\alpha_t}$, which is also what a zero-terminal-SNR
# schedule (Lin et al. 2024; chapter 1) requires, since there an ε-model's $\hat z_0$ at the last step is undefined.
#
# **Classifier-free guidance in latent space** works exactly as in pixel space — the wrapper only sees a denoiser:
# same noise, scales s = 0 (unconditional), 1, 2 and 4, label "Sneaker" on the left half and "Dress" on the right:

# %%
cond = torch.tensor([7] * 5 + [3] * 5)
rows = [ldm.sample(10, cond=cond, steps=30, guidance_scale=s, generator=torch.Generator().manual_seed(3), progress=False)
        for s in (0.0, 1.0, 2.0, 4.0)]
dc.viz.show_images(torch.cat(rows), nrow=10, title="guidance scale s = 0, 1, 2, 4 (rows)", size=3.6)
plt.show()

# %% [markdown]
# ## 5. What it buys — measured, side by side
#
# Like for like: the pixel model of chapters 2–4 (`fmnist-ddpm`) and the latent model, the same batch, one process, this
# machine. Two comparisons, because the shipped pair differs in more than the space it works in (the pixel model is a
# different, wider network with a patch stem):
#
# * **the shipped pair** — what a user of the two checkpoints pays;
# * **the same architecture** — the latent model's own U-Net run on 28×28 pixels: the saving of the latent space alone.
#
# Each is timed in interleaved rounds (one training step of each network per round), so the printed range is the spread
# of the ratio over rounds; next to the time, the arithmetic: FLOPs per forward pass. A training step costs about three
# forward passes (forward + backward), so the last column, throughput in GFLOP/s, is $3\times$ FLOPs × batch ÷ time.

# %%
batch = 32
pixel_net = pretrained.build("fmnist-ddpm").to(device)
latent_net = pretrained.build_denoiser("unet", pretrained.RECIPES["fmnist-ldm"].model).to(device)
family = {k: v for k, v in pretrained.RECIPES["fmnist-ldm"].model.items() if k not in ("in_channels", "objective")}
same_arch_pixel = UNet(in_channels=1, **family).to(device)      # the latent model's U-Net, on pixels
nets = {"pixel (fmnist-ddpm)": (pixel_net, (1, 28, 28)), "pixel (latent's U-Net)": (same_arch_pixel, (1, 28, 28)),
        "latent (fmnist-ldm)": (latent_net, ldm.latent_shape)}
rounds = dc.config.budget(quick=2, cpu=5, gpu=10)
step_s = {name: [] for name in nets}
for r in tqdm(range(rounds), desc="timing rounds"):
    for name, (net, shape) in nets.items():
        step_s[name].append(profiling.train_step_seconds(net, shape, batch, repeats=1, seed=r))
flops = {name: profiling.flops_per_forward(net, shape) for name, (net, shape) in nets.items()}
print(f"one training step at batch {batch}, median over {rounds} rounds:")
for name in nets:
    med = sorted(step_s[name])[rounds // 2]
    print(f"  {name:<24} {med * 1e3:6.0f} ms   {flops[name] / 1e6:5.0f} MFLOPs per forward   "
          f"{3 * flops[name] * batch / med / 1e9:5.1f} GFLOP/s")
saving = {}
for name in ("pixel (fmnist-ddpm)", "pixel (latent's U-Net)"):
    ratios = sorted(p / l for p, l in zip(step_s[name], step_s["latent (fmnist-ldm)"]))
    saving[name] = ratios[rounds // 2]
    flops_ratio = flops[name] / flops["latent (fmnist-ldm)"]
    print(f"{name} ÷ latent: time {saving[name]:.1f}× (range {ratios[0]:.1f}–{ratios[-1]:.1f}× over the rounds), "
          f"FLOPs {flops_ratio:.1f}× — {saving[name] / flops_ratio:.0%} of the arithmetic saving shows up as time")
for name, what in (("pixel (fmnist-ddpm)", "the shipped pair"), ("pixel (latent's U-Net)", "the latent space alone")):
    print(f"target: a latent training step ≥ 4× cheaper — {what}: {saving[name]:.1f}× →",
          "met" if saving[name] >= 4 else "NOT met")

pixel_model = pretrained.load("fmnist-ddpm", device=device)
pixel_schedule = pixel_model.schedule
n_time = dc.config.budget(quick=4, cpu=20, gpu=500)
lab = (torch.arange(n_time) % 10).to(device)
t0 = time.perf_counter()
sampling.ddim_sample(pixel_model, torch.randn(n_time, 1, 28, 28).to(device), pixel_schedule, steps=50, cond=lab,
                     clip_denoised=True)
s_pix = (time.perf_counter() - t0) * 1000 / n_time
t0 = time.perf_counter()
ldm.sample(n_time, cond=lab.cpu(), steps=50)
s_lat = (time.perf_counter() - t0) * 1000 / n_time
print(f"DDIM-50, seconds per 1,000 samples (timed on {n_time}): pixel {s_pix:.0f} s, latent {s_lat:.0f} s including "
      f"decoding → {s_pix / s_lat:.1f}×")

# %% [markdown]
# In FLOPs both comparisons are close to $f^2 = 16$: the latent model does the same work on $(28/4)^2$ positions instead of
# $28^2$ — a little less than that here, because the 7×7 latent is padded to 8×8 inside the U-Net. In time the saving falls
# short of the arithmetic (the printed percentages), and the throughput column says why: on 7×7 inputs the latent
# model runs at lower GFLOP/s than the pixel models. Its tensors are so small that a CPU spends much of each step on
# per-operation overhead (dispatching many small convolutions and normalisations) rather than on arithmetic. Where the
# shipped pair's ratio differs from the same-architecture one, the difference belongs to the pixel network, not to the
# latent space.
#
# And quality: FID in the course classifier's features, class-conditional samples with class-balanced labels against a
# class-balanced real set — live at a small n (so it runs in a couple of minutes), next to the floor and the decoder's cap
# at the same n; then the recipes' own numbers at n = 1000, from the manifests.

# %%
n_fid = dc.config.budget(quick=20, cpu=200, gpu=1000)
labels_fid = torch.arange(n_fid) % 10
ref = metrics.reference_images(n_fid, class_balanced=True)
floor = metrics.fid_floor(clf, n_fid, class_balanced=True)
g = torch.Generator().manual_seed(0)
x_T = torch.randn(n_fid, 1, 28, 28, generator=g).to(device)
pix = torch.cat([sampling.ddim_sample(pixel_model, x_T[i:i + 250], pixel_schedule, steps=50, cond=labels_fid[i:i + 250].to(device),
                                      clip_denoised=True) for i in range(0, n_fid, 250)]).clamp(-1, 1).cpu()
lat = torch.cat([ldm.sample(min(250, n_fid - i), cond=labels_fid[i:i + 250], steps=50, generator=g)
                 for i in range(0, n_fid, 250)]).cpu()
# a second class-balanced real set: its reconstructions and the images themselves are scored like the samples
real = metrics.reference_images(n_fid, seed=5, class_balanced=True)
with torch.no_grad():
    recon = vae.decode(vae.encode(real.to(device))[0]).clamp(-1, 1).cpu()
fid_pix, fid_lat = metrics.fid(clf, pix, ref), metrics.fid(clf, lat, ref)
fid_rec, fid_real = metrics.fid(clf, recon, ref), metrics.fid(clf, real, ref)
print(f"n = {n_fid}: pixel {fid_pix:.1f}, latent {fid_lat:.1f}, the decoder's cap (decoded real images) {fid_rec:.1f}, "
      f"the same real images un-encoded {fid_real:.1f}, balanced floor {floor:.1f}")
pm = pretrained.manifest("fmnist-ddpm").get("metrics", {})
print(f"n = 1000 (manifests): pixel cond {pm.get('fid_cond', float('nan')):.2f} (balanced floor "
      f"{pm.get('floor_balanced', float('nan')):.2f}), latent cond {lm.get('fid_cond', float('nan')):.2f} (balanced floor "
      f"{lm.get('floor_balanced', float('nan')):.2f}), latent uncond {lm.get('fid_uncond', float('nan')):.2f} (floor "
      f"{lm.get('floor', float('nan')):.2f}); the decoder's cap {vm.get('fid_reconstruction_balanced', float('nan')):.2f} "
      f"on balanced sets (for cond), {vm.get('fid_reconstruction', float('nan')):.2f} on random ones (for uncond)")
q_lat = lm.get("fid_cond", float("nan")) / lm.get("floor_balanced", float("nan"))
q_rec = vm.get("fid_reconstruction_balanced", float("nan")) / lm.get("floor_balanced", float("nan"))
print(f"target: latent cond FID within 3× of the balanced floor (n = 1000) → {q_lat:.1f}×,", "met" if q_lat <= 3 else
      "NOT met", f"(the decoder's cap alone is at {q_rec:.1f}×)")

# %% [markdown]
# **The bottom line**, from the three checkpoints' manifests: what each way of getting a class-conditional generator cost to
# train (the latent way needs the autoencoder first), and what it scores.

# %%
minutes = {name: pretrained.manifest(name).get("metrics", {}).get("train_wall_seconds", float("nan")) / 60
           for name in ("fmnist-ddpm", "fmnist-vae", "fmnist-ldm")}
latent_total = minutes["fmnist-vae"] + minutes["fmnist-ldm"]
fid_p, fid_l = pm.get("fid_cond", float("nan")), lm.get("fid_cond", float("nan"))
cap = vm.get("fid_reconstruction_balanced", float("nan"))
print(f"training, end to end: pixel {minutes['fmnist-ddpm']:.0f} min; latent = autoencoder {minutes['fmnist-vae']:.0f} min + "
      f"latent model {minutes['fmnist-ldm']:.0f} min = {latent_total:.0f} min → "
      f"{minutes['fmnist-ddpm'] / latent_total:.1f}× {'cheaper' if latent_total < minutes['fmnist-ddpm'] else 'dearer'}")
for name in ("fmnist-ddpm", "fmnist-vae", "fmnist-ldm"):
    print(f"  {name:<12} trained on {pretrained.manifest(name).get('device')}")
print(f"class-conditional FID at n = 1000: pixel {fid_p:.2f}, latent {fid_l:.2f}; the decoder's cap {cap:.2f}")
print(f"the pixel model is {'at or below' if fid_p <= cap else 'above'} the decoder's cap ({fid_p - cap:+.2f}); "
      f"the latent model is {'worse' if fid_l > fid_p else 'not worse'} than the pixel model ({fid_l - fid_p:+.2f})")

# %% [markdown]
# Read the FIDs as a budget of error. The decoder's cap minus the floor is the autoencoder's share; how far the latent
# model's samples land above the cap is the diffusion model's share. And the bottom line, honestly: at 28×28 the pixel
# model's FID is already at the decoder's cap, so no latent model built on this autoencoder could be expected to beat it —
# the latent model is cheaper to train end to end (the autoencoder included) and clearly worse. (The manifests' runs used
# one or two CPU threads, printed beside each, so the minutes compare to within that.) Latent diffusion pays off where
# the pixel model is expensive and the autoencoder nearly lossless: at higher resolution.
#
# **How the saving grows with resolution.** At 28×28 the compression is small (784 → 196 numbers). Time one training step
# of the same U-Net (the shipped latent model's architecture) in pixel space and in the latent space of an $f = 4$
# autoencoder at 28, 64 and 128 px (batch 8), next to its FLOPs:

# %%
sizes = dc.config.budget(quick=(28,), cpu=(28, 64, 128), gpu=(28, 64, 128, 256))
reps = dc.config.budget(quick=1, cpu=3, gpu=10)
sweep = []
for size in tqdm(sizes, desc="image sizes"):
    net_p, net_l = UNet(in_channels=1, **family).to(device), UNet(in_channels=4, **family).to(device)
    shape_p, shape_l = (1, size, size), (4, size // 4, size // 4)
    tp, tl = profiling.train_step_seconds(net_p, shape_p, 8, reps), profiling.train_step_seconds(net_l, shape_l, 8, reps)
    fp, fl = profiling.flops_per_forward(net_p, shape_p), profiling.flops_per_forward(net_l, shape_l)
    sweep.append((size, tp / tl, fp / fl))
    print(f"{size:>3} px: pixel {tp * 1e3:6.0f} ms ({3 * fp * 8 / tp / 1e9:4.1f} GFLOP/s), latent {tl * 1e3:4.0f} ms "
          f"({3 * fl * 8 / tl / 1e9:4.1f} GFLOP/s) → time {tp / tl:4.1f}×, FLOPs {fp / fl:4.1f}×   "
          f"({size * size} → {4 * (size // 4) ** 2} numbers)")
realised = [(size, t / f) for size, t, f in sweep]
print("share of the arithmetic saving that shows up as time:", ", ".join(f"{r:.0%} at {size} px" for size, r in realised))
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot([s for s, _, _ in sweep], [r for _, r, _ in sweep], "o-", label="step time ratio (measured)")
ax.plot([s for s, _, _ in sweep], [r for _, _, r in sweep], "s--", label="FLOPs ratio (arithmetic)")
ax.axhline(16, color="gray", lw=0.8, ls=":", label="f² = 16")
ax.set_xlabel("image side (px)")
ax.set_ylabel("pixel ÷ latent")
ax.set_title("the latent saving with resolution (f = 4)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Two curves, two stories. The arithmetic saving (FLOPs) is about $f^2$ at every size — a little below at 28 px (the padded
# 7×7 latent), a little above at the larger sizes, where the pixel model's attention at its lowest level, quadratic in the
# number of positions, starts to count. The *measured* saving starts far below the arithmetic one and grows with
# resolution (the printed shares) — at the largest size here it even passes it. Two things move it, both in the GFLOP/s
# columns: the tiny latent model's per-call overhead is amortised as its inputs grow, and at the largest size the pixel
# model's own throughput drops. Neither is an arithmetic advantage; three repeats on a shared CPU make each share rough.
# (At 28 px this is the comparison at the start of this section, at batch 8 instead of 32: the ratio depends on the
# batch, because a fixed cost per call weighs more on the small model when there is little work per call.) Stable Diffusion's 512×512×3
# images become 64×64×4 latents, 48× fewer numbers — sizes at which the model is large enough that the arithmetic
# saving is what you get. That, not a better network, is why it trains and samples on one GPU.
#
# ## 6. How Stable Diffusion maps onto this
#
# | this chapter | Stable Diffusion 1.x (`diffusers`) |
# |---|---|
# | `Autoencoder`, 1×28×28 → 4×7×7 (f = 4) | `AutoencoderKL`, 3×512×512 → 4×64×64 (f = 8) |
# | L1 + 1e-4·KL | L1 + LPIPS + 1e-6·KL + a patch-GAN loss |
# | `scale_factor` fitted here | `vae.config.scaling_factor = 0.18215` |
# | U-Net on 4×7×7, class labels | U-Net on 4×64×64, CLIP text through cross-attention (chapter 4) |
# | `LatentDiffusion.sample`: DDIM → decode | `StableDiffusionPipeline`: scheduler loop → `vae.decode(latents / 0.18215)` |
#
# ## Exercises
#
# **E1. The KL term.** Write the KL divergence between $\mathcal N(\mu, \operatorname{diag} e^{\log\sigma^2})$ and $\mathcal N(0, I)$, summed over
# each sample's latent dimensions. The placeholder fails its check on purpose; `dc.exercises.solution("kl")` shows one.

# %%
def my_kl(mean, logvar):
    # TODO: your code here
    return torch.zeros(mean.shape[0])


dc.exercises.check(my_kl, "kl");

# %% [markdown]
# **E2. The scale factor.** Return the number that gives a whole set of latents unit standard deviation. (Checked on sets
# with different scales and shifts; `dc.exercises.solution("scale_factor")`.)

# %%
def my_scale_factor(latents):
    # TODO: your code here
    return torch.tensor(1.0)


dc.exercises.check(my_scale_factor, "scale_factor");

# %% [markdown]
# **E3. Predict before you run: how far does an unscaled latent shift the schedule?** Latents come out of the encoder with
# standard deviation $c$ instead of 1 and go into the noise schedule unscaled. Without running anything, work out by how much
# the log-SNR $\lambda_t = \log\big(\text{signal power}/\text{noise power}\big)$ changes at every $t$, as a function of $c$, and write it
# below (natural logarithms; `math` is imported). Then compare with the shift section 3 printed for this autoencoder.

# %%
def my_log_snr_shift(latent_std):
    # TODO: your prediction (this placeholder says the shift is zero, so the check fails until you fix it)
    return 0.0


dc.exercises.check(my_log_snr_shift, "log_snr_shift");

# %% [markdown]
# **More to try.** (1) Train the autoencoder with β = 1 (`AutoencoderConfig(beta=1.0)`): how do the reconstructions and the
# decoded N(0, I) latents change? (2) Train the live latent model with the scale factor left at 1: what happens to the
# samples, and why (hint: the log-SNR shift of section 3 and exercise E3)? (3) Put the latent model's FID next to the
# decoder's cap for a longer live run.
#
# ## Summary
#
# * Latent diffusion = an autoencoder trained once + a diffusion model on its latents; sampling ends with one decode.
# * The KL weight is tiny, so the latents are compact but **not** N(0, I): random latents decode to garbage, and the
#   latents' scale must be fitted (over the whole set) for the noise schedule to mean what it says.
# * The decoder's cap — the FID of decoded real images — is the level a latent model on it can be expected to approach.
#   Here the pixel model already sits at it, and the latent model is cheaper to train end to end and worse.
# * The arithmetic saving is about $f^2$ at every resolution; the measured one at 28×28 is a few times, because a tiny
#   latent model is overhead-bound on a CPU, and it grows with resolution — at 512×512 the arithmetic saving is what
#   makes diffusion affordable.
#
# **References.**
# * R. Rombach, A. Blattmann, D. Lorenz, P. Esser, B. Ommer. *High-Resolution Image Synthesis with Latent Diffusion
#   Models.* CVPR 2022 (Sec. 3–4, App. G: the scale factor).
# * D. P. Kingma, M. Welling. *Auto-Encoding Variational Bayes.* ICLR 2014 (the reparameterisation trick, App. B: the KL).
# * P. Esser, R. Rombach, B. Ommer. *Taming Transformers for High-Resolution Image Synthesis.* CVPR 2021 (the
#   perceptual + adversarial autoencoder that latent diffusion builds on).
