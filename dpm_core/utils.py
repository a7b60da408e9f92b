"""Argument checks and model helpers shared by the modules of dpm_core.

Each check takes the argument's name first and its value second, raises ``ValueError``
that names the argument, says what was expected and what was got
(``"num_components must be a positive int, got 0"``), as ``torch.distributions`` does,
and returns the value in its canonical type (``int``, ``float``).

Example:
    >>> positive_int("num_components", 3)
    3
    >>> positive_int("num_components", 0)
    Traceback (most recent call last):
    ...
    ValueError: num_components must be a positive int, got 0
"""

from __future__ import annotations

import numbers
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = [
    "ShapeLike",
    "as_shape",
    "positive_shape",
    "positive_int",
    "positive_ints",
    "non_negative_int",
    "positive_number",
    "probability",
    "tensor_of",
    "one_of",
    "index",
    "batch_of",
    "model_device",
    "evaluating",
    "read_only",
]


ShapeLike = Union[int, Sequence[int], torch.Size]


def _is_int(value: Any) -> bool:
    # bool is an int to Python, but True is never meant as a size
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name: str, value: Any, *, or_none: bool = False) -> Optional[int]:
    """``value`` as an int >= 1 (``None`` passes through where ``or_none``)."""
    if or_none and value is None:
        return None
    if not _is_int(value) or value <= 0:
        expected = "a positive int or None" if or_none else "a positive int"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def positive_ints(**sizes: Any) -> None:
    """Check that every keyword argument is a positive int (see :func:`positive_int`)."""
    for name, value in sizes.items():
        positive_int(name, value)


def non_negative_int(name: str, value: Any) -> int:
    """``value`` as an int >= 0."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def positive_number(name: str, value: Any) -> float:
    """``value`` as a float > 0 (a positive scale, bound or range)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return number


def probability(name: str, value: Any, *, include_zero: bool = True,
                include_one: bool = True) -> float:
    """``value`` as a float in [0, 1]; ``include_one=False`` leaves 1 out (a dropout rate),
    ``include_zero=False`` leaves 0 out (the weight of a running average's newest term)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and (0.0 <= value if include_zero else 0.0 < value) \
        and (value <= 1.0 if include_one else value < 1.0)
    if not ok:
        interval = "[("[include_zero] + "0, 1" + ")]"[include_one]
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def tensor_of(name: str, value: Any, dtype: torch.dtype, shape: str) -> Tensor:
    """``value`` if it is a tensor of ``dtype`` with as many dimensions as ``shape`` names
    (e.g. ``"[N, C, H, W]"``); the message says what it got instead."""
    dims = len(shape.strip("[]").split(","))
    if isinstance(value, Tensor) and value.dtype == dtype and value.dim() == dims:
        return value
    got = (f"{value.dtype} tensor of shape {list(value.shape)}" if isinstance(value, Tensor)
           else type(value).__name__)
    kind = str(dtype).replace("torch.", "")
    article = "an" if kind[0] in "aeio" else "a"  # a uint8 ("you-int"), an int64
    raise ValueError(f"{name} must be {article} {kind} tensor {shape}, got {got}")


def one_of(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def index(name: str, value: Any, n: int, what: str = "items") -> int:
    """``value`` as an index into ``n`` things (``what`` names them in the message)."""
    if not _is_int(value) or not 0 <= value < n:
        raise ValueError(f"{name} must be an index in 0..{n - 1} (one of the {n} {what}), "
                         f"got {value!r}")
    return int(value)


def batch_of(name: str, x: Any, event_shape: tuple, batch: str = "B",
             min_size: int = 0) -> Tensor:
    """``x`` if it is a tensor ``[batch] + event_shape`` (the model's data shape).

    Args:
        name: the argument's name.
        x: the value.
        event_shape: the shape of one item.
        batch: the letter of the batch dimension in the message (``B`` a batch,
            ``N`` a data set).
        min_size: the fewest items x may hold.
    """
    expected = f"[{batch}] + {list(event_shape)}"
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a tensor {expected}, got {type(x).__name__}")
    if x.dim() != len(event_shape) + 1 or tuple(x.shape[1:]) != tuple(event_shape) \
            or x.shape[0] < min_size:
        least = f" with {batch} >= {min_size}" if min_size else ""
        raise ValueError(f"{name} must have shape {expected} (the model's data shape){least}, "
                         f"got {list(x.shape)}")
    return x


def as_shape(name: str, shape: ShapeLike, allow_empty: bool = True) -> tuple:
    """Turn an int or a sequence of ints into a tuple, checking every entry.

    Args:
        name: the argument's name, for the error message.
        shape: an int ``k`` (read as ``(k,)``), a tuple/list of ints or a ``torch.Size``.
        allow_empty: whether ``()`` is acceptable.

    Returns:
        The shape as a tuple of ints.

    Raises:
        ValueError: if an entry is not a non-negative int.
    """
    if isinstance(shape, bool):
        raise ValueError(f"{name} must be an int or a tuple of ints, got {shape!r}")
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"{name} must be an int or a tuple of ints, got {shape!r}") from None
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"{name} must contain non-negative ints, got {shape!r}")
    if not shape and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return shape


def positive_shape(name: str, shape: ShapeLike) -> tuple:
    """:func:`as_shape` for the shape of one outcome: not empty, every entry positive."""
    shape = as_shape(name, shape, allow_empty=False)
    if any(s == 0 for s in shape):
        raise ValueError(f"{name} must contain positive ints, got {shape!r}")
    return shape


def model_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for an empty one."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` under ``torch.no_grad()``; the model's previous mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


class read_only:
    """A read-only attribute that an object keeps in ``self._<name>``, documented by ``doc``.

    ``i = read_only("Index of image A.")`` in a class body reads like a property that
    returns ``self._i``; assigning to it raises ``AttributeError``.
    """

    def __init__(self, doc: str):
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.attr = name, "_" + name

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        return self if obj is None else getattr(obj, self.attr)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{type(obj).__name__}.{self.name} is read-only")
