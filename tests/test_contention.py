"""bench/running/contention.py: other processes' CPU use during a Case, and the runner measuring contended Cases again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from bench.result import Result
from bench.running import contention, runner
from bench.schema import Case
from bench.store.run_folder import RunFolder


def test_a_busy_neighbour_makes_a_case_contended():
    # a neighbour, not a child: started through a shell that exits, so it is no part of this process tree
    pid = int(subprocess.run(["sh", "-c", f"'{sys.executable}' -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True, timeout=30).stdout)
    watch = contention.Watch()
    try:
        time.sleep(1.5)
    finally:
        os.kill(pid, signal.SIGKILL)
    load = watch.load()
    assert load.other_cpu_cores > contention.OTHER_CORES_LIMIT and load.contended


def test_the_cases_own_work_and_its_childrens_are_not_counted_as_others():
    """CPU time, not wall time, so a busy machine cannot starve the burners below what is asserted."""
    before = contention._tree_cpu_s()
    child = subprocess.Popen([sys.executable, "-c", "import time, sys\nwhile time.process_time() < 1.0: pass\n"
                                                    "print('done', flush=True)\ntime.sleep(1)"],
                             stdout=subprocess.PIPE, text=True)
    start = time.process_time()
    while time.process_time() - start < 0.5:
        pass
    assert child.stdout.readline().strip() == "done"
    during = contention._tree_cpu_s() - before  # the live child counted
    child.wait()
    after = contention._tree_cpu_s() - before  # the reaped child counted through children_user
    assert during >= 1.45 and after >= 1.45


def _case(batch: int) -> Case:
    return Case(mode="train", device="cpu", pipeline="resident", batch_size=batch, threads=1, width=1.0, repeat=0,
                epochs=1, max_steps=5, max_seconds=None, time_limit_s=60.0, lr=0.001, seed=0,
                target_accuracy_pct=50.0, num_workers=0, warmup_steps=1, window_s=0.1, latency_batches=1,
                dataset="synthetic", data_cache="/nowhere")


class _Display:
    total = 2

    def case_started(self, case):
        pass

    def case_progress(self, progress):
        pass

    def case_finished(self, result):
        pass


def test_a_contended_case_is_measured_again_at_once_when_the_machine_is_quiet(tmp_path: Path, monkeypatch):
    runs = []

    def run_one(case, ctx=None, on_progress=None):
        runs.append(case.key)
        busy = case.batch_size == 8 and runs.count(case.key) == 1
        return Result(case=case, images_per_s=100.0 if busy else 200.0, contended=busy,
                      other_cpu_cores=1.0 if busy else 0.0, steal_pct=0.0)

    monkeypatch.setattr(runner, "_context", lambda: None)
    monkeypatch.setattr(runner, "run_one", run_one)
    monkeypatch.setattr(runner, "RETRY_SHARE", float("inf"))  # these instant Cases leave no share to spend
    monkeypatch.setattr(contention, "machine_is_quiet", lambda: True)
    runner.run_cases([_case(8), _case(16)], tmp_path, _Display())
    assert runs == [_case(8).key, _case(8).key, _case(16).key]
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one line per Case: pandas.read_json reads no duplicate
    first = RunFolder(tmp_path).results()[0]
    assert first.contended is False and first.images_per_s == 200.0 and "measured again" in first.warnings[0]
    # still busy: not measured again, and it stays marked
    runs.clear()
    monkeypatch.setattr(contention, "machine_is_quiet", lambda: False)
    (tmp_path / "busy").mkdir()
    runner.run_cases([_case(8)], tmp_path / "busy", _Display())
    assert runs == [_case(8).key] and RunFolder(tmp_path / "busy").results()[0].contended is True


def test_a_second_measurement_that_fails_keeps_the_first(tmp_path: Path, monkeypatch):
    def run_one(case, ctx=None, on_progress=None):
        if case.key in seen:
            return Result(case=case, status="timeout", error="killed")
        seen.add(case.key)
        return Result(case=case, images_per_s=100.0, contended=True, other_cpu_cores=1.0, steal_pct=0.0)

    seen = set()
    monkeypatch.setattr(runner, "_context", lambda: None)
    monkeypatch.setattr(runner, "run_one", run_one)
    monkeypatch.setattr(runner, "RETRY_SHARE", float("inf"))  # these instant Cases leave no share to spend
    monkeypatch.setattr(contention, "machine_is_quiet", lambda: True)
    runner.run_cases([_case(8)], tmp_path, _Display())
    (kept,) = RunFolder(tmp_path).results()
    assert kept.status == "ok" and kept.images_per_s == 100.0 and kept.contended
    assert "ended as timeout" in kept.warnings[-1]


def test_measuring_again_takes_at_most_its_share_of_the_sweeps_time(tmp_path: Path, monkeypatch):
    """20 Cases whose first measurement takes 1 s each, all contended; a wait for quiet takes 0.5 s and a second
    measurement 1 s. With RETRY_SHARE 0.1 of the 20 s the sweep is on course for, the first Case is measured
    again (expected to cost 1.3 s: its own 1 s and a 0.3 s sample), which spends 1.5 s; no second one fits."""
    now, runs = [0.0], []

    def run_one(case, ctx=None, on_progress=None):
        now[0] += 1.0
        runs.append(case.batch_size)
        first = runs.count(case.batch_size) == 1
        return Result(case=case, images_per_s=100.0, contended=first, other_cpu_cores=1.0 if first else 0.0,
                      steal_pct=0.0)

    def quiet():
        now[0] += 0.5
        return True

    monkeypatch.setattr(runner, "_context", lambda: None)
    monkeypatch.setattr(runner, "run_one", run_one)
    monkeypatch.setattr(runner, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(contention, "machine_is_quiet", quiet)
    assert runner.RETRY_SHARE == 0.1
    runner.run_cases([_case(b) for b in range(1, 21)], tmp_path, _Display())
    again = [b for b in range(1, 21) if runs.count(b) == 2]
    assert again == [1]
    results = {r.case.batch_size: r for r in RunFolder(tmp_path).results()}
    assert not results[1].contended and "measured again" in results[1].warnings[-1]
    assert results[2].contended and "had taken its share of the sweep's time (10%)" in results[2].warnings[-1]
