"""Tests for dpm_core/conditionals.py: the CPD nets over latents and the image models p(x|z).

Each CPD net is compared with the distribution built by hand from its own submodules
(``td.Independent(td.Normal(locs(h), scales(h)), 1)``, the summed binary cross-entropy,
``td.ContinuousBernoulli``); all comparisons are exact (``assert_close``).
"""

import functools

import pytest
import torch
import torch.distributions as td
import torch.nn.functional as F
from torch.testing import assert_close

from dpm_core.conditionals import BinarizedImageModel, ContinuousImageModel, GaussianCPDNet, MoGCPDNet
from dpm_core.networks import build_cnn_decoder, build_ffnn_decoder

NUM_INPUTS = 6
LATENT = 4
HEIGHT = WIDTH = 28
BATCH_SHAPES = [(4,), (3, 5)]

#: CPD nets over a latent vector: name -> builder from an outcome shape
LATENT_CPDS = {
    "gaussian": lambda shape: GaussianCPDNet(shape, NUM_INPUTS),
    "gaussian-hidden8": lambda shape: GaussianCPDNet(shape, NUM_INPUTS, hidden_size=8),
    "mog": lambda shape: MoGCPDNet(shape, NUM_INPUTS, hidden_size=8, num_components=3),
}
DECODERS = {
    "ffnn": functools.partial(build_ffnn_decoder, hidden_size=16),
    "cnn": functools.partial(build_cnn_decoder, hidden_size=16),
}
IMAGE_MODELS = {"binarized": BinarizedImageModel, "continuous": ContinuousImageModel}


def image_model(kind, decoder, device):
    return IMAGE_MODELS[kind](1, WIDTH, HEIGHT, LATENT, decoder_type=DECODERS[decoder]).to(device)


def image_data(kind, shape, device):
    """Binary pixels for the Bernoulli model, intensities in (0, 1) for the continuous one."""
    if kind == "binarized":
        return torch.randint(0, 2, shape, device=device).float()
    return torch.rand(shape, device=device).clamp(0.01, 0.99)


# ----------------------------------------------------------------------------- latent CPDs


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize("outcome_shape", [3, (2, 3)], ids=str)
@pytest.mark.parametrize("name", list(LATENT_CPDS))
def test_latent_cpd_shapes(name, outcome_shape, batch_shape, device):
    """Does the CPD net return batch_shape = inputs.shape[:-1], event_shape = outcome_shape, one log_prob each?"""
    net = LATENT_CPDS[name](outcome_shape).to(device)
    event = (outcome_shape,) if isinstance(outcome_shape, int) else outcome_shape
    q = net(torch.randn(batch_shape + (NUM_INPUTS,), device=device))
    assert q.batch_shape == batch_shape and q.event_shape == event
    z = q.sample((2,))
    assert z.shape == (2,) + batch_shape + event
    log_q = q.log_prob(z)
    assert log_q.shape == (2,) + batch_shape
    assert torch.isfinite(log_q).all()


@pytest.mark.parametrize("hidden_size", [None, 8])
def test_gaussian_cpd_equals_the_distribution_built_by_hand(hidden_size, device):
    """Is GaussianCPDNet(h) exactly Independent(Normal(locs(encoder(h)), scales(encoder(h))), 1)?"""
    net = GaussianCPDNet(LATENT, NUM_INPUTS, hidden_size=hidden_size).to(device)
    inputs = torch.randn(3, 5, NUM_INPUTS, device=device)
    h = net.encoder(inputs)
    expected = td.Independent(td.Normal(net.locs(h), net.scales(h)), 1)
    q = net(inputs)
    z = torch.randn(7, 3, 5, LATENT, device=device)
    assert_close(q.mean, expected.mean)
    assert_close(q.stddev, expected.stddev)
    assert_close(q.log_prob(z), expected.log_prob(z))


def test_mog_cpd_equals_the_mixture_built_by_hand(device):
    """Is MoGCPDNet(h) the mixture of its components with weights softmax(logits(h))?"""
    net = MoGCPDNet(LATENT, NUM_INPUTS, hidden_size=8, num_components=3).to(device)
    inputs = torch.randn(3, 5, NUM_INPUTS, device=device)
    h = net.encoder(inputs)
    z = torch.randn(7, 3, 5, LATENT, device=device)
    q = net(inputs)
    assert q.component_distribution.batch_shape == (3, 5, 3)
    log_w = torch.log_softmax(net.logits(h), dim=-1)  # [B, C]
    comps = td.Independent(td.Normal(net.locs(h), net.scales(h)), 1)  # batch [B, C]
    log_comp = comps.log_prob(z.unsqueeze(-2))  # [S, B, C]
    assert_close(q.log_prob(z), torch.logsumexp(log_w + log_comp, dim=-1))


