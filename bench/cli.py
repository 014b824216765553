"""`python -m bench run|plan|check|env|report|compare|export`: parse and validate at the edge, hand plain data on."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path

import psutil

from bench.analysis.compare import METRICS
from bench.measuring.devices import cuda_device_count
from bench.schema import SweepSpec
from bench.sweep import spec as spec_stage
from bench.sweep.converters import devices, percentage
from bench.sweep.options import QUICK, add_sweep_args  # noqa: F401 (QUICK: the --quick presets)
from bench.sweep.spec import SpecError, resolve_devices  # noqa: F401


CliError = SpecError  # bad input, from argv or from the spec stage: printed as one line, exit status 2


def version() -> str:
    """This project's version as installed (its metadata), else as pyproject.toml declares it."""
    from importlib import metadata

    try:
        return metadata.version("cifar10-gpu-bench")
    except metadata.PackageNotFoundError:
        import re

        found = re.search(r'^version = "([^"]+)"', (Path(__file__).parent.parent / "pyproject.toml").read_text(), re.M)
        return found.group(1) if found else "unknown"


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        # no abbreviations: `batch_size=4` in the Python API must not pass for --batch-sizes
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        raise CliError(message.removeprefix("argument "))


def get_parser() -> Parser:
    parser = Parser(prog="bench", description="Does a GPU help the PyTorch CIFAR-10 tutorial CNN? Measure it.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", help="sweep the Cases and write reports/<run-id>/")
    add_sweep_args(run)
    run.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    plan = sub.add_parser("plan", help="list the Cases a run would make, with an estimated duration")
    add_sweep_args(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (each Case's fields, the estimate)")
    plan.add_argument("--write-cases", metavar="DIR",
                      help="also prepare the data and write each Case as DIR/NNN.json, for `python -m bench.running.worker` "
                           "(e.g. under torchrun on every node of a cluster)")
    check = sub.add_parser("check", help="does every device and step variant work here? one tiny Case each")
    check.add_argument("--devices", type=devices, help="cpu, cuda, cuda:N (default: cpu, plus cuda when available)")
    check.add_argument("--json", action="store_true", help="print the checks as JSON lines as they end, no table")
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
    compare.add_argument("--json", action="store_true",
                         help="print the comparison as JSON (every Case's figures, ratio, band and verdict)")
    compare.add_argument("--force", action="store_true",
                         help="compare runs that differ in data set, budget, torch, devices or Case settings "
                              "(the differences are printed first)")
    export = sub.add_parser("export", help="write a run in another tool's format")
    export.add_argument("run", metavar="RUN", help="folder written by bench run")
    export.add_argument("--format", default="pytest-benchmark", choices=["pytest-benchmark"],
                        help="pytest-benchmark: JSON that `pytest-benchmark compare` reads (the default)")
    export.add_argument("--out", help="file to write (default RUN/pytest-benchmark.json)")
    return parser


def build_spec(args: argparse.Namespace, n_cuda: int) -> SweepSpec:
    """The run's SweepSpec from parsed argv (bench/sweep/options.py declares the options, bench/sweep/spec.py checks them)."""
    return spec_stage.build_spec(vars(args), n_cuda)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _print_plan(cases, spec: SweepSpec, dataset: str) -> None:
    from bench.sweep.plan import estimate_seconds

    for case in cases:
        print(f"  {case.key}")
    seconds, bounded = estimate_seconds(cases)
    least, _ = estimate_seconds(cases, precise=True)
    if not bounded:
        print(f"{len(cases)} Cases on {dataset} data; estimated duration at most (no --max-seconds; bounded by "
              f"--time-limit) {_duration(seconds)}")
    elif least < seconds:
        print(f"{len(cases)} Cases on {dataset} data; estimated duration {_duration(least)} to {_duration(seconds)} "
              f"(from every Case precise to +-{spec.precision_pct:g}% at its sixth window, to every Case running "
              f"its whole --max-seconds)")
    else:
        print(f"{len(cases)} Cases on {dataset} data; estimated duration about {_duration(seconds)} (longer where a "
              f"Case's warm-up and three timed steps outlast its --max-seconds, as large batches' may)")
    for device, why in spec.skipped_devices.items():
        print(f"  skipped device {device}: {why}")
    from bench.sweep.plan import oversubscription_warnings

    for text in oversubscription_warnings(cases, psutil.cpu_count(logical=False) or 1):
        print(f"  warning: {text}")


def cmd_plan(args: argparse.Namespace) -> int:
    from bench.sweep.plan import plan_cases

    spec = build_spec(args, cuda_device_count())
    if getattr(args, "write_cases", None):
        return _write_cases(spec, Path(args.write_cases))
    dataset = spec.dataset if spec.dataset != "auto" else "auto-detected"
    cases = plan_cases(spec, data_cache="", dataset=dataset)
    if getattr(args, "json", False):  # `run --dry-run` prints the plan as people read it
        _print_plan_json(cases, spec)
    else:
        _print_plan(cases, spec, dataset)
    return 0


def _print_plan_json(cases, spec: SweepSpec) -> None:
    from bench.sweep.plan import estimate_seconds, oversubscription_warnings

    seconds, bounded = estimate_seconds(cases)
    least, _ = estimate_seconds(cases, precise=True)
    print(json.dumps({"cases": [{"key": c.key, **asdict(c)} for c in cases],
                      "estimate_s": {"least": least, "most": seconds, "bounded_by_max_seconds": bounded},
                      "skipped_devices": spec.skipped_devices,
                      "warnings": oversubscription_warnings(cases, psutil.cpu_count(logical=False) or 1)}, indent=2))


def _write_cases(spec: SweepSpec, folder: Path) -> int:
    """Case files whose data cache is this machine's (on a cluster: a path every node sees)."""
    from bench.api import prepare_data
    from bench.sweep.plan import plan_cases
    from cnn.files import write_whole

    try:
        prepared = prepare_data(spec)
        folder.mkdir(parents=True, exist_ok=True)
        for i, case in enumerate(plan_cases(spec, str(prepared.cache_dir), prepared.name, run_id=folder.name)):
            path = folder / f"{i:03d}.json"
            write_whole(path, json.dumps(asdict(case), indent=2))
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
    from bench.report.summary import summary_table
    from bench.store.run_folder import RunFolder

    spec = build_spec(args, cuda_device_count())
    try:
        run_dir, _ = api.new_run_dir(args.out)
    except ValueError as e:
        raise CliError(str(e)) from None
    signal.signal(signal.SIGTERM, _interrupt)  # a `kill` stops the running Case too, not only Ctrl-C
    try:
        run = api.sweep_run(spec, run_dir, resume=args.resume, warn=_warn, csv=args.no_report)
    except ValueError as e:
        raise CliError(str(e)) from None
    except KeyboardInterrupt:
        print(f"\nbench: interrupted; finished Cases are kept in {RunFolder(run_dir).results_path}. "
              f"Resume with: python -m bench run --resume --out {run_dir} (and the same options)", file=sys.stderr)
        return 130
    print(summary_table(run.results))
    if run.results and run.results[0].case.dataset == "synthetic":
        print("bench: measured on SYNTHETIC data: throughput is representative, accuracy is not CIFAR-10's")
    if not args.no_report:
        from bench.report.build import build_report

        report = build_report([run], run_dir)
        print(f"bench: report in {report.markdown} and {report.html}")
    print(f"bench: results in {run_dir}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """A table of checks as they end; exit 1 when one that applies here fails."""
    import time

    from bench.running import check

    n_cuda = cuda_device_count()
    devices_, skipped = resolve_devices(args.devices, n_cuda)
    if args.json:  # one object a line as each check ends, then the summary's: a reader never waits for the table
        show = lambda r: print(json.dumps(check.as_record(r)), flush=True)  # noqa: E731
    else:
        print(check.HEADER, flush=True)
        show = lambda r: print(check.format_row(r), flush=True)  # noqa: E731
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = check.check_machine(devices_, skipped, n_cuda, show)
    except KeyboardInterrupt:
        print("\nbench: check interrupted", file=sys.stderr)
        return 130
    text = check.summary(results, time.monotonic() - started)
    print(json.dumps({"summary": text.removeprefix("bench: "), "exit_status": check.exit_status(results)})
          if args.json else text)
    return check.exit_status(results)


def cmd_env(args: argparse.Namespace) -> int:
    from bench.running import environment

    print(json.dumps(_for_people(environment.capture()), indent=2))  # environment.json keeps every digit
    return 0


def _for_people(value):
    """Floats rounded to 1 decimal, for a person reading them."""
    if isinstance(value, float):
        return round(value, 1)
    if isinstance(value, dict):
        return {k: _for_people(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_people(v) for v in value]
    return value


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report.build import build_report
    from bench.store.run_folder import RunError, RunFolder

    runs = []
    for run in map(Path, args.runs):
        if not RunFolder(run).has_results():
            raise CliError(f"report: '{run}' holds no results.jsonl (expected a folder written by bench run)")
        if all(not run.samefile(seen) for seen in runs):  # the same run given twice is one run
            runs.append(run)
    if args.out is None and len(runs) > 1:
        raise CliError("report: --out is needed with several run folders (expected e.g. --out reports/compare)")
    out = Path(args.out) if args.out else runs[0]
    if out.is_dir() and RunFolder(out).has_results() and not (len(runs) == 1 and out.samefile(runs[0])):
        raise CliError(f"--out: '{out}' is a run folder of its own, whose results.csv this report would replace "
                       f"(expected a new folder, e.g. --out reports/compare)")
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
    from bench.store.run_folder import RunError, RunFolder

    try:
        return RunFolder(path).load()
    except RunError as e:
        raise CliError(f"{what}: {e}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    """Exit 1 when a Case got worse beyond the threshold and the noise, 0 otherwise."""
    from bench.analysis.compare import CompareError, as_record, compare_runs, differences, render

    baseline, new = _load(args.baseline, "compare: BASELINE_RUN"), _load(args.new, "compare: NEW_RUN")
    differ = differences(baseline.frame, new.frame, baseline.environment, new.environment)
    if differ and not args.force:
        raise CliError(f"compare: the runs are not comparable: {'; '.join(differ)} (expected two runs of the same "
                       f"sweep on the same software; --force compares anyway)")
    if differ:
        print(f"bench: comparing anyway (--force); the runs differ in: {'; '.join(differ)}\n",
              file=sys.stderr if args.json else sys.stdout)
    try:
        comparison = compare_runs(baseline.frame, new.frame, args.metric, args.threshold)
    except CompareError as e:
        raise CliError(f"compare: {e}") from None
    print(json.dumps(as_record(comparison, differ), indent=2) if args.json else render(comparison))
    return 1 if len(comparison.regressions) else 0


def cmd_export(args: argparse.Namespace) -> int:
    from bench.store.export import pytest_benchmark_json
    from bench.store.run_folder import OWN, RESULTS
    from cnn.files import write_whole

    run = _load(args.run, "export: RUN")
    doc, left_out = pytest_benchmark_json(run)
    if not doc["benchmarks"]:
        raise CliError(f"export: '{args.run}' has no finished Case with timed windows to export")
    out = Path(args.out) if args.out else run.path / "pytest-benchmark.json"
    if out.name in OWN and (out.parent / RESULTS).exists():
        raise CliError(f"--out: '{out}' is a run folder's own {out.name}, which the export would replace "
                       f"(expected another file, e.g. {out.parent / 'pytest-benchmark.json'})")
    try:
        write_whole(out, json.dumps(doc, indent=2))
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
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that stopped early shows here, inside the try
        return status
    except CliError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except BrokenPipeError:  # `bench plan | head -2`: the reader has what it wanted, as with any Unix tool
        _quiet_stdout()
        return 0


def _quiet_stdout() -> None:
    """After a closed pipe: what is still buffered goes nowhere, and the interpreter's last flush at exit
    raises nothing."""
    import os

    with suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
