"""SweepSpec -> the list of Cases, and how long they may take."""
from __future__ import annotations

import itertools
import math
from dataclasses import replace

from bench.measuring.precision import MIN_WINDOWS
from bench.schema import INPUT, JOB, VARIANTS, Case, SweepSpec

# Measured on a 2-core CPU (a --quick sweep's timeline, data cached): 4.5 s before its first Case, 2.1 s of report
SWEEP_SETUP_S = 5.0  # before the first Case: the fork server's imports (torch, torchvision), the data's check
REPORT_S = 2.0  # after the last Case: the tables, the charts, report.md and report.html
CPU_START_S = 0.15  # a CPU Case's process around its budget: fork, start-up, exit (0.13-0.15 s measured)
CUDA_START_S = 1.5  # a CUDA Case's: not yet measured on a GPU (a CUDA context alone can take a second or more)
DDP_START_S = 1.0  # the launcher and the process group of a data-parallel Case (bench check's 6 steps: 1.0-1.2 s
#                    with 2 ranks against 0.1-0.3 s in one process)
LATENCY_SHARE = 0.3  # inference's latency calls, after its throughput budget and capped by the same budget (0.2-1.2 s
#                      after the default 3 s here)
EVAL_S = 1.0  # scoring 10,000 test images at batch 500 on a 2-core CPU (0.6-1.8 s measured), after each epoch
JOB_EXTRA_S = 6.0  # a job Case beyond its budget: a fresh interpreter's imports (5.7 s of a 6.7 s --quick job here),
#                   its DataLoaders' starts and the accuracy pass
JOB_SITTINGS = 5  # processes a sampled job is measured in, spread over its device's Cases (bench/measuring/job.py)
# The tutorial's script, run as a user runs it, leaves glibc's thresholds dynamic, and a process that has freed a
# large block (decoding a data set does) keeps its training steps' blocks as the `tuned` state does: a plain
# tutorial loop at batch 4 faulted 2.3-2.4 times a step left dynamic and in `tuned`, 173-187 in `default`, and ran
# 5-11% slower there (docs/method.md: How it measures). The job is pinned in `tuned`, so it is the script's time, and no
# coin; where the C library has no mallopt it runs unpinned, as the script does, and says so.
JOB_MALLOC = "tuned"
COMPILE_S = 20.0  # torch.compile's first compilation of the step on a 2-core CPU (0.1-36 s measured)


def effective_lr(lr: float, scaling: str, batch_size: int) -> float:
    """The learning rate for a batch size, scaled relative to the tutorial's batch 4."""
    if scaling == "linear":
        return lr * batch_size / 4
    if scaling == "sqrt":
        return lr * math.sqrt(batch_size / 4)
    return lr


def plan_cases(spec: SweepSpec, data_cache: str, dataset: str, run_id: str = "") -> list[Case]:
    """Every point of the sweep, devices outer, batch sizes inner; CPU threads only on CPUs; each
    device's block opens with the tutorial's job unless the spec leaves it out."""
    common = dict(time_limit_s=spec.time_limit_s, seed=spec.seed, target_accuracy_pct=spec.target_accuracy_pct,
                  warmup_steps=spec.warmup_steps, window_s=spec.window_s, latency_batches=spec.latency_batches,
                  dataset=dataset, data_cache=data_cache, run_id=run_id, max_steps=spec.max_steps,
                  max_seconds=spec.max_seconds, target_precision_pct=spec.precision_pct,
                  eval_images=spec.eval_images)
    cases, sittings = input_cases(spec, common), []
    for device in spec.devices:
        if spec.job:
            sittings.append(job_sittings(device, common))
        threads_axis = spec.threads if device == "cpu" else [None]
        for mode, pipeline, width, threads, batch_size in itertools.product(
                spec.modes, spec.pipelines, spec.widths, threads_axis, spec.batch_sizes):
            worlds = spec.world_sizes if mode == "train" else [1]
            for repeat, world in itertools.product(range(spec.repeats), worlds):
                point = dict(mode=mode, device=device, pipeline=pipeline, world_size=world)
                for variant in _variants(spec, point):
                    cases.append(Case(
                        **point, **variant, batch_size=batch_size, threads=threads, width=width, repeat=repeat,
                        epochs=spec.epochs, lr=effective_lr(spec.lr, spec.lr_scaling, batch_size * world),
                        num_workers=spec.num_workers, **common))
    # repeats round-robin: every Case once, then every Case again, so drift spreads over all of them
    return _spread(sorted(cases, key=lambda c: c.repeat), sittings)


