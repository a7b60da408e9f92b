"""``nbgrader zip_collect``: an LMS's download into ``course/submitted``, matched to the roster.

One module-scoped course root holds ``source/`` and ``release/`` of vae_basics and a roster
loaded with ``course.roster``. Three zips named as Canvas, Moodle and Blackboard name their
bulk downloads go into ``course/downloaded/vae_basics/archive/``; nbgrader's ``zip_collect``
runs once with the repository's ``nbgrader_config.py`` (``course.pipeline.nbgrader``), and
the tests check what landed where and which files were reported and skipped. Each notebook
carries a tag in its metadata that says whose and which upload it is.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import zipfile
from pathlib import Path

import nbformat
import pytest

from course import pipeline, roster

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENT = "vae_basics"
ZIP_COLLECT = ["zip_collect", ASSIGNMENT, "--force"]
ROSTER = """id,first_name,last_name,email
ada,Ada,Lovelace,ada@example.org
jose,José María,García-Pérez,jose@example.org
zoe,Zoë,O'Neil-Smith,zoe@example.org
grace,Grace,Hopper,grace@example.org
alyssa_p,Alyssa,Hacker,alyssa@example.org
kim1,Kim,Lee,kim1@example.org
kim2,Kim,Lee,kim.lee@example.org
"""
#: each zip as its LMS names the entries: {entry name: the tag in the notebook (None: no notebook)}
ZIPS = {
    # Canvas: lastfirst[_LATE]_<user id>_<file id>_<file name>; "-1" on a re-used file name
    "dpm-variational-inference_submissions.zip": {
        "lovelaceada_1001_5001_vae_basics.ipynb": "ada first upload",
        "lovelaceada_1001_5007_vae_basics-1.ipynb": "ada latest upload",
        "garcíapérezjosémaría_LATE_1002_5003_vae_basics.ipynb": "jose",
        "doejohn_1003_5004_vae_basics.ipynb": "nobody on the roster",
        "anon_Ab3dE_5005_vae_basics.ipynb": "anonymous",
    },
    # Moodle: <Full Name>_<participant id>_assignsubmission_<plugin>_/<file name>
    "DPM-Variational inference-42.zip": {
        "Zoë ONeil-Smith_48213_assignsubmission_file_/vae_basics.ipynb": "zoe",
        "Zoë ONeil-Smith_48213_assignsubmission_onlinetext_/onlinetext.html": None,
        "Grace Hopper_48214_assignsubmission_file_/vae_basics (1).ipynb": "grace",
        "Kim Lee_48215_assignsubmission_file_/vae_basics.ipynb": "one of two Kim Lees",
    },
    # Blackboard: <assignment>_<username>_attempt_<time>[_<file name>]
    "gradebook_DPM_vae_basics_2024-05-03-12-00-00.zip": {
        "vae_basics_alyssa_p_attempt_2024-05-01-10-00-00_vae_basics.ipynb": "alyssa attempt 1",
        "vae_basics_alyssa_p_attempt_2024-05-02-09-30-00_vae_basics.ipynb": "alyssa attempt 2",
        "vae_basics_alyssa_p_attempt_2024-05-02-09-30-00.txt": None,
    },
}
#: the notebook each student must end up with
COLLECTED = {"ada": "ada latest upload", "jose": "jose", "zoe": "zoe", "grace": "grace",
             "alyssa_p": "alyssa attempt 2"}
#: the files that must be reported and skipped: (a part of the file's name, the reason)
REPORTED = {
    "unknown name": ("doejohn_1003_5004", "no student in the gradebook has the name 'doejohn'"),
    "ambiguous name": ("Kim Lee_48215", "fits 2 students in the gradebook (kim1, kim2); not "
                                        "guessed"),
    "anonymous": ("anon_Ab3dE_5005", "Canvas hides the student (anonymous grading)"),
    "older upload": ("lovelaceada_1001_5001", "an upload of ada's vae_basics.ipynb older than"),
}


def _notebook(tag: str) -> str:
    nb = nbformat.read(REPO / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", 4)
    nb.metadata["lms_intake"] = tag
    return nbformat.writes(nb)


def _files(root: Path) -> dict:
    """``{path relative to root: bytes}`` of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> dict:
    """The course root before and after ``nbgrader zip_collect``, and what nbgrader printed."""
    root = tmp_path_factory.mktemp("lms")
    for step in ("source", "release"):
        shutil.copytree(REPO / step / ASSIGNMENT, root / step / ASSIGNMENT)
    (root / "course").mkdir()
    (root / "roster.csv").write_text(ROSTER, encoding="utf-8")
    assert roster.main([str(root / "roster.csv"), "--root", str(root)]) == 0
    archive = root / "course" / "downloaded" / ASSIGNMENT / "archive"
    archive.mkdir(parents=True)
    for name, entries in ZIPS.items():
        with zipfile.ZipFile(archive / name, "w") as zf:
            for entry, tag in entries.items():
                zf.writestr(entry, _notebook(tag) if tag else "not a notebook")
    before = _files(root)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        pipeline.nbgrader(ZIP_COLLECT, root, quiet=False)
    return {"root": root, "before": before, "after": _files(root), "output": out.getvalue()}


