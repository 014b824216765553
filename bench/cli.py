"""`python -m bench run|plan|check|env|report|compare|export`: parse and validate at the edge, hand plain data on."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import psutil

from bench.compare import METRICS
from bench.converters import (accuracy_pct, batch_sizes, choices, devices, non_negative_int, percentage,
                              positive_float, positive_int, seconds_or_zero, thread_counts, widths, world_sizes)
from bench.schema import AMP, MEMORY_FORMATS, MODES, PIPELINES, SweepSpec

DATASETS = ("auto", "cifar10", "synthetic")
LR_SCALINGS = ("none", "linear", "sqrt")
DEFAULTS = {"epochs": 2, "max_steps": None, "max_seconds": 12.0, "warmup_steps": 10, "window_s": 0.5,
            "latency_batches": 200}
QUICK = {"epochs": 1, "max_steps": 300, "max_seconds": 0.8, "warmup_steps": 5, "window_s": 0.2,
         "latency_batches": 30}


class CliError(Exception):
    """Bad input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        # no abbreviations: `batch_size=4` in the Python API must not pass for --batch-sizes
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        raise CliError(message.removeprefix("argument "))


# --------------------------------------------------------------------------- parser


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    axes = p.add_argument_group("sweep axes")
    axes.add_argument("--devices", type=devices, help="cpu, cuda, cuda:N (default: cpu, plus cuda when available)")
    axes.add_argument("--batch-sizes", type=batch_sizes, default=[4, 32, 128, 512], help="default 4,32,128,512")
    axes.add_argument("--threads", type=thread_counts,
                      help="CPU threads per Case (default: 1 and all physical cores)")
    axes.add_argument("--pipelines", type=choices(PIPELINES), default=list(PIPELINES), help="tutorial,resident")
    axes.add_argument("--widths", type=widths, default=[1.0], help="conv channel multiplier (default 1)")
    axes.add_argument("--modes", type=choices(MODES), default=list(MODES), help="train,infer")
    axes.add_argument("--repeats", type=positive_int, default=1, help="runs of each Case (default 1)")
    axes.add_argument("--world-sizes", type=world_sizes, default=[1],
                      help="data-parallel ranks per training Case, e.g. 1,2 (default 1); --batch-sizes and "
                           "--threads are per rank; on CUDA one GPU per rank")
    variants = p.add_argument_group("step variants (each recorded in the Case)")
    variants.add_argument("--amp", type=choices(AMP), default=["off"],
                          help="off, bf16 (autocast), or both: off,bf16 (default off)")
    variants.add_argument("--memory-formats", type=choices(MEMORY_FORMATS), default=["contiguous"],
                          help="contiguous, channels_last, or both (default contiguous)")
    variants.add_argument("--cuda-graphs", action="store_true",
                          help="also run the resident training step captured in a CUDA graph (CUDA devices only)")
    budget = p.add_argument_group("per-Case budget")
    budget.add_argument("--epochs", type=positive_int, help="epochs per Case (default 2, the tutorial's)")
    budget.add_argument("--max-steps", type=positive_int, help="stop a Case after this many steps")
    budget.add_argument("--max-seconds", type=seconds_or_zero,
                        help="stop a Case after this much training time (default 12; 0: run every epoch)")
    budget.add_argument("--time-limit", type=positive_float, default=600.0,
                        help="kill a Case after this many seconds; it is recorded as a timeout (default 600)")
    budget.add_argument("--quick", action="store_true",
                        help="a fast look: 1 epoch, at most 300 steps or 0.8 s of training per Case")
    budget.add_argument("--warmup-steps", type=non_negative_int, help="steps excluded from throughput (default 10)")
    budget.add_argument("--window", type=positive_float, dest="window_s", help="timed window, s (default 0.5)")
    budget.add_argument("--latency-batches", type=positive_int,
                        help="inference batches timed one by one for latency (default 200)")
    train = p.add_argument_group("training")
    train.add_argument("--lr", type=positive_float, default=0.001, help="learning rate at batch 4 (default 0.001)")
    train.add_argument("--lr-scaling", choices=LR_SCALINGS, default="none",
                       help="scale the lr with batch size relative to 4: none, linear, sqrt")
    train.add_argument("--target-accuracy", type=accuracy_pct, default=50.0, dest="target_accuracy_pct",
                       help="test accuracy, %%, whose time to reach is recorded (default 50)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--num-workers", type=non_negative_int, default=2,
                       help="DataLoader workers of the tutorial pipeline (default 2, the tutorial's)")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="auto",
                      help="auto: real CIFAR-10 when present or downloadable, else synthetic")
    data.add_argument("--data-dir", default="data", help="where CIFAR-10 is or goes (default ./data)")
    data.add_argument("--no-verify", action="store_true",
                      help="accept a custom folder in the CIFAR-10 format (skip the official MD5s)")
    data.add_argument("--no-download", action="store_true", help="never download CIFAR-10")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="run folder (default reports/<run-id>, or $BENCH_REPORTS_DIR/<run-id>)")
    out.add_argument("--resume", action="store_true", help="re-run only the Cases not already ok in --out")
    out.add_argument("--no-report", action="store_true", help="do not build the report at the end")


