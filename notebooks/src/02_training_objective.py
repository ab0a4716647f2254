# %% [markdown]
# # Chapter 2 — The training objective: teaching a network to predict the noise
#
# **Learning goals.** By the end of this chapter you can
# 1. write DDPM's training loop (Algorithm 1) and say why "regress the noise" is a sensible objective;
# 2. train a denoiser on 2-D data in seconds and *see* what it learned (the denoising direction field);
# 3. read the course's U-Net: the timestep embedding, a residual block, where attention sits, what costs what;
# 4. choose between ε-, x₀- and v-prediction, and diagnose a training run ("is my model learning?");
# 5. load the course's pretrained Fashion-MNIST model and judge its samples with a measured FID.
#
# Time: 4.1 minutes measured (247 s of cell execution on a 2-core CPU, two threads, the machine otherwise idle; the
# Fashion-MNIST training demo is 3 minutes of it, by its time budget); the toy models always train on the CPU (they
# are too small to gain from a GPU).

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

import diffusion_course as dc
from diffusion_course import forward, losses, sampling, schedules, training
from diffusion_course.nn import MLPDenoiser, UNet, count_parameters, timestep_embedding

print(dc.config.describe())
device = dc.config.get_device()

# %% [markdown]
# ## 1. Algorithm 1, in one function
#
# Chapter 1 gave us $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ in one jump. DDPM's training step is then:
#
# 1. take a clean batch $x_0$; 2. draw $t \sim \mathcal{U}\{0,\dots,T-1\}$ and $\varepsilon \sim \mathcal{N}(0, I)$ per example;
# 3. make $x_t$; 4. ask the network for $\hat\varepsilon_\theta(x_t, t)$; 5. minimise
#
# $$L_\text{simple} = \mathbb{E}_{x_0, t, \varepsilon}\,\big\lVert \varepsilon - \hat\varepsilon_\theta(x_t, t)\big\rVert^2 .$$
#
# Ho et al. derive this from the variational bound and then drop its per-$t$ weights; it is also *denoising score matching*:
# the optimal $\hat\varepsilon$ is $-\sqrt{1-\bar\alpha_t}\,\nabla_{x}\log q_t(x)$ (chapter 6). Here it is — with the x₀ and v targets
# that section 6 compares, and min-SNR weighting (an exercise):

# %%
dc.viz.show_source(losses.diffusion_loss)

# %% [markdown]
# ## 2. A denoiser on 2-D data, in seconds
#
# Points on two interleaved moons are our "images". The network is a small MLP that takes $(x_t, t)$ and returns
# $\hat\varepsilon$; the trainer is the same one that trains the U-Net later (AdamW, warm-up, EMA, progress bar).

# %%
toy_schedule = schedules.NoiseSchedule.cosine(200)          # fewer steps suffice in 2-D
points = dc.data.toy_2d("moons", 20_000, generator=torch.Generator().manual_seed(0))
torch.manual_seed(0)                     # the network's initial weights (the config's seed covers the training draws)
toy_model = MLPDenoiser(dim=2, hidden=128, depth=3)
toy_steps = dc.config.budget(quick=300, cpu=3000, gpu=3000)
toy_cfg = training.TrainConfig(steps=toy_steps, batch_size=512, lr=2e-3, warmup=100, ema_decay=0.995,
                               channels_last=False, seed=0)
start = time.perf_counter()
toy = training.train(toy_model, toy_schedule, points, config=toy_cfg, device="cpu")
print(f"{toy_steps} steps in {time.perf_counter() - start:.1f} s; final loss {sum(toy.history.loss[-100:]) / 100:.3f}")

# %%
x_T = torch.randn(3000, 2, generator=torch.Generator().manual_seed(1))
toy_samples = sampling.ddpm_sample(toy.ema, x_T, toy_schedule, generator=torch.Generator().manual_seed(2))
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
dc.viz.plot_loss(toy.history, ax=axes[0])
dc.viz.plot_points(points[:3000], ax=axes[1], title="data (two moons)")
dc.viz.plot_points(toy_samples, ax=axes[2], title=f"DDPM samples ({toy_schedule.T} steps)", color="C1")
print("MMD² between samples and fresh data:",
      f"{dc.metrics.mmd_rbf(toy_samples[:1500], dc.data.toy_2d('moons', 1500, torch.Generator().manual_seed(3))):.4f}",
      "| between pure noise and data:",
      f"{dc.metrics.mmd_rbf(x_T[:1500], dc.data.toy_2d('moons', 1500, torch.Generator().manual_seed(3))):.4f}")

# %% [markdown]
# **What did it learn?** Predicting $\varepsilon$ from $x_t$ is the same as knowing which way to move $x_t$ to make it
# cleaner: $-\hat\varepsilon$ points from the noisy point towards where the data were. The arrows below are
# $-\hat\varepsilon_\theta(x, t)$ on a grid, at three noise levels. At large $t$ they point to the middle (the data mean); at
# small $t$ they point at the nearest moon.

# %%
grid = torch.stack(torch.meshgrid(torch.linspace(-2.5, 2.5, 21), torch.linspace(-2.5, 2.5, 21), indexing="xy"), -1)
grid = grid.reshape(-1, 2)
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
with torch.no_grad():
    for ax, t in zip(axes, [150, 60, 10]):
        eps = toy.ema(grid, torch.full((grid.shape[0],), t))
        ax.scatter(points[:2000, 0], points[:2000, 1], s=1, alpha=0.3, color="gray")
        ax.quiver(grid[:, 0], grid[:, 1], -eps[:, 0], -eps[:, 1], color="C3", angles="xy")
        ax.set(title=f"−ε̂(x, t) at t={t} (SNR={toy_schedule.snr[t].item():.2g})", xlim=(-2.6, 2.6), ylim=(-2.6, 2.6),
               aspect="equal")

# %% [markdown]
# ## 3. Inside the U-Net
#
# Images need a network that sees at several scales. The course's U-Net (`dc.nn.UNet`) is DDPM's design trimmed for a CPU:
#
# * **Timestep embedding.** $t$ enters as sinusoids of geometrically spaced frequencies (as in Transformers), then a small MLP.
#   Channels 0–31 are cosines and 32–63 sines of the same frequencies; within each half, low indices vary fast with $t$
#   (they separate neighbouring steps) and high indices vary slowly.

