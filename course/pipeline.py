"""The instructor pipeline, end to end, with two simulated students.

1. Generate the student versions: ``source/`` -> ``release/`` (nbgrader generate_assignment).
2. Submit, for every assignment, the reference solution (student ``reference-solution``)
   and the untouched release (student ``untouched-release``).
3. Autograde them (nbgrader autograde), one student at a time, and time it.
4. Print the grade table (student x assignment, points / max).
5. Write the feedback HTML (nbgrader generate_feedback) and a CSV export of the grades.

Run it from anywhere: ``python course/pipeline.py`` (``make main`` does). The state it
writes lives under ``course/`` (gitignored). It only creates, grades and overwrites its own
two simulated students, so a real course's submissions in the same folders are left alone.
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


def generate_release(root: Path, assignments: list[dict]) -> None:
    """``source/<a>`` -> ``release/<a>`` for every assignment.

    Raises:
        RuntimeError: a hidden region of ``root/source`` differs from its check in
            ``course/checks`` (someone edited one of the two by hand).
    """
    if str(REPO) not in sys.path:  # sync_checks and the checks import as course.*
        sys.path.insert(0, str(REPO))
    from course.sync_checks import out_of_sync

    stale = out_of_sync(root)
    if stale:
        raise RuntimeError(f"hidden tests out of sync with course/checks in {', '.join(stale)}: "
                           f"run `python -m course.sync_checks` and commit the notebooks")
    for a in assignments:
        nbgrader(["generate_assignment", a["name"], "--force"], root)


def submit(root: Path, assignments: list[dict], student: str, origin: str) -> None:
    """Copy ``origin/<a>/*.ipynb`` (origin is ``source`` or ``release``) as the student's submission."""
    for a in assignments:
        target = root / "course" / "submitted" / student / a["name"]
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for nb in a["notebooks"]:
            shutil.copy(root / origin / a["name"] / f"{nb}.ipynb", target / f"{nb}.ipynb")


def autograde(root: Path, assignments: list[dict], student: str) -> float:
    """Autograde one student's assignments; returns the seconds it took."""
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


def run(root: Path = REPO, assignments: list[dict] | None = None) -> dict:
    """Run the whole pipeline; returns the grade table and timings."""
    assignments = assignments or load_assignments()
    (root / "course").mkdir(exist_ok=True)
    print(f"1. generating the release of {len(assignments)} assignments")
    start = time.perf_counter()
    generate_release(root, assignments)
    print(f"   release/ written in {time.perf_counter() - start:.1f} s")

    print("2. submitting: " + ", ".join(f"{s} ({o}/)" for s, o in STUDENTS.items()))
    for student, origin in STUDENTS.items():
        submit(root, assignments, student, origin)

    print("3. autograding")
    timings = {}
    for student in STUDENTS:
        timings[student] = autograde(root, assignments, student)
        print(f"   {student}: {len(assignments)} notebooks in {timings[student]:.1f} s")

    table = grade_table(root, assignments, list(STUDENTS))
    print("\n4. grades: autograded points / autograded maximum (written answers are graded by hand)\n")
    print(format_table(table, assignments))
    print(f"\n   autograding one student's {len(assignments)} notebooks took at most "
          f"{max(timings.values()):.1f} s")

    print("\n5. feedback")
    for a in assignments:
        for student in STUDENTS:
            nbgrader(["generate_feedback", a["name"], "--student", student, "--force"], root)
    csv = root / "course" / "grades.csv"
    nbgrader(["export", "--to", str(csv)], root)
    feedback = sorted((root / "course" / "feedback").glob("*/*/*.html"))
    print(f"   {len(feedback)} feedback pages under {root / 'course' / 'feedback'}; grades in {csv}")
    return {"table": table, "timings": timings, "feedback": feedback}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO,
                        help="course root holding source/ (default: this repository)")
    args = parser.parse_args(argv)
    return run(args.root.resolve())


if __name__ == "__main__":
    main()
