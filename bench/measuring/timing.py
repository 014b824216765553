"""The one place that reads a clock: timed windows, step times, data wait, latency.

CUDA work is asynchronous, so a host clock alone measures how fast work was
queued, not done. Every timed window is opened and closed on device time: on a
CPU by `perf_counter`, on CUDA by events recorded in the stream, read only after
the window is closed with a synchronise. No step in a window synchronises.
"""
from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.measuring import precision

SPREAD_WARN_PCT = 10.0
WARMUP_CAP_STEPS = 200  # past --warmup-steps, the most steps a warm-up waits for step times to settle
WARMUP_CAP_SHARE = 0.25  # ... and the most of --max-seconds it may take
BUDGET_MIN_WINDOWS = 3  # --max-seconds stops a Case only once it has this many timed windows (a figure)


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


@dataclass
class Budget:
    """When a Case stops early: after `max_steps` steps or `max_seconds` of training."""

    max_steps: int | None = None
    max_seconds: float | None = None


@dataclass
class StepMeter:
    """Counts steps and groups them into timed windows of about `window_s` seconds.

    The warm-up (timed, reported apart, never in the throughput) lasts at least `warmup_steps`
    steps and, from 4 on, goes on until step times settle (bench/measuring/precision.py's `settled`), at most
    WARMUP_CAP_STEPS more steps or WARMUP_CAP_SHARE of `max_seconds`. `max_seconds` counts the warm-up but
    stops a Case only once it has BUDGET_MIN_WINDOWS timed windows: a budget shorter than a slow Case's
    warm-up still gives it a figure (`max_steps` and the epochs stop it regardless). A window is closed when it has
    run `window_s` (host time), at the end of each epoch and when the budget stops the Case;
    closing synchronises. With `precision_pct`, the Case stops at the first window close where the
    median's 95% interval is within +-precision_pct ("precise"); the budget stays the upper bound
    (data-parallel ranks, which see only their own windows, always run the budget).

    A step on a batch size not seen before (an epoch's partial last batch, 50000 % 32 = 16
    images) is a new input shape: cuDNN autotunes for it (and oneDNN builds new primitives), so
    that step is kept out of every window and counted in `new_shape_steps`.

    With `agree` (data-parallel ranks: e.g. an all-reduce of the maximum), ranks must close
    windows and stop at the same step, so host time cannot decide alone: at the end of the
    warm-up the ranks agree on the slowest steady step time (the median of the warm-up's later
    half: its first steps include autotuning and lazy initialisation) and windows last
    `window_s` worth of such steps, counted in steps; `max_seconds` takes effect at a window's or an epoch's end,
    once the ranks agree. `agree` is called on every rank at the same steps.
    """

    clock: DeviceClock
    warmup_steps: int = 10
    window_s: float = 0.5
    budget: Budget = field(default_factory=Budget)
    precision_pct: float | None = None
    progress: Callable[[int, float], None] | None = None
    progress_every_s: float = 0.5
    steps: int = 0
    images: int = 0
    warmup_s: float | None = None
    train_s: float = 0.0
    epoch_s: list[float] = field(default_factory=list)
    windows_s: list[float] = field(default_factory=list)
    windows_images: list[int] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    data_wait_s: float = 0.0
    stopped_by: str | None = None
    agree: Callable[[float], float] | None = None
    window_steps: int | None = None  # set from the warm-up when `agree` is given
    data_wait_measured: bool = False  # batches() was used: data_wait_s means something
    new_shape_steps: int = 0
    timed_faults: int = 0  # minor page faults of this process (all its threads) inside the kept windows
    _fault_mark: int = 0
    _warmup_so_far: float = 0.0
    _warmup_step_s: list[float] = field(default_factory=list)
    _batch_sizes: set[int] = field(default_factory=set)
    # the open epoch and window, set by start_epoch (None until then) and the window's open and close
    # (factories, not defaults: every attribute is the instance's own from __init__ on)
    _epoch_mark: object = field(default_factory=lambda: None, init=False)
    _host_epoch_start: float = field(default_factory=float, init=False)
    _host_last_progress: float = field(default_factory=float, init=False)
    _train_s_before: float = field(default_factory=float, init=False)
    _marks: list = field(default_factory=list, init=False)  # the clock's marks of the open window's steps
    _window_images: int = field(default_factory=int, init=False)
    _host_window_start: float = field(default_factory=float, init=False)
    _last_steps: list[float] = field(default_factory=list, init=False)  # step times of the window last closed

    def start_epoch(self) -> None:
        if self.warmup_steps == 0 and self.warmup_s is None:
            self.warmup_s = 0.0
        self.clock.sync()
        self._host_epoch_start = self._host_last_progress = time.perf_counter()
        self._train_s_before = self.train_s
        self._epoch_mark = self._open_window()

    def batches(self, batches: Iterable) -> Iterator:
        """Passes batches through, adding the host time spent waiting for each to `data_wait_s`."""
        self.data_wait_measured = True
        iterator = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            if self.warmup_s is not None:
                self.data_wait_s += time.perf_counter() - t0
            yield batch

    def on_step(self, n_images: int) -> bool:
        """Called after every step; returns True when the budget says stop."""
        if self._epoch_mark is None:
            raise RuntimeError("StepMeter.on_step before start_epoch: an epoch's first step needs its start marked "
                               "(call start_epoch before the loop)")
        self.steps += 1
        self.images += n_images
        self._marks.append(self.clock.mark())
        self._window_images += n_images
        now = time.perf_counter()
        elapsed = self._train_s_before + now - self._host_epoch_start
        vote = False
        if self.warmup_s is None:
            self._batch_sizes.add(n_images)
            if self.steps >= self.warmup_steps:
                self._warmup_so_far += self._close_window(keep=False)
                self._warmup_step_s += self._last_steps
                if self._warmup_over(elapsed):
                    self.warmup_s = self._warmup_so_far
                    if self.agree is not None:  # after the synchronise: a vote reads a device value back
                        slowest = self.agree(_steady(self._warmup_step_s))
                        self.window_steps = max(1, round(self.window_s / slowest)) if slowest > 0 else 1
                    self._open_window()
        elif n_images not in self._batch_sizes:
            self._batch_sizes.add(n_images)
            self._drop_last_step(n_images)
        elif self._window_due(now):
            self._close_window(keep=True)
            if self.agree is not None:
                # the ranks vote between windows, never inside one (the vote waits for a device value). A rank
                # knows only its own windows, and the Case's figure is over global windows (the slowest rank's
                # time), so data-parallel Cases are not stopped for precision: they run their budget
                vote = self.agree(float(self._out_of_time(elapsed))) > 0
            elif self._precise():
                self.stopped_by = "precise"
            self._open_window()
        self.stopped_by = self._stop_rule(elapsed, vote)
        if self.progress is not None and (now - self._host_last_progress >= self.progress_every_s):
            self._host_last_progress = now
            self.progress(self.steps, elapsed)
        return self.stopped_by is not None

    def end_epoch(self) -> None:
        """Closes the open window and the epoch (synchronises)."""
        if self.warmup_s is None:  # the warm-up goes on into the next epoch
            self._warmup_so_far += self._close_window(keep=False)
            self._warmup_step_s += self._last_steps
        else:
            self._close_window(keep=True)
        last = self._marks[-1]
        epoch = self.clock.seconds(self._epoch_mark, last) if last is not self._epoch_mark else 0.0
        self.epoch_s.append(epoch)
        self.train_s = self._train_s_before + epoch
        if self.agree is not None and self.stopped_by is None:  # ranks leave the loop together or not at all
            out_of_time = self._out_of_time(self.train_s)
            if self.agree(float(out_of_time)) > 0:
                self.stopped_by = "max_seconds"

    def _stop_rule(self, elapsed: float, vote: bool) -> str | None:
        """Why the Case stops after this step, if it does: its figure is sure ("precise", decided at a window's
        close), its step cap (the same step on every rank: no need to agree), or its time (on one process; the
        ranks' vote for data-parallel Cases)."""
        if self.stopped_by == "precise":
            return self.stopped_by  # the figure is sure: the budget did not stop it
        if self.budget.max_steps is not None and self.steps >= self.budget.max_steps:
            return "max_steps"
        if (self.agree is None and self._out_of_time(elapsed)) or vote:
            return "max_seconds"
        return self.stopped_by

    def _out_of_time(self, elapsed: float) -> bool:
        """The budget's time is spent and the Case has its few windows (the same on every rank: ranks close
        windows at the same steps)."""
        return (self.budget.max_seconds is not None and elapsed >= self.budget.max_seconds
                and len(self.windows_s) >= BUDGET_MIN_WINDOWS)

    def _warmup_over(self, elapsed: float) -> bool:
        """Ranks must end the warm-up at the same step, so with `agree` it is the fixed `warmup_steps`; a
        warm-up of fewer than 4 steps is too short to compare halves of, so it is what was asked for."""
        window = min(5, self.warmup_steps // 2)  # the steps compared: the last few against those before
        if self.agree is not None or window < 2 or precision.settled(self._warmup_step_s, window):
            return True
        capped = self.steps >= self.warmup_steps + WARMUP_CAP_STEPS
        if self.budget.max_seconds is not None:
            capped = capped or elapsed >= WARMUP_CAP_SHARE * self.budget.max_seconds
        return capped

    def _precise(self) -> bool:
        if self.precision_pct is None or len(self.windows_s) < precision.MIN_WINDOWS:
            return False
        rates = [n / s for n, s in zip(self.windows_images, self.windows_s) if s > 0]
        return precision.precise(rates, self.precision_pct)

    def _drop_last_step(self, n_images: int) -> None:
        """Closes the window before the last step and reopens it after, leaving that step out."""
        last = self._marks.pop()
        self._window_images -= n_images
        self._close_window(keep=True)
        self._marks, self._window_images, self._host_window_start = [last], 0, time.perf_counter()
        self.new_shape_steps += 1

    def _window_due(self, now: float) -> bool:
        if self.window_steps is not None:
            return len(self._marks) - 1 >= self.window_steps
        return now - self._host_window_start >= self.window_s

    def _open_window(self):
        self._fault_mark = minor_faults()
        mark = self.clock.mark()
        self._marks = [mark]
        self._window_images = 0
        self._host_window_start = time.perf_counter()
        return mark

    def _close_window(self, keep: bool) -> float:
        # synchronise: the marks of queued CUDA work are only readable once it is done
        self.clock.sync()
        self._last_steps = []
        now = minor_faults()
        faults, self._fault_mark = now - self._fault_mark, now
        if len(self._marks) < 2:
            return 0.0
        steps = self._last_steps = [self.clock.seconds(a, b) for a, b in zip(self._marks, self._marks[1:])]
        total = sum(steps)
        if keep:
            self.timed_faults += faults
            self.windows_s.append(total)
            self.windows_images.append(self._window_images)
            self.step_s.extend(steps)
        self._marks = self._marks[-1:]
        return total


def _steady(step_s: list[float]) -> float:
    """A steady step time from the warm-up's steps: the median of their later half."""
    later = step_s[len(step_s) // 2:]
    return float(np.median(later)) if later else 0.0


@dataclass
class Throughput:
    """Images per second over timed windows: median and spread, plus step-time percentiles."""

    images_per_s: float | None
    p25: float | None
    p75: float | None
    spread_pct: float | None
    step_ms: tuple[float | None, float | None, float | None]
    warnings: list[str]
    interval: tuple[float, float] | None = None  # 95% confidence interval of the median
    half_width_pct: float | None = None


def summarise(windows_s: list[float], windows_images: list[int], step_s: list[float]) -> Throughput:
    """Derives the summary from the raw windows; the raw samples stay in the Result."""
    rates = np.array([n / s for n, s in zip(windows_images, windows_s) if s > 0])
    warnings: list[str] = []
    if len(rates) == 0:
        return Throughput(None, None, None, None, (None, None, None),
                          ["no timed window after the warm-up: give the Case more steps or time"])
    median, p25, p75 = (float(np.percentile(rates, q)) for q in (50, 25, 75))
    spread = 100.0 * (p75 - p25) / median
    interval = precision.median_interval(rates)
    if spread > SPREAD_WARN_PCT:
        warnings.append(f"throughput varied: IQR is {spread:.0f}% of the median over {len(rates)} windows")
    if len(rates) < 3:
        warnings.append(f"only {len(rates)} timed window(s): the spread is not meaningful")
    steps_ms = np.array(step_s) * 1000.0 if step_s else None
    step_ms = tuple(float(np.percentile(steps_ms, q)) for q in (50, 90, 99)) if steps_ms is not None else (None,) * 3
    return Throughput(median, p25, p75, spread, step_ms, warnings, interval, precision.half_width_pct(rates))


LATENCY_MIN_CALLS = 3


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
