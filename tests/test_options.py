"""The option registry (bench/sweep/options.py): each option declared once, and argv, the keyword API, the SweepSpec's
defaults, --help, resume and compare all made from that one declaration."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

import bench
from bench import cli
from bench.analysis import compare
from bench.schema import SweepSpec
from bench.sweep import spec
from bench.sweep.options import BY_KEYWORD, OPTIONS, QUICK, _shown, add_sweep_args, spec_defaults

VALUED = [o for o in OPTIONS if o.convert is not None and o.default not in (None, {})]


@pytest.mark.parametrize("option", VALUED, ids=lambda o: o.name)
def test_each_default_is_a_value_its_own_converter_accepts(option):
    assert option.convert(_shown(option.default)) == option.default
    if option.budget and option.quick is not None:
        assert option.convert(_shown(option.quick)) == option.quick


def test_argv_the_keyword_api_and_code_start_from_the_same_defaults():
    from_argv = dataclasses.asdict(cli.build_spec(cli.get_parser().parse_args(["run"]), n_cuda=0))
    from_keywords = dataclasses.asdict(bench.sweep_spec())
    in_code = dataclasses.asdict(spec.with_defaults(devices=from_argv["devices"], threads=from_argv["threads"]))
    assert from_argv == from_keywords == in_code
    quick = dataclasses.asdict(cli.build_spec(cli.get_parser().parse_args(["run", "--quick"]), n_cuda=0))
    assert {k: quick[k] for k in QUICK} == {k: v for k, v in spec_defaults(quick=True).items() if k in QUICK}


def test_the_spec_has_a_field_for_every_option_and_no_default_of_its_own():
    fields = {f.name: f for f in dataclasses.fields(SweepSpec)}
    assert {o.name for o in OPTIONS if o.in_spec} | {"skipped_devices"} == set(fields)
    assert [n for n, f in fields.items() if f.default is not dataclasses.MISSING
            or f.default_factory is not dataclasses.MISSING] == ["skipped_devices"]  # not an option: found out


@pytest.mark.parametrize("option", [o for o in OPTIONS if "{default}" in o.help], ids=lambda o: o.name)
def test_help_states_the_default_the_option_has(option):
    parser = argparse.ArgumentParser()
    add_sweep_args(parser)
    [action] = [a for a in parser._actions if option.flag in a.option_strings]
    assert action.default is None  # not given: the spec stage fills the default or the --quick preset
    assert f"default {_shown(option.default)}" in action.help or f"default ./{option.default}" in action.help


def test_every_spelling_of_an_option_reaches_the_same_field():
    parse = cli.get_parser().parse_args
    for o in OPTIONS:
        if not o.in_spec or o.convert is None:
            continue
        assert o.flag.startswith("--")
        for alias in o.aliases:
            assert BY_KEYWORD[alias] is o
    compiled = cli.build_spec(parse(["run", "--compile", "on", "--compile-mode", "max-autotune"]), 0)
    assert compiled.compile_modes == ["max-autotune"]
    assert bench.sweep_spec(time_limit=30).time_limit_s == bench.sweep_spec(time_limit_s=30).time_limit_s == 30.0
    assert bench.sweep_spec(job=False).job is bench.sweep_spec(no_job=True).job is False
    assert cli.build_spec(parse(["run", "--no-job", "--no-verify"]), 0).job is False


def test_resume_and_compare_read_what_each_option_declares():
    assert set(spec.RESUMABLE) == {"skipped_devices"} | {o.name for o in OPTIONS if o.resumable}
    assert {"price", "data_dir", "time_limit_s"} <= set(spec.RESUMABLE) and "lr" not in spec.RESUMABLE
    assert compare.BUDGET == ("epochs", "max_steps", "max_seconds")
    assert set(compare.CASE_SETTINGS) == {o.name for o in OPTIONS if o.compared == "case"}
    assert list(compare.CASE_SETTINGS) == sorted(compare.CASE_SETTINGS)  # named in this order
