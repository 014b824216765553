"""Runs each Case in its own process, with a time limit; crashes and time-outs become Results.

Starting Python and importing torch and torchvision takes several seconds here,
longer than many Cases. So Cases are forked from a fork server that imported them
once (multiprocessing's "forkserver" with preloading): every Case still gets a
fresh process of its own, with its own threads, memory peak and crash, but
starts in a fraction of a second. The server itself never computes, so no thread
pool or CUDA context exists to be inherited.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil

from bench.result import Result
from bench.running.forkserver import case_main, nothing, start_server
from bench.schema import Case
from bench.store.run_folder import RunError, RunFolder

POLL_S = 0.1


def _context() -> mp.context.BaseContext:
    # Start the server (if not yet) and wait for its imports now, so they are not charged to the first Case.
    ctx = start_server()
    ready = ctx.Process(target=nothing)
    ready.start()
    ready.join()
    return ctx


def _kill_tree(pid: int | None) -> None:
    """Kills a worker and its children (DataLoader workers), leaving nothing behind."""
    if pid is None:  # never started: psutil.Process(None) would be this process
        return
    try:  # the Case leads its own process group (worker.child_main): this reaches every descendant at once
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # not a group leader yet (interrupted right after the fork): its tree, below
    try:
        parent = psutil.Process(pid)
        # Stopped first: a Case that is starting DataLoader workers could otherwise fork one after the
        # list of its children is taken, and that worker would outlive it (holding our stderr open).
        parent.suspend()
        procs = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the kernel's out-of-memory killer sends this)" if name == "SIGKILL" else ""
        return f"worker died from {name}{hint}"
    return f"worker exited with status {exitcode} without a result"


def _start(proc) -> None:
    """proc.start(), with Ctrl-C and SIGTERM held until it returns: raised inside start(), an interrupt
    would leave the child forked (the fork server forks on request) with its pid unknown here, so
    nothing could kill it, and it would live on with its DataLoader workers. A held signal is raised
    once the pid is known."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        proc.start()
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        proc.start()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if held:
        raise KeyboardInterrupt


def run_one(case: Case, ctx=None, on_progress: Callable[[dict], None] | None = None) -> Result:
    """Runs one Case in a child process and returns its Result, whatever happens to the child."""
    ctx = ctx or _context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=case_main, args=(asdict(case), sender, time.time()), name=f"bench-{case.key}")
    result = None
    try:  # from the start: an interrupt arriving just after the fork must still take the child down
        _start(proc)
        sender.close()
        deadline = time.monotonic() + case.time_limit_s
        while result is None:
            if receiver.poll(POLL_S):
                try:
                    kind, payload = receiver.recv()
                except (EOFError, OSError):
                    break  # the child is gone without a result
                if kind == "progress" and on_progress is not None:
                    on_progress(payload)
                elif kind == "result":
                    result = Result.from_dict(payload)
            elif not proc.is_alive():
                break
            if result is None and time.monotonic() > deadline:
                _kill_tree(proc.pid)
                return Result(case=case, status="timeout",
                              error=f"exceeded the time limit of {case.time_limit_s:g} s (--time-limit)")
    except BaseException:
        _kill_tree(proc.pid)  # Ctrl-C: leave no worker behind
        raise
    proc.join(timeout=30)
    if proc.is_alive():
        _kill_tree(proc.pid)
    try:  # what the Case left in its process group, e.g. DataLoader workers of a loop stopped early, which
        os.killpg(proc.pid, signal.SIGKILL)  # would otherwise linger, holding our stderr, until they notice
    except (ProcessLookupError, PermissionError):
        pass  # nothing left
    receiver.close()
    if result is None:
        return Result(case=case, status="failed", error=_exit_reason(proc.exitcode))
    return result


RETRY_SHARE = 0.1  # measuring contended Cases again may add at most this share to the time the Cases take


@dataclass
class _RetryBudget:
    cases: int  # in the sweep
    measured_s: float = 0.0  # the first measurements so far
    measured: int = 0
    retried_s: float = 0.0  # waiting for quiet and measuring again

    def allows(self, cost_s: float) -> bool:
        """Whether one more retry, expected to cost `cost_s`, keeps the retries within RETRY_SHARE of the time the
        sweep's first measurements are on course to take."""
        projected_s = self.measured_s / max(self.measured, 1) * self.cases
        return self.retried_s + cost_s <= RETRY_SHARE * projected_s


def run_cases(cases: list[Case], run_dir: Path, display) -> list[Result]:
    """Runs the Cases in order, appending each Result to results.jsonl as it ends (one line per Case)."""
    ctx = _context()
    folder = RunFolder(run_dir)
    budget = _RetryBudget(len(cases))
    return [_run_and_append(case, ctx, folder, display, budget) for case in cases]


def _measured(case: Case, ctx, display, budget: _RetryBudget) -> Result:
    """A Case measured while other processes were busy (`contended`) is measured again at once if the machine
    is quiet by then, and the second figure kept when it is ok; one still contended stays marked so. Measuring
    again may add at most RETRY_SHARE to the time the sweep's Cases are on course to take (on a busy machine a
    --quick sweep otherwise spent a third of its time on it); past that, contended Cases stay marked and say why."""
    from bench.running import contention

    started = time.monotonic()
    result = run_one(case, ctx, on_progress=display.case_progress)
    took = time.monotonic() - started
    budget.measured_s, budget.measured = budget.measured_s + took, budget.measured + 1
    if result.status != "ok" or not result.contended:
        return result
    if not budget.allows(took + contention.QUIET_SAMPLE_S):
        return _noted(result, f"not measured again: measuring contended Cases again had taken its share of the "
                              f"sweep's time ({RETRY_SHARE:.0%})")
    started = time.monotonic()
    try:
        if not contention.machine_is_quiet():
            return result
        again = run_one(case, ctx, on_progress=display.case_progress)
    finally:
        budget.retried_s += time.monotonic() - started
    if again.status == "ok":
        return _noted(again, f"measured again: the first try was contended (other processes "
                             f"{result.other_cpu_cores:.2f} cores, steal {result.steal_pct:.1f}%, "
                             f"{result.images_per_s or float('nan'):.0f} images/s)")
    return _noted(result, f"measuring it again once the machine was quiet ended as {again.status}")


def _noted(result: Result, warning: str) -> Result:
    """The Result as its worker assembled it, with what the runner adds about how it was measured."""
    return replace(result, warnings=[*result.warnings, warning])


def _run_and_append(case: Case, ctx, folder: RunFolder, display, budget: _RetryBudget) -> Result:
    display.case_started(case)
    result = _measured(case, ctx, display, budget)
    try:
        folder.append(result)
    except RunError:  # measured, not writable: shown whole, so it can be added to results.jsonl by hand
        print(f"bench: {case.key} was measured but could not be written; its Result line:\n"
              f"{result.to_json()}", flush=True)
        raise
    display.case_finished(result)
    return result
