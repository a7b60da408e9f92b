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

A withheld reference keeps its signature; its body is replaced by a raise of
``NotImplementedError`` that names the assignment, so ``import dpm_core`` and ``help()``
work and everything else behaves as before. A withheld class has every method replaced
(constructing one raises); a withheld method (``PPCA.exact_posterior``) only that method.

Answers outside the references. dpm_core also answers some exercises inside functions that
are not references: a branch (NVIL's ``estimator="mixture"`` builds the surrogate of
dpm2_beyond's ``mixture_surrogate``), a default (``FlowCPDNet`` without ``coupling=`` uses
dpm_core's own ``AffineCoupling``), a closed form that a reference only calls
(``PPCA.marginal``). Such code is marked where it stands, between two comment lines::

    if estimator == "mixture":
        # answer of dpm2_beyond/mixture-surrogate-solution
        ...
        # end of answer

naming the assignment and the solution cell id of ``course.exercises`` (:func:`answer_regions`
reads them; an unknown exercise or a region that is not whole statements of one function is
an error). A marked region is withheld like a reference, under the name
``<function>#<solution cell id>``: the student build replaces it by a raise that names the
function, the exercise and the assignment. Comments were chosen over a decorator or a
registry because the answer is often a few lines of a function that given code needs (a
decorator withholds whole functions only), and because the marker sits next to the code it
withholds, where a reviewer reads it, instead of in a list kept elsewhere.

Docstrings. A withheld reference's docstring, and that of a function holding a withheld
region, keeps its first paragraph (what it is) and its ``Args:``, ``Returns:``,
``Yields:``, ``Raises:``, ``Shapes:`` and ``Example:`` sections (:func:`kept_docstring`);
its other paragraphs, where dpm_core's docstrings state formulas and derivations, are
withheld with the body. A formula therefore belongs in a paragraph of its own, not in the
first one or a kept section.

The rule for given code: before building, the code of every notebook in the hand-out is
traced through ``dpm_core`` (by name, see :func:`needs`) to the withheld references and
regions it would reach. A call inside a withheld region is no conflict (the region is gone
from the build). A region inside the whole body of an ``if`` on a parameter (``estimator ==
"mixture"``, ``coupling is None``) is needed only where the traced code gives that
parameter such a value (by keyword, assignment, default, a loop over literals or a direct
call; for ``is None``, a call that leaves the argument out, or the class passed around as a
value); any other region is needed wherever its function is. An open notebook whose given
code needs a withheld answer cannot be worked on, so the build refuses and names the cell,
the chain of calls and the exercise, with the commands that build the stage instead
(``--ship NAME`` ships that answer anyway, knowingly: the README then says so). A released
solution notebook that needs a withheld answer only gets a warning (its cells fail with the
withheld message until that answer is released too). The trace is a static over- and
under-approximation; ``tests/test_handout.py`` also runs the notebooks against the hand-out.

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

__all__ = ["Region", "Stage", "answer_regions", "answers", "plan", "build", "needs",
           "withhold_source", "kept_docstring", "student_package", "solution_notebook",
           "WITHHELD_MESSAGE", "REGION_MESSAGE", "main"]

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "dpm_core"
STUDENT_DIST = "dpm-course-student"
#: the words every withheld reference raises with (the tests look for them)
WITHHELD_MESSAGE = ("{path} is the answer to an exercise of {assignment}; its reference is "
                    "released with the solutions after the deadline of {assignment}. "
                    "Write your own in the notebook.")
#: what a withheld region raises with; ``where`` is ", where <guard>," or ""
REGION_MESSAGE = ("{path}{where} is the answer to an exercise of {assignment} ({exercise}); "
                  "it is released with the solutions after the deadline of {assignment}. "
                  "Write your own in the notebook.")
#: the comment lines around a region of dpm_core that answers an exercise
ANSWER_BEGIN = re.compile(r"# answer of (?P<assignment>\w+)/(?P<exercise>[\w-]+)")
ANSWER_END = "# end of answer"
#: the sections of a withheld docstring that stay (with its first paragraph)
KEPT_SECTIONS = ("Args", "Arguments", "Returns", "Yields", "Raises", "Shapes", "Example", "Examples")
MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")


def course_order(repo: Path = REPO) -> list[dict]:
    """The assignments of ``course/assignments.json``, in course order."""
    return json.loads((repo / "course" / "assignments.json").read_text())["assignments"]


# ---------------------------------------------------------------------------- the answers
@dataclass
class Region:
    """A part of a dpm_core function marked as the answer of an exercise (module docstring)."""
    name: str                      # "<function>#<exercise>"
    function: str                  # the dotted path of the function that holds it
    assignment: str
    exercise: str                  # its solution cell id in course.exercises
    first: int                     # the lines of its two markers, 1-based
    last: int
    indent: int
    body: list                     # its statements
    guard: ast.expr | None = None  # the test of the ``if`` whose whole body it is

    @property
    def where(self) -> str:
        """``", where <guard>,"`` for a guarded region, else ``""``."""
        return f", where {ast.unparse(self.guard)}," if self.guard is not None else ""


def _functions(tree: ast.Module, module: str):
    """``(dotted path, def)`` of a module's functions and of its classes' methods."""
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef):
            yield f"{module}.{stmt.name}", stmt
        elif isinstance(stmt, ast.ClassDef):
            yield from ((f"{module}.{stmt.name}.{fn.name}", fn) for fn in stmt.body
                        if isinstance(fn, ast.FunctionDef))


