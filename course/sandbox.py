"""The sandbox a student's kernel runs in: bubblewrap, bounded memory, processes and disk.

Grading runs each student's notebooks in a Jupyter kernel started through a kernelspec
whose ``argv`` wraps ``ipykernel_launcher`` in Debian's ``bwrap`` (bubblewrap). Inside:

* uid and gid 65534 (``nobody``) in a user namespace, every capability dropped;
* new network, PID, IPC, UTS and cgroup namespaces: loopback only, no other process of the
  machine visible, and every process the kernel starts dies with it (``--die-with-parent``
  and the PID namespace);
* a read-only view of the system (``/usr``, ``/etc``), of Python, of the installed
  ``dpm_core`` (and ``dpm_probe``) and data, and of the folder of the kernel's connection
  file; the sandbox's own root and ``/dev`` are read-only too;
* the kernel's working directory, ``/tmp`` and ``/dev/shm`` are private tmpfs of ``disk``
  bytes each, gone with the kernel. The working directory is mounted at the path of the
  notebook's folder in the scratch course, so the notebook sees the cwd it expects, and
  starts with copies of the files that nbgrader put next to the notebook (the submission's
  and the assignment's other files; no notebook). The folder on disk, where nbgrader writes
  the autograded notebook, is never visible to the kernel: nothing the kernel writes (a
  file, a link) reaches what the grader writes or reads;
* the only folder the kernel shares writable with the grader holds the kernel's ZeroMQ
  ``ipc`` sockets; the grader writes nothing there and reads no file from it;
* the repository, ``source/``, the gradebook and other students' work are not mounted at all;
* a clean environment (``--clearenv``): the instructor's variables do not leak in.

Memory and processes are capped per submission (:mod:`course.cgroups`). With root rights, in
cgroups that the
kernel of every notebook of the submission joins before it starts, so that they count
every process of the submission (bwrap, the kernel, all it starts) together: memory
(v2 ``memory.max`` or v1 ``memory.limit_in_bytes``; it counts the kernel's tmpfs pages too,
and gives the peak) and tasks, processes and threads alike (``pids.max``). Without root,
memory is capped per process with ``RLIMIT_AS`` (as ``prlimit --as`` does) and there is no
cap on processes: ``RLIMIT_NPROC`` counts every process of a real user id, and the sandbox's
user is the grader's own outside it (root, whom the limit does not bind, or the instructor,
whose own processes it would count and stop).

The kernel is started as ``python -m course.sandbox launch ... -- bwrap ...``: that small
launcher joins the cgroups or sets the limit, opens the files to copy into the working
directory, then replaces itself with ``bwrap``. With ``--warm`` it first asks the worker's warm
kernel server (:mod:`course.warm`) for a kernel forked into the same layout, and stays as long
as that kernel; it falls back to ``bwrap`` when the server cannot give one.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from course.cgroups import MemoryCap, ProcessCap

__all__ = [
    "NOBODY",
    "KERNEL_NAME",
    "SandboxUnavailable",
    "find_bwrap",
    "check_sandbox",
    "MemoryCap",
    "ProcessCap",
    "Sandbox",
    "write_kernelspec",
    "package_folder",
    "python_folders",
    "gib",
]

#: uid and gid of the kernel inside the sandbox
NOBODY = 65534
#: the name of the kernelspec that grading writes and nbgrader's Execute is told to use
KERNEL_NAME = "dpm-sandbox"

#: what nbgrader leaves out when it copies a submission's other files next to the notebook
#: (``CourseDirectory.ignore`` and the notebooks): the kernel's copies leave them out too
_NOT_COPIED = (".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.ipynb")
#: the most files copied into the kernel's working directory (each is an open descriptor)
_MAX_COPIES = 256

_INSTALL_HINT = (
    "Install bubblewrap (Debian/Ubuntu: `sudo apt-get install bubblewrap`; Fedora: "
    "`sudo dnf install bubblewrap`). It needs Linux with user namespaces; there is no "
    "bubblewrap for macOS or Windows: grade on a Linux machine or a Linux Dask cluster. "
    "To run untrusted student code WITHOUT a sandbox anyway, pass --unsafe-no-sandbox."
)


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made on this machine; the message says why and what to do."""


def find_bwrap() -> Optional[str]:
    """The path of ``bwrap``, or None."""
    return shutil.which("bwrap")


