"""Tests of dpm_core.dequantise: dequantised batches, image models with a given log-density,
and the bound on the discrete log-probability in bits per dimension."""

import math

import pytest
import torch
import torch.distributions as td

from dpm_core import ImageData
from dpm_core.dequantise import Dequantised, DequantisedImageModel, ImageLogDensity, bits_per_dim, discrete_bound


def exact_log_normaliser(logits):
    """log C(sigmoid(l)) = log(l / tanh(l / 2)), with its series log 2 + l^2 / 12 near 0."""
    a = logits.abs()
    small = a < 1e-2
    safe = torch.where(small, torch.ones_like(a), a)
    return torch.where(small, math.log(2.0) + a.pow(2) / 12, safe.log() - torch.tanh(safe / 2).log())


def exact_log_density(x, logits):
    """The continuous Bernoulli's log-density of each pixel, with the exact normaliser."""
    return x * logits - torch.nn.functional.softplus(logits) + exact_log_normaliser(logits)


def images_of(logits, ndims=0):
    """Independent continuous Bernoulli pixels of ``logits``, scored with the exact normaliser."""
    if ndims == 0:
        return ImageLogDensity(td.Independent(td.ContinuousBernoulli(logits=logits), 0), exact_log_density)
    return ImageLogDensity(td.Independent(td.ContinuousBernoulli(logits=logits), ndims),
                           lambda x, l: exact_log_density(x, l).sum(tuple(range(-ndims, 0))))


@pytest.fixture
def split():
    levels = torch.tensor([0, 1, 128, 254, 255], dtype=torch.uint8)
    images = levels.repeat(12).reshape(12, 1, 1, 5)  # [12, 1, 1, 5], every level in every image
    return ImageData(images, torch.arange(12))


def test_batches_stay_in_the_bins_of_their_levels(split):
    """Does every dequantised pixel lie strictly inside the bin of its level, (k, k + 1) / 256?"""
    xs = [x for x, _ in Dequantised(split).batches(5)]
    x = torch.cat(xs)  # [12, 1, 1, 5]
    assert x.dtype == torch.float32 and x.shape == (12, 1, 1, 5)
    assert bool(((x > 0) & (x < 1)).all())
    assert torch.equal((x * 256).floor().clamp(max=255).to(torch.uint8), split.images)


def test_noise_is_fresh_for_every_batch_and_reproducible_with_a_generator(split):
    """Are two passes different, and two passes from equally seeded generators the same?"""
    data = Dequantised(split)
    first, second = next(data.batches(12))[0], next(data.batches(12))[0]
    assert not torch.equal(first, second)
    seeded = [next(Dequantised(split, generator=torch.Generator().manual_seed(3)).batches(12))[0]
              for _ in range(2)]
    assert torch.equal(*seeded)
    shuffled = [next(data.batches(12, shuffle=True, generator=torch.Generator().manual_seed(4)))
                for _ in range(2)]
    assert torch.equal(shuffled[0][0], shuffled[1][0]) and torch.equal(shuffled[0][1], shuffled[1][1])


def test_it_offers_what_train_vae_uses(split):
    """Do len, num_batches, subset, to and image_shape follow the wrapped split?"""
    data = Dequantised(split, generator=torch.Generator().manual_seed(0))
    assert len(data) == 12 and data.num_batches(5) == 3 and data.num_batches(5, drop_last=True) == 2
    assert len(list(data.batches(5, drop_last=True))) == 2
    part = data.subset([2, 7])
    assert isinstance(part, Dequantised) and len(part) == 2 and part.generator is data.generator
    assert torch.equal(next(part.batches(2))[1], torch.tensor([2, 7]))
    assert data.to("cpu").image_shape == (1, 1, 5) and data.device == torch.device("cpu")


def test_refuses_binarised_data_and_bad_levels(split):
    """Does it refuse a binarised split and a level count that is not a positive int?"""
    binary = ImageData(split.images, split.labels, binarize="static")
    with pytest.raises(ValueError, match="binarize"):
        Dequantised(binary)
    with pytest.raises(ValueError, match="levels"):
        Dequantised(split, levels=0)