@pytest.mark.parametrize("name", list(LATENT_CPDS))
def test_scales_stay_positive_for_very_negative_preactivations(name, device):
    """With the scale layer's pre-activations at -50, are the scales still > 0 and log_prob finite?"""
    net = LATENT_CPDS[name](LATENT).to(device)
    linear = net.scales[1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(-50.0)
    q = net(torch.randn(4, NUM_INPUTS, device=device))
    scales = q.component_distribution.stddev if name == "mog" else q.stddev
    assert (scales > 0).all()
    at_the_mode = q.component_distribution.mean[:, 0] if name == "mog" else q.mean
    assert torch.isfinite(q.log_prob(at_the_mode)).all()


@pytest.mark.parametrize("hidden_size", [-1, 2.5])
@pytest.mark.parametrize("cls", [GaussianCPDNet, MoGCPDNet])
def test_latent_cpd_rejects_bad_hidden_size(cls, hidden_size):
    """Is a hidden_size that is neither None/0 nor a positive int rejected with a ValueError naming it?"""
    with pytest.raises(ValueError, match="hidden_size"):
        cls(LATENT, NUM_INPUTS, hidden_size=hidden_size)


def test_mog_cpd_rejects_bad_num_components():
    """Is num_components=0 rejected with a ValueError naming it?"""
    with pytest.raises(ValueError, match="num_components"):
        MoGCPDNet(LATENT, NUM_INPUTS, num_components=0)


@pytest.mark.parametrize("cls", [GaussianCPDNet, MoGCPDNet])
def test_latent_cpd_rejects_bad_arguments(cls):
    """Are num_inputs=0, p_drop=1.5 and outcome_shape=0 rejected with ValueErrors naming them?"""
    with pytest.raises(ValueError, match="num_inputs"):
        cls(LATENT, 0)
    with pytest.raises(ValueError, match="p_drop"):
        cls(LATENT, NUM_INPUTS, p_drop=1.5)
    with pytest.raises(ValueError, match="outcome_shape"):
        cls(0, NUM_INPUTS)


# ----------------------------------------------------------------------------- image models


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("kind", list(IMAGE_MODELS))
def test_image_model_shapes(kind, decoder, batch_shape, device):
    """Does p(x|z) have batch_shape = z.shape[:-1], event_shape = (C, H, W) and one log_prob per z?"""
    net = image_model(kind, decoder, device)
    px = net(torch.randn(batch_shape + (LATENT,), device=device))
    assert px.batch_shape == batch_shape and px.event_shape == (1, HEIGHT, WIDTH)
    x = image_data(kind, batch_shape + (1, HEIGHT, WIDTH), device)
    log_px = px.log_prob(x)
    assert log_px.shape == batch_shape
    assert torch.isfinite(log_px).all()
    assert px.sample().shape == batch_shape + (1, HEIGHT, WIDTH)


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_binarized_log_prob_is_minus_the_binary_cross_entropy(decoder, device):
    """Does BinarizedImageModel's log_prob equal minus the BCE-with-logits of its decoder, summed over pixels?"""
    net = image_model("binarized", decoder, device)
    z = torch.randn(3, 5, LATENT, device=device)
    x = image_data("binarized", (3, 5, 1, HEIGHT, WIDTH), device)
    bce = F.binary_cross_entropy_with_logits(net.decoder(z), x, reduction="none")
    assert_close(net(z).log_prob(x), -bce.sum((-3, -2, -1)))


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_continuous_log_prob_is_the_continuous_bernoulli(decoder, device):
    """Does ContinuousImageModel's log_prob equal td.ContinuousBernoulli of its decoder's logits, summed over pixels?"""
    net = image_model("continuous", decoder, device)
    z = torch.randn(3, 5, LATENT, device=device)
    x = image_data("continuous", (3, 5, 1, HEIGHT, WIDTH), device)
    expected = td.ContinuousBernoulli(logits=net.decoder(z)).log_prob(x).sum((-3, -2, -1))
    assert_close(net(z).log_prob(x), expected)


@pytest.mark.parametrize("kind", list(IMAGE_MODELS))
def test_log_prob_broadcasts_one_image_over_many_codes(kind, device):
    """Does log p(x|z) for S codes and one batch of images equal the per-code values?"""
    net = image_model(kind, "ffnn", device)
    z = torch.randn(3, 4, LATENT, device=device)  # [S, B, K]
    x = image_data(kind, (4, 1, HEIGHT, WIDTH), device)  # [B, C, H, W]
    per_code = torch.stack([net(z[s]).log_prob(x) for s in range(3)])
    assert_close(net(z).log_prob(x), per_code)


@pytest.mark.parametrize("z_shape", [(4, LATENT + 1), (4, LATENT - 1), ()], ids=str)
@pytest.mark.parametrize("kind", list(IMAGE_MODELS))
def test_image_model_rejects_codes_of_the_wrong_size(kind, z_shape):
    """Is a z whose last dimension is not latent_size rejected with a ValueError?"""
    net = image_model(kind, "ffnn", "cpu")
    with pytest.raises(ValueError, match="z must have shape"):
        net(torch.randn(z_shape))


@pytest.mark.parametrize("argument", ["num_channels", "width", "height", "latent_size"])
def test_image_model_rejects_bad_sizes(argument):
    """Is a size that is not a positive int rejected with a ValueError naming the argument?"""
    kwargs = dict(num_channels=1, width=WIDTH, height=HEIGHT, latent_size=LATENT)
    kwargs[argument] = 0
    with pytest.raises(ValueError, match=argument):
        BinarizedImageModel(**kwargs)