def answer_regions(source: str, module: str) -> list[Region]:
    """The regions of a dpm_core module marked as answers of exercises (module docstring).

    Raises:
        ValueError: a marker without its pair; a region that is not whole statements of one
            block of a function, at the markers' indentation; two regions of one function
            that answer the same exercise.
    """
    tree = ast.parse(source)
    functions = list(_functions(tree, module))
    regions, begin = [], None
    for number, line in enumerate(source.splitlines(), 1):
        match, indent = ANSWER_BEGIN.fullmatch(line.strip()), len(line) - len(line.lstrip())
        if match:
            if begin:
                raise ValueError(f"{module}, line {number}: an answer region starts inside the "
                                 f"one of line {begin[0]}")
            begin = (number, match, indent)
        elif line.strip() == ANSWER_END:
            if not begin or indent != begin[2]:
                raise ValueError(f"{module}, line {number}: {ANSWER_END!r} without "
                                 f"'# answer of ASSIGNMENT/EXERCISE' before it at its indentation")
            regions.append(_region(module, functions, *begin, number))
            begin = None
    if begin:
        raise ValueError(f"{module}, line {begin[0]}: the answer region has no {ANSWER_END!r}")
    names = [r.name for r in regions]
    if len(set(names)) < len(names):
        twice = sorted(n for n in names if names.count(n) > 1)[0]
        raise ValueError(f"{module}: two answer regions named {twice}; a function holds one "
                         f"region per exercise")
    return regions


def _region(module: str, functions: list, first: int, match, indent: int, last: int) -> Region:
    """The region between the marker lines ``first`` and ``last``."""
    where = f"{module}, lines {first}-{last}"
    candidates = []  # blocks with statements inside the region: (indent, path, owner, field, block, inside)
    for path, fn in functions:
        for owner in ast.walk(fn):
            for field_name in ("body", "orelse", "finalbody"):
                block = getattr(owner, field_name, None)
                block = block if isinstance(block, list) else []  # a lambda's body is an expression
                inside = [s for s in block if isinstance(s, ast.stmt) and first < s.lineno < last]
                if inside:
                    candidates.append((inside[0].col_offset, path, owner, field_name, block, inside))
    if not candidates:
        raise ValueError(f"{where}: an answer region must hold statements of a dpm_core function "
                         f"or method")
    _, path, owner, field_name, block, inside = min(candidates, key=lambda c: c[0])
    if inside[0].col_offset != indent or any(s.end_lineno >= last for s in inside) \
            or any(s.lineno < first < s.end_lineno for s in block):
        raise ValueError(f"{where}: an answer region must hold whole statements of one block, "
                         f"with its markers at their indentation")
    if isinstance(owner, ast.FunctionDef) and inside[0] is owner.body[0] \
            and ast.get_docstring(owner) is not None:
        raise ValueError(f"{where}: an answer region cannot hold the docstring")
    guard = owner.test if isinstance(owner, ast.If) and field_name == "body" \
        and len(inside) == len(block) else None
    return Region(f"{path}#{match['exercise']}", path, match["assignment"], match["exercise"],
                  first, last, indent, inside, guard)


def _package_regions(package: Path) -> list[Region]:
    return [r for path in sorted(package.rglob("*.py"))
            for r in answer_regions(path.read_text(), _module_name(path, package))]


def answers(repo: Path = REPO) -> dict:
    """``{name: assignment}`` of everything the hand-out withholds until an assignment's
    solutions are released: the references of ``course.exercises`` (by dotted path) and the
    regions of dpm_core marked as answers (``<function>#<solution cell id>``).

    Raises:
        ValueError: a region names an exercise that ``course.exercises`` does not have, or
            see :func:`answer_regions`.
    """
    found = _exercise_owner()
    for region in _package_regions(repo / PACKAGE):
        if region.exercise not in EXERCISES.get(region.assignment, {}):
            raise ValueError(f"{region.name}: {region.assignment}/{region.exercise} is not an "
                             f"exercise of course/exercises.py")
        found[region.name] = region.assignment
    return found


