"""Warm kernels: a sandboxed server that imports once and forks a fresh kernel per notebook.

A notebook's setup cell imports torch, matplotlib and ``dpm_core`` (about 2 s), and
ipykernel starts in 0.6 s more: most of the grading time of a short notebook. The grader
(``course.warm``) therefore starts, per worker, one server in bubblewrap, with the same
read-only view and uid as a kernel's sandbox, that has imported torch, matplotlib, ipykernel
and the probe, and asks it for one kernel per notebook. The server runs no student code; each
kernel is a process forked from it that, before any student code runs, leaves for namespaces
of its own:

* a new user namespace (uid 65534 as before, every capability dropped before the kernel
  starts, ``no_new_privs``), with new mount, PID, IPC, network and UTS namespaces: the
  kernel is PID 1 of its own namespace (all it starts dies with it), sees a ``/proc`` of
  that namespace only, SysV IPC of its own, and a loopback of its own;
* the student build of ``dpm_core`` of its assignment bound over the installed one (the
  server imports no ``dpm_core``, so that no reference is in its memory);
* fresh tmpfs of ``disk`` bytes each for ``/tmp`` (and the grader's temporary folder, when
  that is another), ``/dev/shm`` and the working directory, mounted at the notebook's path
  and filled with copies of the files handed to it; what the server's sandbox showed read-only
  under those folders (Python, ``dpm_core``, the data) is bound again at the same paths, so
  that nothing of another notebook's kernel, nor the server's own folder, is visible;
* its connection file on a read-only tmpfs at the path the grader wrote it to, and its
  ZeroMQ ``ipc`` sockets in the submission's own folder, bound in: the only folder it shares
  writable with the grader.

The request comes from the kernelspec's launcher (``course.sandbox launch --warm``), which
runs outside the sandbox, over a Unix socket that only the server's own sandbox and the grader
see. The kernel says it is ready on a socket the launcher passed it; the launcher reads the
kernel's PID, as the machine numbers it, from the credentials the Linux kernel attaches to
that message, moves it into the submission's cgroups (memory, processes), and only then lets
it start. The forked process in between waits on the launcher's connection: when the launcher
goes (killed by the grader), it kills the kernel, and when the kernel ends, it tells the
launcher how.

Run as ``python -m dpm_probe.warm CONTROL [--preload MODULE]...``; the server answers until
its standard input closes (the grader's end of a pipe).
"""

from __future__ import annotations

import codecs
import ctypes
import json
import os
import select
import signal
import socket
import struct
import sys

__all__ = ["PRELOAD", "serve"]

#: what notebooks import: imported once by the server, shared by every kernel it forks. Not
#: ``dpm_core``: each kernel imports the student build of its assignment, bound over the
#: installed package (which holds the references) before any of it is imported
PRELOAD = ("numpy", "torch", "torch.distributions", "torch.nn.functional",
           "torch.autograd.functional", "matplotlib", "matplotlib.pyplot", "pandas", "seaborn",
           "tqdm.auto", "ipywidgets", "ipykernel.kernelapp", "matplotlib_inline.backend_inline",
           "dpm_probe.runtime")

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 0x4000, 1 << 18
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT = 24, 38, 47
_PR_CAP_AMBIENT_CLEAR_ALL, _PR_SET_DUMPABLE = 4, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
#: the most descriptors one message carries (the Linux kernel's SCM_MAX_FD is 253)
FDS_PER_MESSAGE = 200

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target: str, fstype, flags: int, data=None) -> None:
    encode = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags),
                       encode(data)), f"mount {target}")


def _tmpfs(target: str, size: int, mode: str = "1777") -> None:
    _mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={size},mode={mode}")


# -- the server ---------------------------------------------------------------------------


