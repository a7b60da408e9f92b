"""The class report of an assignment: what went wrong across the class, on one page.

Usage (from the repository root, after ``python -m course.grade ASSIGNMENT``)::

    python -m course.report vae_basics                # course/reports/vae_basics/index.html
    python -m course.report vae_basics --root ROOT --out DIR --threshold 0.5

The page (HTML, its figures as PNG files beside it, nothing fetched from the network) shows

* the points of each graded cell (an *exercise* here), from the gradebook through nbgrader's
  ``Gradebook`` API;
* for each test cell, the mistakes its hidden tests named, ranked by how many students made
  them: the error outputs of the test cells of the autograded notebooks, grouped by
  :func:`mistake_key`, the message with its numbers taken out, so that one mistake met on
  different random inputs is one group;
* the submissions a person should look at: a status other than "graded", or reasons (from
  the ``grading.json`` that :func:`course.merge.merge_result` writes beside each submission);
* the grading time and the peak memory of each submission;
* the pairs of students whose solution cells are alike (:func:`similarities`), found with
  copydetect's winnowing (Schleimer, Wilkerson & Aiken 2003, the method of MOSS) on tokenised
  code: names become one symbol and comments are dropped, so neither hides a copy. Only the
  solution cells count, and the code they give to everyone is removed as boilerplate. A pair
  is a reason to read two notebooks side by side, never a penalty.
"""

from __future__ import annotations

import argparse
import html
import io
import itertools
import json
import re
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Optional

__all__ = ["THRESHOLD", "NOISE", "COMMON", "NO_MESSAGE", "Mistake", "Exercise", "Submission",
           "Pair", "ClassReport", "mistake_key", "failure_messages", "solution_code", "given_code",
           "similarities", "collect", "write_report", "main"]

REPO = Path(__file__).resolve().parent.parent
#: a pair is listed when at least this share of one student's solution code is in the other's:
#: a copy with new names and comments scores about 1; independent work shares only the idioms
#: an exercise leaves little choice about (two of vae_basics' three exercises written as the
#: same well-known example score about 0.6, until COMMON students write them)
THRESHOLD = 0.6
#: copydetect's noise threshold: shared runs of tokenised code shorter than this many
#: characters (8 to 12 tokens) are not evidence; its guarantee threshold is the same (window 1)
NOISE = 25
#: a passage in the code of more than this many students is ignored, as MOSS's -m option
#: (default 10) does: what many students write alike is the exercise's idiom, not a copy
COMMON = 10
#: the group of students who lost a test cell's points without a message from its tests
NO_MESSAGE = ("no message from the tests: the cell did not run (see the submissions that "
              "need review)")
_NUMBER = r"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?!\w)"
_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
_REGION = re.compile(r"^([ \t]*)### BEGIN SOLUTION\n.*?^[ \t]*### END SOLUTION[ \t]*$",
                     re.S | re.M)
_STATUS = {
    "stopped": "a limit or a crash ended a notebook early; later cells score 0",
    "failed": "a notebook could not be graded at all; its cells score 0",
    "error": "the grader itself failed (not the student's doing): grade it again",
    "graded": "graded to the end; the reasons say what else happened",
}


@dataclass
class Mistake:
    """A mistake that the hidden tests of one cell named, and who made it.

    Attributes:
        key: the group (:func:`mistake_key`); "" for :data:`NO_MESSAGE`.
        text: the message as the class met it: each number that differed between the
            students' messages is "…".
        example: one student's message, verbatim.
        students: who made it, sorted.
    """

    key: str
    text: str
    example: str
    students: list


@dataclass
class Exercise:
    """A graded cell of the assignment and what the class made of it.

    Attributes:
        notebook, name: the notebook and the grade id of the cell.
        title: what it grades: the names its exercise defines (``KL``) for a test cell.
        autograded: whether hidden tests score it (else a person does).
        max_score: its points.
        scores: ``{student: points}``; None where nobody has graded the answer yet.
        mistakes: the named mistakes, most students first.
    """

    notebook: str
    name: str
    title: str
    autograded: bool
    max_score: float
    scores: dict = field(default_factory=dict)
    mistakes: list = field(default_factory=list)

    def count(self, outcome: str) -> int:
        """How many students got "full" marks, "part" of them, "none", or are "pending"."""
        return sum(_outcome(s, self.max_score) == outcome for s in self.scores.values())

    def mean(self) -> Optional[float]:
        """The mean of the scores given so far (None if there is none)."""
        given = [s for s in self.scores.values() if s is not None]
        return sum(given) / len(given) if given else None


