"""Probes of dpm2_inference: the CPD nets, NVIL and the control variates.

Each function builds the student's class found in the notebook's namespace with the arguments
the judge sent, exercises it on the judge's inputs and returns what it saw. The parts an exercise
needs but does not grade are built here, from what the judge sent, never taken from the notebook
(whose names a student can rebind) nor from this assignment's references (withheld from the
kernel's dpm_core):

* NVIL runs on the PPCA test bed: dpm_core's ``PPCA`` with the judge's W, b and noise, and
  q(z|x) = N(A x + c, softplus(raw_scale)^2) with the judge's A, c and raw_scale
  (:class:`_AffineGaussian`, the notebook's ``AffineGaussianCPD``), the exact posterior or a
  known perturbation of it; or on 8 x 8 binary images: dpm_core's ``GaussianPriorNet``,
  ``BinarizedImageModel`` and ``InferenceModel`` with a head of this module
  (:class:`_GaussianHead`, :class:`_MixtureHead`), whose scales (and mixing weights) do not
  depend on the input: enough for what NVIL does with q, and no answer to the CPD exercises.
* The control variates handed to the student's NVIL or CVChain are this module's (a recorder,
  zero rewards, a constant with a loss, a linear baseline, fixed arithmetic, a spy).
* The control variates are measured on rewards the judge sent, with q(z|x) a diagonal Gaussian
  of the judge's parameters and ``r_fn`` the log-likelihood of a ``BinarizedImageModel`` that
  carries the judge's weights.

A step that raises is reported as ``{"raised": class name, "kinds": its classes, "message"}``
(:func:`_attempt`), so that the other steps still run. Nothing here knows what the answers
should be: ``course/judges/dpm2_inference.py`` decides.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
import torch.distributions as td
import torch.nn.functional as F
from torch import nn

from dpm_core import (PPCA, BinarizedImageModel, CPDNet, GaussianPriorNet, InferenceModel,
                      JointDistribution, PriorNet, VarianceReduction, build_ffnn_decoder)
from dpm_probe.wire import Tensor

__all__ = ["gaussian_cpd", "mog_cpd", "nvil", "control_variate", "self_critic", "baseline",
           "cv_chain", "cv_variance"]


# ----------------------------------------------------------------------------- plumbing
def _attempt(step, *args, **kwargs):
    """``step(*args, **kwargs)``, or ``{"raised", "kinds", "message"}`` of what it raised
    (``kinds``: the names of the exception's classes, so that a subclass of ValueError counts)."""
    try:
        return step(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 -- whatever the student's code raises is reported
        return {"raised": type(err).__name__, "message": str(err),
                "kinds": [c.__name__ for c in type(err).__mro__]}


def _failed(value) -> bool:
    return isinstance(value, dict) and "raised" in value and "kinds" in value


def _on(value, device: str, dtype: torch.dtype | None = None):
    """A judge's input as a tensor on ``device`` (tensors inside lists and dicts too)."""
    if isinstance(value, (Tensor, torch.Tensor)):
        data = value.data
        return data.to(device=device, dtype=dtype or data.dtype)
    if isinstance(value, dict):
        return {k: _on(v, device, dtype) for k, v in value.items()}
    if isinstance(value, list):
        return [_on(v, device, dtype) for v in value]
    return value


def _shape(value):
    """A shape sent as a JSON list, as the tuple the student's code expects (an int stays)."""
    return tuple(value) if isinstance(value, list) else value


def _finite_grads(module: nn.Module) -> list:
    """``[name, whether its gradient exists and is finite]`` for each parameter of ``module``."""
    return [[name, p.grad is not None and bool(torch.isfinite(p.grad).all())]
            for name, p in module.named_parameters()]


def _devices(module: nn.Module) -> list:
    return [p.device.type for p in module.parameters()]


# ----------------------------------------------------------------------------- the CPD nets
def _distribution(net, inputs) -> dict:
    """What ``net(inputs)`` builds, and the quantities the judge reads off it."""
    d = _attempt(net, inputs)
    if _failed(d):
        return {"dist": d}
    return {"dist": d, "mean": _attempt(lambda: d.mean), "stddev": _attempt(lambda: d.stddev)}


def gaussian_cpd(ns: dict, device: str, inputs, wide_inputs, images: list) -> dict:
    """GaussianCPDNet, as the judge's cell grades it:

    * ``shapes``: for hidden sizes None, 0 and 7, ``GaussianCPDNet((2, 3), num_inputs=4)`` on
      ``inputs`` ([3, 5, 4]): the distribution and log_prob of one of its rsample draws;
    * ``wide``: ``GaussianCPDNet(6, num_inputs=5, hidden_size=None)`` on ``wide_inputs``: mean,
      stddev, which parameters ``rsample().pow(2).sum()`` sends a finite gradient to, and the
      parameters' devices;
    * ``dropout``: building ``GaussianCPDNet(4, num_inputs=5, hidden_size=8, p_drop=0.3)``;
    * ``images``: ``InferenceModel(GaussianCPDNet, 3, width=8, height=8, hidden_size=16)`` on
      zero images of each shape in ``images``.
    """
    GaussianCPDNet = ns["GaussianCPDNet"]
    seen = {"shapes": []}
    x = _on(inputs, device)
    for hidden in (None, 0, 7):
        net = _attempt(lambda: GaussianCPDNet((2, 3), num_inputs=4, hidden_size=hidden).to(device))
        if _failed(net):
            seen["shapes"].append({"net": net})
            continue
        found = _distribution(net, x)
        if not _failed(found["dist"]):
            d = found["dist"]
            found["log_prob"] = _attempt(lambda: d.log_prob(d.rsample()))
        seen["shapes"].append(found)
    wide = _attempt(lambda: GaussianCPDNet(6, num_inputs=5, hidden_size=None).to(device))
    if _failed(wide):
        seen["wide"] = {"net": wide}
    else:
        found = _distribution(wide, _on(wide_inputs, device))
        if not _failed(found["dist"]):
            def gradients():
                wide.zero_grad()
                found["dist"].rsample().pow(2).sum().backward()
                return _finite_grads(wide)

            found["grads"] = _attempt(gradients)
            found["devices"] = _devices(wide)
        seen["wide"] = found
    seen["dropout"] = _attempt(lambda: type(GaussianCPDNet(4, num_inputs=5, hidden_size=8,
                                                           p_drop=0.3)).__name__)
    q = _attempt(lambda: InferenceModel(GaussianCPDNet, latent_size=3, width=8, height=8,
                                        hidden_size=16).to(device))
    seen["images"] = [q if _failed(q) else _attempt(q, torch.zeros(_shape(shape), device=device))
                      for shape in images]
    return seen


def mog_cpd(ns: dict, device: str, inputs, one_inputs, wide_inputs, grad_inputs,
            images) -> dict:
    """MoGCPDNet, as the judge's cell grades it:

    * ``shapes``: for hidden sizes None, 0 and 7, ``MoGCPDNet((2, 3), num_inputs=4,
      num_components=3)`` on ``inputs``: the distribution, its components, and log_prob of one
      of its draws;
    * ``one``: the mixing probabilities of ``MoGCPDNet(3, num_inputs=5, num_components=1)`` on
      ``one_inputs``; ``two``: the components of ``MoGCPDNet(3, num_inputs=5, p_drop=0.2)``
      there;
    * ``wide``: ``MoGCPDNet(6, num_inputs=5, hidden_size=None, num_components=3)`` on
      ``wide_inputs``: the components' means and stddevs and the mixing probabilities; then on
      ``grad_inputs``, which parameters ``log_prob(sample()).sum()`` sends a finite gradient to;
    * ``images``: ``InferenceModel(partial(MoGCPDNet, num_components=3), 3, width=8, height=8,
      hidden_size=16)`` on zero images of shape ``images``.
    """
    MoGCPDNet = ns["MoGCPDNet"]
    seen = {"shapes": []}
    x = _on(inputs, device)
    for hidden in (None, 0, 7):
        net = _attempt(lambda: MoGCPDNet((2, 3), num_inputs=4, hidden_size=hidden,
                                         num_components=3).to(device))
        if _failed(net):
            seen["shapes"].append({"net": net})
            continue
        d = _attempt(net, x)
        found = {"dist": d}
        if not _failed(d):
            found["components"] = _attempt(lambda: d.component_distribution)
            found["log_prob"] = _attempt(lambda: d.log_prob(d.sample()))
        seen["shapes"].append(found)

    def mixing(net_kwargs, inputs_):
        d = MoGCPDNet(3, num_inputs=5, **net_kwargs).to(device)(_on(inputs_, device))
        return {"probs": _attempt(lambda: d.mixture_distribution.probs),
                "components": _attempt(lambda: d.component_distribution)}

    seen["one"] = _attempt(mixing, {"num_components": 1}, one_inputs)
    seen["two"] = _attempt(mixing, {"p_drop": 0.2}, one_inputs)
    wide = _attempt(lambda: MoGCPDNet(6, num_inputs=5, hidden_size=None,
                                      num_components=3).to(device))
    if _failed(wide):
        seen["wide"] = {"net": wide}
    else:
        d = _attempt(wide, _on(wide_inputs, device))
        found = {"dist": d}
        if not _failed(d):
            found["component_mean"] = _attempt(lambda: d.component_distribution.mean)
            found["component_stddev"] = _attempt(lambda: d.component_distribution.stddev)
            found["probs"] = _attempt(lambda: d.mixture_distribution.probs)

        def gradients():
            wide.zero_grad()
            q = wide(_on(grad_inputs, device))
            q.log_prob(q.sample()).sum().backward()
            return _finite_grads(wide)

        found["grads"] = _attempt(gradients)
        seen["wide"] = found
    q = _attempt(lambda: InferenceModel(functools.partial(MoGCPDNet, num_components=3),
                                        latent_size=3, width=8, height=8,
                                        hidden_size=16).to(device))
    seen["images"] = q if _failed(q) else _attempt(q, torch.zeros(_shape(images), device=device))
    return seen


# ----------------------------------------------------------------------------- given parts
class _AffineGaussian(CPDNet):
    """q(z|x) = N(x A^T + c, diag(softplus(raw_scale)^2)), the notebook's AffineGaussianCPD:
    batch_shape the batch shape of x, event_shape [K]."""

    def __init__(self, A, c, raw_scale):
        super().__init__((A.shape[0],))
        self.A, self.c, self.raw_scale = (nn.Parameter(t.clone()) for t in (A, c, raw_scale))

    def forward(self, x):
        loc = x @ self.A.T + self.c  # [..., K]
        return td.Independent(td.Normal(loc, F.softplus(self.raw_scale).expand(loc.shape)), 1)


class _StandardNormalAsMixture(PriorNet):
    """N(0, I) written as a mixture with one component (no closed-form KL, the same density):
    batch_shape the given one, event_shape outcome_shape."""

    def __init__(self, outcome_shape):
        super().__init__(outcome_shape)
        self.register_buffer("locs", torch.zeros((1,) + self.outcome_shape))
        self.register_buffer("scales", torch.ones((1,) + self.outcome_shape))

    def forward(self, batch_shape):
        batch_shape = tuple(batch_shape)
        shape = batch_shape + tuple(self.locs.shape)  # [B, 1, K]
        components = td.Independent(td.Normal(self.locs.expand(shape), self.scales.expand(shape)),
                                    len(self.outcome_shape))
        weights = td.Categorical(logits=self.locs.new_zeros(batch_shape + (1,)))
        return td.MixtureSameFamily(weights, components)


class _GaussianHead(CPDNet):
    """q(z|h) = N(h W^T + a, diag(softplus(raw_scale)^2)): locations from the features h [.., U],
    scales that do not depend on them; batch_shape h.shape[:-1], event_shape [K]."""

    def __init__(self, num_inputs: int, latent_size: int):
        super().__init__((latent_size,))
        self.loc = nn.Linear(num_inputs, latent_size)
        self.raw_scale = nn.Parameter(torch.zeros(latent_size))

    def forward(self, h):
        loc = self.loc(h)
        return td.Independent(td.Normal(loc, F.softplus(self.raw_scale).expand(loc.shape)), 1)


class _MixtureHead(CPDNet):
    """A mixture of M diagonal Gaussians whose locations depend on the features h [..., U], and
    whose weights and scales do not: batch_shape h.shape[:-1], event_shape [K]."""

    def __init__(self, num_inputs: int, latent_size: int, num_components: int):
        super().__init__((latent_size,))
        self.shape = (num_components, latent_size)
        self.locs = nn.Linear(num_inputs, num_components * latent_size)
        self.raw_scales = nn.Parameter(torch.zeros(self.shape))
        self.logits = nn.Parameter(torch.zeros(num_components))

    def forward(self, h):
        locs = self.locs(h).reshape(h.shape[:-1] + self.shape)  # [..., M, K]
        components = td.Independent(td.Normal(locs, F.softplus(self.raw_scales).expand(locs.shape)),
                                    1)
        return td.MixtureSameFamily(td.Categorical(logits=self.logits.expand(locs.shape[:-1])),
                                    components)


class _Recording(VarianceReduction):
    """Returns the rewards unchanged and a zero loss; remembers what it was given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, r, x=None, q=None, r_fn=None):
        self.calls.append({"r": r, "x": x, "q": q, "r_fn": r_fn})
        return r, torch.zeros_like(r)


class _ZeroReward(VarianceReduction):
    """Replaces every reward by 0, with a zero loss."""

    def forward(self, r, x=None, q=None, r_fn=None):
        return torch.zeros_like(r), torch.zeros_like(r)


class _Trained(VarianceReduction):
    """Returns the rewards unchanged, with the loss (w - 3)^2 for every reward."""

    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, r, x=None, q=None, r_fn=None):
        return r, (self.w - 3.0) ** 2 * torch.ones_like(r)


class _LinearBaseline(VarianceReduction):
    """r - b(x) with b(x) = x w + a (not differentiated), and the loss (r - b(x))^2."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight.clone()), nn.Parameter(bias.clone())

    def forward(self, r, x=None, q=None, r_fn=None):
        b = x @ self.weight + self.bias  # [B]
        return r - b.detach(), (r - b) ** 2


class _AddOne(VarianceReduction):
    """Adds 1 to the rewards; its loss is 2 for every reward."""

    def forward(self, r, x=None, q=None, r_fn=None):
        return r + 1, torch.full_like(r, 2.0)


class _TimesThree(VarianceReduction):
    """Triples the rewards; its loss is the rewards it was given."""

    def forward(self, r, x=None, q=None, r_fn=None):
        return r * 3, r.clone()


class _WithParameter(VarianceReduction):
    """One parameter, the identity's forward."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))


class _Spy(VarianceReduction):
    """Remembers the x, q and r_fn it was given."""

    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, r, x=None, q=None, r_fn=None):
        self.seen = (x, q, r_fn)
        return r, torch.zeros_like(r)


def _control_variate(spec: dict):
    kind = spec.get("kind", "none")
    if kind == "none":
        return None
    if kind == "recording":
        return _Recording()
    if kind == "zero":
        return _ZeroReward()
    if kind == "trained":
        return _Trained(float(spec["w"]))
    if kind == "linear":
        return _LinearBaseline(_on(spec["weight"], "cpu"), _on(spec["bias"], "cpu"))
    raise ValueError(f"unknown control variate {kind!r}")


def _image_obs(latent: int, size: int, state=None) -> BinarizedImageModel:
    """p(x|z) over 1 x size x size binary images: dpm_core's BinarizedImageModel with an FFNN
    decoder of 32 hidden units (the weights ``state``, or drawn from the kernel's generator)."""
    obs = BinarizedImageModel(1, size, size, latent,
                              decoder_type=functools.partial(build_ffnn_decoder, hidden_size=32))
    if state is not None:
        obs.load_state_dict(_on(state, "cpu"))
    return obs


def _parts(spec: dict):
    """``(gen_model, inf_model)`` of a model spec (see :func:`nvil`)."""
    if spec["kind"] == "ppca":
        W, b, raw_sigma = (_on(spec[k], "cpu", torch.float64) for k in ("W", "b", "raw_sigma"))
        gen = PPCA(W.shape[0], W.shape[1]).double()
        with torch.no_grad():
            gen.cpd_net.W.copy_(W)
            gen.cpd_net.b.copy_(b)
            gen.cpd_net.raw_sigma.copy_(raw_sigma)
        if spec.get("mixture_prior"):
            gen.prior_net = _StandardNormalAsMixture(W.shape[1]).double()
        q = _AffineGaussian(*(_on(spec[k], "cpu", torch.float64) for k in ("A", "c", "raw_scale")))
        return gen, q
    if spec["kind"] == "image":
        latent, size = int(spec["latent"]), int(spec["size"])
        gen = JointDistribution(GaussianPriorNet(latent), _image_obs(latent, size))
        head = (_MixtureHead(16, latent, int(spec["num_components"]))
                if spec.get("q") == "mixture" else _GaussianHead(16, latent))
        return gen, InferenceModel(head, latent, width=size, height=size, hidden_size=16)
    raise ValueError(f"unknown model {spec['kind']!r}")


def _gradients(module: nn.Module) -> dict:
    """``{name: gradient (None where there is none)}`` of the parameters of ``module``."""
    return {name: None if p.grad is None else p.grad.detach().clone()
            for name, p in module.named_parameters()}


# ----------------------------------------------------------------------------- NVIL
def nvil(ns: dict, device: str, model: dict, steps: list) -> list:
    """The student's ``NVIL(gen_model, inf_model, cv_model)`` with the parts of ``model``, moved
    to ``device``, and what each of ``steps`` gives.

    ``model``: ``{"kind": "ppca", "W", "b", "raw_sigma", "A", "c", "raw_scale",
    "mixture_prior", "cv"}`` (float64) or ``{"kind": "image", "latent", "size", "q": "gaussian" or
    "mixture", "num_components", "cv"}`` (weights drawn from the kernel's generator); ``cv``:
    ``{"kind": "none" | "recording" | "zero" | "trained" (with "w") | "linear" (with "weight",
    "bias")}``.

    Steps (``x`` and ``z`` are moved to ``device``):

    * ``{"do": "DRL", "x", "sample_size"}``: ``nvil.DRL(x, sample_size)`` under no_grad;
    * ``{"do": "forward", "x", "kwargs", "backward"}``: ``nvil(x, **kwargs)``; with
      ``backward``, the gradients of its ``loss`` (``{"gen", "inf", "cv"}``, by parameter name;
      every gradient is reset first);
    * ``{"do": "gradients", "x", "kwargs", "repeats"}``: that many gradients of the loss of
      ``nvil(x, **kwargs)``, stacked (``{"gen", "inf"}``; a missing one counts as zeros);
    * ``{"do": "recorded"}``: the recording control variate's calls: how many, and the last
      one's rewards, whether its x was the input, its q's batch shape;
    * ``{"do": "r_fn", "z", "x"}``: the last recorded ``r_fn(z, x)``, under no_grad.
    """
    gen, q = _parts(model)
    cv = _control_variate(model.get("cv") or {})
    built = ns["NVIL"](gen, q, cv).to(device)
    dtype = torch.float64 if model["kind"] == "ppca" else torch.float32
    parts = {"gen": gen, "inf": q, "cv": cv if cv is not None else nn.Module()}
    inputs = {}

    def reset():
        for part in parts.values():
            for p in part.parameters():
                p.grad = None

    def run(step):
        x = _on(step.get("x"), device, dtype)
        if step["do"] == "DRL":
            with torch.no_grad():
                return built.DRL(x, sample_size=step.get("sample_size"))
        if step["do"] == "forward":
            reset()
            inputs["x"] = x
            out = built(x, **(step.get("kwargs") or {}))
            if not step.get("backward"):
                return {"out": out}
            out["loss"].backward()
            return {"out": out, "grads": {k: _gradients(m) for k, m in parts.items()}}
        if step["do"] == "gradients":
            runs = {"gen": [], "inf": []}
            for _ in range(int(step["repeats"])):
                reset()
                built(x, **(step.get("kwargs") or {}))["loss"].backward()
                for key in runs:
                    runs[key].append({name: torch.zeros_like(p) if p.grad is None
                                      else p.grad.detach().clone()
                                      for name, p in parts[key].named_parameters()})
            return {key: {name: torch.stack([g[name] for g in grads]) for name in grads[0]}
                    if grads else {} for key, grads in runs.items()}
        if step["do"] == "recorded":
            calls = cv.calls
            last = calls[-1] if calls else {}
            given, x_in = last.get("x"), inputs.get("x")
            return {"calls": len(calls), "r": last.get("r"),
                    "x_is_input": isinstance(given, torch.Tensor) and x_in is not None
                    and given.shape == x_in.shape and bool(torch.equal(given, x_in)),
                    "q_batch_shape": list(last["q"].batch_shape)
                    if isinstance(last.get("q"), td.Distribution) else None}
        if step["do"] == "r_fn":
            with torch.no_grad():
                return cv.calls[-1]["r_fn"](_on(step["z"], device, dtype), x)
        raise ValueError(f"unknown step {step['do']!r}")

    return [_attempt(run, step) for step in steps]


# ----------------------------------------------------------------------------- control variates
def _student_control_variate(ns: dict, cls: str):
    """The student's control variate class named ``cls``, one of the exercises'."""
    classes = {"CentredReward": lambda: ns["CentredReward"],
               "ScaledReward": lambda: ns["ScaledReward"],
               "SelfCritic": lambda: ns["SelfCritic"], "Baseline": lambda: ns["Baseline"]}
    if cls not in classes:
        raise ValueError(f"{cls!r} is not a control variate of the exercises")
    return classes[cls]()


def control_variate(ns: dict, device: str, cls: str, kwargs: dict, rewards: list) -> list:
    """The student's control variate ``cls``, built with ``kwargs`` on ``device``, called on each
    of ``rewards`` in turn (its state carried over): ``[{"out", "loss"}]``."""
    cv = _student_control_variate(ns, cls)(**kwargs).to(device)
    seen = []
    for r in rewards:
        out = _attempt(cv, _on(r, device))
        if isinstance(out, tuple) and len(out) == 2:
            out = {"out": out[0], "loss": out[1]}
        seen.append(out)
    return seen


class _RecordingReward:
    """r_fn(z, x) = the sum of z's last dimension; records the codes it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, z, x):
        self.seen.append(z)
        return z.sum(-1)


def self_critic(ns: dict, device: str, loc, scale, calls: list) -> list:
    """``SelfCritic()(r, x=x, q=q, r_fn=r_fn)`` for each call ``{"r", "x"}`` (a new instance
    each time), with q = N(loc, diag(scale^2)) (batch_shape loc.shape[:-1]) and r_fn the sum of
    the codes' last dimension: ``[{"out", "loss", "codes": what r_fn was given}]``."""
    q = td.Independent(td.Normal(_on(loc, device), _on(scale, device)), 1)
    seen = []
    for call in calls:
        reward = _RecordingReward()
        out = _attempt(lambda: ns["SelfCritic"]()(_on(call["r"], device), x=_on(call["x"], device),
                                                  q=q, r_fn=reward))
        if isinstance(out, tuple) and len(out) == 2:
            out = {"out": out[0], "loss": out[1]}
        if isinstance(out, dict):
            out["codes"] = [z.detach() if isinstance(z, torch.Tensor) else z for z in reward.seen]
        seen.append(out)
    return seen


def baseline(ns: dict, device: str, x, rewards: list, images, image_rewards, fit_x,
             fit_reward: float, fit_steps: int, fit_lr: float) -> dict:
    """Baseline, as the judge's cell grades it:

    * ``outputs``: for hidden sizes 3 and 16, ``Baseline(6, hidden, event_dims=1)`` called on
      each of ``rewards`` with ``x``: the outputs and losses, whether they carry a gradient,
      and the parameters' devices;
    * ``images``: ``Baseline(12, 4, p_drop=0.1)`` (event_dims 3) in eval mode on
      ``image_rewards`` with the images ``images``: the output;
    * ``fit``: ``Baseline(6, 16, event_dims=1)`` fitted with Adam (``fit_lr``) for ``fit_steps``
      steps on the mean of its loss for a constant reward ``fit_reward`` ([2, B]) at
      ``fit_x``: the output afterwards.
    """
    Baseline = ns["Baseline"]
    seen = {"outputs": []}
    xx = _on(x, device)
    for hidden in (3, 16):
        def outputs():
            cv = Baseline(6, hidden, event_dims=1).to(device)
            found = []
            for r in rewards:
                out, loss = cv(_on(r, device), xx)
                found.append({"out": out, "loss": loss,
                              "out_grad": bool(getattr(out, "requires_grad", False)),
                              "loss_grad": bool(getattr(loss, "requires_grad", False))})
            return {"calls": found, "devices": _devices(cv)}

        seen["outputs"].append(_attempt(outputs))

    def image_output():
        cv = Baseline(12, 4, p_drop=0.1).to(device).eval()
        return cv(_on(image_rewards, device), _on(images, device))[0]

    seen["images"] = _attempt(image_output)

    def fit():
        cv = Baseline(6, 16, event_dims=1).to(device)
        opt = torch.optim.Adam(cv.parameters(), lr=fit_lr)
        x_fit = _on(fit_x, device)
        r = torch.full((2, x_fit.shape[0]), fit_reward, device=device)
        for _ in range(fit_steps):
            _, loss = cv(r, x_fit)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
        return cv(r, x_fit)[0]

    seen["fit"] = _attempt(fit)
    return seen


def cv_chain(ns: dict, device: str, r) -> dict:
    """CVChain with this module's members, on the rewards ``r`` ([2, 2]):

    * ``ordered``: ``CVChain(TimesThree(), AddOne())(r)``, output and loss;
    * ``named``: ``CVChain(OrderedDict(first=AddOne(), second=TimesThree()))``: its children's
      names and its output;
    * ``parameters``: how many parameters ``CVChain(WithParameter(), AddOne())`` has;
    * ``passed``: whether ``CVChain(AddOne(), Spy())(r, x=x, q=q, r_fn=r_fn)`` hands the very
      x, q and r_fn to the spy;
    * ``single``: ``CVChain(AddOne())(r)``'s output.
    """
    CVChain = ns["CVChain"]
    rr = _on(r, device)

    def pair(chain):
        out = chain(rr)
        return {"out": out[0], "loss": out[1]} if isinstance(out, tuple) and len(out) == 2 else out

    seen = {"ordered": _attempt(lambda: pair(CVChain(_TimesThree(), _AddOne())))}

    def named():
        chain = CVChain(OrderedDict(first=_AddOne(), second=_TimesThree()))
        return {"names": [n for n, _ in chain.named_children()], **pair(chain)}

    seen["named"] = _attempt(named)
    seen["parameters"] = _attempt(
        lambda: len(list(CVChain(_WithParameter(), _AddOne()).parameters())))

    def passed():
        spy = _Spy()
        q, r_fn, x = td.Normal(0.0, 1.0), (lambda z, x_: z), torch.ones(2, 1, device=device)
        CVChain(_AddOne(), spy)(rr, x=x, q=q, r_fn=r_fn)
        return spy.seen is not None and spy.seen[0] is x and spy.seen[1] is q \
            and spy.seen[2] is r_fn

    seen["passed"] = _attempt(passed)
    seen["single"] = _attempt(lambda: pair(CVChain(_AddOne())))
    return seen


def cv_variance(ns: dict, device: str, cls: str, args: list, kwargs: dict, loc, scale, x,
                obs: dict, warm_up: list, rewards: list, lr: float) -> dict:
    """The student's control variate ``cls``, built with ``args`` and ``kwargs``, on the rewards
    of a score-function estimator:
    q(z|x) = N(loc, diag(scale^2)) ([B, K]), r_fn(z, x) = log p(x|z) of a BinarizedImageModel
    with the judge's weights (``obs``: ``{"latent", "size", "state"}``).

    First each reward of ``warm_up`` ([1, B] each) goes through it, and where it has parameters
    an Adam step (``lr``) on the mean of its loss follows (running statistics settle, a learned
    baseline fits); then each of ``rewards``, without steps.

    Returns:
        ``{"out": the outputs for ``rewards``, stacked}`` (or the error).
    """
    cv = _student_control_variate(ns, cls)(*args, **kwargs).to(device)
    model = _image_obs(int(obs["latent"]), int(obs["size"]), obs["state"]).to(device)
    q = td.Independent(td.Normal(_on(loc, device), _on(scale, device)), 1)
    xx = _on(x, device)

    def r_fn(z, x_):
        return model(z).log_prob(x_)

    def run():
        params = list(cv.parameters())
        opt = torch.optim.Adam(params, lr=lr) if params else None
        for r in warm_up:
            _, loss = cv(_on(r, device), x=xx, q=q, r_fn=r_fn)
            loss = (torch.zeros_like(_on(r, device)) + loss).mean()
            if opt is not None and loss.requires_grad:
                for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
                    p.grad = g
                opt.step()
        outs = []
        for r in rewards:
            out, _ = cv(_on(r, device), x=xx, q=q, r_fn=r_fn)
            outs.append(out.detach())
        return {"out": torch.stack(outs)}

    return _attempt(run)
