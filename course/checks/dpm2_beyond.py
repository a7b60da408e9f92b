"""Hidden tests of dpm2_beyond: the continuous Bernoulli's normaliser and the log-density of a
grey-level image (Section 1), the mixture estimator's draws and surrogate (Section 3), and the
affine coupling of a normalising flow (Section 4).

One check per graded test cell. The references are the checks' own: torch's
``td.ContinuousBernoulli`` in float64 where it is exact (logits of moderate size), and the
closed form log C = log(l / tanh(l / 2)) in float64 everywhere (torch clamps lambda to
[eps, 1 - eps], so its normaliser stops growing at |l| of about 16 in float32). The stability
check compares with the student's own values on moderate logits (which the values check
grades), so that a mistake there costs points once; cb_log_prob runs with the reference
normaliser in the notebook's namespace, for the same reason. An answer that calls torch's
continuous Bernoulli for what the exercise asks earns no points.

The mixture checks place the components 50 apart, so that the component of each draw can be
read off its nearest location; the draws are then compared with binomial and Gaussian
standard errors, their gradients with exact counts and noises, and the surrogate's gradient
with the closed-form gradient of E_q[f] on a 1-D mixture (5 standard errors of 40 estimates).
The coupling checks compare with the formula and with the autograd Jacobian of the coupling
(the checks' own forward map); the log-determinant check uses neither the student's forward
values nor, where it is wrong, the inverse, so each mistake costs points once.
"""

import math
import types

import torch
import torch.distributions as td
import torch.nn.functional as F

from course.checks._common import known_mistake, references_in
from dpm_core.grading import devices, expect, expect_close, expect_shape

__all__ = ["CHECKS", "check_cb_normaliser_values", "check_cb_normaliser_stability",
           "check_cb_log_prob", "check_mixture_rsample_draws", "check_mixture_rsample_gradients",
           "check_mixture_surrogate", "check_coupling_inverse", "check_coupling_log_det"]

#: |logit| range of the values check: there the paper's formula in lambda is exact in float32
_MODERATE = (0.05, 8.0)
#: logits near 0 (lambda near 1/2), where the formula is 0/0; sigmoid rounds 1e-8 to 1/2 in float32
_NEAR_HALF = (0.0, 1e-8, -1e-8, 1e-6, -1e-6, 1e-4, -1e-4, 5e-3, -5e-3, 9e-3, -9e-3)
#: extreme logits: sigmoid rounds them to 0 or 1 in float32 (from |l| of about 17 on)
_EXTREME = (20.0, -20.0, 50.0, -50.0, 100.0, -100.0, 1e4, -1e4)
#: moderate logits at which the stability check compares gradients
_GRADIENT_POINTS = (-8.0, -1.0, -0.1, 0.1, 1.0, 8.0)
#: what torch's ContinuousBernoulli returns as log C beyond its clamp in float32 (|l| > 16)
_TORCH_PLATEAU = 2.7689815
#: names of torch's implementation, which the exercises ask students to write themselves
_TORCH_CB = ("ContinuousBernoulli", "_cont_bern_log_norm", "continuous_bernoulli")


def _cb_log_normaliser(logits):
    """log C(sigmoid(l)) = log(l / tanh(l / 2)), elementwise, in the dtype of ``logits``; a
    three-term Taylor expansion below |l| = 1e-3 (its error is below 1e-16 there)."""
    a = logits.abs()
    small = a < 1e-3
    safe = torch.where(small, torch.ones_like(a), a)
    exact = torch.log(safe) - torch.log(torch.tanh(safe / 2))
    # l / tanh(l / 2) = 2 + l^2 / 6 - l^4 / 360 + ..., so log C = log 2 + l^2 / 12 - 7 l^4 / 1440
    taylor = math.log(2.0) + a ** 2 / 12 - 7 * a ** 4 / 1440
    return torch.where(small, taylor, exact)


def _exact_and_slope(logits):
    """The reference log C and its derivative d log C / d l, in float64 on the CPU."""
    l64 = logits.detach().double().cpu().requires_grad_(True)
    value = _cb_log_normaliser(l64)
    (slope,) = torch.autograd.grad(value.sum(), l64)
    return value.detach(), slope


def _torch_log_normaliser(logits):
    """log C from torch's public API in float64: log p(0) = log(1 - lambda) + log C, and
    log(1 - lambda) = -softplus(l). Exact for the moderate logits of the values check."""
    l64 = logits.double().cpu()
    return td.ContinuousBernoulli(logits=l64).log_prob(torch.zeros_like(l64)) + F.softplus(l64)


def _names_torch_cb(fn, depth: int = 3) -> bool:
    """Whether ``fn``'s code, or that of the notebook's functions it calls by name (``depth``
    calls deep), names torch's continuous Bernoulli."""
    todo, seen = [(fn, 0)], set()
    while todo:
        f, level = todo.pop()
        code = getattr(f, "__code__", None)
        if not isinstance(code, types.CodeType) or id(code) in seen:
            continue
        seen.add(id(code))
        scope = getattr(f, "__globals__", {})
        codes = [code]
        while codes:
            c = codes.pop()
            names = set(c.co_names) | {k for k in c.co_consts if isinstance(k, str)}
            if names & set(_TORCH_CB):
                return True
            codes += [k for k in c.co_consts if isinstance(k, types.CodeType)]
            if level < depth:
                todo += [(scope[n], level + 1) for n in c.co_names
                         if isinstance(scope.get(n), types.FunctionType)]
    return False


def _expect_own_cb(fn, name: str) -> None:
    """Fail, naming the rule, when ``fn`` answers with torch's continuous Bernoulli."""
    expect(callable(fn), f"{name} should be a function, got {type(fn).__name__}")
    expect(not _names_torch_cb(fn),
           f"{name} uses torch's ContinuousBernoulli: this exercise asks you to write it yourself, "
           f"so torch's answer earns no points (it is also wrong for large logits: torch clamps "
           f"lambda to [eps, 1 - eps], and its log C stops growing at about {_TORCH_PLATEAU:.2f}).")


