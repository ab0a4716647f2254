"""The training CLI: re-run the recipe behind a checkpoint,  ``python -m diffusion_course.train fmnist-ddpm``.

Training state is saved to ``<out>/<name>.train.pt`` as it goes (resumed automatically if present); at the end
the EMA weights are exported (fp16) to ``<name>.pt`` with a JSON manifest holding the recipe, steps, wall time,
device and the measured metrics (:mod:`diffusion_course.evaluation`). Recipes live in
:mod:`diffusion_course.recipes`; :func:`load_or_train` is the one place a missing checkpoint is trained on demand.
"""
from __future__ import annotations

import argparse
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from . import checkpoints, consistency, consistency_extensions, distributed, evaluation, latent, metrics, pretrained, recipes
from .config import get_device, is_quick
from .data import load_fashion_mnist
from .training import TrainConfig, TrainResult, train


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_or_train(name: str, device: torch.device | str | None = None) -> torch.nn.Module:
    """``pretrained.load(name)``; if its file is missing, train the recipe now (in quick mode only a few steps,
    and nothing is saved; otherwise the full recipe, saved where the shipped file belongs)."""
    if pretrained.path_for(name).exists():
        return pretrained.load(name, device=device)
    recipe = recipes.get(name)
    print(f"{pretrained.path_for(name).name} not found: training {name!r} now"
          + (" (quick mode: a few steps, not saved)" if is_quick() else ""))
    model = run_recipe(name, steps=recipe.quick_steps if is_quick() else None, save=not is_quick(), device=device,
                       out=pretrained.path_for(name).parent)
    return model.eval()


def evaluate_existing(name: str, device: torch.device | str | None = None) -> dict:
    """Measure a shipped checkpoint and merge the numbers into its manifest."""
    model = pretrained.load(name, device=device)
    recipe = recipes.get(name)
    if isinstance(recipe, recipes.AutoencoderRecipe):
        measured = evaluation.evaluate_autoencoder(model)
    elif isinstance(recipe, recipes.LatentRecipe):
        measured = evaluation.evaluate_latent(model)
    elif isinstance(recipe, recipes.ConsistencyRecipe):
        measured = evaluation.evaluate_consistency(model, device=device)
    elif isinstance(recipe, recipes.ClassifierRecipe):
        raise ValueError("--eval-only measures diffusion models and autoencoders; the classifier's test accuracy "
                         "is recorded when it is trained")
    elif hasattr(model, "tokenizer"):
        measured = evaluation.evaluate_text_model(model, model.schedule)
    else:
        measured = evaluation.evaluate_diffusion(model, model.schedule)
    metrics_now = {**pretrained.manifest(name).get("metrics", {}), **measured}
    checkpoints.update_manifest(pretrained.path_for(name), metrics=metrics_now,
                                evaluated=time.strftime("%Y-%m-%d %H:%M:%S"))
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in metrics_now.items()})
    return metrics_now


def _target_dir(name: str, steps: int | None, out, overwrite: bool, save: bool) -> Path:
    """Where a run writes. Never over a shipped checkpoint unless told to in so many words."""
    default = pretrained.path_for(name).parent
    target = Path(out) if out is not None else default
    if save and target.exists() and not target.is_dir():
        raise ValueError(f"--out {target} is a file; give a folder for the checkpoint, manifest and training state")
    if not save:
        return target
    into_shipped = target.resolve() in (checkpoints.CHECKPOINT_DIR.resolve(), checkpoints.LINEAGE_DIR.resolve())
    if into_shipped and not overwrite:
        if steps is not None:
            raise ValueError(f"--steps {steps} differs from the recipe of {name!r}: the result would replace the "
                             f"shipped checkpoint in {target}. Write it elsewhere with --out DIR (or pass "
                             "--overwrite to replace the shipped one on purpose).")
        if (target / f"{name}.pt").exists():
            raise ValueError(f"{target / (name + '.pt')} already exists (a shipped checkpoint). Write the new run "
                             "elsewhere with --out DIR, or pass --overwrite to replace it on purpose.")
    return target


