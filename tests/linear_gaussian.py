"""Linear-Gaussian (PPCA) fixtures with exact answers, shared by the estimator tests.

With p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I) and a diagonal Gaussian
q(z|x) = N(m, diag(v)), everything is closed-form:

    ELBO = log N(x | W m + b, s^2 I) - tr(W diag(v) W^T) / (2 s^2) - KL(q || p)

When W has orthogonal columns, the exact posterior is diagonal, so a
:class:`GaussianCPDNet` without hidden layer can represent it exactly.
"""

from __future__ import annotations

import torch
import torch.distributions as td

from dpm_core import NVIL, PPCA, GaussianCPDNet

DATA_SIZE = 6
LATENT_SIZE = 2
SIGMA = 0.7


def make_ppca(seed: int = 0, data_size: int = DATA_SIZE, latent_size: int = LATENT_SIZE,
              sigma: float = SIGMA) -> PPCA:
    """A PPCA model whose W has orthogonal columns of different lengths (float64)."""
    gen = torch.Generator().manual_seed(seed)
    model = PPCA(data_size, latent_size, sigma).double()
    basis, _ = torch.linalg.qr(torch.randn(data_size, latent_size, generator=gen,
                                           dtype=torch.float64))
    lengths = torch.linspace(1.5, 3.0, latent_size, dtype=torch.float64)
    with torch.no_grad():
        model.cpd_net.W.copy_(basis * lengths)
        model.cpd_net.b.copy_(torch.randn(data_size, generator=gen, dtype=torch.float64))
    return model


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def posterior_q(model: PPCA, shift: float = 0.0, scale_factor: float = 1.0) -> GaussianCPDNet:
    """A GaussianCPDNet (affine in x) equal to the exact posterior, optionally perturbed.

    Args:
        shift: added to every posterior mean.
        scale_factor: multiplies every posterior standard deviation.
    """
    W, b, s2 = model.cpd_net.W, model.cpd_net.b, model.cpd_net.sigma ** 2
    K = W.shape[1]
    M = W.T @ W + s2 * torch.eye(K, dtype=W.dtype)
    A = torch.linalg.solve(M, W.T)  # posterior mean = A (x - b)
    std = torch.sqrt(torch.diagonal(s2 * torch.linalg.inv(M)))
    q = GaussianCPDNet(K, num_inputs=W.shape[0], hidden_size=None).double()
    with torch.no_grad():
        q.locs[1].weight.copy_(A)
        q.locs[1].bias.copy_(-A @ b + shift)
        q.scales[1].weight.zero_()
        q.scales[1].bias.copy_(_inverse_softplus(std * scale_factor))
    return q


def make_nvil(seed: int = 0, shift: float = 0.0, scale_factor: float = 1.0, cv_model=None) -> NVIL:
    """NVIL over a PPCA model with a (perturbed) exact-posterior q."""
    model = make_ppca(seed)
    return NVIL(model, posterior_q(model, shift, scale_factor), cv_model)


def sample_data(model: PPCA, n: int, seed: int = 1) -> torch.Tensor:
    """n draws from the model's exact marginal p(x)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.marginal().sample((n,))


def closed_form_elbo(nvil: NVIL, x: torch.Tensor) -> torch.Tensor:
    """The exact ELBO of each x (differentiable in all parameters), shape ``x.shape[:-1]``."""
    cpd = nvil.gen_model.cpd_net
    W, b, s = cpd.W, cpd.b, cpd.sigma
    q = nvil.inf_model(x)
    m, v = q.base_dist.loc, q.base_dist.scale ** 2
    expected_loglik = td.Independent(td.Normal(m @ W.T + b, s.expand(x.shape)), 1).log_prob(x)
    expected_loglik = expected_loglik - (v @ (W ** 2).T).sum(-1) / (2 * s ** 2)
    kl = 0.5 * (v + m ** 2 - 1 - torch.log(v)).sum(-1)
    return expected_loglik - kl


__all__ = ["make_ppca", "posterior_q", "make_nvil", "sample_data", "closed_form_elbo",
           "DATA_SIZE", "LATENT_SIZE", "SIGMA"]
