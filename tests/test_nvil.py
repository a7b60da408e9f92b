"""NVIL's estimates and gradient estimators against the exact answers of a PPCA model.

Statistical policy (one place): every stochastic test seeds torch with SEED;
an estimate passes when it lies within NUM_SE standard errors of the
reference, the standard error being measured from REPEATS independent
repetitions (or from the Monte Carlo draws themselves).
"""

import functools
import math

import pytest
import torch

from dpm_core import (
    NVIL,
    BinarizedImageModel,
    GaussianCPDNet,
    GaussianPriorNet,
    InferenceModel,
    JointDistribution,
    MoGCPDNet,
    MoGPriorNet,
)
from linear_gaussian import closed_form_elbo, make_nvil, sample_data

SEED, NUM_SE, REPEATS = 0, 5.0, 40


def _image_nvil(q_type=GaussianCPDNet, prior=None, size=8, latent=3) -> NVIL:
    return NVIL(
        JointDistribution(prior or GaussianPriorNet(latent),
                          BinarizedImageModel(1, size, size, latent)),
        InferenceModel(q_type, latent, width=size, height=size, hidden_size=16),
    )


def _q_grads(nvil: NVIL) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in nvil.inf_params()])


def _all_grads(nvil: NVIL) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in nvil.parameters() if p.requires_grad])


def _gradient_runs(nvil: NVIL, x, estimator: str, sample_size: int, grads=_all_grads) -> torch.Tensor:
    """REPEATS independent gradient estimates, each averaging sample_size draws: [REPEATS, P]."""
    runs = []
    for _ in range(REPEATS):
        nvil.zero_grad()
        nvil(x, sample_size=sample_size, estimator=estimator)["loss"].backward()
        runs.append(grads(nvil).clone())
    return torch.stack(runs)


def test_forward_reports_consistent_figures():
    """Does forward return a differentiable scalar loss and ELBO = -D - R as floats?"""
    torch.manual_seed(SEED)
    nvil = _image_nvil()
    out = nvil((torch.rand(5, 1, 8, 8) > 0.5).float(), sample_size=3)
    assert set(out) == {"loss", "ELBO", "D", "R", "cv_loss"}
    assert out["loss"].dim() == 0 and out["loss"].requires_grad
    assert all(isinstance(out[k], float) for k in ("ELBO", "D", "R", "cv_loss"))
    assert out["ELBO"] == pytest.approx(-out["D"] - out["R"], rel=1e-5)
    assert out["loss"].item() == pytest.approx(-out["ELBO"], rel=1e-5)


@pytest.mark.parametrize("batch_shape", [(4,), (3, 5)])
@pytest.mark.parametrize("sample_size", [None, 1, 7])
def test_estimates_have_the_batch_shape(batch_shape, sample_size, device):
    """Do DRL, elbo and log_prob_estimate return one number per data point, on the data's device?"""
    torch.manual_seed(SEED)
    nvil = _image_nvil().to(device)
    x = (torch.rand(batch_shape + (1, 8, 8), device=device) > 0.5).float()
    D, R, L = nvil.DRL(x, sample_size=sample_size)
    for value in (D, R, L, nvil.elbo(x, sample_size), nvil.log_prob_estimate(x, sample_size)):
        assert value.shape == batch_shape
        assert value.device.type == torch.device(device).type
    assert nvil(x, sample_size=sample_size)["loss"].dim() == 0


def test_sampling_shapes(device):
    """Do sample and cond_sample honour batch_size, sample_size and oversample?"""
    nvil = _image_nvil().to(device)
    x = torch.zeros(4, 1, 8, 8, device=device)
    assert nvil.sample(5).shape == (5, 1, 8, 8)
    assert nvil.sample(5, 3).shape == (3, 5, 1, 8, 8)
    assert nvil.sample(5, 3, oversample=True).shape == (3, 5, 1, 8, 8)
    assert nvil.cond_sample(x).shape == (4, 1, 8, 8)
    assert nvil.cond_sample(x, 2, oversample=True).shape == (2, 4, 1, 8, 8)


def test_exact_posterior_makes_every_estimate_exact():
    """With q equal to the exact posterior, do ELBO and the IS estimate equal log p(x) for any S?"""
    torch.manual_seed(SEED)
    nvil = make_nvil()
    x = sample_data(nvil.gen_model, 16)
    with torch.no_grad():
        exact = nvil.gen_model.exact_log_marginal(x)
        torch.testing.assert_close(closed_form_elbo(nvil, x), exact)
        for S in (1, 10, 1000):
            torch.testing.assert_close(nvil.log_prob_estimate(x, S), exact)


def test_importance_sampling_converges_to_the_exact_marginal():
    """For an imperfect q, is E[ELBO] <= E[L_1] <= E[L_10] <= E[L_1000] <= log p(x), with L_S -> log p(x)?"""
    torch.manual_seed(SEED)
    nvil = make_nvil(shift=0.4, scale_factor=1.6)
    x = sample_data(nvil.gen_model, 256)
    with torch.no_grad():
        exact = nvil.gen_model.exact_log_marginal(x).mean().item()
        elbo = closed_form_elbo(nvil, x).mean().item()
        means, ses = {}, {}
        for S in (1, 10, 100, 2000):
            runs = torch.stack([nvil.log_prob_estimate(x, S).mean() for _ in range(10)])
            means[S], ses[S] = runs.mean().item(), runs.std().item() / math.sqrt(10)
    gap = exact - elbo
    assert gap > 0.1, "the perturbed q should leave a visible gap"
    assert abs(means[1] - elbo) < NUM_SE * ses[1]  # one particle: the IS estimate is the ELBO
    assert means[1] < means[10] < means[100] <= means[2000] + NUM_SE * ses[2000]
    assert means[2000] <= exact + NUM_SE * ses[2000]
    assert exact - means[2000] < 0.05 * gap, "2000 particles should close 95% of the gap"


