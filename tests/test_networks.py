"""Tests for dpm_core/networks.py: shape helpers, MySequential and the four network builders.

The builders are checked on a registry of image sizes (square MNIST-like, square 64x64 and
a non-square one) and of batch shapes; hidden sizes are kept small so the tests are fast.
"""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from dpm_core.networks import (
    FlattenImage,
    MySequential,
    ReshapeLast,
    build_cnn_decoder,
    build_cnn_encoder,
    build_ffnn_decoder,
    build_ffnn_encoder,
)

LATENT = 4
CHANNELS = 2
HIDDEN = 16
#: (height, width) of the images the builders are asked for: square, non-square, sizes that
#: are not 4 * 2**n (the decoder crops its overshoot) and sizes too small for a stride-2 stage
IMAGE_SIZES = [(28, 28), (64, 64), (28, 32), (30, 26), (6, 5)]
BATCH_SHAPES = [(5,), (3, 5)]

DECODERS = {"ffnn_decoder": build_ffnn_decoder, "cnn_decoder": build_cnn_decoder}
ENCODERS = {"ffnn_encoder": build_ffnn_encoder, "cnn_encoder": build_cnn_encoder}
BUILDERS = {**DECODERS, **ENCODERS}


def make_decoder(name, height, width):
    return DECODERS[name](LATENT, CHANNELS, width=width, height=height, hidden_size=HIDDEN)


def make_encoder(name, height, width):
    return ENCODERS[name](CHANNELS, width=width, height=height, output_size=HIDDEN)


# ----------------------------------------------------------------------------- helpers


def test_reshape_last_unfolds_the_last_dimension():
    """Does ReshapeLast((2, 3)) turn [..., 6] into [..., 2, 3] keeping the values in order?"""
    x = torch.randn(4, 5, 6)
    y = ReshapeLast((2, 3))(x)
    assert y.shape == (4, 5, 2, 3)
    assert_close(y, x.view(4, 5, 2, 3))


def test_flatten_image_flattens_the_last_three_dimensions():
    """Does FlattenImage turn batch + [C, H, W] into batch + [C*H*W], keeping the values in order?"""
    x = torch.randn(3, 5, 2, 4, 6)
    y = FlattenImage()(x)
    assert y.shape == (3, 5, 48)
    assert_close(y, x.reshape(3, 5, 48))
    assert FlattenImage()(torch.randn(2, 4, 6)).shape == (48,)


def test_flatten_image_rejects_a_matrix():
    """Is a 2-D tensor (no [C, H, W] event) rejected with a ValueError?"""
    with pytest.raises(ValueError, match="C, H, W"):
        FlattenImage()(torch.randn(4, 6))


@pytest.mark.parametrize("batch_shape", [(), (6,), (2, 3)], ids=str)
def test_my_sequential_equals_the_layers_applied_per_example(batch_shape, device):
    """Does MySequential(event_dims=3) give, for any batch shape, what its layers give one example at a time?"""
    layers = [nn.Conv2d(2, 3, kernel_size=3, padding=1), nn.ReLU(), nn.Flatten()]
    net = MySequential(*layers, event_dims=3).to(device)
    x = torch.randn(batch_shape + (2, 5, 4), device=device)
    out = net(x)
    flat = x.reshape(-1, 2, 5, 4)
    one_at_a_time = nn.Sequential(*layers)  # the same layer objects, in a plain Sequential
    expected = torch.cat([one_at_a_time(xi.unsqueeze(0)) for xi in flat])
    assert out.shape == batch_shape + (3 * 5 * 4,)
    assert_close(out.reshape(-1, 3 * 5 * 4), expected)


def test_my_sequential_rejects_inputs_smaller_than_the_event():
    """Does MySequential(event_dims=3) reject a 2-D input, and reject event_dims=0 at construction?"""
    with pytest.raises(ValueError, match="dimensions"):
        MySequential(nn.Identity(), event_dims=3)(torch.randn(4, 5))
    with pytest.raises(ValueError, match="event_dims"):
        MySequential(nn.Identity(), event_dims=0)