def _start_from(name: str, what: str, device, weights_only: bool = False) -> torch.nn.Module | None:
    """The shipped (or lineage) model a recipe builds on; in quick mode a missing one is replaced by a few-step
    stand-in (``load_or_train``) or, when only its weights are wanted (``weights_only``), by None (a fresh network)."""
    if pretrained.path_for(name).exists():
        return pretrained.load(name, device=device)
    if is_quick():
        print(f"{name!r} ({what}) is missing: quick mode " + ("starts from a fresh network" if weights_only
                                                             else "trains a few-step stand-in"))
        return None if weights_only else load_or_train(name, device)
    raise FileNotFoundError(f"{what} {name!r} is missing ({pretrained.path_for(name)}); train it first: "
                            f"python -m diffusion_course.train {name}")


def _with_steps(fields: dict, steps: int | None) -> dict:
    """A recipe's training settings with its length overridden (warm restarts past the new end dropped)."""
    fields = dict(fields)
    if steps is not None:
        fields["steps"] = steps
        if "lr_cycle_ends" in fields:
            fields["lr_cycle_ends"] = tuple(e for e in fields["lr_cycle_ends"] if e < steps)
    return fields


def _recipe_seed(recipe) -> int:
    fields = getattr(recipe, "train", None) or getattr(recipe, "distill", None) or {}
    return int(fields.get("seed", getattr(recipe, "seed", 0)))


def run_recipe(name: str, steps: int | None = None, save: bool = True, device: torch.device | str | None = None,
               fresh: bool = False,
               evaluate: bool = True, out: str | Path | None = None, overwrite: bool = False) -> torch.nn.Module:
    """Train ``name`` by its recipe; with ``save`` export the weights and manifest. Returns the model.

    Files go to ``out`` (a folder; default the folder the shipped file lives in). A run that would write over a
    shipped checkpoint, or that differs from the recipe (``steps``) and would land in the shipped folder,
    is refused unless ``overwrite=True``. The network is initialised from the recipe's seed, so the same recipe
    gives the same bytes on the same machine. An interrupted run raises ``KeyboardInterrupt`` saying where its
    state is; the same command resumes it exactly.
    """
    recipe = recipes.get(name)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer (or None for the recipe's), got {steps!r}")
    dev = torch.device(device) if device is not None else get_device()
    out_dir = _target_dir(name, steps, out, overwrite, save)
    if save:
        out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.pt"
    state_path = path.with_suffix(".train.pt")
    if fresh and state_path.exists() and distributed.is_main():
        state_path.unlink()
    distributed.barrier()  # every rank sees the same state file (or none) before it decides to resume
    if distributed.world_size() > 1 and not isinstance(recipe, recipes.DiffusionRecipe):
        raise ValueError(f"multi-process (torchrun) training runs the diffusion recipes; train {name!r} in one "
                         "process: python -m diffusion_course.train " + name)
    t0 = time.perf_counter()
    torch.manual_seed(_recipe_seed(recipe))  # the initial weights are the recipe's too
    job = Job(name, recipe, steps, save, dev, evaluate, path, str(state_path) if save else None, t0)
    if isinstance(recipe, recipes.ClassifierRecipe):
        n_steps = recipe.steps if steps is None else steps
        model, acc = metrics.train_classifier(n_steps, recipe.batch_size, recipe.seed, device=dev, arch=recipe.arch)
        if save:
            checkpoints.save(model.state_dict(), path, job.manifest(n_steps, {"test_accuracy": acc}))
        return model
    if isinstance(recipe, recipes.AutoencoderRecipe):
        return _run_autoencoder(job)
    if isinstance(recipe, recipes.ConsistencyRecipe):
        return _run_consistency(job)
    if isinstance(recipe, recipes.FlowRecipe):
        return _run_flow(job)
    return _run_diffusion(job)


class Job:
    """One run of a recipe: what it is, where it writes, and its manifest."""

    def __init__(self, name: str, recipe: recipes.Recipe, steps: int | None, save: bool, dev: torch.device,
                 evaluate: bool, path: Path, state_path: str | None, t0: float):
        self.name, self.recipe, self.steps, self.save, self.dev = name, recipe, steps, save, dev
        self.evaluate, self.path, self.state_path, self.t0 = evaluate, path, state_path, t0

    def check_interrupted(self, result: TrainResult | consistency.DistillResult) -> None:
        if result.interrupted:
            where = (f"; its state is saved in {self.state_path}: run the same command to resume exactly"
                     if self.save else " (not saved)")
            raise KeyboardInterrupt(f"training of {self.name!r} interrupted at step {result.step}{where}")

    def manifest(self, steps: int, info: dict) -> dict:
        return {"name": self.name, "recipe": asdict(self.recipe), "steps": steps, "device": _device_name(self.dev),
                "torch": torch.__version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "wall_seconds_total": round(time.perf_counter() - self.t0, 1), "metrics": info,
                "reproduce": f"python -m diffusion_course.train {self.name}"}

    def export(self, model: torch.nn.Module, steps: int, info: dict,
               measure: Callable[[torch.nn.Module], dict] | None = None) -> None:
        """Write the fp16 weights and manifest; then, with ``evaluate``, measure the exported model and record it."""
        half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        checkpoints.save(half, self.path, self.manifest(steps, info))
        if self.evaluate and measure is not None:
            exported = recipes.build(self.name)
            exported.load_state_dict({k: v.float() if v.is_floating_point() else v
                                      for k, v in checkpoints.load(self.path).items()})
            info.update(measure(exported.to(self.dev).eval()))
            checkpoints.save(half, self.path, self.manifest(steps, info))
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in info.items() if not isinstance(v, list)})


