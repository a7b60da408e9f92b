"""Write graded submissions (:class:`course.submission.Result`) into the course.

The coordinating process is the only writer of the course's ``gradebook.db``: it records
each result in nbgrader's tables through nbgrader's own mapped classes (``nbgrader.api``'s
``Student``, ``SubmittedAssignment``, ``SubmittedNotebook``, ``Grade``, ``Comment``: the rows
that nbgrader's ``add_submission`` makes and its ``SaveAutoGrades`` fills, per-cell
``auto_score`` and ``auto_comment``) and puts the autograded notebooks where nbgrader's
formgrader, ``generate_feedback`` and ``export`` look for them.

:func:`merge_results` records the results that finished together in one transaction, with
one statement per table, and every query of the students' rows is answered by one of
nbgrader's unique indexes. Going through ``Gradebook.update_or_create_submission`` and the
ORM objects it returns costs 40 to 50 statements and three commits per submission (here:
10 or 11 statements per assignment of a batch, one commit per batch), and
``SubmittedNotebook.grades`` reads ``grade`` by ``notebook_id``, which no index covers: a
scan of every grade in the course. ``benchmarks/coordinator_throughput.py`` measures both;
``tests/test_merge.py`` checks that they write the same gradebook.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from nbgrader.api import (BaseCell, Comment, Grade, Gradebook, Student, SubmittedAssignment,
                          SubmittedNotebook, new_uuid)
from nbgrader.utils import parse_utc
from sqlalchemy import insert, select, update

__all__ = ["GRADING_RECORD", "TEMPLATE_FOLDER", "template_gradebook", "template_digest",
           "merge_results", "merge_result", "grading_record"]

#: the file beside a submission's autograded notebooks that records what the grader found beyond
#: the points (read by course.report)
GRADING_RECORD = "grading.json"
#: where, under the course's ``course/`` folder, template gradebooks are kept
TEMPLATE_FOLDER = "template-gradebooks"
#: the grade of a cell that the result does not know (the grader failed before it): 0 points,
#: (auto_score, max_score, needs_manual_grade, autograded) as in Result.grades
_UNGRADED = (0.0, None, False, True)


def template_gradebook(course_root: Path, assignment: str) -> bytes:
    """A gradebook that knows ``assignment`` (its notebooks and cells) and no student.

    Made by nbgrader's own ``generate_assignment`` from ``source/<assignment>`` in a
    temporary course, so that the scratch course of every submission starts from it: a
    student's kernel never sees another student's grades (nor, in fact, this file). It is kept
    in ``course/template-gradebooks/`` under a digest of what made it (:func:`template_digest`),
    so that grading the same assignment again (late submissions, a re-grade) skips nbgrader's
    run of several seconds; a change to the source, the course's nbgrader configuration or
    nbgrader makes a new one (and removes the old).
    """
    from course.pipeline import nbgrader

    kept = Path(course_root) / "course" / TEMPLATE_FOLDER
    cached = kept / f"{assignment}-{template_digest(course_root, assignment)}.db"
    if cached.is_file():
        return cached.read_bytes()
    with tempfile.TemporaryDirectory(prefix="dpm-template-") as tmp:
        root = Path(tmp)
        shutil.copytree(Path(course_root) / "source" / assignment, root / "source" / assignment)
        (root / "course").mkdir()
        nbgrader(["generate_assignment", assignment, "--force"], root)
        template = (root / "course" / "gradebook.db").read_bytes()
    kept.mkdir(parents=True, exist_ok=True)
    for old in kept.glob(f"{assignment}-*.db"):
        old.unlink(missing_ok=True)
    written = kept / f".{cached.name}.{os.getpid()}.{threading.get_ident()}"
    written.write_bytes(template)
    os.replace(written, cached)  # whole or absent, whoever reads it
    return template


def template_digest(course_root: Path, assignment: str) -> str:
    """What a template gradebook depends on, as 16 hex digits: nbgrader's version, the course's
    ``nbgrader_config.py`` and header notebook, and every file of ``source/<assignment>`` (its
    path and bytes)."""
    import nbgrader

    from course.pipeline import REPO

    digest = hashlib.sha256(nbgrader.__version__.encode())
    source = Path(course_root) / "source" / assignment
    made_from = [REPO / "nbgrader_config.py", REPO / "course" / "header.ipynb",
                 *sorted(p for p in source.rglob("*") if p.is_file())]
    for path in made_from:
        name = path.relative_to(source) if path.is_relative_to(source) else path.name
        digest.update(b"\0" + str(name).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def merge_results(gb: Gradebook, results: list, autograded_dir: Path) -> None:
    """Record results in the gradebook, in one transaction, and write their autograded notebooks.

    For each result: the student and the submission are created if the gradebook lacks them
    (the submission with a grade per grade or task cell and a comment per solution or task
    cell, as nbgrader's ``add_submission`` makes it), the timestamp is set when the result
    has one, every grade gets the result's ``auto_score`` (0 for a cell the result does not
    know: the grader failed before it) and every comment its ``auto_comment``. A grade that
    a human already set by hand (``manual_score``) is kept, and flagged for review as nbgrader
    does when it re-grades. ``autograded_dir`` is the course's ``autograded`` folder; the
    notebooks go to ``<autograded_dir>/<student>/<assignment>/<notebook>.ipynb``, as nbgrader
    puts them, with :data:`GRADING_RECORD` beside them (:func:`grading_record`: what the
    gradebook has no place for).

    A result of a submission that comes again later in ``results`` is recorded first, then
    overwritten, as one call per result would do.

    Raises:
        nbgrader.api.MissingEntry: the gradebook does not know a result's assignment (nothing
            of the batch is recorded).
    """
    results = list(results)
    if not results:
        return
    try:
        for group in _without_repeats(results):
            _record(gb, group)
        gb.db.commit()
    except BaseException:
        gb.db.rollback()
        raise
    for result in results:
        _write_files(result, Path(autograded_dir))


def merge_result(gb: Gradebook, result, autograded_dir: Path) -> None:
    """Record one result: :func:`merge_results` of ``[result]``."""
    merge_results(gb, [result], autograded_dir)


def _without_repeats(results: list) -> list:
    """``results`` cut, in order, into groups in which no submission comes twice."""
    groups, seen = [[]], set()
    for result in results:
        key = (result.assignment, result.student)
        if key in seen:
            groups.append([])
            seen = set()
        groups[-1].append(result)
        seen.add(key)
    return groups


def _record(gb: Gradebook, results: list) -> None:
    """Students, submissions, grades and comments of ``results`` (no two of one submission),
    in the session's transaction, not committed."""
    db = gb.db
    names = sorted({r.student for r in results})
    known = set(db.scalars(select(Student.id).where(Student.id.in_(names))))
    if gb.authenticator:  # as nbgrader's update_or_create_student does
        for name in names:
            gb.authenticator.add_student_to_course(name, gb.course_id)
    if len(known) < len(names):
        db.execute(insert(Student), [{"id": name} for name in names if name not in known])
    by_assignment: dict = {}
    for result in results:
        by_assignment.setdefault(result.assignment, []).append(result)
    for name, group in by_assignment.items():
        _record_assignment(gb, name, group)


