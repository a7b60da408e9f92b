"""The only thing that crosses the sandbox: plain data in safetensors, with hard limits.

A message is one safetensors file: its tensors, and in its header's ``__metadata__`` a JSON
tree that refers to them. Nothing in it can run code when read (no pickle, no classes):
decoding yields JSON scalars, lists, dicts and the nodes below, whatever the sender wrote.

Nodes of the tree (a dict with the key ``"$"``):

* ``{"$": "tensor", "key", "dtype", "shape", "device", "requires_grad", "type"}``: a tensor
  (``type`` is its Python class name, ``"Tensor"`` for a plain one); decoded as
  :class:`Tensor`, whose ``data`` is a CPU copy;
* ``{"$": "list", "items"}``, ``{"$": "dict", "items"}`` (string keys);
* ``{"$": "object", "type", "shape"}``: something that is not data here (a NumPy array, a
  module, a meta tensor), described by its type;
* ``{"$": "error", "type", "message"}``: an exception raised by the student's code;
* ``{"$": "dist", "type", "batch_shape", "event_shape", "parts"}``: a
  ``torch.distributions`` object, its parameters (and base or component distributions) in
  ``parts``.

:func:`decode` enforces :class:`Limits` before it believes anything: total size, header size,
number and size of tensors, allowed dtypes, shapes that match the data, nesting depth, string
lengths. A malformed or oversized message raises :class:`WireError` with the reason.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import torch

__all__ = ["Limits", "WireError", "Tensor", "Node", "encode", "decode", "DTYPES"]

#: the dtypes a message may carry, by their safetensors names
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MAX_TEXT = 4000


class WireError(ValueError):
    """A message that breaks the format or its limits; the text says which."""


@dataclass(frozen=True)
class Limits:
    """What a decoded message may hold.

    Attributes:
        total_bytes: the whole message.
        header_bytes: the safetensors header (the JSON tree and the tensor table).
        tensors: how many tensors.
        elements: elements of one tensor.
        ndim: dimensions of one tensor.
        depth: nesting of the tree.
    """

    total_bytes: int = 64 * 2 ** 20
    header_bytes: int = 2 * 2 ** 20
    tensors: int = 20_000
    elements: int = 2 ** 24
    ndim: int = 8
    depth: int = 24


@dataclass
class Tensor:
    """A tensor as the other side described it.

    Attributes:
        data: a plain CPU tensor with its values (dtype as sent).
        device: where it lived, e.g. ``"cpu"``, ``"cuda:0"``.
        requires_grad: whether it carried a gradient.
        type: its class name there (``"Tensor"`` for a plain tensor, else a subclass).
    """

    data: torch.Tensor
    device: str = "cpu"
    requires_grad: bool = False
    type: str = "Tensor"

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)


@dataclass
class Node:
    """A decoded node that is not plain data: an object, an error or a distribution.

    Attributes:
        kind: ``"object"``, ``"error"`` or ``"dist"``.
        type: the class name of the object, exception or distribution.
        message: an error's message.
        shape: an object's shape, if it had one.
        batch_shape, event_shape: a distribution's shapes.
        parts: a distribution's parameters and inner distributions, by name.
    """

    kind: str
    type: str
    message: str = ""
    shape: tuple | None = None
    batch_shape: tuple = ()
    event_shape: tuple = ()
    parts: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.kind == "error" else self.type


def encode(tree) -> bytes:
    """The message of ``tree``: JSON scalars, lists, tuples, dicts (keys become strings),
    tensors (sent as CPU copies), :class:`Tensor` and :class:`Node`."""
    from safetensors.torch import save

    tensors: dict = {}

    def walk(value):
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return value[:_MAX_TEXT]
        if isinstance(value, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = value.detach().to("cpu").contiguous().clone()
            return {"$": "tensor", "key": key, "dtype": _NAMES[tensors[key].dtype],
                    "shape": list(value.shape), "device": str(value.device),
                    "requires_grad": bool(value.requires_grad), "type": "Tensor"}
        if isinstance(value, Tensor):
            return {**walk(value.data), "device": value.device,
                    "requires_grad": value.requires_grad, "type": value.type}
        if isinstance(value, Node):
            if value.kind == "dist":
                return {"$": "dist", "type": value.type, "batch_shape": list(value.batch_shape),
                        "event_shape": list(value.event_shape),
                        "parts": {str(k): walk(v) for k, v in value.parts.items()}}
            return {"$": value.kind, "type": value.type, "message": value.message[:_MAX_TEXT],
                    "shape": None if value.shape is None else list(value.shape)}
        if isinstance(value, dict):
            return {"$": "dict", "items": {str(k): walk(v) for k, v in value.items()}}
        if isinstance(value, (list, tuple)):
            return {"$": "list", "items": [walk(v) for v in value]}
        raise TypeError(f"cannot send a {type(value).__name__}")

    body = walk(tree)
    return save(tensors, metadata={"tree": json.dumps(body, allow_nan=True)})


def decode(message: bytes, limits: Limits = Limits()):
    """The tree of a message, every limit checked first.

    Raises:
        WireError: the message is not a safetensors file with a tree, or breaks a limit.
    """
    from safetensors.torch import load

    if not isinstance(message, (bytes, bytearray)):
        raise WireError("the message is not bytes")
    if len(message) > limits.total_bytes:
        raise WireError(f"the message has {len(message)} bytes, more than {limits.total_bytes}")
    if len(message) < 8:
        raise WireError("the message is too short to be a safetensors file")
    (header_size,) = struct.unpack("<Q", message[:8])
    if header_size > min(limits.header_bytes, len(message) - 8):
        raise WireError(f"the header claims {header_size} bytes")
    try:
        header = json.loads(bytes(message[8:8 + header_size]))
        tree = json.loads(header["__metadata__"]["tree"])
    except (ValueError, KeyError, TypeError) as err:
        raise WireError(f"the header holds no readable tree ({type(err).__name__})") from None
    table = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(table) > limits.tensors:
        raise WireError(f"{len(table)} tensors, more than {limits.tensors}")
    for key, entry in table.items():
        if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
            raise WireError(f"tensor {key!r} has a dtype that is not allowed")
        shape = entry.get("shape")
        if not isinstance(shape, list) or len(shape) > limits.ndim or \
                not all(isinstance(n, int) and n >= 0 for n in shape):
            raise WireError(f"tensor {key!r} has a bad shape")
        if _numel(shape) > limits.elements:
            raise WireError(f"tensor {key!r} has more than {limits.elements} elements")
    try:
        tensors = load(bytes(message))
    except Exception as err:  # noqa: BLE001 -- any parse failure is the sender's
        raise WireError(f"the tensors cannot be read ({type(err).__name__}: {err})") from None
    used: set = set()
    return _rebuild(tree, tensors, used, limits, 0)


def _numel(shape) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def _text(value) -> str:
    if not isinstance(value, str):
        raise WireError("a text field is not a string")
    return value[:_MAX_TEXT]


def _shape(value, limits: Limits) -> tuple:
    if not isinstance(value, list) or len(value) > limits.ndim or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
        raise WireError("a shape is not a short list of sizes")
    return tuple(value)


def _rebuild(node, tensors: dict, used: set, limits: Limits, depth: int):
    if depth > limits.depth:
        raise WireError(f"the tree is nested deeper than {limits.depth}")
    if node is None or isinstance(node, (bool, int, float)):
        return node
    if isinstance(node, str):
        return node[:_MAX_TEXT]
    if not isinstance(node, dict):
        raise WireError(f"a node of type {type(node).__name__} is not allowed")
    kind = node.get("$")
    again = lambda value: _rebuild(value, tensors, used, limits, depth + 1)  # noqa: E731
    if kind == "tensor":
        key = node.get("key")
        if key not in tensors or key in used:
            raise WireError(f"the tree refers to tensor {key!r}, which is missing or used twice")
        used.add(key)
        data = tensors[key]
        if _shape(node.get("shape"), limits) != tuple(data.shape):
            raise WireError(f"tensor {key!r} does not have the shape the tree says")
        return Tensor(data, _text(node.get("device", "cpu")), bool(node.get("requires_grad")),
                      _text(node.get("type", "Tensor")))
    if kind == "list":
        items = node.get("items")
        if not isinstance(items, list):
            raise WireError("a list node holds no list")
        return [again(v) for v in items]
    if kind == "dict":
        items = node.get("items")
        if not isinstance(items, dict):
            raise WireError("a dict node holds no dict")
        return {_text(k): again(v) for k, v in items.items()}
    if kind in ("object", "error"):
        shape = node.get("shape")
        return Node(kind, _text(node.get("type", "?")), _text(node.get("message", "")),
                    _shape(shape, limits) if shape is not None else None)
    if kind == "dist":
        parts = node.get("parts", {})
        if not isinstance(parts, dict):
            raise WireError("a distribution's parts are not a dict")
        return Node("dist", _text(node.get("type", "?")),
                    batch_shape=_shape(node.get("batch_shape", []), limits),
                    event_shape=_shape(node.get("event_shape", []), limits),
                    parts={_text(k): again(v) for k, v in parts.items()})
    raise WireError(f"unknown node kind {kind!r}")
