"""The bounds of the grading sandbox (course.sandbox) and the repairs before grading
(course.submission).

The sandbox: the kernel's working directory, ``/tmp`` and ``/dev/shm`` are private tmpfs of
a fixed size; the notebook's folder on disk is never visible to the kernel, which starts
with copies of the files next to the notebook; the sockets folder is the only one it
shares writable; a real kernel starts and runs there over ZeroMQ ``ipc``, as grading starts
it; a fork storm stops at the pids cap, and one that allocates at the memory cap, while the
grader's own process is untouched. The repairs: a notebook saved as nbformat 3 is converted
and graded; grading metadata that a student edited is restored from the assignment, with a
reason; an nbgrader failure ends as one line.

Every program run in the sandbox stops by itself: each fill at ENOSPC or 3 ``DISK``, the
fork loops at ``MAX_FORKS``, children exit after ``CHILD_SECONDS``; each run has a
``RUN_TIMEOUT``, and the cgroup tests run under a memory cap of their own. The cgroup tests
need root (they skip otherwise), every sandbox test needs bwrap.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from course.sandbox import KERNEL_NAME, MemoryCap, ProcessCap, Sandbox, python_folders, \
    write_kernelspec
from course.submission import Job, Result, _check_notebooks, _lay_out, _nbgrader_error
from sandboxing import needs_sandbox

#: the size of each tmpfs in these tests, and what a program tries to write into each
DISK = 8 * 2 ** 20
#: tasks and memory of the cgroup tests
PIDS = 32
MEMORY = 192 * 2 ** 20
#: the fork loops stop here even if nothing stops them (a broken cap fails, not hangs)
MAX_FORKS = 100
CHILD_SECONDS = 2
RUN_TIMEOUT = 120


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(folder: Path) -> list:
    """Every entry under folder, links included (not followed)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def layout(tmp_path) -> dict:
    """A scratch course's folders: the notebook's, the runtime and sockets folders, and a
    file outside them all that a link could aim at."""
    folders = {"workdir": tmp_path / "course" / "autograded" / "student" / "assignment",
               "runtime": tmp_path / "runtime", "sockets": tmp_path / "sockets",
               "outside": tmp_path / "outside"}
    for folder in folders.values():
        folder.mkdir(parents=True)
    folders["target"] = folders["outside"] / "gradebook.db"
    folders["target"].write_bytes(b"the grader's own file")
    folders["tmp_path"] = tmp_path
    return folders


def _env() -> dict:
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": "/tmp",
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "IPYTHONDIR": "/tmp/ipython"}


def _sandbox(layout, **kw) -> Sandbox:
    return Sandbox(workdir=layout["workdir"], runtime_dir=layout["runtime"],
                   sockets_dir=layout["sockets"], readonly=tuple(python_folders()),
                   env=_env(), **{"disk": DISK, **kw})


