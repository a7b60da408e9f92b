"""Write the one-line hidden region of every graded test cell into the source notebooks.

Every graded test cell's verdict is reached outside the kernel, by its judge in
``course/judges/<assignment>.py`` (``JUDGES[grade id]``). Its hidden region, between
``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``, is generated here: a comment naming
the judges module and ``grade("<grade id>")``, which judges the notebook's own namespace when
the author runs the source notebook. Grading never runs that code (``course.grading_plugins``
runs the judge instead). The rest of the cell (a comment: the self-checks that students run
live in the locked cell before it) is left as it is.

Usage, from the repository root::

    python -m course.sync_checks [ASSIGNMENT ...]           # rewrite the hidden regions
    python -m course.sync_checks [ASSIGNMENT ...] --check   # only report; exit 1 when out of sync
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import nbformat

from course.judges import JUDGED, judges

__all__ = ["BEGIN", "END", "hidden_code", "out_of_sync", "sync"]

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def hidden_code(assignment: str, grade_id: str) -> str:
    """The generated hidden region (without its BEGIN and END lines) of one graded cell.

    Raises:
        KeyError: the cell has no judge.
    """
    judges(assignment)[grade_id]  # a KeyError names a cell without a judge
    return (f"# judged outside the kernel by course/judges/{assignment}.py\n"
            f"from course.judges import grade\ngrade({grade_id!r})")


def _bindings(source: str) -> dict:
    """``{name: how}`` of the top-level names a piece of code binds; ``how`` is the import
    statement that binds it, or ``None`` for a definition or an assignment."""
    source = "\n".join(line for line in source.split("\n") if not line.lstrip().startswith(("%", "!")))
    found: dict = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            for a in node.names:
                found[(a.asname or a.name).split(".")[0]] = f"import {a.name} as {a.asname}"
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                found[a.asname or a.name] = f"from {node.module} import {a.name}"
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = None
        else:
            todo = [node]
            while todo:  # names stored at top level, not inside functions, classes or lambdas
                n = todo.pop()
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    found[n.id] = None
                elif not isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp,
                                        ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                    todo += list(ast.iter_child_nodes(n))
    return found


def _notebook_bindings(nb) -> dict:
    """``_bindings`` of the notebook's own code: every code cell outside its hidden region."""
    found: dict = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            found.update(_bindings(cell.source.split(BEGIN)[0]))
    return found


def _clashes(notebook: dict, code: str) -> list[str]:
    """The names that ``code``, run in the notebook's namespace, would rebind to something else
    than the notebook's own code (``_notebook_bindings``) binds them to."""
    return sorted(name for name, how in _bindings(code).items()
                  if name in notebook and (how is None or how != notebook[name]))


def _replace_region(source: str, code: str) -> str:
    lines = source.split("\n")
    begin = next(i for i, line in enumerate(lines) if line.strip() == BEGIN)
    end = next(i for i, line in enumerate(lines) if line.strip() == END)
    return "\n".join(lines[:begin + 1] + code.split("\n") + lines[end:])


def _assignments(repo_root: Path, names: list[str] | None) -> list[str]:
    """The assignments to sync: those named (all of the course by default) that have judges."""
    with open(REPO / "course" / "assignments.json") as f:
        course = [a["name"] for a in json.load(f)["assignments"]]
    for name in names or []:
        if name not in course:
            raise ValueError(f"assignment must be one of {course}, got {name!r}")
    return [a for a in (names or course)
            if a in JUDGED and (repo_root / "source" / a / f"{a}.ipynb").exists()]


def sync(repo_root: Path = REPO, assignments: list[str] | None = None,
         write: bool = True) -> list[str]:
    """Bring the hidden regions of ``repo_root/source`` in line with the judges modules.

    Args:
        repo_root: the folder holding ``source/`` (the judges always come from this repository).
        assignments: the assignments to sync (default: every one that has a judges module).
        write: rewrite the notebooks that differ; False only reports.

    Returns:
        ``"<assignment>:<grade id>"`` of every cell whose hidden region differed.

    Raises:
        ValueError: an unknown assignment, a grade id of ``JUDGES`` missing from its notebook,
            or generated code that would rebind a name the notebook defines.
    """
    repo_root = Path(repo_root)
    differ = []
    for assignment in _assignments(repo_root, assignments):
        path = repo_root / "source" / assignment / f"{assignment}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells
                 if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")}
        graded = judges(assignment)
        changed, own = False, _notebook_bindings(nb)
        for grade_id in graded:
            if grade_id not in cells or BEGIN not in cells[grade_id].source:
                raise ValueError(f"{path.name} has no graded cell {grade_id!r} with hidden tests")
            cell = cells[grade_id]
            code = hidden_code(assignment, grade_id)
            clashes = _clashes(own, code)
            if clashes:  # the notebook's later cells would see the grader's objects instead
                raise ValueError(f"the hidden code of {assignment}:{grade_id} rebinds the notebook's "
                                 f"{clashes}: rename them in the notebook")
            new = _replace_region(cell.source, code)
            if new != cell.source:
                differ.append(f"{assignment}:{grade_id}")
                cell.source, changed = new, True
        if changed and write:
            # nbformat writes the file as the notebooks are committed, bar the final newline
            path.write_text(nbformat.writes(nb) + "\n")
    return differ


def out_of_sync(repo_root: Path = REPO) -> list[str]:
    """``"<assignment>:<grade id>"`` of every hidden region under ``repo_root/source`` that
    differs from what is generated for the judges; writes nothing."""
    return sync(repo_root, write=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("assignments", nargs="*", help="assignments to sync (default: all)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; list the cells that differ and exit 1 if any does")
    args = parser.parse_args(argv)
    differ = sync(REPO, args.assignments or None, write=not args.check)
    for cell in differ:
        print(f"{'out of sync' if args.check else 'rewrote'}: {cell}")
    if args.check and differ:
        print("run `python -m course.sync_checks` to write the hidden regions into the notebooks")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
