"""Tests for dpm_core/priors.py: the prior nets p(z).

Every prior is checked for the shapes ``torch.distributions`` promises and against a
reference density: ``td.Independent(td.Normal(0, 1))`` for the Gaussian, a brute-force
``logsumexp`` over components for the mixture, the uniform distribution over one-hot
vectors for the categorical prior. All comparisons are exact (``assert_close``).
"""

import math

import pytest
import torch
import torch.distributions as td
from torch.testing import assert_close

from dpm_core.priors import CategoricalPriorNet, GaussianPriorNet, MoGPriorNet

BATCH_SHAPES = [(), (4,), (3, 5)]
OUTCOME_SHAPES = [3, (2, 3)]

#: registry of priors: name -> (builder from an outcome shape, outcome shapes it allows)
PRIORS = {
    "gaussian": (GaussianPriorNet, OUTCOME_SHAPES),
    "mog": (lambda shape: MoGPriorNet(shape, num_components=3, lbound=-2.0, rbound=2.0),
            OUTCOME_SHAPES),
    "categorical": (CategoricalPriorNet, [3]),
}
PRIOR_CASES = [
    pytest.param(name, shape, id=f"{name}-{shape}")
    for name, (_, shapes) in PRIORS.items()
    for shape in shapes
]
#: constructors with the outcome shape as first argument, and that argument's name, for the error tests
PRIOR_CLASSES = {
    "gaussian": (GaussianPriorNet, "outcome_shape"),
    "mog": (lambda shape: MoGPriorNet(shape, num_components=2), "outcome_shape"),
    "categorical": (CategoricalPriorNet, "num_categories"),
}


def as_tuple(shape):
    return (shape,) if isinstance(shape, int) else tuple(shape)


def build(name, outcome_shape, device):
    return PRIORS[name][0](outcome_shape).to(device)


