"""Interactive explorers built with ipywidgets (they work in JupyterLab, Notebook 7 and Colab).

``ForwardExplorer`` is the course's opening picture: a t slider with Forward / Reverse play buttons
that walk an image between clean and pure noise, and three panels — the clean image x₀, what the
model sees x_t, and what a *perfect denoiser* predicts, E[x₀ | x_t] over the whole training set.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

import ipywidgets as W
import matplotlib.pyplot as plt
import torch

from . import forward, validate
from .schedules import NoiseSchedule
from .viz import png_bytes, to_numpy_image

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _set_playing(play: object, flag: bool) -> None:
    """Start or stop a ``Play`` timer: the public ``playing`` trait of ipywidgets 8, ``_playing`` in 7.x (Colab)."""
    setattr(play, "playing" if play.has_trait("playing") else "_playing", flag)


def is_playing(play: object) -> bool:
    """Whether a ``Play`` timer runs, in ipywidgets 7.x and 8 alike."""
    return bool(getattr(play, "playing" if play.has_trait("playing") else "_playing"))


def _kernel_loop():
    """The event loop of the Jupyter kernel running this code, or None outside one (plain Python, tests)."""
    import asyncio

    try:
        from IPython import get_ipython

        if getattr(get_ipython(), "kernel", None) is None:
            return None
    except ImportError:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:    # an older kernel: its tornado loop has the same call_later
        from tornado.ioloop import IOLoop

        return IOLoop.current()


class _Deferred:
    """Shared by the explorers: a change shows a busy line at once, and in a Jupyter kernel the redraw runs on the
    kernel's event loop, so that a burst of changes (a dragged slider) draws only the newest; outside a kernel (tests,
    scripts) the last of the scheduled draws runs at once."""

    _generation = 0

    def _status(self):
        """The HTML line that says the explorer is busy, or why a draw failed."""
        return self.info

    def _schedule(self, *draws: tuple) -> None:
        """Schedule ``(delay_s, fn, *args)`` draws for this change; a newer change supersedes them all."""
        loop = _kernel_loop()
        if loop is None:
            _, fn, *args = draws[-1]
            fn(*args)
            return
        self._generation += 1
        for delay, fn, *args in draws:
            loop.call_later(delay, self._run, self._generation, fn, *args)

    def _run(self, generation: int, fn: Callable, *args) -> None:
        if generation != self._generation:   # a newer change came in: its own draws will follow
            return
        try:
            fn(*args)
        except Exception as e:  # a loop callback must not die silently: show why on the explorer
            self._status().value = f"<span style='color:#b00'>⚠ {type(e).__name__}: {e}</span>"


class ForwardExplorer(_Deferred):
    """The forward-process explorer.

    Args:
        images: the images to choose from, ``{name: (1, H, W) tensor}`` in [−1, 1]; use images
            *outside* ``data`` (e.g. test images) to see the perfect denoiser snap to a neighbour.
        data: the training set (N, 1, H, W) the perfect denoiser averages over.
        schedules: ``{name: NoiseSchedule}``; the first is selected (the course uses cosine first).
        seed: the seed of the fixed noise ε for each image, so sliding t is continuous.
        frames: how many ticks a Forward / Reverse run takes from one end to the other.
        model: optional trained denoiser ``model(x, t)`` (ε, x₀ or v; run unconditionally) for a fourth
            panel, its x̂₀ beside the perfect denoiser's; ``model_schedule`` the schedule it was trained
            with. Under another schedule the network is given the t of its own schedule whose ᾱ is
            closest (it only knows its own timesteps).
    """

    def __init__(self, images: dict[str, torch.Tensor], data: torch.Tensor, schedules: dict[str, NoiseSchedule],
                 seed: int = 0, frames: int = 40, scale: int = 6,
                 model: Callable[..., torch.Tensor] | None = None, model_schedule: NoiseSchedule | None = None):
        if not images:
            raise ValueError("images must be a non-empty dict {name: (C, H, W) tensor}")
        if not schedules:
            raise ValueError("schedules must be a non-empty dict {name: NoiseSchedule}")
        Ts = {s.T for s in schedules.values()}
        if len(Ts) != 1:
            raise ValueError(f"all schedules must have the same T, got {sorted(Ts)}")
        # uint8 pixels would make x_t pure noise (q_sample casts ᾱ to the image dtype): float in [-1, 1] only
        validate.float_tensor("data", data, min_ndim=2)
        for name, img in images.items():
            validate.float_tensor(f"images[{name!r}]", img)
            if img.shape != data.shape[1:]:
                raise ValueError(f"image {name!r} has shape {tuple(img.shape)}, data items have {tuple(data.shape[1:])}")
        if (model is None) != (model_schedule is None):
            raise ValueError("pass model and model_schedule together (the network's own noise schedule), or neither")
        frames = validate.positive_int("frames", frames)
        self.images, self.data, self.schedules = images, data, schedules
        self.model, self.model_schedule = model, model_schedule
        self.T = Ts.pop()
        self.scale = scale
        self.direction = 0
        self.delta = max(1, math.ceil(self.T / frames))
        self._noise = {name: torch.randn(img.shape, generator=torch.Generator().manual_seed(seed + i))
                       for i, (name, img) in enumerate(images.items())}

        self.t_slider = W.IntSlider(value=0, min=0, max=self.T - 1, description="t", continuous_update=True,
                                    layout=W.Layout(width="480px"))
        self.image_menu = W.Dropdown(options=list(images), description="image")
        self.schedule_menu = W.Dropdown(options=list(schedules), description="schedule")
        self.forward_button = W.Button(description="Forward ▶", tooltip="add noise: walk t up to T−1")
        self.reverse_button = W.Button(description="◀ Reverse", tooltip="remove noise: walk t down to 0")
        self.clock = W.Play(value=0, min=0, max=10 * frames, step=1, interval=80, show_repeat=False,
                            description="clock")
        n_panels = 3 if model is None else 4
        self.panels = [W.Image(format="png") for _ in range(n_panels)]
        self.captions = [W.HTML() for _ in range(n_panels)]
        self.equation = W.HTML()

        for control in (self.t_slider, self.image_menu, self.schedule_menu):
            control.observe(self._changed, names="value")
        self.forward_button.on_click(lambda _: self.play(+1))
        self.reverse_button.on_click(lambda _: self.play(-1))
        self.clock.observe(self._tick, names="value")

        columns = [W.VBox([p, c], layout=W.Layout(align_items="center")) for p, c in zip(self.panels, self.captions)]
        self.widget = W.VBox([
            W.HBox([self.image_menu, self.schedule_menu]),
            W.HBox([self.reverse_button, self.forward_button, self.t_slider]),
            W.HBox(columns),
            self.equation,
            W.HBox([self.clock], layout=W.Layout(display="none")),  # the timer behind the buttons
        ])
        self.update()

    # ------------------------------------------------------------------ playback
    def play(self, direction: int) -> None:
        """Start walking t up (+1, Forward) or down (−1, Reverse) one tick at a time."""
        if direction not in (-1, 1):
            raise ValueError("direction must be +1 (forward) or -1 (reverse)")
        self.direction = direction
        if (direction > 0 and self.t_slider.value >= self.T - 1) or (direction < 0 and self.t_slider.value <= 0):
            self.t_slider.value = 0 if direction > 0 else self.T - 1  # restart from the far end
        _set_playing(self.clock, False)
        self.clock.value = 0
        _set_playing(self.clock, True)

    def _tick(self, change) -> None:
        if change["new"] == 0 or self.direction == 0:
            return
        t = min(self.T - 1, max(0, self.t_slider.value + self.direction * self.delta))
        self.t_slider.value = t
        if t in (0, self.T - 1):
            _set_playing(self.clock, False)
            self.direction = 0

    # ------------------------------------------------------------------ drawing
    def _changed(self, _change=None) -> None:
        # say at once that new panels are coming (an update takes tens of ms on a quiet laptop, more when it is busy)
        self.equation.value = self.equation.value.split("<br>")[0] + "<br><i style='color:#777'>⏳ updating…</i>"
        self._schedule((0.0, self.update))

    def _status(self):
        return self.equation

    def state(self) -> dict:
        """The current numbers and tensors (what the panels show)."""
        name, sname = self.image_menu.value, self.schedule_menu.value
        s, x0, eps = self.schedules[sname], self.images[name], self._noise[name]
        t = torch.tensor([self.t_slider.value])
        x_t = forward.q_sample(x0[None], t, s, eps[None])
        x0_hat, weights, idx = forward.ideal_denoiser(x_t, t, self.data, s, return_weights=True)
        ab = float(s.alpha_bar[t])
        out = {"t": int(t), "alpha_bar": ab, "x0": x0, "x_t": x_t[0], "x0_hat": x0_hat[0],
               "top_weight": float(weights[0, 0]), "top_index": int(idx[0, 0]),
               "mse": float((x0_hat[0] - x0).pow(2).mean())}
        if self.model is not None:
            out["x0_net"] = self.network_x0(x_t, ab)[0]
            out["mse_net"] = float((out["x0_net"] - x0).pow(2).mean())
        return out

    @torch.no_grad()
    def network_x0(self, x_t: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """The network's x̂₀ for a batch x_t at noise level ᾱ (its own schedule's nearest t), clamped to [−1, 1]."""
        from .sampling import predict_eps_x0

        ms = self.model_schedule
        t_net = int((ms.alpha_bar - alpha_bar).abs().argmin())
        tensors = list(self.model.parameters()) if hasattr(self.model, "parameters") else []
        device = tensors[0].device if tensors else torch.device("cpu")
        tt = torch.full((x_t.shape[0],), t_net, dtype=torch.long, device=device)
        _, x0 = predict_eps_x0(self.model, x_t.to(device), tt, ms)
        return x0.clamp(-1, 1).float().cpu()

    def update(self) -> None:
        """Recompute and redraw the panels; the equation line ends with this update's time on this machine."""
        import time

        start = time.perf_counter()
        st = self.state()
        shown = (st["x0"], st["x_t"], st["x0_hat"]) + ((st["x0_net"],) if "x0_net" in st else ())
        for panel, img in zip(self.panels, shown):
            panel.value = png_bytes(to_numpy_image(img), self.scale)
        self.captions[0].value = "<b>x₀</b> (clean)"
        self.captions[1].value = "<b>x<sub>t</sub></b> (what the model sees)"
        self.captions[2].value = (f"<b>E[x₀ | x<sub>t</sub>]</b> (perfect denoiser)<br>"
                                  f"top training image weight {st['top_weight']:.2f}<br>MSE to x₀ {st['mse']:.3f}")
        if "x0_net" in st:
            self.captions[3].value = (f"<b>network's x̂₀</b> (trained model)<br>&nbsp;<br>"
                                      f"MSE to x₀ {st['mse_net']:.3f}")
        ab = st["alpha_bar"]
        self.equation.value = (
            f"<span style='font-size:1.1em'>t = {st['t']}: &nbsp; x<sub>t</sub> = √ᾱ·x₀ + √(1−ᾱ)·ε "
            f"= <b>{math.sqrt(ab):.3f}</b>·x₀ + <b>{math.sqrt(1 - ab):.3f}</b>·ε &nbsp; "
            f"(ᾱ = {ab:.4f}, SNR = {ab / max(1 - ab, 1e-12):.3g})</span>"
            f"<br><span style='color:#777;font-size:0.85em'>this update: "
            f"{(time.perf_counter() - start) * 1e3:.0f} ms on this machine</span>")
        self.last_update_s = time.perf_counter() - start

    def strip(self, ts: Sequence[int] = (0, 100, 250, 400, 550, 700, 850, 999), figsize_per: float = 1.3) -> Figure:
        """A static figure of the three panels at several t (for readers who cannot run widgets)."""
        keep = self.t_slider.value
        keys = ("x0", "x_t", "x0_hat") + (("x0_net",) if self.model is not None else ())
        fig, axes = plt.subplots(len(keys), len(ts), figsize=(figsize_per * len(ts), figsize_per * 1.1 * len(keys)),
                                 squeeze=False)
        try:
            for j, t in enumerate(ts):
                self.t_slider.value = min(int(t), self.T - 1)
                st = self.state()
                for i, key in enumerate(keys):
                    axes[i, j].imshow(to_numpy_image(st[key]), cmap="gray", vmin=0, vmax=1)
                    axes[i, j].set_xticks([])
                    axes[i, j].set_yticks([])
                axes[0, j].set_title(f"t={st['t']}\nᾱ={st['alpha_bar']:.2g}", fontsize=8)
            for i, lab in enumerate(("x₀", "x_t", "E[x₀|x_t]", "network")[:len(keys)]):
                axes[i, 0].set_ylabel(lab)
        finally:
            self.t_slider.value = keep
        fig.tight_layout()
        return fig

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class _GridExplorer(_Deferred):
    """Shared by the grid explorers: sizing the image, holding updates, a quick preview, and a static figure.

    A change of a control says at once that a new grid is coming. In a Jupyter kernel the work is then scheduled on the
    kernel's event loop: for a slider, a cheap preview (``preview_steps`` sampler steps) as soon as the changes stop
    arriving and the full grid once it has rested for ``settle_s`` seconds; for a menu, a seed or a prompt, the full
    grid at once. A newer change supersedes older draws. Outside a kernel (tests, scripts) the full grid is drawn at
    once."""

    _hold = False
    preview_steps = 2
    settle_s = 0.4

    def _changed(self, _change=None) -> None:
        if self._hold:
            return
        # say at once that a new grid is coming: sampling takes seconds on a CPU, and the old grid stays up meanwhile
        self.info.value = "<i>⏳ sampling a new grid…</i>"
        if isinstance(getattr(_change, "owner", None), (W.IntSlider, W.FloatSlider, W.SelectionSlider)):
            # a slider reports while it moves: preview now, the full grid once it has rested for settle_s
            self._schedule((0.01, self.update, True), (self.settle_s, self.update, False))
        else:   # a menu, a seed or a prompt changes once: the full grid at once (the busy line is already up)
            self._schedule((0.01, self.update, False))

    def _show_grid(self, grid, scale: int) -> None:
        # Show the PNG at its own size (capped at the cell width) instead of stretched to the full cell:
        # then the controls and the grid fit on one screen.
        self.image.value = png_bytes(grid, scale)
        height, width = grid.shape[:2]
        self.image.layout.width = f"{width * scale}px"
        self.image.layout.max_width = "100%"
        self.image.layout.height = "auto"

    def _noise_and_labels(self) -> tuple[torch.Generator, torch.Tensor, torch.Tensor | None]:
        """The seeded generator, the grid's starting noise and the picked class (None = unconditional)."""
        device = next(self.model.parameters()).device if hasattr(self.model, "parameters") else torch.device("cpu")
        g = torch.Generator().manual_seed(int(self.seed.value))
        x_T = torch.randn((self.n, *self.shape), generator=g).to(device)
        cond = None
        if self.label.index and self.label.index > 0:
            cond = torch.full((self.n,), self.label.index - 1, dtype=torch.long, device=device)
        return g, x_T, cond

    def _figure_title(self, setting: dict) -> str:
        """The title of one panel of :meth:`figure`: the settings that were sampled."""
        controls = self._controls()
        return ", ".join(f"{k} = {controls[k].value}" for k in setting)

    def figure(self, settings: list[dict], ncols: int | None = None, size: float = 2.6,
               progress: bool = True) -> Figure:
        """A static figure of the grid under several settings (for readers who cannot run widgets).

        ``settings`` is a list of {control name: value}, e.g. ``[{"steps": 3}, {"steps": 50}]``; the
        controls, and the grid they showed, are restored afterwards (without sampling it again). Long
        titles wrap to the panel's width; ``progress`` shows a bar over the settings. Returns the matplotlib figure."""
        import textwrap

        from tqdm.auto import tqdm

        controls = self._controls()
        keep = {k: w.value for k, w in controls.items()}
        shown = (self.last, self.image.value, self.info.value)
        grids, titles = [], []
        width = max(12, int(size * 13))          # characters that fit a panel at fontsize 8
        try:
            for setting in tqdm(settings, desc="figure panels", disable=not progress, leave=False):
                unknown = set(setting) - set(controls)
                if unknown:
                    raise ValueError(f"unknown control(s) {sorted(unknown)}; available: {sorted(controls)}")
                for k, v in setting.items():   # a slider clamps silently: refuse what it cannot show
                    lo, hi = getattr(controls[k], "min", None), getattr(controls[k], "max", None)
                    if lo is not None and not lo <= v <= hi:
                        raise ValueError(f"{k}={v!r} is outside this explorer's range [{lo}, {hi}]")
                self._hold = True
                for k, v in setting.items():
                    controls[k].value = v
                self._hold = False
                self.update()
                grids.append(self._make_grid(self.last, nrow=int(math.ceil(math.sqrt(self.n)))))
                title = self._figure_title(setting)                                        # what was sampled
                titles.append("\n".join(textwrap.fill(line, width) for line in title.split("\n")))
        finally:
            self._hold = True
            for k, v in keep.items():
                controls[k].value = v
            self._hold = False
            # the restored controls show the grid they showed before (sampling is seeded): put it back
            self.last, self.image.value, self.info.value = shown
        ncols = ncols or len(grids)
        nrows = int(math.ceil(len(grids) / ncols))
        lines = max((t.count("\n") + 1 for t in titles), default=1)       # room for titles wrapped over several lines
        fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.15 * lines) * nrows + 0.15),
                                 squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, grid, title in zip(axes.flat, grids, titles):
            ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=8)
        fig.tight_layout()
        return fig


