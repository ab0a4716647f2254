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
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _set_playing(play: object, flag: bool) -> None:
    """Start or stop a ``Play`` timer: the public ``playing`` trait of ipywidgets 8, ``_playing`` in 7.x (Colab)."""
    setattr(play, "playing" if play.has_trait("playing") else "_playing", flag)


def is_playing(play: object) -> bool:
    """Whether a ``Play`` timer runs, in ipywidgets 7.x and 8 alike."""
    return bool(getattr(play, "playing" if play.has_trait("playing") else "_playing"))


class ForwardExplorer:
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

        self.t_slider.observe(lambda _: self.update(), names="value")
        self.image_menu.observe(lambda _: self.update(), names="value")
        self.schedule_menu.observe(lambda _: self.update(), names="value")
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
            f"(ᾱ = {ab:.4f}, SNR = {ab / max(1 - ab, 1e-12):.3g})</span>")

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
                axes[0, j].set_title(f"t={st['t']}\nᾱ={st['alpha_bar']:.3f}", fontsize=8)
            for i, lab in enumerate(("x₀", "x_t", "E[x₀|x_t]", "network")[:len(keys)]):
                axes[i, 0].set_ylabel(lab)
        finally:
            self.t_slider.value = keep
        fig.tight_layout()
        return fig

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class _GridExplorer:
    """Shared by the grid explorers: sizing the image, holding updates, and a static figure."""

    _hold = False

    def _changed(self, _change=None) -> None:
        if not self._hold:
            # say at once that a new grid is coming: sampling takes seconds on a CPU, and the old grid stays up meanwhile
            self.info.value = "<i>⏳ sampling a new grid…</i>"
            self.update()

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
        self.steps = W.IntSlider(value=20, min=1, max=min(max_steps, schedule.T), description="steps",
                                 continuous_update=False)
        self.eta = W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1, description="η", continuous_update=False)
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

    def update(self) -> None:
        import time

        g, x_T, cond = self._noise_and_labels()
        start = time.perf_counter()
        self.last = self._sampling.ddim_sample(self.model, x_T, self.schedule, steps=int(self.steps.value),
                                               eta=float(self.eta.value), spacing=self.spacing.value,
                                               generator=g, cond=cond, progress=False,
                                               clip_denoised=self.clip_denoised).cpu()
        secs = time.perf_counter() - start
        ts = self._sampling.timesteps(self.schedule.T, int(self.steps.value), self.spacing.value)
        self._show_grid(self._make_grid(self.last, nrow=int(math.ceil(math.sqrt(self.n)))), self.scale)
        shown = ", ".join(map(str, ts[:6].tolist())) + (", …" if len(ts) > 6 else "")
        self.info.value = (f"DDIM, {int(self.steps.value)} steps, η = {float(self.eta.value):.1f}, "
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
                                   continuous_update=False)
        self.rescale = W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1, description="rescale φ",
                                     continuous_update=False)
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

    def update(self) -> None:
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
        start = time.perf_counter()
        self.last = self._sampling.ddim_sample(guided, x_T, self.schedule, steps=self.steps, progress=False,
                                               clip_denoised=True).cpu()
        secs = time.perf_counter() - start
        self._show_grid(self._make_grid(self.last, nrow=int(math.ceil(math.sqrt(self.n)))), self.png_scale)
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
                                       continuous_update=False)
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

    def update(self) -> None:
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


class VelocityFieldExplorer:
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
        data = validate.float_tensor("data", data)
        if data.ndim != 2 or data.shape[1] != 2:
            raise ValueError(f"data must have shape (N, 2), got {tuple(data.shape)}")
        t = validate.real("t", t, low=0.0, high=1.0)
        self.lim = validate.real("lim", lim, low=0.0, low_open=True)
        self.arrow_dt = validate.real("arrow_dt", arrow_dt, low=0.0, low_open=True)
        points = validate.positive_int("points", points)
        self.max_length = 2 * self.lim / points if max_length is None else validate.real("max_length", max_length)
        self.learned, self.exact = learned, exact
        self.data = data[:2000].float()
        self.noise = torch.randn(self.data.shape, generator=torch.Generator().manual_seed(seed))
        axis = torch.linspace(-self.lim, self.lim, points)
        gx, gy = torch.meshgrid(axis, axis, indexing="xy")
        self.grid = torch.stack([gx.flatten(), gy.flatten()], dim=1)
        self.t = W.FloatSlider(value=t, min=0.0, max=1.0, step=0.02, description="t", continuous_update=False,
                               readout_format=".2f")
        self.image = W.Image(format="png")
        self.info = W.HTML()
        self.t.observe(self._changed, names="value")
        self.widget = W.VBox([self.t, self.image, self.info])
        self.update()

    def _changed(self, _change=None) -> None:
        self.info.value = "<i>⏳ drawing…</i>"
        self.update()

    def relative_error(self, t: float) -> float:
        """E‖v_θ(x_t, t) − v(x_t, t)‖ / E‖v(x_t, t)‖ over the explorer's samples x_t of p_t."""
        x_t = (1 - t) * self.data + t * self.noise
        tt = torch.full((x_t.shape[0],), float(t))
        with torch.no_grad():
            v_l, v_e = self.learned(x_t, tt).float(), self.exact(x_t, tt).float()
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

    def update(self) -> None:
        import io
        import time

        start = time.perf_counter()
        fig, ax = plt.subplots(figsize=(4.6, 4.6))
        err = self.draw(ax, float(self.t.value))
        ax.legend(loc="upper right", fontsize=7, framealpha=0.9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        self.image.value = buf.getvalue()
        self.info.value = (f"t = {float(self.t.value):.2f}, relative error {err:.3f}; arrows: where a point moves in "
                           f"the next Δt = {self.arrow_dt} (clipped at {self.max_length:.2f}) — drawn in "
                           f"{time.perf_counter() - start:.2f} s")

    def figure(self, ts: Sequence[float] = (0.9, 0.6, 0.3, 0.05), size: float = 3.2) -> Figure:
        """The static version: the field at several ``ts`` side by side."""
        ts = [validate.real("ts", t, low=0.0, high=1.0) for t in ts]
        fig, axes = plt.subplots(1, len(ts), figsize=(size * len(ts), size + 0.3), squeeze=False)
        for ax, t in zip(axes[0], ts):
            self.draw(ax, t)
        axes[0, 0].legend(loc="lower left", fontsize=7, framealpha=0.9)
        fig.tight_layout()
        return fig

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
