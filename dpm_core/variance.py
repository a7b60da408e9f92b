"""Control variates for the score-function (REINFORCE) estimator.

The score-function estimator of the gradient of E_q[f(z)] with respect to
q's parameters lambda is ``f(z) * grad log q(z|x)``. Because
``E_q[grad log q(z|x)] = 0``, any quantity ``b`` that does not depend on the
sampled z can be subtracted from the reward without bias, and a good choice of
``b`` shrinks the variance a lot (Mnih & Gregor, 2014). Each module here
transforms a batch of rewards and returns ``(transformed_reward, loss)``; the
loss trains whatever parameters the control variate has. :class:`ScaledReward`
is no control variate but a rescaling of the reward (read its note on the
direction), and :class:`CVChain` a composition of the others.

Rewards have shape ``[S, B]`` (S samples of z for each of B data points) or
``[B]``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch
import torch.distributions as td
from torch import Tensor, nn

from .utils import positive_int, probability

__all__ = ["VarianceReduction", "CentredReward", "ScaledReward", "SelfCritic", "Baseline", "CVChain"]

RewardFn = Callable[[Tensor, Tensor], Tensor]


class VarianceReduction(nn.Module):
    """The identity control variate, and the interface of all others.

    ``forward(r, x, q, r_fn)`` returns ``(r', loss)`` where ``r'`` has the shape
    of ``r`` and ``loss`` is broadcastable to it.

    Args of forward:
        r: rewards, shape ``[S, B]`` or ``[B]`` (already detached).
        x: the observations, shape ``[B] + data_shape``.
        q: the policy q(z|x), batch_shape ``[B]``.
        r_fn: ``r_fn(z, x)`` evaluates the reward of new draws z.
    """

    def forward(self, r: Tensor, x: Optional[Tensor] = None, q: Optional[td.Distribution] = None,
                r_fn: Optional[RewardFn] = None) -> tuple[Tensor, Tensor]:
        return r, torch.zeros_like(r)


class CentredReward(VarianceReduction):
    """Subtract a running average of the reward (a constant baseline).

    After each batch the average moves towards the batch mean:
    ``avg <- (1 - alpha) * avg + alpha * mean(r)``. The running average is a
    buffer, so it is saved with the model and moves across devices.

    Args:
        alpha: weight of the newest batch mean, in (0, 1].
    """

    def __init__(self, alpha: float = 0.9):
        super().__init__()
        self._alpha = probability("alpha", alpha, include_zero=False)
        self.register_buffer("r_mean", torch.zeros(()))

    def forward(self, r, x=None, q=None, r_fn=None):
        centred = r - self.r_mean
        if self.training:
            with torch.no_grad():
                self.r_mean.mul_(1.0 - self._alpha).add_(self._alpha * r.mean())
        return centred, torch.zeros_like(r)


class ScaledReward(VarianceReduction):
    """Divide the reward by a running estimate of its standard deviation, never by less than 1.

    After each batch the estimate moves towards the batch's standard deviation:
    ``s <- max((1 - alpha) * s + alpha * std(r), 1)``, a buffer like
    :class:`CentredReward`'s average.

    Scaling is no control variate: it subtracts nothing, it divides the score
    term r grad log q(z|x), and only that term, by s. What that does to
    the direction depends on what else reaches q. With a sampled rate the
    reward is the whole ELBO integrand, so q's expected update is
    (1/s) grad ELBO: the ELBO's direction, a smaller step. With a closed-form
    rate the reward is log p(x|z) and NVIL adds the exact -beta grad KL
    unscaled, so q's expected update is
    (1/s) grad E_q[log p(x|z)] - beta grad KL = (1/s) grad (E_q[log p(x|z)] - s beta KL):
    another direction, the gradient of an objective whose rate weighs s times
    as much for the encoder (an implicit beta of s; p's gradient is untouched).
    ``tests/test_variance.py`` measures both on the linear-Gaussian test bed; on
    the trained Gaussian VAE of dpm2_inference (section 7, s = 78) the expected
    update is orthogonal to the ELBO gradient (cosine 0.003).

    Args:
        alpha: weight of the newest batch standard deviation, in (0, 1].
    """

    def __init__(self, alpha: float = 0.9):
        super().__init__()
        self._alpha = probability("alpha", alpha, include_zero=False)
        self.register_buffer("r_std", torch.ones(()))

    def forward(self, r, x=None, q=None, r_fn=None):
        scaled = r / self.r_std
        if self.training and r.numel() > 1:
            with torch.no_grad():
                self.r_std.mul_(1.0 - self._alpha).add_(self._alpha * r.std())
                self.r_std.clamp_(min=1.0)
        return scaled, torch.zeros_like(r)


class SelfCritic(VarianceReduction):
    """Subtract the reward of an independent draw z' ~ q(z|x) (Rennie et al., 2017).

    ``r(z) - r(z')`` is unbiased because z' is independent of z; the baseline
    depends on x and adapts to every data point without any training.
    """

    def forward(self, r, x, q, r_fn):
        if q is None or r_fn is None:
            raise ValueError("SelfCritic needs the policy q and the reward function r_fn")
        sample_shape = r.shape[: r.dim() - len(q.batch_shape)]
        with torch.no_grad():
            baseline = r_fn(q.sample(sample_shape), x)
        return r - baseline, torch.zeros_like(r)


class Baseline(VarianceReduction):
    """An input-dependent baseline b(x): an MLP fitted to the reward by squared error.

    Returns ``r - b(x)`` (with b detached, so it shifts but never steers the
    policy gradient) and the loss ``(r - b(x))^2`` that trains b.

    Args:
        num_inputs: the size of a flattened observation (C * H * W).
        hidden_size: the MLP's hidden size.
        p_drop: dropout rate before each linear layer.
        event_dims: how many rightmost dimensions of x form one observation
            (3 for images ``[C, H, W]``, 1 for vectors).
    """

    def __init__(self, num_inputs: int, hidden_size: int, p_drop: float = 0.0,
                 event_dims: int = 3):
        super().__init__()
        positive_int("num_inputs", num_inputs)
        positive_int("hidden_size", hidden_size)
        positive_int("event_dims", event_dims)
        p_drop = probability("p_drop", p_drop, include_one=False)
        self.baseline = nn.Sequential(
            nn.Flatten(start_dim=-event_dims),
            nn.Dropout(p_drop),
            nn.Linear(num_inputs, hidden_size),
            nn.ReLU(),
            nn.Dropout(p_drop),
            nn.Linear(hidden_size, 1),
        )

    def forward(self, r, x, q=None, r_fn=None):
        if x is None:
            raise ValueError("Baseline needs the observations x")
        r_hat = self.baseline(x).squeeze(-1)  # [B]
        return r - r_hat.detach(), (r - r_hat) ** 2


class CVChain(VarianceReduction):
    """Apply several control variates in order and add up their losses.

    Example:
        >>> CVChain(CentredReward(), ScaledReward())
        >>> CVChain(OrderedDict(centre=CentredReward(), scale=ScaledReward()))
    """

    def __init__(self, *args: nn.Module):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for key, module in args[0].items():
                self.add_module(key, module)
        else:
            for idx, module in enumerate(args):
                self.add_module(str(idx), module)
        for name, module in self._modules.items():
            if not isinstance(module, VarianceReduction):
                raise ValueError(f"CVChain takes VarianceReduction modules, got "
                                 f"{type(module).__name__} at {name!r}")

    def forward(self, r, x=None, q=None, r_fn=None):
        loss = torch.zeros_like(r)
        for cv in self._modules.values():
            r, extra = cv(r, x=x, q=q, r_fn=r_fn)
            loss = loss + extra
        return r, loss
