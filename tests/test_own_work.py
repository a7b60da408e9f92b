"""No credit for dpm_core's reference: the source scan, and nothing to reach in the kernel.

Every assignment is judged outside the kernel (``course.judges``), and its kernels import the
student build of dpm_core (``course.handout.student_package``), in which the references of the
assignment's exercises raise: importing, aliasing, wrapping, subclassing or composing one
reaches that raise, whatever form the code takes (the hostile class of ``tests/test_grading.py``
tries them through the real grader). Here: does ``scan_solution`` find the cheats in a cell's
source and fail that exercise's test cells only; does the student build withhold every
reference of the assignment; do solutions that use dpm_core for what is not their exercise pass?
"""

import inspect
import os
import sys
import textwrap

import pytest
import torch

from checks_harness import notebook_cells, outcomes

from course.exercises import EXERCISES, resolve
from course.handout import student_package
from course.judges import JUDGED
from course.own_work import exercise_tests, scan_solution

#: (assignment, solution cell, name, dotted path) of every reference in course/exercises.py
REFERENCES = [(a, cell, name, path) for a, cells in EXERCISES.items() for cell, names in cells.items()
              for name, path in names.items() if path]


def test_every_reference_resolves_to_dpm_core():
    """Does every dotted path of course/exercises.py name an object that dpm_core defines there
    (the hand-out withholds it by that path)?"""
    for _, _, _, path in REFERENCES:
        ref = resolve(path)
        assert f"{ref.__module__}.{ref.__qualname__}" == path


def _copy_source(path: str, names_present) -> str:
    """The reference's source as a student would paste it: the names it needs that the notebook
    lacks imported from its dpm_core module, then the definition, dedented."""
    ref = resolve(path)
    module = inspect.getmodule(ref)
    source = textwrap.dedent(inspect.getsource(ref))
    needed = sorted(n for n in vars(module) if not n.startswith("__") and n not in names_present
                    and n != ref.__name__ and f"{n}" in source)
    imports = f"from {module.__name__} import {', '.join(needed)}\n" if needed else ""
    return imports + source


def cheats(assignment: str, name: str, path: str, names_present) -> dict:
    """``{form: code}``: the ways of answering ``name`` with the reference at ``path``."""
    ref = resolve(path)
    module, qualname = ref.__module__, ref.__qualname__
    own = qualname.split(".")[-1]
    forms = {
        "import": f"from {module} import {qualname.split('.')[0]} as _Ref\n{name} = _Ref"
                  + ("" if "." not in qualname else f".{own}"),
        "module alias": f"import {module} as _m\n{name} = _m.{qualname}",
        "wrapper": f"import {module}\ndef {name}(*args, **kwargs):\n    return {path}(*args, **kwargs)",
    }
    if "." not in qualname and hasattr(__import__("dpm_core"), own):
        forms["package re-export"] = f"import dpm_core\n{name} = dpm_core.{own}"
    if isinstance(ref, type):
        # a module delegates forward; a torch.distributions transform its three maps
        transform = issubclass(ref, torch.distributions.transforms.Transform)
        base = "torch.distributions.transforms.Transform" if transform else "torch.nn.Module"
        methods = ("_call", "_inverse", "log_abs_det_jacobian") if transform else ("forward",)
        delegates = "".join(f"    def {m}(self, *args, **kwargs):\n"
                            f"        return self.inner.{m}(*args, **kwargs)\n" for m in methods)
        forms["subclass"] = f"import {module}\nclass {name}({path}):\n    pass"
        forms["composition"] = (
            f"import torch\nfrom {module} import {qualname} as _Inner\n"
            f"class {name}({base}):\n"
            f"    def __init__(self, *args, **kwargs):\n"
            f"        super().__init__()\n"
            f"        self.inner = _Inner(*args, **kwargs)\n" + delegates)
        forms["composition by type()"] = (  # the class is reached only through an instance
            f"import torch\nimport {module}\n_models = [{path}]\n"
            f"class {name}({base}):\n"
            f"    def __init__(self, *args, **kwargs):\n"
            f"        super().__init__()\n"
            f"        self.inner = _models[0](*args, **kwargs)\n" + delegates)
        forms["copy"] = _copy_source(path, names_present)
        forms["borrowed methods"] = (
            f"import torch\nimport {module}\n"
            f"class {name}({base}):\n"
            f"    __init__ = {path}.__init__\n"
            + "".join(f"    {m} = {path}.{m}\n" for m in methods))
    else:
        forms["partial"] = f"import functools\nimport {module}\n{name} = functools.partial({path})"
        forms["lambda"] = f"import {module}\n{name} = lambda *args, **kwargs: {path}(*args, **kwargs)"
        forms["copy"] = _copy_source(path, names_present) + (f"\n{name} = {own}" if own != name else "")
        forms["getattr of importlib"] = (
            f"import importlib\ndef {name}(*args, **kwargs):\n"
            f"    return getattr(importlib.import_module({module!r}), {own!r})(*args, **kwargs)"
            if "." not in qualname else
            f"import importlib\ndef {name}(*args, **kwargs):\n"
            f"    cls = getattr(importlib.import_module({module!r}), {qualname.split('.')[0]!r})\n"
            f"    return getattr(cls, {own!r})(*args, **kwargs)")
        if "." in qualname:  # a method: called on an instance the student builds
            forms["method of an instance"] = (
                f"def {name}(*args, **kwargs):\n    model = _build_model(*args)\n"
                f"    return model.{own}(args[0])")
    return forms


