"""Inference models q(z|x): an image encoder followed by a CPD net over the latent."""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch.distributions as td
from torch import Tensor, nn

from .conditionals import CPDNet
from .networks import build_ffnn_encoder
from .utils import positive_int

__all__ = ["InferenceModel"]


class InferenceModel(CPDNet):
    """q(z|x): encode an image into features h, then map h to a distribution over z.

    Args:
        cpd_net_type: the CPD net over z: a built one, whose input size is ``hidden_size``
            and whose outcome shape is ``(latent_size,)``; or a factory (a CPD net class or
            a ``functools.partial`` of one) called, after the encoder is built, as
            ``cpd_net_type(latent_size, num_inputs=hidden_size, hidden_size=cpd_hidden_size,
            p_drop=p_drop)``, e.g. :class:`GaussianCPDNet` or
            ``partial(MoGCPDNet, num_components=3)``.
        latent_size: K.
        num_channels: C of the images.
        width: W of the images.
        height: H of the images.
        hidden_size: size of the encoder's output features.
        p_drop: dropout rate of the encoder and the CPD net.
        encoder_type: :func:`build_ffnn_encoder` or :func:`build_cnn_encoder`.
        cpd_hidden_size: the hidden layer a factory's CPD net puts between the features
            and its parameter heads: None for the seed's 2K units, 0 for none.

    Raises:
        ValueError: if a size is not a positive int, or a built CPD net's outcome shape
            is not ``(latent_size,)``.

    Example:
        >>> q = InferenceModel(GaussianCPDNet, latent_size=10, width=28, height=28)
        >>> q(torch.zeros(5, 1, 28, 28)).batch_shape, q(torch.zeros(5, 1, 28, 28)).event_shape
        (torch.Size([5]), torch.Size([10]))
    """

    def __init__(self, cpd_net_type: Union[CPDNet, Callable[..., CPDNet]], latent_size: int,
                 num_channels: int = 1, width: int = 64, height: int = 64,
                 hidden_size: int = 1024, p_drop: float = 0.0,
                 encoder_type: Callable[..., nn.Module] = build_ffnn_encoder,
                 cpd_hidden_size: Optional[int] = None):
        positive_int("latent_size", latent_size)
        positive_int("hidden_size", hidden_size)
        if isinstance(cpd_net_type, CPDNet) and tuple(cpd_net_type.outcome_shape) != (latent_size,):
            raise ValueError(f"cpd_net_type must be a CPD net over z with outcome shape "
                             f"(latent_size,) = ({latent_size},), got outcome shape "
                             f"{tuple(cpd_net_type.outcome_shape)}")
        super().__init__(latent_size)
        self.latent_size = latent_size
        self.data_shape = (num_channels, height, width)
        self.encoder = encoder_type(num_channels=num_channels, width=width, height=height,
                                    output_size=hidden_size, p_drop=p_drop)
        if isinstance(cpd_net_type, CPDNet):
            self.cpd_net = cpd_net_type
        else:
            # the seed's design: a ReLU layer of 2K units in front of the parameter heads
            cpd_hidden_size = 2 * latent_size if cpd_hidden_size is None else cpd_hidden_size
            self.cpd_net = cpd_net_type(latent_size, num_inputs=hidden_size,
                                        hidden_size=cpd_hidden_size, p_drop=p_drop)

    def forward(self, x: Tensor) -> td.Distribution:
        """Return q(z|x) with batch_shape ``x.shape[:-3]`` and event_shape ``(K,)``."""
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.data_shape:
            raise ValueError(f"x must have shape batch_shape + {self.data_shape}, "
                             f"got {tuple(x.shape)}")
        return self.cpd_net(self.encoder(x))
