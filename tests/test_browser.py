"""The explorers in a real browser: JupyterLab on a free local port, headless Chromium driven by playwright.

Each chapter's explorer is built in a small notebook (the real widgets and the shipped models, small grids
so the kernel answers fast); the test runs it in the browser, moves one control of each explorer, checks
that the picture on screen changes (pixels, not just a new URL), that the grid explorers are shown at their
own size rather than stretched to the cell, and that the page logged no JavaScript errors.

Needs the Debian package ``chromium`` and ``pip install playwright`` (never ``playwright install``: the
system Chromium is used); skips with the reason where either is missing. Nothing is downloaded.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install playwright)"),
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian/Ubuntu: apt-get install chromium)"),
]

CELLS = [
    # chapter 1: the forward-process explorer as the chapter builds it (60,000 training images, the network's panel)
    '''import torch, diffusion_course as dc
x_train, _ = dc.data.load_fashion_mnist("train")
x_test, y_test = dc.data.load_fashion_mnist("test")
net = dc.pretrained.load("fmnist-ddpm", device="cpu")
net_schedule = net.schedule
cosine = dc.schedules.NoiseSchedule.cosine(1000)
ex1 = dc.widgets.ForwardExplorer({"a": x_test[0], "b": x_test[1]}, x_train, {"cosine": cosine},
                                 model=net, model_schedule=net_schedule)
ex1''',
    # chapter 3: the sampler explorer at the chapter's size (16 images, 20 steps)
    '''ex3 = dc.widgets.SamplerExplorer(net, net_schedule, n=16, class_names=dc.data.FASHION_CLASSES)
ex3''',
    # chapter 4: class guidance, then text guidance, at the chapter's size on a CPU (16 images, 20 steps)
    '''ex4 = dc.widgets.GuidanceExplorer(net, net_schedule, class_names=dc.data.FASHION_CLASSES, n=16, steps=20)
ex4''',
    '''t2i = dc.pretrained.load("shapes-t2i", device="cpu")
t2i_schedule = t2i.schedule
ex4t = dc.widgets.GuidanceExplorer(t2i, t2i_schedule, tokenizer=t2i.tokenizer, n=16, image_shape=(3, 32, 32),
                                   steps=20, png_scale=4)
ex4t''',
    # chapter 7: the intermediate time of the shipped consistency student's 2-step sampler (20 images, as the chapter)
    '''ex7 = dc.widgets.TwoStepExplorer(dc.pretrained.load("fmnist-cd", device="cpu"), n=20,
                                 class_names=dc.data.FASHION_CLASSES)
ex7''',
    # chapter 9: the t slider over exact and learned velocity fields (an untrained MLP stands in for the learned one)
    '''import torch
mix9 = dc.gmm.GaussianMixture.ring(8, radius=2.0, std=0.2)
data9 = mix9.sample(1000, generator=torch.Generator().manual_seed(0))[0].float()
ex9 = dc.widgets.VelocityFieldExplorer(dc.flow.FlowMLP(), lambda x, t: dc.flow.exact_velocity(mix9, x, t).float(),
                                       data9, t=0.5)
ex9''',
    # chapter 5: α walks the shipped autoencoder's latent between two test garments
    '''ex5 = dc.widgets.LatentExplorer(dc.pretrained.load("fmnist-vae", device="cpu"), x_test, y_test,
                                dc.data.FASHION_CLASSES)
ex5''',
    # chapter 8: one token's attention in the shipped latent DiT
    '''ex8 = dc.widgets.AttentionExplorer(dc.pretrained.load("fmnist-ldm-dit", device="cpu"), x_test, y_test,
                                   dc.data.FASHION_CLASSES, index=1, row=2, col=3)
ex8''',
    # chapter 6: the t slider over the exact and a learned score (the exact one, 10 % too long, stands in for it)
    '''S6 = dc.sde.DiscreteVPSDE(cosine)
exact6 = mix9.sde_score(S6)
ex6 = dc.widgets.ScoreFieldExplorer(lambda x, t: 1.1 * exact6(x, t), exact6, S6,
                                    mix9.sample(2000, generator=torch.Generator().manual_seed(6))[0], t=0.3)
ex6''',]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    import nbformat

    root = tmp_path_factory.mktemp("lab")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "explorers.ipynb")
    port, token = _free_port(), "course-browser-test"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_CONFIG_DIR": str(root / ".jupyter"),
           "JUPYTER_RUNTIME_DIR": str(root / ".runtime"), "JUPYTERLAB_SETTINGS_DIR": str(root / ".settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / ".workspaces")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.port_retries=0", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           # no terminals (the language-server extension stays: without it the page's /lsp/status call is a 404)
           "--ServerApp.terminals_enabled=False"]
    log = open(root / "lab.log", "w")
    # its own session, so that the server and the kernels it starts are stopped together at the end
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180   # seconds on an idle machine; generous for a shared one
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("JupyterLab did not start:\n" + (root / "lab.log").read_text()[-2000:])
            time.sleep(0.5)
    yield url, token, root
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log.close()


def _wait_changed(locator, before: bytes, timeout: float = 30.0) -> bytes:
    """Wait until the element's pixels differ from ``before``; return the new screenshot."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.5)
        now = locator.screenshot()
        if now != before:
            return now
    raise AssertionError("the image did not change after moving the control")


