"""The student's environment, met the way a student meets it, in Debian's Chromium.

The hand-out of week 1 is built with the command line (``python -m course.handout DIR
--open vae_basics``); a virtual environment is created in the test's temporary folder and
the hand-out installed into it with the README's ``pip install -e .``: pip resolves the
hand-out's own ``pyproject.toml`` against the registries of this machine's pip
configuration (PyPI, and the local file indexes that hold torch and its CUDA wheels).

Two shortcuts, measured on 2 shared cores: a full install writes 6 GB (torch, triton and
the CUDA libraries of the pinned torch wheel) and took 100 to 136 s, mostly waiting on the
disk and compiling bytecode. So, first, the distributions of that binary stack
(:data:`SEEDED`, in the requirement closure of the pinned torch and torchvision) are
hard-linked from the repository's own environment into the new one's site-packages,
files and ``dist-info`` as pip wrote them from the same wheels (their console scripts,
e.g. ``torchrun``, are not linked): pip finds ``torch==2.14.1`` and
``torchvision==0.29.1`` installed, as it would after unpacking them, resolves and installs
everything else of the hand-out itself, and would install another torch that a hand-out
pinned. Where hard links are impossible (another file system), pip installs all of it.
Second, pip runs with ``--no-compile`` (see :func:`student`). The module then took 81 to
141 s, with the machine's other work: building the hand-out and installing it 40 to 77 s,
the package checks 10 to 20 s, JupyterLab and the browser 27 to 43 s.

Then the environment's own JupyterLab runs on 127.0.0.1 (a free port, a random token,
every Jupyter directory of the user in the temporary folder, so only the environment's
``etc/jupyter`` configures it; stopped by the test, kernels included), and the test checks
in the browser that

* nbgrader's instructor UI is absent: no Nbgrader menu, no Create Assignment sidebar, no
  formgrader, assignment or course list command, and of nbgrader's lab plugins only
  ``validate-assignment`` is registered; the server answers 404 where the formgrader,
  the course list and the assignment list (which reads the exchange) would answer;
* the assignment's notebook opens, and its Validate button reports what ``nbgrader
  validate`` reports for an untouched release: the written answers are missing;
* the server log names no exchange and loads no nbgrader server extension but Validate's.

Without the hand-out's ``etc/jupyter`` the same environment shows the Nbgrader menu and
the Create Assignment sidebar, and opening the assignment list logs "Unwritable
directory, please contact your instructor: /usr/local/share/nbgrader/exchange".

Outside the browser: ``import dask`` fails in the environment, and ``dpm_core`` is the
hand-out's (every module of it imports). The picture of the student's JupyterLab is
saved as ``student-lab.png`` in the test's temporary folder. Skipped without Chromium or
playwright.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement

from browser import REPO, chromium_page, free_port, needs_chromium

pytestmark = needs_chromium

ASSIGNMENT = "vae_basics"
#: seconds: the install, the server's start, each wait in the page, a validation
INSTALL_TIMEOUT = 600
SERVER_TIMEOUT = 90
PAGE_TIMEOUT = 60
VALIDATE_TIMEOUT = 180
#: what nbgrader's instructor UI registers in JupyterLab (none may exist for a student)
INSTRUCTOR_COMMANDS = ["nbgrader:open-formgrader", "nbgrader:open-formgrader-local",
                       "nbgrader:open-create-assignment", "nbgrader:open-assignment-list",
                       "nbgrader:open-course-list"]
#: what nbgrader's instructor server extensions serve (the assignment list reads the exchange)
INSTRUCTOR_URLS = ["formgrader", "formgraders", "assignments", "courses"]


#: the binary stack of the pinned torch that is hard-linked rather than unpacked again
SEEDED = re.compile(r"torch|torchvision|triton|nvidia-.+|cuda-.+")


def _seed(site_packages: Path) -> list[str]:
    """Hard-link the :data:`SEEDED` distributions of the torch and torchvision of this
    interpreter's environment (the repository's) into ``site_packages``; returns their
    names, or ``[]`` where a hard link cannot be made (nothing is linked then)."""
    seen, todo = {}, [("torch", ()), ("torchvision", ())]
    while todo:
        name, extras = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if not SEEDED.fullmatch(key) or (key in seen and set(extras) <= seen[key]):
            continue
        seen[key] = seen.get(key, set()) | set(extras)
        for requirement in map(Requirement, importlib.metadata.distribution(name).requires or []):
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((requirement.name, tuple(requirement.extras)))
    files = [(dist, f) for dist in map(importlib.metadata.distribution, seen)
             for f in dist.files or [] if not str(f).startswith("..")]
    try:
        for dist, f in files:
            target = site_packages / f
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(dist.locate_file(f), target)
    except OSError:  # e.g. another file system: let pip unpack the wheels
        for _, f in files:
            (site_packages / f).unlink(missing_ok=True)
        return []
    return sorted(seen)


def _activated(venv: Path) -> dict:
    """The variables of a student's shell with the environment activated: nothing of the
    repository (no PYTHONPATH); the user's HOME, so that pip reads this machine's
    configuration (its registries and local indexes) as a student's pip reads theirs."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "JUPYTER_PATH",
                        "JUPYTER_CONFIG_PATH", "NBGRADER_EXECUTION")}
    env.update({"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"})
    return env


