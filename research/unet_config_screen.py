"""Which U-Net configuration learns fastest per CPU-minute? A short screen of our U-Net's configurations.

    python research/unet_config_screen.py --minutes 5 [--lr 1e-3] [--batch 128] [--configs plain,shipped,thin,...]
        [--seed 0] [--t-sampling logsnr-normal --logsnr-mean 0 --logsnr-std 2] [--objective v] [--min-snr 5]

Each configuration trains unconditionally on Fashion-MNIST from scratch for the same wall-clock budget (batch 128 unless
``--batch``, AdamW, 100 warm-up steps, constant lr, EMA 0.999, uniform t — the ``peer`` recipe of ``time_to_quality.py``;
the other options screen the recipe: how t is drawn, the objective, min-SNR weighting), then
reports the steps it got, the ε-MSE of its EMA weights on 512 held-out test images at random t (fixed seed), and FID
of 250 DDIM-50 samples in the course classifier's features. Run one configuration per process (``--configs name``) to
screen two at once on two cores under the same load. Short budgets are dominated by warm-up: use it to rank, ``time_to_quality.py`` to judge.
"""
import argparse
import json
import time

import torch

from diffusion_course import data, metrics, pretrained, sampling, schedules, training
from diffusion_course.nn import UNet, count_parameters

CONFIGS = {
    "plain": dict(channels=(32, 64, 64), attention_levels=(), patch=1),
    "shipped": dict(channels=(64, 128), attention_levels=(1,), patch=2),           # the fmnist-ddpm network
    "shipped-noattn": dict(channels=(64, 128), attention_levels=(), patch=2),
    "p2-32-64": dict(channels=(32, 64), attention_levels=(1,), patch=2),            # chapter 2's demo network
    "p2-48-96": dict(channels=(48, 96), attention_levels=(1,), patch=2),
    "p1-32-64": dict(channels=(32, 64), attention_levels=(1,), patch=1),
    "thin": dict(channels=(16, 32, 64), attention_levels=(2,), patch=1),
    "p1-24-48-96": dict(channels=(24, 48, 96), attention_levels=(2,), patch=1),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--n", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0, help="initialisation and training seed")
    ap.add_argument("--t-sampling", default="uniform", choices=["uniform", "logsnr-normal"])
    ap.add_argument("--logsnr-mean", type=float, default=0.0)
    ap.add_argument("--logsnr-std", type=float, default=2.0)
    ap.add_argument("--objective", default="eps", choices=["eps", "x0", "v"])
    ap.add_argument("--min-snr", type=float, default=None, help="min-SNR-γ loss weighting")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from: " + ", ".join(CONFIGS))
    args = ap.parse_args()
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        ap.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    x, _ = data.load_fashion_mnist("train")
    held_out, _ = data.load_fashion_mnist("test")
    s = schedules.NoiseSchedule.cosine(1000)
    clf = pretrained.load("fmnist-classifier", device="cpu")
    ref = metrics.reference_images(args.n)
    floor = metrics.fid_floor(clf, args.n)
    g = torch.Generator().manual_seed(1)
    v = held_out[:512]
    t = torch.randint(0, s.T, (len(v),), generator=g)
    eps = torch.randn(v.shape, generator=g)
    ab = s.alpha_bar[t].float().view(-1, 1, 1, 1)
    x_t = ab.sqrt() * v + (1 - ab).sqrt() * eps
    print(f"budget {args.minutes} min, lr {args.lr}, n={args.n}, FID floor {floor:.2f}, threads {torch.get_num_threads()}")
    for name in args.configs.split(","):
        torch.manual_seed(args.seed)
        net = UNet(**CONFIGS[name], objective=args.objective)
        cfg = training.TrainConfig(steps=10**7, batch_size=args.batch, lr=args.lr, warmup=100, lr_decay="constant",
                                   ema_decay=0.999, seed=args.seed, max_minutes=args.minutes,
                                   t_sampling=args.t_sampling, logsnr_mean=args.logsnr_mean, logsnr_std=args.logsnr_std,
                                   objective=args.objective, min_snr_gamma=args.min_snr)
        res = training.train(net, s, x, config=cfg, device="cpu", progress=False)
        ema = res.ema.eval()
        with torch.no_grad():
            # held-out error in ε units whatever the network predicts
            eps_hat, _ = sampling.predict_eps_x0(ema, x_t, t, s)
            val = (eps_hat - eps).pow(2).mean().item()
            start = time.perf_counter()
            xs = sampling.ddim_sample(ema, torch.randn(args.n, 1, 28, 28, generator=torch.Generator().manual_seed(0)),
                                      s, steps=50, clip_denoised=True, progress=False)
            sample_s = time.perf_counter() - start
        fid = metrics.fid(clf, xs.clamp(-1, 1), ref)
        print(json.dumps(dict(config=name, batch=args.batch, lr=args.lr, seed=args.seed, t_sampling=args.t_sampling,
                              logsnr=(args.logsnr_mean, args.logsnr_std) if args.t_sampling != "uniform" else None,
                              objective=args.objective, min_snr=args.min_snr,
                              params_m=round(count_parameters(net) / 1e6, 2), steps=res.step,
                              val_eps_mse=round(val, 4), fid=round(fid, 1), floor=round(floor, 2),
                              sample_seconds=round(sample_s))), flush=True)


if __name__ == "__main__":
    main()
