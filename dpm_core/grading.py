"""Helpers for the course notebooks' self-checks and hidden tests.

The assignments' test cells use these so that every failure message names the
likely mistake and every check runs on the CPU and, when there is one, on CUDA.
Training cells use :func:`grading_mode` to run a tiny budget while nbgrader
validates or autogrades a notebook.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import torch
import torch.distributions as td

__all__ = [
    "grading_mode",
    "budget",
    "devices",
    "expect",
    "expect_close",
    "expect_shape",
    "expect_distribution",
]


def grading_mode() -> bool:
    """True while nbgrader executes the notebook (``NBGRADER_EXECUTION`` is autograde or validate)."""
    return os.environ.get("NBGRADER_EXECUTION", "") in ("autograde", "validate")


def budget(full, grading):
    """``grading`` while nbgrader runs the notebook, ``full`` when a student runs it."""
    return grading if grading_mode() else full


def devices() -> list:
    """The devices that tests run on: the CPU always, CUDA as well when it is available."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def expect(condition: bool, message: str) -> None:
    """Raise ``AssertionError(message)`` unless ``condition`` holds."""
    if not bool(condition):
        raise AssertionError(message)


def expect_shape(tensor, shape: Sequence[int], what: str, hint: str = "") -> None:
    """Check a tensor's shape, naming the tensor and a likely cause in the message."""
    expect(torch.is_tensor(tensor), f"{what} should be a torch.Tensor, got {type(tensor).__name__}")
    expect(tuple(tensor.shape) == tuple(shape),
           f"{what} has shape {list(tensor.shape)}, expected {list(shape)}. {hint}".strip())


def expect_close(actual, expected, what: str, hint: str = "", rtol: float = 1e-4,
                 atol: float = 1e-5) -> None:
    """Check values against a reference, naming the quantity and a likely mistake."""
    expect(torch.is_tensor(actual), f"{what} should be a torch.Tensor, got {type(actual).__name__}")
    # a subclass could answer every comparison with True (__torch_function__)
    expect(type(actual) in (torch.Tensor, torch.nn.Parameter),
           f"{what} should be a plain torch.Tensor, got the subclass {type(actual).__name__}")
    expected = torch.as_tensor(expected, dtype=actual.dtype, device=actual.device)
    expect_shape(actual, expected.shape, what, hint)
    if not torch.allclose(actual, expected, rtol=rtol, atol=atol):
        worst = (actual - expected).abs().max().item()
        raise AssertionError(f"{what} differs from the reference by up to {worst:.4g}. {hint}".strip())


def expect_distribution(d, batch_shape: Iterable[int], event_shape: Iterable[int], what: str,
                        family: type = None) -> None:
    """Check that ``d`` is a torch distribution with the given batch and event shapes."""
    expect(isinstance(d, td.Distribution),
           f"{what} should return a torch.distributions object, got {type(d).__name__}")
    if family is not None:
        expect(isinstance(d, family), f"{what} should be a {family.__name__}, got {type(d).__name__}")
    batch_shape, event_shape = tuple(batch_shape), tuple(event_shape)
    if tuple(d.batch_shape) == batch_shape + event_shape and tuple(d.event_shape) == ():
        raise AssertionError(
            f"{what} has batch_shape {list(d.batch_shape)} and event_shape [], expected "
            f"{list(batch_shape)} and {list(event_shape)}; did you forget td.Independent "
            f"over the outcome dimensions?")
    expect(tuple(d.batch_shape) == batch_shape,
           f"{what} has batch_shape {list(d.batch_shape)}, expected {list(batch_shape)}; "
           f"does td.Independent reinterpret the right number of dimensions?")
    expect(tuple(d.event_shape) == tuple(event_shape),
           f"{what} has event_shape {list(d.event_shape)}, expected {list(event_shape)}; "
           f"did you forget td.Independent over the outcome dimensions?")
