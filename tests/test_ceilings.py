"""bench/running/ceilings.py: the matmul ceilings and model FLOPs are measured in a worker, never in the caller,
each ceiling names its precision, and a worker that fails or overruns is a recorded reason, not a crash."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

import bench
from bench.analysis import roofline
from bench.report import build
from bench.result import Result
from bench.running import ceilings, environment
from bench.store.run_folder import RunFolder
from bench.sweep.plan import plan_cases
from bench.sweep.spec import with_defaults

ROOT = Path(__file__).resolve().parents[1]


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_ceilings_are_measured_in_a_worker_process_and_name_their_precision():
    record = ceilings.measure_in_worker(["cpu"], [1.0, 2.0], ["off", "bf16"])
    c = record["ceilings"]
    assert isinstance(c["worker_pid"], int) and c["worker_pid"] != os.getpid() and _gone(c["worker_pid"])
    assert c["worker_error"] is None and c["matmul_missing"] == {}
    assert set(c["matmul_gflops"]["cpu"]) == {"fp32", "bf16"}  # no tf32 on a CPU; bf16 as the sweep runs it
    assert all(rate > 0 for rate in c["matmul_gflops"]["cpu"].values())
    assert c["matmul_n"] == {"cpu": {"fp32": 1024, "bf16": 512}}
    assert record["float32_matmul_precision"] == "highest"  # what every Case's process starts with
    flops = record["model_flops_per_image"]
    assert 0 < flops["1"]["forward"] < flops["1"]["train_step"] < flops["2"]["train_step"]
    if not torch.cuda.is_available():
        assert record["gpus"] == [] and record["cudnn"] == torch.backends.cudnn.version()


def test_precisions_follow_the_device_and_the_sweeps_amp():
    assert ceilings.precisions("cpu", ["off"]) == ["fp32"]
    assert ceilings.precisions("cuda:0", ["off"]) == ["fp32", "tf32"]
    assert ceilings.precisions("cuda:1", ["off", "bf16"]) == ["fp32", "tf32", "bf16"]


def test_the_orchestrator_never_initialises_cuda(monkeypatch):
    """The parent sees CUDA devices (as on a GPU machine) but any call that would initialise CUDA fails
    the test; the old parent read the GPUs' properties and timed the matmul itself."""
    import torchvision  # noqa: F401  (before the stand-ins: importing it indexes torch.cuda's functions)

    def initialises_cuda(name: str):
        def call(*args, **kwargs):
            raise AssertionError(f"the orchestrating process called torch.cuda.{name}")
        return call

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name in ("_lazy_init", "init", "get_device_properties", "synchronize", "set_device", "current_device",
                 "Event", "mem_get_info"):
        monkeypatch.setattr(torch.cuda, name, initialises_cuda(name))
    env = environment.capture(query_cuda=False)
    env.update(ceilings.measure_in_worker(["cpu", "cuda:0"], [1.0], ["off"]))
    assert env["ceilings"]["matmul_gflops"]["cpu"]["fp32"] > 0
    cuda = {**env["ceilings"]["matmul_gflops"].get("cuda:0", {}), **env["ceilings"]["matmul_missing"].get("cuda:0", {})}
    assert set(cuda) == {"fp32", "tf32"}  # measured in the worker, or recorded there with why not


def test_a_failing_worker_leaves_each_ceiling_missing_with_the_reason(monkeypatch):
    monkeypatch.setattr(ceilings, "matmul_n", lambda device, precision: -1)
    c = ceilings.measure_in_worker(["cpu"], [1.0], ["off", "bf16"])["ceilings"]
    assert c["matmul_gflops"] == {}
    assert set(c["matmul_missing"]["cpu"]) == {"fp32", "bf16"}
    assert all(why.startswith("RuntimeError: ") and "negative dimension" in why
               for why in c["matmul_missing"]["cpu"].values())


def test_a_worker_over_its_time_limit_is_killed_and_what_it_sent_is_kept(monkeypatch):
    monkeypatch.setattr(ceilings, "matmul_n", lambda device, precision: 6000)  # minutes of products on a CPU
    record = ceilings.measure_in_worker(["cpu"], [1.0], ["off"], limit_s=3.0)
    c = record["ceilings"]
    assert c["worker_error"] == "the ceiling worker exceeded its time limit of 3 s"
    assert c["matmul_missing"] == {"cpu": {"fp32": "the ceiling worker exceeded its time limit of 3 s"}}
    assert _gone(c["worker_pid"])
    assert record["model_flops_per_image"]["1"]["train_step"] > 0  # sent before the products began


