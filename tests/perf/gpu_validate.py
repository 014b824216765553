"""Validates a GPU machine in one command (at most 8 minutes on one H100, estimated with the harness's own plan),
with no network, and leaves everything in one folder, ready to commit:

  1. env        `bench env`: the machine, torch, CUDA, cuDNN, the driver;
  2. check      `bench check --devices cuda`: every pipeline x mode x step variant on the GPU, 6 steps each;
  3. sweep      the sample sweep: cpu and cuda, both pipelines, batch sizes 4-512, train and infer, the CUDA-graph
                variant, the tutorial's job and the input bound, 1 s a Case; its report is copied to
                reports/sample-gpu-<gpu name>/ in the folder, to commit as the GPU sample;
  4. variants   the step variants on the GPU: bf16 autocast, channels_last, strict fp32, graphs, resident training at
                batch 128 and 512;
  5. compile    torch.compile's step on the GPU at batch 512 (its compiling is most of its time);
  6. truth      the CUDA truth check (tests/perf/harness_vs_minimal.py): the harness's training figure against an
                independent minimal loop, full batches on both sides, at batch 128.

Every step runs even when an earlier one failed; the exit status is 1 when any failed. `--dry-run` runs nothing:
it prints each step's command, its Cases where it has a plan, and its estimated time from the harness's plan
(bench/sweep/plan.py estimate_seconds, with a GPU Case's start-up, compiling and evaluation), then the total, and
exits 1 when the total passes --limit-s (default 480 s).

    python tests/perf/gpu_validate.py [OUT_DIR] [--dry-run] [--limit-s 480]
    (tests/perf/gpu_validate.sh runs this.)

Settings (environment), each added after the step's own options (later options win): BENCH_CHECK_ARGS,
BENCH_SWEEP_ARGS, BENCH_VARIANTS_ARGS, BENCH_COMPILE_ARGS, TRUTH_ARGS; PYTHON (default: this interpreter).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

LIMIT_S = 480  # eight minutes of one GPU
ENV_S = 10.0  # `bench env`: imports and the CUDA query
CEILINGS_S = 15.0  # a sweep's ceiling worker on a GPU: a CUDA context and the matmul timings (not in the plan's estimate)
CHECK_STEPS_S = 1.0  # a check row's 6 steps and its evaluation
TRUTH_MEASUREMENT_S = 8.0  # one side of a truth-check round: a fresh interpreter, a CUDA context, the data to the GPU,
#                            10 + 300 steps

COMMON = ["--dataset", "synthetic", "--max-seconds", "1", "--epochs", "1", "--eval-images", "2000"]
SWEEP = ["--devices", "cpu,cuda", "--batch-sizes", "4,32,128,512", "--modes", "train,infer", "--cuda-graphs", *COMMON]
VARIANTS = ["--devices", "cuda", "--pipelines", "resident", "--modes", "train", "--batch-sizes", "128,512",
            "--amp", "off,bf16", "--memory-formats", "contiguous,channels_last", "--fp32-math", "default,strict",
            "--cuda-graphs", "--no-job", "--no-input-bound", *COMMON]
COMPILE = ["--devices", "cuda", "--pipelines", "resident", "--modes", "train", "--batch-sizes", "512",
           "--compile", "on", "--no-job", "--no-input-bound", *COMMON]
TRUTH = ["--device", "cuda:0", "--pipelines", "resident", "--batch-sizes", "128", "--mallocs", "default",
         "--steps", "300", "--rounds", "4", "--min-rounds", "4"]


@dataclass
class Step:
    name: str
    argv: list[str]
    estimate_s: float
    detail: str = ""


def _extra(var: str) -> list[str]:
    return shlex.split(os.environ.get(var, ""))


def _threads() -> list[str]:
    import psutil

    return ["--threads", str(psutil.cpu_count(logical=False) or 1)]  # the host's best, not the thread axis


def _sweep_estimate(args: list[str]) -> tuple[float, str]:
    """The harness's own estimate of a `bench run` with these options on a machine of one GPU."""
    from bench import cli
    from bench.sweep.plan import CUDA_START_S, estimate_seconds, plan_cases

    spec = cli.build_spec(cli.get_parser().parse_args(["run", *args]), n_cuda=1)
    cases = plan_cases(spec, "", "synthetic")
    seconds, bounded = estimate_seconds(cases)
    if not bounded:
        raise SystemExit(f"gpu_validate: a sweep without --max-seconds cannot be estimated: {shlex.join(args)}")
    cuda = sum(c.device.startswith("cuda") for c in cases)
    return seconds + CEILINGS_S + CUDA_START_S, (f"{len(cases)} Cases ({cuda} on the GPU), plan's estimate "
                                                 f"{seconds:.0f} s + ceilings {CEILINGS_S:.0f} s")


def _check_estimate() -> tuple[float, str]:
    from bench.running import check
    from bench.sweep.plan import COMPILE_S, CUDA_START_S

    rows = [c.case for c in check.plan_checks(["cuda:0"], {}, 1, {}) if c.case.device == "cuda:0"]
    compiled = sum(c.compile_mode is not None for c in rows)
    seconds = len(rows) * (CUDA_START_S + CHECK_STEPS_S) + compiled * COMPILE_S
    return seconds, f"{len(rows)} rows on cuda:0, {compiled} compiled"


