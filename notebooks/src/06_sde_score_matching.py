# %% [markdown]
# # Chapter 6 — Scores and SDEs: score matching, the reverse SDE, the probability-flow ODE, exact likelihoods
#
# **Learning goals.** By the end of this chapter you can
# 1. say what a score $\nabla_x\log p(x)$ is, sample with it by Langevin dynamics, and explain why Langevin needs
#    *annealed* noise to move between modes;
# 2. train a score by **denoising score matching** and see that ε-prediction *is* a scaled score, $s = -\varepsilon/\sigma$;
# 3. write DDPM as the discretised **VP SDE**, and DDIM as an **Euler step of the probability-flow ODE** — checked
#    numerically, not only stated;
# 4. sample one score three ways (reverse SDE, predictor–corrector, PF-ODE), separating sampler error from model
#    error with an exact Gaussian-mixture score, and do it on Fashion-MNIST with the chapter-2 model;
# 5. compute **exact log-likelihoods** along the ODE, bits/dim of the shipped model next to its variational bound
#    (the "bounds, not exact" claim, measured), and meet the out-of-distribution surprise of Nalisnick et al.
#
# Time: about 15 minutes on one CPU thread (the Fashion-MNIST likelihoods are most of it); much less on a GPU.
# Every number below is computed when the notebook runs.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import diffusion_course as dc
from diffusion_course import gmm, metrics, pretrained, sampling, schedules, sde, training
from diffusion_course.config import budget
from diffusion_course.nn import MLPDenoiser

print(dc.config.describe())
device = dc.config.get_device()
t_start_notebook = time.perf_counter()


def seed(k):
    return torch.Generator().manual_seed(k)

# %% [markdown]
# ## 1. Scores, and Langevin dynamics
#
# The **score** of a density is the gradient of its log, $s(x) = \nabla_x \log p(x)$: a vector field pointing uphill
# in probability, and free of the normalising constant ($\nabla\log(\tilde p/Z) = \nabla\log\tilde p$). Our running
# example is the course's exact Gaussian mixture (`dc.gmm`): eight components on a ring with unequal weights, whose
# score is known in closed form.

# %%
mix = gmm.GaussianMixture.ring(k=8, radius=2.0, std=0.2, weights=torch.tensor([3, 1, 2, 1, 3, 1, 2, 1.0]) / 14)
print(mix, "| weights:", [round(w, 3) for w in mix.weights.tolist()])
lin = torch.linspace(-3, 3, 25, dtype=torch.float64)
gx, gy = torch.meshgrid(lin, lin, indexing="xy")
grid = torch.stack([gx.flatten(), gy.flatten()], 1)
fine = torch.linspace(-3, 3, 200, dtype=torch.float64)
fx, fy = torch.meshgrid(fine, fine, indexing="xy")
logp_grid = mix.log_prob(torch.stack([fx.flatten(), fy.flatten()], 1)).reshape(200, 200)

fig, ax = plt.subplots(figsize=(5, 5))
ax.contourf(fx, fy, logp_grid.clamp(min=-12), levels=30, cmap="Greys")
sc = mix.score(grid)
norm = sc.norm(dim=1, keepdim=True).clamp(min=1e-9)
ax.quiver(grid[:, 0], grid[:, 1], (sc / norm)[:, 0], (sc / norm)[:, 1], norm.log().squeeze(), cmap="viridis",
          scale=40, width=0.004)
ax.set(aspect="equal", title="∇ log p(x): arrows point uphill (colour: log |score|)")
plt.show()

# %% [markdown]
# **Langevin dynamics** samples $p$ using only its score: $x \leftarrow x + \epsilon\, s(x) + \sqrt{2\epsilon}\, z$.
# As $\epsilon\to 0$ and the number of steps grows, $x$ is distributed as $p$. But between modes the score is tiny
# and points the way to the *nearest* mode, so a walker almost never crosses the low-density gap: each point ends in
# the mode whose basin it started in, and the **mixture weights come out wrong**. Below, 4,000 walkers start from a
# broad Gaussian.

# %%
dc.viz.show_source(sde.langevin)

# %%
n_lv = budget(quick=1000, cpu=4000, gpu=4000)
start = 3 * torch.randn(n_lv, 2, generator=seed(0), dtype=torch.float64)
plain = sde.langevin(mix.score, start, step_size=0.005, steps=budget(quick=200, cpu=1000, gpu=1000), generator=seed(1))
ve_lv = sde.VESDE(sigma_min=0.01, sigma_max=5.0)
annealed = sde.annealed_langevin(mix.sde_score(ve_lv), ve_lv.prior_sample((n_lv, 2), seed(2), dtype=torch.float64),
                                 ve_lv, levels=10, steps_per_level=budget(quick=30, cpu=100, gpu=100), eps=2e-5,
                                 generator=seed(3))
se_w = (mix.weights * (1 - mix.weights) / n_lv).sqrt()


def weight_error(x):
    """max_k |ŵ_k − w_k| in units of the sampling standard error, with ŵ the mean responsibilities."""
    return ((mix.responsibilities(x).mean(0) - mix.weights).abs() / se_w).max().item()


fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
truth_lv, _ = mix.sample(n_lv, generator=seed(4))
for ax, (name, pts) in zip(axes, [("the mixture", truth_lv), ("plain Langevin", plain),
                                  ("annealed Langevin (NCSN)", annealed)]):
    dc.viz.plot_points(pts, ax=ax, s=1.5, title=f"{name}: max |Δw| = {weight_error(pts):.1f} SE")
