"""The class grader (course.grade) on a simulated class of honest and hostile students.

One module-scoped course (``vae_basics`` only, the quickest notebook to grade, judged outside
the kernel) gets 41 students, graded in one run through a LocalCluster of 2 workers with the
kernels in bubblewrap: the reference solution, the untouched release, a partial answer, and
hostile submissions (file vandalism aimed at the gradebook, ``source/``, another student and
the installed package; signals to the grader; a network probe; a lingering background
process; a memory bomb; an infinite loop, and one that ignores interrupts; a 50 MB print;
``os._exit``; a ``dpm_core/`` package handed in next to the notebook; a notebook with a
copy-pasted test cell; links planted in the kernel's folder towards ``source/``, another
student and the judges; a disk fill; a fork storm; a 300 MB message; edited grading
metadata; a truncated, an
nbformat 3, a misnamed and a missing notebook) and the in-kernel cheats of :func:`_cheats`
(outputs forged in the JSON, test cells deleted, stripped or turned into markdown, wrong
answers that pass the visible self-checks or return NumPy, NaN, inf, float64 or meta tensors,
dpm_core's reference handed in, reached through library code or an instance, helpers rebound
while graded, and ways of rewriting what the grader meets in the kernel: input and AST
transformers, exception handlers, torch functions and builtins, a torch function mode, a
tensor subclass, a package put on sys.path, frames and gc, the probe replaced, forged or
deleted). Honest students must get exactly what serial nbgrader gives them; each hostile one
is contained and gets exactly the points of the work it really did on the judge's fresh
inputs; the batch completes.

The limits are small so that the run stays short: 1.5 GiB of memory, 20 s per cell, 256 MiB
of disk per tmpfs and 64 tasks.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent

from course import pipeline  # noqa: E402
from course.grade import _parse_bytes, format_summary, grade_class, read_submission, scores  # noqa: E402
from course.sandbox import SandboxUnavailable, Sandbox  # noqa: E402
from course.submission import GRADING_NOTE, Limits  # noqa: E402
from sandboxing import needs_sandbox, sandbox_reason  # noqa: E402

ASSIGNMENT = next(a for a in pipeline.load_assignments() if a["name"] == "vae_basics")
LIMITS = Limits(memory=int(1.5 * 2 ** 30), cell_timeout=20, notebook_timeout=150,
                submission_timeout=400, disk=256 * 2 ** 20, processes=64)
MARKER = "dpm-lingering-process-7c1e"


def _tree_digest(folder: Path) -> str:
    """A digest of every file's path and content under folder (bytecode caches aside: the
    grader's own imports may write them)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _source_nb():
    return nbformat.read(REPO / "source" / "vae_basics" / "vae_basics.ipynb", 4)


def _insert_after(nb, grade_id: str, code: str):
    """The notebook with a new (student-added) code cell after the cell ``grade_id``."""
    index = next(i for i, c in enumerate(nb.cells)
                 if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(code))
    return nb


def _vandal_code(root: Path) -> str:
    """Every trick of the file vandal, each attempt wrapped so that the notebook goes on."""
    gradebook = root / "course" / "gradebook.db"
    targets = {
        "gradebook": str(gradebook),
        "source": str(root / "source" / "vae_basics" / "vae_basics.ipynb"),
        "other": str(root / "course" / "submitted" / "reference-solution" / "vae_basics"
                     / "vae_basics.ipynb"),
        "package": str(REPO / "dpm_core" / "__init__.py"),
    }
    return f"""
import os, signal, sqlite3
_t = {json.dumps(targets)}
for _try in [
    lambda: os.remove(_t["gradebook"]),
    lambda: sqlite3.connect(_t["gradebook"]).execute("UPDATE grade SET manual_score = 10"),
    lambda: open(_t["source"], "a").write("vandalised"),
    lambda: open(_t["source"]).read(),
    lambda: open(_t["other"], "w").write("{{}}"),
    lambda: open(_t["package"], "a").write("raise SystemExit"),
    lambda: open(os.path.dirname(_t["gradebook"]) + "/vandal-was-here", "w").write("x"),
    lambda: os.kill(os.getppid(), signal.SIGSTOP),
    lambda: os.kill(os.getppid(), signal.SIGKILL),
]:
    try:
        _try()
    except BaseException:
        pass
"""


def _release_nb():
    return nbformat.read(REPO / "release" / "vae_basics" / "vae_basics.ipynb", 4)


def _with_solution(nb, grade_id: str, body: str):
    """The notebook with the code of solution cell ``grade_id`` replaced by ``body``."""
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    cell.source = body
    return nb


def _answered_release(kl: str | None = None):
    """The release with the reference's answers typed in, and ``kl`` (if given) as the KL
    cell: what a student hands in (no hidden tests in it)."""
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in _source_nb().cells
               if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}
    nb = _release_nb()
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers and cell.cell_type == "code":
            cell.source = kl if grade_id == "kl-solution" and kl is not None else answers[grade_id]
    return nb


def _test_cells(nb, prefix: str) -> list:
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id", "")
            .startswith(prefix) and c.metadata.get("nbgrader", {}).get("grade")
            and c.cell_type == "code"]


#: a KL whose formula has the sign flipped: its formula cell (2 points) fails, its reduction
#: cell (1 point: the sum of its own per-coordinate values) and the rest pass
_WRONG_KL = "def KL(mu, logvar):\n    return -0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)\n"
#: how a cheat reaches IPython's shell without a name that the static scan looks for
_SHELL = "_sh = torch.sys.modules['IPython'].get_ipython()\n"
#: an input transformer that turns every later cell into `pass`, so that test cells "pass"
_TO_PASS = "def _neuter(lines):\n    return ['pass\\n']\n"


