"""Probes of importance_sampling: they call the student's PPCA posterior, estimators and
per-datapoint fit on the judge's inputs, in the kernel, and report what they saw.

The student's functions take distributions and a PPCA joint, which cannot cross the wire: each
probe builds them here from the plain data the judge sent (a ``dpm_core`` PPCA loaded with the
judge's W, b and raw sigma, whose ``log_prob`` and ``sample`` the student build keeps; Gaussians
of ``torch.distributions`` from their parameters). So that one mistake costs points once, the
estimators run with stand-ins for the upstream exercises that return the judge's values:
:class:`_Draws` for ``log_weights`` (the judge's log-weights, handed out as fresh draws),
:class:`_Bounds` for ``iwae_bound`` (a table) and :class:`_ExactElbo` for ``elbo_estimate``
(the exact ELBO from the judge's posterior and log p(x) for these observations: data for the
judge's x only, and nothing an exercise asks for; the notebook's given ``gaussian_elbo`` does
the same with the student's own posterior). Nothing here knows what the answers should be:
``course/judges/importance_sampling.py`` decides.

A step that raises is reported as ``{"raised": <error type>, "message": <text>}``, so that the
other steps still run and report.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributions as td

from dpm_core.ppca import PPCA

__all__ = ["posterior", "log_weights", "log_weights_gradient", "elbo_estimate",
           "log_prob_estimate", "per_datapoint"]


# ----------------------------------------------------------------------------- plumbing
def _attempt(step):
    """``step()``, or ``{"raised": class name, "message": text}`` of the exception it raised."""
    try:
        return step()
    except Exception as err:  # noqa: BLE001 -- whatever the student's code raises is reported
        return {"raised": type(err).__name__, "message": str(err)}


def _on(value, device: str):
    """A judge's input (``dpm_probe.wire.Tensor``) as a tensor on ``device``; others as sent."""
    return value.data.to(device) if hasattr(value, "data") else value


def _ppca(model: dict, device: str) -> PPCA:
    """dpm_core's PPCA (float64, no gradients) with the judge's ``W`` [D, K], ``b`` [D] and
    ``raw_sigma`` [] (sigma = softplus(raw_sigma))."""
    W = _on(model["W"], "cpu")
    joint = PPCA(W.shape[0], W.shape[1]).double()
    with torch.no_grad():
        joint.cpd_net.W.copy_(W)
        joint.cpd_net.b.copy_(_on(model["b"], "cpu"))
        joint.cpd_net.raw_sigma.copy_(_on(model["raw_sigma"], "cpu"))
    return joint.to(device).requires_grad_(False)


def _parameters(joint: PPCA) -> list:
    """The joint's parameters as they are now (W, b, raw sigma)."""
    cpd = joint.cpd_net
    return [cpd.W.detach().clone(), cpd.b.detach().clone(), cpd.raw_sigma.detach().clone()]


def _gaussian(q: dict, device: str, repeats: int | None = None) -> td.Distribution:
    """q(z|x) from the judge's parameters: ``{"loc", "scale"}``, a diagonal Gaussian
    ``Independent(Normal)``, or ``{"loc", "covariance"}``, a ``MultivariateNormal``; batch_shape
    ``loc.shape[:-1]`` (with ``repeats``, ``[repeats] + loc.shape[:-1]``: independent copies of
    one estimate), event_shape ``(K,)``."""
    loc = _on(q["loc"], device)
    if repeats:
        loc = loc.expand(repeats, *loc.shape).clone()
    if "covariance" in q:
        return td.MultivariateNormal(loc, covariance_matrix=_on(q["covariance"], device))
    return td.Independent(td.Normal(loc, _on(q["scale"], device).expand_as(loc).clone()), 1)


@contextlib.contextmanager
def _swapped(ns: dict, stand_ins: dict):
    """Put stand-ins under their names in ``ns`` while a call runs; restore what was there."""
    missing = object()
    saved = {name: ns.get(name, missing) for name in stand_ins}
    ns.update(stand_ins)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                ns.pop(name, None)
            else:
                ns[name] = value