def _call(fn, args, what: str, hint: str = ""):
    """``fn(*args)``, with an exception turned into a failure that names the call (and, unless
    the function is not written yet, ``hint``)."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise AssertionError(f"{what} raised NotImplementedError: write the function (and delete "
                             f"its raise line).") from None
    except Exception as error:  # noqa: BLE001 -- the student's code may raise anything
        detail = f": {error}" if str(error) else ""
        message = f"{what} raised {type(error).__name__}{detail}. {hint}"
        raise AssertionError(message.strip()) from None


def _normaliser_mistake(got, logits) -> str:
    """What is wrong with log C values ``got`` (float64) at the float64 ``logits``."""
    if not torch.isfinite(got).all():
        bad = ~torch.isfinite(got)
        if bool((logits[bad] < 0).all()):
            return ("log C is not finite for negative logits only: C(lambda) = l / tanh(l / 2) is "
                    "positive and even in l (C(lambda) = C(1 - lambda)), so take the logarithm of "
                    "the ratio or of absolute values, e.g. log|l| - log tanh(|l| / 2).")
        return ("log C is not finite for some moderate logits: the argument is a logit l, any real "
                "number, and lambda = sigmoid(l) (do not use the logits as probabilities).")
    ref, _ = _exact_and_slope(logits)
    lam = torch.sigmoid(logits)
    taylor = math.log(2.0) + logits ** 2 / 12
    known = [
        (-ref, "the sign is flipped: C(lambda) >= 2, so log C >= log 2 > 0."),
        (ref - math.log(2.0), "the factor 2 is missing: C(lambda) = 2 artanh(1 - 2 lambda) / "
                              "(1 - 2 lambda), which is 2 at lambda = 1/2."),
        (ref.exp(), "this is C(lambda) itself: return its logarithm, log C."),
        (_cb_log_normaliser(lam), "the formula in the logit, l / tanh(l / 2), is evaluated at "
                                  "lambda = sigmoid(l): use the logit itself."),
        (_cb_log_normaliser(torch.sigmoid(logits.abs())),
         "the formula in the logit, l / tanh(l / 2), is evaluated at lambda = sigmoid(|l|): use "
         "the logit itself."),
        (taylor, "these are the values of the Taylor expansion log 2 + l^2 / 12, which is only "
                 "accurate close to l = 0: use it only for very small |l|."),
    ]
    found = known_mistake(got, known, rtol=1e-4, atol=1e-5)
    if found:
        return found
    wrong = ~torch.isclose(got, ref, rtol=1e-5, atol=1e-5)
    if bool((logits[wrong] < 0).all()):
        return ("log C is wrong for negative logits only: C(lambda) = C(1 - lambda), so log C is "
                "even in the logit l; compute it from |l| (or from the ratio l / tanh(l / 2)).")
    if torch.allclose(got[wrong], taylor[wrong], rtol=1e-6, atol=1e-6):
        return ("for the smallest of these logits your values are those of the Taylor expansion "
                "log 2 + l^2 / 12, which is not accurate there: use it only for very small |l| "
                "(its error grows like l^4).")
    return ("log C(lambda) = log(2 artanh(1 - 2 lambda) / (1 - 2 lambda)) with "
            "lambda = sigmoid(logits); in the logit, 1 - 2 lambda = -tanh(l / 2).")


def check_cb_normaliser_values(ns: dict) -> None:
    """cb_log_normaliser against torch's continuous Bernoulli, for moderate logits.

    Grades the cell cb-normaliser-values-tests. Logits with 0.05 <= |l| <= 8 (where the formula
    needs no care), float32 and float64, batches (), (4,), (3, 5) and (2, 1, 3, 3), on every
    device: shape, dtype and device kept, the argument left as it was, values within rtol 1e-5
    and atol 1e-5 of torch's (float64). Near lambda = 1/2, at extreme logits and the gradients
    are cell cb-normaliser-stability-tests'.
    """
    cb_log_normaliser = ns["cb_log_normaliser"]
    _expect_own_cb(cb_log_normaliser, "cb_log_normaliser")
    gen = torch.Generator().manual_seed(0)
    low, high = _MODERATE
    fixed = torch.tensor([-8.0, -3.0, -1.0, -0.3, -0.05, 0.05, 0.3, 1.0, 3.0, 8.0],
                         dtype=torch.float64)
    for dev in devices():
        for dtype in (torch.float32, torch.float64):
            for shape in ((10,), (), (4,), (3, 5), (2, 1, 3, 3)):
                if shape == (10,):
                    l64 = fixed
                else:
                    size = low + (high - low) * torch.rand(shape, generator=gen,
                                                           dtype=torch.float64)
                    sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
                    l64 = (sign * size).to(dtype).double()  # exactly representable in dtype
                logits = l64.to(device=dev, dtype=dtype)
                before = logits.clone()
                what = (f"cb_log_normaliser of {str(dtype)[6:]} logits of shape {list(shape)} "
                        f"on {dev}")
                got = _call(cb_log_normaliser, (logits,), what)
                expect(torch.equal(logits, before),
                       f"{what} changed its argument: do not modify logits in place (abs_, "
                       f"clamp_, ...), compute new tensors.")
                expect_shape(got, shape, what, "It works elementwise: one log C per logit.")
                expect(got.dtype == dtype, f"{what} has dtype {got.dtype}: keep the dtype of the "
                                           f"logits (build constants with torch.full_like or "
                                           f"plain Python numbers).")
                expect(got.device.type == torch.device(dev).type,
                       f"{what} is on {got.device}: compute it on the device of the logits.")
                got64 = got.detach().double().cpu()
                ref = _torch_log_normaliser(l64)
                if not torch.allclose(got64, ref, rtol=1e-5, atol=1e-5):
                    worst = (got64 - ref).abs().nan_to_num(float("inf")).max().item()
                    raise AssertionError(f"{what} differs from torch's log C by up to {worst:.3g}: "
                                         f"{_normaliser_mistake(got64, l64)}")
    print("hidden tests passed")


def _own_values_map(cb_log_normaliser, dev) -> dict:
    """How the student's values on moderate logits relate to log C, for each sign of the logit.

    Returns:
        ``{sign: fit}`` for the signs (+1, -1) of the moderate logits at which the student's
        float64 values are all finite: ``fit`` is ``(a, b)`` when those values are
        ``a * log C + b`` (within 1e-6; a correct function has a = 1 and b = 0, a flipped sign
        a = -1), else None. A sign whose values are not finite is left out: that is the
        values check's to grade.
    """
    grid = torch.linspace(_MODERATE[0], _MODERATE[1], 25, dtype=torch.float64)
    fits = {}
    for sign in (1, -1):
        l64 = sign * grid
        try:
            with torch.no_grad():
                got = cb_log_normaliser(l64.to(dev)).double().cpu().reshape(l64.shape)
        except Exception:  # noqa: BLE001 -- the values check reports it
            continue
        if not bool(torch.isfinite(got).all()):
            continue
        ref, _ = _exact_and_slope(l64)
        design = torch.stack([ref, torch.ones_like(ref)], dim=1)  # [N, 2]
        a, b = torch.linalg.lstsq(design, got.unsqueeze(1)).solution.squeeze(1).tolist()
        close = bool(((a * ref + b - got).abs() <= 1e-6 * (1 + got.abs())).all())
        fits[sign] = (a, b) if close else None
    return fits


def _expect_slope(slope, expected, what: str, hint: str, atol: float) -> None:
    """Check a gradient against ``expected``; a gradient that is 0 where the expected one
    clearly is not is named as such (a detached computation)."""
    if bool((slope == 0).all()) and expected.abs().max().item() > 10 * atol:
        raise AssertionError(f"the gradient of {what} is 0, but log C depends on the logit: is "
                             f"part of the computation detached, or done outside autograd?")
    expect_close(slope, expected, f"the gradient of {what}", hint, rtol=1e-3, atol=atol)


def _value_and_slope(cb_log_normaliser, points, dtype, dev, what):
    """The student's log C and its gradient at ``points`` (float64 on the CPU)."""
    logits = torch.tensor(points, dtype=dtype, device=dev, requires_grad=True)
    got = _call(cb_log_normaliser, (logits,), what)
    expect(torch.is_tensor(got) and got.shape == logits.shape,
           f"{what} should be a tensor of shape {list(logits.shape)}")
    expect(got.requires_grad,
           f"{what} has no gradient: do not detach it, and do not go through .item(), numpy or "
           f"torch.no_grad(); the decoder learns through log C.")
    (slope,) = torch.autograd.grad(got.sum(), logits, allow_unused=True)
    expect(slope is not None, f"{what} does not depend on the logits through autograd.")
    return got.detach().double().cpu(), slope.double().cpu()


