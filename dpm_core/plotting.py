"""Figures for the course notebooks: image grids, training curves and latent spaces.

Every function returns a matplotlib object (an ``Axes`` or a ``Figure``) and never
calls ``plt.show()``: the caller shows it (a notebook does so by itself) or saves
it. Functions that take an ``ax`` draw into it; without one they make a new figure
with a size that suits a notebook cell.

Images are tensors ``[N, C, H, W]`` (or ``[S, B, C, H, W]``, flattened to
``S * B`` images) with C = 1 (grey) or 3 (colour), either floats in [0, 1] or
``uint8`` in 0..255; they may live on any device. Functions that take a model
expect an :class:`~dpm_core.nvil.NVIL`: ``model.gen_model`` is p(z) p(x|z) and
``model.inf_model(x)`` returns q(z|x). They run it under ``torch.no_grad()`` in
evaluation mode and give it back in the mode they found it in.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor, nn

from .utils import batch_of, evaluating, model_device, non_negative_int, positive_int

__all__ = [
    "FASHION_MNIST_CLASSES",
    "image_grid",
    "plot_images",
    "plot_training_curves",
    "inspect_lvm",
    "save_samples_and_reconstructions",
    "plot_latent_scatter",
    "plot_latent_grid",
    "plot_prior_samples_hist",
    "as_images",
]

#: The FashionMNIST class names, indexed by label 0..9.
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Panel titles of the metrics that train_vae logs; other metrics are titled by their key.
_METRIC_TITLES = {
    "ELBO": "ELBO",
    "D": "distortion D",
    "R": "rate R",
    "L": "log-likelihood L (importance sampled)",
    "cv_loss": "control-variate loss",
    "loss": "training loss",
}
_METRICS_IN_NATS = ("ELBO", "D", "R", "L")
_GRID_PADDING = 2
_PAD_VALUE = 1.0


# ----------------------------------------------------------------------------- helpers

def _to_numpy(values, name: str) -> np.ndarray:
    if torch.is_tensor(values):
        return values.detach().cpu().numpy()
    if isinstance(values, (np.ndarray, list, tuple)):
        return np.asarray(values)
    raise ValueError(f"{name} must be a tensor or an array, got {type(values).__name__}")


def _data_shape(model: nn.Module) -> tuple:
    return tuple(model.gen_model.cpd_net.outcome_shape)


def as_images(x: Tensor, data_shape: tuple) -> Tensor:
    """Reshape draws with shape ``batch_shape + data_shape`` into images ``[N, C, H, W]``."""
    if len(data_shape) == 3:
        image_shape = data_shape
    elif len(data_shape) == 2:
        image_shape = (1,) + data_shape
    elif len(data_shape) == 1 and math.isqrt(data_shape[0]) ** 2 == data_shape[0]:
        side = math.isqrt(data_shape[0])
        image_shape = (1, side, side)
    else:
        raise ValueError(f"the model's data shape must be (C, H, W), (H, W) or (H * H,) to be "
                         f"shown as images, got {data_shape}")
    return x.reshape((-1,) + image_shape)


# ----------------------------------------------------------------------------- images

def image_grid(images: Tensor, nrow: int = 16, padding: int = 2,
               pad_value: float = 1.0) -> np.ndarray:
    """Tile a batch of images into one RGB array, ready for ``imshow``.

    The grid has ``min(nrow, N)`` columns and ``ceil(N / nrow)`` rows; every image is
    framed by ``padding`` pixels of ``pad_value``, so the array is
    ``[rows * (H + padding) + padding, cols * (W + padding) + padding, 3]``.
    Grey images (C = 1) are repeated into the three channels.

    Args:
        images: ``[N, C, H, W]``, or ``[S, B, C, H, W]`` (read as ``S * B`` images in
            that order), with C in {1, 3}; floats (clamped to [0, 1]), ``uint8``
            (divided by 255) or bool, on any device.
        nrow: images per row of the grid.
        padding: pixels between images and around the grid.
        pad_value: intensity of the padding, in [0, 1] (1 is white).

    Returns:
        A float32 array ``[height, width, 3]`` with values in [0, 1].

    Raises:
        ValueError: if ``images`` has another shape or dtype, is empty, or an
            argument is out of range.

    Example:
        >>> image_grid(torch.rand(20, 1, 28, 28), nrow=8).shape
        (92, 242, 3)
    """
    nrow = positive_int("nrow", nrow)
    padding = non_negative_int("padding", padding)
    if not 0.0 <= float(pad_value) <= 1.0:
        raise ValueError(f"pad_value must be in [0, 1], got {pad_value!r}")
    if not torch.is_tensor(images):
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        else:
            raise ValueError(f"images must be a tensor [N, C, H, W] or [S, B, C, H, W], "
                             f"got {type(images).__name__}")
    images = images.detach().cpu()
    if images.dim() == 5:
        images = images.flatten(0, 1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [N, C, H, W] or [S, B, C, H, W] with C in "
                         f"{{1, 3}}, got {list(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"images must hold at least one image, got shape {list(images.shape)}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif images.dtype == torch.bool:
        images = images.float()
    elif images.is_floating_point():
        images = images.float().clamp(0.0, 1.0)
    else:
        raise ValueError(f"images must be float, uint8 or bool, got dtype {images.dtype}")
    from torchvision.utils import make_grid  # imported here: torchvision takes seconds to load

    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=float(pad_value))  # [3, h, w]
    return grid.permute(1, 2, 0).numpy()


def _default_figsize(grid: np.ndarray, width: float = 10.0, extra_height: float = 0.4) -> tuple:
    height, grid_width = grid.shape[:2]
    # small grids get a smaller figure, so that a handful of images is not blown up
    width = min(width, max(2.0, grid_width / 40.0))
    return (width, width * height / grid_width + extra_height)


def _show_grid(ax: Axes, grid: np.ndarray, title: Optional[str]) -> None:
    # an RGB array: imshow applies no colour map, so grey images stay grey
    ax.imshow(grid, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)


def plot_images(images: Tensor, nrow: int = 16, title: Optional[str] = None,
                ax: Optional[Axes] = None, figsize: Optional[tuple] = None) -> Axes:
    """Show a batch of images as one grid, without axes.

    Args:
        images: ``[N, C, H, W]`` or ``[S, B, C, H, W]``, as for :func:`image_grid`.
        nrow: images per row.
        title: the axes title.
        ax: draw here; by default a new figure.
        figsize: size of the new figure in inches (default: fits the grid, at most
            10 inches wide); ignored when ``ax`` is given.

    Returns:
        The axes.

    Example:
        >>> ax = plot_images(x[:32], nrow=16, title="test images")
    """
    grid = image_grid(images, nrow=nrow)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize or _default_figsize(grid), layout="constrained")
    _show_grid(ax, grid, title)
    return ax


# ----------------------------------------------------------------------------- curves

def _panel_layout(num_panels: int, max_cols: int = 4) -> tuple:
    """(rows, columns) for ``num_panels`` panels: as few rows as ``max_cols`` allows, balanced."""
    nrows = math.ceil(num_panels / max_cols)
    return nrows, math.ceil(num_panels / nrows)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_training_curves(log: Mapping[str, object],
                         metrics: Sequence[str] = ("ELBO", "D", "R", "L", "cv_loss"),
                         splits: Sequence[str] = ("training", "dev"),
                         figsize: Optional[tuple] = None,
                         smoothing: Optional[int] = None) -> Figure:
    """Plot the curves of a :func:`~dpm_core.training.train_vae` log, one panel per metric.

    A panel shows every split that logged the metric: ``"training"`` (per-step
    batch figures) as a thin, faint line with a moving average over it, and
    ``"dev"`` (periodic checks) with markers. Metrics that no split logged are left
    out, and so is a control-variate loss that is 0 throughout (pathwise
    gradients need no control variate): the default draws ELBO, D, R, L and,
    for score-function training, the control-variate loss. Panels fill rows of
    at most four (five panels: two rows of three).

    Args:
        log: maps ``"<split>.<metric>"`` to a list of ``(step, value)`` pairs;
            entries that are not lists (such as ``"time"``) are ignored.
        metrics: the metrics to draw, in panel order.
        splits: the splits to draw in each panel.
        figsize: figure size in inches (default: 4.2 by 3.6 inches per panel).
        smoothing: window (in logged points) of the moving average over the
            training curve; default ``len // 25`` (no average for short curves);
            0 or 1 draws none.

    Returns:
        The figure, with one axes per metric drawn.

    Raises:
        ValueError: if none of ``metrics`` is logged for any of ``splits``, or
            ``smoothing`` is negative.

    Example:
        >>> fig = plot_training_curves(log, metrics=("ELBO", "R"))
    """
    if not isinstance(log, Mapping):
        raise ValueError(f"log must be a dict from '<split>.<metric>' to (step, value) lists, "
                         f"got {type(log).__name__}")
    if smoothing is not None:
        non_negative_int("smoothing", smoothing)
    curves = {key: value for key, value in log.items()
              if isinstance(value, (list, tuple)) and len(value) > 0}
    # pathwise training logs a control-variate loss of exactly 0: nothing to look at
    for key in [k for k in curves if k.endswith(".cv_loss")]:
        if all(pair[1] == 0 for pair in curves[key]):
            del curves[key]
    present = [m for m in metrics if any(f"{s}.{m}" in curves for s in splits)]
    if not present:
        raise ValueError(f"log has none of the metrics {tuple(metrics)} for the splits "
                         f"{tuple(splits)}; its curves are {sorted(curves)}")

    nrows, ncols = _panel_layout(len(present))
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize or (4.2 * ncols, 3.6 * nrows),
                             squeeze=False, layout="constrained")
    axes = axes.ravel()
    for ax in axes[len(present):]:
        ax.remove()
    for ax, metric in zip(axes, present):
        for i, split in enumerate(splits):
            key = f"{split}.{metric}"
            if key not in curves:
                continue
            points = np.asarray(curves[key], dtype=float)  # [T, 2]: step, value
            if points.ndim != 2 or points.shape[1] != 2:
                raise ValueError(f"log[{key!r}] must be a list of (step, value) pairs, got an "
                                 f"array of shape {points.shape}")
            steps, values = points[:, 0], points[:, 1]
            color = f"C{i}"
            if split == "training":
                ax.plot(steps, values, color=color, lw=0.7, alpha=0.35, label=split)
                window = len(values) // 25 if smoothing is None else smoothing
                if 1 < window <= len(values):
                    ax.plot(steps[window - 1:], _moving_average(values, window), color=color,
                            lw=1.5, label=f"{split}, moving average of {window}")
            else:
                ax.plot(steps, values, color=color, lw=1.2, marker="o", ms=3, label=split)
        ax.set_title(_METRIC_TITLES.get(metric, metric))
        ax.set_xlabel("step")
        ax.set_ylabel(f"{metric} (nats)" if metric in _METRICS_IN_NATS else metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


# ----------------------------------------------------------------------------- models

def _grids_figure(grids: Sequence[np.ndarray], titles: Sequence[str], width: float) -> Figure:
    """A column of image grids, each row as tall as its grid's aspect asks."""
    ratios = [g.shape[0] / g.shape[1] for g in grids]
    title_space = 0.45  # inches per row for the title
    height = width * sum(ratios) + title_space * len(grids)
    fig, axes = plt.subplots(len(grids), 1, figsize=(width, height), height_ratios=ratios,
                             layout="constrained", squeeze=False)
    for ax, grid, title in zip(axes[:, 0], grids, titles):
        _show_grid(ax, grid, title)
    return fig