def _cheats() -> dict:
    """{student: (files, expected autograded points, status, words of the reason)} of the
    hostile class's in-kernel cheats. The verdicts are reached outside the kernel, so nothing
    done in it can earn a point: each gets exactly the points of the work really done on the
    judge's fresh inputs (0 for the release-based ones, 11 for a wrong KL formula), whatever
    it rewrote in the kernel, the probe included."""
    def added(code, nb=None):
        return {"vae_basics.ipynb": _insert_after(nb or _release_nb(), "setup", code)}

    forged = _release_nb()
    for cell in _test_cells(forged, ""):
        cell.execution_count = 7
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="Tests passed.\n"),
                        nbformat.v4.new_output("execute_result", data={"text/plain": "3"},
                                               execution_count=7)]
    deleted = _answered_release(_WRONG_KL)
    for cell in _test_cells(deleted, "kl-"):
        deleted.cells.remove(cell)
    stripped = _answered_release(_WRONG_KL)
    for cell in _test_cells(stripped, "kl-"):
        del cell.metadata["nbgrader"]
    retyped = _answered_release(_WRONG_KL)
    for cell in _test_cells(retyped, "kl-"):
        retyped.cells[retyped.cells.index(cell)] = nbformat.v4.new_markdown_cell(
            cell.source, metadata=cell.metadata)
    wrong_1 = _with_solution(_with_solution(_with_solution(
        _answered_release(""), "kl-solution",  # right on the two values the self-checks try, wrong elsewhere
        "def KL(mu, logvar):\n    return 0.5 * mu.pow(2).sum(-1) * (logvar == 0).all()\n"),
        "reparametrise-solution",
        "import numpy as np\ndef reparametrise(mu, logvar):\n"
        "    return np.asarray(mu.detach()) + np.random.randn(*mu.shape)\n"),
        "loss-solution", "def loss_func(recon_x, x, mu, logvar):\n"
                         "    return torch.tensor(float('nan'))\n")
    wrong_2 = _with_solution(_with_solution(_with_solution(
        _answered_release(""), "kl-solution",
        "def KL(mu, logvar):\n    return torch.full(mu.shape[:-1], float('inf'))\n"),
        "reparametrise-solution",
        "def reparametrise(mu, logvar):\n    return (mu + torch.randn(mu.shape, "
        "dtype=torch.float64) * torch.exp(0.5 * logvar)).to('meta')\n"),
        "loss-solution", "def loss_func(recon_x, x, mu, logvar):\n"
                         "    return torch.zeros((), dtype=torch.float64)\n")
    reference = _with_solution(_with_solution(_with_solution(
        _release_nb(), "kl-solution", "from dpm_core.kl import KL\n"),
        "reparametrise-solution", "import dpm_core\ndef reparametrise(mu, logvar):\n"
                                  "    return dpm_core.reparametrise(mu, logvar)\n"),
        "loss-solution", "from dpm_core import vae as _v\nloss_func = _v.loss_func\n")
    # the reference reached through library code (loss_func computes the KL inside) and through
    # an instance of a given class (VAE.reparametrise draws with the reference)
    indirect = _with_solution(_with_solution(
        _answered_release(""), "kl-solution",
        "import dpm_core.vae as _lib\ndef KL(mu, logvar):\n"
        "    ones = torch.full((mu.shape[0], 1), 0.5)\n"
        "    nll = torch.nn.functional.binary_cross_entropy(ones, ones, reduction='none').sum(-1)\n"
        "    return torch.stack([_lib.loss_func(ones[i:i + 1], ones[i:i + 1], mu[i:i + 1], "
        "logvar[i:i + 1]) - nll[i] for i in range(mu.shape[0])])\n"),
        "reparametrise-solution",
        "_inner = VAE(z_dim=2)\ndef reparametrise(mu, logvar):\n"
        "    return _inner.reparametrise(mu, logvar)\n")
    # a wrong KL that rebinds the grader's old helpers while it is being graded: a global
    # statement, a timer and a thread that only calls library functions
    rebinding = _with_solution(
        _answered_release(""), "kl-solution",
        "import threading\n" + _WRONG_KL.replace(
            "def KL(mu, logvar):\n",
            "def KL(mu, logvar):\n"
            "    global expect, expect_close, KL_ref, run_judge\n"
            "    expect = expect_close = run_judge = lambda *a, **k: None\n"
            "    KL_ref = lambda *a: -0.5 * (a[1].exp() + a[0].pow(2) - 1.0 - a[1]).sum(-1)\n"
            "    threading.Timer(0.01, lambda: globals().update(expect=None)).start()\n"
            "    threading.Thread(target=setattr, args=(torch, 'allclose', "
            "lambda *a, **k: True)).start()\n"))
    return {
        "forged-outputs": ({"vae_basics.ipynb": forged}, 0, "graded", ()),
        "deleted-test-cells": ({"vae_basics.ipynb": deleted}, 11, "graded", ()),
        "stripped-test-metadata": ({"vae_basics.ipynb": stripped}, 11, "graded", ()),
        "test-cells-as-markdown": ({"vae_basics.ipynb": retyped}, 11, "graded", ()),
        "wrong-answers-self-checks-numpy-nan": ({"vae_basics.ipynb": wrong_1}, 3, "graded", ()),
        "wrong-answers-inf-meta-float64": ({"vae_basics.ipynb": wrong_2}, 3, "graded", ()),
        "reference-imported": ({"vae_basics.ipynb": reference}, 0, "graded", ()),
        "reference-through-library-and-instance": ({"vae_basics.ipynb": indirect}, 6, "graded",
                                                   ()),
        "helpers-rebound-while-graded": ({"vae_basics.ipynb": rebinding}, 11, "graded", ()),
        "input-transformer": (added(
            _TO_PASS + "get_ipython().input_transformers_cleanup.append(_neuter)\n"), 0, "graded",
            ()),
        "ast-transformer": (added(_SHELL + """import ast
class _Neuter(ast.NodeTransformer):
    def visit_Module(self, node):
        node.body = [ast.Pass()]
        return node
getattr(_sh, 'ast_' + 'transformers').append(_Neuter())
"""), 0, "graded", ()),
        "custom-exception-handler": (added(
            _SHELL + "getattr(_sh, 'set_custom_' + 'exc')((Exception,), lambda *a, **k: None)\n"),
            0, "graded", ()),
        "allclose-and-builtins-replaced": (added(
            "_t = torch\n_t.allclose = lambda *a, **k: True\n"
            "_b = torch.sys.modules['builtins']\n_b.round = lambda *a, **k: 0\n"), 0, "graded",
            ()),
        "torch-function-mode": (added("""_o = getattr(torch, 'overr' + 'ides')
_M = type('_M', (_o.TorchFunctionMode,), {'__torch_' + 'function__':
          lambda self, f, types, args=(), kwargs=None: f(*args, **(kwargs or {}))})
_M().__enter__()
"""), 0, "graded", ()),
        "tensor-subclass": (added("""class _Liar(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return True
def KL(mu, logvar):
    return torch.zeros(mu.shape[:-1]).as_subclass(_Liar)
"""), 0, "graded", ()),
        # a stand-in for everything the grader looks up in the kernel: the probe's module and
        # functions, `globals` and `__import__`, and a forged reply under the request's nonce
        "probe-replaced": (added("""import sys, types, base64, json
import dpm_probe.runtime as _real
from IPython.display import publish_display_data
def _forge(request, nonce, ns):
    # echo the request back as the reply, under its nonce: plain data the judge must refuse
    publish_display_data({_real.MIME: {"nonce": nonce, "reply": request}})
_fake = types.ModuleType("dpm_probe.runtime")
_fake.serve, _fake.MIME = _forge, _real.MIME
sys.modules["dpm_probe.runtime"] = _fake
_real.serve = _real.execute = _forge
"""), 0, "graded", ()),
        "probe-deleted": (added("""import sys, builtins
for _k in [k for k in sys.modules if k.startswith('dpm_probe')]:
    del sys.modules[_k]
sys.path.insert(0, '.')
import os
os.makedirs('dpm_probe', exist_ok=True)
open('dpm_probe/__init__.py', 'w').write('raise SystemExit')
_imp = builtins.__import__
builtins.__import__ = lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name)) \
    if name.startswith('dpm_probe') else _imp(name, *a, **k)
"""), 0, "graded", ()),
        "package-on-sys-path": ({**added(
            "import sys\nsys.path.insert(0, '.')\n"
            "for _k in [k for k in sys.modules if k.startswith('dpm_core')]:\n"
            "    del sys.modules[_k]\n"),
            "dpm_core/__init__.py": b"", "dpm_core/grading.py":
            b"def expect(*a, **k):\n    pass\nexpect_close = expect_shape = expect\n"},
            0, "graded", ()),
        "frame-and-gc-walk": (added(
            "_frame = getattr(torch.sys, '_get' + 'frame')(0)\n"
            "_objects = getattr(torch.sys.modules['gc'], 'get_' + 'objects')()\n"), 0, "graded",
            ()),
    }


