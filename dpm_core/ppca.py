"""Probabilistic PCA: a linear-Gaussian latent variable model with exact answers.

p(z) = N(0, I_K) and p(x|z) = N(W z + b, sigma^2 I_D) give a Gaussian marginal
p(x) and a Gaussian posterior p(z|x) in closed form (Tipping & Bishop, 1999; the
formulas are in :meth:`PPCA.marginal` and :meth:`PPCA.exact_posterior`). Everything
that VI and importance sampling only estimate is available here exactly, which makes
PPCA the reference for checking those estimators.

:func:`e_step` and :func:`m_step` are the two steps of expectation maximisation for PPCA
(Tipping & Bishop, 1999, section 3.2; Bishop, *Pattern Recognition and Machine Learning*,
section 12.2.2): the posterior moments of the codes under the current parameters, and the
parameters that maximise the expected complete-data log-likelihood under them.
"""

from __future__ import annotations

import math

import torch
import torch.distributions as td
import torch.nn.functional as F
from torch import Tensor, nn

from .conditionals import CPDNet
from .joint import JointDistribution
from .priors import GaussianPriorNet
from .utils import positive_int, positive_number

__all__ = ["LinearGaussianCPDNet", "PPCA", "e_step", "m_step"]


class LinearGaussianCPDNet(CPDNet):
    """p(x|z) = N(x | W z + b, sigma^2 I): the observation model of PPCA.

    Args:
        data_size: D.
        latent_size: K.
        sigma: the initial noise scale (trainable, kept positive by a softplus).
    """

    def __init__(self, data_size: int, latent_size: int, sigma: float = 1.0):
        positive_int("data_size", data_size)
        positive_int("latent_size", latent_size)
        positive_number("sigma", sigma)
        super().__init__(data_size)
        self.latent_size = latent_size
        self.W = nn.Parameter(torch.randn(data_size, latent_size) / math.sqrt(latent_size))
        self.b = nn.Parameter(torch.zeros(data_size))
        self.raw_sigma = nn.Parameter(torch.tensor(math.log(math.expm1(sigma))))

    @property
    def sigma(self) -> Tensor:
        return F.softplus(self.raw_sigma)

    def forward(self, z: Tensor) -> td.Distribution:
        """``Independent(Normal)`` with batch_shape ``z.shape[:-1]`` and event_shape ``(D,)``."""
        loc = z @ self.W.T + self.b  # [..., D]
        return td.Independent(td.Normal(loc, self.sigma.expand_as(loc)), 1)


class PPCA(JointDistribution):
    """The PPCA joint p(z) p(x|z) with its exact marginal and posterior.

    Args:
        data_size: D.
        latent_size: K.
        sigma: the initial noise scale.
    """

    def __init__(self, data_size: int, latent_size: int, sigma: float = 1.0):
        super().__init__(GaussianPriorNet(latent_size),
                         LinearGaussianCPDNet(data_size, latent_size, sigma))

    def marginal(self) -> td.MultivariateNormal:
        """The marginal p(x) of the model, in closed form.

        p(x) = N(b, W W^T + sigma^2 I): x = W z + b + sigma eps is a linear function
        of the independent standard normals z and eps.

        Returns:
            ``td.MultivariateNormal`` with batch_shape ``()`` and event_shape ``(D,)``.
        """
        # answer of importance_sampling/ppca-solution
        W, b, s2 = self.cpd_net.W, self.cpd_net.b, self.cpd_net.sigma ** 2
        cov = W @ W.T + s2 * torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
        return td.MultivariateNormal(b, covariance_matrix=cov)
        # end of answer

    def exact_log_marginal(self, x: Tensor) -> Tensor:
        """log p(x) in closed form, shape ``x.shape[:-1]``."""
        return self.marginal().log_prob(x)

    def exact_posterior(self, x: Tensor) -> td.MultivariateNormal:
        """The posterior p(z|x) of the model, in closed form.

        p(z|x) = N(M^{-1} W^T (x - b), sigma^2 M^{-1}) with M = W^T W + sigma^2 I.

        Args:
            x: observations ``batch_shape + (D,)``.

        Returns:
            ``td.MultivariateNormal`` with batch_shape ``x.shape[:-1]`` and event_shape ``(K,)``.
        """
        W, b, s2 = self.cpd_net.W, self.cpd_net.b, self.cpd_net.sigma ** 2
        K = W.shape[1]
        M = W.T @ W + s2 * torch.eye(K, dtype=W.dtype, device=W.device)
        mean = torch.linalg.solve(M, ((x - b) @ W).unsqueeze(-1)).squeeze(-1)  # [..., K]
        cov = s2 * torch.linalg.inv(M)
        return td.MultivariateNormal(mean, covariance_matrix=cov.expand(mean.shape[:-1] + (K, K)))


def e_step(x: Tensor, W: Tensor, b: Tensor, sigma) -> tuple[Tensor, Tensor]:
    """The E-step of EM for PPCA: the posterior moments of the codes under (W, b, sigma).

    Args:
        x: observations ``batch_shape + (D,)``.
        W: ``[D, K]``.
        b: ``[D]``.
        sigma: the noise scale (a float or a 0-d tensor).

    Returns:
        ``(Ez, Ezz)``: E[z|x] with shape ``batch_shape + (K,)`` and E[z z^T|x] with shape
        ``batch_shape + (K, K)``.

    E[z|x] = M^{-1} W^T (x - b) and E[z z^T|x] = sigma^2 M^{-1} + E[z|x] E[z|x]^T, with
    M = W^T W + sigma^2 I: the posterior's mean, and its covariance plus the outer product of
    the mean.
    """
    K = W.shape[1]
    s2 = sigma ** 2
    M = W.T @ W + s2 * torch.eye(K, dtype=W.dtype, device=W.device)  # [K, K]
    Ez = torch.linalg.solve(M, ((x - b) @ W).unsqueeze(-1)).squeeze(-1)  # [..., K]
    Ezz = s2 * torch.linalg.inv(M) + Ez.unsqueeze(-1) * Ez.unsqueeze(-2)  # [..., K, K]
    return Ez, Ezz


def m_step(x: Tensor, Ez: Tensor, Ezz: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The M-step of EM for PPCA: the parameters that maximise the expected complete-data
    log-likelihood sum_n E[log p(z_n, x_n)] under the E-step's moments.

    Args:
        x: observations ``[N, D]``.
        Ez: E[z_n|x_n], ``[N, K]``.
        Ezz: E[z_n z_n^T|x_n], ``[N, K, K]``.

    Returns:
        ``(W, b, sigma)``: ``[D, K]``, ``[D]`` and the noise scale ``[]``.

    b = mean of x (the maximum-likelihood mean, whatever W and sigma are; once the E-step has
    used it, sum_n E[z_n] = 0 and it maximises the expected log-likelihood too);
    W = [sum_n (x_n - b) E[z_n]^T] [sum_n E[z_n z_n^T]]^{-1}; and, with this new W,
    sigma^2 = 1/(N D) sum_n (||x_n - b||^2 - 2 E[z_n]^T W^T (x_n - b) + tr(E[z_n z_n^T] W^T W)).
    """
    N, D = x.shape
    b = x.mean(0)
    xc = x - b  # [N, D]
    W = torch.linalg.solve(Ezz.sum(0), Ez.T @ xc).T  # [D, K]; sum_n Ezz_n is symmetric
    s2 = ((xc ** 2).sum() - 2 * (Ez * (xc @ W)).sum()
          + (Ezz * (W.T @ W)).sum()) / (N * D)  # tr(A B) = sum(A * B^T), W^T W symmetric
    return W, b, s2.sqrt()