def inspect_lvm(model: nn.Module, x: Tensor, num_prior: int = 16, prior_draws: int = 4,
                device: Union[str, torch.device, None] = None) -> Figure:
    """Look at what a latent variable model generates, next to data and reconstructions.

    Four rows of images:

    1. prior samples: ``num_prior`` codes z ~ p(z), one per column, and
       ``prior_draws`` observations x ~ p(x|z) for each, one per row;
    2. the observations x;
    3. conditional samples x' ~ p(x|z) with z ~ q(z|x), one per observation;
    4. reconstructions: the decoder mean E[x|z] at the mean of q(z|x).

    Args:
        model: an :class:`~dpm_core.nvil.NVIL` model.
        x: observations ``[B] + data_shape`` (e.g. a dev batch).
        num_prior: codes to draw from the prior.
        prior_draws: observations to draw for each code.
        device: the model's device, where ``x`` is moved (default: found from the
            model's parameters). The model itself is not moved.

    Returns:
        The figure.

    Raises:
        ValueError: if ``x`` does not have the model's data shape, or a count is
            not a positive int.
    """
    num_prior = positive_int("num_prior", num_prior)
    prior_draws = positive_int("prior_draws", prior_draws)
    data_shape = _data_shape(model)
    batch_of("x", x, data_shape)
    device = torch.device(device) if device is not None else model_device(model)
    x = x.to(device)
    with evaluating(model):
        prior = model.sample(num_prior, prior_draws, oversample=True)  # [S, B] + data_shape
        cond = model.cond_sample(x)  # [B] + data_shape
        recon = model.gen_model.obs_model(model.inf_model(x).mean).mean  # [B] + data_shape
    grids = [image_grid(as_images(prior, data_shape), nrow=num_prior),
             image_grid(as_images(x, data_shape)),
             image_grid(as_images(cond, data_shape)),
             image_grid(as_images(recon, data_shape))]
    titles = [f"prior samples: {num_prior} codes z ~ p(z) (columns), "
              f"{prior_draws} draws x ~ p(x|z) each (rows)",
              "observations x",
              "conditional samples x' ~ p(x|z), z ~ q(z|x)",
              "reconstructions: decoder mean E[x|z] at z = mean of q(z|x)"]
    return _grids_figure(grids, titles, width=10.0)


