"""The first VAE of the course: Gaussian q(z|x), N(0, I) prior, Bernoulli p(x|z) on flat images.

This is the compact, hand-written form of the model that :class:`NVIL` builds
from parts: the encoder returns mu and log sigma^2, the sample is
reparameterised by hand, and the KL is the closed form of :func:`KL`.

Reference:
    Kingma & Welling (2014). Auto-Encoding Variational Bayes.
"""

from __future__ import annotations

import math

import torch
import torch.distributions as td
import torch.nn.functional as F
from torch import Tensor, nn

from .conditionals import CPDNet
from .kl import KL
from .priors import PriorNet
from .utils import ShapeLike, as_shape, positive_int, positive_shape

__all__ = ["VAE", "VAEModelView", "reparametrise", "loss_func"]


def reparametrise(mu: Tensor, logvar: Tensor) -> Tensor:
    """Draw z ~ N(mu, exp(logvar)) as a differentiable function of mu and logvar.

    z = mu + sigma * eps with eps ~ N(0, I) and sigma = exp(logvar / 2): the
    noise does not depend on the parameters, so gradients flow through mu and
    sigma (the pathwise estimator).

    Args:
        mu: ``[B, K]`` (any shape works).
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
        recon_x: Bernoulli means (probabilities) of p(x|z), shape ``[B, D]``.
        x: binary data, shape ``[B, D]``.
        mu: ``[B, K]`` locations of q(z|x).
        logvar: ``[B, K]`` log-variances of q(z|x).

    Returns:
        A scalar.
    """
    if recon_x.shape != x.shape:
        raise ValueError(f"recon_x and x must have the same shape, got {tuple(recon_x.shape)} "
                         f"and {tuple(x.shape)}")
    nll = F.binary_cross_entropy(recon_x, x, reduction="none").sum(-1)  # [B]
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
        positive_int("input_dim", input_dim)
        positive_int("z_dim", z_dim)
        self.input_dim, self.z_dim = input_dim, z_dim
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

    def as_latent_model(self, image_shape: ShapeLike = (1, 28, 28)) -> "VAEModelView":
        """This VAE seen through the parts of :class:`~dpm_core.nvil.NVIL`.

        The view shares this VAE's layers (training either trains both), so the
        tools written for NVIL models, such as the widgets of
        :mod:`dpm_core.widgets`, work on it too. Its N(0, I) prior is made on the
        VAE's device: move the VAE first, or move the view (which moves the VAE).

        Args:
            image_shape: how the ``input_dim`` pixels form an image, ``(C, H, W)``.
        """
        return VAEModelView(self, image_shape)


class _VAEPosterior(CPDNet):
    """q(z|x) = N(mu(x), diag(exp(logvar(x)))) from a :class:`VAE`'s encoder, on images."""

    def __init__(self, vae: VAE, image_shape: tuple):
        super().__init__(vae.z_dim)
        self.vae = vae
        self.image_shape = image_shape

    def forward(self, x: Tensor) -> td.Distribution:
        """x: ``batch_shape + image_shape``; returns batch_shape and event_shape ``(K,)``."""
        n = len(self.image_shape)
        if x.dim() < n or tuple(x.shape[x.dim() - n:]) != self.image_shape:
            raise ValueError(f"x must have shape batch_shape + {self.image_shape}, "
                             f"got {tuple(x.shape)}")
        h = self.vae.encoder(x.flatten(-n))
        mu, logvar = self.vae.mu(h), self.vae.logvar(h)
        return td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)


class _VAEObservation(CPDNet):
    """p(x|z) = prod Bernoulli(decoder(z)) from a :class:`VAE`'s decoder, as images."""

    def __init__(self, vae: VAE, image_shape: tuple):
        super().__init__(image_shape)
        self.vae = vae

    def forward(self, z: Tensor) -> td.Distribution:
        """z: ``batch_shape + (K,)``; returns batch_shape and event_shape ``image_shape``."""
        probs = self.vae.decoder(z)  # batch_shape + [D]
        probs = probs.reshape(probs.shape[:-1] + self.outcome_shape)
        return td.Independent(td.Bernoulli(probs=probs), len(self.outcome_shape))


class _VAEPrior(PriorNet):
    """p(z) = N(0, I) of a :class:`VAE`, on the device and dtype of its layers."""

    def __init__(self, vae: VAE):
        super().__init__(vae.z_dim)
        self.vae = vae

    def forward(self, batch_shape: ShapeLike) -> td.Distribution:
        """batch_shape ``batch_shape``, event_shape ``(K,)``."""
        shape = as_shape("batch_shape", batch_shape) + self.outcome_shape
        zero = next(self.vae.parameters()).new_zeros(())
        return td.Independent(td.Normal(zero.expand(shape), (zero + 1).expand(shape)), 1)


class _VAEJoint(nn.Module):
    """p(z, x) = p(z) p(x|z) of a :class:`VAE`: the part of a
    :class:`~dpm_core.joint.JointDistribution`'s interface that the plots and widgets use.

    Kept apart from ``JointDistribution`` and ``GaussianPriorNet``, which are exercises of
    dpm2_generative: a student's hand-out withholds them while vae_basics's widgets run.
    """

    def __init__(self, prior_net: PriorNet, cpd_net: CPDNet):
        super().__init__()
        self.prior_net = prior_net
        self.cpd_net = cpd_net

    def prior(self, shape: ShapeLike) -> td.Distribution:
        """p(z) with batch_shape ``shape`` and event_shape ``(K,)``."""
        return self.prior_net(shape)

    def obs_model(self, z: Tensor) -> td.Distribution:
        """p(x|z) with batch_shape ``z``'s batch shape and event_shape the image shape."""
        return self.cpd_net(z)


class VAEModelView(nn.Module):
    """A :class:`VAE` with the interface of :class:`~dpm_core.nvil.NVIL`'s parts.

    ``gen_model`` holds the fixed N(0, I) prior and the VAE's Bernoulli decoder, with the
    ``prior``/``obs_model`` interface of a :class:`~dpm_core.joint.JointDistribution`; ``inf_model(x)`` is the
    diagonal Gaussian q(z|x) of its encoder. Images go in and come out with shape
    ``batch_shape + image_shape``; the VAE itself works on flat vectors.

    Args:
        vae: the VAE; its layers are shared, not copied.
        image_shape: ``(C, H, W)`` with ``C * H * W`` equal to the VAE's input size.

    Raises:
        ValueError: if ``image_shape`` does not hold exactly the VAE's input size.
    """

    def __init__(self, vae: VAE, image_shape: ShapeLike = (1, 28, 28)):
        super().__init__()
        image_shape = positive_shape("image_shape", image_shape)
        if math.prod(image_shape) != vae.input_dim:
            raise ValueError(f"image_shape {image_shape} holds {math.prod(image_shape)} pixels, but "
                             f"the VAE takes {vae.input_dim}; pass the shape its images have")
        self.gen_model = _VAEJoint(_VAEPrior(vae), _VAEObservation(vae, image_shape))
        self.inf_model = _VAEPosterior(vae, image_shape)
