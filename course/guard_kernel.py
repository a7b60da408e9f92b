"""The grading guard's kernel side: runs inside the student's kernel, before any of their code.

The grader (``course.guard``) sends this module's source to the kernel as a silent request
before the first cell of a submission runs, then calls ``install``. From then on the guard
knows, when the grader asks it for a cell's pass token, whether the grading machinery is as
it was before the student's code ran:

* the functions the checks rely on (``builtins``, ``math``, ``torch`` and its ``nn``,
  ``distributions`` and ``testing``, every ``dpm_core`` module, IPython's shell and the
  kernel) are the same objects, and no library class got a method replaced or shadowed;
* ``sys.modules`` still holds the modules it held, and every ``dpm_core`` or ``torch``
  module comes from the installed packages, not from the submission folder;
* IPython runs cells as it did: no input or AST transformer, event callback, custom
  exception handler or ``sys.excepthook`` was added; no trace or profile function is set;
  no ``torch`` function or dispatch mode is active;
* an audit hook (PEP 578: once added, it cannot be removed) saw no frame, traceback,
  code-object or garbage-collector introspection, ``ctypes``, ``exec``/``compile``,
  process or socket use, and no attribute of a library object set, coming from the
  student's own cells.

A pass token is an HMAC (SHA-256) of the cell's grade id, a nonce that the grader makes up
for that cell, and the verdict, under a key that the grader wrote to a file that ``install``
reads and deletes before any student code runs. The grader asks for it through the execute
request's ``user_expressions``, which IPython evaluates only when the cell ran without an
error and which no input transformer, AST transformer or cell hook sees. The key lives only
inside OpenSSL's HMAC object, which Python code cannot read back.

This code runs in the student's process: a student who knows it and sets out to defeat it
with the introspection that the audit hook reports could still try; the grader's static scan
of the submitted cells (``course.guard.scan_source``) is the second line.
"""

import json
import os
import sys
import threading

#: modules whose attributes the checks rely on
_MODULES = ("builtins", "math", "torch", "torch.nn", "torch.nn.functional", "torch.distributions",
            "torch.distributions.kl", "torch.testing", "torch.linalg", "torch.special",
            "IPython.core.interactiveshell", "ipykernel.ipkernel", "ipykernel.kernelbase",
            "ipykernel.zmqshell")
#: packages that must come from their installed location
_PACKAGES = ("dpm_core", "torch")
#: audit events that the student's own code has no business raising
_EVENTS = {"sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile",
           "sys.addaudithook", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
           "function.__new__", "code.__new__", "exec", "compile", "object.__getattr__",
           "object.__setattr__", "object.__delattr__", "subprocess.Popen", "os.system",
           "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
           "os.killpg", "pty.spawn", "socket.connect", "socket.bind", "marshal.loads",
           "pickle.find_class", "import"}
#: library code that student code could call to introspect on its behalf: the audit hook
#: looks past these frames to the code that called them
_PASS_THROUGH = ("inspect.py", "runpy.py", "pickle.py", "types.py", "functools.py", "operator.py")
#: modules a student's cell may not import (what they are for is reading or rewriting the
#: kernel's own machinery)
_FORBIDDEN_IMPORTS = {"ctypes", "gc", "_ctypes", "marshal", "pickle", "_pickle", "dis",
                      "IPython", "ipykernel", "zmq", "jupyter_client", "nbgrader", "nbformat"}
_MAX_REASONS = 20


def install(key_path: str):
    """Read and delete the grader's key file, take the baseline and add the audit hook.

    Returns:
        the guard object whose ``token`` and ``final`` the grader calls.
    """
    with open(key_path) as f:
        secret = json.load(f)
    os.remove(key_path)
    return _Guard(bytes.fromhex(secret["key"]), secret["trusted_cells"])