def _check_points(cb_log_normaliser, points, fits, dtype, dev, messages, tolerances):
    """Check the student's log C and its gradient at ``points`` for the signs in ``fits``.

    Args:
        messages: ``(not finite, gradient not finite, value hint, gradient hint)``; a value
            hint of None marks the extreme logits (their values are also compared with the
            plateau of a clamped lambda).
        tolerances: ``(value rtol, value atol, gradient atol)``; value tolerances of None
            leave the values out (at moderate logits they are the values check's).
    """
    points = [p for p in points if (1 if p >= 0 else -1) in fits]  # 0 counts as positive
    if not points:
        return
    what = f"cb_log_normaliser at the {str(dtype)[6:]} logits {points} on {dev}"
    got, slope = _value_and_slope(cb_log_normaliser, points, dtype, dev, what)
    expect(torch.isfinite(got).all(), f"{what} gives {got.tolist()}: {messages[0]}")
    expect(torch.isfinite(slope).all(),
           f"the gradient of {what} is {slope.tolist()}: not finite. {messages[1]}")
    ref, ref_slope = _exact_and_slope(torch.tensor(points, dtype=torch.float64))
    for sign, fit in fits.items():
        mine = torch.tensor([(1 if p >= 0 else -1) == sign for p in points])
        if fit is None or not mine.any():
            continue
        a, b = fit
        if messages[2] is None:  # the extremes: a plateau is torch's clamp, or a clamp like it
            plateau = torch.full_like(got[mine], a * _TORCH_PLATEAU + b)
            expect(not torch.allclose(got[mine], plateau, atol=1e-3),
                   f"{what} stays at {_TORCH_PLATEAU:.4f} for large |l|, as torch's does: torch "
                   f"clamps lambda to [eps, 1 - eps], but log C keeps growing like log|l|. "
                   f"Compute it from the logit.")
        if tolerances[0] is not None:
            expect_close(got[mine], a * ref[mine] + b, what,
                         messages[2] or "For large |l|, C = |l| / tanh(|l| / 2) grows like |l|: "
                                        "compute it from the logit, not from lambda = sigmoid(l), "
                                        "which rounds to 0 or 1.",
                         rtol=tolerances[0], atol=tolerances[1])
        _expect_slope(slope[mine], a * ref_slope[mine], what, messages[3], tolerances[2])


def check_cb_normaliser_stability(ns: dict) -> None:
    """cb_log_normaliser near lambda = 1/2 and at extreme logits: finite, exact values and
    gradients.

    Grades the cell cb-normaliser-stability-tests. On every device, in float32 and float64:
    at l = 0 and |l| <= 9e-3 (lambda next to 1/2, where the formula is 0/0) values and
    gradients are finite and match the expansion log 2 + l^2 / 12 - 7 l^4 / 1440 (atol 1e-5 in
    float32, 1e-7 in float64; gradients atol 1e-3 and 1e-4); at |l| from 20 to 1e4 (sigmoid
    rounds to 0 or 1 in float32) they are finite and match log(|l| / tanh(|l| / 2)) (rtol
    1e-5); at moderate logits the gradient matches (a detached result fails here). What the
    student's function does at moderate logits is graded by cb-normaliser-values-tests, so the
    comparisons allow for it: for each sign of the logit they use a * log C + b, fitted to the
    student's own values there, and only check finiteness where no such fit exists; logits of
    a sign for which those values are not finite are left out.
    """
    cb_log_normaliser = ns["cb_log_normaliser"]
    _expect_own_cb(cb_log_normaliser, "cb_log_normaliser")
    for dev in devices():
        fits = _own_values_map(cb_log_normaliser, dev)
        if not fits:
            what = f"cb_log_normaliser at the logits [-1.0, 1.0] on {dev}"
            got = _call(cb_log_normaliser, (torch.tensor([-1.0, 1.0], device=dev),), what)
            raise AssertionError(f"{what} gives {got}: no finite log C for moderate logits, so "
                                 f"there is nothing whose stability could be graded.")
        if all(fit is not None and abs(fit[0]) < 0.5 for fit in fits.values()):
            raise AssertionError("cb_log_normaliser does not depend on the logits the way log C "
                                 "does (its values on moderate logits are about constant), so "
                                 "there is nothing whose stability could be graded.")
        for dtype, value_atol, slope_atol in ((torch.float32, 1e-5, 1e-3),
                                              (torch.float64, 1e-7, 1e-4)):
            near_half = (
                "at lambda = 1/2 (l = 0) the formula is 0/0, and in float32 sigmoid(l) rounds to "
                "1/2 already for |l| below about 1e-7. Use the Taylor expansion "
                "log C = log 2 + l^2 / 12 + O(l^4) for small |l|.",
                "torch.where differentiates both of its branches, and the 0/0 of the unused one "
                "poisons the gradient (0 * nan = nan): evaluate the exact formula at a safe value "
                "where the Taylor branch is used, e.g. torch.where(small, torch.ones_like(l), l).",
                "Near lambda = 1/2, log C = log 2 + l^2 / 12 - 7 l^4 / 1440 + ...: check the "
                "Taylor branch (its terms, and that it is used only for small |l|).",
                "Near l = 0, d log C / dl = l / 6 + O(l^3): check the Taylor branch.")
            _check_points(cb_log_normaliser, _NEAR_HALF, fits, dtype, dev, near_half,
                          (0.0, value_atol, slope_atol))
            extremes = (
                "in float32, sigmoid(20) rounds to 1 (and 1 - 2 sigmoid(-20) to 1), so "
                "1 - 2 lambda = -1 (or 1) and artanh(-1) = -inf. Work with the logit instead of "
                "lambda: 1 - 2 sigmoid(l) = -tanh(l / 2), so artanh(1 - 2 lambda) = -l / 2.",
                "Work with the logit: 1 - 2 sigmoid(l) = -tanh(l / 2).",
                None,
                "d log C / dl tends to 1 / l for large |l|.")
            _check_points(cb_log_normaliser, _EXTREME, fits, dtype, dev, extremes,
                          (1e-5, 1e-5, 1e-6))
            moderate = ("log C should be finite for moderate logits.",
                        "Is a branch of torch.where not finite at moderate logits?", "",
                        "Is part of the computation detached, or done outside autograd?")
            _check_points(cb_log_normaliser, _GRADIENT_POINTS, fits, dtype, dev, moderate,
                          (None, None, slope_atol))
    print("hidden tests passed")


def _cb_log_prob_reference(x, logits):
    """sum over [C, H, W] of x l - softplus(l) + log C(l), in float64 on the CPU."""
    x, logits = x.detach().double().cpu(), logits.detach().double().cpu()
    return (x * logits - F.softplus(logits) + _cb_log_normaliser(logits)).sum(dim=(-3, -2, -1))


def _log_prob_mistake(got, x, logits) -> str:
    """What is wrong with the log-densities ``got`` (float64) of images x under logits."""
    x, l = x.double().cpu(), logits.double().cpu()
    dims = (-3, -2, -1)
    kernel = x * l - F.softplus(l)
    log_c = _cb_log_normaliser(l)
    known = [
        (kernel.sum(dims), "this is the Bernoulli log-likelihood x log lambda + (1 - x) "
                           "log(1 - lambda) without the normaliser: add log C(lambda) (your "
                           "cb_log_normaliser) for every pixel."),
        ((kernel - log_c).sum(dims), "the normaliser has the wrong sign: the density is "
                                     "C(lambda) lambda^x (1 - lambda)^(1 - x), so log C is added."),
        (((1 - x) * l - F.softplus(l) + log_c).sum(dims),
         "x and 1 - x are swapped: log lambda^x (1 - lambda)^(1 - x) = x log lambda + (1 - x) "
         "log(1 - lambda) = x l - softplus(l)."),
        ((kernel + log_c).mean(dims), "this is the mean over the pixels: the log-density of an "
                                      "image is the sum over its pixels."),
        ((kernel + _cb_log_normaliser(torch.sigmoid(l))).sum(dims),
         "cb_log_normaliser gets sigmoid(logits): it takes the logits themselves."),
    ]
    return known_mistake(got, known, rtol=1e-4, atol=1e-3,
                         default="log p(x|lambda) = sum over the pixels of x l - softplus(l) + "
                                 "log C(lambda), with l the logit of lambda.")


