"""torch.compile as a step variant: planned and keyed like the others, compiled before the clock with the
time recorded apart, skipped with the reason where it cannot work, and judged against its compile time."""
from __future__ import annotations

import time
from dataclasses import replace

import pandas as pd
import pytest
import torch

from bench import cli
from bench.analysis import tables
from bench.measuring import compiling
from bench.report import findings as sentences
from bench.running import worker
from bench.schema import Case
from bench.sweep.plan import plan_cases
from bench.sweep.spec import with_defaults
from cnn import cache, data
from cnn.model import Net
from test_analysis import _row

SPEC = with_defaults(devices=["cpu", "cuda:0"], batch_sizes=[4], threads=[2], pipelines=["resident"], widths=[1.0],
                     modes=["train", "infer"], compile=["off", "on"], compile_modes=["default", "max-autotune"],
                     cuda_graphs=True, world_sizes=[1, 2], job=False, max_seconds=None, precision_pct=None,
                     window_s=0.5)


def test_compiled_variants_are_planned_beside_the_eager_step_on_one_process_without_graphs():
    cases = plan_cases(SPEC, "/c", "synthetic")
    keys = {c.key for c in cases}
    assert {"train/cpu/resident/b4/t2/w1/r0/compile", "train/cpu/resident/b4/t2/w1/r0/compile-max-autotune",
            "infer/cuda:0/resident/b4/tauto/w1/r0/compile", "train/cpu/resident/b4/t2/w1/r0"} <= keys
    assert len(keys) == len(cases)
    compiled = [c for c in cases if c.compile_mode is not None]
    assert all(c.world_size == 1 and not c.cuda_graphs for c in compiled)
    assert len(compiled) == 2 * 2 * 2  # devices x modes x compile modes
    only_on = plan_cases(replace(SPEC, compile=["on"], world_sizes=[1], cuda_graphs=False), "/c", "synthetic")
    assert all(c.compile_mode is not None for c in only_on)


def test_compile_options_from_argv():
    spec = cli.build_spec(cli.get_parser().parse_args(["run", "--compile", "off,on", "--compile-mode",
                                                       "max-autotune"]), n_cuda=0)
    assert spec.compile == ["off", "on"] and spec.compile_modes == ["max-autotune"]
    assert cli.main(["run", "--compile", "maybe"]) == 2


@pytest.fixture(scope="module")
def small():
    return data.prepare_synthetic(n_train=160, n_test=64)


def _case(small, **kw) -> Case:
    base = dict(mode="train", device="cpu", pipeline="resident", batch_size=4, threads=None, width=1.0, repeat=0,
                epochs=1, max_steps=12, max_seconds=None, time_limit_s=300.0, lr=0.001, seed=0,
                target_accuracy_pct=50.0, num_workers=0, warmup_steps=2, window_s=0.0, latency_batches=3,
                dataset="synthetic", data_cache=str(small.cache_dir), compile_mode="default")
    return Case(**{**base, **kw})


def test_a_compiled_case_is_compiled_before_the_clock_and_records_the_time_apart(small):
    result = worker.run_case(_case(small))
    assert result.status == "ok", result.error
    assert result.compile_s > 0 and result.startup_s >= result.compile_s  # before the first timed step
    assert result.steps == 12 and result.images_per_s > 0


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_the_partial_last_batch_gets_a_program_of_its_own_and_full_batches_keep_theirs(small, monkeypatch, mode):
    # 160 training images at batch 24: 6 full batches and one of 16 an epoch (64 test images: 2 and one of 16)
    programs, served = [], []
    real_compile = torch.compile

    def recording_compile(model, mode=None, dynamic=None):  # the harness's call, onto a backend that records
        assert dynamic is False  # static shapes: dynamo's default recompiles the step with a dynamic batch

        def backend(gm, example_inputs):
            k = len(programs)
            programs.append(k)
            if k:
                time.sleep(0.5)  # a new shape's compiling, which must show in compile_s

            def run(*args):
                batch = next(a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.shape[1:] == (3, 32, 32))
                served.append((batch, k))
                return gm.forward(*args)
            return run
        return real_compile(model, backend=backend, dynamic=dynamic)

    monkeypatch.setattr(compiling.torch, "compile", recording_compile)
    result = worker.run_case(_case(small, mode=mode, batch_size=24, epochs=2, max_steps=None))
    assert result.status == "ok", result.error
    sizes = {batch for batch, _ in served}
    assert sizes == {24, 16} and len(programs) == 2
    assert {k for batch, k in served if batch == 24} == {0}  # every full batch, after a partial one too: one program
    assert {k for batch, k in served if batch == 16} == {1}
    assert result.new_shape_steps == 1 and result.compile_s >= 0.5  # the second program's compiling is counted


