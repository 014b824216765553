from __future__ import annotations

import math

import pytest

from bench.result import SCHEMA_VERSION, Result
from bench.schema import Case, SweepSpec
from bench.sweep.plan import REPORT_S, SWEEP_SETUP_S, effective_lr, estimate_seconds, plan_cases
from bench.sweep.spec import with_defaults


def _spec(**kw) -> SweepSpec:
    base = dict(devices=["cpu", "cuda"], batch_sizes=[4, 32], threads=[1, 2], pipelines=["tutorial", "resident"],
                widths=[1.0], modes=["train", "infer"], max_seconds=5.0, job=False, precision_pct=None, window_s=0.5,
                input_bound=False)
    return with_defaults(**{**base, **kw})


def test_threads_are_swept_on_the_cpu_only():
    cases = plan_cases(_spec(), data_cache="/c", dataset="synthetic")
    cpu = [c for c in cases if c.device == "cpu"]
    cuda = [c for c in cases if c.device == "cuda"]
    assert len(cpu) == 2 * 2 * 2 * 2 and len(cuda) == 2 * 2 * 2
    assert {c.threads for c in cuda} == {None} and {c.threads for c in cpu} == {1, 2}


def test_keys_are_unique_and_stable():
    cases = plan_cases(_spec(repeats=2), data_cache="/c", dataset="synthetic")
    keys = [c.key for c in cases]
    assert len(set(keys)) == len(keys)
    assert "train/cpu/tutorial/b4/t1/w1/r0" in keys and "infer/cuda/resident/b32/tauto/w1/r1" in keys
    assert plan_cases(_spec(repeats=2, seed=9), data_cache="/other", dataset="cifar10")[0].key == keys[0]


def test_lr_scaling_is_relative_to_batch_4():
    assert effective_lr(0.001, "none", 512) == 0.001
    assert effective_lr(0.001, "linear", 32) == 0.008
    assert math.isclose(effective_lr(0.001, "sqrt", 64), 0.004)
    cases = plan_cases(_spec(lr_scaling="linear"), data_cache="/c", dataset="synthetic")
    assert {c.batch_size: c.lr for c in cases} == {4: 0.001, 32: 0.008}


def test_estimate_is_bounded_only_with_max_seconds():
    cases = plan_cases(_spec(devices=["cpu"]), data_cache="/c", dataset="synthetic")
    seconds, bounded = estimate_seconds(cases)
    assert bounded and seconds >= len(cases) * 5
    cases = plan_cases(_spec(devices=["cpu"], max_seconds=None, time_limit_s=60), data_cache="/c", dataset="s")
    assert estimate_seconds(cases) == (SWEEP_SETUP_S + REPORT_S + len(cases) * 60, False)


def test_result_round_trips_through_one_flat_json_line():
    case = plan_cases(_spec(), data_cache="/c", dataset="synthetic", run_id="run-1")[0]
    result = Result(case=case, images_per_s=123.0, windows_s=[0.5, 0.5], class_accuracy_pct={"cat": 50.0})
    record = result.to_dict()
    assert record["key"] == case.key and record["run_id"] == "run-1" and record["schema_version"] == SCHEMA_VERSION
    assert record["window_s"] == case.window_s and record["windows_s"] == [0.5, 0.5]
    assert Result.from_dict(record) == result
    assert isinstance(Result.from_dict({**record, "a_future_field": 1}).case, Case)


def test_variants_multiply_cases_and_graphs_apply_to_cuda_resident_training_only():
    spec = _spec(amp=["off", "bf16"], memory_formats=["contiguous", "channels_last"], cuda_graphs=True)
    cases = plan_cases(spec, data_cache="/c", dataset="synthetic")
    plain = plan_cases(_spec(), data_cache="/c", dataset="synthetic")
    graphed = [c for c in cases if c.cuda_graphs]
    assert {(c.device, c.pipeline, c.mode) for c in graphed} == {("cuda", "resident", "train")}
    assert len(graphed) == 2 * 2 * 2  # batch sizes x amp x memory formats
    assert len(cases) == 4 * len(plain) + len(graphed)
    assert len({c.key for c in cases}) == len(cases)
    assert "train/cuda/resident/b4/tauto/w1/r0/amp-bf16/channels-last/graphs" in {c.key for c in cases}
    assert {c.key for c in plain} <= {c.key for c in cases}  # the plain keys did not change


def test_repeats_run_round_robin_and_the_estimate_spans_precise_to_whole_budget():
    cases = plan_cases(_spec(devices=["cpu"], repeats=2, max_seconds=10.0, window_s=0.5, precision_pct=2.0),
                       data_cache="/c", dataset="synthetic")
    half = len(cases) // 2
    assert {c.repeat for c in cases[:half]} == {0} and {c.repeat for c in cases[half:]} == {1}
    assert [c.key.replace("/r1", "/r0") for c in cases[half:]] == [c.key for c in cases[:half]]
    least, _ = estimate_seconds(cases, precise=True)
    most, bounded = estimate_seconds(cases)
    assert bounded and most - least == pytest.approx(len(cases) * (10.0 - 8 * 0.5))
