"""The hidden tests as code: ``course/checks`` against the notebooks and the reference solutions.

Do the committed notebooks hold what ``python -m course.sync_checks`` generates, does every
check pass the reference solution (for many seeds), and does every realistic mistake of
``tests/check_mistakes.py`` fail the check of its exercise, with a message that names it,
while the valid variants of ``tests/check_variants.py`` pass?

A mistake costs points once: no other check may fail because of it (unless its catalogue
entry declares that check in ``also``, with the reason). The default run takes under a minute:
the seed test covers the checks that run in a fraction of a second, and a mistake runs the
check that must catch it and the other fast checks that could fail because of it (those of
its exercise and those downstream that reuse its code, ``checks_harness.affected_checks``).
``DPM_CHECKS_FULL=1`` runs every check for 100 seeds and every check after each mistake's cell
(a few minutes).
"""

import os
import shutil
import sys
import time
from collections import Counter

import pytest
import torch

import check_mistakes
import check_variants
from checks_harness import (ASSIGNMENTS, REPO, VISIBLE_CONTEXT_CELLS, affected_checks, cell_code,
                            checks, needs_visible_part, outcomes, reference_namespace, run_check,
                            visible_part)

from course import sync_checks

#: the long run: every check for 100 seeds, and every check downstream of each mistake
FULL = os.environ.get("DPM_CHECKS_FULL", "") == "1"
#: seeds of the stability test
NUM_SEEDS = 100 if FULL else 20
#: in the default run, the stability test leaves out checks slower than this (seconds; the
#: slow ones are the gradient and variance checks, which have fixed seeds and 5-standard-error
#: tolerances; the full run covers them)
FAST_CHECK_S = 0.1
#: failures per NUM_SEEDS seeds that the stability test tolerates, with the reason: the
#: variance check measures on the notebook's confident_image_nvil, which seeds itself (seed 0);
#: with its seeding disabled the model is redrawn, and for 1 of 100 redrawn models ScaledReward
#: left 0.55 > 0.5 of the variance (0.04 to 0.24 for 15 others). Grading uses seed 0.
RARE_FAILURES = {"cv-variance-tests": 2 if FULL else 0}
#: in the default run, a mistake's test runs the other checks that could fail because of it when
#: they take at most this long on the reference (seconds); the full run runs every check after
#: the mistake's cell, the slow gradient and variance checks included
DOWNSTREAM_CHECK_S = 0.1
CHECK_IDS = [(a, g) for a in ASSIGNMENTS for g in checks(a)]


@pytest.fixture(scope="module")
def namespaces() -> dict:
    """The reference namespace of every assignment after its solution cells and the visible
    parts of the graded cells that define names their checks read, built once."""
    built = {}
    for assignment in ASSIGNMENTS:
        ns = built[assignment] = reference_namespace(assignment)
        for grade_id in checks(assignment):
            if needs_visible_part(ns, assignment, grade_id):
                exec(visible_part(assignment, grade_id), ns)
    return built


@pytest.fixture(scope="module")
def reference_runs(namespaces) -> dict:
    """``{grade id: (seconds, error or None)}``: every check run once on the reference, timed."""
    runs = {}
    for assignment in ASSIGNMENTS:
        for grade_id in checks(assignment):
            torch.manual_seed(0)
            start = time.perf_counter()
            try:
                run_check(namespaces[assignment], assignment, grade_id, visible=False)
                error = None
            except Exception as exc:  # noqa: BLE001 -- reported by the test of that check
                error = f"{type(exc).__name__}: {exc}"
            runs[grade_id] = (time.perf_counter() - start, error)
    return runs


def test_committed_notebooks_are_in_sync():
    """Do the committed source notebooks hold exactly the hidden code the checks modules generate?"""
    assert sync_checks.out_of_sync(REPO) == []


@pytest.fixture
def course_copy(tmp_path):
    """A copy of source/ in a temporary folder, for the sync tool to edit."""
    shutil.copytree(REPO / "source", tmp_path / "source")
    return tmp_path


def test_a_hand_edited_hidden_region_is_found_and_repaired(course_copy):
    """If someone edits a hidden region in a notebook, does out_of_sync name that cell, and does
    sync restore it while leaving the visible self-checks byte for byte?"""
    path = course_copy / "source" / "vae_basics" / "vae_basics.ipynb"
    text = path.read_text()
    edited = text.replace("check_kl_formula(globals())", "check_kl_formula(globals())\\nprint(1)", 1)
    assert edited != text
    path.write_text(edited)
    assert sync_checks.out_of_sync(course_copy) == ["vae_basics:kl-formula-tests"]
    assert sync_checks.sync(course_copy) == ["vae_basics:kl-formula-tests"]
    assert path.read_text() == text


