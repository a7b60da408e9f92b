"""Grade a whole class: every submission sandboxed and bounded, fanned out on Dask.

Usage (from the repository root)::

    python -m course.grade vae_basics                      # every student in course/submitted
    python -m course.grade --all --students alice bob      # all assignments, two students
    python -m course.grade vae_basics --workers 8 --memory 4GiB --cell-timeout 300
    python -m course.grade vae_basics --scheduler tcp://10.0.0.5:8786   # an existing cluster

Each submission is one Dask task, :func:`course.submission.grade_submission`, run on a
worker in a scratch course with nbgrader's ``autograde`` and the kernel in bubblewrap
(:mod:`course.sandbox`). Without ``--scheduler`` an embedded ``LocalCluster`` starts (one
single-threaded worker process per core, ``OMP_NUM_THREADS=1``). With it, the tasks go to
that cluster (``dask scheduler`` + ``dask worker``, dask-jobqueue, Kubernetes); its
workers need this package installed (``pip install -e .`` of this repository) and
bubblewrap, not the course's files: the submission travels with the task.

Results come back to this process, the only writer of ``course/gradebook.db``; the
formgrader, ``nbgrader generate_feedback`` and ``nbgrader export`` read it as usual. A
progress bar counts submissions; a summary table ends the run.

Before any grading, the command checks what it was asked: ``--students`` names without a
submission folder and an assignment nobody submitted are refused (nothing is written), and
an assignment the gradebook does not know, or knows with other cells than ``source/`` has
now, is registered with nbgrader's ``generate_assignment`` (into the gradebook only:
``release/`` is left alone). The exit status is 0 when every submission was graded, 1 when
the grader failed on any (they are listed, with the command that grades them again) and 2
when the command refused to start.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Optional

from course.handout import student_package
from course.judges import JUDGED
from course.sandbox import SandboxUnavailable, check_sandbox, gib
from course.submission import MAX_SUBMISSION_BYTES, Job, Limits, Result, grade_submission

__all__ = ["find_students", "read_submission", "grade_class", "format_summary",
           "course_assignments", "chosen_students", "register", "exit_status", "main"]

REPO = Path(__file__).resolve().parent.parent


def find_students(root: Path, assignment: str) -> list[str]:
    """Students with a folder for ``assignment`` under ``course/submitted``, sorted."""
    submitted = Path(root) / "course" / "submitted"
    if not submitted.exists():
        return []
    return sorted(p.name for p in submitted.iterdir() if (p / assignment).is_dir())


def chosen_students(root: Path, assignments: list[dict], names: Optional[list]) -> dict:
    """``{assignment: [student, ...]}`` to grade: ``names`` (or everyone with a submission).

    Raises:
        ValueError: a name has no submission folder for any chosen assignment (a typo would
            otherwise enter the gradebook as a student with 0 points), or nobody submitted.
    """
    found = {a["name"]: find_students(root, a["name"]) for a in assignments}
    submitted = Path(root) / "course" / "submitted"
    if names is not None:
        everyone = sorted({s for students in found.values() for s in students})
        unknown = [n for n in names if not any(n in students for students in found.values())]
        if unknown:
            hints = []
            for n in unknown:
                close = difflib.get_close_matches(n, everyone, n=3)
                hints.append(f"{n!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            raise ValueError(
                f"no submission folder {submitted}/NAME/{'|'.join(found)} for "
                f"{', '.join(hints)}; nothing was graded. Students with a submission: "
                f"{', '.join(everyone) or 'none'}")
        found = {a: [n for n in names if n in students] for a, students in found.items()}
    if not any(found.values()):
        raise ValueError(
            f"no submissions of {', '.join(found)} under {submitted}: put each student's "
            f"notebooks in {submitted}/STUDENT/ASSIGNMENT/ (nbgrader collect or zip_collect "
            f"does that), then grade again")
    return found


def _cells(gb, assignment: str) -> set:
    """What the gradebook knows of an assignment's cells: (notebook, cell, kind, points)."""
    known = set()
    for notebook in gb.find_assignment(assignment).notebooks:
        known |= {(notebook.name, c.name, "grade", c.max_score) for c in notebook.grade_cells}
        known |= {(notebook.name, c.name, "solution", None) for c in notebook.solution_cells}
        known |= {(notebook.name, c.name, "task", c.max_score) for c in notebook.task_cells}
    return known


