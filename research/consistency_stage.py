"""Score a candidate consistency student against the shipped one: is a further training stage worth shipping?

    python research/consistency_stage.py --checkpoint PATH [--what "..."] [--recipe-json FILE]
                                         [--json diffusion_course/records/consistency_<stage>.json]
    # train the stage first (resumable: the training state is saved at --state every 200 steps), then score it
    python research/consistency_stage.py --train '{"teacher_hops": [1, 2, 4, 8], "steps": 4000, ...}' \
        [--init-from fmnist-cd] --state runs/hops/state.pt --checkpoint runs/hops/ema_final.pt --what "..." --json ...

PATH is an EMA ``state_dict`` (or a ``*.train.pt`` state; its EMA is used) of a student with the shipped
``fmnist-cd``'s architecture. ``--train`` distils it first: ``recipes.FMNIST_CD_RECIPE`` overridden by the given
fields (any of ``consistency_extensions.ExtendedDistillConfig``'s, e.g. ``teacher_hops``, ``aligned_hop``), run by
``consistency_extensions.distill`` from the consistency checkpoint ``--init-from`` (shipped, or an earlier version in
``data/lineage/``). Both students are scored the same three ways, on the same noise and labels:

* the manifest's protocol (``evaluation.evaluate_consistency_samplers``: n = 1000, noise seed 0, class-balanced) at
  1 / 2 / 4 steps;
* the issue-16 2-step target as paired draws: the 2-step FID on the noise seeds of the ``consistency_nfe`` record's
  draws (``records.load("consistency_nfe")``, written by ``benchmarks/consistency_nfe.py --seeds 3 --json ...``),
  divided by the teacher's DDIM-50 FID on the same noise that record holds (so the teacher is not re-sampled; the
  record must come from the same teacher);
* the fit gap: real training images noised to t = 249 / 499 / 749, the student's f(x_t, t) against the end of the
  teacher's DDIM chain from the same x_t down the grid (``consistency_extensions.teacher_chain``, the student's
  training target): RMS difference and both FIDs.

It prints a verdict: ship only if the candidate's paired 2-step mean beats the shipped one's by more than the spread.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from diffusion_course import checkpoints, config, data, evaluation, forward, metrics, pretrained, recipes, records
from diffusion_course import consistency_extensions as CX


def load_candidate(path: str):
    cm = pretrained.load("fmnist-cd", device="cpu")
    state = checkpoints.load(path, verify=False)
    if isinstance(state, dict) and "ema" in state:
        state = state["ema"]
    cm.load_state_dict({k: v.float() for k, v in state.items()})
    return cm.eval()


def fit_gap(cm, teacher, schedule, clf, n: int = 1000, ts=(249, 499, 749), seed: int = 21) -> dict:
    x0 = metrics.reference_images(n, split="train", class_balanced=True)
    y = torch.arange(n) % 10
    ref = metrics.reference_images(n, class_balanced=True)
    g = torch.Generator().manual_seed(seed)
    grid = cm.grid.cpu()
    out = {}
    for t in ts:
        x_t = forward.q_sample(x0, torch.full((n,), t), schedule, torch.randn(x0.shape, generator=g))
        below = grid[grid <= t]
        with torch.no_grad():
            f = torch.cat([cm(x_t[i:i + 250], torch.full((len(x_t[i:i + 250]),), t), y[i:i + 250]).clamp(-1, 1)
                           for i in range(0, n, 250)])
        chain = torch.cat([CX.teacher_chain(teacher, x_t[i:i + 250], schedule, below, y[i:i + 250])
                           for i in range(0, n, 250)])
        out[str(t)] = {"rms": (f - chain).pow(2).mean().sqrt().item(), "fid_f": metrics.fid(clf, f, ref),
                       "fid_target": metrics.fid(clf, chain, ref)}
    return out


def start_student(init_from: str, teacher_name: str, cfg):
    """The student a stage continues: the consistency checkpoint ``init_from`` (EMA weights), which must have been
    distilled from this very teacher (its manifest records the teacher's sha256) with the stage's grid and
    parameterisation (``grid_size``, ``sigma_data``, ``sigma_cap``: the candidate is scored as a ``fmnist-cd``)."""
    recipe = recipes.get(init_from)
    if not isinstance(recipe, recipes.ConsistencyRecipe) or recipe.teacher != teacher_name:
        raise SystemExit(f"--init-from {init_from!r} is not a consistency student of {teacher_name!r}")
    student = pretrained.load(init_from, device="cpu")
    differ = {k: (student.config[k], getattr(cfg, k)) for k in ("grid_size", "sigma_data", "sigma_cap")
              if student.config[k] != getattr(cfg, k)}
    if differ:
        raise SystemExit(f"--init-from {init_from!r} and the stage's recipe differ in {differ} (theirs, the stage's)")
    start_teacher = pretrained.manifest(init_from).get("metrics", {}).get("teacher_sha256")
    teacher_sha = pretrained.manifest(teacher_name).get("sha256")
    if start_teacher and teacher_sha and start_teacher != teacher_sha:
        raise SystemExit(f"{init_from!r} was distilled from another {teacher_name!r} (sha256 {start_teacher[:12]}…, "
                         f"the shipped one is {teacher_sha[:12]}…)")
    return student


def train(args) -> dict:
    """Run the stage's distillation (resumable at --state) and write its EMA to --checkpoint; return its recipe."""
    out = Path(args.checkpoint).resolve()
    if any(out.is_relative_to(d.resolve()) for d in (checkpoints.CHECKPOINT_DIR, checkpoints.LINEAGE_DIR)):
        raise SystemExit(f"--checkpoint {out} is inside the shipped checkpoints or their lineage; write the candidate "
                         "elsewhere")
    if out.exists():
        raise SystemExit(f"{out} exists; score it without --train, or choose another --checkpoint")
    if not args.state:
        raise SystemExit("--train needs --state (the resumable training state)")
    try:
        overrides = json.loads(args.train)
    except ValueError as err:
        raise SystemExit(f"--train must be a JSON object of ExtendedDistillConfig fields: {err}") from None
    known = set(CX.ExtendedDistillConfig.__dataclass_fields__)
    unknown = set(overrides) - known if isinstance(overrides, dict) else None
    if unknown is None or unknown:
        raise SystemExit(f"--train must be a JSON object of ExtendedDistillConfig fields; unknown: "
                         f"{sorted(unknown or [])}")
    fields = {**recipes.FMNIST_CD_RECIPE, **overrides}
    teacher_name = pretrained.RECIPES["fmnist-cd"].teacher
    cfg = CX.config_from_dict({**fields, "checkpoint_path": args.state})
    device = config.get_device()
    t0 = time.perf_counter()
    teacher = pretrained.load(teacher_name, device=device)
    student = start_student(args.init_from, teacher_name, cfg)
    x, y = data.load_fashion_mnist("train")
    result = CX.distill(teacher, teacher.schedule, x, y, cfg, student=student, device=device)
    if result.interrupted:
        raise SystemExit(f"interrupted at step {result.step} of {cfg.steps}; the state is saved at {args.state}: run "
                         "the same command again to resume")
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save(result.ema.state_dict(), out)
    # wall time of this process only: a resumed run reports the part it ran
    return {"teacher": teacher_name, "init_from": args.init_from, "distill": fields,
            "train_wall_seconds_this_process": time.perf_counter() - t0, "threads": torch.get_num_threads()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--what", default="candidate student")
    ap.add_argument("--recipe-json", default=None, help="a JSON file with the candidate's recipe, stored with the result")
    ap.add_argument("--train", default=None, metavar="JSON",
                    help="train the candidate first: recipes.FMNIST_CD_RECIPE overridden by these fields "
                         "(ExtendedDistillConfig's), continuing --init-from, its EMA written to --checkpoint")
    ap.add_argument("--init-from", default="fmnist-cd",
                    help="the consistency checkpoint the stage continues (shipped or lineage, e.g. fmnist-cd-v4)")
    ap.add_argument("--state", default=None, help="training state (saved as it goes, resumed when present)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.n < 250 or args.n % 250:
        raise SystemExit(f"--n must be a positive multiple of 250, got {args.n}")
    bench = records.load("consistency_nfe")
    draws = bench.get("draws", [])
    if len(draws) < 2 or bench.get("metrics", {}).get("n") != args.n:
        raise SystemExit(f"the consistency_nfe record ({records.path('consistency_nfe')}) needs >= 2 paired draws at "
                         "this --n (python benchmarks/consistency_nfe.py --seeds 3 --json "
                         "diffusion_course/records/consistency_nfe.json)")
    recipe = json.loads(Path(args.recipe_json).read_text()) if args.recipe_json else None
    if args.train:
        recipe = train(args)
    t0 = time.perf_counter()
    teacher = pretrained.load(pretrained.RECIPES["fmnist-cd"].teacher, device="cpu")
    schedule = teacher.schedule
    clf = pretrained.load("fmnist-classifier", device="cpu")
    models = {"shipped fmnist-cd": pretrained.load("fmnist-cd", device="cpu"), args.what: load_candidate(args.checkpoint)}
    rows, paired, gaps = {}, {}, {}
    for name, cm in models.items():
        r = evaluation.evaluate_consistency_samplers(cm, n=args.n, steps=(1, 2, 4), classifier=clf)
        rows[name] = {f"fid_cm{k}": r[f"fid_cm{k}"] for k in (1, 2, 4)}
        q = []
        for d in draws:
            fid2 = r["fid_cm2"] if d["seed"] == 0 else \
                evaluation.evaluate_consistency_samplers(cm, n=args.n, steps=(2,), seed=d["seed"],
                                                         classifier=clf)["fid_cm2"]
            q.append(fid2 / d["ddim50"])
        paired[name] = {"ratios": q, "mean": statistics.mean(q), "sd": statistics.stdev(q)}
        gaps[name] = fit_gap(cm, teacher, schedule, clf, n=args.n)
        print(f"{name}: FID 1/2/4 steps " + " / ".join(f"{rows[name][f'fid_cm{k}']:.2f}" for k in (1, 2, 4))
              + f"; paired 2-step ÷ DDIM-50 {paired[name]['mean']:.3f} ± {paired[name]['sd']:.3f}; fit gap RMS "
              + " / ".join(f"{gaps[name][t]['rms']:.4f}" for t in gaps[name]) + " at t = 249 / 499 / 749", flush=True)
    base, cand = paired["shipped fmnist-cd"], paired[args.what]
    diffs = [c - b for c, b in zip(cand["ratios"], base["ratios"])]
    better = statistics.mean(diffs) < -statistics.stdev(diffs) if len(diffs) > 1 else False
    verdict = (f"paired 2-step ratio {cand['mean']:.3f} vs shipped {base['mean']:.3f} (difference per draw "
               + ", ".join(f"{d:+.3f}" for d in diffs) + f") → {'ship it' if better else 'do NOT ship'}; "
               f"target ≤ 1.5× {'met' if cand['mean'] <= 1.5 else 'NOT met'} by the candidate")
    print(verdict)
    out = {"what": args.what, "rows": rows, "paired_2step_over_ddim50": paired, "fit_gap_rms_fid": gaps,
           "verdict": verdict, "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}
    if recipe is not None:
        out["recipe"] = recipe
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
