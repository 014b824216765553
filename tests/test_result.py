"""bench/result.py: a Result assembled in one place from what a Case's stages return."""
from __future__ import annotations

import pytest

from bench.result import Result, assemble
from bench.schema import Case


def _case() -> Case:
    return Case(mode="train", device="cpu", pipeline="resident", batch_size=4, threads=1, width=1.0, repeat=0,
                epochs=1, max_steps=10, max_seconds=None, time_limit_s=60.0, lr=0.001, seed=0,
                target_accuracy_pct=50.0, num_workers=0, warmup_steps=1, window_s=0.1, latency_batches=5,
                dataset="synthetic", data_cache="/c")


def test_the_stages_parts_make_one_result_and_their_warnings_add_up_in_order():
    result = assemble(_case(), {"images_per_s": 900.0, "warnings": ["few windows"]}, {"loss": 1.5},
                      {"warnings": ["contended"], "status": "ok"})
    assert result == Result(case=_case(), images_per_s=900.0, loss=1.5, warnings=["few windows", "contended"])


def test_a_field_two_stages_give_is_a_bug_said_at_once():
    with pytest.raises(ValueError, match="'startup_s'"):
        assemble(_case(), {"startup_s": 1.0}, {"startup_s": 2.0})


def test_a_field_the_result_has_not_is_a_bug_said_at_once():
    with pytest.raises(TypeError, match="'images_per_sec'"):
        assemble(_case(), {"images_per_sec": 900.0})
