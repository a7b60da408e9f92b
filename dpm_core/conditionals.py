"""Conditional probability distributions (CPDs) parameterised by networks.

A CPD net maps inputs with shape ``batch_shape + input_shape`` to a
``torch.distributions`` object with batch_shape ``batch_shape`` and event_shape
``outcome_shape``. The observation models p(x|z) and the variational
families q(z|x) of the course are all CPD nets.
"""

from __future__ import annotations

from typing import Callable

import math

import torch.distributions as td
from torch import Tensor, nn

from .networks import ReshapeLast, build_ffnn_decoder
from .utils import ShapeLike, positive_int, positive_ints, positive_shape, probability

__all__ = [
    "CPDNet",
    "GaussianCPDNet",
    "MoGCPDNet",
    "BinarizedImageModel",
    "ContinuousImageModel",
]


class CPDNet(nn.Module):
    """Base class of networks that map inputs to a distribution over outcomes.

    Args:
        outcome_shape: the shape of one outcome; an int ``k`` means ``(k,)``.
    """

    def __init__(self, outcome_shape: ShapeLike):
        super().__init__()
        self.outcome_shape = positive_shape("outcome_shape", outcome_shape)

    def forward(self, inputs: Tensor) -> td.Distribution:
        """Return the distribution predicted from ``inputs`` (shape ``batch_shape + input_shape``)."""
        raise NotImplementedError("subclasses of CPDNet implement forward(inputs)")


def _hidden_encoder(num_inputs: int, hidden_size: int | None, p_drop: float) -> tuple[nn.Module, int]:
    """An optional ReLU hidden layer in front of the parameter heads."""
    if hidden_size is not None and hidden_size != 0:
        positive_int("hidden_size", hidden_size)
    if hidden_size:
        return nn.Sequential(nn.Dropout(p_drop), nn.Linear(num_inputs, hidden_size), nn.ReLU()), hidden_size
    return nn.Identity(), num_inputs


class GaussianCPDNet(CPDNet):
    """A product of Gaussians (mean field): q(z|h) = prod_k N(z_k | mu_k(h), sigma_k(h)^2).

    The scales pass through a softplus so that they are positive.

    Args:
        outcome_shape: the outcome's shape, e.g. ``K``.
        num_inputs: size of the rightmost dimension of the inputs.
        hidden_size: size of an optional ReLU hidden layer (``None`` or 0 for none).
        p_drop: dropout rate before every linear layer.
    """

    def __init__(self, outcome_shape: ShapeLike, num_inputs: int,
                 hidden_size: int | None = None, p_drop: float = 0.0):
        super().__init__(outcome_shape)
        positive_int("num_inputs", num_inputs)
        p_drop = probability("p_drop", p_drop, include_one=False)
        num_outputs = math.prod(self.outcome_shape)
        self.encoder, hidden = _hidden_encoder(num_inputs, hidden_size, p_drop)
        self.locs = nn.Sequential(
            nn.Dropout(p_drop), nn.Linear(hidden, num_outputs), ReshapeLast(self.outcome_shape))
        self.scales = nn.Sequential(
            nn.Dropout(p_drop), nn.Linear(hidden, num_outputs), nn.Softplus(),
            ReshapeLast(self.outcome_shape))

    def forward(self, inputs: Tensor) -> td.Distribution:
        """Return ``Independent(Normal)`` with batch_shape ``inputs.shape[:-1]`` and
        event_shape ``outcome_shape``."""
        h = self.encoder(inputs)
        return td.Independent(td.Normal(loc=self.locs(h), scale=self.scales(h)),
                              len(self.outcome_shape))


