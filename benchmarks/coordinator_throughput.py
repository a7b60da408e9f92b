"""Can the class grader's coordinator keep up? Merge seconds per submission as the gradebook fills.

``course.grade.grade_class`` sends one Dask task per (assignment, student); the coordinating
process is the only writer of ``course/gradebook.db`` and merges every finished
:class:`course.submission.Result` with :func:`course.merge.merge_results` (the rows of
nbgrader's tables, then the autograded notebook and ``grading.json`` on disk). This benchmark
times that merge alone, without any grading: in a temporary course whose gradebook knows the
course's real assignments (registered from ``source/`` by nbgrader's ``generate_assignment``,
as ``grade_class`` registers them), it feeds ``--submissions`` synthetic results into one
open Gradebook, as ``grade_class`` does, ``--batch`` results per call (1: each result
alone, the case of a coordinator that keeps up; larger: what ``as_completed`` has ready
when it fell behind).

Each synthetic result is a realistic one: every grade cell of its assignment with a score
(a test cell full or 0 points, a written answer pending), the comments nbgrader's autograde
leaves ("No response." on an unchanged answer), the assignment's release notebook as the
autograded notebook (its own copy, as a result that arrives from a worker is), a log and a
timestamp; every 50th is a grader failure (status "error", no grades: 0 points). Results past
students x assignments grade the same submissions again (nbgrader's update path). The results
are kept, as ``grade_class`` returns them, so the peak memory is the coordinator's.

It prints the merge time per submission (mean, first and last tenth: does it grow with the
gradebook?), the total, the gradebook's size, the peak RSS, and a projection for the class:
with W workers and T seconds to grade a submission, results arrive at W / T per second; the
merge keeps up when it is faster than that.

    python benchmarks/coordinator_throughput.py [--submissions 2500] [--students 500]
        [--batch 1] [--workers 64] [--notebook-seconds 6]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from course import pipeline
from course.merge import merge_results
from course.submission import Result

REPO = Path(__file__).resolve().parent.parent


def make_course(folder: Path, assignments: list) -> None:
    """A course in ``folder`` (``source/``, ``release/``, ``course/``) whose gradebook knows
    ``assignments`` and no student: nbgrader's ``generate_assignment``, as ``grade_class``
    registers an assignment."""
    shutil.copytree(REPO / "source", folder / "source")
    (folder / "course").mkdir()
    for a in assignments:
        pipeline.nbgrader(["generate_assignment", a["name"], "--force"], folder)


def cell_layout(db: Path, assignments: list) -> dict:
    """``{assignment: [(notebook, grade cells [(name, code?, points)], comment cells)]}``."""
    from nbgrader.api import Gradebook

    layout = {}
    with Gradebook(f"sqlite:///{db}") as gb:
        for a in assignments:
            layout[a["name"]] = [
                (nb.name, [(c.name, c.cell_type == "code", c.max_score) for c in nb.grade_cells],
                 [c.name for c in nb.solution_cells] + [c.name for c in nb.task_cells])
                for nb in gb.find_assignment(a["name"]).notebooks]
    return layout


def synthetic_result(assignment: str, student: str, layout: list, notebooks: dict,
                     rng: random.Random, failed: bool) -> Result:
    """A result as a worker sends it back: scores, comments, notebooks (a fresh copy)."""
    result = Result(assignment, student, seconds=rng.uniform(4, 8), peak_memory=600 * 2 ** 20,
                    timestamp="2026-12-01T12:00:00", log="[AutogradeApp | WARNING] ...\n" * 200)
    for nb, grades, comments in layout:
        result.notebooks[nb] = b"" if failed else bytes(bytearray(notebooks[nb]))
        if failed:
            continue
        for name, code, points in grades:
            # a test cell: full or no points; a written answer: pending, for a human
            result.grades[(nb, name)] = ((points if rng.random() < 0.7 else 0.0) if code else None,
                                         points, not code, code)
        for name in comments:
            if rng.random() < 0.3:
                result.comments[(nb, name)] = "No response."
    if failed:
        result.status = "error"
        result.reasons["(grader)"] = "grading failed: KilledWorker: the worker died"
    return result


def release_bytes(root: Path, assignment: dict) -> dict:
    """The release notebook of each of the assignment's notebooks, ``{name: bytes}``."""
    return {nb: (root / "release" / assignment["name"] / f"{nb}.ipynb").read_bytes()
            for nb in assignment["notebooks"]}