def check_cb_log_prob(ns: dict) -> None:
    """cb_log_prob: the log-density of grey-level images, one number per image.

    Grades the cell cb-log-prob-tests. cb_log_prob runs with the reference cb_log_normaliser in
    the notebook's namespace. Images [1, 5, 4] and [2, 3, 3] with batches (), (4,), (3, 5) on
    every device, pixels in [0, 1] with exact zeros and ones, logits 3 * N(0, 1): the shape,
    values against sum(x l - softplus(l) + log C) in float64 (torch's continuous Bernoulli for
    these logits, as tests/test_checks_dpm2_beyond.py checks; rtol 1e-5, atol 1e-3) and
    gradients with respect to the logits (rtol 1e-4, atol 1e-4); then logits of +-30 and +-80,
    where log sigmoid underflows in float32 (and torch's clamped lambda is wrong): finite and
    exact. An answer that calls torch's ContinuousBernoulli earns no points.
    """
    cb_log_prob = ns["cb_log_prob"]
    dims_hint = ("Sum over the last three dimensions, the image's [C, H, W] "
                 "(dim=(-3, -2, -1)), so that any batch shape works: one number per image, "
                 "as td.Independent(..., 3) would give.")
    gen = torch.Generator().manual_seed(1)
    with references_in(ns, cb_log_normaliser=_cb_log_normaliser):
        # with the reference normaliser in place, so that this follows the student's own code only
        _expect_own_cb(cb_log_prob, "cb_log_prob")
        for dev in devices():
            for image in ((1, 5, 4), (2, 3, 3)):
                for batch in ((), (4,), (3, 5)):
                    shape = batch + image
                    u = torch.rand(shape, generator=gen)
                    grey = torch.rand(shape, generator=gen)
                    x = torch.where(u < 0.2, 0.0, torch.where(u > 0.9, 1.0, grey))
                    logits = 3 * torch.randn(shape, generator=gen)
                    what = (f"cb_log_prob(x, logits) for images {list(image)} in a batch "
                            f"{list(batch)} on {dev}")
                    leaf = logits.to(dev).requires_grad_(True)
                    got = _call(cb_log_prob, (x.to(dev), leaf), what, dims_hint)
                    expect(torch.is_tensor(got), f"{what} should be a tensor, got "
                                                 f"{type(got).__name__}")
                    if got.shape == shape:
                        raise AssertionError(f"{what} has one value per pixel, shape "
                                             f"{list(shape)}. {dims_hint}")
                    if got.dim() == 0 and batch:
                        raise AssertionError(f"{what} is one number for the whole batch: do not "
                                             f"sum over the batch. {dims_hint}")
                    expect_shape(got, batch, what, dims_hint)
                    ref = _cb_log_prob_reference(x, logits)
                    got64 = got.detach().double().cpu()
                    if not torch.allclose(got64, ref, rtol=1e-5, atol=1e-3):
                        raise AssertionError(f"{what} differs from the log-density: "
                                             f"{_log_prob_mistake(got64, x, logits)}")
                    expect(got.requires_grad, f"{what} has no gradient with respect to the "
                                              f"logits: do not detach it.")
                    (slope,) = torch.autograd.grad(got.sum(), leaf)
                    l64 = logits.double().requires_grad_(True)
                    (ref_slope,) = torch.autograd.grad(
                        (x.double() * l64 - F.softplus(l64) + _cb_log_normaliser(l64)).sum(), l64)
                    expect_close(slope.double().cpu(), ref_slope, f"the gradient of {what}",
                                 "d/dl (x l - softplus(l) + log C) = x - sigmoid(l) + "
                                 "d log C / dl.", rtol=1e-4, atol=1e-4)
            # extreme logits: a decoder trained on FashionMNIST sends those of black pixels far
            # below -20
            logits = torch.tensor([[-80.0, -30.0], [30.0, 80.0]]).expand(3, 1, 2, 2)
            x = torch.tensor([0.0, 0.3, 1.0]).reshape(3, 1, 1, 1).expand(3, 1, 2, 2)
            what = f"cb_log_prob(x, logits) for the float32 logits +-30 and +-80 on {dev}"
            leaf = logits.to(dev).clone().requires_grad_(True)
            got = _call(cb_log_prob, (x.to(dev), leaf), what, dims_hint)
            expect(torch.is_tensor(got) and got.shape == (3,), f"{what} should have shape [3]")
            expect(torch.isfinite(got).all(),
                   f"{what} is {got.tolist()}: in float32, sigmoid(30) rounds to 1 and "
                   f"sigmoid(-80) to 0, so log(1 - lambda) or log lambda is -inf. Write the "
                   f"kernel in the logit: x log lambda + (1 - x) log(1 - lambda) = "
                   f"x l - softplus(l) (or use F.logsigmoid).")
            (slope,) = torch.autograd.grad(got.sum(), leaf)
            expect(torch.isfinite(slope).all(),
                   f"the gradient of {what} is not finite: write the kernel as x l - softplus(l).")
            expect_close(got.detach().double().cpu(), _cb_log_prob_reference(x, logits), what,
                         "Write the kernel as x l - softplus(l), which is exact for every logit.",
                         rtol=1e-5, atol=1e-3)
    print("hidden tests passed")




# ---------------------------------------------------------------------- the mixture estimator

#: the spacing of the components of the mixture checks: an average of their draws lies more
#: than 10 scales from every component, a draw of one of them within 6 (per coordinate)
_SPREAD = 50.0
#: how far, in its component's scales, a draw may lie from that component's location
_FAR = 6.0


def _separated_mixture(logits, batch, K, dev, dtype=torch.float32, requires_grad=False):
    """A mixture over [K] whose component m sits at about _SPREAD * m, with scales 0.5 to 1.5.

    Returns:
        ``(qz, (logits, locs, scales))``: the mixture (batch ``batch``, M components) and its
        parameters as leaves (with gradients when asked), on ``dev``.
    """
    gen = torch.Generator().manual_seed(len(batch) * 7 + K)
    M = logits.shape[-1]
    offsets = 0.5 * torch.randn(*batch, M, K, generator=gen, dtype=torch.float64)
    locs = _SPREAD * torch.arange(M, dtype=torch.float64)[:, None] + offsets  # [*B, M, K]
    scales = 0.5 + torch.rand(*batch, M, K, generator=gen, dtype=torch.float64)
    leaves = [t.to(device=dev, dtype=dtype).requires_grad_(requires_grad)
              for t in (logits.expand(*batch, M).clone(), locs, scales)]
    qz = td.MixtureSameFamily(td.Categorical(logits=leaves[0]),
                              td.Independent(td.Normal(leaves[1], leaves[2]), 1))
    return qz, leaves


def _draw(mixture_rsample, qz, S, what):
    """The student's ``(z, log_w)`` for ``S`` draws from ``qz``, checked to be two tensors."""
    out = _call(mixture_rsample, (qz, S), what,
                "A td.MixtureSameFamily has no rsample: draw the component with "
                "qz.mixture_distribution.sample() and z with qz.component_distribution.rsample().")
    expect(isinstance(out, tuple) and len(out) == 2 and all(torch.is_tensor(t) for t in out),
           f"{what} should return a pair of tensors (z, log_w), got {type(out).__name__}")
    return out


