"""Binary and categorical codes: their priors, q(z|x) nets, and the relaxed and
straight-through stand-ins that make a discrete code differentiable (with bias)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributions as td
from torch import Tensor, nn

from ..conditionals import CPDNet, _hidden_encoder
from ..networks import ReshapeLast
from ..priors import PriorNet
from ..utils import ShapeLike, as_shape, one_of, positive_int, positive_number, positive_shape, probability

__all__ = ["FlattenCode", "code_parts", "rebuild_code", "code_kind", "code_mode",
           "BernoulliStraightThrough", "relaxed", "straight_through",
           "BernoulliPriorNet", "OneHotPriorNet", "BernoulliCPDNet", "OneHotCPDNet"]


class FlattenCode(td.ReshapeTransform):
    """Lay L one-hot blocks of C classes side by side: ``[..., L, C] -> [..., L * C]``.

    Unlike ``td.ReshapeTransform``, two of them with the same shapes are equal, so that
    torch's KL of two ``TransformedDistribution`` s (which requires equal transforms)
    applies to two flattened codes.

    Args:
        num_variables: L.
        num_classes: C.
    """

    def __init__(self, num_variables: int, num_classes: int, cache_size: int = 0):
        positive_int("num_variables", num_variables)
        positive_int("num_classes", num_classes)
        super().__init__((num_variables, num_classes), (num_variables * num_classes,),
                         cache_size=cache_size)

    def with_cache(self, cache_size: int = 1) -> "FlattenCode":
        if self._cache_size == cache_size:
            return self
        return FlattenCode(*self.in_shape, cache_size=cache_size)

    def __eq__(self, other) -> bool:
        return isinstance(other, td.ReshapeTransform) and self.in_shape == other.in_shape \
            and self.out_shape == other.out_shape

    def __hash__(self) -> int:
        return hash((td.ReshapeTransform, self.in_shape, self.out_shape))


#: the kinds of code that :func:`code_kind` tells apart
KINDS = ("binary", "categorical")


def code_kind(dist: td.Distribution) -> tuple[str, int, int]:
    """Which discrete code a distribution over ``[K]`` is, read from its structure.

    Args:
        dist: ``Independent(Bernoulli)`` (:class:`~dpm_core.discrete.BernoulliPriorNet`,
            :class:`~dpm_core.discrete.BernoulliCPDNet`) or ``Independent(OneHotCategorical)``
            reshaped from ``[L, C]`` to ``[L * C]`` (:class:`~dpm_core.discrete.OneHotPriorNet`,
            :class:`~dpm_core.discrete.OneHotCPDNet`).

    Returns:
        ``(kind, L, C)``: ``("binary", K, 2)`` (K variables of two values, one number each)
        or ``("categorical", L, C)``.

    Raises:
        ValueError: for any other distribution, e.g. a Gaussian.
    """
    inner, transforms = dist, []
    if isinstance(inner, td.TransformedDistribution):
        inner, transforms = inner.base_dist, list(inner.transforms)
    if isinstance(inner, td.Independent):
        inner = inner.base_dist
    K = dist.event_shape[-1] if len(dist.event_shape) == 1 else None
    if isinstance(inner, td.Bernoulli) and not transforms and K is not None:
        return "binary", K, 2
    if isinstance(inner, td.OneHotCategorical) and len(transforms) == 1 \
            and isinstance(transforms[0], td.ReshapeTransform) \
            and len(transforms[0].in_shape) == 2 and K is not None:
        L, C = transforms[0].in_shape
        return "categorical", L, C
    base = type(inner).__name__
    raise ValueError(
        f"the code explorer needs a discrete code: a prior p(z) that is Independent(Bernoulli) "
        f"(BernoulliPriorNet) or a flattened Independent(OneHotCategorical) (OneHotPriorNet), "
        f"got {type(dist).__name__} of {base} with event_shape {tuple(dist.event_shape)}; "
        f"for a continuous code (Gaussian, mixture, flow) use LatentExplorer")


def code_mode(probs: Tensor, kind: str, num_classes: int) -> Tensor:
    """The most probable code of a factorised q(z|x), factor by factor: its mode.

    Args:
        probs: the probabilities of q, ``[..., K]`` (q's mean, for both kinds).
        kind: ``"binary"``: z_k = 1 where q(z_k = 1) > 1/2 (a tie gives 0);
            ``"categorical"``: in each block of C, a one at the most probable class
            (a tie gives the first).
        num_classes: C (ignored for a binary code).

    Returns:
        The code ``[..., K]``, of probs' dtype.
    """
    one_of("kind", kind, KINDS)
    if kind == "binary":
        return (probs > 0.5).to(probs.dtype)
    blocks = probs.reshape(probs.shape[:-1] + (-1, num_classes))  # [..., L, C]
    one_hot = nn.functional.one_hot(blocks.argmax(-1), num_classes)
    return one_hot.reshape(probs.shape).to(probs.dtype)


class BernoulliStraightThrough(td.Bernoulli):
    """A Bernoulli whose ``rsample`` is a hard draw with the straight-through gradient [4].

    The forward value is the draw b in {0, 1}; the backward pass treats it as the
    probability p, ``b + (p - p.detach())``, exactly as ``td.OneHotCategoricalStraightThrough``
    does for one-hot codes. So grad E_q[f(z)] = (f(1) - f(0)) grad p is replaced by
    f'(b) grad p: biased, unless f is linear in z. Its KL is the Bernoulli's (torch finds
    the pair through the subclass).
    """

    has_rsample = True

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        hard = self.sample(sample_shape)
        probs = self.probs
        return hard + (probs - probs.detach())


def _flat_one_hot(dist: td.Distribution, num_variables: int, num_classes: int) -> td.Distribution:
    """A distribution over ``[..., L, C]`` one-hot blocks as one over ``[..., L * C]``."""
    return td.TransformedDistribution(td.Independent(dist, 1),
                                      [FlattenCode(num_variables, num_classes)])


def code_parts(q: td.Distribution) -> tuple[td.Distribution, int, list]:
    """Split a factorised code into its Bernoulli or OneHotCategorical, the number of
    reinterpreted dimensions, and its transforms.

    Args:
        q: ``Independent(Bernoulli)``, a flattened ``Independent(OneHotCategorical)``, or a
            plain ``td.Bernoulli`` / ``td.OneHotCategorical``.

    Returns:
        ``(inner, ndims, transforms)``: q is ``rebuild_code(inner, ndims, transforms)``.
        ``inner.batch_shape`` is q's batch_shape followed by the code's units (``[K]`` bits or
        ``[L]`` variables), the last ``ndims`` of them reinterpreted as the event.

    Raises:
        NotImplementedError: for any other distribution.
    """
    transforms, inner, ndims = [], q, 0
    if isinstance(inner, td.TransformedDistribution):
        transforms, inner = list(inner.transforms), inner.base_dist
    if isinstance(inner, td.Independent):
        inner, ndims = inner.base_dist, inner.reinterpreted_batch_ndims
    if not isinstance(inner, (td.Bernoulli, td.OneHotCategorical)):
        expected = ("a factorised code: Independent(Bernoulli) or a flattened "
                    "Independent(OneHotCategorical) (the distributions of this module)")
        raise NotImplementedError(f"expected {expected}, got {q}")
    return inner, ndims, transforms


def rebuild_code(inner: td.Distribution, ndims: int, transforms: list) -> td.Distribution:
    """The inverse of :func:`code_parts`: ``Independent`` over ``ndims`` dimensions of ``inner``
    (when ``ndims > 0``), then the transforms (when there are any)."""
    dist = td.Independent(inner, ndims) if ndims else inner
    return td.TransformedDistribution(dist, transforms) if transforms else dist


def relaxed(q: td.Distribution, temperature: float) -> td.Distribution:
    """The Concrete (Gumbel-softmax) relaxation of a factorised code [2, 3].

    Each Bernoulli becomes a ``td.RelaxedBernoulli`` and each one-hot variable a
    ``td.RelaxedOneHotCategorical`` with the same logits: draws lie inside the cube or the
    simplices, have ``rsample``, and approach the discrete code as the temperature goes to 0.

    Args:
        q: a code of this module (batch_shape and event_shape are kept).
        temperature: tau > 0.

    Returns:
        The relaxed distribution, with q's batch_shape and event_shape.

    Raises:
        NotImplementedError: if q is not a factorised Bernoulli or one-hot code.
    """
    tau = positive_number("temperature", temperature)
    inner, ndims, transforms = code_parts(q)
    t = torch.tensor(tau, dtype=inner.logits.dtype, device=inner.logits.device)
    if isinstance(inner, td.Bernoulli):
        inner = td.RelaxedBernoulli(t, logits=inner.logits)
    else:
        inner = td.RelaxedOneHotCategorical(t, logits=inner.logits)
    return rebuild_code(inner, ndims, transforms)


def straight_through(q: td.Distribution) -> td.Distribution:
    """q with the straight-through ``rsample`` [4]: hard draws, gradients as if they were q's means.

    Returns:
        The same distribution (batch_shape, event_shape, log_prob and KL unchanged) built
        on :class:`BernoulliStraightThrough` or ``td.OneHotCategoricalStraightThrough``.
    """
    inner, ndims, transforms = code_parts(q)
    if isinstance(inner, td.Bernoulli):
        inner = BernoulliStraightThrough(logits=inner.logits)
    else:
        inner = td.OneHotCategoricalStraightThrough(logits=inner.logits)
    return rebuild_code(inner, ndims, transforms)


class BernoulliPriorNet(PriorNet):
    """Independent binary units, p(z) = prod_k Bernoulli(z_k | sigmoid(l_k)).

    Args:
        outcome_shape: the code's shape, e.g. ``K``.
        logits: the initial logits l (a number or a tensor broadcastable to
            ``outcome_shape``); 0 is the uniform prior over the 2^K codes.
        trainable: whether l is an ``nn.Parameter`` (else a buffer, fixed).
    """

    def __init__(self, outcome_shape: ShapeLike, logits: float | Tensor = 0.0,
                 trainable: bool = False):
        super().__init__(outcome_shape)
        if not isinstance(trainable, bool):
            raise ValueError(f"trainable must be a bool, got {trainable!r}")
        logits = torch.as_tensor(logits, dtype=torch.float32)
        try:
            init = logits.expand(self.outcome_shape).clone()
        except RuntimeError:
            raise ValueError(f"logits must broadcast to outcome_shape {self.outcome_shape}, "
                             f"got shape {tuple(logits.shape)}") from None
        if trainable:
            self.logits = nn.Parameter(init)
        else:
            self.register_buffer("logits", init)

    def forward(self, batch_shape: ShapeLike) -> td.Distribution:
        """Return ``Independent(Bernoulli)`` with batch_shape ``batch_shape`` and event_shape
        ``outcome_shape``."""
        shape = as_shape("batch_shape", batch_shape) + self.outcome_shape
        return td.Independent(td.Bernoulli(logits=self.logits.expand(shape)),
                              len(self.outcome_shape))


def _num_variables(latent_size: ShapeLike, num_classes: int) -> int:
    shape = as_shape("outcome_shape", latent_size, allow_empty=False)
    positive_int("num_classes", num_classes)
    if len(shape) != 1 or shape[0] <= 0 or shape[0] % num_classes:
        raise ValueError(f"outcome_shape must be (K,) with K = L * num_classes, a positive "
                         f"multiple of num_classes={num_classes}, got {latent_size!r}")
    return shape[0] // num_classes


class OneHotPriorNet(PriorNet):
    """L independent categorical variables with C classes, as L one-hot blocks in one vector.

    p(z) = prod_l OneHotCategorical(z_l | softmax(l_l)), z = [z_1, ..., z_L] with K = L * C.

    Args:
        outcome_shape: K (or ``(K,)``), a multiple of ``num_classes``.
        num_classes: C.
        trainable: whether the logits (zeros: uniform) are an ``nn.Parameter``.
    """

    def __init__(self, outcome_shape: ShapeLike, num_classes: int, trainable: bool = False):
        num_variables = _num_variables(outcome_shape, num_classes)
        super().__init__(outcome_shape)
        if not isinstance(trainable, bool):
            raise ValueError(f"trainable must be a bool, got {trainable!r}")
        self.num_variables, self.num_classes = num_variables, num_classes
        init = torch.zeros(num_variables, num_classes)  # [L, C]
        if trainable:
            self.logits = nn.Parameter(init)
        else:
            self.register_buffer("logits", init)

    def forward(self, batch_shape: ShapeLike) -> td.Distribution:
        """Return a flattened ``Independent(OneHotCategorical)`` with batch_shape
        ``batch_shape`` and event_shape ``(K,)``."""
        shape = as_shape("batch_shape", batch_shape) + tuple(self.logits.shape)  # [B, L, C]
        return _flat_one_hot(td.OneHotCategorical(logits=self.logits.expand(shape)),
                             self.num_variables, self.num_classes)


class _LogitsNet(CPDNet):
    """An optional ReLU hidden layer, then a linear head to logits of shape ``logits_shape``."""

    def __init__(self, outcome_shape: ShapeLike, num_inputs: int, hidden_size: Optional[int],
                 p_drop: float, logits_shape: tuple):
        super().__init__(outcome_shape)
        positive_int("num_inputs", num_inputs)
        p_drop = probability("p_drop", p_drop, include_one=False)
        self.encoder, width = _hidden_encoder(num_inputs, hidden_size, p_drop)
        self.logits = nn.Sequential(nn.Dropout(p_drop), nn.Linear(width, math.prod(logits_shape)),
                                    ReshapeLast(logits_shape))


class BernoulliCPDNet(_LogitsNet):
    """Binary units given an input: prod_k Bernoulli(z_k | sigmoid(f(h)_k)).

    Without a hidden layer it is one layer of a sigmoid belief network, the model of [1]:
    as q(z|x) it encodes x into K bits, as p(x|z) it decodes bits (or any vector) into
    binary data.

    Args:
        outcome_shape: the outcome's shape, e.g. ``K``.
        num_inputs: size of the rightmost dimension of the inputs.
        hidden_size: size of an optional ReLU hidden layer (``None`` or 0 for none).
        p_drop: dropout rate before every linear layer.
    """

    def __init__(self, outcome_shape: ShapeLike, num_inputs: int,
                 hidden_size: Optional[int] = None, p_drop: float = 0.0):
        shape = positive_shape("outcome_shape", outcome_shape)
        super().__init__(shape, num_inputs, hidden_size, p_drop, shape)

    def forward(self, inputs: Tensor) -> td.Distribution:
        """Return ``Independent(Bernoulli)`` with batch_shape ``inputs.shape[:-1]`` and
        event_shape ``outcome_shape``."""
        return td.Independent(td.Bernoulli(logits=self.logits(self.encoder(inputs))),
                              len(self.outcome_shape))


class OneHotCPDNet(_LogitsNet):
    """L categorical variables with C classes given an input, as L one-hot blocks of one vector.

    q(z|h) = prod_l OneHotCategorical(z_l | softmax(f(h)_l)). With ``num_classes`` bound
    (``functools.partial(OneHotCPDNet, num_classes=C)``) it is a factory for
    :class:`InferenceModel`, whose ``latent_size`` is K = L * C.

    Args:
        outcome_shape: K (or ``(K,)``), a multiple of ``num_classes``.
        num_inputs: size of the rightmost dimension of the inputs.
        hidden_size: size of an optional ReLU hidden layer (``None`` or 0 for none).
        p_drop: dropout rate before every linear layer.
        num_classes: C (keyword only).
    """

    def __init__(self, outcome_shape: ShapeLike, num_inputs: int,
                 hidden_size: Optional[int] = None, p_drop: float = 0.0, *, num_classes: int):
        num_variables = _num_variables(outcome_shape, num_classes)
        super().__init__(outcome_shape, num_inputs, hidden_size, p_drop,
                         (num_variables, num_classes))
        self.num_variables, self.num_classes = num_variables, num_classes

    def forward(self, inputs: Tensor) -> td.Distribution:
        """Return a flattened ``Independent(OneHotCategorical)`` with batch_shape
        ``inputs.shape[:-1]`` and event_shape ``(K,)``."""
        logits = self.logits(self.encoder(inputs))  # [B, L, C]
        return _flat_one_hot(td.OneHotCategorical(logits=logits),
                             self.num_variables, self.num_classes)
