"""Benchmark (not a test): is the report's first sentence, the tutorial's job time, the time the tutorial's own
script takes on this machine?

It writes a full-size CIFAR-format folder (50,000 + 10,000 generated images in the official python-pickle
layout), then, round after round in alternating order (tutorial, harness whole, harness projected; then the
reverse: a drift of the machine hits every side alike), runs:
- the tutorial's script (tests/perf/tutorial_cifar10.py) in a fresh interpreter, timed whole from the outside;
  torchvision's md5 check of the generated files is computed as usual but not compared with the official digests;
- the harness's job Case measured whole (no budget), through the runner as a sweep runs it: its `job_s`;
- the harness's job within a sweep's budget (--budget, default 3 s as `bench run`), in the sittings a sweep plans
  (bench/sweep/plan.py `job_sittings`), back to back, or with --spread around and between the two whole runs (as a
  sweep spreads them over its Cases): its projected `job_s` and 95% interval, combined from the sittings
  as the report combines them (bench/analysis/repeats.py).
The harness's job runs in the allocator state a sweep plans for it (bench/sweep/plan.py JOB_MALLOC), or in --malloc's;
the tutorial's script runs as a user runs it, glibc's thresholds left dynamic, or with --script-malloc same in the
harness's state (through glibc's environment variables).
It prints each round, then the ratio harness/tutorial of whole-job times (median over rounds with a bootstrap
95% interval) and in how many rounds the projected interval covered the tutorial's time.

    python tests/perf/job_vs_tutorial.py [--rounds 5] [--budget 3] [--malloc default] [--script-malloc same]
        [--spread] [--json FILE]

Exit status 0 when the whole-job ratio's interval lies within 1 +- --target-pct and the projection's interval
covered the real time in at least 4 of 5 rounds (the same share of other round counts), else 1.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
HERE = Path(__file__).resolve().parent

# torchvision checks the files' md5 against the official digests, which generated images cannot match: the digest
# is still computed (its cost is part of the tutorial's start-up), only not compared. Each line the script prints
# is written with the monotonic clock's time into sys.argv[2], for the phases: imports and data, training, tests
RUN_TUTORIAL = """
import sys, time
started = time.perf_counter()
times = open(sys.argv[2], "w", buffering=1)
times.write(f"{started}\\t(start)\\n")
class Stamped:
    def write(self, text):
        for line in text.splitlines():
            if line.strip():
                times.write(f"{time.perf_counter()}\\t{line}\\n")
        return len(text)
    def flush(self):
        times.flush()
sys.stdout = Stamped()
import os, runpy
import torchvision.datasets.cifar as cifar
from torchvision.datasets.utils import calculate_md5
cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath) and bool(calculate_md5(fpath))
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def write_cifar_folder(root: Path, n_train: int = 50000, n_test: int = 10000) -> Path:
    """A CIFAR-10 python-format folder of generated images (the synthetic class patterns), as the official
    archive unpacks: data_batch_1..5, test_batch, batches.meta."""
    from cnn.cifar_files import PY_FOLDER, write_python_folder
    from cnn.data import synthetic_arrays

    return write_python_folder(synthetic_arrays(n_train, n_test), root / PY_FOLDER)


def tutorial_run(data_root: Path, env: dict) -> dict[str, float]:
    """The tutorial's script run whole in a fresh interpreter, in a folder whose ./data is `data_root`: its wall
    time and its phases, from the times it printed its lines."""
    with tempfile.TemporaryDirectory() as cwd:
        os.symlink(data_root, Path(cwd) / "data")
        stamps = Path(cwd) / "times.tsv"
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", RUN_TUTORIAL, str(HERE / "tutorial_cifar10.py"), str(stamps)],
                             cwd=cwd, env=env, capture_output=True, text=True)
        end = time.perf_counter()
        if out.returncode != 0:
            raise SystemExit(f"the tutorial's script failed: {out.stderr.strip().splitlines()[-1:]}")
        lines = [line.split("\t", 1) for line in stamps.read_text().splitlines()]
    at = [(float(t) - t0, text) for t, text in lines]

    def first(prefix: str) -> float:
        return next(t for t, text in at if text.startswith(prefix))

    started, shown = at[0][0], at[1][0]  # the interpreter's start; the first line: after the data and the peek
    trained, accuracy, last = first("Finished Training"), first("Accuracy of the network"), at[-1][0]
    return {"tutorial_s": end - t0, "interpreter_s": started, "startup_s": shown, "train_s": trained - shown,
            "test_s": last - trained, "accuracy_pass_s": accuracy - trained, "exit_s": end - t0 - last}


