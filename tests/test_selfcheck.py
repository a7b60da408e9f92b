"""dpm_core.selfcheck: one line per exercise, in the student's kernel and from a shell.

A small notebook holds three exercises (one right, one wrong, one not written), a graded
cell of hidden tests that would leave a marker file if it ever ran, and two written answers
(one filled, one still nbgrader's stub).
"""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from dpm_core.selfcheck import (check, main, read_items, run_in_namespace, run_notebook, select,
                                summary)

REPO = Path(__file__).resolve().parents[1]


def _cell(kind, source, grade_id=None, **flags):
    cell = (nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell)(source)
    if grade_id:
        cell.metadata["nbgrader"] = {"grade_id": grade_id, "solution": False, "grade": False,
                                     "locked": False, "schema_version": 3, **flags}
    return cell


SOLUTIONS = {
    "double-solution": "def double(x):\n    return 2 * x",
    "square-solution": "def square(x):\n    return x + x",
    "cube-solution": "def cube(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()",
}


def small_notebook() -> nbformat.NotebookNode:
    cells = [_cell("code", "from dpm_core.selfcheck import check, check_all", "setup", locked=True)]
    for name, body in SOLUTIONS.items():
        exercise = name[:-len("-solution")]
        cells.append(_cell("code", body, name, solution=True))
        right = {"double": "double(2) == 4", "square": "square(3) == 9", "cube": "cube(2) == 8"}
        cells.append(_cell("code", f'print("checking")\nassert {right[exercise]}, '
                                   f'"{exercise} is wrong: {right[exercise]} does not hold"',
                           f"{exercise}-tests-self-checks", locked=True))
        cells.append(_cell("code", "open('HIDDEN_TESTS_RAN', 'w').write('x')\nassert False",
                           f"{exercise}-tests", grade=True, points=1, locked=True))
    cells += [
        _cell("markdown", "## Written part\n\n**Question 1 (2 points).** Why is the sky blue?"),
        _cell("markdown", "Rayleigh scattering.", "why-blue", solution=True, grade=True, points=2),
        _cell("markdown", "**Question 2 (1 point).** Why is grass green?"),
        _cell("markdown", "YOUR ANSWER HERE", "why-green", solution=True, grade=True, points=1),
    ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    return notebook


@pytest.fixture(autouse=True)
def _not_grading(monkeypatch):
    """A student's session: no NBGRADER_EXECUTION (other tests of the run may have set it)."""
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)


#: what a check of the whole small notebook prints before its tally, in order
EVERY_LINE = [
    "✓ double",
    "✗ square: square is wrong: square(3) == 9 does not hold",
    "· cube: not written yet (cube-solution still raises NotImplementedError)",
    "✎ why-blue (Question 1 (2 points)): to be graded by hand",
    "? why-green (Question 2 (1 point)): missing",
]


@pytest.fixture
def notebook_path(tmp_path) -> Path:
    path = tmp_path / "small.ipynb"
    nbformat.write(small_notebook(), str(path))
    return path


def test_read_items_finds_exercises_and_written_answers_in_order():
    items = read_items(small_notebook())
    assert [(i.name, i.kind) for i in items] == [
        ("double", "code"), ("square", "code"), ("cube", "code"),
        ("why-blue", "written"), ("why-green", "written")]
    assert [i.solution for i in items[:3]] == ["double-solution", "square-solution", "cube-solution"]
    assert (items[3].title, items[3].filled) == ("Question 1 (2 points)", True)
    assert (items[4].title, items[4].filled) == ("Question 2 (1 point)", False)
    assert all("HIDDEN_TESTS_RAN" not in i.source for i in items)


def test_select_by_name_prefix_and_solution_and_unknown_names():
    items = read_items(small_notebook())
    assert [i.name for i in select(items, ["why"])] == ["why-blue", "why-green"]
    assert [i.name for i in select(items, ["square-solution", "double"])] == ["double", "square"]
    assert len(select(items, [])) == 5
    with pytest.raises(ValueError, match=r"'kl'.*double, square, cube, why-blue, why-green"):
        select(items, ["kl"])


def test_right_wrong_and_empty_exercises_in_a_namespace(capsys):
    namespace = {}
    for body in SOLUTIONS.values():
        exec(body, namespace)
    outcomes = run_in_namespace(read_items(small_notebook()), namespace)
    assert [o.status for o in outcomes] == ["pass", "fail", "todo", "hand", "missing"]
    lines = summary(outcomes).splitlines()
    assert lines[:5] == EVERY_LINE
    assert lines[5] == "1 of 3 pass their self-checks, 1 of 2 written answers filled (hidden tests decide the points)"
    assert "checking" not in capsys.readouterr().out  # what a self-check prints is dropped


def test_a_solution_cell_not_run_yet_is_named():
    outcome, = run_in_namespace(select(read_items(small_notebook()), ["double"]), {})
    assert outcome.status == "fail"
    assert "'double' is not defined: run the cells above first" in outcome.message


