"""FID vs network calls for a consistency model, DDIM and DPM-Solver++(2M) on its teacher; a latency table.

    python benchmarks/consistency_nfe.py [--n 1000] [--model fmnist-cd | --checkpoint PATH | --live-steps 100]
                                         [--device cpu] [--json diffusion_course/records/consistency_nfe.json]

Everything is class-conditional with exactly balanced labels, from the same noise, against a class-balanced real set
of n and next to the class-balanced floor (two disjoint balanced real sets of n), in the course classifier's features.
The consistency model is the shipped ``fmnist-cd`` (default), a state_dict saved by ``consistency.distill`` (the EMA,
``--checkpoint``; a ``*.train.pt`` training state works too), or a student distilled live for ``--live-steps`` steps.
Prints the FID table with the issue-16 targets (2-step within 1.5× of the teacher's DDIM-50, 1-step within 3×,
1-step ≥ 40× faster than DDIM-50 per image) and the per-image wall time at batch 1 and batch 256. With ``--seeds K``
the target ratios are paired ones (student and teacher from the same noise) averaged over K noise draws, with their
spread: at n = 1000 one draw moves an FID by a few tenths, as much as the margin a 1.5× verdict may have.
``--json diffusion_course/records/consistency_nfe.json`` replaces the record chapter 7 and
``research/consistency_stage.py`` read (``records.load("consistency_nfe")``); nothing is written without ``--json``.
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from diffusion_course import checkpoints, config, consistency, evaluation, pretrained, sampling
from diffusion_course import consistency_extensions as CX
from diffusion_course.data import load_fashion_mnist


def _positive(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _steps(text):
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step counts, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"step counts must be positive, got {text!r}")
    return out


def load_student(args, teacher, schedule, device):
    if args.checkpoint:
        cm = consistency.ConsistencyModel.from_teacher(teacher, schedule, grid_size=args.grid_size)
        state = checkpoints.load(args.checkpoint, verify=False)
        state = state.get("ema", state) if isinstance(state, dict) and "ema" in state else state
        cm.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        return cm.to(device).eval(), f"checkpoint {Path(args.checkpoint).name}"
    if args.live_steps:
        x, y = load_fashion_mnist("train")
        cfg = consistency.DistillConfig(steps=args.live_steps, batch_size=32, lr=2e-4, warmup=20, grid_size=args.grid_size)
        res = consistency.distill(teacher, schedule, x, y, cfg, device=device)
        return res.student.eval(), f"live student ({args.live_steps} steps, online weights)"
    if not pretrained.path_for(args.model).exists():
        raise SystemExit(f"{pretrained.path_for(args.model)} is missing: pass --checkpoint PATH or --live-steps N "
                         f"(or run `python -m diffusion_course.train {args.model}`)")
    return pretrained.load(args.model, device=device), args.model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=_positive, default=1000)
    ap.add_argument("--model", default="fmnist-cd")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--live-steps", type=_positive, default=None)
    ap.add_argument("--grid-size", type=_positive, default=20)
    ap.add_argument("--cm-steps", type=_steps, default=(1, 2, 4))
    ap.add_argument("--ddim-steps", type=_steps, default=(1, 2, 4, 8, 20, 50))
    ap.add_argument("--dpm-steps", type=_steps, default=(2, 4, 8, 20))
    ap.add_argument("--ode-solvers", default="ddim,heun",
                    help="also score the teacher's PF-ODE solved down the student's grid with these teacher steps "
                         "(the end points a student distilled with that solver learns: its ceiling); '' skips it")
    ap.add_argument("--repeats", type=_positive, default=5, help="interleaved timing rounds at batch 1")
    ap.add_argument("--seeds", type=_positive, default=1,
                    help="noise draws for the target ratios: the 1-/2-step and DDIM-50 FIDs are re-measured on "
                         "seeds-1 more draws of the noise (same labels and real set), and the ratios given as "
                         "mean ± sd over draws")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    if 50 not in args.ddim_steps:
        args.ddim_steps = tuple(sorted(set(args.ddim_steps) | {50}))   # the teacher's reference line
    solvers = tuple(v.strip() for v in args.ode_solvers.split(",") if v.strip())
    bad = [v for v in solvers if v not in CX.SOLVERS]
    if bad:
        raise SystemExit(f"--ode-solvers: unknown {bad}; choose from {CX.SOLVERS}")
    device = config.get_device(args.device)
    torch.manual_seed(0)
    teacher_name = pretrained.RECIPES["fmnist-cd"].teacher   # the student is judged against its own teacher
    teacher = pretrained.load(teacher_name, device=device)
    schedule = teacher.schedule
    cm, cm_name = load_student(args, teacher, schedule, device)
    clf = pretrained.load("fmnist-classifier", device=device)
    t0 = time.perf_counter()
    res = evaluation.evaluate_consistency_samplers(cm, n=args.n, steps=args.cm_steps, teacher=teacher,
                                                   teacher_schedule=schedule, ddim_steps=args.ddim_steps,
                                                   dpm_steps=args.dpm_steps, batch_size=256, classifier=clf,
                                                   progress=True, ode_solvers=solvers)
    floor = res["floor_balanced"]
    print(f"{cm_name} vs its teacher {teacher_name}; n = {args.n}, device {device} ({platform.machine()}, "
          f"{torch.get_num_threads()} threads); measured in {time.perf_counter() - t0:.0f} s")
    print(f"{'sampler':<24} {'NFE':>4} {'FID':>7} {'FID/floor':>9} {'FID/DDIM-50':>11} {'class acc':>9} {'ms/img@256':>10}")
    rows = ([("consistency", k, f"cm{k}") for k in args.cm_steps] + [("DDIM", k, f"ddim{k}") for k in args.ddim_steps]
            + [("DPM-Solver++(2M)", k, f"dpm{k}") for k in args.dpm_steps]
            + [(f"grid ODE ({v})", (cm.grid.numel() - 1) * (2 if v == "heun" else 1), f"ode_{v}")
               for v in solvers])
    ref = res["fid_ddim50"]
    for name, k, key in rows:
        label = name if name.startswith("grid ODE") else f"{name}-{k}"
        print(f"{label:<24} {k:>4} {res['fid_' + key]:>7.2f} {res['fid_' + key] / floor:>9.2f} "
              f"{res['fid_' + key] / ref:>11.2f} {res['class_accuracy_' + key]:>9.1%} "
              f"{1000 * res['seconds_' + key] / args.n:>10.2f}")
    print(f"floor (two class-balanced real sets of {args.n}): {floor:.2f}")
    if solvers:
        print("(a student converges to the end points of the teacher steps it was distilled with: the 'grid ODE' "
              "rows are its ceiling)")

    one = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(1)).to(device)
    lab = torch.tensor([3], device=device)
    fns = {"cm1": lambda x: consistency.sample(cm, x, steps=1, cond=lab, clip_denoised=True),
           "cm2": lambda x: consistency.sample(cm, x, steps=2, cond=lab, clip_denoised=True),
           "ddim4": lambda x: sampling.ddim_sample(teacher, x, schedule, steps=4, cond=lab, progress=False),
           "dpm8": lambda x: sampling.dpm_solver_2m_sample(teacher, x, schedule, steps=8, cond=lab, progress=False),
           "ddim50": lambda x: sampling.ddim_sample(teacher, x, schedule, steps=50, cond=lab, progress=False)}
    # interleaved rounds: timing each sampler in its own block folds the machine's drift into the ratios
    rounds = evaluation.interleaved_seconds_per_image(fns, one, rounds=args.repeats)
    b1 = {k: statistics.median(v) for k, v in rounds.items()}
    per_round = {k: sorted(r / c for r, c in zip(rounds["ddim50"], v)) for k, v in rounds.items()}
    print(f"\n{'latency':<12} {'ms/image, batch 1':>18} {'ms/image, batch 256':>20} "
          f"{'× faster than DDIM-50 (b=1)':>28} {'range over rounds':>18}")
    for k in fns:
        b256 = 1000 * res[f"seconds_{k}"] / args.n if f"seconds_{k}" in res else float("nan")
        q = per_round[k]
        print(f"{k:<12} {1000 * b1[k]:>18.2f} {b256:>20.3f} {statistics.median(q):>28.1f} "
              f"{q[0]:>8.1f}–{q[-1]:.1f}")
    print(f"(median over {args.repeats} interleaved rounds, every sampler once per round; the speed-up is the median "
          f"of the per-round ratios)")
    r1, r2 = res["fid_cm1"] / ref, res["fid_cm2"] / ref
    draws = [{"seed": 0, **{k: res[f"fid_{k}"] for k in ("cm1", "cm2", "ddim50")}}]
    for seed in range(1000, 1000 * args.seeds, 1000):   # far from 0 and 1, the main draw's noise and sampler seeds
        extra = evaluation.evaluate_consistency_samplers(cm, n=args.n, steps=(1, 2), seed=seed, teacher=teacher,
                                                         teacher_schedule=schedule, ddim_steps=(50,), batch_size=256,
                                                         classifier=clf)
        draws.append({"seed": seed, **{k: extra[f"fid_{k}"] for k in ("cm1", "cm2", "ddim50")}})
    if len(draws) > 1:
        print(f"\nper noise draw (n = {args.n} each; the same labels and real set):")
        for d in draws:
            print(f"  seed {d['seed']:>5}: 1-step {d['cm1']:6.2f}, 2-step {d['cm2']:6.2f}, DDIM-50 {d['ddim50']:5.2f} → "
                  f"2-step {d['cm2'] / d['ddim50']:.3f}×, 1-step {d['cm1'] / d['ddim50']:.3f}×")
        q2 = [d["cm2"] / d["ddim50"] for d in draws]
        q1 = [d["cm1"] / d["ddim50"] for d in draws]
        r2, r1 = statistics.mean(q2), statistics.mean(q1)
        print(f"  mean over {len(draws)} draws: 2-step {r2:.3f}× ± {statistics.stdev(q2):.3f} (sd), "
              f"1-step {r1:.3f}× ± {statistics.stdev(q1):.3f}; the targets below use these means")
    speed = statistics.median(per_round["cm1"])
    print(f"\ntargets: 2-step {r2:.2f}× DDIM-50 → {'met' if r2 <= 1.5 else 'NOT met'} (≤ 1.5×); "
          f"1-step {r1:.2f}× → {'met' if r1 <= 3 else 'NOT met'} (≤ 3×); "
          f"1-step {speed:.0f}× faster per image at batch 1 → {'met' if speed >= 40 else 'NOT met'} (≥ 40×)")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model": cm_name, "device": str(device), "threads": torch.get_num_threads(),
                                   "date": time.strftime("%Y-%m-%d"), "metrics": res, "draws": draws,
                                   "ratio_cm2": r2, "ratio_cm1": r1,
                                   "seconds_per_image_batch1": b1, "seconds_per_image_batch1_rounds": rounds,
                                   "speedup_cm1_over_ddim50_batch1": speed}, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