def _components_of(z, locs, scales):
    """The component whose location is nearest to each draw, and the draw's largest distance
    from it over the coordinates, in that component's scales: ``(c [S, *B], far [S, *B])``."""
    dist = (z.detach().double().unsqueeze(-2) - locs.detach().double()).norm(dim=-1)  # [S, *B, M]
    c = dist.argmin(dim=-1)
    far = ((z.detach().double() - _pick(locs, c)) / _pick(scales, c)).abs().amax(-1)
    return c, far


def _pick(params, c):
    """The parameters [*B, M, K] of each draw's component c [S, *B]: [S, *B, K], float64."""
    params = params.detach().double()
    S, K = c.shape[0], params.shape[-1]
    index = c.to(params.device)[..., None, None].expand(*c.shape, 1, K)
    return params.expand(S, *params.shape).gather(-2, index).squeeze(-2)


def _expect_draw_shapes(z, log_w, S, batch, K, M, what):
    """z [S, *B, K] and log_w [S, *B], with the usual mistakes named."""
    if tuple(z.shape) == (S, *batch, M, K):
        raise AssertionError(f"z of {what} has shape {list(z.shape)}: a draw from every "
                             f"component. Keep the chosen component's only (torch.gather along "
                             f"the components' dimension, -2).")
    expect_shape(z, (S, *batch, K), f"z of {what}", "One draw z per sample and distribution.")
    if tuple(log_w.shape) == (S, *batch, M):
        raise AssertionError(f"log_w of {what} has shape {list(log_w.shape)}: the log-weights of "
                             f"all components. Return log w_c of the chosen component only.")
    expect_shape(log_w, (S, *batch), f"log_w of {what}",
                 "One log-weight per draw: that of the component it came from.")


def check_mixture_rsample_draws(ns: dict) -> None:
    """mixture_rsample: shapes, which components are drawn, the draws within a component, and
    that log_w belongs to the component of each draw.

    Grades the cell mixture-rsample-draws-tests. Mixtures over K = 1, 2 and 3 with M = 3
    components at about 0, 50 and 100 in every coordinate (scales 0.5 to 1.5, so each draw
    lies near its own component: the component of a draw is read off its nearest location),
    batches (), (4,), (3, 5), weights 0.5, 0.3, 0.2, on every device, float32 and float64;
    S = 4000 draws for the batch (4,) and 200 otherwise. Checked: shapes; z finite and within
    8 scale units of some component (a weighted average of the components lies between them);
    the frequency of each component within 5 binomial standard errors (plus 0.01) of its weight,
    every batch element apart; (z - mu_c) / sigma_c of the draws with mean within 5 / sqrt(n)
    of 0 and variance within 5 sqrt(2 / n) (plus 0.02) of 1 per coordinate (n: the draws of
    the component); log_w equal to log w_c (atol 1e-5). Gradients are checked by
    mixture-rsample-gradients-tests.
    """
    mixture_rsample = ns["mixture_rsample"]
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    for dev in devices():
        for dtype, batch, K in ((torch.float32, (4,), 2), (torch.float32, (), 1),
                                (torch.float32, (3, 5), 3), (torch.float64, (4,), 3)):
            S = 4000 if batch == (4,) else 200
            qz, (_, locs, scales) = _separated_mixture(weights.log() + 1.0, batch, K, dev, dtype)
            what = (f"mixture_rsample(qz, {S}) for a {str(dtype)[6:]} mixture of 3 components "
                    f"over K = {K} with batch_shape {list(batch)} on {dev}")
            z, log_w = _draw(mixture_rsample, qz, S, what)
            _expect_draw_shapes(z, log_w, S, batch, K, 3, what)
            expect(z.device.type == torch.device(dev).type and z.dtype == dtype,
                   f"z of {what} is {z.dtype} on {z.device}: draw it from qz's own components.")
            expect(bool(torch.isfinite(z).all()), f"z of {what} is not finite everywhere")
            c, far = _components_of(z, locs, scales)
            expect(bool((far < _FAR).all()),
                   f"some draws of {what} lie far from every component (the components are "
                   f"{_SPREAD:.0f} apart, their scales at most 1.5): is z an average of the "
                   f"components' draws? A draw from a mixture comes from one component, the one "
                   f"chosen by c ~ Cat(w).")
            if S >= 1000:
                counts = torch.nn.functional.one_hot(c, 3).double().mean(0)  # [*B, M]
                se = (weights * (1 - weights) / S).sqrt()
                if not bool(((counts - weights).abs() <= 5 * se + 0.01).all()):
                    worst = counts.reshape(-1, 3)[(counts - weights).abs().reshape(-1, 3)
                                                  .max(-1).values.argmax()]
                    raise AssertionError(
                        f"{what}: the components are drawn with frequencies "
                        f"{[round(v, 3) for v in worst.tolist()]} for the weights "
                        f"{weights.tolist()}. Choose each draw's component at random with "
                        f"qz.mixture_distribution.sample((S,)), not the heaviest one or always "
                        f"the same one.")
            eps = ((z.detach().double() - _pick(locs, c)) / _pick(scales, c)).reshape(S, -1, K)
            flat_c = c.reshape(S, -1)
            for m in range(3):
                chosen = eps[flat_c == m]  # [n, K]
                n = chosen.shape[0]
                if n < 50:
                    continue
                mean_bad = (chosen.mean(0).abs() > 5 / math.sqrt(n)).any()
                var_bad = ((chosen.var(0) - 1).abs() > 5 * math.sqrt(2 / n) + 0.02).any()
                expect(not bool(mean_bad or var_bad),
                       f"{what}: the draws of component {m} have (z - mu) / sigma with mean "
                       f"{[round(v, 3) for v in chosen.mean(0).tolist()]} and variance "
                       f"{[round(v, 3) for v in chosen.var(0).tolist()]}, not 0 and 1: draw z "
                       f"from the chosen component, z = mu_c + sigma_c * eps "
                       f"(qz.component_distribution.rsample()).")
            expected = torch.log_softmax(weights.log(), 0)[c]
            got = log_w.detach().double().cpu()
            if not torch.allclose(got, expected.cpu(), atol=1e-5):
                if torch.allclose(got, expected.exp().cpu(), atol=1e-5):
                    raise AssertionError(f"log_w of {what} holds the weights w_c themselves: "
                                         f"return their logarithm.")
                raise AssertionError(f"log_w of {what} is not log w_c of the component each draw "
                                     f"came from: compute it from the same c as z, "
                                     f"qz.mixture_distribution.log_prob(c).")
    print("hidden tests passed")