def _spread(cases: list[Case], sittings: list[list[Case]]) -> list[Case]:
    """Each device's job sittings among its Cases: the first opens the device's Cases, the last follows them, the
    others fall evenly between, so the sittings see the machine as the sweep goes on."""
    keyed = [((i, 1, 0), c) for i, c in enumerate(cases)]
    for device_sittings in sittings:
        at = [i for i, c in enumerate(cases) if c.device == device_sittings[0].device]
        for k, sitting in enumerate(device_sittings):
            target = round(k * len(at) / max(len(device_sittings) - 1, 1))
            place = (at[target], 0, k) if target < len(at) else (at[-1] if at else -1, 2, k)
            keyed.append((place, sitting))
    return [c for _, c in sorted(keyed, key=lambda kc: kc[0])]


def input_cases(spec: SweepSpec, common: dict) -> list[Case]:
    """The input bound, where the sweep trains through the tutorial pipeline: its DataLoader alone (batch b, its
    workers, its transforms, no model) on this host at each batch size, first in the sweep (bench/measuring/input_bound.py)."""
    if not (spec.input_bound and "tutorial" in spec.pipelines and "train" in spec.modes):
        return []
    return [Case(mode=INPUT, device="cpu", pipeline="tutorial", batch_size=b, threads=None, width=1.0, repeat=0,
                 epochs=spec.epochs, lr=spec.lr, num_workers=spec.num_workers, **common) for b in spec.batch_sizes]


def job_sittings(device: str, common: dict) -> list[Case]:
    """The job's Cases on a device: measured whole in one process when it has no budget; sampled within a time
    budget, in JOB_SITTINGS processes (repeats) that share the budget, so its interval says how far samples
    taken at different moments land apart, not only how one sample's steps did; with a --max-steps cap (a
    step-exact run), in one."""
    one = job_case(device, common)
    if one.max_seconds is None or one.max_steps is not None:
        return [one]
    share = one.max_seconds / JOB_SITTINGS
    return [replace(one, repeat=k, max_seconds=share) for k in range(JOB_SITTINGS)]


def job_case(device: str, common: dict) -> Case:
    """The tutorial's job on a device, exactly its settings: 2 epochs at batch 4 through its DataLoader
    (2 workers), SGD lr 0.001 momentum 0.9, width 1, torch's default threads, the eager fp32 step, in the
    allocator state the tutorial's own script runs in (JOB_MALLOC); within the spec's budget (the rest is
    projected, see bench/measuring/job.py)."""
    return Case(mode=JOB, device=device, pipeline="tutorial", batch_size=4, threads=None, width=1.0, repeat=0,
                epochs=2, lr=0.001, num_workers=2, malloc=JOB_MALLOC,
                **{**common, "target_precision_pct": None})  # the job runs its budget


def _variants(spec: SweepSpec, point: dict, done: int = 0):
    """Each combination of the step variants' values (bench/schema.py's VARIANTS) the spec sweeps at one point,
    as Case fields; where a variant does not apply, only its plain value (none when the spec leaves that out)."""
    if done == len(VARIANTS):
        yield {}
        return
    variant = VARIANTS[done]
    values = variant.values(spec)
    if not variant.applies(point):
        values = [v for v in values if v == variant.plain]
    for value in values:
        for rest in _variants(spec, {**point, variant.field: value}, done + 1):
            yield {variant.field: value, **rest}


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


def estimate_seconds(cases: list[Case], precise: bool = False) -> tuple[float, bool]:
    """(seconds, bounded): the sweep's duration, an upper bound when every Case has --max-seconds (a Case whose
    few windows outlast its budget, e.g. one step of 0.2 s at batch 512, takes longer), else by the time limits.
    With `precise`, the least a sweep can take: every Case with a precision target stops after its first six
    windows (and a warm-up of twice --warmup-steps' worth of windows), the fastest the rule allows."""
    total, bounded = SWEEP_SETUP_S + REPORT_S, True
    for case in cases:
        if case.max_seconds is not None:
            if case.compile_mode is not None:
                total += COMPILE_S
            measured = case.max_seconds
            if precise and case.target_precision_pct is not None:
                measured = min(case.max_seconds, (MIN_WINDOWS + 2) * case.window_s)
            start = CUDA_START_S if case.device.startswith("cuda") else CPU_START_S
            if case.world_size > 1:
                start = start * case.world_size + DDP_START_S
            if case.mode == "infer":
                total += start + measured + LATENCY_SHARE * case.max_seconds
                continue
            if case.mode == INPUT:  # no model, no accuracy pass
                total += start + measured
                continue
            scored = min(case.eval_images or 10000, 10000) / 10000
            total += start + measured + EVAL_S * scored * case.epochs + JOB_EXTRA_S * (case.mode == JOB)
        else:
            bounded = False
            total += case.time_limit_s
    return total, bounded
