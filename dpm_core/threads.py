"""How many CPU threads torch uses, chosen by timing the loop that runs.

The course's models are small: one training step of the reference VAE multiplies
[64, 784] by [784, 256] matrices, a few MFLOP each. A second thread gains little on an
idle machine, and on a busy one OpenMP's threads can wait for each other at every
parallel region. With GNU OpenMP's default wait policy, two threads next to two other busy
processes on 2 cores trained the reference VAE at 1 to 2 steps per second against 60 to 90
with one thread (``benchmarks/training_throughput.py``). ``OMP_WAIT_POLICY=PASSIVE`` (read
once, when torch loads OpenMP: ``make`` and ``scripts/lab.sh`` export it) removes most of
that collapse, but the best thread count still changes with the load, so a loop measures it:

* :class:`ThreadTuner` times the steps of a loop under each candidate thread count in short
  windows, keeps the fastest, and measures again from time to time (less often while the
  answer stays the same);
* :func:`tuned` wraps the batches of a hand-written loop in one;
* :func:`cpu_threads` fixes the count inside a block (the widgets decode on one thread).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, Sequence

import torch

__all__ = ["ThreadTuner", "tuned", "cpu_threads", "passive_wait"]


def passive_wait() -> bool:
    """True when the environment asks OpenMP's idle threads to sleep (``OMP_WAIT_POLICY``)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive"


@contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Run torch's CPU work on ``count`` intra-op threads inside the block, then restore it."""
    if count < 1:
        raise ValueError(f"count must be a positive number of threads, got {count}")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ThreadTuner:
    """Chooses torch's intra-op thread count for a loop by timing its steps.

    Use it as a context manager (the thread count in force before comes back at the end)
    and report each step's duration with :meth:`record`, or wrap the loop's iterable in
    :func:`tuned`. A probe times ``probe_steps`` steps (or ``probe_seconds``, whichever
    ends first, at least two steps) under each candidate, dropping the first step after a
    switch, and keeps the fastest. The next probe comes ``every_seconds`` later; each probe
    that confirms the choice doubles that interval, up to ``max_every_seconds``. Sooner when
    the steps get 1.5 times slower or faster than the probe measured (after 20 steps and 2 s):
    other work started or stopped, and the best count may have changed with it.

    Args:
        candidates: thread counts to try (default: 1 and torch's current count).
        probe_steps: steps per candidate in a probe.
        probe_seconds: the most time one candidate's window takes.
        every_seconds: time from a probe to the next at first.
        max_every_seconds: the longest time between probes.
        warmup_steps: steps at the start that are not timed.

    Attributes:
        threads: the count in force now.
        history: one ``(seconds since start, {threads: steps per second}, chosen)`` per probe.
    """

    def __init__(self, candidates: Optional[Sequence[int]] = None, probe_steps: int = 8,
                 probe_seconds: float = 0.5, every_seconds: float = 10.0,
                 max_every_seconds: float = 80.0, warmup_steps: int = 10):
        found = sorted(set(candidates or (1, torch.get_num_threads())))
        if not found or found[0] < 1:
            raise ValueError(f"candidates must be positive thread counts, got {candidates}")
        if probe_steps < 2:
            raise ValueError(f"probe_steps must be at least 2, got {probe_steps}")
        self.candidates = found
        self.probe_steps, self.probe_seconds = probe_steps, probe_seconds
        self.every, self.first_every, self.max_every = every_seconds, every_seconds, max_every_seconds
        self.threads = torch.get_num_threads()
        self.history: list = []
        self._restore: Optional[int] = None
        self._start = time.perf_counter()
        self._queue: list = []      # candidates still to time in this probe
        self._rates: dict = {}      # steps per second of each candidate timed in this probe
        self._window = [0, 0.0]     # steps and seconds of the current window
        # steps not timed: the first ones of the loop (allocations, caches: the first probe
        # would blame their cost on whichever count came first), then one after each switch
        self._skip = int(warmup_steps)
        self._next_probe = 0.0      # when the next probe starts (seconds since start)
        self._chosen_rate = 0.0     # steps per second of the choice when it was made
        self._recent: Optional[float] = None  # running average of the step time since
        self._since = 0             # steps since the last probe
        self._chosen_at = 0.0       # when the last probe ended
        self._begin_probe()

    def __enter__(self) -> "ThreadTuner":
        self._restore = torch.get_num_threads()
        self._use(self.threads)  # a tuner entered again goes on with its choice
        return self

    def __exit__(self, *exc) -> None:
        if self._restore is not None:
            torch.set_num_threads(self._restore)

    def _use(self, threads: int) -> None:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self._skip = max(self._skip, 1)
        self.threads = threads

    def _begin_probe(self) -> None:
        if len(self.candidates) < 2:
            return
        self._rates = {}
        # the current count first: no switch, no lost step
        self._queue = sorted(self.candidates, key=lambda t: t != torch.get_num_threads())
        self._window = [0, 0.0]
        self._use(self._queue[0])

    def record(self, seconds: float) -> None:
        """Report that one step took ``seconds``; may change the thread count for the next."""
        now = time.perf_counter() - self._start
        if not self._queue:
            if len(self.candidates) < 2:
                return
            # a running average of the step time; a change of load moves it away from what
            # the last probe measured, and then the next probe comes now
            self._recent = seconds if self._recent is None else 0.9 * self._recent + 0.1 * seconds
            self._since += 1
            drift = self._recent * self._chosen_rate
            drifted = self._since >= 20 and now >= self._chosen_at + 2.0 \
                and not 1 / 1.5 < drift < 1.5  # and never two probes within 2 s: noise
            if now >= self._next_probe or drifted:
                if now < self._next_probe:
                    self.every = self.first_every
                self._begin_probe()
            return
        if self._skip:
            self._skip -= 1
            return
        self._window[0] += 1
        self._window[1] += seconds
        steps, spent = self._window
        if steps < self.probe_steps and (steps < 2 or spent < self.probe_seconds):
            return
        self._rates[self._queue.pop(0)] = steps / max(spent, 1e-9)
        self._window = [0, 0.0]
        if self._queue:
            self._use(self._queue[0])
            return
        best = max(self._rates, key=self._rates.get)
        same = bool(self.history) and self.history[-1][2] == best
        self.every = min(self.every * 2, self.max_every) if same else self.first_every
        self.history.append((round(now, 2), dict(self._rates), best))
        self._use(best)
        self._next_probe = now + self.every
        self._chosen_rate, self._recent, self._since = self._rates[best], None, 0
        self._chosen_at = now

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Time the block as one step (see :meth:`record`)."""
        start = time.perf_counter()
        yield
        self.record(time.perf_counter() - start)


def tuned(iterable: Iterable, tuner: Optional[ThreadTuner] = None) -> Iterator:
    """Yield the items of ``iterable``, timing the loop body after each under a :class:`ThreadTuner`.

    ``for x, _ in tuned(data.batches(64)): ...`` trains with the thread count that is
    fastest on this machine now; the count in force before comes back when the loop ends
    (or breaks). Pass the same ``tuner`` to the loops of every epoch to keep its choice.
    """
    tuner = tuner if tuner is not None else ThreadTuner()
    with tuner:
        for item in iterable:
            start = time.perf_counter()
            yield item
            tuner.record(time.perf_counter() - start)