def _run(sandbox: Sandbox, code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -c code args`` in the sandbox through the launcher, as a kernel starts."""
    argv = [*sandbox.launcher_argv(), "--",
            *sandbox.bwrap_argv([sys.executable, "-c", textwrap.dedent(code), *args])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)


@pytest.fixture
def cgroups():
    """A memory cap of MEMORY and a pids cap of PIDS (skips without root or controllers)."""
    if os.geteuid() != 0:
        pytest.skip("cgroups need root")
    name = f"test-{os.getpid()}-{os.urandom(4).hex()}"
    memory, procs = MemoryCap.create(MEMORY, name), ProcessCap.create(PIDS, name)
    try:
        if memory is None or procs is None:
            pytest.skip("no memory or pids cgroup controller here")
        yield memory, procs
    finally:
        for group in (memory, procs):
            if group is not None:
                group.remove()


# -- the command line ---------------------------------------------------------------------


def test_the_kernel_writes_only_to_sized_tmpfs_and_the_sockets_folder(layout):
    """Is the kernel's cwd a sized tmpfs at the notebook's path (mounted after every bind, so
    that none lands in it), are /tmp and /dev/shm sized, is the sockets folder the only
    writable bind, the runtime folder read-only, and are bwrap's root and /dev read-only?"""
    argv = _sandbox(layout, disk=12345 * 4096).bwrap_argv(["python"])
    options = argv[:argv.index("--")]
    sized = {options[i + 1]: options[i - 1] for i, a in enumerate(options)
             if a == "--tmpfs" and options[i - 2] == "--size"}
    unsized = [options[i + 1] for i, a in enumerate(options)
               if a == "--tmpfs" and options[i - 2] != "--size"]
    workdir, runtime, sockets = (str(layout[k]) for k in ("workdir", "runtime", "sockets"))
    assert sized == {"/tmp": str(12345 * 4096), "/dev/shm": str(12345 * 4096),
                     workdir: str(12345 * 4096)} and unsized == []
    assert [options[i + 1:i + 3] for i, a in enumerate(options) if a == "--bind"] \
        == [[sockets, sockets]]
    assert [runtime, runtime] in [options[i + 1:i + 3] for i, a in enumerate(options)
                                  if a == "--ro-bind"]
    assert not any(a == workdir for i, a in enumerate(options)
                   if options[i - 1] in ("--bind", "--ro-bind", "--dev-bind"))
    last_bind = max(i for i, a in enumerate(options) if a.endswith("bind") or a == "--symlink")
    assert options.index(workdir) > last_bind
    assert [options[i + 1] for i, a in enumerate(options) if a == "--remount-ro"] == ["/dev", "/"]
    assert options[options.index("--chdir") + 1] == workdir


def test_the_launcher_joins_both_cgroups_and_copies_the_notebook_folder(layout):
    """Does the kernelspec's launcher join the memory and the pids cgroup (once each, one
    folder in cgroup v2), and copy the notebook's folder into the tmpfs, with half the disk?"""
    one = _sandbox(layout, cgroup=Path("/cg/memory/x"), pids_cgroup=Path("/cg/pids/x"))
    argv = one.kernel_argv()
    launcher = argv[:argv.index("--")]
    assert [launcher[i + 1] for i, a in enumerate(launcher) if a == "--cgroup"] \
        == ["/cg/memory/x", "/cg/pids/x"]
    assert "--address-space" not in launcher
    assert launcher[launcher.index("--copy-into") + 1] == str(layout["workdir"])
    assert launcher[launcher.index("--copy-limit") + 1] == str(DISK // 2)
    v2 = _sandbox(layout, cgroup=Path("/cg/x"), pids_cgroup=Path("/cg/x")).launcher_argv()
    assert v2.count("--cgroup") == 1


def test_a_disk_size_that_is_not_positive_is_refused(layout):
    """Does Sandbox refuse a tmpfs size of 0, naming the argument?"""
    with pytest.raises(ValueError, match="disk must be a positive number of bytes, got 0"):
        _sandbox(layout, disk=0)


# -- in the sandbox -----------------------------------------------------------------------

_FILL_AND_PLANT = """
import errno, json, os, sys
limit, target = int(sys.argv[1]), sys.argv[2]
def fill(folder):
    written, chunk = 0, b"x" * 2 ** 16
    try:
        with open(os.path.join(folder, "fill.bin"), "wb", buffering=0) as f:
            while written < 3 * limit:
                written += f.write(chunk)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
    return written
def writable(folder):
    try:
        open(os.path.join(folder, "probe"), "w").close()
        return True
    except OSError:
        return False
report = {"cwd": os.getcwd(), "written": {d: fill(d) for d in (".", "/tmp", "/dev/shm")}}
# what nbgrader writes next, and a file outside: both as links in the kernel's cwd
os.symlink(target, "assignment.ipynb")
os.symlink(target, "link-to-gradebook")
try:
    with open("link-to-gradebook", "w") as f:
        f.write("overwritten")
    report["wrote_through_link"] = True
except OSError:
    report["wrote_through_link"] = False
report["writable"] = {d: writable(d) for d in ("/", "/dev", "/usr", sys.argv[3], sys.argv[4])}
print(json.dumps(report))
"""


@needs_sandbox
def test_a_full_disk_and_a_planted_link_stay_in_the_sandbox(layout):
    """Does each write into cwd, /tmp and /dev/shm stop at about the tmpfs size (3x tried),
    does the notebook's folder on disk stay empty and the file a link aims at unchanged, and
    can the kernel write nowhere else than its tmpfs and the sockets folder?"""
    before = _digest(layout["target"])
    run = _run(_sandbox(layout), _FILL_AND_PLANT, str(DISK), str(layout["target"]),
               str(layout["runtime"]), str(layout["sockets"]))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["cwd"] == str(layout["workdir"])
    for folder, written in report["written"].items():
        assert DISK - 2 ** 20 <= written <= DISK, (folder, written)
    assert not report["wrote_through_link"]
    assert report["writable"] == {"/": False, "/dev": False, "/usr": False,
                                  str(layout["runtime"]): False, str(layout["sockets"]): True}
    assert _listing(layout["workdir"]) == []
    assert _digest(layout["target"]) == before
    # nbgrader now writes the autograded notebook: a plain file, where the link was planted
    (layout["workdir"] / "assignment.ipynb").write_text("{}")
    assert _digest(layout["target"]) == before


_LIST_AND_CHANGE = """
import json, os
seen = sorted(os.path.join(root, name) for root, dirs, files in os.walk(".")
              for name in dirs + files)
text = open("given.txt").read()
with open("given.txt", "a") as f:
    f.write(" changed in the sandbox")
print(json.dumps({"seen": seen, "text": text, "changed": open("given.txt").read()}))
"""


@needs_sandbox
def test_the_kernel_starts_with_copies_of_the_files_next_to_the_notebook(layout):
    """Does the kernel's cwd start with copies of the files nbgrader put next to the notebook
    (a subfolder's too), which it may change while the originals stay as they were, and
    without the notebooks and links (a link there is not followed)?"""
    workdir = layout["workdir"]
    (workdir / "given.txt").write_text("handed in")
    (workdir / "data").mkdir()
    (workdir / "data" / "table.csv").write_text("1,2\n")
    (workdir / "assignment.ipynb").write_text("{}")  # the notebook: hidden tests restored
    (workdir / "link").symlink_to(layout["target"])
    before = {p: _digest(workdir / p) for p in ("given.txt", "data/table.csv")}
    run = _run(_sandbox(layout), _LIST_AND_CHANGE)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["seen"] == ["./data", "./data/table.csv", "./given.txt"]
    assert report["text"] == "handed in"
    assert report["changed"] == "handed in changed in the sandbox"
    assert {p: _digest(workdir / p) for p in before} == before
    assert _listing(workdir) == ["assignment.ipynb", "data", "data/table.csv", "given.txt",
                                 "link"]


_FORK_STORM = f"""
import errno, json, os, sys, time
allocate = int(sys.argv[1])
children, refused = [], None
for _ in range({MAX_FORKS}):
    try:
        pid = os.fork()
    except OSError as err:
        refused = errno.errorcode.get(err.errno)
        break
    if pid == 0:
        try:
            block = b"x" * allocate  # touched: every page counts
            time.sleep({CHILD_SECONDS})
        finally:
            os._exit(0)
    children.append(pid)
killed = 0
for pid in children:
    _, status = os.waitpid(pid, 0)
    killed += os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
print(json.dumps({{"forked": len(children), "refused": refused, "killed": killed}}))
"""


@needs_sandbox
def test_a_fork_storm_stops_at_the_process_cap(layout, cgroups):
    """Do the forks of a fork storm fail once the submission holds PIDS tasks (bwrap and the
    program count too), and is the grader's own process untouched and able to fork?"""
    memory, procs = cgroups
    run = _run(_sandbox(layout, memory=MEMORY, cgroup=memory.path, pids_cgroup=procs.path),
               _FORK_STORM, "0")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    # the launcher became bwrap, which runs an init process, which runs python
    assert PIDS - 3 - 2 <= report["forked"] <= PIDS - 3, report
    assert report["refused"] == "EAGAIN" and procs.refused() > 0
    assert subprocess.run(["true"], timeout=30).returncode == 0


@needs_sandbox
def test_a_fork_storm_that_allocates_stops_at_the_memory_cap(layout, cgroups):
    """When each process of a fork storm holds 16 MiB, is the submission as a whole held
    to its memory cap (the OOM killer ends processes in its cgroup), while the grader's own
    process lives on?"""
    memory, procs = cgroups
    run = _run(_sandbox(layout, memory=MEMORY, cgroup=memory.path, pids_cgroup=procs.path),
               _FORK_STORM, str(16 * 2 ** 20))
    assert memory.out_of_memory()
    assert 0 < memory.peak() <= MEMORY
    if run.returncode == 0:  # the parent survived: some of its children did not
        assert json.loads(run.stdout)["killed"] > 0
    assert subprocess.run(["true"], timeout=30).returncode == 0


@needs_sandbox
def test_a_sandboxed_kernel_starts_and_runs_over_ipc(layout, monkeypatch):
    """Does a kernel started as grading starts it (the kernelspec's launcher and bwrap,
    ZeroMQ over ipc sockets in the sockets folder, its connection file read-only) answer,
    run in the notebook's path, and leave the notebook's folder on disk empty?"""
    from jupyter_client.manager import KernelManager

    tmp_path = layout["tmp_path"]
    write_kernelspec(tmp_path / "jupyter", _sandbox(layout).kernel_argv())
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(layout["runtime"]))
    km = KernelManager(kernel_name=KERNEL_NAME, transport="ipc",
                       ip=str(layout["sockets"] / "kernel"),
                       connection_file=str(layout["runtime"] / "kernel.json"))
    km.start_kernel(cwd=str(layout["sockets"]))
    outputs = []
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        code = ("import os; open('written.txt', 'w').write('x'); "
                "print(os.getcwd(), sorted(os.listdir('.')))")
        reply = kc.execute_interactive(code, timeout=60, output_hook=outputs.append)
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok", reply["content"]
    text = "".join(m["content"].get("text", "") for m in outputs
                   if m["msg_type"] == "stream")
    assert text.split() == [str(layout["workdir"]), "['written.txt']"]
    assert _listing(layout["workdir"]) == [] and _listing(layout["runtime"]) == []


# -- the repairs before grading -----------------------------------------------------------


def _cell(kind: str, source: str, **nbgrader):
    new = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
    cell = new(source, id=nbgrader.get("grade_id", "plain"))
    if nbgrader:
        cell.metadata["nbgrader"] = dict(nbgrader, schema_version=3)
    return cell


def _source_notebook():
    """A small assignment: a locked question, an answer cell, its locked test cell, a
    written answer graded by hand."""
    return nbformat.v4.new_notebook(cells=[
        _cell("markdown", "Compute x.", grade=False, solution=False, locked=True,
              grade_id="question"),
        _cell("code", "x = 1", grade=False, solution=True, locked=False, grade_id="answer"),
        _cell("code", "assert x == 1", grade=True, solution=False, locked=True, points=2,
              grade_id="answer-tests"),
        _cell("markdown", "Because.", grade=True, solution=True, locked=False, points=1,
              grade_id="why"),
    ])


def _check(tmp_path, submitted) -> tuple:
    """``_check_notebooks`` on a scratch course holding the source and ``submitted``:
    (runnable, reasons, the notebook as nbgrader will read it)."""
    job = Job("assignment", "student", ["nb"],
              {"nb.ipynb": nbformat.writes(_source_notebook()).encode()},
              {"nb.ipynb": submitted}, b"")
    course = _lay_out(tmp_path / "scratch", job)
    result = Result("assignment", "student")
    runnable = _check_notebooks(course, job, result)
    path = course / "submitted" / "student" / "assignment" / "nb.ipynb"
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT) if path.exists() else None
    return runnable, result.reasons, notebook


