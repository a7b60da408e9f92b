"""Probes of dpm2_beyond: they run the student's normaliser, log-density, mixture estimator and
affine coupling on the judge's inputs, in the kernel, and report what they saw.

Each builds what the student's code needs from the plain data the judge sent (the mixture
from its parameters with ``torch.distributions``, the coupling's conditioner from its weights,
a tabulated stand-in for the normaliser), calls the student's code, takes the gradients with
autograd where the judge asks for them, and returns tensors, flags and the errors the student's
code raised (``{"raised", "message"}``). Nothing here knows what the answers should be:
``course/judges/dpm2_beyond.py`` decides.
"""

from __future__ import annotations

import torch
import torch.distributions as td

__all__ = ["normaliser", "log_prob", "mixture_draws", "mixture_gradients",
           "surrogate_gradients", "coupling_inverse", "coupling_log_det"]


def _attempt(step):
    """``step()``, or ``{"raised": class name, "message": text}`` of the exception it raised, so
    that one failing step is reported as plain data and the others still run.

    (``dpm_probe.runtime.attempt`` returns an error node, which ``describe`` does not pass
    through: a probe's reply would show it as an object of type ``Node``.)
    """
    try:
        return step()
    except Exception as err:  # noqa: BLE001 -- whatever the student's code raises is reported
        return {"raised": type(err).__name__, "message": str(err)}


