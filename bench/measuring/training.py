"""One training path for one process or N data-parallel ranks, and the inference path: a Case's
model, data and loop, measured by bench/measuring/timing.py, written into its Result.

A data-parallel rank runs the same `train` as a single process; what differs is passed in as
`Ranks` (its rank and world size, the DDP wrapper with its timed all-reduce hook, the agreement on
windows, the barrier while rank 0 evaluates), never a copied loop (bench/measuring/ddp.py builds it).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from bench.measuring import devices, gpu_monitor, stats, stop, timing
from bench.measuring.compiling import compiled, recompiled
from bench.measuring.clock import DeviceClock, latencies_ms, percentiles
from bench.measuring.feed import amp_dtype, memory_format, pipeline_batches, resident_tensors, steps_per_epoch
from bench.schema import Case
from cnn import loops
from cnn.cifar_files import CifarArrays
from cnn.model import Net

Progress = Callable[[dict], None]


@dataclass(frozen=True)
class Ranks:
    """What a data-parallel rank brings to the one training path; the default is a single process."""

    rank: int = 0
    world: int = 1
    wrap: Callable[[nn.Module, timing.StepMeter], nn.Module] | None = None  # DDP, given the meter for its hook
    agree: Callable[[float], float] | None = None  # all ranks close windows and stop at the same step
    barrier: Callable[[], None] | None = None  # the other ranks wait while rank 0 evaluates

    @property
    def shard(self) -> tuple[int, int] | None:
        return (self.rank, self.world) if self.world > 1 else None


SINGLE = Ranks()


def set_threads(case: Case) -> None:
    """The Case's CPU threads, for torch and for the OpenMP/MKL pools a library may start later."""
    if case.threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(case.threads)
        torch.set_num_threads(case.threads)