plt.show()
print("component weights (true):     ", [f"{w:.3f}" for w in mix.weights.tolist()])
print("plain Langevin:               ", [f"{w:.3f}" for w in mix.responsibilities(plain).mean(0).tolist()])
print("annealed Langevin:            ", [f"{w:.3f}" for w in mix.responsibilities(annealed).mean(0).tolist()])
verdict = "fails" if weight_error(plain) > 4 else "does not fail here"
print(f"plain Langevin {verdict} to reproduce the weights (|Δw| {weight_error(plain):.1f} SE); annealed: "
      f"{weight_error(annealed):.1f} SE ({'within' if weight_error(annealed) < 4 else 'outside'} sampling error)")

# %% [markdown]
# **Annealing** (Song & Ermon 2019) runs Langevin on a sequence of *noised* densities, from very noisy (one broad
# blob, where moving between modes is easy and the weights are set) down to almost clean. Each noised density needs
# its own score — which is what a diffusion model learns.
#
# ## 2. Denoising score matching: ε-prediction is a scaled score
#
# We never know $\nabla\log p_t$ for real data. Vincent (2011) showed that regressing onto the score of the *noising
# kernel* gives the same minimiser: with $x_t = \alpha x_0 + \sigma\varepsilon$, $\nabla_{x_t}\log q(x_t\mid x_0) =
# -\varepsilon/\sigma$, so
#
# $$\arg\min_\theta\; \mathbb E\,\big\|s_\theta(x_t,t) + \varepsilon/\sigma\big\|^2 \;=\; \nabla\log p_t ,$$
#
# and DDPM's loss $\|\hat\varepsilon_\theta - \varepsilon\|^2$ is the same objective with $s_\theta = -\hat\varepsilon_\theta/\sigma$
# (weighted by $\sigma^2$). Below the chapter-2 MLP is trained on samples of the mixture — with the exact score
# next to it we can see how good the learned one is at every noise level.

# %%
schedule = schedules.NoiseSchedule.cosine(1000)
points = mix.sample(20_000, generator=seed(5))[0].float()
toy_steps = budget(quick=300, cpu=2000, gpu=4000)
cfg = training.TrainConfig(steps=toy_steps, batch_size=512, lr=2e-3, warmup=100, ema_decay=0.995,
                           channels_last=False, seed=0)
t0 = time.perf_counter()
toy = training.train(MLPDenoiser(dim=2, hidden=128, depth=3), schedule, points, config=cfg, device="cpu")
print(f"{toy_steps} steps in {time.perf_counter() - t0:.1f} s")
toy_eps = toy.ema.double().eval()

# %% [markdown]
# `sde.score_from_eps` turns this discrete-time ε-model (t = 0…999) into a continuous-time score. Continuous
# $t\in(0,1]$ maps to the index $i = tT-1$, and $\sigma(t)^2 = 1-\bar\alpha(t)$ with $\bar\alpha$ interpolated
# log-linearly between the schedule's values, so at $t=(i+1)/T$ the score is exactly $-\hat\varepsilon(x,i)/\sqrt{1-\bar\alpha_i}$.
# The SDE it belongs to is `sde.DiscreteVPSDE(schedule)` (section 3).

# %%
dc.viz.show_source(sde.ScoreFromEps.__call__)
learned = sde.score_from_eps(toy_eps, schedule)
S = learned.sde                                      # the VP SDE through the cosine schedule's ᾱ
exact = mix.sde_score(S)


def relative_score_error(t_value, n=2000):
    """E‖s_θ − s‖² / E‖s‖² on samples from p_t."""
    x0 = mix.sample(n, generator=seed(6))[0]
    tt = torch.full((n,), t_value, dtype=torch.float64)
    xt, _ = S.sample_marginal(x0, tt, seed(7))
    with torch.no_grad():
        d = learned(xt, tt) - exact(xt, tt)
    return (d.pow(2).sum(1).mean() / exact(xt, tt).pow(2).sum(1).mean()).item()


ts_show = [0.02, 0.1, 0.3, 0.6]
fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
for ax, tv in zip(axes, ts_show):
    tt = torch.full((grid.shape[0],), tv, dtype=torch.float64)
    with torch.no_grad():
        s_l, s_e = learned(grid, tt), exact(grid, tt)
    sl = s_l / s_e.norm(dim=1, keepdim=True).clamp(min=1e-9)
    se = s_e / s_e.norm(dim=1, keepdim=True).clamp(min=1e-9)
    ax.quiver(grid[:, 0], grid[:, 1], se[:, 0], se[:, 1], color="k", alpha=0.5, scale=35, width=0.004)
    ax.quiver(grid[:, 0], grid[:, 1], sl[:, 0], sl[:, 1], color="C3", scale=35, width=0.004)
    ax.set(aspect="equal", xlim=(-3, 3), ylim=(-3, 3),
           title=f"t = {tv}: σ = {S.alpha_sigma(torch.tensor([tv]))[1].item():.2f}, rel. err {relative_score_error(tv):.3f}")
fig.suptitle("exact score (black) vs learned (red), both scaled by 1/|exact|", y=1.02)
plt.show()

# %% [markdown]
# The learned field is right where data is (and at high noise, where the score is nearly linear); far from every
# mode, where no training point ever landed, it is worst — the relative errors above are measured on samples of
# $p_t$, where it matters. Move the **t slider** to watch the field sharpen as $t\to 0$ (this needs a live kernel;
# the figure above is the static version).

# %%
import ipywidgets as widgets  # noqa: E402

out = widgets.Output()
slider = widgets.FloatSlider(value=0.3, min=0.005, max=1.0, step=0.005, description="t", continuous_update=False,
                             readout_format=".3f")