# %%
emb = timestep_embedding(torch.arange(1000), 64)
fig, ax = plt.subplots(figsize=(10, 2.6))
ax.imshow(emb.T, aspect="auto", cmap="RdBu", interpolation="nearest")
ax.set(xlabel="timestep t", ylabel="embedding channel", title="sinusoidal timestep embedding (64 channels)");

# %% [markdown]
# * **Residual blocks** inject the embedding as a per-channel scale and shift after a GroupNorm (FiLM / "AdaGN", Dhariwal &
#   Nichol 2021). The last conv of each block starts at zero, so every block starts as its skip path (the identity, or a
#   1×1 projection where the width changes) — stable from step one.

# %%
dc.viz.show_source(dc.nn.ResBlock)

# %% [markdown]
# * **Where attention sits.** Self-attention costs $O((HW)^2)$, so it only runs at the lowest resolution (7×7 = 49 positions).
# * **The patch stem.** The first layer folds each 2×2 block of pixels into 4 channels (pixel-unshuffle), so the expensive
#   convolutions run at 14×14 instead of 28×28 — the largest single speed-up on a CPU — and the last layer unfolds them.
#   The price, measured by the course's screens ([docs/results.md](../docs/results.md)): early in training a step teaches
#   less than a full-resolution network's step, so for a few CPU-minutes from scratch the stem does not pay and a plain
#   full-resolution configuration learns fastest (section 4 uses it); the pretrained model, trained for hours, keeps the stem.
# * **A class embedding with a null label**: labels 0–9 plus label 10 = "no label". Trained with label dropout, one network
#   is both conditional and unconditional — what classifier-free guidance (chapter 4) needs.
#
# The configuration of the course's pretrained model, level by level:

# %%
unet = dc.pretrained.build("fmnist-ddpm")
print(unet.config)
print(f"total parameters: {count_parameters(unet):,}")
for name, child in [("time + class embedding", [unet.time_embed, unet.class_embed]), ("stem", [unet.stem]),
                    ("down path", [unet.down]), ("middle (with attention)", [unet.mid]), ("up path", [unet.up]),
                    ("output", [unet.out])]:
    print(f"  {name:<26} {sum(count_parameters(c) for c in child):>10,}")
x = torch.randn(1, 1, 28, 28)
shapes = []
hooks = [m.register_forward_hook(lambda mod, i, o, n=n: shapes.append((n, type(mod).__name__, tuple(o.shape[1:]))))
         for n, m in unet.named_children() for m in ([m] if not isinstance(m, torch.nn.ModuleList) else m)]
with torch.no_grad():
    unet(x, torch.tensor([500]))
for h in hooks:
    h.remove()
for name, kind, shape in shapes:
    print(f"  {name:<12} {kind:<14} -> {shape}")

# %% [markdown]
# ## 4. Training the U-Net on Fashion-MNIST: a short run that visibly learns
#
# For a few CPU-minutes from scratch we take the configuration of our U-Net that learned fastest per CPU-minute in the
# course's screen: full resolution, widths 32/64/64, no attention, no patch stem (its parameter count is printed below).
# Three training choices matter as much as the network here:
#
# * **A small batch.** On a CPU the images per second hardly depend on the batch size, so batch 32 makes 4× the updates
#   of batch 128 in the same time — and early in training, updates are what the model is short of.
# * **A time budget.** `TrainConfig(max_minutes=3)` stops when the time is spent, however fast the machine (`steps` is
#   then only a cap), and returns the model like any other run. With the default cosine decay, the learning rate falls
#   with the spent fraction of the budget, so the short run still ends with small, careful steps.
# * **Where the timesteps go.** Algorithm 1 draws $t$ uniformly, but the extremes teach a short run little: near $t=0$
#   the noise is too faint to change what the image shows, and near $t=T$ the best answer is an average garment. The
#   coarse shape of a garment is decided in between. `TrainConfig(t_sampling="logsnr-normal")` draws the log
#   signal-to-noise ratio $\lambda = \log\frac{\bar\alpha_t}{1-\bar\alpha_t} \sim \mathcal N(0, 2^2)$ and takes the $t$ whose
#   $\lambda_t$ is nearest. This is *EDM-style*: Karras et al. (2022, Sec. 5) draw $\log\sigma$ from a normal with their
#   $P_\text{mean}, P_\text{std}$ for images scaled to $\sigma_\text{data} = 0.5$; our $\mathcal N(0, 2^2)$ on log-SNR is the
#   same idea with parameters from our own screen, not theirs. In
#   expectation, drawing $t$ from $p(t)$ is uniform $t$ with the loss weighted by $T\,p(t)$. For a network of unlimited
#   capacity the minimiser, $\mathbb E[\varepsilon \mid x_t]$ at every $t$ with $p(t) > 0$, does not change; a small network
#   has to trade accuracy between timesteps, and the draw decides where a short run spends its effort.
#
# Each of these three choices made a short CPU run reach a given FID sooner in the course's measured screens; the numbers,
# with their seeds and spreads, are in [docs/results.md](../docs/results.md).

# %%
schedule = schedules.NoiseSchedule.cosine(1000)
fig, ax = plt.subplots(figsize=(7, 2.6))
for kind in ["uniform", "logsnr-normal"]:
    t_drawn = losses.draw_timesteps(100_000, schedule, kind, logsnr_mean=0.0, logsnr_std=2.0,
                                    generator=torch.Generator().manual_seed(0))
    ax.hist(t_drawn.numpy(), bins=50, range=(0, 1000), density=True, histtype="step", lw=2, label=kind)
ax.set(xlabel="t", ylabel="density", title="where the training samples of t go (cosine schedule, T = 1000)")
ax.legend();

# %% [markdown]
# The loss is noisy (every batch has different $t$), so we plot a moving average.

