"""The latent explorer in a real browser: JupyterLab, Debian's Chromium, driven by Playwright.

The test starts its own JupyterLab (127.0.0.1, a free port, a random token, every
Jupyter, IPython and matplotlib directory inside a temporary folder), writes a small
notebook with the explorer of a tiny untrained model into the server's root, runs it
in Chromium through Playwright's sync API, moves the z_0 slider with the keyboard and
clicks on the pad, and checks each time that the rendered image changed. The server
is stopped in the fixture's teardown, whatever happens.

Playwright's own browsers are never downloaded (no ``playwright install``): the test
drives ``/usr/bin/chromium`` (Debian's ``chromium`` package; another binary can be
named in ``DPM_CHROMIUM``) and is skipped when it or the ``playwright`` package is
missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("DPM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

#: time limits (seconds) of the steps; together they bound the test at about two minutes
LAB_START_TIMEOUT = 90
NOTEBOOK_TIMEOUT = 90
UPDATE_TIMEOUT = 30

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set "
                              f"DPM_CHROMIUM)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright is not installed (pip install playwright; the test "
                              "uses Debian's Chromium, not Playwright's browsers)"),
]

#: the notebook the test runs: the explorer of a tiny untrained model over random images
NOTEBOOK_CELLS = [
    "import torch\n"
    "from dpm_core.reference import build_reference_vae\n"
    "from dpm_core.widgets import LatentExplorer\n"
    "torch.manual_seed(0)\n"
    "model = build_reference_vae(latent_size=2, hidden_size=32)\n"
    "x = torch.rand(300, 1, 28, 28).round()\n"
    "labels = torch.randint(0, 10, (300,))",
    "explorer = LatentExplorer(model, x, labels)\n"
    "explorer",
]


def write_notebook(path: Path, cells: list[str]) -> Path:
    """Write a Python 3 notebook whose code cells are ``cells``."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyter_lab(root: Path, timeout: float = LAB_START_TIMEOUT) -> Iterator[str]:
    """Run JupyterLab on ``root`` for the duration of the block; yields its URL with the token.

    Every configuration and runtime directory lives in ``root/.jupyter-home``, so the
    user's own settings are neither read nor written; the kernels import ``dpm_core``
    from the repository (``PYTHONPATH``). The server runs in its own process group,
    which is terminated (then killed) on exit, kernels included.
    """
    home = root / ".jupyter-home"
    settings = home / "lab-settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    # no news or update toasts over the notebook
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings") \
        .write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ)
    env.update({
        "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "IPYTHONDIR": str(home / "ipython"), "MPLCONFIGDIR": str(home / "matplotlib"),
        "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p),
        "JUPYTER_PLATFORM_DIRS": "1",
    })
    env.pop("NBGRADER_EXECUTION", None)
    port, token = free_port(), secrets.token_hex(16)
    log_path = root.parent / "jupyter-lab.log"
    log = open(log_path, "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.open_browser=False"]
        # CI containers run as root, which the server refuses without this flag
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n"
                                   f"{log_path.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JupyterLab did not answer within {timeout} s:\n"
                                       f"{log_path.read_text(errors='replace')[-3000:]}")
                time.sleep(0.5)
        yield f"{url}/lab/tree/{{path}}?token={token}"
    finally:
        _stop(server)
        log.close()


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after 15 s."""
    if server.poll() is None:
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.pid, signal.SIGKILL)  # the kernels, if any outlived the server
    except ProcessLookupError:
        pass
    server.wait(timeout=15)


@contextmanager
def chromium_page(width: int = 1500, height: int = 1000):
    """A Playwright page in Debian's Chromium (headless), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                             headless=True, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(NOTEBOOK_TIMEOUT * 1000)
            yield page
        finally:
            browser.close()


def run_notebook(page, url: str, num_cells: int) -> None:
    """Open the notebook at ``url`` and run its cells one by one with Shift+Enter."""
    page.goto(url, timeout=LAB_START_TIMEOUT * 1000)
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    # keys pressed before the kernel is connected run nothing: wait for its status
    page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).wait_for()
    page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor").first.click()
    for _ in range(num_cells):
        page.keyboard.press("Shift+Enter")


def wait_for_change(locator, before: bytes, timeout: float = UPDATE_TIMEOUT) -> bytes:
    """Screenshots of ``locator`` until one differs from ``before``; the last one either way."""
    deadline = time.monotonic() + timeout
    while True:
        after = locator.screenshot()
        if after != before or time.monotonic() > deadline:
            return after
        time.sleep(0.25)


@pytest.fixture
def lab_url(tmp_path) -> Iterator[str]:
    """A running JupyterLab whose root holds the explorer notebook; stopped after the test."""
    root = tmp_path / "lab"
    root.mkdir()
    write_notebook(root / "explorer.ipynb", NOTEBOOK_CELLS)
    with jupyter_lab(root) as url:
        yield url.format(path="explorer.ipynb")


def test_slider_and_pad_redraw_the_decoded_image(lab_url, tmp_path):
    """In JupyterLab in Chromium, do the keyboard on a slider and a click on the pad redraw image and pad?"""
    with chromium_page() as page:
        run_notebook(page, lab_url, len(NOTEBOOK_CELLS))
        image = page.locator("img.dpm-decoded")
        image.wait_for(state="visible")
        pad = page.locator(".dpm-pad canvas").last
        pad.wait_for(state="visible")
        readout = page.locator(".dpm-z0 .widget-readout")
        page.wait_for_function(
            "() => { const i = document.querySelector('img.dpm-decoded');"
            " return i && i.complete && i.naturalWidth > 0; }")
        page.screenshot(path=str(tmp_path / "explorer-before.png"))
        before, value_before = image.screenshot(), readout.inner_text()
        pad_before = pad.screenshot()

        handle = page.locator(".dpm-z0 .noUi-handle")
        handle.focus()
        for _ in range(20):
            handle.press("ArrowRight")
        after = wait_for_change(image, before)
        assert readout.inner_text() != value_before, "the z0 slider did not move with the keyboard"
        assert after != before, "the decoded image did not change after moving the z0 slider"
        pad_after = wait_for_change(pad, pad_before)
        assert pad_after != pad_before, "the marker on the pad did not follow the z0 slider"

        # a click on the pad, left of the centre: z moves there, and so does the slider
        box = pad.bounding_box()
        value_before = readout.inner_text()
        page.mouse.click(box["x"] + 0.25 * box["width"], box["y"] + 0.7 * box["height"])
        clicked = wait_for_change(image, after)
        assert clicked != after, "the decoded image did not change after a click on the pad"
        assert readout.inner_text() != value_before, "the click on the pad did not move z0"
        assert wait_for_change(pad, pad_after) != pad_after, "the pad did not redraw after a click"
        page.screenshot(path=str(tmp_path / "explorer-after.png"))