class _Guard:
    """What the guard knows; ``token`` and ``final`` are what the grader calls."""

    def __init__(self, key: bytes, trusted_cells: list):
        import IPython
        import torch
        import torch.distributions  # noqa: F401 -- the checks use them; baselines need them
        import torch.testing  # noqa: F401
        import dpm_core  # noqa: F401
        import dpm_core.grading  # noqa: F401
        from ipykernel.compiler import get_file_name, get_tmp_directory

        self._mac = _hmac(key)
        del key
        self._shell = IPython.get_ipython()
        self._cell_dir = get_tmp_directory()
        self._trusted = {get_file_name(source) for source in trusted_cells}
        self._reasons = []
        self._torch = torch
        self._package_dirs = {p: os.path.dirname(sys.modules[p].__file__) for p in _PACKAGES}
        self._modules = dict(sys.modules)
        self._owners = self._watched_owners()
        self._baseline = {id(o): (o, dict(vars(o))) for o in self._owners}
        self._shell_state = self._ipython_state()
        self._modes = self._torch_modes()
        self._hooks = (sys.gettrace(), sys.getprofile())
        self._in_hook = False
        sys.addaudithook(self._audit)

    # -- what the grader calls --------------------------------------------------------------

    def token(self, grade_id: str, nonce: str) -> str:
        """The signed verdict on a graded cell that has just run without an error."""
        return self._sign(grade_id, nonce)

    def final(self, nonce: str) -> str:
        """The signed verdict after the last cell: was anything changed at any time?"""
        return self._sign("<final>", nonce)

    # -- the checks ---------------------------------------------------------------------------

    def _sign(self, grade_id: str, nonce: str) -> str:
        reasons = self._reasons + self._changes()
        reasons = list(dict.fromkeys(reasons))[:_MAX_REASONS]
        status = "tampered" if reasons else "pass"
        mac = self._mac.copy()
        mac.update("\n".join([grade_id, nonce, status, *reasons]).encode())
        return json.dumps({"status": status, "reasons": reasons, "mac": mac.hexdigest()})

    def _changes(self) -> list:
        found = []
        for owner, saved in self._baseline.values():
            now = vars(owner)
            name = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", "?")
            changed = [k for k, v in saved.items() if not self._same(v, now.get(k, _MISSING))
                       and not _volatile(owner, k)]
            if isinstance(owner, type):
                changed += [k for k in now if k not in saved and _shadows(owner, k)]
            found += [f"{name}.{k} was replaced" for k in changed[:3]]
        for name, module in self._modules.items():
            if sys.modules.get(name) is not module:
                found.append(f"sys.modules[{name!r}] was replaced or removed")
        for name, module in list(sys.modules.items()):
            package = name.split(".")[0]
            if package in self._package_dirs and name not in self._modules:
                path = getattr(module, "__file__", None) or ""
                if not os.path.abspath(path).startswith(self._package_dirs[package]):
                    found.append(f"{name} was imported from {path or 'no file'}, not the "
                                 f"installed {package}")
        found += self._ipython_changes()
        if self._torch_modes() != self._modes:
            found.append("a torch function or dispatch mode was left active")
        if self._student_threads():
            found.append("a background thread runs the student's code (it could change the "
                         "grading machinery between the guard's checks)")
        if (sys.gettrace(), sys.getprofile()) != self._hooks:
            found.append("a trace or profile function (sys.settrace, sys.setprofile) was set")
        return found

    def _student_threads(self) -> bool:
        """Whether a thread other than this one has the student's code on its stack (threads
        of ``threading`` and of ``_thread`` alike)."""
        for ident, frame in sys._current_frames().items():
            while ident != threading.get_ident() and frame is not None:
                if self._student_code(frame.f_code.co_filename):
                    return True
                frame = frame.f_back
        return False

    def _same(self, old, new) -> bool:
        """Whether ``new`` is ``old``, or a library's wrapper of it (torch wraps some of its
        functions lazily, e.g. to keep them out of its compiler)."""
        if new is old:
            return True
        code = getattr(new, "__code__", None)
        return getattr(new, "__wrapped__", None) is old and code is not None and \
            not self._student_code(code.co_filename)

    def _origin(self, fn) -> str:
        """The file that defined a callable (a cell's file for the student's own)."""
        fn = getattr(fn, "func", fn)  # functools.partial
        fn = getattr(fn, "__func__", fn)  # bound methods
        code = getattr(fn, "__code__", None) or getattr(getattr(type(fn), "__call__", None),
                                                        "__code__", None)
        return code.co_filename if code is not None else "<unknown>"

    def _ipython_changes(self) -> list:
        """What the student's cells changed in how IPython runs cells."""
        before, now = self._shell_state, self._ipython_state()
        found = []
        for (name, saved), (_, current) in zip(before["lists"], now["lists"]):
            added = [f for f in current if not any(f is g for g in saved)]
            removed = [g for g in saved if not any(f is g for f in current)]
            if removed or any(self._origin(f) == "<unknown>" or self._student_code(self._origin(f))
                              for f in added):
                found.append(f"IPython's {name} were changed")
        for key in ("methods", "kernel", "handlers", "exceptions", "display"):
            if before[key] != now[key]:
                found.append(f"IPython's {key.replace('methods', 'shell methods')} were replaced")
        return found

    def _watched_owners(self) -> list:
        import torch
        import torch.distributions as td

        import dpm_core

        owners = [sys.modules[m] for m in _MODULES if m in sys.modules]
        owners += [m for n, m in sys.modules.items() if n.split(".")[0] == "dpm_core"]
        classes = [torch.Tensor, torch._C.TensorBase, torch.nn.Module, torch.nn.Parameter,
                   type(self._shell), type(self._shell.kernel)]
        classes += [c for c in vars(td).values() if isinstance(c, type)]
        classes += [c for c in vars(dpm_core).values() if isinstance(c, type)]
        for cls in list(classes):
            classes += [b for b in cls.__mro__ if b is not object]
        return list({id(o): o for o in owners + classes}.values())

    def _ipython_state(self) -> dict:
        shell = self._shell
        methods = ("run_cell", "run_cell_async", "run_code", "run_ast_nodes", "transform_cell",
                   "showtraceback", "_showtraceback", "showsyntaxerror", "user_expressions",
                   "ev", "ex", "set_custom_exc", "CustomTB", "system", "getoutput")
        kernel = shell.kernel
        events = [(f"{e} callbacks", list(c)) for e, c in sorted(shell.events.callbacks.items())]
        return {
            "lists": [("input transformers", list(shell.input_transformers_cleanup)),
                      ("input transformers", list(shell.input_transformers_post)),
                      ("AST transformers", list(shell.ast_transformers))] + events,
            "methods": tuple(k for k in methods if k in vars(shell)),
            "kernel": tuple(k for k in vars(kernel) if callable(getattr(type(kernel), k, None))),
            "handlers": tuple(sorted((k, id(v)) for k, v in kernel.shell_handlers.items())),
            "exceptions": tuple(shell.custom_exceptions),
            "display": (id(shell.displayhook), id(shell.display_pub)),
        }

    def _torch_modes(self) -> tuple:
        from torch.utils._python_dispatch import _len_torch_dispatch_stack

        return (self._torch._C._len_torch_function_stack(), _len_torch_dispatch_stack(),
                self._torch._C._is_torch_function_enabled())

    # -- the audit hook -----------------------------------------------------------------------

    def _audit(self, event: str, args: tuple) -> None:
        if self._in_hook or (event not in _EVENTS and not event.startswith("ctypes.")):
            return
        if event == "import" and args[0].split(".")[0] not in _FORBIDDEN_IMPORTS:
            return
        self._in_hook = True
        try:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.endswith(_PASS_THROUGH):
                frame = frame.f_back
            if frame is None or not self._student_code(frame.f_code.co_filename):
                return
            if event.startswith("object.__set") or event.startswith("object.__del"):
                target = args[0]
                if getattr(target, "__module__", "__main__") == "__main__" and \
                        not isinstance(target, type(sys)):
                    return  # the student's own classes and functions are theirs to change
            what = f"{event} {args[1]!r}" if event.startswith("object.") else \
                f"import {args[0]}" if event == "import" else event
            if len(self._reasons) < _MAX_REASONS:
                self._reasons.append(f"{what} from the student's code "
                                     f"(line {frame.f_lineno} of a cell)")
        finally:
            self._in_hook = False

    def _student_code(self, filename: str) -> bool:
        return filename.startswith(self._cell_dir) and filename not in self._trusted


_MISSING = object()


def _volatile(owner, name: str) -> bool:
    # set by the libraries themselves while they run: caches, lazily loaded submodules, and
    # the builtins that IPython and ipykernel swap around each request
    if owner is sys.modules["builtins"] and name in {
            "input", "raw_input", "get_ipython", "getpass", "display", "exit", "quit", "_",
            "__", "___"}:
        return True
    return name in {"_validate_args", "__annotations__", "_trait_values", "_cross_validation_lock",
                    "__warningregistry__", "_jit_internal"} or name.startswith("_lazy")


def _shadows(cls: type, name: str) -> bool:
    """Whether an attribute added to ``cls`` hides one that a base class defines."""
    return any(name in vars(base) for base in cls.__mro__[1:])


def _hmac(key: bytes):
    try:
        import _hashlib

        return _hashlib.hmac_new(key, digestmod="sha256")
    except (ImportError, AttributeError):  # a Python without OpenSSL's HMAC
        import hmac

        return hmac.new(key, digestmod="sha256")

