"""Run a source notebook's checks outside nbgrader, on the reference or on a changed solution.

The namespace a check sees is built the way the notebook builds it, without data loading
or training: the set-up and given cells named in ``CONTEXT_CELLS`` and every solution cell
run in notebook order (IPython magics dropped). The checks read nothing else: each graded
test cell holds only its hidden tests, and the self-checks that students run live in the
locked, ungraded cell right before it (grade id ``<grade id>-self-checks``), whose names no
check reads (``self_check_names_read``). ``graded_cell_outcomes`` runs the cells as nbgrader
runs them: each self-check cell (its failure ignored, as nbgrader goes on after an ungraded
cell's error), then the graded cell's whole code.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import symtable
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from course.judges import JUDGED, LocalProbe, judges, run_judge  # noqa: E402

BEGIN = "### BEGIN HIDDEN TESTS"
#: the grade id of a graded cell's self-check cell is the graded cell's, with this suffix
SELF_CHECKS = "-self-checks"

#: given code cells (by grade id) that the checks need, besides the solution cells
CONTEXT_CELLS = {
    "vae_basics": ["setup"],
    "dpm2_generative": ["setup", "test-helpers", "image-model-base", "tiny-model"],
    "dpm2_inference": ["setup", "cpd-check-helper", "ppca-testbed"],
    "importance_sampling": ["setup", "fixtures"],
    "dpm2_beyond": ["setup"],
    "dpm3_discrete": ["setup"],
}
#: given cells that only the self-check cells need (the checks do not)
SELF_CHECK_CONTEXT_CELLS = {"importance_sampling": ["data"]}
#: the assignments whose hidden tests are code: their judges (course/judges)
ASSIGNMENTS = [a for a in CONTEXT_CELLS if a in JUDGED]


def checks(assignment: str) -> dict:
    """``{grade id: check(ns)}``: the assignment's judges, each run through the probe on ``ns``
    in this process (:class:`course.judges.LocalProbe`, the same wire format as grading) with
    a seed drawn from torch's global generator."""
    return {grade_id: _local(judge) for grade_id, judge in judges(assignment).items()}


@functools.lru_cache(maxsize=None)
def _local(judge):
    @functools.wraps(judge)
    def check(ns: dict) -> None:
        import torch

        run_judge(judge, LocalProbe(ns), int(torch.randint(2 ** 62, (1,))))

    return check


