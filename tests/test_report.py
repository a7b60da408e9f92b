"""A term of one assignment, end to end, and the class report (course.report) at its end.

One module-scoped course (``source/vae_basics`` only, the quickest assignment to grade) goes
through what an instructor does: the roster is loaded (``course.roster``), the hand-out is
built (``course.handout``, week 1), each student fills the hand-out's notebook, the LMS hands
the instructor one Canvas zip of the class (``<lastfirst>_<user id>_<file id>_<file>``),
``nbgrader zip_collect`` collects it by the roster's names (``course/lms.py``), the class
grader grades it (``course.grade.grade_class``, one worker, the kernels in bubblewrap when it
runs here, else unsandboxed: it is our own code), then ``nbgrader generate_feedback``,
``nbgrader export`` and the report. Six students:

* ``kl-sign``: the reference solution with the KL's sign flipped;
* ``two-mistakes``: the same flip, and ``exp(logvar)`` used as the standard deviation in
  ``reparametrise``;
* ``writer``: correct code of its own, written otherwise than the reference;
* ``copier``: ``writer``'s work with its variables renamed and its comments reworded;
* ``other``: correct code written independently of ``writer``;
* ``misnamed``: the reference handed in outside the LMS (by e-mail, put into
  ``course/submitted`` by hand) as ``vae_basics (1).ipynb``, which the grader does not find
  (no kernel runs): the submission to review.

The report's numbers are checked against the gradebook (nbgrader's API) and the autograded
notebooks, and its similarity section must list ``writer`` and ``copier`` but not ``writer``
and ``other``. The browser test renders the page in Debian's Chromium with the network off
and saves ``docs/class-report.png``, the picture in the README.

Wall time: about 3 minutes on two free cores, nearly all of it grading: five notebooks of 15
to 30 s, and about 30 s to register the assignment and start the cluster; the roster, the
hand-out, zip_collect, the feedback and the export take about 40 s together, the report a few
seconds.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from browser import in_chromium, offline_page
from course import handout, pipeline
from course.grade import grade_class
from course.merge import GRADING_RECORD, grading_record
from course.report import (ClassReport, collect, given_code, main, mistake_key,
                           similarities, solution_code, write_report)
from course.roster import main as roster_main
from course.sandbox import SandboxUnavailable, check_sandbox
from course.submission import Limits

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "source" / "vae_basics" / "vae_basics.ipynb"
ASSIGNMENT = {"name": "vae_basics", "notebooks": ["vae_basics"]}
SCREENSHOT = REPO / "docs" / "class-report.png"
_REGION = re.compile(r"[ \t]*### BEGIN SOLUTION\n.*?### END SOLUTION\n?", re.S)

#: a piece of the reference solution and what a student wrote instead
SIGN = ("return 0.5 * (logvar.exp()", "return -0.5 * (logvar.exp()")
STD = ("return mu + eps * torch.exp(0.5 * logvar)", "return mu + eps * logvar.exp()")
#: students' own code, in place of the solution region of each solution cell
WRITER = {
    "kl-solution": """\
    # closed form of KL(q || p) for a diagonal Gaussian q and p = N(0, I)
    var = torch.exp(logvar)
    kl_per_dim = -0.5 * (1 + logvar - mu ** 2 - var)
    return torch.sum(kl_per_dim, dim=-1)
""",
    "reparametrise-solution": """\
    std = torch.exp(0.5 * logvar)  # the standard deviation
    noise = torch.randn_like(std)
    return mu + noise * std
""",
    "loss-solution": """\
    # reconstruction: summed binary cross-entropy of each image
    bce = F.binary_cross_entropy(recon_x, x, reduction="none").sum(dim=1)
    kl = KL(mu, logvar)
    return torch.mean(bce + kl)
