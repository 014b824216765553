"""What the user sees while a sweep runs: bars on a terminal, plain lines elsewhere."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

from bench.result import Result
from bench.schema import Case


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Display:
    """Overall Cases, and epochs/steps within the running Case, each with an ETA."""

    def __init__(self, total: int, stream=None, plain: bool | None = None, line_every_s: float = 10.0):
        self.stream = stream or sys.stdout
        self.plain = not self.stream.isatty() if plain is None else plain
        self.total, self.done = total, 0
        self.line_every_s = line_every_s
        self._overall = None if self.plain else tqdm(total=total, desc="cases", unit="case", position=0,
                                                     file=self.stream, dynamic_ncols=True)
        self._inner = None

    def write(self, text: str) -> None:
        if self._overall is not None:
            self._overall.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def case_started(self, case: Case) -> None:
        self._case, self._last_line = case, time.monotonic()
        if self.plain:
            self.write(f"[{self.done + 1}/{self.total}] {case.label}: started")
        else:
            # the bar shows our ETA, which knows the --max-seconds budget; tqdm's own would not
            self._inner = tqdm(total=None, desc=f"  {case.label}", unit="step", position=1, leave=False,
                               file=self.stream, dynamic_ncols=True,
                               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def case_progress(self, p: dict) -> None:
        text = f"epoch {p['epoch']}/{p['epochs']} step {p['step']}/{p['steps']} ETA {_eta(p['eta_s'])}"
        if self._inner is not None:
            self._inner.total = p["steps"]
            self._inner.n = p["step"]
            self._inner.set_postfix_str(text, refresh=True)
        elif time.monotonic() - self._last_line >= self.line_every_s:
            self._last_line = time.monotonic()
            self.write(f"[{self.done + 1}/{self.total}] {self._case.label}: {text}")

    def case_finished(self, result: Result) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None
        self.done += 1
        rate = f"{result.images_per_s:.0f} images/s" if result.images_per_s else ""
        acc = f", {result.test_accuracy_pct:.1f}% test accuracy" if result.test_accuracy_pct is not None else ""
        detail = f"{rate}{acc}" if result.status == "ok" else f"{result.status.upper()}: {result.error}"
        self.write(f"[{self.done}/{self.total}] {result.case.label}: {detail}")
        if self._overall is not None:
            self._overall.update(1)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
        if self._overall is not None:
            self._overall.close()