def _links_code(root: Path) -> str:
    """A kernel that plants links in its working folder, towards source/, another student's
    notebook and the grader's code, hoping that the grader writes through them."""
    targets = [root / "source" / "vae_basics" / "vae_basics.ipynb",
               root / "course" / "submitted" / "reference-solution" / "vae_basics"
               / "vae_basics.ipynb",
               REPO / "course" / "judges" / "_common.py"]
    return f"""
import os
_targets = {json.dumps([str(t) for t in targets])}
for _name in os.listdir('.'):
    try:
        os.remove(_name)
    except OSError:
        pass
for _i, _t in enumerate(_targets):
    for _name in (['vae_basics.ipynb'] if _i == 0 else []) + [f'link{{_i}}', f'link{{_i}}.ipynb']:
        try:
            os.symlink(_t, _name)
        except OSError:
            pass
os.makedirs('sub', exist_ok=True)
"""


#: fills the disk from the kernel until the tmpfs is full (it stops by itself at 4 GiB)
_DISK_FILL = """
import os
_block = b'x' * 2 ** 20
for _where in ('.', '/tmp', '/dev/shm'):
    try:
        with open(os.path.join(_where, 'fill'), 'wb') as _f:
            for _ in range(4096):
                _f.write(_block)
    except OSError as _err:
        print(_where, 'full:', _err.strerror)
    try:
        os.remove(os.path.join(_where, 'fill'))
    except OSError:
        pass
"""

#: forks until it cannot, every child holding memory (it stops by itself after 5 s)
_FORK_STORM = """
import os, time
_children, _deadline = [], time.time() + 5
while time.time() < _deadline and len(_children) < 4096:
    try:
        _pid = os.fork()
    except OSError:
        break
    if _pid == 0:
        _hold = bytearray(32 * 2 ** 20)
        time.sleep(5)
        os._exit(0)
    _children.append(_pid)
print('forked', len(_children))
for _pid in _children:
    try:
        os.waitpid(_pid, 0)
    except OSError:
        pass
"""


#: a judge timing that a submission claims in its metadata: the grader writes its own
FORGED_TIMING = "1999-01-01T00:00:00.000000Z"


def _edited_metadata():
    """The reference solution with its grading metadata edited: a test cell worth 20 points,
    another no longer graded, a solution cell unlocked into a test cell, and judge timings
    forged on the test cells."""
    nb = _source_nb()
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution"):
            cell.metadata["execution"] = {"judge.started": FORGED_TIMING,
                                          "judge.finished": FORGED_TIMING,
                                          "iopub.status.busy": FORGED_TIMING}
        if meta.get("grade_id") == "kl-formula-tests":
            meta["points"] = 20
        elif meta.get("grade_id") == "loss-batch-tests":
            meta["grade"] = False
    return nb


