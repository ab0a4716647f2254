"""diffusion_course: the package behind the hands-on diffusion-models course."""
from . import config, data, forward, schedules

__version__ = "0.1.0"
__all__ = ["config", "data", "forward", "schedules"]