def draw(change=None):
    tv = slider.value
    tt = torch.full((grid.shape[0],), tv, dtype=torch.float64)
    with torch.no_grad():
        s_l, s_e = learned(grid, tt), exact(grid, tt)
    n_e = s_e.norm(dim=1, keepdim=True).clamp(min=1e-9)
    with out:
        out.clear_output(wait=True)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.quiver(grid[:, 0], grid[:, 1], (s_e / n_e)[:, 0], (s_e / n_e)[:, 1], color="k", alpha=0.5, scale=35)
        ax.quiver(grid[:, 0], grid[:, 1], (s_l / n_e)[:, 0], (s_l / n_e)[:, 1], color="C3", scale=35)
        ax.set(aspect="equal", title=f"t = {tv:.3f}, σ(t) = {S.alpha_sigma(torch.tensor([tv]))[1].item():.3f}, "
                                     f"rel. error {relative_score_error(tv, 500):.3f}")
        plt.show()


slider.observe(draw, names="value")
draw()
widgets.VBox([slider, out])

# %% [markdown]
# ## 3. The SDE view
#
# Song et al. (2021) let the number of noise levels go to infinity. The forward process becomes an SDE on
# $t\in[0,1]$, $\;dx = f(x,t)\,dt + g(t)\,dw$, with two classic choices:
#
# * **VP** (DDPM's limit): $dx = -\tfrac12\beta(t)x\,dt + \sqrt{\beta(t)}\,dw$, kernel $\mathcal N(\alpha(t)x_0, (1-\alpha(t)^2)I)$, $\alpha(t) = e^{-\frac12\int_0^t\beta}$;
# * **VE** (NCSN's limit): $dx = \sqrt{d\sigma^2/dt}\,dw$, kernel $\mathcal N(x_0, (\sigma(t)^2-\sigma_{\min}^2) I)$.
#
# Time reversal (Anderson 1982) gives the **reverse SDE** $dx = [f - g^2\nabla\log p_t]\,dt + g\,d\bar w$, and the
# **probability-flow ODE** $dx/dt = f - \tfrac12 g^2 \nabla\log p_t$ has the same marginals $p_t$ with no noise at
# all. The package's SDEs give `drift`, `diffusion`, `marginal(x0, t) -> (mean, std)`, `prior_sample`, `prior_logp`.
# First check: simulate the forward SDEs with small Euler–Maruyama steps and compare with the closed-form marginals.

# %%
n_paths = budget(quick=2000, cpu=5000, gpu=5000)
x0_paths = mix.sample(n_paths, generator=seed(8))[0]
rows = []
for name, s_ in {"VP(0.1, 20)": sde.VPSDE(), "VE(0.01, 5)": sde.VESDE(0.01, 5.0), "DiscreteVP(cosine)": S}.items():
    x, g_ = x0_paths.clone(), seed(9)
    steps = 1000
    check_at = {300: 0.3, 900: 0.9}
    for k in range(steps):
        tk = torch.full((n_paths,), max(k / steps, 1e-9), dtype=torch.float64)
        x = x + s_.drift(x, tk) / steps + s_.diffusion(tk)[:, None] * torch.randn(x.shape, generator=g_,
                                                                                 dtype=torch.float64) / math.sqrt(steps)
        if k + 1 in check_at:
            tv = check_at[k + 1]
            mean, std = s_.marginal(x0_paths, torch.full((n_paths,), tv, dtype=torch.float64))
            # the simulated x_t − α x0 should be N(0, σ² I): compare its std, and the sample mean of x_t
            rows.append((name, tv, (x - mean).std().item(), std[0].item(), x.mean().item(), mean.mean().item()))
print(f"{'SDE':<20}{'t':>5}{'sim. std of x_t − αx₀':>24}{'closed-form σ(t)':>18}{'sim. mean':>11}{'closed form':>12}")
for r in rows:
    print(f"{r[0]:<20}{r[1]:>5}{r[2]:>24.4f}{r[3]:>18.4f}{r[4]:>11.4f}{r[5]:>12.4f}")

# %% [markdown]
# **DDPM's chain is the discretised VP SDE.** `DiscreteVPSDE` is the VP process whose $\bar\alpha(t)$ passes through
# the cosine schedule's $\bar\alpha_i$ at $t=(i+1)/T$; between grid points $\beta(t) = -T\log(1-\beta_i)\approx T\beta_i$.
# So DDPM's $x_i = \sqrt{1-\beta_i}\,x_{i-1} + \sqrt{\beta_i}\,z$ is the Euler–Maruyama step of this SDE with $dt = 1/T$
# (to first order in $\beta_i$):

# %%
i = torch.tensor([0, 100, 500, 900, 990, 999])
beta_t = S.beta((i + 1).double() / 1000)
for ii, b in zip(i.tolist(), beta_t.tolist()):
    print(f"i = {ii:>3}: β_i = {schedule.betas[ii].item():.3e}, β(t)/T = {b / 1000:.3e}, "
          f"EM's drift factor 1 − β(t)dt/2 = {1 - b / 2000:.6f} vs DDPM's √(1−β_i) = {math.sqrt(1 - schedule.betas[ii]):.6f}")

# %% [markdown]
# They agree while $\beta_i$ is small and part ways at the very end, where the cosine schedule's $\beta_i$ reaches
# 0.999: there one DDPM step is not a small step of anything. (Samplers and solvers handle it: the SDE's $\beta(t)$ is
# just large on the last segment.)
#
# **DDIM is an Euler step of the probability-flow ODE.** Write the VP ODE in the scaled variable
# $\bar x = x/\sqrt{\bar\alpha}$ and the noise level $\bar\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$. With
# $\nabla\log p = -\varepsilon/\sqrt{1-\bar\alpha}$ the ODE becomes simply
#
# $$\frac{d\bar x}{d\bar\sigma} = \varepsilon(x, t),$$
#
# and one Euler step from $\bar\sigma$ to $\bar\sigma'$, $\;\bar x' = \bar x + (\bar\sigma' - \bar\sigma)\,\hat\varepsilon$,
# multiplied back by $\sqrt{\bar\alpha'}$, is term for term DDIM's $x' = \sqrt{\bar\alpha'}\hat x_0 + \sqrt{1-\bar\alpha'}\hat\varepsilon$.
# Numerically:

