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


# the instruction-set extensions that decide how fast this model's kernels run on a CPU (oneDNN, ATen's vectorised ops)
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
             "amx_bf16", "amx_tile", "asimd", "sve")


def _cpu_flags() -> list[str]:
    """Of CPU_FLAGS, those this CPU has (Linux's /proc/cpuinfo; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    have = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            have.update(line.split(":", 1)[1].split())
            break
    return [f for f in CPU_FLAGS if f in have]


def cpu_isa() -> str | None:
    """The vector instruction set PyTorch's CPU kernels were dispatched to here (AVX512, AVX2, ...), as torch
    names it; two machines that differ in it run this model's CPU kernels differently."""
    import torch

    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return None


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


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git_commit() -> str | None:
    out = _git("rev-parse", "HEAD")
    return out.strip() or None if out is not None else None


def _git_dirty() -> bool | None:
    """Whether the checkout the harness ran from had uncommitted changes to tracked files (None: not a checkout)."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


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
        "cpu_isa": cpu_isa(),
        "cpu_flags": _cpu_flags(),
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
        "git_dirty": _git_dirty(),
    }
