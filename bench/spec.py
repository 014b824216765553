"""The spec stage: a sweep's options, from argv (cli.py) or from keywords (api.py), become one validated
SweepSpec here, with every default defined once.

`build_spec(values, n_cuda)` takes values already converted (argparse's `type=` converters, or
`spec_from_keywords`, which runs the same converters on Python values); an option left out or None
takes its default. Errors are SpecError (a ValueError) with the one-line message the CLI prints.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict

import psutil

from bench import converters
from bench.devices import cuda_index
from bench.schema import AMP, COMPILE, COMPILE_MODES, MALLOCS, MEMORY_FORMATS, MODES, PIPELINES, SweepSpec

DATASETS = ("auto", "cifar10", "synthetic")
LR_SCALINGS = ("none", "linear", "sqrt")
# a Case measures until its median is known within +-precision_pct (95%), at least 6 windows, at most
# max_seconds of training; warm-up lasts at least warmup_steps, until step times settle
BUDGET = {"epochs": 2, "max_steps": None, "max_seconds": 3.0, "warmup_steps": 10, "window_s": 0.1,
          "latency_batches": 200, "precision_pct": 2.0, "eval_images": None}
QUICK = {"epochs": 1, "max_steps": 300, "max_seconds": 0.2, "warmup_steps": 1, "window_s": 0.05,
         "latency_batches": 5, "precision_pct": 5.0, "eval_images": 500}
DEFAULTS = {"devices": None, "batch_sizes": [4, 32, 128, 512], "threads": None, "pipelines": list(PIPELINES),
            "widths": [1.0], "modes": list(MODES), "repeats": 1, "world_sizes": [1], "amp": ["off"],
            "memory_formats": ["contiguous"], "mallocs": ["default"], "cuda_graphs": False, "time_limit": 600.0, "quick": False,
            "lr": 0.001, "lr_scaling": "none", "target_accuracy_pct": 50.0, "seed": 0, "num_workers": 2,
            "dataset": "auto", "data_dir": "data", "no_verify": False, "no_download": False,
            "compile": ["off"], "compile_modes": ["default"], "no_job": False, "price": None,
            **{k: None for k in BUDGET}}
# the converter of each option that takes a value (flags: bools), for argv and keywords alike
CONVERTERS = {
    "devices": converters.devices, "batch_sizes": converters.batch_sizes, "threads": converters.thread_counts,
    "pipelines": converters.choices(PIPELINES), "widths": converters.widths, "modes": converters.choices(MODES),
    "repeats": converters.bounded_int(converters.MAX_REPEATS, "repeats a sweep can take", "3"), "world_sizes": converters.world_sizes, "amp": converters.choices(AMP),
    "memory_formats": converters.choices(MEMORY_FORMATS), "mallocs": converters.choices(MALLOCS),
    "epochs": converters.bounded_int(1000, "the epochs a benchmark Case can run", "2"),
    "max_steps": converters.bounded_int(converters._STEPS_CAP, "the steps a Case can run in a day", "300"),
    "max_seconds": converters.seconds_or_zero,
    "time_limit": converters.bounded_float(86400.0, "a day", "600"),
    "warmup_steps": converters.bounded_count(100000, "any warm-up a Case needs"),
    "window_s": converters.bounded_float(3600.0, "an hour", "0.5"),
    "latency_batches": converters.bounded_int(100000, "the batches timed one by one a Case needs", "200"),
    "eval_images": converters.bounded_int(1000000, "any test set this model is evaluated on", "1000"),
    "lr": converters.bounded_float(10.0, "any learning rate SGD trains this model with", "0.001"),
    "lr_scaling": converters.one_of(LR_SCALINGS),
    "target_accuracy_pct": converters.accuracy_pct, "seed": converters.seed,
    "num_workers": converters.bounded_count(4 * (psutil.cpu_count(logical=True) or 1),
                                            "four DataLoader workers per logical core of this machine"), "dataset": converters.one_of(DATASETS), "data_dir": str,
    "compile": converters.choices(COMPILE), "compile_modes": converters.choices(COMPILE_MODES),
    "price": converters.price, "precision_pct": converters.percentage,
}
FLAGS = ("cuda_graphs", "quick", "no_verify", "no_download", "no_job")
# what the CLI calls an option where its name differs from the keyword's
CLI_NAMES = {"window_s": "window", "target_accuracy_pct": "target-accuracy", "precision_pct": "precision"}
# keywords that say the same as an option, in the SweepSpec's own words
ALIASES = {"window": "window_s", "target_accuracy": "target_accuracy_pct", "time_limit_s": "time_limit",
           "precision": "precision_pct"}


class SpecError(ValueError):
    """Bad input: one line naming the option, what was wrong and what is accepted."""


def flag(name: str) -> str:
    return "--" + CLI_NAMES.get(name, name.replace("_", "-"))


def spec_from_keywords(options: dict, n_cuda: int) -> SweepSpec:
    """A SweepSpec from Python keywords (batch_sizes=[4, 32], download=False, ...), each value checked by
    the converter the CLI uses for it; `False` and `0` mean what they say."""
    values = {}
    for name, value in options.items():
        if name in ("download", "verify", "job"):  # the SweepSpec's positive words for --no-download, ...
            if not isinstance(value, bool):
                raise SpecError(f"{name}: {value!r} is not True or False")
            values[f"no_{name}"] = not value
            continue
        name = ALIASES.get(name, name)
        if name in FLAGS:
            if not isinstance(value, bool):
                raise SpecError(f"{flag(name)}: {value!r} is not True or False")
            values[name] = value
        elif name in CONVERTERS:
            values[name] = None if value is None else _convert(name, value)
        else:
            known = sorted([*CONVERTERS, *FLAGS, "download", "verify", "job"])
            raise SpecError(f"unknown option '{name}' (expected one of {', '.join(known)})")
    return build_spec(values, n_cuda)


def _convert(name: str, value) -> object:
    text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    try:
        return CONVERTERS[name](text)
    except argparse.ArgumentTypeError as e:
        raise SpecError(f"{flag(name)}: {e}") from None


def build_spec(values: dict, n_cuda: int) -> SweepSpec:
    """The SweepSpec of converted option values (missing or None: the default), checked against this
    machine's `n_cuda` GPUs."""
    v = {**DEFAULTS, **{k: x for k, x in values.items() if x is not None and k in DEFAULTS}}
    preset = QUICK if v["quick"] else BUDGET
    budget = {k: (v[k] if v[k] is not None else preset[k]) for k in BUDGET}
    if budget["max_seconds"] == 0.0:
        budget["max_seconds"] = None
    if budget["precision_pct"] == 0.0:
        budget["precision_pct"] = None
    devices_, skipped = resolve_devices(v["devices"], n_cuda)
    if v["cuda_graphs"]:
        _check_cuda_graphs(v, devices_ + list(skipped))
    _check_world_sizes(v, devices_, n_cuda)
    threads = v["threads"] or sorted({1, psutil.cpu_count(logical=False) or 1})
    return SweepSpec(devices=devices_, batch_sizes=v["batch_sizes"], threads=threads, pipelines=v["pipelines"],
                     widths=v["widths"], modes=v["modes"], time_limit_s=v["time_limit"], repeats=v["repeats"],
                     seed=v["seed"], lr=v["lr"], lr_scaling=v["lr_scaling"],
                     target_accuracy_pct=v["target_accuracy_pct"], num_workers=v["num_workers"],
                     dataset=v["dataset"], data_dir=v["data_dir"], verify=not v["no_verify"],
                     download=not v["no_download"], skipped_devices=skipped, amp=v["amp"],
                     memory_formats=v["memory_formats"], mallocs=v["mallocs"], cuda_graphs=v["cuda_graphs"],
                     world_sizes=v["world_sizes"], compile=v["compile"], compile_modes=v["compile_modes"],
                     job=not v["no_job"], price=v["price"] or {}, **budget)