""",
    "kl-full-solution": """\
    k = mu_q.shape[-1]
    A = torch.linalg.solve_triangular(L_p, L_q, upper=False)
    d = torch.linalg.solve_triangular(L_p, (mu_p - mu_q)[..., None], upper=False)[..., 0]
    logdet_p = torch.log(torch.diagonal(L_p, dim1=-2, dim2=-1)).sum(-1) * 2
    logdet_q = torch.log(torch.diagonal(L_q, dim1=-2, dim2=-1)).sum(-1) * 2
    return (A.square().sum((-2, -1)) + d.square().sum(-1) - k + logdet_p - logdet_q) / 2
""",
}
COPIER = {
    "kl-solution": """\
    sigma2 = torch.exp(logvar)   # variance
    per_coordinate = -0.5 * (1 + logvar - mu ** 2 - sigma2)
    return torch.sum(per_coordinate, dim=-1)  # sum over latent units
""",
    "reparametrise-solution": """\
    s = torch.exp(0.5 * logvar)
    e = torch.randn_like(s)  # standard normal noise
    return mu + e * s
""",
    "loss-solution": """\
    rec = F.binary_cross_entropy(recon_x, x, reduction="none").sum(dim=1)
    divergence = KL(mu, logvar)
    return torch.mean(rec + divergence)  # negative ELBO, batch mean
""",
    "kl-full-solution": """\
    size = mu_q.shape[-1]
    B = torch.linalg.solve_triangular(L_p, L_q, upper=False)  # whitened factor
    e = torch.linalg.solve_triangular(L_p, (mu_p - mu_q)[..., None], upper=False)[..., 0]
    ld_p = torch.log(torch.diagonal(L_p, dim1=-2, dim2=-1)).sum(-1) * 2
    ld_q = torch.log(torch.diagonal(L_q, dim1=-2, dim2=-1)).sum(-1) * 2
    return (B.square().sum((-2, -1)) + e.square().sum(-1) - size + ld_p - ld_q) / 2
""",
}
OTHER = {
    "kl-solution": """\
    s2 = logvar.exp()
    terms = s2 + mu * mu - torch.log(s2) - 1
    return terms.sum(-1) / 2
""",
    "reparametrise-solution": """\
    sigma = logvar.mul(0.5).exp()
    return torch.addcmul(mu, sigma, torch.randn_like(sigma))
""",
    "loss-solution": """\
    log_px = (x * torch.log(recon_x) + (1 - x) * torch.log(1 - recon_x)).sum(-1)
    neg_elbo = KL(mu, logvar) - log_px
    return neg_elbo.mean()
""",
    "kl-full-solution": """\
    cov_p = L_p @ L_p.transpose(-1, -2)
    cov_q = L_q @ L_q.transpose(-1, -2)
    diff = (mu_p - mu_q).unsqueeze(-1)
    tr = torch.linalg.solve(cov_p, cov_q).diagonal(dim1=-2, dim2=-1).sum(-1)
    maha = (diff.transpose(-1, -2) @ torch.linalg.solve(cov_p, diff)).reshape(tr.shape)
    return 0.5 * (tr + maha - mu_q.size(-1) + torch.logdet(cov_p) - torch.logdet(cov_q))
