# %% [markdown]
# # Chapter 9 — Flow matching and rectified flow: straight paths, one equation with DDIM, and reflow to one step
#
# **Learning goals.** By the end of this chapter you can
# 1. write the straight path $x_t = (1-t)\,x_0 + t\,\varepsilon$ and its velocity, and explain why a network regressed on
#    the *conditional* velocity $\varepsilon - x_0$ learns the *marginal* one, $\mathbb{E}[\varepsilon - x_0 \mid x_t]$;
# 2. show that a chapter-2 ε-model is a velocity model after a change of variables, so Euler steps on it *are* DDIM;
# 3. measure two training choices — how to draw $t$ (uniform or SD3's logit-normal) and how to pair noise with data
#    (independent or minibatch optimal transport) — against an exact answer on 2-D data;
# 4. run **reflow**: retrain a flow on its own (noise, sample) pairs so its paths straighten, and measure what that buys at
#    one and two steps on Fashion-MNIST, next to chapter 7's consistency student.
#
# Time: under 7 minutes measured on one thread of this project's 2-core machine (the 2-D trainings are most of it; the
# Fashion-MNIST models are loaded, their long trainings are recipes: `python -m diffusion_course.train fmnist-2rf`).

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

import diffusion_course as dc
from diffusion_course import flow, gmm, metrics, pretrained, records, sampling

print(dc.config.describe())
device = dc.config.get_device()
CLASSES = dc.data.FASHION_CLASSES

# %% [markdown]
# ## 1. The straight path, and why its velocity is an average
#
# Chapters 2–6 noised data along a curve, $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$.
# Flow matching (Lipman et al. 2023) and rectified flow (Liu et al. 2023) take the simplest path there is, a straight line:
#
# $$x_t = (1-t)\,x_0 + t\,\varepsilon,\qquad t\in[0,1],\qquad \frac{dx_t}{dt} = \varepsilon - x_0 .$$
#
# Here $t = 0$ is data and $t = 1$ is noise, as in Stable Diffusion 3 and minRF; Lipman et al. and MIT's 6.S184 put data at
# $t = 1$ — the same model with time reversed. Each pair $(x_0, \varepsilon)$ moves at constant speed along its own line.
# To *generate* we need one velocity field $v(x, t)$ that carries all of $\mathcal N(0, I)$ to the data at once. Many lines
# pass through the same point $x$ at the same time $t$, each with its own direction; a field can give the point only one,
# and the right one is their average, the **marginal velocity**
#
# $$v(x, t) = \mathbb{E}\,[\,\varepsilon - x_0 \mid x_t = x\,].$$
#
# Integrating $dx/dt = v(x,t)$ from $t = 1$ down to $0$ turns Gaussian noise into samples of the data (Liu et al. 2023,
# §3: the flow keeps every marginal of the path). On chapter 6's 2-D mixture of eight Gaussians the marginal velocity is known in closed form
# (`flow.exact_velocity`: Gaussian conditioning, component by component). First the averaging itself: pick a point and a
# time, collect the conditional velocities $\varepsilon - x_0$ of the pairs whose path passes near that point at that
# time, and compare their mean with the exact field.

# %%
mix = gmm.GaussianMixture.ring(k=8, radius=2.0, std=0.2, weights=torch.tensor([3, 1, 2, 1, 3, 1, 2, 1.0]) / 14)
data2, modes2 = mix.sample(200_000, generator=torch.Generator().manual_seed(0))
data2 = data2.float()


def exact_v(x, t, cond=None):
    """The mixture's exact marginal velocity, as a float32 velocity model."""
    return flow.exact_velocity(mix, x, t).to(x.dtype)


g = torch.Generator().manual_seed(1)
eps2 = torch.randn(data2.shape, generator=g)
t_probe, point = 0.5, torch.tensor([1.0, 0.3])
x_t = flow.interpolate(data2, eps2, t_probe)
near = (x_t - point).norm(dim=1) < 0.1
cond_v = flow.target_velocity(data2[near], eps2[near])            # ε − x₀ of every pair passing near the point
mean_v, se_v = cond_v.mean(0), cond_v.std(0) / near.sum().sqrt()
print(f"{int(near.sum())} of {len(data2):,} pairs pass within 0.1 of {point.tolist()} at t = {t_probe}")
print(f"their velocities ε − x₀ spread with std {cond_v.std(0).numpy().round(2)} per axis;")
print(f"their mean       {mean_v.numpy().round(3)} ± {se_v.numpy().round(3)} (standard error)")
v_exact = exact_v(point[None], torch.tensor([t_probe]))[0]
print(f"exact v(x, t)    {v_exact.numpy().round(3)}; mean − exact = {((mean_v - v_exact) / se_v).numpy().round(1)} "
      "standard errors")

# %% [markdown]
# The conditional velocities through one point disagree wildly (their spread per axis is printed above), yet their mean
# lands on the exact marginal velocity, a distance of about one standard error away on each axis (the mean averages over
# a disc of radius 0.1 rather than the point itself, which can add a small offset of its own). Now the paths. Left: the straight conditional lines of 40 pairs; right: the
# marginal flow started from the same 40 noises, integrated with many small Euler steps. A crossing in the plane is two paths
# through one point; for the conditional lines it happens at *different* times, but at any one time there are as many
# directions through a point as there are pairs — which is why the field has to average them.

