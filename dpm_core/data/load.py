"""Loading a data set from its IDX files as train, dev and test splits."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..utils import non_negative_int
from .dataset import ImageData, check_binarize
from .files import PathLike, _write_cache, find_data_files, idx_shape, read_idx, resized_cache_path
from .resize import resize_shape, resize_uint8

__all__ = ["DataSplits", "load_data", "load_fashion_mnist", "load_mnist", "cache_resized"]


class DataSplits(NamedTuple):
    """The three splits made by :func:`load_data`; unpacks as ``train, dev, test``.

    Attributes:
        train: the training images less the dev set (59000 for FashionMNIST).
        dev: a held-out part of the training images for model selection (1000).
        test: the official test images (10000).
    """

    train: ImageData
    dev: ImageData
    test: ImageData


def _read_split(image_file: Path, label_file: Path) -> Tuple[Tensor, Tensor]:
    images = read_idx(image_file)
    labels = read_idx(label_file)
    if images.dim() != 3:
        raise ValueError(
            f"{image_file}: an images file must hold [N, H, W], got shape {list(images.shape)}"
        )
    if labels.dim() != 1:
        raise ValueError(
            f"{label_file}: a labels file must hold [N], got shape {list(labels.shape)}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{label_file}: expected {images.shape[0]} labels (one per image in "
            f"{image_file.name}), got {labels.shape[0]}"
        )
    return images.unsqueeze(1), labels.to(torch.int64)  # [N, 1, H, W], [N]


def load_data(
    name: str = "fashion-mnist",
    root: Optional[PathLike] = None,
    *,
    binarize: Optional[str] = "static",
    threshold: float = 0.5,
    resize: Union[None, int, Tuple[int, int]] = None,
    dev_size: int = 1000,
    seed: int = 42,
    device: Union[str, torch.device] = "cpu",
    download: bool = True,
    system_dirs: Optional[Sequence[PathLike]] = None,
) -> DataSplits:
    """Loads a data set as train, dev and test :class:`ImageData` splits.

    The official training images are split at random (``torch.randperm`` with a
    generator seeded by ``seed``) into ``train`` (N - dev_size images) and ``dev``
    (dev_size images); both keep the file order. The resize, if any, is done once, here,
    on the whole ``uint8`` tensor (bilinear, no antialiasing, rounded back to ``uint8``).

    Args:
        name: ``"fashion-mnist"`` or ``"mnist"`` (see :func:`find_data_files`).
        root: a directory to search first (see :func:`find_data_files`).
        binarize: ``None``, ``"static"`` or ``"dynamic"`` (see :class:`ImageData`).
        threshold: the cut-off of static binarisation.
        resize: ``None``; an int, the new length of the shorter edge (as torchvision's
            ``Resize(64)``: 28x28 becomes 64x64); or a pair ``(H, W)``.
        dev_size: how many training images to hold out, ``0 <= dev_size < N``.
        seed: seed of the train/dev split.
        device: where the tensors (and so the batches) live.
        download: passed to :func:`find_data_files`.
        system_dirs: passed to :func:`find_data_files`.

    Returns:
        ``DataSplits(train, dev, test)``, images ``[N, 1, H, W]``.

    Raises:
        ValueError: for an invalid argument or a malformed file.
        RuntimeError: if the files cannot be found (see :func:`find_data_files`).

    Example:
        >>> train, dev, test = load_data(resize=64)  # doctest: +SKIP
        >>> len(train), len(dev), len(test), train.image_shape  # doctest: +SKIP
        (59000, 1000, 10000, (1, 64, 64))
    """
    check_binarize(binarize, threshold)
    non_negative_int("dev_size", dev_size)
    if resize is not None:
        resize_shape(resize, 28, 28)  # validate before reading anything
    files = find_data_files(name, root, download=download, system_dirs=system_dirs)

    train_x, train_y = _read_split(files["train_images"], files["train_labels"])
    test_x, test_y = _read_split(files["test_images"], files["test_labels"])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(
            f"{files['test_images']}: test images must have the training images' shape "
            f"{list(train_x.shape[2:])}, got {list(test_x.shape[2:])}"
        )
    n = train_x.shape[0]
    if dev_size >= n:
        raise ValueError(
            f"dev_size must be smaller than the number of training images {n} "
            f"(0 <= dev_size < {n}), got {dev_size}"
        )

    train_x, train_y = train_x.to(device), train_y.to(device)
    test_x, test_y = test_x.to(device), test_y.to(device)
    if resize is not None:
        size = resize_shape(resize, train_x.shape[2], train_x.shape[3])
        train_x = _resized(files["train_images"], train_x, size)
        test_x = _resized(files["test_images"], test_x, size)

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_idx = perm[: n - dev_size].sort().values.to(train_x.device)
    dev_idx = perm[n - dev_size:].sort().values.to(train_x.device)

    def make(images: Tensor, labels: Tensor) -> ImageData:
        return ImageData(images, labels, binarize=binarize, threshold=threshold)

    return DataSplits(
        train=make(train_x[train_idx], train_y[train_idx]),
        dev=make(train_x[dev_idx], train_y[dev_idx]),
        test=make(test_x, test_y),
    )


def _stored(cached: Optional[Path], shape: Tuple[int, ...]) -> bool:
    """Whether ``cached`` holds exactly the bytes of a ``uint8`` tensor of ``shape``."""
    return cached is not None and cached.is_file() and cached.stat().st_size == math.prod(shape)


def _resized(path: Path, images: Tensor, size: Tuple[int, int]) -> Tensor:
    """``images`` resized to ``size``: the cached copy when one of the right size is there."""
    cached = resized_cache_path(path, size)
    shape = (*images.shape[:2], *size)
    if _stored(cached, shape):
        stored = torch.from_file(str(cached), shared=False, size=math.prod(shape), dtype=torch.uint8)
        return stored.reshape(shape).to(images.device)
    return resize_uint8(images, size)


def cache_resized(name: str = "fashion-mnist", resize: Union[int, Tuple[int, int]] = 64,
                  root: Optional[PathLike] = None) -> list:
    """Write the resized copies of a data set's images that :func:`load_data` reads (see
    :func:`~dpm_core.data.files.resized_cache_path`), unless they are there; their paths.

    Resizing on the CPU gives the same bytes as :func:`load_data` computes without a copy.
    """
    files = find_data_files(name, root, download=False)
    written = []
    for key in ("train_images", "test_images"):
        N, H, W = idx_shape(files[key])  # the header only: the copy is usually there already
        size = resize_shape(resize, H, W)
        cached = resized_cache_path(files[key], size)
        if cached is None:
            continue
        if not _stored(cached, (N, 1, *size)):
            images = read_idx(files[key]).unsqueeze(1)  # [N, 1, H, W]
            _write_cache(cached, resize_uint8(images, size).numpy().tobytes())
        written.append(cached)
    return written


def load_fashion_mnist(root: Optional[PathLike] = None, **kwargs: Any) -> DataSplits:
    """``load_data("fashion-mnist", root, **kwargs)``."""
    return load_data("fashion-mnist", root, **kwargs)


def load_mnist(root: Optional[PathLike] = None, **kwargs: Any) -> DataSplits:
    """``load_data("mnist", root, **kwargs)``."""
    return load_data("mnist", root, **kwargs)