# ----------------------------------------------------------------------------- stand-ins
class _Draws:
    """A stand-in for ``log_weights(x, qz, joint, num_samples)``: each call hands out the next
    ``num_samples`` rows of the judge's log-weights ([N] + batch_shape), as a random function
    hands out fresh draws, so that one call for S draws and S calls for one draw each get the
    same S rows; NaN rows past the end. Records the number asked for by each call."""

    def __init__(self, table: torch.Tensor):
        self.table, self.used, self.calls = table, 0, []

    def __call__(self, x, qz, joint, num_samples):
        n = int(num_samples)
        self.calls.append(n)
        rows = self.table[self.used:self.used + n]
        self.used += n
        if rows.shape[0] < n:
            rows = torch.cat([rows, torch.full((n - rows.shape[0],) + self.table.shape[1:],
                                               float("nan"), dtype=rows.dtype,
                                               device=rows.device)])
        return rows.clone()


class _Bounds:
    """A stand-in for ``iwae_bound(log_weights)``: the judge's value for each table of
    log-weights it knows, NaN of the batch shape for any other. Records, per call, the index
    of the table it matched (None for none)."""

    def __init__(self, entries: list, device: str):
        self.entries = [(_on(lw, device), _on(value, device)) for lw, value in entries]
        self.calls: list = []

    def __call__(self, log_weights):
        for index, (known, value) in enumerate(self.entries):
            if isinstance(log_weights, torch.Tensor) and log_weights.shape == known.shape \
                    and torch.equal(log_weights.detach().to(known.device, known.dtype), known):
                self.calls.append(index)
                return value.clone()
        self.calls.append(None)
        if isinstance(log_weights, torch.Tensor):
            return torch.full(log_weights.shape[1:], float("nan"), dtype=log_weights.dtype,
                              device=log_weights.device)
        return float("nan")


class _ExactElbo:
    """A stand-in for ``elbo_estimate(x, qz, joint, num_samples)``: the exact ELBO of the
    diagonal Gaussian q with qz's mean and standard deviations, log p(x) - KL(q || p(z|x)),
    with the judge's log p(x) and posterior p(z|x) for its observations (batch_shape). Records
    the number of calls."""

    def __init__(self, log_px: torch.Tensor, posterior: td.MultivariateNormal):
        self.log_px, self.posterior, self.calls = log_px, posterior, 0

    def __call__(self, x, qz, joint, num_samples=1):
        self.calls += 1
        q = td.MultivariateNormal(qz.mean, scale_tril=torch.diag_embed(qz.stddev))
        return self.log_px - td.kl_divergence(q, self.posterior)


# ----------------------------------------------------------------------------- probes
def posterior(ns: dict, x, W, b, sigma, device: str, z=None) -> dict:
    """``ppca_posterior(x, W, b, sigma)`` on ``device``, with its mean, covariance matrix and,
    given codes ``z``, its log-density there.

    Returns:
        ``{"value", "mean", "covariance", "log_prob"}`` (results or errors; the last three
        absent when no distribution came back, ``log_prob`` absent without ``z``).
    """
    post = _attempt(lambda: ns["ppca_posterior"](*(_on(t, device) for t in (x, W, b, sigma))))
    seen = {"value": post}
    if isinstance(post, td.Distribution):
        seen["mean"] = _attempt(lambda: post.mean)
        seen["covariance"] = _attempt(lambda: post.covariance_matrix)
        if z is not None:
            seen["log_prob"] = _attempt(lambda: post.log_prob(_on(z, device)))
    return seen


def log_weights(ns: dict, x, model: dict, q: dict, num_samples: list, device: str) -> list:
    """``log_weights(x, qz, joint, S)`` for each S of ``num_samples``, with the judge's PPCA as
    the joint and the judge's Gaussian as qz; what each returned (or the error)."""
    joint, qz, xx = _ppca(model, device), _gaussian(q, device), _on(x, device)
    return [_attempt(lambda: ns["log_weights"](xx, qz, joint, S)) for S in num_samples]


def log_weights_gradient(ns: dict, x, model: dict, loc, scale, num_samples: int,
                         device: str) -> dict:
    """``log_weights(x, qz, joint, S)`` with qz = Independent(Normal(loc, scale)) whose ``loc``
    is a leaf, and autograd's gradient of the average log-weight, summed over the batch, with
    respect to loc.

    Returns:
        ``{"value": the log-weights' shape, dtype and gradient flag (or the error), "grad": the
        gradient of log_weights.mean(0).sum() (None when none reaches loc; absent when the
        log-weights carry no gradient)}``.
    """
    joint, xx = _ppca(model, device), _on(x, device)
    leaf = _on(loc, device).clone().requires_grad_(True)
    qz = td.Independent(td.Normal(leaf, _on(scale, device)), 1)
    lw = _attempt(lambda: ns["log_weights"](xx, qz, joint, num_samples))
    if not isinstance(lw, torch.Tensor):
        return {"value": lw}
    seen = {"value": {"shape": list(lw.shape), "dtype": str(lw.dtype).replace("torch.", ""),
                      "requires_grad": bool(lw.requires_grad)}}
    if lw.requires_grad and lw.dim() > 0:
        seen["grad"] = _attempt(lambda: torch.autograd.grad(lw.mean(0).sum(), leaf,
                                                            allow_unused=True)[0])
    return seen


