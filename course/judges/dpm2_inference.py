"""Judges of dpm2_inference: the CPD nets, NVIL's bounds and gradient estimators, and the
control variates.

One judge per graded test cell. Each draws its inputs (and the parameters of the given parts)
from the run's generator, has a probe of ``dpm_probe.probes.dpm2_inference`` build the student's
class in the kernel and exercise it, and decides here.

So that one mistake costs points once, the NVIL judges never use the student's CPD nets or
control variates: the probe builds the student's NVIL around given parts. Most run it on the
PPCA test bed (the notebook's cell ppca-testbed): PPCA with W of orthogonal columns (lengths 1.5
to 3) and b drawn here, sigma = 0.7, D = 6, K = 2, in float64, and q(z|x) = N(A x + c,
softplus(raw_scale)^2) set to the exact posterior, or to it with the means shifted and the
standard deviations scaled (:func:`_ppca`, :func:`_posterior`). There log p(x), the ELBO, the KL
and the ELBO's gradient have closed forms, computed here (:func:`_elbo`). Shapes, errors and the
mixture path run on 8 x 8 binary images with dpm_core's prior, image model and encoder and a
head of the probe's. The control variates are measured without NVIL: the probe calls the
student's control variate on rewards drawn here, and the score-function gradient they make is
computed here (:func:`cv_variance`).

Statistical judges (marked ``@statistical``, a second try on fresh inputs before a failure)
compare with standard errors of draws: each states its sample sizes and tolerances. The
kernel's generators are seeded with seeds drawn from the run's generator.

The given parts that the probe builds are no answers to the exercises (the heads' scales do not
depend on the input, the control variates are fixed arithmetic), and :func:`scan_solution`
refuses a solution cell that names the probe package at all, for the grader's own-work scan.
"""

from __future__ import annotations

import ast
import functools
import math

import torch
import torch.distributions as td
import torch.nn.functional as F

from course.judges._common import (Probe, draw_seed, expect, expect_close, expect_distribution,
                                   is_distribution, kind_of, probe_op, statistical, tensor_value)
from dpm_core import BinarizedImageModel, InferenceModel, build_ffnn_decoder
from dpm_core.conditionals import GaussianCPDNet as ReferenceGaussianCPDNet
from dpm_probe.wire import Node, Tensor

__all__ = ["JUDGES", "gaussian_cpd", "mog_cpd", "nvil_drl", "nvil_forward", "nvil_pathwise",
           "nvil_sfe", "nvil_cv_hookup", "cv_centred", "cv_scaled", "cv_selfcritic",
           "cv_baseline", "cv_chain", "cv_variance", "scan_solution"]

_PROBES = "dpm2_inference"
_MISFIT = ("the kernel's answer to the hidden tests does not fit their request: restart the "
           "kernel and run the notebook again")
#: the gradient judges: repeats of the estimator, draws per repeat, and the tolerance of the
#: average, in standard errors over the repeats (the notebook's self-checks use the same)
GRADIENT_REPEATS, GRADIENT_SAMPLES, GRADIENT_NUM_SE = 40, 1000, 5.0
#: the PPCA test bed (cell ppca-testbed): data and latent sizes, noise scale
BED_DATA, BED_LATENT, BED_SIGMA = 6, 2, 0.7
#: the image models: 1 x _SIZE x _SIZE binary images, codes of size _LATENT
_SIZE, _LATENT = 8, 3
#: the variance judge: gradient estimates per measurement, steps that fit a control variate
#: before it is measured (Adam, _VARIANCE_LR), and the largest share of the plain
#: score-function gradient's variance that a control variate may leave
_VARIANCE_REPEATS, _VARIANCE_WARM_UP, _VARIANCE_LR, _MAX_RATIO = 50, 50, 3e-2, 0.5


# ----------------------------------------------------------------------------- what came back
class _NotWritten(AssertionError):
    """The failure of code that is not written yet (it raised NotImplementedError, or its name
    is not defined): unlike another failure of a control variate's own tests, it also fails
    cv-variance-tests, which then has nothing to measure."""


def _raised(value):
    """``(error type, its classes, message)`` when ``value`` reports an error of the student's
    code: an error node, or the ``{"raised", "kinds", "message"}`` dict of the probes."""
    if isinstance(value, Node) and value.kind == "error":
        return value.type, [value.type], value.message
    if isinstance(value, dict) and "raised" in value and "message" in value:
        kinds = value.get("kinds") if isinstance(value.get("kinds"), list) else []
        return str(value["raised"]), [str(k) for k in kinds], str(value["message"])
    return None


def _ok(value, what: str, hint: str = ""):
    """``value``, unless it reports an error: then the message names ``what`` and the error."""
    error = _raised(value)
    if error is None:
        return value
    kind, _, message = error
    if kind == "NotImplementedError":
        raise _NotWritten(f"{what} raised NotImplementedError: " + (
            message or "write the exercise's code (and delete its raise line)"))
    raise AssertionError(f"{what} raised {kind}: {message}" + (f". {hint}" if hint else ""))


def _op(result, name: str):
    """A probe's result; an error of the whole probe (building ``name``) as a message."""
    error = _raised(result)
    if error is not None:
        kind, _, message = error
        if kind == "KeyError" and message.strip("'\"") == name:
            raise _NotWritten(f"{name} is not defined: run its cell before this one")
        if kind == "NotImplementedError":
            raise _NotWritten(f"{name} is not written yet: " + (
                message or "write its code (and delete the raise lines)"))
        raise AssertionError(f"{name} raised {kind}: {message}")
    return result


def _items(value, count: int) -> list:
    expect(isinstance(value, list) and len(value) == count, _MISFIT)
    return value


def _field(found, key: str):
    expect(isinstance(found, dict) and key in found, _MISFIT)
    return found[key]






def _tensor(value, what: str, hint: str = "") -> torch.Tensor:
    """The values of a reported plain tensor (an error reported instead as its message)."""
    return tensor_value(_ok(value, what, hint), what).data


def _expect_shape(value, shape, what: str, hint: str = "") -> torch.Tensor:
    """The values of a reported plain tensor of shape ``shape``."""
    got = _tensor(value, what, hint)
    expect(tuple(got.shape) == tuple(shape),
           f"{what} has shape {list(got.shape)}, expected {list(shape)}. {hint}".strip())
    return got


def _number(value, what: str) -> float:
    """A figure of forward's dictionary (a number, or a tensor with one element) as a float."""
    value = _ok(value, what)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    got = tensor_value(value, what).data
    expect(got.numel() == 1, f"{what} should be one number, got shape {list(got.shape)}")
    return float(got.reshape(()))


