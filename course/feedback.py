"""The feedback pages that ``nbgrader generate_feedback`` writes, made to tell the truth.

nbgrader's own feedback shows a written answer that nobody has graded yet as "0 / 3", as if
its points were lost, clips long lines, and loads MathJax from a CDN. Here:

* :class:`ManualGradingStatus` (a preprocessor, after nbgrader's ``GetGrades``) asks the
  gradebook which answers a person still has to grade, marks those cells, and writes the
  score line that says which part of the score is final;
* :class:`FeedbackExporter` renders with the course's template
  (``course/templates/dpm_feedback``: pending answers read "awaiting manual grading", long
  lines wrap) and puts a local MathJax, from Debian's ``libjs-mathjax``, beside every page,
  so that formulas render without internet.

The gradebook tells "not graded yet" from "graded 0": an answer graded by hand has a
``manual_score`` (0 included), an autograded cell an ``auto_score``; a cell with neither is
waiting for a person (a written answer after autograding, until the formgrader saves a score).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nbconvert.exporters import HTMLExporter
from nbgrader import utils
from nbgrader.api import Gradebook
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import List, Unicode

__all__ = ["ScoreSummary", "ManualGradingStatus", "FeedbackExporter", "TEMPLATES",
           "MATHJAX_FILES"]

#: the course's nbconvert templates (``extra_template_basedirs`` of :class:`FeedbackExporter`)
TEMPLATES = Path(__file__).resolve().parent / "templates"
#: what MathJax 2 needs, relative to its folder, for TeX input and SVG output with the TeX
#: fonts (SVG output draws glyphs from JavaScript font data, so no web font has to load, which
#: Chromium refuses for pages opened from disk); about 2 MB
MATHJAX_FILES = ("MathJax.js", "config/TeX-AMS_SVG-full.js", "config/Safe.js", "extensions/**/*",
                 "jax/element/**/*", "jax/input/TeX/**/*", "jax/output/SVG/*.js",
                 "jax/output/SVG/autoload/**/*", "jax/output/SVG/fonts/TeX/**/*")
_MATHJAX_CONFIG = "config=TeX-AMS_SVG-full,Safe"


def _points(x: float) -> str:
    """A number of points as people write it: 7, 2.5 (never 7.0)."""
    return f"{x:g}"


@dataclass
class ScoreSummary:
    """The score of one notebook, split into what is final and what waits for a person.

    Autograded cells are the test cells; written answers are the cells graded by hand
    (markdown answers with points, manually graded code answers and tasks).
    """

    auto_score: float = 0.0
    auto_max: float = 0.0
    written_total: int = 0
    written_graded: int = 0
    written_score: float = 0.0
    written_graded_max: float = 0.0
    pending_points: float = 0.0
    late_penalty: float = 0.0

    @property
    def final(self) -> bool:
        """Whether every cell is graded, so that the total will not change."""
        return self.written_graded == self.written_total

    def line(self) -> str:
        """The notebook's score line, e.g. "Autograded: 7 / 10 (final). Written answers: 0 of
        3 graded (6 points awaiting manual grading)."."""
        auto = f"Autograded: {_points(self.auto_score)} / {_points(self.auto_max)}"
        late = (f" Late submission penalty: -{_points(self.late_penalty)}."
                if self.late_penalty else "")
        if not self.written_total:
            return f"{auto} (final).{late}"
        if self.final:
            total = self.auto_score + self.written_score - self.late_penalty
            return (f"Score: {_points(total)} / {_points(self.auto_max + self.written_graded_max)}"
                    f" (final). {auto}. Written answers: {_points(self.written_score)} / "
                    f"{_points(self.written_graded_max)}.{late}")
        so_far = (f", {_points(self.written_score)} / {_points(self.written_graded_max)} so far"
                  if self.written_graded else "")
        return (f"{auto} (final). Written answers: {self.written_graded} of "
                f"{self.written_total} graded{so_far} ({_points(self.pending_points)} points "
                f"awaiting manual grading).{late}")