def log_normal(z, loc, scale):
    """Closed-form log N(z | loc, scale^2), elementwise."""
    return -0.5 * ((z - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize("name, outcome_shape", PRIOR_CASES)
def test_distribution_shapes(name, outcome_shape, batch_shape, device):
    """Does p(z) have batch_shape = the requested shape and event_shape = outcome_shape?"""
    p = build(name, outcome_shape, device)(batch_shape)
    assert p.batch_shape == torch.Size(batch_shape)
    assert p.event_shape == torch.Size(as_tuple(outcome_shape))


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize("name, outcome_shape", PRIOR_CASES)
def test_sample_and_log_prob_shapes(name, outcome_shape, batch_shape, device):
    """Are samples shaped sample + batch + outcome, on the device, with one log_prob per draw?"""
    p = build(name, outcome_shape, device)(batch_shape)
    z = p.sample((2,))
    assert z.shape == (2,) + tuple(batch_shape) + as_tuple(outcome_shape)
    assert z.device.type == device.type
    log_p = p.log_prob(z)
    assert log_p.shape == (2,) + tuple(batch_shape)
    assert torch.isfinite(log_p).all()


@pytest.mark.parametrize("name", list(PRIORS))
def test_int_batch_shape_means_a_tuple(name, device):
    """Is an int batch_shape b read as (b,)?"""
    net = build(name, 3, device)
    assert net(4).batch_shape == net((4,)).batch_shape == torch.Size([4])


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("outcome_shape", OUTCOME_SHAPES, ids=str)
def test_gaussian_prior_is_standard_normal(outcome_shape, device):
    """Does GaussianPriorNet's log_prob equal Independent(Normal(0, 1)) exactly?"""
    p = GaussianPriorNet(outcome_shape).to(device)((3, 5))
    event = as_tuple(outcome_shape)
    z = 2.0 * torch.randn((7, 3, 5) + event, device=device)
    reference = td.Independent(
        td.Normal(torch.zeros(event, device=device), torch.ones(event, device=device)),
        len(event))
    assert_close(p.log_prob(z), reference.log_prob(z))
    assert_close(p.mean, torch.zeros((3, 5) + event, device=device))
    assert_close(p.stddev, torch.ones((3, 5) + event, device=device))


@pytest.mark.parametrize("outcome_shape", OUTCOME_SHAPES, ids=str)
def test_mog_prior_log_prob_is_the_mixture_density(outcome_shape, device):
    """Does MoGPriorNet's log_prob equal logsumexp_c(log w_c + sum_k log N(z_k | mu_ck, s_ck))?"""
    net = MoGPriorNet(outcome_shape, num_components=3, lbound=-2.0, rbound=2.0)
    with torch.no_grad():  # unequal weights and scales, so that each one matters
        net.logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
        net.raw_scales.normal_()
    net = net.to(device)
    event = as_tuple(outcome_shape)
    z = 2.0 * torch.randn((7, 4) + event, device=device)  # [S, B] + event

    log_w = torch.log_softmax(net.logits, dim=0)  # [C]
    zc = z.unsqueeze(-len(event) - 1)  # [S, B, 1] + event
    log_comp = log_normal(zc, net.locs, net.scales).flatten(-len(event)).sum(-1)  # [S, B, C]
    expected = torch.logsumexp(log_w + log_comp, dim=-1)  # [S, B]

    assert_close(net((4,)).log_prob(z), expected)


def test_categorical_prior_is_uniform_over_one_hot_codes(device):
    """Does CategoricalPriorNet(C) give probability 1/C to each of the C one-hot vectors?"""
    p = CategoricalPriorNet(4).to(device)((2,))
    codes = p.enumerate_support()  # [C, B, C]
    assert_close(codes[:, 0], torch.eye(4, device=device))
    assert_close(p.log_prob(codes), torch.full((4, 2), -math.log(4), device=device))


# ----------------------------------------------------------------------------- parameters


def test_mog_prior_parameters_are_trainable():
    """Are the MoG prior's logits, locations and scales trainable parameters reached by gradients?"""
    net = MoGPriorNet((2, 3), num_components=3)
    names = {name for name, _ in net.named_parameters()}
    assert names == {"logits", "locs", "raw_scales"}
    net((4,)).log_prob(torch.randn(4, 2, 3)).sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_mog_prior_scales_are_positive():
    """Are the MoG scales positive, 1 at initialisation, and still positive for very negative raw values?"""
    net = MoGPriorNet(3, num_components=4)
    assert_close(net.scales, torch.ones(4, 3))
    with torch.no_grad():
        net.raw_scales.fill_(-50.0)
    assert (net.scales > 0).all()
    assert torch.isfinite(net((2,)).log_prob(net.locs[0].expand(2, 3))).all()


def test_mog_prior_locations_start_inside_the_bounds():
    """Are the initial MoG locations inside [lbound, rbound] and spread out (not all equal)?"""
    net = MoGPriorNet((2, 3), num_components=50, lbound=-1.5, rbound=4.0)
    assert net.locs.shape == (50, 2, 3)
    assert net.locs.min() >= -1.5 and net.locs.max() <= 4.0
    assert net.locs.std() > 1.0  # a uniform on [-1.5, 4] has std 1.59


def test_gaussian_prior_has_buffers_not_parameters(device):
    """Does GaussianPriorNet hold locs and scales as buffers (in state_dict, moved by .to) and train nothing?"""
    net = GaussianPriorNet((2, 3))
    assert list(net.parameters()) == []
    assert set(net.state_dict()) == {"locs", "scales"}
    net = net.to(device)
    assert net.locs.device.type == device.type and net.scales.device.type == device.type
    assert net((4,)).mean.device.type == device.type


@pytest.mark.parametrize("name", list(PRIORS))
def test_prior_moves_to_the_device(name, device):
    """Does every prior's distribution live on the device the module was moved to?"""
    p = build(name, 3, device)((4,))
    assert p.sample().device.type == device.type
    assert p.log_prob(p.sample()).device.type == device.type


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("num_components", [0, -1, 2.5, True])
def test_mog_prior_rejects_bad_num_components(num_components):
    """Is a num_components that is not a positive int rejected with a message naming it?"""
    with pytest.raises(ValueError, match="num_components"):
        MoGPriorNet(3, num_components=num_components)


@pytest.mark.parametrize("lbound, rbound", [(1.0, 1.0), (2.0, -2.0)])
def test_mog_prior_rejects_empty_location_interval(lbound, rbound):
    """Is lbound >= rbound rejected?"""
    with pytest.raises(ValueError, match="lbound"):
        MoGPriorNet(3, num_components=2, lbound=lbound, rbound=rbound)


@pytest.mark.parametrize("outcome_shape", [0, -1, "a", (2, 0), (), 2.0], ids=repr)
@pytest.mark.parametrize("name", list(PRIOR_CLASSES))
def test_prior_rejects_bad_outcome_shape(name, outcome_shape):
    """Is an outcome shape that is not made of positive ints rejected by every prior, naming the argument?"""
    build_prior, argument = PRIOR_CLASSES[name]
    with pytest.raises(ValueError, match=argument):
        build_prior(outcome_shape)


@pytest.mark.parametrize("batch_shape", [-1, (2, -1), "a"], ids=repr)
@pytest.mark.parametrize("name", list(PRIORS))
def test_prior_rejects_bad_batch_shape(name, batch_shape):
    """Is a batch shape with a negative or non-int entry rejected with a ValueError?"""
    with pytest.raises(ValueError, match="batch_shape"):
        build(name, 3, "cpu")(batch_shape)
