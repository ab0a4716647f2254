"""Training and sampling throughput: the course's U-Net vs diffusers' UNet2DModel (HF course config).

    python research/unet_throughput.py [--device cpu|cuda] [--batch 128]

The peer is the 28×28 configuration of the Hugging Face diffusion course: block_out_channels
(32, 64, 64), attention in the two lower blocks, 2 layers per block (~1.7 M parameters).
Prints images/s for a training step (forward + backward + AdamW) and for sampling (forward only).
"""
import argparse
import time

import torch
import torch.nn.functional as F

from diffusion_course import pretrained
from diffusion_course.nn import count_parameters


def hf_course_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


class _Wrap(torch.nn.Module):
    """diffusers returns an object; make it a plain ``model(x, t)``."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x, t).sample


def measure(model, device, batch, warmup=2, iters=5):
    model = model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (batch,), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(warmup + iters):
        if i == warmup:
            sync()
            start = time.perf_counter()
        loss = F.mse_loss(model(x, t), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    train_ips = batch * iters / (time.perf_counter() - start)
    with torch.no_grad():
        xs = torch.randn(4 * batch if device.type == "cuda" else 256, 1, 28, 28, device=device)
        ts = torch.randint(0, 1000, (xs.shape[0],), device=device)
        model(xs, ts)
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            model(xs, ts)
        sync()
        infer_ips = xs.shape[0] * iters / (time.perf_counter() - start)
    return train_ips, infer_ips


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch {args.batch}")
    ours = pretrained.build("fmnist-ddpm")
    peer = _Wrap(hf_course_unet())
    for name, model in [("course U-Net (fmnist-ddpm)", ours), ("diffusers UNet2DModel (HF course)", peer)]:
        train_ips, infer_ips = measure(model, device, args.batch)
        print(f"{name:<36} {count_parameters(model) / 1e6:5.2f} M params | train {train_ips:8.1f} img/s "
              f"({args.batch / train_ips:6.2f} s/step) | inference {infer_ips:8.1f} img/s "
              f"(1,000 samples x 50 DDIM steps ≈ {50_000 / infer_ips:6.0f} s)")


if __name__ == "__main__":
    main()
