"""The CUDA path of every stage, run on this CPU under the strict fake-CUDA layer (tests/fake_cuda.py).

The fake first proves it fails the way the real calls fail; then a CUDA Case goes from the spec
through the plan to the worker for both pipelines, both modes and every step variant, and a
data-parallel CUDA Case through the elastic launcher with NCCL chosen, with the order of the
CUDA calls checked where a GPU needs it.
"""
from __future__ import annotations

import json
import re
import multiprocessing as mp
import os
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
import torch

import bench
from bench import cli
from bench.result import Result
from bench.running import worker
from bench.schema import Case
from bench.store.run_folder import RunFolder
from bench.sweep.plan import plan_cases
from bench.sweep.spec import with_defaults
from cnn import data
from conftest import ROOT
from fake_cuda import BAD_FORK, FAKE_COMPILE, FakeCuda, FakeCudaError, readbacks_inside_windows, site_env


@pytest.fixture
def fake(tmp_path):
    fake = FakeCuda(1, log=tmp_path / "cuda-calls.jsonl", watch_readbacks=True).install()
    yield fake
    fake.uninstall()


@pytest.fixture
def fake2(tmp_path):
    fake = FakeCuda(2, log=tmp_path / "cuda-calls.jsonl", watch_readbacks=True).install()
    yield fake
    fake.uninstall()


@pytest.fixture(scope="module")
def small():
    """200 training images: at batch 16, 12 full batches and a partial one of 8 an epoch."""
    return data.prepare_synthetic(n_train=200, n_test=64)


def _case(small, **kw) -> Case:
    base = dict(mode="train", device="cuda:0", pipeline="resident", batch_size=16, threads=None, width=1.0,
                repeat=0, epochs=1, max_steps=None, max_seconds=None, time_limit_s=120.0, lr=0.001, seed=0,
                target_accuracy_pct=50.0, num_workers=1, warmup_steps=3, window_s=0.0, latency_batches=3,
                dataset="synthetic", data_cache=str(small.cache_dir))
    return Case(**{**base, **kw})


# --------------------------------------------------------------------------- the fake fails as CUDA does


def test_set_device_refuses_an_unindexed_device_as_torch_does(fake):
    with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
        torch.cuda.set_device(torch.device("cuda"))
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.cuda.set_device(torch.device("cuda:1"))
    with pytest.raises(ValueError, match="Expected a cuda device"):
        torch.cuda.set_device(torch.device("cpu"))
    with pytest.raises(FakeCudaError, match="unindexed CUDA device"):
        torch.cuda.reset_peak_memory_stats(torch.device("cuda"))
    torch.cuda.set_device(torch.device("cuda:0"))
    assert fake.names()[-1] == "set_device"


def test_an_event_is_readable_only_when_both_were_recorded_and_synchronised(fake):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    with pytest.raises(RuntimeError, match="Both events must be recorded"):
        start.elapsed_time(end)
    end.record()
    with pytest.raises(RuntimeError, match="device not ready"):
        start.elapsed_time(end)
    torch.cuda.synchronize(torch.device("cuda:0"))
    assert start.elapsed_time(end) >= 0
    untimed = torch.cuda.Event()
    untimed.record()
    with pytest.raises(RuntimeError, match="enable_timing=True"):
        untimed.elapsed_time(end)


def test_graph_capture_is_refused_on_the_default_stream_and_cannot_synchronise(fake):
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="non-default stream"):
        graph.capture_begin()
    with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            torch.cuda.synchronize(torch.device("cuda:0"))
    with pytest.raises(RuntimeError, match="before it was captured"):
        torch.cuda.CUDAGraph().replay()


def _child_sets_device(conn) -> None:
    try:
        torch.cuda.set_device(0)
        conn.send("ok")
    except RuntimeError as e:
        conn.send(str(e))


@pytest.mark.parametrize("nvml, poisoned", [(False, True), (True, False)])
def test_a_child_forked_after_cuda_was_initialised_cannot_use_cuda(fake, monkeypatch, nvml, poisoned):
    if nvml:
        monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    else:
        monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK", raising=False)
    assert torch.accelerator.is_available()  # what the elastic launcher asks before forking ranks
    receiver, sender = mp.get_context("fork").Pipe(duplex=False)
    child = mp.get_context("fork").Process(target=_child_sets_device, args=(sender,))
    child.start()
    answer = receiver.recv()
    child.join()
    assert (answer == BAD_FORK) is poisoned and (answer == "ok") is not poisoned


