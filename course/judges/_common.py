"""What every judge uses: the probe it talks to, requests, and verdict helpers.

A judge is a function ``judge(probe, rng) -> str``: it draws its inputs from ``rng`` (a
``torch.Generator`` seeded afresh for every grading run), asks the probe in the student's
kernel to call the student's code on them (:func:`call`, :meth:`Probe.run`), computes the
reference answers and the known mistakes here, outside the kernel, and either returns the
message of a pass or raises ``AssertionError`` with the message that names the mistake.
"""

from __future__ import annotations

import torch

from dpm_probe.wire import Limits, Node, Tensor, decode, encode

__all__ = ["REPLY_LIMITS", "Probe", "LocalProbe", "call", "leaf", "expanded", "probe_op",
           "statistical", "returned", "reported", "tensor_value", "shaped", "on_device", "expect",
           "expect_close", "known_mistake", "draw_seed"]

#: what a probe's reply may hold
REPLY_LIMITS = Limits(total_bytes=64 * 2 ** 20)


class Probe:
    """The student's kernel as a judge sees it: requests go in, plain data comes out.

    Subclasses implement :meth:`exchange` (one request message in, one reply message out).
    """

    _devices: list | None = None

    def exchange(self, request: bytes) -> bytes:
        raise NotImplementedError

    def run(self, ops: list) -> list:
        """Carry out ``ops`` in the kernel; their results, in order.

        Raises:
            AssertionError: the kernel's reply is missing, malformed or does not fit.
        """
        reply = decode(self.exchange(encode({"ops": ops})), REPLY_LIMITS)
        results = reply.get("results") if isinstance(reply, dict) else None
        if not isinstance(results, list) or len(results) != len(ops):
            raise AssertionError("the kernel's answer to the hidden tests does not fit their "
                                 "request: restart the kernel and run the notebook again")
        return results

    @property
    def devices(self) -> list:
        """The devices to test on: the CPU, and CUDA when the kernel has it."""
        if self._devices is None:
            info = self.run([{"op": "info"}])[0]
            found = info.get("devices") if isinstance(info, dict) else None
            self._devices = ["cpu"] + (["cuda"] if isinstance(found, list) and "cuda" in found
                                       else [])
        return self._devices


class LocalProbe(Probe):
    """The probe run in this process on the namespace ``ns``, through the same wire format:
    for tests and for the instructor's own runs of a source notebook."""

    def __init__(self, ns: dict):
        self.ns = ns

    def exchange(self, request: bytes) -> bytes:
        from dpm_probe.runtime import execute

        return execute(request, self.ns)


def statistical(judge):
    """Mark a judge whose tolerances are standard errors of fresh draws: a correct answer fails
    it with a small probability (about 1e-4), so :func:`course.judges.run_judge` gives it a
    second try on new inputs before it fails (a correct answer then fails with probability
    about 1e-8; a wrong one fails both tries)."""
    judge.retries = 1
    return judge


def draw_seed(rng: torch.Generator) -> int:
    """A seed for the kernel's random generators, drawn from the judge's ``rng``."""
    return int(torch.randint(2 ** 31 - 1, (1,), generator=rng))


def leaf(tensor: torch.Tensor, expand: tuple = ()) -> dict:
    """An argument that the probe makes a leaf requiring a gradient (``expand``: sizes to
    put in front, as ``tensor.expand(*expand, *tensor.shape)``)."""
    return {"tensor": tensor, "grad": True, "expand": list(expand)}


def expanded(tensor: torch.Tensor, *sizes: int) -> dict:
    """An argument that the probe makes as ``tensor.expand(*sizes, *tensor.shape)`` (copied),
    so that a large input travels as its small pattern."""
    return {"tensor": tensor, "grad": False, "expand": list(sizes)}


