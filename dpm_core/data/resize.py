"""Resizing a whole split of ``uint8`` images ``[N, C, H, W]`` at once."""

from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["resize_shape", "resize_uint8"]

# Images converted to float per chunk in :func:`resize_uint8`, to bound peak memory.
_RESIZE_CHUNK = 4096


def resize_shape(size: Any, height: int, width: int) -> Tuple[int, int]:
    """Output (H, W) for ``resize``, with torchvision's ``Resize(int)`` convention."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        # An int sets the shorter edge and keeps the aspect ratio, as Resize(64) does.
        short, long = sorted((height, width))
        new_short, new_long = size, int(size * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        return (int(size[0]), int(size[1]))
    raise ValueError(
        f"resize must be None, a positive int or a pair (H, W) of positive ints, got {size!r}"
    )


def resize_uint8(images: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bilinear resize of ``uint8 [N, C, H, W]`` to ``uint8 [N, C, *size]``, in chunks."""
    out = torch.empty(
        (images.shape[0], images.shape[1], *size), dtype=torch.uint8, device=images.device
    )
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start:start + _RESIZE_CHUNK].to(torch.float32)
        chunk = F.interpolate(
            chunk, size=size, mode="bilinear", antialias=False, align_corners=False
        )
        out[start:start + _RESIZE_CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out
