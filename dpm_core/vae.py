"""The first VAE of the course: Gaussian q(z|x), N(0, I) prior, Bernoulli p(x|z) on flat images.

This is the compact, hand-written form of the model that :class:`NVIL` builds
from parts: the encoder returns mu and log sigma^2, the sample is
reparameterised by hand, and the KL is the closed form of :func:`KL`.

Reference:
    Kingma & Welling (2014). Auto-Encoding Variational Bayes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kl import KL
from .networks import _positive_int

__all__ = ["VAE", "reparametrise", "loss_func"]


def reparametrise(mu: Tensor, logvar: Tensor) -> Tensor:
    """Draw z ~ N(mu, exp(logvar)) as a differentiable function of mu and logvar.

    z = mu + sigma * eps with eps ~ N(0, I) and sigma = exp(logvar / 2): the
    noise does not depend on the parameters, so gradients flow through mu and
    sigma (the pathwise estimator).

    Args:
        mu: ``[N, K]`` (any shape works).
        logvar: same shape as ``mu``.

    Returns:
        z, shaped like ``mu``.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} "
                         f"and {tuple(logvar.shape)}")
    eps = torch.randn_like(mu)
    return mu + eps * torch.exp(0.5 * logvar)


def loss_func(recon_x: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """The negative ELBO with one sample, averaged over the batch.

    -ELBO(x) ~= -log p(x|z) + KL(q(z|x) || p(z)), where -log p(x|z) is the
    binary cross-entropy summed over pixels.

    Args:
        recon_x: Bernoulli means (probabilities) of p(x|z), shape ``[N, D]``.
        x: binary data, shape ``[N, D]``.
        mu: ``[N, K]`` locations of q(z|x).
        logvar: ``[N, K]`` log-variances of q(z|x).

    Returns:
        A scalar.
    """
    if recon_x.shape != x.shape:
        raise ValueError(f"recon_x and x must have the same shape, got {tuple(recon_x.shape)} "
                         f"and {tuple(x.shape)}")
    nll = F.binary_cross_entropy(recon_x, x, reduction="none").sum(-1)  # [N]
    return (nll + KL(mu, logvar)).mean()


class VAE(nn.Module):
    """A fully connected VAE on flattened images.

    Args:
        input_dim: D, pixels per image (784 for 28x28).
        z_dim: K, the latent size.
        hidden_sizes: the encoder's hidden sizes; the decoder mirrors them.
    """

    def __init__(self, input_dim: int = 784, z_dim: int = 2, hidden_sizes: tuple = (256, 128)):
        super().__init__()
        _positive_int("input_dim", input_dim)
        _positive_int("z_dim", z_dim)
        sizes = [input_dim, *hidden_sizes]
        enc: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*enc)
        self.mu = nn.Linear(sizes[-1], z_dim)
        self.logvar = nn.Linear(sizes[-1], z_dim)
        dec_sizes = [z_dim, *reversed(hidden_sizes)]
        dec: list[nn.Module] = []
        for a, b in zip(dec_sizes[:-1], dec_sizes[1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        dec += [nn.Linear(dec_sizes[-1], input_dim), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)

    def reparametrise(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """See :func:`reparametrise`."""
        return reparametrise(mu, logvar)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encode, sample and decode: returns ``(recon_x, mu, logvar)``."""
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        return self.decoder(self.reparametrise(mu, logvar)), mu, logvar