@dataclass
class Submission:
    """How grading one submission went, from its ``grading.json`` (``recorded`` is False
    for one graded before that file existed: then the rest is unknown)."""

    student: str
    status: str = "graded"
    reasons: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    seconds: float = 0.0
    peak_memory: int = 0
    recorded: bool = True

    @property
    def needs_review(self) -> bool:
        return self.status != "graded" or bool(self.reasons)


@dataclass
class Pair:
    """Two students' solution code compared.

    Attributes:
        a, b: the students.
        share_a, share_b: the share of a's tokenised code found in b's, and of b's in a's.
        code_a, code_b: each one's solution code as HTML, what they share in ``<mark>``
            (filled in only for the pairs the report lists).
    """

    a: str
    b: str
    share_a: float
    share_b: float
    code_a: str = ""
    code_b: str = ""

    @property
    def similarity(self) -> float:
        return max(self.share_a, self.share_b)


@dataclass
class ClassReport:
    """Everything the page shows; ``pairs`` holds every pair, most similar first."""

    assignment: str
    title: str
    exercises: list
    submissions: dict
    pairs: list
    threshold: float = THRESHOLD

    @property
    def listed(self) -> list:
        """The pairs at or above the threshold."""
        return [p for p in self.pairs if p.similarity >= self.threshold]


def _outcome(score: Optional[float], max_score: float) -> str:
    if score is None:
        return "pending"
    return "full" if score >= max_score else "part" if score > 0 else "none"


def _copydetect():
    try:
        import copydetect
    except ImportError:
        raise ModuleNotFoundError(
            "the class report compares solution code with copydetect, which is not installed: "
            "pip install copydetect", name="copydetect") from None
    return copydetect


# -- what the hidden tests said --------------------------------------------------------------

def mistake_key(message: str) -> str:
    """The group of a failure message: its numbers (values, shapes, tolerances met) each
    replaced by "#", its white space collapsed. The judges draw fresh inputs for every run,
    so the same mistake reads "by up to 5.04" for one student and "by up to 4.676" for the
    next; their keys are equal.

    >>> mistake_key("KL differs by up to 5.04 (on cpu): the sign is flipped")
    'KL differs by up to # (on cpu): the sign is flipped'
    """
    return re.sub(_NUMBER, "#", " ".join(message.split()))


def _as_met(messages: list) -> str:
    """The messages of one group as one text: the numbers on which they agree, "…" for the
    others."""
    parts = [re.split(f"({_NUMBER})", " ".join(m.split())) for m in messages]
    return "".join(p[0] if i % 2 == 0 or len({q[i] for q in parts}) == 1 else "…"
                   for i, p in enumerate(zip(*parts)))


def failure_messages(notebook) -> dict:
    """``{grade id: message}`` of the test cells of an autograded notebook that failed: the
    first error output of each (the judge's message; other errors with their type)."""
    found = {}
    for cell in notebook.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade") or meta.get("solution"):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                ename = output.get("ename", "")
                evalue = " ".join(str(output.get("evalue") or "").split())
                found[meta["grade_id"]] = (f"{ename} (the test gave no message)" if not evalue
                                           else evalue if ename == "AssertionError"
                                           else f"{ename}: {evalue}")
                break
    return found


def _mistakes(scores: dict, max_score: float, messages: dict) -> list:
    """The mistakes of a test cell, most students first, from ``{student: points}`` and
    ``{student: message}`` of the failures; who lost points without a message is a group too."""
    groups: dict = {}
    for student in sorted(messages):
        groups.setdefault(mistake_key(messages[student]), []).append(student)
    found = [Mistake(key, _as_met([messages[s] for s in who]), messages[who[0]], who)
             for key, who in groups.items()]
    silent = sorted(s for s, score in scores.items()
                    if s not in messages and _outcome(score, max_score) in ("part", "none"))
    if silent:
        found.append(Mistake("", NO_MESSAGE, NO_MESSAGE, silent))
    return sorted(found, key=lambda m: (-len(m.students), m.key == "", m.key))


# -- the solution code -----------------------------------------------------------------------

def _solution_cells(notebook) -> list:
    return [c for c in notebook.cells if c.cell_type == "code"
            and c.metadata.get("nbgrader", {}).get("solution")]


