"""Hidden tests of dpm2_generative: priors, observation models and the joint distribution.

One check per graded test cell. The joint's checks build it from the student's
JointDistribution with their own copy of the notebook's TinyImageModel (_TinyImageModel)
and reference priors where the prior is not what they grade.
"""

import math
from functools import partial

import torch
import torch.distributions as td
import torch.nn.functional as F
from torch import nn

from course.checks._common import expect_batch_and_event
from dpm_core import CategoricalPriorNet, CPDNet, build_ffnn_decoder
from dpm_core.grading import devices, expect, expect_close, expect_shape

__all__ = ["CHECKS", "check_gaussian_prior", "check_gaussian_prior_buffers",
           "check_mog_prior_shapes", "check_mog_prior_parameters", "check_mog_prior_values",
           "check_binarized_image_model", "check_continuous_image_model", "check_joint_log_prob",
           "check_joint_log_marginal", "check_joint_posterior", "check_joint_naive_bound"]


class _TinyImageModel(CPDNet):
    """p(x|z) for tiny binary images whose logits are linear in the code (a copy of the
    notebook's TinyImageModel, cell tiny-model, so that the checks do not use what the
    student's kernel could have redefined).

    batch_shape: the batch shape of z; event_shape: image_shape.
    """

    def __init__(self, latent_size, image_shape=(1, 2, 2), gain=2.0):
        super().__init__(image_shape)
        self.linear = nn.Linear(latent_size, math.prod(self.outcome_shape))
        with torch.no_grad():
            self.linear.weight.normal_(0.0, gain)
            self.linear.bias.normal_(0.0, gain)

    def forward(self, z):
        logits = self.linear(z)
        pixels = td.Bernoulli(logits=logits.reshape(logits.shape[:-1] + self.outcome_shape))
        return td.Independent(pixels, reinterpreted_batch_ndims=len(self.outcome_shape))


def _enumerate_support(p):
    """The notebook's enumerate_support: [N] + batch_shape + [N] one-hot codes of a prior."""
    return p.enumerate_support()


def _mog_shapes_right(net, batch_shape, event) -> bool:
    """Whether the mixture prior builds a distribution with batch_shape ``batch_shape`` and
    event_shape ``event``, with its mixing logits set to 1 / C (valid whether forward reads them
    as logits or as probabilities) and restored afterwards. The shapes are graded by
    mog-prior-shapes-tests; the other checks of the prior leave out what they cannot build."""
    logits = getattr(net, "logits", None)
    saved = logits.detach().clone() if torch.is_tensor(logits) else None
    try:
        with torch.no_grad():
            if saved is not None:
                logits.fill_(1.0 / logits.shape[-1])
            d = net(batch_shape)
            return (isinstance(d, td.Distribution) and tuple(d.batch_shape) == tuple(batch_shape)
                    and tuple(d.event_shape) == tuple(event))
    except Exception:  # noqa: BLE001 -- the shapes cell reports what forward raised
        return False
    finally:
        if saved is not None:
            with torch.no_grad():
                logits.copy_(saved)


def check_gaussian_prior(ns: dict) -> None:
    """The standard Gaussian prior: shapes, log_prob, mean and stddev.

    Grades the cell gaussian-prior-tests.
    """
    GaussianPriorNet = ns["GaussianPriorNet"]
    torch.manual_seed(0)
    for dev in devices():
        for outcome_shape in (3, (2, 3)):
            event = (outcome_shape,) if isinstance(outcome_shape, int) else outcome_shape
            net = GaussianPriorNet(outcome_shape).to(dev)
            for batch_shape in ((), (4,), (3, 5)):
                what = f"GaussianPriorNet({outcome_shape!r})({batch_shape!r}) on {dev}"
                d = net(batch_shape)
                expect_batch_and_event(d, batch_shape, event, what)
                z = d.sample()
                expect_shape(z, batch_shape + event, f"a sample of {what}")
                z = torch.randn(batch_shape + event, device=dev) * 2
                ref = td.Independent(td.Normal(torch.zeros_like(z), torch.ones_like(z)), len(event))
                lp = d.log_prob(z)
                expect_shape(lp, batch_shape, f"{what}.log_prob(z)",
                             "log_prob should have the batch shape: did you forget td.Independent "
                             "over the len(outcome_shape) latent dimensions?")
                expect_close(lp, ref.log_prob(z), f"{what}.log_prob(z)",
                             "Every coordinate should be N(0, 1): check the location (zeros) "
                             "and the scale (ones, a standard deviation, not a variance).")
                expect_close(d.mean, torch.zeros_like(z), f"{what}.mean")
                expect_close(d.stddev, torch.ones_like(z), f"{what}.stddev")