def kept_docstring(doc: str, assignment: str = "") -> str:
    """What stays of a withheld docstring: its first paragraph and its ``Args:``,
    ``Returns:``, ``Yields:``, ``Raises:``, ``Shapes:`` and ``Example:`` sections.

    Args:
        doc: the docstring, cleaned (``inspect.cleandoc``).
        assignment: named in the sentence that replaces what was left out, if anything was.

    Returns:
        The kept docstring, its parts in their order.
    """
    lines = doc.strip("\n").split("\n")
    blank = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    summary, kept, dropped, keep = lines[:blank], [], False, False
    for line in lines[blank:]:
        if line.strip() and not line[0].isspace():  # a line at the left margin starts a part
            keep = re.fullmatch(rf"(?:{'|'.join(KEPT_SECTIONS)}):", line.strip()) is not None
            dropped = dropped or not keep
            if keep:
                while kept and not kept[-1].strip():
                    kept.pop()
                kept.append("")
        if keep:
            kept.append(line.rstrip())
    when = f" until the solutions of {assignment} are released" if assignment else ""
    note = ["", f"(The rest is withheld{when}.)"] if dropped else []
    return "\n".join(summary + note + kept).rstrip()


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
    without the class argument of isinstance/issubclass (neither calls the class), and
    without the statements of the regions ``skip`` (``(first, last)`` marker lines)."""

    def __init__(self, skip=()):
        self.names, self.attrs, self.skip = set(), set(), tuple(skip)

    def visit(self, node):
        if not (isinstance(node, ast.stmt) and _inside(node, self.skip)):
            super().visit(node)

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


def _inside(stmt: ast.stmt, regions) -> bool:
    return any(first < stmt.lineno < last for first, last in regions)


def _uses(nodes, skip=()) -> _Uses:
    visitor = _Uses(skip)
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
    code: dict = field(default_factory=dict)        # node -> its AST nodes
    regions: dict = field(default_factory=dict)     # function node -> [Region] in it
    region_uses: dict = field(default_factory=dict)  # region name -> _Uses of its statements

    def resolve(self, module: str, name: str, depth: int = 0):
        target = self.scope.get(module, {}).get(name)
        if isinstance(target, tuple) and depth < 10:  # ("from", module, name): re-export
            return self.resolve(target[1], target[2], depth + 1)
        return target


def _graph(package: Path) -> _Graph:
    g = _Graph()
    for path in sorted(package.rglob("*.py")):
        module = _module_name(path, package)
        source = path.read_text()
        tree = ast.parse(source)
        scope = g.scope.setdefault(module, {})
        for region in answer_regions(source, module):
            g.regions.setdefault(region.function, []).append(region)
            g.region_uses[region.name] = _uses(region.body)

        def function_uses(node: str, fn: ast.FunctionDef) -> _Uses:
            g.code[node] = [fn]
            return _uses([fn], [(r.first, r.last) for r in g.regions.get(node, ())])

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
                    g.uses[node] = function_uses(node, stmt)
                    continue
                own = [s for s in stmt.body if not isinstance(s, ast.FunctionDef)]
                g.uses[node], g.code[node] = _uses([*stmt.bases, *own]), [*stmt.bases, *own]
                for method in (s for s in stmt.body if isinstance(s, ast.FunctionDef)):
                    name = f"{node}.{method.name}"
                    g.uses[name], g.module_of[name] = function_uses(name, method), module
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
    """The withheld references and regions that a notebook's code reaches through dpm_core.

    Names are followed to the objects they mean; an attribute ``.m`` reaches every method
    ``m`` of a class that is not withheld (an over-approximation that sees
    ``model.as_latent_model()`` inside the widgets), unless ``m`` is an attribute of every
    ``nn.Module`` or distribution; a class reaches its bases, ``__init__``, ``forward`` and
    its other dunder methods. A method that the notebook overrides in a subclass of its own
    is not reached (the notebook's subclass is what it uses), except by ``super().m`` in
    that subclass. A withheld function or class is reached by name, a withheld method by
    attribute. What a withheld region holds is not followed (the build removes it); the
    region itself is needed when its function is reached and, for a region guarded by a
    parameter, when the reached code gives the parameter a value that enters it
    (:func:`_triggered`).

    Args:
        cells: ``(cell id, source)`` of the code the student runs.
        own: names the notebook defines itself (they shadow dpm_core's).
        withheld: ``{reference path or region name: assignment}``.
        g: the graph of the dpm_core being handed out (see :func:`_graph`).

    Returns:
        ``{reference path or region name: chain}``, the chain from the cell id to it.
    """
    scope = _notebook_scope([source for _, source in cells], own, g)
    withheld_classes = {p for p in withheld if p in g.methods}
    found, seen, overridden, queue = {}, set(), set(), deque()
    supers = []  # (base method, chain) that a subclass reaches with super().m
    for cell_id, source in cells:  # methods of dpm_core classes that the notebook's subclasses override
        for stmt in _parse_cell(source).body:
            if isinstance(stmt, ast.ClassDef):
                bases = [scope.get(b.id) for b in stmt.bases if isinstance(b, ast.Name)]
                overridden.update(f"{base}.{m.name}" for base in bases if base for m in stmt.body
                                  if isinstance(m, ast.FunctionDef))
                supers += [(f"{base}.{node.attr}", [f"cell {cell_id}"]) for node in ast.walk(stmt)
                           if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Call)
                           and isinstance(node.value.func, ast.Name) and node.value.func.id == "super"
                           for base in bases if base]

    def reach(target, chain, by_attr=False, explicit=False):
        if target is None or target in seen or (target in overridden and not explicit):
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

    code = []  # (AST nodes, name resolver, regions to skip) of everything reached
    for cell_id, source in cells:
        tree = _parse_cell(source)
        code.append(([tree], scope.get, ()))
        for node in ast.walk(tree):  # dpm_core.module.name chains
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in scope and scope[node.value.id] in g.scope:
                reach(g.resolve(scope[node.value.id], node.attr), [f"cell {cell_id}"])
        follow(_uses(tree.body), scope.get, [f"cell {cell_id}"])
    for target, chain in supers:
        if target in g.uses:
            reach(target, chain, by_attr=True, explicit=True)
    regions = []  # (withheld region, chain to its function)
    while queue:
        node, chain = queue.popleft()
        if node in g.methods:
            for method in g.methods[node]:
                if _IMPLICIT.fullmatch(method.rsplit(".", 1)[1]):
                    reach(method, chain)
        module = g.module_of.get(node)
        if module:
            resolve = lambda name, m=module: g.resolve(m, name)  # noqa: E731
            follow(g.uses[node], resolve, chain)
            skip = []
            for region in g.regions.get(node, ()):
                if region.name in withheld:
                    regions.append((region, chain))
                    skip.append((region.first, region.last))
                else:
                    follow(g.region_uses[region.name], resolve, chain)
            code.append((g.code[node], resolve, skip))
    for region, chain in regions:
        if _triggered(region, code, g):
            found.setdefault(region.name, chain + [region.name])
    return found


#: an argument that a call leaves out, or a callable passed on uncalled
_ABSENT = object()


def _walk(nodes, skip=()):
    """``ast.walk`` over ``nodes``, without the statements inside the regions ``skip``."""
    todo = deque(nodes)
    while todo:
        node = todo.popleft()
        if isinstance(node, ast.stmt) and _inside(node, skip):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def _guard(test: ast.expr):
    """``(parameter, values)`` of a region's guard ``p == c``, ``c == p`` or ``p in (c, ...)``
    (values: the constants), ``(parameter, None)`` of ``p is None``; None for any other test."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, op, right = test.left, test.ops[0], test.comparators[0]
    if isinstance(op, ast.Eq) and isinstance(left, ast.Constant):
        left, right = right, left
    if not isinstance(left, ast.Name):
        return None
    if isinstance(op, ast.Eq) and isinstance(right, ast.Constant):
        return left.id, {right.value}
    if isinstance(op, ast.In) and isinstance(right, (ast.Tuple, ast.List, ast.Set)) \
            and all(isinstance(e, ast.Constant) for e in right.elts):
        return left.id, {e.value for e in right.elts}
    if isinstance(op, ast.Is) and isinstance(right, ast.Constant) and right.value is None:
        return left.id, None
    return None


def _bound(nodes, name: str):
    """The expressions that ``nodes`` bind to the name ``name``: keyword arguments, plain
    assignments, parameter defaults, the items of a for loop over a literal, dict literals."""
    for node in nodes:
        if isinstance(node, ast.keyword) and node.arg == name:
            yield node.value
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            for target in getattr(node, "targets", [getattr(node, "target", None)]):
                if isinstance(target, ast.Name) and target.id == name:
                    yield node.value
        elif isinstance(node, ast.arguments):
            positional = [*node.posonlyargs, *node.args]
            pairs = [*zip(positional[len(positional) - len(node.defaults):], node.defaults),
                     *zip(node.kwonlyargs, node.kw_defaults)]
            yield from (default for arg, default in pairs if arg.arg == name and default is not None)
        elif isinstance(node, ast.For) and isinstance(node.iter, (ast.List, ast.Tuple, ast.Set)):
            if isinstance(node.target, ast.Name) and node.target.id == name:
                yield from node.iter.elts
            elif isinstance(node.target, ast.Tuple):
                at = [i for i, t in enumerate(node.target.elts) if isinstance(t, ast.Name) and t.id == name]
                yield from (item.elts[i] for i in at for item in node.iter.elts
                            if isinstance(item, (ast.Tuple, ast.List)) and i < len(item.elts))
        elif isinstance(node, ast.Dict):
            yield from (v for k, v in zip(node.keys, node.values)
                        if isinstance(k, ast.Constant) and k.value == name)


def _arguments(nodes, resolve, function: str, param: str, g: _Graph):
    """What the references to ``function`` in ``nodes`` give its parameter ``param``: the
    argument of each call (None where ``**kwargs`` may hold it), ``_ABSENT`` for a call that
    leaves it out and for a reference that is not a call (a class passed to ``partial`` or
    subclassed)."""
    owner, name = function.rsplit(".", 1)
    method = owner in g.methods
    target, attr = (owner, None) if name == "__init__" else (function, name if method else None)
    fn = g.code[function][0]
    params = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)][1 if method else 0:]
    index = params.index(param) if param in params else None

    def means(node) -> bool:
        if isinstance(node, ast.Name):
            return resolve(node.id) == target
        if isinstance(node, ast.Attribute):
            if attr is not None:
                return node.attr == attr
            module = resolve(node.value.id) if isinstance(node.value, ast.Name) else None
            return isinstance(module, str) and module in g.scope and g.resolve(module, node.attr) == target
        return False

    callees, classes = set(), set()
    for node in nodes:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("isinstance", "issubclass") and len(node.args) > 1:
            classes.update(map(id, ast.walk(node.args[1])))
        if isinstance(node, ast.Call) and means(node.func):
            callees.add(id(node.func))
            keyword = next((k.value for k in node.keywords if k.arg == param), None)
            starred = any(isinstance(a, ast.Starred) for a in node.args)
            if keyword is not None:
                yield keyword
            elif index is not None and index < len(node.args) and not starred:
                yield node.args[index]
            elif starred or any(k.arg is None for k in node.keywords):
                yield None
            else:
                yield _ABSENT
    for node in nodes:
        if id(node) not in callees and id(node) not in classes and means(node):
            yield _ABSENT