# %%
x_t, eps_ = torch.randn(4, 1, 28, 28, generator=seed(10)), torch.randn(4, 1, 28, 28, generator=seed(11))
for t_, tp in [(999, 949), (500, 480), (100, 20), (20, -1)]:
    ab, abp = schedule.alpha_bar_at(torch.tensor(t_)).item(), schedule.alpha_bar_at(torch.tensor(tp)).item()
    sig, sigp = math.sqrt((1 - ab) / ab), math.sqrt((1 - abp) / abp)
    euler = math.sqrt(abp) * (x_t / math.sqrt(ab) + (sigp - sig) * eps_)
    ddim = sampling.ddim_step(x_t, eps_, t_, tp, schedule)
    print(f"t = {t_:>3} → {tp:>3}: max |DDIM − Euler step in (x̄, σ̄)| = {(ddim - euler).abs().max().item():.1e}")

# %% [markdown]
# So DDIM is a first-order ODE solver, and its speed comes from the *variable* it steps in: in $(\bar x,\bar\sigma)$
# the ODE is nearly linear, while Euler in $t$ on the same ODE follows the curvature badly. On the mixture oracle, at
# equal numbers of network calls, against the exact ODE solution from the same $x_T$ (a tight adaptive solve):

# %%
oracle = mix.oracle_model(schedule)
score_oracle = sde.score_from_eps(oracle, schedule, time="nearest")   # integer-t oracle: nearest index
n_ode = budget(quick=300, cpu=2000, gpu=2000)
x_T2 = torch.randn(n_ode, 2, generator=seed(12), dtype=torch.float64)
ref, ref_nfe = sde.probability_flow(exact, x_T2, S, method="rk45", rtol=1e-7, atol=1e-7)
print(f"reference: dopri5, rtol 1e-7, {ref_nfe} score evaluations")
print(f"{'NFE':>5}{'DDIM (Euler in σ̄)':>22}{'Euler in t':>14}{'Heun in t':>13}   (mean ‖x − x_ref‖)")
for nfe in (10, 20, 50, 100):
    ddim_x = sampling.ddim_sample(oracle, x_T2, schedule, steps=nfe, progress=False)
    eul, _ = sde.probability_flow(exact, x_T2, S, method="euler", steps=nfe)
    heun, _ = sde.probability_flow(exact, x_T2, S, method="heun", steps=nfe // 2)
    errs = [(v - ref).norm(dim=1).mean().item() for v in (ddim_x, eul, heun)]
    print(f"{nfe:>5}{errs[0]:>22.4f}{errs[1]:>14.4f}{errs[2]:>13.4f}")

# %% [markdown]
# (DDIM starts at the schedule's t = 999 and ends at ᾱ = 1; the ODE solvers run from t = 1 to t = 1/T — the
# small remaining difference is that last sliver of noise, σ = √(1 − ᾱ₀) = √β₀ at t = 1/T, with β₀ the β_i printed
# above for i = 0.) **DPM-Solver++** (chapter 3) goes one step further in the same picture: it integrates the linear
# part of the ODE exactly in the log-SNR $\lambda$ and uses a second-order multistep formula for the $\hat x_0$ term —
# an exponential integrator of this very ODE.
#
# ## 4. One score, three samplers — first with no model error
#
# * **Reverse SDE, Euler–Maruyama**: $x \leftarrow x + [f - g^2 s]\,\Delta t + g\sqrt{|\Delta t|}\,z$ (one call per step);
# * **Predictor–corrector** (Song et al. 2021, Algorithm 1): the same predictor, then Langevin corrector steps at the
#   new time with a step set by a signal-to-noise ratio;
# * **PF-ODE**: deterministic, with an adaptive Dormand–Prince solver (`method="rk45"`, via torchdiffeq) or fixed-step Euler/Heun.

# %%
dc.viz.show_source(sde.em_step)
dc.viz.show_source(sde.predictor_corrector)

# %%
n2 = budget(quick=1000, cpu=2000, gpu=4000)
x_T2 = torch.randn(n2, 2, generator=seed(13), dtype=torch.float64)
truth2 = mix.sample(n2, generator=seed(14))[0]
truth2b = mix.sample(n2, generator=seed(15))[0]
se_w = (mix.weights * (1 - mix.weights) / n2).sqrt()
em_steps, pc_steps = budget(quick=50, cpu=100, gpu=200), budget(quick=25, cpu=50, gpu=100)


def run_three(score_fn, label):
    out = {}
    x, traj = sde.euler_maruyama(score_fn, x_T2, S, em_steps, generator=seed(16), return_trajectory=True)
    out["reverse SDE (EM)"] = (x, traj, em_steps)
    x, traj = sde.predictor_corrector(score_fn, x_T2, S, pc_steps, generator=seed(17), return_trajectory=True)
    out["predictor–corrector"] = (x, traj, 2 * pc_steps - 1)
    x, nfe = sde.probability_flow(score_fn, x_T2, S, method="rk45", rtol=1e-5, atol=1e-5)
    # the ODE's path, for drawing: solve segment by segment for a few points
    knots = torch.linspace(1.0, S.t_min, 30).tolist()
    path, xs = [x_T2[:12]], x_T2[:12]
    for a, b in zip(knots[:-1], knots[1:]):
        xs, _ = sde.solve_ode(sde.pf_ode_velocity(score_fn, S), xs, a, b, method="rk45")
        path.append(xs)
    out["PF-ODE (rk45)"] = (x, torch.stack(path), nfe)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    dc.viz.plot_points(truth2, ax=axes[0], title="the mixture", color="gray", s=1)
    print(f"{label}: {'sampler':<22}{'NFE':>6}{'MMD²':>10}{'max |Δw| (SE)':>16}{'spread x / y':>16}")
    print(f"{'':<{len(label) + 2}}{'two true samples':<22}{'':>6}{metrics.mmd_rbf(truth2b, truth2):>10.5f}")
    for ax, (name, (x, traj, nfe)) in zip(axes[1:], out.items()):
        x = x.double()
        spread = x.std(0) / truth2.std(0)
        print(f"{'':<{len(label) + 2}}{name:<22}{nfe:>6}{metrics.mmd_rbf(x, truth2):>10.5f}"
              f"{((mix.responsibilities(x).mean(0) - mix.weights).abs() / se_w).max().item():>16.2f}"
              f"{spread[0].item():>10.3f} / {spread[1].item():.3f}")
        dc.viz.plot_points(x, ax=ax, s=1, title=f"{name}, NFE {nfe}")
        for j in range(12):
            ax.plot(traj[:, j, 0], traj[:, j, 1], lw=0.7, color="C3", alpha=0.8)
            ax.plot(traj[-1, j, 0], traj[-1, j, 1], "k.", ms=4)
    fig.suptitle(label, y=1.02)
    plt.show()
    return out


exact_runs = run_three(exact, "exact score")

# %% [markdown]
# With the exact score all three reproduce the mixture: MMD² at the level of two independent true samples, weights
# within a few standard errors, spread within a few percent. The SDE paths jitter (fresh noise every step), the ODE
# paths are smooth curves — and the ODE needs the fewest calls. Now the **learned** score from section 2: whatever
# changes is model error.

# %%
learned_runs = run_three(learned, "learned score (MLP, DSM)")

# %% [markdown]
# ## 5. Fashion-MNIST: the chapter-2 model as a score
#
# The shipped `fmnist-ddpm` was trained as a discrete ε-model; through `score_from_eps` it is a continuous score
# for the same SDE, and every sampler above runs on it unchanged (unconditionally here, `cond=None`). At a stated
# budget of network calls, from the same noise, with FID in the course classifier's features next to the
# real-vs-real floor at the same n.
#
# One thing changes from 2-D: **where the steps go.** The cosine schedule's last β_i is capped at 0.999, so β(t) of its
# SDE is huge on the last 1/T of time (β(t)/T ≈ 6.9 at i = 999), and equal steps in t are far too long there —
# Euler–Maruyama's drift factor 1 − β(t)Δt/2 goes negative (section 3 printed both). Fixed-step samplers therefore
# step **equally in log-SNR**
# λ = log(α²/σ²) (`spacing="logsnr"`, DPM-Solver's grid): short steps where the SNR changes fast. The first row keeps
# equal steps in t to show the failure. DDIM runs as in chapter 3, with x̂₀ clipped to [−1, 1] (unclipped, its first
# step from t = 999 multiplies ε̂'s error by 1/√ᾱ ≈ 2·10⁴ — chapter 2's lesson).

# %%
model = pretrained.load("fmnist-ddpm", device=device)
fm_schedule = model.schedule
clf = pretrained.load("fmnist-classifier", device=device)
fm_score = sde.score_from_eps(model, fm_schedule)
FS = fm_score.sde
n_fid = budget(quick=16, cpu=96, gpu=1000)
nfe_fid = budget(quick=4, cpu=50, gpu=100)
print("first 6 of the log-SNR grid's times:", [round(t, 4) for t in sde.time_grid(FS, nfe_fid, spacing="logsnr")[:6]])
x_T = torch.randn(n_fid, 1, 28, 28, generator=seed(20)).to(device)
samplers = {   # each takes a batch of x_T and its batch index (fresh SDE noise per batch)
    f"reverse SDE, EM-{nfe_fid}, equal t-steps": lambda z, b: sde.euler_maruyama(fm_score, z, FS, nfe_fid,
                                                                                  generator=seed(100 + b)),
    f"reverse SDE, EM-{nfe_fid}": lambda z, b: sde.euler_maruyama(fm_score, z, FS, nfe_fid, generator=seed(100 + b),
                                                                  spacing="logsnr"),
    f"PC-{nfe_fid // 2} (+{nfe_fid // 2 - 1} corrector)": lambda z, b: sde.predictor_corrector(
        fm_score, z, FS, nfe_fid // 2, generator=seed(200 + b), spacing="logsnr"),
    f"PF-ODE, Heun-{nfe_fid // 2}": lambda z, b: sde.probability_flow(fm_score, z, FS, method="heun",
                                                                   steps=nfe_fid // 2, spacing="logsnr")[0],
    f"DDIM-{nfe_fid} (Euler in σ̄)": lambda z, b: sampling.ddim_sample(model, z, fm_schedule, steps=nfe_fid,
                                                                     clip_denoised=True, progress=False),
}
ref_imgs = metrics.reference_images(n_fid)
floor = metrics.fid_floor(clf, n_fid)
fm_samples, fid_rows = {}, []
for name, fn in tqdm(samplers.items(), desc="samplers"):
    t0 = time.perf_counter()
    with torch.no_grad():
        xs = torch.cat([fn(x_T[i:i + 64], i) for i in range(0, n_fid, 64)]).clamp(-1, 1).cpu()
    fm_samples[name] = xs
    fid_rows.append((name, metrics.fid(clf, xs, ref_imgs), time.perf_counter() - t0))
print(f"n = {n_fid}, {nfe_fid} network calls per image; floor (two real sets of {n_fid}) = {floor:.1f}")
for name, f, secs in fid_rows:
    print(f"  {name:<40} FID {f:6.1f}   ({secs:.0f} s)")
fig, axes = plt.subplots(1, len(fm_samples), figsize=(3.4 * len(fm_samples), 3.8))
for ax, (name, xs) in zip(axes, fm_samples.items()):
    dc.viz.show_images(xs[:16], nrow=4, ax=ax, title=name.replace(", equal", ",\nequal"))
plt.show()

# %% [markdown]
# At this small budget the deterministic solvers are ahead of the stochastic ones: the reverse SDE needs many small
# steps before its injected noise averages out (chapter 3 saw the same with DDPM vs DDIM). And the adaptive solver
# decides its own budget — how many calls does it need at rtol = 10⁻³?

# %%
n_rk = budget(quick=2, cpu=16, gpu=64)
t0 = time.perf_counter()
rk_tol = budget(quick=5e-2, cpu=1e-3, gpu=1e-3)
rk_x, rk_nfe = sde.probability_flow(fm_score, x_T[:n_rk], FS, method="rk45", rtol=rk_tol, atol=rk_tol)
print(f"PF-ODE dopri5 (rtol = atol = {rk_tol:g}): {rk_nfe} network calls for {n_rk} images ({time.perf_counter() - t0:.0f} s); "
      f"max |x − Heun-{nfe_fid // 2}| = {(rk_x.clamp(-1, 1).cpu() - fm_samples[list(samplers)[3]][:n_rk]).abs().max():.3f}")
dc.viz.show_images(rk_x.clamp(-1, 1).cpu()[:16], nrow=8, title=f"PF-ODE, adaptive (NFE {rk_nfe})")
plt.show()

# %% [markdown]
# ## 6. Exact likelihood
#
# The PF-ODE is a deterministic, invertible map from data to noise, so it is a normalising flow and its density
# follows the **instantaneous change of variables** (Chen et al. 2018; FFJORD, Grathwohl et al. 2019):
#
# $$\log p_0(x(0)) = \log p_1(x(1)) + \int_0^1 \nabla\cdot\tilde f(x(t),t)\,dt,\qquad \tilde f = f - \tfrac12 g^2 s .$$
#
# We integrate $x$ and the divergence together, along the **ODE** path (along SDE samples there is no such identity).
# In 2-D the divergence is exact by autograd; for images it is a Hutchinson estimate $v^\top (\partial\tilde f/\partial x)\,v$
# with a random probe $v$ — unbiased, one vector–Jacobian product per call.

# %%
dc.viz.show_source(sde.flow_log_likelihood)

# %%
n_ll = budget(quick=64, cpu=500, gpu=1000)
x_ll = mix.sample(n_ll, generator=seed(30))[0]
true_ll = mix.log_prob(x_ll)
ll_exact, info = sde.log_likelihood(exact, x_ll, S, exact_trace=True, return_info=True)
with torch.no_grad():
    ll_learned = sde.log_likelihood(learned, x_ll, S, exact_trace=True)
ll_hutch = sde.log_likelihood(exact, x_ll, S, probes=1, generator=seed(31))
fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
for ax, (name, v) in zip(axes, [("exact score", ll_exact), ("learned score", ll_learned)]):
    ax.scatter(true_ll, v, s=4)
    lo, hi = true_ll.min().item(), true_ll.max().item()
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xlabel="true log p(x)", ylabel="PF-ODE log-likelihood", title=f"{name}: mean |err| "
           f"{(v - true_ll).abs().mean():.3f} nats")
plt.show()
err = (ll_exact - true_ll).abs().mean().item()
print(f"exact score: mean |error| {err:.4f} nats (target < 0.05: {'met' if err < 0.05 else 'NOT met'}), "
      f"{info['nfe']} evaluations")
print(f"learned score: mean error {(ll_learned - true_ll).mean():+.3f}, mean |error| {(ll_learned - true_ll).abs().mean():.3f}"
      " nats — model error, now measured in nats")
print(f"exact score, 1-probe Hutchinson: mean error {(ll_hutch - true_ll).mean():+.3f} (unbiased), mean |error| "
      f"{(ll_hutch - true_ll).abs().mean():.3f} (its noise)")

# %% [markdown]
# **Bits per dimension of real images.** Pixels are 8-bit integers $k\in\{0,\dots,255\}$, so a continuous density
# must be evaluated on *dequantised* data: $\tilde x = (k + u - \tfrac12)/127.5 - 1$, $u\sim U(0,1)$, which spreads
# each value over its own cell (without this a density can grow without bound on the 256 values and bits/dim goes
# negative). Then $-\log_2 P(k) \le -\log_2 p(\tilde x) + D\log_2 127.5$ (Theis et al. 2016): the $\log_2 127.5$
# is the change of units from $[-1,1]$ to $[0,255]$.
#
# Next to it, **DDPM's variational bound** of the *same network* on the *same images* (Ho et al. 2020, Eq. 5):
# a prior KL, $T-1$ Gaussian KLs (estimated by stratified sampling of the timesteps, unbiased), and a discretised
# decoder. Both numbers are upper bounds on the model's true negative log-likelihood; the ODE one is exact for the
# flow it defines. A baseline for scale: independent per-pixel histograms fitted to the training set.

# %%
x_test, y_test = dc.data.load_fashion_mnist("test")
x_train, _ = dc.data.load_fashion_mnist("train")
n_bpd = budget(quick=4, cpu=256, gpu=1000)
bpd_rtol = budget(quick=0.1, cpu=1e-2, gpu=1e-3)
elbo_terms = budget(quick=4, cpu=20, gpu=100)
idx = torch.randperm(x_test.shape[0], generator=seed(40))[:n_bpd]
x_bpd = x_test[idx]


def ode_bpd(images, seed_base):
    """PF-ODE bits/dim in batches of 64 (1 Hutchinson probe; rtol = atol = bpd_rtol; t_max = 0.99)."""
    out, nfes = [], []
    for i in range(0, images.shape[0], 64):
        b, inf = sde.bits_per_dim(fm_score, images[i:i + 64].to(device), FS, rtol=bpd_rtol, atol=bpd_rtol, t_max=0.99,
                                  generator=seed(seed_base + i), return_info=True)
        out.append(b.cpu())
        nfes.append(inf["nfe"])
    return torch.cat(out), sum(nfes) / len(nfes)


t0 = time.perf_counter()
bpd_ode, bpd_nfe = ode_bpd(x_bpd, 1000)
t_ode = time.perf_counter() - t0
t0 = time.perf_counter()
bpd_elbo, terms = sde.ddpm_elbo_bpd(model, x_bpd.to(device), fm_schedule, timesteps=elbo_terms, generator=seed(41),
                                    return_terms=True)
bpd_elbo = bpd_elbo.cpu()
t_elbo = time.perf_counter() - t0
bpd_pixel = sde.independent_pixel_bpd(x_train, x_bpd)


def mean_se(v):
    return v.mean().item(), (v.std() / math.sqrt(v.numel())).item()


diff = bpd_ode - bpd_elbo
D = 784
print(f"{n_bpd} Fashion-MNIST test images (bits/dim, mean ± standard error):")
print(f"  PF-ODE (exact for the flow; Hutchinson, mean NFE {bpd_nfe:.0f}, {t_ode:.0f} s)  {mean_se(bpd_ode)[0]:.3f} ± {mean_se(bpd_ode)[1]:.3f}")
print(f"  DDPM ELBO ({elbo_terms} stratified terms per image, {t_elbo:.0f} s)       {mean_se(bpd_elbo)[0]:.3f} ± {mean_se(bpd_elbo)[1]:.3f}"
      f"   [prior {terms['prior'].mean() / D / math.log(2):.4f}, diffusion KLs {terms['diffusion'].mean() / D / math.log(2):.3f},"
      f" decoder {terms['decoder'].mean() / D / math.log(2):.3f}]")
print(f"  independent per-pixel histograms                       {mean_se(bpd_pixel)[0]:.3f} ± {mean_se(bpd_pixel)[1]:.3f}")
print(f"  paired ODE − ELBO: {mean_se(diff)[0]:+.3f} ± {mean_se(diff)[1]:.3f}")
if mean_se(diff)[0] + 2 * mean_se(diff)[1] < 0:
    print("→ the exact likelihood is tighter than the variational bound by more than its error: the bound is a bound.")
elif mean_se(diff)[0] - 2 * mean_se(diff)[1] > 0:
    print("→ the ODE value is ABOVE the ELBO beyond its error: look at the solver tolerance (t_max, rtol) and the ELBO's"
          " number of terms — with few stratified terms its estimate is unbiased but heavy-tailed (quick mode uses 4).")
else:
    print("→ the two agree within their errors at this n.")

# %% [markdown]
# Read the parts: the ELBO pays most in the diffusion KLs and a large share in the decoder — the network's $\hat x_0$
# at the least noisy step must land in the right 1/255-wide bin. The ODE value needs no decoder: it is the density
# of the flow itself, on dequantised pixels. Two settings were chosen for CPU time: a loose solver tolerance and
# $t_{\max}=0.99$ (ᾱ < 3·10⁻⁴ beyond it); `benchmarks/sde_likelihood.py` measures what they change against a tight solve
# (a few hundredths of a bit per dimension, much less than the gap to the ELBO).
#
# ## 7. Density is not typicality: likelihoods out of distribution
#
# A high likelihood is easy to misread as "looks like the training data". Nalisnick et al. (2019) found that flows
# trained on one image set often give *higher* likelihood to a simpler, different one. Here: images the model never
# saw — the course's shapes rendered to 28×28 grey, constant images, uniform noise, and inverted garments.

# %%
n_ood = budget(quick=2, cpu=12, gpu=128)
shp, _ = dc.shapes.make_dataset(n_ood, seed=3)
shapes_grey = F.interpolate(shp.mean(1, keepdim=True), size=(28, 28), mode="area")
levels = torch.rand(n_ood, generator=seed(50)) * 2 - 1
ood_sets = {
    "Fashion-MNIST test": x_bpd[:n_ood],
    "shapes (grey)": shapes_grey,
    "constant images": levels[:, None, None, None].expand(n_ood, 1, 28, 28).clone(),
    "uniform noise": torch.rand(n_ood, 1, 28, 28, generator=seed(51)) * 2 - 1,
    "inverted garments": -x_test[idx[-n_ood:]],
}
quant = {k: ((v.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1 for k, v in ood_sets.items()}   # 8-bit like the data
ood_bpd = {}
t0 = time.perf_counter()
for j, (name, imgs) in enumerate(quant.items()):
    ood_bpd[name] = bpd_ode[:n_ood] if name == "Fashion-MNIST test" else ode_bpd(imgs, 5000 + 100 * j)[0]
print(f"PF-ODE bits/dim, {n_ood} images per set ({time.perf_counter() - t0:.0f} s; lower = more likely):")
median_fm = bpd_ode.median().item()
for name, v in ood_bpd.items():
    m, s_ = mean_se(v) if v.numel() > 1 else (v.mean().item(), float("nan"))
    below = (v < median_fm).float().mean().item()
    print(f"  {name:<20} {m:7.3f} ± {s_:.3f}   per-pixel baseline {sde.independent_pixel_bpd(x_train, quant[name]).mean():6.3f}"
          f"   share more likely than the median test garment: {below:.0%}")
fig, axes = plt.subplots(1, len(quant), figsize=(3 * len(quant), 3.2))
for ax, (name, imgs) in zip(axes, quant.items()):
    dc.viz.show_images(imgs[:4], nrow=2, ax=ax, title=f"{name}\n{ood_bpd[name].mean():.2f} bits/dim")
plt.show()
simpler = [k for k in ood_bpd if k != "Fashion-MNIST test" and ood_bpd[k].mean() < bpd_ode.mean()]
print("OOD sets the model finds MORE likely than its own test data:", simpler or "none")

# %% [markdown]
# The measured surprise: whatever in the list above is "more likely" than real garments is *simpler*, not more
# garment-like — constant images are the extreme case (one value repeated: almost nothing to encode), while noise
# and inverted garments are correctly far less likely. Likelihood measures how compressible an image is under the
# model, dominated by low-level statistics (smoothness, large flat areas); it is not a test for "this is a garment".
# Nalisnick et al. and later work (e.g. the typicality tests of Nalisnick et al. 2019b, likelihood ratios of Ren et
# al. 2019) use it with that correction.
#
# ## 8. Exercise: one step of the reverse SDE
#
# Write the Euler–Maruyama step of the reverse-time SDE $dx = [f(x,t) - g(t)^2 s(x,t)]\,dt + g(t)\,d\bar w$, running
# time *backwards* ($dt<0$): given `x`, the score `score`, the drift `drift` $=f(x,t)$, the diffusion `g` (shape
# (B, 1)), the step `dt` (a negative float) and standard normal `noise`, return the new `x`. Think about the sign
# of $dt$ under the square root.

# %%
def my_reverse_sde_step(x, score, drift, g, dt, noise):
    # TODO: your code here (this placeholder returns x, so the check fails until you fill it in)
    return x


dc.exercises.check(my_reverse_sde_step, "reverse_sde_step");

# %% [markdown]
# <details><summary>Solution (click to open after trying)</summary>
#
# ```python
# def my_reverse_sde_step(x, score, drift, g, dt, noise):
#     return x + (drift - g**2 * score) * dt + g * (-dt) ** 0.5 * noise
# ```
# The drift term uses $dt<0$ as it is; the Brownian increment over a step of length $|dt|$ has standard deviation
# $\sqrt{|dt|}$. Compare with `sde.em_step` above.
# </details>
#
# **More exercises.** (1) Run `sde.predictor_corrector` on the learned 2-D score with `snr` = 0.05, 0.16 and 0.5:
# what happens to the spread, and why? (2) Compute the Fashion-MNIST bits/dim with Gaussian instead of Rademacher
# probes (`probe="gaussian"`) on 32 images, twice with different seeds: which estimator has the smaller spread?
# (3) Evaluate `sde.log_likelihood` on 2-D data without `exact_trace` but along Euler–Maruyama samples instead of the
# ODE (write the loop): why does the number not mean anything?

# %%
print(f"whole notebook: {time.perf_counter() - t_start_notebook:.0f} s")

# %% [markdown]
# ## Summary
#
# * A score $\nabla\log p$ is all a sampler needs; Langevin dynamics alone cannot move between modes, noise annealing can
#   (measured: wrong weights without annealing, right weights with it).
# * Denoising score matching learns the score of every noised density; ε-prediction is the same objective,
#   $s = -\hat\varepsilon/\sigma$, and `score_from_eps` turns any chapter-2 ε-model into a continuous-time score of the VP SDE
#   that passes through its schedule.
# * DDPM is the discretised VP SDE; DDIM is exactly an Euler step of the probability-flow ODE in $(\bar x,\bar\sigma)$ —
#   the step the ODE is nearly linear in, which is why it beats Euler in $t$ at equal cost.
# * With the exact score, reverse SDE, predictor–corrector and PF-ODE all reproduce the mixture; the learned score adds
#   measurable model error. On Fashion-MNIST the deterministic solvers win at a small call budget.
# * The PF-ODE gives exact likelihoods (checked to a few thousandths of a nat in 2-D); on Fashion-MNIST the shipped model's
#   bits/dim is compared with its variational bound on the same images — "diffusion gives bounds" is measured, and the
#   ODE removes the gap. High likelihood is not in-distribution: simpler images can score higher.
#
# **References.**
# * Y. Song, S. Ermon. *Generative Modeling by Estimating Gradients of the Data Distribution.* NeurIPS 2019 (NCSN, annealed Langevin, Algorithm 1).
# * Y. Song, J. Sohl-Dickstein, D. Kingma, A. Kumar, S. Ermon, B. Poole. *Score-Based Generative Modeling through Stochastic
#   Differential Equations.* ICLR 2021 (Eqs. 5–6, 13; Algorithms 1–5; App. D likelihoods).
# * P. Vincent. *A Connection Between Score Matching and Denoising Autoencoders.* Neural Computation 2011.
# * A. Hyvärinen. *Estimation of Non-Normalized Statistical Models by Score Matching.* JMLR 2005.
# * W. Grathwohl, R. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud. *FFJORD: Free-Form Continuous Dynamics for Scalable
#   Reversible Generative Models.* ICLR 2019 (Hutchinson trace estimator along the ODE).
# * R. Chen, Y. Rubanova, J. Bettencourt, D. Duvenaud. *Neural Ordinary Differential Equations.* NeurIPS 2018.
# * E. Nalisnick, A. Matsukawa, Y. W. Teh, D. Gorur, B. Lakshminarayanan. *Do Deep Generative Models Know What They Don't Know?* ICLR 2019.
# * J. Ho, A. Jain, P. Abbeel. *Denoising Diffusion Probabilistic Models.* NeurIPS 2020 (Eq. 5, Eq. 13).
# * L. Theis, A. van den Oord, M. Bethge. *A Note on the Evaluation of Generative Models.* ICLR 2016 (dequantisation).
# * B. D. O. Anderson. *Reverse-time diffusion equation models.* Stochastic Processes and their Applications 1982.
