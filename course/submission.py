"""Grade one student's submission of one assignment in a scratch course (a Dask task).

:func:`grade_submission` is what each Dask worker runs. Everything it needs travels in the
:class:`Job` (the assignment's ``source/`` files, the student's files, a gradebook that
knows only this assignment), and everything it finds comes back in a :class:`Result`, so
a worker needs no shared file system with the instructor's course, and the coordinating
process stays the only writer of the course's ``gradebook.db``.

In a fresh temporary folder the worker lays out a course that holds just that
assignment's ``source/``, that student's submission and that gradebook, writes an
``nbgrader_config.py`` whose ``Execute`` is :class:`course.grading_plugins.BoundedExecute`
with the sandboxed kernelspec (:mod:`course.sandbox`), and runs nbgrader's own
``autograde``. Honest work is graded even when its file is not quite what nbgrader expects:
a notebook saved as nbformat 3 is converted, and grading metadata that the student edited
is restored from the assignment (the reason says so). Whatever else goes wrong (a missing,
corrupt or misnamed notebook, a notebook that nbgrader rejects, a kernel killed by the
memory cap, a time-out) ends as scores of 0 for the cells that did not pass and a one-line
reason, never as an exception or a submission left "needs autograding".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import nbformat

from course.sandbox import KERNEL_NAME, MemoryCap, ProcessCap, Sandbox, \
    check_sandbox, package_folder, python_folders, write_kernelspec
from course.warm import WarmServer, WarmUnavailable, server_for

__all__ = ["Limits", "Job", "Result", "grade_submission", "run_nbgrader", "GRADING_NOTE"]

#: the first words of the markdown cell that tells the student why grading stopped early
GRADING_NOTE = "**Grading note:**"
#: what one submission may hold, in bytes: more is not copied (and the reason says so)
MAX_SUBMISSION_BYTES = 64 * 2 ** 20
#: the fields of a cell's nbgrader metadata that grading reads (nbgrader's checksum,
#: CheckCellMetadata and OverwriteCells): a student's edit of them is undone
GRADING_FIELDS = ("grade", "solution", "locked", "task", "points", "grade_id", "schema_version")


@dataclass(frozen=True)
class Limits:
    """The bounds of one submission.

    Attributes:
        memory: bytes of memory for all its kernels together (their tmpfs pages included).
        cell_timeout: seconds one cell may run before it is interrupted.
        notebook_timeout: seconds one notebook may run.
        submission_timeout: seconds the whole submission may take; past it nbgrader is
            killed (a backstop: the other limits stop a notebook earlier).
        output_bytes: what one cell may print.
        sandbox: run kernels in bubblewrap (False only on the instructor's explicit word).
        disk: bytes of each of a kernel's private tmpfs (its working directory, /tmp, /dev/shm).
        processes: processes and threads of all its kernels together (a cap only where the
            grader has root rights: see :mod:`course.sandbox`).
        warm: fork each kernel from this worker's warm server (:mod:`course.warm`), which
            has imported torch, matplotlib and the student build already; False: start each
            in a bwrap of its own (cold, about 2.5 s more per notebook).
    """

    memory: int = 4 * 2 ** 30
    cell_timeout: int = 300
    notebook_timeout: int = 600
    submission_timeout: int = 1800
    output_bytes: int = 100_000
    sandbox: bool = True
    disk: int = 2 ** 30
    processes: int = 256
    warm: bool = True


@dataclass
class Job:
    """One student's submission of one assignment, with all that grading it needs."""

    assignment: str
    student: str
    notebooks: list            # the notebook names the assignment expects, without .ipynb
    source_files: dict         # path relative to source/<assignment>/ -> bytes
    submission_files: dict     # path relative to the student's folder -> bytes
    gradebook: bytes           # a gradebook that knows this assignment and nothing else
    limits: Limits = field(default_factory=Limits)
    skipped: list = field(default_factory=list)  # files left out of submission_files, and why
    package: dict = field(default_factory=dict)  # the student build of dpm_core: path -> text


@dataclass
class Result:
    """What grading one submission found.

    Attributes:
        grades: ``{(notebook, grade_id): (auto_score or None, max_score, needs_manual_grade,
            autograded)}``; autograded is True for test cells, False for written answers.
        comments: ``{(notebook, comment_id): auto_comment}``.
        notebooks: the autograded notebooks, ``{name: bytes}``.
        reasons: why points were lost other than by failing tests, per notebook.
        status: "graded" (ran to the end), "stopped" (a limit or a crash ended a
            notebook early), "failed" (a notebook could not be graded at all; its cells
            score 0) or "error" (the grader itself failed: not the student's fault).
        notes: the reasons that cost nothing, per notebook (grading metadata restored): they
            are in ``reasons`` too, for the summary and the grading note.
        seconds, peak_memory: the wall time and the peak memory (bytes, 0 if unknown).
    """

    assignment: str
    student: str
    grades: dict = field(default_factory=dict)
    comments: dict = field(default_factory=dict)
    notebooks: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)
    status: str = "graded"
    seconds: float = 0.0
    peak_memory: int = 0
    timestamp: Optional[str] = None
    log: str = ""
    notes: dict = field(default_factory=dict)

    def reason_text(self) -> str:
        """All reasons in one line, notebook by notebook."""
        return "; ".join(f"{nb}: {why}" for nb, why in self.reasons.items())


