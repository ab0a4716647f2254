"""diffusion_course: the package behind the hands-on diffusion-models course.

    import diffusion_course as dc
    s = dc.schedules.NoiseSchedule.cosine(1000)

Light modules are imported eagerly; the rest (``nn``, ``training``, ``metrics``, ``pretrained``,
``widgets``, ``gmm``, …) load on first use, so ``import diffusion_course`` stays fast.
"""
import importlib

from . import config, data, exercises, forward, sampling, schedules, viz

__version__ = "0.1.0"
_LAZY = {"nn", "losses", "training", "checkpoints", "metrics", "pretrained", "recipes", "widgets", "gmm", "guidance",
         "evaluation", "shapes", "tokenizer", "train", "latent", "sde", "consistency", "consistency_extensions",
         "progressive", "flow", "profiling", "distributed", "validate", "records", "lab"}
__all__ = ["config", "data", "exercises", "forward", "sampling", "schedules", "viz", *sorted(_LAZY)]


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'diffusion_course' has no attribute {name!r}")
