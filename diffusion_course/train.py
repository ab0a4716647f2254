"""Re-run the recipe behind a shipped checkpoint:  ``python -m diffusion_course.train fmnist-ddpm``.

Training state is saved to ``data/checkpoints/<name>.train.pt`` as it goes (resumed automatically
if present); at the end the EMA weights are exported (fp16) to ``<name>.pt`` with a JSON manifest
holding the recipe, steps, wall time, device and the measured metrics.
"""
from __future__ import annotations

import argparse
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import checkpoints, distributed, metrics, pretrained, sampling
from .config import get_device
from .data import load_fashion_mnist
from .training import TrainConfig, train


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@torch.no_grad()
def evaluate_diffusion(model, schedule, n: int = 1000, steps: int = 50, seed: int = 0, device=None,
                       sampler=None, noise_shape: tuple[int, ...] = (1, 28, 28)) -> dict:
    """FID (DDIM-``steps``) of unconditional and class-conditional samples, each against its like-for-like floor.

    Conditional samples use exactly class-balanced labels, so they are compared with a class-balanced real set
    and a class-balanced floor (two disjoint balanced real sets of ``n``); unconditional samples with a random
    real subset and the random floor. Also the class mix of the unconditional samples (the classifier's
    counts and the largest relative deviation from uniform) and the class accuracy of the conditional ones.
    ``sampler(x_T, cond) -> images`` replaces DDIM (e.g. a latent model's own ``sample``, with ``noise_shape`` its
    latent shape).
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    clf = pretrained.load("fmnist-classifier", device=dev)
    g = torch.Generator().manual_seed(seed)
    out = {"n": n, "sampler": f"DDIM-{steps}, eta=0, trailing", "floor": metrics.fid_floor(clf, n),
           "floor_balanced": metrics.fid_floor(clf, n, class_balanced=True),
           "reference": "fid_uncond vs a random test subset (floor); fid_cond (class-balanced labels) vs a "
                        "class-balanced test subset (floor_balanced)"}
    labels = torch.arange(n) % 10
    if sampler is None:
        def sampler(x_T, cond):
            return sampling.ddim_sample(model, x_T, schedule, steps=steps, cond=cond, progress=False,
                                        clip_denoised=True)
    for name, cond in (("uncond", None), ("cond", labels.to(dev))):
        t0 = time.perf_counter()
        x_T = torch.randn((n, *noise_shape), generator=g).to(dev)
        xs = torch.cat([sampler(x_T[i:i + 500], None if cond is None else cond[i:i + 500])
                        for i in range(0, n, 500)]).clamp(-1, 1).cpu()
        ref = metrics.reference_images(n, class_balanced=cond is not None)
        out[f"fid_{name}"] = metrics.fid(clf, xs, ref)
        out[f"sample_seconds_{name}"] = time.perf_counter() - t0
        if cond is not None:
            out["class_accuracy_cond"] = metrics.class_accuracy(clf, xs, labels)
        else:
            counts = metrics.class_counts(clf, xs)
            out["uncond_class_counts"] = counts.tolist()
            out["uncond_class_max_deviation"] = metrics.max_class_deviation(counts)
            # the same measure on the real set the FID compares with: what a perfect model would score at this n
            out["uncond_class_max_deviation_real"] = metrics.max_class_deviation(metrics.class_counts(clf, ref))
    out["fid_cond_over_floor"] = out["fid_cond"] / out["floor_balanced"]
    out["fid_uncond_over_floor"] = out["fid_uncond"] / out["floor"]
    return out


@torch.no_grad()
def evaluate_text_model(model, schedule, n: int = 200, steps: int = 50, scales=(0.0, 1.0, 3.0), seed: int = 0,
                        device=None) -> dict:
    """Caption-attribute match rates (colours, shapes, relation, all) of samples for ``n`` random
    two-object prompts of trained pairings ("seen") and ``n`` of the held-out pairings, at each guidance
    scale (DDIM-``steps``)."""
    import random

    from . import guidance, shapes

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    rng = random.Random(10_000 + seed)
    # Two-object prompts in both sets, so "seen" and "held-out" differ only in whether the pairing was trained on.
    seen = [shapes.random_scene(rng, p_single=0.0).caption() for _ in range(n)]
    unseen = []
    while len(unseen) < n:
        scene = shapes.random_scene(rng, p_single=0.0, allow_held_out=True)
        if scene.is_held_out():
            unseen.append(scene.caption())
    out = {"n": n, "sampler": f"DDIM-{steps}, eta=0, trailing, clipped"}
    for label, prompts in (("seen", seen), ("held_out", unseen)):
        ids = model.tokenizer(prompts).to(dev)
        x_T = torch.randn((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)).to(dev)
        for s in scales:
            t0 = time.perf_counter()
            guided = guidance.classifier_free(model, ids, s)
            xs = sampling.ddim_sample(guided, x_T, schedule, steps=steps, progress=False, clip_denoised=True).cpu()
            for key, v in shapes.match_rates(xs, prompts).items():
                out[f"{label}_s{s:g}_{key}"] = v
            out[f"{label}_s{s:g}_seconds"] = time.perf_counter() - t0
    return out


@torch.no_grad()
def evaluate_latent(ldm, n: int = 1000, steps: int = 50, seed: int = 0) -> dict:
    """``evaluate_diffusion`` for a ``LatentDiffusion``: DDIM in latent space from latent-shaped noise, then decode."""
    out = evaluate_diffusion(ldm, ldm.schedule, n=n, steps=steps, seed=seed, noise_shape=ldm.latent_shape,
                             sampler=lambda z_T, cond: ldm.sample(z_T.shape[0], cond=cond, steps=steps, z_T=z_T,
                                                                  progress=False))
    out["sampler"] = f"DDIM-{steps} in latent space, eta=0, leading spacing; decoded"
    return out


@torch.no_grad()
def evaluate_autoencoder(vae, n: int = 1000, seed: int = 0, device=None) -> dict:
    """Reconstruction quality on the test set: MSE and PSNR over all 10,000 images, and the **reconstruction
    FID** — ``n`` test images through encode→decode against ``n`` *other* test images, next to the floor of the
    same two real sets. It is the best FID any latent model built on this decoder can reach at ``n``. The
    ``_balanced`` pair does the same on the two class-balanced sets of ``metrics.fid_floor(class_balanced=True)``:
    the cap to read a latent model's class-conditional FID (balanced labels) against."""
    dev = torch.device(device) if device is not None else next(vae.parameters()).device
    x, y = load_fashion_mnist("test")
    vae = vae.to(dev).eval()
    rec = torch.cat([vae.decode(vae.encode(x[i:i + 500].to(dev))[0]).clamp(-1, 1).cpu()
                     for i in range(0, x.shape[0], 500)])
    mse = float((rec - x).pow(2).mean())
    clf = pretrained.load("fmnist-classifier", device=dev)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    a, b = perm[:n], perm[n:2 * n]
    ba, bb = metrics.balanced_disjoint_indices(y, n, seed)
    psnr = 10 * math.log10(4.0 / mse) if mse > 0 else math.inf  # a perfect reconstruction has no finite PSNR
    return {"test_mse": mse, "test_psnr_db": psnr, "test_l1": float((rec - x).abs().mean()),
            "n": n, "fid_reconstruction": metrics.fid(clf, rec[a], x[b]), "floor": metrics.fid(clf, x[a], x[b]),
            "fid_reconstruction_balanced": metrics.fid(clf, rec[ba], x[bb]),
            "floor_balanced": metrics.fid(clf, x[ba], x[bb])}


