"""Test-suite configuration: quick mode for every test and notebook kernel, CPU-sized threads."""
import os

# Set before any kernel starts so nbval's notebooks inherit it; plain `pytest` works.
os.environ.setdefault("DIFFUSION_COURSE_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
