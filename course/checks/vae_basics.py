"""Hidden tests of vae_basics: the KL term, the reparameterisation trick and the loss.

One check per graded test cell; the loss checks run the student's ``loss_func`` with the
reference ``KL`` in the notebook's namespace, so that a KL mistake costs points once.
"""

import math

import numpy as np
import torch
import torch.distributions as td
import torch.nn.functional as F

from course.checks._common import known_mistake, references_in
from dpm_core.grading import devices, expect, expect_close
from dpm_core.kl import KL as KL_ref
from dpm_core.vae import loss_func as loss_func_ref

__all__ = ["CHECKS", "check_kl_formula", "check_kl_reduction", "check_reparametrise_distribution",
           "check_reparametrise_gradient", "check_loss_terms", "check_loss_batch"]


def _kl_formula_mistake(got, m, lv):
    """The known mistake whose per-coordinate formula gives `got` (all [N]), or None."""
    v = lv.exp()
    known = [
        (-0.5 * (v + m ** 2 - 1 - lv),
         "the sign is flipped: a KL divergence is never negative"),
        (0.5 * (v ** 2 + m ** 2 - 1 - 2 * lv),
         "exp(logvar) was used as the standard deviation, but it is the variance sigma^2"),
        (0.5 * (v ** 2 + m ** 2 - 1 - lv),
         "exp(logvar) was squared, as if it were the standard deviation; it is already sigma^2"),
        (0.5 * ((0.5 * lv).exp() + m ** 2 - 1 - lv),
         "sigma = exp(logvar / 2) stands where the formula needs sigma^2 = exp(logvar)"),
        (0.5 * (m.exp() + lv ** 2 - 1 - m),
         "mu and logvar are swapped"),
        (0.5 * (v + m ** 2 - lv),
         "the -1 is missing (KL(N(0, 1) || N(0, 1)) must be 0)"),
        (v + m ** 2 - 1 - lv,
         "the factor 1/2 is missing"),
        (0.5 * (1 / v + m ** 2 / v - 1 + lv),
         "this is KL(p || q) with the arguments swapped; the ELBO needs KL(q || p), "
         "the approximate posterior first (td.kl_divergence(q, p))"),
        (0.5 * (v - 1 - lv),
         "the mu^2 term is missing"),
        (0.5 * (v + m ** 2 - 1),
         "the -log sigma^2 term (-logvar) is missing"),
    ]
    return known_mistake(got, known, rtol=1e-3, atol=1e-4)


def _within(estimate, target, se):
    """Whether every estimate lies within 5 standard errors ``se`` of its target."""
    return bool(((estimate - target).abs() <= 5 * se).all())


def _kl_one_coordinate(KL, m, lv, device):
    """KL of each coordinate on its own: one call per entry of the 1-D m and lv, with inputs of
    shape [1, 1], so that whatever KL sums or averages over leaves that one number ([N])."""
    values = []
    for i in range(m.shape[0]):
        try:
            got = KL(m[i].reshape(1, 1), lv[i].reshape(1, 1))
        except RuntimeError as err:
            raise AssertionError(
                f"KL failed for inputs on {device}: {err}. Create constants on the inputs' "
                f"device (torch.zeros_like / torch.ones_like).") from None
        expect(torch.is_tensor(got), f"KL should return a torch.Tensor, got {type(got).__name__}")
        expect(got.numel() == 1, f"KL of one coordinate (inputs of shape [1, 1]) has shape "
                                 f"{list(got.shape)}; expected one number")
        expect(got.device.type == torch.device(device).type,
               f"KL returned a tensor on {got.device} for inputs on {device}: create constants "
               f"with torch.zeros_like / torch.ones_like, not torch.tensor(...)")
        values.append(got.reshape(()))
    return torch.stack(values)