def _triggered(region: Region, code: list, g: _Graph) -> bool:
    """Whether the reached ``code`` (``(AST nodes, resolver, regions to skip)``) may enter
    ``region``: always for a region that no parameter guards; for ``p == c`` or ``p in (c,
    ...)``, when a direct call passes such a constant, or the name ``p`` (or a variable
    passed on as ``p``, by keyword or position) is bound to one anywhere in that code (names
    are not told apart by scope); for ``p is None``, when a call of the region's function
    leaves ``p`` out or passes None, or the function (a class) is passed on uncalled."""
    guard = _guard(region.guard) if region.guard is not None else None
    if guard is None:
        return True
    param, values = guard
    code = [(list(_walk(nodes, skip)), resolve) for nodes, resolve, skip in code]
    given = [v for nodes, resolve in code for v in _arguments(nodes, resolve, region.function, param, g)]
    if values is None:
        return any(v is _ABSENT or (isinstance(v, ast.Constant) and v.value is None) for v in given)
    names, todo = set(), [param, *(v.id for v in given if isinstance(v, ast.Name))]
    while todo:  # the parameter's name, and the names of the variables passed on as it
        name = todo.pop()
        if name not in names:
            names.add(name)
            todo += [v.id for nodes, _ in code for v in _bound(nodes, name) if isinstance(v, ast.Name)]
    return any(isinstance(v, ast.Constant) and v.value in values
               for v in [*given, *(b for nodes, _ in code for name in names for b in _bound(nodes, name))])


