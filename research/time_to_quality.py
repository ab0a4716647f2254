"""Time-to-quality: FID after a fixed wall-clock training budget from scratch — a network *and* a recipe.

    python research/time_to_quality.py --minutes 15 [--n 500] [--eval-at 5,10] [--runs plain:peer,plain:course,hf:peer]
                                         [--grid docs/]   # also save the first 40 samples of each point as a PNG

Each run is ``network:recipe``. It trains class-unconditionally on Fashion-MNIST for the same number of wall-clock
minutes (``TrainConfig.max_minutes``), then draws ``n`` samples with 50 DDIM steps from the EMA weights; FID is in
the course's classifier features, printed with the real-vs-real floor at the same n. ``--eval-at`` also measures FID at
earlier points of the same run (the clock is stopped while it samples: the trainer's budget counts training time only,
and the run resumes exactly from a checkpoint), which shows how many minutes one run needs to reach another's quality.

Networks: ``hf`` is diffusers' UNet2DModel in the HF course's 28×28 configuration (1.7 M); ``plain`` a plain
≈1.1 M-parameter conv U-Net without attention or patch stem (our blocks, widths 32/64/64) — the peer the
chapter-2 issue describes; ``shipped`` the ``fmnist-ddpm`` network (patch stem, 64/128, attention at 7×7, 3.0 M);
``thin`` our U-Net 16/32/64 with attention at 7×7 (0.72 M, about twice the images per second of ``plain``).

Recipes (all AdamW, constant lr 1e-3 after 100 warm-up steps, EMA 0.999 with the usual warm-up):
``peer``        — batch 128, t uniform: the usual way (the HF course's), ~860 steps in 15 minutes on 2 cores.
``small-batch`` — batch 32, t uniform: about 4× the updates in the same CPU time. Images per second hardly depend on
                  the batch on a CPU, so a smaller batch is almost free extra steps, and early in training steps are
                  what a diffusion model is short of.
``course``      — batch 32, t drawn log-SNR-normal (``TrainConfig(t_sampling="logsnr-normal")``, mean 0, std 2):
                  the training samples go to the middle noise levels, where a short run learns the coarse shape of
                  a garment, instead of the extremes (nearly clean or nearly pure noise), which teach it little.
(A cosine decay over the budget, ``TrainConfig(max_minutes=..., lr_decay="cosine")``, lowered the loss but not the FID
in a 15-minute test, so the benchmark keeps the lr constant.)
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from diffusion_course import data, metrics, pretrained, sampling, schedules, training
from diffusion_course.nn import UNet, count_parameters

from unet_throughput import _Wrap, hf_course_unet

NETWORKS = {
    "plain": ("plain conv U-Net 32/64/64, no attention",
              lambda: UNet(channels=(32, 64, 64), attention_levels=(), patch=1)),
    "shipped": ("course U-Net as shipped (patch stem)",
                lambda: UNet(**{**pretrained.RECIPES["fmnist-ddpm"].model, "num_classes": 0})),
    "thin": ("course U-Net 16/32/64, attn 7x7",
             lambda: UNet(channels=(16, 32, 64), attention_levels=(2,), patch=1)),
    "hf": ("diffusers UNet2DModel (HF course)", lambda: _Wrap(hf_course_unet())),
}
RECIPES = {
    "peer": dict(batch_size=128, lr=1e-3, warmup=100, lr_decay="constant", ema_decay=0.999),
    "small-batch": dict(batch_size=32, lr=1e-3, warmup=100, lr_decay="constant", ema_decay=0.999),
    "course": dict(batch_size=32, lr=1e-3, warmup=100, lr_decay="constant", ema_decay=0.999,
                   t_sampling="logsnr-normal", logsnr_mean=0.0, logsnr_std=2.0),
}


def parse_runs(text: str) -> list[tuple[str, str]]:
    runs = []
    for item in text.split(","):
        net, _, recipe = item.partition(":")
        if net not in NETWORKS or recipe not in RECIPES:
            raise ValueError(f"run {item!r}: write network:recipe with network in {', '.join(NETWORKS)} "
                             f"and recipe in {', '.join(RECIPES)}")
        runs.append((net, recipe))
    return runs


def save_grid(images: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_course import viz
    path.parent.mkdir(parents=True, exist_ok=True)
    ax = viz.show_images(images.clamp(-1, 1), nrow=10, title=title, size=2.6)
    ax.figure.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(ax.figure)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0, help="training seed (batches, t, noise)")
    ap.add_argument("--eval-at", default="", help="comma-separated earlier minutes at which to measure FID too")
    ap.add_argument("--grid", default="", help="folder for a PNG of the first 40 samples at each measured point")
    ap.add_argument("--runs", default="plain:peer,plain:course,hf:peer",
                    help="comma-separated network:recipe pairs")
    args = ap.parse_args()
    try:
        runs = parse_runs(args.runs)
        points = sorted({float(m) for m in args.eval_at.split(",") if m} | {args.minutes})
    except ValueError as e:
        ap.error(str(e))
    if points[0] <= 0 or points[-1] > args.minutes:
        ap.error("--eval-at minutes must be positive and at most --minutes")
    x, _ = data.load_fashion_mnist("train")
    s = schedules.NoiseSchedule.cosine(1000)
    clf = pretrained.load("fmnist-classifier", device="cpu")
    ref = metrics.reference_images(args.n)
    floor = metrics.fid_floor(clf, args.n)
    print(f"budget {args.minutes} min per run, n={args.n}, FID floor {floor:.2f}, threads {torch.get_num_threads()}")
    for net_key, recipe_key in runs:
        name, make = NETWORKS[net_key]
        torch.manual_seed(args.seed)
        net = make()
        with tempfile.TemporaryDirectory() as tmp:
            for minutes in points:
                cfg = training.TrainConfig(steps=10**7, max_minutes=minutes, seed=args.seed,
                                           checkpoint_path=str(Path(tmp) / "run.pt"), checkpoint_every=0,
                                           **RECIPES[recipe_key])
                res = training.train(net, s, x, config=cfg, device="cpu", progress=False)
                ema = res.ema.eval()
                start = time.perf_counter()
                g = torch.Generator().manual_seed(0)
                xs = torch.cat([sampling.ddim_sample(ema, torch.randn(min(250, args.n - i), 1, 28, 28, generator=g), s,
                                                     steps=50, clip_denoised=True, progress=False)
                                for i in range(0, args.n, 250)])
                sample_s = time.perf_counter() - start
                fid = metrics.fid(clf, xs.clamp(-1, 1), ref)
                print(f"{name:<40} {recipe_key:<11} {count_parameters(net) / 1e6:5.2f} M | {res.step:5d} steps × "
                      f"{cfg.batch_size} in {minutes:g} min | FID {fid:7.2f} (floor {floor:.2f}, ratio "
                      f"{fid / floor:5.1f}) | sampling {args.n}: {sample_s:4.0f} s", flush=True)
                if args.grid:
                    save_grid(xs[:40], Path(args.grid) / f"ttq-{net_key}-{recipe_key}-seed{args.seed}-{minutes:g}min.png",
                              f"{net_key}:{recipe_key}, {minutes:g} CPU-min ({res.step} steps × {cfg.batch_size}), "
                              f"FID {fid:.1f}")
                print(json.dumps(dict(network=net_key, recipe=recipe_key, minutes=minutes, seed=args.seed, n=args.n,
                                      threads=torch.get_num_threads(), steps=res.step, batch=cfg.batch_size,
                                      fid=round(fid, 2), floor=round(floor, 2), sample_seconds=round(sample_s, 1))),
                      flush=True)


if __name__ == "__main__":
    main()
