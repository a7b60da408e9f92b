"""The exact test bed: codes small enough to enumerate, the exact ELBO and S-sample bound
(differentiable, so autograd gives the exact gradients), and a small sigmoid belief net."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributions as td
from torch import Tensor, nn

from .codes import BernoulliCPDNet, BernoulliPriorNet, OneHotCPDNet, OneHotPriorNet, code_parts
from ..joint import JointDistribution
from ..nvil import NVIL
from ..utils import one_of, positive_int, positive_number
from ..variance import VarianceReduction

__all__ = ["enumerate_codes", "exact_elbo", "exact_multisample_bound", "make_testbed", "draw_data"]

#: the most codes :func:`enumerate_codes` lists (2^16, e.g. 16 bits)
MAX_CODES = 2**16


def enumerate_codes(p: td.Distribution) -> Tensor:
    """Every code in the support of a factorised code distribution.

    Pass it as ``enumerate_fn`` to :meth:`JointDistribution.log_marginal` and
    :meth:`JointDistribution.posterior`. Codes come in a fixed order: binary counting (the
    first unit is the most significant bit), or the classes of the first variable slowest.

    Args:
        p: a code of this module, or a plain ``td.Bernoulli`` / ``td.OneHotCategorical``.

    Returns:
        The N codes stacked in front, ``[N] + batch_shape + event_shape``.

    Raises:
        ValueError: if there are more than ``MAX_CODES`` codes.
        NotImplementedError: for another distribution.
    """
    inner, ndims, transforms = code_parts(p)
    logits = inner.logits
    batch_dims = len(inner.batch_shape) - ndims
    units = tuple(inner.batch_shape[batch_dims:])  # the reinterpreted dims, e.g. [K] or [L]
    n_units = math.prod(units)
    classes = 2 if isinstance(inner, td.Bernoulli) else inner.event_shape[0]
    num_codes = classes ** n_units
    if num_codes > MAX_CODES:
        raise ValueError(f"the code has {num_codes} configurations, more than the "
                         f"{MAX_CODES} that enumerate_codes lists")
    values = torch.arange(classes, device=logits.device)
    index = torch.cartesian_prod(*[values] * n_units).reshape(num_codes, n_units)  # [N, units]
    if isinstance(inner, td.Bernoulli):
        codes = index.to(logits.dtype).reshape((num_codes,) + units)
    else:
        codes = nn.functional.one_hot(index, classes).to(logits.dtype)
        codes = codes.reshape((num_codes,) + units + (classes,))
    event = codes.shape[1:]
    codes = codes.reshape((num_codes,) + (1,) * batch_dims + event)
    codes = codes.expand((num_codes,) + tuple(inner.batch_shape[:batch_dims]) + event)
    for t in transforms:
        codes = t(codes)
    return codes


def exact_elbo(joint: JointDistribution, qz: td.Distribution, x: Tensor) -> Tensor:
    """The exact ELBO of a factorised code q, by enumeration.

    ELBO(x) = sum_z q(z|x) [log p(x, z) - log q(z|x)], differentiable in p's and q's
    parameters: its autograd gradient is the exact gradient that estimators are measured
    against.

    Args:
        joint: p(z) p(x|z), with a prior over the same codes as q.
        qz: q(z|x) with batch_shape ``batch_shape`` (e.g. ``nvil.inf_model(x)``).
        x: observations ``batch_shape + data_shape``.

    Returns:
        The ELBO, shape ``batch_shape``.
    """
    z = enumerate_codes(qz)  # [N, B, K]
    log_q = qz.log_prob(z)  # [N, B]
    log_joint = joint.log_prob(z, x)  # [N, B]
    return (log_q.exp() * (log_joint - log_q)).sum(0)


def exact_multisample_bound(joint: JointDistribution, qz: td.Distribution, x: Tensor,
                            sample_size: int) -> Tensor:
    """The exact S-sample bound E[log 1/S sum_s w_s] of [5] (IWAE's), by enumerating S-tuples.

    With w = p(x, z) / q(z|x) and z_1..z_S ~ q independently; S = 1 is the ELBO. The sum runs
    over all N^S tuples of codes, so N^S must stay small (S = 2 with 256 codes).
    Differentiable in p's and q's parameters, like :func:`exact_elbo`.

    Returns:
        The bound, shape ``batch_shape``.

    Raises:
        ValueError: if N^S exceeds ``MAX_CODES * 16``.
    """
    S = positive_int("sample_size", sample_size)
    if S == 1:
        return exact_elbo(joint, qz, x)
    codes = enumerate_codes(qz)  # [N] + batch_shape + [K]
    N = codes.shape[0]
    if N ** S > MAX_CODES * 16:
        raise ValueError(f"sample_size={S} makes {N}^{S} tuples of codes, more than "
                         f"{MAX_CODES * 16}")
    log_q = qz.log_prob(codes)  # [N] + batch_shape
    log_w = joint.log_prob(codes, x) - log_q
    batch_dims = log_q.dim() - 1
    # tuples along S leading dims: log q(z_1..S) and log sum_s w_s, each [N, ..., N, B]
    log_q_tuple, log_sum_w = log_q, log_w
    for _ in range(S - 1):
        log_q_tuple = log_q_tuple.unsqueeze(-1 - batch_dims)
        log_sum_w = log_sum_w.unsqueeze(-1 - batch_dims)
        log_q_tuple = log_q_tuple + log_q
        log_sum_w = torch.logaddexp(log_sum_w, log_w)
    bound = log_sum_w - math.log(S)
    return (log_q_tuple.exp() * bound).flatten(0, S - 1).sum(0)


def make_testbed(code: str = "bernoulli", seed: int = 0, data_size: int = 6,
                 weight_scale: float = 1.5, cv_model: Optional[VarianceReduction] = None) -> NVIL:
    """A sigmoid belief network small enough to enumerate, in float64.

    p(z) is a trainable factorised prior, p(x|z) = prod_d Bernoulli(x_d | sigmoid(W z + b))
    over ``data_size`` binary pixels, and q(z|x) a linear-logit encoder of the same family
    as the prior; every weight is drawn from N(0, weight_scale^2) with ``seed``, so q is
    far from the exact posterior and the decoder far from linear.

    Args:
        code: ``"bernoulli"`` (8 bits, 256 codes) or ``"one-hot"`` (3 variables of 4
            classes, K = 12, 64 codes).
        seed: seed of the weights.
        data_size: D.
        weight_scale: the standard deviation of the weights.
        cv_model: NVIL's control variates.

    Returns:
        An :class:`NVIL` whose ``inf_model`` maps ``[B, D]`` to q(z|x).
    """
    one_of("code", code, ("bernoulli", "one-hot"))
    positive_int("data_size", data_size)
    scale = positive_number("weight_scale", weight_scale)
    if code == "bernoulli":
        K = 8
        prior = BernoulliPriorNet(K, trainable=True)
        q = BernoulliCPDNet(K, num_inputs=data_size)
    else:
        K = 12
        prior = OneHotPriorNet(K, num_classes=4, trainable=True)
        q = OneHotCPDNet(K, num_inputs=data_size, num_classes=4)
    nvil = NVIL(JointDistribution(prior, BernoulliCPDNet(data_size, num_inputs=K)), q,
                cv_model).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in list(nvil.gen_params()) + list(nvil.inf_params()):
            param.copy_(scale * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return nvil


def draw_data(nvil: NVIL, num_points: int, seed: int = 1) -> Tensor:
    """``num_points`` draws x ~ p(x) from the model, with their own seed (the global random
    state is untouched).

    Returns:
        ``[num_points] + data_shape``.
    """
    positive_int("num_points", num_points)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return nvil.gen_model.sample((num_points,))[1]
