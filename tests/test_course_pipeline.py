"""The nbgrader pipeline on a temporary course, the way nbgrader's own tests build one.

One module-scoped course folder gets a copy of ``source/``; nbgrader generates the
release, two simulated students submit (the reference solution and the untouched
release) and are graded by the class grader (``course.grade``, two Dask workers, the
kernels sandboxed), and one deliberately wrong implementation per
assignment (``tests/course_mistakes/<assignment>.json``) must get partial credit.
nbgrader runs as a subprocess per command (exit code and error log checked), so that
each command starts from a clean process, as it does for an instructor.
"""

import html
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
from course import pipeline  # noqa: E402

ASSIGNMENTS = pipeline.load_assignments()
NAMES = [a["name"] for a in ASSIGNMENTS]
MISTAKES = REPO / "tests" / "course_mistakes"
SOLUTION_MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def _notebooks(folder: Path, assignment: dict) -> list[Path]:
    return [folder / assignment["name"] / f"{nb}.ipynb" for nb in assignment["notebooks"]]


def _grades(root: Path, assignment: dict, student: str) -> dict:
    """``{grade_id: (score, max_score)}`` of the autograded cells of one submission."""
    from nbgrader.api import Gradebook

    grades = {}
    with Gradebook(f"sqlite:///{root / 'course' / 'gradebook.db'}") as gb:
        sub = gb.find_submission(assignment["name"], student)
        for nb in sub.notebooks:
            for grade in nb.grades:
                if grade.cell.cell_type == "code":
                    grades[grade.name] = (grade.score, grade.max_score)
    return grades


@pytest.fixture(scope="module")
def course_dir(tmp_path_factory) -> Path:
    """A course folder with source/, its release, and both simulated students autograded."""
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(REPO / "source", root / "source")
    (root / "course").mkdir()
    pipeline.generate_release(root, ASSIGNMENTS)
    for student, origin in pipeline.STUDENTS.items():
        pipeline.submit(root, ASSIGNMENTS, student, origin)
    _grade(root, ASSIGNMENTS, list(pipeline.STUDENTS), workers=2)
    return root


def _grade(root: Path, assignments: list, students: list, workers: int = 1) -> None:
    """Grade as the instructor does, with the class grader: sandboxed when bubblewrap runs
    here, else (a machine without it) explicitly unsandboxed, since this is our own code."""
    from course.grade import grade_class
    from course.sandbox import SandboxUnavailable, check_sandbox
    from course.submission import Limits

    try:
        check_sandbox()
        limits = Limits()
    except SandboxUnavailable:
        limits = Limits(sandbox=False)
    results = grade_class(root, assignments, students, limits=limits, workers=workers,
                          progress=False)
    assert all(r.status == "graded" for r in results), [r.reason_text() for r in results]


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=NAMES)
def test_committed_release_is_generated_from_source(assignment, course_dir):
    """Is the committed release/ exactly what nbgrader generates from source/ now?"""
    for generated, committed in zip(_notebooks(course_dir / "release", assignment),
                                    _notebooks(REPO / "release", assignment)):
        assert committed.exists(), f"{committed} is missing: run `make main` and commit release/"
        a, b = nbformat.read(generated, 4), nbformat.read(committed, 4)
        assert [c.source for c in a.cells] == [c.source for c in b.cells], \
            f"{committed} differs from source/: regenerate it (make main) and commit release/"
        assert [c.metadata for c in a.cells] == [c.metadata for c in b.cells]


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=NAMES)
def test_release_holds_no_solution_and_no_hidden_test(assignment, course_dir):
    """Does the student version hide every solution and every hidden test of the source?"""
    for path in _notebooks(course_dir / "release", assignment):
        text = path.read_text()
        for marker in SOLUTION_MARKERS:
            assert marker not in text, f"{path.name} contains {marker!r}"
    for release, source in zip(_notebooks(course_dir / "release", assignment),
                               _notebooks(REPO / "source", assignment)):
        hidden = _region_lines(nbformat.read(source, 4))
        shown = nbformat.read(release, 4)
        leaked = [line for line in hidden if any(line in c.source for c in shown.cells)]
        assert not leaked, f"hidden test lines leaked into {release.name}: {leaked[:3]}"


