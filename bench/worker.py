"""Runs one Case and returns one Result. The runner calls it in a fresh process per Case.

Usable alone, e.g. on each node of a cluster launcher:
    python -m bench.worker case.json        (prints one Result JSON line)
Importing this module imports torch and torchvision, so a fork server that
preloads it hands each Case a process with them already imported.
"""
from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import psutil
import torch
import torchvision  # noqa: F401  (preloaded by the fork server with torch)

from bench import devices, gpu_monitor, measure
from bench.schema import Case, Result
from cnn import data, loops
from cnn.model import Net

Progress = Callable[[dict], None]


def set_threads(case: Case) -> None:
    """The Case's CPU threads, for torch and for the OpenMP/MKL pools a library may start later."""
    if case.threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(case.threads)
        torch.set_num_threads(case.threads)


def _is_oom(exc: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; the CPU allocator raises a RuntimeError that says so."""
    text = str(exc).lower()
    return (isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text
            or "can't allocate memory" in text)


def run_case(case: Case, progress: Progress | None = None, started: float | None = None) -> Result:
    """Runs the Case; every failure becomes a Result with its status and error, never an exception.

    `started` is when the process was asked for (time.time()); by default the process's
    creation time, which the kernel gives only to about a second.
    """
    started = psutil.Process().create_time() if started is None else started
    if case.world_size > 1:
        return _run_distributed(case, progress, started)
    result = Result(case=case)
    device = torch.device(case.device)
    try:
        set_threads(case)
        torch.manual_seed(case.seed)
        if device.type == "cuda":
            prepare_cuda(device, result)
        arrays = data.load_arrays(case.data_cache)
        result.train_images, result.test_images = len(arrays.train_y), len(arrays.test_y)
        (_train if case.mode == "train" else _infer)(case, arrays, device, result, started, progress)
        result.peak_device_mem_mb = measure.peak_device_mem_mb(device)
    except Exception as exc:  # a Case's failure is data, the sweep goes on
        result.status = "oom" if _is_oom(exc) else "failed"
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" (at {os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
        result.error = f"{type(exc).__name__}: {exc}{where}".replace("\n", " ")[:2000]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result.threads_used = torch.get_num_threads()
    result.peak_rss_mb = measure.peak_rss_mb()
    result.wall_s = time.time() - started
    return result


def prepare_cuda(device: torch.device, result: Result) -> None:
    """Before anything is allocated: the Case's GPU made current (the device is indexed: set_device
    refuses a bare `cuda`), cuDNN autotuning on, the peak-memory counter reset."""
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True  # autotuning falls in the warm-up; new shapes are kept out of windows
    torch.cuda.reset_peak_memory_stats(device)
    result.cudnn_benchmark = torch.backends.cudnn.benchmark


def _run_distributed(case: Case, progress: Progress | None, started: float) -> Result:
    """A data-parallel Case: its ranks under PyTorch's elastic launcher; a failed rank fails the Case."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from bench import ddp
    from bench.plan import oversubscription

    try:
        result = ddp.launch(case, progress, started)
    except ChildFailedError as exc:  # the launcher has already torn the whole group down
        text = ddp.failure_text(exc)
        result = Result(case=case, status="oom" if _is_oom(RuntimeError(text)) else "failed", error=text[:2000])
    except Exception as exc:  # rendezvous or launcher errors
        result = Result(case=case, status="failed", error=f"{type(exc).__name__}: {exc}".replace("\n", " ")[:2000])
    warning = oversubscription(case, psutil.cpu_count(logical=False) or 1)
    if warning:
        result.warnings.append(warning)
    result.wall_s = time.time() - started
    return result


def monitor_gpu(device: torch.device, result: Result):
    """A context that samples GPU utilisation and power around each epoch's loop, or does nothing."""
    if device.type != "cuda":
        return None, contextlib.nullcontext
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    sampler, result.gpu_monitor = gpu_monitor.open_sampler(device.index, str(uuid) if uuid else None)
    return sampler, (sampler.active if sampler else contextlib.nullcontext)


def record_gpu_usage(result: Result, sampler: gpu_monitor.NvmlSampler | None, epoch_images: int,
                      images: int) -> None:
    if sampler is None:
        return
    usage = sampler.usage()
    result.gpu_util_pct, result.gpu_power_w = usage.util_pct, usage.power_w
    if usage.energy_j is not None and images:
        # every step, warm-up included, ran inside the monitored intervals
        result.gpu_energy_j_per_epoch = usage.energy_j / images * epoch_images