# %%
def crossings(paths: torch.Tensor) -> int:
    """How many pairs of polylines (P, S+1, 2) intersect in the plane (segment–segment tests, any times)."""
    a, b = paths[:, :-1], paths[:, 1:]                                   # segment ends (P, S, 2)

    def orient(p, q, r):
        return torch.sign((q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0]))

    count = 0
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            p1, p2 = a[i][:, None], b[i][:, None]
            q1, q2 = a[j][None], b[j][None]
            hit = (orient(p1, p2, q1) != orient(p1, p2, q2)) & (orient(q1, q2, p1) != orient(q1, q2, p2))
            count += bool(hit.any())
    return count


n_paths = 40
x0_show, eps_show = data2[:n_paths], torch.randn(n_paths, 2, generator=torch.Generator().manual_seed(2))
ts = torch.linspace(1, 0, 101)
straight = torch.stack([flow.interpolate(x0_show, eps_show, float(t)) for t in ts], dim=1)    # (P, 101, 2)
_, traj = flow.sample(exact_v, eps_show, steps=100, return_trajectory=True)
marginal = traj["x"].transpose(0, 1)
n_cross_straight, n_cross_marginal = crossings(straight), crossings(marginal)

fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
for ax, paths, title in ((axes[0], straight, f"conditional lines: {n_cross_straight} crossing pairs"),
                         (axes[1], marginal, f"marginal flow (exact v): {n_cross_marginal} crossing pairs")):
    ax.scatter(data2[:3000, 0], data2[:3000, 1], s=1, color="0.8")
    for p in paths:
        ax.plot(p[:, 0], p[:, 1], lw=0.7, alpha=0.8)
    ax.scatter(paths[:, 0, 0], paths[:, 0, 1], s=8, color="k", label="noise, t = 1")
    ax.scatter(paths[:, -1, 0], paths[:, -1, 1], s=8, color="tab:red", label="end, t = 0")
    ax.set(xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), aspect="equal", title=title)
axes[0].legend(loc="lower left", fontsize=8)
fig.tight_layout()
plt.show()
print(f"pairs of paths that cross, of {n_paths * (n_paths - 1) // 2}: straight lines {n_cross_straight}, "
      f"marginal flow {n_cross_marginal}")

# %% [markdown]
# The marginal flow's paths bend — each noise is carried to the mode its region of noise space belongs to, not to the
# random partner it was drawn with — and they cross each other far less than the lines (the counts are above). Two paths
# of one ODE can never be at the same point *at the same time* (the solution through a point is unique), so their
# crossings in the plane are between a path early and another late. Bent paths are the price of an independent coupling:
# an Euler step follows the tangent, and a curved path needs many of them. Sections 5 and 6 straighten them.
#
# ## 2. Learning the field by regression
#
# Regressing a network on the conditional target, $\min_\theta \mathbb{E}_{t, x_0, \varepsilon}\,\|v_\theta(x_t, t) -
# (\varepsilon - x_0)\|^2$, has the marginal velocity as its minimiser — the mean minimises a squared error, the
# argument of chapter 2 (Lipman et al. 2023, Thm. 2). The package's loss is exactly that (with label dropout for
# classifier-free guidance, and an optional re-pairing that section 5 uses):

# %%
dc.viz.show_source(flow.flow_matching_loss)

# %% [markdown]
# A small MLP (`flow.FlowMLP`: $x$, a sinusoidal embedding of $t$, three hidden layers) trained on the mixture with
# `flow.train` — the course's training loop of the earlier chapters, with EMA weights:

# %%
steps_2d = dc.config.budget(quick=100, cpu=3000, gpu=3000)


def train_2d(seed=0, steps=steps_2d, num_classes=0, batch_size=256, progress=False, **options):
    """A FlowMLP trained on the mixture (with each sample's mode as its class when ``num_classes``)."""
    torch.manual_seed(seed)
    cfg = flow.FlowTrainConfig(steps=steps, batch_size=batch_size, lr=3e-3, warmup=50, ema_decay=0.99, seed=seed,
                               p_uncond=0.0, **options)
    return flow.train(flow.FlowMLP(num_classes=num_classes), data2, modes2 if num_classes else None, config=cfg,
                      device="cpu", progress=progress)


start = time.perf_counter()
run = train_2d(seed=0, progress=True)
v2 = run.ema
print(f"{steps_2d} steps in {time.perf_counter() - start:.1f} s; training loss, mean of the last 100 steps "
      f"{sum(run.history.loss[-100:]) / 100:.3f}")

# %% [markdown]
# The loss does not go to zero, and should not: it includes the spread of $\varepsilon - x_0$ around its mean that
# section 1 printed, which no field can explain. What matters is the distance to the exact field. Exact (black) and
# learned (red) arrows at four times over the noised data $x_t$ (blue); each arrow is where a point moves in the next
# $\Delta t = 0.15$ of sampling (clipped so that none leaves its neighbourhood), and each title gives the relative error
# $\mathbb{E}\|v_\theta - v\| / \mathbb{E}\|v\|$ on samples of $p_t$:

# %%
explorer = dc.widgets.VelocityFieldExplorer(v2, exact_v, data2, t=0.5, arrow_dt=0.15)
fig = explorer.figure((0.9, 0.6, 0.3, 0.05))
plt.show()
err_by_t = {t: explorer.relative_error(t) for t in (0.9, 0.6, 0.3, 0.05)}
print("relative error of the learned field:", {t: round(e, 3) for t, e in err_by_t.items()},
      f"— largest at t = {max(err_by_t, key=err_by_t.get)}")

# %% [markdown]
# (Red is drawn over black: where only red shows, the two fields agree.) Near noise ($t = 0.9$) the field is a gentle, almost linear pull towards the data's mean; near data ($t = 0.05$) it
# points at the nearest mode. Both are easy to fit. The error is largest in between (printed above), where the field
# turns from the first shape into the second and the network has to place the boundaries between modes.
# Drag the **t slider** to see every time in between (this needs a live kernel; the figure above is the static
# version):

