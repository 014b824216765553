"""Timed windows of steps on a device clock: a window is opened, each step marks the clock, and the window is
closed with a synchronise (the marks of queued CUDA work are only readable once it is done), then kept or counted
as warm-up. Minor page faults are counted per kept window."""
from __future__ import annotations

import time

from bench.measuring.clock import DeviceClock, minor_faults


class Windows:
    """The kept windows (`windows_s`, `windows_images`, their steps' times `step_s`, the faults inside them) and
    the one open now."""

    def __init__(self, clock: DeviceClock):
        self.clock = clock
        self.windows_s: list[float] = []
        self.windows_images: list[int] = []
        self.step_s: list[float] = []
        self.timed_faults = 0  # minor page faults of this process (all its threads) inside the kept windows
        self.new_shape_steps = 0  # steps left out of every window (see StepMeter)
        self.new_shape_s = 0.0  # their time: cuDNN's autotuning, torch.compile's program for the new shape
        self.last_steps: list[float] = []  # step times of the window last closed, kept or not
        self._marks: list = []  # the clock's marks of the open window's steps
        self._images = 0
        self._host_start = 0.0
        self._fault_mark = 0

    @property
    def last_mark(self):
        return self._marks[-1]

    @property
    def open_steps(self) -> int:
        return len(self._marks) - 1

    def host_age(self, now: float) -> float:
        """Host seconds since the open window was opened."""
        return now - self._host_start

    def open(self):
        """Opens a window at a new mark, and returns that mark."""
        self._fault_mark = minor_faults()
        mark = self.clock.mark()
        self._marks = [mark]
        self._images = 0
        self._host_start = time.perf_counter()
        return mark

    def step(self, n_images: int) -> None:
        self._marks.append(self.clock.mark())
        self._images += n_images

    def close(self, keep: bool) -> float:
        """Closes the open window (synchronises); keeps it when `keep`; returns its seconds. The next window
        starts at its last mark."""
        self.clock.sync()
        self.last_steps = []
        now = minor_faults()
        faults, self._fault_mark = now - self._fault_mark, now
        if len(self._marks) < 2:
            return 0.0
        steps = self.last_steps = [self.clock.seconds(a, b) for a, b in zip(self._marks, self._marks[1:])]
        total = sum(steps)
        if keep:
            self.timed_faults += faults
            self.windows_s.append(total)
            self.windows_images.append(self._images)
            self.step_s.extend(steps)
        self._marks = self._marks[-1:]
        return total

    def drop_last_step(self, n_images: int, new_shape: bool = True) -> None:
        """Closes the window before the last step and reopens it after, leaving that step out (counted as a new
        shape's step when `new_shape`)."""
        last = self._marks.pop()
        before = self._marks[-1]
        self._images -= n_images
        self.close(keep=True)  # synchronises: the left-out step's end is known
        if new_shape:
            self.new_shape_s += self.clock.seconds(before, last)
            self.new_shape_steps += 1
        self._marks, self._images, self._host_start = [last], 0, time.perf_counter()
