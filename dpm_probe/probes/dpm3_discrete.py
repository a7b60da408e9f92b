"""Probes of dpm3_discrete: they run the student's enumeration, exact ELBO, leave-one-out
baseline, relaxations and relaxed surrogate on the judge's inputs, in the kernel, and report
what they saw.

The codes handed to the student's functions are built here from the logits the judge sent,
with ``torch.distributions`` and the notebook's given parts (``FlattenCode``, ``code_parts``,
``make_testbed``); the test bed's weights are the judge's. Where an exercise uses an upstream
one, the upstream function is replaced, during the call, by a stand-in that returns the
judge's values: ``enumerate_codes`` by the judge's table of codes (expanded over the batch),
``relaxed`` and ``straight_through`` by a distribution whose ``rsample`` returns the judge's
draws, with the judge's Jacobian with respect to q's logits as their gradient. Nothing here
knows what the answers should be: ``course/judges/dpm3_discrete.py`` decides.

A step that raises is reported as ``{"raised": class name, "kinds": its classes, "message"}``.
"""

from __future__ import annotations

import math

import torch
import torch.distributions as td

from dpm_core import VarianceReduction
from dpm_core.discrete import FlattenCode, code_parts, make_testbed

__all__ = ["enumeration", "exact_elbo", "leave_one_out", "relaxed", "straight_through_values",
           "straight_through_gradient", "relaxed_loss"]


