"""Shared fixtures: the devices every module test runs on, and a fixed seed per test.

The tests use toy networks, for which torch's intra-op thread pool costs more than it
saves, and on a busy machine its spinning threads slow a step down a hundredfold; so the
session runs torch on one CPU thread.

The session's decompressed-data cache (``dpm_core.data.data_cache_dir``) is a folder of its
own, removed at the end: the toy IDX files that tests write would otherwise leave an entry
each in the user's ``~/.cache/dpm_core``.

``device`` is a ``torch.device``; compare devices by ``.type`` (``torch.device("cuda")``
is not equal to a tensor's ``torch.device("cuda:0")``).
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

#: the registry of devices; CUDA is listed (and reported as skipped) when it is absent
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


@pytest.fixture(scope="session", autouse=True)
def _session_data_cache():
    """Point ``DPM_DATA_CACHE`` at a fresh folder for the session (unless it is set already);
    readable by all, as graded kernels read it as nobody inside their sandbox."""
    if os.environ.get("DPM_DATA_CACHE"):
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="dpm-data-cache-"))
    folder.chmod(0o755)
    os.environ["DPM_DATA_CACHE"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("DPM_DATA_CACHE", None)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each available device in turn: the CPU always, CUDA when there is one."""
    return torch.device(request.param)


@pytest.fixture(scope="session", autouse=True)
def _one_cpu_thread():
    """Run the session's CPU work on one intra-op thread, and restore the setting after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from torch's generator seeded with 0 (CPU and CUDA)."""
    torch.manual_seed(0)
