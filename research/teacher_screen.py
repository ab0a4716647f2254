"""Screen recipes for the shipped teacher ``fmnist-ddpm``: a short run, then conditional *and* unconditional FID.

    python research/teacher_screen.py --minutes 10 --p-uncond 0.2 [--init v1|scratch] [--batch 64] [--lr 5e-4]
                                      [--t-sampling logsnr-normal] [--n 500] [--threads 1] [--json out.json]
    python research/teacher_screen.py --minutes 0 --init v1      # only evaluate the starting point
    python research/teacher_screen.py --init shipped --steps 4000 --lr-decay cosine --lr 1e-4 --batch 32 --n 1000
                                      # a further cosine cycle of the shipped teacher, by steps

``--init v1`` starts from the weights of ``fmnist-ddpm-v1`` (the first shipped model: 8,000 steps, uniform t,
10 % label dropout; kept in ``data/lineage/``, so run it from a source checkout) and fine-tunes them; ``shipped``
continues the current ``fmnist-ddpm`` (to screen a further fine-tune); ``scratch`` starts from a fresh network of the
same architecture.
Both are measured by ``evaluation.evaluate_diffusion``: class-conditional samples (balanced labels) against a
class-balanced real set and floor, unconditional samples against a random real set and floor, and the class
mix of the unconditional samples. Time is training time on ``--threads`` threads (sampling not counted).
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from diffusion_course import checkpoints, data, evaluation, pretrained, training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=None, help="training time budget (constant lr)")
    ap.add_argument("--steps", type=int, default=None, help="train this many steps instead of a time budget")
    ap.add_argument("--lr-decay", choices=("constant", "cosine"), default="constant")
    ap.add_argument("--init", choices=("v1", "shipped", "scratch"), default="v1")
    ap.add_argument("--p-uncond", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--t-sampling", default="logsnr-normal")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--save", default=None, help="also save the resulting EMA state_dict here (never a shipped path)")
    args = ap.parse_args()
    if (args.minutes is None) == (args.steps is None):
        raise SystemExit("give one of --minutes (a time budget) or --steps")
    if (args.minutes is not None and args.minutes < 0) or (args.steps is not None and args.steps < 1):
        raise SystemExit("--minutes must be >= 0 and --steps >= 1")
    if args.lr_decay == "cosine" and args.steps is None:
        raise SystemExit("--lr-decay cosine needs --steps (the cosine runs over a known length)")
    shipped = (checkpoints.CHECKPOINT_DIR.resolve(), checkpoints.LINEAGE_DIR.resolve())
    if args.save and Path(args.save).resolve().parent in shipped:
        raise SystemExit(f"--save {args.save}: a screen never writes into the shipped {checkpoints.CHECKPOINT_DIR} "
                         f"or {checkpoints.LINEAGE_DIR}")
    torch.set_num_threads(args.threads)
    model = pretrained.build("fmnist-ddpm-v1")
    if args.init != "scratch":
        start = "fmnist-ddpm-v1" if args.init == "v1" else "fmnist-ddpm"
        model.load_state_dict(pretrained.load(start, device="cpu").state_dict())
    schedule = pretrained.schedule_for("fmnist-ddpm")
    info = vars(args).copy()
    if args.steps is not None or args.minutes > 0:
        x, y = data.load_fashion_mnist("train")
        cfg = training.TrainConfig(steps=args.steps or 10**7, max_minutes=args.minutes, batch_size=args.batch,
                                   lr=args.lr, warmup=50, lr_decay=args.lr_decay, ema_decay=0.999, p_uncond=args.p_uncond,
                                   t_sampling=args.t_sampling, seed=args.seed,
                                   checkpoint_path=tempfile.mktemp(suffix=".pt"))
        result = training.train(model, schedule, x, y, cfg, device="cpu")
        model = result.ema
        info.update(steps=result.step, train_seconds=result.history.wall_time)
        if args.save:
            torch.save(model.state_dict(), args.save)
    t0 = time.perf_counter()
    info.update(evaluation.evaluate_diffusion(model.eval(), schedule, n=args.n, device="cpu"))
    info["eval_seconds"] = time.perf_counter() - t0
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in info.items()}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
