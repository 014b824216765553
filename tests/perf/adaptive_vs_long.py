"""Benchmark (not a test): does stopping a Case once its median is precise give the figure a long run gives?

Runs the same Cases two ways, interleaved (adaptive, long, adaptive, long, ...) so the machine's drift
hits both alike: with adaptive stopping (`--precision`, default 2%, within --max-seconds) and with a long
fixed budget (no precision target, --long-seconds of training). For each Case it prints the adaptive
median, interval and stop reason, the long run's median and 95% interval, whether the adaptive median lies
inside the long run's interval and whether the long run's median lies inside the interval the adaptive run
stated (the honest-precision check: a run stopped by its budget states a wide one); then how many did, and
the time each way took.

    python tests/perf/adaptive_vs_long.py [--rounds 2] [--batch-sizes 32,128] [--pipelines resident,tutorial]
        [--threads 1] [--precision 2] [--max-seconds 3] [--long-seconds 30]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from bench import runner, spec
    from bench.plan import plan_cases
    from cnn.data import prepare_synthetic

    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-sizes", default="32,128")
    p.add_argument("--pipelines", default="resident,tutorial")
    p.add_argument("--modes", default="train")
    p.add_argument("--threads", default="1")
    p.add_argument("--precision", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=3.0)
    p.add_argument("--long-seconds", type=float, default=30.0)
    args = p.parse_args()

    sweep = spec.spec_from_keywords({"devices": ["cpu"], "batch_sizes": args.batch_sizes.split(","),
                                     "threads": args.threads.split(","), "pipelines": args.pipelines.split(","),
                                     "modes": args.modes.split(","), "job": False, "epochs": 100,
                                     "max_seconds": args.max_seconds, "precision": args.precision},
                                    n_cuda=0)
    cases = plan_cases(sweep, str(prepare_synthetic().cache_dir), "synthetic", "adaptive-vs-long")
    ctx = runner._context()
    rows, spent = {c.key: {"adaptive": [], "long": []} for c in cases}, {"adaptive": 0.0, "long": 0.0}
    for rnd in range(args.rounds):
        for case in cases:
            for how in ("adaptive", "long") if rnd % 2 == 0 else ("long", "adaptive"):
                run = case if how == "adaptive" else replace(case, target_precision_pct=None,
                                                             max_seconds=args.long_seconds)
                t0 = time.perf_counter()
                result = runner.run_one(run, ctx)
                spent[how] += time.perf_counter() - t0
                if result.status != "ok":
                    print(f"{case.key} {how}: {result.status} {result.error}", flush=True)
                    return 1
                rows[case.key][how].append(result)
                ci = (f"{result.images_per_s_ci_low:.0f}-{result.images_per_s_ci_high:.0f}"
                      if result.images_per_s_ci_low else "-")
                print(f"round {rnd + 1} {case.key:42s} {how:8s} {result.images_per_s:9.0f} images/s  95% CI {ci:>13s} "
                      f"+-{result.images_per_s_ci_pct or float('nan'):4.1f}%  {len(result.windows_s):3d} windows  "
                      f"{result.train_s:5.1f} s  stop {result.stopped_by}", flush=True)
    inside = covered = total = 0
    print("\nper Case and round: is the adaptive median inside the long run's 95% interval, and is the long run's "
          "median inside the interval the adaptive run stated (same round)?")
    for key, r in rows.items():
        for a, b in zip(r["adaptive"], r["long"]):
            ok = b.images_per_s_ci_low is not None and b.images_per_s_ci_low <= a.images_per_s <= b.images_per_s_ci_high
            honest = a.images_per_s_ci_low is not None and a.images_per_s_ci_low <= b.images_per_s <= a.images_per_s_ci_high
            inside, covered, total = inside + ok, covered + honest, total + 1
            ratio = a.images_per_s / b.images_per_s
            adaptive_ci = (f"[{a.images_per_s_ci_low:.0f}-{a.images_per_s_ci_high:.0f}]"
                           if a.images_per_s_ci_low is not None else "[-]")
            print(f"  {key:42s} adaptive {a.images_per_s:8.0f} {adaptive_ci} ({a.stopped_by}, {a.train_s:4.1f} s)  long "
                  f"{b.images_per_s:8.0f} [{b.images_per_s_ci_low:.0f}-{b.images_per_s_ci_high:.0f}]  "
                  f"ratio {ratio:.3f}  {'inside' if ok else 'OUTSIDE'}  {'covered' if honest else 'NOT COVERED'}")
    ratios = [a.images_per_s / b.images_per_s for r in rows.values() for a, b in zip(r["adaptive"], r["long"])]
    print(f"\n{covered} of {total} long-run medians inside the adaptive run's stated interval (is its precision "
          f"honest?)")
    print(f"{inside} of {total} adaptive medians inside the long run's interval; adaptive/long median ratio "
          f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}); time: adaptive "
          f"{spent['adaptive']:.0f} s, long {spent['long']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