# ---------------------------------------------------------------------------- the stage
@dataclass
class Stage:
    """Which assignments are open, released and future, and what follows from it."""
    open: list
    released: list
    withheld: dict                 # reference path or region name -> assignment
    shipped: dict                  # the same, withheld but shipped
    conflicts: dict                # open assignment -> {reference or region: chain}
    warnings: dict                 # released assignment -> {reference or region: chain}
    order: list = field(default_factory=list)  # every assignment, in course order
    # for a refused stage, what builds it: the answers to ship, or the assignments to release
    # (with the answers of open ones to ship then)
    to_ship: list = field(default_factory=list)
    to_release: list = field(default_factory=list)
    to_release_ship: list = field(default_factory=list)

    def problem(self, out: str | Path = "handout") -> str:
        """The refusal message, or '' when every open notebook can run: which cell needs
        which withheld answer, and the commands that build this stage instead.

        Args:
            out: the hand-out folder that those commands name.
        """
        lines, needed = [], {}
        for assignment, found in self.conflicts.items():
            for name, chain in sorted(found.items()):
                lines.append(f"  {assignment}: {' -> '.join(chain)}, the answer to an exercise of "
                             f"{self.withheld[name]}")
                needed[name] = self.withheld[name]
        if not lines:
            return ""
        shipped = sorted(self.shipped)
        options = [f"Change that given code so that it needs none of them (course/AUTHORING.md), "
                   f"then build again:\n    {_command(out, self.open, self.released, shipped)}"]
        owners = [a for a in self.to_release if a not in self.released]
        if owners:
            also = (f", and ship {', '.join(self.to_release_ship)}" if self.to_release_ship else "")
            options.append(f"Or release {' and '.join(owners)} too (the students get "
                           f"{'its' if len(owners) == 1 else 'their'} solutions now{also}):\n    "
                           + _command(out, self.open, self.to_release,
                                      sorted({*shipped, *self.to_release_ship})))
        options.append("Or ship what is needed although it is graded (the students get these "
                       "answers, and the hand-out's README says so):\n    "
                       + _command(out, self.open, self.released,
                                  sorted({*shipped, *(self.to_ship or needed)})))
        return ("the given code of an open assignment needs answers that the hand-out "
                "withholds:\n" + "\n".join(lines) + "\n" + "\n".join(options))


