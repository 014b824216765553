"""bench/report/build.py and bench/report/charts.py: files, content, failed Cases, several machines, a real browser."""
from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

from bench.analysis import tables
from bench.report import build, charts
from bench.result import Result
from bench.schema import JOB
from bench.store.run_folder import RunFolder
from bench.sweep.plan import plan_cases
from bench.sweep.spec import with_defaults


def _fake_run(folder: Path, host: str, gpu: bool, scale: float = 1.0, env: dict | None = None,
              whole_epochs: bool = True, job: bool = False) -> Path:
    """A run folder as bench run writes it, with hand-set figures and every kind of ending; `env`
    replaces entries of its environment.json; without `whole_epochs` the training Cases stopped at
    their time budget after different parts of an epoch; with `job`, each device's tutorial job (projected)."""
    folder.mkdir(parents=True)
    devices = ["cpu", "cuda:0"] if gpu else ["cpu"]
    spec = with_defaults(devices=devices, batch_sizes=[4, 32, 128], threads=[1, 2], pipelines=["tutorial", "resident"],
                         widths=[1.0], modes=["train", "infer"], max_seconds=5.0, job=job, precision_pct=None,
                         window_s=0.5, input_bound=False)
    for case in plan_cases(spec, data_cache="/c", dataset="synthetic", run_id=folder.name):
        if case.mode == JOB and case.repeat > 0:
            continue  # the job as one sampled process (its sittings are tests/test_repeats.py's)
        base = {"cpu": 400.0 * (case.threads or 1) ** 0.5, "cuda:0": 300.0}[case.device]
        rate = scale * base * case.batch_size ** (0.5 if case.device == "cpu" else 1.0)
        rate *= 2.0 if case.pipeline == "resident" else 1.0
        result = Result(case=case, images_per_s=rate, images_per_s_p25=0.97 * rate, images_per_s_p75=1.03 * rate,
                        images_per_s_spread_pct=6.0, windows_s=[1.0], windows_images=[int(rate)],
                        train_images=50000, test_images=10000)
        if case.mode == JOB:
            result.job_s, result.job_projected, result.job_fraction = 7200.0 / rate, True, 0.1
            result.job_startup_s, result.job_data_s, result.job_eval_s, result.job_import_s = 2.0, 1.0, 0.5, 1.0
            result.job_dataset_s = 0.4
            result.job_compute_s, result.test_accuracy_pct, result.threads_used = result.job_s - 3.5, 30.0, 2
        if case.mode == "train":
            result.test_accuracy_pct = 60.0 - case.batch_size / 10
            result.time_to_target_s = 100.0 / case.batch_size ** 0.5
            result.epochs_completed, result.stopped_by = (2.0, "epochs") if whole_epochs else (4 / case.batch_size,
                                                                                                 "time")
        else:
            result.latency_ms_p50, result.latency_ms_p99 = case.batch_size / 10, case.batch_size / 5
        RunFolder(folder).append(result)
    case = plan_cases(replace(spec, batch_sizes=[512, 1024, 2048], modes=["train"], pipelines=["tutorial"],
                              threads=[2], devices=["cpu"], job=False), "/c", "synthetic")
    for c, (status, error) in zip(case, [("oom", "OutOfMemoryError: CUDA out of memory"), ("timeout", "time limit"),
                                         ("failed", "worker died from SIGSEGV")]):
        RunFolder(folder).append(Result(case=c, status=status, error=error))
    skipped = {} if gpu else {"cuda": "CUDA is not available on this machine"}
    for c in plan_cases(replace(spec, devices=list(skipped), batch_sizes=[4], job=False), "/c", "synthetic"):
        RunFolder(folder).append(Result(case=c, status="skipped", error=skipped[c.device]))
    env = {"run_id": folder.name, "hostname": host, "cpu_model": f"{host} CPU", "cpu_logical_cores": 2,
           "gpus": [{"name": "H100"}] if gpu else [], "torch": "2.x", "dataset": "synthetic",
           "skipped_devices": skipped, "float32_matmul_precision": "highest",
           "ceilings": {"worker_pid": 4242, "worker_error": None,
                        "matmul_n": {"cpu": {"fp32": 1024}, "cuda:0": {"fp32": 8192, "tf32": 8192}},
                        "matmul_gflops": {"cpu": {"fp32": 60.0}, "cuda:0": {"fp32": 50000.0, "tf32": 200000.0}},
                        "matmul_missing": {}},
           "model_flops_per_image": {"1": {"forward": 1.3e6, "train_step": 3.2e6}}, **(env or {})}
    (folder / "environment.json").write_text(json.dumps(env))
    return folder


