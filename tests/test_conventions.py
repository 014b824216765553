"""The command line behaves like the tools people know: a version, JSON for every command a script reads, numbers
rounded for people and exact in files, and machines told apart (issue 27)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from bench import cli
from bench.report.build import machine_label
from bench.running import check
from bench.running.environment import capture
from bench.schema import Case
from bench.result import Result
from conftest import ROOT
from test_report import _fake_run

PLAN = ["plan", "--dataset", "synthetic", "--devices", "cpu", "--batch-sizes", "4,32", "--threads", "1",
        "--modes", "train"]


def test_version_is_the_projects_own(capsys):
    assert cli.main(["--version"]) == 0
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert capsys.readouterr().out.strip() == f"bench {declared}"


def test_plan_json_is_the_plan_people_read(capsys):
    assert cli.main(PLAN) == 0
    keys = [line.strip() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert cli.main([*PLAN, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [c["key"] for c in plan["cases"]] == keys and plan["cases"][0]["batch_size"] in (4, 32)
    assert 0 < plan["estimate_s"]["least"] <= plan["estimate_s"]["most"]


def test_check_json_is_one_object_a_check_then_the_summary(capsys, monkeypatch):
    case = Case(mode="train", device="cpu", pipeline="resident", batch_size=4, threads=1, width=1.0, repeat=0,
                epochs=1, max_steps=4, max_seconds=None, time_limit_s=60.0, lr=0.001, seed=0, target_accuracy_pct=50.0,
                num_workers=0, warmup_steps=1, window_s=0.0, latency_batches=1, dataset="synthetic", data_cache="")
    results = [Result(case=case, steps=4, wall_s=0.51234), Result(case=case, status="failed", error="boom")]

    def fake_check(devices, skipped, n_cuda, on_result):
        for r in results:
            on_result(r)
        return results

    monkeypatch.setattr(check, "check_machine", fake_check)
    assert cli.main(["check", "--devices", "cpu", "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["status"], r["wall_s"], r["error"]) for r in lines[:2]] == [("ok", 0.51234, None), ("failed", None, "boom")]
    assert lines[2]["exit_status"] == 1 and "1 ok, 1 failed" in lines[2]["summary"]


def test_compare_json_and_machines_told_apart(tmp_path: Path, capsys):
    a = _fake_run(tmp_path / "a", "host", gpu=False)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert cli.main(["compare", str(a), str(b), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "images_per_s" and out["regressions"] == [] and out["differences"] == []
    assert {c["verdict"] for c in out["cases"]} >= {"same"} and all(c["key"] for c in out["cases"])
    env = json.loads((b / "environment.json").read_text())
    env.update(cpu_model="AMD EPYC 9B14", cpu_isa="AVX2")
    (b / "environment.json").write_text(json.dumps(env))
    assert cli.main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "machine: CPU host CPU vs AMD EPYC 9B14" in err and "--force" in err
    assert cli.main(["compare", str(a), str(b), "--force", "--json"]) == 0  # the differences on stderr, JSON on stdout
    captured = capsys.readouterr()
    assert json.loads(captured.out)["differences"] and "comparing anyway" in captured.err


def test_two_cpus_of_one_name_that_differ_in_vector_instructions_have_two_labels():
    env = {"hostname": "vm", "cpu_model": "Intel(R) Xeon(R) Processor", "cpu_logical_cores": 2, "gpus": []}
    assert machine_label({**env, "cpu_isa": "AVX512"}) != machine_label({**env, "cpu_isa": "AVX2"})
    assert "AVX512" in machine_label({**env, "cpu_isa": "AVX512"})
    assert machine_label(env) == "vm (Intel(R) Xeon(R) Processor, 2 cores, no GPU)"  # older runs read as before


def test_env_records_the_cpus_instructions_and_the_checkouts_state_and_prints_people_numbers(capsys):
    env = capture(query_cuda=False)
    assert env["cpu_isa"] and isinstance(env["cpu_flags"], list) and env["git_dirty"] in (True, False, None)
    assert cli.main(["env"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["memory_mb"] == round(env["memory_mb"], 1) and printed["cpu_isa"] == env["cpu_isa"]
