"""nbgrader plugins of the course (loaded by ``nbgrader_config.py`` and by the grader).

* :class:`HideHiddenTests`: feedback shows a hidden test's message, never its code;
* :class:`WarningsAreNotFailures`: stderr text of correct code does not cost points;
* :class:`BoundedExecute`: nbgrader's ``Execute`` with a time budget per notebook, a cap on
  the output kept per cell, and a kernel that dies (memory cap, crash, ``os._exit``) or
  will not stop costing only the cells that did not run, with the reason written down.
  A graded test cell's code is not run: its judge (``course.judges``) runs here, in the
  grading process, talks to the probe in the kernel through plain data, and writes the
  cell's outputs itself; a test cell without a judge scores 0;
* :class:`RestoreTestCells`: nbgrader's ``OverwriteCells``, whose restored test cells find
  their place after a self-check cell too.
"""

import base64
import binascii
import json
import re
import secrets
import time

import zmq

from nbclient.client import timestamp
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import run_sync
from nbformat import from_dict
from nbformat.v4 import new_code_cell as nbformat_new_code_cell
from nbformat.v4 import new_output
from nbgrader import utils
from nbgrader.preprocessors import Execute, NbGraderPreprocessor, OverwriteCells
from traitlets import Integer, List, Unicode

from course.judges import judge_for, run_judge
from course.judges._common import Probe
from course.sandbox import MemoryCap, gib
from dpm_core.selfcheck import SELF_CHECKS
from dpm_probe.runtime import MIME as PROBE_MIME
from dpm_probe.wire import WireError

BEGIN, END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: what the replies of one probe request may hold (base64 of a wire message and its JSON)
_PROBE_OUTPUT_BYTES = 96 * 2 ** 20
#: the largest message taken from a kernel: above the largest probe reply
_MAX_MESSAGE_BYTES = 128 * 2 ** 20


class HideHiddenTests(NbGraderPreprocessor):
    """Remove hidden test code from feedback, and reduce their tracebacks to the message.

    A graded test cell keeps its comment; the hidden region is replaced by another
    comment, and an error output keeps only its exception type and message (our
    test messages name the likely mistake), not the lines that raised it.
    """

    # nbconvert's HTML exporter configures every preprocessor's display_data_priority; nbgrader's
    # base class declares it not configurable, so traitlets warned once per run (GetGrades does this too)
    display_data_priority = List(NbGraderPreprocessor.display_data_priority.default_value,
                                 config=True)

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


class RestoreTestCells(OverwriteCells):
    """nbgrader's ``OverwriteCells``, whose ``add_missing_cells`` also places a test cell that
    the student deleted (or whose metadata they stripped) when the cell before it in the source
    is locked but neither graded nor a solution, as the self-check cell before each test cell is.

    nbgrader 0.9 puts a missing test cell right after the source cell before it, looked up
    among the submission's solution and graded cells only: a self-check cell there is not
    found (KeyError) and the notebook is not graded at all. Here that cell is looked up among
    all the submission's cells with a grade id, going further back past cells that are missing
    too (to the top of the notebook when none is left).
    """

    def add_missing_grade_cells(self, nb, resources):
        source_nb = self.gradebook.find_notebook(self.notebook_id, self.assignment_id)
        source_cells = list(source_nb.source_cells)
        source_ids = [cell.name for cell in source_cells]
        grade_cells = {cell.name: cell for cell in source_nb.grade_cells}
        solution_ids = {cell.name for cell in source_nb.solution_cells}
        for position, grade_id in enumerate(source_ids):
            present = {c.metadata.nbgrader["grade_id"] for c in nb.cells
                       if utils.is_grade(c) or utils.is_solution(c)}
            if grade_id not in grade_cells or grade_id in present:
                continue
            self.log.warning(f"Missing grade cell {grade_id} encountered, adding to notebook")
            where = {c.metadata["nbgrader"]["grade_id"]: i for i, c in enumerate(nb.cells)
                     if c.metadata.get("nbgrader", {}).get("grade_id")}
            before = next((where[p] for p in reversed(source_ids[:position]) if p in where), -1)
            nb.cells.insert(before + 1, from_dict(self.missing_cell_transform(
                source_cells[position], grade_cells[grade_id].max_score,
                is_solution=grade_id in solution_ids)))
        return nb, resources


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


