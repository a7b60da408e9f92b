"""``make lab``: JupyterLab starts as root and as a normal user, on 127.0.0.1 only.

The command is the one ``make lab`` runs (read from ``make -n lab``), with a free port, a
token and ``--no-browser`` passed through ``ARGS``. Each test waits (at most
:data:`START_TIMEOUT` seconds) until ``GET /api/status`` answers 200, checks the listening
sockets and the server's user, and always stops the server: SIGTERM, then SIGKILL to its
process group after :data:`STOP_TIMEOUT` seconds.
"""

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
NOBODY = 65534

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(),
                                reason="reads the listening sockets from Linux's /proc/net")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_command(port: int, token: str) -> str:
    """The recipe of ``make lab`` with these options in ``ARGS``, as make would run it."""
    args = f"--port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token} --no-browser"
    printed = subprocess.run(["make", "--no-print-directory", "-n", "lab", f"ARGS={args}"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
    command = printed.strip().splitlines()[-1]
    assert command.startswith("bash scripts/lab.sh "), f"`make lab` runs {command!r}"
    return command


def _listening(port: int) -> list[str]:
    """The local addresses of the TCP sockets listening on ``port`` (IPv4 and IPv6)."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    # the kernel prints each 32-bit word in host (little-endian) order
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width // 2, 4))
                    family = socket.AF_INET if width == 8 else socket.AF_INET6
                    found.append(socket.inet_ntop(family, raw))
    return found


def _status(port: int, token: str) -> int:
    """The HTTP status of ``GET /api/status``, or 0 while nothing answers."""
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


@contextmanager
def _lab(prefix: list, home: Path):
    """Start ``make lab``'s command under ``prefix``; yield ``(process, port, token, log)``;
    stop it however the body ends."""
    port, token = _free_port(), secrets.token_hex(16)
    command = _lab_command(port, token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env.update(HOME=str(home), JUPYTER_RUNTIME_DIR=str(home / "runtime"))
    log = home / "lab.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(prefix + ["bash", "-c", command], cwd=REPO, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process, port, token, log
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything still in its group
        except ProcessLookupError:
            pass
        process.wait()


def _wait_until_up(process, port: int, token: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if _status(port, token) == 200:
            return
        time.sleep(0.25)
    pytest.fail(f"JupyterLab did not answer within {START_TIMEOUT:.0f} s:\n"
                f"{log.read_text()[-3000:]}")


def _proc_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("Uid:"))
    return int(line.split()[2])  # the effective uid


def _check_running_lab(process, port: int, token: str, log: Path, uid: int) -> None:
    _wait_until_up(process, port, token, log)
    assert _listening(port) == ["127.0.0.1"], f"listening on {_listening(port)}"
    assert _status(port, "wrong" + token) == 403, "the server should refuse a wrong token"
    assert _proc_uid(process.pid) == uid
    # setpriv, bash -c and scripts/lab.sh all exec, so the process is JupyterLab itself
    with open(f"/proc/{process.pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    assert any(arg.endswith("jupyter-lab") for arg in argv) and "--ip=127.0.0.1" in argv, argv
    assert ("--allow-root" in argv) == (uid == 0), argv


@pytest.fixture
def home():
    """An empty home folder that any user may write (the normal-user case runs as nobody)."""
    folder = Path(tempfile.mkdtemp(prefix="lab-home-", dir="/tmp"))
    try:
        if os.geteuid() == 0:
            os.chown(folder, NOBODY, NOBODY)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_lab_starts_as_root(home):
    """Does ``make lab`` start JupyterLab as root (with --allow-root), on 127.0.0.1 only?"""
    if os.geteuid() != 0:
        pytest.skip("the tests do not run as root")
    with _lab([], home) as (process, port, token, log):
        _check_running_lab(process, port, token, log, uid=0)


def _drop_privileges() -> list:
    """The prefix that runs a command as nobody, or a skip that says why it cannot."""
    if os.geteuid() != 0:
        return []  # the tests already run as a normal user
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot drop root's privileges")
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    python = REPO / ".venv" / "bin" / "python"
    # the way lab.sh starts it: bash runs .venv/bin/jupyter, whose #! names the venv's python
    probe = subprocess.run(prefix + ["bash", "-c", ".venv/bin/jupyter lab --version"], cwd=REPO,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        closed = [str(p) for p in Path(os.path.realpath(python)).parents
                  if p.stat().st_uid != NOBODY and not p.stat().st_mode & 0o001]
        pytest.skip(f"uid {NOBODY} cannot run {python} -> {os.path.realpath(python)}"
                    + (f": {closed[-1]} is closed to other users" if closed else "")
                    + f" ({(probe.stderr.strip().splitlines() or ['no message'])[-1]})")
    return prefix


def test_lab_starts_as_normal_user(home):
    """Does ``make lab`` start JupyterLab as a normal user (without --allow-root), on
    127.0.0.1 only?"""
    prefix = _drop_privileges()
    with _lab(prefix, home) as (process, port, token, log):
        _check_running_lab(process, port, token, log, uid=os.geteuid() if not prefix else NOBODY)