def _own_home(env: dict, home: Path) -> dict:
    """``env`` with HOME and every Jupyter, IPython and matplotlib directory of the user in
    ``home``: only the environment's own ``etc/jupyter`` configures its JupyterLab."""
    settings = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # no news or update toasts over the notebook
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return {**env, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
            "IPYTHONDIR": str(home / "ipython"), "MPLCONFIGDIR": str(home / "matplotlib"),
            "JUPYTER_PLATFORM_DIRS": "1"}


def _python(venv: Path, env: dict, code: str,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -c code`` in the environment ``venv`` with the variables ``env``."""
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> dict:
    """The hand-out of week 1 installed in a fresh virtual environment: ``{"handout": its
    folder, "venv": the environment, "env": an activated shell's variables, "lab_env":
    those of its JupyterLab}``."""
    root = tmp_path_factory.mktemp("student")
    handout, venv = root / "handout", root / "venv"
    built = subprocess.run([sys.executable, "-m", "course.handout", str(handout),
                            "--open", ASSIGNMENT], cwd=REPO, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = _activated(venv)
    _seed(Path(_python(venv, env, "import sysconfig; print(sysconfig.get_path('purelib'))")
               .stdout.strip()))
    # --no-compile: Python compiles what it imports anyway; pip's compiling every module of
    # ~120 packages (sympy alone has 3000) took 85 of 110 s of the install on a busy machine
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                                "--no-compile", "-e", "."], cwd=handout, env=env,
                               capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return {"handout": handout, "venv": venv, "env": env, "lab_env": _own_home(env, root / "home")}


def test_student_packages(student):
    """Do the hand-out's pyproject.toml and environment.yml ask for the same packages, none
    of the instructor's; is dask (the instructor's grading fan-out) missing from the
    student's environment, nbgrader's command there (the README's ``nbgrader validate``),
    and its dpm_core the hand-out's, every module of it importable?"""
    wanted = tomllib.loads((student["handout"] / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((student["handout"] / "environment.yml").read_text())["dependencies"]
    assert [d for d in conda if isinstance(d, dict)] == [{"pip": wanted["dependencies"] + ["-e ."]}]
    names = {re.match(r"[\w.-]+", d).group(0).lower() for d in wanted["dependencies"]}
    assert {"torch", "torchvision", "jupyterlab", "nbgrader"} <= names
    assert not names & {"dask", "safetensors", "pytest", "playwright"}, names
    dask = _python(student["venv"], student["env"], "import dask")
    assert dask.returncode != 0 and "No module named 'dask'" in dask.stderr, dask.stderr
    nbgrader = subprocess.run(["nbgrader", "--version"], env=student["env"], capture_output=True,
                              text=True, timeout=120)
    assert nbgrader.returncode == 0 and "0.9" in nbgrader.stdout, nbgrader.stdout + nbgrader.stderr
    imported = _python(student["venv"], student["env"],
                       "import importlib, pkgutil, dpm_core\n"
                       "for m in pkgutil.walk_packages(dpm_core.__path__, 'dpm_core.'):\n"
                       "    importlib.import_module(m.name)\n"
                       "print(dpm_core.__file__)", cwd=Path(tempfile.gettempdir()))
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert Path(imported.stdout.strip()).parent == student["handout"] / "dpm_core"


@contextmanager
def _student_lab(student: dict, log: Path) -> Iterator[tuple[str, str]]:
    """The environment's JupyterLab on the hand-out folder, as ``jupyter lab`` starts it
    there; yields its URL and token, then stops its process group (kernels included)."""
    port, token = free_port(), secrets.token_hex(16)
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(student["venv"] / "bin" / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1",
             f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
             # the page's JupyterLab object, to ask it which plugins and commands exist
             "--LabApp.expose_app_in_browser=True"]
            + (["--allow-root"] if os.geteuid() == 0 else []),
            cwd=student["handout"], env=student["lab_env"], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            assert server.poll() is None, f"jupyter lab exited:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, \
                    f"no answer in {SERVER_TIMEOUT} s:\n{log.read_text()[-3000:]}"
                time.sleep(0.25)
        yield url, token
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(server.pid, sig)
            except ProcessLookupError:
                break
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _first_heading(path: Path) -> str:
    """The first Markdown heading of a notebook, as the page shows it."""
    for cell in nbformat.read(path, as_version=4).cells:
        match = cell.cell_type == "markdown" and re.search(r"^#+\s+(.+)$", cell.source, re.M)
        if match:
            return re.sub(r"[*_`$]", "", match.group(1)).strip()
    raise AssertionError(f"{path} has no Markdown heading")


def test_student_jupyterlab(student, tmp_path):
    """Does the student's JupyterLab open the assignment and validate it, without any of
    nbgrader's instructor UI (menu, sidebar, formgrader, exchange lists) and without
    logging an exchange directory?"""
    notebook = Path("assignments", ASSIGNMENT, f"{ASSIGNMENT}.ipynb")
    heading = _first_heading(student["handout"] / notebook)
    log = tmp_path / "jupyterlab.log"
    with _student_lab(student, log) as (url, token), chromium_page(timeout=PAGE_TIMEOUT) as page:
        for path in INSTRUCTOR_URLS:
            assert _status(f"{url}/{path}?token={token}") == 404, path
        page.goto(f"{url}/lab/tree/{notebook.as_posix()}?token={token}")
        page.locator(".jp-Notebook .jp-RenderedMarkdown").get_by_text(heading).first.wait_for()
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()

        plugins = page.evaluate("window.jupyterapp.listPlugins()"
                                ".filter(id => id.startsWith('@jupyter/nbgrader'))")
        assert plugins == ["@jupyter/nbgrader:validate-assignment"]
        commands = page.evaluate(
            "ids => ids.filter(id => window.jupyterapp.commands.hasCommand(id))",
            INSTRUCTOR_COMMANDS)
        assert commands == []
        menus = page.locator("#jp-menu-panel .lm-MenuBar-itemLabel").all_inner_texts()
        assert "File" in menus and "Nbgrader" not in menus, menus
        tabs = page.locator(".lm-TabBar-tabLabel, .lm-TabBar-tab[title]").evaluate_all(
            "tabs => tabs.map(t => t.textContent + ' ' + (t.getAttribute('title') || ''))")
        assert not [t for t in tabs if re.search("Create Assignment|Formgrader", t, re.I)], tabs

        validate = page.locator(".validate-button")
        validate.click()
        dialog = page.locator(".jp-Dialog")
        dialog.wait_for(timeout=VALIDATE_TIMEOUT * 1000)
        report = dialog.inner_text()
        page.screenshot(path=str(tmp_path / "student-lab.png"))
        # what `nbgrader validate` prints for an untouched release, less its banner
        assert report.startswith("Validation Results"), report
        assert ("The following cell failed:\n\nYOUR ANSWER HERE\n"
                "You did not provide a response.") in report, report

    text = log.read_text(errors="replace")
    assert "server_extensions.validate_assignment | extension was successfully loaded" in text
    others = re.findall(r"nbgrader\.server_extensions\.(?!validate_assignment)\w+", text)
    assert others == [], text[-3000:]
    assert "exchange" not in text.lower(), text[-3000:]
