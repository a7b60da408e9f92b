"""The judging side of grading: every verdict is reached here, outside the student's kernel.

Each graded test cell of a judged assignment has a *judge* in ``course/judges/<assignment>.py``
(``JUDGES[grade id]``). While nbgrader grades a notebook, the course's ``BoundedExecute``
(``course.grading_plugins``) does not run the cell's code: it runs the judge in the grading
process, which talks to the probe in the sandboxed kernel (``dpm_probe``) through plain data,
and writes the cell's outputs itself (no error: the points; an error: the message naming the
mistake). Nothing the kernel does can reach the judge's inputs, references or verdict.

In a source notebook, a graded cell's hidden region is one call, ``grade("<grade id>")``:
run by the instructor (or the tests), it judges the notebook's own namespace in-process.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

from course.judges._common import LocalProbe, Probe

__all__ = ["JUDGED", "judges", "judge_for", "run_judge", "grade", "Probe", "LocalProbe"]

#: the assignments whose hidden tests are judged outside the kernel: those with a module here
JUDGED = tuple(sorted(p.stem for p in Path(__file__).parent.glob("[!_]*.py")))


def judges(assignment: str) -> dict:
    """``{grade id: judge}`` of a judged assignment."""
    if assignment not in JUDGED:
        raise ValueError(f"{assignment!r} has no judges; judged assignments: {', '.join(JUDGED)}")
    return importlib.import_module(f"course.judges.{assignment}").JUDGES


def judge_for(assignment: str, grade_id: str):
    """The judge of a graded cell, or None when the cell has none."""
    return judges(assignment).get(grade_id) if assignment in JUDGED else None


def run_judge(judge, probe: Probe, seed: int) -> str:
    """Run ``judge`` against ``probe`` with inputs drawn from ``seed``; the pass message.

    A judge marked ``statistical`` (``course.judges._common``) that fails gets a second try
    on inputs drawn from a seed that follows from ``seed``.

    Raises:
        AssertionError: the student's work fails, with the message that names the mistake.
    """
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(1)
        rng = torch.Generator().manual_seed(seed)
        for tries_left in reversed(range(1 + getattr(judge, "retries", 0))):
            try:
                return judge(probe, rng)
            except AssertionError:
                if not tries_left:
                    raise


def grade(grade_id: str, ns: dict | None = None, seed: int | None = None) -> None:
    """Judge a graded cell on a namespace in this process (the caller's globals by default):
    what a source notebook's hidden region runs for its author.

    Prints the pass message; raises ``AssertionError`` with the judge's message otherwise.
    """
    ns = sys._getframe(1).f_globals if ns is None else ns
    found = [a for a in JUDGED if grade_id in judges(a)]
    if not found:
        raise ValueError(f"no judge for the graded cell {grade_id!r}")
    # an author's run is as reproducible as the notebook's own seeding; grading draws its
    # seeds with `secrets` (course.grading_plugins)
    seed = int(torch.randint(2 ** 62, (1,))) if seed is None else seed
    print(run_judge(judges(found[0])[grade_id], LocalProbe(ns), seed))
