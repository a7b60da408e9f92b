"""The own-work check: no points for answering an exercise with dpm_core's reference of it.

``python -m course.sync_checks`` writes ``_expect_own_work(globals(), {name: dotted path})``
before the check of every graded test cell of an exercise that ``course/exercises.py`` gives
references for, and copies the helpers below into the cell (so each must be self-contained:
it may use the imports of this module and the other helpers here, nothing else).

The student's object fails when it is the reference, a subclass, a ``functools.partial``, a
``__wrapped__`` function or a bound method of it; when its code, or the code of the notebook
functions and classes it uses, reaches the reference (through a global name and the
attributes it loads, an import, a closure cell, a default argument or a module named by a
string); when it is a copy of the reference's bytecode; when a small instance of it holds a
submodule of the reference class; or, for a reference that is a method
(``dpm_core.ppca.PPCA.exact_posterior``), when its code loads an attribute of that name.
dpm_core's objects that are not the exercise's reference stay allowed.
"""

import dis
import functools
import importlib
import sys
import types

import torch

__all__ = ["_expect_own_work"]

#: how many attributes deep the check follows a name its code loads (dpm_core.conditionals.X: 2)
_OW_DEPTH = 4
#: top-level packages whose code is not the student's: the check does not read their functions
_OW_LIBRARIES = ("builtins", "dpm_core", "torch", "numpy", "matplotlib", "tqdm", "IPython",
                 "ipykernel", "ipywidgets", "scipy", "PIL")


def _ow_reference(path: str):
    """The object at ``path`` as the installed dpm_core defines it, never a name from the notebook.

    Raises:
        AssertionError: the kernel replaced it (its module or qualified name differ).
    """
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name, None)
        module, qualname = ".".join(parts[:split]), ".".join(parts[split:])
        if getattr(obj, "__module__", None) == module and getattr(obj, "__qualname__", None) == qualname:
            return obj
        break
    raise AssertionError(f"{path} is not dpm_core's own any more: something in this notebook replaced "
                         f"it. Restart the kernel, and do not assign to dpm_core's names")


def _ow_is(obj, ref) -> bool:
    """Whether obj is ref, or the same object of a reloaded dpm_core (same module and name)."""
    if obj is ref:
        return True
    try:
        return (isinstance(obj, (type, types.FunctionType)) and type(obj) is type(ref)
                and obj.__module__ == ref.__module__ and obj.__qualname__ == ref.__qualname__)
    except Exception:  # noqa: BLE001 -- a hostile object may raise anything on attribute access
        return False


def _ow_library(obj, home: str) -> bool:
    """Whether obj comes from an installed library rather than from the notebook (``home``)."""
    try:
        module = obj.__module__
    except Exception:  # noqa: BLE001
        return False
    if not isinstance(module, str) or module in (home, "__main__"):
        return False
    top = module.split(".")[0]
    path = str(getattr(sys.modules.get(module), "__file__", None) or "")
    return top in _OW_LIBRARIES or top in sys.stdlib_module_names or "-packages" in path


def _ow_signature(code):
    """What a copy of ``code`` keeps: its instructions with their arguments, nested code
    included, without its docstring and line numbers. A method load counts as an attribute
    load and a jump by the index of its target: a specialised copy of the code that has run
    may show either. Code that defines an annotated function keeps only the instructions that
    do not load names or constants: its annotations are strings under
    ``from __future__ import annotations`` (as in dpm_core) and names without it."""
    instructions = [i for i in dis.get_instructions(code) if i.opname not in ("CACHE", "NOP", "RESUME")]
    index = {i.offset: n for n, i in enumerate(instructions)}
    jumps = set(dis.hasjrel) | set(dis.hasjabs)
    annotated = any(i.opname == "MAKE_FUNCTION" and i.arg & 4 for i in instructions)
    if annotated:
        instructions = [i for i in instructions if i.opname not in (
            "LOAD_CONST", "LOAD_GLOBAL", "LOAD_NAME", "BUILD_TUPLE", "EXTENDED_ARG")
            or isinstance(i.argval, types.CodeType)]
    return tuple(("LOAD_ATTR" if i.opname == "LOAD_METHOD" else i.opname,
                  _ow_signature(i.argval) if isinstance(i.argval, types.CodeType)
                  else (None if annotated else index.get(i.argval)) if i.opcode in jumps
                  else repr(i.argval))
                 for i in instructions)


def _ow_methods(cls) -> dict:
    """``{name: function}`` of the functions a class defines itself (properties by their getter)."""
    found = {}
    for name, value in vars(cls).items():
        value = getattr(value, "__func__", value)
        if isinstance(value, property):
            value = value.fget
        if isinstance(value, types.FunctionType):
            found[name] = value
    return found