def _assert_nbgrader_accepts(notebook) -> None:
    """nbgrader's own checks: the metadata validates, and every locked cell has the
    checksum of its source cell (else OverwriteCells fails: "Inconsistent checksums")."""
    from nbgrader.nbgraderformat import MetadataValidator
    from nbgrader.utils import compute_checksum

    MetadataValidator().validate_nb(notebook)
    source = {c.metadata.nbgrader["grade_id"]: c for c in _source_notebook().cells}
    for cell in notebook.cells:
        meta = cell.metadata.get("nbgrader")
        if meta and meta.get("locked"):
            assert compute_checksum(cell) == compute_checksum(source[meta["grade_id"]])


def test_an_untouched_notebook_passes_without_a_reason(tmp_path):
    """Is an honest notebook (the source itself) left as it is, with no reason?"""
    runnable, reasons, notebook = _check(tmp_path, nbformat.writes(_source_notebook()).encode())
    assert runnable == ["nb"] and reasons == {}
    assert notebook == _source_notebook()


def test_a_notebook_saved_as_nbformat_3_is_converted_and_graded(tmp_path):
    """Is an nbformat 3 notebook converted to a valid nbformat 4 one that nbgrader accepts,
    with its code and grading metadata, and graded without a reason?"""
    v3 = nbformat.v3
    cells = [v3.new_text_cell("markdown", c.source, metadata=c.metadata)
             if c.cell_type == "markdown" else v3.new_code_cell(input=c.source,
                                                               metadata=c.metadata)
             for c in _source_notebook().cells]
    text = nbformat.writes(v3.new_notebook(worksheets=[v3.new_worksheet(cells=cells)]),
                           version=3)
    assert json.loads(text)["nbformat"] == 3
    runnable, reasons, notebook = _check(tmp_path, text.encode())
    assert runnable == ["nb"] and reasons == {}
    assert notebook.nbformat == 4
    nbformat.validate(notebook)
    _assert_nbgrader_accepts(notebook)
    namespace = {}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            exec(cell.source, namespace)  # the answer and its test run as they were written
    assert namespace["x"] == 1


