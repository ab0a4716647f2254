# %% [markdown]
# # Chapter 4 — Classifier-free guidance, measured — and text-to-image through cross-attention
#
# **Learning goals.** By the end of this chapter you can
# 1. derive classifier-free guidance from Bayes' rule and say what the scale $s$ does to the distribution you sample;
# 2. implement it as *one* batched forward call per step, usable by every sampler of chapter 3;
# 3. **measure** its trade-off on a real model — class accuracy, FID against its floor, diversity, saturation — and say
#    where it stops paying;
# 4. build text conditioning the way Stable Diffusion does — tokeniser, Transformer text encoder, cross-attention in the
#    U-Net, caption dropout — on a captioned dataset we generate, and look at which pixels each word attends to;
# 5. map every component onto `StableDiffusionPipeline`.
#
# Time: 6.6 minutes measured (396 s on one thread of a 2-core CPU beside another job; the measured sweep of section 5 and
# the text-model measurements of section 11 are most of it); a GPU is much faster.
# Both models are small checkpoints the project trained itself on a 2-core CPU.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from tqdm.auto import tqdm

import diffusion_course as dc
from diffusion_course import guidance, sampling

print(dc.config.describe())
device = dc.config.get_device()
budget = dc.config.budget

# %% [markdown]
# ## 1. Why it works: an implicit classifier
#
# A class-conditional diffusion model predicts $\hat\varepsilon(x_t, y) \approx -\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log p_t(x_t\mid y)$.
# Bayes' rule splits the conditional score into the unconditional one plus a **classifier** term:
#
# $$\nabla\log p_t(x_t\mid y) = \nabla\log p_t(x_t) + \nabla\log p_t(y\mid x_t).$$
#
# *Classifier guidance* (Dhariwal & Nichol 2021) trains a separate noisy-image classifier and turns up its term.
# *Classifier-free guidance* (Ho & Salimans 2022) notices that the classifier's gradient is already inside a
# conditional model — it is the difference between conditional and unconditional predictions — and scales **that**:
#
# $$\tilde\varepsilon = \varepsilon_u + s\,(\varepsilon_c - \varepsilon_u)
# \quad\Longleftrightarrow\quad
# \nabla\log\tilde p_t(x_t\mid y) = \nabla\log p_t(x_t) + s\,\nabla\log p_t(y\mid x_t).$$
#
# (using $\nabla\log p_t(y\mid x_t) = -(\varepsilon_c - \varepsilon_u)/\sqrt{1-\bar\alpha_t}$). So $s=0$ is unconditional,
# $s=1$ plain conditional, and $s>1$ follows the score of $p_t(x_t\mid y)\,p_t(y\mid x_t)^{s-1}$ at every $t$ — roughly,
# sampling images the implicit classifier is *very* sure about (only roughly: these tilted densities at different $t$
# are not the marginals of one diffusion). **Conventions differ**: Ho & Salimans write $(1+w)\varepsilon_c - w\varepsilon_u$,
# so their $w$ is our $s-1$; diffusers' `guidance_scale` and Stable Diffusion's "CFG 7.5" are our $s$ (for $s>1$;
# diffusers' pipelines simply switch guidance off at `guidance_scale <= 1`).
#
# One network gives both predictions because it was trained with **label dropout**: with probability `p_uncond`
# (printed below) the label was replaced by a *null label*, so the network also learned $p(x)$. That is the chapter-2 model:

# %%
model = dc.pretrained.load("fmnist-ddpm", device=device)
schedule = model.schedule
classifier = dc.pretrained.load("fmnist-classifier", device=device)
CLASSES = dc.data.FASHION_CLASSES
recipe = dc.pretrained.manifest("fmnist-ddpm")["recipe"]
print(f"fmnist-ddpm: {dc.nn.count_parameters(model) / 1e6:.1f} M parameters, label dropout p_uncond = "
      f"{recipe['train']['p_uncond']}, null label = index {model.num_classes}")

# %% [markdown]
# ## 2. Guidance on an exact model first
#
# Before any network, the cleanest picture: three Gaussian classes on a ring, where the conditional and unconditional
# noise predictions are known **exactly** (`dc.gmm.class_conditional_oracle`). Any effect below is guidance's own — no
# model error. We sample class 0 (right) at several scales from the same noise:

# %%
mix = dc.gmm.GaussianMixture.ring(k=3, radius=1.5, std=0.4)
oracle = dc.gmm.class_conditional_oracle(mix, schedule)
n_pts = budget(quick=500, cpu=3000, gpu=3000)
x_T2 = torch.randn(n_pts, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
y0 = torch.zeros(n_pts, dtype=torch.long)
scales_2d = [0.0, 1.0, 2.0, 4.0, 8.0]
fig, axes = plt.subplots(1, len(scales_2d), figsize=(3.1 * len(scales_2d), 3.2))
for ax, s in zip(axes, scales_2d):
    pts = sampling.ddim_sample(guidance.classifier_free(oracle, y0, s), x_T2, schedule, steps=50, progress=False)
    in_class = mix.responsibilities(pts).argmax(1).eq(0).double().mean().item()
    dc.viz.plot_points(pts, ax=ax, s=1.0, lim=3.5,
                       title=f"s = {s:g}\nclass-0 share {in_class:.0%}, spread {pts.std(0).mean():.2f}\n"
                             f"mean at radius {pts.mean(0).norm():.2f} (centre 1.5)")
    ax.plot(*mix.means.T, "kx", ms=8)
plt.tight_layout()
print(f"class-0 component: mean {mix.means[0].tolist()}, std 0.40")

# %% [markdown]
# Read it left to right: $s=0$ ignores the label (all three classes); $s=1$ samples class 0 (its measured spread, in
# the panel's title, is close to the 0.40 the component was built with; DDIM-50's discretisation accounts for the rest); $s>1$ pushes samples **away from the other classes** and squeezes them together. Higher fidelity to the
# label, less diversity, and eventually samples that no class really produces (watch the mean's radius move past the
# component's centre at 1.5 as $s$ grows).
# That is the whole trade-off, in two dimensions.
#
# ## 3. The code: one batched call per step
#
# A sampler calls `m(x, t)`; guidance binds the condition and the scale. The unconditional and conditional passes go
# through the network **together** as a doubled batch — the same trick Stable Diffusion's pipeline uses:

# %%
dc.viz.show_source(guidance.ClassifierFreeGuidance.__call__)

# %%
class CountCalls(torch.nn.Module):
    """Wrap the model to record the batch size of every forward call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.num_classes, self.objective = inner, inner.num_classes, inner.objective

    def forward(self, x, t, cond=None):
        calls.append(x.shape[0])
        return self.inner(x, t, cond)


calls = []
labels8 = torch.arange(8, device=device)
x_T8 = torch.randn((8, 1, 28, 28), generator=torch.Generator().manual_seed(0)).to(device)
sampling.ddim_sample(guidance.classifier_free(CountCalls(model), labels8, 3.0), x_T8, schedule, steps=10,
                     progress=False, clip_denoised=True)
print(f"10 DDIM steps → {len(calls)} network calls, each on a batch of "
      f"{', '.join(map(str, sorted(set(calls))))} (8 unconditional + 8 conditional)")

# %% [markdown]
# ## 4. What the scale does to real samples
#
# Same noise, one column per class, one row per scale:

# %%
scales_grid = [0.0, 1.0, 3.0, 7.5]
labels10 = torch.arange(10, device=device)
x_T10 = torch.randn((10, 1, 28, 28), generator=torch.Generator().manual_seed(3)).to(device)
steps_grid = budget(quick=5, cpu=20, gpu=50)
rows = [sampling.ddim_sample(guidance.classifier_free(model, labels10, s), x_T10, schedule, steps=steps_grid,
                             progress=False, clip_denoised=True).cpu() for s in tqdm(scales_grid, desc="scales")]
fig, axes = plt.subplots(len(scales_grid), 1, figsize=(10, 1.25 * len(scales_grid)))
for ax, s, imgs in zip(axes, scales_grid, rows):
    dc.viz.show_images(imgs, nrow=10, ax=ax)
    ax.set_title(f"s = {s:g}", fontsize=9, loc="left")
print("columns:", ", ".join(CLASSES))

# %% [markdown]
# At $s=0$ the label is ignored (the same noise gives garments of random classes); at $s=1$ each column is its class;
# as $s$ grows, garments get more "typical" and more alike, and large scales push contrast towards the extremes — in
# big models the classic over-saturated look (section 5 measures how much of it this model shows). Try it yourself
# (the grid resamples when you release a slider; *rescale φ* is Lin et al.'s guidance rescale, measured in section 5):

# %%
class_explorer = dc.widgets.GuidanceExplorer(model, schedule, class_names=CLASSES, n=16,
                                             steps=budget(quick=3, cpu=20, gpu=50))
class_explorer

# %% [markdown]
# For readers on GitHub (where widgets do not run), the class explorer at a few settings — one class, the same noise,
# three scales:

# %%
class_explorer.figure([{"class": "Sneaker", "scale": 0.0}, {"class": "Sneaker", "scale": 1.0},
                       {"class": "Sneaker", "scale": 7.5}]);

# %% [markdown]
# ## 5. The trade-off, measured
#
# For each scale we draw the same `n` samples (10 classes, same noise) and measure with the project's classifier:
# **class accuracy** (does the image show the requested class?), **FID** against real test images with the real-vs-real
# **floor** at the same `n`, **within-class diversity** (mean pairwise feature distance inside a class), and the share of
# **saturated** (near-white) pixels next to the real images' share. The labels are exactly balanced, so the reference set
# and the floor are class-balanced too. A last row adds guidance rescale (φ = 0.7) at s = 7.5. On a CPU the sweep runs
# DDIM with few steps (printed below; chapter 3 measured what fewer steps cost this model in FID): every row shares
# that sampler, and the comparison between scales is what this section is about.

# %%
n_sweep = budget(quick=20, cpu=200, gpu=1000)
steps_sweep = budget(quick=4, cpu=10, gpu=50)
sweep_scales = [0.0, 1.0, 1.5, 3.0, 7.5]
t0 = time.perf_counter()
sweep = dc.evaluation.guidance_sweep(model, schedule, sweep_scales, n_sweep, classifier, steps=steps_sweep,
                                     keep_samples=True)
sweep += dc.evaluation.guidance_sweep(model, schedule, [7.5], n_sweep, classifier, steps=steps_sweep, rescale=0.7,
                                      keep_samples=True)
print(f"n = {n_sweep} per row, DDIM-{steps_sweep}; measured in {time.perf_counter() - t0:.0f} s on {device}")
print(dc.evaluation.format_guidance_table(sweep))
print(f"real test images: saturated share {sweep[0]['saturated_real']:.1%}")

# %%
plain = [r for r in sweep if r["rescale"] == 0]
ss = [r["scale"] for r in plain]
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
axes[0].plot(ss, [r["class_accuracy"] for r in plain], "o-")
axes[0].set(xlabel="guidance scale s", ylabel="class accuracy", title="fidelity to the label", ylim=(0, 1.02))
axes[1].plot(ss, [r["fid"] for r in plain], "o-", label="FID")
axes[1].axhline(plain[0]["floor"], color="gray", ls="--", label=f"floor at n={n_sweep}")
axes[1].set(xlabel="guidance scale s", ylabel="FID (project classifier)", title="quality of the set")
axes[2].plot(ss, [r["diversity"] for r in plain], "o-", label="within-class diversity")
ax2 = axes[2].twinx()
ax2.plot(ss, [r["saturated"] for r in plain], "s--", color="C3", label="saturated pixels")
ax2.axhline(plain[0]["saturated_real"], color="C3", ls=":", lw=1)
axes[2].set(xlabel="guidance scale s", ylabel="diversity", title="diversity vs saturation")
ax2.set_ylabel("saturated share", color="C3")
for ax in axes[:2]:
    ax.legend(fontsize=8) if ax is axes[1] else None
for r in sweep[-1:]:
    axes[1].plot([r["scale"]], [r["fid"]], "*", ms=12, color="C2", label="s=7.5 + rescale 0.7")
    axes[1].legend(fontsize=8)
plt.tight_layout()

# %%
best = min(plain, key=lambda r: r["fid"])
acc1 = next(r for r in plain if r["scale"] == 1.0)
sat_start = next((r["scale"] for r in plain if r["saturated"] > 2 * r["saturated_real"]), None)
# Every scale drew from the same noise and labels, so the FID gaps get a paired bootstrap (chapter 3): which other
# scales can this n not tell apart from the best one?
ref_sweep = dc.metrics.reference_images(n_sweep, class_balanced=True)
ties, gaps = [], []
for r in tqdm([r for r in plain if r is not best], desc="paired bootstrap"):
    d = dc.evaluation.paired_fid_difference(classifier, r["samples"], best["samples"], ref_sweep,
                                            n_boot=budget(quick=30, cpu=300, gpu=500))
    gaps.append(f"FID(s = {r['scale']:g}) − FID(s = {best['scale']:g}) = {d['delta']:+.2f}, 95% interval "
                f"[{d['lo']:+.2f}, {d['hi']:+.2f}]")
    if d["lo"] <= 0:
        ties.append(r["scale"])
print("\n".join(gaps))
tie_text = (f"at n = {n_sweep} it cannot be told apart from s = {', '.join(f'{v:g}' for v in ties)} (paired 95% "
            "intervals include 0)" if ties else f"every other scale is measurably worse at n = {n_sweep}")
where = ("plain conditional sampling: at this n no guidance beats s = 1 on FID" if best["scale"] == 1 else
         "no label at all" if best["scale"] == 0 else
         ("a moderate scale, tied with plain conditional sampling at this n" if 1.0 in ties else
          "a moderate scale, better than plain conditional sampling") if best["scale"] <= 3 else "a large scale")
se = lambda p: math.sqrt(p * (1 - p) / n_sweep)          # binomial standard error of an accuracy
verdict = [
    f"* Lowest FID at **s = {best['scale']:g}** — {where} ({best['fid']:.1f} vs floor {best['floor']:.1f}); "
    f"{tie_text}. Plain conditional (s = 1) gives {acc1['fid']:.1f}.",
    f"* Class accuracy goes from {plain[0]['class_accuracy']:.0%} (s = 0) to {acc1['class_accuracy']:.0%} "
    f"± {se(acc1['class_accuracy']):.0%} (s = 1) and {max(r['class_accuracy'] for r in plain):.0%} at best "
    f"(± one binomial standard error at n = {n_sweep}).",
    f"* Within-class diversity "
    + ("falls" if plain[-1]["diversity"] < acc1["diversity"] else "does not fall")
    + f" from {acc1['diversity']:.3f} (s = 1) to {plain[-1]['diversity']:.3f} (s = {plain[-1]['scale']:g}).",
    (f"* Saturation (near-white pixels above twice the real share) starts at **s = {sat_start:g}**."
     if sat_start is not None else "* No scale here saturates more than twice the real share."),
    f"* Rescale φ = 0.7 at s = 7.5: FID {sweep[-1]['fid']:.1f} (vs {plain[-1]['fid']:.1f} without), saturated share "
    f"{sweep[-1]['saturated']:.1%} (vs {plain[-1]['saturated']:.1%}): rescale "
    + ("lowered" if sweep[-1]["saturated"] < plain[-1]["saturated"] else "did not lower") + " saturation here.",
]
display(Markdown("**What this run measured**\n\n" + "\n".join(verdict)))

# %% [markdown]
# One label across the sweep (the first ten samples of each row are class 0 … 9; here each row's first image, from the
# same noise; at s = 0 the label is ignored):

# %%
fig, axes = plt.subplots(1, len(sweep), figsize=(1.5 * len(sweep), 1.9))
for ax, r in zip(axes, sweep):
    ax.imshow(((r["samples"][0, 0] + 1) / 2).clamp(0, 1).cpu(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"s = {r['scale']:g}" + (", φ = 0.7" if r["rescale"] else ""), fontsize=8)
    ax.set_axis_off()
fig.tight_layout()

# %% [markdown]
# The verdict above is computed from this run's numbers (`benchmarks/cfg_tradeoff.py` runs the same function at a
# larger n). The trade-off it shows is why practical systems use moderate scales, or guidance limited to the middle of
# the trajectory (`interval=` in `classifier_free`, Kynkäänniemi et al. 2024). About **guidance rescale**: Lin et al.
# designed it for a *v-prediction* model on a *zero-terminal-SNR* schedule, where strong guidance over-exposes images; it
# pulls the guided prediction's per-sample standard deviation back to the conditional one's. Our model predicts ε on a
# schedule with non-zero terminal SNR, and the row above measures what the same trick does here — read it as a
# measurement in a setting it was not designed for, not as a remedy.
#
# ## 6. Text-to-image: a captioned dataset we generate
#
# Labels are one of ten things; captions are compositional. We generate images of coloured shapes with captions such
# as *"a red circle above a blue square"*: two of 4 colours × 3 shapes in one of 4 relations (432 two-shape captions,
# 416 of them used for training), plus 12 one-shape captions. Two pairings
# (a red circle with a blue triangle, a green square with a yellow circle) never appear together in training — so we
# can later ask for a combination the model never saw.

# %%
shapes_x, shapes_captions = dc.shapes.make_dataset(12, seed=7)
fig, axes = plt.subplots(2, 6, figsize=(14, 5.2))
for ax, img, cap in zip(axes.flat, shapes_x, shapes_captions):
    ax.imshow(dc.viz.to_numpy_image(img), interpolation="nearest")
    ax.set_title(cap.replace(" above", "\nabove").replace(" below", "\nbelow").replace(" left", "\nleft")
                 .replace(" right", "\nright"), fontsize=8)
    ax.set_axis_off()
plt.tight_layout()

# %% [markdown]
# Because we wrote the renderer, we can also *read* an image back: nearest palette hue per pixel, one blob per colour;
# the blob's shape from its largest connected piece (a triangle keeps its mass in the lower half of its bounding box, a
# square fills the box's corners, a circle leaves them empty), its position from its centroid.
# `dc.shapes.caption_match` is our text model's "classifier". Real renders are crisp, a diffusion model's shapes are
# not — its squares come out with soft corners — so a reader checked only on renders could be biased on exactly the
# images it has to score. We check it twice: on real renders (where the tests hold it to at least 99% right), and on
# samples of the text model of section 7 in which a person labelled every object's shape by eye (the record
# `shapes_checker_labelled`; the reader's thresholds were set on a different labelled set, so this one is held out).
# The record also keeps what an earlier reader, which looked only at how much of the box a blob fills, scored on the
# same objects:

# %%
x_check, caps_check = dc.shapes.make_dataset(budget(quick=100, cpu=1000, gpu=1000), seed=99, allow_held_out=True)
print("checker on real renders:", {k: f"{v:.1%}" for k, v in dc.shapes.match_rates(x_check, caps_check).items()})
labelled = dc.records.load("shapes_checker_labelled")
x_labelled = dc.records.images("shapes_checker_labelled")["images"]
reader = dc.shapes.shape_reading_accuracy(x_labelled, labelled["labels"])
old_reader = labelled["measured"]["held_out_fill_rule"]
print(f"shape reader on {len(x_labelled)} generated samples labelled by eye: {reader['correct']}/{reader['n']} objects "
      f"as labelled ({reader['accuracy']:.1%}; circles {reader['accuracy_circle']:.0%}, squares "
      f"{reader['accuracy_square']:.0%}, triangles {reader['accuracy_triangle']:.0%}); {reader['missed']} labelled "
      f"objects not found")
print(f"the earlier fill-only reader on the same objects: {old_reader['correct']}/{old_reader['n']} "
      f"({old_reader['correct'] / old_reader['n']:.1%})")
print("scene read from the first image above:", dc.shapes.read_scene(shapes_x[0]), "←", shapes_captions[0])

# %% [markdown]
# ## 7. Tokeniser, text encoder, cross-attention
#
# **Tokens.** Stable Diffusion's CLIP tokeniser maps a prompt to 77 byte-pair tokens; ours maps it to 10 word tokens:
# a `<start>` token, the words, then padding. The empty prompt is `<start>` + padding — the **null caption** used for
# caption dropout and as CFG's unconditional input. Bad input gets a clear error:

# %%
t2i = dc.pretrained.load("shapes-t2i", device=device)
t2i_schedule = t2i.schedule
tok = t2i.tokenizer
ids = tok.encode("A red circle above a blue square.")
print(ids.tolist(), "→", repr(tok.decode(ids)))
print("null caption:", tok.encode("").tolist())
for bad in ["a purple circle", "a red circel", "a red circle!", "a red circle above a blue square above a green"]:
    try:
        tok(bad)
    except ValueError as e:
        print(f"{bad!r}: {e}")

# %% [markdown]
# **Text encoder.** Token embeddings plus learned positions, two pre-norm Transformer layers with padding masked out:
# one 64-d vector per token, trained jointly with the U-Net (SD's CLIP text encoder is frozen and 123 M parameters).
#
# **Cross-attention.** Inside the U-Net, every image position asks the tokens for information:
# $Q = W_q\,h_{\text{pixel}}$, $K = W_k\,c_{\text{token}}$, $V = W_v\,c_{\text{token}}$,
# $\operatorname{softmax}(QK^\top/\sqrt d)\,V$ over tokens, with padding masked to $-\infty$ — Rombach et al. (2022), Eq. 3:

# %%
dc.viz.show_source(dc.nn.CrossAttention.forward)

# %%
parts = {"text encoder": t2i.text, "cross-attention layers": [m for _, m in t2i.cross_attention_layers()]}
n_text = dc.nn.count_parameters(t2i.text)
n_cross = sum(dc.nn.count_parameters(m) for m in parts["cross-attention layers"])
n_all = dc.nn.count_parameters(t2i)
print(f"shapes-t2i: {n_all / 1e6:.2f} M parameters — text encoder {n_text / 1e6:.2f} M, "
      f"{len(parts['cross-attention layers'])} cross-attention layers {n_cross / 1e6:.2f} M, rest of the U-Net "
      f"{(n_all - n_text - n_cross) / 1e6:.2f} M")
print("cross-attention at:", ", ".join(name for name, _ in t2i.cross_attention_layers()))
man = dc.pretrained.manifest("shapes-t2i")
if man:
    print(f"trained {man['steps']} steps × batch {man['recipe']['train']['batch_size']} in "
          f"{man['metrics']['train_wall_seconds'] / 60:.0f} min on {man['device']}; reproduce: `{man['reproduce']}`")

# %% [markdown]
# ## 8. Prompts in, images out — with guidance
#
# Same noise for every cell; rows are prompts, columns guidance scales. Every sample shown in this chapter carries the
# checker's verdict: ✓ when everything matches, otherwise ✗ and what failed — *colours* (a named colour missing or an
# extra one), *shape* (a colour on the wrong shape; *swap* when the two shapes are exchanged), *axis* (not separated along
# the named direction), *order* (the right direction, the wrong way round).

# %%
def verdict_mark(img, prompt) -> str:
    """✓, or ✗ with the attributes the checker finds wrong."""
    m = dc.shapes.caption_match(img, prompt)
    if m["all"]:
        return "✓"
    bad = []
    if not m["colors"]:
        bad.append("colours")
    parts = dc.shapes.relation_parts(img, prompt) if dc.shapes.parse_caption(prompt).second is not None else None
    if not m["shapes"]:
        bad.append("swap" if parts and parts["swapped"] else "shape")
    if parts is not None and not m.get("relation", True):
        bad.append("axis" if not parts["axis"] else "order")
    return "✗ " + ", ".join(bad)


def show_checked(imgs, prompts, axes):
    """Each image in its own axes, titled with its verdict."""
    for ax, img, p in zip(axes, imgs, prompts):
        ax.imshow(dc.viz.to_numpy_image(img), interpolation="nearest")
        ax.set_title(verdict_mark(img, p), fontsize=7)
        ax.set_axis_off()


# %%
prompts = ["a red circle above a blue square", "a yellow triangle left of a green circle",
           "a blue square right of a red triangle", "a green triangle"]
t2i_scales = [0.0, 1.0, 3.0, 6.0]
steps_t2i = budget(quick=5, cpu=30, gpu=50)
x_Tp = torch.randn((len(prompts), 3, 32, 32), generator=torch.Generator().manual_seed(1)).to(device)
fig, axes = plt.subplots(len(prompts), len(t2i_scales), figsize=(2.0 * len(t2i_scales) + 2, 2.0 * len(prompts)))
ids_p = tok(prompts).to(device)
for j, s in enumerate(t2i_scales):
    imgs = sampling.ddim_sample(guidance.classifier_free(t2i, ids_p, s), x_Tp, t2i_schedule, steps=steps_t2i,
                                progress=False, clip_denoised=True).cpu()
    for i, img in enumerate(imgs):
        ax = axes[i, j]
        ax.imshow(dc.viz.to_numpy_image(img), interpolation="nearest")
        ax.set_title(f"s={s:g} {verdict_mark(img, prompts[i])}", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
        if j == 0:
            ax.set_ylabel(prompts[i].replace(" above", "\nabove").replace(" left", "\nleft")
                          .replace(" right", "\nright"), fontsize=8)
plt.tight_layout()

# %% [markdown]
# ## 9. Where does each word look?
#
# With `record_attention()` every cross-attention layer keeps its weights. While sampling one prompt we keep, at each
# step, the conditional half of every layer's attention, then average over the steps:

# %%
prompt = "a red circle above a blue square"
n_att = 8
ids_att = tok([prompt] * n_att).to(device)
guided = guidance.classifier_free(t2i, ids_att, 3.0)
layers = dict(t2i.cross_attention_layers())
collected = {nm: [] for nm in layers}


def recording(x, t):
    """The guided model, plus a copy of each layer's attention (conditional half) at each step."""
    out = guided(x, t)
    for nm, layer in layers.items():                  # batch = [unconditional; conditional] since s ∉ {0, 1}
        collected[nm].append(layer.last_attention[n_att:].float().cpu())
    return out


recording.objective = t2i.objective
x_Ta = torch.randn((n_att, 3, 32, 32), generator=torch.Generator().manual_seed(5)).to(device)
with torch.no_grad(), t2i.record_attention():
    imgs_att = sampling.ddim_sample(recording, x_Ta, t2i_schedule, steps=steps_t2i, progress=False,
                                    clip_denoised=True).cpu()
att_by_layer = {nm: torch.stack(v).mean(0) for nm, v in collected.items()}     # each (n, H·W, L)
words = tok.tokens(ids_att[0].cpu())
shown = [i for i, w in enumerate(words) if w != "<pad>"]

# %% [markdown]
# Pictures can flatter; numbers do not. For each layer and word we measure which share of the word's attention
# (upsampled to 32×32) falls on the pixels it names — *red*: the red pixels, *blue*: the blue ones, *circle* / *square*:
# the object the checker reads as that shape, whatever its colour — and divide by the share of the image those pixels
# cover: **1.0 means the word looks everywhere alike; above 1 it prefers what it names.** Samples where the named
# thing is missing are left out of that word's score.

# %%
def named_regions(img: torch.Tensor) -> dict[str, torch.Tensor]:
    """The pixels each content word of the prompt names in one sample (empty where it is missing)."""
    masks = dc.shapes.color_masks(img)
    blobs = dc.shapes.read_scene(img)
    region = {"red": masks["red"], "blue": masks["blue"]}
    for shape in ("circle", "square"):
        region[shape] = torch.zeros_like(masks["red"])
        for b in blobs:
            if b.shape == shape:
                region[shape] |= masks[b.color]
    return region


regions = [named_regions(img) for img in imgs_att]


def binding_scores(att: torch.Tensor) -> dict[str, float]:
    """Per content word: (attention share on the pixels it names) ÷ (their area share), pooled over samples."""
    side = int(math.isqrt(att.shape[1]))
    out = {}
    for i in shown:
        w = words[i]
        if w not in regions[0]:
            continue
        on, area = 0.0, 0.0
        for r in range(n_att):
            m_w = regions[r][w]
            if not m_w.any():
                continue
            m = F.interpolate(att[r, :, i].reshape(1, 1, side, side), size=(32, 32), mode="bilinear",
                              align_corners=False)[0, 0].clamp_min(0)
            on += (m[m_w].sum() / m.sum()).item()
            area += m_w.float().mean().item()
        out[w] = on / area if area > 0 else float("nan")
    return out


binding = {nm: binding_scores(att) for nm, att in att_by_layer.items()}
content = list(next(iter(binding.values())))
mean_score = lambda b: float(torch.tensor(list(b.values())).nanmean())
print("attention on what the word names ÷ its area share (1.0 = no preference; nan = never drawn)")
print(f"{'layer':<8}{'size':>6}" + "".join(f"{w:>8}" for w in content) + f"{'mean':>8}")
for nm, b in binding.items():
    side = int(math.isqrt(att_by_layer[nm].shape[1]))
    print(f"{nm:<8}{f'{side}×{side}':>6}" + "".join(f"{b[w]:8.2f}" for w in content) + f"{mean_score(b):8.2f}")
print("samples that drew each named thing:", {w: sum(bool(r[w].any()) for r in regions) for w in content})
print(f"caption fully right in {sum(dc.shapes.caption_match(im, prompt)['all'] for im in imgs_att)} of {n_att} samples")
best_layer = max(binding, key=lambda nm: mean_score(binding[nm]))

# %% [markdown]
# The maps of the layer whose words prefer their own objects most (chosen by the table above, so it is the most
# favourable view, not a typical one):

# %%
att = att_by_layer[best_layer]
side = int(math.isqrt(att.shape[1]))
n_show = 4
fig, axes = plt.subplots(n_show, len(shown) + 1, figsize=(1.7 * (len(shown) + 1), 1.8 * n_show))
for r in range(n_show):
    axes[r, 0].imshow(dc.viz.to_numpy_image(imgs_att[r]), interpolation="nearest")
    axes[r, 0].text(0, -1.5, verdict_mark(imgs_att[r], prompt), fontsize=7)
    for c, i in enumerate(shown, start=1):
        m = att[r, :, i].reshape(1, 1, side, side)
        m = F.interpolate(m, size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
        axes[r, c].imshow(dc.viz.to_numpy_image(imgs_att[r]) * 0.35, interpolation="nearest")
        axes[r, c].imshow(m.numpy(), cmap="magma", alpha=0.65, interpolation="bilinear")
        if r == 0:
            axes[r, c].set_title(words[i], fontsize=9)
for ax in axes.flat:
    ax.set_axis_off()
axes[0, 0].set_title("sample\n", fontsize=9)
plt.suptitle(f"“{prompt}” — attention of layer {best_layer} ({side}×{side}), averaged over steps", fontsize=10)
plt.tight_layout()

# %%
b = binding[best_layer]
means = [mean_score(v) for v in binding.values()]
bound = [w for w, v in b.items() if v > 1.25]
display(Markdown(
    f"**What this run measured.** In the most favourable layer ({best_layer}) the words score "
    + ", ".join(f"*{w}* {v:.2f}" for w, v in b.items()) + "; across all layers the mean score ranges from "
    f"{min(means):.2f} to {max(means):.2f}. "
    + (f"Clearly bound (above 1.25): {', '.join('*' + w + '*' for w in bound)}." if bound else
       "No word is clearly bound to what it names (none above 1.25).")))

# %% [markdown]
# Where words look at what they name, attention-based editing methods (Prompt-to-Prompt, Hertz et al. 2022) can move
# or swap things by editing these maps, and methods such as Attend-and-Excite (Chefer et al. 2023) strengthen weak
# words' attention to fix "attribute binding" failures — a colour on the wrong object — which large text-to-image
# models share. Section 11 measures how often each colour lands on its own shape.
#
# ## 10. A combination the model never saw
#
# "a red circle above a blue triangle" never occurred in training (no image paired those two objects). Each part
# was seen, the whole never. Does the model compose? We score many samples of that one prompt with the checker, next to
# the seen prompt that differs only in the second shape. (One prompt each is an anecdote; section 11 measures many prompts
# of each kind, and the two sections are compared there.)

# %%
n_novel = budget(quick=8, cpu=64, gpu=256)
novel, familiar = "a red circle above a blue triangle", "a red circle above a blue square"
x_Tn = torch.randn((n_novel, 3, 32, 32), generator=torch.Generator().manual_seed(11)).to(device)
results = {}
for p in (novel, familiar):          # one progress bar per prompt (DDIM steps)
    imgs = sampling.ddim_sample(guidance.classifier_free(t2i, tok([p] * n_novel).to(device), 3.0), x_Tn,
                                t2i_schedule, steps=steps_t2i, progress=True, clip_denoised=True).cpu()
    results[p] = (imgs, dc.shapes.match_rates(imgs, [p] * n_novel))
n_cols = min(8, n_novel)
fig = plt.figure(figsize=(1.6 * n_cols, 4.6), layout="constrained")
for sub, (p, (imgs, rates)) in zip(fig.subfigures(2, 1), results.items()):
    show_checked(imgs[:n_cols], [p] * n_cols, sub.subplots(1, n_cols, squeeze=False)[0])
    tag = "NEVER SEEN" if dc.shapes.parse_caption(p).is_held_out() else "seen"
    sub.suptitle(f"“{p}” ({tag}) — all attributes right in {rates['all']:.0%} of {n_novel}", fontsize=9)
for p, (imgs, rates) in results.items():
    c = dc.shapes.composition_counts(imgs, [p] * n_novel)
    print(f"{p:<40}", {k: f"{v:.0%}" for k, v in rates.items()},
          f"| both colours {c['both_colors']}/{n_novel}: axis {c['axis']}, order {c['order']}, swapped {c['swapped']}")

# %% [markdown]
# ## 11. Text model, measured
#
# Caption-attribute match rates (colours present, each colour with its shape, the relation, and all at once) for
# random two-object prompts of pairings seen in training and for prompts of the *held-out* pairings, at several
# guidance scales — the same prompts as the shipped checkpoint's own measurement (`dc.evaluation.evaluate_text_model`). The
# relation is split in two (`dc.shapes.relation_parts`): the **axis** (are the objects apart along the named direction —
# this needs only the relation word) and the **order** (which one comes first — this needs the word order, since
# "a red circle above a blue square" and "a blue square above a red circle" have the same words). And we count **swaps**:
# each colour drawn with the *other* object's shape. Axis, order and swaps are counted among the samples that drew both
# named colours.

# %%
n_text_eval = budget(quick=8, cpu=100, gpu=400)
steps_eval = budget(quick=4, cpu=25, gpu=50)
seen_prompts, held_prompts = dc.evaluation.text_prompts(n_text_eval)
text_scales = (0.0, 1.0, 3.0)
t0 = time.perf_counter()
text_eval = {}
for which, ps in (("seen", seen_prompts), ("held_out", held_prompts)):
    for s in text_scales:
        text_eval[which, s] = dc.evaluation.text_composition(t2i, t2i_schedule, ps, scale=s, steps=steps_eval,
                                                             desc=f"{which}, s = {s:g}")
print(f"n = {n_text_eval} prompts per set, DDIM-{steps_eval}; measured in {time.perf_counter() - t0:.0f} s")
head = (f"{'prompts':<9} {'s':>3} " + " ".join(f"{k:>8}" for k in ("colours", "shapes", "relation", "all"))
        + " | both colours: axis  order  swapped")
print(head + "\n" + "-" * len(head))
for (which, s), r in text_eval.items():
    c = r["counts"]
    vals = " ".join(f"{r['rates'][k]:8.0%}" for k in ("colors", "shapes", "relation", "all"))
    print(f"{which:<9} {s:>3g} {vals} | {c['both_colors']:>5}/{c['n']}: {c['axis']:>5} {c['order']:>6} {c['swapped']:>8}")

# %%
te = lambda which, s, k: text_eval[which, s]["rates"][k]
names = {"colors": "both colours present", "shapes": "each colour on its own shape", "relation": "relation right",
         "all": "everything right"}
lines = [f"* {names[k].capitalize()}: s = 0 → 1 → 3 gives {te('seen', 0, k):.0%} → {te('seen', 1, k):.0%} → "
         f"{te('seen', 3, k):.0%} for seen pairings, {te('held_out', 0, k):.0%} → {te('held_out', 1, k):.0%} → "
         f"{te('held_out', 3, k):.0%} for held-out ones." for k in names]
c3 = text_eval["seen", 3.0]["counts"]
both = max(c3["both_colors"], 1)
lines.append(f"* The relation, split (seen pairings, s = 3, of the {c3['both_colors']} samples with both colours): the **axis** "
             f"is right in {c3['axis']} ({c3['axis'] / both:.0%}), the **order** in {c3['order']} "
             f"({c3['order'] / both:.0%}); shapes are **swapped** between the colours in {c3['swapped']} "
             f"({c3['swapped'] / both:.0%}).")
order_of_axis = c3["order"] / max(c3["axis"], 1)
coin = 2 * math.sqrt(0.25 / max(c3["axis"], 1))          # 95 % half-width of a fair coin's rate over that many samples
lines.append("* Of the samples with the axis right, the order is right in "
             f"{order_of_axis:.0%} (a coin flip would give 50% ± {coin:.0%}): "
             + ("no better than a coin flip — the model reads the relation *word* but not the word *order*, the "
                "behaviour of a bag-of-words text model (Yuksekgonul et al. 2023 find the same in CLIP-like encoders)."
                if order_of_axis < 0.5 + coin else "above a coin flip: the model uses word order."))
gap = te("seen", 3, "shapes") - te("held_out", 3, "shapes")
p_seen, p_held = te("seen", 3, "shapes"), te("held_out", 3, "shapes")
gap_se = math.sqrt((p_seen * (1 - p_seen) + p_held * (1 - p_held)) / n_text_eval)   # two independent prompt sets
distinct_held = len(set(held_prompts))
lines.append("* Colour–shape binding at s = 3 is "
             + (f"{100 * gap:.0f} percentage points worse for held-out pairings than for seen ones (± {200 * gap_se:.0f} "
                f"by sampling chance, 95 %, treating the sets as independent; the held-out set repeats "
                f"{distinct_held} distinct captions, so this says nothing about other held-out pairings)."
                if gap > 2 * gap_se else
                f"not measurably different for held-out and seen pairings ({100 * gap:+.0f} points, ± {200 * gap_se:.0f} "
                "by chance)."))
# A held-out caption with its two shapes exchanged is a pairing the model *was* trained on ("a red circle … a blue
# triangle" → a red triangle and a blue circle): count the swaps, and check that claim for every held-out prompt.
def shapes_exchanged(caption: str) -> dc.shapes.Scene:
    sc = dc.shapes.parse_caption(caption)
    return dc.shapes.Scene(dc.shapes.Item(sc.first.color, sc.second.shape), sc.relation,
                           dc.shapes.Item(sc.second.color, sc.first.shape))


trained_swaps = sum(not shapes_exchanged(p).is_held_out() for p in held_prompts)
h3 = text_eval["held_out", 3.0]["counts"]
sw_held, sw_seen = h3["swapped"] / max(h3["both_colors"], 1), c3["swapped"] / both
sw_se = math.sqrt(sw_held * (1 - sw_held) / max(h3["both_colors"], 1) + sw_seen * (1 - sw_seen) / both)
lines.append(f"* Held-out pairings at s = 3: of the {h3['both_colors']} samples with both colours, **{h3['swapped']}** "
             f"({sw_held:.0%}) exchange the two shapes, against {c3['swapped']} of {c3['both_colors']} ({sw_seen:.0%}) for "
             f"seen pairings. An exchanged held-out scene is always a pairing from training (only two pairings are "
             f"held out; checked: {trained_swaps} of {len(held_prompts)} prompts). "
             + ("So asked for a combination it never saw, the model mostly **falls back to the pairing it was trained "
                "on**." if sw_held > 0.5 and sw_held - sw_seen > 2 * sw_se else
                "Swaps are not clearly more common than for seen pairings here." if sw_held - sw_seen <= 2 * sw_se else
                "Swaps are more common than for seen pairings, though not the majority."))
novel_all, familiar_all = results[novel][1]["all"], results[familiar][1]["all"]
lines.append(f"* Section 10's single prompts ({n_novel} samples each) gave {familiar_all:.0%} (seen) and {novel_all:.0%} "
             f"(never seen) fully right; over {n_text_eval} prompts of each kind the rates are "
             f"{te('seen', 3, 'all'):.0%} and {te('held_out', 3, 'all'):.0%} — where the two disagree, believe the larger "
             "measurement: one prompt's rate also depends on how hard its particular shapes are.")
display(Markdown("**What this run measured**\n\n" + "\n".join(lines)))

# %% [markdown]
# **Can we make it better without retraining?** Two guidance tricks the package already has, measured on the seen
# prompts at s = 3 from the same noise:
#
# * a **negative prompt**: CFG's unconditional input replaced by the *same words in the other order* (the opposite scene),
#   $\tilde\varepsilon = \varepsilon_\text{neg} + s(\varepsilon_c - \varepsilon_\text{neg})$. The difference $\varepsilon_c - \varepsilon_\text{neg}$ carries
#   *only* what the word order says — if the network ignored word order it would vanish, and this would be plain
#   conditional sampling;
# * **interval guidance** (Kynkäänniemi et al. 2024): guide only for $t$ in [200, 800], plain conditional outside.
#
# First, a direct probe of how much word order reaches the network: the change in its prediction when the words are
# reversed, next to the change when the second object is replaced by a different one.

# %%
probe_x = torch.randn((n_text_eval, 3, 32, 32), generator=torch.Generator().manual_seed(31)).to(device)
probe_t = torch.full((n_text_eval,), 600, device=device)
other = [dc.evaluation.reversed_order(seen_prompts[(i + 1) % n_text_eval]) for i in range(n_text_eval)]
with torch.no_grad():
    e_c = t2i(probe_x, probe_t, tok(seen_prompts).to(device))
    e_rev = t2i(probe_x, probe_t, tok([dc.evaluation.reversed_order(p) for p in seen_prompts]).to(device))
    e_other = t2i(probe_x, probe_t, tok(other).to(device))
    e_null = t2i(probe_x, probe_t, tok([""] * n_text_eval).to(device))
size = lambda d: d.flatten(1).norm(dim=1).mean().item()
order_share = size(e_c - e_rev) / size(e_c - e_null)     # how much of the prompt's effect the word order carries
print(f"at t = 600, mean ‖ε̂(prompt) − ε̂(·)‖: reversed word order {size(e_c - e_rev):.3f}, another prompt "
      f"{size(e_c - e_other):.3f}, the empty prompt {size(e_c - e_null):.3f} — reversing the words moves the "
      f"prediction by {order_share:.1%} of what dropping the prompt does")

# %%
negatives = [dc.evaluation.reversed_order(p) for p in seen_prompts]
tricks = {"s = 3 (empty prompt as ε_u)": text_eval["seen", 3.0],
          "s = 3, negative = reversed order": dc.evaluation.text_composition(
              t2i, t2i_schedule, seen_prompts, scale=3.0, steps=steps_eval, negative=negatives, desc="negative prompt"),
          "s = 3, guided only for t in [200, 800]": dc.evaluation.text_composition(
              t2i, t2i_schedule, seen_prompts, scale=3.0, steps=steps_eval, interval=(200, 800), desc="interval")}
print(f"{'':<40} {'colours':>8} {'shapes':>7} {'relation':>9} {'all':>5} | order / both colours, swapped")
for name, r in tricks.items():
    c, rt = r["counts"], r["rates"]
    print(f"{name:<40} {rt['colors']:8.0%} {rt['shapes']:7.0%} {rt['relation']:9.0%} {rt['all']:5.0%} | "
          f"{c['order']:>3}/{c['both_colors']:<3} {c['swapped']:>8}")

# %%
base, neg, itv = tricks.values()
s1 = text_eval["seen", 1.0]
hits = lambda r, key: [m[key] for m in r["matches"]]
# every row used the same prompts and the same starting noise: compare them sample by sample (McNemar's test on the
# samples one setting gets right and the other wrong, and a paired bootstrap interval)
paired = {(name, key): dc.evaluation.paired_proportion_difference(hits(base, key), hits(r, key))
          for name, r in (("negative prompt", neg), ("interval guidance", itv)) for key in ("relation", "all")}
for (name, key), t in paired.items():
    print(f"{name:<18} {key:<9} {t['rate_a']:4.0%} → {t['rate_b']:4.0%}  ({t['delta']:+.0%}, paired 95% interval "
          f"[{t['lo']:+.0%}, {t['hi']:+.0%}]; right only at plain s = 3: {t['only_a']:>2}, only with the trick: "
          f"{t['only_b']:>2}; McNemar p = {t['p_value']:.2g})")
rms = lambda a, b: (a - b).pow(2).mean().sqrt().item()
same_verdicts = sum(a == b for a, b in zip(neg["matches"], s1["matches"]))
print(f"negative prompt vs plain conditional (s = 1), same noise: RMS pixel difference {rms(neg['samples'], s1['samples']):.3f} "
      f"(s = 3 vs s = 1: {rms(base['samples'], s1['samples']):.3f}); the checker's verdict on every attribute is the same "
      f"for {same_verdicts} of {n_text_eval} samples")


def effect(t) -> str:
    return ("better" if t["delta"] > 0 else "worse") if t["p_value"] < 0.05 else "no measurable change"


collapsed = rms(neg["samples"], s1["samples"]) < 0.25 * rms(base["samples"], s1["samples"])
order_barely = order_share < 0.1
lines = [f"* Negative prompt (reversed order) against plain s = 3, paired: relation "
         f"{paired['negative prompt', 'relation']['delta']:+.0%} ({effect(paired['negative prompt', 'relation'])}), "
         f"everything right {paired['negative prompt', 'all']['delta']:+.0%} ({effect(paired['negative prompt', 'all'])}). "
         f"Interval guidance: relation {paired['interval guidance', 'relation']['delta']:+.0%} "
         f"({effect(paired['interval guidance', 'relation'])}), everything right "
         f"{paired['interval guidance', 'all']['delta']:+.0%} ({effect(paired['interval guidance', 'all'])}). "
         "(A change counts as measured when McNemar's p < 0.05.)",
         "* " + ("The negative-prompt row **reproduces s = 1**: its samples sit much closer to the plain conditional ones "
                 "than s = 3's do (RMS above). The probe says why: reversing the words moves the prediction by "
                 f"{order_share:.1%} of what dropping the prompt does, so ε_neg ≈ ε_c and ε_neg + s(ε_c − ε_neg) = "
                 "ε_c + (s − 1)(ε_c − ε_neg) ≈ ε_c: at s = 3 the push left over is about "
                 f"{2 * order_share:.1%} of the prompt's own effect (it grows with s; measured at one t and one noise "
                 "draw). What it costs against s = 3 is the cost of dropping back to s = 1, not a property of "
                 "negative prompts."
                 if collapsed and order_barely else
                 "The negative-prompt row does not simply reproduce s = 1 (RMS and probe above): reversing the words "
                 "changes the prediction enough for guidance to act on it."),
         "* " + ("A trick improves the relation measurably here: "
                 + ", ".join(n for n in ("negative prompt", "interval guidance") if effect(paired[n, "relation"]) == "better")
                 + " — the word order does reach the network, plain CFG just does not push on it."
                 if any(effect(paired[n, "relation"]) == "better" for n in ("negative prompt", "interval guidance")) else
                 "Neither trick improves the relation measurably. "
                 + ("The word order barely reaches the network's prediction (the probe above), so guidance built from "
                    "these predictions has little to push on. The encoder has positions, so the order is in its output; "
                    "making the U-Net use it is a training question (untested here: e.g. cross-attention at a higher "
                    "resolution, longer training) beyond this chapter's CPU budget." if order_barely else
                    "The word order does move the network's prediction (the probe above), but neither trick turns that "
                    "into a measurably better relation at this n."))]
display(Markdown("**What this run measured**\n\n" + "\n".join(lines)))

# %% [markdown]
# Try your own prompts (unknown words get the tokeniser's message instead of a grid):

# %%
text_explorer = dc.widgets.GuidanceExplorer(t2i, t2i_schedule, tokenizer=tok, n=16, image_shape=(3, 32, 32),
                                            steps=budget(quick=3, cpu=20, gpu=50), png_scale=4)
text_explorer

# %% [markdown]
# For readers on GitHub (where widgets do not run), the text explorer at a few settings — the prompt, then the same
# words in the other order:

# %%
text_explorer.figure([{"prompt": "a red circle above a blue square", "scale": 1.0},
                      {"prompt": "a red circle above a blue square", "scale": 3.0},
                      {"prompt": "a blue square above a red circle", "scale": 3.0}], size=3.2);

# %% [markdown]
# Compare the last two panels: the same words in the other order, from the same noise. If they look alike, that is the
# order-blindness measured in section 11, seen directly.

# %% [markdown]
# ## 12. The same pieces in Stable Diffusion
#
# ```python
# from diffusers import StableDiffusionPipeline          # not run here: it needs ~4 GB of weights
# pipe = StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
# image = pipe("a red circle above a blue square", guidance_scale=7.5, num_inference_steps=50).images[0]
# ```
#
# | `pipe.` component | what it is in SD v1.5 | this chapter |
# |---|---|---|
# | `tokenizer` | CLIP BPE tokeniser, 77 tokens: a start-of-text token, the prompt, then end-of-text tokens as padding; no attention mask, so the U-Net attends to the padding too | `t2i.tokenizer` (`WordTokenizer`, 10 tokens, `<start>` … `<pad>`; padding masked out) |
# | `text_encoder` | CLIP ViT-L/14 text Transformer, 123 M, **frozen**, 77×768 output | `t2i.text` (`TextEncoder`, 2 layers, 10×64, trained jointly) |
# | `unet` | `UNet2DConditionModel`, 860 M; each transformer block has self-attention (`attn1`) and cross-attention to the text (`attn2`) | `t2i.unet` (`UNet` with `CrossAttention` at 8×8 and 4×4) |
# | `scheduler` | PNDM by default; swap in `DDIMScheduler` etc. | `sampling.ddim_sample` (chapter 3) |
# | `vae` | 512×512 images ↔ 64×64×4 latents; diffusion runs in latent space | chapter 5 (here we diffuse pixels) |
# | `guidance_scale=7.5` | ε_u + 7.5 (ε_text − ε_u) | `guidance.classifier_free(..., scale=7.5)` |
# | `negative_prompt` | its embedding replaces the empty prompt's as ε_u | `classifier_free(..., null_cond=tok(negative))` |
#
# Inside its denoising loop, the pipeline does what `ClassifierFreeGuidance.__call__` does: it stacks the latents twice,
# runs the U-Net once with the empty-prompt and prompt embeddings side by side, splits the output into ε_u and ε_text,
# combines them with the guidance scale, and hands the result to the scheduler's `step`.
#
# ## 13. Exercises (checked automatically)
#
# The placeholders fail their checks on purpose; `dc.exercises.solution("cfg")` prints a solution when you want one.
#
# **13a. The guidance combination.** Given `eps_uncond`, `eps_cond` and `scale`, return the guided prediction. The check
# compares your function with the package's on several inputs and scales (0, 1, 3, 7.5).

# %%
def my_cfg(eps_uncond, eps_cond, scale):
    # YOUR CODE HERE — replace the line below (it is plain conditional: right only at scale 1)
    return eps_cond


dc.exercises.check(my_cfg, "cfg");

# %% [markdown]
# **13b. Guidance rescale.** Lin et al. (2023, Eqs. 15–16) compute the guided prediction, then scale it so that *each
# sample's* standard deviation (over all its pixels and channels) matches the conditional prediction's, and blend:
# $\tilde\varepsilon_\text{out} = \phi\,\tilde\varepsilon\,\frac{\operatorname{std}(\varepsilon_c)}{\operatorname{std}(\tilde\varepsilon)} + (1-\phi)\,\tilde\varepsilon$.
# Write `my_rescale(eps_uncond, eps_cond, scale, phi)`. Then think: why per sample, and not over the whole batch?

# %%
def my_rescale(eps_uncond, eps_cond, scale, phi):
    # YOUR CODE HERE — this placeholder forgets the rescale (right only at phi = 0)
    return eps_uncond + scale * (eps_cond - eps_uncond)


dc.exercises.check(my_rescale, "rescale");

# %% [markdown]
# **13c. Predict before you measure.** A negative prompt replaces ε_u by ε_neg:
# $\tilde\varepsilon = \varepsilon_\text{neg} + s\,(\varepsilon_c - \varepsilon_\text{neg})$. Suppose the network barely
# tells the negative prompt from the prompt, so that $\varepsilon_\text{neg} \approx \varepsilon_c$ (section 11's probe
# measured how close the reversed-order prompt comes). Reason it out on paper, without running anything: whatever
# guidance scale $s$ you ask for, the samples behave like those of which *effective* scale of ordinary guidance? Answer
# with one number, then compare with the rows of section 11's table.

# %%
my_answer = None   # your prediction: the effective guidance scale
dc.exercises.check(my_answer, "negative_collapse");

# %% [markdown]
# ## Summary
#
# * Classifier-free guidance scales the implicit classifier $\nabla\log p(y\mid x_t)$ = conditional − unconditional
#   prediction; one network trained with condition dropout provides both, in one batched call per step.
# * On an exact model it visibly trades diversity for fidelity and, pushed far, leaves the data. On the real model we
#   **measured** the trade-off (section 5 prints it): class accuracy up and within-class diversity down as the scale
#   grows, and FID lowest at the scale section 5 prints (at a small n and few steps that can be plain conditional
#   sampling itself) — and, with a paired bootstrap, which neighbouring scales this n cannot tell apart from it.
#   Limited-interval guidance and guidance rescale (designed for v-prediction with zero terminal
#   SNR) are the usual tools for large scales; section 5 measured rescale on this ε-model.
# * Text conditioning is the same idea with a richer condition: tokens → Transformer → cross-attention, caption
#   dropout for the null caption. We measured where each word's attention lands and how often the model draws a
#   pairing it never saw correctly (sections 9–11) rather than assuming either, and counted how often such a request
#   comes out with the shapes exchanged — a pairing the model was trained on. For a 3 M-parameter model trained
#   on a CPU, getting the right colours is the easy part; putting each colour on its own shape in the right place is
#   the hard part — attribute binding, a known weakness of large text-to-image models too. Splitting the relation shows
#   *how* it fails: the direction word is read, the word order hardly at all (section 11 measures it), and guidance
#   tricks that only recombine this network's predictions cannot put back what its text pathway does not carry — a
#   negative prompt of the same words in the other order is, to this network, nearly the prompt itself, so it switches
#   guidance off instead (exercise 13c).
#
# **References.** Ho & Salimans (2022), *Classifier-Free Diffusion Guidance*; Dhariwal & Nichol (2021), *Diffusion Models
# Beat GANs on Image Synthesis* (classifier guidance); Rombach et al. (2022), *High-Resolution Image Synthesis with Latent
# Diffusion Models* (cross-attention conditioning, Stable Diffusion); Lin et al. (2023), *Common Diffusion Noise Schedules
# and Sample Steps are Flawed* (guidance rescale); Kynkäänniemi et al. (2024), *Applying Guidance in a Limited Interval
# Improves Sample and Distribution Quality*; Hertz et al. (2022), *Prompt-to-Prompt Image Editing with Cross Attention
# Control*; Chefer et al. (2023), *Attend-and-Excite: Attention-Based Semantic Guidance for Text-to-Image Diffusion
# Models* (attribute binding); Yuksekgonul et al. (2023), *When and Why Vision-Language Models Behave like Bags-of-Words*.