def check_gaussian_prior_buffers(ns: dict) -> None:
    """The Gaussian prior's location and scale are buffers that follow the module.

    Grades the cell gaussian-prior-buffers-tests.
    """
    GaussianPriorNet = ns["GaussianPriorNet"]
    net = GaussianPriorNet((2, 3))
    expect(len(list(net.parameters())) == 0,
           "GaussianPriorNet has trainable parameters, but the standard Gaussian prior is fixed: "
           "store its location and scale with self.register_buffer, not as nn.Parameter.")
    expect(len(net.state_dict()) > 0,
           "GaussianPriorNet's state_dict is empty: the location and scale should be buffers.")
    net = net.double()
    d = net((4,))
    ok = d.mean.dtype == torch.float64 and d.sample().dtype == torch.float64
    expect(ok, "After prior.double() the prior still uses float32 tensors: its location and "
               "scale do not follow the module. Register them as buffers in __init__ and use "
               "them in forward (do not create new tensors in forward).")
    for dev in devices():
        net = GaussianPriorNet(3).to(dev)
        d = net((4,))
        expect(d.sample().device.type == torch.device(dev).type
               and d.mean.device.type == torch.device(dev).type,
               f"After prior.to({dev!r}) the prior's tensors are not on {dev}: register the "
               f"location and scale as buffers so that .to(device) moves them.")
        lp = d.log_prob(torch.zeros(4, 3, device=dev))
        expect(lp.device.type == torch.device(dev).type, f"log_prob is not computed on {dev}.")


def check_mog_prior_shapes(ns: dict) -> None:
    """The mixture prior's batch, event and sample shapes.

    Grades the cell mog-prior-shapes-tests.
    """
    MoGPriorNet = ns["MoGPriorNet"]
    torch.manual_seed(0)
    hint = ("The components should be td.Independent(td.Normal(...), len(outcome_shape)) with "
            "batch_shape batch_shape + (C,), and the Categorical should have batch_shape "
            "batch_shape (logits of shape batch_shape + (C,)).")
    for dev in devices():
        for outcome_shape in (3, (2, 3)):
            event = (outcome_shape,) if isinstance(outcome_shape, int) else outcome_shape
            net = MoGPriorNet(outcome_shape, num_components=4).to(dev)
            if torch.is_tensor(getattr(net, "logits", None)):
                # valid read as logits or as probabilities: how the mixing weights are read is
                # graded by mog-prior-values-tests
                with torch.no_grad():
                    net.logits.fill_(0.25)
            for batch_shape in ((), (4,), (3, 5)):
                what = f"MoGPriorNet({outcome_shape!r}, 4)({batch_shape!r}) on {dev}"
                try:
                    d = net(batch_shape)
                except Exception as e:
                    raise AssertionError(f"{what} raised {type(e).__name__}: {e}. {hint}") from None
                expect_batch_and_event(d, batch_shape, event, what)
                expect_shape(d.sample(), batch_shape + event, f"a sample of {what}")
                expect_shape(d.sample((2,)), (2,) + batch_shape + event,
                             f"sample((2,)) of {what}")
                lp = d.log_prob(torch.randn(batch_shape + event, device=dev))
                expect_shape(lp, batch_shape, f"{what}.log_prob(z)", hint)