def test_report_of_a_run_with_failures_opens_with_the_verdict(tmp_path: Path):
    run = _fake_run(tmp_path / "laptop", "laptop", gpu=False)
    md = build.build_report([run], run).markdown.read_text()
    assert md.startswith("# Does a GPU help the CIFAR-10 tutorial CNN?\n\n**Only cpu was measured")
    for text in ("ended as oom", "ended as timeout", "ended as failed", "Device cuda was skipped", "SYNTHETIC",
                 "Input pipeline (cpu)", "Threads (tutorial pipeline)", "Compute (cpu)"):
        assert text in md, text
    for png in ("throughput_train.png", "thread_scaling.png", "accuracy.png", "latency.png", "epoch_time.png"):
        assert (run / png).stat().st_size > 1000 and f"]({png})" in md
    html = (run / "report.html").read_text()
    assert "src='data:image/png;base64," in html and "src='http" not in html and "src='/" not in html
    assert "## Cases that did not finish" in md and "worker died from SIGSEGV" in md


def test_report_of_two_machines_labels_each_and_finds_the_crossover(tmp_path: Path):
    laptop = _fake_run(tmp_path / "laptop", "laptop", gpu=False)
    gpu_box = _fake_run(tmp_path / "gpubox", "gpubox", gpu=True)
    out = tmp_path / "both"
    md = build.build_report([laptop, gpu_box], out).markdown.read_text()
    assert "laptop (laptop CPU, 2 cores, no GPU)" in md and "gpubox (gpubox CPU, 2 cores, H100)" in md
    assert "At the tutorial's own settings (batch 4, tutorial pipeline) the cuda:0 trains" in md
    assert "Crossover (cuda:0, tutorial pipeline, width 1): faster than the CPU beyond the noise from batch" in md
    assert (out / "speedup.png").exists() and len((out / "results.csv").read_text().splitlines()) > 40


def test_the_report_names_the_precision_of_each_ceiling_it_compares_with(tmp_path: Path):
    run = _fake_run(tmp_path / "gpu", "box", gpu=True)
    md = build.build_report([run], run).markdown.read_text()
    assert "| highest |" in md  # the float32 matmul precision the Cases ran with, in the Machines table
    assert "## Matmul ceilings measured per device and precision (GFLOP/s)" in md
    assert "| cuda:0 | tf32 | 200,000 | 8192 |" in md  # unknown_because, "-" in every row, is left out
    # eager fp32 Cases on CUDA: cuDNN's convolutions ran in TF32 (torch's default), so tf32 is their ceiling
    assert "of this device's measured tf32 matmul ceiling (200,000 GFLOP/s;" in md
    assert "fp32 matmul ceiling (50,000 GFLOP/s" not in md
    assert "of this device's measured fp32 matmul ceiling (60 GFLOP/s;" in md


def test_a_run_whose_ceiling_worker_failed_reports_the_ceilings_as_unknown_with_the_reason(tmp_path: Path):
    why = "the ceiling worker died from SIGKILL (the kernel's out-of-memory killer sends this)"
    failed = {"gpus": None, "cudnn": None, "float32_matmul_precision": None, "model_flops_per_image": None,
              "ceilings": {"worker_pid": 4242, "worker_error": why, "matmul_n": {"cpu": {"fp32": 1024}},
                           "matmul_gflops": {}, "matmul_missing": {"cpu": {"fp32": why}}}}
    run = _fake_run(tmp_path / "run", "host", gpu=False, env=failed)
    md = build.build_report([run], run).markdown.read_text()
    assert md.startswith("# Does a GPU help the CIFAR-10 tutorial CNN?\n\n**Only cpu was measured")
    assert "host (host CPU, 2 cores, GPUs unknown)" in md
    assert f"| cpu | fp32 | - | 1024 | {why} |" in md
    assert "Compute (cpu)" not in md  # no FLOP count, so no claim