def _run_folder(folder: Path, env: dict, amp: list[str]) -> Path:
    folder.mkdir()
    spec = with_defaults(devices=["cpu"], batch_sizes=[32], threads=[1], pipelines=["resident"], widths=[1.0],
                         modes=["train"], amp=amp, max_seconds=None, precision_pct=None, window_s=0.5, job=False)
    for case in plan_cases(spec, "/c", "synthetic", folder.name):
        rate = 1000.0 if case.amp == "off" else 2000.0
        RunFolder(folder).append(Result(case=case, images_per_s=rate, images_per_s_p25=rate, images_per_s_p75=rate,
                                     images_per_s_spread_pct=0.0))
    (folder / "environment.json").write_text(json.dumps(env))
    return folder


def test_an_old_environment_loads_as_fp32_ceilings(tmp_path: Path):
    old = {"matmul_gflops": {"cpu": 123.4, "cuda": 5000.0}, "matmul_n": {"cpu": 1024, "cuda": 8192},
           "model_flops_per_image": {"1": {"forward": 1e6, "train_step": 3e6}}}
    run = RunFolder(_run_folder(tmp_path / "old", old, ["off"])).load()
    assert run.environment["ceilings"]["matmul_gflops"] == {"cpu": {"fp32": 123.4}, "cuda:0": {"fp32": 5000.0}}
    assert run.environment["ceilings"]["matmul_n"] == {"cpu": {"fp32": 1024}, "cuda:0": {"fp32": 8192}}
    assert "matmul_gflops" not in run.environment and run.environment["float32_matmul_precision"] == "highest"
    gf = roofline.achieved_gflops(build.combined_frame([run]))
    assert gf["ceiling_precision"].tolist() == ["fp32"] and gf["pct_of_ceiling"].iloc[0] == pytest.approx(
        100 * 3e6 * 1000 / 1e9 / 123.4)
    sample = RunFolder(ROOT / "reports" / "sample-cpu").load().environment  # the committed sample, this layout
    assert list(sample["ceilings"]["matmul_gflops"]) == ["cpu"] and sample["ceilings"]["matmul_gflops"]["cpu"]["fp32"] > 0


def test_a_bf16_case_against_an_old_run_with_only_fp32_says_its_ceiling_is_unknown(tmp_path: Path):
    old = {"matmul_gflops": {"cpu": 100.0}, "model_flops_per_image": {"1": {"forward": 1e6, "train_step": 3e6}}}
    folder = _run_folder(tmp_path / "old", old, ["off", "bf16"])
    md = build.build_report([folder], folder).markdown.read_text()
    assert "the fastest fp32 training Case does 3.0 GFLOP/s, 3% of this device's measured fp32 matmul ceiling" in md
    assert ("the fastest bf16 training Case does 6.0 GFLOP/s, against an unknown bf16 matmul ceiling "
            "(not measured in this run)") in md
    assert "6% of" not in md  # never against the fp32 ceiling


def test_a_sweep_goes_on_when_its_ceiling_worker_fails_and_the_report_says_the_ceiling_is_unknown(
        tmp_path: Path, monkeypatch):
    monkeypatch.setattr(ceilings, "matmul_n", lambda device, precision: -1)
    spec = bench.sweep_spec(devices=["cpu"], batch_sizes=[8], threads=[1], pipelines=["resident"], modes=["train"],
                            dataset="synthetic", max_steps=20, warmup_steps=5, window=0.05)
    warnings: list[str] = []
    results = bench.run_sweep(spec, out=tmp_path / "run", warn=warnings.append)
    assert set(results["status"]) == {"ok"}
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["ceilings"]["matmul_gflops"] == {}
    assert "negative dimension" in env["ceilings"]["matmul_missing"]["cpu"]["fp32"]
    assert env["ceilings"]["worker_pid"] != os.getpid()
    assert any(w.startswith("the fp32 matmul ceiling of cpu was not measured (RuntimeError: ") for w in warnings)
    md = bench.make_report(tmp_path / "run").markdown.read_text()
    assert "against an unknown fp32 matmul ceiling (RuntimeError: " in md
    assert "| cpu | fp32 | - | -1 | RuntimeError: " in md  # the ceilings table says why


def test_the_environment_names_torchvisions_build_without_importing_it():
    import torchvision

    code = ("import sys; from bench.running import environment; env = environment.capture(query_cuda=False); "
            "print(env['torchvision'], 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == [torchvision.__version__, "False"]
