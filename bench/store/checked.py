"""What a run folder's files must hold before any command reads them: run folders travel (a colleague's tarball,
a CI artifact), so each field a command reads is checked for its type, its range and its size here, and a file
that fails says which field and what was expected, instead of a traceback somewhere downstream.
"""
from __future__ import annotations

import math

MAX_ENVIRONMENT_BYTES = 16 << 20  # a real one is a few KB, with a thousand resumes a few MB
MAX_RESUMES = 1000
MAX_ENTRIES = 1000  # devices, GPUs, precisions, widths: a real file has a handful

_TEXT = ("timestamp", "hostname", "os", "cpu_model", "python", "torch", "torchvision", "cuda_runtime", "run_id",
         "dataset", "dataset_source", "dataset_warning", "git_commit", "float32_matmul_precision", "libc",
         "gpu_driver", "project_version", "cpu_isa")
_COUNTS = ("cpu_physical_cores", "cpu_logical_cores", "torch_threads")


class FieldError(ValueError):
    """A field of a run folder's file that no bench wrote."""


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _mapping(value, name: str, what: str = "an object") -> dict:
    if not isinstance(value, dict) or len(value) > MAX_ENTRIES:
        raise FieldError(f"'{name}' is {value!r:.60}, not {what} of at most {MAX_ENTRIES} entries")
    if not all(isinstance(k, str) for k in value):
        raise FieldError(f"'{name}' has keys that are not text")
    return value


def _by_device(value, name: str, leaf, leaf_what: str) -> None:
    """{device: {precision (or width): leaf}}."""
    for device, inner in _mapping(value, name).items():
        for key, item in _mapping(inner, f"{name}.{device}").items():
            if not leaf(item):
                raise FieldError(f"'{name}.{device}.{key}' is {item!r:.60}, not {leaf_what}")


def check_environment(env: dict) -> None:
    """FieldError naming the first field of environment.json that no bench wrote (after upgrading)."""
    for name in _TEXT:
        if env.get(name) is not None and not isinstance(env[name], str):
            raise FieldError(f"'{name}' is {env[name]!r:.60}, not text")
    for name in _COUNTS:
        if env.get(name) is not None and (type(env[name]) is not int or not 0 < env[name] < 1 << 20):
            raise FieldError(f"'{name}' is {env[name]!r:.60}, not a count above 0")
    flags = env.get("cpu_flags")
    if flags is not None and (not isinstance(flags, list) or len(flags) > MAX_ENTRIES
                              or not all(isinstance(f, str) for f in flags)):
        raise FieldError(f"'cpu_flags' is {flags!r:.60}, not a list of instruction-set names")
    if env.get("git_dirty") is not None and not isinstance(env["git_dirty"], bool):
        raise FieldError(f"'git_dirty' is {env['git_dirty']!r:.60}, not true or false")
    gpus = env.get("gpus")
    if gpus is not None:
        if not isinstance(gpus, list) or len(gpus) > MAX_ENTRIES or not all(
                isinstance(g, dict) and isinstance(g.get("name"), str) for g in gpus):
            raise FieldError(f"'gpus' is {gpus!r:.60}, not a list of GPUs each with a 'name' (or null)")
    for name in ("skipped_devices", "spec", "thread_env", "malloc_states", "malloc_env"):
        if env.get(name) is not None:
            _mapping(env[name], name)
    for device, why in (env.get("skipped_devices") or {}).items():
        if not isinstance(why, str):
            raise FieldError(f"'skipped_devices.{device}' is {why!r:.60}, not the reason as text")
    prices = env.get("price_usd_per_hour")
    if prices is not None:
        for device, usd in _mapping(prices, "price_usd_per_hour", "an object of hourly prices by device").items():
            if not _number(usd) or usd < 0:
                raise FieldError(f"'price_usd_per_hour.{device}' is {usd!r:.60}, not a price of 0 or more")
    flops = env.get("model_flops_per_image")
    if flops is not None:
        _by_device(flops, "model_flops_per_image", lambda v: _number(v) and v > 0, "a number above 0")
    _check_ceilings(env.get("ceilings"))
    resumes = env.get("resumes")
    if resumes is not None and (not isinstance(resumes, list) or len(resumes) > MAX_RESUMES
                                or not all(isinstance(r, dict) for r in resumes)):
        raise FieldError(f"'resumes' is {resumes!r:.60}, not a list of at most {MAX_RESUMES} resumes' records")


