"""bench/api.py: the Python API the notebook uses, the same sweep and report as the CLI."""
from __future__ import annotations

from pathlib import Path

import pytest

import bench


def test_sweep_spec_takes_the_cli_options_as_keywords_and_validates_them_the_same_way():
    spec = bench.sweep_spec(devices=["cpu"], batch_sizes=[4, 32], threads=[1], quick=True, dataset="synthetic",
                            modes="train", no_download=True)
    assert spec.devices == ["cpu"] and spec.batch_sizes == [4, 32] and spec.threads == [1]
    assert spec.modes == ["train"] and spec.download is False and spec.max_seconds == 0.8  # --quick's budget
    with pytest.raises(ValueError, match=r"^--batch-sizes: '0' is not a positive integer"):
        bench.sweep_spec(batch_sizes=[0])
    with pytest.raises(ValueError, match=r"^unrecognized arguments: --batch-size 4"):
        bench.sweep_spec(batch_size=4)
    with pytest.raises(ValueError, match=r"^--cuda-graphs: CUDA graphs need a CUDA device"):
        bench.sweep_spec(devices=["cpu"], cuda_graphs=True)


def test_run_sweep_writes_the_run_folder_and_returns_its_results_and_the_report_its_verdict(tmp_path: Path):
    spec = bench.sweep_spec(devices=["cpu"], batch_sizes=[8, 32], threads=[1], pipelines=["resident"],
                            modes=["train"], dataset="synthetic", max_steps=30, warmup_steps=5, window=0.05)
    results = bench.run_sweep(spec, out=tmp_path / "run")
    assert results.attrs["run_dir"] == str(tmp_path / "run")
    assert sorted(results["batch_size"]) == [8, 32] and set(results["status"]) == {"ok"}
    assert (results["images_per_s"] > 0).all()
    assert {"results.jsonl", "results.csv", "environment.json"} <= {p.name for p in (tmp_path / "run").iterdir()}
    with pytest.raises(ValueError, match="already holds results"):
        bench.run_sweep(spec, out=tmp_path / "run")

    rep = bench.make_report(results.attrs["run_dir"])
    assert rep.verdict.headline.startswith("Only cpu was measured")
    assert rep.markdown.read_text().startswith("# Does a GPU help")
    assert "throughput_train.png" in rep.charts and rep.charts["throughput_train.png"].stat().st_size > 0
    assert rep._repr_markdown_().startswith(f"**{rep.verdict.headline}**")
    with pytest.raises(ValueError, match="out is needed with several run folders"):
        bench.make_report([tmp_path / "run", tmp_path / "run"])
