"""Tests for dpm_core/joint.py: the joint distribution p(z, x) = p(z) p(x|z).

Exact answers come from a model small enough to enumerate: a categorical prior over
``C = 4`` one-hot codes (with unequal prior weights) and a Bernoulli decoder of 2x3 binary
images, so there are ``2**6 = 64`` possible images. For it we compute by hand, with a
Python loop over the four codes, log p(x|c), log p(x) = log sum_c p(c) p(x|c) and
p(c|x), and we can sum p(x) over the whole data space.

Statistical policy (the Monte Carlo bound ``naive_lowerbound``): seed ``SEED``, ``NUM_SAMPLES``
prior draws, and a tolerance of ``NUM_SE`` standard errors ``sd_p(c)[log p(x|c)] / sqrt(S)``,
the standard deviation being exact (computed by enumeration).
"""

import functools
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from dpm_core.conditionals import BinarizedImageModel
from dpm_core.joint import JointDistribution, sample_chunks
from dpm_core.networks import build_ffnn_decoder
from dpm_core.priors import CategoricalPriorNet, GaussianPriorNet

SEED = 0
NUM_SAMPLES = 2000
NUM_SE = 5.0

C = 4  # categories of the finite prior
HEIGHT, WIDTH = 2, 3
EVENT = (1, HEIGHT, WIDTH)
ENUMERATE = lambda p: p.enumerate_support()  # noqa: E731
DECODER = functools.partial(build_ffnn_decoder, hidden_size=16)
BATCH_SHAPES = [(4,), (2, 3)]


def all_binary_images(device) -> torch.Tensor:
    """The 64 binary 2x3 images, [64, 1, 2, 3]."""
    pixels = torch.tensor(list(itertools.product([0.0, 1.0], repeat=HEIGHT * WIDTH)), device=device)
    return pixels.view(-1, *EVENT)


@pytest.fixture
def finite_model(device) -> JointDistribution:
    """p(c) p(x|c) with unequal prior weights and a decoder whose outputs vary with c."""
    prior = CategoricalPriorNet(C)
    decoder = BinarizedImageModel(1, WIDTH, HEIGHT, latent_size=C, decoder_type=DECODER)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.3, -0.5, 1.0, 0.0]))
        for param in decoder.parameters():
            param.normal_(0.0, 0.7)
    return JointDistribution(prior, decoder).to(device).eval()


def images(batch_shape, device) -> torch.Tensor:
    """Distinct binary images with the given batch shape."""
    n = math.prod(batch_shape)
    index = torch.randperm(64)[:n].to(device)
    return all_binary_images(device)[index].view(batch_shape + EVENT)


def hand_log_terms(model, x):
    """By a loop over the codes c: (log p(c), log p(x|c)), each [C] + batch_shape."""
    batch_shape = x.shape[:-3]
    log_prior = torch.log_softmax(model.prior_net.logits, dim=0)
    log_lik = []
    for c in range(C):
        z = F.one_hot(torch.tensor(c), C).float().to(x.device).expand(batch_shape + (C,))
        logits = model.cpd_net.decoder(z)
        # log Bernoulli(x | sigmoid(l)) = x l - log(1 + e^l)
        log_lik.append((x * logits - F.softplus(logits)).sum((-3, -2, -1)))
    log_lik = torch.stack(log_lik)  # [C] + batch_shape
    return log_prior.view((C,) + (1,) * len(batch_shape)).expand_as(log_lik), log_lik


@pytest.fixture
def gaussian_model(device) -> JointDistribution:
    """N(0, I) prior over K = 3 and a Bernoulli decoder of 1x4x5 images."""
    return JointDistribution(
        GaussianPriorNet(3), BinarizedImageModel(1, 5, 4, latent_size=3, decoder_type=DECODER)
    ).to(device).eval()


# ----------------------------------------------------------------------------- sampling, log_prob


def test_sample_shapes(gaussian_model, device):
    """Does sample((3, 5)) give z [3, 5, K] and binary x [3, 5, C, H, W] on the device?"""
    z, x = gaussian_model.sample((3, 5))
    assert z.shape == (3, 5, 3) and x.shape == (3, 5, 1, 4, 5)
    assert z.device.type == x.device.type == device.type
    assert ((x == 0) | (x == 1)).all()


def test_log_prob_is_prior_plus_likelihood(gaussian_model, device):
    """Is log p(z, x) = log N(z | 0, I) + sum of log Bernoulli(x | sigmoid(decoder(z))), computed directly?"""
    z, x = gaussian_model.sample((3, 5))
    log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    logits = gaussian_model.cpd_net.decoder(z)
    log_px_z = (x * logits - F.softplus(logits)).sum((-3, -2, -1))
    assert_close(gaussian_model.log_prob(z, x), log_pz + log_px_z)


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
def test_naive_lowerbound_shape(gaussian_model, batch_shape, device):
    """Does naive_lowerbound return one finite number per data point?"""
    x = torch.randint(0, 2, batch_shape + (1, 4, 5), device=device).float()
    bound = gaussian_model.naive_lowerbound(x, num_samples=10)
    assert bound.shape == batch_shape
    assert torch.isfinite(bound).all()


