"""NVIL's mixture estimator: score function for a MoG q's weights, pathwise for its components.

The reference is a PPCA model with a MoG q(z|x), whose exact ELBO gradient comes from
Gauss-Hermite quadrature of each component's expectation (QUADRATURE_NODES per dimension).

Statistical policy (one place): every stochastic test seeds torch with SEED.
Unbiasedness: REPEATS independent gradient estimates, each averaging SAMPLES draws,
match the exact gradient within NUM_SE standard errors (measured from the repeats) in
every coordinate; with 124 coordinates and 39 degrees of freedom, 5 standard errors
leave a chance of about 0.2% that a correct estimator fails at another seed.
Variance: the summed per-coordinate variance of VAR_REPEATS single-sample gradients
for q's parameters on a fixed model and batch; the mixture estimator passes when that
is MIN_RATIO times smaller than the score function's (measured: about 7).
"""

import functools
import math

import numpy as np
import pytest
import torch
import torch.distributions as td

import dpm_core.nvil
from dpm_core import (
    NVIL,
    BinarizedImageModel,
    CentredReward,
    GaussianCPDNet,
    GaussianPriorNet,
    InferenceModel,
    JointDistribution,
    MoGCPDNet,
    OptCollection,
    SelfCritic,
    train_vae,
)
from dpm_core.conditionals import CPDNet
from dpm_core.data import ImageData
from linear_gaussian import LATENT_SIZE, make_ppca, sample_data

SEED, NUM_SE, REPEATS, SAMPLES = 0, 5.0, 40, 2000
VAR_REPEATS, MIN_RATIO = 300, 3.0
#: Gauss-Hermite nodes per latent dimension for the reference ELBO
QUADRATURE_NODES = 40
COMPONENTS, SIZE, LATENT = 3, 8, 3


# ------------------------------------------------------------------------------ a MoG q on PPCA


def _mog_nvil(cv=None) -> NVIL:
    """PPCA (float64) and a MoG q(z|x), affine in x, with components apart and unequal weights."""
    torch.manual_seed(SEED)
    model = make_ppca()
    q = MoGCPDNet(LATENT_SIZE, num_inputs=model.cpd_net.W.shape[0], hidden_size=None,
                  num_components=COMPONENTS).double()
    with torch.no_grad():
        q.locs[1].weight.mul_(0.3)
        q.locs[1].bias.copy_(torch.linspace(-1.0, 1.0, COMPONENTS * LATENT_SIZE,
                                            dtype=torch.float64))
        q.scales[1].weight.mul_(0.1)
        q.scales[1].bias.fill_(-0.5)  # scales near softplus(-0.5) = 0.47
        q.logits[1].bias.copy_(torch.linspace(-1.0, 1.0, COMPONENTS, dtype=torch.float64))
    return NVIL(model, q, cv, estimator="mixture")


def _quadrature_elbo(nvil: NVIL, x: torch.Tensor) -> torch.Tensor:
    """ELBO(x) = sum_m w_m E_{q_m}[log p(x, z) - log q(z|x)] by Gauss-Hermite quadrature, shape [B].

    log p(x, z) is quadratic in z, so the quadrature is exact for it; log q(z|x) is smooth.
    Differentiable in every parameter of p and q.
    """
    qz = nvil.inf_model(x)
    comps = qz.component_distribution.base_dist
    t, w = np.polynomial.hermite.hermgauss(QUADRATURE_NODES)
    t, w = torch.from_numpy(t), torch.from_numpy(w) / math.sqrt(math.pi)
    # tensor-product grid over the K latent dimensions: [N, K] nodes, [N] weights
    grid = torch.cartesian_prod(*[t] * LATENT_SIZE).reshape(-1, LATENT_SIZE)
    weight = torch.cartesian_prod(*[w] * LATENT_SIZE).reshape(-1, LATENT_SIZE).prod(-1)
    loc, scale = comps.loc.transpose(0, 1), comps.scale.transpose(0, 1)  # [M, B, K]
    z = loc + scale * math.sqrt(2.0) * grid[:, None, None, :]  # [N, M, B, K]
    f = nvil.log_prob(z, x) - qz.log_prob(z)  # [N, M, B]
    per_component = (weight[:, None, None] * f).sum(0)  # [M, B]
    return (qz.mixture_distribution.probs.T * per_component).sum(0)  # [B]


