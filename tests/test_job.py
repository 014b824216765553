"""The tutorial's job (bench/measuring/job.py): planned per device with the tutorial's own settings, measured end to
end, or projected from a measured part and labelled so; the report opens with it."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import cli
from bench.measuring import job
from bench.measuring.job import Pass, Stretch, job_fields, project
from bench.report import answer
from bench.result import Result, assemble
from bench.schema import JOB
from bench.store.run_folder import RunFolder
from bench.sweep.plan import JOB_SITTINGS, plan_cases
from bench.sweep.spec import with_defaults
from cnn.data import prepare_cifar10
from conftest import run_bench

SPEC = with_defaults(devices=["cpu", "cuda:0"], batch_sizes=[32, 128], threads=[1, 2], pipelines=["resident"],
                     widths=[2.0], modes=["train"], epochs=1, lr=0.1, num_workers=0, max_seconds=5.0, job=True,
                     precision_pct=None, window_s=0.5)


def test_each_device_opens_with_the_tutorials_job_in_its_own_settings():
    cases = plan_cases(replace(SPEC, max_seconds=None), data_cache="/c", dataset="synthetic")
    jobs = [c for c in cases if c.mode == JOB]
    assert [c.device for c in jobs] == ["cpu", "cuda:0"]  # with no budget, measured whole: one process each
    assert all([c for c in cases if c.device == job.device][0] == job for job in jobs)  # first on its device
    for job in jobs:  # the tutorial's settings, whatever the sweep's
        assert (job.pipeline, job.batch_size, job.epochs, job.lr, job.num_workers, job.width) == \
            ("tutorial", 4, 2, 0.001, 2, 1.0)
        assert job.threads is None and job.compile_mode is None and job.amp == "off" and job.world_size == 1
        assert job.max_seconds is None
    assert jobs[0].key == "job/cpu/tutorial/b4/tauto/w1/r0/malloc-tuned"  # the state its script runs in
    assert {job.malloc for job in jobs} == {"tuned"}
    assert not [c for c in plan_cases(replace(SPEC, job=False), "/c", "synthetic") if c.mode == JOB]


@pytest.mark.parametrize("repeats", [1, 2])
def test_a_sampled_job_is_planned_in_sittings_spread_over_its_devices_cases(repeats):
    cases = plan_cases(replace(SPEC, repeats=repeats), data_cache="/c", dataset="synthetic")
    for device in ("cpu", "cuda:0"):
        mine = [c for c in cases if c.device == device]
        at = [i for i, c in enumerate(mine) if c.mode == JOB]
        assert len(at) == JOB_SITTINGS >= 3
        assert [mine[i].repeat for i in at] == list(range(JOB_SITTINGS))  # one key, repeats: one job in the report
        assert all(mine[i].max_seconds == pytest.approx(5.0 / JOB_SITTINGS) for i in at)  # they share the budget
        assert at[0] == 0 and at[-1] == len(mine) - 1  # the first opens the device's Cases, the last closes them
        gaps = np.diff(at)
        assert gaps.max() - gaps.min() <= 1  # and the others fall evenly between
    others = [c for c in cases if c.mode != JOB]
    assert others == [c for c in plan_cases(replace(SPEC, repeats=repeats, job=False), "/c", "synthetic")]
    assert others == sorted(others, key=lambda c: c.repeat)  # repeats still round-robin
    capped = [c for c in plan_cases(replace(SPEC, max_steps=40), "/c", "synthetic") if c.mode == JOB]
    assert [c.device for c in capped] == ["cpu", "cuda:0"] and capped[0].max_seconds == 5.0  # step-exact: one


def test_no_job_leaves_it_out_from_argv_and_keywords():
    assert cli.build_spec(cli.get_parser().parse_args(["run", "--no-job"]), n_cuda=0).job is False
    assert cli.build_spec(cli.get_parser().parse_args(["run"]), n_cuda=0).job is True
    import bench

    assert bench.sweep_spec(job=False).job is False and bench.sweep_spec().job is True


def _pass(total: int, steps: list[float], waits: list[float] | None = None, seconds: float | None = None) -> Pass:
    return Pass("train epoch 1", total, seconds if seconds is not None else sum(steps), list(steps),
                list(waits if waits is not None else [0.0] * len(steps)),
                stopped_by=None if len(steps) >= total else "max_seconds")


def test_a_pass_measured_whole_is_its_own_time_with_no_spread():
    p = _pass(5, [0.5, 0.1, 0.1, 0.1, 0.1], seconds=1.0)
    point, data, samples = project(p, np.random.default_rng(0))
    assert point == 1.0 and np.all(samples == 1.0)
    assert data == pytest.approx(0.1)  # the pass's time outside its steps: its workers shutting down


def test_a_sampled_pass_is_its_stretch_plus_the_steps_left_at_their_mean_time_stalls_included():
    steps = [2.0] + [0.01, 0.01, 0.01, 0.05] * 25  # a slow start (workers), then steps with a stall in four
    waits = [1.5] + [0.0, 0.0, 0.0, 0.04] * 25
    p = _pass(1000, steps, waits, seconds=3.5)
    point, data, samples = project(p, np.random.default_rng(0))
    settled = steps[min(10, len(steps) // 5):]  # the first steps are left out of the mean, not of the time
    left = 1000 - len(steps)
    assert point == pytest.approx(3.5 + left * np.mean(settled))  # the mean, not the median 0.01: stalls count
    assert data == pytest.approx(sum(waits) + left * np.mean(waits[10:]))
    low, high = np.percentile(samples, [2.5, 97.5])
    assert low < point < high and high - low < 0.2 * point


def test_noisier_steps_give_a_wider_interval():
    rng = np.random.default_rng(1)
    calm, noisy = _pass(5000, list(0.01 + 0.001 * rng.random(200))), _pass(5000, list(0.01 + 0.02 * rng.random(200)))
    widths = [np.ptp(np.percentile(project(p, np.random.default_rng(0))[2], [2.5, 97.5])) for p in (calm, noisy)]
    assert widths[1] > 5 * widths[0]


def test_a_pass_of_too_few_steps_is_projected_without_an_interval_and_never_from_its_first_step():
    p = _pass(1000, [2.0, 0.01, 0.01])  # the first step: the workers starting
    point, _, samples = project(p, np.random.default_rng(0))
    assert point == pytest.approx(2.02 + 997 * 0.01) and np.isnan(samples).all()
    result = _job_result([p, p, _pass(10, [0.1] * 3), _pass(10, [0.1] * 3)], import_s=1.0, peek_s=0.0)
    assert result.job_projected is True and (result.job_s_low, result.job_s_high) == (None, None)


def test_a_time_budget_is_shared_over_the_passes_by_their_steps():
    passes = [Pass(name, steps) for name, steps in zip(job.PASSES, (12500, 12500, 2500, 2500))]  # the tutorial's
    assert [job.time_share(6.0, passes, p) for p in passes] == pytest.approx([2.5, 2.5, 0.5, 0.5])


def test_a_step_cap_is_split_exactly_over_the_four_passes():
    assert [job.step_share(30, i) for i in range(4)] == [8, 8, 7, 7]
    assert [job.step_share(2, i) for i in range(4)] == [1, 1, 1, 1]  # each pass is sampled, its start included


def _job_result(passes: list, import_s: float, peek_s: float, accuracy_pct: float | None = None,
                dataset_s: float | None = None) -> Result:
    """The job's Result from these passes, after a start-up of 1 s."""
    case = next(c for c in plan_cases(SPEC, "/c", "synthetic") if c.mode == JOB)
    return assemble(case, job_fields(case, passes, import_s, peek_s, startup_s=1.0, accuracy_pct=accuracy_pct,
                                     dataset_s=dataset_s))