def test_an_edited_check_module_makes_the_notebook_out_of_sync(course_copy, monkeypatch):
    """If a check changes in course/checks but the notebook is not re-synced, is the cell reported?"""
    original = sync_checks.hidden_code

    def edited(assignment, grade_id):
        code = original(assignment, grade_id)
        return code + "\n# edited" if grade_id == "kl-reduction-tests" else code

    monkeypatch.setattr(sync_checks, "hidden_code", edited)
    assert sync_checks.out_of_sync(course_copy) == ["vae_basics:kl-reduction-tests"]


def test_the_pipeline_refuses_a_release_from_notebooks_out_of_sync(course_copy):
    """Does generate_release stop, naming the cell and the command to run, before nbgrader
    writes a release whose hidden tests differ from course/checks?"""
    sys.path.insert(0, str(REPO / "course"))
    import pipeline

    path = course_copy / "source" / "vae_basics" / "vae_basics.ipynb"
    path.write_text(path.read_text().replace("check_kl_reduction(globals())", "pass", 1))
    with pytest.raises(RuntimeError, match=r"vae_basics:kl-reduction-tests.*python -m course.sync_checks"):
        pipeline.generate_release(course_copy, pipeline.load_assignments())
    assert not (course_copy / "release").exists()


def test_sync_refuses_generated_code_that_rebinds_a_notebook_name(course_copy, monkeypatch):
    """Would sync refuse a check whose generated code redefines a name the notebook's own code
    defines (later cells would call the check's version; this cost the reference 10 points)?"""
    original = sync_checks.hidden_code

    def clashing(assignment, grade_id):
        code = original(assignment, grade_id)
        return code + "\n\n\ndef loss_func(*args):\n    pass" if grade_id == "kl-formula-tests" else code

    monkeypatch.setattr(sync_checks, "hidden_code", clashing)
    with pytest.raises(ValueError, match=r"vae_basics:kl-formula-tests rebinds the notebook's \['loss_func'\]"):
        sync_checks.sync(course_copy)


def test_sync_is_idempotent(course_copy):
    """Does a second sync rewrite nothing, leaving every notebook's bytes as they were?"""
    sync_checks.sync(course_copy)
    before = {p: p.read_bytes() for p in (course_copy / "source").rglob("*.ipynb")}
    assert sync_checks.sync(course_copy) == []
    assert {p: p.read_bytes() for p in (course_copy / "source").rglob("*.ipynb")} == before


@pytest.mark.parametrize("assignment,grade_id", CHECK_IDS, ids=[g for _, g in CHECK_IDS])
def test_check_passes_the_reference(assignment, grade_id, reference_runs):
    """Does the check of this graded cell pass the reference solution?"""
    assert reference_runs[grade_id][1] is None


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_graded_cells_as_synced_pass_the_reference_in_notebook_order(assignment):
    """Do the graded cells themselves (self-checks, then the generated hidden code), run one
    after the other as the kernel runs them, pass the reference? This runs the code nbgrader
    runs, not the modules: a helper that the generated code defines in the notebook's namespace
    and that a later cell also uses would show here."""
    ns = reference_namespace(assignment, also=tuple(VISIBLE_CONTEXT_CELLS.get(assignment, ())))
    for grade_id in checks(assignment):
        exec(compile(cell_code(assignment, grade_id), f"<{grade_id}>", "exec"), ns)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_checks_pass_the_reference_for_many_seeds(assignment, namespaces, reference_runs,
                                                 monkeypatch):
    """Does every check pass the reference whatever its random draws? For each of NUM_SEEDS
    seeds, torch.manual_seed(seed) runs before each check and the check's own calls to
    torch.manual_seed are disabled, so that its draws, not only the global state, change:
    a tolerance tuned to one lucky seed fails here (the MoGCPDNet check did, for about a third
    of the seeds, until its gradient test stopped using inputs of scale 10)."""
    ns = namespaces[assignment]
    seed = torch.manual_seed
    failed, messages, skipped = Counter(), {}, []
    for grade_id, check in checks(assignment).items():
        if not FULL and reference_runs[grade_id][0] > FAST_CHECK_S:
            skipped.append(grade_id)
            continue
        for s in range(NUM_SEEDS):
            seed(s)
            monkeypatch.setattr(torch, "manual_seed", lambda _: None)
            try:
                check(ns)
            except AssertionError as error:
                failed[grade_id] += 1
                messages[grade_id] = str(error)[:120]
            finally:
                monkeypatch.setattr(torch, "manual_seed", seed)
    failed = {g: (n, messages[g]) for g, n in failed.items() if n > RARE_FAILURES.get(g, 0)}
    assert not failed, f"checks failed the reference for some of {NUM_SEEDS} seeds: {dict(failed)}"