def evaluate_existing(name: str, device=None) -> dict:
    """Measure a shipped diffusion checkpoint and merge the numbers into its manifest."""
    loaded = pretrained.load(name, device=device, train_if_missing=False)
    path = pretrained.path_for(name)
    recipe = pretrained.RECIPES[name]
    if isinstance(recipe, pretrained.AutoencoderRecipe):
        measured = evaluate_autoencoder(loaded)
    elif isinstance(recipe, pretrained.LatentRecipe):
        measured = evaluate_latent(loaded)
    elif isinstance(recipe, pretrained.ConsistencyRecipe):
        measured = evaluate_consistency(loaded, device=device)
    elif isinstance(recipe, pretrained.ClassifierRecipe):
        raise ValueError("--eval-only measures diffusion models and autoencoders; the classifier's test accuracy "
                         "is recorded when it is trained")
    else:
        model, schedule = loaded
        measured = (evaluate_text_model if hasattr(model, "tokenizer") else evaluate_diffusion)(model, schedule)
    metrics_now = {**pretrained.manifest(name).get("metrics", {}), **measured}
    checkpoints.update_manifest(path, metrics=metrics_now, evaluated=time.strftime("%Y-%m-%d %H:%M:%S"))
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in metrics_now.items()})
    return metrics_now


