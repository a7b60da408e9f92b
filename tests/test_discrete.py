"""Tests for dpm_core/discrete/: binary and categorical codes, against enumeration.

Exact comparisons use ``assert_close``: densities against closed forms (sums of log-sigmoids
and log-softmaxes written out here), the KL of torch's registry against the enumerated sum,
log p(x) against a brute-force loop over codes, and the evidence decomposition
log p(x) = ELBO + KL(q || p(z|x)).

Statistical policy (one place): every stochastic test seeds torch with SEED; an estimate is
unbiased when every coordinate of the mean of REPEATS independent gradient estimates lies
within NUM_SE standard errors of the exact gradient (the standard errors measured from those
repetitions); an estimator is biased when the distance of that mean from the exact gradient
exceeds NUM_SE times its noise floor, sqrt(trace Cov / REPEATS), the standard error the
distance would have if the estimator were unbiased. The test bed is
:func:`make_testbed` in float64 with its default seed, and BATCH points from
:func:`draw_data`.
"""

import functools
import itertools
import math

import pytest
import torch
import torch.distributions as td
from torch.testing import assert_close

from dpm_core import (
    NVIL,
    CPDNet,
    Baseline,
    BinarizedImageModel,
    CategoricalPriorNet,
    CentredReward,
    GaussianPriorNet,
    InferenceModel,
    JointDistribution,
    SelfCritic,
    VarianceReduction,
)
from dpm_core.discrete import (
    BernoulliCPDNet,
    BernoulliPriorNet,
    BernoulliStraightThrough,
    FlattenCode,
    LeaveOneOut,
    OneHotCPDNet,
    OneHotPriorNet,
    code_parts,
    draw_data,
    enumerate_codes,
    exact_elbo,
    exact_multisample_bound,
    make_testbed,
    rebuild_code,
    relaxed,
    relaxed_surrogate_loss,
    straight_through,
    vimco_surrogate_loss,
)

SEED, NUM_SE, REPEATS = 0, 5.0, 40
BATCH = 4
CODES = ["bernoulli", "one-hot"]
BATCH_SHAPES = [(), (4,), (3, 5)]

def _randomised(net: OneHotPriorNet) -> OneHotPriorNet:
    """The prior with unequal logits, so that each one matters in a comparison."""
    with torch.no_grad():
        net.logits.copy_(torch.linspace(-2, 2, net.logits.numel()).reshape(net.logits.shape))
    return net


#: registry of priors over K = 12: name -> builder
PRIORS = {
    "bernoulli": lambda: BernoulliPriorNet(12),
    "bernoulli-trainable": lambda: BernoulliPriorNet(12, logits=torch.linspace(-2, 2, 12),
                                                     trainable=True),
    "one-hot": lambda: OneHotPriorNet(12, num_classes=4),
    "one-hot-trainable": lambda: _randomised(OneHotPriorNet(12, num_classes=4, trainable=True)),
}
#: registry of CPD nets from 5 inputs to K = 12: name -> builder
CPD_NETS = {
    "bernoulli": lambda: BernoulliCPDNet(12, num_inputs=5),
    "bernoulli-hidden": lambda: BernoulliCPDNet(12, num_inputs=5, hidden_size=7),
    "one-hot": lambda: OneHotCPDNet(12, num_inputs=5, num_classes=4),
    "one-hot-hidden": lambda: OneHotCPDNet(12, num_inputs=5, hidden_size=7, num_classes=4),
}


def _blocks(z: torch.Tensor, dist_name: str) -> torch.Tensor:
    """A flat one-hot code [..., 12] as its blocks [..., 3, 4]; bits unchanged."""
    return z.unflatten(-1, (3, 4)) if dist_name.startswith("one-hot") else z


