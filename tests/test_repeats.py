"""bench/analysis/repeats.py: a Case's processes (--repeats) as one figure whose interval covers how processes differ."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.analysis import compare, repeats, tables
from bench.report import findings


def _row(batch: int, repeat: int, rate: float | None, status: str = "ok", run: str = "run-a", windows=3, **kw):
    return {"key": f"train/cpu/resident/b{batch}/t1/w1/r{repeat}", "run_id": run, "status": status, "mode": "train",
            "device": "cpu", "pipeline": "resident", "batch_size": batch, "threads": 1, "width": 1.0,
            "repeat": repeat, "images_per_s": rate, "images_per_s_p25": rate and rate * 0.99,
            "images_per_s_p75": rate and rate * 1.01, "images_per_s_spread_pct": 2.0,
            "images_per_s_ci_low": rate and rate * 0.995, "images_per_s_ci_high": rate and rate * 1.005,
            "images_per_s_ci_pct": 0.5, "windows_s": [0.1] * windows if rate else [], "stopped_by": "precise",
            "contended": False, "warnings": [], "dataset": "synthetic", "error": None, "step_ms_p50": 10.0 + repeat,
            "test_accuracy_pct": np.nan, **kw}


@pytest.mark.parametrize("dof, exact", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (5, 2.5706), (8, 2.3060),
                                        (20, 2.0860), (60, 2.0003)])
def test_t95_is_students(dof, exact):
    assert repeats.t95(dof) == pytest.approx(exact, rel=2e-3)


@pytest.fixture
def runs() -> pd.DataFrame:
    # batch 32: three processes at 900, 1000, 1100; batch 128: 2000, 2000 and one that failed; batch 512 once
    return pd.DataFrame([_row(32, 0, 900.0), _row(32, 1, 1000.0), _row(32, 2, 1100.0),
                         _row(128, 0, 2000.0), _row(128, 1, 2000.0), _row(128, 2, None, status="oom", error="oom"),
                         _row(512, 0, 3000.0)])


def test_repeats_become_one_figure_with_the_pooled_spread_between_processes(runs):
    out = repeats.collapse(runs).set_index("key")
    logs32 = np.log([900.0, 1000.0, 1100.0])
    dof = 2 + 1  # (3 - 1) + (2 - 1)
    sd = math.sqrt((((logs32 - logs32.mean()) ** 2).sum() + 0.0) / dof)
    b32 = out.loc["train/cpu/resident/b32/t1/w1"]
    assert b32["images_per_s"] == pytest.approx(math.exp(logs32.mean()))
    half = repeats.t95(dof) * sd / math.sqrt(3)
    assert b32["images_per_s_ci_low"] == pytest.approx(math.exp(logs32.mean() - half))
    assert b32["images_per_s_ci_high"] == pytest.approx(math.exp(logs32.mean() + half))
    assert b32["processes"] == 3 and len(b32["windows_s"]) == 9 and b32["step_ms_p50"] == 11.0
    assert b32["between_process_pct"] == pytest.approx(100 * (math.exp(sd) - 1))
    # two equal processes still get the machine's spread: their agreement is luck as much as precision
    b128 = out.loc["train/cpu/resident/b128/t1/w1"]
    assert b128["images_per_s"] == pytest.approx(2000) and b128["processes"] == 2
    assert b128["images_per_s_ci_high"] / 2000 == pytest.approx(math.exp(repeats.t95(dof) * sd / math.sqrt(2)))
    # the failed repeat is named in the Case's warnings; a Case measured once keeps its own interval
    assert b128["warnings"] == ["repeat 2 ended as oom: oom"]
    once = out.loc["train/cpu/resident/b512/t1/w1"]
    assert once["processes"] == 1 and once["images_per_s_ci_low"] == pytest.approx(3000 * 0.995)
    assert len(out) == 3


def test_collapsing_twice_changes_nothing_and_a_run_without_repeats_only_gains_the_count(runs):
    once = repeats.collapse(runs)
    pd.testing.assert_frame_equal(repeats.collapse(once), once)
    single = runs[runs["repeat"] == 0]
    out = repeats.collapse(single)
    assert list(out["key"]) == [k.removesuffix("/r0") for k in single["key"]] and out["processes"].tolist() == [1, 1, 1]
    pd.testing.assert_frame_equal(repeats.collapse(pd.concat([single, single])), out)  # one run folder given twice


def test_the_analysis_no_longer_takes_the_best_of_the_repeats(runs):
    best = tables.analyse(runs).best.set_index("batch_size")
    assert best.loc[32, "images_per_s"] == pytest.approx(math.exp(np.log([900.0, 1000.0, 1100.0]).mean()))
    assert best.loc[32, "images_per_s"] < 1100


def test_compare_matches_repeated_cases_by_their_figure_over_processes(runs):
    slower = runs.assign(images_per_s=runs["images_per_s"] * 0.5, images_per_s_ci_low=runs["images_per_s_ci_low"] * 0.5,
                         images_per_s_ci_high=runs["images_per_s_ci_high"] * 0.5, run_id="run-b")
    table = compare.compare_runs(runs, slower).table.set_index("key")
    assert table.loc["train/cpu/resident/b32/t1/w1", "verdict"] == "REGRESSION"
    assert table.loc["train/cpu/resident/b32/t1/w1", "ratio"] == pytest.approx(0.5)
    # a 5% step between runs lies inside the spread of the processes: no difference
    near = runs.assign(images_per_s=runs["images_per_s"] * 0.95, run_id="run-b")
    assert compare.compare_runs(runs, near, threshold_pct=3).table.set_index("key").loc[
        "train/cpu/resident/b32/t1/w1", "verdict"] != "REGRESSION"


def test_the_caveat_says_what_the_intervals_cover(runs):
    single = tables.analyse(runs[runs["repeat"] == 0])
    assert any("measured in one process" in c for c in findings.verdict(single).caveats)
    several = findings.verdict(tables.analyse(runs)).caveats
    assert any("2 Cases were measured in 2-3 processes" in c and "pooled" in c for c in several)


def test_compare_finds_a_case_whose_repeats_all_failed_and_matches_runs_of_different_repeat_counts(runs):
    failed = runs.assign(status="oom", images_per_s=None, error="out of memory", run_id="run-b")
    table = compare.compare_runs(runs, failed).table.set_index("key")
    assert table.loc["train/cpu/resident/b32/t1/w1", "verdict"] == "REGRESSION: was ok, now oom"
    once = runs[runs["repeat"] == 0].assign(run_id="run-b")
    table = compare.compare_runs(runs, once).table.set_index("key")
    assert table.loc["train/cpu/resident/b32/t1/w1", "ratio"] == pytest.approx(900 / math.exp(np.log([900.0, 1000.0, 1100.0]).mean()))


def test_the_spread_between_processes_is_pooled_per_device():
    rows = [_row(32, r, rate) for r, rate in enumerate([900.0, 1000.0, 1100.0])]
    rows += [dict(_row(32, r, rate), device="cuda:0", key=f"train/cuda:0/resident/b32/t1/w1/r{r}")
             for r, rate in enumerate([50000.0, 50010.0, 49990.0])]
    out = repeats.collapse(pd.DataFrame(rows)).set_index("device")
    assert out.loc["cpu", "between_process_pct"] > 5 and out.loc["cuda:0", "between_process_pct"] < 0.1


def _sitting(repeat: int, job_s: float, low: float, high: float, rate: float = 1500.0) -> dict:
    return {**_row(4, repeat, rate), "key": f"job/cpu/tutorial/b4/tauto/w1/r{repeat}/malloc-tuned", "mode": "job",
            "pipeline": "tutorial", "threads": np.nan, "job_s": job_s, "job_s_low": low, "job_s_high": high,
            "job_startup_s": 5.0, "job_import_s": 4.0, "job_data_s": job_s * 0.3, "job_compute_s": job_s * 0.6,
            "job_eval_s": job_s * 0.1 - 5.0, "job_fraction": 0.03, "job_projected": True}


def test_a_job_sampled_in_sittings_is_their_median_with_where_95_percent_of_runs_land():
    times = [150.0, 160.0, 171.0, 155.0, 165.0]
    rows = [_sitting(r, t, t - 3, t + 3) for r, t in enumerate(times)]
    [job] = repeats.collapse(pd.DataFrame(rows)).to_dict("records")
    half = repeats.t95(4) * 1.4826 * 5.0 * math.sqrt(1 + 1 / 5)  # a prediction interval for one run; MAD 5
    assert job["key"] == "job/cpu/tutorial/b4/tauto/w1/malloc-tuned" and job["job_sittings"] == 5
    assert job["job_s"] == pytest.approx(160.0) and job["job_data_s"] == pytest.approx(48.0)  # the median sitting's
    assert (job["job_s_low"], job["job_s_high"]) == (pytest.approx(160.0 - half), pytest.approx(160.0 + half))
    assert job["job_fraction"] == pytest.approx(0.15)  # measured in all
    # one sitting that caught a stall of seconds in its stretch moves neither the time nor the interval much
    stalled = [_sitting(r, t, t - 3, t + 3) for r, t in enumerate([121.3, 117.7, 124.0, 122.1, 952.6])]
    [job] = repeats.collapse(pd.DataFrame(stalled)).to_dict("records")
    assert job["job_s"] == pytest.approx(122.1) and 110 < job["job_s_low"] < 122.1 < job["job_s_high"] < 135
    # an even count: the two middle sittings' mean, parts and all
    [job] = repeats.collapse(pd.DataFrame(rows[:4])).to_dict("records")
    assert job["job_s"] == pytest.approx(157.5) and job["job_data_s"] == pytest.approx(157.5 * 0.3)
    # sittings that agree better than each one's sampling says: the interval is the sampling's, for their mean
    rows = [_sitting(r, 160.0, 140.0, 180.0) for r in range(4)]
    [job] = repeats.collapse(pd.DataFrame(rows)).to_dict("records")
    assert (job["job_s_low"], job["job_s_high"]) == (pytest.approx(150.0), pytest.approx(170.0))
    jobs = tables.job_table(repeats.collapse(pd.DataFrame(rows)))
    assert jobs["job_sittings"].tolist() == [4]


def test_job_sittings_stay_out_of_the_spread_pooled_for_the_cases():
    cases = [_row(32, r, rate) for r, rate in enumerate([1000.0, 1001.0, 999.0])]
    sittings = [_sitting(r, 160.0, 150.0, 170.0, rate) for r, rate in enumerate([800.0, 1600.0, 1200.0])]
    alone = repeats.collapse(pd.DataFrame(cases)).set_index("key")
    beside = repeats.collapse(pd.DataFrame(cases + sittings)).set_index("key")
    key = "train/cpu/resident/b32/t1/w1"
    assert beside.loc[key, "images_per_s_ci_pct"] == pytest.approx(alone.loc[key, "images_per_s_ci_pct"])
