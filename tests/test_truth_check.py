"""The truth check's own reference (tests/perf/harness_vs_minimal.py): its minimal loop times full batches only, epoch
after epoch, as many steps as asked, as the harness's windows do; a span that ended at the data's end took in the
partial last batch (a new shape, autotuned by cuDNN inside the span on a GPU) and fewer steps than asked."""
from __future__ import annotations

import importlib.util

from cnn import data
from conftest import ROOT


def _truth_check():
    spec = importlib.util.spec_from_file_location("harness_vs_minimal", ROOT / "tests/perf/harness_vs_minimal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_minimal_loop_times_full_batches_over_epochs_for_every_step_asked():
    truth = _truth_check()
    small = data.prepare_synthetic(n_train=100, n_test=20)  # at batch 32: 3 full batches and one of 4 an epoch
    for pipeline in ("resident", "tutorial"):
        rate, faults, images, steps = truth.minimal_run(str(small.cache_dir), pipeline, 32, 1, 10, 2)
        assert (steps, images) == (10, 10 * 32), pipeline  # 12 steps in all: four epochs of full batches
        assert rate > 0 and faults >= 0


def test_the_verdict_waits_for_every_round_unless_an_early_stop_is_asked_for():
    # stopping at the first interval that agrees would let chance pick the interval: by default only the last
    # round decides; --min-rounds allows a verdict (and an early stop) from that round on
    truth = _truth_check()
    assert [truth.may_decide(done, 16, None) for done in (1, 6, 15, 16)] == [False, False, False, True]
    assert [truth.may_decide(done, 16, 6) for done in (5, 6, 7)] == [False, True, True]
    assert truth.may_decide(4, 4, 8)  # a --min-rounds past --rounds waits for the last round only
    assert not truth.may_decide(1, 1, None)  # an interval needs 2 rounds
