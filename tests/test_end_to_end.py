"""`python -m bench run` as a user runs it, reading back the files it wrote."""
from __future__ import annotations

import json
import shutil
import re
from pathlib import Path

import pandas as pd
import pytest

from bench.report.build import number
from bench.result import SCHEMA_VERSION
from conftest import run_bench

# a fixed step count (no precision target: a steady Case could stop before its 30 steps)
TINY = ["--batch-sizes", "4,64", "--threads", "1", "--epochs", "1", "--max-steps", "30", "--warmup-steps", "3",
        "--precision", "0", "--window", "0.05", "--latency-batches", "5"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("e2e") / "run"
    proc = run_bench("run", "--dataset", "synthetic", "--devices", "cpu,cuda", *TINY, "--out", str(out))
    return out, proc


def test_the_sweep_writes_results_environment_and_csv(tiny_run):
    out, proc = tiny_run
    assert proc.returncode == 0, proc.stderr
    lines = (out / "results.jsonl").read_text().splitlines()
    results = pd.read_json(out / "results.jsonl", lines=True)
    assert len(lines) == len(results)
    [job] = results[(results["mode"] == "job") & (results.device == "cpu")].to_dict("records")  # the tutorial's job
    assert job["status"] == "ok" and job["job_projected"] and job["steps"] == 30 and job["job_s"] > job["train_s"]
    cpu = results[(results.device == "cpu") & ~results["mode"].isin(["job", "input"])]
    assert len(cpu) == 2 * 2 * 2  # batch sizes x pipelines x modes
    inputs = results[results["mode"] == "input"]  # the tutorial's DataLoader alone, at each batch size
    assert inputs.key.tolist() == ["input/cpu/tutorial/b4/tauto/w1/r0", "input/cpu/tutorial/b64/tauto/w1/r0"]
    assert set(inputs.status) == {"ok"} and (inputs.images_per_s > 0).all()
    assert set(cpu.status) == {"ok"}, cpu.error.tolist()
    assert (cpu.dataset == "synthetic").all() and (cpu.run_id == "run").all() and (cpu.schema_version == SCHEMA_VERSION).all()
    assert (cpu.images_per_s > 0).all() and (cpu.steps == 30).all() and (cpu.threads_used == 1).all()
    assert (cpu.images_per_s_mean > 0).all()  # total over total, beside the median
    # every Case ran pinned in the default allocator state (glibc here), the job in the one its script runs in
    assert (cpu.malloc_state == "default: glibc mmap threshold 128 KiB, trim threshold 128 KiB, pinned").all()
    assert job["malloc_state"] == "tuned: glibc mmap threshold 32 MiB, trim threshold never, pinned"
    train = cpu[cpu["mode"] == "train"]
    assert train.test_accuracy_pct.notna().all() and train.data_wait_pct.notna().all()
    assert cpu[cpu["mode"] == "infer"].latency_ms_p50.notna().all()
    csv = pd.read_csv(out / "results.csv")
    assert sorted(csv.key) == sorted(results.key)
    env = json.loads((out / "environment.json").read_text())
    assert env["dataset"] == "synthetic" and env["cpu_logical_cores"] >= 1 and env["torch"]
    assert env["spec"]["batch_sizes"] == [4, 64]
    assert env["malloc_states"]["tuned"] == "tuned: glibc mmap threshold 32 MiB, trim threshold never, pinned"
    assert ("Allocator state, pinned in every Case before it allocated (bench/measuring/allocator.py): default: glibc "
            "mmap threshold 128 KiB, trim threshold 128 KiB, pinned; the tutorial's job in tuned: glibc mmap threshold "
            "32 MiB, trim threshold never, pinned, the state its own script's glibc reaches") in (out / "report.md").read_text()
    assert re.search(r"train\s+cpu\s+resident\s+eager\s+64\s+1\s+1\s+1\s+ok\s+\d+", proc.stdout)  # the summary table
    report = (out / "report.md").read_text()
    assert report.startswith("# Does a GPU help the CIFAR-10 tutorial CNN?\n\n**") and (out / "report.html").exists()
    # no GPU here: after the job, the first answer is the most a GPU could give, with the figures it rests on
    first = report.split("\n- ")[1]
    assert re.match(r"Only cpu was measured, so this run cannot say how much a GPU helps, but it bounds it: at the "
                    r"tutorial's own settings \(tutorial pipeline\), even an infinitely fast GPU could make the "
                    r"tutorial's training at most [\d.]+x faster on this machine: its DataLoader alone delivers "
                    r"[\d,]+ images/s \(batch 4, [\d,]+-[\d,]+ at 95%\) against the CPU's [\d,]+ training", first), first
    assert env["ceilings"]["matmul_gflops"]["cpu"]["fp32"] > 0 and env["model_flops_per_image"]["1"]["train_step"] > 0


def test_the_run_records_its_ceilings_by_precision_from_a_worker_and_the_report_names_them(tmp_path: Path):
    out = tmp_path / "run"
    proc = run_bench("run", "--quick", "--dataset", "synthetic", "--devices", "cpu", "--batch-sizes", "4", "--modes",
                     "train", "--pipelines", "resident", "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    env = json.loads((out / "environment.json").read_text())
    ceilings = env["ceilings"]
    assert ceilings["worker_error"] is None and ceilings["matmul_missing"] == {}
    assert set(ceilings["matmul_gflops"]) == {"cpu"} and set(ceilings["matmul_gflops"]["cpu"]) == {"fp32"}
    assert ceilings["matmul_gflops"]["cpu"]["fp32"] > 0 and ceilings["matmul_n"] == {"cpu": {"fp32": 1024}}
    assert isinstance(ceilings["worker_pid"], int) and env["float32_matmul_precision"] == "highest"
    assert "matmul_gflops" not in env  # the flat format of older runs
    assert "not measured" not in proc.stderr
    report = (out / "report.md").read_text()
    rate = ceilings["matmul_gflops"]["cpu"]["fp32"]
    assert re.search(r"Compute \(cpu\): the fastest fp32 training Case does [\d.]+ GFLOP/s, \d+% of this device's "
                     r"measured fp32 matmul ceiling \([\d,.]+ GFLOP/s; batch 4, resident pipeline\)\.", report)
    assert f"| cpu | fp32 | {number(rate)} | 1024 | - |" in report  # as people read it: 3 significant figures


def test_an_unavailable_device_beside_cpu_is_skipped_and_recorded(tiny_run):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out, proc = tiny_run
    assert "WARNING: skipping device cuda:0: CUDA is not available" in proc.stderr
    results = pd.read_json(out / "results.jsonl", lines=True)
    cuda = results[results.device == "cuda:0"]  # `cuda` is indexed at the spec stage
    assert len(cuda) == 2 * 2 * 2 + 1 and set(cuda.status) == {"skipped"}  # and the tutorial's job
    assert json.loads((out / "environment.json").read_text())["skipped_devices"] == {
        "cuda:0": "CUDA is not available on this machine"}


def test_resume_reruns_only_cases_not_ok(tiny_run, tmp_path: Path):
    out, _ = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    target = next(r for r in records if r["device"] == "cpu" and r["status"] == "ok")
    records[records.index(target)] = {**target, "status": "failed", "error": "boom"}
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"cut short')
    shutil.copy(out / "environment.json", run)  # the options the Cases were planned with, which a resume holds to
    proc = run_bench("run", "--dataset", "synthetic", "--devices", "cpu,cuda", *TINY, "--out", str(run), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "1 Cases" in proc.stdout and "already done" in proc.stdout
    final = pd.read_csv(run / "results.csv")
    assert len(final) == len(records)
    assert final.set_index("key").loc[target["key"], "status"] == "ok"


def test_real_cifar10_mini_through_the_cli(mini: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_bench("run", "--data-dir", str(mini), "--no-verify", "--modes", "train", "--pipelines",
                     "tutorial", *TINY, "--out", str(out), "--no-report")
    assert proc.returncode == 0, proc.stderr
    results = pd.read_json(out / "results.jsonl", lines=True)
    assert set(results.status) == {"ok"} and set(results.dataset) == {"cifar10-unverified"}
    assert set(results.train_images) == {820} and set(results.test_images) == {164}
    assert "cifar10-unverified" in proc.stdout and not (out / "report.md").exists()


def test_dry_run_plans_without_running(tmp_path: Path):
    proc = run_bench("run", "--dry-run", "--dataset", "synthetic", "--quick", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0
    assert "train/cpu/tutorial/b4/t1/w1/r0" in proc.stdout and "Cases on synthetic data; estimated duration about" \
        in proc.stdout
    assert not (tmp_path / "run").exists()
    plan = run_bench("plan", "--batch-sizes", "4")  # no --dataset: the default, named as what it does
    assert plan.returncode == 0 and "Cases on auto-detected data; estimated duration" in plan.stdout, plan.stdout


def test_an_interrupted_sweep_keeps_finished_cases_and_leaves_no_process(tmp_path: Path):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--dataset", "synthetic", "--devices", "cpu",
                             "--batch-sizes", "4,8,16", "--threads", "1", "--modes", "train", "--pipelines",
                             "tutorial", "--max-seconds", "0", "--precision", "0", "--epochs", "5", "--max-steps", "40",
                             "--warmup-steps", "3", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            # as at a terminal: a suite started in the background (`pytest &`) inherits Ctrl-C ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    tree: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for one finished Case and the next one running
        tree |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        results = out / "results.jsonl"
        if results.exists() and results.read_text().count("\n") >= 1 and len(tree) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "--resume" in err
    assert "Traceback" not in err
    kept = pd.read_json(out / "results.jsonl", lines=True)
    assert len(kept) >= 1 and set(kept.status) == {"ok"}
    time.sleep(1)
    assert [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"] == []
