"""What the report holds each Case against, measured in a worker process like a Case: each device's
matrix-multiply rate in each precision the sweep's Cases run in, the model's FLOPs per image, and
the GPUs' properties.

The orchestrator measures nothing: a CUDA context in it would hold GPU memory for the whole sweep
and, on a GPU in exclusive-process mode, keep every Case from creating its own. The worker is forked
from the runner's server and sends each figure as soon as it has it; a figure it could not measure
(an error, a crash, the time limit) is recorded with the reason, and the sweep goes on.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

LIMIT_S = 120.0  # CUDA start-up, cuBLAS and a few products per precision take seconds, not minutes
# precision -> (float32 matmul precision setting, dtype of the operands); fp32 is strict: no TF32
PRECISIONS = {"fp32": ("highest", "float32"), "tf32": ("high", "float32"), "bf16": ("highest", "bfloat16")}


def precisions(device: str, amp: list[str]) -> list[str]:
    """The precisions whose matmul rate a sweep records on a device: fp32 (every Case's default), tf32 on
    CUDA, bf16 when the sweep runs `--amp bf16` Cases."""
    out = ["fp32"] + (["tf32"] if device.startswith("cuda") else [])
    return out + (["bf16"] if "bf16" in amp else [])


def matmul_n(device: str, precision: str) -> int:
    """The matrix size, large enough to reach the device's rate: a 1.1 TFLOP product on a GPU, 2 GFLOP
    on a CPU; 0.27 GFLOP for bf16 on a CPU, which without bf16 units emulates it at about 1 GFLOP/s."""
    if device.startswith("cuda"):
        return 8192
    return 512 if precision == "bf16" else 1024


@contextmanager
def _float32_matmul_precision(setting: str):
    import torch

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def matmul_gflops(device: str, precision: str, n: int, repeats: int = 5) -> float:
    """The device's n x n x n matrix-multiply rate in one precision: the median of `repeats`
    synchronised products."""
    import numpy as np
    import torch

    from bench.measuring.clock import DeviceClock, latencies_ms

    setting, dtype = PRECISIONS[precision]
    dev = torch.device(device)
    with _float32_matmul_precision(setting):
        a = torch.randn(n, n, device=dev, dtype=getattr(torch, dtype))
        b = torch.randn(n, n, device=dev, dtype=getattr(torch, dtype))
        for _ in range(2):  # warm-up: library initialisation and, on CUDA, kernel selection
            a @ b
        times_ms = latencies_ms(DeviceClock(dev), lambda _: a @ b, range(repeats), repeats)
    return 2 * n**3 / (float(np.median(times_ms)) / 1000.0) / 1e9


def model_flops_per_image(width: float) -> dict[str, float]:
    """The tutorial Net's FLOPs per image at a width, forward and a training step, counted on the CPU by
    torch.utils.flop_counter on one image (a count: the same in every precision)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cnn.model import Net

    model = Net(width)
    x = torch.zeros(1, 3, 32, 32)
    with FlopCounterMode(display=False) as forward:
        model(x)
    with FlopCounterMode(display=False) as step:
        model(x).sum().backward()
    return {"forward": float(forward.get_total_flops()), "train_step": float(step.get_total_flops())}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def child_main(widths: list[float], sizes: dict[str, dict[str, int]], conn) -> None:
    """The worker: sends a (name, value) message per figure as it gets it, then ("done", None)."""
    import torch

    from bench.running.environment import cuda_facts

    try:
        conn.send(("worker_pid", os.getpid()))
        # before anything here changes it: the setting every Case's process starts with
        conn.send(("float32_matmul_precision", torch.get_float32_matmul_precision()))
        conn.send(("cpu_threads", torch.get_num_threads()))
        conn.send(("model_flops_per_image", {f"{w:g}": model_flops_per_image(w) for w in widths}))
        conn.send(("cuda_facts", cuda_facts()))
        for device, by_precision in sizes.items():
            for precision, n in by_precision.items():
                try:
                    conn.send(("matmul", (device, precision, matmul_gflops(device, precision, n))))
                except Exception as e:  # a precision the device cannot run does not lose the others
                    conn.send(("matmul_missing", (device, precision, _one_line(e))))
        conn.send(("done", None))
    except Exception as e:
        conn.send(("error", _one_line(e)))
    finally:
        conn.close()


def _collect(ctx, widths: list[float], sizes: dict, limit_s: float) -> tuple[dict, str | None]:
    """(what the worker sent, why it stopped short or None), whatever happens to the worker."""
    from bench.running import runner

    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_main, args=(widths, sizes, sender), name="bench-ceilings")
    proc.start()
    sender.close()
    deadline = time.monotonic() + limit_s
    got: dict = {"matmul": [], "matmul_missing": []}
    reason = None
    try:
        while True:
            if receiver.poll(runner.POLL_S):
                try:
                    kind, value = receiver.recv()
                except (EOFError, OSError):  # the worker is gone before it was done
                    proc.join(timeout=30)
                    reason = f"the ceiling {runner._exit_reason(proc.exitcode)}"
                    break
                if kind == "done":
                    break
                if kind == "error":
                    reason = value
                    break
                if kind in ("matmul", "matmul_missing"):
                    got[kind].append(value)
                else:
                    got[kind] = value
            elif not proc.is_alive():
                reason = f"the ceiling {runner._exit_reason(proc.exitcode)}"
                break
            if time.monotonic() > deadline:
                runner._kill_tree(proc.pid)
                reason = f"the ceiling worker exceeded its time limit of {limit_s:g} s"
                break
    except BaseException:
        runner._kill_tree(proc.pid)  # Ctrl-C: leave no worker behind
        raise
    proc.join(timeout=30)
    if proc.is_alive():
        runner._kill_tree(proc.pid)
    receiver.close()
    return got, reason


def measure_in_worker(devices: list[str], widths: list[float], amp: list[str], limit_s: float | None = None,
                      ctx=None) -> dict:
    """The environment's entries from a ceiling worker given `limit_s` (LIMIT_S): `gpus`, `cudnn`,
    `float32_matmul_precision`, `model_flops_per_image` (None where not got) and `ceilings`: matmul
    GFLOP/s by device and precision, the reason for each one missing, and the worker's pid. Never raises
    for a worker that fails or overruns."""
    from bench.running import runner

    ctx = ctx or runner._context()
    sizes = {d: {p: matmul_n(d, p) for p in precisions(d, amp)} for d in devices}
    got, reason = _collect(ctx, list(widths), sizes, LIMIT_S if limit_s is None else limit_s)
    rates: dict[str, dict[str, float]] = {}
    missing: dict[str, dict[str, str]] = {}
    for device, precision, gflops in got["matmul"]:
        rates.setdefault(device, {})[precision] = gflops
    for device, precision, why in got["matmul_missing"]:
        missing.setdefault(device, {})[precision] = why
    for device, by_precision in sizes.items():
        for precision in by_precision:
            if precision not in rates.get(device, {}) and precision not in missing.get(device, {}):
                missing.setdefault(device, {})[precision] = reason or "not measured"
    ceilings = {"worker_pid": got.get("worker_pid"), "worker_error": reason, "cpu_threads": got.get("cpu_threads"),
                "matmul_n": sizes, "matmul_gflops": rates, "matmul_missing": missing}
    return {**(got.get("cuda_facts") or {"gpus": None, "cudnn": None}),
            "float32_matmul_precision": got.get("float32_matmul_precision"),
            "model_flops_per_image": got.get("model_flops_per_image"), "ceilings": ceilings}
