"""The code explorer in a real browser: JupyterLab, Debian's Chromium, driven by Playwright.

The test starts its own JupyterLab (``tests/browser.py``: 127.0.0.1, a free port, a random
token, every Jupyter directory inside a temporary folder), writes a notebook with two code
explorers of tiny untrained models (12 bits; 3 variables of 4 classes) into the server's
root, runs it in Chromium, clicks a bit's toggle in the first and picks another class in a
variable's dropdown in the second, and checks each time that the decoded image and the
strip were redrawn. The server is stopped in the fixture's teardown, whatever happens.
Screenshots of both widgets are left in the test's temporary folder.

A second test takes the picture for the README, ``docs/code-explorer.png``: the explorer of a
40-bit code briefly trained on FashionMNIST (skipped where FashionMNIST is not at hand).

Skipped without Debian's Chromium or the ``playwright`` package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

from browser import chromium_page, jupyter_server, needs_chromium, run_notebook, wait_for_change, write_notebook

pytestmark = needs_chromium

#: time limits (seconds) of the steps
LAB_START_TIMEOUT = 90
NOTEBOOK_TIMEOUT = 90

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "code-explorer.png"

#: the notebook the test runs: an explorer of each kind of code, over random images
NOTEBOOK_CELLS = [
    "import functools\n"
    "import torch\n"
    "from dpm_core.conditionals import BinarizedImageModel\n"
    "from dpm_core.discrete import BernoulliCPDNet, BernoulliPriorNet, OneHotCPDNet, "
    "OneHotPriorNet\n"
    "from dpm_core.inference import InferenceModel\n"
    "from dpm_core.joint import JointDistribution\n"
    "from dpm_core.nvil import NVIL\n"
    "from dpm_core.widgets import CodeExplorer\n"
    "torch.manual_seed(0)\n"
    "binary_model = NVIL(\n"
    "    JointDistribution(BernoulliPriorNet(12), BinarizedImageModel(1, 28, 28, 12)),\n"
    "    InferenceModel(BernoulliCPDNet, 12, width=28, height=28, hidden_size=32))\n"
    "one_hot = functools.partial(OneHotCPDNet, num_classes=4)\n"
    "categorical_model = NVIL(\n"
    "    JointDistribution(OneHotPriorNet(12, num_classes=4),\n"
    "                      BinarizedImageModel(1, 28, 28, 12)),\n"
    "    InferenceModel(one_hot, 12, width=28, height=28, hidden_size=32))\n"
    "x = torch.rand(50, 1, 28, 28).round()",
    "binary = CodeExplorer(binary_model, x, labels=torch.arange(50) % 10)\n"
    "binary.encode(0)\n"
    "binary",
    "categorical = CodeExplorer(categorical_model, x)\n"
    "categorical",
]


@pytest.fixture
def lab_url(tmp_path) -> Iterator[str]:
    """A running JupyterLab whose root holds the notebook; stopped after the test."""
    root = tmp_path / "lab"
    root.mkdir()
    write_notebook(root / "codes.ipynb", NOTEBOOK_CELLS)
    with jupyter_server(root, timeout=LAB_START_TIMEOUT) as (url, token):
        yield f"{url}/lab/tree/codes.ipynb?token={token}"


def test_bit_toggle_and_class_dropdown_redraw_the_decoded_image(lab_url, tmp_path):
    """In JupyterLab in Chromium, do a click on a bit and a new class in a dropdown redraw the
    decoded image and the strip of single changes?"""
    with chromium_page(timeout=NOTEBOOK_TIMEOUT) as page:
        run_notebook(page, lab_url, len(NOTEBOOK_CELLS))
        views = page.locator(".dpm-latent-view")
        views.nth(1).wait_for(state="visible")
        page.wait_for_function(
            "() => { const i = document.querySelectorAll('img.dpm-decoded, img.dpm-strip');"
            " return i.length == 4 && [...i].every(e => e.complete && e.naturalWidth > 0); }")
        binary, categorical = views.nth(0), views.nth(1)
        binary.screenshot(path=str(tmp_path / "code-explorer.png"))

        # the binary code: click bit 5 (off in no particular state: whatever it is, it flips)
        image, strip = binary.locator("img.dpm-decoded"), binary.locator("img.dpm-strip")
        toggle = binary.locator(".dpm-bit5")
        pressed = "mod-active" in (toggle.get_attribute("class") or "")
        before, strip_before = image.screenshot(), strip.screenshot()
        toggle.click()
        after = wait_for_change(image, before)
        assert after != before, "the decoded image did not change after a click on bit 5"
        assert wait_for_change(strip, strip_before) != strip_before, \
            "the strip of one-bit flips did not change after a click on bit 5"
        page.wait_for_function(
            "([pressed]) => { const b = document.querySelector('.dpm-bit5');"
            " return b.classList.contains('mod-active') !== pressed; }", arg=[pressed])

        # the categorical code: variable 1 takes class 2
        image, strip = categorical.locator("img.dpm-decoded"), categorical.locator("img.dpm-strip")
        before, strip_before = image.screenshot(), strip.screenshot()
        categorical.locator(".dpm-var1 select").select_option(label="2")
        after = wait_for_change(image, before)
        assert after != before, "the decoded image did not change after a new class of z1"
        # the strip shows the classes of z0, whose decoded images all moved with z1
        assert wait_for_change(strip, strip_before) != strip_before, \
            "the strip did not change after a new class of z1"
        categorical.screenshot(path=str(tmp_path / "code-explorer-categorical.png"))


# ----------------------------------------------------------------------------- the README's picture

class StraightThrough(nn.Module):
    """q(z|x) with the straight-through rsample, so that NVIL trains it pathwise (fast)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        from dpm_core.discrete import straight_through

        return straight_through(self.net(x))


