"""The judges of dpm2_beyond against torch's own continuous Bernoulli.

Do the judges' references agree with torch where torch is exact, does an answer that takes
torch's ContinuousBernoulli for what the exercise asks lose the points of the extreme logits
(its clamped lambda), whether its source names torch or not, and does the grader's source scan
(``course.judges.dpm2_beyond.scan_solution``) find the answers that name it? (The general
catalogue of mistakes and variants runs in ``tests/test_checks.py``.)
"""

import math

import pytest
import torch
import torch.distributions as td
import torch.nn.functional as F

from checks_harness import notebook_cells, outcomes

from course.judges import dpm2_beyond as judges

END = "    ### END SOLUTION"
#: built at run time, the name escapes every look at the source
RUNTIME_NAME = "getattr(td, ''.join(['Continuous', 'Bernoulli']))"

#: answers built on torch's continuous Bernoulli: (solution cell, code appended to it, the cell
#: that must fail, words of its message, whether the source scan finds the name)
TORCH_ANSWERS = {
    "private normaliser": (
        "cb-normaliser-solution",
        "def cb_log_normaliser(logits):\n"
        "    return td.ContinuousBernoulli(logits=logits)._cont_bern_log_norm()",
        "cb-normaliser-stability-tests", "clamps lambda", True),
    "public log_prob at 0": (
        "cb-normaliser-solution",
        "def cb_log_normaliser(logits):\n"
        "    return td.ContinuousBernoulli(logits=logits).log_prob(torch.zeros_like(logits)) "
        "+ F.softplus(logits)",
        "cb-normaliser-stability-tests", "clamps lambda", True),
    "getattr by name": (
        "cb-normaliser-solution",
        "def cb_log_normaliser(logits):\n"
        "    cb = getattr(td, 'ContinuousBernoulli')(logits=logits)\n"
        "    return cb.log_prob(torch.zeros_like(logits)) + F.softplus(logits)",
        "cb-normaliser-stability-tests", "clamps lambda", True),
    "a helper that calls torch": (
        "cb-normaliser-solution",
        "def _helper(logits):\n"
        "    return td.ContinuousBernoulli(logits=logits).log_prob(torch.zeros_like(logits))\n\n\n"
        "def cb_log_normaliser(logits):\n"
        "    return _helper(logits) + F.softplus(logits)",
        "cb-normaliser-stability-tests", "clamps lambda", True),
    "imported under another name": (
        "cb-normaliser-solution",
        "from torch.distributions import ContinuousBernoulli as CB\n\n\n"
        "def cb_log_normaliser(logits):\n"
        "    return CB(logits=logits).log_prob(torch.zeros_like(logits)) + F.softplus(logits)",
        "cb-normaliser-stability-tests", "clamps lambda", True),
    "a name built at run time": (
        "cb-normaliser-solution",
        "def cb_log_normaliser(logits):\n"
        f"    cb = {RUNTIME_NAME}(logits=logits)\n"
        "    return cb.log_prob(torch.zeros_like(logits)) + F.softplus(logits)",
        "cb-normaliser-stability-tests", "clamps lambda", False),
    "log-density from torch": (
        "cb-log-prob-solution",
        "def cb_log_prob(x, logits):\n"
        "    return td.Independent(td.ContinuousBernoulli(logits=logits), 3).log_prob(x)",
        "cb-log-prob-tests", "differs from the reference", True),
    "log-density from torch, name built at run time": (
        "cb-log-prob-solution",
        "def cb_log_prob(x, logits):\n"
        f"    cb = {RUNTIME_NAME}(logits=logits)\n"
        "    return td.Independent(cb, 3).log_prob(x)",
        "cb-log-prob-tests", "differs from the reference", False),
}


@pytest.mark.parametrize("name", TORCH_ANSWERS)
def test_an_answer_taken_from_torch_fails_the_extreme_logits_only(name):
    """Does this answer, built on torch's ContinuousBernoulli, fail the judge that looks at the
    extreme logits of its exercise, where torch's clamped lambda is wrong, with a message that
    says why, while every other graded cell keeps its points?"""
    cell, code, failing, words, _ = TORCH_ANSWERS[name]
    got = outcomes("dpm2_beyond", (cell, END, END + "\n\n\n" + code))
    for grade_id, message in got.items():
        if grade_id == failing:
            assert message is not None and words in message, f"{grade_id}: {message}"
        else:
            assert message is None, f"{grade_id} fails too: {message}"


