"""A Case's Result: one line of results.jsonl, and the history of that format.

The format's versions (a line's `schema_version`; environment.json's, written beside it), newest last. A record of
an older version is read through the named upgrade steps from its version on (run_folder reads every file through
`upgrade_record` and `upgrade_environment`); a newer one is refused.

1. The first format. A device named as the user gave it ("cuda"); environment.json's matmul ceilings one flat
   rate per device (`matmul_gflops`, `matmul_n`), measured at torch's default float32 matmul precision.
2. (2026-12) Device names indexed at the spec stage ("cuda:0"), so a key names its device whole; the ceilings
   name the precision of each rate (`ceilings`: fp32, tf32, bf16). Late version-1 files already had both; the
   step from 1 leaves them as they are.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from bench.schema import Case

SCHEMA_VERSION = 2
STATUSES = ("ok", "failed", "oom", "timeout", "skipped")


@dataclass
class Result:
    """A Case, how it ended, and what was measured. Units are in the field names."""

    case: Case
    status: str = "ok"
    error: str | None = None
    wall_s: float | None = None
    startup_s: float | None = None
    compile_s: float | None = None  # torch.compile's compiling (compiled Cases): the first, before the clock, and
    #                                 a new shape's (the partial last batch), in the step kept out of the windows
    warmup_s: float | None = None
    train_s: float | None = None
    eval_s: float | None = None
    steps: int | None = None
    images: int | None = None
    epochs_completed: float | None = None
    stopped_by: str | None = None
    images_per_s: float | None = None
    images_per_s_p25: float | None = None
    images_per_s_p75: float | None = None
    images_per_s_spread_pct: float | None = None
    # total images over total time of the timed windows, stalls included: the rate time predictions use (an epoch's
    # time, cost); images_per_s, the median over windows, is the figure runs and Cases are compared by
    images_per_s_mean: float | None = None
    # the 95% confidence interval of the median over windows (order statistics; bench/measuring/precision.py) and its
    # half-width, % of the median: None with fewer than 6 windows
    images_per_s_ci_low: float | None = None
    images_per_s_ci_high: float | None = None
    images_per_s_ci_pct: float | None = None
    windows_s: list[float] = field(default_factory=list)
    windows_images: list[int] = field(default_factory=list)
    step_ms_p50: float | None = None
    step_ms_p90: float | None = None
    step_ms_p99: float | None = None
    data_wait_pct: float | None = None  # waiting for input; empty where there is no input pipeline to wait for
    new_shape_steps: int | None = None  # steps on a batch size first seen after the warm-up, kept out of windows
    # minor page faults per timed step, the Case's process (every thread): memory the allocator gave back to the
    # kernel and touches again each step; it varies between processes running the same loop (docs/method.md: Truth check)
    minor_faults_per_step: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_p99: float | None = None
    latency_calls: int | None = None  # the calls the latency percentiles come from (--latency-batches, --max-seconds)
    loss: float | None = None
    test_accuracy_pct: float | None = None
    class_accuracy_pct: dict[str, float] | None = None
    epoch_accuracy_pct: list[float] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)
    time_to_target_s: float | None = None
    peak_rss_mb: float | None = None
    # CUDA: the process's peak of memory torch allocated on its GPU: the resident data, the weights, cuDNN's and
    # autotuning's workspaces, a graph's pool; not the step's own working memory
    peak_device_mem_mb: float | None = None
    threads_used: int | None = None
    malloc_state: str | None = None  # the allocator state the Case ran in, as pinned (bench/measuring/allocator.py)
    cudnn_benchmark: bool | None = None  # None on a CPU
    conv_math: str | None = None  # CUDA: "tf32" or "fp32", the math cuDNN's float32 convolutions ran in
    matmul_math: str | None = None  # CUDA: the same for float32 matrix products (cuBLAS)
    gpu_monitor: str | None = None  # "nvml", or why utilisation and power were not sampled; None on a CPU
    gpu_util_pct: float | None = None
    gpu_power_w: float | None = None
    gpu_energy_j_per_epoch: float | None = None
    # data-parallel Cases (world_size > 1): images/s above are global, over all ranks
    global_batch_size: int | None = None
    backend: str | None = None  # gloo or nccl
    rank_images_per_s: list[float] = field(default_factory=list)
    allreduce_pct: float | None = None  # share of the timed step time with a gradient all-reduce in flight
    param_digest_initial: str | None = None
    rank_param_digests: list[str] = field(default_factory=list)  # after training: equal when all-reduce worked
    train_images: int | None = None
    test_images: int | None = None
    # the tutorial's job (mode "job"): its wall time and parts, measured, or projected from a measured part
    job_s: float | None = None
    job_s_low: float | None = None  # the 95% interval of a projected job_s (bench/measuring/job.py); None when measured whole
    job_s_high: float | None = None
    job_import_s: float | None = None  # a fresh interpreter's imports, part of job_startup_s
    job_dataset_s: float | None = None  # torchvision's CIFAR10 built twice and the peeks drawn, part of job_startup_s
    job_startup_s: float | None = None
    job_data_s: float | None = None
    job_compute_s: float | None = None
    job_eval_s: float | None = None
    job_fraction: float | None = None  # the part of its 2 epochs measured
    job_projected: bool | None = None
    # the machine while the Case ran (bench/running/contention.py): other processes' CPU use in cores, steal time as %
    # of the machine's CPU time, the clock at start and end, and whether that made the Case contended
    other_cpu_cores: float | None = None
    steal_pct: float | None = None
    cpu_mhz: list[float] = field(default_factory=list)
    contended: bool | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """One flat record: context first (run, schema, key, Case), then the outcome."""
        data = asdict(self)
        case = data.pop("case")
        return {"schema_version": SCHEMA_VERSION, "run_id": self.case.run_id, "key": self.case.key,
                **case, **data}

    def to_json(self) -> str:
        """Strict JSON: a NaN or infinite figure (no measurement) is written as null."""
        return json.dumps(_finite(self.to_dict()), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> Result:
        """Reads a record of the current schema (unknown fields are ignored; bench/store/run_folder.py upgrades
        older ones)."""
        case_names = {f.name for f in fields(Case)}
        own_names = {f.name for f in fields(cls)} - {"case"}
        case_fields = {k: v for k, v in data.items() if k in case_names}
        case = Case(**case_fields)
        return cls(case=case, **{k: v for k, v in data.items() if k in own_names})



def assemble(case: Case, *parts: dict) -> Result:
    """The one place a measured Result is made: from the small values a Case's stages return (its setup, the
    throughput, the accuracy, the latency, the GPU's usage, the machine's load, the job's parts, how it ended),
    each a mapping of Result fields. A field two stages both give, or one the Result has not, is a bug, said at
    once; warnings add up, in the stages' order."""
    names = {f.name for f in fields(Result)} - {"case"}
    given: dict = {}
    warnings: list[str] = []
    for part in parts:
        for name, value in part.items():
            if name not in names:
                raise TypeError(f"a Result has no field {name!r}")
            if name == "warnings":
                warnings += value
            elif name in given:
                raise ValueError(f"two stages of a Case gave {name!r}")
            else:
                given[name] = value
    return Result(case=case, warnings=warnings, **given)

