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

from bench.measuring.devices import cuda_index
from bench.schema import SweepSpec
from bench.sweep.options import BY_KEYWORD, OPTIONS, Option, spec_defaults

# every option (its converter, default, --quick preset, CLI spelling) is declared once, in bench/sweep/options.py


class SpecError(ValueError):
    """Bad input: one line naming the option, what was wrong and what is accepted."""


def spec_from_keywords(options: dict, n_cuda: int) -> SweepSpec:
    """A SweepSpec from Python keywords (batch_sizes=[4, 32], download=False, ...), each value checked by
    the converter the CLI uses for it; `False` and `0` mean what they say."""
    values = {}
    for name, value in options.items():
        o = BY_KEYWORD.get(name)
        if o is None:
            known = sorted({o.name for o in OPTIONS} | {a for o in OPTIONS for a in o.aliases})
            raise SpecError(f"unknown option '{name}' (expected one of {', '.join(known)})")
        if o.convert is None:
            if not isinstance(value, bool):
                raise SpecError(f"{name if o.negated and name == o.name else o.flag}: {value!r} is not True or False")
            values[o.keyword] = (not value) if o.negated and name == o.name else value
        else:
            values[o.keyword] = None if value is None else _convert(o, value)
    return build_spec(values, n_cuda)


def _convert(o: Option, value) -> object:
    text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    try:
        return o.convert(text)
    except argparse.ArgumentTypeError as e:
        raise SpecError(f"{o.flag}: {e}") from None


def with_defaults(**fields) -> SweepSpec:
    """A SweepSpec made in code (bench check, tests, benchmarks): the options' defaults, then `fields` as given,
    unchecked."""
    return SweepSpec(**{**spec_defaults(), **fields})


def build_spec(values: dict, n_cuda: int) -> SweepSpec:
    """The SweepSpec of converted option values, keyed as parsed argv names them (missing or None: the default,
    or the --quick preset for the per-Case budget), checked against this machine's `n_cuda` GPUs."""
    quick = bool(values.get("quick"))
    v = spec_defaults(quick)
    for o in OPTIONS:
        given = values.get(o.keyword)
        if not o.in_spec:
            continue
        if o.convert is None:
            v[o.name] = (not given) if o.negated else bool(given)
        elif given is not None:
            v[o.name] = given
    for name in ("max_seconds", "precision_pct"):  # 0: no limit
        if v[name] == 0.0:
            v[name] = None
    _check_together(v, values)
    v["devices"], skipped = resolve_devices(v["devices"], n_cuda)
    if v["cuda_graphs"]:
        _check_cuda_graphs(v, v["devices"] + list(skipped))
    _check_world_sizes(v, v["devices"], n_cuda)
    v["threads"] = v["threads"] or sorted({1, psutil.cpu_count(logical=False) or 1})
    return SweepSpec(**v, skipped_devices=skipped)


def _check_together(v: dict, given: dict) -> None:
    """Options that mean nothing together are refused, not quietly ignored."""
    if given.get("compile_modes") is not None and "on" not in v["compile"]:
        raise SpecError(f"--compile-modes: {','.join(v['compile_modes'])} is a torch.compile mode and --compile is "
                        f"off, so nothing would be compiled (expected --compile on, or off,on, with it)")
    if v["max_seconds"] is not None and v["window_s"] > v["max_seconds"]:
        raise SpecError(f"--window: {v['window_s']:g} s is longer than the whole --max-seconds {v['max_seconds']:g} "
                        f"a Case may train, and a Case times at least 3 windows (expected --window at most "
                        f"{v['max_seconds']:g}, ideally a third of it, or --max-seconds 0 for whole epochs)")


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
RESUMABLE = ("skipped_devices", *(o.name for o in OPTIONS if o.resumable))


def resume_differences(recorded: dict, spec: SweepSpec) -> list[str]:
    """The options of `spec` that differ from those a run folder recorded, as 'name then, now' phrases."""
    now = asdict(spec)
    return [f"{name} {recorded[name]!r} then, {now[name]!r} now" for name in now
            if name not in RESUMABLE and name in recorded and recorded[name] != now[name]]
