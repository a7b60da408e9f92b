"""The instructor pipeline, end to end, with a small simulated class.

1. Generate the student versions: ``source/`` -> ``release/`` (nbgrader generate_assignment).
2. Submit, for every assignment, the reference solution (student ``reference-solution``),
   the untouched release (student ``untouched-release``) and a hostile submission
   (student ``hostile-student``: the release with a first cell that tries to delete the
   gradebook, write into ``source/``, reach the network and leave a process behind).
3. Grade the three with the class grader (``python -m course.grade``): each submission in
   its own sandboxed scratch course, fanned out on a Dask LocalCluster, merged into the
   one gradebook; print its summary.
4. Print the grade table (student x assignment, points / max).
5. Write the feedback HTML (nbgrader generate_feedback) and a CSV export of the grades.

Run it from anywhere: ``python course/pipeline.py`` (``make main`` does). The state it
writes lives under ``course/`` (gitignored). It only creates, grades and overwrites its own
simulated students, so a real course's submissions in the same folders are left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUDENTS = {"reference-solution": "source", "untouched-release": "release"}
HOSTILE = "hostile-student"
#: the first cell of the hostile submission: each attempt fails quietly in the sandbox
HOSTILE_CELL = """\
import os, socket, subprocess, sys
for _attempt in (
    lambda: os.remove(os.path.join({root!r}, "course", "gradebook.db")),
    lambda: open(os.path.join({root!r}, "source", "{assignment}", "{notebook}.ipynb"), "a").write("x"),
    lambda: socket.create_connection(("127.0.0.1", {port}), timeout=3),
    lambda: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                             start_new_session=True),
):
    try:
        print("attempt:", _attempt())
    except Exception as err:
        print("blocked:", type(err).__name__, err)
"""


def load_assignments(repo: Path = REPO) -> list[dict]:
    """The course's assignments, in order, from ``course/assignments.json``."""
    with open(repo / "course" / "assignments.json") as f:
        return json.load(f)["assignments"]


def nbgrader(args: list[str], root: Path, quiet: bool = True) -> None:
    """Run one nbgrader command on the course rooted at ``root``; raise if it fails.

    nbgrader reads ``nbgrader_config.py`` from the repository root; ``DPM_COURSE_ROOT``
    points it at ``root``. Its ``alembic`` helper must be on the PATH, so the
    interpreter's folder is put first.
    """
    env = dict(os.environ, DPM_COURSE_ROOT=str(root),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
               # a broken nbgrader_config.py must stop nbgrader; by default it only logs the
               # error and goes on with nbgrader's defaults, writing into the working folder
               TRAITLETS_APPLICATION_RAISE_CONFIG_FILE_ERROR="1")
    env.pop("NBGRADER_EXECUTION", None)
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--log-level=WARN"],
                            cwd=REPO, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0 or "[ERROR]" in output or "| ERROR]" in output:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed (exit {result.returncode}):\n{output}")
    if not quiet and output.strip():
        print(output.strip())


def forget_simulated_students(root: Path, assignments: list[dict], students: list[str]) -> None:
    """Remove the simulated students' earlier submissions from the gradebook (if any).

    nbgrader refuses to regenerate an assignment whose cells changed while submissions to it
    exist; the pipeline's own students are made up again on every run, so theirs may go.
    Real students' submissions stay, and with them nbgrader's refusal.
    """
    db = root / "course" / "gradebook.db"
    if not db.exists():
        return
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{db}") as gb:
        for a in assignments:
            for student in students:
                try:
                    gb.remove_submission(a["name"], student)
                except MissingEntry:
                    pass


def generate_release(root: Path, assignments: list[dict]) -> None:
    """``source/<a>`` -> ``release/<a>`` for every assignment.

    Raises:
        RuntimeError: a hidden region of ``root/source`` differs from what
            ``course.sync_checks`` generates (someone edited it by hand).
    """
    from course.sync_checks import out_of_sync

    stale = out_of_sync(root)
    if stale:
        raise RuntimeError(f"hidden regions out of sync with course/judges in {', '.join(stale)}: "
                           f"run `python -m course.sync_checks` and commit the notebooks")
    for a in assignments:
        nbgrader(["generate_assignment", a["name"], "--force"], root)


def submit(root: Path, assignments: list[dict], student: str, origin: str) -> None:
    """Copy ``origin/<a>/*.ipynb`` (origin is ``source`` or ``release``) as the student's submission."""
    for a in assignments:
        target = _empty_submission(root, student, a["name"])
        for nb in a["notebooks"]:
            shutil.copy(root / origin / a["name"] / f"{nb}.ipynb", target / f"{nb}.ipynb")


def _empty_submission(root: Path, student: str, assignment: str) -> Path:
    """``course/submitted/<student>/<assignment>``, emptied (made if missing)."""
    target = root / "course" / "submitted" / student / assignment
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    return target


