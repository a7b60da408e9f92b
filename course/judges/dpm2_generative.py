"""Judges of dpm2_generative: the priors, the observation models and the joint distribution.

One judge per graded test cell. Each draws its inputs (and the parameters of the given parts)
from the run's generator, has a probe of ``dpm_probe.probes.dpm2_generative`` build the
student's class in the kernel and exercise it, and checks what comes back here, against
torch.distributions, closed forms and brute-force sums over the codes.

So that one mistake costs points once, the joint's judges never use the student's priors or
image models: the probe builds ``JointDistribution`` with priors and the notebook's
``TinyImageModel`` made from parameters drawn here, and the references below use the same
parameters (:func:`_tiny_model`, :func:`_prior_dist`). The image models get a decoder whose
weights are drawn here (:func:`_decoder`). Where a check of the mixture prior needs a working
``forward`` and that is not what it grades, it leaves out what the prior cannot build (the
shapes cell charges that).
"""

from __future__ import annotations

import math

import torch
import torch.distributions as td
import torch.nn.functional as F

from course.judges._common import (Probe, draw_seed, expect, expect_close, expect_distribution,
                                   is_distribution, kind_of, probe_op, statistical, tensor_value)
from dpm_core import build_ffnn_decoder
from dpm_probe.wire import Node, Tensor

__all__ = ["JUDGES", "gaussian_prior", "gaussian_prior_buffers", "mog_prior_shapes",
           "mog_prior_parameters", "mog_prior_values", "binarized_image_model",
           "continuous_image_model", "joint_log_prob", "joint_log_marginal", "joint_posterior",
           "joint_naive_bound"]

_PROBES = "dpm2_generative"
#: the outcome shapes of the priors and the batch shapes they are built for
_OUTCOMES = (3, (2, 3))
_BATCHES = ((), (4,), (3, 5))
#: the images of the image models' tests ([C, H, W]), their codes' size, the decoder's width
_IMAGE, _LATENT, _HIDDEN = (2, 5, 4), 3, 16
#: the images of the joint's tests (TinyImageModel's image_shape)
_TINY = (1, 3, 2)
_MISFIT = ("the kernel's answer to the hidden tests does not fit their request: restart the "
           "kernel and run the notebook again")


# ----------------------------------------------------------------------------- what came back
def _raised(value):
    """``(error type, message)`` when ``value`` reports an error of the student's code: an
    error node, or the ``{"raised", "message"}`` dict by which the probes report a step that
    raised (the runtime describes an error node nested in a probe's result as an object)."""
    if isinstance(value, Node) and value.kind == "error":
        return value.type, value.message
    if isinstance(value, dict) and set(value) == {"raised", "message"}:
        return str(value["raised"]), str(value["message"])
    return None


def _ok(value, what: str, hint: str = ""):
    """``value``, unless it reports an error: then the message names ``what`` and the error."""
    error = _raised(value)
    if error is None:
        return value
    kind, message = error
    if kind == "NotImplementedError" and not message:
        raise AssertionError(f"{what} raised NotImplementedError: write the exercise's code "
                             f"(and delete its raise line)")
    raise AssertionError(f"{what} raised {kind}: {message}" + (f". {hint}" if hint else ""))


def _op(result, name: str):
    """A probe's result; an error of the whole probe (building ``name``) as a message."""
    error = _raised(result)
    if error is not None:
        kind, message = error
        if kind == "KeyError" and message.strip("'\"") == name:
            raise AssertionError(f"{name} is not defined: run its cell before this one")
        if kind == "NotImplementedError" and not message:
            raise AssertionError(f"{name} is not written yet: write its code (and delete the "
                                 f"raise lines)")
        raise AssertionError(f"{name} raised {kind}: {message}")
    return result


def _items(value, count: int) -> list:
    expect(isinstance(value, list) and len(value) == count, _MISFIT)
    return value


def _field(found, key: str):
    expect(isinstance(found, dict) and key in found, _MISFIT)
    return found[key]






def _expect_shape(value, shape, what: str, hint: str = "") -> torch.Tensor:
    """The values of a reported plain tensor of shape ``shape``."""
    got = tensor_value(value, what)
    expect(tuple(got.shape) == tuple(shape),
           f"{what} has shape {list(got.shape)}, expected {list(shape)}. {hint}".strip())
    return got.data


def _expect_close(value, expected, what: str, hint: str = "", rtol: float = 1e-4,
                  atol: float = 1e-5) -> None:
    expect_close(tensor_value(value, what).data, expected, what, hint, rtol=rtol, atol=atol)




def _expect_batch_and_event(d, batch_shape, event_shape, what: str) -> None:
    """As :func:`_expect_distribution`; when the event dimensions ended up in the batch shape,
    the message says so."""
    if is_distribution(d):
        got = (tuple(d.batch_shape), tuple(d.event_shape))
        if got != (tuple(batch_shape), tuple(event_shape)) and \
                got[0] + got[1] == tuple(batch_shape) + tuple(event_shape):
            raise AssertionError(
                f"{what} has batch_shape {list(got[0])} and event_shape {list(got[1])}, expected "
                f"{list(batch_shape)} and {list(event_shape)}: did you forget td.Independent, or "
                f"reinterpret the wrong number of dimensions as event dimensions?")
    expect_distribution(d, batch_shape, event_shape, what)


def _builds(d, batch_shape, event_shape) -> bool:
    """Whether the mixture prior built a distribution with these shapes (mixing logits at
    1 / C, valid read as logits or as probabilities). The shapes are graded by
    mog-prior-shapes-tests; the other checks of the prior leave out what it cannot build."""
    return is_distribution(d) and tuple(d.batch_shape) == tuple(batch_shape) and \
        tuple(d.event_shape) == tuple(event_shape)


def _numbers(values: torch.Tensor) -> list:
    """Values for a message, to 4 decimals."""
    return [round(v, 4) for v in values.tolist()]


def _event(outcome_shape) -> tuple:
    return (outcome_shape,) if isinstance(outcome_shape, int) else tuple(outcome_shape)


# ----------------------------------------------------------------------------- the given parts
def _decoder(rng: torch.Generator):
    """dpm_core's FFNN decoder from codes [_LATENT] to logits [_IMAGE], hidden size _HIDDEN,
    with PyTorch's default initialisation drawn from ``rng`` and the last layer's weights
    scaled by 3 (logits of a few units, many outside [0, 1])."""
    channels, height, width = _IMAGE
    decoder = build_ffnn_decoder(latent_size=_LATENT, num_channels=channels, width=width,
                                 height=height, hidden_size=_HIDDEN)
    with torch.no_grad():
        for layer in decoder:
            if isinstance(layer, torch.nn.Linear):
                bound = 1 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    p.copy_(bound * (2 * torch.rand(p.shape, generator=rng) - 1))
        decoder[-2].weight.mul_(3.0)
    return decoder


