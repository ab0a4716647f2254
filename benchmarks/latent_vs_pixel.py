"""Latent vs pixel diffusion, side by side in one run: training cost, sampling cost, quality, and how the saving
grows with resolution.

    python benchmarks/latent_vs_pixel.py [--threads 1] [--batch 32] [--n-sample 100] [--rounds 5] [--json out.json]

1. One training step (forward + backward + AdamW) of the pixel model (``fmnist-ddpm``'s network on 1×28×28) and of
   the latent model (``fmnist-ldm``'s U-Net on 4×7×7) at the same batch → training images per second and the ratio.
   Latent training reads cached latents, so the encoder is not part of its step (it ran once, over the data set).
2. Seconds per 1,000 samples with DDIM-50, measured on ``--n-sample`` images and scaled (sampling is linear in n);
   the latent model's figure includes decoding.
3. FID (project metric, n = 1000, DDIM-50, class-balanced labels vs the class-balanced floor) of both shipped
   models and the autoencoder's reconstruction FID, read from their manifests
   (``python -m diffusion_course.train NAME --eval-only`` measures them).
4. The same U-Net family at 28, 64 and 128 px: one training step in pixel space (1 channel) and in the latent space
   of an f = 4 autoencoder (4 channels at a quarter of the side), batch 8 — the compression at 28×28 is small
   (784 → 196 numbers), at Stable Diffusion's 512×512×3 → 64×64×4 it is 48×.
"""
import argparse
import json
import statistics
import time

import torch

from diffusion_course import pretrained, profiling
from diffusion_course.nn import UNet


def sample_seconds_per_1000(sample_fn, n: int) -> float:
    sample_fn(2)                                      # warm-up
    t0 = time.perf_counter()
    sample_fn(n)
    return (time.perf_counter() - t0) * 1000 / n


