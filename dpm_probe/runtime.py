"""The probe: what runs in the student's kernel while a hidden test cell is graded.

The grader sends one request per round trip, as a cell of its own that calls :func:`serve`
with a message of :mod:`dpm_probe.wire` (base64 text). The request is a list of operations;
the probe carries them out on the notebook's namespace and publishes the results, plain data
again, as a ``display_data`` output of type :data:`MIME`, which the grader reads. The probe
decides nothing: it holds no expected value, no reference and no verdict, so code in the
kernel that changes or replaces it can change only what the judge is shown, and the judge
(``course.judges``, outside the sandbox) made the inputs from a seed drawn for this run.

Operations (dicts):

* ``{"op": "info"}``: the devices the kernel has (``cpu``, and ``cuda`` when available);
* ``{"op": "call", "fn", "args", "kwargs", "device", "seed", "grad", "cotangent",
  "no_grad", "stand_ins"}``: call the notebook's ``fn`` and describe what it returned.
  Arguments: a tensor is moved to ``device``; ``{"tensor", "grad", "expand"}`` is a tensor
  expanded by the sizes in ``expand`` (copied) and, with ``grad``, a leaf that requires a
  gradient; JSON values are passed as they are. With ``seed``, torch's, NumPy's and
  Python's random generators are seeded just before the call. With ``grad`` (argument
  positions), autograd's gradient of ``(output * cotangent).sum()`` (``output.sum()``
  without a cotangent) with respect to those arguments is returned too. ``stand_ins`` puts
  tabulated functions under the given names in the namespace during the call (and restores
  what was there): each returns the judge's values, with the judge's Jacobians as its
  gradient, for the arguments it tabulates, and NaN for others; the calls they received are
  reported.

* ``{"op": "probe", "probe": "<module>.<function>", "inputs", "seed"}``: run a probe
  function of ``dpm_probe.probes.<module>`` as ``function(ns, **inputs)`` (the kernel's
  generators seeded first, with ``seed``); what it returns, described. A probe function
  exercises the student's classes on the inputs it is given (build them, call their methods,
  read their parameters) and returns what it saw; it holds no expected value.

Errors raised by the student's code are results too (``{"$": "error"}`` nodes).
"""

from __future__ import annotations

import base64
import random

import torch

from dpm_probe.wire import Limits, Node, Tensor, decode, encode

__all__ = ["MIME", "serve", "execute", "describe", "attempt"]

#: the output type of a probe's reply
MIME = "application/vnd.dpm-probe.v1+json"
#: what a request may hold (the grader writes it; the limits guard against mistakes)
REQUEST_LIMITS = Limits(total_bytes=32 * 2 ** 20)


def serve(request: str, nonce: str, ns: dict) -> None:
    """Carry out a request (base64 text) on ``ns`` and publish the reply under ``nonce``."""
    from IPython.display import publish_display_data

    reply = execute(base64.b64decode(request), ns)
    publish_display_data({MIME: {"nonce": nonce, "reply": base64.b64encode(reply).decode()}})


def execute(request: bytes, ns: dict) -> bytes:
    """The reply (a wire message ``{"results": [...]}``) to a request, on namespace ``ns``."""
    ops = decode(request, REQUEST_LIMITS)["ops"]
    return encode({"results": [_run(op, ns) for op in ops]})


def _run(op: dict, ns: dict):
    if op["op"] == "info":
        return {"devices": ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])}
    if op["op"] == "call":
        return _call(op, ns)
    if op["op"] == "probe":
        return _probe(op, ns)
    return Node("error", "ValueError", f"unknown operation {op['op']!r}")


def _probe(op: dict, ns: dict):
    """Run a probe function of ``dpm_probe.probes.<module>`` on ``ns`` with the request's
    inputs; what it returns, described (an error node when it raises)."""
    import importlib

    module, _, name = str(op.get("probe", "")).rpartition(".")
    try:
        fn = getattr(importlib.import_module(f"dpm_probe.probes.{module}"), name)
        if op.get("seed") is not None:
            _seed(op["seed"])
        return describe(fn(ns, **(op.get("inputs") or {})))
    except Exception as err:  # noqa: BLE001 -- whatever failed is reported, not raised
        return _error(err)


def _error(err: BaseException) -> Node:
    return Node("error", type(err).__name__, str(err))