def get_parser() -> Parser:
    parser = Parser(prog="bench", description="Does a GPU help the PyTorch CIFAR-10 tutorial CNN? Measure it.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", help="sweep the Cases and write reports/<run-id>/")
    _add_sweep_args(run)
    run.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    plan = sub.add_parser("plan", help="list the Cases a run would make, with an estimated duration")
    _add_sweep_args(plan)
    plan.add_argument("--write-cases", metavar="DIR",
                      help="also prepare the data and write each Case as DIR/NNN.json, for `python -m bench.worker` "
                           "(e.g. under torchrun on every node of a cluster)")
    check = sub.add_parser("check", help="does every device and step variant work here? one tiny Case each")
    check.add_argument("--devices", type=devices, help="cpu, cuda, cuda:N (default: cpu, plus cuda when available)")
    sub.add_parser("env", help="print the environment a run would record")
    report = sub.add_parser("report", help="build report.md/report.html from one run folder or several")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by bench run")
    report.add_argument("--out", help="report folder (default: the run folder when there is one)")
    compare = sub.add_parser("compare", help="Case by Case against a baseline run; exit 1 on a regression")
    compare.add_argument("baseline", metavar="BASELINE_RUN", help="folder written by bench run")
    compare.add_argument("new", metavar="NEW_RUN", help="folder written by bench run")
    compare.add_argument("--threshold", type=percentage, default=10.0,
                         help="how much worse counts, when also beyond the noise (default 10%%)")
    compare.add_argument("--metric", default="images_per_s", choices=list(METRICS), metavar="METRIC",
                         help=f"one of {', '.join(METRICS)} (default images_per_s)")
    export = sub.add_parser("export", help="write a run in another tool's format")
    export.add_argument("run", metavar="RUN", help="folder written by bench run")
    export.add_argument("--format", default="pytest-benchmark", choices=["pytest-benchmark"],
                        help="pytest-benchmark: JSON that `pytest-benchmark compare` reads (the default)")
    export.add_argument("--out", help="file to write (default RUN/pytest-benchmark.json)")
    return parser


# --------------------------------------------------------------------------- validation needing the machine


def cuda_device_count() -> int:
    import torch

    # device_count asks NVML first, so this process does not initialise CUDA (is_available would)
    return torch.cuda.device_count()


def cuda_index(device: str) -> int:
    """The index of an indexed CUDA device name ('cuda:1' -> 1)."""
    return int(device.split(":")[1])


def resolve_devices(requested: list[str] | None, n_cuda: int) -> tuple[list[str], dict[str, str]]:
    """(devices to run, {skipped device: why}), every CUDA device indexed: `cuda` names cuda:0, the
    device a fresh process uses (asking torch for its current device would create a CUDA context
    in this process). A CUDA device on a machine without CUDA is skipped, and an error when it is
    the only one asked for; an index past this machine's devices is an error."""
    if requested is None:
        return (["cpu", "cuda:0"] if n_cuda else ["cpu"]), {}
    usable, skipped, asked = [], {}, {}
    for text in requested:
        device = "cuda:0" if text == "cuda" else text
        if device in asked:
            continue
        asked[device] = text
        if device.startswith("cuda") and n_cuda == 0:
            skipped[device] = "CUDA is not available on this machine"
        elif device.startswith("cuda") and cuda_index(device) >= n_cuda:
            raise CliError(f"--devices: '{text}' is not available: this machine has {n_cuda} CUDA device(s) "
                           f"(expected {', '.join(f'cuda:{i}' for i in range(n_cuda))})")
        else:
            usable.append(device)
    if not usable:
        first = next(iter(skipped))
        raise CliError(f"--devices: '{asked[first]}' is not available: {skipped[first]} (expected e.g. cpu)")
    return usable, skipped


def _check_cuda_graphs(args: argparse.Namespace, devices_: list[str]) -> None:
    """Graphs capture the resident training step on a GPU; asked for where none applies, refuse."""
    if not any(d.startswith("cuda") for d in devices_):
        raise CliError("--cuda-graphs: CUDA graphs need a CUDA device, and --devices has none "
                       "(expected e.g. --devices cpu,cuda)")
    if "resident" not in args.pipelines or "train" not in args.modes:
        raise CliError("--cuda-graphs: graphs capture the resident pipeline's training step "
                       "(expected --pipelines to include resident and --modes to include train)")


