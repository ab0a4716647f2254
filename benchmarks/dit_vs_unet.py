"""DiT vs the course U-Net at matched training compute, a DiT scaling sweep, and a patch-size sweep.

    python benchmarks/dit_vs_unet.py [--steps 1500] [--batch 32] [--n-fid 500] [--threads 1] [--json out.json]
                                     [--runs unet,dit,mini-XS,mini-S,mini-M] [--patch-sweep 7,4,2] [--patch-steps 800]
    python benchmarks/dit_vs_unet.py --recount benchmarks/results/dit_vs_unet.json   # no training: FLOPs only

``unet`` and ``dit`` are the architectures of the shipped ``fmnist-ldm`` and ``fmnist-ldm-dit`` (the DiT was sized to
the U-Net's FLOPs per forward as ``torch.utils.flop_counter`` alone counts them, which leaves out the DiT's fused
attention kernel: with attention it costs 33.0 MFLOPs, not 29.3, against the U-Net's 31.4); ``mini-XS/S/M`` are
``nn.dit.DIT_CONFIGS`` (far smaller than the paper's DiT-S/B/L/XL, hence "mini").

Every run trains from scratch on the cached latents of ``fmnist-vae`` (class-conditional, 20 % label dropout,
log-SNR-normal timesteps, the recipe of ``fmnist-ldm``; lr 1e-3 for the U-Net, 5e-4 for the DiTs) for the same number
of steps at the same batch — equal steps, not equal compute; cost is counted as training FLOPs = 3 × (FLOPs of one
forward, ``profiling.flops_per_forward``: matmuls and convolutions at 2 FLOPs per multiply–add, attention included)
× batch × steps (the usual forward + backward ≈ 3 forwards). Each run prints its forward FLOPs with and without
attention. The held-out loss — ε-MSE on 2,000 test-image latents with fixed t and noise — is recorded along the way,
so curves can be compared against cumulative FLOPs (``profiling.curve_crossings`` says which pairs cross); FID
(class-balanced labels, DDIM-50, n ``--n-fid``, against the class-balanced floor) is measured at the end.
``--patch-sweep`` trains mini-XS in *pixel* space on 28×28 with the listed patch sizes (tokens = (28/p)²) and reports
held-out loss, FID and cost.

``--recount FILE`` trains nothing: it re-derives a stored result's FLOP figures with the current counter (forward
FLOPs with attention, the old count kept as ``forward_flops_no_attention``, each curve's training FLOPs recomputed
from its steps), renames the old size names (``dit-XS`` → ``mini-XS``, …), prints the curves' crossings and writes
the file back (or to ``--json``).
"""
import argparse
import json

import torch

from diffusion_course import data, latent, metrics, pretrained, profiling, sampling

OLD_NAMES = {"dit-XS": "mini-XS", "dit-S": "mini-S", "dit-M": "mini-M"}


def _model_for(kind: str) -> torch.nn.Module:
    """The network of a stored run's name: the sweep's kinds, or "unet-(a,b,c)" for a U-Net of another width."""
    if kind.startswith("unet-("):
        channels = tuple(int(v) for v in kind[len("unet-("):-1].split(","))
        return pretrained.build_denoiser("unet", {**pretrained.RECIPES["fmnist-ldm"].model, "channels": channels})
    return profiling.scaling_model(OLD_NAMES.get(kind, kind))


def _print_crossings(curves: dict) -> None:
    for row in profiling.curve_crossings(curves):
        pair = f"{row['a']} vs {row['b']}"
        if row["overlap"] is None:
            print(f"  {pair}: no common compute range; " + (f"{row['lower']} reaches a lower loss with less compute"
                                                           if row["lower"] else "the dearer one reaches a lower loss"))
        elif row["crosses"]:
            print(f"  {pair}: CROSS near {row['at'] / 1e12:.2f} TFLOPs")
        else:
            print(f"  {pair}: no crossing on {row['overlap'][0] / 1e12:.2f}–{row['overlap'][1] / 1e12:.2f} TFLOPs; "
                  f"{row['lower']} lower throughout")


