"""The clocks a Case is timed by: device time for steps (a CPU's perf_counter, CUDA events), whole calls for
latency, and the process's own counters (page faults, peak memory).

CUDA work is asynchronous, so a host clock alone measures how fast work was queued, not done. Every timed window is
opened and closed on device time: on a CPU by `perf_counter`, on CUDA by events recorded in the stream, read only
after the window is closed with a synchronise. No step in a window synchronises.
"""
from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

LATENCY_MIN_CALLS = 3


class DeviceClock:
    """Timestamps in device order: perf_counter on a CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            # on this device's stream, named: a mark made from another thread (a DDP comm hook's
            # callback) would otherwise land on that thread's current device, cuda:0
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        """Time between two marks; on CUDA only valid after `sync()`."""
        if self.cuda:
            return start.elapsed_time(end) / 1000.0
        return end - start


def latencies_ms(clock: DeviceClock, run: Callable[[torch.Tensor], object], inputs: Iterable[torch.Tensor],
                 limit: int, budget_s: float | None = None) -> list[float]:
    """Per-batch latency: each call is synchronised before and after, so it is whole. At most `limit` calls, and
    with `budget_s` none begun once the calls timed add up to it (after at least LATENCY_MIN_CALLS)."""
    out, spent_ms = [], 0.0
    for i, x in enumerate(inputs):
        if i >= limit or (budget_s is not None and len(out) >= LATENCY_MIN_CALLS and spent_ms >= 1000 * budget_s):
            break
        clock.sync()
        t0 = time.perf_counter()
        run(x)
        clock.sync()
        out.append((time.perf_counter() - t0) * 1000.0)
        spent_ms += out[-1]
    return out


def percentiles(values: list[float], qs=(50, 90, 99)) -> tuple[float | None, ...]:
    if not values:
        return (None,) * len(qs)
    return tuple(float(np.percentile(values, q)) for q in qs)


def minor_faults() -> int:
    """Minor page faults of this process so far, every thread's (getrusage): pages the kernel had to map,
    e.g. because the allocator gave freed memory back and it is being touched again."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_rss_mb() -> float:
    """This process's peak resident set size (the kernel's high-water mark, so no peak is missed)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_device_mem_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None
