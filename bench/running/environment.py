"""The machine a run measured on, captured once per run into environment.json."""
from __future__ import annotations

import importlib.util
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import psutil

from bench.measuring import allocator, gpu_monitor


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torchvision_version() -> str | None:
    """torchvision.__version__ (with its build, e.g. 0.29.1+cu130, which the package metadata leaves out), read
    from its version.py unless it is imported: importing it takes 2 s, while a sweep's fork server imports it."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"].__version__
    try:
        origin = importlib.util.find_spec("torchvision").origin
        found = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", (Path(origin).parent / "version.py").read_text(), re.M)
        return found.group(1) if found else metadata.version("torchvision")
    except (AttributeError, OSError, TypeError, metadata.PackageNotFoundError):
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def gpus() -> list[dict]:
    """Name, memory and capability of each visible CUDA device (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "memory_mb": p.total_memory / 2**20,
                    "compute_capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count})
    return out


def cuda_facts() -> dict:
    """The GPUs' properties and cuDNN's version. Reading either initialises CUDA in this process (cuDNN's
    check of the devices' capability too), so a sweep reads them in its ceiling worker."""
    import torch

    return {"gpus": gpus(), "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}


def capture(query_cuda: bool = True) -> dict:
    """The machine and software. `query_cuda=False` leaves `gpus` and `cudnn` (None) to the caller: a
    sweep's orchestrator must not initialise CUDA."""
    import torch

    cuda = cuda_facts() if query_cuda else {"gpus": None, "cudnn": None}

    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "cpu_logical_cores": psutil.cpu_count(logical=True),
        "memory_mb": psutil.virtual_memory().total / 2**20,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": cuda["cudnn"],
        "gpus": cuda["gpus"],
        "gpu_driver": gpu_monitor.driver_version() if torch.cuda.device_count() else None,  # NVML: no CUDA init
        "cudnn_benchmark": "on in every CUDA Case, autotuning inside the warm-up",
        "torch_threads": torch.get_num_threads(),
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "libc": " ".join(platform.libc_ver()).strip() or None,
        # every Case pins its state before it allocates (bench/measuring/allocator.py); what the user's environment asked for
        # is overridden there, and recorded here
        "malloc_states": {state: allocator.describe(state) for state in allocator.STATES},
        "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                                                      "LD_PRELOAD")},
        "project_version": _version("cifar10-gpu-bench"),
        "git_commit": _git_commit(),
    }
