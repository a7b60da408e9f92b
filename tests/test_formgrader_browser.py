"""The formgrader lists the students of a loaded roster by name, in Debian's Chromium.

A throwaway course root gets the course's assignments in a fresh gradebook (nbgrader's API,
no grading), a submission folder for each student (the formgrader lists a student who has
handed something in as "None, None" until the gradebook knows their name), and a roster
loaded with ``python -m course.roster``, run in-process. Then a bare Jupyter server, with
this repository's ``nbgrader_config.py`` pointed at the root (``DPM_COURSE_ROOT``), serves
nbgrader's formgrader, and the test opens its "Manage Students" page in Chromium, waits for
the names and saves ``docs/formgrader-roster.png``, the picture in the README. The server
and the browser come from ``tests/browser.py``; the test is skipped without Chromium or
``playwright``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from browser import REPO, chromium_page, jupyter_server, needs_chromium
from course import pipeline, roster

pytestmark = needs_chromium

SCREENSHOT = REPO / "docs" / "formgrader-roster.png"
#: the roster: a header in the words of an LMS export, and a name that is not ASCII
ROSTER = ("Student ID,First Name,Surname,E-mail\n"
          "s1815,Ada,Lovelace,ada.lovelace@uni.example.edu\n"
          "s1906,Grace,Hopper,grace.hopper@uni.example.edu\n"
          "s1912,Alan,Turing,alan.turing@uni.example.edu\n"
          "s1918,Katherine,Johnson,katherine.johnson@uni.example.edu\n"
          "s1706,Émilie,du Châtelet,emilie.du-chatelet@uni.example.edu\n")
NAMES = ["Lovelace, Ada", "Hopper, Grace", "Turing, Alan", "Johnson, Katherine",
         "du Châtelet, Émilie"]
#: seconds: the server's start, then each wait in the page
SERVER_TIMEOUT = 30
PAGE_TIMEOUT = 15


@pytest.fixture
def course_root(tmp_path, monkeypatch) -> Path:
    """A course root whose gradebook holds the assignments and the roster's students, each of
    whom has handed in the first assignment; the formgrader's config reads it from there."""
    root = tmp_path / "course-root"
    assignments = pipeline.load_assignments()
    for student in (line.split(",")[0] for line in ROSTER.splitlines()[1:]):
        (root / "course" / "submitted" / student / assignments[0]["name"]).mkdir(parents=True)
    # nbgrader makes a new gradebook with its ``alembic`` command, from the interpreter's folder
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'course' / 'gradebook.db'}") as gb:
        for assignment in assignments:
            gb.update_or_create_assignment(assignment["name"])
    csv = tmp_path / "students.csv"
    csv.write_text(ROSTER, encoding="utf-8")
    assert roster.main([str(csv), "--root", str(root)]) == 0
    # the formgrader reads nbgrader_config.py from the server's folder: the course's own
    (root / "nbgrader_config.py").write_text(
        f"load_subconfig({str(REPO / 'nbgrader_config.py')!r})\n")
    return root


def test_manage_students_shows_the_roster_names(course_root):
    """Does the formgrader's "Manage Students" page list every student of the roster as
    "Last, First" with their e-mail, and nobody as "None, None"? Saves
    docs/formgrader-roster.png."""
    with jupyter_server(course_root, app="jupyter_server", timeout=SERVER_TIMEOUT,
                        env={"DPM_COURSE_ROOT": str(course_root)}) as (url, token), \
            chromium_page(width=1200, height=700, timeout=PAGE_TIMEOUT) as page:
        page.goto(f"{url}/formgrader/manage_students?token={token}")
        # the table is filled from the formgrader's API: wait for a named link in every row
        page.wait_for_function(f"() => document.querySelectorAll('#main-table td.name a')"
                               f".length === {len(NAMES)}")
        rows = page.locator("#main-table tr")
        shown = rows.locator("td.name").all_inner_texts()
        assert sorted(shown) == sorted(NAMES)
        assert "None, None" not in page.locator("#main-table").inner_text()
        assert rows.filter(has_text="Lovelace, Ada").locator("td.email").inner_text() == \
            "ada.lovelace@uni.example.edu"
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), clip=_clip(page))


def _clip(page) -> dict:
    """The top of the page down to the end of the students' table, at most the viewport."""
    bottom = page.evaluate("() => document.querySelector('#main-table').closest('table')"
                           ".getBoundingClientRect().bottom")
    viewport = page.viewport_size
    return {"x": 0, "y": 0, "width": viewport["width"],
            "height": min(viewport["height"], int(bottom) + 24)}