def _reference_log_prob(logits: torch.Tensor, z: torch.Tensor, one_hot: bool) -> torch.Tensor:
    """sum_k [z_k log sigmoid(l_k) + (1 - z_k) log sigmoid(-l_k)], or sum_l <z_l, log softmax(l_l)>."""
    if one_hot:
        return (z.unflatten(-1, logits.shape[-2:]) * torch.log_softmax(logits, -1)).sum((-2, -1))
    return (z * torch.nn.functional.logsigmoid(logits)
            + (1 - z) * torch.nn.functional.logsigmoid(-logits)).sum(-1)


def _enumerated_kl(q: td.Distribution, p: td.Distribution) -> torch.Tensor:
    z = enumerate_codes(q)
    log_q = q.log_prob(z)
    return (log_q.exp() * (log_q - p.log_prob(z))).sum(0)


# ----------------------------------------------------------------------------- priors


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize("name", list(PRIORS))
def test_prior_shapes(name, batch_shape, device):
    """Does p(z) have the requested batch_shape, event_shape (K,), and one log_prob per draw?"""
    p = PRIORS[name]().to(device)(batch_shape)
    assert p.batch_shape == torch.Size(batch_shape) and p.event_shape == torch.Size([12])
    z = p.sample((2,))
    assert z.shape == (2,) + batch_shape + (12,) and z.device.type == device.type
    log_p = p.log_prob(z)
    assert log_p.shape == (2,) + batch_shape and torch.isfinite(log_p).all()


@pytest.mark.parametrize("name", list(PRIORS))
def test_prior_log_prob_is_the_product_of_its_factors(name):
    """Is log p(z) the sum of the units' log-sigmoids, or of the variables' log-softmaxes?"""
    net = PRIORS[name]()
    p = net((3,))
    z = p.sample((5,))
    assert_close(p.log_prob(z), _reference_log_prob(net.logits, z, name.startswith("one-hot")))


@pytest.mark.parametrize("name", ["bernoulli", "one-hot"])
def test_default_priors_are_uniform_over_codes(name):
    """Do the fixed priors give every one of the 2^12 bit codes, or 4^3 one-hot codes, the same mass?"""
    p = PRIORS[name]()(())
    z = enumerate_codes(p)
    expected = -12 * math.log(2) if name == "bernoulli" else -3 * math.log(4)
    assert_close(p.log_prob(z), torch.full((z.shape[0],), expected))


@pytest.mark.parametrize("name", list(PRIORS))
def test_trainable_prior_logits_are_parameters(name, device):
    """Are the logits a trained parameter when asked, a buffer otherwise, and on the device?"""
    net = PRIORS[name]().to(device)
    trainable = name.endswith("trainable")
    assert [n for n, _ in net.named_parameters()] == (["logits"] if trainable else [])
    assert net.logits.device.type == device.type
    if trainable:
        p = net((4,))
        p.log_prob(p.sample()).sum().backward()
        assert net.logits.grad is not None and net.logits.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- CPD nets


@pytest.mark.parametrize("batch_shape", [(4,), (3, 5)], ids=str)
@pytest.mark.parametrize("name", list(CPD_NETS))
def test_cpd_net_shapes_and_log_prob(name, batch_shape, device):
    """Does q(z|h) have h's batch shape, event_shape (K,), and the log_prob of its own logits?"""
    torch.manual_seed(SEED)
    net = CPD_NETS[name]().to(device)
    q = net(torch.randn(batch_shape + (5,), device=device))
    assert q.batch_shape == torch.Size(batch_shape) and q.event_shape == torch.Size([12])
    z = q.sample((2,))
    assert z.shape == (2,) + batch_shape + (12,)
    h = torch.randn(batch_shape + (5,), device=device)
    logits, q = net.logits(net.encoder(h)), net(h)
    assert_close(q.log_prob(z), _reference_log_prob(logits, z, name.startswith("one-hot")))