def save_samples_and_reconstructions(model: nn.Module, x: Tensor, path: Union[str, Path],
                                     num_samples: int = 32) -> Path:
    """Save a PNG of decoded prior samples, test images and their reconstructions.

    Rows: (1) decoder means E[x|z] of ``num_samples`` codes z ~ p(z); (2) the
    images x; (3) their reconstructions, E[x|z] at z = mean of q(z|x). Decoder
    means rather than draws from p(x|z), because they show what the decoder has
    learnt without the pixel noise of a Bernoulli draw.

    Args:
        model: an :class:`~dpm_core.nvil.NVIL` model.
        x: images ``[B] + data_shape``; moved to the model's device.
        path: the PNG to write; missing parent folders are created.
        num_samples: codes to draw from the prior.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``x`` does not have the model's data shape or
            ``num_samples`` is not a positive int.
    """
    num_samples = positive_int("num_samples", num_samples)
    data_shape = _data_shape(model)
    batch_of("x", x, data_shape)
    path = Path(path)
    x = x.to(model_device(model))
    with evaluating(model):
        z = model.gen_model.prior((num_samples,)).sample()  # [S, K]
        samples = model.gen_model.obs_model(z).mean  # [N] + data_shape
        recon = model.gen_model.obs_model(model.inf_model(x).mean).mean  # [B] + data_shape
    grids = [image_grid(as_images(samples, data_shape)),
             image_grid(as_images(x, data_shape)),
             image_grid(as_images(recon, data_shape))]
    titles = ["prior samples: decoder mean E[x|z], z ~ p(z)",
              "test images x",
              "reconstructions: E[x|z] at z = mean of q(z|x)"]
    fig = _grids_figure(grids, titles, width=8.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------- latents

def plot_latent_scatter(z: Union[Tensor, np.ndarray], labels: Union[Tensor, np.ndarray],
                        class_names: Optional[Sequence[str]] = None, ax: Optional[Axes] = None,
                        alpha: float = 0.6, s: float = 8) -> Axes:
    """Scatter 2-D latent codes, coloured by class, with the legend outside on the right.

    Args:
        z: codes ``[N, 2]``, e.g. the means of q(z|x) for a test set.
        labels: integer class labels ``[N]``.
        class_names: names indexed by label, e.g. :data:`FASHION_MNIST_CLASSES`;
            default: the labels themselves (the data set is not known here, and
            MNIST digits must not be called T-shirts).
        ax: draw here; by default a new figure.
        alpha: opacity of the points.
        s: marker size of the points.

    Returns:
        The axes.

    Raises:
        ValueError: if ``z`` is not ``[N, 2]``, ``labels`` not ``[N]`` integers, or
            a label has no entry in ``class_names``.

    Example:
        >>> qz = model.inf_model(x)
        >>> ax = plot_latent_scatter(qz.mean, y, class_names=FASHION_MNIST_CLASSES)
    """
    z = _to_numpy(z, "z")
    labels = _to_numpy(labels, "labels")
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"z must have shape [N, 2], got {list(z.shape)}; for K > 2 latent "
                         f"dimensions project the codes to 2-D first, e.g. with PCA "
                         f"(torch.pca_lowrank) or t-SNE (sklearn.manifold.TSNE)")
    if labels.ndim != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(f"labels must have shape [N] = [{z.shape[0]}] (one per code), "
                         f"got {list(labels.shape)}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    classes = np.unique(labels)
    if class_names is None:
        names = {int(c): str(int(c)) for c in classes}
    else:
        bad = [int(c) for c in classes if not 0 <= c < len(class_names)]
        if bad:
            raise ValueError(f"class_names has {len(class_names)} entries, so labels must be in "
                             f"0..{len(class_names) - 1}, got {bad}")
        names = {int(c): str(class_names[int(c)]) for c in classes}
    hue = [names[int(c)] for c in labels]
    hue_order = [names[int(c)] for c in classes]
    palette = "tab10" if len(classes) <= 10 else "husl"

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 5.0), layout="constrained")
    sns.scatterplot(x=z[:, 0], y=z[:, 1], hue=hue, hue_order=hue_order, palette=palette,
                    alpha=alpha, s=s, linewidth=0, ax=ax)
    legend = ax.get_legend()
    if legend is not None:
        sns.move_legend(ax, "center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                        title="class", markerscale=2.0)
        for handle in ax.get_legend().legend_handles:
            handle.set_alpha(1.0)
    ax.set_xlabel("$z_0$")
    ax.set_ylabel("$z_1$")
    return ax


def _tick_indices(steps: int, max_ticks: int = 8) -> np.ndarray:
    """Indices of at most ``max_ticks`` cells to label: both ends, evenly spaced if possible."""
    if steps <= max_ticks:
        return np.arange(steps)
    for stride in range(2, steps):
        if (steps - 1) % stride == 0 and (steps - 1) // stride + 1 <= max_ticks:
            if (steps - 1) // stride + 1 >= 3:
                return np.arange(0, steps, stride)
            break
    return np.unique(np.round(np.linspace(0, steps - 1, max_ticks)).astype(int))


def _tick_label(value: float) -> str:
    # round away float noise such as -3e-08 for 0, and print -0 as 0
    return f"{round(float(value), 6) + 0.0:.2g}"


def plot_latent_grid(model: nn.Module, z_range: tuple = (-3, 3), steps: int = 15,
                     dims: tuple = (0, 1), ax: Optional[Axes] = None) -> Axes:
    """Decode a regular grid of codes over two latent dimensions: the learnt manifold.

    The code of the image in column c and row r has ``z[dims[0]]`` = the c-th and
    ``z[dims[1]]`` = the (steps - 1 - r)-th of ``steps`` values evenly spaced over
    ``z_range`` (so z grows to the right and upwards, as on a plot); the other
    coordinates are 0. Each image is the decoder mean E[x|z].

    Args:
        model: an :class:`~dpm_core.nvil.NVIL` model with a latent of shape ``(K,)``, K >= 2.
        z_range: ``(low, high)`` of both coordinates (for a N(0, I) prior, +-3
            covers nearly all of its mass).
        steps: values per coordinate; the grid shows ``steps * steps`` images.
        dims: the two latent coordinates to vary.
        ax: draw here; by default a new figure.

    Returns:
        The axes, with ticks labelled by z values.

    Raises:
        ValueError: if ``steps`` is not a positive int, ``z_range`` is not
            increasing, or ``dims`` are not two different coordinates of the latent.
    """
    steps = positive_int("steps", steps)
    z_range = tuple(z_range)
    if len(z_range) != 2 or not float(z_range[0]) < float(z_range[1]):
        raise ValueError(f"z_range must be (low, high) with low < high, got {z_range}")
    low, high = float(z_range[0]), float(z_range[1])
    latent_shape = tuple(model.gen_model.prior_net.outcome_shape)
    if len(latent_shape) != 1 or latent_shape[0] < 2:
        raise ValueError(f"the model's latent must have shape (K,) with K >= 2, got {latent_shape}")
    K = latent_shape[0]
    dims = tuple(dims)
    is_index = [not isinstance(d, bool) and isinstance(d, (int, np.integer)) for d in dims]
    if len(dims) != 2 or not all(is_index) or dims[0] == dims[1] \
            or not all(0 <= d < K for d in dims):
        raise ValueError(f"dims must be two different coordinates in 0..{K - 1}, got {dims}")
    d0, d1 = (int(d) for d in dims)
    data_shape = _data_shape(model)

    values = torch.linspace(low, high, steps, dtype=torch.float64)
    rows, cols = torch.meshgrid(values.flip(0), values, indexing="ij")  # [steps, steps] each
    # [N, K], in row-major order, the order in which make_grid lays out the images
    z = torch.zeros(steps * steps, K)
    z[:, d0] = cols.reshape(-1)
    z[:, d1] = rows.reshape(-1)
    with evaluating(model):
        means = model.gen_model.obs_model(z.to(model_device(model))).mean  # [N] + data_shape
    images = as_images(means, data_shape)
    height, width = images.shape[-2:]
    grid = image_grid(images, nrow=steps, padding=_GRID_PADDING, pad_value=_PAD_VALUE)

    if ax is None:
        _, ax = plt.subplots(figsize=(7.0, 7.0), layout="constrained")
    ax.imshow(grid, vmin=0.0, vmax=1.0, interpolation="nearest")
    ticks = _tick_indices(steps)

    def centre(i: int, n: int) -> float:
        """Pixel coordinate of the centre of the i-th image along an axis of images of size n."""
        return _GRID_PADDING + i * (n + _GRID_PADDING) + (n - 1) / 2

    ax.set_xticks([centre(i, width) for i in ticks], [_tick_label(values[i]) for i in ticks])
    ax.set_yticks([centre(i, height) for i in ticks],
                  [_tick_label(values[steps - 1 - i]) for i in ticks])
    ax.set_xlabel(f"$z_{{{d0}}}$")
    ax.set_ylabel(f"$z_{{{d1}}}$")
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("decoder mean E[x|z] over a grid of codes" + (
        f" (other {K - 2} coordinates 0)" if K > 2 else ""))
    return ax


def plot_prior_samples_hist(prior_net: nn.Module, num_samples: int = 5000,
                            max_dims: int = 8) -> Figure:
    """Draws from a prior p(z): the first two coordinates jointly, and a histogram per coordinate.

    Meant for trainable priors such as :class:`~dpm_core.priors.MoGPriorNet`. When
    K >= 2 the first panel shows (z_0, z_1): up to 2000 of the draws and density
    contours of a kernel density estimate. Then each of the first ``max_dims``
    coordinates gets a density histogram with a kernel density estimate and,
    dashed, the N(0, 1) density for comparison.

    Args:
        prior_net: a prior net; ``prior_net((N,))`` returns p(z) with batch shape
            ``(N,)`` (latents of more than one dimension are flattened).
        num_samples: draws to plot.
        max_dims: at most this many histogram panels.

    Returns:
        The figure: ``min(K, max_dims)`` histogram axes, after one joint axes if K >= 2.

    Raises:
        ValueError: if ``num_samples`` or ``max_dims`` is not a positive int.

    Example:
        >>> fig = plot_prior_samples_hist(MoGPriorNet(2, num_components=3))
    """
    num_samples = positive_int("num_samples", num_samples)
    max_dims = positive_int("max_dims", max_dims)
    with torch.no_grad():
        z = prior_net((num_samples,)).sample()
    z = z.reshape(num_samples, -1).cpu().numpy()  # [S, K]
    K = z.shape[1]
    num_hists = min(K, max_dims)
    joint = K >= 2
    num_panels = num_hists + int(joint)
    nrows, ncols = _panel_layout(num_panels)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.0 * nrows), squeeze=False,
                             layout="constrained")
    axes = axes.ravel()
    for ax in axes[num_panels:]:
        ax.remove()
    if joint:
        ax = axes[0]
        shown = z[: min(num_samples, 2000)]
        ax.scatter(shown[:, 0], shown[:, 1], s=2, alpha=0.25, color="C0", linewidths=0)
        sns.kdeplot(x=shown[:, 0], y=shown[:, 1], levels=6, color="k", linewidths=0.8, ax=ax)
        ax.set_xlabel("$z_0$")
        ax.set_ylabel("$z_1$")
        ax.set_title("$(z_0, z_1)$ jointly")
    grid = np.linspace(-4.0, 4.0, 200)
    std_normal = np.exp(-0.5 * grid ** 2) / math.sqrt(2 * math.pi)  # N(0, 1) density
    for k in range(num_hists):
        panel = k + int(joint)
        ax = axes[panel]
        sns.histplot(x=z[:, k], bins=50, stat="density", kde=True, element="step",
                     alpha=0.3, ax=ax, label="draws")
        ax.plot(grid, std_normal, color="0.4", ls="--", lw=1, label="N(0, 1)")
        ax.set_title(f"$z_{{{k}}}$")
        ax.set_xlabel("")
        ax.set_ylabel("density" if panel % ncols == 0 or k == 0 else "")
        if k == 0:
            ax.legend(fontsize="small")
    extra = f"; histograms of the first {num_hists} of {K} coordinates" if K > num_hists else ""
    fig.suptitle(f"{num_samples} draws from p(z) ({type(prior_net).__name__}{extra})")
    return fig
