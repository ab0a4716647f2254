# %% [markdown]
# # Chapter 1 — The forward process: turning images into noise, on purpose
#
# **Learning goals.** By the end of this chapter you can
# 1. write the noising process $q(x_t \mid x_{t-1})$ and its closed form $q(x_t \mid x_0)$, and show numerically that they agree;
# 2. read a noise schedule ($\beta_t$, $\bar\alpha_t$, log-SNR) and say how fast it destroys an image — and what "pure noise" means in numbers;
# 3. explain what a *perfect* denoiser $\mathbb{E}[x_0 \mid x_t]$ would predict, compute it exactly over 60,000 real images, and see — by putting a trained network beside it — why a network that generalises must be something else.
#
# Time: about 1 minute on a 2-core CPU; well under a minute on a GPU.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

import diffusion_course as dc
from diffusion_course import forward, schedules

print(dc.config.describe())

# %% [markdown]
# ## 1. The key idea
#
# Take a real image and add a little Gaussian noise. Then a little more, and more, until nothing of the image is left.
# That direction needs no learning: **we** choose the noise. Diffusion models learn the other direction — given a noisy image and
# how noisy it is, say what noise was added — and then generate by starting from pure noise and removing it step by step.
#
# This chapter is about the direction we control. Here are real Fashion-MNIST garments walking towards noise:

# %%
x_train, y_train = dc.data.load_fashion_mnist("train")
x_test, y_test = dc.data.load_fashion_mnist("test")
print(f"train {tuple(x_train.shape)}, test {tuple(x_test.shape)}, pixel range [{x_train.min():.0f}, {x_train.max():.0f}]")

cosine = schedules.NoiseSchedule.cosine(1000)
linear = schedules.NoiseSchedule.linear(1000)
g = torch.Generator().manual_seed(0)
picks = x_test[[0, 1, 2, 3]]
ts = [0, 100, 200, 300, 400, 500, 600, 700, 800, 999]
rows = [forward.q_sample(picks, torch.full((4,), t), cosine, generator=g) for t in ts]
grid = torch.stack(rows, 1).reshape(-1, 1, 28, 28)  # image-major: one row per garment
ax = dc.viz.show_images(grid, nrow=len(ts), size=3.2)
ax.set_title("x_t for t = " + ", ".join(map(str, ts)) + "   (cosine schedule)", fontsize=9);

# %% [markdown]
# ## 2. One step at a time, or all at once
#
# DDPM (Ho et al., 2020) defines the forward process as a Markov chain. Each step shrinks the image a little and adds a
# little noise of variance $\beta_t$:
#
# $$q(x_t \mid x_{t-1}) = \mathcal{N}\!\left(\sqrt{1-\beta_t}\,x_{t-1},\; \beta_t I\right).$$
#
# Shrinking by $\sqrt{1-\beta_t}$ keeps a unit-variance input at unit variance (and pulls any other variance towards 1)
# instead of letting it grow. Because a sum of
# Gaussians is Gaussian, $t$ steps collapse into one jump. With $\alpha_t = 1-\beta_t$ and $\bar\alpha_t = \prod_{s\le t}\alpha_s$:
#
# $$q(x_t \mid x_0) = \mathcal{N}\!\left(\sqrt{\bar\alpha_t}\,x_0,\; (1-\bar\alpha_t) I\right)
# \quad\Longleftrightarrow\quad x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ \ \varepsilon\sim\mathcal{N}(0, I).$$
#
# Here are both, exactly as the package implements them:

# %%
dc.viz.show_source(forward.q_step)
dc.viz.show_source(forward.q_sample)

# %% [markdown]
# Do they really agree? Take one image, copy it many times, run the chain step by step up to $t$, and separately jump
# straight to $t$ with the closed form. If the algebra is right, the two clouds of noisy images have the same mean and
# variance at every pixel — and the mean is $\sqrt{\bar\alpha_t}\,x_0$. (The cell compares them averaged over the pixels.)