""",
}
CLASS = {
    "kl-sign": {"kl-solution": SIGN},
    "two-mistakes": {"kl-solution": SIGN, "reparametrise-solution": STD},
    "writer": WRITER,
    "copier": COPIER,
    "other": OTHER,
}
MISNAMED = "misnamed"


#: the roster: student id -> (first name, last name); Canvas names files by "lastfirst"
NAMES = {"kl-sign": ("Karla", "Sign"), "two-mistakes": ("Tomás", "Dos-Errores"),
         "writer": ("Wren", "Writer"), "copier": ("Cody", "Copier"), "other": ("Otto", "Other"),
         MISNAMED: ("Mia", "Named")}


def _notebook(changes: dict, handed_out: Path = None):
    """The student's notebook: the hand-out's release notebook (by default the repository's
    release) with each solution cell filled as the reference solution fills it, then changed:
    ``(old, new)`` edits the reference solution, a string is the student's own code in place
    of the solution region."""
    solutions = {c.metadata.nbgrader["grade_id"]: c.source for c in nbformat.read(SOURCE, 4).cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
    nb = nbformat.read(handed_out or REPO / "release" / "vae_basics" / "vae_basics.ipynb", 4)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in solutions:
            cell.source = solutions[grade_id]
        change = changes.get(grade_id)
        if isinstance(change, tuple):
            assert change[0] in cell.source, change
            cell.source = cell.source.replace(*change)
        elif change is not None:
            cell.source = _REGION.sub(lambda _: change, cell.source)
        if grade_id in solutions:  # a student's notebook has no solution markers
            cell.source = re.sub(r"[ \t]*### (BEGIN|END) SOLUTION\n?", "", cell.source)
    return nb


def _limits() -> Limits:
    """Sandboxed when bubblewrap runs here, else explicitly not (our own code)."""
    try:
        check_sandbox()
        return Limits()
    except SandboxUnavailable:
        return Limits(sandbox=False)


@pytest.fixture(scope="module")
def term(tmp_path_factory) -> dict:
    """The course root after the roster, the hand-out and zip_collect; what each step said."""
    root = tmp_path_factory.mktemp("term")
    shutil.copytree(REPO / "source" / "vae_basics", root / "source" / "vae_basics")
    (root / "course").mkdir()
    pipeline.generate_release(root, [ASSIGNMENT])  # a course has its release/ (committed here)
    roster = root / "students.csv"
    roster.write_text("id,first_name,last_name,email\n" + "".join(
        f"{i},{first},{last},{i}@uni.example.org\n" for i, (first, last) in NAMES.items()),
        encoding="utf-8")
    assert roster_main([str(roster), "--root", str(root)]) == 0

    stage = handout.build(root / "handout", ["vae_basics"])
    handed_out = root / "handout" / "assignments" / "vae_basics" / "vae_basics.ipynb"
    assert stage.open == ["vae_basics"] and handed_out.is_file()

    archive = root / "course" / "downloaded" / "vae_basics" / "archive"
    archive.mkdir(parents=True)
    with zipfile.ZipFile(archive / "submissions.zip", "w") as zf:
        for n, (student, changes) in enumerate(CLASS.items()):
            first, last = NAMES[student]
            lastfirst = re.sub(r"\W", "", f"{last}, {first}".lower())
            zf.writestr(f"{lastfirst}_{1000 + n}_{5000 + n}_vae_basics.ipynb",
                        nbformat.writes(_notebook(changes, handed_out)))
    collected = pipeline_nbgrader(["zip_collect", "vae_basics", "--force"], root)
    misnamed = root / "course" / "submitted" / MISNAMED / "vae_basics"
    misnamed.mkdir(parents=True)
    nbformat.write(_notebook({}, handed_out), misnamed / "vae_basics (1).ipynb")
    return {"root": root, "collected": collected, "handed_out": handed_out}


@pytest.fixture(scope="module")
def graded(term) -> tuple:
    """The course root, graded (then its feedback and export written), and
    ``{student: Result}``."""
    root = term["root"]
    results = grade_class(root, [ASSIGNMENT], limits=_limits(), workers=1, progress=False)
    pipeline_nbgrader(["generate_feedback", "vae_basics", "--force"], root)
    pipeline_nbgrader(["export"], root)
    return root, {r.student: r for r in results}


def pipeline_nbgrader(args: list, root: Path) -> str:
    """Run an nbgrader command on the course at ``root`` as the instructor types it (default
    log level; nbgrader_config.py from the repository); its output. Fails when nbgrader does."""
    env = dict(os.environ, DPM_COURSE_ROOT=str(root),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    env.pop("NBGRADER_EXECUTION", None)
    run = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


def test_the_lms_zip_is_collected_by_the_roster_s_names(term):
    """Does zip_collect put each student's notebook from the Canvas zip into the student's own
    folder (matched by name, accents and hyphens included), exactly as handed in?"""
    root = term["root"]
    for student, changes in CLASS.items():
        path = root / "course" / "submitted" / student / "vae_basics" / "vae_basics.ipynb"
        assert path.is_file(), (student, term["collected"])
        assert nbformat.read(path, 4) == _notebook(changes, term["handed_out"]), student
    warnings = [line for line in term["collected"].splitlines() if "WARNING" in line
                and "Directory not found. Creating" not in line]  # nbgrader's way to say mkdir
    assert warnings == [], term["collected"]


def test_every_student_gets_feedback_and_a_row_in_the_export(graded):
    """After grading: a feedback page for every student (the grader's own record not among
    its files), and a grades.csv in course/ whose scores are the gradebook's."""
    root, results = graded
    for student in results:
        folder = root / "course" / "feedback" / student / "vae_basics"
        assert (folder / "vae_basics.html").is_file(), student
        assert not (folder / GRADING_RECORD).exists()
    with open(root / "course" / "grades.csv", newline="") as f:
        rows = {r["student_id"]: float(r["score"]) for r in csv.DictReader(f)}
    with Gradebook(f"sqlite:///{root / 'course' / 'gradebook.db'}") as gb:
        expected = {s.student.id: s.score for s in gb.find_assignment("vae_basics").submissions}
    assert rows == expected and set(rows) == set(NAMES)


