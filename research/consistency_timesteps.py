"""Choose the timesteps of multistep consistency sampling by greedy search (Song et al. 2023, Sec. 6 / App. C).

    python research/consistency_timesteps.py [--model fmnist-cd] [--n 1000] [--max-steps 4] [--stride 1]
                                             [--json diffusion_course/records/consistency_timesteps.json]

A k-step sample evaluates f at t_1 = T−1 and k−1 re-noised levels. The default (``consistency.multistep_timesteps``)
spaces them evenly on the grid; the paper instead picks them greedily: the best t_2 for 2 steps by FID, then, with
it fixed, the best t_3 below it, and so on. Selection here is **held apart from the evaluation**: candidates are
scored against class-balanced *training* images with noise seed ``--select-seed``; the winners and the default are
then scored with the evaluation protocol of ``evaluation.evaluate_consistency_samplers`` (test-set reference, noise
seed 0, the same balanced labels), which is what the chapter and ``benchmarks/consistency_nfe.py`` report.
"""
import argparse
import json
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffusion_course import consistency, metrics, pretrained


def fid_of(cm, clf, ts, x_T, labels, ref, batch_size=250, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = torch.cat([consistency.sample(cm, x_T[i:i + batch_size], steps=len(ts), timesteps=torch.tensor(ts),
                                       cond=labels[i:i + batch_size], generator=g, clip_denoised=True)
                    for i in range(0, x_T.shape[0], batch_size)])
    return metrics.fid(clf, xs, ref)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="fmnist-cd")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--max-steps", type=int, default=4)
    ap.add_argument("--stride", type=int, default=1, help="try every stride-th grid point")
    ap.add_argument("--select-seed", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.max_steps < 2:
        raise SystemExit("--max-steps must be at least 2")
    if args.stride < 1 or args.n < 2:
        raise SystemExit(f"--stride must be >= 1 and --n >= 2, got {args.stride} and {args.n}")

    torch.manual_seed(0)
    cm = pretrained.load(args.model, device="cpu")
    clf = pretrained.load("fmnist-classifier", device="cpu")
    grid = cm.grid.tolist()
    n = args.n
    labels = torch.arange(n) % 10
    t0 = time.perf_counter()

    # selection set: other noise, training-set reference
    x_sel = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(args.select_seed))
    ref_sel = metrics.reference_images(n, split="train", class_balanced=True)
    chosen = [grid[-1]]
    search = {}
    for k in range(2, args.max_steps + 1):
        cands = [t for t in grid[1:-1][::-1] if t < chosen[-1]][::args.stride]
        scores = {}
        for t in tqdm(cands, desc=f"{k}-step candidates"):
            scores[t] = fid_of(cm, clf, chosen + [t], x_sel, labels, ref_sel, seed=args.select_seed + 1)
        best = min(scores, key=scores.get)
        chosen.append(best)
        search[k] = {"candidates": {str(t): round(v, 3) for t, v in scores.items()}, "best": best}
        default = consistency.multistep_timesteps(cm, k).tolist()
        print(f"{k} steps: greedy t_{k} = {best} (selection FID {scores[best]:.2f}); default timesteps {default}"
              + (f" scored {scores[default[-1]]:.2f}" if default[:-1] == chosen[:-1] and default[-1] in scores else ""))

    # evaluation protocol (as evaluation.evaluate_consistency_samplers): seed-0 noise, test-set reference
    x_ev = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    ref_ev = metrics.reference_images(n, class_balanced=True)
    floor = metrics.fid_floor(clf, n, class_balanced=True)
    evals = {}
    print(f"\nheld-out evaluation (n = {n}, test reference, class-balanced floor {floor:.2f}):")
    print(f"{'steps':>5}  {'default timesteps':<28}{'FID':>7}   {'greedy timesteps':<28}{'FID':>7}")
    for k in range(2, args.max_steps + 1):
        d = consistency.multistep_timesteps(cm, k).tolist()
        c = chosen[:k]
        fd = fid_of(cm, clf, d, x_ev, labels, ref_ev)
        fc = fid_of(cm, clf, c, x_ev, labels, ref_ev)
        evals[k] = {"default": d, "fid_default": round(fd, 3), "greedy": c, "fid_greedy": round(fc, 3)}
        print(f"{k:>5}  {str(d):<28}{fd:>7.2f}   {str(c):<28}{fc:>7.2f}")
    wall = time.perf_counter() - t0
    print(f"\n{wall:.0f} s on {torch.get_num_threads()} CPU thread(s)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "n": n, "select_seed": args.select_seed, "stride": args.stride,
            "floor_balanced": round(floor, 3), "search": search, "evaluation": evals, "wall_s": round(wall, 1),
            "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"}, indent=1) + "\n")


if __name__ == "__main__":
    main()