def _command(out: str | Path, open_: list, released: list, ship: list = ()) -> str:
    """The ``make handout`` line (see the Makefile) that builds a stage."""
    parts, args = ["make handout", f'OPEN="{" ".join(open_)}"'], []
    if released:
        parts.append(f'RELEASE="{" ".join(released)}"')
    else:
        args.append("--release")  # none, instead of the default (those before the first open)
    if str(out) != "handout":
        parts.append(f"OUT={out}")
    if ship:
        args += ["--ship", *ship]
    return " ".join(parts + ([f'ARGS="{" ".join(args)}"'] if args else []))


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
        ship: references and regions (see :func:`answers`) to ship although they are
            withheld.

    Raises:
        ValueError: an unknown assignment, one both open and released, or a ``ship`` name
            that this stage does not withhold; the message says what to run instead.
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
        raise ValueError(f"{', '.join(sorted(both))} cannot be both open and released; open "
                         f"{'it' if len(both) == 1 else 'them'} with the solutions of the others "
                         f"released: {_command('handout', open_, [a for a in release if a not in both])}")
    owner = answers(repo)
    unknown = set(ship) - {p for p, a in owner.items() if a not in release}
    if unknown:
        example = min((p for p, a in owner.items() if a not in release), default=None)
        raise ValueError(f"--ship takes what this stage withholds (listed in the hand-out's "
                         f"README{f', e.g. {example}' if example else '; here nothing'}), got "
                         f"{', '.join(sorted(unknown))}")
    withheld = {p: a for p, a in owner.items() if a not in release and p not in ship}
    shipped = {p: a for p, a in owner.items() if a not in release and p in ship}
    g = _graph(repo / PACKAGE)
    conflicts, warnings, code = {}, {}, []
    for name in order:
        if name not in open_ and name not in release:
            continue
        for nb_name in next(a for a in course_order(repo) if a["name"] == name)["notebooks"]:
            folder = "release" if name in open_ else "source"
            nb = nbformat.read(repo / folder / name / f"{nb_name}.ipynb", as_version=4)
            cells, own = _notebook_code(nb, solutions=name in release)
            found = needs(cells, own, withheld, g)
            if name in open_:
                code.append((cells, own))
            if found:
                (conflicts if name in open_ else warnings).setdefault(name, {}).update(found)
    stage = Stage([a for a in order if a in open_], [a for a in order if a in release],
                  withheld, shipped, conflicts, warnings, order)
    if conflicts:  # what would build it: what an answer that is given back needs comes too
        def needed(keep: dict) -> set:
            return {n for cells, own in code for n in needs(cells, own, keep, g)}

        def ship_closure(keep: dict) -> list:
            more, given = needed(keep), set()
            while more - given:
                given |= more
                more = needed({n: a for n, a in keep.items() if n not in given})
            return sorted(given)

        stage.to_ship = ship_closure(withheld)
        owners, late = set(), {withheld[n] for f in conflicts.values() for n in f} - set(open_)
        while late - owners:
            owners |= late
            keep = {n: a for n, a in withheld.items() if a not in owners}
            late = {keep[n] for n in needed(keep)} - set(open_)
        if owners:
            stage.to_release = [a for a in order if a in release or a in owners]
            stage.to_release_ship = ship_closure({n: a for n, a in withheld.items() if a not in owners})
    return stage