def projection(per_submission: float, submissions: int, workers: int, seconds: float) -> str:
    """Whether the merge keeps up with ``workers`` grading ``seconds`` per submission, and the
    wall time: the grading's waves, or the merge's queue when it is the slower one."""
    arrivals = workers / seconds                       # results per second from the workers
    capacity = 1 / per_submission if per_submission > 0 else math.inf
    grading = math.ceil(submissions / workers) * seconds
    merging = submissions * per_submission + seconds   # the first results, then back to back
    wall = max(grading, merging)
    verdict = "keeps up" if capacity > arrivals else "is the BOTTLENECK"
    return (f"T = {seconds:g} s: results arrive at {arrivals:.1f}/s, the merge takes "
            f"{capacity:.0f}/s ({100 * arrivals / capacity:.1f}% busy): it {verdict}; "
            f"projected wall {wall / 60:.1f} min (grading alone {grading / 60:.1f} min)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=2500,
                        help="results to merge (default %(default)s = 500 students x 5)")
    parser.add_argument("--students", type=int, default=500)
    parser.add_argument("--batch", type=int, default=1,
                        help="results per merge call (default %(default)s)")
    parser.add_argument("--workers", type=int, default=64,
                        help="Dask workers of the projection (default %(default)s)")
    parser.add_argument("--notebook-seconds", type=float, default=6.0,
                        help="measured seconds to grade one submission (default %(default)s; "
                             "20 s is printed too)")
    args = parser.parse_args(argv)
    for name in ("submissions", "students", "batch", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive int, got {getattr(args, name)}")
    if args.notebook_seconds <= 0:
        parser.error(f"--notebook-seconds must be positive, got {args.notebook_seconds}")
    from nbgrader.api import Gradebook

    assignments = pipeline.load_assignments()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="dpm-coordinator-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        make_course(root, assignments)
        print(f"registered {len(assignments)} assignments in {time.perf_counter() - start:.0f} s",
              flush=True)
        db = root / "course" / "gradebook.db"
        layout = cell_layout(db, assignments)
        notebooks = {a["name"]: release_bytes(root, a) for a in assignments}
        pairs = [(a["name"], f"student-{s:04d}") for a in assignments
                 for s in range(args.students)]
        cells = sum(len(g) for nb in layout.values() for _, g, _ in nb)
        print(f"{args.submissions} results of {args.students} students x {len(assignments)} "
              f"assignments ({cells} grade cells in all), {args.batch} per merge call",
              flush=True)
        times, kept = [], []
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with Gradebook(f"sqlite:///{db}") as gb:
            for first in range(0, args.submissions, args.batch):
                batch = []
                for i in range(first, min(first + args.batch, args.submissions)):
                    a, student = pairs[i % len(pairs)]
                    batch.append(synthetic_result(a, student, layout[a], notebooks[a], rng,
                                                  failed=i % 50 == 49))
                tick = time.perf_counter()
                merge_results(gb, batch, root / "course" / "autograded")
                spent = time.perf_counter() - tick
                times += [spent / len(batch)] * len(batch)
                kept += batch
        tenth = max(1, len(times) // 10)
        figures = {"mean": statistics.fmean(times), "first": statistics.fmean(times[:tenth]),
                   "last": statistics.fmean(times[-tenth:]), "total": sum(times),
                   "db_bytes": db.stat().st_size,
                   "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   "rss_before": rss_before}
    print(f"merge per submission: mean {1e3 * figures['mean']:.2f} ms, first tenth "
          f"{1e3 * figures['first']:.2f} ms, last tenth {1e3 * figures['last']:.2f} ms; "
          f"total {figures['total']:.1f} s")
    print(f"gradebook {figures['db_bytes'] / 2 ** 20:.1f} MiB; coordinator peak RSS "
          f"{figures['peak_rss'] / 2 ** 20:.0f} MiB ({figures['rss_before'] / 2 ** 20:.0f} MiB "
          f"before the first merge; the {len(kept)} results are kept, as grade_class returns "
          f"them)")
    per = max(figures["mean"], figures["last"])  # the end of the run is the slow part, if any
    for seconds in sorted({args.notebook_seconds, 20.0}):
        print(f"500 x 5 on {args.workers} workers, " + projection(per, 2500, args.workers, seconds))
    print(f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
    return figures


if __name__ == "__main__":
    main()
