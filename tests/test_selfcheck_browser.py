"""What ``check`` prints, as a student sees it in JupyterLab; saves ``docs/check.png``.

A copy of the released ``vae_basics`` notebook gets a student's state of work: the KL
exercise solved (the source's solution), ``reparametrise`` wrong (it returns the mean, no
noise), ``loss_func`` not started, the written KL derivation filled in. Its setup and
solution cells and then ``check("kl")`` and ``check_all()`` run in a kernel that Jupyter's
way tells which notebook it runs (``JPY_SESSION_NAME``). The two check cells, outputs and
all, go into a small notebook that JupyterLab shows in Chromium; the test reads the lines
on the page and saves the picture for the README. Skipped without Chromium or playwright.
"""

from __future__ import annotations

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

from browser import REPO, chromium_page, jupyter_server, needs_chromium

pytestmark = needs_chromium

SCREENSHOT = REPO / "docs" / "check.png"
WRONG_REPARAMETRISE = 'def reparametrise(mu, logvar):\n    """Draw z ~ N(mu, diag(exp(logvar))) (forgot the noise)."""\n    return mu\n'
CHECKS = ['check("kl")', "check_all()"]


def _grade_id(cell) -> str:
    return cell.metadata.get("nbgrader", {}).get("grade_id", "")


def _solution_code(source: str) -> str:
    """A source notebook's solution without nbgrader's markers, as a student would write it."""
    return "\n".join(line for line in source.splitlines()
                     if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION"))


def students_notebook(path) -> nbformat.NotebookNode:
    """The release of vae_basics with a student's partial work, written to ``path``."""
    release = nbformat.read(str(REPO / "release" / "vae_basics" / "vae_basics.ipynb"), as_version=4)
    source = nbformat.read(str(REPO / "source" / "vae_basics" / "vae_basics.ipynb"), as_version=4)
    solved = {_grade_id(c): c.source for c in source.cells}
    for cell in release.cells:
        if _grade_id(cell) == "kl-solution":
            cell.source = _solution_code(solved["kl-solution"])
        elif _grade_id(cell) == "reparametrise-solution":
            cell.source = WRONG_REPARAMETRISE
        elif _grade_id(cell) == "kl-derivation":
            cell.source = "With $\\sigma^2 = e^{\\text{logvar}}$, the expectation of $\\log q - \\log p$ ..."
    nbformat.write(release, str(path))
    return release


def test_check_output_in_jupyterlab(tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    notebook = students_notebook(root / "vae_basics.ipynb")
    run = [c for c in notebook.cells if _grade_id(c) in
           ("setup", "kl-solution", "kl-full-solution", "reparametrise-solution", "loss-solution")]
    run = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(c.source) for c in run]
        + [nbformat.v4.new_code_cell(code) for code in CHECKS], metadata=notebook.metadata)
    env = {k: v for k, v in os.environ.items() if k != "NBGRADER_EXECUTION"}
    env["JPY_SESSION_NAME"] = "vae_basics.ipynb"
    NotebookClient(run, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(root)}}).execute(env=env)
    shown = run.cells[-len(CHECKS):]
    text = "".join(o.get("text", "") for c in shown for o in c.outputs)
    assert "✓ kl-formula\n✓ kl-reduction" in text
    assert "✗ reparametrise-distribution: two calls returned the same z" in text, text
    assert "· loss-terms: not written yet (loss-solution still raises NotImplementedError)" in text
    assert "· kl-full-value: not written yet (kl-full-solution still raises NotImplementedError)" in text
    assert "✎ kl-derivation (Exercise 1 (written, 3 points): the KL term in closed form): to be graded by hand" in text
    assert "? question-elbo (Question 3 (2 points)): missing" in text

    for cell in shown:
        cell.execution_count = None
    display = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell(
            "**Where am I?** `check` runs the self-checks of the exercises you name, "
            "`check_all()` every exercise's, in your kernel: one line each.")] + shown,
        metadata=notebook.metadata)
    nbformat.write(display, str(root / "check.ipynb"))
    with jupyter_server(root, timeout=90) as (url, token), \
            chromium_page(width=1250, height=560, timeout=60) as page:
        page.goto(f"{url}/lab/tree/check.ipynb?token={token}")
        # wait for check_all()'s last line: JupyterLab renders cells as they scroll into view,
        # and a cell's printed lines may arrive as several stream outputs, several elements
        summary = "2 of 8 pass their self-checks, 1 of 6"
        page.get_by_text(summary).wait_for()
        cells = page.locator(".jp-Notebook .jp-CodeCell")

        def printed(cell):
            return "\n".join(cell.locator(".jp-OutputArea-output").all_inner_texts())

        assert "✓ kl-formula" in printed(cells.first)
        lines = [line for line in printed(cells.last).splitlines() if line.strip()]
        assert any(line.startswith("✎ kl-derivation") for line in lines), lines
        assert lines[-1].startswith(summary), lines
        page.locator(".jp-Notebook").screenshot(path=str(SCREENSHOT))
