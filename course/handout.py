"""The student hand-out: what students receive instead of the repository.

The repository holds every solution, hidden test and reference answer. The hand-out holds
the release notebooks of the assignments that are open, a student build of ``dpm_core``
in which the references of graded exercises (``course.exercises``) are withheld, the
environment files and a short README; after a deadline, the solutions of that assignment
(without hidden tests) and its references are released into it.

A stage of the course is three sets of assignments, in course order:

* **open**: handed out now; their release notebooks go in ``assignments/<name>/``;
* **released**: their deadline has passed; their solution notebooks (hidden tests
  removed) go in ``solutions/<name>/`` and their references are back in ``dpm_core``;
* every other assignment is **future**: no notebook, references withheld.

A withheld reference keeps its signature and docstring; its body is replaced by a raise
of ``NotImplementedError`` that names the assignment, so ``import dpm_core`` and
``help()`` work and everything else behaves as before. A withheld class has every method
replaced (constructing one raises); a withheld method (``PPCA.exact_posterior``) only
that method.

The rule for given code: before building, the code of every notebook in the hand-out is
traced through ``dpm_core`` (by name, see :func:`needs`) to the withheld references it
would call. An open notebook whose given code needs a withheld reference cannot be
worked on, so the build refuses and names the cell, the chain of calls and the exercise
that the reference answers; ``--ship REF`` ships that reference anyway, knowingly (the
README then says so). A released solution notebook that needs a withheld reference only
gets a warning (its cells fail with the withheld message until that reference is
released too). The trace cannot see branches: the references in :data:`OPT_IN`, which
dpm_core reaches only when a caller asks for them by an argument, are no conflict, and
``tests/test_handout.py`` runs notebooks that use those classes against a hand-out that
withholds them.

Usage::

    python -m course.handout handout/ --open dpm2_generative    # vae_basics released
    python -m course.handout handout/ --release vae_basics      # the solutions release
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import string
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from course.exercises import EXERCISES

__all__ = ["OPT_IN", "Stage", "plan", "build", "needs", "withhold_source", "student_package",
           "solution_notebook",
           "WITHHELD_MESSAGE", "main"]

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "dpm_core"
STUDENT_DIST = "dpm-course-student"
#: withheld references that dpm_core's code reaches only on a path its caller opts into
OPT_IN = {
    "dpm_core.nvil._mixture_rsample": 'NVIL uses it only with estimator="mixture"',
    "dpm_core.flows.AffineCoupling": "FlowCPDNet's default coupling, when no coupling= is given",
}
#: the words every withheld reference raises with (the tests look for them)
WITHHELD_MESSAGE = ("{path} is the answer to an exercise of {assignment}; its reference is "
                    "released with the solutions after the deadline of {assignment}. "
                    "Write your own in the notebook.")
MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")


def course_order(repo: Path = REPO) -> list[dict]:
    """The assignments of ``course/assignments.json``, in course order."""
    return json.loads((repo / "course" / "assignments.json").read_text())["assignments"]


# ---------------------------------------------------------------------------- dpm_core graph
def _generic_attributes() -> frozenset:
    """Attribute names of every module and distribution (``.forward``, ``.sample``, ``.to``):
    read on an object they say nothing about which dpm_core class it is."""
    import torch.distributions as td
    from torch import nn

    return frozenset(dir(nn.Module)) | frozenset(dir(td.Distribution))


_GENERIC = _generic_attributes()
#: methods that run without being named: construction, the module call, Python's protocols
_IMPLICIT = re.compile(r"__\w+__|forward")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class _Uses(ast.NodeVisitor):
    """Names a piece of code may call and attributes it reads, without annotations and
    without the class argument of isinstance/issubclass (neither calls the class)."""

    def __init__(self):
        self.names, self.attrs = set(), set()

    def visit_Name(self, node):
        self.names.add(node.id)

    def visit_Attribute(self, node):
        if node.attr not in _GENERIC:
            self.attrs.add(node.attr)
        self.generic_visit(node)

    def visit_arg(self, node):
        pass

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_FunctionDef(self, node):
        for part in (*node.decorator_list, *node.args.defaults,
                     *[d for d in node.args.kw_defaults if d is not None], *node.body):
            self.visit(part)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        for part in (*node.decorator_list, *node.bases, *node.body):
            self.visit(part)

    def visit_Call(self, node):
        if isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass"):
            node = node.args[0] if node.args else node.func
        self.generic_visit(node)


def _uses(nodes) -> _Uses:
    visitor = _Uses()
    for node in nodes:
        visitor.visit(node)
    return visitor


@dataclass
class _Graph:
    """``dpm_core`` as nodes (functions, classes, methods) with the names and attributes
    each uses; ``scope[module][name]`` is what a name means inside a module."""
    uses: dict = field(default_factory=dict)        # node -> _Uses
    module_of: dict = field(default_factory=dict)   # node -> module
    methods: dict = field(default_factory=dict)     # class node -> [method nodes]
    by_attr: dict = field(default_factory=dict)     # method name -> [method nodes]
    scope: dict = field(default_factory=dict)       # module -> {name: node or module}

    def resolve(self, module: str, name: str, depth: int = 0):
        target = self.scope.get(module, {}).get(name)
        if isinstance(target, tuple) and depth < 10:  # ("from", module, name): re-export
            return self.resolve(target[1], target[2], depth + 1)
        return target


def _graph(package: Path) -> _Graph:
    g = _Graph()
    for path in sorted(package.rglob("*.py")):
        module = _module_name(path, package)
        tree = ast.parse(path.read_text())
        scope = g.scope.setdefault(module, {})
        for stmt in tree.body:
            if isinstance(stmt, ast.ImportFrom) and stmt.level:
                base = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
                base = base.rsplit(".", stmt.level - 1)[0] if stmt.level > 1 else base
                source = base + (f".{stmt.module}" if stmt.module else "")
                for alias in stmt.names:
                    scope[alias.asname or alias.name] = (
                        ("from", source, alias.name) if stmt.module else f"{source}.{alias.name}")
            elif isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
                node = f"{module}.{stmt.name}"
                scope[stmt.name] = node
                g.module_of[node] = module
                if isinstance(stmt, ast.FunctionDef):
                    g.uses[node] = _uses([stmt])
                    continue
                own = [s for s in stmt.body if not isinstance(s, ast.FunctionDef)]
                g.uses[node] = _uses([*stmt.bases, *own])
                for method in (s for s in stmt.body if isinstance(s, ast.FunctionDef)):
                    name = f"{node}.{method.name}"
                    g.uses[name], g.module_of[name] = _uses([method]), module
                    g.methods.setdefault(node, []).append(name)
                    g.by_attr.setdefault(method.name, []).append(name)
    return g


def _notebook_scope(cells: list[str], own: set[str], g: _Graph) -> dict:
    """What the names imported from dpm_core mean in a notebook (its own definitions win)."""
    scope = {}
    for source in cells:
        for stmt in ast.walk(_parse_cell(source)):
            if isinstance(stmt, ast.ImportFrom) and (stmt.module or "").split(".")[0] == PACKAGE:
                for alias in stmt.names:
                    scope[alias.asname or alias.name] = (
                        g.resolve(stmt.module, alias.name)
                        or (f"{stmt.module}.{alias.name}" if f"{stmt.module}.{alias.name}" in g.scope
                            else None))
            elif isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        scope[alias.asname or alias.name.split(".")[0]] = (
                            alias.name if alias.asname else PACKAGE)
    return {k: v for k, v in scope.items() if v and k not in own}


def _parse_cell(source: str) -> ast.Module:
    """A notebook cell as Python: IPython's magics and shell lines become blank lines."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return ast.Module(body=[], type_ignores=[])