def call(fn: str, *args, device: str = "cpu", seed: int | None = None, grad: tuple = (),
         cotangent=None, no_grad: bool = False, stand_ins: dict | None = None,
         **kwargs) -> dict:
    """The request to call the notebook's ``fn(*args, **kwargs)`` on ``device``.

    Args:
        fn: the name in the notebook's namespace.
        args, kwargs: tensors (moved to ``device``), :func:`leaf` arguments, JSON values.
        seed: seed the kernel's random generators just before the call.
        grad: positions of the arguments to return autograd's gradient for.
        cotangent: the gradient is of ``(output * cotangent).sum()`` (default ``output.sum()``).
        no_grad: call under ``torch.no_grad()``.
        stand_ins: ``{name: {"entries": [{"args", "value", "jacobians"}]}}``: tabulated
            functions put in the namespace during the call (see :mod:`dpm_probe.runtime`).
    """
    return {"op": "call", "fn": fn, "args": list(args), "kwargs": kwargs, "device": device,
            "seed": seed, "grad": list(grad), "cotangent": cotangent, "no_grad": no_grad,
            "stand_ins": stand_ins or {}}


def probe_op(name: str, seed: int | None = None, **inputs) -> dict:
    """The request to run the probe function ``dpm_probe.probes.<name>`` (``"module.function"``)
    on the notebook's namespace with ``inputs`` (the kernel's generators seeded with ``seed``)."""
    return {"op": "probe", "probe": name, "inputs": inputs, "seed": seed}


def expect(condition: bool, message: str) -> None:
    """Raise ``AssertionError(message)`` unless ``condition`` holds."""
    if not bool(condition):
        raise AssertionError(message)


def returned(result: dict, what: str, hint: str = "", hint_for: tuple = ("RuntimeError",)):
    """The value a call returned.

    Args:
        result: the call's result.
        what: the name of the student's function, for the message.
        hint: a likely cause, added to the message when the error is one of ``hint_for``.

    Raises:
        AssertionError: the call raised; the message names the student's error.
    """
    if not isinstance(result, dict):
        raise AssertionError(f"{what}: the kernel sent no result")
    error = result.get("error")
    if isinstance(error, Node):
        if error.type == "NotImplementedError" and not error.message:
            raise AssertionError(f"{what} is not written yet: write the function (and delete "
                                 f"its raise line)")
        if error.type == "KeyError" and error.message.strip("'\"") == what:
            raise AssertionError(f"{what} is not defined: run its cell before this one")
        raise AssertionError(f"{what} raised {error.type}: {error.message}"
                             + (f". {hint}" if hint and error.type in hint_for else ""))
    return result.get("value")


def reported(value, what: str, names: tuple = (), hint: str = ""):
    """``value``, unless it reports an exception that the student's code raised (an error node,
    or a probe's dict with ``"raised"`` and ``"message"``): then the failure that names the call.

    Args:
        value: what a request returned.
        what: the call, for the message.
        names: the notebook names the call needs: a ``KeyError`` of one of them means that its
            cell has not run.
        hint: a likely cause, added to the message of any other error.

    Raises:
        AssertionError: the code is not written yet (a bare ``NotImplementedError``, as the
            release has it), a name is not defined yet, or the code raised another error (its
            type and message, cut at 300 characters, then ``hint``: a withheld reference of
            dpm_core says so in its message).
    """
    if isinstance(value, Node) and value.kind == "error":
        kind, message = value.type, value.message
    elif isinstance(value, dict) and "raised" in value and "message" in value:
        kind, message = str(value["raised"]), str(value["message"])
    else:
        return value
    if kind == "NotImplementedError" and not message:  # the release's blank
        raise AssertionError(f"{what} raised NotImplementedError: write the exercise's code (and "
                             f"delete its raise line)")
    name = message.strip("'\"")
    if kind == "KeyError" and name in names:
        raise AssertionError(f"{name} is not defined: run its cell before this one")
    detail = f": {message[:300]}" if message else ""
    raise AssertionError(f"{what} raised {kind}{detail}. {hint}".strip())