def _solution(assignment: str, cell: str, old: str, new: str) -> str:
    """The reference solution cell's source with ``old`` replaced by ``new``."""
    source = notebook_cells(assignment)[cell].source
    assert old in source, f"{cell} has no {old!r}"
    return source.replace(old, new)


#: solutions that use dpm_core for what is not their exercise: (assignment, cell, old, new, checks
#: that must pass, what it shows)
DOWNSTREAM = [
    ("vae_basics", "loss-solution", "return (nll + KL(mu, logvar)).mean()",
     "import dpm_core.kl\n    return (nll + dpm_core.kl.KL(mu, logvar)).mean()",
     ["loss-terms-tests", "loss-batch-tests"], "loss_func calling dpm_core.kl.KL"),
    ("vae_basics", "kl-solution", "return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)",
     "return __import__('dpm_core').KL(mu, logvar)",
     ["loss-terms-tests", "loss-batch-tests", "reparametrise-distribution-tests"],
     "a KL taken from dpm_core costs the KL cells only"),
    ("dpm2_inference", "gaussian-cpd-solution", "class GaussianCPDNet(CPDNet):",
     "from dpm_core.conditionals import GaussianCPDNet\nclass _Unused(CPDNet):",
     ["mog-cpd-tests", "nvil-drl-tests", "nvil-forward-tests", "cv-centred-tests"],
     "a GaussianCPDNet taken from dpm_core costs the GaussianCPDNet cell only"),
    ("dpm2_inference", "nvil-solution", "        R = kl if kl is not None else (log_qz - log_pz).mean(0)\n"
     "        # log of",
     "        R = kl if kl is not None else (log_qz - log_pz).mean(0)\n"
     "        assert isinstance(self.inf_model, CPDNet) or dpm_core.conditionals.GaussianCPDNet\n"
     "        # log of", ["nvil-drl-tests", "nvil-forward-tests"],
     "NVIL that names dpm_core.conditionals.GaussianCPDNet (not its exercise's reference)"),
    ("importance_sampling", "estimators-solution", "z = qz.rsample((num_samples,))",
     "z = qz.rsample((num_samples,)) if not isinstance(joint, PPCA) else "
     "qz.rsample((num_samples,)) + 0 * joint.exact_log_marginal(x).sum()",
     ["log-weights-tests", "elbo-estimate-tests", "log-prob-estimate-tests"],
     "log_weights calling PPCA.exact_log_marginal, the reference of another exercise"),
]


@pytest.mark.parametrize("assignment,cell,old,new,passing,what", DOWNSTREAM, ids=[d[-1] for d in DOWNSTREAM])
def test_dpm_core_for_what_is_not_the_exercise_is_accepted(assignment, cell, old, new, passing, what):
    """Does a solution that uses dpm_core for what is not its exercise pass the checks and the
    own-work checks of the exercises downstream?"""
    if assignment == "dpm2_inference" and "dpm_core.conditionals" in new:
        new = new.replace("assert", "import dpm_core.conditionals\n        assert", 1)
    replace = (cell, old, new)
    got = outcomes(assignment, replace, only=passing)
    assert not {g: m for g, m in got.items() if m}, what
    if set(passing) & set(exercise_tests(assignment)[cell]):  # its own exercise must pass too
        assert not scan_solution(assignment, cell, _solution(assignment, cell, old, new)), what


# --- scan_solution --------------------------------------------------------------------------