def register(root: Path, assignment: str, template: bytes) -> bool:
    """Make the course's gradebook know ``assignment`` as ``source/`` has it now.

    ``template`` is a gradebook made from ``source/`` (:func:`course.merge.template_gradebook`).
    When the course's gradebook lacks the assignment or knows other cells, nbgrader's own
    ``generate_assignment --force`` registers it, run in a scratch course whose database is
    the course's: ``release/`` is not touched. Returns whether it registered.

    Raises:
        RuntimeError: nbgrader refused (for instance, cells that already hold grades were
            removed from the source), with its output.
    """
    from nbgrader.api import Gradebook, MissingEntry

    from course.pipeline import nbgrader

    db = Path(root) / "course" / "gradebook.db"
    with tempfile.TemporaryDirectory(prefix="dpm-register-") as tmp:
        (Path(tmp) / "template.db").write_bytes(template)
        with Gradebook(f"sqlite:///{tmp}/template.db") as gb:
            wanted = _cells(gb, assignment)
        if db.exists():
            with Gradebook(f"sqlite:///{db}") as gb:
                try:
                    if _cells(gb, assignment) == wanted:
                        return False
                except MissingEntry:
                    pass
        scratch = Path(tmp) / "course-root"
        shutil.copytree(Path(root) / "source" / assignment, scratch / "source" / assignment)
        (scratch / "course").mkdir()
        db.parent.mkdir(parents=True, exist_ok=True)
        nbgrader(["generate_assignment", assignment, "--force", f"--db=sqlite:///{db}"], scratch)
    return True


def exit_status(results: list[Result]) -> int:
    """1 when the grader failed on any submission (status "error"), else 0."""
    return 1 if any(r.status == "error" for r in results) else 0


def read_submission(folder: Path, limit: int = MAX_SUBMISSION_BYTES) -> tuple[dict, list]:
    """``({relative path: bytes}, [what was skipped and why])`` of a student's folder.

    Links are not followed (a link to ``/etc/shadow`` is not a submission file), and the
    files are read smallest first until ``limit`` bytes.
    """
    files, skipped, total = {}, [], 0
    if not folder.is_dir():
        return files, skipped
    entries = sorted((p for p in folder.rglob("*") if p.is_file() or p.is_symlink()),
                     key=lambda p: p.lstat().st_size)
    for path in entries:
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            skipped.append(f"{rel} is a link and was left out")
            continue
        size = path.stat().st_size
        if total + size > limit:
            skipped.append(f"{rel} ({size} bytes) was left out: a submission may hold "
                           f"{limit // 2 ** 20} MiB")
            continue
        files[rel] = path.read_bytes()
        total += size
    return files, skipped