class MoGCPDNet(CPDNet):
    """A mixture of M mean-field Gaussians whose weights, locations and scales depend on the input.

    The mixture has no ``rsample``: NVIL trains it with the score-function estimator, or,
    with ``estimator="mixture"``, with the score function for the weights only and
    pathwise gradients for the components.

    Args:
        outcome_shape: the outcome's shape, e.g. ``K``.
        num_inputs: size of the rightmost dimension of the inputs.
        hidden_size: size of an optional ReLU hidden layer (``None`` or 0 for none).
        p_drop: dropout rate before every linear layer.
        num_components: M, the number of components.
    """

    def __init__(self, outcome_shape: ShapeLike, num_inputs: int, hidden_size: int | None = None,
                 p_drop: float = 0.0, num_components: int = 2):
        super().__init__(outcome_shape)
        positive_int("num_inputs", num_inputs)
        positive_int("num_components", num_components)
        p_drop = probability("p_drop", p_drop, include_one=False)
        self.num_components = num_components
        num_outputs = num_components * math.prod(self.outcome_shape)
        comp_shape = (num_components,) + self.outcome_shape
        self.encoder, hidden = _hidden_encoder(num_inputs, hidden_size, p_drop)
        self.locs = nn.Sequential(
            nn.Dropout(p_drop), nn.Linear(hidden, num_outputs), ReshapeLast(comp_shape))
        self.scales = nn.Sequential(
            nn.Dropout(p_drop), nn.Linear(hidden, num_outputs), nn.Softplus(),
            ReshapeLast(comp_shape))
        self.logits = nn.Sequential(
            nn.Dropout(p_drop), nn.Linear(hidden, num_components), ReshapeLast((num_components,)))

    def forward(self, inputs: Tensor) -> td.Distribution:
        """Return ``MixtureSameFamily`` with batch_shape ``inputs.shape[:-1]`` and
        event_shape ``outcome_shape``; its components have batch_shape
        ``inputs.shape[:-1] + (M,)``."""
        h = self.encoder(inputs)
        comps = td.Independent(td.Normal(loc=self.locs(h), scale=self.scales(h)),
                               len(self.outcome_shape))
        return td.MixtureSameFamily(td.Categorical(logits=self.logits(h)), comps)


class _ImageModel(CPDNet):
    """Shared constructor of the image observation models: a decoder to per-pixel logits."""

    def __init__(self, num_channels: int, width: int, height: int, latent_size: int,
                 decoder_type: Callable[..., nn.Module] = build_ffnn_decoder, p_drop: float = 0.0):
        positive_ints(num_channels=num_channels, width=width,
                       height=height, latent_size=latent_size)
        super().__init__((num_channels, height, width))
        self.latent_size = latent_size
        self.decoder = decoder_type(latent_size=latent_size, num_channels=num_channels,
                                    width=width, height=height, p_drop=p_drop)

    def _logits(self, z: Tensor) -> Tensor:
        if z.dim() == 0 or z.shape[-1] != self.latent_size:
            raise ValueError(f"z must have shape batch_shape + ({self.latent_size},), "
                             f"got {tuple(z.shape)}")
        return self.decoder(z)  # batch_shape + [C, H, W]


class BinarizedImageModel(_ImageModel):
    """p(x|z) = prod_{c,h,w} Bernoulli(x_{chw} | sigmoid(f(z)_{chw})) for binary images.

    Args:
        num_channels: C.
        width: W.
        height: H.
        latent_size: K.
        decoder_type: a builder such as :func:`build_ffnn_decoder` or
            :func:`build_cnn_decoder` (use ``functools.partial`` to set its sizes).
        p_drop: dropout rate of the decoder.
    """

    def forward(self, z: Tensor) -> td.Distribution:
        """Return ``Independent(Bernoulli)`` with batch_shape ``z.shape[:-1]`` and
        event_shape ``(C, H, W)``."""
        return td.Independent(td.Bernoulli(logits=self._logits(z)), len(self.outcome_shape))


class ContinuousImageModel(_ImageModel):
    """p(x|z) = prod_{c,h,w} ContinuousBernoulli(x_{chw} | f(z)_{chw}) for intensities in [0, 1].

    The continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019) is the properly
    normalised density on [0, 1] that the Bernoulli likelihood of grey pixels
    silently assumes.

    Args:
        num_channels, width, height, latent_size, decoder_type, p_drop: as for
            :class:`BinarizedImageModel`.
    """

    def forward(self, z: Tensor) -> td.Distribution:
        """Return ``Independent(ContinuousBernoulli)`` with batch_shape ``z.shape[:-1]`` and
        event_shape ``(C, H, W)``."""
        return td.Independent(td.ContinuousBernoulli(logits=self._logits(z)),
                              len(self.outcome_shape))
