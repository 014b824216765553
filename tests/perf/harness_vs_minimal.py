"""Benchmark (not a test): does the harness measure what a user's own training loop gets?

For each configuration (pipeline x batch size) it measures, alternately in ABBA order (minimal, harness,
harness, minimal, ...: a drift of the machine hits both sides alike; the minimal loop first, so that a device it
cannot use is named before the harness's fork server has started), the harness's training images/s for
the Case (total images over total time of its timed windows) and a minimal hand-written loop doing the same
work (same data, model, batch size, threads, steps) in a fresh `python -c` process, timed as total images /
total time after the same warm-up. Each round gives one ratio harness/minimal. After --rounds (or, with
--min-rounds, from that round on, stopping once it decides) it computes a bootstrap 95% confidence interval of
the median ratio: the interval lies inside 1 +- (--target-pct) (agreement, the only way it is claimed) or wholly
outside it (disagreement); else it says which it could not tell: an interval within +-target of its centre
that crosses the band's edge, or one wider than that (the machine was too noisy to decide). Each configuration runs in each
allocator state of --mallocs (bench/measuring/allocator.py), both sides in the same state: the harness's Case pins it with
mallopt, the minimal loop gets it from glibc's environment variables from its first allocation. Every measurement
also prints minor page faults per timed step on both sides, which the state decides (default: every large block
handed back and faulted in again each step; tuned: kept).

    python tests/perf/harness_vs_minimal.py [--batch-sizes 4,32,128] [--pipelines tutorial,resident]
        [--mallocs default,tuned] [--steps 1000] [--rounds 16] [--min-rounds N] [--target-pct 3] [--threads 2]
        [--device cuda:0]

Exit status 0 when every configuration agrees, 1 when one disagrees or could not be decided.
On CUDA both sides train on the GPU with cuDNN autotuning on (as the harness does), the minimal
loop timed between two device synchronises; the tutorial pipeline pins memory and copies with
non_blocking, as the harness does there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MINIMAL = textwrap.dedent("""
    import itertools, sys, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
    from PIL import Image
    from torch.utils.data import Dataset, DataLoader
    import torchvision.transforms as T
    cache, pipeline, bs, threads, steps, warmup = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
    dev = torch.device(sys.argv[7])
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5); self.pool = nn.MaxPool2d(2, 2); self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(400, 120); self.fc2 = nn.Linear(120, 84); self.fc3 = nn.Linear(84, 10)
        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x))); x = self.pool(F.relu(self.conv2(x)))
            x = torch.flatten(x, 1); return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    images = np.load(f"{cache}/train_x.npy", mmap_mode="r"); labels = np.load(f"{cache}/train_y.npy")
    net = Net().to(dev); criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    if pipeline == "tutorial":
        transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
        held = np.array(images)  # in memory, as torchvision's CIFAR10 holds its images (and the harness's dataset)
        class Images(Dataset):
            def __len__(self): return len(labels)
            def __getitem__(self, i): return transform(Image.fromarray(held[i])), int(labels[i])
        loader = DataLoader(Images(), batch_size=bs, shuffle=True, num_workers=2, pin_memory=cuda, drop_last=True)
        epoch = lambda: ((a.to(dev, non_blocking=cuda), b.to(dev, non_blocking=cuda)) for a, b in loader)
    else:
        x = ((torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5).contiguous().to(dev)
        y = torch.from_numpy(labels).to(dev)
        def epoch():
            order = torch.randperm(len(y), device=dev)
            return ((x[order[i:i + bs]], y[order[i:i + bs]]) for i in range(0, len(y) - bs + 1, bs))
    # full batches only, epoch after epoch until the steps are done: a partial last batch is a new shape (cuDNN
    # autotunes it inside the span at batch 128 and over), which the harness keeps out of its windows
    batches = (batch for _ in itertools.count() for batch in epoch())
    import resource
    faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    done = timed_images = 0
    for inputs, target in batches:
        if done == warmup:
            sync()
            t0, f0 = time.perf_counter(), faults()
        if done >= warmup:
            timed_images += len(target)
        optimizer.zero_grad()
        loss = criterion(net(inputs), target)
        loss.backward()
        optimizer.step()
        if pipeline == "tutorial":
            loss.item()
        done += 1
        if done == warmup + steps:
            break
    sync()
    print(timed_images / (time.perf_counter() - t0), (faults() - f0) / (done - warmup), timed_images, done - warmup)
""")


def minimal_run(cache: str, pipeline: str, bs: int, threads: int, steps: int, warmup: int,
                device: str = "cpu", malloc: str = "default") -> tuple[float, float, int, int]:
    """(images/s, minor page faults per timed step, images timed, steps timed) of the minimal loop in a fresh
    interpreter, its malloc put in the allocator state `malloc` from its first allocation by glibc's environment
    variables."""
    from bench.measuring import allocator

    out = subprocess.run([sys.executable, "-c", MINIMAL, cache, pipeline, str(bs), str(threads), str(steps),
                          str(warmup), device], capture_output=True, text=True,
                         env={**os.environ, **allocator.environment(malloc)})
    if out.returncode != 0:
        raise SystemExit(f"the minimal loop failed on {device}: {out.stderr.strip().splitlines()[-1:]}")
    rate, faults, images, timed = out.stdout.strip().splitlines()[-1].split()
    return float(rate), float(faults), int(images), int(timed)


def bootstrap_median_ci(values: list[float], resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median."""
    data = np.asarray(values, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(data), (resamples, len(data)))
    medians = np.median(data[picks], axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def decide(ratios: list[float], target_pct: float) -> tuple[str, float, float, float]:
    """(verdict, centre, low, high) of the median ratio's interval: 'agrees' when it lies inside 1 +- target,
    'disagrees' when it lies wholly outside, 'straddles' when it is within +-target of its centre but crosses
    the band's edge, else 'noisy' (wider than +-target)."""
    low, high = bootstrap_median_ci(ratios)
    centre = statistics.median(ratios)
    band = target_pct / 100
    if 1 - band <= low and high <= 1 + band:
        return "agrees", centre, low, high
    if high < 1 - band or low > 1 + band:
        return "disagrees", centre, low, high
    return ("straddles" if (high - low) / 2 <= band * centre else "noisy"), centre, low, high


def may_decide(done: int, rounds: int, min_rounds: int | None) -> bool:
    """Whether a verdict is drawn after `done` rounds: at the last round, or with `min_rounds` from that round on
    (at least 2 rounds either way)."""
    first = rounds if min_rounds is None else min(min_rounds, rounds)
    return done >= max(first, 2)


def main() -> int:
    from bench.running import runner
    from bench.sweep.plan import plan_cases
    from bench.sweep.spec import with_defaults
    from cnn.data import prepare_synthetic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=16, help="rounds per configuration (fewer only with --min-rounds)")
    parser.add_argument("--min-rounds", type=int, default=None,
                        help="stop early once the interval decides, from this round on (default: run every --rounds "
                             "round: stopping at the first interval that agrees lets chance pick the interval)")
    parser.add_argument("--target-pct", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="4,32,128")
    parser.add_argument("--pipelines", default="tutorial,resident")
    parser.add_argument("--mallocs", default="default,tuned",
                        help="allocator states (bench/measuring/allocator.py), each side in the same state")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    parser.add_argument("--json", help="also write every measurement and verdict to this file")
    args = parser.parse_args()

    prepared = prepare_synthetic()
    warmup = 10
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    # as many epochs as the steps need at the largest batch (the harness stops at max_steps), so neither side's
    # span ends early or takes in a partial last batch
    n_train = len(np.load(prepared.cache_dir / "train_y.npy"))
    epochs = max(math.ceil((warmup + args.steps) / (n_train // b)) for b in batch_sizes)
    spec = with_defaults(devices=[args.device], batch_sizes=batch_sizes,
                         threads=[args.threads], pipelines=args.pipelines.split(","), widths=[1.0], modes=["train"],
                         mallocs=args.mallocs.split(","), epochs=epochs, max_steps=warmup + args.steps, max_seconds=None,
                         warmup_steps=warmup, window_s=0.5, precision_pct=None, job=False)
    cases = plan_cases(spec, str(prepared.cache_dir), prepared.name)
    ctx = None  # the fork server, started after the first minimal run (its imports would share that run's CPU)
    report: dict[str, dict] = {}
    for case in cases:
        rows: list[dict] = []
        verdict = ("noisy", float("nan"), float("nan"), float("nan"))
        for rnd in range(args.rounds):
            row: dict = {}
            for side in ("minimal", "harness") if rnd % 2 == 0 else ("harness", "minimal"):
                if side == "harness":
                    ctx = ctx or runner._context()
                    result = runner.run_one(case, ctx)
                    if result.status != "ok":
                        raise SystemExit(f"the harness's Case {case.key} ended {result.status}: {result.error}")
                    row.update(harness=sum(result.windows_images) / sum(result.windows_s),
                               harness_median=result.images_per_s, harness_faults=result.minor_faults_per_step,
                               startup_s=result.startup_s)
                else:
                    row["minimal"], row["minimal_faults"], _, _ = minimal_run(
                        str(prepared.cache_dir), case.pipeline, case.batch_size, args.threads, args.steps, warmup,
                        args.device, case.malloc)
            row["ratio"] = row["harness"] / row["minimal"]
            rows.append(row)
            print(f"{case.key:46} round {rnd + 1:2}: harness {row['harness']:8.0f} ({row['harness_faults'] or 0:6.0f} "
                  f"faults/step)  minimal {row['minimal']:8.0f} ({row['minimal_faults']:6.0f} faults/step)  "
                  f"ratio {row['ratio']:.3f}", flush=True)
            if may_decide(len(rows), args.rounds, args.min_rounds):
                verdict = decide([r["ratio"] for r in rows], args.target_pct)
                if verdict[0] in ("agrees", "disagrees"):
                    break
        report[case.key] = {"pipeline": case.pipeline, "batch_size": case.batch_size, "rounds": rows,
                            "verdict": verdict[0], "ratio": verdict[1], "ci": [verdict[2], verdict[3]]}
    print(f"\n{'case':46} {'rounds':>6} {'harness':>8} {'minimal':>8} {'median ratio':>12} {'95% CI':>13}  verdict "
          f"(harness/minimal, images/s medians; {args.steps} timed steps, {args.threads} threads, {args.device})")
    for key, r in report.items():
        h = statistics.median(x["harness"] for x in r["rounds"])
        m = statistics.median(x["minimal"] for x in r["rounds"])
        word = {"agrees": f"agrees within {args.target_pct:g}%",
                "disagrees": f"DISAGREES by more than {args.target_pct:g}%",
                "straddles": f"not shown to agree: the interval crosses {1 - args.target_pct / 100:g} or "
                             f"{1 + args.target_pct / 100:g} after {len(r['rounds'])} rounds",
                "noisy": f"undecided: too noisy for +-{args.target_pct:g}% in {len(r['rounds'])} rounds"}[r["verdict"]]
        print(f"{key:46} {len(r['rounds']):6} {h:8.0f} {m:8.0f} {r['ratio']:12.3f} {r['ci'][0]:6.3f}-{r['ci'][1]:.3f}  {word}")
    startups = [x["startup_s"] for r in report.values() for x in r["rounds"]]
    print(f"per-Case start-up (fork to first step, data cache warm): median {statistics.median(startups):.2f} s, "
          f"max {max(startups):.2f} s over {len(startups)} Cases")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if all(r["verdict"] == "agrees" for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