def check_mog_prior_parameters(ns: dict) -> None:
    """The mixture prior's parameters: shapes, initial locations, positive scales, gradients.

    Grades the cell mog-prior-parameters-tests.
    """
    MoGPriorNet = ns["MoGPriorNet"]
    torch.manual_seed(0)
    for dev in devices():
        for outcome_shape, event in ((3, (3,)), ((2, 3), (2, 3))):
            net = MoGPriorNet(outcome_shape, num_components=50, lbound=2.0, rbound=3.0).to(dev)
            expect(isinstance(net.logits, nn.Parameter) and tuple(net.logits.shape) == (50,),
                   "prior.logits should be an nn.Parameter of shape [C].")
            expect(isinstance(net.locs, nn.Parameter) and tuple(net.locs.shape) == (50,) + event,
                   "prior.locs should be an nn.Parameter of shape [C] + outcome_shape.")
            locs = net.locs.detach()
            expect(bool(((locs >= 2.0) & (locs <= 3.0)).all()),
                   "With lbound=2 and rbound=3, some initial locations fall outside [2, 3]: "
                   "draw them uniformly in [lbound, rbound], e.g. "
                   "torch.empty(shape).uniform_(lbound, rbound).")
            expect(locs.std().item() > 0.1,
                   "The initial locations are (nearly) all equal: draw them uniformly in [lbound, "
                   "rbound].")
            expect(net.locs.device.type == torch.device(dev).type,
                   f"After prior.to({dev!r}) the locations are not on {dev}.")
            expect_shape(net.scales, (50,) + event, "prior.scales")
            others = [p for p in net.parameters() if p is not net.logits and p is not net.locs]
            expect(len(others) >= 1,
                   "Only logits and locs are trainable: the scales should be computed from an "
                   "unconstrained nn.Parameter (e.g. raw_scales) with softplus or exp.")
            # the scales are positive, finite and follow the raw parameter, whatever its value
            seen = []
            for value in (-20.0, -3.0, -1.0, 0.0, 1.0, 3.0, 20.0):
                with torch.no_grad():
                    for p in others:
                        p.fill_(value)
                scales = net.scales.detach()
                expect(bool(torch.isfinite(scales).all() and (scales > 0).all()),
                       f"With the raw scale parameter set to {value}, prior.scales has values "
                       f"that are not positive: did you forget the positivity transform "
                       f"(softplus or exp) of an unconstrained parameter?")
                seen.append(scales.clone())
            expect(not torch.allclose(seen[2], seen[4]),
                   "prior.scales does not change when its raw parameter changes: compute the "
                   "scales from the parameter each time they are read (in the property), not once "
                   "in __init__.")
            expect(net.scales.requires_grad,
                   "prior.scales does not require gradients: compute it from an nn.Parameter.")
            # gradients reach the logits, the locations and the scale parameter (mixing weights
            # that are valid read as logits or as probabilities; a forward that cannot build
            # the prior is graded by mog-prior-shapes-tests)
            with torch.no_grad():
                for p in others:
                    p.fill_(0.5)
                net.locs.normal_()
            if not _mog_shapes_right(net, (6,), event):
                continue
            z = torch.randn((6,) + event, device=dev)
            with torch.no_grad():
                net.logits.copy_(torch.tensor([1.0] * 25 + [3.0] * 25, device=dev) / 100)
                lp_a = net((6,)).log_prob(z)
                net.logits.copy_(torch.tensor([3.0] * 25 + [1.0] * 25, device=dev) / 100)
                lp_b = net((6,)).log_prob(z)
            # a log_prob that ignores the logits is graded by mog-prior-values-tests
            uses_logits = not torch.allclose(lp_a, lp_b)
            net.zero_grad()
            net((6,)).log_prob(z).sum().backward()
            used = (("logits", net.logits),) if uses_logits else ()
            for name, p in used + (("locs", net.locs),):
                expect(p.grad is not None and p.grad.abs().sum().item() > 0,
                       f"No gradient reaches prior.{name} through log_prob: use the parameter "
                       f"itself in forward (expand it; do not copy its values into a new tensor).")
            expect(any(p.grad is not None and p.grad.abs().sum().item() > 0 for p in others),
                   "No gradient reaches the scale parameter through log_prob: use prior.scales "
                   "(computed from the parameter) in forward.")


