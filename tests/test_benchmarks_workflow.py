"""The documented baseline workflow of `pytest tests/benchmarks`, proven with a real slowdown.

A baseline is stored with 2 threads; the same benchmark pinned to 1 thread is a real slowdown
(about 1.7x for a batch-128 training step on the 2-core machine this was built on) and must fail
`--benchmark-compare-fail=median:15%`; an unchanged run must pass it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

ONE_BENCHMARK = "test_train_step and b128 and resident"  # the steadiest: no DataLoader workers
FAIL = "--benchmark-compare-fail=median:15%"


def _benchmarks(storage: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "tests/benchmarks", "-q", "-p", "no:cacheprovider", "-k", ONE_BENCHMARK,
           "--bench-rounds", "40", f"--benchmark-storage=file://{storage}", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)


def _attempt(storage: Path) -> str | None:
    """Baseline, slowdown, unchanged run; None when all three behaved, else what went wrong."""
    base = _benchmarks(storage, "--bench-threads", "2", "--benchmark-autosave")
    assert base.returncode == 0, base.stdout + base.stderr
    saved = list(storage.rglob("0001_*.json"))
    assert len(saved) == 1
    bench = json.loads(saved[0].read_text())["benchmarks"]
    assert [b["name"] for b in bench] == ["test_train_step[cpu-b128-resident]"]
    assert bench[0]["group"] == "train batch 128"
    assert bench[0]["extra_info"]["threads"] == 2 and bench[0]["extra_info"]["images_per_s"] > 0

    slower = _benchmarks(storage, "--bench-threads", "1", "--benchmark-compare", FAIL)
    if slower.returncode == 0 or "Performance has regressed" not in slower.stdout + slower.stderr:
        return "the 1-thread run was not reported as a regression:\n" + slower.stdout + slower.stderr
    assert "test_train_step[cpu-b128-resident]" in slower.stdout + slower.stderr

    same = _benchmarks(storage, "--bench-threads", "2", "--benchmark-compare", FAIL)
    if same.returncode != 0:
        return "the unchanged run failed the comparison:\n" + same.stdout + same.stderr
    assert "Comparing against benchmarks from: " in same.stdout + same.stderr
    return None


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the slowdown is 2 threads -> 1; this machine has 1 CPU")
def test_a_baseline_is_stored_a_real_slowdown_fails_and_an_unchanged_run_passes(tmp_path: Path):
    # The machine is shared: a neighbour's burst during the 2-thread baseline can make 2 threads no
    # faster than 1, so the whole proof gets a second try on a fresh baseline. A comparison that
    # never fails, or always fails, fails both tries.
    problems = []
    for attempt in range(2):
        problem = _attempt(tmp_path / f"benchmarks-{attempt}")
        if problem is None:
            return
        problems.append(problem)
    pytest.fail("\n\n".join(problems))
