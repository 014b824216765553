"""The input bound (bench/measuring/input_bound.py, bench/analysis/bound.py, bench/report/bound.py): the tutorial's
DataLoader alone at each batch size, planned where the sweep trains through it, measured as a Case, and stated as the
most any GPU could give where only a CPU was measured, or beside a GPU's figure."""
from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from bench import cli
from bench.analysis import tables
from bench.report import findings as sentences
from bench.running import worker
from bench.schema import INPUT
from bench.sweep.plan import estimate_seconds, plan_cases
from bench.sweep.spec import with_defaults
from cnn import data
from test_analysis import _row

SPEC = with_defaults(devices=["cpu"], batch_sizes=[4, 32], threads=[1, 2], pipelines=["tutorial", "resident"],
                     widths=[1.0], modes=["train", "infer"], job=False, max_seconds=2.0, precision_pct=None)


def test_the_dataloader_alone_is_planned_first_at_each_batch_size_where_the_sweep_trains_through_it():
    cases = plan_cases(SPEC, "/c", "synthetic")
    inputs = [c for c in cases if c.mode == INPUT]
    assert [c.key for c in inputs] == ["input/cpu/tutorial/b4/tauto/w1/r0", "input/cpu/tutorial/b32/tauto/w1/r0"]
    assert cases[:2] == inputs and all(c.num_workers == SPEC.num_workers and c.threads is None for c in inputs)
    for spec in (replace(SPEC, input_bound=False), replace(SPEC, pipelines=["resident"]),
                 replace(SPEC, modes=["infer"])):
        assert not [c for c in plan_cases(spec, "/c", "synthetic") if c.mode == INPUT]
    on_gpu = plan_cases(replace(SPEC, devices=["cuda:0"]), "/c", "synthetic")  # the host feeds the GPU: measured there
    assert [c.device for c in on_gpu if c.mode == INPUT] == ["cpu", "cpu"]
    # within the budget, with no accuracy pass: 0.15 s of process and its 2 s
    assert estimate_seconds(inputs)[0] == pytest.approx(estimate_seconds([])[0] + 2 * 2.15)


def test_no_input_bound_from_argv():
    assert cli.build_spec(cli.get_parser().parse_args(["run"]), n_cuda=0).input_bound is True
    assert cli.build_spec(cli.get_parser().parse_args(["run", "--no-input-bound"]), n_cuda=0).input_bound is False


def test_an_input_case_times_the_dataloader_alone_in_windows():
    small = data.prepare_synthetic(n_train=160, n_test=32)
    case = [c for c in plan_cases(replace(SPEC, batch_sizes=[8], max_seconds=None, max_steps=14, warmup_steps=2,
                                          window_s=0.0, num_workers=1), str(small.cache_dir), "synthetic")
            if c.mode == INPUT][0]
    result = worker.run_case(case)
    assert result.status == "ok", result.error
    assert result.steps == 14 and result.images == 14 * 8 and result.images_per_s > 0
    assert sum(result.windows_images) == 12 * 8  # the warm-up's batches kept out, as a training Case's
    assert result.test_accuracy_pct is None  # no model


def _frame(*extra) -> pd.DataFrame:
    return pd.DataFrame([
        _row("cpu", "tutorial", 4, 2400.0, mode=INPUT, images_per_s_ci_low=2300.0, images_per_s_ci_high=2500.0),
        _row("cpu", "tutorial", 32, 9800.0, mode=INPUT, images_per_s_ci_low=9500.0, images_per_s_ci_high=10000.0),
        _row("cpu", "tutorial", 4, 1500.0, threads=1), _row("cpu", "tutorial", 4, 1200.0, threads=2),
        _row("cpu", "tutorial", 32, 4900.0, threads=2), _row("cpu", "resident", 4, 3000.0, threads=2), *extra])


def test_where_only_a_cpu_was_measured_the_first_answer_is_the_most_a_gpu_could_give():
    a = tables.analyse(_frame())
    bound = a.input_bound.set_index("batch_size")
    assert bound.loc[4, "bound"] == pytest.approx(2400 / 1500)  # against the best CPU over threads
    assert bound.loc[32, "bound"] == pytest.approx(2.0)
    assert INPUT not in set(a.best["mode"])  # not a training configuration of its own
    v = sentences.verdict(a)
    assert v.headline == ("Only cpu was measured, so this run cannot say how much a GPU helps, but it bounds it: at "
                          "the tutorial's own settings (tutorial pipeline), even an infinitely fast GPU could make the "
                          "tutorial's training at most 1.60x faster on this machine: its DataLoader alone delivers "
                          "2,400 images/s (batch 4, 2,300-2,500 at 95%) against the CPU's 1,500 training through it.")
    assert ("Input bound by batch size (the tutorial's DataLoader alone against the CPU's best training through it; "
            "the most any GPU could speed the tutorial pipeline up here): batch 4: 2,400 vs 1,500 images/s, at most "
            "1.60x; batch 32: 9,800 vs 4,900 images/s, at most 2.00x.") in v.findings


def test_beside_a_gpu_the_report_gives_its_share_of_the_dataloaders_rate_and_flags_one_above_it():
    a = tables.analyse(_frame(_row("cuda:0", "tutorial", 4, 1900.0), _row("cuda:0", "tutorial", 32, 11000.0)))
    gpu = a.input_bound.dropna(subset=["device"]).set_index("batch_size")
    assert gpu.loc[4, "share_of_bound"] == pytest.approx(1900 / 2400)
    found = [f for f in sentences.verdict(a).findings if f.startswith("Input bound (cuda:0")]
    assert found == ["Input bound (cuda:0, tutorial pipeline): its training rate against what the DataLoader alone "
                     "delivers on this host: batch 4: 1,900 of 2,400 images/s (79%); batch 32: 11,000 of 9,800 "
                     "images/s (112%, above the DataLoader's own rate: measured apart, they disagree)."]


def test_without_an_input_case_the_cpu_only_answer_is_as_before():
    frame = _frame()
    v = sentences.verdict(tables.analyse(frame[frame["mode"] != INPUT]))
    assert v.headline.startswith("Only cpu was measured, so this run cannot say whether a GPU helps")
