"""The tutorial's own job as its asker runs it: 2 epochs at batch 4 through its DataLoader, then the test
pass; its wall time from start to accuracy, in parts.

A job Case trains through the same path as every training Case (bench/training.py), within the spec's
budget. When the budget stops it before its 2 epochs, the rest is projected from the steady throughput
its timed windows measured, and the Result says so (`job_projected`, `job_fraction`); the accuracy is
then the one reached after the measured part, never a projected one. Its tables for the report
(`job_table`, and `time_to_target` over every training Case) are in bench/analysis.py: every Case's process
imports this module, and pandas (0.46 s) has no place there.
"""
from __future__ import annotations

from bench.schema import Result


def record_job(result: Result) -> None:
    """The job's figures from a finished training Result: start-up (process, data, model), data loading
    (waiting for the DataLoader), compute, and one test pass as the tutorial runs it at the end."""
    case = result.case
    total_images = case.epochs * result.train_images
    fraction = min(result.images / total_images, 1.0) if total_images else 0.0
    projected = result.stopped_by != "epochs"
    train_s = result.train_s
    if projected:
        if not result.images_per_s:
            return  # no timed window to project from: the budget ended inside the warm-up
        train_s += (total_images - result.images) / result.images_per_s
    steady_s = train_s - (result.warmup_s or 0.0)
    data_s = steady_s * (result.data_wait_pct or 0.0) / 100
    passes = max(len(result.epoch_accuracy_pct), 1)
    result.job_startup_s = result.startup_s
    result.job_data_s = data_s
    result.job_compute_s = train_s - data_s
    result.job_eval_s = result.eval_s / passes
    result.job_s = result.job_startup_s + train_s + result.job_eval_s
    result.job_fraction = fraction
    result.job_projected = projected
