"""bench/analysis/compare.py on hand-made runs with known answers, `bench compare` and `bench export` as a user runs
them, and a real slowdown (the same sweep confined to one CPU) caught by `bench compare`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.analysis.compare import compare_runs
from bench.result import Result
from bench.store.run_folder import RunFolder
from bench.sweep.plan import plan_cases
from bench.sweep.spec import with_defaults
from conftest import ROOT, run_bench


def _row(key, rate, spread=0.02, status="ok", **kw):
    return {"key": key, "status": status, "images_per_s": rate, "images_per_s_p25": rate * (1 - spread),
            "images_per_s_p75": rate * (1 + spread), **kw}


def test_a_regression_is_worse_beyond_both_the_threshold_and_the_noise():
    base = pd.DataFrame([_row("a", 1000), _row("b", 1000), _row("c", 1000, spread=0.2), _row("d", 1000),
                         _row("e", 1000), _row("f", 1000, status="oom"), _row("only-base", 1)])
    new = pd.DataFrame([_row("a", 800), _row("b", 950), _row("c", 850, spread=0.2), _row("d", 1300),
                        _row("e", np.nan, status="failed"), _row("f", 1000), _row("only-new", 1)])
    c = compare_runs(base, new, threshold_pct=10).table.set_index("key")
    assert c.loc["a", "verdict"] == "REGRESSION" and c.loc["a", "ratio"] == pytest.approx(0.8)
    assert c.loc["a", "high"] == pytest.approx(800 * 1.02 / (1000 * 0.98))
    assert c.loc["b", "verdict"] == "same"  # 5% worse: under the threshold
    assert c.loc["c", "verdict"] == "within noise"  # 15% worse, but the IQRs overlap
    assert c.loc["d", "verdict"] == "improved"
    assert c.loc["e", "verdict"] == "REGRESSION: was ok, now failed"
    assert c.loc["f", "verdict"] == "not compared: baseline oom"
    full = compare_runs(base, new, threshold_pct=10)
    assert full.only_baseline == ["only-base"] and full.only_new == ["only-new"]
    assert sorted(full.regressions["key"]) == ["a", "e"]
    assert compare_runs(base, new, threshold_pct=25).table.set_index("key").loc["a", "verdict"] == "same"


def test_a_lower_is_better_metric_without_a_spread_uses_the_threshold_alone():
    base = pd.DataFrame([_row("a", 1, step_ms_p50=10.0), _row("b", 1, step_ms_p50=10.0)])
    new = pd.DataFrame([_row("a", 1, step_ms_p50=12.0), _row("b", 1, step_ms_p50=9.0)])
    c = compare_runs(base, new, metric="step_ms_p50", threshold_pct=10).table.set_index("key")
    assert c.loc["a", "verdict"] == "REGRESSION" and np.isnan(c.loc["a", "low"])
    assert c.loc["b", "verdict"] == "same"


def _run(folder: Path, rates: dict[int, float], latency: bool = False, dataset: str = "synthetic") -> Path:
    """A run folder with Results whose images/s are set by hand, as bench run writes them."""
    spec = with_defaults(devices=["cpu"], batch_sizes=sorted(rates), threads=[2], pipelines=["resident"],
                         widths=[1.0], modes=["train"], max_seconds=None, precision_pct=None, window_s=0.5, job=False)
    folder.mkdir(parents=True)
    for case in plan_cases(spec, data_cache="/c", dataset=dataset, run_id=folder.name):
        rate = rates[case.batch_size]
        RunFolder(folder).append(Result(case=case, images_per_s=rate, images_per_s_p25=0.98 * rate,
                                     images_per_s_p75=1.02 * rate, images_per_s_spread_pct=4.0,
                                     windows_s=[0.5, 0.5, 0.5],
                                     windows_images=[int(rate / 2 / case.batch_size) * case.batch_size] * 3,
                                     latency_ms_p50=1.0 if latency else None))
    return folder


def test_bench_compare_exits_1_on_a_regression_and_0_without(tmp_path: Path):
    base = _run(tmp_path / "base", {4: 1000.0, 128: 6000.0})
    slower = _run(tmp_path / "slower", {4: 1000.0, 128: 3000.0})
    proc = run_bench("compare", str(base), str(slower), "--threshold", "10%")
    assert proc.returncode == 1, proc.stderr
    assert "train/cpu/resident/b128/t2/w1 " in proc.stdout and "REGRESSION" in proc.stdout
    assert proc.stdout.rstrip().endswith("1 regression(s) in 2 Cases found in both runs (2 with images_per_s in both)")
    assert run_bench("compare", str(base), str(base)).returncode == 0
    assert run_bench("compare", str(base), str(slower), "--threshold", "60").returncode == 0


@pytest.mark.parametrize("args, message", [
    (["compare", "{base}", "{tmp}/missing"], "bench: compare: NEW_RUN: '{tmp}/missing' is not a folder"),
    (["compare", "{tmp}/empty", "{base}"], "bench: compare: BASELINE_RUN: '{tmp}/empty' holds no results.jsonl"),
    (["compare", "{base}", "{base}", "--metric", "images_per_sec"], "bench: --metric: invalid choice: "
                                                                   "'images_per_sec' (choose from 'images_per_s'"),
    (["compare", "{base}", "{base}", "--metric", "latency_ms_p50"], "bench: compare: --metric latency_ms_p50: "
                                                                   "no Case has it in both runs"),
    (["compare", "{base}", "{other}"], "bench: compare: the runs share no Case"),
    (["compare", "{base}", "{base}", "--threshold", "ten"], "bench: --threshold: 'ten' is not a percentage"),
    (["export", "{tmp}/missing"], "bench: export: RUN: '{tmp}/missing' is not a folder"),
    (["export", "{tmp}/empty"], "bench: export: RUN: '{tmp}/empty' holds no results.jsonl"),
    (["export", "{base}", "--format", "csv"], "bench: --format: invalid choice: 'csv'"),
    (["export", "{base}", "--out", "{tmp}/no/such/dir/x.json"], "bench: --out: '{tmp}/no/such/dir/x.json' cannot"),
])
def test_bad_input_to_compare_and_export_is_one_line_and_exit_2(tmp_path: Path, args, message):
    base = _run(tmp_path / "base", {4: 1000.0})
    other = _run(tmp_path / "other", {8: 1000.0})
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.jsonl").write_text("")
    fill = {"base": str(base), "other": str(other), "tmp": str(tmp_path)}
    proc = run_bench(*[a.format(**fill) for a in args])
    assert proc.returncode == 2
    assert proc.stderr.startswith(message.format(**fill)), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def _pytest_benchmark_cli() -> list[str]:
    script = Path(sys.executable).parent / "pytest-benchmark"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pytest_benchmark"]


def test_the_export_is_read_by_pytest_benchmark_compare(tmp_path: Path):
    base = _run(tmp_path / "base", {4: 1000.0, 128: 6000.0})
    proc = run_bench("export", str(base), "--format", "pytest-benchmark")
    assert proc.returncode == 0, proc.stderr
    out = base / "pytest-benchmark.json"
    doc = json.loads(out.read_text())
    b128 = next(b for b in doc["benchmarks"] if b["extra_info"]["batch_size"] == 128)
    # a round is a timed window; its time is the mean step: 0.5 s x 128 / 2944 images
    assert b128["stats"]["rounds"] == 3 and b128["stats"]["median"] == pytest.approx(0.5 * 128 / 2944)
    assert b128["group"] == "train batch 128" and b128["extra_info"]["images_per_s"] == 6000.0
    table = subprocess.run([*_pytest_benchmark_cli(), "compare", str(out), "--group-by=group",
                            "--columns=median,rounds", "--histogram", str(tmp_path / "hist")],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "Failed to load" not in table.stdout + table.stderr
    for name in ("train/cpu/resident/b4/t2/w1/r0", "train/cpu/resident/b128/t2/w1/r0", "benchmark 'train batch 128'"):
        assert name in table.stdout
    assert (tmp_path / "hist-train_batch_128.svg").stat().st_size > 0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="the slowdown confines the run to 1 of 2+ CPUs")
def test_a_real_slowdown_is_caught_the_same_sweep_beside_a_busy_loop_on_its_cpu(tmp_path: Path):
    """The same Cases (1 thread, confined to one CPU) measured alone and beside two busy loops pinned to that
    CPU: a third of it at most, against half or more alone (the kernel moves unpinned neighbours to the
    other CPUs), so 1.5x slower or more however busy the machine is. (Confining 2 threads to 1 CPU is no such proof: beside two CPU-bound neighbours the confined
    run was measured 1.3-1.7x *faster*, its threads no longer waiting on each other across preempted cores.)

    The machine is shared: a neighbour's burst during the baseline alone can slow it below the other run.
    So the runs are compared in ABBA order: baseline then slowed, and if that pair does not show the
    regression, slowed then baseline on fresh folders; a comparison that never catches it fails both."""
    # a step count, not seconds: beside busy neighbours a step can take 0.2 s, and a time budget would then
    # end before its first timed window; 10 warm-up steps cover the loops' start
    sweep = ["run", "--dataset", "synthetic", "--devices", "cpu", "--threads", "1", "--batch-sizes", "128",
             "--pipelines", "resident", "--modes", "train", "--no-report", "--no-job", "--epochs", "1",
             "--max-steps", "40", "--max-seconds", "0", "--warmup-steps", "10", "--window", "0.1", "--precision", "0"]
    cpu = min(os.sched_getaffinity(0))

    def on_one_cpu() -> None:
        os.sched_setaffinity(0, {cpu})

    def measure(name: str, slowed: bool) -> None:
        # the loops start when the Case does ("started"), not with the command: its set-up (torch's import, the
        # fork server's) then runs at full speed, and only the Case shares its CPU (the run took 3x longer)
        proc = subprocess.Popen([sys.executable, "-m", "bench", *sweep, "--out", str(tmp_path / name)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,  # one pipe: none fills
                                preexec_fn=on_one_cpu)
        limit = threading.Timer(240, proc.kill)  # a run that hangs ends here, and the loop below with it
        limit.start()
        loops, lines = [], []
        try:
            for line in proc.stdout:
                lines.append(line)
                if slowed and not loops and line.rstrip().endswith(": started"):
                    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=on_one_cpu)
                             for _ in range(2)]
            proc.wait()
        finally:
            limit.cancel()
            proc.kill()
            proc.wait()
            for loop in loops:
                loop.kill()
                loop.wait()
        assert proc.returncode == 0, "".join(lines)
        assert loops or not slowed, "".join(lines)

    outputs = []
    for attempt, order in enumerate([(False, True), (True, False)]):
        for slowed in order:
            measure(f"{'slowed' if slowed else 'base'}-{attempt}", slowed)
        proc = run_bench("compare", str(tmp_path / f"base-{attempt}"), str(tmp_path / f"slowed-{attempt}"))
        if proc.returncode == 1 and "train/cpu/resident/b128/t1/w1 " in proc.stdout and "REGRESSION" in proc.stdout:
            return
        outputs.append(proc.stdout + proc.stderr)
    pytest.fail("the run beside a busy loop was not reported as a regression:\n" + "\n".join(outputs))


def test_runs_that_differ_are_refused_naming_what_differs_and_force_compares_them(tmp_path: Path):
    base = _run(tmp_path / "base", {4: 1000.0, 128: 6000.0})
    real = _run(tmp_path / "real", {4: 1000.0, 128: 3000.0}, dataset="cifar10")
    proc = run_bench("compare", str(base), str(real))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("bench: compare: the runs are not comparable: data set: synthetic vs cifar10 "
                                   "(expected two runs of the same sweep on the same software; --force compares "
                                   "anyway)")
    forced = run_bench("compare", str(base), str(real), "--force")
    assert forced.returncode == 1, forced.stderr  # compared: batch 128 is half as fast
    assert forced.stdout.startswith("bench: comparing anyway (--force); the runs differ in: data set: synthetic "
                                    "vs cifar10\n")
    assert "REGRESSION" in forced.stdout


def test_budget_torch_devices_and_case_settings_must_match():
    from bench.analysis.compare import differences

    def frame(**kw):
        row = {"key": "k", "dataset": "synthetic", "epochs": 2, "max_steps": None, "max_seconds": 12.0,
               "device": "cpu", "lr": 0.001, "warmup_steps": 10}
        return pd.DataFrame([{**row, **kw}])

    env = {"torch": "2.14.1"}
    assert differences(frame(), frame(), env, env) == []
    assert differences(frame(), frame(max_seconds=4.0), env, env) == ["budget max_seconds: 12 vs 4"]
    assert differences(frame(), frame(), env, {"torch": "2.15.0"}) == ["torch: 2.14.1 vs 2.15.0"]
    assert differences(frame(), frame(device="cuda:0", key="k2"), env, env) == ["devices: cpu vs cuda:0"]
    assert differences(frame(), frame(lr=0.01, warmup_steps=5), env, env) == [
        "Case setting lr: 0.001 vs 0.01 (e.g. k)", "Case setting warmup_steps: 10 vs 5 (e.g. k)"]
    assert differences(frame(), frame(), {}, env) == []  # a run without environment.json: torch unknown
    pinned = "default: glibc mmap threshold 128 KiB, trim threshold 128 KiB, pinned"
    assert differences(frame(malloc_state=pinned), frame(malloc_state=pinned), env, env) == []
    assert differences(frame(), frame(malloc_state=pinned), env, env) == [  # a run from before states were pinned
        f"allocator state: not recorded (unpinned) vs {pinned}"]
