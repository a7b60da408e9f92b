"""The seed notebook's :class:`Binarizer`, a wrapper around a map-style data set."""

from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["Binarizer"]


class Binarizer(Dataset):
    """Wraps a data set of ``(x, y)`` pairs and binarises ``x`` at a threshold.

    The seed notebook's helper, kept for code that builds a torchvision data set and a
    :class:`~torch.utils.data.DataLoader`; :class:`ImageData` with ``binarize="static"``
    does the same once for the whole split.

    Args:
        ds: a map-style data set whose items are ``(x, y)`` with ``x`` a float tensor in
            ``[0, 1]`` (e.g. ``ToTensor()`` output).
        threshold: ``x >= threshold`` becomes 1, the rest 0.

    Example:
        >>> ds = torch.utils.data.TensorDataset(torch.tensor([[0.2, 0.7]]), torch.tensor([3]))
        >>> Binarizer(ds)[0]
        (tensor([0., 1.]), tensor(3))
    """

    def __init__(self, ds: Dataset, threshold: float = 0.5) -> None:
        self._ds = ds
        self._threshold = threshold

    def __len__(self) -> int:
        """The number of items in the wrapped data set."""
        return len(self._ds)

    def __getitem__(self, idx: int) -> Tuple[Tensor, Any]:
        """Returns ``((x >= threshold).float(), y)`` for item ``idx``."""
        x, y = self._ds[idx]
        return (x >= self._threshold).float(), y