def _history_info(history) -> dict:
    return {"train_wall_seconds": history.wall_time, "train_segments": getattr(history, "segments", []),
            "loss_curve": loss_curve(history.loss),
            "final_loss_avg_last_100": sum(history.loss[-100:]) / max(1, len(history.loss[-100:]))}


def _run_diffusion(job: Job) -> torch.nn.Module:
    recipe, name = job.recipe, job.name
    cfg = TrainConfig(**{**_with_steps(recipe.train, job.steps), "checkpoint_path": job.state_path})
    schedule = recipes.schedule_for(name)
    info: dict = {}
    if isinstance(recipe, recipes.LatentRecipe):
        vae = _start_from(recipe.vae, "the autoencoder", job.dev)
        latents, y = latent.encode_training_set(vae, device=job.dev)
        scale = latent.fit_scale_factor(latents)
        x = latents * scale
        net = recipes.build_denoiser(recipe.denoiser, recipe.model)
        info = {"scale_factor": scale, "latent_std_before_scaling": float(latents.double().std()),
                "vae_sha256": pretrained.manifest(recipe.vae).get("sha256")}
    elif recipe.text is not None:
        from . import shapes

        x, captions = shapes.make_dataset(recipe.text["n_images"] if job.steps is None or job.steps > 100 else 512,
                                          seed=recipe.text["data_seed"])
        y = recipes.tokenizer_for(name)(captions)
        net = recipes.build(name)
    else:
        x, y = load_fashion_mnist("train")
        net = recipes.build(name)
    if getattr(recipe, "init_from", None) is not None:
        # Fine-tuning: start from another checkpoint's (EMA) weights, e.g. fmnist-ddpm from fmnist-ddpm-v1.
        start = _start_from(recipe.init_from, "the checkpoint it fine-tunes", "cpu", weights_only=True)
        if start is not None:
            net.load_state_dict(start.state_dict())
    result = train(net, schedule, x, y if recipe.conditional else None, cfg, device=job.dev)
    job.check_interrupted(result)
    ema = result.ema.eval()
    if isinstance(recipe, recipes.LatentRecipe):
        ema = latent.LatentDiffusion(vae, ema, schedule, scale).to(job.dev).eval()
        measure = evaluation.evaluate_latent
    elif recipe.text is not None:
        ema.tokenizer, ema.schedule = net.tokenizer, schedule
        measure = lambda m: evaluation.evaluate_text_model(m, m.schedule, device=job.dev)  # noqa: E731
    else:
        ema.schedule = schedule
        measure = lambda m: evaluation.evaluate_diffusion(m, m.schedule, device=job.dev)  # noqa: E731
    if job.save and distributed.is_main():  # rank 0 alone exports and evaluates
        job.export(ema, result.step, {**_history_info(result.history), **info}, measure)
    return ema


