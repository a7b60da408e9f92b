"""One line per exercise: the notebooks' self-checks on demand.

Every graded exercise of an assignment notebook is followed by a locked cell of visible
self-checks (``<exercise>-tests-self-checks``) and a graded cell that holds only the
hidden tests. This module runs the *self-check* cells again and reports one line each,
✓ or the message of the first failure, and lists the written answers as "to be graded by
hand" or "missing":

* in the notebook, after ``from dpm_core.selfcheck import check, check_all``:
  ``check("kl")`` runs every exercise whose name is or starts with ``kl`` (``kl-formula``,
  ``kl-reduction``, and the written ``kl-derivation``) in the student's own kernel, against
  what the kernel holds now; ``check_all()`` runs them all;
* from a shell, ``python -m dpm_core.selfcheck vae_basics.ipynb [kl ...]`` runs the saved
  notebook in a fresh kernel with the short training budgets of grading, up to the last
  self-check it needs, and prints the same lines.

Neither runs a graded test cell: hidden tests are not in a released notebook, and the
source notebook keeps them in the graded cells, which are never read here. While nbgrader
grades a notebook, :func:`check` and :func:`check_all` print one line and do nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .grading import grading_mode

__all__ = ["Item", "check", "check_all", "read_items", "run_in_namespace", "run_notebook", "main"]

SELF_CHECKS = "-tests-self-checks"
#: what nbgrader leaves in a written answer's cell when it releases the notebook
ANSWER_STUB = "YOUR ANSWER HERE"


@dataclass
class Item:
    """An exercise's self-checks or a written answer, as read from the notebook.

    Attributes:
        name: the exercise (``kl-formula``) or the written answer's id (``kl-derivation``).
        kind: ``"code"`` (self-checks to run) or ``"written"``.
        source: the self-check cell's code (code items only).
        solution: the id of the solution cell the exercise belongs to (``kl-solution``).
        title: for written answers, the question they answer, from the cell above.
        filled: for written answers, whether the cell holds more than nbgrader's stub.
        cell: the index of the self-check or answer cell in the notebook.
    """

    name: str
    kind: str
    source: str = ""
    solution: str = ""
    title: str = ""
    filled: bool = False
    cell: int = -1


@dataclass
class Outcome:
    """What one item gave: ``status`` is pass, fail, todo (not written yet), hand or missing."""

    item: Item
    status: str
    message: str = ""

    def line(self) -> str:
        mark = {"pass": "✓", "fail": "✗", "todo": "·", "hand": "✎", "missing": "?"}[self.status]
        text = f"{mark} {self.item.name}"
        if self.item.kind == "written":
            text += f" ({self.item.title})" if self.item.title else ""
            return text + (": to be graded by hand" if self.status == "hand" else ": missing")
        if self.message:
            first, *rest = self.message.strip().splitlines()
            text += f": {first}" + "".join(f"\n    {line}" for line in rest)
        return text


# ------------------------------------------------------------------------------- reading


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _title(markdown: str) -> str:
    """The question a written answer answers: the last bold lead-in or heading above it."""
    title = ""
    for line in markdown.splitlines():
        line = line.strip()
        if line.startswith("#"):
            title = line.lstrip("#").strip()
        elif line.startswith("**") and line.find("**", 2) > 2:
            title = line[2:line.find("**", 2)].strip()
    return title.rstrip(".:")


def _read_notebook(path):
    """The notebook at ``path``. nbformat is imported here, not with the module: its schema
    validator pulls in jsonschema's format checkers, 1.4 s of imports that every kernel would
    pay in its setup cell (and every graded notebook, for nothing)."""
    import nbformat

    return nbformat.read(str(path), as_version=4)


def read_items(notebook) -> list[Item]:
    """The exercises' self-check cells and the written answers of a notebook, in order.

    Args:
        notebook: an ``nbformat`` notebook node, or the path of a ``.ipynb`` file.
    """
    if isinstance(notebook, (str, Path)):
        notebook = _read_notebook(notebook)
    items, solution, above = [], "", ""
    for index, cell in enumerate(notebook.cells):
        meta, grade_id = _nbgrader(cell), _nbgrader(cell).get("grade_id", "")
        if cell.cell_type == "markdown" and meta.get("solution") and meta.get("grade"):
            text = cell.source.strip()
            items.append(Item(grade_id, "written", title=_title(above), cell=index,
                              filled=bool(text) and text != ANSWER_STUB))
        elif cell.cell_type == "code" and meta.get("solution"):
            solution = grade_id
        elif cell.cell_type == "code" and grade_id.endswith(SELF_CHECKS):
            items.append(Item(grade_id[:-len(SELF_CHECKS)], "code", cell.source, solution,
                              cell=index))
        if cell.cell_type == "markdown":
            above = cell.source
    return items


def select(items: Sequence[Item], names: Sequence[str]) -> list[Item]:
    """The items that ``names`` ask for: a name matches itself, the names that start with
    it and a dash, and the exercises of the solution cell ``<name>-solution``.

    Raises:
        ValueError: a name matches nothing; the message lists the names there are.
    """
    if not names:
        return list(items)
    chosen = []
    for name in names:
        name = str(name).strip()
        found = [i for i in items if i.name == name or i.name.startswith(name + "-")
                 or i.solution in (name, name + "-solution")]
        if not found:
            known = ", ".join(dict.fromkeys(i.name for i in items)) or "none"
            raise ValueError(f"no exercise or written answer is called {name!r}; "
                             f"this notebook has: {known}")
        chosen += [i for i in found if i not in chosen]
    return [i for i in items if i in chosen]


# ------------------------------------------------------------------------------- running


def _explain(error: BaseException, item: Item) -> Outcome:
    if isinstance(error, NotImplementedError):
        where = f"{item.solution} still raises" if item.solution else "it raises"
        return Outcome(item, "todo", f"not written yet ({where} NotImplementedError)")
    if isinstance(error, NameError):
        return Outcome(item, "fail", f"{error}: run the cells above first (or your solution cell)")
    if isinstance(error, AssertionError) and str(error):
        return Outcome(item, "fail", str(error))
    return Outcome(item, "fail", "".join(traceback.format_exception_only(type(error), error)))


def run_in_namespace(items: Sequence[Item], namespace: dict) -> list[Outcome]:
    """Run each item's self-checks in ``namespace`` (a kernel's user namespace), quietly.

    What a self-check prints is dropped; the first error of each item becomes its message.
    Written answers are reported from the notebook as it was read. The checks are compiled
    as the calling cell's code (a traceback names that cell), and nothing runs while nbgrader
    grades.
    """
    if grading_mode():
        raise RuntimeError("self-checks do not run while the notebook is graded")
    # the checks are compiled as the calling cell's own code, so a traceback points at the cell
    origin = _caller_file()
    outcomes = []
    for item in items:
        if item.kind == "written":
            outcomes.append(Outcome(item, "hand" if item.filled else "missing"))
            continue
        code = compile(item.source, origin, "exec")
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                exec(code, namespace)
        except Exception as error:  # a self-check's failure is what we report
            outcomes.append(_explain(error, item))
        else:
            outcomes.append(Outcome(item, "pass"))
    return outcomes


def _caller_file() -> str:
    """The file of the nearest frame outside this module (a notebook cell, as a rule)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else "<self-checks>"