def _tensor(value, device: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A decoded tensor of the request (``dpm_probe.wire.Tensor``) on ``device``."""
    return value.data.to(device=device, dtype=dtype or value.data.dtype)


def _grads(output: torch.Tensor, wrt: list) -> list:
    """Autograd's gradient of ``output.sum()`` for each of ``wrt`` (None where none reaches it);
    the graph is kept for a later gradient of another output."""
    return list(torch.autograd.grad(output.sum(), wrt, allow_unused=True, retain_graph=True))


# ----------------------------------------------------------------- the continuous Bernoulli

def normaliser(ns: dict, logits, device: str) -> dict:
    """``cb_log_normaliser(logits)`` on ``device``, and the argument as it is after the call.

    Returns:
        ``{"value": what it returned (or the error), "argument": the logits afterwards}``.
    """
    argument = _tensor(logits, device)
    value = _attempt(lambda: ns["cb_log_normaliser"](argument))
    return {"value": value, "argument": argument}


class _TabulatedNormaliser:
    """A stand-in for ``cb_log_normaliser``, an elementwise function: each element of its
    argument that is one of the logits it was given gets the judge's value there, with the
    judge's slope as its derivative (so any reshaping, indexing or copy of the logits works);
    an argument with any other element gets NaN. It records every call, and the argument of
    those it does not know."""

    def __init__(self, logits: torch.Tensor, value: torch.Tensor, slope: torch.Tensor):
        self.keys, order = logits.flatten().sort()
        self.value, self.slope = value.flatten()[order], slope.flatten()[order]
        self.calls: list = []

    def __call__(self, logits):
        if isinstance(logits, torch.Tensor) and logits.is_floating_point() and logits.numel():
            flat = logits.detach().to("cpu", self.keys.dtype).flatten()
            index = torch.searchsorted(self.keys, flat).clamp(max=self.keys.numel() - 1)
            if bool((self.keys[index] == flat).all()):
                self.calls.append({"matched": True})
                value, slope = (t[index].reshape(logits.shape).to(logits.device, logits.dtype)
                                for t in (self.value, self.slope))
                return value + slope * (logits - logits.detach())  # the value, with the slope
        self.calls.append({"matched": False, "argument": logits})
        if isinstance(logits, torch.Tensor):
            return torch.full_like(logits, float("nan"))
        return float("nan")


def log_prob(ns: dict, x, logits, normaliser_value, normaliser_slope, device: str) -> dict:
    """``cb_log_prob(x, logits)`` on ``device`` with the logits a leaf, while ``cb_log_normaliser``
    is a stand-in that returns the judge's values for these logits (so that the student's own
    normaliser plays no part); the gradient of the sum of the result with respect to the logits.

    Returns:
        ``{"value", "grad", "normaliser_calls"}``: what cb_log_prob returned (or the error), the
        gradient (None when none reaches the logits, absent when the value has no gradient), and
        the stand-in's calls.
    """
    leaf = _tensor(logits, device).requires_grad_(True)
    stand_in = _TabulatedNormaliser(logits.data, normaliser_value.data, normaliser_slope.data)
    missing = object()
    saved = ns.get("cb_log_normaliser", missing)
    ns["cb_log_normaliser"] = stand_in
    try:
        value = _attempt(lambda: ns["cb_log_prob"](_tensor(x, device), leaf))
    finally:
        if saved is missing:
            ns.pop("cb_log_normaliser", None)
        else:
            ns["cb_log_normaliser"] = saved
    seen = {"value": value, "normaliser_calls": stand_in.calls}
    if isinstance(value, torch.Tensor) and value.requires_grad:
        seen["grad"] = _attempt(lambda: _grads(value, [leaf])[0])
    return seen


# ------------------------------------------------------------------- the mixture estimator

def _mixture(logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor) -> td.Distribution:
    """The mixture of diagonal Gaussians with these parameters ([*B, M], [*B, M, K] twice)."""
    return td.MixtureSameFamily(td.Categorical(logits=logits),
                                td.Independent(td.Normal(locs, scales), 1))


def mixture_draws(ns: dict, logits, locs, scales, num_samples: int, device: str) -> dict:
    """``mixture_rsample(qz, num_samples)`` for the mixture with these parameters on ``device``.

    Returns:
        ``{"out": what it returned (or the error), "type": the class name of that}``.
    """
    qz = _mixture(*(_tensor(t, device) for t in (logits, locs, scales)))
    out = _attempt(lambda: ns["mixture_rsample"](qz, num_samples))
    return {"out": out, "type": type(out).__name__}


def mixture_gradients(ns: dict, logits, locs, scales, num_samples: int, device: str) -> dict:
    """``mixture_rsample(qz, num_samples)`` for a mixture whose parameters are leaves, with the
    gradients of the sum of its two outputs.

    Returns:
        ``{"out", "type"}`` as :func:`mixture_draws`, and where the outputs carry a gradient,
        ``"z_grads"`` (those of sum(z) for the locations, scales and logits) and
        ``"log_w_grads"`` (that of sum(log_w) for the logits); None where none reaches one.
    """
    leaves = [_tensor(t, device).requires_grad_(True) for t in (logits, locs, scales)]
    out = _attempt(lambda: ns["mixture_rsample"](_mixture(*leaves), num_samples))
    seen = {"out": out, "type": type(out).__name__}
    if isinstance(out, tuple) and len(out) == 2:
        z, log_w = out
        if isinstance(z, torch.Tensor) and z.requires_grad:
            seen["z_grads"] = _attempt(lambda: _grads(z, [leaves[1], leaves[2], leaves[0]]))
        if isinstance(log_w, torch.Tensor) and log_w.requires_grad:
            seen["log_w_grads"] = _attempt(lambda: _grads(log_w, [leaves[0]]))
    return seen


def _baseline(spec, leaves: list):
    """The baseline the judge specified: a number as it is, or ``{"value", "grads"}``, a tensor
    with those values whose gradient with respect to each leaf is the given one."""
    if not isinstance(spec, dict):
        return spec
    baseline = spec["value"].data.to(leaves[0].device)
    for leaf, grad in zip(leaves, spec["grads"]):
        baseline = baseline + (grad.data.to(leaf.device) * (leaf - leaf.detach())).sum(-1)
    return baseline


def surrogate_gradients(ns: dict, logits, locs, log_scales, components, noise, centre: float,
                        runs: list, device: str) -> list:
    """``mixture_surrogate(f, log_w, baseline)`` for draws of R one-dimensional mixtures, with
    the gradient of the sum of its result with respect to their parameters, once per run.

    The parameters ([R, M] each) are leaves, new for every run; the draws are
    z = locs[c] + exp(log_scales[c]) * eps with the components c and noises eps ([S, R]) the
    judge sent, the same for every run, log_w = log w_c and f(z) = -(z - centre)^2 + offset,
    with each run's ``offset`` and ``baseline`` (see :func:`_baseline`).

    Returns:
        One ``{"out": what it returned (or the error), "grads": the gradients of its sum for the
        logits, locations and log-scales}`` per run (grads absent when the result has no
        gradient).
    """
    c, eps = _tensor(components, device).long().T, _tensor(noise, device)  # [R, S], [S, R]
    seen = []
    for run in runs:
        leaves = [_tensor(t, device).requires_grad_(True) for t in (logits, locs, log_scales)]
        logits_, locs_, log_scales_ = leaves
        z = locs_.gather(-1, c).T + log_scales_.exp().gather(-1, c).T * eps  # [S, R], pathwise
        log_w = torch.log_softmax(logits_, -1).gather(-1, c).T  # [S, R]
        f = -(z - centre) ** 2 + run["offset"]
        out = _attempt(lambda: ns["mixture_surrogate"](f, log_w, _baseline(run["baseline"],
                                                                           leaves)))
        seen.append({"out": out})
        if isinstance(out, torch.Tensor) and out.requires_grad:
            seen[-1]["grads"] = _attempt(lambda: _grads(out, leaves))
    return seen


# ---------------------------------------------------------------------- the affine coupling

def _conditioner(weight: torch.Tensor, bias: torch.Tensor, scales: list):
    """The judge's conditioner g: v [..., K] -> (a tanh(h)[..., :K], b tanh(h)[..., K:]) with
    h = v W + c, W [K, 2K], c [2K] and (a, b) = ``scales``."""
    shift_scale, log_scale_scale = scales

    def g(v):
        t, s = torch.tanh(v @ weight.to(v) + bias.to(v)).chunk(2, dim=-1)
        return shift_scale * t, log_scale_scale * s

    return g


def _layer(ns: dict, mask, weight, bias, scales, device: str, dtype: torch.dtype):
    """``AffineCoupling(mask, g)`` (or the error), and whether it is a td Transform."""
    g = _conditioner(_tensor(weight, device), _tensor(bias, device), scales)
    layer = _attempt(lambda: ns["AffineCoupling"](_tensor(mask, device, dtype), g))
    return layer, isinstance(layer, td.transforms.Transform)


def coupling_inverse(ns: dict, mask, weight, bias, scales: list, z, y, device: str) -> dict:
    """An ``AffineCoupling(mask, g)`` in the dtype of ``z``: ``_call`` of a copy of z,
    ``_inverse`` of a copy of y (the judge's image of z, a tensor the layer has not seen) and
    ``_call`` again of a copy of what that returned.

    Returns:
        ``{"layer", "transform", "y", "back", "again"}``: the layer's class name (or the error of
        its construction), whether it is a td Transform, and the three results (or errors).
    """
    zz, yy = _tensor(z, device), _tensor(y, device)
    layer, transform = _layer(ns, mask, weight, bias, scales, device, zz.dtype)
    seen = {"layer": type(layer).__name__ if transform else layer, "transform": transform}
    if not transform:
        return seen
    seen["y"] = _attempt(lambda: layer._call(zz.clone()))
    back = _attempt(lambda: layer._inverse(yy.clone()))
    seen["back"] = back
    if isinstance(back, torch.Tensor):
        seen["again"] = _attempt(lambda: layer._call(back.detach().clone()))
    return seen


def coupling_log_det(ns: dict, mask, weight, bias, scales: list, z, y, device: str) -> dict:
    """An ``AffineCoupling(mask, g)``: ``_call(z)`` first (a layer may keep what its
    log-determinant needs), then ``log_abs_det_jacobian(z, y)`` with the y that ``_call``
    returned, or the judge's ``y`` where that is no tensor of z's shape; ``_inverse`` of a copy of
    the judge's y; and log q(y) of ``TransformedDistribution(N(0, I), [a new layer])``.

    Returns:
        ``{"layer", "transform", "log_det", "back", "log_q"}`` (results or errors).
    """
    zz, yy = _tensor(z, device), _tensor(y, device)
    layer, transform = _layer(ns, mask, weight, bias, scales, device, zz.dtype)
    seen = {"layer": type(layer).__name__ if transform else layer, "transform": transform}
    if not transform:
        return seen
    forward = _attempt(lambda: layer._call(zz))
    used = forward if isinstance(forward, torch.Tensor) and forward.shape == zz.shape else yy
    seen["log_det"] = _attempt(lambda: layer.log_abs_det_jacobian(zz, used))
    seen["back"] = _attempt(lambda: layer._inverse(yy.clone()))
    K = zz.shape[-1]
    base = td.Independent(td.Normal(torch.zeros(K, dtype=zz.dtype, device=device), 1.0), 1)
    flow = _attempt(lambda: td.TransformedDistribution(
        base, [_layer(ns, mask, weight, bias, scales, device, zz.dtype)[0]]))
    seen["log_q"] = _attempt(lambda: flow.log_prob(yy.clone())) \
        if isinstance(flow, td.Distribution) else flow
    return seen