def submit_hostile(root: Path, assignments: list[dict], port: int) -> None:
    """The release of every assignment with :data:`HOSTILE_CELL` first, as ``hostile-student``;
    its network probe aims at ``127.0.0.1:port``."""
    import nbformat

    for a in assignments:
        target = _empty_submission(root, HOSTILE, a["name"])
        for nb in a["notebooks"]:
            notebook = nbformat.read(root / "release" / a["name"] / f"{nb}.ipynb", 4)
            code = HOSTILE_CELL.format(root=str(root), assignment=a["name"], notebook=nb, port=port)
            notebook.cells.insert(1, nbformat.v4.new_code_cell(code))
            nbformat.write(notebook, target / f"{nb}.ipynb")


def autograde(root: Path, assignments: list[dict], student: str) -> float:
    """Autograde one student's assignments with plain serial nbgrader (no sandbox);
    returns the seconds it took. The pipeline grades with :mod:`course.grade` instead."""
    start = time.perf_counter()
    for a in assignments:
        nbgrader(["autograde", a["name"], "--student", student, "--force"], root)
    return time.perf_counter() - start


def grade_table(root: Path, assignments: list[dict], students: list[str]) -> dict:
    """``{student: {assignment: (score, max_score)}}`` of the autograded cells, from the gradebook.

    Written answers wait for a human grader, so they are left out of both numbers.
    """
    from nbgrader.api import Gradebook

    table: dict = {}
    with Gradebook(f"sqlite:///{root / 'course' / 'gradebook.db'}") as gb:
        for s in students:
            for a in assignments:
                grades = [g for nb in gb.find_submission(a["name"], s).notebooks
                          for g in nb.grades if g.cell.cell_type == "code"]
                table.setdefault(s, {})[a["name"]] = (sum(g.score for g in grades),
                                                      sum(g.max_score for g in grades))
    return table


def format_table(table: dict, assignments: list[dict]) -> str:
    """The grade table as aligned text, one row per student, with a total column."""
    names = [a["name"] for a in assignments]
    width = max(len(n) for n in names + ["total"]) + 2
    head = f"{'student':<20}" + "".join(f"{n:>{width}}" for n in names) + f"{'total':>{width}}"
    lines = [head, "-" * len(head)]
    for student, row in table.items():
        cells = [f"{row[n][0]:g} / {row[n][1]:g}" for n in names]
        total = (sum(row[n][0] for n in names), sum(row[n][1] for n in names))
        lines.append(f"{student:<20}" + "".join(f"{c:>{width}}" for c in cells)
                     + f"{f'{total[0]:g} / {total[1]:g}':>{width}}")
    return "\n".join(lines)


def run(root: Path = REPO, assignments: list[dict] | None = None,
        workers: int | None = None) -> dict:
    """Run the whole pipeline; returns the grade table and timings."""
    assignments = assignments or load_assignments()
    (root / "course").mkdir(exist_ok=True)
    print(f"1. generating the release of {len(assignments)} assignments")
    start = time.perf_counter()
    forget_simulated_students(root, assignments, [*STUDENTS, HOSTILE])
    generate_release(root, assignments)
    print(f"   release/ written in {time.perf_counter() - start:.1f} s")

    print("2. submitting: " + ", ".join(f"{s} ({o}/)" for s, o in STUDENTS.items())
          + f", {HOSTILE} (release/ plus a hostile first cell)")
    for student, origin in STUDENTS.items():
        submit(root, assignments, student, origin)
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # the hostile cell's network probe
    listener.settimeout(0.1)
    submit_hostile(root, assignments, listener.getsockname()[1])
    students = [*STUDENTS, HOSTILE]

    print(f"3. grading {len(students)} students x {len(assignments)} assignments in the sandbox, "
          f"on a Dask LocalCluster")
    from course.grade import format_summary, grade_class

    start = time.perf_counter()
    try:
        results = grade_class(root, assignments, students, workers=workers)
        try:
            listener.accept()
            reached = "yes: THE SANDBOX LET IT THROUGH"
        except OSError:
            reached = "no"
    finally:
        listener.close()
    wall = time.perf_counter() - start
    print(format_summary(results, assignments))
    print(f"   {HOSTILE}'s probe reached 127.0.0.1: {reached}")
    timings = {s: sum(r.seconds for r in results if r.student == s) for s in students}

    table = grade_table(root, assignments, students)
    print("\n4. grades: autograded points / autograded maximum (written answers are graded by hand)\n")
    print(format_table(table, assignments))
    print(f"\n   grading {len(results)} submissions took {wall:.1f} s on {workers or os.cpu_count()} "
          f"workers; one student's {len(assignments)} notebooks took at most "
          f"{max(timings.values()):.1f} s of autograding")

    print("\n5. feedback")
    for a in assignments:
        for student in students:
            nbgrader(["generate_feedback", a["name"], "--student", student, "--force"], root)
    csv = root / "course" / "grades.csv"
    nbgrader(["export", "--to", str(csv)], root)
    feedback = sorted((root / "course" / "feedback").glob("*/*/*.html"))
    print(f"   {len(feedback)} feedback pages under {root / 'course' / 'feedback'}; grades in {csv}")
    return {"table": table, "timings": timings, "feedback": feedback, "results": results}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO,
                        help="course root holding source/ (default: this repository)")
    parser.add_argument("--workers", type=int, help="grading workers (default: the cores)")
    args = parser.parse_args(argv)
    return run(args.root.resolve(), workers=args.workers)


if __name__ == "__main__":
    main()
