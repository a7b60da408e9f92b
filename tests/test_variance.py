"""Control variates: their arithmetic, their bias, and the variance they remove.

Statistical policy (one place): seed SEED; the variance of a gradient
estimator is the summed per-coordinate variance over REPEATS single-sample
estimates on a fixed model and batch; a control variate passes when it at
least halves that variance (MAX_RATIO). Bias checks average BIAS_REPEATS
estimates of BIAS_SAMPLES draws each and allow NUM_SE standard errors (over the
repeats) per coordinate.
"""

import copy
import math
from collections import OrderedDict

import pytest
import torch
import torch.distributions as td

from dpm_core import (
    NVIL,
    Baseline,
    BinarizedImageModel,
    CentredReward,
    CVChain,
    GaussianCPDNet,
    GaussianPriorNet,
    InferenceModel,
    JointDistribution,
    PriorNet,
    ScaledReward,
    SelfCritic,
    VarianceReduction,
)
from linear_gaussian import closed_form_elbo, make_nvil, sample_data

SEED, REPEATS, MAX_RATIO, NUM_SE = 0, 300, 0.5, 5.0
BIAS_REPEATS, BIAS_SAMPLES = 40, 1000
SIZE, LATENT, BATCH = 8, 3, 16


def _make_cv(name: str) -> VarianceReduction:
    return {
        "none": VarianceReduction,
        "centred": CentredReward,
        "scaled": ScaledReward,
        "self-critic": SelfCritic,
        "baseline": lambda: Baseline(SIZE * SIZE, 32),
        "chain": lambda: CVChain(CentredReward(), ScaledReward()),
    }[name]()


ALL_CVS = ["centred", "scaled", "self-critic", "baseline", "chain"]


def _nvil(cv: VarianceReduction) -> NVIL:
    torch.manual_seed(SEED)  # the same generative and inference model for every control variate
    nvil = NVIL(
        JointDistribution(GaussianPriorNet(LATENT), BinarizedImageModel(1, SIZE, SIZE, LATENT)),
        InferenceModel(GaussianCPDNet, LATENT, width=SIZE, height=SIZE, hidden_size=16),
        cv,
    )
    # a confident decoder, as after training: rewards of hundreds of nats that vary with z and x
    with torch.no_grad():
        nvil.gen_model.cpd_net.decoder[-2].weight.mul_(8.0)
    return nvil


def _data() -> torch.Tensor:
    gen = torch.Generator().manual_seed(SEED + 1)
    return (torch.rand(BATCH, 1, SIZE, SIZE, generator=gen) > 0.5).float()


def _warm_up(nvil: NVIL, x: torch.Tensor, steps: int = 300) -> None:
    """Let running statistics settle and fit trainable baselines, with p and q held fixed."""
    params = list(nvil.cv_params())
    opt = torch.optim.Adam(params, lr=1e-2) if params else None
    for _ in range(steps):
        out = nvil(x, estimator="sfe")
        if opt is not None:
            opt.zero_grad()
            out["loss"].backward()
            opt.step()


def _score_gradient_variance(nvil: NVIL, x: torch.Tensor) -> float:
    runs = []
    for _ in range(REPEATS):
        nvil.zero_grad()
        nvil(x, estimator="sfe")["loss"].backward()
        runs.append(torch.cat([p.grad.flatten() for p in nvil.inf_params()]))
    return torch.stack(runs).var(0).sum().item()


@pytest.fixture(scope="module")
def plain_variance() -> float:
    nvil, x = _nvil(_make_cv("none")), _data()
    return _score_gradient_variance(nvil, x)


@pytest.mark.parametrize("name", ALL_CVS)
def test_control_variate_lowers_score_function_variance(name, plain_variance):
    """On a fixed model and batch, does this control variate at least halve the gradient variance?"""
    nvil, x = _nvil(_make_cv(name)), _data()
    _warm_up(nvil, x)
    torch.manual_seed(SEED + 2)
    ratio = _score_gradient_variance(nvil, x) / plain_variance
    print(f"{name}: variance ratio {ratio:.4f}")
    assert ratio < MAX_RATIO