# %%
x_train, y_train = dc.data.load_fashion_mnist("train")
x_test, y_test = dc.data.load_fashion_mnist("test")
demo_minutes = dc.config.budget(quick=None, cpu=3.0, gpu=None)     # a time budget on a CPU, a step count elsewhere
demo_steps = dc.config.budget(quick=8, cpu=100_000, gpu=3000)
torch.manual_seed(0)
demo = UNet(channels=(32, 64, 64), attention_levels=(), num_classes=10)
print(f"demo U-Net: {count_parameters(demo):,} parameters; "
      + (f"{demo_minutes:g} minutes of training" if demo_minutes else f"{demo_steps} steps"))
demo_cfg = training.TrainConfig(steps=demo_steps, max_minutes=demo_minutes,
                                batch_size=dc.config.budget(quick=32, cpu=32, gpu=128),
                                lr=1e-3, warmup=50, ema_decay=0.99, seed=0,
                                t_sampling="logsnr-normal", logsnr_mean=0.0, logsnr_std=2.0)
run = training.train(demo, schedule, x_train, y_train, config=demo_cfg, device=device)
print(f"{run.step} steps of batch {demo_cfg.batch_size} in {run.history.wall_time:.0f} s")

# %% [markdown]
# ## 5. "Is my model learning?"
#
# Four checks that catch almost every broken run.
#
# **(a) The loss curve** falls fast at first, then slowly. **(b) The loss per timestep** of the *final* model on
# *held-out* images: for ε-prediction it is largest at small $t$ (tiny noise is hard to see) and near zero at large $t$
# (when $x_t$ is almost pure noise, $\varepsilon \approx x_t$). A model that has learned nothing scores 1.0 everywhere
# (predicting 0 for unit-variance noise). The trainer also keeps a per-bucket average of the training loss, but that
# averages over the whole run — including its first steps at loss ≈ 1 — so it overstates what the final model does; the
# grey bars show it for comparison.

# %%
n_held = dc.config.budget(quick=32, cpu=128, gpu=1000)
ts_loss = list(range(0, schedule.T, 50)) + [schedule.T - 1]
held = x_test[:n_held].to(device)
held_labels = y_test[:n_held].to(device)
g_held = torch.Generator().manual_seed(21)
noise_held = {t: torch.randn(held.shape, generator=g_held).to(device) for t in ts_loss}   # same noise for both models


@torch.no_grad()
def per_t_loss(model, desc):
    out = []
    for t in tqdm(ts_loss, desc=desc):
        tt = torch.full((n_held,), t, device=device)
        xt = forward.q_sample(held, tt, schedule, noise_held[t])
        out.append((model(xt, tt, held_labels) - noise_held[t]).pow(2).mean().item())
    return out


