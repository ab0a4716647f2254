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