# %%
explorer

# %% [markdown]
# Samples: 50 Euler steps of the learned field against 50 of the exact one, from the same noise, scored by the kernel
# MMD to fresh data (chapter 7's metric: 0 for identical distributions), over three independent draws of a few thousand points.
# Even the exact field scores above 0: 50 Euler steps do not follow the curved paths exactly.

# %%
def mmd_draws(v, steps, draws=3, n=2000):
    """MMD to fresh mixture samples for each of ``draws`` noise draws (the same draws for every model: paired)."""
    vals = []
    for d in range(draws):
        x1 = torch.randn(n, 2, generator=torch.Generator().manual_seed(100 + d))
        ref = mix.sample(n, generator=torch.Generator().manual_seed(200 + d))[0].float()
        vals.append(metrics.mmd_rbf(flow.sample(v, x1, steps=steps), ref))
    return torch.tensor(vals)


def mmd_spread(v, steps, draws=3):
    """(mean, std) of :func:`mmd_draws`."""
    t = mmd_draws(v, steps, draws)
    return float(t.mean()), float(t.std()) if draws > 1 else 0.0


def mode_shares(x):
    return torch.bincount(torch.cdist(x.double(), mix.means).argmin(1), minlength=8).double() / len(x)


for name, v in (("learned", v2), ("exact", exact_v)):
    m, s_ = mmd_spread(v, 50)
    print(f"{name:8s} 50 Euler steps: MMD {m:.4f} ± {s_:.4f}")
x1 = torch.randn(20000, 2, generator=torch.Generator().manual_seed(7))
print("mode weights, true:   ", mix.weights.numpy().round(3))
print("learned flow's shares:", mode_shares(flow.sample(v2, x1, steps=50)).numpy().round(3))

# %% [markdown]
# The learned flow's MMD is close to the exact flow's but above it, by more than the draws' spread: a visible, small
# model error. It also reproduces the unequal mode weights (3 : 1 : 2 : 1 …), which a sampler that only found the
# modes would not.
#
# ## 3. One equation with chapters 2, 3 and 6
#
# **The change of variables.** On chapter 2's path $x^{\text{vp}} = \alpha\,x_0 + \sigma\,\varepsilon$ with
# $\alpha = \sqrt{\bar\alpha}$, $\sigma = \sqrt{1-\bar\alpha}$, divide by $\alpha + \sigma$:
#
# $$\frac{x^{\text{vp}}}{\alpha+\sigma} = (1-t)\,x_0 + t\,\varepsilon \qquad\text{with}\qquad t = \frac{\sigma}{\alpha+\sigma}.$$
#
# The VP path *is* the straight path, rescaled and re-timed (Kingma et al. 2021, VDM's invariance to the noise schedule; Lipman et al. 2024, *Flow Matching
# Guide and Code*, on changing schedulers). So an ε-model
# gives a velocity: feed it $x^{\text{vp}} = (\alpha+\sigma)\,x$, read $\hat\varepsilon$, form
# $\hat x_0 = (x^{\text{vp}} - \sigma\hat\varepsilon)/\alpha$, and return $v = \hat\varepsilon - \hat x_0$. An Euler step of
# this $v$ moves $x$ to the next time keeping $\hat\varepsilon$ and $\hat x_0$ fixed — which is exactly what a DDIM step does
# (chapter 3). `flow.velocity_from_eps` wraps chapter 2's shipped `fmnist-ddpm`; Euler on it against `sampling.ddim_sample`
# from the same noise and the same ten timesteps:

# %%
ddpm = pretrained.load("fmnist-ddpm", device=device)
v_ddpm = flow.velocity_from_eps(ddpm, ddpm.schedule)
labels = torch.arange(8, device=device) % 10
x_T = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)
x1_rf, times = v_ddpm.ddim_equivalent(x_T, steps=10)
euler = flow.sample(v_ddpm, x1_rf, times=times, cond=labels)
ddim = sampling.ddim_sample(ddpm, x_T, ddpm.schedule, steps=10, eta=0.0, cond=labels)
print("first times t = σ/(α+σ):", [round(t, 4) for t in times[:4]], "…", times[-1])
rel = float((euler - ddim).norm() / ddim.norm())
print(f"‖Euler on v − DDIM‖ / ‖DDIM‖ over 8 images: {rel:.1e} (float32 resolves {torch.finfo(torch.float32).eps:.1e}); "
      f"largest single-pixel difference {float((euler - ddim).abs().max()):.1e} (pixels span [−1, 1])")
print(f"ᾱ at the first step: {float(ddpm.schedule.alpha_bar[-1]):.1e}, so x̂₀ = (x − σ ε̂)/α divides by α = "
      f"{float(ddpm.schedule.alpha_bar[-1]) ** 0.5:.1e}")

# %% [markdown]
# The same images up to float32 rounding: one sampler, two coordinate systems. The largest single pixel differs more
# than float32's resolution because the first step computes $\hat x_0$ by dividing by $\alpha = \sqrt{\bar\alpha}$ at the noisiest
# step (printed above), which multiplies the last-bit differences of the two orders of arithmetic; the package tests the
# identity in float64 on an exact oracle to 1e-12 (`tests/test_flow.py`). The same holds for the probability-flow ODE of chapter 6: it is this ODE, and its likelihood is the
# instantaneous change of variables, $\log p_0(x) = \log\mathcal N(x_1; 0, I) + \int_0^1 \nabla\!\cdot v(x_t, t)\,dt$.
# `flow.log_likelihood` reuses chapter 6's solver (`sde.flow_log_likelihood`, adaptive dopri5, exact divergence in 2-D)
# rather than a new one. On the mixture, with the exact velocity, it must return the mixture's own log-density:

