"""The student hand-out (``course.handout``): no answers in it, and its notebooks run.

Two hand-outs are built once per module in a temporary folder:

* ``stage``: ``--open dpm2_generative`` (so vae_basics is released by default): the release
  notebook of dpm2_generative, the solutions of vae_basics, and a dpm_core in which the
  references of dpm2_generative, dpm2_inference and importance_sampling are withheld;
* ``solutions``: ``--release vae_basics dpm2_generative``, the solutions release.

What must not be in a hand-out is read from the repository: the lines of every hidden
region of ``source/`` and the names of the checks in ``course/checks``, the lines of the
solution regions and model answers of every assignment not released, and the body lines
of every withheld reference; a line counts when it is at least 25 characters long and is
not public anyway (in a release notebook, or in dpm_core outside the withheld bodies).
The notebooks run against the hand-out's dpm_core with nbclient (about 50 s in all).
"""

import ast
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course import handout
from course.exercises import EXERCISES, references

REPO = Path(__file__).resolve().parent.parent
ORDER = [a["name"] for a in handout.course_order()]
MIN_LENGTH = 25
WITHHELD_WORDS = "is the answer to an exercise of"
ALLOWED = re.compile(r"README\.md|pyproject\.toml|environment\.yml|dpm_core/(?:\w+/)?\w+\.py|"
                     r"(assignments|solutions)/(\w+)/\2\.ipynb")


def _lines(text: str) -> set:
    return {line.strip() for line in text.splitlines() if len(line.strip()) >= MIN_LENGTH}


def _regions(source: str, begin: str, end: str) -> str:
    return "\n".join(re.findall(rf"{re.escape(begin)}\n(.*?){re.escape(end)}", source, re.S))


def _source(assignment: str):
    return nbformat.read(REPO / "source" / assignment / f"{assignment}.ipynb", as_version=4)


def _release_text() -> str:
    return "\n".join(cell.source for a in ORDER for cell in nbformat.read(
        REPO / "release" / a / f"{a}.ipynb", as_version=4).cells)


def _all_withheld_dpm_core() -> str:
    """dpm_core with every reference withheld: what is public of it."""
    every = {p: "x" for p in references()}
    return "\n".join(handout.withhold_source(path.read_text(), handout._module_name(path, REPO / "dpm_core"),
                                             every) for path in sorted((REPO / "dpm_core").glob("*.py")))


PUBLIC = _lines(_release_text()) | _lines(_all_withheld_dpm_core())