def _record_assignment(gb: Gradebook, name: str, results: list) -> None:
    """:func:`_record` for the results of one assignment: the rows of nbgrader's tables, as
    its ``add_submission`` and ``SaveAutoGrades`` write them, in one statement per table."""
    db = gb.db
    assignment = gb.find_assignment(name)
    notebooks = {nb.id: nb.name for nb in assignment.notebooks}
    cells = db.execute(select(BaseCell.id, BaseCell.name, BaseCell.notebook_id, BaseCell.type)
                       .where(BaseCell.notebook_id.in_(list(notebooks)))).all()
    cell_names = {c.id: c.name for c in cells}
    # the queries of the students' rows name these ids, so that nbgrader's unique indexes on
    # (assignment_id, student_id), (notebook_id, assignment_id) and (cell_id, notebook_id)
    # answer them: nothing in the gradebook has an index on grade.notebook_id alone
    submitted = dict(db.execute(
        select(SubmittedAssignment.student_id, SubmittedAssignment.id).where(
            SubmittedAssignment.assignment_id == assignment.id,
            SubmittedAssignment.student_id.in_([r.student for r in results]))).all())
    new = [r for r in results if r.student not in submitted]
    if new:
        _add_submissions(db, assignment.id, notebooks, cells, new)
    old = {submitted[r.student]: r for r in results if r.student in submitted}
    if not old:
        return
    stamps = [{"id": sid, "timestamp": parse_utc(r.timestamp)} for sid, r in old.items()
              if r.timestamp]
    if stamps:
        db.execute(update(SubmittedAssignment), stamps)
    by_notebook = {nb_id: (old[sid], notebooks[notebook_id]) for nb_id, sid, notebook_id in
                   db.execute(select(SubmittedNotebook.id, SubmittedNotebook.assignment_id,
                                     SubmittedNotebook.notebook_id).where(
                       SubmittedNotebook.notebook_id.in_(list(notebooks)),
                       SubmittedNotebook.assignment_id.in_(list(old))))}
    grades = []
    for gid, nb_id, cell_id, manual in db.execute(
            select(Grade.id, Grade.notebook_id, Grade.cell_id, Grade.manual_score).where(
                Grade.cell_id.in_(list(cell_names)), Grade.notebook_id.in_(list(by_notebook)))):
        result, notebook = by_notebook[nb_id]
        grades.append({"id": gid, **_grade(result, notebook, cell_names[cell_id], manual)})
    comments = []
    for cid, nb_id, cell_id in db.execute(
            select(Comment.id, Comment.notebook_id, Comment.cell_id).where(
                Comment.cell_id.in_(list(cell_names)),
                Comment.notebook_id.in_(list(by_notebook)))):
        result, notebook = by_notebook[nb_id]
        comments.append({"id": cid,
                         "auto_comment": result.comments.get((notebook, cell_names[cell_id]))})
    for model, rows in ((Grade, grades), (Comment, comments)):
        if rows:
            db.execute(update(model), rows)


