"""The step meter: counts a Case's steps and images, groups them into timed windows, decides when the warm-up
ends and when the Case stops, and times the data wait. Each concern is a part of its own: the windows
(bench/measuring/windows.py), the warm-up, the stop rule and the ranks' agreement (bench/measuring/stop.py), on one
device clock (bench/measuring/clock.py); the loop calls `start_epoch`, `on_step` and `end_epoch`."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from bench.measuring.clock import DeviceClock
from bench.measuring.stop import Agreement, Budget, StopRule, WarmUp
from bench.measuring.windows import Windows


class StepMeter:
    """Counts steps and groups them into timed windows of about `window_s` seconds.

    The warm-up (timed, reported apart, never in the throughput) is stop.WarmUp's. `max_seconds` counts the
    warm-up but stops a Case only once it has stop.BUDGET_MIN_WINDOWS timed windows: a budget shorter than a slow
    Case's warm-up still gives it a figure (`max_steps` and the epochs stop it regardless). A window is closed
    when it has run `window_s` (host time), at the end of each epoch and when the budget stops the Case; closing
    synchronises. With `precision_pct`, the Case stops at the first window close where the median's 95% interval
    is within +-precision_pct ("precise"); the budget stays the upper bound.

    A step on a batch size not seen before (an epoch's partial last batch, 50000 % 32 = 16 images) is a new input
    shape: cuDNN autotunes for it (and oneDNN builds new primitives), so that step is kept out of every window
    and counted in `new_shape_steps`. The partial batches of later epochs are kept out of the windows too (not
    counted there): each is a program of its own, and under torch.compile's CUDA-graph modes the second call of a
    program records its graph, which would land inside a window; the windows time full batches only.

    With `agree` (data-parallel ranks), windows last a number of steps the ranks agree on, and the ranks stop
    together (stop.Agreement).
    """

    def __init__(self, clock: DeviceClock, warmup_steps: int = 10, window_s: float = 0.5,
                 budget: Budget | None = None, precision_pct: float | None = None,
                 progress: Callable[[int, float], None] | None = None, progress_every_s: float = 0.5,
                 agree: Callable[[float], float] | None = None):
        budget = budget or Budget()
        self.clock, self.window_s = clock, window_s
        self.windows = Windows(clock)
        self.warmup = WarmUp(warmup_steps, budget, fixed=agree is not None)
        self.rule = StopRule(budget, precision_pct)
        self.agreement = Agreement(agree) if agree is not None else None
        self.progress, self.progress_every_s = progress, progress_every_s
        self.steps = 0
        self.images = 0
        self.warmup_s: float | None = None
        self.train_s = 0.0
        self.epoch_s: list[float] = []
        self.data_wait_s = 0.0
        self.data_wait_measured = False  # batches() was used: data_wait_s means something
        self.stopped_by: str | None = None
        self.window_steps: int | None = None  # set from the warm-up when the ranks agree
        self._batch_sizes: set[int] = set()
        self._full: int | None = None  # the Case's batch, the first the warm-up saw
        self._epoch_mark = None  # the open epoch's first mark: None until start_epoch
        self._host_epoch_start = 0.0
        self._host_last_progress = 0.0
        self._train_s_before = 0.0

    windows_s = property(lambda self: self.windows.windows_s)
    windows_images = property(lambda self: self.windows.windows_images)
    step_s = property(lambda self: self.windows.step_s)
    timed_faults = property(lambda self: self.windows.timed_faults)
    new_shape_steps = property(lambda self: self.windows.new_shape_steps)
    new_shape_s = property(lambda self: self.windows.new_shape_s)

    def start_epoch(self) -> None:
        if self.warmup.steps == 0 and self.warmup_s is None:
            self.warmup_s = 0.0
        self.clock.sync()
        self._host_epoch_start = self._host_last_progress = time.perf_counter()
        self._train_s_before = self.train_s
        self._epoch_mark = self.windows.open()

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
        """Called after every step; returns True when the Case stops here."""
        if self._epoch_mark is None:
            raise RuntimeError("StepMeter.on_step before start_epoch: an epoch's first step needs its start marked "
                               "(call start_epoch before the loop)")
        self.steps += 1
        self.images += n_images
        self.windows.step(n_images)
        now = time.perf_counter()
        elapsed = self._train_s_before + now - self._host_epoch_start
        vote = False
        if self.warmup_s is None:
            self._full = self._full or n_images
            self._batch_sizes.add(n_images)
            if self.steps >= self.warmup.steps:
                self._warming_up(elapsed)
        elif n_images not in self._batch_sizes:
            self._batch_sizes.add(n_images)
            self.windows.drop_last_step(n_images)
        elif n_images != self._full:  # a partial batch seen before: its own program, out of the windows too
            self.windows.drop_last_step(n_images, new_shape=False)
        elif self._window_due(now):
            self.windows.close(keep=True)
            if self.agreement is not None:
                vote = self.agreement.any_out_of_time(self.rule.out_of_time(elapsed, len(self.windows_s)))
            elif self.rule.precise(self.windows_s, self.windows_images):
                self.stopped_by = "precise"
            self.windows.open()
        out_of_time = vote if self.agreement is not None else self.rule.out_of_time(elapsed, len(self.windows_s))
        self.stopped_by = self.rule.after_step(self.stopped_by, self.steps, out_of_time)
        if self.progress is not None and (now - self._host_last_progress >= self.progress_every_s):
            self._host_last_progress = now
            self.progress(self.steps, elapsed)
        return self.stopped_by is not None

    def end_epoch(self) -> None:
        """Closes the open window and the epoch (synchronises)."""
        if self.warmup_s is None:  # the warm-up goes on into the next epoch
            self.warmup.add(self.windows.close(keep=False), self.windows.last_steps)
        else:
            self.windows.close(keep=True)
        last = self.windows.last_mark
        epoch = self.clock.seconds(self._epoch_mark, last) if last is not self._epoch_mark else 0.0
        self.epoch_s.append(epoch)
        self.train_s = self._train_s_before + epoch
        if self.agreement is not None and self.stopped_by is None:  # ranks leave the loop together or not at all
            if self.agreement.any_out_of_time(self.rule.out_of_time(self.train_s, len(self.windows_s))):
                self.stopped_by = "max_seconds"

    def _warming_up(self, elapsed: float) -> None:
        """Counts the warm-up's window so far, and ends the warm-up when it is over (the ranks then agree on their
        windows' steps: after the synchronise, as a vote reads a device value back)."""
        self.warmup.add(self.windows.close(keep=False), self.windows.last_steps)
        if self.warmup.over(self.steps, elapsed):
            self.warmup_s = self.warmup.seconds
            if self.agreement is not None:
                self.window_steps = self.agreement.window_steps(self.warmup.steady_step_s(), self.window_s)
            self.windows.open()

    def _window_due(self, now: float) -> bool:
        if self.window_steps is not None:
            return self.windows.open_steps >= self.window_steps
        return self.windows.host_age(now) >= self.window_s