def serve(control: str, preload=PRELOAD) -> None:
    """Import ``preload``, listen on the Unix socket ``control`` and fork a kernel per request,
    until standard input closes."""
    import importlib

    if any(name == "dpm_core" or name.startswith("dpm_core.") for name in preload):
        raise ValueError("preload must not hold dpm_core: each kernel imports its student build")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for name in preload:
        importlib.import_module(name)
    _warm_up()
    if any(name == "dpm_core" or name.startswith("dpm_core.") for name in sys.modules):
        raise RuntimeError("a preloaded module imported dpm_core, which holds the references")
    # a forked process gets one thread: nothing imported may have started another
    if len(os.listdir("/proc/self/task")) != 1:
        raise RuntimeError("the warm kernel server has more than one thread after its imports")
    # same uid as the kernels, so not traceable by them (their PID namespace hides it too)
    _check(_libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the forked processes are reaped
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(control)
    listener.listen(16)
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            return  # the grader is gone
        if listener in readable:
            conn, _ = listener.accept()
            fds: dict = {}
            try:
                request = _receive_request(conn, fds)
            except (OSError, ValueError) as err:
                _send(conn, f"error: {err}".encode())
                conn.close()
                for fd in fds.values():
                    os.close(fd)
                continue
            if os.fork() == 0:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                code = 1
                try:
                    code = _supervise(conn, request, fds)
                finally:
                    os._exit(code)
            conn.close()
            for fd in fds.values():
                os.close(fd)


def _warm_up() -> None:
    """What every notebook's first steps pay once: torch's first operators and autograd, a
    figure, the inline backend."""
    import matplotlib.pyplot as plt
    import torch

    torch.set_num_threads(1)
    layer = torch.nn.Linear(4, 4)
    layer(torch.randn(2, 4)).pow(2).sum().backward()
    torch.optim.Adam(layer.parameters()).step()
    plt.close(plt.figure())


def _receive_request(conn: socket.socket, fds: dict) -> dict:
    """The JSON request; the descriptors it names go into ``fds`` (``stdout``, ``stderr``,
    ``hello``, then ``file:0``... from the messages that follow), as they arrive."""
    data, first, _, _ = socket.recv_fds(conn, 2 ** 20, 3)
    fds.update(zip(("stdout", "stderr", "hello"), first))
    if len(first) != 3:
        raise ValueError("a request carries stdout, stderr and the kernel's socket")
    request = json.loads(data)
    count = len(request.get("files", ()))
    received = 0
    while received < count:
        _, more, _, _ = socket.recv_fds(conn, 16, FDS_PER_MESSAGE)
        if not more:
            raise ValueError("the request's files did not arrive")
        for fd in more:
            fds[f"file:{received}"] = fd
            received += 1
    return request


def _send(conn: socket.socket, data: bytes) -> None:
    try:
        conn.send(data)
    except OSError:
        pass


# -- one kernel ---------------------------------------------------------------------------


def _supervise(conn: socket.socket, request: dict, fds: dict) -> int:
    """The forked process: new namespaces, then the kernel as PID 1 of its own; kill it when
    the launcher goes, tell the launcher when it ends."""
    try:
        os.setsid()  # out of the server's process group
        _enter_namespaces()
        pid = os.fork()
    except OSError as err:
        _send(conn, f"error: {err}".encode())
        return 1
    if pid == 0:
        conn.close()
        code = 1
        try:
            # a session of its own, as bwrap's --new-session gives: kill(0, ...) reaches
            # no process outside the kernel's namespace
            os.setsid()
            code = _kernel(request, fds)
        except BaseException as err:  # said on the kernel's stderr, which nbgrader logs
            os.write(fds["stderr"], f"warm kernel: {err!r}\n".encode())
        finally:
            os._exit(code)
    for fd in fds.values():
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    while True:
        readable, _, _ = select.select([conn, pidfd], [], [])
        if pidfd in readable:
            _, status = os.waitpid(pid, 0)
            _send(conn, f"exit {os.waitstatus_to_exitcode(status)}".encode())
            return 0
        if not conn.recv(16):  # the launcher is gone: so is its kernel
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return 0


def _enter_namespaces() -> None:
    """New user, mount, PID (for the next child), IPC, network and UTS namespaces, with the
    same uid and gid inside as outside."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWIPC
                         | _CLONE_NEWNET | _CLONE_NEWUTS), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _kernel(request: dict, fds: dict) -> int:
    """PID 1 of the new namespace: lay out its file system, wait for the launcher's word,
    drop every capability and run ipykernel with the request's arguments."""
    hello = socket.socket(fileno=fds.pop("hello"))
    workdir, disk = request["workdir"], int(request["disk"])
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    sockets = os.open(request["sockets"], os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    overlays = [(os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW), target)
                for source, target in request.get("overlays", ())]
    for folder in request["private"]:
        _private_tmpfs(folder, disk, hidden=request["hidden"])
    for fd, target in overlays:  # the student build over the installed dpm_core
        _mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
        os.close(fd)
    for folder in (workdir, request["sockets"], os.path.dirname(request["connection_file"])):
        if not any(_inside(folder, p) for p in request["private"]):
            raise ValueError(f"{folder} is not inside a private folder {request['private']}")
    os.makedirs(workdir, exist_ok=True)
    _tmpfs(workdir, disk, mode="0755")
    _copy_in(workdir, request, fds)
    os.makedirs(request["sockets"], exist_ok=True)
    _mount(f"/proc/self/fd/{sockets}", request["sockets"], None, _MS_BIND)
    os.close(sockets)
    runtime = os.path.dirname(request["connection_file"])
    os.makedirs(runtime, exist_ok=True)
    _tmpfs(runtime, 2 ** 20, mode="0755")
    with open(request["connection_file"], "w") as f:
        f.write(request["connection"])
    _mount(None, runtime, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    _tmpfs("/dev/shm", disk)
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    _loopback_up()
    if request.get("address_space"):
        import resource

        limit = int(request["address_space"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    hello.send(b"ready")  # the launcher reads this process's PID from the message's credentials
    if hello.recv(16) != b"go":
        return 1
    hello.close()
    os.dup2(fds.pop("stdout"), 1)
    os.dup2(fds.pop("stderr"), 2)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.closerange(3, _max_fd())
    _drop_capabilities()
    os.chdir(workdir)
    return _run_ipykernel(request["argv"])


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _private_tmpfs(folder: str, size: int, hidden) -> None:
    """A fresh tmpfs at ``folder``, with what was mounted below it bound again at the same
    paths (read-only stays read-only), except what lies in ``hidden``."""
    below = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = codecs.decode(line.split()[4], "unicode_escape")
            if point != folder and _inside(point, folder) \
                    and not any(_inside(point, h) for h in hidden):
                below.append(point)
    tops = []
    for point in sorted(dict.fromkeys(below)):
        if not any(_inside(point, t) for t in tops):
            tops.append(point)
    held = [(point, os.open(point, os.O_PATH | os.O_NOFOLLOW)) for point in tops]
    os.makedirs(folder, exist_ok=True)
    _tmpfs(folder, size)
    for point, fd in held:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(point, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(point), exist_ok=True)
            os.close(os.open(point, os.O_WRONLY | os.O_CREAT, 0o644))
        _mount(f"/proc/self/fd/{fd}", point, None, _MS_BIND | _MS_REC)
        os.close(fd)


def _copy_in(workdir: str, request: dict, fds: dict) -> None:
    """The files handed to the kernel (already opened by the launcher, links refused), written
    into its working directory."""
    for rel in request.get("dirs", ()):
        os.makedirs(_below(workdir, rel), exist_ok=True)
    for index, rel in enumerate(request.get("files", ())):
        source = fds.pop(f"file:{index}")
        target = os.open(_below(workdir, rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | os.O_NOFOLLOW, 0o644)
        try:
            while os.sendfile(target, source, None, 2 ** 20):
                pass
        finally:
            os.close(target)
            os.close(source)


def _below(folder: str, rel: str) -> str:
    path = os.path.normpath(os.path.join(folder, rel))
    if os.path.isabs(rel) or not _inside(path, folder) or path == folder:
        raise ValueError(f"{rel!r} is not a path inside the working directory")
    return path


def _loopback_up() -> None:
    """Bring up the new network namespace's loopback, as bwrap does."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def _max_fd() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _drop_capabilities() -> None:
    """No capability left, in any set, and none to gain again (``no_new_privs``)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _check(_libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), "prctl(PR_CAPBSET_DROP)")
    _check(_libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(ambient)")
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = ctypes.create_string_buffer(24)  # two of {effective, permitted, inheritable}: zero
    _check(_libc.capset(ctypes.c_char_p(header), data), "capset")
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _run_ipykernel(argv: list) -> int:
    """What ``python -m ipykernel_launcher ARGV`` does, in this process."""
    import random

    import numpy as np
    from ipykernel.kernelapp import IPKernelApp

    random.seed()
    np.random.seed()
    sys.argv = ["ipykernel_launcher", *argv]
    try:
        IPKernelApp.launch_instance(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dpm_probe.warm")
    parser.add_argument("control", help="the Unix socket to listen on")
    parser.add_argument("--preload", action="append", help="a module to import first "
                        "(repeat it; default: what the course's notebooks import)")
    args = parser.parse_args()
    serve(args.control, tuple(args.preload) if args.preload else PRELOAD)