def _target_dir(name: str, steps: int | None, out, overwrite: bool, save: bool) -> Path:
    """Where a run writes. Never over a shipped checkpoint unless told to in so many words."""
    if not save:
        return Path(out) if out is not None else pretrained.CHECKPOINT_DIR
    shipped_dir = pretrained.CHECKPOINT_DIR.resolve()
    target = Path(out) if out is not None else pretrained.CHECKPOINT_DIR
    into_shipped = target.resolve() == shipped_dir
    if into_shipped and not overwrite:
        if steps is not None:
            raise ValueError(f"--steps {steps} differs from the recipe of {name!r}: the result would replace the "
                             f"shipped checkpoint in {pretrained.CHECKPOINT_DIR}. Write it elsewhere with "
                             "--out DIR (or pass --overwrite to replace the shipped one on purpose).")
        if pretrained.path_for(name).exists():
            raise ValueError(f"{pretrained.path_for(name)} already exists (a shipped checkpoint). Write the new run "
                             "elsewhere with --out DIR, or pass --overwrite to replace it on purpose.")
    return target


def run_recipe(name: str, steps: int | None = None, save: bool = True, device=None, fresh: bool = False,
               evaluate: bool = True, out: str | Path | None = None, overwrite: bool = False):
    """Train ``name`` by its recipe; with ``save`` export the weights and manifest. Returns the model.

    Files go to ``out`` (a folder; default the shipped ``data/checkpoints``). A run that would write over a
    shipped checkpoint, or that differs from the recipe (``steps``) and would land in the shipped folder,
    is refused unless ``overwrite=True``.
    """
    recipe = pretrained.RECIPES[name] if name in pretrained.RECIPES else pretrained._recipe(name)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer (or None for the recipe's), got {steps!r}")
    dev = torch.device(device) if device is not None else get_device()
    out_dir = _target_dir(name, steps, out, overwrite, save)
    path = out_dir / f"{name}.pt"
    t0 = time.perf_counter()
    if distributed.world_size() > 1 and not isinstance(recipe, pretrained.DiffusionRecipe):
        raise ValueError(f"multi-process (torchrun) training runs the diffusion recipes; train {name!r} in one "
                         "process: python -m diffusion_course.train " + name)
    if isinstance(recipe, pretrained.ClassifierRecipe):
        n_steps = recipe.steps if steps is None else steps
        model, acc = metrics.train_classifier(n_steps, recipe.batch_size, recipe.seed, device=dev)
        info = {"test_accuracy": acc}
        if save:
            checkpoints.save(model.state_dict(), path, _manifest(name, recipe, n_steps, t0, dev, info))
        return model
    if isinstance(recipe, pretrained.AutoencoderRecipe):
        return _run_autoencoder(name, recipe, steps, save, dev, fresh, evaluate, path, t0)
    if isinstance(recipe, pretrained.LatentRecipe):
        return _run_latent(name, recipe, steps, save, dev, fresh, evaluate, path, t0)
    if isinstance(recipe, pretrained.ConsistencyRecipe):
        return _run_consistency(name, recipe, steps, save, dev, fresh, evaluate, path, t0)
    cfg_dict = dict(recipe.train)
    if steps is not None:
        cfg_dict["steps"] = steps
        cfg_dict["lr_cycle_ends"] = tuple(e for e in cfg_dict.get("lr_cycle_ends", ()) if e < steps)
    state_path = path.with_suffix(".train.pt")
    if fresh and state_path.exists() and distributed.is_main():
        state_path.unlink()
    distributed.barrier()  # every rank sees the same state file (or none) before it decides to resume
    cfg_dict["checkpoint_path"] = str(state_path) if save else None
    cfg = TrainConfig(**cfg_dict)
    if recipe.text is not None:
        from . import shapes

        x, captions = shapes.make_dataset(recipe.text["n_images"] if steps is None or steps > 100 else 512,
                                          seed=recipe.text["data_seed"])
        y = pretrained.tokenizer_for(name)(captions)
    else:
        x, y = load_fashion_mnist("train")
    net = pretrained.build(name)
    if recipe.init_from is not None:
        # Fine-tuning: start from another shipped checkpoint's (EMA) weights, e.g. fmnist-ddpm from fmnist-ddpm-v1.
        from .config import is_quick

        if pretrained.path_for(recipe.init_from).exists():
            start, _ = pretrained.load(recipe.init_from, device="cpu", train_if_missing=False)
            net.load_state_dict(start.state_dict())
        elif is_quick():
            print(f"{recipe.init_from!r} (the checkpoint {name!r} starts from) is missing: quick mode starts from a "
                  "fresh network instead")
        else:
            raise FileNotFoundError(f"{name!r} fine-tunes {recipe.init_from!r}, whose checkpoint "
                                    f"{pretrained.path_for(recipe.init_from)} is missing; train it first: "
                                    f"python -m diffusion_course.train {recipe.init_from}")
    result = train(net, pretrained.schedule_for(name), x, y if recipe.conditional else None, cfg, device=dev)
    ema = result.ema.eval()
    if result.interrupted:
        raise KeyboardInterrupt(f"training of {name!r} interrupted at step {result.step}"
                                + (f"; state saved to {state_path} (run the same command to resume)" if save else ""))
    if save and distributed.is_main():  # rank 0 alone exports and evaluates
        info = {"train_wall_seconds": result.history.wall_time,
                "final_loss_avg_last_100": sum(result.history.loss[-100:]) / len(result.history.loss[-100:])}
        half = {k: v.half() if v.is_floating_point() else v for k, v in ema.state_dict().items()}
        checkpoints.save(half, path, _manifest(name, recipe, result.step, t0, dev, info))
        if evaluate:
            model = pretrained.build(name)
            model.load_state_dict({k: v.float() if v.is_floating_point() else v
                                   for k, v in checkpoints.load(path).items()})
            model = model.to(dev).eval()
            if hasattr(ema, "tokenizer"):
                model.tokenizer = ema.tokenizer
            schedule = pretrained.schedule_for(name)
            info.update((evaluate_text_model if recipe.text is not None else evaluate_diffusion)(model, schedule,
                                                                                                device=dev))
            checkpoints.save(half, path, _manifest(name, recipe, result.step, t0, dev, info))
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in info.items()})
    return ema


