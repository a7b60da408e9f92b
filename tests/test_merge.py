"""The coordinator's merge (course/merge.py) writes what nbgrader's own API would write.

Each test builds a small gradebook with nbgrader's API (two assignments; notebooks with
test cells, written answers, answers without points and a task cell), then merges synthetic
:class:`course.submission.Result` s. The reference is the straightforward way, one result at
a time through nbgrader's ``update_or_create_student`` / ``update_or_create_submission`` and
the ORM objects (what ``merge_result`` did before it recorded batches); the gradebooks are
compared through nbgrader's reads (grades, comments, scores, flags, timestamps) and their
row counts.
"""

import json
import os
import shutil
import sqlite3
import sys
import warnings
from pathlib import Path

import pytest
from nbgrader.api import Gradebook, MissingEntry
from sqlalchemy.exc import SAWarning

from course.merge import GRADING_RECORD, grading_record, merge_result, merge_results
from course.submission import Result

#: assignment -> notebook -> grade cells (name, kind, points), solution cells, task cells
LAYOUT = {
    "hw1": {"nb_a": ([("a-code", "code", 2.0), ("a-written", "markdown", 3.0)],
                     ["a-written", "a-answer"], [("a-task", 1.0)]),
            "nb_b": ([("b-code", "code", 4.0)], ["b-answer"], [])},
    "hw2": {"nb_c": ([("c-code", "code", 1.0), ("c-written", "markdown", 2.0)],
                     ["c-written"], [])},
}


@pytest.fixture(scope="module")
def empty(tmp_path_factory) -> Path:
    """A gradebook that knows LAYOUT and no student (made once: nbgrader runs ``alembic``)."""
    path = tmp_path_factory.mktemp("merge") / "empty.db"
    with pytest.MonkeyPatch.context() as patch:
        # nbgrader stamps a new gradebook with its ``alembic`` command, from the interpreter's
        # folder
        patch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
        _fill(f"sqlite:///{path}")
    return path


def _fill(url: str) -> None:
    """LAYOUT into the gradebook at ``url``, with nbgrader's API."""
    with Gradebook(url) as gb:
        for assignment, notebooks in LAYOUT.items():
            gb.add_assignment(assignment)
            for nb, (grades, solutions, tasks) in notebooks.items():
                gb.add_notebook(nb, assignment)
                for name, kind, points in grades:
                    gb.add_grade_cell(name, nb, assignment, max_score=points, cell_type=kind)
                for name in solutions:
                    gb.add_solution_cell(name, nb, assignment)
                for name, points in tasks:
                    gb.add_task_cell(name, nb, assignment, max_score=points, cell_type="markdown")


def _result(assignment: str, student: str, code_score: float, comment: str = "No response.",
            timestamp: str = "2026-12-01 12:00:00") -> Result:
    """A graded result: every test cell ``code_score`` (at most its points), every written
    answer pending, ``comment`` on the first solution cell of each notebook."""
    result = Result(assignment, student, timestamp=timestamp, seconds=5.0)
    for nb, (grades, solutions, _) in LAYOUT[assignment].items():
        for name, kind, points in grades:
            code = kind == "code"
            result.grades[(nb, name)] = ((min(code_score, points) if code else None), points,
                                         not code, code)
        result.comments[(nb, solutions[0])] = comment
        result.notebooks[nb] = json.dumps({"cells": [], "student": student}).encode()
    return result


def _failed(assignment: str, student: str) -> Result:
    """The grader itself failed: no grades, no comments, empty notebooks."""
    return Result(assignment, student, status="error", reasons={"(grader)": "worker died"},
                  notebooks={nb: b"" for nb in LAYOUT[assignment]})


def _reference_merge(gb: Gradebook, result: Result) -> None:
    """One result through nbgrader's update_or_create_* and its ORM objects."""
    gb.update_or_create_student(result.student)
    kwargs = {"timestamp": result.timestamp} if result.timestamp else {}
    with warnings.catch_warnings():
        # nbgrader's add_submission trips SQLAlchemy 2's autoflush warnings; harmless
        warnings.simplefilter("ignore", category=SAWarning)
        submission = gb.update_or_create_submission(result.assignment, result.student,
                                                    **kwargs)
    for notebook in submission.notebooks:
        for grade in notebook.grades:
            score, _, pending, _ = result.grades.get((notebook.name, grade.name),
                                                     (0.0, None, False, True))
            grade.auto_score = score
            grade.needs_manual_grade = grade.manual_score is not None or pending or score is None
        for comment in notebook.comments:
            comment.auto_comment = result.comments.get((notebook.name, comment.name))
    gb.db.commit()


def _grade_by_hand(url: str) -> None:
    """A human gives bob's written answer of hw1 2 points and a comment."""
    with Gradebook(url) as gb:
        gb.find_grade("a-written", "nb_a", "hw1", "bob").manual_score = 2.0
        gb.find_comment("a-answer", "nb_a", "hw1", "bob").manual_comment = "well argued"
        gb.db.commit()