@pytest.mark.parametrize("name", list(CPD_NETS))
def test_draws_are_codes(name):
    """Are draws bits, or blocks of one-hot vectors (one 1 per block of C)?"""
    torch.manual_seed(SEED)
    z = _blocks(CPD_NETS[name]()(torch.randn(4, 5)).sample((100,)), name)
    assert ((z == 0) | (z == 1)).all()
    if name.startswith("one-hot"):
        assert (z.sum(-1) == 1).all()


def test_flatten_code_transforms_are_equal_when_their_shapes_are():
    """Do two FlattenCode(L, C) compare equal (so that torch's KL of two flattened codes applies)?"""
    assert FlattenCode(3, 4) == FlattenCode(3, 4) and FlattenCode(3, 4) != FlattenCode(4, 3)
    assert hash(FlattenCode(3, 4)) == hash(FlattenCode(3, 4))
    assert isinstance(FlattenCode(3, 4).with_cache(1), FlattenCode)


# ----------------------------------------------------------------------------- plugging in


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("built", [False, True], ids=["factory", "built"])
def test_discrete_codes_plug_into_inference_model_and_nvil(code, built):
    """Do the codes work unchanged in InferenceModel, JointDistribution and NVIL (score function)?"""
    torch.manual_seed(SEED)
    K, C = 12, 4
    factory = BernoulliCPDNet if code == "bernoulli" else functools.partial(OneHotCPDNet,
                                                                           num_classes=C)
    cpd = factory(K, num_inputs=16, hidden_size=8) if built else factory
    prior = BernoulliPriorNet(K, trainable=True) if code == "bernoulli" else \
        OneHotPriorNet(K, num_classes=C, trainable=True)
    nvil = NVIL(JointDistribution(prior, BinarizedImageModel(1, 8, 8, K)),
                InferenceModel(cpd, K, width=8, height=8, hidden_size=16))
    x = (torch.rand(3, 5, 1, 8, 8) > 0.5).float()
    q = nvil.inf_model(x)
    assert q.batch_shape == (3, 5) and q.event_shape == (K,) and not q.has_rsample
    D, R, L = nvil.DRL(x, sample_size=7)
    assert D.shape == R.shape == L.shape == (3, 5)
    assert_close(R, td.kl_divergence(q, nvil.gen_model.prior((3, 5))))
    nvil(x, sample_size=2)["loss"].backward()
    for name, param in nvil.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    with pytest.raises(NotImplementedError, match="rsample"):
        nvil(x, estimator="reparam")


@pytest.mark.parametrize("code", CODES)
def test_closed_form_kl_equals_the_enumerated_sum(code):
    """Is torch's registered KL(q || p) of two codes sum_z q(z) (log q(z) - log p(z))?"""
    nvil = make_testbed(code)
    x = draw_data(nvil, BATCH)
    q, p = nvil.inf_model(x), nvil.gen_model.prior((BATCH,))
    assert_close(td.kl_divergence(q, p), _enumerated_kl(q, p))


@pytest.mark.parametrize("name", list(PRIORS))
def test_code_parts_and_rebuild_code_take_a_code_apart_and_back(name):
    """Does rebuild_code(*code_parts(q)) give q back (shapes, log_prob of every code), with the
    inner distribution over the code's units after q's batch shape?"""
    torch.manual_seed(SEED)
    q = PRIORS[name]()((2, 3))
    inner, ndims, transforms = code_parts(q)
    units = (3,) if name.startswith("one-hot") else (12,)
    assert tuple(inner.batch_shape) == (2, 3) + units and ndims == 1
    assert len(transforms) == (1 if name.startswith("one-hot") else 0)
    again = rebuild_code(inner, ndims, transforms)
    assert (again.batch_shape, again.event_shape) == (q.batch_shape, q.event_shape)
    z = enumerate_codes(q)
    assert_close(again.log_prob(z), q.log_prob(z))