def resolution_sweep(sizes=(28, 64, 128), batch: int = 8, repeats: int = 3) -> list[dict]:
    """Training-step seconds of one U-Net family in pixel space vs in f=4 latent space, per image size."""
    # the shipped latent U-Net's architecture, with 1 input channel in pixel space and 4 in latent space
    family = {k: v for k, v in pretrained.RECIPES["fmnist-ldm"].model.items() if k not in ("in_channels", "objective")}
    rows = []
    for size in sizes:
        pixel = UNet(in_channels=1, **family)
        lat = UNet(in_channels=4, **family)
        tp = profiling.train_step_seconds(pixel, (1, size, size), batch, repeats)
        tl = profiling.train_step_seconds(lat, (4, size // 4, size // 4), batch, repeats)
        rows.append({"size": size, "pixel_numbers": size * size, "latent_numbers": 4 * (size // 4) ** 2,
                     "pixel_step_s": tp, "latent_step_s": tl, "speedup": tp / tl})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-sample", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds for the step-cost ratio")
    ap.add_argument("--sizes", default="28,64,128")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    torch.set_num_threads(args.threads)
    out = {"threads": args.threads, "batch": args.batch}

    pixel_model = pretrained.load("fmnist-ddpm", device="cpu")
    schedule = pixel_model.schedule
    ldm = pretrained.load("fmnist-ldm", device="cpu")
    pixel_net = pretrained.build("fmnist-ddpm")
    latent_net = pretrained.build_denoiser("unet", pretrained.RECIPES["fmnist-ldm"].model)
    # the ratio moves with the machine's load between calls (2.3-2.9x over five quiet runs), so it is taken in
    # ``--rounds`` interleaved rounds and reported as mean ± sd; the step times are the medians over the rounds
    ratios, pix, lat = [], [], []
    for _ in range(args.rounds):
        pix.append(profiling.train_step_seconds(pixel_net, (1, 28, 28), args.batch))
        lat.append(profiling.train_step_seconds(latent_net, ldm.latent_shape, args.batch))
        ratios.append(pix[-1] / lat[-1])
    out["pixel_step_s"], out["latent_step_s"] = statistics.median(pix), statistics.median(lat)
    out["train_speedup"] = statistics.mean(ratios)
    out["train_speedup_sd"] = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
    out["train_speedup_rounds"] = ratios
    out["pixel_train_img_per_s"] = args.batch / out["pixel_step_s"]
    out["latent_train_img_per_s"] = args.batch / out["latent_step_s"]
    print(f"training step, batch {args.batch}: pixel {out['pixel_step_s']:.3f} s ({out['pixel_train_img_per_s']:.0f} img/s), "
          f"latent {out['latent_step_s']:.3f} s ({out['latent_train_img_per_s']:.0f} img/s) → {out['train_speedup']:.2f}× "
          f"± {out['train_speedup_sd']:.2f} cheaper over {args.rounds} interleaved rounds")
    print(f"target: a latent training step >= 4x cheaper — measured {out['train_speedup']:.2f}x → "
          + ("met" if out["train_speedup"] >= 4 else "NOT met (the pixel model already works at 14×14 behind its "
                                                     "patch-2 stem; see the resolution sweep below)"))

    from diffusion_course import sampling

    def pixel_sample(n):
        x_T = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        return sampling.ddim_sample(pixel_model, x_T, schedule, steps=50, cond=torch.arange(n) % 10, progress=False,
                                    clip_denoised=True)

    def latent_sample(n):
        return ldm.sample(n, cond=torch.arange(n) % 10, steps=50, generator=torch.Generator().manual_seed(0),
                          progress=False)

    out["pixel_s_per_1000"] = sample_seconds_per_1000(pixel_sample, args.n_sample)
    out["latent_s_per_1000"] = sample_seconds_per_1000(latent_sample, args.n_sample)
    out["sample_speedup"] = out["pixel_s_per_1000"] / out["latent_s_per_1000"]
    print(f"DDIM-50 per 1,000 samples (measured on {args.n_sample}): pixel {out['pixel_s_per_1000']:.0f} s, latent "
          f"{out['latent_s_per_1000']:.0f} s (decode included) → {out['sample_speedup']:.1f}×")

    m_pix = pretrained.manifest("fmnist-ddpm").get("metrics", {})
    m_lat = pretrained.manifest("fmnist-ldm").get("metrics", {})
    m_vae = pretrained.manifest("fmnist-vae").get("metrics", {})
    for key, m in (("pixel", m_pix), ("latent", m_lat)):
        out[f"{key}_fid_cond"], out[f"{key}_floor_balanced"] = m.get("fid_cond"), m.get("floor_balanced")
        out[f"{key}_fid_uncond"], out[f"{key}_floor"] = m.get("fid_uncond"), m.get("floor")
    out["vae_fid_reconstruction"], out["vae_floor"] = m_vae.get("fid_reconstruction"), m_vae.get("floor")
    out["vae_fid_reconstruction_balanced"] = m_vae.get("fid_reconstruction_balanced")
    out["vae_floor_balanced"] = m_vae.get("floor_balanced")
    def num(v):
        return f"{v:.2f}" if isinstance(v, (int, float)) else "unmeasured"

    print(f"FID (n = 1000, DDIM-50, manifests): pixel cond {num(out['pixel_fid_cond'])}, latent cond "
          f"{num(out['latent_fid_cond'])} (balanced floor {num(out['latent_floor_balanced'])}); decoder's reconstruction "
          f"FID on balanced sets {num(out['vae_fid_reconstruction_balanced'])} (floor {num(out['vae_floor_balanced'])}), "
          f"on random sets {num(out['vae_fid_reconstruction'])} (floor {num(out['vae_floor'])})")
    if isinstance(out["latent_fid_cond"], float) and isinstance(out["latent_floor_balanced"], float):
        ratio = out["latent_fid_cond"] / out["latent_floor_balanced"]
        print(f"target: latent cond FID within 3x of the balanced floor — measured {ratio:.2f}x → "
              + ("met" if ratio <= 3 else "NOT met"))

    sizes = tuple(int(s) for s in args.sizes.split(","))
    out["resolution_sweep"] = resolution_sweep(sizes)
    for row in out["resolution_sweep"]:
        print(f"{row['size']:>4} px: pixel step {row['pixel_step_s']:.3f} s, latent (f = 4) {row['latent_step_s']:.3f} s "
              f"→ {row['speedup']:.1f}×  ({row['pixel_numbers']} → {row['latent_numbers']} numbers)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