def _hidden_lines() -> set:
    text = "\n".join(_regions(cell.source, "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
                     for a in ORDER for cell in _source(a).cells)
    return _lines(text) - PUBLIC


def _judge_lines() -> set:
    """Lines of the judges and of the probes (neither is handed out), but those that dpm_core
    or a solution holds too (a probe's copy of a given class or an upstream answer, which a
    release of the solutions may ship; unreleased answers are secrets of their own)."""
    def text(*folders):
        return "\n".join(p.read_text() for f in folders for p in sorted(f.rglob("*.py")))

    return (_lines(text(REPO / "course" / "judges", REPO / "dpm_probe")) - PUBLIC
            - _lines(text(REPO / "dpm_core")) - set().union(*map(_answer_lines, ORDER)))


def _answer_lines(assignment: str) -> set:
    """Lines of the solution regions and model answers of one assignment."""
    parts = []
    for cell in _source(assignment).cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code":
            parts.append(_regions(cell.source, "### BEGIN SOLUTION", "### END SOLUTION"))
        elif meta.get("solution"):
            parts.append(cell.source)
    return _lines("\n".join(parts)) - PUBLIC


def _body_lines(path: str, public: set = frozenset()) -> set:
    """The lines of a reference's body (its docstring aside) that appear nowhere public."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        file = REPO.joinpath(*parts[:split]).with_suffix(".py")
        if file.exists():
            break
    source = file.read_text()
    node = ast.parse(source)
    for name in parts[split:]:
        node = next(n for n in node.body if getattr(n, "name", None) == name)
    functions = [n for n in ast.walk(node) if isinstance(n, ast.FunctionDef)]
    lines = source.splitlines()
    body = []
    for fn in functions:
        start = fn.body[1 if ast.get_docstring(fn) is not None else 0].lineno
        body += lines[start - 1:fn.end_lineno]
    return _lines("\n".join(body)) - PUBLIC - public


def _corpus(root: Path) -> dict:
    """``{relative path: text}`` of a hand-out, notebooks as their cells' sources."""
    texts = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".ipynb":
            texts[rel] = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
        else:
            texts[rel] = path.read_text()
    return texts


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """``{name: (folder, stage)}`` of the two hand-outs, built with the command line."""
    root = tmp_path_factory.mktemp("handouts")
    made = {}
    for name, args in [("stage", ["--open", "dpm2_generative"]),
                       ("solutions", ["--release", "vae_basics", "dpm2_generative"])]:
        result = subprocess.run([sys.executable, "-m", "course.handout", str(root / name), *args],
                                cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        opened = args[1:] if args[0] == "--open" else []
        made[name] = (root / name, handout.plan(opened, None if opened else args[1:]))
    return made


@pytest.mark.parametrize("name", ["stage", "solutions"])
def test_no_answers_in_the_handout(builds, name):
    """Is there no solution region, hidden test, check, model answer or withheld reference
    body in the hand-out, and no file outside the allow-list?"""
    root, stage = builds[name]
    corpus = _corpus(root)
    assert [p for p in corpus if not ALLOWED.fullmatch(p)] == []
    assert stage.released == (["vae_basics"] if name == "stage" else ["vae_basics", "dpm2_generative"])
    released = set().union(*[_answer_lines(a) | set().union(*map(_body_lines, references(a)))
                             for a in stage.released])  # public in this hand-out
    secrets = {"hidden test": _hidden_lines(), "judge": _judge_lines()}
    for assignment in ORDER:
        if assignment not in stage.released:
            secrets[f"answer of {assignment}"] = _answer_lines(assignment) - released
    for path in stage.withheld:
        secrets[f"body of {path}"] = _body_lines(path, released)
    assert all(secrets.values()), "every secret has distinctive lines to look for"
    checks = set(re.findall(r"def (check_\w+)", "\n".join(
        p.read_text() for p in (REPO / "course" / "checks").glob("*.py"))))
    assert len(checks) >= 20
    leaks = []
    for rel, text in corpus.items():
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
            if marker in text:
                leaks.append(f"{rel}: the marker {marker}")
        leaks += [f"{rel}: the check {c}" for c in checks if c in text]
        present = _lines(text)
        for what, lines in secrets.items():
            leaks += [f"{rel}: {what}: {line}" for line in sorted(lines & present)[:2]]
    assert leaks == []


def test_released_answers_are_in_the_solutions(builds):
    """Do the solutions of a released assignment and its references' bodies come back?"""
    root, stage = builds["solutions"]
    corpus = _corpus(root)
    for assignment in stage.released:
        solution = _lines(corpus[f"solutions/{assignment}/{assignment}.ipynb"])
        assert _answer_lines(assignment) <= solution
        package = _lines("\n".join(t for p, t in corpus.items() if p.startswith("dpm_core/")))
        for path in references(assignment):
            assert _body_lines(path) <= package, path
    assert set(stage.withheld) == {path for assignment in ORDER[2:] for path in references(assignment)}


PROBE = r"""
import inspect, json, sys
import dpm_core
from course_exercises_paths import WITHHELD, RELEASED
from importlib import import_module

def resolve(path):
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name)
        return obj

def functions(obj):
    if inspect.isclass(obj):
        for value in vars(obj).values():
            if inspect.isfunction(value):
                yield value
            elif isinstance(value, property):
                yield value.fget
    else:
        yield obj

def call(fn):
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    try:
        fn(*[None] * len(params))
    except NotImplementedError as error:
        return str(error)
    except Exception as error:
        return "ran: " + type(error).__name__
    return "ran"

report = {"file": dpm_core.__file__, "withheld": {}, "released": {}}
for path in WITHHELD:
    report["withheld"][path] = [call(fn) for fn in functions(resolve(path))]
    report["doc"] = report.get("doc", True) and bool(inspect.getdoc(resolve(path)))
for path in RELEASED:
    report["released"][path] = [call(fn) for fn in functions(resolve(path))]
print(json.dumps(report))
"""


@pytest.mark.parametrize("name", ["stage", "solutions"])
def test_withheld_references_raise_and_the_rest_is_unchanged(builds, name, tmp_path):
    """Does every withheld reference raise the message that names its assignment (with its
    docstring kept), do the released ones run, and is every other definition unchanged?"""
    root, stage = builds[name]
    (tmp_path / "course_exercises_paths.py").write_text(
        f"WITHHELD = {sorted(stage.withheld)!r}\nRELEASED = {references(stage.released[0])!r}\n")
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{tmp_path}"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["file"] == str(root / "dpm_core" / "__init__.py")
    assert report["doc"]
    for path, outcomes in report["withheld"].items():
        # a withheld method of a withheld class (NVIL.elbo of NVIL) raises as its class does
        path = next((p for p in stage.withheld if path.startswith(p + ".")), path)
        message = f"{path} {WITHHELD_WORDS} {stage.withheld[path]}"
        assert outcomes and all(o.startswith(message) for o in outcomes), (path, outcomes)
    for path, outcomes in report["released"].items():
        assert not any(WITHHELD_WORDS in o for o in outcomes), (path, outcomes)
    for original in sorted((REPO / "dpm_core").glob("*.py")):
        module = handout._module_name(original, REPO / "dpm_core")
        built = ast.parse((root / "dpm_core" / original.name).read_text())
        kept = {n.name: ast.dump(n) for n in built.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        for node in ast.parse(original.read_text()).body:
            path = f"{module}.{getattr(node, 'name', '')}"
            touched = any(p == path or p.startswith(path + ".") for p in stage.withheld)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not touched:
                assert kept[node.name] == ast.dump(node), path


def test_a_stage_whose_given_code_needs_a_withheld_reference_is_refused(tmp_path):
    """Is dpm2_inference refused while its own references are withheld (its test bed builds
    a GaussianCPDNet, its variance cell an NVIL), naming the cell and the chain, and does
    --ship let it through? vae_basics, whose widgets view the VAE without dpm2_generative's
    classes, is not refused."""
    result = subprocess.run([sys.executable, "-m", "course.handout", str(tmp_path / "h"),
                             "--open", "dpm2_inference"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "dpm2_inference: cell ppca-testbed -> dpm_core.conditionals.GaussianCPDNet, the answer " \
           "to an exercise of dpm2_inference" in result.stderr
    assert not (tmp_path / "h").exists()
    ship = ("dpm_core.conditionals.GaussianCPDNet", "dpm_core.nvil.NVIL",
            "dpm_core.ppca.PPCA.exact_log_marginal")
    stage = handout.plan(["dpm2_inference"], ship=ship)
    assert stage.problem() == "" and set(stage.shipped) == set(ship)
    assert handout.plan(["vae_basics"]).problem() == ""
    assert "importance_sampling" in handout.plan(["importance_sampling"]).conflicts
    with pytest.raises(ValueError, match="both open and released"):
        handout.plan(["vae_basics"], ["vae_basics"])


def _execute(path: Path, root: Path, monkeypatch) -> list:
    """Run a notebook against the hand-out's dpm_core as nbgrader validates it; returns
    ``(cell id, ename, evalue)`` of every error."""
    from nbclient import NotebookClient

    monkeypatch.setenv("PYTHONPATH", str(root))
    monkeypatch.setenv("NBGRADER_EXECUTION", "validate")
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        f"import dpm_core\nassert dpm_core.__file__ == {str(root / 'dpm_core' / '__init__.py')!r}"))
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return [(c.metadata.get("nbgrader", {}).get("grade_id", "?"), o.ename, o.evalue)
            for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def test_the_notebooks_run_against_the_handout(builds, tmp_path, monkeypatch):
    """Do the blanks of the open notebook fail only as blanks, does its reference solution
    run green against the student dpm_core, and does the released vae_basics solution run
    green against it too (its widgets need nothing that dpm2_generative withholds)?"""
    root, stage = builds["stage"]
    errors = _execute(root / "assignments" / "dpm2_generative" / "dpm2_generative.ipynb", root, monkeypatch)
    assert errors, "the untouched release fails where its blanks are"
    for cell, ename, evalue in errors:
        assert WITHHELD_WORDS not in evalue, (cell, evalue)
        assert (ename, evalue) == ("NotImplementedError", "") or ename == "NameError", (cell, ename, evalue)

    reference = tmp_path / "dpm2_generative" / "dpm2_generative.ipynb"
    reference.parent.mkdir()
    nbformat.write(handout.solution_notebook(REPO / "source" / "dpm2_generative" / "dpm2_generative.ipynb"),
                   reference)
    assert _execute(reference, root, monkeypatch) == []

    assert not stage.warnings.get("vae_basics")
    assert _execute(root / "solutions" / "vae_basics" / "vae_basics.ipynb", root, monkeypatch) == []


def test_exercise_table_matches_dpm_core():
    """Is every reference of course.exercises a function, class or method that the
    hand-out can withhold?"""
    graph = handout._graph(REPO / "dpm_core")
    for assignment in EXERCISES:
        for path in references(assignment):
            assert path in graph.uses, path


def test_the_opt_in_references_are_withheld_but_not_needed(tmp_path, monkeypatch):
    """With dpm2_beyond open, its own references are withheld, among them the two that
    dpm_core reaches only on request (``handout.OPT_IN``): do those requests fail with the
    withheld message, and does the notebook's reference solution, whose given code must
    not make them, run green against that hand-out?"""
    root = tmp_path / "handout"
    result = subprocess.run([sys.executable, "-m", "course.handout", str(root), "--open", "dpm2_beyond"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert set(handout.OPT_IN) <= set(handout.plan(["dpm2_beyond"]).withheld)
    probe = ("import torch\nfrom dpm_core import FlowCPDNet, MoGCPDNet\nfrom dpm_core.nvil import _mixture_rsample\n"
             "for call in (lambda: FlowCPDNet(2, num_inputs=3)(torch.zeros(4, 3)).sample(),\n"
             "             lambda: _mixture_rsample(MoGCPDNet(2, num_inputs=3)(torch.zeros(4, 3)), torch.Size((1,)))):\n"
             "    try:\n        call()\n    except NotImplementedError as error:\n        print(error)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(WITHHELD_WORDS) == 2, out.stdout
    reference = tmp_path / "dpm2_beyond" / "dpm2_beyond.ipynb"
    reference.parent.mkdir()
    nbformat.write(handout.solution_notebook(REPO / "source" / "dpm2_beyond" / "dpm2_beyond.ipynb"), reference)
    assert _execute(reference, root, monkeypatch) == []