def check_mog_prior_values(ns: dict) -> None:
    """The mixture prior's log_prob against a brute-force sum over its components.

    Grades the cell mog-prior-values-tests.
    """
    MoGPriorNet = ns["MoGPriorNet"]
    torch.manual_seed(1)
    for dev in devices():
        for outcome_shape, event in ((3, (3,)), ((2, 3), (2, 3))):
            net = MoGPriorNet(outcome_shape, num_components=4, lbound=-2.0, rbound=2.0).to(dev)
            if not all(_mog_shapes_right(net, b, event) for b in ((), (4,), (3, 5))):
                continue  # wrong shapes cost the points of mog-prior-shapes-tests, not these again
            others = [p for p in net.parameters() if p is not net.logits and p is not net.locs]
            with torch.no_grad():
                net.logits.copy_(torch.randn(4, device=dev) * 2)
                for p in others:  # values that give positive scales with or without a transform
                    p.copy_(torch.rand_like(p) + 0.5)
            with torch.no_grad():
                log_w = torch.log_softmax(net.logits, -1)  # [C]
                locs, scales = net.locs, net.scales  # [C] + event
            for batch_shape in ((), (4,), (3, 5)):
                what = f"MoGPriorNet({outcome_shape!r}, 4)({batch_shape!r}).log_prob(z) on {dev}"
                z = torch.randn(batch_shape + event, device=dev) * 2
                # brute force: log sum_c w_c prod_k N(z_k | locs[c, k], scales[c, k]^2)
                zc = z.unsqueeze(-1 - len(event))  # batch + [1] + event
                comp = td.Normal(locs, scales).log_prob(zc)  # batch + [C] + event
                comp = comp.reshape(comp.shape[: comp.dim() - len(event)] + (-1,)).sum(-1)
                ref = torch.logsumexp(log_w + comp, dim=-1)  # batch
                try:
                    with torch.no_grad():
                        lp = net(batch_shape).log_prob(z)
                except ValueError as e:
                    raise AssertionError(
                        f"{what} raised ValueError for mixing logits with negative entries: the "
                        f"logits are any real numbers, not probabilities; pass "
                        f"td.Categorical(logits=self.logits...) to the mixture (torch said: "
                        f"{str(e).splitlines()[0][:100]})") from None
                expect_shape(lp, batch_shape, what)
                uniform = torch.logsumexp(comp, -1) - math.log(4)
                if (torch.allclose(lp, uniform, atol=1e-4)
                        and not torch.allclose(uniform, ref, atol=1e-4)):
                    raise AssertionError(f"{what} ignores the mixing logits: pass "
                                         f"td.Categorical(logits=self.logits...) to the mixture.")
                expect_close(lp, ref, what,
                             "Expected log sum_c softmax(logits)_c prod_k N(z_k | locs[c,k], "
                             "scales[c,k]^2). Use logits= (not probs=) in the Categorical, and "
                             "self.locs and self.scales (standard deviations) in the Normal.",
                             rtol=1e-4, atol=1e-4)


def check_binarized_image_model(ns: dict) -> None:
    """The Bernoulli image model against td.Bernoulli(logits=decoder(z)).

    Grades the cell binarized-image-model-tests.
    """
    BinarizedImageModel = ns["BinarizedImageModel"]
    torch.manual_seed(0)
    hint = ("Expected td.Independent(td.Bernoulli(logits=self.decoder(z)), 3): the decoder's "
            "outputs are logits (any real number), so pass them as logits=, not probs=.")
    for dev in devices():
        obs = BinarizedImageModel(num_channels=2, width=4, height=5, latent_size=3,
                                  decoder_type=partial(build_ffnn_decoder, hidden_size=16)).to(dev)
        with torch.no_grad():
            obs.decoder[-2].weight.mul_(3.0)  # logits of a few units, many outside [0, 1]
        for batch_shape in ((), (4,), (3, 5)):
            what = (f"BinarizedImageModel(2 x 5 x 4 images)(z) for z of shape "
                    f"{list(batch_shape + (3,))} on {dev}")
            z = torch.randn(batch_shape + (3,), device=dev)
            x = torch.bernoulli(torch.full(batch_shape + (2, 5, 4), 0.5, device=dev))
            try:
                d = obs(z)
                lp = d.log_prob(x)
            except Exception as e:
                raise AssertionError(f"{what} raised {type(e).__name__}: {e}. {hint}") from None
            expect_batch_and_event(d, batch_shape, (2, 5, 4), what)
            expect_shape(lp, batch_shape, f"{what}.log_prob(x)",
                         "log_prob should have the batch shape: wrap td.Independent around the "
                         "Bernoulli over the 3 image dimensions.")
            with torch.no_grad():
                logits = obs.decoder(z)
                ref = td.Independent(td.Bernoulli(logits=logits), 3)
                expect_close(lp, ref.log_prob(x), f"{what}.log_prob(x)", hint, rtol=1e-4, atol=1e-3)
                expect_close(d.mean, torch.sigmoid(logits), f"{what}.mean", hint,
                             rtol=1e-4, atol=1e-5)
            s = d.sample((2,))
            expect_shape(s, (2,) + batch_shape + (2, 5, 4), f"sample((2,)) of {what}")
            expect(bool(((s == 0) | (s == 1)).all()),
                   "Samples of the Bernoulli model should be 0 or 1.")
            lp.sum().backward()
            expect(all(p.grad is not None for p in obs.decoder.parameters()),
                   "No gradient reaches the decoder through log_prob.")
            obs.zero_grad()