def _attempt(step, *args, **kwargs):
    """``step(*args, **kwargs)``, or ``{"raised", "kinds", "message"}`` of what it raised."""
    try:
        return step(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 -- whatever the student's code raises is reported
        return {"raised": type(err).__name__, "message": str(err),
                "kinds": [c.__name__ for c in type(err).__mro__]}


def _tensor(value, device: str) -> torch.Tensor:
    """A decoded tensor of the request on ``device`` (its dtype as sent)."""
    return value.data.to(device)


def _code(kind: str, logits: torch.Tensor) -> td.Distribution:
    """A factorised code with these logits: K bits (``logits [*B, K]``) or L one-hot variables
    of C classes, flattened (``logits [*B, L, C]``)."""
    if kind == "bernoulli":
        return td.Independent(td.Bernoulli(logits=logits), 1)
    L, C = logits.shape[-2:]
    return td.TransformedDistribution(td.Independent(td.OneHotCategorical(logits=logits), 1),
                                      [FlattenCode(L, C)])


class _Swapped:
    """Put stand-ins under some names of the namespace for a ``with`` block, and restore what
    was there (removing the names that were not)."""

    def __init__(self, ns: dict, **stand_ins):
        self.ns, self.stand_ins, self.missing, self.saved = ns, stand_ins, object(), {}

    def __enter__(self):
        self.saved = {name: self.ns.get(name, self.missing) for name in self.stand_ins}
        self.ns.update(self.stand_ins)

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            if value is self.missing:
                self.ns.pop(name, None)
            else:
                self.ns[name] = value


def _testbed(code: str, weights: list, device: str):
    """``make_testbed(code)`` with the judge's weights (in the order of ``named_parameters``)."""
    model = make_testbed(code)
    with torch.no_grad():
        for param, value in zip(model.parameters(), weights):
            param.copy_(value.data)
    return model.to(device)


def _param_grads(output: torch.Tensor, model) -> list:
    """The gradient of ``output.sum()`` for each parameter of ``model`` (None where none
    reaches it)."""
    return list(torch.autograd.grad(output.sum(), list(model.parameters()), allow_unused=True))


# ------------------------------------------------------------------------------ enumeration

def enumeration(ns: dict, kind: str, logits, device: str) -> dict:
    """``enumerate_codes(p)`` for the code with these logits on ``device``.

    Returns:
        ``{"codes": what it returned (or the error)}``.
    """
    p = _code(kind, _tensor(logits, device))
    return {"codes": _attempt(lambda: ns["enumerate_codes"](p))}


class _TabulatedCodes:
    """A stand-in for ``enumerate_codes``: the judge's codes ``[N, K]``, stacked in front of
    the batch of the distribution it gets, in that distribution's dtype and device. Records
    every call."""

    def __init__(self, codes: torch.Tensor):
        self.codes, self.calls = codes, 0

    def __call__(self, p):
        self.calls += 1
        logits = code_parts(p)[0].logits
        batch = tuple(p.batch_shape)
        N, K = self.codes.shape
        codes = self.codes.to(logits.device, logits.dtype).reshape((N,) + (1,) * len(batch) + (K,))
        return codes.expand((N,) + batch + (K,))


def exact_elbo(ns: dict, code: str, weights: list, x, codes, device: str) -> dict:
    """``exact_elbo(joint, qz, x)`` on the test bed with the judge's weights, qz its q(z|x),
    while ``enumerate_codes`` is the judge's table; the gradients of the sum of the result for
    every parameter of the test bed (generative model first, then q, as in
    ``model.parameters()``).

    Returns:
        ``{"value", "grads", "enumerations"}``: what it returned (or the error), the gradients
        (absent when the value has none; None where none reaches a parameter), and how often the
        stand-in was called.
    """
    model = _testbed(code, weights, device)
    xx = _tensor(x, device)
    table = _TabulatedCodes(codes.data)
    with _Swapped(ns, enumerate_codes=table):
        value = _attempt(lambda: ns["exact_elbo"](model.gen_model, model.inf_model(xx), xx))
    seen = {"value": value, "enumerations": table.calls}
    if isinstance(value, torch.Tensor) and value.requires_grad:
        seen["grads"] = _attempt(lambda: _param_grads(value, model))
    return seen


# ------------------------------------------------------------------------------ leave-one-out

def leave_one_out(ns: dict, rewards: list, device: str) -> dict:
    """A new ``LeaveOneOut()`` on ``device``, called as NVIL calls it on each of ``rewards``.

    Returns:
        ``{"built", "is_control_variate", "parameters", "calls"}``: the class name (or the
        error of its construction), whether it is a VarianceReduction, its number of
        parameters, and ``{"out", "loss"}`` (or the error) per call.
    """
    cv = _attempt(lambda: ns["LeaveOneOut"]())
    if isinstance(cv, dict) and "raised" in cv:
        return {"built": cv}
    seen = {"built": type(cv).__name__, "is_control_variate": isinstance(cv, VarianceReduction),
            "parameters": sum(1 for _ in cv.parameters()) if hasattr(cv, "parameters") else 0,
            "calls": []}
    if hasattr(cv, "to"):
        cv = cv.to(device)
    for r in rewards:
        out = _attempt(cv, _tensor(r, device), x=None, q=None, r_fn=None)
        if isinstance(out, tuple) and len(out) == 2:
            out = {"out": out[0], "loss": out[1]}
        seen["calls"].append(out)
    return seen


# ------------------------------------------------------------------------------ relaxations

def _structure(d) -> list:
    """The class names from ``d`` down through TransformedDistribution and Independent."""
    names = []
    while True:
        names.append(type(d).__name__)
        if type(d) in (td.TransformedDistribution, td.Independent):
            d = d.base_dist
        else:
            return names


def relaxed(ns: dict, kind: str, logits, temperature: float, points, weights,
            num_samples: int, device: str) -> dict:
    """``relaxed(q, temperature)`` for the code q with these logits (a leaf) on ``device``.

    Returns:
        ``{"dist", "structure", "has_rsample", "log_prob", "draws", "grad"}``: the distribution
        (or the error), its classes, whether it has rsample, its log_prob of ``points``,
        ``num_samples`` draws of rsample, and the gradient of sum(weights * draws) with respect
        to the logits (None when none reaches them).
    """
    leaf = _tensor(logits, device).requires_grad_(True)
    d = _attempt(lambda: ns["relaxed"](_code(kind, leaf), temperature))
    seen = {"dist": d}
    if not isinstance(d, td.Distribution):
        return seen
    seen["structure"] = _structure(d)
    seen["has_rsample"] = bool(d.has_rsample)
    seen["log_prob"] = _attempt(lambda: d.log_prob(_tensor(points, device)).detach())
    draws = _attempt(lambda: d.rsample((num_samples,)))
    seen["draws"] = draws.detach() if isinstance(draws, torch.Tensor) else draws
    w = _tensor(weights, device)
    if isinstance(draws, torch.Tensor) and draws.requires_grad and draws.shape == w.shape:
        seen["grad"] = _attempt(lambda: torch.autograd.grad(
            (w * draws).sum(), [leaf], allow_unused=True)[0])
    return seen


def straight_through_values(ns: dict, kind: str, logits, prior_logits, points,
                            num_samples: int, device: str) -> dict:
    """``straight_through(q)`` for the code q with these logits on ``device``: its shapes,
    ``num_samples`` draws of rsample, its log_prob of ``points`` and its KL from the code p
    with ``prior_logits``.

    Returns:
        ``{"dist", "draws", "log_prob", "kl"}`` (results or errors).
    """
    q = _code(kind, _tensor(logits, device))
    d = _attempt(lambda: ns["straight_through"](q))
    seen = {"dist": d}
    if not isinstance(d, td.Distribution):
        return seen
    draws = _attempt(lambda: d.rsample((num_samples,)))
    seen["draws"] = draws.detach() if isinstance(draws, torch.Tensor) else draws
    seen["log_prob"] = _attempt(lambda: d.log_prob(_tensor(points, device)).detach())
    p = _code(kind, _tensor(prior_logits, device))
    seen["kl"] = _attempt(lambda: td.kl_divergence(d, p).detach())
    return seen


def straight_through_gradient(ns: dict, kind: str, logits, weights, num_samples: int,
                              device: str) -> dict:
    """``straight_through(q).rsample((num_samples,))`` for the code q whose logits are a leaf,
    and the gradient of sum(weights * draws) with respect to them.

    Returns:
        ``{"draws", "probs", "grad"}``: the draws (or the error), the probabilities of the
        Bernoulli or OneHotCategorical inside the student's distribution, and the gradient
        (None when none reaches the logits, absent when the draws have none).
    """
    leaf = _tensor(logits, device).requires_grad_(True)
    d = _attempt(lambda: ns["straight_through"](_code(kind, leaf)))
    if not isinstance(d, td.Distribution):
        return {"draws": d}
    draws = _attempt(lambda: d.rsample((num_samples,)))
    seen = {"draws": draws.detach() if isinstance(draws, torch.Tensor) else draws,
            "probs": _attempt(lambda: code_parts(d)[0].probs.detach())}
    w = _tensor(weights, device)
    if isinstance(draws, torch.Tensor) and draws.requires_grad and draws.shape == w.shape:
        seen["grad"] = _attempt(lambda: torch.autograd.grad(
            (w * draws).sum(), [leaf], allow_unused=True)[0])
    return seen


# ------------------------------------------------------------------------------ the relaxed loss

class _TabulatedDraws(td.Distribution):
    """A stand-in for a relaxed or straight-through code: ``rsample`` hands out the judge's
    draws in order, ``[n] + batch + [K]`` for n of them, each the judge's value with the judge's
    Jacobian with respect to the flattened logits of the q it was built from as its gradient.
    More draws than the table holds are NaN."""

    has_rsample = True

    def __init__(self, q, values: torch.Tensor, jacobian: torch.Tensor):
        self.logits = code_parts(q)[0].logits.reshape(tuple(q.batch_shape) + (-1,))  # [B, K]
        self.values, self.jacobian, self.used = values, jacobian, 0
        super().__init__(q.batch_shape, q.event_shape, validate_args=False)

    def rsample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape)
        n = math.prod(shape)
        start, self.used = self.used, self.used + n
        if self.used > self.values.shape[0]:
            return torch.full(shape + self.batch_shape + self.event_shape, float("nan"),
                              dtype=self.logits.dtype, device=self.logits.device)
        l = self.logits
        v = self.values[start:self.used].to(l.device, l.dtype)  # [n, B, K]
        J = self.jacobian[start:self.used].to(l.device, l.dtype)  # [n, B, K, K]
        z = v + (J * (l - l.detach()).unsqueeze(-2)).sum(-1)
        return z.reshape(shape + self.batch_shape + self.event_shape)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)


