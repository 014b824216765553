"""The tutorial's job (bench/job.py): planned per device with the tutorial's own settings, measured end to
end, or projected from a measured part and labelled so; the report opens with it."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from bench import cli
from bench.job import record_job
from bench.plan import plan_cases
from bench.run_folder import RunFolder
from bench.schema import JOB, Result, SweepSpec
from conftest import run_bench

SPEC = SweepSpec(devices=["cpu", "cuda:0"], batch_sizes=[32, 128], threads=[1, 2], pipelines=["resident"],
                 widths=[2.0], modes=["train"], epochs=1, lr=0.1, num_workers=0, max_seconds=5.0, job=True)


def test_each_device_opens_with_the_tutorials_job_in_its_own_settings():
    cases = plan_cases(SPEC, data_cache="/c", dataset="synthetic")
    jobs = [c for c in cases if c.mode == JOB]
    assert [c.device for c in jobs] == ["cpu", "cuda:0"]
    assert all([c for c in cases if c.device == job.device][0] == job for job in jobs)  # first on its device
    for job in jobs:  # the tutorial's settings, whatever the sweep's
        assert (job.pipeline, job.batch_size, job.epochs, job.lr, job.num_workers, job.width) == \
            ("tutorial", 4, 2, 0.001, 2, 1.0)
        assert job.threads is None and job.compile_mode is None and job.amp == "off" and job.world_size == 1
        assert job.max_seconds == 5.0  # the sweep's budget: the rest is projected
    assert jobs[0].key == "job/cpu/tutorial/b4/tauto/w1/r0"
    assert not [c for c in plan_cases(replace(SPEC, job=False), "/c", "synthetic") if c.mode == JOB]


def test_no_job_leaves_it_out_from_argv_and_keywords():
    assert cli.build_spec(cli.get_parser().parse_args(["run", "--no-job"]), n_cuda=0).job is False
    assert cli.build_spec(cli.get_parser().parse_args(["run"]), n_cuda=0).job is True
    import bench

    assert bench.sweep_spec(job=False).job is False and bench.sweep_spec().job is True


def _job_result(**kw) -> Result:
    case = next(c for c in plan_cases(SPEC, "/c", "synthetic") if c.mode == JOB)
    fields = dict(train_images=50000, startup_s=2.0, warmup_s=0.5, eval_s=1.5, data_wait_pct=10.0,
                  test_accuracy_pct=30.0)
    return Result(case=case, **{**fields, **kw})


def test_a_job_its_budget_stopped_is_projected_from_its_steady_rate():
    result = _job_result(images=4000, train_s=10.0, images_per_s=400.0, stopped_by="time",
                         epoch_accuracy_pct=[30.0])
    record_job(result)
    train = 10.0 + (2 * 50000 - 4000) / 400.0  # what was measured, and the rest at the steady rate
    assert result.job_projected is True and result.job_fraction == pytest.approx(0.04)
    assert result.job_s == pytest.approx(2.0 + train + 1.5)
    assert result.job_data_s == pytest.approx((train - 0.5) * 0.10)
    assert result.job_compute_s == pytest.approx(train - result.job_data_s)
    assert (result.job_startup_s, result.job_eval_s) == (2.0, 1.5)


def test_a_whole_job_is_measured_with_one_test_pass_as_the_tutorial_runs_it():
    result = _job_result(images=100000, train_s=200.0, images_per_s=520.0, stopped_by="epochs",
                         epoch_accuracy_pct=[40.0, 52.0])
    record_job(result)
    assert result.job_projected is False and result.job_fraction == 1.0
    assert result.job_eval_s == pytest.approx(0.75)  # evaluated after each epoch; the job's one pass
    assert result.job_s == pytest.approx(2.0 + 200.0 + 0.75)


def test_no_timed_window_means_nothing_is_projected():
    result = _job_result(images=40, train_s=0.3, images_per_s=None, stopped_by="time", epoch_accuracy_pct=[10.0])
    record_job(result)
    assert result.job_s is None and result.job_projected is None


def test_the_report_opens_with_the_job_measured_whole_on_real_cifar10_with_its_cost(mini: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_bench("run", "--dataset", "cifar10", "--data-dir", str(mini), "--no-verify", "--devices", "cpu", "--modes", "train",
                     "--pipelines", "resident", "--batch-sizes", "32", "--threads", "1", "--epochs", "1",
                     "--max-seconds", "0", "--price", "0.10", "--out", str(out), timeout=400)
    assert proc.returncode == 0, proc.stderr
    [job] = [r for r in RunFolder(out).results() if r.case.mode == JOB]
    assert job.status == "ok" and job.job_projected is False and job.epochs_completed == pytest.approx(2.0)
    assert job.job_s == pytest.approx(job.job_startup_s + job.job_data_s + job.job_compute_s + job.job_eval_s)
    md = (out / "report.md").read_text()
    first = md.split("\n")[2]
    assert re.fullmatch(r"\*\*The tutorial's job \(2 epochs at batch 4 through its DataLoader, then the test pass\) "
                        r"takes [\d.]+ s on cpu, \d+ threads and reaches [\d.]+% test accuracy\.\*\*", first), first
    assert f"{job.test_accuracy_pct:.1f}% test accuracy" in first
    assert re.search(r"- Cost on cpu: the tutorial's job \$[\d.e-]+, an epoch at its fastest configuration", md)
    assert (out / "job.png").is_file() and (out / "cost.png").is_file() and "![Cost per device](cost.png)" in md
