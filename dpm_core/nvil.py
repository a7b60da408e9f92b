"""Neural variational inference: a generative model trained jointly with q(z|x).

References:
    [1] Mnih & Gregor (2014). Neural Variational Inference and Learning in Belief Networks.
    [2] Kingma & Welling (2014). Auto-Encoding Variational Bayes.
    [3] Burda, Grosse & Salakhutdinov (2016). Importance Weighted Autoencoders.
    [4] Schulman, Heess, Weber & Abbeel (2015). Gradient Estimation Using Stochastic
        Computation Graphs.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributions as td
from torch import Tensor, nn

from .conditionals import CPDNet
from .joint import MAX_ELEMENTS, JointDistribution, sample_chunks
from .utils import one_of, positive_int
from .variance import VarianceReduction

__all__ = ["NVIL"]

_ESTIMATORS = ("auto", "reparam", "sfe", "mixture")


def _num_samples(sample_size) -> int:
    sample_size = positive_int("sample_size", sample_size, or_none=True)
    return 1 if sample_size is None else sample_size


def _closed_form_kl(q: td.Distribution, p: td.Distribution) -> Optional[Tensor]:
    try:
        return td.kl_divergence(q, p)
    except NotImplementedError:
        return None


def _mixture_rsample(qz: td.Distribution, sample_shape: torch.Size) -> tuple[Tensor, Tensor]:
    """Draw z ~ q(z|x) = sum_m w_m q_m(z|x) as c ~ Cat(w) (no gradient), z ~ q_c (pathwise).

    Args:
        qz: a ``td.MixtureSameFamily`` whose component distribution has ``rsample``.
        sample_shape: ``(S,)``.

    Returns:
        ``(z, log_w)``: z with shape ``sample_shape + batch_shape + event_shape``, a
        differentiable function of the chosen component's parameters, and log w_c, the
        log-weight of the chosen component, with shape ``sample_shape + batch_shape``.

    Raises:
        NotImplementedError: if qz is not such a mixture.
    """
    comps = getattr(qz, "component_distribution", None)
    if not isinstance(qz, td.MixtureSameFamily) or not comps.has_rsample:
        what = (f"a MixtureSameFamily of {type(comps).__name__} (no rsample)"
                if isinstance(qz, td.MixtureSameFamily) else type(qz).__name__)
        raise NotImplementedError(
            f"estimator='mixture' needs q(z|x) to be a td.MixtureSameFamily whose components "
            f"have rsample (e.g. MoGCPDNet), got {what}; use estimator='auto' (pathwise for a "
            f"reparameterisable q, score function otherwise) or 'sfe'")
    mix = qz.mixture_distribution
    c = mix.sample(sample_shape)  # [S, B], a discrete draw: no gradient flows through it
    # every component draws (cheap next to the decoder), the chosen one is kept, as in
    # MixtureSameFamily.sample but with rsample
    z_all = comps.rsample(sample_shape)  # [S, B, M, K]
    event_shape = tuple(qz.event_shape)
    dim = -1 - len(event_shape)  # the components' dimension M
    index = c.reshape(c.shape + (1,) * (1 + len(event_shape)))
    z = z_all.gather(dim, index.expand(c.shape + (1,) + event_shape)).squeeze(dim)  # [S, B, K]
    return z, mix.log_prob(c)  # [S, B, K], [S, B]


class NVIL(nn.Module):
    """A latent variable model p(z) p(x|z) and an approximate posterior q(z|x), trained on the ELBO.

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) = -D - R, where D (the
    distortion) is the expected negative log-likelihood and R (the rate) the KL.

    Gradients (see :meth:`surrogate_loss`):

    * when q has ``rsample`` (e.g. a diagonal Gaussian), the pathwise
      estimator [2]: z = mu + sigma * eps, and autograd differentiates the ELBO;
    * otherwise (e.g. a mixture), the score-function estimator [1] for q's
      parameters, ``(r - b) * grad log q(z|x)``, with the reward
      ``r = log p(x|z)`` (minus the sampled rate when no closed form exists) and
      the control variates of ``cv_model`` providing ``b``;
    * on request (``estimator="mixture"``), for a mixture of reparameterisable
      components such as :class:`MoGCPDNet`'s, the score function for the
      mixing weights and pathwise gradients for the components (a stochastic
      computation graph with one discrete and one continuous node [4]): see
      :meth:`surrogate_loss`.

    R is the closed-form KL where torch registers one, and a Monte Carlo
    estimate otherwise. All estimates are vectorised over samples.

    Args:
        gen_model: p(z) p(x|z).
        inf_model: q(z|x), any CPD net that maps ``batch_shape + data_shape`` to a
            distribution over the latent (usually an :class:`InferenceModel`).
        cv_model: control variates for the score-function terms (default: none); one
            that rescales the reward (:class:`ScaledReward`) rescales those terms only: with
            a closed-form rate, whose exact gradient is not rescaled, q then follows
            (1/s) grad E_q[log p(x|z)] - beta grad KL, an implicit beta of s on the encoder,
            and under ``"mixture"`` it reweights the mixing weights' gradient against the rest.
        estimator: the gradient estimator that :meth:`forward` and
            :meth:`surrogate_loss` use when called without one (so that
            :func:`train_vae` trains with it): ``"auto"``, ``"reparam"``, ``"sfe"``
            or ``"mixture"``.

    Raises:
        ValueError: if ``estimator`` is not one of these.
    """

    def __init__(self, gen_model: JointDistribution, inf_model: CPDNet,
                 cv_model: Optional[VarianceReduction] = None, estimator: str = "auto"):
        super().__init__()
        self.gen_model = gen_model
        self.inf_model = inf_model
        self.cv_model = cv_model if cv_model is not None else VarianceReduction()
        self.estimator = one_of("estimator", estimator, _ESTIMATORS)

    # parameter groups, one optimiser each (see OptCollection)
    def gen_params(self):
        """Parameters of p(z) p(x|z)."""
        return self.gen_model.parameters()

    def inf_params(self):
        """Parameters of q(z|x)."""
        return self.inf_model.parameters()

    def cv_params(self):
        """Parameters of the control variates (none for most)."""
        return self.cv_model.parameters()

    @property
    def data_shape(self) -> tuple:
        return tuple(self.gen_model.cpd_net.outcome_shape)

    def _batch_shape(self, x: Tensor) -> tuple:
        return self.gen_model._batch_shape(x)

    # sampling
    def sample(self, batch_size: int, sample_size: Optional[int] = None,
               oversample: bool = False) -> Tensor:
        """Draw x from the model: z ~ p(z), x ~ p(x|z).

        Args:
            batch_size: B.
            sample_size: S; if None the result is ``[B] + data_shape``, otherwise
                ``[S, B] + data_shape``.
            oversample: if True, draw B codes once and S observations for each.

        Returns:
            The draws.
        """
        S = _num_samples(sample_size)
        pz = self.gen_model.prior((batch_size,))
        if oversample:
            x = self.gen_model.obs_model(pz.sample()).sample((S,))
        else:
            x = self.gen_model.obs_model(pz.sample((S,))).sample()
        return x if sample_size else x.squeeze(0)

    def cond_sample(self, x: Tensor, sample_size: Optional[int] = None,
                    oversample: bool = False) -> Tensor:
        """Draw x' given x: z ~ q(z|x), x' ~ p(x|z).

        Args:
            x: observations ``[B] + data_shape``.
            sample_size: S; if None the result is shaped like x, otherwise
                ``[S, B] + data_shape``.
            oversample: if True, draw one z per observation and S x' for each.
        """
        S = _num_samples(sample_size)
        qz = self.inf_model(x)
        if oversample:
            x_ = self.gen_model.obs_model(qz.sample()).sample((S,))
        else:
            x_ = self.gen_model.obs_model(qz.sample((S,))).sample()
        return x_ if sample_size else x_.squeeze(0)

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(z, x) under the generative model, with the batch shape of z."""
        return self.gen_model.log_prob(z=z, x=x)

    # estimates for reporting
    def DRL(self, x: Tensor, sample_size: Optional[int] = None,
            max_elements: int = MAX_ELEMENTS) -> tuple[Tensor, Tensor, Tensor]:
        """Monte Carlo estimates of distortion D, rate R and log-likelihood L per data point.

        With z_1..z_S ~ q(z|x):

        * D = -1/S sum_s log p(x|z_s);
        * R = KL(q(z|x) || p(z)) in closed form, or 1/S sum_s log q(z_s|x) - log p(z_s);
        * L = log 1/S sum_s p(x, z_s) / q(z_s|x), the importance-sampled
          log-likelihood [3], a stochastic lower bound that tightens as S grows.

        The S draws are decoded in chunks of at most ``max_elements`` decoder
        outputs, so S in the thousands fits in memory. Run it under
        ``torch.no_grad()`` when only the numbers matter.

        Args:
            x: observations ``batch_shape + data_shape``.
            sample_size: S (default 1).
            max_elements: memory cap per chunk.

        Returns:
            ``(D, R, L)``, each with shape ``batch_shape``.
        """
        S = _num_samples(sample_size)
        batch_shape = self._batch_shape(x)
        qz = self.inf_model(x)
        pz = self.gen_model.prior(batch_shape)
        kl = _closed_form_kl(qz, pz)
        log_px_z_sum = x.new_zeros(batch_shape)
        rate_sum = x.new_zeros(batch_shape)
        log_w = []
        for size in sample_chunks(S, x.numel(), max_elements):
            z = qz.sample((size,))  # [s, B, K]
            log_px_z = self.gen_model.obs_model(z).log_prob(x)  # [s, B]
            log_qz, log_pz = qz.log_prob(z), pz.log_prob(z)
            log_px_z_sum = log_px_z_sum + log_px_z.sum(0)
            rate_sum = rate_sum + (log_qz - log_pz).sum(0)
            # importance weight log p(x, z) / q(z|x)
            log_w.append(log_px_z + log_pz - log_qz)
        D = -log_px_z_sum / S
        R = kl if kl is not None else rate_sum / S
        L = torch.logsumexp(torch.cat(log_w, dim=0), dim=0) - math.log(S)
        return D, R, L

    def elbo(self, x: Tensor, sample_size: Optional[int] = None) -> Tensor:
        """A Monte Carlo estimate of ELBO(x) = -D - R, shape ``batch_shape``."""
        D, R, _ = self.DRL(x, sample_size=sample_size)
        return -D - R

    def log_prob_estimate(self, x: Tensor, sample_size: Optional[int] = None) -> Tensor:
        """The importance-sampled estimate of log p(x) with S draws from q, shape ``batch_shape``."""
        return self.DRL(x, sample_size=sample_size)[2]

    # training objective
    def surrogate_loss(self, x: Tensor, sample_size: Optional[int] = None, rate_weight: float = 1.0,
                       estimator: Optional[str] = None) -> tuple[Tensor, dict]:
        """A scalar whose gradient is minus an unbiased estimate of grad ELBO.

        The mixture estimator: with q(z|x) = sum_m w_m q_m(z|x) and
        f(z) = log p(x|z) - beta (log q(z|x) - log p(z)), the objective is
        E_q[f] = sum_m w_m E_eps[f(g_m(eps))], where z = g_m(eps) is the pathwise
        draw of component m. Differentiating the sum,

            grad E_q[f] = E_{c ~ Cat(w), eps}[f(z) grad log w_c + grad f(g_c(eps))],

        the first term the score function of the discrete choice only (so any b
        that ignores c and z may be subtracted from f), the second the pathwise
        gradient through z = g_c(eps) for the components' parameters and p's.
        That gradient of f also differentiates log q(z|x) at fixed z, weights
        included; this part has mean E_q[grad log q(z|x)] = 0, so it adds no bias.
        With a closed-form rate, f = log p(x|z) and -beta grad KL is exact.

        The score-function estimator with a sampled rate has no -beta log q(z|x) term
        of its own in the surrogate, although the rate contains log q(z|x). Its
        gradient at a fixed draw z would be -beta grad log q(z|x), whose expectation
        E_q[grad log q(z|x)] = grad of the integral of q = 0: it adds only noise. The
        part of the rate's gradient that does not vanish, from q choosing where z
        lands, is a score-function term, and it is already in the estimator:
        -beta (log q(z|x) - log p(z)) is part of the reward r that multiplies
        grad log q(z|x). The +beta log p(z) term remains for p's parameters.

        Args:
            x: a batch of observations ``[B] + data_shape``.
            sample_size: S draws of z per observation.
            rate_weight: beta, the weight of the rate (1 for the ELBO).
            estimator: ``"auto"`` (pathwise if q has rsample, else score
                function), ``"reparam"``, ``"sfe"`` (score function even when
                q has rsample, for comparisons) or ``"mixture"`` (score function
                for the weights of a ``td.MixtureSameFamily`` q, pathwise for its
                components); ``None`` for the model's own (its
                ``estimator``).

        Returns:
            ``(loss, figures)``: ``loss`` is the mean over the batch of
            ``-surrogate + cv_loss``; ``figures`` holds tensors (detached) of shape
            ``batch_shape``: ``ELBO``, ``D``, ``R`` and ``cv_loss``.

        Raises:
            ValueError: for an unknown estimator.
            NotImplementedError: for ``"reparam"`` with a q without rsample, or
                ``"mixture"`` with a q that is not a mixture of components with rsample.
        """
        estimator = self.estimator if estimator is None else one_of(
            "estimator", estimator, _ESTIMATORS)
        S = _num_samples(sample_size)
        batch_shape = self._batch_shape(x)
        qz = self.inf_model(x)
        pz = self.gen_model.prior(batch_shape)
        if estimator == "reparam" and not qz.has_rsample:
            raise NotImplementedError(
                f"{type(qz).__name__} has no rsample; use estimator='sfe', 'auto' or, for a "
                f"mixture of reparameterisable components, 'mixture'")
        pathwise = qz.has_rsample and estimator in ("auto", "reparam")

        if estimator == "mixture":
            # answer of dpm2_beyond/mixture-rsample-solution
            z, score = _mixture_rsample(qz, torch.Size((S,)))  # [S, B, K], log w_c [S, B]
            # end of answer
        else:
            z = qz.rsample((S,)) if pathwise else qz.sample((S,))  # [S, B, K]
        log_px_z = self.gen_model.obs_model(z).log_prob(x)  # [S, B]
        kl = _closed_form_kl(qz, pz)  # [B] or None
        if kl is None:
            log_qz, log_pz = qz.log_prob(z), pz.log_prob(z)  # [S, B]
            rate = log_qz - log_pz
        D = -log_px_z.mean(0)
        R = kl if kl is not None else rate.mean(0)

        if pathwise:
            surrogate = -D - rate_weight * R
            cv_loss = torch.zeros_like(D)
        else:
            # reward of each draw; the closed-form rate needs no sampling
            def r_fn(z_: Tensor, x_: Tensor) -> Tensor:
                r = self.gen_model.obs_model(z_).log_prob(x_)
                if kl is None:
                    r = r - rate_weight * (qz.log_prob(z_) - pz.log_prob(z_))
                return r

            reward = (log_px_z - rate_weight * rate) if kl is None else log_px_z  # [S, B]
            r, cv_loss = self.cv_model(reward.detach(), x=x, q=qz, r_fn=r_fn)
            if estimator == "mixture":
                # answer of dpm2_beyond/mixture-surrogate-solution
                # z is pathwise: autograd gives grad f(g_c(eps)) to lambda and theta; the
                # weights also get (r - b) grad log w_c
                surrogate = reward.mean(0) + (r.detach() * score).mean(0)
                # end of answer
            else:
                score = qz.log_prob(z)  # z was not reparameterised: lambda's only gradient
                # theta gets grad log p(x|z) (+ beta grad log p(z) when the rate is sampled);
                # lambda gets (r - b) grad log q(z|x)
                surrogate = log_px_z.mean(0) + (r.detach() * score).mean(0)
                if kl is None:
                    surrogate = surrogate + rate_weight * log_pz.mean(0)
            if kl is not None:
                surrogate = surrogate - rate_weight * kl
            cv_loss = cv_loss.mean(0) if cv_loss.dim() > len(batch_shape) else cv_loss
        loss = (-surrogate + cv_loss).mean()
        figures = {"ELBO": (-D - R).detach(), "D": D.detach(), "R": R.detach(),
                   "cv_loss": cv_loss.detach() * torch.ones_like(D)}
        return loss, figures

    def forward(self, x: Tensor, sample_size: Optional[int] = None, rate_weight: float = 1.0,
                estimator: Optional[str] = None) -> dict:
        """The training step's loss and the figures to log (see :meth:`surrogate_loss`;
        ``estimator=None`` uses the model's own).

        Returns:
            ``{"loss": scalar tensor to call backward on, "ELBO": float, "D": float,
            "R": float, "cv_loss": float}``, the floats being batch means.
        """
        loss, figures = self.surrogate_loss(x, sample_size, rate_weight, estimator)
        # one device-to-host transfer for all figures
        means = torch.stack([v.mean() for v in figures.values()]).tolist()
        return {"loss": loss, **dict(zip(figures, means))}
