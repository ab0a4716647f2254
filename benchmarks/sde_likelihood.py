"""Chapter 6's targets: exact likelihoods and SDE/ODE samplers on an exact Gaussian-mixture score, and the
bits/dim of the shipped Fashion-MNIST model next to its DDPM variational bound.

    python benchmarks/sde_likelihood.py [--n 256] [--elbo-timesteps 100] [--rtol 1e-3] [--skip-fmnist]

Prints each target with its measured value and writes benchmarks/results/sde_likelihood.json.

* 2-D: PF-ODE log-likelihood with the exact score (exact divergence) against the true mixture log-density,
  mean absolute error over 1000 points — target < 0.05 nats; and with a 1-probe Hutchinson estimate.
* Samplers driven by the exact score (reverse SDE / Euler–Maruyama, predictor–corrector, PF-ODE rk45):
  component weights against the mixture's, in units of their sampling standard error, and the spread
  (per-axis std) against the mixture's — target: within sampling error and within 10 %.
* Fashion-MNIST: bits/dim (PF-ODE, uniform dequantisation, Hutchinson) of ``pretrained.load("fmnist-ddpm")``
  on ``--n`` test images with its standard error, the DDPM ELBO of the same model on the same images (paired
  difference with its SE), an independent per-pixel baseline, and the effect of the solver settings the chapter
  uses (rtol 1e-2, t_max 0.99) against tight ones (rtol 1e-5, t_max 1) on a few images.
"""
import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from diffusion_course import config, data, gmm, pretrained, sde


def mixture():
    return gmm.GaussianMixture.ring(k=8, radius=2.0, std=0.2,
                                    weights=torch.tensor([3, 1, 2, 1, 3, 1, 2, 1.0]) / 14)


