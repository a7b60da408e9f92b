"""Hidden tests of dpm2_beyond: the continuous Bernoulli's normaliser and the log-density of a
grey-level image.

One check per graded test cell. The references are the checks' own: torch's
``td.ContinuousBernoulli`` in float64 where it is exact (logits of moderate size), and the
closed form log C = log(l / tanh(l / 2)) in float64 everywhere (torch clamps lambda to
[eps, 1 - eps], so its normaliser stops growing at |l| of about 16 in float32). The stability
check compares with the student's own values on moderate logits (which the values check
grades), so that a mistake there costs points once; cb_log_prob runs with the reference
normaliser in the notebook's namespace, for the same reason. An answer that calls torch's
continuous Bernoulli for what the exercise asks earns no points.
"""

import math
import types

import torch
import torch.distributions as td
import torch.nn.functional as F

from course.checks._common import known_mistake, references_in
from dpm_core.grading import devices, expect, expect_close, expect_shape

__all__ = ["CHECKS", "check_cb_normaliser_values", "check_cb_normaliser_stability",
           "check_cb_log_prob"]

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


CHECKS = {
    "cb-normaliser-values-tests": check_cb_normaliser_values,
    "cb-normaliser-stability-tests": check_cb_normaliser_stability,
    "cb-log-prob-tests": check_cb_log_prob,
}