def _check_ceilings(ceilings) -> None:
    if ceilings is None:
        return
    _mapping(ceilings, "ceilings")
    _by_device(ceilings.get("matmul_gflops") or {}, "ceilings.matmul_gflops", lambda v: _number(v) and v > 0,
               "a rate in GFLOP/s above 0")
    _by_device(ceilings.get("matmul_n") or {}, "ceilings.matmul_n",
               lambda v: type(v) is int and abs(v) < 1 << 20, "a matrix size")
    _by_device(ceilings.get("matmul_missing") or {}, "ceilings.matmul_missing", lambda v: isinstance(v, str),
               "the reason as text")
    if ceilings.get("worker_error") is not None and not isinstance(ceilings["worker_error"], str):
        raise FieldError(f"'ceilings.worker_error' is {ceilings['worker_error']!r:.60}, not text")


MAX_LIST = 1_000_000  # windows, epochs, ranks, warnings: a real Case has at most thousands

_LEAVES = {"float": lambda v: _number(v), "int": lambda v: type(v) is int, "str": lambda v: isinstance(v, str),
           "bool": lambda v: isinstance(v, bool)}
_LEAF_WHAT = {"float": "a finite number", "int": "an integer", "str": "text", "bool": "true or false"}
# (low, figure, high): each interval a command reads, as a Result names it
INTERVALS = (("images_per_s_p25", "images_per_s", "images_per_s_p75"),
             ("images_per_s_ci_low", "images_per_s", "images_per_s_ci_high"),
             ("job_s_low", "job_s", "job_s_high"))


def _field_ok(annotation: str, value) -> str | None:
    """None when `value` fits the field's annotation (as the dataclass spells it), else what was expected."""
    base = annotation.removesuffix(" | None")
    if value is None:
        return None if base != annotation else "a value, not null"
    if base in _LEAVES:
        return None if _LEAVES[base](value) else _LEAF_WHAT[base]
    if base.startswith("list[") and base[5:-1] in _LEAVES:
        leaf = base[5:-1]
        if isinstance(value, list) and len(value) <= MAX_LIST and all(map(_LEAVES[leaf], value)):
            return None
        return f"a list of at most {MAX_LIST} items, each {_LEAF_WHAT[leaf]}"
    if base == "dict[str, float]":
        if isinstance(value, dict) and len(value) <= MAX_ENTRIES and all(
                isinstance(k, str) and _number(v) for k, v in value.items()):
            return None
        return f"an object of at most {MAX_ENTRIES} numbers"
    return None  # a nested type (the Case) is checked field by field


def check_record(record: dict, classes: tuple) -> None:
    """FieldError naming the first field of a results line that does not fit the dataclasses' fields (types,
    sizes) or an interval that is not low <= figure <= high."""
    from dataclasses import fields

    for cls in classes:
        for f in fields(cls):
            if f.name in record:
                expected = _field_ok(str(f.type), record[f.name])
                if expected:
                    raise FieldError(f"'{f.name}' is {record[f.name]!r:.60}, not {expected}")
    for low_name, name, high_name in INTERVALS:
        low, value, high = (record.get(n) for n in (low_name, name, high_name))
        if low is not None and high is not None and not low <= high:
            raise FieldError(f"'{low_name}' {low!r} is above '{high_name}' {high!r}: not an interval")
        if value is not None and not (low is None or low <= value) or value is not None and not (
                high is None or value <= high):
            raise FieldError(f"'{name}' {value!r} is not between '{low_name}' {low!r} and '{high_name}' {high!r}")