@pytest.mark.parametrize("name", TORCH_ANSWERS)
def test_the_source_scan_finds_the_answers_that_name_torch(name):
    """Does the grader's scan of the solution cell find each answer that names torch's
    continuous Bernoulli (by name, attribute, import or string), with a message that says it
    earns no points, and leave alone the one whose name is built at run time (which the judges
    catch by its values)?"""
    cell, code, _, _, named = TORCH_ANSWERS[name]
    source = notebook_cells("dpm2_beyond")[cell].source.replace(END, END + "\n\n\n" + code)
    found = judges.scan_solution(cell, source)
    if named:
        assert found and all("earns no points" in message for message in found), found
    else:
        assert found == []


def test_the_source_scan_passes_the_reference_solutions():
    """Does the scan find nothing in any solution cell of the reference notebook (whose
    docstrings and comments speak of the continuous Bernoulli), and nothing in other exercises'
    cells, which may use torch's continuous Bernoulli freely?"""
    cells = notebook_cells("dpm2_beyond")
    for grade_id, cell in cells.items():
        if cell.cell_type == "code" and cell.metadata["nbgrader"].get("solution"):
            assert judges.scan_solution(grade_id, cell.source) == [], grade_id
    assert judges.scan_solution("coupling-solution", "td.ContinuousBernoulli") == []


def test_the_reference_normaliser_agrees_with_torch_and_the_formula_in_lambda():
    """Is the judges' log C torch's where torch is exact (float64, |l| <= 15), and the
    paper's 2 artanh(1 - 2 lambda) / (1 - 2 lambda) where that formula is well conditioned?"""
    logits = torch.linspace(-15, 15, 601, dtype=torch.float64)
    torch_value = td.ContinuousBernoulli(logits=logits).log_prob(torch.zeros_like(logits)) \
        + F.softplus(logits)
    torch.testing.assert_close(judges._cb_log_normaliser(logits), torch_value, rtol=1e-9,
                               atol=1e-9)
    lam = torch.sigmoid(torch.linspace(-8, 8, 161, dtype=torch.float64))
    lam = lam[(lam - 0.5).abs() > 1e-3]
    paper = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    torch.testing.assert_close(judges._cb_log_normaliser(torch.logit(lam)), paper, rtol=1e-12,
                               atol=1e-12)
    assert judges._cb_log_normaliser(torch.tensor(0.0, dtype=torch.float64)).item() == \
        math.log(2.0)


def test_the_reference_log_density_is_torchs_for_moderate_logits():
    """Is the judges' log-density of an image torch's Independent(ContinuousBernoulli, 3) where
    torch is exact, one number per image?"""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 5, 2, 3, 3, generator=gen, dtype=torch.float64)
    logits = 3 * torch.randn(3, 5, 2, 3, 3, generator=gen, dtype=torch.float64)
    expected = td.Independent(td.ContinuousBernoulli(logits=logits), 3).log_prob(x)
    torch.testing.assert_close(judges._cb_log_prob_reference(x, logits), expected, rtol=1e-10,
                               atol=1e-8)


def test_torch_plateau_is_what_torch_returns_beyond_its_clamp():
    """Is _TORCH_PLATEAU the float32 log C that torch's ContinuousBernoulli gives for large
    logits (so that the stability judge recognises a clamped lambda)?"""
    # log p(0) + softplus(l) loses float32 digits for large positive l (softplus(l) = l): the
    # negative ones and moderate positive ones show torch's normaliser itself
    logits = torch.tensor([20.0, -20.0, 50.0, -50.0, -1e4])
    value = td.ContinuousBernoulli(logits=logits).log_prob(torch.zeros_like(logits)) \
        + F.softplus(logits)
    torch.testing.assert_close(value, torch.full_like(value, judges._TORCH_PLATEAU), rtol=0,
                               atol=1e-5)
