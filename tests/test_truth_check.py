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
