"""Runs one Case and returns one Result. The runner calls it in a fresh process per Case.

Usable alone, e.g. on each node of a cluster launcher:
    python -m bench.running.worker case.json        (prints one Result JSON line)
Importing this module imports torch and torchvision, so a fork server that
preloads it hands each Case a process with them already imported.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import asdict

import psutil
import torch
import torchvision  # noqa: F401  (preloaded by the fork server with torch)

from bench.measuring import allocator, compiling, training
from bench.measuring.clock import peak_device_mem_mb, peak_rss_mb
from bench.measuring.input_bound import run_input
from bench.measuring.job import run_job
from bench.result import Result, assemble
from bench.running import contention
from bench.schema import INPUT, JOB, Case
from cnn import cache

Progress = training.Progress


def _is_oom(exc: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; the CPU allocator raises a RuntimeError that says so."""
    text = str(exc).lower()
    return (isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text
            or "can't allocate memory" in text)


def run_case(case: Case, progress: Progress | None = None, started: float | None = None) -> Result:
    """Runs the Case; every failure becomes a Result with its status and error, never an exception. The Result is
    assembled here, once, from what each stage returned.

    `started` is when the process was asked for (time.time()); by default the process's
    creation time, which the kernel gives only to about a second.
    """
    started = psutil.Process().create_time() if started is None else started
    watch = contention.Watch()
    parts = _measured(case, progress, started) + [{"wall_s": time.time() - started}]
    return assemble(case, *parts, _load(watch.load()))


def _load(load: contention.Load) -> dict:
    """The machine while the Case ran: other processes' CPU use, steal time, the clock, and whether that made the
    Case contended."""
    warnings = [f"contended: other processes used {load.other_cpu_cores:.2f} cores on average "
                f"(steal {load.steal_pct:.1f}%) while this Case ran"] if load.contended else []
    return {"other_cpu_cores": load.other_cpu_cores, "steal_pct": load.steal_pct, "cpu_mhz": load.cpu_mhz,
            "contended": load.contended, "warnings": warnings}


def _measured(case: Case, progress: Progress | None, started: float) -> list[dict]:
    """What the Case's stages measured, in order, and how it ended where it did not end ok."""
    device = torch.device(case.device)
    unavailable = compiling.compile_unavailable(device.type) if case.compile_mode is not None else None
    unavailable = unavailable or allocator.unavailable(case.malloc, required=case.mode != JOB)  # the job: never skipped
    if unavailable:  # before any rank is launched: a data-parallel Case is skipped as a single-process one is
        return [{"status": "skipped", "error": unavailable}]
    if case.world_size > 1:
        return _distributed(case, progress, started)
    parts = []
    try:
        # before the Case allocates anything
        parts.append({"malloc_state": allocator.pin(case.malloc, required=case.mode != JOB)})
        training.set_threads(case)
        torch.manual_seed(case.seed)
        if device.type == "cuda":  # the tutorial's script leaves cuDNN's autotuning off
            parts.append(training.prepare_cuda(device, autotune=case.mode != JOB, fp32_math=case.fp32_math))
        arrays = cache.load_arrays(case.data_cache)
        parts.append({"train_images": len(arrays.train_y), "test_images": len(arrays.test_y)})
        if case.mode == JOB:
            parts.append(run_job(case, arrays, device, started, progress))
        elif case.mode == INPUT:
            parts.append(run_input(case, arrays, started, progress))
        elif case.mode == "train":
            parts.append(training.train(case, arrays, device, started, progress)[2])
        else:
            parts.append(training.infer(case, arrays, device, started, progress))
        parts.append({"peak_device_mem_mb": peak_device_mem_mb(device)})
    except Exception as exc:  # a Case's failure is data, the sweep goes on
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" (at {os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
        parts.append({"status": "oom" if _is_oom(exc) else "failed",
                      "error": f"{type(exc).__name__}: {exc}{where}".replace("\n", " ")[:2000]})
        if device.type == "cuda":
            parts[-1]["error"] = (parts[-1]["error"] + _release_cuda())[:2000]
    return parts + [{"threads_used": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb()}]


def _release_cuda() -> str:
    """Hands the failed Case's cached GPU memory back; after a sticky CUDA error (an illegal address, a device-side
    assert) that fails too, and the Case's own error must still reach its Result: what failed is said after it."""
    try:
        torch.cuda.empty_cache()
    except Exception as exc:  # noqa: BLE001 (the Case's error is the one that matters)
        return f"; then torch.cuda.empty_cache() failed too ({type(exc).__name__}: {exc}): the process's CUDA context is lost"
    return ""


def _distributed(case: Case, progress: Progress | None, started: float) -> list[dict]:
    """A data-parallel Case: its ranks under PyTorch's elastic launcher; a failed rank fails the Case."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from bench.measuring import ddp
    from bench.sweep.plan import oversubscription

    try:
        parts = [ddp.launch(case, progress, started)]
    except ChildFailedError as exc:  # the launcher has already torn the whole group down
        text = ddp.failure_text(exc)
        parts = [{"status": "oom" if _is_oom(RuntimeError(text)) else "failed", "error": text[:2000]}]
    except Exception as exc:  # rendezvous or launcher errors
        parts = [{"status": "failed", "error": f"{type(exc).__name__}: {exc}".replace("\n", " ")[:2000]}]
    warning = oversubscription(case, psutil.cpu_count(logical=False) or 1)
    return parts + [{"warnings": [warning] if warning else []}]


def child_main(case_fields: dict, conn, started: float) -> None:
    """Entry point in a fork-server child: progress and the Result go back through `conn`."""
    # A process group of its own: the runner kills the Case with all it started (DataLoader workers,
    # DDP ranks), even a worker forked a moment before, and a terminal's Ctrl-C reaches the runner only.
    os.setpgrp()
    # A fork-server child inherits "forkserver" as its start method; give the Case the platform's
    # default (fork on Linux), as in a plain `python train.py`, so DataLoader workers start as usual.
    multiprocessing.set_start_method(multiprocessing.get_all_start_methods()[0], force=True)
    case = Case(**case_fields)
    result = run_case(case, progress=lambda p: conn.send(("progress", p)), started=started)
    conn.send(("result", result.to_dict()))
    conn.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.running.worker CASE.json|- [--out RUN_DIR]`: one Case, its Result printed (and appended
    to RUN_DIR/results.jsonl). Under torchrun (RANK and WORLD_SIZE set) this process is one rank of
    a data-parallel Case whose world is torchrun's; rank 0 prints and appends the Result."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.running.worker")
    parser.add_argument("case", help="a Case as JSON (bench plan --write-cases DIR writes them), or - for stdin")
    parser.add_argument("--out", help="run folder to append the Result to (bench report reads it)")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.case == "-" else open(args.case).read()
    case = Case(**json.loads(text))
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        from dataclasses import replace

        from bench.measuring import ddp

        case = replace(case, world_size=int(os.environ["WORLD_SIZE"]))
        started = psutil.Process().create_time()
        fields = ddp.rank_main(asdict(case), started=started)
        if fields is None:  # not rank 0
            return 0
        result = assemble(case, fields, {"wall_s": time.time() - started})
    else:
        result = run_case(case)
    if args.out:
        from pathlib import Path

        from bench.store.run_folder import RunFolder

        Path(args.out).mkdir(parents=True, exist_ok=True)
        RunFolder(args.out).append(result)
    print(result.to_json(), flush=True)
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
