"""The grader's side of warm kernels (:mod:`dpm_probe.warm`).

One server per worker process: started in bubblewrap on the first notebook that needs it (3
s: it imports torch, matplotlib, ipykernel and the probe), kept for the next ones (a server per
set of read-only folders and environment, at most :data:`KEPT`; each holds about 0.4 GiB,
shared with the kernels it forks). The student builds of ``dpm_core`` are written into its
folder (:meth:`WarmServer.build`), and each kernel binds its assignment's over the installed
package. Its sandbox is a kernel's (:class:`course.sandbox.Sandbox`: the same read-only
folders, uid and environment), with two differences: the
machine's ``/proc`` is bound in (a process in a user namespace may mount a new ``/proc`` only
where one is fully visible; each kernel mounts its own over it, and the server runs no student
code), and its folder (the control socket, the submissions' socket folders) is writable. A
server ends when its worker process does (its standard input is a pipe from the worker).

:func:`request_kernel` is the launcher's side (``python -m course.sandbox launch --warm``):
it hands the server the kernel's arguments, connection file and the files to copy, moves the
new kernel into the submission's cgroups before it may start, and lives as long as the kernel.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from course.sandbox import Sandbox, find_bwrap

__all__ = ["WarmServer", "server_for", "request_kernel", "private_folders", "KEPT",
           "WarmUnavailable"]

#: servers kept per worker process (one per student build in use)
KEPT = 2
#: seconds a server may take to import what it preloads
START_TIMEOUT = 120
#: seconds a kernel may take from the request to its word that it is ready
READY_TIMEOUT = 60
#: the most descriptors one message carries (as dpm_probe.warm reads them)
FDS_PER_MESSAGE = 200
#: the name of a server's folder in the temporary folder begins so
_PREFIX = "dpm-warm-"


class WarmUnavailable(RuntimeError):
    """No warm server could be started or reached: the caller starts a cold kernel."""


def private_folders() -> list:
    """The folders each warm kernel gets fresh tmpfs over: ``/tmp`` and this process's
    temporary folder (where scratch courses are made), parents first."""
    return sorted({"/tmp", str(Path(tempfile.gettempdir()).resolve())}, key=len)


class WarmServer:
    """A running server: its folder (``control``, the socket it listens on; ``sockets``,
    where each submission gets a folder for its kernels' ipc sockets) and its process."""

    def __init__(self, folder: Path, process: subprocess.Popen):
        self.folder, self.process = folder, process
        self.control = folder / "control"
        self.sockets = folder / "sockets"
        self.builds: dict = {}

    @classmethod
    def start(cls, readonly: tuple, env: dict) -> "WarmServer":
        """Start a server whose kernels see ``readonly`` read-only and have ``env``.

        Raises:
            WarmUnavailable: bwrap is missing, or the server did not say it was ready.
        """
        bwrap = find_bwrap()
        if bwrap is None:
            raise WarmUnavailable("bwrap is not installed")
        _sweep()
        folder = Path(tempfile.mkdtemp(prefix=_PREFIX))
        try:
            (folder / "sockets").mkdir()
            sandbox = Sandbox(workdir=folder / "cwd", runtime_dir=folder / "runtime",
                              sockets_dir=folder, readonly=readonly, env=env,
                              disk=64 * 2 ** 20)
            (folder / "runtime").mkdir()
            argv = sandbox.bwrap_argv([sys.executable, "-m", "dpm_probe.warm",
                                       str(folder / "control")], bwrap, host_proc=True)
            log = open(folder / "server.log", "wb")
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=log, start_new_session=True)
            log.close()
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        server = cls(folder, process)
        line = _read_line(process.stdout, START_TIMEOUT)
        if line.strip() != b"ready":
            why = (folder / "server.log").read_text(errors="replace").strip()[-500:]
            server.close()
            raise WarmUnavailable(f"the warm kernel server did not start: {why or 'no word'}")
        return server

    def alive(self) -> bool:
        return self.process.poll() is None

    def build(self, package: dict) -> Path:
        """The folder of the student build ``package`` (``{path: text}``) of ``dpm_core`` in
        this server's folder, written the first time it is asked for."""
        digest = hashlib.sha256(json.dumps(sorted(package.items())).encode()).hexdigest()[:16]
        if digest not in self.builds:
            target = self.folder / "builds" / digest / "dpm_core"
            for rel, text in package.items():
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                (target / rel).write_text(text)
            self.builds[digest] = target
        return self.builds[digest]

    def submission_folder(self) -> Path:
        """A new folder for one submission's kernel sockets (remove it when done)."""
        return Path(tempfile.mkdtemp(prefix="s-", dir=self.sockets))

    def close(self) -> None:
        """Stop the server (its kernels end with their launchers) and remove its folder."""
        try:
            self.process.stdin.close()
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _sweep() -> None:
    """Remove the folders of servers that are gone (a worker process killed before it could
    close its server): older than a server's start, and nobody listening on their socket."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        try:
            if folder.is_symlink() or folder.stat().st_uid != os.getuid() \
                    or time.time() - folder.stat().st_mtime < START_TIMEOUT:
                continue
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
                probe.connect(str(folder / "control"))
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)


def _read_line(stream, timeout: float) -> bytes:
    """One line from a pipe, or b"" after ``timeout`` seconds."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return b""
    return stream.readline()


