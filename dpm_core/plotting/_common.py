"""Helpers that several plotting modules share; not part of the public API.

They have public names so that the modules of :mod:`dpm_core.plotting` can import them
from here, but :mod:`dpm_core.plotting` does not re-export them.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from matplotlib.axes import Axes
from torch import nn

__all__ = ["model_data_shape", "panel_layout", "show_grid"]


def model_data_shape(model: nn.Module) -> tuple:
    """The shape of one observation of an :class:`~dpm_core.nvil.NVIL` model."""
    return tuple(model.gen_model.cpd_net.outcome_shape)


def panel_layout(num_panels: int, max_cols: int = 4) -> tuple:
    """(rows, columns) for ``num_panels`` panels: as few rows as ``max_cols`` allows, balanced."""
    nrows = math.ceil(num_panels / max_cols)
    return nrows, math.ceil(num_panels / nrows)


def show_grid(ax: Axes, grid: np.ndarray, title: Optional[str]) -> None:
    """Draw an RGB image grid (from :func:`~dpm_core.plotting.image_grid`) without axes."""
    # an RGB array: imshow applies no colour map, so grey images stay grey
    ax.imshow(grid, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
