"""The closed-form Gaussian KLs against torch.distributions and Monte Carlo.

Statistical policy: seed 0; Monte Carlo checks use 200_000 draws and accept a
deviation of at most 5 standard errors of the Monte Carlo mean.
"""

import pytest
import torch
import torch.distributions as td

from dpm_core import KL, MoGPriorNet, kl_or_mc, mc_kl
from dpm_core.kl import KL_full

SEED, NUM_DRAWS, NUM_SE = 0, 200_000, 5.0


def _diag_gaussian(mu, logvar):
    return td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)


def _standard(mu):
    return td.Independent(td.Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)


@pytest.mark.parametrize("shape", [(3,), (5, 3), (2, 4, 3)])
def test_closed_form_equals_torch(shape, device):
    """Does KL(mu, logvar) equal td.kl_divergence(N(mu, sigma^2) || N(0, I)) for any batch shape?"""
    torch.manual_seed(SEED)
    mu = torch.randn(shape, device=device) * 2
    logvar = torch.randn(shape, device=device)
    expected = td.kl_divergence(_diag_gaussian(mu, logvar), _standard(mu))
    result = KL(mu, logvar)
    assert result.shape == shape[:-1]
    torch.testing.assert_close(result, expected)


def test_closed_form_gradients_equal_torch():
    """Do the gradients of KL(mu, logvar) with respect to mu and logvar equal torch's?"""
    torch.manual_seed(SEED)
    mu = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    ours = torch.autograd.grad(KL(mu, logvar).sum(), (mu, logvar))
    theirs = torch.autograd.grad(
        td.kl_divergence(_diag_gaussian(mu, logvar), _standard(mu)).sum(), (mu, logvar))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_closed_form_within_monte_carlo_interval():
    """Does the closed form lie within the confidence interval of E_q[log q(z) - log p(z)]?"""
    torch.manual_seed(SEED)
    mu, logvar = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.3, -0.7, 1.1]])
    q, p = _diag_gaussian(mu, logvar), _standard(mu)
    z = q.sample((NUM_DRAWS,))
    terms = q.log_prob(z) - p.log_prob(z)  # [N, 1]
    se = terms.std(0) / NUM_DRAWS ** 0.5
    assert (terms.mean(0) - KL(mu, logvar)).abs().item() < NUM_SE * se.item()


def test_kl_is_zero_only_at_the_prior():
    """Is the KL zero at mu=0, logvar=0 and positive elsewhere?"""
    zeros = torch.zeros(1, 4)
    assert KL(zeros, zeros).item() == 0.0
    assert KL(zeros + 0.1, zeros).item() > 0
    assert KL(zeros, zeros - 0.1).item() > 0


def test_mismatched_shapes_are_rejected():
    """Does KL name the problem when mu and logvar have different shapes?"""
    with pytest.raises(ValueError, match="same shape"):
        KL(torch.zeros(2, 3), torch.zeros(2, 4))


def test_mc_kl_agrees_with_closed_form():
    """Is mc_kl an unbiased estimate of a KL that torch knows in closed form?"""
    torch.manual_seed(SEED)
    q = _diag_gaussian(torch.tensor([[1.0, -0.5]]), torch.tensor([[0.2, -0.4]]))
    p = _diag_gaussian(torch.tensor([[0.3, 0.3]]), torch.tensor([[0.5, 0.1]]))
    z = q.sample((NUM_DRAWS,))
    estimate = mc_kl(q, p, z=z)
    se = (q.log_prob(z) - p.log_prob(z)).std(0) / NUM_DRAWS ** 0.5
    assert (estimate - td.kl_divergence(q, p)).abs().item() < NUM_SE * se.item()


def test_kl_or_mc_uses_the_closed_form_when_registered():
    """Does kl_or_mc return exactly td.kl_divergence for a registered pair?"""
    q = _diag_gaussian(torch.ones(2, 3), torch.zeros(2, 3))
    p = _standard(torch.ones(2, 3))
    torch.testing.assert_close(kl_or_mc(q, p), td.kl_divergence(q, p))


def test_kl_or_mc_falls_back_for_mixtures():
    """For a mixture prior (no closed form) is kl_or_mc a finite estimate near a large-sample one?"""
    torch.manual_seed(SEED)
    p = MoGPriorNet(2, 3, lbound=-2, rbound=2)((4,))
    q = _diag_gaussian(torch.randn(4, 2), torch.zeros(4, 2))
    with pytest.raises(NotImplementedError):
        td.kl_divergence(q, p)
    with torch.no_grad():
        z = q.sample((NUM_DRAWS,))
        terms = q.log_prob(z) - p.log_prob(z)
        estimate = kl_or_mc(q, p, num_samples=NUM_DRAWS)
    se = terms.std(0) / NUM_DRAWS ** 0.5
    assert estimate.shape == (4,)
    assert ((estimate - terms.mean(0)).abs() < 2 * NUM_SE * se).all()


