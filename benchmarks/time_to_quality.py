"""Time-to-quality: FID after a fixed wall-clock training budget from scratch, ours vs a peer.

    python benchmarks/time_to_quality.py --minutes 15 [--n 500] [--models ours,hf,plain]

Each model trains class-unconditionally on Fashion-MNIST for the same number of wall-clock minutes
(batch 128, AdamW, EMA 0.999, the course's trainer), then draws ``n`` samples with 50 DDIM steps;
FID is in the course's classifier features, printed with the real-vs-real floor at the same n.

Peers: "hf" is diffusers' UNet2DModel in the HF course's 28×28 configuration; "plain" is a plain
≈1.1 M-parameter conv U-Net without attention or patch stem (our blocks, widths 32/64/64). "thin" is
our U-Net without the patch stem, 16/32/64 wide with attention at 7×7 (0.72 M parameters, about twice as
many steps per minute as "plain").
"""
import argparse
import time

import torch

from diffusion_course import data, metrics, pretrained, sampling, schedules, training
from diffusion_course.nn import UNet, count_parameters

from unet_throughput import _Wrap, hf_course_unet


class _TimeBudget(torch.nn.Module):
    """Wraps a model; raises KeyboardInterrupt once the wall-clock budget is spent (the trainer then
    stops cleanly and returns what it has)."""

    def __init__(self, net, seconds):
        super().__init__()
        self.net, self.deadline = net, time.perf_counter() + seconds

    def forward(self, x, t, cond=None):
        if self.training and time.perf_counter() > self.deadline:
            raise KeyboardInterrupt
        return self.net(x, t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--models", default="ours,hf,plain", help="comma-separated subset of ours, hf, plain, thin")
    args = ap.parse_args()
    x, _ = data.load_fashion_mnist("train")
    s = schedules.NoiseSchedule.cosine(1000)
    clf = pretrained.load("fmnist-classifier", device="cpu")
    ref = metrics.reference_images(args.n)
    floor = metrics.fid_floor(clf, args.n)
    cfg = training.TrainConfig(steps=10**6, batch_size=128, lr=1e-3, warmup=100, lr_decay="constant",
                               ema_decay=0.999, seed=0)
    models = {
        "ours": ("course U-Net", lambda: UNet(**{**pretrained.RECIPES["fmnist-ddpm"].model, "num_classes": 0})),
        "hf": ("diffusers UNet2DModel (HF course)", lambda: _Wrap(hf_course_unet())),
        "plain": ("plain conv U-Net, no attention", lambda: UNet(channels=(32, 64, 64), attention_levels=(), patch=1)),
        # our U-Net without the patch stem, thin at 28x28, attention at 7x7: the best of the CPU configs screened
        "thin": ("course U-Net 16/32/64, attn 7x7", lambda: UNet(channels=(16, 32, 64), attention_levels=(2,), patch=1)),
    }
    unknown = [k for k in args.models.split(",") if k not in models]
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(models)}")
    print(f"budget {args.minutes} min per model, n={args.n}, FID floor {floor:.2f}, threads {torch.get_num_threads()}")
    for key in args.models.split(","):
        name, make = models[key]
        net = make()
        wrapped = _TimeBudget(net, args.minutes * 60)
        res = training.train(wrapped, s, x, config=cfg, device="cpu", progress=False)
        ema = res.ema.net.eval()
        start = time.perf_counter()
        g = torch.Generator().manual_seed(0)
        xs = torch.cat([sampling.ddim_sample(ema, torch.randn(min(250, args.n - i), 1, 28, 28, generator=g), s,
                                             steps=50, clip_denoised=True, progress=False) for i in range(0, args.n, 250)])
        sample_s = time.perf_counter() - start
        fid = metrics.fid(clf, xs.clamp(-1, 1), ref)
        print(f"{name:<36} {count_parameters(net) / 1e6:5.2f} M params | {res.step:5d} steps in {args.minutes} min | "
              f"FID {fid:7.2f} (floor {floor:.2f}, ratio {fid / floor:6.1f}) | sampling {args.n} took {sample_s:5.0f} s")


if __name__ == "__main__":
    main()
