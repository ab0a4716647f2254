"""Chapter 3's expensive reference: fmnist-ddpm samples from DDPM-1000 (and DDIM-50, DDIM-10) at n = 1000.

    python benchmarks/ddpm_reference.py                      # computes into data/cache/ddpm_reference/
    python benchmarks/ddpm_reference.py --ship               # ...and writes diffusion_course/records/ddpm_reference.*

DDPM-1000 over 1000 images is a million model calls (about 1.5 hours on two CPU threads), too slow for a chapter that
should run in ten minutes, so chapter 3 reads these samples and runs its paired tests on them live. Every sampler
starts from the same x_T and labels as ``evaluation.compare_samplers(..., seed=0)`` (x_T = randn(n, 1, 28, 28) from
seed 0, labels 0..9 repeated), so sample i here pairs with sample i of any sampler the chapter runs itself.
DDPM's own noise comes from a generator seeded per batch (seed + 1 + batch index), which makes the run resumable:
each finished batch is kept in the cache, and an interrupted run continues from the next one.

Writes the images as uint8 (the resolution of the real data) in ``ddpm_reference.npz`` and the measured time, thread
count, checkpoint hash and FID at n beside them in ``ddpm_reference.json``; nothing the course ships is overwritten
without ``--ship``.
"""
import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion_course import config, evaluation, metrics, pretrained

ROOT = Path(__file__).resolve().parent.parent
SAMPLERS = ("DDIM-10 (η=0)", "DDIM-50 (η=0)", "DDPM-1000")


def slug(name: str) -> str:
    return name.split(" ")[0].lower()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=125)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--cache", type=Path, default=ROOT / "data" / "cache" / "ddpm_reference")
    ap.add_argument("--ship", action="store_true", help="write diffusion_course/records/ddpm_reference.{npz,json}")
    args = ap.parse_args()
    device = config.get_device(args.device)
    model = pretrained.load("fmnist-ddpm", device=device)
    schedule = model.schedule
    specs = {s.name: s for s in evaluation.standard_specs(ddim_steps=(10, 50), etas=(0.0,), dpm_steps=())}
    x_T = torch.randn((args.n, 1, 28, 28), generator=torch.Generator().manual_seed(args.seed))
    labels = torch.arange(args.n) % 10
    args.cache.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, args.n, args.batch))
    todo = [(name, i) for name in SAMPLERS for i in starts
            if not (args.cache / f"{slug(name)}_{args.seed}_{i}_{args.batch}.pt").exists()]
    bar = tqdm(total=sum(specs[name].nfe * min(args.batch, args.n - i) for name, i in todo), desc="image-calls",
               unit_scale=True)
    for name, i in todo:
        spec = specs[name]
        bar.set_postfix_str(f"{name}, images {i}-{i + args.batch - 1}")
        g = torch.Generator().manual_seed(args.seed + 1 + i // args.batch)
        start = time.perf_counter()
        out = spec.run(model, x_T[i:i + args.batch].to(device), schedule, labels[i:i + args.batch].to(device), g)
        seconds = time.perf_counter() - start
        torch.save({"x": out.float().cpu().clamp(-1, 1), "seconds": seconds, "threads": torch.get_num_threads()},
                   args.cache / f"{slug(name)}_{args.seed}_{i}_{args.batch}.pt")
        bar.update(spec.nfe * len(out))
    bar.close()

    clf = pretrained.load("fmnist-classifier", device=device)
    ref = metrics.reference_images(args.n, class_balanced=True)
    arrays, rows = {}, []
    for name in SAMPLERS:
        parts = [torch.load(args.cache / f"{slug(name)}_{args.seed}_{i}_{args.batch}.pt") for i in starts]
        x = torch.cat([p["x"] for p in parts])
        arrays[slug(name)] = ((x + 1) * 127.5).round().to(torch.uint8).numpy()
        x_q = torch.from_numpy(arrays[slug(name)]).float() / 127.5 - 1
        rows.append({"sampler": name, "nfe": specs[name].nfe, "n": args.n,
                     "seconds_per_image": sum(p["seconds"] for p in parts) / args.n,
                     "threads": sorted({p["threads"] for p in parts}),
                     "fid": metrics.fid(clf, x_q, ref), "class_accuracy": metrics.class_accuracy(clf, x_q, labels)})
        print(f"{name:<16} FID {rows[-1]['fid']:.2f}  acc {rows[-1]['class_accuracy']:.3f}  "
              f"{rows[-1]['seconds_per_image']:.2f} s/image")
    record = {"command": f"python benchmarks/ddpm_reference.py --n {args.n} --ship", "n": args.n, "seed": args.seed,
              "batch": args.batch, "device": str(device), "machine": platform.machine(),
              "date": time.strftime("%Y-%m-%d"), "checkpoint_sha256": pretrained.manifest("fmnist-ddpm").get("sha256"),
              "floor": metrics.fid_floor(clf, args.n, class_balanced=True), "rows": rows,
              "images": "ddpm_reference.npz: uint8 arrays (n, 1, 28, 28) per sampler, x = u / 127.5 - 1"}
    out_dir = ROOT / "diffusion_course" / "records" if args.ship else args.cache
    np.savez_compressed(out_dir / "ddpm_reference.npz", **arrays)
    (out_dir / "ddpm_reference.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out_dir / 'ddpm_reference.npz'} and .json")


if __name__ == "__main__":
    main()