def given_code(source_notebook) -> dict:
    """``{grade id: (before, after)}``: what each solution cell of a source notebook gives to
    every student around its solution region (a ``def`` line and its docstring, say)."""
    given = {}
    for cell in _solution_cells(source_notebook):
        match = _REGION.search(cell.source)
        if match:
            given[cell.metadata.nbgrader["grade_id"]] = (cell.source[:match.start()],
                                                         cell.source[match.end():])
    return given


def solution_code(notebook, given: Optional[dict] = None) -> str:
    """The student's code in a notebook's solution cells (nbgrader ``solution: true`` code
    cells), each after a comment with its grade id; what ``given`` (:func:`given_code`) says
    the cell gave everyone is cut off where the student left it as it was."""
    chunks = []
    for cell in _solution_cells(notebook):
        name, code = cell.metadata.nbgrader.get("grade_id", ""), cell.source
        before, after = (given or {}).get(name, ("", ""))
        if before.strip() and code.startswith(before):
            code = code[len(before):]
        if after.strip() and code.endswith(after):
            code = code[:-len(after)]
        chunks.append(f"# {name}\n{textwrap.dedent(code).strip()}")
    return "\n\n".join(chunks)


def _boilerplate(given: dict) -> str:
    """The given code with the release's stub in each solution region, as one text."""
    return "\n\n".join(f"{before}{_STUB}\n{after}" for before, after in given.values())


def similarities(codes: dict, boilerplate: str = "", noise: int = NOISE,
                 threshold: float = THRESHOLD, common: int = COMMON) -> list:
    """Every pair of students compared by their solution code, most similar first.

    Args:
        codes: ``{student: solution code}`` (:func:`solution_code`).
        boilerplate: code that every student got: its fingerprints are evidence of nothing.
        noise: copydetect's noise threshold (:data:`NOISE`).
        threshold: the pairs at least this similar carry their code as HTML, what they share
            marked (``Pair.code_a``, ``code_b``).
        common: passages found in the code of more than this many students are ignored too
            (:data:`COMMON`).

    Raises:
        ModuleNotFoundError: copydetect is not installed.
    """
    copydetect = _copydetect()

    def fingerprint(code, hashes=None):
        return copydetect.CodeFingerprint("solution.py", noise, 1, boilerplate=hashes,
                                          language="python", fp=io.StringIO(code))

    hashes = list(fingerprint(boilerplate).hashes) if boilerplate.strip() else None
    prints = {s: fingerprint(code, hashes) for s, code in codes.items()}
    seen = Counter(h for fp in prints.values() for h in fp.hashes)
    idioms = [h for h, n in seen.items() if n > common]
    if idioms:
        prints = {s: fingerprint(code, (hashes or []) + idioms) for s, code in codes.items()}
    pairs = []
    for a, b in itertools.combinations(sorted(prints), 2):
        _, (share_a, share_b), slices = copydetect.compare_files(prints[a], prints[b])
        pair = Pair(a, b, float(share_a), float(share_b))
        if pair.similarity >= threshold:
            pair.code_a, pair.code_b = (
                copydetect.utils.highlight_overlap(prints[s].raw_code, cut, "<mark>", "</mark>",
                                                   escape_html=True)[0]
                for s, cut in zip((a, b), slices))
        pairs.append(pair)
    return sorted(pairs, key=lambda p: (-p.similarity, p.a, p.b))


# -- the class, from the course's files ------------------------------------------------------

def _graded_cells(root: Path, assignment: str) -> dict:
    """``{(notebook, grade id): (title, autograded)}`` of the source notebooks, in their order."""
    import nbformat

    from course.exercises import EXERCISES

    named, cells = EXERCISES.get(assignment, {}), {}
    for path in sorted((root / "source" / assignment).glob("*.ipynb")):
        exercise = ""
        for cell in nbformat.read(path, 4).cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("solution") and cell.cell_type == "code":
                exercise = ", ".join(named.get(meta.get("grade_id"), {})) or meta.get("grade_id")
            if meta.get("grade") or meta.get("task"):
                tested = cell.cell_type == "code" and not meta.get("solution")
                cells[(path.stem, meta["grade_id"])] = (
                    exercise if tested else "task" if meta.get("task") else "written answer",
                    tested)
    return cells


