"""Sample-quality metrics: FID in the features of a small Fashion-MNIST classifier, class accuracy,
diversity, and distances between 2-D point sets.

FID (Heusel et al. 2017, Eq. 6): ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁^{½} Σ₂ Σ₁^{½})^{½}), here in the
128-d penultimate features of :class:`FashionClassifier` rather than Inception's (the approach of
fast.ai's 2022 course): cheap on a CPU and sensitive to what Fashion-MNIST images look like. FID is
biased upwards at small sample counts, so every number is reported next to the **floor**: the FID
between two disjoint sets of real test images of the same size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FashionClassifier(nn.Module):
    """A small CNN (≈0.4 M parameters): 28×28 → 10 logits; ``features`` gives the 128-d embedding."""

    def __init__(self, feature_dim: int = 128):
        super().__init__()
        self.config = {"feature_dim": feature_dim}

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.body = nn.Sequential(block(1, 32), block(32, 64), nn.Flatten(),
                                  nn.Linear(64 * 7 * 7, feature_dim), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(feature_dim, 10)

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expected images of shape (B, 1, 28, 28) in [-1, 1], got "
                             f"{getattr(x, 'shape', type(x).__name__)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.body(x.clamp(-1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FashionClassifierB(nn.Module):
    """A second, independently built feature space (≈0.1 M parameters): a strided 5×5 stem, GroupNorm and GELU,
    average pooling, 64-d features — another architecture, trained with another seed, optimiser and augmentation
    (:func:`train_classifier` with ``arch="b"``). When a choice is made on FID in :class:`FashionClassifier`'s
    features, confirm it here: a win that only one feature space sees was selected on the metric's noise."""

    def __init__(self, feature_dim: int = 64):
        super().__init__()
        self.config = {"feature_dim": feature_dim}
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 5, stride=2, padding=2), nn.GroupNorm(8, 32), nn.GELU(),            # 14×14
            nn.Conv2d(32, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.GELU(), nn.AvgPool2d(2),      # 7×7
            nn.Conv2d(64, 128, 3, padding=1), nn.GroupNorm(8, 128), nn.GELU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(128 * 4, feature_dim), nn.GELU())
        self.head = nn.Linear(feature_dim, 10)

    _check = FashionClassifier._check

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.body(x.clamp(-1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


CLASSIFIERS = {"a": FashionClassifier, "b": FashionClassifierB}


@torch.no_grad()
def extract_features(classifier: FashionClassifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    classifier.eval()
    dev = next(classifier.parameters()).device
    return torch.cat([classifier.features(images[i:i + batch_size].to(dev)).double().cpu()
                      for i in range(0, images.shape[0], batch_size)])


@torch.no_grad()
def classify(classifier: FashionClassifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels (int64, CPU) for a batch of images in [−1, 1]."""
    classifier.eval()
    dev = next(classifier.parameters()).device
    return torch.cat([classifier(images[i:i + batch_size].to(dev)).argmax(1).cpu()
                      for i in range(0, images.shape[0], batch_size)])


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), computed in float64 with symmetric square roots."""
    mu1, cov1, mu2, cov2 = (a.double() for a in (mu1, cov1, mu2, cov2))
    s1 = _sqrtm_psd(cov1)
    middle = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * tr_sqrt
    return float(value.clamp(min=0))


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def fid(classifier: FashionClassifier, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """FID between two image sets in the classifier's feature space (needs ≥ 2 images each)."""
    for name, imgs in (("images_a", images_a), ("images_b", images_b)):
        if imgs.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 images, got {imgs.shape[0]}")
        if not torch.isfinite(imgs).all():
            raise ValueError(f"{name} contains NaN or inf")
    return frechet_distance(*feature_stats(extract_features(classifier, images_a)),
                            *feature_stats(extract_features(classifier, images_b)))


def _balanced_indices(labels: torch.Tensor, n: int, generator: torch.Generator, skip: int = 0) -> torch.Tensor:
    """``n`` indices with the classes as equal as possible (class c gets n//10, the first n%10 classes one
    more), drawn at random within each class; ``skip`` leaves out that many of each class's draws first, so
    two calls with ``skip=0`` and ``skip=n`` give disjoint sets."""
    classes = int(labels.max()) + 1
    out = []
    for c in range(classes):
        k = n // classes + (1 if c < n % classes else 0)
        members = (labels == c).nonzero().squeeze(1)
        perm = members[torch.randperm(members.numel(), generator=generator)]
        if skip + k > members.numel():
            raise ValueError(f"class {c} has only {members.numel()} images; n={n} is too large")
        out.append(perm[skip:skip + k])
    return torch.cat(out)


def balanced_disjoint_indices(labels: torch.Tensor, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint class-balanced index sets of ``n`` (the pair :func:`fid_floor` compares with
    ``class_balanced=True``), so anything else measured on the same two sets is like-for-like with that floor."""
    # one permutation per class, so the two halves are disjoint
    first = _balanced_indices(labels, n, torch.Generator().manual_seed(seed))
    second = _balanced_indices(labels, n, torch.Generator().manual_seed(seed), skip=n // 10 + 1)
    return first, second


def fid_floor(classifier: FashionClassifier, n: int, seed: int = 0, class_balanced: bool = False) -> float:
    """FID between two disjoint sets of ``n`` real test images: the best a model can score at n.

    ``class_balanced=True`` draws both sets with the classes equally represented — the floor to compare
    class-conditional samples made with balanced labels against (random sets carry extra class-mix noise,
    which would make that floor too high and every sampler look better than real data)."""
    from .data import load_fashion_mnist

    x, y = load_fashion_mnist("test")
    if 2 * n > x.shape[0]:
        raise ValueError(f"n must be at most {x.shape[0] // 2} for the floor, got {n}")
    g = torch.Generator().manual_seed(seed)
    if class_balanced:
        first, second = balanced_disjoint_indices(y, n, seed)
        return fid(classifier, x[first], x[second])
    perm = torch.randperm(x.shape[0], generator=g)
    return fid(classifier, x[perm[:n]], x[perm[n:2 * n]])


def reference_images(n: int, seed: int = 1, split: str = "test", class_balanced: bool = False) -> torch.Tensor:
    """``n`` real images to compare samples against (a fixed random subset, or class-balanced)."""
    from .data import load_fashion_mnist

    x, y = load_fashion_mnist(split)
    if class_balanced:
        return x[_balanced_indices(y, n, torch.Generator().manual_seed(seed))]
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]


def class_counts(classifier: FashionClassifier, images: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """How many of ``images`` the classifier puts in each class (int64, (classes,))."""
    return torch.bincount(classify(classifier, images), minlength=classes)


def max_class_deviation(counts: torch.Tensor) -> float:
    """The largest relative deviation of per-class counts from uniform, max_k |n_k / (N/K) − 1| (0 = uniform).

    Random real images score above 0 too: at N = 1000 and K = 10 a random test subset through the course's
    classifier averages about 0.19 (sampling noise plus the classifier's confusions), so compare a model's value with
    the real set's at the same N (``evaluation.evaluate_diffusion`` records both)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() < 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"counts must be a non-empty 1-D vector of non-negative counts with a positive sum, got {counts}")
    return float((counts / (counts.sum() / counts.numel()) - 1).abs().max())


def class_accuracy(classifier: FashionClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images the classifier assigns to the label they were generated for."""
    return float((classify(classifier, images) == labels.cpu()).float().mean())


def diversity(classifier: FashionClassifier, images: torch.Tensor) -> float:
    """Mean pairwise distance between the images' normalised features (0 = all identical)."""
    f = F.normalize(extract_features(classifier, images).float(), dim=1)
    n = f.shape[0]
    if n < 2:
        raise ValueError("diversity needs at least 2 images")
    d = torch.cdist(f, f)
    return float(d.sum() / (n * (n - 1)))


# --------------------------------------------------------------------------- 2-D distances
def mmd_rbf(a: torch.Tensor, b: torch.Tensor, bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0)) -> float:
    """Unbiased squared maximum mean discrepancy with a sum of RBF kernels (Gretton et al. 2012)."""
    a, b = a.double(), b.double()

    def k(x, y):
        d2 = torch.cdist(x, y).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = a.shape[0], b.shape[0]
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    term_a = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    term_b = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(term_a + term_b - 2 * kab.mean())


def train_classifier(steps: int = 1500, batch_size: int = 128, seed: int = 0, progress: bool = True,
                     device: str | torch.device | None = None, arch: str = "a") -> tuple[nn.Module, float]:
    """Train a Fashion-MNIST classifier; returns (model, test accuracy). ``arch="a"``: :class:`FashionClassifier`
    (AdamW, one-cycle, flips and 1-pixel shifts); ``"b"``: :class:`FashionClassifierB` (SGD with Nesterov momentum,
    cosine decay, 2-pixel shifts and a random 8×8 cut-out, no flips) — a feature space built independently of the
    first."""
    from tqdm.auto import tqdm

    from .config import get_device
    from .data import load_fashion_mnist

    if arch not in CLASSIFIERS:
        raise ValueError(f"arch must be one of {sorted(CLASSIFIERS)}, got {arch!r}")
    dev = torch.device(device) if device is not None else get_device()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = load_fashion_mnist("train")
    model = CLASSIFIERS[arch]().to(dev)
    if arch == "a":
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    for _ in tqdm(range(steps), desc=f"classifier {arch}", disable=not progress):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
        xb = x[idx]
        if arch == "a":   # light augmentation: random horizontal flips and 1-pixel shifts
            flip = torch.rand(batch_size, generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
        else:             # 2-pixel shifts and one 8×8 square per image set to the background (−1)
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            r, c = (torch.randint(0, 21, (batch_size,), generator=gen) for _ in range(2))
            rows, cols = torch.arange(28)[None, :], torch.arange(28)[None, :]
            box = ((rows >= r[:, None]) & (rows < r[:, None] + 8))[:, :, None] & \
                  ((cols >= c[:, None]) & (cols < c[:, None] + 8))[:, None, :]
            xb = torch.where(box[:, None], torch.full_like(xb, -1.0), xb)
        loss = F.cross_entropy(model(xb.to(dev)), y[idx].to(dev), label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    xt, yt = load_fashion_mnist("test")
    acc = class_accuracy(model, xt, yt)
    return model.cpu(), acc