class SamplerExplorer(_GridExplorer):
    """Resample a grid live while you change the sampler's steps, η, timestep spacing and seed.

    Args:
        model: a (conditional) denoiser ``model(x, t, cond)``; ``schedule`` its noise schedule.
        n: images in the grid; ``class_names``: optional labels for a class picker ("any" = unconditional).
        image_shape: (C, H, W) of one sample.
    """

    def __init__(self, model: Callable[..., torch.Tensor], schedule: NoiseSchedule, n: int = 16,
                 class_names: list[str] | None = None, image_shape: tuple[int, int, int] = (1, 28, 28),
                 max_steps: int = 100, scale: int = 3, clip_denoised: bool = True):
        from . import sampling
        from .viz import make_grid

        n, max_steps = validate.positive_int("n", n), validate.positive_int("max_steps", max_steps)
        if class_names is not None:
            validate.names("class_names", class_names)
        self._sampling, self._make_grid = sampling, make_grid
        self.model, self.schedule, self.n, self.shape, self.scale = model, schedule, n, image_shape, scale
        self.clip_denoised = clip_denoised
        # sliders report while they move: the explorer previews at once and draws the full grid when they rest
        self.steps = W.IntSlider(value=20, min=1, max=min(max_steps, schedule.T), description="steps",
                                 continuous_update=True)
        self.eta = W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1, description="η", continuous_update=True)
        self.spacing = W.Dropdown(options=list(sampling.SPACINGS), value="trailing", description="spacing")
        self.seed = W.IntText(value=0, description="seed", layout=W.Layout(width="160px"))
        options = ["any (unconditional)"] + list(class_names or [])
        self.label = W.Dropdown(options=options, value=options[0], description="class",
                                disabled=class_names is None)
        self.image = W.Image(format="png")
        self.info = W.HTML()
        for control in (self.steps, self.eta, self.spacing, self.seed, self.label):
            control.observe(self._changed, names="value")
        self.widget = W.VBox([W.HBox([self.steps, self.eta]), W.HBox([self.spacing, self.seed, self.label]),
                              self.image, self.info])
        self.last = None
        self.update()

    def _controls(self) -> dict:
        return {"steps": self.steps, "eta": self.eta, "spacing": self.spacing, "seed": self.seed, "label": self.label}

    def update(self, preview: bool = False) -> None:
        """Sample and show the grid; ``preview`` uses at most ``preview_steps`` steps (a quick look while you drag)."""
        import time

        g, x_T, cond = self._noise_and_labels()
        steps = int(self.steps.value)
        run_steps = min(steps, self.preview_steps) if preview else steps
        start = time.perf_counter()
        out = self._sampling.ddim_sample(self.model, x_T, self.schedule, steps=run_steps,
                                         eta=float(self.eta.value), spacing=self.spacing.value,
                                         generator=g, cond=cond, progress=False,
                                         clip_denoised=self.clip_denoised).cpu()
        secs = time.perf_counter() - start
        self._show_grid(self._make_grid(out, nrow=int(math.ceil(math.sqrt(self.n)))), self.scale)
        if preview and run_steps < steps:
            self.info.value = f"<i>preview ({run_steps} steps, {secs:.2f} s) — ⏳ {steps} steps follow…</i>"
            return
        self.last = out
        ts = self._sampling.timesteps(self.schedule.T, steps, self.spacing.value)
        shown = ", ".join(map(str, ts[:6].tolist())) + (", …" if len(ts) > 6 else "")
        self.info.value = (f"DDIM, {steps} steps, η = {float(self.eta.value):.1f}, "
                           f"{self.spacing.value} timesteps [{shown}] — {secs:.2f} s")

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class GuidanceExplorer(_GridExplorer):
    """Drag the classifier-free guidance scale and watch a grid of samples (same noise) change.

    Args:
        model: a conditional model trained with condition dropout; ``schedule`` its noise schedule.
        class_names: for a class-conditional model, the labels of the class picker.
        tokenizer: for a text model, turns the prompt box into token ids (bad prompts show the
            tokeniser's error message instead of a grid).
        n, image_shape, steps: grid size, one sample's (C, H, W), DDIM steps.
        initial_scale: the guidance scale the slider starts at; png_scale: display zoom.
    """

    def __init__(self, model: Callable[..., torch.Tensor], schedule: NoiseSchedule,
                 class_names: list[str] | None = None, tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
                 n: int = 16, image_shape: tuple[int, int, int] = (1, 28, 28), steps: int = 20, png_scale: int = 3,
                 prompt: str = "a red circle above a blue square", initial_scale: float = 3.0):
        from . import guidance, sampling
        from .viz import make_grid

        if (class_names is None) == (tokenizer is None):
            raise ValueError("pass exactly one of class_names (class-conditional model) or tokenizer (text model)")
        n, steps = validate.positive_int("n", n), validate.positive_int("steps", steps)
        if class_names is not None:
            validate.names("class_names", class_names)
        validate.real("initial_scale", initial_scale, low=0.0, high=10.0)   # the slider's range: never clamped silently
        self._guidance, self._sampling, self._make_grid = guidance, sampling, make_grid
        self.model, self.schedule, self.n, self.shape, self.steps, self.png_scale = (model, schedule, n, image_shape,
                                                                                     steps, png_scale)
        self.tokenizer = tokenizer
        self.scale = W.FloatSlider(value=initial_scale, min=0.0, max=10.0, step=0.5, description="scale s",
                                   continuous_update=True)
        self.rescale = W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1, description="rescale φ",
                                     continuous_update=True)
        self.seed = W.IntText(value=0, description="seed", layout=W.Layout(width="160px"))
        if tokenizer is not None:
            self.condition = W.Text(value=prompt, description="prompt", continuous_update=False,
                                    layout=W.Layout(width="460px"))
        else:
            self.condition = W.Dropdown(options=list(class_names), value=class_names[0], description="class")
        self.image = W.Image(format="png")
        self.info = W.HTML()
        for control in (self.scale, self.rescale, self.seed, self.condition):
            control.observe(self._changed, names="value")
        self.widget = W.VBox([W.HBox([self.scale, self.rescale]), W.HBox([self.condition, self.seed]),
                              self.image, self.info])
        self.last = None
        self.update()

    def _controls(self) -> dict:
        return {"scale": self.scale, "rescale": self.rescale, "seed": self.seed,
                ("prompt" if self.tokenizer is not None else "class"): self.condition}

    def _figure_title(self, setting: dict) -> str:
        """A prompt on its own line, in quotes; the other settings below it."""
        controls = self._controls()
        rest = ", ".join(f"{k} = {controls[k].value}" for k in setting if k != "prompt")
        if "prompt" not in setting:
            return rest
        return f"“{controls['prompt'].value}”" + (f"\n{rest}" if rest else "")

    def _cond(self, device) -> torch.Tensor:
        if self.tokenizer is not None:
            return self.tokenizer([self.condition.value] * self.n).to(device)
        return torch.full((self.n,), self.condition.index, dtype=torch.long, device=device)

    def update(self, preview: bool = False) -> None:
        """Sample and show the grid; ``preview`` uses at most ``preview_steps`` steps (a quick look while you drag)."""
        import time

        device = next(self.model.parameters()).device
        try:
            cond = self._cond(device)
        except ValueError as e:  # a prompt the tokeniser cannot read: say why, keep the last grid
            self.info.value = f"<span style='color:#b00'>⚠ {e}</span>"
            return
        g = torch.Generator().manual_seed(int(self.seed.value))
        x_T = torch.randn((self.n, *self.shape), generator=g).to(device)
        guided = self._guidance.classifier_free(self.model, cond, float(self.scale.value),
                                                rescale=float(self.rescale.value))
        run_steps = min(self.steps, self.preview_steps) if preview else self.steps
        start = time.perf_counter()
        out = self._sampling.ddim_sample(guided, x_T, self.schedule, steps=run_steps, progress=False,
                                         clip_denoised=True).cpu()
        secs = time.perf_counter() - start
        self._show_grid(self._make_grid(out, nrow=int(math.ceil(math.sqrt(self.n)))), self.png_scale)
        if preview and run_steps < self.steps:
            self.info.value = f"<i>preview ({run_steps} steps, {secs:.2f} s) — ⏳ {self.steps} steps follow…</i>"
            return
        self.last = out
        s = float(self.scale.value)
        meaning = "unconditional" if s == 0 else "plain conditional" if s == 1 else f"guided (w = s − 1 = {s - 1:g})"
        calls = ("one batched (uncond + cond) call per step" if s not in (0.0, 1.0) or self.rescale.value
                 else "one plain call per step")
        self.info.value = f"s = {s:g}: {meaning}; DDIM-{self.steps}, {calls} — {secs:.2f} s"

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class TwoStepExplorer(_GridExplorer):
    """Drag the intermediate time of a consistency model's 2-step sampler (Song et al. 2023, Alg. 1) and watch the
    grid change: the first call maps the noise from t = T − 1 to x̂₀ (the same for every setting), the second re-noises
    x̂₀ to the chosen grid time and maps it again.

    Args:
        model: a ``consistency.ConsistencyModel`` (its ``grid`` gives the times to choose from).
        n: images in the grid; ``class_names``: the labels of the class picker ("any" = unconditional).
    """

    def __init__(self, model: Callable[..., torch.Tensor], n: int = 16, class_names: list[str] | None = None,
                 image_shape: tuple[int, int, int] = (1, 28, 28), initial_t: int = 499, scale: int = 3):
        from . import consistency
        from .viz import make_grid

        n = validate.positive_int("n", n)
        if class_names is not None:
            validate.names("class_names", class_names)
        grid = getattr(model, "grid", None)
        if grid is None or not hasattr(model, "schedule"):
            raise TypeError(f"model must be a consistency model with .grid and .schedule, got {type(model).__name__}")
        times = [int(t) for t in grid.tolist()[1:-1]]   # strictly between t_min and the top: where a 2nd call can go
        if not times:
            raise ValueError("the model's grid has no time between its ends: a 2-step sampler needs N >= 2")
        if initial_t not in times:
            raise ValueError(f"initial_t must be one of the model's grid times {times}, got {initial_t!r}")
        self._consistency, self._make_grid = consistency, make_grid
        self.model, self.n, self.shape, self.scale = model, n, image_shape, scale
        self.t_mid = W.SelectionSlider(options=times, value=initial_t, description="t, 2nd call",
                                       continuous_update=True)
        self.seed = W.IntText(value=0, description="seed", layout=W.Layout(width="160px"))
        options = ["any (unconditional)"] + list(class_names or [])
        self.label = W.Dropdown(options=options, value=options[0], description="class", disabled=class_names is None)
        self.image = W.Image(format="png")
        self.info = W.HTML()
        for control in (self.t_mid, self.seed, self.label):
            control.observe(self._changed, names="value")
        self.widget = W.VBox([self.t_mid, W.HBox([self.seed, self.label]), self.image, self.info])
        self.last = None
        self.update()

    def _controls(self) -> dict:
        return {"t_mid": self.t_mid, "seed": self.seed, "label": self.label}

    def update(self, preview: bool = False) -> None:
        """Sample and show the grid (two calls are quick already: a preview draws the full grid too)."""
        import time

        g, x_T, cond = self._noise_and_labels()
        top = self.model.schedule.T - 1
        start = time.perf_counter()
        self.last = self._consistency.sample(self.model, x_T, steps=2, timesteps=torch.tensor([top, self.t_mid.value]),
                                             cond=cond, generator=g, clip_denoised=True).cpu()
        secs = time.perf_counter() - start
        self._show_grid(self._make_grid(self.last, nrow=int(math.ceil(math.sqrt(self.n)))), self.scale)
        self.info.value = f"2 calls: t = {top} → re-noise to t = {self.t_mid.value} — {secs:.2f} s"

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class _FieldExplorer(_Deferred):
    """Shared by the 2-D field explorers of chapters 6 and 9: a t slider, the field drawn by ``draw(ax, t)`` as a
    picture, a busy line at once on a change, and :meth:`figure`, the static version at several t."""

    figsize, dpi = 4.6, 80

    def _setup(self, t: float, low: float, step: float, readout: str) -> None:
        self.t = W.FloatSlider(value=t, min=low, max=1.0, step=step, description="t", continuous_update=True,
                               readout_format=readout)
        # shown at its own size (capped at the cell's width), not stretched to the whole cell
        self.image = W.Image(format="png", layout=W.Layout(width=f"{round(self.figsize * self.dpi)}px", max_width="100%",
                                                           height="auto"))
        self.info = W.HTML()
        self.t.observe(self._changed, names="value")
        self.widget = W.VBox([self.t, self.image, self.info])
        self.update()

    def draw(self, ax: "Axes", t: float) -> float:
        raise NotImplementedError

    def _describe(self, t: float, err: float) -> str:
        raise NotImplementedError

    def _changed(self, _change=None) -> None:
        self.info.value = "<i>⏳ drawing…</i>"     # at once: the old picture stays up until the new one is drawn
        self._schedule((0.01, self.update))

    def update(self) -> None:
        """Redraw the field at the slider's t; the info line ends with the time it took on this machine."""
        import io
        import time

        start = time.perf_counter()
        fig, ax = plt.subplots(figsize=(self.figsize, self.figsize))
        t = float(self.t.value)
        err = self.draw(ax, t)
        ax.legend(loc="upper right", fontsize=7, framealpha=0.9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi)
        plt.close(fig)
        self.image.value = buf.getvalue()
        self.info.value = f"{self._describe(t, err)} — drawn in {time.perf_counter() - start:.2f} s"

    def figure(self, ts: Sequence[float] = (0.9, 0.6, 0.3, 0.05), size: float = 3.2) -> Figure:
        """The static version: the field at several ``ts`` side by side."""
        ts = [validate.real("ts", t, low=float(self.t.min), high=1.0) for t in ts]
        fig, axes = plt.subplots(1, len(ts), figsize=(size * len(ts), size + 0.3), squeeze=False)
        for ax, t in zip(axes[0], ts):
            self.draw(ax, t)
        axes[0, 0].legend(loc="lower left", fontsize=7, framealpha=0.9)
        fig.tight_layout()
        return fig

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def _finite_field(name: str, values: torch.Tensor, t: float) -> None:
    """Refuse a field that returned NaN or ±inf on the samples of p_t (a relative error of NaN would say nothing)."""
    if not torch.isfinite(values).all():
        raise ValueError(f"the {name} field returned non-finite values at t = {float(t):g} "
                         f"({int((~torch.isfinite(values)).sum())} of {values.shape[0]} samples)")


