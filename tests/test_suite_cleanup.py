"""The test suite cleans up after itself: a CI machine runs it again and again on one disk."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_a_suite_run_removes_the_cache_folder_it_made_and_keeps_one_it_was_given(tmp_path: Path):
    test = "tests/test_hostile.py::test_a_planted_verified_manifest_cannot_skip_the_md5_check"  # writes a cache
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CNN_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "bt"), test]
    made = subprocess.run(command, cwd=ROOT, env={**env, "TMPDIR": str(temp)}, capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    assert list(temp.iterdir()) == []  # its cnn-cache-* folder (key, manifest, torch's kernels) is gone

    given = tmp_path / "given"
    kept = subprocess.run(command, cwd=ROOT, env={**env, "TMPDIR": str(temp), "CNN_CACHE_DIR": str(given)},
                          capture_output=True, text=True, timeout=120)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert (given / "cache.key").is_file() and not list(temp.glob("cnn-cache-*"))