# ---------------------------------------------------------------------------- withholding
def withhold_source(source: str, module: str, withheld: dict) -> str:
    """``source`` of ``module`` with its withheld references and regions replaced by a raise.

    Signatures and decorators stay; of the docstrings of withheld references and of the
    functions that hold a withheld region, what :func:`kept_docstring` keeps. A withheld
    class has every method replaced, and its docstring and theirs cut.

    Args:
        source: the module's text.
        module: its dotted name, e.g. ``dpm_core.kl``.
        withheld: ``{reference path or region name: assignment}`` (see :func:`answers`).
    """
    lines = source.splitlines(keepends=True)
    edits = []  # (first line, last line, new lines), 1-based inclusive

    def raising(indent: int, message: str) -> list:
        return [f"{' ' * indent}raise NotImplementedError({message!r})\n"]

    def cut_docstring(node, assignment: str):
        doc = ast.get_docstring(node)
        if doc is not None and kept_docstring(doc, assignment) != doc:
            expr = node.body[0]
            edits.append((expr.lineno, expr.end_lineno,
                          _docstring_lines(kept_docstring(doc, assignment), expr.col_offset)))

    def replace(fn: ast.FunctionDef, path: str, assignment: str):
        cut_docstring(fn, assignment)
        body = fn.body[1:] if ast.get_docstring(fn, clean=False) is not None and len(fn.body) > 1 \
            else fn.body
        if ast.get_docstring(fn, clean=False) is not None and len(fn.body) == 1:
            body = []
        first = body[0].lineno if body else fn.body[-1].end_lineno + 1
        indent = (body[0].col_offset if body else fn.body[0].col_offset)
        if first <= fn.lineno:
            raise ValueError(f"{path}: a one-line body cannot be withheld")
        edits.append((first, fn.end_lineno if body else first - 1,
                      raising(indent, WITHHELD_MESSAGE.format(path=path, assignment=assignment))))

    tree = ast.parse(source)
    replaced = set()
    for stmt in tree.body:
        path = f"{module}.{getattr(stmt, 'name', '')}"
        if isinstance(stmt, ast.FunctionDef) and path in withheld:
            replace(stmt, path, withheld[path])
            replaced.add(path)
        elif isinstance(stmt, ast.ClassDef):
            if path in withheld:
                cut_docstring(stmt, withheld[path])
            for fn in (s for s in stmt.body if isinstance(s, ast.FunctionDef)):
                method = f"{path}.{fn.name}"
                if path in withheld or method in withheld:
                    replace(fn, path if path in withheld else method, withheld.get(path) or withheld[method])
                    replaced.add(method)
    functions, cut = dict(_functions(tree, module)), set()
    for region in answer_regions(source, module):
        if region.name not in withheld or region.function in replaced:
            continue  # a region of a withheld function goes with its body
        assignment = withheld[region.name]
        edits.append((region.first, region.last, raising(region.indent, REGION_MESSAGE.format(
            path=region.function, where=region.where, assignment=assignment, exercise=region.exercise))))
        if region.function not in cut:
            cut_docstring(functions[region.function], assignment)
            cut.add(region.function)
    for first, last, new in sorted(edits, reverse=True):
        lines[first - 1:last] = new
    text = "".join(lines)
    ast.parse(text)
    return text


def _docstring_lines(text: str, indent: int) -> list:
    """A docstring literal holding ``text``, as lines indented by ``indent``."""
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if text.endswith('"'):
        text = text[:-1] + '\\"'
    pad, parts = " " * indent, text.split("\n")
    if len(parts) == 1:
        return [f'{pad}"""{text}"""\n']
    return ([f'{pad}"""{parts[0]}\n'] + [f"{pad}{line}\n" if line else "\n" for line in parts[1:]]
            + [f'{pad}"""\n'])


def student_package(assignment: str, repo: Path = REPO) -> dict:
    """``{path: text}`` of ``dpm_core`` as its students have it while ``assignment`` is open:
    the references and answer regions (:func:`answers`) of its graded exercises and of every
    later assignment withheld, those of earlier assignments released. The grader's kernels
    import this build, so that calling a reference of the graded exercise reaches nothing.

    Raises:
        ValueError: ``assignment`` is not in the course.
    """
    order = [a["name"] for a in course_order(repo)]
    if assignment not in order:
        raise ValueError(f"unknown assignment {assignment!r}; the course has {', '.join(order)}")
    released = order[:order.index(assignment)]
    withheld = {p: a for p, a in answers(repo).items() if a not in released}
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
#: the student environment's Jupyter configuration (nbgrader's instructor tools switched off,
#: see course/student/README.md): copied into the hand-out as ``etc/``, which
#: ``pip install [-e] .`` puts into the environment's prefix (``etc/jupyter/...``)
STUDENT_ETC = Path("course", "student", "etc")


def _student_requirements(repo: Path) -> tuple[dict, list, dict]:
    """``(project, dependencies, left out)``: the repository's ``[project]``, its
    dependencies without those of ``[tool.dpm-course.instructor-only]``, and those
    (``{name: why}``).

    Raises:
        ValueError: an instructor-only name is not a dependency of ``[project]`` (the two
            lists drifted apart, e.g. a renamed dependency).
    """
    import tomllib

    config = tomllib.loads((repo / "pyproject.toml").read_text())
    project = config["project"]
    left_out = config.get("tool", {}).get("dpm-course", {}).get("instructor-only", {})
    key = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731 (PEP 503 names)
    name = lambda dep: key(re.match(r"[A-Za-z0-9._-]+", dep).group(0))  # noqa: E731
    stale = sorted({key(n) for n in left_out} - {name(d) for d in project["dependencies"]})
    if stale:
        raise ValueError(f"[tool.dpm-course.instructor-only] in {repo / 'pyproject.toml'} names "
                         f"{', '.join(stale)}, which [project] does not depend on")
    excluded = {key(n) for n in left_out}
    return project, [d for d in project["dependencies"] if name(d) not in excluded], left_out