def check_continuous_image_model(ns: dict) -> None:
    """The continuous Bernoulli image model against td.ContinuousBernoulli.

    Grades the cell continuous-image-model-tests.
    """
    ContinuousImageModel = ns["ContinuousImageModel"]
    torch.manual_seed(0)
    hint = ("Expected td.Independent(td.ContinuousBernoulli(logits=self.decoder(z)), 3): grey "
            "levels need the continuous Bernoulli (td.Bernoulli only scores 0 and 1, and its "
            "formula is not normalised on [0, 1]), and the decoder's outputs are logits.")
    for dev in devices():
        obs = ContinuousImageModel(num_channels=2, width=4, height=5, latent_size=3,
                                   decoder_type=partial(build_ffnn_decoder, hidden_size=16)).to(dev)
        with torch.no_grad():
            obs.decoder[-2].weight.mul_(3.0)
        for batch_shape in ((), (4,), (3, 5)):
            what = (f"ContinuousImageModel(2 x 5 x 4 images)(z) for z of shape "
                    f"{list(batch_shape + (3,))} on {dev}")
            z = torch.randn(batch_shape + (3,), device=dev)
            x = torch.rand(batch_shape + (2, 5, 4), device=dev)
            try:
                d = obs(z)
                lp = d.log_prob(x)
            except Exception as e:
                raise AssertionError(f"{what} raised {type(e).__name__}: {e}. {hint}") from None
            expect_batch_and_event(d, batch_shape, (2, 5, 4), what)
            expect_shape(lp, batch_shape, f"{what}.log_prob(x)",
                         "log_prob should have the batch shape: wrap td.Independent around the "
                         "continuous Bernoulli over the 3 image dimensions.")
            with torch.no_grad():
                ref = td.Independent(td.ContinuousBernoulli(logits=obs.decoder(z)), 3)
                expect_close(lp, ref.log_prob(x), f"{what}.log_prob(x)", hint, rtol=1e-4, atol=1e-3)
            s = d.sample()
            expect_shape(s, batch_shape + (2, 5, 4), f"a sample of {what}")
            expect(bool(((s >= 0) & (s <= 1)).all()), "Samples should lie in [0, 1].")
            lp.sum().backward()
            expect(all(p.grad is not None for p in obs.decoder.parameters()),
                   "No gradient reaches the decoder through log_prob.")
            obs.zero_grad()