def resolve_devices(requested: list[str] | None, n_cuda: int) -> tuple[list[str], dict[str, str]]:
    """(devices to run, {skipped device: why}), every CUDA device indexed: `cuda` names cuda:0, the
    device a fresh process uses (asking torch for its current device would create a CUDA context
    in this process). A CUDA device on a machine without CUDA is skipped, and an error when it is
    the only one asked for; an index past this machine's devices is an error."""
    if requested is None:
        return (["cpu", "cuda:0"] if n_cuda else ["cpu"]), {}
    usable, skipped, asked = [], {}, {}
    for text in requested:
        device = "cuda:0" if text == "cuda" else text
        if device in asked:
            continue
        asked[device] = text
        if device.startswith("cuda") and n_cuda == 0:
            skipped[device] = "CUDA is not available on this machine"
        elif device.startswith("cuda") and cuda_index(device) >= n_cuda:
            raise SpecError(f"--devices: '{text}' is not available: this machine has {n_cuda} CUDA device(s) "
                            f"(expected {', '.join(f'cuda:{i}' for i in range(n_cuda))})")
        else:
            usable.append(device)
    if not usable:
        first = next(iter(skipped))
        raise SpecError(f"--devices: '{asked[first]}' is not available: {skipped[first]} (expected e.g. cpu)")
    return usable, skipped


