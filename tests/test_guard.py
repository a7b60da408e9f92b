"""The grading guard without nbgrader: its static scan, its tokens, and the guard in a kernel.

The end-to-end proof, a class of cheats graded in one batch, is ``tests/test_grading.py``;
these cases are the quick ones: what the scan finds (and leaves alone: every solution cell
of the reference solutions), and how a token is verified, forged or replayed.
"""

import hashlib
import hmac
import json
import os
from pathlib import Path

import nbformat
import pytest

from course.guard import GUARD_NAME, GuardSession, scan_source

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENTS = ["vae_basics", "dpm2_generative", "dpm2_inference", "importance_sampling"]


def _student_cells():
    """(assignment, grade id, source) of every solution cell of the reference solutions."""
    for a in ASSIGNMENTS:
        nb = nbformat.read(REPO / "source" / a / f"{a}.ipynb", 4)
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type == "code" and meta.get("solution"):
                yield a, meta["grade_id"], cell.source


@pytest.mark.parametrize("assignment, grade_id, source", list(_student_cells()),
                         ids=[f"{a}:{g}" for a, g, _ in _student_cells()])
def test_the_scan_leaves_honest_solutions_alone(assignment, grade_id, source):
    """Does the scan find nothing in the reference solutions (no false alarm)?"""
    assert scan_source(source) == []


@pytest.mark.parametrize("code, finding", [
    ("get_ipython().events.register('pre_run_cell', f)", "IPython's shell"),
    ("ip.input_transformers_cleanup.append(f)", ".input_transformers_cleanup"),
    ("import dpm_core.grading as g\ng.expect = lambda *a: None", "assigns g.expect"),
    ("torch.allclose = lambda *a, **k: True", "assigns torch.allclose"),
    ("setattr(torch.Tensor, '__eq__', f)", "setattr(torch.Tensor, ...)"),
    ("import sys\nsys.modules['dpm_core'] = fake", "sys.modules"),
    ("import sys\nsys.path.insert(0, '.')", "sys.path"),
    ("f = sys._getframe(1)", "._getframe"),
    ("g = fn.__globals__", ".__globals__"),
    ("exec('x = 1')", "exec"),
    ("__import__('gc').get_objects()", "__import__"),
    ("import ctypes", "import ctypes"),
    ("from torch.overrides import TorchFunctionMode", "from torch.overrides import ..."),
    ("class T(torch.Tensor):\n    def __torch_function__(cls, *a):\n        return True",
     "defines __torch_function__"),
    ("%run helper.py", "the %run magic"),
    ("!cat /etc/passwd", "a shell command"),
    ("__dpm_grading_guard__ = None", "the grading guard's name"),
])
def test_the_scan_finds_what_reaches_into_the_kernel(code, finding):
    """Does the scan name each way of reaching into the kernel, with its line?"""
    found = scan_source(code)
    assert any(finding in f for f in found), found
    assert all(f.startswith("line ") for f in found)


def _reply(token: str) -> dict:
    return {"status": "ok", "user_expressions": {"token": {
        "status": "ok", "data": {"text/plain": repr(token)}}}}


def _token(session: GuardSession, grade_id: str, status="pass", reasons=(), key=None):
    message = "\n".join([grade_id, session.nonces[grade_id], status, *reasons]).encode()
    mac = hmac.new(key or session.key, message, hashlib.sha256).hexdigest()
    return json.dumps({"status": status, "reasons": list(reasons), "mac": mac})


def test_a_token_signed_with_the_key_passes_and_anything_else_does_not(tmp_path):
    """Is a token the guard signed accepted; a failed cell (no token) not; a token under
    another key, for another nonce (a replay) or with its verdict edited called forged?"""
    session = GuardSession(tmp_path)
    expression = session.expression("kl-tests")
    assert expression.startswith(f"{GUARD_NAME}.token('kl-tests', ")
    good = _token(session, "kl-tests")
    assert session.verdict("kl-tests", _reply(good)) == ("pass", [])
    assert session.verdict("kl-tests", {"status": "error"}) == ("none", [])
    assert session.verdict("kl-tests", _reply(_token(session, "kl-tests", key=b"x" * 32)))[0] \
        == "tampered"
    edited = json.loads(_token(session, "kl-tests", "tampered", ["torch.allclose was replaced"]))
    edited["status"], edited["reasons"] = "pass", []
    assert session.verdict("kl-tests", _reply(json.dumps(edited)))[0] == "tampered"
    session.expression("kl-tests")  # a new nonce: the old token is a replay
    assert session.verdict("kl-tests", _reply(good)) == ("tampered",
                                                         ["the pass token of kl-tests was forged"])