def main() -> int:
    from harness_vs_minimal import bootstrap_median_ci  # beside this script

    from bench.analysis import repeats
    from bench.measuring import allocator
    from bench.running import runner
    from bench.schema import JOB
    from bench.store.run_folder import results_frame
    from bench.sweep.plan import JOB_MALLOC, plan_cases
    from bench.sweep.spec import with_defaults
    from cnn.data import prepare_cifar10

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=3.0, help="the projected job's --max-seconds")
    parser.add_argument("--malloc", default=None, choices=sorted(allocator.STATES),
                        help=f"the harness's allocator state (default: the job's own, {JOB_MALLOC})")
    parser.add_argument("--script-malloc", choices=["same", "glibc"], default="glibc",
                        help="the tutorial script's allocator state: the harness's (--malloc), or glibc's own dynamic "
                             "thresholds, unpinned, as a user's script runs")
    parser.add_argument("--spread", action="store_true",
                        help="run the projected job's sittings around and between the two whole runs, as a sweep "
                             "spreads them over its Cases, instead of back to back")
    parser.add_argument("--target-pct", type=float, default=5.0)
    parser.add_argument("--json", help="also write every measurement to this file")
    args = parser.parse_args()
    args.malloc = args.malloc or JOB_MALLOC

    env = {**os.environ, **allocator.environment(args.malloc), "MPLBACKEND": "Agg"}
    if args.script_malloc == "glibc":
        env = {k: v for k, v in env.items() if not k.startswith("MALLOC_")}
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp) / "data"
        write_cifar_folder(data_root)
        prepared = prepare_cifar10(data_root, verify=False, download=False)  # generated: no official digests

        def job(max_seconds: float | None) -> list:
            spec = with_defaults(devices=["cpu"], batch_sizes=[4], threads=[1], pipelines=["tutorial"],
                                 widths=[1.0], modes=["train"], mallocs=[args.malloc], max_seconds=max_seconds,
                                 job=True)
            cases = [c for c in plan_cases(spec, str(prepared.cache_dir), prepared.name) if c.mode == JOB]
            return [replace(c, malloc=args.malloc) for c in cases]  # the job's own state unless --malloc says

        whole, sampled = job(None), job(args.budget)
        ctx = None
        rows = []
        def measured(cases: list) -> list:
            results = [runner.run_one(case, ctx) for case in cases]
            for result in results:
                if result.status != "ok":
                    raise SystemExit(f"the harness's job ended {result.status}: {result.error}")
            return results

        def fields(results: list) -> dict:
            [combined] = repeats.collapse(results_frame(results)).to_dict("records")
            out = {k: combined.get(k) for k in ("job_s", "job_s_low", "job_s_high", "job_startup_s", "job_import_s",
                                                "job_dataset_s", "job_data_s", "job_compute_s", "job_eval_s",
                                                "job_fraction", "job_sittings", "minor_faults_per_step",
                                                "malloc_state")}
            return {**out, "sittings_s": [r.job_s for r in results]}

        for rnd in range(args.rounds):
            row: dict = {}
            runs = ["tutorial", "whole"] if rnd % 2 == 0 else ["whole", "tutorial"]
            if args.spread:  # the sittings around and between the two whole runs, as a sweep spreads them
                groups = [list(g) for g in np.array_split(range(len(sampled)), 3)]
                schedule = [*groups[0], runs[0], *groups[1], runs[1], *groups[2]]
            else:  # back to back after (or before) the whole runs: they see less of the machine's drift
                schedule = [*runs, "projected"] if rnd % 2 == 0 else ["projected", *runs]
            sittings: list = []
            for side in schedule:
                if side == "tutorial":
                    row["tutorial"] = tutorial_run(data_root, env)
                    continue
                ctx = ctx or runner._context()
                if side == "whole":
                    row["whole"] = fields(measured(whole))
                else:
                    sittings += measured(sampled if side == "projected" else [sampled[side]])
            row["projected"] = fields(sittings)
            t, w, p = row["tutorial"], row["whole"], row["projected"]
            real = t["tutorial_s"]
            row["ratio"] = w["job_s"] / real
            row["covered"] = p["job_s_low"] <= real <= p["job_s_high"]
            rows.append(row)
            print(f"round {rnd + 1}: tutorial {real:6.1f} s (start-up {t['startup_s']:.1f}, training {t['train_s']:.1f}, "
                  f"test {t['test_s']:.1f}, exit {t['exit_s']:.1f}) | harness whole {w['job_s']:6.1f} s (ratio "
                  f"{row['ratio']:.3f}; start-up {w['job_startup_s']:.1f} (datasets {w['job_dataset_s']:.1f}), training "
                  f"{w['job_data_s'] + w['job_compute_s']:.1f}, test {w['job_eval_s']:.1f}) | projected {p['job_s']:6.1f} s, 95% "
                  f"{p['job_s_low']:.1f}-{p['job_s_high']:.1f} from {100 * p['job_fraction']:.1f}% measured (sittings "
                  f"{', '.join(f'{v:.1f}' for v in p['sittings_s'])}): "
                  f"{'covers' if row['covered'] else 'MISSES'}", flush=True)
    ratios = [r["ratio"] for r in rows]
    low, high = bootstrap_median_ci(ratios)
    covered = sum(r["covered"] for r in rows)
    band = args.target_pct / 100
    agrees = 1 - band <= low and high <= 1 + band
    print(f"\nwhole job, harness/tutorial: median {statistics.median(ratios):.3f}, 95% CI {low:.3f}-{high:.3f} over "
          f"{len(rows)} rounds: {'within' if agrees else 'NOT shown within'} {args.target_pct:g}%")
    print(f"projected job (budget {args.budget:g} s): its 95% interval covered the tutorial's time in {covered} of "
          f"{len(rows)} rounds; allocator state {args.malloc}, the script's "
          f"{args.malloc if args.script_malloc == 'same' else 'glibc (unpinned)'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0 if agrees and covered >= 0.8 * len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
