"""Data-parallel training of one Case: DistributedDataParallel ranks started by PyTorch's elastic
launcher, the engine behind `torchrun` (`torch.distributed.run`).

A Case with world size N > 1 is still one unit of work: the runner's Case process calls `launch`,
which starts N ranks through `elastic_launch` (c10d rendezvous on localhost, as `torchrun
--standalone` does; ranks forked from the Case process, which has torch imported already). On a
cluster, `torchrun ... -m bench.running.worker CASE.json --out RUN_DIR` on every node runs `rank_main` in
each rank instead. Rank 0 evaluates, gathers every rank's timed windows and returns the Result.

Backend gloo on CPUs, NCCL on CUDA with one GPU per rank. Windows close at the same step on
every rank (see timing.StepMeter's `agree`); a window's global time is the slowest rank's and
its images are all ranks' together. Gradient all-reduce is timed by a DDP communication hook.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from dataclasses import asdict
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.nn.parallel import DistributedDataParallel

from bench.measuring import allocator, devices, stats, timing
from bench.measuring.clock import peak_device_mem_mb, peak_rss_mb
from bench.measuring.training import Ranks, prepare_cuda, set_threads, train, window_fields
from bench.schema import Case
from cnn import cache


def param_digest(net: torch.nn.Module) -> str:
    """A digest of every parameter's bytes: equal on two ranks only if their weights are identical."""
    h = hashlib.sha256()
    for p in net.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def launch(case: Case, progress=None, started: float | None = None) -> dict:
    """Runs the Case's ranks on this machine and returns what rank 0 gathered (Result fields); a failed rank raises
    ChildFailedError (after the launcher has torn the whole group down)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if case.device.startswith("cuda"):
        # The launcher asks torch.accelerator whether a GPU is there. Through the CUDA runtime that
        # would initialise CUDA in this process, and every rank forked from it would then fail with
        # "Cannot re-initialize CUDA in forked subprocess"; NVML answers without touching CUDA.
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs

    # the launcher's per-rank folders (error files, logs) go to a folder removed afterwards: left to itself it
    # made a new torchelastic_* folder in the temp folder for every data-parallel Case and never removed it. A
    # failed rank's message is read into ChildFailedError before the folder goes
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as logs:
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=case.world_size,
                              run_id=f"bench-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
                              rdzv_endpoint="localhost:0", rdzv_configs={"timeout": int(min(case.time_limit_s, 900))},
                              max_restarts=0, monitor_interval=0.1, start_method="fork",
                              logs_specs=DefaultLogsSpecs(log_dir=logs))
        returns = elastic_launch(config, rank_main)(asdict(case), progress, started or time.time())
    return returns[0]


def failure_text(exc: ChildFailedError) -> str:
    """Every failed rank and what it said, the likely cause first: a rank killed by a signal (other
    than the launcher's own SIGTERM), else the earliest failure. A rank whose peer died fails too,
    with a connection error, and can fail first; both are listed, so an out-of-memory is still seen."""
    def text(failure) -> str:
        if failure.exitcode < 0 and failure.signal_name() != "<N/A>":
            return f"killed by {failure.signal_name()}"
        message = failure.message
        if isinstance(message, dict):  # the error file's record: {"message": ..., "extraInfo": ...}
            message = message.get("message", "")
        return str(message).split("\n\nAt:")[0].strip().replace("\n", " ") or f"exit status {failure.exitcode}"

    def cause_first(item) -> tuple:
        _, failure = item
        killed = failure.exitcode < 0 and failure.signal_name() not in ("<N/A>", "SIGTERM")
        return (0 if killed else 1, failure.timestamp)

    return "; ".join(f"rank {rank} {'was ' if t.startswith('killed') else 'failed: '}{t}"
                     for rank, failure in sorted(exc.failures.items(), key=cause_first) for t in [text(failure)])


@record  # a rank's exception reaches the launcher, so the Result can say what went wrong
def rank_main(case_fields: dict, progress=None, started: float | None = None) -> dict | None:
    """One rank: joins the group the launcher set up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR in the
    environment), trains, and on rank 0 returns what the ranks measured, as Result fields."""
    case = Case(**case_fields)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    started = started or time.time()
    device = rank_device(case, local)
    cuda = device.type == "cuda"
    malloc_state = allocator.pin(case.malloc)  # each rank is a process of its own, pinned before it allocates
    set_threads(case)
    torch.manual_seed(case.seed)  # as a single-process Case: the same initial weights (rank 0's, broadcast) each run
    setup = {"malloc_state": malloc_state}
    if cuda:
        setup.update(prepare_cuda(device, fp32_math=case.fp32_math))  # before the process group: NCCL binds the rank to the current device
    backend = "nccl" if cuda else "gloo"
    # collectives give up after the Case's own time limit rather than hang past it
    dist.init_process_group(backend, timeout=timedelta(seconds=case.time_limit_s))
    try:
        if cuda:
            refuse_shared_gpus(device, world)
        own = _train_rank(case, device, rank, world, progress if rank == 0 else None, started, setup)
        records = [None] * world
        dist.all_gather_object(records, own)
    except Exception as exc:
        if _peer_lost(exc):
            # Only a consequence: a peer rank died. The launcher records the first failure it polls,
            # so give it time to see the peer's own exit (its signal or error), the cause.
            time.sleep(PEER_LOST_GRACE_S)
        raise
    finally:
        dist.destroy_process_group()
    return _gathered(case, records, backend) if rank == 0 else None


def rank_device(case: Case, local_rank: int) -> torch.device:
    """The rank's device: one GPU per rank on CUDA, the GPU of its local rank. Under a launcher that shows each
    task only its own GPU (Slurm's per-task binding), every rank sees one device, and it is cuda:0 (whether two
    ranks got one GPU is checked once the group is up, `refuse_shared_gpus`). A rank past the GPUs its node
    shows is refused: NCCL fails two ranks on one GPU ("Duplicate GPU detected")."""
    if not case.device.startswith("cuda"):
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda", 0)
    if not 0 <= local_rank < count:
        raise RuntimeError(f"local rank {local_rank} has no GPU of its own: this node shows {count} "
                           f"(cuda:0..cuda:{count - 1}), and NCCL needs one GPU per rank; start at most {count} "
                           f"ranks a node (torchrun --nproc-per-node {count})")
    return torch.device("cuda", local_rank)


def refuse_shared_gpus(device: torch.device, world: int) -> None:
    """After the group is up, before NCCL's first collective: every rank's GPU by its UUID, over a gloo group, and
    a clear error naming the ranks where two share one (NCCL's own is "Duplicate GPU detected", from inside
    its first all-reduce)."""
    uuid_ = str(torch.cuda.get_device_properties(device).uuid)
    group = dist.new_group(backend="gloo")
    try:
        uuids = [None] * world
        dist.all_gather_object(uuids, uuid_, group=group)
    finally:
        dist.destroy_process_group(group)
    first: dict[str, int] = {}
    for rank, u in enumerate(uuids):
        if u in first:
            raise RuntimeError(f"ranks {first[u]} and {rank} are on one GPU (UUID {u}): data-parallel training on "
                               f"CUDA needs one GPU per rank, and NCCL refuses two on one device")
        first[u] = rank


PEER_LOST_GRACE_S = 2.0


def _peer_lost(exc: BaseException) -> bool:
    """gloo's and NCCL's errors when the rank at the other end of a collective has gone away."""
    text = str(exc).lower()
    return any(s in text for s in ("connection reset by peer", "connection closed by peer", "broken pipe",
                                   "remote process exited", "socket closed"))


def _agree(device: torch.device):
    def agree(value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())
    return agree


def _timed_allreduce(meter: timing.StepMeter, spans: list):
    """DDP's default all-reduce hook, with the time from the bucket being ready to its all-reduce
    being done recorded (on the meter's clock) after the warm-up. This model's 62k parameters make
    one bucket, so the span is the all-reduce the step waits for."""
    def hook(state, bucket):
        start = meter.clock.mark()
        future = default_hooks.allreduce_hook(None, bucket)

        def done(fut):
            if meter.warmup_s is not None:
                spans.append((start, meter.clock.mark()))
            return fut.value()
        return future.then(done)
    return hook


def _train_rank(case: Case, device: torch.device, rank: int, world: int, progress, started: float,
                setup: dict) -> dict:
    """One rank's part of the Case on the one training path (bench.measuring.training.train), with what a rank
    adds: DDP around the model with its all-reduce timed, agreement on windows, a barrier while rank 0
    evaluates. Returns the rank's record for rank 0 to gather."""
    arrays = cache.load_arrays(case.data_cache)
    spans, initial = [], {}

    def wrap(net: torch.nn.Module, meter: timing.StepMeter) -> torch.nn.Module:
        initial["digest"] = param_digest(net)
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        model.register_comm_hook(None, _timed_allreduce(meter, spans))
        return model

    ranks = Ranks(rank, world, wrap=wrap, agree=_agree(devices.placement(device)), barrier=dist.barrier)
    net, meter, measured = train(case, arrays, device, started, progress, ranks)
    meter.clock.sync()
    allreduce_s = sum(meter.clock.seconds(a, b) for a, b in spans)
    own = {k: v for k, v in {**setup, **measured}.items() if k in RANK_FIELDS}
    return {**own, "step_s": meter.step_s, "allreduce_s": allreduce_s, "timed_s": sum(meter.windows_s),
            "param_digest": param_digest(net), "initial_digest": initial["digest"],
            "train_images": len(arrays.train_y), "test_images": len(arrays.test_y),
            "peak_rss_mb": peak_rss_mb(), "peak_device_mem_mb": peak_device_mem_mb(device)}


# what each rank's Result holds that rank 0 gathers (accuracy fields are filled on rank 0 only)
RANK_FIELDS = ("malloc_state", "startup_s", "warmup_s", "train_s", "epoch_s", "eval_s", "loss", "test_accuracy_pct",
               "class_accuracy_pct", "epoch_accuracy_pct", "time_to_target_s", "stopped_by", "steps", "images",
               "windows_s", "windows_images", "new_shape_steps", "cudnn_benchmark", "conv_math", "matmul_math",
               "gpu_monitor", "gpu_util_pct",
               "gpu_power_w", "gpu_energy_j_per_epoch")


def _gathered(case: Case, records: list[dict], backend: str) -> dict:
    """Rank 0's Result fields from every rank's record: global windows (slowest rank's time, all ranks' images)."""
    zero = records[0]
    n_windows = min(len(r["windows_s"]) for r in records)
    windows_s = [max(r["windows_s"][i] for r in records) for i in range(n_windows)]
    windows_images = [sum(r["windows_images"][i] for r in records) for i in range(n_windows)]
    timed = sum(r["timed_s"] for r in records)
    images = sum(r["images"] for r in records)
    utils = [r["gpu_util_pct"] for r in records if r.get("gpu_util_pct") is not None]
    device_mem = [r["peak_device_mem_mb"] for r in records if r["peak_device_mem_mb"] is not None]
    out = {**window_fields(windows_s, windows_images, zero["step_s"]), "backend": backend,
           "global_batch_size": case.global_batch_size,
           "rank_images_per_s": [stats.summarise(r["windows_s"], r["windows_images"], r["step_s"]).images_per_s
                                 for r in records],
           "allreduce_pct": 100.0 * sum(r["allreduce_s"] for r in records) / timed if timed else None,
           "param_digest_initial": zero["initial_digest"], "rank_param_digests": [r["param_digest"] for r in records],
           **{name: zero.get(name) for name in ("malloc_state", "startup_s", "warmup_s", "train_s", "epoch_s",
                                                "eval_s", "loss", "test_accuracy_pct", "class_accuracy_pct",
                                                "epoch_accuracy_pct", "time_to_target_s", "train_images",
                                                "test_images", "stopped_by", "new_shape_steps", "cudnn_benchmark",
                                                "conv_math", "matmul_math", "gpu_monitor")},
           "gpu_util_pct": sum(utils) / len(utils) if utils else None,
           "steps": zero["steps"], "images": images, "epochs_completed": images / zero["train_images"],
           "peak_rss_mb": max(r["peak_rss_mb"] for r in records), "peak_device_mem_mb": max(device_mem, default=None),
           "threads_used": torch.get_num_threads()}
    for name in ("gpu_power_w", "gpu_energy_j_per_epoch"):  # every rank's GPU together
        values = [r[name] for r in records if r.get(name) is not None]
        out[name] = sum(values) if len(values) == len(records) else None
    return out
