"""dpm_core.threads: the thread tuner picks the faster count, probes again, restores the setting.

The tuner is driven with made-up step durations that depend on the thread count in force,
on a clock the test moves by hand, so that every choice is known in advance.
"""

import itertools

import pytest
import torch

from dpm_core import threads as threads_module
from dpm_core.threads import ThreadTuner, cpu_threads, tuned


@pytest.fixture
def clock(monkeypatch):
    """A perf_counter for dpm_core.threads that moves only when the test says."""
    now = [0.0]
    monkeypatch.setattr(threads_module.time, "perf_counter", lambda: now[0])
    return now


@pytest.fixture
def two_threads():
    with cpu_threads(2):
        yield


def drive(tuner: ThreadTuner, clock, seconds_per_step: dict, steps: int) -> list:
    """Run ``steps`` steps whose duration depends on the thread count; the counts used."""
    used = []
    for _ in range(steps):
        threads = torch.get_num_threads()
        used.append(threads)
        clock[0] += seconds_per_step[threads]
        tuner.record(seconds_per_step[threads])
    return used


@pytest.mark.parametrize("fast", [1, 2])
def test_the_faster_count_is_kept(clock, two_threads, fast):
    durations = {fast: 0.01, 3 - fast: 0.05}
    with ThreadTuner(probe_steps=4, every_seconds=100, warmup_steps=0) as tuner:
        used = drive(tuner, clock, durations, 40)
        assert tuner.threads == fast and torch.get_num_threads() == fast
        _, rates, chosen = tuner.history[0]
        assert chosen == fast and rates[fast] == pytest.approx(100.0) and rates[3 - fast] == pytest.approx(20.0)
        # the first probe: 4 steps under the current count (2), 1 untimed + 4 under 1 thread
        assert used[:9] == [2] * 4 + [1] * 5
        assert set(used[9:]) == {fast}
    assert torch.get_num_threads() == 2  # restored


def test_a_slow_candidate_costs_at_most_probe_seconds_and_two_steps(clock, two_threads):
    durations = {1: 0.01, 2: 2.0}  # two threads collapse, as with busy-waiting OpenMP under load
    with ThreadTuner(probe_steps=8, probe_seconds=0.5, every_seconds=100, warmup_steps=0) as tuner:
        used = drive(tuner, clock, durations, 30)
    assert used[:2] == [2, 2] and set(used[2:]) == {1}
    assert tuner.history[0][2] == 1


def test_probes_again_when_the_load_changes_and_backs_off_while_it_does_not(clock, two_threads):
    with ThreadTuner(probe_steps=4, every_seconds=1.0, max_every_seconds=4.0, warmup_steps=0) as tuner:
        drive(tuner, clock, {1: 0.01, 2: 0.05}, 2000)  # 20+ seconds of one thread being faster
        assert [chosen for _, _, chosen in tuner.history] == [1] * len(tuner.history)
        gaps = [b[0] - a[0] for a, b in zip(tuner.history, tuner.history[1:])]
        # each gap: the interval (1 s, doubling to at most 4 s) plus the probe's own 0.3 s
        assert all(b > a - 0.05 for a, b in zip(gaps, gaps[1:]))
        assert 1.0 <= gaps[0] < 1.5 and 4.0 <= gaps[-1] < 4.5
        probes = len(tuner.history)
        drive(tuner, clock, {1: 0.05, 2: 0.01}, 1000)  # now two threads are faster
        assert tuner.history[-1][2] == 2 and len(tuner.history) > probes
        assert torch.get_num_threads() == 2


def test_one_candidate_means_no_probing(clock):
    with cpu_threads(1), ThreadTuner() as tuner:
        drive(tuner, clock, {1: 0.01}, 50)
        assert tuner.history == [] and torch.get_num_threads() == 1


def test_tuned_restores_the_count_when_the_loop_breaks(two_threads):
    for step in tuned(itertools.count(), ThreadTuner(candidates=(1, 2), probe_steps=2)):
        if step == 10:
            break
    assert torch.get_num_threads() == 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="positive thread counts"):
        ThreadTuner(candidates=(0, 2))
    with pytest.raises(ValueError, match="probe_steps must be at least 2"):
        ThreadTuner(probe_steps=1)
    with pytest.raises(ValueError, match="positive number of threads"):
        with cpu_threads(0):
            pass


def test_a_tuner_keeps_its_choice_across_loops(clock, two_threads):
    tuner = ThreadTuner(probe_steps=2, every_seconds=100, warmup_steps=0)
    for epoch in range(3):
        for _ in tuned(range(20), tuner):
            clock[0] += {1: 0.01, 2: 0.05}[torch.get_num_threads()]
        assert torch.get_num_threads() == 2  # restored after each loop
    assert [chosen for _, _, chosen in tuner.history] == [1]  # one probe, kept across epochs


def test_a_change_of_speed_brings_the_next_probe_forward(clock, two_threads):
    with ThreadTuner(probe_steps=4, every_seconds=60, max_every_seconds=60, warmup_steps=0) as tuner:
        drive(tuner, clock, {1: 0.01, 2: 0.05}, 100)  # about 1 s: one probe, 1 thread chosen
        assert len(tuner.history) == 1
        drive(tuner, clock, {1: 0.01, 2: 0.05}, 500)  # 5 s at the same speed: no new probe
        assert len(tuner.history) == 1
        # other work starts: one thread is now 4 times slower, two threads are faster
        drive(tuner, clock, {1: 0.04, 2: 0.02}, 60)
        assert len(tuner.history) == 2 and tuner.history[-1][2] == 2
        assert tuner.history[-1][0] < 8.5  # long before the 60 s interval was up


@pytest.mark.parametrize("warmup, chosen", [(10, 2), (0, 1)])
def test_the_first_steps_are_not_blamed_on_the_first_count(clock, two_threads, warmup, chosen):
    """The first steps of a loop are slow whatever the count (allocations, caches); timed,
    they make the count probed first (2 threads) look slower than it is."""
    with ThreadTuner(probe_steps=4, every_seconds=100, warmup_steps=warmup) as tuner:
        for step in range(40):
            seconds = 0.2 if step < 6 else {1: 0.02, 2: 0.01}[torch.get_num_threads()]
            clock[0] += seconds
            tuner.record(seconds)
        assert tuner.history[0][2] == chosen
