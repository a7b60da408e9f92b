"""Warm kernels (course.warm, dpm_probe.warm): forked from a server that has imported torch,
each in namespaces of its own, and nothing shared between two of them.

Each test starts real kernels through the launcher of the kernelspec, as grading does, from
one server for the module. A kernel's program is short and bounds itself (the background
process sleeps ``CHILD_SECONDS``); each kernel has ``KERNEL_TIMEOUT``. Every test needs
bubblewrap; the cgroup test needs root.
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from course import warm
from course.sandbox import KERNEL_NAME, MemoryCap, ProcessCap, Sandbox, python_folders, \
    write_kernelspec
from sandboxing import needs_sandbox

DISK = 8 * 2 ** 20
KERNEL_TIMEOUT = 60
CHILD_SECONDS = 30


pytestmark = needs_sandbox

ENV = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": "/tmp",
       "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "IPYTHONDIR": "/tmp/ipython",
       "MPLCONFIGDIR": "/tmp/matplotlib", "OMP_NUM_THREADS": "1", "PYTHONSAFEPATH": "1"}


@pytest.fixture(scope="module")
def server():
    server = warm.WarmServer.start(tuple(python_folders()), ENV)
    yield server
    server.close()


@pytest.fixture
def course_dir(tmp_path, monkeypatch):
    """A scratch course's folders, as grade_submission lays them out."""
    folders = {"workdir": tmp_path / "course" / "autograded" / "student" / "assignment",
               "runtime": tmp_path / "runtime", "jupyter": tmp_path / "jupyter"}
    for folder in folders.values():
        folder.mkdir(parents=True)
    monkeypatch.setenv("JUPYTER_PATH", str(folders["jupyter"]))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(folders["runtime"]))
    return folders


def _run(server, course_dir, code: str, **sandbox) -> dict:
    """Start a warm kernel as grading does, run ``code`` (which prints one JSON line) and
    return what it printed, with the kernel's ``connected`` seconds."""
    from jupyter_client.manager import KernelManager

    sockets = server.submission_folder()
    box = Sandbox(workdir=course_dir["workdir"], runtime_dir=course_dir["runtime"],
                  sockets_dir=sockets, readonly=tuple(python_folders()), env=ENV, disk=DISK,
                  warm=server.control, warm_hidden=server.folder, **sandbox)
    write_kernelspec(course_dir["jupyter"], box.kernel_argv())
    km = KernelManager(kernel_name=KERNEL_NAME, transport="ipc", ip=str(sockets / "kernel"),
                       connection_file=str(course_dir["runtime"] / "kernel.json"))
    start = time.perf_counter()
    km.start_kernel(cwd=str(sockets))
    outputs = []
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=KERNEL_TIMEOUT)
        connected = time.perf_counter() - start
        reply = kc.execute_interactive(code, timeout=KERNEL_TIMEOUT, output_hook=outputs.append)
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok", reply["content"]
    text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    return dict(json.loads(text.strip().splitlines()[-1]), connected=connected)


#: the argument that names the background process a kernel leaves running
MARK = "left-behind-by-a-warm-kernel"
_LOOK = f"""
import json, os, subprocess, sys, ctypes
libc = ctypes.CDLL(None, use_errno=True)
status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
left = {{name: os.path.exists(name) for name in ('/tmp/left', '/dev/shm/left', 'left')}}
shm_before = libc.shmget(0x5eed, 4096, 0o666)  # -1: no segment of that key in this namespace
seen = [p for p in os.listdir('/proc') if p.isdigit()]
files = sorted(os.listdir('.'))
for name in ('/tmp/left', '/dev/shm/left', 'left'):
    open(name, 'w').write('x')
libc.shmget(0x5eed, 4096, 0o1666)
subprocess.Popen([sys.executable, '-c', 'import time; time.sleep({CHILD_SECONDS})',
                  '{{MARK}}'], start_new_session=True)
print(json.dumps({{
    'pid': os.getpid(), 'processes': sorted(seen), 'cwd': os.getcwd(),
    'files': files, 'left': left, 'shm_before': shm_before,
    'caps': [status[k].strip() for k in ('CapEff', 'CapPrm', 'CapBnd', 'CapAmb')],
    'no_new_privs': status['NoNewPrivs'].strip(), 'uid': status['Uid'].split()[0],
    'torch_imported': 'torch' in sys.modules, 'tmp': sorted(os.listdir('/tmp')),
}}))
""".replace("{MARK}", MARK)


def test_a_warm_kernel_is_alone_in_its_namespaces_and_leaves_nothing_behind(server,
                                                                            course_dir):
    """Does a warm kernel (torch imported already) run at the notebook's path with copies of
    the files there, as PID 1 of its own namespace, uid 65534 with no capability and
    no_new_privs; and does the next kernel of the same server find nothing of it: not its
    files in /tmp, /dev/shm or the working directory, not its SysV shared memory, not the
    process it left running?"""
    (course_dir["workdir"] / "given.txt").write_text("a file handed in")
    first = _run(server, course_dir, _LOOK)
    second = _run(server, course_dir, _LOOK)
    for seen in (first, second):
        assert seen["torch_imported"] and seen["pid"] == 1
        assert seen["cwd"] == str(course_dir["workdir"])
        assert seen["caps"] == ["0000000000000000"] * 4
        assert seen["no_new_privs"] == "1" and seen["uid"] == "65534"
        assert seen["left"] == {"/tmp/left": False, "/dev/shm/left": False, "left": False}
        assert seen["shm_before"] == -1
        assert seen["processes"] == ["1"]  # the other kernel's background process is gone
    assert first["files"] == ["given.txt"] and second["files"] == ["given.txt"]
    assert sorted(os.listdir(course_dir["workdir"])) == ["given.txt"]  # nothing written back
    assert _left_running() == []  # died with its kernel's PID namespace


