"""Every option of a sweep, declared once: its name (the keyword of the Python API and the SweepSpec's field), its
converter, its default (and its --quick preset), its help, its CLI spelling where that differs, whether a resume may
change it and whether `compare` needs two runs to share it. The argparse groups of `bench run`/`bench plan`, the
keyword API's checks, the SweepSpec's defaults, the resume check and compare's settings are all made from this
table (pyperf keeps its metadata the same way: one registry, each field's type, check and formatter).

Adding an option is one `Option(...)` here, and its use where a Case reads it.
"""
from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from bench.schema import MODES, PIPELINES, VARIANTS
from bench.sweep import converters

DATASETS = ("auto", "cifar10", "synthetic")
LR_SCALINGS = ("none", "linear", "sqrt")


@dataclass(frozen=True)
class Option:
    """One option. `convert` None: a flag (True when given; `negated`: the SweepSpec field is its opposite, as
    --no-job sets job=False). `quick`: the value --quick gives it when the option is not given (the per-Case
    budget)."""

    name: str
    group: str
    help: str
    default: object = None
    convert: Callable[[str], object] | None = None
    cli: str | None = None  # the flag's spelling after "--", where it is not the name with dashes
    more_cli: tuple[str, ...] = ()  # other spellings the CLI accepts
    aliases: tuple[str, ...] = ()  # other keywords the API accepts
    quick: object = None
    negated: bool = False
    resumable: bool = False  # a resume may change it: where the data is, the kill limit, the price
    compared: str | None = None  # "budget" or "case": compare refuses two runs that differ in it
    in_spec: bool = True  # a field of the SweepSpec (--quick is not: it picks the budget's presets)

    @property
    def flag(self) -> str:
        return "--" + (self.cli or (f"no-{self.name}" if self.negated else self.name).replace("_", "-"))

    @property
    def keyword(self) -> str:
        """The parsed argv's name: the field's, or no_<field> for a negated flag."""
        return f"no_{self.name}" if self.negated else self.name

    @property
    def budget(self) -> bool:
        return self.quick is not None


AXES, STEP, BUDGET, TRAINING, DATA = ("sweep axes", "step variants (each recorded in the Case)", "per-Case budget",
                                      "training", "data")


def _variant_option(declared: dict) -> Option:
    """The option a step variant declares: a list of its choices, or a flag where it names none."""
    kw = dict(declared)
    choices = kw.pop("choices", None)
    return Option(group=STEP, convert=None if choices is None else converters.choices(choices), **kw)