def _is_zero(value) -> bool:
    """Whether a control variate's loss is 0 (a number, or a tensor of zeros)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    return isinstance(value, Tensor) and value.type == "Tensor" and bool((value.data == 0).all())




def _built(value, name: str):
    """What a CPD net built: torch's checks of a distribution's parameters turned into a hint."""
    error = _raised(value)
    if error is not None and "ValueError" in error[1]:
        hint = ("Do the components have batch_shape inputs.shape[:-1] + (C,), with td.Independent "
                "over all outcome dimensions?" if "batch_shape" in error[2] else
                "Do the scales go through a softplus?")
        # torch's message goes on with the offending values: its first line says enough
        reason = error[2].split("\n")[0][:300].rstrip(":")
        raise AssertionError(f"{name} built an invalid distribution ({reason}). {hint}")
    return _ok(value, name)


def _images(batch_shape, rng: torch.Generator) -> torch.Tensor:
    """Binary images batch_shape + [1, _SIZE, _SIZE], each pixel a fair coin."""
    return torch.bernoulli(torch.full(tuple(batch_shape) + (1, _SIZE, _SIZE), 0.5), generator=rng)


# ----------------------------------------------------------------------------- the CPD nets
def gaussian_cpd(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of GaussianCPDNet (cell gaussian-cpd-tests).

    On every device: for hidden sizes None, 0 and 7, GaussianCPDNet((2, 3), num_inputs=4) on
    inputs [3, 5, 4] drawn for each run builds a distribution with batch_shape [3, 5] and
    event_shape [2, 3], and log_prob of an rsample draw has shape [3, 5]; with no hidden layer
    and inputs of scale 10 ([64, 5]), the scales are positive and finite and both the means and
    the scales vary with the input; rsample sends a finite gradient to every parameter, and
    .to(device) moves them all; dropout is accepted; as the head of an InferenceModel over
    8 x 8 images, batches [4] and [3, 5] give q(z|x) of those batch shapes over [3].
    """
    images = [[4, 1, 8, 8], [3, 5, 1, 8, 8]]
    ops = [probe_op(f"{_PROBES}.gaussian_cpd", seed=draw_seed(rng), device=dev,
                    inputs=torch.randn(3, 5, 4, generator=rng),
                    wide_inputs=10 * torch.randn(64, 5, generator=rng), images=images)
           for dev in probe.devices]
    for dev, result in zip(probe.devices, probe.run(ops)):
        seen = _op(result, "GaussianCPDNet")
        for hidden, found in zip((None, 0, 7), _items(_field(seen, "shapes"), 3)):
            what = f"GaussianCPDNet((2, 3), hidden_size={hidden})"
            _ok(found.get("net") if isinstance(found, dict) else None, what)
            d = _built(_field(found, "dist"), "GaussianCPDNet")
            expect_distribution(d, (3, 5), (2, 3), what)
            _expect_shape(_field(found, "log_prob"), (3, 5), "log_prob of a [2, 3] latent",
                          "td.Independent must absorb len(outcome_shape) dimensions, not just 1")
        wide = _field(seen, "wide")
        _ok(wide.get("net") if isinstance(wide, dict) else None, "GaussianCPDNet(6, num_inputs=5)")
        _built(_field(wide, "dist"), "GaussianCPDNet")
        stddev = _tensor(_field(wide, "stddev"), "the stddev of GaussianCPDNet's distribution")
        mean = _tensor(_field(wide, "mean"), "the mean of GaussianCPDNet's distribution")
        expect(bool(torch.isfinite(stddev).all() and (stddev > 0).all()),
               "the scales must be positive and finite for large inputs: use a softplus")
        expect(stddev.dim() > 0 and stddev.shape[0] == 64 and bool(
            (stddev.std(0) > 0).all() and (mean.std(0) > 0).all()),
            "both locations and scales must depend on the inputs (two heads on h)")
        grads = _ok(_field(wide, "grads"), "rsample's gradient")
        missing = [name for name, reached in _items(grads, len(grads)) if not reached]
        expect(not missing, f"no gradient reached {missing} through rsample")
        expect(all(kind == dev for kind in _field(wide, "devices")),
               "every layer must be a registered submodule, so that .to(device) moves it")
        _ok(_field(seen, "dropout"), "GaussianCPDNet(4, num_inputs=5, hidden_size=8, p_drop=0.3)")
        for shape, q in zip(images, _items(_field(seen, "images"), len(images))):
            what = "InferenceModel(GaussianCPDNet, ...)"
            expect_distribution(_built(q, what), shape[:-3], (3,), what)
    return "GaussianCPDNet passes the hidden tests"