def _left_running() -> list:
    """PIDs of the machine whose command line holds MARK, after a second for them to go."""
    time.sleep(1)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if MARK.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def test_a_kernel_cannot_signal_its_server(server, course_dir):
    """A warm kernel is PID 1 of its namespace, so its parent's PID reads 0, and ``kill(0)``
    means its process group: do SIGSTOP and SIGKILL to its parent, its group and every
    process it may signal (``kill(-1)``) leave the kernel, its server and the next kernel
    alone?"""
    code = ("import json, os, signal\n"
            "for target in (os.getppid(), 0, -1):\n"
            "    for sig in (signal.SIGSTOP, signal.SIGKILL):\n"
            "        try:\n"
            "            os.kill(target, sig)\n"
            "        except OSError:\n"
            "            pass\n"
            "print(json.dumps({'alive': True}))")
    assert _run(server, course_dir, code)["alive"]
    assert server.alive()
    assert _run(server, course_dir, code)["alive"]


def test_the_server_folder_and_other_submissions_are_out_of_sight(server, course_dir):
    """Does a warm kernel see, of the server's folder, only its own submission's socket folder
    (not the control socket, not the server's log, not another submission's sockets), and
    is the dpm_core it imports the one bound over the installed package?"""
    other = server.submission_folder()
    (other / "planted").write_text("another submission's")
    build = server.build({"__init__.py": "MARK = 'the student build'\n"})
    from course.sandbox import package_folder

    code = ("import json, os, dpm_core\n"
            f"base = {str(server.folder)!r}\n"
            "print(json.dumps({'tree': sorted(os.path.relpath(os.path.join(r, n), base) "
            "for r, ds, fs in os.walk(base) for n in ds + fs), 'mark': dpm_core.MARK}))")
    seen = _run(server, course_dir, code,
                warm_overlays=((build, package_folder("dpm_core")),))
    assert seen["mark"] == "the student build"
    parts = [Path(p).parts for p in seen["tree"]]
    assert {p[0] for p in parts} == {"sockets"}, seen["tree"]  # no control, log or builds
    assert len({p[1] for p in parts if len(p) > 1}) == 1, seen["tree"]  # its own folder only
    assert other.name not in {p[1] for p in parts if len(p) > 1}


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root")
def test_a_warm_kernel_joins_the_submission_cgroups(server, course_dir):
    """Is a warm kernel moved into the submission's memory and pids cgroups before it runs,
    so that what it allocates counts there?"""
    name = f"test-warm-{os.getpid()}-{os.urandom(4).hex()}"
    memory, procs = MemoryCap.create(2 ** 30, name), ProcessCap.create(64, name)
    if memory is None or procs is None:
        pytest.skip("no memory or pids cgroup controller here")
    try:
        code = ("import json, torch; x = torch.ones(64 * 2 ** 20 // 4); "
                "print(json.dumps({'cgroup': open('/proc/self/cgroup').read()}))")
        _run(server, course_dir, code, cgroup=memory.path, pids_cgroup=procs.path)
        assert memory.peak() >= 64 * 2 ** 20
    finally:
        memory.remove()
        procs.remove()


def test_a_server_that_is_gone_leaves_a_cold_kernel(course_dir):
    """When the warm server cannot be reached, does the launcher start the kernel cold (in a
    bwrap of its own, without torch imported) instead of failing?"""
    gone = warm.WarmServer.start(tuple(python_folders()), ENV)
    gone.close()
    gone.sockets.mkdir(parents=True)
    seen = _run(gone, course_dir, "import json, sys, os; print(json.dumps("
                "{'torch_imported': 'torch' in sys.modules, 'cwd': os.getcwd()}))")
    assert not seen["torch_imported"] and seen["cwd"] == str(course_dir["workdir"])


def test_the_server_refuses_to_import_dpm_core(tmp_path):
    """Is a preload list that holds dpm_core (the installed package has the references) refused
    before anything is imported?"""
    from dpm_probe.warm import serve

    with pytest.raises(ValueError, match="dpm_core"):
        serve(str(tmp_path / "control"), ("torch", "dpm_core.vae"))


def test_the_folders_of_servers_that_are_gone_are_swept(server, tmp_path):
    """When a server starts, is the folder of a server that is gone (older than a start, and
    no one listening) removed, while a live server's folder is kept?"""
    stale = Path(warm.tempfile.mkdtemp(prefix=warm._PREFIX))
    (stale / "sockets").mkdir()
    long_ago = time.time() - 2 * warm.START_TIMEOUT
    for path in (stale, server.folder):
        os.utime(path, (long_ago, long_ago))
    warm._sweep()
    assert not stale.exists() and server.folder.exists() and server.alive()
