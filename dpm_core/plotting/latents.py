"""Latent spaces: codes coloured by class, the decoded grid of codes, and prior draws.

:func:`plot_latent_grid` takes an :class:`~dpm_core.nvil.NVIL`, which it runs under
``torch.no_grad()`` in evaluation mode and gives back in the mode it found it in.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..utils import evaluating, model_device, positive_int
from ._common import model_data_shape, panel_layout
from .images import as_images, image_grid

__all__ = [
    "FASHION_MNIST_CLASSES",
    "plot_latent_scatter",
    "plot_latent_grid",
    "plot_prior_samples_hist",
]

#: The FashionMNIST class names, indexed by label 0..9.
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_GRID_PADDING = 2
_PAD_VALUE = 1.0


def _to_numpy(values, name: str) -> np.ndarray:
    if torch.is_tensor(values):
        return values.detach().cpu().numpy()
    if isinstance(values, (np.ndarray, list, tuple)):
        return np.asarray(values)
    raise ValueError(f"{name} must be a tensor or an array, got {type(values).__name__}")


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
    data_shape = model_data_shape(model)

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
    nrows, ncols = panel_layout(num_panels)
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
