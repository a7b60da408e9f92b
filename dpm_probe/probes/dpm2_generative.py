"""Probes of dpm2_generative: the priors, the image models and the joint distribution.

Each function builds the student's class found in the notebook's namespace with the arguments
the judge sent, exercises it on the judge's inputs and returns what it saw. Where the exercise
needs given parts (a prior for the joint, a decoder for the image models), the probe builds them
here from the parameters the judge drew, so that the judge knows them exactly and what the
notebook defines under their names is not used: a decoder from ``dpm_core.build_ffnn_decoder``
loaded with the judge's weights, the notebook's ``TinyImageModel`` (:class:`_TinyImageModel`),
and priors from ``torch.distributions`` on dpm_core's ``PriorNet`` (:class:`_GaussianPrior`,
:class:`_MixturePrior`, :class:`_CategoricalPrior`; dpm_core's own priors are this assignment's
exercises, withheld from the kernel). Nothing here knows what the answers should be.

A step that raises is reported as ``{"raised": <error type>, "message": <text>}`` (see
:func:`_sendable`), so that the other steps still run and report.
"""

from __future__ import annotations

import math

import torch
import torch.distributions as td
from torch import nn

from dpm_core import CPDNet, PriorNet, build_ffnn_decoder
from dpm_probe.runtime import attempt
from dpm_probe.wire import Node, Tensor

__all__ = ["gaussian_prior", "gaussian_prior_buffers", "mog_prior_shapes", "mog_prior_parameters",
           "mog_prior_values", "image_model", "joint"]


# ----------------------------------------------------------------------------- plumbing
def _sendable(value):
    """``value`` with every error node of :func:`attempt` as a plain ``{"raised", "message"}``
    dict (the runtime describes nested nodes as objects, which would lose the error)."""
    if isinstance(value, Node) and value.kind == "error":
        return {"raised": value.type, "message": value.message}
    if isinstance(value, dict):
        return {k: _sendable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sendable(v) for v in value]
    return value


def _failed(value) -> bool:
    return isinstance(value, Node) and value.kind == "error"


def _on(value, device: str):
    """A judge's input as a tensor on ``device`` (tensors inside lists and dicts too)."""
    if isinstance(value, Tensor):
        return value.data.to(device)
    if isinstance(value, dict):
        return {k: _on(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_on(v, device) for v in value]
    return value


def _shape(value):
    """A shape sent as a JSON list, as the tuple the student's code expects (an int stays)."""
    return tuple(value) if isinstance(value, list) else value


# ----------------------------------------------------------------------------- given parts
class _GaussianPrior(PriorNet):
    """p(z) = prod_k N(z_k | 0, 1): batch_shape the given one, event_shape outcome_shape."""

    def __init__(self, outcome_shape):
        super().__init__(outcome_shape)
        self.register_buffer("locs", torch.zeros(self.outcome_shape))
        self.register_buffer("scales", torch.ones(self.outcome_shape))

    def forward(self, batch_shape):
        shape = tuple(batch_shape) + self.outcome_shape
        return td.Independent(td.Normal(self.locs.expand(shape), self.scales.expand(shape)),
                              len(self.outcome_shape))


class _MixturePrior(PriorNet):
    """A mixture of diagonal Gaussians with the judge's logits [C], locs and scales
    ([C] + outcome_shape): batch_shape the given one, event_shape outcome_shape."""

    def __init__(self, logits, locs, scales):
        super().__init__(tuple(locs.shape[1:]))
        self.logits = nn.Parameter(logits.clone())
        self.locs = nn.Parameter(locs.clone())
        self.register_buffer("scales", scales.clone())

    def forward(self, batch_shape):
        batch_shape = tuple(batch_shape)
        shape = batch_shape + tuple(self.locs.shape)  # batch_shape + [C] + outcome_shape
        components = td.Independent(td.Normal(self.locs.expand(shape), self.scales.expand(shape)),
                                    len(self.outcome_shape))
        mixing = td.Categorical(logits=self.logits.expand(batch_shape + tuple(self.logits.shape)))
        return td.MixtureSameFamily(mixing, components)


class _CategoricalPrior(PriorNet):
    """p(z) over the N one-hot codes of length N with the judge's logits [N] (dpm_core's
    CategoricalPriorNet, with other logits): batch_shape the given one, event_shape [N]."""

    def __init__(self, logits):
        super().__init__(logits.shape[0])
        self.register_buffer("logits", logits.clone())

    def forward(self, batch_shape):
        shape = tuple(batch_shape) + self.outcome_shape
        return td.OneHotCategorical(logits=self.logits.expand(shape))


class _TinyImageModel(CPDNet):
    """The notebook's TinyImageModel (cell tiny-model) with the judge's weight [D, K] and bias
    [D]: p(x|z) = prod_d Bernoulli(x_d | sigmoid((W z + b)_d)); batch_shape the batch shape of
    z, event_shape image_shape."""

    def __init__(self, weight, bias, image_shape):
        super().__init__(tuple(image_shape))
        self.linear = nn.Linear(weight.shape[1], math.prod(self.outcome_shape))
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, z):
        logits = self.linear(z)
        pixels = td.Bernoulli(logits=logits.reshape(logits.shape[:-1] + self.outcome_shape))
        return td.Independent(pixels, len(self.outcome_shape))


