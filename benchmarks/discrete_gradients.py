"""Bias, variance and cosine of gradient estimators for discrete codes, against the exact gradient.

The test bed is :func:`dpm_core.discrete.make_testbed`: a sigmoid belief network small
enough to enumerate (8 bits, or 3 categorical variables of 4 classes), six binary pixels,
float64, every weight from N(0, 1.5^2) (seed 0), and a batch of B = 16 data points drawn
from the model (seed 1). The exact gradient of the batch-mean ELBO with respect to q's
parameters is autograd through the enumerated sum (:func:`dpm_core.discrete.exact_elbo`).
Each estimator then computes REPEATS independent estimates of that gradient, each from S
draws per data point, and the script prints per estimator:

* ``bias``: ||mean of the estimates - exact||, next to ``noise``, the standard error of
  that distance if the estimator were unbiased (sqrt(trace Cov / REPEATS)): a bias well
  above the noise is real;
* ``bias/noise``: about 1 for an unbiased estimator;
* ``rel bias``: bias / ||exact||;
* ``var``: the trace of the covariance of one estimate (summed per-coordinate variance);
* ``cos(mean)``: the cosine of the mean estimate with the exact gradient;
* ``E cos``: the mean cosine of one estimate with the exact gradient (what one step sees).

Estimators: the score function of :class:`NVIL` without control variate (``sfe``), with
:class:`CentredReward` (after 200 warm-up calls), :class:`SelfCritic`, a learned
:class:`Baseline` (fitted alone for 500 Adam steps first) and the leave-one-out baseline
:class:`LeaveOneOut`; then the relaxations of :func:`relaxed_surrogate_loss`: Concrete /
Gumbel-softmax at several temperatures and straight-through, all with the exact discrete KL.
A second table measures the gradient of the 2-sample bound E[log (w_1 + w_2) / 2] (exact by
enumerating pairs, :func:`dpm_core.discrete.exact_multisample_bound`): its plain score
function and VIMCO's leave-one-out baseline (:func:`dpm_core.discrete.vimco_surrogate_loss`),
one pair of draws per data point and estimate.

    python benchmarks/discrete_gradients.py [--code bernoulli|one-hot|both] [--repeats 2000]
        [--sample-size 4]

About two minutes on one CPU thread for both codes at the defaults.
"""

from __future__ import annotations

import argparse
import math

import torch

from dpm_core import Baseline, CentredReward, SelfCritic, VarianceReduction
from dpm_core.discrete import (
    LeaveOneOut,
    draw_data,
    exact_elbo,
    exact_multisample_bound,
    make_testbed,
    relaxed_surrogate_loss,
    vimco_surrogate_loss,
)

BATCH = 16
TEMPERATURES = (0.1, 0.3, 1.0)


def q_grad(nvil, loss: torch.Tensor) -> torch.Tensor:
    """The gradient of ``loss`` with respect to q's parameters, flattened."""
    grads = torch.autograd.grad(loss, list(nvil.inf_params()))
    return torch.cat([g.flatten() for g in grads])


def exact_q_grad(nvil, x: torch.Tensor) -> torch.Tensor:
    """The exact gradient of minus the batch-mean ELBO with respect to q's parameters."""
    return q_grad(nvil, -exact_elbo(nvil.gen_model, nvil.inf_model(x), x).mean())


def fit_baseline(nvil, x: torch.Tensor, steps: int = 500, sample_size: int = 4) -> None:
    """Fit the learned baseline's parameters alone, on the squared error of its loss."""
    cv_params = list(nvil.cv_params())
    opt = torch.optim.Adam(cv_params, lr=1e-2)
    for _ in range(steps):
        loss, _ = nvil.surrogate_loss(x, sample_size)
        # only the baseline's squared error reaches its parameters
        for p, g in zip(cv_params, torch.autograd.grad(loss, cv_params)):
            p.grad = g
        opt.step()


