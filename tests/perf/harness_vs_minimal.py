"""Benchmark (not a test): is the harness honest, and what does the input pipeline cost?

Measures, side by side in one run, alternating so the machine's drift hits both alike:
- the harness's training images/s for a Case (median over its timed windows), and
- a minimal hand-written loop doing the same work (same data, model, batch size,
  threads, steps) in a fresh process, timed as total images / total time after warm-up.

The harness reports the median over windows; the minimal loop can only give total
images / total time. So the harness's total over its windows (same definition) is
compared too: that ratio is the overhead check, the other shows what the median does.
Ratios are taken per round (harness and minimal run back to back), then the median.
Prints, per configuration, the figures and ratios, then the resident/tutorial ratio at
each batch size, and the harness's per-Case start-up overhead.

    python tests/perf/harness_vs_minimal.py [--steps 3000] [--rounds 3] [--batch-sizes 4] [--device cuda:0]

On CUDA both sides train on the GPU with cuDNN autotuning on (as the harness does), the minimal
loop timed between two device synchronises; the tutorial pipeline pins memory and copies with
non_blocking, as the harness does there.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MINIMAL = textwrap.dedent("""
    import sys, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
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
        class Images(Dataset):
            def __len__(self): return len(labels)
            def __getitem__(self, i): return transform(Image.fromarray(np.asarray(images[i]))), int(labels[i])
        loader = DataLoader(Images(), batch_size=bs, shuffle=True, num_workers=2, pin_memory=cuda)
        batches = ((a.to(dev, non_blocking=cuda), b.to(dev, non_blocking=cuda)) for a, b in loader)
    else:
        x = ((torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5).contiguous().to(dev)
        y = torch.from_numpy(labels).to(dev)
        order = torch.randperm(len(y), device=dev)
        batches = ((x[order[i:i + bs]], y[order[i:i + bs]]) for i in range(0, len(y), bs))
    done = timed_images = 0
    for inputs, target in batches:
        if done == warmup:
            sync()
            t0 = time.perf_counter()
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
    print(timed_images / (time.perf_counter() - t0))
""")


def minimal_images_per_s(cache: str, pipeline: str, bs: int, threads: int, steps: int, warmup: int,
                         device: str = "cpu") -> float:
    out = subprocess.run([sys.executable, "-c", MINIMAL, cache, pipeline, str(bs), str(threads), str(steps),
                          str(warmup), device], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the minimal loop failed on {device}: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    from bench import runner
    from bench.plan import plan_cases
    from bench.schema import SweepSpec
    from cnn.data import prepare_synthetic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="4")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    prepared = prepare_synthetic()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    warmup = 10
    spec = SweepSpec(devices=[args.device], batch_sizes=batch_sizes, threads=[args.threads],
                     pipelines=["tutorial", "resident"], widths=[1.0], modes=["train"], epochs=1,
                     max_steps=warmup + args.steps, max_seconds=None, warmup_steps=warmup, window_s=0.5)
    cases = plan_cases(spec, str(prepared.cache_dir), prepared.name)
    figures = {c.key: {"harness": [], "harness_total": [], "minimal": [], "startup_s": []} for c in cases}
    for r in range(args.rounds):
        for case in cases:
            result = runner.run_one(case)
            if result.status != "ok":
                raise SystemExit(f"the harness's Case {case.key} ended {result.status}: {result.error}")
            figures[case.key]["harness"].append(result.images_per_s)
            figures[case.key]["harness_total"].append(sum(result.windows_images) / sum(result.windows_s))
            figures[case.key]["startup_s"].append(result.startup_s)
            figures[case.key]["minimal"].append(minimal_images_per_s(
                str(prepared.cache_dir), case.pipeline, case.batch_size, args.threads, args.steps, warmup,
                args.device))
            print(f"round {r + 1}: {case.key}: harness {result.images_per_s:.0f}, "
                  f"minimal {figures[case.key]['minimal'][-1]:.0f} images/s", flush=True)

    print(f"\n{'case':34} {'harness':>8} {'h.total':>8} {'minimal':>8} {'total/minimal':>14} "
          f"{'median/minimal':>15}\n(images/s: medians of {args.rounds} rounds of {args.steps} timed steps, "
          f"{args.threads} threads; ratios: median of the per-round ratios)")
    medians = {}
    for key, f in figures.items():
        h, t, m = (statistics.median(f[k]) for k in ("harness", "harness_total", "minimal"))
        total_ratio = statistics.median(a / b for a, b in zip(f["harness_total"], f["minimal"]))
        median_ratio = statistics.median(a / b for a, b in zip(f["harness"], f["minimal"]))
        medians[key] = h
        verdict = "agrees within 3%" if 0.97 <= total_ratio <= 1.03 else "DISAGREES by more than 3%"
        print(f"{key:34} {h:8.0f} {t:8.0f} {m:8.0f} {total_ratio:14.3f} {median_ratio:15.3f}  {verdict}")
    print()
    for bs in batch_sizes:
        tut, res = (medians[c.key] for p in ("tutorial", "resident") for c in cases
                    if c.pipeline == p and c.batch_size == bs)
        print(f"batch {bs}: resident / tutorial = {res / tut:.2f}x ({res:.0f} vs {tut:.0f} images/s)")
    startups = [s for f in figures.values() for s in f["startup_s"]]
    print(f"per-Case start-up (fork to first step, data cache warm): median {statistics.median(startups):.2f} s, "
          f"max {max(startups):.2f} s over {len(startups)} Cases")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