class ManualGradingStatus(NbGraderPreprocessor):
    """Mark the answers that wait for manual grading, and summarise the notebook's score.

    Runs after nbgrader's ``GetGrades`` (which leaves ``score`` and ``points`` in each graded
    cell's metadata, a pending answer's score as 0). Sets ``awaiting_manual_grade`` in the
    nbgrader metadata of every graded or task cell, and ``resources["nbgrader"]["summary"]``
    (a :class:`ScoreSummary`) and ``["score_line"]`` for the template.
    """

    # nbconvert's HTML exporter configures every preprocessor's display_data_priority; nbgrader's
    # base class declares it not configurable, so traitlets warned once per run (GetGrades does this too)
    display_data_priority = List(NbGraderPreprocessor.display_data_priority.default_value,
                                 config=True)

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        summary = ScoreSummary(late_penalty=info.get("late_penalty") or 0.0)
        with Gradebook(info["db_url"]) as gb:
            for cell in nb.cells:
                if not (utils.is_grade(cell) or utils.is_task(cell)):
                    continue
                meta = cell.metadata.nbgrader
                grade = gb.find_grade(meta["grade_id"], info["notebook"], info["assignment"],
                                      info["student"])
                pending = grade.manual_score is None and grade.auto_score is None
                meta["awaiting_manual_grade"] = pending
                if utils.is_grade(cell) and not utils.is_solution(cell) and not utils.is_task(cell):
                    summary.auto_score += grade.score
                    summary.auto_max += grade.max_score
                    continue
                summary.written_total += 1
                if pending:
                    summary.pending_points += grade.max_score
                else:
                    summary.written_graded += 1
                    summary.written_score += grade.score
                    summary.written_graded_max += grade.max_score
        info["summary"] = summary
        info["score_line"] = summary.line()
        return nb, resources


class FeedbackExporter(HTMLExporter):
    """nbgrader's HTML export of a feedback page, with the course's template and a local MathJax.

    Every page gets the MathJax files it needs (:data:`MATHJAX_FILES`) in a ``mathjax/`` folder
    beside it, as extra outputs that nbconvert's writer saves with the page; the page loads
    them by a relative URL, so the feedback folder of a student works offline wherever it is
    copied. A page that travels alone (nbgrader's exchange copies only the HTML) falls back to
    the CDN. Without a MathJax in ``mathjax_dir``, pages use the CDN only, with a warning.
    """

    mathjax_dir = Unicode("/usr/share/javascript/mathjax",
                          help="MathJax 2 to copy beside the pages (Debian's libjs-mathjax)"
                          ).tag(config=True)
    mathjax_cdn_url = Unicode(
        f"https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/MathJax.js?{_MATHJAX_CONFIG}",
        help="MathJax for a page whose local copy is missing").tag(config=True)

    _mathjax: dict | None = None

    def _mathjax_outputs(self) -> dict:
        """``{"mathjax/<path>": bytes}`` of :data:`MATHJAX_FILES`, read once; empty (with a
        warning) when there is no MathJax in ``mathjax_dir``."""
        if self._mathjax is None:
            root = Path(self.mathjax_dir)
            if not (root / "MathJax.js").is_file():
                self.log.warning("no MathJax in %s (install Debian's libjs-mathjax): feedback "
                                 "pages load it from %s", root, self.mathjax_cdn_url)
                self._mathjax = {}
            else:
                self._mathjax = {
                    "mathjax/" + path.relative_to(root).as_posix(): path.read_bytes()
                    for pattern in MATHJAX_FILES for path in sorted(root.glob(pattern))
                    if path.is_file()}
        return self._mathjax

    def _init_resources(self, resources):
        resources = super()._init_resources(resources)
        local = self._mathjax_outputs()
        resources["mathjax_url"] = (f"mathjax/MathJax.js?{_MATHJAX_CONFIG}" if local
                                    else self.mathjax_cdn_url)
        resources["mathjax_fallback_url"] = self.mathjax_cdn_url
        resources.setdefault("outputs", {}).update(local)
        return resources
