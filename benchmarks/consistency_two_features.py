"""Select on one metric, confirm on another: the shipped consistency student and its lineage, scored in two feature
spaces built independently of each other (chapter 7's last table, and the choice of ``fmnist-cd``).

    python benchmarks/consistency_two_features.py [--n 1000] [--draws 2] [--device cpu]
                                                  [--json diffusion_course/records/consistency_two_features.json]

Every model in ``--models`` (default: ``fmnist-cd-v1`` … ``fmnist-cd-v5`` from data/lineage; ``fmnist-cd`` is v2's bytes) samples
at 1 and 2 steps, the teacher ``fmnist-ddpm`` with DDIM-50, all from the same noise and exactly class-balanced labels,
for each of ``--draws`` noise draws; each sample set is scored by FID against one class-balanced real set of n in the
features of ``fmnist-classifier`` (the course's FID, on which every stage of the student was selected) and of
``fmnist-classifier-b`` (another architecture, seed, optimiser and augmentation), next to each space's balanced floor.
The record holds per-draw FIDs and the paired ratio to the teacher's DDIM-50 in each space. About 2 minutes per draw
for the students and 3.5 for the teacher at n = 1000 on one CPU thread. Nothing is written without ``--json``.
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from diffusion_course import config, consistency, metrics, pretrained, sampling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--models", default="fmnist-cd-v1,fmnist-cd-v2,fmnist-cd-v3,fmnist-cd-v4,fmnist-cd-v5")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="write the record here")
    args = ap.parse_args()
    device = config.get_device(args.device)
    n = args.n
    spaces = {"a": pretrained.load("fmnist-classifier", device=device),
              "b": pretrained.load("fmnist-classifier-b", device=device)}
    ref = metrics.reference_images(n, class_balanced=True)
    floors = {k: metrics.fid_floor(clf, n, class_balanced=True) for k, clf in spaces.items()}
    teacher = pretrained.load("fmnist-ddpm", device=device)
    students = {name: pretrained.load(name, device=device) for name in args.models.split(",")}
    labels = torch.arange(n) % 10
    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    for draw in range(args.draws):
        x_T = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(1000 * (draw + 1)))
        sets = {"fmnist-ddpm DDIM-50": torch.cat([sampling.ddim_sample(
            teacher, x_T[i:i + 250].to(device), teacher.schedule, steps=50, cond=labels[i:i + 250].to(device),
            clip_denoised=True, progress=False).cpu() for i in range(0, n, 250)])}
        for name, cm in students.items():
            for k in (1, 2):
                sets[f"{name} {k}-step"] = torch.cat([consistency.sample(
                    cm, x_T[i:i + 250].to(device), steps=k, cond=labels[i:i + 250].to(device), clip_denoised=True,
                    generator=torch.Generator().manual_seed(draw)).cpu() for i in range(0, n, 250)])
        for key, xs in sets.items():
            for space, clf in spaces.items():
                rows.setdefault(key, {}).setdefault(space, []).append(metrics.fid(clf, xs.clamp(-1, 1), ref))
        print(f"draw {draw + 1}/{args.draws} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    teacher_key = "fmnist-ddpm DDIM-50"
    print(f"{'':<24}" + "".join(f"{'FID ' + s:>12}{'÷ DDIM-50':>11}" for s in spaces))
    for key, by_space in rows.items():
        cells = ""
        for s in spaces:
            ratios = [a / b for a, b in zip(by_space[s], rows[teacher_key][s])]
            cells += f"{statistics.mean(by_space[s]):>12.2f}{statistics.mean(ratios):>11.3f}"
        print(f"{key:<24}{cells}")
    print("floors (balanced, n = %d): " % n + ", ".join(f"{s} {v:.2f}" for s, v in floors.items()))
    if args.json:
        out = {"what": "FID of the consistency students and the teacher's DDIM-50 in two independent feature spaces",
               "produced_by": "benchmarks/consistency_two_features.py", "n": n, "draws": args.draws,
               "floors": floors, "fid": rows, "device": f"{device} ({platform.machine()}, "
               f"{torch.get_num_threads()} threads)", "seconds": time.perf_counter() - t0,
               "date": time.strftime("%Y-%m-%d")}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
