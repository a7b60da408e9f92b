"""The feedback pages tell the truth: pending written answers, wrapped hints, offline formulas.

One module-scoped course folder (``source/vae_basics`` only) gets its release; one student
hands in the reference solution with the KL's sign flipped (a failed hidden test, whose
one-line hint is longer than the page is wide) and the model answers as written answers.
Plain nbgrader autogrades it (unsandboxed: it is our own code) and writes its feedback, which
is kept; then one written answer is graded 0 by hand, through nbgrader's API as the
formgrader does, and the feedback is written again.

The browser test opens the first page in Debian's Chromium with the network off (offline, and
every request that is not for a file aborted) and saves ``docs/feedback.png``, the picture in
the README. It is skipped without Chromium, playwright or Debian's ``libjs-mathjax``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest

from browser import in_chromium, offline_page
from course import pipeline
from course.feedback import FeedbackExporter, ScoreSummary

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENT = {"name": "vae_basics", "notebooks": ["vae_basics"]}
STUDENT = "pending-student"
SCREENSHOT = REPO / "docs" / "feedback.png"
#: the KL with its sign flipped: kl-formula-tests fails with a hint naming the mistake
WRONG_KL = ("def KL(mu, logvar):\n"
            "    return -0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)\n")
#: the written answer that the test grades 0 by hand
GRADED_ZERO = "kl-derivation"


def _grade_ids(root: Path) -> dict:
    """``{grade_id: (cell_type, solution, points)}`` of the graded cells of the source notebook."""
    nb = nbformat.read(root / "source" / "vae_basics" / "vae_basics.ipynb", 4)
    return {c.metadata.nbgrader["grade_id"]: (c.cell_type, c.metadata.nbgrader.get("solution"),
                                              c.metadata.nbgrader["points"])
            for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")}


def _feedback(root: Path) -> Path:
    pipeline.nbgrader(["generate_feedback", "vae_basics", "--student", STUDENT, "--force"], root)
    return root / "course" / "feedback" / STUDENT / "vae_basics"


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> dict:
    """The course folder, the feedback folder before manual grading (a copy) and the page after."""
    root = tmp_path_factory.mktemp("feedback")
    shutil.copytree(REPO / "source" / "vae_basics", root / "source" / "vae_basics")
    (root / "course").mkdir()
    pipeline.generate_release(root, [ASSIGNMENT])
    nb = nbformat.read(root / "source" / "vae_basics" / "vae_basics.ipynb", 4)
    [kl] = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "kl-solution"]
    kl.source = WRONG_KL
    target = root / "course" / "submitted" / STUDENT / "vae_basics"
    target.mkdir(parents=True)
    nbformat.write(nb, target / "vae_basics.ipynb")
    pipeline.nbgrader(["autograde", "vae_basics", "--student", STUDENT, "--force"], root)
    pending = root / "pending"
    shutil.copytree(_feedback(root), pending)

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'course' / 'gradebook.db'}") as gb:
        grade = gb.find_grade(GRADED_ZERO, "vae_basics", "vae_basics", STUDENT)
        grade.manual_score = 0.0
        grade.needs_manual_grade = False
        gb.db.commit()
    graded = _feedback(root) / "vae_basics.html"
    return {"root": root, "pending": pending / "vae_basics.html", "graded": graded.read_text()}


def _text(page: str) -> str:
    """The visible text of an HTML page, tags removed and whitespace collapsed."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def _heading(page: str, grade_id: str) -> str:
    """The text of the panel heading of the graded cell ``grade_id``."""
    match = re.search(rf'<a name="{re.escape(grade_id)}"></a>\s*<div class="panel-heading">'
                      r"(.*?)</div>", page, flags=re.S)
    assert match, f"no heading for {grade_id}"
    return _text(match.group(1)).strip()


