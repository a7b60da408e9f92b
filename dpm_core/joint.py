"""The joint distribution p(z, x) = p(z) p(x|z) of a latent variable model."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.distributions as td
from torch import Tensor, nn

from .conditionals import CPDNet
from .priors import PriorNet
from .utils import ShapeLike, positive_int

__all__ = ["JointDistribution", "sample_chunks"]

#: default cap on the number of elements of one decoder output kept in memory at once
MAX_ELEMENTS = 2**24


def sample_chunks(num_samples: int, batch_numel: int, max_elements: int = MAX_ELEMENTS) -> Iterator[int]:
    """Split ``num_samples`` draws into chunks whose decoder outputs fit in memory.

    Args:
        num_samples: S, the total number of draws.
        batch_numel: elements that one draw produces for the whole batch (B * D).
        max_elements: the cap on ``chunk * batch_numel``.

    Yields:
        chunk sizes that add up to ``num_samples``.
    """
    positive_int("the number of samples", num_samples)
    chunk = max(1, max_elements // max(1, batch_numel))
    done = 0
    while done < num_samples:
        size = min(chunk, num_samples - done)
        yield size
        done += size


class JointDistribution(nn.Module):
    """A prior net and an observation model combined into p(z, x) = p(z) p(x|z).

    Args:
        prior_net: parameterises p(z).
        cpd_net: parameterises p(x|z), e.g. a :class:`BinarizedImageModel`.
    """

    def __init__(self, prior_net: PriorNet, cpd_net: CPDNet):
        super().__init__()
        self.prior_net = prior_net
        self.cpd_net = cpd_net

    def _batch_shape(self, x: Tensor) -> tuple:
        event = self.cpd_net.outcome_shape
        if not torch.is_tensor(x):
            raise ValueError(f"x must be a tensor, got {type(x).__name__}")
        if tuple(x.shape[x.dim() - len(event):]) != tuple(event) or x.dim() < len(event):
            raise ValueError(f"x must have shape batch_shape + {tuple(event)}, got {tuple(x.shape)}")
        return tuple(x.shape[: x.dim() - len(event)])

    def prior(self, shape: ShapeLike) -> td.Distribution:
        """p(z) with batch_shape ``shape`` and event_shape ``prior_net.outcome_shape``."""
        return self.prior_net(shape)

    def obs_model(self, z: Tensor) -> td.Distribution:
        """p(x|z) with batch_shape ``z``'s batch shape and event_shape ``cpd_net.outcome_shape``."""
        return self.cpd_net(z)

    def sample(self, shape: ShapeLike) -> tuple[Tensor, Tensor]:
        """Draw ``z ~ p(z)`` and ``x ~ p(x|z)`` for a batch of the given shape.

        Returns:
            ``(z, x)`` with shapes ``shape + latent_shape`` and ``shape + data_shape``.
        """
        z = self.prior(shape).sample()
        return z, self.obs_model(z).sample()

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(z, x) = log p(z) + log p(x|z), with the batch shape of ``z``."""
        latent = self.prior_net.outcome_shape
        batch_shape = tuple(z.shape[: z.dim() - len(latent)])
        return self.prior(batch_shape).log_prob(z) + self.obs_model(z).log_prob(x)

    def _log_joint_enumerated(self, x: Tensor, enumerate_fn: Callable[[td.Distribution], Tensor]) -> Tensor:
        """log p(z_n, x) for every z_n in the prior's support: shape ``[N] + batch_shape``."""
        pz = self.prior(self._batch_shape(x))
        z = enumerate_fn(pz)  # [N] + batch_shape + latent_shape
        return pz.log_prob(z) + self.obs_model(z).log_prob(x.unsqueeze(0))

    def log_marginal(self, x: Tensor, enumerate_fn: Callable[[td.Distribution], Tensor]) -> Tensor:
        """Exact log p(x) = log sum_z p(z) p(x|z) for a prior with a small finite support.

        Args:
            x: data with shape ``batch_shape + data_shape``.
            enumerate_fn: maps the prior (batch_shape ``batch_shape``) to all of its
                outcomes stacked in front, shape ``[N] + batch_shape + latent_shape``;
                ``lambda p: p.enumerate_support()`` for Categorical or OneHotCategorical.

        Returns:
            log p(x), shape ``batch_shape``.
        """
        return torch.logsumexp(self._log_joint_enumerated(x, enumerate_fn), dim=0)

    def posterior(self, x: Tensor, enumerate_fn: Callable[[td.Distribution], Tensor]) -> td.Distribution:
        """The exact posterior p(z|x) over the enumerated support, by Bayes' rule.

        Returns:
            ``td.Categorical`` with batch_shape ``batch_shape`` over the N
            outcomes in the order ``enumerate_fn`` lists them.
        """
        log_joint = self._log_joint_enumerated(x, enumerate_fn)  # [N] + batch_shape
        return td.Categorical(logits=log_joint.movedim(0, -1))

    def naive_lowerbound(self, x: Tensor, num_samples: int, max_elements: int = MAX_ELEMENTS) -> Tensor:
        """The Jensen bound log p(x) >= E_{p(z)}[log p(x|z)], estimated with S prior draws.

        The draws are decoded together, in chunks of at most ``max_elements``
        decoder outputs.

        Args:
            x: data with shape ``batch_shape + data_shape``.
            num_samples: S.
            max_elements: memory cap per chunk (elements of the decoder output).

        Returns:
            The estimate, shape ``batch_shape``.
        """
        batch_shape = self._batch_shape(x)
        pz = self.prior(batch_shape)
        total = x.new_zeros(batch_shape)
        for size in sample_chunks(num_samples, x.numel(), max_elements):
            z = pz.sample((size,))  # [s] + batch_shape + latent_shape
            total = total + self.obs_model(z).log_prob(x).sum(0)
        return total / num_samples