@pytest.fixture(scope="module")
def report(graded) -> ClassReport:
    return collect(graded[0], "vae_basics")


def _exercise(report: ClassReport, name: str):
    return next(e for e in report.exercises if e.name == name)


def test_grading_is_recorded_beside_the_autograded_notebook(graded):
    """Does merge_result write each result's status, reasons, notes, time and memory into
    grading.json beside the autograded notebook?"""
    root, results = graded
    assert set(results) == {*CLASS, MISNAMED}
    for student, result in results.items():
        folder = root / "course" / "autograded" / student / "vae_basics"
        assert (folder / "vae_basics.ipynb").is_file()
        record = json.loads((folder / GRADING_RECORD).read_text())
        assert record == grading_record(result)
        assert set(record) == {"status", "reasons", "notes", "seconds", "peak_memory"}
        assert record["status"] == ("failed" if student == MISNAMED else "graded"), record


def test_points_per_exercise_are_the_gradebook_s(graded, report):
    """Are the points of every graded cell and student those of the gradebook, the cells in
    the notebook's order, and the written answers nobody graded yet pending, not 0?"""
    root, _ = graded
    expected = {}
    with Gradebook(f"sqlite:///{root / 'course' / 'gradebook.db'}") as gb:
        for submission in gb.find_assignment("vae_basics").submissions:
            for grade in submission.notebooks[0].grades:
                pending = grade.auto_score is None and grade.manual_score is None
                expected.setdefault(grade.name, {})[submission.student.id] = (
                    None if pending else grade.score)
    source = nbformat.read(SOURCE, 4)
    order = [c.metadata.nbgrader["grade_id"] for c in source.cells
             if c.metadata.get("nbgrader", {}).get("grade")]
    assert [e.name for e in report.exercises] == order
    assert {e.name: e.scores for e in report.exercises} == expected
    kl = _exercise(report, "kl-formula-tests")
    assert (kl.max_score, kl.count("full"), kl.count("none")) == (2, 3, 3)
    assert kl.scores["kl-sign"] == kl.scores["two-mistakes"] == kl.scores[MISNAMED] == 0
    written = _exercise(report, "question-elbo")
    assert not written.autograded and written.count("pending") == len(CLASS)