def test_the_job_is_start_up_and_its_four_passes_projected_with_an_interval_over_them_all():
    train = [_pass(12500, [0.5] + [0.002, 0.003, 0.002] * 33, [0.4] + [0.0005] * 99) for _ in range(2)]
    test = [_pass(2500, [0.3] + [0.001] * 99) for _ in range(2)]
    result = _job_result(train + test, import_s=4.0, peek_s=0.1, dataset_s=1.5)
    projected = [project(p, np.random.default_rng(0))[0] for p in train + test]
    assert result.job_projected is True and result.stopped_by == "max_seconds"
    assert result.job_startup_s == 6.5 and (result.job_import_s, result.job_dataset_s) == (4.0, 1.5)
    assert result.job_eval_s == pytest.approx(sum(projected[2:]) + 0.1)
    assert result.job_data_s + result.job_compute_s == pytest.approx(sum(projected[:2]))
    assert result.job_s == pytest.approx(6.5 + sum(projected) + 0.1)
    assert result.job_s_low < result.job_s < result.job_s_high
    measured = 6.5 + sum(p.seconds for p in train + test) + 0.1
    assert result.job_fraction == pytest.approx(measured / result.job_s)
    assert result.images == 2 * 100 * 4 and result.images_per_s == pytest.approx(4 / 0.00233, rel=0.1)