def attempt(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or the error node of what it raised: for probe functions, so
    that one failing step is reported and the others still run."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001
        return _error(err)


def describe(value):
    """``value`` as plain data for the judge: tensors (plain CPU copies with their device,
    class and gradient flag), numbers, strings, lists, dicts, distributions with their
    parameters, and any other object by its class name."""
    try:
        if value is None or isinstance(value, (bool, int, float, str, Node, Tensor)):
            return value  # wire nodes (an error node of `attempt`) are data already
        if isinstance(value, torch.Tensor):
            return _describe_tensor(value)
        import torch.distributions as td

        if isinstance(value, td.Distribution):
            return _describe_distribution(value)
        if isinstance(value, (list, tuple)) and len(value) <= 1000:
            return [describe(v) for v in value]
        if isinstance(value, dict) and len(value) <= 1000:
            return {str(k): describe(v) for k, v in value.items()}
        shape = getattr(value, "shape", None)
        shape = list(shape) if isinstance(shape, tuple) and all(isinstance(n, int) for n in shape) \
            else None
        return Node("object", type(value).__name__, shape=shape)
    except Exception as err:  # noqa: BLE001 -- a hostile object may raise anything
        return _error(err)


def _describe_tensor(value: torch.Tensor):
    kind = type(value).__name__
    plain = torch.Tensor.as_subclass(value, torch.Tensor)
    if plain.is_meta or plain.is_sparse or plain.is_complex() or plain.is_quantized:
        return Node("object", f"{kind} ({plain.device.type}, {plain.dtype})",
                    shape=list(plain.shape))
    return Tensor(plain.detach().to("cpu").clone(), str(plain.device),
                  bool(plain.requires_grad), "Tensor" if type(value) in
                  (torch.Tensor, torch.nn.Parameter) else kind)


def _describe_distribution(d) -> Node:
    parts = {}
    for name in list(getattr(d, "arg_constraints", {})) + [
            "base_dist", "reinterpreted_batch_ndims", "mixture_distribution",
            "component_distribution"]:
        if name in vars(d):  # lazily computed parameters are left alone
            parts[name] = describe(vars(d)[name])
    if hasattr(d, "transforms"):
        parts["transforms"] = [type(t).__name__ for t in d.transforms]
    return Node("dist", type(d).__name__, batch_shape=tuple(d.batch_shape),
                event_shape=tuple(d.event_shape), parts=parts)


def _argument(spec, device: str):
    if isinstance(spec, Tensor):
        return spec.data.to(device)
    if isinstance(spec, dict) and isinstance(spec.get("tensor"), Tensor):
        tensor = spec["tensor"].data.to(device)
        sizes = spec.get("expand") or []
        if sizes:
            tensor = tensor.expand(*sizes, *tensor.shape).clone()
        return tensor.requires_grad_() if spec.get("grad") else tensor
    return spec


def _seed(seed: int) -> None:
    torch.random.manual_seed(seed)  # also CUDA's generators
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2 ** 32)
    except ImportError:
        pass


def _call(op: dict, ns: dict) -> dict:
    device = op.get("device", "cpu")
    result = {"value": None, "error": None, "grads": None, "stand_in_calls": {}}
    stand_ins = {name: _StandIn(table, device) for name, table in
                 (op.get("stand_ins") or {}).items()}
    saved = {name: ns[name] for name in stand_ins if name in ns}
    try:
        fn = ns[op["fn"]]
        args = [_argument(a, device) for a in op.get("args", [])]
        kwargs = {k: _argument(v, device) for k, v in (op.get("kwargs") or {}).items()}
        ns.update(stand_ins)
        if op.get("seed") is not None:
            _seed(op["seed"])
        with torch.no_grad() if op.get("no_grad") else torch.enable_grad():
            out = fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 -- the student's error is a result
        result["error"] = _error(err)
        return result
    finally:
        for name in stand_ins:
            if name in saved:
                ns[name] = saved[name]
            else:
                ns.pop(name, None)
        result["stand_in_calls"] = {name: s.calls for name, s in stand_ins.items()}
    result["value"] = describe(out)
    if op.get("grad"):
        result["grads"] = _gradients(out, [args[i] for i in op["grad"]],
                                     _argument(op.get("cotangent"), device))
    return result


def _gradients(out, wrt: list, cotangent):
    """Autograd's gradient of ``(out * cotangent).sum()`` for each of ``wrt`` (None where no
    gradient reaches it), or an error node."""
    try:
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return Node("error", "NoGradient", "the output carries no gradient")
        target = (out * cotangent).sum() if isinstance(cotangent, torch.Tensor) else out.sum()
        grads = torch.autograd.grad(target, wrt, allow_unused=True)
        return [None if g is None else describe(g) for g in grads]
    except Exception as err:  # noqa: BLE001
        return _error(err)


class _StandIn:
    """A tabulated function: the judge's value (and Jacobians) for each argument list it
    knows; NaN of the first argument's batch shape for any other. Records every call."""

    def __init__(self, table: dict, device: str):
        self.entries = [(e["args"], e["value"], e["jacobians"]) for e in table["entries"]]
        self.device = device
        self.calls: list = []

    def __call__(self, *args):
        for index, (known, value, jacobians) in enumerate(self.entries):
            if len(args) == len(known) and all(
                    isinstance(a, torch.Tensor) and tuple(a.shape) == k.shape
                    and torch.equal(a.detach().to("cpu", k.dtype), k.data)
                    for a, k in zip(args, known)):
                self.calls.append({"matched": index})
                out = value.data.to(args[0].device, args[0].dtype)
                for a, jac in zip(args, jacobians):
                    # the value does not change, its gradient is jac: d out / d a
                    delta = (a - a.detach()).reshape(*([1] * out.dim()), *a.shape)
                    out = out + (jac.data.to(a.device, a.dtype) * delta).flatten(out.dim()).sum(-1)
                return out
        self.calls.append({"matched": None, "args": [describe(a) for a in args]})
        first = args[0] if args and isinstance(args[0], torch.Tensor) else torch.zeros(1)
        return torch.full(first.shape[:-1], float("nan"), dtype=first.dtype, device=first.device)
