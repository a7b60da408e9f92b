"""Where one notebook's grading time goes: a reference solution of every assignment, graded one
after the other by ``course.submission.grade_submission`` in this process (sandbox, judges and
limits as in a class run; no Dask), then split by the timings in the autograded notebook.

For each notebook it prints the wall time of the submission and its parts: the setup cell
(imports), the data cell, the given cells (training, figures), the judges (each graded cell:
the requests to the kernel and the comparison here) and the rest (laying out the scratch
course, nbgrader's own work, starting and stopping the kernel), then the slowest cells.
Run it on an idle machine. Before the clock starts, the first assignment is graded once
(untimed, its figure printed apart): that starts nbgrader's fork server and the warm kernel
server, which a worker does once. ``--kernels cold warm`` grades each assignment twice, side by
side: with every kernel in a bwrap of its own (cold, as before warm kernels), then warm.

    python benchmarks/grading_profile.py [--assignments vae_basics ...] [--top 5]
        [--kernels cold warm]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grading_throughput import make_course  # noqa: E402

from course import pipeline  # noqa: E402
from course.grade import read_submission, _source_files  # noqa: E402
from course.handout import student_package  # noqa: E402
from course.judges import JUDGED  # noqa: E402
from course.merge import template_gradebook  # noqa: E402
from course.submission import Job, Limits, grade_submission  # noqa: E402


def _seconds(timing: dict, start: str, end: str) -> float | None:
    """Seconds from the ``start`` to the ``end`` timestamp of a cell's execution metadata."""
    if start not in timing or end not in timing:
        return None
    when = {k: datetime.fromisoformat(timing[k].replace("Z", "+00:00")) for k in (start, end)}
    return (when[end] - when[start]).total_seconds()


def cell_times(notebook) -> list:
    """``[(seconds, part, name)]`` of every cell that ran: part is setup, data, judge or cells."""
    rows = []
    for cell in notebook.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        name = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
        judged = _seconds(timing, "judge.started", "judge.finished")
        ran = _seconds(timing, "iopub.status.busy", "iopub.status.idle")
        if judged is not None:
            rows.append((judged, "judges", name))
        elif ran is not None:
            part = name if name in ("setup", "data") else "cells"
            rows.append((ran, part, name or cell.source.splitlines()[0][:40]))
    return rows


def profile(assignments: list, top: int = 5, kinds=("warm",)) -> dict:
    """Grade a reference solution of each assignment with each kind of kernel (``"cold"``,
    ``"warm"``), side by side; print and return the parts, per notebook and kind."""
    figures = {}
    with tempfile.TemporaryDirectory(prefix="dpm-profile-") as tmp:
        root = Path(tmp)
        student = make_course(root, assignments, 1)[0]

        def job(a, kind: str) -> Job:
            files, _ = read_submission(root / "course" / "submitted" / student / a["name"])
            return Job(a["name"], student, list(a["notebooks"]), _source_files(root, a["name"]),
                       files, template_gradebook(root, a["name"]), Limits(warm=kind == "warm"),
                       package=student_package(a["name"]) if a["name"] in JUDGED else {})

        for kind in kinds:
            first = job(assignments[0], kind)
            start = time.perf_counter()
            grade_submission(first)
            print(f"a worker's start-up, once (nbgrader's fork server"
                  f"{', the warm kernel server' if kind == 'warm' else ''}; "
                  f"{assignments[0]['name']} graded whole, {kind} kernels): "
                  f"{time.perf_counter() - start:.1f} s")
        for a in assignments:
            for kind in kinds:
                graded = job(a, kind)
                start = time.perf_counter()
                result = grade_submission(graded)
                figures.update(_report(result, time.perf_counter() - start, kind, top))
        shutil.rmtree(root, ignore_errors=True)
    for kind in kinds:
        took = [f["seconds"] for (_, k), f in figures.items() if k == kind]
        print(f"{kind} kernels, all {len(took)} notebooks: {sum(took):.1f} s, at most "
              f"{max(took):.1f} s each")
    return figures


def _report(result, wall: float, kind: str, top: int) -> dict:
    """Print one graded submission's parts per notebook; ``{(notebook, kind): parts}``."""
    figures = {}
    points = sum(g[0] or 0 for g in result.grades.values() if g[3])
    most = sum(g[1] for g in result.grades.values() if g[3])
    for nb, data in result.notebooks.items():
        book = nbformat.reads(data.decode(), as_version=4) if data else None
        rows = cell_times(book) if book else []
        # an error outside a graded cell: a given cell broke under grading
        broken = [c.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
                  for c in (book.cells if book else []) if not c.get("metadata", {})
                  .get("nbgrader", {}).get("grade") and any(
                      o.get("output_type") == "error" for o in c.get("outputs", []))]
        parts = {p: sum(r[0] for r in rows if r[1] == p)
                 for p in ("setup", "data", "cells", "judges")}
        parts["rest"] = wall - sum(parts.values())
        figures[nb, kind] = {"seconds": wall, **parts, "points": f"{points:g}/{most:g}",
                             "broken": broken}
        print(f"{nb:20s} {kind} {wall:5.1f} s  " + "  ".join(
            f"{p} {v:4.1f}" for p, v in parts.items()) + f"   ({points:g}/{most:g})"
              + (f"  errors in {broken}" if broken else ""))
        for seconds, part, name in sorted(rows, reverse=True)[:top]:
            print(f"    {seconds:5.2f} s  {part:6s} {name}")
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assignments", nargs="+", help="default: all of assignments.json")
    parser.add_argument("--top", type=int, default=5, help="slowest cells shown per notebook")
    parser.add_argument("--kernels", nargs="+", choices=("cold", "warm"), default=["warm"],
                        help="cold: each kernel in a bwrap of its own (as before warm kernels); "
                             "both: each assignment graded cold, then warm")
    args = parser.parse_args(argv)
    return profile([a for a in pipeline.load_assignments()
                    if not args.assignments or a["name"] in args.assignments], args.top,
                   args.kernels)


if __name__ == "__main__":  # the fork server of nbgrader runs imports this module again
    main()