SCAN_CHEATS = [
    ("vae_basics", "kl-solution", "from dpm_core.kl import KL"),
    ("vae_basics", "kl-solution", "from dpm_core import KL"),
    ("vae_basics", "kl-solution", "from dpm_core.kl import KL as mine"),
    ("vae_basics", "kl-solution", "import dpm_core.kl as k\nKL = k.KL"),
    ("vae_basics", "kl-solution", "import dpm_core.kl\ndef KL(mu, logvar):\n    return dpm_core.kl.KL(mu, logvar)"),
    ("vae_basics", "kl-solution", "import dpm_core\nKL = dpm_core.KL"),
    ("vae_basics", "kl-solution", "from dpm_core.kl import *"),
    ("vae_basics", "kl-solution", "import importlib\nKL = importlib.import_module('dpm_core.kl').KL"),
    ("vae_basics", "kl-solution", "import importlib\nm = importlib.import_module('dpm_core.kl')\nKL = m.KL"),
    ("vae_basics", "kl-solution", "import importlib\nKL = getattr(importlib.import_module('dpm_core.kl'), 'KL')"),
    ("vae_basics", "kl-solution", "KL = __import__('dpm_core').kl.KL"),
    ("vae_basics", "kl-solution", "%time 1\n!ls\nfrom dpm_core import kl\nKL = kl.KL"),
    ("dpm2_generative", "gaussian-prior-solution",
     "import dpm_core\nclass GaussianPriorNet(dpm_core.GaussianPriorNet):\n    pass"),
    ("dpm2_inference", "cv-critic-solution", "from dpm_core.variance import Baseline"),
    ("importance_sampling", "ppca-solution",
     "from dpm_core import PPCA\nppca_posterior = PPCA.exact_posterior"),
    ("importance_sampling", "ppca-solution",
     "def ppca_posterior(x, W, b, sigma):\n    return build(W, b, sigma).exact_posterior(x)"),
    ("importance_sampling", "estimators-solution",
     "def elbo_estimate(x, qz, joint, num_samples=1):\n    return make_nvil(joint, qz).elbo(x, num_samples)"),
]
SCAN_ALLOWED = [
    ("vae_basics", "loss-solution", "from dpm_core.kl import KL\nimport dpm_core\nx = dpm_core.kl.KL"),
    ("vae_basics", "kl-solution", "from dpm_core.vae import loss_func\nimport dpm_core.kl as k\nf = k.mc_kl"),
    ("dpm2_inference", "nvil-solution", "from dpm_core import GaussianCPDNet, JointDistribution\n"
     "class NVIL:\n    def elbo(self, x):\n        return self.DRL(x)"),
    ("importance_sampling", "pca-solution", "from dpm_core.ppca import PPCA\nm = PPCA(2, 1).exact_posterior"),
    ("dpm2_generative", "gaussian-prior-solution", "def broken(:\n    pass"),
]


@pytest.mark.parametrize("assignment,cell,source", SCAN_CHEATS, ids=[s[:40] for _, _, s in SCAN_CHEATS])
def test_scan_finds_the_reference(assignment, cell, source):
    """Does the scan of the solution cell's source find this way of reaching the reference?"""
    found = scan_solution(assignment, cell, source)
    assert found and all("dpm_core's reference of this exercise" in m for m in found), found


@pytest.mark.parametrize("assignment,cell,source", SCAN_ALLOWED, ids=[s[:40] for _, _, s in SCAN_ALLOWED])
def test_scan_allows_other_dpm_core_names(assignment, cell, source):
    """Does the scan leave alone dpm_core names that are not this exercise's reference (and a
    cell that does not parse)?"""
    assert scan_solution(assignment, cell, source) == []


@pytest.mark.parametrize("assignment,cell", sorted({(a, c) for a in EXERCISES for c in EXERCISES[a]}),
                         ids=[c for c in sorted({c for a in EXERCISES for c in EXERCISES[a]})])
def test_scan_passes_the_reference_solutions(assignment, cell):
    """Does the scan find nothing in the notebooks' own solution cells?"""
    assert scan_solution(assignment, cell, notebook_cells(assignment)[cell].source) == []


def test_scan_finds_the_cheats_of_the_kernel_tests():
    """Does the scan find every source-level way of answering an exercise with its reference
    (all but a verbatim copy and borrowed methods, which the student build makes impossible:
    the hand-out holds neither the reference's source nor a working method to borrow)?"""
    missed = []
    for assignment, cell, name, path in REFERENCES:
        for form, code in cheats(assignment, name, path, ()).items():
            if form not in ("copy", "borrowed methods") and not scan_solution(assignment, cell, code):
                missed.append(f"{name}:{form}")
    assert not missed


@pytest.mark.parametrize("assignment", JUDGED)
def test_a_judged_assignment_s_kernel_has_none_of_its_references(assignment, tmp_path):
    """Does the dpm_core that a judged assignment's kernels import (``student_package``) raise
    the withheld message for every reference of the assignment's exercises, so that a solution
    that delegates to one has nothing to reach?"""
    import subprocess

    package = tmp_path / "dpm_core"
    for rel, text in student_package(assignment).items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text(text)
    paths = [p for a, _, _, p in REFERENCES if a == assignment]
    assert paths
    probe = "\n".join(
        ["import importlib, inspect, sys", "from course.exercises import resolve", "failed = []"]
        + [f"f = resolve({p!r})\n"
           # a class: each function it defines (an inherited __init__ is not the exercise)
           f"for g in ([v for v in vars(f).values() if inspect.isfunction(v)]\n"
           f"          if inspect.isclass(f) else [f]):\n"
           f"    try:\n        g(*[None] * len(inspect.signature(g).parameters))\n"
           f"        failed.append({p!r} + '.' + g.__name__)\n"
           f"    except NotImplementedError as e:\n"
           f"        assert 'released with the solutions' in str(e), e\n"
           f"    except Exception:\n        failed.append({p!r} + '.' + g.__name__)"
           for p in paths]
        + ["assert not failed, failed", "print(sys.modules['dpm_core'].__file__)"])
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(package) in out.stdout