@pytest.mark.parametrize("name", ["centred", "self-critic", "baseline"])
def test_baselines_keep_the_gradient_unbiased(name):
    """With a baseline that ignores the sampled z, is the score-function gradient still exact on average?"""
    torch.manual_seed(SEED)
    cv = Baseline(6, 8, event_dims=1) if name == "baseline" else _make_cv(name)
    nvil = make_nvil(shift=0.3, scale_factor=1.4, cv_model=cv).double()
    x = sample_data(nvil.gen_model, 4)
    if name != "self-critic":
        _warm_up(nvil, x, steps=50)
    nvil.zero_grad()
    (-closed_form_elbo(nvil, x).mean()).backward()
    exact = torch.cat([p.grad.flatten() for p in nvil.inf_params()])
    runs = []
    for _ in range(40):
        nvil.zero_grad()
        nvil(x, sample_size=500, estimator="sfe")["loss"].backward()
        runs.append(torch.cat([p.grad.flatten() for p in nvil.inf_params()]))
    runs = torch.stack(runs)
    se = runs.std(0) / math.sqrt(len(runs))
    assert ((runs.mean(0) - exact).abs() <= NUM_SE * se + 1e-6).all()


def test_centred_reward_tracks_a_running_mean():
    """Does CentredReward subtract the previous running mean and then move it towards the batch mean?"""
    cv = CentredReward(alpha=0.25)
    r1 = torch.tensor([[2.0, 4.0]])
    out, loss = cv(r1)
    torch.testing.assert_close(out, r1)  # the running mean starts at 0
    assert cv.r_mean.item() == pytest.approx(0.25 * 3.0)
    out, _ = cv(torch.tensor([[10.0, 10.0]]))
    torch.testing.assert_close(out, torch.tensor([[10.0, 10.0]]) - 0.75)
    assert cv.r_mean.item() == pytest.approx(0.75 * 0.75 + 0.25 * 10.0)
    assert (loss == 0).all()
    cv.eval()
    cv(torch.tensor([[100.0]]))
    assert cv.r_mean.item() == pytest.approx(0.75 * 0.75 + 0.25 * 10.0), "eval must not update"


def test_scaled_reward_never_divides_by_less_than_one():
    """Does ScaledReward divide by its running std, floored at 1?"""
    cv = ScaledReward(alpha=1.0)
    cv(torch.tensor([0.0, 0.1]))
    assert cv.r_std.item() == 1.0
    cv(torch.tensor([0.0, 10.0]))
    out, _ = cv(torch.tensor([5.0, 5.0]))
    torch.testing.assert_close(out, torch.tensor([5.0, 5.0]) / torch.tensor([0.0, 10.0]).std())


def test_self_critic_subtracts_the_reward_of_a_fresh_draw():
    """Is SelfCritic's output r - r_fn(z', x) with z' a new draw from q of the reward's shape?"""
    q = td.Independent(td.Normal(torch.zeros(4, 2), torch.ones(4, 2)), 1)
    r = torch.randn(3, 4)
    seen = []

    def r_fn(z, x):
        seen.append(z.shape)
        return z.sum(-1)

    torch.manual_seed(SEED)
    out, loss = SelfCritic()(r, x=None, q=q, r_fn=r_fn)
    torch.manual_seed(SEED)
    torch.testing.assert_close(out, r - q.sample((3,)).sum(-1))
    assert seen == [torch.Size([3, 4, 2])]
    with pytest.raises(ValueError, match="r_fn"):
        SelfCritic()(r, x=None, q=q, r_fn=None)