def _prior(spec: dict) -> PriorNet:
    spec = _on(spec, "cpu")
    if spec["kind"] == "gaussian":
        return _GaussianPrior(_shape(spec["outcome_shape"]))
    if spec["kind"] == "mixture":
        return _MixturePrior(spec["logits"], spec["locs"], spec["scales"])
    if spec["kind"] == "categorical":
        return _CategoricalPrior(spec["logits"])
    raise ValueError(f"unknown prior {spec['kind']!r}")


# ----------------------------------------------------------------------------- the priors
def gaussian_prior(ns: dict, device: str, cases: list) -> list:
    """GaussianPriorNet(outcome_shape)(batch_shape) for each case ``{"outcome_shape",
    "batch_shape", "z"}``: the distribution, a sample, log_prob(z), mean and stddev."""
    GaussianPriorNet = ns["GaussianPriorNet"]
    nets, seen = {}, []
    for case in cases:
        outcome_shape = _shape(case["outcome_shape"])
        key = repr(outcome_shape)
        if key not in nets:
            nets[key] = attempt(lambda: GaussianPriorNet(outcome_shape).to(device))
        net = nets[key]
        if _failed(net):
            seen.append({"net": net})
            continue
        d = attempt(net, tuple(case["batch_shape"]))
        seen.append({"dist": d, **({} if _failed(d) else {
            "sample": attempt(d.sample),
            "log_prob": attempt(d.log_prob, _on(case["z"], device)),
            "mean": attempt(lambda: d.mean),
            "stddev": attempt(lambda: d.stddev)})})
    return _sendable(seen)


def gaussian_prior_buffers(ns: dict, outcome_shape, batch_shape, devices: list,
                           device_outcome_shape, z: Tensor) -> dict:
    """The module side of GaussianPriorNet: its parameters and state, what it builds after
    ``.double()``, and on each device after ``.to(device)`` (a sample, the mean, log_prob(z))."""
    GaussianPriorNet = ns["GaussianPriorNet"]
    batch_shape = tuple(batch_shape)
    net = GaussianPriorNet(_shape(outcome_shape))
    seen = {"num_parameters": len(list(net.parameters())), "state_size": len(net.state_dict())}

    def double():
        d = net.double()(batch_shape)
        return {"mean": attempt(lambda: d.mean), "sample": attempt(d.sample)}

    seen["double"] = attempt(double)

    def moved(device):
        d = GaussianPriorNet(_shape(device_outcome_shape)).to(device)(batch_shape)
        return {"sample": attempt(d.sample), "mean": attempt(lambda: d.mean),
                "log_prob": attempt(d.log_prob, _on(z, device))}

    seen["devices"] = {device: attempt(moved, device) for device in devices}
    return _sendable(seen)


def _fill_logits(net, value):
    """Set the mixing logits (when they are a tensor) to ``value``; their previous values."""
    logits = getattr(net, "logits", None)
    if not torch.is_tensor(logits):
        return None
    saved = logits.detach().clone()
    with torch.no_grad():
        logits.fill_(value)
    return saved


def _built(net, batch_shape, uniform: float):
    """What ``net(batch_shape)`` builds with its mixing logits set to ``uniform`` (1 / C, valid
    read as logits or as probabilities) and restored afterwards."""
    saved = _fill_logits(net, uniform)
    try:
        with torch.no_grad():
            return net(tuple(batch_shape))
    finally:
        if saved is not None:
            with torch.no_grad():
                net.logits.copy_(saved)


def _others(net) -> list:
    """The mixture prior's parameters other than its logits and locations (the raw scales)."""
    logits, locs = getattr(net, "logits", None), getattr(net, "locs", None)
    return [p for p in net.parameters() if p is not logits and p is not locs]