def check_mixture_rsample_gradients(ns: dict) -> None:
    """mixture_rsample: z is pathwise within its component, the choice of component passes no
    gradient, and log_w carries the score of the weights.

    Grades the cell mixture-rsample-gradients-tests. A mixture of M = 3 components over K = 2
    with batch (4,) and its logits, locations and scales as leaves, S = 64 draws, on every
    device, float64: z has a gradient, none to the logits, and depends on the locations and
    scales; log_w depends on the logits through autograd. Where z has the right shape and each
    draw lies near a component (what the draws check grades), d sum(z) / d mu[b, m, k] is the
    number of draws of element b from component m and d sum(z) / d sigma[b, m, k] the sum of
    their eps_k = (z_k - mu_k) / sigma_k (rtol 1e-6). The values of log_w are the draws
    check's.
    """
    mixture_rsample = ns["mixture_rsample"]
    logits0 = torch.tensor([0.2, -0.4, 0.1], dtype=torch.float64)
    S, batch, K = 64, (4,), 2
    for dev in devices():
        qz, (logits, locs, scales) = _separated_mixture(logits0, batch, K, dev, torch.float64,
                                                        requires_grad=True)
        what = f"mixture_rsample(qz, {S}) on {dev}"
        z, log_w = _draw(mixture_rsample, qz, S, what)
        expect(z.requires_grad,
               f"z of {what} has no gradient: it should be drawn pathwise, z = mu_c + sigma_c * eps "
               f"(qz.component_distribution.rsample(), not sample()), so that the components "
               f"learn through f(z).")
        g_locs, g_scales, g_logits = torch.autograd.grad(z.sum(), [locs, scales, logits],
                                                         allow_unused=True)
        expect(g_logits is None or bool((g_logits == 0).all()),
               f"z of {what} depends on the mixing logits: the choice of the component is a "
               f"discrete draw, through which no gradient flows (sample c with "
               f"qz.mixture_distribution.sample(), not a relaxed or weighted version); the "
               f"weights learn through log_w.")
        expect(g_locs is not None and g_scales is not None,
               f"z of {what} does not depend on the components' "
               f"{'locations' if g_locs is None else 'scales'}: z = mu_c + sigma_c * eps.")
        if tuple(z.shape) == (S, *batch, K):
            c, far = _components_of(z, locs, scales)
            if bool((far < _FAR).all()):
                onehot = torch.nn.functional.one_hot(c, 3).double()  # [S, *B, M]
                expected_locs = onehot.sum(0)[..., None].expand(*batch, 3, K)
                expect_close(g_locs.cpu(), expected_locs.cpu(), f"d sum(z) / d locations of {what}",
                             "Each draw moves with the location of its own component, and only "
                             "with it: z = mu_c + sigma_c * eps (select the chosen component's "
                             "draw, do not mix the components' draws).", rtol=1e-6, atol=1e-9)
                eps = (z.detach().double() - _pick(locs, c)) / _pick(scales, c)  # [S, *B, K]
                expected_scales = (onehot[..., None] * eps[..., None, :].cpu()).sum(0)
                expect_close(g_scales.cpu(), expected_scales.cpu(), f"d sum(z) / d scales of {what}",
                             "z = mu_c + sigma_c * eps: the scale of the chosen component "
                             "multiplies the noise.", rtol=1e-6, atol=1e-9)
        expect(torch.is_tensor(log_w) and log_w.requires_grad,
               f"log_w of {what} has no gradient: compute it with "
               f"qz.mixture_distribution.log_prob(c), without detaching it; the mixing "
               f"weights learn through it.")
        (g_w,) = torch.autograd.grad(log_w.sum(), [logits], allow_unused=True)
        expect(g_w is not None and bool((g_w != 0).any()),
               f"log_w of {what} does not depend on the mixing logits: compute it from "
               f"qz.mixture_distribution, whose logits the weights learn through.")
    print("hidden tests passed")


#: the toy of the surrogate check: weights, locations and log-scales of a 1-D mixture, and
#: the offset a of f(z) = -(z - a)^2 + CONST
_TOY_LOGITS = (0.4, -0.3, 0.0)
_TOY_LOCS = (-1.5, 0.3, 2.0)
_TOY_LOG_SCALES = (-0.7, 0.2, -0.3)
_TOY_A = 0.8


def _toy_gradients(mixture_surrogate, dev, repeats, draws, offset, baseline_kind, what):
    """``repeats`` estimates of grad E_q[f] from mixture_surrogate, and the exact gradient.

    The toy is a 1-D mixture with parameters (logits, locs, log_scales) [R, M] (the same
    values, one copy per repeat, so that one backward pass gives every repeat's gradient),
    f(z) = -(z - a)^2 + offset, with the draws of the check's own reference mixture_rsample.
    ``baseline_kind``: "zero" (b = 0.0), "exact" (b = E_q[f], a tensor [R] on the graph of the
    parameters, which must not be differentiated) or "number" (b = E_q[f] as a float).

    Returns:
        ``(estimates [R, 3M], exact [3M])`` in float64 on the CPU.
    """
    gen = torch.Generator().manual_seed(42)
    base = [torch.tensor(v, dtype=torch.float64) for v in (_TOY_LOGITS, _TOY_LOCS,
                                                           _TOY_LOG_SCALES)]
    leaves = [v.expand(repeats, 3).clone().to(dev).requires_grad_(True) for v in base]
    logits, locs, log_scales = leaves
    w, scales = torch.softmax(logits, -1), log_scales.exp()  # [R, M]
    mean_f = -(w * ((locs - _TOY_A) ** 2 + scales ** 2)).sum(-1) + offset  # [R], exact E_q[f]
    c = torch.multinomial(torch.softmax(base[0], 0), draws * repeats, replacement=True,
                          generator=gen).reshape(draws, repeats).to(dev)  # [S, R]
    eps = torch.randn(draws, repeats, generator=gen, dtype=torch.float64).to(dev)
    z = locs.gather(-1, c.T).T + scales.gather(-1, c.T).T * eps  # [S, R], pathwise
    log_w = torch.log_softmax(logits, -1).gather(-1, c.T).T  # [S, R]
    f = -(z - _TOY_A) ** 2 + offset  # [S, R]
    baseline = {"zero": 0.0, "exact": mean_f, "number": float(mean_f[0].detach())}[baseline_kind]
    out = _call(mixture_surrogate, (f, log_w, baseline), what)
    expect(torch.is_tensor(out), f"{what} should return a tensor, got {type(out).__name__}")
    if out.dim() == 0:
        raise AssertionError(f"{what} is one number for all {repeats} distributions of the "
                             f"batch: average over the draws only (dimension 0), one surrogate "
                             f"per distribution.")
    if tuple(out.shape) == (draws, repeats):
        raise AssertionError(f"{what} has shape {list(out.shape)}, one value per draw: average "
                             f"over the draws (dimension 0).")
    expect_shape(out, (repeats,), what, "Average over the draws (dimension 0): one surrogate "
                                        "per distribution of the batch.")
    expect(out.requires_grad, f"{what} has no gradient: f and log_w must stay on the graph.")
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]
    estimates = torch.cat(grads, dim=-1).double().cpu()  # [R, 3M]
    ref = [v.clone().requires_grad_(True) for v in base]
    w_ref, s_ref = torch.softmax(ref[0], 0), ref[2].exp()
    exact = -(w_ref * ((ref[1] - _TOY_A) ** 2 + s_ref ** 2)).sum()
    return estimates, torch.cat(torch.autograd.grad(exact, ref))


def _surrogate_bias_hint(mean, exact, se) -> str:
    """What a biased gradient of the surrogate says about the mistake behind it."""
    names = ("logits", "locations", "log-scales")
    off = [n for i, n in enumerate(names)
           if bool(((mean[3 * i:3 * i + 3] - exact[3 * i:3 * i + 3]).abs()
                    > 5 * se[3 * i:3 * i + 3] + 1e-3).any())]
    path_zero = bool((mean[3:] == 0).all())
    if path_zero:
        return ("the locations and scales get no gradient: they learn through f(z) itself "
                "(pathwise), so keep f on the graph and detach only the reward that multiplies "
                "log_w.")
    if bool((mean[:3] == 0).all()):
        return ("the mixing logits get no gradient: the score term (f - b) * log_w must keep "
                "log_w on the graph (detach the reward only).")
    if bool((mean[:3] - (-exact[:3])).abs().le(5 * se[:3] + 1e-3).all()):
        return "the weights' gradient has the wrong sign: add (f - b) * log_w, do not subtract it."
    if off == ["locations", "log-scales"] or off == ["locations"] or off == ["log-scales"] \
            or "logits" not in off:
        return ("the gradient of the locations and scales is biased: the reward of the score "
                "term must be detached, sg[f - b] * log_w; otherwise autograd also "
                "differentiates f in it.")
    return (f"the gradients of the {', '.join(off)} are off: the surrogate is "
            f"f + sg[f - b] * log_w, averaged over the draws.")


