"""The student hand-out (``course.handout``): no answers in it, and its notebooks run.

For every assignment of the course, the student build of dpm_core that its students (and the
grader's kernels) get while it is open (``handout.student_package``, no notebooks needed) is
checked against the full dpm_core: no body of a withheld reference, no region marked as the
answer of an exercise, no line of a withheld docstring outside its kept part, and nothing else
changed; the mixture branch of NVIL and FlowCPDNet's default coupling raise the withheld message
while dpm2_beyond is open and work once it is released; the trace of given code needs a
withheld region only where the code enters it; a refusal names commands that build the stage.

Six hand-outs are built once per module in a temporary folder, with the command line:

* one per week of the course, ``--open A`` for each assignment A in course order (the earlier
  ones released by default): the release notebook of A, the solutions of the weeks before,
  and a dpm_core in which the references and answer regions of A and every later assignment
  are withheld. Each week's untouched release fails only at its blanks, and its reference
  solution (hidden tests removed) runs green against that dpm_core, as nbgrader validates
  (about 2 minutes for the five weeks);
* ``solutions``: ``--release vae_basics dpm2_generative``, the solutions release.

What must not be in a hand-out is read from the repository: the lines of every hidden
region of ``source/`` and of the judges (``course/judges``, ``dpm_probe/probes``),
the lines of the solution regions and model answers of every assignment not released, and
the body lines of every withheld reference and region; a line counts when it is at least 25
characters long and is not public anyway (in a release notebook, or in dpm_core outside
what it withholds). The notebooks run against the hand-out's dpm_core with nbclient.
"""

import ast
import functools
import json
import os
import re
import shlex
import shutil
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
                     r"(assignments|solutions)/(\w+)/\2\.ipynb|etc/jupyter/[\w./-]+\.json")
#: every reference and answer region, ``{name: assignment}`` (``handout.answers``)
ANSWERS = handout.answers()


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
    """dpm_core with every reference and answer region withheld: what is public of it."""
    every = {p: "x" for p in ANSWERS}
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