# %%
n_copies = dc.config.budget(quick=500, cpu=4000, gpu=20000)
x0 = x_test[0:1].expand(n_copies, -1, -1, -1)
g = torch.Generator().manual_seed(1)
checkpoints_t = [50, 200, 500, 800]
x = x0.clone()
chain, jump = {}, {}
for t in tqdm(range(max(checkpoints_t) + 1), desc="chain steps"):
    x = forward.q_step(x, torch.full((n_copies,), t), cosine, generator=g)
    if t in checkpoints_t:
        chain[t] = x.clone()
        jump[t] = forward.q_sample(x0, torch.full((n_copies,), t), cosine, generator=g)

print(f"{n_copies} copies of one image; per-pixel statistics, averaged over the 784 pixels")
print(f"{'t':>4} {'ᾱ_t':>7} | {'mean |mean_chain − mean_jump|':>30} {'expected from noise':>20} | "
      f"{'var chain':>9} {'var jump':>9} {'1−ᾱ_t':>7}")
for t in checkpoints_t:
    ab = cosine.alpha_bar[t].item()
    gap = (chain[t].mean(0) - jump[t].mean(0)).abs().mean().item()
    # two independent means of n draws with variance 1−ᾱ differ by |N(0, 2(1−ᾱ)/n)|, whose mean is √(2/π)·sd
    expected = math.sqrt(2 / math.pi) * math.sqrt(2 * (1 - ab) / n_copies)
    print(f"{t:>4} {ab:7.4f} | {gap:30.4f} {expected:20.4f} | "
          f"{chain[t].var(0).mean().item():9.4f} {jump[t].var(0).mean().item():9.4f} {1 - ab:7.4f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
t = 200
for ax, img, title in zip(axes, [chain[t].mean(0), jump[t].mean(0), math.sqrt(cosine.alpha_bar[t]) * x0[0]],
                          ["mean of the chain", "mean of the jump", r"$\sqrt{\bar\alpha_t}\,x_0$"]):
    ax.imshow(img[0], cmap="gray", vmin=-1, vmax=1)
    ax.set_title(f"{title}\n(t={t})")
    ax.axis("off")

# %% [markdown]
# **Why the closed form matters.** Training (chapter 2) needs $x_t$ at a *random* $t$ for every image in every batch.
# With the chain that costs $t$ steps — on average 500 — per example; with the closed form it costs one multiply-add:

# %%
batch = x_train[:256]
t_batch = torch.full((256,), 499)
start = time.perf_counter()
forward.q_sample(batch, t_batch, cosine)
one_jump = time.perf_counter() - start
start = time.perf_counter()
x = batch
for t in range(500):
    x = forward.q_step(x, torch.full((256,), t), cosine)
chain_time = time.perf_counter() - start
print(f"x_499 for 256 images: closed form {one_jump * 1e3:.2f} ms, chain {chain_time * 1e3:.0f} ms "
      f"({chain_time / one_jump:.0f}× slower)")

# %% [markdown]
# ## 3. Noise schedules: how fast is the image destroyed?
#
# The schedule $\beta_1,\dots,\beta_T$ decides how quickly the signal fades. Two classics:
#
# * **linear** (DDPM): $\beta_t$ rises linearly from $10^{-4}$ to $0.02$ over $T=1000$ steps;
# * **cosine** (Nichol & Dhariwal, 2021): defined through $\bar\alpha_t = f(t)/f(0)$ with
#   $f(t) = \cos^2\!\left(\frac{t/T + s}{1+s}\cdot\frac{\pi}{2}\right)$, $s = 0.008$, and $\beta_t$ capped at 0.999.
#
# (Indexing: the math counts steps $1\dots T$; the code counts $0\dots T-1$, so the package's `alpha_bar[t]` is the
# math's $\bar\alpha_{t+1} = f((t+1)/T)/f(0)$ — after one step, `alpha_bar[0]` is just below 1.)
#
# The most useful single number is the **signal-to-noise ratio** $\mathrm{SNR}_t = \bar\alpha_t/(1-\bar\alpha_t)$: the ratio
# of the signal's *variance* to the noise's in $x_t$ (for unit-variance data). The ratio of their *weights* in
# $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\varepsilon$ is its square root, $\sqrt{\mathrm{SNR}_t}$. Plotted on a log scale
# (log-SNR), it shows where each schedule spends its steps.

# %%
dc.viz.show_source(schedules.NoiseSchedule.cosine)
dc.viz.plot_schedules({"linear": linear, "cosine": cosine});
for name, s in [("linear", linear), ("cosine", cosine)]:
    below = {lvl: int((s.alpha_bar < lvl).nonzero()[0]) for lvl in (0.03, 0.01)}
    print(f"{name:>6}: ᾱ_t falls below 3% at t = {below[0.03]}, below 1% at t = {below[0.01]}")

# %% [markdown]
# The linear schedule drives $\bar\alpha_t$ below 3% and then below 1% long before $T$ (printed above): its last third of
# steps see nearly pure noise and teach the model little. The cosine schedule declines gently and keeps a useful SNR for longer.
# The same image, at the same $t$, under each:

# %%
img = x_test[7:8]
ts_strip = [0, 100, 200, 300, 400, 500, 600, 700, 850, 999]
eps = torch.randn(img.shape, generator=torch.Generator().manual_seed(3))
fig, axes = plt.subplots(2, len(ts_strip), figsize=(1.3 * len(ts_strip), 3.2))
for row, (name, s) in enumerate([("linear", linear), ("cosine", cosine)]):
    for j, t in enumerate(ts_strip):
        xt = forward.q_sample(img, torch.tensor([t]), s, eps)
        axes[row, j].imshow(xt[0, 0], cmap="gray", vmin=-1, vmax=1)
        axes[row, j].set_xticks([]), axes[row, j].set_yticks([])
        axes[row, j].set_title(f"t={t}\nSNR={s.snr[t].item():.2g}", fontsize=7)
    axes[row, 0].set_ylabel(name)
fig.tight_layout()

# %% [markdown]
# **What does "pure noise" mean, numerically?** At $t = T-1$ the image still contributes $\sqrt{\bar\alpha_T}\,x_0$. For both
# schedules that coefficient is tiny but *not zero* (Lin et al., 2024, call this a flaw): the model trains on an $x_T$ that
# still carries a trace of the image, but at generation time starts from noise that carries none. The zero-terminal-SNR
# rescale shifts $\sqrt{\bar\alpha}$ so that it ends exactly at 0. The table below gives the numbers, and the correlation
# between $x_0$ and $x_T$ pixels measures the trace directly.

# %%
zsnr = cosine.rescale_zero_terminal_snr()
# Stable Diffusion's "scaled linear" schedule: √β linear from √0.00085 to √0.012 over 1000 steps
sd = schedules.NoiseSchedule.from_betas(torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2)
print(f"{'schedule':<18} {'ᾱ_T':>10} {'√ᾱ_T (signal left)':>20} {'SNR_T':>10} {'σ_T = √((1−ᾱ)/ᾱ)':>20}")
for name, s in [("linear", linear), ("cosine", cosine), ("cosine + zero-SNR", zsnr), ("SD scaled-linear", sd)]:
    ab = s.alpha_bar[-1].item()
    sigma = s.sigma[-1].item()
    print(f"{name:<18} {ab:10.2e} {math.sqrt(ab):20.2e} {s.snr[-1].item():10.2e} {sigma:20.3g}")

# A direct check: how correlated are x_0 and x_T pixels across many images? It can be predicted first. With
# x_T = √ᾱ_T x_0 + √(1−ᾱ_T) ε and ε independent of x_0, corr(x_0, x_T) = √ᾱ_T·sd(x_0) / √(ᾱ_T·var(x_0) + 1 − ᾱ_T),
# which is ≈ √ᾱ_T·sd(x_0) when ᾱ_T is tiny.
x0s = x_test[:2000].flatten(1)
sd_x0 = x0s.std().item()
se = 1 / math.sqrt(x0s.numel())   # standard error of a correlation near 0 from n independent pairs: about 1/√n
print(f"sd(x_0) over the pixels of 2000 test images: {sd_x0:.3f}; standard error of a correlation from "
      f"{x0s.numel():,} pixel pairs: {se:.4f}")
print(f"{'schedule':<18} {'predicted corr':>15} {'measured corr':>14} {'measured / SE':>14}   verdict (|measured| > 3 SE?)")
for name, s in [("linear", linear), ("cosine", cosine), ("cosine + zero-SNR", zsnr), ("SD scaled-linear", sd)]:
    ab = s.alpha_bar[-1].item()
    predicted = math.sqrt(ab) * sd_x0 / math.sqrt(ab * sd_x0 ** 2 + 1 - ab)
    # the same noise for every schedule (seed 4), so the rows differ only by the schedule
    xT = forward.q_sample(x_test[:2000], torch.full((2000,), 999), s, generator=torch.Generator().manual_seed(4)).flatten(1)
    c = torch.corrcoef(torch.stack([x0s.flatten() - x0s.mean(), xT.flatten()]))[0, 1].item()
    verdict = "a trace of x_0 is detectable" if abs(c) > 3 * se else "at chance: no trace detectable"
    print(f"{name:<18} {predicted:+15.1e} {c:+14.1e} {c / se:+14.1f}   {verdict}")

# %% [markdown]
# How to read it: the correlation is not a mystery to be measured but a number to predict — $\sqrt{\bar\alpha_T}$ times the
# spread of the pixels — and the measured values follow the predictions in the table. Whether a trace of $x_0$ is
# *detectable* depends on how the prediction compares with its standard error over all the pixel pairs (the last
# column gives measured ÷ SE): the cosine
# schedule leaves a trace far below it (and the zero-SNR rescale none at all), while the linear schedule's small
# $\sqrt{\bar\alpha_T}$ is already measurable, and Stable Diffusion's scaled-linear schedule — whose $\sqrt{\bar\alpha_T}$ in
# the first table is the largest by an order of magnitude — leaves a correlation many standard errors out.
#
# The flaw matters less for how much signal is left than for *what the model learns at the last step*: with SNR > 0 the
# first sampling step assumes a little signal the starting noise does not have, and models with strongly non-zero terminal
# SNR (Stable Diffusion's schedule, the last row of the table, keeps far more signal at $T$) cannot make very dark or very
# bright images (Lin et al., Sec. 3). And one
# warning for the zero-SNR fix: at SNR = 0, $x_T = \varepsilon$ exactly, so an ε-prediction is trivially right and carries no
# information about the image — $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$ divides by zero. A
# zero-terminal-SNR schedule therefore needs a v- or x₀-predicting network (Lin et al., Sec. 3.2); chapter 2 compares the
# three targets.
#
# ## 4. The explorer: watch an image walk to noise and back
#
# Drag the **t** slider, or press **Forward ▶** / **◀ Reverse** to walk along the cosine schedule. Four panels:
#
# * **x₀** — the clean image (from the *test* set, so it is not among the training images);
# * **x_t** — what a diffusion model is given at step $t$;
# * **E[x₀ | x_t]** — what a **perfect denoiser** would predict: the exact posterior mean of $x_0$ given $x_t$ when the data are
#   the 60,000 training images;
# * **network's x̂₀** — what the course's trained network (`fmnist-ddpm`, chapter 2, asked without a label) predicts from
#   the same $x_t$.
#
# Under the panels the forward formula is written out with the current numbers.
#
# If $x_0$ is one of $N$ equally likely training images $x^{(1)},\dots,x^{(N)}$, Bayes' rule gives
#
# $$\mathbb{E}[x_0 \mid x_t] = \sum_i w_i\, x^{(i)}, \qquad
# w_i = \operatorname{softmax}_i\!\left(-\frac{\lVert x_t - \sqrt{\bar\alpha_t}\,x^{(i)}\rVert^2}{2(1-\bar\alpha_t)}\right),$$
#
# a softmax over the whole training set — which the package computes in chunks in a few tens of milliseconds:

# %%
dc.viz.show_source(forward.ideal_denoiser)

# %%
net = dc.pretrained.load("fmnist-ddpm")       # chapter 2's model, on the CPU; its schedule is cosine(1000)
net_schedule = net.schedule
examples = {}
for c, name in enumerate(dc.data.FASHION_CLASSES):
    examples[f"{c}: {name}"] = x_test[(y_test == c).nonzero()[0, 0]]
explorer = dc.widgets.ForwardExplorer(examples, x_train, {"cosine": cosine, "linear": linear},
                                      model=net, model_schedule=net_schedule)
explorer.t_slider.value = 500
print(f"one update (q_sample + perfect denoiser over {len(x_train):,} images + the network + drawing): "
      f"{explorer.last_update_s * 1e3:.0f} ms on this machine now — "
      f"{'within' if explorer.last_update_s <= 0.3 else 'over'} the 0.3 s a slider needs to feel live "
      f"(the explorer shows each update's own time under its equation)")
explorer.t_slider.value = 0
explorer

# %% [markdown]
# For readers on GitHub (where widgets do not run), the same four panels at several $t$:

# %%
explorer.image_menu.value = "0: T-shirt/top"
explorer.strip(ts=(0, 200, 350, 450, 550, 650, 750, 999));

# %% [markdown]
# ## 5. What the perfect denoiser teaches
#
# Move the slider back towards $t=0$ and watch the third panel. At large $t$ it shows a blurry average of many garments
# (the noise hides which one it was). As $t$ falls it sharpens — and then **snaps to a single training image**, which is
# *not* the test image on the left. The perfect denoiser on a finite training set memorises: it can only ever output
# (averages of) images it has seen. A model that minimised the training loss perfectly would therefore only regenerate
# the training set. The fourth panel, the trained network, does something else at small $t$: it cleans up *this* image.
#
# Let us measure both: for `n_eval` test images (100 on a CPU), the weight of the most likely training image, and the
# error of the perfect denoiser, of the network and of the nearest training image, as $t$ varies.

# %%
n_eval = dc.config.budget(quick=20, cpu=100, gpu=200)
sweep_ts = [0, 50, 100, 200, 300, 400, 500, 550, 600, 650, 700, 800, 900, 999]
x0s = x_test[:n_eval]
top_w, mse, mse_net = [], [], []
for t in tqdm(sweep_ts, desc="t sweep"):
    tt = torch.full((n_eval,), t)
    xt = forward.q_sample(x0s, tt, cosine, generator=torch.Generator().manual_seed(5))
    x0_hat, w, _ = forward.ideal_denoiser(xt, tt, x_train, cosine, return_weights=True)
    top_w.append(w[:, 0].mean().item())
    mse.append((x0_hat - x0s).pow(2).mean().item())
    mse_net.append((explorer.network_x0(xt, float(cosine.alpha_bar[t])) - x0s).pow(2).mean().item())

nearest = torch.cdist(x0s.flatten(1), x_train.flatten(1)).min(1).values.pow(2).mean().item() / 784
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].plot(sweep_ts, top_w, "o-")
axes[0].axhline(0.5, color="gray", lw=0.8, ls=":")
axes[0].set(xlabel="t", ylabel="weight of the top training image", title="how decided the perfect denoiser is")
axes[1].plot(sweep_ts, mse, "o-", label="perfect denoiser (memoriser) vs the true test image")
axes[1].plot(sweep_ts, mse_net, "s-", label="trained network vs the true test image")
axes[1].axhline(nearest, color="C3", ls="--", label="nearest training image vs test image")
axes[1].set(xlabel="t", ylabel="MSE per pixel", yscale="log", title="error of the prediction of x₀ on test images")
for ax in axes:
    ax.grid(alpha=0.3)