def _check_world_sizes(args: argparse.Namespace, devices_: list[str], n_cuda: int) -> None:
    """Data-parallel Cases train with DDP; refuse what that path cannot honour, before any Case runs."""
    top = max(args.world_sizes)
    if top == 1:
        return
    if "train" not in args.modes:
        raise CliError("--world-sizes: data-parallel Cases train (expected --modes to include train)")
    if args.cuda_graphs:
        raise CliError("--world-sizes: CUDA graphs are not captured around DDP's all-reduce here "
                       "(expected --world-sizes 1 with --cuda-graphs)")
    named = [d for d in devices_ if d.startswith("cuda") and cuda_index(d) != 0]
    if named:
        raise CliError(f"--world-sizes: a data-parallel Case's ranks use cuda:0..cuda:N-1, one GPU each, so "
                       f"'{named[0]}' cannot name them (expected --devices cuda, or --world-sizes 1 with {named[0]})")
    if any(d.startswith("cuda") for d in devices_) and top > n_cuda:
        raise CliError(f"--world-sizes: {top} ranks need {top} GPUs (one per rank) and this machine has {n_cuda} "
                       f"(expected at most {n_cuda}, or --devices cpu)")


def build_spec(args: argparse.Namespace, n_cuda: int) -> SweepSpec:
    preset = QUICK if args.quick else DEFAULTS
    budget = {k: (getattr(args, k) if getattr(args, k) is not None else preset[k]) for k in DEFAULTS}
    if budget["max_seconds"] == 0.0:
        budget["max_seconds"] = None
    devices_, skipped = resolve_devices(args.devices, n_cuda)
    if args.cuda_graphs:
        _check_cuda_graphs(args, devices_ + list(skipped))
    _check_world_sizes(args, devices_, n_cuda)
    threads = args.threads or sorted({1, psutil.cpu_count(logical=False) or 1})
    variants = {"amp": args.amp, "memory_formats": args.memory_formats, "cuda_graphs": args.cuda_graphs,
                "world_sizes": args.world_sizes}
    return SweepSpec(devices=devices_, batch_sizes=args.batch_sizes, threads=threads, pipelines=args.pipelines,
                     widths=args.widths, modes=args.modes, time_limit_s=args.time_limit, repeats=args.repeats,
                     seed=args.seed, lr=args.lr, lr_scaling=args.lr_scaling,
                     target_accuracy_pct=args.target_accuracy_pct, num_workers=args.num_workers,
                     dataset=args.dataset, data_dir=args.data_dir, verify=not args.no_verify,
                     download=not args.no_download, skipped_devices=skipped, **variants, **budget)


# --------------------------------------------------------------------------- commands


def _print_plan(cases, spec: SweepSpec, dataset: str) -> None:
    from bench.plan import estimate_seconds

    for case in cases:
        print(f"  {case.key}")
    seconds, bounded = estimate_seconds(cases)
    bound = "about" if bounded else "at most (no --max-seconds; bounded by --time-limit)"
    print(f"{len(cases)} Cases on {dataset} data; estimated duration {bound} {seconds / 60:.1f} min")
    for device, why in spec.skipped_devices.items():
        print(f"  skipped device {device}: {why}")
    from bench.plan import oversubscription_warnings

    for text in oversubscription_warnings(cases, psutil.cpu_count(logical=False) or 1):
        print(f"  warning: {text}")


def cmd_plan(args: argparse.Namespace) -> int:
    from bench.plan import plan_cases

    spec = build_spec(args, cuda_device_count())
    if getattr(args, "write_cases", None):
        return _write_cases(spec, Path(args.write_cases))
    dataset = args.dataset if args.dataset != "auto" else "auto-detected"
    _print_plan(plan_cases(spec, data_cache="", dataset=dataset), spec, dataset)
    return 0


def _write_cases(spec: SweepSpec, folder: Path) -> int:
    """Case files whose data cache is this machine's (on a cluster: a path every node sees)."""
    from bench.api import prepare_data
    from bench.plan import plan_cases

    try:
        prepared = prepare_data(spec)
        folder.mkdir(parents=True, exist_ok=True)
        for i, case in enumerate(plan_cases(spec, str(prepared.cache_dir), prepared.name, run_id=folder.name)):
            path = folder / f"{i:03d}.json"
            path.write_text(json.dumps(asdict(case), indent=2))
            print(f"{path}  {case.key}")
    except ValueError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"--write-cases: '{folder}' cannot be written ({e.strerror or e})") from None
    return 0