def _cholesky_factor(*shape, generator, dtype=torch.float64, device="cpu"):
    """A random lower-triangular matrix [*shape, K, K] with a positive diagonal in [0.5, 1.5]."""
    off = torch.randn(*shape, shape[-1], generator=generator, dtype=dtype).tril(-1)
    diag = 0.5 + torch.rand(*shape, generator=generator, dtype=dtype)
    return (off + torch.diag_embed(diag)).to(device)


def _mvn(mu, L):
    return td.MultivariateNormal(mu, scale_tril=L)


#: (batch shape of q, batch shape of p, K): equal, broadcast either way, none, K = 1
FULL_SHAPES = [((), (), 3), ((5,), (5,), 4), ((3, 5), (), 2), ((), (2, 3), 3), ((4, 1), (1, 6), 2),
               ((7,), (7,), 1)]


@pytest.mark.parametrize("q_shape,p_shape,K", FULL_SHAPES)
def test_full_covariance_equals_torch(q_shape, p_shape, K, device):
    """Does KL_full equal td.kl_divergence of two MultivariateNormals, batch shapes broadcast?"""
    gen = torch.Generator().manual_seed(SEED)
    mu_q = torch.randn(*q_shape, K, generator=gen, dtype=torch.float64).to(device)
    mu_p = torch.randn(*p_shape, K, generator=gen, dtype=torch.float64).to(device)
    L_q = _cholesky_factor(*q_shape, K, generator=gen, device=device)
    L_p = _cholesky_factor(*p_shape, K, generator=gen, device=device)
    result = KL_full(mu_q, L_q, mu_p, L_p)
    expected = td.kl_divergence(_mvn(mu_q, L_q), _mvn(mu_p, L_p))
    assert result.shape == torch.broadcast_shapes(q_shape, p_shape)
    torch.testing.assert_close(result, expected)


def test_full_covariance_gradients_equal_torch():
    """Are KL_full's gradients with respect to both means and the lower triangles of both
    factors those of td.kl_divergence?"""
    gen = torch.Generator().manual_seed(SEED)
    args = [torch.randn(4, 3, generator=gen, dtype=torch.float64),
            _cholesky_factor(4, 3, generator=gen),
            torch.randn(4, 3, generator=gen, dtype=torch.float64),
            _cholesky_factor(4, 3, generator=gen)]
    args = [a.requires_grad_() for a in args]
    ours = torch.autograd.grad(KL_full(*args).sum(), args)
    theirs = torch.autograd.grad(
        td.kl_divergence(_mvn(args[0], args[1]), _mvn(args[2], args[3])).sum(), args)
    for a, b, arg in zip(ours, theirs, args):
        if arg.dim() == 3:  # only the lower triangle is a parameter of a Cholesky factor
            a, b = a.tril(), b.tril()
        torch.testing.assert_close(a, b)


def test_full_covariance_reduces_to_the_diagonal_case():
    """With diagonal factors and p = N(0, I), is KL_full the mean-field KL(mu, logvar)?"""
    gen = torch.Generator().manual_seed(SEED)
    mu = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    logvar = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    L_q = torch.diag_embed((0.5 * logvar).exp())
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(KL_full(mu, L_q, torch.zeros(4, dtype=torch.float64), eye),
                               KL(mu, logvar))


def test_full_covariance_is_zero_only_for_equal_gaussians():
    """Is KL_full(q || q) zero, and positive when the mean or the factor moves?"""
    gen = torch.Generator().manual_seed(SEED)
    mu, L = torch.randn(3, generator=gen, dtype=torch.float64), _cholesky_factor(3, generator=gen)
    torch.testing.assert_close(KL_full(mu, L, mu, L), torch.zeros((), dtype=torch.float64))
    assert KL_full(mu + 0.1, L, mu, L) > 0
    assert KL_full(mu, 1.1 * L, mu, L) > 0


def test_full_covariance_rejects_factors_of_the_wrong_shape():
    """Does KL_full name the factor whose shape does not fit its mean?"""
    with pytest.raises(ValueError, match="Cholesky factor of p"):
        KL_full(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(2))
    with pytest.raises(ValueError, match="Cholesky factor of q"):
        KL_full(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.eye(3))