def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _record_from_1(record: dict) -> dict:
    """Version 1 -> 2: an unindexed "cuda" is the first GPU (the key is derived from the Case again)."""
    if record.get("device") == "cuda":
        record = {**record, "device": "cuda:0"}
    return record


def _environment_from_1(environment: dict) -> dict:
    """Version 1 -> 2: flat fp32 matmul rates become ceilings named by precision. They were measured and run at
    torch's default float32 matmul precision, which the harness never changed."""
    if "matmul_gflops" not in environment or "ceilings" in environment:
        return environment

    def fp32(by_device: dict) -> dict:
        return {("cuda:0" if d == "cuda" else d): {"fp32": v} for d, v in by_device.items()}

    environment = dict(environment)
    environment["ceilings"] = {"matmul_gflops": fp32(environment.pop("matmul_gflops")),
                               "matmul_n": fp32(environment.pop("matmul_n", {}))}
    environment.setdefault("float32_matmul_precision", "highest")
    return environment


RECORD_STEPS = {1: _record_from_1}  # version -> the step to the next one
ENVIRONMENT_STEPS = {1: _environment_from_1}


def upgrade_record(record: dict) -> dict:
    """A Result line as this version reads it, from the version that wrote it (1 when it says none)."""
    return _upgraded(record, RECORD_STEPS)


def upgrade_environment(environment: dict) -> dict:
    """environment.json as this version reads it (1 when it says none)."""
    return _upgraded(environment, ENVIRONMENT_STEPS)


def _upgraded(data: dict, steps: dict) -> dict:
    version = data.get("schema_version", 1)
    while isinstance(version, int) and version in steps:
        data = {**steps[version](data), "schema_version": version + 1}
        version += 1
    return data
