"""Chapter 9's measurements: the rectified flows ``fmnist-rf`` and ``fmnist-2rf`` against their targets and against
chapter 7's consistency student ``fmnist-cd``.

    python benchmarks/rectified_flow.py [--n 1000] [--draws 3] [--models fmnist-rf,fmnist-2rf,fmnist-cd]
                                        [--device cpu] [--json diffusion_course/records/rectified_flow.json]

For each of ``--draws`` noise draws (seeds 1000, 2000, 3000: the draws of ``consistency_two_features.py``) and exactly
class-balanced labels, every model samples from the same noise — the flows with 1, 2 and 4 Euler steps (and 50 on the
first draw), ``fmnist-cd`` with 1 and 2 steps — and each sample set is scored by the course's class-conditional FID
against one class-balanced real set of n, next to the balanced floor. The teacher's DDIM-50 on the same noise is read
from ``records/consistency_two_features.json`` (space "a", its draws 1 and 2); the script checks that protocol by
recomputing ``fmnist-cd`` (the same bytes as ``fmnist-cd-v2`` there) on those draws. Training minutes come from the
manifests. With ``--json`` the record is written after every model (a rerun skips what it holds: interrupting loses
at most one model's draws). About 25 minutes on one CPU thread at n = 1000.
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from diffusion_course import config, consistency, flow, metrics, pretrained, records

SEEDS = (1000, 2000, 3000)


def _sample(name, model, x_T, labels, k, device, draw, batch=250):
    out = []
    for i in range(0, len(x_T), batch):
        x, y = x_T[i:i + batch].to(device), labels[i:i + batch].to(device)
        if name.startswith("fmnist-cd"):
            out.append(consistency.sample(model, x, steps=k, cond=y, clip_denoised=True,
                                          generator=torch.Generator().manual_seed(draw)).cpu())   # as the two-feature record
        else:
            out.append(flow.sample(model, x, steps=k, cond=y).cpu())
    return torch.cat(out).clamp(-1, 1)


def _minutes(name: str) -> float:
    """CPU minutes of everything a shipped model took to make: its own training (reflow pairs included) plus that of
    every model it starts from (``init_from``) or learns from (``teacher``, reflow ``source``), each counted once."""
    seen, todo, seconds = set(), [name], 0.0
    while todo:
        n = todo.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        m = pretrained.manifest(n)
        info = m.get("metrics", {})
        seconds += info.get("train_wall_seconds", 0.0) + info.get("pairs_seconds_this_run", 0.0)
        recipe = m.get("recipe", {})
        todo += [recipe.get("init_from"), recipe.get("teacher"), (recipe.get("reflow") or {}).get("source")]
    return seconds / 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=3, choices=(1, 2, 3))
    ap.add_argument("--models", default="fmnist-rf,fmnist-2rf,fmnist-cd")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="write the record here (and resume from it)")
    args = ap.parse_args()
    device = config.get_device(args.device)
    n, seeds = args.n, SEEDS[:args.draws]
    rec = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else {}
    if rec and (rec.get("n") != n or rec.get("seeds") != list(seeds)):
        raise SystemExit(f"{args.json} holds n={rec.get('n')}, seeds={rec.get('seeds')}: pass another --json")
    clf = pretrained.load("fmnist-classifier", device=device)
    ref = metrics.reference_images(n, class_balanced=True)
    rec.update(n=n, seeds=list(seeds), floor_balanced=metrics.fid_floor(clf, n, class_balanced=True),
               metric="class-conditional FID, fmnist-classifier features, class-balanced real set of n")
    fids = rec.setdefault("fid", {})
    labels = torch.arange(n) % 10
    t0 = time.perf_counter()
    for name in args.models.split(","):
        model = pretrained.load(name, device=device)
        plan = [(k, s) for k in ((1, 2) if name.startswith("fmnist-cd") else (1, 2, 4)) for s in seeds]
        plan += [] if name.startswith("fmnist-cd") else [(50, seeds[0])]
        for k, seed in plan:
            per_draw = fids.setdefault(name, {}).setdefault(str(k), {})
            if str(seed) in per_draw:
                continue
            x_T = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
            per_draw[str(seed)] = metrics.fid(clf, _sample(name, model, x_T, labels, k, device, seeds.index(seed)), ref)
            print(f"{name} {k} step(s), draw {seed}: FID {per_draw[str(seed)]:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")
    # the teacher's DDIM-50 on the same noise, from the two-feature record; its protocol checked through fmnist-cd
    two = records.load("consistency_two_features")
    teacher = two["fid"]["fmnist-ddpm DDIM-50"]["a"]
    if "fmnist-cd" in fids:
        for k in ("1", "2"):
            ours = [fids["fmnist-cd"][k][str(s)] for s in seeds[:len(teacher)]]
            theirs = two["fid"][f"fmnist-cd-v2 {k}-step"]["a"][:len(ours)]
            if any(abs(a - b) > 1e-3 for a, b in zip(ours, theirs)):
                raise SystemExit(f"fmnist-cd {k}-step differs from the two-feature record ({ours} vs {theirs}): "
                                 "not the same protocol, so its DDIM-50 cannot be reused")
    rec["teacher_ddim50"] = {"draws": teacher, "seeds": list(seeds[:len(teacher)]),
                             "source": "records/consistency_two_features.json, space a"}
    teacher_minutes = _minutes("fmnist-ddpm")          # fmnist-ddpm-v1, then its fine-tune
    rows = [{"name": "fmnist-ddpm DDIM-50", "calls": 50, "mean": statistics.mean(teacher),
             "sd": statistics.stdev(teacher) if len(teacher) > 1 else 0.0, "train_minutes": teacher_minutes}]
    paired = {}
    if {"fmnist-2rf", "fmnist-cd"} <= set(fids):
        for k in ("1", "2"):
            for name in ("fmnist-2rf", "fmnist-cd"):
                vals = [fids[name][k][str(s)] for s in seeds]
                rows.append({"name": f"{name} {k}-step", "calls": int(k), "mean": statistics.mean(vals),
                             "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                             "train_minutes": _minutes(name)})
            d = [fids["fmnist-2rf"][k][str(s)] - fids["fmnist-cd"][k][str(s)] for s in seeds]
            paired[k] = {"mean": statistics.mean(d), "se": statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0,
                         "draws": d}
    rec["vs_consistency"] = {"rows": rows, "paired": paired,
                             "train_minutes_note": "everything each model took to make, teacher and earlier "
                                                   "versions included (init_from, teacher, reflow source; each once)"}
    rec["seconds"] = rec.get("seconds", 0.0) + time.perf_counter() - t0
    rec["device"] = f"{device} ({platform.machine()}, {torch.get_num_threads()} threads)"
    for k in ("1", "2"):
        if k in paired:
            print(f"2-RF − CD at {k} step(s): {paired[k]['mean']:+.2f} ± {paired[k]['se']:.2f} (paired over draws)")
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