def test_baseline_is_detached_from_the_reward_but_trained_by_its_loss():
    """Does Baseline return r - b(x) without gradient to b, and (r - b(x))^2 with it?"""
    torch.manual_seed(SEED)
    cv = Baseline(num_inputs=4, hidden_size=5)
    x, r = torch.randn(3, 1, 2, 2), torch.randn(2, 3)
    out, loss = cv(r, x)
    b = cv.baseline(x).squeeze(-1)
    torch.testing.assert_close(out, r - b)
    torch.testing.assert_close(loss, (r - b) ** 2)
    assert not out.requires_grad
    loss.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cv.parameters())


def test_chain_applies_in_order_and_adds_losses():
    """Does CVChain equal applying its members one after another, adding their losses?"""
    torch.manual_seed(SEED)
    x, r = torch.randn(3, 1, 2, 2), torch.randn(2, 3) * 10
    first, second = Baseline(4, 5), ScaledReward(alpha=0.5)
    second(torch.randn(50) * 7)  # give the scale a non-trivial state
    ref_first, ref_second = copy.deepcopy(first), copy.deepcopy(second)
    chain = CVChain(OrderedDict(base=first, scale=second))
    assert list(dict(chain.named_children())) == ["base", "scale"]
    out, loss = chain(r, x)
    r1, l1 = ref_first(r, x)
    r2, l2 = ref_second(r1, x)
    torch.testing.assert_close(out, r2)
    torch.testing.assert_close(loss, l1 + l2)


def test_chain_rejects_other_modules():
    """Does CVChain name a member that is not a control variate?"""
    with pytest.raises(ValueError, match="Linear"):
        CVChain(CentredReward(), torch.nn.Linear(2, 2))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_bad_alpha_is_rejected(bad):
    """Are running-average weights outside (0, 1] rejected by name?"""
    for cls in (CentredReward, ScaledReward):
        with pytest.raises(ValueError, match="alpha"):
            cls(alpha=bad)


@pytest.mark.parametrize("name", ALL_CVS)
def test_control_variates_move_to_the_device(name, device):
    """Do the control variates' buffers and parameters follow .to(device)?"""
    cv = _make_cv(name).to(device)
    for t in list(cv.parameters()) + list(cv.buffers()):
        assert t.device.type == torch.device(device).type


class _StandardNormalAsMixture(PriorNet):
    """N(0, I) written as a mixture of one component: the same density, no closed-form KL."""

    def forward(self, batch_shape) -> td.Distribution:
        shape = tuple(batch_shape) + (1,) + self.outcome_shape  # [B, 1, K]
        zeros = torch.zeros(shape, dtype=torch.float64)
        return td.MixtureSameFamily(td.Categorical(logits=zeros[..., 0]),
                                    td.Independent(td.Normal(zeros, torch.ones_like(zeros)), 1))


def _inference_gradients(nvil: NVIL, x: torch.Tensor) -> dict:
    """Exact gradients (ascent) of the batch means of E_q[log p(x|z)], KL(q || p) and the ELBO
    with respect to q's parameters, flattened, on the linear-Gaussian test bed."""
    params = list(nvil.inf_params())
    q = nvil.inf_model(x)
    m, v = q.base_dist.loc, q.base_dist.scale ** 2
    kl = 0.5 * (v + m ** 2 - 1 - torch.log(v)).sum(-1)  # KL(N(m, diag v) || N(0, I))
    elbo = closed_form_elbo(nvil, x)

    def grad(f):
        return torch.cat([g.flatten() for g in torch.autograd.grad(f.mean(), params,
                                                                   retain_graph=True)])

    return {"loglik": grad(elbo + kl), "kl": grad(kl), "elbo": grad(elbo)}


def _scaled_estimates(nvil: NVIL, x: torch.Tensor) -> dict:
    """BIAS_REPEATS score-function estimates (ascent) of NVIL's gradient, [repeats, P] for q's
    parameters and for p's."""
    runs = {"inf": [], "gen": []}
    for _ in range(BIAS_REPEATS):
        nvil.zero_grad()
        nvil(x, sample_size=BIAS_SAMPLES, estimator="sfe")["loss"].backward()
        for group, params in (("inf", nvil.inf_params()), ("gen", nvil.gen_params())):
            runs[group].append(-torch.cat([p.grad.flatten() for p in params]))
    return {group: torch.stack(r) for group, r in runs.items()}


