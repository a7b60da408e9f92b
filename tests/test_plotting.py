"""Tests for dpm_core/plotting.py: image grids, training curves, model and latent figures.

Figures are drawn with the Agg backend and closed after every test; ``plt.show`` is
replaced by a function that fails, since library plots must leave showing to the
caller. Models are small real VAEs (:func:`build_reference_vae` with a 2-D latent
and 32 hidden units), seeded with ``torch.manual_seed(SEED)``; where a figure's
content is compared with a reference (a grid of decoder means, the prior's draws),
the reference is computed with the same seed or in evaluation mode, where it is
deterministic, and compared with ``assert_close``.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from dpm_core.plotting import (  # noqa: E402
    FASHION_MNIST_CLASSES,
    image_grid,
    inspect_lvm,
    plot_images,
    plot_latent_grid,
    plot_latent_scatter,
    plot_prior_samples_hist,
    plot_training_curves,
    save_samples_and_reconstructions,
)
from dpm_core.priors import GaussianPriorNet, MoGPriorNet  # noqa: E402
from dpm_core.reference import build_reference_vae  # noqa: E402

SEED = 0
PAD = 2  # the padding image_grid uses by default and plot_latent_grid always


@pytest.fixture(autouse=True)
def figures(monkeypatch):
    """Fail on plt.show(); close every figure after the test."""
    def no_show(*args, **kwargs):
        raise AssertionError("plotting functions must not call plt.show()")

    monkeypatch.setattr(plt, "show", no_show)
    yield
    plt.close("all")


@pytest.fixture
def model():
    torch.manual_seed(SEED)
    return build_reference_vae(latent_size=2, hidden_size=32)


@pytest.fixture
def x():
    torch.manual_seed(SEED + 1)
    return torch.bernoulli(torch.full((8, 1, 28, 28), 0.3))


def grid_size(n: int, nrow: int, h: int, w: int, padding: int = PAD) -> tuple:
    """The (height, width) of make_grid's output, from its layout rule."""
    cols = min(nrow, n)
    rows = -(-n // cols)
    return rows * (h + padding) + padding, cols * (w + padding) + padding


# ----------------------------------------------------------------------------- image_grid

@pytest.mark.parametrize("shape, nrow, padding", [
    ((20, 1, 28, 28), 8, 2),
    ((5, 1, 7, 11), 16, 0),
    ((16, 3, 9, 6), 4, 3),
    ((3, 4, 1, 10, 12), 5, 1),  # [S, B, C, H, W]: 12 images
])
def test_image_grid_shape_and_range(shape, nrow, padding):
    """Does image_grid tile N images into the size make_grid's layout implies, with values in [0, 1]?"""
    torch.manual_seed(SEED)
    images = torch.randn(shape) * 2  # spills outside [0, 1], so clamping is exercised
    grid = image_grid(images, nrow=nrow, padding=padding)
    n = int(np.prod(shape[:-3]))
    assert grid.shape == grid_size(n, nrow, shape[-2], shape[-1], padding) + (3,)
    assert grid.dtype == np.float32
    assert grid.min() >= 0.0 and grid.max() <= 1.0


def test_image_grid_places_grey_pixels_in_all_channels():
    """Is image k's pixel (i, j) at the grid's offset for k, equal in the 3 channels, and padding white?"""
    torch.manual_seed(SEED)
    images = torch.rand(6, 1, 5, 4)
    grid = image_grid(images, nrow=4, padding=PAD)
    for k in range(6):
        r, c = divmod(k, 4)
        top, left = PAD + r * (5 + PAD), PAD + c * (4 + PAD)
        for ch in range(3):
            assert_close(torch.from_numpy(grid[top:top + 5, left:left + 4, ch]), images[k, 0])
    assert np.all(grid[:PAD] == 1.0) and np.all(grid[:, :PAD] == 1.0)


@pytest.mark.parametrize("n, channels, nrow, padding, pad_value", [
    (20, 1, 8, 2, 1.0), (5, 3, 2, 0, 0.0), (7, 3, 3, 1, 0.5), (2, 1, 8, 2, 1.0),
])
def test_image_grid_equals_torchvisions_make_grid(n, channels, nrow, padding, pad_value):
    """Is the grid, pixel for pixel, torchvision's make_grid of the same images (with grey
    repeated into three channels)? image_grid tiles them itself to spare the notebooks
    torchvision's 1.8 s import."""
    from torchvision.utils import make_grid

    torch.manual_seed(SEED)
    images = torch.rand(n, channels, 9, 11)
    expected = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    expected = expected.expand(3, -1, -1).permute(1, 2, 0)
    assert torch.equal(torch.from_numpy(image_grid(images, nrow=nrow, padding=padding,
                                                   pad_value=pad_value)), expected)


def test_image_grid_uint8_matches_float():
    """Does a uint8 batch give the same grid as the same pixels as floats v / 255?"""
    torch.manual_seed(SEED)
    pixels = torch.randint(0, 256, (10, 1, 6, 6), dtype=torch.uint8)
    assert_close(torch.from_numpy(image_grid(pixels, nrow=4)),
                 torch.from_numpy(image_grid(pixels.float() / 255, nrow=4)))


def test_image_grid_clamps_floats():
    """Are float intensities outside [0, 1] clamped, not rescaled?"""
    torch.manual_seed(SEED)
    images = torch.randn(4, 1, 5, 5) * 3
    assert_close(torch.from_numpy(image_grid(images)),
                 torch.from_numpy(image_grid(images.clamp(0, 1))))


@pytest.mark.parametrize("shape", [(1, 28, 28), (28, 28), (2, 2, 2, 1, 5, 5), (4, 2, 5, 5), (0, 1, 5, 5)])
def test_image_grid_rejects_bad_shapes(shape):
    """Does image_grid raise ValueError naming the shape for anything but [N, C, H, W] / [S, B, C, H, W]?"""
    with pytest.raises(ValueError, match=str(list(shape)).replace("[", r"\[").replace("]", r"\]")):
        image_grid(torch.zeros(shape))


def test_image_grid_rejects_bad_arguments():
    """Do a non-positive nrow and an int64 tensor raise ValueErrors that name them?"""
    with pytest.raises(ValueError, match="nrow must be a positive int, got 0"):
        image_grid(torch.zeros(2, 1, 3, 3), nrow=0)
    with pytest.raises(ValueError, match="int64"):
        image_grid(torch.zeros(2, 1, 3, 3, dtype=torch.int64))


def test_plot_images_shows_the_grid_without_axes():
    """Does plot_images draw exactly image_grid's array, with axes off and the title set?"""
    torch.manual_seed(SEED)
    images = torch.rand(12, 1, 8, 8)
    ax = plot_images(images, nrow=5, title="some images")
    assert len(ax.images) == 1
    assert_close(torch.as_tensor(np.asarray(ax.images[0].get_array())),
                 torch.from_numpy(image_grid(images, nrow=5)))
    assert not ax.axison
    assert ax.get_title() == "some images"


def test_plot_images_draws_into_given_axes():
    """Does plot_images draw into the axes it is given instead of making a figure?"""
    fig, ax = plt.subplots()
    assert plot_images(torch.rand(3, 1, 4, 4), ax=ax) is ax
    assert plt.get_fignums() == [fig.number]


# ----------------------------------------------------------------------------- curves

def make_log() -> dict:
    """A train_vae-like log: ELBO for both splits, D for training, L for dev; no R, no cv_loss."""
    steps = range(1, 101)
    return {
        "training.ELBO": [(s, -300.0 + s + (s % 3)) for s in steps],
        "training.D": [(s, 250.0 - s) for s in steps],
        "dev.ELBO": [(s, -290.0 + s) for s in (0, 25, 50, 75, 100)],
        "dev.L": [(s, -280.0 + s) for s in (0, 50, 100)],
        "time": 12.5,
    }


def test_training_curves_one_panel_per_present_metric():
    """Does each logged metric get one panel, titled and labelled, one raw line per split at its steps?"""
    log = make_log()
    fig = plot_training_curves(log, smoothing=0)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == [
        "ELBO", "distortion D", "log-likelihood L (importance sampled)"]
    expected = {0: ["training.ELBO", "dev.ELBO"], 1: ["training.D"], 2: ["dev.L"]}
    for i, keys in expected.items():
        lines = axes[i].get_lines()
        assert [line.get_label() for line in lines] == [k.split(".")[0] for k in keys]
        for line, key in zip(lines, keys):
            steps, values = np.asarray(log[key]).T
            assert np.array_equal(line.get_xdata(), steps)
            assert np.array_equal(line.get_ydata(), values)
        assert axes[i].get_xlabel() == "step"
        assert "nats" in axes[i].get_ylabel()
        assert axes[i].get_legend() is not None


def test_training_curves_moving_average():
    """Is the training curve's moving average the mean of each window, at the windows' last steps?"""
    log = make_log()
    ax = plot_training_curves(log, metrics=("ELBO",), smoothing=10).get_axes()[0]
    smooth = [line for line in ax.get_lines() if "moving average" in line.get_label()]
    assert len(smooth) == 1
    steps, values = np.asarray(log["training.ELBO"]).T
    assert np.array_equal(smooth[0].get_xdata(), steps[9:])
    expected = [values[i - 9:i + 1].mean() for i in range(9, len(values))]
    np.testing.assert_allclose(smooth[0].get_ydata(), expected)


def test_training_curves_skip_zero_cv_loss():
    """Is a cv_loss that is 0 throughout (pathwise training) left out, and a nonzero one drawn?"""
    log = make_log()
    log["training.cv_loss"] = [(s, 0.0) for s in range(1, 101)]
    titles = [ax.get_title() for ax in plot_training_curves(log).get_axes()]
    assert "control-variate loss" not in titles
    log["training.cv_loss"][5] = (6, 1.5)
    titles = [ax.get_title() for ax in plot_training_curves(log).get_axes()]
    assert titles[-1] == "control-variate loss"


def test_training_curves_without_metrics_raise():
    """Does a log without any requested metric raise ValueError listing the curves it has?"""
    with pytest.raises(ValueError, match=r"training\.loss"):
        plot_training_curves({"training.loss": [(1, 2.0)], "time": 1.0}, metrics=("ELBO", "R"))


# ----------------------------------------------------------------------------- models

@pytest.mark.parametrize("training", [True, False])
def test_inspect_lvm_four_grids_and_mode_restored(model, x, training):
    """Does inspect_lvm draw 4 grids of the right sizes, the last the decoder means, and keep the mode?"""
    model.train(training)
    fig = inspect_lvm(model, x, num_prior=5, prior_draws=3)
    assert model.training is training
    axes = fig.get_axes()
    assert len(axes) == 4 and all(len(ax.images) == 1 for ax in axes)
    sizes = [ax.images[0].get_array().shape[:2] for ax in axes]
    assert sizes == [grid_size(15, 5, 28, 28), grid_size(8, 16, 28, 28),
                     grid_size(8, 16, 28, 28), grid_size(8, 16, 28, 28)]
    assert_close(torch.as_tensor(np.asarray(axes[1].images[0].get_array())),
                 torch.from_numpy(image_grid(x)))
    model.eval()
    with torch.no_grad():
        recon = model.gen_model.obs_model(model.inf_model(x).mean).mean
    assert_close(torch.as_tensor(np.asarray(axes[3].images[0].get_array())),
                 torch.from_numpy(image_grid(recon)))


def test_inspect_lvm_any_image_shape():
    """Does inspect_lvm work for non-square images other than 64x64 (no hard-coded shape)?"""
    torch.manual_seed(SEED)
    model = build_reference_vae(latent_size=2, hidden_size=16, width=20, height=12)
    fig = inspect_lvm(model, torch.rand(4, 1, 12, 20).round(), num_prior=4, prior_draws=2)
    assert fig.get_axes()[0].images[0].get_array().shape[:2] == grid_size(8, 4, 12, 20)


def test_inspect_lvm_rejects_wrong_data_shape(model):
    """Does inspect_lvm raise ValueError naming the model's data shape for a mis-shaped x?"""
    with pytest.raises(ValueError, match=r"\[B\] \+ \[1, 28, 28\].*\[8, 784\]"):
        inspect_lvm(model, torch.zeros(8, 784))


def test_save_samples_and_reconstructions_writes_png(model, x, tmp_path):
    """Does it write a readable PNG under new folders, close its figure and keep the model's mode?"""
    model.train()
    path = tmp_path / "new" / "folder" / "vae.png"
    out = save_samples_and_reconstructions(model, x, str(path), num_samples=16)
    assert out == path and path.stat().st_size > 0
    assert plt.get_fignums() == []
    assert model.training
    image = plt.imread(path)
    # 3 rows of 28-pixel images at 8 inches wide and 120 dpi: a few hundred pixels each way
    assert image.ndim == 3 and 300 < image.shape[1] < 1200 and 200 < image.shape[0] < 1200


# ----------------------------------------------------------------------------- latents

def test_latent_scatter_legend_and_points():
    """Does the scatter hold z's points in order, with one legend entry per class, named?"""
    torch.manual_seed(SEED)
    z = torch.randn(30, 2)
    labels = torch.tensor([0, 3, 7] * 10)
    ax = plot_latent_scatter(z, labels, class_names=FASHION_MNIST_CLASSES)
    assert_close(torch.as_tensor(np.asarray(ax.collections[0].get_offsets()), dtype=torch.float32), z)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["T-shirt/top", "Dress", "Sneaker"]


def test_latent_scatter_default_names_are_labels():
    """Without class_names, are the legend entries the labels (not FashionMNIST names)?"""
    ax = plot_latent_scatter(np.random.default_rng(SEED).normal(size=(9, 2)), np.array([2, 5, 9] * 3))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["2", "5", "9"]


def test_latent_scatter_rejects_bad_inputs():
    """Do z with 3 columns, mismatched labels and labels without names raise ValueErrors?"""
    with pytest.raises(ValueError, match=r"\[N, 2\].*\[10, 3\].*PCA"):
        plot_latent_scatter(torch.zeros(10, 3), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[N\] = \[10\].*\[9\]"):
        plot_latent_scatter(torch.zeros(10, 2), torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="class_names has 2 entries"):
        plot_latent_scatter(torch.zeros(3, 2), torch.tensor([0, 1, 2]), class_names=["a", "b"])


def test_latent_grid_size_and_corner_image(model):
    """Is the grid steps x steps images of H + padding, with the top-left one decoded at (low, high)?"""
    model.train()
    steps = 5
    ax = plot_latent_grid(model, z_range=(-2, 2), steps=steps)
    assert model.training
    grid = np.asarray(ax.images[0].get_array())
    assert grid.shape == (steps * (28 + PAD) + PAD, steps * (28 + PAD) + PAD, 3)
    model.eval()
    with torch.no_grad():
        corner = model.gen_model.obs_model(torch.tensor([[-2.0, 2.0]])).mean[0, 0]
    assert_close(torch.from_numpy(grid[PAD:PAD + 28, PAD:PAD + 28, 0]), corner)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["-2", "-1", "0", "1", "2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "1", "0", "-1", "-2"]


def test_latent_grid_rejects_bad_dims(model):
    """Do repeated or out-of-range dims raise ValueError naming the valid range?"""
    for dims in [(0, 0), (0, 2)]:
        with pytest.raises(ValueError, match=r"dims must be two different coordinates in 0\.\.1"):
            plot_latent_grid(model, dims=dims)


@pytest.mark.parametrize("prior_net", [GaussianPriorNet(2), MoGPriorNet(2, 3)],
                         ids=["gaussian", "mog"])
def test_prior_samples_hist_2d(prior_net):
    """For K = 2, is there a joint panel of the prior's own draws followed by one histogram per coordinate?"""
    torch.manual_seed(SEED)
    expected = prior_net((500,)).sample()
    torch.manual_seed(SEED)
    fig = plot_prior_samples_hist(prior_net, num_samples=500)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["$(z_0, z_1)$ jointly", "$z_{0}$", "$z_{1}$"]
    offsets = np.asarray(axes[0].collections[0].get_offsets())
    assert_close(torch.as_tensor(offsets, dtype=torch.float32), expected)


def test_prior_samples_hist_caps_panels():
    """Does max_dims cap the histograms, and does a 1-D prior get no joint panel?"""
    fig = plot_prior_samples_hist(GaussianPriorNet(10), num_samples=200, max_dims=3)
    assert len(fig.get_axes()) == 1 + 3
    fig = plot_prior_samples_hist(GaussianPriorNet(1), num_samples=200)
    assert [ax.get_title() for ax in fig.get_axes()] == ["$z_{0}$"]