OPTIONS: tuple[Option, ...] = (
    Option("devices", AXES, "cpu, cuda, cuda:N (default: cpu, plus cuda when available)", None, converters.devices),
    Option("batch_sizes", AXES, "default {default}", [4, 32, 128, 512], converters.batch_sizes),
    Option("threads", AXES, "CPU threads per Case (default: 1 and all physical cores)", None, converters.thread_counts),
    Option("pipelines", AXES, "tutorial,resident", list(PIPELINES), converters.choices(PIPELINES)),
    Option("widths", AXES, "conv channel multiplier (default {default})", [1.0], converters.widths),
    Option("modes", AXES, "train,infer", list(MODES), converters.choices(MODES)),
    Option("repeats", AXES, "runs of each Case (default {default})", 1,
           converters.bounded_int(converters.MAX_REPEATS, "repeats a sweep can take", "3")),
    Option("world_sizes", AXES, "data-parallel ranks per training Case, e.g. 1,2; --batch-sizes and "
           "--threads are per rank; on CUDA one GPU per rank (default {default})", [1], converters.world_sizes),
    *(_variant_option(o) for v in VARIANTS for o in v.options),  # declared with the variant (bench/schema.py)
    # the per-Case budget: a Case measures until its median is known within +-precision_pct (95%), at least 6
    # windows, at most max_seconds of training; warm-up lasts at least warmup_steps, until step times settle
    Option("epochs", BUDGET, "epochs per Case (default {default}, the tutorial's)", 2,
           converters.bounded_int(1000, "the epochs a benchmark Case can run", "2"), quick=1, compared="budget"),
    Option("max_steps", BUDGET, "stop a Case after this many steps", None,
           converters.bounded_int(converters._STEPS_CAP, "the steps a Case can run in a day", "300"), quick=300,
           compared="budget"),
    Option("max_seconds", BUDGET, "stop a Case after this much training time, warm-up included, once it has 3 timed "
           "windows (default {default}; 0: run every epoch)", 3.0, converters.seconds_or_zero, quick=0.2,
           compared="budget"),
    Option("time_limit_s", BUDGET, "kill a Case after this many seconds; it is recorded as a timeout (default "
           "{default})", 600.0, converters.bounded_float(86400.0, "a day", "600"), cli="time-limit",
           aliases=("time_limit",),
           resumable=True, compared="case"),
    Option("quick", BUDGET, "", False, in_spec=False),  # its help lists the presets (_help)
    Option("precision_pct", BUDGET, "stop a Case once its median images/s is known within +-this %% (95%% interval "
           "over at least 6 windows), within --max-seconds (default {default}%%; --quick {quick}%%; 0: always run the "
           "whole budget)", 2.0, converters.percentage, cli="precision", aliases=("precision",), quick=5.0),
    Option("warmup_steps", BUDGET, "steps excluded from throughput at least; warm-up goes on until step times "
           "settle (default {default})", 10, converters.bounded_count(100000, "any warm-up a Case needs"), quick=1,
           compared="case"),
    Option("window_s", BUDGET, "timed window, s (default {default}; --quick {quick})", 0.1,
           converters.bounded_float(3600.0, "an hour", "0.5"), cli="window", aliases=("window",), quick=0.05,
           compared="case"),
    Option("latency_batches", BUDGET, "inference batches timed one by one for latency (default {default})", 200,
           converters.bounded_int(100000, "the batches timed one by one a Case needs", "200"), quick=5,
           compared="case"),
    Option("eval_images", BUDGET, "measure test accuracy on the first N test images (default all; --quick {quick})",
           None, converters.bounded_int(1000000, "any test set this model is evaluated on", "1000"), quick=500,
           compared="case"),
    Option("lr", TRAINING, "learning rate at batch 4 (default {default})", 0.001,
           converters.bounded_float(10.0, "any learning rate SGD trains this model with", "0.001"), compared="case"),
    Option("lr_scaling", TRAINING, "scale the lr with batch size relative to 4: none, linear, sqrt (default "
           "{default})", "none", converters.one_of(LR_SCALINGS)),
    Option("target_accuracy_pct", TRAINING, "test accuracy, %%, whose time to reach is recorded (default {default})",
           50.0, converters.accuracy_pct, cli="target-accuracy", aliases=("target_accuracy",), compared="case"),
    Option("job", TRAINING, "leave out the tutorial's job (2 epochs at batch 4 with its DataLoader, then the test "
           "pass) per device, which the report opens with", True, negated=True),
    Option("input_bound", TRAINING, "leave out the input bound: the tutorial's DataLoader alone (no model) at each "
           "batch size on this host, the rate no GPU can train the tutorial pipeline beyond", True, negated=True),
    Option("price", TRAINING, "the machine's price in USD per hour, e.g. 0.10, or per device: cpu=0.10,cuda=0.90; "
           "the report adds cost per epoch, of the tutorial's job and to the target accuracy", {}, converters.price,
           resumable=True),
    Option("seed", TRAINING, "default {default}", 0, converters.seed, compared="case"),
    Option("num_workers", TRAINING, "DataLoader workers of the tutorial pipeline (default {default}, the "
           "tutorial's)", 2, converters.bounded_count(4 * (psutil.cpu_count(logical=True) or 1),
                                    "four DataLoader workers per logical core of this machine"), compared="case"),
    Option("dataset", DATA, "auto: real CIFAR-10 when present or downloadable, else synthetic", "auto",
           converters.one_of(DATASETS)),
    Option("data_dir", DATA, "where CIFAR-10 is or goes (default ./{default})", "data", str, resumable=True),
    Option("verify", DATA, "accept a custom folder in the CIFAR-10 format (skip the official MD5s)", True,
           negated=True, resumable=True),
    Option("download", DATA, "never download CIFAR-10", True, negated=True, resumable=True),
)
BY_NAME = {o.name: o for o in OPTIONS}
QUICK = {o.name: o.quick for o in OPTIONS if o.budget}  # what --quick gives the per-Case budget
# what the keyword API accepts for each option: its name, its aliases, and no_<name> for a negated flag
BY_KEYWORD = {k: o for o in OPTIONS for k in (o.name, o.keyword, *o.aliases)}


def spec_defaults(quick: bool = False) -> dict:
    """Every SweepSpec field an option sets, at its default (or --quick preset); fresh lists and dicts."""
    return {o.name: copy.deepcopy(o.quick if quick and o.budget else o.default) for o in OPTIONS if o.in_spec}


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    """The options `run` and `plan` share, in their groups, then the run's output options. Every value
    defaults to None here (not given): the spec stage fills the default or the --quick preset."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for o in OPTIONS:
        group = groups.get(o.group) or groups.setdefault(o.group, p.add_argument_group(o.group))
        spellings = [o.flag, *(f"--{s}" for s in o.more_cli)]
        if o.convert is None:
            group.add_argument(*spellings, dest=o.keyword, action="store_true", help=_help(o))
        else:
            metavar = o.flag[2:].upper().replace("-", "_")
            group.add_argument(*spellings, dest=o.keyword, type=o.convert, metavar=metavar, help=_help(o))
    out = p.add_argument_group("output")
    out.add_argument("--out", help="run folder (default reports/<run-id>, or $BENCH_REPORTS_DIR/<run-id>)")
    out.add_argument("--resume", action="store_true", help="re-run only the Cases not already ok in --out")
    out.add_argument("--no-report", action="store_true", help="do not build the report at the end")


def _help(o: Option) -> str:
    """The option's help, its default and --quick preset written in from the declaration."""
    if o.name != "quick":
        return o.help.format(default=_shown(o.default), quick=_shown(o.quick))
    return (f"a fast look: {QUICK['epochs']} epoch, at most {QUICK['max_steps']} steps or {QUICK['max_seconds']:g} s "
            f"of training per Case after a {QUICK['warmup_steps']}-step warm-up (3 timed windows at least), accuracy "
            f"on {QUICK['eval_images']} test images, latency from at most {QUICK['latency_batches']} calls")


def _shown(value: object) -> str:
    if isinstance(value, list):
        return ",".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
