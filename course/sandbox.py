"""The sandbox a student's kernel runs in: bubblewrap, a memory cap, no network.

Grading runs each student's notebooks in a Jupyter kernel started through a kernelspec
whose ``argv`` wraps ``ipykernel_launcher`` in Debian's ``bwrap`` (bubblewrap). Inside:

* uid and gid 65534 (``nobody``) in a user namespace, every capability dropped;
* new network, PID, IPC, UTS and cgroup namespaces: loopback only, no other process of the
  machine visible, and every process the kernel starts dies with it (``--die-with-parent``
  and the PID namespace);
* a read-only view of the system (``/usr``, ``/etc``), of Python and of the installed
  ``dpm_core`` and data; the only writable folders are the notebook's own folder in the
  scratch course and the folder of the kernel's ZeroMQ ``ipc`` sockets; a private ``/tmp``;
* the repository, ``source/``, the gradebook and other students' work are not mounted at all;
* a clean environment (``--clearenv``): the instructor's variables do not leak in.

Memory is capped per submission: with root rights in a cgroup (v2 ``memory.max`` or v1
``memory.limit_in_bytes``), where the kernel of every notebook of the submission is put,
so the cap also gives the peak; otherwise with ``RLIMIT_AS`` (as ``prlimit --as`` does).

The kernel is started as ``python -m course.sandbox launch ... -- bwrap ...``: that small
launcher joins the cgroup or sets the limit, then replaces itself with ``bwrap``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

__all__ = [
    "NOBODY",
    "KERNEL_NAME",
    "SandboxUnavailable",
    "find_bwrap",
    "check_sandbox",
    "MemoryCap",
    "Sandbox",
    "write_kernelspec",
    "python_folders",
    "gib",
]

#: uid and gid of the kernel inside the sandbox
NOBODY = 65534
#: the name of the kernelspec that grading writes and nbgrader's Execute is told to use
KERNEL_NAME = "dpm-sandbox"

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
    probe = [bwrap, *_isolation_flags(), *_system_binds(), "--proc", "/proc", "--dev", "/dev",
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


class MemoryCap:
    """A cgroup that caps the memory of every process of one submission.

    Use :meth:`create`; it returns None where no cgroup can be made (not root, or no
    memory controller), and the caller falls back to ``RLIMIT_AS``.
    """

    V1_ROOT = Path("/sys/fs/cgroup/memory")
    V2_ROOT = Path("/sys/fs/cgroup")

    def __init__(self, path: Path, limit: int, version: int):
        self.path, self.limit, self.version = path, limit, version

    @classmethod
    def create(cls, limit: int, name: str = "") -> Optional["MemoryCap"]:
        """A new cgroup limited to ``limit`` bytes, or None when this machine cannot make one."""
        name = name or uuid.uuid4().hex
        v2 = cls.V2_ROOT / "cgroup.controllers"
        candidates = []
        if v2.exists() and "memory" in v2.read_text().split():
            candidates.append((cls.V2_ROOT / "dpm-grading" / name, 2))
        if (cls.V1_ROOT / "memory.limit_in_bytes").exists():
            candidates.append((cls.V1_ROOT / "dpm-grading" / name, 1))
        for path, version in candidates:
            try:
                if version == 2:
                    parent = path.parent
                    parent.mkdir(exist_ok=True)
                    (cls.V2_ROOT / "cgroup.subtree_control").write_text("+memory")
                    (parent / "cgroup.subtree_control").write_text("+memory")
                    path.mkdir()
                    (path / "memory.max").write_text(str(limit))
                    (path / "memory.swap.max").write_text("0")
                else:
                    path.mkdir(parents=True)
                    (path / "memory.limit_in_bytes").write_text(str(limit))
                    swap = path / "memory.memsw.limit_in_bytes"
                    if swap.exists():
                        swap.write_text(str(limit))
                return cls(path, limit, version)
            except OSError:
                if path.exists():
                    try:
                        path.rmdir()
                    except OSError:
                        pass
        return None

    @classmethod
    def open(cls, path, limit: int) -> "MemoryCap":
        """The existing group at ``path`` (made by :meth:`create`)."""
        path = Path(path)
        return cls(path, limit, 2 if (path / "memory.max").exists() else 1)

    def _read(self, name: str) -> str:
        try:
            return (self.path / name).read_text()
        except OSError:
            return ""

    def peak(self) -> int:
        """The most memory the group has used, in bytes (0 when the kernel does not say)."""
        text = self._read("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes")
        return int(text) if text.strip().isdigit() else 0

    def out_of_memory(self) -> bool:
        """Whether the kernel's OOM killer acted in this group, or the cap was hit."""
        if self.version == 2:
            events = dict(line.split() for line in self._read("memory.events").splitlines())
            return int(events.get("oom_kill", 0)) > 0 or int(events.get("max", 0)) > 0
        control = dict(line.split() for line in self._read("memory.oom_control").splitlines()
                       if len(line.split()) == 2)
        if "oom_kill" in control:
            return int(control["oom_kill"]) > 0
        return int(self._read("memory.failcnt") or 0) > 0

    def kill_all(self) -> None:
        """SIGKILL every process still in the group (the sandbox should have ended them)."""
        for pid in self._read("cgroup.procs").split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def remove(self) -> None:
        """Kill what is left and delete the group."""
        for _ in range(50):
            self.kill_all()
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


