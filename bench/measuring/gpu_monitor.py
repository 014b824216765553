"""GPU utilisation and power during a Case, sampled through NVML (the `nvidia-ml-py` package).

Optional: without the package, a driver or a CUDA device, `open_sampler` says why and
the Case runs unmonitored. NVML reports device-wide figures: another process on the
same GPU is counted too. Utilisation is the share of the driver's sample period
(1/6 s to 1 s) in which a kernel ran, not how busy the SMs were.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class GpuUsage:
    util_pct: float | None  # mean of the samples
    power_w: float | None  # mean of the samples
    energy_j: float | None  # over the monitored intervals: NVML's energy counter, else power x time
    seconds: float  # length of the monitored intervals
    samples: int


class NvmlSampler:
    """Samples one GPU every `interval_s` in a thread while inside `active()`; intervals add up."""

    def __init__(self, nvml, handle, interval_s: float = 0.1):
        self.nvml, self.handle, self.interval_s = nvml, handle, interval_s
        self.util: list[float] = []
        self.power_w: list[float] = []
        self.seconds = 0.0
        self.counter_mj: int | None = 0  # None once the device cannot report its energy counter
        self.integrated_j = 0.0

    def _energy_mj(self) -> int | None:
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except self.nvml.NVMLError:  # before Volta, or not supported on this board
            return None

    def _sample(self) -> float | None:
        try:
            self.util.append(float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))
            watts = self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
        except self.nvml.NVMLError:
            return None
        self.power_w.append(watts)
        return watts

    def _loop(self, stop: threading.Event, t0: float) -> None:
        last_t, last_w = t0, self._sample()
        while not stop.wait(self.interval_s):
            now, watts = time.perf_counter(), self._sample()
            if watts is not None and last_w is not None:
                self.integrated_j += (now - last_t) * (watts + last_w) / 2
            last_t, last_w = now, watts

    @contextmanager
    def active(self):
        stop = threading.Event()
        energy0, t0 = self._energy_mj(), time.perf_counter()
        thread = threading.Thread(target=self._loop, args=(stop, t0), name="nvml-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.seconds += time.perf_counter() - t0
            energy1 = self._energy_mj()
            if energy0 is None or energy1 is None or self.counter_mj is None:
                self.counter_mj = None
            else:
                self.counter_mj += energy1 - energy0

    def usage(self) -> GpuUsage:
        mean = (lambda xs: sum(xs) / len(xs) if xs else None)
        energy = self.counter_mj / 1000.0 if self.counter_mj is not None else (
            self.integrated_j if len(self.power_w) > 1 else None)
        return GpuUsage(mean(self.util), mean(self.power_w), energy, self.seconds, len(self.power_w))


def _import_nvml():
    import pynvml  # the module the nvidia-ml-py distribution installs

    return pynvml


def open_sampler(index: int, uuid: str | None = None, interval_s: float = 0.1) -> tuple[NvmlSampler | None, str]:
    """A sampler for CUDA device `index` (found by UUID when given, so CUDA_VISIBLE_DEVICES
    renumbering cannot pick the wrong board), or None and the reason there is none."""
    try:
        nvml = _import_nvml()
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        nvml.nvmlInit()
        if uuid:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        else:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except nvml.NVMLError as exc:
        return None, f"NVML unavailable: {exc}"
    return NvmlSampler(nvml, handle, interval_s), "nvml"


def driver_version() -> str | None:
    """The NVIDIA driver's version from NVML, else from nvidia-smi; None without either."""
    try:
        nvml = _import_nvml()
        nvml.nvmlInit()
        version = nvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # noqa: BLE001 - no package, no library or no driver: try the CLI
        pass
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None