def _grads(nvil: NVIL) -> dict:
    return {name: p.grad.clone() for name, p in nvil.named_parameters()}


def test_quadrature_reference_matches_monte_carlo():
    """Is the quadrature ELBO, the reference below, the Monte Carlo ELBO of the MoG q?"""
    nvil = _mog_nvil()
    x = sample_data(nvil.gen_model, 4)
    torch.manual_seed(SEED)
    with torch.no_grad():
        exact = _quadrature_elbo(nvil, x)
        qz, S = nvil.inf_model(x), 200_000
        z = qz.sample((S,))
        f = nvil.log_prob(z, x) - qz.log_prob(z)  # [S, B]
    assert ((f.mean(0) - exact).abs() <= NUM_SE * f.std(0) / math.sqrt(S)).all()


@pytest.mark.parametrize("cv", [None, CentredReward, SelfCritic])
def test_mixture_estimator_is_unbiased(cv):
    """Is the mean of many mixture-estimator gradients the exact ELBO gradient, for the weight
    logits, the component locations and scales, and the generative parameters W, b and sigma,
    with or without a baseline for the weights' score term?"""
    nvil = _mog_nvil(cv() if cv else None)
    x = sample_data(nvil.gen_model, 4)
    nvil.zero_grad()
    (-_quadrature_elbo(nvil, x).mean()).backward()
    exact = _grads(nvil)
    torch.manual_seed(SEED)
    runs = []
    for _ in range(REPEATS):
        nvil.zero_grad()
        nvil(x, sample_size=SAMPLES)["loss"].backward()
        runs.append(_grads(nvil))
    for name, value in exact.items():
        stacked = torch.stack([run[name] for run in runs])
        mean, se = stacked.mean(0), stacked.std(0) / math.sqrt(REPEATS)
        assert ((mean - value).abs() <= NUM_SE * se + 1e-8).all(), \
            f"{name}: {((mean - value).abs() / se).max():.1f} standard errors off"
    # the check has teeth: in every group the exact gradient is far from 0 (dropping the
    # score term, for one, moves the logits' mean by thousands of standard errors)
    for name in ("inf_model.logits.1.bias", "inf_model.locs.1.bias", "inf_model.scales.1.bias",
                 "gen_model.cpd_net.W", "gen_model.cpd_net.b", "gen_model.cpd_net.raw_sigma"):
        se = torch.stack([run[name] for run in runs]).std(0) / math.sqrt(REPEATS)
        assert (exact[name].abs() > 10 * se).any(), name


# ---------------------------------------------------------------------------- variance, image model


def _image_nvil(cv=None, estimator: str = "mixture", confident: bool = True) -> NVIL:
    torch.manual_seed(SEED)  # the same generative and inference model for every estimator
    nvil = NVIL(
        JointDistribution(GaussianPriorNet(LATENT), BinarizedImageModel(1, SIZE, SIZE, LATENT)),
        InferenceModel(functools.partial(MoGCPDNet, num_components=COMPONENTS), LATENT,
                       width=SIZE, height=SIZE, hidden_size=16),
        cv, estimator=estimator,
    )
    if confident:
        # a confident decoder, as after training: rewards of hundreds of nats that vary with z and x
        with torch.no_grad():
            nvil.gen_model.cpd_net.decoder[-2].weight.mul_(8.0)
    return nvil


