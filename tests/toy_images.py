"""Tiny binary image sets for training tests: fair-coin noise, and noisy copies of two
prototypes (a model can learn the second, not the first)."""

from __future__ import annotations

import torch

from dpm_core.data import ImageData

__all__ = ["random_images", "prototype_images"]


def random_images(n: int, size: int = 8) -> ImageData:
    """n images ``[1, size, size]`` of independent fair-coin pixels, statically binarised."""
    pixels = torch.randint(0, 2, (n, 1, size, size), dtype=torch.uint8) * 255
    return ImageData(pixels, torch.zeros(n, dtype=torch.int64), binarize="static")


def prototype_images(n: int, size: int = 8, flip: float = 0.05) -> ImageData:
    """n noisy copies of two prototypes (left half on, top half on), each pixel flipped w.p.
    ``flip``; the label says which prototype."""
    left = torch.zeros(size, size, dtype=torch.bool)
    left[:, : size // 2] = True
    prototypes = torch.stack([left, left.T])  # [2, H, W]
    labels = torch.arange(n) % 2
    noise = torch.rand(n, size, size) < flip
    pixels = (prototypes[labels] ^ noise).to(torch.uint8).mul(255).unsqueeze(1)  # [N, 1, H, W]
    return ImageData(pixels, labels, binarize="static")
