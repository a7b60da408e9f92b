"""Gradient variance and step time of NVIL's estimators for a MoG q(z|x) on FashionMNIST.

The model is the mixture model of the dpm2_inference notebook: N(0, I) prior over K = 10
dimensions, Bernoulli pixels from a feed-forward decoder (two hidden layers of 256 units),
and q(z|x) a mixture of M mean-field Gaussians (:class:`MoGCPDNet`) behind a feed-forward
encoder; FashionMNIST binarised at 0.5. It is first trained for 1000 steps with the
mixture estimator (so that the rewards are those of a model in training, not of a random
one), then held fixed while, for one batch of 100 dev images and one sample of z per image,
each configuration computes REPEATS gradient estimates of q's parameters. Printed per
configuration:

* ``var``: the summed per-coordinate variance of those estimates, all of q's parameters;
* ``var logits``: the same for the head of the mixing logits alone;
* ``sfe/this`` and ``critic/this``: the ``var`` of the plain score function and of the score
  function with a self-critic, divided by this ``var`` (not shown for a rescaled gradient);
* ``cosine``: the mean cosine similarity of one estimate with a reference gradient (the
  mean of many mixture estimates with many samples): scale-free, so it also ranks the
  course's chain with ``ScaledReward``, whose rescaled gradients make ``var`` incomparable;
* ``ms/step``: the median time of a training step (forward, backward, Adam) at batch 100.

    python benchmarks/estimator_variance.py [--components 3] [--train-steps 1000] [--repeats 100]

The configurations: ``sfe`` and ``mixture`` without control variate, each with
:class:`SelfCritic`, and ``sfe`` with the notebook's chain (self-critic, then scaled).
Runs in under a minute on one CPU thread (the default; other work on the machine slows
the step times down, not the variances).
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from collections import OrderedDict

import torch

from dpm_core import (
    NVIL,
    BinarizedImageModel,
    CVChain,
    GaussianPriorNet,
    InferenceModel,
    JointDistribution,
    MoGCPDNet,
    ScaledReward,
    SelfCritic,
    VarianceReduction,
    build_ffnn_decoder,
    load_data,
    seed_all,
)
from dpm_core.reference import init_decoder_bias

LATENT, HIDDEN, BATCH = 10, 256, 100

#: label -> (estimator, control variate factory)
CONFIGS = {
    "sfe": ("sfe", VarianceReduction),
    "sfe + self-critic": ("sfe", SelfCritic),
    "sfe + critic, scaled": ("sfe", lambda: CVChain(OrderedDict(critic=SelfCritic(),
                                                                scale=ScaledReward()))),
    "mixture": ("mixture", VarianceReduction),
    "mixture + self-critic": ("mixture", SelfCritic),
}


def build_model(num_components: int) -> NVIL:
    """The notebook's mixture model, trained with the mixture estimator."""
    decoder = functools.partial(build_ffnn_decoder, hidden_size=HIDDEN)
    return NVIL(
        JointDistribution(GaussianPriorNet(LATENT),
                          BinarizedImageModel(1, 28, 28, LATENT, decoder_type=decoder)),
        InferenceModel(functools.partial(MoGCPDNet, num_components=num_components), LATENT,
                       width=28, height=28, hidden_size=2 * HIDDEN),
        estimator="mixture",
    )


def adam(model: NVIL) -> torch.optim.Optimizer:
    return torch.optim.Adam(list(model.gen_params()) + list(model.inf_params()), lr=1e-3)


def train(model: NVIL, batches) -> list[float]:
    """Train with the model's estimator on ``batches``; the times of the steps."""
    opt, times = adam(model), []
    for x, _ in batches:
        tick = time.perf_counter()
        loss = model(x, sample_size=1)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - tick)
    return times


