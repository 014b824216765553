"""bench/running/runner.py: one process per Case; crash, out-of-memory and time-out become Results."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace

import psutil
import pytest

from bench.running import runner
from conftest import ROOT
from bench.sweep.plan import plan_cases
from bench.sweep.spec import with_defaults


@pytest.fixture
def case(synthetic):
    spec = with_defaults(devices=["cpu"], batch_sizes=[8], threads=[1], pipelines=["resident"], widths=[1.0],
                         modes=["train"], epochs=1, max_steps=40, warmup_steps=5, window_s=0.05, max_seconds=None,
                         precision_pct=None, job=False)
    return plan_cases(spec, str(synthetic.cache_dir), synthetic.name)[0]


def _case_processes() -> list[psutil.Process]:
    """Processes forked by our fork server: the Case workers and their children."""
    me = psutil.Process()
    servers = [p for p in me.children() if "forkserver" in " ".join(p.cmdline())]
    return [c for s in servers for c in s.children(recursive=True)]


def test_a_case_runs_in_its_own_process_with_its_threads(case):
    result = runner.run_one(case)
    assert result.status == "ok", result.error
    assert result.steps == 40 and result.stopped_by == "max_steps" and result.threads_used == 1
    assert result.images_per_s > 0 and result.windows_s and result.startup_s < 30
    assert result.test_accuracy_pct is not None and result.peak_rss_mb > 0
    # a CPU Case claims no GPU facts
    assert result.cudnn_benchmark is None and result.gpu_monitor is None and result.gpu_power_w is None


def test_gpu_energy_per_epoch_scales_the_monitored_energy_to_an_epochs_images(case):
    from bench.measuring import training
    from bench.measuring.gpu_monitor import GpuUsage
    from bench.result import assemble

    class Sampler:
        def usage(self):
            return GpuUsage(util_pct=75.0, power_w=200.0, energy_j=50.0, seconds=0.25, samples=3)

    result = assemble(case, training.gpu_usage(Sampler(), epoch_images=50000, images=10000))
    assert (result.gpu_util_pct, result.gpu_power_w, result.gpu_energy_j_per_epoch) == (75.0, 200.0, 250.0)
    none = assemble(case, training.gpu_usage(None, epoch_images=50000, images=10000))
    assert none.gpu_energy_j_per_epoch is None


def test_an_exception_in_the_worker_is_a_failed_result(case):
    result = runner.run_one(replace(case, data_cache="/nonexistent/cache"))
    assert result.status == "failed" and "FileNotFoundError" in result.error


def test_running_out_of_memory_is_an_oom_result(case):
    result = runner.run_one(replace(case, width=1e6))  # conv weights of many terabytes
    assert result.status == "oom", result.error


def test_a_case_over_its_time_limit_is_killed_with_its_children(case):
    slow = replace(case, pipeline="tutorial", max_steps=None, max_seconds=None, epochs=5, time_limit_s=4.0)
    result = runner.run_one(slow)
    assert result.status == "timeout" and "time limit of 4 s" in result.error
    assert _case_processes() == []


def test_a_worker_killed_by_a_signal_is_a_failed_result(case):
    def kill_worker(progress):
        for p in _case_processes():
            os.kill(p.pid, signal.SIGKILL)

    long = replace(case, max_steps=None, max_seconds=None, epochs=3)
    result = runner.run_one(long, on_progress=kill_worker)
    assert result.status == "failed" and "SIGKILL" in result.error
    assert _case_processes() == []


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_bf16_autocast_and_channels_last_run_on_the_cpu(case, mode):
    variant = replace(case, mode=mode, amp="bf16", memory_format="channels_last", max_steps=12)
    result = runner.run_one(variant)
    assert result.status == "ok", result.error
    assert result.case.key.endswith("/amp-bf16/channels-last") and result.steps == 12


def test_the_sweeps_own_process_leaves_torchvision_to_the_fork_server(tmp_path, synthetic):
    """Importing torchvision takes 2 s of CPU here: done by `bench run` itself it would compete with the fork
    server's import at the start and with the first Case measured beside it."""
    code = ("import atexit, runpy, sys; "
            "atexit.register(lambda: print('torchvision' in sys.modules, file=sys.stderr)); "
            "sys.argv = ['bench', 'run', '--quick', '--dataset', 'synthetic', '--modes', 'infer', '--pipelines', "
            f"'resident', '--batch-sizes', '8', '--threads', '1', '--no-job', '--no-report', '--out', '{tmp_path / 'r'}']; "
            "runpy.run_module('bench', run_name='__main__', alter_sys=True)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "False"
    assert '"status": "ok"' in (tmp_path / "r" / "results.jsonl").read_text()


def test_a_cases_process_does_not_import_pandas():
    """The fork server imports what a Case needs before the first Case can start: pandas (0.46 s here) is the
    report's, not a Case's."""
    modules = {"bench.running.worker", runner.case_main.__module__, runner.nothing.__module__}  # what a child imports
    out = subprocess.run([sys.executable, "-c", f"import sys, {', '.join(sorted(modules))}; print('pandas' in sys.modules)"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_bad_input_to_bench_run_ends_at_once_though_its_fork_server_is_still_importing(tmp_path):
    """`bench run` starts its fork server before parsing (its imports take seconds); a command refused before
    the first Case stops it, or the server, holding the command's stdout, kept a pipe open until its imports were
    done. Here a sitecustomize makes the server's import take 10 minutes: only a stopped server lets it end."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import time\n"
        "if b'multiprocessing.forkserver import main' in open('/proc/self/cmdline', 'rb').read():\n"
        "    time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    try:
        proc = subprocess.run([sys.executable, "-m", "bench", "run", "--world-sizes", "0"], capture_output=True,
                              text=True, timeout=120, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    finally:  # a server left sleeping (the bug this catches) is ended here, not after its 10 minutes
        for p in psutil.process_iter(["environ"]):
            if (p.info["environ"] or {}).get("PYTHONPATH") == env["PYTHONPATH"]:
                p.kill()
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "bench: --world-sizes: '0' is not a positive integer (expected e.g. 1,2)"), proc.stderr


def test_the_commands_that_read_results_do_not_import_torch(tmp_path):
    """report, compare and export read files: torch (3.6 s here) is for the commands that measure."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ROOT / "reports" / "sample-cpu", run)
    code = ("import sys; from bench import cli\n"
            f"assert cli.main(['report', {str(run)!r}, '--out', {str(tmp_path / 'report')!r}]) == 0\n"
            f"assert cli.main(['compare', {str(run)!r}, {str(run)!r}]) == 0\n"
            f"assert cli.main(['export', {str(run)!r}, '--out', {str(tmp_path / 'x.json')!r}]) == 0\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "x.json").is_file()