axes[1].legend(fontsize=8)
fig.tight_layout()

commit_t = next((t for t, w in zip(sweep_ts, top_w) if w < 0.5), None)   # first t where it is no longer decided
print(f"{'t':>5} {'top weight':>10} {'MSE perfect':>12} {'MSE network':>12}")
for t, w, m, mn in zip(sweep_ts, top_w, mse, mse_net):
    print(f"{t:>5} {w:10.3f} {m:12.4f} {mn:12.4f}")
print(f"nearest-neighbour MSE {nearest:.4f}; mean top weight first falls below 0.5 at t = {commit_t}"
      + (f" (SNR = {cosine.snr[commit_t].item():.2f}: more noise than signal)" if commit_t is not None else ""))
small = [i for i, t in enumerate(sweep_ts) if 0 < t <= 300]
beats = [sweep_ts[i] for i in small if mse_net[i] < mse[i]]
print(f"for 0 < t ≤ 300 the network beats the memoriser at {len(beats)} of {len(small)} timesteps "
      f"({', '.join(map(str, beats)) or 'none'})")

# %% [markdown]
# Read the table from the bottom up. At large $t$ the perfect denoiser is undecided (top weight near 0) and predicts an
# average; its weight on one training image rises steeply in the middle of the schedule, and the printed line says where
# it passes one half. **That** is where the perfect denoiser commits to one garment: not at small $t$, but while the image
# is still mostly noise (look at $x_t$ in the explorer there). Below that, its error on an unseen test image is the
# squared distance (MSE) to that nearest neighbour (the dashed line) — it cannot do better, because it only knows the
# training set.
#
# The network behaves differently, and that is the point of this chapter: at small $t$ its error keeps falling towards
# zero, far below the memoriser's floor (the last printed line counts the timesteps where it wins), because it denoises
# *the image it is given* instead of replacing it with a training image. At large $t$ both predict averages and their
# errors are close — except at the very last step, $t = T-1$, where the network's $\hat x_0 = (x_t-\sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$
# divides by $\sqrt{\bar\alpha_{T-1}}$ (the table of section 3) and a tiny error in $\hat\varepsilon$ becomes a large one in $\hat x_0$
# (compare the last row of the table above; chapter 2, section 6, shows what this does to a sampler). A trained network is a *smoothed* version of the perfect denoiser: it cannot represent 60,000 sharp
# basins, so it interpolates between them — which is precisely why it can generate new garments. (Kadkhodaie et al., 2024,
# show this transition from memorisation to generalisation as the training set grows.)
#
# ## 6. Pixel histograms go to $\mathcal{N}(0, 1)$
#
# The whole point of the forward process is that its end is a distribution we can sample without knowing anything
# about the data. Fashion-MNIST's pixel histogram is far from Gaussian (most pixels are background at $-1$); by $t=T-1$ it
# is indistinguishable from a standard normal:

# %%
pix = x_train[:2000]
grid_x = torch.linspace(-4, 4, 200)
normal_pdf = torch.exp(-grid_x**2 / 2) / math.sqrt(2 * math.pi)
fig, axes = plt.subplots(1, 5, figsize=(15, 2.8), sharey=True)
for ax, t in zip(axes, [0, 250, 500, 750, 999]):
    xt = forward.q_sample(pix, torch.full((pix.shape[0],), t), cosine, generator=torch.Generator().manual_seed(6))
    ax.hist(xt.flatten().numpy(), bins=120, range=(-4, 4), density=True, alpha=0.7)
    ax.plot(grid_x, normal_pdf, "r", lw=1)
    ax.set_title(f"t={t}: mean {xt.mean():.2f}, sd {xt.std():.2f}", fontsize=9)
    ax.set_ylim(0, 1.2)
axes[0].set_ylabel("density");

# %% [markdown]
# ## 7. Exercises (checked automatically)
#
# Each exercise has a placeholder that fails its check on purpose. Replace the body, run the cell, and read what the
# check says. The solutions are not on this page: `dc.exercises.solution("q_sample")` prints one when you want it.
#
# **7a. Write `q_sample` yourself.** Implement $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ for a batch.
# `schedule.alpha_bar` is a 1-D float64 tensor of length $T$; `t` is an integer tensor of shape `(B,)`; `x0` and `noise` have
# shape `(B, C, H, W)`. The check compares your function with the package's on seeded inputs and tells you what differs.
# (Hint: mind the broadcasting of ᾱ, which has shape `(B,)`, and its dtype.)