def needs(cells: list[tuple[str, str]], own: set[str], withheld: dict, g: _Graph) -> dict:
    """The withheld references that a notebook's code reaches through dpm_core.

    Names are followed to the objects they mean; an attribute ``.m`` reaches every method
    ``m`` of a class that is not withheld (an over-approximation that sees
    ``model.as_latent_model()`` inside the widgets), unless ``m`` is an attribute of every
    ``nn.Module`` or distribution; a class reaches its bases, ``__init__``, ``forward`` and
    its other dunder methods. A method that the notebook overrides in a subclass of its own
    is not reached (the notebook's subclass is what it uses). A withheld function or class
    is reached by name, a withheld method by attribute.

    Args:
        cells: ``(cell id, source)`` of the code the student runs.
        own: names the notebook defines itself (they shadow dpm_core's).
        withheld: ``{reference path: assignment}``.
        g: the graph of the dpm_core being handed out (see :func:`_graph`).

    Returns:
        ``{reference path: chain}``, the chain from the cell id to the reference.
    """
    scope = _notebook_scope([source for _, source in cells], own, g)
    withheld_classes = {p for p in withheld if p in g.methods}
    found, seen, queue = {}, set(), deque()
    for _, source in cells:  # methods of dpm_core classes that the notebook's subclasses override
        for stmt in _parse_cell(source).body:
            if isinstance(stmt, ast.ClassDef):
                bases = [scope.get(b.id) for b in stmt.bases if isinstance(b, ast.Name)]
                seen.update(f"{base}.{m.name}" for base in bases if base for m in stmt.body
                            if isinstance(m, ast.FunctionDef))

    def reach(target, chain, by_attr=False):
        if target is None or target in seen:
            return
        owner = target.rsplit(".", 1)[0]
        if owner in withheld_classes:
            return  # the class itself is what is reached, by name
        if target in withheld:
            if by_attr or target not in g.methods.get(owner, ()):
                found.setdefault(target, chain + [target])
            return
        seen.add(target)
        queue.append((target, chain + [target]))

    def follow(uses: _Uses, module_scope, chain):
        for name in uses.names:
            reach(module_scope(name), chain)
        for attr in uses.attrs:
            for method in g.by_attr.get(attr, ()):
                reach(method, chain, by_attr=True)

    for cell_id, source in cells:
        tree = _parse_cell(source)
        uses = _uses(tree.body)
        for node in ast.walk(tree):  # dpm_core.module.name chains
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in scope and scope[node.value.id] in g.scope:
                reach(g.resolve(scope[node.value.id], node.attr), [f"cell {cell_id}"])
        follow(uses, scope.get, [f"cell {cell_id}"])
    while queue:
        node, chain = queue.popleft()
        if node in g.methods:
            for method in g.methods[node]:
                if _IMPLICIT.fullmatch(method.rsplit(".", 1)[1]):
                    reach(method, chain)
        module = g.module_of.get(node)
        if module:
            follow(g.uses[node], lambda name, m=module: g.resolve(m, name), chain)
    return found


