"""The tensor-resident data set: one split of images as a ``uint8`` tensor on one device.

The whole split lives in one ``uint8`` tensor ``[N, C, H, W]`` (N images, C channels,
H height, W width), and a batch is an index into it. Three ways of turning pixel
intensities into model inputs are offered:

* ``binarize=None``: ``x / 255``, floats in ``[0, 1]`` (for continuous likelihoods);
* ``binarize="static"``: ``x / 255 >= threshold``, computed once (the seed's
  :class:`~dpm_core.data.Binarizer`);
* ``binarize="dynamic"``: a fresh draw ``x ~ Bernoulli(pixel / 255)`` every time a batch
  is made (Salakhutdinov & Murray 2008 [1]), which acts as a regulariser.

References:
    [1] R. Salakhutdinov, I. Murray. On the quantitative analysis of deep belief
        networks. ICML 2008.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..utils import one_of, positive_int, probability, read_only, tensor_of

__all__ = ["ImageData", "BINARIZE_MODES", "check_binarize"]

#: The values of ``binarize``: none, once at a threshold, or a fresh Bernoulli draw.
BINARIZE_MODES = (None, "static", "dynamic")


def check_binarize(binarize: Optional[str], threshold: float) -> None:
    """Check a binarisation mode and its threshold (a number in [0, 1])."""
    one_of("binarize", binarize, BINARIZE_MODES)
    probability("threshold", threshold)


def _bernoulli(p: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """Draws ``Bernoulli(p)``, also when the generator lives on another device than ``p``."""
    if generator is None or generator.device == p.device:
        return torch.bernoulli(p, generator=generator)
    # x ~ Bernoulli(p)  <=>  x = [u < p] with u ~ U(0, 1)
    u = torch.rand(p.shape, generator=generator, device=generator.device)
    return (u.to(p.device) < p).to(p.dtype)


class ImageData(Dataset):
    """One split of an image data set, held as tensors on one device.

    Batches are made by indexing the whole ``uint8`` tensor, so there is no per-image
    Python work; it is also a map-style :class:`torch.utils.data.Dataset`, so a
    :class:`~torch.utils.data.DataLoader` works too (one image at a time, slower).

    Args:
        images: ``uint8`` tensor ``[N, C, H, W]`` of pixel intensities in ``0..255``.
        labels: ``int64`` tensor ``[N]`` of class labels, on the same device.
        binarize: how a batch ``x`` is made from the pixels ``v``:
            ``None``: ``x = v / 255``;
            ``"static"``: ``x = [v / 255 >= threshold]`` (computed once, here);
            ``"dynamic"``: ``x ~ Bernoulli(v / 255)``, drawn anew for every batch.
        threshold: the cut-off of static binarisation, in ``[0, 1]``.
        generator: default source of randomness for dynamic binarisation (``None``:
            torch's global generator).

    Raises:
        ValueError: if ``images`` is not ``uint8 [N, C, H, W]``, ``labels`` is not
            ``int64 [N]`` on the same device, or ``binarize``/``threshold`` is invalid.

    Example:
        >>> data = ImageData(torch.zeros(10, 1, 28, 28, dtype=torch.uint8),
        ...                  torch.arange(10), binarize="static")
        >>> x, y = next(data.batches(4))
        >>> x.shape, x.dtype
        (torch.Size([4, 1, 28, 28]), torch.float32)
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        binarize: Optional[str] = None,
        threshold: float = 0.5,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        tensor_of("images", images, torch.uint8, "[N, C, H, W]")
        tensor_of("labels", labels, torch.int64, "[N]")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must have N={images.shape[0]} entries (one per image), "
                f"got {labels.shape[0]}"
            )
        if labels.device != images.device:
            raise ValueError(
                f"labels must be on the images' device {images.device}, got {labels.device}"
            )
        check_binarize(binarize, threshold)
        self._images = images
        self._labels = labels
        self._binarize = binarize
        self._threshold = float(threshold)
        self._generator = generator
        self._static = self._threshold_mask(images) if binarize == "static" else None

    def _threshold_mask(self, images: Tensor) -> Tensor:
        # The seed compares float32 v / 255 against the threshold; that test is monotone
        # in v, so it equals v >= cut for the smallest such integer cut, and the mask is a
        # uint8 comparison instead of a float copy of the whole split.
        levels = torch.arange(256, dtype=torch.float32) / 255  # [256]
        cut = int((levels < self._threshold).sum())
        if cut > 255:
            return torch.zeros_like(images, dtype=torch.bool)
        return images >= cut  # [N, C, H, W] bool

    # ----------------------------------------------------------------- properties

    images = read_only("``uint8`` tensor ``[N, C, H, W]`` of raw pixel intensities "
                       "(do not modify).")
    labels = read_only("``int64`` tensor ``[N]`` of class labels.")
    binarize = read_only('The binarisation mode: ``None``, ``"static"`` or ``"dynamic"``.')
    threshold = read_only("The cut-off used by static binarisation.")
    generator = read_only("The default generator of dynamic binarisation "
                          "(``None``: torch's global one).")

    @property
    def device(self) -> torch.device:
        """The device the tensors (and so the batches) are on."""
        return self._images.device

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """The shape ``(C, H, W)`` of one image."""
        c, h, w = self._images.shape[1:]
        return (int(c), int(h), int(w))

    def __len__(self) -> int:
        """The number of images N."""
        return int(self._images.shape[0])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, image_shape={self.image_shape}, "
            f"binarize={self._binarize!r}, device={self.device})"
        )

    # ----------------------------------------------------------------- access

    def _process(self, idx: Any, generator: Optional[torch.Generator] = None) -> Tensor:
        """Model inputs (float32) for the images selected by ``idx``."""
        if self._static is not None:
            return self._static[idx].to(torch.float32)
        x = self._images[idx].to(torch.float32) / 255
        if self._binarize == "dynamic":
            x = _bernoulli(x, generator if generator is not None else self._generator)
        return x

    def __getitem__(self, idx: Any) -> Tuple[Tensor, Tensor]:
        """Returns ``(x, y)`` for an index, slice or index tensor.

        Args:
            idx: an int (then ``x`` is ``[C, H, W]`` and ``y`` a 0-d tensor), a slice, or
                an integer/boolean index tensor (then ``x`` is ``[b, C, H, W]``).

        Returns:
            ``x`` (float32, processed as :attr:`binarize` says) and ``y`` (int64).
        """
        if isinstance(idx, Tensor):
            idx = idx.to(self.device)
        return self._process(idx), self._labels[idx]

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: Optional[torch.Generator] = None,
        drop_last: bool = False,
    ) -> Iterator[Tuple[Tensor, Tensor]]:
        """Iterates once over the data in batches.

        Args:
            batch_size: the number of images b per batch.
            shuffle: visit the images in the order of a fresh ``torch.randperm``.
            generator: source of randomness for the permutation and for dynamic
                binarisation (``None``: torch's global generator for the permutation and
                :attr:`generator` for the draws).
            drop_last: leave out a last batch smaller than ``batch_size``.

        Yields:
            ``(x, y)``: float32 ``[b, C, H, W]`` and int64 ``[b]``, on :attr:`device`.

        Raises:
            ValueError: if ``batch_size`` is not a positive int.
        """
        # Validate now, not at the first next(), so the error points at the call.
        positive_int("batch_size", batch_size)
        order = None
        if shuffle:
            perm_device = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(len(self), generator=generator, device=perm_device)
            order = order.to(self.device)
        return self._iter_batches(batch_size, order, generator, drop_last)

    def _iter_batches(
        self,
        batch_size: int,
        order: Optional[Tensor],
        generator: Optional[torch.Generator],
        drop_last: bool,
    ) -> Iterator[Tuple[Tensor, Tensor]]:
        n = len(self)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                # A slice is a view: without shuffling no index copy is made at all.
                idx: Any = slice(start, min(start + batch_size, n))
            else:
                idx = order[start:start + batch_size]
            yield self._process(idx, generator), self._labels[idx]

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """The number of batches :meth:`batches` yields with these arguments.

        Raises:
            ValueError: if ``batch_size`` is not a positive int.
        """
        positive_int("batch_size", batch_size)
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    # ----------------------------------------------------------------- new data sets

    def _like(self, images: Tensor, labels: Tensor) -> "ImageData":
        return type(self)(images, labels, self._binarize, self._threshold, self._generator)

    def to(self, device: Union[str, torch.device]) -> "ImageData":
        """A new ImageData with the same images, labels and mode on ``device``."""
        return self._like(self._images.to(device), self._labels.to(device))

    def subset(self, indices: Union[Tensor, Sequence[int]]) -> "ImageData":
        """A new ImageData holding the images at ``indices`` (in that order).

        Args:
            indices: a 1-D integer index sequence or tensor, or a boolean mask ``[N]``.

        Raises:
            ValueError: if ``indices`` is not 1-D or not integer/boolean.
        """
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            pass
        elif idx.numel() == 0:
            idx = idx.to(torch.int64)
        elif idx.is_floating_point() or idx.is_complex():
            raise ValueError(f"indices must be integers or a boolean mask, got {idx.dtype}")
        else:
            idx = idx.to(torch.int64)  # torch would read a uint8 index as a mask
        if idx.dim() != 1:
            raise ValueError(f"indices must be 1-D, got shape {list(idx.shape)}")
        idx = idx.to(self.device)
        return self._like(self._images[idx], self._labels[idx])
