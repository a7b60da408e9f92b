"""What the browser tests share: Debian's Chromium through Playwright, and a Jupyter server of
their own.

Playwright's own browsers are never downloaded (no ``playwright install``): the tests drive
``/usr/bin/chromium`` (Debian's ``chromium`` package; another binary can be named in
``DPM_CHROMIUM``) and are skipped, through :data:`needs_chromium`, when it or the
``playwright`` package is missing.

:func:`jupyter_server` runs JupyterLab or a bare Jupyter server on 127.0.0.1, on a free port
with a random token, with every Jupyter, IPython and matplotlib directory inside the test's
temporary folder, and stops it (kernels included) when the block ends, whatever happens.
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
from typing import Iterator, Optional

import pytest

__all__ = ["REPO", "CHROMIUM", "CHROMIUM_ARGS", "needs_chromium", "in_chromium", "free_port",
           "jupyter_server", "chromium_page", "offline_page", "write_notebook", "run_notebook",
           "wait_for_change"]

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("DPM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

#: the marks of a test module that needs the browser: ``pytestmark = needs_chromium``
needs_chromium = [
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set "
                              f"DPM_CHROMIUM)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright is not installed (pip install playwright; the test "
                              "uses Debian's Chromium, not Playwright's browsers)"),
]


def in_chromium(test):
    """A browser test: marked with :data:`needs_chromium`, so skipped without Chromium or
    playwright."""
    for mark in needs_chromium:
        test = mark(test)
    return test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyter_server(root: Path, app: str = "jupyterlab", timeout: float = 90,
                   env: Optional[dict] = None) -> Iterator[tuple[str, str]]:
    """Run a Jupyter server on ``root`` for the duration of the block; yields its URL and token.

    Args:
        root: the server's root and working folder (the formgrader reads
            ``nbgrader_config.py`` from there).
        app: the module run with ``python -m``: ``"jupyterlab"`` or ``"jupyter_server"``.
        timeout: seconds to wait for the server to answer.
        env: variables set for the server on top of the test's environment.

    Every configuration and runtime directory lives in ``root/.jupyter-home``, so the
    user's own settings are neither read nor written (the server extensions enabled in
    the interpreter's environment, nbgrader's among them, still load); kernels import
    ``dpm_core`` from the repository (``PYTHONPATH``). The server runs in its own process
    group, which is terminated (then killed) on exit, kernels included.
    """
    home = root / ".jupyter-home"
    settings = home / "lab-settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    # no news or update toasts over the notebook
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings") \
        .write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    server_env = dict(os.environ)
    server_env.update({
        "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "IPYTHONDIR": str(home / "ipython"), "MPLCONFIGDIR": str(home / "matplotlib"),
        "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p),
        "JUPYTER_PLATFORM_DIRS": "1",
    })
    server_env.pop("NBGRADER_EXECUTION", None)
    server_env.update(env or {})
    port, token = free_port(), secrets.token_hex(16)
    log_path = root.parent / f"{app}.log"
    log = open(log_path, "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", app, "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.open_browser=False"]
        # CI containers run as root, which the server refuses without this flag
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        cwd=root, env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"{app} exited with {server.returncode}:\n"
                                   f"{log_path.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{app} did not answer within {timeout} s:\n"
                                       f"{log_path.read_text(errors='replace')[-3000:]}")
                time.sleep(0.25)
        yield url, token
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
def chromium_page(width: int = 1500, height: int = 1000, timeout: float = 90):
    """A Playwright page in Debian's Chromium (headless), closed on exit; ``timeout`` in
    seconds is the page's default for waits and navigation."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                             headless=True, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout * 1000)
            yield page
        finally:
            browser.close()


@contextmanager
def offline_page(width: int = 1500, height: int = 1000, timeout: float = 90):
    """A :func:`chromium_page` with the network off: ``file:`` URLs load, every other request
    is aborted and its URL appended to the list yielded with the page (a page that works
    offline leaves it empty)."""
    network: list = []

    def offline(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            network.append(route.request.url)
            route.abort()

    with chromium_page(width, height, timeout) as page:
        page.context.set_offline(True)
        page.route("**/*", offline)
        yield page, network


def write_notebook(path: Path, cells: list[str]) -> Path:
    """Write a Python 3 notebook whose code cells are ``cells``."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def run_notebook(page, url: str, num_cells: int, timeout: float = 90) -> None:
    """Open the notebook at ``url`` and run its cells one by one with Shift+Enter."""
    page.goto(url, timeout=timeout * 1000)
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    # keys pressed before the kernel is connected run nothing: wait for its status
    page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).wait_for()
    page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor").first.click()
    for _ in range(num_cells):
        page.keyboard.press("Shift+Enter")


def wait_for_change(locator, before: bytes, timeout: float = 30) -> bytes:
    """Screenshots of ``locator`` until one differs from ``before``; the last one either way."""
    deadline = time.monotonic() + timeout
    while True:
        after = locator.screenshot()
        if after != before or time.monotonic() > deadline:
            return after
        time.sleep(0.25)