#: outcome of every catalogue entry, for the summary printed at the end of the module
_CAUGHT: dict = {}


@pytest.fixture(scope="module")
def catalogue_report(request):
    """Collects the mistakes' outcomes and prints the catch rate when the module is done."""
    yield _CAUGHT
    if not _CAUGHT:
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = []
    write = lines.append
    caught = [k for k, v in _CAUGHT.items() if v["caught"]]
    named = [k for k in caught if _CAUGHT[k]["named"]]
    write(f"\nmistake catalogue: {len(caught)} / {len(_CAUGHT)} caught by their exercise's check, "
          f"{len(named)} of them with the expected words in the message")
    for key, v in _CAUGHT.items():
        if not v["caught"]:
            write(f"  got through: {key}" + (f" (accepted: {v['accepted']})" if v["accepted"] else ""))
    twice = [k for k, v in _CAUGHT.items() if v["others"]]
    ran = "every check after its cell" if FULL else "the fast checks that could fail"
    write(f"charged twice: {len(twice)} of {len(_CAUGHT)} mistakes fail a check they do not "
          f"declare (run for each mistake: {ran})")
    for key in twice:
        write(f"  charged twice: {key} also fails {', '.join(_CAUGHT[key]['others'])}")
    for key, v in _CAUGHT.items():
        if v["declared"]:
            write(f"  declared double charge: {key} also fails {', '.join(v['declared'])}")
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        for line in lines:
            reporter.write_line(line)


MISTAKES = [m for m in check_mistakes.MISTAKES if m.assignment in ASSIGNMENTS]
VARIANTS = [v for v in check_variants.VARIANTS if v.assignment in ASSIGNMENTS]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[f"{m.check}:{m.new[:40]}" for m in MISTAKES])
def test_mistake_fails_its_check_once_with_a_message_that_names_it(mistake, catalogue_report,
                                                                   reference_runs):
    """Does this realistic mistake fail the check of its exercise, with a message that names it,
    and no other check (but those its entry declares, with a reason)?"""
    assert not mistake.also or mistake.why_also, "a declared double charge needs its reason"
    downstream = [g for g in affected_checks(mistake.assignment, mistake.cell)
                  if g != mistake.check and reference_runs[g][0] <= DOWNSTREAM_CHECK_S]
    got = outcomes(mistake.assignment, (mistake.cell, mistake.old, mistake.new), after=mistake.cell,
                   only=None if FULL else [mistake.check] + downstream)
    message = got[mistake.check]
    named = message is not None and all(w.lower() in message.lower() for w in mistake.words)
    failing = {g for g, m in got.items() if m is not None}
    others = sorted(failing - {mistake.check} - set(mistake.also))
    catalogue_report[f"{mistake.check}: {mistake.new.strip()[:70]!r}"] = {
        "caught": message is not None, "named": named, "others": others,
        "declared": sorted(failing & set(mistake.also)), "accepted": mistake.accepted}
    if mistake.accepted:
        pytest.xfail(f"accepted: {mistake.accepted}")
    assert message is not None, f"{mistake.check} passed a wrong solution: {mistake.new!r}"
    assert named, f"{mistake.check}'s message lacks {mistake.words}: {message}"
    assert not others, f"charged twice: also fails {{{', '.join(others)}}}: " + \
        "; ".join(f"{g}: {got[g][:200]}" for g in others)
    missing = sorted((set(mistake.also) & set(got)) - failing)
    assert not missing, f"declared in also, but passes: {missing} (remove the declaration)"


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.description[:50] for v in VARIANTS])
def test_valid_variant_passes_every_check(variant):
    """Does this correct solution, written differently from the reference, pass every check?"""
    got = outcomes(variant.assignment, (variant.cell, variant.old, variant.new), after=variant.cell)
    failed = {g: m for g, m in got.items() if m is not None}
    assert not failed, f"{variant.description}: {failed}"
