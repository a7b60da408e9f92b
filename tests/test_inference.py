"""Tests for dpm_core/inference.py: the inference model q(z|x).

Parametrised over the registries of CPD nets (Gaussian, a 3-component mixture), encoders
(FFNN, CNN), image sizes and devices.
"""

import functools

import pytest
import torch
import torch.distributions as td
from torch.testing import assert_close

from dpm_core.conditionals import GaussianCPDNet, MoGCPDNet
from dpm_core.inference import InferenceModel
from dpm_core.networks import build_cnn_encoder, build_ffnn_encoder

LATENT = 3
HIDDEN = 16

CPD_NETS = {
    "gaussian": GaussianCPDNet,
    "mog3": functools.partial(MoGCPDNet, num_components=3),
}
ENCODERS = {"ffnn": build_ffnn_encoder, "cnn": build_cnn_encoder}
IMAGE_SIZES = [(28, 28), (64, 64)]


def make_q(cpd, encoder, height=28, width=28, device="cpu"):
    return InferenceModel(CPD_NETS[cpd], LATENT, num_channels=1, width=width, height=height,
                          hidden_size=HIDDEN, encoder_type=ENCODERS[encoder]).to(device)


@pytest.mark.parametrize("batch_shape", [(4,), (2, 3)], ids=str)
@pytest.mark.parametrize("height, width", IMAGE_SIZES, ids=str)
@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("cpd", list(CPD_NETS))
def test_posterior_shapes(cpd, encoder, height, width, batch_shape, device):
    """Does q(z|x) have batch_shape = x.shape[:-3], event_shape = (K,) and a finite log_prob per x?"""
    q = make_q(cpd, encoder, height, width, device)
    qz = q(torch.rand(batch_shape + (1, height, width), device=device))
    assert qz.batch_shape == batch_shape and qz.event_shape == (LATENT,)
    z = qz.sample((2,))
    assert z.shape == (2,) + batch_shape + (LATENT,)
    log_q = qz.log_prob(z)
    assert log_q.shape == (2,) + batch_shape
    assert torch.isfinite(log_q).all()


@pytest.mark.parametrize("cpd, has_rsample", [("gaussian", True), ("mog3", False)])
def test_only_the_gaussian_posterior_is_reparameterisable(cpd, has_rsample):
    """Does the Gaussian q offer rsample (pathwise gradients to every parameter) and the mixture not?"""
    q = make_q(cpd, "ffnn")
    qz = q(torch.rand(4, 1, 28, 28))
    assert qz.has_rsample is has_rsample
    if has_rsample:
        qz.rsample((2,)).sum().backward()
        for name, param in q.named_parameters():
            assert param.grad is not None, name
    else:
        with pytest.raises(NotImplementedError):
            qz.rsample()


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_posterior_is_the_cpd_net_applied_to_the_encoding(encoder, device):
    """Is q(z|x) exactly cpd_net(encoder(x)), so the same x always gives the same q?"""
    q = make_q("gaussian", encoder, device=device)
    x = torch.rand(2, 3, 1, 28, 28, device=device)
    qz = q(x)
    expected = q.cpd_net(q.encoder(x))
    assert isinstance(qz, td.Independent)
    assert_close(qz.mean, expected.mean)
    assert_close(qz.stddev, expected.stddev)


@pytest.mark.parametrize("x_shape", [(4, 1, 28, 27), (4, 2, 28, 28), (28, 28), (4, 784)], ids=str)
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_rejects_images_of_the_wrong_shape(encoder, x_shape):
    """Is x whose last three dimensions are not (C, H, W) rejected with a ValueError?"""
    q = make_q("gaussian", encoder)
    with pytest.raises(ValueError, match="x must have shape"):
        q(torch.rand(x_shape))


@pytest.mark.parametrize("cpd", list(CPD_NETS))
def test_moves_to_the_device(cpd, device):
    """Does .to(device) move every parameter, so that q(z|x) and its samples are on the device?"""
    q = make_q(cpd, "cnn", device=device)
    assert all(p.device.type == device.type for p in q.parameters())
    qz = q(torch.rand(4, 1, 28, 28, device=device))
    assert qz.sample().device.type == device.type


@pytest.mark.parametrize("argument", ["latent_size", "num_channels", "width", "height",
                                      "hidden_size"])
def test_rejects_bad_sizes(argument):
    """Is a size of 0 rejected with a ValueError that names the argument the caller passed?"""
    kwargs = dict(latent_size=LATENT, num_channels=1, width=8, height=8, hidden_size=HIDDEN)
    kwargs[argument] = 0
    with pytest.raises(ValueError, match=argument):
        InferenceModel(GaussianCPDNet, **kwargs)