def _record(folder: Path, student: str) -> Submission:
    from course.merge import GRADING_RECORD

    try:
        data = json.loads((folder / GRADING_RECORD).read_text())
    except (OSError, ValueError):  # graded before the grader wrote it
        return Submission(student, status="unknown", recorded=False)
    return Submission(student, data.get("status", "unknown"), data.get("reasons") or {},
                      data.get("notes") or {}, float(data.get("seconds") or 0),
                      int(data.get("peak_memory") or 0))


def collect(root: Path, assignment: str, threshold: float = THRESHOLD,
            noise: int = NOISE) -> ClassReport:
    """Read the class's results of ``assignment`` from the course at ``root``.

    Raises:
        ValueError: the gradebook holds no graded submission of ``assignment``.
        ModuleNotFoundError: copydetect is not installed.
    """
    import nbformat
    from nbgrader.api import Gradebook, MissingEntry

    _copydetect()  # before the work, not after it
    root = Path(root).resolve()
    db = root / "course" / "gradebook.db"
    hint = f"grade it first: python -m course.grade {assignment}"
    if not db.is_file():
        raise ValueError(f"there is no gradebook at {db}: {hint}")
    cells = _graded_cells(root, assignment)
    exercises = {}
    with Gradebook(f"sqlite:///{db}") as gb:
        try:
            submissions = gb.find_assignment(assignment).submissions
        except MissingEntry:
            submissions = []
        for submission in submissions:
            for notebook in submission.notebooks:
                for grade in notebook.grades:
                    title, tested = cells.get((notebook.name, grade.name), ("", True))
                    ex = exercises.setdefault((notebook.name, grade.name), Exercise(
                        notebook.name, grade.name, title, tested, float(grade.max_score)))
                    pending = grade.auto_score is None and grade.manual_score is None
                    ex.scores[submission.student.id] = None if pending else float(grade.score)
        students = sorted(s.student.id for s in submissions)
    if not students:
        raise ValueError(f"the gradebook {db} holds no submission of {assignment!r}: {hint}")
    order = list(cells)
    exercises = [exercises[k] for k in sorted(exercises, key=lambda k: (
        order.index(k) if k in order else len(order), k))]

    autograded = root / "course" / "autograded"
    records = {s: _record(autograded / s / assignment, s) for s in students}
    # a submission the grader could not run, or zeroed for tampering, made no mistakes: its
    # test cells carry the grader's message, and the review section says why
    counted = [s for s in students if records[s].status in ("graded", "stopped", "unknown")]
    messages, codes, boilerplate = {}, {s: [] for s in students}, []
    for source in sorted((root / "source" / assignment).glob("*.ipynb")):
        given = given_code(nbformat.read(source, 4))
        boilerplate.append(_boilerplate(given))
        for student in students:
            path = autograded / student / assignment / source.name
            if path.is_file():
                nb = nbformat.read(path, 4)
                codes[student].append(solution_code(nb, given))
                if student in counted:
                    for name, message in failure_messages(nb).items():
                        messages.setdefault((source.stem, name), {})[student] = message
    for ex in exercises:
        if ex.autograded:
            ex.mistakes = _mistakes({s: ex.scores.get(s) for s in counted}, ex.max_score,
                                    messages.get((ex.notebook, ex.name), {}))
    pairs = similarities({s: "\n\n".join(c) for s, c in codes.items()}, "\n\n".join(boilerplate),
                         noise, threshold)
    return ClassReport(assignment, _title(root, assignment), exercises, records, pairs,
                       threshold)


def _title(root: Path, assignment: str) -> str:
    path = root / "course" / "assignments.json"
    if path.is_file():
        for a in json.loads(path.read_text()).get("assignments", []):
            if a.get("name") == assignment:
                return a.get("title", "")
    return ""


# -- the page --------------------------------------------------------------------------------

_COLOURS = {"full": "#2a9d8f", "part": "#e9c46a", "none": "#e76f51", "pending": "#c3c8d0"}
_OUTCOMES = {"full": "full marks", "part": "part of the points", "none": "no points",
             "pending": "awaiting grading"}