def _plane_grid(lim: float, points: int, dtype: torch.dtype) -> torch.Tensor:
    """A points × points grid of 2-D positions on [−lim, lim]², flattened to (points², 2)."""
    axis = torch.linspace(-lim, lim, points, dtype=dtype)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([gx.flatten(), gy.flatten()], dim=1)


def _points_2d(data: torch.Tensor) -> torch.Tensor:
    data = validate.float_tensor("data", data)
    if data.ndim != 2 or data.shape[1] != 2:
        raise ValueError(f"data must have shape (N, 2), got {tuple(data.shape)}")
    return data


class ScoreFieldExplorer(_FieldExplorer):
    """A t slider over a 2-D score field: the exact score ∇log p_t (black) and a learned one (red) on a grid, with
    samples of p_t behind them (chapter 6; Vincent 2011 for why a denoiser's ε̂ gives it, s_θ = −ε̂/σ).

    The score's size varies by orders of magnitude across the plane, so the arrows at a point are drawn in units of
    the exact score's length there: black arrows have length 1 (shorter only where the exact score is below a tenth
    of its median size on the grid, at a mode or a saddle — there it is divided by that tenth instead), a red one
    shows the learned score's length relative to the exact one, capped at ``cap`` (the capped ones are counted). The
    title gives the relative error E‖s_θ − s‖² / E‖s‖² on samples of p_t — where the field matters.

    Args:
        learned, exact: scores ``s(x, t)`` on (B, 2) tensors with continuous t in (0, 1].
        sde: the SDE of both (``alpha_sigma`` and ``sample_marginal``, e.g. ``sde.DiscreteVPSDE``).
        data: (N, 2) samples of the data (t = 0); seed: of the noise that makes them samples x_t of p_t.
        t, t_min: where the slider starts and its smallest value; lim, points: the arrow grid on [−lim, lim]².
    """

    def __init__(self, learned: Callable[..., torch.Tensor], exact: Callable[..., torch.Tensor], sde: object,
                 data: torch.Tensor, t: float = 0.3, t_min: float = 0.005, lim: float = 3.0, points: int = 17,
                 cap: float = 1.5, seed: int = 7):
        for attr in ("alpha_sigma", "sample_marginal"):
            if not hasattr(sde, attr):
                raise TypeError(f"sde must have alpha_sigma and sample_marginal (e.g. sde.DiscreteVPSDE), got "
                                f"{type(sde).__name__} without {attr!r}")
        self.data = _points_2d(data)
        self.t_min = validate.real("t_min", t_min, low=0.0, high=1.0, low_open=True)
        t = validate.real("t", t, low=self.t_min, high=1.0)
        self.lim = validate.real("lim", lim, low=0.0, low_open=True)
        self.cap = validate.real("cap", cap, low=0.0, low_open=True)
        self.seed = validate.seed("seed", seed)
        self.learned, self.exact, self.sde = learned, exact, sde
        self.grid = _plane_grid(self.lim, validate.positive_int("points", points), self.data.dtype)
        self.cell = 2 * self.lim / max(1, points - 1)
        self._setup(t, low=self.t_min, step=0.005, readout=".3f")

    def sigma(self, t: float) -> float:
        """σ(t), the noise level of p_t."""
        return float(self.sde.alpha_sigma(torch.tensor([float(t)], dtype=torch.float64))[1])

    def samples(self, t: float) -> torch.Tensor:
        """The explorer's samples x_t of p_t: its data noised with the same seeded noise at every t."""
        tt = torch.full((self.data.shape[0],), float(t), dtype=self.data.dtype)
        return self.sde.sample_marginal(self.data, tt, torch.Generator().manual_seed(self.seed))[0]

    def error_terms(self, t: float) -> dict[str, float]:
        """The learned score's error on the samples x_t of p_t: ``relative`` = E‖s_θ − s‖² / E‖s‖² with its standard
        error ``se`` (delta method over the samples), ``score_sq`` = E‖s‖², and the same two in ε units (ε = −σ·s, what
        the network predicts): ``eps_target`` = σ²·E‖s‖² and ``eps_error`` = σ²·E‖s_θ − s‖²."""
        x_t = self.samples(t)
        tt = torch.full((x_t.shape[0],), float(t), dtype=x_t.dtype)
        with torch.no_grad():
            s_e = self.exact(x_t, tt).double()
            err = (self.learned(x_t, tt).double() - s_e).pow(2).sum(1)
        _finite_field("learned", err, t)
        size = s_e.pow(2).sum(1)
        _finite_field("exact", size, t)
        rel = float(err.mean() / size.mean().clamp(min=1e-300))
        se = float((err - rel * size).std() / (size.mean() * math.sqrt(len(err))).clamp(min=1e-300))
        var = self.sigma(t) ** 2
        return {"relative": rel, "se": se, "score_sq": float(size.mean()), "eps_target": var * float(size.mean()),
                "eps_error": var * float(err.mean())}

    def relative_error(self, t: float) -> float:
        """E‖s_θ(x_t, t) − s(x_t, t)‖² / E‖s(x_t, t)‖² over the explorer's samples x_t of p_t."""
        return self.error_terms(t)["relative"]

    def arrows(self, t: float) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(exact, learned, capped): both fields on the grid in units of the exact score's length at each point (at
        least a tenth of its median length), the learned one capped at ``cap``; ``capped`` counts the red arrows that
        were longer."""
        tt = torch.full((self.grid.shape[0],), float(t), dtype=self.grid.dtype)
        with torch.no_grad():
            s_e, s_l = self.exact(self.grid, tt), self.learned(self.grid, tt)
        length = s_e.norm(dim=1, keepdim=True)
        unit = length.clamp(min=max(0.1 * float(length.median()), 1e-12))
        u_e, u_l = s_e / unit, s_l / unit
        capped = int((u_l.norm(dim=1) > self.cap).sum())
        return u_e, u_l * (self.cap / u_l.norm(dim=1, keepdim=True).clamp(min=self.cap)), capped

    def draw(self, ax: "Axes", t: float) -> float:
        """Draw samples of p_t and the two fields at ``t`` on a matplotlib axis (a unit arrow is 0.8 grid cells; the
        thin black exact arrow on top of the wider red one); returns the relative error."""
        u_e, u_l, capped = self.arrows(t)
        err = self.relative_error(t)
        x_t = self.samples(t)
        ax.scatter(x_t[:, 0], x_t[:, 1], s=2, color="tab:blue", alpha=0.2, label="x_t (samples of p_t)")
        kw = dict(angles="xy", scale_units="xy", scale=1 / (0.8 * self.cell))
        ax.quiver(self.grid[:, 0], self.grid[:, 1], u_l[:, 0], u_l[:, 1], color="tab:red", width=0.008,
                  label="learned score", **kw)
        ax.quiver(self.grid[:, 0], self.grid[:, 1], u_e[:, 0], u_e[:, 1], color="black", width=0.003,
                  label="exact score", **kw)
        pad = self.lim + self.cell
        ax.set(xlim=(-pad, pad), ylim=(-pad, pad), aspect="equal")
        ax.set_title(f"t = {t:.3f}, σ(t) = {self.sigma(t):.3f}, rel. error {err:.3f}\n"
                     f"({capped} red arrow{'' if capped == 1 else 's'} capped at {self.cap:g}×)", fontsize=9)
        return err

    def _describe(self, t: float, err: float) -> str:
        return (f"t = {t:.3f}, σ(t) = {self.sigma(t):.3f}, relative error {err:.3f}; arrows in units of the exact "
                f"score's length at their point, red capped at {self.cap:g}×")


class VelocityFieldExplorer(_FieldExplorer):
    """A t slider over a 2-D velocity field: the exact marginal velocity (black) and a learned one (red) on a grid,
    with the noised data x_t = (1 − t) x₀ + t ε behind them (chapter 9, flow matching).

    Arrows show where a point moves in the next Δt = ``arrow_dt`` of the sampler (towards data, so −v·Δt), clipped to
    ``max_length`` so that no arrow leaves its neighbourhood; the title gives the learned field's relative error
    E‖v_θ − v‖ / E‖v‖ on samples of p_t, where it matters.

    Args:
        learned: a velocity model ``v(x, t)`` on (B, 2) float32; ``exact``: the exact one (e.g.
            ``lambda x, t: flow.exact_velocity(mixture, x, t)``).
        data: (N, 2) samples of the data distribution (t = 0), for the background and the error.
    """

    def __init__(self, learned: Callable[..., torch.Tensor], exact: Callable[..., torch.Tensor], data: torch.Tensor,
                 t: float = 0.5, lim: float = 3.5, points: int = 17, arrow_dt: float = 0.15,
                 max_length: float | None = None, seed: int = 0):
        data = _points_2d(data)
        t = validate.real("t", t, low=0.0, high=1.0)
        self.lim = validate.real("lim", lim, low=0.0, low_open=True)
        self.arrow_dt = validate.real("arrow_dt", arrow_dt, low=0.0, low_open=True)
        points = validate.positive_int("points", points)
        self.max_length = 2 * self.lim / points if max_length is None else validate.real("max_length", max_length)
        self.learned, self.exact = learned, exact
        self.data = data[:2000].float()
        self.noise = torch.randn(self.data.shape, generator=torch.Generator().manual_seed(seed))
        self.grid = _plane_grid(self.lim, points, torch.float32)
        self._setup(t, low=0.0, step=0.02, readout=".2f")

    def relative_error(self, t: float) -> float:
        """E‖v_θ(x_t, t) − v(x_t, t)‖ / E‖v(x_t, t)‖ over the explorer's samples x_t of p_t."""
        x_t = (1 - t) * self.data + t * self.noise
        tt = torch.full((x_t.shape[0],), float(t))
        with torch.no_grad():
            v_l, v_e = self.learned(x_t, tt).float(), self.exact(x_t, tt).float()
        _finite_field("learned", v_l, t)
        _finite_field("exact", v_e, t)
        return float((v_l - v_e).norm(dim=1).mean() / v_e.norm(dim=1).mean().clamp(min=1e-12))

    def _arrows(self, v: torch.Tensor) -> torch.Tensor:
        step = -self.arrow_dt * v                                  # the sampler moves against v (t decreases)
        length = step.norm(dim=1, keepdim=True)
        return step * (self.max_length / length.clamp(min=1e-12)).clamp(max=1.0)

    def draw(self, ax: "Axes", t: float) -> float:
        """Draw the field at ``t`` on a matplotlib axis; returns the relative error."""
        x_t = (1 - t) * self.data + t * self.noise
        tt = torch.full((self.grid.shape[0],), float(t))
        with torch.no_grad():
            v_e, v_l = self.exact(self.grid, tt).float(), self.learned(self.grid, tt).float()
        err = self.relative_error(t)
        ax.scatter(x_t[:, 0], x_t[:, 1], s=2, color="tab:blue", alpha=0.25, label="x_t (samples of p_t)")
        for v, color, name in ((v_e, "black", "exact velocity"), (v_l, "tab:red", "learned")):
            a = self._arrows(v)
            ax.quiver(self.grid[:, 0], self.grid[:, 1], a[:, 0], a[:, 1], color=color, angles="xy",
                      scale_units="xy", scale=1, width=0.004, alpha=0.8 if color == "black" else 1.0, label=name)
        ax.set(xlim=(-self.lim, self.lim), ylim=(-self.lim, self.lim), aspect="equal")
        ax.set_title(f"t = {t:.2f}: relative error {err:.3f}", fontsize=9)
        return err

    def _describe(self, t: float, err: float) -> str:
        return (f"t = {t:.2f}, relative error {err:.3f}; arrows: where a point moves in the next Δt = {self.arrow_dt} "
                f"(clipped at {self.max_length:.2f})")


