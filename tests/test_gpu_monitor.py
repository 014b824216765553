"""bench/measuring/gpu_monitor.py: NVML sampling with a stand-in NVML, and the real nvidia-ml-py without a driver."""
from __future__ import annotations

import sys
import time
import types

import pytest

from bench.measuring import gpu_monitor


class FakeNvmlError(Exception):
    pass


def fake_nvml(watts: float = 250.0, util: int = 80, energy_counter: bool = True) -> types.ModuleType:
    """The calls the sampler makes, answering like a board that draws `watts` constantly."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = FakeNvmlError
    nvml.opened = []
    t0 = time.perf_counter()
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetHandleByIndex = lambda i: nvml.opened.append(("index", i)) or f"h{i}"
    nvml.nvmlDeviceGetHandleByUUID = lambda u: nvml.opened.append(("uuid", u)) or u
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=util, memory=10)
    nvml.nvmlDeviceGetPowerUsage = lambda h: int(watts * 1000)  # milliwatts

    def energy(handle):  # millijoules since the driver loaded
        if not energy_counter:
            raise FakeNvmlError("Not Supported")
        return int(1_000_000 + (time.perf_counter() - t0) * watts * 1000)

    nvml.nvmlDeviceGetTotalEnergyConsumption = energy
    nvml.nvmlSystemGetDriverVersion = lambda: "565.57.01"
    return nvml


@pytest.mark.parametrize("energy_counter", [True, False])
def test_sampler_gives_means_and_energy_over_its_active_intervals_only(monkeypatch, energy_counter):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(energy_counter=energy_counter))
    sampler, source = gpu_monitor.open_sampler(0, interval_s=0.02)
    assert source == "nvml"
    for _ in range(2):
        with sampler.active():
            time.sleep(0.2)
        time.sleep(0.3)  # between intervals (the evaluation): not monitored
    usage = sampler.usage()
    assert usage.util_pct == 80 and usage.power_w == 250
    assert usage.samples >= 10
    assert 0.4 <= usage.seconds < 0.6
    # 250 W over ~0.4 s monitored, not over the ~1 s that passed; integration loses up to a sample period per interval
    assert usage.energy_j == pytest.approx(250 * usage.seconds, rel=0.25)


def test_the_board_is_found_by_uuid_so_a_renumbered_device_is_not_mistaken(monkeypatch):
    nvml = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    gpu_monitor.open_sampler(1, uuid="8e0f7a1c-0000-1111-2222-333344445555")
    gpu_monitor.open_sampler(1)
    assert nvml.opened == [("uuid", "GPU-8e0f7a1c-0000-1111-2222-333344445555"), ("index", 1)]


def test_no_sampler_and_a_reason_without_the_package_or_the_driver(monkeypatch):
    pytest.importorskip("pynvml", reason="nvidia-ml-py is in the test extra")
    try:
        import pynvml
        pynvml.nvmlInit()
        pytest.skip("this machine has an NVIDIA driver")
    except pynvml.NVMLError:
        pass
    sampler, reason = gpu_monitor.open_sampler(0)  # the real library, no driver here
    assert sampler is None and reason.startswith("NVML unavailable: ")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    assert gpu_monitor.open_sampler(0) == (None, "nvidia-ml-py is not installed")


def test_driver_version_from_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    assert gpu_monitor.driver_version() == "565.57.01"
