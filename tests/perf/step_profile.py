"""Benchmark (not a test): where a training step's time goes on this CPU, and what each lever gives.

1. The torch profiler over steady steps of the resident training step: per-operator self time, and the
   share of the step that no operator accounts for (Python, autograd and dispatch overhead between kernels).
2. Levers, timed side by side in interleaved rounds (ABAB..., so the machine's drift hits all alike), each as
   a ratio over the plain step: channels_last, oneDNN (mkldnn) convolutions off, a fused multi-tensor SGD
   (foreach), bf16 autocast where the CPU has bf16 units, and 1 thread against all cores.
3. The model's achieved GFLOP/s at the fastest setting, against this CPU's fp32 matmul rate measured here
   (a square 2048 matmul), and the same rate for matmuls of the model's own shapes (its convolutions as
   GEMMs and its linear layers at that batch): the bound a GEMM library gives this model.

    python tests/perf/step_profile.py [--batch-sizes 4,128,512] [--steps 300] [--rounds 5]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cnn import data, loops  # noqa: E402
from cnn.model import Net  # noqa: E402


def make_step(batch: int, x: torch.Tensor, y: torch.Tensor, lever: str):
    """A resident training step with one lever pulled; returns (step(), context to run it in)."""
    net = Net(1.0, 10)
    fmt = torch.channels_last if lever == "channels_last" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9, foreach=(lever == "foreach"))
    criterion = nn.CrossEntropyLoss()
    xs = x.contiguous(memory_format=fmt)
    generator = torch.Generator().manual_seed(0)
    state = {"batches": iter(())}

    def step() -> None:
        try:
            xb, yb = next(state["batches"])
        except StopIteration:
            state["batches"] = loops.resident_batches(xs, y, batch, generator)
            xb, yb = next(state["batches"])
        if len(yb) != batch:  # keep one shape
            state["batches"] = loops.resident_batches(xs, y, batch, generator)
            xb, yb = next(state["batches"])
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=(lever == "bf16")):
            loss = criterion(net(xb), yb)
        loss.backward()
        opt.step()

    context = (lambda: torch.backends.mkldnn.flags(enabled=False)) if lever == "mkldnn_off" else contextlib.nullcontext
    return step, context


def images_per_s(step, context, batch: int, steps: int) -> float:
    with context():
        for _ in range(20):
            step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return steps * batch / (time.perf_counter() - t0)


def matmul_gflops(m: int, k: int, n: int, repeat: int = 50) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(5):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * m * k * n * repeat / (time.perf_counter() - t0) / 1e9


def profile(batch: int, x, y, steps: int) -> None:
    step, context = make_step(batch, x, y, "plain")
    for _ in range(20):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    total_self_s = sum(e.self_cpu_time_total for e in events) / 1e6
    compute = {"aten::mkldnn_convolution", "aten::convolution_backward", "aten::addmm", "aten::mm",
               "aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward", "aten::relu",
               "aten::threshold_backward", "aten::_log_softmax", "aten::_log_softmax_backward_data",
               "aten::nll_loss_forward", "aten::nll_loss_backward", "aten::_slow_conv2d_forward",
               "aten::_slow_conv2d_backward", "aten::index", "aten::sum"}
    compute_s = sum(e.self_cpu_time_total for e in events if e.key in compute) / 1e6
    print(f"\n== profile, resident training step, batch {batch}, {torch.get_num_threads()} threads: "
          f"{wall / steps * 1e3:.3f} ms a step (under the profiler)")
    print(f"   operators' own time: compute kernels {100 * compute_s / wall:.0f}% of the step, "
          f"other operators (optimizer, copies, views, zeroing) {100 * (total_self_s - compute_s) / wall:.0f}%, "
          f"outside any operator (Python, autograd engine, dispatch) {100 * max(wall - total_self_s, 0) / wall:.0f}%")
    for e in rows[:12]:
        print(f"   {e.key:<45} {e.self_cpu_time_total / steps:9.1f} us/step  x{e.count // steps}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-sizes", default="4,128,512")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    arrays = data.synthetic_arrays(n_train=8192, n_test=16)
    x, y = loops.resident_tensors(arrays.train_x, arrays.train_y, torch.device("cpu"))
    cores = torch.get_num_threads()
    print(f"torch {torch.__version__}, {cores} threads by default, bf16 units: "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    for batch in batches:
        profile(batch, x, y, max(args.steps // max(batch // 32, 1), 20))
    levers = ["plain", "channels_last", "mkldnn_off", "foreach"]
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        levers.append("bf16")
    best = (0.0, None)
    for batch in batches:
        steps = max(args.steps // max(batch // 32, 1), 20)
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            rates = {lever: [] for lever in levers}
            made = {lever: make_step(batch, x, y, lever) for lever in levers}
            for r in range(args.rounds):
                for lever in levers if r % 2 == 0 else reversed(levers):
                    rates[lever].append(images_per_s(*made[lever], batch, steps))
            plain = statistics.median(rates["plain"])
            ratios = ", ".join(f"{lever} {statistics.median(rates[lever]) / plain:.2f}x" for lever in levers[1:])
            print(f"== batch {batch}, {threads} thread(s): plain {plain:,.0f} images/s; {ratios}")
            for lever in levers:
                rate = statistics.median(rates[lever])
                if rate > best[0]:
                    best = (rate, (batch, threads, lever))
    torch.set_num_threads(cores)
    rate, (batch, threads, lever) = best
    flops = 3 * sum(_layer_flops(batch))  # forward + backward (2x) per image, at this batch
    peak = matmul_gflops(2048, 2048, 2048)
    shapes = [matmul_gflops(*s) for s in _gemm_shapes(batch)]
    print(f"\n== fastest: {rate:,.0f} images/s at batch {batch}, {threads} thread(s), {lever}: "
          f"{rate * flops / batch / 1e9:.1f} GFLOP/s; fp32 matmul 2048^3 here: {peak:.1f} GFLOP/s "
          f"({100 * rate * flops / batch / 1e9 / peak:.0f}% of it)")
    print(f"   the model's own GEMM shapes at batch {batch} run at " + ", ".join(f"{g:.1f}" for g in shapes)
          + f" GFLOP/s ({100 * statistics.median(shapes) / peak:.0f}% of the square matmul, median)")


def _layer_flops(batch: int) -> list[int]:
    """Forward multiply-adds x2 per layer of the tutorial Net, for a whole batch."""
    return [2 * batch * 6 * 28 * 28 * 3 * 25, 2 * batch * 16 * 10 * 10 * 6 * 25, 2 * batch * 400 * 120,
            2 * batch * 120 * 84, 2 * batch * 84 * 10]


def _gemm_shapes(batch: int) -> list[tuple[int, int, int]]:
    """The layers as (m, k, n) GEMMs: convolutions by im2col (output pixels x kernel volume x channels)."""
    return [(batch * 28 * 28, 3 * 25, 6), (batch * 10 * 10, 6 * 25, 16), (batch, 400, 120), (batch, 120, 84),
            (batch, 84, 10)]


if __name__ == "__main__":
    main()