def test_a_gaussian_is_no_code():
    """Are enumerate_codes, relaxed and straight_through refused for a Gaussian?"""
    normal = GaussianPriorNet(3)((2,))
    for fn in (enumerate_codes, straight_through, functools.partial(relaxed, temperature=1.0)):
        with pytest.raises(NotImplementedError, match="factorised code"):
            fn(normal)


# ----------------------------------------------------------------------------- exact test bed


@pytest.mark.parametrize("code, num_codes", [("bernoulli", 2**8), ("one-hot", 4**3)])
def test_enumerate_codes_lists_every_code_once(code, num_codes):
    """Does enumerate_codes list each of the N codes once, shaped [N, B, K], with total mass 1?"""
    nvil = make_testbed(code)
    q = nvil.inf_model(draw_data(nvil, BATCH))
    z = enumerate_codes(q)
    assert z.shape == (num_codes, BATCH, q.event_shape[0])
    assert torch.unique(z[:, 0], dim=0).shape[0] == num_codes
    assert_close(q.log_prob(z).exp().sum(0), torch.ones(BATCH, dtype=torch.float64))


def test_enumerate_codes_agrees_with_torch_for_one_categorical():
    """For a single one-hot variable, is the list torch's enumerate_support?"""
    p = CategoricalPriorNet(5)((2,))
    assert_close(enumerate_codes(p), p.enumerate_support())
    with pytest.raises(ValueError, match="configurations"):
        enumerate_codes(BernoulliPriorNet(17)(()))


def _brute_force_log_marginal(nvil: NVIL, x: torch.Tensor, code: str) -> torch.Tensor:
    """log p(x) by a Python loop over codes, with the model's weights and no torch.distributions."""
    prior_logits = nvil.gen_model.prior_net.logits
    linear = nvil.gen_model.cpd_net.logits[1]
    terms = []
    if code == "bernoulli":
        codes = [torch.tensor(bits, dtype=torch.float64) for bits in itertools.product([0, 1], repeat=8)]
    else:
        codes = [torch.eye(4, dtype=torch.float64)[list(c)].flatten()
                 for c in itertools.product(range(4), repeat=3)]
    for z in codes:
        log_pz = _reference_log_prob(prior_logits, z, code == "one-hot")
        a = linear.weight @ z + linear.bias  # [D]
        log_px_z = (x * torch.nn.functional.logsigmoid(a)
                    + (1 - x) * torch.nn.functional.logsigmoid(-a)).sum(-1)  # [B]
        terms.append(log_pz + log_px_z)
    return torch.logsumexp(torch.stack(terms), 0)


@pytest.mark.parametrize("code", CODES)
def test_log_marginal_matches_a_brute_force_loop(code):
    """Is JointDistribution.log_marginal(x, enumerate_codes) the exact log p(x) of a loop over codes?"""
    nvil = make_testbed(code)
    x = draw_data(nvil, BATCH)
    with torch.no_grad():
        assert_close(nvil.gen_model.log_marginal(x, enumerate_codes),
                     _brute_force_log_marginal(nvil, x, code))


@pytest.mark.parametrize("code", CODES)
def test_exact_elbo_satisfies_the_evidence_decomposition(code):
    """Is log p(x) = ELBO + KL(q || p(z|x)), with the exact posterior of JointDistribution.posterior?"""
    nvil = make_testbed(code)
    x = draw_data(nvil, BATCH)
    with torch.no_grad():
        q = nvil.inf_model(x)
        log_q = q.log_prob(enumerate_codes(q))  # [N, B], in the posterior's order
        posterior = nvil.gen_model.posterior(x, enumerate_codes)
        log_post = posterior.logits.T  # [N, B]
        kl_to_posterior = (log_q.exp() * (log_q - log_post)).sum(0)
        log_px = nvil.gen_model.log_marginal(x, enumerate_codes)
        elbo = exact_elbo(nvil.gen_model, q, x)
    assert_close(posterior.probs.sum(-1), torch.ones(BATCH, dtype=torch.float64))
    assert_close(elbo + kl_to_posterior, log_px)
    assert (kl_to_posterior > 0.1).all(), "the test bed's q should be far from the posterior"


