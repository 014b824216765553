"""The committed sample reports are what this build's `bench report` makes of their own results: no stale
sample can land (a change to the report regenerates them: `python -m bench report reports/<sample>`)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.report.build import build_report
from conftest import ROOT

SAMPLES = sorted(p.name for p in (ROOT / "reports").iterdir() if (p / "results.jsonl").is_file())


def test_there_are_samples_to_check():
    assert {"sample-cpu", "sample-cpu-ddp"} <= set(SAMPLES)


@pytest.mark.parametrize("sample", SAMPLES)
def test_a_committed_sample_is_what_bench_report_makes_of_its_own_results(sample: str, tmp_path: Path):
    committed = ROOT / "reports" / sample
    copy = tmp_path / sample
    shutil.copytree(committed, copy)
    report = build_report([copy], copy)
    assert report.markdown.read_text() == (committed / "report.md").read_text(), (
        f"reports/{sample}/report.md is stale: regenerate it with python -m bench report reports/{sample}")
    assert sorted(p.name for p in copy.glob("*.png") if p.name != "report.png") == sorted(
        p.name for p in committed.glob("*.png") if p.name != "report.png")
