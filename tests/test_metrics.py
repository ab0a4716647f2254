"""Metrics with the shipped classifier: FID sanity, the floor, class accuracy, diversity, MMD."""
import pytest
import torch

from diffusion_course import metrics, pretrained
from diffusion_course.data import load_fashion_mnist


@pytest.fixture(scope="module")
def clf():
    return pretrained.load("fmnist-classifier", device="cpu")


@pytest.fixture(scope="module")
def test_set():
    return load_fashion_mnist("test")


def test_classifier_accuracy_as_stated(clf, test_set):
    x, y = test_set
    acc = metrics.class_accuracy(clf, x[:2000], y[:2000])
    stated = pretrained.manifest("fmnist-classifier")["metrics"]["test_accuracy"]
    assert acc > 0.9 and abs(acc - stated) < 0.02


def test_fid_identical_sets_is_zero_and_noise_is_far(clf, test_set):
    x, _ = test_set
    a = x[:500]
    assert metrics.fid(clf, a, a) < 1e-6
    floor = metrics.fid(clf, x[:500], x[500:1000])
    noise = torch.randn(500, 1, 28, 28).clamp(-1, 1)
    blurred = torch.nn.functional.avg_pool2d(x[:500], 3, 1, 1)
    fid_noise, fid_blur = metrics.fid(clf, noise, x[500:1000]), metrics.fid(clf, blurred, x[500:1000])
    assert floor < fid_blur < fid_noise and fid_noise > 20 * floor


def test_frechet_distance_closed_form():
    """Two Gaussians with commuting covariances: FD = ‖μ₁−μ₂‖² + Σ(√λ₁ − √λ₂)²."""
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    c1, c2 = torch.diag(torch.tensor([4.0, 1.0])), torch.diag(torch.tensor([1.0, 9.0]))
    assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(1 + (2 - 1) ** 2 + (1 - 3) ** 2, abs=1e-9)


def test_floor_is_reproducible(clf):
    assert metrics.fid_floor(clf, 200, seed=0) == metrics.fid_floor(clf, 200, seed=0)
    with pytest.raises(ValueError):
        metrics.fid_floor(clf, 6000)


def test_diversity(clf, test_set):
    x, _ = test_set
    assert metrics.diversity(clf, x[:1].expand(20, -1, -1, -1)) < 1e-6
    assert metrics.diversity(clf, x[:200]) > 0.3


def test_max_class_deviation_and_its_real_data_level(clf, test_set):
    assert metrics.max_class_deviation(torch.full((10,), 100)) == 0.0
    assert metrics.max_class_deviation(torch.tensor([150, 50, 100, 100])) == pytest.approx(0.5)
    # a random real subset of 1000 is not at 0: sampling noise and the classifier's confusions (measured: 0.10-0.31
    # over 20 subsets, mean 0.19), which is why evaluate_diffusion records the real set's value beside the model's
    x, _ = test_set
    real = metrics.max_class_deviation(metrics.class_counts(clf, metrics.reference_images(1000)))
    assert 0.05 < real < 0.35
    # a set drawn from two classes only is far off
    assert metrics.max_class_deviation(metrics.class_counts(clf, x[:1000][test_set[1][:1000] < 2])) > 3
    for bad in (torch.tensor([]), torch.tensor([-1, 5]), torch.zeros(3), torch.ones(2, 2)):
        with pytest.raises(ValueError, match="counts"):
            metrics.max_class_deviation(bad)


def test_evaluate_diffusion_scores_a_sampler_of_real_images_at_zero_and_records_the_real_class_mix():
    from diffusion_course.evaluation import evaluate_diffusion

    n = 200
    real = {None: metrics.reference_images(n), "cond": metrics.reference_images(n, class_balanced=True)}
    out = evaluate_diffusion(None, None, n=n, device="cpu",
                             sampler=lambda x_T, cond: real[None if cond is None else "cond"][:x_T.shape[0]])
    assert out["fid_uncond"] < 1e-6 and out["fid_cond"] < 1e-6 and out["floor"] > 1
    assert out["uncond_class_max_deviation"] == out["uncond_class_max_deviation_real"] > 0
    assert sum(out["uncond_class_counts"]) == n


def test_mmd(test_set):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    assert abs(metrics.mmd_rbf(a, b)) < 0.01 and metrics.mmd_rbf(a, b + 1.0) > 0.1


def test_bad_input(clf):
    with pytest.raises(ValueError, match="28, 28"):
        metrics.extract_features(clf, torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.fid(clf, torch.zeros(1, 1, 28, 28), torch.zeros(5, 1, 28, 28))
    with pytest.raises(ValueError, match="NaN"):
        metrics.fid(clf, torch.full((3, 1, 28, 28), float("nan")), torch.zeros(5, 1, 28, 28))