class _Servers:
    """The servers of this process, by what they were started with; the least recently used
    closed beyond :data:`KEPT`. A server outlives one grading call on purpose (that is what
    makes it warm), so this one table lives as long as the process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.table: OrderedDict = OrderedDict()
        atexit.register(self.close_all)

    def close_all(self) -> None:
        with self.lock:
            while self.table:
                self.table.popitem()[1].close()

    def get(self, readonly: tuple, env: dict) -> WarmServer:
        key = json.dumps([[str(p) for p in readonly], sorted(env.items())])
        with self.lock:
            server = self.table.pop(key, None)
            if server is not None and not server.alive():
                server.close()
                server = None
            if server is None:
                server = WarmServer.start(readonly, env)
            self.table[key] = server
            while len(self.table) > KEPT:
                self.table.popitem(last=False)[1].close()
            return server


_servers = _Servers()


def server_for(readonly: tuple, env: dict) -> WarmServer:
    """This process's server for kernels that see ``readonly`` and have ``env``, started if
    there is none.

    Raises:
        WarmUnavailable: when none can be started here.
    """
    return _servers.get(tuple(readonly), dict(env))


# -- the launcher's side ------------------------------------------------------------------


def request_kernel(control: str, request: dict, files: list, cgroups: list) -> int:
    """Ask the server listening on ``control`` for a kernel; its exit code when it ends.

    ``request`` holds ``argv`` (ipykernel's arguments), ``connection_file``, ``workdir``,
    ``disk``, ``private``, ``hidden``, ``overlays`` and ``dirs``; ``files`` is ``[(path
    relative to the working directory, open descriptor)]``. The kernel is moved into each of ``cgroups``
    before it starts.

    Raises:
        WarmUnavailable: the server could not be reached or refused before a kernel ran (the
            caller may start a cold one).
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    try:
        conn.connect(control)
        with open(request["connection_file"]) as f:
            connection = f.read()
        sockets = os.path.dirname(json.loads(connection)["ip"])
        message = dict(request, connection=connection, sockets=sockets,
                       files=[rel for rel, _ in files])
        socket.send_fds(conn, [json.dumps(message).encode()], [1, 2, theirs.fileno()])
        fds = [fd for _, fd in files]
        for start in range(0, len(fds), FDS_PER_MESSAGE):
            socket.send_fds(conn, [b"files"], fds[start:start + FDS_PER_MESSAGE])
    except (OSError, ValueError, KeyError) as err:
        raise WarmUnavailable(f"the warm kernel server could not be reached: {err}") from None
    finally:
        theirs.close()
        for _, fd in files:
            os.close(fd)
    pid = _ready(mine, conn)
    for group in cgroups:
        (Path(group) / "cgroup.procs").write_text(str(pid))
    mine.send(b"go")
    mine.close()
    while True:
        word = conn.recv(64)
        if not word:
            return 1  # the server went away with the kernel
        if word.startswith(b"exit "):
            return int(word.split()[1])


def _ready(mine: socket.socket, conn: socket.socket) -> int:
    """The kernel's PID in this process's namespace, from the credentials of its word."""
    import select

    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        readable, _, _ = select.select([mine, conn], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            raise WarmUnavailable(f"the warm kernel did not start within {READY_TIMEOUT} s")
        if conn in readable:
            word = conn.recv(4096)
            raise WarmUnavailable(f"the warm kernel server refused: "
                                  f"{word.decode(errors='replace') or 'it went away'}")
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        data, ancillary, _, _ = mine.recvmsg(16, size)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:struct.calcsize("3i")])[0]
                if data == b"ready" and pid > 0:
                    return pid
        raise WarmUnavailable("the warm kernel's word came without its credentials")