def test_the_score_line_says_what_is_final():
    """Does the score line keep the autograded score apart from written answers still to grade,
    count graded answers (a 0 included), and give one final total once all are graded?"""
    pending = ScoreSummary(auto_score=7, auto_max=10, written_total=3, pending_points=6)
    assert pending.line() == ("Autograded: 7 / 10 (final). Written answers: 0 of 3 graded "
                              "(6 points awaiting manual grading).")
    partly = ScoreSummary(auto_score=7, auto_max=10, written_total=3, written_graded=1,
                          written_score=0, written_graded_max=2, pending_points=4)
    assert partly.line() == ("Autograded: 7 / 10 (final). Written answers: 1 of 3 graded, "
                             "0 / 2 so far (4 points awaiting manual grading).")
    done = ScoreSummary(auto_score=7, auto_max=10, written_total=3, written_graded=3,
                        written_score=5, written_graded_max=6, late_penalty=1)
    assert done.line() == ("Score: 11 / 16 (final). Autograded: 7 / 10. Written answers: 5 / 6. "
                           "Late submission penalty: -1.")
    assert ScoreSummary(auto_score=2.5, auto_max=3).line() == "Autograded: 2.5 / 3 (final)."


def test_pending_written_answers_await_manual_grading(course):
    """Before anyone grades them, does every written answer read "awaiting manual grading"
    with its points, never "Score: 0 / n", and does the score line say so?"""
    page = course["pending"].read_text()
    cells = _grade_ids(course["root"])
    written = {g: p for g, (kind, solution, p) in cells.items() if kind == "markdown" and solution}
    assert len(written) >= 2, cells
    for grade_id, points in written.items():
        heading = _heading(page, grade_id)
        assert f"awaiting manual grading ({points:g} points)" in heading, heading
        assert "Score" not in heading, heading
    auto_max = sum(p for kind, solution, p in cells.values() if kind == "code" and not solution)
    line = re.search(r'<p class="score-line">(.*?)</p>', page).group(1)
    assert re.fullmatch(
        rf"Autograded: \d+ / {auto_max:g} \(final\)\. Written answers: 0 of {len(written)} "
        rf"graded \({sum(written.values()):g} points awaiting manual grading\)\.", line), line
    assert _heading(page, "kl-formula-tests").startswith("Grade cell"), "a test cell lost its score"
    assert "Score: 0 / 2" in _heading(page, "kl-formula-tests")


def test_an_answer_graded_zero_is_a_zero(course):
    """Once a grader gives a written answer 0, does it read "Score: 0 / n" and count as graded,
    while the others still await grading?"""
    page = course["graded"]
    cells = _grade_ids(course["root"])
    assert _heading(page, GRADED_ZERO).startswith("Student's answer Score: 0 / "
                                                  f"{cells[GRADED_ZERO][2]:g}")
    written = [g for g, (kind, solution, _) in cells.items() if kind == "markdown" and solution]
    assert f"Written answers: 1 of {len(written)} graded, 0 / {cells[GRADED_ZERO][2]:g} so far" \
        in page
    others = [g for g in written if g != GRADED_ZERO]
    assert all("awaiting manual grading" in _heading(page, g) for g in others)


def test_mathjax_is_copied_beside_the_page(course):
    """Does the page load MathJax from the folder beside it, with the CDN only as a fallback,
    and stay small?"""
    if not Path(FeedbackExporter().mathjax_dir, "MathJax.js").is_file():
        pytest.skip("Debian's libjs-mathjax is not installed (scripts/setup.sh installs it)")
    page = course["pending"]
    assert (page.parent / "mathjax" / "MathJax.js").is_file()
    assert re.search(r'src="mathjax/MathJax\.js\?config=TeX-AMS_SVG-full,Safe"', page.read_text())
    folder = sum(f.stat().st_size for f in (page.parent / "mathjax").rglob("*") if f.is_file())
    assert folder < 3_000_000, f"the MathJax copy is {folder} bytes"
    assert page.stat().st_size < 1_500_000


