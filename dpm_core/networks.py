"""Building blocks for encoders and decoders that accept structured batches.

Every network here maps a tensor with shape ``batch_shape + input_shape`` to
``batch_shape + output_shape`` for any ``batch_shape``: ``(B,)``, ``(S, B)``,
``(3, 5)``, or even ``()``. Linear layers already broadcast over leading
dimensions; convolutions do not, which is what :class:`MySequential` fixes.

The CNN builders choose their number of stride-2 stages from the image size,
so the same code serves 28x28 MNIST-style images and 64x64 resized ones.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .utils import positive_int, positive_ints, probability

__all__ = [
    "ReshapeLast",
    "FlattenImage",
    "CropImage",
    "MySequential",
    "build_ffnn_decoder",
    "build_cnn_decoder",
    "build_ffnn_encoder",
    "build_cnn_encoder",
]


class ReshapeLast(nn.Module):
    """Reshape the rightmost dimension of a tensor into ``shape``.

    Args:
        shape: the shape that the last dimension is unfolded into; its
            product must equal the size of that dimension.

    Example:
        >>> ReshapeLast((2, 3))(torch.zeros(5, 6)).shape
        torch.Size([5, 2, 3])
    """

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self._shape = tuple(int(s) for s in shape)

    def forward(self, input: Tensor) -> Tensor:
        return input.reshape(input.shape[:-1] + self._shape)

    def extra_repr(self) -> str:
        return f"shape={self._shape}"


class FlattenImage(nn.Module):
    """Flatten the three rightmost dimensions ``[C, H, W]`` into one ``[C*H*W]``."""

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() < 3:
            raise ValueError(
                f"FlattenImage expects a tensor with shape batch_shape + [C, H, W], "
                f"got shape {tuple(input.shape)}"
            )
        return input.reshape(input.shape[:-3] + (-1,))


class CropImage(nn.Module):
    """Crop the two rightmost dimensions to ``[height, width]`` (top-left anchored).

    Transposed convolutions double the spatial size, so decoders for sizes that
    are not ``base * 2**n`` overshoot by a few pixels; this trims them.
    """

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height = height
        self.width = width

    def forward(self, input: Tensor) -> Tensor:
        return input[..., : self.height, : self.width]

    def extra_repr(self) -> str:
        return f"height={self.height}, width={self.width}"


class MySequential(nn.Sequential):
    """An ``nn.Sequential`` that accepts any batch shape in front of the event.

    The ``event_dims`` rightmost dimensions are the input of one example; all
    dimensions before them are flattened into one batch dimension before the
    layers run and restored afterwards. This lets ``nn.Conv2d`` (which wants
    exactly ``[N, C, H, W]``) see inputs such as ``[S, B, C, H, W]``.

    Args:
        *args: the layers, as for ``nn.Sequential``.
        event_dims: how many rightmost dimensions form one input (1 for a
            latent vector, 3 for an image).
    """

    def __init__(self, *args: nn.Module, event_dims: int = 1):
        super().__init__(*args)
        self._event_dims = positive_int("event_dims", event_dims)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() < self._event_dims:
            raise ValueError(
                f"expected at least {self._event_dims} dimensions (the event), "
                f"got shape {tuple(input.shape)}"
            )
        split = input.dim() - self._event_dims
        batch_shape, event_shape = input.shape[:split], input.shape[split:]
        output = super().forward(input.reshape((-1,) + event_shape))
        return output.reshape(batch_shape + output.shape[1:])


def _num_stages(height: int, width: int, max_stages: int = 4) -> int:
    """How many stride-2 stages take an image down to a base of about 4 pixels."""
    smallest = min(height, width)
    if smallest < 8:
        return 0
    return min(max_stages, int(math.floor(math.log2(smallest / 4))))


def build_ffnn_decoder(
    latent_size: int,
    num_channels: int,
    width: int = 64,
    height: int = 64,
    hidden_size: int = 512,
    p_drop: float = 0.0,
) -> nn.Module:
    """A two-hidden-layer feed-forward decoder from ``[K]`` to ``[C, H, W]`` logits.

    Args:
        latent_size: K, the size of the latent code.
        num_channels: C, channels of the output image.
        width: W of the output image.
        height: H of the output image.
        hidden_size: width of the two hidden layers.
        p_drop: dropout rate before every linear layer.

    Returns:
        A module mapping ``batch_shape + [K]`` to ``batch_shape + [C, H, W]``.

    Example:
        >>> build_ffnn_decoder(10, 1, 28, 28)(torch.zeros(3, 5, 10)).shape
        torch.Size([3, 5, 1, 28, 28])
    """
    positive_ints(latent_size=latent_size, num_channels=num_channels,
                   width=width, height=height, hidden_size=hidden_size)
    p_drop = probability("p_drop", p_drop, include_one=False)
    return nn.Sequential(
        nn.Dropout(p_drop),
        nn.Linear(latent_size, hidden_size),
        nn.ReLU(),
        nn.Dropout(p_drop),
        nn.Linear(hidden_size, hidden_size),
        nn.ReLU(),
        nn.Dropout(p_drop),
        nn.Linear(hidden_size, num_channels * height * width),
        ReshapeLast((num_channels, height, width)),
    )


def build_cnn_decoder(
    latent_size: int,
    num_channels: int,
    width: int = 64,
    height: int = 64,
    hidden_size: int = 1024,
    p_drop: float = 0.0,
) -> nn.Module:
    """A transposed-CNN decoder from ``[K]`` to ``[C, H, W]`` logits, for any image size.

    A linear layer maps z to a small feature map of about 4x4 pixels (7x7 for
    28x28 images); ``n`` transposed convolutions with kernel 4, stride 2 and
    padding 1 each double its size, and a final crop trims any overshoot.
    ``n`` is at most 4 and is chosen from the image size.

    Args:
        latent_size: K, the size of the latent code.
        num_channels: C, channels of the output image.
        width: W of the output image (any size, e.g. 28 or 64).
        height: H of the output image.
        hidden_size: width of the hidden linear layer.
        p_drop: dropout rate before the linear layers.

    Returns:
        A module mapping ``batch_shape + [K]`` to ``batch_shape + [C, H, W]``.
    """
    positive_ints(latent_size=latent_size, num_channels=num_channels,
                   width=width, height=height, hidden_size=hidden_size)
    p_drop = probability("p_drop", p_drop, include_one=False)
    stages = _num_stages(height, width)
    base_h, base_w = math.ceil(height / 2**stages), math.ceil(width / 2**stages)
    # channels shrink by half at every stage: e.g. 256 -> 128 -> 64 -> 32 -> C
    channels = [32 * 2 ** (stages - 1 - i) for i in range(stages)] or [32]
    layers: list[nn.Module] = [
        nn.Dropout(p_drop),
        nn.Linear(latent_size, hidden_size),
        nn.ReLU(),
        nn.Dropout(p_drop),
        nn.Linear(hidden_size, channels[0] * base_h * base_w),
        nn.ReLU(),
        ReshapeLast((channels[0], base_h, base_w)),
    ]
    for i in range(stages):
        out = channels[i + 1] if i + 1 < stages else num_channels
        layers.append(nn.ConvTranspose2d(channels[i], out, kernel_size=4, stride=2, padding=1))
        if i + 1 < stages:
            layers.append(nn.ReLU())
    if stages == 0:
        layers.append(nn.Conv2d(channels[0], num_channels, kernel_size=3, padding=1))
    if (base_h * 2**stages, base_w * 2**stages) != (height, width):
        layers.append(CropImage(height, width))
    return MySequential(*layers, event_dims=1)


def build_ffnn_encoder(
    num_channels: int,
    width: int = 64,
    height: int = 64,
    output_size: int = 1024,
    p_drop: float = 0.0,
) -> nn.Module:
    """A feed-forward encoder from ``[C, H, W]`` images to ``[output_size]`` features.

    Args:
        num_channels: C of the input image.
        width: W of the input image.
        height: H of the input image.
        output_size: size of the encoding; the two hidden layers have half of it.
        p_drop: dropout rate before every linear layer.

    Returns:
        A module mapping ``batch_shape + [C, H, W]`` to ``batch_shape + [output_size]``.
    """
    positive_ints(num_channels=num_channels, width=width, height=height, output_size=output_size)
    p_drop = probability("p_drop", p_drop, include_one=False)
    hidden = max(1, output_size // 2)
    return nn.Sequential(
        FlattenImage(),
        nn.Dropout(p_drop),
        nn.Linear(num_channels * width * height, hidden),
        nn.ReLU(),
        nn.Dropout(p_drop),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(p_drop),
        nn.Linear(hidden, output_size),
    )


def build_cnn_encoder(
    num_channels: int,
    width: int = 64,
    height: int = 64,
    output_size: int = 1024,
    p_drop: float = 0.0,
) -> nn.Module:
    """A CNN encoder from ``[C, H, W]`` images to ``[output_size]`` features, for any size.

    Convolutions with kernel 4, stride 2 and padding 1 halve the image up to
    four times (32, 64, 128, 256 channels), and a linear layer maps the
    flattened feature map to ``output_size``.

    Args:
        num_channels: C of the input image.
        width: W of the input image (any size, e.g. 28 or 64).
        height: H of the input image.
        output_size: size of the encoding.
        p_drop: dropout rate before the linear layer.

    Returns:
        A module mapping ``batch_shape + [C, H, W]`` to ``batch_shape + [output_size]``.
    """
    positive_ints(num_channels=num_channels, width=width, height=height, output_size=output_size)
    p_drop = probability("p_drop", p_drop, include_one=False)
    stages = _num_stages(height, width)
    layers: list[nn.Module] = []
    in_channels, h, w = num_channels, height, width
    for i in range(stages):
        out_channels = 32 * 2**i
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1),
                   nn.LeakyReLU(0.2)]
        in_channels, h, w = out_channels, h // 2, w // 2
    layers += [
        FlattenImage(),
        nn.Dropout(p_drop),
        nn.Linear(in_channels * h * w, output_size),
    ]
    return MySequential(*layers, event_dims=3)