# ---------------------------------------------------------------------------- the stage
@dataclass
class Stage:
    """Which assignments are open, released and future, and what follows from it."""
    open: list
    released: list
    withheld: dict                 # reference path -> assignment
    shipped: dict                  # reference path -> assignment, withheld but shipped
    conflicts: dict                # open assignment -> {reference: chain}
    warnings: dict                 # released assignment -> {reference: chain}

    def problem(self) -> str:
        """The refusal message, or '' when every open notebook can run."""
        lines = []
        for assignment, found in self.conflicts.items():
            for ref, chain in sorted(found.items()):
                lines.append(f"  {assignment}: {' -> '.join(chain)}, the answer to an exercise of "
                             f"{self.withheld[ref]}")
        if not lines:
            return ""
        return ("the given code of an open assignment needs references that the hand-out "
                "withholds:\n" + "\n".join(lines) + "\nOpen the assignments in another "
                "combination, release the assignment that owns the reference, change the "
                "notebook, or ship the reference knowingly with --ship REFERENCE.")


def _exercise_owner() -> dict:
    return {path: assignment for assignment, cells in EXERCISES.items()
            for names in cells.values() for path in names.values() if path}


def _notebook_code(nb, solutions: bool) -> tuple[list, set]:
    """``(cells, own names)``: the code the student runs (solution cells too when
    ``solutions``), and the top-level names that the solution cells define."""
    cells, own = [], set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            for stmt in _parse_cell(cell.source).body:
                if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
                    own.add(stmt.name)
        cells.append((meta.get("grade_id", "?"), cell.source))
    return cells, own


def plan(open_: list, release: list | None = None, ship: tuple = (), repo: Path = REPO) -> Stage:
    """The stage of the course, and the conflicts of its notebooks with what is withheld.

    Args:
        open_: the assignments handed out now.
        release: the assignments whose solutions are released; by default every
            assignment before the first open one.
        ship: references to ship although they are withheld.

    Raises:
        ValueError: an unknown assignment or reference, or one both open and released.
    """
    order = [a["name"] for a in course_order(repo)]
    for name in [*open_, *(release or [])]:
        if name not in order:
            raise ValueError(f"unknown assignment {name!r}; the course has {', '.join(order)}")
    if release is None:
        first = min((order.index(a) for a in open_), default=0)
        release = order[:first]
    both = set(open_) & set(release)
    if both:
        raise ValueError(f"{', '.join(sorted(both))} cannot be both open and released")
    owner = _exercise_owner()
    unknown = set(ship) - set(owner)
    if unknown:
        raise ValueError(f"--ship takes references of course.exercises, got {sorted(unknown)}")
    withheld = {p: a for p, a in owner.items() if a not in release and p not in ship}
    shipped = {p: a for p, a in owner.items() if a not in release and p in ship}
    g = _graph(repo / PACKAGE)
    conflicts, warnings = {}, {}
    for name in order:
        if name not in open_ and name not in release:
            continue
        for nb_name in next(a for a in course_order(repo) if a["name"] == name)["notebooks"]:
            folder = "release" if name in open_ else "source"
            nb = nbformat.read(repo / folder / name / f"{nb_name}.ipynb", as_version=4)
            cells, own = _notebook_code(nb, solutions=name in release)
            found = needs(cells, own, {p: a for p, a in withheld.items() if p not in OPT_IN}, g)
            if found:
                (conflicts if name in open_ else warnings).setdefault(name, {}).update(found)
    return Stage([a for a in order if a in open_], [a for a in order if a in release],
                 withheld, shipped, conflicts, warnings)


