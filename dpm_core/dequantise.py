r"""Dequantisation: a density over grey levels as a model of the discrete pixels.

Stored images are discrete: each pixel is one of L levels k in {0, ..., L - 1} (L = 256
for 8-bit images). A density p over [0, 1]^D, such as the continuous Bernoulli, is no
model of such data, and its log-density is no log-probability: a density may exceed 1,
it depends on the units, and where data sit exactly on a point (FashionMNIST's black
background, 0 exactly) it may grow without bound. Uniform dequantisation (Uria et al.
2013 [1]; Theis et al. 2016 [2]) fills each level's bin of width 1 / L with noise,

    x~ = (k + u) / L,    u ~ U(0, 1)^D,

and trains the density on x~. The probability that the density gives to the bin of the
discrete image k is P(k) = L^{-D} E_u[p((k + u) / L)], so by Jensen's inequality

    log P(k) >= E_u[log p((k + u) / L)] - D log L,

and any lower bound on log p(x~) (an ELBO) minus D log L bounds the log-probability of
the discrete image from below: a number at most 0, comparable across models of the same
discrete data. It is reported in bits per dimension, -bound / (D ln 2); the uniform
model over the L levels gets log2 L (8 bits per dimension for L = 256).

Inside (0, 1) the continuous Bernoulli's density is bounded at every x~, but its maximum
over lambda at x~ close to 0 lies at logits of several hundred below 0, where torch's
``ContinuousBernoulli`` clamps lambda in its normaliser C(lambda) (it stops growing at
logits of about -16). :class:`DequantisedImageModel` takes the log-density of an image
as a function of the images and the logits instead.

References:
    [1] B. Uria, I. Murray, H. Larochelle. RNADE: The real-valued neural autoregressive
        density-estimator. NeurIPS 2013.
    [2] L. Theis, A. van den Oord, M. Bethge. A note on the evaluation of generative
        models. ICLR 2016.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.distributions as td
from torch import Tensor
from torch.distributions.utils import broadcast_all

from .conditionals import ContinuousImageModel
from .data import ImageData
from .utils import positive_int

__all__ = ["Dequantised", "ImageLogDensity", "DequantisedImageModel", "discrete_bound", "bits_per_dim"]

#: the grey levels of 8-bit images
LEVELS = 256
#: how close a dequantised pixel may come to 0 or 1
_EDGE = 2.0 ** -20


def discrete_bound(log_density: Union[float, Tensor], num_dims: int,
                   levels: int = LEVELS) -> Union[float, Tensor]:
    """A lower bound on log P(k) of the discrete image from one on log p(x~) of its dequantised one.

    Args:
        log_density: a lower bound on E_u[log p(x~)] (e.g. an ELBO on dequantised images),
            in nats, a number or a tensor of any shape.
        num_dims: D, the pixels of an image.
        levels: L, the levels of a pixel.

    Returns:
        ``log_density - D log L``, in nats, of the shape of ``log_density``.
    """
    positive_int("num_dims", num_dims)
    positive_int("levels", levels)
    return log_density - num_dims * math.log(levels)


def bits_per_dim(log_mass: Union[float, Tensor], num_dims: int) -> Union[float, Tensor]:
    """``-log_mass / (D ln 2)``: a log-probability of D discrete values in bits per value.

    Args:
        log_mass: log P in nats (e.g. :func:`discrete_bound`), a number or a tensor.
        num_dims: D.
    """
    positive_int("num_dims", num_dims)
    return -log_mass / (num_dims * math.log(2))


def _uniform(shape: torch.Size, device: torch.device,
             generator: Optional[torch.Generator]) -> Tensor:
    """U(0, 1) draws of ``shape`` on ``device``, also from a generator on another device."""
    if generator is None or generator.device == device:
        return torch.rand(shape, generator=generator, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


class Dequantised:
    """The images of an :class:`ImageData` as dequantised grey levels ``(k + u) / L``.

    Each batch draws fresh noise u ~ U(0, 1) for every pixel, so x~ lies strictly inside
    (0, 1) and an epoch never sees the same x~ twice. It offers what :func:`train_vae`
    and :func:`assess` use of an ``ImageData`` (``batches``, ``num_batches``, ``to``,
    ``subset``, ``len``).

    Args:
        data: the split, with ``binarize=None``; its ``uint8`` levels must be below ``levels``.
        levels: L, the number of levels of a pixel.
        generator: the default source of the noise (``None``: torch's global generator);
            a generator given to :meth:`batches` takes its place.

    Raises:
        ValueError: ``data`` is binarised, or ``levels`` is not a positive int.

    Example:
        >>> data = ImageData(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.arange(4))
        >>> x, _ = next(Dequantised(data).batches(4))
        >>> bool(((x > 0) & (x < 1 / 256)).all())
        True
    """

    def __init__(self, data: ImageData, levels: int = LEVELS,
                 generator: Optional[torch.Generator] = None) -> None:
        if data.binarize is not None:
            raise ValueError(f"data must hold grey levels (binarize=None), got binarize={data.binarize!r}")
        self.levels = positive_int("levels", levels)
        self.data = data
        self.generator = generator

    @property
    def device(self) -> torch.device:
        """The device of the images (and so of the batches)."""
        return self.data.device

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """The shape ``(C, H, W)`` of one image."""
        return self.data.image_shape

    def __len__(self) -> int:
        """The number of images N."""
        return len(self.data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.data!r}, levels={self.levels})"

    def dequantise(self, levels: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """``(k + u) / L`` for ``uint8`` levels k of any shape, float32 on their device.

        In float32, ``255 + u`` rounds to 256 for u within 2^-15 of 1 (and u may be 0), so
        the result is kept in [2^-20, 1 - 2^-20]: never exactly 0 or 1.
        """
        u = _uniform(levels.shape, levels.device, generator if generator is not None else self.generator)
        x = (levels.to(torch.float32) + u) / self.levels
        return x.clamp_(_EDGE, 1 - _EDGE)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: Optional[torch.Generator] = None,
                drop_last: bool = False) -> Iterator[Tuple[Tensor, Tensor]]:
        """Iterates once over the data in batches of dequantised images.

        Args:
            batch_size: b, the images per batch.
            shuffle: visit the images in the order of a fresh ``torch.randperm``.
            generator: source of the permutation and of the noise (``None``: torch's global
                generator for the permutation, :attr:`generator` for the noise).
            drop_last: leave out a last batch smaller than ``batch_size``.

        Yields:
            ``(x, y)``: float32 ``[b, C, H, W]`` in (0, 1) and int64 ``[b]``.
        """
        positive_int("batch_size", batch_size)
        n = len(self)
        order = None
        if shuffle:
            perm_device = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(n, generator=generator, device=perm_device).to(self.device)
        stop = n - n % batch_size if drop_last else n
        return self._iterate(batch_size, order, stop, generator)

    def _iterate(self, batch_size: int, order: Optional[Tensor], stop: int,
                 generator: Optional[torch.Generator]) -> Iterator[Tuple[Tensor, Tensor]]:
        for start in range(0, stop, batch_size):
            idx: Any = (slice(start, min(start + batch_size, len(self))) if order is None
                        else order[start:start + batch_size])
            yield self.dequantise(self.data.images[idx], generator), self.data.labels[idx]

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """The number of batches :meth:`batches` yields with these arguments."""
        return self.data.num_batches(batch_size, drop_last)

    def to(self, device: Union[str, torch.device]) -> "Dequantised":
        """The same images on ``device``, with the same levels and noise generator."""
        return type(self)(self.data.to(device), self.levels, self.generator)

    def subset(self, indices: Union[Tensor, Sequence[int]]) -> "Dequantised":
        """The images at ``indices`` (see :meth:`ImageData.subset`)."""
        return type(self)(self.data.subset(indices), self.levels, self.generator)


class ImageLogDensity(td.Independent):
    """Independent pixels whose log-density is a given function of the images and the logits.

    Wraps the ``Independent(ContinuousBernoulli)`` of an image model and replaces its
    ``log_prob`` by ``log_prob(x, logits)``, e.g. a continuous Bernoulli with an exact
    normaliser where torch clamps lambda; the mean, sampling and the rest stay the wrapped
    distribution's.

    Args:
        images: an ``Independent`` distribution over images whose base distribution has
            ``logits`` (batch_shape ``B...``, event_shape ``[C, H, W]``).
        log_prob: ``(x, logits) -> log p(x)``, from two tensors of shape
            ``batch_shape + [C, H, W]`` to one number per image, ``batch_shape``.

    Shapes:
        batch_shape and event_shape those of ``images``.
    """

    def __init__(self, images: td.Independent, log_prob: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__(images.base_dist, images.reinterpreted_batch_ndims)
        self.image_log_prob = log_prob

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ImageLogDensity, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.image_log_prob = self.image_log_prob
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        x, logits = broadcast_all(value, self.base_dist.logits)
        return self.image_log_prob(x, logits)


class DequantisedImageModel(ContinuousImageModel):
    """p(x~|z): :class:`ContinuousImageModel`'s pixels with a given log-density, for
    dequantised grey levels.

    Args:
        num_channels, width, height, latent_size, decoder_type, p_drop: as for
            :class:`ContinuousImageModel`.
        log_prob: ``(x, logits) -> log p(x)`` of images ``batch_shape + [C, H, W]``, one
            number per image (keyword only): e.g. the continuous Bernoulli with an exact
            normaliser, whose torch version clamps lambda beyond logits of about +-16.
    """

    def __init__(self, *args: Any, log_prob: Callable[[Tensor, Tensor], Tensor],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not callable(log_prob):
            raise ValueError(f"log_prob must be a function of (x, logits), got {log_prob!r}")
        self.image_log_prob = log_prob

    def forward(self, z: Tensor) -> td.Distribution:
        """Return :class:`ImageLogDensity` with batch_shape ``z.shape[:-1]`` and event_shape
        ``(C, H, W)``."""
        return ImageLogDensity(super().forward(z), self.image_log_prob)