def test_mistakes_are_counted_by_the_mistake_they_name(graded, report):
    """Is each named mistake counted once per student who made it, the same mistake on
    different random inputs one group, with a message a student really got as the example,
    and does every student who lost a test cell's points appear under one of its mistakes?"""
    root, _ = graded
    kl = _exercise(report, "kl-formula-tests").mistakes
    assert [m.students for m in kl] == [["kl-sign", "two-mistakes"]]
    assert "the sign is flipped" in kl[0].text
    assert "by up to …" in kl[0].text  # the two students' inputs differed, and so did the numbers
    nb = nbformat.read(root / "course" / "autograded" / "kl-sign" / "vae_basics" /
                       "vae_basics.ipynb", 4)
    errors = [o.evalue for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")
              for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == [kl[0].example]
    z = _exercise(report, "reparametrise-distribution-tests").mistakes
    assert [m.students for m in z] == [["two-mistakes"]]
    assert "std = logvar.exp() is the variance" in z[0].text
    for e in (e for e in report.exercises if e.autograded):
        lost = {s for s, score in e.scores.items() if score < e.max_score} - {MISNAMED}
        assert {s for m in e.mistakes for s in m.students} == lost, e.name
        if e.name not in ("kl-formula-tests", "reparametrise-distribution-tests"):
            assert not e.mistakes, e.name


def test_a_mistake_on_other_inputs_keeps_its_key():
    """Do messages that differ only in their numbers share a key, and messages that name
    different mistakes not?"""
    flipped = "KL differs from 0.5 * (sigma^2 + mu^2 - 1 - log sigma^2) by up to {} (on cpu): " \
              "the sign is flipped: a KL divergence is never negative"
    assert mistake_key(flipped.format("5.04")) == mistake_key(flipped.format("4.676")) \
        == mistake_key(flipped.format("1.2e-3").replace(" ", "  "))
    assert mistake_key(flipped.format("5.04")) != mistake_key(
        flipped.format("5.04").replace("the sign is flipped", "the factor 1/2 is missing"))


def test_review_lists_the_submission_that_was_not_graded(report):
    """Does the review section hold exactly the submission the grader could not run, with
    its reason, and every graded one a time and (in the sandbox) a peak memory?"""
    review = [s for s in report.submissions.values() if s.needs_review]
    assert [s.student for s in review] == [MISNAMED]
    assert review[0].status == "failed"
    assert "rename it to vae_basics.ipynb" in review[0].reasons["vae_basics"]
    for student in CLASS:
        sub = report.submissions[student]
        assert sub.recorded and sub.seconds > 1
        assert sub.peak_memory > 0 or not _limits().sandbox


def test_a_disguised_copy_is_listed_and_independent_work_is_not(graded, report):
    """Is the pair whose code differs only in names and comments listed (as a text diff would
    not see it), and the pair of independent correct solutions not, the code every student
    got left out of both?"""
    root, _ = graded
    pairs = {(p.a, p.b): p for p in report.pairs}
    copy, independent = pairs[("copier", "writer")], pairs[("other", "writer")]
    assert copy in report.listed and copy.similarity > 0.9
    assert independent not in report.listed and independent.similarity < 0.3
    given = given_code(nbformat.read(SOURCE, 4))
    code = {s: solution_code(nbformat.read(root / "course" / "submitted" / s / "vae_basics" /
                                           "vae_basics.ipynb", 4), given)
            for s in ("writer", "copier")}
    lines = [{ln.strip() for ln in c.splitlines() if ln.strip() and not ln.startswith("# ")}
             for c in code.values()]
    assert not lines[0] & lines[1], "the copy should share no line with the original"
    assert difflib.SequenceMatcher(None, *code.values()).ratio() < 0.6
    assert "<mark>" in copy.code_a and "def KL" not in copy.code_a + copy.code_b
    assert not independent.code_a  # only the listed pairs carry their code


def test_idioms_that_many_students_write_are_not_evidence():
    """Is a line that more than COMMON students write alike ignored, so that only the pair
    who share more than it is listed?"""
    idiom = "return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)\n"
    codes = {f"s{i:02d}": idiom + f"return f{i}(x)" for i in range(12)}
    shared = ("h = torch.relu(layer(x)).sum(-1)\n"
              "return torch.where(h > 0, h.log(), 2 * h).mean() + bias.norm(p=1)\n")
    codes["s00"] += "\n" + shared
    codes["s01"] += "\n" + shared.replace("h", "hidden").replace("bias", "b0")
    listed = [(p.a, p.b) for p in similarities(codes) if p.similarity >= 0.6]
    assert listed == [("s00", "s01")]
    assert len([p for p in similarities(codes, common=100) if p.similarity >= 0.6]) == 66


def test_the_command_writes_the_page_and_refuses_clearly(graded, tmp_path, capsys,
                                                          monkeypatch):
    """Does ``python -m course.report`` write the page and its figures (by default into
    course/reports/), and exit 2 with the command to run for an assignment nobody handed in,
    and with ``pip install copydetect`` when that is missing?"""
    root, _ = graded
    assert main(["vae_basics", "--root", str(root)]) == 0
    out = root / "course" / "reports" / "vae_basics"
    assert {p.name for p in out.iterdir()} == {"index.html", "points.png", "resources.png",
                                               "similarity.png"}
    page = (out / "index.html").read_text()
    row = re.search(r'<tr id="points-kl-formula-tests">(.*?)</tr>', page).group(1)
    assert re.findall(r'<td class="n">([^<]*)</td>', row) == ["2", "1.00", "3", "", "3", ""]
    assert main(["dpm2_generative", "--root", str(root), "--out", str(tmp_path)]) == 2
    assert "python -m course.grade dpm2_generative" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "copydetect", None)
    assert main(["vae_basics", "--root", str(root), "--out", str(tmp_path / "x")]) == 2
    assert "pip install copydetect" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@in_chromium
