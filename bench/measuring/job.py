"""The tutorial's own job, timed as its script runs it: a fresh interpreter's imports and torchvision's two CIFAR10
datasets built as the script builds them (on a copy of the Case's data in CIFAR-10's python layout), the model, one
peek at a training batch, 2 epochs at batch 4 through its train DataLoader (restarted every epoch, 2 workers,
`loss.item()` every step), then its two test passes through its test DataLoader (batch 4, 2 workers): overall
accuracy, then accuracy per class counted image by image.

Each of the four passes is timed from the moment its DataLoader starts to the moment its workers are gone. When
the Case's budget (`--max-seconds`, `--max-steps`) is smaller than the job, every pass gets a share of it and runs
its first stretch, so the measured part samples the whole job, each pass's start included (a time budget is shared
in proportion to the passes' steps: a training pass, five times a test pass's steps, is five times as much of the
job and of the projection's error; a step cap is split evenly); the rest of a pass is
projected at its mean step time after the stretch's first steps (total time over total steps, stalls included),
with a 95% interval from a block bootstrap of those step times (`job_s_low`, `job_s_high`). With no budget the job
runs whole and is measured. The accuracy is then the one its test passes measured; after a sampled job, the one
reached after the measured training, never a projected one. Its tables for the report (`job_table`,
`time_to_target`) are in bench/analysis/tables.py: every Case's process imports this module, and pandas has no place there.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.measuring import allocator, devices
from bench.measuring.clock import DeviceClock, minor_faults
from bench.measuring.training import window_fields
from bench.schema import Case
from cnn import loops
from cnn.cifar_files import PY_FOLDER, CifarArrays
from cnn.model import Net

# what the tutorial's script imports before its first line of work; a fresh interpreter pays for them every run
TUTORIAL_IMPORTS = "import torch, torchvision, torchvision.transforms, torch.nn, torch.optim, matplotlib.pyplot, numpy"
PASSES = ("train epoch 1", "train epoch 2", "test: accuracy", "test: per class")
MIN_PASS_STEPS = 20  # a sampled pass runs at least this many steps, whatever its share of the time
MIN_SPREAD_STEPS = 4  # steps after the first few a projection's interval needs
RESAMPLES = 2000
BLOCKS = 20  # contiguous blocks of steps the bootstrap resamples (step times are not independent: prefetching)

Progress = Callable[[dict], None]


@dataclass
class Pass:
    """One pass of the job as measured: its DataLoader's start to its workers' end."""

    name: str
    total_steps: int  # in the whole pass
    seconds: float = 0.0
    step_s: list[float] = field(default_factory=list)  # the first one includes the DataLoader's start
    wait_s: list[float] = field(default_factory=list)  # waiting for each step's batch
    stopped_by: str | None = None  # max_steps or max_seconds when its share of the budget stopped it
    faults: int = 0  # minor page faults of the process over the pass

    @property
    def outside_s(self) -> float:
        """The pass's time outside its steps: its DataLoader's workers shutting down."""
        return max(self.seconds - sum(self.step_s), 0.0)

    @property
    def whole(self) -> bool:
        return len(self.step_s) >= self.total_steps


def _settled(step_s: list[float]) -> int:
    """How many first steps a stretch's mean leaves out: the first (the DataLoader's workers starting), and up to
    10 (the allocator's and oneDNN's first requests) in a stretch long enough to spare them."""
    return 0 if len(step_s) < 2 else max(1, min(10, len(step_s) // 5))


def project(p: Pass, rng: np.random.Generator, resamples: int = RESAMPLES) -> tuple[float, float, np.ndarray]:
    """(projected seconds of the whole pass, of which waiting for data, bootstrap samples of the seconds): the
    measured stretch plus the steps left at the stretch's mean step time after its first steps."""
    left = p.total_steps - len(p.step_s)
    if left <= 0:
        return p.seconds, float(sum(p.wait_s) + p.outside_s), np.full(resamples, p.seconds)
    settled = _settled(p.step_s)
    steps, waits = np.asarray(p.step_s[settled:]), np.asarray(p.wait_s[settled:])
    mean = steps.mean()
    data = float(sum(p.wait_s) + p.outside_s + left * waits.mean())
    if len(steps) < MIN_SPREAD_STEPS:  # too few steps to say how they spread: no interval
        return float(p.seconds + left * mean), data, np.full(resamples, np.nan)
    blocks = np.array_split(steps, min(BLOCKS, len(steps)))
    sums, counts = np.array([b.sum() for b in blocks]), np.array([len(b) for b in blocks])
    picks = rng.integers(0, len(blocks), (resamples, len(blocks)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return float(p.seconds + left * mean), data, p.seconds + left * means


class Stretch:
    """Times one pass: each step's end on the host clock (the tutorial's job synchronises every step through
    `loss.item()` and `.sum().item()`, so host time is its wall time) and the wait for each batch; says stop once
    the pass has had its share of the budget."""

    def __init__(self, p: Pass, share_s: float | None, share_steps: int | None, tick: Callable[[], None]):
        self.p, self.share_s, self.share_steps, self.tick = p, share_s, share_steps, tick
        self.start = self.last = time.perf_counter()
        self.waited = 0.0

    def batches(self, loader: Iterable, device: torch.device) -> Iterator:
        """The loader's batches copied to the device as the tutorial copies them, the wait for each recorded."""
        t0 = time.perf_counter()
        # the DataLoader starts its workers here (waiting for data, inside the pass); closing this generator, as a
        # pass does when it stops, drops the iterator and so shuts them down, inside the pass too
        iterator = iter(loader)
        for inputs, labels in iterator:
            self.waited = time.perf_counter() - t0
            yield inputs.to(device), labels.to(device)
            t0 = time.perf_counter()

    def on_step(self, n_images: int) -> bool:
        now = time.perf_counter()
        self.p.step_s.append(now - self.last)
        self.p.wait_s.append(self.waited)
        self.last = now
        self.tick()
        steps = len(self.p.step_s)
        if self.share_steps is not None and steps >= self.share_steps:
            self.p.stopped_by = "max_steps"
        elif self.share_s is not None and now - self.start >= self.share_s and steps >= MIN_PASS_STEPS:
            self.p.stopped_by = "max_seconds"
        return self.p.stopped_by is not None


# what the tutorial's script does in its own process besides its DataLoaders and its steps, in a fresh interpreter:
# its imports; its two datasets as torchvision builds them from argv[1] (download=True: every file's md5, twice a
# dataset, then its batches unpickled), the digests computed but not compared (a copy of generated or unverified
# images cannot match the official ones; the comparison is a string's); its two peeks drawn (Agg, where `plt.show()`
# returns at once, as in a script run without a screen); then its exit. It prints the seconds after its imports
# (0 with no argv[1]: the imports alone).
TUTORIAL_STARTUP = f"""
import time
{TUTORIAL_IMPORTS}
imported = time.perf_counter()
import sys
import torchvision.datasets.cifar as cifar
from torchvision.datasets.utils import calculate_md5
cifar.check_integrity = lambda fpath, md5=None: bool(calculate_md5(fpath))  # a missing file raises: no download
transform = torchvision.transforms.Compose([torchvision.transforms.ToTensor(),
                                            torchvision.transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
for train in (True, False) if sys.argv[1:] else ():
    data = torchvision.datasets.CIFAR10(root=sys.argv[1], train=train, download=True, transform=transform)
    grid = torchvision.utils.make_grid(torch.stack([data[i][0] for i in range(4)])) / 2 + 0.5
    matplotlib.pyplot.imshow(numpy.transpose(grid.numpy(), (1, 2, 0)))
    matplotlib.pyplot.show()
print(time.perf_counter() - imported if sys.argv[1:] else 0.0)
"""
# the Case's data in CIFAR-10's python layout, written by a process of its own: the Case's memory (and peak RSS)
# stays its own, and the copy is written before any timing
PYTHON_COPY = ("import sys; from pathlib import Path; from cnn.cache import load_arrays; "
               "from cnn.cifar_files import write_python_folder; write_python_folder(load_arrays(sys.argv[1]), "
               "Path(sys.argv[2]))")
NOT_BUILT = ("the tutorial's datasets were not built in the job's start-up ({}): its time leaves out the script's "
             "md5 check and unpickling of its files")


def _run(code: str, args: list[str], env: dict) -> str:
    """`code` run in a fresh interpreter of this Python, the project importable; its output, else RuntimeError."""
    project = str(Path(__file__).resolve().parents[2])
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [project, env.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError((out.stderr.strip().splitlines() or ["no message"])[-1])
    return out.stdout


def startup_seconds(malloc: str, data_cache: str) -> dict:
    """`job_import_s` and `job_dataset_s`: the seconds of a fresh interpreter doing what the tutorial's script does
    outside its DataLoaders and steps (TUTORIAL_STARTUP), in the Case's allocator state, on a copy of the cache's
    data in CIFAR-10's python layout (written beside the cache, removed after): part of the job's start-up that a
    Case forked from a server that imported them already does not pay. The imports include the interpreter's start
    and exit; the copy's writing is not counted. Where the copy cannot be written (no room), the imports alone and
    a warning saying so."""
    env = {**os.environ, **allocator.environment(malloc), "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}

    def probe(*args: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        try:
            out = _run(TUTORIAL_STARTUP, list(args), env)
        except RuntimeError as e:
            raise RuntimeError(f"a fresh interpreter could not do what the tutorial's script does before training: "
                               f"{e}") from None
        seconds, datasets_s = time.perf_counter() - t0, float(out.split()[-1])
        return seconds - datasets_s, datasets_s

    beside = Path(data_cache).parent if data_cache else None
    with contextlib.ExitStack() as stack:
        try:
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="tutorial-data-", dir=beside,
                                                                   ignore_cleanup_errors=True))
            _run(PYTHON_COPY, [data_cache, str(Path(root) / PY_FOLDER)], dict(os.environ))
        except (OSError, RuntimeError) as e:
            import_s, _ = probe()
            return {"job_import_s": import_s, "job_dataset_s": None, "warnings": [NOT_BUILT.format(e)]}
        import_s, dataset_s = probe(root)
    return {"job_import_s": import_s, "job_dataset_s": dataset_s, "warnings": []}


def run_job(case: Case, arrays: CifarArrays, device: torch.device, started: float, progress: Progress | None) -> dict:
    """Runs (or samples) the tutorial's job on the Case's device; returns what was measured, the job's parts."""
    compute = devices.placement(device)
    clock = DeviceClock(device)
    t0 = time.time()
    startup = startup_seconds(case.malloc, case.data_cache)
    probe_s = time.time() - t0  # the probe's own time and its copy's writing: not the Case's start-up
    net = Net(case.width, len(arrays.classes)).to(compute)
    optimizer = torch.optim.SGD(net.parameters(), lr=case.lr, momentum=0.9)
    step = loops.eager_step(net, optimizer)
    t0 = time.time()  # the data copied into memory, as the script's datasets hold it: counted in the probe's
    train = loops.tutorial_loader(arrays.train_x, arrays.train_y, arrays.classes, case.batch_size,
                                  num_workers=case.num_workers, seed=case.seed)
    test = loops.tutorial_loader(arrays.test_x, arrays.test_y, arrays.classes, case.batch_size, shuffle=False,
                                 num_workers=case.num_workers)
    probe_s += time.time() - t0
    next(iter(train))  # the tutorial shows a batch of training images before it trains
    clock.sync()
    startup_s = time.time() - started - probe_s  # the process's own start-up; the probe's parts are counted apart
    whole = case.max_seconds is None and case.max_steps is None
    passes = [Pass(name, len(train) if name.startswith("train") else len(test)) for name in PASSES]
    tick = _ticker(passes, progress, time.perf_counter())

    def timed(p: Pass, body: Callable[[Stretch], object]):
        share_steps = None if whole or case.max_steps is None else step_share(case.max_steps, PASSES.index(p.name))
        share_s = None if whole or case.max_seconds is None else time_share(case.max_seconds, passes, p)
        stretch = Stretch(p, share_s, share_steps, tick)
        faults = minor_faults()
        clock.sync()
        out = body(stretch)
        clock.sync()
        p.seconds = time.perf_counter() - stretch.start
        p.faults = minor_faults() - faults
        return out

    for p in passes[:2]:
        loss = timed(p, lambda s: _closing(s, train, compute, lambda b: loops.train_epoch(
            net, optimizer, b, item_every_step=True, on_step=s.on_step, step=step)))
    t0 = time.perf_counter()
    images, _ = next(iter(test))  # the tutorial shows a batch of test images and what the network makes of them
    with torch.no_grad():
        net(images.to(compute))
    clock.sync()
    peek_s = time.perf_counter() - t0
    accuracy = timed(passes[2], lambda s: _closing(s, test, compute, lambda b: loops.tutorial_accuracy(net, b, s.on_step)))
    per_class = timed(passes[3], lambda s: _closing(s, test, compute, lambda b: loops.tutorial_class_accuracy(
        net, b, arrays.classes, s.on_step)))
    if all(p.whole for p in passes):  # the tutorial tests once, after its 2 epochs
        scores = {"test_accuracy_pct": accuracy, "class_accuracy_pct": per_class, "epoch_accuracy_pct": [accuracy]}
    else:
        scores = _sampled_accuracy(case, net, arrays, compute)
    fields = job_fields(case, passes, startup["job_import_s"], peek_s, startup_s, scores["test_accuracy_pct"],
                        dataset_s=startup["job_dataset_s"])
    return {"loss": loss, **scores, **fields, "warnings": startup["warnings"]}


def _sampled_accuracy(case: Case, net: torch.nn.Module, arrays: CifarArrays, compute: torch.device) -> dict:
    """The accuracy after the training measured, outside every pass's time (a sampled job's passes test part of
    the test set)."""
    n_eval = len(arrays.test_y) if case.eval_images is None else min(case.eval_images, len(arrays.test_y))
    x, y = loops.resident_tensors(arrays.test_x[:n_eval], arrays.test_y[:n_eval], compute)
    overall, classes = loops.evaluate(net, x, y, len(arrays.classes))
    return {"test_accuracy_pct": overall, "class_accuracy_pct": dict(zip(arrays.classes, classes))}


def time_share(max_seconds: float, passes: list[Pass], p: Pass) -> float:
    """Pass p's part of a --max-seconds budget: in proportion to its steps, where most of the job's time is and
    where a mean step time's error is multiplied most by the steps projected from it."""
    return max_seconds * p.total_steps / max(sum(q.total_steps for q in passes), 1)


def step_share(max_steps: int, index: int) -> int:
    """Pass `index`'s part of a --max-steps cap: the cap split exactly over the passes, at least 1 step each."""
    n = len(PASSES)
    return max(1, max_steps // n + (index < max_steps % n))


def _closing(s: Stretch, loader, device: torch.device, body: Callable[[Iterator], object]):
    batches = s.batches(loader, device)
    try:
        return body(batches)
    finally:
        batches.close()


def _ticker(passes: list[Pass], progress: Progress | None, t0: float, every_s: float = 0.5) -> Callable[[], None]:
    """Reports steps done over the job's steps at most every `every_s` seconds."""
    total = sum(p.total_steps for p in passes)
    last = [t0]

    def tick() -> None:
        now = time.perf_counter()
        if progress is None or now - last[0] < every_s:
            return
        last[0] = now
        done = sum(len(p.step_s) for p in passes)
        progress({"step": done, "steps": total, "epoch": 2 if passes[1].step_s else 1, "epochs": 2,
                  "elapsed_s": now - t0, "eta_s": 0.0})
    return tick


def job_fields(case: Case, passes: list[Pass], import_s: float, peek_s: float, startup_s: float,
               accuracy_pct: float | None, seed: int = 0, dataset_s: float | None = None) -> dict:
    """The job's figures from its measured passes: each pass projected whole where it was sampled, the job's time
    as start-up + passes, with a 95% interval from the passes' bootstrap samples drawn together."""
    rng = np.random.default_rng(seed)
    projected = [project(p, rng) for p in passes]
    train = projected[:2]
    train_steps = [s for p in passes[:2] for s in p.step_s[_settled(p.step_s):]]
    train_steps_n = sum(len(p.step_s) for p in passes[:2])
    images = train_steps_n * case.batch_size
    blocks = np.array_split(np.asarray(train_steps), min(BLOCKS, len(train_steps))) if train_steps else []
    whole = all(p.whole for p in passes)
    train_s, eval_s = sum(p.seconds for p in passes[:2]), sum(p.seconds for p in passes[2:]) + peek_s
    out = {**window_fields([float(b.sum()) for b in blocks], [len(b) * case.batch_size for b in blocks], train_steps),
           "startup_s": startup_s, "train_s": train_s, "eval_s": eval_s,
           "steps": sum(len(p.step_s) for p in passes), "images": images,
           "epochs_completed": images / (passes[0].total_steps * case.batch_size),
           "epoch_s": [point for point, _, _ in train],
           "stopped_by": "epochs" if whole else next((p.stopped_by for p in passes if p.stopped_by), "max_seconds"),
           "minor_faults_per_step": sum(p.faults for p in passes[:2]) / train_steps_n if train_steps_n else None,
           # the training's time to the accuracy it reached
           "time_to_target_s": train_s if whole and accuracy_pct is not None and accuracy_pct >= case.target_accuracy_pct
           else None}
    return {**out, **_job_times(projected, import_s + (dataset_s or 0.0) + startup_s, peek_s, train_s + eval_s, whole),
            "job_import_s": import_s, "job_dataset_s": dataset_s}


def _job_times(projected: list, job_startup_s: float, peek_s: float, measured_s: float, whole: bool) -> dict:
    """The job's time and its parts, its 95% interval where it was projected, and the share of it measured."""
    train, test = projected[:2], projected[2:]
    data_s = sum(data for _, data, _ in train)
    compute_s = sum(point for point, _, _ in train) - data_s
    eval_s = sum(point for point, _, _ in test) + peek_s
    job_s = job_startup_s + data_s + compute_s + eval_s
    totals = job_startup_s + peek_s + sum(samples for _, _, samples in projected)
    low, high = (None, None) if whole or np.isnan(totals).any() else \
        (float(np.percentile(totals, 2.5)), float(np.percentile(totals, 97.5)))
    return {"job_startup_s": job_startup_s, "job_data_s": data_s, "job_compute_s": compute_s, "job_eval_s": eval_s,
            "job_s": job_s, "job_s_low": low, "job_s_high": high,
            "job_fraction": min((job_startup_s + measured_s) / job_s, 1.0) if job_s else 0.0,
            "job_projected": not whole}