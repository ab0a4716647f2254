"""Re-run the recipe behind a shipped checkpoint:  ``python -m diffusion_course.train fmnist-ddpm``.

Training state is saved to ``data/checkpoints/<name>.train.pt`` as it goes (resumed automatically
if present); at the end the EMA weights are exported (fp16) to ``<name>.pt`` with a JSON manifest
holding the recipe, steps, wall time, device and the measured metrics.
"""
from __future__ import annotations

import argparse
import platform
import time
from dataclasses import asdict

import torch

from . import checkpoints, metrics, pretrained, sampling
from .config import get_device
from .data import load_fashion_mnist
from .training import TrainConfig, train


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@torch.no_grad()
def evaluate_diffusion(model, schedule, n: int = 1000, steps: int = 50, seed: int = 0, device=None) -> dict:
    """FID (DDIM-``steps``) of unconditional and class-conditional samples, with the floor at ``n``."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    clf = pretrained.load("fmnist-classifier", device=dev)
    ref = metrics.reference_images(n)
    g = torch.Generator().manual_seed(seed)
    out = {"n": n, "sampler": f"DDIM-{steps}, eta=0, trailing", "floor": metrics.fid_floor(clf, n)}
    labels = torch.arange(n) % 10
    for name, cond in (("uncond", None), ("cond", labels.to(dev))):
        t0 = time.perf_counter()
        x_T = torch.randn((n, 1, 28, 28), generator=g).to(dev)
        xs = torch.cat([sampling.ddim_sample(model, x_T[i:i + 500], schedule, steps=steps,
                                             cond=None if cond is None else cond[i:i + 500], progress=False,
                                             clip_denoised=True)
                        for i in range(0, n, 500)]).clamp(-1, 1).cpu()
        out[f"fid_{name}"] = metrics.fid(clf, xs, ref)
        out[f"sample_seconds_{name}"] = time.perf_counter() - t0
        if cond is not None:
            out["class_accuracy_cond"] = metrics.class_accuracy(clf, xs, labels)
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


def evaluate_existing(name: str, device=None) -> dict:
    """Measure a shipped diffusion checkpoint and merge the numbers into its manifest."""
    model, schedule = pretrained.load(name, device=device, train_if_missing=False)
    path = pretrained.path_for(name)
    evaluate = evaluate_text_model if hasattr(model, "tokenizer") else evaluate_diffusion
    metrics_now = {**pretrained.manifest(name).get("metrics", {}), **evaluate(model, schedule)}
    checkpoints.update_manifest(path, metrics=metrics_now, evaluated=time.strftime("%Y-%m-%d %H:%M:%S"))
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in metrics_now.items()})
    return metrics_now


def run_recipe(name: str, steps: int | None = None, save: bool = True, device=None, fresh: bool = False,
               evaluate: bool = True):
    """Train ``name`` by its recipe; with ``save`` export the weights and manifest. Returns the model."""
    recipe = pretrained.RECIPES[name]
    dev = torch.device(device) if device is not None else get_device()
    path = pretrained.path_for(name)
    t0 = time.perf_counter()
    if isinstance(recipe, pretrained.ClassifierRecipe):
        model, acc = metrics.train_classifier(steps or recipe.steps, recipe.batch_size, recipe.seed, device=dev)
        info = {"test_accuracy": acc}
        if save:
            checkpoints.save(model.state_dict(), path, _manifest(name, recipe, steps or recipe.steps, t0, dev, info))
        return model
    cfg_dict = dict(recipe.train)
    if steps is not None:
        cfg_dict["steps"] = steps
        cfg_dict["lr_cycle_ends"] = tuple(e for e in cfg_dict.get("lr_cycle_ends", ()) if e < steps)
    state_path = path.with_suffix(".train.pt")
    if fresh and state_path.exists():
        state_path.unlink()
    cfg_dict["checkpoint_path"] = str(state_path) if save else None
    cfg = TrainConfig(**cfg_dict)
    if recipe.text is not None:
        from . import shapes

        x, captions = shapes.make_dataset(recipe.text["n_images"] if steps is None or steps > 100 else 512,
                                          seed=recipe.text["data_seed"])
        y = pretrained.tokenizer_for(name)(captions)
    else:
        x, y = load_fashion_mnist("train")
    result = train(pretrained.build(name), pretrained.schedule_for(name), x, y if recipe.conditional else None,
                   cfg, device=dev)
    ema = result.ema.eval()
    if result.interrupted:
        return ema
    if save:
        info = {"train_wall_seconds": result.history.wall_time,
                "final_loss_avg_last_100": sum(result.history.loss[-100:]) / len(result.history.loss[-100:])}
        half = {k: v.half() if v.is_floating_point() else v for k, v in ema.state_dict().items()}
        checkpoints.save(half, path, _manifest(name, recipe, result.step, t0, dev, info))
        if evaluate:
            model, schedule = pretrained.load(name, device=dev)
            info.update((evaluate_text_model if recipe.text is not None else evaluate_diffusion)(model, schedule,
                                                                                                device=dev))
            checkpoints.save(half, path, _manifest(name, recipe, result.step, t0, dev, info))
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in info.items()})
    return ema


def _manifest(name, recipe, steps, t0, dev, info) -> dict:
    return {"name": name, "recipe": asdict(recipe), "steps": steps, "device": _device_name(dev),
            "torch": torch.__version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "wall_seconds_total": round(time.perf_counter() - t0, 1), "metrics": info,
            "reproduce": f"python -m diffusion_course.train {name}"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=pretrained.names())
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    parser.add_argument("--fresh", action="store_true", help="ignore a saved training state and start over")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-eval", action="store_true", help="skip the FID evaluation after training")
    parser.add_argument("--eval-only", action="store_true",
                        help="measure the existing checkpoint and record the metrics in its manifest")
    args = parser.parse_args(argv)
    if args.eval_only:
        evaluate_existing(args.name, device=args.device)
        return
    run_recipe(args.name, steps=args.steps, device=args.device, fresh=args.fresh, evaluate=not args.no_eval)


if __name__ == "__main__":
    main()
