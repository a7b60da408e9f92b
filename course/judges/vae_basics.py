"""Judges of vae_basics: the KL terms, the reparameterisation trick and the loss.

One judge per graded test cell. Each draws its inputs from the run's generator, has the
probe call the student's function in the kernel, and compares what comes back with
``dpm_core``'s references and torch.distributions here, outside the kernel. The loss judges
run the student's ``loss_func`` with a stand-in for ``KL`` that returns the reference's
values (and gradients), so that a KL mistake costs points once.
"""

from __future__ import annotations

import math

import torch
import torch.distributions as td
import torch.nn.functional as F

from course.judges._common import (Probe, call, draw_seed, expanded, expect, expect_close,
                                   kind_of, known_mistake, leaf, returned, statistical,
                                   tensor_value)
from dpm_core.kl import KL as KL_ref
from dpm_core.kl import KL_full as KL_full_ref
from dpm_core.vae import loss_func as loss_func_ref

__all__ = ["JUDGES", "kl_formula", "kl_reduction", "kl_full_value", "kl_full_batch",
           "reparametrise_distribution",
           "reparametrise_gradient", "loss_terms", "loss_batch"]


def _kl_formula_mistake(got, m, lv):
    """The known mistake whose per-coordinate formula gives ``got`` (all [N]), or None."""
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


def _within(estimate, target, se) -> bool:
    """Whether every estimate lies within 5 standard errors ``se`` of its target (NaN: no)."""
    return bool(((estimate - target).abs() <= 5 * se).all())


def _one_coordinate_calls(m, lv, device, grad: bool = False) -> list:
    """One call of KL per entry of the 1-D m and lv, with inputs of shape [1, 1], so that
    whatever KL sums or averages over leaves that one number."""
    if grad:
        return [call("KL", leaf(m[i].reshape(1, 1)), leaf(lv[i].reshape(1, 1)), device=device,
                     grad=(0, 1)) for i in range(m.shape[0])]
    return [call("KL", m[i].reshape(1, 1), lv[i].reshape(1, 1), device=device)
            for i in range(m.shape[0])]


def _one_coordinate_values(results: list, device: str) -> torch.Tensor:
    """The numbers of :func:`_one_coordinate_calls`' results ([N]), each checked."""
    values = []
    for result in results:
        got = returned(result, "KL", f"KL failed for inputs on {device}: create constants on "
                                     f"the inputs' device (torch.zeros_like / torch.ones_like)")
        got = tensor_value(got, "KL")
        expect(got.data.numel() == 1, f"KL of one coordinate (inputs of shape [1, 1]) has shape "
                                      f"{list(got.shape)}; expected one number")
        expect(got.device.split(":")[0] == device,
               f"KL returned a tensor on {got.device} for inputs on {device}: create constants "
               f"with torch.zeros_like / torch.ones_like, not torch.tensor(...)")
        values.append(got.data.reshape(()).float())
    return torch.stack(values)


