"""Classifier-free guidance's trade-off on the pretrained Fashion-MNIST model.

    python benchmarks/cfg_tradeoff.py [--n 500] [--steps 25] [--device cuda]

For each guidance scale s (and s = 7.5 with guidance rescale φ = 0.7): FID with the real-vs-real
floor at the same n, class accuracy, within-class diversity and the share of saturated pixels,
all from the same noise and labels. Prints the table and writes benchmarks/results/cfg_tradeoff.json.
"""
import argparse
import json
import platform
import time
from pathlib import Path

import torch

from diffusion_course import config, evaluation, pretrained

SCALES = [0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    device = config.get_device(args.device)
    model = pretrained.load("fmnist-ddpm", device=device)
    schedule = model.schedule
    clf = pretrained.load("fmnist-classifier", device=device)
    rows = evaluation.guidance_sweep(model, schedule, SCALES, args.n, clf, steps=args.steps)
    rows += evaluation.guidance_sweep(model, schedule, [7.5], args.n, clf, steps=args.steps, rescale=0.7,
                                      progress=False)
    print(f"fmnist-ddpm, n={args.n}, DDIM-{args.steps}, device {device} ({platform.machine()}, "
          f"{torch.get_num_threads()} threads)")
    print(evaluation.format_guidance_table(rows))
    print(f"real test images: saturated share {rows[0]['saturated_real']:.2%}")
    out = Path(__file__).parent / "results" / "cfg_tradeoff.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
                               "checkpoint_sha256": pretrained.manifest("fmnist-ddpm").get("sha256"), "rows": rows},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