def test_charts_render_without_warnings(tmp_path: Path):
    run = _fake_run(tmp_path / "gpu", "box", gpu=True, job=True, env={"price_usd_per_hour": {"cpu": 0.1, "cuda": 1.0}})
    df = build.combined_frame([RunFolder(run).load()])
    best, analysed = tables.best_throughput(df), tables.analyse(df)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figs = [charts.job_time(analysed.jobs), charts.cost(analysed.costs),
                charts.throughput_vs_batch(best), charts.speedup_vs_batch(tables.speedups(df)),
                charts.thread_scaling(tables.thread_scaling(df)), charts.epoch_time(best, 50000),
                charts.accuracy_vs_batch(tables.accuracy_by_batch(df)),
                charts.inference_latency(tables.inference_table(df)), charts.throughput_vs_width(best)]
        for i, fig in enumerate(figs):
            fig.savefig(tmp_path / f"{i}.png")
    for fig in figs:
        assert fig.axes[0].get_title() or fig._suptitle is not None
        assert fig.axes[0].get_ylabel()


def test_bench_report_cli(tmp_path: Path):
    from conftest import run_bench

    run = _fake_run(tmp_path / "run", "host", gpu=False)
    proc = run_bench("report", str(run))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# Does a GPU help") and (run / "report.html").exists()
    proc = run_bench("report", str(tmp_path / "missing"))
    assert proc.returncode == 2 and proc.stderr.startswith("bench: report: ") and "no results.jsonl" in proc.stderr
    shutil.copytree(run, tmp_path / "again")
    proc = run_bench("report", str(run), str(tmp_path / "again"))
    assert proc.returncode == 2 and "--out is needed" in proc.stderr


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Chromium and ChromeDriver are not installed (Debian: apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    return browser, driver


def test_html_report_in_a_real_browser(tmp_path: Path):
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    run = _fake_run(tmp_path / "run", "host", gpu=True)
    build.build_report([run], run)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_window_size(400, 900)  # a phone's width
        driver.get((run / "report.html").as_uri())
        widths = driver.execute_script("return [...document.images].map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) >= 5 and all(w > 0 for w in widths), widths
        verdict = driver.find_element("id", "verdict")
        assert verdict.is_displayed() and "batch 4" in verdict.text
        scroll = driver.execute_script("return document.documentElement.scrollWidth")
        assert scroll <= 420, f"the page is {scroll}px wide on a 400px screen"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()


def test_each_cases_warnings_appear_in_the_report_beside_its_key(tmp_path: Path):
    run = _fake_run(tmp_path / "laptop", "laptop", gpu=False)
    case = plan_cases(with_defaults(devices=["cpu"], batch_sizes=[8], threads=[1], pipelines=["resident"],
                                    widths=[1.0], modes=["train"], max_seconds=None, precision_pct=None,
                                    window_s=0.5, job=False), "/c", "synthetic")[0]
    RunFolder(run).append(Result(case=case, images_per_s=100.0, images_per_s_p25=80.0, images_per_s_p75=120.0,
                              windows_s=[1.0], windows_images=[100],
                              warnings=["throughput varied: IQR is 40% of the median over 2 windows",
                                        "only 2 timed window(s): the spread is not meaningful"]))
    md = build.build_report([run], run).markdown.read_text()
    assert ("| train/cpu/resident/b8/t1/w1 | throughput varied: IQR is 40% of the median over 2 windows; only 2 "
            "timed window(s): the spread is not meaningful |") in md


def test_the_speedup_chart_title_says_what_the_data_show():
    import pandas as pd

    def frame(speedups):
        return pd.DataFrame([{"machine": "m", "device": "cuda:0", "pipeline": "resident", "variant": "eager",
                              "width": 1.0, "mode": "train", "batch_size": b, "speedup": x, "low": x, "high": x}
                             for b, x in zip([4, 32, 512], speedups)])

    assert charts.speedup_vs_batch(frame([1.0, 3.0, 9.0])).axes[0].get_title().startswith(
        "The GPU's lead grows with batch size: up to 9.0x at batch 512")
    assert charts.speedup_vs_batch(frame([5.0, 2.0, 1.5])).axes[0].get_title().startswith(
        "The GPU's lead shrinks as the batch grows: up to 5.0x at batch 4")
    mixed = pd.concat([frame([1.0, 3.0, 9.0]), frame([5.0, 2.0, 1.5]).assign(pipeline="tutorial")], ignore_index=True)
    assert charts.speedup_vs_batch(mixed).axes[0].get_title().startswith("Speed-up over the best CPU by batch size")


def test_importing_the_charts_and_report_leaves_a_notebooks_matplotlib_backend_alone():
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import bench.report.charts, bench.report.build, bench; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip() == "svg"


def test_two_runs_each_priced_at_its_own_price_open_with_the_job_and_say_which_is_cheaper(tmp_path: Path):
    cpu_vm = _fake_run(tmp_path / "cpu-vm", "cpu-vm", gpu=False, env={"price_usd_per_hour": {"*": 0.10}}, job=True)
    gpu_vm = _fake_run(tmp_path / "gpu-vm", "gpu-vm", gpu=True, env={"price_usd_per_hour": {"*": 0.90}}, job=True)
    rep = build.build_report([cpu_vm, gpu_vm], tmp_path / "both")
    assert rep.verdict.headline.startswith("The tutorial's job (its script as published: imports and datasets, 2 "
                                           "epochs at batch 4 through its DataLoader, then its two test passes) takes about ")
    assert "cpu (cpu-vm (cpu-vm CPU, 2 cores, no GPU)), 2 threads (projected from the 10% of it measured" \
        in rep.verdict.headline
    md = (tmp_path / "both" / "report.md").read_text()
    assert "| cpu-vm | cpu-vm (cpu-vm CPU, 2 cores, no GPU) |" in md and "| *=0.1 |" in md and "| *=0.9 |" in md
    assert any(f.startswith("Cheaper for the tutorial's job: ") for f in rep.verdict.findings)
    analysed = tables.analyse(build.combined_frame([RunFolder(cpu_vm).load(), RunFolder(gpu_vm).load()]))
    prices = analysed.costs.set_index(["machine", "device"])["price_usd_per_hour"].to_dict()
    assert prices == {("cpu-vm (cpu-vm CPU, 2 cores, no GPU)", "cpu"): 0.10,
                      ("gpu-vm (gpu-vm CPU, 2 cores, H100)", "cpu"): 0.90,  # the GPU VM's CPU at the GPU VM's price
                      ("gpu-vm (gpu-vm CPU, 2 cores, H100)", "cuda:0"): 0.90}
    assert "cost.png" in rep.charts and "job.png" in rep.charts


def test_an_accuracy_chart_with_nothing_to_compare_is_left_out_and_the_report_says_why(tmp_path: Path):
    run = _fake_run(tmp_path / "run", "host", gpu=False, whole_epochs=False)  # stopped by time: nothing compares
    (run / "accuracy.png").write_bytes(b"an earlier report's chart")
    rep = build.build_report([run], run)
    assert "accuracy.png" not in rep.charts and not (run / "accuracy.png").exists()
    assert "- Left out: accuracy.png: no two batch sizes both trained the same full epochs and learnt" \
        in rep.markdown.read_text()


def test_the_first_screen_is_the_headline_then_the_summary_chart_and_no_section_is_empty(tmp_path: Path):
    run = _fake_run(tmp_path / "run", "host", gpu=False)
    report = build.build_report([run], run)
    md = report.markdown.read_text()
    lines = [line for line in md.splitlines() if line]
    assert lines[1].startswith("**") and lines[2].startswith("![Training images/s by batch size") and "summary.png" in lines[2]
    assert lines[3].startswith("- ")  # the findings follow the chart
    assert "_(none)_" not in md and "(none)" not in report.html.read_text()
    assert (run / "summary.png").is_file() and md.count("summary.png") == 1
    html = report.html.read_text()
    assert html.index("id='verdict'") < html.index("id='summary'") < html.index("<ul>")
    tables = "\n".join(line for line in md.split("## ", 1)[1].splitlines() if line.startswith("| "))
    decimals = re.findall(r"(?<![\w.])(\d[\d,]*\.\d+)(?![\w.])", tables)
    assert decimals and all(len(d.replace(",", "").replace(".", "").lstrip("0")) <= 3 for d in decimals), decimals


def test_a_report_of_two_copies_of_one_run_draws_every_chart_without_a_collapsed_layout(tmp_path: Path):
    import warnings

    a = _fake_run(tmp_path / "a" / "run", "host", gpu=False, job=True)
    b = tmp_path / "b" / "run"
    shutil.copytree(a, b)  # the same run id: told apart by path, the longest labels there are
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # matplotlib's "constrained_layout not applied"
        report = build.build_report([a, b], tmp_path / "both")
    assert "job.png" in report.charts and "summary.png" in report.charts
