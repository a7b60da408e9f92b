"""Write the hidden tests of ``course/checks/<assignment>.py`` into the source notebooks.

Each graded test cell listed in a checks module's ``CHECKS`` gets, between its
``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` lines, generated code that stands on
its own (at grading time the kernel runs in a sandbox that cannot import this repository):
a comment naming the module to edit, the imports the check needs, the source of every helper
it uses (from the module itself or from ``course/checks/_common.py``, found by name,
transitively), the check function, and the call ``check_<name>(globals())``. In the cells
of an exercise that ``course/exercises.py`` gives dpm_core references for, the own-work check
``_expect_own_work(globals(), {name: reference})`` of ``course/checks/_own_work.py`` (with its
helpers) runs first, so that an answer taken from dpm_core scores nothing. The rest of the
cell (a comment: the self-checks that students run live in the locked cell before it) is left
as it is.

Usage, from the repository root::

    python -m course.sync_checks [ASSIGNMENT ...]           # rewrite the hidden regions
    python -m course.sync_checks [ASSIGNMENT ...] --check   # only report; exit 1 when out of sync
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import json
import sys
from pathlib import Path

import nbformat

from course.judges import JUDGED, judges

__all__ = ["BEGIN", "END", "hidden_code", "out_of_sync", "sync"]

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
COMMON = "_common"
OWN_WORK = "_own_work"


def _module_source(name: str) -> tuple[str, ast.Module]:
    text = (REPO / "course" / "checks" / f"{name}.py").read_text()
    return text, _parse(text)


@functools.lru_cache(maxsize=16)
def _parse(text: str) -> ast.Module:
    # every cell of an assignment needs the same two modules parsed; keyed on the text, so an
    # edited module is parsed again
    return ast.parse(text)


def _definitions(text: str, tree: ast.Module) -> dict:
    """``{name: source}`` of the module's top-level functions, classes and assignments, in order."""
    defs = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = text.splitlines()[start - 1:node.end_lineno]
            defs[node.name] = "\n".join(lines)
        elif isinstance(node, ast.Assign):
            names = [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            for name in names:
                if name not in ("__all__", "CHECKS"):
                    defs[name] = _with_comments(text, node)
    return defs


def _with_comments(text: str, node: ast.stmt) -> str:
    """The statement's source with the comment lines right above it (a constant's doc comment)."""
    lines = text.splitlines()
    start = node.lineno - 1
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    return "\n".join(lines[start:node.end_lineno])


def _imports(tree: ast.Module) -> list[tuple]:
    """``(module or None, name, asname)`` of the module's imports, leaving out the checks' own."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found += [(None, a.name, a.asname) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module not in ("__future__",) \
                and not node.module.startswith("course"):
            found += [(node.module, a.name, a.asname) for a in node.names]
    return found


def _loaded_names(source: str) -> set:
    return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}


def _import_lines(imports: list[tuple]) -> list[str]:
    """Import statements, one per module, the standard library first, then torch, then the rest."""
    by_module: dict = {}
    for module, name, asname in imports:
        alias = f"{name} as {asname}" if asname else name
        key = (module, None) if module else (name.split(".")[0], alias)
        by_module.setdefault(key, [])
        if alias not in by_module[key]:
            by_module[key].append(alias)

    def order(key):
        top = key[0].split(".")[0]
        return (0 if top in sys.stdlib_module_names else 1 if top == "torch" else 2,
                key[0], key[1] is None, key[1] or "")

    return [f"import {key[1]}" if key[1] else f"from {key[0]} import {', '.join(names)}"
            for key, names in sorted(by_module.items(), key=lambda item: order(item[0]))]


def hidden_code(assignment: str, grade_id: str) -> str:
    """The generated hidden region (without its BEGIN and END lines) of one graded cell.

    A judged assignment's region is one call: grading runs the judge outside the kernel and
    never this code; an author's run of the source notebook judges its own namespace.
    """
    if assignment in JUDGED:
        judges(assignment)[grade_id]  # a KeyError names a cell without a judge
        return (f"# judged outside the kernel by course/judges/{assignment}.py\n"
                f"from course.judges import grade\ngrade({grade_id!r})")
    from course.own_work import exercise_answers  # imports nbformat; only the sync needs it

    module = importlib.import_module(f"course.checks.{assignment}")
    check = module.CHECKS[grade_id]
    answers = exercise_answers(assignment, grade_id)
    own_text, own_tree = _module_source(assignment)
    common_text, common_tree = _module_source(COMMON)
    work_text, work_tree = _module_source(OWN_WORK)
    own, common = _definitions(own_text, own_tree), _definitions(common_text, common_tree)
    work = _definitions(work_text, work_tree) if answers else {}
    # a name the module defines itself wins over a shared helper of the same name
    pool = {**{n: (OWN_WORK, s) for n, s in work.items()}, **{n: (COMMON, s) for n, s in common.items()},
            **{n: (assignment, s) for n, s in own.items()}}
    needed, todo = set(), [check.__name__] + (["_expect_own_work"] if answers else [])
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo += [n for n in _loaded_names(pool[name][1]) if n in pool and n not in needed]
    ordered = [n for n in work if n in needed and pool[n][0] == OWN_WORK]
    ordered += [n for n in common if n in needed and pool[n][0] == COMMON]
    ordered += [n for n in own if n in needed and n != check.__name__] + [check.__name__]
    used = set().union(*(_loaded_names(pool[n][1]) for n in ordered))
    imports = [(m, name, asname) for m, name, asname
               in _imports(own_tree) + _imports(common_tree) + (_imports(work_tree) if work else [])
               if (asname or name.split(".")[0]) in used]
    parts = [f"# Generated from course/checks/{assignment}.py by `python -m course.sync_checks`: "
             f"edit the check there, not here.\n" + "\n".join(_import_lines(imports))]
    parts += list(dict.fromkeys(pool[n][1] for n in ordered))
    if answers:  # an answer taken from dpm_core fails here, before the check grades it
        parts.append(f"_expect_own_work(globals(), {answers!r})\n{check.__name__}(globals())")
    else:
        parts.append(f"{check.__name__}(globals())")
    return "\n\n\n".join(parts)


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
    """The assignments to sync: those named (all of the course by default) that have checks."""
    with open(REPO / "course" / "assignments.json") as f:
        course = [a["name"] for a in json.load(f)["assignments"]]
    for name in names or []:
        if name not in course:
            raise ValueError(f"assignment must be one of {course}, got {name!r}")
    return [a for a in (names or course)
            if ((REPO / "course" / "checks" / f"{a}.py").exists() or a in JUDGED)
            and (repo_root / "source" / a / f"{a}.ipynb").exists()]


def sync(repo_root: Path = REPO, assignments: list[str] | None = None,
         write: bool = True) -> list[str]:
    """Bring the hidden regions of ``repo_root/source`` in line with the checks modules.

    Args:
        repo_root: the folder holding ``source/`` (the checks always come from this repository).
        assignments: the assignments to sync (default: every one that has a checks module).
        write: rewrite the notebooks that differ; False only reports.

    Returns:
        ``"<assignment>:<grade id>"`` of every cell whose hidden region differed.

    Raises:
        ValueError: an unknown assignment, a grade id of ``CHECKS`` missing from its notebook,
            or generated code that would rebind a name the notebook defines.
    """
    repo_root = Path(repo_root)
    if str(REPO) not in sys.path:  # the checks are imported as course.checks.<assignment>
        sys.path.insert(0, str(REPO))
    differ = []
    for assignment in _assignments(repo_root, assignments):
        path = repo_root / "source" / assignment / f"{assignment}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells
                 if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")}
        graded = judges(assignment) if assignment in JUDGED else \
            importlib.import_module(f"course.checks.{assignment}").CHECKS
        changed, own = False, _notebook_bindings(nb)
        for grade_id in graded:
            if grade_id not in cells or BEGIN not in cells[grade_id].source:
                raise ValueError(f"{path.name} has no graded cell {grade_id!r} with hidden tests")
            cell = cells[grade_id]
            code = hidden_code(assignment, grade_id)
            clashes = _clashes(own, code)
            if clashes:  # the notebook's later cells would see the check's objects instead
                raise ValueError(f"the hidden code of {assignment}:{grade_id} rebinds the notebook's "
                                 f"{clashes}: rename them in course/checks")
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
    differs from what the checks modules generate; writes nothing."""
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
        print("run `python -m course.sync_checks` to write the checks into the notebooks")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