#: the scenario, in the batches that finished together: new submissions (one the grader
#: failed on), then a human's grade, then re-grades (one without a timestamp, one twice in a
#: batch) and a new student, graded twice in the batch
FIRST = [_result("hw1", "alice", 2.0), _result("hw1", "bob", 0.0), _failed("hw1", "carol"),
         _result("hw2", "alice", 1.0)]
SECOND = [_result("hw1", "bob", 1.0, comment="", timestamp="2026-12-02 09:30:00"),
          _result("hw1", "alice", 0.0, timestamp=None), _result("hw2", "dave", 1.0),
          _result("hw1", "alice", 4.0, comment="second", timestamp="2026-12-03 08:00:00"),
          _result("hw2", "dave", 0.0, timestamp=None)]


def _contents(url: str) -> dict:
    """Everything nbgrader's reads show of the gradebook, by names (ids are random)."""
    out = {}
    with Gradebook(url) as gb:
        out["students"] = sorted((s.id, s.first_name, s.last_name, s.email, s.lms_user_id,
                                  s.score) for s in gb.students)
        for assignment in gb.assignments:
            for sub in assignment.submissions:
                out[(assignment.name, sub.student.id)] = {
                    "submission": (sub.timestamp, sub.extension, sub.score, sub.max_score,
                                   sub.needs_manual_grade, sub.code_score, sub.written_score,
                                   sub.task_score),
                    "notebooks": {nb.name: (nb.flagged, nb.late_submission_penalty, nb.score,
                                            nb.needs_manual_grade, nb.failed_tests)
                                  for nb in sub.notebooks},
                    "grades": {(nb.name, g.name, g.cell_type): (g.auto_score, g.manual_score,
                                                                g.extra_credit,
                                                                g.needs_manual_grade)
                               for nb in sub.notebooks for g in nb.grades},
                    "comments": {(nb.name, c.name): (c.auto_comment, c.manual_comment)
                                 for nb in sub.notebooks for c in nb.comments}}
    return out


def _row_counts(path: Path) -> dict:
    with sqlite3.connect(path) as con:
        return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("student", "submitted_assignment", "submitted_notebook", "grade",
                          "comment")}


@pytest.fixture
def both(tmp_path, empty):
    """The scenario merged both ways: ``(reference gradebook, batched gradebook, folder)``."""
    paths = {way: tmp_path / f"{way}.db" for way in ("reference", "batched")}
    for path in paths.values():
        shutil.copy(empty, path)
    autograded = tmp_path / "autograded"
    for batch in (FIRST, SECOND):
        with Gradebook(f"sqlite:///{paths['reference']}") as gb:
            for result in batch:
                _reference_merge(gb, result)
        with Gradebook(f"sqlite:///{paths['batched']}") as gb:
            merge_results(gb, batch, autograded)
        if batch is FIRST:
            for path in paths.values():
                _grade_by_hand(f"sqlite:///{path}")
    return paths["reference"], paths["batched"], autograded


def test_batches_write_what_nbgrader_s_api_writes(both):
    """Do batched merges (new submissions, a failed one, re-grades, one submission twice in a
    batch, a human's grade in between) leave the gradebook as one-by-one nbgrader calls do?"""
    reference, batched, _ = both
    expected = _contents(f"sqlite:///{reference}")
    assert set(expected) == {"students", ("hw1", "alice"), ("hw1", "bob"), ("hw1", "carol"),
                             ("hw2", "alice"), ("hw2", "dave")}
    assert _contents(f"sqlite:///{batched}") == expected
    assert _row_counts(batched) == _row_counts(reference)


def test_scores_comments_and_flags_as_nbgrader_reads_them(both):
    """Read back with nbgrader's API: are the last result's scores and comments there, the
    written answers pending, the hand-set score kept and flagged, the task cell 0?"""
    _, batched, _ = both
    with Gradebook(f"sqlite:///{batched}") as gb:
        alice = gb.find_submission("hw1", "alice")
        assert alice.timestamp.isoformat() == "2026-12-03T08:00:00"
        assert gb.find_grade("a-code", "nb_a", "hw1", "alice").auto_score == 2.0
        assert gb.find_grade("b-code", "nb_b", "hw1", "alice").auto_score == 4.0
        assert gb.find_comment("a-written", "nb_a", "hw1", "alice").auto_comment == "second"
        assert gb.find_comment("a-answer", "nb_a", "hw1", "alice").auto_comment is None
        written = gb.find_grade("a-written", "nb_a", "hw1", "alice")
        assert written.auto_score is None and written.needs_manual_grade
        task = gb.find_grade("a-task", "nb_a", "hw1", "alice")
        assert (task.auto_score, task.needs_manual_grade) == (0.0, False)
        assert alice.score == 6.0 and alice.max_score == 10.0
        kept = gb.find_grade("a-written", "nb_a", "hw1", "bob")
        assert (kept.manual_score, kept.needs_manual_grade, kept.score) == (2.0, True, 2.0)
        comment = gb.find_comment("a-answer", "nb_a", "hw1", "bob")
        assert (comment.auto_comment, comment.manual_comment) == (None, "well argued")
        assert gb.find_submission("hw1", "bob").timestamp.isoformat() == "2026-12-02T09:30:00"
        dave = gb.find_submission("hw2", "dave")
        assert dave.timestamp.isoformat() == "2026-12-01T12:00:00" and dave.score == 0.0