def relaxed_loss(ns: dict, code: str, weights: list, x, relaxation: str, temperature,
                 sample_size: int, values, jacobian, device: str) -> dict:
    """``relaxed_surrogate_loss(model, x, relaxation, temperature, sample_size)`` on the test
    bed with the judge's weights, while ``relaxed`` and ``straight_through`` return
    :class:`_TabulatedDraws` of the judge's draws; the gradient of the loss for every parameter
    (``model.parameters()`` order).

    Returns:
        ``{"value", "grads", "calls"}``: the loss (or the error), its gradients (absent when it
        has none), and per call of a stand-in ``{"fn", "temperature", "logits"}`` (the
        flattened logits of the distribution it got, or None).
    """
    model = _testbed(code, weights, device)
    xx = _tensor(x, device)
    calls = []

    def given(fn, q, temperature=None):
        logits = _attempt(lambda: code_parts(q)[0].logits.detach().reshape(
            tuple(q.batch_shape) + (-1,)))
        calls.append({"fn": fn, "temperature": temperature if isinstance(
            temperature, (int, float)) else repr(temperature)[:100], "logits": logits})
        return _TabulatedDraws(q, values.data, jacobian.data)

    stand_ins = {"relaxed": lambda q, temperature: given("relaxed", q, temperature),
                 "straight_through": lambda q: given("straight_through", q)}
    with _Swapped(ns, **stand_ins):
        value = _attempt(lambda: ns["relaxed_surrogate_loss"](model, xx, relaxation, temperature,
                                                              sample_size))
    seen = {"value": value, "calls": calls}
    if isinstance(value, torch.Tensor) and value.requires_grad:
        seen["grads"] = _attempt(lambda: _param_grads(value, model))
    return seen