def test_compiling_moves_no_weight(small):
    case = _case(small)
    arrays = cache.load_arrays(small.cache_dir)
    net = Net(1.0, 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    compiling.compiled(case, net, arrays, torch.device("cpu"), train=True, optimizer=optimizer)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters()) and not optimizer.state


def test_where_torch_compile_cannot_work_the_case_is_skipped_with_why(small, monkeypatch):
    monkeypatch.setattr(compiling, "compile_unavailable", lambda device_type: "torch.compile: no C++ compiler")
    result = worker.run_case(_case(small))
    assert (result.status, result.error) == ("skipped", "torch.compile: no C++ compiler")
    assert worker.run_case(_case(small, compile_mode=None, max_steps=3)).status == "ok"  # eager is unaffected


@pytest.mark.parametrize("cc, which, reason", [
    (None, {"gcc": None, "clang": None}, "neither gcc nor clang is on PATH (install gcc, or set CC)"),
    ("/opt/cc", {"/opt/cc": None, "gcc": "/usr/bin/gcc"}, "$CC (/opt/cc) is not found (install gcc, or set CC)"),
    (None, {"gcc": None, "clang": "/usr/bin/clang"}, None),
    ("/opt/cc", {"/opt/cc": "/opt/cc"}, None)])
def test_on_a_gpu_torch_compile_needs_triton_and_a_host_c_compiler_for_its_launchers(monkeypatch, cc, which, reason):
    import torch.utils._triton

    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: True)
    monkeypatch.setattr(compiling.shutil, "which", lambda name: which[name])
    if cc:
        monkeypatch.setenv("CC", cc)
    else:
        monkeypatch.delenv("CC", raising=False)
    got = compiling.compile_unavailable("cuda")
    assert got == (reason and "torch.compile: Triton needs a host C compiler to build its GPU kernels' launchers: "
                   + reason)
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    assert compiling.compile_unavailable("cuda") == "torch.compile: Triton is not installed for inductor's GPU kernels"


def test_the_verdict_says_when_compiling_pays_for_itself_or_that_it_never_does():
    rows = [_row("cpu", "resident", 128, 4000.0, threads=2), _row("cpu", "resident", 128, 8000.0, threads=2,
                                                                   compile_mode="default", compile_s=16.0),
            _row("cpu", "resident", 4, 1000.0, threads=2), _row("cpu", "resident", 4, 700.0, threads=2,
                                                                 compile_mode="default", compile_s=3.0)]
    a = tables.analyse(pd.DataFrame(rows))
    gain = a.variant_gain.set_index("batch_size")
    # eager 32 ms a step at batch 128, compiled 16 ms: 16 s of compiling are repaid after 1,000 steps
    assert gain.loc[128, "break_even_steps"] == pytest.approx(1000.0) and pd.isna(gain.loc[4, "break_even_steps"])
    [finding] = [f for f in sentences.verdict(a).findings if f.startswith("Step variant compile")]
    assert "0.70x the eager step's training speed at batch 4 (slower)" in finding
    assert finding.endswith("Compiling took 3.0 s, and it never pays for itself: the compiled step is no faster.")