def _estimates(fn, ns: dict, x, model: dict, q: dict, num_samples: list, device: str,
               repeats: int | None, draws, bounds: list | None) -> list:
    """``fn(x, qz, joint, S)`` for each S, in ``torch.no_grad()`` (a statistic, not a loss):
    with ``draws``, ``log_weights`` is a :class:`_Draws` of them (new for each S) and, with
    ``bounds``, ``iwae_bound`` a :class:`_Bounds` of those ``[log-weights, value]`` pairs."""
    joint, xx, qz = _ppca(model, device), _on(x, device), _gaussian(q, device, repeats)
    if repeats:
        xx = xx.expand(repeats, *xx.shape).clone()
    seen = []
    for S in num_samples:
        stand_ins = {}
        if draws is not None:
            stand_ins["log_weights"] = _Draws(_on(draws, device))
        if bounds is not None:
            stand_ins["iwae_bound"] = _Bounds(bounds, device)
        with _swapped(ns, stand_ins), torch.no_grad():
            value = _attempt(lambda: fn(ns)(xx, qz, joint, S))
        seen.append({"value": value, **{f"{name}_calls": s.calls
                                        for name, s in stand_ins.items()}})
    return seen


def elbo_estimate(ns: dict, x, model: dict, q: dict, num_samples: list, device: str,
                  repeats: int | None = None, draws=None) -> list:
    """``elbo_estimate(x, qz, joint, S)`` for each S of ``num_samples`` (see :func:`_estimates`).

    Returns:
        One ``{"value", "log_weights_calls"}`` per S (the calls only with ``draws``).
    """
    return _estimates(lambda ns: ns["elbo_estimate"], ns, x, model, q, num_samples, device,
                      repeats, draws, None)


def log_prob_estimate(ns: dict, x, model: dict, q: dict, num_samples: list, device: str,
                      repeats: int | None = None, draws=None, bounds: list | None = None) -> list:
    """``log_prob_estimate(x, qz, joint, S)`` for each S of ``num_samples`` (see
    :func:`_estimates`).

    Returns:
        One ``{"value", "log_weights_calls", "iwae_bound_calls"}`` per S (the calls only with
        the stand-ins).
    """
    return _estimates(lambda ns: ns["log_prob_estimate"], ns, x, model, q, num_samples, device,
                      repeats, draws, bounds)


def per_datapoint(ns: dict, x, model: dict, posterior: dict, num_steps: int, lr: float,
                  num_samples: int, device: str) -> dict:
    """``fit_per_datapoint(x, joint, num_steps, lr, num_samples)`` with the judge's PPCA as the
    joint, while ``elbo_estimate`` is an :class:`_ExactElbo` of the judge's ``posterior``
    (``{"loc", "covariance", "log_px"}``).

    Returns:
        ``{"value", "mean", "stddev", "parameters", "elbo_estimate_calls"}``: the fitted q (or
        the error), its mean and standard deviations (absent when no distribution came back),
        the joint's parameters after the fit, and how often the stand-in was called.
    """
    joint, xx = _ppca(model, device), _on(x, device)
    exact = _ExactElbo(_on(posterior["log_px"], device),
                       td.MultivariateNormal(_on(posterior["loc"], device),
                                             covariance_matrix=_on(posterior["covariance"],
                                                                   device)))
    with _swapped(ns, {"elbo_estimate": exact}):
        q = _attempt(lambda: ns["fit_per_datapoint"](xx, joint, num_steps=num_steps, lr=lr,
                                                     num_samples=num_samples))
    seen = {"value": q, "parameters": _parameters(joint), "elbo_estimate_calls": exact.calls}
    if isinstance(q, td.Distribution):
        seen["mean"] = _attempt(lambda: q.mean)
        seen["stddev"] = _attempt(lambda: q.stddev)
    return seen
