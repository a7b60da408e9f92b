"""The latent views without a browser: every control is a plain method, checked against the decoder.

The reference answer is always the model itself: for the code z that a view reports,
``model.gen_model.obs_model(z).mean`` computed here, in evaluation mode under
``torch.no_grad()``, must equal the view's current image exactly (``assert_close``).
Models are tiny and untrained (seeded by the autouse fixture of ``conftest.py``);
random weights are as good as trained ones for checking that the right z is decoded.
"""

from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch.testing import assert_close

from dpm_core import FlowCPDNet, widgets
from dpm_core.data import ImageData
from dpm_core.priors import MoGPriorNet
from dpm_core.reference import build_reference_vae
from dpm_core.widgets import Interpolator, LatentExplorer, PosteriorView, lerp, slerp
from dpm_core.widgets.posterior import CLOUD_SIZE

REPO = Path(__file__).resolve().parent.parent
N = 40  # test images per view
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

needs_ipympl = pytest.mark.skipif(
    __import__("importlib").util.find_spec("ipympl") is None,
    reason="ipympl is not installed (the pad's clicks come from its canvas)")


def make_model(K: int = 2, prior: str = "gaussian", device="cpu"):
    model = build_reference_vae(latent_size=K, hidden_size=16)
    if prior == "mog":
        model.gen_model.prior_net = MoGPriorNet(K, num_components=3, lbound=-2.0, rbound=2.0)
    return model.to(device)


def make_data(device="cpu"):
    x = torch.rand(N, 1, 28, 28, device=device).round()
    labels = torch.arange(N) % 10
    return x, labels


def decoded(model, z) -> torch.Tensor:
    """The reference: the decoder mean at z ``[K]``, on the CPU."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        mean = model.gen_model.obs_model(z[None].to(next(model.parameters()).device)).mean[0]
    model.train(was_training)
    return mean.cpu()


def png_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


#: the registry of models: latent size and prior (K > 2 puts the pad on a principal plane)
MODELS = [pytest.param(2, "gaussian", id="K2-gaussian"),
          pytest.param(5, "gaussian", id="K5-gaussian"),
          pytest.param(2, "mog", id="K2-mog"),
          pytest.param(3, "mog", id="K3-mog")]


# ----------------------------------------------------------------------------- paths

def test_lerp_and_slerp_ends_and_midpoints():
    """Do both paths start at z_a and end at z_b, and does slerp keep the norm of equal-norm codes?"""
    z_a, z_b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])
    t = torch.linspace(0, 1, 11)
    for path in (lerp, slerp):
        points = path(z_a, z_b, t)
        assert points.shape == (11, 3)
        assert_close(points[0], z_a)
        assert_close(points[-1], z_b)
    assert_close(lerp(z_a, z_b, 0.5), torch.tensor([1.5, 1.5, 0.0]))
    # a quarter circle of radius 3: at t = 0.5 the point is 3 (cos 45°, sin 45°, 0)
    assert_close(slerp(z_a, z_b, 0.5), torch.tensor([3 / math.sqrt(2), 3 / math.sqrt(2), 0.0]))
    assert_close(slerp(z_a, z_b, t).norm(dim=-1), torch.full((11,), 3.0))


def test_slerp_falls_back_to_lerp_for_parallel_codes():
    """Where the angle is 0 or pi, or a code is 0, is slerp the straight line (not NaN)?"""
    z = torch.tensor([1.0, 2.0])
    for other in (2 * z, -z, torch.zeros(2)):
        assert_close(slerp(z, other, 0.3), lerp(z, other, 0.3))


# ----------------------------------------------------------------------------- explorer

@pytest.mark.parametrize("K, prior", MODELS)
def test_explorer_set_z_decodes_exactly_that_z(K, prior, device):
    """Does set_z show exactly the decoder mean at z, on the model's device, without gradients?"""
    model = make_model(K, prior, device)
    x, labels = make_data(device)
    explorer = LatentExplorer(model, x, labels)
    z = torch.linspace(-1.5, 2.0, K)
    explorer.set_z(z)
    assert_close(explorer.z, z)
    assert explorer.image.shape == (1, 28, 28) and not explorer.image.requires_grad
    assert_close(explorer.image, decoded(model, z))