# %%
x_test2 = mix.sample(200, generator=torch.Generator().manual_seed(3))[0]
ll_exact = flow.log_likelihood(lambda x, t: flow.exact_velocity(mix, x, t), x_test2, exact_trace=True, rtol=1e-7,
                               atol=1e-7)
ll_true = mix.log_prob(x_test2)
ll_learned = flow.log_likelihood(v2, x_test2.float(), exact_trace=True)
print(f"mean log p(x) of 200 test points, nats: closed form {float(ll_true.mean()):.4f}, "
      f"exact flow {float(ll_exact.mean()):.4f} (max |difference| {float((ll_exact - ll_true).abs().max()):.1e})")
gap = ll_learned.double() - ll_true
print(f"learned flow: {float(ll_learned.mean()):.4f}; per point, learned − true = {float(gap.mean()):+.4f} ± "
      f"{float(gap.std() / math.sqrt(len(gap))):.4f} nats")

# %% [markdown]
# The exact velocity reproduces the closed-form density to solver tolerance; the learned flow's likelihood is a
# measurement of the model, and its gap to the truth (printed with its standard error) is its model error in nats.
#
# ## 4. When to train: uniform $t$ or SD3's logit-normal
#
# The loss above draws $t$ uniformly. Esser et al. (2024, SD3) draw $t = \mathrm{sigmoid}(u)$, $u \sim \mathcal N(0, 1)$
# — more samples in the middle of the path, fewer near its ends — and found it the best of the schedules they compared
# at scale. Which part of the path is hard? Four runs of each on the mixture (same budget, seeds 0–3), scored by the
# relative error of the learned field at five times and by MMD at 4 and 50 Euler steps:

# %%
seeds = dc.config.budget(quick=(0,), cpu=(0, 1, 2, 3), gpu=(0, 1, 2, 3))
x0_probe, eps_probe = data2[-4000:], torch.randn(4000, 2, generator=torch.Generator().manual_seed(9))


def field_error(v, t):
    """E‖v_θ − v‖ / E‖v‖ on 4,000 samples of p_t (held-out data points, fixed noise)."""
    x_t, tt = flow.interpolate(x0_probe, eps_probe, t), torch.full((4000,), t)
    with torch.no_grad():
        return float((v(x_t, tt) - exact_v(x_t, tt)).norm(dim=1).mean() / exact_v(x_t, tt).norm(dim=1).mean())
probe_ts = (0.05, 0.25, 0.5, 0.75, 0.95)
choice = {"uniform": [], "logit-normal": []}
for kind, seed in tqdm([(k, s) for k in choice for s in seeds], desc="t sampling × seed"):
    model = train_2d(seed=seed, t_sampling=kind).ema
    choice[kind].append([field_error(model, t) for t in probe_ts] + [mmd_spread(model, k, draws=1)[0] for k in (4, 50)])
choice = {k: torch.tensor(v) for k, v in choice.items()}
header = "".join(f"  err t={t:<4}" for t in probe_ts) + "  MMD-4    MMD-50"
print(f"{'':13s}{header}")
for kind, r in choice.items():
    print(f"{kind:13s}" + "".join(f"  {m:.3f}±{s_:.3f}" for m, s_ in zip(r.mean(0), r.std(0))))
diff = choice["logit-normal"] - choice["uniform"]                 # paired by seed: same data order, same init
print("logit-normal − uniform, paired by seed:",
      "".join(f"  {m:+.3f}±{s_ / math.sqrt(len(seeds)):.3f}" for m, s_ in zip(diff.mean(0), diff.std(0))))

# %% [markdown]
# Read the paired row (mean difference ± its standard error over seeds; negative favours logit-normal). Logit-normal
# spends its samples in the middle: the error there and at the ends moves in opposite directions, and the sample
# quality barely notices on a problem this easy. SD3's finding is about images at scale, where the middle of the path —
# neither almost-noise nor almost-data — is where content is decided; `fmnist-rf` below uses it, and its reflow
# round uses uniform $t$ because one- and two-step samplers evaluate $v$ at $t = 1$ and $t = 0.5$.
#
# ## 5. Couplings: which noise goes with which image
#
# Nothing forces the pairs $(x_0, \varepsilon)$ to be independent. **Minibatch optimal transport** (Tong et al. 2023,
# OT-CFM; Pooladian et al. 2023) re-pairs each training batch so that the total squared distance
# $\sum_i \|x_0^{(i)} - \varepsilon^{(\pi(i))}\|^2$ is smallest — an exact assignment, SciPy's `linear_sum_assignment`:

# %%
dc.viz.show_source(flow.minibatch_ot)

# %% [markdown]
# Close pairs mean short lines that cross less, so the marginal paths bend less. Two measures: Liu et al.'s
# **straightness** $S = \int_0^1 \mathbb{E}\,\|(x_1 - x_0) - v(x_t, t)\|^2 dt$ (0 iff every path is a straight line
# walked at constant speed — then one Euler step is exact; `flow.straightness` reports it per coordinate, ‖·‖²/d), and
# MMD at 1, 2 and 4 Euler steps:

# %%
steps_ot = dc.config.budget(quick=60, cpu=2000, gpu=3000)     # an exact assignment per batch: ~10 ms at 128 on a CPU
coupling = {"independent": [], "ot": []}
x1_s = torch.randn(2000, 2, generator=torch.Generator().manual_seed(11))
for kind, seed in tqdm([(k, s) for k in coupling for s in seeds[:3]], desc="coupling × seed"):
    model = train_2d(seed=seed, coupling=kind, batch_size=128, steps=steps_ot).ema
    coupling[kind].append([float(flow.straightness(model, x1_s).mean())] + [mmd_spread(model, k, draws=1)[0]
                                                                             for k in (1, 2, 4)])
coupling = {k: torch.tensor(v) for k, v in coupling.items()}
print(f"{'':12s} straightness   MMD-1          MMD-2          MMD-4")
for kind, r in coupling.items():
    print(f"{kind:12s}" + "".join(f"  {m:.4f}±{s_:.4f}" for m, s_ in zip(r.mean(0), r.std(0))))
ratio = coupling["independent"].mean(0) / coupling["ot"].mean(0)
print(f"independent / OT: straightness {ratio[0]:.0f}×, MMD at 1 step {ratio[1]:.0f}×, at 4 steps {ratio[3]:.1f}×")

# %% [markdown]
# Both couplings trained with batches of 128 for the same number of steps, three seeds each (± is the spread over
# seeds). OT pairing makes the learned paths straighter by a large factor and the one- and two-step samples far closer
# to the data (the ratios above); in 2-D a batch of 128 covers the mixture densely, so the batch plan is close to the
# true optimal transport, whose paths are straight lines. The cost is an assignment per batch ($O(B^3)$), and the gain
# shrinks in high dimension: a batch of 128 Fashion-MNIST images covers its hundreds of pixel dimensions sparsely, so the batch plan pairs
# each noise with a merely less-far image. The chapter measures OT only on 2-D data.
#
# **The class-conditional caveat.** Pair across classes and the label leaks into the noise: OT pairs each noise with a
# nearest data point, so the noises paired with class $k$ all come from one region of noise space. A conditional model
# trained that way never sees class $k$ from the rest of noise space — but at sampling time it gets ordinary
# $\mathcal N(0, I)$ noise. The fix is to pair within each class (`minibatch_ot(..., labels)` does; the package's loss
# does it whenever labels are given). Each mode of the mixture as a class, trained both ways, and sampled with every
# class from the same noise — which fraction lands in the requested mode?

# %%
def train_conditional(seed, within_classes, steps=steps_ot):
    """A class-conditional flow on OT-paired batches: pairs made within each class, or across classes (the mistake)."""
    torch.manual_seed(seed)
    model = flow.FlowMLP(num_classes=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(data2), (128,), generator=g)
        x0, y = data2[idx], modes2[idx]
        noise = torch.randn(x0.shape, generator=g)
        noise = noise[flow.minibatch_ot(x0, noise, y if within_classes else None)]
        loss = flow.reflow_loss(model, noise, x0, y, generator=g)      # the flow-matching loss on these pairs
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def class_hit_rate(model, n=4000):
    x1 = torch.randn(n, 2, generator=torch.Generator().manual_seed(5))
    y = torch.arange(n) % 8
    x = flow.sample(model, x1, steps=50, cond=y)
    return float((torch.cdist(x.double(), mix.means).argmin(1) == y).float().mean())


hits = {"OT within classes": [], "OT across classes": []}
for seed in tqdm(seeds[:3], desc="conditional flows"):
    hits["OT within classes"].append(class_hit_rate(train_conditional(seed, within_classes=True)))
    hits["OT across classes"].append(class_hit_rate(train_conditional(seed, within_classes=False)))
for name, h in hits.items():
    h = torch.tensor(h)
    print(f"{name:18s}: {float(h.mean()):.1%} ± {float(h.std()):.1%} of samples in the requested mode")

# %% [markdown]
# Pairing across classes costs the conditional model its class fidelity (the two rows above); pairing within classes
# keeps it. The same holds for images: a class-conditional model must see, for every class, noise independent of that
# class.
#
# ## 6. Reflow: straighten the flow you have
#
# Minibatch OT straightens paths during training. **Reflow** (Liu et al. 2023, Alg. 1) straightens a trained flow
# afterwards: draw noises $\varepsilon$, integrate the flow to get its samples $x_0 = \Phi(\varepsilon)$, and train a new
# flow on these fixed pairs with the same loss. Those pairs are joined by the flow's own paths, which never meet at
# one time, so the new straight-line targets tend to cross less than independent ones and the new flow is straighter — yet
# it still carries $\mathcal N(0, I)$ to the same distribution. `flow.reflow_pairs` generates the pairs (resumable,
# seeded); one round on the mixture, from the uniform-$t$ flow of section 2:

# %%
n_pairs = dc.config.budget(quick=500, cpu=20000, gpu=20000)
noise_r, x0_r = flow.reflow_pairs(v2, n_pairs, shape=(2,), steps=32, solver="heun", seed=0, progress=True)
torch.manual_seed(0)
rf2 = flow.FlowMLP()
rf2.load_state_dict(v2.state_dict())
cfg = flow.FlowTrainConfig(steps=steps_2d, batch_size=256, lr=1e-3, warmup=50, ema_decay=0.99, seed=0)
v2_reflow = flow.train(rf2, x0_r, config=cfg, noise=noise_r, device="cpu").ema
print(f"{n_pairs:,} pairs (Heun, 32 steps), then {steps_2d} reflow steps")
print(f"{'':9s} straightness   MMD-1            MMD-2            MMD-4            MMD-50")
reflow_mmd = {}
for name, v in (("1-RF", v2), ("2-RF", v2_reflow)):
    reflow_mmd[name] = {k: mmd_draws(v, k, draws=5) for k in (1, 2, 4, 50)}
    cells = [f"{float(flow.straightness(v, x1_s).mean()):.4f}      "]
    cells += [f"{float(d.mean()):.4f} ± {float(d.std()):.4f}  " for d in reflow_mmd[name].values()]
    print(f"{name:9s}" + "".join(cells))
