"""KL divergences: closed forms for Gaussians and a Monte Carlo fallback."""

from __future__ import annotations

import torch
import torch.distributions as td
from torch import Tensor

__all__ = ["KL", "KL_full", "mc_kl", "kl_or_mc"]


def KL(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in closed form.

    Per coordinate, KL(N(m, s^2) || N(0, 1)) = 0.5 * (s^2 + m^2 - 1 - log s^2)
    (Kingma & Welling, 2014, appendix B); the coordinates are independent, so
    their KLs add up over the last dimension.

    Args:
        mu: locations, shape ``batch_shape + [K]``.
        logvar: log-variances, same shape.

    Returns:
        The divergence per batch element, shape ``batch_shape``.

    Raises:
        ValueError: if the shapes differ.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} "
                         f"and {tuple(logvar.shape)}")
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)


def KL_full(mu_q: Tensor, L_q: Tensor, mu_p: Tensor, L_p: Tensor) -> Tensor:
    """KL(N(mu_q, L_q L_q^T) || N(mu_p, L_p L_p^T)) of two full-covariance Gaussians.

    Each covariance is given by its Cholesky factor, a lower-triangular matrix with a
    positive diagonal; the leading (batch) dimensions of q and p broadcast against each
    other, and may be none.

    With Sigma = L L^T, KL = 0.5 * [tr(Sigma_p^{-1} Sigma_q) + (mu_p - mu_q)^T Sigma_p^{-1}
    (mu_p - mu_q) - K + log det Sigma_p - log det Sigma_q]. Two triangular solves give every
    term without an inverse: with M = L_p^{-1} L_q, tr(Sigma_p^{-1} Sigma_q) = ||M||_F^2; with
    y = L_p^{-1} (mu_p - mu_q), the quadratic form is ||y||^2; and log det Sigma =
    2 sum_k log L_kk.

    Args:
        mu_q: means of q, shape ``batch_shape + [K]``.
        L_q: Cholesky factors of q's covariances, shape ``batch_shape + [K, K]``.
        mu_p: means of p, a batch shape that broadcasts with q's, ``+ [K]``.
        L_p: Cholesky factors of p's covariances, ``+ [K, K]``.

    Returns:
        The divergence, shape: the broadcast batch shape.

    Raises:
        ValueError: if a factor is not square or does not match its mean's last dimension.
    """
    for name, mu, L in (("q", mu_q, L_q), ("p", mu_p, L_p)):
        if L.dim() < 2 or L.shape[-1] != L.shape[-2] or L.shape[-1] != mu.shape[-1]:
            raise ValueError(f"the Cholesky factor of {name} must have shape [..., K, K] with K "
                             f"= {mu.shape[-1]}, the size of its mean, got {tuple(L.shape)}")
    K = mu_q.shape[-1]
    # triangular solves broadcast their batch dimensions
    M = torch.linalg.solve_triangular(L_p, L_q, upper=False)  # [..., K, K], L_p^{-1} L_q
    y = torch.linalg.solve_triangular(L_p, (mu_p - mu_q).unsqueeze(-1), upper=False)  # [..., K, 1]
    trace = M.pow(2).sum((-2, -1))  # tr(Sigma_p^{-1} Sigma_q) = ||L_p^{-1} L_q||_F^2
    quad = y.pow(2).sum((-2, -1))
    log_det_p = 2 * torch.diagonal(L_p, dim1=-2, dim2=-1).log().sum(-1)
    log_det_q = 2 * torch.diagonal(L_q, dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + quad - K + log_det_p - log_det_q)


def mc_kl(q: td.Distribution, p: td.Distribution, num_samples: int = 1,
          z: Tensor | None = None) -> Tensor:
    """Monte Carlo estimate of KL(q || p) = E_q[log q(z) - log p(z)].

    Args:
        q: the distribution the expectation is under.
        p: the reference distribution, with a broadcastable batch shape.
        num_samples: S, draws from q (ignored when ``z`` is given).
        z: optional draws ``[S] + batch_shape + event_shape`` to reuse.

    Returns:
        The estimate, shape ``batch_shape``. Unbiased; gradients flow through
        ``z`` when it comes from ``rsample``.
    """
    if z is None:
        z = q.rsample((num_samples,)) if q.has_rsample else q.sample((num_samples,))
    return (q.log_prob(z) - p.log_prob(z)).mean(0)


def kl_or_mc(q: td.Distribution, p: td.Distribution, num_samples: int = 1) -> Tensor:
    """KL(q || p) in closed form where torch registers one, else by :func:`mc_kl`."""
    try:
        return td.kl_divergence(q, p)
    except NotImplementedError:
        return mc_kl(q, p, num_samples)