def test_an_nbformat_other_than_3_or_4_is_refused_with_its_reason(tmp_path):
    """Is an nbformat 5 notebook (or a v4 body labelled 3) still refused with a reason?"""
    body = json.loads(nbformat.writes(_source_notebook()))
    for version, words in ((5, "nbformat version 5"), (3, "worksheets")):
        runnable, reasons, _ = _check(tmp_path / str(version),
                                      json.dumps(dict(body, nbformat=version)).encode())
        assert runnable == [] and "could not be read as a Jupyter notebook" in reasons["nb"]
        assert words in reasons["nb"] and "\n" not in reasons["nb"]


@pytest.mark.parametrize("edit, cells", [
    (lambda m: m["answer-tests"].update(points=20), "answer-tests"),
    (lambda m: m["answer-tests"].update(grade=False), "answer-tests"),
    (lambda m: m["question"].pop("locked"), "question"),
    (lambda m: m["answer"].update(solution=False, locked=True), "answer"),
    (lambda m: (m["why"].update(points=5), m["answer-tests"].update(locked=False)),
     "answer-tests, why"),
], ids=["points", "grade-flag", "locked-removed", "solution-flag", "two-cells"])
def test_edited_grading_metadata_is_restored_with_a_reason(tmp_path, edit, cells):
    """Is grading metadata that a student edited restored from the assignment's source, so
    that nbgrader's checks pass, and does the reason name the cells?"""
    student = _source_notebook()
    edit({c.metadata.nbgrader["grade_id"]: c.metadata.nbgrader for c in student.cells})
    runnable, reasons, notebook = _check(tmp_path, nbformat.writes(student).encode())
    assert runnable == ["nb"]
    assert reasons == {"nb": f"the grading metadata of cell{'s' * (',' in cells)} {cells} had "
                             f"been edited; it was restored from the assignment"}
    assert notebook == _source_notebook()
    _assert_nbgrader_accepts(notebook)


