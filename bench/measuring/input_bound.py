"""The input bound: the tutorial's DataLoader alone on this host (its batch size, its workers, its transforms, no
model), timed as a training Case is, in windows of batches delivered. No accelerator can train the tutorial
pipeline faster than its input arrives, so where there is no GPU this rate over the CPU's training rate bounds what
a GPU could give, and beside a GPU's figure it says how much of the input rate the GPU used."""
from __future__ import annotations

import time

import torch

from bench.measuring.feed import pipeline_batches, steps_per_epoch
from bench.measuring.training import Progress, case_meter, throughput_fields
from bench.schema import Case
from cnn.cifar_files import CifarArrays


def run_input(case: Case, arrays: CifarArrays, started: float, progress: Progress | None) -> dict:
    """Batches of the training split through the tutorial's DataLoader, consumed as fast as they come; returns the
    throughput fields of a training Case (images/s is batches delivered)."""
    device = torch.device(case.device)
    meter = case_meter(case, device, steps_per_epoch(case, len(arrays.train_y)), progress)
    epoch_batches, _, _ = pipeline_batches(case, "train", arrays.train_x, arrays.train_y, arrays.classes, device,
                                           train=True, meter=meter)
    startup_s = time.time() - started
    for epoch in range(case.epochs):
        meter.start_epoch()
        for _, labels in epoch_batches(epoch):
            if meter.on_step(len(labels)):
                break
        meter.end_epoch()
        if meter.stopped_by:
            break
    return {"startup_s": startup_s, "epochs_completed": meter.images / len(arrays.train_y), **throughput_fields(meter)}
