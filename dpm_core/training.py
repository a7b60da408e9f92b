"""Training and evaluation loops for NVIL models."""

from __future__ import annotations

import contextlib
import random
import time
from collections import defaultdict
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .threads import ThreadTuner, cpu_threads

__all__ = ["seed_all", "default_device", "OptCollection", "assess", "train_vae", "iterate_batches"]

#: train_vae copies the training figures to the host (and updates its progress bar) this often
_FLUSH_EVERY = 50


def seed_all(seed: int = 42) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) random number generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """The fastest device available: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class OptCollection:
    """One optimiser per parameter group of an NVIL model: generative, inference, control variate.

    Args:
        gen: optimiser of ``model.gen_params()``.
        inf: optimiser of ``model.inf_params()``.
        cv: optimiser of ``model.cv_params()``; only needed when the control
            variate has parameters (e.g. :class:`Baseline`).
        schedulers: learning-rate schedulers that :meth:`step` advances after
            the optimisers.
    """

    def __init__(self, gen: torch.optim.Optimizer, inf: torch.optim.Optimizer,
                 cv: Optional[torch.optim.Optimizer] = None, schedulers: Sequence = ()):
        self.gen = gen
        self.inf = inf
        self.cv = cv
        self.schedulers = list(schedulers)

    def _all(self):
        return [o for o in (self.gen, self.inf, self.cv) if o is not None]

    def zero_grad(self) -> None:
        for o in self._all():
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o in self._all():
            o.step()
        for scheduler in self.schedulers:
            scheduler.step()


def iterate_batches(data, batch_size: int, shuffle: bool = False,
                    generator: Optional[torch.Generator] = None, num_workers: int = 0) -> Iterable:
    """Batches ``(x, y)`` from an :class:`ImageData` (tensor-resident) or any map-style Dataset.

    ``ImageData`` is sliced by index on its own device; other datasets go
    through a ``DataLoader``. An iterable of batches (e.g. a ready
    ``DataLoader``) is returned as it is.
    """
    if hasattr(data, "batches"):
        return data.batches(batch_size, shuffle=shuffle, generator=generator)
    if isinstance(data, DataLoader):
        return data
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers)


@torch.no_grad()
def assess(model: nn.Module, sample_size: int, dl, device: Union[str, torch.device, None] = None,
           batch_size: int = 500) -> dict:
    """Average ELBO, distortion D, rate R and importance-sampled log-likelihood L over a data set.

    Args:
        model: an :class:`NVIL` model.
        sample_size: S draws of z per data point.
        dl: an :class:`ImageData`, a Dataset, or an iterable of ``(x, y)`` batches.
        device: where to evaluate (default: the model's device).
        batch_size: used when ``dl`` is not already batched.

    Returns:
        ``{"ELBO": float, "D": float, "R": float, "L": float}``, in nats per data point.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    count = 0
    for batch_x, _ in iterate_batches(dl, batch_size):
        batch_x = batch_x.to(device)
        D, R, L = model.DRL(batch_x, sample_size=sample_size)
        totals += torch.stack([D.sum(), R.sum(), L.sum()]).double()
        count += batch_x.shape[0]
    model.train(was_training)
    if count == 0:
        raise ValueError("assess needs at least one data point")
    D, R, L = (totals / count).tolist()
    return {"ELBO": -D - R, "D": D, "R": R, "L": L}


def train_vae(model: nn.Module, opts: OptCollection, training_data, dev_data,
              batch_size: int = 64, num_epochs: int = 10, check_every: int = 10,
              sample_size_training: int = 1, sample_size_eval: int = 10, num_workers: int = 0,
              device: Union[str, torch.device, None] = None, max_grad_norm: Optional[float] = 5.0,
              rate_weight: Union[float, Callable[[int], float]] = 1.0,
              time_budget: Optional[float] = None,
              max_steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
              progress: bool = True, threads: Union[int, str, None] = "auto") -> dict:
    """Train an NVIL model with stochastic gradients of the ELBO, checking the dev set as it goes.

    Args:
        model: an :class:`NVIL` model (moved to ``device``).
        opts: the optimisers.
        training_data: an :class:`ImageData` (fast, tensor-resident) or a Dataset.
        dev_data: the same for the dev set.
        batch_size: training batch size.
        num_epochs: passes over the training data.
        check_every: assess the dev set every this many steps.
        sample_size_training: S draws of z per training example.
        sample_size_eval: S draws for the dev estimates (L is importance-sampled).
        num_workers: DataLoader workers, for Datasets only.
        device: default :func:`default_device`.
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
        rate_weight: beta, the weight of the rate in the loss; or a function from the
            number of steps done to beta, for a warm-up (the logged ELBO is always beta = 1).
        time_budget: stop after this many seconds of training (None: no limit).
        max_steps: stop after this many steps (None: no limit).
        generator: random generator for shuffling.
        progress: show a ``tqdm`` progress bar with training and dev figures. With a
            ``time_budget`` the bar counts seconds of the budget (and the figures show the
            steps), otherwise steps.
        threads: torch's CPU threads while training on the CPU: ``"auto"`` times the steps
            under 1 thread and under torch's current count and keeps the faster, measuring
            again as the load changes (:class:`dpm_core.threads.ThreadTuner`); a number
            fixes the count; ``None`` leaves it alone. The count in force before comes back
            at the end.

    Returns:
        The log: a dict from ``"training.loss"``, ``"training.ELBO"``, ``"training.D"``,
        ``"training.R"``, ``"training.cv_loss"``, ``"dev.ELBO"``, ``"dev.D"``,
        ``"dev.R"``, ``"dev.L"`` to lists of ``(step, value)``, ``"time"`` to the
        training seconds, and ``"threads"`` to the tuner's probes (see
        :attr:`ThreadTuner.history`; empty unless ``threads="auto"`` on the CPU).
    """
    if not (threads is None or threads == "auto" or (isinstance(threads, int) and threads > 0)):
        raise ValueError(f"threads must be 'auto', a positive number or None, got {threads!r}")
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    if hasattr(training_data, "to"):
        training_data = training_data.to(device)
    if hasattr(dev_data, "to"):
        dev_data = dev_data.to(device)
    if hasattr(training_data, "num_batches"):
        steps_per_epoch = training_data.num_batches(batch_size)
    else:
        steps_per_epoch = -(-len(training_data) // batch_size)
    total_steps = num_epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)

    log: dict = defaultdict(list)
    for metric in ("loss", "ELBO", "D", "R", "cv_loss"):
        log[f"training.{metric}"] = []

    def check(step: int) -> None:
        for k, v in assess(model, sample_size_eval, dev_data, device=device).items():
            log[f"dev.{k}"].append((step, v))

    # the training figures stay on the device until a flush: one host sync per
    # flush instead of one per figure and step (which stalls a GPU)
    pending: list[tuple[int, dict]] = []

    def flush() -> None:
        if not pending:
            return
        names = list(pending[0][1])
        values = torch.stack([torch.stack([torch.as_tensor(out[k], dtype=torch.float32,
                                                           device=device) for k in names])
                              for _, out in pending]).tolist()  # [steps, metrics]
        for (done, _), row in zip(pending, values):
            for k, v in zip(names, row):
                log[f"training.{k}"].append((done, v))
        pending.clear()
        last = dict(zip(names, values[-1]))
        bar.set_postfix(
            {**({"steps": step} if timed else {}),
             "ELBO": f"{last['ELBO']:.1f}", "D": f"{last['D']:.1f}", "R": f"{last['R']:.1f}",
             "dev.ELBO": f"{log['dev.ELBO'][-1][1]:.1f}",
             "dev.L": f"{log['dev.L'][-1][1]:.1f}"}, refresh=False)

    # a time-budgeted run usually ends long before its epochs: its bar counts seconds
    timed = time_budget is not None
    bar_options = (dict(total=float(time_budget), unit="s", bar_format="{l_bar}{bar}| "
                        "{n:.0f}/{total:.0f} s [{elapsed}{postfix}]") if timed
                   else dict(total=total_steps))
    on_cpu = device.type == "cpu"
    tuner = ThreadTuner() if on_cpu and threads == "auto" else None
    if tuner is not None:
        pool = tuner
    elif on_cpu and isinstance(threads, int):
        pool = cpu_threads(threads)
    else:
        pool = contextlib.nullcontext()
    measure = tuner.measure if tuner is not None else contextlib.nullcontext
    check(0)
    step = 0
    start = time.perf_counter()
    with pool, tqdm(disable=not progress, desc="training", **bar_options) as bar:
        def advance() -> None:
            bar.update(min(time.perf_counter() - start, time_budget) - bar.n)

        for _ in range(num_epochs):
            for batch_x, _ in iterate_batches(training_data, batch_size, shuffle=True,
                                              generator=generator, num_workers=num_workers):
                if step >= total_steps or (time_budget is not None
                                           and time.perf_counter() - start >= time_budget):
                    break
                model.train()
                beta = rate_weight(step) if callable(rate_weight) else rate_weight
                with measure():
                    out = model(batch_x.to(device), sample_size=sample_size_training,
                                rate_weight=beta)
                    opts.zero_grad()
                    out["loss"].backward()
                    if max_grad_norm is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                    opts.step()
                step += 1
                pending.append((step, {k: v.detach() if torch.is_tensor(v) else v
                                       for k, v in out.items()}))
                if step % check_every == 0:
                    check(step)
                if step % check_every == 0 or len(pending) >= _FLUSH_EVERY:
                    flush()
                if timed:
                    advance()
                else:
                    bar.update()
            else:
                continue
            break
        if timed:
            advance()
        flush()
    elapsed = time.perf_counter() - start
    if not log["dev.ELBO"] or log["dev.ELBO"][-1][0] != step:
        check(step)
    model.eval()
    log = dict(log)
    log["time"] = elapsed
    log["threads"] = list(tuner.history) if tuner is not None else []
    return log
