"""The small checkpoints the project trained itself, loaded by name.

    model = pretrained.load("fmnist-ddpm")          # class-conditional ε-model; model.schedule is cosine(1000)
    t2i = pretrained.load("shapes-t2i")             # text-to-image model; t2i.tokenizer, t2i.schedule
    classifier = pretrained.load("fmnist-classifier")   # the metric network behind our FID
    vae = pretrained.load("fmnist-vae")             # chapter 5's autoencoder, 1×28×28 ↔ 4×7×7
    ldm = pretrained.load("fmnist-ldm")             # latent.LatentDiffusion (.vae, .model, .schedule)
    cm = pretrained.load("fmnist-cd")               # consistency.ConsistencyModel (.schedule, .grid)

``load`` always returns the model, in eval mode; every diffusion model carries its noise schedule as
``.schedule``. Each checkpoint is ``<name>.pt`` (a ``state_dict``, EMA weights) beside ``<name>.json`` (recipe,
steps, wall time, device, metrics, sha256) in ``checkpoints.CHECKPOINT_DIR`` (earlier versions of a model, its
lineage, in ``checkpoints.LINEAGE_DIR``). This module only loads: ``python -m diffusion_course.train <name>``
re-runs the recipe (:mod:`diffusion_course.recipes`) that produced one.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoints, recipes
from .config import get_device
from .recipes import RECIPES, build, build_denoiser, names, schedule_for, tokenizer_for

__all__ = ["RECIPES", "build", "build_denoiser", "names", "schedule_for", "tokenizer_for", "path_for", "manifest",
           "load", "is_lineage"]


def is_lineage(name: str) -> bool:
    """Whether ``name`` is an earlier version of a shipped model (``fmnist-cd-v4``), kept out of the install."""
    return name in recipes.RECIPES and name not in recipes.SHIPPED


def path_for(name: str) -> Path:
    """Where the checkpoint ``name`` lives: the shipped folder, or the lineage folder for earlier versions."""
    return (checkpoints.LINEAGE_DIR if is_lineage(name) else checkpoints.CHECKPOINT_DIR) / f"{name}.pt"


def manifest(name: str) -> dict:
    """The JSON manifest of a checkpoint (empty if it is missing)."""
    return checkpoints.read_manifest(path_for(name))


def load(name: str, device: torch.device | str | None = None) -> torch.nn.Module:
    """Load a checkpoint by name (sha256-checked, ``weights_only=True``), in eval mode on ``device``.

    Always the model: a diffusion network has its ``.schedule`` (and a text model its ``.tokenizer``), a latent
    model is a ready ``latent.LatentDiffusion``, a consistency model a ``consistency.ConsistencyModel``. A missing
    file is an error naming the command that recreates it.
    """
    recipes.get(name)  # an unknown name is an error listing the names
    path = path_for(name)
    if not path.exists():
        where = ("an earlier version of a shipped model, kept in the source tree's data/lineage/ only (a regular "
                 "install leaves it out)" if is_lineage(name) else "a shipped checkpoint")
        raise FileNotFoundError(f"{path} is missing ({name!r} is {where}). Restore it from the repository "
                                f"(`git checkout data/`), or recreate it: python -m diffusion_course.train {name}")
    dev = torch.device(device) if device is not None else get_device()
    model = build(name)
    state = checkpoints.load(path)
    _check_state(path, name, state, model)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(dev).eval()


def _check_state(path: Path, name: str, state: object, model: torch.nn.Module) -> None:
    """The file is ``name``'s own state_dict: its manifest names it, and its keys and shapes are the model's."""
    expected = f"the state_dict of {name!r} (a {type(model).__name__})"
    owner = checkpoints.read_manifest(path).get("name", name)
    if owner != name:
        raise ValueError(f"{path} is the checkpoint of {owner!r} (its manifest {path.with_suffix('.json').name} says "
                         f"so), not of {name!r}: load it as pretrained.load({owner!r}), or restore {name}.pt/.json "
                         f"(`git checkout data/`)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        what = (f"a dict whose values are not all tensors (keys {sorted(map(str, state))[:5]}: a training state?)"
                if isinstance(state, dict) else f"a {type(state).__name__}")
        raise ValueError(f"{path} holds {what}, not {expected}")
    want = model.state_dict()
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    wrong = sorted(k for k in set(want) & set(state) if tuple(want[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"{path} holds a state_dict of another model, not {expected}: {len(missing)} of its "
                         f"{len(want)} tensors missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. "
                         f"{unexpected[:2]}), {len(wrong)} of another shape (e.g. {wrong[:2]})")