def _source_files(root: Path, assignment: str) -> dict:
    folder = Path(root) / "source" / assignment
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _parse_bytes(text: str) -> int:
    """``4GiB``, ``512M``, ``2g`` or a number of bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"a memory size like 4GiB or 512MiB, got {text!r}")
    scale = {"": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _client(workers: int, scheduler: Optional[str]):
    """A Dask client: of an existing scheduler, or of a new LocalCluster of ``workers``."""
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    # grading work happens in nbgrader subprocesses, so the workers' own memory stays small;
    # the kernels are capped by the sandbox, not by Dask's memory manager
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # non-daemonic workers may fork nbgrader runs from a server that has it imported already
    dask.config.set({"distributed.worker.daemon": False})
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           memory_limit=0, dashboard_address=None,
                           worker_dashboard_address=None, silence_logs=40)
    return Client(cluster), cluster


def grade_class(root: Path, assignments: Iterable[dict], students: Optional[list] = None,
                limits: Limits = Limits(), workers: Optional[int] = None,
                scheduler: Optional[str] = None, progress: bool = True) -> list[Result]:
    """Grade every (assignment, student) pair and merge the results into the gradebook.

    Args:
        root: the course root (``source/``, ``course/gradebook.db``, ``course/submitted``).
        assignments: entries of ``course/assignments.json`` (``name``, ``notebooks``).
        students: whom to grade; by default everyone with a submission folder.
        limits: memory, time and output bounds of each submission.
        workers: LocalCluster size (default: the number of cores).
        scheduler: the address of an existing Dask scheduler instead.
        progress: show a progress bar (stderr).

    Returns:
        The results, in the order they finished.

    Raises:
        SandboxUnavailable: when ``limits.sandbox`` and bwrap cannot run here.
        ValueError: see :func:`chosen_students` (before anything is graded or written).
        RuntimeError: nbgrader could not register an assignment (:func:`register`).
    """
    from dask.distributed import as_completed
    from nbgrader.api import Gradebook
    from tqdm.auto import tqdm

    from course.merge import merge_results, template_gradebook

    root = Path(root).resolve()
    assignments = list(assignments)
    if limits.sandbox and not scheduler:
        check_sandbox()
    db = root / "course" / "gradebook.db"
    chosen = chosen_students(root, assignments, students)
    wanted = [a for a in assignments if chosen[a["name"]]]
    # a template is an nbgrader run of seconds in a process of its own: made side by side, while
    # this thread builds the student builds of dpm_core (a judged assignment's kernels import
    # dpm_core without the references of its exercises)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        made = pool.map(lambda a: template_gradebook(root, a["name"]), wanted)
        packages = {a["name"]: student_package(a["name"]) for a in wanted if a["name"] in JUDGED}
        templates = list(made)
    pending = []
    for a, template in zip(wanted, templates):
        if register(root, a["name"], template) and progress:
            print(f"registered {a['name']} in {db} (nbgrader generate_assignment, as source/ "
                  f"has it now)", file=sys.stderr)
        source = _source_files(root, a["name"])
        pending += [(a, s, template, source) for s in chosen[a["name"]]]
    workers = workers or os.cpu_count() or 1

    def job(a, student, template, source) -> Job:
        files, skipped = read_submission(root / "course" / "submitted" / student / a["name"])
        if not files:
            skipped.append("the submission folder is empty or missing")
        return Job(a["name"], student, list(a["notebooks"]), source, files, template, limits,
                   skipped, packages.get(a["name"], {}))

    results = []
    client, cluster = _client(workers, scheduler)
    bar = tqdm(total=len(pending), unit="submission", disable=not progress, file=sys.stderr,
               desc="grading")
    start = time.perf_counter()
    try:
        workers_now = len(client.scheduler_info().get("workers", {})) or workers
        queue, sent = iter(pending), {}  # sent: future key -> (assignment, student)

        def submit_next(futures) -> None:
            """Read and send the next submission: a few in flight, not the class in memory."""
            item = next(queue, None)
            if item is not None:
                j = job(*item)
                future = client.submit(grade_submission, j, pure=False, retries=1)
                sent[future.key] = (item[0], j.student)
                futures.add(future)

        futures = as_completed([])
        for _ in range(2 * max(1, workers_now)):
            submit_next(futures)
        with Gradebook(f"sqlite:///{db}") as gb:
            # what finished while the last batch was merged is merged in one transaction
            for batch in futures.batches():
                ready = []
                for future in batch:
                    a, student = sent.pop(future.key)
                    try:
                        ready.append(future.result())
                    except Exception as err:  # the worker died (KilledWorker) or the task failed
                        why = f"grading failed: {type(err).__name__}: {err}"
                        ready.append(Result(a["name"], student, status="error",
                                            reasons={"(grader)": why},
                                            notebooks={nb: b"" for nb in a["notebooks"]}))
                    future.release()
                    submit_next(futures)  # the workers grade on while this batch is merged
                merge_results(gb, ready, root / "course" / "autograded")
                results += ready
                bar.update(len(ready))
                rate = len(results) / max(time.perf_counter() - start, 1e-9) * 3600
                bar.set_postfix_str(f"{rate:.0f} submissions/hour")
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
    return results


def scores(result: Result) -> tuple[float, float]:
    """(autograded points, autograded maximum) of a result."""
    code = [(s or 0.0, m) for (s, m, _, autograded) in result.grades.values() if autograded]
    return sum(s for s, _ in code), sum(m for _, m in code)


def format_summary(results: list[Result], assignments: list[dict]) -> str:
    """One row per student: points per assignment, time, peak memory, reasons and flags;
    a last line counts the submissions that the grader itself failed to grade."""
    names = [a["name"] for a in assignments]
    by_student: dict = {}
    for r in results:
        by_student.setdefault(r.student, {})[r.assignment] = r
    width = max([len(n) for n in names] + [9]) + 2
    head = (f"{'student':<24}" + "".join(f"{n:>{width}}" for n in names)
            + f"{'time':>9}{'peak mem':>11}  status / reason")
    lines = [head, "-" * len(head)]
    for student in sorted(by_student):
        row = by_student[student]
        cells, seconds, peak, notes = [], 0.0, 0, []
        for n in names:
            r = row.get(n)
            if r is None:
                cells.append("-")
                continue
            got, best = scores(r)
            cells.append(f"{got:g} / {best:g}")
            seconds += r.seconds
            peak = max(peak, r.peak_memory)
            if r.status != "graded" or r.reasons:
                notes.append(f"[{r.status}] {r.reason_text()}" if len(names) == 1
                             else f"{n} [{r.status}] {r.reason_text()}")
        lines.append(f"{student[:23]:<24}" + "".join(f"{c:>{width}}" for c in cells)
                     + f"{seconds:>8.1f}s" + f"{(gib(peak) if peak else 'n/a'):>11}  "
                     + ("; ".join(notes) or "graded"))
    errors = [r for r in results if r.status == "error"]
    if errors:
        lines.append(f"\n{len(errors)} of {len(results)} submissions were NOT graded because the "
                     f"grader failed (status [error]: not the students' doing); fix the cause "
                     f"shown above and grade them again: --students "
                     + " ".join(sorted({r.student for r in errors})))
    return "\n".join(lines)


def course_assignments(root: Path) -> list[dict]:
    """The assignments of ``<root>/course/assignments.json``, or, without that file, one per
    folder of ``<root>/source`` with the notebooks it holds."""
    from course.pipeline import load_assignments

    if (Path(root) / "course" / "assignments.json").exists():
        return load_assignments(root)
    return [{"name": d.name, "notebooks": sorted(p.stem for p in d.glob("*.ipynb"))}
            for d in sorted((Path(root) / "source").iterdir()) if d.is_dir()]


def main(argv: Optional[list] = None) -> int:
    """The command line; returns the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m course.grade",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("assignments", nargs="*", help="assignment names (or --all)")
    parser.add_argument("--all", action="store_true", help="every assignment of assignments.json")
    parser.add_argument("--students", nargs="+", help="grade only these students")
    parser.add_argument("--workers", type=int, help="LocalCluster workers (default: cores)")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler, "
                                            "e.g. tcp://HOST:8786")
    parser.add_argument("--memory", type=_parse_bytes, default=Limits.memory,
                        help="memory per submission (default 4GiB)")
    parser.add_argument("--cell-timeout", type=int, default=Limits.cell_timeout,
                        help="seconds per cell (default %(default)s)")
    parser.add_argument("--notebook-timeout", type=int, default=Limits.notebook_timeout,
                        help="seconds per notebook (default %(default)s)")
    parser.add_argument("--submission-timeout", type=int, default=Limits.submission_timeout,
                        help="seconds per submission (default %(default)s)")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run student code WITHOUT a sandbox, with your rights "
                             "(only where bubblewrap cannot run, and only for code you trust)")
    parser.add_argument("--cold-kernels", action="store_true",
                        help="start every kernel in a bwrap of its own instead of forking it "
                             "from the worker's warm server (slower; the same sandbox)")
    parser.add_argument("--root", type=Path, default=REPO, help="course root (default: repo)")
    args = parser.parse_args(argv)
    known = {a["name"]: a for a in course_assignments(args.root)}
    if args.all:
        chosen = list(known.values())
    else:
        unknown = [n for n in args.assignments if n not in known]
        if unknown or not args.assignments:
            parser.error(f"name assignments from {sorted(known)} or pass --all"
                         + (f" (unknown: {unknown})" if unknown else ""))
        chosen = [known[n] for n in args.assignments]
    limits = Limits(memory=args.memory, cell_timeout=args.cell_timeout,
                    notebook_timeout=args.notebook_timeout,
                    submission_timeout=args.submission_timeout,
                    sandbox=not args.unsafe_no_sandbox, warm=not args.cold_kernels)
    try:
        results = grade_class(args.root, chosen, args.students, limits, args.workers,
                              args.scheduler)
    except SandboxUnavailable as err:
        print(f"course.grade: refusing to run student code unsandboxed: {err}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as err:
        print(f"course.grade: {err}", file=sys.stderr)
        return 2
    print(format_summary(results, chosen))
    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
