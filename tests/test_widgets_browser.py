"""The latent explorer in a real browser: JupyterLab, Debian's Chromium, driven by Playwright.

The test starts its own JupyterLab (127.0.0.1, a free port, a random token, every
Jupyter, IPython and matplotlib directory inside a temporary folder), writes a small
notebook with the explorer of a tiny untrained model into the server's root, runs it
in Chromium through Playwright's sync API, moves the z_0 slider with the keyboard and
clicks on the pad, and checks each time that the rendered image changed. The server
is stopped in the fixture's teardown, whatever happens.

The server and the browser come from ``tests/browser.py``; the test is skipped without
Debian's Chromium or the ``playwright`` package.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from browser import chromium_page, jupyter_server, needs_chromium, run_notebook, wait_for_change, write_notebook

#: time limits (seconds) of the steps; together they bound the test at about two minutes
LAB_START_TIMEOUT = 90
NOTEBOOK_TIMEOUT = 90

pytestmark = needs_chromium

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


@pytest.fixture
def lab_url(tmp_path) -> Iterator[str]:
    """A running JupyterLab whose root holds the explorer notebook; stopped after the test."""
    root = tmp_path / "lab"
    root.mkdir()
    write_notebook(root / "explorer.ipynb", NOTEBOOK_CELLS)
    with jupyter_server(root, timeout=LAB_START_TIMEOUT) as (url, token):
        yield f"{url}/lab/tree/explorer.ipynb?token={token}"


def test_slider_and_pad_redraw_the_decoded_image(lab_url, tmp_path):
    """In JupyterLab in Chromium, do the keyboard on a slider and a click on the pad redraw image and pad?"""
    with chromium_page(timeout=NOTEBOOK_TIMEOUT) as page:
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