def test_a_tampered_verdict_keeps_its_reasons(tmp_path):
    """Does a signed "tampered" token give its reasons to the grader?"""
    session = GuardSession(tmp_path)
    session.expression("<final>")
    token = _token(session, "<final>", "tampered", ["IPython's input transformers were changed"])
    assert session.verdict("<final>", _reply(token)) == (
        "tampered", ["IPython's input transformers were changed"])


def test_a_removed_guard_is_tampering(tmp_path):
    """Is a user expression that failed (the guard deleted) tampering, not a pass?"""
    session = GuardSession(tmp_path)
    session.expression("kl-tests")
    reply = {"status": "ok", "user_expressions": {"token": {"status": "error",
                                                            "ename": "NameError"}}}
    status, reasons = session.verdict("kl-tests", reply)
    assert status == "tampered" and "removed or replaced" in reasons[0]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A plain ipykernel (no sandbox), stopped at the end."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def _run(kc, code: str, **kw) -> dict:
    kc.execute(code, **kw)
    while True:
        reply = kc.get_shell_msg(timeout=120)
        if reply["msg_type"] == "execute_reply":
            return reply["content"]


def test_the_guard_in_a_kernel_signs_a_pass_then_reports_a_replaced_function(kernel, tmp_path):
    """Installed in a live kernel, does the guard delete its key file, sign a pass for an
    untouched kernel, and a signed "tampered" naming torch.allclose once a cell replaced it?"""
    session = GuardSession(tmp_path)
    reply = _run(kernel, session.install_code([]), silent=True, store_history=False)
    assert reply["status"] == "ok", reply
    assert not session.key_file.exists()
    reply = _run(kernel, "x = 1", user_expressions={"token": session.expression("a")})
    assert session.verdict("a", reply) == ("pass", [])
    _run(kernel, "import torch\n_t = torch\n_t.allclose = lambda *a, **k: True")
    reply = _run(kernel, "x = 2", user_expressions={"token": session.expression("b")})
    status, reasons = session.verdict("b", reply)
    assert status == "tampered" and any("torch.allclose was replaced" in r for r in reasons)


def test_the_guard_sees_a_thread_that_patches_between_its_checks(kernel, tmp_path):
    """Is a background thread that patches torch.allclose and restores it between the
    guard's checks (so that a check may find the original) reported on every token?"""
    session = GuardSession(tmp_path)
    assert _run(kernel, session.install_code([]), silent=True, store_history=False)["status"] == "ok"
    _run(kernel, """import torch
_t, _orig = torch, torch.allclose
def _flip():
    import time as _tm
    while True:
        _t.allclose = lambda *a, **k: True
        _tm.sleep(0.001)
        _t.allclose = _orig
        _tm.sleep(0.05)
_t.sys.modules['threading'].Thread(target=_flip, daemon=True).start()
""")
    for n in range(5):
        reply = _run(kernel, "x = 1", user_expressions={"token": session.expression(f"t{n}")})
        status, reasons = session.verdict(f"t{n}", reply)
        assert status == "tampered" and any("background thread" in r for r in reasons), reasons


def test_code_run_through_the_self_check_helper_counts_as_the_cells(tmp_path):
    """dpm_core.selfcheck execs self-check code for check(); a cell that hands it code of its
    own (here a gc walk, the way to the signing key) must not hide that code from the audit
    hook: the code counts as the cell's."""
    from jupyter_client.manager import start_new_kernel

    student = {k: v for k, v in os.environ.items() if k != "NBGRADER_EXECUTION"}
    km, kc = start_new_kernel(kernel_name="python3", env=student)  # check() works while not graded
    try:
        session = GuardSession(tmp_path)
        assert _run(kc, session.install_code([]), silent=True, store_history=False)["status"] == "ok"
        reply = _run(kc, "from dpm_core.selfcheck import Item, run_in_namespace\n"
                         "walk = 'import gc as g\\nfound = len(g.get_objects())'\n"
                         "run_in_namespace([Item('x', 'code', walk)], {})")
        assert reply["status"] == "ok", reply
        reply = _run(kc, "x = 1", user_expressions={"token": session.expression("a")})
        status, reasons = session.verdict("a", reply)
        assert status == "tampered" and any("gc" in r for r in reasons), reasons
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
