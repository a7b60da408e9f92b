"""Judges of dpm3_discrete: the enumeration of a small code and the exact ELBO (Section 3), the
leave-one-out baseline (Section 4), and the relaxations and their surrogate loss (Section 5).

One judge per graded test cell. Each draws its inputs from the run's generator, has a probe of
``dpm_probe/probes/dpm3_discrete.py`` run the student's code on them in the kernel, and decides
here, with references computed on the CPU in float64: torch's distributions, closed forms, and
dpm_core's enumeration (which the kernel's dpm_core withholds).

So that one mistake costs points once, a judge never runs a student's upstream exercise: the
exact ELBO runs with a stand-in ``enumerate_codes`` that returns this judge's table of codes (in
an order drawn for the run), and the relaxed surrogate with stand-ins for ``relaxed`` and
``straight_through`` whose ``rsample`` returns draws made here, with their exact Jacobian with
respect to q's logits as the gradient. The ELBO and the surrogate are then deterministic: the
judges compare values and gradients with rtol 1e-6. The gradient judges leave to the value
judges what those grade (an exact ELBO with wrong values, straight-through draws of other
probabilities). The straight-through draws are compared with q's probabilities by binomial
standard errors (``@statistical``: a second try on fresh draws before a failure), as are the
rates at which relaxed draws exceed thresholds with their closed forms.

The test beds are ``make_testbed("bernoulli")`` (8 bits, 6 pixels) and
``make_testbed("one-hot")`` (3 variables of 4 classes) with every weight drawn here from
N(0, 1.5^2), and data x of fair coins.
"""

from __future__ import annotations

import math

import torch
import torch.distributions as td
import torch.nn.functional as F

from course.judges._common import (Probe, draw_seed, expect, expect_close, known_mistake,
                                   on_device, probe_op, reported, shaped, statistical,
                                   tensor_value)
from dpm_core.discrete import FlattenCode, code_parts
from dpm_core.discrete import enumerate_codes as reference_codes
from dpm_core.discrete import make_testbed
from dpm_probe.wire import Node, Tensor

__all__ = ["JUDGES", "enumerate_binary", "enumerate_one_hot", "exact_elbo_values",
           "exact_elbo_gradient", "leave_one_out", "relaxed", "straight_through_values",
           "straight_through_gradient", "relaxed_loss"]

_PROBES = "dpm3_discrete"
#: the names the graded cells' code looks up in the notebook
_NOTEBOOK_NAMES = ("enumerate_codes", "exact_elbo", "LeaveOneOut", "relaxed", "straight_through",
                   "BernoulliStraightThrough", "relaxed_surrogate_loss")
_MISFIT = ("the kernel's answer to the hidden tests does not fit their request: restart the "
           "kernel and run the notebook again")
#: the test beds' data size and the standard deviation of their weights
_DATA, _WEIGHT_SCALE = 6, 1.5
#: the statistical judges' tolerance, in standard errors
_NUM_SE = 5.0


# ----------------------------------------------------------------------------- what came back

def _raised(value, what: str, hint: str = ""):
    """:func:`reported` with the names of this notebook."""
    return reported(value, what, _NOTEBOOK_NAMES, hint)


def _probed(result, what: str) -> dict:
    """The dict a probe function returned (a failure when the probe could not run)."""
    result = _raised(result, what)
    expect(isinstance(result, dict), _MISFIT)
    return result


def _grads(value, what: str) -> list:
    """A probe's list of gradients as float64 tensors (None where no gradient reached)."""
    value = _raised(value, f"the gradient of {what}")
    expect(isinstance(value, list), _MISFIT)
    return [None if g is None else tensor_value(g, f"the gradient of {what}").data.double()
            for g in value]


# ----------------------------------------------------------------------------- codes

def _code(kind: str, logits: torch.Tensor) -> td.Distribution:
    """The judge's own code with these logits (the probe builds the same in the kernel)."""
    if kind == "bernoulli":
        return td.Independent(td.Bernoulli(logits=logits), 1)
    L, C = logits.shape[-2:]
    return td.TransformedDistribution(td.Independent(td.OneHotCategorical(logits=logits), 1),
                                      [FlattenCode(L, C)])


# ----------------------------------------------------------------------------- enumeration

def _companion(codes, batch: tuple, dtype, dev: str) -> tuple:
    """What the student's codes of a 2-bit code with ``batch`` say about the parts of the
    enumeration that the binary cell grades: ``(layout, kind)``, whether they are laid out
    right over the batch (shape [*, *batch, 2], the same table for every element) and whether
    they have the logits' dtype and device. Codes that are no tensor (an error, a list) say
    nothing: both are then True, and the one-hot cell judges on its own."""
    if not isinstance(codes, Tensor):
        return True, True
    layout = codes.shape[1:] == batch + (2,)
    if layout:
        flat = codes.data.reshape(codes.shape[0], -1, 2)
        layout = bool((flat == flat[:, :1]).all())
    return layout, codes.dtype == dtype and on_device(codes, dev)