#: the hand-outs built once: one per week (the assignment opened that week), and a solutions release
BUILDS = [*ORDER, "solutions"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """``{name: (folder, stage)}`` of the hand-outs of :data:`BUILDS`, built with the command
    line in course order."""
    root = tmp_path_factory.mktemp("handouts")
    made = {}
    weeks = [(a, ["--open", a]) for a in ORDER]
    for name, args in [*weeks, ("solutions", ["--release", "vae_basics", "dpm2_generative"])]:
        result = subprocess.run([sys.executable, "-m", "course.handout", str(root / name), *args],
                                cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        opened = args[1:] if args[0] == "--open" else []
        made[name] = (root / name, handout.plan(opened, None if opened else args[1:]))
    return made


@pytest.mark.parametrize("name", BUILDS)
def test_no_answers_in_the_handout(builds, name):
    """Is there no solution region, hidden test, check, model answer or withheld reference
    body in the hand-out, and no file outside the allow-list?"""
    root, stage = builds[name]
    corpus = _corpus(root)
    assert [p for p in corpus if not ALLOWED.fullmatch(p)] == []
    assert stage.released == (ORDER[:ORDER.index(name)] if name in ORDER
                              else ["vae_basics", "dpm2_generative"])
    released = set().union(*[_answer_lines(a) | set().union(*(_answer_body(n) for n, owner in
                                                                ANSWERS.items() if owner == a))
                             for a in stage.released])  # public in this hand-out
    secrets = {"hidden test": _hidden_lines(), "judge": _judge_lines()}
    for assignment in ORDER:
        if assignment not in stage.released:
            secrets[f"answer of {assignment}"] = _answer_lines(assignment) - released
    for path in stage.withheld:
        if _answer_body(path) and _answer_body(path) <= released:
            # public already: NVIL.elbo and NVIL.log_prob_estimate (importance_sampling) are
            # lines of the NVIL that dpm2_inference's released solution holds
            continue
        secrets[f"body of {path}"] = _answer_body(path, released)
    assert all(secrets.values()), "every secret has distinctive lines to look for"
    leaks = []
    for rel, text in corpus.items():
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
            if marker in text:
                leaks.append(f"{rel}: the marker {marker}")
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
        for name in (n for n, owner in ANSWERS.items() if owner == assignment):
            assert _answer_body(name) <= package, name
    assert set(stage.withheld) == {name for name, a in ANSWERS.items() if a in ORDER[2:]}


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


@pytest.mark.parametrize("name", ["dpm2_generative", "solutions"])
def test_withheld_references_raise_and_the_rest_is_unchanged(builds, name, tmp_path):
    """Does every withheld reference raise the message that names its assignment (with its
    docstring kept), do the released ones run, and is every other definition unchanged?"""
    root, stage = builds[name]
    (tmp_path / "course_exercises_paths.py").write_text(
        f"WITHHELD = {sorted(p for p in stage.withheld if p not in REGIONS)!r}\n"
        f"RELEASED = {references(stage.released[0])!r}\n")
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


def _course(tmp_path: Path, given: dict) -> Path:
    """A course with this repository's assignments and dpm_core whose notebooks hold only
    ``given`` code (``{assignment: source}``, one cell with the id ``given``), so that a
    stage's conflicts do not depend on the notebooks of the day."""
    repo = tmp_path / "course"
    (repo / "course").mkdir(parents=True)
    shutil.copy(REPO / "course" / "assignments.json", repo / "course")
    (repo / "dpm_core").symlink_to(REPO / "dpm_core")
    for folder in ("release", "source"):
        for assignment in ORDER:
            cells = [nbformat.v4.new_code_cell(given[assignment], metadata={"nbgrader": {
                "grade_id": "given", "locked": True}})] if assignment in given else []
            (repo / folder / assignment).mkdir(parents=True)
            nbformat.write(nbformat.v4.new_notebook(cells=cells),
                           repo / folder / assignment / f"{assignment}.ipynb")
    return repo


def _commands(problem: str) -> list:
    """The ``make handout`` lines of a refusal, each as ``(open, release, ship)``: the
    arguments that the Makefile passes to ``python -m course.handout`` (read back from
    ``make -n``, so that the line is one make accepts)."""
    found = []
    for line in problem.splitlines():
        if not line.strip().startswith("make handout"):
            continue
        words = shlex.split(line.strip())[2:]
        # the make that runs this test (`make test ARGS="-q"`) hands its command-line variables
        # to every process below it (MAKEFLAGS, and the environment): the dry run gets neither
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "ARGS", "OPEN", "RELEASE", "OUT")}
        dry = subprocess.run(["make", "-n", "-C", str(REPO), "handout", *words], env=env,
                             capture_output=True, text=True, check=True).stdout
        run = next(line for line in dry.splitlines() if " -m course.handout " in line)
        argv = shlex.split(run.split(" -m course.handout ", 1)[1])[1:]
        parts, flag = {"--open": [], "--release": None, "--ship": []}, None
        for word in argv:
            if word in parts:
                flag = word
                parts[flag] = parts[flag] or []
            else:
                parts[flag].append(word)
        found.append((parts["--open"], parts["--release"], tuple(parts["--ship"])))
    return found