def _settle(locator, wait: float = 1.0, timeout: float = 30.0) -> bytes:
    """A screenshot once the element has stopped changing (the kernel has answered)."""
    last = locator.screenshot()
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(wait)
        now = locator.screenshot()
        if now == last:
            return now
        last = now
    return last


# Issue 39's targets: something on screen answers a change within 0.3 s (a busy line or a new picture), and the full
# result is up within 3 s, on this project's 2-core machine with the kernel on one thread.
FIRST_S, FULL_S = 0.3, 3.0
# what the kernel wrote: the explorer's HTML lines (a slider's own read-out changes in the browser, without the kernel)
_TEXT = "out => Array.from(out.querySelectorAll('.widget-html')).map(e => e.textContent).join('|')"
_ANSWERED = f"([out, img, src, text]) => {{ const t = ({_TEXT})(out); return t.includes('⏳') || img.src !== src || t !== text; }}"
_DONE = f"([out, img, src, text]) => {{ const t = ({_TEXT})(out); return !t.includes('⏳') && (img.src !== src || t !== text); }}"


def _response(page, output, img, act, timeout: float = 60.0) -> tuple[float, float]:
    """Do ``act`` (a change of one control); return the seconds until the explorer visibly answered (its busy line, a
    new picture or a new caption) and until its new result was up with no busy line left. The page is polled on every
    frame."""
    src = img.get_attribute("src")
    text = output.evaluate(_TEXT)
    arg = [output.element_handle(), img.element_handle(), src, text]
    t0 = time.perf_counter()
    act()
    page.wait_for_function(_ANSWERED, arg=arg, polling="raf", timeout=timeout * 1000)
    first = time.perf_counter() - t0
    page.wait_for_function(_DONE, arg=arg, polling="raf", timeout=timeout * 1000)
    return first, time.perf_counter() - t0


def _drag(page, output, handle: int = 0, dx: float = -40.0, moves: int = 6):
    """An action: drag the ``handle``-th slider in ``output`` by ``dx`` pixels with the mouse, in ``moves`` steps
    50 ms apart (a learner's drag: the slider reports on every move). Returns when the first move was made and when the
    button was released."""
    def act():
        knob = output.locator(".noUi-handle").nth(handle)
        knob.scroll_into_view_if_needed()
        box = knob.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        started = None
        for k in range(1, moves + 1):
            page.mouse.move(x + dx * k / moves, y)
            started = started or time.perf_counter()
            time.sleep(0.05)
        page.mouse.up()
        return started, time.perf_counter()
    return act