class BoundedExecute(Execute):
    """nbgrader's ``Execute`` that always ends, keeps what passed, says why it stopped, and
    lets a judge outside the kernel decide each test cell.

    * Each cell has ``timeout`` seconds, and the notebook ``notebook_timeout`` in all; a
      cell that runs over is interrupted (nbgrader's behaviour) and fails.
    * When the kernel dies (killed by the memory cap, ``os._exit``, a segfault) or does
      not stop when interrupted (it is then shut down), the cell that was running and
      every later graded cell get an error output with the reason; cells that ran
      before keep their outputs, so their points. nbgrader alone loses the notebook.
    * What one cell may print is capped at ``max_output_bytes`` as it arrives, so a
      50 MB print cannot make a 50 MB feedback page or fill the grader's memory.
    * Each graded test cell is graded by its judge (:meth:`_judge_cell`; a test cell without
      a judge scores 0 with the reason, as its outputs would come from the kernel): the
      cell's code is not sent to the kernel; the judge's requests are, each as a cell of its
      own (:class:`_KernelProbe`), and the judge's verdict becomes the cell's outputs (a line
      when it passes, an ``AssertionError`` naming the mistake otherwise). A missing,
      malformed or oversized probe reply fails the cell with a reason; the probe's other
      outputs are dropped. Nothing the kernel does can change a judge's verdict; the
      own-work scan of the solution cells (``course.own_work``) reads the source handed in.
    * The self-check cells (locked, restored from the source) are not run: they decide no
      point, and the student has run them already.
    * The reason, if any, is written as JSON to ``report_file``: ``stopped`` (why the
      student's notebook stopped early) and ``grader_error`` (the kernel did not even start:
      not the student's doing).
    """

    notebook_timeout = Integer(0, help="seconds for the whole notebook (0: no limit)").tag(config=True)
    max_output_bytes = Integer(100_000, help="output kept per cell, in bytes").tag(config=True)
    max_message_bytes = Integer(_MAX_MESSAGE_BYTES, help="the largest message taken from the "
                                "kernel, in bytes (ZeroMQ drops larger ones)").tag(config=True)
    memory_cgroup = Unicode("", help="the submission's memory cgroup, to tell an OOM kill").tag(config=True)
    memory_limit = Integer(0, help="the memory cap in bytes, for the messages").tag(config=True)
    report_file = Unicode("", help="where to write why execution stopped (JSON)").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        assignment = (resources or {}).get("nbgrader", {}).get("assignment", "")
        self._assignment = assignment
        self._probing = False
        self._cell_timeout = self.timeout
        self._deadline = time.monotonic() + self.notebook_timeout if self.notebook_timeout else None
        self._stopped = ""
        self._output_sizes = {}
        self._started = False
        self._own_work = _scan_own_work(nb, assignment)
        grader_error = ""
        try:
            return super().preprocess(nb, resources, km)
        except Exception as err:
            if not self._started:  # no student code has run: the grader's fault, not theirs
                grader_error = f"the kernel did not start ({type(err).__name__}: {err})"
            raise
        finally:
            self.timeout = self._cell_timeout
            if self.report_file:
                with open(self.report_file, "w") as f:
                    json.dump({"stopped": self._stopped, "grader_error": grader_error}, f)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code" or not cell.source.strip():
            return cell, resources
        if _is_self_check(cell):  # they tell the student what to mend; the judges decide
            cell.outputs = []
            return cell, resources
        if not self._stopped and self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                self._stopped = (f"the notebook ran longer than its {self.notebook_timeout} s "
                                 f"and was stopped")
            else:
                self.timeout = max(1, int(min(self._cell_timeout or left, left)))
        if self._stopped:
            cell.outputs = [self._error("NotRun", f"not run: {self._stopped}")] \
                if utils.is_grade(cell) else []
            return cell, resources
        self._started = True
        test_cell = utils.is_grade(cell) and not utils.is_solution(cell)
        judge = judge_for(self._assignment, cell.metadata.nbgrader.grade_id) if test_cell else None
        if test_cell and judge is None:
            # its outputs would come from the kernel, where the student's code decides: no points
            cell.outputs = [self._error("NoJudge", f"the test cell "
                                                   f"{cell.metadata.nbgrader.grade_id} has no "
                                                   f"judge: tell your instructor")]
            return cell, resources
        started = time.monotonic()
        try:
            if judge is not None:
                self._judge_cell(cell, index, judge)
            else:
                cell, resources = super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self._stopped = self._death_reason()
        except CellTimeoutError:
            if time.monotonic() - started < 0.9 * self.timeout:  # not slow: its output was lost
                self._stopped = (f"the kernel's output could not be received (one message is "
                                 f"refused above {gib(self.max_message_bytes)}); the kernel was "
                                 f"shut down")
            else:
                self._stopped = (f"a cell ran longer than {self.timeout} s and did not stop when "
                                 f"interrupted; the kernel was shut down")
            self._shut_down_kernel()
        if self._stopped:
            cell.outputs.append(self._error("KernelDied", self._stopped))
            return cell, resources
        if judge is not None and cell.metadata.nbgrader.grade_id in self._own_work:
            cell.outputs.append(self._error("OwnWork",
                                            self._own_work[cell.metadata.nbgrader.grade_id]))
        return cell, resources

    async def async_start_new_kernel_client(self):
        """The kernel client, whose sockets refuse a message larger than ``max_message_bytes``:
        ZeroMQ would otherwise receive a kernel's multi-gigabyte print whole into this
        process before the per-cell cap applies. The refused message is lost (ZeroMQ drops
        and renews the connection), and with it, as a rule, the end of the cell: the cell
        then stops early, with that reason, keeping the points earned before."""
        make = self.km.client

        def client(**kwargs):
            kc = make(**kwargs)
            kc.context.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
            return kc

        self.km.client = client
        try:
            return await super().async_start_new_kernel_client()
        finally:
            self.km.client = make

    # nbclient binds its own coroutine here; nbconvert's preprocess starts the client this way
    start_new_kernel_client = run_sync(async_start_new_kernel_client)

    # -- the judges ---------------------------------------------------------------------------

    def _judge_cell(self, cell, index: int, judge) -> None:
        """Grade a test cell by its judge, outside the kernel: the cell's code is not run; its
        outputs are the judge's verdict (a line when it passes, an error naming the mistake)."""
        probe = _KernelProbe(self, index)
        # when the judge ran, as nbclient records it for the cells it sends to the kernel (a new
        # record: what the submission's metadata held there is not kept)
        cell.metadata["execution"] = {}
        timing = cell.metadata["execution"]  # the node stored, not the dict (a NotebookNode copies)
        timing["judge.started"] = timestamp()
        try:
            message = run_judge(judge, probe, secrets.randbits(62))
            cell.outputs = [new_output("stream", name="stdout", text=f"{message}\n")]
        except (DeadKernelError, CellTimeoutError):
            cell.outputs = []
            raise
        except AssertionError as err:
            cell.outputs = [self._error("AssertionError", str(err))]
        except WireError as err:
            cell.outputs = [self._error("AssertionError", f"the kernel's answer to the hidden "
                                                          f"tests could not be read: {err}")]
        except Exception as err:  # noqa: BLE001 -- what the kernel sent did not fit the judge
            self.log.warning("judge of %s failed", cell.metadata.nbgrader.grade_id,
                             exc_info=True)
            cell.outputs = [self._error(
                "AssertionError", f"the hidden tests could not use what your code returned "
                                  f"({type(err).__name__}: {err})")]
        finally:
            timing["judge.finished"] = timestamp()
        cell.execution_count = None

    def _probe(self, code: str, index: int):
        """Run a probe request's code in the kernel as a cell of its own; its outputs."""
        probe_cell, graded_cell = nbformat_new_code_cell(code), self.nb.cells[index]
        self._probing = True
        try:
            run_sync(self.async_execute_cell)(probe_cell, index, store_history=False)
        finally:
            self._probing = False
            self.nb.cells[index] = graded_cell  # nbclient puts the cell it ran in its place
        return probe_cell.outputs

    def output(self, outs, msg, display_id, cell_index):
        """Keep at most ``max_output_bytes`` of one cell's output, cut at arrival (a probe's
        reply may hold up to ``_PROBE_OUTPUT_BYTES``, and nothing else of a probe is kept)."""
        content = msg.get("content", {})
        size = len(json.dumps(content, default=str))
        if self._probing:
            self._probe_bytes = getattr(self, "_probe_bytes", 0) + size
            if msg["msg_type"] != "display_data" or PROBE_MIME not in content.get("data", {}) \
                    or self._probe_bytes > _PROBE_OUTPUT_BYTES:
                return None
            return super().output(outs, msg, display_id, cell_index)
        used = self._output_sizes.get(cell_index, 0)
        self._output_sizes[cell_index] = used + size
        if used + size > self.max_output_bytes:
            if used > self.max_output_bytes:
                return None  # already cut, and said so
            left = max(0, self.max_output_bytes - used)
            note = f"\n... output cut here: a cell may print at most {self.max_output_bytes} bytes\n"
            if msg["msg_type"] == "stream":
                content["text"] = content.get("text", "")[:left] + note
            else:
                msg["msg_type"] = "stream"
                msg["header"] = dict(msg["header"], msg_type="stream")
                msg["content"] = {"name": "stdout", "text": note.lstrip()}
            self._output_sizes[cell_index] = self.max_output_bytes + 1
        return super().output(outs, msg, display_id, cell_index)

    def _death_reason(self) -> str:
        if self.memory_cgroup and self.memory_limit:
            if MemoryCap.open(self.memory_cgroup, self.memory_limit).out_of_memory():
                return (f"the notebook ran out of its {gib(self.memory_limit)} of memory; "
                        f"the kernel was killed and later cells were not run")
        return "the kernel died (a crash, os._exit or a signal); later cells were not run"

    def _shut_down_kernel(self) -> None:
        try:
            run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:  # the kernel may be gone already; all that matters is that it is
            self.log.warning("could not shut the kernel down cleanly", exc_info=True)

    @staticmethod
    def _error(ename: str, evalue: str):
        return new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class _KernelProbe(Probe):
    """The probe in the kernel that ``executor`` runs: each request is a cell of its own that
    calls ``dpm_probe.runtime.serve``; the reply is the one ``display_data`` output of the
    probe's type that carries the request's nonce."""

    def __init__(self, executor: BoundedExecute, index: int):
        self.executor, self.index = executor, index

    def exchange(self, request: bytes) -> bytes:
        nonce = secrets.token_hex(16)
        text = base64.b64encode(request).decode()
        self.executor._probe_bytes = 0
        outputs = self.executor._probe(
            f"__import__('dpm_probe.runtime', fromlist=['serve']).serve({text!r}, {nonce!r}, "
            f"globals())", self.index)
        replies = [o for o in outputs if o.get("output_type") == "display_data"
                   and isinstance(o.get("data", {}).get(PROBE_MIME), dict)
                   and o["data"][PROBE_MIME].get("nonce") == nonce]
        if len(replies) != 1:
            errors = [f"{o.get('ename')}: {o.get('evalue')}" for o in outputs
                      if o.get("output_type") == "error"]
            raise AssertionError(
                "the hidden tests got " + ("no answer" if not replies else "several answers")
                + " from your kernel" + (f" ({errors[0][:300]})" if errors else "")
                + ": run the notebook from the top in a fresh kernel; do not replace what "
                  "the notebook imports")
        try:
            return base64.b64decode(replies[0]["data"][PROBE_MIME].get("reply", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise AssertionError("the kernel's answer to the hidden tests is not "
                                 "readable") from None


def _is_self_check(cell) -> bool:
    """A self-check cell of the assignment: locked (nbgrader restores its code from the
    source), neither graded nor a solution, and named ``<exercise>-tests-self-checks``."""
    return (utils.is_locked(cell) and not utils.is_grade(cell) and not utils.is_solution(cell)
            and cell.metadata.nbgrader.get("grade_id", "").endswith(SELF_CHECKS))


def _scan_own_work(nb, assignment: str) -> dict:
    """``{test cell id: message}`` for the exercises whose solution cell reaches dpm_core's
    reference of that exercise, or breaks a judged assignment's own source rule
    (``course.own_work.scan_solution``): this reads the source the student handed in."""
    from course.own_work import scan_solution

    found, current = {}, []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta:
            continue
        if meta.get("solution"):
            current = scan_solution(assignment, meta.get("grade_id", ""), cell.source)
        elif meta.get("grade") and current:
            found[meta["grade_id"]] = "no points for this exercise: " + "; ".join(current)
    return found


def autograde_preprocessors() -> list:
    """nbgrader's autograde preprocessors with the course's: BoundedExecute for Execute,
    WarningsAreNotFailures just before SaveAutoGrades."""
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import SaveAutoGrades

    steps = list(Autograde.class_traits()["autograde_preprocessors"].default())
    steps[steps.index(Execute)] = BoundedExecute
    steps.insert(steps.index(SaveAutoGrades), WarningsAreNotFailures)
    return steps


def sanitize_preprocessors() -> list:
    """nbgrader's sanitize preprocessors (run by autograde before it executes anything) with
    RestoreTestCells for OverwriteCells."""
    from nbgrader.converters import Autograde

    steps = list(Autograde.class_traits()["sanitize_preprocessors"].default())
    steps[steps.index(OverwriteCells)] = RestoreTestCells
    return steps