def test_a_stage_whose_given_code_needs_a_withheld_answer_is_refused(tmp_path):
    """Is a stage refused when its given code needs a withheld reference (of a later
    assignment) or a withheld region (of the open one), naming the cell and the chain, with
    commands that make accepts and that build the stage (release the owner, or ship the
    answers); is nothing written; is vae_basics not refused?"""
    given = {"dpm2_inference": "from dpm_core import PPCA\nPPCA(3, 2).exact_posterior(x)",
             "dpm2_beyond": "from dpm_core import NVIL\nmodel = NVIL(joint, q, estimator='mixture')\n"
                            "model(x)"}
    repo = _course(tmp_path, given)
    stage = handout.plan(["dpm2_inference"], repo=repo)
    assert stage.conflicts == {"dpm2_inference": {"dpm_core.ppca.PPCA.exact_posterior": [
        "cell given", "dpm_core.ppca.PPCA.exact_posterior"]}}
    problem = stage.problem()
    assert "dpm2_inference: cell given -> dpm_core.ppca.PPCA.exact_posterior, the answer to an " \
           "exercise of importance_sampling" in problem
    with pytest.raises(ValueError, match="cell given"):
        handout.build(tmp_path / "h", ["dpm2_inference"], repo=repo)
    assert not (tmp_path / "h").exists()
    commands = _commands(problem)
    assert [(o, r) for o, r, _ in commands] == [
        (["dpm2_inference"], ["vae_basics", "dpm2_generative"]),
        (["dpm2_inference"], ["vae_basics", "dpm2_generative", "importance_sampling"]),
        (["dpm2_inference"], ["vae_basics", "dpm2_generative"])]
    for open_, release, ship in commands[1:]:  # the first: change the notebook, then the same
        assert handout.plan(open_, release, ship, repo=repo).problem() == "", (open_, release, ship)

    stage = handout.plan(["dpm2_beyond"], repo=repo)
    regions = {"dpm_core.nvil.NVIL.surrogate_loss#mixture-rsample-solution",
               "dpm_core.nvil.NVIL.surrogate_loss#mixture-surrogate-solution"}
    assert set(stage.conflicts["dpm2_beyond"]) == regions
    problem = stage.problem("elsewhere")
    assert "dpm2_beyond: cell given -> dpm_core.nvil.NVIL" in problem
    assert "Or release" not in problem  # the owner is the open assignment itself
    commands = _commands(problem)
    # shipping the regions brings back what they call: _mixture_rsample, withheld too
    assert len(commands) == 2 and set(commands[1][2]) == regions | {"dpm_core.nvil._mixture_rsample"}
    assert "OUT=elsewhere" in problem.splitlines()[-1]
    assert handout.plan(*commands[1], repo=repo).problem() == ""

    assert handout.plan(["vae_basics"]).problem() == ""
    result = subprocess.run([sys.executable, "-m", "course.handout", str(tmp_path / "h"),
                             "--open", "vae_basics", "--release", "vae_basics"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "cannot be both open and released" in result.stderr
    assert not (tmp_path / "h").exists()
    (open_, release, _), = _commands(result.stderr.split("released: ", 1)[1].replace(
        "make", "\nmake", 1))
    assert handout.plan(open_, release).problem() == ""
    with pytest.raises(ValueError, match="e.g. dpm_core"):
        handout.plan(["dpm2_beyond"], ship=("dpm_core.kl.KL",))  # released: nothing to ship


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


@pytest.mark.parametrize("week", ORDER)
def test_every_week_runs_against_its_handout(builds, week, tmp_path, monkeypatch):
    """Week by week: do the blanks of the open notebook fail only as blanks (never at a
    withheld answer), does its reference solution run green against the student dpm_core,
    and, in week 2, the released solution of week 1 too (its widgets need nothing that
    dpm2_generative withholds)?"""
    root, stage = builds[week]
    assert stage.open == [week] and not stage.conflicts
    errors = _execute(root / "assignments" / week / f"{week}.ipynb", root, monkeypatch)
    assert errors, "the untouched release fails where its blanks are"
    for cell, ename, evalue in errors:
        assert WITHHELD_WORDS not in evalue, (cell, evalue)
        assert (ename, evalue) == ("NotImplementedError", "") or ename == "NameError", (cell, ename, evalue)

    reference = tmp_path / week / f"{week}.ipynb"
    reference.parent.mkdir()
    nbformat.write(handout.solution_notebook(REPO / "source" / week / f"{week}.ipynb"), reference)
    assert _execute(reference, root, monkeypatch) == []

    if week == "dpm2_generative":
        assert not stage.warnings.get("vae_basics")
        assert _execute(root / "solutions" / "vae_basics" / "vae_basics.ipynb", root, monkeypatch) == []


def test_exercise_table_matches_dpm_core():
    """Is every reference of course.exercises a function, class or method that the
    hand-out can withhold, and every answer region one of an exercise of course.exercises
    (``handout.answers`` raises otherwise)?"""
    graph = handout._graph(REPO / "dpm_core")
    for assignment in EXERCISES:
        for path in references(assignment):
            assert path in graph.uses, path
    assert {a for a in ANSWERS.values()} == set(EXERCISES)
    for name, (_, region) in REGIONS.items():
        assert region.exercise in EXERCISES[region.assignment], name
        assert region.function in graph.uses and ANSWERS[name] == region.assignment


#: marked regions that are no region (what must go wrong, and the words that say so)
MALFORMED = [
    pytest.param("def f(x):\n    # answer of a/b\n    return x\n", "has no", id="no-end"),
    pytest.param("def f(x):\n    return x\n    # end of answer\n", "without", id="no-begin"),
    pytest.param("# answer of a/b\nX = 1\n# end of answer\n", "function", id="outside-a-function"),
    pytest.param("def f(x):\n    if x:\n        # answer of a/b\n        y = 1\n    # end of answer\n",
                 "indentation", id="markers-unaligned"),
    pytest.param("def f(x):\n    y = (1 +\n    # answer of a/b\n         2)\n    z = 3\n    # end of answer\n",
                 "whole statements", id="half-a-statement"),
    pytest.param("def f(x):\n    # answer of a/b\n    y = 1\n    # end of answer\n"
                 "    # answer of a/b\n    z = 1\n    # end of answer\n", "two answer regions", id="twice"),
]


@pytest.mark.parametrize("source, words", MALFORMED)
def test_a_malformed_answer_region_is_an_error(source, words, tmp_path):
    """Does a region marked wrongly, or one naming no exercise of course.exercises, stop the
    build with a message that names the module and the line, instead of withholding too
    little or breaking the student build?"""
    with pytest.raises(ValueError, match=words):
        handout.answer_regions(source, "dpm_core.m")
    (tmp_path / "dpm_core").mkdir()
    (tmp_path / "dpm_core" / "m.py").write_text(
        "def f(x):\n    # answer of vae_basics/no-such-solution\n    return x\n    # end of answer\n")
    with pytest.raises(ValueError, match="vae_basics/no-such-solution is not an exercise"):
        handout.answers(tmp_path)


def test_the_regions_of_dpm2_beyond_are_withheld_but_not_needed(tmp_path, monkeypatch):
    """With dpm2_beyond open, its references and its regions (NVIL's mixture estimator,
    FlowCPDNet's default coupling) are withheld: does the trace reach those regions without
    needing them, and does the notebook's reference solution, whose given code must not
    enter them, run green against that hand-out?"""
    root = tmp_path / "handout"
    result = subprocess.run([sys.executable, "-m", "course.handout", str(root), "--open", "dpm2_beyond"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    stage = handout.plan(["dpm2_beyond"])
    assert {n for n, a in ANSWERS.items() if a == "dpm2_beyond" and "#" in n} <= set(stage.withheld)
    assert len(REGIONS) >= 4
    assert "if estimator == \"mixture\":\n            raise NotImplementedError(" in \
        (root / "dpm_core" / "nvil.py").read_text()
    reference = tmp_path / "dpm2_beyond" / "dpm2_beyond.ipynb"
    reference.parent.mkdir()
    nbformat.write(handout.solution_notebook(REPO / "source" / "dpm2_beyond" / "dpm2_beyond.ipynb"), reference)
    assert _execute(reference, root, monkeypatch) == []


# ---------------------------------------------------------------------------- every week's student build
def _answer_regions() -> dict:
    """``{region name: (path in dpm_core, Region)}`` of the regions marked as answers."""
    found = {}
    for path in sorted((REPO / "dpm_core").rglob("*.py")):
        for region in handout.answer_regions(path.read_text(), handout._module_name(path, REPO / "dpm_core")):
            found[region.name] = (path.relative_to(REPO / "dpm_core").as_posix(), region)
    return found


REGIONS = _answer_regions()
#: formulas of dpm_core's docstrings that answer an exercise (with the assignment); each must
#: be in dpm_core, and in no student build before that assignment's solutions are released
FORMULAS = {
    "0.5 * (s^2 + m^2 - 1 - log s^2)": "vae_basics",                    # KL
    "tr(Sigma_p^{-1} Sigma_q) = ||M||_F^2": "vae_basics",               # KL_full
    "sigma = exp(logvar / 2)": "vae_basics",                            # reparametrise
    "``w = softmax(logits)``": "dpm2_generative",                       # MoGPriorNet
    "avg <- (1 - alpha) * avg + alpha * mean(r)": "dpm2_inference",    # CentredReward
    "``(r - b(x))^2``": "dpm2_inference",                               # Baseline
    "L = log 1/S sum_s p(x, z_s) / q(z_s|x)": "dpm2_inference",        # NVIL.DRL
    "p(x) = N(b, W W^T + sigma^2 I)": "importance_sampling",            # PPCA.marginal
    "p(z|x) = N(M^{-1} W^T (x - b), sigma^2 M^{-1})": "importance_sampling",  # exact_posterior
    "E[z z^T|x] = sigma^2 M^{-1} + E[z|x] E[z|x]^T": "importance_sampling",  # e_step
    "W = [sum_n (x_n - b) E[z_n]^T] [sum_n E[z_n z_n^T]]^{-1}": "importance_sampling",  # m_step
    "y = z * exp(s) + t": "dpm2_beyond",                                # AffineCoupling
    "It is sum_k s_k(m * z)": "dpm2_beyond",                            # its log_abs_det_jacobian
    "grad E_q[f] = E_{c ~ Cat(w), eps}[f(z) grad log w_c + grad f(g_c(eps))]": "dpm2_beyond",
    "ELBO(x) = sum_z q(z|x) [log p(x, z) - log q(z|x)]": "dpm3_discrete",  # exact_elbo
    "``(r_s - b_s) grad log q(z_s|x)``": "dpm3_discrete",               # LeaveOneOut
    "``b + (p - p.detach())``": "dpm3_discrete",                        # BernoulliStraightThrough
    "-1/B sum_b [1/S sum_s log p(x_b|z~_s) - KL(q(z|x_b) || p(z))]": "dpm3_discrete",  # relaxed loss
}
#: the exercises of course.exercises without a reference (None), and where their answer is
ANSWERED_ELSEWHERE = {
    ("dpm2_generative", "batch_shape_of"): "given: a helper of the notebook's solution cell",
    ("dpm2_inference", "closed_form_kl"): "given: a helper of the notebook's solution cell",
    ("dpm2_inference", "num_samples"): "given: a helper of the notebook's solution cell",
    ("importance_sampling", "pca"): "nowhere (the widgets' Plane.fit takes an SVD, given to weeks 1-3)",
    ("importance_sampling", "iwae_bound"): "NVIL.DRL, released with dpm2_inference's solutions",
    ("importance_sampling", "log_weights"): "NVIL.DRL, released with dpm2_inference's solutions",
    ("importance_sampling", "fit_per_datapoint"): "nowhere",
    ("dpm2_beyond", "cb_log_normaliser"): "nowhere (torch's ContinuousBernoulli, refused by the judge)",
    ("dpm2_beyond", "cb_log_prob"): "nowhere (torch's ContinuousBernoulli, refused by the judge)",
    ("dpm2_beyond", "mixture_surrogate"): "region dpm_core.nvil.NVIL.surrogate_loss#mixture-surrogate-solution",
}


@functools.cache
def _student(assignment: str) -> dict:
    return handout.student_package(assignment)


def _withheld(assignment: str) -> dict:
    """What the students of ``assignment`` may not see: the answers of it and of every
    later assignment."""
    return {n: a for n, a in ANSWERS.items() if ORDER.index(a) >= ORDER.index(assignment)}


def _node(name: str):
    """``(module path, AST node)`` of a reference's dotted path or a region's function."""
    parts = name.split("#")[0].split(".")
    for split in range(len(parts) - 1, 0, -1):
        file = REPO.joinpath(*parts[:split]).with_suffix(".py")
        if file.exists():
            break
    node = ast.parse(file.read_text())
    for part in parts[split:]:
        node = next(n for n in node.body if getattr(n, "name", None) == part)
    return file, node


def _answer_body(name: str, public: set = frozenset()) -> set:
    """The lines of a reference's body (docstring aside) or of a region (its statements and
    markers) that appear nowhere public."""
    if name not in REGIONS:  # a reference, without the regions inside it (answers of their own)
        inner = [n for n, (_, r) in REGIONS.items() if r.function.startswith(name + ".") or r.function == name]
        return _body_lines(name, public) - set().union(*(_answer_body(n) for n in inner))
    rel, region = REGIONS[name]
    lines = (REPO / "dpm_core" / rel).read_text().splitlines()[region.first - 1:region.last]  # markers too
    return _lines("\n".join(lines)) - PUBLIC - public


KEPT_SECTION = re.compile(r"(?:Args|Arguments|Returns|Yields|Raises|Shapes|Examples?):")


def _told(name: str) -> set:
    """The lines of the docstrings that a withheld answer cuts (a reference's own, with its
    methods' for a class; a region's function's) that lie outside the part the students keep:
    the first paragraph and the Args, Returns, Yields, Raises, Shapes and Example sections."""
    _, node = _node(name)
    nodes = [node] + ([n for n in node.body if isinstance(n, ast.FunctionDef)]
                      if isinstance(node, ast.ClassDef) else [])
    told = set()
    for doc in filter(None, map(ast.get_docstring, nodes)):
        lines = doc.split("\n")
        keep, start = False, next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
        for line in lines[start:]:
            if line.strip() and not line[0].isspace():
                keep = KEPT_SECTION.fullmatch(line.strip()) is not None
            if not keep and len(line.strip()) >= 12:
                told.add(line.strip())
    return told


def _text(package: dict) -> str:
    return "\n".join(package.values())


def test_the_none_entries_of_the_exercise_table_are_accounted_for():
    """Is it written down for every exercise that course.exercises maps to None where its
    answer lies (``ANSWERED_ELSEWHERE``), are the given ones really given in the release
    notebook, and the regions named there marked in dpm_core?"""
    none = {(a, name) for a, cells in EXERCISES.items() for names in cells.values()
            for name, path in names.items() if path is None}
    assert set(ANSWERED_ELSEWHERE) == none
    for (assignment, name), where in ANSWERED_ELSEWHERE.items():
        release = "\n".join(c.source for c in nbformat.read(
            REPO / "release" / assignment / f"{assignment}.ipynb", as_version=4).cells)
        if where.startswith("given"):
            body = re.split(r"\n(?=\S)", release.split(f"\ndef {name}(", 1)[1])[0]  # to the next top-level line
            assert "raise NotImplementedError()" not in body, (assignment, name)
        elif where.startswith("region "):
            assert where.split()[1] in REGIONS


@pytest.mark.parametrize("assignment", ORDER)
def test_no_withheld_body_or_region_in_the_student_build(assignment):
    """While ``assignment`` is open, is no line of the body of a withheld reference or of a
    withheld answer region in the student dpm_core, no region's marker either, but the raise
    that names its exercise; and are the bodies and regions of released assignments back?"""
    package, withheld = _student(assignment), _withheld(assignment)
    present = _lines(_text(package))
    released = set().union(*(_answer_body(n) for n in ANSWERS if n not in withheld))
    secrets = {n: _answer_body(n, released) for n in withheld}
    assert all(secrets[n] for n in REGIONS if n in withheld)
    assert sum(map(len, secrets.values())) > 20
    assert [f"{n}: {line}" for n, lines in secrets.items() for line in sorted(lines & present)] == []
    withheld_lines = set().union(*(_answer_body(n) for n in withheld))  # a region in a released body
    for name in ANSWERS:
        if name not in withheld:
            assert _answer_body(name) - withheld_lines <= present, name
    regions = [(rel, r) for n, (rel, r) in REGIONS.items() if n in withheld]
    later = ORDER[ORDER.index(assignment):]
    assert bool(regions) == any(r.assignment in later for _, r in REGIONS.values()), \
        "the regions of the open and later weeks are withheld, and only those"
    for rel, region in REGIONS.values():
        marker = f"# answer of {region.assignment}/{region.exercise}"
        assert (marker in package[rel]) == (region.name not in withheld), region.name
    for rel, region in regions:  # a region of a withheld function goes with its body
        if any(region.function == n or region.function.startswith(n + ".") for n in withheld):
            continue
        assert handout.REGION_MESSAGE.format(path=region.function, where=region.where, assignment=
                                             region.assignment, exercise=region.exercise) in package[rel]


@pytest.mark.parametrize("assignment", ORDER)
def test_no_withheld_docstring_beyond_its_kept_part_in_the_student_build(assignment):
    """While ``assignment`` is open, does the student dpm_core keep of the docstring of every
    withheld reference, and of every function that holds a withheld region, only the first
    paragraph and the Args/Returns/Yields/Raises/Shapes/Example sections (no formula or
    derivation of the answer, anywhere in the build), while released docstrings are whole?"""
    package, withheld = _student(assignment), _withheld(assignment)
    text = _text(package)
    present = {line.strip() for line in text.splitlines()}
    told = {n: _told(n) for n in withheld}
    assert sum(map(len, told.values())) >= 3
    assert [f"{n}: {line}" for n, lines in told.items() for line in sorted(lines & present)] == []
    withheld_lines = set().union(*told.values())  # a region's function in a released class
    for name in ANSWERS:
        if name not in withheld:
            assert _told(name) - withheld_lines <= present, name
    full = "\n".join(p.read_text() for p in (REPO / "dpm_core").rglob("*.py"))
    for formula, owner in FORMULAS.items():
        assert formula in full, formula
        assert (formula in text) == (ORDER.index(owner) < ORDER.index(assignment)), (formula, owner)


def _skeleton(source: str, module: str, withheld: dict) -> str:
    """A module as an AST dump, the bodies (docstrings included) of the functions that the
    build may change blanked: withheld references, methods of withheld classes, functions
    that hold a withheld region; and a withheld class's docstring."""
    tree = ast.parse(source)
    cut = {r.function for n, (_, r) in REGIONS.items() if n in withheld}
    for stmt in tree.body:
        path = f"{module}.{getattr(stmt, 'name', '')}"
        if isinstance(stmt, ast.FunctionDef) and (path in withheld or path in cut):
            stmt.body = [ast.Pass()]
        elif isinstance(stmt, ast.ClassDef):
            if path in withheld and ast.get_docstring(stmt) is not None:
                stmt.body[0] = ast.Pass()
            for fn in (s for s in stmt.body if isinstance(s, ast.FunctionDef)):
                if path in withheld or f"{path}.{fn.name}" in withheld or f"{path}.{fn.name}" in cut:
                    fn.body = [ast.Pass()]
    return ast.dump(tree)


@pytest.mark.parametrize("assignment", ORDER)
def test_the_student_build_changes_nothing_else(assignment):
    """Has the student dpm_core of ``assignment`` the same files, module docstrings, imports,
    public names, signatures, decorators, class attributes and code as dpm_core, but for
    the bodies and docstrings of what it withholds?"""
    package, withheld = _student(assignment), _withheld(assignment)
    originals = {p.relative_to(REPO / "dpm_core").as_posix(): p for p in (REPO / "dpm_core").rglob("*.py")}
    assert set(package) == set(originals)
    changed = 0
    for rel, path in originals.items():
        module = handout._module_name(path, REPO / "dpm_core")
        assert _skeleton(package[rel], module, withheld) == _skeleton(path.read_text(), module, withheld), rel
        changed += package[rel] != path.read_text()
    assert changed >= 2


BEHAVIOUR = r"""
import json, torch, torch.distributions as td
from functools import partial
from dpm_core import (NVIL, BinarizedImageModel, FlowCPDNet, GaussianPriorNet, InferenceModel,
                      JointDistribution, MoGCPDNet)

def outcome(call):
    try:
        value = call()
    except NotImplementedError as error:
        return str(error)
    return "ran" if bool(torch.isfinite(value).all()) else "not finite"

def nvil(**kwargs):
    torch.manual_seed(0)
    q = InferenceModel(partial(MoGCPDNet, num_components=2), 2, width=4, height=4, hidden_size=8)
    return NVIL(JointDistribution(GaussianPriorNet(2), BinarizedImageModel(1, 4, 4, 2)), q, **kwargs)

x = torch.zeros(3, 1, 4, 4)
same = lambda mask, shift_log_scale: td.transforms.identity_transform  # a coupling of one's own
print(json.dumps({
    "NVIL(estimator='mixture')": outcome(lambda: nvil(estimator="mixture")(x, sample_size=2)["loss"]),
    "surrogate_loss(estimator='mixture')": outcome(lambda: nvil().surrogate_loss(x, 2, estimator="mixture")[0]),
    "surrogate_loss(estimator='sfe')": outcome(lambda: nvil().surrogate_loss(x, 2, estimator="sfe")[0]),
    "FlowCPDNet()": outcome(lambda: FlowCPDNet(2, num_inputs=3)(torch.zeros(4, 3)).rsample()),
    "FlowCPDNet(coupling=...)": outcome(lambda: FlowCPDNet(2, num_inputs=3, coupling=same)(torch.zeros(4, 3)).rsample()),
}))
"""


@pytest.mark.parametrize("released", [False, True], ids=["open", "released"])
def test_the_branches_of_dpm2_beyond_raise_until_released(released, tmp_path):
    """In the student dpm_core while dpm2_beyond is open, do NVIL's mixture estimator (chosen
    at construction or per call) and FlowCPDNet without a coupling raise the withheld message
    that names the exercise, while the score-function estimator and FlowCPDNet with a
    coupling of one's own work; and does all of it work once dpm2_beyond is released?"""
    if released:
        stage = handout.plan([], ORDER)
        assert stage.withheld == {}
        package = {p.relative_to(REPO / "dpm_core").as_posix(): handout.withhold_source(
            p.read_text(), handout._module_name(p, REPO / "dpm_core"), stage.withheld)
            for p in (REPO / "dpm_core").rglob("*.py")}
    else:
        package = _student("dpm2_beyond")
    for rel, text in package.items():
        (tmp_path / "dpm_core" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dpm_core" / rel).write_text(text)
    result = subprocess.run([sys.executable, "-c", BEHAVIOUR], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    raising = {"NVIL(estimator='mixture')": "mixture-rsample-solution",
               "surrogate_loss(estimator='mixture')": "mixture-rsample-solution",
               "FlowCPDNet()": "coupling-solution"}
    for call, outcome in outcomes.items():
        if released or call not in raising:
            assert outcome == "ran", (call, outcome)
        else:
            assert f"{WITHHELD_WORDS} dpm2_beyond ({raising[call]})" in outcome, (call, outcome)


#: given code, and the withheld regions of dpm2_beyond that the trace finds it needs
TRACES = [
    pytest.param("NVIL(joint, q, estimator='mixture')(x)", {"rsample", "surrogate"}, id="estimator-keyword"),
    pytest.param("NVIL(joint, q)(x)", set(), id="default-estimator"),
    pytest.param("NVIL(joint, q).surrogate_loss(x, 1, 1.0, 'mixture')", {"rsample", "surrogate"},
                 id="estimator-positional"),
    pytest.param("for e in ['sfe', 'mixture']:\n    NVIL(joint, q)(x, estimator=e)", {"rsample", "surrogate"},
                 id="estimator-loop"),
    pytest.param("for e in ['sfe', 'auto']:\n    NVIL(joint, q)(x, estimator=e)", set(), id="other-estimators"),
    pytest.param("class Mine(NVIL):\n    def surrogate_loss(self, x, estimator=None):\n"
                 "        return super().surrogate_loss(x, estimator=estimator)\n"
                 "Mine(joint, q)(x, estimator='mixture')", {"rsample", "surrogate"}, id="super-call"),
    pytest.param("class Mine(NVIL):\n    def surrogate_loss(self, x, estimator=None):\n        return 0.0\n"
                 "Mine(joint, q)(x, estimator='mixture')", set(), id="overridden"),
    pytest.param("FlowCPDNet(2, num_inputs=3)", {"coupling"}, id="no-coupling"),
    pytest.param("FlowCPDNet(2, num_inputs=3, coupling=None)", {"coupling"}, id="coupling-none"),
    pytest.param("FlowCPDNet(2, num_inputs=3, coupling=mine)", set(), id="coupling-keyword"),
    pytest.param("FlowCPDNet(2, 3, None, 0.0, 4, 64, 2.0, mine)", set(), id="coupling-positional"),
    pytest.param("InferenceModel(partial(FlowCPDNet, num_layers=2), 2)", {"coupling"}, id="class-passed-on"),
]
_graph = functools.cache(lambda: handout._graph(REPO / "dpm_core"))
REGION_OF = {"rsample": "dpm_core.nvil.NVIL.surrogate_loss#mixture-rsample-solution",
             "surrogate": "dpm_core.nvil.NVIL.surrogate_loss#mixture-surrogate-solution",
             "coupling": "dpm_core.flows.FlowCPDNet.__init__#coupling-solution"}


@pytest.mark.parametrize("code, needed", TRACES)
def test_the_trace_needs_a_withheld_region_only_where_given_code_enters_it(code, needed):
    """Does the trace of given code (``handout.needs``) count a withheld region as needed
    where the code gives the parameter that guards it a value that enters it, and not where
    it only calls the function that holds it; and is a call inside the region (NVIL's of
    ``_mixture_rsample``, FlowCPDNet's default ``AffineCoupling``) no conflict?"""
    graph = _graph()
    source = ("from functools import partial\nfrom dpm_core import NVIL, FlowCPDNet, InferenceModel\n"
              + code)
    found = handout.needs([("given", source)], set(), _withheld("dpm2_beyond"), graph)
    assert set(found) == {REGION_OF[n] for n in needed}
    assert all(chain[0] == "cell given" and chain[-1] == name for name, chain in found.items())
