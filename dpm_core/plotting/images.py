"""Image grids: tile a batch of images into one array, and show it.

Images are tensors ``[N, C, H, W]`` (or ``[S, B, C, H, W]``, flattened to ``S * B``
images) with C = 1 (grey) or 3 (colour), either floats in [0, 1] or ``uint8`` in
0..255; they may live on any device.
"""

from __future__ import annotations

import math
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from torch import Tensor

from ..utils import non_negative_int, positive_int
from ._common import show_grid

__all__ = ["as_images", "image_grid", "plot_images"]


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
    # tiled here rather than with torchvision's make_grid: importing torchvision loads its
    # models and torch._dynamo, 1.8 s in every notebook's first figure
    n, _, height, width = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    tiles = torch.full((rows * cols, 3, height + padding, width + padding), float(pad_value))
    tiles[:n, :, padding:, padding:] = images.expand(-1, 3, -1, -1)  # padding above and left
    grid = (tiles.reshape(rows, cols, 3, height + padding, width + padding)
            .permute(0, 3, 1, 4, 2).reshape(rows * (height + padding), cols * (width + padding), 3))
    grid = torch.nn.functional.pad(grid, (0, 0, 0, padding, 0, padding), value=float(pad_value))
    return grid.numpy()


def _default_figsize(grid: np.ndarray, width: float = 10.0, extra_height: float = 0.4) -> tuple:
    height, grid_width = grid.shape[:2]
    # small grids get a smaller figure, so that a handful of images is not blown up
    width = min(width, max(2.0, grid_width / 40.0))
    return (width, width * height / grid_width + extra_height)


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
    show_grid(ax, grid, title)
    return ax
