"""Caps on one submission's memory and processes: cgroups that every kernel of it joins.

With root rights, a submission's kernels (bwrap, the kernel, all it starts) join one memory
cgroup (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``: it counts their tmpfs pages too,
and gives the peak) and one pids cgroup (``pids.max``: processes and threads together).
Without root no group can be made: :meth:`_Cgroup.create` returns None and
:mod:`course.sandbox` caps the address space instead.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Optional

__all__ = ["MemoryCap", "ProcessCap"]


class _Cgroup:
    """A cgroup of one submission under ``dpm-grading/``, with one controller's limit.

    Subclasses name the controller and write its limit; :meth:`create` returns None where no
    cgroup can be made (not root, or no such controller).
    """

    CONTROLLER = ""
    V1_ROOT = Path("/sys/fs/cgroup")
    V2_ROOT = Path("/sys/fs/cgroup")

    def __init__(self, path: Path, limit: int, version: int):
        self.path, self.limit, self.version = path, limit, version

    @classmethod
    def create(cls, limit: int, name: str = "") -> Optional["_Cgroup"]:
        """A new group limited to ``limit``, or None when this machine cannot make one.

        In cgroup v2 every controller of a submission lives in the one group
        ``dpm-grading/<name>``: pass the same ``name`` to each class.
        """
        name = name or uuid.uuid4().hex
        v2 = cls.V2_ROOT / "cgroup.controllers"
        candidates = []
        if v2.exists() and cls.CONTROLLER in v2.read_text().split():
            candidates.append((cls.V2_ROOT / "dpm-grading" / name, 2))
        if (cls.V1_ROOT / "cgroup.procs").exists() and cls.V1_ROOT != cls.V2_ROOT:
            candidates.append((cls.V1_ROOT / "dpm-grading" / name, 1))
        for path, version in candidates:
            made = not path.exists()
            try:
                if version == 2:
                    path.parent.mkdir(exist_ok=True)
                    for parent in (cls.V2_ROOT, path.parent):
                        (parent / "cgroup.subtree_control").write_text(f"+{cls.CONTROLLER}")
                    path.mkdir(exist_ok=True)
                else:
                    path.mkdir(parents=True)
                cls._set_limit(path, limit, version)
                return cls(path, limit, version)
            except OSError:
                if made and path.exists():
                    try:
                        path.rmdir()
                    except OSError:
                        pass
        return None

    @classmethod
    def open(cls, path, limit: int) -> "_Cgroup":
        """The existing group at ``path`` (made by :meth:`create`)."""
        path = Path(path)
        return cls(path, limit, 2 if (path / "cgroup.controllers").exists() else 1)

    @staticmethod
    def _set_limit(path: Path, limit: int, version: int) -> None:
        raise NotImplementedError

    def _read(self, name: str) -> str:
        try:
            return (self.path / name).read_text()
        except OSError:
            return ""

    def _counts(self, name: str) -> dict:
        """``{key: int}`` of a flat-keyed file such as ``memory.events``."""
        pairs = (line.split() for line in self._read(name).splitlines())
        return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}

    def kill_all(self) -> None:
        """SIGKILL every process still in the group (the sandbox should have ended them)."""
        for pid in self._read("cgroup.procs").split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def remove(self) -> None:
        """Kill what is left and delete the group (already gone: nothing to do)."""
        for _ in range(50):
            self.kill_all()
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


class MemoryCap(_Cgroup):
    """A cgroup that caps the memory of every process of one submission, tmpfs pages included.

    Use :meth:`create`; it returns None where no cgroup can be made (not root, or no
    memory controller), and the caller falls back to ``RLIMIT_AS``.
    """

    CONTROLLER = "memory"
    V1_ROOT = Path("/sys/fs/cgroup/memory")

    @staticmethod
    def _set_limit(path: Path, limit: int, version: int) -> None:
        if version == 2:
            (path / "memory.max").write_text(str(limit))
            (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(limit))
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(limit))

    def peak(self) -> int:
        """The most memory the group has used, in bytes (0 when the kernel does not say)."""
        text = self._read("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes")
        return int(text) if text.strip().isdigit() else 0

    def out_of_memory(self) -> bool:
        """Whether the kernel's OOM killer acted in this group, or the cap was hit."""
        if self.version == 2:
            events = self._counts("memory.events")
            return events.get("oom_kill", 0) > 0 or events.get("max", 0) > 0
        control = self._counts("memory.oom_control")
        if "oom_kill" in control:
            return control["oom_kill"] > 0
        return int(self._read("memory.failcnt") or 0) > 0


class ProcessCap(_Cgroup):
    """A cgroup (``pids`` controller) that caps the tasks of one submission: its processes
    and their threads together, counted from bwrap down.

    Use :meth:`create`; it returns None where no cgroup can be made (not root, or no pids
    controller): then the number of processes is not capped (see the module's docstring).
    """

    CONTROLLER = "pids"
    V1_ROOT = Path("/sys/fs/cgroup/pids")

    @staticmethod
    def _set_limit(path: Path, limit: int, version: int) -> None:
        (path / "pids.max").write_text(str(limit))

    def current(self) -> int:
        """How many tasks the group holds now."""
        text = self._read("pids.current")
        return int(text) if text.strip().isdigit() else 0

    def refused(self) -> int:
        """How many times a new process or thread was refused because the cap was reached."""
        return self._counts("pids.events").get("max", 0)
