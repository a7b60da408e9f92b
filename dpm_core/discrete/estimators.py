"""Gradient estimators for discrete codes beyond NVIL's: the leave-one-out baseline, the
relaxed (Concrete / straight-through) surrogate, and VIMCO for the S-sample bound."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributions as td
from torch import Tensor

from .codes import relaxed, straight_through
from ..nvil import NVIL
from ..utils import one_of, positive_int
from ..variance import VarianceReduction

__all__ = ["LeaveOneOut", "relaxed_surrogate_loss", "vimco_surrogate_loss"]


class LeaveOneOut(VarianceReduction):
    """The leave-one-out baseline of S draws: b_s = mean of the other S - 1 rewards [5].

    b_s depends on the draws other than z_s only, which are independent of z_s, so
    ``(r_s - b_s) grad log q(z_s|x)`` stays unbiased for the gradient of the ELBO; it is
    VIMCO's baseline applied to the ELBO's rewards (RLOO). Needs ``sample_size >= 2``.
    """

    def forward(self, r, x=None, q=None, r_fn=None):
        if r.dim() < 1 or r.shape[0] < 2:
            raise ValueError(f"LeaveOneOut needs S >= 2 draws per data point (rewards [S, B]), "
                             f"got rewards of shape {tuple(r.shape)}")
        S = r.shape[0]
        baseline = (r.sum(0, keepdim=True) - r) / (S - 1)  # [S, B]
        return r - baseline, r.new_zeros(r.shape)  # no parameters to train


def relaxed_surrogate_loss(nvil: NVIL, x: Tensor, relaxation: str = "concrete",
                           temperature: Optional[float] = None,
                           sample_size: Optional[int] = None) -> Tensor:
    """A loss whose gradient is a relaxed (biased) estimate of minus grad ELBO [2, 4].

    The distortion is estimated at pathwise draws of a stand-in for the code, the rate is
    the exact KL of the discrete codes (as in [2]):

        -1/B sum_b [1/S sum_s log p(x_b|z~_s) - KL(q(z|x_b) || p(z))],

    z~ from :func:`relaxed` (``"concrete"``, at ``temperature``) or :func:`straight_through`
    (``"straight-through"``). The decoder reads z~ as it would a code, so it must accept
    values between 0 and 1 (a linear or MLP decoder does).

    Args:
        nvil: the model and q(z|x); q must be a code of this module.
        x: observations ``batch_shape + data_shape``.
        relaxation: ``"concrete"`` or ``"straight-through"``.
        temperature: tau, for ``"concrete"`` only.
        sample_size: S (default 1).

    Returns:
        A scalar.
    """
    one_of("relaxation", relaxation, ("concrete", "straight-through"))
    if (temperature is None) == (relaxation == "concrete"):
        raise ValueError(f"temperature must be given for 'concrete' and only for it, got "
                         f"relaxation={relaxation!r}, temperature={temperature!r}")
    S = positive_int("sample_size", sample_size, or_none=True) or 1
    qz = nvil.inf_model(x)
    pz = nvil.gen_model.prior(qz.batch_shape)
    stand_in = relaxed(qz, temperature) if relaxation == "concrete" else straight_through(qz)
    z = stand_in.rsample((S,))  # [S, B, K]
    log_px_z = nvil.gen_model.obs_model(z).log_prob(x)  # [S, B]
    return -(log_px_z.mean(0) - td.kl_divergence(qz, pz)).mean()


def vimco_surrogate_loss(nvil: NVIL, x: Tensor, sample_size: int,
                         baseline: bool = True) -> Tensor:
    """A loss whose gradient is minus VIMCO's unbiased estimate of the gradient of the S-sample
    bound [5].

    With w_s = p(x, z_s) / q(z_s|x), L = log 1/S sum_s w_s and normalised weights
    w~_s = w_s / sum_j w_j, the gradient is

        grad E[L] = E[sum_s (L - b_s) grad log q(z_s|x) + sum_s w~_s grad log w_s],

    where b_s, VIMCO's baseline, is L with log w_s replaced by the mean of the other
    log-weights; it does not depend on z_s, so it adds no bias. ``baseline=False`` uses
    b_s = 0, the plain score function of the bound.

    Args:
        nvil: the model and q(z|x) (any q that can score its draws).
        x: observations ``batch_shape + data_shape``.
        sample_size: S >= 2.
        baseline: whether to subtract VIMCO's b_s.

    Returns:
        A scalar: minus the batch mean of the surrogate.
    """
    S = positive_int("sample_size", sample_size)
    if S < 2:
        raise ValueError(f"sample_size must be at least 2 for VIMCO, got {S}")
    qz = nvil.inf_model(x)
    z = qz.sample((S,))  # [S, B, K], no pathwise gradient
    log_q = qz.log_prob(z)  # [S, B]
    log_w = nvil.gen_model.log_prob(z, x) - log_q  # [S, B]
    bound = torch.logsumexp(log_w, 0) - math.log(S)  # [B]
    signal = bound.detach().expand_as(log_w)
    if baseline:
        lw = log_w.detach()
        others_mean = lw - LeaveOneOut()(lw)[0]  # [S, B], the mean of the other S - 1
        # log w_s replaced by the mean of the others, in turn for each s
        eye = torch.eye(S, dtype=torch.bool, device=lw.device)
        eye = eye.reshape((S, S) + (1,) * (lw.dim() - 1))
        swapped = torch.where(eye, others_mean.unsqueeze(1), lw.unsqueeze(0))  # [S(b_s), S, B]
        signal = signal - (torch.logsumexp(swapped, 1) - math.log(S))
    # autograd through bound gives sum_s w~_s grad log w_s; the score term the rest
    return -(bound + (signal * log_q).sum(0)).mean()