def test_monte_carlo_rate_and_distortion_are_unbiased():
    """Are the D and R of DRL unbiased for the closed-form E_q[-log p(x|z)] and KL?"""
    torch.manual_seed(SEED)
    nvil = make_nvil(shift=0.4, scale_factor=1.6)
    x = sample_data(nvil.gen_model, 8)
    S = 20000
    with torch.no_grad():
        D, R, _ = nvil.DRL(x, S)
        q, p = nvil.inf_model(x), nvil.gen_model.prior((8,))
        kl = torch.distributions.kl_divergence(q, p)
        z = q.sample((S,))
        nll = -nvil.gen_model.obs_model(z).log_prob(x)
        se = nll.std(0) / math.sqrt(S)
    torch.testing.assert_close(R, kl)
    exact_D = -(closed_form_elbo(nvil, x) + kl)
    assert ((D - exact_D).abs() < NUM_SE * se).all()


def test_chunked_sampling_bounds_memory(monkeypatch):
    """With a small memory cap, does DRL decode in chunks no larger than the cap and use all S draws?"""
    torch.manual_seed(SEED)
    nvil = _image_nvil()
    x = torch.zeros(10, 1, 8, 8)
    seen = []
    decoder = nvil.gen_model.cpd_net
    original = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda z: seen.append(z.shape[0]) or original(z))
    cap = 10 * 64 * 100  # room for 100 draws of the whole batch
    with torch.no_grad():
        D, R, L = nvil.DRL(x, sample_size=1050, max_elements=cap)
    assert seen == [100] * 10 + [50]
    assert torch.isfinite(L).all()


@pytest.mark.parametrize("estimator", ["reparam", "sfe"])
def test_gradient_estimators_are_unbiased(estimator):
    """Does the mean of many gradient estimates equal the exact gradient of the closed-form ELBO?"""
    torch.manual_seed(SEED)
    nvil = make_nvil(shift=0.3, scale_factor=1.4)
    x = sample_data(nvil.gen_model, 4)
    nvil.zero_grad()
    (-closed_form_elbo(nvil, x).mean()).backward()
    exact = _all_grads(nvil).clone()
    runs = _gradient_runs(nvil, x, estimator, sample_size=2000)
    mean, se = runs.mean(0), runs.std(0) / math.sqrt(REPEATS)
    assert ((mean - exact).abs() <= NUM_SE * se + 1e-6).all(), (mean - exact).abs().max()


def test_pathwise_and_score_function_agree_with_a_sampled_rate():
    """With a mixture prior (rate by Monte Carlo), do pathwise and score-function gradients agree?"""
    torch.manual_seed(SEED)
    nvil = _image_nvil(prior=MoGPriorNet(3, 2, lbound=-1, rbound=1))
    x = (torch.rand(4, 1, 8, 8) > 0.5).float()
    reparam = _gradient_runs(nvil, x, "reparam", sample_size=500)
    sfe = _gradient_runs(nvil, x, "sfe", sample_size=500)
    diff = reparam.mean(0) - sfe.mean(0)
    se = torch.sqrt(reparam.var(0) / REPEATS + sfe.var(0) / REPEATS)
    assert (diff.abs() <= NUM_SE * se + 1e-5).all(), (diff.abs() / (se + 1e-5)).max()


def test_mixture_posterior_takes_the_score_function_path():
    """Does a MoG q (no rsample) train by the score function, with gradients reaching q and p?"""
    torch.manual_seed(SEED)
    nvil = _image_nvil(q_type=functools.partial(MoGCPDNet, num_components=3))
    x = (torch.rand(4, 1, 8, 8) > 0.5).float()
    assert not nvil.inf_model(x).has_rsample
    nvil(x, sample_size=2)["loss"].backward()
    for name, p in nvil.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with pytest.raises(NotImplementedError, match="rsample"):
        nvil(x, estimator="reparam")


def test_rate_weight_scales_the_rate():
    """With rate_weight 0, is the pathwise loss the distortion alone?"""
    torch.manual_seed(SEED)
    nvil = _image_nvil()
    x = (torch.rand(4, 1, 8, 8) > 0.5).float()
    torch.manual_seed(1)
    out = nvil(x, rate_weight=0.0)
    assert out["loss"].item() == pytest.approx(out["D"], rel=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_sample_size_is_rejected(bad):
    """Does NVIL name sample_size when it is not a positive int?"""
    with pytest.raises(ValueError, match="sample_size"):
        _image_nvil().DRL(torch.zeros(2, 1, 8, 8), sample_size=bad)


def test_bad_inputs_are_rejected():
    """Are an unknown estimator and wrongly shaped data rejected with a clear message?"""
    nvil = _image_nvil()
    with pytest.raises(ValueError, match="estimator"):
        nvil(torch.zeros(2, 1, 8, 8), estimator="magic")
    with pytest.raises(ValueError, match="shape"):
        nvil(torch.zeros(2, 1, 9, 8))


def test_to_device_moves_every_component(device):
    """Does .to(device) move the prior, decoder, encoder and control variate state?"""
    nvil = _image_nvil(prior=MoGPriorNet(3, 2)).to(device)
    for name, t in list(nvil.named_parameters()) + list(nvil.named_buffers()):
        assert t.device.type == torch.device(device).type, name
    x = torch.zeros(2, 1, 8, 8, device=device)
    assert nvil(x)["loss"].device.type == torch.device(device).type
