"""Was the machine busy while a Case ran? Other processes' CPU use (the whole machine's busy CPU time less
this Case's own process tree), hypervisor steal time and the clock, read with psutil at the Case's start and
end. A busy machine is data, not a finding: a Case measured beside a neighbour is marked `contended`, the
runner measures it again at once if the machine is quiet by then, and the report says which findings rest on
such Cases.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

OTHER_CORES_LIMIT = 0.5  # other processes using more than half a core on average make a Case contended
STEAL_LIMIT_PCT = 5.0  # or the hypervisor taking more than this share of the machine's CPU time


def _busy_and_steal() -> tuple[float, float]:
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


def _tree_cpu_s() -> float:
    """CPU seconds of this process, its children reaped so far and its children alive now (DataLoader
    workers, DDP ranks); a child that ends while being read is counted by its parent once reaped."""
    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        total += c.user + c.system
    return total


def _mhz() -> float | None:
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError):
        return None
    return float(freq.current) if freq and freq.current else None


@dataclass
class Load:
    other_cpu_cores: float
    steal_pct: float
    cpu_mhz: list[float]

    @property
    def contended(self) -> bool:
        return self.other_cpu_cores > OTHER_CORES_LIMIT or self.steal_pct > STEAL_LIMIT_PCT


class Watch:
    """Started when a Case starts, read when it ends: `Watch().load()`."""

    def __init__(self):
        self.wall = time.monotonic()
        self.busy, self.steal = _busy_and_steal()
        self.own = _tree_cpu_s()
        self.mhz = _mhz()

    def load(self) -> Load:
        wall = max(time.monotonic() - self.wall, 1e-9)
        busy, steal = _busy_and_steal()
        own = _tree_cpu_s() - self.own
        other = max(0.0, (busy - self.busy) - own) / wall
        cpus = psutil.cpu_count(logical=True) or 1
        mhz = [m for m in (self.mhz, _mhz()) if m is not None]
        return Load(round(other, 3), round(100.0 * (steal - self.steal) / (wall * cpus), 2), mhz)


QUIET_SAMPLE_S = 0.3


def machine_is_quiet(sample_s: float = QUIET_SAMPLE_S) -> bool:
    """Whether other processes leave the machine free now (sampled for `sample_s` from an idle caller)."""
    watch = Watch()
    time.sleep(sample_s)
    return not watch.load().contended