# --------------------------------------------------------------------------- single-process CUDA Cases


def _first(calls: list[dict], name: str) -> int:
    return next(c["seq"] for c in calls if c["call"] == name)


def _check_cuda_order(result: Result, fake: FakeCuda, device: int = 0) -> list[dict]:
    assert result.status == "ok", result.error
    calls = fake.calls
    first = next(i for i, c in enumerate(calls) if c["call"] == "set_device")
    assert calls[first]["device"] == device  # before any allocation, any event, any stream
    assert {c["call"] for c in calls[:first]} <= {"device_count", "is_available"}
    placements = [c for c in calls if c["call"] == "placement"]
    assert placements and all(c["device"] == device for c in placements)
    assert _first(calls, "reset_peak_memory_stats") < _first(calls, "event.record")
    assert not [c for c in calls if c["call"] == "event.record" and c["device"] != device]
    assert result.cudnn_benchmark is True and result.gpu_monitor  # a CUDA Result says what the GPU did
    assert result.images_per_s > 0 and result.windows_s
    return calls


@pytest.mark.parametrize("pipeline", ["resident", "tutorial"])
@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("variant", [{}, {"amp": "bf16"}, {"memory_format": "channels_last"}])
def test_a_cuda_case_runs_end_to_end_in_the_order_a_gpu_needs(fake, small, pipeline, mode, variant):
    result = worker.run_case(_case(small, pipeline=pipeline, mode=mode, **variant))
    calls = _check_cuda_order(result, fake)
    if pipeline == "resident":
        assert readbacks_inside_windows(calls) == []  # nothing on the GPU is read back inside a timed window
        assert result.data_wait_pct is None  # a wait there would be the launch queue, not input
    else:
        pins = [c for c in fake.all_calls() if c["call"] == "pin_memory"]
        assert pins and all(c["device_set"] and c["current"] == 0 for c in pins)
        assert result.data_wait_pct is not None
    if mode == "infer":
        assert result.latency_ms_p50 is not None


def test_the_partial_last_batch_a_new_shape_for_cudnn_is_kept_out_of_every_window(fake, small):
    result = worker.run_case(_case(small))
    # 200 images at batch 16: 12 full steps (3 of them warm-up) and one of 8 images
    assert result.steps == 13 and result.new_shape_steps == 1
    assert sum(result.windows_images) == 9 * 16


def test_a_graphed_step_is_captured_off_the_default_stream_and_timed_on_the_stream_it_replays_on(fake, small):
    result = worker.run_case(_case(small, cuda_graphs=True))
    calls = _check_cuda_order(result, fake)
    begin = next(c for c in calls if c["call"] == "graph.capture_begin")
    assert begin["stream"] != 0
    replays = [c for c in calls if c["call"] == "graph.replay"]
    assert len(replays) == 12  # every full batch; the partial one runs eagerly
    loop_records = [c for c in calls if c["call"] == "event.record" and c["seq"] > begin["seq"]]
    assert {c["stream"] for c in replays} == {c["stream"] for c in loop_records} == {0}
    assert readbacks_inside_windows(calls) == []


def test_a_second_gpu_is_used_for_everything_including_the_pin_memory_thread(fake2, small):
    result = worker.run_case(_case(small, device="cuda:1", pipeline="tutorial"))
    _check_cuda_order(result, fake2, device=1)
    pins = [c for c in fake2.all_calls() if c["call"] == "pin_memory"]
    assert pins and {c["current"] for c in pins} == {1}
    assert {c["device"] for c in fake2.calls if c["call"] in ("synchronize", "max_memory_allocated")} == {1}


def test_cuda_from_the_spec_names_cuda_0_and_its_case_runs(fake, small):
    """The first-run defect: a bare `cuda` reached torch.cuda.set_device and every CUDA Case failed."""
    spec = bench.sweep_spec(devices=["cuda"], batch_sizes=[16], pipelines=["resident"], modes=["train"],
                            dataset="synthetic", epochs=1)
    assert spec.devices == ["cuda:0"] and spec.skipped_devices == {}
    cases = plan_cases(spec, str(small.cache_dir), "synthetic")
    job, case = cases[0], next(c for c in cases if c.mode != "job")
    assert case.device == "cuda:0" and job.mode == "job"
    result = worker.run_case(replace(case, max_seconds=None, warmup_steps=3, window_s=0.0))
    _check_cuda_order(result, fake)