def _warn(text: str) -> None:
    print(f"bench: WARNING: {text}", file=sys.stderr, flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return cmd_plan(args)
    from bench import api
    from bench.results import load_results, summary_table

    spec = build_spec(args, cuda_device_count())
    run_dir, _ = api.new_run_dir(args.out)
    signal.signal(signal.SIGTERM, _interrupt)  # a `kill` stops the running Case too, not only Ctrl-C
    try:
        api.run_sweep(spec, run_dir, resume=args.resume, warn=_warn)
    except ValueError as e:
        raise CliError(str(e)) from None
    except KeyboardInterrupt:
        print(f"\nbench: interrupted; finished Cases are kept in {run_dir / 'results.jsonl'}. "
              f"Resume with: python -m bench run --resume --out {run_dir} (and the same options)", file=sys.stderr)
        return 130
    results = load_results(run_dir)
    print(summary_table(results))
    if results and results[0].case.dataset == "synthetic":
        print("bench: measured on SYNTHETIC data: throughput is representative, accuracy is not CIFAR-10's")
    if not args.no_report:
        report = api.make_report(run_dir)
        print(f"bench: report in {report.markdown} and {report.html}")
    print(f"bench: results in {run_dir}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """A table of checks as they end; exit 1 when one that applies here fails."""
    import time

    from bench import check

    n_cuda = cuda_device_count()
    devices_, skipped = resolve_devices(args.devices, n_cuda)
    print(check.HEADER, flush=True)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = check.check_machine(devices_, skipped, n_cuda, lambda r: print(check.format_row(r), flush=True))
    except KeyboardInterrupt:
        print("\nbench: check interrupted", file=sys.stderr)
        return 130
    print(check.summary(results, time.monotonic() - started))
    return check.exit_status(results)


def cmd_env(args: argparse.Namespace) -> int:
    from bench import environment

    print(json.dumps(environment.capture(), indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import build_report
    from bench.results import RunError

    runs = [Path(r) for r in args.runs]
    for run in runs:
        if not (run / "results.jsonl").is_file():
            raise CliError(f"report: '{run}' holds no results.jsonl (expected a folder written by bench run)")
    if args.out is None and len(runs) > 1:
        raise CliError("report: --out is needed with several run folders (expected e.g. --out reports/compare)")
    out = Path(args.out) if args.out else runs[0]
    try:
        report = build_report(runs, out)
    except RunError as e:
        raise CliError(f"report: {e}") from None
    except OSError as e:
        raise CliError(f"--out: '{out}' cannot be written ({e.strerror or e})") from None
    print(report.markdown.read_text().split("\n## ")[0])
    print(f"bench: report in {report.markdown} and {report.html}")
    return 0


def _load(path: str, what: str):
    from bench.results import RunError, load_run

    try:
        return load_run(Path(path))
    except RunError as e:
        raise CliError(f"{what}: {e}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    """Exit 1 when a Case got worse beyond the threshold and the noise, 0 otherwise."""
    from bench.compare import CompareError, compare_runs, render

    baseline, new = _load(args.baseline, "compare: BASELINE_RUN"), _load(args.new, "compare: NEW_RUN")
    try:
        comparison = compare_runs(baseline.frame, new.frame, args.metric, args.threshold)
    except CompareError as e:
        raise CliError(f"compare: {e}") from None
    print(render(comparison))
    return 1 if len(comparison.regressions) else 0


def cmd_export(args: argparse.Namespace) -> int:
    from bench.export import pytest_benchmark_json

    run = _load(args.run, "export: RUN")
    doc, left_out = pytest_benchmark_json(run)
    if not doc["benchmarks"]:
        raise CliError(f"export: '{args.run}' has no finished Case with timed windows to export")
    out = Path(args.out) if args.out else run.path / "pytest-benchmark.json"
    try:
        out.write_text(json.dumps(doc, indent=2))
    except OSError as e:
        raise CliError(f"--out: '{out}' cannot be written ({e.strerror or e})") from None
    print(f"bench: {len(doc['benchmarks'])} Cases exported to {out}"
          + (f" ({left_out} not finished, left out)" if left_out else "")
          + f"; browse with: pytest-benchmark compare {out}")
    return 0


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "check": cmd_check, "env": cmd_env, "report": cmd_report,
            "compare": cmd_compare, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    """Returns the exit status: 0 done, 1 a regression found (compare), 2 bad input (one line, no
    traceback), 130 interrupted."""
    try:
        args = get_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except CliError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
