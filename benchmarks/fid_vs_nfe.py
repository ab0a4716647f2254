"""FID vs number of model calls for every sampler on the pretrained Fashion-MNIST model.

    python benchmarks/fid_vs_nfe.py [--n 1000] [--device cuda]

Prints the table the README reproduces and writes it to benchmarks/results/fid_vs_nfe.json.
Every sampler starts from the same noise; FID is in the course classifier's features, next to the
real-vs-real floor at the same n.
"""
import argparse
import json
import platform
import time
from pathlib import Path

import torch

from diffusion_course import config, evaluation, pretrained


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-ddpm", action="store_true", help="skip DDPM-1000 (the slow one)")
    args = ap.parse_args()
    device = config.get_device(args.device)
    model = pretrained.load("fmnist-ddpm", device=device)
    schedule = model.schedule
    clf = pretrained.load("fmnist-classifier", device=device)
    rows = evaluation.compare_samplers(model, schedule, evaluation.standard_specs(ddpm=not args.no_ddpm), args.n, clf)
    print(f"fmnist-ddpm, n={args.n}, device {device} ({platform.machine()}, {torch.get_num_threads()} threads)")
    print(evaluation.format_table(rows))
    out = Path(__file__).parent / "results" / "fid_vs_nfe.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
                               "checkpoint_sha256": pretrained.manifest("fmnist-ddpm").get("sha256"), "rows": rows},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
