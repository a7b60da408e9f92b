
r"""Discrete latent codes: binary and categorical priors and posteriors, and their exact test bed.

A code z is either K binary units, p(z) = prod_k Bernoulli(z_k | sigmoid(l_k)), or L
categorical variables with C classes each, every one written as a one-hot vector. The
L one-hot blocks are laid side by side in one vector of K = L * C numbers, so that a
categorical code has the same event_shape ``(K,)`` as a binary or a Gaussian one and feeds
a decoder (:class:`BinarizedImageModel`, any ``[..., K]`` network) directly, and
:class:`InferenceModel` builds it from ``latent_size=K``. Both families come from
``torch.distributions``: ``td.Bernoulli``, and ``td.OneHotCategorical`` (rather than
``td.Categorical``, whose class indices a decoder could not read) over ``[L, C]``,
reshaped to ``[L * C]`` by :class:`FlattenCode`. (In this module's shape comments L is the
number of categorical variables, C the number of classes of each: no image is in sight.)

Neither code has ``rsample``, so :class:`NVIL` trains q(z|x) with the score function [1];
the KL of two factorised codes has a closed form that torch registers
(Bernoulli/Bernoulli, OneHotCategorical/OneHotCategorical, through ``td.Independent`` and
``td.TransformedDistribution``). The alternatives to the score function replace the code by
a differentiable stand-in, at the price of bias: :func:`relaxed` (Concrete / Gumbel-softmax
[2, 3]) and :func:`straight_through` [4]. A q(z|x) net that returns ``straight_through(q)``
trains in NVIL unchanged (it has ``rsample``, so NVIL goes pathwise, and keeps the discrete
KL); a Concrete q does not, since NVIL would score the relaxed draws under the discrete prior
for want of a registered KL, so :func:`relaxed_surrogate_loss` estimates the distortion at
relaxed draws and keeps the exact discrete KL, as [2] does. :class:`LeaveOneOut` is the
multi-sample baseline of the score function [5].

The package: :mod:`.codes` (the codes, their nets, the stand-ins), :mod:`.estimators`
(leave-one-out, relaxed surrogate, VIMCO) and :mod:`.testbed` (enumeration and exact bounds).

The test bed: a code small enough to enumerate (8 bits, 256 codes; or 3 variables of 4
classes, 64 codes). :func:`enumerate_codes` lists every code, so that
``JointDistribution.log_marginal(x, enumerate_codes)`` is the exact log p(x),
``JointDistribution.posterior(x, enumerate_codes)`` the exact posterior, and
:func:`exact_elbo` the exact ELBO of a factorised q, differentiable: autograd through the
enumerated sum gives the exact gradient that every estimator is measured against.

References:
    [1] Mnih & Gregor (2014). Neural Variational Inference and Learning in Belief Networks.
    [2] Jang, Gu & Poole (2017). Categorical Reparameterization with Gumbel-Softmax.
    [3] Maddison, Mnih & Teh (2017). The Concrete Distribution.
    [4] Bengio, Leonard & Courville (2013). Estimating or Propagating Gradients Through
        Stochastic Neurons for Conditional Computation.
    [5] Mnih & Rezende (2016). Variational Inference for Monte Carlo Objectives (VIMCO);
        Kool, van Hoof & Welling (2019). Buy 4 REINFORCE Samples, Get a Baseline for Free!
"""

from __future__ import annotations

from .codes import (
    FlattenCode,
    code_parts,
    rebuild_code,
    code_kind,
    code_mode,
    BernoulliStraightThrough,
    relaxed,
    straight_through,
    BernoulliPriorNet,
    OneHotPriorNet,
    BernoulliCPDNet,
    OneHotCPDNet,
)
from .estimators import (
    LeaveOneOut,
    relaxed_surrogate_loss,
    vimco_surrogate_loss,
)
from .testbed import (
    MAX_CODES,
    enumerate_codes,
    exact_elbo,
    exact_multisample_bound,
    make_testbed,
    draw_data,
)

__all__ = [
    "FlattenCode",
    "code_parts",
    "rebuild_code",
    "code_kind",
    "code_mode",
    "BernoulliStraightThrough",
    "relaxed",
    "straight_through",
    "BernoulliPriorNet",
    "OneHotPriorNet",
    "BernoulliCPDNet",
    "OneHotCPDNet",
    "LeaveOneOut",
    "relaxed_surrogate_loss",
    "vimco_surrogate_loss",
    "enumerate_codes",
    "exact_elbo",
    "exact_multisample_bound",
    "make_testbed",
    "draw_data",
    "MAX_CODES",
]