def _within(runs: torch.Tensor, target: torch.Tensor) -> bool:
    """Is every coordinate of the average of ``runs`` within NUM_SE standard errors of ``target``?"""
    se = runs.std(0) / math.sqrt(len(runs))
    return bool(((runs.mean(0) - target).abs() <= NUM_SE * se + 1e-8).all())


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


#: the fixed scale s of the reward; measured at SEED: the expected update's cosine with the
#: ELBO gradient is 0.77 for s = 4 (0.98 for s = 2, 0.02 for s = 10)
SCALE = 4.0


def _scaled_nvil(mixture_prior: bool) -> NVIL:
    """NVIL on the test bed (q perturbed) with ScaledReward frozen at SCALE (eval: no update)."""
    torch.manual_seed(SEED)
    cv = ScaledReward()
    nvil = make_nvil(shift=0.3, scale_factor=1.4, cv_model=cv).double()
    if mixture_prior:
        nvil.gen_model.prior_net = _StandardNormalAsMixture(nvil.gen_model.prior_net.outcome_shape)
    with torch.no_grad():
        cv.r_std.fill_(SCALE)
    cv.eval()
    return nvil


def test_scaled_reward_with_a_closed_form_rate_is_an_implicit_beta_on_the_encoder():
    """With a closed-form KL, does ScaledReward (scale s) turn q's expected update into
    (1/s) grad E_q[log p(x|z)] - grad KL = (1/s) grad (E_q[log p(x|z)] - s KL): another direction
    than the ELBO gradient's (an implicit beta = s on the encoder), while p's gradient stays the
    ELBO's?"""
    nvil = _scaled_nvil(mixture_prior=False)
    x = sample_data(nvil.gen_model, 4)
    exact = _inference_gradients(nvil, x)
    implicit_beta = exact["loglik"] / SCALE - exact["kl"]
    nvil.zero_grad()
    closed_form_elbo(nvil, x).mean().backward()
    gen_exact = torch.cat([p.grad.flatten() for p in nvil.gen_params()])
    torch.manual_seed(SEED + 3)
    runs = _scaled_estimates(nvil, x)
    assert _within(runs["inf"], implicit_beta), "q's update is not (1/s) grad E[log p] - grad KL"
    assert _within(runs["gen"], gen_exact), "p's gradient must stay the ELBO's, unscaled"
    # not parallel to the ELBO gradient: neither in closed form ...
    assert _cosine(implicit_beta, exact["elbo"]) < 0.8
    # ... nor measured: no multiple of the ELBO gradient is within reach of the average
    mean = runs["inf"].mean(0)
    along = (mean @ exact["elbo"]) / (exact["elbo"] @ exact["elbo"]) * exact["elbo"]
    assert not _within(runs["inf"], along)
    assert _cosine(mean, exact["elbo"]) < 0.8 < 0.999 < _cosine(mean, implicit_beta)


def test_scaled_reward_with_a_sampled_rate_keeps_the_direction_of_the_elbo_gradient():
    """With a sampled rate the whole learning signal of q is in the reward: does ScaledReward
    (scale s) then give q the expected update (1/s) grad ELBO, parallel to the ELBO gradient?"""
    nvil = _scaled_nvil(mixture_prior=True)
    x = sample_data(nvil.gen_model, 4)
    exact = _inference_gradients(nvil, x)
    torch.manual_seed(SEED + 3)
    runs = _scaled_estimates(nvil, x)
    assert _within(runs["inf"], exact["elbo"] / SCALE)
    assert _cosine(runs["inf"].mean(0), exact["elbo"]) > 0.99