def check_joint_log_prob(ns: dict) -> None:
    """JointDistribution.log_prob is log p(z) + log p(x|z).

    Grades the cell joint-log-prob-tests.
    """
    JointDistribution = ns["JointDistribution"]
    import dpm_core as ref
    torch.manual_seed(0)
    for dev in devices():
        for prior_net in (ref.GaussianPriorNet(2), ref.MoGPriorNet(2, 3, lbound=-1.0, rbound=1.0)):
            obs = _TinyImageModel(2, image_shape=(1, 3, 2))
            joint = JointDistribution(prior_net, obs).to(dev)
            for batch_shape in ((), (4,), (3, 5)):
                what = (f"log_prob(z, x) with a {type(prior_net).__name__}, batch shape "
                        f"{batch_shape}, on {dev}")
                with torch.no_grad():
                    z = prior_net(batch_shape).sample()
                    x = obs(z).sample()
                    lp = joint.log_prob(z, x)
                    log_prior = prior_net(batch_shape).log_prob(z)
                    log_lik = obs(z).log_prob(x)
                expect_shape(lp, batch_shape, what, "It should have the batch shape of z.")
                if torch.allclose(lp, log_lik, atol=1e-4):
                    raise AssertionError(f"{what} equals log p(x|z): the prior term log p(z) is "
                                         "missing.")
                if torch.allclose(lp, log_prior, atol=1e-4):
                    raise AssertionError(f"{what} equals log p(z): the term log p(x|z) is missing.")
                expect_close(lp, log_prior + log_lik, what,
                             "log p(z, x) = log p(z) + log p(x|z), with the prior of the batch "
                             "shape of z.",
                             atol=1e-4)


def check_joint_log_marginal(ns: dict) -> None:
    """JointDistribution.log_marginal against a brute-force sum over the codes.

    Grades the cell joint-log-marginal-tests.
    """
    JointDistribution = ns["JointDistribution"]
    torch.manual_seed(1)
    N = 4
    for dev in devices():
        prior_net = CategoricalPriorNet(N)
        with torch.no_grad():
            prior_net.logits.copy_(torch.randn(N))  # a non-uniform prior
        obs = _TinyImageModel(N, image_shape=(1, 3, 2))
        joint = JointDistribution(prior_net, obs).to(dev)
        for batch_shape in ((), (4,), (3, 5)):
            what = f"log_marginal(x) for batch shape {batch_shape} on {dev}"
            x = torch.bernoulli(torch.full(batch_shape + (1, 3, 2), 0.5, device=dev))
            # brute force: a loop over the N one-hot codes
            log_liks = []
            for n in range(N):
                code = F.one_hot(torch.tensor(n), N).float().to(dev).expand(batch_shape + (N,))
                log_liks.append(obs(code).log_prob(x))
            log_lik = torch.stack(log_liks)  # [N] + batch_shape
            log_prior = prior_net.logits.log_softmax(-1).reshape((N,) + (1,) * len(batch_shape))
            log_joint = log_prior + log_lik  # [N] + batch_shape
            expected = torch.logsumexp(log_joint, 0)
            with torch.no_grad():
                got = joint.log_marginal(x, _enumerate_support)
            expect_shape(got, batch_shape, what,
                         "Reduce over the support dimension N (dim 0), not over the batch.")
            if torch.allclose(got, log_joint.mean(0), atol=1e-4):
                raise AssertionError(f"{what} averages the log joint over the codes: log p(x) is "
                                     f"torch.logsumexp of log p(z, x) over the support dimension.")
            if torch.allclose(got, expected - math.log(N), atol=1e-4):
                raise AssertionError(f"{what} is the log of the average of p(z, x) over the codes: "
                                     f"p(x) is their sum (the prior p(z) already weighs them), "
                                     f"torch.logsumexp without subtracting log N.")
            if torch.allclose(got, torch.logsumexp(log_lik, 0), atol=1e-4):
                raise AssertionError(f"{what} leaves out the prior: sum log p(z) + log p(x|z).")
            expect_close(got, expected, what,
                         "log p(x) = logsumexp over the N codes of log p(z) + log p(x|z).",
                         atol=1e-4)
        # the order in which enumerate_fn lists the codes does not matter
        x = torch.bernoulli(torch.full((4, 1, 3, 2), 0.5, device=dev))
        with torch.no_grad():
            a = joint.log_marginal(x, _enumerate_support)
            b = joint.log_marginal(x, lambda p: p.enumerate_support().flip(0))
        expect_close(b, a, "log_marginal with the codes listed in reverse order", atol=1e-4)


