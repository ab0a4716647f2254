"""DiT vs the course U-Net at matched training compute, a DiT scaling sweep, and a patch-size sweep.

    python benchmarks/dit_vs_unet.py [--steps 1500] [--batch 32] [--n-fid 500] [--threads 1] [--json out.json]
                                     [--runs unet,dit,dit-XS,dit-S,dit-M] [--patch-sweep 7,4,2] [--patch-steps 800]

``unet`` and ``dit`` are the architectures of the shipped ``fmnist-ldm`` and ``fmnist-ldm-dit`` (sized to the same
FLOPs per forward); ``dit-XS/S/M`` are ``nn.dit.DIT_CONFIGS``.

Every run trains from scratch on the cached latents of ``fmnist-vae`` (class-conditional, 20 % label dropout,
log-SNR-normal timesteps, the recipe of ``fmnist-ldm``) for the same number of steps at the same batch; cost is
counted as training FLOPs = 3 × (FLOPs of one forward, ``torch.utils.flop_counter``) × batch × steps (the usual
forward + backward ≈ 3 forwards). The held-out loss — ε-MSE on 2,000 test-image latents with fixed t and noise — is
recorded along the way, so curves can be drawn against cumulative FLOPs; FID (class-balanced labels, DDIM-50, n
``--n-fid``, against the class-balanced floor) is measured at the end. ``--patch-sweep`` trains DiT-XS in *pixel*
space on 28×28 with the listed patch sizes (tokens = (28/p)²) and reports held-out loss, FID and cost.
"""
import argparse
import json

import torch

from diffusion_course import data, latent, metrics, pretrained, profiling, sampling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-fid", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default="unet,dit,dit-XS,dit-S,dit-M")
    ap.add_argument("--patch-sweep", default="7,4,2")
    ap.add_argument("--patch-steps", type=int, default=800)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    schedule = pretrained.schedule_for("fmnist-ldm")
    vae = pretrained.load("fmnist-vae", device="cpu")
    z_train, y_train = latent.encode_training_set(vae, device="cpu")
    scale = latent.fit_scale_factor(z_train)
    x_test, y_test = data.load_fashion_mnist("test")
    z_held = latent.encode_dataset(vae, x_test[:2000], progress=False) * scale
    clf = pretrained.load("fmnist-classifier", device="cpu")
    ref = metrics.reference_images(args.n_fid, class_balanced=True)
    out = {"steps": args.steps, "batch": args.batch, "n_fid": args.n_fid,
           "floor_balanced": metrics.fid_floor(clf, args.n_fid, class_balanced=True), "runs": {}, "patch_sweep": {}}
    labels = torch.arange(args.n_fid) % 10
    for kind in args.runs.split(","):
        torch.manual_seed(0)
        model = profiling.scaling_model(kind)
        lr = 1e-3 if kind == "unet" else 5e-4
        ema, curve, fwd, seconds = profiling.loss_vs_compute(model, z_train * scale, y_train, z_held, y_test[:2000],
                                                             schedule, args.steps, args.batch, lr)
        ldm = latent.LatentDiffusion(vae, ema, schedule, scale)
        xs = ldm.sample(args.n_fid, cond=labels, steps=50, generator=torch.Generator().manual_seed(0), progress=False)
        fid = metrics.fid(clf, xs, ref)
        out["runs"][kind] = {"forward_flops": fwd, "params": sum(p.numel() for p in ema.parameters()), "curve": curve,
                             "fid": fid, "train_seconds": seconds}
        print(f"{kind:>7}: {fwd / 1e6:6.0f} MFLOPs/forward, {out['runs'][kind]['params'] / 1e6:.2f} M params, "
              f"held-out loss {curve[-1][2]:.4f} after {curve[-1][1] / 1e12:.2f} TFLOPs, FID {fid:.1f} "
              f"(floor {out['floor_balanced']:.1f}), {seconds:.0f} s")
    if args.patch_sweep:
        x_train, yp = data.load_fashion_mnist("train")
        for p in (int(v) for v in args.patch_sweep.split(",")):
            torch.manual_seed(0)
            model = profiling.scaling_model("dit-XS", space="pixel", patch=p)
            ema, curve, fwd, seconds = profiling.loss_vs_compute(model, x_train, yp, x_test[:2000], y_test[:2000],
                                                                 schedule, args.patch_steps, args.batch, 5e-4, evals=2)
            xs = sampling.ddim_sample(ema, torch.randn(args.n_fid, 1, 28, 28, generator=torch.Generator().manual_seed(0)),
                                      schedule, steps=50, cond=labels, clip_denoised=True, progress=False)
            fid = metrics.fid(clf, xs.clamp(-1, 1), ref)
            out["patch_sweep"][p] = {"tokens": (28 // p) ** 2, "forward_flops": fwd, "curve": curve, "fid": fid,
                                     "train_seconds": seconds}
            print(f"pixel DiT-XS patch {p} ({(28 // p) ** 2} tokens): {fwd / 1e6:.0f} MFLOPs/forward, held-out loss "
                  f"{curve[-1][2]:.4f}, FID {fid:.1f}, {seconds:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
