"""KL divergences: the closed form for diagonal Gaussians and a Monte Carlo fallback."""

from __future__ import annotations

import torch.distributions as td
from torch import Tensor

__all__ = ["KL", "mc_kl", "kl_or_mc"]


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