# ---------------------------------------------------------------------------- withholding
def withhold_source(source: str, module: str, withheld: dict) -> str:
    """``source`` of ``module`` with the bodies of its withheld references replaced by a raise.

    Signatures, decorators and docstrings stay. A withheld class has every method replaced.

    Args:
        source: the module's text.
        module: its dotted name, e.g. ``dpm_core.kl``.
        withheld: ``{reference path: assignment}``.
    """
    lines = source.splitlines(keepends=True)
    edits = []  # (first line, last line, indent, path, assignment), 1-based inclusive

    def replace(fn: ast.FunctionDef, path: str, assignment: str):
        body = fn.body[1:] if ast.get_docstring(fn, clean=False) is not None and len(fn.body) > 1 \
            else fn.body
        if ast.get_docstring(fn, clean=False) is not None and len(fn.body) == 1:
            body = []
        first = body[0].lineno if body else fn.body[-1].end_lineno + 1
        indent = (body[0].col_offset if body else fn.body[0].col_offset)
        if first <= fn.lineno:
            raise ValueError(f"{path}: a one-line body cannot be withheld")
        edits.append((first, fn.end_lineno if body else first - 1, indent, path, assignment))

    for stmt in ast.parse(source).body:
        path = f"{module}.{getattr(stmt, 'name', '')}"
        if isinstance(stmt, ast.FunctionDef) and path in withheld:
            replace(stmt, path, withheld[path])
        elif isinstance(stmt, ast.ClassDef):
            for fn in (s for s in stmt.body if isinstance(s, ast.FunctionDef)):
                if path in withheld:
                    replace(fn, path, withheld[path])
                elif f"{path}.{fn.name}" in withheld:
                    replace(fn, f"{path}.{fn.name}", withheld[f"{path}.{fn.name}"])
    for first, last, indent, path, assignment in sorted(edits, reverse=True):
        message = WITHHELD_MESSAGE.format(path=path, assignment=assignment)
        lines[first - 1:last] = [f"{' ' * indent}raise NotImplementedError({message!r})\n"]
    text = "".join(lines)
    ast.parse(text)
    return text


def student_package(assignment: str, repo: Path = REPO) -> dict:
    """``{path: text}`` of ``dpm_core`` as its students have it while ``assignment`` is open:
    the references of its graded exercises and of every later assignment withheld, those of
    earlier assignments released. The grader's kernels import this build, so that calling a
    reference of the graded exercise reaches nothing.

    Raises:
        ValueError: ``assignment`` is not in the course.
    """
    order = [a["name"] for a in course_order(repo)]
    if assignment not in order:
        raise ValueError(f"unknown assignment {assignment!r}; the course has {', '.join(order)}")
    released = order[:order.index(assignment)]
    withheld = {p: a for p, a in _exercise_owner().items() if a not in released}
    return {str(path.relative_to(repo / PACKAGE)):
            withhold_source(path.read_text(), _module_name(path, repo / PACKAGE), withheld)
            for path in sorted((repo / PACKAGE).rglob("*.py"))}


