"""No credit for dpm_core's reference: which test cells grade which exercise, and a source scan.

``course/exercises.py`` lists, per solution cell, the dpm_core reference that answers each
name it defines. Two things keep an exercise the student's own work:

* the kernels that grade an assignment import the student build of dpm_core
  (``course.handout.student_package``), where those references raise: code that delegates to
  one, in whatever form, reaches nothing;
* ``scan_solution``, which the grader runs on the source of each solution cell (outside the
  kernel): it finds imports and attribute chains that reach the exercise's reference, and
  that exercise's test cells score nothing, with the reason.
"""

from __future__ import annotations

import ast
import functools
import importlib
import sys
import types
from pathlib import Path

import nbformat

from course.exercises import EXERCISES, resolve

__all__ = ["exercise_tests", "scan_solution"]

REPO = Path(__file__).resolve().parent.parent
#: attribute chains longer than this are not followed (dpm_core.ppca.PPCA.exact_posterior: 3)
MAX_DEPTH = 4
#: functions that import a module named by a string argument
IMPORTERS = ("import_module", "__import__")


@functools.lru_cache(maxsize=8)
def _tests(path: Path, mtime: float) -> dict:
    nb = nbformat.read(path, as_version=4)
    tests: dict = {}
    current = None
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("solution"):
            current = meta.get("grade_id")
            tests[current] = []
        elif cell.cell_type == "code" and meta.get("grade") and current is not None:
            tests[current].append(meta["grade_id"])
    return tests


def exercise_tests(assignment: str, repo_root: Path = REPO) -> dict:
    """``{solution cell id: [graded test cell ids]}``: the graded code cells after each code
    solution cell of the source notebook, up to the next one."""
    path = Path(repo_root) / "source" / assignment / f"{assignment}.ipynb"
    return _tests(path, path.stat().st_mtime)


def _code(source: str) -> str:
    """The cell's Python: IPython magics (``%``) and shell lines (``!``) dropped."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))


def _module(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 -- a module the student names may not exist
        return None


def _chain(node: ast.expr):
    """``(root node, [attribute names])`` of ``a.b.c`` (root ``a``), or of ``f(...).b.c``."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return node, names[::-1]


