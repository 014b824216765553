"""The plain data that flows between stages: SweepSpec -> Case (bench/result.py: -> Result), and the step variants a
Case can run."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

MODES = ("train", "infer")
PIPELINES = ("tutorial", "resident")  # see cnn/loops.py
AMP = ("off", "bf16")
MEMORY_FORMATS = ("contiguous", "channels_last")
FP32_MATHS = ("default", "strict")  # on CUDA: torch's defaults (cuDNN's convolutions in TF32), or TF32 off everywhere
MALLOCS = ("default", "tuned")  # glibc's malloc pinned at its defaults, or keeping freed memory (bench/measuring/allocator.py)
COMPILE = ("off", "on")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
JOB = "job"  # the tutorial's own job, end to end: a Case mode of its own (bench/measuring/job.py)
INPUT = "input"  # the tutorial's DataLoader alone, no model: what no GPU can speed up (bench/measuring/input_bound.py)



@dataclass(frozen=True)
class Variant:
    """One way a Case's step can differ from the tutorial's, declared once: the Case's key and label, the plan's
    combinations, `bench check`'s rows, the report's variant names and the options that sweep it (bench/sweep/options.py)
    all come from it. Adding a variant is one object here, its Case and SweepSpec fields, and the code of its step."""

    field: str  # the Case's field; the tutorial's step has `plain` there
    plain: object
    key: Callable[[object], str]  # its part of the Case's key, "" for the plain value
    name: Callable[[object], str]  # its part of the report's variant name, "" for the plain value
    check: str  # `bench check`'s row for it
    options: tuple[dict, ...]  # the options that sweep it, as bench/sweep/options.py's Option takes them
    values: Callable[[SweepSpec], list]  # the values a sweep runs
    program: bool = False  # it replaces the eager step (its name stands for "eager") rather than modifying it
    process: bool = False  # it sets the whole process (the allocator), not the step
    applies: Callable[[dict], bool] = lambda point: True  # where it applies (device, mode, pipeline, world_size,
    #                                                       the variants before it); elsewhere the plain value runs
    check_values: dict = field(default_factory=dict)  # the SweepSpec fields with which `bench check` tries it
    check_once: bool = False  # checked on resident training only: slow to set up, or the whole process's


def _compile_values(spec: SweepSpec) -> list:
    return [None] * ("off" in spec.compile) + (list(spec.compile_modes) if "on" in spec.compile else [])


VARIANTS: tuple[Variant, ...] = (
    Variant("amp", "off", lambda a: f"amp-{a}", lambda a: f"+{a}", "bf16 autocast",
            ({"name": "amp", "help": "off, bf16 (autocast), or both: off,bf16 (default {default})", "default": ["off"],
              "choices": AMP},), lambda spec: spec.amp, check_values={"amp": list(AMP)}),
    Variant("memory_format", "contiguous", lambda m: m.replace("_", "-"), lambda m: "+" + m.replace("_", "-"),
            "channels_last",
            ({"name": "memory_formats", "help": "contiguous, channels_last, or both (default {default})",
              "default": ["contiguous"], "choices": MEMORY_FORMATS},), lambda spec: spec.memory_formats,
            check_values={"memory_formats": list(MEMORY_FORMATS)}),
    Variant("fp32_math", "default", lambda m: f"fp32-{m}", lambda m: f"+fp32-{m}", "strict fp32",
            ({"name": "fp32_maths", "help": "on CUDA, the math of the float32 step: default (torch's defaults: cuDNN's "
              "convolutions, ~91%% of the model's multiply-adds, in TF32; matrix products in fp32), strict (TF32 off "
              "everywhere), or both: default,strict (default {default})", "default": ["default"],
              "choices": FP32_MATHS, "cli": "fp32-math"},), lambda spec: spec.fp32_maths,
            check_values={"fp32_maths": list(FP32_MATHS)},
            applies=lambda p: p["device"].startswith("cuda") and p["amp"] == "off"),
    Variant("malloc", "default", lambda m: f"malloc-{m}", lambda m: f"+malloc-{m}", "malloc tuned",
            ({"name": "mallocs", "help": "the allocator state every Case is pinned in before it allocates: default "
              "(glibc's malloc at its documented thresholds, 128 KiB, handing freed blocks back each step), tuned "
              "(freed memory kept between steps, as MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647 "
              "give a script), or both: default,tuned (default {default})", "default": ["default"],
              "choices": MALLOCS, "cli": "malloc"},), lambda spec: spec.mallocs,
            process=True, check_values={"mallocs": list(MALLOCS)}, check_once=True),
    Variant("cuda_graphs", False, lambda g: "graphs", lambda g: "graphs", "CUDA graphs",
            ({"name": "cuda_graphs", "help": "also run the resident training step captured in a CUDA graph (CUDA "
              "devices only)", "default": False},), lambda spec: [False, True] if spec.cuda_graphs else [False],
            program=True, check_values={"cuda_graphs": True},
            applies=lambda p: p["device"].startswith("cuda") and p["pipeline"] == "resident" and p["mode"] == "train"
            and p["world_size"] == 1),
    Variant("compile_mode", None, lambda m: "compile" if m == "default" else f"compile-{m}",
            lambda m: "compile" if m == "default" else f"compile-{m}", "torch.compile",
            ({"name": "compile", "help": "torch.compile the step: off, on, or both: off,on (default {default})",
              "default": ["off"], "choices": COMPILE},
             {"name": "compile_modes", "help": "torch.compile modes when --compile has on: default, reduce-overhead, "
              "max-autotune, max-autotune-no-cudagraphs (default {default})", "default": ["default"],
              "choices": COMPILE_MODES, "more_cli": ("compile-mode",)}), _compile_values,
            program=True, check_values={"compile": list(COMPILE)}, check_once=True,
            applies=lambda p: p["world_size"] == 1 and not p["cuda_graphs"]),
)


def changed(case) -> list[Variant]:
    """The variants in which a Case's step differs from the tutorial's, in declaration order."""
    return [v for v in VARIANTS if getattr(case, v.field) != v.plain]

@dataclass
class SweepSpec:
    """What to sweep and how long each Case may run; built and validated once, in bench/sweep/spec.py, from the options
    bench/sweep/options.py declares (their defaults live there: `bench.sweep.spec.with_defaults` for a spec made in code)."""

    devices: list[str]
    batch_sizes: list[int]
    threads: list[int]
    pipelines: list[str]
    widths: list[float]
    modes: list[str]
    epochs: int
    max_steps: int | None
    max_seconds: float | None
    time_limit_s: float
    repeats: int
    seed: int
    lr: float
    lr_scaling: str
    target_accuracy_pct: float
    num_workers: int
    warmup_steps: int
    window_s: float
    latency_batches: int
    eval_images: int | None  # test images the accuracy is measured on; None: the whole test set
    precision_pct: float | None  # stop a Case once its median is known within +-this %; None: the budget
    dataset: str
    data_dir: str
    verify: bool
    download: bool
    amp: list[str]
    memory_formats: list[str]
    fp32_maths: list[str]
    mallocs: list[str]
    cuda_graphs: bool
    world_sizes: list[int]
    compile: list[str]
    compile_modes: list[str]
    job: bool  # the tutorial's job per device (--no-job leaves it out)
    input_bound: bool  # the tutorial's DataLoader alone at each batch size (--no-input-bound leaves it out)
    price: dict[str, float]  # USD per hour by device ("*": every device)
    skipped_devices: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One point of the sweep, with everything a worker needs to run it alone."""

    mode: str
    device: str
    pipeline: str
    batch_size: int
    threads: int | None  # None: the device is not a CPU, torch's default is kept
    width: float
    repeat: int
    epochs: int
    max_steps: int | None
    max_seconds: float | None
    time_limit_s: float
    lr: float
    seed: int
    target_accuracy_pct: float
    num_workers: int
    warmup_steps: int
    window_s: float
    latency_batches: int
    dataset: str
    data_cache: str
    run_id: str = ""
    amp: str = "off"  # "bf16": forward and loss under autocast
    memory_format: str = "contiguous"  # or "channels_last"
    fp32_math: str = "default"  # CUDA: torch's defaults (TF32 convolutions), or "strict" (TF32 off everywhere)
    malloc: str = "default"  # the allocator state, pinned before the Case allocates (bench/measuring/allocator.py)
    cuda_graphs: bool = False  # the resident training step captured in a CUDA graph
    world_size: int = 1  # data-parallel ranks (DDP); batch_size and threads are per rank
    compile_mode: str | None = None  # torch.compile's mode; None: the eager step
    target_precision_pct: float | None = None  # adaptive stop: the median known within +-this % (95%); None: off
    eval_images: int | None = None  # accuracy over the first N test images; None: the whole test set

    @property
    def key(self) -> str:
        """Stable identity of the sweep point, for --resume and for comparing runs."""
        threads = "auto" if self.threads is None else self.threads
        ranks = f"/ws{self.world_size}" if self.world_size > 1 else ""
        return (f"{self.mode}/{self.device}/{self.pipeline}/b{self.batch_size}/t{threads}"
                f"/w{self.width:g}/r{self.repeat}{ranks}{self.variant_suffix}")

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def variant_suffix(self) -> str:
        """Empty for the tutorial's own step, so plain keys stay as they were."""
        return "".join(f"/{v.key(getattr(self, v.field))}" for v in changed(self))

    @property
    def label(self) -> str:
        threads = "" if self.threads is None else f" threads={self.threads}"
        variant = self.variant_suffix.replace("/", " ")
        ranks = f" ranks={self.world_size}" if self.world_size > 1 else ""
        return (f"{self.mode} {self.device} {self.pipeline} batch={self.batch_size}{threads}{ranks} "
                f"width={self.width:g}{variant}")