def _check_cuda_graphs(v: dict, devices_: list[str]) -> None:
    """Graphs capture the resident training step on a GPU; asked for where none applies, refuse."""
    if not any(d.startswith("cuda") for d in devices_):
        raise SpecError("--cuda-graphs: CUDA graphs need a CUDA device, and --devices has none "
                        "(expected e.g. --devices cpu,cuda)")
    if "resident" not in v["pipelines"] or "train" not in v["modes"]:
        raise SpecError("--cuda-graphs: graphs capture the resident pipeline's training step "
                        "(expected --pipelines to include resident and --modes to include train)")


def _check_world_sizes(v: dict, devices_: list[str], n_cuda: int) -> None:
    """Data-parallel Cases train with DDP; refuse what that path cannot honour, before any Case runs."""
    top = max(v["world_sizes"])
    if top == 1:
        return
    if "train" not in v["modes"]:
        raise SpecError("--world-sizes: data-parallel Cases train (expected --modes to include train)")
    if v["cuda_graphs"]:
        raise SpecError("--world-sizes: CUDA graphs are not captured around DDP's all-reduce here "
                        "(expected --world-sizes 1 with --cuda-graphs)")
    named = [d for d in devices_ if d.startswith("cuda") and cuda_index(d) != 0]
    if named:
        raise SpecError(f"--world-sizes: a data-parallel Case's ranks use cuda:0..cuda:N-1, one GPU each, so "
                        f"'{named[0]}' cannot name them (expected --devices cuda, or --world-sizes 1 with {named[0]})")
    if any(d.startswith("cuda") for d in devices_) and top > n_cuda:
        raise SpecError(f"--world-sizes: {top} ranks need {top} GPUs (one per rank) and this machine has {n_cuda} "
                        f"(expected at most {n_cuda}, or --devices cpu)")


# what a resume may change: where the data is, the kill limit and the price, not what a Case measures
RESUMABLE = ("skipped_devices", "price", "time_limit_s", "data_dir", "verify", "download")


def resume_differences(recorded: dict, spec: SweepSpec) -> list[str]:
    """The options of `spec` that differ from those a run folder recorded, as 'name then, now' phrases."""
    now = asdict(spec)
    return [f"{name} {recorded[name]!r} then, {now[name]!r} now" for name in now
            if name not in RESUMABLE and name in recorded and recorded[name] != now[name]]