def mog_prior_shapes(ns: dict, device: str, outcome_shape, num_components: int,
                     fill_logits: float, cases: list) -> list:
    """MoGPriorNet(outcome_shape, num_components)(batch_shape), its mixing logits set to
    ``fill_logits``, for each case ``{"batch_shape", "z"}``: the distribution, sample(),
    sample((2,)) and log_prob(z)."""
    net = ns["MoGPriorNet"](_shape(outcome_shape), num_components=num_components).to(device)
    if torch.is_tensor(getattr(net, "logits", None)):
        _fill_logits(net, fill_logits)
    seen = []
    for case in cases:
        d = attempt(net, tuple(case["batch_shape"]))
        seen.append({"dist": d, **({} if _failed(d) else {
            "sample": attempt(d.sample),
            "sample2": attempt(d.sample, (2,)),
            "log_prob": attempt(d.log_prob, _on(case["z"], device))})})
    return _sendable(seen)


def _parameter_info(value) -> dict:
    return {"parameter": isinstance(value, nn.Parameter),
            "shape": list(value.shape) if torch.is_tensor(value) else None}


def mog_prior_parameters(ns: dict, device: str, outcome_shape, num_components: int,
                         lbound: float, rbound: float, raw_values: list, raw_after: float,
                         uniform: float, batch_shape, z: Tensor, logits_a: Tensor,
                         logits_b: Tensor) -> dict:
    """The mixture prior's parameters, in the order the judge reads them:

    * what ``logits`` and ``locs`` are (nn.Parameter? shape), the initial ``locs`` and
      ``scales``, how many other parameters there are;
    * ``scales`` after every other parameter is filled with each of ``raw_values``, and whether
      it then requires a gradient;
    * with the others at ``raw_after`` and ``locs`` redrawn from N(0, 1): what
      ``net(batch_shape)`` builds (mixing logits at ``uniform``), log_prob(z) with the logits
      set to ``logits_a`` and to ``logits_b``, and the gradients of ``log_prob(z).sum()``.
    """
    net = ns["MoGPriorNet"](_shape(outcome_shape), num_components=num_components, lbound=lbound,
                            rbound=rbound).to(device)
    logits, locs = getattr(net, "logits", None), getattr(net, "locs", None)
    others = _others(net)
    seen = {"logits": _parameter_info(logits), "locs": _parameter_info(locs),
            "locs_value": locs.detach().clone() if torch.is_tensor(locs) else None,
            "scales": attempt(lambda: net.scales), "num_others": len(others)}

    def scales_at(value):
        with torch.no_grad():
            for p in others:
                p.fill_(value)
        return net.scales.detach().clone()

    seen["scales_at"] = [attempt(scales_at, value) for value in raw_values]
    seen["scales_requires_grad"] = attempt(lambda: bool(net.scales.requires_grad))
    with torch.no_grad():
        for p in others:
            p.fill_(raw_after)
        if torch.is_tensor(locs):
            locs.normal_()
    seen["built"] = attempt(_built, net, batch_shape, uniform)
    z = _on(z, device)

    def log_prob(values):
        with torch.no_grad():
            net.logits.copy_(_on(values, device))
            return net(tuple(batch_shape)).log_prob(z)

    seen["log_prob_a"] = attempt(log_prob, logits_a)
    seen["log_prob_b"] = attempt(log_prob, logits_b)

    def gradients():
        net.zero_grad()
        net(tuple(batch_shape)).log_prob(z).sum().backward()
        grad = lambda p: p.grad if torch.is_tensor(p) else None  # noqa: E731
        return {"logits": grad(logits), "locs": grad(locs), "others": [p.grad for p in others]}

    seen["grads"] = attempt(gradients)
    return _sendable(seen)


def mog_prior_values(ns: dict, device: str, outcome_shape, num_components: int, lbound: float,
                     rbound: float, uniform: float, logits: Tensor, raw_low: float,
                     raw_high: float, cases: list) -> dict:
    """The mixture prior's log_prob: what it builds for each case's batch shape (mixing logits
    at ``uniform``); then, with the logits set to ``logits`` and every other parameter drawn
    uniformly in [raw_low, raw_high], its ``locs`` and ``scales`` and, for each case
    ``{"batch_shape", "z"}``, ``net(batch_shape).log_prob(z)``."""
    net = ns["MoGPriorNet"](_shape(outcome_shape), num_components=num_components, lbound=lbound,
                            rbound=rbound).to(device)
    seen = {"built": [attempt(_built, net, case["batch_shape"], uniform) for case in cases]}

    def set_parameters():
        with torch.no_grad():
            net.logits.copy_(_on(logits, device))
            for p in _others(net):
                p.uniform_(raw_low, raw_high)

    seen["set"] = attempt(set_parameters)
    seen["locs"] = attempt(lambda: net.locs.detach().clone())
    seen["scales"] = attempt(lambda: net.scales.detach().clone())

    def log_prob(case):
        with torch.no_grad():
            return net(tuple(case["batch_shape"])).log_prob(_on(case["z"], device))

    seen["log_probs"] = [attempt(log_prob, case) for case in cases]
    return _sendable(seen)


