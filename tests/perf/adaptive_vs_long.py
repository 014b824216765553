"""Benchmark (not a test): does stopping a Case once its median is precise give the figure a long run gives?

Runs the same Cases two ways, interleaved (adaptive, long, long, adaptive, ...) so the machine's drift hits
both alike: with adaptive stopping (`--precision`, default 2%, within --max-seconds) and with a long fixed
budget (no precision target, --long-seconds of training). Each way measures every Case in --processes
processes (as `bench run --repeats` does), so that each side states an interval over processes
(bench/analysis/repeats.py: the geometric mean of the processes' medians, Student's t with the spread between processes
pooled over that side's Cases), not only over the windows of one process, which a re-run in a new process
lands outside of on a shared machine. For each Case it prints both sides' figures and intervals, then:
whether the long run's figure lies inside the interval the adaptive run stated (is its precision honest?),
whether the adaptive figure lies inside the long run's interval (the issue's criterion), and the same two
questions for one process a side with the within-process intervals alone (what a single `bench run` states).

    python tests/perf/adaptive_vs_long.py [--processes 3] [--batch-sizes 32,128] [--pipelines resident,tutorial]
        [--threads 1] [--precision 2] [--max-seconds 3] [--long-seconds 10]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _inside(value, low, high) -> bool:
    return low is not None and high is not None and low <= value <= high


def main() -> int:
    from bench.analysis import repeats
    from bench.running import runner
    from bench.store.run_folder import results_frame
    from bench.sweep import spec
    from bench.sweep.plan import plan_cases
    from cnn.data import prepare_synthetic

    p = argparse.ArgumentParser()
    p.add_argument("--processes", type=int, default=3, help="processes per Case and side (at least 2)")
    p.add_argument("--batch-sizes", default="32,128")
    p.add_argument("--pipelines", default="resident,tutorial")
    p.add_argument("--modes", default="train")
    p.add_argument("--threads", default="1")
    p.add_argument("--precision", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=3.0)
    p.add_argument("--long-seconds", type=float, default=10.0)
    args = p.parse_args()
    if args.processes < 2:
        p.error("--processes: at least 2 (an interval over processes needs two)")

    sweep = spec.spec_from_keywords({"devices": ["cpu"], "batch_sizes": args.batch_sizes.split(","),
                                     "threads": args.threads.split(","), "pipelines": args.pipelines.split(","),
                                     "modes": args.modes.split(","), "job": False, "epochs": 100,
                                     "max_seconds": args.max_seconds, "precision": args.precision},
                                    n_cuda=0)
    cases = plan_cases(sweep, str(prepare_synthetic().cache_dir), "synthetic", "adaptive-vs-long")
    ctx = runner._context()
    results, spent = {"adaptive": [], "long": []}, {"adaptive": 0.0, "long": 0.0}
    for process in range(args.processes):
        for case in cases:
            for how in ("adaptive", "long") if process % 2 == 0 else ("long", "adaptive"):
                run = replace(case, repeat=process, run_id=f"adaptive-vs-long-{how}")
                if how == "long":
                    run = replace(run, target_precision_pct=None, max_seconds=args.long_seconds)
                t0 = time.perf_counter()
                result = runner.run_one(run, ctx)
                spent[how] += time.perf_counter() - t0
                if result.status != "ok":
                    print(f"{run.key} {how}: {result.status} {result.error}", flush=True)
                    return 1
                results[how].append(result)
                print(f"process {process + 1} {case.key:40s} {how:8s} {result.images_per_s:8.0f} images/s  "
                      f"+-{result.images_per_s_ci_pct or float('nan'):4.1f}% over {len(result.windows_s):3d} windows  "
                      f"{result.train_s:5.1f} s  stop {result.stopped_by}  faults/step "
                      f"{result.minor_faults_per_step or 0:.0f}", flush=True)

    frames = {how: results_frame(rs) for how, rs in results.items()}
    collapsed = {how: repeats.collapse(f).set_index("key") for how, f in frames.items()}
    spread = {how: repeats.between_processes(f) for how, f in frames.items()}
    print("\nbetween processes of one Case (standard deviation, pooled): "
          + ", ".join(f"{how} +-{100 * (math.exp(s) - 1):.1f}% ({dof} degrees of freedom)"
                      for how, (s, dof) in spread.items()))
    covered = inside = 0
    print(f"\nper Case, over {args.processes} processes a side: adaptive figure [interval], long figure [interval]")
    for key, a in collapsed["adaptive"].iterrows():
        b = collapsed["long"].loc[key]
        honest = _inside(b["images_per_s"], a["images_per_s_ci_low"], a["images_per_s_ci_high"])
        ok = _inside(a["images_per_s"], b["images_per_s_ci_low"], b["images_per_s_ci_high"])
        covered, inside = covered + honest, inside + ok
        print(f"  {key:38s} adaptive {a['images_per_s']:7.0f} [{a['images_per_s_ci_low']:.0f}-"
              f"{a['images_per_s_ci_high']:.0f}]  long {b['images_per_s']:7.0f} [{b['images_per_s_ci_low']:.0f}-"
              f"{b['images_per_s_ci_high']:.0f}]  ratio {a['images_per_s'] / b['images_per_s']:.3f}  "
              f"{'covered' if honest else 'NOT COVERED'}  {'inside' if ok else 'OUTSIDE'}")
    n = len(collapsed["adaptive"])
    print(f"\nover processes: {covered} of {n} long figures inside the adaptive run's interval (honest?); "
          f"{inside} of {n} adaptive figures inside the long run's interval")
    pairs = list(zip(results["adaptive"], results["long"]))
    one_covered = sum(_inside(b.images_per_s, a.images_per_s_ci_low, a.images_per_s_ci_high) for a, b in pairs)
    one_inside = sum(_inside(a.images_per_s, b.images_per_s_ci_low, b.images_per_s_ci_high) for a, b in pairs)
    ratios = [a.images_per_s / b.images_per_s for a, b in pairs]
    print(f"one process a side, its windows' interval alone: {one_covered} of {len(pairs)} long medians inside the "
          f"adaptive interval, {one_inside} of {len(pairs)} adaptive medians inside the long one; adaptive/long "
          f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")
    print(f"time: adaptive {spent['adaptive']:.0f} s, long {spent['long']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