def check_kl_formula(ns: dict) -> None:
    """Hidden tests of the KL formula (cell kl-formula-tests).

    The per-coordinate formula against dpm_core's closed form and torch.distributions' Normal-
    Normal KL, with its gradient, on every device. Each call gets one latent coordinate of one
    batch element (inputs of shape [1, 1]), so that this cell grades the formula whatever the
    reduction, and the next one the reduction. Exact comparisons: rtol 1e-4, atol 1e-5; a known
    mistake is recognised with rtol 1e-3, atol 1e-4.
    """
    KL = ns["KL"]
    gen = torch.Generator().manual_seed(0)
    m0 = 4 * torch.rand(64, generator=gen) - 2  # means in [-2, 2]
    lv0 = 3.5 * torch.rand(64, generator=gen) - 2  # log-variances in [-2, 1.5]
    for device in devices():
        m = m0.to(device).clone().requires_grad_()
        lv = lv0.to(device).clone().requires_grad_()
        got = _kl_one_coordinate(KL, m, lv, device)  # [64]
        ref = KL_ref(m.unsqueeze(-1), lv.unsqueeze(-1))  # [64]
        if not torch.allclose(got, ref, rtol=1e-4, atol=1e-5):
            why = _kl_formula_mistake(got.detach(), m.detach(), lv.detach())
            worst = (got - ref).abs().max().item()
            raise AssertionError(
                f"KL differs from 0.5 * (sigma^2 + mu^2 - 1 - log sigma^2) by up to {worst:.4g} "
                f"(on {device}): " + (why or "check each term; sigma^2 = exp(logvar) and "
                                             "log sigma^2 = logvar"))
        q = td.Normal(m, (0.5 * lv).exp())
        p = td.Normal(torch.zeros_like(m), torch.ones_like(m))
        expect_close(got.detach(), td.kl_divergence(q, p).detach(), "KL",
                     "it should agree with td.kl_divergence of two td.Normal objects")
        expect(got.requires_grad, "KL carries no gradient: did you use .detach(), .item(), "
                                  "torch.no_grad() or NumPy? The loss needs its gradient.")
        g_m, g_lv = torch.autograd.grad(got.sum(), [m, lv], allow_unused=True)
        expect(g_m is not None and g_lv is not None,
               "no gradient reaches mu or logvar: is part of the formula detached or constant?")
        expect_close(g_m, m.detach(), "d KL / d mu", "it should be mu")
        expect_close(g_lv, 0.5 * (lv.detach().exp() - 1), "d KL / d logvar",
                     "it should be (exp(logvar) - 1) / 2")
    print("Hidden tests of the KL formula passed.")