def kl_formula(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the KL formula (cell kl-formula-tests).

    The per-coordinate formula against dpm_core's closed form and torch.distributions' Normal-
    Normal KL, with its gradient, on every device. Each call gets one latent coordinate of one
    batch element (inputs of shape [1, 1]), so that this cell grades the formula whatever the
    reduction, and the next one the reduction. 64 means in [-2, 2] and log-variances in
    [-2, 1.5], drawn for each run. Exact comparisons: rtol 1e-4, atol 1e-5; a known mistake is
    recognised with rtol 1e-3, atol 1e-4.
    """
    m = 4 * torch.rand(64, generator=rng) - 2
    lv = 3.5 * torch.rand(64, generator=rng) - 2
    for device in probe.devices:
        results = probe.run(_one_coordinate_calls(m, lv, device, grad=True))
        got = _one_coordinate_values(results, device)
        ref = KL_ref(m.unsqueeze(-1), lv.unsqueeze(-1))
        if not torch.allclose(got, ref, rtol=1e-4, atol=1e-5):
            why = _kl_formula_mistake(got, m, lv)
            worst = (got - ref).abs().max().item()
            raise AssertionError(
                f"KL differs from 0.5 * (sigma^2 + mu^2 - 1 - log sigma^2) by up to {worst:.4g} "
                f"(on {device}): " + (why or "check each term; sigma^2 = exp(logvar) and "
                                             "log sigma^2 = logvar"))
        q = td.Normal(m, (0.5 * lv).exp())
        p = td.Normal(torch.zeros_like(m), torch.ones_like(m))
        expect_close(got, td.kl_divergence(q, p), "KL",
                     "it should agree with td.kl_divergence of two td.Normal objects")
        expect(all(r["value"].requires_grad for r in results),
               "KL carries no gradient: did you use .detach(), .item(), torch.no_grad() or NumPy? "
               "The loss needs its gradient.")
        grads = [r["grads"] for r in results]
        expect(all(isinstance(g, list) and g[0] is not None and g[1] is not None for g in grads),
               "no gradient reaches mu or logvar: is part of the formula detached or constant?")
        g_m = torch.stack([g[0].data.reshape(()).float() for g in grads])
        g_lv = torch.stack([g[1].data.reshape(()).float() for g in grads])
        expect_close(g_m, m, "d KL / d mu", "it should be mu")
        expect_close(g_lv, 0.5 * (lv.exp() - 1), "d KL / d logvar",
                     "it should be (exp(logvar) - 1) / 2")
    return "Hidden tests of the KL formula passed."


_SHAPES = [(3, 5, 4), (7, 2), (6, 1)]


def kl_reduction(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the KL reduction (cell kl-reduction-tests).

    Structured batch shapes on every device. The reduction is graded on its own: KL of [..., K]
    inputs must be the sum over the last dimension of your own per-coordinate values (KL of the
    numbers one at a time, as [1, 1] inputs), rtol 1e-4, atol 1e-5. Where your per-coordinate
    formula is right, the result must also agree with dpm_core's KL and with td.kl_divergence
    of td.Independent(td.Normal(...), 1) distributions, diagonal Gaussians over the last
    dimension.
    """
    inputs = [(1.5 * torch.randn(shape, generator=rng), torch.randn(shape, generator=rng))
              for shape in _SHAPES]
    for device in probe.devices:
        ops = [call("KL", mu, lv, device=device) for mu, lv in inputs]
        for mu, lv in inputs:
            ops += _one_coordinate_calls(mu.reshape(-1), lv.reshape(-1), device)
        results = probe.run(ops)
        whole, singles = results[:len(inputs)], results[len(inputs):]
        for shape, (mu, lv), result in zip(_SHAPES, inputs, whole):
            count = mu.numel()
            each_results, singles = singles[:count], singles[count:]
            got = tensor_value(returned(result, "KL"), "KL").data.float()
            batch = list(shape[:-1])
            if list(got.shape) != batch:
                if list(got.shape) == list(shape):
                    why = "sum the per-coordinate terms over the latent dimension (the last one)"
                elif got.dim() == 0:
                    why = "you reduced over everything; return one KL per batch element"
                elif len(shape) == 3 and list(got.shape) == [shape[0], shape[2]]:
                    why = ("you summed over dim 1, which is the latent dimension only of 2-D "
                           "inputs; sum over the last dimension, .sum(-1)")
                else:
                    why = "sum over the last dimension only"
                raise AssertionError(f"KL of inputs of shape {list(shape)} has shape "
                                     f"{list(got.shape)}, expected {batch}: {why}")
            expect(bool(torch.isfinite(got).all()),
                   f"KL of finite inputs of shape {list(shape)} returned inf or NaN")
            # your own per-coordinate values, so that a formula mistake is not charged here again
            each = _one_coordinate_values(each_results, device).reshape(shape)
            expect(bool(each.std() > 0), "KL gives the same value whatever mu and logvar are: "
                                         "it must compute the divergence from them")
            if shape[-1] > 1 and torch.allclose(got, each.mean(-1), rtol=1e-4, atol=1e-5):
                raise AssertionError("KL is the mean over the latent coordinates; the coordinates "
                                     "are independent, so their KLs add up: take the sum")
            expect_close(got, each.sum(-1), f"KL of inputs of shape {list(shape)}",
                         "it should be the sum over the last dimension of the per-coordinate KLs")
            if torch.allclose(each, KL_ref(mu.unsqueeze(-1), lv.unsqueeze(-1)), rtol=1e-4,
                              atol=1e-5):
                expect_close(got, KL_ref(mu, lv), f"KL of inputs of shape {list(shape)}",
                             "compare with dpm_core's KL")
                q = td.Independent(td.Normal(mu, (0.5 * lv).exp()), 1)
                p = td.Independent(td.Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
                expect_close(got, td.kl_divergence(q, p), f"KL of inputs of shape {list(shape)}",
                             "it should agree with td.kl_divergence of two diagonal Gaussians")
    return "Hidden tests of the KL reduction passed."


def _cholesky_factor(rng: torch.Generator, *shape: int) -> torch.Tensor:
    """A random lower-triangular factor ``[*shape, K, K]`` (``shape`` ends with K): off-diagonal
    entries 0.6 N(0, 1), diagonal uniform in [0.5, 1.5]."""
    off = (0.6 * torch.randn(*shape, shape[-1], generator=rng)).tril(-1)
    return off + torch.diag_embed(0.5 + torch.rand(*shape, generator=rng))


def _gauss_kl(mu_q, S_q, mu_p, S_p) -> torch.Tensor:
    """KL(N(mu_q, S_q) || N(mu_p, S_p)) from covariance matrices, in float64."""
    q = td.MultivariateNormal(mu_q.double(), covariance_matrix=S_q.double())
    p = td.MultivariateNormal(mu_p.double(), covariance_matrix=S_p.double())
    return td.kl_divergence(q, p)


def _kl_full_mistake(got, cases) -> str | None:
    """The known mistake whose formula gives ``got`` ([N], one per single-Gaussian case)."""
    def each(f):
        return torch.stack([f(*(t.double() for t in case)) for case in cases])

    def logdets(mu_q, L_q, mu_p, L_p):
        return torch.logdet(L_p @ L_p.mT) - torch.logdet(L_q @ L_q.mT)

    def trace(A, B):  # tr(A^{-1} B)
        return torch.linalg.solve(A, B).diagonal(dim1=-2, dim2=-1).sum(-1)

    ref = each(lambda mq, Lq, mp, Lp: _gauss_kl(mq, Lq @ Lq.mT, mp, Lp @ Lp.mT))
    K = torch.tensor([float(case[0].shape[-1]) for case in cases], dtype=torch.float64)
    known = [
        (each(lambda mq, Lq, mp, Lp: _gauss_kl(mp, Lp @ Lp.mT, mq, Lq @ Lq.mT)),
         "this is KL(p || q): the arguments are swapped; the first Gaussian, q, is the one the "
         "expectation is under"),
        (ref + K / 2, "the -K term is missing (KL(q || q) must be 0)"),
        (2 * ref, "the factor 1/2 is missing"),
        (ref - each(logdets) / 4, "log det Sigma = 2 sum_k log L_kk: the log-determinant of L "
                                  "is half that of Sigma = L L^T"),
        (ref - each(logdets), "the log-determinants have the wrong signs: the formula has "
                              "+ log det Sigma_p - log det Sigma_q"),
        (each(lambda mq, Lq, mp, Lp: _gauss_kl(mq, Lq @ Lq.mT, mp, Lp.mT @ Lp)),
         "Sigma_p = L_p L_p^T, not L_p^T L_p: a factor is transposed (it is lower triangular)"),
        (each(lambda mq, Lq, mp, Lp: _gauss_kl(mq, Lq.mT @ Lq, mp, Lp.mT @ Lp)),
         "Sigma = L L^T, not L^T L: the factors are transposed (they are lower triangular)"),
        (each(lambda mq, Lq, mp, Lp: _gauss_kl(mq, Lq @ Lq.mT, mp, torch.diag(Lp.diagonal() ** 2))),
         "only the diagonal of L_p is used: the factors are lower triangular, so the solves "
         "need upper=False"),
        (ref + each(lambda mq, Lq, mp, Lp: trace(Lq @ Lq.mT, Lp @ Lp.mT)
                    - trace(Lp @ Lp.mT, Lq @ Lq.mT)) / 2,
         "the trace term inverts the wrong matrix: it is tr(Sigma_p^{-1} Sigma_q), i.e. "
         "L_p^{-1} L_q"),
        (ref + each(lambda mq, Lq, mp, Lp: torch.linalg.solve(Lp, Lq).diagonal().sum()
                    - trace(Lp @ Lp.mT, Lq @ Lq.mT)) / 2,
         "tr(Sigma_p^{-1} Sigma_q) is the squared Frobenius norm of M = L_p^{-1} L_q (the sum "
         "of the squares of all its entries), not the trace of M"),
        (ref - each(lambda mq, Lq, mp, Lp: (mp - mq) @ torch.linalg.solve(Lp @ Lp.mT, mp - mq))
         / 2, "the quadratic form (mu_p - mu_q)^T Sigma_p^{-1} (mu_p - mu_q) is missing"),
    ]
    return known_mistake(got.double(), known, rtol=1e-3, atol=1e-3)


def kl_full_value(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the full-covariance KL (cell kl-full-value-tests).

    Single Gaussians (inputs [K] and [K, K], no leading dimensions, so that this cell grades
    the formula and the next one the batching), two for each K in 1 to 4, on every device:
    means N(0, 1), factors lower triangular with off-diagonal entries 0.6 N(0, 1) and a diagonal
    in [0.5, 1.5], drawn for each run. The values against dpm_core's KL_full and
    td.kl_divergence of two td.MultivariateNormal (rtol 1e-4, atol 1e-4, float32 inputs), and
    the gradients with respect to the means and the lower triangles of the factors against
    torch's (rtol 1e-3, atol 1e-4; the upper triangles are not parameters of a Cholesky
    factor). A known mistake is recognised with rtol 1e-3, atol 1e-3.
    """
    cases = [(torch.randn(K, generator=rng), _cholesky_factor(rng, K),
              torch.randn(K, generator=rng), _cholesky_factor(rng, K))
             for K in (1, 2, 3, 4) for _ in range(2)]
    for device in probe.devices:
        results = probe.run([call("KL_full", *(leaf(t) for t in case), device=device,
                                  grad=(0, 1, 2, 3)) for case in cases])
        values = []
        for case, result in zip(cases, results):
            got = returned(result, "KL_full",
                           f"KL_full failed for single Gaussians (inputs [K] and [K, K]) on "
                           f"{device}: count dimensions from the end (-1, -2), and create "
                           f"constants on the inputs' device",
                           hint_for=("RuntimeError", "IndexError", "ValueError"))
            got = tensor_value(got, "KL_full")
            expect(tuple(got.shape) == (),
                   f"KL_full of single Gaussians (inputs [K] and [K, K]) should have shape [], "
                   f"got {list(got.shape)}: sum over the last dimensions only")
            expect(got.device.split(":")[0] == device,
                   f"KL_full returned a tensor on {got.device} for inputs on {device}")
            values.append(got.data.reshape(()).double())
        got = torch.stack(values)
        ref = torch.stack([KL_full_ref(*(t.double() for t in case)) for case in cases])
        if not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
            worst = (got - ref).abs().max().item()
            why = _kl_full_mistake(got, cases)
            raise AssertionError(
                f"KL_full differs from the KL between the two Gaussians by up to {worst:.4g} "
                f"(on {device}): " + (why or "check each term against the formula of "
                                             "Exercise 3"))
        torch_kl = torch.stack([_gauss_kl(mq, Lq @ Lq.mT, mp, Lp @ Lp.mT)
                                for mq, Lq, mp, Lp in cases])
        expect_close(got, torch_kl, "KL_full", "it should agree with td.kl_divergence of two "
                                               "td.MultivariateNormal", atol=1e-4)
        expect(all(r["value"].requires_grad for r in results),
               "KL_full carries no gradient: did you use .detach(), .item(), torch.no_grad() or "
               "NumPy?")
        for case, result in zip(cases, results):
            args = [t.double().requires_grad_() for t in case]
            refs = torch.autograd.grad(KL_full_ref(*args), args)
            grads = result["grads"] if isinstance(result["grads"], list) else [None] * 4
            for name, g, gr in zip(["mu_q", "L_q", "mu_p", "L_p"], grads, refs):
                g = torch.zeros_like(gr) if g is None else \
                    tensor_value(g, f"the gradient with respect to {name}").data.double()
                if gr.dim() == 2:
                    g, gr = g.tril(), gr.tril()
                expect(torch.allclose(g, gr, rtol=1e-3, atol=1e-4),
                       f"the gradient of KL_full with respect to {name} differs from the "
                       f"derivative of the KL (on {device}): is part of the formula detached "
                       f"or computed outside torch?")
    return "Hidden tests of the full-covariance KL passed."


#: (leading shape of q, leading shape of p, K): K differs from every leading size, so that a
#: K read from the wrong dimension shows
_FULL_SHAPES = [((3, 5), (3, 5), 2), ((4,), (), 3), ((2, 3), (3,), 4), ((), (2,), 3)]


def kl_full_batch(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the batching of the full-covariance KL (cell kl-full-batch-tests).

    Leading shapes of q and p that are equal or broadcast against each other, on every
    device. KL_full of a batch must have the broadcast leading shape, and each of its numbers
    must be your own KL_full of that one pair of Gaussians (inputs [K] and [K, K]), rtol 1e-4,
    atol 1e-4, so that a mistake in the formula is not charged here again (where your
    KL_full fails on single Gaussians, the batch is compared with dpm_core's KL_full instead).
    """
    inputs = [(torch.randn(*qs, K, generator=rng), _cholesky_factor(rng, *qs, K),
               torch.randn(*ps, K, generator=rng), _cholesky_factor(rng, *ps, K))
              for qs, ps, K in _FULL_SHAPES]
    pairs = []  # per input, its broadcast elements as single Gaussians
    for (qs, ps, K), (mq, Lq, mp, Lp) in zip(_FULL_SHAPES, inputs):
        shape = torch.broadcast_shapes(qs, ps)
        pairs.append(list(zip(mq.expand(*shape, K).reshape(-1, K),
                              Lq.expand(*shape, K, K).reshape(-1, K, K),
                              mp.expand(*shape, K).reshape(-1, K),
                              Lp.expand(*shape, K, K).reshape(-1, K, K))))
    for device in probe.devices:
        ops = [call("KL_full", *case, device=device) for case in inputs]
        for each in pairs:
            ops += [call("KL_full", *pair, device=device) for pair in each]
        results = probe.run(ops)
        whole, singles = results[:len(inputs)], results[len(inputs):]
        for (qs, ps, K), case, each, result in zip(_FULL_SHAPES, inputs, pairs, whole):
            mine, singles = singles[:len(each)], singles[len(each):]
            shape = list(torch.broadcast_shapes(qs, ps))
            where = f"q with leading shape {list(qs)} and p with {list(ps)} (K = {K})"
            got = returned(result, "KL_full",
                           f"KL_full failed for {where}: count dimensions from the end "
                           f"(-1, -2) and let the leading ones broadcast (torch.diagonal's "
                           f"default dims are 0 and 1: use dim1=-2, dim2=-1)",
                           hint_for=("RuntimeError", "IndexError", "ValueError"))
            got = tensor_value(got, "KL_full")
            if list(got.shape) != shape:
                why = ("you reduced over everything (a sum without dims): reduce over the last "
                       "dimensions only" if got.dim() == 0 else
                       "reduce over the last dimensions only (-1, -2), and let the leading "
                       "ones broadcast")
                raise AssertionError(f"KL_full of {where} has shape {list(got.shape)}, expected "
                                     f"{shape}: {why}")
            got = got.data.double().reshape(-1)
            try:
                own = torch.stack([tensor_value(returned(r, "KL_full"), "KL_full").data.double()
                                   .reshape(()) for r in mine])
                against = "your KL_full of its pairs of Gaussians one at a time"
            except (AssertionError, RuntimeError):  # charged by kl-full-value-tests
                own = torch.stack([KL_full_ref(*(t.double() for t in pair)) for pair in each])
                against = "the KL of its pairs of Gaussians"
            expect(bool(torch.isfinite(got).all()),
                   f"KL_full of {where} returned inf or NaN: does something read the diagonal "
                   f"of a batch dimension (torch.diagonal's default dims are 0 and 1)?")
            if not torch.allclose(got, own, rtol=1e-4, atol=1e-4):
                raise AssertionError(
                    f"KL_full of {where} differs from {against}: something mixes the batch "
                    f"elements, e.g. torch.diagonal(L) (its default dims are 0 and 1: use "
                    f"dim1=-2, dim2=-1), K = mu.shape[0] (K is the last size), or a sum over a "
                    f"leading dimension")
    return "Hidden tests of the batching of the full-covariance KL passed."


@statistical
def reparametrise_distribution(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the distribution of z (cell reparametrise-distribution-tests).

    z = mu + sigma * eps in distribution, on every device: n = 20000 draws of each of the
    3 * 5 * 4 = 60 coordinates, means in [-2, 2] and log-variances in [-2, 2] (shuffled for
    each run), the kernel's generators seeded for each run. Tolerances, each 5 standard
    errors: sample means within 5 sigma / sqrt(n) of mu; sample variances within
    5 sigma^2 sqrt(2 / (n - 1)) of sigma^2; the fraction of |z - mu| < sigma within
    5 sqrt(p (1 - p) / (60 n)) of p = 0.6827; correlations of neighbouring coordinates within
    5 / sqrt(n) of 0. A false failure has probability below 1e-4.
    """
    n, shape = 20000, (3, 5, 4)
    mu0 = torch.linspace(-2, 2, 60)[torch.randperm(60, generator=rng)].reshape(shape)
    lv0 = torch.linspace(-2, 2, 60)[torch.randperm(60, generator=rng)].reshape(shape)
    for device in probe.devices:
        seed = draw_seed(rng)
        draw, first, second = probe.run([
            call("reparametrise", expanded(mu0, n), expanded(lv0, n), device=device, seed=seed),
            call("reparametrise", expanded(mu0, 2), expanded(lv0, 2), device=device),
            call("reparametrise", expanded(mu0, 2), expanded(lv0, 2), device=device)])
        hint = (f"reparametrise failed for inputs on {device}: noise made with torch.randn(shape) "
                f"lives on the CPU; torch.randn_like(mu) makes it on the device of mu")
        z = returned(draw, "reparametrise", hint)
        got_shape = getattr(z, "shape", None)
        expect(got_shape is not None and tuple(got_shape) == (n, *shape),
               f"z should be a tensor with the shape of mu, {[n, *shape]}, got "
               f"{list(got_shape) if got_shape is not None else kind_of(z)}")
        z = tensor_value(z, "z")
        expect(z.device.split(":")[0] == device,
               f"z is on {z.device} for inputs on {device}: make the noise with "
               "torch.randn_like(mu)")
        expect(z.dtype == mu0.dtype, f"z has dtype {z.dtype} but mu has {mu0.dtype}: make the "
                                     f"noise with torch.randn_like(mu) (NumPy draws are float64)")
        a = tensor_value(returned(first, "reparametrise"), "z").data
        b = tensor_value(returned(second, "reparametrise"), "z").data
        expect(not torch.equal(a, b), "two calls returned the same z: draw fresh noise on every "
                                      "call")
        zd = z.data.double()
        m, v = mu0.double(), lv0.double().exp()
        mean, var = zd.mean(0), zd.var(0)
        if var.max() < 1e-10:
            raise AssertionError("z does not vary between draws: did you return mu, or draw one "
                                 "eps and reuse it across the batch? Draw one eps per element "
                                 "with torch.randn_like(mu).")
        if not _within(mean, m, (var / n).sqrt()):  # standard errors from the draws
            if torch.allclose(mean, lv0.double(), atol=0.1):
                raise AssertionError("the mean of z is logvar, not mu: mu and logvar are swapped")
            raise AssertionError("the sample mean of z differs from mu by more than 5 standard "
                                 "errors (20000 draws): is eps standard normal (torch.randn_like, "
                                 "not torch.rand_like) and z = mu + sigma * eps?")
        if not _within(var, v, v * math.sqrt(2 / (n - 1))):
            known = [
                (v ** 2, "the variance of z is exp(logvar)^2: std = logvar.exp() is the variance; "
                         "the standard deviation is exp(0.5 * logvar) (or logvar.exp().sqrt())"),
                (torch.ones_like(v), "the variance of z is 1: eps is not scaled by the standard "
                                     "deviation exp(0.5 * logvar)"),
                (lv0.double() ** 2,
                 "the variance of z is logvar^2: logvar was used as the standard deviation; "
                 "sigma = exp(0.5 * logvar)"),
                (v.sqrt(), "the variance of z is sigma, not sigma^2: the standard deviation is "
                           "exp(0.5 * logvar), taken once"),
            ]
            for target, message in known:
                if _within(var, target, target * math.sqrt(2 / (n - 1))):
                    raise AssertionError(message)
            raise AssertionError("the sample variance of z differs from exp(logvar) by more than "
                                 "5 standard errors (20000 draws): "
                                 "z = mu + exp(0.5 * logvar) * eps")
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
    return "Hidden tests of the distribution of z passed."




def reparametrise_gradient(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the gradients of z (cell reparametrise-gradient-tests).

    On every device, a structured batch [3, 5, 4] in float64 (means in [-1.5, 1.5], log-
    variances in [-2, 1], shuffled for each run): z carries a gradient to mu and to logvar,
    and autograd's dz/dmu and dz/dlogvar equal the derivatives of your own z as a function of
    mu and logvar for fixed noise, measured by central finite differences (step 1e-6, the
    kernel's generators seeded alike before each draw; rtol 1e-5, atol 1e-6). What z's
    distribution should be is graded by the previous cell, so a wrong formula for z is not
    charged here again: a pathwise gradient is right when it is the derivative of the sampling
    path, and then its average is unbiased for the gradient of E[f(z)].
    """
    h = 1e-6
    shape = (3, 5, 4)
    mu = torch.linspace(-1.5, 1.5, 60, dtype=torch.float64)[torch.randperm(60, generator=rng)]
    lv = torch.linspace(1.0, -2.0, 60, dtype=torch.float64)[torch.randperm(60, generator=rng)]
    mu, lv = mu.reshape(shape), lv.reshape(shape)
    for device in probe.devices:
        seed = draw_seed(rng)
        draw, *shifted = probe.run([
            call("reparametrise", leaf(mu), leaf(lv), device=device, seed=seed, grad=(0, 1)),
            *[call("reparametrise", a, b, device=device, seed=seed, no_grad=True)
              for a, b in ((mu + h, lv), (mu - h, lv), (mu, lv + h), (mu, lv - h))]])
        z = returned(draw, "reparametrise")
        got_shape = getattr(z, "shape", None)
        expect(got_shape is not None and tuple(got_shape) == shape,
               f"z should be a tensor with the shape of mu, {list(shape)}, got "
               f"{list(got_shape) if got_shape is not None else kind_of(z)}")
        z = tensor_value(z, "z")
        expect(z.requires_grad,
               "z carries no gradient: .sample() (like .detach(), torch.no_grad() or NumPy) cuts "
               "the path from z back to mu and logvar; write z = mu + std * eps with "
               "eps = torch.randn_like(mu), or use .rsample()")
        values = [tensor_value(returned(r, "reparametrise"), "z").data.double() for r in shifted]
        for name, grad, fd in (("mu", draw["grads"][0], (values[0] - values[1]) / (2 * h)),
                               ("logvar", draw["grads"][1], (values[2] - values[3]) / (2 * h))):
            # no gradient is right only where z does not depend on the input at all (a wrong
            # formula for z, which the previous cell charges)
            if grad is None and not torch.allclose(fd, torch.zeros_like(fd), atol=1e-6):
                raise AssertionError(f"no gradient reaches {name}, yet z changes with {name}: is "
                                     f"the standard deviation or {name} detached?")
            g = torch.zeros_like(fd) if grad is None else \
                tensor_value(grad, f"dz/d{name}").data.double()
            if not torch.allclose(g, fd, rtol=1e-5, atol=1e-6):
                raise AssertionError(
                    f"autograd's dz/d{name} differs from how z changes when {name} changes with "
                    f"the noise fixed (by up to {(g - fd).abs().max().item():.3g}, on {device}): "
                    f"part of the path from {name} to z is detached, or computed outside torch")
    return "Hidden tests of the gradients of z passed."


def _kl_table(pairs: list, with_jacobians: bool) -> dict:
    """A stand-in for KL: the reference's values (and Jacobians) at each ``(mu, logvar)``."""
    entries = []
    for mu, lv in pairs:
        entry = {"args": [mu, lv], "value": KL_ref(mu, lv), "jacobians": []}
        if with_jacobians:
            entry["jacobians"] = list(torch.autograd.functional.jacobian(KL_ref, (mu, lv)))
        entries.append(entry)
    return {"KL": {"entries": entries}}


def _as_loss(value) -> torch.Tensor:
    """The loss as a tensor: a Python number (``.item()``, graded by loss-terms-tests) becomes a
    0-d tensor, so that the batch reduction is graded on its own."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    return tensor_value(value, "loss_func's result").data.float()


def loss_terms(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the terms of the loss (cell loss-terms-tests).

    The two terms of the negative ELBO for single images (N = 1, so that the batch reduction
    does not matter here; the next cell grades it), on every device, against dpm_core's
    loss_func and against torch.distributions (td.Bernoulli log-likelihood plus
    td.kl_divergence), values and gradients with respect to recon_x, mu and logvar (rtol 1e-4,
    atol 1e-4). Your loss_func runs with the reference KL in place of yours, so that a KL
    mistake is counted once.
    """
    D, K = 20, 3
    for device in probe.devices:
        cases = [((0.05 + 0.9 * torch.rand(1, D, generator=rng)),
                  torch.bernoulli(torch.full((1, D), 0.5), generator=rng),
                  torch.randn(1, K, generator=rng), torch.randn(1, K, generator=rng))
                 for _ in range(4)]
        ops = [call("loss_func", leaf(r), x, leaf(mu), leaf(lv), device=device, grad=(0, 2, 3),
                    stand_ins=_kl_table([(mu, lv), (lv, mu)], with_jacobians=True))
               for r, x, mu, lv in cases]
        for (r, x, mu, lv), result in zip(cases, probe.run(ops)):
            got = returned(result, "loss_func")
            got = tensor_value(got, "loss_func", ".item() or float() cut the loss off from its "
                                                 "gradient")
            expect(got.data.numel() == 1, f"the loss of one image should be one number, got "
                                          f"shape {list(got.shape)}")
            value = got.data.reshape(()).float()
            rl, mul, lvl = (t.clone().requires_grad_() for t in (r, mu, lv))
            ref = loss_func_ref(rl, x, mul, lvl)
            if not torch.allclose(value, ref.detach(), rtol=1e-4, atol=1e-4):
                nll = F.binary_cross_entropy(r, x, reduction="none").sum(-1)[0]
                kl = KL_ref(mu, lv)[0]
                known = [
                    (nll, "the KL term is missing: the loss is -log p(x|z) + KL(q(z|x) || p(z))"),
                    (nll - kl, "the KL term has the wrong sign: the loss is -log p(x|z) + KL"),
                    (-(nll + kl), "this is the ELBO; the loss to minimise is the negative ELBO"),
                    (-nll + kl, "the reconstruction term has the wrong sign: the binary "
                                "cross-entropy already is -log p(x|z)"),
                    (nll / D + kl, "the binary cross-entropy is averaged over the pixels "
                                   "(F.binary_cross_entropy's default reduction='mean'); sum it "
                                   "over the pixels of each image"),
                    (nll + kl / K, "the KL is averaged over the latent coordinates; sum it"),
                    (F.binary_cross_entropy(x, r, reduction="none").sum(-1)[0] + kl,
                     "recon_x and x are swapped: F.binary_cross_entropy(recon_x, x) takes the "
                     "probabilities first and the binary targets second"),
                    (F.binary_cross_entropy_with_logits(r, x, reduction="none").sum(-1)[0] + kl,
                     "recon_x holds probabilities (the decoder ends in a sigmoid), not logits: "
                     "use F.binary_cross_entropy, not binary_cross_entropy_with_logits"),
                    (nll + KL_ref(lv, mu)[0], "the arguments of KL are swapped: KL(mu, logvar)"),
                ]
                why = known_mistake(value, known, rtol=1e-3, atol=1e-3,
                                    default="check both terms: the binary cross-entropy summed "
                                            "over pixels, plus the KL summed over latent "
                                            "coordinates")
                raise AssertionError(f"the loss of one image is {value.item():.4f}, expected "
                                     f"{ref.item():.4f} (on {device}): {why}")
            px = td.Independent(td.Bernoulli(probs=r), 1)
            qz = td.Independent(td.Normal(mu, (0.5 * lv).exp()), 1)
            pz = td.Independent(td.Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
            expect_close(value, (-px.log_prob(x) + td.kl_divergence(qz, pz)).mean(),
                         "the loss of one image",
                         "it should agree with torch.distributions: -Bernoulli log-likelihood "
                         "+ KL", atol=1e-4)
            expect(got.requires_grad, "the loss carries no gradient: is something detached, or "
                                      "computed under torch.no_grad() or in NumPy?")
            grads = result["grads"] if isinstance(result["grads"], list) else [None] * 3
            refs = torch.autograd.grad(ref, [rl, mul, lvl])
            for name, g, gr in zip(["recon_x", "mu", "logvar"], grads, refs):
                expect(g is not None, f"no gradient of the loss reaches {name}")
                expect_close(tensor_value(g, f"the gradient with respect to {name}").data.float(),
                             gr, f"the gradient of the loss with respect to {name}",
                             "is part of the loss detached?", atol=1e-4)
    return "Hidden tests of the terms of the loss passed."


def loss_batch(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the batch reduction (cell loss-batch-tests).

    The batch convention, on every device and independent of the terms graded above: the loss of
    a batch of N = 8 images is a scalar, equal to the mean of the losses of its images, and does
    not change when the batch is repeated (rtol 1e-4, atol 1e-4). Run with the reference KL.
    """
    N, D, K = 8, 20, 3
    r = 0.05 + 0.9 * torch.rand(N, D, generator=rng)
    x = torch.bernoulli(torch.full((N, D), 0.5), generator=rng)
    mu, lv = torch.randn(N, K, generator=rng), torch.randn(N, K, generator=rng)
    batches = [(r, x, mu, lv)] + [(r[i:i + 1], x[i:i + 1], mu[i:i + 1], lv[i:i + 1])
                                  for i in range(N)] + \
              [(r.repeat(2, 1), x.repeat(2, 1), mu.repeat(2, 1), lv.repeat(2, 1))]
    table = _kl_table([(b[2], b[3]) for b in batches] + [(b[3], b[2]) for b in batches],
                      with_jacobians=False)
    for device in probe.devices:
        whole, *rest = probe.run([call("loss_func", *b, device=device, stand_ins=table)
                                  for b in batches])
        singles, twice = rest[:N], rest[N]
        got = _as_loss(returned(whole, "loss_func"))
        if got.dim() != 0:
            if list(got.shape) == [N]:
                raise AssertionError(f"loss_func returns one value per image (shape [{N}]); "
                                     f"average them over the batch to get a scalar")
            raise AssertionError("the loss of a batch should be a scalar (shape []), got shape "
                                 f"{list(got.shape)}: sum over pixels and latent coordinates "
                                 f"per image, then average over the images")
        each = torch.stack([_as_loss(returned(s, "loss_func")).reshape(()) for s in singles])
        expect(bool(torch.isfinite(each).all()),
               "loss_func returned inf or NaN for finite inputs")
        expect(bool(each.std() > 0), "loss_func gives the same loss for every image: it "
                                     "must compute it from recon_x, x, mu and logvar")
        if not torch.allclose(got, each.mean(), rtol=1e-4, atol=1e-4):
            if torch.allclose(got, each.sum(), rtol=1e-4, atol=1e-4):
                raise AssertionError(
                    "the loss is summed over the batch. The convention here is the mean over the "
                    "batch (the negative ELBO per image), so that the loss and a good learning "
                    "rate do not depend on the batch size")
            raise AssertionError(f"the loss of a batch ({got.item():.4f}) should be the mean of "
                                 f"the losses of its images ({each.mean().item():.4f}): reduce "
                                 f"each image with sums, then take the mean over the images")
        expect_close(_as_loss(returned(twice, "loss_func")).reshape(()), got,
                     "the loss of the batch repeated twice",
                     "the mean over the batch does not change when the batch is repeated",
                     atol=1e-4)
    return "Hidden tests of the batch reduction passed."


JUDGES = {
    "kl-formula-tests": kl_formula,
    "kl-reduction-tests": kl_reduction,
    "kl-full-value-tests": kl_full_value,
    "kl-full-batch-tests": kl_full_batch,
    "reparametrise-distribution-tests": reparametrise_distribution,
    "reparametrise-gradient-tests": reparametrise_gradient,
    "loss-terms-tests": loss_terms,
    "loss-batch-tests": loss_batch,
}