def test_the_tutorials_job_on_cuda_runs_as_its_script_does(fake, small):
    """The job on a GPU: its device made current before anything is placed, cuDNN's autotuning left off (the
    tutorial's script does not turn it on), every pass closed with a synchronise of its device."""
    spec = bench.sweep_spec(devices=["cuda"], batch_sizes=[16], pipelines=["resident"], modes=["train"],
                            dataset="synthetic", epochs=1)
    job = plan_cases(spec, str(small.cache_dir), "synthetic")[0]
    result = worker.run_case(replace(job, max_steps=8))
    assert result.status == "ok", result.error
    assert result.cudnn_benchmark is False and result.job_projected is True and result.steps == 8
    calls = fake.calls
    first = next(i for i, c in enumerate(calls) if c["call"] == "set_device")
    assert calls[first]["device"] == 0 and {c["call"] for c in calls[:first]} <= {"device_count", "is_available"}
    assert all(c["device"] == 0 for c in calls if c["call"] in ("placement", "synchronize"))
    assert sum(c["call"] == "synchronize" for c in calls) >= 2 * 4  # each pass opened and closed on device time


def test_a_case_with_a_bare_cuda_fails_as_it_would_on_a_gpu(fake, small):
    result = worker.run_case(_case(small, device="cuda"))
    assert result.status == "failed"
    assert "Expected a torch.device with a specified index" in result.error


def test_results_written_with_a_bare_cuda_load_as_cuda_0(small, tmp_path):
    folder = RunFolder(tmp_path)
    record = {**Result(case=_case(small, device="cuda")).to_dict(), "schema_version": 1}  # as version 1 wrote it
    folder.results_path.write_text(json.dumps(record) + "\n")
    assert '"key": "train/cuda/' in folder.results_path.read_text()
    [loaded] = folder.results()  # so --resume matches the Cases of an older run folder
    assert loaded.case.device == "cuda:0" and loaded.case.key.startswith("train/cuda:0/")


# --------------------------------------------------------------------------- data-parallel CUDA Cases