@dataclass(frozen=True)
class Sandbox:
    """How a kernel is confined: what it may read, where it may write, its memory cap.

    Attributes:
        workdir: the notebook's folder; the kernel's working directory, writable.
        runtime_dir: the folder of the connection file and the ipc sockets, writable.
        readonly: more folders to show read-only (Python, ``dpm_core``, the data).
        memory: the memory cap in bytes (0: none).
        cgroup: the submission's cgroup, or None for ``RLIMIT_AS``.
        env: the kernel's whole environment.
    """

    workdir: Path
    runtime_dir: Path
    readonly: tuple = ()
    memory: int = 0
    cgroup: Optional[Path] = None
    env: dict = field(default_factory=dict)

    def bwrap_argv(self, command: Sequence[str], bwrap: str = "bwrap") -> list[str]:
        """The ``bwrap`` command line that runs ``command`` inside this sandbox."""
        # the private /tmp first: a bind made before it under /tmp (a virtualenv or a scratch
        # course in /tmp) would be hidden by it
        args = [bwrap, *_isolation_flags(), "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev",
                *_system_binds(), *_gpu_binds()]
        for path in _distinct_folders(self.readonly):
            args += ["--ro-bind", str(path), str(path)]
        for path in (self.runtime_dir, self.workdir):
            args += ["--bind", str(path), str(path)]
        args += ["--chdir", str(self.workdir), "--clearenv"]
        for key, value in sorted(self.env.items()):
            args += ["--setenv", key, str(value)]
        return [*args, "--", *command]

    def kernel_argv(self, bwrap: str = "bwrap") -> list[str]:
        """A kernelspec ``argv``: the launcher, then bwrap, then ``ipykernel_launcher``."""
        launcher = [sys.executable, "-m", "course.sandbox", "launch"]
        if self.cgroup is not None:
            launcher += ["--cgroup", str(self.cgroup)]
        elif self.memory:
            launcher += ["--address-space", str(self.memory)]
        kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        return [*launcher, "--", *self.bwrap_argv(kernel, bwrap)]


def _distinct_folders(paths) -> list[Path]:
    """Existing folders, without those inside another one of the list."""
    folders = sorted({Path(p).resolve() for p in paths if p and Path(p).exists()})
    kept: list[Path] = []
    for path in folders:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def python_folders() -> list[Path]:
    """The folders the kernel's Python needs: its prefixes and where ``dpm_core`` lives."""
    import importlib.util

    folders = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    spec = importlib.util.find_spec("dpm_core")
    if spec is not None and spec.submodule_search_locations:
        folders.update(Path(p) for p in spec.submodule_search_locations)
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


def _launch(argv: list[str]) -> None:
    """``python -m course.sandbox launch [--cgroup DIR | --address-space BYTES] -- CMD...``."""
    parser = argparse.ArgumentParser(prog="python -m course.sandbox launch")
    parser.add_argument("--cgroup", type=Path)
    parser.add_argument("--address-space", type=int, default=0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    if args.cgroup is not None:
        (args.cgroup / "cgroup.procs").write_text(str(os.getpid()))
    elif args.address_space:
        resource.setrlimit(resource.RLIMIT_AS, (args.address_space, args.address_space))
    os.execvp(command[0], command)


if __name__ == "__main__":
    if sys.argv[1:2] != ["launch"]:
        sys.exit("usage: python -m course.sandbox launch [--cgroup DIR | --address-space BYTES] -- CMD...")
    _launch(sys.argv[2:])
