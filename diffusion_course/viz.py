"""Plots: image grids, schedule curves, loss curves, 2-D point clouds. Matplotlib only."""
from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .schedules import NoiseSchedule

if TYPE_CHECKING:
    from typing import Protocol

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    class _LossHistory(Protocol):  # training.History, or anything with its loss list and smoothing
        loss: list[float]

        def smoothed(self, window: int = ...) -> list[float]: ...


def to_numpy_image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [−1, 1] → (H, W) or (H, W, C) float array in [0, 1]."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    if x.ndim == 3 and x.shape[0] == 1:
        return x[0].numpy()
    if x.ndim == 3:
        return x.permute(1, 2, 0).numpy()
    return x.numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile a batch (B, C, H, W) in [−1, 1] into one array in [0, 1] (like torchvision's make_grid)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    B, C, H, W = images.shape
    nrow = nrow or math.ceil(math.sqrt(B))
    ncol = math.ceil(B / nrow)
    x = images.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    grid = torch.full((C, ncol * (H + pad) + pad, nrow * (W + pad) + pad), pad_value)
    for i in range(B):
        r, c = divmod(i, nrow)
        grid[:, pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = x[i]
    return grid[0].numpy() if C == 1 else grid.permute(1, 2, 0).numpy()


def show_images(images: torch.Tensor, nrow: int | None = None, title: str | None = None, ax: Axes | None = None,
                size: float = 4.0) -> Axes:
    """Show a batch of images in [−1, 1] as one grid; returns the axes."""
    grid = make_grid(images, nrow)
    if ax is None:
        aspect = grid.shape[1] / grid.shape[0]
        _, ax = plt.subplots(figsize=(size * aspect, size))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def show_strip(images: Sequence[torch.Tensor], labels: Sequence[str], title: str | None = None,
               size: float = 1.6) -> Figure:
    """A row of single images (C, H, W) with a caption under each."""
    fig, axes = plt.subplots(1, len(images), figsize=(size * len(images), size * 1.25))
    axes = np.atleast_1d(axes)
    for ax, img, lab in zip(axes, images, labels):
        ax.imshow(to_numpy_image(img), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(lab, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_schedules(schedules: dict[str, NoiseSchedule],
                   axes: Sequence[Axes] | np.ndarray | None = None) -> Sequence[Axes] | np.ndarray:
    """ᾱ_t and log-SNR(t) for several schedules, side by side."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, s in schedules.items():
        t = np.arange(s.T)
        axes[0].plot(t, s.alpha_bar.numpy(), label=name)
        axes[1].plot(t, s.log_snr.numpy(), label=name)
    axes[0].set(xlabel="t", ylabel=r"$\bar\alpha_t$", title=r"signal kept: $\bar\alpha_t$")
    axes[1].set(xlabel="t", ylabel=r"$\log \mathrm{SNR}_t$", title=r"log-SNR $= \log\bar\alpha_t/(1-\bar\alpha_t)$")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    return axes


def plot_loss(history: _LossHistory, window: int = 50, ax: Axes | None = None, label: str | None = None) -> Axes:
    """Raw and smoothed training loss from a :class:`~diffusion_course.training.History`."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history.loss, alpha=0.25, color="C0")
    ax.plot(history.smoothed(window), color="C0", label=label or f"moving average ({window})")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_points(points: torch.Tensor, ax: Axes | None = None, title: str | None = None, s: float = 2.0,
                lim: float = 3.0, **kwargs: Any) -> Axes:
    """Scatter a 2-D point cloud (N, 2)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    p = points.detach().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=s, alpha=0.6, **kwargs)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    if title:
        ax.set_title(title)
    return ax


def png_bytes(img: np.ndarray, scale: int = 6) -> bytes:
    """Encode a [0, 1] grayscale (H, W) or colour (H, W, 3) array as PNG, enlarged ``scale``× with
    nearest neighbours."""
    img = np.clip(img, 0, 1)
    big = img.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    plt.imsave(buf, big, cmap="gray", vmin=0, vmax=1, format="png")
    return buf.getvalue()


def show_source(obj: object) -> None:
    """Display a package function's or class's source in a notebook: what you read is what runs (and is tested)."""
    import inspect

    from IPython.display import Markdown, display

    display(Markdown(f"```python\n{inspect.getsource(obj)}```"))
