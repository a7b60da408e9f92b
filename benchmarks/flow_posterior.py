"""The reference VAE with a diagonal Gaussian q(z|x) against the same VAE with a flow q(z|x).

Both models are :func:`dpm_core.reference.build_reference_vae` (latent 16, FFNN encoder
and decoder of 256 hidden units, Bernoulli pixels, N(0, I) prior); the flow model
replaces the Gaussian CPD net with a :class:`dpm_core.FlowCPDNet` of ``--layers``
affine couplings over the same 512 encoder features. Each is trained for the same
wall time with the recipe of ``python -m dpm_core.reference`` (AdamW, cosine decay of
the learning rate and a warm-up of the rate weight, both timed; the decoder's bias
at the logit of the mean image) on statically binarised FashionMNIST, and then
assessed on the test set:

* test ELBO: all 10000 test images, one draw of z each (the flow's rate is a
  one-draw Monte Carlo estimate; the Gaussian's is in closed form);
* log p(x): the importance-sampled estimate with ``--is-samples`` draws on the first
  ``--is-images`` test images (a lower bound in expectation), with their ELBO;
* steps per second of training (dev checks included, the same for both).

Equal wall time, not equal steps: the flow's steps are dearer, and the question is
whether it pays for them. The figures depend on what else the machine is doing: the
load average is printed before and after each run. Run it with
``python benchmarks/flow_posterior.py`` (about 2.5 minutes at the defaults);
``--flow-seconds 120`` gives the flow about as many steps as the Gaussian gets in 60 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpm_core.data import load_data  # noqa: E402
from dpm_core.flows import FlowCPDNet  # noqa: E402
from dpm_core.reference import (WARMUP_SHARE, build_reference_vae, init_decoder_bias,  # noqa: E402
                                time_cosine, time_warmup)
from dpm_core.training import OptCollection, assess, seed_all, train_vae  # noqa: E402

LATENT, HIDDEN, BATCH, LR = 16, 256, 64, 2e-3


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def build(posterior: str, layers: int, seed: int):
    seed_all(seed)
    model = build_reference_vae(LATENT, HIDDEN)
    if posterior == "flow":
        # the reference CPD net reads the encoder's 2U features directly (no hidden layer)
        model.inf_model.cpd_net = FlowCPDNet(LATENT, num_inputs=2 * HIDDEN, hidden_size=0,
                                             num_layers=layers)
    return model


def run(posterior: str, seconds: float, data, args) -> dict:
    model = build(posterior, args.layers, args.seed)
    init_decoder_bias(model, torch.cat([x for x, _ in data.train.batches(10000)]))
    gen = torch.optim.AdamW(model.gen_params(), lr=LR, fused=True)
    inf = torch.optim.AdamW(model.inf_params(), lr=LR, fused=True)
    schedule = time_cosine(seconds)
    opts = OptCollection(gen, inf, schedulers=[torch.optim.lr_scheduler.LambdaLR(o, schedule)
                                               for o in (gen, inf)])
    before = load()
    log = train_vae(model, opts, data.train, data.dev, batch_size=BATCH, num_epochs=1000,
                    check_every=200, sample_size_eval=1, device="cpu",
                    rate_weight=time_warmup(WARMUP_SHARE * seconds),
                    time_budget=seconds, progress=False,
                    generator=torch.Generator().manual_seed(args.seed))
    after = load()
    steps = len(log["training.loss"])
    start = time.perf_counter()
    test = assess(model, 1, data.test)
    subset = data.test.subset(torch.arange(min(args.is_images, len(data.test))))
    is_fig = assess(model, args.is_samples, subset, batch_size=50)
    return {"posterior": posterior, "seconds": log["time"], "steps": steps,
            "steps_per_s": steps / log["time"],
            "q_params": sum(p.numel() for p in model.inf_params()),
            "test_elbo": test["ELBO"], "test_D": test["D"], "test_R": test["R"],
            "is_L": is_fig["L"], "is_elbo": is_fig["ELBO"],
            "eval_s": time.perf_counter() - start, "load": (before, after)}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training time of each model")
    parser.add_argument("--flow-seconds", type=float, default=None,
                        help="training time of the flow model (default: --seconds); about twice "
                             "--seconds gives it as many steps as the Gaussian")
    parser.add_argument("--layers", type=int, default=4, help="coupling layers of the flow")
    parser.add_argument("--is-samples", type=int, default=100)
    parser.add_argument("--is-images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    flow_seconds = args.seconds if args.flow_seconds is None else args.flow_seconds
    data = load_data("fashion-mnist", binarize="static")
    print(f"reference VAE, K = {LATENT}, trained on the CPU ({os.cpu_count()} cores); "
          f"flow: {args.layers} affine couplings")
    results = [run("gaussian", args.seconds, data, args), run("flow", flow_seconds, data, args)]
    print(f"{'q(z|x)':10} {'params':>8} {'time':>5} {'steps':>6} {'steps/s':>8} {'test ELBO':>10} "
          f"{'D':>7} {'R':>6} {'log p(x)':>9} {'its ELBO':>9} {'load':>11}")
    for r in results:
        print(f"{r['posterior']:10} {r['q_params']:8d} {r['seconds']:5.0f} {r['steps']:6d} "
              f"{r['steps_per_s']:8.1f} "
              f"{r['test_elbo']:10.2f} {r['test_D']:7.2f} {r['test_R']:6.2f} {r['is_L']:9.2f} "
              f"{r['is_elbo']:9.2f} {r['load'][0]:5.2f}>{r['load'][1]:5.2f}")
    print(f"test ELBO: all {len(data.test)} test images, 1 draw; log p(x): importance sampling "
          f"with {args.is_samples} draws on the first {args.is_images} test images, beside their "
          f"ELBO (from the same draws); load: the 1-minute load average before > after training")
    return results


if __name__ == "__main__":
    main()