def check_mixture_surrogate(ns: dict) -> None:
    """mixture_surrogate: shape, unbiased gradients, and a baseline that reduces the variance
    and is never differentiated.

    Grades the cell mixture-surrogate-tests. A 1-D mixture of M = 3 Gaussians, f(z) =
    -(z - 0.8)^2 + offset, whose E_q[f] has a closed form, on every device in float64: 40
    estimates (one per copy of the parameters in a batch of 40) from 2000 draws each. With
    offset 0 and b = 0, and with offset 50 and b = E_q[f] given as a tensor on the graph of the
    parameters: the mean estimate of the gradient for the logits, locations and log-scales within
    5 standard errors (plus 1e-3) of the exact one; the summed variance of the logits' gradient
    with offset 50 and b = E_q[f] (a number) below a fifth of that with b = 0 (a correct
    surrogate gives a ratio of about 1e-3). f and log_w are the check's own draws.
    """
    mixture_surrogate = ns["mixture_surrogate"]
    repeats, draws = 40, 2000
    for dev in devices():
        for offset, kind in ((0.0, "zero"), (50.0, "exact")):
            what = (f"mixture_surrogate(f, log_w, baseline) for {draws} draws of a batch of "
                    f"{repeats} 1-D mixtures, f = -(z - a)^2 + {offset:g}, "
                    f"baseline {'0' if kind == 'zero' else 'E_q[f] (a tensor with gradients)'}, "
                    f"on {dev}")
            estimates, exact = _toy_gradients(mixture_surrogate, dev, repeats, draws, offset,
                                              kind, what)
            expect(bool(torch.isfinite(estimates).all()), f"the gradients of {what} are not "
                                                          f"finite")
            mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(repeats)
            if not bool(((mean - exact).abs() <= 5 * se + 1e-3).all()):
                if torch.allclose(mean, draws * exact, rtol=0.2, atol=0.5) and draws > 1:
                    hint = "it is about S times the gradient: average over the draws, do not sum."
                elif kind == "exact":
                    hint = ("with a baseline that has gradients of its own (e.g. a learned "
                            "critic), the estimate is biased: the baseline must not be "
                            "differentiated; detach (f - b) as a whole in the score term.")
                else:
                    hint = _surrogate_bias_hint(mean, exact, se)
                worst = int(((mean - exact).abs() / (se + 1e-12)).argmax())
                raise AssertionError(
                    f"the gradient of {what} is biased: its mean over {repeats} estimates is "
                    f"{mean[worst].item():.4g} (standard error {se[worst].item():.2g}) where "
                    f"the exact gradient is {exact[worst].item():.4g}; {hint}")
        what = f"mixture_surrogate with f = -(z - a)^2 + 50 on {dev}"
        plain, _ = _toy_gradients(mixture_surrogate, dev, repeats, draws, 50.0, "zero",
                                  what + " and baseline 0")
        centred, _ = _toy_gradients(mixture_surrogate, dev, repeats, draws, 50.0, "number",
                                    what + " and baseline E_q[f]")
        ratio = centred[:, :3].var(0).sum() / plain[:, :3].var(0).sum()
        expect(bool(ratio < 0.2),
               f"{what}: the baseline b = E_q[f] leaves the variance of the weights' gradient at "
               f"{ratio.item():.2f} times that with b = 0; it should shrink it a thousandfold. "
               f"Subtract the baseline from f in the score term: sg[f - b] * log_w.")
    print("hidden tests passed")


# ---------------------------------------------------------------------- the affine coupling

def _toy_conditioner(K, seed):
    """g: [..., K] -> (t, s), a fixed smooth map in float64 (tanh of a linear map) whose t and
    s are nonzero on every coordinate and depend on every coordinate of its input."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(K, 2 * K, generator=gen, dtype=torch.float64)
    bias = 0.3 * torch.randn(2 * K, generator=gen, dtype=torch.float64)

    def g(v):
        t, s = torch.tanh(v @ weight.to(v) + bias.to(v)).chunk(2, dim=-1)
        return 2.0 * t, 0.8 * s

    return g


def _coupling_layer(cls, mask, g, what):
    """``cls(mask, g)``, a td Transform."""
    layer = _call(cls, (mask, g), what)
    expect(isinstance(layer, td.transforms.Transform),
           f"{what} is a {type(layer).__name__}, not a td.transforms.Transform: keep the class "
           f"a subclass of td.transforms.Transform.")
    return layer


def _masks(K):
    """The masks of the checks: the halves of Real NVP, alternating ones, and a single 1."""
    first = (torch.arange(K) < K // 2).double()
    alternate = (torch.arange(K) % 2 == 0).double()
    single = torch.zeros(K, dtype=torch.float64)
    single[K - 1] = 1.0
    return [first, 1 - first, alternate, single]


def check_coupling_inverse(ns: dict) -> None:
    """AffineCoupling: the forward map y = z exp(s) + t and its exact inverse.

    Grades the cell coupling-inverse-tests. K = 2, 3 and 5; four masks each (the two halves,
    alternating ones, a single 1); a conditioner g (tanh of a fixed linear map) whose t and s are
    nonzero on every coordinate and depend on every coordinate of its input; z with shapes [K],
    [4, K] and [3, 2, K] in float64 (and float32 on every device): _call(z) against
    z * exp((1 - m) s) + (1 - m) t with (t, s) = g(m * z) (rtol 1e-10 in float64, 1e-5 in
    float32), the kept coordinates unchanged, _inverse of a fresh copy of y against z and
    _call(_inverse(y)) against y. The log-determinant is coupling-log-det-tests'.
    """
    cls = ns["AffineCoupling"]
    gen = torch.Generator().manual_seed(3)
    for dev in devices():
        for K in (2, 3, 5):
            g = _toy_conditioner(K, seed=K)
            for mask in _masks(K):
                for shape, dtype in (((K,), torch.float64), ((4, K), torch.float64),
                                     ((3, 2, K), torch.float64), ((4, K), torch.float32)):
                    m = mask.to(device=dev, dtype=dtype)
                    z = torch.randn(shape, generator=gen, dtype=torch.float64).to(dev, dtype)
                    what = (f"AffineCoupling(mask={mask.int().tolist()}, g) on "
                            f"{str(dtype)[6:]} z of shape {list(shape)} on {dev}")
                    layer = _coupling_layer(cls, m, g, what)
                    y = _call(layer._call, (z.clone(),), f"{what}: _call(z)")
                    expect(torch.is_tensor(y), f"{what}: _call(z) should return a tensor")
                    expect_shape(y, shape, f"{what}: _call(z)", "y has the shape of z.")
                    t, s = g(m * z)
                    keep = 1 - m
                    ref = z * (keep * s).exp() + keep * t
                    tol = 1e-10 if dtype == torch.float64 else 1e-5
                    if not torch.allclose(y, ref, rtol=tol, atol=tol):
                        if not torch.allclose(y * m, z * m, rtol=tol, atol=tol):
                            hint = ("the coordinates with mask 1 changed: they pass through "
                                    "unchanged, so multiply t and s by (1 - mask).")
                        elif torch.allclose(y, z * (-keep * s).exp() + keep * t, rtol=tol,
                                            atol=tol):
                            hint = "y = z * exp(s) + t: the scale is exp(s), not exp(-s)."
                        elif torch.allclose(y, (z + keep * t) * (keep * s).exp(), rtol=tol,
                                            atol=tol):
                            hint = "y = z * exp(s) + t: scale first, then shift."
                        else:
                            t2, s2 = g(z)
                            unmasked_input = z * (keep * s2).exp() + keep * t2
                            hint = ("g reads z itself: it must read m * z only (the coordinates "
                                    "that pass through), or the inverse cannot recover t and s."
                                    if torch.allclose(y, unmasked_input, rtol=tol, atol=tol) else
                                    "y = z * exp(s) + t with (t, s) = (1 - m) * g(m * z).")
                        raise AssertionError(f"{what}: _call(z) is not the affine coupling: "
                                             f"{hint}")
                    y_copy = ref.detach().clone()  # a new tensor: no cached z to hand back
                    back = _call(layer._inverse, (y_copy,), f"{what}: _inverse(y)")
                    expect(torch.is_tensor(back) and back.shape == shape,
                           f"{what}: _inverse(y) should return a tensor of shape {list(shape)}")
                    if not torch.allclose(back, z, rtol=tol, atol=tol):
                        if torch.allclose(back, (y_copy - keep * t) * (keep * s).exp(), rtol=tol,
                                          atol=tol):
                            hint = "undo the scale with exp(-s): z = (y - t) * exp(-s)."
                        elif torch.allclose(back, y_copy * (-keep * s).exp() - keep * t,
                                            rtol=tol, atol=tol):
                            hint = "undo the shift first, then the scale: z = (y - t) * exp(-s)."
                        else:
                            hint = ("compute t and s from m * y (equal to m * z), then "
                                    "z = (y - t) * exp(-s).")
                        raise AssertionError(f"{what}: _inverse(_call(z)) is not z: {hint}")
                    again = _call(layer._call, (back.detach().clone(),), f"{what}: _call")
                    expect_close(again, y_copy, f"{what}: _call(_inverse(y))",
                                 "f and its inverse should undo each other.", rtol=tol, atol=tol)
    print("hidden tests passed")


def _coupling_reference(mask, g):
    """The affine coupling's forward map, written out: y = z exp((1 - m) s) + (1 - m) t."""
    def forward(z):
        t, s = g(mask * z)
        return z * ((1 - mask) * s).exp() + (1 - mask) * t
    return forward