def mog_cpd(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of MoGCPDNet (cell mog-cpd-tests).

    On every device: for hidden sizes None, 0 and 7, MoGCPDNet((2, 3), num_inputs=4,
    num_components=3) on inputs [3, 5, 4] drawn for each run builds a distribution with
    batch_shape [3, 5] and event_shape [2, 3], whose components are td.Independent over all
    outcome dimensions, and log_prob of a draw has shape [3, 5]; one component gives one weight
    per input, and the default is two; with no hidden layer and inputs of scale 10 ([64, 5]),
    the component scales are positive and finite and the mixing weights, locations and scales
    vary with the input; on inputs of unit scale, log_prob of a draw sends a finite gradient to
    every parameter (of scale 10, some softplus scales fall to about 1e-10 and the gradient
    overflows for about a third of the draws, with a correct net); as the head of an
    InferenceModel, a batch [3, 5] of images gives q(z|x) of that batch shape over [3].
    """
    ops = [probe_op(f"{_PROBES}.mog_cpd", seed=draw_seed(rng), device=dev,
                    inputs=torch.randn(3, 5, 4, generator=rng),
                    one_inputs=torch.randn(4, 5, generator=rng),
                    wide_inputs=10 * torch.randn(64, 5, generator=rng),
                    grad_inputs=torch.randn(64, 5, generator=rng), images=[3, 5, 1, 8, 8])
           for dev in probe.devices]
    for dev, result in zip(probe.devices, probe.run(ops)):
        seen = _op(result, "MoGCPDNet")
        for hidden, found in zip((None, 0, 7), _items(_field(seen, "shapes"), 3)):
            what = f"MoGCPDNet((2, 3), hidden_size={hidden})"
            _ok(found.get("net") if isinstance(found, dict) else None, what)
            d = _built(_field(found, "dist"), "MoGCPDNet")
            expect_distribution(d, (3, 5), (2, 3), what)
            components = _ok(_field(found, "components"), f"{what}.component_distribution")
            expect(is_distribution(components) and tuple(components.event_shape) == (2, 3),
                   "each component is td.Independent over all outcome dimensions")
            _expect_shape(_field(found, "log_prob"), (3, 5), "log_prob of a [2, 3] latent")
        one = _built(_field(seen, "one"), "MoGCPDNet")
        probs = _tensor(_field(one, "probs"), "the mixing probabilities")
        expect(tuple(probs.shape) == (4, 1), "num_components=1 gives one weight per input")
        two = _built(_field(seen, "two"), "MoGCPDNet")
        components = _ok(_field(two, "components"), "the components of MoGCPDNet(3, ...)")
        expect(is_distribution(components) and tuple(components.batch_shape) == (4, 2),
               "num_components defaults to 2")
        wide = _field(seen, "wide")
        _ok(wide.get("net") if isinstance(wide, dict) else None, "MoGCPDNet(6, num_inputs=5)")
        _built(_field(wide, "dist"), "MoGCPDNet")
        scales = _tensor(_field(wide, "component_stddev"), "the component scales")
        locs = _tensor(_field(wide, "component_mean"), "the component locations")
        weights = _tensor(_field(wide, "probs"), "the mixing probabilities")
        expect(bool(torch.isfinite(scales).all() and (scales > 0).all()),
               "the component scales must be positive and finite: use a softplus")
        expect(weights.dim() > 0 and weights.shape[0] == 64 and bool((weights.std(0) > 0).all()),
               "the mixing weights must depend on the input (a logits head on h)")
        expect(locs.dim() > 0 and locs.shape[0] == 64 and scales.shape[:1] == locs.shape[:1]
               and bool((locs.std(0) > 0).all() and (scales.std(0) > 0).all()),
               "the component locations and scales must depend on the input")
        grads = _built(_field(wide, "grads"), "MoGCPDNet")
        missing = [name for name, reached in _items(grads, len(grads)) if not reached]
        expect(not missing, f"no gradient reached {missing} through log_prob")
        what = "InferenceModel(partial(MoGCPDNet, num_components=3), ...)"
        expect_distribution(_built(_field(seen, "images"), what), (3, 5), (3,), what)
    return "MoGCPDNet passes the hidden tests"


# ----------------------------------------------------------------------------- the test bed
def _ppca(rng: torch.Generator) -> dict:
    """The generative half of the PPCA test bed, drawn from ``rng`` (float64): W [D, K] with
    orthogonal columns of lengths 1.5 to 3 (so that the exact posterior has a diagonal
    covariance), b [D] from N(0, 1), and raw_sigma with softplus(raw_sigma) = 0.7."""
    W, _ = torch.linalg.qr(torch.randn(BED_DATA, BED_LATENT, generator=rng, dtype=torch.float64))
    W = W * torch.linspace(1.5, 3.0, BED_LATENT, dtype=torch.float64)
    b = torch.randn(BED_DATA, generator=rng, dtype=torch.float64)
    raw_sigma = torch.tensor(math.log(math.expm1(BED_SIGMA)), dtype=torch.float64)
    return {"W": W, "b": b, "raw_sigma": raw_sigma}


def _posterior(gen: dict, shift: float = 0.0, scale_factor: float = 1.0) -> dict:
    """q(z|x) = N(A x + c, diag(softplus(raw_scale)^2)) set to the exact posterior of ``gen``
    (mean M^-1 W^T (x - b), covariance sigma^2 M^-1, M = W^T W + sigma^2 I), with ``shift``
    added to every mean and every standard deviation multiplied by ``scale_factor``."""
    W, b, s2 = gen["W"], gen["b"], F.softplus(gen["raw_sigma"]) ** 2
    M = W.T @ W + s2 * torch.eye(BED_LATENT, dtype=torch.float64)
    A = torch.linalg.solve(M, W.T)
    target = torch.sqrt(torch.diagonal(s2 * torch.linalg.inv(M))) * scale_factor
    return {"A": A, "c": -A @ b + shift,
            "raw_scale": target + torch.log(-torch.expm1(-target))}  # softplus^-1


def _ppca_model(gen: dict, q: dict, mixture_prior: bool = False, cv: dict | None = None) -> dict:
    """The probe's description of NVIL on the test bed."""
    return {"kind": "ppca", **gen, **q, "mixture_prior": mixture_prior,
            "cv": cv or {"kind": "none"}}


def _image_model(q: str = "gaussian", cv: dict | None = None) -> dict:
    """The probe's description of NVIL on 8 x 8 binary images (weights drawn in the kernel)."""
    return {"kind": "image", "latent": _LATENT, "size": _SIZE, "q": q, "num_components": 3,
            "cv": cv or {"kind": "none"}}


def _ppca_data(gen: dict, n: int, rng: torch.Generator) -> torch.Tensor:
    """n draws from p(x) of the test bed, [n, D]: z ~ N(0, I), x ~ N(W z + b, sigma^2 I)."""
    z = torch.randn(n, BED_LATENT, generator=rng, dtype=torch.float64)
    noise = torch.randn(n, BED_DATA, generator=rng, dtype=torch.float64)
    return z @ gen["W"].T + gen["b"] + F.softplus(gen["raw_sigma"]) * noise


def _log_marginal(gen: dict, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log N(x | b, W W^T + sigma^2 I), [n]."""
    W, s2 = gen["W"], F.softplus(gen["raw_sigma"]) ** 2
    cov = W @ W.T + s2 * torch.eye(BED_DATA, dtype=torch.float64)
    return td.MultivariateNormal(gen["b"], covariance_matrix=cov).log_prob(x)


def _q(q: dict, x: torch.Tensor) -> td.Distribution:
    """q(z|x): batch_shape x.shape[:-1], event_shape [K]."""
    loc = x @ q["A"].T + q["c"]
    return td.Independent(td.Normal(loc, F.softplus(q["raw_scale"]).expand(loc.shape)), 1)


def _obs(gen: dict, z: torch.Tensor) -> td.Distribution:
    """p(x|z): batch_shape z.shape[:-1], event_shape [D]."""
    loc = z @ gen["W"].T + gen["b"]
    return td.Independent(td.Normal(loc, F.softplus(gen["raw_sigma"]).expand(loc.shape)), 1)


def _prior(batch_shape) -> td.Distribution:
    """p(z) = N(0, I): batch_shape ``batch_shape``, event_shape [K]."""
    shape = tuple(batch_shape) + (BED_LATENT,)
    zeros = torch.zeros(shape, dtype=torch.float64)
    return td.Independent(td.Normal(zeros, torch.ones_like(zeros)), 1)


def _elbo(gen: dict, q: dict, x: torch.Tensor, rate_weight: float = 1.0) -> torch.Tensor:
    """E_q[log p(x|z)] - rate_weight * KL(q(z|x) || p(z)) in closed form, [n], differentiable in
    the tensors of ``gen`` and ``q``."""
    W, b, sigma = gen["W"], gen["b"], F.softplus(gen["raw_sigma"])
    qz = _q(q, x)
    m, v = qz.base_dist.loc, qz.base_dist.scale ** 2  # [n, K]
    expected_loglik = td.Independent(td.Normal(m @ W.T + b, sigma.expand(x.shape)), 1).log_prob(x)
    expected_loglik = expected_loglik - (v @ (W ** 2).T).sum(-1) / (2 * sigma ** 2)
    kl = 0.5 * (v + m ** 2 - 1 - torch.log(v)).sum(-1)
    return expected_loglik - rate_weight * kl


#: the names of the test bed's parameters in the probe's modules
_GEN_NAMES = {"cpd_net.W": "W", "cpd_net.b": "b", "cpd_net.raw_sigma": "raw_sigma"}
_INF_NAMES = {"A": "A", "c": "c", "raw_scale": "raw_scale"}


def _exact_gradient(gen: dict, q: dict, x: torch.Tensor, rate_weight: float) -> dict:
    """The gradient of the loss -mean ELBO (with ``rate_weight``) for each parameter group,
    ``{"gen": [P_gen], "inf": [P_inf]}`` (the parameters in the probe's order)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in {**gen, **q}.items()}
    loss = -_elbo({k: leaves[k] for k in gen}, {k: leaves[k] for k in q}, x, rate_weight).mean()
    loss.backward()
    return {group: torch.cat([leaves[k].grad.flatten() for k in names.values()])
            for group, names in (("gen", _GEN_NAMES), ("inf", _INF_NAMES))}


def _se(value: float) -> str:
    """A number of standard errors, for a message."""
    return f"{value:.0f}" if value < 1000 else "more than 1000"


def _bias(runs, exact: dict, what: str) -> dict:
    """For each parameter group, the largest number of standard errors (over the repeats)
    between the average estimate and the exact gradient (1e-6 of the gap forgiven: float
    noise)."""
    runs = _ok(runs, what)
    bias = {}
    for group, names in (("gen", _GEN_NAMES), ("inf", _INF_NAMES)):
        found = _field(runs, group)
        parts = []
        for name in names:
            got = tensor_value(_field(found, name), f"the gradients of {name}").data.double()
            expect(got.dim() >= 1 and got.shape[0] == GRADIENT_REPEATS, _MISFIT)
            parts.append(got.reshape(GRADIENT_REPEATS, -1))
        estimates = torch.cat(parts, 1)  # [repeats, P]
        expect(estimates.shape[1] == exact[group].numel(), _MISFIT)
        if not bool(torch.isfinite(estimates).all()):
            bias[group] = math.inf
            continue
        se = estimates.std(0) / math.sqrt(GRADIENT_REPEATS)
        gap = ((estimates.mean(0) - exact[group]).abs() - 1e-6).clamp(min=0)
        bias[group] = (gap / se.clamp(min=1e-12)).max().item()
    return bias


def _nvil_op(dev: str, model: dict, steps: list, rng: torch.Generator) -> dict:
    return probe_op(f"{_PROBES}.nvil", seed=draw_seed(rng), device=dev, model=model, steps=steps)


def _steps(result, count: int) -> list:
    """The results of a NVIL probe's steps (building the student's NVIL failing as a message)."""
    return _items(_op(result, "NVIL"), count)


def _drl(value, what: str) -> list:
    """(D, R, L) of what DRL returned."""
    value = _ok(value, what)
    expect(isinstance(value, list) and len(value) == 3,
           f"DRL must return the tuple (D, R, L), got {kind_of(value)}")
    return value


def _out(value, what: str) -> dict:
    """forward's dictionary, from a forward step's result."""
    found = _ok(value, what)
    out = _field(found, "out")
    expect(isinstance(out, dict), f"{what} should return a dictionary, got {kind_of(out)}")
    missing = {"loss", "ELBO", "D", "R", "cv_loss"} - set(out)
    expect(not missing, f"forward's dictionary lacks {sorted(missing)}")
    return out


def _grads(value, group: str, what: str) -> dict:
    """The gradients of a forward step with ``backward``, of one parameter group."""
    grads = _field(_ok(value, what), "grads")
    found = _field(grads, group)
    expect(isinstance(found, dict), _MISFIT)
    return found


# ----------------------------------------------------------------------------- NVIL
@statistical
def nvil_drl(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of NVIL.DRL (cell nvil-drl-tests): distortion, rate and log-likelihood
    against the exact PPCA test bed.

    On every device: D, R and L have the batch shape [3, 5] for sample sizes None, 1 and 5 (on
    images); with q = the exact posterior, L equals log p(x) for S = 1 and S = 300 (8 points;
    rtol 1e-4, atol 1e-5); with q perturbed (means + 0.4, standard deviations x 1.6; 16 points)
    and S = 20000, R is the closed-form KL(q || p) (not KL(p || q)), D lies within 5 standard
    errors of E_q[-log p(x|z)] (the standard error of -log p(x|z) under q, from 20000 draws
    here), and L closes at least 90% of the gap between the ELBO and log p(x) on average and
    does not exceed log p(x) by more than 0.01 on average; with a prior without closed-form KL
    (N(0, I) as a mixture of one), R lies within 5 standard errors of the KL, and L equals
    log p(x) for the exact posterior (S = 4). The kernel's draws are seeded for each run; a
    false failure of the 32 comparisons at 5 standard errors has probability below 1e-4.
    """
    big_s = 20000
    gen = _ppca(rng)
    exact_q, perturbed_q = _posterior(gen), _posterior(gen, 0.4, 1.6)
    x_exact, x_p = _ppca_data(gen, 8, rng), _ppca_data(gen, 16, rng)
    # the reference, here: draws from the perturbed q
    with torch.no_grad():
        q_p = _q(perturbed_q, x_p)
        z_p = q_p.base_dist.loc + q_p.base_dist.scale * torch.randn(
            (big_s, 16, BED_LATENT), generator=rng, dtype=torch.float64)
        nll = -_obs(gen, z_p).log_prob(x_p)  # [S, 16]
        log_ratio = q_p.log_prob(z_p) - _prior((16,)).log_prob(z_p)
        kl_qp = td.kl_divergence(q_p, _prior((16,)))
        kl_pq = td.kl_divergence(_prior((16,)), q_p)
        elbo_p, truth, truth_p = _elbo(gen, perturbed_q, x_p), _log_marginal(gen, x_exact), \
            _log_marginal(gen, x_p)
    for dev in probe.devices:
        images = _images((3, 5), rng)
        results = probe.run([
            _nvil_op(dev, _image_model(), [{"do": "DRL", "x": images, "sample_size": s}
                                           for s in (None, 1, 5)], rng),
            _nvil_op(dev, _ppca_model(gen, exact_q), [
                {"do": "DRL", "x": x_exact, "sample_size": s} for s in (1, 300)], rng),
            _nvil_op(dev, _ppca_model(gen, perturbed_q),
                     [{"do": "DRL", "x": x_p, "sample_size": big_s}], rng),
            _nvil_op(dev, _ppca_model(gen, perturbed_q, mixture_prior=True),
                     [{"do": "DRL", "x": x_p, "sample_size": big_s}], rng),
            _nvil_op(dev, _ppca_model(gen, exact_q, mixture_prior=True),
                     [{"do": "DRL", "x": x_exact, "sample_size": 4}], rng)])
        for s, found in zip((None, 1, 5), _steps(results[0], 3)):
            for name, value in zip("DRL", _drl(found, f"DRL(x, sample_size={s})")):
                _expect_shape(value, (3, 5), f"{name} for a [3, 5] batch with sample_size={s}",
                              "reduce only the sample dimension")
        one, many = _steps(results[1], 2)
        expect_close(_expect_shape(_drl(one, "DRL")[2], (8,), "L"), truth,
                     "L with one sample and q = posterior",
                     "L must be log(1/S sum_s w_s), computed with logsumexp")
        expect_close(_expect_shape(_drl(many, "DRL")[2], (8,), "L"), truth,
                     "L with 300 samples and q = posterior",
                     "subtract log S after the logsumexp over the samples")
        D_p, R_p, L_p = (_expect_shape(v, (16,), name).double() for name, v in
                         zip("DRL", _drl(_steps(results[2], 1)[0], "DRL")))
        expect(not torch.allclose(R_p, kl_pq, rtol=1e-4),
               "R equals KL(p(z) || q(z|x)): the arguments are swapped, the rate is KL(q || p)")
        expect_close(R_p, kl_qp, "R for a Gaussian q and a Gaussian prior",
                     "use the closed-form KL(q(z|x) || p(z)), e.g. td.kl_divergence(q, p), when "
                     "there is one")
        se_D = nll.std(0) / math.sqrt(big_s)
        expect(bool(((D_p - (-elbo_p - kl_qp)).abs() <= 5 * se_D).all()),
               "D is not an unbiased estimate of E_q[-log p(x|z)]: average -log p(x|z_s) over "
               "draws z_s ~ q(z|x)")
        gap = (truth_p - elbo_p).mean()
        expect(bool((truth_p - L_p).mean() < 0.1 * gap and L_p.mean() <= truth_p.mean() + 1e-2),
               "with many samples L should close most of the gap between the ELBO and log p(x) "
               "(and never exceed log p(x) on average): is L the logsumexp of log p(x, z_s) - log "
               "q(z_s|x) minus log S?")
        R_m = _expect_shape(_drl(_steps(results[3], 1)[0], "DRL")[1], (16,), "R").double()
        expect(bool(((R_m - kl_qp).abs() <= 5 * log_ratio.std(0) / math.sqrt(big_s)).all()),
               "without a closed form, R must be the average of log q(z_s|x) - log p(z_s) over the "
               "draws")
        expect_close(_expect_shape(_drl(_steps(results[4], 1)[0], "DRL")[2], (8,), "L"), truth,
                     "L with a sampled rate and q = posterior",
                     "L must use log p(z) + log p(x|z) - log q(z|x) of the same draws")
    return "DRL passes the hidden tests"


def _raises(value, error: str, message: str) -> None:
    """The step raised ``error`` (or a subclass of it), or the failure ``message``."""
    found = _raised(value)
    if found is None:
        raise AssertionError(message)
    kind, kinds, text = found
    expect(error in kinds or kind == error, f"{message}; it raised {kind}: {text}")


@statistical
def nvil_forward(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of NVIL.forward (cell nvil-forward-tests): the reported numbers, the loss
    of each estimator, its errors.

    On every device, on images: for a batch [3, 5] the loss is a scalar and ELBO = -D - R
    (relative error 1e-3); with rate_weight 0 and 2, the reported R is positive and the
    pathwise loss is D + rate_weight * R (relative error 1e-4); with estimator="sfe" and
    rate_weight=0, a gradient reaches q; an unknown estimator raises ValueError; with a mixture
    q (no rsample), the loss sends a finite gradient to every parameter, ELBO = -D - R, and
    estimator="reparam" raises NotImplementedError. On the CPU, on the test bed with q
    perturbed (means + 0.3, standard deviations x 1.4; 8 points) and S = 20000 with
    estimator="sfe": the reported R is the batch mean of KL(q || p) (relative error 1e-4), and
    the reported ELBO lies within 5 standard errors (plus 1e-6) of the exact ELBO's batch mean
    (the standard error from 20000 draws here). The kernel's draws are seeded for each run.
    """
    for dev in probe.devices:
        x_f, x_35 = _images((4,), rng), _images((3, 5), rng)
        gaussian, mixture = probe.run([
            _nvil_op(dev, _image_model(), [
                {"do": "forward", "x": x_35},
                {"do": "forward", "x": x_f, "kwargs": {"sample_size": 2, "rate_weight": 0.0}},
                {"do": "forward", "x": x_f, "kwargs": {"sample_size": 2, "rate_weight": 2.0}},
                {"do": "forward", "x": x_f, "backward": True,
                 "kwargs": {"sample_size": 2, "rate_weight": 0.0, "estimator": "sfe"}},
                {"do": "forward", "x": x_f, "kwargs": {"estimator": "magic"}}], rng),
            _nvil_op(dev, _image_model("mixture"), [
                {"do": "forward", "x": x_f, "kwargs": {"sample_size": 2}, "backward": True},
                {"do": "forward", "x": x_f, "kwargs": {"estimator": "reparam"}}], rng)])
        batch, *weighted, sfe, magic = _steps(gaussian, 5)
        out_35 = _out(batch, "forward on a [3, 5] batch")
        loss = _ok(out_35["loss"], "the loss")
        expect(isinstance(loss, Tensor) and loss.data.dim() == 0,
               "for a [3, 5] batch the loss is still one number (the mean)")
        elbo_35, D_35, R_35 = (_number(out_35[k], k) for k in ("ELBO", "D", "R"))
        expect(abs(elbo_35 + D_35 + R_35) < 1e-3 * abs(elbo_35),
               "for a [3, 5] batch, report the means of -D - R, D and R")
        for weight, found in zip((0.0, 2.0), weighted):
            out_w = _out(found, f"forward with rate_weight={weight}")
            D_w, R_w = _number(out_w["D"], "D"), _number(out_w["R"], "R")
            expect(R_w > 0, "the reported rate must be KL(q || p) >= 0 (without the weight)")
            expect(abs(_number(out_w["loss"], "the loss") - (D_w + weight * R_w))
                   <= 1e-4 * (D_w + R_w),
                   f"with rate_weight={weight} the pathwise loss must be D + rate_weight * R; "
                   "check the sign and the weight of the rate")
        # (whether the pathwise gradient reaches q through rsample is nvil-pathwise-tests' part)
        q_grads = _grads(sfe, "inf", "forward with estimator='sfe'")
        q_grad = sum(float(g.data.abs().sum()) for g in q_grads.values() if isinstance(g, Tensor))
        expect(q_grad > 0, "with estimator='sfe' and rate_weight=0, the score term r * log q(z|x) "
                           "must send gradient to q(z|x)")
        _raises(magic, "ValueError", "an unknown estimator must raise ValueError")
        mixed, reparam = _steps(mixture, 2)
        error = _raised(mixed)
        if error is not None:
            raise AssertionError(f"with a mixture q, forward raised {error[0]}: {error[2]}. Use "
                                 f"the score function when q has no rsample")
        bad = [name for group in ("gen", "inf")
               for name, g in _grads(mixed, group, "forward with a mixture q").items()
               if not (isinstance(g, Tensor) and bool(torch.isfinite(g.data).all()))]
        expect(not bad, f"with a mixture q, no (finite) gradient reached {bad[:3]}: use the score "
                        "function when q has no rsample")
        out_mog = _out(mixed, "forward with a mixture q")
        elbo_mog, D_mog, R_mog = (_number(out_mog[k], k) for k in ("ELBO", "D", "R"))
        expect(abs(elbo_mog + D_mog + R_mog) < 1e-3 * abs(elbo_mog),
               "with the score function, still report ELBO = -D - R (not the surrogate)")
        _raises(reparam, "NotImplementedError",
                "estimator='reparam' with a mixture q must raise NotImplementedError")
    # the reported ELBO is the estimate, not the surrogate: compare with the exact ELBO
    draws = 20000
    gen = _ppca(rng)
    q = _posterior(gen, 0.3, 1.4)
    x_s = _ppca_data(gen, 8, rng)
    qz = _q(q, x_s)
    exact_elbo = _elbo(gen, q, x_s).mean().item()
    z = qz.base_dist.loc + qz.base_dist.scale * torch.randn(
        (draws, 8, BED_LATENT), generator=rng, dtype=torch.float64)
    per_draw = _obs(gen, z).log_prob(x_s)  # [draws, 8]
    se_elbo = per_draw.std(0).pow(2).mean().div(8 * draws).sqrt().item()
    kl_s = td.kl_divergence(qz, _prior((8,))).mean().item()
    (found,) = _steps(probe.run([_nvil_op("cpu", _ppca_model(gen, q), [
        {"do": "forward", "x": x_s, "kwargs": {"sample_size": draws, "estimator": "sfe"}}],
        rng)])[0], 1)
    out_s = _out(found, "forward with estimator='sfe'")
    reported_R = _number(out_s["R"], "R")
    expect(abs(reported_R - kl_s) <= 1e-4 * max(1.0, kl_s),
           f"the reported R is {reported_R:.4f}, the batch mean of KL(q(z|x) || p(z)) is "
           f"{kl_s:.4f}: report the closed-form rate, and check the order of the KL's arguments")
    reported = _number(out_s["ELBO"], "ELBO")
    expect(abs(reported - exact_elbo) <= 5 * se_elbo + 1e-6,
           f"with estimator='sfe' the reported ELBO is {reported:.3f}, the exact ELBO is "
           f"{exact_elbo:.3f}: report -D - R, not the value of the surrogate")
    return "forward passes the hidden tests"


@statistical
def nvil_pathwise(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the pathwise gradient (cell nvil-pathwise-tests): unbiased, with a
    closed-form and with a sampled rate.

    On every device, on the test bed with q perturbed (means + 0.3, standard deviations x 1.4;
    4 points), for a prior with closed-form KL and for N(0, I) written as a mixture of one (no
    closed form): 40 gradients of forward's loss (estimator "auto", S = 1000 draws each) are
    averaged, and every coordinate of the average must lie within 5 standard errors (over the
    40) of the exact gradient of -mean ELBO (35 coordinates; a t-distribution with 39 degrees of
    freedom puts 1.3e-5 beyond 5: a false failure has probability about 1e-3, 1e-6 with the
    retry). Where q's gradient is off, a gradient must at least reach q with rate_weight=0.
    The kernel's draws are seeded for each run.
    """
    gen = _ppca(rng)
    q = _posterior(gen, 0.3, 1.4)
    x = _ppca_data(gen, 4, rng)
    exact = _exact_gradient(gen, q, x, 1.0)
    kwargs = {"sample_size": GRADIENT_SAMPLES, "estimator": "auto"}
    for dev in probe.devices:
        results = probe.run([_nvil_op(dev, _ppca_model(gen, q, mixture_prior=mixture), [
            {"do": "gradients", "x": x, "kwargs": kwargs, "repeats": GRADIENT_REPEATS},
            {"do": "forward", "x": x, "kwargs": {"sample_size": 2, "rate_weight": 0.0},
             "backward": True}], rng) for mixture in (False, True)])
        for mixture, result in zip((False, True), results):
            runs, zero_rate = _steps(result, 2)
            bias = _bias(runs, exact, "the pathwise gradient")
            rate = "a sampled rate" if mixture else "a closed-form rate"
            if bias["inf"] > GRADIENT_NUM_SE:
                reached = [g for g in _grads(zero_rate, "inf", "forward").values()
                           if isinstance(g, Tensor) and float(g.data.abs().sum()) > 0]
                expect(bool(reached),
                       f"with {rate} on {dev}, the pathwise gradient of q is "
                       f"{_se(bias['inf'])} standard errors off, and with rate_weight=0 no "
                       f"gradient reaches q(z|x): draw z with rsample, not sample, in the pathwise "
                       f"estimator")
            expect(bias["gen"] <= GRADIENT_NUM_SE and bias["inf"] <= GRADIENT_NUM_SE,
                   f"with {rate} on {dev}, the pathwise gradient is biased "
                   f"({_se(bias['gen'])} and {_se(bias['inf'])} standard errors for p and q): z "
                   f"from rsample; the sampled rate is the average of log q(z|x) - log p(z) over "
                   f"the same draws")
    return "pathwise gradients pass the hidden tests"


@statistical
def nvil_sfe(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the score-function gradient (cell nvil-sfe-tests): the gradient of the
    distortion is unbiased, without a control variate and with a learned baseline.

    rate_weight=0: how the rate enters the reward and the loss is nvil-cv-hookup-tests' part,
    so that a mistake there is not charged here again. On every device, on the test bed with q
    perturbed (means + 0.3, standard deviations x 1.4; 4 points), with no control variate (and
    N(0, I) written as a mixture of one) and with a linear baseline b(x) = x w + a (w, a drawn
    for each run; output r - b(x) not differentiated, loss (r - b(x))^2): 40 gradients of
    forward's loss (estimator "sfe", S = 1000 draws each) are averaged, and every coordinate of
    the average must lie within 5 standard errors (over the 40) of the exact gradient of
    -mean E_q[log p(x|z)] (a false failure has probability about 1e-3, 1e-6 with the retry).
    The kernel's draws are seeded for each run.
    """
    gen = _ppca(rng)
    q = _posterior(gen, 0.3, 1.4)
    x = _ppca_data(gen, 4, rng)
    exact = _exact_gradient(gen, q, x, 0.0)
    baseline = {"kind": "linear", "weight": 0.1 * torch.randn(BED_DATA, generator=rng,
                                                              dtype=torch.float64),
                "bias": 0.1 * torch.randn((), generator=rng, dtype=torch.float64)}
    setups = [("no control variate", _ppca_model(gen, q, mixture_prior=True)),
              ("a learned baseline", _ppca_model(gen, q, cv=baseline))]
    kwargs = {"sample_size": GRADIENT_SAMPLES, "estimator": "sfe", "rate_weight": 0.0}
    for dev in probe.devices:
        results = probe.run([_nvil_op(dev, model, [
            {"do": "gradients", "x": x, "kwargs": kwargs, "repeats": GRADIENT_REPEATS}], rng)
            for _, model in setups])
        for (what, _), result in zip(setups, results):
            bias = _bias(_steps(result, 1)[0], exact, "the score-function gradient")
            expect(bias["gen"] <= GRADIENT_NUM_SE,
                   f"with {what} on {dev}, the score-function gradient of p is "
                   f"{_se(bias['gen'])} standard errors off: pass reward.detach() to the control "
                   f"variate and detach its output in the score term")
            expect(bias["inf"] <= GRADIENT_NUM_SE,
                   f"with {what} and rate_weight=0 on {dev}, the score-function gradient of q is "
                   f"{_se(bias['inf'])} standard errors off: draw z with sample (not "
                   f"rsample), and build the score term (r - b).detach() * log q(z|x) from the "
                   f"rewards log p(x|z) of those draws")
    return "score-function gradients pass the hidden tests"


def nvil_cv_hookup(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of NVIL.forward's control variate (cell nvil-cv-hookup-tests): the rewards
    it gets, and how its output and its loss enter the training loss.

    On every device, on the test bed (5 points each), with estimator="sfe": with q the exact
    posterior and a sampled rate (N(0, I) written as a mixture of one), S = 6, the control
    variate gets the reward log p(x|z) - (log q(z|x) - log p(z)), which equals log p(x) for every
    draw (rtol and atol 1e-6); with rate_weight=0.5, the r_fn it gets evaluates
    log p(x|z) - 0.5 (log q(z|x) - log p(z)) at codes drawn here (rtol 1e-4, atol 1e-5); with q
    perturbed (means + 0.3, standard deviations x 1.4) and a control variate that returns zero
    rewards, S = 3 and rate_weight=0.7, q's gradient is that of 0.7 * KL(q || p) averaged over
    the batch (rtol 1e-6, atol 1e-8); with a control variate whose loss is (w - 3)^2 at w = 1,
    the reported cv_loss is 4 and w's gradient -4 (to 1e-6).
    """
    gen = _ppca(rng)
    exact_q, perturbed_q = _posterior(gen), _posterior(gen, 0.3, 1.4)
    x_h, x_z = _ppca_data(gen, 5, rng), _ppca_data(gen, 5, rng)
    qz_h = _q(exact_q, x_h)
    z_h = qz_h.base_dist.loc + qz_h.base_dist.scale * torch.randn(
        (2, 5, BED_LATENT), generator=rng, dtype=torch.float64)
    log_px = _log_marginal(gen, x_h)
    expected_r = _obs(gen, z_h).log_prob(x_h) - 0.5 * (qz_h.log_prob(z_h)
                                                       - _prior((5,)).log_prob(z_h))
    leaves = {k: v.clone().requires_grad_(True) for k, v in perturbed_q.items()}
    qz = _q(leaves, x_z)
    (0.7 * td.kl_divergence(qz, _prior((5,))).mean()).backward()
    sfe = {"estimator": "sfe"}
    for dev in probe.devices:
        recorded, zeroed, trained = probe.run([
            _nvil_op(dev, _ppca_model(gen, exact_q, True, {"kind": "recording"}), [
                {"do": "forward", "x": x_h, "kwargs": {"sample_size": 6, **sfe}},
                {"do": "recorded"},
                {"do": "forward", "x": x_h, "kwargs": {"sample_size": 6, "rate_weight": 0.5,
                                                       **sfe}},
                {"do": "r_fn", "z": z_h, "x": x_h}], rng),
            _nvil_op(dev, _ppca_model(gen, perturbed_q, cv={"kind": "zero"}), [
                {"do": "forward", "x": x_z, "backward": True,
                 "kwargs": {"sample_size": 3, "rate_weight": 0.7, **sfe}}], rng),
            _nvil_op(dev, _ppca_model(gen, perturbed_q, cv={"kind": "trained", "w": 1.0}), [
                {"do": "forward", "x": x_z, "backward": True,
                 "kwargs": {"sample_size": 3, **sfe}}], rng)])
        first, calls, second, r_fn = _steps(recorded, 4)
        _ok(first, "forward with estimator='sfe'")
        calls = _ok(calls, "the control variate's calls")
        expect(_field(calls, "calls") > 0,
               "with estimator='sfe', forward must pass the rewards through the control variate")
        r = _expect_shape(_field(calls, "r"), (6, 5), "the rewards given to the control variate",
                          "one per sample and data point, [S, B]")
        expect_close(r.double(), log_px.expand(6, 5),
                     "the reward with a sampled rate and q = posterior",
                     "without a closed-form KL the reward is log p(x|z) - rate_weight * (log "
                     "q(z|x) - log p(z))", rtol=1e-6, atol=1e-6)
        _ok(second, "forward with rate_weight=0.5")
        expect_close(_expect_shape(r_fn, (2, 5), "r_fn(z, x)").double(), expected_r,
                     "r_fn with a sampled rate and rate_weight=0.5",
                     "r_fn must apply the same formula as the reward, rate_weight included")
        (found,) = _steps(zeroed, 1)
        got = _grads(found, "inf", "forward with a control variate that returns zero rewards")
        for name in _INF_NAMES:
            g = got.get(name)
            expect_close(tensor_value(g, f"q's gradient for {name}").data.double()
                         if g is not None else torch.zeros_like(leaves[name]),
                         leaves[name].grad,
                         "q's gradient when the control variate returns zero rewards",
                         "the score term must use the control variate's output r, and the "
                         "closed-form rate enters the loss once as + rate_weight * KL(q || p), "
                         "averaged over the batch", rtol=1e-6, atol=1e-8)
        (found,) = _steps(trained, 1)
        out = _out(found, "forward with a trained control variate")
        expect(abs(_number(out["cv_loss"], "cv_loss") - 4.0) < 1e-6,
               "report the mean of the control variate's loss as cv_loss")
        w_grad = _grads(found, "cv", "forward with a trained control variate").get("w")
        expect(isinstance(w_grad, Tensor) and abs(float(w_grad.data.reshape(())) + 4.0) < 1e-6,
               "the loss must include the mean of the control variate's loss, so that a learned "
               "baseline trains")
    return "the control-variate hook-up passes the hidden tests"


# ----------------------------------------------------------------------------- control variates
def _cv_op(dev: str, name: str, kwargs: dict, rewards: list, rng: torch.Generator) -> dict:
    return probe_op(f"{_PROBES}.control_variate", seed=draw_seed(rng), device=dev, cls=name,
                    kwargs=kwargs, rewards=rewards)


def _pair(value, what: str) -> tuple:
    """(output, loss) of a control variate's call."""
    found = _ok(value, what)
    expect(isinstance(found, dict) and "out" in found and "loss" in found,
           f"{what} should return the pair (rewards, loss), got {kind_of(found)}")
    return found["out"], found["loss"]


def cv_centred(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of CentredReward (cell cv-centred-tests): the running average of the reward,
    and its update.

    On every device, for alpha = 0.9 (the default) and 0.6, four batches [3, 7] of rewards
    50 N(0, 1) - 200 drawn for each run: each output is the batch minus the running mean from
    before it (rtol 1e-5, atol 1e-3), which then moves to (1 - alpha) mean + alpha * batch mean,
    starting from 0; the loss is 0.
    """
    for dev in probe.devices:
        cases = {alpha: [50 * torch.randn(3, 7, generator=rng) - 200 for _ in range(4)]
                 for alpha in (None, 0.6)}
        results = probe.run([_cv_op(dev, "CentredReward", {} if alpha is None else
                                    {"alpha": alpha}, batches, rng)
                             for alpha, batches in cases.items()])
        for (alpha, batches), result in zip(cases.items(), results):
            a = 0.9 if alpha is None else alpha
            running = 0.0
            for step, (batch, found) in enumerate(zip(batches, _items(
                    _op(result, "CentredReward"), len(batches)))):
                out, loss = _pair(found, "CentredReward")
                out = _expect_shape(out, (3, 7), "CentredReward's output",
                                    "it must keep the shape [S, B] of the rewards")
                expect_close(out, batch - running, f"CentredReward(alpha={alpha}) at step {step}",
                             "subtract the running mean, then update it with the mean over all "
                             "entries of r", rtol=1e-5, atol=1e-3)
                expect(_is_zero(loss), "the loss must be 0")
                running = (1 - a) * running + a * batch.mean().item()
    return "CentredReward passes the hidden tests"


def _scaled_reward(probe: Probe, rng: torch.Generator) -> None:
    """The tests of cell cv-scaled-tests, which cv-variance-tests also asks before it measures.

    Raises:
        AssertionError: ScaledReward does not divide by the running std, floored at 1.
    """
    spreads = (20.0, 0.01, 5.0, 0.5, 0.01, 0.01)
    for dev in probe.devices:
        cases = {alpha: [s * torch.randn(4, 6, generator=rng) + 3.0 for s in spreads]
                 for alpha in (None, 0.5)}
        results = probe.run([_cv_op(dev, "ScaledReward", {} if alpha is None else
                                    {"alpha": alpha}, batches, rng)
                             for alpha, batches in cases.items()])
        for (alpha, batches), result in zip(cases.items(), results):
            a = 0.9 if alpha is None else alpha
            scale = {0: 1.0, 1: 1.0}  # the running std with an unbiased (0) and a biased (1) std
            for step, (batch, found) in enumerate(zip(batches, _items(
                    _op(result, "ScaledReward"), len(batches)))):
                out, loss = _pair(found, "ScaledReward")
                out = _expect_shape(out, (4, 6), "ScaledReward's output",
                                    "keep the shape [S, B] of the rewards")
                ok = [torch.allclose(out, batch / s, rtol=1e-4, atol=1e-5) for s in scale.values()]
                expect(any(ok), f"ScaledReward(alpha={alpha}) at step {step} divides by the wrong "
                                "number: divide by the running std from before the batch, update "
                                "it with the std over all entries, floor it at 1")
                expect(_is_zero(loss), "the loss must be 0")
                scale = {k: max((1 - a) * s + a * batch.std(correction=1 - k).item(), 1.0)
                         for k, s in scale.items()}


def cv_scaled(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of ScaledReward (cell cv-scaled-tests): the running scale of the reward,
    floored at 1.

    On every device, for alpha = 0.9 (the default) and 0.5, six batches [4, 6] of rewards
    s N(0, 1) + 3 with spreads s = 20, 0.01, 5, 0.5, 0.01, 0.01 (the noise drawn for each run,
    so that the running std falls below 1 and needs the floor): each output is the batch divided
    by the running std from before it (rtol 1e-4, atol 1e-5), which starts at 1 and then moves
    to max((1 - alpha) std + alpha * the batch's std, 1) (with or without Bessel's correction);
    the loss is 0.
    """
    _scaled_reward(probe, rng)
    return "ScaledReward passes the hidden tests"


def _self_critic(probe: Probe, rng: torch.Generator) -> None:
    """The tests of cell cv-selfcritic-tests, which cv-variance-tests also asks before it
    measures.

    Raises:
        AssertionError: SelfCritic does not subtract the reward of a fresh draw from q.
    """
    for dev in probe.devices:
        loc, scale = torch.randn(5, 3, generator=rng), torch.ones(5, 3)
        r = torch.randn(2, 5, generator=rng)
        calls = [{"r": r, "x": torch.zeros(5, 1)}, {"r": r, "x": None},
                 {"r": torch.randn(5, generator=rng), "x": None},
                 {"r": torch.zeros(4000, 5), "x": None}]
        (result,) = probe.run([probe_op(f"{_PROBES}.self_critic", seed=draw_seed(rng),
                                        device=dev, loc=loc, scale=scale, calls=calls)])
        first, second, flat, many = _items(_op(result, "SelfCritic"), 4)
        codes = []
        for found in (first, second, flat, many):
            out, loss = _pair(found, "SelfCritic")
            seen = _field(found, "codes")
            expect(isinstance(seen, list) and len(seen) > 0,
                   "SelfCritic must call r_fn on fresh draws z' ~ q(z|x)")
            codes.append((out, loss, seen[-1]))
        out, loss, z = codes[0]
        z = _expect_shape(z, (2, 5, 3), "the fresh draw for rewards [2, 5]")
        expect_close(_tensor(out, "SelfCritic's output"), r - z.sum(-1),
                     "SelfCritic's output on a [2, 5] reward",
                     "return r - r_fn(z', x): the rewards minus those of fresh draws z' ~ q")
        expect(_is_zero(loss), "SelfCritic's loss must be 0")
        expect(not torch.allclose(z, loc.expand(2, 5, 3)),
               "z' must be a random draw from q, not its mean")
        again = _tensor(codes[1][2], "the fresh draw")
        expect(not (again.shape == z.shape and torch.equal(again, z)),
               "each call must draw new codes")
        _expect_shape(codes[2][2], (5, 3), "the fresh draw for rewards [B]",
                      "the sample shape is r.shape minus q.batch_shape")
        drawn = _expect_shape(codes[3][2], (4000, 5, 3), "the fresh draw for rewards [4000, 5]")
        expect(bool(((drawn.mean(0) - loc).abs() < 0.15).all()
                    and ((drawn.std(0) - 1).abs() < 0.1).all()),
               "the fresh draws must come from q(z|x)")


def cv_selfcritic(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of SelfCritic (cell cv-selfcritic-tests): it subtracts the reward of fresh
    draws, without gradient.

    On every device, with q = N(m, I) over [3] for a batch of 5 (m drawn for each run) and
    r_fn(z, x) = sum of z: for rewards [2, 5] drawn for each run, r_fn gets codes [2, 5, 3]
    and the output is r - r_fn(z', x) (rtol 1e-4, atol 1e-5), the loss 0, z' is not q's mean,
    and a second call draws new codes; for rewards [5], codes [5, 3]; for rewards [4000, 5],
    the codes' means lie within 0.15 of m and their standard deviations within 0.1 of 1 (about
    9 standard errors). The kernel's draws are seeded for each run.
    """
    _self_critic(probe, rng)
    return "SelfCritic passes the hidden tests"


def _baseline_op(dev: str, rng: torch.Generator, fit: bool) -> tuple:
    """The request of the baseline probe, and the rewards it sends ([4, 5] twice)."""
    x = torch.randn(5, 6, generator=rng)
    rewards = [torch.randn(4, 5, generator=rng), 10 * torch.randn(4, 5, generator=rng)]
    return probe_op(f"{_PROBES}.baseline", seed=draw_seed(rng), device=dev, x=x, rewards=rewards,
                    images=torch.randn(7, 1, 3, 4, generator=rng), image_rewards=torch.zeros(2, 7),
                    fit_x=torch.randn(8, 6, generator=rng), fit_reward=5.0,
                    fit_steps=150 if fit else 0, fit_lr=0.05), rewards


def _baseline_output_and_loss(seen: dict, rewards: list, dev: str) -> None:
    """The first tests of cell cv-baseline-tests (what Baseline returns, without fitting it),
    which cv-variance-tests also asks before it measures.

    Raises:
        AssertionError: the output is not r - b(x) with b detached, or the loss not (r - b)^2.
    """
    for found in _items(_field(seen, "outputs"), 2):
        found = _ok(found, "Baseline(6, hidden_size, event_dims=1)")
        (first, second) = _items(_field(found, "calls"), 2)
        o1 = _expect_shape(_field(first, "out"), (4, 5),
                           "Baseline's output for vector data (event_dims=1)")
        o2 = _tensor(_field(second, "out"), "Baseline's output")
        l1 = _tensor(_field(first, "loss"), "Baseline's loss")
        r1, r2 = rewards
        expect(o2.shape == o1.shape and torch.allclose(r1 - o1, r2 - o2, atol=1e-5),
               "b(x) must not depend on the rewards")
        expect(torch.broadcast_shapes(l1.shape, o1.shape) == o1.shape
               and torch.allclose(l1, o1 ** 2, atol=1e-5), "the loss must be (r - b(x)) ** 2")
        expect(not _field(first, "out_grad"), "detach the baseline in the returned reward")
        expect(_field(first, "loss_grad") is True,
               "the loss (r - b(x)) ** 2 carries no gradient to b: detach b in the returned "
               "reward only, not in the loss")
        expect(all(kind == dev for kind in _field(found, "devices")),
               "the MLP must be a registered submodule")


def _baseline_checks(probe: Probe, rng: torch.Generator, fit: bool) -> None:
    ops, sent = [], []
    for dev in probe.devices:
        op, rewards = _baseline_op(dev, rng, fit)
        ops.append(op)
        sent.append(rewards)
    for dev, rewards, result in zip(probe.devices, sent, probe.run(ops)):
        seen = _op(result, "Baseline")
        _baseline_output_and_loss(seen, rewards, dev)
        if not fit:
            continue
        _expect_shape(_field(seen, "images"), (2, 7),
                      "Baseline's output for images [B, 1, 3, 4] (event_dims=3)")
        fitted = _tensor(_field(seen, "fit"), "Baseline's output after fitting")
        expect(bool((fitted.abs() < 0.5).all()),
               "after fitting a constant reward of 5, r - b(x) should be near 0: is the loss "
               "(r - b(x)) ** 2, differentiable in b?")


def cv_baseline(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of Baseline (cell cv-baseline-tests): r - b(x) without gradient, and the
    squared-error loss that trains b.

    On every device, for hidden sizes 3 and 16, Baseline(6, hidden, event_dims=1) on x [5, 6]
    and rewards r1 ~ N(0, 1) and r2 ~ N(0, 10^2) ([4, 5], drawn for each run): the outputs
    have shape [4, 5], r - output is the same for both (atol 1e-5), the loss equals output^2
    (atol 1e-5) and carries a gradient while the output does not, and .to(device) moves every
    parameter; Baseline(12, 4, p_drop=0.1) reads images [7, 1, 3, 4] (event_dims=3 by default);
    after 150 Adam steps (lr 0.05) on the mean loss of a constant reward 5 at 8 inputs drawn for
    each run, every |r - b(x)| is below 0.5. The kernel's initialisation is seeded for each run.
    """
    _baseline_checks(probe, rng, fit=True)
    return "Baseline passes the hidden tests"


def cv_chain(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of CVChain (cell cv-chain-tests): it applies its members in order and adds
    their losses.

    On every device, with rewards [2, 2] drawn for each run and the probe's members TimesThree
    (3 r, loss r) and AddOne (r + 1, loss 2): CVChain(TimesThree(), AddOne()) returns 3 r + 1 and
    the loss r + 2; built from OrderedDict(first=AddOne(), second=TimesThree()), its children are
    named first and second and it returns 3 (r + 1); it exposes its members' parameters; it hands
    the very x, q and r_fn to every member; a chain of one AddOne returns r + 1 (rtol 1e-4,
    atol 1e-5).
    """
    for dev in probe.devices:
        r = torch.randn(2, 2, generator=rng)
        (result,) = probe.run([probe_op(f"{_PROBES}.cv_chain", seed=draw_seed(rng), device=dev,
                                        r=r)])
        seen = _op(result, "CVChain")
        out, loss = _pair(_field(seen, "ordered"), "CVChain(TimesThree(), AddOne())")
        expect_close(_tensor(out, "CVChain's output"), r * 3 + 1, "CVChain(TimesThree(), AddOne())",
                     "apply the members in order")
        loss = torch.as_tensor(loss) if isinstance(loss, (int, float)) else \
            _tensor(loss, "CVChain's loss")
        expect_close(torch.zeros_like(r) + loss, r + 2.0, "the chain's loss",
                     "the sum of the members' losses")
        named = _ok(_field(seen, "named"), "CVChain(OrderedDict(...))")
        expect(_field(named, "names") == ["first", "second"],
               "with an OrderedDict, name the members by its keys")
        out, _ = _pair(named, "CVChain(OrderedDict(...))")
        expect_close(_tensor(out, "CVChain's output"), (r + 1) * 3,
                     "a chain built from an OrderedDict", "apply the members in the dict's order")
        expect(_ok(_field(seen, "parameters"), "CVChain(WithParameter(), AddOne())") == 1,
               "the chain must expose its members' parameters: register them with add_module")
        expect(_ok(_field(seen, "passed"), "CVChain(AddOne(), Spy())") is True,
               "pass x, q and r_fn on to every member")
        out, _ = _pair(_field(seen, "single"), "CVChain(AddOne())")
        expect_close(_tensor(out, "CVChain's output"), r + 1, "a chain of one")
    return "CVChain passes the hidden tests"


def _confident_image_model(rng: torch.Generator):
    """The small image model the control variates are measured on: q(z|x) of dpm_core's
    InferenceModel with a GaussianCPDNet head (hidden size 16) and p(x|z) a
    BinarizedImageModel (FFNN decoder with 32 hidden units, its last layer's weights scaled by
    8, so that the rewards spread widely), initialised from ``rng``."""
    with torch.random.fork_rng(devices=[]):
        torch.random.manual_seed(draw_seed(rng))
        decoder = functools.partial(build_ffnn_decoder, hidden_size=32)
        obs = BinarizedImageModel(1, _SIZE, _SIZE, _LATENT, decoder_type=decoder)
        q = InferenceModel(ReferenceGaussianCPDNet, _LATENT, width=_SIZE, height=_SIZE,
                           hidden_size=16)
    with torch.no_grad():
        obs.decoder[-2].weight.mul_(8.0)
    return obs, q


def _score_jacobian(q, x) -> tuple:
    """q(z|x)'s locations and scales ([B, K] each) and their Jacobian with respect to q's
    parameters, [2 B K, P] (locations first)."""
    params = list(q.parameters())
    qx = q(x)
    loc, scale = qx.base_dist.loc, qx.base_dist.scale
    flat = torch.cat([loc.flatten(), scale.flatten()])
    rows = []
    for i in range(flat.numel()):
        grads = torch.autograd.grad(flat[i], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                               for g, p in zip(grads, params)]))
    return loc.detach(), scale.detach(), torch.stack(rows)


def _gradient_variance(rewards, z, loc, scale, jacobian) -> float:
    """The total variance (sum over q's parameters) of the score-function estimates
    (1/B) sum_b r_b grad log q(z_b|x_b), one per repeat (rewards [R, B], codes [R, B, K])."""
    B = loc.shape[0]
    d_loc = (z - loc) / scale ** 2  # d log N(z | loc, scale^2) / d loc
    d_scale = (z - loc) ** 2 / scale ** 3 - 1 / scale
    weights = rewards.unsqueeze(-1) / B
    coefficients = torch.cat([(weights * d_loc).flatten(1), (weights * d_scale).flatten(1)], 1)
    return (coefficients @ jacobian).var(0).sum().item()


@statistical
def cv_variance(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the control variates' effect (cell cv-variance-tests): ScaledReward(),
    SelfCritic() and Baseline(64, 32) each at least halve the variance of the score-function
    gradient of q's parameters.

    A control variate that fails the tests of its own cell is charged there and not measured
    here; one that is not written yet (or none that passes its own tests) leaves nothing to
    measure, and fails this cell too. On the CPU, with a small image model drawn for each run
    (:func:`_confident_image_model`) and 16 binary images drawn for each run, S = 1: the judge
    draws the codes z ~ q(z|x) and the rewards log p(x|z); the student's control variate gets
    50 of them, with an Adam step (lr 0.03) on the mean of its loss after each where it has
    parameters, then 50 more, whose outputs r' make 50 estimates
    (1/B) sum_b r'_b grad log q(z_b|x_b) (the gradient of NVIL's score term), computed here;
    their total variance must be below half that of the same estimates with r' = r (the same 50
    draws). Over 200 runs of the reference the largest share left was 0.27 (ScaledReward; 0.04
    for SelfCritic and Baseline). The kernel's draws are seeded for each run.
    """
    skipped = []
    # a control variate that fails the tests of its own cell is charged there, not here again
    own_tests = {"ScaledReward": lambda: _scaled_reward(probe, rng),
                 "SelfCritic": lambda: _self_critic(probe, rng),
                 "Baseline": lambda: _baseline_checks(probe, rng, fit=False)}
    measured = []
    for name, own in own_tests.items():
        try:
            own()
            measured.append(name)
        except _NotWritten as err:
            raise AssertionError(f"{name} cannot be measured: {err}") from None
        except AssertionError:
            skipped.append(name)
    expect(bool(measured), f"none of {', '.join(skipped)} passes the tests of its own cell, so "
                           f"there is no control variate to measure here")
    obs, q = _confident_image_model(rng)
    x = _images((16,), rng)
    loc, scale, jacobian = _score_jacobian(q, x)
    with torch.no_grad():
        steps = _VARIANCE_WARM_UP + _VARIANCE_REPEATS
        z = loc + scale * torch.randn((steps, 1) + tuple(loc.shape), generator=rng)
        rewards = obs(z).log_prob(x)  # [steps, 1, B]
    warm_up, measure = rewards[:_VARIANCE_WARM_UP], rewards[_VARIANCE_WARM_UP:]
    z_measure = z[_VARIANCE_WARM_UP:, 0]
    plain = _gradient_variance(measure[:, 0], z_measure, loc, scale, jacobian)
    making = {"ScaledReward": ([], {}), "SelfCritic": ([], {}),
              "Baseline": ([64, 32], {})}
    obs_spec = {"latent": _LATENT, "size": _SIZE, "state": obs.state_dict()}
    results = probe.run([probe_op(f"{_PROBES}.cv_variance", seed=draw_seed(rng), device="cpu",
                                  cls=name, args=making[name][0], kwargs=making[name][1],
                                  loc=loc, scale=scale, x=x, obs=obs_spec, warm_up=list(warm_up),
                                  rewards=list(measure), lr=_VARIANCE_LR)
                         for name in measured])
    ratios = {}
    for name, result in zip(measured, results):
        out = _expect_shape(_field(_op(result, name), "out"), tuple(measure.shape),
                            f"{name}'s outputs", "a control variate keeps the shape of the rewards")
        expect(bool(torch.isfinite(out).all()), f"{name} returned rewards that are not finite")
        ratios[name] = _gradient_variance(out[:, 0].double(), z_measure.double(), loc.double(),
                                          scale.double(), jacobian.double()) / plain
        expect(ratios[name] < _MAX_RATIO, f"{name} leaves {ratios[name]:.2f} of the "
                                          "score-function gradient's variance; it should at "
                                          "least halve it")
    return ("the control variates measured here at least halve the variance"
            + (f" ({', '.join(skipped)}: not measured, failing the tests of their own cell)"
               if skipped else ""))


# ----------------------------------------------------------------------------- own work
#: the grader's own package in the kernel, whose parts are not course material
_PROBE_PACKAGE = "dpm_probe"


def scan_solution(cell_id: str, source: str) -> list[str]:
    """Messages for the places where a solution cell of this assignment names the grader's
    probe package, whose given parts (a Gaussian head, control variates) are no answer of the
    student's own: imports, names, attributes and strings.

    Returns:
        One message per finding (empty for a cell that does not parse).
    """
    try:
        tree = ast.parse("\n".join("" if line.lstrip().startswith(("%", "!")) else line
                                   for line in source.split("\n")))
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
        if any(_PROBE_PACKAGE in name for name in names):
            message = (f"line {node.lineno}: `{_PROBE_PACKAGE}` is the grader's probe, not course "
                       f"material: an answer built on it earns no points")
            if message not in found:
                found.append(message)
    return found


JUDGES = {
    "gaussian-cpd-tests": gaussian_cpd,
    "mog-cpd-tests": mog_cpd,
    "nvil-drl-tests": nvil_drl,
    "nvil-forward-tests": nvil_forward,
    "nvil-pathwise-tests": nvil_pathwise,
    "nvil-sfe-tests": nvil_sfe,
    "nvil-cv-hookup-tests": nvil_cv_hookup,
    "cv-centred-tests": cv_centred,
    "cv-scaled-tests": cv_scaled,
    "cv-selfcritic-tests": cv_selfcritic,
    "cv-baseline-tests": cv_baseline,
    "cv-chain-tests": cv_chain,
    "cv-variance-tests": cv_variance,
}