# ----------------------------------------------------------------------------- builders


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize("height, width", IMAGE_SIZES, ids=lambda s: str(s))
@pytest.mark.parametrize("name", list(DECODERS))
def test_decoder_output_shape(name, height, width, batch_shape, device):
    """Does the decoder map batch + [K] to finite batch + [C, H, W] logits on the device?"""
    net = make_decoder(name, height, width).to(device)
    out = net(torch.randn(batch_shape + (LATENT,), device=device))
    assert out.shape == batch_shape + (CHANNELS, height, width)
    assert out.device.type == device.type
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize("height, width", IMAGE_SIZES, ids=lambda s: str(s))
@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_output_shape(name, height, width, batch_shape, device):
    """Does the encoder map batch + [C, H, W] to finite batch + [output_size] features?"""
    net = make_encoder(name, height, width).to(device)
    out = net(torch.rand(batch_shape + (CHANNELS, height, width), device=device))
    assert out.shape == batch_shape + (HIDDEN,)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(DECODERS))
def test_decoder_treats_batch_elements_independently(name, device):
    """Is the decoder's output for a [3, 5] batch the same as for the 15 codes decoded as a [15] batch?"""
    net = make_decoder(name, 28, 32).to(device)
    z = torch.randn(3, 5, LATENT, device=device)
    assert_close(net(z).reshape(15, CHANNELS, 28, 32), net(z.reshape(15, LATENT)))


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_treats_batch_elements_independently(name, device):
    """Is the encoder's output for a [3, 5] batch the same as for the 15 images encoded as a [15] batch?"""
    net = make_encoder(name, 28, 32).to(device)
    x = torch.rand(3, 5, CHANNELS, 28, 32, device=device)
    assert_close(net(x).reshape(15, HIDDEN), net(x.reshape(15, CHANNELS, 28, 32)))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_gradients_reach_every_parameter(name, device):
    """Does backward on the output's sum give every parameter of the network a gradient?"""
    if name in DECODERS:
        net = make_decoder(name, 28, 28).to(device)
        inputs = torch.randn(3, 5, LATENT, device=device)
    else:
        net = make_encoder(name, 28, 28).to(device)
        inputs = torch.rand(3, 5, CHANNELS, 28, 28, device=device)
    net(inputs).sum().backward()
    params = dict(net.named_parameters())
    assert params
    for pname, param in params.items():
        assert param.grad is not None, pname


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("argument, value", [("latent_size", 0), ("num_channels", -1),
                                             ("hidden_size", 0), ("width", 0)])
@pytest.mark.parametrize("name", list(DECODERS))
def test_decoder_rejects_bad_sizes(name, argument, value):
    """Is a size that is not a positive int rejected with a ValueError naming the argument?"""
    kwargs = dict(latent_size=LATENT, num_channels=CHANNELS, width=8, height=8, hidden_size=HIDDEN)
    kwargs[argument] = value
    with pytest.raises(ValueError, match=argument):
        DECODERS[name](**kwargs)


@pytest.mark.parametrize("argument, value", [("num_channels", -1), ("output_size", 0),
                                             ("height", 2.5)])
@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_rejects_bad_sizes(name, argument, value):
    """Is a size that is not a positive int rejected with a ValueError naming the argument?"""
    kwargs = dict(num_channels=CHANNELS, width=8, height=8, output_size=HIDDEN)
    kwargs[argument] = value
    with pytest.raises(ValueError, match=argument):
        ENCODERS[name](**kwargs)


@pytest.mark.parametrize("p_drop", [1.5, -0.1, 1.0])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_builders_reject_bad_dropout_rate(name, p_drop):
    """Is a dropout rate outside [0, 1) rejected with a ValueError naming p_drop?"""
    first = (LATENT, CHANNELS) if name in DECODERS else (CHANNELS,)
    with pytest.raises(ValueError, match="p_drop"):
        BUILDERS[name](*first, width=8, height=8, p_drop=p_drop)
