"""bench/running/check.py and `python -m bench check`: one tiny Case per device, pipeline, mode and variant."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest

from bench import cli
from bench.result import Result
from bench.running import check
from conftest import run_bench

ROW = re.compile(r"^(\S+)\s+(tutorial|resident)\s+(train|infer)\s+(.+?)\s+(ok|failed|skipped)\b\s*(.*)$")
CPU_BF16 = {"cpu": "bf16 autocast: not supported on this CPU"}


def _rows(stdout: str) -> dict[tuple[str, str, str, str], tuple[str, str]]:
    """{(device, pipeline, mode, check): (status, detail)} from the printed table."""
    rows = {}
    for line in stdout.splitlines():
        if match := ROW.match(line):
            device, pipeline, mode, name, status, detail = match.groups()
            rows[device, pipeline, mode, name] = (status, detail)
    return rows


@pytest.fixture(scope="module")
def cpu_check():
    """`bench check --devices cpu` run once, as a user runs it."""
    return run_bench("check", "--devices", "cpu", timeout=300)


def test_check_on_the_cpu_runs_every_applicable_check_and_exits_0(cpu_check):
    import torch

    assert cpu_check.returncode == 0, cpu_check.stdout + cpu_check.stderr
    rows = _rows(cpu_check.stdout)
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    for pipeline in ("tutorial", "resident"):
        for mode in ("train", "infer"):
            assert rows["cpu", pipeline, mode, "eager"][0] == "ok"
            assert rows["cpu", pipeline, mode, "channels_last"][0] == "ok"
            expected = ("ok", "6 steps") if bf16 else ("skipped", "bf16 autocast: not supported on this CPU")
            status, detail = rows["cpu", pipeline, mode, "bf16 autocast"]
            assert status == expected[0] and expected[1] in detail
        assert rows["cpu", pipeline, "train", "DDP, 2 ranks"][0] == "ok"
    assert rows["cpu", "resident", "train", "CUDA graphs"] == ("skipped", "CUDA graphs: CUDA devices only")
    assert rows["cpu", "resident", "train", "torch.compile"][0] == "ok"  # this machine has a C++ compiler
    assert rows["cpu", "resident", "train", "malloc tuned"][0] == "ok"  # and glibc
    assert not any(name == "torch.compile" for (_, pipeline, mode, name) in rows if (pipeline, mode) != ("resident", "train"))
    assert len(rows) == 17 and sum(status == "ok" for status, _ in rows.values()) == (16 if bf16 else 12)
    assert all(detail == "6 steps in " + detail.split(" in ")[1] for status, detail in rows.values()
               if status == "ok")
    assert "every applicable check works" in cpu_check.stdout.splitlines()[-1]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.skipif(cli.cuda_device_count() > 0, reason="this machine has CUDA")
def test_cuda_alone_without_cuda_is_refused_in_one_line(capsys):
    err = _one_line_error(capsys, ["check", "--devices", "cuda"])
    assert err.startswith("bench: --devices: 'cuda' is not available: CUDA is not available")


def test_a_bad_device_is_refused_in_one_line(capsys):
    err = _one_line_error(capsys, ["check", "--devices", "cpu,gpu"])
    assert err == "bench: --devices: 'gpu' is not a device (expected cpu, cuda or cuda:N)\n"


def _names(checks: list[check.Check], device: str) -> list[tuple[str, str, str, str | None]]:
    return [(c.case.pipeline, c.case.mode, check.variant(c.case), c.skip) for c in checks if c.case.device == device]


def test_a_two_gpu_machine_checks_cuda_graphs_and_two_ranks_on_cuda(monkeypatch):
    import torch

    def no_cuda(*args, **kwargs):
        raise AssertionError("planning checks must not touch CUDA")

    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", no_cuda)
    checks = check.plan_checks(["cpu", "cuda:0"], {}, 2, CPU_BF16, data_cache="/cache")
    cuda = _names(checks, "cuda:0")
    assert ("resident", "train", "CUDA graphs", None) in cuda
    assert ("tutorial", "train", "DDP, 2 ranks", None) in cuda and ("resident", "train", "DDP, 2 ranks", None) in cuda
    assert ("resident", "train", "torch.compile", None) in cuda
    assert ("resident", "train", "malloc tuned", None) in cuda
    assert ("tutorial", "infer", "strict fp32", None) in cuda  # a CUDA variant: no such row on the CPU
    assert not [row for row in _names(checks, "cpu") if row[2] == "strict fp32"]
    assert all(skip is None for *_, skip in cuda) and len(cuda) == 21
    assert {c.case.threads for c in checks if c.case.device == "cuda:0"} == {None}
    ddp = [c.case for c in checks if c.case.world_size == 2]
    assert len(ddp) == 4 and {c.mode for c in ddp} == {"train"} and not any(c.cuda_graphs for c in ddp)
    assert ("resident", "train", "CUDA graphs", "CUDA graphs: CUDA devices only") in _names(checks, "cpu")
    assert all(c.case.data_cache == "/cache" and c.case.dataset == "synthetic" for c in checks)


def test_one_gpu_skips_two_ranks_and_an_unusable_device_skips_every_row_with_why():
    one = _names(check.plan_checks(["cpu", "cuda:0"], {}, 1, {}), "cuda:0")
    assert ("resident", "train", "DDP, 2 ranks",
            "DDP on CUDA: one GPU per rank, 2 ranks need 2 GPUs and this machine has 1") in one
    none = check.plan_checks(["cpu"], {"cuda:0": "CUDA is not available on this machine"}, 0, {})
    rows = _names(none, "cuda:0")
    assert len(rows) == 21 and {skip for *_, skip in rows} == {"CUDA is not available on this machine"}
    assert [c.case.device for c in none][:17] == ["cpu"] * 17  # the usable device's rows first


def test_without_mallopt_the_tuned_malloc_row_is_skipped_with_why(monkeypatch):
    from bench.measuring import allocator

    def no_libc(name):
        raise OSError("no such library")

    monkeypatch.setattr(allocator.ctypes, "CDLL", no_libc)  # a C library other than glibc (musl, macOS)
    rows = _names(check.plan_checks(["cpu"], {}, 0, {}), "cpu")
    assert ("resident", "train", "malloc tuned",
            "the C library has no mallopt (glibc's): --malloc tuned needs it") in rows
    assert [skip for *_, skip in rows if skip] == [check.GRAPHS_CPU, allocator.unavailable("tuned")]


def test_a_failing_check_shows_its_reason_in_its_row_and_exits_1():
    checks = check.plan_checks(["cpu"], {}, 0, CPU_BF16)
    error = "RuntimeError: channels_last is broken here (at loops.py:12)"
    ran = []

    def stand_in(case):
        ran.append(case)
        if case.memory_format == "channels_last" and case.mode == "infer":
            return Result(case=case, status="failed", error=error)
        if case.world_size == 2 and case.pipeline == "tutorial":
            return Result(case=case, status="timeout", error="exceeded the time limit of 120 s (--time-limit)")
        return Result(case=case, steps=6, wall_s=0.4)

    printed = []
    results = check.run_checks(checks, stand_in, on_result=printed.append)
    assert len(ran) == 12 and not any(c.cuda_graphs or c.amp == "bf16" for c in ran)  # skipped checks do not run
    assert printed == results and check.exit_status(results) == 1
    rows = _rows(check.render(results))
    assert rows["cpu", "resident", "infer", "channels_last"] == ("failed", error)
    assert rows["cpu", "tutorial", "train", "DDP, 2 ranks"] == ("failed",
                                                                "exceeded the time limit of 120 s (--time-limit)")
    assert rows["cpu", "tutorial", "train", "eager"] == ("ok", "6 steps in 0.4 s")
    assert "FAILED" in check.summary(results, 12.0) and "3 failed" in check.summary(results, 12.0)
    assert check.exit_status([r for r in results if r.status in ("ok", "skipped")]) == 0


def test_two_ranks_that_end_with_different_weights_fail_the_check():
    ddp = next(c for c in check.plan_checks(["cpu"], {}, 0, {}) if c.case.world_size == 2)

    def stand_in(case):
        return Result(case=case, steps=6, wall_s=1.0, rank_param_digests=["aa", "bb"])

    [result] = check.run_checks([ddp], stand_in)
    assert result.status == "failed" and "weights differ" in result.error
    same = check.run_checks([ddp], lambda case: replace(stand_in(case), rank_param_digests=["aa", "aa"]))
    assert same[0].status == "ok"