def test_the_uniform_density_costs_log2_levels_bits():
    """Does log p = 0 (the uniform density on [0, 1]^D) give log2 L bits per dimension?"""
    assert bits_per_dim(discrete_bound(0.0, 784), 784) == pytest.approx(8.0)
    assert bits_per_dim(discrete_bound(torch.zeros(3), 10, levels=16), 10) == pytest.approx(4.0)


@pytest.mark.parametrize("logit", [-300.0, -3.0, 0.5, 40.0])
def test_the_bound_lies_below_the_mass_of_the_bin(logit):
    """Is E_u[log p((k + u) / L)] - log L at most log P(k), the density integrated over the bin?"""
    l = torch.tensor(logit, dtype=torch.float64)
    cb = images_of(l)
    for k in (0, 37, 255):
        grid = (k + torch.linspace(0, 1, 20001, dtype=torch.float64)) / 256  # the bin
        log_density = cb.log_prob(grid)
        mass = torch.trapezoid(log_density.exp(), grid)
        bound = discrete_bound(256 * torch.trapezoid(log_density, grid), 1)  # E_u[log p] - log 256
        assert bound <= mass.log() + 1e-9


def test_the_given_log_density_is_a_density_where_torchs_is_not():
    """Does the exact continuous Bernoulli integrate to 1 at logit -100, where torch's does not?"""
    x = torch.linspace(0, 1, 200001, dtype=torch.float64)
    logits = torch.tensor([-100.0, -2.0, 3.0])[:, None]  # [3, 1]
    ours = images_of(logits).log_prob(x.float())  # [3, 200001]
    mass = torch.trapezoid(ours.double().exp(), x, dim=-1)
    torch.testing.assert_close(mass, torch.ones(3, dtype=torch.float64), rtol=2e-3, atol=2e-3)
    torchs = td.ContinuousBernoulli(logits=logits).log_prob(x.float())
    torch.testing.assert_close(ours[1:], torchs[1:], rtol=1e-5, atol=1e-4)  # moderate logits: the same
    assert torch.trapezoid(torchs[0].double().exp(), x) < 0.5  # clamped lambda: mass missing


def test_expand_keeps_the_log_density():
    """Does an expanded distribution still use the given log-density, one number per image?"""
    images = images_of(torch.full((1, 1, 2, 2), -50.0), ndims=3).expand((4,))
    assert isinstance(images, ImageLogDensity) and images.batch_shape == (4,)
    assert images.event_shape == (1, 2, 2)
    torch.testing.assert_close(images.log_prob(torch.zeros(4, 1, 2, 2)), torch.full((4,), 4 * math.log(50.0)))


def test_image_model_scores_with_the_given_log_density():
    """Does DequantisedImageModel give one log-density per code, the given function's, also for
    images that broadcast against several draws of z?"""
    seen = []

    def log_prob(x, logits):
        seen.append((x.shape, logits.shape))
        return exact_log_density(x, logits).sum((-3, -2, -1))

    model = DequantisedImageModel(1, 4, 3, 2, log_prob=log_prob)
    px_z = model(torch.randn(5, 6, 2))  # [S, B, K]
    assert px_z.batch_shape == (5, 6) and px_z.event_shape == (1, 3, 4)
    x = torch.rand(6, 1, 3, 4)  # [B, C, H, W]
    logits = model.decoder(torch.zeros(2)).detach()
    assert px_z.log_prob(x).shape == (5, 6) and seen[-1] == ((5, 6, 1, 3, 4), (5, 6, 1, 3, 4))
    one = model(torch.zeros(2)).log_prob(x[0])
    torch.testing.assert_close(one, exact_log_density(x[0], logits).sum())
    assert px_z.mean.shape == (5, 6, 1, 3, 4)  # torch's continuous Bernoulli's mean
    with pytest.raises(ValueError, match="log_prob"):
        DequantisedImageModel(1, 4, 3, 2, log_prob=None)
