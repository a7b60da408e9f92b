"""Prior networks: modules whose forward pass returns p(z) for a batch.

A prior net holds the prior's parameters (fixed buffers or trainable
``nn.Parameter``s) and, given a ``batch_shape``, returns a
``torch.distributions`` object with that batch shape and the latent's
``outcome_shape`` as event shape, so that ``log_prob`` returns one number per
batch element.
"""

from __future__ import annotations

import torch
import torch.distributions as td
import torch.nn.functional as F
from torch import nn

from .utils import ShapeLike, as_shape, positive_int, positive_shape

__all__ = ["PriorNet", "GaussianPriorNet", "MoGPriorNet", "CategoricalPriorNet", "as_shape"]

class PriorNet(nn.Module):
    """Base class of networks that parameterise a prior p(z).

    Args:
        outcome_shape: the shape of one latent outcome; an int ``k`` means ``(k,)``.
    """

    def __init__(self, outcome_shape: ShapeLike):
        super().__init__()
        self.outcome_shape = positive_shape("outcome_shape", outcome_shape)

    def forward(self, batch_shape: ShapeLike) -> td.Distribution:
        """Return the prior for a batch.

        Args:
            batch_shape: e.g. ``(B,)``; an int ``b`` means ``(b,)``.

        Returns:
            A distribution with batch_shape ``batch_shape`` and event_shape
            ``outcome_shape``.
        """
        raise NotImplementedError("subclasses of PriorNet implement forward(batch_shape)")


class GaussianPriorNet(PriorNet):
    """The fixed standard Gaussian prior p(z) = prod_k N(z_k | 0, 1).

    Its location and scale are registered buffers, so they follow the module
    across ``.to(device)`` and into ``state_dict`` but are not trained.

    Args:
        outcome_shape: the latent's shape, e.g. ``K`` or ``(K,)``.
    """

    def __init__(self, outcome_shape: ShapeLike):
        super().__init__(outcome_shape)
        self.register_buffer("locs", torch.zeros(self.outcome_shape))
        self.register_buffer("scales", torch.ones(self.outcome_shape))

    def forward(self, batch_shape: ShapeLike) -> td.Distribution:
        """Return N(0, I) with batch_shape ``batch_shape`` and event_shape ``outcome_shape``."""
        shape = as_shape("batch_shape", batch_shape) + self.outcome_shape
        return td.Independent(
            td.Normal(loc=self.locs.expand(shape), scale=self.scales.expand(shape)),
            len(self.outcome_shape),
        )


class MoGPriorNet(PriorNet):
    """A trainable mixture of M diagonal Gaussians.

    p(z) = sum_c w_c prod_k N(z_k | mu_{c,k}, s_{c,k}^2), with mixing weights
    ``w = softmax(logits)``, locations ``mu`` initialised uniformly in
    ``[lbound, rbound]`` (so that the components start apart) and positive scales
    ``s = softplus(raw_scales)`` initialised at 1.

    Args:
        outcome_shape: the latent's shape, e.g. ``K`` or ``(K,)``.
        num_components: M, the number of mixture components.
        lbound: lower end of the initial locations.
        rbound: upper end of the initial locations.

    Raises:
        ValueError: if ``num_components`` is not a positive int or ``lbound >= rbound``.
    """

    def __init__(self, outcome_shape: ShapeLike, num_components: int,
                 lbound: float = -10.0, rbound: float = 10.0):
        super().__init__(outcome_shape)
        positive_int("num_components", num_components)
        if not lbound < rbound:
            raise ValueError(f"lbound must be smaller than rbound, got lbound={lbound}, "
                             f"rbound={rbound}")
        self.num_components = num_components
        shape = (num_components,) + self.outcome_shape  # [M, K]
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.empty(shape).uniform_(lbound, rbound))
        # softplus^{-1}(1) = log(e - 1), so every scale starts at exactly 1
        self.raw_scales = nn.Parameter(torch.full(shape, float(torch.log(torch.expm1(torch.tensor(1.0))))))

    @property
    def scales(self) -> torch.Tensor:
        """The positive component scales, shape ``[M] + outcome_shape``.

        They are ``softplus(raw_scales)``, recomputed at every read so that they follow
        the trained parameter.
        """
        return F.softplus(self.raw_scales)

    def forward(self, batch_shape: ShapeLike) -> td.Distribution:
        """Return the mixture for a batch.

        Returns:
            ``td.MixtureSameFamily`` with batch_shape ``batch_shape`` and event_shape
            ``outcome_shape``; its component distribution has batch_shape
            ``batch_shape + (M,)``.
        """
        batch_shape = as_shape("batch_shape", batch_shape)
        shape = batch_shape + (self.num_components,) + self.outcome_shape  # [B, M, K]
        comps = td.Independent(
            td.Normal(loc=self.locs.expand(shape), scale=self.scales.expand(shape)),
            len(self.outcome_shape),
        )
        pc = td.Categorical(logits=self.logits.expand(batch_shape + (self.num_components,)))
        return td.MixtureSameFamily(pc, comps)


class CategoricalPriorNet(PriorNet):
    """A fixed uniform prior over the K one-hot vectors of length K.

    Its support is finite, so ``JointDistribution.log_marginal`` and
    ``posterior`` can enumerate it exactly (``enumerate_fn=lambda p:
    p.enumerate_support()``). Useful to check inference code against exact
    answers.

    Args:
        num_categories: K, the latent size.
    """

    def __init__(self, num_categories: int):
        positive_int("num_categories", num_categories)
        super().__init__(num_categories)
        self.register_buffer("logits", torch.zeros(num_categories))

    def forward(self, batch_shape: ShapeLike) -> td.Distribution:
        """Return a OneHotCategorical with batch_shape ``batch_shape`` and event_shape ``(K,)``."""
        shape = as_shape("batch_shape", batch_shape) + self.outcome_shape
        return td.OneHotCategorical(logits=self.logits.expand(shape))