# %%
def my_q_sample(x0, t, schedule, noise):
    # TODO: your code here. (This placeholder returns x0 unchanged, so the check below fails until you fill it in.)
    return x0


dc.exercises.check(my_q_sample, "q_sample");

# %% [markdown]
# **7b. A perfect denoiser in four lines.** Write $\mathbb{E}[x_0\mid x_t]$ over the rows of `data` (shape `(N, C, H, W)`) the
# naive way: squared distances from each $x_t$ to every $\sqrt{\bar\alpha_t}\,x^{(i)}$ (`torch.cdist` helps), a softmax of
# $-d^2/(2(1-\bar\alpha_t))$ over the $N$ images, and the weighted average. `t` has shape `(B,)` and may differ per query.
# Then think: why does the package's version work in chunks with a running log-sum-exp instead?

# %%
def my_perfect_denoiser(x_t, t, data, schedule):
    # TODO: your code here (this placeholder returns the data mean, right only when nothing is known about x_0)
    return data.mean(0, keepdim=True).expand_as(x_t)


dc.exercises.check(my_perfect_denoiser, "perfect_denoiser");

# %% [markdown]
# **7c. Predict before you run: where do signal and noise carry equal power?** Without running anything, work out the first
# $t$ at which the cosine schedule with $T = 1000$ reaches $\bar\alpha_t \le \tfrac12$ (SNR ≤ 1). Use only the definition of
# section 3: $\bar\alpha_t = f(t)/f(0)$ with $f(t) = \cos^2\!\left(\frac{t/T + s}{1+s}\cdot\frac{\pi}{2}\right)$ and a small $s$
# (so $f(0) \approx 1$) — for which angle is $\cos^2 = \tfrac12$? Write your number in the cell; the check accepts it within a
# few steps.

