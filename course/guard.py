"""The grading guard's grader side: pass tokens, and a scan of what the student wrote.

nbgrader gives a test cell its points when its outputs hold no error, and partial credit when
they end with a number; both are outputs that student code can fake (a custom exception
handler, an input transformer or ``pre_run_cell`` hook that rewrites the cell, a notebook
whose JSON carries outputs that never ran). With the guard, :class:`BoundedExecute
<course.grading_plugins.BoundedExecute>` gives a test cell its points only for a *pass
token*: an HMAC that ``course/guard_kernel.py``, installed in the kernel before any student
code, signs for that cell and a nonce made up for it, once the cell has run without an error
and the grading machinery is verified untouched. Two things make a submission *tampered*
(0 autograded points, status "needs review", the reason in the summary and the feedback):

* the kernel side reports a change to the machinery (see ``guard_kernel``'s docstring);
* :func:`scan_source` finds, in a cell the student could edit, code whose only use here is
  to reach into the kernel (IPython's hooks, frames, ``gc``, ``ctypes``, ``exec``, replacing
  an attribute of torch or dpm_core, shell commands, the guard's own names).
"""

from __future__ import annotations

import ast
import hmac
import json
import re
import secrets
from pathlib import Path

__all__ = ["GUARD_NAME", "GuardSession", "scan_source"]

#: the name the guard has in the kernel's namespace
GUARD_NAME = "__dpm_grading_guard__"
_KERNEL_SOURCE = Path(__file__).with_name("guard_kernel.py")


class GuardSession:
    """The guard of one notebook's execution: its key, the nonces it issued, the verdicts."""

    def __init__(self, workdir: str | Path):
        self.key = secrets.token_bytes(32)
        self.key_file = Path(workdir) / f".dpm-grading-{secrets.token_hex(8)}"
        self.nonces: dict = {}

    def install_code(self, trusted_cells: list[str]) -> str:
        """Write the key file, and return the code that installs the guard in the kernel.

        Args:
            trusted_cells: the sources of the cells that the student cannot edit (nbgrader
                restored them from the gradebook), as they will be sent: their code may do
                what the audit hook reports of the student's (the checks introspect it).
        """
        source = _KERNEL_SOURCE.read_text()
        code = (f"def _dpm_install():\n"
                f"    ns = {{'__name__': 'dpm_grading_guard'}}\n"
                f"    exec(compile({source!r}, '<dpm-grading-guard>', 'exec'), ns)\n"
                f"    return ns['install']({str(self.key_file)!r})\n"
                f"{GUARD_NAME} = _dpm_install()\n"
                f"del _dpm_install\n")
        self.key_file.write_text(json.dumps({"key": self.key.hex(),
                                             "trusted_cells": [*trusted_cells, code]}))
        self.key_file.chmod(0o600)
        return code

    def remove_key_file(self) -> None:
        """The kernel deletes the key file; this makes sure, whatever happened."""
        self.key_file.unlink(missing_ok=True)

    def expression(self, grade_id: str) -> str:
        """The user expression that asks the kernel for ``grade_id``'s token (a fresh nonce)."""
        nonce = secrets.token_hex(16)
        self.nonces[grade_id] = nonce
        method = "final" if grade_id == "<final>" else "token"
        args = f"{nonce!r}" if method == "final" else f"{grade_id!r}, {nonce!r}"
        return f"{GUARD_NAME}.{method}({args})"

    def verdict(self, grade_id: str, reply: dict | None) -> tuple[str, list]:
        """``(status, reasons)`` from an execute reply's ``user_expressions["token"]``.

        status is "pass" (a valid token, nothing changed), "tampered" (a valid token that
        reports changes, or a token that does not verify: someone other than the guard
        made it) or "none" (no token: the cell failed, so IPython evaluated nothing).
        """
        if not reply or reply.get("status") != "ok":
            return "none", []
        value = reply.get("user_expressions", {}).get("token")
        if not value:
            return "none", []
        if value.get("status") != "ok":
            return "tampered", [f"the grading guard did not answer for {grade_id} "
                                f"({value.get('ename', 'error')}: it was removed or replaced)"]
        try:
            token = json.loads(ast.literal_eval(value["data"]["text/plain"]))
            status, reasons, mac = token["status"], list(token["reasons"]), token["mac"]
        except (KeyError, ValueError, SyntaxError, TypeError):
            return "tampered", [f"the pass token of {grade_id} is not the guard's"]
        message = "\n".join([grade_id, self.nonces.get(grade_id, ""), status, *reasons]).encode()
        expected = hmac.new(self.key, message, "sha256").hexdigest()
        if not isinstance(mac, str) or not hmac.compare_digest(mac, expected) or \
                status not in ("pass", "tampered"):
            return "tampered", [f"the pass token of {grade_id} was forged"]
        return status, [str(r) for r in reasons]


# -- the static scan ------------------------------------------------------------------------

