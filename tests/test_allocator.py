"""The allocator states (bench/measuring/allocator.py): what each asks glibc for, that glibc does it whatever state a process
started in, and how a Case that cannot have it ends."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cli
from bench.analysis.frame import step_variant
from bench.measuring import allocator
from bench.sweep.plan import plan_cases
from bench.sweep.spec import with_defaults

ROOT = Path(__file__).resolve().parents[1]


class RecordingMallopt:
    """A stand-in for glibc's mallopt: argtypes/restype set as ctypes needs, arguments checked as the C
    function takes them (int, int), every call recorded; returns what `answers` says (1 = done, 0 = refused)."""

    def __init__(self, answers=None):
        self.calls, self.answers = [], list(answers or [])
        self.argtypes = self.restype = None

    def __call__(self, param, value):
        assert self.argtypes == [ctypes.c_int, ctypes.c_int] and self.restype is ctypes.c_int
        for v in (param, value):
            assert isinstance(v, int) and -2**31 <= v < 2**31, f"{v!r} does not fit a C int"
        self.calls.append((param, value))
        return self.answers.pop(0) if self.answers else 1


class FakeLibc:
    def __init__(self, mallopt):
        self.mallopt = mallopt


@pytest.mark.parametrize("state, mmap, trim", [("default", 128 * 1024, 128 * 1024), ("tuned", 32 * 2**20, 2**31 - 1)])
def test_pin_sets_the_mmap_threshold_then_the_trim_threshold_and_names_the_state(monkeypatch, state, mmap, trim):
    mallopt = RecordingMallopt()
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: FakeLibc(mallopt))
    described = allocator.pin(state)
    assert mallopt.calls == [(-3, mmap), (-1, trim)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD: each fixed, not dynamic
    assert described.startswith(f"{state}: glibc mmap threshold") and described.endswith("pinned")
    assert allocator.environment(state) == {"MALLOC_MMAP_THRESHOLD_": str(mmap), "MALLOC_TRIM_THRESHOLD_": str(trim)}


def test_a_preloaded_allocator_is_not_pinned_and_says_which(monkeypatch):
    mallopt = RecordingMallopt()
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: FakeLibc(mallopt))
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert allocator.pin("tuned") == ("tuned: not pinned: LD_PRELOAD puts /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 "
                                      "in place of glibc's malloc")
    assert mallopt.calls == []


def test_a_refused_setting_is_an_error(monkeypatch):
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: FakeLibc(RecordingMallopt(answers=[1, 0])))
    with pytest.raises(RuntimeError, match="was refused"):
        allocator.pin("default")


def _no_libc(name):
    raise OSError("no such library")


def test_without_mallopt_the_default_state_runs_unpinned_and_says_so(monkeypatch):
    monkeypatch.setattr(allocator.ctypes, "CDLL", _no_libc)
    assert allocator.unavailable("default") is None
    assert allocator.pin("default") == "default: not pinned: the C library has no mallopt (glibc's)"
    assert "--malloc tuned needs it" in allocator.unavailable("tuned")
    with pytest.raises(RuntimeError, match="no mallopt"):
        allocator.pin("tuned")
    # a state asked for but not required (the tutorial's job) is left to the C library, and says so
    assert allocator.unavailable("tuned", required=False) is None
    assert allocator.pin("tuned", required=False) == "tuned: not pinned: the C library has no mallopt (glibc's)"


def test_with_mallopt_a_state_not_required_is_pinned_all_the_same(monkeypatch):
    recorder = RecordingMallopt()
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: FakeLibc(recorder))
    assert allocator.pin("tuned", required=False) == "tuned: glibc mmap threshold 32 MiB, trim threshold never, pinned"
    assert recorder.calls == [(allocator.M_MMAP_THRESHOLD, 32 * 2**20), (allocator.M_TRIM_THRESHOLD, 2**31 - 1)]


@pytest.mark.parametrize("world_size", [1, 2])
def test_without_mallopt_a_tuned_case_is_skipped_with_the_reason(monkeypatch, tmp_path, world_size):
    from bench.running import worker
    from cnn.data import prepare_synthetic

    monkeypatch.setattr(allocator.ctypes, "CDLL", _no_libc)
    spec = with_defaults(devices=["cpu"], batch_sizes=[4], threads=[1], pipelines=["resident"], widths=[1.0],
                         modes=["train"], max_steps=3, warmup_steps=1, mallocs=["tuned"], world_sizes=[world_size],
                         max_seconds=None, precision_pct=None, window_s=0.5, job=False)
    case = plan_cases(spec, str(prepare_synthetic(n_train=40, n_test=20).cache_dir), "synthetic")[0]
    assert case.world_size == world_size
    result = worker.run_case(case)  # a rank would have raised "the C library has no mallopt": the Case failed
    assert result.status == "skipped" and "mallopt" in result.error


def test_without_mallopt_the_tutorials_job_still_runs_unpinned_and_says_so(monkeypatch):
    from bench.running import worker
    from cnn.data import prepare_synthetic

    monkeypatch.setattr(allocator.ctypes, "CDLL", _no_libc)  # musl, macOS: the report's first sentence still stands
    spec = with_defaults(devices=["cpu"], batch_sizes=[4], threads=[1], pipelines=["resident"], widths=[1.0],
                         modes=["train"], max_steps=3, warmup_steps=1, max_seconds=None, precision_pct=None,
                         window_s=0.5, job=True)
    [case] = [c for c in plan_cases(spec, str(prepare_synthetic(n_train=40, n_test=20).cache_dir), "synthetic")
              if c.mode == "job"]
    assert case.malloc == "tuned"
    result = worker.run_case(case)
    assert result.status == "ok", result.error
    assert result.malloc_state == "tuned: not pinned: the C library has no mallopt (glibc's)"


BLOCK_PAGES = 2**21 // 4096  # one 2 MiB block's pages
# the two states a process can start in by environment: every freed block handed back at once, or every block kept
HAND_BACK = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "MALLOC_TRIM_THRESHOLD_": "0"}
KEEP = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def _faults_per_step(state: str | None, start_env: dict) -> list[int]:
    """Minor page faults in each of 50 'steps' of three 2 MiB blocks live at once, touched and freed (as a training
    step's tensors are), after 5 steps of warm-up, in a fresh interpreter with glibc's real malloc started in
    `start_env`'s state and then pinned in `state` (None: left as it started)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import resource, torch; from bench.measuring import allocator\n"
            f"if {state!r} is not None: allocator.pin({state!r})\n"
            "f = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "def step():\n    blocks = [torch.empty(2**19).fill_(1) for _ in range(3)]\n    del blocks\n"
            "for _ in range(5): step()\n"
            "counts = []\n"
            "for _ in range(50):\n    f0 = f(); step(); counts.append(f() - f0)\n"
            "print(*counts)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **start_env})
    assert out.returncode == 0, out.stderr
    counts = [int(c) for c in out.stdout.splitlines()[-1].split()]
    assert len(counts) == 50, out.stdout
    return counts


def _faulting_steps(counts: list[int]) -> int:
    return sum(c >= BLOCK_PAGES for c in counts)


def test_each_state_is_what_the_process_gets_whatever_state_it_started_in():
    # the probe sees both starting states for what they are (glibc's own defaults are a lottery: run by hand,
    # 992-1,536 faults a step in one interpreter, 0 in another), then each pinned state overrides the other. A
    # step that faults a whole block now and then is allowed (CI once read 1,024 faults over 50 kept steps)
    assert _faulting_steps(_faults_per_step(None, HAND_BACK)) >= 45
    assert _faulting_steps(_faults_per_step(None, KEEP)) <= 5
    assert _faulting_steps(_faults_per_step("tuned", HAND_BACK)) <= 5
    assert _faulting_steps(_faults_per_step("default", KEEP)) >= 45


def test_the_variant_is_an_axis_with_its_own_key_and_name(capsys):
    spec = with_defaults(devices=["cpu"], batch_sizes=[4], threads=[1], pipelines=["resident"], widths=[1.0],
                         modes=["train"], mallocs=["default", "tuned"], job=False)
    keys = [c.key for c in plan_cases(spec, "/c", "synthetic")]
    assert keys == ["train/cpu/resident/b4/t1/w1/r0", "train/cpu/resident/b4/t1/w1/r0/malloc-tuned"]
    import pandas as pd

    assert step_variant(pd.DataFrame({"malloc": ["default", "tuned", None]})).tolist() == [
        "eager", "eager+malloc-tuned", "eager"]
    args = cli.get_parser().parse_args(["run", "--malloc", "default,tuned"])
    assert cli.build_spec(args, n_cuda=0).mallocs == ["default", "tuned"]
    assert cli.main(["run", "--malloc", "jemalloc"]) == 2
    assert "--malloc: 'jemalloc' is not one of default, tuned" in capsys.readouterr().err