def two_d(out: dict) -> None:
    mix = mixture()
    x, _ = mix.sample(1000, generator=torch.Generator().manual_seed(0))
    truth = mix.log_prob(x)
    sdes = {"VP": sde.VPSDE(), "VE": sde.VESDE(sigma_min=0.01, sigma_max=50.0),
            "discrete VP (cosine, T=1000)": sde.DiscreteVPSDE(pretrained.schedule_for("fmnist-ddpm"))}
    print("\n2-D ring of 8 Gaussians (std 0.2, unequal weights), 1000 points from the mixture")
    print("target: PF-ODE log-likelihood with the exact score within 0.05 nats (mean abs) of the true density")
    for name, s in sdes.items():
        score = mix.sde_score(s)
        t0 = time.perf_counter()
        logp, info = sde.log_likelihood(score, x, s, exact_trace=True, return_info=True)
        err = (logp - truth).abs()
        hut = sde.log_likelihood(score, x, s, probes=1, generator=torch.Generator().manual_seed(1))
        herr = (hut - truth)
        row = {"mean_abs_error": err.mean().item(), "max_abs_error": err.max().item(), "nfe": info["nfe"],
               "seconds": time.perf_counter() - t0, "hutchinson1_mean_error": herr.mean().item(),
               "hutchinson1_mean_abs_error": herr.abs().mean().item()}
        out.setdefault("likelihood_2d", {})[name] = row
        print(f"  {name:<30} exact trace: mean |err| {row['mean_abs_error']:.4f} nats (max {row['max_abs_error']:.3f}),"
              f" NFE {info['nfe']}  -> {'PASS' if row['mean_abs_error'] < 0.05 else 'FAIL'};  1-probe Hutchinson: "
              f"mean err {row['hutchinson1_mean_error']:+.3f}, mean |err| {row['hutchinson1_mean_abs_error']:.3f}")

    n = 4000
    truth_x, _ = mix.sample(50000, generator=torch.Generator().manual_seed(2))
    true_std = truth_x.std(0)
    se = (mix.weights * (1 - mix.weights) / n).sqrt()
    print(f"\nsamplers with the exact score, n = {n}: component weights (max |Δw| in SEs; sampling error ⇔ ≲ 3) "
          "and spread (std / true std; target within 10 %)")
    for name, s in sdes.items():
        score = mix.sde_score(s)
        x_T = s.prior_sample((n, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        runs = {"Euler-Maruyama (500 steps)": lambda: (sde.euler_maruyama(score, x_T, s, 500,
                                                                         generator=torch.Generator().manual_seed(4)), 500),
                "predictor-corrector (250+249)": lambda: (sde.predictor_corrector(
                    score, x_T, s, 250, generator=torch.Generator().manual_seed(5)), 499),
                "PF-ODE rk45 (1e-5)": lambda: sde.probability_flow(score, x_T, s, method="rk45")}
        for sname, fn in runs.items():
            xs, nfe = fn()
            w = mix.responsibilities(xs).mean(0)
            z = ((w - mix.weights).abs() / se).max().item()
            spread = (xs.std(0) / true_std)
            ok = z < 3.5 and (spread - 1).abs().max().item() < 0.10
            out.setdefault("samplers_2d", {}).setdefault(name, {})[sname] = {
                "max_weight_error_in_se": z, "spread_ratio": spread.tolist(), "nfe": nfe, "pass": ok}
            print(f"  {name:<30} {sname:<30} NFE {nfe:>4}  max |Δw| = {z:.2f} SE, spread {spread[0]:.3f} / "
                  f"{spread[1]:.3f}  -> {'PASS' if ok else 'FAIL'}")


def fmnist(out: dict, args) -> None:
    dev = config.get_device(args.device)
    model = pretrained.load("fmnist-ddpm", device=dev)
    schedule = model.schedule
    score = sde.score_from_eps(model, schedule)
    x_test, _ = data.load_fashion_mnist("test")
    x_train, _ = data.load_fashion_mnist("train")
    idx = torch.randperm(x_test.shape[0], generator=torch.Generator().manual_seed(0))[:args.n]
    x = x_test[idx].to(dev)
    print(f"\nFashion-MNIST, fmnist-ddpm, {args.n} random test images, device {dev} "
          f"({platform.machine()}, {torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    bpd, nfes = [], []
    for i in range(0, args.n, args.batch):
        b, info = sde.bits_per_dim(score, x[i:i + args.batch], score.sde, rtol=args.rtol, atol=args.rtol,
                                   t_max=args.t_max, generator=torch.Generator().manual_seed(100 + i), return_info=True)
        bpd.append(b.cpu())
        nfes.append(info["nfe"])
        print(f"  ODE batch {i // args.batch + 1}: {b.mean():.3f} bits/dim, NFE {info['nfe']}", flush=True)
    bpd = torch.cat(bpd)
    ode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    elbo = sde.ddpm_elbo_bpd(model, x, schedule, timesteps=args.elbo_timesteps,
                             generator=torch.Generator().manual_seed(7), batch_size=args.batch * 2).cpu()
    elbo_s = time.perf_counter() - t0
    pixel = sde.independent_pixel_bpd(x_train, x.cpu())
    n = args.n
    diff = bpd - elbo
    row = {"n": n, "rtol": args.rtol, "t_max": args.t_max, "ode_bpd": bpd.mean().item(),
           "ode_se": (bpd.std() / math.sqrt(n)).item(), "ode_nfe_mean": sum(nfes) / len(nfes), "ode_seconds": ode_s,
           "elbo_bpd": elbo.mean().item(), "elbo_se": (elbo.std() / math.sqrt(n)).item(),
           "elbo_timesteps": args.elbo_timesteps, "elbo_seconds": elbo_s,
           "ode_minus_elbo": diff.mean().item(), "ode_minus_elbo_se": (diff.std() / math.sqrt(n)).item(),
           "pixel_bpd": pixel.mean().item(), "pixel_se": (pixel.std() / math.sqrt(n)).item()}
    out["fmnist"] = row
    print(f"  PF-ODE bits/dim   {row['ode_bpd']:.3f} ± {row['ode_se']:.3f} (SE; Hutchinson, 1 probe, dequantised; "
          f"rtol {args.rtol:g}, t_max {args.t_max:g}; mean NFE {row['ode_nfe_mean']:.0f}; {ode_s:.0f} s)")
    print(f"  DDPM ELBO bits/dim {row['elbo_bpd']:.3f} ± {row['elbo_se']:.3f} ({args.elbo_timesteps} stratified terms "
          f"per image; {elbo_s:.0f} s)")
    print(f"  ODE − ELBO (paired) {row['ode_minus_elbo']:+.3f} ± {row['ode_minus_elbo_se']:.3f}  -> "
          f"{'PASS (ODE not above the ELBO beyond its error)' if row['ode_minus_elbo'] < 2 * row['ode_minus_elbo_se'] else 'FAIL'}")
    print(f"  independent per-pixel baseline {row['pixel_bpd']:.3f} ± {row['pixel_se']:.3f}")

    if args.settings_n:
        xs = x[:args.settings_n]
        res = {}
        for name, (rtol, tmax) in {"chapter (rtol 1e-2, t_max 0.99)": (1e-2, 0.99),
                                   f"benchmark (rtol {args.rtol:g}, t_max {args.t_max:g})": (args.rtol, args.t_max),
                                   "tight (rtol 1e-5, t_max 1)": (1e-5, 1.0)}.items():
            b, info = sde.bits_per_dim(score, xs, score.sde, rtol=rtol, atol=rtol, t_max=tmax,
                                       generator=torch.Generator().manual_seed(11), return_info=True)
            res[name] = {"bpd": b.cpu().tolist(), "nfe": info["nfe"]}
        tight = torch.tensor(res["tight (rtol 1e-5, t_max 1)"]["bpd"])
        print(f"  solver settings on {args.settings_n} images (same dequantisation and probes):")
        for name, r in res.items():
            d = torch.tensor(r["bpd"]) - tight
            print(f"    {name:<36} {torch.tensor(r['bpd']).mean():.4f} bits/dim, NFE {r['nfe']}, vs tight "
                  f"{d.mean():+.4f} (max |Δ| {d.abs().max():.4f})")
        out["fmnist_settings"] = res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--t-max", type=float, default=1.0)
    ap.add_argument("--elbo-timesteps", type=int, default=100)
    ap.add_argument("--settings-n", type=int, default=16, help="images for the solver-settings comparison (0 = skip)")
    ap.add_argument("--skip-fmnist", action="store_true")
    ap.add_argument("--skip-2d", action="store_true")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads"}
    if not args.skip_2d:
        two_d(out)
    if not args.skip_fmnist:
        fmnist(out, args)
    path = Path(__file__).resolve().parent / "results" / "sde_likelihood.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