def check_sandbox() -> str:
    """Start a trivial sandbox with the grading flags; return bwrap's path or raise.

    Raises:
        SandboxUnavailable: when bwrap is missing or cannot create the namespaces here
            (the message says how to install it, and names the override flag).
    """
    bwrap = find_bwrap()
    if bwrap is None:
        raise SandboxUnavailable(f"bwrap (bubblewrap) is not installed. {_INSTALL_HINT}")
    probe = [bwrap, *_isolation_flags(), "--size", str(2 ** 20), "--tmpfs", "/tmp",
             *_system_binds(), "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/",
             "--", "/bin/true"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SandboxUnavailable(f"bwrap could not start: {err}. {_INSTALL_HINT}") from None
    if result.returncode != 0:
        raise SandboxUnavailable(
            f"bwrap is installed but cannot create a sandbox here (exit {result.returncode}: "
            f"{result.stderr.strip()}); user namespaces may be disabled "
            f"(sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces). {_INSTALL_HINT}")
    return bwrap


def _isolation_flags() -> list[str]:
    return ["--unshare-all", "--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL",
            "--die-with-parent", "--new-session"]


def _system_binds() -> list[str]:
    """Read-only ``/usr`` and ``/etc``; ``/bin``, ``/lib``... as the links or folders they are."""
    args = ["--ro-bind", "/usr", "/usr", "--ro-bind-try", "/etc", "/etc"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    return args


def _gpu_binds() -> list[str]:
    """The NVIDIA device nodes and driver information, when the machine has them."""
    nodes = sorted(str(p) for p in Path("/dev").glob("nvidia*"))
    if not nodes:
        return []
    args = []
    for node in nodes:
        args += ["--dev-bind", node, node]
    args += ["--ro-bind-try", "/proc/driver/nvidia", "/proc/driver/nvidia",
             "--ro-bind-try", "/sys", "/sys"]
    return args


@dataclass(frozen=True)
class Sandbox:
    """How a kernel is confined: what it may read and write, its memory, processes and disk.

    Attributes:
        workdir: the notebook's folder. The kernel's working directory is a private tmpfs
            mounted at this path; the folder on disk is never shown to it.
        runtime_dir: the folder of the kernel's connection file, shown read-only.
        readonly: more folders to show read-only (Python, ``dpm_core``, the data).
        overlays: ``(folder, path)`` pairs: ``folder`` shown read-only at ``path``, over what
            ``readonly`` shows there (the students' build of ``dpm_core`` over the installed one).
        memory: the memory cap in bytes (0: none).
        cgroup: the submission's memory cgroup, or None for ``RLIMIT_AS``.
        env: the kernel's whole environment.
        sockets_dir: the folder of the kernel's ``ipc`` sockets: the only one it shares
            writable with the grader (None: none).
        disk: the size in bytes of each of the kernel's tmpfs (working directory, ``/tmp``,
            ``/dev/shm``).
        pids_cgroup: the submission's pids cgroup (the same folder as ``cgroup`` in cgroup
            v2), or None: no cap on processes.
        warm: the control socket of a warm kernel server (:mod:`course.warm`) that the
            launcher asks for the kernel, in namespaces and tmpfs of its own laid out as
            here; a cold kernel (bwrap) when it cannot be reached. None: always cold.
        warm_hidden: the warm server's own folder, which its kernels must not see.
        warm_overlays: ``overlays`` for a warm kernel (the student build, written in the warm
            server's folder).

    Raises:
        ValueError: when ``disk`` is not a positive number of bytes.
    """

    workdir: Path
    runtime_dir: Path
    readonly: tuple = ()
    memory: int = 0
    cgroup: Optional[Path] = None
    env: dict = field(default_factory=dict)
    sockets_dir: Optional[Path] = None
    disk: int = 2 ** 30
    pids_cgroup: Optional[Path] = None
    overlays: tuple = ()
    warm: Optional[Path] = None
    warm_hidden: Optional[Path] = None
    warm_overlays: tuple = ()

    def __post_init__(self):
        if not isinstance(self.disk, int) or self.disk <= 0:
            raise ValueError(f"disk must be a positive number of bytes, got {self.disk!r}")

    def bwrap_argv(self, command: Sequence[str], bwrap: str = "bwrap",
                   host_proc: bool = False) -> list[str]:
        """The ``bwrap`` command line that runs ``command`` inside this sandbox (with
        ``host_proc``, the machine's ``/proc`` instead of one of its own PID namespace: for a
        warm kernel server only, see :mod:`course.warm`)."""
        size = ["--size", str(self.disk)]
        proc = ["--bind", "/proc", "/proc"] if host_proc else ["--proc", "/proc"]
        # the private /tmp first: a bind made before it under /tmp (a virtualenv or a scratch
        # course in /tmp) would be hidden by it; /dev/shm would be part of /dev's own tmpfs,
        # which has no size
        args = [bwrap, *_isolation_flags(), *size, "--tmpfs", "/tmp", *proc,
                "--dev", "/dev", *size, "--tmpfs", "/dev/shm", *_system_binds(), *_gpu_binds()]
        for path in _distinct_folders(self.readonly):
            args += ["--ro-bind", str(path), str(path)]
        for folder, path in self.overlays:
            args += ["--ro-bind", str(folder), str(path)]
        args += ["--ro-bind", str(self.runtime_dir), str(self.runtime_dir)]
        if self.sockets_dir is not None:
            args += ["--bind", str(self.sockets_dir), str(self.sockets_dir)]
        # last, so that no bind lands inside it; the launcher copies files in just after it
        args += [*size, "--tmpfs", str(self.workdir)]
        # bwrap's own root and /dev are tmpfs without a size that the kernel could fill
        args += ["--remount-ro", "/dev", "--remount-ro", "/"]
        args += ["--chdir", str(self.workdir), "--clearenv"]
        for key, value in sorted(self.env.items()):
            args += ["--setenv", key, str(value)]
        return [*args, "--", *command]

    def launcher_argv(self) -> list[str]:
        """``python -m course.sandbox launch`` with this sandbox's cgroups or limit and copies;
        ``--`` and a :meth:`bwrap_argv` follow it."""
        launcher = [sys.executable, "-m", "course.sandbox", "launch"]
        for group in dict.fromkeys(g for g in (self.cgroup, self.pids_cgroup) if g is not None):
            launcher += ["--cgroup", str(group)]
        if self.cgroup is None and self.memory:
            launcher += ["--address-space", str(self.memory)]
        launcher += ["--copy-into", str(self.workdir), "--copy-limit", str(self.disk // 2)]
        if self.warm is not None:
            from course.warm import private_folders

            launcher += ["--warm", str(self.warm), "--disk", str(self.disk),
                         "--hidden", str(self.warm_hidden or self.warm.parent)]
            for folder in private_folders():
                launcher += ["--private", folder]
            for folder, path in self.warm_overlays:
                launcher += ["--warm-overlay", str(folder), str(path)]
        return launcher

    def kernel_argv(self, bwrap: str = "bwrap") -> list[str]:
        """A kernelspec ``argv``: the launcher, then bwrap, then ``ipykernel_launcher``."""
        kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        return [*self.launcher_argv(), "--", *self.bwrap_argv(kernel, bwrap)]


def _distinct_folders(paths) -> list[Path]:
    """Existing folders, without those inside another one of the list."""
    folders = sorted({Path(p).resolve() for p in paths if p and Path(p).exists()})
    kept: list[Path] = []
    for path in folders:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def package_folder(name: str) -> Path:
    """The folder that the installed package ``name`` is imported from (in an editable
    install, its folder in the repository).

    Raises:
        ValueError: when no package ``name`` is installed.
    """
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"name must be an installed package, got {name!r}")
    return Path(spec.submodule_search_locations[0])


def python_folders() -> list[Path]:
    """The folders the kernel's Python needs: its prefixes and where ``dpm_core`` (and the
    kernel side of the grading, ``dpm_probe``, where installed) live."""
    folders = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    for package in ("dpm_core", "dpm_probe"):
        try:
            folders.add(package_folder(package))
        except ValueError:
            pass
    return sorted(folders)


def write_kernelspec(jupyter_dir: Path, argv: list[str]) -> Path:
    """Write ``<jupyter_dir>/kernels/dpm-sandbox/kernel.json``; returns its folder.

    Point ``JUPYTER_PATH`` at ``jupyter_dir`` for Jupyter to find it.
    """
    folder = Path(jupyter_dir) / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"argv": argv, "display_name": "Python 3 (grading sandbox)", "language": "python",
            "interrupt_mode": "message", "metadata": {"debugger": False}}
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))
    return folder