def _enumeration(probe: Probe, rng: torch.Generator, kind: str, sizes: list) -> str:
    """The enumeration judge for one kind of code: ``sizes`` are (units, classes, batch,
    dtype). For one-hot codes, each case comes with a 2-bit code of the same batch and dtype,
    read by :func:`_companion`."""
    name = "bits" if kind == "bernoulli" else "one-hot variables"
    for dev in probe.devices:
        cases, ops = [], []
        for units, classes, batch, dtype in sizes:
            shape = batch + ((units,) if kind == "bernoulli" else (units, classes))
            logits = torch.randn(shape, generator=rng, dtype=torch.float64).to(dtype)
            cases.append((units, classes, batch, dtype, logits))
            ops.append(probe_op(f"{_PROBES}.enumeration", kind=kind, logits=logits, device=dev))
            if kind != "bernoulli":
                ops.append(probe_op(f"{_PROBES}.enumeration", kind="bernoulli", device=dev,
                                    logits=torch.zeros(batch + (2,), dtype=dtype)))
        results = probe.run(ops)
        step = 1 if kind == "bernoulli" else 2
        for index, (units, classes, batch, dtype, logits) in enumerate(cases):
            result = results[step * index]
            layout_ok = kind_ok = True
            if kind != "bernoulli":
                companion = results[step * index + 1]
                layout_ok, kind_ok = _companion(
                    companion.get("codes") if isinstance(companion, dict) else None,
                    batch, dtype, dev)
                if not layout_ok:
                    continue  # the layout over the batch is enumerate-binary-tests'
            K = units * (1 if kind == "bernoulli" else classes)
            N = (2 if kind == "bernoulli" else classes) ** units
            what = (f"enumerate_codes(p) for {units} {name}"
                    + ("" if kind == "bernoulli" else f" of {classes} classes")
                    + f", batch_shape {list(batch)}, {str(dtype)[6:]} on {dev}")
            seen = _probed(result, what)
            codes = _raised(seen.get("codes"), what, "" if kind == "bernoulli" else (
                f"Each of the {units} variables takes C = {classes} values "
                f"(inner.event_shape[0], not 2), one-hot of length C: [C^L, L, C] before "
                f"the transforms."))
            codes = tensor_value(codes, what)
            shape = (N,) + batch + (K,)
            if kind != "bernoulli" and codes.shape == (N,) + batch + (units, classes):
                raise AssertionError(f"{what} has shape {list(codes.shape)}: the one-hot blocks "
                                     f"are not flattened. Apply the transforms of code_parts(p) "
                                     f"(FlattenCode) to the codes: t(codes).")
            if codes.shape == (N, K) and batch:
                raise AssertionError(f"{what} has shape {list(codes.shape)}: repeat the codes "
                                     f"over p's batch, [N] + batch_shape + [K] (expand).")
            if batch and codes.shape == batch + (N, K):
                raise AssertionError(f"{what} has shape {list(codes.shape)}: the codes go in "
                                     f"front, [N] + batch_shape + [K].")
            if codes.shape[:1] != (N,) and codes.shape[1:] == shape[1:]:
                raise AssertionError(
                    f"{what} holds {codes.shape[0]} codes, expected {N} = "
                    f"{2 if kind == 'bernoulli' else classes}^{units}: every combination of "
                    f"the {units} {'bits' if kind == 'bernoulli' else 'variables'}"
                    + ("" if kind == "bernoulli" else f" (C = {classes} classes each, "
                       f"inner.event_shape[0], not 2)") + ".")
            got = shaped(codes, shape, what, "[N] + batch_shape + event_shape: the codes in "
                                             "front, repeated over the batch (expand).").data
            expect(not kind_ok or (codes.dtype == dtype and on_device(codes, dev)),
                   f"{what} is {str(codes.dtype)[6:]} on {codes.device}: make the codes in the "
                   f"dtype and on the device of p's logits (.to(inner.logits.dtype), device=...), "
                   f"so that log_prob and the decoder can read them.")
            flat = got.double().reshape(N, -1, K)
            expect(bool((flat == flat[:, :1]).all()),
                   f"{what} differs between the elements of the batch: each of them gets every "
                   f"code, the same table repeated (expand over the batch).")
            table = flat[:, 0]
            expect(bool(((table == 0) | (table == 1)).all()),
                   f"{what} holds values other than 0 and 1: a code is made of "
                   + ("bits." if kind == "bernoulli" else "one-hot vectors (F.one_hot)."))
            if kind != "bernoulli":
                blocks = table.reshape(N, units, classes).sum(-1)
                expect(bool((blocks == 1).all()),
                       f"{what} has blocks of {classes} numbers that are not one-hot: each of "
                       f"the {units} variables is one class, a block with a single 1 "
                       f"(F.one_hot of the class index).")
            distinct = torch.unique(table, dim=0).shape[0]
            expect(distinct == N,
                   f"{what} holds {distinct} distinct codes among its {N}: some code comes "
                   f"twice and another is missing. Every combination must appear exactly once "
                   f"(torch.cartesian_prod of the values of every "
                   f"{'bit' if kind == 'bernoulli' else 'variable'}).")
    return f"Hidden tests of enumerate_codes on {name} passed."


