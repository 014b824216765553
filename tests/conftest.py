"""Shared fixtures: a private cache folder, the mini real CIFAR-10 set, the synthetic set."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MINI = Path(os.environ.get("CIFAR10_MINI", ROOT / "tests" / "data" / "cifar10-mini"))  # 984 real images, in the repo

# Caches (synthetic set, decoded arrays, normalised copies, torch.compile's kernels: about 1 GB) go to one
# folder per test session, inherited by subprocesses, and removed when the session ends (unless the caller
# named it).
OWN_CACHE: str | None = None
if not os.environ.get("CNN_CACHE_DIR"):
    OWN_CACHE = os.environ["CNN_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnn-cache-")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(OWN_CACHE, "torchinductor"))


def pytest_unconfigure(config) -> None:
    """A suite run leaves no cache behind: CI machines and repeated runs would fill the disk with them."""
    if OWN_CACHE is not None:
        shutil.rmtree(OWN_CACHE, ignore_errors=True)


@pytest.fixture
def mini(tmp_path: Path) -> Path:
    """A private, writable copy of the 984-image real CIFAR-10 set (python, binary and archive)."""
    if not MINI.is_dir():
        pytest.fail(f"the mini CIFAR-10 set is missing at {MINI} (set CIFAR10_MINI)")
    dest = tmp_path / "mini"
    shutil.copytree(MINI, dest, ignore=shutil.ignore_patterns(".cnn-cache"))
    return dest


@pytest.fixture(scope="session")
def synthetic():
    from cnn.data import prepare_synthetic

    return prepare_synthetic()


def run_bench(*args: str, cwd: Path | None = None, timeout: float = 240,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m bench ...` as a user runs it (`env`: variables set on top of this process's)."""
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, **env} if env else None)
