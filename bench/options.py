"""The sweep's options as argv: the argparse groups `bench run` and `bench plan` share. Values are
converted by the spec stage's own converters (bench/spec.py), which owns the defaults."""
from __future__ import annotations

import argparse

from bench.spec import CONVERTERS, DATASETS, LR_SCALINGS, QUICK


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    """The options `run` and `plan` share: sweep axes and step variants here, the rest below."""
    axes = p.add_argument_group("sweep axes")
    axes.add_argument("--devices", type=CONVERTERS["devices"], help="cpu, cuda, cuda:N (default: cpu, plus cuda when available)")
    axes.add_argument("--batch-sizes", type=CONVERTERS["batch_sizes"], help="default 4,32,128,512")
    axes.add_argument("--threads", type=CONVERTERS["threads"],
                      help="CPU threads per Case (default: 1 and all physical cores)")
    axes.add_argument("--pipelines", type=CONVERTERS["pipelines"], help="tutorial,resident")
    axes.add_argument("--widths", type=CONVERTERS["widths"], help="conv channel multiplier (default 1)")
    axes.add_argument("--modes", type=CONVERTERS["modes"], help="train,infer")
    axes.add_argument("--repeats", type=CONVERTERS["repeats"], help="runs of each Case (default 1)")
    axes.add_argument("--world-sizes", type=CONVERTERS["world_sizes"],
                      help="data-parallel ranks per training Case, e.g. 1,2 (default 1); --batch-sizes and "
                           "--threads are per rank; on CUDA one GPU per rank")
    variants = p.add_argument_group("step variants (each recorded in the Case)")
    variants.add_argument("--amp", type=CONVERTERS["amp"],
                          help="off, bf16 (autocast), or both: off,bf16 (default off)")
    variants.add_argument("--memory-formats", type=CONVERTERS["memory_formats"],
                          help="contiguous, channels_last, or both (default contiguous)")
    variants.add_argument("--malloc", type=CONVERTERS["mallocs"], dest="mallocs",
                          help="the allocator state every Case is pinned in before it allocates: default (glibc's "
                               "malloc at its documented thresholds, 128 KiB, handing freed blocks back each step), "
                               "tuned (freed memory kept between steps, as MALLOC_MMAP_THRESHOLD_=33554432 "
                               "MALLOC_TRIM_THRESHOLD_=2147483647 give a script), or both: default,tuned "
                               "(default default)")
    variants.add_argument("--compile", type=CONVERTERS["compile"],
                          help="torch.compile the step: off, on, or both: off,on (default off)")
    variants.add_argument("--compile-modes", "--compile-mode", type=CONVERTERS["compile_modes"], dest="compile_modes",
                          help="torch.compile modes when --compile has on: default, reduce-overhead, max-autotune, "
                               "max-autotune-no-cudagraphs (default: default)")
    variants.add_argument("--cuda-graphs", action="store_true",
                          help="also run the resident training step captured in a CUDA graph (CUDA devices only)")
    _add_budget_and_data_args(p)


def _add_budget_and_data_args(p: argparse.ArgumentParser) -> None:
    budget = p.add_argument_group("per-Case budget")
    budget.add_argument("--epochs", type=CONVERTERS["epochs"], help="epochs per Case (default 2, the tutorial's)")
    budget.add_argument("--max-steps", type=CONVERTERS["max_steps"], help="stop a Case after this many steps")
    budget.add_argument("--max-seconds", type=CONVERTERS["max_seconds"],
                        help="stop a Case after this much training time, warm-up included, once it has 3 timed "
                             "windows (default 3; 0: run every epoch)")
    budget.add_argument("--time-limit", type=CONVERTERS["time_limit"],
                        help="kill a Case after this many seconds; it is recorded as a timeout (default 600)")
    budget.add_argument("--quick", action="store_true",
                        help=f"a fast look: {QUICK['epochs']} epoch, at most {QUICK['max_steps']} steps or "
                             f"{QUICK['max_seconds']:g} s of training per Case after a {QUICK['warmup_steps']}-step "
                             f"warm-up (3 timed windows at least), accuracy on {QUICK['eval_images']} test images, "
                             f"latency from at most {QUICK['latency_batches']} calls")
    budget.add_argument("--precision", type=CONVERTERS["precision_pct"], dest="precision_pct",
                        help="stop a Case once its median images/s is known within +-this %% (95%% interval over "
                             "at least 6 windows), within --max-seconds (default 2%%; --quick 5%%; 0: always "
                             "run the whole budget)")
    budget.add_argument("--warmup-steps", type=CONVERTERS["warmup_steps"],
                        help="steps excluded from throughput at least; warm-up goes on until step times settle "
                             "(default 10)")
    budget.add_argument("--window", type=CONVERTERS["window_s"], dest="window_s", help="timed window, s (default 0.1)")
    budget.add_argument("--latency-batches", type=CONVERTERS["latency_batches"],
                        help="inference batches timed one by one for latency (default 200)")
    budget.add_argument("--eval-images", type=CONVERTERS["eval_images"],
                        help=f"measure test accuracy on the first N test images (default all; --quick "
                             f"{QUICK['eval_images']})")
    train = p.add_argument_group("training")
    train.add_argument("--lr", type=CONVERTERS["lr"], help="learning rate at batch 4 (default 0.001)")
    train.add_argument("--lr-scaling", choices=LR_SCALINGS,
                       help="scale the lr with batch size relative to 4: none, linear, sqrt")
    train.add_argument("--target-accuracy", type=CONVERTERS["target_accuracy_pct"], dest="target_accuracy_pct",
                       help="test accuracy, %%, whose time to reach is recorded (default 50)")
    train.add_argument("--no-job", action="store_true",
                       help="leave out the tutorial's job (2 epochs at batch 4 with its DataLoader, then the test "
                            "pass) per device, which the report opens with")
    train.add_argument("--price", type=CONVERTERS["price"],
                       help="the machine's price in USD per hour, e.g. 0.10, or per device: cpu=0.10,cuda=0.90; "
                            "the report adds cost per epoch, of the tutorial's job and to the target accuracy")
    train.add_argument("--seed", type=CONVERTERS["seed"], help="default 0")
    train.add_argument("--num-workers", type=CONVERTERS["num_workers"],
                       help="DataLoader workers of the tutorial pipeline (default 2, the tutorial's)")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS,
                      help="auto: real CIFAR-10 when present or downloadable, else synthetic")
    data.add_argument("--data-dir", help="where CIFAR-10 is or goes (default ./data)")
    data.add_argument("--no-verify", action="store_true",
                      help="accept a custom folder in the CIFAR-10 format (skip the official MD5s)")
    data.add_argument("--no-download", action="store_true", help="never download CIFAR-10")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="run folder (default reports/<run-id>, or $BENCH_REPORTS_DIR/<run-id>)")
    out.add_argument("--resume", action="store_true", help="re-run only the Cases not already ok in --out")
    out.add_argument("--no-report", action="store_true", help="do not build the report at the end")