def estimators(code: str, data_size: int):
    """label -> (cv_model or None, loss function of (nvil, x, S)), in print order."""
    sfe = lambda nvil, x, S: nvil.surrogate_loss(x, S)[0]  # noqa: E731
    table = {
        "sfe": (VarianceReduction(), sfe),
        "centred": (CentredReward(), sfe),
        "self-critic": (SelfCritic(), sfe),
        "baseline": (Baseline(data_size, hidden_size=32, event_dims=1), sfe),
        "leave-one-out": (LeaveOneOut(), sfe),
    }
    for tau in TEMPERATURES:
        table[f"concrete tau={tau}"] = (None, lambda nvil, x, S, tau=tau: relaxed_surrogate_loss(
            nvil, x, "concrete", tau, S))
    table["straight-through"] = (None, lambda nvil, x, S: relaxed_surrogate_loss(
        nvil, x, "straight-through", sample_size=S))
    return table


def summarise(runs: torch.Tensor, exact: torch.Tensor) -> dict:
    """Bias, its noise floor, variance and cosines of gradient estimates ``[R, P]``."""
    mean, var = runs.mean(0), runs.var(0).sum()
    cos_each = torch.nn.functional.cosine_similarity(runs, exact.expand_as(runs), dim=1)
    return {
        "bias": (mean - exact).norm().item(),
        "noise": math.sqrt(var.item() / runs.shape[0]),
        "rel bias": ((mean - exact).norm() / exact.norm()).item(),
        "var": var.item(),
        "cos(mean)": torch.nn.functional.cosine_similarity(mean, exact, dim=0).item(),
        "E cos": cos_each.mean().item(),
    }


def measure(code: str, repeats: int, sample_size: int, seed: int = 0) -> dict:
    """Per estimator of the ELBO's gradient: :func:`summarise` of ``repeats`` estimates."""
    data_size = 6
    results = {}
    for label, (cv, loss_fn) in estimators(code, data_size).items():
        nvil = make_testbed(code, seed=0, data_size=data_size,
                            cv_model=cv.double() if cv is not None else None)
        x = draw_data(nvil, BATCH, seed=1)
        exact = exact_q_grad(nvil, x)
        torch.manual_seed(seed)
        if label == "centred":
            with torch.no_grad():
                for _ in range(200):
                    nvil.surrogate_loss(x, sample_size)
        if label == "baseline":
            fit_baseline(nvil, x, sample_size=sample_size)
        runs = torch.stack([q_grad(nvil, loss_fn(nvil, x, sample_size)) for _ in range(repeats)])
        results[label] = summarise(runs, exact)
    return results


def measure_vimco(code: str, repeats: int, seed: int = 0) -> dict:
    """VIMCO and the plain score function of the 2-sample bound, against its exact gradient."""
    nvil = make_testbed(code, seed=0)
    x = draw_data(nvil, BATCH, seed=1)
    exact = q_grad(nvil, -exact_multisample_bound(nvil.gen_model, nvil.inf_model(x), x, 2).mean())
    results = {}
    for label, baseline in (("bound sfe, S=2", False), ("vimco, S=2", True)):
        torch.manual_seed(seed)
        runs = torch.stack([q_grad(nvil, vimco_surrogate_loss(nvil, x, 2, baseline))
                            for _ in range(repeats)])
        results[label] = summarise(runs, exact)
    return results


def print_table(results: dict) -> None:
    print(f"{'estimator':<20}{'bias':>10}{'noise':>10}{'bias/noise':>11}{'rel bias':>10}"
          f"{'var':>12}{'cos(mean)':>11}{'E cos':>8}")
    for label, r in results.items():
        print(f"{label:<20}{r['bias']:>10.4f}{r['noise']:>10.4f}{r['bias'] / r['noise']:>11.1f}"
              f"{r['rel bias']:>10.3f}{r['var']:>12.3f}{r['cos(mean)']:>11.3f}{r['E cos']:>8.3f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", choices=["bernoulli", "one-hot", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--sample-size", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    codes = ["bernoulli", "one-hot"] if args.code == "both" else [args.code]
    everything = {}
    for code in codes:
        results = measure(code, args.repeats, args.sample_size)
        print(f"\n{code} code, B = {BATCH}, S = {args.sample_size} draws per estimate, "
              f"{args.repeats} estimates each; gradient of the ELBO, q's parameters")
        print_table(results)
        vimco = measure_vimco(code, args.repeats)
        print(f"\n{code} code, B = {BATCH}, {args.repeats} estimates each; gradient of the "
              f"2-sample bound E[log (w_1 + w_2) / 2], q's parameters")
        print_table(vimco)
        everything[code] = {**results, **vimco}
    return everything


if __name__ == "__main__":
    main()
