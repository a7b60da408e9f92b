"""Rendering for the latent views: images as PNG bytes, matplotlib ellipses, short texts.

No ipywidgets here: the static fallback (a PNG of a matplotlib figure) needs none.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from PIL import Image as PILImage
from torch import Tensor

from ..plotting import image_grid
from .geometry import ELLIPSE_SD

__all__ = ["MARKER_COLOUR", "PATH_COLOUR", "SAMPLE_COLOUR", "STATIC_DPI", "to_uint8", "png_bytes",
           "grid_png", "figure_png", "vector_text", "ellipse", "move_ellipse"]

MARKER_COLOUR = "#d62728"
PATH_COLOUR = "#111111"
SAMPLE_COLOUR = "#ff7f0e"
STATIC_DPI = 90
_PNG_COMPRESSION = 1  # zlib level: fast to encode, and the images are tiny anyway


def to_uint8(image: Tensor) -> np.ndarray:
    """One image ``[C, H, W]`` with values in [0, 1] as uint8 ``[H, W]`` (grey) or ``[H, W, 3]``."""
    pixels = (image.detach().float().clamp(0.0, 1.0) * 255).round().to(torch.uint8).cpu().numpy()
    return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)


def png_bytes(pixels: np.ndarray, scale: int = 1) -> bytes:
    """PNG bytes of a uint8 array ``[H, W]`` or ``[H, W, 3]``, each pixel a scale x scale square."""
    if scale > 1:
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="png", compress_level=_PNG_COMPRESSION)
    return buffer.getvalue()


def grid_png(images: Tensor, nrow: int, width: int) -> bytes:
    """PNG of images ``[N, C, H, W]`` tiled by :func:`image_grid`, upscaled to about ``width`` px."""
    grid = image_grid(images, nrow=nrow)  # [h, w, 3]
    pixels = (np.clip(grid, 0.0, 1.0) * 255).round().astype(np.uint8)
    return png_bytes(pixels, scale=max(1, width // pixels.shape[1]))


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a matplotlib figure, at its own dpi."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return buffer.getvalue()


def vector_text(v: Tensor, max_entries: int = 4) -> str:
    """The first entries of a vector, e.g. ``(0.50, -1.00, …)``."""
    values = ", ".join(f"{float(a):.2f}" for a in v[:max_entries])
    return f"({values}{', …' if len(v) > max_entries else ''})"


def move_ellipse(patch: Ellipse, centre_uv: Tensor, cov: Tensor) -> None:
    """Give an ellipse patch the centre and shape of :func:`ellipse`."""
    target = ellipse(centre_uv, cov)
    patch.set_center(target.get_center())
    patch.set_width(target.get_width())
    patch.set_height(target.get_height())
    patch.set_angle(target.get_angle())


def ellipse(centre_uv: Tensor, cov: Tensor, **kwargs) -> Ellipse:
    """The 2-sd ellipse of a 2-D Gaussian with covariance ``cov``, as a matplotlib patch."""
    values, vectors = torch.linalg.eigh(cov.double())  # ascending
    width, height = (2 * ELLIPSE_SD * values.clamp(min=0).sqrt().flip(0)).tolist()
    angle = math.degrees(math.atan2(float(vectors[1, 1]), float(vectors[0, 1])))
    return Ellipse(tuple(centre_uv.tolist()), width, height, angle=angle, **kwargs)