@pytest.mark.parametrize("grade_id, name", [("my-tests", "my-tests"),
                                            (["answer-tests"], "number 3")])
def test_a_renamed_grade_id_makes_a_plain_cell_with_a_reason(tmp_path, grade_id, name):
    """Does a cell whose grade id the assignment does not know (renamed, or not even a
    string) lose its grading metadata (the graded cell it stood for comes back through
    add_missing_cells), with a reason, and does nbgrader's metadata validation pass?"""
    student = _source_notebook()
    student.cells[2].metadata.nbgrader["grade_id"] = grade_id
    runnable, reasons, notebook = _check(tmp_path, nbformat.writes(student).encode())
    assert runnable == ["nb"]
    assert reasons["nb"] == (f"cell {name} had grading metadata that the assignment does not "
                             f"have; graded as plain cell")
    assert "nbgrader" not in notebook.cells[2].metadata
    _assert_nbgrader_accepts(notebook)


@pytest.mark.parametrize("indent", ["    ", ""], ids=["as-nbgrader-logs-it", "unindented"])
def test_an_nbgrader_failure_is_one_line(indent):
    """Does a traceback that nbgrader logged (its lines indented as nbgrader indents them, or
    not) become the one line of its exception, and an error without one its message?"""
    traceback = textwrap.indent(textwrap.dedent("""\
        File "/venv/nbgrader/preprocessors/overwritecells.py", line 243, in preprocess_cell
          raise RuntimeError("Inconsistent checksums for cell {}".format(source_cell.name))
        RuntimeError: Inconsistent checksums for cell answer-tests
        """), indent)
    output = ("[AutogradeApp | WARNING] Attribute 'checksum' for cell answer-tests has changed!\n"
              "[AutogradeApp | ERROR] There was an error processing assignment: /x/student/a\n"
              "[AutogradeApp | ERROR] Traceback (most recent call last):\n" + traceback
              + "[AutogradeApp | ERROR] Please see the the above traceback for details.\n")
    assert _nbgrader_error(output, 1) \
        == "RuntimeError: Inconsistent checksums for cell answer-tests"
    assert _nbgrader_error("[AutogradeApp | ERROR] No notebooks found\n", 1) == "No notebooks found"
    assert _nbgrader_error("", 2) == "exit 2"