def prepare_cuda(device: torch.device, autotune: bool = True, fp32_math: str = "default") -> dict:
    """Before anything is allocated: the Case's GPU made current (the device is indexed: set_device
    refuses a bare `cuda`), cuDNN autotuning on (off for the tutorial's job, as its script has it), TF32 off
    everywhere for `fp32_math="strict"` (torch's defaults otherwise: cuDNN's convolutions may use TF32), the
    peak-memory counter reset. Returns whether cuDNN autotunes and the math its float32 convolutions and matrix
    products ran in (the roofline compares a Case with the ceiling of that math, bench/analysis/roofline.py)."""
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = autotune  # autotuning falls in the warm-up; new shapes are kept out of windows
    torch.backends.cudnn.allow_tf32 = fp32_math != "strict"  # torch's default is True
    if fp32_math == "strict":
        torch.backends.cuda.matmul.allow_tf32 = False  # torch's default too, unless the process's setting says else
    torch.cuda.reset_peak_memory_stats(device)
    return {"cudnn_benchmark": torch.backends.cudnn.benchmark,
            "conv_math": "tf32" if torch.backends.cudnn.allow_tf32 else "fp32",
            "matmul_math": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"}


def monitor_gpu(device: torch.device):
    """(the sampler or None, a context that samples GPU utilisation and power around each epoch's loop or does
    nothing, how the GPU is monitored: the Result's `gpu_monitor`, none on a CPU)."""
    if device.type != "cuda":
        return None, contextlib.nullcontext, {}
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    sampler, how = gpu_monitor.open_sampler(device.index, str(uuid) if uuid else None)
    return sampler, (sampler.active if sampler else contextlib.nullcontext), {"gpu_monitor": how}


def gpu_usage(sampler: gpu_monitor.NvmlSampler | None, epoch_images: int, images: int) -> dict:
    """The GPU's utilisation and power while the loop ran, and its energy scaled to an epoch's images."""
    if sampler is None:
        return {}
    usage = sampler.usage()
    out = {"gpu_util_pct": usage.util_pct, "gpu_power_w": usage.power_w}
    if usage.energy_j is not None and images:
        # every step, warm-up included, ran inside the monitored intervals
        out["gpu_energy_j_per_epoch"] = usage.energy_j / images * epoch_images
    return out


def case_meter(case: Case, device: torch.device, steps_per_epoch: int, progress: Progress | None,
               agree=None) -> timing.StepMeter:
    """The Case's StepMeter, reporting steps, epoch and ETA through `progress` (data-parallel ranks
    pass `agree`, see timing.StepMeter)."""
    planned = case.epochs * steps_per_epoch
    if case.max_steps is not None:
        planned = min(planned, case.max_steps)

    def report(steps: int, elapsed: float) -> None:
        eta = elapsed / steps * (planned - steps) if steps else None
        if case.max_seconds is not None:
            eta = min(eta if eta is not None else math.inf, case.max_seconds - elapsed)
        progress({"step": steps, "steps": planned, "epoch": min(steps // steps_per_epoch + 1, case.epochs),
                  "epochs": case.epochs, "elapsed_s": elapsed, "eta_s": max(eta or 0.0, 0.0)})

    return timing.StepMeter(DeviceClock(device), case.warmup_steps, case.window_s,
                             stop.Budget(case.max_steps, case.max_seconds), precision_pct=case.target_precision_pct,
                             progress=report if progress else None, agree=agree)


def window_fields(windows_s: list[float], windows_images: list[int], step_s: list[float]) -> dict:
    """The throughput summary of timed windows, beside the raw windows it comes from."""
    summary = stats.summarise(windows_s, windows_images, step_s)
    low, high = summary.interval or (None, None)
    p50, p90, p99 = summary.step_ms
    return {"images_per_s": summary.images_per_s, "images_per_s_p25": summary.p25, "images_per_s_p75": summary.p75,
            "images_per_s_spread_pct": summary.spread_pct, "images_per_s_mean": summary.mean,
            "images_per_s_ci_low": low, "images_per_s_ci_high": high, "images_per_s_ci_pct": summary.half_width_pct,
            "step_ms_p50": p50, "step_ms_p90": p90, "step_ms_p99": p99, "windows_s": windows_s,
            "windows_images": windows_images, "warnings": summary.warnings}


def throughput_fields(meter: timing.StepMeter) -> dict:
    """What the meter measured: the windows' summary, the warm-up and training time, the steps and why they
    stopped, the page faults and the data wait."""
    window_total = sum(meter.windows_s)
    wait = 100.0 * meter.data_wait_s / window_total if meter.data_wait_measured and window_total else None
    return {**window_fields(meter.windows_s, meter.windows_images, meter.step_s), "warmup_s": meter.warmup_s,
            "train_s": meter.train_s, "epoch_s": meter.epoch_s, "steps": meter.steps, "images": meter.images,
            "stopped_by": meter.stopped_by or "epochs", "new_shape_steps": meter.new_shape_steps,
            "minor_faults_per_step": meter.timed_faults / len(meter.step_s) if meter.step_s else None,
            "data_wait_pct": wait}


EVAL_BATCH = 500


def eval_batch_size(case: Case, last: bool) -> int:
    """The accuracy pass's batch: the Case's own while another epoch follows (a larger batch would free blocks
    that change how malloc serves the next epoch's steps: cnn/loops.py, _SLICE_BYTES); after the last epoch nothing
    timed follows, so EVAL_BATCH (at batch 4, 1,000 images took 0.2-0.3 s of a 0.6 s --quick Case)."""
    return case.batch_size if not last else max(case.batch_size, EVAL_BATCH)


@dataclass
class Scores:
    """The test accuracy after each epoch, overall and per class, its passes' time, and the training time when it
    first reached the target."""

    target_pct: float
    eval_s: float = 0.0
    epoch_accuracy_pct: list[float] = field(default_factory=list)
    class_accuracy_pct: dict[str, float] | None = None
    time_to_target_s: float | None = None

    def add(self, net: nn.Module, test: tuple, classes, batch_size: int, train_s: float) -> None:
        t0 = time.perf_counter()
        accuracy, per_class = loops.evaluate(net, *test, len(classes), batch_size=batch_size)
        self.eval_s += time.perf_counter() - t0
        self.epoch_accuracy_pct.append(accuracy)
        self.class_accuracy_pct = dict(zip(classes, per_class))
        if self.time_to_target_s is None and accuracy >= self.target_pct:
            self.time_to_target_s = train_s

    def fields(self) -> dict:
        last = self.epoch_accuracy_pct[-1] if self.epoch_accuracy_pct else None
        return {"eval_s": self.eval_s, "epoch_accuracy_pct": self.epoch_accuracy_pct, "test_accuracy_pct": last,
                "class_accuracy_pct": self.class_accuracy_pct, "time_to_target_s": self.time_to_target_s}


def train(case: Case, arrays: CifarArrays, device: torch.device, started: float, progress: Progress | None,
          ranks: Ranks = SINGLE) -> tuple[nn.Module, timing.StepMeter, dict]:
    """Trains the Case (one rank's part of it with `ranks`), accuracy measured on rank 0 after every
    epoch outside the timed windows; returns the model (unwrapped), the meter and what was measured."""
    compute = devices.placement(device)
    net = Net(case.width, len(arrays.classes)).to(compute, memory_format=memory_format(case))
    if ranks.world > 1:  # ranks agree on the window length at the warm-up's end, so there must be one
        case = replace(case, warmup_steps=max(case.warmup_steps, 1))
    meter = case_meter(case, device, steps_per_epoch(case, len(arrays.train_y), ranks.shard), progress,
                       agree=ranks.agree)
    model = ranks.wrap(net, meter) if ranks.wrap else net
    optimizer = torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.9)
    setup = {}
    if case.compile_mode is not None:
        model, setup = compiled(case, model, arrays, compute, train=True, optimizer=optimizer)
    n_eval = len(arrays.test_y) if case.eval_images is None else min(case.eval_images, len(arrays.test_y))
    test = (resident_tensors(case, "test", arrays.test_x[:n_eval], arrays.test_y[:n_eval], compute)
            if ranks.rank == 0 else (None,) * 2)
    epoch_batches, item, resident = pipeline_batches(case, "train", arrays.train_x, arrays.train_y, arrays.classes,
                                                     device, train=True, meter=meter, shard=ranks.shard)
    if case.cuda_graphs:  # captured before the clock starts; its warm-up takes 3 steps on the first batch
        x, y = resident
        step = loops.graphed_step(model, optimizer, (x[:case.batch_size], y[:case.batch_size]), amp_dtype(case))
    else:
        step = loops.eager_step(model, optimizer, amp_dtype(case))
    sampler, monitored, monitor = monitor_gpu(device)
    startup_s, scores, loss = time.time() - started, Scores(case.target_accuracy_pct), None
    for epoch in range(case.epochs):
        with monitored():  # the sampler's thread and its energy reading start before the epoch's first window
            meter.start_epoch()
            loss = loops.train_epoch(model, optimizer, epoch_batches(epoch), item_every_step=item,
                                     on_step=meter.on_step, step=step)
            meter.end_epoch()
        if ranks.rank == 0:  # accuracy after every epoch, outside the timed windows
            last = bool(meter.stopped_by) or epoch == case.epochs - 1
            scores.add(net, test, arrays.classes, eval_batch_size(case, last), meter.train_s)
        if ranks.barrier is not None:
            ranks.barrier()
        if meter.stopped_by:
            break
    return net, meter, {**recompiled(setup, meter), **monitor, "startup_s": startup_s, "loss": loss, **scores.fields(),
                        "epochs_completed": meter.images / len(arrays.train_y), **throughput_fields(meter),
                        **gpu_usage(sampler, len(arrays.train_y) // ranks.world, meter.images)}


def infer(case: Case, arrays: CifarArrays, device: torch.device, started: float, progress: Progress | None) -> dict:
    """Runs the Case's inference loop, then times the model alone for latency; returns what was measured."""
    compute = devices.placement(device)
    net = Net(case.width, len(arrays.classes)).to(compute, memory_format=memory_format(case)).eval()
    setup = {}
    if case.compile_mode is not None:
        net, setup = compiled(case, net, arrays, compute, train=False)
    meter = case_meter(case, device, math.ceil(len(arrays.test_y) / case.batch_size), progress)
    epoch_batches, item, _ = pipeline_batches(case, "test", arrays.test_x, arrays.test_y, arrays.classes, device,
                                              train=False, meter=meter)
    autocast = torch.autocast(compute.type, dtype=amp_dtype(case), enabled=amp_dtype(case) is not None)
    sampler, monitored, monitor = monitor_gpu(device)
    startup_s = time.time() - started
    for _ in range(case.epochs):
        with monitored(), autocast:
            meter.start_epoch()
            loops.infer_epoch(net, epoch_batches(0), item_every_step=item, on_step=meter.on_step)
            meter.end_epoch()
        if meter.stopped_by:
            break
    measured = {**recompiled(setup, meter), **monitor, "startup_s": startup_s, "epochs_completed": meter.images / len(arrays.test_y),
                **throughput_fields(meter), **gpu_usage(sampler, len(arrays.test_y), meter.images)}
    # latency: the model alone on a batch already on the device, synchronised around each call
    n_latency = min(len(arrays.test_y), case.latency_batches * case.batch_size)  # the images it times, no more
    test_x, _ = resident_tensors(case, "test", arrays.test_x[:n_latency], arrays.test_y[:n_latency], compute)
    test_x = test_x.contiguous(memory_format=memory_format(case))
    inputs = (test_x[i:i + case.batch_size] for i in range(0, len(test_x), case.batch_size))
    with torch.inference_mode(), autocast:  # within the Case's time budget too, as its throughput
        lat = latencies_ms(meter.clock, net, inputs, case.latency_batches, budget_s=case.max_seconds)
    p50, p90, p99 = percentiles(lat)
    return {**measured, "latency_ms_p50": p50, "latency_ms_p90": p90, "latency_ms_p99": p99,
            "latency_calls": len(lat)}
