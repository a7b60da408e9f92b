"""nbgrader configuration: run nbgrader from the repository root.

The instructor notebooks live in ``source/``, the student versions in
``release/`` (both committed); everything nbgrader creates while grading
(gradebook, submissions, autograded copies, feedback) lives under ``course/``
and is ignored by git.
The list of assignments is ``course/assignments.json``; nbgrader needs its
own ``alembic`` command on the PATH (``.venv/bin``).

A test or a script can point the same configuration at another folder by
setting ``DPM_COURSE_ROOT``.
"""

import logging
import os
import sys

ROOT = os.environ.get("DPM_COURSE_ROOT") or os.path.dirname(os.path.abspath(__file__))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the course's own nbgrader plugins: the `course` package

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)

c.CourseDirectory.root = ROOT
c.CourseDirectory.course_id = "dpm-course"
c.CourseDirectory.source_directory = "source"
c.CourseDirectory.release_directory = "release"
c.CourseDirectory.submitted_directory = os.path.join("course", "submitted")
c.CourseDirectory.autograded_directory = os.path.join("course", "autograded")
c.CourseDirectory.feedback_directory = os.path.join("course", "feedback")
c.CourseDirectory.solution_directory = os.path.join("course", "solution")
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(ROOT, "course", "gradebook.db")

# the student version: the header notebook on top, the usual stubs in solution regions
c.IncludeHeaderFooter.header = os.path.join(HERE, "course", "header.ipynb")
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# grading runs every notebook top to bottom, with tiny training budgets (NBGRADER_EXECUTION)
c.Execute.timeout = 300

# feedback shows the failure message of a hidden test, never its code
from course.grading_plugins import HideHiddenTests  # noqa: E402
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402

# feedback tells the truth: a written answer not graded yet is "awaiting manual grading" (not
# "0 / 3") and the score line says which part is final; long lines wrap; formulas render offline
# with the MathJax copied beside each page (course/feedback.py, course/templates/dpm_feedback).
# The template is set on our exporter class, not on HTMLExporter, so the formgrader's own
# pages keep nbgrader's templates while its "generate feedback" button gets ours.
from course.feedback import TEMPLATES, FeedbackExporter, ManualGradingStatus  # noqa: E402

class _QuietFeedback(logging.Filter):
    """Drops nbconvert's "Making directory .../mathjax/..." lines (about 100 per run) and its
    note on plots without alternative text (one per student; nothing an instructor can do)."""

    def filter(self, record):
        mathjax = record.msg == "Making directory %s" and "mathjax" in str(record.args)
        return not (mathjax or str(record.msg).startswith("Alternative text is missing"))


# nbconvert's FilesWriter logs through the running app's logger, named after its class
logging.getLogger("GenerateFeedbackApp").addFilter(_QuietFeedback())

c.GenerateFeedback.preprocessors = [GetGrades, ManualGradingStatus, HideHiddenTests,
                                    CSSHTMLHeaderPreprocessor]
c.GenerateFeedback.exporter_class = FeedbackExporter
c.FeedbackExporter.template_name = "dpm_feedback"
c.FeedbackExporter.extra_template_basedirs = [str(TEMPLATES)]

# a warning printed by correct code is not a failed test (nbgrader scores any stderr output 0);
# a kernel that dies or hangs costs only the cells it did not pass, and says why
from course.grading_plugins import autograde_preprocessors, sanitize_preprocessors  # noqa: E402

c.Autograde.autograde_preprocessors = autograde_preprocessors()
# a test cell that a student deleted, or whose metadata they stripped, comes back and runs
# (RestoreTestCells: after its self-check cell, which nbgrader's OverwriteCells cannot place)
c.Autograde.sanitize_preprocessors = sanitize_preprocessors()
c.OverwriteCells.add_missing_cells = True

# nbgrader's tools write into the course, not the working folder: `nbgrader export` (no --to)
# writes course/grades.csv; the exchange (release_assignment / collect, and the assignment list
# that JupyterLab's nbgrader extension polls) is course/exchange, made here, so no command warns
# about an unwritable /usr/local/share/nbgrader/exchange
c.CsvExportPlugin.to = os.path.join(ROOT, "course", "grades.csv")
# the grader's record of each submission (course/merge.py: status, reasons, time, memory) stays
# with the instructor: generate_feedback copies every other file of the autograded folder
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "grading.json"]
c.Exchange.root = os.path.join(ROOT, "course", "exchange")
os.makedirs(c.Exchange.root, exist_ok=True)

# submissions downloaded from an LMS: `nbgrader zip_collect NAME` unpacks the zips put in
# course/downloaded/NAME/archive/ into course/downloaded/NAME/extracted/ and copies each notebook
# to course/submitted/<id>/NAME/; course/lms.py reads Canvas's, Moodle's and Blackboard's file
# names and matches the names in them to the roster's students (nbgrader's own collector needs a
# regular expression with the student id in the file name, which Canvas and Moodle do not have)
c.ZipCollectApp.downloaded_directory = os.path.join("course", "downloaded")
c.ZipCollectApp.collector_plugin = "course.lms.LMSCollector"
