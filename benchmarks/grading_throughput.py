"""Students per hour: serial nbgrader against the sandboxed Dask grader (1 and 2 workers),
before and after warm kernels.

One simulated class (half reference solutions, half untouched releases, of every
assignment) is graded five times, each time in a fresh copy of the same course:

1. plain ``nbgrader autograde``, one student after the other, no sandbox (as before);
2. ``course.grade`` with a LocalCluster of 1 worker (sandbox, limits, merge included), each
   kernel started cold in a bwrap of its own (``--cold-kernels``: before);
3. the same with 2 workers;
4. and 5. ``course.grade`` with 1 and 2 workers, kernels forked from each worker's warm
   server (:mod:`course.warm`: after; each worker starts its server on its first notebook).

The runs follow each other in one process, so they meet the same machine; still, a figure
taken while other work runs is worth little: run it on an idle machine.

With ``--kept-templates`` the two ``course.grade`` runs find their template gradebooks kept
from an earlier run (made before the clock starts), as a re-grade of the same assignments does.

    python benchmarks/grading_throughput.py [--students 4] [--assignments vae_basics ...]
        [--kept-templates] [--phases serial cold warm]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from course import pipeline
from course.grade import grade_class, scores
from course.merge import template_gradebook
from course.submission import Limits

REPO = Path(__file__).resolve().parent.parent


#: (label, workers or None for serial nbgrader, warm kernels)
PHASES = (("serial nbgrader", None, False),
          ("course.grade, 1 worker, cold", 1, False), ("course.grade, 2 workers, cold", 2, False),
          ("course.grade, 1 worker, warm", 1, True), ("course.grade, 2 workers, warm", 2, True))


def make_course(folder: Path, assignments: list, students: int) -> list:
    """A course in ``folder`` with its release and ``students`` submissions; their names."""
    shutil.copytree(REPO / "source", folder / "source")
    (folder / "course").mkdir()
    pipeline.generate_release(folder, assignments)
    names = []
    for i in range(students):
        origin = "source" if i % 2 == 0 else "release"
        name = f"student-{i:02d}-{'reference' if origin == 'source' else 'release'}"
        pipeline.submit(folder, assignments, name, origin)
        names.append(name)
    return names


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=4)
    parser.add_argument("--assignments", nargs="+", help="default: all of assignments.json")
    parser.add_argument("--kept-templates", action="store_true",
                        help="make the template gradebooks before the clock starts (a re-grade)")
    parser.add_argument("--phases", nargs="+", choices=("serial", "cold", "warm"),
                        default=["serial", "cold", "warm"],
                        help="which runs to make (default: all five)")
    args = parser.parse_args(argv)
    phases = [(label, workers, warm) for label, workers, warm in PHASES
              if ("serial" if workers is None else "warm" if warm else "cold") in args.phases]
    assignments = [a for a in pipeline.load_assignments()
                   if not args.assignments or a["name"] in args.assignments]
    figures = {}
    with tempfile.TemporaryDirectory(prefix="dpm-bench-") as tmp:
        for label, workers, warm in phases:
            course = Path(tmp) / label.replace(" ", "_").replace(",", "")
            students = make_course(course, assignments, args.students)
            if workers is not None and args.kept_templates:
                for a in assignments:
                    template_gradebook(course, a["name"])
            start = time.perf_counter()
            if workers is None:
                for s in students:
                    pipeline.autograde(course, assignments, s)
                points = None
            else:
                results = grade_class(course, assignments, students, Limits(warm=warm),
                                      workers=workers, progress=False)
                points = sorted({scores(r) for r in results})
            wall = time.perf_counter() - start
            figures[label] = wall
            notebooks = args.students * sum(len(a["notebooks"]) for a in assignments)
            print(f"{label:<34} {args.students} students x {len(assignments)} assignments: "
                  f"{wall:7.1f} s, {wall / args.students:6.1f} s per student, "
                  f"{3600 * args.students / wall:6.0f} students/hour, "
                  f"{wall * (workers or 1) / notebooks:5.1f} worker-s per notebook"
                  + (f"  (scores seen: {points})" if points else ""), flush=True)
            if workers is not None:  # what each notebook took on its worker, by kind of student
                for kind in ("reference", "release"):
                    took = [r.seconds / len(r.notebooks) for r in results
                            if r.student.endswith(kind) and r.notebooks]
                    if took:
                        print(f"{'':34} {kind} notebooks: {sum(took) / len(took):5.1f} s each "
                              f"on their worker (at most {max(took):.1f} s)", flush=True)
    wall = {(workers, warm): figures[label] for label, workers, warm in phases}
    for warm, when in ((False, "cold"), (True, "warm")):
        if (1, warm) in wall and (2, warm) in wall:
            print(f"{when} kernels: 2 workers grade {wall[1, warm] / wall[2, warm]:.2f}x as many "
                  f"students per hour as 1 worker" + (
                      f", {wall[None, False] / wall[2, warm]:.2f}x as serial nbgrader"
                      if (None, False) in wall else ""))
    if all((w, k) in wall for w in (1, 2) for k in (False, True)):
        print(f"warm against cold kernels: {wall[1, False] / wall[1, True]:.2f}x at 1 worker, "
              f"{wall[2, False] / wall[2, True]:.2f}x at 2")
    print(f"({os.cpu_count()} cores, load average now {os.getloadavg()[0]:.1f})")
    return figures


if __name__ == "__main__":
    main()