def _run_autoencoder(job: Job) -> torch.nn.Module:
    cfg = latent.AutoencoderConfig(**{**_with_steps(job.recipe.train, job.steps), "checkpoint_path": job.state_path})
    x, _ = load_fashion_mnist("train")
    vae = recipes.build(job.name)
    result = latent.train_autoencoder(vae, x, cfg, device=job.dev)
    job.check_interrupted(result)
    vae.eval()
    if job.save:
        h = result.history
        info = {**_history_info(h),
                "final_reconstruction_avg_last_100": sum(h.reconstruction[-100:]) / max(1, len(h.reconstruction[-100:])),
                "final_kl_avg_last_100": sum(h.kl[-100:]) / max(1, len(h.kl[-100:]))}
        job.export(vae, result.step, info, lambda m: evaluation.evaluate_autoencoder(m, device=job.dev))
    return vae


def consistency_start(name: str, device: torch.device | str | None = None,
                      distill: dict | None = None) -> tuple[torch.nn.Module, consistency.ConsistencyModel]:
    """What a consistency recipe starts from: ``(teacher, student)`` — the teacher loaded, the student warm-started
    from the teacher's weights or, with ``init_from``, from the earlier student it continues (which must have the
    same grid and have been distilled from this very teacher). ``distill`` overrides the recipe's settings."""
    recipe = recipes.get(name)
    if not isinstance(recipe, recipes.ConsistencyRecipe):
        raise ValueError(f"{name!r} is not a consistency recipe")
    teacher = _start_from(recipe.teacher, "the teacher", device)
    fields = recipe.distill if distill is None else distill
    student = consistency.ConsistencyModel.from_teacher(teacher, teacher.schedule, grid_size=fields.get("grid_size", 20),
                                                        sigma_data=fields.get("sigma_data", 0.5),
                                                        sigma_cap=fields.get("sigma_cap", 2.0))
    if recipe.init_from is not None:
        start = _start_from(recipe.init_from, "the student it continues", "cpu", weights_only=True)
        if start is not None:
            if start.config["grid_size"] != student.config["grid_size"]:
                raise ValueError(f"{recipe.init_from!r} (grid {start.config['grid_size']}) does not match the "
                                 f"recipe's student (grid {student.config['grid_size']})")
            # a further cycle must continue a student of this very teacher (its manifest records the teacher's sha256)
            start_teacher = pretrained.manifest(recipe.init_from).get("metrics", {}).get("teacher_sha256")
            teacher_sha = pretrained.manifest(recipe.teacher).get("sha256")
            if start_teacher and teacher_sha and start_teacher != teacher_sha:
                raise ValueError(f"{recipe.init_from!r} was distilled from another {recipe.teacher!r} (sha256 "
                                 f"{start_teacher[:12]}…, the shipped one is {teacher_sha[:12]}…): re-distil it first")
            student.load_state_dict(start.state_dict())
    return teacher, student


def _run_consistency(job: Job) -> torch.nn.Module:
    recipe = job.recipe
    teacher, student = consistency_start(job.name, job.dev)
    cfg = consistency_extensions.config_from_dict(
        {**_with_steps(recipe.distill, job.steps), "checkpoint_path": job.state_path})
    x, y = load_fashion_mnist("train")
    result = consistency_extensions.distill(teacher, teacher.schedule, x, y, cfg, student=student, device=job.dev)
    job.check_interrupted(result)
    cm = result.ema.eval()
    if job.save:
        info = {**_history_info(result.history), "teacher_sha256": pretrained.manifest(recipe.teacher).get("sha256")}
        job.export(cm, result.step, info, lambda m: evaluation.evaluate_consistency(m, device=job.dev))
    return cm