@pytest.mark.parametrize("code", CODES)
def test_exact_elbo_has_a_closed_form_when_z_does_not_reach_x(code):
    """With the decoder's weights zero, is the ELBO log prod_d Bern(x_d | sigmoid(b_d)) - KL(q || p)?"""
    nvil = make_testbed(code)
    x = draw_data(nvil, BATCH)
    linear = nvil.gen_model.cpd_net.logits[1]
    with torch.no_grad():
        linear.weight.zero_()
        q, p = nvil.inf_model(x), nvil.gen_model.prior((BATCH,))
        b = linear.bias
        expected = (x * torch.nn.functional.logsigmoid(b)
                    + (1 - x) * torch.nn.functional.logsigmoid(-b)).sum(-1) - td.kl_divergence(q, p)
        assert_close(exact_elbo(nvil.gen_model, q, x), expected)


@pytest.mark.parametrize("code", CODES)
def test_the_test_bed_runs_on_the_device(code, device):
    """On the device, do enumeration, log p(x) and the exact ELBO give the CPU's numbers?"""
    nvil = make_testbed(code)
    x = draw_data(nvil, BATCH)
    with torch.no_grad():
        expected = (nvil.gen_model.log_marginal(x, enumerate_codes),
                    exact_elbo(nvil.gen_model, nvil.inf_model(x), x))
        nvil, x = nvil.to(device), x.to(device)
        got = (nvil.gen_model.log_marginal(x, enumerate_codes),
               exact_elbo(nvil.gen_model, nvil.inf_model(x), x))
    for value, reference in zip(got, expected):
        assert value.device.type == device.type
        assert_close(value.cpu(), reference)


@pytest.mark.parametrize("code", CODES)
def test_monte_carlo_estimates_are_unbiased(code):
    """Are NVIL's sampled ELBO, and the importance-sampled estimate exp(L) of p(x), unbiased?

    Their standard errors are exact: the variances of log p(x|z) and of the weight
    w = p(x, z) / q(z|x) under q, by enumeration.
    """
    torch.manual_seed(SEED)
    nvil = make_testbed(code)
    x = draw_data(nvil, BATCH)
    S = 20000
    with torch.no_grad():
        q = nvil.inf_model(x)
        z = enumerate_codes(q)
        q_z = q.log_prob(z).exp()  # [N, B]
        log_px_z = nvil.gen_model.obs_model(z).log_prob(x)  # [N, B]
        weights = (nvil.gen_model.log_prob(z, x) - q.log_prob(z)).exp()
        var_log_px_z = (q_z * log_px_z ** 2).sum(0) - (q_z * log_px_z).sum(0) ** 2
        log_px = nvil.gen_model.log_marginal(x, enumerate_codes)
        var_weights = (q_z * weights ** 2).sum(0) - log_px.exp() ** 2
        elbo = exact_elbo(nvil.gen_model, q, x)
        D, R, L = nvil.DRL(x, S)
    assert ((-D - R - elbo).abs() < NUM_SE * (var_log_px_z / S).sqrt()).all()
    # L is the log of an unbiased estimate of p(x): exp(L) is unbiased, L itself is not
    assert ((L.exp() - log_px.exp()).abs() < NUM_SE * (var_weights / S).sqrt()).all()


# ----------------------------------------------------------------------------- gradients


def _grads(nvil: NVIL, loss: torch.Tensor, params) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def _exact_grad(nvil: NVIL, x: torch.Tensor, params) -> torch.Tensor:
    return _grads(nvil, -exact_elbo(nvil.gen_model, nvil.inf_model(x), x).mean(), params)


def _runs(nvil: NVIL, loss_fn, params, repeats: int = REPEATS) -> torch.Tensor:
    """``repeats`` independent gradient estimates: [repeats, P]."""
    return torch.stack([_grads(nvil, loss_fn(), params) for _ in range(repeats)])


