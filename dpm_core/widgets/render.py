"""Rendering for the latent views: images as PNG bytes, matplotlib ellipses, short texts.

No ipywidgets here: the static fallback (a PNG of a matplotlib figure) needs none.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import torch
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from PIL import Image as PILImage, ImageDraw, ImageFont
from torch import Tensor

from ..plotting import image_grid
from .geometry import ELLIPSE_SD

__all__ = ["MARKER_COLOUR", "PATH_COLOUR", "SAMPLE_COLOUR", "STATIC_DPI", "to_uint8", "png_bytes",
           "grid_png", "ends_and_paths_grid", "figure_png", "vector_text", "ellipse",
           "move_ellipse", "labelled_strip"]

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


def ends_and_paths_grid(a: Tensor, b: Tensor, paths: Tensor, padding: int = 2,
                        gap: int = 4) -> tuple[np.ndarray, list[float], list[float]]:
    """Rows of decoded paths between a column of image A and a column of image B.

    Row r is ``a``, the T images ``paths[r]``, then ``b``; the end columns stand ``gap``
    pixels further apart from the path than the path's images from each other, so that
    the test images read apart from the decoded ones.

    Args:
        a: image A ``[C, H, W]``.
        b: image B ``[C, H, W]``.
        paths: R paths of T images each, ``[R, T, C, H, W]``.
        padding: white pixels around each image, as in :func:`image_grid`.
        gap: extra white pixels between an end column and the path.

    Returns:
        The RGB array ``[h, w, 3]`` (floats in [0, 1]), the x centres of its T + 2
        columns (A, the path, B) and the y centres of its R rows, in pixels of the array.
    """
    R, T = paths.shape[:2]
    H, W = paths.shape[-2:]
    column_a = image_grid(a[None].expand(R, -1, -1, -1), nrow=1, padding=padding)
    column_b = image_grid(b[None].expand(R, -1, -1, -1), nrow=1, padding=padding)
    middle = image_grid(paths, nrow=T, padding=padding)  # [R, T] read row by row
    space = np.ones((middle.shape[0], gap, 3), dtype=middle.dtype)
    grid = np.concatenate([column_a, space, middle, space, column_b], axis=1)
    step = W + padding
    inner = [column_a.shape[1] + gap + padding + t * step + W / 2 for t in range(T)]
    xs = [padding + W / 2] + inner + [grid.shape[1] - padding - W / 2]
    ys = [padding + r * (H + padding) + H / 2 for r in range(R)]
    return grid, xs, ys


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


@functools.lru_cache(maxsize=None)
def _label_font(size: int = 11):
    """DejaVu Sans (matplotlib's own font, so always there) at ``size`` pixels."""
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)


def labelled_strip(images: Tensor, labels: list, highlighted: set, framed: list,
                   columns: int = 10, tile: int = 56) -> np.ndarray:
    """Images in rows of ``columns``, each upscaled to about ``tile`` pixels wide, with two lines
    of text under it, as one RGB picture.

    Args:
        images: ``[P, C, H, W]`` in [0, 1].
        labels: P pairs of strings: the first line (dark) and the second (grey, or red for the
            images in ``highlighted``).
        highlighted: indices whose second line is red.
        framed: P booleans: a red frame around the image.
        columns: images per row (fewer when there are fewer images).
        tile: the width an image is upscaled to, about (a whole factor of its own).

    Returns:
        ``[h, w, 3]`` uint8 pixels.
    """
    H, W = images.shape[-2:]
    scale = max(1, tile // W)
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    gap, text_height = 4, 28
    tile_w, tile_h = W * scale + gap, H * scale + text_height
    canvas = PILImage.new("RGB", (columns * tile_w + gap, rows * tile_h + gap), "white")
    draw = ImageDraw.Draw(canvas)
    font = _label_font()
    for j, (image, (first, second)) in enumerate(zip(images, labels)):
        x0 = gap + (j % columns) * tile_w
        y0 = gap + (j // columns) * tile_h
        pixels = to_uint8(image).repeat(scale, axis=0).repeat(scale, axis=1)
        canvas.paste(PILImage.fromarray(pixels).convert("RGB"), (x0, y0))
        if framed[j]:
            draw.rectangle([x0 - 2, y0 - 2, x0 + W * scale + 1, y0 + H * scale + 1],
                           outline=MARKER_COLOUR, width=2)
        centre = x0 + W * scale // 2
        draw.text((centre, y0 + H * scale + 2), first, fill="#222222", font=font, anchor="mt")
        draw.text((centre, y0 + H * scale + 14), second,
                  fill=MARKER_COLOUR if j in highlighted else "#777777", font=font, anchor="mt")
    return np.asarray(canvas)