# ----------------------------------------------------------------------------- enumeration


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
def test_log_marginal_equals_the_sum_over_codes(finite_model, batch_shape, device):
    """Does log_marginal(x, enumerate_support) equal log sum_c p(c) p(x|c) computed by a loop over c?"""
    x = images(batch_shape, device)
    log_prior, log_lik = hand_log_terms(finite_model, x)
    expected = torch.logsumexp(log_prior + log_lik, dim=0)
    assert_close(finite_model.log_marginal(x, ENUMERATE), expected)


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
def test_posterior_is_bayes_rule(finite_model, batch_shape, device):
    """Are posterior(x) probabilities p(c) p(x|c) / p(x) from the loop, summing to one per x?"""
    x = images(batch_shape, device)
    log_prior, log_lik = hand_log_terms(finite_model, x)
    log_joint = log_prior + log_lik  # [C] + batch_shape
    expected = (log_joint - torch.logsumexp(log_joint, dim=0)).exp().movedim(0, -1)
    post = finite_model.posterior(x, ENUMERATE)
    assert post.batch_shape == batch_shape
    assert_close(post.probs, expected)
    assert_close(post.probs.sum(-1), torch.ones(batch_shape, device=device))
    # the posterior is not the prior: the data move it
    assert (post.probs - log_prior.exp().movedim(0, -1)).abs().max() > 0.01


@pytest.mark.parametrize("batch_shape", [(64,), (8, 8)], ids=str)
def test_marginal_sums_to_one_over_all_images(finite_model, batch_shape, device):
    """Does p(x) sum to 1 over all 64 binary 2x3 images (brute force over the data space)?"""
    x = all_binary_images(device).view(batch_shape + EVENT)
    log_px = finite_model.log_marginal(x, ENUMERATE)
    assert log_px.shape == batch_shape
    assert_close(torch.logsumexp(log_px.flatten(), dim=0), torch.zeros((), device=device))


def test_log_marginal_rejects_data_of_the_wrong_shape(finite_model, device):
    """Is x whose trailing shape is not the data shape rejected with a ValueError?"""
    with pytest.raises(ValueError, match="x must have shape"):
        finite_model.log_marginal(torch.zeros(4, 1, 3, 2, device=device), ENUMERATE)
    with pytest.raises(ValueError, match="x must have shape"):
        finite_model.naive_lowerbound(torch.zeros(2, 3, device=device), num_samples=3)


# ----------------------------------------------------------------------------- Monte Carlo bound


@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "many-chunks"])
def test_naive_lowerbound_estimates_the_prior_expectation(finite_model, chunked, device):
    """Does naive_lowerbound agree with E_p(c)[log p(x|c)] (within NUM_SE standard errors), also in tiny chunks?

    The exact expectation lies below the exact log p(x) (Jensen), which is checked too.
    """
    x = images((4,), device)
    log_prior, log_lik = hand_log_terms(finite_model, x)
    prior = log_prior.exp()
    mean = (prior * log_lik).sum(0)  # [B]
    sd = (prior * (log_lik - mean) ** 2).sum(0).sqrt()
    # a chunk of 7 draws: NUM_SAMPLES = 285 * 7 + 5, so the last chunk is a remainder
    max_elements = 7 * x.numel() if chunked else 2**24

    torch.manual_seed(SEED)
    with torch.no_grad():
        bound = finite_model.naive_lowerbound(x, NUM_SAMPLES, max_elements=max_elements)
    assert bound.shape == (4,)
    assert ((bound - mean).abs() <= NUM_SE * sd / math.sqrt(NUM_SAMPLES)).all(), (bound, mean, sd)
    assert (mean < finite_model.log_marginal(x, ENUMERATE)).all()


@pytest.mark.parametrize("num_samples, batch_numel, max_elements, expected", [
    (10, 4, 12, [3, 3, 3, 1]),
    (5, 4, 100, [5]),
    (3, 50, 10, [1, 1, 1]),
])
def test_sample_chunks_split_the_draws(num_samples, batch_numel, max_elements, expected):
    """Are the draws split into chunks of at most max_elements // batch_numel (at least 1) that add up to S?"""
    assert list(sample_chunks(num_samples, batch_numel, max_elements)) == expected


@pytest.mark.parametrize("num_samples", [0, -1, 2.0, True])
def test_sample_chunks_rejects_bad_sample_size(num_samples):
    """Is a number of samples that is not a positive int rejected with a ValueError?"""
    with pytest.raises(ValueError, match="number of samples"):
        list(sample_chunks(num_samples, 4))