#: names whose use in a student's cell is reaching into the kernel, with what they are for
_NAMES = {
    "get_ipython": "IPython's shell", "exec": "exec", "eval": "eval", "compile": "compile",
    "globals": "globals()", "vars": "vars()", "locals": "locals()",
    "__import__": "__import__", "__builtins__": "__builtins__", "breakpoint": "breakpoint",
}
#: attributes whose use is, whatever object they are read from
_ATTRIBUTES = {
    "_getframe", "_current_frames", "settrace", "setprofile", "excepthook", "displayhook",
    "addaudithook", "meta_path", "path_hooks", "f_back", "f_globals", "f_locals",
    "f_builtins", "f_code", "tb_frame", "tb_next", "gi_frame", "cr_frame", "ag_frame",
    "__closure__", "cell_contents", "__code__", "__globals__", "__subclasses__",
    "__builtins__", "__import__", "__torch_function__", "__torch_dispatch__",
    "set_custom_exc", "input_transformers_cleanup", "input_transformers_post",
    "ast_transformers", "showtraceback", "run_cell", "user_ns", "user_expressions",
    "CustomTB", "walk_stack", "walk_tb", "extract_stack", "currentframe",
    "TorchFunctionMode", "TorchDispatchMode", "_python_dispatch", "overrides", "popen",
    "system", "spawnv", "spawnl", "execv", "execve", "execl", "fork", "kill", "killpg",
}
#: modules a student's cell has no business importing
_MODULES = {"builtins", "gc", "ctypes", "_ctypes", "inspect", "importlib", "runpy", "pkgutil",
            "zipimport", "site", "marshal", "pickle", "_pickle", "dill", "dis", "subprocess",
            "pty", "signal", "socket", "multiprocessing", "threading", "_thread", "IPython",
            "ipykernel", "zmq", "jupyter_client", "nbgrader", "nbformat", "nbclient", "sys",
            "types", "code", "codeop", "traceback", "atexit", "sysconfig"}
#: line magics that run or load code the scan cannot see, or change the kernel
_MAGICS = {"run", "load", "load_ext", "reload_ext", "autoreload", "aimport", "env", "set_env",
           "config", "alias", "macro", "rerun", "recall", "store", "sx", "system", "bash",
           "sh", "script", "python", "python3", "pypy", "perl", "ruby", "writefile", "file",
           "capture", "html", "javascript", "js", "prun", "debug", "pdb", "xmode", "colors",
           "killbgscripts", "bookmark", "cd", "pushd", "popd"}
#: names that reach the libraries whose attributes the checks rely on
_LIBRARIES = {"torch", "td", "nn", "F", "math", "np", "numpy", "dpm_core", "sys", "os",
              "builtins", "IPython", "plt", "matplotlib", "sns", "seaborn", "functools"}


def scan_source(source: str) -> list[str]:
    """What in one cell's code reaches into the kernel; each finding names the line.

    The scan reads the cell as IPython would: ``%magic`` and ``!command`` lines are looked at
    as lines (a magic that runs hidden code, any shell command), the rest as Python. A cell
    that is not valid Python is left to fail when it runs.
    """
    findings, python = [], []
    for number, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith(("!", "%%!")) or re.match(r"^\w+\s*=\s*!", stripped):
            findings.append(f"line {number}: a shell command ({stripped[:40]})")
            python.append("")
        elif stripped.startswith("%"):
            magic = re.match(r"%+(\w+)", stripped)
            if magic and magic.group(1) in _MAGICS:
                findings.append(f"line {number}: the %{magic.group(1)} magic")
            python.append("")
        else:
            python.append(line)
    try:
        tree = ast.parse("\n".join(python))
    except SyntaxError:
        return findings
    aliases = set(_LIBRARIES)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            aliases |= {(a.asname or a.name).split(".")[0] for a in node.names}
    for node in ast.walk(tree):
        findings += [f"line {node.lineno}: {what}" for what in _finding(node, aliases)]
        if isinstance(node, (ast.Name, ast.Attribute, ast.Constant)) and "__dpm" in \
                str(getattr(node, "id", getattr(node, "attr", getattr(node, "value", "")))):
            findings.append(f"line {node.lineno}: the grading guard's name")
    return list(dict.fromkeys(findings))


def _finding(node: ast.AST, aliases: set) -> list[str]:
    if isinstance(node, ast.Import):
        return [f"import {a.name}" for a in node.names if a.name.split(".")[0] in _MODULES
                or _dispatch(a.name)]
    if isinstance(node, ast.ImportFrom):
        module = node.module or ""
        if module.split(".")[0] in _MODULES or _dispatch(module):
            return [f"from {module} import ..."]
        return [f"from {module} import {a.name}" for a in node.names
                if a.name in _ATTRIBUTES or a.name in _NAMES]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in _ATTRIBUTES:
        return [f"defines {node.name}"]
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return [_NAMES[node.id]]
    if isinstance(node, ast.Attribute) and node.attr in _ATTRIBUTES:
        return [f".{node.attr}"]
    if isinstance(node, ast.Attribute) and node.attr == "modules" and _root(node.value) == "sys":
        return ["sys.modules"]
    if isinstance(node, ast.Attribute) and node.attr == "path" and _root(node.value) == "sys":
        return ["sys.path"]
    if isinstance(node, ast.Attribute) and node.attr == "__dict__" and \
            _root(node.value) in aliases:
        return [f"{_root(node.value)}....__dict__"]
    targets = []
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
    found = [f"assigns {ast.unparse(t)}" for t in targets
             if isinstance(t, ast.Attribute) and _root(t) in aliases]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id in ("setattr", "delattr") and node.args and _root(node.args[0]) in aliases:
        found.append(f"{node.func.id}({ast.unparse(node.args[0])}, ...)")
    return found


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _dispatch(module: str) -> bool:
    return module.startswith(("torch.overrides", "torch.utils._python_dispatch", "torch._C"))