def train_code_model(path: Path, num_bits: int = 40, epochs: int = 4) -> None:
    """A binary-code NVIL trained for a few seconds on 10,000 FashionMNIST images, saved whole.

    Raises:
        RuntimeError: where FashionMNIST is not at hand (it is never downloaded here).
    """
    from dpm_core.conditionals import BinarizedImageModel
    from dpm_core.data import load_fashion_mnist
    from dpm_core.discrete import BernoulliCPDNet, BernoulliPriorNet
    from dpm_core.inference import InferenceModel
    from dpm_core.joint import JointDistribution
    from dpm_core.nvil import NVIL
    from dpm_core.reference import init_decoder_bias

    x = load_fashion_mnist(download=False, dev_size=1000).train[:10000][0]
    q = InferenceModel(BernoulliCPDNet, num_bits, width=28, height=28, hidden_size=256)
    model = NVIL(JointDistribution(BernoulliPriorNet(num_bits),
                                   BinarizedImageModel(1, 28, 28, num_bits)), StraightThrough(q))
    init_decoder_bias(model, x)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(100):
            loss = model(x[batch])["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.inf_model = q  # the explorer only reads q's probabilities
    torch.save(model, path)


README_CELLS = [
    "import torch\n"
    "from dpm_core.data import load_fashion_mnist\n"
    "from dpm_core.plotting import FASHION_MNIST_CLASSES\n"
    "from dpm_core.widgets import CodeExplorer\n"
    "model = torch.load('model.pt', weights_only=False)\n"
    "test = load_fashion_mnist(download=False, dev_size=1000).test",
    "view = CodeExplorer(model, test, class_names=FASHION_MNIST_CLASSES, num_points=200)\n"
    "view.encode(0)\n"
    "view",
]


def test_picture_of_a_trained_code_for_the_readme(tmp_path):
    """Does the explorer of a briefly trained 40-bit code show test image 0 (an ankle boot), its
    code, and change the decoded image on a click of a bit? Saves docs/code-explorer.png."""
    root = tmp_path / "lab"
    root.mkdir()
    torch.manual_seed(0)
    try:
        train_code_model(root / "model.pt")
    except RuntimeError as err:
        pytest.skip(f"FashionMNIST is not at hand: {str(err).splitlines()[0]}")
    write_notebook(root / "codes.ipynb", README_CELLS)
    with jupyter_server(root, timeout=LAB_START_TIMEOUT) as (url, token), \
            chromium_page(width=1150, timeout=NOTEBOOK_TIMEOUT) as page:
        run_notebook(page, f"{url}/lab/tree/codes.ipynb?token={token}", len(README_CELLS))
        view = page.locator(".dpm-latent-view")
        view.wait_for(state="visible")
        page.wait_for_function(
            "() => { const i = document.querySelectorAll('img.dpm-decoded, img.dpm-strip');"
            " return i.length == 2 && [...i].every(e => e.complete && e.naturalWidth > 0); }")
        view.get_by_text("z is the mode of q(z|x) of test image #0 · Ankle boot").wait_for()
        assert view.locator("[class*='dpm-bit']").count() == 40
        SCREENSHOT.parent.mkdir(exist_ok=True)
        view.screenshot(path=str(SCREENSHOT))
        image = view.locator("img.dpm-decoded")
        before = image.screenshot()
        view.locator(".dpm-bit0").click()
        assert wait_for_change(image, before) != before, "a click on bit 0 changed nothing"
        view.get_by_text("with 1 bit changed").wait_for()