loss_ema, loss_raw = per_t_loss(run.ema, "held-out loss, EMA"), per_t_loss(run.model, "held-out loss, raw")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
dc.viz.plot_loss(run.history, window=25, ax=axes[0])
buckets = run.history.bucket_means()
width = schedule.T / len(buckets)
centres = [(i + 0.5) * width for i in range(len(buckets))]
axes[1].bar(centres, buckets, width=width * 0.9, color="lightgray", label="training loss, averaged over the whole run")
axes[1].plot(ts_loss, loss_ema, "o-", ms=3, color="C0", label=f"final EMA model, {n_held} held-out images")
axes[1].axhline(1.0, color="C3", ls="--", label="predicting ε̂ = 0")
axes[1].set(xlabel="t", ylabel="ε-MSE", yscale="log", title="loss per timestep")
axes[1].legend(fontsize=8, loc="lower left")
final_bucket = [sum(l for t, l in zip(ts_loss, loss_ema) if int(t // width) == b) /
                max(1, sum(1 for t in ts_loss if int(t // width) == b)) for b in range(len(buckets))]
ratios = [r / f for r, f in zip(buckets, final_bucket)]
print("run-average ÷ final held-out loss, per bucket (small t → large t):", " ".join(f"{r:.1f}" for r in ratios))
print(f"held-out ε-MSE averaged over t: EMA {sum(loss_ema) / len(loss_ema):.4f}, raw weights {sum(loss_raw) / len(loss_raw):.4f}")
# both sets of weights saw the same images and the same noise at every t: a paired difference, with its spread over t
ema_gain = torch.tensor(loss_raw) - torch.tensor(loss_ema)
ema_se = float(ema_gain.std() / len(ema_gain) ** 0.5)
print(f"raw − EMA, paired over the {len(ema_gain)} t's: {float(ema_gain.mean()):+.4f} ± {ema_se:.4f} (SE over t; "
      f"{float(ema_gain.mean()) / (sum(loss_raw) / len(loss_raw)):+.1%} of the raw loss) — "
      + ("EMA lower by more than 2 SE" if ema_gain.mean() > 2 * ema_se else
         "raw lower by more than 2 SE" if ema_gain.mean() < -2 * ema_se else "no difference we can claim at this size"))

# The small-t end, in numbers: how faint the noise is at t = 0, and how often the run drew t near there
snr0, sigma0 = schedule.snr[0].item(), (1 - schedule.alpha_bar[0]).sqrt().item()
print(f"t = 0: held-out ε-MSE {loss_ema[0]:.2f} (ε̂ = 0 scores 1.00); SNR {snr0:,.0f}, noise sd √(1−ᾱ₀) = {sigma0:.4f} "
      f"(one 8-bit grey level is {2 / 255:.4f}): an ε-MSE below 1 needs an x₀-MSE below 1/SNR = {1 / snr0:.1e}")
drawn = losses.draw_timesteps(100_000, schedule, "logsnr-normal", logsnr_mean=0.0, logsnr_std=2.0,
                              generator=torch.Generator().manual_seed(1))
in_first = drawn[drawn < width]
print(f"log-SNR at t = 0: {math.log(snr0):.1f}, {math.log(snr0) / 2:.1f} standard deviations out in the N(0, 2²) draw; "
      f"of 100,000 draws {int((drawn < ts_loss[1] // 2).sum())} fall at t < {ts_loss[1] // 2}, the smallest is t = {int(drawn.min())}")
print(f"bucket 0 (t < {width:.0f}): the run drew {run.history.bucket_count[0]} of its {sum(run.history.bucket_count):,} "
      f"training examples there, at a median t of {int(in_first.median())} (from the 100,000 draws); the held-out points "
      f"are t = 0 and {ts_loss[1]}, with ε-MSE {loss_ema[0]:.2f} and {loss_ema[1]:.2f}; bucket 0's ratio {ratios[0]:.2f} is "
      + ("below 1: the run's average looks better than the final model there" if ratios[0] < 1 else "not below 1")
      + f", and {'the lowest' if ratios[0] == min(ratios) else 'not the lowest'} of the row")

# %% [markdown]
# **Reading (b) at the small-$t$ end.** At $t = 0$ the final model scores about what predicting $\hat\varepsilon = 0$ scores
# (the first number printed above). That is not a bug; the lines printed under the chart say why. The noise at $t = 0$ is
# fainter than one grey level of the 8-bit image, so finding it means knowing the clean image to better than a grey level:
# section 6 shows that the ε-error is the $x_0$-error times $\mathrm{SNR}_t$, and at $t = 0$ the SNR is in the tens of
# thousands — an $x_0$ estimate good enough for an ε-MSE below 1 has an MSE below the tiny number printed. ε-prediction at
# $t \approx 0$ asks for exactly the detail the image does not reveal. And this run almost never practised there: the
# log-SNR-normal draw puts $t = 0$ several standard deviations out, and among 100,000 draws not one lands at $t = 0$. (For
# sampling this costs little: at $t \approx 0$ the sampler's $\hat x_0 \approx x_t$ whatever $\hat\varepsilon$ is.)
#
# The same output explains the first bucket's ratio. The last printed line says whether it is the lowest of the row and
# whether it falls below 1 — where the run's average would look *better* than the final model. What pulls it down: the two
# numbers are not taken at the same $t$. The trainer's bucket averages its training draws, which cluster near the bucket's
# upper end (the median printed), where the noise is stronger and ε is easier; the held-out curve weights its two points
# in that bucket, $t = 0$ and the next one, equally, and $t = 0$ is the hardest $t$ there is.
#
# **(c) Denoise a held-out image** at several $t$: the model's $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$
# should look like the test image at small and medium $t$; at large $t$ it can only be an average over every garment the
# noise allows — a grey blob at the largest $t$, a blurry garment shape below it.

# %%
def denoise_row(model, img, label, ts):
    x0 = img[None].to(device)
    g = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        for t in ts:
            tt = torch.tensor([t], device=device)
            xt = forward.q_sample(x0, tt, schedule, torch.randn(x0.shape, generator=g).to(device))
            _, x0_hat = sampling.predict_eps_x0(model, xt, tt, schedule, torch.tensor([label], device=device))
            rows += [xt[0].cpu(), x0_hat[0].clamp(-1, 1).cpu()]
    return torch.stack(rows)


ts_denoise = [100, 300, 500, 700, 900]
fig, ax = plt.subplots(figsize=(12, 2.6))
dc.viz.show_images(denoise_row(run.ema, x_test[0], int(y_test[0]), ts_denoise), nrow=10, ax=ax)
ax.set_title("pairs (x_t, model's x̂₀) at t = " + ", ".join(map(str, ts_denoise)) + "  — demo model (EMA)");

# %% [markdown]
# **(d) Samples from EMA vs raw weights.** The exponential moving average of the weights,
# $\theta_\text{EMA} \leftarrow 0.99\,\theta_\text{EMA} + 0.01\,\theta$, averages out the noise of the last ≈100 steps. After a
# run this short the two sets of weights are close: read the paired difference of their held-out losses printed under
# (b) rather than trust your eyes on the grids below. EMA is standard in long runs, with a
# slower average than this run's. Same noise, same labels, 50 DDIM steps (chapter 3 explains DDIM):

# %%
n_show = 20
labels = torch.arange(n_show, device=device) % 10
x_T = torch.randn(n_show, 1, 28, 28, generator=torch.Generator().manual_seed(4)).to(device)
fig, axes = plt.subplots(1, 2, figsize=(11, 3))
for ax, (name, net) in zip(axes, [("raw weights", run.model), ("EMA weights", run.ema)]):
    xs = sampling.ddim_sample(net, x_T, schedule, steps=50, cond=labels, clip_denoised=True)
    dc.viz.show_images(xs.cpu(), nrow=10, ax=ax, title=f"demo model after {run.step} steps — {name}")
plt.show()
demo_clf = dc.pretrained.load("fmnist-classifier", device=device)   # the course's classifier (section 7 uses it too)
agree = dc.metrics.class_accuracy(demo_clf, xs.cpu(), labels.cpu())
print(f"after {run.step} steps the course classifier reads the asked class in {agree:.0%} of the {n_show} EMA samples")

# %% [markdown]
# How far three minutes get depends on the machine (the step count is in the titles): garment shapes, but the printed
# agreement says how often they are the garment that was asked for — compare the pretrained model's class accuracy in
# section 7. The course's pretrained model is a wider network
# with the patch stem, trained for hours; its manifest says how long (section 7 prints it).
#
# ## 6. ε, x₀ or v: what should the network predict?
#
# All three carry the same information — given $x_t$ and $t$, any one determines the others:
#
# | target | formula | at small $t$ | at large $t$ |
# |---|---|---|---|
# | ε (DDPM) | $\varepsilon$ | hard: find tiny noise | easy: $\varepsilon\approx x_t$ |
# | x₀ | $x_0$ | easy: $x_0 \approx x_t$ | hard: guess the image from noise |
# | v (Salimans & Ho 2022) | $\sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$ | ≈ ε | ≈ −x₀ |
#
# The three losses are one loss with three weightings. Write $\alpha = \sqrt{\bar\alpha_t}$, $\sigma = \sqrt{1-\bar\alpha_t}$ and let
# the network's three outputs be consistent ($\hat x_0 = (x_t - \sigma\hat\varepsilon)/\alpha$, $\hat v = \alpha\hat\varepsilon - \sigma\hat x_0$).
# Then $x_0 - \hat x_0 = \frac{\sigma}{\alpha}(\hat\varepsilon - \varepsilon)$ and $v - \hat v = -\frac{1}{\sigma}(x_0 - \hat x_0)$, so
#
# $$\lVert\varepsilon-\hat\varepsilon\rVert^2 = \mathrm{SNR}_t\,\lVert x_0-\hat x_0\rVert^2,\qquad
# \lVert v-\hat v\rVert^2 = (1+\mathrm{SNR}_t)\,\lVert x_0-\hat x_0\rVert^2 .$$
#
# In units of the $x_0$-error, ε-prediction weights each $t$ by $\mathrm{SNR}_t$ (huge at small $t$, → 0 at large $t$ — why the
# ε-loss per timestep above falls towards 0 at large $t$, all but the very last step), x₀-prediction by 1, and v by $1+\mathrm{SNR}_t$ (never below 1).
# **Min-SNR-γ** (Hang et al. 2023) caps the ε weight at γ: $\min(\mathrm{SNR}_t, \gamma)$ in $x_0$ units. On the moons we train one
# model per target and check all of this on real numbers — the conversions and identities are algebra, so these checks
# can only catch a wrong formula — that $v$ really converts to $x_0$ and $\varepsilon$
# ($x_0 = \alpha x_t - \sigma v$, $\varepsilon = \sigma x_t + \alpha v$, because $\alpha^2 + \sigma^2 = 1$), that each model's three
# outputs obey both identities sample by sample, and what each loss looks like per $t$ — in each model's own units and,
# through the identities, in the common $x_0$ units:

# %%
obj_results = {}
for objective in ["eps", "x0", "v"]:
    torch.manual_seed(0)                 # the same initial weights for all three: only the objective differs
    m = MLPDenoiser(dim=2, hidden=128, depth=3, objective=objective)
    cfg = training.TrainConfig(steps=toy_steps, batch_size=512, lr=2e-3, warmup=100, ema_decay=0.995,
                               objective=objective, channels_last=False, seed=0)
    obj_results[objective] = training.train(m, toy_schedule, points, config=cfg, device="cpu").ema

test_pts = dc.data.toy_2d("moons", 4000, generator=torch.Generator().manual_seed(5))
ts_eval = list(range(0, toy_schedule.T, 10)) + [toy_schedule.T - 1]
snr = toy_schedule.snr


def rel_gap(a, b):
    """Largest relative difference between two per-sample squared errors."""
    return ((a - b).abs() / a.clamp_min(1e-12)).max().item()


def off_moons(xy):
    """Fraction of points farther than 0.1 from every one of the 20,000 training points."""
    return (torch.cdist(xy, points).min(1).values > 0.1).float().mean().item()


x0_err, own_err, gap_eps, gap_v, v_inverse, off_x0 = {}, {}, {}, {}, 0.0, {}
with torch.no_grad():
    for objective, m in obj_results.items():
        errs, own, ge, gv = [], [], [], []
        for t in ts_eval:
            tt = torch.full((test_pts.shape[0],), t)
            noise = torch.randn(test_pts.shape, generator=torch.Generator().manual_seed(t))
            xt = forward.q_sample(test_pts, tt, toy_schedule, noise)
            v = forward.v_target(test_pts, noise, tt, toy_schedule)            # v = √ᾱ ε − √(1−ᾱ) x₀
            if 0 < t < toy_schedule.T - 1:   # the definition inverts: x₀ and ε back from (x_t, v)
                v_inverse = max(v_inverse, (forward.v_to_x0(xt, v, tt, toy_schedule) - test_pts).abs().max().item(),
                                (forward.v_to_eps(xt, v, tt, toy_schedule) - noise).abs().max().item())
            eps_hat, x0_hat = sampling.predict_eps_x0(m, xt, tt, toy_schedule)
            v_hat = forward.v_target(x0_hat, eps_hat, tt, toy_schedule)         # the same model's v̂
            e_x0 = (x0_hat - test_pts).pow(2).sum(1)
            e_eps = (eps_hat - noise).pow(2).sum(1)
            e_v = (v_hat - v).pow(2).sum(1)
            errs.append(e_x0.mean().item())
            own.append({"eps": e_eps, "x0": e_x0, "v": e_v}[objective].mean().item())   # the loss it was trained on
            if 0 < t < toy_schedule.T - 1:   # the identities, sample by sample
                ge.append(rel_gap(e_eps, snr[t] * e_x0))
                gv.append(rel_gap(e_v, (1 + snr[t]) * e_x0))
            if t in (40, 160):
                off_x0[objective, t] = off_moons(x0_hat)
        x0_err[objective], own_err[objective] = errs, own
        gap_eps[objective], gap_v[objective] = max(ge), max(gv)
print(f"v → x₀ and v → ε on the true v, largest error over all points and 0 < t < T−1: {v_inverse:.1e}")
# these two lines check the conversions' algebra on every model's outputs (x̂₀ and v̂ are computed from the one
# prediction each model makes), not the models: any prediction obeys them, so they can only catch a wrong formula
print("largest relative deviation over all points and t (the conversions' algebra; ~1e-4 is float32 rounding):")
print("  ‖ε−ε̂‖² = SNR·‖x₀−x̂₀‖²:    ", ", ".join(f"{k} {v:.1e}" for k, v in gap_eps.items()))
print("  ‖v−v̂‖² = (1+SNR)·‖x₀−x̂₀‖²:", ", ".join(f"{k} {v:.1e}" for k, v in gap_v.items()))

weights = {"eps": snr, "x0": torch.ones_like(snr), "v": 1 + snr}
fig, axes = plt.subplots(1, 3, figsize=(16, 3.6))
t_all = torch.arange(toy_schedule.T)
# ε and v coincide where SNR ≫ 1, and min-SNR-5 equals ε where SNR < 5: dashes and widths keep each curve visible
for (label, w), style in zip([("ε: SNR", snr), ("v: 1 + SNR", 1 + snr), ("x₀: 1", torch.ones_like(snr)),
                              ("ε with min-SNR-5: min(SNR, 5)", snr.clamp(max=5.0))],
                             [dict(lw=3.5, alpha=0.6), dict(lw=1.5, ls="--"), dict(lw=1.5), dict(lw=1.5, ls=":")]):
    axes[0].plot(t_all, w, label=label, **style)
axes[0].set(xlabel="t", ylabel="weight on ‖x₀ − x̂₀‖²", yscale="log", title="what each loss weights, in x₀ units")
axes[0].legend(fontsize=8)
for k, (objective, errs) in enumerate(x0_err.items()):
    axes[1].plot(ts_eval, errs, color=f"C{k}", label=f"{objective}-model")
    # each model's own loss: measured (dots) and predicted from its x₀-error by the identity (line)
    axes[2].plot(ts_eval, weights[objective][ts_eval] * torch.tensor(errs), color=f"C{k}",
                 label=f"{objective}-model: weight × its x₀-error")
    axes[2].plot(ts_eval[::2], own_err[objective][::2], "o", ms=3, color=f"C{k}",
                 label=f"{objective}-model: own loss, same predictions")
axes[1].set(xlabel="t", ylabel="mean ‖x₀ − x̂₀‖²", yscale="log", title="each model's error, in the same units")
axes[1].legend(fontsize=8)
axes[2].set(xlabel="t", ylabel="loss in the model's own units", yscale="log",
            title="each model's own loss = weight × x₀-error")
axes[2].legend(fontsize=7, ncol=2)
fig.tight_layout()
i40 = ts_eval.index(40)
print(f"{'':>9} {'x̂₀ error at t=' + str(ts_eval[1]):>19} {'t=40':>9} {'t=' + str(ts_eval[-1]):>10} | "
      f"x̂₀ off the moons at t=40, at t=160")
for objective, errs in x0_err.items():
    print(f"{objective + '-model':>9} {errs[1]:19.2e} {errs[i40]:9.2e} {errs[-1]:10.3f} | "
          f"{off_x0[objective, 40]:.1%}, {off_x0[objective, 160]:.1%}")
print(f"test points themselves off the moons: {off_moons(test_pts):.1%}")

# %% [markdown]
# Now sample each model with 50 trailing DDIM steps, exactly as chapter 3 will, and score the samples with the squared
# MMD to fresh data (0 = same distribution; pure noise scores the number printed last).

# %%
x_T2 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(6))
fresh = dc.data.toy_2d("moons", 1500, torch.Generator().manual_seed(7))
plain = {objective: sampling.ddim_sample(m, x_T2, toy_schedule, steps=50, progress=False)
         for objective, m in obj_results.items()}
mmd = {k: dc.metrics.mmd_rbf(v[:1500], fresh) for k, v in plain.items()}
mmd_noise = dc.metrics.mmd_rbf(x_T2[:1500], fresh)
ab_last, ab_prev = toy_schedule.alpha_bar[-1].item(), toy_schedule.alpha_bar[-2].item()
print(f"ᾱ at t = {toy_schedule.T - 1}: {ab_last:.1e} (at t = {toy_schedule.T - 2}: {ab_prev:.1e}); 1/√ᾱ = "
      f"{ab_last ** -0.5:.0f}: an error of 0.01 in ε̂ becomes {0.01 * ab_last ** -0.5:.0f} in x̂₀ on the first step")
for k, v in mmd.items():
    print(f"{k:>3}-prediction, DDIM-50: MMD² = {v:.4f}; samples off the moons {off_moons(plain[k]):.1%}")
print(f"pure noise: MMD² = {mmd_noise:.4f}; fresh data off the moons {off_moons(fresh):.1%}")

# %% [markdown]
# If a row above is worse than pure noise, that model's sampler broke — and the ε-model is the one at risk. The cosine
# schedule's last step has $\bar\alpha_{T-1}$ about a thousandth of $\bar\alpha_{T-2}$ (its $\beta$ is capped at 0.999), so the first
# step of a trailing schedule recovers $\hat x_0 = (x_t - \sigma\hat\varepsilon)/\alpha$ by dividing by a tiny $\alpha$: the
# identity above says the same thing backwards, an x₀-error is an ε-error divided by $\mathrm{SNR}_t$. The x₀- and v-models
# predict $x_0$ without that division. Two fixes for the ε-model, each one line:
#
# * **clip $\hat x_0$** to where the data live, as image samplers clip to $[-1, 1]$ (`clip_denoised=True`); here a box of ±3;
# * **skip the degenerate first step**: start at $t = T-2$, where $\bar\alpha$ is a thousand times larger and $x_T\sim\mathcal N(0, I)$ is
#   still an excellent sample of $q(x_{T-2})$ — `sampling.sample_loop` runs any list of timesteps.

# %%
class ClipX0(torch.nn.Module):
    """The ε-model as an x₀-model whose prediction is clamped to [−lim, lim] (x₀-clipping for any data)."""
    objective = "x0"

    def __init__(self, eps_model, lim):
        super().__init__()
        self.inner, self.lim = eps_model, lim

    def forward(self, x, t, cond=None):
        _, x0 = sampling.predict_eps_x0(self.inner, x, t, toy_schedule)
        return x0.clamp(-self.lim, self.lim)


print(f"data range: x in [{points[:, 0].min():.2f}, {points[:, 0].max():.2f}], "
      f"y in [{points[:, 1].min():.2f}, {points[:, 1].max():.2f}]")
eps_model = obj_results["eps"]
clipped = sampling.ddim_sample(ClipX0(eps_model, 3.0), x_T2, toy_schedule, steps=50, progress=False)
ts_skip = torch.cat([torch.tensor([toy_schedule.T - 2]), sampling.timesteps(toy_schedule.T, 50, "trailing")[1:]])
skipped = sampling.sample_loop(
    eps_model, x_T2, toy_schedule, ts_skip, progress=False,
    update=lambda x, eps, x0, t, t_prev, i: sampling.ddim_step(x, eps, t, t_prev, toy_schedule, x0=x0))
fixes = {"ε, plain DDIM-50": plain["eps"], "ε, x̂₀ clipped to ±3": clipped, "ε, first step skipped": skipped,
         "x₀-prediction": plain["x0"], "v-prediction": plain["v"]}
fig, axes = plt.subplots(1, len(fixes), figsize=(3.3 * len(fixes), 3.4))
for k, (ax, (name, pts)) in enumerate(zip(axes, fixes.items())):
    score = dc.metrics.mmd_rbf(pts[:1500], fresh)
    dc.viz.plot_points(pts, ax=ax, title=f"{name}\nMMD² = {score:.4f}", color=f"C{k}")
    print(f"{name:<24} MMD² = {score:.4f}; samples off the moons {off_moons(pts):.1%}")
fig.tight_layout()
plt.show()
same_net = all(torch.equal(a, b) for a, b in zip(toy.ema.state_dict().values(), eps_model.state_dict().values()))
print(f"the ε-model here and section 2's model: {'the same weights' if same_net else 'different weights'}; "
      f"section 2 sampled it with DDPM-200: samples off the moons {off_moons(toy_samples):.1%}")
gap = {t: x0_err["x0"][ts_eval.index(t)] / x0_err["v"][ts_eval.index(t)] - 1 for t in (10, 40)}
print(f"x₀-model vs v-model, one training seed each: x̂₀-error {gap[10]:+.0%} at t = 10, {gap[40]:+.0%} at t = 40; "
      f"x̂₀ off the moons at t = 40: {off_x0['x0', 40]:.1%} vs {off_x0['v', 40]:.1%}")

# %% [markdown]
# **Why the x₀-model fills the gap between the moons.** Its sampler does not break, yet its MMD² is worse than the v-model's and
# more of its samples lie off the moons, between them (the fractions printed with the MMD², against fresh data's own). Two
# effects, both in the printed table of the identities cell. *Regression to the mean at high noise:* at large $t$ the best
# any model can predict is $\mathbb E[x_0 \mid x_t]$, an average over both moons that lies between them — at $t = 160$ a
# large share of every model's $\hat x_0$ is off the moons, for all three targets alike. That is correct, as long as the later
# steps pull each point back onto a moon. *Blurred predictions at small $t$:* that pull comes from the small-$t$ predictions,
# and there the x₀-loss weights the error by 1 where the v- and ε-losses weight it by $1 + \mathrm{SNR}_t$ and $\mathrm{SNR}_t$
# (the left plot: both far above 1 at small $t$). Trained with the same budget, the x₀-model spends less effort there;
# the last printed line compares its x̂₀-error and its share of $\hat x_0$ off the moons with the v-model's — one training
# seed each, so those gaps are a single draw, not a measured difference. A DDIM step moves $x_t$ towards $\hat x_0$, so a
# blurred $\hat x_0$ — a local average of both sides — leaves points in between.
#
# The objective is not the whole story. The ε-model's x̂₀-errors at small $t$ are close to the v-model's (the table), yet
# its repaired DDIM samples land off the moons more often than the v-model's (the shares above): both repairs aim at the
# first, large-$t$ steps where its x̂₀ blows up, and how a sampler takes those steps matters as well as the loss. The ε-model is also the very network
# section 2 trained (same seed, same configuration: the weights printed as the same), so its DDPM-200 share, printed
# beside, is a third sampler on the same weights.
#
# The identity is the common currency: it explains the ε-loss chart of
# section 5 (SNR → 0 multiplies the x₀-error away at large $t$), the targets table (ε is "easy" at large $t$ only in its own
# units) and min-SNR-γ (a cap on the weight curve in the left plot above).
#
# ## 7. The pretrained model
#
# `dc.pretrained.load("fmnist-ddpm")` returns the course's class-conditional ε-model (cosine schedule, T = 1000, EMA weights),
# trained by `python -m diffusion_course.train fmnist-ddpm` — the recipe is stored in its manifest, with the wall time and the
# metrics measured when it was made:

# %%
model = dc.pretrained.load("fmnist-ddpm", device=device)
schedule = model.schedule
manifest = dc.pretrained.manifest("fmnist-ddpm")
print(f"{manifest.get('steps')} steps on {manifest.get('device')}; its history: {manifest.get('history', 'not recorded')}")
stages, stage = [], manifest                  # it was fine-tuned from an earlier model: follow the chain to the start
while stage:
    stages.append(stage)
    parent = (stage.get("recipe") or {}).get("init_from")
    stage = dc.pretrained.manifest(parent) if parent else None
train_s = [st.get("metrics", {}).get("train_wall_seconds", float("nan")) for st in stages]
print("training time by stage: " + ", ".join(f"{st['name']} {t / 3600:.1f} h" for st, t in zip(stages, train_s))
      + f" — {sum(train_s) / 3600:.1f} h in all")
metrics = manifest.get("metrics", {})
for key, what in [("n", "images"), ("sampler", ""), ("fid_cond", "class-conditional FID"),
                  ("floor_balanced", "its floor (class-balanced real sets)"), ("fid_uncond", "unconditional FID"),
                  ("floor", "its floor (random real sets)"), ("class_accuracy_cond", "class accuracy (conditional)")]:
    if key in metrics:
        v = metrics[key]
        print(f"  {key:<20} {v:.3f}  {what}" if isinstance(v, float) else f"  {key:<20} {v}  {what}")

# %% [markdown]
# Samples of every class (rows), 50 DDIM steps:

# %%
per_class = dc.config.budget(quick=2, cpu=8, gpu=12)
labels = torch.arange(10).repeat_interleave(per_class).to(device)
x_T = torch.randn(len(labels), 1, 28, 28, generator=torch.Generator().manual_seed(7)).to(device)
start = time.perf_counter()
samples = sampling.ddim_sample(model, x_T, schedule, steps=50, cond=labels, clip_denoised=True)
print(f"{len(labels)} samples in {time.perf_counter() - start:.1f} s")
fig, ax = plt.subplots(figsize=(per_class * 0.9 + 1, 9.5))
dc.viz.show_images(samples.cpu(), nrow=per_class, ax=ax)
for c, name in enumerate(dc.data.FASHION_CLASSES):
    ax.text(-2, (c + 0.5) * 29, name, ha="right", va="center", fontsize=9)

# %% [markdown]
# **How good is that, in numbers?** FID compares the statistics of features of generated and real images. The course uses the
# 128-d features of its own Fashion-MNIST classifier (`dc.metrics`; its test accuracy is in
# `dc.pretrained.manifest("fmnist-classifier")`), which is cheap on a CPU. FID is biased
# upwards at small sample sizes, so it is always reported next to its **floor**: the FID between two disjoint sets of real
# test images of the same size (class-balanced, like the samples' labels). A perfect generator scores the floor.

# %%
clf = dc.pretrained.load("fmnist-classifier", device=device)
n_fid = dc.config.budget(quick=100, cpu=250, gpu=2000)
g = torch.Generator().manual_seed(8)
cond = (torch.arange(n_fid) % 10).to(device)
start = time.perf_counter()
gen = torch.cat([sampling.ddim_sample(model, torch.randn(min(500, n_fid - i), 1, 28, 28, generator=g).to(device),
                                      schedule, steps=50, cond=cond[i:i + 500], clip_denoised=True)
                 for i in range(0, n_fid, 500)])
secs = time.perf_counter() - start
# the labels are exactly balanced, so the reference set and the floor are class-balanced too
fid = dc.metrics.fid(clf, gen.cpu(), dc.metrics.reference_images(n_fid, class_balanced=True))
floor = dc.metrics.fid_floor(clf, n_fid, class_balanced=True)
acc = dc.metrics.class_accuracy(clf, gen.cpu(), cond.cpu())
print(f"n = {n_fid}: FID {fid:.2f} vs floor {floor:.2f} (ratio {fid / floor:.2f}); "
      f"class accuracy {acc:.1%}; sampling took {secs:.0f} s")
shipped = dc.pretrained.manifest("fmnist-ddpm")["metrics"]
print(f"the shipped model's manifest, the same protocol at n = {shipped['n']}: FID {shipped['fid_cond']:.2f} vs floor "
      f"{shipped['floor_balanced']:.2f} (ratio {shipped['fid_cond'] / shipped['floor_balanced']:.2f})")

# %% [markdown]
# Read the two lines together. At this $n$ the floor itself is high and the model's FID sits almost on it: a sample this
# small cannot see the model's remaining error, and a learner who stopped here would call the model perfect. At
# n = 1000 (the manifest's line) the floor drops much further than the model's FID, and the gap between them — the
# model's real error — appears. Always compare an FID with the floor *at the same n*, and pick n large enough that the
# floor is well below the FIDs you want to tell apart.
#
# ## 8. Exercises (checked automatically)
#
# The placeholders fail their checks on purpose; `dc.exercises.solution("loss")` prints a solution when you want one.
#
# **8a. Algorithm 1's loss.** Given a model `model(x_t, t)`, a clean batch `x0`, timesteps `t` (shape `(B,)`) and the noise
# `noise`, return the scalar $\frac{1}{B\cdot D}\sum\lVert\varepsilon - \hat\varepsilon_\theta(x_t, t)\rVert^2$ with
# $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\varepsilon$ (a mean over every element, as `losses.diffusion_loss` uses).

# %%
def my_loss(model, x0, t, noise, schedule):
    # TODO: your code here (this placeholder forgets to noise x0, so the check fails until you fix it)
    return (noise - model(x0, t)).pow(2).mean()


dc.exercises.check(my_loss, "loss");

# %% [markdown]
# **8b. The v target.** Write $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$ for a batch, then run the check. Then
# verify the identity of section 6 on your own numbers: $\lVert v-\hat v\rVert^2 = (1+\mathrm{SNR}_t)\lVert x_0-\hat x_0\rVert^2$.

# %%
def my_v_target(x0, t, schedule, noise):
    # TODO: your code here (this placeholder is wrong on purpose, so the check fails until you fill it in)
    return noise


dc.exercises.check(my_v_target, "v_target");

# %% [markdown]
# **8c. Predict before you run: an x₀-error in ε units.** A model's $\hat x_0$ is off by a mean squared error $e$ at a noise
# level $\bar\alpha$. Without running anything, work out the mean squared error of the $\hat\varepsilon$ that the same model
# implies ($\hat\varepsilon = (x_t - \sqrt{\bar\alpha}\,\hat x_0)/\sqrt{1-\bar\alpha}$), as a function of $e$ and $\bar\alpha$, then write it
# below. It is the identity behind section 6's weights and behind the $t = 0$ reading of section 5.

# %%
def my_eps_error(x0_mse, alpha_bar):
    # TODO: your prediction (this placeholder says the two errors are equal, so the check fails until you fix it)
    return x0_mse


dc.exercises.check(my_eps_error, "eps_from_x0_error");

# %% [markdown]
# ## Summary
#
# * DDPM's training step: sample $x_0$, $t$, $\varepsilon$; make $x_t$ in one jump; regress $\varepsilon$. That's all.
# * A network that predicts the noise has learned the direction back to the data at every noise level, where it has
#   seen data — visible as the
#   arrow field on 2-D data.
# * The U-Net: timestep embedding → FiLM in residual blocks; attention only at low resolution; a null label so one
#   network is conditional and unconditional.
# * ε, x₀ and v are one loss with weights SNR, 1 and 1 + SNR on the x₀-error; min-SNR caps the ε weight. An ε-model's
#   sampler can fail at the degenerate first step of the cosine schedule — clip x̂₀ or skip that step — and where $t$ is
#   drawn decides where a short run spends its effort.
# * Diagnose runs with the final model's loss per timestep on held-out images, denoising a held-out image, and EMA vs raw
#   weights compared on the same held-out images; measure samples with FID next to its (class-balanced) floor.
#
# **More exercises.**
# 1. Train the 2-D model on `"checkerboard"` or `"swiss_roll"`. Which takes more steps, and why?
# 2. Re-run the demo with `min_snr_gamma=5.0` in `TrainConfig` and compare the held-out loss per timestep.
# 3. Remove the EMA (set `ema_decay=0.0`) and compare samples at the same step count.
#
# **References.**
# * J. Ho, A. Jain, P. Abbeel. *Denoising Diffusion Probabilistic Models.* NeurIPS 2020 (Algorithm 1, Eq. 14).
# * A. Nichol, P. Dhariwal. *Improved Denoising Diffusion Probabilistic Models.* ICML 2021.
# * P. Dhariwal, A. Nichol. *Diffusion Models Beat GANs on Image Synthesis.* NeurIPS 2021 (AdaGN, architecture ablations).
# * T. Salimans, J. Ho. *Progressive Distillation for Fast Sampling of Diffusion Models.* ICLR 2022 (v-prediction).
# * T. Hang et al. *Efficient Diffusion Training via Min-SNR Weighting Strategy.* ICCV 2023.
# * T. Karras, M. Aittala, T. Aila, S. Laine. *Elucidating the Design Space of Diffusion-Based Generative Models.*
#   NeurIPS 2022 (Sec. 5: log-normal training noise levels).
# * M. Heusel et al. *GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium.* NeurIPS 2017 (FID).
