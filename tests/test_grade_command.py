"""The grading command (``python -m course.grade``) cannot be misused: it refuses what it
cannot do before grading anything, registers an assignment the gradebook does not know,
and its exit status says whether every submission was graded.

The refusals run without a sandbox flag (nothing is executed before them); the one real run
grades an untouched release of vae_basics (1 worker, sandboxed where bubblewrap runs here;
about 40 s) in a course root under ``tmp_path`` that has no gradebook and no ``release/``.
"""

import shutil
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from course import grade
from course.merge import template_gradebook
from course.sandbox import SandboxUnavailable, check_sandbox
from course.submission import Result

REPO = Path(__file__).resolve().parent.parent


def _course(root: Path, students=("alice", "bob")) -> Path:
    """A course root with vae_basics's source and each student's untouched release."""
    shutil.copytree(REPO / "source" / "vae_basics", root / "source" / "vae_basics")
    for student in students:
        folder = root / "course" / "submitted" / student / "vae_basics"
        folder.mkdir(parents=True)
        shutil.copy(REPO / "release" / "vae_basics" / "vae_basics.ipynb", folder)
    return root


def test_a_misspelt_student_is_refused_and_never_enters_the_gradebook(tmp_path, capsys):
    """``--students alcie`` (for alice): exit 2, the name and a suggestion, no gradebook."""
    root = _course(tmp_path)
    status = grade.main(["vae_basics", "--root", str(root), "--students", "alice", "alcie",
                         "--unsafe-no-sandbox"])
    err = capsys.readouterr().err
    assert status == 2
    assert "'alcie' (did you mean alice?)" in err and "nothing was graded" in err
    assert "Students with a submission: alice, bob" in err
    assert not (root / "course" / "gradebook.db").exists()


def test_no_submissions_is_refused_with_where_to_put_them(tmp_path, capsys):
    root = _course(tmp_path, students=())
    status = grade.main(["vae_basics", "--root", str(root), "--unsafe-no-sandbox"])
    err = capsys.readouterr().err
    assert status == 2
    assert "no submissions of vae_basics" in err and "STUDENT/ASSIGNMENT" in err
    assert not (root / "course" / "gradebook.db").exists()


def test_the_exit_status_counts_submissions_the_grader_failed_on():
    graded = Result("vae_basics", "alice")
    flagged = Result("vae_basics", "bob", status="stopped", reasons={"vae_basics": "out of time"})
    failed = Result("vae_basics", "carol", status="error", reasons={"(grader)": "worker died"})
    assert grade.exit_status([graded, flagged]) == 0
    assert grade.exit_status([graded, failed]) == 1
    summary = grade.format_summary([graded, failed], [{"name": "vae_basics"}])
    assert "NOT graded" in summary and "--students carol" in summary


def _sandboxed() -> bool:
    try:
        check_sandbox()
    except SandboxUnavailable:
        return False
    return True


def test_an_unregistered_assignment_is_registered_then_graded(tmp_path, capsys):
    """No gradebook, no release/: does the command register vae_basics itself (nbgrader's
    generate_assignment into the gradebook only), grade the one student, exit 0, and leave
    a registration that matches the source alone the next time?"""
    root = _course(tmp_path, students=("alice",))
    flags = [] if _sandboxed() else ["--unsafe-no-sandbox"]  # our own release notebook
    status = grade.main(["vae_basics", "--root", str(root), "--workers", "1", *flags])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "registered vae_basics" in captured.err
    assert not (root / "release").exists()
    with Gradebook(f"sqlite:///{root / 'course' / 'gradebook.db'}") as gb:
        assert [s.id for s in gb.students] == ["alice"]
        submission = gb.find_submission("vae_basics", "alice")
        assert submission.max_score > 0 and submission.score == 0
    template = template_gradebook(root, "vae_basics")
    assert grade.register(root, "vae_basics", template) is False


def test_an_unknown_assignment_is_refused(tmp_path):
    root = _course(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        grade.main(["vae_basic", "--root", str(root), "--unsafe-no-sandbox"])
    assert exit_info.value.code == 2