def check_joint_posterior(ns: dict) -> None:
    """JointDistribution.posterior is p(z|x) over the enumerated codes, in their order.

    Grades the cell joint-posterior-tests.
    """
    JointDistribution = ns["JointDistribution"]
    torch.manual_seed(2)
    N = 4
    hint = ("The log joint has shape [N] + batch_shape; the Categorical normalises over its last "
            "dimension, so move N to the end with .movedim(0, -1) (or permute). swapaxes(0, -1) "
            "is only right for a batch with a single dimension.")
    for dev in devices():
        prior_net = CategoricalPriorNet(N)
        with torch.no_grad():
            prior_net.logits.copy_(torch.randn(N))
        obs = _TinyImageModel(N, image_shape=(1, 3, 2))
        joint = JointDistribution(prior_net, obs).to(dev)
        for batch_shape in ((), (4,), (3, 5)):
            what = f"posterior(x) for batch shape {batch_shape} on {dev}"
            x = torch.bernoulli(torch.full(batch_shape + (1, 3, 2), 0.5, device=dev))
            terms = []
            for n in range(N):
                code = F.one_hot(torch.tensor(n), N).float().to(dev).expand(batch_shape + (N,))
                terms.append(prior_net(batch_shape).log_prob(code) + obs(code).log_prob(x))
            expected = torch.softmax(torch.stack(terms, dim=-1), dim=-1)  # batch_shape + [N]
            with torch.no_grad():
                got = joint.posterior(x, _enumerate_support)
            expect(isinstance(got, td.Categorical),
                   f"{what} should be a td.Categorical, got {type(got).__name__}.")
            expect(tuple(got.batch_shape) == batch_shape and got.probs.shape[-1] == N,
                   f"{what} has batch_shape {list(got.batch_shape)} over {got.probs.shape[-1]} "
                   f"outcomes, expected batch_shape {list(batch_shape)} over N = {N}. {hint}")
            expect_close(got.probs.sum(-1), torch.ones(batch_shape, device=dev),
                         f"{what}: probabilities summed over the codes", hint)
            expect_close(got.probs, expected, f"{what}: p(z|x)",
                         hint + " The posterior is proportional to p(z) p(x|z).", atol=1e-5)
            # outcome n is the n-th code of enumerate_fn
            with torch.no_grad():
                flipped = joint.posterior(x, lambda p: p.enumerate_support().flip(0))
            expect_close(flipped.probs, expected.flip(-1),
                         f"{what} with the codes listed in reverse order",
                         "Outcome n of the posterior should be the n-th code that enumerate_fn "
                         "lists.",
                         atol=1e-5)