# %%
my_answer = None  # your prediction: a timestep t between 0 and 999


dc.exercises.check(my_answer, "snr_half");

# %% [markdown]
# ## Summary
#
# * The forward process adds Gaussian noise on a schedule we choose; its $t$-step marginal has the closed form
#   $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\varepsilon$ — checked above against the step-by-step chain.
# * A schedule is best read through its log-SNR. Cosine keeps useful signal longer than linear; neither reaches exactly zero
#   SNR at $T$, which the zero-terminal-SNR rescale fixes.
# * The perfect denoiser $\mathbb{E}[x_0 \mid x_t]$ over a finite training set is a softmax-weighted average of training images;
#   its top weight grows as $t$ falls (passing one half in the middle of the schedule), until at small $t$ it returns a
#   single training image — it memorises. The
#   trained network beside it instead denoises the image it is given, beating the memoriser on unseen images at small $t$.
#   Approximating $\mathbb{E}[x_0\mid x_t]$ imperfectly, smoothly (chapter 2) is what makes generation possible.
#
# **More exercises.**
# 1. Using `forward.q_step`, show that running the chain with the *linear* schedule also matches `q_sample` at $t = 700$.
# 2. Find the $t$ at which the *linear* schedule's SNR crosses 1 (equal signal and noise) and compare it with your answer
#    to 7c: which schedule reaches pure-looking noise sooner, and by how many steps?
# 3. Build `dc.widgets.ForwardExplorer({"train 0": x_train[0]}, x_train, {"cosine": cosine})`, set its `t_slider.value` and
#    read `.state()["top_index"]` and `["top_weight"]`: up to which $t$ does the perfect denoiser return that training image?
#
# **References.**
# * J. Ho, A. Jain, P. Abbeel. *Denoising Diffusion Probabilistic Models.* NeurIPS 2020 (Eqs. 2, 4; the linear schedule).
# * A. Nichol, P. Dhariwal. *Improved Denoising Diffusion Probabilistic Models.* ICML 2021 (the cosine schedule, Eq. 17).
# * D. Kingma, T. Salimans, B. Poole, J. Ho. *Variational Diffusion Models.* NeurIPS 2021 (SNR view).
# * S. Lin, B. Liu, J. Li, X. Yang. *Common Diffusion Noise Schedules and Sample Steps Are Flawed.* WACV 2024.
# * Z. Kadkhodaie, F. Guth, E. Simoncelli, S. Mallat. *Generalization in diffusion models arises from geometry-adaptive harmonic representations.* ICLR 2024.
