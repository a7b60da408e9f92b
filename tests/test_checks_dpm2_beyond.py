"""The hidden tests of dpm2_beyond against torch's own continuous Bernoulli.

Do the checks' references agree with torch where torch is exact, and does an answer that
takes torch's ContinuousBernoulli for what the exercise asks earn no points, whether the
checks see the name or not? (The general catalogue of mistakes and variants runs in
``tests/test_checks.py``.)
"""

import math

import pytest
import torch
import torch.distributions as td
import torch.nn.functional as F

from checks_harness import outcomes

from course.checks import dpm2_beyond as checks

END = "    ### END SOLUTION"
NORMALISER_CELLS = ["cb-normaliser-values-tests", "cb-normaliser-stability-tests"]

#: answers built on torch's continuous Bernoulli: (solution cell, code appended to it, cells
#: that must fail, words of the message of each)
TORCH_ANSWERS = {
    "private normaliser": (
        "cb-normaliser-solution",
        "def cb_log_normaliser(logits):\n"
        "    return td.ContinuousBernoulli(logits=logits)._cont_bern_log_norm()",
        NORMALISER_CELLS, "earns no points"),
    "public log_prob at 0": (
        "cb-normaliser-solution",
        "def cb_log_normaliser(logits):\n"
        "    return td.ContinuousBernoulli(logits=logits).log_prob(torch.zeros_like(logits)) "
        "+ F.softplus(logits)",
        NORMALISER_CELLS, "earns no points"),
    "getattr by name": (
        "cb-normaliser-solution",
        "def cb_log_normaliser(logits):\n"
        "    cb = getattr(td, 'ContinuousBernoulli')(logits=logits)\n"
        "    return cb.log_prob(torch.zeros_like(logits)) + F.softplus(logits)",
        NORMALISER_CELLS, "earns no points"),
    "a helper that calls torch": (
        "cb-normaliser-solution",
        "def _helper(logits):\n"
        "    return td.ContinuousBernoulli(logits=logits).log_prob(torch.zeros_like(logits))\n\n\n"
        "def cb_log_normaliser(logits):\n"
        "    return _helper(logits) + F.softplus(logits)",
        NORMALISER_CELLS, "earns no points"),
    # a name the scan cannot read: the clamped values give it away at large logits
    "a name built at run time": (
        "cb-normaliser-solution",
        "def cb_log_normaliser(logits):\n"
        "    cb = getattr(td, ''.join(['Continuous', 'Bernoulli']))(logits=logits)\n"
        "    return cb.log_prob(torch.zeros_like(logits)) + F.softplus(logits)",
        ["cb-normaliser-stability-tests"], "clamps lambda"),
    "log-density from torch": (
        "cb-log-prob-solution",
        "def cb_log_prob(x, logits):\n"
        "    return td.Independent(td.ContinuousBernoulli(logits=logits), 3).log_prob(x)",
        ["cb-log-prob-tests"], "earns no points"),
    "log-density from torch, name built at run time": (
        "cb-log-prob-solution",
        "def cb_log_prob(x, logits):\n"
        "    cb = getattr(td, ''.join(['Continuous', 'Bernoulli']))(logits=logits)\n"
        "    return td.Independent(cb, 3).log_prob(x)",
        ["cb-log-prob-tests"], "differs from the reference"),
}


@pytest.mark.parametrize("name", TORCH_ANSWERS)
def test_an_answer_taken_from_torch_earns_no_points(name):
    """Does this answer, built on torch's ContinuousBernoulli, fail the cells of its exercise
    with a message that says why, while the other exercise keeps its points?"""
    cell, code, failing, words = TORCH_ANSWERS[name]
    got = outcomes("dpm2_beyond", (cell, END, END + "\n\n\n" + code))
    for grade_id, message in got.items():
        if grade_id in failing:
            assert message is not None and words in message, f"{grade_id}: {message}"
        else:
            assert message is None, f"{grade_id} fails too: {message}"


def test_the_reference_normaliser_agrees_with_torch_and_the_formula_in_lambda():
    """Is the checks' log C torch's where torch is exact (float64, |l| <= 15), and the
    paper's 2 artanh(1 - 2 lambda) / (1 - 2 lambda) where that formula is well conditioned?"""
    logits = torch.linspace(-15, 15, 601, dtype=torch.float64)
    torch_value = td.ContinuousBernoulli(logits=logits).log_prob(torch.zeros_like(logits)) \
        + F.softplus(logits)
    torch.testing.assert_close(checks._cb_log_normaliser(logits), torch_value, rtol=1e-9, atol=1e-9)
    lam = torch.sigmoid(torch.linspace(-8, 8, 161, dtype=torch.float64))
    lam = lam[(lam - 0.5).abs() > 1e-3]
    paper = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    torch.testing.assert_close(checks._cb_log_normaliser(torch.logit(lam)), paper, rtol=1e-12,
                               atol=1e-12)
    assert checks._cb_log_normaliser(torch.tensor(0.0, dtype=torch.float64)).item() == math.log(2.0)


def test_the_reference_log_density_is_torchs_for_moderate_logits():
    """Is the checks' log-density of an image torch's Independent(ContinuousBernoulli, 3) where
    torch is exact, one number per image?"""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 5, 2, 3, 3, generator=gen, dtype=torch.float64)
    logits = 3 * torch.randn(3, 5, 2, 3, 3, generator=gen, dtype=torch.float64)
    expected = td.Independent(td.ContinuousBernoulli(logits=logits), 3).log_prob(x)
    torch.testing.assert_close(checks._cb_log_prob_reference(x, logits), expected, rtol=1e-10,
                               atol=1e-8)


def test_torch_plateau_is_what_torch_returns_beyond_its_clamp():
    """Is _TORCH_PLATEAU the float32 log C that torch's ContinuousBernoulli gives for large
    logits (so that the stability check recognises a clamped lambda)?"""
    # log p(0) + softplus(l) loses float32 digits for large positive l (softplus(l) = l): the
    # negative ones and moderate positive ones show torch's normaliser itself
    logits = torch.tensor([20.0, -20.0, 50.0, -50.0, -1e4])
    value = td.ContinuousBernoulli(logits=logits).log_prob(torch.zeros_like(logits)) \
        + F.softplus(logits)
    torch.testing.assert_close(value, torch.full_like(value, checks._TORCH_PLATEAU), rtol=0,
                               atol=1e-5)