def _tag(path: Path) -> str:
    return nbformat.read(path, 4).metadata.get("lms_intake")


@pytest.mark.parametrize("student", COLLECTED)
def test_each_student_gets_their_latest_notebook(course, student):
    """Does each matched student's notebook land in course/submitted/<id>/vae_basics/ under
    the assignment's notebook name, the latest of several uploads (Canvas's -1, Blackboard's
    later attempt), whatever the LMS called the file?"""
    path = course["root"] / "course" / "submitted" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    assert path.is_file(), course["output"]
    assert _tag(path) == COLLECTED[student]


def test_blackboard_attempt_time_is_the_submission_time(course):
    """Does Blackboard's attempt time (in its file name) become nbgrader's timestamp.txt, read
    as 09:30 on 2 May (not as a date with a UTC offset), while Canvas and Moodle, whose names
    carry no time, get none?"""
    submitted = course["root"] / "course" / "submitted"
    stamp = submitted / "alyssa_p" / ASSIGNMENT / "timestamp.txt"
    assert stamp.is_file(), course["output"]
    assert stamp.read_text() == "2024-05-02 09:30:00"
    assert not any((submitted / s / ASSIGNMENT / "timestamp.txt").exists()
                   for s in COLLECTED if s != "alyssa_p")


@pytest.mark.parametrize("case", REPORTED)
def test_files_that_match_no_single_student_are_reported_and_skipped(course, case):
    """Is a file whose name fits no student, several students, a hidden one, or that an
    upload of the same student replaced, named on a line with the reason, and not collected?"""
    fragment, reason = REPORTED[case]
    skipped = re.compile(rf"Skipped course/downloaded/{ASSIGNMENT}/extracted/[^:]*"
                         rf"{re.escape(fragment)}[^:]*: .*{re.escape(reason)}")
    assert any(skipped.search(line) for line in course["output"].splitlines()), course["output"]
    collected = [p for p, data in course["after"].items() if p.startswith("course/submitted/")]
    assert not any(fragment in p for p in collected)
    assert not any(p.startswith(("course/submitted/kim", "course/submitted/doe"))
                   for p in collected)


def test_a_late_canvas_submission_is_said_to_be_late(course):
    """Canvas marks a late submission in its file name but gives no time: is it collected,
    with a line saying so?"""
    assert any("garcíapérezjosémaría_LATE" in line and "Canvas marks it LATE" in line
               for line in course["output"].splitlines()), course["output"]


def test_nothing_is_written_outside_course_submitted(course):
    """Besides nbgrader's own unpacking under course/downloaded/, are the collected notebooks
    and Blackboard's timestamp the only new or changed files (the gradebook untouched)?"""
    before, after = course["before"], course["after"]
    changed = {p for p, data in after.items() if before.get(p) != data
               and not p.startswith("course/downloaded/")}
    expected = {f"course/submitted/{s}/{ASSIGNMENT}/{ASSIGNMENT}.ipynb" for s in COLLECTED}
    assert changed == expected | {f"course/submitted/alyssa_p/{ASSIGNMENT}/timestamp.txt"}
    assert set(before) <= set(after)