def _state_path(path: Path, save: bool, fresh: bool) -> str | None:
    state_path = path.with_suffix(".train.pt")
    if fresh and state_path.exists():
        state_path.unlink()
    return str(state_path) if save else None


def _run_autoencoder(name, recipe, steps, save, dev, fresh, evaluate, path, t0):
    from . import latent

    cfg = latent.AutoencoderConfig(**{**recipe.train, **({"steps": steps} if steps is not None else {}),
                                      "checkpoint_path": _state_path(path, save, fresh)})
    x, _ = load_fashion_mnist("train")
    vae = pretrained.build(name)
    t_train = time.perf_counter()
    history = latent.train_autoencoder(vae, x, cfg, device=dev)
    vae.eval()
    if save:
        segments = history.get("segments") or [{"seconds": time.perf_counter() - t_train}]
        info = {"train_wall_seconds": sum(seg["seconds"] for seg in segments), "train_segments": segments,
                "final_reconstruction_avg_last_100": sum(history["reconstruction"][-100:]) / len(history["reconstruction"][-100:]),
                "final_kl_avg_last_100": sum(history["kl"][-100:]) / len(history["kl"][-100:])}
        if evaluate:
            info.update(evaluate_autoencoder(vae, device=dev))
        checkpoints.save(_half(vae.state_dict()), path, _manifest(name, recipe, cfg.steps, t0, dev, info))
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in info.items()})
    return vae