#: control variates of the score function: name -> factory (D = 6 data dims, float64)
CONTROL_VARIATES = {
    "none": VarianceReduction,
    "centred": CentredReward,
    "self-critic": SelfCritic,
    "baseline": lambda: Baseline(6, hidden_size=8, event_dims=1),
    "leave-one-out": LeaveOneOut,
}


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("cv", list(CONTROL_VARIATES))
def test_score_function_gradient_is_unbiased(cv, code):
    """Does the mean of NVIL's score-function gradients equal the exact ELBO gradient, for p and q?"""
    torch.manual_seed(SEED)
    nvil = make_testbed(code, cv_model=CONTROL_VARIATES[cv]().double())
    x = draw_data(nvil, BATCH)
    params = list(nvil.gen_params()) + list(nvil.inf_params())
    exact = _exact_grad(nvil, x, params)
    runs = _runs(nvil, lambda: nvil.surrogate_loss(x, 500)[0], params)
    mean, se = runs.mean(0), runs.std(0) / math.sqrt(REPEATS)
    assert ((mean - exact).abs() <= NUM_SE * se + 1e-8).all(), ((mean - exact).abs() / se).max()


def _bias_and_noise(code: str, relaxation: str, temperature=None, sample_size: int = 100):
    """||mean - exact|| of q's relaxed gradient, its noise floor, and the trace of Cov of one estimate."""
    torch.manual_seed(SEED)
    nvil = make_testbed(code)
    x = draw_data(nvil, 16)
    params = list(nvil.inf_params())
    exact = _exact_grad(nvil, x, params)
    runs = _runs(nvil, lambda: relaxed_surrogate_loss(nvil, x, relaxation, temperature,
                                                      sample_size), params)
    var = runs.var(0).sum()
    return (runs.mean(0) - exact).norm(), (var / REPEATS).sqrt(), var


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("relaxation, temperature",
                         [("straight-through", None), ("concrete", 1.0), ("concrete", 0.3)])
def test_relaxed_gradients_are_biased(code, relaxation, temperature):
    """Do straight-through and Concrete (tau 1, 0.3) gradients miss the exact ELBO gradient?"""
    bias, noise, _ = _bias_and_noise(code, relaxation, temperature)
    assert bias > NUM_SE * noise, (bias, noise)


@pytest.mark.parametrize("code", CODES)
def test_concrete_trades_bias_for_variance_as_the_temperature_falls(code):
    """From tau = 1 to 0.1, does the Concrete gradient's bias shrink and its variance grow?"""
    hot_bias, hot_noise, hot_var = _bias_and_noise(code, "concrete", 1.0)
    cold_bias, cold_noise, cold_var = _bias_and_noise(code, "concrete", 0.1)
    assert hot_bias - cold_bias > NUM_SE * (hot_noise ** 2 + cold_noise ** 2).sqrt()
    assert cold_var > 10 * hot_var


@pytest.mark.parametrize("code", CODES)
def test_multisample_bound_starts_at_the_elbo_and_climbs_towards_log_px(code):
    """Is the enumerated S-sample bound the ELBO at S = 1, increasing in S, below log p(x)?"""
    nvil = make_testbed(code)
    x = draw_data(nvil, BATCH)
    with torch.no_grad():
        q = nvil.inf_model(x)
        bounds = [exact_multisample_bound(nvil.gen_model, q, x, S) for S in (1, 2)]
        if code == "one-hot":  # 64^3 tuples; 256^3 would be too many
            bounds.append(exact_multisample_bound(nvil.gen_model, q, x, 3))
        assert_close(bounds[0], exact_elbo(nvil.gen_model, q, x))
        for lower, upper in zip(bounds, bounds[1:]):
            assert (upper > lower).all()
        assert (bounds[-1] < nvil.gen_model.log_marginal(x, enumerate_codes)).all()


