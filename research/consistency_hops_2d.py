"""Multi-hop and sampler-aligned targets on the 2-D mixture: how near the exact consistency map does each get?

    python research/consistency_hops_2d.py [--seeds 0 1 2] [--steps 1500]
                                           [--json research/results/consistency_hops_2d.json]

Chapter 7's 2-D setting (8-Gaussian ring, cosine schedule, exact ε as the teacher, a 20-point DDIM grid, MLP
students of hidden width 128, batch 256): for each hop set and seed, the same student initialisation and data
order distil for ``--steps`` optimiser steps; the score is the mean distance of its 1-step samples to the exact
PF-ODE map from the same 1,000 noise vectors (``consistency.ExactConsistencyFunction``), the same for its 2-step
samples against the exact map's 2-step samples (same noise, same re-noising draws), and for f at the middle of the
grid (t_10, where the 2-step sampler makes its second call) on noised data. The last arm adds sampler-aligned pairs
(``consistency_extensions.ExtendedDistillConfig.aligned_hop`` = 10, half of each batch) to hops (1, 2, 4, 8); every
arm distils with ``consistency_extensions.distill`` (hops (1,) alone is the paper's loss). Seconds on CPU.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import diffusion_course as dc
from diffusion_course import consistency as C
from diffusion_course import consistency_extensions as CX
from diffusion_course.nn import MLPDenoiser

HOP_SETS = [(1,), (1, 2, 4, 8), (1, 2, 4, 8, 16)]
ARMS = [(str(h), {"teacher_hops": h}) for h in HOP_SETS] + [
    ("(1, 2, 4, 8) + aligned 10 @ 0.5", {"teacher_hops": (1, 2, 4, 8), "aligned_hop": 10, "aligned_fraction": 0.5})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be >= 1")

    s = dc.schedules.NoiseSchedule.cosine(1000)
    mix = dc.gmm.GaussianMixture.ring(k=8, radius=2.0, std=0.25)
    oracle, exact = mix.oracle_model(s), C.ExactConsistencyFunction(mix, s)
    x_T = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3))
    f_star = exact(x_T.double(), 999).float()
    two_star = C.sample(exact, x_T.double(), steps=2, generator=torch.Generator().manual_seed(4),
                        clip_denoised=False).float()
    data = mix.sample(20000, generator=torch.Generator().manual_seed(5))[0].float()
    base = dict(steps=args.steps, batch_size=256, lr=2e-3, warmup=50, grid_size=20, distance="pseudo-huber",
                p_uncond=0.0, clip_denoised=False, ema_decay=0.99, sigma_data=1.4)

    rows = {}
    for name, arm in ARMS:
        one_step, two_step, middle, seconds = [], [], [], []
        for seed in args.seeds:
            torch.manual_seed(seed)
            student = C.ConsistencyModel(MLPDenoiser(dim=2, hidden=128, depth=3), s, grid_size=20, head="raw",
                                         sigma_data=1.4)
            t0 = time.perf_counter()
            res = CX.distill(oracle, s, data, None, CX.ExtendedDistillConfig(**base, **arm, seed=seed),
                             student=student, device="cpu", progress=False)
            seconds.append(time.perf_counter() - t0)
            one_step.append((C.sample(res.ema, x_T, steps=1, clip_denoised=False) - f_star).norm(dim=1).mean().item())
            two = C.sample(res.ema, x_T, steps=2, generator=torch.Generator().manual_seed(4), clip_denoised=False)
            two_step.append((two - two_star).norm(dim=1).mean().item())
            t_mid = int(res.ema.grid[10])
            tt = torch.full((1000,), t_mid)
            x_mid = dc.forward.q_sample(data[:1000], tt, s, torch.randn(1000, 2, generator=torch.Generator().manual_seed(9)))
            middle.append((res.ema(x_mid, tt, None) - exact(x_mid.double(), t_mid).float()).norm(dim=1).mean().item())
        rows[name] = {"one_step": one_step, "two_step": two_step, "f_at_t10": middle, "seconds": seconds}
        print(f"hops {name:<32} 1-step distance " + " / ".join(f"{e:.3f}" for e in one_step)
              + f" (mean {statistics.mean(one_step):.3f})   2-step " + " / ".join(f"{e:.3f}" for e in two_step)
              + "   f(x_t10) " + " / ".join(f"{e:.3f}" for e in middle)
              + f"   {statistics.mean(seconds):.0f} s per run", flush=True)
    best = min(rows, key=lambda h: statistics.mean(rows[h]["one_step"]))
    every = all(a < b for a, b in zip(rows[str(HOP_SETS[2])]["one_step"], rows[str(HOP_SETS[1])]["one_step"]))
    print(f"nearest the exact map: hops {best}; adding k = 16 to (1, 2, 4, 8) is",
          "nearer on every seed" if every else "NOT nearer on every seed")
    aligned, plain = rows[ARMS[3][0]]["two_step"], rows[str(HOP_SETS[1])]["two_step"]
    print("adding sampler-aligned pairs to (1, 2, 4, 8) is", "nearer" if all(a < b for a, b in zip(aligned, plain))
          else "NOT nearer", "at 2 steps on every seed")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "rows": rows,
                                         "threads": torch.get_num_threads()}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
