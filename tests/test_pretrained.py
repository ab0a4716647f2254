"""Shipped checkpoints: they load by name, are sha256-checked, and the recipe is recorded."""
import shutil

import pytest
import torch

from diffusion_course import checkpoints, pretrained, sampling

ddpm_shipped = pretrained.path_for("fmnist-ddpm").exists()


def test_unknown_name():
    with pytest.raises(ValueError, match="available"):
        pretrained.load("sd-xl")


def test_classifier_manifest():
    man = pretrained.manifest("fmnist-classifier")
    assert man["reproduce"] == "python -m diffusion_course.train fmnist-classifier"
    assert len(man["sha256"]) == 64 and man["metrics"]["test_accuracy"] > 0.9


def test_tampered_checkpoint_is_refused(tmp_path, monkeypatch):
    for suffix in (".pt", ".json"):
        shutil.copy(pretrained.path_for("fmnist-classifier").with_suffix(suffix),
                    tmp_path / f"fmnist-classifier{suffix}")
    monkeypatch.setattr(checkpoints, "CHECKPOINT_DIR", tmp_path)
    assert pretrained.load("fmnist-classifier", device="cpu") is not None
    p = tmp_path / "fmnist-classifier.pt"
    raw = bytearray(p.read_bytes())
    raw[-100] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        pretrained.load("fmnist-classifier", device="cpu")


def test_missing_checkpoint_is_an_error_naming_the_command_and_the_cli_trains_it(tmp_path, monkeypatch):
    from diffusion_course import train as train_cli

    monkeypatch.setattr(checkpoints, "CHECKPOINT_DIR", tmp_path)
    monkeypatch.setitem(pretrained.RECIPES, "fmnist-ddpm",
                        pretrained.RECIPES["fmnist-ddpm"].__class__(**{**pretrained.RECIPES["fmnist-ddpm"].__dict__,
                                                                       "quick_steps": 2}))
    with pytest.raises(FileNotFoundError, match="python -m diffusion_course.train fmnist-ddpm"):
        pretrained.load("fmnist-ddpm", device="cpu")
    model = train_cli.load_or_train("fmnist-ddpm", device="cpu")  # quick mode: 2 steps, not saved
    assert model.schedule.T == 1000 and not any(tmp_path.iterdir())
    x = model(torch.randn(2, 1, 28, 28), torch.tensor([5, 900]))
    assert x.shape == (2, 1, 28, 28)


def test_load_returns_the_model_with_its_schedule_for_every_diffusion_model():
    for name in ("fmnist-ddpm", "shapes-t2i", "fmnist-ldm", "fmnist-cd"):
        model = pretrained.load(name, device="cpu")
        assert isinstance(model, torch.nn.Module) and not model.training, name
        assert model.schedule.T == 1000, name
    assert isinstance(pretrained.load("fmnist-classifier", device="cpu"), torch.nn.Module)


def test_lineage_is_not_installed_but_loads_from_the_source_tree():
    assert pretrained.is_lineage("fmnist-cd-v4") and not pretrained.is_lineage("fmnist-cd")
    assert pretrained.path_for("fmnist-cd-v4").parent == checkpoints.LINEAGE_DIR
    assert pretrained.manifest("fmnist-cd-v4")["name"] == "fmnist-cd-v4"
    from pathlib import Path

    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    data_files = next(line for line in pyproject.splitlines() if line.startswith('"share/diffusion-course/checkpoints"'))
    assert '"data/checkpoints/*.pt"' in data_files and "lineage" not in data_files


@pytest.mark.skipif(not ddpm_shipped, reason="fmnist-ddpm checkpoint not trained yet")
def test_fmnist_ddpm_loads_and_samples():
    model = pretrained.load("fmnist-ddpm", device="cpu")
    schedule = model.schedule
    man = pretrained.manifest("fmnist-ddpm")
    assert man["recipe"]["schedule"] == "cosine" and man["recipe"]["T"] == 1000
    assert model.num_classes == 10 and model.objective == "eps"
    x = sampling.ddim_sample(model, torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)),
                             schedule, steps=5, cond=torch.tensor([0, 1, 2, 3]), progress=False)
    assert x.shape == (4, 1, 28, 28) and torch.isfinite(x).all()