def _add_submissions(db, assignment_id: str, notebooks: dict, cells: list, results: list) -> None:
    """New submissions of ``results``, as nbgrader's ``Gradebook.add_submission`` makes them
    (a submitted notebook per notebook; a grade per grade or task cell, a comment per
    solution or task cell), with the results' scores and comments."""
    rows: dict = {SubmittedAssignment: [], SubmittedNotebook: [], Grade: [], Comment: []}
    for result in results:
        sid = new_uuid()
        rows[SubmittedAssignment].append({"id": sid, "assignment_id": assignment_id,
                                          "student_id": result.student,
                                          "timestamp": parse_utc(result.timestamp)})
        for notebook_id, notebook in notebooks.items():
            nb_id = new_uuid()
            rows[SubmittedNotebook].append({"id": nb_id, "assignment_id": sid,
                                            "notebook_id": notebook_id})
            for cell in cells:
                if cell.notebook_id != notebook_id:
                    continue
                if cell.type in ("GradeCell", "TaskCell"):
                    rows[Grade].append({"notebook_id": nb_id, "cell_id": cell.id,
                                        **_grade(result, notebook, cell.name, None)})
                if cell.type in ("SolutionCell", "TaskCell"):
                    rows[Comment].append({"notebook_id": nb_id, "cell_id": cell.id,
                                          "auto_comment": result.comments.get((notebook,
                                                                               cell.name))})
    for model, values in rows.items():
        if values:  # render_nulls: one statement for all rows, None or not
            db.execute(insert(model).execution_options(render_nulls=True), values)


def _grade(result, notebook: str, cell: str, manual_score) -> dict:
    """The ``auto_score`` and ``needs_manual_grade`` of a grade: the result's score (0 for a
    cell it does not know: the grader failed before it); a score a human set is kept, and
    flagged for review."""
    score, _, pending, _ = result.grades.get((notebook, cell), _UNGRADED)
    return {"auto_score": score,
            "needs_manual_grade": manual_score is not None or pending or score is None}


def _write_files(result, autograded_dir: Path) -> None:
    """The autograded notebooks of ``result``, its timestamp and :data:`GRADING_RECORD`."""
    folder = autograded_dir / result.student / result.assignment
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, data in result.notebooks.items():
        if data:
            (folder / f"{name}.ipynb").write_bytes(data)
    if result.timestamp:
        (folder / "timestamp.txt").write_text(result.timestamp)
    (folder / GRADING_RECORD).write_text(json.dumps(grading_record(result), indent=1) + "\n")


def grading_record(result) -> dict:
    """What :data:`GRADING_RECORD` holds of a result: its status, the reasons and the notes (per
    notebook, see :class:`course.submission.Result`), the wall time in seconds and the peak
    memory in bytes (0 when unknown)."""
    return {"status": result.status, "reasons": dict(result.reasons),
            "notes": dict(result.notes), "seconds": round(float(result.seconds), 3),
            "peak_memory": int(result.peak_memory)}