def latent_training_set(vae, device=None, cache_dir: Path | None = None,
                        limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Fashion-MNIST training set as posterior-mean latents and labels: encoded once, cached under
    ``data/cache`` (keyed by the autoencoder's weights, so a retrained one re-encodes). ``limit`` takes only the
    first that many images and skips the cache (quick mode uses 2,000: encoding all 60,000 takes minutes on a CPU)."""
    from . import latent
    from .config import is_quick

    x, y = load_fashion_mnist("train")
    if limit is None and is_quick():
        limit = 2000
    vae = vae.to(device or "cpu").eval()
    if limit is not None:
        return latent.encode_dataset(vae, x[:limit]), y[:limit]
    cache_dir = cache_dir or pretrained.CHECKPOINT_DIR.parent / "cache"
    return latent.encode_dataset(vae, x, cache=cache_dir / "fmnist-train-latents.pt"), y


def _run_latent(name, recipe, steps, save, dev, fresh, evaluate, path, t0):
    from .latent import LatentDiffusion, fit_scale_factor

    vae = pretrained.load(recipe.vae, device=dev)
    latents, y = latent_training_set(vae, device=dev)
    scale = fit_scale_factor(latents)
    cfg_dict = dict(recipe.train)
    if steps is not None:
        cfg_dict["steps"] = steps
        cfg_dict["lr_cycle_ends"] = tuple(e for e in cfg_dict.get("lr_cycle_ends", ()) if e < steps)
    cfg_dict["checkpoint_path"] = _state_path(path, save, fresh)
    cfg = TrainConfig(**cfg_dict)
    schedule = pretrained.schedule_for(name)
    denoiser = pretrained.build_denoiser(recipe.denoiser, recipe.model)
    result = train(denoiser, schedule, latents * scale, y if recipe.conditional else None, cfg, device=dev)
    if result.interrupted:
        raise KeyboardInterrupt(f"training of {name!r} interrupted at step {result.step}"
                                + (f"; state saved to {cfg.checkpoint_path} (run the same command to resume)"
                                   if save else ""))
    ldm = LatentDiffusion(vae, result.ema.eval(), schedule, scale).to(dev).eval()
    if save:
        info = {"train_wall_seconds": result.history.wall_time, "scale_factor": scale,
                "loss_curve": loss_curve(result.history.loss),
                "latent_std_before_scaling": float(latents.double().std()),
                "vae_sha256": pretrained.manifest(recipe.vae).get("sha256"),
                "final_loss_avg_last_100": sum(result.history.loss[-100:]) / len(result.history.loss[-100:])}
        checkpoints.save(_half(ldm.state_dict()), path, _manifest(name, recipe, result.step, t0, dev, info))
        if evaluate:
            info.update(evaluate_latent(ldm))
            checkpoints.save(_half(ldm.state_dict()), path, _manifest(name, recipe, result.step, t0, dev, info))
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in info.items()})
    return ldm


def evaluate_consistency(cm, n: int = 1000, steps=(1, 2, 4), seed: int = 0, device=None) -> dict:
    """FID of a consistency model's 1/2/4-step samples (class-balanced labels and real set, n) and seconds per image
    at batch 1 and 250 for one step — what a ``fmnist-cd`` manifest records (``consistency.evaluate``)."""
    from . import consistency

    out = consistency.evaluate(cm, n=n, steps=steps, seed=seed, device=device)
    dev = next(cm.parameters()).device
    for batch in (1, 250):
        x_T = torch.randn((batch, 1, 28, 28), generator=torch.Generator().manual_seed(seed)).to(dev)
        out[f"seconds_per_image_cm1_batch{batch}"] = consistency.seconds_per_image(
            lambda x: consistency.sample(cm, x, 1), x_T)
    return out


def _run_consistency(name, recipe, steps, save, dev, fresh, evaluate, path, t0):
    from . import consistency

    from .config import is_quick

    if not pretrained.path_for(recipe.teacher).exists() and not is_quick():
        raise FileNotFoundError(f"{name!r} distils {recipe.teacher!r}, whose checkpoint "
                                f"{pretrained.path_for(recipe.teacher)} is missing; train it first: "
                                f"python -m diffusion_course.train {recipe.teacher}")
    result = consistency.distill_recipe(recipe.teacher, recipe.distill, state_path=_state_path(path, save, fresh),
                                        steps=steps, device=dev, init_from=recipe.init_from)
    if result.interrupted:
        raise KeyboardInterrupt(f"distillation of {name!r} interrupted at step {result.step}"
                                + ("; state saved beside the checkpoint (run the same command to resume)"
                                   if save else ""))
    cm = result.ema.eval()
    if save:
        info = {"train_wall_seconds": result.history.wall_time, "loss_curve": loss_curve(result.history.loss),
                "teacher_sha256": pretrained.manifest(recipe.teacher).get("sha256"),
                "final_loss_avg_last_100": sum(result.history.loss[-100:]) / len(result.history.loss[-100:])}
        checkpoints.save(_half(cm.state_dict()), path, _manifest(name, recipe, result.step, t0, dev, info))
        if evaluate:
            info.update(evaluate_consistency(cm, device=dev))
            checkpoints.save(_half(cm.state_dict()), path, _manifest(name, recipe, result.step, t0, dev, info))
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in info.items()})
    return cm


def loss_curve(losses: list[float], every: int = 100) -> list[list[float]]:
    """[step, mean training loss of the ``every`` steps ending there] — what a manifest keeps of a run's history."""
    return [[end, sum(losses[end - every:end]) / every] for end in range(every, len(losses) + 1, every)]


def _half(state: dict) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def _manifest(name, recipe, steps, t0, dev, info) -> dict:
    return {"name": name, "recipe": asdict(recipe), "steps": steps, "device": _device_name(dev),
            "torch": torch.__version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "wall_seconds_total": round(time.perf_counter() - t0, 1), "metrics": info,
            "reproduce": f"python -m diffusion_course.train {name}"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=pretrained.names())
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help="override the recipe's number of steps (needs --out: never written over a shipped model)")
    parser.add_argument("--out", default=None, help="folder for the checkpoint, manifest and training state "
                                                    "(default: the shipped data/checkpoints)")
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
