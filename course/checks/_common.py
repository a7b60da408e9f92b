"""Helpers shared by the checks of several graded cells.

``python -m course.sync_checks`` copies the source of every helper a check uses into the
check's hidden region, so each helper must be self-contained: it may use the imports of
this module and the other helpers here, nothing else.
"""

import contextlib

import torch
import torch.distributions as td

from dpm_core import PPCA
from dpm_core.grading import expect_distribution

__all__ = ["cpd_distribution", "expect_batch_and_event", "expect_raises", "known_mistake",
           "pca_problem",
           "references_in", "seeded_ppca"]


def cpd_distribution(net, inputs, name: str):
    """Call a CPD net on ``inputs``, turning torch's checks of the distribution it builds into a
    hint.

    Raises:
        AssertionError: torch rejected the distribution's parameters (a scale that is not
            positive) or the shapes of a mixture's parts.
    """
    try:
        return net(inputs)
    except ValueError as error:
        hint = ("Do the components have batch_shape inputs.shape[:-1] + (C,), with td.Independent "
                "over all outcome dimensions?" if "batch_shape" in str(error) else
                "Do the scales go through a softplus?")
        raise AssertionError(f"{name} built an invalid distribution ({error}). {hint}") from None


def expect_batch_and_event(d, batch_shape, event_shape, what):
    """Check a distribution's batch and event shapes.

    When the event dimensions ended up in the batch shape, the message says so.

    Raises:
        AssertionError: ``d`` is no distribution, or has other shapes.
    """
    if isinstance(d, td.Distribution):
        got = (tuple(d.batch_shape), tuple(d.event_shape))
        if got != (tuple(batch_shape), tuple(event_shape)) and \
                got[0] + got[1] == tuple(batch_shape) + tuple(event_shape):
            raise AssertionError(
                f"{what} has batch_shape {list(got[0])} and event_shape {list(got[1])}, expected "
                f"{list(batch_shape)} and {list(event_shape)}: did you forget td.Independent, or "
                f"reinterpret the wrong number of dimensions as event dimensions?")
    expect_distribution(d, batch_shape, event_shape, what)


def expect_raises(error: type, call, message: str) -> None:
    """Check that ``call()`` raises ``error``.

    Raises:
        AssertionError: with ``message``, when ``call()`` returns instead.
    """
    try:
        call()
    except error:
        return
    raise AssertionError(message)


def known_mistake(got: torch.Tensor, known: list, rtol: float, atol: float,
                  default: str = None) -> str:
    """The message of the first known mistake whose value matches ``got``.

    Args:
        got: the student's value.
        known: ``(value, message)`` pairs: what a known mistake computes, and what to tell.
        rtol, atol: the tolerance of a match (looser than the exact comparison that failed).
        default: the message when no known mistake matches.
    """
    for value, message in known:
        if torch.allclose(got, value, rtol=rtol, atol=atol):
            return message
    return default


def pca_problem(device):
    """400 points in 6-D with distinct variances along random axes, far from the origin."""
    gen = torch.Generator().manual_seed(3)
    basis, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    stds = torch.tensor([3.0, 2.0, 1.2, 0.7, 0.4, 0.2], dtype=torch.float64)
    offset = 8.0 * torch.randn(6, generator=gen, dtype=torch.float64)
    return ((torch.randn(400, 6, generator=gen, dtype=torch.float64) * stds) @ basis.T
            + offset).to(device)


@contextlib.contextmanager
def references_in(ns: dict, **references):
    """Put reference implementations into the notebook's namespace while a check runs.

    The student's downstream code looks its upstream functions up in ``ns`` when it runs, so
    it then calls the references, and an upstream mistake costs points once. The student's
    objects are restored afterwards, whatever happens.
    """
    saved = {name: ns[name] for name in references if name in ns}
    ns.update(references)
    try:
        yield
    finally:
        for name in references:
            if name in saved:
                ns[name] = saved[name]
            else:
                ns.pop(name, None)


def seeded_ppca(seed: int = 0, orthogonal: bool = False, data_size: int = 6, latent_size: int = 2,
               sigma: float = 0.7) -> PPCA:
    """The course's PPCA test bed: a float64 dpm_core.PPCA on the CPU with fixed random parameters.

    With orthogonal=True the columns of W are orthogonal (lengths 1.5 to 3), so that the exact
    posterior has a diagonal covariance; otherwise W is a plain Gaussian matrix. b is Gaussian.
    A seed gives the same model as the notebooks' own test beds (cell ppca-testbed of
    dpm2_inference, cell fixtures of importance_sampling).
    """
    gen = torch.Generator().manual_seed(seed)
    model = PPCA(data_size, latent_size, sigma).double()
    W = torch.randn(data_size, latent_size, generator=gen, dtype=torch.float64)
    if orthogonal:
        W, _ = torch.linalg.qr(W)
        W = W * torch.linspace(1.5, 3.0, latent_size, dtype=torch.float64)
    with torch.no_grad():
        model.cpd_net.W.copy_(W)
        model.cpd_net.b.copy_(torch.randn(data_size, generator=gen, dtype=torch.float64))
    return model
