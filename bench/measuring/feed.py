"""A Case's input: the batches of its pipeline (the tutorial's DataLoader, or tensors resident on the device), one
rank's part of each epoch for a data-parallel rank, in the Case's memory format."""
from __future__ import annotations

import math

import numpy as np
import torch

from bench.measuring import devices, timing
from bench.schema import Case
from cnn import loops, normalised


def memory_format(case: Case) -> torch.memory_format:
    return torch.channels_last if case.memory_format == "channels_last" else torch.contiguous_format


def amp_dtype(case: Case) -> torch.dtype | None:
    return torch.bfloat16 if case.amp == "bf16" else None


def resident_tensors(case: Case, split: str, images: np.ndarray, labels: np.ndarray,
                     compute: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cnn.loops.resident_tensors of the split's first len(images) images; on a CPU copied from the normalised
    copy the sweep cached beside the data (cnn/normalised.py) when there is a trusted one: the same numbers,
    without each Case spending most of a second decoding them.

    Copied into the process's own memory, as a plain script's decoded tensor is, not used where it is mapped: the
    file's pages are 4 KiB pages of the page cache, while a large anonymous block can be backed by huge pages, and
    with glibc handing blocks back every step (--malloc default) the gathers from the mapped file ran 5-8% slower
    (tests/perf/harness_vs_minimal.py: the harness at 0.88-1.01 of a plain loop, median 0.95, before this copy)."""
    # the Case's device decides, not where its tensors are placed (the same, but for the fake CUDA layer's tests)
    cached = normalised.load(case.data_cache, split) if torch.device(case.device).type == "cpu" else None
    if cached is None or len(cached) < len(images):
        return loops.resident_tensors(images, labels, compute)
    return torch.from_numpy(cached[:len(images)]).clone(), torch.from_numpy(np.asarray(labels, dtype=np.int64))


def pipeline_batches(case: Case, split: str, images: np.ndarray, labels: np.ndarray, classes, device: torch.device,
             train: bool, meter: timing.StepMeter, shard: tuple[int, int] | None = None):
    """(epoch -> batches, item_every_step, resident tensors or None) for the Case's pipeline; with
    `shard` (rank, world size) a rank's part of each epoch (see cnn.loops).

    The time spent waiting for a batch counts as data wait where there is an input pipeline to
    wait for: the tutorial's DataLoader, and the resident gather on a CPU (computed on the spot).
    On CUDA the resident gather is only queued, and a wait there would be the launch queue being
    full, not input, so it is not counted (data_wait_pct stays empty)."""
    compute = devices.placement(device)
    if case.pipeline == "tutorial":
        cuda = device.type == "cuda"
        loader = loops.tutorial_loader(images, labels, classes, case.batch_size, shuffle=train,
                                       num_workers=case.num_workers, pin_memory=cuda, seed=case.seed, shard=shard)

        def tutorial_epoch(epoch: int):
            if shard is not None:
                loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
            return loops.tutorial_batches(meter.batches(loader), compute, non_blocking=cuda,
                                          memory_format=memory_format(case))
        return tutorial_epoch, True, None
    x, y = resident_tensors(case, split, images, labels, compute)
    x = x.contiguous(memory_format=memory_format(case))
    generator = torch.Generator(device=compute).manual_seed(case.seed)  # the same permutation on every rank
    waited = meter.batches if device.type == "cpu" else iter
    return (lambda epoch: waited(loops.resident_batches(x, y, case.batch_size, generator, shuffle=train,
                                                        shard=shard))), False, (x, y)


def steps_per_epoch(case: Case, n_images: int, shard: tuple[int, int] | None = None) -> int:
    """Steps in one epoch of the Case's pipeline, of one rank's part with `shard`: a DistributedSampler
    pads each rank to ceil(n / world) images, the resident shards drop the remainder."""
    if shard is None:
        return math.ceil(n_images / case.batch_size)
    world = shard[1]
    per_rank = math.ceil(n_images / world) if case.pipeline == "tutorial" else n_images // world
    return math.ceil(per_rank / case.batch_size)