def check_joint_naive_bound(ns: dict) -> None:
    """JointDistribution.naive_lowerbound: shapes, expectation, sign and gradients.

    Grades the cell joint-naive-bound-tests.
    """
    JointDistribution = ns["JointDistribution"]
    import dpm_core as ref
    N, S = 4, 1000
    for dev in devices():
        torch.manual_seed(3)
        prior_net = CategoricalPriorNet(N)
        with torch.no_grad():
            prior_net.logits.copy_(torch.randn(N))
        obs = _TinyImageModel(N, image_shape=(1, 3, 2))
        joint = JointDistribution(prior_net, obs).to(dev)
        # shapes, with a Gaussian and a categorical prior
        gauss = JointDistribution(ref.GaussianPriorNet(2),
                                  _TinyImageModel(2, image_shape=(1, 3, 2))).to(dev)
        for model in (joint, gauss):
            for batch_shape in ((), (4,), (3, 5)):
                x = torch.bernoulli(torch.full(batch_shape + (1, 3, 2), 0.5, device=dev))
                with torch.no_grad():
                    b = model.naive_lowerbound(x, 7)
                expect_shape(b, batch_shape, "naive_lowerbound(x, 7) for batch shape "
                                             f"{batch_shape} on {dev}",
                             "Average over the S samples (dim 0), not over the batch.")
                expect_shape(model.naive_lowerbound(x, 1), batch_shape,
                             f"naive_lowerbound(x, 1) for batch shape {batch_shape} on {dev}")
        # statistics: the exact value of the bound is sum_n p(z_n) log p(x|z_n). The estimate with
        # S = 1000 draws (seed 0) must be within 5 standard errors (plus 1e-3) of it, per image.
        x = torch.bernoulli(torch.full((5, 1, 3, 2), 0.5, device=dev))
        codes = torch.eye(N, device=dev).unsqueeze(1)  # [N, 1, N]
        with torch.no_grad():
            weights = prior_net.logits.softmax(-1).to(dev)  # [N]
            log_lik = obs(codes).log_prob(x)  # [N, 5]
            exact = (weights.unsqueeze(-1) * log_lik).sum(0)  # [5]
            stderr = ((weights.unsqueeze(-1) * (log_lik - exact) ** 2).sum(0) / S).sqrt()
            log_px = torch.logsumexp(weights.log().unsqueeze(-1) + log_lik, 0)
            torch.manual_seed(0)
            est = joint.naive_lowerbound(x, S)
        tol = 5 * stderr + 1e-3
        what = f"naive_lowerbound(x, {S}) on {dev}"
        if ((est + exact).abs() <= tol).all() and not ((est - exact).abs() <= tol).all():
            raise AssertionError(f"{what} has the wrong sign: the bound is +E_p(z)[log p(x|z)].")
        if (est > log_px + tol).any():
            raise AssertionError(f"{what} exceeds the exact log p(x) by more than the Monte Carlo "
                                 f"error, so it does not estimate a lower bound: draw num_samples "
                                 "codes z ~ p(z) and average log p(x|z) over them (an average, "
                                 "not "
                                 f"a logsumexp; the prior, not the posterior).")
        entropy_offset = (weights * weights.log()).sum()
        if ((est - (exact + entropy_offset)).abs() <= tol).all():
            raise AssertionError(f"{what} averages log p(z, x), not log p(x|z): the naive bound "
                                 f"has no log p(z) term.")
        if (est - exact > tol).any() and not (exact - est > tol).any():
            raise AssertionError(f"{what} = {est.tolist()} is larger than the exact "
                                 f"E_p(z)[log p(x|z)] = {exact.tolist()}: average log p(x|z) over "
                                 f"the samples (a mean over dim 0); a logsumexp over samples "
                                 f"estimates something else.")
        expect(bool(((est - exact).abs() <= tol).all()),
               f"{what} = {est.tolist()} is not within 5 standard errors of the exact "
               f"E_p(z)[log p(x|z)] = {exact.tolist()}: draw z from the prior (sample((S,))) and "
               f"average log p(x|z) over the samples.")
        # a Gaussian prior: compare with a large reference sample (200000 draws)
        x = torch.bernoulli(torch.full((3, 1, 3, 2), 0.5, device=dev))
        with torch.no_grad():
            zs = torch.randn(200000, 1, 2, device=dev)
            ll = gauss.cpd_net(zs).log_prob(x)  # [200000, 3]
            mean, sd = ll.mean(0), ll.std(0)
            torch.manual_seed(0)
            est = gauss.naive_lowerbound(x, S)
        expect(bool(((est - mean).abs() <= 5 * sd / math.sqrt(S) + 1e-2).all()),
               f"naive_lowerbound(x, {S}) with a Gaussian prior on {dev} is {est.tolist()}, but "
               f"E_p(z)[log p(x|z)] is about {mean.tolist()}.")
        # gradients reach the decoder (the bound is a training objective)
        b = gauss.naive_lowerbound(x, 5)
        decoder = list(gauss.cpd_net.parameters())
        expect(b.requires_grad and all(
                   g is not None
                   for g in torch.autograd.grad(b.sum(), decoder, allow_unused=True)),
               "No gradient reaches the decoder through naive_lowerbound: do not compute it "
               "under torch.no_grad() or with .detach().")


CHECKS = {
    "gaussian-prior-tests": check_gaussian_prior,
    "gaussian-prior-buffers-tests": check_gaussian_prior_buffers,
    "mog-prior-shapes-tests": check_mog_prior_shapes,
    "mog-prior-parameters-tests": check_mog_prior_parameters,
    "mog-prior-values-tests": check_mog_prior_values,
    "binarized-image-model-tests": check_binarized_image_model,
    "continuous-image-model-tests": check_continuous_image_model,
    "joint-log-prob-tests": check_joint_log_prob,
    "joint-log-marginal-tests": check_joint_log_marginal,
    "joint-posterior-tests": check_joint_posterior,
    "joint-naive-bound-tests": check_joint_naive_bound,
}
