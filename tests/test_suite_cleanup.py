"""The test suite cleans up after itself: a CI machine runs it again and again on one disk."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PROBE = "BENCH_TEST_CLEANUP_PROBE"


def test_a_probe_writes_into_the_sessions_cache_folder():
    """Run by the test below, in a pytest session of its own."""
    if PROBE not in os.environ:
        pytest.skip("a probe for the test below, which runs it in a session of its own")
    if os.environ.get("BENCH_TEST_CLEANUP_MADE"):  # the suite made the folder: in the temp folder it must clean
        assert Path(os.environ["CNN_CACHE_DIR"]).parent == Path(os.environ["TMPDIR"])
    Path(os.environ["CNN_CACHE_DIR"]).mkdir(parents=True, exist_ok=True)
    (Path(os.environ["CNN_CACHE_DIR"]) / "cache.key").write_bytes(os.urandom(32))
    (Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])).mkdir(parents=True, exist_ok=True)


def test_a_suite_run_removes_the_cache_folder_it_made_and_keeps_one_it_was_given(tmp_path: Path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CNN_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    env.update({PROBE: "1", "TMPDIR": str(temp), "BENCH_TEST_CLEANUP_MADE": "1"})
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "bt"),
               f"{Path(__file__).relative_to(ROOT)}::test_a_probe_writes_into_the_sessions_cache_folder"]
    made = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0 and "1 passed" in made.stdout, made.stdout + made.stderr
    assert list(temp.iterdir()) == []  # its cnn-cache-* folder, with the key and torch's kernels, is gone

    given = tmp_path / "given"
    env.update(CNN_CACHE_DIR=str(given), TORCHINDUCTOR_CACHE_DIR=str(given / "inductor"), BENCH_TEST_CLEANUP_MADE="")
    kept = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert kept.returncode == 0 and "1 passed" in kept.stdout, kept.stdout + kept.stderr
    assert (given / "cache.key").is_file() and (given / "inductor").is_dir() and list(temp.iterdir()) == []
