r"""Normalising-flow posteriors: a diagonal Gaussian pushed through conditioned affine couplings.

A normalising flow turns a simple distribution into a richer one with a bijection f:
if eps ~ q_0 then z = f(eps) has the density

    log q(z) = log q_0(f^{-1}(z)) + log |det J_{f^{-1}}(z)|
             = log q_0(eps) - log |det J_f(eps)|,

so sampling stays a differentiable function of parameter-free noise (``rsample``) and
every draw can be scored exactly. ``torch.distributions.TransformedDistribution`` does
this bookkeeping for any chain of :class:`torch.distributions.transforms.Transform`;
this module supplies the transform, an affine coupling layer [1] whose shift and
log-scale depend on the encoder's features h(x), and the CPD net that chains them
after a diagonal Gaussian q_0(z|x) [2].

References:
    [1] Dinh, Sohl-Dickstein & Bengio (2017). Density estimation using Real NVP.
    [2] Rezende & Mohamed (2015). Variational Inference with Normalizing Flows.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.distributions as td
from torch import Tensor, nn
from torch.distributions import constraints

from .conditionals import CPDNet, GaussianCPDNet
from .utils import ShapeLike, positive_int, positive_number, positive_shape, probability

__all__ = ["AffineCoupling", "CouplingNet", "FlowCPDNet", "coupling_masks", "central_code"]

#: ``(shift, log_scale)``, each ``batch_shape + [K]``, from the conditioning part of z
ShiftLogScale = Callable[[Tensor], tuple[Tensor, Tensor]]


def coupling_masks(latent_size: int, num_layers: int) -> Tensor:
    """The masks of ``num_layers`` couplings over K coordinates, ``[num_layers, K]`` (1: kept).

    Even layers pass the first K // 2 coordinates through and transform the rest; odd
    layers swap the roles, so that two consecutive layers transform every coordinate.
    """
    K = positive_int("latent_size", latent_size)
    num_layers = positive_int("num_layers", num_layers)
    first = (torch.arange(K) < K // 2).float()  # [K]
    return torch.stack([first if layer % 2 == 0 else 1 - first
                        for layer in range(num_layers)])  # [num_layers, K]


class AffineCoupling(td.transforms.Transform):
    r"""The affine coupling bijection of Real NVP [1] on ``[..., K]``.

    With a binary mask m (1 marks the coordinates that pass through unchanged),

        y = z * exp(s) + t,    s, t = (1 - m) * g(m * z),
        z = (y - t) * exp(-s),  s, t = (1 - m) * g(m * y)   (as m * y = m * z),
        log |det dy/dz| = sum_k s_k,

    since the Jacobian is triangular once the coordinates are ordered with m first,
    with ones and exp(s) on its diagonal. The conditioner g may depend on anything
    besides m * z, here the features of the image x, without spoiling the inverse.

    Args:
        mask: m, ``[K]``, zeros and ones.
        shift_log_scale: g, a function from ``m * z`` (``batch_shape + [K]``) to
            ``(t, s)`` of the same shape; it must broadcast over leading sample
            dimensions (:meth:`CouplingNet.condition` builds one).
        reuse_draws: hand back the preimage z of the last output y when asked to
            invert y itself (``log_prob`` of a fresh draw), as torch's ``cache_size=1``
            does, but not where that would lose a gradient: a y drawn without autograd
            (``sample``) and inverted with it (the score function differentiates
            log q(y) at fixed y) is inverted by computation. The gradient of log q(y)
            with respect to the parameters is the same either way, as
            f^{-1}(f(z)) = z whatever the parameters; y itself is then not on the
            graph of log q(y).
        validate_args: check that the mask holds only zeros and ones (a test on its
            values, which a GPU answers only after finishing its queued work).

    Shapes:
        z and y are ``batch_shape + [K]`` (the transform has ``event_dim`` 1), and
        :meth:`log_abs_det_jacobian` returns ``batch_shape``, one number per vector z.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, mask: Tensor, shift_log_scale: ShiftLogScale, reuse_draws: bool = False,
                 validate_args: bool = True):
        super().__init__(cache_size=0)
        if mask.dim() != 1 or (validate_args and not bool(((mask == 0) | (mask == 1)).all())):
            raise ValueError(f"mask must be a vector [K] of zeros and ones, got "
                             f"{mask.tolist() if mask.dim() <= 1 else tuple(mask.shape)}")
        self.mask = mask
        self._kept = 1 - mask
        self.shift_log_scale = shift_log_scale
        self.reuse_draws = reuse_draws
        # (z, y, s) of the last call in either direction: log_abs_det_jacobian(z, y)
        # right after it needs no second pass through g (Pyro's couplings do the same)
        self._last: Optional[tuple[Tensor, Tensor, Tensor]] = None
        self._last_on_graph = False  # whether the last forward call ran under autograd

    def _params(self, z_or_y: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self.shift_log_scale(z_or_y * self.mask)
        # zero on the coordinates that pass through
        return self._kept * shift, self._kept * log_scale

    def _call(self, z: Tensor) -> Tensor:
        shift, log_scale = self._params(z)
        y = z * log_scale.exp() + shift
        self._last = (z, y, log_scale)
        self._last_on_graph = torch.is_grad_enabled()
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        if self.reuse_draws and self._last is not None and y is self._last[1] \
                and (self._last_on_graph or not torch.is_grad_enabled()):
            return self._last[0]
        shift, log_scale = self._params(y)
        z = (y - shift) * (-log_scale).exp()
        self._last = (z, y, log_scale)
        self._last_on_graph = False
        return z

    def log_abs_det_jacobian(self, z: Tensor, y: Tensor) -> Tensor:
        """log |det dy/dz| of each vector z, shape ``batch_shape``.

        It is sum_k s_k(m * z), the log-scales of the transformed coordinates.
        """
        if self._last is not None and z is self._last[0] and y is self._last[1]:
            log_scale = self._last[2]
        else:
            _, log_scale = self._params(z)
        return log_scale.sum(-1)

    def __repr__(self) -> str:
        return f"AffineCoupling(mask={self.mask.int().tolist()})"


class CouplingNet(nn.Module):
    """The conditioner g of one coupling: a ReLU layer over ``(m * z, c)``, then t and s.

    The hidden layer is relu(W (m * z) + c), where the context c ``[B, U]`` is the
    features' share of it, W_h h + b: :class:`FlowCPDNet` computes those of all its
    couplings with one linear layer, once per batch, and :meth:`condition` broadcasts
    c over the draws. The log-scale is bounded, s = b tanh(a / b) with
    b = ``max_log_scale``, so that one layer stretches or shrinks a coordinate by at
    most exp(b); near a = 0 it is a itself. The output layer starts at zero: the
    untrained coupling is the identity.

    Args:
        latent_size: K.
        hidden_size: U, the hidden units.
        max_log_scale: b.
    """

    def __init__(self, latent_size: int, hidden_size: int, max_log_scale: float = 2.0):
        super().__init__()
        K = positive_int("latent_size", latent_size)
        positive_int("hidden_size", hidden_size)
        self.max_log_scale = positive_number("max_log_scale", max_log_scale)
        self.z_in = nn.Linear(K, hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, 2 * K)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def condition(self, context: Tensor) -> ShiftLogScale:
        """g(., c): the conditioner for a batch of contexts c ``batch_shape + [U]``.

        The function it returns maps ``m * z`` with shape ``sample_shape + batch_shape +
        [K]`` to ``(t, s)`` of that shape.
        """
        b = self.max_log_scale

        def shift_log_scale(z_masked: Tensor) -> tuple[Tensor, Tensor]:
            hidden = torch.relu(self.z_in(z_masked) + context)  # [S, B, U]
            shift, raw = self.out(hidden).chunk(2, dim=-1)  # [S, B, K] each
            return shift, b * torch.tanh(raw / b)

        return shift_log_scale


class FlowCPDNet(CPDNet):
    """q(z|h): a diagonal Gaussian q_0(z|h) followed by L affine couplings conditioned on h.

    z = f_L(... f_1(eps)), eps ~ N(mu(h), diag(sigma(h)^2)), where f_l is an
    :class:`AffineCoupling` whose conditioner reads h; consecutive layers transform
    complementary halves of z (:func:`coupling_masks`). The couplings start as the
    identity, so the untrained net is the :class:`GaussianCPDNet` it holds as
    ``base``. The distribution has ``rsample`` (the pathwise gradient reaches mu,
    sigma, the couplings and h), an exact ``log_prob``, and no closed-form KL: NVIL
    estimates the rate from the draws. ``log_prob`` of a draw just made reuses its
    preimage eps instead of inverting the couplings (``reuse_draws``), which halves
    the flow's share of a training step.

    Args:
        outcome_shape: ``K`` or ``(K,)``; the flow acts on vectors.
        num_inputs: size of the rightmost dimension of h.
        hidden_size: the ReLU layer in front of the base's heads, as for
            :class:`GaussianCPDNet` (``None`` or 0 for none).
        p_drop: dropout rate before every linear layer that reads h.
        num_layers: L, the couplings.
        coupling_size: U, the hidden units of each coupling's conditioner.
        max_log_scale: the bound on each coupling's log-scale (see :class:`CouplingNet`).
        coupling: the bijection of each layer, called as ``coupling(mask, shift_log_scale)``
            with the arguments of :class:`AffineCoupling` (``None``: that class, reusing
            draws); a notebook passes the coupling its students wrote.

    Raises:
        ValueError: if the outcome shape is not a vector, or a size is not a positive int.

    Example:
        >>> q = InferenceModel(partial(FlowCPDNet, num_layers=4), latent_size=16,
        ...                    width=28, height=28)
        >>> qz = q(torch.zeros(5, 1, 28, 28))
        >>> qz.batch_shape, qz.event_shape, qz.rsample((3,)).shape
        (torch.Size([5]), torch.Size([16]), torch.Size([3, 5, 16]))
    """

    def __init__(self, outcome_shape: ShapeLike, num_inputs: int,
                 hidden_size: Optional[int] = None, p_drop: float = 0.0, num_layers: int = 4,
                 coupling_size: int = 64, max_log_scale: float = 2.0,
                 coupling: Optional[Callable[[Tensor, ShiftLogScale], td.Transform]] = None):
        shape = positive_shape("outcome_shape", outcome_shape)
        if len(shape) != 1:
            raise ValueError(f"outcome_shape must be a vector shape (K,) for a flow, got {shape}")
        super().__init__(shape)
        K = shape[0]
        positive_int("num_inputs", num_inputs)
        positive_int("num_layers", num_layers)
        positive_int("coupling_size", coupling_size)
        self.base = GaussianCPDNet(shape, num_inputs, hidden_size=hidden_size, p_drop=p_drop)
        # the features' share of every coupling's hidden layer, in one linear layer
        self.context = nn.Sequential(nn.Dropout(probability("p_drop", p_drop, include_one=False)),
                                     nn.Linear(num_inputs, num_layers * coupling_size))
        self.couplings = nn.ModuleList(
            CouplingNet(K, coupling_size, max_log_scale=max_log_scale) for _ in range(num_layers))
        self.register_buffer("masks", coupling_masks(K, num_layers))  # [num_layers, K]
        if coupling is None:
            # answer of dpm2_beyond/coupling-solution
            # the masks come from coupling_masks: no need to check their values at every call
            coupling = partial(AffineCoupling, reuse_draws=True, validate_args=False)
            # end of answer
        self.coupling = coupling

    def forward(self, inputs: Tensor) -> td.Distribution:
        """Return ``TransformedDistribution(Independent(Normal), [AffineCoupling] * L)`` with
        batch_shape ``inputs.shape[:-1]`` and event_shape ``(K,)``."""
        base = self.base(inputs)  # batch_shape [B], event_shape [K]
        contexts = self.context(inputs).chunk(len(self.couplings), dim=-1)  # [B, U] each
        transforms = [self.coupling(mask, net.condition(c))
                      for mask, net, c in zip(self.masks, self.couplings, contexts)]
        return td.TransformedDistribution(base, transforms)


def central_code(dist: td.Distribution) -> tuple[Tensor, bool]:
    """The code that stands for a distribution over ``[K]`` in the views: its mean, if it has one.

    A ``TransformedDistribution`` (a normalising flow) has no mean in closed form; it
    is stood for by the image of its base's central code under its transforms, f(mu)
    (for a flow that starts as the identity, the mean of its base Gaussian).

    Returns:
        ``(code, is_mean)``: the code with shape ``batch_shape + event_shape``, and
        whether it is the mean.

    Raises:
        NotImplementedError: for a distribution with neither a mean nor a base.
    """
    try:
        return dist.mean, True
    except NotImplementedError:
        if not isinstance(dist, td.TransformedDistribution):
            raise
    code, _ = central_code(dist.base_dist)
    for transform in dist.transforms:
        code = transform(code)
    return code, False