def notebook_cells(assignment: str) -> dict:
    """``{grade id: cell}`` of the source notebook's cells with a grade id, in order (the cells
    are shared between calls: read them, do not change them)."""
    path = REPO / "source" / assignment / f"{assignment}.ipynb"
    return dict(_read_cells(path, path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _read_cells(path: Path, mtime_ns: int) -> dict:
    # every mistake's run reads the same notebooks; keyed on the time stamp, so an edited
    # notebook is read again
    nb = nbformat.read(path, as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade_id")}


@functools.lru_cache(maxsize=256)
def _compiled(code: str, name: str):
    return compile(code, name, "exec")


def _code(source: str) -> str:
    return "\n".join(line for line in source.split("\n") if not line.lstrip().startswith("%"))


def reference_namespace(assignment: str, replace: tuple | None = None, also: tuple = ()) -> dict:
    """The notebook's namespace after its context and solution cells.

    Args:
        assignment: the assignment's name.
        replace: ``(grade id, old, new)``: run that solution cell with ``old`` replaced by ``new``.
        also: further given cells to run (by grade id).

    Raises:
        ValueError: ``old`` does not occur exactly once in the cell.
    """
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ["NBGRADER_EXECUTION"] = "autograde"  # small budgets in the cells that have one
    ns: dict = {"__name__": "__main__"}
    for grade_id, cell in notebook_cells(assignment).items():
        meta = cell.metadata["nbgrader"]
        if cell.cell_type != "code":
            continue
        if grade_id in CONTEXT_CELLS[assignment] or grade_id in also or meta.get("solution"):
            source = cell.source
            if replace and replace[0] == grade_id:
                if source.count(replace[1]) != 1:
                    raise ValueError(f"{grade_id} holds {replace[1]!r} "
                                     f"{source.count(replace[1])} times, expected once")
                source = source.replace(replace[1], replace[2])
            exec(_compiled(_code(source), f"<{assignment}:{grade_id}>"), ns)
    if "matplotlib.pyplot" in sys.modules:  # a set-up cell may draw; nobody looks here
        sys.modules["matplotlib.pyplot"].close("all")
    return ns


def cell_code(assignment: str, grade_id: str) -> str:
    """The code of a cell as the kernel runs it (IPython magics dropped)."""
    return _code(notebook_cells(assignment)[grade_id].source)


def self_check_id(grade_id: str) -> str:
    """The grade id of the self-check cell before the graded cell ``grade_id``."""
    return f"{grade_id}{SELF_CHECKS}"


def self_check_code(assignment: str, grade_id: str) -> str:
    """The code of the self-check cell before the graded cell ``grade_id`` (magics dropped)."""
    return cell_code(assignment, self_check_id(grade_id))


def self_check_names_read(assignment: str, grade_id: str) -> set:
    """The names that the check of ``grade_id`` reads from the notebook's namespace and that a
    self-check cell binds: the check would then depend on code that may have failed, or that
    the student's kernel ran differently. Empty for every check; a helper a check needs
    belongs in its checks module, as a private name."""
    cells = notebook_cells(assignment)
    bound = set().union(*(_bindings(_code(cell.source))[0] for grade, cell in cells.items()
                          if grade.endswith(SELF_CHECKS) and cell.cell_type == "code"))
    return _names_read(assignment, grade_id) & bound


def _names_read(assignment: str, grade_id: str) -> set:
    """The names a check reads from the notebook's namespace (``ns["name"]``; a judge's
    ``call("name", ...)``, and for a judge that runs probe functions, every name that the
    assignment's probe module reads: more than it needs, which only runs more checks)."""
    source = inspect.getsource(inspect.unwrap(checks(assignment)[grade_id]))
    names = set(re.findall(r'ns\["(\w+)"\]', source)) | set(re.findall(r'call\("(\w+)"', source))
    if "probe_op(" in source:  # what the assignment's probe functions read, all of them
        probes = inspect.getsource(importlib.import_module(f"dpm_probe.probes.{assignment}"))
        names |= set(re.findall(r'ns\[\s*"(\w+)"\s*\]', probes))
        names |= set(re.findall(r'ns\.get\(\s*"(\w+)"', probes))
    return names


@functools.lru_cache(maxsize=512)
def _bindings(code: str) -> tuple[frozenset, frozenset]:
    """The names a cell's code binds at top level, and the global names it reads (at top level
    or inside its functions and classes; a function's parameters and locals are not globals)."""
    top = symtable.symtable(code, "<cell>", "exec")
    bound = {sym.get_name() for sym in top.get_symbols() if sym.is_assigned() or sym.is_imported()
             or sym.is_namespace()}
    read, todo = {sym.get_name() for sym in top.get_symbols() if sym.is_referenced()}, [top]
    while todo:
        table = todo.pop()
        for child in table.get_children():
            todo.append(child)
            read |= {sym.get_name() for sym in child.get_symbols()
                     if sym.is_referenced() and (sym.is_global() or sym.is_free())}
    return frozenset(bound), frozenset(read)


def affected_checks(assignment: str, cell: str) -> list:
    """The checks that could fail when the code cell ``cell`` changes: those whose cell comes
    after it and that read, from the notebook's namespace, a name that ``cell`` binds, or a
    name bound by an earlier cell whose code reads such a name (transitively): the checks of
    the exercise itself and the downstream checks that reuse its functions."""
    cells = notebook_cells(assignment)
    order = list(cells)
    changed, _ = _bindings(_code(cells[cell].source))
    affected = []
    for grade_id in checks(assignment):
        if order.index(grade_id) < order.index(cell):
            continue
        uses: dict = {}  # name -> the global names read by the cells up to the check's that bind it
        for other in order[: order.index(grade_id) + 1]:
            if cells[other].cell_type == "code":
                bound, read = _bindings(_code(cells[other].source.split(BEGIN)[0]))
                for name in bound:
                    uses.setdefault(name, set()).update(read)
        seen, todo = set(), list(_names_read(assignment, grade_id))
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += uses.get(name, ())
        if seen & changed:
            affected.append(grade_id)
    return affected


def run_check(ns: dict, assignment: str, grade_id: str) -> None:
    """Run the check of the graded cell ``grade_id`` (its checks module's function) on ``ns``."""
    checks(assignment)[grade_id](ns)


def graded_cell_outcomes(assignment: str, replace: tuple | None = None,
                         only: list | None = None) -> tuple[dict, list]:
    """Run the graded cells (those in ``only``, when given) as nbgrader runs them, in notebook
    order on the namespace of ``reference_namespace`` (with ``SELF_CHECK_CONTEXT_CELLS``): for
    each, its self-check cell, whose failure is ignored (an ungraded cell scores nothing, and
    nbgrader goes on after its error), then the graded cell's whole code (the comment and the
    generated hidden code); torch is seeded 0 before each cell.

    Returns:
        ``{grade id: None if the graded cell passed, else "ErrorType: message"}``, and the grade
        ids whose self-check cell failed.
    """
    import torch

    ns = reference_namespace(assignment, replace,
                             also=tuple(SELF_CHECK_CONTEXT_CELLS.get(assignment, ())))
    results, self_checks_failed = {}, []
    for grade_id in checks(assignment):
        if only is not None and grade_id not in only:
            continue
        torch.manual_seed(0)
        try:
            exec(_compiled(self_check_code(assignment, grade_id), f"<{self_check_id(grade_id)}>"),
                 ns)
        except Exception:  # noqa: BLE001 -- costs nothing: the graded cell runs all the same
            self_checks_failed.append(grade_id)
        torch.manual_seed(0)
        try:
            exec(_compiled(cell_code(assignment, grade_id), f"<{grade_id}>"), ns)
            results[grade_id] = None
        except Exception as error:  # noqa: BLE001 -- any error fails the cell in nbgrader
            results[grade_id] = f"{type(error).__name__}: {error}"
    return results, self_checks_failed


@functools.lru_cache(maxsize=1024)
def self_check_outcome(assignment: str, grade_id: str, replace: tuple | None = None) -> str | None:
    """What a student sees before submitting: run the self-check cell of the graded cell
    ``grade_id`` (the visible cell right before it) on the namespace of
    ``reference_namespace(assignment, replace)`` with ``SELF_CHECK_CONTEXT_CELLS``, torch
    seeded 0. Cached: a test run asks for the same outcome twice.

    Returns:
        None if the self-checks pass, else "ErrorType: message".
    """
    import torch

    ns = reference_namespace(assignment, replace,
                             also=tuple(SELF_CHECK_CONTEXT_CELLS.get(assignment, ())))
    torch.manual_seed(0)
    try:
        exec(_compiled(self_check_code(assignment, grade_id), f"<{self_check_id(grade_id)}>"), ns)
    except Exception as error:  # noqa: BLE001 -- any error is a failed self-check
        return f"{type(error).__name__}: {error}"
    return None


def outcomes(assignment: str, replace: tuple | None = None, after: str | None = None,
             only: list | None = None) -> dict:
    """``{grade id: None if its check passed, else "ErrorType: message"}`` for the checks of
    the assignment (those after the cell ``after`` in notebook order, when given; only those
    in ``only``, when given), run on the namespace of ``reference_namespace(assignment,
    replace)`` with torch seeded 0 before each."""
    import torch

    ns = reference_namespace(assignment, replace)
    order = list(notebook_cells(assignment))
    results = {}
    for grade_id in checks(assignment):
        if after is not None and order.index(grade_id) < order.index(after):
            continue
        if only is not None and grade_id not in only:
            continue
        torch.manual_seed(0)
        try:
            run_check(ns, assignment, grade_id)
            results[grade_id] = None
        except Exception as error:  # noqa: BLE001 -- any error fails the cell in nbgrader
            results[grade_id] = f"{type(error).__name__}: {error}"
    return results
