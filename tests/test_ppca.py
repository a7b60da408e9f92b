"""PPCA's closed forms against Bayes' rule and numerical integration."""

import math

import torch
import torch.distributions as td

from dpm_core import PPCA
from dpm_core.ppca import e_step, m_step
from linear_gaussian import make_ppca, sample_data


def test_marginal_and_posterior_satisfy_bayes_rule():
    """Does log p(x) = log p(z, x) - log p(z|x) hold for arbitrary z?"""
    model = make_ppca()
    x = sample_data(model, 7)
    z = torch.randn(3, 7, model.cpd_net.latent_size, dtype=torch.float64)
    with torch.no_grad():
        via_bayes = model.log_prob(z, x) - model.exact_posterior(x).log_prob(z)
        exact = model.exact_log_marginal(x).expand(3, 7)
    torch.testing.assert_close(via_bayes, exact)


def test_marginal_matches_numerical_integration():
    """With a 1-D latent, does the closed-form p(x) equal the integral of p(z) p(x|z) on a grid?"""
    torch.manual_seed(0)
    model = PPCA(data_size=3, latent_size=1, sigma=0.8).double()
    x = sample_data(model, 4)
    grid = torch.linspace(-12, 12, 20001, dtype=torch.float64).unsqueeze(-1)  # [G, 1]
    with torch.no_grad():
        log_joint = model.log_prob(grid.unsqueeze(1).expand(-1, 4, -1), x)  # [G, 4]
        dz = (grid[1] - grid[0]).item()
        numeric = torch.logsumexp(log_joint, dim=0) + math.log(dz)
        exact = model.exact_log_marginal(x)
    torch.testing.assert_close(numeric, exact, rtol=0, atol=1e-6)


def test_posterior_is_diagonal_for_orthogonal_columns():
    """Is the exact posterior covariance diagonal when W has orthogonal columns (the test setup)?"""
    model = make_ppca()
    cov = model.exact_posterior(sample_data(model, 2)).covariance_matrix[0]
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    assert off_diagonal.abs().max() < 1e-12


def _ml_ppca(x: torch.Tensor, latent_size: int) -> tuple:
    """The maximum-likelihood (W W^T, b, sigma^2) of PPCA in closed form (Tipping & Bishop)."""
    xc = x - x.mean(0)
    eigvals, eigvecs = torch.linalg.eigh(xc.T @ xc / len(x))  # ascending
    eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(-1)
    s2 = eigvals[latent_size:].mean()
    W = eigvecs[:, :latent_size] * (eigvals[:latent_size] - s2).sqrt()
    return W @ W.T, x.mean(0), s2


def _em_data(seed: int = 0, n: int = 500) -> tuple:
    """A PPCA with a correlated W (D = 6, K = 2) and n observations from it (float64)."""
    torch.manual_seed(seed)
    model = PPCA(6, 2, sigma=0.5).double()
    with torch.no_grad():
        model.cpd_net.b.normal_()
    return model, model.sample((n,))[1].detach()


def test_e_step_gives_the_exact_posterior_moments():
    """Are E[z|x] and E[z z^T|x] the mean and the second moment of PPCA's exact posterior?"""
    model = make_ppca()
    x = sample_data(model, 7)
    cpd = model.cpd_net
    with torch.no_grad():
        Ez, Ezz = e_step(x, cpd.W, cpd.b, cpd.sigma)
        post = model.exact_posterior(x)
    torch.testing.assert_close(Ez, post.mean)
    outer = post.mean.unsqueeze(-1) * post.mean.unsqueeze(-2)  # [7, K, K]
    torch.testing.assert_close(Ezz, post.covariance_matrix + outer)


def test_ml_solution_is_a_fixed_point_of_em():
    """Does one EM step from the closed-form ML solution leave W W^T, b and sigma as they are?"""
    _, x = _em_data()
    WWt, b, s2 = _ml_ppca(x, 2)
    eigvals, eigvecs = torch.linalg.eigh(WWt)
    W = eigvecs[:, -2:] * eigvals[-2:].sqrt()
    W_new, b_new, sigma_new = m_step(x, *e_step(x, W, b, s2.sqrt()))
    torch.testing.assert_close(W_new @ W_new.T, WWt)
    torch.testing.assert_close(b_new, b)
    torch.testing.assert_close(sigma_new ** 2, s2)


def test_m_step_maximises_the_expected_complete_log_likelihood():
    """With the E-step's moments under b = mean of x (as after EM's first step), is the gradient of
    sum_n E_q[log p(z_n, x_n)] zero at the M-step's W, b and sigma?"""
    _, x = _em_data(seed=1, n=50)
    gen = torch.Generator().manual_seed(1)
    W0 = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    Ez, Ezz = e_step(x, W0, x.mean(0), 1.3)
    W, b, sigma = (t.clone().requires_grad_(True) for t in m_step(x, Ez, Ezz))
    s2 = sigma ** 2
    # E[||x - W z - b||^2] = ||x - b||^2 - 2 E[z]^T W^T (x - b) + tr(E[z z^T] W^T W)
    xc = x - b
    sq = (xc ** 2).sum(-1) - 2 * (Ez * (xc @ W)).sum(-1) + (Ezz * (W.T @ W)).sum((-2, -1))
    expected = (-0.5 * sq / s2 - 0.5 * x.shape[1] * torch.log(s2)).sum()
    grads = torch.autograd.grad(expected, (W, b, sigma))
    for g in grads:
        torch.testing.assert_close(g, torch.zeros_like(g), rtol=0, atol=1e-8)


def test_em_increases_the_likelihood_and_reaches_the_ml_solution():
    """From a random start, does EM never decrease log p(x) and end at the closed-form ML value?"""
    _, x = _em_data(seed=2)
    WWt, b_ml, s2_ml = _ml_ppca(x, 2)
    eye = torch.eye(6, dtype=torch.float64)
    best = td.MultivariateNormal(b_ml, WWt + s2_ml * eye).log_prob(x).mean()
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    b, sigma = torch.zeros(6, dtype=torch.float64), 1.0
    history = []
    for _ in range(300):
        history.append(td.MultivariateNormal(b, W @ W.T + sigma ** 2 * eye).log_prob(x).mean())
        W, b, sigma = m_step(x, *e_step(x, W, b, sigma))
    history = torch.stack(history)
    assert (history.diff() > -1e-10).all()
    torch.testing.assert_close(history[-1], best, rtol=0, atol=1e-6)
    torch.testing.assert_close(W @ W.T, WWt, rtol=0, atol=1e-3)
