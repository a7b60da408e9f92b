"""PPCA's closed forms against Bayes' rule and numerical integration."""

import math

import torch

from dpm_core import PPCA
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