def gib(n: int) -> str:
    """``"4 GiB"`` for 4 * 2**30 bytes, ``"1.5 GiB"`` for 1.5 * 2**30, ``"600 MiB"`` below 1 GiB."""
    return f"{n / 2 ** 30:.3g} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.3g} MiB"


def _copy_in(folder: Path, limit: int) -> list[str]:
    """bwrap options that copy the files under ``folder`` on disk into the tmpfs mounted at
    the same path in the sandbox, their descriptors left open for bwrap (which closes them)."""
    dirs, files = _files_to_copy(folder, limit)
    args = []
    for path in dirs:
        args += ["--dir", path]
    for path, fd in files:
        os.set_inheritable(fd, True)
        args += ["--perms", "0644", "--file", str(fd), path]
    return args


def _files_to_copy(folder: Path, limit: int) -> tuple:
    """``(folders, [(path, open descriptor)])``: what under ``folder`` on disk the kernel's
    working directory starts with.

    Regular files only, each opened without following a link; nbgrader's ignored names and
    the notebooks are left out, and so is what would pass ``limit`` bytes or ``_MAX_COPIES``
    files (said on stderr, which nbgrader logs).
    """
    dirs, files, used, left_out = [], [], 0, []
    for root, subdirs, names in os.walk(folder):  # does not descend into links to folders
        subdirs[:] = sorted(d for d in subdirs if not _not_copied(d)
                            and not os.path.islink(os.path.join(root, d)))
        if root != str(folder):
            dirs.append(root)
        for name in sorted(f for f in names if not _not_copied(f)):
            path = os.path.join(root, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:  # a link (ELOOP), or gone
                left_out.append(path)
                continue
            size = os.fstat(fd)
            if not stat.S_ISREG(size.st_mode) or used + size.st_size > limit \
                    or len(files) >= _MAX_COPIES:
                os.close(fd)
                left_out.append(path)
                continue
            used += size.st_size
            files.append((path, fd))
    if left_out:
        print(f"course.sandbox: not copied into the kernel's folder: {', '.join(left_out)}",
              file=sys.stderr)
    return dirs, files


def _not_copied(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in _NOT_COPIED)


def _launch(argv: list[str]) -> None:
    """``python -m course.sandbox launch [--cgroup DIR]... [--address-space BYTES]
    [--copy-into DIR [--copy-limit BYTES]] -- bwrap ...``."""
    parser = argparse.ArgumentParser(prog="python -m course.sandbox launch")
    parser.add_argument("--cgroup", type=Path, action="append", default=[],
                        help="a cgroup to join (repeat it: the memory and the pids groups)")
    parser.add_argument("--address-space", type=int, default=0)
    parser.add_argument("--copy-into", default="",
                        help="copy this folder's files into the bwrap tmpfs mounted over it")
    parser.add_argument("--copy-limit", type=int, default=2 ** 30)
    parser.add_argument("--warm", default="", help="ask this warm kernel server first")
    parser.add_argument("--disk", type=int, default=2 ** 30)
    parser.add_argument("--private", action="append", default=[])
    parser.add_argument("--hidden", default="")
    parser.add_argument("--warm-overlay", nargs=2, action="append", default=[])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    if args.warm:
        _launch_warm(args, command)  # returns only when no warm kernel could be had
    for group in args.cgroup:  # first, so that everything below is counted
        (group / "cgroup.procs").write_text(str(os.getpid()))
    if not args.cgroup and args.address_space:
        resource.setrlimit(resource.RLIMIT_AS, (args.address_space, args.address_space))
    if args.copy_into:
        at = next((i + 2 for i in range(len(command) - 1)
                   if command[i:i + 2] == ["--tmpfs", args.copy_into]), None)
        if at is None:
            parser.error(f"--copy-into {args.copy_into}: the bwrap command has no "
                         f"`--tmpfs {args.copy_into}`")
        command[at:at] = _copy_in(Path(args.copy_into), args.copy_limit)
    os.execvp(command[0], command)


def _launch_warm(args, command: list) -> None:
    """Run the kernel of ``command`` (``... ipykernel_launcher ARGS``) as a warm kernel and exit
    with its code; return (said on stderr) when the server cannot give one."""
    from course.warm import WarmUnavailable, request_kernel

    if "ipykernel_launcher" not in command:
        return
    argv = command[command.index("ipykernel_launcher") + 1:]
    if "-f" not in argv[:-1]:
        return
    dirs, files = _files_to_copy(Path(args.copy_into), args.copy_limit)
    workdir = os.path.join(args.copy_into, "")
    request = {"argv": argv, "connection_file": argv[argv.index("-f") + 1],
               "workdir": args.copy_into, "disk": args.disk, "private": args.private,
               "hidden": [args.hidden], "address_space": 0 if args.cgroup else args.address_space,
               "overlays": args.warm_overlay,
               "dirs": [os.path.relpath(d, workdir) for d in dirs]}
    try:
        code = request_kernel(args.warm, request,
                              [(os.path.relpath(p, workdir), fd) for p, fd in files],
                              args.cgroup)
    except WarmUnavailable as err:
        print(f"course.sandbox: {err}; starting a cold kernel", file=sys.stderr)
        return
    sys.exit(code)


if __name__ == "__main__":
    if sys.argv[1:2] != ["launch"]:
        sys.exit("usage: python -m course.sandbox launch [--cgroup DIR]... "
                 "[--address-space BYTES] [--copy-into DIR] -- bwrap ...")
    _launch(sys.argv[2:])