d50 = reflow_mmd["2-RF"][50] - reflow_mmd["1-RF"][50]          # paired: the same noise and reference per draw
print(f"at 50 steps, 2-RF − 1-RF = {float(d50.mean()):+.4f} ± {float(d50.std() / math.sqrt(len(d50))):.4f} "
      "(paired over 5 draws, ± one standard error)")

# %% [markdown]
# One round makes the paths far straighter and the few-step samples far better (± is the spread over five draws). At 50
# steps reflow has little to gain: its targets are the first flow's own samples (here from a 32-step Heun solve),
# errors included. The paired difference at 50 steps above says whether it lost anything measurable here. The paths from the same noises, before and after:

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
for ax, v, title in ((axes[0], v2, "1-RF (trained on independent pairs)"), (axes[1], v2_reflow, "2-RF (one reflow)")):
    _, tr = flow.sample(v, eps_show, steps=50, return_trajectory=True)
    ax.scatter(data2[:3000, 0], data2[:3000, 1], s=1, color="0.8")
    for p in tr["x"].transpose(0, 1):
        ax.plot(p[:, 0], p[:, 1], lw=0.7)
    ax.scatter(eps_show[:, 0], eps_show[:, 1], s=8, color="k", label="noise, t = 1")
    ax.scatter(tr["x"][-1][:, 0], tr["x"][-1][:, 1], s=8, color="tab:red", label="sample, t = 0")
    ax.set(xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), aspect="equal", title=title)
axes[0].legend(loc="lower left", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Fashion-MNIST: `fmnist-rf`, a rectified flow from chapter 2's model
#
# `fmnist-rf` is chapter 2's U-Net, trained with the flow-matching loss, class labels and 20 % label dropout (so
# classifier-free guidance works), logit-normal $t$. It did not start from scratch: section 3 says an ε-model is a
# velocity model in other coordinates, so `fmnist-ddpm`'s weights are a good start even though a `flow.FlowUNet` feeds
# them $x$ and $t$ directly, without the change of variables. How good, measured by the flow-matching loss on held-out
# test images (the same noise and $t$ for each model):

# %%
rf = pretrained.load("fmnist-rf", device=device)
x_te, y_te = dc.data.load_fashion_mnist("test")
n_held = dc.config.budget(quick=64, cpu=1000, gpu=2000)


@torch.no_grad()
def held_out_loss(model, n=n_held):
    g = torch.Generator().manual_seed(0)
    losses = [flow.flow_matching_loss(model, x_te[i:i + 250].to(device), y_te[i:i + 250].to(device), generator=g,
                                      t_sampling="uniform") for i in tqdm(range(0, n, 250), leave=False)]
    return float(torch.stack(losses).mean())


torch.manual_seed(0)
fresh = dc.recipes.build("fmnist-rf").to(device).eval()           # the same U-Net, freshly initialised
warm = dc.recipes.build("fmnist-rf").to(device).eval()
warm.unet.load_state_dict(ddpm.state_dict())                       # fmnist-ddpm's weights, no flow training yet
for name, model in (("fresh U-Net", fresh), ("fmnist-ddpm's weights, untrained as a flow", warm), ("fmnist-rf", rf)):
    print(f"{name:44s}: held-out flow-matching loss {held_out_loss(model):.4f}")
manifest = pretrained.manifest("fmnist-rf")
print(f"fmnist-rf: {manifest['steps']:,} steps, {manifest['metrics']['train_wall_seconds'] / 60:.0f} CPU minutes")

# %% [markdown]
# The fresh U-Net's output layer starts at zero, so it scores the loss of predicting $v = 0$, $\mathbb{E}\|\varepsilon -
# x_0\|^2$ per pixel. Untrained as a flow, the borrowed weights score about what predicting the noise exactly would
# score (the mean squared pixel value): their output still means ε, not ε − x₀ — yet their features carry over, and
# only the output has to change meaning. Whether that also makes training faster is what a short screen of warm start
# against scratch measured before the recipe was chosen ([docs/results.md](../docs/results.md#chapter-9-flow-matching-and-rectified-flow-fmnist-rf-fmnist-2rf)): it does. Samples from the same noise at 1, 2, 4, 8 and 50 Euler
# steps, one class per column:

# %%
cols = torch.arange(10, device=device)
x1_img = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(1)).to(device)
step_list = (1, 2, 4, 8, 50)


def sample_rows(model):
    return {k: flow.sample(model, x1_img, steps=k, cond=cols).clamp(-1, 1).cpu() for k in step_list}


rf_rows = sample_rows(rf)
fig, axes = plt.subplots(len(step_list), 10, figsize=(10, 5.6))
for r, k in enumerate(step_list):
    for c in range(10):
        axes[r, c].imshow(dc.viz.to_numpy_image(rf_rows[k][c]), cmap="gray", vmin=0, vmax=1)
        axes[r, c].set_axis_off()
        if r == 0:
            axes[r, c].set_title(CLASSES[c], fontsize=7)
    axes[r, 0].text(-4, 14, f"{k}", ha="right", va="center", fontsize=9)