def _run_flow(job: Job) -> torch.nn.Module:
    from . import flow
    from .nn import UNet

    recipe, name = job.recipe, job.name
    cfg = flow.FlowTrainConfig(**{**_with_steps(recipe.train, job.steps), "checkpoint_path": job.state_path})
    net = recipes.build(name)
    if recipe.init_from is not None:
        start = _start_from(recipe.init_from, "the checkpoint it starts from", "cpu", weights_only=True)
        if start is not None:   # an ε-model's U-Net gives the velocity model's U-Net its weights
            (net.unet if isinstance(start, UNet) else net).load_state_dict(start.state_dict())
    info: dict = {}
    noise = None
    if recipe.reflow is not None:
        r = recipe.reflow
        source = _start_from(r["source"], "the flow it reflows", job.dev)
        n = r["n"] if job.steps is None or job.steps > 100 else 64    # a short run makes a few pairs only
        y = torch.arange(n) % 10 if recipe.conditional else None
        # the pairs are a cache, not a checkpoint: never beside the shipped files (nor installed with them)
        shipped = job.path.parent.resolve() in (checkpoints.CHECKPOINT_DIR.resolve(), checkpoints.LINEAGE_DIR.resolve())
        cache_dir = checkpoints.CHECKPOINT_DIR.parent / "cache" if shipped else job.path.parent
        cache = cache_dir / f"{name}.pairs.pt" if job.save else None
        if cache is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
        t_pairs = time.perf_counter()
        pairs = flow.reflow_pairs(source, n, shape=(1, 28, 28), steps=r["steps"], solver=r.get("solver", "euler"),
                                  seed=r.get("seed", 0), labels=y, batch_size=r.get("batch_size", 250), cache=cache,
                                  device=job.dev, progress=True)
        noise, x = pairs[0], pairs[1]
        info.update(pairs_seconds_this_run=time.perf_counter() - t_pairs, pairs_n=n,
                    source_sha256=pretrained.manifest(r["source"]).get("sha256"))
    else:
        x, y = load_fashion_mnist("train")
    result = flow.train(net, x, y if recipe.conditional else None, cfg, noise=noise, device=job.dev)
    job.check_interrupted(result)
    ema = result.ema.eval()
    if job.save:
        job.export(ema, result.step, {**_history_info(result.history), **info},
                   lambda m: evaluation.evaluate_flow(m, device=job.dev, progress=True))
    return ema


def loss_curve(losses: list[float], every: int = 100) -> list[list[float]]:
    """[step, mean training loss of the ``every`` steps ending there] — what a manifest keeps of a run's history."""
    return [[end, sum(losses[end - every:end]) / every] for end in range(every, len(losses) + 1, every)]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=recipes.names())
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help="override the recipe's number of steps (needs --out: never written over a shipped model)")
    parser.add_argument("--out", default=None, help="folder for the checkpoint, manifest and training state "
                                                    "(default: the folder of the shipped file)")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow replacing a shipped checkpoint in data/checkpoints")
    parser.add_argument("--fresh", action="store_true", help="ignore a saved training state and start over")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    parser.add_argument("--no-eval", action="store_true", help="skip the FID evaluation after training")
    parser.add_argument("--eval-only", action="store_true",
                        help="measure the existing checkpoint and record the metrics in its manifest")
    args = parser.parse_args(argv)
    try:
        device = get_device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but this torch build sees no CUDA GPU; use --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError("--device mps was asked for, but MPS is not available here; use --device cpu")
        device = distributed.setup(device)  # under torchrun: join the process group, one device per rank
        if args.eval_only:
            if distributed.is_main():
                evaluate_existing(args.name, device=device)
            return 0
        run_recipe(args.name, steps=args.steps, device=device, fresh=args.fresh, evaluate=not args.no_eval,
                   out=args.out, overwrite=args.overwrite)
    except ValueError as err:
        parser.error(str(err))
    except KeyboardInterrupt as err:
        if distributed.is_main():
            print(f"\ninterrupted: {err or 'no state saved'}", flush=True)
        return 130
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