def summary(outcomes: Sequence[Outcome]) -> str:
    """The lines of a report and a last line that counts them."""
    code = [o for o in outcomes if o.item.kind == "code"]
    written = [o for o in outcomes if o.item.kind == "written"]
    tally = f"{sum(o.status == 'pass' for o in code)} of {len(code)} pass their self-checks"
    if written:
        tally += f", {sum(o.status == 'hand' for o in written)} of {len(written)} written answers filled"
    lines = [o.line() for o in outcomes] + [tally + " (hidden tests decide the points)"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- in the kernel


def _this_notebook() -> Path:
    """The notebook the running kernel belongs to, as Jupyter or VS Code tell the kernel."""
    from IPython import get_ipython

    shell = get_ipython()
    namespace = shell.user_ns if shell is not None else {}
    for told in (namespace.get("__session__"), namespace.get("__vsc_ipynb_file__"),
                 os.environ.get("JPY_SESSION_NAME")):
        if told and str(told).endswith(".ipynb"):
            for path in (Path(told), Path.cwd() / Path(told).name):
                if path.is_file():
                    return path
    found = sorted(Path.cwd().glob("*.ipynb"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        "could not tell which notebook this kernel runs; name it: "
        f"check(..., notebook=\"my_notebook.ipynb\") (found {len(found)} notebooks in {Path.cwd()})")


def check(*names: str, notebook: Optional[str] = None) -> None:
    """Run the self-checks of the named exercises in this kernel and print one line each.

    ``check("kl")`` checks every exercise whose name is or starts with ``kl``; ``check()``
    checks them all. The code that is checked is what the kernel holds now: run your
    solution cell first. Written answers are read from the notebook as last saved.

    Args:
        names: exercises, written answers or solution cells (without ``-solution``).
        notebook: the ``.ipynb`` file; by default the one this kernel runs.
    """
    if grading_mode():
        print("check() does nothing while the notebook is graded: the hidden tests decide.")
        return
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("check() runs in a notebook's kernel; from a shell use "
                           "python -m dpm_core.selfcheck NOTEBOOK.ipynb")
    items = select(read_items(notebook or _this_notebook()), names)
    print(summary(run_in_namespace(items, shell.user_ns)))


def check_all(notebook: Optional[str] = None) -> None:
    """Every exercise's self-checks and every written answer: one line each."""
    check(notebook=notebook)


# ------------------------------------------------------------------------------- a fresh kernel


def run_notebook(path, names: Sequence[str] = (), timeout: int = 300) -> list[Outcome]:
    """Run a saved notebook in a fresh kernel and report the self-checks of ``names``.

    The notebook runs as nbgrader runs it (``NBGRADER_EXECUTION=validate``: short training
    budgets) without its graded test cells and written answers, and stops after the last
    self-check cell it needs. Errors do not stop it: each self-check cell reports its own.
    The file is not changed.
    """
    import nbformat
    from nbclient import NotebookClient

    if grading_mode():
        raise RuntimeError("self-checks do not run while the notebook is graded")
    path = Path(path)
    notebook = _read_notebook(path)
    items = select(read_items(notebook), names)
    last = max((i.cell for i in items if i.kind == "code"), default=-1)
    cells, where = [], {}
    for index, cell in enumerate(notebook.cells[:last + 1]):
        meta = _nbgrader(cell)
        if cell.cell_type != "code" or (meta.get("grade") and not meta.get("solution")):
            continue  # hidden tests and prose are never run
        where[index] = len(cells)
        cells.append(nbformat.v4.new_code_cell(cell.source))
    run = nbformat.v4.new_notebook(cells=cells, metadata=notebook.metadata)
    NotebookClient(run, timeout=timeout, allow_errors=True,
                   kernel_name=notebook.metadata.get("kernelspec", {}).get("name", "python3"),
                   resources={"metadata": {"path": str(path.parent.resolve())}},
                   ).execute(env={**os.environ, "NBGRADER_EXECUTION": "validate"},
                             stderr=subprocess.DEVNULL)  # the kernel's own warnings
    outcomes = []
    for item in items:
        if item.kind == "written":
            outcomes.append(Outcome(item, "hand" if item.filled else "missing"))
            continue
        error = _error(run.cells[where[item.cell]])
        outcomes.append(Outcome(item, "pass") if error is None else _explain_reported(*error, item))
    return outcomes


def _error(cell) -> Optional[tuple]:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return output.get("ename", ""), output.get("evalue", "")
    return None


def _explain_reported(ename: str, evalue: str, item: Item) -> Outcome:
    """:func:`_explain` for an error that a kernel reported by name and value."""
    known = {"NotImplementedError": NotImplementedError, "NameError": NameError,
             "AssertionError": AssertionError}
    if ename in known:
        return _explain(known[ename](evalue), item)
    return Outcome(item, "fail", f"{ename}: {evalue}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dpm_core.selfcheck",
        description="Run an assignment notebook's self-checks in a fresh kernel (short training "
                    "budgets, no hidden tests) and print one line per exercise.")
    parser.add_argument("notebook", help="the assignment notebook, e.g. vae_basics.ipynb")
    parser.add_argument("names", nargs="*", help="exercises to check (default: all), e.g. kl")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell (default 300)")
    args = parser.parse_args(argv)
    path = Path(args.notebook)
    if not path.is_file():
        parser.error(f"{path} is not a file: name the .ipynb of the assignment")
    try:
        outcomes = run_notebook(path, args.names, args.timeout)
    except ValueError as error:
        parser.error(str(error))
    print(summary(outcomes))
    return 0 if all(o.status in ("pass", "hand") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