def recount(path: str, out_path: str | None) -> None:
    with open(path) as f:
        out = json.load(f)
    batch = out["batch"]
    runs = {}
    for kind, run in out["runs"].items():
        name = OLD_NAMES.get(kind, kind)
        model = _model_for(kind)
        fwd = profiling.flops_per_forward(model, (4, 7, 7))
        fwd_old = profiling.flops_per_forward(model, (4, 7, 7), attention=False)
        if run.get("forward_flops_no_attention", run["forward_flops"]) != fwd_old:
            raise ValueError(f"{kind}: the stored count {run['forward_flops']} is not what the counter gives without "
                             f"attention ({fwd_old}); was it measured on another network?")
        run.update(forward_flops=fwd, forward_flops_no_attention=fwd_old,
                   curve=[[s, 3 * fwd * batch * s, loss] for s, _, loss in run["curve"]])
        runs[name] = run
        print(f"{name:>18}: {fwd_old / 1e6:7.2f} → {fwd / 1e6:7.2f} MFLOPs/forward with attention; end "
              f"{run['curve'][-1][1] / 1e12:.2f} TFLOPs, held-out loss {run['curve'][-1][2]:.4f}")
    out["runs"] = runs
    for p, run in out.get("patch_sweep", {}).items():
        model = profiling.scaling_model("mini-XS", space="pixel", patch=int(p))
        fwd = profiling.flops_per_forward(model, (1, 28, 28))
        fwd_old = profiling.flops_per_forward(model, (1, 28, 28), attention=False)
        run.update(forward_flops=fwd, forward_flops_no_attention=fwd_old,
                   curve=[[s, 3 * fwd * batch * s, loss] for s, _, loss in run["curve"]])
        print(f"pixel mini-XS patch {p}: {fwd_old / 1e6:.1f} → {fwd / 1e6:.1f} MFLOPs/forward with attention")
    _print_crossings({k: r["curve"] for k, r in runs.items()})
    out["note"] = out.get("note", "") + (" | recounted (--recount): forward FLOPs now include attention "
                                         "(profiling.flops_per_forward); forward_flops_no_attention is the old count; "
                                         "curves' FLOPs = 3 × forward × batch × step with the new count; dit-XS/S "
                                         "renamed mini-XS/S")
    with open(out_path or path, "w") as f:
        json.dump(out, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-fid", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default="unet,dit,mini-XS,mini-S,mini-M")
    ap.add_argument("--patch-sweep", default="7,4,2")
    ap.add_argument("--patch-steps", type=int, default=800)
    ap.add_argument("--json", default=None)
    ap.add_argument("--recount", default=None, metavar="FILE")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.recount:
        recount(args.recount, args.json)
        return
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
        fwd_no_attn = profiling.flops_per_forward(model, (4, 7, 7), attention=False)
        lr = 1e-3 if kind == "unet" else 5e-4
        ema, curve, fwd, seconds = profiling.loss_vs_compute(model, z_train * scale, y_train, z_held, y_test[:2000],
                                                             schedule, args.steps, args.batch, lr, desc=kind)
        ldm = latent.LatentDiffusion(vae, ema, schedule, scale)
        xs = ldm.sample(args.n_fid, cond=labels, steps=50, generator=torch.Generator().manual_seed(0), progress=False)
        fid = metrics.fid(clf, xs, ref)
        out["runs"][kind] = {"forward_flops": fwd, "forward_flops_no_attention": fwd_no_attn,
                             "params": sum(p.numel() for p in ema.parameters()), "curve": curve, "fid": fid,
                             "train_seconds": seconds}
        print(f"{kind:>7}: {fwd / 1e6:6.1f} MFLOPs/forward ({fwd_no_attn / 1e6:.1f} without attention), "
              f"{out['runs'][kind]['params'] / 1e6:.2f} M params, held-out loss {curve[-1][2]:.4f} after "
              f"{curve[-1][1] / 1e12:.2f} TFLOPs, FID {fid:.1f} (floor {out['floor_balanced']:.1f}), {seconds:.0f} s")
    if len(out["runs"]) > 1:
        print("crossings of the held-out loss against training FLOPs:")
        _print_crossings({k: r["curve"] for k, r in out["runs"].items()})
    if args.patch_sweep:
        x_train, yp = data.load_fashion_mnist("train")
        for p in (int(v) for v in args.patch_sweep.split(",")):
            torch.manual_seed(0)
            model = profiling.scaling_model("mini-XS", space="pixel", patch=p)
            fwd_no_attn = profiling.flops_per_forward(model, (1, 28, 28), attention=False)
            ema, curve, fwd, seconds = profiling.loss_vs_compute(model, x_train, yp, x_test[:2000], y_test[:2000],
                                                                 schedule, args.patch_steps, args.batch, 5e-4, evals=2,
                                                                 desc=f"pixel p={p}")
            xs = sampling.ddim_sample(ema, torch.randn(args.n_fid, 1, 28, 28, generator=torch.Generator().manual_seed(0)),
                                      schedule, steps=50, cond=labels, clip_denoised=True, progress=False)
            fid = metrics.fid(clf, xs.clamp(-1, 1), ref)
            out["patch_sweep"][p] = {"tokens": (28 // p) ** 2, "forward_flops": fwd,
                                     "forward_flops_no_attention": fwd_no_attn, "curve": curve, "fid": fid,
                                     "train_seconds": seconds}
            print(f"pixel mini-XS patch {p} ({(28 // p) ** 2} tokens): {fwd / 1e6:.0f} MFLOPs/forward "
                  f"({fwd_no_attn / 1e6:.0f} without attention, attention {100 * (1 - fwd_no_attn / fwd):.0f} %), "
                  f"held-out loss {curve[-1][2]:.4f}, FID {fid:.1f}, {seconds:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
