"""SweepSpec -> the list of Cases, and how long they may take."""
from __future__ import annotations

import math

from bench.schema import Case, SweepSpec

STARTUP_S = 1.5  # a Case's own start, data and model set-up, measured on a 2-core machine


def effective_lr(lr: float, scaling: str, batch_size: int) -> float:
    """The learning rate for a batch size, scaled relative to the tutorial's batch 4."""
    if scaling == "linear":
        return lr * batch_size / 4
    if scaling == "sqrt":
        return lr * math.sqrt(batch_size / 4)
    return lr


def plan_cases(spec: SweepSpec, data_cache: str, dataset: str, run_id: str = "") -> list[Case]:
    """Every point of the sweep, devices outer, batch sizes inner; CPU threads only on CPUs."""
    cases = []
    for device in spec.devices:
        threads_axis = spec.threads if device == "cpu" else [None]
        for mode in spec.modes:
            for pipeline in spec.pipelines:
                for width in spec.widths:
                    for threads in threads_axis:
                        for batch_size in spec.batch_sizes:
                            for repeat, amp, memory_format, graphs, world in _variants(spec, device, mode,
                                                                                       pipeline):
                                cases.append(Case(
                                    mode=mode, device=device, pipeline=pipeline, batch_size=batch_size,
                                    threads=threads, width=width, repeat=repeat, epochs=spec.epochs,
                                    max_steps=spec.max_steps, max_seconds=spec.max_seconds,
                                    time_limit_s=spec.time_limit_s,
                                    lr=effective_lr(spec.lr, spec.lr_scaling, batch_size * world),
                                    seed=spec.seed, world_size=world,
                                    target_accuracy_pct=spec.target_accuracy_pct, num_workers=spec.num_workers,
                                    warmup_steps=spec.warmup_steps, window_s=spec.window_s,
                                    latency_batches=spec.latency_batches, dataset=dataset,
                                    data_cache=data_cache, run_id=run_id, amp=amp,
                                    memory_format=memory_format, cuda_graphs=graphs))
    return cases


def _variants(spec: SweepSpec, device: str, mode: str, pipeline: str):
    """(repeat, amp, memory format, CUDA graphs, world size) for one point; each only where it applies:
    graphs on the resident pipeline's eager training step on a CUDA device, beside it; world sizes
    above 1 (data-parallel training) in train mode, without graphs."""
    graphs = [False, True] if spec.cuda_graphs and device.startswith("cuda") and pipeline == "resident" \
        and mode == "train" else [False]
    worlds = spec.world_sizes if mode == "train" else [1]
    for repeat in range(spec.repeats):
        for amp in spec.amp:
            for memory_format in spec.memory_formats:
                for world in worlds:
                    for g in graphs if world == 1 else [False]:
                        yield repeat, amp, memory_format, g, world


def oversubscription(case: Case, physical_cores: int) -> str | None:
    """A warning when a data-parallel CPU Case asks for more threads in all than the cores there are."""
    if case.device != "cpu" or case.world_size == 1 or case.threads is None:
        return None
    total = case.world_size * case.threads
    if total <= physical_cores:
        return None
    return (f"{case.world_size} ranks x {case.threads} threads = {total} threads on {physical_cores} physical "
            f"cores: the ranks compete for cores")


def oversubscription_warnings(cases: list[Case], physical_cores: int) -> list[str]:
    """The distinct oversubscription warnings of a plan, for the plan and the run to print."""
    return sorted({w for c in cases if (w := oversubscription(c, physical_cores))})


def estimate_seconds(cases: list[Case]) -> tuple[float, bool]:
    """(seconds, bounded): an upper bound when every Case has --max-seconds, else by the time limits."""
    total, bounded = 0.0, True
    for case in cases:
        if case.max_seconds is not None:
            evals = 1 if case.mode == "infer" else case.epochs
            total += STARTUP_S * case.world_size + case.max_seconds + 0.5 * evals
        else:
            bounded = False
            total += case.time_limit_s
    return total, bounded