def check_coupling_log_det(ns: dict) -> None:
    """AffineCoupling.log_abs_det_jacobian against the brute-force log-determinant.

    Grades the cell coupling-log-det-tests. K = 2, 3 and 5, the four masks of the inverse
    check and its kind of conditioner g (t and s nonzero on every coordinate), one vector [K]
    and batches [4, K] and [3, 2, K] in float64 on every device. The student's layer first
    runs ``_call(z)`` (a layer may keep what its log-determinant needs), then
    ``log_abs_det_jacobian(z, y)``: its shape (batch_shape) and its values against log |det|
    of torch.autograd.functional.jacobian of the coupling's forward map, the check's own, at
    each vector (rtol and atol 1e-9); so a mistake in the student's ``_call`` costs nothing
    here. Where the student's ``_inverse`` undoes the coupling (which coupling-inverse-tests
    grades), log q(y) of a TransformedDistribution with the layer against
    log N(z) - log |det J| (rtol and atol 1e-8).
    """
    from torch.autograd.functional import jacobian

    cls = ns["AffineCoupling"]
    gen = torch.Generator().manual_seed(4)
    for dev in devices():
        for K in (2, 3, 5):
            g = _toy_conditioner(K, seed=10 + K)
            for mask in _masks(K):
                m = mask.to(dev)
                forward = _coupling_reference(m, g)
                for batch in ((), (4,), (3, 2)):
                    what = (f"AffineCoupling(mask={mask.int().tolist()}, g).log_abs_det_jacobian"
                            f" for z of shape {list(batch) + [K]} on {dev}")
                    layer = _coupling_layer(cls, m, g, what)
                    z = torch.randn(*batch, K, generator=gen, dtype=torch.float64).to(dev)
                    y_ref = forward(z)
                    try:
                        y = layer._call(z)
                    except Exception:  # noqa: BLE001 -- coupling-inverse-tests reports it
                        y = y_ref
                    y = y if torch.is_tensor(y) and y.shape == z.shape else y_ref
                    ref = torch.stack([torch.linalg.slogdet(jacobian(forward, v)).logabsdet
                                       for v in z.reshape(-1, K)]).reshape(batch)
                    got = _call(layer.log_abs_det_jacobian, (z, y), what)
                    expect(torch.is_tensor(got), f"{what} should return a tensor")
                    if tuple(got.shape) == tuple(batch) + (K,):
                        raise AssertionError(
                            f"{what} has one value per coordinate, shape {list(got.shape)}: "
                            f"log |det J| of a vector is one number, the sum over its last "
                            f"dimension.")
                    expect_shape(got, batch, what, "One number per vector: sum over the last "
                                                   "dimension.")
                    if not torch.allclose(got, ref, rtol=1e-9, atol=1e-9):
                        t, s = g(m * z)
                        if torch.allclose(got, -ref, rtol=1e-9, atol=1e-9):
                            hint = ("this is minus log |det dy/dz|: the Jacobian's diagonal "
                                    "holds exp(s), so log |det| = + sum of s.")
                        elif torch.allclose(got, s.sum(-1), rtol=1e-9, atol=1e-9):
                            hint = ("the sum includes s on the coordinates with mask 1, which "
                                    "do not move: sum (1 - mask) * s.")
                        else:
                            hint = ("log |det dy/dz| = sum_k s_k over the coordinates that "
                                    "move, with (t, s) = g(m * z).")
                        raise AssertionError(f"{what} differs from log |det| of the Jacobian "
                                             f"of the coupling: {hint}")
                    back = _call(layer._inverse, (y_ref.detach().clone(),), f"{what}: _inverse")
                    if not (torch.is_tensor(back) and back.shape == z.shape
                            and torch.allclose(back, z, rtol=1e-9, atol=1e-9)):
                        continue  # a flow needs the inverse, which coupling-inverse-tests grades
                    base = td.Independent(td.Normal(torch.zeros(K, dtype=torch.float64,
                                                                 device=dev), 1.0), 1)
                    flow = td.TransformedDistribution(base, [_coupling_layer(cls, m, g, what)])
                    got = _call(flow.log_prob, (y_ref.detach().clone(),),
                                f"log q(y) of TransformedDistribution(N(0, I), [your layer]) "
                                f"for y of shape {list(batch) + [K]} on {dev}")
                    expect_close(got, base.log_prob(z) - ref,
                                 f"log q(y) of a flow with your layer, y of shape "
                                 f"{list(batch) + [K]} on {dev}",
                                 "TransformedDistribution computes log N(f^-1(y)) - "
                                 "log |det J(f^-1(y))| from your _inverse and "
                                 "log_abs_det_jacobian.", rtol=1e-8, atol=1e-8)
    print("hidden tests passed")


CHECKS = {
    "cb-normaliser-values-tests": check_cb_normaliser_values,
    "cb-normaliser-stability-tests": check_cb_normaliser_stability,
    "cb-log-prob-tests": check_cb_log_prob,
    "mixture-rsample-draws-tests": check_mixture_rsample_draws,
    "mixture-rsample-gradients-tests": check_mixture_rsample_gradients,
    "mixture-surrogate-tests": check_mixture_surrogate,
    "coupling-inverse-tests": check_coupling_inverse,
    "coupling-log-det-tests": check_coupling_log_det,
}
