"""Time per call of forward.ideal_denoiser over the full 60,000-image Fashion-MNIST training set.

    python benchmarks/ideal_denoiser.py [--repeats 20]

Target (issue 2): well under 0.2 s per call for one image on a laptop CPU, so the chapter-1
explorer's slider stays responsive.
"""
import argparse
import statistics
import time

import torch

from diffusion_course import data, forward, schedules


def main(repeats: int = 20) -> None:
    x_train, _ = data.load_fashion_mnist("train")
    x_test, _ = data.load_fashion_mnist("test")
    s = schedules.NoiseSchedule.cosine(1000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, training set {tuple(x_train.shape)}")
    forward.ideal_denoiser(x_test[:1], torch.tensor([500]), x_train, s)  # builds the cached flat bank once
    for batch in (1, 16):
        for t in (50, 500, 950):
            times = []
            for r in range(repeats):
                x_t = forward.q_sample(x_test[r:r + batch], torch.full((batch,), t), s,
                                       generator=torch.Generator().manual_seed(r))
                start = time.perf_counter()
                forward.ideal_denoiser(x_t, torch.full((batch,), t), x_train, s)
                times.append(time.perf_counter() - start)
            print(f"batch {batch:>2}, t={t:>3}: median {statistics.median(times) * 1e3:6.1f} ms per call, "
                  f"max {max(times) * 1e3:6.1f} ms ({repeats} calls)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per batch size and t")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    main(args.repeats)