def _submissions(root: Path, port: int) -> dict:
    """{student: {file name: bytes or notebook}} of the simulated class."""
    mistake = json.loads((REPO / "tests" / "course_mistakes" / "vae_basics.json").read_text())
    partial = _source_nb()
    for cell in partial.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == mistake["cell"]:
            cell.source = cell.source.replace(*mistake["replace"])
    duplicated = _answered_release()
    test_cell = next(c for c in duplicated.cells
                     if c.metadata.get("nbgrader", {}).get("grade_id") == "kl-formula-tests")
    duplicated.cells.insert(duplicated.cells.index(test_cell) + 1, nbformat.from_dict(
        json.loads(json.dumps(test_cell))))  # copy-pasted, same grade id
    text = nbformat.writes(_source_nb())
    nbformat3 = nbformat.writes(nbformat.convert(_source_nb(), 3), version=3)  # the old format
    return {
        "reference-solution": {"vae_basics.ipynb": _source_nb()},
        "untouched-release": {"vae_basics.ipynb": nbformat.read(
            REPO / "release" / "vae_basics" / "vae_basics.ipynb", 4)},
        "partial-answer": {"vae_basics.ipynb": partial},
        "file-vandal": {"vae_basics.ipynb": _insert_after(_source_nb(), "setup", _vandal_code(root))},
        "network-probe": {"vae_basics.ipynb": _insert_after(_source_nb(), "setup", f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"leak")
except OSError as err:
    print("no network:", err)
""")},
        "lingering-process": {"vae_basics.ipynb": _insert_after(_source_nb(), "setup", f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.2)  # {MARKER}"],
                 start_new_session=True)
""")},
        "memory-bomb": {"vae_basics.ipynb": _insert_after(_source_nb(), "kl-reduction-tests", """
import numpy as np
_hog = []
while len(_hog) < 24:  # stops by itself at 6 GiB
    _hog.append(np.ones(2 ** 28, dtype=np.uint8))
""")},
        "infinite-loop": {"vae_basics.ipynb": _insert_after(_source_nb(), "kl-reduction-tests", """
import time
while True:
    try:
        time.sleep(0.1)
    except KeyboardInterrupt:
        pass  # ignores the grader's interrupt
""")},
        "interruptible-loop": {"vae_basics.ipynb": _insert_after(_source_nb(), "kl-reduction-tests",
                                                                 "while True:\n    pass")},
        "huge-print": {"vae_basics.ipynb": _insert_after(_source_nb(), "setup",
                                                         "print('x' * 50_000_000)")},
        "os-exit": {"vae_basics.ipynb": _insert_after(_source_nb(), "kl-reduction-tests",
                                                      "import os\nos._exit(3)")},
        "duplicated-cell": {"vae_basics.ipynb": duplicated},
        "truncated-notebook": {"vae_basics.ipynb": text[: len(text) // 2].encode()},
        "nbformat-3": {"vae_basics.ipynb": nbformat3.encode()},
        "edited-metadata": {"vae_basics.ipynb": _edited_metadata()},
        "links-planted": {"vae_basics.ipynb": _insert_after(_source_nb(), "setup",
                                                            _links_code(root))},
        "disk-fill": {"vae_basics.ipynb": _insert_after(_source_nb(), "kl-reduction-tests",
                                                        _DISK_FILL)},
        "fork-storm": {"vae_basics.ipynb": _insert_after(_source_nb(), "kl-reduction-tests",
                                                         _FORK_STORM)},
        "huge-message": {"vae_basics.ipynb": _insert_after(
            _source_nb(), "kl-reduction-tests",
            "import sys\nsys.stdout.write('x' * 300_000_000)\nsys.stdout.flush()")},
        "misnamed-notebook": {"my_answers.ipynb": _source_nb()},
        "fake-package": {"vae_basics.ipynb": _source_nb(),
                         "dpm_core/__init__.py": b"raise ImportError('the fake dpm_core was imported')\n"},
        "no-notebook": {"README.txt": b"I forgot to attach it."},
        **{student: files for student, (files, *_) in _cheats().items()},
    }


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """The simulated class graded in one run; the course folder and what it observed."""
    if sandbox_reason() is not None:
        pytest.skip(f"no sandbox here: {sandbox_reason()}")
    root = tmp_path_factory.mktemp("class")
    shutil.copytree(REPO / "source" / "vae_basics", root / "source" / "vae_basics")
    (root / "course").mkdir()
    pipeline.generate_release(root, [ASSIGNMENT])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.1)
    for student, files in _submissions(root, listener.getsockname()[1]).items():
        folder = root / "course" / "submitted" / student / "vae_basics"
        folder.mkdir(parents=True)
        for name, content in files.items():
            data = content if isinstance(content, bytes) else nbformat.writes(content).encode()
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    before = {"source": _tree_digest(root / "source"),
              "reference": _tree_digest(root / "course" / "submitted" / "reference-solution"),
              "package": _tree_digest(REPO / "dpm_core"),
              "judges": _tree_digest(REPO / "course" / "judges")}
    free = shutil.disk_usage(tempfile.gettempdir()).free
    try:
        results = grade_class(root, [ASSIGNMENT], limits=LIMITS, workers=2, progress=False)
        connections = []
        try:
            while True:
                connections.append(listener.accept())
        except OSError:
            pass
    finally:
        listener.close()
    print("\n" + format_summary(results, [ASSIGNMENT]))
    return {"root": root, "results": {r.student: r for r in results}, "before": before,
            "connections": connections,
            "disk_drop": free - shutil.disk_usage(tempfile.gettempdir()).free}