@pytest.mark.parametrize("K, prior", MODELS)
def test_explorer_sliders_decode_their_values(K, prior):
    """Does moving each slider set that coordinate, and show the decoder mean of the new z?"""
    model = make_model(K, prior)
    explorer = LatentExplorer(model, *make_data())
    widget = explorer.widget
    assert len(explorer._sliders) == K
    for k, slider in enumerate(explorer._sliders):
        slider.value = 0.25 * (k + 1)
        assert explorer.z[k] == pytest.approx(0.25 * (k + 1))
        assert_close(explorer.image, decoded(model, explorer.z))
    assert explorer._decoded.value == explorer.png
    assert widget is explorer.widget


@needs_ipympl
@pytest.mark.parametrize("K, prior", MODELS)
def test_explorer_pad_click_picks_the_point(K, prior):
    """Does a click on the pad (a canvas event) move z to that point of the plane and decode it?"""
    model = make_model(K, prior)
    explorer = LatentExplorer(model, *make_data())
    explorer.widget
    pad = explorer._pad
    assert pad.canvas is not None
    z_before = explorer.z
    event = SimpleNamespace(inaxes=pad.ax, xdata=0.7, ydata=-1.2, button=1)
    pad._on_press(event)
    pad._on_release(event)
    assert_close(explorer.plane.project(explorer.z), torch.tensor([0.7, -1.2]))
    if K == 2:
        assert_close(explorer.z, torch.tensor([0.7, -1.2]))
    else:  # the part of z off the plane stays
        off = explorer.z - z_before
        assert_close(off - explorer.plane.basis @ (explorer.plane.basis.T @ off),
                     torch.zeros(K), atol=1e-5, rtol=0)
    assert_close(explorer.image, decoded(model, explorer.z))
    # the sliders follow the pick
    assert_close(torch.tensor([s.value for s in explorer._sliders]), explorer.z)
    # dragging moves z, motion without a pressed button does not
    pad._on_motion(SimpleNamespace(inaxes=pad.ax, xdata=0.1, ydata=0.2))
    assert_close(explorer.plane.project(explorer.z), torch.tensor([0.7, -1.2]))
    pad._on_press(event)
    pad._on_motion(SimpleNamespace(inaxes=pad.ax, xdata=0.1, ydata=0.2))
    assert_close(explorer.plane.project(explorer.z), torch.tensor([0.1, 0.2]))
    assert_close(explorer.image, decoded(model, explorer.z))


def test_explorer_pick_in_2d_is_z():
    """For K = 2, is picking the point (u, v) the same as setting z = (u, v)?"""
    model = make_model(2)
    explorer = LatentExplorer(model)
    explorer.pick((1.25, -0.5))
    assert_close(explorer.z, torch.tensor([1.25, -0.5]))
    assert_close(explorer.image, decoded(model, torch.tensor([1.25, -0.5])))


@pytest.mark.parametrize("K", [2, 3])
def test_explorer_component_selects_its_location(K):
    """Does selecting a MoG component move z to its location and report its weight and spread?"""
    model = make_model(K, "mog")
    prior_net = model.gen_model.prior_net
    explorer = LatentExplorer(model, *make_data())
    explorer.widget
    for c in range(prior_net.num_components):
        explorer.set_component(c)
        assert_close(explorer.z, prior_net.locs[c].detach())
        assert_close(explorer.image, decoded(model, prior_net.locs[c].detach()))
        text = explorer.component_text()
        assert f"component {c}" in text and "sd (" in text
        assert f"{float(torch.softmax(prior_net.logits.detach(), 0)[c]):.2f}" in text
        assert explorer._selected_ellipse.get_visible()
    # the dropdown drives the same method
    explorer._component_select.value = 0
    assert_close(explorer.z, prior_net.locs[0].detach())
    explorer.set_component(None)
    assert not explorer._selected_ellipse.get_visible()


