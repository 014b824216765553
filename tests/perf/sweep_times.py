"""How long `python -m bench run` takes from this checkout, a first run (empty data cache) alternating with a run
whose data is prepared, with the host's steal time over each run.

    python tests/perf/sweep_times.py --runs 4            # --quick --dataset synthetic, 4 of each
    python tests/perf/sweep_times.py --runs 1 --default  # the default sweep instead

Each run gets the same new data cache folder (CNN_CACHE_DIR), emptied before a first run and removed at the end;
the run folders go to a temporary folder. Timings vary with the machine's neighbours: compare medians over runs,
not one run, and never across machines.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def _cpu_times() -> tuple[float, float]:
    """(steal, all) CPU seconds of the whole machine, read as bench/running/contention.py reads them (psutil); guest time is
    counted inside user and nice already, so it is left out of the total."""
    t = psutil.cpu_times()
    return getattr(t, "steal", 0.0), sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--default", action="store_true", help="the default sweep, not --quick")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs: {args.runs} is not a count of runs (expected 1 or more)")
    sweep = ["--dataset", "synthetic"] + ([] if args.default else ["--quick"])
    times: dict[str, list[float]] = {"first run": [], "data prepared": []}
    # untimed: the first command after a while reads torch's and torchvision's files from disk, which any run
    # after it finds in the page cache
    subprocess.run([sys.executable, "-c", "import torch, torchvision"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory(prefix="sweep-times-") as tmp:
        cache, reports = Path(tmp) / "cache", Path(tmp) / "reports"
        env = dict(os.environ, CNN_CACHE_DIR=str(cache), BENCH_REPORTS_DIR=str(reports))
        for i in range(args.runs):
            for kind in times:
                if kind == "first run":
                    shutil.rmtree(cache, ignore_errors=True)
                steal0, all0 = _cpu_times()
                started = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "bench", "run", *sweep], cwd=ROOT, env=env,
                                      capture_output=True, text=True)
                took = time.perf_counter() - started
                steal1, all1 = _cpu_times()
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
                    return 1
                times[kind].append(took)
                print(f"{kind:13} {took:6.1f} s   host steal {100 * (steal1 - steal0) / max(all1 - all0, 1):4.1f}%",
                      flush=True)
    for kind, values in times.items():
        print(f"{kind}: median {statistics.median(values):.1f} s, {min(values):.1f}-{max(values):.1f} s "
              f"over {len(values)} runs of `python -m bench run {' '.join(sweep)}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