def test_missing_text_checkpoint_trains_on_demand_in_quick_mode(tmp_path, monkeypatch):
    from diffusion_course import train as train_cli

    monkeypatch.setattr(checkpoints, "CHECKPOINT_DIR", tmp_path)
    recipe = pretrained.RECIPES["shapes-t2i"]
    monkeypatch.setitem(pretrained.RECIPES, "shapes-t2i", recipe.__class__(**{**recipe.__dict__, "quick_steps": 2}))
    model = train_cli.load_or_train("shapes-t2i", device="cpu")  # quick mode: 2 steps, not saved
    assert model.schedule.T == 1000 and not any(tmp_path.iterdir())
    ids = model.tokenizer(["a red circle above a blue square", ""])
    x = model(torch.randn(2, 3, 32, 32), torch.tensor([5, 900]), ids)
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()


# --------------------------------------------------------------------------- the CLI never destroys a shipped model
def _fake_shipped(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for suffix in (".pt", ".json"):
        shutil.copy(pretrained.path_for("fmnist-classifier").with_suffix(suffix), shipped / f"fmnist-classifier{suffix}")
    monkeypatch.setattr(checkpoints, "CHECKPOINT_DIR", shipped)
    return shipped


def test_cli_refuses_to_overwrite_a_shipped_checkpoint(tmp_path, monkeypatch, capsys):
    from diffusion_course import train as train_cli

    shipped = _fake_shipped(tmp_path, monkeypatch)
    before = (shipped / "fmnist-classifier.pt").read_bytes(), (shipped / "fmnist-classifier.json").read_bytes()
    for argv in (["fmnist-classifier", "--steps", "2", "--no-eval"], ["fmnist-classifier", "--no-eval"]):
        with pytest.raises(SystemExit) as exc:
            train_cli.main(argv)
        assert exc.value.code == 2
        assert "--out" in capsys.readouterr().err
    assert ((shipped / "fmnist-classifier.pt").read_bytes(), (shipped / "fmnist-classifier.json").read_bytes()) == before
    # --out writes elsewhere, and the shipped files are untouched
    assert train_cli.main(["fmnist-classifier", "--steps", "2", "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert (tmp_path / "run" / "fmnist-classifier.pt").exists()
    assert pretrained.manifest("fmnist-classifier")["steps"] == 2000
    assert ((shipped / "fmnist-classifier.pt").read_bytes(), (shipped / "fmnist-classifier.json").read_bytes()) == before


@pytest.mark.parametrize("steps", ["0", "-3", "two"])
def test_cli_rejects_non_positive_steps(steps, capsys):
    from diffusion_course import train as train_cli

    with pytest.raises(SystemExit) as exc:
        train_cli.main(["fmnist-classifier", "--steps", steps])
    assert exc.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_run_recipe_rejects_zero_steps():
    from diffusion_course import train as train_cli

    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            train_cli.run_recipe("fmnist-classifier", steps=bad, save=False)


def test_cli_device_errors_are_clear(capsys):
    from diffusion_course import train as train_cli

    for dev, words in (("banana", "device must be"), ("cuda", "no CUDA") if not torch.cuda.is_available() else ("banana", "device must be")):
        with pytest.raises(SystemExit):
            train_cli.main(["fmnist-classifier", "--device", dev])
        assert words in capsys.readouterr().err


def _recipe_mismatches(recorded: dict, current: dict, where: str = "") -> list[str]:
    """Fields a manifest recorded whose value the current recipe no longer has (fields added to a config since are
    absent from older manifests, and their defaults reproduce the old behaviour; descriptions may be reworded)."""
    out = []
    for key, value in recorded.items():
        if key == "description" or key not in current:
            continue
        if isinstance(value, dict) and isinstance(current[key], dict):
            out += _recipe_mismatches(value, current[key], f"{where}{key}.")
        elif value != current[key]:
            out.append(f"{where}{key}: shipped {value!r}, recipe {current[key]!r}")
    return out


def test_every_shipped_checkpoint_was_made_by_its_current_recipe(monkeypatch):
    """`python -m diffusion_course.train NAME` must re-make what ships: a recipe edited without retraining fails."""
    import json
    from dataclasses import asdict, replace

    def current(name):
        return json.loads(json.dumps(asdict(pretrained.RECIPES[name])))

    shipped = [n for n in pretrained.names() if pretrained.path_for(n).exists()]
    assert len(shipped) >= 8
    for name in shipped:
        assert _recipe_mismatches(pretrained.manifest(name)["recipe"], current(name)) == [], name
    # the check can fail: a recipe whose steps changed after its checkpoint shipped
    ldm = pretrained.RECIPES["fmnist-ldm"]
    monkeypatch.setitem(pretrained.RECIPES, "fmnist-ldm", replace(ldm, train={**ldm.train, "steps": 1}))
    assert _recipe_mismatches(pretrained.manifest("fmnist-ldm")["recipe"], current("fmnist-ldm")) == [
        f"train.steps: shipped {ldm.train['steps']}, recipe 1"]