def _run_case_in_its_own_process(case: Case, tmp_path, devices: int) -> tuple[Result, list[dict]]:
    """As on a real machine: the Case in a fresh process (`python -m bench.running.worker`, as a cluster runs
    it), the fake installed there at start-up, the launcher's ranks forked from it."""
    log = tmp_path / "case-calls.jsonl"
    (tmp_path / "case.json").write_text(json.dumps(asdict(case)))
    proc = subprocess.run([sys.executable, "-m", "bench.running.worker", str(tmp_path / "case.json")], cwd=ROOT,
                          env=site_env(devices, log, readbacks=True), capture_output=True, text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stderr[-3000:]
    return Result.from_dict(json.loads(lines[-1])), [json.loads(x) for x in log.read_text().splitlines()]


def test_a_data_parallel_cuda_case_gives_each_rank_its_own_gpu_with_nccl(small, tmp_path):
    spec = with_defaults(devices=["cuda:0"], batch_sizes=[8], threads=[1], pipelines=["resident"], widths=[1.0],
                         modes=["train"], epochs=1, max_steps=20, warmup_steps=3, window_s=0.01, world_sizes=[2],
                         max_seconds=None, precision_pct=None, job=False)
    case = plan_cases(spec, str(small.cache_dir), "synthetic")[0]
    assert case.world_size == 2
    result, calls = _run_case_in_its_own_process(case, tmp_path, devices=2)
    assert result.status == "ok", result.error
    assert result.backend == "nccl" and len(set(result.rank_param_digests)) == 1
    assert result.cudnn_benchmark is True and result.gpu_monitor
    ranks = {}
    for c in calls:
        ranks.setdefault(c["pid"], []).append(c)
    rank_calls = [cs for cs in ranks.values() if any(c["call"] == "init_process_group" for c in cs)]
    assert len(rank_calls) == 2
    devices_set = set()
    for cs in rank_calls:
        main = [c for c in cs if c["thread"] == "MainThread"]
        first = next(i for i, c in enumerate(main) if c["call"] == "set_device")
        assert {c["call"] for c in main[:first]} <= {"device_count"}  # set before the group and any allocation
        device = main[first]["device"]
        devices_set.add(device)
        group = next(c for c in main if c["call"] == "init_process_group")
        assert group["backend"] == "nccl" and group["current"] == device
        assert next(c for c in main if c["call"] == "DistributedDataParallel")["device_ids"] == [device]
        assert {c["device"] for c in main if c["call"] in ("event.record", "synchronize")} == {device}
        assert readbacks_inside_windows(main) == []  # the stop vote waits between windows
    assert devices_set == {0, 1}


@pytest.mark.parametrize("visible, local_rank, expected", [(2, 1, 1), (1, 1, 0), (4, 5, 1)])
def test_a_rank_takes_the_gpu_of_its_local_rank_among_those_it_can_see(small, tmp_path, visible, local_rank, expected):
    from bench.measuring import ddp

    fake = FakeCuda(visible).install()
    try:
        device = ddp.rank_device(_case(small, world_size=2), local_rank)
    finally:
        fake.uninstall()
    assert device == torch.device("cuda", expected)
    assert ddp.rank_device(_case(small, device="cpu", world_size=2), local_rank) == torch.device("cpu")


def test_cuda_n_cannot_name_the_ranks_of_a_data_parallel_case():
    args = cli.get_parser().parse_args(["run", "--devices", "cuda:1", "--world-sizes", "1,2"])
    with pytest.raises(cli.CliError, match=r"^--world-sizes: a data-parallel Case's ranks use cuda:0..cuda:N-1"):
        cli.build_spec(args, n_cuda=2)


def test_the_fake_is_gone_after_uninstall(small):
    fake = FakeCuda(1).install()
    fake.uninstall()
    assert torch.cuda.is_available() is (torch.cuda.device_count() > 0)
    from bench.measuring import ddp, devices, training
    assert devices.placement(torch.device("cpu")) == torch.device("cpu")
    assert os.environ.get("BENCH_FAKE_CUDA") is None
    assert not [f for f in sys.meta_path if type(f).__name__ == "_PatchAfterImport"]
    assert training.compile_unavailable.__module__ == "bench.measuring.training"
    assert ddp.DistributedDataParallel is torch.nn.parallel.DistributedDataParallel


# --------------------------------------------------------------------------- the GPU machine's validation


def test_gpu_validate_runs_check_sweep_and_truth_check_into_one_folder(tmp_path):
    """tests/perf/gpu_validate.sh under the fake (2 GPUs) in every process it starts: bench check and
    the sweep go through the runner's fork server on the CUDA path. The truth check's minimal loop
    is independent of the harness, so it really asks for a GPU and fails here: the script must say
    so and still have run every other step."""
    out = tmp_path / "validate"
    env = site_env(2, tmp_path / "calls.jsonl")
    env.update(PYTHON=sys.executable, BENCH_CHECK_ARGS="--devices cuda",  # the CPU rows: tests/test_check.py
               BENCH_SWEEP_ARGS="--quick --batch-sizes 4 --modes train --threads 1",
               TRUTH_ARGS="--steps 20 --rounds 1 --batch-sizes 4")
    proc = subprocess.run(["bash", str(ROOT / "tests/perf/gpu_validate.sh"), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for step in ("env", "check", "sweep"):
        assert re.search(rf"== {step}: .*\n   ok in \d+ s", summary), summary
    assert re.search(r"== truth: .*\n   FAILED with exit status 1 .*the minimal loop failed on cuda:0", summary)
    check = (out / "check.log").read_text()
    cuda_rows = [line for line in check.splitlines() if line.startswith("cuda:0")]
    compiled = [row for row in cuda_rows if "torch.compile" in row]
    assert len(compiled) == 1 and f"skipped {FAKE_COMPILE}" in compiled[0], check
    assert len(cuda_rows) == 17 and all(" ok " in row for row in cuda_rows if row not in compiled), check
    assert "CUDA graphs   ok" in check and "0 failed" in check
    results = [json.loads(x) for x in (out / "sweep" / "results.jsonl").read_text().splitlines()]
    cuda = [r for r in results if r["device"] == "cuda:0"]
    assert len(cuda) == 2 + 1 + 1 and all(r["status"] == "ok" for r in cuda), [r["error"] for r in cuda]
    assert [r["key"] for r in cuda if r["mode"] == "job"] == ["job/cuda:0/tutorial/b4/tauto/w1/r0/malloc-tuned"]  # the asker's job
    assert sum(r["cuda_graphs"] for r in cuda) == 1
    assert {r["device"] for r in results} == {"cpu", "cuda:0"}
    assert "== verdict (sweep/report.md)" in summary and (out / "sweep" / "report.html").exists()
    assert json.loads((out / "env.log").read_text())["gpus"][0]["name"] == "NVIDIA Fake GPU"