def _choice_options(images: torch.Tensor, labels: torch.Tensor | None, class_names: Sequence[str] | None,
                    choices: int | Sequence[int]) -> list[tuple[str, int]]:
    """Dropdown options ``("3: Dress", 3)`` for the images a panel explorer offers (the first ``choices``, or those)."""
    n = images.shape[0]
    if isinstance(choices, int) and not isinstance(choices, bool):
        idx = list(range(min(validate.positive_int("choices", choices), n)))
    else:
        idx = [validate.integer(f"choices[{i}]", c, low=0, high=n - 1) for i, c in enumerate(choices)]
        if not idx:
            raise ValueError("choices must be a positive int or a non-empty list of image indices")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (n,)):
        raise ValueError(f"labels must be a tensor of shape ({n},) (one label per image), got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if class_names is not None:
        class_names = validate.names("class_names", list(class_names))
        if labels is None:
            raise ValueError("class_names needs labels (which class each image is)")

    def name(i: int) -> str:
        if labels is None:
            return f"image {i}"
        k = int(labels[i])
        return f"{i}: {class_names[k]}" if class_names is not None and 0 <= k < len(class_names) else f"{i}: class {k}"
    return [(name(i), i) for i in idx]


class _PanelExplorer(_Deferred):
    """Shared by the panel explorers of chapters 5 and 8: a busy line at once, held updates, and the settings that
    :meth:`figure` applies (checked against what each control can show, then restored)."""

    _hold = False
    _busy = "<i>⏳ drawing…</i>"

    def _controls(self) -> dict:
        raise NotImplementedError

    def _changed(self, _change=None) -> None:
        if not self._hold:
            self.info.value = self._busy   # say at once that a new picture is coming; the old one stays up meanwhile
            self._schedule((0.01, self.update))

    def _apply(self, setting: dict) -> None:
        """Set the controls named in ``setting`` without redrawing; refuse unknown names and values a control cannot
        show (a slider would clamp them silently)."""
        controls = self._controls()
        if not isinstance(setting, dict):
            raise ValueError(f"each setting must be a dict {{control name: value}}, got {type(setting).__name__}")
        unknown = set(setting) - set(controls)
        if unknown:
            raise ValueError(f"unknown control(s) {sorted(unknown)}; available: {sorted(controls)}")
        for k, v in setting.items():
            w = controls[k]
            if hasattr(w, "options"):
                values = [o[1] if isinstance(o, (tuple, list)) else o for o in w.options]
                if v not in values:
                    raise ValueError(f"{k}={v!r} is not one of this explorer's choices {values}")
            elif not w.min <= v <= w.max:
                raise ValueError(f"{k}={v!r} is outside this explorer's range [{w.min}, {w.max}]")
        self._hold = True
        try:
            for k, v in setting.items():
                controls[k].value = v
        finally:
            self._hold = False

    def _each_setting(self, settings: Sequence[dict]):
        """Yield after applying each setting in turn, on top of the one before, and updating; the controls and the
        picture are restored afterwards."""
        if not settings:
            raise ValueError("settings must be a non-empty list of {control name: value} dicts")
        keep = {k: w.value for k, w in self._controls().items()}
        try:
            for setting in settings:
                self._apply(setting)
                self.update()
                yield setting
        finally:
            self._apply(keep)
            self.update()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class LatentExplorer(_PanelExplorer):
    """Walk an autoencoder's latent from one garment to another (chapter 5): the two originals, the decoded latent
    blend D((1 − α)·z_A + α·z_B) and, for contrast, the pixel blend (1 − α)·x_A + α·x_B.

    z is the posterior mean of q(z|x) (Rombach et al. 2022, Sec. 3). A channel picker multiplies one latent channel
    of the blend by a gain, to see what that channel carries. Decoding one latent takes milliseconds, so the sliders
    redraw while they move.

    Args:
        vae: an autoencoder with ``encode(x) → (mean, logvar)``, ``decode(z)`` and ``latent_shape`` (``fmnist-vae``).
        images: (N, C, H, W) in [−1, 1] to pick from (e.g. the test set); ``choices``: how many of the first ones the
            pickers offer, or a list of indices.
        labels, class_names: optional, to name the choices ("3: Dress").
        a, b: the indices of the two garments; alpha: the starting α in [0, 1]; scale: display zoom.
    """

    _busy = "<i>⏳ decoding…</i>"

    def __init__(self, vae: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                 class_names: Sequence[str] | None = None, choices: int | Sequence[int] = 20, a: int = 0, b: int = 2,
                 alpha: float = 0.5, scale: int = 5):
        for attr in ("encode", "decode", "latent_shape"):
            if not hasattr(vae, attr):
                raise TypeError(f"vae must be an autoencoder with encode, decode and latent_shape (fmnist-vae), "
                                f"got {type(vae).__name__} without {attr!r}")
        images = validate.float_tensor("images", images, min_ndim=4)
        options = _choice_options(images, labels, class_names, choices)
        values = [v for _, v in options]
        for name, idx in (("a", a), ("b", b)):
            if idx not in values:
                raise ValueError(f"{name}={idx!r} is not one of the images offered (indices {values[:8]}"
                                 f"{', …' if len(values) > 8 else ''}): pass it in choices")
        alpha = validate.real("alpha", alpha, low=0.0, high=1.0)
        self.scale = validate.positive_int("scale", scale)
        self.vae, self.images = vae, images
        self.channels = int(vae.latent_shape[0])
        self._z: dict[int, torch.Tensor] = {}
        self.alpha = W.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="α", continuous_update=True,
                                   readout_format=".2f", layout=W.Layout(width="420px"))
        self.a = W.Dropdown(options=options, value=a, description="garment A")
        self.b = W.Dropdown(options=options, value=b, description="garment B")
        self.channel = W.Dropdown(options=[("none", -1)] + [(str(c), c) for c in range(self.channels)], value=-1,
                                  description="channel")
        self.gain = W.FloatSlider(value=1.0, min=-3.0, max=3.0, step=0.25, description="× gain", continuous_update=True,
                                  readout_format=".2f")
        self.panels = [W.Image(format="png") for _ in range(4)]
        self.captions = [W.HTML() for _ in range(4)]
        self.info = W.HTML()
        for control in self._controls().values():
            control.observe(self._changed, names="value")
        columns = [W.VBox([p, c], layout=W.Layout(align_items="center")) for p, c in zip(self.panels, self.captions)]
        self.widget = W.VBox([self.alpha, W.HBox([self.a, self.b]), W.HBox([self.channel, self.gain]),
                              W.HBox(columns), self.info])
        self.last: dict[str, torch.Tensor] = {}
        self.update()

    def _controls(self) -> dict:
        return {"alpha": self.alpha, "a": self.a, "b": self.b, "channel": self.channel, "gain": self.gain}

    @torch.no_grad()
    def latent(self, index: int) -> torch.Tensor:
        """The posterior mean z of image ``index`` (c, h, w), encoded once and kept."""
        if index not in self._z:
            device = next(self.vae.parameters()).device if hasattr(self.vae, "parameters") else torch.device("cpu")
            self._z[index] = self.vae.encode(self.images[index:index + 1].to(device))[0][0]
        return self._z[index]

    @torch.no_grad()
    def blend(self, a: int, b: int, alpha: float, channel: int = -1, gain: float = 1.0) -> dict[str, torch.Tensor]:
        """The two blends at α: ``latent`` = D((1 − α)·z_A + α·z_B) (with channel ``channel`` × ``gain``; −1 = none)
        and ``pixel`` = (1 − α)·x_A + α·x_B, both (C, H, W) in [−1, 1] on the CPU."""
        alpha = validate.real("alpha", alpha, low=0.0, high=1.0)
        channel = validate.integer("channel", channel, low=-1, high=self.channels - 1)
        z = (1 - alpha) * self.latent(a) + alpha * self.latent(b)
        if channel >= 0:
            z = z.clone()
            z[channel] = z[channel] * float(gain)
        x_lat = self.vae.decode(z[None]).clamp(-1, 1)[0].float().cpu()
        x_pix = (1 - alpha) * self.images[a] + alpha * self.images[b]
        return {"latent": x_lat, "pixel": x_pix.float().cpu()}

    def update(self) -> None:
        """Redraw the four panels for the controls' current values."""
        import time

        start = time.perf_counter()
        a, b, alpha = int(self.a.value), int(self.b.value), float(self.alpha.value)
        channel, gain = int(self.channel.value), float(self.gain.value)
        self.gain.disabled = channel < 0
        self.last = self.blend(a, b, alpha, channel, gain)
        shown = (self.images[a], self.images[b], self.last["latent"], self.last["pixel"])
        for panel, img in zip(self.panels, shown):
            panel.value = png_bytes(to_numpy_image(img), self.scale)
        self.captions[0].value = f"<b>A</b> ({self.a.label})"
        self.captions[1].value = f"<b>B</b> ({self.b.label})"
        extra = f", channel {channel} × {gain:g}" if channel >= 0 else ""
        self.captions[2].value = f"<b>latent blend</b><br>D((1−α)·z<sub>A</sub> + α·z<sub>B</sub>){extra}"
        self.captions[3].value = "<b>pixel blend</b><br>(1−α)·x<sub>A</sub> + α·x<sub>B</sub>"
        self.info.value = (f"α = {alpha:.2f}: {1 - alpha:.2f} of A, {alpha:.2f} of B{extra} — drawn in "
                           f"{(time.perf_counter() - start) * 1e3:.0f} ms")

    def _describe(self, setting: dict) -> str:
        parts = []
        for k in setting:
            if k == "alpha":
                parts.append(f"α = {self.alpha.value:.2f}")
            elif k in ("a", "b"):
                parts.append(f"{k.upper()} = {self._controls()[k].label}")
            elif k == "channel":
                parts.append("no channel scaled" if self.channel.value < 0 else f"channel {self.channel.value}")
            else:
                parts.append(f"gain × {self.gain.value:g}")
        return "\n".join(parts)

    def figure(self, settings: Sequence[dict] | None = None, size: float = 1.6) -> Figure:
        """The static version: one column per setting ({control: value}, controls ``alpha``, ``a``, ``b``,
        ``channel``, ``gain``; each applied on top of the one before; default: α = 0, 0.25, …, 1), the latent blend
        above the pixel blend, titled with what the setting changed. The controls are restored afterwards."""
        settings = [{"alpha": s} for s in (0.0, 0.25, 0.5, 0.75, 1.0)] if settings is None else list(settings)
        cols = []
        for setting in self._each_setting(settings):
            cols.append((self._describe(setting), self.last["latent"], self.last["pixel"]))
        lines = max(t.count("\n") + 1 for t, _, _ in cols)
        fig, axes = plt.subplots(2, len(cols), figsize=(size * len(cols) + 0.6, 2 * size + 0.2 * lines),
                                 squeeze=False)
        for j, (title, lat, pix) in enumerate(cols):
            for i, img in enumerate((lat, pix)):
                axes[i, j].imshow(to_numpy_image(img), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
            axes[0, j].set_title(title, fontsize=8)
        axes[0, 0].set_ylabel("latent blend")
        axes[1, 0].set_ylabel("pixel blend")
        fig.tight_layout()
        return fig


class AttentionExplorer(_PanelExplorer):
    """What one token of a latent DiT attends to (chapter 8): pick a query token (row, col) on the latent grid, a
    block and a noise level t; see that token's attention over all tokens as a heat map on the garment.

    The attention is softmax(QKᵀ/√d) of the chosen block (Vaswani et al. 2017, Eq. 1; ``DiT.attention_maps``), on
    z_t = √ᾱ_t·z₀ + √(1−ᾱ_t)·ε with z₀ the garment's scaled latent and ε fixed by ``seed``. One forward pass gives
    every block's maps, and it is kept per (garment, t): moving the block, the token or the head is instant. A latent
    token covers roughly f×f pixels of the image (f = image size / grid size); its receptive field is wider.

    Args:
        ldm: a ``latent.LatentDiffusion`` whose denoiser has ``attention_maps`` (``fmnist-ldm-dit``).
        images: (N, C, H, W) in [−1, 1] to pick from; ``choices``: how many of the first ones, or a list of indices.
        labels, class_names: optional; with labels the DiT is conditioned on the garment's class, else unconditional.
        index, t, block (1-based; default the last), row, col: where the controls start; seed: of the noise ε.
    """

    _busy = "<i>⏳ computing attention…</i>"
    _cache_size = 64

    def __init__(self, ldm: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                 class_names: Sequence[str] | None = None, choices: int | Sequence[int] = 20, index: int = 0,
                 t: int = 300, block: int | None = None, row: int = 3, col: int = 3, seed: int = 0, scale: int = 6):
        model = getattr(ldm, "model", None)
        if model is None or not hasattr(model, "attention_maps") or not hasattr(ldm, "schedule"):
            raise TypeError(f"ldm must be a latent.LatentDiffusion with a DiT denoiser (fmnist-ldm-dit), got "
                            f"{type(ldm).__name__}")
        images = validate.float_tensor("images", images, min_ndim=4)
        options = _choice_options(images, labels, class_names, choices)
        if index not in [v for _, v in options]:
            raise ValueError(f"index={index!r} is not one of the images offered: pass it in choices")
        self.T = int(ldm.schedule.T)
        depth = len(model.blocks)
        self.grid = int(model.input_size[0]) // int(model.patch)
        t = validate.integer("t", t, low=0, high=self.T - 1)
        block = depth if block is None else validate.integer("block", block, low=1, high=depth)
        row = validate.integer("row", row, low=0, high=self.grid - 1)
        col = validate.integer("col", col, low=0, high=self.grid - 1)
        self.seed = validate.seed("seed", seed)
        self.scale = validate.positive_int("scale", scale)
        self.ldm, self.model, self.images, self.labels = ldm, model, images, labels
        self.use_labels = labels is not None and bool(getattr(model, "num_classes", 0))
        self._cache: dict[tuple[int, int], dict] = {}
        self._z0: dict[int, torch.Tensor] = {}
        self.image_menu = W.Dropdown(options=options, value=index, description="garment")
        heads = int(model.blocks[0].attn.heads)
        self.head = W.Dropdown(options=[("mean of all", -1)] + [(str(h + 1), h) for h in range(heads)], value=-1,
                               description="head")
        self.t = W.IntSlider(value=t, min=0, max=self.T - 1, step=1, description="t", continuous_update=True)
        self.block = W.IntSlider(value=block, min=1, max=depth, description="block", continuous_update=True)
        self.row = W.IntSlider(value=row, min=0, max=self.grid - 1, description="token row", continuous_update=True)
        self.col = W.IntSlider(value=col, min=0, max=self.grid - 1, description="token col", continuous_update=True)
        self.panels = [W.Image(format="png") for _ in range(3)]
        self.captions = [W.HTML() for _ in range(3)]
        self.info = W.HTML()
        for control in self._controls().values():
            control.observe(self._changed, names="value")
        columns = [W.VBox([p, c], layout=W.Layout(align_items="center")) for p, c in zip(self.panels, self.captions)]
        self.widget = W.VBox([W.HBox([self.t, self.block]), W.HBox([self.row, self.col]),
                              W.HBox([self.image_menu, self.head]), W.HBox(columns), self.info])
        self.last: torch.Tensor | None = None
        self.update()

    def _controls(self) -> dict:
        return {"t": self.t, "block": self.block, "row": self.row, "col": self.col, "image": self.image_menu,
                "head": self.head}

    @torch.no_grad()
    def forward_pass(self, index: int, t: int) -> dict:
        """Every block's attention (depth, heads, N, N) and the decoded z_t for garment ``index`` at ``t`` — one
        forward pass, kept (the oldest of ``_cache_size`` entries is dropped)."""
        key = (int(index), int(t))
        if key not in self._cache:
            device = next(self.model.parameters()).device
            if index not in self._z0:
                self._z0[index] = self.ldm.encode(self.images[index:index + 1].to(device))
            z0 = self._z0[index]
            noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(self.seed)).to(device)
            tt = torch.tensor([int(t)], device=device)
            z_t = forward.q_sample(z0, tt, self.ldm.schedule, noise)
            cond = self.labels[index:index + 1].to(device).long() if self.use_labels else None
            maps = self.model.attention_maps(z_t, tt, cond)[:, 0].float().cpu()        # (depth, heads, N, N)
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = {"maps": maps, "seen": self.ldm.decode(z_t)[0].float().cpu(),
                                "alpha_bar": float(self.ldm.schedule.alpha_bar[int(t)])}
        return self._cache[key]

    def attention(self, index: int, t: int, block: int, row: int, col: int, head: int = -1) -> torch.Tensor:
        """The query token (row, col)'s attention over the grid (grid, grid), summing to 1; ``block`` 1-based,
        ``head`` −1 = the mean over heads."""
        maps = self.forward_pass(index, t)["maps"]
        block = validate.integer("block", block, low=1, high=maps.shape[0])
        head = validate.integer("head", head, low=-1, high=maps.shape[1] - 1)
        row = validate.integer("row", row, low=0, high=self.grid - 1)
        col = validate.integer("col", col, low=0, high=self.grid - 1)
        m = maps[block - 1].mean(0) if head < 0 else maps[block - 1, head]
        return m[row * self.grid + col].reshape(self.grid, self.grid)

    def overlay(self, index: int, weights: torch.Tensor, row: int, col: int) -> np.ndarray:
        """The garment in grey under the attention heat map (magma, scaled to its maximum), the query token framed
        in cyan: an (H, W, 3) array in [0, 1]."""
        import numpy as np

        img = to_numpy_image(self.images[index])
        if img.ndim == 3:
            img = img.mean(-1)
        f = img.shape[0] // self.grid
        w = (weights / weights.max().clamp(min=1e-12)).numpy()
        heat = plt.get_cmap("magma")(np.kron(w, np.ones((f, f))))[..., :3]
        base = np.zeros_like(heat)
        base[:heat.shape[0], :heat.shape[1]] = img[:heat.shape[0], :heat.shape[1], None]
        out = 0.35 * base + 0.65 * heat
        r0, c0, cyan = row * f, col * f, np.array([0.0, 1.0, 1.0])
        out[r0, c0:c0 + f] = out[r0 + f - 1, c0:c0 + f] = cyan
        out[r0:r0 + f, c0] = out[r0:r0 + f, c0 + f - 1] = cyan
        return out

    def _query_frame(self, index: int, row: int, col: int):
        """The garment with the query token framed in cyan."""
        import numpy as np

        img = to_numpy_image(self.images[index])
        rgb = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img.copy()
        f = rgb.shape[0] // self.grid
        r0, c0, cyan = row * f, col * f, np.array([0.0, 1.0, 1.0])
        rgb[r0, c0:c0 + f] = rgb[r0 + f - 1, c0:c0 + f] = cyan
        rgb[r0:r0 + f, c0] = rgb[r0:r0 + f, c0 + f - 1] = cyan
        return rgb

    def summary(self, weights: torch.Tensor, row: int, col: int) -> dict[str, float]:
        """The share of the query's attention on itself and on its 3×3 neighbourhood, and what uniform attention
        would give there."""
        rows, cols = torch.meshgrid(torch.arange(self.grid), torch.arange(self.grid), indexing="ij")
        near = ((rows - row).abs() <= 1) & ((cols - col).abs() <= 1)
        return {"self": float(weights[row, col]), "near": float(weights[near].sum()),
                "near_uniform": float(near.sum()) / self.grid ** 2}

    def update(self) -> None:
        """Redraw for the controls' current values (a forward pass only for a (garment, t) not seen yet)."""
        import time

        start = time.perf_counter()
        index, t, block = int(self.image_menu.value), int(self.t.value), int(self.block.value)
        row, col, head = int(self.row.value), int(self.col.value), int(self.head.value)
        state = self.forward_pass(index, t)
        self.last = self.attention(index, t, block, row, col, head)
        s = self.summary(self.last, row, col)
        shown = (self._query_frame(index, row, col), to_numpy_image(state["seen"]),
                 self.overlay(index, self.last, row, col))
        for panel, img in zip(self.panels, shown):
            panel.value = png_bytes(img, self.scale)
        self.captions[0].value = f"<b>x₀</b> ({self.image_menu.label}), query token ({row}, {col})"
        self.captions[1].value = f"<b>z<sub>t</sub> decoded</b> (what the DiT sees, ᾱ = {state['alpha_bar']:.3f})"
        heads = "mean over heads" if head < 0 else f"head {head + 1}"
        self.captions[2].value = f"<b>attention of token ({row}, {col})</b><br>block {block}, {heads}"
        self.info.value = (f"t = {t}, block {block}: token ({row}, {col}) gives {s['self']:.1%} of its attention to "
                           f"itself and {s['near']:.1%} to its 3×3 neighbourhood (uniform attention: "
                           f"{s['near_uniform']:.1%}) — {(time.perf_counter() - start) * 1e3:.0f} ms")

    def figure(self, settings: Sequence[dict] | None = None, size: float = 2.0) -> Figure:
        """The static version: the heat map at each setting ({control: value}, controls ``t``, ``block``, ``row``,
        ``col``, ``image``, ``head``; each applied on top of the one before; default: the first, middle and last
        block at the current t), titled with the full state. The controls are restored afterwards."""
        depth = self.block.max
        if settings is None:
            settings = [{"block": b} for b in sorted({1, (depth + 1) // 2, depth})]
        panels = []
        for _ in self._each_setting(list(settings)):
            row, col = int(self.row.value), int(self.col.value)
            s = self.summary(self.last, row, col)
            head = "" if self.head.value < 0 else f", head {self.head.value + 1}"
            title = (f"t = {self.t.value}, block {self.block.value}{head}\ntoken ({row}, {col}): "
                     f"{s['near']:.0%} nearby")
            panels.append((title, self.overlay(int(self.image_menu.value), self.last, row, col)))
        fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size + 0.5), squeeze=False)
        for ax, (title, img) in zip(axes[0], panels):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
        fig.tight_layout()
        return fig
