"""Benchmark (not a test): data-parallel training on this machine, measured side by side in one run.

1. Is the harness honest for world size 2? Its global images/s for a world-size-2 Case against a
   minimal hand-written DDP script started by torchrun (`python -m torch.distributed.run
   --standalone --nproc-per-node 2`) doing the same work: same data, model, per-rank batch,
   threads, steps; timed as global images / time after a warm-up, between barriers.
   The harness's figure is compared as the total over its windows (same definition).
2. Do more processes help this model here? World size 2 x 1 thread against world size 1 x 2
   threads, at global batch 128 (64 per rank) and at global batch 8 (4 per rank), resident
   pipeline, with the harness's all-reduce share.

Rounds alternate the runs so the machine's drift hits all alike; ratios are per round, then the median.

    python tests/perf/ddp_vs_minimal.py [--steps 400] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MINIMAL = textwrap.dedent("""
    import os, sys, time, numpy as np, torch, torch.distributed as dist, torch.nn as nn, torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    cache, bs, threads, steps, warmup = sys.argv[1], *map(int, sys.argv[2:6])
    torch.set_num_threads(threads)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5); self.pool = nn.MaxPool2d(2, 2); self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(400, 120); self.fc2 = nn.Linear(120, 84); self.fc3 = nn.Linear(84, 10)
        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x))); x = self.pool(F.relu(self.conv2(x)))
            x = torch.flatten(x, 1); return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    images = np.load(f"{cache}/train_x.npy", mmap_mode="r"); labels = np.load(f"{cache}/train_y.npy")
    x = ((torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5).contiguous()
    y = torch.from_numpy(labels)
    model = DDP(Net()); criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    def batches():
        while True:
            order = torch.randperm(len(y), generator=g)[rank::world][:len(y) // world]
            for s in range(0, len(order), bs):
                idx = order[s:s + bs]
                yield x[idx], y[idx]
    it = batches()
    for i in range(warmup + steps):
        if i == warmup:
            dist.barrier(); t0 = time.perf_counter()
        inputs, targets = next(it)
        optimizer.zero_grad(); loss = criterion(model(inputs), targets); loss.backward(); optimizer.step()
    dist.barrier()
    if rank == 0:
        print(world * bs * steps / (time.perf_counter() - t0))
    dist.destroy_process_group()
""")


def minimal(cache: str, bs: int, threads: int, steps: int, warmup: int, script: Path) -> float:
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script), cache, str(bs), str(threads), str(steps), str(warmup)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from bench.running import runner
    from bench.sweep.plan import plan_cases
    from bench.sweep.spec import with_defaults
    from cnn.data import prepare_synthetic

    prepared = prepare_synthetic()
    cache = str(prepared.cache_dir)
    script = Path(tempfile.mkdtemp()) / "minimal_ddp.py"
    script.write_text(MINIMAL)
    warmup = 20

    def case(bs: int, threads: int, world: int):
        spec = with_defaults(devices=["cpu"], batch_sizes=[bs], threads=[threads], pipelines=["resident"],
                             widths=[1.0], modes=["train"], epochs=1, max_steps=warmup + args.steps,
                             warmup_steps=warmup, window_s=0.5, world_sizes=[world], max_seconds=None,
                             precision_pct=None, job=False)
        return plan_cases(spec, cache, prepared.name)[0]

    ctx = runner._context()
    honest, rows = [], {}
    for r in range(args.rounds):
        h = runner.run_one(case(64, 1, 2), ctx)
        m = minimal(cache, 64, 1, args.steps, warmup, script)
        total = sum(h.windows_images) / sum(h.windows_s)
        honest.append(total / m)
        print(f"round {r + 1}: ws2 b64/rank t1: harness {h.images_per_s:.0f} (total over windows {total:.0f}) "
              f"vs minimal torchrun DDP {m:.0f} images/s: {total / m:.3f}; all-reduce {h.allreduce_pct:.0f}%",
              flush=True)
        for global_batch in (128, 8):
            two = runner.run_one(case(global_batch // 2, 1, 2), ctx)
            one = runner.run_one(case(global_batch, 2, 1), ctx)
            rows.setdefault(global_batch, []).append((two.images_per_s / one.images_per_s, two.images_per_s,
                                                      one.images_per_s, two.allreduce_pct))
            print(f"round {r + 1}: global batch {global_batch}: ws2 x 1 thread {two.images_per_s:.0f} vs ws1 x 2 "
                  f"threads {one.images_per_s:.0f} images/s: {two.images_per_s / one.images_per_s:.3f}; "
                  f"all-reduce {two.allreduce_pct:.0f}% of the step", flush=True)
    print(f"\nharness / minimal (ws2, batch 64 per rank, 1 thread each): median {statistics.median(honest):.3f} "
          f"over {args.rounds} rounds")
    for global_batch, values in rows.items():
        ratio = statistics.median(v[0] for v in values)
        print(f"global batch {global_batch}: ws2 x 1 thread / ws1 x 2 threads = {ratio:.3f} (median of "
              f"{len(values)}); ws2 {statistics.median(v[1] for v in values):.0f}, ws1 "
              f"{statistics.median(v[2] for v in values):.0f} images/s; all-reduce "
              f"{statistics.median(v[3] for v in values):.0f}% of the ws2 step")


if __name__ == "__main__":
    main()