def _images(n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(SEED + 1)
    return (torch.rand(n, 1, SIZE, SIZE, generator=gen) > 0.5).float()


def _q_gradient_variance(nvil: NVIL, x: torch.Tensor, estimator: str) -> float:
    torch.manual_seed(SEED + 2)
    runs = []
    for _ in range(VAR_REPEATS):
        nvil.zero_grad()
        nvil(x, estimator=estimator)["loss"].backward()
        runs.append(torch.cat([p.grad.flatten() for p in nvil.inf_params()]))
    return torch.stack(runs).var(0).sum().item()


def test_mixture_estimator_has_lower_variance_than_the_score_function():
    """On a fixed model and batch, does the mixture estimator have a much smaller gradient variance
    for q's parameters than the plain score function (both without control variates, S = 1)?"""
    nvil, x = _image_nvil(), _images(16)
    ratio = (_q_gradient_variance(nvil, x, "sfe")
             / _q_gradient_variance(nvil, x, "mixture"))
    # measured: 7.1 at SEED = 0 (6.7 to 9.9 at seeds 1 to 3), VAR_REPEATS = 300; what is left is
    # mostly the weights' score term, which a control variate would shrink further
    assert ratio > MIN_RATIO


# ---------------------------------------------------------------------------- training, errors


def test_train_vae_trains_with_the_model_estimator(monkeypatch):
    """Does train_vae, which passes no estimator, train a NVIL(estimator="mixture") with the mixture
    estimator, and does its ELBO rise over 60 steps on random images to within half a nat of the
    best model of fair-coin pixels (ELBO -64 log 2)?"""
    calls = []
    original = dpm_core.nvil._mixture_rsample
    monkeypatch.setattr(dpm_core.nvil, "_mixture_rsample",
                        lambda qz, shape: calls.append(shape) or original(qz, shape))
    nvil = _image_nvil(confident=False)
    torch.manual_seed(SEED)
    pixels = torch.randint(0, 2, (256, 1, SIZE, SIZE), dtype=torch.uint8) * 255
    data = ImageData(pixels, torch.zeros(256, dtype=torch.int64), binarize="static")
    opts = OptCollection(torch.optim.Adam(nvil.gen_params(), lr=1e-2),
                         torch.optim.Adam(nvil.inf_params(), lr=1e-2))
    log = train_vae(nvil, opts, data, data.subset(torch.arange(8)), batch_size=32,
                    num_epochs=100, check_every=1000, sample_size_eval=1, device="cpu",
                    max_steps=60, progress=False, threads=None,
                    generator=torch.Generator().manual_seed(SEED))
    assert len(calls) == 60, "every training step should draw z by the mixture estimator"
    elbo = [value for _, value in log["training.ELBO"]]
    assert np.isfinite(elbo).all()
    # measured at SEED = 0: -46.4 over the first 10 steps, -44.3 over the last 10
    assert np.mean(elbo[-10:]) > np.mean(elbo[:10]) + 1.0
    assert np.mean(elbo[-10:]) > -SIZE * SIZE * math.log(2) - 0.5


class _BernoulliMixtureNet(CPDNet):
    """A mixture whose components (Bernoulli) have no rsample."""

    def __init__(self):
        super().__init__(LATENT)
        self.logits = torch.nn.Linear(SIZE * SIZE, COMPONENTS * LATENT)

    def forward(self, x):
        logits = self.logits(x.flatten(-3)).unflatten(-1, (COMPONENTS, LATENT))
        return td.MixtureSameFamily(td.Categorical(logits=logits.new_zeros(COMPONENTS)),
                                    td.Independent(td.Bernoulli(logits=logits), 1))


@pytest.mark.parametrize("q", ["gaussian", "bernoulli-mixture"])
def test_mixture_estimator_rejects_other_posteriors(q):
    """For a q that is no mixture of reparameterisable components, does estimator="mixture" say so
    and name the estimators to use instead?"""
    torch.manual_seed(SEED)
    inf = (InferenceModel(GaussianCPDNet, LATENT, width=SIZE, height=SIZE, hidden_size=16)
           if q == "gaussian" else _BernoulliMixtureNet())
    nvil = NVIL(JointDistribution(GaussianPriorNet(LATENT),
                                  BinarizedImageModel(1, SIZE, SIZE, LATENT)), inf)
    with pytest.raises(NotImplementedError, match="MixtureSameFamily.*rsample.*'auto'"):
        nvil(_images(2), estimator="mixture")


def test_model_estimator_is_the_default_and_can_be_overridden():
    """Does forward use the model's estimator when given none, and the given one otherwise?"""
    nvil, x = _image_nvil(estimator="mixture"), _images(4)
    torch.manual_seed(SEED)
    by_default = nvil(x)["loss"]
    torch.manual_seed(SEED)
    torch.testing.assert_close(nvil(x, estimator="mixture")["loss"], by_default)
    nvil.zero_grad()
    by_default.backward()
    mixture = torch.cat([p.grad.flatten() for p in nvil.inf_params()])
    torch.manual_seed(SEED)
    nvil.zero_grad()
    nvil(x, estimator="sfe")["loss"].backward()
    assert not torch.allclose(torch.cat([p.grad.flatten() for p in nvil.inf_params()]), mixture)
    assert NVIL(nvil.gen_model, nvil.inf_model).estimator == "auto"
    with pytest.raises(ValueError, match="estimator"):
        NVIL(nvil.gen_model, nvil.inf_model, estimator="magic")
