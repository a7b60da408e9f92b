"""Write a graded submission (a :class:`course.submission.Result`) into the course.

The coordinating process is the only writer of the course's ``gradebook.db``: it records
each result with nbgrader's own API (student, submission, per-cell ``auto_score`` and
``auto_comment``, as nbgrader's ``SaveAutoGrades`` does) and puts the autograded notebooks
where nbgrader's formgrader, ``generate_feedback`` and ``export`` look for them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

from nbgrader.api import Gradebook
from sqlalchemy.exc import SAWarning

__all__ = ["GRADING_RECORD", "template_gradebook", "merge_result", "grading_record"]

#: the file beside a submission's autograded notebooks that records what the grader found beyond
#: the points (read by course.report)
GRADING_RECORD = "grading.json"


def template_gradebook(course_root: Path, assignment: str) -> bytes:
    """A gradebook that knows ``assignment`` (its notebooks and cells) and no student.

    Made by nbgrader's own ``generate_assignment`` from ``source/<assignment>`` in a
    temporary course, so that the scratch course of every submission starts from it: a
    student's kernel never sees another student's grades (nor, in fact, this file).
    """
    from course.pipeline import nbgrader

    with tempfile.TemporaryDirectory(prefix="dpm-template-") as tmp:
        root = Path(tmp)
        shutil.copytree(Path(course_root) / "source" / assignment, root / "source" / assignment)
        (root / "course").mkdir()
        nbgrader(["generate_assignment", assignment, "--force"], root)
        return (root / "course" / "gradebook.db").read_bytes()


def merge_result(gb: Gradebook, result, autograded_dir: Path) -> None:
    """Record one result in the gradebook and write its autograded notebooks.

    ``autograded_dir`` is the course's ``autograded`` folder; the notebooks go to
    ``<autograded_dir>/<student>/<assignment>/<notebook>.ipynb``, as nbgrader puts them, with
    :data:`GRADING_RECORD` beside them (:func:`grading_record`: what the gradebook has no place
    for). A grade that a human already set by hand (``manual_score``) is kept, and flagged for
    review as nbgrader does when it re-grades.
    """
    gb.update_or_create_student(result.student)
    kwargs = {"timestamp": result.timestamp} if result.timestamp else {}
    with warnings.catch_warnings():
        # nbgrader's add_submission trips SQLAlchemy 2's autoflush warnings; harmless
        warnings.simplefilter("ignore", category=SAWarning)
        submission = gb.update_or_create_submission(result.assignment, result.student, **kwargs)
    for notebook in submission.notebooks:
        for grade in notebook.grades:
            # a grade the result does not know (the grader failed before it) scores 0
            score, _, pending, _ = result.grades.get((notebook.name, grade.name),
                                                     (0.0, None, False, True))
            grade.auto_score = score
            grade.needs_manual_grade = grade.manual_score is not None or pending or score is None
        for comment in notebook.comments:
            comment.auto_comment = result.comments.get((notebook.name, comment.name))
    gb.db.commit()
    folder = Path(autograded_dir) / result.student / result.assignment
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