def _ow_is_copy(obj, ref) -> bool:
    """Whether obj is a copy of ref's code: a function with ref's bytecode, or a class whose
    methods that ref also defines all have the bytecode of ref's."""
    if isinstance(obj, types.FunctionType) and isinstance(ref, types.FunctionType):
        return _ow_signature(obj.__code__) == _ow_signature(ref.__code__)
    if isinstance(obj, type) and isinstance(ref, type):
        mine, theirs = _ow_methods(obj), _ow_methods(ref)
        shared = [n for n in mine if n in theirs]
        return bool(shared) and all(_ow_signature(mine[n].__code__) == _ow_signature(theirs[n].__code__)
                                    for n in shared)
    return False


def _ow_code_names(code) -> tuple:
    """(global names, attribute names, imported modules, strings) that code and its nested code load."""
    globals_, attributes, modules, strings = set(), set(), set(), set()
    todo = [code]
    while todo:
        c = todo.pop()
        for ins in dis.get_instructions(c):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                globals_.add(ins.argval)
            elif ins.opname in ("LOAD_ATTR", "LOAD_METHOD", "LOAD_SUPER_ATTR", "IMPORT_FROM"):
                attributes.add(ins.argval)
            elif ins.opname == "IMPORT_NAME":
                modules.add(ins.argval)
        for const in c.co_consts:
            if isinstance(const, types.CodeType):
                todo.append(const)
            elif isinstance(const, str):
                strings.add(const)
            elif isinstance(const, tuple):
                strings.update(s for s in const if isinstance(s, str))
    return globals_, attributes, modules, strings


def _ow_code_uses(function, ref, home: str, seen: dict):
    """How a notebook function's code reaches ref, or None: the objects of the global names it
    loads, its closure cells, defaults and imports, followed along the attribute names it loads
    while they are modules or classes; and, for a method ref, an attribute load of its name."""
    code = function.__code__
    globals_, attributes, modules, strings = _ow_code_names(code)
    if "." in ref.__qualname__ and (ref.__name__ in attributes or ref.__name__ in strings):
        return f"{function.__qualname__} uses .{ref.__name__}"
    scope, roots = getattr(function, "__globals__", {}), []
    roots += [scope[n] for n in globals_ if n in scope]
    roots += [c.cell_contents for c in function.__closure__ or () if _ow_has_contents(c)]
    roots += list(function.__defaults__ or ()) + list((function.__kwdefaults__ or {}).values())
    for name in modules | {s for s in strings if s.startswith("dpm_core")}:
        parts = name.split(".")
        roots += [sys.modules[m] for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                  if m in sys.modules]
    roots += [item for r in roots if isinstance(r, (list, tuple, set, frozenset)) for item in r]
    roots += [item for r in roots if isinstance(r, dict) for item in r.values()]
    names = attributes | {s for s in strings if s.isidentifier()}
    frontier, expanded = roots, set()
    for _ in range(_OW_DEPTH):
        step = []
        for obj in frontier:
            how = _ow_found(obj, ref, home, seen)
            if how:
                return how if how != "it is the reference" else f"{function.__qualname__} uses it"
            if isinstance(obj, (types.ModuleType, type)) and id(obj) not in expanded:
                expanded.add(id(obj))
                for name in names:
                    try:
                        step.append(getattr(obj, name))
                    except Exception:  # noqa: BLE001
                        pass
        frontier = step
    return None