@pytest.mark.parametrize("code", CODES)
def test_multisample_bound_is_the_mean_of_its_monte_carlo_estimate(code):
    """Does the mean of log 1/2 (w_1 + w_2) over many draws match the enumerated 2-sample bound?"""
    torch.manual_seed(SEED)
    nvil = make_testbed(code)
    x = draw_data(nvil, BATCH)
    M = 20000
    with torch.no_grad():
        q = nvil.inf_model(x)
        z = q.sample((2, M))  # [2, M, B, K]
        log_w = nvil.gen_model.log_prob(z, x) - q.log_prob(z)
        estimates = torch.logsumexp(log_w, 0) - math.log(2)  # [M, B]
        exact = exact_multisample_bound(nvil.gen_model, q, x, 2)
    assert ((estimates.mean(0) - exact).abs() < NUM_SE * estimates.std(0) / math.sqrt(M)).all()


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("baseline", [True, False], ids=["vimco", "no-baseline"])
def test_vimco_gradient_is_unbiased_for_the_multisample_bound(baseline, code):
    """Does the mean of VIMCO's gradients equal the exact gradient of the 2-sample bound, for p and q?"""
    torch.manual_seed(SEED)
    nvil = make_testbed(code)
    x = draw_data(nvil, BATCH)
    params = list(nvil.gen_params()) + list(nvil.inf_params())
    exact = _grads(nvil, -exact_multisample_bound(nvil.gen_model, nvil.inf_model(x), x, 2).mean(),
                   params)
    copies = x.expand(500, *x.shape)  # 500 independent pairs of draws per data point
    runs = _runs(nvil, lambda: vimco_surrogate_loss(nvil, copies, 2, baseline), params)
    mean, se = runs.mean(0), runs.std(0) / math.sqrt(REPEATS)
    assert ((mean - exact).abs() <= NUM_SE * se + 1e-8).all(), ((mean - exact).abs() / se).max()


@pytest.mark.parametrize("code", CODES)
def test_vimco_baseline_lowers_the_variance(code):
    """Is one VIMCO estimate (S = 2) at least five times less variable than the bound's plain score function?"""
    torch.manual_seed(SEED)
    nvil = make_testbed(code)
    x = draw_data(nvil, 16)
    params = list(nvil.inf_params())
    var = {b: _runs(nvil, lambda: vimco_surrogate_loss(nvil, x, 2, b), params, 400).var(0).sum()
           for b in (True, False)}
    assert var[True] * 5 < var[False], var


# ----------------------------------------------------------------------------- relaxations


class _StraightThroughQ(CPDNet):
    """A CPD net that returns ``straight_through(q(z|x))`` of the CPD net it wraps."""

    def __init__(self, q: CPDNet):
        super().__init__(q.outcome_shape)
        self.q = q

    def forward(self, x: torch.Tensor) -> td.Distribution:
        return straight_through(self.q(x))


@pytest.mark.parametrize("code", CODES)
def test_nvil_trains_a_straight_through_q_unchanged(code):
    """Does NVIL take the pathwise path for a straight-through q, with the discrete closed-form KL,
    giving exactly relaxed_surrogate_loss's straight-through gradient for the same draws?"""
    nvil = make_testbed(code)
    x = draw_data(nvil, BATCH)
    params = list(nvil.inf_params())
    torch.manual_seed(SEED)
    expected = _grads(nvil, relaxed_surrogate_loss(nvil, x, "straight-through", sample_size=3),
                      params)
    st_nvil = NVIL(nvil.gen_model, _StraightThroughQ(nvil.inf_model))
    torch.manual_seed(SEED)
    assert_close(_grads(st_nvil, st_nvil.surrogate_loss(x, 3)[0], params), expected)