def _truth_estimate(args: list[str]) -> tuple[float, str]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-sizes", default="4,32,128")
    parser.add_argument("--pipelines", default="tutorial,resident")
    parser.add_argument("--mallocs", default="default,tuned")
    parser.add_argument("--rounds", type=int, default=16)
    known, _ = parser.parse_known_args(args)
    configs = (len(known.batch_sizes.split(",")) * len(known.pipelines.split(","))
               * len(known.mallocs.split(",")))
    return (configs * known.rounds * 2 * TRUTH_MEASUREMENT_S,
            f"{configs} configuration(s) x at most {known.rounds} rounds x 2 sides")


def plan(out: Path, python: str) -> list[Step]:
    threads = _threads()
    sweep = SWEEP + threads + _extra("BENCH_SWEEP_ARGS")
    variants = VARIANTS + _extra("BENCH_VARIANTS_ARGS")
    compiled = COMPILE + _extra("BENCH_COMPILE_ARGS")
    truth = TRUTH + _extra("TRUTH_ARGS")
    check_s, check_detail = _check_estimate()
    steps = [Step("env", [python, "-m", "bench", "env"], ENV_S),
             Step("check", [python, "-m", "bench", "check", "--devices", "cuda", *_extra("BENCH_CHECK_ARGS")],
                  check_s, check_detail)]
    for name, args in (("sweep", sweep), ("variants", variants), ("compile", compiled)):
        seconds, detail = _sweep_estimate(args)
        steps.append(Step(name, [python, "-m", "bench", "run", *args, "--out", str(out / name)], seconds, detail))
    seconds, detail = _truth_estimate(truth)
    steps.append(Step("truth", [python, "tests/perf/harness_vs_minimal.py", *truth, "--json", str(out / "truth.json")],
                      seconds, detail))
    return steps


def _gpu_slug(out: Path) -> str:
    """'nvidia-h100-80gb-hbm3' from env.log's first GPU, else 'unknown'."""
    import json

    try:
        name = json.loads((out / "env.log").read_text())["gpus"][0]["name"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return "unknown"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def run(steps: list[Step], out: Path, python: str) -> int:
    summary = out / "summary.txt"
    status = 0

    def say(text: str) -> None:
        print(text, flush=True)
        with open(summary, "a") as f:
            f.write(text + "\n")

    for step in steps:
        say(f"== {step.name}: {shlex.join(step.argv)}")
        started = time.monotonic()
        with open(out / f"{step.name}.log", "w") as log:
            rc = subprocess.run(step.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        took = time.monotonic() - started
        if rc == 0:
            say(f"   ok in {took:.0f} s (estimated {step.estimate_s:.0f} s; log: {step.name}.log)")
        else:
            last = ((out / f"{step.name}.log").read_text(errors="replace").strip().splitlines() or [""])[-1]
            say(f"   FAILED with exit status {rc} in {took:.0f} s: {last}")
            status = 1
    sample = out / "reports" / f"sample-gpu-{_gpu_slug(out)}"
    if (out / "sweep" / "results.jsonl").exists():
        shutil.copytree(out / "sweep", sample, dirs_exist_ok=True)
        rc = subprocess.run([python, "-m", "bench", "report", str(sample)], cwd=ROOT, capture_output=True).returncode
        say(f"== sample report: {sample.relative_to(out)} ({'written' if rc == 0 else f'report FAILED ({rc})'})")
        status = status or int(rc != 0)
        say("\n== verdict (sweep/report.md)")
        for line in (out / "sweep" / "report.md").read_text().splitlines()[:12]:
            say(line)
    truth_log = out / "truth.log"
    if truth_log.exists():
        lines = [x for x in truth_log.read_text().splitlines() if "agrees within" in x or "DISAGREES" in x]
        if lines:
            say("\n== truth check (truth.log)")
            for line in lines:
                say(line)
    say(f"gpu_validate: {'every step passed' if status == 0 else 'a step FAILED'}; everything is in {out}")
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", help="folder for everything (default reports/gpu-validate-<date-time>)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and their estimated time; run nothing")
    parser.add_argument("--limit-s", type=float, default=LIMIT_S, help="the time the whole may take (default 480 s)")
    args = parser.parse_args()
    out = Path(args.out or f"reports/gpu-validate-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    python = os.environ.get("PYTHON", sys.executable)
    steps = plan(out, python)
    total = sum(s.estimate_s for s in steps)
    if args.dry_run:
        for s in steps:
            print(f"{s.name:<9} ~{s.estimate_s:4.0f} s  {shlex.join(s.argv)}" + (f"\n{'':<16}{s.detail}" if s.detail else ""))
        fits = total <= args.limit_s
        print(f"total: about {total:.0f} s ({total / 60:.1f} min) for one GPU: "
              f"{'within' if fits else 'OVER'} the {args.limit_s:.0f} s limit")
        return 0 if fits else 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.txt").write_text("")
    nvidia = shutil.which("nvidia-smi")
    (out / "nvidia-smi.txt").write_text(subprocess.run([nvidia], capture_output=True, text=True).stdout
                                        if nvidia else "nvidia-smi: not found\n")
    print(f"gpu_validate: {len(steps)} steps, estimated {total:.0f} s", flush=True)
    return run(steps, out, python)


if __name__ == "__main__":
    sys.exit(main())