def _tiny(rng: torch.Generator, latent_size: int, gain: float = 2.0) -> dict:
    """The parameters of the notebook's TinyImageModel(latent_size, image_shape=_TINY) (cell
    tiny-model), drawn as it draws them: weight [D, K] and bias [D] from N(0, gain^2)."""
    pixels = math.prod(_TINY)
    return {"weight": gain * torch.randn(pixels, latent_size, generator=rng),
            "bias": gain * torch.randn(pixels, generator=rng), "image_shape": _TINY}


def _tiny_model(obs: dict):
    """p(x|z) of TinyImageModel with the parameters ``obs``: batch_shape the batch shape of z,
    event_shape _TINY."""
    def p_x_given_z(z):
        logits = F.linear(z, obs["weight"], obs["bias"])
        return td.Independent(td.Bernoulli(logits=logits.reshape(logits.shape[:-1] + _TINY)),
                              len(_TINY))
    return p_x_given_z


def _prior_dist(prior: dict, batch_shape) -> td.Distribution:
    """p(z) of a prior that the probe builds from ``prior``: batch_shape ``batch_shape``,
    event_shape the codes' shape."""
    batch_shape = tuple(batch_shape)
    if prior["kind"] == "gaussian":
        event = _event(prior["outcome_shape"])
        shape = batch_shape + event
        return td.Independent(td.Normal(torch.zeros(shape), torch.ones(shape)), len(event))
    if prior["kind"] == "mixture":
        shape = batch_shape + tuple(prior["locs"].shape)
        components = td.Independent(td.Normal(prior["locs"].expand(shape),
                                              prior["scales"].expand(shape)), 1)
        mixing = td.Categorical(logits=prior["logits"].expand(batch_shape + (shape[-2],)))
        return td.MixtureSameFamily(mixing, components)
    return td.OneHotCategorical(logits=prior["logits"].expand(batch_shape + prior["logits"].shape))


def _draw_z(prior: dict, batch_shape, rng: torch.Generator) -> torch.Tensor:
    """A draw of z ~ p(z) from ``rng``."""
    batch_shape = tuple(batch_shape)
    if prior["kind"] == "gaussian":
        return torch.randn(batch_shape + _event(prior["outcome_shape"]), generator=rng)
    probs = prior["logits"].softmax(-1)
    c = torch.multinomial(probs, max(1, math.prod(batch_shape)), replacement=True,
                          generator=rng).reshape(batch_shape)
    if prior["kind"] == "categorical":
        return F.one_hot(c, probs.shape[0]).float()
    locs, scales = prior["locs"][c], prior["scales"][c]
    return locs + scales * torch.randn(locs.shape, generator=rng)