def test_command_runs_a_fresh_kernel_without_hidden_tests(notebook_path, capsys):
    before = notebook_path.read_bytes()
    assert main([str(notebook_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == EVERY_LINE
    assert not (notebook_path.parent / "HIDDEN_TESTS_RAN").exists()
    assert notebook_path.read_bytes() == before
    assert main([str(notebook_path), "double"]) == 0


def test_command_names_an_unknown_exercise(notebook_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(notebook_path), "kl"])
    assert stop.value.code == 2
    assert "no exercise or written answer is called 'kl'" in capsys.readouterr().err


def _run_in_kernel(notebook_path, last_cell: str, **env) -> str:
    """Run the small notebook with one more cell in a kernel told it runs ``notebook_path``."""
    notebook = nbformat.read(str(notebook_path), as_version=4)
    notebook.cells = [c for c in notebook.cells if c.cell_type == "code"
                      and not c.metadata["nbgrader"]["grade_id"].endswith("-tests")]
    notebook.cells.append(nbformat.v4.new_code_cell(last_cell))
    kernel_env = {k: v for k, v in os.environ.items() if k != "NBGRADER_EXECUTION"}
    kernel_env.update(JPY_SESSION_NAME=notebook_path.name, **env)
    NotebookClient(notebook, timeout=60, allow_errors=True, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook_path.parent)}}).execute(env=kernel_env)
    return "".join(o.get("text", "") for o in notebook.cells[-1].outputs)


def test_check_in_the_students_kernel(notebook_path):
    out = _run_in_kernel(notebook_path, 'check("double", "square")\ncheck("why")\ncheck_all()')
    lines = out.splitlines()
    assert lines[:2] == ["✓ double", "✗ square: square is wrong: square(3) == 9 does not hold"]
    assert "? why-green (Question 2 (1 point)): missing" in lines
    assert lines[-6:-1] == EVERY_LINE
    assert not (notebook_path.parent / "HIDDEN_TESTS_RAN").exists()


def test_check_does_nothing_while_nbgrader_grades(notebook_path):
    out = _run_in_kernel(notebook_path, "check_all()", NBGRADER_EXECUTION="autograde")
    assert out.strip() == "check() does nothing while the notebook is graded: the hidden tests decide."


def test_check_outside_a_kernel_says_where_it_runs(monkeypatch):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    with pytest.raises(RuntimeError, match="python -m dpm_core.selfcheck"):
        check("kl")


def test_every_notebook_offers_check_where_an_exercise_ends():
    """The setup cell imports check and check_all; the first self-check cell after each
    solution cell says how to call check for it; the header explains both ways."""
    header = json.loads((REPO / "course" / "header.ipynb").read_text())
    assert "check_all()" in "".join(header["cells"][0]["source"])
    assert "python -m dpm_core.selfcheck" in "".join(header["cells"][0]["source"])
    for path in sorted((REPO / "source").glob("*/*.ipynb")):
        notebook = nbformat.read(str(path), as_version=4)
        setup = next(c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "setup")
        assert "from dpm_core.selfcheck import check, check_all" in setup.source, path.name
        items = [i for i in read_items(notebook) if i.kind == "code"]
        firsts = {i.solution: i for i in reversed(items)}
        for solution, item in firsts.items():
            assert f'check("{solution[:-len("-solution")]}")' in item.source, (path.name, item.name)


def test_check_of_the_reference_solution_of_vae_basics(capsys):
    """The source notebook's own solutions pass the self-checks of the KL exercise."""
    assert main([str(REPO / "source" / "vae_basics" / "vae_basics.ipynb"), "kl"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["✎ kl-derivation (Exercise 1 (written, 3 points): the KL term in closed form): "
                       "to be graded by hand", "✓ kl-formula", "✓ kl-reduction"]


def test_the_helper_refuses_to_run_while_nbgrader_grades(monkeypatch):
    """The helpers run code: while a notebook is graded they run nothing at all."""
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(RuntimeError, match="do not run while the notebook is graded"):
        run_in_namespace(read_items(small_notebook()), {})
    with pytest.raises(RuntimeError, match="do not run while the notebook is graded"):
        run_notebook(REPO / "source" / "vae_basics" / "vae_basics.ipynb")


def test_check_flags_the_variance_used_as_the_standard_deviation(tmp_path, capsys):
    """The most common mistake of vae_basics, ``mu + eps * logvar.exp()`` (the variance as
    the standard deviation), which the hidden tests mark 0: does ``check("reparametrise")``
    say ✗ and name it, instead of the ✓ it once printed?"""
    nb = nbformat.read(REPO / "source" / "vae_basics" / "vae_basics.ipynb", as_version=4)
    cell, = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id")
             == "reparametrise-solution"]
    right = "return mu + eps * torch.exp(0.5 * logvar)"
    assert cell.source.count(right) == 1
    cell.source = cell.source.replace(right, "return mu + eps * logvar.exp()")
    path = tmp_path / "vae_basics.ipynb"
    nbformat.write(nb, path)
    assert main([str(path), "reparametrise"]) != 0
    out = capsys.readouterr().out
    assert "✗ reparametrise-distribution" in out and "variance" in out, out