def q_gradients(model: NVIL, x: torch.Tensor, repeats: int, sample_size: int = 1) -> torch.Tensor:
    """``repeats`` gradient estimates of q's parameters: [R, P]."""
    runs = []
    for _ in range(repeats):
        model.zero_grad()
        model(x, sample_size=sample_size)["loss"].backward()
        runs.append(torch.cat([p.grad.flatten() for p in model.inf_params()]))
    return torch.stack(runs)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, default=3, help="M, components of q")
    parser.add_argument("--train-steps", type=int, default=1000,
                        help="training steps before the measurement")
    parser.add_argument("--repeats", type=int, default=100, help="gradient estimates per figure")
    parser.add_argument("--timed-steps", type=int, default=20, help="training steps timed")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    seed_all(args.seed)
    data = load_data("fashion-mnist", binarize="static")
    model = build_model(args.components)
    init_decoder_bias(model, torch.cat([x for x, _ in data.train.batches(10000)]))
    trained = sum(train(model, _training_batches(data.train, args.train_steps, args.seed)))
    x = next(data.dev.batches(BATCH))[0]
    with torch.no_grad():
        elbo = model.elbo(x, sample_size=10).mean().item()
    print(f"M = {args.components} components, K = {LATENT}; trained {args.train_steps} steps "
          f"({trained:.0f} s, mixture estimator); dev batch of {BATCH}: "
          f"ELBO {elbo:.1f} nats; S = 1, {args.repeats} estimates per figure, "
          f"{torch.get_num_threads()} thread(s)")

    logits = torch.cat([torch.ones_like(p, dtype=torch.bool).flatten() if "logits" in name
                        else torch.zeros_like(p, dtype=torch.bool).flatten()
                        for name, p in model.inf_model.named_parameters()])
    reference_model = copy.deepcopy(model)
    reference_model.cv_model = SelfCritic()
    torch.manual_seed(args.seed + 1)
    reference = q_gradients(reference_model, x, 10, sample_size=100).mean(0)  # [P]

    results = {}
    for label, (estimator, cv) in CONFIGS.items():
        candidate = copy.deepcopy(model)
        candidate.cv_model, candidate.estimator = cv(), estimator
        torch.manual_seed(args.seed + 2)
        with torch.no_grad():
            for _ in range(20):  # let ScaledReward's running std settle
                candidate(x)
        grads = q_gradients(candidate, x, args.repeats)  # [R, P]
        variance = grads.var(0)
        cosine = torch.nn.functional.cosine_similarity(grads, reference.expand_as(grads), dim=1)
        times = train(candidate, _training_batches(data.train, args.timed_steps, args.seed))
        results[label] = {"var": variance.sum().item(), "var_logits": variance[logits].sum().item(),
                          "cosine": cosine.mean().item(),
                          "ms_per_step": 1000 * statistics.median(times)}

    print(f"{'estimator':24s} {'var':>10s} {'var logits':>11s} {'sfe/this':>9s} "
          f"{'critic/this':>11s} {'cosine':>7s} {'ms/step':>8s}")
    for label, r in results.items():
        ratios = [f"{results[base]['var'] / r['var']:{width}.4g}" if "scaled" not in label
                  else f"{'-':>{width}s}"
                  for base, width in (("sfe", 9), ("sfe + self-critic", 11))]
        print(f"{label:24s} {r['var']:10.4g} {r['var_logits']:11.4g} {' '.join(ratios)} "
              f"{r['cosine']:7.3f} {r['ms_per_step']:8.1f}")
    print(f"(ScaledReward divides the reward by its running std: 'sfe + critic, scaled' "
          f"estimates a rescaled gradient, so compare it by the cosine.) "
          f"{time.perf_counter() - start:.0f} s in all")
    return results


def _training_batches(data, steps: int, seed: int):
    """``steps`` shuffled batches of BATCH training images, epoch after epoch."""
    generator = torch.Generator().manual_seed(seed)
    while steps > 0:
        for batch in data.batches(BATCH, shuffle=True, generator=generator):
            if steps == 0:
                return
            steps -= 1
            yield batch


if __name__ == "__main__":
    main()