fig.suptitle("fmnist-rf, Euler steps per row: 1, 2, 4, 8, 50", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# At 50 steps the flow draws garments; at one step every sample is a blur — each column its class's average garment.
# Exercise E2 at the end asks you to predict why before reading on. The class-conditional FID each model's manifest
# records (`evaluation.evaluate_flow`: a thousand samples with exactly balanced classes, the course's classifier
# features, no guidance, one noise draw), next to chapter 2's model with DDIM-50 on the same protocol:

# %%
def euler_fids(name):
    """A flow's FID at each Euler step count, from its manifest (n = 1,000, class-balanced, one noise draw)."""
    m = pretrained.manifest(name)["metrics"]
    return {k: m[f"fid_euler{k}"] for k in step_list}, m


rf_fid, rf_metrics = euler_fids("fmnist-rf")
ddim50 = pretrained.manifest("fmnist-ddpm")["metrics"]["fid_cond"]
print(f"{'Euler steps':12s}" + "".join(f"{k:>8d}" for k in step_list))
print(f"{'fmnist-rf':12s}" + "".join(f"{rf_fid[k]:8.2f}" for k in step_list))
print(f"fmnist-ddpm DDIM-50: {ddim50:.2f}; balanced floor (two real sets): {rf_metrics['floor_balanced']:.2f}")
print(f"fmnist-rf at 50 Euler steps / fmnist-ddpm's DDIM-50 = {rf_fid[50] / ddim50:.2f} (the target was ≤ 1.2)")

# %% [markdown]
# ## 8. Reflow on Fashion-MNIST: `fmnist-2rf`
#
# One reflow round, sized to a CPU: `fmnist-rf` generates class-balanced (noise, image) pairs with a Heun solver, and
# `fmnist-2rf` — initialised from `fmnist-rf` — trains on them with uniform $t$. The recipe
# (`python -m diffusion_course.train fmnist-2rf` reruns it), then the two models from the same noise and classes as above:

# %%
reflow = dc.recipes.get("fmnist-2rf").reflow
rf2_manifest = pretrained.manifest("fmnist-2rf")
print(f"pairs: {reflow['n']:,} from {reflow['source']} by {reflow['solver']}-{reflow['steps']} "
      f"({2 * reflow['steps'] - 1} network calls each); then {rf2_manifest['steps']:,} reflow steps; CPU minutes: pairs "
      f"{rf2_manifest['metrics']['pairs_seconds_this_run'] / 60:.0f}, training {rf2_manifest['metrics']['train_wall_seconds'] / 60:.0f}")
rf2_img = pretrained.load("fmnist-2rf", device=device)
rf2_rows = sample_rows(rf2_img)
fig, axes = plt.subplots(2, 10, figsize=(10, 2.5))
for r, (name, rows) in enumerate((("1-RF", rf_rows), ("2-RF", rf2_rows))):
    for c in range(10):
        axes[r, c].imshow(dc.viz.to_numpy_image(rows[1][c]), cmap="gray", vmin=0, vmax=1)
        axes[r, c].set_axis_off()
        if r == 0:
            axes[r, c].set_title(CLASSES[c], fontsize=7)
    axes[r, 0].text(-4, 14, name, ha="right", va="center", fontsize=9)
fig.suptitle("one Euler step (one network call), same noise and class", fontsize=10)
fig.tight_layout()
plt.show()
n_str = dc.config.budget(quick=8, cpu=100, gpu=500)
x1_str = torch.randn(n_str, 1, 28, 28, generator=torch.Generator().manual_seed(2)).to(device)
y_str = torch.arange(n_str, device=device) % 10
for name, model in tqdm((("fmnist-rf", rf), ("fmnist-2rf", rf2_img)), desc="straightness", leave=False):
    s_ = flow.straightness(model, x1_str, steps=16, cond=y_str)
    print(f"{name:10s} straightness over {n_str} paths (16 Euler steps): {float(s_.mean()):.4f} ± "
          f"{float(s_.std() / math.sqrt(n_str)):.4f}")

# %% [markdown]
# The one-step images and the straightness above (± one standard error) show what reflow changed in the paths. On
# CIFAR-10, Liu et al. (2023, Table 1) report FID 2.58 for 1-RF and 3.36 for 2-RF with an adaptive solver, while one
# Euler step went from 378 to 12.21 (and, after a further distillation, from 6.18 to 4.85) — reflow makes few steps work
# and costs a little at many. Whether
# both halves hold here:

# %%
rf2_fid, _ = euler_fids("fmnist-2rf")
print(f"{'Euler steps':12s}" + "".join(f"{k:>8d}" for k in step_list) + "   (manifests: one noise draw, n = 1,000)")
for name, row in (("fmnist-rf", rf_fid), ("fmnist-2rf", rf2_fid)):
    print(f"{name:12s}" + "".join(f"{row[k]:8.2f}" for k in step_list))
bench = records.load("rectified_flow")              # benchmarks/rectified_flow.py: three more draws, same protocol
per, draws = bench["fid"], [str(d) for d in bench["seeds"]]
print(f"\n2-RF − 1-RF, paired over the benchmark's {len(draws)} noise draws (± one standard error):")
for k in ("1", "2", "4"):
    d = torch.tensor([per["fmnist-2rf"][k][s] - per["fmnist-rf"][k][s] for s in draws])
    se = float(d.std() / math.sqrt(len(d)))
    verdict = "reflow helps" if float(d.mean()) + 2 * se < 0 else "reflow hurts" if float(d.mean()) - 2 * se > 0 else "a tie"
    print(f"  {k} step(s): {float(d.mean()):+7.2f} ± {se:.2f} → {verdict} (two standard errors)")
d50 = [rf2_fid[50] - rf_fid[50], per["fmnist-2rf"]["50"][draws[0]] - per["fmnist-rf"]["50"][draws[0]]]
same_sign = (d50[0] > 0) == (d50[1] > 0)
print(f"  50 steps, two draws: {d50[0]:+.2f} and {d50[1]:+.2f} → "
      + (f"both {'positive' if d50[0] > 0 else 'negative'}: consistent with {'a cost' if d50[0] > 0 else 'a gain'} at many "
         "steps, but two draws cannot establish it" if same_sign else "mixed: no verdict from two draws"))

# %% [markdown]
# ## 9. Against chapter 7's consistency student
#
# Chapter 7 reached one and two network calls differently: `fmnist-cd` distils `fmnist-ddpm`'s ODE into a consistency
# model. Both students, same noise, same classes, same metric, three noise draws (the teacher's DDIM-50 on the first two
# of them, from chapter 7's record); the paired difference uses the draws' shared noise. The spread is over noise draws
# of one trained model each, not over retraining. The training compute is each pipeline's CPU time, teacher included:

# %%
vs = bench["vs_consistency"]
n_teacher = len(bench["teacher_ddim50"]["draws"])
print(f"{'':30s}{'FID (mean ± sd over draws)':>28s}   {'calls':>5s}   {'CPU minutes to train':>20s}")
for row in vs["rows"]:
    name = row["name"] + (f" ({n_teacher} draws)" if row["calls"] == 50 else f" ({len(draws)} draws)")
    print(f"{name:30s}{row['mean']:20.2f} ± {row['sd']:.2f}   {row['calls']:5d}   {row['train_minutes']:20.0f}")
for k, d in vs["paired"].items():
    wins = sum(x < 0 for x in d["draws"])
    verdict = ("no difference beyond two standard errors" if abs(d["mean"]) < 2 * d["se"] else
               f"{'2-RF' if d['mean'] < 0 else 'CD'} better beyond two standard errors")
    print(f"2-RF − CD at {k} call(s), paired over {len(d['draws'])} draws: {d['mean']:+.2f} ± {d['se']:.2f} → {verdict}; "
          f"2-RF better on {wins} of {len(d['draws'])} draws")
teacher_row = vs["rows"][0]
one_call = min((r for r in vs["rows"] if r["calls"] == 1), key=lambda r: r["mean"])
print(f"best one-call FID {one_call['mean']:.2f} ({one_call['name']}) = {one_call['mean'] / teacher_row['mean']:.1f}× the "
      f"teacher's DDIM-50 on its draws")

# %% [markdown]
# Two routes to one or two calls, from the same teacher, on the same noise: the paired verdicts above say which student
# is better here at each budget, and the last column what each cost. Distillation needs only the teacher and one
# distillation run; reflow first needs a flow (here a fine-tune of the teacher) and then a pass of pair generation —
# network calls that a consistency run spends on training instead. Neither student is near the teacher's 50-step
# quality at one call (the ratio above); both cut the network calls 25- to 50-fold at a measurable cost in FID. (The
# teacher's DDIM-50 here differs from section 7's value: that was one other noise draw — an FID from one draw of a
# thousand samples moves by several tenths between draws.)
#
# ## 10. Where this stands now
#
# - **Stable Diffusion 3** (Esser et al. 2024) trains a rectified flow with logit-normal $t$ at scale — the objective of
#   this chapter, with a transformer (chapter 8) in latent space (chapter 5). **Flux** is also a rectified-flow
#   transformer; its training details are unpublished.
# - **InstaFlow** (Liu et al. 2024) applied reflow plus distillation to Stable Diffusion for one-step text-to-image;
#   Lee et al. (2024, "Improving the Training of Rectified Flows") showed that one reflow round with better training
#   is usually enough.
# - **Flow matching beyond Gaussians**: Lipman et al.'s *Flow Matching Guide and Code* (2024) and the
#   `flow_matching` library cover general paths and discrete data; TorchCFM implements the couplings of section 5.
#
# ## Summary
#
# - The straight path's conditional velocity $\varepsilon - x_0$ is a regression target whose minimiser is the marginal
#   velocity; integrating it from noise generates data.
# - A VP ε-model is a velocity model after $x \to x/(\alpha+\sigma)$, $t = \sigma/(\alpha+\sigma)$: Euler on it is DDIM, and
#   the probability-flow ODE with its exact likelihood is the same ODE.
# - How $t$ is drawn moves the error along the path; OT couplings (within classes) and reflow straighten the paths,
#   which is what makes one or two steps work.
#
# ## Exercises
#
# **E1 — the time map.** Write `my_time_map(alpha_bar)` returning `(t, scale)`: the straight-path time of a VP step with
# cumulative $\bar\alpha$, and the factor that takes $x^{\text{vp}}$ to the straight-path $x$. The placeholder fails on
# purpose; `dc.exercises.solution("time_map")` shows one.

# %%
def my_time_map(alpha_bar):
    raise NotImplementedError("return (t, scale) for a tensor of ᾱ values")


dc.exercises.check(my_time_map, "time_map");

# %% [markdown]
# **E2 — predict before you compute.** One Euler step of the *exact* marginal flow goes from $x_1$ at $t = 1$ to
# $x_1 - v(x_1, 1)$. Without running anything: where does it send every noise? Write the answer as a function of the
# mixture (`mixture.means`, `mixture.weights`) and `x1`, and check it on mixtures the chapter has not seen. Then explain
# the top row of section 7's figure.

# %%
def my_one_step(x1, mixture):
    raise NotImplementedError("where does one exact Euler step from t = 1 send x1?")


dc.exercises.check(my_one_step, "one_step_exact");