def enumerate_binary(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of enumerate_codes on bits (cell enumerate-binary-tests).

    On every device: Independent(Bernoulli) codes of K = 1, 3, 5 bits with batch shapes (),
    (3,) and (2, 3), logits N(0, 1) drawn for each run, float32 and float64: the shape
    [2^K] + batch_shape + [K], the logits' dtype and device, values in {0, 1}, the same table
    for every element of the batch, and every code exactly once (any order).
    """
    return _enumeration(probe, rng, "bernoulli", [
        (3, 2, (), torch.float32), (5, 2, (3,), torch.float32), (1, 2, (2, 3), torch.float32),
        (4, 2, (2, 3), torch.float64)])


def enumerate_one_hot(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of enumerate_codes on one-hot codes (cell enumerate-one-hot-tests).

    On every device: flattened Independent(OneHotCategorical) codes (OneHotPriorNet's and
    OneHotCPDNet's) of L variables with C classes, (L, C) = (3, 4), (2, 3), (1, 5), (4, 2),
    batch shapes (), (3,) and (2, 3), logits N(0, 1) drawn for each run, float32 and float64:
    the shape [C^L] + batch_shape + [L C], the logits' dtype and device, each block of C one-hot,
    the same table for every element of the batch, and every code exactly once (any order).
    Each case comes with a 2-bit code of its batch and dtype: where the student's codes of that
    one are laid out wrong over the batch, the case is left out, and where they have another
    dtype or device, those are not checked (what enumerate-binary-tests grades).
    """
    return _enumeration(probe, rng, "one-hot", [
        (3, 4, (), torch.float32), (2, 3, (3,), torch.float32), (1, 5, (2, 3), torch.float32),
        (4, 2, (3,), torch.float64)])


# ----------------------------------------------------------------------------- the exact ELBO

def _weights(code: str, rng: torch.Generator) -> list:
    """Weights for every parameter of ``make_testbed(code)``, N(0, 1.5^2), float64."""
    return [_WEIGHT_SCALE * torch.randn(p.shape, generator=rng, dtype=torch.float64)
            for p in make_testbed(code).parameters()]


def _testbed(code: str, weights: list):
    """The judge's copy of the test bed with these weights (float64, CPU)."""
    model = make_testbed(code)
    with torch.no_grad():
        for param, value in zip(model.parameters(), weights):
            param.copy_(value)
    return model


def _coins(batch: tuple, rng: torch.Generator) -> torch.Tensor:
    """Binary data batch + [_DATA], each pixel a fair coin, float64."""
    return torch.bernoulli(torch.full(tuple(batch) + (_DATA,), 0.5, dtype=torch.float64),
                           generator=rng)


def _elbo_case(code: str, batch: tuple, rng: torch.Generator) -> dict:
    """A test bed, data, the codes in an order drawn here, and the exact ELBO by the identity
    log p(x) - KL(q || p(z|x)) (every code enumerated) with its gradient."""
    weights = _weights(code, rng)
    model = _testbed(code, weights)
    x = _coins(batch, rng)
    qz = model.inf_model(x)
    table = reference_codes(qz).reshape(-1, *batch, qz.event_shape[0])
    N = table.shape[0]
    codes = table.reshape(N, -1, qz.event_shape[0])[:, 0]
    codes = codes[torch.randperm(N, generator=rng)]  # [N, K], in an order of this run
    z = codes.reshape((N,) + (1,) * len(batch) + (-1,)).expand((N,) + batch + (-1,))
    log_joint = model.gen_model.log_prob(z, x)  # [N, *B]
    log_q = qz.log_prob(z)  # [N, *B]
    log_px = torch.logsumexp(log_joint, 0)
    log_post = log_joint - log_px
    elbo = log_px - (log_q.exp() * (log_q - log_post)).sum(0)  # log p(x) - KL(q || p(z|x))
    grads = torch.autograd.grad(elbo.sum(), list(model.parameters()))
    return {"code": code, "batch": batch, "weights": weights, "x": x, "codes": codes,
            "elbo": elbo.detach(), "grads": [g.detach() for g in grads],
            "log_joint": log_joint.detach(), "log_q": log_q.detach(), "log_px": log_px.detach()}


def _elbo_cases(rng: torch.Generator) -> list:
    return [_elbo_case("bernoulli", (5,), rng), _elbo_case("one-hot", (4,), rng),
            _elbo_case("bernoulli", (2, 3), rng)]


def _elbo_op(case: dict, dev: str) -> dict:
    return probe_op(f"{_PROBES}.exact_elbo", code=case["code"], weights=case["weights"],
                    x=case["x"], codes=case["codes"], device=dev)


def _elbo_what(case: dict, dev: str) -> str:
    kind = "8 bits" if case["code"] == "bernoulli" else "3 one-hot variables of 4 classes"
    return (f"exact_elbo(joint, qz, x) on the test bed of {kind}, x of shape "
            f"{list(case['x'].shape)}, on {dev}")


def _elbo_mistake(got: torch.Tensor, case: dict) -> str:
    """What a wrong exact ELBO ``got`` (float64) computes instead."""
    lj, lq = case["log_joint"], case["log_q"]
    q = lq.exp()
    known = [
        ((q * lj).sum(0), "this is E_q[log p(x, z)] without the entropy term: subtract "
                          "log q(z|x) inside the sum."),
        ((lj - lq).sum(0), "the terms are not weighted by q(z|x): the ELBO is an expectation "
                           "under q, sum_z q(z|x) [log p(x, z) - log q(z|x)]."),
        ((lj - lq).mean(0), "this is the mean over the codes, a uniform weighting: weight each "
                            "code by q(z|x) and sum."),
        ((lq * (lj - lq)).sum(0), "the weights are log q(z|x): weight by q(z|x) = "
                                  "exp(log q(z|x))."),
        (case["log_px"], "this is log p(x) itself: the ELBO is log p(x) - KL(q || p(z|x)), "
                         "the expectation under q of log p(x, z) - log q(z|x)."),
        ((q * (lq - lj)).sum(0), "the sign is flipped: ELBO = sum_z q(z|x) [log p(x, z) - "
                                 "log q(z|x)]."),
        ((q * (lj - lq)).sum(0) * lj.shape[0], "the sum is N times too large: do not average "
                                              "and then multiply, sum q(z) [...] over the codes."),
    ]
    return known_mistake(got, known, rtol=1e-6, atol=1e-6,
                         default="ELBO(x) = sum_z q(z|x) [log p(x, z) - log q(z|x)], the sum over "
                                 "every code of enumerate_codes(qz), log p(x, z) = "
                                 "joint.log_prob(z, x).")


def exact_elbo_values(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of exact_elbo's values (cell exact-elbo-values-tests).

    On every device, three test beds with every weight drawn for each run (8 bits with a batch
    of 5 and of (2, 3); 3 one-hot variables of 4 classes with a batch of 4), data of fair coins:
    the ELBO has shape batch_shape and equals log p(x) - KL(q(z|x) || p(z|x)), computed here by
    enumeration (rtol 1e-6, atol 1e-8). ``enumerate_codes`` is a stand-in during the call that
    returns this judge's table of codes, in an order drawn for the run, so that a wrong
    enumeration costs nothing here.
    """
    for dev in probe.devices:
        cases = _elbo_cases(rng)
        for case, result in zip(cases, probe.run([_elbo_op(c, dev) for c in cases])):
            what = _elbo_what(case, dev)
            seen = _probed(result, what)
            value = _raised(seen.get("value"), what)
            got = tensor_value(value, what)
            batch = case["batch"]
            N = case["codes"].shape[0]
            if got.shape == (N,) + batch:
                raise AssertionError(f"{what} has one value per code, shape {list(got.shape)}: "
                                     f"sum over the codes, dimension 0.")
            if got.data.dim() == 0:
                raise AssertionError(f"{what} is one number: return one ELBO per data point, "
                                     f"shape batch_shape (sum over the codes only).")
            got = shaped(got, batch, what, "One ELBO per data point: sum over the codes "
                                           "(dimension 0) only.").data.double()
            if not torch.allclose(got, case["elbo"], rtol=1e-6, atol=1e-8):
                if not seen.get("enumerations"):
                    raise AssertionError(f"{what} differs from the exact ELBO and never calls "
                                         f"enumerate_codes: sum over every code, do not sample.")
                raise AssertionError(f"{what} differs from the exact ELBO, log p(x) - "
                                     f"KL(q || p(z|x)): {_elbo_mistake(got, case)}")
    return "Hidden tests of the exact ELBO's values passed."


def exact_elbo_gradient(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of exact_elbo's gradient (cell exact-elbo-gradient-tests).

    The cases of exact-elbo-values-tests, on every device: the gradient of the sum of the ELBO
    with respect to every parameter of p and of q equals the exact one (rtol 1e-6, atol 1e-8),
    computed here by autograd through log p(x) - KL(q || p(z|x)) over every code. A case whose
    values are wrong (what the values cell grades) is left out.
    """
    for dev in probe.devices:
        cases = _elbo_cases(rng)
        for case, result in zip(cases, probe.run([_elbo_op(c, dev) for c in cases])):
            what = _elbo_what(case, dev)
            seen = _probed(result, what)
            value = tensor_value(_raised(seen.get("value"), what), what)
            if value.shape != case["batch"] or not torch.allclose(
                    value.data.double(), case["elbo"], rtol=1e-6, atol=1e-8):
                continue  # the values are exact-elbo-values-tests'
            expect(value.requires_grad and "grads" in seen,
                   f"{what} carries no gradient: do not detach it or compute it under "
                   f"torch.no_grad(); its autograd gradient is the exact gradient.")
            grads = _grads(seen["grads"], what)
            model = _testbed(case["code"], case["weights"])
            names = [n for n, _ in model.named_parameters()]
            inf = [i for i, n in enumerate(names) if n.startswith("inf_model")]
            gen = [i for i, n in enumerate(names) if n.startswith("gen_model")]
            for part, where in (("q(z|x)", inf), ("p(z) p(x|z)", gen)):
                expect(any(grads[i] is not None and bool((grads[i] != 0).any()) for i in where),
                       f"the gradient of {what} does not reach the parameters of {part}: "
                       + ("keep q(z|x) = exp(log q(z|x)) on the graph, in the weights and in "
                          "the entropy term." if part == "q(z|x)" else
                          "keep log p(x, z) = joint.log_prob(z, x) on the graph."))
            for i, (name, exact) in enumerate(zip(names, case["grads"])):
                g = torch.zeros_like(exact) if grads[i] is None else grads[i]
                if torch.allclose(g, exact, rtol=1e-6, atol=1e-8):
                    continue
                if name.startswith("inf_model"):
                    hint = ("q's parameters get the wrong gradient: the ELBO depends on q through "
                            "the weights q(z|x) and through -log q(z|x); detach neither (the "
                            "weights must not be q(z|x).detach()).")
                else:
                    hint = ("p's parameters get the wrong gradient: log p(x, z) = "
                            "joint.log_prob(z, x) must stay on the graph.")
                raise AssertionError(f"the gradient of {what} for {name} differs from the exact "
                                     f"gradient by up to {(g - exact).abs().max().item():.3g}: "
                                     f"{hint}")
    return "Hidden tests of the exact ELBO's gradient passed."


# ----------------------------------------------------------------------------- leave-one-out

def _loo_mistake(out: torch.Tensor, r: torch.Tensor) -> str:
    """What a wrong output ``out`` of LeaveOneOut on rewards r [S, B] computes."""
    S, B = r.shape
    others = (r.sum(0, keepdim=True) - r) / (S - 1)
    known = [
        (r - r.mean(0, keepdim=True), "the baseline is the mean of all S rewards, the own one "
                                      "included: b_s must leave r_s out, (sum - r_s) / (S - 1), "
                                      "or it depends on z_s and biases the estimator."),
        (r - (r.sum(0, keepdim=True) - r) / S, "the baseline divides by S: the mean of the "
                                               "other S - 1 rewards divides by S - 1."),
        (r + others, "the sign is wrong: return r - b, the reward minus its baseline."),
        (others - r, "the sign is wrong: return r - b, the reward minus its baseline."),
        (others, "this is the baseline b itself: return r - b."),
        (r - (r.sum(1, keepdim=True) - r) / (B - 1), "the baseline is taken over the batch "
                                                     "dimension (1): it is the mean over the other "
                                                     "draws, dimension 0 of r [S, B]."),
        (r - r.mean(1, keepdim=True), "the baseline is taken over the batch dimension (1): it "
                                      "is the mean over the other draws, dimension 0 of r [S, B]."),
        (r - r.mean(), "the baseline is the mean over the whole tensor: it is the mean of the "
                       "other draws of the same data point, dimension 0 of r [S, B]."),
    ]
    return known_mistake(out, known, rtol=1e-5, atol=1e-4,
                         default="b_s = (sum_j r_j - r_s) / (S - 1) over dimension 0 of r [S, B], "
                                 "and the output is r - b.")


def leave_one_out(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of LeaveOneOut (cell leave-one-out-tests).

    On every device: LeaveOneOut() is a VarianceReduction without parameters; called as NVIL
    calls it on rewards r [S, B] (S = 2, 3, 5, 8 with B = 4, 7, 3, 5; 10 N(0, 1) - 50 drawn for
    each run), it returns (r - b, loss) with b_s the mean of the other S - 1 rewards of the same
    data point (rtol 1e-5, atol 1e-4) and the loss zeros of r's shape; on rewards [1, 4] it
    raises a ValueError.
    """
    sizes = ((2, 4), (3, 7), (5, 3), (8, 5))
    for dev in probe.devices:
        rewards = [10 * torch.randn(S, B, generator=rng) - 50 for S, B in sizes]
        single = torch.randn(1, 4, generator=rng)
        (result,) = probe.run([probe_op(f"{_PROBES}.leave_one_out", rewards=rewards + [single],
                                        device=dev)])
        seen = _probed(result, "LeaveOneOut")
        _raised(seen.get("built"), "LeaveOneOut()")
        expect(seen.get("is_control_variate") is True,
               f"LeaveOneOut() is a {seen.get('built')}, not a VarianceReduction: keep the class "
               f"of the exercise, class LeaveOneOut(VarianceReduction).")
        expect(seen.get("parameters") == 0,
               f"LeaveOneOut has {seen.get('parameters')} parameters: the leave-one-out baseline "
               f"has nothing to train.")
        calls = seen.get("calls")
        expect(isinstance(calls, list) and len(calls) == len(rewards) + 1, _MISFIT)
        for r, found in zip(rewards, calls):
            S, B = r.shape
            what = f"LeaveOneOut()(r) for rewards r of shape [{S}, {B}] on {dev}"
            found = _raised(found, what)
            expect(isinstance(found, dict) and "out" in found and "loss" in found,
                   f"{what} should return the pair (r - b, loss), like every VarianceReduction")
            out = shaped(found["out"], (S, B), f"the first output of {what}",
                         "Keep the shape [S, B] of the rewards: one r_s - b_s per draw.").data
            others = (r.sum(0, keepdim=True) - r) / (S - 1)
            if not torch.allclose(out.float(), r - others, rtol=1e-5, atol=1e-4):
                raise AssertionError(f"the first output of {what} is not r - b with b_s the mean "
                                     f"of the other rewards: {_loo_mistake(out.float(), r)}")
            loss = found["loss"]
            expect(isinstance(loss, Tensor) and loss.type == "Tensor" and loss.shape == (S, B)
                   and bool((loss.data == 0).all()),
                   f"the loss of {what} should be zeros of the shape of r, [{S}, {B}] "
                   f"(torch.zeros_like(r)): this control variate has nothing to train, got "
                   + (f"shape {list(loss.shape)}" if isinstance(loss, Tensor) else
                      type(loss).__name__ if not isinstance(loss, Node) else loss.type)
                   + (" with nonzero values" if isinstance(loss, Tensor) and
                      bool((loss.data != 0).any()) else "") + ".")
        single = calls[-1]
        kinds = single.get("kinds", []) if isinstance(single, dict) else []
        raised = isinstance(single, dict) and "raised" in single
        expect(raised and "ValueError" in kinds,
               f"LeaveOneOut()(r) for rewards of shape [1, 4] (one draw per data point) on {dev} "
               + (f"raised {single['raised']}" if raised else "returned")
               + ": with S = 1 there is no other draw; raise a ValueError that says so "
                 "(check r.shape[0] < 2 first).")
    return "Hidden tests of LeaveOneOut passed."


# ----------------------------------------------------------------------------- relaxed

def _relaxed_reference(kind: str, logits: torch.Tensor, tau: float) -> td.Distribution:
    t = torch.tensor(tau, dtype=logits.dtype)
    if kind == "bernoulli":
        return td.Independent(td.RelaxedBernoulli(t, logits=logits), 1)
    L, C = logits.shape[-2:]
    return td.TransformedDistribution(
        td.Independent(td.RelaxedOneHotCategorical(t, logits=logits), 1), [FlattenCode(L, C)])


def _relaxed_points(kind: str, logits: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Points well inside the open cube or simplices: [*B, K]."""
    if kind == "bernoulli":
        return 0.05 + 0.9 * torch.rand(logits.shape, generator=rng, dtype=logits.dtype)
    p = torch.softmax(torch.randn(logits.shape, generator=rng, dtype=logits.dtype), -1)
    return p.reshape(*logits.shape[:-2], -1)


def _relaxed_mistake(got, kind, logits, tau, points, structure) -> str:
    """What a wrong relaxed() computes: its log_prob ``got`` of ``points``."""
    if kind != "bernoulli" and "RelaxedBernoulli" in structure:
        return ("it is a RelaxedBernoulli for a one-hot code: each variable is a categorical, "
                "relaxed by td.RelaxedOneHotCategorical(temperature, logits=inner.logits).")
    if kind == "bernoulli" and "RelaxedOneHotCategorical" in structure:
        return ("it is a RelaxedOneHotCategorical for a binary code: each bit is relaxed by "
                "td.RelaxedBernoulli(temperature, logits=inner.logits).")
    probs = torch.sigmoid(logits) if kind == "bernoulli" else torch.softmax(logits, -1)
    known = [
        (_relaxed_reference(kind, probs, tau).log_prob(points),
         "the probabilities are passed as logits: pass logits=inner.logits."),
        (_relaxed_reference(kind, logits, 1 / tau).log_prob(points),
         "the temperature is inverted: pass tau itself, td.Relaxed...(temperature, logits=...)."),
        (_relaxed_reference(kind, logits, 1.0).log_prob(points),
         "the temperature is ignored (tau = 1): pass the temperature argument."),
    ]
    return known_mistake(got, known, rtol=1e-4, atol=1e-4,
                         default="it should be td.RelaxedBernoulli (bits) or "
                                 "td.RelaxedOneHotCategorical (one-hot variables) with q's "
                                 "logits and the temperature, rebuilt with q's Independent and "
                                 "transforms.")


def _exceed_rates(kind: str, draws: torch.Tensor, logits: torch.Tensor, tau: float) -> tuple:
    """How often relaxed draws exceed thresholds, and how often they should.

    A Concrete bit is z = sigmoid((l + L) / tau) with L standard logistic, so
    P(logit(z) > k) = sigmoid(l - tau k); for a one-hot variable, log z_c - log z_0 =
    (l_c - l_0 + g_c - g_0) / tau with g_c - g_0 standard logistic, so
    P(log z_c - log z_0 > k) = sigmoid(l_c - l_0 - tau k). With k = -1, 0, 1: the observed
    and expected rates, ``[3, *B, units]`` each (float64)."""
    if kind == "bernoulli":
        y, a = torch.logit(draws), logits
    else:
        L, C = logits.shape[-2:]
        log_z = draws.reshape(*draws.shape[:-1], L, C).log()
        y, a = log_z[..., 1:] - log_z[..., :1], logits[..., 1:] - logits[..., :1]
        y, a = y.flatten(-2), a.flatten(-2)
    ks = (-1.0, 0.0, 1.0)
    seen = torch.stack([(y > k).double().mean(0) for k in ks])
    expected = torch.stack([torch.sigmoid(a - tau * k) for k in ks])
    return seen, expected


@statistical
def relaxed(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of relaxed (cell concrete-tests).

    On every device, for 6 bits with batch (4,), 3 one-hot variables of 4 classes with batch
    (2, 3) (float32) and 5 bits with batch () (float64), logits 1.5 N(0, 1) and a temperature in
    [0.3, 2] drawn for each run: the relaxation has q's batch_shape and event_shape [K] and
    rsample (torch's own LogitRelaxedBernoulli says has_rsample=False, so the flag is not
    read); its log_prob of points inside the cube or the simplices (drawn here) equals that of
    torch's RelaxedBernoulli / RelaxedOneHotCategorical with the same logits and temperature
    (rtol 1e-4, atol 1e-4); 2000 draws of rsample lie inside the cube or simplices and exceed the
    thresholds of :func:`_exceed_rates` as often as a Concrete draw's (within 5 binomial
    standard errors plus 0.005, per unit), and sum(w * z) for weights drawn here sends a
    gradient to the logits.
    """
    S = 2000
    for dev in probe.devices:
        cases = []
        for kind, shape, dtype in (("bernoulli", (4, 6), torch.float32),
                                   ("one-hot", (2, 3, 3, 4), torch.float32),
                                   ("bernoulli", (5,), torch.float64)):
            logits = (1.5 * torch.randn(shape, generator=rng, dtype=torch.float64)).to(dtype)
            tau = float(0.3 + 1.7 * torch.rand((), generator=rng))
            batch = shape[:-1] if kind == "bernoulli" else shape[:-2]
            K = shape[-1] if kind == "bernoulli" else shape[-1] * shape[-2]
            weights = torch.randn((S,) + batch + (K,), generator=rng).to(dtype)
            cases.append((kind, logits, tau, batch, K, _relaxed_points(kind, logits, rng),
                          weights))
        results = probe.run([probe_op(f"{_PROBES}.relaxed", seed=draw_seed(rng), kind=kind,
                                      logits=logits, temperature=tau, points=points,
                                      weights=weights, num_samples=S, device=dev)
                             for kind, logits, tau, _, _, points, weights in cases])
        for (kind, logits, tau, batch, K, points, _), result in zip(cases, results):
            name = "bits" if kind == "bernoulli" else "one-hot variables"
            what = (f"relaxed(q, {tau:.3f}) for {K if kind == 'bernoulli' else 3} {name} with "
                    f"batch_shape {list(batch)}, {str(logits.dtype)[6:]} on {dev}")
            seen = _probed(result, what)
            d = _raised(seen.get("dist"), what, "The torch classes want the temperature as a "
                                                "tensor: torch.tensor(temperature, dtype=..., "
                                                "device=...).")
            expect(isinstance(d, Node) and d.kind == "dist",
                   f"{what} should return a torch distribution, got "
                   f"{d.type if isinstance(d, Node) else type(d).__name__}")
            structure = seen.get("structure") or []
            if tuple(d.event_shape) != (K,):
                raise AssertionError(
                    f"{what} has event_shape {list(d.event_shape)}, expected [{K}]: keep q's "
                    f"td.Independent and its transforms (FlattenCode for a one-hot code): "
                    f"rebuild_code(new_inner, ndims, transforms).")
            expect(tuple(d.batch_shape) == batch,
                   f"{what} has batch_shape {list(d.batch_shape)}, expected {list(batch)}: "
                   f"rebuild it with q's ndims, rebuild_code(new_inner, ndims, transforms).")
            found = seen.get("draws")
            if isinstance(found, dict) and found.get("raised") == "NotImplementedError":
                raise AssertionError(f"{what} has no rsample: the relaxation is "
                                     f"td.RelaxedBernoulli or td.RelaxedOneHotCategorical, whose "
                                     f"draws are differentiable.")
            log_prob = _raised(seen.get("log_prob"), f"log_prob of {what}",
                               "The torch classes want the temperature as a tensor: "
                               "torch.tensor(temperature, dtype=..., device=...).")
            got = shaped(log_prob, batch, f"log_prob of {what}").data.double()
            ref = _relaxed_reference(kind, logits.double(), tau).log_prob(points.double())
            if not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
                raise AssertionError(f"log_prob of {what} differs from the Concrete "
                                     f"relaxation's: " + _relaxed_mistake(
                                         got, kind, logits.double(), tau, points.double(),
                                         structure))
            draws = _raised(seen.get("draws"), f"rsample of {what}")
            draws = shaped(draws, (S,) + batch + (K,), f"rsample((2000,)) of {what}").data.double()
            inside = bool(((draws >= 0) & (draws <= 1)).all())
            if kind != "bernoulli":
                inside &= bool(((draws.reshape(S, *batch, 3, 4).sum(-1) - 1).abs() < 1e-4).all())
            expect(inside, f"the draws of {what} are not inside the cube (bits) or the "
                           f"simplices (one-hot variables).")
            seen_rates, rates = _exceed_rates(kind, draws, logits.double(), tau)
            se = (rates * (1 - rates) / S).sqrt()
            expect(bool(((seen_rates - rates).abs() <= _NUM_SE * se + 0.005).all()),
                   f"the draws of {what} do not follow the relaxation: how often their logit "
                   f"exceeds -1, 0 and 1 is up to {(seen_rates - rates).abs().max().item():.3f} "
                   f"away from a Concrete draw's, P(logit z > k) = sigmoid(l - tau k). Use "
                   f"the rsample of torch's relaxed distributions.")
            grad = seen.get("grad")
            expect(grad is not None and bool((tensor_value(_raised(
                grad, f"the gradient of {what}"), what).data != 0).any()),
                f"the draws of {what} send no gradient to q's logits: use rsample of the "
                f"relaxed distribution built on inner.logits (not detached).")
    return "Hidden tests of the Concrete relaxation passed."


# ----------------------------------------------------------------------------- straight-through

def _st_cases(rng: torch.Generator, batch_bits=(5,), batch_cats=(2, 2)) -> list:
    """(kind, logits, batch, K) of a binary and a one-hot code, logits 1.5 N(0, 1)."""
    return [("bernoulli", 1.5 * torch.randn(batch_bits + (6,), generator=rng), batch_bits, 6),
            ("one-hot", 1.5 * torch.randn(batch_cats + (3, 4), generator=rng), batch_cats, 12)]


def _st_what(kind, batch, dev) -> str:
    code = "6 bits" if kind == "bernoulli" else "3 one-hot variables of 4 classes"
    return f"straight_through(q) for {code} with batch_shape {list(batch)} on {dev}"


@statistical
def straight_through_values(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of straight_through's values (cell straight-through-values-tests).

    On every device, a code of 6 bits with batch (5,) and one of 3 one-hot variables of 4
    classes with batch (2, 2), logits 1.5 N(0, 1) drawn for each run, float32, the kernel's
    generators seeded for each run: straight_through(q) keeps q's shapes; 4000 draws of
    rsample are hard codes (bits, or one-hot blocks), each unit's frequency within 5 binomial
    standard errors (plus 0.005) of q's probability; log_prob of codes drawn here and the KL
    from a code of other logits equal q's (rtol 1e-5, atol 1e-5).
    """
    S = 4000
    for dev in probe.devices:
        cases = _st_cases(rng)
        ops, extra = [], []
        for kind, logits, batch, K in cases:
            q = _code(kind, logits)
            points = _draw(q, rng)
            prior = 1.5 * torch.randn(logits.shape, generator=rng)
            extra.append((points, prior))
            ops.append(probe_op(f"{_PROBES}.straight_through_values", seed=draw_seed(rng),
                                kind=kind, logits=logits, prior_logits=prior, points=points,
                                num_samples=S, device=dev))
        for (kind, logits, batch, K), (points, prior), result in zip(cases, extra,
                                                                    probe.run(ops)):
            what = _st_what(kind, batch, dev)
            seen = _probed(result, what)
            d = _raised(seen.get("dist"), what)
            expect(isinstance(d, Node) and d.kind == "dist",
                   f"{what} should return a torch distribution, got "
                   f"{d.type if isinstance(d, Node) else type(d).__name__}")
            expect(tuple(d.batch_shape) == batch and tuple(d.event_shape) == (K,),
                   f"{what} has batch_shape {list(d.batch_shape)} and event_shape "
                   f"{list(d.event_shape)}, expected {list(batch)} and [{K}]: keep q's "
                   f"Independent and transforms, rebuild_code(new_inner, ndims, transforms).")
            draws = _raised(seen.get("draws"), f"rsample of {what}")
            draws = shaped(draws, (S,) + batch + (K,), f"rsample((4000,)) of {what}").data.double()
            # a straight-through value is b + (p - p) up to rounding
            hard = bool(((draws - draws.round()).abs() < 1e-5).all()
                        and ((draws.round() == 0) | (draws.round() == 1)).all())
            draws = draws.round()
            expect(hard, f"the draws of {what} are not hard codes (values other than 0 and 1): "
                         f"the forward value is the discrete draw b; only the gradient goes "
                         f"through the probabilities, b + (p - p.detach()).")
            q = _code(kind, logits.double())
            if kind != "bernoulli":
                expect(bool((draws.reshape(S, *batch, 3, 4).sum(-1) == 1).all()),
                       f"the draws of {what} are not one-hot in every block.")
            probs = torch.sigmoid(logits.double()) if kind == "bernoulli" else \
                torch.softmax(logits.double(), -1).reshape(*batch, K)
            freq = draws.mean(0)
            se = (probs * (1 - probs) / S).sqrt()
            if not bool(((freq - probs).abs() <= _NUM_SE * se + 0.005).all()):
                squashed = torch.sigmoid(probs) if kind == "bernoulli" else \
                    torch.softmax(probs.reshape(*batch, 3, 4), -1).reshape(*batch, K)
                squashed_se = (squashed * (1 - squashed) / S).sqrt()
                if bool(((freq - squashed).abs() <= _NUM_SE * squashed_se + 0.005).all()):
                    hint = "the probabilities are passed as logits: pass logits=inner.logits."
                else:
                    hint = "draw b from q itself (self.sample(sample_shape)), with q's logits."
                raise AssertionError(f"the draws of {what} have unit frequencies up to "
                                     f"{(freq - probs).abs().max().item():.3f} away from q's "
                                     f"probabilities: {hint}")
            log_prob = shaped(_raised(seen.get("log_prob"), f"log_prob of {what}"), batch,
                              f"log_prob of {what}").data.double()
            expect_close(log_prob, q.log_prob(points.double()), f"log_prob of {what}",
                         "straight_through changes rsample only: log_prob stays q's (same "
                         "logits, the same Independent and transforms).", rtol=1e-5, atol=1e-5)
            kl = shaped(_raised(seen.get("kl"), f"td.kl_divergence({what}, p)"), batch,
                        f"td.kl_divergence(straight_through(q), p)").data.double()
            expect_close(kl, td.kl_divergence(q, _code(kind, prior.double())),
                         f"td.kl_divergence({what}, p)",
                         "straight_through changes rsample only: the KL stays q's.",
                         rtol=1e-5, atol=1e-5)
    return "Hidden tests of the straight-through draws passed."


def _draw(q: td.Distribution, rng: torch.Generator) -> torch.Tensor:
    """A code drawn from q with the judge's generator (a uniform threshold per unit)."""
    inner = code_parts(q)[0]
    if isinstance(inner, td.Bernoulli):
        u = torch.rand(inner.probs.shape, generator=rng)
        return (u < inner.probs).to(inner.probs.dtype)
    probs = inner.probs  # [*B, L, C]
    index = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=rng)
    codes = F.one_hot(index.squeeze(-1), probs.shape[-1]).to(probs.dtype)
    return codes.reshape(*probs.shape[:-2], -1)


def _probs_jacobian(kind: str, probs: torch.Tensor) -> torch.Tensor:
    """d pi / d l in flattened form ``[*B, K, K]``: diag(pi (1 - pi)) for bits, block-diagonal
    diag(pi) - pi pi^T per one-hot variable (``probs`` [*B, K] or [*B, L, C])."""
    if kind == "bernoulli":
        return torch.diag_embed(probs * (1 - probs))
    L, C = probs.shape[-2:]
    blocks = torch.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)  # [*B, L, C, C]
    J = torch.zeros(*probs.shape[:-2], L * C, L * C, dtype=probs.dtype)
    for v in range(L):
        J[..., v * C:(v + 1) * C, v * C:(v + 1) * C] = blocks[..., v, :, :]
    return J


def straight_through_gradient(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of straight_through's gradient (cell straight-through-gradient-tests).

    On every device, a code of 6 bits with batch (5,) and one of 3 one-hot variables of 4
    classes with batch (2, 2), logits 1.5 N(0, 1) and weights w [S, *B, K] (S = 7) drawn for
    each run, float64: the gradient of sum(w * z), z = straight_through(q).rsample((7,)), with
    respect to q's logits equals sum_s w_s d pi / d l, pi = q's probabilities (rtol 1e-6,
    atol 1e-8). Where the student's distribution holds other probabilities than q's (what the
    values cell grades), the gradient is only checked to exist.
    """
    S = 7
    for dev in probe.devices:
        cases = _st_cases(rng)
        weights = [torch.randn((S,) + batch + (K,), generator=rng, dtype=torch.float64)
                   for _, _, batch, K in cases]
        results = probe.run([probe_op(f"{_PROBES}.straight_through_gradient", seed=draw_seed(rng),
                                      kind=kind, logits=logits.double(), weights=w,
                                      num_samples=S, device=dev)
                             for (kind, logits, _, _), w in zip(cases, weights)])
        for (kind, logits, batch, K), w, result in zip(cases, weights, results):
            what = (f"the gradient of sum(w * z) with respect to q's logits, z = "
                    f"{_st_what(kind, batch, dev)}.rsample((7,))")
            seen = _probed(result, what)
            draws = _raised(seen.get("draws"), what)
            if not (isinstance(draws, Tensor) and draws.shape == tuple(w.shape)):
                continue  # the draws' shapes are straight-through-values-tests'
            expect("grad" in seen and seen["grad"] is not None,
                   f"{what}: the draws carry no gradient to the logits. Straight-through "
                   f"returns b + (p - p.detach()) with p = self.probs: the value is b, the "
                   f"gradient that of p.")
            grad = tensor_value(_raised(seen["grad"], what), what).data.double()
            logits = logits.double()
            probs = torch.sigmoid(logits) if kind == "bernoulli" else torch.softmax(logits, -1)
            theirs = seen.get("probs")
            if not (isinstance(theirs, Tensor) and tuple(theirs.shape) == tuple(probs.shape)
                    and torch.allclose(theirs.data.double(), probs, rtol=1e-6, atol=1e-8)):
                continue  # other probabilities than q's: the values cell's
            J = _probs_jacobian(kind, probs)  # [*B, K, K]: d pi_k / d l_j
            exact = (w.sum(0).unsqueeze(-1) * J).sum(-2).reshape(logits.shape)
            grad = grad.reshape(logits.shape)
            if torch.allclose(grad, exact, rtol=1e-6, atol=1e-8):
                continue
            known = [
                (torch.zeros_like(exact), "it is zero: the draws are detached from the "
                                          "probabilities; return b + (p - p.detach())."),
                (-exact, "the sign is flipped: b + (p - p.detach()), not b - (p - p.detach())."),
                (w.sum(0).reshape(logits.shape), "it is the gradient of the logits themselves: "
                                                 "the straight-through gradient goes through "
                                                 "the probabilities, b + (p - p.detach()) with "
                                                 "p = self.probs."),
            ]
            hint = known_mistake(grad, known, rtol=1e-5, atol=1e-7,
                                 default="the draws should pass the gradient of q's "
                                         "probabilities: b + (p - p.detach()), p = self.probs.")
            raise AssertionError(f"{what} differs from sum_s w_s d pi / d l by up to "
                                 f"{(grad - exact).abs().max().item():.3g}: {hint}")
    return "Hidden tests of the straight-through gradient passed."


# ----------------------------------------------------------------------------- the relaxed loss

def _loss_case(code: str, relaxation: str, rng: torch.Generator) -> dict:
    """A test bed, data [5, 6], S = 3 draws of the relaxation (or hard codes with the
    straight-through Jacobian) made here, the loss and its gradient computed with them."""
    B, S = 5, 3
    weights = _weights(code, rng)
    model = _testbed(code, weights)
    x = _coins((B,), rng)
    qz = model.inf_model(x)
    inner = code_parts(qz)[0]
    logits = inner.logits.detach()
    tau = float(0.3 + 1.2 * torch.rand((), generator=rng)) if relaxation == "concrete" else None
    if relaxation == "concrete":
        u = torch.rand((S,) + logits.shape, generator=rng, dtype=torch.float64)
        u = u.clamp(1e-9, 1 - 1e-9)
        if code == "bernoulli":
            v = torch.sigmoid((logits + u.log() - (-u).log1p()) / tau)
            J = torch.diag_embed(v * (1 - v) / tau)
        else:
            v = torch.softmax((logits - (-u.log()).log()) / tau, -1)  # [S, B, L, C]
            J = _probs_jacobian("one-hot", v) / tau
    else:
        probs = inner.probs.detach().expand((S,) + logits.shape)
        v = _draw(_code(code, inner.logits.detach().expand((S,) + logits.shape)), rng)
        J = _probs_jacobian(code, probs)
    values = v.reshape(S, B, -1)  # [S, B, K]
    return {"code": code, "relaxation": relaxation, "tau": tau, "weights": weights, "x": x,
            "values": values.detach(), "jacobian": J.reshape(S, B, values.shape[-1], -1).detach(),
            "S": S, "B": B}


def _loss_reference(case: dict, detach_draws: bool = False) -> tuple:
    """The loss of the case, its gradients (``model.parameters()`` order), and the parts that
    known mistakes recombine: ``(loss, grads, parts)``."""
    model = _testbed(case["code"], case["weights"])
    x = case["x"]
    qz = model.inf_model(x)
    pz = model.gen_model.prior(qz.batch_shape)
    l = code_parts(qz)[0].logits.reshape(case["B"], -1)
    z = case["values"] + (case["jacobian"] * (l - l.detach()).unsqueeze(-2)).sum(-1)
    if detach_draws:
        z = z.detach()
    log_px_z = model.gen_model.obs_model(z).log_prob(x)  # [S, B]
    kl = td.kl_divergence(qz, pz)  # [B]
    loss = -(log_px_z.mean(0) - kl).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(model.parameters(), grads)]
    return loss.detach(), grads, {"log_px_z": log_px_z.detach(), "kl": kl.detach()}


def _loss_mistake(got: torch.Tensor, parts: dict) -> str:
    d, kl = parts["log_px_z"], parts["kl"]
    known = [
        (-d.mean(), "the KL term is missing: the loss is -(1/S sum_s log p(x|z_s) - KL(q || p)), "
                    "averaged over the batch."),
        (-(d.mean(0) + kl).mean(), "the KL has the wrong sign: the loss is minus the ELBO, "
                                   "-(log p(x|z) - KL)."),
        ((d.mean(0) - kl).mean(), "the sign is flipped: return minus the relaxed ELBO, a loss to "
                                  "minimise."),
        (-(d.sum(0) - kl).mean(), "the distortion is summed over the S draws: average it, "
                                  "log_px_z.mean(0)."),
        (-(d.mean(0) - kl).sum(), "the loss is summed over the batch: average it, .mean()."),
    ]
    return known_mistake(got, known, rtol=1e-6, atol=1e-8,
                         default="-1/B sum_b [1/S sum_s log p(x_b | z_s) - KL(q(z|x_b) || p(z))], "
                                 "with td.kl_divergence(qz, pz), the exact discrete KL.")


def relaxed_loss(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of relaxed_surrogate_loss (cell relaxed-loss-tests).

    On every device, both test beds (8 bits; 3 one-hot variables of 4 classes) with every
    weight drawn for each run, x [5, 6] of fair coins, S = 3, for "concrete" (tau in
    [0.3, 1.5] drawn for each run) and "straight-through": ``relaxed`` and
    ``straight_through`` are stand-ins during the call, whose rsample returns 3 draws made here
    (relaxed draws from noise of this run, or hard codes), with the exact Jacobian with respect
    to q's logits as their gradient. Checked: the stand-in that the relaxation names is called
    once, on q(z|x), with the temperature; the loss is a number equal to
    -1/B sum_b [1/S sum_s log p(x_b | z_s) - KL(q(z|x_b) || p(z))] with the exact discrete KL
    (rtol 1e-6); its gradient for every parameter of p and q equals the one computed here
    (rtol 1e-6, atol 1e-8).
    """
    for dev in probe.devices:
        cases = [_loss_case(code, relaxation, rng) for code in ("bernoulli", "one-hot")
                 for relaxation in ("concrete", "straight-through")]
        results = probe.run([probe_op(
            f"{_PROBES}.relaxed_loss", code=c["code"], weights=c["weights"], x=c["x"],
            relaxation=c["relaxation"], temperature=c["tau"], sample_size=c["S"],
            values=c["values"], jacobian=c["jacobian"], device=dev) for c in cases])
        for case, result in zip(cases, results):
            kind = "8 bits" if case["code"] == "bernoulli" else "3 one-hot variables of 4 classes"
            args = ("'concrete', " + f"{case['tau']:.3f}" if case["relaxation"] == "concrete"
                    else "'straight-through', None")
            what = (f"relaxed_surrogate_loss(model, x, {args}, 3) on the test bed of {kind} "
                    f"on {dev}")
            seen = _probed(result, what)
            value = _raised(seen.get("value"), what)
            calls = seen.get("calls") or []
            wanted = "relaxed" if case["relaxation"] == "concrete" else "straight_through"
            names = [c.get("fn") for c in calls if isinstance(c, dict)]
            expect(wanted in names,
                   f"{what} never calls {wanted}(...): the draws come from "
                   + ("relaxed(qz, temperature).rsample((S,)) for 'concrete'."
                      if wanted == "relaxed" else
                      "straight_through(qz).rsample((S,)) for 'straight-through'.")
                   + (f" It called {', '.join(sorted(set(names)))}." if names else ""))
            model = _testbed(case["code"], case["weights"])
            logits = code_parts(model.inf_model(case["x"]))[0].logits.detach().reshape(
                case["B"], -1)
            for call in calls:
                if call.get("fn") != wanted:
                    continue
                got = call.get("logits")
                expect(isinstance(got, Tensor) and got.shape == tuple(logits.shape)
                       and torch.allclose(got.data.double(), logits, rtol=1e-8, atol=1e-8),
                       f"{what} calls {wanted} on another distribution than q(z|x) "
                       f"(model.inf_model(x)): relax q, not the prior.")
                if wanted == "relaxed":
                    t = call.get("temperature")
                    expect(isinstance(t, (int, float)) and math.isclose(t, case["tau"],
                                                                        rel_tol=1e-9),
                           f"{what} calls relaxed(qz, {t}): pass the temperature argument "
                           f"as it is, relaxed(qz, temperature).")
            got = tensor_value(value, what)
            expect(got.data.numel() == 1,
                   f"{what} has shape {list(got.shape)}: the loss is one number, the mean over "
                   f"the batch (and the draws).")
            loss, grads, parts = _loss_reference(case)
            got = got.data.double().reshape(())
            if not torch.allclose(got, loss, rtol=1e-6, atol=1e-8):
                raise AssertionError(f"{what} is {got.item():.6g}, expected {loss.item():.6g}: "
                                     f"{_loss_mistake(got, parts)}")
            expect("grads" in seen,
                   f"{what} carries no gradient: keep it on the graph.")
            theirs = _grads(seen["grads"], what)
            _, frozen, _ = _loss_reference(case, detach_draws=True)
            names = [n for n, _ in model.named_parameters()]
            for name, g, exact, still in zip(names, theirs, grads, frozen):
                g = torch.zeros_like(exact) if g is None else g
                if torch.allclose(g, exact, rtol=1e-6, atol=1e-8):
                    continue
                if torch.allclose(g, still, rtol=1e-6, atol=1e-8):
                    hint = ("the draws pass no gradient to q: draw them with rsample (not "
                            "sample), without detaching them.")
                else:
                    hint = ("the gradient goes through the draws z~ (rsample) in the distortion "
                            "and through the exact KL(q || p) = td.kl_divergence(qz, pz).")
                raise AssertionError(f"the gradient of {what} for {name} differs from the "
                                     f"relaxed estimate by up to "
                                     f"{(g - exact).abs().max().item():.3g}: {hint}")
    return "Hidden tests of the relaxed surrogate loss passed."


JUDGES = {
    "enumerate-binary-tests": enumerate_binary,
    "enumerate-one-hot-tests": enumerate_one_hot,
    "exact-elbo-values-tests": exact_elbo_values,
    "exact-elbo-gradient-tests": exact_elbo_gradient,
    "leave-one-out-tests": leave_one_out,
    "concrete-tests": relaxed,
    "straight-through-values-tests": straight_through_values,
    "straight-through-gradient-tests": straight_through_gradient,
    "relaxed-loss-tests": relaxed_loss,
}