def check_kl_reduction(ns: dict) -> None:
    """Hidden tests of the KL reduction (cell kl-reduction-tests).

    Structured batch shapes on every device. The reduction is graded on its own: KL of [..., K]
    inputs must be the sum over the last dimension of your own per-coordinate values (KL of the
    numbers one at a time, as [1, 1] inputs), rtol 1e-4, atol 1e-5. Where your per-coordinate
    formula is right, the result must also agree with dpm_core's KL and with td.kl_divergence
    of td.Independent(td.Normal(...), 1) distributions, diagonal Gaussians over the last
    dimension.
    """
    KL = ns["KL"]
    gen = torch.Generator().manual_seed(1)
    for device in devices():
        for shape in [(3, 5, 4), (7, 2), (6, 1)]:
            mu = (1.5 * torch.randn(shape, generator=gen)).to(device)
            lv = torch.randn(shape, generator=gen).to(device)
            got = KL(mu, lv)
            batch = list(shape[:-1])
            expect(torch.is_tensor(got), "KL should return a torch.Tensor, got "
                                         f"{type(got).__name__}")
            if list(got.shape) != batch:
                if list(got.shape) == list(shape):
                    why = "sum the per-coordinate terms over the latent dimension (the last one)"
                elif got.dim() == 0:
                    why = "you reduced over everything; return one KL per batch element"
                elif len(shape) == 3 and list(got.shape) == [shape[0], shape[2]]:
                    why = ("you summed over dim 1, which is the latent dimension only of 2-D "
                           "inputs; "
                           "sum over the last dimension, .sum(-1)")
                else:
                    why = "sum over the last dimension only"
                raise AssertionError(f"KL of inputs of shape {list(shape)} has shape "
                                     f"{list(got.shape)}, expected {batch}: {why}")
            expect(bool(torch.isfinite(got).all()),
                   f"KL of finite inputs of shape {list(shape)} returned inf or NaN")
            # your own per-coordinate values, so that a formula mistake is not charged here again
            each = _kl_one_coordinate(KL, mu.reshape(-1), lv.reshape(-1), device).reshape(shape)
            expect(bool(each.std() > 0), "KL gives the same value whatever mu and logvar are: "
                                         "it must compute the divergence from them")
            K = shape[-1]
            if K > 1 and torch.allclose(got, each.mean(-1), rtol=1e-4, atol=1e-5):
                raise AssertionError("KL is the mean over the latent coordinates; the coordinates "
                                     "are independent, so their KLs add up: take the sum")
            expect_close(got, each.sum(-1), f"KL of inputs of shape {list(shape)}",
                         "it should be the sum over the last dimension of the per-coordinate KLs")
            ref_each = KL_ref(mu.unsqueeze(-1), lv.unsqueeze(-1))
            if torch.allclose(each, ref_each, rtol=1e-4, atol=1e-5):
                expect_close(got, KL_ref(mu, lv), f"KL of inputs of shape {list(shape)}",
                             "compare with dpm_core's KL")
                q = td.Independent(td.Normal(mu, (0.5 * lv).exp()), 1)
                p = td.Independent(td.Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
                expect_close(got, td.kl_divergence(q, p), f"KL of inputs of shape {list(shape)}",
                             "it should agree with td.kl_divergence of two diagonal Gaussians")
    print("Hidden tests of the KL reduction passed.")


def check_reparametrise_distribution(ns: dict) -> None:
    """Hidden tests of the distribution of z (cell reparametrise-distribution-tests).

    z = mu + sigma * eps in distribution, on every device. Seed 0 (torch.manual_seed before the
    draw), n = 20000 draws of each of the 3 * 5 * 4 = 60 coordinates, means in [-2, 2] and log-
    variances in [-2, 2]. Tolerances, each 5 standard errors: sample means within 5 sigma /
    sqrt(n) of mu; sample variances within 5 sigma^2 sqrt(2 / (n - 1)) of sigma^2; the fraction
    of |z - mu| < sigma within 5 sqrt(p (1 - p) / (60 n)) of p = 0.6827; correlations of
    neighbouring coordinates within 5 / sqrt(n) of 0. With the seed fixed the CPU run is
    deterministic; with another generator (CUDA) a false failure has probability below 1e-4.
    """
    reparametrise = ns["reparametrise"]
    n, shape = 20000, (3, 5, 4)
    mu0 = torch.linspace(-2, 2, 60).reshape(shape)
    lv0 = torch.linspace(-2, 2, 60)[torch.randperm(60, generator=torch.Generator().manual_seed(0))]
    lv0 = lv0.reshape(shape)




    for device in devices():
        mu = mu0.to(device).expand(n, *shape).clone()
        lv = lv0.to(device).expand(n, *shape).clone()
        torch.manual_seed(0)
        try:
            z = reparametrise(mu, lv)
        except RuntimeError as err:
            raise AssertionError(f"reparametrise failed for inputs on {device}: {err}. Noise made "
                                 f"with torch.randn(shape) lives on the CPU; torch.randn_like(mu) "
                                 f"makes it on the device of mu.") from None
        expect(torch.is_tensor(z) and tuple(z.shape) == (n, *shape),
               f"z should be a tensor with the shape of mu, {[n, *shape]}, got "
               f"{list(z.shape) if torch.is_tensor(z) else type(z).__name__}")
        expect(z.device.type == torch.device(device).type,
               f"z is on {z.device} for inputs on {device}: make the noise with "
               "torch.randn_like(mu)")
        expect(z.dtype == mu.dtype, f"z has dtype {z.dtype} but mu has {mu.dtype}: make the noise "
                                    f"with torch.randn_like(mu) (NumPy draws are float64)")
        expect(not torch.equal(reparametrise(mu[:2], lv[:2]), reparametrise(mu[:2], lv[:2])),
               "two calls returned the same z: draw fresh noise on every call")
        zd = z.detach().double()
        m, v = mu0.double().to(device), lv0.double().exp().to(device)
        mean, var = zd.mean(0), zd.var(0)
        if var.max() < 1e-10:
            raise AssertionError("z does not vary between draws: did you return mu, or draw one "
                                 "eps and reuse it across the batch? Draw one eps per element "
                                 "with torch.randn_like(mu).")
        if not _within(mean, m, (var / n).sqrt()):  # standard errors from the draws
            if torch.allclose(mean, lv0.double().to(device), atol=0.1):
                raise AssertionError("the mean of z is logvar, not mu: mu and logvar are swapped")
            raise AssertionError("the sample mean of z differs from mu by more than 5 standard "
                                 "errors "
                                 "(20000 draws): is eps standard normal (torch.randn_like, not "
                                 "torch.rand_like) and z = mu + sigma * eps?")
        if not _within(var, v, v * math.sqrt(2 / (n - 1))):
            known = [
                (v ** 2, "the variance of z is exp(logvar)^2: std = logvar.exp() is the variance; "
                         "the standard deviation is exp(0.5 * logvar) (or logvar.exp().sqrt())"),
                (torch.ones_like(v), "the variance of z is 1: eps is not scaled by the standard "
                                     "deviation exp(0.5 * logvar)"),
                (lv0.double().to(device) ** 2,
                 "the variance of z is logvar^2: logvar was used as the standard deviation; "
                 "sigma = exp(0.5 * logvar)"),
                (v.sqrt(), "the variance of z is sigma, not sigma^2: the standard deviation is "
                           "exp(0.5 * logvar), taken once"),
            ]
            for target, message in known:
                if _within(var, target, target * math.sqrt(2 / (n - 1))):
                    raise AssertionError(message)
            raise AssertionError("the sample variance of z differs from exp(logvar) by more than 5 "
                                 "standard errors (20000 draws): z = mu + exp(0.5 * logvar) * eps")
        p = 0.6827  # P(|eps| < 1) for a standard normal eps
        frac = ((zd - m).abs() < v.sqrt()).double().mean().item()
        expect(abs(frac - p) <= 5 * math.sqrt(p * (1 - p) / (60 * n)),
               f"{frac:.3f} of the draws lie within one sigma of mu, a standard normal puts 0.683 "
               f"there: eps should be standard normal (torch.randn_like)")
        std = (zd - mean) / var.sqrt()
        corr = torch.cat([(std[..., 0] * std[..., 1]).mean(0).flatten(),  # across coordinates
                           (std[:, 0] * std[:, 1]).mean(0).flatten()])  # across batch elements
        expect(bool((corr.abs() <= 5 / math.sqrt(n)).all()),
               "coordinates of z are correlated: draw independent noise for every element "
               "(torch.randn_like(mu)), not one eps shared by several coordinates")
    print("Hidden tests of the distribution of z passed.")


def _draw_with_state(reparametrise, mu, logvar, state):
    """reparametrise(mu, logvar) with torch's and NumPy's random state set to ``state`` first,
    so that every call with the same state draws the same noise."""
    cpu, cuda, numpy_state = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(numpy_state)
    return reparametrise(mu, logvar)


def check_reparametrise_gradient(ns: dict) -> None:
    """Hidden tests of the gradients of z (cell reparametrise-gradient-tests).

    On every device, a structured batch [3, 5, 4] in float64: z carries a gradient to mu and to
    logvar, and autograd's dz/dmu and dz/dlogvar equal the derivatives of your own z as a
    function of mu and logvar for fixed noise, measured by central finite differences (step
    1e-6, the random state restored before each draw; rtol 1e-5, atol 1e-6). What z's
    distribution should be is graded by the previous cell, so a wrong formula for z is not
    charged here again: a pathwise gradient is right when it is the derivative of the sampling
    path, and then its average is unbiased for the gradient of E[f(z)].
    """
    reparametrise = ns["reparametrise"]
    h = 1e-6
    for device in devices():
        mu = torch.linspace(-1.5, 1.5, 60, dtype=torch.float64, device=device).reshape(3, 5, 4)
        lv = torch.linspace(1.0, -2.0, 60, dtype=torch.float64, device=device).reshape(3, 5, 4)
        mu, lv = mu.requires_grad_(), lv.requires_grad_()
        state = (torch.get_rng_state(),
                 torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                 np.random.get_state())
        z = _draw_with_state(reparametrise, mu, lv, state)
        expect(torch.is_tensor(z) and tuple(z.shape) == tuple(mu.shape),
               f"z should be a tensor with the shape of mu, {list(mu.shape)}, got "
               f"{list(z.shape) if torch.is_tensor(z) else type(z).__name__}")
        expect(z.requires_grad,
               "z carries no gradient: .sample() (like .detach(), torch.no_grad() or NumPy) cuts "
               "the "
               "path from z back to mu and logvar; write z = mu + std * eps with "
               "eps = torch.randn_like(mu), or use .rsample()")
        g_mu, g_lv = torch.autograd.grad(z.sum(), [mu, lv], allow_unused=True)
        with torch.no_grad():
            fd_mu = (_draw_with_state(reparametrise, mu + h, lv, state)
                     - _draw_with_state(reparametrise, mu - h, lv, state)) / (2 * h)
            fd_lv = (_draw_with_state(reparametrise, mu, lv + h, state)
                     - _draw_with_state(reparametrise, mu, lv - h, state)) / (2 * h)
        for name, g, fd in (("mu", g_mu, fd_mu), ("logvar", g_lv, fd_lv)):
            fd = fd.to(z.dtype)
            # no gradient is right only where z does not depend on the input at all (a wrong
            # formula for z, which the previous cell charges)
            if g is None and not torch.allclose(fd, torch.zeros_like(fd), atol=1e-6):
                raise AssertionError(f"no gradient reaches {name}, yet z changes with {name}: is "
                                     f"the standard deviation or {name} detached?")
            g = torch.zeros_like(fd) if g is None else g
            if not torch.allclose(g, fd, rtol=1e-5, atol=1e-6):
                raise AssertionError(
                    f"autograd's dz/d{name} differs from how z changes when {name} changes with "
                    "the "
                    f"noise fixed (by up to {(g - fd).abs().max().item():.3g}, on {device}): part "
                    "of "
                    f"the path from {name} to z is detached, or computed outside torch")
    print("Hidden tests of the gradients of z passed.")


def _as_loss(value):
    """The loss as a tensor: a Python number (``.item()``, graded by loss-terms-tests) becomes a
    0-d CPU tensor, so that the batch reduction is graded on its own."""
    if torch.is_tensor(value):
        return value
    try:
        return torch.tensor(float(value))
    except (TypeError, ValueError):
        raise AssertionError(f"loss_func should return a torch.Tensor, got "
                             f"{type(value).__name__}") from None


def check_loss_terms(ns: dict) -> None:
    """Hidden tests of the terms of the loss (cell loss-terms-tests).

    The two terms of the negative ELBO for single images (N = 1, so that the batch reduction
    does not matter here; the next cell grades it), on every device, against dpm_core's
    loss_func and against torch.distributions (td.Bernoulli log-likelihood plus
    td.kl_divergence), values and gradients with respect to recon_x, mu and logvar (rtol 1e-4,
    atol 1e-4). Your loss_func runs with the reference KL in place of yours, so that a KL
    mistake is counted once.
    """
    loss_func = ns["loss_func"]
    # loss_func calls KL from the notebook's namespace: the reference, while this check runs
    with references_in(ns, KL=KL_ref):
        gen = torch.Generator().manual_seed(2)
        D, K = 20, 3
        for device in devices():
            for _ in range(4):
                r = (0.05 + 0.9 * torch.rand(1, D, generator=gen)).to(device).requires_grad_()
                x = torch.bernoulli(torch.full((1, D), 0.5), generator=gen).to(device)
                mu = torch.randn(1, K, generator=gen).to(device).requires_grad_()
                lv = torch.randn(1, K, generator=gen).to(device).requires_grad_()
                got = loss_func(r, x, mu, lv)
                expect(torch.is_tensor(got),
                       f"loss_func should return a torch.Tensor, got {type(got).__name__}: "
                       f".item() or float() cut the loss off from its gradient")
                expect(got.numel() == 1, f"the loss of one image should be one number, got shape "
                                         f"{list(got.shape)}")
                got = got.reshape(())
                ref = loss_func_ref(r, x, mu, lv)
                if not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
                    with torch.no_grad():
                        nll = F.binary_cross_entropy(r, x, reduction="none").sum(-1)[0]
                        kl = KL_ref(mu, lv)[0]
                        known = [
                            (nll, "the KL term is missing: the loss is -log p(x|z) + KL(q(z|x) || "
                                  "p(z))"),
                            (nll - kl, "the KL term has the wrong sign: the loss is -log p(x|z) + "
                                       "KL"),
                            (-(nll + kl), "this is the ELBO; the loss to minimise is the negative "
                                          "ELBO"),
                            (-nll + kl, "the reconstruction term has the wrong sign: the binary "
                                        "cross-entropy already is -log p(x|z)"),
                            (nll / D + kl, "the binary cross-entropy is averaged over the pixels "
                                           "(F.binary_cross_entropy's default reduction='mean'); "
                                             "sum it over the pixels of each image"),
                            (nll + kl / K,
                             "the KL is averaged over the latent coordinates; sum it"),
                            (F.binary_cross_entropy(x, r, reduction="none").sum(-1)[0] + kl,
                             "recon_x and x are swapped: F.binary_cross_entropy(recon_x, x) takes "
                             "the "
                             "probabilities first and the binary targets second"),
                            (F.binary_cross_entropy_with_logits(r, x, reduction="none").sum(-1)[0]
                             + kl,
                             "recon_x holds probabilities (the decoder ends in a sigmoid), not "
                             "logits: "
                             "use F.binary_cross_entropy, not binary_cross_entropy_with_logits"),
                            (nll + KL_ref(lv, mu)[0],
                             "the arguments of KL are swapped: KL(mu, logvar)"),
                        ]
                    why = known_mistake(got, known, rtol=1e-3, atol=1e-3,
                                        default="check both terms: the binary cross-entropy summed "
                                                "over pixels, plus the KL summed over latent "
                                                "coordinates")
                    raise AssertionError(f"the loss of one image is {got.item():.4f}, expected "
                                         f"{ref.item():.4f} (on {device}): {why}")
                px = td.Independent(td.Bernoulli(probs=r), 1)
                qz = td.Independent(td.Normal(mu, (0.5 * lv).exp()), 1)
                pz = td.Independent(td.Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
                expected = (-px.log_prob(x) + td.kl_divergence(qz, pz)).mean()
                expect_close(got, expected, "the loss of one image", "it should agree with "
                             "torch.distributions: -Bernoulli log-likelihood + KL", atol=1e-4)
                expect(got.requires_grad, "the loss carries no gradient: is something detached, or "
                                          "computed under torch.no_grad() or in NumPy?")
                grads = torch.autograd.grad(got, [r, mu, lv], allow_unused=True)
                refs = torch.autograd.grad(ref, [r, mu, lv])
                for name, g, gr in zip(["recon_x", "mu", "logvar"], grads, refs):
                    expect(g is not None, f"no gradient of the loss reaches {name}")
                    expect_close(g, gr, f"the gradient of the loss with respect to {name}",
                                 "is part of the loss detached?", atol=1e-4)
    print("Hidden tests of the terms of the loss passed.")


def check_loss_batch(ns: dict) -> None:
    """Hidden tests of the batch reduction (cell loss-batch-tests).

    The batch convention, on every device and independent of the terms graded above: the loss of
    a batch of N = 8 images is a scalar, equal to the mean of the losses of its images, and does
    not change when the batch is repeated (rtol 1e-4, atol 1e-4). Run with the reference KL.
    """
    loss_func = ns["loss_func"]
    with references_in(ns, KL=KL_ref):
        gen = torch.Generator().manual_seed(3)
        N, D, K = 8, 20, 3
        for device in devices():
            r = (0.05 + 0.9 * torch.rand(N, D, generator=gen)).to(device)
            x = torch.bernoulli(torch.full((N, D), 0.5), generator=gen).to(device)
            mu = torch.randn(N, K, generator=gen).to(device)
            lv = torch.randn(N, K, generator=gen).to(device)
            got = _as_loss(loss_func(r, x, mu, lv))
            if got.dim() != 0:
                if list(got.shape) == [N]:
                    raise AssertionError(f"loss_func returns one value per image (shape [{N}]); "
                                         f"average them over the batch to get a scalar")
                raise AssertionError("the loss of a batch should be a scalar (shape []), got "
                                     "shape "
                                     f"{list(got.shape)}: sum over pixels and latent coordinates "
                                     f"per image, then average over the images")
            each = torch.stack([_as_loss(loss_func(r[i:i + 1], x[i:i + 1], mu[i:i + 1],
                                                   lv[i:i + 1])).reshape(()) for i in range(N)])
            expect(bool(torch.isfinite(each).all()),
                   "loss_func returned inf or NaN for finite inputs")
            expect(bool(each.std() > 0), "loss_func gives the same loss for every image: it "
                                         "must compute it from recon_x, x, mu and logvar")
            if not torch.allclose(got, each.mean(), rtol=1e-4, atol=1e-4):
                if torch.allclose(got, each.sum(), rtol=1e-4, atol=1e-4):
                    raise AssertionError(
                        "the loss is summed over the batch. The convention here is the mean over "
                        "the "
                        "batch (the negative ELBO per image), so that the loss and a good learning "
                        "rate do not depend on the batch size")
                raise AssertionError(f"the loss of a batch ({got.item():.4f}) should be the mean "
                                     "of "
                                     f"the losses of its images ({each.mean().item():.4f}): reduce "
                                     f"each image with sums, then take the mean over the images")
            twice = _as_loss(loss_func(r.repeat(2, 1), x.repeat(2, 1), mu.repeat(2, 1),
                                       lv.repeat(2, 1)))
            expect_close(twice.reshape(()), got, "the loss of the batch repeated twice",
                         "the mean over the batch does not change when the batch is repeated",
                         atol=1e-4)
    print("Hidden tests of the batch reduction passed.")


CHECKS = {
    "kl-formula-tests": check_kl_formula,
    "kl-reduction-tests": check_kl_reduction,
    "reparametrise-distribution-tests": check_reparametrise_distribution,
    "reparametrise-gradient-tests": check_reparametrise_gradient,
    "loss-terms-tests": check_loss_terms,
    "loss-batch-tests": check_loss_batch,
}