def solution_notebook(path: Path):
    """A source notebook as the solutions release: model answers and solutions kept, the
    hidden tests removed (nbgrader's ClearHiddenTests), outputs and solution markers gone."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearOutput

    nb = nbformat.read(path, as_version=4)
    for step in (ClearHiddenTests(), ClearOutput()):
        nb, _ = step.preprocess(nb, {})
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = "\n".join(line for line in cell.source.split("\n")
                                    if line.strip() not in MARKERS)
    return nb


# ---------------------------------------------------------------------------- the build
def _student_pyproject(repo: Path) -> str:
    import tomllib

    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    deps = "".join(f"    {json.dumps(d)},\n" for d in project["dependencies"])
    packages = ", ".join(f'"{_module_name(init.parent, repo / PACKAGE)}"'
                         for init in sorted((repo / PACKAGE).rglob("__init__.py")))
    return (f'[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "{STUDENT_DIST}"\nversion = "{project["version"]}"\n'
            f'description = "dpm_core for the students of the course (graded references withheld)"\n'
            f'readme = "README.md"\nrequires-python = "{project["requires-python"]}"\n'
            f'dependencies = [\n{deps}]\n\n[tool.setuptools]\npackages = [{packages}]\n')


def _readme(stage: Stage, repo: Path) -> str:
    titles = {a["name"]: a["title"] for a in course_order(repo)}
    rows = lambda names, folder: "\n".join(  # noqa: E731
        f"| `{folder}/{n}/` | {titles[n]} |" for n in names) or "| (none) | |"
    listed = lambda refs: "\n".join(  # noqa: E731
        f"- `{p}` ({a})" for p, a in sorted(refs.items(), key=lambda x: (x[1], x[0]))) or "- none"
    notes = []
    for assignment, found in stage.warnings.items():
        for ref, chain in sorted(found.items()):
            notes.append(f"- `solutions/{assignment}`: {chain[0]} needs `{ref}`, withheld until "
                         f"the solutions of {stage.withheld[ref]} are released; it stops there.")
    if stage.shipped:
        notes.append("- Shipped although graded, because given code needs them: "
                     + ", ".join(f"`{p}` ({a})" for p, a in sorted(stage.shipped.items())) + ".")
    template = string.Template((repo / "course" / "handout_README.md").read_text())
    return template.substitute(
        open_table=rows(stage.open, "assignments"), solutions_table=rows(stage.released, "solutions"),
        withheld=listed(stage.withheld), notes="\n".join(notes) or "- none")


def _clear(out: Path) -> None:
    if not out.exists():
        return
    if any(out.iterdir()):
        pyproject = out / "pyproject.toml"
        if not (pyproject.exists() and f'name = "{STUDENT_DIST}"' in pyproject.read_text()):
            raise ValueError(f"{out} exists and is not a hand-out; name an empty or new folder")
    shutil.rmtree(out)


def build(out: Path, open_: list, release: list | None = None, ship: tuple = (),
          repo: Path = REPO) -> Stage:
    """Write the hand-out of a stage of the course into ``out`` (replacing an older hand-out).

    Raises:
        ValueError: see :func:`plan`; or the given code of an open assignment needs a
            withheld reference (:meth:`Stage.problem`); or ``out`` holds something else.
    """
    stage = plan(open_, release, ship, repo)
    if stage.problem():
        raise ValueError(stage.problem())
    out = Path(out)
    _clear(out)
    package = out / PACKAGE
    package.mkdir(parents=True)
    for path in sorted((repo / PACKAGE).rglob("*.py")):
        module = _module_name(path, repo / PACKAGE)
        target = package / path.relative_to(repo / PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(withhold_source(path.read_text(), module, stage.withheld))
    assignments = {a["name"]: a for a in course_order(repo)}
    for name in stage.open:
        (out / "assignments" / name).mkdir(parents=True)
        for nb in assignments[name]["notebooks"]:
            shutil.copy(repo / "release" / name / f"{nb}.ipynb", out / "assignments" / name)
    for name in stage.released:
        (out / "solutions" / name).mkdir(parents=True)
        for nb in assignments[name]["notebooks"]:
            nbformat.write(solution_notebook(repo / "source" / name / f"{nb}.ipynb"),
                           out / "solutions" / name / f"{nb}.ipynb")
    (out / "pyproject.toml").write_text(_student_pyproject(repo))
    shutil.copy(repo / "environment.yml", out / "environment.yml")
    (out / "README.md").write_text(_readme(stage, repo))
    return stage


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course.handout", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write (an older hand-out there is replaced)")
    parser.add_argument("--open", nargs="+", default=[], metavar="ASSIGNMENT",
                        help="the assignments handed out now (their references are withheld)")
    parser.add_argument("--release", nargs="*", default=None, metavar="ASSIGNMENT",
                        help="the assignments whose solutions are released (default: every "
                             "assignment before the first open one; none when given empty)")
    parser.add_argument("--ship", nargs="+", default=[], metavar="REFERENCE",
                        help="ship these withheld references anyway (given code needs them)")
    args = parser.parse_args(argv)
    if not args.open and not args.release:
        parser.error("name the open assignments (--open) or the released ones (--release)")
    try:
        stage = build(args.out, args.open, args.release, tuple(args.ship))
    except ValueError as error:
        print(f"course.handout: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: open {', '.join(stage.open) or '-'}; released "
          f"{', '.join(stage.released) or '-'}; {len(stage.withheld)} references withheld")
    for assignment, found in stage.warnings.items():
        for ref, chain in sorted(found.items()):
            print(f"warning: solutions/{assignment}: {' -> '.join(chain)} is withheld "
                  f"({stage.withheld[ref]} is not released)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