# ----------------------------------------------------------------------------- the image models
def image_model(ns: dict, model: str, device: str, image_shape: list, latent_size: int,
                hidden_size: int, decoder: dict, sample_shape: list, cases: list) -> list:
    """The image model ``model`` (BinarizedImageModel or ContinuousImageModel) for images of
    ``image_shape`` = [C, H, W], its decoder dpm_core's ``build_ffnn_decoder`` with
    ``hidden_size`` and the judge's weights (``decoder``, a state dict). For each case
    ``{"z", "x"}``: the distribution p(x|z), log_prob(x), its mean, a sample of
    ``sample_shape``, and which decoder parameters log_prob(x).sum() sends a gradient to."""
    decoders, state = [], _on(decoder, "cpu")

    def decoder_type(**kwargs):
        net = build_ffnn_decoder(hidden_size=hidden_size, **kwargs)
        net.load_state_dict(state)
        decoders.append(net)
        return net

    channels, height, width = image_shape
    obs = ns[model](num_channels=channels, width=width, height=height, latent_size=latent_size,
                   decoder_type=decoder_type).to(device)
    seen = []
    for case in cases:
        d = attempt(obs, _on(case["z"], device))
        if _failed(d):
            seen.append({"dist": d})
            continue
        lp = attempt(d.log_prob, _on(case["x"], device))
        found = {"dist": d, "log_prob": lp, "mean": attempt(lambda: d.mean),
                 "sample": attempt(d.sample, tuple(sample_shape))}
        if not _failed(lp):
            def gradients():
                for net in decoders:
                    net.zero_grad()
                lp.sum().backward()
                return [p.grad is not None for net in decoders for p in net.parameters()]

            found["decoder_grads"] = attempt(gradients)
            for net in decoders:
                net.zero_grad()
        seen.append(found)
    return _sendable(seen)


# ----------------------------------------------------------------------------- the joint
def _enumerate(order: str):
    """enumerate_fn for the support of a prior: as enumerate_support lists it, or reversed."""
    if order == "reverse":
        return lambda p: p.enumerate_support().flip(0)
    return lambda p: p.enumerate_support()


def joint(ns: dict, device: str, prior: dict, obs: dict, calls: list) -> list:
    """JointDistribution(prior, obs) with a prior and a TinyImageModel built from the judge's
    parameters (``prior``: ``{"kind": "gaussian", "outcome_shape"}``, ``{"kind": "mixture",
    "logits", "locs", "scales"}`` or ``{"kind": "categorical", "logits"}``; ``obs``:
    ``{"weight", "bias", "image_shape"}``), moved to ``device``. Each call
    ``{"method", "args", "enumerate", "num_samples", "no_grad", "probs", "grads"}`` runs
    ``joint.<method>(*args)`` (plus ``enumerate_fn`` for log_marginal and posterior, and
    ``num_samples`` for naive_lowerbound) and reports its value; with ``probs``, the value's
    ``.probs``; with ``grads``, which parameters of the observation model the value's sum
    sends a gradient to."""
    prior_net = _prior(prior)
    obs = _on(obs, "cpu")
    obs_net = _TinyImageModel(obs["weight"], obs["bias"], obs["image_shape"])
    model = ns["JointDistribution"](prior_net, obs_net).to(device)
    seen = []
    for call in calls:
        args = [_on(a, device) for a in call.get("args", [])]
        if call.get("enumerate"):
            args.append(_enumerate(call["enumerate"]))
        if call.get("num_samples") is not None:
            args.append(call["num_samples"])

        def run():
            with torch.no_grad() if call.get("no_grad") else torch.enable_grad():
                return getattr(model, call["method"])(*args)

        value = attempt(run)
        found = {"value": value}
        if call.get("probs") and not _failed(value):
            found["probs"] = attempt(lambda: value.probs)
        if call.get("grads") and not _failed(value):
            found["grads"] = attempt(lambda: [g is not None for g in torch.autograd.grad(
                value.sum(), list(obs_net.parameters()), allow_unused=True)])
        seen.append(found)
    return _sendable(seen)