def _gradebook_scores(root: Path, student: str) -> dict:
    """{grade_id: (score, max_score)} of the code cells, as nbgrader's gradebook has them."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'course' / 'gradebook.db'}") as gb:
        sub = gb.find_submission("vae_basics", student)
        return {g.name: (g.score, g.max_score) for nb in sub.notebooks for g in nb.grades
                if g.cell.cell_type == "code"}


@needs_sandbox
def test_every_student_is_graded_and_recorded(graded_class):
    """Does the batch complete, with every student in the gradebook and no code cell left
    "needs autograding" (a score of None)?"""
    results = graded_class["results"]
    assert len(results) == 22 + len(_cheats())
    for student in results:
        grades = _gradebook_scores(graded_class["root"], student)
        assert grades and all(score is not None for score, _ in grades.values()), (student, grades)


@needs_sandbox
def test_the_class_was_graded_by_warm_kernels(graded_class):
    """Was every kernel of the hostile class forked from its worker's warm server (so that
    the tests below hold for warm kernels), none started cold for want of one?"""
    for student, result in graded_class["results"].items():
        for said in ("starting a cold kernel", "every kernel starts cold"):
            assert said not in result.log, (student, result.log[-2000:])


@needs_sandbox
def test_honest_students_get_what_serial_nbgrader_gives(graded_class, tmp_path):
    """Do the reference, the release and a partial answer get exactly the per-cell scores of
    plain serial nbgrader on the same notebooks?"""
    root = graded_class["root"]
    serial = tmp_path / "serial"
    shutil.copytree(root / "source", serial / "source")
    (serial / "course").mkdir()
    pipeline.generate_release(serial, [ASSIGNMENT])
    for student in ("reference-solution", "untouched-release", "partial-answer"):
        shutil.copytree(root / "course" / "submitted" / student,
                        serial / "course" / "submitted" / student)
        pipeline.nbgrader(["autograde", "vae_basics", "--student", student, "--force"], serial)
        assert _gradebook_scores(root, student) == _gradebook_scores(serial, student), student
    got = {s: scores(graded_class["results"][s]) for s in
           ("reference-solution", "untouched-release", "partial-answer")}
    assert got["reference-solution"][0] == got["reference-solution"][1] > 0
    assert got["untouched-release"][0] == 0
    assert 0 < got["partial-answer"][0] < got["partial-answer"][1]


@needs_sandbox
def test_grading_skips_the_self_checks_draws_no_figure_and_times_the_judges(graded_class):
    """In the reference's autograded notebook: do the self-check cells have no output (they are
    not run), does no output hold a drawn figure (image/png), and does every judged test cell
    carry when its judge started and finished (the grader's times, not ones a submission
    forged)?"""
    nb = nbformat.reads(graded_class["results"]["reference-solution"].notebooks["vae_basics"]
                        .decode(), as_version=4)
    meta = [(c, c.metadata.get("nbgrader", {})) for c in nb.cells if c.cell_type == "code"]
    self_checks = [c for c, m in meta if m.get("grade_id", "").endswith("-tests-self-checks")]
    assert len(self_checks) >= 8 and all(not c.outputs for c in self_checks)
    assert not [o for c, _ in meta for o in c.outputs if "image/png" in o.get("data", {})]
    assert any("Figure size" in o.get("data", {}).get("text/plain", "")
               for c, _ in meta for o in c.outputs)  # the figures were made, not drawn
    judged = [c for c, m in meta if m.get("grade") and not m.get("solution")]
    assert len(judged) >= 8
    for cell in judged:
        timing = cell.metadata["execution"]
        assert timing["judge.started"] <= timing["judge.finished"], cell.metadata.nbgrader
    # timings that a submission forged are replaced by the grader's
    forged = nbformat.reads(graded_class["results"]["edited-metadata"].notebooks["vae_basics"]
                            .decode(), as_version=4)
    timings = [c.metadata["execution"] for c in forged.cells
               if c.metadata.get("nbgrader", {}).get("grade")
               and not c.metadata["nbgrader"].get("solution")]
    assert len(timings) >= 7
    assert all(set(t) == {"judge.started", "judge.finished"} and FORGED_TIMING not in t.values()
               for t in timings), timings


@needs_sandbox
def test_the_vandal_changes_nothing_outside_its_scratch_folder(graded_class):
    """Do deleting and rewriting the gradebook, writing into source/, another student's
    folder and the installed package, and signalling the grader all fail, while the
    vandal's correct answers still earn their points?"""
    root, before = graded_class["root"], graded_class["before"]
    assert _tree_digest(root / "source") == before["source"]
    assert _tree_digest(root / "course" / "submitted" / "reference-solution") == before["reference"]
    assert _tree_digest(REPO / "dpm_core") == before["package"]
    assert not (root / "course" / "vandal-was-here").exists()
    result = graded_class["results"]["file-vandal"]  # its answers are right, on fresh inputs
    assert result.status == "graded", result.reason_text()
    assert scores(result)[0] == scores(result)[1] > 0


@needs_sandbox
def test_a_package_handed_in_does_not_shadow_the_installed_one(graded_class):
    """Does a ``dpm_core/`` folder next to the notebook stay unimported (the kernel's folder
    is not on sys.path), so that the reference solution beside it keeps every point?"""
    result = graded_class["results"]["fake-package"]
    assert "the fake dpm_core was imported" not in result.notebooks["vae_basics"].decode()
    assert scores(result)[0] == scores(result)[1] > 0


@needs_sandbox
def test_the_network_probe_reaches_nothing(graded_class):
    """Does a connection to a listener on the grader's 127.0.0.1 fail from the kernel?"""
    assert graded_class["connections"] == []
    result = graded_class["results"]["network-probe"]
    notebook = nbformat.reads(result.notebooks["vae_basics"].decode(), 4)
    assert "no network" in json.dumps([c.get("outputs", []) for c in notebook.cells])
    assert result.status == "graded" and scores(result)[0] == scores(result)[1]