def test_explorer_component_needs_a_mixture():
    """Does set_component on a Gaussian prior raise a ValueError that names the prior?"""
    explorer = LatentExplorer(make_model(2))
    with pytest.raises(ValueError, match="GaussianPriorNet"):
        explorer.set_component(0)


def test_explorer_sample_mode_draws_from_p_x_given_z():
    """In sample mode, is the image the draw x ~ p(x|z) that the same seed gives?"""
    model = make_model(2)
    explorer = LatentExplorer(model)
    z = torch.tensor([0.5, 0.5])
    explorer.set_z(z)
    torch.manual_seed(123)
    explorer.set_mode("sample")
    torch.manual_seed(123)
    model.eval()
    with torch.no_grad():
        expected = model.gen_model.obs_model(z[None]).sample()[0]
    assert_close(explorer.image, expected)
    assert set(explorer.image.unique().tolist()) <= {0.0, 1.0}
    explorer.set_mode("mean")
    assert_close(explorer.image, decoded(model, z))


def test_explorer_png_is_the_image_upscaled():
    """Is the PNG the widget shows the current image in 8 bits, each pixel a 7x7 square?"""
    explorer = LatentExplorer(make_model(2), image_size=196)
    explorer.set_z(torch.tensor([1.0, -1.0]))
    pixels = png_pixels(explorer.png)
    assert pixels.shape == (196, 196)
    expected = (explorer.image[0] * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(pixels[::7, ::7], expected)
    assert np.array_equal(pixels, expected.repeat(7, 0).repeat(7, 1))


@pytest.mark.parametrize("training", [True, False])
def test_views_keep_the_model_mode(training):
    """Do the views decode in eval mode and give the model back in the mode they found it in?"""
    model = make_model(2)
    model.gen_model.cpd_net.decoder[0].p = 0.5  # dropout: eval mode must switch it off
    model.train(training)
    x, labels = make_data()
    explorer = LatentExplorer(model, x, labels)
    explorer.set_z(torch.tensor([0.3, 0.3]))
    Interpolator(model, x, labels).set_t(0.5)
    PosteriorView(model, x, labels).resample()
    assert model.training is training
    model.eval()
    assert_close(explorer.image, decoded(model, torch.tensor([0.3, 0.3])))


def test_decoding_restores_the_thread_count():
    """Does a decode on the CPU (run on one intra-op thread) give torch its thread count back?"""
    explorer = LatentExplorer(make_model(2))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        explorer.set_z(torch.tensor([0.1, 0.2]))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_explorer_takes_image_data():
    """Given an ImageData, does the explorer encode its first num_points images and use its labels?"""
    images = (torch.rand(30, 1, 28, 28) * 255).to(torch.uint8)
    data = ImageData(images, torch.arange(30) % 10, binarize="static")
    model = make_model(2)
    explorer = LatentExplorer(model, data, num_points=25)
    x, labels = data[:25]
    model.eval()
    with torch.no_grad():
        expected = model.inf_model(x).mean
    assert_close(explorer.codes, expected)
    assert_close(explorer.labels, labels)


def test_views_take_the_first_vae():
    """Do the views accept a dpm_core.vae.VAE on 28 x 28 images, encode with its encoder's means
    and decode its decoder's probabilities for the slider's z?"""
    from dpm_core.vae import VAE

    vae = VAE(input_dim=784, z_dim=2, hidden_sizes=(16,))
    x, labels = make_data()
    explorer = LatentExplorer(vae, x, labels)
    vae.eval()
    with torch.no_grad():
        assert_close(explorer.codes, vae.mu(vae.encoder(x.flatten(1))))
        explorer.set_z(torch.tensor([0.5, -1.0]))
        expected = vae.decoder(torch.tensor([[0.5, -1.0]])).view(1, 28, 28)
    assert_close(explorer.image, expected)
    interpolator = Interpolator(vae, x, labels)
    interpolator.set_t(1.0)
    assert_close(interpolator.image, decoded(interpolator.model, interpolator.z))
    assert PosteriorView(vae, x, labels).image.shape == (1, 28, 28)


def test_explorer_rejects_bad_arguments():
    """Do a mis-shaped x, a wrong-sized z, an unknown mode and a 0 image size raise ValueErrors?"""
    model = make_model(2)
    with pytest.raises(ValueError, match=r"\[N\] \+ \[1, 28, 28\].*\[4, 784\]"):
        LatentExplorer(model, torch.zeros(4, 784))
    with pytest.raises(ValueError, match="image_size must be a positive int, got 0"):
        LatentExplorer(model, image_size=0)
    explorer = LatentExplorer(model)
    with pytest.raises(ValueError, match=r"z must have shape \[K\] = \[2\], got \[3\]"):
        explorer.set_z(torch.zeros(3))
    with pytest.raises(ValueError, match="mode must be one of"):
        explorer.set_mode("median")
    with pytest.raises(ValueError, match="point_xy"):
        explorer.pick((1.0, 2.0, 3.0))


def test_sliders_cover_the_codes_and_components():
    """Do the slider ranges reach +-z_range and every MoG component's 2-sd box?"""
    model = make_model(2, "mog")
    model.gen_model.prior_net.locs.data[0] = torch.tensor([6.0, -7.0])
    explorer = LatentExplorer(model, z_range=3.0)
    scales = model.gen_model.prior_net.scales.detach()
    assert (explorer.low <= -3).all() and (explorer.high >= 3).all()
    assert explorer.high[0] >= 6 + 2 * scales[0, 0] and explorer.low[1] <= -7 - 2 * scales[0, 1]


# ----------------------------------------------------------------------------- interpolator

@pytest.mark.parametrize("K", [2, 5])
@pytest.mark.parametrize("path", ["linear", "spherical"])
def test_interpolator_decodes_the_path(K, path):
    """Does each t show the decoder mean at the path's point between the two posterior means?"""
    model = make_model(K)
    x, labels = make_data()
    view = Interpolator(model, x, labels)
    view.select(3, 17)
    view.set_path(path)
    model.eval()
    with torch.no_grad():
        z_a, z_b = model.inf_model(x[[3, 17]]).mean
    for t in (0.0, 0.3, 1.0):
        view.set_t(t)
        z = lerp(z_a, z_b, t) if path == "linear" else slerp(z_a, z_b, t)
        assert_close(view.z, z)
        assert_close(view.image, decoded(model, z))
    assert_close(view.path_codes(5)[2], (lerp if path == "linear" else slerp)(z_a, z_b, 0.5))


def test_interpolator_slider_and_index_widgets():
    """Do the t slider, the path buttons and the index boxes drive the same methods?"""
    model = make_model(2)
    x, labels = make_data()
    view = Interpolator(model, x, labels)
    view.widget
    view._index_a.value, view._index_b.value = 4, 9
    assert (view.i, view.j) == (4, 9)
    view._path_buttons.value = "spherical"
    view._t_slider.value = 0.75
    model.eval()
    with torch.no_grad():
        z_a, z_b = model.inf_model(x[[4, 9]]).mean
    assert_close(view.z, slerp(z_a, z_b, 0.75))
    assert_close(view.image, decoded(model, slerp(z_a, z_b, 0.75)))
    # the strip holds the path at `steps` points
    strip = png_pixels(view._strip_image.value)
    assert strip.shape[1] >= view.steps * 28


def test_interpolator_default_ends_differ_in_class():
    """Without j, is image B the first image of another class than A?"""
    x, _ = make_data()
    labels = torch.tensor([2, 2, 2, 7] + [2] * (N - 4))
    view = Interpolator(make_model(2), x, labels)
    assert (view.i, view.j) == (0, 3)


@needs_ipympl
def test_interpolator_clicks_pick_a_then_b():
    """Do two clicks on the pad make the nearest test images A, then B?"""
    model = make_model(2)
    x, labels = make_data()
    view = Interpolator(model, x, labels)
    view.widget
    codes = view.codes
    for index, end in ((11, "i"), (23, "j")):
        u, v = codes[index].tolist()
        view._pad._on_press(SimpleNamespace(inaxes=view._pad.ax, xdata=u, ydata=v))
        view._pad._on_release(None)
        assert getattr(view, end) == index
    assert_close(view.image, decoded(model, lerp(codes[11], codes[23], view.t)))


def largest_black_square(pixels: np.ndarray) -> int:
    """The side in pixels of the largest all-black square of an RGB(A) picture."""
    black = (pixels[..., :3] <= 5).all(-1).astype(np.int64)
    sums = np.pad(black.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table

    def fits(k: int) -> bool:
        windows = sums[k:, k:] - sums[:-k, k:] - sums[k:, :-k] + sums[:-k, :-k]
        return bool((windows == k * k).any())

    low, high = 0, min(black.shape)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def test_interpolator_static_picture_is_mostly_images():
    """Without a widget front end, are the interpolator's images large (the black test images
    A and B at least 0.8 inch wide at the saved dpi) and do they fill the picture (at least
    45% of it not white; the old layout, a plot of the plane beside thumbnails of 42 pixels,
    had 12%)?"""
    x, labels = make_data()
    x[:2] = 0.0  # A = #0 and B = #1 (another class) are black squares; decoded images are grey
    view = Interpolator(make_model(2), x, labels)
    assert (view.i, view.j) == (0, 1)
    pixels = png_pixels(view.static_png())
    side = largest_black_square(pixels)
    assert side >= 0.8 * widgets.render.STATIC_DPI, f"the test images are {side} px wide"
    covered = 1.0 - (pixels[..., :3] >= 250).all(-1).mean()
    assert covered >= 0.45, f"images and text cover {covered:.0%} of the picture"
    assert pixels.shape[1] <= 1100  # as wide as a notebook's output area


def save_interpolator_picture(path: Path, epochs: int = 8) -> Figure:
    """docs/interpolator-static.png: the static interpolator of a briefly trained 2-D VAE.

    The reference VAE (K = 2, H = 128) is trained for ``epochs`` epochs over 8000
    FashionMNIST training images (about 4 s on one CPU thread), then interpolates from the
    first test image to the first of another class. Raises RuntimeError where FashionMNIST
    is not at hand (nothing is downloaded).
    """
    from dpm_core.data import load_fashion_mnist
    from dpm_core.plotting import FASHION_MNIST_CLASSES
    from dpm_core.reference import init_decoder_bias

    splits = load_fashion_mnist(download=False, dev_size=1000)
    x = splits.train[:8000][0]
    model = build_reference_vae(latent_size=2, hidden_size=128)
    init_decoder_bias(model, x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(100):
            loss = model(x[batch])["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    view = Interpolator(model, splits.test, class_names=FASHION_MNIST_CLASSES, num_points=500)
    fig = view.static_figure()
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(widgets.render.figure_png(fig))
    return fig


def test_interpolator_static_picture_for_the_readme():
    """Does the static picture of a briefly trained FashionMNIST model say what is
    interpolated, from which test image to which? Saves docs/interpolator-static.png."""
    try:
        fig = save_interpolator_picture(REPO / "docs" / "interpolator-static.png")
    except RuntimeError as err:
        pytest.skip(f"FashionMNIST is not at hand: {str(err).splitlines()[0]}")
    title = fig.texts[0].get_text()
    assert "test image A (#0 · Ankle boot)" in title and "test image B (#1 · Pullover)" in title
    labels = {text.get_text() for ax in fig.axes for text in ax.texts}
    assert {"A", "B", "#0\nAnkle boot", "#1\nPullover", "straight", "spherical"} <= labels


# ----------------------------------------------------------------------------- posterior

@pytest.mark.parametrize("K", [2, 4])
def test_posterior_view_draws_and_reconstructions(K, device):
    """Are the draws those of q(z|x) with the same seed, and the reconstructions their decoder means?"""
    model = make_model(K, device=device)
    x, labels = make_data(device)
    view = PosteriorView(model, x, labels, num_samples=6)
    torch.manual_seed(7)
    view.select(5)
    torch.manual_seed(7)
    model.eval()
    with torch.no_grad():
        qz = model.inf_model(x[5][None])
        expected = qz.sample((6,))[:, 0].cpu()
        kl = float(torch.distributions.kl_divergence(qz, model.gen_model.prior((1,))))
    assert_close(view.samples, expected)
    assert view.reconstructions.shape == (6, 1, 28, 28)
    for s in range(6):
        assert_close(view.reconstructions[s], decoded(model, expected[s]))
    assert_close(view.image, decoded(model, qz.mean[0].cpu()))
    assert f"{kl:.2f} nats" in view.info_text()


def test_posterior_view_mog_prior_rate_is_monte_carlo():
    """With a MoG prior (no closed-form KL), is the rate a Monte Carlo estimate, and said so?"""
    view = PosteriorView(make_model(2, "mog"), make_data()[0], num_samples=8)
    assert "Monte Carlo, 8 draws" in view.info_text()
    view.widget  # the ellipse of q and the prior's contours draw without errors


def flow_model(K: int) -> torch.nn.Module:
    """The toy model with a 2-layer flow posterior whose couplings are not the identity."""
    model = make_model(K)
    flow = FlowCPDNet(K, num_inputs=32, hidden_size=0, num_layers=2, coupling_size=8)
    with torch.no_grad():
        for net in flow.couplings:
            torch.nn.init.normal_(net.out.weight, std=0.5)
    model.inf_model.cpd_net = flow
    return model


@pytest.mark.parametrize("K", [2, 4])
def test_posterior_view_of_a_flow_shows_its_draws(K):
    """With a flow q(z|x), are the draws q's, the star its centre f(mu), and the rate sampled?"""
    model = flow_model(K)
    x, labels = make_data()
    view = PosteriorView(model, x, labels, num_samples=6)
    torch.manual_seed(7)
    view.select(5)
    torch.manual_seed(7)
    model.eval()
    with torch.no_grad():
        qz = model.inf_model(x[5][None])
        expected = qz.sample((6,))[:, 0]
        cloud = qz.sample((CLOUD_SIZE,))[:, 0]
        centre = qz.base_dist.mean
        for t in qz.transforms:
            centre = t(centre)
    assert_close(view.samples, expected)
    assert_close(view._cloud, cloud)
    assert_close(view.codes[5], centre[0])
    assert_close(view.image, decoded(model, centre[0]))
    for s in range(6):
        assert_close(view.reconstructions[s], decoded(model, expected[s]))
    assert "Monte Carlo, 6 draws" in view.info_text()
    view.widget  # the pad with the cloud and no ellipse builds without errors
    assert view._q_ellipses == [] and view._cloud_artist is not None
    labels = {t.get_text() for t in view._pad.ax.get_legend().get_texts()}
    assert {"centre of q(z|x)", f"q(z|x), {CLOUD_SIZE} draws"} <= labels
    view.resample()  # new draws reach the widgets
    offsets = np.asarray(view._cloud_artist.get_offsets())  # [CLOUD_SIZE, 2]
    assert_close(torch.as_tensor(offsets, dtype=torch.float32), view.plane.project(view._cloud))
    assert view.static_png()[:4] == b"\x89PNG"


@needs_ipympl
def test_posterior_view_click_picks_nearest_image():
    """Does a click on the pad show the test image whose code is nearest?"""
    view = PosteriorView(make_model(2), *make_data())
    view.widget
    u, v = view.codes[12].tolist()
    view._pad._on_press(SimpleNamespace(inaxes=view._pad.ax, xdata=u, ydata=v))
    assert view.i == 12
    view._index.value = 3
    assert view.i == 3


# ----------------------------------------------------------------------------- display

@pytest.mark.parametrize("make_view", [
    lambda m, x, y: LatentExplorer(m, x, y), lambda m, x, y: LatentExplorer(m),
    lambda m, x, y: Interpolator(m, x, y), lambda m, x, y: PosteriorView(m, x, y)],
    ids=["explorer", "explorer-no-data", "interpolator", "posterior"])
@pytest.mark.parametrize("K", [2, 3])
def test_static_fallback_without_widgets(make_view, K, monkeypatch):
    """Where no widget can live (no front end), is the display a PNG and text, no widget built?"""
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    view = make_view(make_model(K, "mog" if K == 3 else "gaussian"), *make_data())
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "image/png"}
    image = png_pixels(base64.b64decode(bundle["image/png"]))
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 500
    assert view._widget is None


@pytest.mark.parametrize("K", [2, 3])
def test_nothing_is_drawn_while_grading(K, monkeypatch):
    """While nbgrader grades, is the display text only (the grader draws no figure: under grading
    budgets it would show a barely trained model), with no widget built?"""
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    view = LatentExplorer(make_model(K, "mog" if K == 3 else "gaussian"), *make_data())
    monkeypatch.setattr(view, "static_png", lambda: pytest.fail("drawn while grading"))
    assert set(view._repr_mimebundle_()) == {"text/plain"}
    assert view._widget is None


def test_live_display_carries_the_widget_and_the_fallback(monkeypatch):
    """With a widget front end, does the display hold the container's view and the static PNG?"""
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)  # a student's session, not grading
    monkeypatch.setattr(widgets.view, "live_widgets_possible", lambda: True)
    explorer = LatentExplorer(make_model(2), *make_data())
    bundle = explorer._repr_mimebundle_()
    assert bundle[WIDGET_VIEW]["model_id"] == explorer.widget.model_id
    assert "image/png" in bundle and bundle["text/plain"].startswith("LatentExplorer(K=2")


def test_no_kernel_means_static():
    """Outside a kernel (here, pytest), is no widget front end assumed?"""
    assert not widgets.ui.live_widgets_possible()


# ----------------------------------------------------------------------------- notebooks

NOTEBOOK = [
    "import torch\n"
    "from dpm_core.reference import build_reference_vae\n"
    "from dpm_core.widgets import LatentExplorer, Interpolator, PosteriorView\n"
    "torch.manual_seed(0)\n"
    "model = build_reference_vae(latent_size=2, hidden_size=16)\n"
    "x, y = torch.rand(50, 1, 28, 28).round(), torch.arange(50) % 10",
    "LatentExplorer(model, x, y)",
    "Interpolator(model, x, y)",
    "PosteriorView(model, x, y)",
]


def _execute(tmp_path, grading: bool, monkeypatch):
    """Execute NOTEBOOK with nbclient in a fresh kernel (importing dpm_core from the repository)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    if grading:
        monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    else:
        monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in NOTEBOOK])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return nb


def test_notebook_autogrades_with_text_only(tmp_path, monkeypatch):
    """Executed as nbgrader autograde does, does each view cell output its text, and no PNG,
    widget or error?"""
    nb = _execute(tmp_path, grading=True, monkeypatch=monkeypatch)
    for cell in nb.cells[1:]:
        (output,) = cell.outputs
        assert output["output_type"] == "execute_result"
        assert set(output["data"]) == {"text/plain"}


def test_exported_html_without_widget_state_shows_the_png(tmp_path, monkeypatch):
    """Run with a kernel (widgets live), then exported without widget state: does the HTML show PNGs?"""
    nbconvert = pytest.importorskip("nbconvert")
    nb = _execute(tmp_path, grading=False, monkeypatch=monkeypatch)
    for cell in nb.cells[1:]:
        assert WIDGET_VIEW in cell.outputs[0]["data"]
    nb.metadata.pop("widgets", None)  # as a notebook saved without "save widget state"
    html, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    assert html.count("data:image/png;base64") >= 3
