"""bench/measuring/ddp.py: data-parallel Cases under PyTorch's elastic launcher, with gloo on this CPU."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import torch

from bench import cli
from bench.measuring.ddp import param_digest
from bench.running import runner
from bench.schema import SweepSpec
from bench.sweep.plan import plan_cases
from bench.sweep.spec import with_defaults
from cnn import data
from cnn.model import Net
from conftest import ROOT, run_bench


def _spec(**kw) -> SweepSpec:
    base = dict(devices=["cpu"], batch_sizes=[8], threads=[1], pipelines=["resident"], widths=[1.0], modes=["train"],
                epochs=1, max_steps=30, warmup_steps=3, window_s=0.05, world_sizes=[2], max_seconds=None,
                precision_pct=None, job=False, input_bound=False)
    return with_defaults(**{**base, **kw})


def _case_processes() -> list[psutil.Process]:
    me = psutil.Process()
    servers = [p for p in me.children() if "forkserver" in " ".join(p.cmdline())]
    return [c for s in servers for c in s.children(recursive=True)]


def _launcher_folders() -> set[Path]:
    """What PyTorch's elastic launcher leaves in the temp folder (the fork server's, inherited from this process)."""
    return set(Path(tempfile.gettempdir()).glob("torchelastic_*")) | set(Path(tempfile.gettempdir()).glob("bench-ddp-*"))


@pytest.mark.parametrize("pipeline", ["resident", "tutorial"])
def test_two_ranks_end_with_identical_parameters_that_training_changed(synthetic, pipeline):
    case = plan_cases(_spec(pipelines=[pipeline], num_workers=1), str(synthetic.cache_dir), synthetic.name)[0]
    assert case.world_size == 2 and case.key.endswith("/ws2")
    before = _launcher_folders()
    result = runner.run_one(case)
    assert _launcher_folders() - before == set()  # every data-parallel Case left a torchelastic_* folder
    assert result.status == "ok", result.error
    assert result.backend == "gloo"
    assert result.case.batch_size == 8 and result.global_batch_size == 16
    # the all-reduce really happened: both ranks hold the same weights, and they are not the initial ones
    assert len(result.rank_param_digests) == 2 and len(set(result.rank_param_digests)) == 1
    assert result.rank_param_digests[0] != result.param_digest_initial
    with torch.random.fork_rng():  # seeded as a single-process Case: every run starts from the same weights
        torch.manual_seed(case.seed)
        assert result.param_digest_initial == param_digest(Net(case.width, 10))
    assert result.steps == 30 and result.images == 30 * 16  # per-rank steps, images over both ranks
    assert result.images_per_s > 0 and len(result.rank_images_per_s) == 2
    assert all(w % 16 == 0 for w in result.windows_images)  # windows close at the same step on both ranks
    assert 0 < result.allreduce_pct < 100
    assert result.test_accuracy_pct is not None
    assert _case_processes() == []


def test_a_rank_killed_mid_case_fails_the_case_and_leaves_no_process(synthetic):
    case = plan_cases(_spec(max_steps=None, max_seconds=60.0, epochs=50, time_limit_s=120.0),
                      str(synthetic.cache_dir), synthetic.name)[0]
    out = {}
    thread = threading.Thread(target=lambda: out.update(result=runner.run_one(case)))
    thread.start()
    ranks, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:  # the ranks are the Case process's children
        try:
            ranks = [c for p in _case_processes() for c in p.children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:  # a process of the tree (a launcher's helper) ended while it was read
            ranks = []
        if len(ranks) >= 2:
            break
        time.sleep(0.1)
    assert len(ranks) >= 2, "the ranks never started"
    time.sleep(3.0)  # into training
    ranks[-1].send_signal(signal.SIGKILL)
    thread.join(timeout=90)
    result = out["result"]
    # the killed rank is named first, even when its peer's connection error was reported earlier
    assert result.status == "failed" and re.match(r"rank \d was killed by SIGKILL", result.error), result.error
    time.sleep(0.5)
    assert _case_processes() == []


def test_two_launchers_meeting_at_one_endpoint_append_one_result_that_the_report_includes(tmp_path: Path):
    cases = tmp_path / "cases"
    proc = run_bench("plan", "--dataset", "synthetic", "--devices", "cpu", "--world-sizes", "2", "--batch-sizes",
                     "8", "--threads", "1", "--pipelines", "resident", "--modes", "train", "--max-steps", "20", "--no-job",
                     "--epochs", "1", "--warmup-steps", "3", "--window", "0.05", "--write-cases", str(cases))
    assert proc.returncode == 0, proc.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
            "--log-dir", str(tmp_path / "torchrun-logs"),  # by default a torchelastic_* folder in /tmp, left there
            "-m", "bench.running.worker", str(cases / "000.json"), "--out", str(run)]
    nodes = [subprocess.Popen(node, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [n.communicate(timeout=180) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs
    lines = (run / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["status"] == "ok" and result["world_size"] == 2 and result["global_batch_size"] == 16
    assert len(set(result["rank_param_digests"])) == 1
    report = run_bench("report", str(run))
    assert report.returncode == 0, report.stderr
    md = (run / "report.md").read_text()
    section = md.split("## Data-parallel scaling (DDP)")[1].split("\n## ")[0]
    assert "| cpu | resident | eager | 1 | 2 | 1 | 8 | 16 |" in section  # world size 2, per-rank 8, global 16


@pytest.mark.parametrize("args, message", [
    (["--world-sizes", "0"], "bench: --world-sizes: '0' is not a positive integer"),
    (["--world-sizes", "2.5"], "bench: --world-sizes: '2.5' is not a positive integer"),
    (["--world-sizes", "1,2", "--modes", "infer"], "bench: --world-sizes: data-parallel Cases train"),
])
def test_bad_world_sizes_are_refused_before_any_case_runs(tmp_path: Path, args, message):
    proc = run_bench("run", "--dataset", "synthetic", "--devices", "cpu", "--out", str(tmp_path / "run"), *args)
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_more_cuda_ranks_than_gpus_or_graphs_with_ddp_are_refused():
    args = cli.get_parser().parse_args(["run", "--devices", "cuda", "--world-sizes", "1,2"])
    with pytest.raises(cli.CliError, match=r"^--world-sizes: 2 ranks need 2 GPUs \(one per rank\) and this machine "
                                           r"has 1"):
        cli.build_spec(args, n_cuda=1)
    assert cli.build_spec(args, n_cuda=2).world_sizes == [1, 2]
    graphs = cli.get_parser().parse_args(["run", "--devices", "cuda", "--world-sizes", "2", "--cuda-graphs"])
    with pytest.raises(cli.CliError, match="^--world-sizes: CUDA graphs are not captured around DDP"):
        cli.build_spec(graphs, n_cuda=2)


def test_world_size_one_is_the_plain_path_and_lr_scaling_uses_the_global_batch():
    spec = _spec(world_sizes=[1, 2], batch_sizes=[4], lr_scaling="linear", modes=["train", "infer"])
    cases = plan_cases(spec, "/c", "synthetic")
    keys = [c.key for c in cases]
    assert keys == ["train/cpu/resident/b4/t1/w1/r0", "train/cpu/resident/b4/t1/w1/r0/ws2",
                    "infer/cpu/resident/b4/t1/w1/r0"]
    assert [c.lr for c in cases] == pytest.approx([0.001, 0.002, 0.001])


def test_two_ranks_learn_on_real_cifar10_images(mini: Path):
    """World size 2 at batch 2 per rank (global 4, the tutorial's) for 10 epochs on the 820 real images."""
    prepared = data.prepare_cifar10(mini, verify=False, download=False)
    spec = _spec(batch_sizes=[2], epochs=10, max_steps=None, max_seconds=None, warmup_steps=5, window_s=0.5)
    case = replace(plan_cases(spec, str(prepared.cache_dir), prepared.name)[0], time_limit_s=240.0)
    result = runner.run_one(case)
    assert result.status == "ok", result.error
    assert result.epochs_completed == pytest.approx(10.0)
    assert result.test_accuracy_pct >= 20.0, f"{result.test_accuracy_pct:.1f}% after 10 epochs"