def _region_lines(nb, regions=("SOLUTION", "HIDDEN TESTS")) -> list[str]:
    """Distinctive code lines (over 25 characters) that occur only inside the given regions.

    Text that the notebook also shows outside those regions, in code or prose (shared
    set-up such as ``torch.manual_seed(SEED)``), is not a secret and is left out.
    """
    inside_lines, outside_lines = [], set()
    for cell in nb.cells:
        inside = False
        for line in cell.source.splitlines():
            s = line.strip()
            if any(s == f"### BEGIN {r}" for r in regions):
                inside = True
            elif any(s == f"### END {r}" for r in regions):
                inside = False
            elif inside:
                inside_lines.append(s)
            else:
                outside_lines.add(s)
    shown = "\n".join(outside_lines)
    return [s for s in inside_lines if len(s) > 25 and not s.startswith("#") and s not in shown]


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=NAMES)
def test_reference_solution_gets_full_marks(assignment, course_dir):
    """Does the reference solution get every autograded point, with no cell raising an error?"""
    grades = _grades(course_dir, assignment, "reference-solution")
    assert grades, "no autograded cells found"
    lost = {k: v for k, v in grades.items() if v[0] != v[1]}
    assert not lost, f"the reference solution lost points: {lost}"
    for path in _notebooks(course_dir / "course" / "autograded" / "reference-solution", assignment):
        for cell in nbformat.read(path, 4).cells:
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            assert not errors, f"{path.name}: a cell raised {errors[0]['ename']}: " \
                               f"{errors[0]['evalue']}\n{cell.source[:300]}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=NAMES)
def test_untouched_release_gets_zero_without_crashing(assignment, course_dir):
    """Does the untouched release score 0 on every autograded cell, with every test cell run?"""
    grades = _grades(course_dir, assignment, "untouched-release")
    assert grades and all(score == 0 for score, _ in grades.values()), grades
    for path in _notebooks(course_dir / "course" / "autograded" / "untouched-release", assignment):
        for cell in nbformat.read(path, 4).cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade") and cell.cell_type == "code":
                assert cell.outputs, f"test cell {meta['grade_id']} did not run"


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=NAMES)
def test_feedback_shows_messages_but_no_hidden_code(assignment, course_dir):
    """Does the feedback for a failing student keep the hidden tests' code out of the HTML?"""
    pipeline.nbgrader(["generate_feedback", assignment["name"], "--student",
                       "untouched-release", "--force"], course_dir)
    source = nbformat.read(_notebooks(REPO / "source", assignment)[0], 4)
    hidden = _region_lines(source, regions=("HIDDEN TESTS",))
    pages = list((course_dir / "course" / "feedback" / "untouched-release"
                  / assignment["name"]).glob("*.html"))
    assert pages, "no feedback page was written"
    for page in pages:
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
        leaked = [line for line in hidden if line in text]
        assert not leaked, f"hidden test code in {page.name}: {leaked[:3]}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=NAMES)
def test_a_real_mistake_gets_partial_credit(assignment, course_dir):
    """Does a plausible wrong implementation lose exactly the points of the checks it breaks?"""
    spec = json.loads((MISTAKES / f"{assignment['name']}.json").read_text())
    student = "mistaken-student"
    target = course_dir / "course" / "submitted" / student / assignment["name"]
    target.mkdir(parents=True, exist_ok=True)
    applied = 0
    for path in _notebooks(REPO / "source", assignment):
        nb = nbformat.read(path, 4)
        for cell in nb.cells:
            if cell.metadata.get("nbgrader", {}).get("grade_id") == spec["cell"]:
                old, new = spec["replace"]
                assert old in cell.source, f"{spec['cell']} no longer contains {old!r}"
                cell.source = cell.source.replace(old, new)
                applied += 1
        nbformat.write(nb, target / path.name)
    assert applied == 1, f"grade id {spec['cell']} not found once"
    _grade(course_dir, [assignment], [student])
    grades = _grades(course_dir, assignment, student)
    total, best = sum(s for s, _ in grades.values()), sum(m for _, m in grades.values())
    assert 0 < total < best, f"{spec['description']}: {total} / {best}"
    for cell in spec["loses"]:
        assert grades[cell][0] == 0, f"{cell} should fail for: {spec['description']}"
    for cell in spec["keeps"]:
        assert grades[cell][0] == grades[cell][1], f"{cell} should still pass: {spec['description']}"