@pytest.mark.parametrize("code", CODES)
def test_straight_through_draws_hard_codes_with_gradients(code):
    """Does straight_through keep q's codes, log_prob and KL, and let gradients reach the logits?"""
    torch.manual_seed(SEED)
    nvil = make_testbed(code)
    x = draw_data(nvil, BATCH)
    q = nvil.inf_model(x)
    st = straight_through(q)
    assert st.has_rsample and st.batch_shape == q.batch_shape and st.event_shape == q.event_shape
    z = st.rsample((50,))
    assert ((z.detach() == 0) | (z.detach() == 1)).all()
    assert_close(st.log_prob(z.detach()), q.log_prob(z.detach()))
    p = nvil.gen_model.prior((BATCH,))
    assert_close(td.kl_divergence(st, p), td.kl_divergence(q, p))
    grads = torch.autograd.grad(z.sum(), list(nvil.inf_params()))
    assert all(g.abs().sum() > 0 for g in grads)
    assert isinstance(straight_through(BernoulliPriorNet(3)(())).base_dist,
                      BernoulliStraightThrough)


@pytest.mark.parametrize("code", CODES)
def test_relaxed_draws_approach_codes_as_the_temperature_falls(code):
    """Do Concrete draws lie in the cube / on the simplices, with q's mean, and near codes when cold?"""
    torch.manual_seed(SEED)
    nvil = make_testbed(code)
    q = nvil.inf_model(draw_data(nvil, BATCH))
    for tau in (1.0, 0.01):
        r = relaxed(q, tau)
        assert r.has_rsample and r.batch_shape == q.batch_shape and r.event_shape == q.event_shape
        z = _blocks(r.rsample((2000,)), code)
        assert ((z >= 0) & (z <= 1)).all()
        if code == "one-hot":
            assert_close(z.sum(-1), torch.ones_like(z.sum(-1)))
    # at a low temperature a draw is a code up to rounding, and the draws' mean is q's mean
    assert (torch.minimum(z, 1 - z) < 0.05).float().mean() > 0.95
    codes = enumerate_codes(q)  # [N, B, K]
    mean = (q.log_prob(codes).exp()[..., None] * codes).sum(0)  # E_q[z], [B, K]
    draws = z.flatten(-2) if code == "one-hot" else z
    assert (draws.mean(0) - mean).abs().max() < 0.05


# ----------------------------------------------------------------------------- errors


def test_bad_arguments_are_rejected():
    """Are wrong sizes, flags, temperatures and sample sizes named in the message?"""
    with pytest.raises(ValueError, match="outcome_shape"):
        OneHotPriorNet(10, num_classes=4)
    with pytest.raises(ValueError, match="num_classes"):
        OneHotCPDNet(12, num_inputs=5, num_classes=0)
    with pytest.raises(ValueError, match="trainable"):
        BernoulliPriorNet(3, trainable="yes")
    with pytest.raises(ValueError, match="logits"):
        BernoulliPriorNet(3, logits=torch.zeros(4))
    q = BernoulliPriorNet(3)((2,))
    with pytest.raises(ValueError, match="temperature"):
        relaxed(q, 0.0)
    nvil = make_testbed()
    x = draw_data(nvil, 2)
    with pytest.raises(ValueError, match="relaxation"):
        relaxed_surrogate_loss(nvil, x, "gumbel", 1.0)
    with pytest.raises(ValueError, match="temperature"):
        relaxed_surrogate_loss(nvil, x, "concrete")
    with pytest.raises(ValueError, match="temperature"):
        relaxed_surrogate_loss(nvil, x, "straight-through", 0.5)
    with pytest.raises(ValueError, match="S >= 2"):
        LeaveOneOut()(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="code"):
        make_testbed("gaussian")
    with pytest.raises(ValueError, match="at least 2"):
        vimco_surrogate_loss(nvil, x, 1)
    with pytest.raises(ValueError, match="tuples"):
        exact_multisample_bound(nvil.gen_model, nvil.inf_model(x), x, 3)