@in_chromium
def test_the_page_reads_well_offline(course):
    """In Chromium with the network off, does the page render every formula with the local
    MathJax (no raw $...$ left), show pending answers as awaiting grading, and wrap the long
    hint of a failed test instead of clipping it? Saves docs/feedback.png."""
    if not Path(FeedbackExporter().mathjax_dir, "MathJax.js").is_file():
        pytest.skip("Debian's libjs-mathjax is not installed (scripts/setup.sh installs it)")
    with offline_page(width=1000, height=800) as (page, network):
        page.goto(course["pending"].as_uri())
        page.wait_for_function("() => window.MathJax && MathJax.Hub", timeout=20_000)
        page.evaluate("() => new Promise(done => "
                      "MathJax.Hub.Register.StartupHook('End', done))")

        # formulas: MathJax's SVG output everywhere, and no $...$ left in the prose
        assert page.locator(".MathJax_SVG svg").count() >= 20
        prose = page.evaluate("() => Array.from(document.querySelectorAll('.text_cell_render'),"
                              " e => e.innerText).join('\\n')")
        raw = re.findall(r"\$[^$\n]+\$", prose)
        assert not raw, f"formulas left as TeX: {raw[:3]}"
        exercise = page.locator(".text_cell_render p", has_text="Show that for a univariate")
        assert exercise.locator(".MathJax_SVG").count() >= 2
        assert "$" not in exercise.inner_text()

        # written answers: awaiting, not 0
        heading = page.locator(f"a[name='{GRADED_ZERO}'] + div.panel-heading")
        assert "awaiting manual grading" in heading.inner_text()
        assert "awaiting manual grading" in page.locator("p.score-line").inner_text()

        # the failed test's hint: longer than a line, wrapped, nothing scrolls sideways
        hint = page.locator("xpath=//a[@name='kl-formula-tests']/ancestor::div[contains("
                            "concat(' ', @class, ' '), ' code_cell ')][1]"
                            "//div[contains(@class, 'output_error')]//pre")
        assert len(hint.inner_text()) > 120, hint.inner_text()
        box = hint.evaluate("e => ({scroll: e.scrollWidth, client: e.clientWidth, "
                            "height: e.getBoundingClientRect().height, "
                            "line: parseFloat(getComputedStyle(e).lineHeight)})")
        assert box["scroll"] <= box["client"], box
        assert box["height"] > 1.5 * box["line"], f"the hint did not wrap: {box}"
        assert page.evaluate("() => document.documentElement.scrollWidth "
                             "<= document.documentElement.clientWidth")
        assert not network, f"the page reached for the network: {network}"

        _screenshot(page)


def _screenshot(page) -> None:
    """docs/feedback.png: the score panel, Exercise 1 with its formulas, the pending answer and
    the failed test with its wrapped hint (the other cells are hidden for the picture)."""
    page.evaluate(f"""() => {{
        const keep = new Set();
        const cells = Array.from(document.querySelectorAll('#notebook-container > .cell'));
        const exercise = cells.findIndex(c => c.innerText.includes('Show that for a univariate'));
        keep.add(exercise);
        for (const name of ['{GRADED_ZERO}', 'kl-formula-tests']) {{
            keep.add(cells.findIndex(c => c.querySelector(`a[name="${{name}}"]`)));
        }}
        cells.forEach((c, i) => {{ if (!keep.has(i)) c.style.display = 'none'; }});
        document.querySelectorAll('#toc li').forEach((li, i) => {{
            if (i > 5) li.style.display = 'none'; }});
    }}""")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_generating_feedback_is_quiet(course):
    """Does ``nbgrader generate_feedback``, as an instructor types it (default log level),
    print what it did without one line per MathJax folder and without a warning?"""
    import os
    import subprocess
    import sys

    env = dict(os.environ, DPM_COURSE_ROOT=str(course["root"]),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    env.pop("NBGRADER_EXECUTION", None)
    shutil.rmtree(course["root"] / "course" / "feedback")  # a first run: nothing to replace
    run = subprocess.run([sys.executable, "-m", "nbgrader", "generate_feedback", "vae_basics"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert not [line for line in output.splitlines() if "Making directory" in line
                and "mathjax" in line], output
    assert "WARNING" not in output, output
    assert len(output.splitlines()) < 20, output
    assert (course["root"] / "course" / "feedback" / STUDENT / "vae_basics" / "mathjax").is_dir()
