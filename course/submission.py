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
``autograde``. Whatever goes wrong (a missing, corrupt or misnamed notebook, a notebook
that nbgrader rejects, a kernel killed by the memory cap, a time-out) ends as scores of 0
for the cells that did not pass and a reason, never as an exception or a submission left
"needs autograding".
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

from course.sandbox import KERNEL_NAME, MemoryCap, Sandbox, check_sandbox, gib, python_folders, \
    write_kernelspec

__all__ = ["Limits", "Job", "Result", "grade_submission", "run_nbgrader", "GRADING_NOTE"]

#: the first words of the markdown cell that tells the student why grading stopped early
GRADING_NOTE = "**Grading note:**"
#: what one submission may hold, in bytes: more is not copied (and the reason says so)
MAX_SUBMISSION_BYTES = 64 * 2 ** 20


@dataclass(frozen=True)
class Limits:
    """The bounds of one submission.

    Attributes:
        memory: bytes of memory for all its kernels together.
        cell_timeout: seconds one cell may run before it is interrupted.
        notebook_timeout: seconds one notebook may run.
        submission_timeout: seconds the whole submission may take; past it nbgrader is
            killed (a backstop: the other limits stop a notebook earlier).
        output_bytes: what one cell may print.
        sandbox: run kernels in bubblewrap (False only on the instructor's explicit word).
    """

    memory: int = 4 * 2 ** 30
    cell_timeout: int = 300
    notebook_timeout: int = 600
    submission_timeout: int = 1800
    output_bytes: int = 100_000
    sandbox: bool = True


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
            score 0), "needs review" (the grading guard found the grading machinery tampered
            with: every autograded cell scores 0 until a person looks) or "error" (the grader
            itself failed: not the student's fault).
        tampered: whether the grading guard or its scan found tampering (the reasons say what).
        seconds, peak_memory: the wall time and the peak memory (bytes, 0 if unknown).
    """

    assignment: str
    student: str
    grades: dict = field(default_factory=dict)
    comments: dict = field(default_factory=dict)
    notebooks: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)
    status: str = "graded"
    tampered: bool = False
    seconds: float = 0.0
    peak_memory: int = 0
    timestamp: Optional[str] = None
    log: str = ""

    def reason_text(self) -> str:
        """All reasons in one line, notebook by notebook."""
        return "; ".join(f"{nb}: {why}" for nb, why in self.reasons.items())


def grade_submission(job: Job) -> Result:
    """Autograde one submission in a scratch course; never raises for the student's doing."""
    start = time.perf_counter()
    result = Result(job.assignment, job.student)
    scratch = Path(tempfile.mkdtemp(prefix=f"dpm-grade-{_safe(job.student)}-"))
    cap = None
    try:
        course = _lay_out(scratch, job)
        runnable = _check_notebooks(course, job, result)
        if job.limits.sandbox:
            check_sandbox()
            cap = MemoryCap.create(job.limits.memory)
        if runnable:
            _run_autograde(scratch, course, job, cap, result)
        _collect(scratch, course, job, result)
    except Exception as err:  # the grader's own failure: every cell 0, and the instructor told
        result.status = "error"
        result.reasons["(grader)"] = f"grading failed: {type(err).__name__}: {err}"
        for nb in job.notebooks:
            result.notebooks.setdefault(nb, b"")
    finally:
        if cap is not None:
            result.peak_memory = cap.peak()
            cap.remove()
        shutil.rmtree(scratch, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:40]


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
    for name in ("runtime", "jupyter", "jupyter-config", "reports"):
        (scratch / name).mkdir()
    return course


def _check_notebooks(course: Path, job: Job, result: Result) -> list:
    """The expected notebooks that nbgrader can read; a reason for each that it cannot."""
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
            if notebook.get("nbformat") != 4:
                raise ValueError(f"nbformat {notebook.get('nbformat')} (expected 4)")
            nbformat.validate(notebook)
            if _repair(notebook):
                nbformat.write(notebook, path)
        except Exception as err:
            result.reasons[nb] = (f"{nb}.ipynb could not be read as a Jupyter notebook "
                                  f"({type(err).__name__}: {str(err).splitlines()[0][:200]})")
            path.unlink()
            continue
        runnable.append(nb)
    for skipped in job.skipped:
        result.reasons.setdefault("(files)", skipped)
    return runnable


def _repair(notebook) -> bool:
    """Make a copy-pasted graded cell harmless: keep the first cell of each grade id (the
    copies run as plain cells) and make Jupyter cell ids unique; True if anything changed.

    nbgrader refuses such a notebook outright ("old version of the nbgrader metadata").
    """
    changed, seen_grade_ids, seen_ids = False, set(), set()
    for cell in notebook.cells:
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta and meta.get("grade_id"):
            if meta["grade_id"] in seen_grade_ids:
                del cell["metadata"]["nbgrader"]
                changed = True
            seen_grade_ids.add(meta["grade_id"])
        if "id" in cell:
            if cell["id"] in seen_ids:
                cell["id"] = uuid.uuid4().hex[:8]
                changed = True
            seen_ids.add(cell["id"])
    return changed


def _config(scratch: Path, course: Path, job: Job, cap: Optional[MemoryCap]) -> str:
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
        # ZeroMQ over Unix sockets (TCP cannot cross the sandbox's network namespace), in a
        # folder that both sides see at the same path; the connection file lands there too
        "c.KernelManager.transport = 'ipc'",
        f"c.KernelManager.ip = {str(scratch / 'runtime' / 'kernel')!r}",
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
    """The folders of FashionMNIST and of its decompressed cache, the cache filled first.

    The kernels see both read-only, so the cache must be written out here, before them.
    """
    from dpm_core.data import cache_idx, data_cache_dir, find_data_files

    try:
        files = find_data_files("fashion-mnist", download=False)
    except Exception:  # no data: the notebooks say so in their own error
        return []
    for path in files.values():
        cache_idx(path)
    return sorted({Path(p).resolve().parent for p in files.values()}) + [data_cache_dir()]


def _run_autograde(scratch: Path, course: Path, job: Job, cap: Optional[MemoryCap],
                   result: Result) -> None:
    """nbgrader autograde in the scratch course, bounded by the submission's time limit."""
    (scratch / "nbgrader_config.py").write_text(_config(scratch, course, job, cap))
    env = dict(os.environ, OMP_NUM_THREADS="1", JUPYTER_PATH=str(scratch / "jupyter"),
               JUPYTER_RUNTIME_DIR=str(scratch / "runtime"),
               JUPYTER_CONFIG_DIR=str(scratch / "jupyter-config"), TMPDIR=str(scratch / "runtime"),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
               TRAITLETS_APPLICATION_RAISE_CONFIG_FILE_ERROR="1")
    env.pop("NBGRADER_EXECUTION", None)
    env.pop("JPY_PARENT_PID", None)
    if job.limits.sandbox:
        workdir = course / "autograded" / job.student / job.assignment
        workdir.mkdir(parents=True)
        sandbox = Sandbox(workdir=workdir, runtime_dir=scratch / "runtime",
                          readonly=tuple(python_folders() + _prepare_data()),
                          memory=job.limits.memory, cgroup=cap.path if cap else None,
                          env=_kernel_env(job))
        write_kernelspec(scratch / "jupyter", sandbox.kernel_argv())
    reports = {}
    for nb in job.notebooks:
        reports[nb] = scratch / "reports" / f"{nb}.json"
    # one nbgrader run per notebook, so that each writes its own report file
    deadline = time.monotonic() + job.limits.submission_timeout
    log = []
    for nb in job.notebooks:
        nb_path = course / "submitted" / job.student / job.assignment / f"{nb}.ipynb"
        if not nb_path.exists():
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            result.reasons.setdefault(nb, f"not run: the submission used up its "
                                          f"{job.limits.submission_timeout} s")
            continue
        argv = ["autograde", job.assignment, "--student", job.student, "--notebook", nb,
                "--force", "--log-level=WARN", f"--BoundedExecute.report_file={reports[nb]}"]
        returncode, output = run_nbgrader(argv, scratch, env, left)
        if returncode is None:
            result.reasons.setdefault(nb, f"stopped: the submission ran longer than its "
                                          f"{job.limits.submission_timeout} s")
        log.append(output)
        if reports[nb].exists():
            report = json.loads(reports[nb].read_text())
            if report.get("grader_error"):
                result.status = "error"
                result.reasons.setdefault(nb, f"grading failed, not the student's doing: "
                                              f"{report['grader_error']}")
            elif report.get("tampered"):
                result.tampered = True
                result.reasons[nb] = ("needs review, 0 autograded points: the grading machinery "
                                      "was tampered with (" + "; ".join(report["tampered"]) + ")")
            elif report.get("stopped"):
                result.reasons.setdefault(nb, report["stopped"])
        if returncode not in (0, None) and nb not in result.reasons:
            errors = [line.split("ERROR]", 1)[1].strip() for line in output.splitlines()
                      if "ERROR]" in line and "Please see" not in line and "There was an error" not in line]
            result.reasons[nb] = ("nbgrader could not grade this notebook: "
                                  + (errors[0][:300] if errors else f"exit {returncode}"))
    result.log = "\n".join(log)[-20_000:]


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
    if result.status != "error" and result.tampered:
        result.status = "needs review"
    elif result.status != "error" and result.reasons:
        result.status = "failed" if ungraded else "stopped"


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
