"""The run folder's one owner: appends that never interleave, the latest line per Case, a lock that
refuses a second run into a live folder, the environment written once, old formats upgraded."""
from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from bench.result import ENVIRONMENT_STEPS, RECORD_STEPS, SCHEMA_VERSION, Result, upgrade_record
from bench.schema import Case
from bench.store.run_folder import RunError, RunFolder
from conftest import run_bench


def _case(batch: int = 4, **kw) -> Case:
    fields = dict(mode="train", device="cpu", pipeline="resident", batch_size=batch, threads=1, width=1.0,
                  repeat=0, epochs=1, max_steps=5, max_seconds=0.0, time_limit_s=60.0, lr=0.001, seed=0,
                  target_accuracy_pct=50.0, num_workers=0, warmup_steps=1, window_s=0.1, latency_batches=1,
                  dataset="synthetic", data_cache="", run_id="r")
    return Case(**{**fields, **kw})


def _append_many(path: str, start: int) -> None:
    folder = RunFolder(path)
    for i in range(start, start + 200):
        folder.append(Result(case=_case(batch=i + 1), images_per_s=float(i + 1), warnings=["x" * 2000]))


def test_appends_from_several_processes_never_interleave(tmp_path: Path):
    procs = [mp.get_context("fork").Process(target=_append_many, args=(str(tmp_path), s)) for s in (0, 200)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = RunFolder(tmp_path).results_path.read_text().splitlines()
    assert len(lines) == 400 and all(json.loads(line)["warnings"] == ["x" * 2000] for line in lines)
    assert len(RunFolder(tmp_path).results()) == 400


def test_the_latest_line_of_a_case_wins_and_a_cut_line_is_skipped(tmp_path: Path):
    folder = RunFolder(tmp_path)
    folder.append(Result(case=_case(), status="failed", error="boom"))
    with open(folder.results_path, "a") as f:
        f.write('{"cut short')
    folder.append(Result(case=_case(), images_per_s=10.0))
    [result] = folder.results()
    assert result.status == "ok" and result.images_per_s == 10.0


def test_a_second_run_into_a_live_folder_is_refused_with_one_line(tmp_path: Path):
    folder = RunFolder(tmp_path / "run")
    folder.prepare(resume=False)
    with folder.locked():
        with pytest.raises(ValueError, match=r"is in use by another bench run \(pid \d+\)"):
            with RunFolder(tmp_path / "run").locked():
                pass
        proc = run_bench("run", "--quick", "--dataset", "synthetic", "--devices", "cpu", "--batch-sizes", "4",
                         "--threads", "1", "--pipelines", "resident", "--modes", "train", "--out",
                         str(tmp_path / "run"), "--no-report")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is in use by another bench run" in proc.stderr and not folder.results_path.exists()
    with folder.locked():  # released with the first holder
        pass


def test_the_environment_is_written_once_and_a_resume_appends_its_record(tmp_path: Path):
    folder = RunFolder(tmp_path)
    folder.write_environment({"hostname": "first", "torch": "2.5"})
    folder.write_environment({"hostname": "second", "torch": "2.6"})
    env = folder.environment()
    assert env["hostname"] == "first" and [r["hostname"] for r in env["resumes"]] == ["second"]


def test_older_formats_are_upgraded_on_load(tmp_path: Path):
    (tmp_path / "environment.json").write_text(json.dumps({"matmul_gflops": {"cpu": 50.0, "cuda": 9000.0}}))
    record = Result(case=_case()).to_dict()
    record.update(device="cuda", schema_version=1)  # version 1: a device as the user named it
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    run = RunFolder(tmp_path).load()
    assert run.environment["ceilings"]["matmul_gflops"] == {"cpu": {"fp32": 50.0}, "cuda:0": {"fp32": 9000.0}}
    assert list(run.frame["device"]) == ["cuda:0"] and run.frame["key"].iloc[0].startswith("train/cuda:0/")
    assert list(run.frame["schema_version"]) == [SCHEMA_VERSION]


def test_each_version_has_a_named_step_to_the_next_and_files_say_their_version(tmp_path: Path):
    assert sorted(RECORD_STEPS) == sorted(ENVIRONMENT_STEPS) == list(range(1, SCHEMA_VERSION))
    folder = RunFolder(tmp_path)
    folder.write_environment({"hostname": "box"})
    assert json.loads((tmp_path / "environment.json").read_text())["schema_version"] == SCHEMA_VERSION
    assert json.loads(Result(case=_case()).to_json())["schema_version"] == SCHEMA_VERSION
    record = Result(case=_case()).to_dict()
    record["device"] = "cuda"  # the current version names devices whole: nothing upgrades this one
    assert upgrade_record(record)["device"] == "cuda"


def test_a_folder_without_cases_cannot_be_loaded(tmp_path: Path):
    with pytest.raises(RunError, match="holds no results.jsonl with any Case"):
        RunFolder(tmp_path).load()
    with pytest.raises(RunError, match="is not a folder"):
        RunFolder(tmp_path / "missing").load()
