"""bench/measuring/training.py: choices made around the timed loop."""
from __future__ import annotations

from dataclasses import replace

from bench.measuring import training
from bench.sweep.plan import plan_cases
from bench.sweep.spec import spec_from_keywords


def _case(batch: int, mode: str = "train"):
    spec = spec_from_keywords({"devices": ["cpu"], "batch_sizes": [str(batch)], "pipelines": ["tutorial"],
                               "modes": ["train"], "threads": ["1"], "job": False}, n_cuda=0)
    return replace(plan_cases(spec, "/c", "synthetic")[0], mode=mode)


def test_the_accuracy_pass_keeps_the_cases_batch_while_steps_follow():
    assert training.eval_batch_size(_case(4), last=False) == 4  # the next epoch's steps are timed
    assert training.eval_batch_size(_case(4), last=True) == training.EVAL_BATCH  # nothing timed follows
    assert training.eval_batch_size(_case(1024), last=True) == 1024