def case_meter(case: Case, device: torch.device, steps_per_epoch: int, progress: Progress | None,
               agree=None) -> measure.StepMeter:
    """The Case's StepMeter, reporting steps, epoch and ETA through `progress` (data-parallel ranks
    pass `agree`, see measure.StepMeter)."""
    planned = case.epochs * steps_per_epoch
    if case.max_steps is not None:
        planned = min(planned, case.max_steps)

    def report(steps: int, elapsed: float) -> None:
        eta = elapsed / steps * (planned - steps) if steps else None
        if case.max_seconds is not None:
            eta = min(eta if eta is not None else math.inf, case.max_seconds - elapsed)
        progress({"step": steps, "steps": planned, "epoch": min(steps // steps_per_epoch + 1, case.epochs),
                  "epochs": case.epochs, "elapsed_s": elapsed, "eta_s": max(eta or 0.0, 0.0)})

    return measure.StepMeter(measure.DeviceClock(device), case.warmup_steps, case.window_s,
                             measure.Budget(case.max_steps, case.max_seconds),
                             progress=report if progress else None, agree=agree)


def _memory_format(case: Case) -> torch.memory_format:
    return torch.channels_last if case.memory_format == "channels_last" else torch.contiguous_format


def _amp(case: Case) -> torch.dtype | None:
    return torch.bfloat16 if case.amp == "bf16" else None


def _batches(case: Case, images: np.ndarray, labels: np.ndarray, classes, device: torch.device, train: bool,
             meter: measure.StepMeter):
    """(make_epoch_batches, item_every_step, resident tensors or None) for the Case's pipeline.

    The time spent waiting for a batch counts as data wait where there is an input pipeline to
    wait for: the tutorial's DataLoader, and the resident gather on a CPU (computed on the spot).
    On CUDA the resident gather is only queued, and a wait there would be the launch queue being
    full, not input, so it is not counted (data_wait_pct stays empty)."""
    compute = devices.placement(device)
    if case.pipeline == "tutorial":
        cuda = device.type == "cuda"
        loader = loops.tutorial_loader(images, labels, classes, case.batch_size, shuffle=train,
                                       num_workers=case.num_workers, pin_memory=cuda, seed=case.seed)
        return (lambda: loops.tutorial_batches(meter.batches(loader), compute, non_blocking=cuda,
                                               memory_format=_memory_format(case))), True, None
    x, y = loops.resident_tensors(images, labels, compute)
    x = x.contiguous(memory_format=_memory_format(case))
    generator = torch.Generator(device=compute).manual_seed(case.seed)
    waited = meter.batches if device.type == "cpu" else iter
    return (lambda: waited(loops.resident_batches(x, y, case.batch_size, generator, shuffle=train))), False, (x, y)


def record_windows(result: Result, windows_s: list[float], windows_images: list[int], step_s: list[float]) -> None:
    """The throughput summary of timed windows into the Result, beside the raw windows it comes from."""
    summary = measure.summarise(windows_s, windows_images, step_s)
    result.images_per_s, result.images_per_s_p25, result.images_per_s_p75 = summary.images_per_s, summary.p25, summary.p75
    result.images_per_s_spread_pct = summary.spread_pct
    result.step_ms_p50, result.step_ms_p90, result.step_ms_p99 = summary.step_ms
    result.windows_s, result.windows_images = windows_s, windows_images
    result.warnings.extend(summary.warnings)


def _record_throughput(result: Result, meter: measure.StepMeter) -> None:
    record_windows(result, meter.windows_s, meter.windows_images, meter.step_s)
    result.warmup_s, result.train_s, result.epoch_s = meter.warmup_s, meter.train_s, meter.epoch_s
    result.steps, result.images, result.stopped_by = meter.steps, meter.images, meter.stopped_by or "epochs"
    result.new_shape_steps = meter.new_shape_steps
    window_total = sum(meter.windows_s)
    if meter.data_wait_measured:
        result.data_wait_pct = 100.0 * meter.data_wait_s / window_total if window_total else None


def _train(case: Case, arrays: data.CifarArrays, device: torch.device, result: Result, started: float,
           progress: Progress | None) -> None:
    compute = devices.placement(device)
    net = Net(case.width, len(arrays.classes)).to(compute, memory_format=_memory_format(case))
    optimizer = torch.optim.SGD(net.parameters(), lr=case.lr, momentum=0.9)
    test_x, test_y = loops.resident_tensors(arrays.test_x, arrays.test_y, compute)
    meter = case_meter(case, device, math.ceil(len(arrays.train_y) / case.batch_size), progress)
    epoch_batches, item, resident = _batches(case, arrays.train_x, arrays.train_y, arrays.classes, device,
                                             train=True, meter=meter)
    if case.cuda_graphs:  # captured before the clock starts; its warm-up takes 3 steps on the first batch
        x, y = resident
        step = loops.graphed_step(net, optimizer, (x[:case.batch_size], y[:case.batch_size]), _amp(case))
    else:
        step = loops.eager_step(net, optimizer, _amp(case))
    sampler, monitored = monitor_gpu(device, result)
    result.startup_s = time.time() - started
    result.eval_s = 0.0
    for _ in range(case.epochs):
        meter.start_epoch()
        with monitored():
            result.loss = loops.train_epoch(net, optimizer, epoch_batches(), item_every_step=item,
                                            on_step=meter.on_step, step=step)
            meter.end_epoch()
        # accuracy is measured at the end of every epoch, outside the timed windows
        t0 = time.perf_counter()
        accuracy, per_class = loops.evaluate(net, test_x, test_y, len(arrays.classes))
        result.eval_s += time.perf_counter() - t0
        result.epoch_accuracy_pct.append(accuracy)
        if result.time_to_target_s is None and accuracy >= case.target_accuracy_pct:
            result.time_to_target_s = meter.train_s
        if meter.stopped_by:
            break
    result.test_accuracy_pct = accuracy
    result.class_accuracy_pct = dict(zip(arrays.classes, per_class))
    result.epochs_completed = meter.images / len(arrays.train_y)
    _record_throughput(result, meter)
    record_gpu_usage(result, sampler, len(arrays.train_y), meter.images)


def _infer(case: Case, arrays: data.CifarArrays, device: torch.device, result: Result, started: float,
           progress: Progress | None) -> None:
    compute = devices.placement(device)
    net = Net(case.width, len(arrays.classes)).to(compute, memory_format=_memory_format(case)).eval()
    meter = case_meter(case, device, math.ceil(len(arrays.test_y) / case.batch_size), progress)
    epoch_batches, item, _ = _batches(case, arrays.test_x, arrays.test_y, arrays.classes, device, train=False,
                                      meter=meter)
    autocast = torch.autocast(compute.type, dtype=_amp(case), enabled=_amp(case) is not None)
    sampler, monitored = monitor_gpu(device, result)
    result.startup_s = time.time() - started
    for _ in range(case.epochs):
        meter.start_epoch()
        with monitored(), autocast:
            loops.infer_epoch(net, epoch_batches(), item_every_step=item, on_step=meter.on_step)
            meter.end_epoch()
        if meter.stopped_by:
            break
    result.epochs_completed = meter.images / len(arrays.test_y)
    _record_throughput(result, meter)
    record_gpu_usage(result, sampler, len(arrays.test_y), meter.images)
    # latency: the model alone on a batch already on the device, synchronised around each call
    test_x, _ = loops.resident_tensors(arrays.test_x, arrays.test_y, compute)
    test_x = test_x.contiguous(memory_format=_memory_format(case))
    inputs = (test_x[i:i + case.batch_size] for i in range(0, len(test_x), case.batch_size))
    with torch.inference_mode(), autocast:
        lat = measure.latencies_ms(meter.clock, net, inputs, case.latency_batches)
    result.latency_ms_p50, result.latency_ms_p90, result.latency_ms_p99 = measure.percentiles(lat)


def child_main(case_fields: dict, conn, started: float) -> None:
    """Entry point in a fork-server child: progress and the Result go back through `conn`."""
    # A fork-server child inherits "forkserver" as its start method; give the Case the platform's
    # default (fork on Linux), as in a plain `python train.py`, so DataLoader workers start as usual.
    multiprocessing.set_start_method(multiprocessing.get_all_start_methods()[0], force=True)
    case = Case(**case_fields)
    result = run_case(case, progress=lambda p: conn.send(("progress", p)), started=started)
    conn.send(("result", result.to_dict()))
    conn.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.worker CASE.json|- [--out RUN_DIR]`: one Case, its Result printed (and appended
    to RUN_DIR/results.jsonl). Under torchrun (RANK and WORLD_SIZE set) this process is one rank of
    a data-parallel Case whose world is torchrun's; rank 0 prints and appends the Result."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("case", help="a Case as JSON (bench plan --write-cases DIR writes them), or - for stdin")
    parser.add_argument("--out", help="run folder to append the Result to (bench report reads it)")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.case == "-" else open(args.case).read()
    case = Case(**json.loads(text))
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        from dataclasses import replace

        from bench import ddp

        case = replace(case, world_size=int(os.environ["WORLD_SIZE"]))
        fields = ddp.rank_main(asdict(case))
        if fields is None:  # not rank 0
            return 0
        result = Result.from_dict(fields)
    else:
        result = run_case(case)
    if args.out:
        from pathlib import Path

        from bench.results import append_result

        Path(args.out).mkdir(parents=True, exist_ok=True)
        append_result(Path(args.out), result)
    print(result.to_json(), flush=True)
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