def test_the_page_reads_well_in_chromium(report, tmp_path):
    """In Chromium with the network off, does the page load every figure, fit its width, show
    the counted mistakes, the submission to review and the listed pair with its shared code
    marked? Saves docs/class-report.png."""
    page_path = write_report(report, tmp_path / "report")
    with offline_page(width=1200, height=900) as (page, network):
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("() => Array.from(document.images, i => [i.src.split('/').pop(),"
                               " i.complete && i.naturalWidth > 0])")
        assert sorted(images) == [["points.png", True], ["resources.png", True],
                                  ["similarity.png", True]]
        assert page.evaluate("() => document.documentElement.scrollWidth "
                             "<= document.documentElement.clientWidth")
        first = page.locator("#mistakes-kl-formula-tests li.mistake").first
        assert first.get_attribute("data-count") == "2"
        assert "kl-sign, two-mistakes" in first.inner_text()
        assert "the sign is flipped" in first.locator("strong").inner_text()
        assert "failed" in page.locator("#review-misnamed").inner_text()
        pair = page.locator("#pair-copier-writer")
        assert pair.is_visible() and pair.locator("mark").count() >= 2
        assert page.locator("#pair-other-writer").count() == 0
        assert "never a penalty" in page.locator("#similarity").inner_text()
        assert not network, f"the page reached for the network: {network}"
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_what_students_wrote_reaches_the_page_only_as_text(tmp_path):
    """Are failure messages, reasons and code, which students control, escaped on the page?"""
    from course.report import Exercise, Mistake, Submission

    attack = '<script>alert("x")</script>'
    exercise = Exercise("nb", "kl-formula-tests", "KL", True, 2.0, {"a": 0.0, "b": 0.0},
                        [Mistake("k", f"KL raised ValueError: {attack}", attack, ["a", "b"])])
    code = f"x = '{attack}'\ny = torch.exp(x) * torch.randn_like(x) + 0.5 * x.sum(-1)\n"
    report = ClassReport("vae_basics", "", [exercise], {
        "a": Submission("a", "stopped", {"nb": attack}),
        "b": Submission("b", "graded", seconds=3.0)}, similarities({"a": code, "b": code}))
    assert report.listed
    page = write_report(report, tmp_path).read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
