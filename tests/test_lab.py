"""The launcher opens the course's notebooks and adds --allow-root only for root (JupyterLab refuses root otherwise)."""
import sys

import pytest

from diffusion_course import lab


def test_allow_root_only_for_root_and_extra_arguments_pass_through(tmp_path):
    as_user = lab.lab_command(tmp_path, ["--port=9999"], is_root=False)
    as_root = lab.lab_command(tmp_path, ["--port=9999"], is_root=True)
    assert as_user[:3] == [sys.executable, "-m", "jupyterlab"] and f"--notebook-dir={tmp_path}" in as_user
    assert "--allow-root" not in as_user and as_root.count("--allow-root") == 1
    assert as_user[-1] == as_root[-1] == "--port=9999"
    assert lab.lab_command(tmp_path, ["--allow-root"], is_root=True).count("--allow-root") == 1


def test_the_default_folder_is_the_course_notebooks_and_a_missing_one_is_a_clear_error(tmp_path, capsys):
    assert (lab.notebooks_dir() / "01_forward_process.ipynb").exists()
    with pytest.raises(SystemExit):
        lab.main(["--notebooks", str(tmp_path / "nowhere")])
    assert "no notebooks folder" in capsys.readouterr().err


def test_the_launcher_makes_sure_of_the_data_then_starts_jupyterlab(tmp_path, monkeypatch, capsys):
    from diffusion_course import data

    calls = []
    monkeypatch.setattr(lab.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert lab.main(["--notebooks", str(tmp_path)]) == 0          # the data is on this machine (Debian's package)
    assert "Fashion-MNIST: ready" in capsys.readouterr().out and calls
    # offline and nowhere on disk: a clear message naming what to do, and the course still opens
    monkeypatch.setattr(data, "DATA_DIR", tmp_path / "empty")
    monkeypatch.setitem(data._SOURCES["fashion-mnist"], "system", [])
    monkeypatch.setattr(data, "_cache", {})
    assert lab.main(["--notebooks", str(tmp_path), "--no-download"]) == 0
    err = capsys.readouterr().err
    assert "not available yet" in err and "opens anyway" in err and len(calls) == 2


def test_the_data_folder_is_per_user_outside_a_source_checkout(tmp_path):
    from diffusion_course import data

    installed = tmp_path / "site-packages" / "diffusion_course"
    installed.mkdir(parents=True)
    assert data.default_data_dir(installed, {"XDG_DATA_HOME": str(tmp_path / "xdg")}) == tmp_path / "xdg" / "diffusion-course"
    assert data.default_data_dir(installed, {"DIFFUSION_COURSE_DATA": str(tmp_path / "mine")}) == tmp_path / "mine"
    clone = tmp_path / "clone"
    (clone / "diffusion_course").mkdir(parents=True)
    (clone / "data").mkdir()
    (clone / "pyproject.toml").write_text("")
    assert data.default_data_dir(clone / "diffusion_course", {}) == clone / "data"
    assert "site-packages" not in str(data.default_data_dir(installed, {}))
