"""How slim can the latent U-Net be? Step cost against the pixel model, and the FID each width reaches.

    python research/latent_unet_width.py [--widths 32,48,64] [--steps 6000] [--n 1000] [--threads 1] [--timing-only]
                                         [--json research/results/latent_unet_width.json]

Chapter 5's target asks for a latent training step ≥ 4× cheaper than the pixel model's (``fmnist-ddpm``'s network,
which already works at 14×14 behind its patch-2 stem). The latent U-Net shipped when this screen ran had channels
(64, 128, 128); its result moved ``fmnist-ldm`` to (32, 64, 64), trained for twice the steps. The screen trains
``fmnist-ldm``'s recipe (batch 32, 20 % label dropout, log-SNR-normal t, EMA) for ``--steps`` (6,000: the old length) on
the shipped ``fmnist-vae``'s cached latents with channels (w, 2w, 2w) for each width w, then prints per width: one
training step's seconds next to the pixel model's (same batch, same process, ``profiling.train_step_seconds``), FLOPs
per forward, and class-conditional FID (n, DDIM-50, class-balanced labels vs the class-balanced floor), with the decoder's
class-balanced reconstruction FID as the cap. Nothing is saved but the JSON.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from diffusion_course import evaluation, latent, pretrained, profiling, training
from diffusion_course.nn import count_parameters


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="32,48,64")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timing-only", action="store_true", help="only the step times, no training")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    if not widths or min(widths) < 8 or any(w % 8 for w in widths):
        raise SystemExit("--widths must be multiples of 8 (GroupNorm groups), e.g. 32,48,64")
    if args.steps < 1 or args.n < 2 or args.batch < 1:
        raise SystemExit(f"--steps and --batch must be >= 1 and --n >= 2, got {args.steps}, {args.batch}, {args.n}")

    recipe = pretrained.RECIPES["fmnist-ldm"]
    vae = pretrained.load("fmnist-vae", device="cpu")
    vm = pretrained.manifest("fmnist-vae").get("metrics", {})
    latents, y = latent.encode_training_set(vae, device="cpu")
    scale = latent.fit_scale_factor(latents)
    schedule = pretrained.schedule_for("fmnist-ldm")
    shape = tuple(latents.shape[1:])
    # every step time is taken up front, back to back (pixel before and after the latent nets), so the ratios
    # compare like with like even when the machine's load changes during the long training part
    pixel_net = pretrained.build("fmnist-ddpm")
    nets = {w: pretrained.build_denoiser("unet", {**recipe.model, "channels": (w, 2 * w, 2 * w)}) for w in widths}
    pixel_before = profiling.train_step_seconds(pixel_net, (1, 28, 28), args.batch)
    step_times = {w: profiling.train_step_seconds(net, shape, args.batch) for w, net in nets.items()}
    pixel_after = profiling.train_step_seconds(pixel_net, (1, 28, 28), args.batch)
    pixel_step = (pixel_before + pixel_after) / 2
    out = {"steps": args.steps, "batch": args.batch, "n": args.n, "threads": args.threads,
           "pixel_step_s": pixel_step, "pixel_step_s_before_after": [pixel_before, pixel_after],
           "vae_fid_reconstruction_balanced": vm.get("fid_reconstruction_balanced"), "widths": {}}
    print(f"pixel fmnist-ddpm network: {pixel_before:.3f} / {pixel_after:.3f} s per training step at batch "
          f"{args.batch} (before / after timing the latent nets)")
    for w in widths:
        print(f"channels ({w}, {2 * w}, {2 * w}): step {step_times[w]:.3f} s → {pixel_step / step_times[w]:.2f}× "
              f"cheaper than the pixel model's (target ≥ 4×), {profiling.flops_per_forward(nets[w], shape) / 1e6:.0f} "
              f"MFLOPs per forward", flush=True)
    if args.timing_only:
        out["widths"] = {w: {"step_s": step_times[w], "step_speedup_vs_pixel": pixel_step / step_times[w]}
                         for w in widths}
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        return
    for w in widths:
        net = nets[w]
        step_s = step_times[w]
        flops = profiling.flops_per_forward(net, shape)
        cfg = training.TrainConfig(**{**recipe.train, "steps": args.steps, "checkpoint_path": None})
        t0 = time.perf_counter()
        result = training.train(net, schedule, latents * scale, y, cfg, device="cpu")
        train_s = time.perf_counter() - t0
        ldm = latent.LatentDiffusion(vae, result.ema.eval(), schedule, scale).eval()
        ev = evaluation.evaluate_latent(ldm, n=args.n)
        row = {"channels": [w, 2 * w, 2 * w], "params": count_parameters(net), "forward_flops": flops,
               "step_s": step_s, "step_speedup_vs_pixel": pixel_step / step_s, "train_seconds": train_s,
               "fid_cond": ev["fid_cond"], "floor_balanced": ev["floor_balanced"], "fid_uncond": ev["fid_uncond"],
               "class_accuracy_cond": ev.get("class_accuracy_cond")}
        out["widths"][w] = row
        print(f"channels ({w}, {2 * w}, {2 * w}): {row['params'] / 1e6:.2f} M params, trained {train_s / 60:.1f} min, "
              f"cond FID {ev['fid_cond']:.2f} (balanced floor {ev['floor_balanced']:.2f}, "
              f"{ev['fid_cond'] / ev['floor_balanced']:.1f}×), uncond {ev['fid_uncond']:.2f}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
