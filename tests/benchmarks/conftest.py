"""Options of the regression benchmarks (`pytest tests/benchmarks`), kept out of the default test run."""
from __future__ import annotations

import psutil
import pytest


def pytest_addoption(parser):
    group = parser.getgroup("bench", "tutorial-CNN regression benchmarks")
    group.addoption("--bench-threads", type=int, default=None,
                    help="CPU threads for torch (default: the physical cores); recorded in extra_info")
    group.addoption("--bench-rounds", type=int, default=30,
                    help="timed rounds per benchmark, after --bench-warmup untimed ones (default 30)")
    group.addoption("--bench-warmup", type=int, default=5, help="untimed warm-up rounds (default 5)")
    group.addoption("--bench-devices", default=None,
                    help="comma-separated devices (default: cpu, plus cuda when available)")


@pytest.fixture(scope="session")
def threads(request) -> int:
    """Pinned for the whole session, so a baseline and a later run use the same count unless told otherwise."""
    import torch

    n = request.config.getoption("--bench-threads") or psutil.cpu_count(logical=False) or 1
    if n < 1:
        raise pytest.UsageError(f"--bench-threads: {n} is not a positive integer")
    torch.set_num_threads(n)
    return n
