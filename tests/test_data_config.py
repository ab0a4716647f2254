"""Data loading (real Fashion-MNIST), toy sets, configuration, exercises."""
import os

import pytest
import torch

import diffusion_course as dc
from diffusion_course import config, data


def test_fashion_mnist_real_data():
    x, y = data.load_fashion_mnist("train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.bincount(y).tolist() == [6000] * 10  # the official, balanced split
    xt, yt = data.load_fashion_mnist("test")
    assert xt.shape == (10000, 1, 28, 28) and torch.bincount(yt).tolist() == [1000] * 10
    # Trousers are darker at the centre column than in the background between the legs? No: check a
    # class statistic that would catch a label/image misalignment: bags are wider than trousers.
    width = lambda imgs: (imgs > -0.5).float().mean(dim=(1, 2)).squeeze()  # noqa: E731
    assert width(x[y == 8][:500]).sum(-1).mean() > width(x[y == 1][:500]).sum(-1).mean()


def test_missing_dataset_message(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    monkeypatch.setitem(data._SOURCES, "mnist", {"system": [tmp_path / "nowhere"], "urls": []})
    data._cache.pop(("mnist", "train"), None)
    with pytest.raises(data.DatasetNotFound) as e:
        data.load_mnist("train", download=True)
    msg = str(e.value)
    assert str(tmp_path) in msg and "connect to the internet" in msg
    monkeypatch.setitem(data._SOURCES, "fashion-mnist", {"system": [tmp_path / "nowhere"], "urls": []})
    data._cache.pop(("fashion-mnist", "test"), None)
    with pytest.raises(data.DatasetNotFound, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist("test", download=False)
    data._cache.pop(("fashion-mnist", "test"), None)


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist("validation")


@pytest.mark.parametrize("name", data.TOY_2D_NAMES)
def test_toy_sets(name):
    a = data.toy_2d(name, 2000, generator=torch.Generator().manual_seed(0))
    b = data.toy_2d(name, 2000, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2000, 2) and torch.equal(a, b)
    assert a.abs().max() < 4 and 0.5 < a.std(0).min() < 2


def test_checkerboard_squares():
    p = data.toy_2d("checkerboard", 5000, generator=torch.Generator().manual_seed(1))
    cells = torch.floor(p + 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only one colour of the board


def test_toy_bad_input():
    with pytest.raises(ValueError, match="unknown toy set"):
        data.toy_2d("spiral", 10)
    with pytest.raises(ValueError):
        data.toy_2d("moons", 0)


def test_config(monkeypatch):
    monkeypatch.setenv("DIFFUSION_COURSE_QUICK", "1")
    assert config.is_quick() and config.budget(quick=1, cpu=2, gpu=3) == 1
    monkeypatch.setenv("DIFFUSION_COURSE_QUICK", "0")
    assert config.budget(quick=1, cpu=2, gpu=3, device="cpu") == 2
    assert config.budget(quick=1, cpu=2, gpu=3, device="cuda") == 3
    monkeypatch.setenv("DIFFUSION_COURSE_DEVICE", "cpu")
    assert config.get_device().type == "cpu"
    with pytest.raises(ValueError, match="device"):
        config.get_device("tpu")
    g1, g2 = config.seed_everything(3), config.seed_everything(3)
    assert torch.rand(2, generator=g1).tolist() == torch.rand(2, generator=g2).tolist()
    assert "quick mode" in config.describe()


def test_quick_mode_is_on_for_the_suite():
    assert os.environ["DIFFUSION_COURSE_QUICK"] == "1"


def test_exercise_checker_accepts_right_and_rejects_wrong(capsys):
    good = lambda x0, t, schedule, noise: dc.forward.q_sample(x0, t, schedule, noise)  # noqa: E731

    def wrong(x0, t, schedule, noise):  # the classic mistake: ᾱ instead of √ᾱ
        ab = schedule.alpha_bar[t].float().reshape(-1, 1, 1, 1)
        return ab * x0 + (1 - ab) * noise

    assert dc.exercises.check(good, "q_sample")
    assert not dc.exercises.check(wrong, "q_sample")
    assert not dc.exercises.check(lambda **k: 1 / 0, "q_sample")
    out = capsys.readouterr().out
    assert "✅" in out and "max abs difference" in out and "ZeroDivisionError" in out
    assert dc.exercises.check(lambda x_t, eps, t, t_prev, schedule: dc.sampling.ddim_step(x_t, eps, t, t_prev, schedule),
                              "ddim_step")
    with pytest.raises(ValueError, match="unknown exercise"):
        dc.exercises.check(good, "nope")


def test_lazy_modules():
    assert dc.nn.UNet is not None and dc.widgets.ForwardExplorer is not None
    with pytest.raises(AttributeError):
        dc.not_a_module


def test_dataset_folder_names_where_a_split_is_read_from():
    import pytest

    from diffusion_course import data

    folder = data.dataset_folder("fashion-mnist", "test")
    assert folder is not None and any(folder.glob("t10k-images-idx3-ubyte*"))
    with pytest.raises(ValueError, match="name"):
        data.dataset_folder("cifar10")
    with pytest.raises(ValueError, match="split"):
        data.dataset_folder("fashion-mnist", "val")