def _ow_has_contents(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell: the variable is not bound yet
        return False
    return True


def _ow_found(obj, ref, home: str, seen: dict):
    """How obj, the student's answer or something its code reaches, is or uses ref, or None.

    Library objects (dpm_core's, torch's) count only when they are ref itself; the notebook's
    functions and classes are read (each once: ``seen``).
    """
    if _ow_is(obj, ref):
        return "it is the reference"
    if isinstance(ref, type) and isinstance(obj, types.FunctionType) and obj.__module__ == ref.__module__ \
            and obj.__qualname__.startswith(ref.__qualname__ + "."):
        return f"it takes {obj.__qualname__}"  # a method borrowed from the reference class
    if id(obj) in seen:
        return None
    seen[id(obj)] = obj  # kept alive, so that its id is not reused
    if isinstance(obj, functools.partial):
        for part in (obj.func, *obj.args, *obj.keywords.values()):
            how = _ow_found(part, ref, home, seen)
            if how:
                return "it is a functools.partial of the reference" if how == "it is the reference" else how
        return None
    if isinstance(obj, types.MethodType):
        how = _ow_found(obj.__func__, ref, home, seen)
        return "it is a bound method of the reference" if how == "it is the reference" else how
    if isinstance(obj, (staticmethod, classmethod)):
        return _ow_found(obj.__func__, ref, home, seen)
    if isinstance(obj, property):
        return next(filter(None, (_ow_found(f, ref, home, seen) for f in (obj.fget, obj.fset, obj.fdel)
                                  if f is not None)), None)
    if isinstance(obj, (types.ModuleType, types.BuiltinFunctionType)) or _ow_library(obj, home):
        return None
    wrapped = vars(obj).get("__wrapped__") if isinstance(obj, (types.FunctionType, type)) else None
    if wrapped is not None:
        how = _ow_found(wrapped, ref, home, seen)
        if how:
            return "it wraps the reference" if how == "it is the reference" else how
    if isinstance(obj, types.FunctionType):
        if _ow_is_copy(obj, ref):
            return f"{obj.__qualname__} is a copy of its code"
        return _ow_code_uses(obj, ref, home, seen)
    if isinstance(obj, type):
        for base in obj.__mro__[1:]:
            if _ow_is(base, ref) or (isinstance(ref, type) and isinstance(base, type) and issubclass(base, ref)):
                return f"{obj.__qualname__} subclasses it"
        if _ow_is_copy(obj, ref):
            return f"{obj.__qualname__} is a copy of its code"
        for klass in obj.__mro__:
            if klass is object or _ow_library(klass, home):
                continue
            for value in list(vars(klass).values()):
                how = _ow_found(value, ref, home, seen)
                if how:
                    return f"{klass.__qualname__}'s code uses it" if how == "it is the reference" else how
        return None
    if not isinstance(obj, (int, float, complex, str, bytes, bool, type(None), torch.Tensor)):
        return _ow_found(type(obj), ref, home, seen)  # a callable instance: read its class
    return None


def _ow_instance(path: str, cls):
    """A small instance of the student's class answering ``path``, built as the checks build
    one from dpm_core's parts (None when that fails or there is no recipe); the random state
    is left as it was."""
    def part(module, name, *args):
        return getattr(importlib.import_module(f"dpm_core.{module}"), name)(*args)

    recipes = {
        "dpm_core.priors.GaussianPriorNet": lambda: (3,),
        "dpm_core.priors.MoGPriorNet": lambda: (3, 2),
        "dpm_core.conditionals.BinarizedImageModel": lambda: (1, 4, 4, 2),
        "dpm_core.conditionals.ContinuousImageModel": lambda: (1, 4, 4, 2),
        "dpm_core.conditionals.GaussianCPDNet": lambda: (2, 3),
        "dpm_core.conditionals.MoGCPDNet": lambda: (2, 3),
        "dpm_core.joint.JointDistribution": lambda: (part("priors", "GaussianPriorNet", 2),
                                                     part("conditionals", "GaussianCPDNet", 3, 2)),
        "dpm_core.nvil.NVIL": lambda: (part("joint", "JointDistribution", part("priors", "GaussianPriorNet", 2),
                                            part("conditionals", "GaussianCPDNet", 3, 2)),
                                       part("conditionals", "GaussianCPDNet", 2, 3)),
        "dpm_core.variance.CentredReward": tuple,
        "dpm_core.variance.ScaledReward": tuple,
        "dpm_core.variance.SelfCritic": tuple,
        "dpm_core.variance.Baseline": lambda: (3, 4),
        "dpm_core.variance.CVChain": lambda: (part("variance", "VarianceReduction"),),
        # a coupling over K = 2 whose conditioner moves nothing
        "dpm_core.flows.AffineCoupling": lambda: (torch.tensor([1.0, 0.0]),
                                                  lambda v: (0 * v, 0 * v)),
    }
    if path not in recipes:
        return None
    with torch.random.fork_rng(devices=[]):
        try:
            return cls(*recipes[path]())
        except Exception:  # noqa: BLE001 -- the check itself reports a constructor that fails
            return None


def _ow_held(instance, ref):
    """The qualified name of a submodule or attribute of ``instance`` that is an instance of ref, or None."""
    parts = list(instance.modules()) if isinstance(instance, torch.nn.Module) else [instance]
    for part in parts:
        values = [part] if part is not instance else []
        values += [v for v in vars(part).values() if not isinstance(v, dict)]
        values += [v for d in vars(part).values() if isinstance(d, dict) for v in d.values()]
        for value in values:
            if isinstance(value, ref):
                return f"it holds a {ref.__module__}.{ref.__qualname__}"
    return None


def _expect_own_work(ns: dict, answers: dict) -> None:
    """Check that the exercise is not answered with dpm_core's reference of it.

    Args:
        ns: the notebook's namespace.
        answers: ``{name the exercise defines: dotted path of dpm_core's reference}``.

    Raises:
        AssertionError: a name is, subclasses, wraps, calls, holds or copies its reference.
    """
    home = ns.get("__name__", "__main__")
    for name, path in answers.items():
        ref = _ow_reference(path)
        if name not in ns:
            continue  # the check says that the name is missing
        how = _ow_found(ns[name], ref, home, {})
        if how is None and isinstance(ref, type) and isinstance(ns[name], type):
            instance = _ow_instance(path, ns[name])
            how = _ow_held(instance, ref) if instance is not None else None
        if how:
            raise AssertionError(f"{name} is dpm_core's reference answer ({path}): write your own; "
                                 f"dpm_core's reference of this exercise earns no points ({how})")