@needs_sandbox
def test_no_background_process_outlives_its_kernel(graded_class):
    """Is the lingering process gone after the batch (it dies with its kernel's sandbox)?"""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert MARKER not in ps
    result = graded_class["results"]["lingering-process"]
    assert result.status == "graded" and scores(result)[0] == scores(result)[1]


@needs_sandbox
@pytest.mark.parametrize("student, reason", [
    ("memory-bomb", "ran out of its 1.5 GiB of memory"),
    ("infinite-loop", "did not stop when interrupted"),
    ("os-exit", "the kernel died"),
])
def test_a_stopped_kernel_keeps_the_points_earned_before(graded_class, student, reason):
    """Does a kernel stopped by the memory cap, a hang or os._exit keep the points of the
    cells that passed before it stopped (the KL cells), score 0 after, and give its reason
    in the result and at the top of the autograded notebook?"""
    result = graded_class["results"][student]
    grades = _gradebook_scores(graded_class["root"], student)
    assert grades["kl-formula-tests"] == (2.0, 2.0) and grades["kl-reduction-tests"] == (1.0, 1.0)
    assert all(score == 0 for cell, (score, _) in grades.items() if not cell.startswith("kl-"))
    assert reason in result.reason_text(), result.reason_text()
    assert result.status == "stopped"
    first = nbformat.reads(result.notebooks["vae_basics"].decode(), 4).cells[0]
    assert first.source.startswith(GRADING_NOTE) and reason in first.source
    assert result.seconds < LIMITS.notebook_timeout + 60


@needs_sandbox
def test_an_interrupted_loop_costs_only_its_cell(graded_class):
    """Is an infinite loop in an ungraded cell interrupted at the cell timeout, with the
    notebook going on to earn every point after it?"""
    result = graded_class["results"]["interruptible-loop"]
    assert scores(result)[0] == scores(result)[1], result.reason_text()
    notebook = nbformat.reads(result.notebooks["vae_basics"].decode(), 4)
    loop = next(c for c in notebook.cells if c.source == "while True:\n    pass")
    assert any(o.get("output_type") == "error" for o in loop.outputs)


