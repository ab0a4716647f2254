"""Does a finer grid make a better student? Short consistency distillations from the shipped teacher, one per grid size.

    python research/consistency_grid_screen.py --grid 20 [--steps 1500] [--n 1000] [--threads 1] [--json out.json]

Each run distils ``fmnist-ddpm`` from the teacher's weights with ``recipes.FMNIST_CD_RECIPE`` (batch 32,
pseudo-Huber, stopgrad target, 10 % label dropout) for ``--steps`` steps in one cosine cycle, on the teacher's DDIM-N
grid (N = ``--grid``), and scores the EMA student's 1- and 2-step class-conditional FID
(``evaluation.evaluate_consistency_samplers``: n, class-balanced labels and real set, the balanced floor). Run it once
per N with the same seed and steps, so arms differ only in N: a screen for the next distillation, not a shipped model
(nothing is saved but the JSON).
"""
import argparse
import json
import time

import torch

from diffusion_course import consistency, evaluation, pretrained, recipes
from diffusion_course.data import load_fashion_mnist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, required=True, help="N, the teacher's DDIM-N grid")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.grid < 2 or args.steps < 1 or args.n < 10:
        raise SystemExit("--grid must be >= 2, --steps >= 1 and --n >= 10")
    torch.set_num_threads(args.threads)
    teacher = pretrained.load("fmnist-ddpm", device="cpu")
    schedule = teacher.schedule
    x, y = load_fashion_mnist("train")
    cfg = consistency.DistillConfig(**{**recipes.FMNIST_CD_RECIPE, "steps": args.steps, "lr_cycle_ends": (),
                                       "grid_size": args.grid, "warmup": 100})
    t0 = time.perf_counter()
    result = consistency.distill(teacher, schedule, x, y, cfg, device="cpu")
    seconds = time.perf_counter() - t0
    out = {"grid": args.grid, "steps": args.steps, "train_seconds": seconds,
           "final_loss_avg_last_100": sum(result.history.loss[-100:]) / len(result.history.loss[-100:]),
           **evaluation.evaluate_consistency_samplers(result.ema.eval(), n=args.n, steps=(1, 2))}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