def test_a_correct_solution_that_warns_keeps_full_marks(course_dir):
    """Does a correct answer whose code emits a UserWarning at every call (as a deprecated but
    valid library call would) keep every autograded point? nbgrader on its own scores any
    test cell with stderr output 0. In a judged assignment the judge writes the test cell's
    outputs (what the kernel prints while it is probed is dropped); where the hidden tests
    still run in the kernel, the course's WarningsAreNotFailures preprocessor turns the
    warning into stdout (the next test)."""
    assignment = next(a for a in ASSIGNMENTS if a["name"] == "vae_basics")
    student = "warning-student"
    target = course_dir / "course" / "submitted" / student / assignment["name"]
    target.mkdir(parents=True, exist_ok=True)
    old = "return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)"
    new = ("import warnings\n"  # not __import__, which the guard's static scan rejects
           "    warnings.simplefilter('always')\n"
           "    warnings.warn('a harmless warning from correct code', UserWarning)\n"
           "    " + old)
    for path in _notebooks(REPO / "source", assignment):
        nb = nbformat.read(path, 4)
        [cell] = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "kl-solution"]
        assert old in cell.source
        cell.source = cell.source.replace(old, new)
        nbformat.write(nb, target / path.name)
    _grade(course_dir, [assignment], [student])
    autograded = course_dir / "course" / "autograded" / student / assignment["name"]
    shown = "\n".join(json.dumps(cell.get("outputs", []))
                      for path in _notebooks(autograded.parent, assignment)
                      for cell in nbformat.read(path, 4).cells)
    assert "a harmless warning" in shown, "the warning never ran: the test would catch nothing"
    grades = _grades(course_dir, assignment, student)
    lost = {cell: score for cell, (score, best) in grades.items() if score != best}
    assert not lost, f"a warning cost points in {lost}"


def test_stderr_of_an_autograded_test_cell_becomes_stdout():
    """Does WarningsAreNotFailures turn the stderr text of an autograded test cell into stdout
    (so that nbgrader does not score it 0), and leave other cells' stderr alone?"""
    from course.grading_plugins import WarningsAreNotFailures

    warning = nbformat.v4.new_output("stream", name="stderr", text="UserWarning: harmless\n")
    test = nbformat.v4.new_code_cell("pass", outputs=[warning], metadata={"nbgrader": {
        "grade": True, "solution": False, "locked": True, "grade_id": "t", "points": 1}})
    other = nbformat.v4.new_code_cell("pass", outputs=[dict(warning)])
    nb = nbformat.v4.new_notebook(cells=[test, other])
    nb, _ = WarningsAreNotFailures().preprocess(nb, {})
    assert nb.cells[0].outputs[0]["name"] == "stdout"
    assert nb.cells[1].outputs[0]["name"] == "stderr"


def test_a_broken_nbgrader_config_stops_the_pipeline(tmp_path, monkeypatch):
    """When nbgrader_config.py raises, does pipeline.nbgrader fail before nbgrader writes
    anything (nbgrader's default is to log the error and go on with its defaults, writing
    release/ and gradebook.db into the working folder)?"""
    (tmp_path / "nbgrader_config.py").write_text("raise RuntimeError('a typo in the config')\n")
    notebook = tmp_path / "source" / "demo" / "demo.ipynb"
    notebook.parent.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), notebook)
    monkeypatch.setattr(pipeline, "REPO", tmp_path)
    with pytest.raises(RuntimeError, match="a typo in the config"):
        pipeline.nbgrader(["generate_assignment", "demo", "--force"], tmp_path)
    assert not (tmp_path / "gradebook.db").exists()
    assert not (tmp_path / "release").exists()