def shaped(value, shape, what: str, hint: str = "") -> Tensor:
    """``value`` as a plain tensor of ``shape`` (its description: ``.data`` holds the values), or
    the failure that says what it is instead."""
    got = tensor_value(value, what)
    expect(got.shape == tuple(shape),
           f"{what} has shape {list(got.shape)}, expected {list(shape)}. {hint}".strip())
    return got


def on_device(got: Tensor, device: str) -> bool:
    """Whether a tensor the kernel described lived on ``device`` (its type: cpu or cuda)."""
    return got.device.split(":")[0] == device


def tensor_value(value, what: str, hint: str = "") -> Tensor:
    """``value`` as a plain tensor, or a message saying what it is instead.

    Raises:
        AssertionError: ``value`` is no tensor, or a subclass (which could answer every
            comparison its own way in the kernel).
    """
    if not isinstance(value, Tensor):
        got = value.type if isinstance(value, Node) else type(value).__name__
        raise AssertionError(f"{what} should be a torch.Tensor, got {got}"
                             + (f": {hint}" if hint else ""))
    expect(value.type == "Tensor", f"{what} should be a plain torch.Tensor, got the subclass "
                                   f"{value.type}")
    return value


def expect_close(actual: torch.Tensor, expected: torch.Tensor, what: str, hint: str = "",
                 rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Check values (CPU tensors) against a reference, naming the quantity and a likely mistake.

    NaN anywhere fails.
    """
    expected = torch.as_tensor(expected).to(actual.dtype)
    expect(tuple(actual.shape) == tuple(expected.shape),
           f"{what} has shape {list(actual.shape)}, expected {list(expected.shape)}. "
           f"{hint}".strip())
    if not torch.allclose(actual, expected, rtol=rtol, atol=atol):
        worst = (actual - expected).abs().max().item()
        raise AssertionError(f"{what} differs from the reference by up to {worst:.4g}. "
                             f"{hint}".strip())


def known_mistake(got: torch.Tensor, known: list, rtol: float, atol: float,
                  default: str | None = None) -> str | None:
    """The message of the first known mistake whose value matches ``got``.

    Args:
        got: the student's value.
        known: ``(value, message)`` pairs: what a known mistake computes, and what to tell.
        rtol, atol: the tolerance of a match (looser than the exact comparison that failed).
        default: the message when no known mistake matches.
    """
    for value, message in known:
        value = torch.as_tensor(value).to(got.dtype)
        if value.shape == got.shape and torch.allclose(got, value, rtol=rtol, atol=atol):
            return message
    return default


def kind_of(value) -> str:
    """What a reported value is, in a message: its wire type, or its Python type."""
    return value.type if isinstance(value, (Node, Tensor)) else type(value).__name__


def is_distribution(value) -> bool:
    """Whether a reported value describes a torch distribution."""
    return isinstance(value, Node) and value.kind == "dist"


def expect_distribution(d, batch_shape, event_shape, what: str) -> None:
    """``d`` describes a torch distribution with these shapes (``dpm_core.grading``'s
    messages, which the notebooks' self-checks use too)."""
    expect(is_distribution(d), f"{what} should return a torch.distributions object, got "
                               f"{kind_of(d)}")
    batch_shape, event_shape = tuple(batch_shape), tuple(event_shape)
    if tuple(d.batch_shape) == batch_shape + event_shape and tuple(d.event_shape) == ():
        raise AssertionError(
            f"{what} has batch_shape {list(d.batch_shape)} and event_shape [], expected "
            f"{list(batch_shape)} and {list(event_shape)}; did you forget td.Independent "
            f"over the outcome dimensions?")
    expect(tuple(d.batch_shape) == batch_shape,
           f"{what} has batch_shape {list(d.batch_shape)}, expected {list(batch_shape)}; "
           f"does td.Independent reinterpret the right number of dimensions?")
    expect(tuple(d.event_shape) == event_shape,
           f"{what} has event_shape {list(d.event_shape)}, expected {list(event_shape)}; "
           f"did you forget td.Independent over the outcome dimensions?")