def grade_submission(job: Job) -> Result:
    """Autograde one submission in a scratch course; never raises for the student's doing."""
    start = time.perf_counter()
    result = Result(job.assignment, job.student)
    scratch = Path(tempfile.mkdtemp(prefix=f"dpm-grade-{_safe(job.student)}-"))
    cap = procs = None
    try:
        course = _lay_out(scratch, job)
        runnable = _check_notebooks(course, job, result)
        if job.limits.sandbox:
            check_sandbox()
            name = uuid.uuid4().hex  # one group for both controllers in cgroup v2
            cap = MemoryCap.create(job.limits.memory, name)
            procs = ProcessCap.create(job.limits.processes, name)
        if runnable:
            _run_autograde(scratch, course, job, cap, procs, result)
        _collect(scratch, course, job, result)
    except Exception as err:  # the grader's own failure: every cell 0, and the instructor told
        result.status = "error"
        result.reasons["(grader)"] = _one_line(f"grading failed: {_error_text(err)}")
        for nb in job.notebooks:
            result.notebooks.setdefault(nb, b"")
    finally:
        if cap is not None:
            result.peak_memory = cap.peak()
            cap.remove()
        if procs is not None:
            procs.remove()
        shutil.rmtree(scratch, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:40]


def _one_line(text: str, limit: Optional[int] = 300) -> str:
    """``text`` on one line (a reason is shown in a summary line and a markdown cell), cut
    at ``limit`` characters (None: not cut)."""
    text = " ".join(str(text).split())
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def _error_text(err: BaseException) -> str:
    """``"ValueError: the first line of its message"``."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def _lay_out(scratch: Path, job: Job) -> Path:
    """The scratch course: config, source/<a>, submitted/<s>/<a>, the gradebook."""
    course = scratch / "course"
    source = course / "source" / job.assignment
    submitted = course / "submitted" / job.student / job.assignment
    for folder, files in ((source, job.source_files), (submitted, job.submission_files)):
        folder.mkdir(parents=True)
        for rel, data in files.items():
            target = (folder / rel).resolve()
            if not target.is_relative_to(folder.resolve()):
                continue  # a path that climbs out of the folder is not a submission file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    (course / "gradebook.db").write_bytes(job.gradebook)
    # runtime: the connection files (read-only for the kernel); sockets: the kernel's ipc
    # sockets (the only folder it shares writable); tmp: nbgrader's TMPDIR (the kernel's
    # sandbox does not show it)
    for name in ("runtime", "sockets", "tmp", "jupyter", "jupyter-config", "reports"):
        (scratch / name).mkdir()
    return course


def _check_notebooks(course: Path, job: Job, result: Result) -> list:
    """The expected notebooks that nbgrader can grade; a reason for each that it cannot.

    A notebook saved as nbformat 3 is converted to 4 (that loses no point, so no reason);
    grading metadata that the student edited is restored from the assignment's source
    notebook (:func:`_repair`), and the reason says which cells. The notebook is graded.
    """
    folder = course / "submitted" / job.student / job.assignment
    present = sorted(p.name for p in folder.rglob("*.ipynb"))
    runnable = []
    for nb in job.notebooks:
        path = folder / f"{nb}.ipynb"
        if not path.exists():
            others = [p for p in present if p != f"{nb}.ipynb"]
            hint = (f"; found {', '.join(others)}: rename it to {nb}.ipynb" if others
                    else "; the folder holds no notebook" if not present else "")
            result.reasons[nb] = f"{nb}.ipynb is missing from the submission{hint}"
            continue
        try:
            notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
            version = notebook.get("nbformat")
            if version not in (3, 4):
                raise ValueError(f"nbformat {version} (expected 4)")
            if version == 3:
                notebook = nbformat.convert(notebook, 4)
            nbformat.validate(notebook)
        except Exception as err:
            result.reasons[nb] = _one_line(f"{nb}.ipynb could not be read as a Jupyter "
                                           f"notebook ({_error_text(err)})")
            path.unlink()
            continue
        expected = _grading_metadata(course / "source" / job.assignment / f"{nb}.ipynb")
        changed, notes = _repair(notebook, expected)
        if changed or version == 3:
            nbformat.write(notebook, path)
        if notes:
            result.reasons[nb] = result.notes[nb] = "; ".join(notes)
        runnable.append(nb)
    for skipped in job.skipped:
        result.reasons.setdefault("(files)", skipped)
    return runnable


def _grading_metadata(source: Path) -> Optional[dict]:
    """``{grade_id: nbgrader metadata}`` of the cells of the assignment's source notebook
    (None when it cannot be read: then nothing is restored)."""
    try:
        notebook = nbformat.read(source, as_version=4)
    except Exception:  # the grader's own copy: nbgrader will say what is wrong with it
        return None
    cells = (c.get("metadata", {}).get("nbgrader") for c in notebook.cells)
    return {meta["grade_id"]: meta for meta in cells
            if isinstance(meta, dict) and meta.get("grade_id")}


def _repair(notebook, expected: Optional[dict] = None) -> tuple:
    """Undo what a student did to a notebook's grading machinery; ``(changed, notes)``, the
    notes being what the reason says.

    * A copy-pasted graded cell (nbgrader refuses such a notebook outright: "old version of
      the nbgrader metadata"): the first cell of each grade id is kept, the copies run as
      plain cells; Jupyter cell ids are made unique. Nothing is lost, so no note.
    * Edited grading metadata (``points``, ``grade``, ``solution``, ``locked``, ``task``
      changed or removed, a grade id renamed), which makes nbgrader's checksum check or
      CheckCellMetadata fail: with ``expected`` (``{grade_id: nbgrader metadata}`` of the
      assignment's source notebook), each cell gets the source's :data:`GRADING_FIELDS`
      back, and a cell whose grade id the source does not know becomes a plain cell (the
      graded cell it stood for is added back by nbgrader's ``add_missing_cells``).
    """
    changed, seen_grade_ids, seen_ids = False, set(), set()
    for cell in notebook.cells:
        meta = cell.get("metadata", {}).get("nbgrader")
        if isinstance(meta, dict) and isinstance(meta.get("grade_id"), str):
            if meta["grade_id"] in seen_grade_ids:
                del cell["metadata"]["nbgrader"]
                changed = True
            seen_grade_ids.add(meta["grade_id"])
        if "id" in cell:
            if cell["id"] in seen_ids:
                cell["id"] = uuid.uuid4().hex[:8]
                changed = True
            seen_ids.add(cell["id"])
    if expected is None:
        return changed, []
    restored, unknown = [], []
    for number, cell in enumerate(notebook.cells, 1):
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta is None:
            continue
        grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
        if not isinstance(grade_id, str) or grade_id not in expected:
            if not isinstance(meta, dict) or any(meta.get(f) for f in ("grade", "solution",
                                                                       "locked", "task")):
                unknown.append(grade_id if isinstance(grade_id, str) and grade_id
                               else f"number {number}")
            del cell["metadata"]["nbgrader"]  # plain: what it has is nbgrader's to ignore
            changed = True
        elif _grading_view(meta) != _grading_view(expected[grade_id]):
            for name in GRADING_FIELDS:
                if name in expected[grade_id]:
                    meta[name] = expected[grade_id][name]
                else:
                    meta.pop(name, None)
            restored.append(grade_id)
            changed = True
    notes = []
    if restored:
        notes.append(f"the grading metadata of cell{'s' * (len(restored) > 1)} "
                     f"{', '.join(restored)} had been edited; it was restored from the assignment")
    if unknown:
        notes.append(f"cell{'s' * (len(unknown) > 1)} {', '.join(unknown)} had grading "
                     f"metadata that the assignment does not have; graded as plain "
                     f"cell{'s' * (len(unknown) > 1)}")
    return changed, [_one_line(note) for note in notes]


def _grading_view(meta: dict) -> tuple:
    """What grading reads of a cell's nbgrader metadata: an absent flag is False, points are
    a number and count only for a graded cell."""
    grade, solution, locked, task = (bool(meta.get(f)) for f in ("grade", "solution", "locked",
                                                                 "task"))
    points = meta.get("points")
    try:
        points = float(points)
    except (TypeError, ValueError):
        pass
    return (grade, solution, locked, task, points if grade else None, meta.get("grade_id"),
            meta.get("schema_version"))


def _config(scratch: Path, course: Path, job: Job, cap: Optional[MemoryCap],
            sockets: Path) -> str:
    """The scratch course's nbgrader_config.py."""
    limits = job.limits
    lines = [
        "from course.grading_plugins import autograde_preprocessors, sanitize_preprocessors",
        "c = get_config()  # noqa: F821",
        f"c.CourseDirectory.root = {str(course)!r}",
        "c.CourseDirectory.course_id = 'dpm-course'",
        f"c.CourseDirectory.db_url = {'sqlite:///' + str(course / 'gradebook.db')!r}",
        "c.Autograde.autograde_preprocessors = autograde_preprocessors()",
        # a test cell the student deleted (or whose metadata they stripped) comes back and runs
        "c.Autograde.sanitize_preprocessors = sanitize_preprocessors()",
        "c.OverwriteCells.add_missing_cells = True",
        f"c.BoundedExecute.timeout = {int(limits.cell_timeout)}",
        f"c.BoundedExecute.notebook_timeout = {int(limits.notebook_timeout)}",
        f"c.BoundedExecute.max_output_bytes = {int(limits.output_bytes)}",
        f"c.BoundedExecute.memory_limit = {int(limits.memory)}",
        f"c.BoundedExecute.memory_cgroup = {str(cap.path) if cap else ''!r}",
        # the widget state a kernel sends is kept in the grader's memory: not when grading
        "c.BoundedExecute.store_widget_state = False",
        # figures are not drawn: under grading budgets they show barely trained models, and
        # drawing them was most of a notebook's grading time (a figure shows as one line of text)
        "c.BoundedExecute.extra_arguments = ['--InlineBackend.figure_formats=set()']",
        # the kernel is thrown away with its sandbox: killed, not asked to stop and waited for
        "c.BoundedExecute.shutdown_kernel = 'immediate'",
        # ZeroMQ over Unix sockets (TCP cannot cross the sandbox's network namespace), in a
        # folder that both sides see at the same path: the only one the kernel may write
        # besides its tmpfs. The connection file (else a temporary file in TMPDIR, which the
        # kernel does not see) is in the runtime folder, read-only to the kernel.
        "c.KernelManager.transport = 'ipc'",
        f"c.KernelManager.ip = {str(sockets / 'kernel')!r}",
        f"c.KernelManager.connection_file = {str(scratch / 'runtime' / 'kernel.json')!r}",
    ]
    if limits.sandbox:
        lines.append(f"c.BoundedExecute.kernel_name = {KERNEL_NAME!r}")
    return "\n".join(lines) + "\n"


def _kernel_env(job: Job) -> dict:
    """The kernel's environment inside the sandbox: nothing of the instructor's."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp", "MPLCONFIGDIR": "/tmp/matplotlib", "IPYTHONDIR": "/tmp/ipython",
        "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "NBGRADER_EXECUTION": "autograde",
        # the notebook's folder is not on sys.path: a `dpm_core/` (or `torch.py`) handed in
        # next to the notebook must not shadow the installed package the hidden tests use
        "PYTHONSAFEPATH": "1",
    }
    from dpm_core.data import data_cache_dir

    env["DPM_DATA_CACHE"] = str(data_cache_dir())
    for key in ("DPM_DATA", "CUDA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE",
                "OPENBLAS_L2_SIZE"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def _prepare_data() -> list:
    """The folders of FashionMNIST and of its cache (decompressed, and resized to 64 x 64), the
    cache filled first.

    The kernels see both read-only, so the cache must be written out here, before them.
    """
    from dpm_core.data import cache_idx, cache_resized, data_cache_dir, find_data_files

    try:
        files = find_data_files("fashion-mnist", download=False)
    except Exception:  # no data: the notebooks say so in their own error
        return []
    for path in files.values():
        cache_idx(path)
    cache_resized("fashion-mnist", 64)  # dpm2_beyond's images: seconds of resizing per kernel
    return sorted({Path(p).resolve().parent for p in files.values()}) + [data_cache_dir()]


def _student_package(scratch: Path, job: Job) -> tuple:
    """The student build of ``dpm_core`` written out, as the overlay of the installed one
    (none when the job carries no build)."""
    if not job.package:
        return ()
    folder = scratch / "student-package" / "dpm_core"
    for rel, text in job.package.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return ((folder, package_folder("dpm_core")),)


def _run_autograde(scratch: Path, course: Path, job: Job, cap: Optional[MemoryCap],
                   procs: Optional[ProcessCap], result: Result) -> None:
    """nbgrader autograde in the scratch course, bounded by the submission's time limit."""
    server, log = None, []
    # what a kernel sees read-only: Python, dpm_core, dpm_probe and the data (its cache filled)
    readonly = tuple(python_folders() + _prepare_data()) if job.limits.sandbox else ()
    if job.limits.sandbox and job.limits.warm:
        try:
            server = server_for(readonly, _kernel_env(job))
        except WarmUnavailable as err:
            log.append(f"course.submission: {err}; every kernel starts cold")
    sockets = server.submission_folder() if server is not None else scratch / "sockets"
    try:
        _autograde(scratch, course, job, cap, procs, result, server, sockets, readonly, log)
    finally:
        if server is not None:
            shutil.rmtree(sockets, ignore_errors=True)


def _autograde(scratch: Path, course: Path, job: Job, cap: Optional[MemoryCap],
               procs: Optional[ProcessCap], result: Result, server: Optional[WarmServer],
               sockets: Path, readonly: tuple, log: list) -> None:
    (scratch / "nbgrader_config.py").write_text(_config(scratch, course, job, cap, sockets))
    env = dict(os.environ, OMP_NUM_THREADS="1", JUPYTER_PATH=str(scratch / "jupyter"),
               JUPYTER_RUNTIME_DIR=str(scratch / "runtime"),
               JUPYTER_CONFIG_DIR=str(scratch / "jupyter-config"), TMPDIR=str(scratch / "tmp"),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
               TRAITLETS_APPLICATION_RAISE_CONFIG_FILE_ERROR="1")
    env.pop("NBGRADER_EXECUTION", None)
    env.pop("JPY_PARENT_PID", None)
    if job.limits.sandbox:
        # where nbgrader writes the autograded notebook: the kernel sees its own tmpfs here
        workdir = course / "autograded" / job.student / job.assignment
        workdir.mkdir(parents=True)
        sandbox = Sandbox(workdir=workdir, runtime_dir=scratch / "runtime",
                          sockets_dir=sockets, readonly=readonly,
                          overlays=_student_package(scratch, job),
                          memory=job.limits.memory, disk=job.limits.disk,
                          cgroup=cap.path if cap else None,
                          pids_cgroup=procs.path if procs else None, env=_kernel_env(job),
                          warm=server.control if server else None,
                          warm_hidden=server.folder if server else None,
                          warm_overlays=((server.build(job.package), package_folder("dpm_core")),)
                          if server is not None and job.package else ())
        write_kernelspec(scratch / "jupyter", sandbox.kernel_argv())
    reports = {}
    for nb in job.notebooks:
        reports[nb] = scratch / "reports" / f"{nb}.json"
    # one nbgrader run per notebook, so that each writes its own report file
    deadline = time.monotonic() + job.limits.submission_timeout
    for nb in job.notebooks:
        nb_path = course / "submitted" / job.student / job.assignment / f"{nb}.ipynb"
        if not nb_path.exists():
            continue
        why = ""  # the first reason of this run wins, as the one that cost the points
        left = deadline - time.monotonic()
        if left <= 0:
            why = f"not run: the submission used up its {job.limits.submission_timeout} s"
        else:
            argv = ["autograde", job.assignment, "--student", job.student, "--notebook", nb,
                    "--force", "--log-level=WARN", f"--BoundedExecute.report_file={reports[nb]}"]
            returncode, output = run_nbgrader(argv, scratch, env, left)
            log.append(output)
            if returncode is None:
                why = (f"stopped: the submission ran longer than its "
                       f"{job.limits.submission_timeout} s")
            report = json.loads(reports[nb].read_text()) if reports[nb].exists() else {}
            if report.get("grader_error"):
                result.status = "error"
                why = why or f"grading failed, not the student's doing: {report['grader_error']}"
            elif report.get("stopped"):
                why = why or report["stopped"]
            if returncode not in (0, None) and not why:
                why = ("nbgrader could not grade this notebook: "
                       + _nbgrader_error(output, returncode))
        if why:  # before what _check_notebooks said (edited metadata), which cost nothing
            why = _one_line(why, limit=None)
            result.reasons[nb] = f"{why}; {result.reasons[nb]}" if nb in result.reasons else why
    result.log = "\n".join(log)[-20_000:]


def _nbgrader_error(output: str, returncode: int) -> str:
    """Why nbgrader failed, in one line: the exception that ends the last traceback it
    logged (nbgrader indents the traceback; the exception is its least indented line that
    is not a ``File`` line), else its first error message, else its exit code."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines)
              if line.rstrip().endswith("Traceback (most recent call last):")]
    if starts:
        block = []
        for line in lines[starts[-1] + 1:]:
            if line.startswith("["):  # the next log record
                break
            if line.strip():
                block.append(line)
        indent = min((len(line) - len(line.lstrip()) for line in block), default=0)
        ends = [line.strip() for line in block if len(line) - len(line.lstrip()) == indent
                and not line.strip().startswith("File ")]
        if ends:
            return _one_line(ends[-1])
    errors = [line.split("ERROR]", 1)[1].strip() for line in lines
              if "ERROR]" in line and "Please see" not in line
              and "There was an error" not in line and "Traceback" not in line]
    errors = [e for e in errors if e]
    return _one_line(errors[0]) if errors else f"exit {returncode}"


#: what the fork server imports once: nbgrader alone takes 1 to 2.5 s to import, which every
#: notebook would pay again in a fresh process
_PRELOAD = ["nbgrader.apps.autogradeapp", "course.grading_plugins"]


def run_nbgrader(argv: list, cwd: Path, env: dict, timeout: float) -> tuple:
    """Run ``nbgrader ARGV`` in ``cwd`` with ``env``; ``(exit code or None if killed at the
    timeout, its output)``.

    The run is a child process, so that it can be killed: forked from a server that has
    nbgrader imported already (``multiprocessing``'s forkserver), or, where this process may
    not have children of that kind (a daemonic Dask worker), a plain ``python -m nbgrader``.
    """
    import multiprocessing

    log = Path(cwd) / f"nbgrader-{uuid.uuid4().hex[:8]}.log"
    if multiprocessing.current_process().daemon:
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "nbgrader", *argv], cwd=cwd, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                returncode = None
    else:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        child = context.Process(target=_nbgrader_child, args=(argv, str(cwd), env, str(log)))
        child.start()
        child.join(timeout)
        if child.is_alive():
            os.killpg(child.pid, signal.SIGKILL)
            child.join()
            returncode = None
        else:
            returncode = child.exitcode
    output = log.read_text(errors="replace") if log.exists() else ""
    log.unlink(missing_ok=True)
    return returncode, output


def _nbgrader_child(argv: list, cwd: str, env: dict, log: str) -> None:
    """The body of a forked nbgrader run: its own session, output, folder and environment."""
    import tempfile as _tempfile

    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    _tempfile.tempdir = None  # the server may have cached another TMPDIR
    from nbgrader.apps.autogradeapp import AutogradeApp

    # traitlets reads TRAITLETS_APPLICATION_RAISE_CONFIG_FILE_ERROR at import, in the server
    AutogradeApp.launch_instance(argv[1:], raise_config_file_errors=True)


def _collect(scratch: Path, course: Path, job: Job, result: Result) -> None:
    """Scores and comments from the scratch gradebook; the autograded notebooks, with notes."""
    from nbgrader.api import Gradebook, MissingEntry

    folder = course / "autograded" / job.student / job.assignment
    ungraded = {nb for nb in job.notebooks if not (folder / f"{nb}.ipynb").exists()}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        assignment = gb.find_assignment(job.assignment)
        try:
            submission = gb.find_submission(job.assignment, job.student)
            result.timestamp = submission.timestamp.isoformat() if submission.timestamp else None
            by_name = {nb.name: nb for nb in submission.notebooks}
        except MissingEntry:
            by_name = {}
        for notebook in assignment.notebooks:
            graded = by_name.get(notebook.name)
            grades = {g.name: g for g in graded.grades} if graded else {}
            comments = {c.name: c for c in graded.comments} if graded else {}
            failed = notebook.name in result.reasons and notebook.name in ungraded
            for cell in notebook.grade_cells:
                grade = grades.get(cell.name)
                score = grade.auto_score if grade is not None else None
                if failed or (cell.cell_type == "code" and score is None):
                    score = 0.0  # not run, not readable, not graded: no points, never "pending"
                needs_manual = cell.cell_type != "code" and not failed
                result.grades[(notebook.name, cell.name)] = (score, cell.max_score, needs_manual,
                                                             cell.cell_type == "code")
            for cell in notebook.source_cells:
                comment = comments.get(cell.name)
                if comment is not None and comment.auto_comment:
                    result.comments[(notebook.name, cell.name)] = comment.auto_comment
    for nb in job.notebooks:
        if nb in ungraded:
            notebook = _stand_in(course, job, nb)
        else:
            notebook = nbformat.read(folder / f"{nb}.ipynb", as_version=4)
        if nb in result.reasons:
            reason = re.sub(r"([\\`*_{}\[\]<>#|$])", r"\\\1", result.reasons[nb])  # literal text
            notebook.cells.insert(0, nbformat.v4.new_markdown_cell(
                f"{GRADING_NOTE} {reason}. Cells that did not pass score 0."))
        result.notebooks[nb] = nbformat.writes(notebook).encode()
    if result.status != "error" and any(why != result.notes.get(nb)
                                          for nb, why in result.reasons.items()):
        result.status = "failed" if ungraded else "stopped"  # a repair alone costs nothing


def _stand_in(course: Path, job: Job, nb: str):
    """The notebook to show when the submitted one could not be graded: the student's copy if
    it can be read, else the release version (the source without solutions)."""
    submitted = course / "submitted" / job.student / job.assignment / f"{nb}.ipynb"
    try:
        return nbformat.read(submitted, as_version=4)
    except Exception:
        pass
    source = course / "source" / job.assignment / f"{nb}.ipynb"
    notebook = nbformat.read(source, as_version=4)
    from nbgrader.preprocessors import ClearSolutions, ClearHiddenTests, ClearOutput

    for step in (ClearSolutions(), ClearHiddenTests(), ClearOutput()):
        notebook, _ = step.preprocess(notebook, {})
    return notebook