@needs_sandbox
def test_an_existing_dask_cluster_grades_too(graded_class):
    """Does `python -m course.grade --scheduler` send the work to a separately started
    `dask scheduler` and `dask worker`, and re-grade a student in place (same scores)?"""
    import time

    root = graded_class["root"]
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    scheduler = subprocess.Popen([bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port",
                                  str(port), "--no-dashboard"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([bin_dir / "dask", "worker", f"tcp://127.0.0.1:{port}",
                               "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                               "--memory-limit", "0"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        before = _gradebook_scores(root, "partial-answer")
        command = [sys.executable, "-m", "course.grade", "vae_basics", "--root", str(root),
                   "--students", "partial-answer", "--scheduler", f"tcp://127.0.0.1:{port}",
                   "--cell-timeout", "60"]
        start = time.monotonic()
        run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "partial-answer" in run.stdout
        assert _gradebook_scores(root, "partial-answer") == before
        assert time.monotonic() - start < 300
    finally:
        for process in (worker, scheduler):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_sandbox
def test_the_memory_cap_holds(graded_class):
    """Did the memory bomb (6 GiB wanted) stop at the 1.5 GiB cap, where a cgroup measures it?"""
    peak = graded_class["results"]["memory-bomb"].peak_memory
    if peak == 0:
        pytest.skip("no memory cgroup here (not root): RLIMIT_AS caps without measuring")
    assert peak <= LIMITS.memory * 1.02


@needs_sandbox
def test_a_huge_print_is_cut(graded_class):
    """Is a 50 MB print cut to the output cap, so that the autograded notebook stays small?"""
    result = graded_class["results"]["huge-print"]
    assert len(result.notebooks["vae_basics"]) < 2_000_000
    assert "output cut here" in result.notebooks["vae_basics"].decode()
    assert scores(result)[0] == scores(result)[1]


@needs_sandbox
@pytest.mark.parametrize("student, reason", [
    ("truncated-notebook", "could not be read as a Jupyter notebook"),
    ("misnamed-notebook", "found my_answers.ipynb: rename it to vae_basics.ipynb"),
    ("no-notebook", "vae_basics.ipynb is missing"),
])
def test_an_unreadable_or_missing_notebook_scores_zero_with_its_reason(graded_class, student,
                                                                       reason):
    """Does a notebook that cannot be graded score 0 with a reason, and still get an
    autograded notebook (the feedback needs one)?"""
    result = graded_class["results"][student]
    assert scores(result)[0] == 0
    assert result.status == "failed"
    assert reason in result.reason_text(), result.reason_text()
    assert (graded_class["root"] / "course" / "autograded" / student / "vae_basics"
            / "vae_basics.ipynb").exists()


@needs_sandbox
def test_a_copy_pasted_test_cell_does_not_stop_the_batch(graded_class):
    """Is a notebook with a copy-pasted test cell (a duplicated grade id, which nbgrader
    rejects outright) graded like the original, the copy running as a plain cell?"""
    result = graded_class["results"]["duplicated-cell"]
    assert result.status == "graded", result.reason_text()
    assert scores(result)[0] == scores(result)[1] > 0


@needs_sandbox
@pytest.mark.parametrize("student", list(_cheats()))
def test_no_cheat_earns_an_undeserved_point(graded_class, student):
    """Does each in-kernel cheat get exactly the points of the work really done on the judge's
    fresh inputs (0 for the release-based ones, whatever they rewrote in the kernel, the probe
    included; 11 where only the KL formula is wrong; 6 where the KL and reparametrise reach the
    withheld references through library code and an instance)?"""
    _, points, status, words = _cheats()[student]
    result = graded_class["results"][student]
    assert scores(result)[0] == points, (result.reason_text(), _gradebook_scores(
        graded_class["root"], student))
    assert result.status == status, result.reason_text()
    for word in words:
        assert word in result.reason_text(), result.reason_text()


@needs_sandbox
def test_the_probe_replaced_is_refused_with_a_reason(graded_class):
    """Does a forged probe reply (the request echoed under its nonce) fail every test cell with
    a message, not a traceback, and a deleted probe say that the tests got no answer?"""
    for student, words in (("probe-replaced", "hidden tests"), ("probe-deleted", "no answer")):
        notebook = nbformat.reads(graded_class["results"][student].notebooks["vae_basics"]
                                  .decode(), 4)
        errors = [o for c in _test_cells(notebook, "") for o in c.outputs
                  if o.get("output_type") == "error"]
        assert len(errors) == len(_test_cells(notebook, "")), student
        assert any(words in o["evalue"] for o in errors), [o["evalue"] for o in errors]


@needs_sandbox
def test_links_planted_by_the_kernel_are_never_followed(graded_class):
    """Do links that the kernel planted in its working folder (towards source/, another
    student's notebook and the grader's code) change nothing outside it, while its correct
    answers keep every point?"""
    root, before = graded_class["root"], graded_class["before"]
    assert _tree_digest(root / "source") == before["source"]
    assert _tree_digest(root / "course" / "submitted" / "reference-solution") == before["reference"]
    assert _tree_digest(REPO / "course" / "judges") == before["judges"]
    result = graded_class["results"]["links-planted"]
    assert scores(result)[0] == scores(result)[1], result.reason_text()
    autograded = root / "course" / "autograded" / "links-planted" / "vae_basics"
    assert not any(p.is_symlink() for p in autograded.rglob("*"))


@needs_sandbox
def test_a_disk_fill_stops_at_the_quota(graded_class):
    """Does a kernel that writes until the disk is full stop at its private tmpfs quota in its
    folder, /tmp and /dev/shm (and the grader's disk keep its space), with its points kept?"""
    result = graded_class["results"]["disk-fill"]
    notebook = nbformat.reads(result.notebooks["vae_basics"].decode(), 4)
    text = json.dumps([c.get("outputs", []) for c in notebook.cells])
    for where in (". full", "/tmp full", "/dev/shm full"):
        assert where in text, text[-2000:]
    assert scores(result)[0] == scores(result)[1], result.reason_text()
    assert graded_class["disk_drop"] < 2 ** 30


@needs_sandbox
def test_a_fork_storm_is_capped(graded_class):
    """Does a fork storm of children holding 32 MiB each end within the submission's caps (here
    the memory cap comes first; the pids cap alone is tested with a small cap in
    tests/test_sandbox_limits.py) without taking the batch down, keeping the points of the
    cells before it?"""
    result = graded_class["results"]["fork-storm"]
    grades = _gradebook_scores(graded_class["root"], "fork-storm")
    assert grades["kl-formula-tests"] == (2.0, 2.0), result.reason_text()
    notebook = nbformat.reads(result.notebooks["vae_basics"].decode(), 4)
    forked = [int(line.split()[1]) for c in notebook.cells for o in c.get("outputs", [])
              if o.get("output_type") == "stream" for line in o.get("text", "").splitlines()
              if line.startswith("forked ")]
    if forked:  # the storm ran to its end: it stopped below the cap
        assert forked[0] < LIMITS.processes
    assert result.peak_memory <= LIMITS.memory * 1.02


@needs_sandbox
def test_a_message_too_large_is_refused_not_received(graded_class):
    """Does a 300 MB write to stdout in one call, refused by the grader's sockets (over 128
    MiB, it would otherwise be received whole before the output cap applies), stop the
    notebook with the reason, keeping the points of the cells before it and the batch intact?"""
    result = graded_class["results"]["huge-message"]
    grades = _gradebook_scores(graded_class["root"], "huge-message")
    assert grades["kl-formula-tests"] == (2.0, 2.0) and grades["kl-reduction-tests"] == (1.0, 1.0)
    assert len(result.notebooks["vae_basics"]) < 2_000_000
    assert "could not be received" in result.reason_text(), result.reason_text()


def test_the_grader_refuses_a_message_over_its_cap(tmp_path):
    """With a 1 MiB cap, is a 5 MB print refused by the sockets (never received, so never cut
    at the output cap), stopping the notebook with the reason, while without the cap it
    arrives and is cut?"""
    from course.grading_plugins import BoundedExecute

    def run(cap):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('x' * 5_000_000)")])
        nb, _ = BoundedExecute(timeout=20, max_message_bytes=cap).preprocess(
            nb, {"metadata": {"path": str(tmp_path)}})
        return json.dumps(nb.cells[0].outputs)

    assert "could not be received" in run(2 ** 20)
    assert "output cut here" in run(2 ** 30)


@needs_sandbox
def test_an_old_notebook_format_is_converted_and_graded(graded_class):
    """Is a notebook saved as nbformat 3 converted and graded like the reference it is?"""
    result = graded_class["results"]["nbformat-3"]
    assert result.status == "graded", result.reason_text()
    assert scores(result)[0] == scores(result)[1] > 0


@needs_sandbox
def test_edited_grading_metadata_is_restored_with_a_reason(graded_class):
    """Is grading metadata that the student edited (points, a test cell no longer graded)
    restored from the assignment, with a clear reason and no traceback, and graded in full?"""
    result = graded_class["results"]["edited-metadata"]
    assert scores(result) == (13, 13), result.reason_text()
    assert result.status == "graded", result.reason_text()
    assert "restored" in result.reason_text() and "Traceback" not in result.reason_text()
    root = graded_class["root"]
    pipeline.nbgrader(["generate_feedback", "vae_basics", "--student", "edited-metadata",
                       "--force"], root)
    assert list((root / "course" / "feedback" / "edited-metadata" / "vae_basics").glob("*.html"))


def test_read_submission_skips_links_and_oversized_files(tmp_path):
    """Are links (a link to /etc/passwd) and files past the size limit left out, and said so?"""
    (tmp_path / "a.ipynb").write_text("{}")
    (tmp_path / "big.bin").write_bytes(b"x" * 5000)
    (tmp_path / "passwd").symlink_to("/etc/passwd")
    files, skipped = read_submission(tmp_path, limit=1000)
    assert set(files) == {"a.ipynb"}
    assert any("passwd is a link" in s for s in skipped)
    assert any("big.bin" in s for s in skipped)


def test_memory_sizes_parse():
    """Do 4GiB, 512M and a plain number of bytes parse, and nonsense fail?"""
    assert _parse_bytes("4GiB") == 4 * 2 ** 30
    assert _parse_bytes("512M") == 512 * 2 ** 20
    assert _parse_bytes("1000") == 1000
    with pytest.raises(Exception):
        _parse_bytes("lots")


def test_the_sandbox_command_line_isolates(tmp_path):
    """Does the kernel's bwrap command drop capabilities, unshare everything, clear the
    environment and bind only the sockets folder writable (the notebook's folder is a private
    tmpfs, the runtime folder read-only)?"""
    sandbox = Sandbox(workdir=tmp_path / "nb", runtime_dir=tmp_path / "rt",
                      readonly=(Path(sys.prefix),), env={"HOME": "/tmp"},
                      sockets_dir=tmp_path / "sk")
    argv = sandbox.bwrap_argv(["python"])
    for flag in ("--unshare-all", "--cap-drop", "--die-with-parent", "--clearenv"):
        assert flag in argv
    writable = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert writable == [str(tmp_path / "sk")]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"].count(
        str(tmp_path / "nb")) == 1
    assert str(REPO) not in " ".join(a for a in argv if a != str(sys.prefix)
                                     and not a.startswith(str(sys.prefix)))


def test_the_grader_refuses_without_a_sandbox(monkeypatch, tmp_path, capsys):
    """Without bwrap, does the grade command refuse to run student code, say how to install
    it and name the override, and exit non-zero?"""
    from course import grade, sandbox

    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap.*--unsafe-no-sandbox"):
        sandbox.check_sandbox()
    monkeypatch.setattr(grade, "check_sandbox", sandbox.check_sandbox)
    assert grade.main(["vae_basics", "--root", str(REPO)]) == 2
    assert "refusing to run student code unsandboxed" in capsys.readouterr().err


@needs_sandbox
@pytest.mark.parametrize("student", ["memory-bomb", "huge-print", "misnamed-notebook"])
def test_feedback_is_small_and_says_why(graded_class, student):
    """Does nbgrader's feedback page for a stopped, a loud and a misnamed submission stay
    small and show the grading note with its reason?"""
    root = graded_class["root"]
    pipeline.nbgrader(["generate_feedback", "vae_basics", "--student", student, "--force"], root)
    [page] = (root / "course" / "feedback" / student / "vae_basics").glob("*.html")
    assert page.stat().st_size < 1_500_000
    result = graded_class["results"][student]
    if result.reasons:
        assert "Grading note:" in page.read_text()
        assert result.reasons["vae_basics"].split(";")[0][:40] in page.read_text()


def test_the_launcher_caps_the_address_space_without_a_cgroup():
    """Without a cgroup (grading as a normal user), does the kernel launcher's RLIMIT_AS stop
    an allocation past the cap with a MemoryError, while one under it works?"""
    cap = 2 * 2 ** 30
    launch = [sys.executable, "-m", "course.sandbox", "launch", "--address-space", str(cap), "--",
              sys.executable, "-c"]
    small = subprocess.run([*launch, "b = bytearray(2 ** 28); print('fits')"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert small.returncode == 0 and "fits" in small.stdout, small.stderr
    big = subprocess.run([*launch, f"bytearray({2 * cap})"], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert big.returncode != 0 and "MemoryError" in big.stderr


def test_the_launcher_joins_the_cgroup(tmp_path):
    """Does the launcher put itself (and so the sandbox it becomes) into the given cgroup?
    (A fake cgroup folder: the launcher only writes its pid to cgroup.procs.)"""
    run = subprocess.run([sys.executable, "-m", "course.sandbox", "launch", "--cgroup",
                          str(tmp_path), "--", sys.executable, "-c", "import os; print(os.getpid())"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "cgroup.procs").read_text() == run.stdout.strip()


@needs_sandbox
def test_a_kernel_that_cannot_start_is_the_graders_error(tmp_path):
    """When the kernel cannot even start, is the submission marked
    as the grader's error, with the reason, instead of a student's 0 for failing? (A 4 MiB
    memory cap: too little for Python itself.)"""
    from course.grade import _source_files
    from course.merge import template_gradebook
    from course.submission import Job, grade_submission

    shutil.copytree(REPO / "source" / "vae_basics", tmp_path / "source" / "vae_basics")
    notebook = (REPO / "source" / "vae_basics" / "vae_basics.ipynb").read_bytes()
    job = Job("vae_basics", "starved", ["vae_basics"], _source_files(tmp_path, "vae_basics"),
              {"vae_basics.ipynb": notebook}, template_gradebook(tmp_path, "vae_basics"),
              Limits(memory=4 * 2 ** 20, cell_timeout=20, notebook_timeout=60))
    result = grade_submission(job)
    assert result.status == "error", result.reason_text()
    assert "the kernel did not start" in result.reason_text()
    assert "NOT graded because the grader failed" in format_summary([result], [ASSIGNMENT])