def test_a_failed_result_scores_0_and_is_not_pending(both):
    """Does a result the grader failed on (status "error", no grades) score 0 on every cell,
    none of them waiting for a human, as before?"""
    _, batched, autograded = both
    with Gradebook(f"sqlite:///{batched}") as gb:
        carol = gb.find_submission("hw1", "carol")
        grades = [g for nb in carol.notebooks for g in nb.grades]
        assert len(grades) == 4
        assert all(g.auto_score == 0.0 and not g.needs_manual_grade for g in grades)
        assert carol.score == 0.0 and not carol.needs_manual_grade and carol.timestamp is None
    folder = autograded / "carol" / "hw1"
    assert sorted(p.name for p in folder.iterdir()) == [GRADING_RECORD]
    assert json.loads((folder / GRADING_RECORD).read_text()) == grading_record(FIRST[2])


def test_the_autograded_folder_holds_the_last_result(both):
    """Are the notebooks, the timestamp and grading.json those of the last result of each
    submission, where nbgrader's feedback looks for them?"""
    _, _, autograded = both
    folder = autograded / "alice" / "hw1"
    assert sorted(p.name for p in folder.iterdir()) == [GRADING_RECORD, "nb_a.ipynb",
                                                         "nb_b.ipynb", "timestamp.txt"]
    last = [r for r in SECOND if (r.assignment, r.student) == ("hw1", "alice")][-1]
    assert (folder / "nb_a.ipynb").read_bytes() == last.notebooks["nb_a"]
    assert (folder / "timestamp.txt").read_text() == "2026-12-03 08:00:00"


def test_an_unknown_assignment_records_nothing_of_the_batch(tmp_path, empty):
    """A result of an assignment the gradebook lacks: MissingEntry, and the batch's other
    results (and their students) are not half written."""
    shutil.copy(empty, tmp_path / "gradebook.db")
    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    unknown = _result("hw1", "bob", 1.0)
    unknown.assignment = "hw9"
    with Gradebook(url) as gb:
        with pytest.raises(MissingEntry):
            merge_results(gb, [_result("hw1", "alice", 2.0), unknown], tmp_path / "autograded")
        assert gb.students == [] and gb.find_assignment("hw1").submissions == []
        merge_result(gb, _result("hw1", "alice", 2.0), tmp_path / "autograded")
        assert [s.id for s in gb.students] == ["alice"]
    assert not (tmp_path / "autograded" / "bob").exists()


# ----------------------------------------------------------------------------- template gradebooks


def _tiny_assignment(root: Path, answer: str = "x = 1") -> None:
    """``source/tiny/tiny.ipynb``: one solution cell and one graded test cell."""
    import nbformat

    def meta(grade_id, **kw):
        return {"nbgrader": {"grade_id": grade_id, "schema_version": 3, "locked": False,
                             "solution": False, "grade": False, **kw}}

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f"### BEGIN SOLUTION\n{answer}\n### END SOLUTION",
                                  metadata=meta("tiny-solution", solution=True)),
        nbformat.v4.new_code_cell("assert x == 1", metadata=meta("tiny-tests", grade=True,
                                                                   locked=True, points=1))])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (root / "source" / "tiny").mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, root / "source" / "tiny" / "tiny.ipynb")


def test_a_template_gradebook_is_kept_until_its_source_changes(tmp_path, monkeypatch):
    """Is the template made by nbgrader once, read back from course/template-gradebooks/ while
    the source is the same (nbgrader not run), and made anew, replacing the old one, when a
    source file changes?"""
    import course.pipeline
    from course.merge import TEMPLATE_FOLDER, template_digest, template_gradebook

    root = tmp_path / "course-root"
    _tiny_assignment(root)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    first = template_gradebook(root, "tiny")
    kept = root / "course" / TEMPLATE_FOLDER
    assert [p.name for p in kept.iterdir()] == [f"tiny-{template_digest(root, 'tiny')}.db"]
    (tmp_path / "first.db").write_bytes(first)
    with Gradebook(f"sqlite:///{tmp_path / 'first.db'}") as gb:
        assert [n.name for n in gb.find_assignment("tiny").notebooks] == ["tiny"]
    runs = []
    real = course.pipeline.nbgrader
    monkeypatch.setattr(course.pipeline, "nbgrader", lambda *a, **k: (runs.append(a), real(*a, **k)))
    assert template_gradebook(root, "tiny") == first and runs == []
    _tiny_assignment(root, answer="x = 1  # changed")
    again = template_gradebook(root, "tiny")
    assert len(runs) == 1 and again != first
    assert [p.name for p in kept.iterdir()] == [f"tiny-{template_digest(root, 'tiny')}.db"]
