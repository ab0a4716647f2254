"""Small checkpoints the project trained itself, loaded by name — and trained on demand if absent.

    model, schedule = pretrained.load("fmnist-ddpm")       # class-conditional ε-model, cosine T=1000
    model, schedule = pretrained.load("shapes-t2i")        # text-to-image model; model.tokenizer
    classifier = pretrained.load("fmnist-classifier")      # the metric network behind our FID
    vae = pretrained.load("fmnist-vae")                    # chapter 5's autoencoder, 1×28×28 ↔ 4×7×7
    ldm = pretrained.load("fmnist-ldm")                    # latent.LatentDiffusion (a U-Net on the latents)
    cm = pretrained.load("fmnist-cd")                      # consistency.ConsistencyModel (carries its schedule)

Each checkpoint is ``data/checkpoints/<name>.pt`` (a ``state_dict``, EMA weights) beside
``<name>.json`` (recipe, steps, wall time, device, metrics, sha256). ``python -m
diffusion_course.train <name>`` re-runs the recipe that produced it.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import checkpoints
from .consistency import FMNIST_CD_RECIPE
from .config import get_device, is_quick
from .metrics import FashionClassifier
from .nn import TextToImageUNet, UNet
from .schedules import NoiseSchedule, get_schedule
from .tokenizer import WordTokenizer
from .training import TrainConfig

def _find_checkpoint_dir() -> Path:
    """$DIFFUSION_COURSE_CHECKPOINTS; else the source tree's data/checkpoints (a clone, or ``pip install -e .``);
    else the copy a regular ``pip install .`` / ``pip install git+…`` puts under <prefix>/share/diffusion-course/
    (pyproject's data-files); else the source-tree path, where checkpoints trained on demand are written."""
    import site
    import sys

    if os.environ.get("DIFFUSION_COURSE_CHECKPOINTS"):
        return Path(os.environ["DIFFUSION_COURSE_CHECKPOINTS"])
    source = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
    if source.is_dir():
        return source
    for prefix in (sys.prefix, sys.base_prefix, getattr(site, "USER_BASE", None) or ""):
        installed = Path(prefix) / "share" / "diffusion-course" / "checkpoints"
        if prefix and installed.is_dir():
            return installed
    return source


CHECKPOINT_DIR = _find_checkpoint_dir()


@dataclass
class DiffusionRecipe:
    """Everything needed to rebuild and retrain a diffusion checkpoint."""
    model: dict
    train: dict
    schedule: str = "cosine"
    T: int = 1000
    data: str = "fashion-mnist"
    conditional: bool = True
    quick_steps: int = 30
    description: str = ""
    # text models ("shapes" data): dataset size/seed and the tokeniser's max length
    text: dict | None = None
    # fine-tuning: the shipped checkpoint whose weights the network starts from (None = fresh init)
    init_from: str | None = None


@dataclass
class AutoencoderRecipe:
    """Chapter 5's first stage: ``nn.autoencoder.Autoencoder(**model)`` trained by ``latent.train_autoencoder``."""
    model: dict
    train: dict
    quick_steps: int = 30
    description: str = ""


@dataclass
class LatentRecipe:
    """A diffusion model on the latents of the autoencoder checkpoint ``vae`` (``latent.LatentDiffusion``).

    ``denoiser`` names the network: "unet" (``nn.UNet(**model)``) or "dit" (``nn.dit.DiT(**model)``). The scale
    factor is fitted on the whole training set's latents when the recipe runs and stored with the weights."""
    vae: str
    denoiser: str
    model: dict
    train: dict
    schedule: str = "cosine"
    T: int = 1000
    conditional: bool = True
    quick_steps: int = 20
    description: str = ""


@dataclass
class ConsistencyRecipe:
    """Chapter 7: a consistency model distilled from the shipped diffusion checkpoint ``teacher``
    (``consistency.distill_recipe`` with ``consistency.DistillConfig(**distill)``); the student is the teacher's
    architecture, warm-started from its weights — or, with ``init_from``, from another shipped consistency
    checkpoint's (EMA) weights: a further training cycle of an earlier student."""
    teacher: str
    distill: dict
    quick_steps: int = 10
    description: str = ""
    init_from: str | None = None


@dataclass
class ClassifierRecipe:
    steps: int = 2000
    batch_size: int = 128
    seed: int = 0
    quick_steps: int = 30
    description: str = ""
    model: dict = field(default_factory=lambda: {"feature_dim": 128})


RECIPES: dict[str, DiffusionRecipe | ClassifierRecipe] = {
    "fmnist-ddpm-v1": DiffusionRecipe(
        model=dict(in_channels=1, channels=(64, 128), blocks=1, attention_levels=(1,), num_classes=10,
                   patch=2, dropout=0.0, heads=4, objective="eps"),
        # 3000 steps in one cosine cycle, then two more cycles (warm restarts at half the peak lr) of
        # 2500 steps each. Each extension left the earlier steps exactly as they were, so it was
        # resumed from the saved state of the shorter recipe (steps 3000 and 5500).
        train=asdict(TrainConfig(steps=8000, batch_size=128, lr=1.5e-3, warmup=200, lr_decay="cosine",
                                 lr_cycle_ends=(3000, 5500), restart_lr_scale=0.5,
                                 ema_decay=0.999, objective="eps", p_uncond=0.1, seed=0,
                                 checkpoint_every=200)),
        description="the first shipped fmnist-ddpm: class-conditional Fashion-MNIST ε-model with 10% label "
                    "dropout (so cond=None samples unconditionally); cosine schedule, T=1000; EMA weights.",
    ),
    "shapes-t2i": DiffusionRecipe(
        model=dict(in_channels=3, channels=(32, 64, 128), blocks=1, attention_levels=(2,),
                   cross_attention_levels=(1, 2), patch=2, heads=4, objective="eps", text_dim=64, text_layers=2),
        # Three 5000-step cosine cycles (warm restarts at half the peak lr); each extension was resumed
        # from the saved state of the shorter recipe, whose steps it leaves unchanged.
        train=asdict(TrainConfig(steps=15000, batch_size=64, lr=1.5e-3, warmup=200, lr_decay="cosine",
                                 lr_cycle_ends=(5000, 10000), restart_lr_scale=0.5,
                                 ema_decay=0.999, objective="eps", p_uncond=0.1, seed=0,
                                 checkpoint_every=250)),
        data="shapes", conditional=True, quick_steps=20,
        text=dict(n_images=20000, data_seed=0, max_length=10),
        description="text-to-image ε-model on generated coloured-shape scenes with compositional captions; "
                    "a 2-layer Transformer text encoder trained jointly, cross-attention at 8×8 and 4×4, "
                    "10% caption dropout; scenes pairing a red circle with a blue triangle (or a green "
                    "square with a yellow circle) are held out of training.",
    ),
    "fmnist-classifier": ClassifierRecipe(
        description="Fashion-MNIST CNN classifier whose 128-d features define the course's FID.",
    ),
}


# The second shipped teacher (the first fmnist-cd was distilled from it): fmnist-ddpm-v1 fine-tuned with the
# course's measured-better recipe. Starts from v1's EMA weights. 20 % label dropout (v1: 10 %, which left the
# unconditional model undertrained), log-SNR-normal timesteps N(0, 2²) and batch 32 (chapter 2's screens), lr 4e-4.
RECIPES["fmnist-ddpm-v2"] = DiffusionRecipe(
    model=RECIPES["fmnist-ddpm-v1"].model,
    init_from="fmnist-ddpm-v1",
    train=asdict(TrainConfig(steps=5500, batch_size=32, lr=4e-4, warmup=100, lr_decay="cosine", ema_decay=0.999,
                             objective="eps", p_uncond=0.2, t_sampling="logsnr-normal", logsnr_mean=0.0,
                             logsnr_std=2.0, seed=1, checkpoint_every=250)),
    description="class-conditional Fashion-MNIST ε-model (cosine schedule, T=1000, EMA weights): fmnist-ddpm-v1 "
                "fine-tuned 5,500 steps with 20% label dropout and log-SNR-normal timesteps; fmnist-ddpm's first cycle.",
)
# The shipped teacher (chapters 2–4, 6): fmnist-ddpm-v2's recipe extended by a second cosine cycle (a warm restart
# at half the peak lr), resumed from v2's saved state at step 5500, which the extension leaves exactly as it was.
# teacher_screen.py found that further training, not the dropout rate, is what the unconditional model lacked.
RECIPES["fmnist-ddpm"] = DiffusionRecipe(
    model=RECIPES["fmnist-ddpm-v1"].model,
    init_from="fmnist-ddpm-v1",
    train=asdict(TrainConfig(**{**RECIPES["fmnist-ddpm-v2"].train, "steps": 13000,
                                "lr_cycle_ends": (5500,), "restart_lr_scale": 0.5})),
    description="class-conditional Fashion-MNIST ε-model (cosine schedule, T=1000, EMA weights): fmnist-ddpm-v1 "
                "fine-tuned with 20% label dropout and log-SNR-normal timesteps in two cosine cycles, so cond=None "
                "samples well too.",
)
RECIPES["fmnist-vae"] = AutoencoderRecipe(
    model=dict(in_channels=1, latent_channels=4, channels=(32, 64, 64), image_size=28),
    train=dict(steps=9000, batch_size=32, lr=1e-3, warmup=100, beta=1e-4, reconstruction="l1", seed=0,
               checkpoint_every=250),
    description="KL autoencoder 1×28×28 → 4×7×7 (f = 4), L1 reconstruction + 1e-4·KL, 9,000 steps (4.8 epochs); "
                "chapter 5's first stage.",
)
# The latent U-Net's width: benchmarks/latent_unet_width.py screened (32, 64, 64), (48, 96, 96) and (64, 128, 128) on the
# same 6,000-step recipe (FID 16.7 / 14.1 / 14.4; a training step 6.1× / 3.8× / 2.5× cheaper than the pixel model's).
# The narrowest, given the 12,000 steps its cheaper step buys in less wall time than the widest took for 6,000, scored
# 13.8: it ships.
RECIPES["fmnist-ldm"] = LatentRecipe(
    vae="fmnist-vae", denoiser="unet",
    model=dict(in_channels=4, channels=(32, 64, 64), blocks=1, attention_levels=(2,), num_classes=10, patch=1,
               heads=4, objective="eps", pad_input=True),
    train=asdict(TrainConfig(steps=12000, batch_size=32, lr=1e-3, warmup=200, lr_decay="cosine", ema_decay=0.999,
                             objective="eps", p_uncond=0.2, t_sampling="logsnr-normal", seed=0,
                             checkpoint_every=250, channels_last=False)),
    description="class-conditional latent diffusion on fmnist-vae's 4×7×7 latents (a (32, 64, 64) U-Net; zero-padded "
                "to 8×8 inside it), 20% label dropout, log-SNR-normal timesteps; cosine schedule, T=1000; EMA weights.",
)
RECIPES["fmnist-ldm-dit"] = LatentRecipe(
    vae="fmnist-vae", denoiser="dit",
    # A DiT sized to fmnist-ldm's U-Net: dim 64, depth 6, 4 heads (DiT-S at half the width) on the 49 latent positions
    # (patch 1): 29.3 MFLOPs per forward vs the U-Net's 31.4 M, so the same steps at the same batch are matched
    # training compute. lr 5e-4 (transformers want a lower one; DiT used 1e-4).
    model=dict(input_size=7, patch=1, in_channels=4, dim=64, depth=6, heads=4, mlp_ratio=4.0, num_classes=10,
               objective="eps"),
    train={**RECIPES["fmnist-ldm"].train, "lr": 5e-4},
    description="class-conditional latent DiT (dim 64, depth 6, adaLN-Zero, patch 1 → 49 tokens) on fmnist-vae's "
                "4×7×7 latents, 20% label dropout, log-SNR-normal timesteps; cosine schedule, T=1000; EMA weights.",
)


# Chapter 7's first-stage student. Batch 32, 6000 steps in two cosine cycles (the second at half the peak rate):
# 84 min on two CPU threads (≈ 0.85 s a step, measured: a teacher DDIM step, the target's and the student's forward
# and a backward; 2 h 18 min on one thread); see consistency.FMNIST_CD_RECIPE for the rest.
RECIPES["fmnist-cd-v1"] = ConsistencyRecipe(
    teacher="fmnist-ddpm",
    distill=dict(FMNIST_CD_RECIPE),
    description="class-conditional consistency model distilled from fmnist-ddpm on its DDIM-20 grid (pseudo-Huber, "
                "target = stopgrad of the online net, 10% label dropout so cond=None works) in two cosine cycles; "
                "EMA weights. fmnist-cd's first stage.",
)
# fmnist-cd's second stage (shipped as fmnist-cd until the multi-hop stage below beat it): fmnist-cd-v1 given a third and a
# fourth cosine cycle of 3,000 steps, continuing
# the halving of FMNIST_CD_RECIPE's restarts (1e-4, 5e-5, then 2.5e-5 and 1.25e-5), starting from v1's EMA weights with
# a fresh optimiser (v1's training state was not kept), new data order (seed 1). Same teacher, grid and loss. The fourth
# cycle was resumed from the third's saved state (the extension leaves the first 3,000 steps exactly as they were).
RECIPES["fmnist-cd-v2"] = ConsistencyRecipe(
    teacher="fmnist-ddpm",
    init_from="fmnist-cd-v1",
    distill={**FMNIST_CD_RECIPE, "steps": 6000, "lr_cycle_ends": (3000,), "restart_lr_scale": 0.5, "lr": 2.5e-5,
             "warmup": 100, "seed": 1},
    description="class-conditional consistency model distilled from fmnist-ddpm on its DDIM-20 grid (pseudo-Huber, "
                "target = stopgrad of the online net, 10% label dropout so cond=None works): fmnist-cd-v1 plus a "
                "third and a fourth cosine cycle at a quarter and an eighth of the first's peak rate; EMA weights. "
                "fmnist-cd's second stage.",
)
# fmnist-cd's third stage (shipped as fmnist-cd until the second multi-hop cycle below beat it): fmnist-cd-v2 continued
# 4,000 steps in one cosine cycle with multi-hop targets (k teacher steps per pair, k uniform in {1, 2, 4, 8}: an error
# reaches the top of the grid through fewer learned links), fresh optimiser, new data order (seed 3); 58 min on 2 threads.
# Screened by benchmarks/consistency_stage.py (benchmarks/results/consistency_hops_stage.json): paired 2-step ÷ DDIM-50
# 1.535 ± 0.054 against 1.582 ± 0.089.
_MULTI_HOP_CYCLE = {**FMNIST_CD_RECIPE, "teacher_hops": (1, 2, 4, 8), "steps": 4000, "lr_cycle_ends": (), "warmup": 100}
_CD_DESCRIPTION = ("class-conditional consistency model distilled from fmnist-ddpm on its DDIM-20 grid (pseudo-Huber, "
                   "target = stopgrad of the online net, 10% label dropout so cond=None works): ")
RECIPES["fmnist-cd-v3"] = ConsistencyRecipe(
    teacher="fmnist-ddpm",
    init_from="fmnist-cd-v2",
    distill={**_MULTI_HOP_CYCLE, "lr": 2.5e-5, "seed": 3},
    description=_CD_DESCRIPTION + "fmnist-cd-v2 plus one cosine cycle with multi-hop targets (k teacher steps per "
                "pair, k in {1, 2, 4, 8}); EMA weights. fmnist-cd's third stage.",
)
# fmnist-cd's fourth stage (shipped as fmnist-cd until the sampler-aligned stage below beat it): fmnist-cd-v3 given a
# second multi-hop cycle of 4,000 steps at half its peak rate (the halving of the earlier restarts), same hops, fresh
# optimiser, new data order (seed 4); 60.5 min on 2 threads. Screened before shipping
# (benchmarks/results/consistency_hops_stage2.json): paired 2-step ÷ DDIM-50 1.514 ± 0.045 against fmnist-cd-v3's
# 1.535 ± 0.054 on the same three draws; 1-step and 4-step better too.
RECIPES["fmnist-cd-v4"] = ConsistencyRecipe(
    teacher="fmnist-ddpm",
    init_from="fmnist-cd-v3",
    distill={**_MULTI_HOP_CYCLE, "lr": 1.25e-5, "seed": 4},
    description=_CD_DESCRIPTION + "fmnist-cd-v2 plus two cosine cycles with multi-hop targets (k teacher steps per "
                "pair, k in {1, 2, 4, 8}), the second at half the first's rate; EMA weights. fmnist-cd's fourth stage.",
)
# The shipped student (chapter 7): fmnist-cd-v4 given 3,500 steps in which half of each batch is sampler-aligned
# (consistency.draw_pairs: k = 10 pairs from t = 999 and t = 499, the 2-step sampler's timesteps, the second with the
# teacher's own 10-step chain as its target), the other half the multi-hop pairs as before; one cosine cycle at lr
# 1.25e-5, fresh optimiser, new data order (seed 7); 39.7 min on 2 threads. Screened before shipping
# (benchmarks/results/consistency_aligned_stage.json): paired 2-step ÷ DDIM-50 1.421 ± 0.038 against fmnist-cd-v4's
# 1.515 ± 0.045 on the same three draws (better on each by 0.084–0.111); 1-step and 4-step better too.
RECIPES["fmnist-cd"] = ConsistencyRecipe(
    teacher="fmnist-ddpm",
    init_from="fmnist-cd-v4",
    distill={**_MULTI_HOP_CYCLE, "steps": 3500, "lr": 1.25e-5, "seed": 7, "aligned_hop": 10, "aligned_fraction": 0.5},
    description=_CD_DESCRIPTION + "fmnist-cd-v2 plus two cosine cycles with multi-hop targets (k teacher steps per "
                "pair, k in {1, 2, 4, 8}), the second at half the first's rate, then one in which half of each batch "
                "is sampler-aligned (k = 10 from the 2-step sampler's t = 999 and t = 499); EMA weights.",
)


def names() -> list[str]:
    return sorted(RECIPES)


def _recipe(name: str):
    if name not in RECIPES:
        raise ValueError(f"unknown checkpoint {name!r}; available: {names()}")
    return RECIPES[name]


def path_for(name: str) -> Path:
    return CHECKPOINT_DIR / f"{name}.pt"


def build_denoiser(kind: str, config: dict) -> torch.nn.Module:
    """A latent denoiser by kind: "unet" or "dit"."""
    if kind == "unet":
        return UNet(**config)
    if kind == "dit":
        from .nn.dit import DiT

        return DiT(**config)
    raise ValueError(f"denoiser must be 'unet' or 'dit', got {kind!r}")


def build(name: str) -> torch.nn.Module:
    """A freshly initialised network with the recipe's architecture (a latent model gets a fresh VAE, scale 1)."""
    recipe = _recipe(name)
    if isinstance(recipe, ClassifierRecipe):
        return FashionClassifier(**recipe.model)
    if isinstance(recipe, AutoencoderRecipe):
        from .nn.autoencoder import Autoencoder

        return Autoencoder(**recipe.model)
    if isinstance(recipe, ConsistencyRecipe):
        from .consistency import build_student

        return build_student(build(recipe.teacher), schedule_for(recipe.teacher), recipe.distill)
    if isinstance(recipe, LatentRecipe):
        from .latent import LatentDiffusion

        return LatentDiffusion(build(recipe.vae), build_denoiser(recipe.denoiser, recipe.model),
                               schedule_for(name), 1.0)
    if recipe.text is not None:
        tok = tokenizer_for(name)
        model = TextToImageUNet(tok.vocab_size, tok.max_length, start_id=tok.start_id, pad_id=tok.pad_id,
                                **recipe.model)
        model.tokenizer = tok  # so a loaded model turns prompts into ids itself: model.tokenizer(prompts)
        return model
    return UNet(**recipe.model)


def tokenizer_for(name: str) -> WordTokenizer:
    """The tokeniser of a text model (its vocabulary comes from the dataset)."""
    recipe = _recipe(name)
    if not isinstance(recipe, DiffusionRecipe) or recipe.text is None:
        raise ValueError(f"{name!r} is not a text model")
    from . import shapes

    return WordTokenizer(shapes.VOCAB, recipe.text["max_length"])


def schedule_for(name: str) -> NoiseSchedule:
    recipe = _recipe(name)
    if not isinstance(recipe, (DiffusionRecipe, LatentRecipe)):
        raise ValueError(f"{name!r} is not a diffusion model")
    return get_schedule(recipe.schedule, recipe.T)


def manifest(name: str) -> dict:
    """The JSON manifest of a shipped checkpoint (empty if it is missing)."""
    return checkpoints.read_manifest(path_for(name))


def load(name: str, device: torch.device | str | None = None, train_if_missing: bool = True):
    """Load a checkpoint by name (sha256-checked, ``weights_only=True``).

    Pixel diffusion models return ``(model, schedule)`` in eval mode; the classifier and the autoencoder return
    the model; a latent model returns a ready ``latent.LatentDiffusion`` (it carries its schedule).
    If the file is missing and ``train_if_missing``, the recipe is trained now (with a progress
    bar; in quick mode only a few steps, and nothing is saved).
    """
    recipe = _recipe(name)
    dev = torch.device(device) if device is not None else get_device()
    path = path_for(name)
    if path.exists():
        model = build(name)
        state = checkpoints.load(path)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    elif not train_if_missing:
        raise FileNotFoundError(f"checkpoint {path} is missing; run `python -m diffusion_course.train {name}` "
                                "or call load(..., train_if_missing=True)")
    else:
        print(f"{path.name} not found: training {name!r} now"
              + (" (quick mode: a few steps, not saved)" if is_quick() else f" (saved to {path})"))
        from .train import run_recipe

        model = run_recipe(name, steps=recipe.quick_steps if is_quick() else None, save=not is_quick(),
                           device=dev)
    model = model.to(dev).eval()
    if isinstance(recipe, (ClassifierRecipe, AutoencoderRecipe, LatentRecipe, ConsistencyRecipe)):
        return model
    return model, schedule_for(name)