def test_a_job_measured_whole_has_no_interval_and_says_so():
    passes = [_pass(3, [0.2, 0.1, 0.1]), _pass(3, [0.2, 0.1, 0.1]), _pass(1, [0.1]), _pass(1, [0.1])]
    result = _job_result(passes, import_s=2.0, peek_s=0.0, accuracy_pct=51.0)  # from its test passes, over the target
    assert result.job_projected is False and result.stopped_by == "epochs" and result.job_fraction == 1.0
    assert (result.job_s_low, result.job_s_high) == (None, None)
    assert result.time_to_target_s == pytest.approx(0.8)  # a candidate for the fastest to the target
    assert result.job_s == pytest.approx(3.0 + 0.4 + 0.4 + 0.1 + 0.1)


def test_a_stretch_stops_at_its_share_of_steps_or_of_time_after_its_few_steps(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(job.time, "perf_counter", lambda: now[0])
    by_steps = Stretch(Pass("p", 100), share_s=None, share_steps=3, tick=lambda: None)
    assert [by_steps.on_step(4) for _ in range(3)] == [False, False, True] and by_steps.p.stopped_by == "max_steps"
    by_time = Stretch(Pass("p", 100), share_s=1.0, share_steps=None, tick=lambda: None)
    stops = []
    for _ in range(job.MIN_PASS_STEPS + 1):
        now[0] += 0.5  # past its time after 2 steps: it still runs its few steps
        stops.append(by_time.on_step(4))
    assert stops.index(True) == job.MIN_PASS_STEPS - 1 and by_time.p.stopped_by == "max_seconds"
    assert by_time.p.step_s == [0.5] * (job.MIN_PASS_STEPS + 1)


def test_a_stopped_pass_shuts_its_dataloader_workers_down_inside_its_time():
    events = []

    class Loader:
        def __iter__(self):
            try:
                for i in range(100):
                    yield torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
            finally:
                events.append("workers gone")

    stretch = Stretch(Pass("p", 100), share_s=None, share_steps=2, tick=lambda: None)
    batches = stretch.batches(Loader(), torch.device("cpu"))
    for _ in batches:
        if stretch.on_step(4):
            break
    assert events == []
    batches.close()
    assert events == ["workers gone"]


def test_the_start_up_probe_builds_the_datasets_on_a_copy_and_never_downloads_a_missing_file(mini: Path, monkeypatch):
    cache_dir = str(prepare_cifar10(mini, verify=False, download=False).cache_dir)
    startup = job.startup_seconds("default", cache_dir)
    assert startup["job_import_s"] > startup["job_dataset_s"] > 0 and startup["warnings"] == []  # 984 images: ms
    assert [p.name for p in Path(cache_dir).parent.iterdir() if p.name.startswith("tutorial-data-")] == []  # removed
    monkeypatch.setattr(job, "PYTHON_COPY", job.PYTHON_COPY + "; (Path(sys.argv[2]) / 'test_batch').unlink()")
    with pytest.raises(RuntimeError, match=r"before training: FileNotFoundError: .*No such file.*test_batch"):
        job.startup_seconds("default", cache_dir)  # not torchvision's download, which would name the URL


def test_where_the_copy_cannot_be_written_the_start_up_counts_the_imports_and_says_what_it_left_out(mini: Path,
                                                                                                    monkeypatch):
    cache_dir = str(prepare_cifar10(mini, verify=False, download=False).cache_dir)
    monkeypatch.setattr(job, "PYTHON_COPY", "raise OSError(28, 'No space left on device')")
    startup = job.startup_seconds("default", cache_dir)
    assert startup["job_import_s"] > 0 and startup["job_dataset_s"] is None
    [warning] = startup["warnings"]
    assert "not built in the job's start-up (OSError: [Errno 28] No space left on device)" in warning
    passes = [_pass(3, [0.2, 0.1, 0.1]), _pass(3, [0.2, 0.1, 0.1]), _pass(1, [0.1]), _pass(1, [0.1])]
    result = _job_result(passes, import_s=startup["job_import_s"], peek_s=0.0)  # no datasets: the imports alone
    assert result.job_dataset_s is None and result.job_startup_s == pytest.approx(startup["job_import_s"] + 1.0)


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
    assert re.fullmatch(r"\*\*The tutorial's job \(its script as published: imports and datasets, 2 epochs at batch 4 through its "
                        r"DataLoader, then its two test passes\) takes [\d.]+ s on cpu, \d+ threads, measured whole, "
                        r"and reaches [\d.]+% test accuracy\.\*\*", first), first
    # a fresh interpreter's imports count, and torchvision's CIFAR10 built twice on a copy of the data
    assert job.job_import_s > 0 and job.job_dataset_s > 0
    assert job.job_startup_s > job.job_import_s + job.job_dataset_s
    assert len(job.class_accuracy_pct) == 10  # from the tutorial's per-class pass
    assert f"{job.test_accuracy_pct:.1f}% test accuracy" in first
    assert re.search(r"- Cost on cpu: the tutorial's job \$[\d.e-]+, an epoch at its fastest configuration", md)
    assert (out / "job.png").is_file() and (out / "cost.png").is_file() and "![Cost per device](cost.png)" in md


def test_a_job_within_a_budget_samples_every_pass_and_states_its_interval_first(mini: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_bench("run", "--dataset", "cifar10", "--data-dir", str(mini), "--no-verify", "--devices", "cpu",
                     "--modes", "train", "--pipelines", "resident", "--batch-sizes", "32", "--threads", "1",
                     "--epochs", "1", "--max-steps", "40", "--out", str(out), timeout=400)
    assert proc.returncode == 0, proc.stderr
    [job] = [r for r in RunFolder(out).results() if r.case.mode == JOB]
    assert job.status == "ok" and job.job_projected is True and job.stopped_by == "max_steps"
    assert job.steps == 40  # 10 steps in each of the four passes, its start included
    assert job.job_s_low < job.job_s < job.job_s_high
    first = (out / "report.md").read_text().split("\n")[2]
    assert re.search(r"takes about [\d.]+ s on cpu, \d+ threads \(95% sampling interval [\d.]+ s - [\d.]+ s, projected from "
                     r"the [\d.]+% of it measured", first), first


def test_a_job_within_a_time_budget_is_sampled_in_sittings_and_reported_as_one(mini: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_bench("run", "--dataset", "cifar10", "--data-dir", str(mini), "--no-verify", "--devices", "cpu",
                     "--modes", "train", "--pipelines", "resident", "--batch-sizes", "32", "--threads", "1",
                     "--epochs", "1", "--max-seconds", "0.5", "--warmup-steps", "2", "--out", str(out), timeout=400)
    assert proc.returncode == 0, proc.stderr
    keys = [r.case.key for r in RunFolder(out).results()]
    sittings = [k for k in keys if k.startswith("job/")]
    assert sittings == [f"job/cpu/tutorial/b4/tauto/w1/r{k}/malloc-tuned" for k in range(JOB_SITTINGS)]
    assert keys[0] == sittings[0] and keys[-1] == sittings[-1]  # around the sweep's Cases
    results = [r for r in RunFolder(out).results() if r.case.mode == JOB]
    assert all(r.status == "ok" and r.job_projected and r.case.max_seconds == pytest.approx(0.5 / JOB_SITTINGS)
               for r in results)
    first = (out / "report.md").read_text().split("\n")[2]
    middle = float(np.median([r.job_s for r in results]))  # the sittings are combined by their median
    assert re.search(rf"takes about [\d.]+ s on cpu, \d+ threads \(95% of runs within [\d.]+ s - [\d.]+ s, projected from "
                     rf"{JOB_SITTINGS} sittings spread over the sweep", first), first
    assert first.count("takes about") == 1 and answer.duration(middle) in first  # one job, their median