def _imported_module(node: ast.expr):
    """The module of ``importlib.import_module("...")`` or ``__import__("...")``, or None."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return None
    func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    if func not in IMPORTERS:
        return None
    name = node.args[0].value
    # __import__("a.b") returns the package a; import_module returns a.b
    return _module(name.split(".")[0] if func == "__import__" else name)


def scan_solution(assignment: str, cell_id: str, source: str) -> list[str]:
    """Messages for the places where a solution cell reaches dpm_core's reference of its exercise.

    Found: imports of the reference (``from dpm_core.kl import KL``, ``from dpm_core import KL``,
    ``from dpm_core.kl import *``), attribute chains from an imported module or class to it
    (``dpm_core.kl.KL``, ``import dpm_core.kl as k`` and ``k.KL``, ``dpm_core.KL``), the same
    from ``importlib.import_module("dpm_core.kl")`` or ``__import__``, ``getattr`` with the
    name as a string, and, for a reference that is a method (``PPCA.exact_posterior``), any
    attribute of its name. Other dpm_core names are allowed.

    Args:
        assignment: the assignment's name.
        cell_id: the grade id of the solution cell.
        source: the cell's source, as handed in.

    Returns:
        One message per finding (empty when there is none, or the cell does not parse: the
        kernel reports that).
    """
    found = _judge_rules(assignment, cell_id, source)
    paths = [p for p in EXERCISES.get(assignment, {}).get(cell_id, {}).values() if p]
    if not paths:
        return found
    return found + _reference_uses(paths, source)


def _judge_rules(assignment: str, cell_id: str, source: str) -> list[str]:
    """The findings of the judged assignment's own source rule (``scan_solution`` of
    ``course/judges/<assignment>.py``, e.g. a library class that answers the exercise)."""
    from course.judges import JUDGED, judges

    if assignment not in JUDGED:
        return []
    judges(assignment)
    rule = getattr(sys.modules[f"course.judges.{assignment}"], "scan_solution", None)
    return rule(cell_id, source) if rule else []


def _reference_uses(paths: list, source: str) -> list[str]:
    """Where ``source`` reaches one of the references at ``paths`` (see :func:`scan_solution`)."""
    try:
        tree = ast.parse(_code(source))
    except SyntaxError:
        return []
    refs = {id(obj): (path, obj) for path in paths for obj in [resolve(path)]}

    by_name = {(obj.__module__, obj.__qualname__): path for path, obj in refs.values()}

    def ref_of(obj):
        if id(obj) in refs:
            return refs[id(obj)][0]
        try:  # the same object of a reloaded module
            return by_name.get((obj.__module__, obj.__qualname__)) \
                if isinstance(obj, (type, types.FunctionType)) else None
        except Exception:  # noqa: BLE001
            return None

    messages = []

    def report(node, what, path):
        message = f"line {node.lineno}: {what} reaches {path}, dpm_core's reference of this exercise"
        if message not in messages:
            messages.append(message)

    aliases: dict = {}  # name -> the module or object an import binds it to
    modules = []  # every module the cell imports or names, for the getattr search below
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                module = _module(a.name)
                if module is None:
                    continue
                modules.append(module)
                top = a.name.split(".")[0]
                aliases[a.asname or top] = module if a.asname else _module(top)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            module = _module(node.module)
            if module is None:
                continue
            modules.append(module)
            for a in node.names:
                if a.name == "*":
                    public = getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")])
                    for name in public:
                        if ref_of(getattr(module, name, None)):
                            report(node, f"`from {node.module} import *` (it imports {name})",
                                   ref_of(getattr(module, name)))
                    continue
                obj = getattr(module, a.name, None)
                if obj is None:
                    obj = _module(f"{node.module}.{a.name}")
                aliases[a.asname or a.name] = obj
                if ref_of(obj):
                    report(node, f"`from {node.module} import {a.name}`", ref_of(obj))
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            module = _imported_module(node.value)
            if module is not None:
                aliases[node.targets[0].id] = module
    aliases = {k: v for k, v in aliases.items() if k and v is not None}
    modules += [m for m in (_imported_module(n) for n in ast.walk(tree)) if m is not None]

    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        root, names = _chain(node)
        obj = aliases.get(root.id) if isinstance(root, ast.Name) else _imported_module(root)
        if obj is None:
            continue
        for i, name in enumerate(names):
            obj = getattr(obj, name, None)
            if obj is None:
                break
            if ref_of(obj):
                report(node, f"`{ast.unparse(root)}.{'.'.join(names[:i + 1])}`", ref_of(obj))
                break

    methods = {obj.__name__: path for path, obj in refs.values()
               if callable(obj) and "." in getattr(obj, "__qualname__", "")}
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in methods:
            report(node, f"`.{node.attr}`", methods[node.attr])
        elif isinstance(node, ast.Constant) and node.value in methods:
            report(node, f"the name {node.value!r}", methods[node.value])

    # getattr(dpm_core.kl, "KL") and the like: follow the names the cell writes as attributes
    # or strings from every module it imports or names, as the kernel-side check does
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {s for s in strings if s.isidentifier()}
    frontier, seen = [m for m in modules if m.__name__.split(".")[0] == "dpm_core"], set()
    for _ in range(MAX_DEPTH):
        step = []
        for obj in frontier:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            for name in names:
                found = getattr(obj, name, None)
                if ref_of(found) and not any(ref_of(found) in m for m in messages):
                    where = getattr(obj, "__name__", "?")
                    messages.append(f"the names {name!r} of {where} reach {ref_of(found)}, "
                                    f"dpm_core's reference of this exercise")
                elif isinstance(found, (type, types.ModuleType)):
                    step.append(found)
        frontier = step
    return messages