def _student_pyproject(repo: Path) -> str:
    """The hand-out's ``pyproject.toml``: the student ``dpm_core``, the course's pins without
    the instructor-only dependencies, and the Jupyter configuration of :data:`STUDENT_ETC`.

    Built with hatchling, whose ``shared-data`` goes into the environment's prefix with
    ``pip install -e .`` too; setuptools (84) leaves its data files out of editable wheels
    (``editable_wheel`` asks the distribution ``has_data()``, a method it does not have).
    """
    project, requirements, left_out = _student_requirements(repo)
    deps = "".join(f"    {json.dumps(d)},\n" for d in requirements)
    why = "".join(f"#   {name}: {reason}\n" for name, reason in left_out.items())
    return (f'[build-system]\nrequires = ["hatchling>=1.10"]\nbuild-backend = "hatchling.build"\n\n'
            f'[project]\nname = "{STUDENT_DIST}"\nversion = "{project["version"]}"\n'
            f'description = "dpm_core for the students of the course (graded references withheld)"\n'
            f'readme = "README.md"\nrequires-python = "{project["requires-python"]}"\n'
            f'# the course\'s dependencies, less those only its instructors use:\n{why}'
            f'dependencies = [\n{deps}]\n\n'
            f'[tool.hatch.build.targets.wheel]\npackages = ["{PACKAGE}"]\n\n'
            f'# into the environment\'s etc/jupyter: nbgrader\'s formgrader, Create Assignment, '
            f'assignment and\n# course lists switched off, its Validate kept\n'
            f'[tool.hatch.build.targets.wheel.shared-data]\n"etc" = "etc"\n')


def _student_environment(repo: Path) -> str:
    """The hand-out's ``environment.yml``: conda's Python (the version of the repository's
    ``environment.yml``) and pip, which installs what ``pyproject.toml`` does."""
    python = re.search(r"^\s*- python=(\S+)", (repo / "environment.yml").read_text(), re.M)
    if python is None:
        raise ValueError(f"{repo / 'environment.yml'} pins no python=VERSION")
    _, requirements, _ = _student_requirements(repo)
    pip = "".join(f"      - {d}\n" for d in requirements)
    return ("# conda env create -f environment.yml && conda activate dpm-course\n"
            "# The pins of pyproject.toml (torch and torchvision move together); `-e .` installs\n"
            "# dpm_core and the Jupyter configuration that switches nbgrader's instructor tools off.\n"
            f"name: dpm-course\nchannels:\n  - conda-forge\ndependencies:\n"
            f"  - python={python.group(1)}\n  - pip\n  - pip:\n{pip}      - -e .\n")


def _readme(stage: Stage, repo: Path) -> str:
    titles = {a["name"]: a["title"] for a in course_order(repo)}
    rows = lambda names, folder: "\n".join(  # noqa: E731
        f"| `{folder}/{n}/` | {titles[n]} |" for n in names) or "| (none) | |"
    regions = {r.name: r for r in _package_regions(repo / PACKAGE)}
    what = lambda name: (  # noqa: E731
        f"`{regions[name].function}`, the part{regions[name].where.rstrip(',')} that answers "
        f"{regions[name].exercise}" if name in regions else f"`{name}`")
    listed = lambda refs: "\n".join(  # noqa: E731
        f"- {what(p)} ({a})" for p, a in sorted(refs.items(), key=lambda x: (x[1], x[0]))) or "- none"
    notes = []
    for assignment, found in stage.warnings.items():
        for ref, chain in sorted(found.items()):
            notes.append(f"- `solutions/{assignment}`: {chain[0]} needs {what(ref)}, withheld until "
                         f"the solutions of {stage.withheld[ref]} are released; it stops there.")
    if stage.shipped:
        notes.append("- Shipped although graded, because given code needs them: "
                     + ", ".join(f"{what(p)} ({a})" for p, a in sorted(stage.shipped.items())) + ".")
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
    if stage.problem(out):
        raise ValueError(stage.problem(out))
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
    (out / "environment.yml").write_text(_student_environment(repo))
    shutil.copytree(repo / STUDENT_ETC, out / "etc")
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
    parser.add_argument("--ship", nargs="+", default=[], metavar="NAME",
                        help="ship these withheld references or regions anyway (given code needs "
                             "them; the refusal names them)")
    args = parser.parse_args(argv)
    if not args.open and not args.release:
        parser.error("name the open assignments (--open) or the released ones (--release), "
                     "e.g. python -m course.handout handout --open vae_basics")
    try:
        stage = build(args.out, args.open, args.release, tuple(args.ship))
    except ValueError as error:
        print(f"course.handout: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: open {', '.join(stage.open) or '-'}; released "
          f"{', '.join(stage.released) or '-'}; {len(stage.withheld)} answers withheld "
          f"(references and regions of dpm_core)")
    for assignment, found in stage.warnings.items():
        for ref, chain in sorted(found.items()):
            print(f"warning: solutions/{assignment}: {' -> '.join(chain)} is withheld "
                  f"({stage.withheld[ref]} is not released)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
