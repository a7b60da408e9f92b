"""nbgrader plugins of the course (loaded by ``nbgrader_config.py``)."""

import re

from nbgrader import utils
from nbgrader.preprocessors import NbGraderPreprocessor

BEGIN, END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class HideHiddenTests(NbGraderPreprocessor):
    """Remove hidden test code from feedback, and reduce their tracebacks to the message.

    A graded test cell keeps its visible part; the hidden region is replaced by a
    comment, and an error output keeps only its exception type and message (our
    test messages name the likely mistake), not the lines that raised it.
    """

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and BEGIN in cell.source:
            kept, hidden = [], False
            for line in cell.source.splitlines():
                if line.strip() == BEGIN:
                    hidden = True
                    kept.append("# (hidden tests: only their messages are shown)")
                elif line.strip() == END:
                    hidden = False
                elif not hidden:
                    kept.append(line)
            cell.source = "\n".join(kept)
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [_ANSI.sub("", f"{output['ename']}: {output['evalue']}")]
        return cell, resources


class WarningsAreNotFailures(NbGraderPreprocessor):
    """Keep what an autograded test cell wrote to stderr from costing its points.

    nbgrader scores a test cell 0 as soon as it has any stderr output, so a correct
    answer that triggers a library warning (a deprecation, a ``UserWarning``) would
    lose every cell that calls it. Our tests fail by raising, which nbgrader records
    as an error output; stderr text is never a verdict. Run after ``Execute`` and
    before ``SaveAutoGrades``, this turns the stderr streams of autograded test cells
    into stdout streams, so the text stays visible in the autograded notebook and in
    the feedback.
    """

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "stream" and output.get("name") == "stderr":
                    output["name"] = "stdout"
        return cell, resources
