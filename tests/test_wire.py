"""The wire between the probe and the judge (dpm_probe.wire, dpm_probe.runtime).

What a kernel sends is decoded into plain data or refused with a reason: limits on size,
header, tensor count, elements, dtypes, shapes and depth are checked before anything is
believed, and nothing in a message can run code. The probe's operations report the student's
errors as data and restore what a stand-in replaced.
"""

import json
import pickle
import struct

import pytest
import torch

from course.judges._common import LocalProbe, Probe, call, leaf, returned, tensor_value
from dpm_probe.runtime import execute
from dpm_probe.wire import Limits, Node, Tensor, WireError, decode, encode


def _message(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_a_tree_round_trips():
    """Do scalars, strings, lists, dicts, tensors (dtype, device, gradient flag) and nodes come
    back as they were sent?"""
    x = torch.arange(6, dtype=torch.float64).reshape(2, 3).requires_grad_()
    tree = {"a": [1, 2.5, None, True, "text"], "t": x, "n": Node("error", "ValueError", "bad"),
            "i": torch.tensor([1, 2], dtype=torch.int32)}
    got = decode(encode(tree))
    assert got["a"] == [1, 2.5, None, True, "text"]
    assert isinstance(got["t"], Tensor) and torch.equal(got["t"].data, x.detach())
    assert got["t"].requires_grad and got["t"].dtype == torch.float64 and got["t"].device == "cpu"
    assert got["n"].kind == "error" and str(got["n"]) == "ValueError: bad"
    assert got["i"].data.dtype == torch.int32


@pytest.mark.parametrize("message, words", [
    (b"", "too short"),
    (struct.pack("<Q", 2 ** 40) + b"{}", "header claims"),
    (_message({"__metadata__": {"tree": "not json"}}), "no readable tree"),
    (_message({"__metadata__": {"tree": json.dumps({"$": "tensor", "key": "t0", "shape": [1]})}}),
     "missing or used twice"),
    (_message({"__metadata__": {"tree": "1"}, "t0": {"dtype": "C64", "shape": [1],
                                                     "data_offsets": [0, 8]}}, b"\0" * 8),
     "dtype that is not allowed"),
    (_message({"__metadata__": {"tree": "1"}, "t0": {"dtype": "F32", "shape": [2 ** 20, 2 ** 20],
                                                     "data_offsets": [0, 4]}}, b"\0" * 4),
     "more than"),
    (_message({"__metadata__": {"tree": json.dumps({"$": "pickle", "data": "x"})}}),
     "unknown node kind"),
    (_message({"__metadata__": {"tree": json.dumps(
        {"$": "list", "items": [{"$": "list", "items": []}]})}}), None),
    (pickle.dumps(object), "header claims"),
])
def test_a_malformed_message_is_refused_with_its_reason(message, words):
    """Is every malformed message (short, a lying header, no tree, a missing tensor, a complex
    dtype, too many elements, an unknown node, a pickle) refused with a reason?"""
    if words is None:  # the control: a well-formed nested list
        assert decode(message) == [[]]
        return
    with pytest.raises(WireError, match=words):
        decode(message)


def test_the_limits_hold():
    """Are a message over its byte limit, more tensors than allowed, a deep tree and a tensor
    whose shape disagrees with the tree refused?"""
    many = encode([torch.zeros(1)] * 50)
    with pytest.raises(WireError, match="bytes"):
        decode(many, Limits(total_bytes=100))
    with pytest.raises(WireError, match="tensors"):
        decode(many, Limits(tensors=10))
    deep = [[[[[[1]]]]]]
    assert decode(encode(deep)) == deep
    with pytest.raises(WireError, match="deeper"):
        decode(encode(deep), Limits(depth=3))
    from safetensors.torch import save

    lying = save({"t0": torch.zeros(2, 3)}, metadata={"tree": json.dumps(
        {"$": "tensor", "key": "t0", "shape": [3, 2]})})
    with pytest.raises(WireError, match="shape"):
        decode(lying)


def test_the_probe_reports_errors_and_restores_stand_ins():
    """Does a call that raises come back as an error node (a message for the judge), a
    stand-in disappear after the call, and a tabulated stand-in give the table's value and
    its Jacobian as the gradient?"""
    m = torch.randn(2, 3)
    ns = {"bad": lambda x: 1 / 0, "uses": lambda x: ns["KL"](x) * 2}
    table = {"KL": {"entries": [{"args": [m], "value": m.sum(-1),
                                 "jacobians": [torch.ones(2, 2, 3)]}]}}
    probe = LocalProbe(ns)
    bad, used = probe.run([call("bad", m), call("uses", leaf(m), grad=(0,), stand_ins=table)])
    with pytest.raises(AssertionError, match="bad raised ZeroDivisionError"):
        returned(bad, "bad")
    value = tensor_value(returned(used, "uses"), "uses")
    assert torch.allclose(value.data, 2 * m.sum(-1))
    assert torch.allclose(used["grads"][0].data, torch.full((2, 3), 4.0))
    assert "KL" not in ns
    assert used["stand_in_calls"]["KL"] == [{"matched": 0}]


def test_a_reply_that_does_not_fit_fails_the_cell():
    """Does a kernel that answers with garbage, or with the wrong number of results, fail the
    judge's request with a message rather than a crash of the grader?"""
    class Echo(Probe):
        def exchange(self, request):
            return request  # the request itself: ops, not results

    class Garbage(Probe):
        def exchange(self, request):
            return b"\x00" * 64

    with pytest.raises(AssertionError, match="does not fit"):
        Echo().run([call("f")])
    with pytest.raises(WireError):
        Garbage().run([call("f")])


def test_a_tensor_subclass_is_reported_as_such():
    """Is a tensor subclass sent as its data with its class name, so that the judge can refuse
    it (it could answer every comparison its own way in the kernel)?"""
    class Liar(torch.Tensor):
        pass

    reply = decode(execute(encode({"ops": [call("f")]}),
                           {"f": lambda: torch.zeros(3).as_subclass(Liar)}))
    value = reply["results"][0]["value"]
    assert value.type == "Liar"
    with pytest.raises(AssertionError, match="subclass"):
        tensor_value(value, "f")