def _draw_x(obs: dict, z: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """A draw of x ~ p(x|z) from ``rng``."""
    return torch.bernoulli(_tiny_model(obs)(z).base_dist.probs, generator=rng)


def _coin_images(batch_shape, rng: torch.Generator) -> torch.Tensor:
    """Binary images of shape batch_shape + _TINY, each pixel a fair coin."""
    return torch.bernoulli(torch.full(tuple(batch_shape) + _TINY, 0.5), generator=rng)


def _joint_op(device: str, prior: dict, obs: dict, calls: list, seed: int) -> dict:
    return probe_op(f"{_PROBES}.joint", seed=seed, device=device, prior=prior, obs=obs,
                    calls=calls)


# ----------------------------------------------------------------------------- the priors
def gaussian_prior(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the standard Gaussian prior (cell gaussian-prior-tests).

    GaussianPriorNet(outcome_shape)(batch_shape) for outcome shapes 3 and (2, 3) and batch
    shapes (), (4,), (3, 5), on every device: its batch and event shapes, the shape of a sample,
    log_prob at points drawn from N(0, 2^2) for each run against td.Independent(td.Normal(0, 1)),
    its mean (0) and stddev (1); rtol 1e-4, atol 1e-5.
    """
    cases = [(o, b, 2 * torch.randn(b + _event(o), generator=rng))
             for o in _OUTCOMES for b in _BATCHES]
    ops = [probe_op(f"{_PROBES}.gaussian_prior", seed=draw_seed(rng), device=device,
                    cases=[{"outcome_shape": o, "batch_shape": b, "z": z} for o, b, z in cases])
           for device in probe.devices]
    for device, result in zip(probe.devices, probe.run(ops)):
        seen = _items(_op(result, "GaussianPriorNet"), len(cases))
        for (outcome_shape, batch_shape, z), found in zip(cases, seen):
            event = _event(outcome_shape)
            _ok(found.get("net") if isinstance(found, dict) else None,
                f"GaussianPriorNet({outcome_shape!r})")
            what = f"GaussianPriorNet({outcome_shape!r})({batch_shape!r}) on {device}"
            d = _ok(_field(found, "dist"), what)
            _expect_batch_and_event(d, batch_shape, event, what)
            _expect_shape(_ok(_field(found, "sample"), f"a sample of {what}"),
                          batch_shape + event, f"a sample of {what}")
            lp = _ok(_field(found, "log_prob"), f"{what}.log_prob(z)")
            _expect_shape(lp, batch_shape, f"{what}.log_prob(z)",
                          "log_prob should have the batch shape: did you forget td.Independent "
                          "over the len(outcome_shape) latent dimensions?")
            ref = td.Independent(td.Normal(torch.zeros_like(z), torch.ones_like(z)), len(event))
            _expect_close(lp, ref.log_prob(z), f"{what}.log_prob(z)",
                          "Every coordinate should be N(0, 1): check the location (zeros) "
                          "and the scale (ones, a standard deviation, not a variance).")
            _expect_close(_ok(_field(found, "mean"), f"{what}.mean"), torch.zeros_like(z),
                          f"{what}.mean")
            _expect_close(_ok(_field(found, "stddev"), f"{what}.stddev"), torch.ones_like(z),
                          f"{what}.stddev")
    return "Hidden tests of the Gaussian prior passed."


def _on_device(value, device: str) -> bool:
    return isinstance(value, Tensor) and value.device.split(":")[0] == device


def gaussian_prior_buffers(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the Gaussian prior's buffers (cell gaussian-prior-buffers-tests).

    GaussianPriorNet((2, 3)) has no trainable parameters and a non-empty state_dict; after
    .double() its distribution's mean and samples are float64; after .to(device), on every
    device, its samples, mean and log_prob live on that device.
    """
    devices = probe.devices
    seen = _op(probe.run([probe_op(
        f"{_PROBES}.gaussian_prior_buffers", seed=draw_seed(rng), outcome_shape=(2, 3),
        batch_shape=(4,), devices=devices, device_outcome_shape=3,
        z=torch.zeros(4, 3))])[0], "GaussianPriorNet")
    expect(_field(seen, "num_parameters") == 0,
           "GaussianPriorNet has trainable parameters, but the standard Gaussian prior is fixed: "
           "store its location and scale with self.register_buffer, not as nn.Parameter.")
    state_size = _field(seen, "state_size")
    expect(isinstance(state_size, int) and state_size > 0,
           "GaussianPriorNet's state_dict is empty: the location and scale should be buffers.")
    double = _ok(_field(seen, "double"), "GaussianPriorNet((2, 3)).double()((4,))")
    mean = _ok(_field(double, "mean"), "GaussianPriorNet((2, 3)).double()((4,)).mean")
    sample = _ok(_field(double, "sample"), "a sample of GaussianPriorNet((2, 3)).double()((4,))")
    expect(all(isinstance(t, Tensor) and t.dtype == torch.float64 for t in (mean, sample)),
           "After prior.double() the prior still uses float32 tensors: its location and "
           "scale do not follow the module. Register them as buffers in __init__ and use "
           "them in forward (do not create new tensors in forward).")
    moved_all = _field(seen, "devices")
    for device in devices:
        moved = _ok(_field(moved_all, device), f"GaussianPriorNet(3).to({device!r})((4,))")
        sample = _ok(_field(moved, "sample"), f"a sample of GaussianPriorNet(3) on {device}")
        mean = _ok(_field(moved, "mean"), f"the mean of GaussianPriorNet(3) on {device}")
        expect(_on_device(sample, device) and _on_device(mean, device),
               f"After prior.to({device!r}) the prior's tensors are not on {device}: register the "
               f"location and scale as buffers so that .to(device) moves them.")
        lp = _ok(_field(moved, "log_prob"), f"log_prob of GaussianPriorNet(3) on {device}")
        expect(_on_device(lp, device), f"log_prob is not computed on {device}.")
    return "Hidden tests of the Gaussian prior's buffers passed."


_MOG_SHAPES_HINT = ("The components should be td.Independent(td.Normal(...), len(outcome_shape)) "
                    "with batch_shape batch_shape + (C,), and the Categorical should have "
                    "batch_shape batch_shape (logits of shape batch_shape + (C,)).")


def mog_prior_shapes(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the mixture prior's shapes (cell mog-prior-shapes-tests).

    MoGPriorNet(outcome_shape, 4)(batch_shape) for outcome shapes 3 and (2, 3) and batch
    shapes (), (4,), (3, 5), on every device, its mixing logits set to 1 / 4 (valid read as
    logits or as probabilities: how they are read is graded by mog-prior-values-tests): the
    batch and event shapes, the shapes of sample(), sample((2,)) and log_prob(z).
    """
    C = 4
    keys, ops = [], []
    for device in probe.devices:
        for outcome_shape in _OUTCOMES:
            cases = [(b, torch.randn(b + _event(outcome_shape), generator=rng)) for b in _BATCHES]
            keys.append((device, outcome_shape, cases))
            ops.append(probe_op(f"{_PROBES}.mog_prior_shapes", seed=draw_seed(rng), device=device,
                                outcome_shape=outcome_shape, num_components=C,
                                fill_logits=1.0 / C,
                                cases=[{"batch_shape": b, "z": z} for b, z in cases]))
    for (device, outcome_shape, cases), result in zip(keys, probe.run(ops)):
        event = _event(outcome_shape)
        seen = _items(_op(result, "MoGPriorNet"), len(cases))
        for (batch_shape, _), found in zip(cases, seen):
            what = f"MoGPriorNet({outcome_shape!r}, {C})({batch_shape!r}) on {device}"
            d = _ok(_field(found, "dist"), what, _MOG_SHAPES_HINT)
            _expect_batch_and_event(d, batch_shape, event, what)
            _expect_shape(_ok(_field(found, "sample"), f"a sample of {what}", _MOG_SHAPES_HINT),
                          batch_shape + event, f"a sample of {what}")
            _expect_shape(_ok(_field(found, "sample2"), f"sample((2,)) of {what}",
                              _MOG_SHAPES_HINT),
                          (2,) + batch_shape + event, f"sample((2,)) of {what}")
            lp = _ok(_field(found, "log_prob"), f"{what}.log_prob(z)", _MOG_SHAPES_HINT)
            _expect_shape(lp, batch_shape, f"{what}.log_prob(z)", _MOG_SHAPES_HINT)
    return "Hidden tests of the mixture prior's shapes passed."


def _grad_reaches(grad) -> bool:
    """Whether a reported gradient is a tensor with a nonzero (and not NaN) entry."""
    return isinstance(grad, Tensor) and bool(grad.data.abs().sum() > 0)


def mog_prior_parameters(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the mixture prior's parameters (cell mog-prior-parameters-tests).

    MoGPriorNet(outcome_shape, 50, lbound=2, rbound=3) for outcome shapes 3 and (2, 3), on every
    device: logits and locs are nn.Parameters of shapes [C] and [C] + outcome_shape; the initial
    locations lie in [2, 3] and are spread (std > 0.1) on the device; scales has shape
    [C] + outcome_shape and comes from another parameter through a positivity transform: with
    that parameter filled with each of -20, -3, -1, 0, 1, 3, 20, the scales are positive and
    finite, and they change with it, and require a gradient. Where the prior builds the right
    shapes, log_prob(z) (z ~ N(0, I) for each run) sends a gradient to the locations, the
    scale parameter and, if log_prob depends on them, the logits.
    """
    C, raw_values = 50, (-20.0, -3.0, -1.0, 0.0, 1.0, 3.0, 20.0)
    logits_a = torch.tensor([1.0] * (C // 2) + [3.0] * (C - C // 2)) / 100
    logits_b = logits_a.flip(0)
    keys, ops = [], []
    for device in probe.devices:
        for outcome_shape in _OUTCOMES:
            event = _event(outcome_shape)
            keys.append((device, outcome_shape))
            ops.append(probe_op(
                f"{_PROBES}.mog_prior_parameters", seed=draw_seed(rng), device=device,
                outcome_shape=outcome_shape, num_components=C, lbound=2.0, rbound=3.0,
                raw_values=list(raw_values), raw_after=0.5, uniform=1.0 / C, batch_shape=(6,),
                z=torch.randn((6,) + event, generator=rng), logits_a=logits_a,
                logits_b=logits_b))
    for (device, outcome_shape), result in zip(keys, probe.run(ops)):
        event = _event(outcome_shape)
        seen = _op(result, "MoGPriorNet")
        logits, locs = _field(seen, "logits"), _field(seen, "locs")
        expect(isinstance(logits, dict) and logits.get("parameter") is True
               and logits.get("shape") == [C],
               "prior.logits should be an nn.Parameter of shape [C].")
        expect(isinstance(locs, dict) and locs.get("parameter") is True
               and locs.get("shape") == [C, *event],
               "prior.locs should be an nn.Parameter of shape [C] + outcome_shape.")
        value = tensor_value(_field(seen, "locs_value"), "prior.locs")
        expect(bool(((value.data >= 2.0) & (value.data <= 3.0)).all()),
               "With lbound=2 and rbound=3, some initial locations fall outside [2, 3]: "
               "draw them uniformly in [lbound, rbound], e.g. "
               "torch.empty(shape).uniform_(lbound, rbound).")
        expect(bool(value.data.float().std() > 0.1),
               "The initial locations are (nearly) all equal: draw them uniformly in [lbound, "
               "rbound].")
        expect(_on_device(value, device),
               f"After prior.to({device!r}) the locations are not on {device}.")
        _expect_shape(_ok(_field(seen, "scales"), "prior.scales"), (C,) + event, "prior.scales")
        expect(_field(seen, "num_others") != 0,
               "Only logits and locs are trainable: the scales should be computed from an "
               "unconstrained nn.Parameter (e.g. raw_scales) with softplus or exp.")
        # the scales are positive, finite and follow the raw parameter, whatever its value
        scales_at = _items(_field(seen, "scales_at"), len(raw_values))
        for raw, scales in zip(raw_values, scales_at):
            scales = _expect_shape(_ok(scales, "prior.scales"), (C,) + event, "prior.scales")
            expect(bool(torch.isfinite(scales).all() and (scales > 0).all()),
                   f"With the raw scale parameter set to {raw}, prior.scales has values "
                   f"that are not positive: did you forget the positivity transform "
                   f"(softplus or exp) of an unconstrained parameter?")
        expect(not torch.allclose(scales_at[2].data, scales_at[4].data),
               "prior.scales does not change when its raw parameter changes: compute the "
               "scales from the parameter each time they are read (in the property), not once "
               "in __init__.")
        expect(_ok(_field(seen, "scales_requires_grad"), "prior.scales") is True,
               "prior.scales does not require gradients: compute it from an nn.Parameter.")
        # gradients reach the logits, the locations and the scale parameter (a forward that
        # cannot build the prior is graded by mog-prior-shapes-tests)
        if not _builds(_field(seen, "built"), (6,), event):
            continue
        what = f"MoGPriorNet({outcome_shape!r}, {C})((6,)).log_prob(z) on {device}"
        lp_a = _expect_shape(_ok(_field(seen, "log_prob_a"), what), (6,), what)
        lp_b = _expect_shape(_ok(_field(seen, "log_prob_b"), what), (6,), what)
        # a log_prob that ignores the logits is graded by mog-prior-values-tests
        uses_logits = not torch.allclose(lp_a, lp_b)
        grads = _ok(_field(seen, "grads"), f"the backward pass of {what}")
        used = ("logits",) if uses_logits else ()
        for name in used + ("locs",):
            expect(_grad_reaches(_field(grads, name)),
                   f"No gradient reaches prior.{name} through log_prob: use the parameter "
                   f"itself in forward (expand it; do not copy its values into a new tensor).")
        others = _field(grads, "others")
        expect(isinstance(others, list) and any(_grad_reaches(g) for g in others),
               "No gradient reaches the scale parameter through log_prob: use prior.scales "
               "(computed from the parameter) in forward.")
    return "Hidden tests of the mixture prior's parameters passed."


def _mixture_log_prob(z, log_w, locs, scales, event) -> tuple:
    """Brute force: log sum_c w_c prod_k N(z_k | locs[c, k], scales[c, k]^2) (batch_shape), and
    the same with uniform weights."""
    zc = z.unsqueeze(-1 - len(event))  # batch_shape + [1] + event
    comp = td.Normal(locs, scales, validate_args=False).log_prob(zc)  # batch_shape + [C] + event
    comp = comp.reshape(comp.shape[: comp.dim() - len(event)] + (-1,)).sum(-1)  # batch + [C]
    return torch.logsumexp(log_w + comp, dim=-1), \
        torch.logsumexp(comp, -1) - math.log(comp.shape[-1])


def mog_prior_values(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the mixture prior's log_prob (cell mog-prior-values-tests).

    MoGPriorNet(outcome_shape, 4, lbound=-2, rbound=2) for outcome shapes 3 and (2, 3), on every
    device, where it builds the right shapes for batch shapes (), (4,), (3, 5): mixing logits
    drawn from N(0, 2^2) and the scale parameter uniform in [0.5, 1.5] (positive scales with or
    without a transform), log_prob at points drawn from N(0, 2^2) against the brute-force sum
    over the components of softmax(logits)_c N(z | locs[c], diag(scales[c]^2)), with the
    prior's own locs and scales (rtol 1e-4, atol 1e-4).
    """
    C = 4
    keys, ops = [], []
    for device in probe.devices:
        for outcome_shape in _OUTCOMES:
            event = _event(outcome_shape)
            logits = 2 * torch.randn(C, generator=rng)
            cases = [(b, 2 * torch.randn(b + event, generator=rng)) for b in _BATCHES]
            keys.append((device, outcome_shape, logits, cases))
            ops.append(probe_op(
                f"{_PROBES}.mog_prior_values", seed=draw_seed(rng), device=device,
                outcome_shape=outcome_shape, num_components=C, lbound=-2.0, rbound=2.0,
                uniform=1.0 / C, logits=logits, raw_low=0.5, raw_high=1.5,
                cases=[{"batch_shape": b, "z": z} for b, z in cases]))
    for (device, outcome_shape, logits, cases), result in zip(keys, probe.run(ops)):
        event = _event(outcome_shape)
        seen = _op(result, "MoGPriorNet")
        built = _items(_field(seen, "built"), len(cases))
        if not all(_builds(d, b, event) for d, (b, _) in zip(built, cases)):
            continue  # wrong shapes cost the points of mog-prior-shapes-tests, not these again
        _ok(_field(seen, "set"), "setting the mixture prior's logits and scale parameter")
        locs = _expect_shape(_ok(_field(seen, "locs"), "prior.locs"), (C,) + event, "prior.locs")
        scales = _expect_shape(_ok(_field(seen, "scales"), "prior.scales"), (C,) + event,
                               "prior.scales")
        log_w = torch.log_softmax(logits, -1)  # [C]
        for (batch_shape, z), lp in zip(cases, _items(_field(seen, "log_probs"), len(cases))):
            what = f"MoGPriorNet({outcome_shape!r}, {C})({batch_shape!r}).log_prob(z) on {device}"
            ref, uniform = _mixture_log_prob(z, log_w, locs.float(), scales.float(), event)
            error = _raised(lp)
            if error is not None and error[0] == "ValueError":
                raise AssertionError(
                    f"{what} raised ValueError for mixing logits with negative entries: the "
                    f"logits are any real numbers, not probabilities; pass "
                    f"td.Categorical(logits=self.logits...) to the mixture (torch said: "
                    f"{error[1].splitlines()[0][:100] if error[1] else ''})")
            lp = _expect_shape(_ok(lp, what), batch_shape, what)
            if (torch.allclose(lp, uniform.to(lp.dtype), atol=1e-4)
                    and not torch.allclose(uniform, ref, atol=1e-4)):
                raise AssertionError(f"{what} ignores the mixing logits: pass "
                                     f"td.Categorical(logits=self.logits...) to the mixture.")
            expect_close(lp, ref, what,
                         "Expected log sum_c softmax(logits)_c prod_k N(z_k | locs[c,k], "
                         "scales[c,k]^2). Use logits= (not probs=) in the Categorical, and "
                         "self.locs and self.scales (standard deviations) in the Normal.",
                         rtol=1e-4, atol=1e-4)
    return "Hidden tests of the mixture prior's log_prob passed."


# ----------------------------------------------------------------------------- the image models
def _image_model(probe: Probe, rng: torch.Generator, name: str, draw_x, sample_shape: tuple,
                 hint: str, independent_hint: str, reference, check_sample) -> None:
    """The checks both image models share: ``name``(2 x 5 x 4 images, codes of size 3, the
    decoder of :func:`_decoder`) for codes of batch shapes (), (4,), (3, 5) drawn from N(0, I),
    on every device. ``reference(logits)`` is the expected p(x|z); ``check_sample(s, what)``
    checks a sample of shape ``sample_shape`` + batch_shape + [2, 5, 4]."""
    decoder = _decoder(rng)
    state = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
    keys, ops = [], []
    for device in probe.devices:
        cases = [(b, torch.randn(b + (_LATENT,), generator=rng), draw_x(b + _IMAGE))
                 for b in _BATCHES]
        keys.append((device, cases))
        ops.append(probe_op(f"{_PROBES}.image_model", seed=draw_seed(rng), model=name,
                            device=device, image_shape=list(_IMAGE), latent_size=_LATENT,
                            hidden_size=_HIDDEN, decoder=state, sample_shape=list(sample_shape),
                            cases=[{"z": z, "x": x} for _, z, x in cases]))
    for (device, cases), result in zip(keys, probe.run(ops)):
        seen = _items(_op(result, name), len(cases))
        for (batch_shape, z, x), found in zip(cases, seen):
            what = (f"{name}(2 x 5 x 4 images)(z) for z of shape "
                    f"{list(batch_shape + (_LATENT,))} on {device}")
            d = _ok(_field(found, "dist"), what, hint)
            lp = _ok(_field(found, "log_prob"), what, hint)
            _expect_batch_and_event(d, batch_shape, _IMAGE, what)
            _expect_shape(lp, batch_shape, f"{what}.log_prob(x)", independent_hint)
            with torch.no_grad():
                logits = decoder(z)
            _expect_close(lp, reference(logits).log_prob(x), f"{what}.log_prob(x)", hint,
                          rtol=1e-4, atol=1e-3)
            check_sample(found, logits, what)
            grads = _field(found, "decoder_grads")
            expect(isinstance(grads, list) and len(grads) > 0 and all(g is True for g in grads),
                   "No gradient reaches the decoder through log_prob.")


def binarized_image_model(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the Bernoulli image model (cell binarized-image-model-tests).

    BinarizedImageModel for 2 x 5 x 4 images and codes of size 3, its FFNN decoder (hidden size
    16) with weights drawn for each run (the last layer's scaled by 3, so that many logits lie
    outside [0, 1]), for batch shapes (), (4,), (3, 5) on every device: the batch and event
    shapes, log_prob of coin-flip images against td.Independent(td.Bernoulli(logits=
    decoder(z)), 3) (rtol 1e-4, atol 1e-3), the mean against sigmoid(decoder(z)) (rtol 1e-4,
    atol 1e-5), samples of shape [2] + batch + [2, 5, 4] that are 0 or 1, and a gradient of
    log_prob reaching every parameter of the decoder.
    """
    hint = ("Expected td.Independent(td.Bernoulli(logits=self.decoder(z)), 3): the decoder's "
            "outputs are logits (any real number), so pass them as logits=, not probs=.")

    def check_sample(found, logits, what):
        _expect_close(_ok(_field(found, "mean"), f"{what}.mean"), torch.sigmoid(logits),
                      f"{what}.mean", hint, rtol=1e-4, atol=1e-5)
        batch_shape = tuple(logits.shape[:-3])
        s = _expect_shape(_ok(_field(found, "sample"), f"sample((2,)) of {what}"),
                          (2,) + batch_shape + _IMAGE, f"sample((2,)) of {what}")
        expect(bool(((s == 0) | (s == 1)).all()),
               "Samples of the Bernoulli model should be 0 or 1.")

    _image_model(probe, rng, "BinarizedImageModel",
                 lambda shape: torch.bernoulli(torch.full(shape, 0.5), generator=rng), (2,), hint,
                 "log_prob should have the batch shape: wrap td.Independent around the "
                 "Bernoulli over the 3 image dimensions.",
                 lambda logits: td.Independent(td.Bernoulli(logits=logits), 3), check_sample)
    return "Hidden tests of the Bernoulli image model passed."


def continuous_image_model(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of the continuous Bernoulli image model (cell continuous-image-model-tests).

    ContinuousImageModel as in the Bernoulli model's tests: the batch and event shapes, log_prob
    of images uniform in [0, 1] against td.Independent(td.ContinuousBernoulli(logits=
    decoder(z)), 3) (rtol 1e-4, atol 1e-3), samples of shape batch + [2, 5, 4] in [0, 1], and a
    gradient of log_prob reaching every parameter of the decoder.
    """
    hint = ("Expected td.Independent(td.ContinuousBernoulli(logits=self.decoder(z)), 3): grey "
            "levels need the continuous Bernoulli (td.Bernoulli only scores 0 and 1, and its "
            "formula is not normalised on [0, 1]), and the decoder's outputs are logits.")

    def check_sample(found, logits, what):
        batch_shape = tuple(logits.shape[:-3])
        s = _expect_shape(_ok(_field(found, "sample"), f"a sample of {what}"),
                          batch_shape + _IMAGE, f"a sample of {what}")
        expect(bool(((s >= 0) & (s <= 1)).all()), "Samples should lie in [0, 1].")

    _image_model(probe, rng, "ContinuousImageModel",
                 lambda shape: torch.rand(shape, generator=rng), (), hint,
                 "log_prob should have the batch shape: wrap td.Independent around the "
                 "continuous Bernoulli over the 3 image dimensions.",
                 lambda logits: td.Independent(td.ContinuousBernoulli(logits=logits), 3),
                 check_sample)
    return "Hidden tests of the continuous Bernoulli image model passed."


# ----------------------------------------------------------------------------- the joint
def _values(result, count: int) -> list:
    """The reports of a joint probe's calls."""
    return _items(_op(result, "JointDistribution"), count)


def joint_log_prob(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of JointDistribution.log_prob (cell joint-log-prob-tests).

    log p(z, x) = log p(z) + log p(x|z) with a standard Gaussian prior and a mixture of 3
    Gaussians (locations uniform in [-1, 1], unit scales), both over codes of size 2, and a
    TinyImageModel over 1 x 3 x 2 images (weights drawn for each run), for batch shapes (),
    (4,), (3, 5) on every device, with z ~ p(z) and x ~ p(x|z) (rtol 1e-4, atol 1e-4).
    """
    keys, ops = [], []
    for device in probe.devices:
        priors = [("GaussianPriorNet", {"kind": "gaussian", "outcome_shape": 2}),
                  ("MoGPriorNet", {"kind": "mixture", "logits": torch.zeros(3),
                                   "locs": 2 * torch.rand(3, 2, generator=rng) - 1,
                                   "scales": torch.ones(3, 2)})]
        for name, prior in priors:
            obs = _tiny(rng, 2)
            cases = []
            for batch_shape in _BATCHES:
                z = _draw_z(prior, batch_shape, rng)
                cases.append((batch_shape, z, _draw_x(obs, z, rng)))
            keys.append((device, name, prior, obs, cases))
            ops.append(_joint_op(device, prior, obs, [
                {"method": "log_prob", "args": [z, x], "no_grad": True} for _, z, x in cases],
                draw_seed(rng)))
    for (device, name, prior, obs, cases), result in zip(keys, probe.run(ops)):
        for (batch_shape, z, x), found in zip(cases, _values(result, len(cases))):
            what = f"log_prob(z, x) with a {name}, batch shape {batch_shape}, on {device}"
            lp = _expect_shape(_ok(_field(found, "value"), what), batch_shape, what,
                               "It should have the batch shape of z.")
            log_prior = _prior_dist(prior, batch_shape).log_prob(z)
            log_lik = _tiny_model(obs)(z).log_prob(x)
            if torch.allclose(lp, log_lik.to(lp.dtype), atol=1e-4):
                raise AssertionError(f"{what} equals log p(x|z): the prior term log p(z) is "
                                     "missing.")
            if torch.allclose(lp, log_prior.to(lp.dtype), atol=1e-4):
                raise AssertionError(f"{what} equals log p(z): the term log p(x|z) is missing.")
            expect_close(lp, log_prior + log_lik, what,
                         "log p(z, x) = log p(z) + log p(x|z), with the prior of the batch "
                         "shape of z.", atol=1e-4)
    return "Hidden tests of JointDistribution.log_prob passed."


def _log_joint_of_codes(prior: dict, obs: dict, x: torch.Tensor) -> torch.Tensor:
    """log p(z_n) + log p(x|z_n) for each of the N one-hot codes z_n: [N] + batch_shape."""
    N = prior["logits"].shape[0]
    batch_shape = tuple(x.shape[:-len(_TINY)])
    log_prior = prior["logits"].log_softmax(-1).reshape((N,) + (1,) * len(batch_shape))
    codes = torch.eye(N).reshape((N,) + (1,) * len(batch_shape) + (N,))
    return log_prior + _tiny_model(obs)(codes.expand((N,) + batch_shape + (N,))).log_prob(x)


def _categorical_model(rng: torch.Generator, N: int) -> tuple:
    """A categorical prior over N codes with logits drawn from N(0, 1) (a non-uniform prior)
    and a TinyImageModel(N) over 1 x 3 x 2 images."""
    return {"kind": "categorical", "logits": torch.randn(N, generator=rng)}, _tiny(rng, N)


def joint_log_marginal(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of JointDistribution.log_marginal (cell joint-log-marginal-tests).

    With a categorical prior over N = 4 one-hot codes (logits drawn for each run) and a
    TinyImageModel, for coin-flip images of batch shapes (), (4,), (3, 5) on every device:
    log p(x) against the brute-force log-sum-exp over the codes of log p(z) + log p(x|z)
    (rtol 1e-4, atol 1e-4), and the same value when enumerate_fn lists the codes in reverse.
    """
    N = 4
    keys, ops = [], []
    for device in probe.devices:
        prior, obs = _categorical_model(rng, N)
        cases = [(b, _coin_images(b, rng)) for b in _BATCHES]
        x = _coin_images((4,), rng)
        calls = [{"method": "log_marginal", "args": [xb], "enumerate": "forward", "no_grad": True}
                 for _, xb in cases]
        calls += [{"method": "log_marginal", "args": [x], "enumerate": order, "no_grad": True}
                  for order in ("forward", "reverse")]
        keys.append((device, prior, obs, cases))
        ops.append(_joint_op(device, prior, obs, calls, draw_seed(rng)))
    for (device, prior, obs, cases), result in zip(keys, probe.run(ops)):
        seen = _values(result, len(cases) + 2)
        for (batch_shape, x), found in zip(cases, seen):
            what = f"log_marginal(x) for batch shape {batch_shape} on {device}"
            log_joint = _log_joint_of_codes(prior, obs, x)  # [N] + batch_shape
            log_lik = log_joint - prior["logits"].log_softmax(-1).reshape(
                (N,) + (1,) * len(batch_shape))
            expected = torch.logsumexp(log_joint, 0)
            got = _expect_shape(_ok(_field(found, "value"), what), batch_shape, what,
                                "Reduce over the support dimension N (dim 0), not over the batch.")
            if torch.allclose(got, log_joint.mean(0).to(got.dtype), atol=1e-4):
                raise AssertionError(f"{what} averages the log joint over the codes: log p(x) is "
                                     f"torch.logsumexp of log p(z, x) over the support dimension.")
            if torch.allclose(got, (expected - math.log(N)).to(got.dtype), atol=1e-4):
                raise AssertionError(f"{what} is the log of the average of p(z, x) over the codes: "
                                     f"p(x) is their sum (the prior p(z) already weighs them), "
                                     f"torch.logsumexp without subtracting log N.")
            if torch.allclose(got, torch.logsumexp(log_lik, 0).to(got.dtype), atol=1e-4):
                raise AssertionError(f"{what} leaves out the prior: sum log p(z) + log p(x|z).")
            expect_close(got, expected, what,
                         "log p(x) = logsumexp over the N codes of log p(z) + log p(x|z).",
                         atol=1e-4)
        # the order in which enumerate_fn lists the codes does not matter
        what = f"log_marginal(x) for batch shape (4,) on {device}"
        a = tensor_value(_ok(_field(seen[-2], "value"), what), what).data
        b = _ok(_field(seen[-1], "value"), f"{what}, the codes listed in reverse order")
        _expect_close(b, a, "log_marginal with the codes listed in reverse order", atol=1e-4)
    return "Hidden tests of JointDistribution.log_marginal passed."


def joint_posterior(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of JointDistribution.posterior (cell joint-posterior-tests).

    With a categorical prior over N = 4 one-hot codes (logits drawn for each run) and a
    TinyImageModel, for coin-flip images of batch shapes (), (4,), (3, 5) on every device: a
    td.Categorical with the batch shape of x over N outcomes whose probabilities sum to one and
    equal p(z_n|x) = softmax over the codes of log p(z_n) + log p(x|z_n) (atol 1e-5), outcome n
    being the n-th code of enumerate_fn (the codes listed in reverse give reversed
    probabilities).
    """
    N = 4
    hint = ("The log joint has shape [N] + batch_shape; the Categorical normalises over its last "
            "dimension, so move N to the end with .movedim(0, -1) (or permute). swapaxes(0, -1) "
            "is only right for a batch with a single dimension.")
    keys, ops = [], []
    for device in probe.devices:
        prior, obs = _categorical_model(rng, N)
        cases = [(b, _coin_images(b, rng)) for b in _BATCHES]
        calls = [{"method": "posterior", "args": [x], "enumerate": order, "no_grad": True,
                  "probs": True} for _, x in cases for order in ("forward", "reverse")]
        keys.append((device, prior, obs, cases))
        ops.append(_joint_op(device, prior, obs, calls, draw_seed(rng)))
    for (device, prior, obs, cases), result in zip(keys, probe.run(ops)):
        seen = _values(result, 2 * len(cases))
        for i, (batch_shape, x) in enumerate(cases):
            what = f"posterior(x) for batch shape {batch_shape} on {device}"
            expected = torch.softmax(_log_joint_of_codes(prior, obs, x).movedim(0, -1), dim=-1)
            found, flipped = seen[2 * i], seen[2 * i + 1]
            got = _ok(_field(found, "value"), what)
            expect(is_distribution(got) and got.type == "Categorical",
                   f"{what} should be a td.Categorical, got {kind_of(got)}.")
            probs = tensor_value(_ok(_field(found, "probs"), f"{what}.probs"), f"{what}.probs")
            outcomes = probs.shape[-1] if probs.shape else 0
            expect(tuple(got.batch_shape) == batch_shape and outcomes == N,
                   f"{what} has batch_shape {list(got.batch_shape)} over {outcomes} "
                   f"outcomes, expected batch_shape {list(batch_shape)} over N = {N}. {hint}")
            expect_close(probs.data.sum(-1), torch.ones(batch_shape),
                         f"{what}: probabilities summed over the codes", hint)
            _expect_close(probs, expected, f"{what}: p(z|x)",
                          hint + " The posterior is proportional to p(z) p(x|z).", atol=1e-5)
            reverse = f"{what} with the codes listed in reverse order"
            _ok(_field(flipped, "value"), reverse)
            _expect_close(_ok(_field(flipped, "probs"), reverse), expected.flip(-1), reverse,
                          "Outcome n of the posterior should be the n-th code that enumerate_fn "
                          "lists.", atol=1e-5)
    return "Hidden tests of JointDistribution.posterior passed."


@statistical
def joint_naive_bound(probe: Probe, rng: torch.Generator) -> str:
    """Hidden tests of JointDistribution.naive_lowerbound (cell joint-naive-bound-tests).

    On every device, with a categorical prior over N = 4 codes (logits drawn for each run) and
    with a standard Gaussian prior over codes of size 2, each with a TinyImageModel:

    * shapes: naive_lowerbound(x, 7) and (x, 1) have the batch shape of x, for batch shapes
      (), (4,), (3, 5);
    * the categorical prior: the exact value of the bound is sum_n p(z_n) log p(x|z_n); the
      estimate with S = 1000 draws (the kernel seeded for each run) must lie within 5 standard
      errors (plus 1e-3) of it for each of 5 images;
    * the Gaussian prior: within 5 standard errors (plus 1e-2) of E_p(z)[log p(x|z)] estimated
      here from 200000 draws, for 3 images;
    * a gradient of the bound reaches every parameter of the observation model.
    """
    N, S = 4, 1000
    keys, ops = [], []
    for device in probe.devices:
        prior, obs = _categorical_model(rng, N)
        gauss_prior, gauss_obs = {"kind": "gaussian", "outcome_shape": 2}, _tiny(rng, 2)
        shape_cases = {key: [(b, _coin_images(b, rng)) for b in _BATCHES]
                       for key in ("categorical", "gaussian")}
        x5, x3 = _coin_images((5,), rng), _coin_images((3,), rng)
        models = {"categorical": (prior, obs), "gaussian": (gauss_prior, gauss_obs)}
        for key, (p, o) in models.items():
            ops.append(_joint_op(device, p, o, [
                {"method": "naive_lowerbound", "args": [x], "num_samples": s, "no_grad": s == 7}
                for _, x in shape_cases[key] for s in (7, 1)], draw_seed(rng)))
        ops.append(_joint_op(device, prior, obs, [
            {"method": "naive_lowerbound", "args": [x5], "num_samples": S, "no_grad": True}],
            draw_seed(rng)))
        ops.append(_joint_op(device, gauss_prior, gauss_obs, [
            {"method": "naive_lowerbound", "args": [x3], "num_samples": S, "no_grad": True},
            {"method": "naive_lowerbound", "args": [x3], "num_samples": 5, "grads": True}],
            draw_seed(rng)))
        zs = torch.randn(200000, 1, 2, generator=rng)
        keys.append((device, prior, obs, gauss_obs, shape_cases, x5, x3, zs))
    results = probe.run(ops)
    for index, (device, prior, obs, gauss_obs, shape_cases, x5, x3, zs) in enumerate(keys):
        shapes_cat, shapes_gauss, stats, gauss = results[4 * index: 4 * index + 4]
        # shapes, with a categorical and a Gaussian prior
        for key, result in (("categorical", shapes_cat), ("gaussian", shapes_gauss)):
            seen = _values(result, 2 * len(shape_cases[key]))
            for i, (batch_shape, _) in enumerate(shape_cases[key]):
                what = f"naive_lowerbound(x, 7) for batch shape {batch_shape} on {device}"
                _expect_shape(_ok(_field(seen[2 * i], "value"), what), batch_shape, what,
                              "Average over the S samples (dim 0), not over the batch.")
                what = f"naive_lowerbound(x, 1) for batch shape {batch_shape} on {device}"
                _expect_shape(_ok(_field(seen[2 * i + 1], "value"), what), batch_shape, what)
        # statistics: the exact value of the bound is sum_n p(z_n) log p(x|z_n)
        what = f"naive_lowerbound(x, {S}) on {device}"
        est = _expect_shape(_ok(_field(_values(stats, 1)[0], "value"), what), (5,), what,
                            "Average over the S samples (dim 0), not over the batch.").double()
        weights = prior["logits"].softmax(-1).double()  # [N]
        log_lik = _tiny_model(obs)(torch.eye(N).unsqueeze(1)).log_prob(x5).double()  # [N, 5]
        exact = (weights.unsqueeze(-1) * log_lik).sum(0)  # [5]
        stderr = ((weights.unsqueeze(-1) * (log_lik - exact) ** 2).sum(0) / S).sqrt()
        log_px = torch.logsumexp(weights.log().unsqueeze(-1) + log_lik, 0)
        tol = 5 * stderr + 1e-3
        if ((est + exact).abs() <= tol).all() and not ((est - exact).abs() <= tol).all():
            raise AssertionError(f"{what} has the wrong sign: the bound is +E_p(z)[log p(x|z)].")
        if (est > log_px + tol).any():
            raise AssertionError(f"{what} exceeds the exact log p(x) by more than the Monte Carlo "
                                 f"error, so it does not estimate a lower bound: draw num_samples "
                                 "codes z ~ p(z) and average log p(x|z) over them (an average, "
                                 "not a logsumexp; the prior, not the posterior).")
        entropy_offset = (weights * weights.log()).sum()
        if ((est - (exact + entropy_offset)).abs() <= tol).all():
            raise AssertionError(f"{what} averages log p(z, x), not log p(x|z): the naive bound "
                                 f"has no log p(z) term.")
        if (est - exact > tol).any() and not (exact - est > tol).any():
            raise AssertionError(f"{what} = {_numbers(est)} is larger than the exact "
                                 f"E_p(z)[log p(x|z)] = {_numbers(exact)}: average log p(x|z) over "
                                 f"the samples (a mean over dim 0); a logsumexp over samples "
                                 f"estimates something else.")
        expect(bool(((est - exact).abs() <= tol).all()),
               f"{what} = {_numbers(est)} is not within 5 standard errors of the exact "
               f"E_p(z)[log p(x|z)] = {_numbers(exact)}: draw z from the prior (sample((S,))) and "
               f"average log p(x|z) over the samples.")
        # a Gaussian prior: compare with a large reference sample (200000 draws)
        estimate, grads = _values(gauss, 2)
        what = f"naive_lowerbound(x, {S}) with a Gaussian prior on {device}"
        est = _expect_shape(_ok(_field(estimate, "value"), what), (3,), what).double()
        ll = _tiny_model(gauss_obs)(zs).log_prob(x3).double()  # [200000, 3]
        mean, sd = ll.mean(0), ll.std(0)
        expect(bool(((est - mean).abs() <= 5 * sd / math.sqrt(S) + 1e-2).all()),
               f"{what} is {_numbers(est)}, but E_p(z)[log p(x|z)] is about {_numbers(mean)}.")
        # gradients reach the decoder (the bound is a training objective)
        bound = _ok(_field(grads, "value"), f"naive_lowerbound(x, 5) on {device}")
        reached = _field(grads, "grads") if isinstance(grads, dict) and "grads" in grads else None
        expect(isinstance(bound, Tensor) and bound.requires_grad and isinstance(reached, list)
               and len(reached) > 0 and all(g is True for g in reached),
               "No gradient reaches the decoder through naive_lowerbound: do not compute it "
               "under torch.no_grad() or with .detach().")
    return "Hidden tests of JointDistribution.naive_lowerbound passed."


JUDGES = {
    "gaussian-prior-tests": gaussian_prior,
    "gaussian-prior-buffers-tests": gaussian_prior_buffers,
    "mog-prior-shapes-tests": mog_prior_shapes,
    "mog-prior-parameters-tests": mog_prior_parameters,
    "mog-prior-values-tests": mog_prior_values,
    "binarized-image-model-tests": binarized_image_model,
    "continuous-image-model-tests": continuous_image_model,
    "joint-log-prob-tests": joint_log_prob,
    "joint-log-marginal-tests": joint_log_marginal,
    "joint-posterior-tests": joint_posterior,
    "joint-naive-bound-tests": joint_naive_bound,
}