def _figure(width: float, height: float):
    """A figure of its own (no pyplot: no global state, no GUI backend)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=144, layout="constrained")


def _points_figure(report: ClassReport, path: Path) -> None:
    """One bar per graded cell: how many students got full marks, part, none, or wait."""
    import seaborn as sns

    exercises = report.exercises
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        fig = _figure(8.5, 0.36 * len(exercises) + 1.1)
        ax = fig.subplots()
        left = [0] * len(exercises)
        for outcome, colour in _COLOURS.items():
            counts = [e.count(outcome) for e in exercises]
            bars = ax.barh(range(len(exercises)), counts, left=left, color=colour, height=0.72,
                           label=_OUTCOMES[outcome], edgecolor="white", linewidth=0.8)
            ax.bar_label(bars, labels=[str(c) if c else "" for c in counts],
                         label_type="center", fontsize=8, color="#1f2933")
            left = [a + b for a, b in zip(left, counts)]
        ax.set_yticks(range(len(exercises)), [
            f"{e.name} ({e.max_score:g} pt{'s' if e.max_score != 1 else ''})" for e in exercises])
        ax.invert_yaxis()
        ax.set_xlim(0, max(left, default=1))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("students")
        ax.grid(axis="y", visible=False)
        ax.legend(ncols=4, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False,
                  handlelength=1, fontsize=8)
        fig.savefig(path)


#: the most submissions the time and memory figure shows (the slowest); the table has all
_SHOWN = 30
_STATUS_COLOURS = {"graded": "#2a9d8f", "stopped": "#e9c46a", "failed": "#e76f51",
                   "error": "#6c757d", "unknown": "#c3c8d0"}


def _resources_figure(report: ClassReport, path: Path) -> bool:
    """The grading time and the peak memory of each submission (the :data:`_SHOWN` slowest),
    side by side, coloured by status; False when no submission has a grading record."""
    import seaborn as sns
    from matplotlib.patches import Patch

    subs = sorted((s for s in report.submissions.values() if s.recorded),
                  key=lambda s: (-s.seconds, s.student))[:_SHOWN]
    if not subs:
        return False
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        fig = _figure(8.5, 0.26 * len(subs) + 1.0)
        axes = fig.subplots(1, 2, sharey=True)
        colours = [_STATUS_COLOURS.get(s.status, "#c3c8d0") for s in subs]
        for ax, values, label, fmt in (
                (axes[0], [s.seconds for s in subs], "grading time (s)", "{:.0f} s"),
                (axes[1], [s.peak_memory / 2 ** 30 for s in subs], "peak memory (GiB)",
                 "{:.2f} GiB")):
            bars = ax.barh(range(len(subs)), values, color=colours, height=0.7)
            ax.bar_label(bars, labels=[fmt.format(v) if v else "unknown" for v in values],
                         padding=3, fontsize=7, color="#3e4c59")
            ax.set_xlim(0, max(values) * 1.25 or 1)
            ax.set_xlabel(label)
            ax.grid(axis="y", visible=False)
        axes[0].set_yticks(range(len(subs)), [s.student for s in subs])
        axes[0].invert_yaxis()
        statuses = dict.fromkeys(s.status for s in subs)
        fig.legend(handles=[Patch(color=_STATUS_COLOURS.get(st, "#c3c8d0"), label=st)
                            for st in statuses], loc="outside upper left", ncols=len(statuses),
                   frameon=False, fontsize=8, handlelength=1)
        fig.savefig(path)
    return True


def _similarity_figure(report: ClassReport, path: Path) -> None:
    """How alike the pairs of the class are, with the threshold of the list."""
    import seaborn as sns

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        fig = _figure(5.2, 2.6)
        ax = fig.subplots()
        sns.histplot(x=[p.similarity for p in report.pairs], bins=[i / 20 for i in range(21)],
                     color="#6c8ebf", ax=ax)
        ax.axvline(report.threshold, color="#e76f51", linestyle="--")
        ax.text(report.threshold, 0.97, f" listed for review: {len(report.listed)}",
                transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="#b23a1e")
        ax.set_xlim(0, 1)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("similarity of a pair: the larger share of one student's code\n"
                      "found in the other's")
        ax.set_ylabel("pairs of students")
        fig.savefig(path)


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2933;background:#f4f5f7;
margin:0}
main{max-width:1080px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 2px}h2{font-size:20px;margin:0 0 8px}
h3{font-size:15px;margin:18px 0 6px}code,pre{font-family:ui-monospace,"DejaVu Sans Mono",monospace}
.sub,.muted{color:#616e7c}.sub{margin:0 0 16px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:12px}
.card{background:#fff;border-radius:8px;padding:10px 16px;box-shadow:0 1px 2px #0002;
min-width:150px}
.card b{display:block;font-size:24px}.card span{color:#616e7c;font-size:13px}
.card.warn b{color:#c0392b}nav a{margin-right:14px;color:#2a6f97}
section{background:#fff;border-radius:8px;box-shadow:0 1px 2px #0002;padding:18px 22px;
margin:16px 0}
img{max-width:100%;display:block;margin:6px 0 10px}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e4e7eb;vertical-align:top}
th{color:#616e7c;font-weight:600}td code{white-space:nowrap}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
ol.mistakes{list-style:none;padding:0;margin:0}
li.mistake{display:grid;grid-template-columns:150px 1fr;gap:14px;padding:8px 0;
border-top:1px solid #eef0f2}
.count{font-size:13px;color:#616e7c}.count b{font-size:18px;color:#1f2933}
.bar{height:6px;background:#eef0f2;border-radius:3px;margin-top:4px}
.bar i{display:block;height:6px;background:#e76f51;border-radius:3px}
.named{margin:0;overflow-wrap:anywhere}.named strong{color:#8a2c0d}
.who,.example{margin:2px 0 0;font-size:13px;color:#616e7c;overflow-wrap:anywhere}
.status{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;font-weight:600;
background:#e4e7eb}.status.failed,.status.error{background:#fde2dd;color:#a12a12}
.status.stopped{background:#fbefc9;color:#7a5b00}
.status.needs-review{background:#eadcfb;color:#5b2a9b}
ul.why{margin:0;padding-left:18px}
.pair h3 .muted{font-weight:400}
.row{display:flex;gap:20px;align-items:flex-start}.row p{flex:1;margin-top:4px}
.row img{width:440px;flex:none;margin:0}
.code2{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.code2 pre{background:#f7f8fa;border:1px solid #e4e7eb;border-radius:6px;padding:8px;margin:4px 0;
font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere;max-height:480px;overflow:auto}
mark{background:#ffe08a}.note{font-size:13px;color:#616e7c}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n else "unknown"


def _named(text: str) -> str:
    """A message as HTML, the mistake it names (after its first ": ") in bold."""
    head, sep, tail = text.partition(": ")
    if sep and tail:
        return f"{_e(head)}: <strong>{_e(tail)}</strong>"
    return f"<strong>{_e(text)}</strong>"


def _points_section(report: ClassReport) -> str:
    rows = "".join(
        f'<tr id="points-{_e(e.name)}"><td><code>{_e(e.name)}</code></td><td>{_e(e.title)}</td>'
        f'<td class="n">{e.max_score:g}</td>'
        f'<td class="n">{"" if e.mean() is None else f"{e.mean():.2f}"}</td>'
        + "".join(f'<td class="n">{e.count(o) or ""}</td>' for o in _OUTCOMES) + "</tr>"
        for e in report.exercises)
    heads = "".join(f'<th class="n">{_e(label)}</th>' for label in _OUTCOMES.values())
    return (f'<section id="points"><h2>Points per exercise</h2>'
            f'<img src="points.png" alt="points per graded cell: how many students got full '
            f'marks, part of the points, none, or await grading">'
            f'<table><thead><tr><th>graded cell</th><th>exercise</th><th class="n">points</th>'
            f'<th class="n" title="of the answers graded so far">mean</th>{heads}</tr></thead>'
            f'<tbody>{rows}</tbody>'
            f'</table></section>')


def _mistakes_section(report: ClassReport) -> str:
    counted = [s for s, r in report.submissions.items()
               if r.status in ("graded", "stopped", "unknown")]
    parts, clean = [], []
    for e in (e for e in report.exercises if e.autograded):
        if not e.mistakes:
            clean.append(f"<code>{_e(e.name)}</code>")
            continue
        lost = sum(_outcome(e.scores.get(s), e.max_score) in ("part", "none") for s in counted)
        items = "".join(
            f'<li class="mistake" data-count="{len(m.students)}"><div class="count">'
            f'<b>{len(m.students)}</b> of {len(counted)} students<div class="bar">'
            f'<i style="width:{100 * len(m.students) / max(len(counted), 1):.0f}%"></i></div>'
            f'</div><div><p class="named">{_named(m.text)}</p>'
            f'<p class="who">{_e(", ".join(m.students))}</p>'
            + (f'<p class="example">e.g. {_e(m.students[0])}: <code>{_e(m.example)}</code></p>'
               if m.example != m.text else "") + "</div></li>"
            for m in e.mistakes)
        parts.append(f'<article id="mistakes-{_e(e.name)}"><h3><code>{_e(e.name)}</code> '
                     f'({_e(e.title)}) <span class="muted">· {e.max_score:g} points · {lost} of '
                     f'{len(counted)} students lost points</span></h3>'
                     f'<ol class="mistakes">{items}</ol></article>')
    left_out = len(report.submissions) - len(counted)
    return ('<section id="mistakes"><h2>Mistakes the hidden tests named</h2>'
            '<p class="note">The failure messages of each test cell, grouped by the mistake they '
            'name (a number that differs between students, drawn from each run\'s random '
            'inputs, reads …) and ranked by how many students made it.'
            + (f" {left_out} submission{'s' if left_out != 1 else ''} that could not be graded "
               f"{'are' if left_out != 1 else 'is'} left out: see below." if left_out else "")
            + "</p>" + "".join(parts)
            + (f'<p class="note">No mistake: {", ".join(clean)}.</p>' if clean else "")
            + "</section>")


def _why(sub: Submission) -> str:
    items = [f"<li>{_e(nb)}: {_e(why)}</li>" for nb, why in sub.reasons.items()
             if sub.notes.get(nb) != why]
    items += [f"<li>{_e(nb)}: {_e(why)} <span class=\"muted\">(cost nothing)</span></li>"
              for nb, why in sub.notes.items()]
    return f'<ul class="why">{"".join(items)}</ul>' if items else ""


def _status(sub: Submission) -> str:
    return f'<span class="status {_e(sub.status.replace(" ", "-"))}">{_e(sub.status)}</span>'


def _review_section(report: ClassReport) -> str:
    review = [s for s in report.submissions.values() if s.recorded and s.needs_review]
    unknown = [s.student for s in report.submissions.values() if not s.recorded]
    rows = "".join(
        f'<tr id="review-{_e(s.student)}"><td>{_e(s.student)}</td><td>{_status(s)}<br>'
        f'<span class="note">{_e(_STATUS.get(s.status, ""))}</span></td><td>{_why(s)}</td>'
        f'<td class="n">{s.seconds:.1f} s</td><td class="n">{_gib(s.peak_memory)}</td></tr>'
        for s in sorted(review, key=lambda s: (s.status == "graded", s.student)))
    pending = sum(e.count("pending") for e in report.exercises)
    return ('<section id="review"><h2>Submissions needing review</h2>'
            + (f'<table><thead><tr><th>student</th><th>status</th><th>why</th><th class="n">'
               f'time</th><th class="n">memory</th></tr></thead><tbody>{rows}</tbody></table>'
               if review else "<p>None: every submission was graded to the end, with nothing "
                              "to report.</p>")
            + (f'<p class="note">{pending} written answers await grading in the formgrader.</p>'
               if pending else "")
            + (f'<p class="note">No grading record (graded before <code>grading.json</code> '
               f'existed; grade again to see it): {_e(", ".join(unknown))}.</p>'
               if unknown else "") + "</section>")


def _resources_section(report: ClassReport, figure: bool) -> str:
    subs = sorted((s for s in report.submissions.values() if s.recorded),
                  key=lambda s: (-s.seconds, s.student))
    rows = "".join(f'<tr><td>{_e(s.student)}</td><td>{_status(s)}</td><td class="n">'
                   f'{s.seconds:.1f} s</td><td class="n">{_gib(s.peak_memory)}</td></tr>'
                   for s in subs)
    return ('<section id="resources"><h2>Grading time and memory</h2>'
            + (f'<p class="note">The {_SHOWN} slowest of {len(subs)} submissions.</p>'
               if len(subs) > _SHOWN else "")
            + ('<img src="resources.png" alt="grading time and peak memory of each submission">'
               if figure else "<p>No submission has a grading record.</p>")
            + (f'<details><summary>every submission, slowest first</summary><table><thead><tr>'
               f'<th>student</th><th>status</th><th class="n">time</th><th class="n">peak memory'
               f'</th></tr></thead><tbody>{rows}</tbody></table></details>' if subs else "")
            + "</section>")


def _similarity_section(report: ClassReport) -> str:
    pairs = "".join(
        f'<article class="pair" id="pair-{_e(p.a)}-{_e(p.b)}"><h3>{_e(p.a)} and {_e(p.b)} '
        f'<span class="muted">· shared: {p.share_a:.0%} of the code of {_e(p.a)}, '
        f'{p.share_b:.0%} of the code of {_e(p.b)}</span></h3>'
        f'<details{" open" if i == 0 else ""}><summary>their solution cells side by side, what '
        f'they share marked</summary><div class="code2"><pre>{p.code_a}</pre>'
        f'<pre>{p.code_b}</pre></div></details></article>'
        for i, p in enumerate(report.listed))
    return ('<section id="similarity"><h2>Similar solution code</h2><div class="row"><p class='
            f'"note">The solution cells of every pair of students, compared with copydetect '
            f'(winnowing, as MOSS does) after tokenising: names become one symbol and comments '
            f'are dropped, so renaming and rewording hide nothing. The code that the cells give '
            f'everyone is left out, and so are passages that more than {COMMON} students share '
            f'and runs shorter than {NOISE} characters of tokens. A pair is listed when '
            f'{report.threshold:.0%} of one student\'s code is in the other\'s.<br><strong>A '
            f'listed pair is a reason to read two notebooks, never a penalty</strong>: a short '
            f'exercise leaves few ways to write it, and students may work together as far as '
            f'the course allows.</p><img src="similarity.png" alt="how similar the pairs of '
            f'students are"></div>'
            + (pairs or f"<p>No pair shares {report.threshold:.0%} of its code.</p>")
            + "</section>")


def write_report(report: ClassReport, out: Path) -> Path:
    """Write the page ``out/index.html`` and its figures beside it; returns the page's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _points_figure(report, out / "points.png")
    resources = _resources_figure(report, out / "resources.png")
    _similarity_figure(report, out / "similarity.png")
    auto = [e for e in report.exercises if e.autograded]
    students = sorted(report.submissions)
    totals = [sum(e.scores.get(s) or 0 for e in auto) for s in students]
    review = sum(s.recorded and s.needs_review for s in report.submissions.values())
    cards = [(f"{sum(totals) / len(totals):.1f} / {sum(e.max_score for e in auto):g}",
              "mean autograded points", False),
             (str(len(students)), "submissions", False),
             (str(review), "need review", review > 0),
             (str(len(report.listed)), "similar pairs to read", bool(report.listed))]
    sections = [_points_section(report), _mistakes_section(report), _review_section(report),
                _resources_section(report, resources), _similarity_section(report)]
    page = out / "index.html"
    page.write_text(
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Class report: '
        f'{_e(report.assignment)}</title><meta name="viewport" content="width=device-width">'
        f'<style>{_CSS}</style></head><body><main><h1>Class report: {_e(report.assignment)}</h1>'
        f'<p class="sub">{_e(report.title)}{" · " if report.title else ""}written '
        f'{datetime.now():%Y-%m-%d %H:%M} from the gradebook and the autograded notebooks</p>'
        f'<div class="cards">'
        + "".join(f'<div class="card{" warn" if warn else ""}"><b>{_e(v)}</b><span>{_e(k)}'
                  f'</span></div>' for v, k, warn in cards)
        + '</div><nav><a href="#points">points</a><a href="#mistakes">mistakes</a>'
          '<a href="#review">review</a><a href="#resources">time and memory</a>'
          '<a href="#similarity">similar code</a></nav>'
        + "".join(sections) + "</main></body></html>\n", encoding="utf-8")
    return page


def main(argv: Optional[list] = None) -> int:
    """The command line: 0 when the report was written, 2 when it could not be."""
    parser = argparse.ArgumentParser(prog="python -m course.report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("assignment", help="the assignment, graded by python -m course.grade")
    parser.add_argument("--root", type=Path, default=REPO, help="course root (default: repo)")
    parser.add_argument("--out", type=Path,
                        help="the folder of the page (default: ROOT/course/reports/ASSIGNMENT)")
    parser.add_argument("--threshold", type=float, default=THRESHOLD,
                        help="list the pairs that share at least this part of one student's "
                             "solution code (default %(default)s)")
    args = parser.parse_args(argv)
    if not 0 < args.threshold <= 1:
        parser.error(f"--threshold must be in (0, 1], got {args.threshold}")
    try:
        report = collect(args.root, args.assignment, args.threshold)
    except (ValueError, ModuleNotFoundError) as err:
        print(f"course.report: {err}", file=sys.stderr)
        return 2
    page = write_report(report, args.out or Path(args.root) / "course" / "reports" /
                        args.assignment)
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