def _arrow(page, output, handle: int = 0, key: str = "ArrowRight"):
    """An action: one keyboard step of the ``handle``-th slider in ``output``."""
    def act():
        output.locator(".noUi-handle").nth(handle).focus()
        page.keyboard.press(key)
    return act


def test_explorers_respond_in_jupyterlab(lab):
    url, token, root = lab
    errors = []
    latency = {}      # explorer -> [(first, full), ...] for three slider steps
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-"), executable_path=CHROMIUM, headless=True,
            viewport={"width": 1400, "height": 1000},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = None
        try:
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            # a console "Failed to load resource" does not name the URL: record failed responses themselves
            page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
            page.goto(f"{url}/lab/tree/explorers.ipynb?token={token}", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            # JupyterLab may ask which kernel to start for a notebook it has not opened before ("Select Kernel"):
            # accept its proposal (Python 3), or Run All would wait behind the modal dialog
            accept = page.locator(".jp-Dialog .jp-mod-accept")
            try:
                accept.first.wait_for(state="visible", timeout=15_000)
                accept.first.click()
            except PlaywrightTimeout:
                pass
            # wait for the kernel to be ready, then Run ▸ Run All Cells
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            cells = page.locator(".jp-Notebook .jp-CodeCell")
            outputs = [cells.nth(i).locator(".jp-OutputArea") for i in range(len(CELLS))]
            images = [out.locator("img.widget-image") for out in outputs]
            for i, imgs in enumerate(images):
                imgs.first.wait_for(state="visible", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            assert images[0].count() == 4, "chapter 1's explorer should show four panels (with the network's)"
            assert images[6].count() == 4, "chapter 5's explorer should show four panels (A, B and both blends)"

            # every explorer: three keyboard steps of its main slider, each timed as the learner sees it; the picture's
            # pixels must have changed at the end
            watched = {  # name: (output, the picture that changes, slider handle, key)
                "ch1 forward (t)": (0, images[0].nth(1), 0, "ArrowRight"),
                "ch3 sampler (steps)": (1, images[1].first, 0, "ArrowLeft"),
                "ch4 class guidance (s)": (2, images[2].first, 0, "ArrowRight"),
                "ch4 text guidance (s)": (3, images[3].first, 0, "ArrowRight"),
                "ch5 latent walk (α)": (6, images[6].nth(2), 0, "ArrowRight"),
                "ch6 score field (t)": (8, images[8].first, 0, "ArrowRight"),
                "ch7 two-step (t)": (4, images[4].first, 0, "ArrowLeft"),
                "ch8 attention (t)": (7, images[7].nth(2), 0, "ArrowRight"),
                "ch9 velocity field (t)": (5, images[5].first, 0, "ArrowRight"),
            }
            for name, (i, img, handle, key) in watched.items():
                before = _settle(img)
                latency[name] = [_response(page, outputs[i], img, _arrow(page, outputs[i], handle, key))
                                 for _ in range(3)]
                _wait_changed(img, before)
            outputs[0].locator(".widget-html", has_text="t = 3:").first.wait_for(timeout=30_000)
            outputs[1].locator(".widget-html", has_text="17 steps, η").first.wait_for(timeout=30_000)
            outputs[2].locator(".widget-html", has_text="s = 4.5").first.wait_for(timeout=30_000)
            outputs[6].locator(".widget-html", has_text="α = 0.65").first.wait_for(timeout=30_000)
            outputs[8].locator(".widget-html", has_text="t = 0.315").first.wait_for(timeout=30_000)
            outputs[4].locator(".widget-html", has_text="t = 349").first.wait_for(timeout=30_000)
            outputs[7].locator(".widget-html", has_text="t = 303").first.wait_for(timeout=30_000)
            outputs[5].locator(".widget-html", has_text="t = 0.56").first.wait_for(timeout=30_000)

            # chapter 1: type t = 500 into the slider's read-out; x_t and both denoiser panels change
            ex1_xt = images[0].nth(1)
            before = _settle(ex1_xt)
            readout = outputs[0].locator(".widget-readout").first
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("500")
            page.keyboard.press("Enter")
            _wait_changed(ex1_xt, before)
            outputs[0].locator(".widget-html", has_text="t = 500").first.wait_for(timeout=30_000)

            # the controls that change once (a seed, a class, a prompt) draw the full grid at once, without a preview
            def fill(output, text):
                def act():
                    box = output.locator(".widget-text input").first
                    box.fill(text)
                    box.press("Enter")
                return act
            latency["ch3 sampler (seed)"] = [_response(page, outputs[1], images[1].first, fill(outputs[1], "3"))]
            outputs[1].locator(".widget-html", has_text="17 steps, η").first.wait_for(timeout=30_000)
            latency["ch4 class guidance (class)"] = [_response(
                page, outputs[2], images[2].first, lambda: outputs[2].locator("select").first.select_option(index=7))]
            latency["ch4 text guidance (prompt)"] = [_response(
                page, outputs[3], images[3].first, fill(outputs[3], "a green square left of a yellow triangle"))]

            # a mouse drag (many values while it moves; their answers are timed by the key presses above): the explorer
            # ends on the value the slider ends on, drawn within the target after the release
            for name, i, done_text in (("ch3 sampler (steps, dragged)", 1, "{} steps, η"),
                                       ("ch6 score field (t, dragged)", 8, "t = {}")):
                _, released = _drag(page, outputs[i], dx=24.0)()
                value = outputs[i].locator(".widget-readout").first.inner_text().strip()
                outputs[i].locator(".widget-html", has_text=done_text.format(value)).first.wait_for(timeout=30_000)
                page.wait_for_function(f"out => !({_TEXT})(out).includes('⏳')", arg=outputs[i].element_handle(),
                                       polling="raf", timeout=30_000)
                latency[name] = [(0.0, time.perf_counter() - released)]

            # chapter 8: one block down redraws the heat map from the kept forward pass
            heat8 = images[7].nth(2)
            before = _settle(heat8)
            latency["ch8 attention (block)"] = [_response(page, outputs[7], heat8, _arrow(page, outputs[7], 1,
                                                                                         "ArrowLeft"))]
            _wait_changed(heat8, before)
            outputs[7].locator(".widget-html", has_text="block 5").first.wait_for(timeout=30_000)

            # the grid and field explorers are shown at their own size, not stretched to the cell's width
            for img in (images[1].first, images[2].first, images[3].first, images[4].first, images[5].first,
                        images[8].first):
                natural = img.evaluate("e => e.naturalWidth")
                box = img.bounding_box()
                assert box is not None and natural > 100 and abs(box["width"] - natural) <= 2, (box, natural)
        except Exception:
            if page is not None:   # what the page showed, for whoever reads the failure
                page.screenshot(path=str(root / "failure.png"), full_page=True)
                print(f"screenshot of the failing page: {root / 'failure.png'}; server log: {root / 'lab.log'}")
            raise
        finally:
            ctx.close()
    assert not errors, "JavaScript errors in the page:\n" + "\n".join(errors)

    import statistics

    lines, slow = [], []
    for name, times in latency.items():
        first = statistics.median(f for f, _ in times)
        full = statistics.median(g for _, g in times)
        answered = "   —  " if "dragged" in name else f"{first:5.2f} s"
        lines.append(f"{name:<28} answered {answered}, done {full:5.2f} s  (median of {len(times)})")
        if first > FIRST_S or full > FULL_S:
            slow.append(name)
    report = "\n".join(lines)
    print("explorer latency in the browser (kernel on one thread):\n" + report)
    (root / "latency.txt").write_text(report + "\n")
    assert not slow, (f"over the targets (answer within {FIRST_S} s, done within {FULL_S} s): {slow}\n" + report)
